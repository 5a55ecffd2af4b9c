"""Smoke test of tools/bench.py at CI size: every section runs on the CPU and prints its rows."""
import json

import pytest
import torch


@pytest.fixture(scope='module')
def bench(load_tool):
    return load_tool('bench')


def test_bench_cpu_smoke(bench, tmp_path, capsys):
    out = tmp_path / 'bench.json'
    results = bench.main(['--device', 'cpu', '--quick', '--net', 'res18', '--height', '64', '--width', '96',
                          '--bs', '1', '--iters', '1', '--warmup', '0', '--nw', '0', '--loader_batches', '3',
                          '--json', str(out), '--profile'])
    printed = capsys.readouterr().out
    assert printed.startswith('device: ')
    sections = [r['section'] for r in results]
    assert sections.count('train') == 1 and sections.count('test') == 1 and sections.count('loader') == 1
    assert {r['op'] for r in results if r['section'] == 'ops'} >= {'nms', 'roi_pool'}
    for r in results:
        if r['section'] in ('train', 'test'):
            assert r['ours']['ms'] > 0 and r['torchvision']['ms'] > 0
            assert r['speedup'] == pytest.approx(r['torchvision']['ms'] / r['ours']['ms'])
            assert f"speedup x{r['speedup']:.2f}" in printed
            for kind in ('ours', 'torchvision'):  # --profile: both models, in each row of this one-size run
                assert r[kind]['profile']['ops'] and f"profile {r['section']} bs 1 fp32 {kind}:" in printed
        elif r['section'] == 'loader':
            assert r['img_s'] > 0 and 'loader  bs 1 nw 0' in printed
    saved = json.loads(out.read_text())
    assert saved['device'] == bench.device_name(bench.torch.device('cpu'))
    assert len(saved['results']) == len(results)


def test_profile_counts_host_syncs_and_ranks_ops(bench):
    a = bench.torch.randn(64, 64)

    def step():
        (a @ a).sum().item()  # one matmul and one host read per step
        return a.mean().item()  # and a second host read (on the CPU only .item() is visible as one)
    prof = bench.profile_step(step, bench.torch.device('cpu'), iters=3)
    assert prof['syncs'] == {'aten::_local_scalar_dense': 2}
    names = [op['name'] for op in prof['ops']]
    assert 'aten::mm' in names
    assert next(op['calls'] for op in prof['ops'] if op['name'] == 'aten::mm') == 1
    times = [op['self_ms'] for op in prof['ops']]
    assert times == sorted(times, reverse=True) and times[0] > 0
    # matmul, sum, item, mean, item: the ops they call inside (mm, _local_scalar_dense, ...) cost no dispatch
    # from Python; a CPU profile has no kernels
    assert prof['ops_per_step'] == 5 and 'device_ms' not in prof


def test_step_load_splits_host_dispatches_from_device_work(bench):
    """The CUDA half of step_load on events shaped like torch.profiler's: kernels and copies (device events) add
    up to device_ms, runtime launch calls to kernel_launches, aten ops count once where entered from outside."""
    from types import SimpleNamespace as Event
    from torch.autograd import DeviceType

    def host(name, parent=None):
        return Event(name=name, cpu_parent=parent, device_type=DeviceType.CPU)

    def device(us):
        return Event(name='some_kernel', cpu_parent=None, device_type=DeviceType.CUDA,
                     time_range=SimpleRange(us))
    conv = host('aten::conv2d')
    engine = host('autograd::engine::evaluate_function: AddBackward0')
    events = [conv, host('aten::convolution', conv), host('aten::cudnn_convolution', conv),
              host('cudaLaunchKernel', conv), host('cudaLaunchKernelExC', conv), device(1500.0), device(500.0),
              engine, host('aten::add', engine), host('cudaMemcpyAsync')]
    assert bench.step_load(events, iters=2) == {'ops_per_step': 1.0, 'kernel_launches': 1.0, 'device_ms': 1.0}


class SimpleRange:
    def __init__(self, us):
        self.us = us

    def elapsed_us(self):
        return self.us


