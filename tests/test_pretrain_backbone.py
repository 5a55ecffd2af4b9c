"""tools/pretrain_backbone.py end to end on a tiny shapes set: the weights file, its log, and training from it."""
import json
import os

import pytest
import torch

from lib.model.utils.config import reset_cfg

pytest.importorskip('lib.model.roi_layers', reason='compiled ops not built', exc_type=ImportError)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


@pytest.fixture(scope='module')
def tiny_set(tmp_path_factory):
    from lib.datasets.shapes import generate_shapes_dataset
    root = str(tmp_path_factory.mktemp('shapes') / 'VOC2007')
    return generate_shapes_dataset(root, num_train=6, num_test=3, seed=2, min_size=80, max_size=120, workers=1)


def test_the_tool_writes_a_backbone_that_trainval_net_loads(tiny_set, tmp_path, load_tool, capsys):
    tool = load_tool('pretrain_backbone')
    out = str(tmp_path / 'w' / 'resnet18_tiny.pth')
    common = ['--dataset', 'custom', '--data_path', tiny_set, '--net', 'res18',
              '--cfg', os.path.join(ROOT, 'cfgs', 'shapes_cpu.yml')]
    data_dir = ['--set', 'DATA_DIR', str(tmp_path / 'data'), 'TRAIN.SCALES', '[96]', 'TRAIN.MAX_SIZE', '160']
    path = tool.main(common + ['--steps', '3', '--bs', '4', '--crop_size', '16', '--output', out, '--val']
                     + data_dir)
    assert path == out
    sd = torch.load(out, weights_only=True)
    assert sd['__format__'] == 'pytorch' and 'layer4.1.conv2.weight' in sd and 'fc.weight' not in sd
    log = json.load(open(out + '.json'))
    assert log['min_side'] == 16  # --crop_size: no object is enlarged in its crop
    assert log['steps'] == 3 and log['net'] == 'res18' and [h['step'] for h in log['history']] == [3]
    assert log['train_crops'] >= 6 and 0.0 <= log['val_object_accuracy'] <= 1.0
    printed = capsys.readouterr().out
    assert 'crops from 6 images of custom_trainval at short side 96' in printed
    assert 'crop accuracy on custom_test' in printed

    # the detector starts from it: the stem stays fixed (the original's rule for pretrained weights)
    import trainval_net
    from lib.model.utils.checkpoint import load_checkpoint
    from lib.model.utils.train_utils import run_training
    reset_cfg()
    args = trainval_net.parse_args(common + ['--weights', out, '--save_dir', str(tmp_path / 'models'), '--epochs', '1',
                                             '--max_iters', '2', '--checkpoint_interval', '0'] + data_dir
                                   + ['TRAIN.RPN_PRE_NMS_TOP_N', '300', 'TRAIN.RPN_POST_NMS_TOP_N', '40'])
    result = run_training(args, log=lambda msg: None)
    ck = load_checkpoint(result['checkpoints'][-1])
    assert ck['freeze_stem'] is True
    assert torch.equal(ck['model']['RCNN_base.0.weight'], sd['conv1.weight'])


def test_vgg16_is_refused_with_the_supported_nets(load_tool, capsys):
    tool = load_tool('pretrain_backbone')
    with pytest.raises(SystemExit):
        tool.main(['--net', 'vgg16'])
    assert "invalid choice: 'vgg16'" in capsys.readouterr().err
