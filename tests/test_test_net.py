"""test_net.py and the shared inference code: per-class NMS and top-k, detection files, checkpoint-driven model
restoration, and a full evaluation of a briefly trained tiny model."""
import os
import shutil

import numpy as np
import pytest
import torch

import test_net
import trainval_net
from lib.model.utils.config import cfg, reset_cfg
from lib.model.utils.script_utils import build_detector, guess_net
from lib.model.utils.test_utils import (load_detections, load_model_weights, postprocess_detections,
                                        save_detections)
from tiny_run import TINY_SET

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


# ------------------------------------------------------------------------------------------------ post-processing
# padded: the fixed-size way that a GPU takes by default (one copy to the host), forced here on the CPU
@pytest.mark.parametrize('padded', [False, True])
def test_postprocess_threshold_nms_per_class_and_topk(padded):
    # 4 rois, classes: background, a, b. Rois 0 and 1 overlap heavily; roi 3 is far away.
    roi = torch.tensor([[0., 0., 9., 9.], [0., 0., 9., 8.], [0., 0., 9., 9.], [50., 50., 59., 59.]])
    boxes = roi.repeat(1, 3)  # class-specific layout [R, 4C], same box for every class
    scores = torch.tensor([[0.1, 0.8, 0.1],
                           [0.1, 0.7, 0.2],
                           [0.6, 0.05, 0.35],
                           [0.5, 0.3, 0.2]])
    dets = postprocess_detections(scores, boxes, thresh=0.1, nms_thresh=0.3, max_per_image=100, padded=padded)
    assert len(dets) == 3 and dets[0].shape == (0, 5)
    # class a: roi 1 (IoU 0.9 with roi 0) suppressed, roi 2 below the threshold -> rois 0 and 3
    np.testing.assert_allclose(dets[1], [[0, 0, 9, 9, 0.8], [50, 50, 59, 59, 0.3]], rtol=1e-6)
    # class b: rois 0 (0.1) not > thresh; roi 2 (0.35) suppresses roi 1 (0.2); roi 3 kept: classes do not interact
    np.testing.assert_allclose(dets[2], [[0, 0, 9, 9, 0.35], [50, 50, 59, 59, 0.2]], rtol=1e-6)
    # top 2 over all classes: 0.8 (a) and 0.35 (b)
    top = postprocess_detections(scores, boxes, thresh=0.1, nms_thresh=0.3, max_per_image=2, padded=padded)
    np.testing.assert_allclose(top[1][:, 4], [0.8])
    np.testing.assert_allclose(top[2][:, 4], [0.35])


def _decode_by_hand(roi, d, h, w, scale):
    """The original's decoding, written out (x2 = cx + w / 2 - 1, the inverse of its encoding), clipped to the
    image and mapped back by the scale."""
    import math
    bw, bh = roi[2] - roi[0] + 1, roi[3] - roi[1] + 1
    cx, cy = roi[0] + 0.5 * bw, roi[1] + 0.5 * bh
    px, py, pw, ph = d[0] * bw + cx, d[1] * bh + cy, math.exp(d[2]) * bw, math.exp(d[3]) * bh
    box = [px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw - 1, py + 0.5 * ph - 1]
    box = [min(max(box[0], 0), w - 1), min(max(box[1], 0), h - 1), min(max(box[2], 0), w - 1),
           min(max(box[3], 0), h - 1)]
    return [c / scale for c in box]


