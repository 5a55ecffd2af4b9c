"""Forward passes of every backbone and pooling mode, frozen parameters, BatchNorm handling."""
import pytest
import torch
import torchvision
from torch import nn

pytest.importorskip('lib.model.roi_layers', reason='compiled ops not built', exc_type=ImportError)

from lib.model.faster_rcnn.faster_rcnn import FasterRCNNOutput  # noqa: E402
from lib.model.faster_rcnn.resnet import resnet  # noqa: E402
from lib.model.faster_rcnn.vgg16 import vgg16  # noqa: E402
from lib.model.utils.config import cfg  # noqa: E402
from frcnn_helpers import CLASSES, make_batch  # noqa: E402

C = len(CLASSES)


def build(net, class_agnostic=False):
    if net == 'vgg16':
        model = vgg16(CLASSES, pretrained=False, class_agnostic=class_agnostic)
    else:
        model = resnet(CLASSES, int(net[3:]), pretrained=False, class_agnostic=class_agnostic)
    model.create_architecture()
    return model


def check_train_output(out, B, class_agnostic=False):
    assert isinstance(out, FasterRCNNOutput) and len(out) == 8
    R = cfg.TRAIN.BATCH_SIZE
    assert out.rois.shape == (B, R, 5)
    assert out.cls_prob.shape == (B, R, C)
    assert out.bbox_pred.shape == (B, R, 4)
    assert out.rois_label.shape == (B * R,) and out.rois_label.dtype == torch.long
    for loss in out[3:7]:
        assert torch.is_tensor(loss) and loss.dim() == 0 and torch.isfinite(loss)
    probs = out.cls_prob.float().sum(2)  # bf16 under CPU autocast (CUDA autocast's softmax gives float32)
    tol = {} if out.cls_prob.dtype == torch.float32 else {'rtol': 0, 'atol': 2e-2}
    torch.testing.assert_close(probs, torch.ones_like(probs), **tol)  # on the output's device


def check_eval_output(out, B, class_agnostic=False):
    R = cfg.TEST.RPN_POST_NMS_TOP_N
    assert out.rois.shape == (B, R, 5)
    assert out.cls_prob.shape == (B, R, C)
    assert out.bbox_pred.shape == (B, R, 4 if class_agnostic else 4 * C)
    assert out.rois_label is None
    for loss in out[3:7]:
        assert torch.is_tensor(loss) and loss.dim() == 0 and loss == 0


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}


@pytest.mark.parametrize('net', ['res18', 'res34', 'res50', 'vgg16'])
def test_train_step_and_eval(tiny_cfg, net):
    torch.manual_seed(0)
    model = build(net)
    im_data, im_info, gt, num_boxes = make_batch(B=2, H=64, W=96)
    inputs = (im_data, im_info, gt, num_boxes)
    copies = [t.clone() for t in inputs]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    bn_before = _bn_state(model)

    model.train()
    out = model(*inputs)
    check_train_output(out, 2)
    loss = sum(out[3:7])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                          weight_decay=1e-4)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for t, c in zip(inputs, copies):
        assert torch.equal(t, c)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    for k, v in _bn_state(model).items():
        assert torch.equal(v, bn_before[k]), k   # BN statistics stay put without TRAIN.BN_TRAIN

    model.eval()
    with torch.no_grad():
        check_eval_output(model(im_data, im_info, gt, num_boxes), 2)


@pytest.mark.parametrize('depth', [101, 152])
def test_deep_resnets_one_forward(tiny_cfg, depth):
    torch.manual_seed(0)
    model = build(f'res{depth}')
    im_data, im_info, gt, num_boxes = make_batch(B=1, H=64, W=64)
    model.train()
    out = model(im_data, im_info, gt, num_boxes)
    check_train_output(out, 1)
    n_blocks = {101: 23, 152: 36}[depth]
    assert len(model.RCNN_base[6]) == n_blocks        # the depth asked for, not always 101
    assert model.RCNN_cls_score.in_features == 2048 and model.dout_base_model == 1024


