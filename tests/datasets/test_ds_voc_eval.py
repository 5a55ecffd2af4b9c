"""VOC evaluation: voc_ap by hand for both metrics, voc_eval on written files (difficult, duplicates, ties, the
strict IoU threshold), its cache, and evaluate_detections end to end."""
import json
import os

import numpy as np
import pytest

from lib.datasets.voc_eval import eval_detections, load_annotations, voc_ap, voc_eval
from lib.datasets.voc_format import voc_format


def test_voc_ap_by_hand():
    # detections TP, FP, TP, TP with 4 positives
    rec = np.array([0.25, 0.25, 0.5, 0.75])
    prec = np.array([1.0, 0.5, 2 / 3, 0.75])
    # area: the precision envelope is 1 on (0, .25], .75 on (.25, .75], 0 after -> .25 + .5 * .75 = .625
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.625)
    # 11-point: t = 0, .1, .2 -> 1; t = .3, .4, .5 -> max(2/3, .75) = .75; t = .6, .7 -> .75; t = .8, .9, 1 -> 0
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((3 * 1 + 5 * 0.75) / 11)
    # a perfect curve
    assert voc_ap([0.5, 1.0], [1.0, 1.0]) == pytest.approx(1.0)
    assert voc_ap([0.5, 1.0], [1.0, 1.0], True) == pytest.approx(1.0)
    # no detection at all
    assert voc_ap([], []) == 0.0 and voc_ap([], [], True) == 0.0


def _xml(objects):
    body = ''.join(f'<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>'
                   f'<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>'
                   for n, b, d in objects)
    return f'<annotation><size><width>100</width><height>100</height><depth>3</depth></size>{body}</annotation>'


@pytest.fixture
def eval_files(tmp_path):
    ann = tmp_path / 'Annotations'
    ann.mkdir()
    # image a: dog G1 and a difficult dog G2; image b: dog G3 and a cat. 2 positives for 'dog'.
    (ann / 'a.xml').write_text(_xml([('dog', (1, 1, 10, 10), 0), ('dog', (21, 21, 30, 30), 1)]))
    (ann / 'b.xml').write_text(_xml([('dog', (1, 1, 10, 10), 0), ('cat', (40, 40, 60, 60), 0)]))
    imageset = tmp_path / 'test.txt'
    imageset.write_text('a\nb\n')
    return str(ann / '{:s}.xml'), str(imageset), str(tmp_path / 'cache')