@pytest.mark.parametrize('agnostic', [False, True])
def test_im_detect_unnormalises_decodes_clips_and_rescales(agnostic):
    """A stub model's rois and normalised deltas (stds 0.1, 0.1, 0.2, 0.2) against the decoding by hand."""
    from lib.model.utils.test_utils import im_detect
    g = torch.Generator().manual_seed(0)
    B, R, C = 2, 5, 3
    xy = torch.rand(B, R, 2, generator=g) * 150
    rois = torch.cat([torch.arange(B).float().view(B, 1, 1).expand(B, R, 1), xy,
                      xy + 10 + torch.rand(B, R, 2, generator=g) * 100], 2)
    rois[0, 0, 1:] = torch.tensor([180., 5., 199., 60.])  # near the right edge: its box gets clipped
    deltas = torch.randn(B, R, 4 * (1 if agnostic else C), generator=g)
    scores = torch.rand(B, R, C, generator=g)
    im_info = torch.tensor([[160., 200., 2.0], [160., 200., 1.25]])

    def model(im_data, info):
        assert info is im_info
        return rois, scores, deltas

    out_scores, boxes = im_detect(model, torch.zeros(B, 3, 160, 200), im_info)
    assert torch.equal(out_scores, scores)
    stds = [0.1, 0.1, 0.2, 0.2]
    clipped = 0
    for b in range(B):
        for r in range(R):
            for k in range(deltas.shape[2] // 4):
                d = [deltas[b, r, 4 * k + i].item() * stds[i] for i in range(4)]
                want = _decode_by_hand(rois[b, r, 1:].tolist(), d, 160, 200, im_info[b, 2].item())
                got = boxes[b, r, 4 * k:4 * k + 4]
                torch.testing.assert_close(got, torch.tensor(want), rtol=1e-5, atol=1e-4)
                clipped += int(any(c in (0.0, 199 / im_info[b, 2].item()) for c in want[::2]))
    assert clipped > 0


@pytest.mark.parametrize('padded', [False, True])
def test_postprocess_class_agnostic_boxes(padded):
    boxes = torch.tensor([[0., 0., 9., 9.], [20., 20., 29., 29.]])
    scores = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    dets = postprocess_detections(scores, boxes, thresh=0.25, nms_thresh=0.3, max_per_image=100, padded=padded)
    np.testing.assert_allclose(dets[1], [[0, 0, 9, 9, 0.5]])
    np.testing.assert_allclose(dets[2], [[20, 20, 29, 29, 0.8], [0, 0, 9, 9, 0.3]])


@pytest.mark.parametrize('seed', range(6))
def test_postprocess_padded_equals_the_candidate_way(seed):
    """The two ways give the same detections on random images: 300 rois, 20 classes, integer boxes (IoUs exactly
    at the threshold happen), scores rounded to 1/64 (ties across and within classes) and a few NaN scores (never
    detections, and they must not suppress any), several thresholds, a
    max_per_image below and above the number kept, class-specific and class-agnostic boxes."""
    g = torch.Generator().manual_seed(seed)
    R, C = 300, 21
    xy = torch.randint(0, 200, (R, C, 2), generator=g).float()
    wh = torch.randint(1, 60, (R, C, 2), generator=g).float()
    boxes = torch.cat([xy, xy + wh], dim=2).view(R, 4 * C)
    boxes[:, 4:8] = boxes[:, 8:12]  # two classes with the same boxes: they must not suppress each other
    scores = torch.softmax(torch.randn(R, C, generator=g) * 3, dim=1)
    scores = (scores * 64).round() / 64
    scores[torch.randint(0, R, (5,), generator=g), torch.randint(1, C, (5,), generator=g)] = float('nan')
    for box_input in (boxes, boxes[:, :4]):
        for thresh in (0.0, 1 / 64, 0.3):
            for max_per_image in (5, 100, 6000):
                a = postprocess_detections(scores, box_input, thresh, 0.3, max_per_image, padded=False)
                b = postprocess_detections(scores, box_input, thresh, 0.3, max_per_image, padded=True)
                assert [x.shape for x in a] == [x.shape for x in b], (thresh, max_per_image)
                for x, y in zip(a, b):
                    np.testing.assert_array_equal(x, y)
    assert sum(len(x) for x in a) > 0


def test_postprocess_padded_without_rois_or_candidates():
    for R, thresh in ((0, 0.0), (7, 1.0)):  # no roi at all; rois but no score above the threshold
        dets = postprocess_detections(torch.rand(R, 4), torch.rand(R, 16), thresh, 0.3, 100, padded=True)
        assert [d.shape for d in dets] == [(0, 5)] * 4 and all(d.dtype == np.float32 for d in dets)


def test_detection_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    classes = ['__background__', 'a', 'b']
    all_boxes = [[np.zeros((0, 5), np.float32) for _ in range(3)] for _ in range(3)]
    all_boxes[1][0] = rng.random((4, 5)).astype(np.float32)
    all_boxes[2][2] = rng.random((1, 5)).astype(np.float32)
    path = save_detections(all_boxes, classes, ['x', 'y', 'z'], str(tmp_path / 'detections.npz'))
    loaded, cls, index = load_detections(path)
    assert cls == classes and index == ['x', 'y', 'z']
    for j in range(3):
        for i in range(3):
            np.testing.assert_array_equal(loaded[j][i], all_boxes[j][i])


# ------------------------------------------------------------------------------------------------ model restoring
def test_guess_net_and_a_clear_mismatch_message():
    cfg.TRAIN.BN_TRAIN = True
    r18 = build_detector('res18', ['__background__', 'a'])
    assert guess_net(r18.state_dict()) == 'res18'
    r34 = build_detector('res34', ['__background__', 'a'])
    assert guess_net(r34.state_dict()) == 'res34'
    with pytest.raises(ValueError, match=r'x\.pth does not fit --net res34: missing keys: .*RCNN_base\.\d\.2\..*'
                                         r'try --net res18'):
        load_model_weights(r34, r18.state_dict(), 'res34', 'x.pth')
    voc = build_detector('res18', ['__background__'] + [f'c{i}' for i in range(20)])
    with pytest.raises(ValueError, match=r'does not fit --net res18: shape mismatches: RCNN_cls_score\.weight '
                                         r'\(checkpoint \(21, 512\), model \(2, 512\)\).* It scores 21 classes '
                                         r'\(background included\), this model 2: it was trained on another '
                                         r'class list'):
        load_model_weights(r18, voc.state_dict(), 'res18', 'voc.pth')


def test_a_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    code = test_net.main(['--dataset', 'shapes', '--net', 'res18', '--load_dir', str(tmp_path), '--checkepoch', '9'])
    err = capsys.readouterr().err
    assert code == 1 and 'Traceback' not in err
    assert err.startswith(f'ERROR: checkpoint {tmp_path / "res18" / "shapes" / "faster_rcnn_1_9_10021.pth"} not '
                          f'found ({tmp_path / "res18" / "shapes"} does not exist')


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny shapes set and a checkpoint trained on it for 4 iterations with non-default anchors."""
    from lib.datasets.shapes import generate_shapes_dataset
    from lib.model.utils.train_utils import run_training
    tmp = tmp_path_factory.mktemp('testnet')
    root = str(tmp / 'VOC2007')
    generate_shapes_dataset(root, num_train=6, num_test=4, seed=2, min_size=80, max_size=120, workers=1)
    reset_cfg()
    args = trainval_net.parse_args([
        '--dataset', 'custom', '--data_path', root, '--net', 'res18', '--weights', 'none', '--cfg',
        os.path.join(ROOT, 'cfgs', 'shapes_cpu.yml'), '--save_dir', str(tmp / 'models'), '--epochs', '1',
        '--max_iters', '4', '--lr', '0.01', '--set', 'DATA_DIR', str(tmp / 'data'), *TINY_SET,
        'ANCHOR_SCALES', '[2, 4]'])
    out = run_training(args, log=lambda m: None)
    reset_cfg()
    yield {'root': root, 'tmp': tmp, 'checkpoint': out['checkpoints'][-1]}
    shutil.rmtree(tmp, ignore_errors=True)  # the checkpoint is ~100 MB


def _test_argv(trained, *extra):
    tmp = trained['tmp']
    # no anchor --set: they come from the checkpoint; ROOT_DIR moves output/ into tmp
    return ['--dataset', 'custom', '--data_path', trained['root'], '--net', 'res18', '--load_dir',
            str(tmp / 'models'), '--checksession', '1', '--checkepoch', '1', '--checkpoint', '3', *extra,
            '--set', 'DATA_DIR', str(tmp / 'data'), 'ROOT_DIR', str(tmp), 'TEST.SCALES', '[96]',
            'TEST.MAX_SIZE', '160']


def test_test_net_writes_detections_and_map(trained):
    from lib.model.utils.test_utils import run_test
    logs = []
    out = run_test(test_net.parse_args(_test_argv(trained, '--vis', '--thresh', '0.0')), log=logs.append)
    assert cfg.ANCHOR_SCALES == [2, 4] and cfg.POOLING_SIZE == 4  # restored from the checkpoint
    assert out['num_images'] == 4
    assert out['output_dir'].startswith(str(trained['tmp'] / 'output'))
    assert os.path.basename(out['output_dir']) == 'faster_rcnn_1_1_3'
    all_boxes, classes, index = load_detections(out['detections'])
    assert len(classes) == 7 and len(index) == 4
    n = sum(len(all_boxes[j][i]) for j in range(1, 7) for i in range(4))
    assert 0 < n <= 4 * 100
    assert all((all_boxes[j][i][:, 4] > 0.0).all() for j in range(1, 7) for i in range(4))
    assert all(len(all_boxes[j][i]) == 0 or (np.diff(all_boxes[j][i][:, 4]) <= 0).all()
               for j in range(1, 7) for i in range(4))  # by decreasing score
    res = out['results']
    assert 0.0 <= res['mAP'] <= 1.0 and res['use_07_metric'] is True
    assert any(line.startswith('mAP (the dataset\'s metric: VOC07)') for line in logs)
    assert len([f for f in os.listdir(os.path.join(out['output_dir'], 'vis')) if f.endswith('.jpg')]) == 4
    assert os.path.isfile(os.path.join(out['output_dir'], 'pr_curves.png'))


def test_test_net_refuses_a_checkpoint_of_other_classes(trained, tmp_path):
    from lib.model.utils.checkpoint import load_checkpoint, save_checkpoint
    from lib.model.utils.test_utils import run_test
    ck = load_checkpoint(trained['checkpoint'])
    ck['classes'] = ['__background__', 'cat', 'dog', 'x', 'y', 'z', 'w']
    d = tmp_path / 'models' / 'res18' / 'custom'
    save_checkpoint(ck, str(d / 'faster_rcnn_1_1_3.pth'))
    argv = _test_argv(trained)
    argv[argv.index('--load_dir') + 1] = str(tmp_path / 'models')
    with pytest.raises(ValueError, match=r"detects \['__background__', 'cat'.*but custom_test has classes"):
        run_test(test_net.parse_args(argv), log=lambda m: None)


def test_bn_statistics_mode_follows_how_the_model_was_trained():
    from lib.model.utils.test_utils import resolve_bn_stats
    bn_bs1 = {'cfg': {'TRAIN': {'BN_TRAIN': True}}, 'batch_size': 1}
    assert resolve_bn_stats(bn_bs1) == 'batch'
    assert resolve_bn_stats({**bn_bs1, 'batch_size': 4}) == 'running'
    assert resolve_bn_stats({'cfg': {'TRAIN': {'BN_TRAIN': False}}, 'batch_size': 1}) == 'running'
    assert resolve_bn_stats({}) == 'running'  # an original checkpoint: frozen BatchNorm
    assert resolve_bn_stats(bn_bs1, 'running') == 'running'
    with pytest.raises(ValueError, match="unknown BatchNorm statistics mode 'avg'"):
        resolve_bn_stats(bn_bs1, 'avg')


def test_batch_statistics_normalise_each_input_and_keep_running_averages():
    from lib.model.utils.test_utils import use_batch_statistics
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).eval()
    model[1].running_mean.fill_(5.0)
    use_batch_statistics(model)
    x = torch.randn(1, 3, 6, 6) * 3 + 2
    y = model(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)
    assert torch.equal(model[1].running_mean, torch.full((4,), 5.0))
    assert not model[0].training  # only the BatchNorm layers switch


def test_batch_statistics_leave_a_frozen_stem_on_its_running_averages(trained):
    # the stem trains from scratch (so its BatchNorm used batch statistics in training) but is frozen on
    # pretrained weights (eval mode in training): test time must do the same, as the checkpoint records
    from lib.model.utils.checkpoint import load_checkpoint
    from lib.model.utils.script_utils import apply_model_cfg
    from lib.model.utils.test_utils import detector_from_checkpoint, stored_model_cfg
    ck = load_checkpoint(trained['checkpoint'])
    apply_model_cfg(stored_model_cfg(ck))  # its anchors
    assert ck['freeze_stem'] is False  # --weights none
    classes = ck['classes']
    model = detector_from_checkpoint(ck, 'x.pth', 'res18', classes, False, torch.device('cpu'), 'batch')
    assert model.RCNN_base[1].training and model.RCNN_base[4][0].bn1.training and not model.RCNN_rpn.training
    pretrained_run = {**ck, 'freeze_stem': True}
    model = detector_from_checkpoint(pretrained_run, 'x.pth', 'res18', classes, False, torch.device('cpu'), 'batch')
    assert not model.RCNN_base[1].training and model.RCNN_base[4][0].bn1.training
    original = {k: v for k, v in ck.items() if k != 'freeze_stem'}  # older files always froze the stem
    model = detector_from_checkpoint(original, 'x.pth', 'res18', classes, False, torch.device('cpu'), 'batch')
    assert not model.RCNN_base[1].training
