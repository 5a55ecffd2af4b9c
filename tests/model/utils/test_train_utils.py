"""Optimizer parameter groups, the lr schedule and the loss meter's non-finite guard."""
import pytest
import torch
from torch import nn

from lib.model.utils.config import cfg
from lib.model.utils.net_utils import adjust_learning_rate, scaled_learning_rate
from lib.model.utils.train_utils import (LossMeter, NonFiniteLossError, build_optimizer, build_param_groups,
                                         lr_decay_due, plot_loss_history, warmup_factor)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)
        self.frozen = nn.Linear(2, 2)
        for p in self.frozen.parameters():
            p.requires_grad = False


def _groups_by_param(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(g['params'][0])]: (g['lr'], g['weight_decay']) for g in groups}


def test_param_groups_follow_the_original():
    m = _Tiny()
    got = _groups_by_param(m, build_param_groups(m, 0.01, 5e-4, double_bias=True, bias_decay=False))
    assert got == {'fc.weight': (0.01, 5e-4), 'fc.bias': (0.02, 0.0),
                   'bn.weight': (0.01, 5e-4), 'bn.bias': (0.02, 0.0)}
    got = _groups_by_param(m, build_param_groups(m, 0.01, 5e-4, double_bias=False, bias_decay=True))
    assert got['fc.bias'] == (0.01, 5e-4)


def _sgd_on_linear(n_in, n_out, lr, weight_decay):
    """A seeded nn.Linear and build_optimizer's SGD for it: doubled bias lr, no bias decay."""
    torch.manual_seed(0)
    m = nn.Linear(n_in, n_out)
    cfg.TRAIN.WEIGHT_DECAY = weight_decay
    cfg.TRAIN.DOUBLE_BIAS = True
    cfg.TRAIN.BIAS_DECAY = False
    return m, build_optimizer(m, 'sgd', lr)


def test_sgd_step_applies_doubled_bias_lr_and_no_bias_decay():
    m, opt = _sgd_on_linear(3, 1, lr=0.5, weight_decay=0.1)
    assert all(g['momentum'] == cfg.TRAIN.MOMENTUM for g in opt.param_groups)
    w0, b0 = m.weight.detach().clone(), m.bias.detach().clone()
    x = torch.tensor([[1.0, 2.0, 3.0]])
    m(x).sum().backward()
    opt.step()
    # first SGD step: p -= lr * (grad + wd * p); dL/dw = x, dL/db = 1
    assert torch.allclose(m.weight, w0 - 0.5 * (x + 0.1 * w0))
    assert torch.allclose(m.bias, b0 - 1.0 * 1.0)


def test_sgd_is_fused_and_matches_momentum_sgd_over_several_steps():
    m, opt = _sgd_on_linear(4, 2, lr=0.1, weight_decay=0.01)
    assert opt.defaults['fused']
    w, b = m.weight.detach().clone(), m.bias.detach().clone()
    mu = cfg.TRAIN.MOMENTUM
    vw = vb = None  # momentum buffers
    for step in range(4):
        x = torch.randn(3, 4)
        opt.zero_grad()
        (m(x) ** 2).sum().backward()
        gw, gb = m.weight.grad + 0.01 * w, m.bias.grad
        # torch's SGD: the first step's buffer is the gradient, then v = mu * v + g; p -= lr * v
        vw, vb = (gw, gb) if step == 0 else (mu * vw + gw, mu * vb + gb)
        w, b = w - 0.1 * vw, b - 0.2 * vb
        opt.step()
        assert torch.allclose(m.weight, w, atol=1e-6) and torch.allclose(m.bias, b, atol=1e-6)


def test_adam_uses_the_given_lr():
    m = _Tiny()
    opt = build_optimizer(m, 'adam', 1e-4)
    assert isinstance(opt, torch.optim.Adam)
    lrs = sorted({g['lr'] for g in opt.param_groups})
    assert lrs == [1e-4, 2e-4]  # weights, doubled biases (DOUBLE_BIAS default True); no hidden x0.1
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        build_optimizer(m, 'rmsprop', 1e-3)


def test_lr_schedule_rule():
    assert [e for e in range(1, 20) if lr_decay_due(e, 5)] == [6, 12, 18]
    assert [e for e in range(1, 12) if lr_decay_due(e, 1)] == [2, 4, 6, 8, 10]
    # a simulated run of 13 epochs, decaying at the start of the due epochs as the training loop does
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    seen = []
    for epoch in range(1, 14):
        if lr_decay_due(epoch, 5):
            adjust_learning_rate(opt, 0.1)
        seen.append(opt.param_groups[0]['lr'])
    assert seen == pytest.approx([1e-3] * 5 + [1e-4] * 6 + [1e-5] * 2)


def test_warmup_ramps_linearly_to_one_and_zero_is_the_original():
    assert [warmup_factor(i, 4) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 1) == 1.0 and warmup_factor(0, 0) == 1.0 and warmup_factor(10 ** 6, 0) == 1.0
    assert warmup_factor(99, 200) == pytest.approx(0.5)


