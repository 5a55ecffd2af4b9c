"""COCO datasets on a small generated json: loading (xywh -> pixel-inclusive xyxy, clipping, crowd, zero area),
training use of crowd boxes, the cache, results json, and COCOeval on perfect and hand-worked detections."""
import glob
import json
import os

import cv2
import numpy as np
import pytest

from lib.datasets.coco import coco
from lib.model.utils.config import cfg
from lib.roi_data_layer.minibatch import gt_indices

IMAGES = [(1, 60, 40), (2, 50, 50), (5, 30, 30), (7, 20, 20)]
ANNS = [  # id, image, category, bbox xywh, area, iscrowd
    (1, 1, 1, [10, 5, 20, 10], 200, 0),
    (2, 1, 3, [40, 25, 20, 15], 300, 0),   # ends exactly on the last pixel: x2 = 59, y2 = 39
    (3, 1, 1, [0, 0, 10, 10], 100, 1),     # crowd
    (4, 2, 3, [5, 5, 0, 10], 0, 0),        # zero area: dropped
    (5, 2, 3, [5, 5, 10, 10], 100, 0),
    (6, 5, 3, [20, 20, 15, 15], 225, 0),   # runs past the 30x30 image: clipped to x2 = y2 = 29
]
# What COCOeval compares against: the json boxes as x1, y1, x2 = x + w - 1, y2 = y + h - 1 (not clipped).
PERFECT = [(1, 0, (10, 5, 29, 14)), (2, 0, (40, 25, 59, 39)), (2, 1, (5, 5, 14, 14)), (2, 2, (20, 20, 34, 34))]


@pytest.fixture
def coco_dir():
    root = os.path.join(cfg.DATA_DIR, 'coco')
    os.makedirs(os.path.join(root, 'annotations'))
    os.makedirs(os.path.join(root, 'images', 'val2014'))
    images = []
    for image_id, w, h in IMAGES:
        name = f'COCO_val2014_{image_id:012d}.jpg'
        cv2.imwrite(os.path.join(root, 'images', 'val2014', name), np.zeros((h, w, 3), np.uint8))
        images.append({'id': image_id, 'width': w, 'height': h, 'file_name': name})
    anns = [{'id': i, 'image_id': im, 'category_id': c, 'bbox': b, 'area': a, 'iscrowd': cr}
            for i, im, c, b, a, cr in ANNS]
    data = {'images': images, 'annotations': anns,
            'categories': [{'id': 1, 'name': 'cat', 'supercategory': 'animal'},
                           {'id': 3, 'name': 'dog', 'supercategory': 'animal'}]}
    with open(os.path.join(root, 'annotations', 'instances_minival2014.json'), 'w') as f:
        json.dump(data, f)
    return root


def _without_zero_area(coco_dir):
    """COCOeval counts a zero-area gt box as a positive no detection can match; drop it for the AP tests."""
    path = os.path.join(coco_dir, 'annotations', 'instances_minival2014.json')
    with open(path) as f:
        data = json.load(f)
    data['annotations'] = [a for a in data['annotations'] if a['area'] > 0]
    with open(path, 'w') as f:
        json.dump(data, f)


def _dets(imdb, per_class):
    all_boxes = [[np.zeros((0, 5), np.float32) for _ in range(imdb.num_images)] for _ in range(imdb.num_classes)]
    for cls, image_pos, box, score in per_class:
        all_boxes[cls][image_pos] = np.vstack([all_boxes[cls][image_pos], [*box, score]]).astype(np.float32)
    return all_boxes


def test_load(coco_dir):
    imdb = coco('minival', '2014')
    assert imdb.name == 'coco_2014_minival'
    assert imdb.classes == ('__background__', 'cat', 'dog')
    assert imdb.image_index == [1, 2, 5, 7] and imdb.image_id_at(1) == 2
    assert imdb.image_path_at(0) == os.path.join(coco_dir, 'images', 'val2014', 'COCO_val2014_000000000001.jpg')
    r0, r1, r2, r3 = imdb.roidb
    np.testing.assert_array_equal(r0['boxes'], [[10, 5, 29, 14], [40, 25, 59, 39], [0, 0, 9, 9]])
    np.testing.assert_array_equal(r0['gt_classes'], [1, 2, 1])
    np.testing.assert_array_equal(r0['gt_overlaps'].toarray(), [[0, 1, 0], [0, 0, 1], [-1, -1, -1]])
    np.testing.assert_array_equal(r0['seg_areas'], [200, 300, 100])
    assert (r0['width'], r0['height']) == (60, 40)
    np.testing.assert_array_equal(r1['boxes'], [[5, 5, 14, 14]])
    np.testing.assert_array_equal(r2['boxes'], [[20, 20, 29, 29]])
    assert r3['boxes'].shape == (0, 4)


