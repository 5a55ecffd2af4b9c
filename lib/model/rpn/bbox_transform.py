"""Box encoding, decoding, clipping and IoU shared by the RPN and the RCNN target layers.

Convention (the original's, used everywhere in this project): boxes are xyxy in image pixels and
pixel-inclusive, i.e. a box covers the pixels x1..x2 and y1..y2, so

    width  = x2 - x1 + 1        height = y2 - y1 + 1
    centre = x1 + 0.5 * width   (the original's definition, kept so that targets match it)

Shorthand: B images, N boxes per image, K gt boxes per image.
"""
import math

import torch

# Largest log-scale a decoded box may grow by: exp(dw) <= 1000 / 16. Without it a large predicted dw
# overflows exp to inf and produces NaN boxes (the same bound as torchvision's and detectron2's
# Box2BoxTransform).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _sizes_centres(boxes):
    """[..., 4] boxes -> (wh, centre), each [..., 2]: (w, h) and (cx, cy).

    The helpers here work on coordinate pairs, (x, y) side by side, rather than on one coordinate at a time: the
    same arithmetic per element with about half the tensor ops, each of which costs the host a dispatch (on a GPU
    the training step waits on those dispatches; docs/BENCHMARKS.md).
    """
    x1y1 = boxes[..., 0:2]
    wh = boxes[..., 2:4] - x1y1 + 1.0
    return wh, x1y1 + 0.5 * wh


def encode(ex_rois, gt_rois):
    """Regression targets (dx, dy, dw, dh) that move ``ex_rois`` onto ``gt_rois``.

    Args:
        ex_rois: [..., 4] reference boxes (anchors or rois); broadcast against gt_rois.
        gt_rois: [..., 4] target boxes.
    Returns:
        [..., 4] deltas: dx = (gx - ex) / ew, dy likewise, dw = log(gw / ew), dh likewise.
    """
    ewh, ec = _sizes_centres(ex_rois)
    gwh, gc = _sizes_centres(gt_rois)
    return torch.cat(((gc - ec) / ewh, torch.log(gwh / ewh)), dim=-1)


def decode(boxes, deltas):
    """Apply deltas to boxes: the exact inverse of :func:`encode`.

    Args:
        boxes: [..., N, 4] reference boxes.
        deltas: [..., N, 4k] deltas, k groups of (dx, dy, dw, dh) (k = 1 or one group per class).
    Returns:
        [..., N, 4k] decoded boxes, same dtype as deltas. dw and dh are clamped at BBOX_XFORM_CLIP.
    """
    wh, c = _sizes_centres(boxes.to(deltas.dtype))
    wh, c = wh.unsqueeze(-2), c.unsqueeze(-2)  # (..., N, 1, 2) against the (..., N, k, 2) groups
    d = deltas.unflatten(-1, (-1, 4))
    pc = d[..., 0:2] * wh + c
    half = 0.5 * (torch.exp(d[..., 2:4].clamp(max=BBOX_XFORM_CLIP)) * wh)
    # x2 = x1 + w - 1 (pixel-inclusive), so that decode(encode(b)) == b; the original returned x1 + w here,
    # one pixel too far (Detectron's box_utils subtracts the same 1)
    # (..., N, k, 4) -> (..., N, 4k): x1, y1, x2, y2 of each group side by side, as the deltas were
    return torch.cat((pc - half, pc + half - 1), dim=-1).flatten(-2)


def bbox_transform(ex_rois, gt_rois):
    """Targets for paired boxes: ex_rois [N, 4], gt_rois [N, 4] -> [N, 4]."""
    return encode(ex_rois, gt_rois)


def bbox_transform_batch(ex_rois, gt_rois):
    """Targets for a batch.

    Args:
        ex_rois: [N, 4] (the same boxes for every image, e.g. anchors) or [B, N, 4].
        gt_rois: [B, N, 4] (a 5th column, if any, is ignored).
    Returns:
        [B, N, 4] deltas.
    """
    if ex_rois.dim() not in (2, 3):
        raise ValueError(f'bbox_transform_batch: ex_rois must be [N, 4] or [B, N, 4], got {tuple(ex_rois.shape)}')
    return encode(ex_rois[..., :4], gt_rois[..., :4])


