"""Square crops of a detection roidb's objects and of its background, for classification pretraining.

Where no ImageNet weights exist (the synthetic shapes set, a machine with no download), the backbone can first be
taught to classify the training set's objects (tools/pretrain_backbone.py), then fine-tuned as a detector from
those weights, as the original fine-tunes from ImageNet. This module cuts the examples:

* one crop per gt box: a square centred on the box, ``context`` times its longer side (at least ``min_side``);
* ``bg_per_image`` tries per image of a background crop: a square of log-uniform side in
  [min_side, bg_max_frac * short side] at a uniform centre, kept when its IoU with every gt box is at most
  ``bg_max_iou``; label 0 (``__background__``).

Images are scaled as the detector's data layer scales them (short side ``target_size``, long side at most
``max_size``), so objects are seen at the resolution detection trains at. Every crop is resized to
``round(crop_size * margin)`` pixels a side: the extra margin lets training take random ``crop_size`` windows
(jitter) while the centred window covers the square above. Outside the image the crop mirrors it (OpenCV's
BORDER_REFLECT_101). Crops are BGR uint8 like the images, so `blob.normalize_image` applies to them.
"""
import cv2
import numpy as np
import torch

from lib.model.rpn.bbox_transform import bbox_overlaps
from lib.model.utils.blob import im_scale_for, read_image, resize_image
from lib.roi_data_layer.minibatch import gt_indices


def _cut(im, squares, out_size):
    """Crops of ``im`` [H, W, 3] for squares [(cx, cy, side)], each resized to out_size x out_size."""
    h, w = im.shape[:2]
    boxes = [(int(round(cx - s / 2)), int(round(cy - s / 2)), max(1, int(round(s)))) for cx, cy, s in squares]
    pad = max([0] + [max(-x, -y, x + s - w, y + s - h) for x, y, s in boxes])
    if pad > 0:
        # reflection cannot reach further than the image is wide: tile by repeated padding
        padded, done = im, 0
        while done < pad:
            step = min(pad - done, min(padded.shape[:2]) - 1)
            if step < 1:  # a 1-pixel-wide image has nothing to mirror: repeat its edge
                padded = cv2.copyMakeBorder(padded, 1, 1, 1, 1, cv2.BORDER_REPLICATE)
                step = 1
            else:
                padded = cv2.copyMakeBorder(padded, step, step, step, step, cv2.BORDER_REFLECT_101)
            done += step
        im = padded
    out = np.empty((len(boxes), out_size, out_size, 3), np.uint8)
    for i, (x, y, s) in enumerate(boxes):
        patch = im[y + pad:y + pad + s, x + pad:x + pad + s]
        out[i] = cv2.resize(patch, (out_size, out_size),
                            interpolation=cv2.INTER_AREA if s > out_size else cv2.INTER_LINEAR)
    return out


def object_crops(roidb, target_size, max_size=None, crop_size=64, margin=1.25, context=1.2, min_side=16.0,
                 bg_per_image=4, bg_max_iou=0.3, bg_max_frac=0.6, seed=0, progress=None):
    """Crops and labels for classification pretraining (see the module docstring).

    Args:
        roidb: entries with 'image', 'boxes' [G, 4] (pixel-inclusive x1, y1, x2, y2), 'gt_classes' [G]
            and optionally 'flipped' (flipped entries are read mirrored, as the data layer does).
        target_size, max_size: the image scaling (cfg.TRAIN.SCALES[0], cfg.TRAIN.MAX_SIZE).
        progress: optional callable wrapping an iterable (e.g. tqdm) for a progress bar.

    Returns:
        crops: uint8 [N, P, P, 3] BGR with P = round(crop_size * margin).
        labels: int64 [N], the gt class (1..C) or 0 for background.
    """
    if crop_size < 8:
        raise ValueError(f'crop_size must be >= 8 pixels, got {crop_size}')
    if margin < 1.0:
        raise ValueError(f'margin must be >= 1 (the crop window must fit in the stored crop), got {margin}')
    rng = np.random.default_rng(seed)
    out_size = int(round(crop_size * margin))
    crops, labels = [], []
    entries = progress(roidb) if progress is not None else roidb
    for entry in entries:
        im = read_image(entry['image'])
        if entry.get('flipped', False):  # its boxes are mirrored already (imdb.append_flipped_images)
            im = np.ascontiguousarray(im[:, ::-1])
        scale = im_scale_for(im.shape[0], im.shape[1], target_size, max_size)
        im = resize_image(im, scale)
        h, w = im.shape[:2]
        keep = gt_indices(entry)
        boxes = np.asarray(entry['boxes'], np.float64)[keep]
        boxes = boxes * scale
        boxes[:, 2:] += scale  # pixel-inclusive -> continuous extent
        classes = np.asarray(entry['gt_classes'])[keep]
        squares, labs = [], []
        for b, c in zip(boxes, classes):
            side = max(float(max(b[2] - b[0], b[3] - b[1])) * context, min_side)
            squares.append(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, side * margin))
            labs.append(int(c))
        hi = max(min_side * 1.01, bg_max_frac * min(h, w))
        tries = []
        for _ in range(bg_per_image):
            side = float(np.exp(rng.uniform(np.log(min_side), np.log(hi))))
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            tries.append((cx, cy, side))
        if tries and len(boxes):
            # bbox_overlaps counts pixels inclusively: (x1, y1, x2 - 1, y2 - 1) gives the continuous IoU
            corners = np.array([(cx - s / 2, cy - s / 2, cx + s / 2 - 1, cy + s / 2 - 1) for cx, cy, s in tries])
            iou = bbox_overlaps(torch.from_numpy(corners), torch.from_numpy(boxes - [0, 0, 1, 1])).numpy()
            tries = [t for t, best in zip(tries, iou.max(axis=1)) if best <= bg_max_iou]
        for cx, cy, side in tries:
            squares.append((cx, cy, side * margin))
            labs.append(0)
        if squares:
            crops.append(_cut(im, squares, out_size))
            labels.extend(labs)
    if not crops:
        return np.zeros((0, out_size, out_size, 3), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(crops), np.asarray(labels, np.int64)
