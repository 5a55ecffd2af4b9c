"""trainval_net.py: flag parsing, cfg precedence, and short real training runs on a tiny synthetic set
(checkpoint contents, exact resume, the non-finite guard, DDP on 2 CPU processes)."""
import glob
import math
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
import torchvision

import trainval_net
from lib.model.utils.checkpoint import load_checkpoint
from lib.model.utils.config import cfg, reset_cfg
from lib.model.utils.script_utils import setup_cfg
from lib.model.utils.train_utils import StopRequest
from tiny_run import TINY_SET

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


@pytest.fixture(scope='module')
def tiny_shapes(tmp_path_factory):
    """A 6 + 4 image VOC-format shapes set (used as --dataset custom --data_path ...)."""
    from lib.datasets.shapes import generate_shapes_dataset
    root = str(tmp_path_factory.mktemp('shapes') / 'VOC2007')
    generate_shapes_dataset(root, num_train=6, num_test=4, seed=1, min_size=80, max_size=120, workers=1)
    return root


def tiny_argv(data_root, tmp_path, *extra):
    """Arguments of a tiny deterministic run; --set (last) points DATA_DIR (caches) into tmp_path."""
    return ['--dataset', 'custom', '--data_path', data_root, '--net', 'res18', '--weights', 'none',
            '--cfg', os.path.join(ROOT, 'cfgs', 'shapes_cpu.yml'), '--save_dir', str(tmp_path / 'models'),
            '--seed', '7', '--deterministic', '--lr', '0.01', *extra,
            '--set', 'DATA_DIR', str(tmp_path / 'data'), *TINY_SET]


def without_weights_flag(argv):
    """argv with its '--weights none' taken out: the default, the original's pretrained file."""
    i = argv.index('--weights')
    return argv[:i] + argv[i + 2:]


def write_random_resnet18_weights(tmp_path):
    """A torchvision-format ResNet-18 file where the default --weights looks (DATA_DIR is tmp_path/data)."""
    path = tmp_path / 'data' / 'pretrained_model' / 'resnet18_caffe.pth'
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def tiny_args(data_root, tmp_path, *extra):
    return trainval_net.parse_args(tiny_argv(data_root, tmp_path, *extra))


def train(args, log=lambda msg: None):
    from lib.model.utils.train_utils import run_training
    reset_cfg()
    return run_training(args, log=log)


# ------------------------------------------------------------------------------------------------ flags and cfg
@pytest.mark.parametrize('argv,expected', [([], False), (['--r'], True), (['--r', 'true'], True),
                                           (['--r', 'False'], False), (['--r', '0'], False), (['--r', 'yes'], True)])
def test_resume_flag_is_a_real_boolean(argv, expected):
    assert trainval_net.parse_args(argv).resume is expected


def test_resume_flag_rejects_garbage(capsys):
    with pytest.raises(SystemExit):
        trainval_net.parse_args(['--r', 'maybe'])
    assert "expected a boolean" in capsys.readouterr().err


def test_defaults_match_the_original():
    a = trainval_net.parse_args([])
    assert (a.dataset, a.net, a.start_epoch, a.max_epochs, a.disp_interval, a.checkpoint_interval) == \
        ('pascal_voc', 'vgg16', 1, 20, 100, 10000)
    assert (a.save_dir, a.num_workers, a.batch_size, a.optimizer, a.lr, a.lr_decay_step, a.lr_decay_gamma) == \
        ('models', 0, 1, 'sgd', 0.001, 5, 0.1)
    assert (a.session, a.checksession, a.checkepoch, a.checkpoint) == (1, 1, 1, 0)
    assert not (a.cuda or a.mGPUs or a.class_agnostic or a.large_scale or a.use_tfboard or a.amp)


def test_set_takes_the_rest_of_the_line():
    a = trainval_net.parse_args(['--net', 'res50', '--set', 'TRAIN.SCALES', '[800]', 'POOLING_MODE', 'pool'])
    assert a.set_cfgs == ['TRAIN.SCALES', '[800]', 'POOLING_MODE', 'pool']


