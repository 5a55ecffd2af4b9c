"""The training/test Dataset: one image -> (im_data, im_info, gt_boxes, num_boxes), batchable within a block.

Shorthand: G = cfg.MAX_NUM_GT_BOXES, H W = blob height and width.

Training (the original's algorithm): positions are indices into the aspect-ratio-sorted order (ratio_index);
each block of batch_size consecutive positions shares a target ratio r (the block's smallest ratio when all are
< 1, its largest when all are > 1, else 1). An image is scaled so its short side is the block's scale, cropped
along its long side when its own ratio lies outside [0.5, 2] (keeping the gt boxes' span when it can), then
padded with zeros (the mean colour after normalisation) to the block's shape (H = ceil(W / r) when r < 1,
W = ceil(H * r) when r > 1, or cropped to the top-left square when r = 1). gt boxes are shuffled, shifted and
clamped into the blob, boxes reduced to zero width or height are dropped, and the rest padded to G rows.
The block's scale is one of TRAIN.SCALES, lowered when needed so that the padded long side stays
<= TRAIN.MAX_SIZE, so all images of a block have the same blob shape and the default collate stacks them.

Test (training=False): index = roidb index; TEST.SCALES[0] with TEST.MAX_SIZE, no crop or pad; gt_boxes are
still returned (scaled, padded to G).
"""
import math
import os

import cv2
import numpy as np
import torch
import torch.utils.data as data

from lib.model.utils.config import cfg
from lib.roi_data_layer.minibatch import get_minibatch

_cv2_checked_pid = None


def _single_threaded_cv2_in_workers():
    # OpenCV's own thread pool in every DataLoader worker oversubscribes the cores. Checked once per process (a
    # forked worker inherits the parent's module state, hence the pid).
    global _cv2_checked_pid
    if _cv2_checked_pid != os.getpid():
        if data.get_worker_info() is not None:
            cv2.setNumThreads(0)
        _cv2_checked_pid = os.getpid()


def block_target_ratios(ratio_list, batch_size):
    """(N,) target ratio of each position: shared by every block of batch_size consecutive positions."""
    n = len(ratio_list)
    out = np.zeros(n, dtype=np.float64)
    for left in range(0, n, batch_size):
        right = min(left + batch_size, n) - 1
        if ratio_list[right] < 1:
            target = ratio_list[left]
        elif ratio_list[left] > 1:
            target = ratio_list[right]
        else:
            target = 1.0
        out[left:right + 1] = target
    return out


