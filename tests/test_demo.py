"""tools/demo.py: result images for a folder, its own outputs skipped, a clear error without a camera."""
import os
import shutil
import sys

import cv2
import numpy as np
import pytest

import trainval_net
from lib.model.utils.config import reset_cfg

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import demo  # noqa: E402

from tiny_run import TINY_SET  # noqa: E402


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    """A one-iteration checkpoint (models/res18/shapes/faster_rcnn_1_1_0.pth) and a folder of 2 shapes images."""
    from lib.datasets.shapes import generate_shapes_dataset
    from lib.model.utils.train_utils import run_training
    tmp = tmp_path_factory.mktemp('demo')
    root = str(tmp / 'VOC2007')
    generate_shapes_dataset(root, num_train=2, num_test=2, seed=3, min_size=80, max_size=120, workers=1)
    reset_cfg()
    run_training(trainval_net.parse_args([
        '--dataset', 'custom', '--data_path', root, '--net', 'res18', '--weights', 'none', '--cfg',
        os.path.join(ROOT, 'cfgs', 'shapes_cpu.yml'), '--save_dir', str(tmp / 'models'), '--epochs', '1',
        '--max_iters', '1', '--set', 'DATA_DIR', str(tmp / 'data'), *TINY_SET]), log=lambda m: None)
    reset_cfg()
    images = tmp / 'images'
    images.mkdir()
    for name in sorted(os.listdir(os.path.join(root, 'JPEGImages')))[:2]:
        shutil.copy(os.path.join(root, 'JPEGImages', name), images / name)
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)  # the checkpoint is ~100 MB


def _argv(tmp, *extra):
    return ['--dataset', 'custom', '--net', 'res50', '--load_dir', str(tmp / 'models'), '--checkepoch', '1',
            '--checkpoint', '0', '--thresh', '0.0', *extra, '--set', 'TEST.SCALES', '[96]', 'TEST.MAX_SIZE', '160']


def test_demo_writes_result_images(model_dir, tmp_path, capsys):
    images = tmp_path / 'in'
    shutil.copytree(model_dir / 'images', images)
    cv2.imwrite(str(images / 'old_det.jpg'), cv2.imread(str(next(images.iterdir()))))  # an earlier output
    out_dir = tmp_path / 'out'
    # --net res50 on the command line: the checkpoint's own net (res18) is used, with its 7 classes
    code = demo.main(fix_load_dir(model_dir, '--image_dir', str(images), '--output_dir', str(out_dir)))
    assert code == 0
    inputs = sorted(n for n in os.listdir(images) if not n.endswith('_det.jpg'))
    assert sorted(os.listdir(out_dir)) == sorted(os.path.splitext(n)[0] + '_det.jpg' for n in inputs)
    for n in inputs:
        src = cv2.imread(str(images / n))
        res = cv2.imread(str(out_dir / (os.path.splitext(n)[0] + '_det.jpg')))
        assert res is not None and res.shape == src.shape
        # boxes were drawn (--thresh 0.0 draws every detection the demo keeps): the box colour, BGR (0, 204, 0)
        assert _box_coloured(res).sum() > _box_coloured(src).sum() + 100
    assert 'using it instead of --net res50' in capsys.readouterr().out


def _box_coloured(im):
    b, g, r = (im[:, :, k].astype(int) for k in range(3))
    return (abs(b - 0) < 40) & (abs(g - 204) < 40) & (abs(r - 0) < 40)


def test_draw_detections_draws_above_the_threshold_on_a_copy():
    from lib.model.utils.test_utils import draw_detections
    im = np.full((100, 120, 3), 128, np.uint8)
    dets = [[], np.array([[10, 10, 60, 50, 0.9]], np.float32), np.array([[70, 60, 110, 95, 0.3]], np.float32)]
    out = draw_detections(im, dets, ['__background__', 'circle', 'square'], thresh=0.5)
    assert (im == 128).all()  # the input is left alone
    assert tuple(out[10, 30]) == (0, 204, 0) and tuple(out[50, 30]) == (0, 204, 0)  # top and bottom edges
    assert (out[60:96, 70:111] == 128).all()  # 0.3 < 0.5: not drawn
    assert (out[:, :, 2] == 255).any()  # the red label text


def fix_load_dir(tmp, *extra):
    # the checkpoint lives under <load_dir>/<net>/<dataset>; link the res18 folder where --net res50 looks
    src = tmp / 'models' / 'res18' / 'custom'
    dst = tmp / 'models' / 'res50' / 'custom'
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst)
    return _argv(tmp, *extra)


def test_demo_without_a_camera_fails_clearly(model_dir, capsys):
    code = demo.main(fix_load_dir(model_dir, '--webcam_num', '97'))
    assert code == 1
    assert 'webcam 97 could not be opened' in capsys.readouterr().err


def test_demo_with_an_empty_folder_fails_clearly(model_dir, tmp_path, capsys):
    code = demo.main(fix_load_dir(model_dir, '--image_dir', str(tmp_path)))
    assert code == 1
    assert 'no images' in capsys.readouterr().err