def test_precedence_dataset_then_yml_then_set(tmp_path):
    # the dataset's defaults apply where the yml says nothing ...
    setup_cfg('coco', 'res101')
    assert cfg.ANCHOR_SCALES == [4, 8, 16, 32] and cfg.MAX_NUM_GT_BOXES == 50
    assert cfg.POOLING_MODE == 'align' and cfg.TRAIN.WEIGHT_DECAY == 0.0001  # from cfgs/res101.yml
    # ... a yml that sets anchors overrides the dataset (the original's --dataset silently won) ...
    reset_cfg()
    yml = tmp_path / 'anchors.yml'
    yml.write_text('ANCHOR_SCALES: [2, 4]\nMAX_NUM_GT_BOXES: 7\n')
    setup_cfg('coco', 'res101', cfg_file=str(yml))
    assert cfg.ANCHOR_SCALES == [2, 4] and cfg.MAX_NUM_GT_BOXES == 7
    assert cfg.POOLING_MODE == 'crop'  # an explicit --cfg replaces cfgs/<net>.yml
    # ... a checkpoint's model keys override the yml, and --set overrides everything
    reset_cfg()
    setup_cfg('coco', 'res101', cfg_file=str(yml), stored_cfg={'ANCHOR_SCALES': [3], 'POOLING_MODE': 'pool'},
              set_cfgs=['MAX_NUM_GT_BOXES', '9', 'POOLING_MODE', 'align'])
    assert cfg.ANCHOR_SCALES == [3] and cfg.POOLING_MODE == 'align' and cfg.MAX_NUM_GT_BOXES == 9


def test_ls_picks_the_large_scale_yml(capsys):
    used = setup_cfg('pascal_voc', 'res101', large_scale=True)
    assert used.endswith(os.path.join('cfgs', 'res101_ls.yml')) and tuple(cfg.TRAIN.SCALES) == (800,)
    assert 'NOTE' not in capsys.readouterr().out
    reset_cfg()
    res50 = os.path.join(ROOT, 'cfgs', 'res50.yml')
    assert setup_cfg('pascal_voc', 'res101', large_scale=True, cfg_file=res50) == res50
    assert tuple(cfg.TRAIN.SCALES) == (600,)
    assert f'NOTE: --ls has no effect with --cfg: {res50} is read, not cfgs/res101_ls.yml' in capsys.readouterr().out


def test_custom_needs_data_path():
    with pytest.raises(ValueError, match='--data_path'):
        setup_cfg('custom', 'res18')


