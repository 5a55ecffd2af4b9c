import numpy as np
import pytest
import torch

from lib.model.rpn.anchor_target_layer import _AnchorTargetLayer
from lib.model.rpn.bbox_transform import bbox_overlaps, bbox_transform
from lib.model.rpn.generate_anchors import generate_anchors, grid_anchors
from lib.model.utils.config import cfg

H, W, STRIDE = 8, 8, 16
SCALES, RATIOS = [2, 4], [0.5, 1, 2]
A = len(SCALES) * len(RATIOS)


def _anchors():
    base = torch.from_numpy(generate_anchors(scales=np.array(SCALES), ratios=np.array(RATIOS))).float()
    return grid_anchors(base, H, W, STRIDE)


def _flat(labels, targets, inside_w, outside_w):
    """The outputs back in anchor order (B, H*W*A) / (B, H*W*A, 4)."""
    B = labels.size(0)
    lab = labels.view(B, A, H, W).permute(0, 2, 3, 1).reshape(B, -1)
    tg = targets.permute(0, 2, 3, 1).reshape(B, -1, 4)
    iw = inside_w.permute(0, 2, 3, 1).reshape(B, -1, 4)
    ow = outside_w.permute(0, 2, 3, 1).reshape(B, -1, 4)
    return lab, tg, iw, ow


def _inputs():
    gt = torch.zeros(2, 4, 5)
    gt[0, 0] = torch.tensor([10., 12., 50., 60., 1.])
    gt[0, 1] = torch.tensor([60., 20., 120., 100., 2.])
    gt[1, 0] = torch.tensor([5., 5., 40., 30., 1.])
    gt[1, 1] = torch.tensor([70., 50., 90., 75., 3.])
    gt[1, 2] = torch.tensor([0., 0., 20., 20., 1.])   # beyond num_boxes: must be ignored
    num_boxes = torch.tensor([2, 2])
    im_info = torch.tensor([[128., 128., 1.], [96., 112., 1.]])  # image 1 is smaller than the map
    score = torch.zeros(2, 2 * A, H, W)
    return score, gt, im_info, num_boxes


def test_shapes_counts_inside_and_weights():
    torch.manual_seed(0)
    layer = _AnchorTargetLayer(STRIDE, SCALES, RATIOS, batch_size=64, fg_fraction=0.25)
    score, gt, im_info, num_boxes = _inputs()
    copies = [t.clone() for t in (score, gt, im_info, num_boxes)]
    out = layer(score, gt, im_info, num_boxes)
    for t, c in zip((score, gt, im_info, num_boxes), copies):
        assert torch.equal(t, c)
    labels, targets, inside_w, outside_w = out
    assert labels.shape == (2, 1, A * H, W)
    assert targets.shape == inside_w.shape == outside_w.shape == (2, 4 * A, H, W)

    lab, tg, iw, ow = _flat(*out)
    anchors = _anchors()
    for b in range(2):
        n_pos = int((lab[b] == 1).sum())
        n_neg = int((lab[b] == 0).sum())
        assert 0 < n_pos <= 16 and n_pos + n_neg <= 64
        hgt, wid = im_info[b, 0], im_info[b, 1]
        inside = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < wid) & (anchors[:, 3] < hgt))
        assert (lab[b][~inside] == -1).all()
        # outside weights: 1 / (labelled anchors of this image) on labelled anchors, 0 elsewhere
        labelled = lab[b] >= 0
        torch.testing.assert_close(ow[b][labelled], torch.full((int(labelled.sum()), 4), 1.0 / (n_pos + n_neg)))
        assert (ow[b][~labelled] == 0).all()
        # inside weights: 1 on positives only
        assert torch.equal(iw[b], (lab[b] == 1).float().unsqueeze(1).expand(-1, 4))
        # targets of positives move the anchor onto its best gt
        pos = lab[b] == 1
        gts = gt[b, :int(num_boxes[b]), :4]
        best = bbox_overlaps(anchors[pos], gts).argmax(1)
        torch.testing.assert_close(tg[b][pos], bbox_transform(anchors[pos], gts[best]))
        assert (tg[b][~inside] == 0).all()


def test_best_anchor_of_every_gt_is_positive_with_ties():
    cfg.TRAIN.RPN_POSITIVE_OVERLAP = 0.99  # nothing passes the threshold: only the forced best anchors
    layer = _AnchorTargetLayer(STRIDE, SCALES, RATIOS, batch_size=256)
    score, gt, im_info, num_boxes = _inputs()
    lab, _, _, _ = _flat(*layer(score, gt, im_info, num_boxes))
    anchors = _anchors()
    for b in range(2):
        hgt, wid = im_info[b, 0], im_info[b, 1]
        inside = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < wid) & (anchors[:, 3] < hgt))
        ov = bbox_overlaps(anchors, gt[b, :int(num_boxes[b]), :4])
        ov[~inside] = -1
        best = (ov == ov.max(0, keepdim=True).values).any(1)   # every anchor tying a gt's maximum
        assert torch.equal(lab[b] == 1, best)
    # the gt row beyond num_boxes (0, 0, 20, 20) has an anchor matching it well; it is not a positive
    # source: its best anchor is only positive if it is also the best of a valid gt (checked above)


