"""RPN training targets: which anchors are object / background, and where the objects are.

Shorthand: B images, G gt rows per image (MAX_NUM_GT_BOXES, zero rows after num_boxes), A anchors per cell,
H W feature-map size, N = H*W*A anchors per image, ordered (h, w, a) as in generate_anchors.grid_anchors.
"""
import numpy as np
import torch
from torch import nn

from lib.model.utils.config import cfg
from .bbox_transform import bbox_overlaps_batch, bbox_transform_batch
from .generate_anchors import generate_anchors, grid_anchors
from .sampling import subsample_labels


class _AnchorTargetLayer(nn.Module):
    """Assign anchors to gt boxes: labels (1 object, 0 background, -1 ignored), regression targets and the
    loss weights. Runs without gradients; the cfg values are read here, at construction."""

    def __init__(self, feat_stride, scales, ratios, *,
                 positive_overlap=None, negative_overlap=None, clobber_positives=None,
                 batch_size=None, fg_fraction=None, inside_weight=None, positive_weight=None,
                 allowed_border=0):
        super().__init__()
        T = cfg.TRAIN
        self._feat_stride = feat_stride
        anchors = torch.from_numpy(generate_anchors(scales=np.array(scales), ratios=np.array(ratios))).float()
        self.register_buffer('_anchors', anchors, persistent=False)
        self._num_anchors = anchors.size(0)
        self.positive_overlap = T.RPN_POSITIVE_OVERLAP if positive_overlap is None else positive_overlap
        self.negative_overlap = T.RPN_NEGATIVE_OVERLAP if negative_overlap is None else negative_overlap
        self.clobber_positives = T.RPN_CLOBBER_POSITIVES if clobber_positives is None else clobber_positives
        self.batch_size = T.RPN_BATCHSIZE if batch_size is None else batch_size
        self.fg_fraction = T.RPN_FG_FRACTION if fg_fraction is None else fg_fraction
        # the original applied one value (the first of RPN_BBOX_INSIDE_WEIGHTS) to all four coordinates
        self.inside_weight = T.RPN_BBOX_INSIDE_WEIGHTS[0] if inside_weight is None else inside_weight
        self.positive_weight = T.RPN_POSITIVE_WEIGHT if positive_weight is None else positive_weight
        if not (self.positive_weight < 0 or 0 < self.positive_weight < 1):
            raise ValueError(f'RPN_POSITIVE_WEIGHT must be negative (uniform weighting) or in (0, 1), '
                             f'got {self.positive_weight}')
        self._allowed_border = allowed_border

    @torch.no_grad()
    def forward(self, rpn_cls_score, gt_boxes, im_info, num_boxes):
        """
        Args:
            rpn_cls_score: [B, 2A, H, W] (only its shape is used).
            gt_boxes: [B, G, 5] x1, y1, x2, y2, class.
            im_info: [B, 3] (height, width, scale) of each image.
            num_boxes: [B] number of valid gt rows.
        Returns:
            labels [B, 1, A*H, W] (1, 0 or -1), bbox_targets [B, 4A, H, W],
            bbox_inside_weights [B, 4A, H, W], bbox_outside_weights [B, 4A, H, W].
        """
        B = gt_boxes.size(0)
        H, W = rpn_cls_score.shape[2:]
        A = self._num_anchors
        G = gt_boxes.size(1)
        gt_boxes = gt_boxes.to(self._anchors.dtype)
        anchors = grid_anchors(self._anchors.to(gt_boxes.device), H, W, self._feat_stride)  # (N, 4)

        im_h = im_info[:, 0].to(anchors.dtype).view(B, 1)
        im_w = im_info[:, 1].to(anchors.dtype).view(B, 1)
        border = self._allowed_border
        inside = ((anchors[:, 0] >= -border) & (anchors[:, 1] >= -border)
                  & (anchors[:, 2] < im_w + border) & (anchors[:, 3] < im_h + border))  # (B, N)

        valid_gt = torch.arange(G, device=gt_boxes.device).view(1, G) < num_boxes.view(B, 1).to(gt_boxes.device)
        overlaps = bbox_overlaps_batch(anchors, gt_boxes)  # (B, N, G)
        overlaps = overlaps.masked_fill(~valid_gt[:, None, :], 0)
        # anchors outside the image take no part in the matching, as if they had been removed
        overlaps = overlaps.masked_fill(~inside[:, :, None], -1)

        max_overlaps, argmax_overlaps = overlaps.max(dim=2)  # (B, N)
        gt_max_overlaps = overlaps.max(dim=1, keepdim=True).values  # (B, 1, G)
        # every anchor equal to a gt's best overlap is positive (ties included, as the original); a gt that
        # touches no anchor has no best anchor
        is_best = (overlaps == gt_max_overlaps) & (gt_max_overlaps > 0) & valid_gt[:, None, :]
        is_best = is_best.any(dim=2)

        labels = torch.full_like(max_overlaps, -1)
        if not self.clobber_positives:
            labels = labels.masked_fill(max_overlaps < self.negative_overlap, 0)
        labels = labels.masked_fill(is_best, 1)
        labels = labels.masked_fill(max_overlaps >= self.positive_overlap, 1)
        if self.clobber_positives:
            labels = labels.masked_fill(max_overlaps < self.negative_overlap, 0)
        labels = labels.masked_fill(~inside, -1)

        labels = subsample_labels(labels, self.batch_size, self.fg_fraction)

        # (B, N) gt index -> (B, N, 5) matched gt rows
        matched = gt_boxes.gather(1, argmax_overlaps.unsqueeze(2).expand(B, -1, gt_boxes.size(2)))
        bbox_targets = bbox_transform_batch(anchors, matched[:, :, :4])
        bbox_targets = bbox_targets.masked_fill(~inside[:, :, None], 0)

        pos = (labels == 1).to(anchors.dtype)
        neg = (labels == 0).to(anchors.dtype)
        bbox_inside_weights = pos * self.inside_weight
        if self.positive_weight < 0:
            # uniform weighting, normalised per image by that image's number of labelled anchors
            num_examples = (pos + neg).sum(dim=1, keepdim=True).clamp(min=1)
            bbox_outside_weights = (pos + neg) / num_examples
        else:
            bbox_outside_weights = (pos * self.positive_weight / pos.sum(1, keepdim=True).clamp(min=1)
                                    + neg * (1 - self.positive_weight) / neg.sum(1, keepdim=True).clamp(min=1))

        # (B, H*W*A) -> (B, H, W, A) -> (B, A, H, W) -> (B, 1, A*H, W)
        labels = labels.view(B, H, W, A).permute(0, 3, 1, 2).reshape(B, 1, A * H, W)
        # (B, H*W*A, 4) -> (B, H, W, 4A) -> (B, 4A, H, W)
        bbox_targets = bbox_targets.view(B, H, W, 4 * A).permute(0, 3, 1, 2).contiguous()
        # (B, H*W*A) -> (B, H*W*A, 4) -> (B, 4A, H, W): one weight repeated for the 4 coordinates
        bbox_inside_weights = (bbox_inside_weights.unsqueeze(2).expand(B, -1, 4)
                               .reshape(B, H, W, 4 * A).permute(0, 3, 1, 2).contiguous())
        bbox_outside_weights = (bbox_outside_weights.unsqueeze(2).expand(B, -1, 4)
                                .reshape(B, H, W, 4 * A).permute(0, 3, 1, 2).contiguous())
        return labels, bbox_targets, bbox_inside_weights, bbox_outside_weights