def test_scaled_learning_rate_steps_at_the_scaled_lr_and_puts_the_schedule_back():
    w = nn.Parameter(torch.ones(2))
    b = nn.Parameter(torch.ones(1))
    lrs, f = [0.01, 0.02], 13 / 15  # lr x f / f is not lr again in floating point: dividing back would drift
    assert lrs[0] * f / f != lrs[0]
    opt = torch.optim.SGD([{'params': [w], 'lr': lrs[0]}, {'params': [b], 'lr': lrs[1]}])
    w.grad, b.grad = torch.ones(2), torch.ones(1)
    with scaled_learning_rate(opt, f):
        assert [g['lr'] for g in opt.param_groups] == pytest.approx([lrs[0] * f, lrs[1] * f])
        opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2,), 1 - lrs[0] * f))
    torch.testing.assert_close(b.detach(), torch.full((1,), 1 - lrs[1] * f))
    assert [g['lr'] for g in opt.param_groups] == lrs  # exactly, not approximately
    with pytest.raises(RuntimeError, match='boom'):  # a failing step leaves the schedule as it was too
        with scaled_learning_rate(opt, 0.5):
            raise RuntimeError('boom')
    assert [g['lr'] for g in opt.param_groups] == lrs


def test_loss_meter_averages_and_reports_last_step():
    meter = LossMeter(torch.device('cpu'))
    labels = torch.tensor([[1, 0, 0, 2]])
    meter.add(1, 0, torch.tensor([1.0, 2.0, 3.0, 4.0]), labels, torch.tensor([0]))
    meter.add(1, 1, torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([[0, 0, 0, 3]]), torch.tensor([1]))
    out = meter.read()
    assert out['loss'] == pytest.approx((10 + 2) / 2)
    assert (out['rpn_cls'], out['rpn_box'], out['rcnn_cls'], out['rcnn_box']) == (0.0, 1.0, 0.0, 1.0)
    assert (out['fg'], out['bg'], out['count']) == (1, 3, 2)
    assert [out[f'mean_{k}'] for k in ('rpn_cls', 'rpn_box', 'rcnn_cls', 'rcnn_box')] == [0.5, 1.5, 1.5, 2.5]


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_loss_meter_names_the_first_bad_batch(bad):
    meter = LossMeter(torch.device('cpu'), describe_batch=lambda ids: [f'img{int(i)}.jpg' for i in ids])
    lab = torch.zeros(1, 4, dtype=torch.long)
    meter.add(3, 7, torch.tensor([1.0, 1.0, 1.0, 1.0]), lab, torch.tensor([4]))
    meter.check_finite()
    meter.add(3, 8, torch.tensor([1.0, bad, 1.0, 1.0]), lab, torch.tensor([5, 6]))
    meter.add(3, 9, torch.tensor([float('nan')] * 4), lab, torch.tensor([7]))
    with pytest.raises(NonFiniteLossError, match=r'epoch 3, iteration 8; images of that batch: img5.jpg, img6.jpg'):
        meter.check_finite()
    with pytest.raises(NonFiniteLossError):
        meter.read()
    meter.reset()
    meter.check_finite()


def test_error_path_check_uses_no_collective(monkeypatch):
    # under DDP only the failing process takes the error path: a collective there would hang the run
    import torch.distributed as dist
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)

    def no_collective(*args, **kwargs):
        raise AssertionError('all_reduce called on the error path')
    monkeypatch.setattr(dist, 'all_reduce', no_collective)
    meter = LossMeter(torch.device('cpu'))
    lab = torch.zeros(1, 4, dtype=torch.long)
    meter.add(1, 0, torch.ones(4), lab, torch.tensor([0]))
    meter.check_finite_here()
    meter.add(1, 1, torch.tensor([1.0, float('nan'), 1.0, 1.0]), lab, torch.tensor([3]))
    with pytest.raises(NonFiniteLossError, match='epoch 1, iteration 1'):
        meter.check_finite_here()
    with pytest.raises(AssertionError, match='all_reduce called'):
        meter.check_finite()  # the regular check does synchronise the processes