def test_voc_eval_difficult_and_duplicates(eval_files, tmp_path):
    annopath, imageset, cachedir = eval_files
    det = tmp_path / 'det_dog.txt'
    det.write_text('a 0.9 1 1 10 10\n'      # TP on G1
                   'a 0.8 1 1 10 10\n'      # duplicate of G1: FP
                   'a 0.7 21 21 30 30\n'    # on the difficult G2: ignored
                   'b 0.6 50 50 60 60\n'    # no overlap: FP
                   'b 0.5 1 1 10 11\n')     # IoU 100/110 with G3: TP
    rec, prec, ap = voc_eval(str(det), annopath, imageset, 'dog', cachedir, ovthresh=0.5, use_07_metric=False)
    # cumulative tp 1,1,1,1,2 and fp 0,1,1,2,2 over 2 positives
    np.testing.assert_allclose(rec, [0.5, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(prec, [1, 0.5, 0.5, 1 / 3, 0.5])
    # area: envelope 1 on (0, .5], .5 on (.5, 1] -> .5 + .25
    assert ap == pytest.approx(0.75)
    # 11-point: t = 0...0.5 (6 points) -> 1, t = .6...1 (5 points) -> .5
    _, _, ap07 = voc_eval(str(det), annopath, imageset, 'dog', cachedir, use_07_metric=True)
    assert ap07 == pytest.approx((6 + 5 * 0.5) / 11)


def test_voc_eval_ties_keep_file_order_and_threshold_is_strict(eval_files, tmp_path):
    annopath, imageset, cachedir = eval_files
    det = tmp_path / 'det_cat.txt'
    # same score: the first line (IoU 121/441 = 0.27 with the cat) is a FP, the second (exact) a TP:
    # prec 0, .5; rec 0, 1
    det.write_text('b 0.8 40 40 50 50\nb 0.8 40 40 60 60\n')
    rec, prec, ap = voc_eval(str(det), annopath, imageset, 'cat', cachedir)
    np.testing.assert_allclose(rec, [0, 1])
    np.testing.assert_allclose(prec, [0, 0.5])
    assert ap == pytest.approx(0.5)
    # IoU exactly 0.5 (box 10x5 inside the 10x10 G1) is not a match: "IoU > ovthresh"
    det.write_text('a 0.9 1 1 10 5\n')
    rec, prec, ap = voc_eval(str(det), annopath, imageset, 'dog', cachedir)
    assert rec.tolist() == [0.0] and ap == 0.0
    rec, prec, ap = voc_eval(str(det), annopath, imageset, 'dog', cachedir, ovthresh=0.49)
    assert rec.tolist() == [0.5] and ap == pytest.approx(0.5)


def test_in_memory_evaluation_and_unknown_image(eval_files):
    annopath, imageset, cachedir = eval_files
    names, recs = load_annotations(annopath, imageset, cachedir)
    rec, prec, ap = eval_detections(recs, names, 'dog', ['b', 'a'], [0.3, 0.9],
                                    [[1, 1, 10, 10], [1, 1, 10, 10]])
    assert ap == pytest.approx(1.0) and rec.tolist() == [0.5, 1.0]
    rec, prec, ap = eval_detections(recs, names, 'horse', [], [], np.zeros((0, 4)))
    assert np.isnan(ap)
    with pytest.raises(KeyError, match="image 'zzz', which is not in the image set"):
        eval_detections(recs, names, 'dog', ['zzz'], [1.0], [[1, 1, 2, 2]])


def test_annotation_cache_is_json_and_never_stale(eval_files):
    annopath, imageset, cachedir = eval_files
    names, recs = load_annotations(annopath, imageset, cachedir)
    files = os.listdir(cachedir)
    assert len(files) == 1 and files[0].endswith('.json')
    with open(os.path.join(cachedir, files[0])) as f:
        assert json.load(f)['imagenames'] == ['a', 'b']
    # a changed image set gets its own cache entry (the original reused the stale pickle and failed)
    with open(imageset, 'w') as f:
        f.write('b\n')
    names, recs = load_annotations(annopath, imageset, cachedir)
    assert names == ['b'] and len(os.listdir(cachedir)) == 2
    # an edited annotation too
    path = annopath.format('b')
    with open(path) as f:
        text = f.read()
    with open(path, 'w') as f:
        f.write(text.replace('<xmax>60</xmax>', '<xmax>70</xmax>'))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    names, recs = load_annotations(annopath, imageset, cachedir)
    assert recs['b'][1]['bbox'] == [40, 40, 70, 60]
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="image 'b' has no annotation file"):
        load_annotations(annopath, imageset, cachedir)


def _perfect_detections(imdb):
    all_boxes = [[np.zeros((0, 5), np.float32) for _ in range(imdb.num_images)] for _ in range(imdb.num_classes)]
    for i, r in enumerate(imdb.roidb):
        for box, cls in zip(r['boxes'], r['gt_classes']):
            all_boxes[cls][i] = np.vstack([all_boxes[cls][i], np.append(box, 1.0)[None]]).astype(np.float32)
    return all_boxes


def test_evaluate_detections_end_to_end(tiny_shapes_root, tmp_path, capsys):
    imdb = voc_format('trainval', tiny_shapes_root, name='shapes_eval')
    all_boxes = _perfect_detections(imdb)
    out = str(tmp_path / 'out')
    res = imdb.evaluate_detections(all_boxes, out)
    present = [c for c, v in res['per_class'].items() if v is not None]
    assert len(present) >= 5
    for key in ('mAP', 'mAP_voc07', 'mAP_area', 'AP_coco'):
        assert res[key] == pytest.approx(1.0)
    assert res['use_07_metric'] and res['per_class'] == res['per_class_voc07']
    printed = capsys.readouterr().out
    assert 'AP@[.5:.95]' in printed and 'Mean AP = 1.0000' in printed
    with np.load(os.path.join(out, 'pr_curves.npz'), allow_pickle=False) as pr:
        assert pr[f'rec_{present[0]}'][-1] == pytest.approx(1.0)
    with open(os.path.join(out, 'voc_eval.json')) as f:
        assert json.load(f)['mAP'] == pytest.approx(1.0)
    # the salted results files are removed afterwards (cleanup), as in the original
    results_dir = os.path.join(os.path.dirname(tiny_shapes_root), 'results', 'VOC2007', 'Main')
    assert os.listdir(results_dir) == []

    # a box shifted so that its IoU is 0.6..0.7 counts at IoU .5 but not at .75: AP@[.5:.95] drops, AP50 does not
    shifted = [[b.copy() for b in c] for c in all_boxes]
    for c in shifted[1:]:
        for b in c:
            if len(b):
                w = b[:, 2] - b[:, 0] + 1
                b[:, 0] += np.floor(w * 0.2)
                b[:, 2] += np.floor(w * 0.2)
    res = imdb.evaluate_detections(shifted, out)
    assert res['AP_coco'] < 0.8 and res['mAP_area'] > res['AP_coco']


def test_results_files_are_one_based_in_competition_mode(make_voc):
    root = make_voc([('a', 30, 30, [('dog', 3, 4, 12, 20)])], split='test', classes=['dog'])
    imdb = voc_format('test', root)
    imdb.competition_mode(True)
    dets = np.array([[2, 3, 11, 19, 0.75]], np.float32)
    res = imdb.evaluate_detections([[[]], [dets]], None)
    assert res['mAP'] == pytest.approx(1.0)
    path = os.path.join(os.path.dirname(root), 'results', 'VOC2007', 'Main', 'comp4_det_test_dog.txt')
    with open(path) as f:
        assert f.read() == 'a 0.750 3.0 4.0 12.0 20.0\n'
    with pytest.raises(ValueError, match='all_boxes has 1 classes, expected 2'):
        imdb.evaluate_detections([[dets]], None)


def test_runs_evaluating_at_once_in_competition_mode_each_read_their_own_detections(make_voc):
    """test_net turns competition mode on (unsalted comp4_det_<split>_<cls>.txt names, as the original): a second
    run writing those names while the first evaluates must not change the first one's AP (it did: two test_net
    runs on two checkpoints printed the same table)."""
    root = make_voc([('a', 30, 30, [('dog', 3, 4, 12, 20)])], split='test', classes=['dog'])
    good = [[[]], [np.array([[2, 3, 11, 19, 0.75]], np.float32)]]
    bad = [[[]], [np.array([[20, 20, 28, 28, 0.9]], np.float32)]]
    first, second = voc_format('test', root), voc_format('test', root)
    first.competition_mode(True)
    second.competition_mode(True)
    real_eval = first._do_python_eval
    seen = {}

    def eval_after_the_other_run_wrote(template, output_dir=None):
        seen['second'] = second.evaluate_detections(bad, None)['mAP']   # writes the shared names meanwhile
        return real_eval(template, output_dir)
    first._do_python_eval = eval_after_the_other_run_wrote
    assert first.evaluate_detections(good, None)['mAP'] == pytest.approx(1.0)
    assert seen['second'] == pytest.approx(0.0)
    results = os.path.join(os.path.dirname(root), 'results', 'VOC2007', 'Main')
    assert os.listdir(results) == ['comp4_det_test_dog.txt']   # the last run's file, no temporary left
    with open(os.path.join(results, 'comp4_det_test_dog.txt')) as f:
        assert f.read() == 'a 0.750 3.0 4.0 12.0 20.0\n'


def test_image_set_lines_are_read_by_their_first_word_as_in_training(make_voc):
    """VOC's <class>_<split>.txt files add a column ('a  1'): training reads the first word, so must evaluation."""
    root = make_voc([('a', 30, 30, [('dog', 3, 4, 12, 20)]), ('b', 30, 30, [('dog', 1, 1, 9, 9)])], split='test',
                    classes=['dog'])
    with open(os.path.join(root, 'ImageSets', 'Main', 'test.txt'), 'w') as f:
        f.write('a  1\n\nb -1\n')
    imdb = voc_format('test', root)
    assert imdb.image_index == ['a', 'b']
    dets = [np.array([[2, 3, 11, 19, 0.9]], np.float32), np.array([[0, 0, 8, 8, 0.8]], np.float32)]
    assert imdb.evaluate_detections([[[], []], dets], None)['mAP'] == pytest.approx(1.0)


@pytest.mark.parametrize('dx,expected', [(16, 0.5), (4, 0.9), (30, 0.1)])
def test_coco_style_ap_counts_the_ten_thresholds_a_match_passes(make_voc, dx, expected):
    """One 100 x 100 object, one detection shifted by dx: IoU (100 - dx) / (100 + dx) (0.724, 0.923, 0.538) passes
    the thresholds .50, .55, ... below it, AP 1 at each of those and 0 above: AP@[.5:.95] = passed / 10."""
    root = make_voc([('a', 200, 200, [('dog', 11, 11, 110, 110)])], split='test', classes=['dog'])
    imdb = voc_format('test', root)
    det = np.array([[10 + dx, 10, 109 + dx, 109, 0.9]], np.float32)
    res = imdb.evaluate_detections([[[]], [det]], None)
    assert res['mAP_area'] == pytest.approx(1.0) and res['AP_coco'] == pytest.approx(expected)


@pytest.mark.parametrize('damage', ['', '{"key": ', '[1, 2]'])
def test_a_damaged_annotation_cache_is_parsed_again(eval_files, caplog, damage):
    annopath, imageset, cachedir = eval_files
    names, recs = load_annotations(annopath, imageset, cachedir)
    (name,) = os.listdir(cachedir)
    with open(os.path.join(cachedir, name), 'w') as f:
        f.write(damage)
    assert load_annotations(annopath, imageset, cachedir) == (names, recs)
    assert f'{name}: unreadable annotation cache' in caplog.text
    with open(os.path.join(cachedir, name)) as f:  # rewritten whole
        assert json.load(f)['imagenames'] == names
