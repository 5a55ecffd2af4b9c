"""The CUDA kernels (lib/model/csrc/cuda/*.cu) run on the CPU by the emulator of cuda_emu/ (see emu_build.py),
checked against the CPU kernels, which the other tests of this folder check against pure-PyTorch references.

This runs the kernels' own code (index math, grid-stride loops, the NMS bitmap sweep with its warp shuffles and
barriers, the host launch code and its early returns) on every machine. It cannot see what only a GPU shows
(timing, nvcc's floating-point contraction, the memory model), so test_*.py's CUDA tests still run wherever a GPU
is present. Each kernel runs under three thread schedules, and with small grids (every thread loops) and 64-bit
indices, paths that real inputs reach only at sizes too large for a test. test_kernels_under_sanitizers runs
this file again with the kernels built with AddressSanitizer and UndefinedBehaviorSanitizer, which catch any read
or write outside the tensors, and undefined arithmetic such as a shift by 64 (which a GPU may let pass).
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from emu_build import ASAN_ENV, ROOT
from lib.model.roi_layers import nms
from roi_helpers import random_rois
from test_nms import random_boxes
from test_roi_pool import distinct_input

CPU = torch.ops.faster_rcnn
GRID_CAP = 65535 * 8
SHARED_WORDS = 5120

# (schedule, seed): threads of a block run in order, in reverse, or shuffled between barriers
SCHEDULES = [pytest.param((0, 0), id='forward'), pytest.param((1, 0), id='reverse'),
             pytest.param((2, 1), id='shuffled')]
# (grid cap, 64-bit indices): the real launch, a two-block grid whose threads loop, the int64 index path
LAUNCHES = [pytest.param((GRID_CAP, False), id='grid'), pytest.param((2, False), id='2-blocks'),
            pytest.param((GRID_CAP, True), id='int64')]


class Emulated:
    """The emulated ops (emu.nms, emu.roi_align_forward, ...) and emu.configure for the emulator's settings."""

    def __init__(self, ops):
        self._ops = ops

    def __getattr__(self, name):
        return getattr(self._ops, name)

    def configure(self, grid_cap=GRID_CAP, max_shared_words=SHARED_WORDS, force_int64=False, schedule=(0, 0)):
        self._ops.emu_configure(grid_cap, max_shared_words, force_int64, schedule[0], schedule[1])


@pytest.fixture
def emu(cuda_emu):
    """The emulated ops with the real launch settings, reset after the test."""
    emulated = Emulated(cuda_emu)
    emulated.configure()
    yield emulated
    emulated.configure()


# --- the emulator itself ---

