"""The synthetic shapes generator: determinism, the VOC layout, and the cases it promises (border, tiny/difficult,
grayscale, empty, extreme aspect ratios)."""
import filecmp
import os

import cv2
import numpy as np
import pytest

from lib.datasets import shapes
from lib.datasets.voc_format import voc_format
from lib.datasets.voc_xml import parse_voc_xml


def _ann(root, image_id):
    return parse_voc_xml(os.path.join(root, 'Annotations', image_id + '.xml'))


def _all_files(root):
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files]
    return sorted(out)


def test_same_seed_gives_identical_files_whatever_the_worker_count(tmp_path):
    kw = dict(num_train=18, num_test=2, seed=5, min_size=64, max_size=96)
    a = shapes.generate_shapes_dataset(str(tmp_path / 'a' / 'VOC2007'), workers=1, **kw)
    b = shapes.generate_shapes_dataset(str(tmp_path / 'b' / 'VOC2007'), workers=2, **kw)
    files = _all_files(a)
    assert files == _all_files(b)
    assert len([f for f in files if f.endswith('.jpg')]) == 20
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert mismatch == [] and errors == []
    c = shapes.generate_shapes_dataset(str(tmp_path / 'c' / 'VOC2007'), workers=1, **dict(kw, seed=6))
    _, mismatch, _ = filecmp.cmpfiles(a, c, [f for f in files if f.endswith('.jpg')], shallow=False)
    assert len(mismatch) == 20


def test_generating_with_workers_after_opencv_used_its_thread_pool(tmp_path):
    """A process that has run a large cv2.resize (OpenCV's thread pool) and then generates the set with forked
    workers: the workers must not touch that pool (a suite once hung here). In a subprocess, with a timeout."""
    import subprocess
    import sys
    code = ("import cv2, numpy as np\n"
            "from lib.datasets.shapes import generate_shapes_dataset\n"
            "before = cv2.getNumThreads()\n"
            "im = np.random.rand(1000, 1500, 3).astype(np.float32)\n"
            "for _ in range(3):\n"
            "    cv2.resize(im, None, None, fx=1.7, fy=1.7)\n"
            f"generate_shapes_dataset({str(tmp_path / 'VOC2007')!r}, num_train=30, num_test=6, seed=1, workers=2)\n"
            "print(cv2.getNumThreads() == before)\n")
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, 'PYTHONPATH': root})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'True'  # the caller's OpenCV thread count is given back
    assert len(os.listdir(tmp_path / 'VOC2007' / 'JPEGImages')) == 36


def test_layout_and_voc_schema(tiny_shapes_root):
    root = tiny_shapes_root
    with open(os.path.join(root, 'ImageSets', 'Main', 'trainval.txt')) as f:
        assert f.read().split() == [f'{n:06d}' for n in range(1, 21)]
    with open(os.path.join(root, 'ImageSets', 'Main', 'test.txt')) as f:
        assert f.read().split() == [f'{n:06d}' for n in range(21, 27)]
    with open(os.path.join(root, 'classes.txt')) as f:
        assert tuple(f.read().split()) == shapes.SHAPE_CLASSES
    assert len(shapes.SHAPE_CLASSES) >= 5
    seen = set()
    for n in range(1, 27):
        image_id = f'{n:06d}'
        ann = _ann(root, image_id)
        im = cv2.imread(os.path.join(root, 'JPEGImages', image_id + '.jpg'), cv2.IMREAD_UNCHANGED)
        h, w = im.shape[:2]
        assert ann['filename'] == image_id + '.jpg'
        assert ann['size'] == (w, h, 1 if im.ndim == 2 else 3)
        for o in ann['objects']:
            x1, y1, x2, y2 = o['bbox']
            assert 1 <= x1 <= x2 <= w and 1 <= y1 <= y2 <= h
            assert o['pose'] == 'Unspecified' and o['truncated'] in (0, 1)
            # difficult exactly when the visible box is tiny
            assert o['difficult'] == int(max(x2 - x1 + 1, y2 - y1 + 1) < shapes.DIFFICULT_SIZE)
            seen.add(o['name'])
    assert len(seen) >= 5


