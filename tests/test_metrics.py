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


# Ranked +, -, -, +, + (three positives): precision 1, 1/2, 1/3, 1/2, 3/5
# at recall 1/3, 1/3, 1/3, 2/3, 1.
DIP_SCORES, DIP_LABELS = [5, 4, 3, 2, 1], [1, -1, -1, 1, 1]


@pytest.mark.parametrize('mode, expect', [
    # 11-point: t = 0 .. 0.3 -> 1, t = 0.4 .. 1 -> the best later, 3/5.
    ('voc07', (4 * 1 + 7 * 0.6) / 11),
    # Monotone area: recall steps 1/3 each at precision 1, 3/5, 3/5.
    ('all', (1 + 0.6 + 0.6) / 3),
    # Not interpolated: the precision where the recall rises, 1, 1/2, 3/5.
    ('sklearn', (1 + 0.5 + 0.6) / 3),
])
def test_the_three_definitions_by_hand(mode, expect):
    assert metrics.average_precision(DIP_SCORES, DIP_LABELS, mode) == \
        pytest.approx(expect)
    # A difficult item, ranked first or last, changes nothing.
    assert metrics.average_precision(DIP_SCORES + [9], DIP_LABELS + [0],
                                     mode) == pytest.approx(expect)
    assert metrics.average_precision(DIP_SCORES + [0], DIP_LABELS + [0],
                                     mode) == pytest.approx(expect)
    # No positive, or only a difficult one: no AP.
    assert np.isnan(metrics.average_precision([1, 2], [-1, -1], mode))
    assert np.isnan(metrics.average_precision([1, 2], [0, -1], mode))


def test_ties_by_position_or_grouped():
    # A positive and a negative tie at 0.5, the positive listed first.
    scores, labels = [0.9, 0.5, 0.5, 0.1], [1, 1, -1, -1]
    # voc07 and all rank the tie by position: +, +, -, -: perfect.
    assert metrics.average_precision(scores, labels, 'voc07') == 1.0
    assert metrics.average_precision(scores, labels, 'all') == 1.0
    # sklearn's one threshold at 0.5: precision 2/3 where recall reaches 1.
    assert metrics.average_precision(scores, labels, 'sklearn') == \
        pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Listed the other way round, position puts the negative first.
    assert metrics.average_precision(scores, [1, -1, 1, -1], 'all') == \
        pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # All scores equal: one threshold, the share of positives.
    assert metrics.average_precision([1, 1, 1, 1], [1, -1, -1, 1],
                                     'sklearn') == pytest.approx(0.5)
