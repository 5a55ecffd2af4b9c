"""The A reference anchors of one feature-map cell, as in the original Faster R-CNN.

Boxes are pixel-inclusive xyxy (width = x2 - x1 + 1). The base window is (0, 0, base_size-1, base_size-1);
ratios are enumerated first (area kept, aspect changed), then each ratio box is scaled. With the defaults the
9 anchors are the original's, listed in docs/MODEL.md and checked in tests/model/rpn/test_generate_anchors.py.
"""
import numpy as np
import torch


def _whctrs(anchor):
    """(x1, y1, x2, y2) -> width, height, x centre, y centre (pixel-inclusive)."""
    w = anchor[2] - anchor[0] + 1
    h = anchor[3] - anchor[1] + 1
    x_ctr = anchor[0] + 0.5 * (w - 1)
    y_ctr = anchor[1] + 0.5 * (h - 1)
    return w, h, x_ctr, y_ctr


def _mkanchors(ws, hs, x_ctr, y_ctr):
    """Boxes of widths ws[N] and heights hs[N] around one centre -> [N, 4]."""
    ws = np.asarray(ws, dtype=np.float64)[:, None]
    hs = np.asarray(hs, dtype=np.float64)[:, None]
    return np.hstack((x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1),
                      x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)))


def _ratio_enum(anchor, ratios):
    """One anchor per aspect ratio h/w, keeping the area (sizes rounded as the original)."""
    w, h, x_ctr, y_ctr = _whctrs(anchor)
    size = w * h
    ws = np.round(np.sqrt(size / np.asarray(ratios, dtype=np.float64)))
    hs = np.round(ws * np.asarray(ratios, dtype=np.float64))
    return _mkanchors(ws, hs, x_ctr, y_ctr)


def _scale_enum(anchor, scales):
    """One anchor per scale, keeping the centre and the aspect ratio."""
    w, h, x_ctr, y_ctr = _whctrs(anchor)
    scales = np.asarray(scales, dtype=np.float64)
    return _mkanchors(w * scales, h * scales, x_ctr, y_ctr)


def generate_anchors(base_size=16, ratios=(0.5, 1, 2), scales=2 ** np.arange(3, 6)):
    """Reference anchors for one cell.

    Args:
        base_size: side of the base window (the feature stride).
        ratios: aspect ratios h / w.
        scales: multipliers of the base side.
    Returns:
        float64 array [len(ratios) * len(scales), 4], ratio-major (all scales of ratios[0] first).
    """
    base_anchor = np.array([0, 0, base_size - 1, base_size - 1], dtype=np.float64)
    ratio_anchors = _ratio_enum(base_anchor, ratios)
    return np.vstack([_scale_enum(ratio_anchors[i], scales) for i in range(ratio_anchors.shape[0])])


def grid_anchors(base_anchors, feat_height, feat_width, feat_stride):
    """The reference anchors placed on every cell of a feature map.

    Args:
        base_anchors: [A, 4] tensor from :func:`generate_anchors` (on the wanted device and dtype).
        feat_height, feat_width: H, W of the feature map.
        feat_stride: image pixels per feature cell.
    Returns:
        [H*W*A, 4] anchors, ordered (h, w, a): row (h * W + w) * A + a is anchor a of cell (h, w), the order
        of ``rpn_bbox_pred.permute(0, 2, 3, 1)`` rows.
    """
    dev, dt = base_anchors.device, base_anchors.dtype
    shift_x = torch.arange(feat_width, device=dev, dtype=dt) * feat_stride
    shift_y = torch.arange(feat_height, device=dev, dtype=dt) * feat_stride
    sy, sx = torch.meshgrid(shift_y, shift_x, indexing='ij')
    shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
    return (shifts + base_anchors.view(1, -1, 4)).reshape(-1, 4)