def test_results_are_saved_after_every_row(bench, tmp_path):
    path = tmp_path / 'sub' / 'bench.json'
    results = bench.Results(str(path), {'device': 'cpu'})
    results.append({'section': 'train', 'bs': 1})
    assert json.loads(path.read_text()) == {'device': 'cpu', 'results': [{'section': 'train', 'bs': 1}]}
    results.extend([{'section': 'ops', 'op': 'nms'}])
    assert [r['section'] for r in json.loads(path.read_text())['results']] == ['train', 'ops']
    assert list(tmp_path.joinpath('sub').iterdir()) == [path]  # no temporary file left
    bench.Results(None, {}).append({'section': 'test'})  # without --json nothing is written


def test_both_models_train_the_same_layers(bench):
    from lib.model.utils.config import cfg_from_file
    cfg_from_file(bench.osp.join(bench.ROOT, 'cfgs', 'res101.yml'))
    ours = bench.build_ours(21, 'res18')
    frozen = {n.split('.')[0] for n, m in ours.RCNN_base.named_modules()
              if isinstance(m, bench.nn.Conv2d) and not m.weight.requires_grad}
    assert frozen == {'0', '4'}  # conv1 and layer1, as torchvision's reference
    ours.train()
    bns = [m for m in ours.modules() if isinstance(m, bench.nn.BatchNorm2d)]
    assert bns and not any(m.training or m.weight.requires_grad for m in bns)  # frozen, as FrozenBatchNorm2d


def test_torchvision_reference_has_the_originals_shape(bench):
    from lib.model.utils.config import cfg
    model = bench.build_torchvision_c4(21, 600, 1000, depth=18)
    assert model.rpn._pre_nms_top_n == {'training': cfg.TRAIN.RPN_PRE_NMS_TOP_N, 'testing': cfg.TEST.RPN_PRE_NMS_TOP_N}
    assert model.rpn._post_nms_top_n == {'training': cfg.TRAIN.RPN_POST_NMS_TOP_N,
                                         'testing': cfg.TEST.RPN_POST_NMS_TOP_N}
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == cfg.TRAIN.BATCH_SIZE
    assert model.roi_heads.nms_thresh == cfg.TEST.NMS and model.roi_heads.detections_per_img == 100
    assert model.rpn.anchor_generator.sizes == ((128, 256, 512),)
    assert model.roi_heads.box_predictor.cls_score.in_features == 512  # resnet18 layer4 width


def test_bench_ops_cpu_smoke(load_tool, tmp_path, capsys):
    bench_ops = load_tool('bench_ops')
    out = tmp_path / 'ops.json'
    rows = bench_ops.main(['--device', 'cpu', '--quick', '--json', str(out)])
    printed = capsys.readouterr().out
    assert [r['op'] for r in rows[:2]] == ['nms', 'nms'] and {r['op'] for r in rows[2:]} == {
        'roi_pool', 'roi_align (sampling_ratio 2)', 'roi_align (sampling_ratio 0)'}
    assert all(r['agrees'] for r in rows) and 'WARNING' not in printed and 'differ' not in printed
    assert all(r['ratio'] == pytest.approx(r['ours_ms'] / r['torchvision_ms']) for r in rows)
    assert json.loads(out.read_text())['rows'] == rows
    assert not any(r['case'].endswith((', fwd', ', bwd')) for r in rows)  # --split is off on a CPU by default


def test_bench_ops_split_times_forward_and_backward_apart(load_tool):
    bench_ops = load_tool('bench_ops')
    rows = bench_ops.bench_roi_ops(bench_ops.torch.device('cpu'), quick=True, split=True)
    assert [r['case'] for r in rows if r['op'] == 'roi_pool'] == [
        '128 rois, fwd+bwd', '128 rois, fwd', '128 rois, bwd']
    assert len(rows) == 9 and all(r['agrees'] and r['ours_ms'] > 0 and r['torchvision_ms'] > 0 for r in rows)