def test_crowd_boxes_dropped_only_without_use_all_gt(coco_dir):
    entry = coco('minival', '2014').roidb[0]
    assert gt_indices(entry, use_all_gt=True).tolist() == [0, 1, 2]
    assert gt_indices(entry, use_all_gt=False).tolist() == [0, 1]


def test_flip_uses_json_widths(coco_dir):
    imdb = coco('minival', '2014')
    imdb.append_flipped_images()
    np.testing.assert_array_equal(imdb.roidb[4]['boxes'][:2], [[30, 5, 49, 14], [0, 25, 19, 39]])


def test_cache_rebuilt_when_json_changes(coco_dir, capsys):
    coco('minival', '2014').roidb
    assert 'wrote gt roidb' in capsys.readouterr().out
    coco('minival', '2014').roidb
    assert 'loaded from' in capsys.readouterr().out
    path = os.path.join(coco_dir, 'annotations', 'instances_minival2014.json')
    with open(path) as f:
        data = json.load(f)
    data['annotations'][4]['bbox'] = [6, 5, 10, 10]
    with open(path, 'w') as f:
        json.dump(data, f)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    roidb = coco('minival', '2014').roidb
    assert 'out of date' in capsys.readouterr().out
    np.testing.assert_array_equal(roidb[1]['boxes'], [[6, 5, 15, 14]])


def test_perfect_detections_give_ap_one(coco_dir, tmp_path):
    _without_zero_area(coco_dir)
    imdb = coco('minival', '2014')
    res = imdb.evaluate_detections(_dets(imdb, [(c, i, b, 0.9) for c, i, b in PERFECT]), str(tmp_path))
    assert res['AP'] == pytest.approx(1.0) and res['AP50'] == pytest.approx(1.0) and res['mAP'] == res['AP']
    assert res['per_class'] == {'cat': pytest.approx(1.0), 'dog': pytest.approx(1.0)}
    with open(tmp_path / 'detection_results.json') as f:
        assert json.load(f)['AP'] == pytest.approx(1.0)
    assert not glob.glob(str(tmp_path / 'detections_*.json'))  # cleaned up


def test_no_detections_give_zero_for_every_metric(coco_dir, tmp_path, capsys):
    imdb = coco('minival', '2014')
    res = imdb.evaluate_detections(_dets(imdb, []), str(tmp_path))
    assert 'no detections to evaluate' in capsys.readouterr().out
    assert set(res) == {'mAP', 'AP_coco', 'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs',
                        'ARm', 'ARl', 'per_class'}
    assert all(v == 0.0 for k, v in res.items() if k != 'per_class') and set(res['per_class']) == {'cat', 'dog'}


def test_worked_case(coco_dir, tmp_path, capsys):
    _without_zero_area(coco_dir)
    imdb = coco('minival', '2014')
    # cat (1 gt; the crowd box is ignored): one perfect detection -> AP 1.
    # dog (3 gt): a perfect detection (score .9) then a miss (score .8): recall 1/3 at precision 1 and never more,
    # so precision is 1 at the 34 recall thresholds 0, .01, ..., .33 and 0 at the 67 above, at every IoU
    # threshold: AP = 34 / 101.
    dets = _dets(imdb, [(1, 0, (10, 5, 29, 14), 0.9), (2, 0, (40, 25, 59, 39), 0.9), (2, 1, (30, 30, 40, 40), 0.8)])
    res = imdb.evaluate_detections(dets, str(tmp_path))
    assert res['per_class']['dog'] == pytest.approx(34 / 101)
    assert res['per_class']['cat'] == pytest.approx(1.0)
    assert res['AP'] == pytest.approx((1 + 34 / 101) / 2)
    out = capsys.readouterr().out
    assert 'Mean and per-category AP' in out and 'Average Precision' in out


def test_results_json_is_xywh_pixel_inclusive(coco_dir, tmp_path):
    imdb = coco('minival', '2014')
    imdb.competition_mode(True)
    imdb.evaluate_detections(_dets(imdb, [(2, 1, (5, 5, 14, 14), 0.5)]), str(tmp_path))
    with open(tmp_path / 'detections_minival2014_results.json') as f:
        assert json.load(f) == [{'image_id': 2, 'category_id': 3, 'bbox': [5.0, 5.0, 10.0, 10.0], 'score': 0.5}]


def test_missing_annotation_file_is_named():
    with pytest.raises(FileNotFoundError, match='instances_val2017.json'):
        coco('val', '2017')
