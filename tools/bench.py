"""Benchmark suite: this project's Faster R-CNN against torchvision's, side by side, in one run on one device.

Sections (all on the same device, same inputs, printed as one table with ratios):
  train   training step, res101 C4, batch 1 and 4, fp32 and bf16 autocast: ms/iter, img/s, peak memory
  test    ms/image at batch 1 including post-processing (per-class NMS at TEST.NMS, top 100)
  ops     NMS / ROIPool / ROIAlign against torchvision.ops (tools/bench_ops.py)
  loader  the data loader alone (img/s with --nw workers) on the synthetic shapes set

On CUDA the train and test rows also time this project's step captured in one CUDA graph and replayed
(lib/model/utils/cuda_graph.py: the same model, inputs and work, without the host's per-op dispatch); --no-graph
leaves it out. Those graph rows run in a child process after the others: the first lent H100 run of this script
segfaulted in the first replay of the first graph row, after the eager and torchvision rows had run in the same
process, while the same replays in fresh processes ran (docs/BENCHMARKS.md). A row whose child dies is
measured again in a new child, as its first row; only a row that kills a fresh child is lost (reported).

    python tools/bench.py --device cuda                 # the full GPU run recorded in docs/BENCHMARKS.md
    python tools/bench.py --device cpu --quick          # small sizes, runs (slowly) anywhere
    python tools/bench.py --device cuda --sections train --net res50 --bs 8 --amp bf16 --set CHANNELS_LAST True
"""
import argparse
import json
import os
import os.path as osp
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..'))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

sys.path.insert(0, osp.join(ROOT, 'tools'))
import bench_ops  # noqa: E402  (the operator section, and the shared timing helpers)
from bench_ops import device_name  # noqa: E402
from lib.model.utils.config import cfg, cfg_from_file, cfg_from_list  # noqa: E402


def time_ms(fn, device, warmup, iters):
    """Median time of fn() in ms after warm-up: CUDA events on a GPU, perf_counter elsewhere."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


# events that make the host wait for the device: .item() (aten::_local_scalar_dense, the only one a CPU run sees),
# and on CUDA the stream synchronisations of every device-to-host copy (.cpu(), .tolist(), nonzero())
SYNC_EVENTS = ('aten::_local_scalar_dense', 'cudaStreamSynchronize', 'cudaDeviceSynchronize', 'cudaEventSynchronize')


def profile_step(fn, device, iters=3, top=12):
    """torch.profiler over ``iters`` calls of fn (after one more warm-up call): the ``top`` ops by self time on
    the device (CPU time on the CPU), per call of fn, and the host synchronisations per call. Returns
    {'ops': [{'name', 'self_ms', 'calls'}], 'syncs': {event: count per call}}."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    fn()
    bench_ops.sync(device)
    with profile(activities=activities) as prof:
        for _ in range(iters):
            fn()
        bench_ops.sync(device)
    events = prof.key_averages()

    def self_time(e):
        if device.type == 'cuda':
            return getattr(e, 'self_device_time_total', None) or getattr(e, 'self_cuda_time_total', 0.0)
        return e.self_cpu_time_total
    ranked = sorted((e for e in events if self_time(e) > 0), key=self_time, reverse=True)[:top]
    syncs = {e.key: e.count / iters for e in events if e.key in SYNC_EVENTS and e.count}
    result = {'ops': [{'name': e.key, 'self_ms': self_time(e) / 1000.0 / iters, 'calls': e.count / iters}
                      for e in ranked],
              'syncs': syncs}
    result.update(step_load(prof.events(), iters))
    return result


KERNEL_LAUNCHES = ('cudaLaunchKernel', 'cudaLaunchKernelExC', 'cuLaunchKernel', 'cuLaunchKernelEx')