def test_random_weights_give_both_rpns_the_same_proposals(bench):
    """Plain random weights make torchvision's RPN drop every proposal at 600 x 1000 (its head then runs on
    nothing) while ours pads to 300: comparable_random_weights must leave both with a full set."""
    from lib.model.utils.config import cfg, cfg_from_file, cfg_from_list
    cfg_from_file(bench.osp.join(bench.ROOT, 'cfgs', 'res101.yml'))
    cfg_from_list(['ANCHOR_SCALES', '[8, 16, 32]'])
    torch = bench.torch
    torch.manual_seed(0)
    ours = bench.build_ours(21, 'res50').eval()
    tv = bench.build_torchvision_c4(21, 600, 1000, depth=50).eval()
    for m in (ours, tv):
        last_bns = [b.bn3 for b in m.modules() if hasattr(b, 'conv3') and hasattr(b, 'bn3')]
        assert len(last_bns) == 16  # ResNet-50: 3 + 4 + 6 + 3 bottlenecks
        assert all(not bn.weight.any() for bn in last_bns)
    ours_in, tv_in = bench.make_inputs(1, 600, 1000, 4, 21, torch.device('cpu'))
    with torch.no_grad():
        n_ours = bench.count_proposals(ours, lambda: ours(*ours_in))
        n_tv = bench.count_proposals(tv, lambda: tv(tv_in[0]))
    assert n_ours == n_tv == cfg.TEST.RPN_POST_NMS_TOP_N == 300


def test_rows_warn_when_the_heads_run_on_unequal_rois(bench, capsys):
    from lib.model.utils.config import cfg_from_file
    cfg_from_file(bench.osp.join(bench.ROOT, 'cfgs', 'res101.yml'))  # TEST 300 rois, TRAIN.BATCH_SIZE 128
    timing = {'ms': 10.0, 'img_s': 100.0, 'peak_mb_per_img': 1.0}
    full = {'section': 'test', 'bs': 1, 'amp': 'fp32', 'speedup': 1.0,
            'ours': dict(timing, proposals=300), 'torchvision': dict(timing, proposals=290)}
    bench.print_row(full)
    assert 'WARNING' not in capsys.readouterr().out
    small = dict(full, ours=dict(timing, proposals=46), torchvision=dict(timing, proposals=47))
    bench.print_row(small)
    out = capsys.readouterr().out
    assert 'proposals/img 46 / 47' in out and 'run on 300 (ours, a fixed count) and 47 (torchvision)' in out
    train = dict(small, section='train', torchvision=dict(timing, proposals=2000))  # both sample 128
    bench.print_row(train)
    assert 'WARNING' not in capsys.readouterr().out


def test_graph_rows_are_cuda_only_and_printed_with_their_speedup(bench, capsys):
    assert bench.parse_args(['--device', 'cpu']).graph is False
    assert bench.model_kinds(bench.parse_args(['--device', 'cpu'])) == ('ours', 'torchvision')
    with pytest.raises(SystemExit):
        bench.parse_args(['--device', 'cpu', '--graph'])
    capsys.readouterr()
    timing = {'img_s': 100.0, 'peak_mb_per_img': 1.0, 'proposals': 300}
    row = {'section': 'train', 'bs': 4, 'amp': 'bf16', 'ours': dict(timing, ms=45.0),
           'torchvision': dict(timing, ms=90.0), 'ours_graph': dict(timing, ms=30.0)}
    bench.add_speedups(row)
    assert row['speedup'] == pytest.approx(2.0) and row['graph_speedup'] == pytest.approx(3.0)
    bench.print_row(row)
    out = capsys.readouterr().out
    assert 'speedup x2.00' in out
    assert 'ours replayed from a CUDA graph     30.00 ms' in out and 'speedup x3.00' in out


def test_a_failed_capture_is_reported_and_skipped(bench, capsys):
    def make():
        raise RuntimeError('operation not permitted when stream is capturing')
    assert bench.capture_or_warn(make, 'train bs 4 bf16') is None
    assert ('WARNING: train bs 4 bf16: the CUDA graph capture failed: RuntimeError: operation not permitted'
            in capsys.readouterr().out)


def fake_rows(keys, ms):
    timing = {'img_s': 1.0, 'peak_mb_per_img': 1.0, 'proposals': None}
    return [{'section': k.split(':')[0], 'bs': int(k.split(':')[1]), 'amp': k.split(':')[2],
             'ours_graph': dict(timing, ms=ms)} for k in keys]