# ------------------------------------------------------------------------------------------------ training runs
def test_a_missing_data_folder_is_one_error_line(tmp_path, capsys):
    reset_cfg()
    code = trainval_net.main(['--dataset', 'custom', '--data_path', str(tmp_path / 'nope'), '--net', 'res18',
                              '--weights', 'none', '--set', 'DATA_DIR', str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and 'Traceback' not in err
    assert err.startswith(f"ERROR: dataset 'custom_trainval': the custom VOC-format folder {tmp_path / 'nope'} "
                          "does not exist; pass --data_path")


def test_checkpoints_hold_the_full_state(tiny_shapes, tmp_path):
    out = train(tiny_args(tiny_shapes, tmp_path, '--epochs', '1', '--max_iters', '3', '--checkpoint_interval', '2',
                          '--disp_interval', '1'))
    names = [os.path.basename(p) for p in out['checkpoints']]
    assert names == ['faster_rcnn_1_1_1.pth', 'faster_rcnn_1_1_2.pth']  # mid-epoch every 2 iterations, epoch end
    ck = load_checkpoint(out['checkpoints'][0])
    assert (ck['session'], ck['epoch'], ck['step'], ck['iters_per_epoch']) == (1, 1, 1, 3)
    assert ck['sampler'] == {'epoch': 1, 'position': 2}
    assert ck['net'] == 'res18' and ck['class_agnostic'] is False and ck['lr'] == pytest.approx(0.01)
    assert ck['classes'][0] == '__background__' and len(ck['classes']) == 7
    assert ck['anchor_scales'] == cfg.ANCHOR_SCALES and ck['cfg']['POOLING_SIZE'] == 4
    assert set(ck['rng']) == {'python', 'numpy', 'torch', 'cuda'}
    assert ck['optimizer']['state'] and all('momentum_buffer' in v for v in ck['optimizer']['state'].values())
    assert len(out['history']) == 3 and all(h['lr'] == pytest.approx(0.01) for h in out['history'])
    outdir = out['output_dir']
    assert os.path.isfile(os.path.join(outdir, 'cfg_1.yml')) and os.path.isfile(os.path.join(outdir, 'loss_1.png'))


def test_amp_on_a_cpu_trains_under_bf16_autocast(tiny_shapes, tmp_path, monkeypatch):
    from lib.model.utils import script_utils
    monkeypatch.setattr(script_utils, 'cpu_has_native_bf16', lambda: True)
    real, entered = torch.autocast, []

    def autocast(*args, **kwargs):
        entered.append((args, kwargs.get('dtype')))
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, 'autocast', autocast)
    out = train(tiny_args(tiny_shapes, tmp_path, '--epochs', '1', '--max_iters', '2', '--amp', '--disp_interval', '1'))
    assert entered.count((('cpu',), torch.bfloat16)) == 2  # one forward per iteration
    assert len(out['history']) == 2 and all(math.isfinite(h['loss']) for h in out['history'])


def test_without_weights_training_starts_from_the_original_pretrained_file(tiny_shapes, tmp_path, capsys):
    argv = without_weights_flag(tiny_argv(tiny_shapes, tmp_path, '--epochs', '1', '--max_iters', '1'))
    expected = tmp_path / 'data' / 'pretrained_model' / 'resnet18_caffe.pth'
    with pytest.raises(FileNotFoundError, match=re.escape(str(expected))):
        train(trainval_net.parse_args(argv))
    assert write_random_resnet18_weights(tmp_path) == expected
    capsys.readouterr()
    out = train(trainval_net.parse_args(argv))
    assert f'Loading pretrained weights from {expected}' in capsys.readouterr().out
    assert load_checkpoint(out['checkpoints'][-1])['freeze_stem'] is True


class StepClock:
    """A fake clock for train_utils._clock that moves only when a training step ends: by seconds_per_step[epoch]."""

    def __init__(self, monkeypatch, seconds_per_step):
        from lib.model.utils import train_utils
        self.now, self.seconds_per_step = 1000.0, seconds_per_step
        monkeypatch.setattr(train_utils, '_clock', lambda: self.now)
        add = train_utils.LossMeter.add

        def timed_add(meter, epoch, step, *rest):
            self.now += self.seconds_per_step(epoch)
            return add(meter, epoch, step, *rest)
        monkeypatch.setattr(train_utils.LossMeter, 'add', timed_add)


@pytest.mark.parametrize('epochs, last, decay_epoch',
                         [(1, 1, None), (2, 2, 2), (5, 5, 5), (6, 6, 5), (12, 12, 10), (40, 30, 23)])
def test_fit_schedule_ends_with_the_last_epoch_that_fits_and_decays_once_for_its_last_quarter(
        epochs, last, decay_epoch):
    from lib.model.utils.train_utils import fit_schedule, lr_decay_due
    # 10 s epochs, one done, room for `epochs` - 1 more: `epochs` in all, at most 30 (--epochs)
    got_last, step = fit_schedule(1, 10.0 * (epochs - 1) + 5.0, 10.0, 30, decayed=False)
    assert got_last == last
    decays = [e for e in range(2, got_last + 1) if step is not None and lr_decay_due(e, step)]
    assert decays == ([decay_epoch] if decay_epoch else [])


def test_fit_schedule_after_the_decay_only_ends_sooner():
    from lib.model.utils.train_utils import fit_schedule
    assert fit_schedule(9, 100.0, 10.0, 12, decayed=True) == (12, None)  # room for 10 more, but 12 was the plan
    assert fit_schedule(9, 25.0, 10.0, 12, decayed=True) == (11, None)
    assert fit_schedule(3, 5.0, 10.0, 12, decayed=False) == (3, None)  # nothing more fits: ends now
    assert fit_schedule(3, 15.0, 10.0, 12, decayed=False) == (4, 3)  # one more: decayed


def test_time_budget_sets_the_epochs_and_the_decay_from_the_epoch_time(tiny_shapes, tmp_path, monkeypatch):
    clock = StepClock(monkeypatch, lambda epoch: 10.0)  # 3 steps: 30 s an epoch
    lines = []
    out = train(tiny_args(tiny_shapes, tmp_path, '--epochs', '20', '--max_iters', '3', '--disp_interval', '1',
                          '--checkpoint_interval', '0', '--lr_decay_step', '1', '--time_budget', '100'),
                log=lines.append)
    # after epoch 1, 70 s are left: two more epochs, the last at lr x 0.1 (--lr_decay_step 1 would decay at 2)
    assert [os.path.basename(p) for p in out['checkpoints']] == [
        'faster_rcnn_1_1_2.pth', 'faster_rcnn_1_2_2.pth', 'faster_rcnn_1_3_2.pth']
    assert {r['epoch']: r['lr'] for r in out['history']} == {1: 0.01, 2: 0.01, 3: pytest.approx(0.001)}
    assert 'time budget: 70 s left, 30.0 s per epoch: training to epoch 3, lr x 0.1 from epoch 3' in lines
    assert out['stopped_by'] is None and clock.now - 1000.0 == 90.0

    # resumed after its decay, a budget run decays no more (--lr_decay_step 1 would at epochs 4 and 6)
    out = train(tiny_args(tiny_shapes, tmp_path, '--epochs', '6', '--max_iters', '3', '--disp_interval', '1',
                          '--checkpoint_interval', '0', '--lr_decay_step', '1', '--time_budget', '1000', '--r',
                          'true', '--checkepoch', '3', '--checkpoint', '2'))
    assert {r['epoch']: r['lr'] for r in out['history'] if r['epoch'] > 3} == pytest.approx({4: 0.001, 5: 0.001,
                                                                                             6: 0.001})


def test_time_budget_plan_grows_when_epochs_get_faster_until_the_decay(tiny_shapes, tmp_path, monkeypatch):
    # the first epoch is slow (on a GPU: start-up, cudnn.benchmark searching every new image shape), the rest fast.
    # The first plan fits 6 epochs; at the later pace the run must grow to what the budget holds (until 2026-11-27
    # the first plan was final: a CPU run given 5400 s planned 13 epochs after a slow first one, and ended at 4530 s)
    StepClock(monkeypatch, lambda epoch: 20.0 if epoch == 1 else 10.0)  # 3 steps: 60 s, then 30 s an epoch
    lines = []
    out = train(tiny_args(tiny_shapes, tmp_path, '--epochs', '20', '--max_iters', '3', '--disp_interval', '1',
                          '--checkpoint_interval', '0', '--time_budget', '400'), log=lines.append)
    assert 'time budget: 340 s left, 60.0 s per epoch: training to epoch 6, lr x 0.1 from epoch 5' in lines
    assert 'time budget: 310 s left, 30.0 s per epoch: training to epoch 12, lr x 0.1 from epoch 10' in lines
    lrs = {r['epoch']: r['lr'] for r in out['history']}
    assert sorted(lrs) == list(range(1, 13)) and out['stopped_by'] is None
    assert [e for e in lrs if lrs[e] < 0.005] == [10, 11, 12]  # one decay, for the last quarter of the 12 epochs


def test_time_budget_stops_mid_epoch_with_a_checkpoint(tiny_shapes, tmp_path, monkeypatch):
    StepClock(monkeypatch, lambda epoch: 10.0 if epoch == 1 else 60.0)  # epoch 2 turns out slower
    lines = []
    out = train(tiny_args(tiny_shapes, tmp_path, '--epochs', '20', '--max_iters', '3', '--disp_interval', '1',
                          '--checkpoint_interval', '0', '--time_budget', '80'), log=lines.append)
    assert [os.path.basename(p) for p in out['checkpoints']] == ['faster_rcnn_1_1_2.pth', 'faster_rcnn_1_2_0.pth']
    assert out['stopped_by'] == 'time_budget'
    assert ('stopped by the 80 s time budget after epoch 2 iteration 0; to continue: --r true --checksession 1 '
            '--checkepoch 2 --checkpoint 0') in lines
    assert load_checkpoint(out['checkpoints'][-1])['step'] == 0


def test_time_budget_must_be_positive(tiny_shapes, tmp_path):
    with pytest.raises(ValueError, match='--time_budget must be a positive number of seconds, got 0.0'):
        train(tiny_args(tiny_shapes, tmp_path, '--epochs', '1', '--max_iters', '1', '--time_budget', '0'))


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(tiny_shapes, tmp_path):
    common = ('--epochs', '2', '--max_iters', '3', '--checkpoint_interval', '2', '--disp_interval', '1',
              '--lr_decay_step', '1', '--lr_decay_gamma', '0.5')
    full = train(tiny_args(tiny_shapes, tmp_path, *common))
    assert [os.path.basename(p) for p in full['checkpoints']] == [
        'faster_rcnn_1_1_1.pth', 'faster_rcnn_1_1_2.pth', 'faster_rcnn_1_2_1.pth', 'faster_rcnn_1_2_2.pth']
    # epoch 2 = lr_decay_step + 1: the lr halves at its start
    assert [h['lr'] for h in full['history']] == pytest.approx([0.01] * 3 + [0.005] * 3)
    final = load_checkpoint(full['checkpoints'][-1])

    # the checkpoint after iteration 1 of epoch 1 is the interruption point; its successors get overwritten
    for p in full['checkpoints'][1:]:
        os.remove(p)
    resumed = train(tiny_args(tiny_shapes, tmp_path, *common, '--r', '--checkepoch', '1', '--checkpoint', '1'))
    assert [os.path.basename(p) for p in resumed['checkpoints']] == [
        'faster_rcnn_1_1_2.pth', 'faster_rcnn_1_2_1.pth', 'faster_rcnn_1_2_2.pth']
    keys = ('epoch', 'step', 'loss', 'lr', 'rpn_cls', 'rpn_box', 'rcnn_cls', 'rcnn_box')
    assert [[h[k] for k in keys] for h in resumed['history']] == [[h[k] for k in keys] for h in full['history']]
    again = load_checkpoint(resumed['checkpoints'][-1])
    for k, v in final['model'].items():
        assert torch.equal(v, again['model'][k]), k
    # the optimizer itself runs at the decayed lr (every group: DOUBLE_BIAS is off in this cfg), not only the log
    assert [g['lr'] for g in final['optimizer']['param_groups']] == pytest.approx(
        [0.005] * len(final['optimizer']['param_groups']))

    # resuming inside the decayed epoch does not decay again
    os.remove(resumed['checkpoints'][-1])
    late = train(tiny_args(tiny_shapes, tmp_path, *common, '--r', '--checkepoch', '2', '--checkpoint', '1'))
    last = load_checkpoint(late['checkpoints'][-1])
    assert os.path.basename(late['checkpoints'][-1]) == 'faster_rcnn_1_2_2.pth'
    assert [g['lr'] for g in last['optimizer']['param_groups']] == pytest.approx(
        [0.005] * len(last['optimizer']['param_groups'])) and last['lr'] == pytest.approx(0.005)
    for k, v in final['model'].items():
        assert torch.equal(v, last['model'][k]), k


def test_warmup_ramps_the_lr_the_optimizer_steps_with_and_a_resume_inside_it_continues_the_ramp(
        tiny_shapes, tmp_path):
    common = ('--epochs', '2', '--max_iters', '3', '--checkpoint_interval', '2', '--disp_interval', '1',
              '--warmup', '4')
    full = train(tiny_args(tiny_shapes, tmp_path, *common))
    # iterations 0..3 of the run (epoch 1's three, epoch 2's first) at lr / 4 .. lr, then lr
    assert [h['lr'] for h in full['history']] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])
    # the checkpoint inside the ramp holds the schedule's lr; the ramp follows from the iteration alone
    mid = load_checkpoint(full['checkpoints'][0])
    assert (mid['epoch'], mid['step'], mid['lr']) == (1, 1, pytest.approx(0.01))
    assert {g['lr'] for g in mid['optimizer']['param_groups']} == {0.01}
    final = load_checkpoint(full['checkpoints'][-1])
    for p in full['checkpoints'][1:]:
        os.remove(p)
    resumed = train(tiny_args(tiny_shapes, tmp_path, *common, '--r', '--checkepoch', '1', '--checkpoint', '1'))
    assert [h['lr'] for h in resumed['history']] == [h['lr'] for h in full['history']]
    again = load_checkpoint(resumed['checkpoints'][-1])
    for k, v in final['model'].items():
        assert torch.equal(v, again['model'][k]), k


