"""combined_roidb and its parts: flipping, preparation, filtering, ratio ranking, combining datasets."""
import numpy as np
import pytest

from lib.datasets import factory
from lib.datasets.shapes import SHAPE_CLASSES
from lib.model.utils.config import cfg
from lib.roi_data_layer.roidb import combined_roidb, filter_roidb, rank_roidb_ratio


def test_rank_roidb_ratio_by_hand():
    sizes = [(100, 300), (300, 100), (200, 100), (100, 100), (150, 100)]
    roidb = [{'width': w, 'height': h} for w, h in sizes]
    ratio_list, ratio_index = rank_roidb_ratio(roidb)
    # ratios 1/3 -> 0.5 (crop), 3 -> 2 (crop), 2, 1, 1.5; the two 2s keep their order (stable sort)
    np.testing.assert_allclose(ratio_list, [0.5, 1.0, 1.5, 2.0, 2.0])
    np.testing.assert_array_equal(ratio_index, [0, 3, 4, 1, 2])
    assert [r['need_crop'] for r in roidb] == [1, 1, 0, 0, 0]


def test_filter_roidb_drops_images_without_boxes(capsys):
    roidb = [{'boxes': np.zeros((0, 4))}, {'boxes': np.zeros((2, 4))}, {'boxes': np.zeros((0, 4))}]
    kept = filter_roidb(roidb)
    assert len(kept) == 1 and kept[0] is roidb[1]
    out = capsys.readouterr().out
    assert 'there are 3 images' in out and 'there are 1 images' in out


def test_combined_roidb_training(custom_shapes):
    imdb, roidb, ratio_list, ratio_index = combined_roidb('custom_trainval')
    assert imdb.name == 'custom_trainval'
    n_empty = sum(1 for i in range(12) if len(imdb.roidb[i]['boxes']) == 0)
    assert n_empty >= 1  # split index 7 is empty by construction
    assert len(roidb) == 2 * (12 - n_empty)
    assert sum(r['flipped'] for r in roidb) == 12 - n_empty
    assert np.all(np.diff(ratio_list) >= 0) and ratio_list.min() >= 0.5 and ratio_list.max() <= 2.0
    assert sorted(ratio_index.tolist()) == list(range(len(roidb)))
    for r in roidb:
        assert {'img_id', 'image', 'width', 'height', 'max_classes', 'max_overlaps', 'need_crop'} <= set(r)
        np.testing.assert_array_equal(r['max_classes'], r['gt_classes'])
        np.testing.assert_array_equal(r['max_overlaps'], 1.0)
        assert r['need_crop'] == int(not 0.5 <= r['width'] / r['height'] <= 2.0)
    assert any(r['need_crop'] for r in roidb)


def test_combined_roidb_testing_keeps_everything_unflipped(custom_shapes):
    imdb, roidb, _, _ = combined_roidb('custom_trainval', training=False)
    assert len(roidb) == 12 and not any(r['flipped'] for r in roidb)


def test_no_flip_when_disabled(custom_shapes):
    cfg.TRAIN.USE_FLIPPED = False
    _, roidb, _, _ = combined_roidb('custom_trainval')
    assert not any(r['flipped'] for r in roidb)


def test_combining_two_sets(custom_shapes):
    cfg.TRAIN.USE_FLIPPED = False
    imdb, roidb, ratio_list, _ = combined_roidb('custom_trainval+custom_test', training=False)
    assert imdb.name == 'custom_trainval+custom_test' and imdb.num_classes == 7
    assert len(roidb) == 16 and len(ratio_list) == 16


def test_combining_sets_with_different_classes_fails(custom_shapes, monkeypatch):
    from lib.datasets.voc_format import voc_format
    registry = vars(factory)['__sets']
    monkeypatch.setitem(registry, 'more_classes', lambda: voc_format(
        'test', custom_shapes, classes=list(SHAPE_CLASSES) + ['ellipse'], name='more_classes'))
    with pytest.raises(ValueError, match='their classes differ'):
        combined_roidb('custom_test+more_classes', training=False)
