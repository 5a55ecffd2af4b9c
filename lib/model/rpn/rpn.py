"""The region proposal network: a 3x3 conv over the backbone features, then per anchor an object/background
score pair and 4 box deltas; proposals always, anchor targets and losses in training.

Shorthand: B images, C_in backbone channels, A anchors per cell, H W feature-map size, P rois per image.
"""
import torch.nn.functional as F
from torch import nn

from lib.model.utils.config import cfg
from lib.model.utils.net_utils import _smooth_l1_loss
from .anchor_target_layer import _AnchorTargetLayer
from .proposal_layer import _ProposalLayer


class _RPN(nn.Module):
    """Region proposal network over a feature map of ``din`` channels (anchors from cfg at construction)."""

    def __init__(self, din):
        super().__init__()
        self.din = din
        self.anchor_scales = list(cfg.ANCHOR_SCALES)
        self.anchor_ratios = list(cfg.ANCHOR_RATIOS)
        self.feat_stride = cfg.FEAT_STRIDE[0]
        num_anchors = len(self.anchor_scales) * len(self.anchor_ratios)

        self.RPN_Conv = nn.Conv2d(self.din, 512, 3, 1, 1, bias=True)
        self.nc_score_out = num_anchors * 2  # bg/fg per anchor
        self.RPN_cls_score = nn.Conv2d(512, self.nc_score_out, 1, 1, 0)
        self.nc_bbox_out = num_anchors * 4
        self.RPN_bbox_pred = nn.Conv2d(512, self.nc_bbox_out, 1, 1, 0)

        self.RPN_proposal = _ProposalLayer(self.feat_stride, self.anchor_scales, self.anchor_ratios)
        self.RPN_anchor_target = _AnchorTargetLayer(self.feat_stride, self.anchor_scales, self.anchor_ratios)

    @staticmethod
    def reshape(x, d):
        """[B, C, H, W] -> [B, d, C*H/d, W]; with d = 2 the channel pairs (a, A+a) become the two rows of dim 1,
        so a softmax over dim 1 compares background a with object a."""
        b, c, h, w = x.shape
        return x.reshape(b, int(d), int(c * h / d), w)

    def forward(self, base_feat, im_info, gt_boxes=None, num_boxes=None):
        """
        Args:
            base_feat: [B, C_in, H, W] backbone features.
            im_info: [B, 3] (height, width, scale).
            gt_boxes: [B, G, 5], needed in training.
            num_boxes: [B], needed in training.
        Returns:
            rois [B, P, 5], rpn_loss_cls (0-dim), rpn_loss_box (0-dim); the losses are zeros in eval mode.
        """
        rpn_conv1 = F.relu(self.RPN_Conv(base_feat), inplace=True)
        rpn_cls_score = self.RPN_cls_score(rpn_conv1)  # (B, 2A, H, W)

        rpn_cls_score_reshape = self.reshape(rpn_cls_score, 2)  # (B, 2, A*H, W)
        rpn_cls_prob_reshape = F.softmax(rpn_cls_score_reshape, 1)
        rpn_cls_prob = self.reshape(rpn_cls_prob_reshape, self.nc_score_out)  # (B, 2A, H, W)
        rpn_bbox_pred = self.RPN_bbox_pred(rpn_conv1)  # (B, 4A, H, W)

        rois = self.RPN_proposal(rpn_cls_prob.detach(), rpn_bbox_pred.detach(), im_info)

        if not self.training:
            zero = base_feat.new_zeros(())
            return rois, zero, zero.clone()

        if gt_boxes is None or num_boxes is None:
            raise ValueError('_RPN in training mode needs gt_boxes and num_boxes')
        labels, bbox_targets, inside_w, outside_w = self.RPN_anchor_target(
            rpn_cls_score.detach(), gt_boxes, im_info, num_boxes)

        # (B, 2, A*H, W) -> (B, A*H, W, 2) -> (B*A*H*W, 2), the order of labels.view(-1)
        score = rpn_cls_score_reshape.permute(0, 2, 3, 1).reshape(-1, 2)
        label = labels.view(-1).long()
        # the mean over labelled anchors (label != -1), as cross_entropy on the selected rows; the count is
        # clamped so that an image without labelled anchors gives 0 instead of NaN, and kept an integer (in the
        # bfloat16 of autocast's scores, 8 x 256 anchors would round)
        num_labelled = (label != -1).sum().clamp(min=1)
        rpn_loss_cls = F.cross_entropy(score, label, ignore_index=-1, reduction='sum') / num_labelled

        rpn_loss_box = _smooth_l1_loss(rpn_bbox_pred, bbox_targets, inside_w, outside_w, sigma=3, dim=[1, 2, 3])
        return rois, rpn_loss_cls, rpn_loss_box