def test_warmup_scales_the_first_sgd_step(tiny_shapes, tmp_path):
    """SGD's first step moves each weight by lr x (grad + decay x weight): under --warmup 4 by a quarter of it."""
    def first_step_weights(*extra):
        out = train(tiny_args(tiny_shapes, tmp_path, '--epochs', '1', '--max_iters', '1', *extra))
        return load_checkpoint(out['checkpoints'][-1])['model']['RCNN_cls_score.weight']
    w0 = first_step_weights('--lr', '0')
    full, warm = first_step_weights(), first_step_weights('--warmup', '4')
    assert not torch.equal(full, w0)
    torch.testing.assert_close(warm - w0, (full - w0) / 4, rtol=1e-4, atol=1e-7)


def test_warmup_must_not_be_negative(tiny_shapes, tmp_path):
    with pytest.raises(ValueError, match='--warmup must be a number of iterations >= 0, got -1'):
        train(tiny_args(tiny_shapes, tmp_path, '--epochs', '1', '--max_iters', '1', '--warmup', '-1'))


def test_resume_rebuilds_the_checkpoint_model_whatever_the_flags_say(tiny_shapes, tmp_path):
    """Anchors, --cag and the trained stem come from the checkpoint (the first run used 3 anchor scales, --cag and
    --weights none; the resumed command has the yml's 5 scales, no --cag and no --weights), and the cfg keys that
    still differ are named."""
    first = tiny_argv(tiny_shapes, tmp_path, '--epochs', '2', '--max_iters', '2', '--cag')
    ck_path = train(trainval_net.parse_args(first + ['ANCHOR_SCALES', '[2, 4, 8]']))['checkpoints'][0]
    assert os.path.basename(ck_path) == 'faster_rcnn_1_1_1.pth'
    again = tiny_argv(tiny_shapes, tmp_path, '--epochs', '2', '--max_iters', '2', '--r', '--checkepoch', '1',
                      '--checkpoint', '1')
    logs = []
    out = train(trainval_net.parse_args(without_weights_flag(again) + ['TRAIN.BATCH_SIZE', '8']), log=logs.append)
    text = '\n'.join(logs)
    assert "cfg differs from" in text and 'TRAIN.BATCH_SIZE: 16 -> 8' in text and 'ANCHOR_SCALES' not in text
    assert 'continuing at epoch 2, iteration 0' in text
    assert 'was trained with --cag; continuing so' in text
    ck = load_checkpoint(out['checkpoints'][-1])
    assert ck['anchor_scales'] == [2, 4, 8] and ck['class_agnostic'] is True and ck['freeze_stem'] is False
    assert ck['model']['RCNN_rpn.RPN_cls_score.weight'].shape[0] == 2 * 3 * 3


