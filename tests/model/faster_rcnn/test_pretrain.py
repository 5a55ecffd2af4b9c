"""lib/model/faster_rcnn/pretrain.py: the schedule, the batches, the normalisation, a classifier that learns,
and a saved backbone that the detector loads as a 'pytorch' pretrained file."""
import numpy as np
import pytest
import torch
import torchvision

from lib.model.faster_rcnn import pretrain
from lib.model.faster_rcnn.weights import FORMAT_KEY, read_weight_format
from lib.model.utils.blob import normalize_image
from lib.model.utils.checkpoint import save_checkpoint
from lib.model.utils.config import cfg

pytest.importorskip('lib.model.roi_layers', reason='compiled ops not built', exc_type=ImportError)
from lib.model.faster_rcnn.resnet import resnet  # noqa: E402
from frcnn_helpers import CLASSES  # noqa: E402

MEANS, STDS = np.array([[[0.485, 0.456, 0.406]]]), np.array([[[0.229, 0.224, 0.225]]])


def test_learning_rate_warms_up_linearly_then_decays_on_a_cosine_to_zero():
    lr = [pretrain.lr_at(s, 110, 1.0, 10) for s in range(110)]
    np.testing.assert_allclose(lr[:10], np.arange(1, 11) / 10)
    assert lr[10] == 1.0                                  # the peak, right after the warm-up
    assert lr[60] == pytest.approx(0.5)                   # half-way through the cosine
    assert lr[109] == pytest.approx(0.5 * (1 + np.cos(np.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))


def test_a_batch_holds_windows_of_the_sampled_crops_some_mirrored():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    labels = np.arange(5) + 10
    xb, yb = pretrain.sample_batch(np.random.default_rng(1), crops, labels, 64, 8)
    assert xb.shape == (64, 8, 8, 3) and xb.dtype == np.uint8
    mirrored = 0
    for x, y in zip(xb, yb):
        src = crops[y - 10]
        windows = [src[oy:oy + 8, ox:ox + 8] for oy in range(5) for ox in range(5)]
        plain = any(np.array_equal(x, w) for w in windows)
        flipped = any(np.array_equal(x[:, ::-1], w) for w in windows)
        assert plain or flipped, 'a batch item is no window of the crop its label names'
        mirrored += flipped and not plain
    assert 10 < mirrored < 54   # about half


def test_crops_are_normalised_as_the_detector_normalises_its_images():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
    x = pretrain.normalize_crops(crops, MEANS, STDS)
    assert x.shape == (3, 3, 6, 6) and x.dtype == torch.float32 and x.is_contiguous()
    for i in range(3):
        ref = normalize_image(crops[i], 'pytorch', MEANS, STDS)     # BGR -> RGB, 0..1, standardised
        np.testing.assert_allclose(x[i].permute(1, 2, 0).numpy(), ref, rtol=1e-6)


def test_centre_windows():
    crops = np.arange(2 * 10 * 10 * 3, dtype=np.uint8).reshape(2, 10, 10, 3)
    np.testing.assert_array_equal(pretrain.centre_windows(crops, 6), crops[:, 2:8, 2:8])


def _two_class_crops(n, size=12, seed=0):
    """Crops of a bright square (class 1) or a bright horizontal bar (class 2) on noise, random colours."""
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(1, 3, n)
    for c, y in zip(crops, labels):
        colour = rng.integers(150, 256, 3)
        if y == 1:
            c[3:9, 3:9] = colour
        else:
            c[5:7, 1:11] = colour
    return crops, labels


def test_the_classifier_learns_a_simple_task():
    crops, labels = _two_class_crops(256)
    val_crops, val_labels = _two_class_crops(128, seed=1)
    torch.manual_seed(0)
    model = pretrain.build_classifier('res18', 3)
    before, _ = pretrain.evaluate(model, val_crops, val_labels, 10, MEANS, STDS, 'cpu')
    history = pretrain.pretrain_classifier(model, crops, labels, 60, MEANS, STDS, batch_size=32, lr=2e-3,
                                           warmup=5, crop_size=10, log_every=20, log=lambda m: None)
    assert [h['step'] for h in history] == [20, 40, 60]
    assert history[-1]['loss'] < 0.5 * history[0]['loss']
    acc, fg_acc = pretrain.evaluate(model, val_crops, val_labels, 10, MEANS, STDS, 'cpu')
    assert acc > 0.9 and acc == fg_acc and acc > before   # every val crop is an object here


def test_the_forward_runs_in_the_given_autocast_and_still_learns():
    """--amp: the classifier's forward in bf16 on the CPU (the convolutions' outputs are bf16), the loss in
    float32, and the task still learned."""
    crops, labels = _two_class_crops(256)
    torch.manual_seed(0)
    model = pretrain.build_classifier('res18', 3)
    seen = set()
    model.conv1.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    history = pretrain.pretrain_classifier(model, crops, labels, 60, MEANS, STDS, batch_size=32, lr=2e-3,
                                           warmup=5, crop_size=10, log_every=20, log=lambda m: None,
                                           autocast=lambda: torch.autocast('cpu', dtype=torch.bfloat16))
    assert seen == {torch.bfloat16}
    assert history[-1]['loss'] < 0.5 * history[0]['loss']
    acc, _ = pretrain.evaluate(model, *_two_class_crops(128, seed=1), 10, MEANS, STDS, 'cpu')
    assert acc > 0.9


def test_layer4_runs_as_the_detector_head_runs_it_and_saves_as_a_plain_resnet():
    from torch import nn
    from lib.model.faster_rcnn.small_map_conv import SmallMapConv2d
    model = pretrain.build_classifier('res18', 3)
    convs = {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert {t for n, t in convs.items() if n.startswith('layer4.')} == {SmallMapConv2d}
    assert {t for n, t in convs.items() if not n.startswith('layer4.')} == {nn.Conv2d}
    ref = torchvision.models.resnet18(num_classes=3)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ref.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 64, 64)
    model.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)