def test_loss_plot_is_written(tmp_path):
    hist = [{'iter': i, 'loss': 1.0 / (i + 1), 'rpn_cls': 0.1, 'rpn_box': 0.2, 'rcnn_cls': 0.3, 'rcnn_box': 0.4}
            for i in range(5)]
    path = plot_loss_history(hist, str(tmp_path / 'loss.png'))
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_amp_on_a_cpu_autocasts_to_bf16(monkeypatch):
    import warnings
    from types import SimpleNamespace
    from lib.model.utils import script_utils
    from lib.model.utils.train_utils import _autocast
    monkeypatch.setattr(script_utils, 'cpu_has_native_bf16', lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # where the CPU has native bf16 there is nothing to warn about
        ctx, amp_dtype = _autocast(torch.device('cpu'), SimpleNamespace(amp=True, amp_dtype='bf16'))
    with ctx():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert amp_dtype == torch.bfloat16
    ctx, amp_dtype = _autocast(torch.device('cpu'), SimpleNamespace(amp=False, amp_dtype='bf16'))
    with ctx():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    assert amp_dtype is None


@pytest.mark.parametrize('avx512_bf16, amx, native', [(False, False, False), (True, False, True),
                                                      (False, True, True), (None, None, False)])
def test_cpu_has_native_bf16_asks_for_the_instruction_sets(monkeypatch, avx512_bf16, amx, native):
    """oneDNN's _is_mkldnn_bf16_supported() is true on any AVX512 CPU (it emulates bf16 there, at twice the float32
    step time on an Ice Lake Xeon): only AVX512-BF16 or AMX count, and a torch without the probes says no."""
    from lib.model.utils import script_utils
    monkeypatch.setattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', lambda: True, raising=False)
    for name, value in (('_is_avx512_bf16_supported', avx512_bf16), ('_is_amx_tile_supported', amx)):
        if value is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda value=value: value, raising=False)
    assert script_utils.cpu_has_native_bf16() is native


@pytest.mark.parametrize('capability,expected', [('AVX512', True), ('AVX2', False), ('DEFAULT', False),
                                                 ('NO AVX', False)])
def test_cpu_has_avx512_reads_the_level_torch_dispatches_to(monkeypatch, capability, expected):
    """run_main_job.sh's channels_last rule: the level the CPU kernels run at, which ATEN_CPU_CAPABILITY lowers."""
    from lib.model.utils import script_utils
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: capability)
    assert script_utils.cpu_has_avx512() is expected


def test_amp_on_a_cpu_warns_about_fp16_and_about_emulated_bf16(monkeypatch):
    from lib.model.utils import script_utils
    monkeypatch.setattr(script_utils, 'cpu_has_native_bf16', lambda: False)
    with pytest.warns(UserWarning, match='without native bfloat16 .* slower than float32'):
        script_utils.amp_autocast('cpu', True)
    monkeypatch.setattr(script_utils, 'cpu_has_native_bf16', lambda: True)
    with pytest.warns(UserWarning, match='--amp_dtype fp16 is for CUDA'):
        ctx, dtype = script_utils.amp_autocast('cpu', True, 'fp16')
    assert dtype == torch.bfloat16
    _, dtype = script_utils.amp_autocast('cuda', True, 'fp16')  # the context is made only when entered
    assert dtype == torch.float16


def test_autocast_forward_keeps_its_dtype_in_a_worker_thread():
    # DataParallel's parallel_apply enters autocast in each worker thread without a dtype, so the thread's
    # default applies (float16 on CUDA; on CPU the default is bfloat16, hence float16 is asked for here)
    import threading
    from lib.model.utils.net_utils import AutocastForward
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    wrapped = AutocastForward(lin, torch.float16, device_type='cpu')
    got = {}

    def worker():
        with torch.amp.autocast('cpu', enabled=True):
            got['plain'] = lin(x).dtype
        with torch.amp.autocast('cpu', enabled=True):  # a fresh region: autocast caches a weight's first cast
            got['wrapped'] = wrapped(x).dtype

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert got == {'plain': torch.bfloat16, 'wrapped': torch.float16}


def test_data_parallel_wraps_the_model_in_autocast_only_under_amp():
    from lib.model.utils.net_utils import AutocastForward
    from lib.model.utils.train_utils import data_parallel
    core = torch.nn.Linear(2, 2)
    assert data_parallel(core).module is core
    dp = data_parallel(core, torch.bfloat16)
    assert isinstance(dp.module, AutocastForward) and dp.module.module is core
    assert dp.module.dtype == torch.bfloat16 and dp.module.device_type == 'cuda'


class _NumpyDraws(torch.utils.data.Dataset):
    """Each item: a numpy draw, as the data layer makes for scales and crops."""
    def __len__(self):
        return 8

    def __getitem__(self, i):
        import numpy as np
        return torch.tensor(np.random.randint(0, 2 ** 31))


def test_loader_workers_draw_different_numpy_numbers():
    from lib.model.utils.train_utils import _init_worker
    g = torch.Generator().manual_seed(0)
    draws = torch.cat(list(torch.utils.data.DataLoader(_NumpyDraws(), batch_size=2, num_workers=2,
                                                       worker_init_fn=_init_worker, generator=g)))
    # worker 0 loads batches 0 and 2, worker 1 batches 1 and 3: a shared numpy state would repeat the draws
    assert not torch.equal(draws[0:2], draws[2:4])
    assert len(set(draws.tolist())) == 8
    again = torch.cat(list(torch.utils.data.DataLoader(_NumpyDraws(), batch_size=2, num_workers=2,
                                                       worker_init_fn=_init_worker,
                                                       generator=torch.Generator().manual_seed(0))))
    assert torch.equal(draws, again)  # and they follow the loader's generator