def step_load(events, iters):
    """What a step asks of the host and of the device, per step, from torch.profiler's events:
    ops_per_step, the aten ops entered from outside another aten op (from Python or the autograd engine: each
    costs the host a dispatch whatever its size); on CUDA also kernel_launches and device_ms, the time the
    kernels, copies and memsets ran. A step much longer than device_ms waits on the host, not on the GPU."""
    from torch.autograd import DeviceType
    ops = launches = 0
    device_us = 0.0
    for e in events:
        if getattr(e, 'device_type', DeviceType.CPU) != DeviceType.CPU:
            device_us += e.time_range.elapsed_us()
        elif e.name in KERNEL_LAUNCHES:
            launches += 1
        elif e.name.startswith('aten::') and (e.cpu_parent is None or not e.cpu_parent.name.startswith('aten::')):
            ops += 1
    load = {'ops_per_step': ops / iters}
    if launches or device_us:
        load.update(kernel_launches=launches / iters, device_ms=device_us / 1000.0 / iters)
    return load


def print_profile(title, prof, step_ms=None):
    syncs = ', '.join(f'{k} {v:g}' for k, v in sorted(prof['syncs'].items())) or 'none'
    print(f'profile {title}: host syncs per step: {syncs}')
    load = f"    {prof['ops_per_step']:g} aten ops dispatched per step"
    if 'device_ms' in prof:
        load += f", {prof['kernel_launches']:g} kernel launches, {prof['device_ms']:.2f} ms of device work"
        if step_ms:
            load += f' ({100 * prof["device_ms"] / step_ms:.0f}% of the {step_ms:.2f} ms step)'
    print(load)
    for op in prof['ops']:
        print(f"    {op['self_ms']:9.3f} ms  {op['calls']:7.1f} calls  {op['name'][:90]}")


def reset_peak(device):
    bench_ops.sync(device)
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return float('nan')


# ----------------------------------------------------------------------------------------------------------------
# The two models
# ----------------------------------------------------------------------------------------------------------------

def comparable_random_weights(model):
    """Random weights that give both models the same kind of proposals, in place; the work per image is unchanged.

    With plain random weights and frozen BatchNorm a deep ResNet's activations grow block after block, the RPN's
    boxes leave the image, and at 600 x 1000 every proposal of a ResNet-101 is dropped: torchvision's heads would
    then run on nothing at test and on the ground-truth boxes alone in training, while ours runs its fixed 300 /
    128 rois. So: the last BatchNorm of every residual block gets scale 0 (what ``zero_init_residual`` does), and
    the RPN's box regression gets zero weights, so that the proposals of both models are their (clipped) anchors,
    ranked by random scores. The rows print how many proposals each RPN kept."""
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, 'conv3') and hasattr(m, 'bn3'):  # Bottleneck (ResNet-50 and deeper)
                m.bn3.weight.zero_()
            elif hasattr(m, 'downsample') and hasattr(m, 'bn2'):  # BasicBlock (ResNet-18/34)
                m.bn2.weight.zero_()
        rpn_box = model.RCNN_rpn.RPN_bbox_pred if hasattr(model, 'RCNN_rpn') else model.rpn.head.bbox_pred
        rpn_box.weight.zero_()
        rpn_box.bias.zero_()
    return model


def count_proposals(model, run):
    """Proposals per image that ``model``'s RPN hands its head during ``run()`` (ours: the non-padding rows of its
    fixed [B, R, 5] rois; torchvision: the length of each image's list)."""
    seen = []
    if hasattr(model, 'RCNN_rpn'):
        def hook(module, inputs, output):
            seen.extend((output[0][:, :, 1:] != 0).any(dim=2).sum(dim=1).tolist())
        handle = model.RCNN_rpn.register_forward_hook(hook)
    else:
        def hook(module, inputs, output):
            seen.extend(len(b) for b in output[0])
        handle = model.rpn.register_forward_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return min(seen) if seen else 0


