"""Times the compiled ops (lib.model.roi_layers) against torchvision.ops on the same inputs and device.

    python tools/bench_ops.py --device cpu [--quick] [--json results.json] [--split]

NMS runs on RPN-like proposals (the 9 original anchors on a 38 x 63 stride-16 grid of a 600 x 1000 image,
jittered, random scores) at IoU 0.7; torchvision gets the same boxes with x2 + 1, y2 + 1 so both compute the
same pixel-inclusive IoU. ROIPool / ROIAlign time forward + backward on a [1, 1024, 38, 63] feature map at
spatial scale 1/16 with 7 x 7 output; with --split (the default on CUDA) also the forward and the backward
apart. Each row is the median of many runs after warm-up.
"""
import argparse
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lib.model.roi_layers import nms, nms_padded, roi_align, roi_pool  # noqa: E402

BASE_ANCHORS = torch.tensor([[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                             [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                             [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]], dtype=torch.float32)
IMAGE_H, IMAGE_W, STRIDE = 600, 1000, 16
FEAT_H, FEAT_W = 38, 63


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            model = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f'{model} ({torch.get_num_threads()} threads)'


def rpn_proposals(n, seed):
    """n proposals (pixel-inclusive, clipped to the image) and scores, like the RPN's pre-NMS top-n."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(FEAT_H) * STRIDE, torch.arange(FEAT_W) * STRIDE, indexing='ij')
    shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).float()
    anchors = (shifts + BASE_ANCHORS).reshape(-1, 4)
    widths = anchors[:, 2] - anchors[:, 0] + 1
    heights = anchors[:, 3] - anchors[:, 1] + 1
    delta = torch.randn(len(anchors), 4, generator=g) * 0.1
    cx = anchors[:, 0] + 0.5 * widths + delta[:, 0] * widths
    cy = anchors[:, 1] + 0.5 * heights + delta[:, 1] * heights
    w = widths * delta[:, 2].exp()
    h = heights * delta[:, 3].exp()
    boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, IMAGE_W - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, IMAGE_H - 1)
    pick = torch.randperm(len(boxes), generator=g)[:n]
    return boxes[pick].contiguous(), torch.rand(n, generator=g)


def random_rois(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([IMAGE_W - 64.0, IMAGE_H - 64.0])
    wh = torch.rand(n, 2, generator=g) * 380 + 16
    x2y2 = torch.minimum(xy + wh, torch.tensor([IMAGE_W - 1.0, IMAGE_H - 1.0]))
    return torch.cat([torch.zeros(n, 1), xy, x2y2], 1)


def sync(device):
    """Wait until the device has finished the work queued so far (a no-op on the CPU)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def paired_median_ms(fn_ours, fn_theirs, device, warmup, iters):
    """Median wall time of each function in ms; the two alternate so load from other processes hits both."""
    def once(fn):
        start = time.perf_counter()
        fn()
        sync(device)
        return (time.perf_counter() - start) * 1e3

    for _ in range(warmup):
        fn_ours()
        fn_theirs()
    sync(device)
    ours, theirs = [], []
    for _ in range(iters):
        ours.append(once(fn_ours))
        theirs.append(once(fn_theirs))
    return statistics.median(ours), statistics.median(theirs)


def _row(op, case, ours_ms, torchvision_ms, agrees):
    """One result: the two medians, their ratio (ours / torchvision; below 1 is faster), and whether the two ops
    gave the same result."""
    return dict(op=op, case=case, ours_ms=ours_ms, torchvision_ms=torchvision_ms, ratio=ours_ms / torchvision_ms,
                agrees=agrees)


def bench_nms(device, quick):
    rows = []
    for n in (12000, 6000):
        boxes, scores = rpn_proposals(n, seed=n)
        boxes, scores = boxes.to(device), scores.to(device)
        shifted = boxes.clone()
        shifted[:, 2:] += 1
        ours = nms(boxes, scores, 0.7)
        theirs = torchvision.ops.nms(shifted, scores, 0.7)
        agrees = torch.equal(ours, theirs)
        if not agrees:  # timed all the same (a GPU run is too scarce to lose), and flagged in the row
            print(f'WARNING: nms on {n} boxes differs from torchvision: kept {len(ours)} vs {len(theirs)}',
                  flush=True)
        iters = 5 if quick else (50 if device.type == 'cpu' else 200)
        t_ours, t_tv = paired_median_ms(lambda: nms(boxes, scores, 0.7),
                                        lambda: torchvision.ops.nms(shifted, scores, 0.7), device, 2, iters)
        rows.append(_row('nms', f'{n} boxes @0.7 (kept {len(ours)})', t_ours, t_tv, agrees))
        if device.type == 'cuda':
            t_pad, t_tv = paired_median_ms(lambda: nms_padded(boxes, scores, 0.7, n),
                                           lambda: torchvision.ops.nms(shifted, scores, 0.7), device, 2, iters)
            rows.append(_row('nms_padded', f'{n} boxes @0.7, no host sync', t_pad, t_tv, agrees))
    return rows


def bench_roi_ops(device, quick, split=False):
    rows = []
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 1024, FEAT_H, FEAT_W, generator=g).to(device).requires_grad_()
    cases = [('roi_pool', None), ('roi_align', 2), ('roi_align', 0)]
    for num_rois in ((128,) if quick else (128, 300, 2000)):
        rois = random_rois(num_rois, num_rois).to(device)
        grad = torch.randn(num_rois, 1024, 7, 7, generator=g).to(device)
        for op, sr in cases:
            if op == 'roi_pool':
                ours = lambda: roi_pool(feat, rois, (7, 7), 1 / 16)  # noqa: E731
                theirs = lambda: torchvision.ops.roi_pool(feat, rois, (7, 7), 1 / 16)  # noqa: E731
            else:
                ours = lambda sr=sr: roi_align(feat, rois, (7, 7), 1 / 16, sr)  # noqa: E731
                theirs = lambda sr=sr: torchvision.ops.roi_align(feat, rois, (7, 7), 1 / 16, sr,  # noqa: E731
                                                                 aligned=False)
            out_ours, out_theirs = ours(), theirs()
            agrees = torch.allclose(out_ours, out_theirs, rtol=1e-5, atol=1e-5)
            if not agrees:
                print(f'WARNING: {op} on {num_rois} rois differs from torchvision by up to '
                      f'{(out_ours - out_theirs).abs().max().item():.3g}', flush=True)

            def step(fn):
                feat.grad = None
                fn().backward(grad)

            if quick:
                iters = 2
            elif device.type == 'cpu':
                iters = 10 if num_rois <= 300 else 3  # a 2000-roi step takes seconds on a CPU
            else:
                iters = 100
            t_ours, t_tv = paired_median_ms(lambda: step(ours), lambda: step(theirs), device, 1, iters)
            name = op if sr is None else f'{op} (sampling_ratio {sr})'
            rows.append(_row(name, f'{num_rois} rois, fwd+bwd', t_ours, t_tv, agrees))
            if split:  # which half of the pair differs: the forward alone, then the backward of one forward
                t_ours, t_tv = paired_median_ms(ours, theirs, device, 1, iters)
                rows.append(_row(name, f'{num_rois} rois, fwd', t_ours, t_tv, agrees))
                kept_ours, kept_theirs = ours(), theirs()

                def backward(out):
                    feat.grad = None
                    out.backward(grad, retain_graph=True)

                t_ours, t_tv = paired_median_ms(lambda: backward(kept_ours), lambda: backward(kept_theirs), device,
                                                1, iters)
                rows.append(_row(name, f'{num_rois} rois, bwd', t_ours, t_tv, agrees))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--quick', action='store_true', help='few iterations and sizes: a smoke run')
    parser.add_argument('--json', type=Path, help='also write the results to this file')
    parser.add_argument('--split', action=argparse.BooleanOptionalAction, default=None,
                        help='also time the pooling ops\' forward and backward apart (default: on CUDA only)')
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is visible')
    device = torch.device(args.device)
    header = dict(device=device_name(device), torch=torch.__version__, torchvision=torchvision.__version__,
                  date=time.strftime('%Y-%m-%d'))
    print(' | '.join(f'{k}: {v}' for k, v in header.items()))
    split = device.type == 'cuda' if args.split is None else args.split
    rows = []
    for bench in (bench_nms, functools.partial(bench_roi_ops, split=split)):
        rows += bench(device, args.quick)
        if args.json:  # after each part, so a run stopped by a time limit keeps what it measured
            args.json.write_text(json.dumps(dict(header, rows=rows), indent=2))
    print(f'| {"op":<28} | {"case":<30} | {"ours ms":>9} | {"torchvision ms":>14} | {"ratio":>6} |')
    print(f'|{"-" * 30}|{"-" * 32}|{"-" * 11}|{"-" * 16}|{"-" * 8}|')
    for r in rows:
        flag = '' if r['agrees'] else ' (results differ from torchvision)'
        print(f'| {r["op"]:<28} | {r["case"]:<30} | {r["ours_ms"]:>9.2f} | {r["torchvision_ms"]:>14.2f} | '
              f'{r["ratio"]:>5.2f}x |{flag}')
    return rows


if __name__ == '__main__':
    main()
