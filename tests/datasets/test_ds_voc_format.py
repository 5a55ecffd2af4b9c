"""VOC-format imdbs: loading (0-based float32 boxes), flipping, classes, the cache and its rebuild, the factory."""
import os

import numpy as np
import pytest

from lib.datasets import factory
from lib.datasets.imdb import flip_boxes
from lib.datasets.pascal_voc import VOC_CLASSES, pascal_voc
from lib.datasets.voc_format import voc_format
from lib.model.utils.config import cfg


def test_load_converts_to_zero_based_float32(make_voc):
    root = make_voc([('a', 50, 40, [('dog', 1, 1, 50, 40), ('cat', 10, 5, 20, 30, 1)]),
                     ('b', 30, 60, [])], classes=['cat', 'dog'])
    imdb = voc_format('trainval', root)
    assert imdb.classes == ('__background__', 'cat', 'dog')
    assert imdb.num_images == 2
    a, b = imdb.roidb
    assert a['boxes'].dtype == np.float32 and a['gt_classes'].dtype == np.int32
    np.testing.assert_array_equal(a['boxes'], [[0, 0, 49, 39], [9, 4, 19, 29]])
    np.testing.assert_array_equal(a['gt_classes'], [2, 1])
    np.testing.assert_array_equal(a['gt_ishard'], [0, 1])
    np.testing.assert_array_equal(a['gt_overlaps'].toarray(), [[0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(a['seg_areas'], [50 * 40, 11 * 26])
    assert (a['width'], a['height'], a['flipped']) == (50, 40, False)
    assert b['boxes'].shape == (0, 4) and b['gt_overlaps'].shape == (0, 3)
    assert imdb.image_path_at(1).endswith(os.path.join('JPEGImages', 'b.jpg'))


def test_flip_formula_and_involution():
    boxes = np.array([[0, 3, 9, 7], [5, 0, 99, 10], [0, 0, 0, 0]], dtype=np.float32)
    flipped = flip_boxes(boxes, 100)
    # x1' = W - x2 - 1, x2' = W - x1 - 1
    np.testing.assert_array_equal(flipped, [[90, 3, 99, 7], [0, 0, 94, 10], [99, 0, 99, 0]])
    np.testing.assert_array_equal(flip_boxes(flipped, 100), boxes)


def test_append_flipped_images_with_border_box_stays_valid(make_voc):
    # xmin = 1 in the XML is x1 = 0 and its flip is x2' = W - 0 - 1 = 63; [4, 4, 8, 8] flips to [64-8-1, .., 64-4-1].
    # The original stored uint16 boxes, where such arithmetic could wrap around.
    root = make_voc([('a', 64, 32, [('dog', 1, 2, 64, 20), ('dog', 5, 5, 9, 9)])], classes=['dog'])
    imdb = voc_format('trainval', root)
    orig = imdb.roidb[0]['boxes'].copy()
    assert orig[0, 0] == 0 and orig[0, 2] == 63
    imdb.append_flipped_images()
    assert imdb.num_images == 2 and len(imdb.roidb) == 2
    flipped = imdb.roidb[1]
    assert flipped['flipped'] is True and flipped['boxes'].dtype == np.float32
    np.testing.assert_array_equal(flipped['boxes'], [[0, 1, 63, 19], [55, 4, 59, 8]])
    assert (flipped['boxes'] >= 0).all() and (flipped['boxes'][:, 2] <= 63).all()
    assert imdb.image_path_at(1) == imdb.image_path_at(0)
    np.testing.assert_array_equal(imdb.roidb[0]['boxes'], orig)


def test_classes_collected_from_annotations_when_no_classes_txt(make_voc):
    root = make_voc([('a', 20, 20, [('zebra', 1, 1, 5, 5), ('ant', 2, 2, 6, 6)]),
                     ('b', 20, 20, [('moth', 1, 1, 5, 5)])])
    imdb = voc_format('trainval', root)
    assert imdb.classes == ('__background__', 'ant', 'moth', 'zebra')
    np.testing.assert_array_equal(imdb.roidb[0]['gt_classes'], [3, 1])


def test_explicit_classes_and_case_insensitive_names(make_voc):
    root = make_voc([('a', 20, 20, [('Dog', 1, 1, 5, 5)])])
    imdb = voc_format('trainval', root, classes=['__background__', 'dog'])
    np.testing.assert_array_equal(imdb.roidb[0]['gt_classes'], [1])
    with pytest.raises(ValueError, match=r"duplicate class names \['Dog', 'dog'\] \(names match case-insens"):
        voc_format('trainval', root, classes=['dog', 'Dog'])


def test_names_differing_in_case_are_one_class_trained_and_evaluated_alike(make_voc):
    """Training and VOC evaluation both match names case-insensitively: 'Dog' and 'dog' must be one class, or each
    spelling's AP would count the other's boxes as missed."""
    root = make_voc([('a', 20, 20, [('Dog', 1, 1, 5, 5)]), ('b', 20, 20, [('dog', 2, 2, 8, 8), ('cat', 1, 1, 4, 4)])])
    imdb = voc_format('trainval', root)
    assert imdb.classes == ('__background__', 'Dog', 'cat')
    assert [r['gt_classes'].tolist() for r in imdb.roidb] == [[1], [1, 2]]
    perfect = [[[], []], [np.array([[0, 0, 4, 4, 0.9]], np.float32), np.array([[1, 1, 7, 7, 0.8]], np.float32)],
               [np.zeros((0, 5), np.float32), np.array([[0, 0, 3, 3, 0.7]], np.float32)]]
    assert imdb.evaluate_detections(perfect, None)['mAP'] == pytest.approx(1.0)
    with open(os.path.join(root, 'classes.txt'), 'w') as f:
        f.write('dog\nDOG\n')
    with pytest.raises(ValueError, match=r"classes.txt: duplicate class names \['DOG', 'dog'\]"):
        voc_format('trainval', root)


def test_cache_is_npz_without_pickle_and_reused(make_voc, capsys):
    root = make_voc([('a', 20, 20, [('dog', 1, 1, 5, 5)])], classes=['dog'])
    voc_format('trainval', root).roidb
    out = capsys.readouterr().out
    assert 'wrote gt roidb' in out
    cache_dir = os.path.join(cfg.DATA_DIR, 'cache')
    files = [f for f in os.listdir(cache_dir) if f.endswith('_gt_roidb.npz')]
    assert len(files) == 1
    with np.load(os.path.join(cache_dir, files[0]), allow_pickle=False) as d:
        assert d['boxes'].dtype == np.float32
    roidb = voc_format('trainval', root).roidb
    assert 'loaded from' in capsys.readouterr().out
    np.testing.assert_array_equal(roidb[0]['boxes'], [[0, 0, 4, 4]])


@pytest.mark.parametrize('damage', [b'', b'PK\x03\x04 not a zip', b'\x93NUMPY garbage'])
def test_a_damaged_cache_is_rebuilt_with_a_warning(make_voc, capsys, caplog, damage):
    root = make_voc([('a', 20, 20, [('dog', 1, 1, 5, 5)])], classes=['dog'])
    voc_format('trainval', root).roidb
    cache_dir = os.path.join(cfg.DATA_DIR, 'cache')
    (name,) = [f for f in os.listdir(cache_dir) if f.endswith('_gt_roidb.npz')]
    with open(os.path.join(cache_dir, name), 'wb') as f:  # e.g. a disk that filled up, a copy cut short
        f.write(damage)
    capsys.readouterr()
    roidb = voc_format('trainval', root).roidb
    assert f'{name}: unreadable cache' in caplog.text
    assert 'out of date' not in capsys.readouterr().out  # the warning says why; no second, wrong reason
    np.testing.assert_array_equal(roidb[0]['boxes'], [[0, 0, 4, 4]])
    with np.load(os.path.join(cache_dir, name), allow_pickle=False) as d:  # rewritten whole
        np.testing.assert_array_equal(d['boxes'], [[0, 0, 4, 4]])


def test_cache_rebuilds_when_the_image_set_or_an_annotation_changes(make_voc, capsys):
    root = make_voc([('a', 20, 20, [('dog', 1, 1, 5, 5)]), ('b', 20, 20, [('dog', 2, 2, 8, 8)])], classes=['dog'])
    assert len(voc_format('trainval', root).roidb) == 2
    with open(os.path.join(root, 'ImageSets', 'Main', 'trainval.txt'), 'w') as f:
        f.write('b\n')
    capsys.readouterr()
    imdb = voc_format('trainval', root)
    roidb = imdb.roidb
    assert 'out of date' in capsys.readouterr().out
    assert len(roidb) == 1
    np.testing.assert_array_equal(roidb[0]['boxes'], [[1, 1, 7, 7]])
    ann = os.path.join(root, 'Annotations', 'b.xml')
    with open(ann) as f:
        text = f.read()
    with open(ann, 'w') as f:
        f.write(text.replace('<xmax>8</xmax>', '<xmax>12</xmax>'))
    st = os.stat(ann)
    os.utime(ann, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    np.testing.assert_array_equal(voc_format('trainval', root).roidb[0]['boxes'], [[1, 1, 11, 7]])


def test_pascal_voc_layout_and_metric_choice(make_voc, tmp_path):
    devkit = tmp_path / 'VOCdevkit2007'
    make_voc([('000001', 30, 20, [('person', 1, 1, 10, 10)])], root=devkit / 'VOC2007')
    imdb = pascal_voc('trainval', '2007', str(devkit))
    assert imdb.name == 'voc_2007_trainval' and imdb.classes == VOC_CLASSES and imdb.num_classes == 21
    assert imdb._use_07_metric
    np.testing.assert_array_equal(imdb.roidb[0]['gt_classes'], [VOC_CLASSES.index('person')])
    make_voc([('x', 30, 20, [])], root=tmp_path / 'VOCdevkit2012' / 'VOC2012')
    assert not pascal_voc('trainval', '2012', str(tmp_path / 'VOCdevkit2012'))._use_07_metric
    cfg.DATA_DIR = str(tmp_path)
    assert factory.get_imdb('voc_2007_trainval').num_images == 1


def test_factory_names_and_errors(make_voc):
    names = factory.list_imdbs()
    for n in ('voc_2007_trainval', 'voc_2012_test', 'coco_2014_minival', 'coco_2014_valminusminival',
              'coco_2017_train', 'shapes_trainval', 'shapes_test'):
        assert n in names
    with pytest.raises(KeyError, match='unknown dataset .*voc_2007_trainval'):
        factory.get_imdb('voc_2099_nothing')
    with pytest.raises(FileNotFoundError, match='--data_path'):
        factory.get_imdb('custom_trainval')
    root = make_voc([('a', 20, 20, [('dog', 1, 1, 5, 5)])], split='mysplit', classes=['dog'])
    factory.set_custom_root(root)
    imdb = factory.get_imdb('custom_mysplit')
    assert imdb.name == 'custom_mysplit' and imdb.classes == ('__background__', 'dog')
    factory.set_custom_root(root, classes=['cat', 'dog'])
    assert factory.get_imdb('custom_mysplit').classes == ('__background__', 'cat', 'dog')
    with pytest.raises(FileNotFoundError, match="splits here: \\['mysplit'\\]"):
        factory.get_imdb('custom_nosuch')


def test_shapes_names_generate_on_first_use(monkeypatch, tmp_path, capsys):
    from lib.datasets import shapes
    small = dict(num_train=3, num_test=2, seed=0, min_size=64, max_size=70, workers=1)
    real = shapes.ensure_shapes_dataset
    monkeypatch.setattr(shapes, 'ensure_shapes_dataset', lambda *a, **k: real(**small))
    imdb = factory.get_imdb('shapes_test')
    assert 'generating' in capsys.readouterr().out
    assert imdb.name == 'shapes_test' and imdb.num_images == 2 and imdb._use_07_metric
    assert imdb.data_path == os.path.join(cfg.DATA_DIR, 'VOCdevkit_shapes', 'VOC2007')


def test_set_proposal_method_rejects_unknown(make_voc):
    imdb = voc_format('trainval', make_voc([('a', 20, 20, [])], classes=['dog']))
    with pytest.raises(ValueError, match="unknown proposal method 'rpn'.*'gt'"):
        imdb.set_proposal_method('rpn')
    imdb.set_proposal_method('gt')
    assert len(imdb.roidb) == 1