def build_torchvision_c4(num_classes, min_size, max_size, depth=101):
    """torchvision's FasterRCNN in the original's shape: ResNet-<depth> C4 (conv1..layer3 backbone, layer4 head),
    anchors 128/256/512 x {0.5, 1, 2}, 12000/2000 train and 6000/300 test proposals, 128 RoIs per image,
    frozen BN and frozen conv1+layer1 (as RESNET.FIXED_BLOCKS 1), TEST.NMS 0.3, top 100."""
    import torchvision.models as tvm
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

    r = getattr(tvm, f'resnet{depth}')(weights=None, norm_layer=FrozenBatchNorm2d)
    c4 = r.layer3[-1].conv3.out_channels if depth >= 50 else r.layer3[-1].conv2.out_channels
    backbone = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)
    for m in [r.conv1, r.layer1]:
        for p in m.parameters():
            p.requires_grad_(False)
    backbone.out_channels = c4
    head = nn.Sequential(r.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = FasterRCNN(
        backbone, num_classes=None, min_size=min_size, max_size=max_size,
        rpn_anchor_generator=AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),)),
        rpn_pre_nms_top_n_train=cfg.TRAIN.RPN_PRE_NMS_TOP_N, rpn_post_nms_top_n_train=cfg.TRAIN.RPN_POST_NMS_TOP_N,
        rpn_pre_nms_top_n_test=cfg.TEST.RPN_PRE_NMS_TOP_N, rpn_post_nms_top_n_test=cfg.TEST.RPN_POST_NMS_TOP_N,
        box_roi_pool=MultiScaleRoIAlign(['0'], output_size=cfg.POOLING_SIZE, sampling_ratio=0),
        box_head=head, box_predictor=FastRCNNPredictor(2 * c4, num_classes),
        box_batch_size_per_image=cfg.TRAIN.BATCH_SIZE, box_score_thresh=0.0, box_nms_thresh=cfg.TEST.NMS,
        box_detections_per_img=100)
    return comparable_random_weights(model)


def build_ours(num_classes, net):
    """This project's model as it trains from the original's pretrained weights (random values here): conv1 and
    layer1 frozen (freeze_stem, RESNET.FIXED_BLOCKS 1), BatchNorm frozen, like the torchvision reference."""
    from lib.model.utils.script_utils import build_detector
    classes = ['__background__'] + [f'c{i}' for i in range(1, num_classes)]
    return comparable_random_weights(build_detector(net, classes, freeze_stem=True))