def test_shuffle_reads_the_source_lane_of_its_own_warp(emu):
    values = torch.arange(64) * 7
    out = emu.selftest_shfl_rotate(values, 5)
    lanes = torch.arange(64)
    torch.testing.assert_close(out, values[lanes // 32 * 32 + (lanes % 32 + 5) % 32], rtol=0, atol=0)


@pytest.mark.parametrize('lane_mask', [1, 6, 16, 31])
def test_xor_shuffle_reads_the_butterfly_partner_of_its_own_warp(emu, lane_mask):
    values = torch.arange(64) * 7 + 3
    out = emu.selftest_shfl_xor(values, lane_mask)
    lanes = torch.arange(64)
    torch.testing.assert_close(out, values[lanes // 32 * 32 + (lanes % 32) ^ lane_mask], rtol=0, atol=0)


@pytest.mark.parametrize('schedule', SCHEDULES)
def test_barrier_orders_shared_memory_and_a_missing_one_shows(emu, schedule):
    emu.configure(schedule=schedule)
    expected = (torch.arange(64) + 1) % 64 * 10
    assert emu.selftest_neighbour(True).tolist() == expected.tolist()
    # Without the barrier a thread reads its neighbour's slot before the neighbour wrote it: in the forward
    # order every thread but the last sees the 0xA5 poison; in the reverse order only the last does.
    wrong = (emu.selftest_neighbour(False) != expected).sum().item()
    assert wrong == {0: 63, 1: 1}[schedule[0]] if schedule[0] in (0, 1) else wrong > 0


def test_broken_barriers_raise_instead_of_hanging(emu):
    with pytest.raises(RuntimeError, match='deadlock, no barrier can complete; .* thread 0 at __syncwarp'):
        emu.selftest_warp_waits_for_block()
    with pytest.raises(RuntimeError, match='lanes of warp 0 wait at different warp operations'):
        emu.selftest_divergent_shuffle()


# --- NMS ---

@pytest.mark.parametrize('schedule', SCHEDULES)
@pytest.mark.parametrize('n', [1, 63, 64, 65, 200, 700])
def test_nms_kernels_match_cpu(emu, schedule, n):
    boxes, scores = random_boxes(n, n)
    for thresh in (0.3, 0.7):
        expected = nms(boxes, scores, thresh)
        emu.configure(schedule=schedule)  # also restarts the launch count
        keep = emu.nms(boxes, scores, thresh)
        assert emu.emu_launches() == 2  # the mask kernel and the sweep, no early return
        torch.testing.assert_close(keep, expected, rtol=0, atol=0)


@pytest.mark.parametrize('max_shared_words', [0, 3])
def test_nms_sweep_with_the_removed_bitmap_in_global_memory(emu, max_shared_words):
    # 700 boxes make 11 words: over the limit, the sweep keeps its bitmap in a global buffer
    emu.configure(max_shared_words=max_shared_words)
    boxes, scores = random_boxes(700, 3)
    torch.testing.assert_close(emu.nms(boxes, scores, 0.5), nms(boxes, scores, 0.5), rtol=0, atol=0)


def test_nms_ties_identical_boxes_and_the_exact_threshold(emu):
    # integer boxes with duplicates and scores with many ties: the stable order decides, as on the CPU
    boxes, _ = random_boxes(300, 11, integer=True)
    boxes = torch.cat([boxes, boxes[:40]])
    scores = torch.randint(0, 5, (len(boxes),), generator=torch.Generator().manual_seed(0)).float()
    for thresh in (0.0, 0.5, 1.0):
        torch.testing.assert_close(emu.nms(boxes, scores, thresh), nms(boxes, scores, thresh), rtol=0, atol=0)
    dets = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 4.0]])  # IoU exactly 0.5
    assert emu.nms(dets, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    dets[1, 3] = 4.25
    assert emu.nms(dets, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]


@pytest.mark.parametrize('dtype', [torch.float64, torch.float16, torch.bfloat16])
def test_nms_dtypes_compute_as_documented(emu, dtype):
    # float64 in float64; half and bfloat16 boxes are converted to float and compared in float
    boxes, scores = random_boxes(500, 5)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    expected = nms(boxes.to(acc), scores.to(acc), 0.6)
    torch.testing.assert_close(emu.nms(boxes, scores, 0.6), expected, rtol=0, atol=0)


@pytest.mark.parametrize('max_out', [0, 1, 37, 1000])
def test_nms_padded_stops_at_max_out_and_pads(emu, max_out):
    boxes, scores = random_boxes(400, 8)
    expected = nms(boxes, scores, 0.5)
    keep, num_kept = emu.nms_padded(boxes, scores, 0.5, max_out)
    kept = min(max_out, len(expected))
    assert keep.shape == (max_out,) and num_kept.item() == kept
    assert keep[:kept].tolist() == expected[:kept].tolist()
    assert (keep[kept:] == -1).all()


@pytest.mark.parametrize('n,max_out', [(6000, 300), (12000, 2000)], ids=['test', 'train'])
def test_nms_at_the_rpn_sizes(emu, n, max_out):
    # the proposal layer's pre-NMS boxes and post-NMS count (cfg TEST / TRAIN), spread over a 600 x 900 image
    boxes, scores = random_boxes(n, 1)
    boxes = boxes * 3
    expected = nms(boxes, scores, 0.7)
    assert len(expected) > max_out
    torch.testing.assert_close(emu.nms(boxes, scores, 0.7), expected, rtol=0, atol=0)
    keep, num_kept = emu.nms_padded(boxes, scores, 0.7, max_out)
    assert num_kept.item() == max_out and keep.tolist() == expected[:max_out].tolist()


def test_nms_empty_input_launches_nothing(emu):
    keep = emu.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.long and emu.emu_launches() == 0


# --- RoIPool and RoIAlign ---

def _geometry(dtype):
    x = distinct_input((2, 5, 20, 25), 3, dtype=torch.float64)
    rois = random_rois(30, 2, 320, 400, 4, dtype=torch.float64)
    # zero-area, out-of-image and whole-image rois, and one with an out-of-range batch index (the GPU gives
    # zeros there rather than sync to check it)
    extra = torch.tensor([[0, 50.0, 50.0, 50.0, 50.0], [1, 500.0, 400.0, 600.0, 500.0], [0, 0.0, 0.0, 399.0, 319.0],
                          [1, -40.0, -30.0, -2.0, -1.0], [2, 10.0, 10.0, 200.0, 200.0],
                          # corners at half cells at 1/16 (0.5, 1.5, 2.5, 3.5; -0.5 below): rounded away from 0
                          [0, 8.0, 24.0, 40.0, 56.0], [1, -8.0, -24.0, 72.0, 88.0]], dtype=torch.float64)
    return x.to(dtype), torch.cat([rois, extra]).to(dtype)


def _valid(rois):
    return rois[:, 0] < 2


# 1/16: float and half inputs take the kernels' float geometry (a power-of-two scale, exact in float), double
# inputs the double one; 1/12 (not exact in float): the double geometry for every dtype. Both must give the CPU's
# cells exactly.
SCALES = [pytest.param(1 / 16, id='scale-1/16'), pytest.param(1 / 12, id='scale-1/12')]


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('schedule', SCHEDULES[::2])
@pytest.mark.parametrize('launch', LAUNCHES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_roi_pool_kernels_match_cpu(emu, launch, schedule, dtype, scale):
    emu.configure(grid_cap=launch[0], force_int64=launch[1], schedule=schedule)
    x, rois = _geometry(dtype)
    valid = _valid(rois)
    out, argmax = emu.roi_pool_forward(x, rois, scale, 3, 4)
    ref, ref_argmax = CPU.roi_pool_forward(x, rois[valid], scale, 3, 4)
    torch.testing.assert_close(out[valid], ref, rtol=0, atol=0)
    torch.testing.assert_close(argmax[valid], ref_argmax, rtol=0, atol=0)
    assert (out[~valid] == 0).all() and (argmax[~valid] == -1).all()
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    grad_x = emu.roi_pool_backward(grad, rois, argmax, scale, 3, 4, 2, 5, 20, 25)
    ref_grad = CPU.roi_pool_backward(grad[valid], rois[valid], ref_argmax, scale, 3, 4, 2, 5, 20, 25)
    torch.testing.assert_close(grad_x, ref_grad)


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('schedule', SCHEDULES[::2])
@pytest.mark.parametrize('launch', LAUNCHES)
@pytest.mark.parametrize('dtype,sampling_ratio', [(torch.float32, 0), (torch.float32, 2), (torch.float64, 0)])
def test_roi_align_kernels_match_cpu(emu, launch, schedule, dtype, sampling_ratio, scale):
    emu.configure(grid_cap=launch[0], force_int64=launch[1], schedule=schedule)
    x, rois = _geometry(dtype)
    valid = _valid(rois)
    out = emu.roi_align_forward(x, rois, scale, 3, 4, sampling_ratio)
    ref = CPU.roi_align_forward(x, rois[valid], scale, 3, 4, sampling_ratio)
    torch.testing.assert_close(out[valid], ref)
    assert (out[~valid] == 0).all()
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    grad_x = emu.roi_align_backward(grad, rois, scale, 3, 4, 2, 5, 20, 25, sampling_ratio)
    ref_grad = CPU.roi_align_backward(grad[valid], rois[valid], scale, 3, 4, 2, 5, 20, 25, sampling_ratio)
    torch.testing.assert_close(grad_x, ref_grad)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_roi_ops_half_types_compute_in_float(emu, dtype):
    # the kernels read half/bfloat16, compute and accumulate in float, and round the result once
    x, rois = _geometry(dtype)
    valid = _valid(rois)
    xf, roisf = x.float(), rois[valid].float()
    out, argmax = emu.roi_pool_forward(x, rois, 1 / 16, 7, 7)
    ref, ref_argmax = CPU.roi_pool_forward(xf, roisf, 1 / 16, 7, 7)
    assert out.dtype == dtype
    torch.testing.assert_close(out[valid].float(), ref, rtol=0, atol=0)
    torch.testing.assert_close(argmax[valid], ref_argmax, rtol=0, atol=0)
    out = emu.roi_align_forward(x, rois, 1 / 16, 7, 7, 2)
    assert out.dtype == dtype
    torch.testing.assert_close(out[valid], CPU.roi_align_forward(xf, roisf, 1 / 16, 7, 7, 2).to(dtype))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grad_x = emu.roi_align_backward(grad, rois, 1 / 16, 7, 7, 2, 5, 20, 25, 2)
    ref_grad = CPU.roi_align_backward(grad[valid].float(), roisf, 1 / 16, 7, 7, 2, 5, 20, 25, 2)
    assert grad_x.dtype == dtype
    torch.testing.assert_close(grad_x, ref_grad.to(dtype))


@pytest.mark.parametrize('shape', [(0, 5), (2, 0)], ids=['no-rois', 'empty-map'])
def test_roi_ops_empty_inputs_launch_nothing(emu, shape):
    num_rois, height = shape
    x = torch.randn(2, 5, height, 25)
    rois = random_rois(num_rois, 2, 320, 400, 0)
    out, argmax = emu.roi_pool_forward(x, rois, 1 / 16, 3, 3)
    assert out.shape == (num_rois, 5, 3, 3) and (out == 0).all() and (argmax == -1).all()
    assert (emu.roi_align_forward(x, rois, 1 / 16, 3, 3, 0) == 0).all()
    grad = torch.ones(num_rois, 5, 3, 3)
    assert emu.roi_align_backward(grad, rois, 1 / 16, 3, 3, 2, 5, height, 25, 0).shape == x.shape
    assert emu.roi_pool_backward(grad, rois, argmax, 1 / 16, 3, 3, 2, 5, height, 25).shape == x.shape
    if num_rois == 0:
        assert emu.emu_launches() == 0


def test_bad_inputs_are_refused_with_the_cuda_messages(emu):
    with pytest.raises(RuntimeError, match=r'roi_align_forward: expected rois of shape \[K, 5\]'):
        emu.roi_align_forward(torch.zeros(1, 2, 4, 4), torch.zeros(3, 4), 1.0, 2, 2, 0)
    with pytest.raises(RuntimeError, match='roi_align_forward: expected sampling_ratio >= 0'):
        emu.roi_align_forward(torch.zeros(1, 2, 4, 4), torch.zeros(3, 5), 1.0, 2, 2, -1)
    with pytest.raises(RuntimeError, match='expected float32, float64, float16 or bfloat16 input on CUDA'):
        emu.roi_pool_forward(torch.zeros(1, 2, 4, 4, dtype=torch.int32), torch.zeros(3, 5, dtype=torch.int32),
                             1.0, 2, 2)
    with pytest.raises(RuntimeError, match=r'nms: expected dets of shape \[N, 4\]'):
        emu.nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    # the kernels index a feature plane in 32 bits: a larger plane is refused (an expanded view, no memory)
    huge = torch.zeros(1, 1, 1, 1).expand(1, 1, 65536, 32768)
    too_big = 'expected a feature map of at most 2\\^31 - 1 cells per channel on CUDA, got 65536 x 32768'
    with pytest.raises(RuntimeError, match='roi_pool_forward: ' + too_big):
        emu.roi_pool_forward(huge, torch.zeros(1, 5), 1.0, 2, 2)
    with pytest.raises(RuntimeError, match='roi_align_forward: ' + too_big):
        emu.roi_align_forward(huge, torch.zeros(1, 5), 1.0, 2, 2, 0)
    with pytest.raises(RuntimeError, match='roi_align_backward: ' + too_big):
        emu.roi_align_backward(torch.zeros(1, 1, 2, 2), torch.zeros(1, 5), 1.0, 2, 2, 1, 1, 65536, 32768, 0)


def _runtime_library(name):
    """The compiler's copy of a runtime library (libasan.so, libstdc++.so), or None."""
    compiler = os.environ.get('CXX', 'c++')
    try:
        path = subprocess.run([compiler, f'-print-file-name={name}'], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return path if osp.isabs(path) and osp.exists(path) else None


@pytest.mark.slow
def test_kernels_under_sanitizers(tmp_path):
    if os.environ.get(ASAN_ENV) == '1':
        pytest.skip('this run is the sanitizer run')
    libasan, libstdcxx = _runtime_library('libasan.so'), _runtime_library('libstdc++.so')
    if libasan is None or libstdcxx is None:
        pytest.skip("the compiler has no AddressSanitizer runtime (libasan.so)")
    # libstdc++ is preloaded too: python does not link it, and ASan must find it when it starts
    env = dict(os.environ, LD_PRELOAD=f'{libasan} {libstdcxx}', ASAN_OPTIONS=f'detect_leaks=0:log_path={tmp_path}/asan',
               UBSAN_OPTIONS=f'print_stacktrace=1:log_path={tmp_path}/ubsan')
    env[ASAN_ENV] = '1'
    run = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', __file__, '-k',
                          'not sanitizers'], cwd=ROOT, env=env, capture_output=True, text=True)
    # the ASan log also holds its notice that it does not fully support swapcontext; errors say ERROR or
    # 'runtime error'
    reports = [p.read_text() for p in tmp_path.iterdir() if p.name.startswith(('asan', 'ubsan'))]
    errors = [text for text in reports if 'ERROR: AddressSanitizer' in text or 'runtime error' in text]
    assert run.returncode == 0 and not errors, run.stdout[-4000:] + run.stderr[-2000:] + ''.join(errors)[:8000]
    assert ' passed' in run.stdout and ' skipped' not in run.stdout