def test_resnet_frozen_parts(tiny_cfg, tmp_path):
    cfg.RESNET.FIXED_BLOCKS = 2
    path = tmp_path / 'resnet18-weights.pth'
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    model = resnet(CLASSES, 18, pretrained=True, model_path=str(path))
    model.create_architecture()
    base = model.RCNN_base
    frozen = [base[0], base[1], base[4], base[5]]   # conv1, bn1 (pretrained: the original's rule), layer1, layer2
    assert model.freeze_stem
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for n, p in base[6].named_parameters() if 'bn' not in n and 'downsample.1' not in n)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    model.train()
    assert all(not m.training for m in bns)
    assert model.RCNN_rpn.training and model.RCNN_top.training
    assert model.RCNN_cls_score.in_features == 512 and model.dout_base_model == 256
    cfg.RESNET.FIXED_BLOCKS = 4
    with pytest.raises(ValueError, match='FIXED_BLOCKS'):
        resnet(CLASSES, 18)


def test_resnet_from_scratch_trains_the_stem(tiny_cfg):
    # random conv1/bn1 would stay random if frozen: without pretrained weights they train; FIXED_BLOCKS still holds
    cfg.RESNET.FIXED_BLOCKS = 1
    model = build('res18')
    base = model.RCNN_base
    assert not model.freeze_stem
    assert base[0].weight.requires_grad
    assert all(not p.requires_grad for p in base[4].parameters())
    before = base[0].weight.detach().clone()
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(model(*make_batch(B=1, H=64, W=64))[3:7]).backward()
    opt.step()
    assert not torch.equal(base[0].weight, before)


def test_bn_train_updates_bn(tiny_cfg):
    cfg.TRAIN.BN_TRAIN = True
    cfg.RESNET.FIXED_BLOCKS = 0
    torch.manual_seed(0)
    model = build('res18')
    layer1_bn = model.RCNN_base[4][0].bn1
    assert layer1_bn.weight.requires_grad
    assert model.RCNN_base[1].weight.requires_grad          # from scratch bn1 trains with conv1
    model.train()
    assert layer1_bn.training and model.RCNN_base[1].training
    model.freeze_stem = True                                 # as on pretrained weights: bn1 stays in eval mode
    model.train()
    assert layer1_bn.training and not model.RCNN_base[1].training
    before = layer1_bn.running_mean.clone()
    model(*make_batch(B=1, H=64, W=64))
    assert not torch.equal(layer1_bn.running_mean, before)


