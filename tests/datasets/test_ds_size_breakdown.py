"""lib/datasets/size_breakdown.py and tools/analyze_detections.py: detection quality by object size."""
import json

import numpy as np
import pytest
import torch
import torchvision

from lib.datasets.size_breakdown import bin_labels, format_breakdown, object_outcomes, size_breakdown
from lib.model.rpn.bbox_transform import bbox_overlaps
from lib.model.utils.test_utils import save_detections


def test_the_iou_it_uses_is_pixel_inclusive_and_matches_torchvision_on_shifted_boxes():
    # size_breakdown matches objects with the model's bbox_overlaps, on float64 arrays, empty ones included
    def iou(a, b):
        return bbox_overlaps(torch.as_tensor(a, dtype=torch.float64).reshape(-1, 4),
                             torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4)).numpy()
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * 100
    wh = torch.rand(40, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + wh], 1).double()
    a, b = boxes[:15], boxes[15:]
    ours = iou(a.numpy(), b.numpy())
    shifted = lambda t: torch.cat([t[:, :2], t[:, 2:] + 1], 1)  # noqa: E731
    ref = torchvision.ops.box_iou(shifted(a), shifted(b)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
    # by hand: two 10 x 10 boxes (0..9) overlapping in 5 x 10 pixels: 50 / 150
    assert iou([[0, 0, 9, 9]], [[5, 0, 14, 9]])[0, 0] == pytest.approx(1 / 3)
    assert iou([[0, 0, 9, 9]], [[10, 0, 19, 9]])[0, 0] == 0  # touching, no shared pixel
    assert iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    assert iou([[0, 0, 1, 1]], np.zeros((0, 4))).shape == (1, 0)


def test_bin_labels():
    assert bin_labels() == ['< 24 px', '24-48 px', '48-96 px', '>= 96 px']
    assert bin_labels([10]) == ['< 10 px', '>= 10 px']


def _entry(boxes, classes, hard=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return {'boxes': boxes, 'gt_classes': np.asarray(classes, np.int32),
            'gt_ishard': np.asarray(hard if hard is not None else [0] * len(classes), np.int32)}


def _all_boxes(num_classes, num_images, dets):
    """dets: {(class, image): [[x1, y1, x2, y2, score], ...]}"""
    out = [[np.zeros((0, 5), np.float32) for _ in range(num_images)] for _ in range(num_classes)]
    for (j, i), d in dets.items():
        out[j][i] = np.asarray(d, np.float32)
    return out


def test_outcomes_count_found_class_and_right_per_object():
    # image 0: five objects of class 1 or 2, sizes 10, 24 (a bin edge), 30, 60, 200 px on the longer side, and one
    # difficult object (not counted); image 1: one object with no detection at all; image 2: no object
    roidb = [
        _entry([[0, 0, 9, 5], [100, 0, 123, 9], [200, 200, 229, 219], [300, 0, 359, 59], [0, 300, 199, 399],
                [500, 500, 509, 509]], [1, 2, 1, 2, 1, 1], hard=[0, 0, 0, 0, 0, 1]),
        _entry([[0, 0, 49, 49]], [2]),
        _entry(np.zeros((0, 4)), []),
    ]
    dets = {
        (1, 0): [[0, 0, 9, 5, 0.9],            # object 0 (10 px): right class, 0.9 -> found, class, right
                 [200, 200, 229, 219, 0.4],    # object 2 (30 px): right class at 0.4 -> found, class, not right
                 [500, 500, 509, 509, 0.99],   # the difficult object: ignored
                 [0, 300, 199, 399, 0.35]],    # object 4 (200 px): right class but beaten by a wrong one below
        (2, 0): [[100, 0, 123, 9, 0.2],        # object 1 (24 px): right class below found_thresh -> nothing
                 [300, 0, 359, 59, 0.8],       # object 3 (60 px): right class 0.8 -> found, class, right
                 [0, 300, 199, 399, 0.7],      # object 4: wrong class scoring higher -> found, class wrong,
                 [200, 200, 229, 219, 0.3]],   # object 2: a wrong class below its right one
        (1, 2): [[0, 0, 10, 10, 0.9]],         # an image without objects: nothing to count
    }
    sizes, found, cls_right, right = object_outcomes(_all_boxes(3, 3, dets), roidb)
    np.testing.assert_array_equal(sizes, [10, 24, 30, 60, 200, 50])
    np.testing.assert_array_equal(found, [True, False, True, True, True, False])
    np.testing.assert_array_equal(cls_right, [True, False, True, True, False, False])
    np.testing.assert_array_equal(right, [True, False, False, True, False, False])

    rows = size_breakdown(_all_boxes(3, 3, dets), roidb)
    assert [r['bin'] for r in rows] == ['< 24 px', '24-48 px', '48-96 px', '>= 96 px', 'all']
    assert [r['objects'] for r in rows] == [1, 2, 2, 1, 6]
    assert [r['found'] for r in rows] == [1.0, 0.5, 0.5, 1.0, pytest.approx(4 / 6)]
    assert [r['class'] for r in rows] == [1.0, 1.0, 1.0, 0.0, 0.75]
    assert [r['right'] for r in rows] == [1.0, 0.0, 0.5, 0.0, pytest.approx(2 / 6)]
    text = format_breakdown(rows)
    assert '24-48 px        2  0.500  1.000  0.000' in text


def test_thresholds_and_iou_are_parameters():
    roidb = [_entry([[0, 0, 99, 99]], [1])]
    # a right-class box covering 100 x 80 of the 100 x 100 object: IoU 0.8
    dets = _all_boxes(2, 1, {(1, 0): [[0, 0, 99, 79, 0.45]]})
    assert size_breakdown(dets, roidb)[-1]['right'] == 0.0
    assert size_breakdown(dets, roidb, right_thresh=0.4)[-1]['right'] == 1.0
    assert size_breakdown(dets, roidb, iou=0.85)[-1]['found'] == 0.0
    assert size_breakdown(dets, roidb, found_thresh=0.5)[-1]['class'] is None  # nothing found: no class rate


def test_empty_bins_give_none_and_a_mismatched_image_count_is_refused():
    roidb = [_entry([[0, 0, 9, 9]], [1])]
    rows = size_breakdown(_all_boxes(2, 1, {}), roidb)
    assert rows[1] == {'bin': '24-48 px', 'objects': 0, 'found': None, 'class': None, 'right': None}
    assert '    -' in format_breakdown(rows)
    with pytest.raises(ValueError, match='detections cover 2 images, the test set has 1'):
        size_breakdown(_all_boxes(2, 2, {}), roidb)


def _custom_test_set(make_voc):
    # VOC coordinates are 1-based: the roidb's boxes are these minus 1
    return make_voc([('a', 200, 150, [('cat', 1, 1, 20, 10), ('dog', 51, 51, 150, 100)]),
                     ('b', 200, 150, [('dog', 11, 11, 40, 40, 1)])], split='test', classes=['cat', 'dog'])


def test_tool_reads_test_net_detections(make_voc, load_tool, tmp_path, capsys):
    root = _custom_test_set(make_voc)
    all_boxes = _all_boxes(3, 2, {(1, 0): [[0, 0, 19, 9, 0.9]],      # the 20 px cat: right
                                  (1, 1): [[10, 10, 39, 39, 0.9]]})   # the difficult dog: not counted
    det = save_detections(all_boxes, ['__background__', 'cat', 'dog'], ['a', 'b'], str(tmp_path / 'd.npz'))
    out_json = tmp_path / 'rows.json'
    tool = load_tool('analyze_detections')
    assert tool.main([det, '--dataset', 'custom', '--data_path', root, '--json', str(out_json)]) == 0
    text = capsys.readouterr().out
    assert 'custom_test' in text and '< 24 px        1  1.000  1.000  1.000' in text
    assert '>= 96 px        1  0.000      -  0.000' in text
    rows = json.loads(out_json.read_text())['rows']
    assert rows[-1] == {'bin': 'all', 'objects': 2, 'found': 0.5, 'class': 1.0, 'right': 0.5}


def test_tool_refuses_detections_of_another_set(make_voc, load_tool, tmp_path, capsys):
    root = _custom_test_set(make_voc)
    tool = load_tool('analyze_detections')
    det = save_detections(_all_boxes(3, 1, {}), ['__background__', 'cat', 'dog'], ['a'], str(tmp_path / 'd.npz'))
    assert tool.main([det, '--dataset', 'custom', '--data_path', root]) == 1
    assert 'covers other images than custom_test (1 against 2)' in capsys.readouterr().err
    det = save_detections(_all_boxes(2, 2, {}), ['__background__', 'cat'], ['a', 'b'], str(tmp_path / 'e.npz'))
    assert tool.main([det, '--dataset', 'custom', '--data_path', root]) == 1
    assert "holds classes ['__background__', 'cat']" in capsys.readouterr().err
    assert tool.main([str(tmp_path / 'none.npz'), '--dataset', 'custom', '--data_path', root]) == 1
    assert 'no such file' in capsys.readouterr().err
    assert tool.main([det, '--edges', '48', '24']) == 2
