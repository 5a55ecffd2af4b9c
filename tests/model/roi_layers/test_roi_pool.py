"""Max RoI pooling against a pure-Python Caffe reference and torchvision.ops.roi_pool."""
import math

import numpy as np
import pytest
import torch
import torchvision

from lib.model.roi_layers import ROIPool, roi_pool
from roi_helpers import random_rois


def round_half_away(x):
    """C's round(): halves go away from zero (torch.round and Python's round go to even)."""
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def roi_pool_reference(input, rois, output_size, spatial_scale):
    """Caffe RoI max pooling with python loops; returns (output, argmax as flat h * W + w, -1 when empty)."""
    ph_, pw_ = output_size
    T = np.float32 if input.dtype == torch.float32 else np.float64  # bin sizes in the input's precision
    _, c_, h_, w_ = input.shape
    out = torch.zeros(len(rois), c_, ph_, pw_, dtype=input.dtype)
    argmax = torch.full((len(rois), c_, ph_, pw_), -1, dtype=torch.int32)
    for n, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sw, sh = round_half_away(x1 * spatial_scale), round_half_away(y1 * spatial_scale)
        ew, eh = round_half_away(x2 * spatial_scale), round_half_away(y2 * spatial_scale)
        bin_h = T(max(eh - sh + 1, 1)) / T(ph_)
        bin_w = T(max(ew - sw + 1, 1)) / T(pw_)
        for p in range(ph_):
            hs = min(max(math.floor(T(p) * bin_h) + sh, 0), h_)
            he = min(max(math.ceil(T(p + 1) * bin_h) + sh, 0), h_)
            for q in range(pw_):
                ws = min(max(math.floor(T(q) * bin_w) + sw, 0), w_)
                we = min(max(math.ceil(T(q + 1) * bin_w) + sw, 0), w_)
                if he <= hs or we <= ws:
                    continue
                region = input[int(b), :, hs:he, ws:we].reshape(c_, -1)
                best, pos = region.max(1)
                out[n, :, p, q] = best
                argmax[n, :, p, q] = ((pos // (we - ws) + hs) * w_ + pos % (we - ws) + ws).int()
    return out, argmax


def distinct_input(shape, seed, dtype=torch.float32):
    """Feature map whose values are all different, so every bin has one argmax."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    return (torch.randperm(n, generator=g).to(dtype) / n - 0.5).reshape(shape)


# Zero-area (x1 == x2), single-pixel, out-of-image and whole-image rois on a [2, 3, 10, 12] map at scale 1/4.
EDGE_ROIS = torch.tensor([[0, 8.0, 8.0, 8.0, 8.0], [1, 5.0, 6.0, 5.0, 30.0], [0, 100.0, 100.0, 140.0, 130.0],
                          [1, -30.0, -20.0, -5.0, -2.0], [0, 0.0, 0.0, 47.0, 39.0], [1, 2.0, 2.0, 6.0, 6.0],
                          [0, 45.0, 37.0, 60.0, 50.0]])


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('output_size', [(3, 3), (2, 4)])
def test_forward_matches_reference_and_torchvision(device, seed, output_size):
    x = distinct_input((2, 3, 10, 12), seed)
    rois = torch.cat([random_rois(10, 2, 40, 48, seed), EDGE_ROIS])
    out, argmax = torch.ops.faster_rcnn.roi_pool_forward(x.to(device), rois.to(device), 0.25, *output_size)
    ref_out, ref_argmax = roi_pool_reference(x, rois, output_size, 0.25)
    torch.testing.assert_close(out.cpu(), ref_out, rtol=0, atol=0)
    torch.testing.assert_close(argmax.cpu(), ref_argmax, rtol=0, atol=0)
    assert (ref_argmax == -1).any()  # out-of-image rois produce empty bins
    torch.testing.assert_close(out.cpu(), torchvision.ops.roi_pool(x, rois, output_size, 0.25), rtol=0, atol=0)


def test_backward_routes_gradient_to_argmax(device):
    x = distinct_input((2, 3, 10, 12), 0).to(device).requires_grad_()
    rois = torch.cat([random_rois(6, 2, 40, 48, 1), EDGE_ROIS]).to(device)
    grad_out = torch.randn(len(rois), 3, 3, 3, generator=torch.Generator().manual_seed(0)).to(device)
    roi_pool(x, rois, 3, 0.25).backward(grad_out)
    _, argmax = roi_pool_reference(x.detach().cpu(), rois.cpu(), (3, 3), 0.25)
    expected = torch.zeros(2, 3, 10 * 12)
    for n, b in enumerate(rois[:, 0].long().tolist()):
        for c in range(3):
            for a, g in zip(argmax[n, c].flatten().tolist(), grad_out[n, c].flatten().cpu().tolist()):
                if a >= 0:
                    expected[b, c, a] += g
    torch.testing.assert_close(x.grad.cpu(), expected.reshape(2, 3, 10, 12))


@pytest.mark.parametrize('seed', range(2))
def test_gradcheck_float64(device, seed):
    x = distinct_input((2, 2, 8, 9), seed, torch.float64).to(device).requires_grad_()
    rois = torch.cat([random_rois(4, 2, 32, 36, seed, torch.float64), EDGE_ROIS[:3].double()]).to(device)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, (2, 3), 0.25), (x,))


def test_module_matches_function_and_accepts_int_size(device):
    x = distinct_input((2, 3, 10, 12), 5).to(device)
    rois = random_rois(5, 2, 40, 48, 5).to(device)
    layer = ROIPool(3, 0.25)
    assert layer.output_size == (3, 3) and 'spatial_scale=0.25' in repr(layer)
    torch.testing.assert_close(layer(x, rois), roi_pool(x, rois, (3, 3), 0.25), rtol=0, atol=0)


def test_non_contiguous_inputs(device):
    x = distinct_input((2, 3, 10, 12), 2)
    rois = random_rois(6, 2, 40, 48, 2)
    x_nc = x.permute(0, 2, 3, 1).contiguous().to(device).permute(0, 3, 1, 2)  # channels-last strides
    rois_nc = torch.stack([rois, rois], 2).to(device)[:, :, 1]
    assert not x_nc.is_contiguous() and not rois_nc.is_contiguous()
    torch.testing.assert_close(roi_pool(x_nc, rois_nc, 3, 0.25).cpu(), roi_pool_reference(x, rois, (3, 3), 0.25)[0],
                               rtol=0, atol=0)


def test_bad_inputs_name_expected_and_got(device):
    x = torch.zeros(1, 2, 4, 4, device=device)
    rois = torch.zeros(1, 5, device=device)
    with pytest.raises(RuntimeError, match=r'expected input of shape \[B, C, H, W\] \(4 dims\), got 3 dims'):
        roi_pool(x[0], rois, 2, 1.0)
    with pytest.raises(RuntimeError, match=r'expected rois of shape \[K, 5\].*got \[1, 4\]'):
        roi_pool(x, rois[:, :4], 2, 1.0)
    with pytest.raises(RuntimeError, match=r'expected rois of the same dtype as input \(Float\), got Double'):
        roi_pool(x, rois.double(), 2, 1.0)
    with pytest.raises(RuntimeError, match=r'expected a positive output size, got \(0, 2\)'):
        roi_pool(x, rois, (0, 2), 1.0)
    with pytest.raises(RuntimeError, match=r'expected a positive output size, got \(2, -1\)'):
        roi_pool(x, rois, (2, -1), 1.0)
    for scale in (0.0, -1.0, float('inf'), float('nan')):
        with pytest.raises(RuntimeError, match='expected a finite positive spatial_scale'):
            roi_pool(x, rois, 2, scale)


def test_batch_index_out_of_range_is_refused():
    with pytest.raises(RuntimeError, match=r'roi 1 has batch index 2, expected one in \[0, 2\)'):
        roi_pool(torch.zeros(2, 1, 4, 4), torch.tensor([[1.0, 0, 0, 1, 1], [2.0, 0, 0, 1, 1]]), 2, 1.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_device_mismatch():
    with pytest.raises(RuntimeError, match='expected input and rois on the same device'):
        roi_pool(torch.zeros(1, 2, 4, 4, device='cuda'), torch.zeros(1, 5), 2, 1.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    x = distinct_input((2, 16, 20, 25), 3).to(dtype)
    rois = random_rois(40, 2, 320, 400, 3).to(dtype)
    xc = x.cuda().requires_grad_()
    out = roi_pool(xc, rois.cuda(), 7, 1 / 16)
    xf = x.float().clone().requires_grad_()
    ref = roi_pool(xf, rois.float(), 7, 1 / 16)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float().cpu(), ref, rtol=0, atol=0)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    out.backward(g.to(dtype).cuda())
    ref.backward(g.to(dtype).float())
    tol = {} if dtype == torch.float32 else {'rtol': 1e-2, 'atol': 1e-2}
    torch.testing.assert_close(xc.grad.float().cpu(), xf.grad, **tol)
