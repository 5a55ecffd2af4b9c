"""Bad annotations and files: each gives an error naming the file (and the box), or a logged, safe fix-up."""
import logging
import os

import numpy as np
import pytest

from lib.datasets.voc_format import voc_format
from lib.datasets.voc_xml import AnnotationError
from lib.roi_data_layer.roidb import filter_roidb


def _roidb(root):
    return voc_format('trainval', root, classes=['dog', 'cat']).roidb


def test_malformed_xml(make_voc):
    root = make_voc([('bad', 20, 20, '<annotation><object><name>dog</name></annotation>')])
    with pytest.raises(AnnotationError, match=r'bad\.xml: malformed XML'):
        _roidb(root)


def test_not_a_voc_annotation(make_voc):
    root = make_voc([('bad', 20, 20, '<html></html>')])
    with pytest.raises(AnnotationError, match=r'bad\.xml: root element is <html>'):
        _roidb(root)


@pytest.mark.parametrize('coords,what', [((10, 5, 4, 8), 'xmax < xmin'), ((2, 9, 6, 3), 'ymax < ymin')])
def test_inverted_box(make_voc, coords, what):
    root = make_voc([('inv', 20, 20, [('dog', *coords)])])
    with pytest.raises(AnnotationError, match=r'inv\.xml: object 0 \(dog\) box \[xmin=.*\] has xmax < xmin or ymax'):
        _roidb(root)


def test_box_entirely_outside_the_image(make_voc):
    root = make_voc([('out', 20, 20, [('dog', 25, 2, 30, 6)])])
    with pytest.raises(AnnotationError, match=r'out\.xml: object 0 \(dog\) box \[xmin=25.*lies outside the 20x20'):
        _roidb(root)


def test_box_past_the_border_is_clamped_with_a_warning(make_voc, caplog):
    root = make_voc([('over', 20, 10, [('dog', 0, 2, 23, 10), ('cat', 1, 1, 20, 10)])])
    with caplog.at_level(logging.WARNING):
        roidb = _roidb(root)
    np.testing.assert_array_equal(roidb[0]['boxes'], [[0, 1, 19, 9], [0, 0, 19, 9]])
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and 'over.xml' in msgs[0] and 'xmax=23' in msgs[0] and 'clamped' in msgs[0]


def test_unknown_class(make_voc):
    root = make_voc([('a', 20, 20, [('dog', 1, 1, 5, 5), ('unicorn', 2, 2, 6, 6)])])
    with pytest.raises(AnnotationError, match=r"a\.xml: object 1: unknown class 'unicorn'.*\['dog', 'cat'\]"):
        _roidb(root)


def test_missing_image(make_voc):
    root = make_voc([('a', 20, 20, [('dog', 1, 1, 5, 5)])])
    os.remove(os.path.join(root, 'JPEGImages', 'a.jpg'))
    with pytest.raises(FileNotFoundError, match=r'image file not found: .*JPEGImages.a\.jpg'):
        _roidb(root)


def test_unreadable_image(make_voc):
    root = make_voc([('a', 20, 20, [('dog', 1, 1, 5, 5)])])
    with open(os.path.join(root, 'JPEGImages', 'a.jpg'), 'wb') as f:
        f.write(b'\x00garbage')
    with pytest.raises(IOError, match=r'could not read image .*a\.jpg'):
        _roidb(root)


def test_empty_object_list_is_kept_then_filtered(make_voc):
    root = make_voc([('empty', 20, 20, []), ('a', 20, 20, [('dog', 1, 1, 5, 5)])])
    roidb = _roidb(root)
    assert len(roidb) == 2 and roidb[0]['boxes'].shape == (0, 4)
    assert [len(r['boxes']) for r in filter_roidb(roidb)] == [1]


def test_image_set_line_without_annotation(make_voc):
    root = make_voc([('a', 20, 20, [('dog', 1, 1, 5, 5)])])
    with open(os.path.join(root, 'ImageSets', 'Main', 'trainval.txt'), 'a') as f:
        f.write('ghost\n')
    with pytest.raises(FileNotFoundError, match=r"trainval\.txt:2: image 'ghost' has no annotation file .*ghost\.xml"):
        voc_format('trainval', root, classes=['dog']).roidb


@pytest.mark.parametrize('bndbox,msg', [
    ('<xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>', 'has no <ymax>'),
    ('<xmin>one</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>', "<xmin> is not a number: 'one'"),
])
def test_incomplete_or_non_numeric_box(make_voc, bndbox, msg):
    xml = f'<annotation><object><name>dog</name><bndbox>{bndbox}</bndbox></object></annotation>'
    root = make_voc([('b', 20, 20, xml)])
    with pytest.raises(AnnotationError, match=r'b\.xml: object 0 \(dog\): .*' + msg):
        _roidb(root)


def test_object_without_name_or_box(make_voc):
    root = make_voc([('n', 20, 20, '<annotation><object><bndbox/></object></annotation>')])
    with pytest.raises(AnnotationError, match=r'n\.xml: object 0 has no <name>'):
        _roidb(root)
    root = make_voc([('m', 20, 20, '<annotation><object><name>dog</name></object></annotation>')])
    with pytest.raises(AnnotationError, match=r'm\.xml: object 0 \(dog\) has no <bndbox>'):
        _roidb(root)


def test_missing_folder_parts(tmp_path):
    with pytest.raises(FileNotFoundError, match='dataset folder not found'):
        voc_format('trainval', str(tmp_path / 'nothing'))
    (tmp_path / 'half' / 'Annotations').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r'not a VOC-format folder: missing ImageSets.Main/'):
        voc_format('trainval', str(tmp_path / 'half'))