def make_inputs(bs, h, w, num_gt, num_classes, device, seed=0):
    """Identical images and boxes for both models: ours as (im_data, im_info, gt_boxes, num_boxes), torchvision's
    as (list of images, list of target dicts)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(bs, 3, h, w, generator=g) * 255 - 128
    x1 = torch.rand(bs, num_gt, generator=g) * (w * 0.6)
    y1 = torch.rand(bs, num_gt, generator=g) * (h * 0.6)
    bw = 32 + torch.rand(bs, num_gt, generator=g) * (w * 0.4 - 32)
    bh = 32 + torch.rand(bs, num_gt, generator=g) * (h * 0.4 - 32)
    labels = torch.randint(1, num_classes, (bs, num_gt), generator=g)
    boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], dim=2)
    gt = torch.zeros(bs, cfg.MAX_NUM_GT_BOXES, 5)
    gt[:, :num_gt, :4] = boxes
    gt[:, :num_gt, 4] = labels.float()
    ours = (images.to(device), torch.tensor([[h, w, 1.0]] * bs, device=device), gt.to(device),
            torch.full((bs,), num_gt, dtype=torch.long, device=device))
    tv_images = [im.to(device) for im in images]
    tv_targets = [{'boxes': boxes[i].to(device), 'labels': labels[i].to(device)} for i in range(bs)]
    return ours, (tv_images, tv_targets)


def sgd_for(model):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)


def autocast_ctx(device, amp):
    if amp == 'bf16':
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


AMP_DTYPES = {'fp32': None, 'bf16': torch.bfloat16}


def model_kinds(args):
    """The models of a train or test row in this process: ours and torchvision's, or in a graph-rows child
    process (--graph_child) ours replayed from a CUDA graph alone (run_graph_rows)."""
    return ('ours_graph',) if args.graph_child else ('ours', 'torchvision')


def row_key(row):
    return f"{row['section']}:{row['bs']}:{row['amp']}"


def wanted(args, row):
    """Whether this process measures the row: every row, except in a graph-rows child (those it was given)."""
    return not args.graph_child or row_key(row) in args.graph_rows.split(',')


def capture_or_warn(make, what, row=None):
    """make() -> a GraphedStep, or None after printing why the capture failed (the rest of the run goes on); the
    reason also goes into row['graph_error']."""
    try:
        return make()
    except Exception as e:  # a GPU run is too scarce to lose to one row
        message = f'the CUDA graph capture failed: {type(e).__name__}: {e}'
        print(f'WARNING: {what}: {message}', flush=True)
        if row is not None:
            row['graph_error'] = message
        return None


def finish_row(args, row, results):
    """Records a measured row; prints it (a graph-rows child leaves the printing to its parent)."""
    if any(r is row for r in results):  # add_profile recorded it already
        results.save()
        return
    if not args.graph_child:
        add_speedups(row)
    results.append(row)
    if not args.graph_child:
        print_row(row)


def add_profile(args, row, kind, fn, device, results):
    """row[kind]['profile'] = profile_step(fn). A graph-rows child records the row's timing first: CUPTI (the
    profiler) has crashed processes that replay CUDA graphs (pytorch/pytorch#150957), and such a crash must
    cost the profile, not the measured row."""
    if args.graph_child:
        finish_row(args, row, results)
    row[kind]['profile'] = profile_step(fn, device)
    results.save()


def graph_child_argv(args, rows, path):
    """The command line of a child process that measures the graph rows of ``rows`` as this run would have."""
    argv = [sys.executable, osp.abspath(__file__), '--device', args.device, '--net', args.net,
            '--sections', ','.join(sorted({r['section'] for r in rows})),
            '--bs', *map(str, args.bs), '--amp', *args.amp, '--height', str(args.height), '--width', str(args.width),
            '--warmup', str(args.warmup), '--iters', str(args.iters), '--num_classes', str(args.num_classes),
            '--graph_child', path, '--graph_rows', ','.join(row_key(r) for r in rows)]
    return argv + (['--profile'] if args.profile else []) + (['--set', *args.set_cfgs] if args.set_cfgs else [])


def describe_exit(returncode):
    if returncode < 0:
        try:
            return f'signal {signal.Signals(-returncode).name}'
        except ValueError:
            return f'signal {-returncode}'
    return f'exit status {returncode}'


def run_graph_rows(args, results, run=subprocess.run):
    """Adds 'ours replayed from a CUDA graph' to every train and test row of ``results``, measured in a child
    process (this script with --graph_child) that writes each row as it finishes. When a child dies (the
    segfault of the first lent H100 run), the row it was on goes to a new child, where it is the first: the
    crash came in the first graph row after other work in the same process, and fresh processes replayed the
    same graphs. Only a row that kills a child as its first row gets a graph_error; a new child measures the
    rows after it."""
    todo = [r for r in results if r.get('section') in ('train', 'test')]
    while todo:
        with tempfile.TemporaryDirectory() as tmp:
            # beside --json when there is one, so that a run stopped at a time limit keeps the child's rows
            path = osp.splitext(args.json)[0] + '_graph_rows.json' if args.json else osp.join(tmp, 'graph_rows.json')
            if osp.exists(path):
                os.remove(path)
            returncode = run(graph_child_argv(args, todo, path)).returncode
            done = []
            if osp.exists(path):
                with open(path) as f:
                    done = json.load(f)['results']
        for measured in done:
            row = todo.pop(0)  # the child measures its rows in the order given
            if row_key(measured) != row_key(row):
                raise RuntimeError(f'graph rows: expected {row_key(row)} from the child, got {row_key(measured)}')
            if 'ours_graph' in measured:
                row['ours_graph'] = dict(measured['ours_graph'], proposals=row['ours']['proposals'])
                add_speedups(row)
                print_graph_row(row)
            else:
                row['graph_error'] = measured.get('graph_error', 'not measured')
        if returncode != 0 and todo:
            how = f'the process replaying the graphs ended with {describe_exit(returncode)}'
            row = todo[0]
            what = f"{row['section']} bs {row['bs']} {row['amp']}"
            if done:
                print(f'WARNING: {how} after {len(done)} graph rows; {len(todo)} rows from {what} on go to a new '
                      'process', flush=True)
            else:
                todo.pop(0)
                row['graph_error'] = f'{how} as its first row'
                print(f"WARNING: {what}: {row['graph_error']}; {len(todo)} graph rows after it go to a new process",
                      flush=True)
        elif todo:  # a child that ended well without all its rows: nothing a new one would do better
            for row in todo:
                row['graph_error'] = 'the process replaying the graphs ended without measuring it'
            print(f'WARNING: {len(todo)} graph rows were not measured', flush=True)
            todo = []
        results.save()


def bench_train(args, device, num_classes, results):
    from lib.model.utils.cuda_graph import GraphedStep, train_step
    for bs in args.bs:
        for amp in args.amp:
            row = {'section': 'train', 'bs': bs, 'amp': amp}
            if not wanted(args, row):
                continue
            ours_in, tv_in = make_inputs(bs, args.height, args.width, 4, num_classes, device)
            for kind in model_kinds(args):
                torch.manual_seed(0)
                if kind == 'ours':
                    model = build_ours(num_classes, args.net).to(device).train()

                    def step(model=model, opt=sgd_for(model)):
                        with autocast_ctx(device, amp):
                            out = model(*ours_in)
                            loss = out.rpn_loss_cls.mean() + out.rpn_loss_bbox.mean() + \
                                out.RCNN_loss_cls.mean() + out.RCNN_loss_bbox.mean()
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                elif kind == 'ours_graph':
                    model = build_ours(num_classes, args.net).to(device).train()
                    graphed = capture_or_warn(lambda model=model: GraphedStep(
                        train_step(model, sgd_for(model), AMP_DTYPES[amp]), ours_in), f'train bs {bs} {amp}', row)
                    if graphed is None:
                        del model
                        continue

                    def step(graphed=graphed):
                        graphed(*ours_in)
                else:
                    model = build_torchvision_c4(num_classes, args.height, args.width, int(args.net[3:]))
                    model = model.to(device).train()

                    def step(model=model, opt=sgd_for(model)):
                        with autocast_ctx(device, amp):
                            loss = sum(model(*tv_in).values())
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                # one more warm-up step; a replay runs no Python hook, so the graph row takes the eager count
                # (filled in by run_graph_rows)
                proposals = None if kind == 'ours_graph' else count_proposals(model, step)
                reset_peak(device)
                ms = time_ms(step, device, args.warmup, args.iters)
                row[kind] = {'ms': ms, 'img_s': bs * 1000.0 / ms, 'peak_mb_per_img': peak_mb(device) / bs,
                             'proposals': proposals}
                if args.profile and bs == max(args.bs) and amp == args.amp[-1]:
                    add_profile(args, row, kind, step, device, results)
                del model, step
            finish_row(args, row, results)


def bench_test(args, device, num_classes, results):
    from lib.model.utils.cuda_graph import GraphedStep, detect_step
    from lib.model.utils.test_utils import detections_from_table, im_detect, postprocess_detections
    for amp in args.amp:
        row = {'section': 'test', 'bs': 1, 'amp': amp}
        if not wanted(args, row):
            continue
        ours_in, tv_in = make_inputs(1, args.height, args.width, 4, num_classes, device)
        for kind in model_kinds(args):  # one model alive at a time, so each peak holds its own weights only
            torch.manual_seed(0)
            if kind == 'ours':
                model = build_ours(num_classes, args.net).to(device).eval()

                @torch.no_grad()
                def fn(model=model):
                    with autocast_ctx(device, amp):
                        scores, boxes = im_detect(model, ours_in[0], ours_in[1])
                    return postprocess_detections(scores[0], boxes[0], thresh=0.0, nms_thresh=cfg.TEST.NMS,
                                                  max_per_image=100)
            elif kind == 'ours_graph':
                model = build_ours(num_classes, args.net).to(device).eval()
                graphed = capture_or_warn(lambda model=model: GraphedStep(
                    detect_step(model, 0.0, cfg.TEST.NMS, 100, AMP_DTYPES[amp]), ours_in[:2]), f'test {amp}', row)
                if graphed is None:
                    del model
                    continue

                def fn(graphed=graphed):  # what postprocess_detections returns, from the same one copy
                    return detections_from_table(graphed(*ours_in[:2]).cpu().numpy(), num_classes)
            else:
                model = build_torchvision_c4(num_classes, args.height, args.width, int(args.net[3:]))
                model = model.to(device).eval()

                @torch.no_grad()
                def fn(model=model):
                    with autocast_ctx(device, amp):
                        return model(tv_in[0])
            proposals = None if kind == 'ours_graph' else count_proposals(model, fn)
            reset_peak(device)
            ms = time_ms(fn, device, args.warmup, args.iters)
            row[kind] = {'ms': ms, 'img_s': 1000.0 / ms, 'peak_mb_per_img': peak_mb(device), 'proposals': proposals}
            if args.profile and amp == args.amp[-1]:
                add_profile(args, row, kind, fn, device, results)
            del model, fn
        finish_row(args, row, results)


def add_speedups(row):
    """speedup: torchvision's time over ours (eager); graph_speedup: over ours replayed from a CUDA graph."""
    row['speedup'] = row['torchvision']['ms'] / row['ours']['ms']
    if 'ours_graph' in row:
        row['graph_speedup'] = row['torchvision']['ms'] / row['ours_graph']['ms']


def bench_loader(args, results):
    from torch.utils.data import DataLoader

    from lib.roi_data_layer.roibatchLoader import roibatchLoader
    from lib.roi_data_layer.roidb import combined_roidb
    from lib.roi_data_layer.sampler import sampler
    imdb, roidb, ratio_list, ratio_index = combined_roidb('shapes_trainval')
    bs = max(args.bs)
    dataset = roibatchLoader(roidb, ratio_list, ratio_index, bs, imdb.num_classes, training=True)
    loader = DataLoader(dataset, batch_size=bs, sampler=sampler(len(roidb), bs), num_workers=args.nw,
                        pin_memory=torch.cuda.is_available(), persistent_workers=args.nw > 0)
    n_batches = min(args.loader_batches, len(loader))
    it = iter(loader)
    next(it)  # worker start-up is not what is measured
    t0 = time.perf_counter()
    for _ in range(n_batches - 1):
        next(it)
    dt = time.perf_counter() - t0
    row = {'section': 'loader', 'bs': bs, 'nw': args.nw, 'img_s': (n_batches - 1) * bs / max(dt, 1e-9),
           'scales': list(cfg.TRAIN.SCALES), 'max_size': cfg.TRAIN.MAX_SIZE}
    results.append(row)
    print(f"loader  bs {bs} nw {args.nw} scale {row['scales']}: {row['img_s']:.1f} img/s")


def bench_ops_section(args, device, results):
    rows = bench_ops.bench_nms(device, args.quick) + bench_ops.bench_roi_ops(device, args.quick)
    for r in rows:
        r['section'] = 'ops'
        print(f"ops    {r['op']:<28} {r['case']:<32} ours {r['ours_ms']:9.2f} ms | torchvision "
              f"{r['torchvision_ms']:9.2f} ms | ratio {r['ratio']:.2f}x", flush=True)
    results.extend(rows)


def head_rois(row, kind):
    """Rois per image the model's roi head runs on in this row: ours always runs the original's fixed count
    (TEST.RPN_POST_NMS_TOP_N, zero-padded; TRAIN.BATCH_SIZE sampled), torchvision those its RPN kept (at most
    TRAIN.BATCH_SIZE sampled in training)."""
    test = row['section'] == 'test'
    if kind == 'ours':
        return cfg.TEST.RPN_POST_NMS_TOP_N if test else cfg.TRAIN.BATCH_SIZE
    kept = row[kind]['proposals']
    return kept if test else min(kept, cfg.TRAIN.BATCH_SIZE)


def print_row(row):
    o, t = row['ours'], row['torchvision']
    print(f"{row['section']:<6} bs {row['bs']} {row['amp']:<5}  ours {o['ms']:9.2f} ms {o['img_s']:7.2f} img/s "
          f"{o['peak_mb_per_img']:8.0f} MB/img | torchvision {t['ms']:9.2f} ms {t['img_s']:7.2f} img/s "
          f"{t['peak_mb_per_img']:8.0f} MB/img | speedup x{row['speedup']:.2f} | proposals/img "
          f"{o['proposals']} / {t['proposals']}", flush=True)
    ours_rois, tv_rois = head_rois(row, 'ours'), head_rois(row, 'torchvision')
    if 2 * min(ours_rois, tv_rois) < max(ours_rois, tv_rois):
        print(f"WARNING: {row['section']} bs {row['bs']}: the roi heads run on {ours_rois} (ours, a fixed count) "
              f"and {tv_rois} (torchvision) rois per image: at this input size the RPNs keep only "
              f"{o['proposals']} / {t['proposals']} proposals, so the times compare unequal work "
              "(at 600 x 1000 both keep 300 at test and 2000 in training)", flush=True)
    if 'ours_graph' in row:
        print_graph_row(row, profile=False)
    for kind in ('ours', 'torchvision', 'ours_graph'):
        if 'profile' in row.get(kind, {}):
            print_profile(f"{row['section']} bs {row['bs']} {row['amp']} {kind}", row[kind]['profile'],
                          row[kind]['ms'])


def print_graph_row(row, profile=True):
    g = row['ours_graph']
    print(f"{row['section']:<6} bs {row['bs']} {row['amp']:<5}  ours replayed from a CUDA graph {g['ms']:9.2f} ms "
          f"{g['img_s']:7.2f} img/s {g['peak_mb_per_img']:8.0f} MB/img | speedup x{row['graph_speedup']:.2f}",
          flush=True)
    if profile and 'profile' in g:
        print_profile(f"{row['section']} bs {row['bs']} {row['amp']} ours_graph", g['profile'], g['ms'])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--sections', default='train,test,ops,loader')
    p.add_argument('--net', default='res101', choices=['res18', 'res34', 'res50', 'res101', 'res152'])
    p.add_argument('--bs', type=int, nargs='+', default=None,
                   help='batch sizes (default 1 4; 1 2 with --quick or on the CPU)')
    p.add_argument('--amp', nargs='+', default=None, choices=['fp32', 'bf16'])
    p.add_argument('--height', type=int, default=None)
    p.add_argument('--width', type=int, default=None)
    p.add_argument('--warmup', type=int, default=None)
    p.add_argument('--iters', type=int, default=None)
    p.add_argument('--nw', type=int, default=2, help='loader workers for the loader section')
    p.add_argument('--loader_batches', type=int, default=50)
    p.add_argument('--num_classes', type=int, default=21)
    p.add_argument('--quick', action='store_true', help='small sizes and few iterations (CPU, CI smoke test)')
    p.add_argument('--json', default=None, help='also write the results here')
    p.add_argument('--graph', action=argparse.BooleanOptionalAction, default=None,
                   help='also time our train and test steps replayed from a CUDA graph (default: on CUDA)')
    p.add_argument('--graph_child', default=None, help=argparse.SUPPRESS)  # run_graph_rows: results file
    p.add_argument('--graph_rows', default='', help=argparse.SUPPRESS)  # run_graph_rows: section:bs:amp,...
    p.add_argument('--profile', action='store_true',
                   help='also profile both models (torch.profiler) in the train row of the largest batch and the '
                        'last --amp, and in the test row of the last --amp: top ops by self time on the device, '
                        'host synchronisations per step')
    p.add_argument('--set', dest='set_cfgs', default=None, nargs=argparse.REMAINDER,
                   help="config KEY VALUE pairs applied after the benchmark's own settings; torchvision's model "
                        'takes the shared ones too (proposal counts, POOLING_SIZE, TRAIN.BATCH_SIZE, TEST.NMS), '
                        'keys such as CHANNELS_LAST are this project\'s alone; must come last')
    args = p.parse_args(argv)
    quick = args.quick or args.device == 'cpu'
    if args.graph is None:
        args.graph = args.device.startswith('cuda')
    elif args.graph and not args.device.startswith('cuda'):
        p.error('--graph needs --device cuda (CUDA graphs)')
    args.bs = args.bs or ([1, 2] if quick else [1, 4])
    args.amp = args.amp or (['fp32'] if quick else ['fp32', 'bf16'])
    args.height = args.height or (128 if quick else 600)
    args.width = args.width or (192 if quick else 1000)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 10)
    args.iters = args.iters or (3 if quick else 50)
    if quick:
        args.loader_batches = min(args.loader_batches, 10)
    return args