def test_resume_with_the_other_channels_last_gives_the_optimizer_state_the_weights_layout(tiny_shapes, tmp_path):
    """A run with CHANNELS_LAST True (its trunk weights and momentum buffers NHWC) resumed without it: the
    buffers take the weights' layout again, which torch's fused SGD needs to update the right elements."""
    def nhwc_buffers(ck):
        bufs = [s['momentum_buffer'] for s in ck['optimizer']['state'].values() if s['momentum_buffer'].dim() == 4]
        return [b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous() for b in bufs]
    common = ('--epochs', '1', '--max_iters', '3', '--checkpoint_interval', '1')
    first = train(trainval_net.parse_args(tiny_argv(tiny_shapes, tmp_path, *common) + ['CHANNELS_LAST', 'True']))
    assert any(nhwc_buffers(load_checkpoint(first['checkpoints'][0])))
    for p in first['checkpoints'][1:]:
        os.remove(p)
    resumed = train(tiny_args(tiny_shapes, tmp_path, *common, '--r', '--checkepoch', '1', '--checkpoint', '0'))
    ck = load_checkpoint(resumed['checkpoints'][-1])
    assert ck['step'] == 2 and not any(nhwc_buffers(ck))
    assert all(v.is_contiguous() for v in ck['model'].values())