def test_vgg_frozen_layers(tiny_cfg, monkeypatch):
    model = build('vgg16')
    convs = [m for m in model.RCNN_base if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and not isinstance(model.RCNN_base[-1], nn.MaxPool2d)
    assert all(p.requires_grad for c in convs for p in c.parameters())   # from scratch every conv trains
    assert not model.freeze_stem
    assert model.RCNN_cls_score.in_features == 4096
    # on pretrained weights conv1 and conv2 (the first 4 convs) stay fixed, as the original
    import lib.model.faster_rcnn.vgg16 as vgg_module
    weights = torchvision.models.vgg16(weights=None).state_dict()
    monkeypatch.setattr(vgg_module, 'load_state_dict_file', lambda path, name: weights)
    model = vgg16(CLASSES, pretrained=True)
    model.create_architecture()
    convs = [m for m in model.RCNN_base if isinstance(m, nn.Conv2d)]
    assert torch.equal(convs[0].weight, weights['features.0.weight'])
    assert model.freeze_stem
    assert all(not p.requires_grad for c in convs[:4] for p in c.parameters())
    assert all(p.requires_grad for c in convs[4:] for p in c.parameters())
    cfg.POOLING_SIZE = 5
    with pytest.raises(ValueError, match='POOLING_SIZE 7'):
        vgg16(CLASSES)


@pytest.mark.parametrize('mode', ['align', 'pool', 'crop'])
def test_pooling_modes(tiny_cfg, mode):
    cfg.POOLING_MODE = mode
    torch.manual_seed(0)
    model = build('res18', class_agnostic=True)
    cfg.POOLING_MODE = 'nonsense'   # read at construction only
    im_data, im_info, gt, num_boxes = make_batch(B=2, H=64, W=80)
    model.train()
    out = model(im_data, im_info, gt, num_boxes)
    check_train_output(out, 2, class_agnostic=True)
    sum(out[3:7]).backward()
    assert model.RCNN_rpn.RPN_Conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        check_eval_output(model(im_data, im_info), 2, class_agnostic=True)


def test_unknown_pooling_mode(tiny_cfg):
    cfg.POOLING_MODE = 'roi_warp'
    with pytest.raises(ValueError, match="unknown POOLING_MODE 'roi_warp'; expected 'align', 'pool' or 'crop'"):
        resnet(CLASSES, 18)


def test_class_specific_bbox_pred_is_gathered_by_label(tiny_cfg):
    torch.manual_seed(0)
    model = build('res18')
    model.train()
    feats = {}
    model.RCNN_bbox_pred.register_forward_hook(lambda m, i, o: feats.setdefault('full', o))
    out = model(*make_batch(B=1, H=64, W=64))
    full = feats['full'].view(-1, C, 4)
    expect = full[torch.arange(full.size(0)), out.rois_label]
    torch.testing.assert_close(out.bbox_pred.view(-1, 4), expect)


def test_forward_on_device(tiny_cfg, device):
    torch.manual_seed(0)
    model = build('res18').to(device)
    batch = [t.to(device) for t in make_batch(B=2, H=64, W=80)]
    model.train()
    out = model(*batch)
    check_train_output(out, 2)
    assert out.rois.device.type == device.type and out.rpn_loss_cls.device.type == device.type
    sum(out[3:7]).backward()
    model.eval()
    with torch.no_grad():
        out = model(*batch[:2])
    check_eval_output(out, 2)
    assert out.RCNN_loss_cls.device.type == device.type


@pytest.mark.parametrize('mode', ['align', 'pool', 'crop'])
def test_train_and_eval_under_bf16_autocast(tiny_cfg, device, mode):
    # --amp's path: the RoI ops and crop pooling run in float32 inside, the losses come out finite
    tiny_cfg.POOLING_MODE = mode
    torch.manual_seed(0)
    model = build('res18').to(device)
    batch = [t.to(device) for t in make_batch(B=2, H=64, W=80)]
    model.train()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = model(*batch)
    check_train_output(out, 2)
    losses = torch.stack([loss.float() for loss in out[3:7]])
    assert torch.isfinite(losses).all()
    losses.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        out = model(*batch[:2])
    check_eval_output(out, 2)


def test_channels_last_runs_the_trunk_in_nhwc_with_the_same_features(tiny_cfg, device, monkeypatch):
    """cfg.CHANNELS_LAST: the trunk's first convolution gets an NHWC input, read when the model is built; the
    trunk's and the RPN's weights (loaded state included) and their gradients are NHWC, the head's are not; the
    features, the RPN's scores and the gradients are those of the default layout up to float rounding; the
    caller's images are left as they were."""
    # float32 rounding, not TF32's: cuDNN's TF32 convolutions (on by default; matmuls are float32 by default) round
    # the inputs to 10-bit mantissas, and the two layouts take different algorithms (on the H200 of 2026-11-28 the
    # features came 0.009 apart)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    torch.manual_seed(0)
    plain = build('res18').to(device)
    tiny_cfg.CHANNELS_LAST = True
    nhwc = build('res18').to(device)
    tiny_cfg.CHANNELS_LAST = False          # the model keeps what it was built with
    nhwc.load_state_dict(plain.state_dict())
    batch = [t.to(device) for t in make_batch(B=2, H=64, W=80)]
    seen = []
    for model in (plain, nhwc):
        record = {}
        model.RCNN_base[0].register_forward_pre_hook(
            lambda m, args, record=record: record.update(nhwc=args[0].is_contiguous(memory_format=torch.channels_last)))
        model.RCNN_base.register_forward_hook(lambda m, args, out, record=record: record.update(feat=out))
        model.RCNN_rpn.RPN_cls_score.register_forward_hook(lambda m, args, out, record=record: record.update(rpn=out))
        model.train()
        torch.manual_seed(1)                 # the same anchor and roi samples for both
        out = model(*batch)
        assert torch.isfinite(sum(out[3:7]))
        sum(out[3:7]).backward()
        seen.append(record)
    assert [r['nhwc'] for r in seen] == [False, True]
    assert batch[0].is_contiguous()
    for key in ('feat', 'rpn'):
        torch.testing.assert_close(seen[1][key], seen[0][key], rtol=1e-4, atol=1e-4)
    params = dict(plain.named_parameters())
    nhwc_3x3 = 0
    for name, p in nhwc.named_parameters():
        if p.dim() != 4:
            continue
        in_trunk = name.startswith(('RCNN_base.', 'RCNN_rpn.'))
        layout = torch.channels_last if in_trunk else torch.contiguous_format
        assert p.is_contiguous(memory_format=layout), name
        nhwc_3x3 += in_trunk and not p.is_contiguous()
        if p.grad is not None:
            assert p.grad.stride() == p.stride(), name  # the optimizer's buffers follow the gradients
            torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-3, atol=1e-4)
    assert nhwc_3x3 > 0


