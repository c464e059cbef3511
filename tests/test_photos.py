"""The embedded photos' fixed train / held-out split (data/photos.py)."""
import os

from deepcontext.data import photos


def test_split_is_fixed_disjoint_and_keeps_scenes_together():
    train, held = photos.train_photos(), photos.held_out_photos()
    assert len(train) + len(held) == len(photos.demo_photos())
    assert not set(train) & set(held)
    assert (len(train), len(held)) == (204, 80)   # the pinned packages
    keys_train = {photos.scene_key(p) for p in train}
    keys_held = {photos.scene_key(p) for p in held}
    assert not keys_train & keys_held
    assert len(keys_held) >= 20        # many scenes, not a few big ones
    assert photos.held_out_photos() == held


def test_scene_keys_by_hand():
    cases = {'P1070491.png': 'p1070', 'P1070505.png': 'p1070',
             'building2-3.png': 'building', 'aerial2-008.png': 'aerial',
             'rocks2-l.png': 'rocks', 'walls-r.png': 'walls',
             'motorcycle_left.png': 'motorcycle',
             'pexels-7303782.jpg': 'pexels-7303', 'flowers4.png': 'flowers',
             'chelsea.png': 'chelsea', 'grand_canyon_1.jpg': 'grand_canyon',
             'bar55_2.jpg': 'bar'}
    for name, key in cases.items():
        assert photos.scene_key(os.path.join('/x', name)) == key, name