def test_resume_from_a_checkpoint_in_the_original_format(tiny_shapes, tmp_path):
    """The original saved session, epoch + 1, model, optimizer, pooling_mode and class_agnostic; --r resumed at
    the start of that epoch with the optimizer's lr."""
    common = ('--epochs', '3', '--max_iters', '2', '--lr_decay_step', '1', '--lr_decay_gamma', '0.5')
    resume = ('--r', '--checkepoch', '1', '--checkpoint', '1')

    def to_original_format(path):
        ck = load_checkpoint(path)
        torch.save({'session': 1, 'epoch': 2, 'model': ck['model'], 'optimizer': ck['optimizer'],
                    'pooling_mode': 'pool', 'class_agnostic': False}, path)

    # the original always froze the stem: a from-scratch run's optimizer (stem included) cannot be one of its
    scratch = train(tiny_args(tiny_shapes, tmp_path, '--epochs', '1', '--max_iters', '2'))
    to_original_format(scratch['checkpoints'][0])
    with pytest.raises(ValueError, match="its optimizer state does not fit this model's trainable parameters"):
        train(tiny_args(tiny_shapes, tmp_path, *common, *resume))

    weights = write_random_resnet18_weights(tmp_path)
    full = train(tiny_args(tiny_shapes, tmp_path, *common, '--weights', str(weights)))
    to_original_format(full['checkpoints'][0])  # faster_rcnn_1_1_1: the end of epoch 1
    logs = []
    out = train(tiny_args(tiny_shapes, tmp_path, *common, *resume), log=logs.append)
    assert 'continuing at epoch 2, iteration 0' in '\n'.join(logs)
    assert [os.path.basename(p) for p in out['checkpoints']] == ['faster_rcnn_1_2_1.pth', 'faster_rcnn_1_3_1.pth']
    # epoch 2 halves the optimizer's 0.01 once; epoch 3 keeps it, as in the uninterrupted run
    assert [load_checkpoint(p)['lr'] for p in out['checkpoints']] == pytest.approx([0.005, 0.005])
    assert [h['lr'] for h in out['history']] == [h['lr'] for h in full['history']][2:]
    # its pooling mode is the model's (before it is built: the model reads cfg.POOLING_MODE then)
    assert load_checkpoint(out['checkpoints'][-1])['pooling_mode'] == 'pool'


