"""Faster R-CNN on VGG16, as the original: conv1_1..conv5_3 (no last max-pool, stride 16) as the feature
extractor with conv1 and conv2 frozen (when pretrained), fc6 and fc7 as the per-roi head."""
import torchvision
from torch import nn

from lib.model.utils.config import cfg
from .faster_rcnn import _fasterRCNN
from .weights import check_weight_format, default_model_path, detect_weight_format, load_backbone, \
    load_state_dict_file


class vgg16(_fasterRCNN):
    """Faster R-CNN with a VGG16 backbone.

    Args:
        classes: class names, background first.
        pretrained: load ImageNet weights from ``model_path``.
        class_agnostic: one box regressor for all classes.
        model_path: weights file; default ``<DATA_DIR>/pretrained_model/vgg16_caffe.pth``.
        weight_format: 'caffe' or 'pytorch' to override the detection (see weights.py); it only changes the
            input normalisation (cfg.INPUT_FORMAT is set to it).
    """

    def __init__(self, classes, pretrained=False, class_agnostic=False, model_path=None, weight_format=None):
        self.model_path = model_path if model_path is not None else default_model_path('vgg16')
        self.pretrained = pretrained
        # conv1 + conv2 stay fixed on pretrained weights (the original's rule); from scratch they would stay random
        self.freeze_stem = bool(pretrained)
        self.weight_format = None if weight_format is None else check_weight_format(weight_format)
        self.dout_base_model = 512
        if cfg.POOLING_SIZE != 7:
            raise ValueError(f'vgg16 needs POOLING_SIZE 7 (fc6 takes 512x7x7 inputs), got {cfg.POOLING_SIZE}')
        _fasterRCNN.__init__(self, classes, class_agnostic)

    def _init_modules(self):
        fmt = self.weight_format
        state_dict = None
        if self.pretrained:
            state_dict = load_state_dict_file(self.model_path, 'vgg16')
            if fmt is None:
                fmt = detect_weight_format(state_dict, self.model_path)
        vgg = torchvision.models.vgg16(weights=None)
        if state_dict is not None:
            print(f'Loading pretrained weights from {self.model_path} ({fmt} format)')
            load_backbone(vgg, state_dict, self.model_path, ignore_prefixes=('classifier.6.',))
        if fmt is None:
            fmt = check_weight_format(cfg.INPUT_FORMAT)
        self.input_format = fmt
        cfg.INPUT_FORMAT = fmt

        # drop the ImageNet classifier (fc8) and the last max-pool
        vgg.classifier = nn.Sequential(*list(vgg.classifier.children())[:-1])
        self.RCNN_base = nn.Sequential(*list(vgg.features.children())[:-1])
        # the conv1 and conv2 blocks are the first 10 modules
        for layer in range(10 if self.freeze_stem else 0):
            for p in self.RCNN_base[layer].parameters():
                p.requires_grad = False
        self.RCNN_top = vgg.classifier
        self.RCNN_cls_score = nn.Linear(4096, self.n_classes)
        self.RCNN_bbox_pred = nn.Linear(4096, 4 if self.class_agnostic else 4 * self.n_classes)

    def _head_to_tail(self, pool5):
        """[K, 512, 7, 7] -> fc6, fc7 -> [K, 4096]."""
        return self.RCNN_top(pool5.flatten(1))