def test_state_dict_keys_use_the_original_names(tiny_cfg):
    """Checkpoints keep the original's parameter names (no extra persistent buffers)."""
    model = build('res18')
    prefixes = ('RCNN_base.', 'RCNN_top.', 'RCNN_rpn.RPN_Conv.', 'RCNN_rpn.RPN_cls_score.',
                'RCNN_rpn.RPN_bbox_pred.', 'RCNN_cls_score.', 'RCNN_bbox_pred.')
    keys = list(model.state_dict())
    assert all(k.startswith(prefixes) for k in keys), [k for k in keys if not k.startswith(prefixes)]
    assert all(any(k.startswith(p) for k in keys) for p in prefixes)


@pytest.mark.parametrize('class_agnostic', [False, True])
def test_rcnn_losses_from_the_heads_outputs_by_hand(tiny_cfg, class_agnostic):
    """RCNN_loss_cls: cross-entropy over the sampled rois; RCNN_loss_bbox: the original's smooth L1 (sigma 1) of
    each roi's own-class deltas against its targets, inside/outside weighted, summed over the 4 and averaged over
    the rois. Recomputed from the layers' outputs, captured with hooks."""
    torch.manual_seed(0)
    model = build('res18', class_agnostic=class_agnostic)
    model.RCNN_bbox_pred.weight.data.normal_(0, 0.05)  # deltas of the size of the targets: both smooth-L1 branches
    seen = {}
    for name in ('RCNN_proposal_target', 'RCNN_bbox_pred', 'RCNN_cls_score'):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    out = model(*make_batch(B=2, H=64, W=96))
    _, labels, targets, inside, outside = (t.detach() for t in seen['RCNN_proposal_target'])
    labels, targets, inside, outside = labels.view(-1).long(), targets.view(-1, 4), inside.view(-1, 4), \
        outside.view(-1, 4)
    assert (labels > 0).any() and (labels == 0).any()
    scores = seen['RCNN_cls_score'].detach()
    log_p = scores - scores.exp().sum(1, keepdim=True).log()
    torch.testing.assert_close(out.RCNN_loss_cls, -log_p[torch.arange(len(labels)), labels].mean())

    deltas = seen['RCNN_bbox_pred'].detach()
    own = deltas if class_agnostic else deltas.view(len(labels), C, 4)[torch.arange(len(labels)), labels]
    d = (inside * (own - targets)).abs()
    per = torch.where(d < 1, 0.5 * d ** 2, d - 0.5) * outside
    assert ((d >= 1) & (outside > 0)).any() and ((d < 1) & (d > 0) & (outside > 0)).any()
    torch.testing.assert_close(out.RCNN_loss_bbox, per.sum(1).mean())
