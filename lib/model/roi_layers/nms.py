"""Non-maximum suppression with the original's pixel-inclusive IoU, as thin wrappers of torch.ops.faster_rcnn.

Boxes are (x1, y1, x2, y2) with inclusive pixel corners: width = x2 - x1 + 1, height = y2 - y1 + 1. A box is
suppressed when its IoU with a kept box is strictly greater than the threshold, so nms(b) equals
torchvision.ops.nms on b with x2 + 1, y2 + 1. Ties in score keep input order (stable sort).
"""
import torch

from lib.model.roi_layers._ext import _C  # noqa: F401  (registers torch.ops.faster_rcnn)
from lib.model.roi_layers._autocast import autocast_to_float32


def nms(dets, scores, thresh):
    """Greedy NMS.

    Args:
        dets (Tensor[N, 4]): boxes (x1, y1, x2, y2), pixel-inclusive; float32/float64 (CUDA: also half/bf16).
        scores (Tensor[N]): scores of the same dtype and device.
        thresh (float): suppress boxes whose IoU with a kept box is > thresh.

    Returns:
        LongTensor[K]: indices into dets of the kept boxes, by decreasing score, on dets' device.
    """
    dets, scores, _ = autocast_to_float32(dets, scores)
    return torch.ops.faster_rcnn.nms(dets, scores, float(thresh))


def nms_padded(dets, scores, thresh, max_out):
    """NMS with a fixed-size result, so CUDA callers need no device-to-host copy.

    Args:
        dets (Tensor[N, 4]), scores (Tensor[N]), thresh (float): as in nms.
        max_out (int): at most this many boxes are kept (the first max_out of nms' result).

    Returns:
        keep (LongTensor[max_out]): kept indices by decreasing score, padded with -1.
        num_kept (LongTensor[]): how many entries of keep are valid, on dets' device.
    """
    dets, scores, _ = autocast_to_float32(dets, scores)
    return torch.ops.faster_rcnn.nms_padded(dets, scores, float(thresh), int(max_out))


def batched_nms(boxes, scores, idxs, thresh):
    """NMS within each category: boxes of different idxs never suppress each other.

    Every category is shifted to its own region of the plane (all on the device, no host sync), then a
    single NMS runs. The shift adds idxs * span to the coordinates; with float32 boxes and very many categories
    the shifted coordinates lose low bits, as in torchvision's batched_nms.

    Args:
        boxes (Tensor[N, 4]): pixel-inclusive (x1, y1, x2, y2).
        scores (Tensor[N]): scores.
        idxs (Tensor[N]): integer category of each box.
        thresh (float): IoU threshold, as in nms.

    Returns:
        LongTensor[K]: kept indices into boxes by decreasing score.
    """
    if boxes.dim() != 2 or boxes.size(1) != 4 or idxs.shape != scores.shape:
        raise ValueError(f'batched_nms: expected boxes [N, 4], scores [N] and idxs [N], got boxes '
                         f'{tuple(boxes.shape)}, scores {tuple(scores.shape)}, idxs {tuple(idxs.shape)}')
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    boxes, scores = _float32_if_half(boxes, scores)
    return nms(_class_shifted(boxes, idxs), scores, thresh)


def batched_nms_padded(boxes, scores, idxs, thresh, max_out, valid=None):
    """batched_nms with a fixed-size result and no host synchronisation (as nms_padded), for test time on a GPU.

    Args:
        boxes, scores, idxs, thresh: as in batched_nms.
        max_out (int): at most this many kept boxes (the first max_out of batched_nms' result).
        valid (BoolTensor[N], optional): the rows that count. The others must score below every valid row (e.g.
            -inf): NMS then reaches them after every valid row, so they never suppress one, and where
            batched_nms gets only the valid rows this keeps the same valid rows in the same order (the
            categories' shift is taken from the valid rows too). Kept invalid rows come after them.

    Returns:
        keep (LongTensor[max_out]): kept indices by decreasing score, padded with -1.
        num_kept (LongTensor[]): how many entries of keep are set, on boxes' device.
    """
    if boxes.dim() != 2 or boxes.size(1) != 4 or idxs.shape != scores.shape:
        raise ValueError(f'batched_nms_padded: expected boxes [N, 4], scores [N] and idxs [N], got boxes '
                         f'{tuple(boxes.shape)}, scores {tuple(scores.shape)}, idxs {tuple(idxs.shape)}')
    boxes, scores = _float32_if_half(boxes, scores)
    return nms_padded(_class_shifted(boxes, idxs, valid), scores, thresh, max_out)


def _float32_if_half(boxes, scores):
    # shifted half coordinates would be rounded to tens of pixels, or overflow past 65504: shift in float32
    if boxes.dtype in (torch.float16, torch.bfloat16):
        return boxes.float(), scores.float()
    return boxes, scores


def _class_shifted(boxes, idxs, valid=None):
    """Every category moved to its own region of the plane, measured on the rows where valid (all by default)."""
    if boxes.numel() == 0:
        return boxes
    if valid is None:
        lo, hi = boxes.min(), boxes.max()
    else:
        lo = torch.where(valid[:, None], boxes, float('inf')).min()
        hi = torch.where(valid[:, None], boxes, float('-inf')).max()
        # without a valid row any finite shift does
        lo, hi = torch.where(lo <= hi, lo, 0), torch.where(lo <= hi, hi, 0)
    # Pixel-inclusive boxes touching at one coordinate overlap by a pixel, hence the + 2 rather than + 1.
    span = hi - lo + 2
    return boxes - lo + (idxs.to(boxes.dtype) * span)[:, None]