def test_no_gt_gives_only_negatives_and_clobber():
    layer = _AnchorTargetLayer(STRIDE, SCALES, RATIOS, batch_size=32)
    score, gt, im_info, _ = _inputs()
    lab, _, iw, ow = _flat(*layer(score, gt, im_info, torch.tensor([0, 0])))
    assert not (lab == 1).any()
    assert ((lab == 0).sum(1) == 32).all()
    assert (iw == 0).all()
    torch.testing.assert_close(ow.sum((1, 2)), torch.full((2,), 4.0))

    # with clobbering, an anchor that is some gt's best but below the negative threshold ends negative
    gt2 = torch.zeros(1, 1, 5)
    gt2[0, 0] = torch.tensor([16., 16., 20., 20., 1.])  # 5x5 inside anchor (8, 8, 39, 39): IoU 25 / 1024 < 0.3
    im = torch.tensor([[128., 128., 1.]])
    keep = _AnchorTargetLayer(STRIDE, SCALES, RATIOS, clobber_positives=False)
    clob = _AnchorTargetLayer(STRIDE, SCALES, RATIOS, clobber_positives=True)
    s = torch.zeros(1, 2 * A, H, W)
    assert (_flat(*keep(s, gt2, im, torch.tensor([1])))[0] == 1).sum() >= 1
    assert (_flat(*clob(s, gt2, im, torch.tensor([1])))[0] == 1).sum() == 0


def test_positive_weight_option_and_validation():
    layer = _AnchorTargetLayer(STRIDE, SCALES, RATIOS, batch_size=64, positive_weight=0.25)
    score, gt, im_info, num_boxes = _inputs()
    lab, _, _, ow = _flat(*layer(score, gt, im_info, num_boxes))
    for b in range(2):
        pos, neg = lab[b] == 1, lab[b] == 0
        torch.testing.assert_close(ow[b][pos][:, 0], torch.full((int(pos.sum()),), 0.25 / int(pos.sum())))
        torch.testing.assert_close(ow[b][neg][:, 0], torch.full((int(neg.sum()),), 0.75 / int(neg.sum())))
    with pytest.raises(ValueError, match='RPN_POSITIVE_WEIGHT'):
        _AnchorTargetLayer(STRIDE, SCALES, RATIOS, positive_weight=1.5)


def test_outside_weights_use_each_images_own_count():
    # no subsampling: every labelled anchor counts, and the smaller image 1 has fewer of them
    layer = _AnchorTargetLayer(STRIDE, SCALES, RATIOS, batch_size=10000, fg_fraction=0.5)
    score, gt, im_info, num_boxes = _inputs()
    lab, _, _, ow = _flat(*layer(score, gt, im_info, num_boxes))
    counts = (lab >= 0).sum(1)
    assert counts[0] != counts[1]
    for b in range(2):
        assert torch.allclose(ow[b][lab[b] >= 0], torch.tensor(1.0 / float(counts[b])))


def test_labels_follow_the_overlap_thresholds_before_subsampling():
    """No subsampling (a batch larger than the anchors): every inside anchor is positive when IoU >= 0.7 with a gt
    or it is a gt's best (ties included), negative when its best IoU < 0.3 and it is not positive, ignored in the
    band between, as the original's anchor_target_layer (RPN_CLOBBER_POSITIVES False)."""
    anchors = _anchors()
    # a gt 8 px wider than a 64 x 64 anchor: that anchor and its neighbour 16 px right both pass 0.7, and only one
    # of them is the gt's best
    k = int(((anchors[:, 2] - anchors[:, 0] == 63) & (anchors[:, 3] - anchors[:, 1] == 63)
             & (anchors[:, 0] == 24) & (anchors[:, 1] == 24)).nonzero()[0])
    gt = torch.zeros(1, 2, 5)
    gt[0, 0, :4] = anchors[k] + torch.tensor([0., 0., 8., 0.])
    gt[0, 0, 4] = 1
    gt[0, 1] = torch.tensor([5., 70., 40., 100., 2.])
    im_info = torch.tensor([[128., 128., 1.]])
    layer = _AnchorTargetLayer(STRIDE, SCALES, RATIOS, batch_size=100000, fg_fraction=1.0)
    lab = _flat(*layer(torch.zeros(1, 2 * A, H, W), gt, im_info, torch.tensor([2])))[0][0]

    inside = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < 128) & (anchors[:, 3] < 128)
    ov = bbox_overlaps(anchors, gt[0, :, :4])
    ov[~inside] = -1
    best_of_a_gt = (ov == ov.max(0, keepdim=True).values).any(1)
    max_ov = ov.max(1).values
    pos = inside & ((max_ov >= 0.7) | best_of_a_gt)
    neg = inside & (max_ov < 0.3) & ~pos
    expected = torch.full_like(lab, -1)
    expected[neg] = 0
    expected[pos] = 1
    assert ((max_ov >= 0.7) & ~best_of_a_gt).any()  # the threshold, not the best-anchor rule, makes a positive
    assert (inside & (max_ov >= 0.3) & (max_ov < 0.7) & ~pos).any()  # and the band is ignored
    assert torch.equal(lab, expected)
