"""AP, mAP and top-1 (deepcontext/eval/metrics.py) on cases worked by hand."""
import numpy as np
import pytest

from deepcontext.eval import metrics

# Five items ranked by score: +, -, +, -, + (three positives).
# rank:      1     2     3     4     5
# precision: 1    1/2   2/3   1/2   3/5
# recall:   1/3   1/3   2/3   2/3    1
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]
LABELS = [1, -1, 1, -1, 1]
# 11-point: t = 0 .. 0.3 -> 1; t = 0.4 .. 0.6 -> 2/3; t = 0.7 .. 1 -> 3/5.
VOC07 = (4 * 1 + 3 * 2 / 3 + 4 * 0.6) / 11
# Area under the monotone curve: 1/3 * (1 + 2/3 + 3/5).
ALL = (1 + 2 / 3 + 0.6) / 3


def test_average_precision_by_hand():
    assert metrics.average_precision(SCORES, LABELS, 'voc07') == \
        pytest.approx(VOC07)
    assert metrics.average_precision(SCORES, LABELS, 'all') == \
        pytest.approx(ALL)
    # A difficult item is ignored wherever it ranks.
    assert metrics.average_precision(SCORES + [1.0], LABELS + [0]) == \
        pytest.approx(VOC07)
    # Perfect and worst rankings; no positive is NaN.
    assert metrics.average_precision([3, 2, 1], [1, 1, -1], 'all') == 1.0
    assert metrics.average_precision([1, 2, 3], [1, -1, -1], 'all') == \
        pytest.approx(1 / 3)
    assert np.isnan(metrics.average_precision([1, 2], [-1, -1]))
    with pytest.raises(ValueError):
        metrics.average_precision(SCORES, LABELS, 'voc12')


def test_mean_ap_and_top1_by_hand():
    scores = np.stack([SCORES, [5, 4, 3, 2, 1], [1, 2, 3, 4, 5]], 1)
    labels = np.stack([LABELS, [1, -1, -1, -1, -1], [-1] * 5], 1)
    aps, m = metrics.mean_ap(scores, labels, 'voc07')
    assert aps[0] == pytest.approx(VOC07) and aps[1] == pytest.approx(1.0)
    assert np.isnan(aps[2]) and m == pytest.approx((VOC07 + 1) / 2)
    assert metrics.top1([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    with pytest.raises(ValueError):
        metrics.top1([0, 1], [0])
    assert metrics.one_hot_targets([1, 0], 3).tolist() == \
        [[-1, 1, -1], [1, -1, -1]]
