"""Small box utilities for datasets (the original's ds_utils): dedup, format conversion, validation, size filter.

Boxes are (N, 4) pixel-inclusive x1, y1, x2, y2 (width = x2 - x1 + 1).
"""
import numpy as np


def unique_boxes(boxes, scale=1.0):
    """Indices (sorted) of the first occurrence of each distinct box after multiplying by ``scale``."""
    v = np.array([1, 1e3, 1e6, 1e9])
    hashes = np.round(np.asarray(boxes, dtype=np.float64) * scale).dot(v)
    _, index = np.unique(hashes, return_index=True)
    return np.sort(index)


def xywh_to_xyxy(boxes):
    """(x, y, w, h) -> (x1, y1, x2, y2), pixel-inclusive: x2 = x + w - 1."""
    boxes = np.asarray(boxes)
    return np.hstack((boxes[:, 0:2], boxes[:, 0:2] + boxes[:, 2:4] - 1))


def xyxy_to_xywh(boxes):
    """(x1, y1, x2, y2) -> (x, y, w, h), pixel-inclusive: w = x2 - x1 + 1."""
    boxes = np.asarray(boxes)
    return np.hstack((boxes[:, 0:2], boxes[:, 2:4] - boxes[:, 0:2] + 1))


def validate_boxes(boxes, width=0, height=0, where='boxes'):
    """Raise ValueError (naming ``where`` and the first bad box) unless 0 <= x1 <= x2 < width, same for y."""
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        return
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    bad = (x1 < 0) | (y1 < 0) | (x2 < x1) | (y2 < y1) | (x2 >= width) | (y2 >= height)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise ValueError(f'{where}: box {i} {boxes[i].tolist()} is not inside a {width}x{height} image '
                         f'with x1 <= x2 and y1 <= y2')


def filter_small_boxes(boxes, min_size):
    """Indices of boxes whose width and height (pixel-inclusive) are both >= min_size."""
    boxes = np.asarray(boxes)
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return np.where((w >= min_size) & (h >= min_size))[0]