def test_graph_rows_run_in_a_child_process_and_a_crash_costs_only_its_row(bench, tmp_path, capsys):
    args = bench.parse_args(['--device', 'cuda', '--bs', '1', '4', '--amp', 'fp32', '--json',
                             str(tmp_path / 'bench.json')])
    results = bench.Results(args.json, {})
    timing = {'img_s': 10.0, 'peak_mb_per_img': 1.0, 'proposals': 2000}
    for section, bs in (('train', 1), ('train', 4), ('test', 1)):
        results.append({'section': section, 'bs': bs, 'amp': 'fp32', 'ours': dict(timing, ms=40.0),
                        'torchvision': dict(timing, ms=80.0), 'speedup': 2.0})
    results.append({'section': 'loader', 'img_s': 100.0})
    asked = []

    class Done:
        def __init__(self, returncode):
            self.returncode = returncode

    def run(argv):  # child 1 measures one row and dies in the second; child 2 dies on that row as its first
        child = bench.parse_args(argv[2:])
        keys = child.graph_rows.split(',')
        asked.append(keys)
        assert (child.device, child.bs, child.amp) == ('cuda', [1, 4], ['fp32'])
        assert child.graph_child.endswith('.json')
        with open(child.graph_child, 'w') as f:
            json.dump({'results': fake_rows({1: keys[:1], 2: [], 3: keys}[len(asked)], ms=20.0)}, f)
        return Done(0 if len(asked) == 3 else -11)

    bench.run_graph_rows(args, results, run=run)
    assert asked == [['train:1:fp32', 'train:4:fp32', 'test:1:fp32'], ['train:4:fp32', 'test:1:fp32'],
                     ['test:1:fp32']]
    first, crashed, test_row, _ = results
    assert first['ours_graph']['ms'] == 20.0 and first['graph_speedup'] == pytest.approx(4.0)
    assert first['ours_graph']['proposals'] == 2000  # the eager row's count
    assert 'ours_graph' not in crashed
    assert crashed['graph_error'] == 'the process replaying the graphs ended with signal SIGSEGV as its first row'
    assert test_row['graph_speedup'] == pytest.approx(4.0)
    out = capsys.readouterr().out
    assert ('WARNING: the process replaying the graphs ended with signal SIGSEGV after 1 graph rows; 2 rows from '
            'train bs 4 fp32 on go to a new process') in out
    assert 'WARNING: train bs 4 fp32: the process replaying the graphs ended with signal SIGSEGV as its first row; ' \
        '1 graph rows after it go to a new process' in out
    assert out.count('ours replayed from a CUDA graph') == 2
    saved = json.loads((tmp_path / 'bench.json').read_text())['results']
    assert saved[1]['graph_error'].endswith('its first row') and saved[2]['ours_graph']['ms'] == 20.0
    assert (tmp_path / 'bench_graph_rows.json').exists()  # the child's own file stays, for a run stopped early

    def quiet_child(argv):  # ends well, measures nothing: no endless relaunching
        asked.append(argv)
        return Done(0)
    asked.clear()
    bench.run_graph_rows(args, results, run=quiet_child)
    assert len(asked) == 1 and all(r['graph_error'].endswith('without measuring it') for r in results[:3])


def test_a_graph_rows_child_saves_a_row_before_profiling_it(bench, tmp_path, monkeypatch):
    """A crash in the profiler must not take the row's timing with it: the child's file holds the row first."""
    path = tmp_path / 'rows.json'
    args = bench.parse_args(['--device', 'cuda', '--graph_child', str(path), '--graph_rows', 'train:4:bf16'])
    results = bench.Results(args.graph_child, {})
    row = {'section': 'train', 'bs': 4, 'amp': 'bf16', 'ours_graph': {'ms': 30.0}}

    def profiler_crash(fn, device):
        assert json.loads(path.read_text())['results'] == [row]
        raise SystemExit(-11)
    monkeypatch.setattr(bench, 'profile_step', profiler_crash)
    with pytest.raises(SystemExit):
        bench.add_profile(args, row, 'ours_graph', None, torch.device('cpu'), results)
    assert json.loads(path.read_text())['results'] == [{'section': 'train', 'bs': 4, 'amp': 'bf16',
                                                        'ours_graph': {'ms': 30.0}}]

    monkeypatch.setattr(bench, 'profile_step', lambda fn, device: {'ops': []})
    row2 = dict(row, bs=1, ours_graph={'ms': 10.0})
    bench.add_profile(args, row2, 'ours_graph', None, torch.device('cpu'), results)
    bench.finish_row(args, row2, results)  # after add_profile: recorded once
    saved = json.loads(path.read_text())['results']
    assert len(saved) == 2 and saved[1]['ours_graph'] == {'ms': 10.0, 'profile': {'ops': []}}