class Results(list):
    """The rows measured so far. With a json path it is rewritten after every row, so a run stopped by a time
    limit keeps what it measured."""

    def __init__(self, path, header):
        super().__init__()
        self.path, self.header = path, header

    def append(self, row):
        super().append(row)
        self.save()

    def extend(self, rows):
        super().extend(rows)
        self.save()

    def save(self):
        if not self.path:
            return
        os.makedirs(osp.dirname(osp.abspath(self.path)), exist_ok=True)
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump({**self.header, 'results': list(self)}, f, indent=1)
        os.replace(tmp, self.path)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    cfg_from_file(osp.join(ROOT, 'cfgs', f'{args.net}.yml'))
    cfg_from_list(['ANCHOR_SCALES', '[8, 16, 32]', 'TRAIN.SCALES', f'[{args.height}]',
                   'TRAIN.MAX_SIZE', str(max(args.width, args.height))])
    if args.set_cfgs:
        cfg_from_list(args.set_cfgs)
    sections = set(args.sections.split(','))
    if args.graph_child:  # run_graph_rows's child: its rows go to the parent through this file
        sections &= {'train', 'test'}
    else:
        print(f'device: {device_name(device)} | torch {torch.__version__} | {args.net} '
              f'{args.height}x{args.width} | warmup {args.warmup}, median of {args.iters}'
              + (f" | --set {' '.join(args.set_cfgs)}" if args.set_cfgs else ''), flush=True)
    results = Results(args.graph_child or args.json,
                      {'device': device_name(device), 'torch': torch.__version__, 'args': vars(args)})
    for name, run in (('train', lambda: bench_train(args, device, args.num_classes, results)),
                      ('test', lambda: bench_test(args, device, args.num_classes, results)),
                      ('graph', lambda: run_graph_rows(args, results)),
                      ('ops', lambda: bench_ops_section(args, device, results)),
                      ('loader', lambda: bench_loader(args, results))):
        if name == 'graph' and args.graph and not args.graph_child:
            run()
        elif name in sections:
            run()
    return list(results)


if __name__ == '__main__':
    main()
