import math

import torch

from lib.model.rpn.proposal_target_layer_cascade import _ProposalTargetLayer
from lib.model.utils.config import cfg


def _iou(a, b):
    """Reference IoU of two boxes, pixel-inclusive, written out."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


def _reference_target(roi, gts, means, stds):
    """Best gt, its IoU and the normalised regression target of one roi (pure Python)."""
    ious = [_iou(roi, g[:4]) for g in gts]
    j = max(range(len(gts)), key=lambda k: ious[k])
    g = gts[j]
    ew, eh = roi[2] - roi[0] + 1, roi[3] - roi[1] + 1
    gw, gh = g[2] - g[0] + 1, g[3] - g[1] + 1
    t = [((g[0] + 0.5 * gw) - (roi[0] + 0.5 * ew)) / ew, ((g[1] + 0.5 * gh) - (roi[1] + 0.5 * eh)) / eh,
         math.log(gw / ew), math.log(gh / eh)]
    return ious[j], g[4], [(t[i] - means[i]) / stds[i] for i in range(4)]


def _scene(seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.zeros(2, 3, 5)
    gt[0, 0] = torch.tensor([10., 10., 60., 50., 3.])
    gt[0, 1] = torch.tensor([70., 20., 120., 110., 1.])
    gt[1, 0] = torch.tensor([30., 40., 90., 100., 2.])
    num_boxes = torch.tensor([2, 1])
    rois = torch.zeros(2, 40, 5)
    for b in range(2):
        for i in range(34):   # jittered copies of the gts and random boxes; the last 6 rows are padding
            if i % 2 == 0:
                base = gt[b, (i // 2) % int(num_boxes[b]), :4]
                box = base + (torch.rand(4, generator=g) - 0.5) * 30
            else:
                xy = torch.rand(2, generator=g) * 100
                box = torch.cat([xy, xy + 5 + torch.rand(2, generator=g) * 40])
            rois[b, i, 1:] = box
    return rois, gt, num_boxes


def test_sampled_rois_against_reference():
    torch.manual_seed(0)
    cfg.TRAIN.BATCH_SIZE = 16
    cfg.TRAIN.FG_FRACTION = 0.25
    cfg.TRAIN.BG_THRESH_LO = 0.0
    layer = _ProposalTargetLayer(4)
    rois, gt, num_boxes = _scene()
    copies = [t.clone() for t in (rois, gt, num_boxes)]
    out_rois, labels, targets, inside_w, outside_w = layer(rois, gt, num_boxes)
    for t, c in zip((rois, gt, num_boxes), copies):
        assert torch.equal(t, c)
    assert out_rois.shape == (2, 16, 5) and labels.shape == (2, 16)
    assert targets.shape == inside_w.shape == outside_w.shape == (2, 16, 4)
    means, stds = cfg.TRAIN.BBOX_NORMALIZE_MEANS, cfg.TRAIN.BBOX_NORMALIZE_STDS
    for b in range(2):
        gts = gt[b, :int(num_boxes[b])].tolist()
        cands = rois[b, :34, 1:].tolist() + [g[:4] for g in gts]
        n_fg_cand = sum(_reference_target(c, gts, means, stds)[0] >= 0.5 for c in cands)
        assert (labels[b] > 0).sum() == min(4, n_fg_cand)   # round(0.25 * 16) = 4 fg slots
        assert (out_rois[b, :, 0] == b).all()
        for r in range(16):
            box = out_rois[b, r, 1:].tolist()
            assert box in cands
            iou, cls, t = _reference_target(box, gts, means, stds)
            if labels[b, r] > 0:
                assert iou >= 0.5 and labels[b, r] == cls
                torch.testing.assert_close(targets[b, r], torch.tensor(t), rtol=1e-4, atol=1e-4)
                assert torch.equal(inside_w[b, r], torch.ones(4)) and torch.equal(outside_w[b, r], torch.ones(4))
            else:
                assert 0.0 <= iou < 0.5
                assert (targets[b, r] == 0).all() and (inside_w[b, r] == 0).all() and (outside_w[b, r] == 0).all()
        # enough candidates of each kind here: no roi is drawn twice
        assert len({tuple(x) for x in out_rois[b, :, 1:].tolist()}) == 16
    # fg first, then bg, as the original
    assert ((labels[:, :-1] > 0) | (labels[:, 1:] == 0)).all()


def test_background_rois_respect_bg_thresh_lo():
    """The default BG_THRESH_LO 0.1: rois overlapping no gt by at least 0.1 are never sampled as background."""
    torch.manual_seed(0)
    cfg.TRAIN.BATCH_SIZE = 16
    cfg.TRAIN.BG_THRESH_LO = 0.1
    rois, gt, num_boxes = _scene()
    gts = gt[0, :2].tolist()
    ious = [_reference_target(r, gts, [0] * 4, [1] * 4)[0] for r in rois[0, :34, 1:].tolist()]
    assert sum(i < 0.1 for i in ious) >= 5 and sum(0.1 <= i < 0.5 for i in ious) >= 5  # both kinds are there
    out_rois, labels, _, _, _ = _ProposalTargetLayer(4)(rois, gt, num_boxes)
    bg = [_reference_target(out_rois[0, r, 1:].tolist(), gts, [0] * 4, [1] * 4)[0]
          for r in range(16) if labels[0, r] == 0]
    assert bg and all(0.1 <= i < 0.5 for i in bg)


def test_unnormalised_targets():
    cfg.TRAIN.BATCH_SIZE = 8
    cfg.TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED = False
    layer = _ProposalTargetLayer(4)
    rois, gt, num_boxes = _scene(1)
    out_rois, labels, targets, _, _ = layer(rois, gt, num_boxes)
    gts = gt[0, :2].tolist()
    for r in range(8):
        if labels[0, r] > 0:
            _, _, t = _reference_target(out_rois[0, r, 1:].tolist(), gts, [0] * 4, [1] * 4)
            torch.testing.assert_close(targets[0, r], torch.tensor(t), rtol=1e-4, atol=1e-4)


def test_degenerate_cases_do_not_crash():
    cfg.TRAIN.BATCH_SIZE = 8
    cfg.TRAIN.BG_THRESH_LO = 0.1
    layer = _ProposalTargetLayer(4)
    rois, gt, _ = _scene(2)
    # no gt at all and BG_THRESH_LO > 0: neither fg nor bg candidates -> background from the real rois
    out_rois, labels, targets, iw, ow = layer(rois, gt, torch.tensor([0, 0]))
    assert (labels == 0).all() and (iw == 0).all() and (ow == 0).all() and (targets == 0).all()
    widths = out_rois[:, :, 3] - out_rois[:, :, 1] + 1
    assert (widths > 1).all()   # padding rows are never drawn

    # only padding proposals: the gt boxes are the only candidates -> all slots fg, drawn with repeats
    empty = torch.zeros(2, 5, 5)
    out_rois, labels, targets, iw, ow = layer(empty, gt, torch.tensor([2, 1]))
    assert (labels > 0).all()
    assert torch.equal(out_rois[1, :, 1:], gt[1, 0, :4].expand(8, 4))
    assert torch.allclose(targets, torch.zeros_like(targets), atol=1e-6)   # a gt's target onto itself is 0
    assert (iw == 1).all()

    # no gt and no proposals at all: nothing to sample, still the right shapes and zero weights
    out_rois, labels, targets, iw, ow = layer(empty, torch.zeros(2, 3, 5), torch.tensor([0, 0]))
    assert out_rois.shape == (2, 8, 5) and (labels == 0).all() and (iw == 0).all()