def _nan_on_call(monkeypatch, bad_call):
    """Make the model's rpn_loss_cls NaN on its bad_call-th training forward (0-based)."""
    from lib.model.utils import train_utils
    real = train_utils.build_detector
    calls = {'n': 0}

    def build(*a, **k):
        model = real(*a, **k)
        forward = model.forward

        def poisoned(*fa, **fk):
            out = forward(*fa, **fk)
            if model.training:
                calls['n'] += 1
                if calls['n'] - 1 == bad_call:
                    return out._replace(rpn_loss_cls=out.rpn_loss_cls * float('nan'))
            return out
        model.forward = poisoned
        return model
    monkeypatch.setattr(train_utils, 'build_detector', build)


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(tiny_shapes, tmp_path, monkeypatch, capsys):
    _nan_on_call(monkeypatch, 3)
    args = ['--epochs', '1', '--max_iters', '6', '--checkpoint_interval', '2', '--disp_interval', '100']
    reset_cfg()
    code = trainval_net.main(tiny_argv(tiny_shapes, tmp_path, *args))
    err = capsys.readouterr().err
    assert code == 2
    assert 'non-finite loss (NaN or inf) at epoch 1, iteration 3' in err
    assert 'JPEGImages' in err and '.jpg' in err  # the batch's image path is named
    saved = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / 'models' / 'res18' / 'custom' / '*.pth')))
    assert saved == ['faster_rcnn_1_1_1.pth']
    ck = load_checkpoint(str(tmp_path / 'models' / 'res18' / 'custom' / 'faster_rcnn_1_1_1.pth'))
    assert all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())