def test_a_graph_rows_child_measures_only_its_rows(bench, tmp_path, capsys):
    """The child's own code path, on the CPU: GraphedStep refuses CPU tensors, so each row it was given comes
    back with that reason, and nothing else is measured."""
    path = tmp_path / 'rows.json'
    rows = bench.main(['--device', 'cpu', '--net', 'res18', '--height', '64', '--width', '96', '--bs', '1', '2',
                       '--iters', '1', '--warmup', '0', '--graph_child', str(path), '--graph_rows',
                       'train:2:fp32,test:1:fp32'])
    assert [bench.row_key(r) for r in rows] == ['train:2:fp32', 'test:1:fp32']
    for r in rows:
        assert 'ours' not in r and 'torchvision' not in r
        assert r['graph_error'].startswith('the CUDA graph capture failed: ValueError: GraphedStep: CUDA graphs need')
    assert json.loads(path.read_text())['results'] == rows
    assert 'device:' not in capsys.readouterr().out  # the parent prints the header and the rows


def test_the_graph_rows_child_is_this_script_with_the_parents_settings(bench, tmp_path):
    """run_graph_rows with a real child process (on the CPU, where every capture is refused with a reason)."""
    args = bench.parse_args(['--device', 'cpu', '--net', 'res18', '--height', '64', '--width', '96', '--bs', '1',
                             '--iters', '1', '--warmup', '0', '--json', str(tmp_path / 'b.json')])
    results = bench.Results(args.json, {})
    timing = {'ms': 1.0, 'img_s': 1.0, 'peak_mb_per_img': 1.0, 'proposals': 10}
    results.append({'section': 'test', 'bs': 1, 'amp': 'fp32', 'ours': timing, 'torchvision': timing})
    bench.run_graph_rows(args, results)
    assert results[0]['graph_error'].startswith('the CUDA graph capture failed: ValueError: GraphedStep')


def test_set_reaches_this_projects_model_and_the_graph_rows_child(bench, monkeypatch, capsys):
    """--set KEY VALUE (last on the line, as in every script) applies after the benchmark's own settings: with
    CHANNELS_LAST the model's trunk gets NHWC images; the graph rows' child gets the same --set."""
    seen = []
    build_ours = bench.build_ours

    def build(*args):
        model = build_ours(*args)
        model.RCNN_base[0].register_forward_pre_hook(
            lambda m, inputs: seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last)))
        return model
    monkeypatch.setattr(bench, 'build_ours', build)
    common = ['--device', 'cpu', '--net', 'res18', '--height', '64', '--width', '96', '--bs', '1', '--iters', '1',
              '--warmup', '0', '--sections', 'train']
    for layout in ('False', 'True'):
        seen.clear()
        rows = bench.main(common + ['--set', 'CHANNELS_LAST', layout, 'TRAIN.BATCH_SIZE', '32'])
        assert seen and set(seen) == {layout == 'True'}
        assert bench.cfg.TRAIN.BATCH_SIZE == 32 and rows[0]['ours']['ms'] > 0
    assert '| --set CHANNELS_LAST True TRAIN.BATCH_SIZE 32' in capsys.readouterr().out
    args = bench.parse_args(['--device', 'cuda', '--json', 'b.json', '--set', 'CHANNELS_LAST', 'True'])
    child = bench.graph_child_argv(args, [{'section': 'train', 'bs': 4, 'amp': 'bf16'}], 'rows.json')
    assert child[-3:] == ['--set', 'CHANNELS_LAST', 'True']
    assert bench.parse_args(child[2:]).set_cfgs == ['CHANNELS_LAST', 'True']