def bbox_transform_inv(boxes, deltas, batch_size=None):
    """Decode a batch: boxes [B, N, 4] (or [N, 4]) and deltas [B, N, 4k] -> [B, N, 4k].

    ``batch_size`` is accepted so that the original's call ``bbox_transform_inv(boxes, deltas, 1)`` keeps
    working; it is not needed (the tensors carry it) and is ignored.
    """
    return decode(boxes, deltas)


def clip_boxes(boxes, im_info, batch_size=None):
    """Clip boxes to their image: x to [0, W-1], y to [0, H-1], per image.

    Args:
        boxes: [B, N, 4k] boxes (k groups of x1, y1, x2, y2).
        im_info: [B, 3+] rows (H, W, scale, ...) of each image.
        batch_size: ignored; accepted for the original's call signature.
    Returns:
        a new [B, N, 4k] tensor (the input is not modified).
    """
    im_info = im_info.to(boxes.dtype)
    xmax = (im_info[:, 1] - 1).view(-1, 1, 1)
    ymax = (im_info[:, 0] - 1).view(-1, 1, 1)
    # (B, N, 4k) -> (B, N, k, 4) so that one bound tensor per coordinate can be broadcast
    b = boxes.unflatten(-1, (-1, 4))
    upper = torch.stack((xmax, ymax, xmax, ymax), dim=-1)  # (B, 1, 1, 4)
    return torch.minimum(b, upper).clamp(min=0).flatten(-2)


def _pairwise_iou(a, b):
    """a [..., N, 4], b [..., K, 4] -> IoU [..., N, K] (pixel-inclusive), plus the (w, h) [..., 2] of a and b."""
    a1, a2 = a[..., 0:2], a[..., 2:4]
    b1, b2 = b[..., 0:2], b[..., 2:4]
    awh = a2 - a1 + 1
    bwh = b2 - b1 + 1
    # (..., N, 1, 2) against (..., 1, K, 2): the intersection's (w, h) for every pair
    iw, ih = (torch.minimum(a2.unsqueeze(-2), b2.unsqueeze(-3))
              - torch.maximum(a1.unsqueeze(-2), b1.unsqueeze(-3)) + 1).clamp(min=0).unbind(-1)
    inter = iw * ih
    aw, ah = awh.unbind(-1)
    bw, bh = bwh.unbind(-1)
    union = (aw * ah).unsqueeze(-1) + (bw * bh).unsqueeze(-2) - inter
    return inter / union, awh, bwh


def bbox_overlaps(anchors, gt_boxes):
    """IoU of anchors [N, 4] against gt_boxes [K, 4] -> [N, K] (pixel-inclusive)."""
    return _pairwise_iou(anchors[:, :4], gt_boxes[:, :4])[0]


def bbox_overlaps_batch(anchors, gt_boxes):
    """IoU per image, with the original's handling of padding rows.

    Args:
        anchors: [N, 4] (shared by all images), [B, N, 4], or [B, N, 5] rois (batch index, x1, y1, x2, y2).
        gt_boxes: [B, K, 5] (x1, y1, x2, y2, class) or [B, K, 4].
    Returns:
        [B, N, K] IoU. A gt box of one pixel (x1 == x2 and y1 == y2, which includes the all-zero padding
        rows) has overlap 0 with everything; a one-pixel anchor/roi (e.g. a zero padding roi) has overlap -1
        with every gt, so it is neither foreground nor background.
    """
    B = gt_boxes.size(0)
    if anchors.dim() == 2:
        a = anchors[:, :4].unsqueeze(0).expand(B, -1, -1)
    elif anchors.dim() == 3:
        a = anchors[:, :, 1:5] if anchors.size(2) == 5 else anchors[:, :, :4]
    else:
        raise ValueError(f'bbox_overlaps_batch: anchors must be [N, 4], [B, N, 4] or [B, N, 5], '
                         f'got {tuple(anchors.shape)}')
    g = gt_boxes[:, :, :4]
    overlaps, awh, gwh = _pairwise_iou(a, g)
    gt_zero = (gwh == 1).all(-1)
    anchor_zero = (awh == 1).all(-1)
    overlaps = overlaps.masked_fill(gt_zero[:, None, :], 0)
    overlaps = overlaps.masked_fill(anchor_zero[:, :, None], -1)
    return overlaps
