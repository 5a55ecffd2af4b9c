"""The Faster R-CNN detector: backbone -> RPN -> (training: roi sampling) -> roi pooling -> head -> class
scores and box deltas, with the four losses in training.

A subclass (resnet.py, vgg16.py) sets ``dout_base_model`` and ``freeze_stem`` (its first layers stay fixed: True
on pretrained weights; checkpoints record it) before calling ``_fasterRCNN.__init__`` and provides
``_init_modules`` (RCNN_base, RCNN_top, RCNN_cls_score, RCNN_bbox_pred) and ``_head_to_tail``.

Shorthand: B images, G gt rows, R rois per image, C classes (background included), S = POOLING_SIZE.
"""
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from lib.model.roi_layers import ROIAlign, ROIPool
from lib.model.rpn.proposal_target_layer_cascade import _ProposalTargetLayer
from lib.model.rpn.rpn import _RPN
from lib.model.utils.config import cfg
from lib.model.utils.net_utils import _crop_pool_layer, _smooth_l1_loss, normal_init

POOLING_MODES = ('align', 'pool', 'crop')

FasterRCNNOutput = namedtuple('FasterRCNNOutput', [
    'rois', 'cls_prob', 'bbox_pred', 'rpn_loss_cls', 'rpn_loss_bbox', 'RCNN_loss_cls', 'RCNN_loss_bbox',
    'rois_label'])
FasterRCNNOutput.__doc__ = """The 8 values of the original's forward, in its order.

rois [B, R, 5]; cls_prob [B, R, C]; bbox_pred [B, R, 4C] ([B, R, 4] when class-agnostic, and in training
where only the deltas of each roi's own class are kept); four 0-dim losses (zeros in eval mode);
rois_label [B*R] long in training, None in eval mode."""


class _fasterRCNN(nn.Module):
    """Faster R-CNN; the pooling mode, pooling size and anchors are read from cfg at construction."""

    def __init__(self, classes, class_agnostic):
        super().__init__()
        self.classes = classes
        self.n_classes = len(classes)
        self.class_agnostic = class_agnostic

        mode = cfg.POOLING_MODE
        if mode not in POOLING_MODES:
            raise ValueError(f"unknown POOLING_MODE {mode!r}; expected 'align', 'pool' or 'crop'")
        self.pooling_mode = mode
        self.pooling_size = int(cfg.POOLING_SIZE)
        self.spatial_scale = 1.0 / cfg.FEAT_STRIDE[0]
        self.crop_max_pool = bool(cfg.CROP_RESIZE_WITH_MAX_POOL)
        self.truncated_init = bool(cfg.TRAIN.TRUNCATED)
        # the input and the weights of the trunk and the RPN in NHWC layout (create_architecture): their
        # convolutions then skip the layout conversion of the input and most of the copies of their weights
        self.channels_last = bool(cfg.CHANNELS_LAST)

        self.RCNN_rpn = _RPN(self.dout_base_model)
        self.RCNN_proposal_target = _ProposalTargetLayer(self.n_classes)
        size = (self.pooling_size, self.pooling_size)
        self.RCNN_roi_pool = ROIPool(size, self.spatial_scale)
        self.RCNN_roi_align = ROIAlign(size, self.spatial_scale, 0)

    def _pool(self, base_feat, rois):
        """base_feat [B, C_feat, H, W], rois [B, R, 5] -> pooled [B*R, C_feat, S, S]."""
        if self.pooling_mode == 'align':
            return self.RCNN_roi_align(base_feat, rois.view(-1, 5))
        if self.pooling_mode == 'pool':
            return self.RCNN_roi_pool(base_feat, rois.view(-1, 5))
        return _crop_pool_layer(base_feat, rois, self.pooling_size, self.crop_max_pool, self.spatial_scale)

    def forward(self, im_data, im_info, gt_boxes=None, num_boxes=None):
        """
        Args:
            im_data: [B, 3, H, W] normalised images (see cfg.INPUT_FORMAT).
            im_info: [B, 3] (height, width, scale) of each image.
            gt_boxes: [B, G, 5] x1, y1, x2, y2, class (needed in training).
            num_boxes: [B] number of valid gt rows (needed in training).
        Returns:
            FasterRCNNOutput (see its docstring for the shapes).
        """
        B = im_data.size(0)
        if self.channels_last:
            im_data = im_data.contiguous(memory_format=torch.channels_last)
        base_feat = self.RCNN_base(im_data)
        rois, rpn_loss_cls, rpn_loss_bbox = self.RCNN_rpn(base_feat, im_info, gt_boxes, num_boxes)

        if self.training:
            rois, rois_label, rois_target, rois_inside_ws, rois_outside_ws = self.RCNN_proposal_target(
                rois, gt_boxes, num_boxes)
            rois_label = rois_label.view(-1).long()  # (B*R,)
            rois_target = rois_target.view(-1, 4)  # (B*R, 4)
            rois_inside_ws = rois_inside_ws.view(-1, 4)
            rois_outside_ws = rois_outside_ws.view(-1, 4)
        else:
            rois_label = None
        R = rois.size(1)

        pooled_feat = self._pool(base_feat, rois.detach())
        pooled_feat = self._head_to_tail(pooled_feat)  # (B*R, D)

        bbox_pred = self.RCNN_bbox_pred(pooled_feat)  # (B*R, 4C) or (B*R, 4)
        if self.training and not self.class_agnostic:
            # (B*R, 4C) -> (B*R, C, 4) -> the 4 deltas of each roi's own class (B*R, 4)
            bbox_pred_view = bbox_pred.view(bbox_pred.size(0), -1, 4)
            bbox_pred = bbox_pred_view.gather(1, rois_label.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1)

        cls_score = self.RCNN_cls_score(pooled_feat)  # (B*R, C)
        cls_prob = F.softmax(cls_score, 1)

        if self.training:
            RCNN_loss_cls = F.cross_entropy(cls_score, rois_label)
            RCNN_loss_bbox = _smooth_l1_loss(bbox_pred, rois_target, rois_inside_ws, rois_outside_ws)
        else:
            RCNN_loss_cls = cls_score.new_zeros(())
            RCNN_loss_bbox = cls_score.new_zeros(())

        cls_prob = cls_prob.view(B, R, -1)
        bbox_pred = bbox_pred.view(B, R, -1)
        return FasterRCNNOutput(rois, cls_prob, bbox_pred, rpn_loss_cls, rpn_loss_bbox,
                                RCNN_loss_cls, RCNN_loss_bbox, rois_label)

    def _init_weights(self):
        """N(0, 0.01) for the RPN convs and the classifier, N(0, 0.001) for the box predictor; zero biases."""
        t = self.truncated_init
        normal_init(self.RCNN_rpn.RPN_Conv, 0, 0.01, t)
        normal_init(self.RCNN_rpn.RPN_cls_score, 0, 0.01, t)
        normal_init(self.RCNN_rpn.RPN_bbox_pred, 0, 0.01, t)
        normal_init(self.RCNN_cls_score, 0, 0.01, t)
        normal_init(self.RCNN_bbox_pred, 0, 0.001, t)

    def create_architecture(self):
        """Build the backbone and the heads, then initialise the new layers."""
        self._init_modules()
        self._init_weights()
        if self.channels_last:
            # the 4-d weights only; the head (layer4 or the fc layers) sees pooled rois in the default layout
            self.RCNN_base.to(memory_format=torch.channels_last)
            self.RCNN_rpn.to(memory_format=torch.channels_last)
