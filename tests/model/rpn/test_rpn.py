import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('lib.model.roi_layers', reason='compiled ops not built', exc_type=ImportError)

from lib.model.rpn.rpn import _RPN  # noqa: E402
from lib.model.utils.config import cfg  # noqa: E402
from lib.model.utils.net_utils import _smooth_l1_loss  # noqa: E402


def _setup():
    cfg.ANCHOR_SCALES = [1, 2]
    cfg.TRAIN.RPN_POST_NMS_TOP_N = 30
    cfg.TRAIN.RPN_BATCHSIZE = 32
    torch.manual_seed(0)
    rpn = _RPN(8)
    for conv in (rpn.RPN_Conv, rpn.RPN_cls_score, rpn.RPN_bbox_pred):
        conv.weight.data.normal_(0, 0.1)
    feat = torch.randn(2, 8, 6, 7)
    im_info = torch.tensor([[96., 112., 1.], [80., 100., 1.]])
    gt = torch.zeros(2, 3, 5)
    gt[0, 0] = torch.tensor([10., 10., 40., 50., 1.])
    gt[1, 0] = torch.tensor([30., 20., 70., 60., 2.])
    gt[1, 1] = torch.tensor([5., 40., 30., 75., 1.])
    return rpn, feat, im_info, gt, torch.tensor([1, 2])


def test_reshape_pairs_channel_a_with_a_plus_A():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(1, 6, 2, 2)   # A = 3
    r = _RPN.reshape(x, 2)
    assert r.shape == (1, 2, 6, 2)
    assert torch.equal(r[0, 0, 2:4], x[0, 1]) and torch.equal(r[0, 1, 2:4], x[0, 4])   # bg 1 vs fg 1
    assert torch.equal(_RPN.reshape(r, 6), x)


def test_losses_match_the_originals_formulas():
    rpn, feat, im_info, gt, num_boxes = _setup()
    rpn.train()
    torch.manual_seed(5)
    rois, loss_cls, loss_box = rpn(feat, im_info, gt, num_boxes)
    assert rois.shape == (2, 30, 5)
    assert loss_cls.dim() == 0 and loss_box.dim() == 0 and torch.isfinite(loss_cls) and torch.isfinite(loss_box)

    # the same computation the original's way: the anchor targets see the same random state
    with torch.no_grad():
        conv = F.relu(rpn.RPN_Conv(feat))
        score = rpn.RPN_cls_score(conv)
        bbox = rpn.RPN_bbox_pred(conv)
    torch.manual_seed(5)
    labels, targets, iw, ow = rpn.RPN_anchor_target(score, gt, im_info, num_boxes)
    s = rpn.reshape(score, 2).permute(0, 2, 3, 1).contiguous().view(2, -1, 2)
    lab = labels.view(2, -1)
    keep = lab.view(-1).ne(-1).nonzero().view(-1)
    ref_cls = F.cross_entropy(s.view(-1, 2)[keep], lab.view(-1)[keep].long())
    ref_box = _smooth_l1_loss(bbox, targets, iw, ow, sigma=3, dim=[1, 2, 3])
    torch.testing.assert_close(loss_cls, ref_cls)
    torch.testing.assert_close(loss_box, ref_box)
    (loss_cls + loss_box).backward()
    assert rpn.RPN_Conv.weight.grad is not None


def test_eval_losses_are_zero_tensors_and_training_needs_gt():
    rpn, feat, im_info, gt, num_boxes = _setup()
    rpn.eval()
    rois, loss_cls, loss_box = rpn(feat, im_info)
    assert rois.shape == (2, cfg.TEST.RPN_POST_NMS_TOP_N, 5)
    assert torch.is_tensor(loss_cls) and loss_cls.dim() == 0 and loss_cls == 0 and loss_box == 0
    rpn.train()
    with pytest.raises(ValueError, match='gt_boxes'):
        rpn(feat, im_info)


def test_under_bfloat16_autocast_the_loss_divides_by_the_exact_anchor_count():
    """257 labelled anchors: in bfloat16 the count would round to 256 (0.4 % too large a loss)."""
    cfg.ANCHOR_SCALES = [1, 2]
    cfg.TRAIN.RPN_POST_NMS_TOP_N = 30
    cfg.TRAIN.RPN_BATCHSIZE = 257
    torch.manual_seed(0)
    rpn = _RPN(8).train()
    feat = torch.randn(1, 8, 12, 14)
    im_info = torch.tensor([[192., 224., 1.]])
    gt = torch.tensor([[[20., 20., 90., 100., 1.], [100., 60., 180., 150., 2.]]])
    torch.manual_seed(5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        _, loss_cls, _ = rpn(feat, im_info, gt, torch.tensor([2]))
        score = rpn.RPN_cls_score(F.relu(rpn.RPN_Conv(feat))).detach()
    assert score.dtype == torch.bfloat16
    torch.manual_seed(5)
    labels = rpn.RPN_anchor_target(score, gt, im_info, torch.tensor([2]))[0].view(-1).long()
    assert (labels != -1).sum() == 257
    s = rpn.reshape(score, 2).permute(0, 2, 3, 1).reshape(-1, 2).float()
    torch.testing.assert_close(loss_cls.float(), F.cross_entropy(s, labels, ignore_index=-1), rtol=1e-5, atol=0)