def test_multi_scale_blocks_draw_a_new_scale_every_epoch(tiny_shapes, tmp_path, monkeypatch):
    """With several TRAIN.SCALES and --bs > 1 a block's scale comes from (seed, epoch, block): the loader must
    see each epoch's number, or every block keeps one scale for the whole run."""
    from lib.roi_data_layer.roibatchLoader import roibatchLoader
    seen = []
    get = roibatchLoader.__getitem__

    def recording_getitem(self, index):
        seen.append((self.epoch, index))
        return get(self, index)
    monkeypatch.setattr(roibatchLoader, '__getitem__', recording_getitem)
    argv = tiny_argv(tiny_shapes, tmp_path, '--epochs', '3', '--max_iters', '1', '--bs', '2')
    train(trainval_net.parse_args(argv + ['TRAIN.SCALES', '[80, 96, 112]']))  # the end of the --set list
    assert [e for e, _ in seen] == [1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize('signame,to_group,workers', [('SIGTERM', False, '0'), ('SIGINT', True, '2'),
                                                      ('SIGTERM', True, '2')])
def test_a_signal_saves_after_the_current_iteration_and_resume_continues_there(
        tiny_shapes, tmp_path, signame, to_group, workers):
    # SIGTERM to the trainer alone (a scheduler); Ctrl-C and `timeout`, which signal the whole process group,
    # loader workers included
    env = {**os.environ, 'PYTHONPATH': ROOT, 'PYTHONUNBUFFERED': '1'}
    cmd = [sys.executable, os.path.join(ROOT, 'trainval_net.py'),
           *tiny_argv(tiny_shapes, tmp_path, '--epochs', '50', '--disp_interval', '1', '--checkpoint_interval', '0',
                      '--nw', workers)]
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        seen = []
        for line in proc.stdout:  # wait until training runs, then send the signal
            seen.append(line)
            if line.startswith('[session 1][epoch  1][iter    1/'):
                if to_group:
                    os.killpg(proc.pid, getattr(signal, signame))
                else:
                    proc.send_signal(getattr(signal, signame))
                break
        rest, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    out = ''.join(seen) + rest
    assert proc.returncode == 0 and 'Traceback' not in out, out[-3000:]
    m = re.search(f'stopped by {signame} ' + r'after epoch (\d+) iteration (\d+); to continue: --r true '
                  r'--checksession 1 --checkepoch (\d+) --checkpoint (\d+)', out)
    assert m, out[-3000:]
    epoch, step = int(m.group(1)), int(m.group(2))
    assert (int(m.group(3)), int(m.group(4))) == (epoch, step) and (epoch, step) >= (1, 1)
    assert (epoch, step) < (50, 0) and 'TOTAL RUNTIME' in out
    saved = glob.glob(str(tmp_path / 'models' / 'res18' / 'custom' / '*.pth'))
    name = str(tmp_path / 'models' / 'res18' / 'custom' / f'faster_rcnn_1_{epoch}_{step}.pth')
    assert name in saved  # the stop checkpoint (epoch ends may have written others before it)
    ck = load_checkpoint(name)
    assert (ck['epoch'], ck['step']) == (epoch, step)

    out = train(tiny_args(tiny_shapes, tmp_path, '--epochs', str(epoch + 1), '--disp_interval', '1',
                          '--checkpoint_interval', '0', '--r', 'true', '--checkepoch', str(epoch),
                          '--checkpoint', str(step)))
    first = out['history'][len(ck['history'])]  # the resumed run's first record (the history carries over)
    iters = ck['iters_per_epoch']
    assert (first['epoch'], first['step']) == ((epoch, step + 1) if step + 1 < iters else (epoch + 1, 0))
    assert out['stopped_by'] is None


def test_a_run_with_loader_workers_ends_and_exits(tiny_shapes, tmp_path):
    # the workers' signal handlers must not keep the process from exiting once training is done
    env = {**os.environ, 'PYTHONPATH': ROOT}
    cmd = [sys.executable, os.path.join(ROOT, 'trainval_net.py'),
           *tiny_argv(tiny_shapes, tmp_path, '--epochs', '2', '--max_iters', '3', '--nw', '2')]
    out = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0 and 'Traceback' not in out.stderr, out.stderr[-3000:]
    assert 'TOTAL RUNTIME' in out.stdout


def test_stop_request_takes_the_signals_and_gives_them_back():
    # Python's own Ctrl-C handler to start from, whatever this process inherited (a shell's background job starts
    # with SIGINT ignored, and the second Ctrl-C below would then do nothing)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _stop_request_round_trip()
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_request_round_trip():
    before = {s: signal.getsignal(s) for s in StopRequest.SIGNALS}
    with StopRequest() as stop:
        assert all(signal.getsignal(s) == stop._handle for s in StopRequest.SIGNALS)
        signal.raise_signal(signal.SIGINT)  # handled: no KeyboardInterrupt
        assert stop.signal == 'SIGINT'
        # the first signal gave the previous handlers back: a second Ctrl-C interrupts at once
        assert {s: signal.getsignal(s) for s in StopRequest.SIGNALS} == before
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert {s: signal.getsignal(s) for s in StopRequest.SIGNALS} == before
    with StopRequest(enabled=False) as stop:  # DDP ranks: the signals keep their usual effect
        assert {s: signal.getsignal(s) for s in StopRequest.SIGNALS} == before and stop.signal is None


def test_ddp_two_cpu_processes_train_and_rank0_saves_once(tiny_shapes, tmp_path):
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           os.path.join(ROOT, 'trainval_net.py'), *tiny_argv(tiny_shapes, tmp_path, '--epochs', '1',
                                                             '--disp_interval', '1', '--time_budget', '3600')]
    out = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # 6 images + flips = 12 entries, bs 1, 2 processes: 6 iterations each; only rank 0 logs and saves
    lines = [line for line in out.stdout.splitlines() if line.startswith('[session 1][epoch  1]')]
    assert [line.split(']')[2] for line in lines] == [f'[iter {i:4d}/   6' for i in range(6)]
    # --time_budget: the ranks agree on rank 0's clock at every display and after the epoch (a broadcast each)
    assert out.stdout.count('time budget: ') == 2 and 'training to epoch 1' in out.stdout
    saved = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / 'models' / 'res18' / 'custom' / '*.pth')))
    assert saved == ['faster_rcnn_1_1_5.pth']
    ck = load_checkpoint(str(tmp_path / 'models' / 'res18' / 'custom' / 'faster_rcnn_1_1_5.pth'))
    assert not any(k.startswith('module.') for k in ck['model'])