def _crop_start(rng, lo_box, hi_box, length, trim):
    """Start of a window of size ``trim`` in [0, length) that keeps the boxes' span [lo_box, hi_box] when it fits
    (else starts inside it, as the original), chosen at random."""
    if lo_box is None:
        return int(rng.randint(0, length - trim + 1))
    if lo_box == 0:
        return 0
    region = hi_box - lo_box + 1
    if region < trim:
        s_min = max(hi_box - trim + 1, 0)
        s_max = min(lo_box, length - trim)
    else:
        s_min = lo_box
        s_max = min(lo_box + (region - trim) // 2, length - trim)
    if s_max <= s_min:
        return max(0, min(s_min, length - trim))
    return int(rng.randint(s_min, s_max + 1))


class roibatchLoader(data.Dataset):
    """Dataset over a prepared roidb.

    Args:
        roidb: prepared entries (combined_roidb).
        ratio_list, ratio_index: from rank_roidb_ratio (sorted ratios and their roidb indices).
        batch_size: images per batch; must equal the DataLoader's batch_size and the sampler's block size.
        num_classes: number of classes including background (kept for the original's signature).
        training: training behaviour (crop/pad/shuffle) or test behaviour (see the module docstring).
        normalize: optional callable applied to the final (3, H, W) tensor (the cfg.INPUT_FORMAT normalisation is
            already applied).
    __getitem__(index) returns:
        im_data (3, H, W) float32, im_info (3,) float32 (H, W, im_scale), gt_boxes (G, 5) float32
        (x1, y1, x2, y2, class; zero rows after num_boxes), num_boxes () int64.
    """

    def __init__(self, roidb, ratio_list, ratio_index, batch_size, num_classes, training=True, normalize=None):
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        if len(ratio_list) != len(roidb) or len(ratio_index) != len(roidb):
            raise ValueError(f'ratio_list ({len(ratio_list)}) and ratio_index ({len(ratio_index)}) must have one '
                             f'entry per roidb image ({len(roidb)})')
        self._roidb = roidb
        self._num_classes = num_classes
        self.training = training
        self.normalize = normalize
        self.ratio_list = np.asarray(ratio_list, dtype=np.float64)
        self.ratio_index = np.asarray(ratio_index, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.data_size = len(self.ratio_list)
        self.ratio_list_batch = block_target_ratios(self.ratio_list, self.batch_size)

        self.max_num_box = int(cfg.MAX_NUM_GT_BOXES)
        self.train_scales = tuple(int(s) for s in cfg.TRAIN.SCALES)
        self.train_max_size = int(cfg.TRAIN.MAX_SIZE)
        self.test_scale = int(cfg.TEST.SCALES[0])
        self.test_max_size = int(cfg.TEST.MAX_SIZE)
        self.input_format = cfg.INPUT_FORMAT
        if self.input_format == 'caffe':
            self.pixel_means, self.pixel_stds = np.array(cfg.PIXEL_MEANS, dtype=np.float32), None
        elif self.input_format == 'pytorch':
            self.pixel_means = np.array(cfg.PYTORCH_PIXEL_MEANS, dtype=np.float32)
            self.pixel_stds = np.array(cfg.PYTORCH_PIXEL_STDS, dtype=np.float32)
        else:
            raise ValueError(f"unknown INPUT_FORMAT {self.input_format!r}; expected 'caffe' or 'pytorch'")
        self.use_all_gt = bool(cfg.TRAIN.USE_ALL_GT)
        self.seed = int(cfg.RNG_SEED)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Only matters with several TRAIN.SCALES and batch_size > 1: the scale of each block is drawn from
        (RNG_SEED, epoch, block) so that all its images agree; calling this each epoch varies it."""
        self.epoch = int(epoch)

    def __len__(self):
        return len(self._roidb)

    def _block_scale(self, index):
        """Short side for the block of ``index``: a TRAIN.SCALES entry, capped so the padded blob fits MAX_SIZE."""
        block = index // self.batch_size
        if len(self.train_scales) == 1:
            scale = self.train_scales[0]
        elif self.batch_size == 1:
            scale = self.train_scales[np.random.randint(len(self.train_scales))]
        else:
            rng = np.random.default_rng([self.seed, self.epoch, block])
            scale = self.train_scales[int(rng.integers(len(self.train_scales)))]
        ratio = self.ratio_list_batch[index]
        if ratio < 1:
            cap = math.floor(self.train_max_size * ratio + 1e-6)
        elif ratio > 1:
            cap = math.floor(self.train_max_size / ratio + 1e-6)
        else:
            cap = self.train_max_size
        return max(1, min(scale, cap))

    def __getitem__(self, index):
        _single_threaded_cv2_in_workers()
        if self.training:
            roidb_index = int(self.ratio_index[index])
            target_size, max_size = self._block_scale(index), float('inf')
        else:
            roidb_index = int(index)
            target_size, max_size = self.test_scale, self.test_max_size
        entry = self._roidb[roidb_index]
        blobs = get_minibatch([entry], self._num_classes, target_size, max_size, self.input_format,
                              self.pixel_means, self.pixel_stds, self.use_all_gt)
        im = blobs['data'][0]
        im_info = blobs['im_info'][0].copy()
        gt_boxes = blobs['gt_boxes']

        if self.training:
            np.random.shuffle(gt_boxes)
            im, gt_boxes, im_info = self._crop_and_pad(im, gt_boxes, im_info, entry, self.ratio_list_batch[index])
        # A box ending on the last pixel scales to (W - 1) * s, which can pass the last pixel of the resized image
        # (round(W * s) - 1) by up to half a pixel.
        gt_boxes[:, [0, 2]] = np.clip(gt_boxes[:, [0, 2]], 0, im.shape[1] - 1)
        gt_boxes[:, [1, 3]] = np.clip(gt_boxes[:, [1, 3]], 0, im.shape[0] - 1)
        if self.training:
            keep = (gt_boxes[:, 0] != gt_boxes[:, 2]) & (gt_boxes[:, 1] != gt_boxes[:, 3])
            gt_boxes = gt_boxes[keep]

        num_boxes = min(gt_boxes.shape[0], self.max_num_box)
        gt_padded = np.zeros((self.max_num_box, 5), dtype=np.float32)
        gt_padded[:num_boxes] = gt_boxes[:num_boxes]

        im_data = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))
        if self.normalize is not None:
            im_data = self.normalize(im_data)
        return (im_data, torch.from_numpy(im_info), torch.from_numpy(gt_padded),
                torch.tensor(num_boxes, dtype=torch.int64))

    def _crop_and_pad(self, im, gt_boxes, im_info, entry, ratio):
        """Crop an over-long image to the block ratio, then pad/crop to the block shape (module docstring)."""
        h, w = im.shape[:2]
        has_boxes = gt_boxes.shape[0] > 0
        if entry.get('need_crop', 0):
            if ratio < 1:
                trim = min(int(math.floor(w / ratio + 1e-6)), h)
                lo = int(gt_boxes[:, 1].min()) if has_boxes else None
                hi = int(gt_boxes[:, 3].max()) if has_boxes else None
                ys = _crop_start(np.random, lo, hi, h, trim)
                im = im[ys:ys + trim]
                gt_boxes[:, [1, 3]] = np.clip(gt_boxes[:, [1, 3]] - ys, 0, trim - 1)
            else:
                trim = min(int(math.ceil(h * ratio - 1e-6)), w)
                lo = int(gt_boxes[:, 0].min()) if has_boxes else None
                hi = int(gt_boxes[:, 2].max()) if has_boxes else None
                xs = _crop_start(np.random, lo, hi, w, trim)
                im = im[:, xs:xs + trim]
                gt_boxes[:, [0, 2]] = np.clip(gt_boxes[:, [0, 2]] - xs, 0, trim - 1)
            h, w = im.shape[:2]

        if ratio < 1:
            out_h = int(math.ceil(w / ratio - 1e-6))
            if h > out_h:
                # Rounding of the resize can leave a row or two more than the block shape holds.
                im = im[:out_h]
                gt_boxes[:, [1, 3]] = np.clip(gt_boxes[:, [1, 3]], 0, out_h - 1)
            padded = np.zeros((out_h, w, 3), dtype=np.float32)
            padded[:im.shape[0]] = im
        elif ratio > 1:
            out_w = int(math.ceil(h * ratio - 1e-6))
            if w > out_w:
                im = im[:, :out_w]
                gt_boxes[:, [0, 2]] = np.clip(gt_boxes[:, [0, 2]], 0, out_w - 1)
            padded = np.zeros((h, out_w, 3), dtype=np.float32)
            padded[:, :im.shape[1]] = im
        else:
            trim = min(h, w)
            padded = np.ascontiguousarray(im[:trim, :trim])
            # The original clamped to trim (one past the last pixel); boxes must stay inside the blob.
            gt_boxes[:, :4] = np.clip(gt_boxes[:, :4], 0, trim - 1)
        im_info[0], im_info[1] = padded.shape[0], padded.shape[1]
        return padded, gt_boxes, im_info
