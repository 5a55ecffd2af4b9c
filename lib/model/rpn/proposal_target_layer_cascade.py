"""RCNN training targets: sample foreground / background rois per image and give each its class and its
normalised regression target.

Shorthand: B images, N proposals per image, G gt rows per image (zero rows after num_boxes),
R = TRAIN.BATCH_SIZE sampled rois per image.
"""
import torch
from torch import nn

from lib.model.utils.config import cfg
from .bbox_transform import bbox_overlaps_batch, bbox_transform_batch
from .sampling import choose


class _ProposalTargetLayer(nn.Module):
    """Assign proposals to gt boxes and sample R rois per image. Runs without gradients; the cfg values are
    read here, at construction."""

    def __init__(self, nclasses, *, batch_size=None, fg_fraction=None, fg_thresh=None,
                 bg_thresh_hi=None, bg_thresh_lo=None, normalize_targets=None,
                 normalize_means=None, normalize_stds=None, inside_weights=None):
        super().__init__()
        T = cfg.TRAIN
        self._num_classes = nclasses
        # BATCH_SIZE rois for every image (the original divided by num_images = 1)
        self.rois_per_image = int(T.BATCH_SIZE if batch_size is None else batch_size)
        fg_fraction = T.FG_FRACTION if fg_fraction is None else fg_fraction
        self.fg_rois_per_image = max(1, int(round(fg_fraction * self.rois_per_image)))
        self.fg_thresh = T.FG_THRESH if fg_thresh is None else fg_thresh
        self.bg_thresh_hi = T.BG_THRESH_HI if bg_thresh_hi is None else bg_thresh_hi
        self.bg_thresh_lo = T.BG_THRESH_LO if bg_thresh_lo is None else bg_thresh_lo
        self.normalize_targets = (T.BBOX_NORMALIZE_TARGETS_PRECOMPUTED if normalize_targets is None
                                  else normalize_targets)
        means = T.BBOX_NORMALIZE_MEANS if normalize_means is None else normalize_means
        stds = T.BBOX_NORMALIZE_STDS if normalize_stds is None else normalize_stds
        inside = T.BBOX_INSIDE_WEIGHTS if inside_weights is None else inside_weights
        self.register_buffer('BBOX_NORMALIZE_MEANS', torch.tensor(means, dtype=torch.float32), persistent=False)
        self.register_buffer('BBOX_NORMALIZE_STDS', torch.tensor(stds, dtype=torch.float32), persistent=False)
        self.register_buffer('BBOX_INSIDE_WEIGHTS', torch.tensor(inside, dtype=torch.float32), persistent=False)

    @torch.no_grad()
    def forward(self, all_rois, gt_boxes, num_boxes):
        """
        Args:
            all_rois: [B, N, 5] proposals (batch index, x1, y1, x2, y2); zero rows are padding.
            gt_boxes: [B, G, 5] x1, y1, x2, y2, class.
            num_boxes: [B] number of valid gt rows.
        Returns:
            rois [B, R, 5] (batch index set), labels [B, R] (0 = background), bbox_targets [B, R, 4],
            bbox_inside_weights [B, R, 4], bbox_outside_weights [B, R, 4].
        """
        B, G = gt_boxes.size(0), gt_boxes.size(1)
        R, dev = self.rois_per_image, gt_boxes.device
        gt_boxes = gt_boxes.to(all_rois.dtype)
        valid_gt = torch.arange(G, device=dev).view(1, G) < num_boxes.view(B, 1).to(dev)

        # the gt boxes are candidates too (B, G, 5); invalid rows become zero rows, which never get sampled
        gt_rois = torch.cat((torch.zeros_like(gt_boxes[:, :, :1]), gt_boxes[:, :, :4]), dim=2)
        gt_rois = gt_rois * valid_gt.unsqueeze(2).to(gt_rois.dtype)
        all_rois = torch.cat((all_rois, gt_rois), dim=1)  # (B, N+G, 5)

        overlaps = bbox_overlaps_batch(all_rois, gt_boxes)  # (B, N+G, G)
        overlaps = overlaps.masked_fill(~valid_gt[:, None, :], 0)
        max_overlaps, gt_assignment = overlaps.max(dim=2)  # (B, N+G)
        # one-pixel rois (the zero padding rows) get -1, as in bbox_overlaps_batch: neither fg nor bg
        roi_zero = ((all_rois[:, :, 3] - all_rois[:, :, 1] + 1 == 1)
                    & (all_rois[:, :, 4] - all_rois[:, :, 2] + 1 == 1))
        max_overlaps = max_overlaps.masked_fill(roi_zero, -1)

        fg_mask = max_overlaps >= self.fg_thresh
        bg_mask = (max_overlaps < self.bg_thresh_hi) & (max_overlaps >= self.bg_thresh_lo)
        fg_count = fg_mask.sum(dim=1)
        bg_count = bg_mask.sum(dim=1)
        # an image with neither fg nor bg candidates (no gt and BG_THRESH_LO > 0) falls back to any real roi
        # as background, where the original raised
        neither = (fg_count == 0) & (bg_count == 0)
        bg_mask = bg_mask | (neither.unsqueeze(1) & (max_overlaps >= 0))
        bg_count = bg_mask.sum(dim=1)

        # fg slots per image: up to fg_rois_per_image, or all R when there is no background
        fg_this = torch.minimum(fg_count, torch.full_like(fg_count, self.fg_rois_per_image))
        fg_this = torch.where(bg_count == 0, torch.where(fg_count > 0, torch.full_like(fg_count, R), fg_count),
                              fg_this)

        fg_idx, _ = choose(fg_mask, R)
        bg_idx, _ = choose(bg_mask, R)
        slot = torch.arange(R, device=dev).unsqueeze(0)  # (1, R)
        is_fg = slot < fg_this.unsqueeze(1)  # (B, R)
        bg_slot = (slot - fg_this.unsqueeze(1)).clamp(min=0)
        keep = torch.where(is_fg, fg_idx, bg_idx.gather(1, bg_slot))  # (B, R) indices into N+G

        rois = all_rois.gather(1, keep.unsqueeze(2).expand(B, R, 5)).clone()
        rois[:, :, 0] = torch.arange(B, device=dev, dtype=rois.dtype).unsqueeze(1)

        assigned = gt_assignment.gather(1, keep)  # (B, R)
        matched = gt_boxes.gather(1, assigned.unsqueeze(2).expand(B, R, gt_boxes.size(2)))
        labels = torch.where(is_fg, matched[:, :, 4], torch.zeros_like(matched[:, :, 4]))

        targets = bbox_transform_batch(rois[:, :, 1:5], matched[:, :, :4])
        if self.normalize_targets:
            targets = (targets - self.BBOX_NORMALIZE_MEANS.to(targets)) / self.BBOX_NORMALIZE_STDS.to(targets)
        fg = (labels > 0).unsqueeze(2).to(targets.dtype)
        bbox_targets = targets * fg
        bbox_inside_weights = fg * self.BBOX_INSIDE_WEIGHTS.to(targets)
        bbox_outside_weights = (bbox_inside_weights > 0).to(targets.dtype)
        return rois, labels, bbox_targets, bbox_inside_weights, bbox_outside_weights
