"""One roidb entry -> the blobs of one image: scaled, normalised image, scaled gt boxes, im_info."""
import numpy as np
import numpy.random as npr

from lib.model.utils.blob import im_list_to_blob, prep_im_for_blob, read_image
from lib.model.utils.config import cfg


def load_entry_image(entry):
    """The entry's image as HxWx3 BGR uint8, mirrored when entry['flipped']; checks the size against the roidb."""
    im = read_image(entry['image'])
    if 'width' in entry and 'height' in entry and im.shape[:2] != (entry['height'], entry['width']):
        raise ValueError(f'{entry["image"]}: image is {im.shape[1]}x{im.shape[0]} but the roidb says '
                         f'{entry["width"]}x{entry["height"]} (stale cache or wrong <size>?)')
    if entry.get('flipped', False):
        im = im[:, ::-1, :]
    return im


def gt_indices(entry, use_all_gt=True):
    """Rows of the entry's boxes used as gt: every non-background box, or (use_all_gt False) non-crowd ones."""
    keep = entry['gt_classes'] != 0
    if not use_all_gt:
        overlaps = entry['gt_overlaps']
        overlaps = overlaps.toarray() if hasattr(overlaps, 'toarray') else np.asarray(overlaps)
        if overlaps.shape[0]:
            keep &= np.all(overlaps > -1.0, axis=1)
    return np.where(keep)[0]


def get_minibatch(roidb, num_classes, target_size=None, max_size=None, input_format=None, pixel_means=None,
                  pixel_stds=None, use_all_gt=None):
    """Blobs for a one-image roidb (the original supports one image per call, and so does this).

    Args:
        roidb: list with one prepared entry (has 'image').
        num_classes: unused; kept for the original's signature.
        target_size: short side; None draws one of cfg.TRAIN.SCALES at random.
        max_size: cap on the long side; None uses cfg.TRAIN.MAX_SIZE (pass float('inf') for none).
        input_format, pixel_means, pixel_stds, use_all_gt: None reads cfg (INPUT_FORMAT, PIXEL_MEANS or
            PYTORCH_PIXEL_MEANS/STDS, TRAIN.USE_ALL_GT).
    Returns:
        {'data': (1, H, W, 3) float32, 'gt_boxes': (n, 5) float32 x1, y1, x2, y2 (scaled), class,
         'im_info': (1, 3) float32 (H, W, im_scale), 'img_id': the entry's img_id}
    """
    if len(roidb) != 1:
        raise ValueError(f'get_minibatch takes a single image, got {len(roidb)}')
    entry = roidb[0]
    if target_size is None:
        target_size = cfg.TRAIN.SCALES[npr.randint(0, high=len(cfg.TRAIN.SCALES))]
    if max_size is None:
        max_size = cfg.TRAIN.MAX_SIZE
    if input_format is None:
        input_format = cfg.INPUT_FORMAT
    if pixel_means is None:
        pixel_means = cfg.PIXEL_MEANS if input_format == 'caffe' else cfg.PYTORCH_PIXEL_MEANS
    if pixel_stds is None and input_format == 'pytorch':
        pixel_stds = cfg.PYTORCH_PIXEL_STDS
    if use_all_gt is None:
        use_all_gt = cfg.TRAIN.USE_ALL_GT

    im = load_entry_image(entry)
    im, im_scale = prep_im_for_blob(im, pixel_means, target_size, max_size, pixel_stds, input_format)
    blob = im_list_to_blob([im])

    inds = gt_indices(entry, use_all_gt)
    gt_boxes = np.empty((len(inds), 5), dtype=np.float32)
    gt_boxes[:, 0:4] = entry['boxes'][inds, :] * im_scale
    gt_boxes[:, 4] = entry['gt_classes'][inds]
    return {'data': blob, 'gt_boxes': gt_boxes,
            'im_info': np.array([[blob.shape[1], blob.shape[2], im_scale]], dtype=np.float32),
            'img_id': entry.get('img_id')}