def test_crops_in_channels_last_hold_the_same_values():
    crops = np.random.default_rng(0).integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
    x = pretrain.normalize_crops(crops, MEANS, STDS, channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert torch.equal(x, pretrain.normalize_crops(crops, MEANS, STDS))


def test_channels_last_and_the_fused_adamw_train_as_the_default(monkeypatch):
    """channels_last=True (cfg.CHANNELS_LAST) gives the first convolution NHWC batches, and both runs ask for
    the fused AdamW. The first loss is the default layout's up to float rounding; after an update less closely,
    since AdamW scales every gradient element to about lr, the rounding's sign included."""
    asked = []

    class AdamW(torch.optim.AdamW):
        def __init__(self, params, **kw):
            asked.append(kw.get('fused'))
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, 'AdamW', AdamW)
    crops, labels = _two_class_crops(64)
    runs = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = pretrain.build_classifier('res18', 3)
        layouts = set()
        model.conv1.register_forward_pre_hook(
            lambda m, args: layouts.add(args[0].is_contiguous(memory_format=torch.channels_last)))
        history = pretrain.pretrain_classifier(model, crops, labels, 2, MEANS, STDS, batch_size=16, crop_size=10,
                                               warmup=1, log_every=1, log=lambda m: None,
                                               channels_last=channels_last)
        runs.append(([h['loss'] for h in history], layouts))
    assert asked == [True, True]
    assert runs[0][1] == {False} and runs[1][1] == {True}
    np.testing.assert_allclose(runs[1][0][0], runs[0][0][0], rtol=1e-5)
    np.testing.assert_allclose(runs[1][0][1], runs[0][0][1], rtol=2e-2)


def test_bad_inputs_are_refused():
    model = pretrain.build_classifier('res18', 3)
    crops, labels = _two_class_crops(8)
    with pytest.raises(ValueError, match='no crops'):
        pretrain.pretrain_classifier(model, crops[:0], labels[:0], 1, MEANS, STDS)
    with pytest.raises(ValueError, match='smaller than crop_size 16'):
        pretrain.pretrain_classifier(model, crops, labels, 1, MEANS, STDS, crop_size=16)
    with pytest.raises(ValueError, match=r'labels must lie in 0..2 .* got 1..7'):
        pretrain.pretrain_classifier(model, crops, np.where(labels == 2, 7, labels), 1, MEANS, STDS, crop_size=8)
    with pytest.raises(ValueError, match="supports the ResNets .* not 'vgg16'"):
        pretrain.build_classifier('vgg16', 3)


def test_a_saved_backbone_loads_into_the_detector_as_a_pytorch_file(tmp_path, tiny_cfg):
    torch.manual_seed(0)
    model = pretrain.build_classifier('res18', 7)
    sd = pretrain.backbone_state_dict(model)
    assert sd[FORMAT_KEY] == 'pytorch' and not any(k.startswith('fc.') for k in sd)
    path = pretrain.default_output_path(str(tmp_path), 'res18', 'shapes')
    assert path == str(tmp_path / 'pretrained_model' / 'resnet18_shapes.pth')
    save_checkpoint(sd, path)
    assert read_weight_format(path) == 'pytorch'
    cfg.INPUT_FORMAT = 'caffe'
    det = resnet(CLASSES, 18, pretrained=True, model_path=path)
    det.create_architecture()
    assert cfg.INPUT_FORMAT == 'pytorch'   # the data layer then normalises images as the crops were
    assert torch.equal(det.RCNN_base[0].weight, model.conv1.weight)
    assert torch.equal(det.RCNN_base[6][1].bn2.running_mean, model.layer3[1].bn2.running_mean)
    assert torch.equal(det.RCNN_top[0][1].conv2.weight, model.layer4[1].conv2.weight)
