"""Faster R-CNN on a ResNet-18/34/50/101/152 backbone, split as the original: conv1..layer3 is the feature
extractor (stride 16), layer4 is the per-roi head, followed by a spatial mean and the two predictors.

The residual network is written here (torchvision's key names, so both weight formats load into it) because
the two weight formats need slightly different layouts: caffe weights were trained with the stride of a
bottleneck in its first 1x1 conv and a max-pool with ceil_mode, torchvision's with the stride in the 3x3 conv
and a padded max-pool. The layout follows the weight format (cfg.INPUT_FORMAT when nothing is loaded).
"""
import math

from torch import nn

from lib.model.utils.config import cfg
from .batch_norm import BatchNorm2d
from .faster_rcnn import _fasterRCNN
from .small_map_conv import use_small_map_convs
from .weights import check_weight_format, default_model_path, detect_weight_format, load_backbone, \
    load_state_dict_file

RESNET_LAYERS = {18: ('basic', [2, 2, 2, 2]), 34: ('basic', [3, 4, 6, 3]), 50: ('bottleneck', [3, 4, 6, 3]),
                 101: ('bottleneck', [3, 4, 23, 3]), 152: ('bottleneck', [3, 8, 36, 3])}


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, stride_in_1x1=True):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 (ResNet-50/101/152). ``stride_in_1x1``: the caffe layout (stride on conv1), else
    torchvision's (stride on conv2)."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, stride_in_1x1=True):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=s1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=s3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """An ImageNet ResNet with torchvision's module names. ``caffe``: the caffe layout (see module docstring)."""

    def __init__(self, block, layers, num_classes=1000, caffe=True):
        super().__init__()
        self.inplanes = 64
        self._stride_in_1x1 = caffe
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        if caffe:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        else:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2. / n))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self._stride_in_1x1)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, stride_in_1x1=self._stride_in_1x1) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def build_resnet(num_layers, caffe=True):
    """A randomly initialised ResNet of the given depth (18, 34, 50, 101 or 152)."""
    if num_layers not in RESNET_LAYERS:
        raise ValueError(f'unsupported ResNet depth {num_layers}; expected one of {sorted(RESNET_LAYERS)}')
    kind, layers = RESNET_LAYERS[num_layers]
    return ResNet(BasicBlock if kind == 'basic' else Bottleneck, layers, caffe=caffe)


def _is_bn(m):
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


class resnet(_fasterRCNN):
    """Faster R-CNN with a ResNet backbone.

    Args:
        classes: class names, background first.
        num_layers: 18, 34, 50, 101 or 152.
        pretrained: load ImageNet weights from ``model_path``.
        class_agnostic: one box regressor for all classes.
        model_path: weights file; default ``<DATA_DIR>/pretrained_model/resnet<num_layers>_caffe.pth``.
        weight_format: 'caffe' or 'pytorch' to override the detection (see weights.py).
    cfg read here: RESNET.FIXED_BLOCKS, TRAIN.BN_TRAIN, INPUT_FORMAT (and written: INPUT_FORMAT is set to the
    format in use), plus what _fasterRCNN reads.
    """

    def __init__(self, classes, num_layers=101, pretrained=False, class_agnostic=False, model_path=None,
                 weight_format=None):
        if num_layers not in RESNET_LAYERS:
            raise ValueError(f'unsupported ResNet depth {num_layers}; expected one of {sorted(RESNET_LAYERS)}')
        self.num_layers = num_layers
        self.model_path = model_path if model_path is not None else default_model_path(f'resnet{num_layers}')
        self.pretrained = pretrained
        self.weight_format = None if weight_format is None else check_weight_format(weight_format)
        basic = RESNET_LAYERS[num_layers][0] == 'basic'
        self.dout_base_model = 256 if basic else 1024
        self.dout_top_model = 512 if basic else 2048
        self.fixed_blocks = cfg.RESNET.FIXED_BLOCKS
        if not 0 <= self.fixed_blocks <= 3:
            raise ValueError(f'RESNET.FIXED_BLOCKS must be 0..3, got {self.fixed_blocks}')
        self.bn_train = bool(cfg.TRAIN.BN_TRAIN)
        # conv1 + bn1 stay fixed on pretrained weights (the original's rule); from scratch they would stay random
        self.freeze_stem = bool(pretrained)
        _fasterRCNN.__init__(self, classes, class_agnostic)

    def _init_modules(self):
        state_dict = None
        fmt = self.weight_format
        if self.pretrained:
            state_dict = load_state_dict_file(self.model_path, f'resnet{self.num_layers}')
            if fmt is None:
                fmt = detect_weight_format(state_dict, self.model_path)
        if fmt is None:
            fmt = check_weight_format(cfg.INPUT_FORMAT)
        self.input_format = fmt
        # the data loader normalises images by cfg.INPUT_FORMAT: keep it in step with the weights
        cfg.INPUT_FORMAT = fmt

        net = build_resnet(self.num_layers, caffe=(fmt == 'caffe'))
        if state_dict is not None:
            print(f'Loading pretrained weights from {self.model_path} ({fmt} format)')
            load_backbone(net, state_dict, self.model_path, ignore_prefixes=('fc.',))

        self.RCNN_base = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                                       net.layer3)
        # layer4 runs on pooled rois (2x2 to 7x7 maps): a faster CPU convolution for those (small_map_conv.py)
        self.RCNN_top = use_small_map_convs(nn.Sequential(net.layer4))
        self.RCNN_cls_score = nn.Linear(self.dout_top_model, self.n_classes)
        self.RCNN_bbox_pred = nn.Linear(self.dout_top_model, 4 if self.class_agnostic else 4 * self.n_classes)

        for m in self._frozen_modules():
            for p in m.parameters():
                p.requires_grad = False
        if not self.bn_train:
            for m in list(self.RCNN_base.modules()) + list(self.RCNN_top.modules()):
                if _is_bn(m):
                    for p in m.parameters():
                        p.requires_grad = False

    def _frozen_modules(self):
        """layer1..layer<FIXED_BLOCKS>, and conv1 + bn1 when ``freeze_stem`` (pretrained weights loaded)."""
        base = self.RCNN_base
        stem = [base[0], base[1]] if self.freeze_stem else []
        return stem + [base[3 + i] for i in range(1, self.fixed_blocks + 1)]

    def train(self, mode=True):
        """Train mode, except that frozen blocks stay in eval mode, and so does every BatchNorm unless
        TRAIN.BN_TRAIN (their statistics then stay those of the pretrained weights)."""
        super().train(mode)
        if mode:
            for m in self._frozen_modules():
                m.eval()
            if not self.bn_train:
                for m in list(self.RCNN_base.modules()) + list(self.RCNN_top.modules()):
                    if _is_bn(m):
                        m.eval()
        return self

    def _head_to_tail(self, pool5):
        """[K, C_base, S, S] -> layer4 -> spatial mean -> [K, 512 or 2048]."""
        return self.RCNN_top(pool5).mean(3).mean(2)