def test_guaranteed_cases(tiny_shapes_root):
    root = tiny_shapes_root
    # split index 3 and 13: an object cut by the left border -> xmin = 1, truncated
    for image_id in ('000004', '000014'):
        first = _ann(root, image_id)['objects'][0]
        assert first['bbox'][0] == 1 and first['truncated'] == 1
    # split index 6 and 16: a tiny object, marked difficult
    for image_id in ('000007', '000017'):
        first = _ann(root, image_id)['objects'][0]
        assert first['difficult'] == 1
        x1, y1, x2, y2 = first['bbox']
        assert max(x2 - x1 + 1, y2 - y1 + 1) < 12
    # split index 5 and 17: grayscale, saved as a 1-channel JPEG
    for image_id in ('000006', '000018', '000026'):
        im = cv2.imread(os.path.join(root, 'JPEGImages', image_id + '.jpg'), cv2.IMREAD_UNCHANGED)
        assert im.ndim == 2
        assert _ann(root, image_id)['size'][2] == 1
    # split index 7: no object at all
    assert _ann(root, '000008')['objects'] == []
    # aspect ratios: tall (< 0.5) at split index 1, wide (> 2) at 2
    ratios = {}
    for n in range(1, 27):
        w, h, _ = _ann(root, f'{n:06d}')['size']
        ratios[n] = w / h
    assert 0.45 <= ratios[2] < 0.5 and 2.0 < ratios[3] <= 2.2
    assert 0.45 <= ratios[22] < 0.5 and 2.0 < ratios[23] <= 2.2
    assert min(ratios.values()) >= 0.45 - 0.01 and max(ratios.values()) <= 2.2 + 0.01
    # short sides stay in [min_size, max_size]
    for n in range(1, 27):
        w, h, _ = _ann(root, f'{n:06d}')['size']
        assert 64 <= min(w, h) <= 120


def test_read_through_the_voc_format_path(tiny_shapes_root):
    imdb = voc_format('trainval', tiny_shapes_root, name='shapes_tiny_trainval')
    assert imdb.classes == ('__background__',) + shapes.SHAPE_CLASSES
    roidb = imdb.roidb
    assert len(roidb) == 20
    ann = _ann(tiny_shapes_root, '000004')
    np.testing.assert_array_equal(roidb[3]['boxes'], np.array([o['bbox'] for o in ann['objects']], np.float32) - 1)
    assert roidb[3]['boxes'][0, 0] == 0
    assert roidb[7]['boxes'].shape == (0, 4)
    assert any(r['gt_ishard'].any() for r in roidb)


def test_ensure_is_idempotent_and_regenerates_on_new_parameters(tmp_path, capsys):
    root = str(tmp_path / 'VOCdevkit_shapes' / 'VOC2007')
    kw = dict(num_train=4, num_test=2, seed=0, min_size=64, max_size=80, workers=1)
    assert shapes.ensure_shapes_dataset(root, **kw) == root
    assert 'generating' in capsys.readouterr().out
    jpg = os.path.join(root, 'JPEGImages', '000001.jpg')
    before = os.stat(jpg).st_mtime_ns
    shapes.ensure_shapes_dataset(root, **kw)
    assert capsys.readouterr().out == ''
    assert os.stat(jpg).st_mtime_ns == before
    shapes.ensure_shapes_dataset(root, **dict(kw, num_train=5))
    assert 'other parameters' in capsys.readouterr().out
    with open(os.path.join(root, 'ImageSets', 'Main', 'trainval.txt')) as f:
        assert len(f.read().split()) == 5
    assert not [d for d in os.listdir(tmp_path / 'VOCdevkit_shapes') if '.tmp-' in d]


def test_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path):
    root = tmp_path / 'mine'
    root.mkdir()
    (root / 'precious.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='not a generated shapes dataset'):
        shapes.generate_shapes_dataset(str(root), num_train=2, num_test=1, workers=1)
    assert (root / 'precious.txt').read_text() == 'keep me'


def test_bad_parameters():
    with pytest.raises(ValueError, match='min_size'):
        shapes.ensure_shapes_dataset('/nonexistent/x', min_size=100, max_size=50)


def test_make_shapes_voc_cli(tmp_path, capsys, load_tool):
    mod = load_tool('make_shapes_voc')
    root = str(tmp_path / 'cli' / 'VOC2007')
    mod.main(['--root', root, '--num-train', '3', '--num-test', '1', '--min-size', '64', '--max-size', '70',
              '--workers', '1'])
    assert '3 trainval + 1 test' in capsys.readouterr().out
    assert len(os.listdir(os.path.join(root, 'JPEGImages'))) == 4
