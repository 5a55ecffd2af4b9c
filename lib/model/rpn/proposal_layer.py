"""RPN proposals: decode the predicted deltas on every anchor, clip, drop tiny boxes, keep the best by
score, apply NMS and return a fixed number of rois per image.

Shorthand: B images, A anchors per cell, H W feature-map size, N = H*W*A anchors per image ordered (h, w, a),
P = the post-NMS number of rois (TRAIN or TEST RPN_POST_NMS_TOP_N).
"""
import numpy as np
import torch
from torch import nn

from lib.model.roi_layers import nms_padded
from lib.model.utils.config import cfg
from .bbox_transform import bbox_transform_inv, clip_boxes
from .generate_anchors import generate_anchors, grid_anchors


class _ProposalLayer(nn.Module):
    """Turn RPN outputs into rois. The TRAIN and TEST numbers are both read at construction; ``self.training``
    picks one set."""

    def __init__(self, feat_stride, scales, ratios):
        super().__init__()
        self._feat_stride = feat_stride
        anchors = torch.from_numpy(generate_anchors(scales=np.array(scales), ratios=np.array(ratios))).float()
        self.register_buffer('_anchors', anchors, persistent=False)
        self._num_anchors = anchors.size(0)
        self._settings = {}
        for key in ('TRAIN', 'TEST'):
            c = cfg[key]
            self._settings[key] = dict(pre_nms_top_n=int(c.RPN_PRE_NMS_TOP_N),
                                       post_nms_top_n=int(c.RPN_POST_NMS_TOP_N),
                                       nms_thresh=float(c.RPN_NMS_THRESH),
                                       min_size=float(c.RPN_MIN_SIZE))

    @torch.no_grad()
    def forward(self, rpn_cls_prob, rpn_bbox_pred, im_info):
        """
        Args:
            rpn_cls_prob: [B, 2A, H, W] softmax output; channels A..2A-1 are the object probabilities.
            rpn_bbox_pred: [B, 4A, H, W] deltas, 4 channels per anchor.
            im_info: [B, 3] (height, width, scale) of each image.
        Returns:
            rois [B, P, 5]: (batch index, x1, y1, x2, y2), sorted by decreasing score; rows after the kept
            proposals are zero except for the batch index.
        """
        s = self._settings['TRAIN' if self.training else 'TEST']
        A = self._num_anchors
        B, _, H, W = rpn_bbox_pred.shape
        # box arithmetic in float32 even under autocast: half precision cannot hold pixel coordinates exactly
        dtype = torch.promote_types(rpn_bbox_pred.dtype, torch.float32)
        rpn_bbox_pred = rpn_bbox_pred.to(dtype)
        rpn_cls_prob = rpn_cls_prob.to(dtype)
        anchors = grid_anchors(self._anchors.to(device=rpn_bbox_pred.device, dtype=dtype), H, W,
                               self._feat_stride)  # (N, 4)

        # (B, A, H, W) -> (B, H, W, A) -> (B, N), the anchor order
        scores = rpn_cls_prob[:, A:].permute(0, 2, 3, 1).reshape(B, -1)
        # (B, 4A, H, W) -> (B, H, W, 4A) -> (B, N, 4)
        deltas = rpn_bbox_pred.permute(0, 2, 3, 1).reshape(B, -1, 4)

        proposals = bbox_transform_inv(anchors.unsqueeze(0), deltas)
        proposals = clip_boxes(proposals, im_info)

        # boxes smaller than min_size at the original image scale lose to every real box: score -1 puts them
        # last, and they are dropped after NMS
        min_size = (s['min_size'] * im_info[:, 2].to(dtype)).view(B, 1)
        ws = proposals[:, :, 2] - proposals[:, :, 0] + 1
        hs = proposals[:, :, 3] - proposals[:, :, 1] + 1
        big_enough = (ws >= min_size) & (hs >= min_size)
        scores = torch.where(big_enough, scores, torch.full_like(scores, -1))

        n = scores.size(1)
        pre = s['pre_nms_top_n'] if 0 < s['pre_nms_top_n'] < n else n
        top_scores, order = scores.topk(pre, dim=1, sorted=True)  # (B, pre)
        top_boxes = proposals.gather(1, order.unsqueeze(2).expand(B, pre, 4))  # (B, pre, 4)

        post = s['post_nms_top_n']
        output = proposals.new_zeros(B, post, 5)
        output[:, :, 0] = torch.arange(B, device=output.device, dtype=dtype).unsqueeze(1)
        for i in range(B):
            # a loop over images only: NMS runs per image. nms_padded returns a fixed-size index list padded
            # with -1, so nothing here waits for the device
            keep, _ = nms_padded(top_boxes[i], top_scores[i], s['nms_thresh'], post)
            idx = keep.clamp(min=0)
            # padding slots and the too-small boxes (score -1, always last) become zero rows
            valid = ((keep >= 0) & (top_scores[i, idx] >= 0)).to(dtype).unsqueeze(1)
            output[i, :, 1:] = top_boxes[i, idx] * valid
        return output
