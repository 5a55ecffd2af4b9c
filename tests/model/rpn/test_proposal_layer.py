import numpy as np
import pytest
import torch

pytest.importorskip('lib.model.roi_layers', reason='compiled ops not built', exc_type=ImportError)

from lib.model.rpn.bbox_transform import bbox_transform_inv, clip_boxes  # noqa: E402
from lib.model.rpn.generate_anchors import generate_anchors  # noqa: E402
from lib.model.rpn.proposal_layer import _ProposalLayer  # noqa: E402
from lib.model.utils.config import cfg  # noqa: E402

SCALES, RATIOS, STRIDE = [1, 2], [0.5, 1, 2], 16
A = 6


def _iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


def _reference(prob, deltas, im_info, pre, post, thresh, min_size):
    """The proposal pipeline written plainly: loops over cells and anchors, greedy NMS in Python."""
    B, _, H, W = deltas.shape
    base = generate_anchors(scales=np.array(SCALES), ratios=np.array(RATIOS))
    out = torch.zeros(B, post, 5)
    for b in range(B):
        anchors, scores, dl = [], [], []
        for h in range(H):
            for w in range(W):
                for a in range(A):
                    anchors.append(base[a] + [w * STRIDE, h * STRIDE, w * STRIDE, h * STRIDE])
                    scores.append(float(prob[b, A + a, h, w]))
                    dl.append(deltas[b, 4 * a:4 * a + 4, h, w])
        boxes = bbox_transform_inv(torch.tensor(np.array(anchors), dtype=torch.float32)[None],
                                   torch.stack(dl)[None])
        boxes = clip_boxes(boxes, im_info[b:b + 1])[0].tolist()
        ms = min_size * float(im_info[b, 2])
        cand = [(s, bx) for s, bx in zip(scores, boxes)
                if bx[2] - bx[0] + 1 >= ms and bx[3] - bx[1] + 1 >= ms]
        cand.sort(key=lambda t: -t[0])
        cand = cand[:pre]
        kept = []
        for s, bx in cand:
            if all(_iou(bx, k) <= thresh for _, k in kept):
                kept.append((s, bx))
        out[b, :, 0] = b
        for r, (_, bx) in enumerate(kept[:post]):
            out[b, r, 1:] = torch.tensor(bx)
    return out


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    H, W = 5, 6
    logits = torch.randn(2, 2, A * H, W, generator=g)
    prob = torch.softmax(logits, 1).view(2, 2 * A, H, W)
    deltas = torch.randn(2, 4 * A, H, W, generator=g) * 0.3
    im_info = torch.tensor([[80., 96., 1.0], [64., 90., 2.0]])
    return prob, deltas, im_info


@pytest.mark.parametrize('training', [True, False])
def test_against_reference(training):
    cfg.TRAIN.RPN_PRE_NMS_TOP_N, cfg.TRAIN.RPN_POST_NMS_TOP_N = 60, 25
    cfg.TRAIN.RPN_NMS_THRESH, cfg.TRAIN.RPN_MIN_SIZE = 0.7, 8
    cfg.TEST.RPN_PRE_NMS_TOP_N, cfg.TEST.RPN_POST_NMS_TOP_N = 100, 40
    cfg.TEST.RPN_NMS_THRESH, cfg.TEST.RPN_MIN_SIZE = 0.5, 16
    layer = _ProposalLayer(STRIDE, SCALES, RATIOS).train(training)
    cfg.TRAIN.RPN_POST_NMS_TOP_N = 7  # read at construction: later changes do not matter
    prob, deltas, im_info = _inputs()
    copies = [t.clone() for t in (prob, deltas, im_info)]
    rois = layer(prob, deltas, im_info)
    for t, c in zip((prob, deltas, im_info), copies):
        assert torch.equal(t, c)
    key = (60, 25, 0.7, 8) if training else (100, 40, 0.5, 16)
    ref = _reference(prob, deltas, im_info, *key)
    assert rois.shape == (2, key[1], 5)
    torch.testing.assert_close(rois, ref)
    for b in range(2):
        real = rois[b, :, 1:].abs().sum(1) > 0
        n = int(real.sum())
        assert 0 < n and real[:n].all() and not real[n:].any()     # zero padding after the kept rows
        boxes = rois[b, :n, 1:]
        assert (boxes[:, [0, 2]] <= im_info[b, 1] - 1).all() and (boxes[:, [1, 3]] <= im_info[b, 0] - 1).all()
        assert (boxes >= 0).all()
        # min size at the image scale (image 1 has scale 2)
        assert ((boxes[:, 2] - boxes[:, 0] + 1) >= key[3] * im_info[b, 2]).all()


def test_scores_sorted_and_all_filtered():
    cfg.TEST.RPN_POST_NMS_TOP_N = 30
    cfg.TEST.RPN_NMS_THRESH = 1.0    # nothing suppressed: the order is the score order
    cfg.TEST.RPN_MIN_SIZE = 0
    layer = _ProposalLayer(STRIDE, SCALES, RATIOS).eval()
    prob, _, im_info = _inputs(1)
    deltas = torch.zeros(2, 4 * A, 5, 6)
    rois = layer(prob, deltas, im_info)
    ref = _reference(prob, deltas, im_info, 6000, 30, 1.0, 0)
    torch.testing.assert_close(rois, ref)

    cfg.TEST.RPN_MIN_SIZE = 10000   # every box too small: all rows are padding
    rois = _ProposalLayer(STRIDE, SCALES, RATIOS).eval()(prob, deltas, im_info)
    assert (rois[:, :, 1:] == 0).all() and (rois[1, :, 0] == 1).all()
