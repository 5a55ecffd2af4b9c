"""Pretrained files: format detection, loading, input normalisation and the messages for bad files."""
import pytest
import torch
import torchvision

from lib.model.faster_rcnn.weights import (FORMAT_KEY, default_model_path, detect_weight_format,
                                           read_weight_format)
from lib.model.utils.config import cfg

pytest.importorskip('lib.model.roi_layers', reason='compiled ops not built', exc_type=ImportError)
from lib.model.faster_rcnn.resnet import build_resnet, resnet  # noqa: E402
from lib.model.faster_rcnn.vgg16 import vgg16  # noqa: E402
from frcnn_helpers import CLASSES  # noqa: E402


def test_detection_rule():
    sd = {'conv1.weight': torch.zeros(1)}
    assert detect_weight_format(sd, 'data/pretrained_model/resnet101_caffe.pth') == 'caffe'
    assert detect_weight_format(sd, 'ResNet50-CAFFE.pth') == 'caffe'
    assert detect_weight_format(sd, 'resnet50-0676ba61.pth') == 'pytorch'
    assert detect_weight_format(sd) == 'pytorch'
    assert detect_weight_format({**sd, FORMAT_KEY: 'pytorch'}, 'x_caffe.pth') == 'pytorch'   # marker wins
    assert detect_weight_format({**sd, FORMAT_KEY: 'caffe'}, 'weights.pth') == 'caffe'
    with pytest.raises(ValueError, match="expected 'caffe' or 'pytorch'"):
        detect_weight_format({**sd, FORMAT_KEY: 'tf'}, 'w.pth')
    assert default_model_path('resnet50').endswith('data/pretrained_model/resnet50_caffe.pth')


def test_torchvision_resnet18_file(tmp_path, tiny_cfg):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / 'resnet18-f37072fd.pth'
    torch.save(tv.state_dict(), path)
    assert read_weight_format(str(path)) == 'pytorch'
    assert cfg.INPUT_FORMAT == 'caffe'
    model = resnet(CLASSES, 18, pretrained=True, model_path=str(path))
    model.create_architecture()
    assert cfg.INPUT_FORMAT == 'pytorch' and model.input_format == 'pytorch'
    assert torch.equal(model.RCNN_base[0].weight, tv.conv1.weight)
    assert torch.equal(model.RCNN_base[6][1].conv2.weight, tv.layer3[1].conv2.weight)
    assert torch.equal(model.RCNN_top[0][0].bn1.running_var, tv.layer4[0].bn1.running_var)
    # torchvision's max-pool layout
    assert model.RCNN_base[3].padding == 1 and not model.RCNN_base[3].ceil_mode


def test_caffe_style_file_and_bottleneck_layout(tmp_path, tiny_cfg):
    torch.manual_seed(0)
    src = build_resnet(50, caffe=True)
    sd = src.state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith('num_batches_tracked')}   # as in old files
    path = tmp_path / 'resnet50_caffe.pth'
    torch.save(sd, path)
    cfg.INPUT_FORMAT = 'pytorch'
    model = resnet(CLASSES, 50, pretrained=True, model_path=str(path))
    model.create_architecture()
    assert cfg.INPUT_FORMAT == 'caffe'
    assert torch.equal(model.RCNN_base[5][0].conv1.weight, src.layer2[0].conv1.weight)
    # caffe layout: the stride of a bottleneck is in its first 1x1 conv
    assert model.RCNN_base[5][0].conv1.stride == (2, 2) and model.RCNN_base[5][0].conv2.stride == (1, 1)

    # the same file forced to 'pytorch': torchvision layout, stride in the 3x3 conv
    forced = resnet(CLASSES, 50, pretrained=True, model_path=str(path), weight_format='pytorch')
    forced.create_architecture()
    assert cfg.INPUT_FORMAT == 'pytorch'
    assert forced.RCNN_base[5][0].conv1.stride == (1, 1) and forced.RCNN_base[5][0].conv2.stride == (2, 2)

    # without a file the layout follows cfg.INPUT_FORMAT (what a test script restores from a checkpoint)
    cfg.INPUT_FORMAT = 'caffe'
    scratch = resnet(CLASSES, 50)
    scratch.create_architecture()
    assert scratch.RCNN_base[5][0].conv1.stride == (2, 2)


def test_marker_key_and_wrapped_file(tmp_path, tiny_cfg):
    src = build_resnet(18, caffe=True)
    path = tmp_path / 'backbone.pth'
    torch.save({'state_dict': {**src.state_dict(), FORMAT_KEY: 'caffe'}}, path)
    model = resnet(CLASSES, 18, pretrained=True, model_path=str(path))
    model.create_architecture()
    assert cfg.INPUT_FORMAT == 'caffe'
    assert torch.equal(model.RCNN_base[4][0].conv1.weight, src.layer1[0].conv1.weight)


def test_missing_and_wrong_files(tmp_path, tiny_cfg):
    cfg.DATA_DIR = str(tmp_path)
    model = resnet(CLASSES, 101, pretrained=True)
    with pytest.raises(FileNotFoundError) as e:
        model.create_architecture()
    msg = str(e.value)
    assert str(tmp_path / 'pretrained_model' / 'resnet101_caffe.pth') in msg and 'pretrained=False' in msg

    with pytest.raises(FileNotFoundError, match='vgg16_caffe.pth'):
        vgg16(CLASSES, pretrained=True).create_architecture()

    path = tmp_path / 'resnet18.pth'
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match='missing from the file'):
        resnet(CLASSES, 50, pretrained=True, model_path=str(path)).create_architecture()
    with pytest.raises(ValueError, match="unknown weight format 'bgr'"):
        resnet(CLASSES, 18, weight_format='bgr')
    with pytest.raises(ValueError, match='unsupported ResNet depth 20'):
        resnet(CLASSES, 20)
