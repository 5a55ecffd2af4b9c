"""Smoke test of tools/bench.py at CI size: every section runs on the CPU and prints its rows."""
import json

import pytest


@pytest.fixture(scope='module')
def bench(load_tool):
    return load_tool('bench')


def test_bench_cpu_smoke(bench, tmp_path, capsys):
    out = tmp_path / 'bench.json'
    results = bench.main(['--device', 'cpu', '--quick', '--net', 'res18', '--height', '64', '--width', '96',
                          '--bs', '1', '--iters', '1', '--warmup', '0', '--nw', '0', '--loader_batches', '3',
                          '--json', str(out)])
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
        elif r['section'] == 'loader':
            assert r['img_s'] > 0 and 'loader  bs 1 nw 0' in printed
    saved = json.loads(out.read_text())
    assert saved['device'] == bench.device_name(bench.torch.device('cpu'))
    assert len(saved['results']) == len(results)


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
