"""RoIAlign (aligned=False) against a pure-Python bilinear reference and torchvision.ops.roi_align."""
import math

import pytest
import torch
import torchvision

from lib.model.roi_layers import ROIAlign, roi_align
from roi_helpers import random_rois


def bilinear(plane, y, x):
    """The original's bilinear sample of a [H, W] plane at (y, x); 0 outside [-1, H] x [-1, W]."""
    h, w = plane.shape
    if y < -1 or y > h or x < -1 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * plane[y0, x0] + (1 - ly) * lx * plane[y0, x1] + ly * (1 - lx) * plane[y1, x0]
            + ly * lx * plane[y1, x1])


def roi_align_reference(input, rois, output_size, spatial_scale, sampling_ratio):
    """aligned=False RoIAlign with python loops, in float64."""
    ph_, pw_ = output_size
    x = input.double()
    out = torch.zeros(len(rois), input.shape[1], ph_, pw_, dtype=torch.float64)
    for n, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sw, sh, ew, eh = x1 * spatial_scale, y1 * spatial_scale, x2 * spatial_scale, y2 * spatial_scale
        rw, rh = max(ew - sw, 1.0), max(eh - sh, 1.0)
        bh, bw = rh / ph_, rw / pw_
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph_)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw_)
        for c in range(input.shape[1]):
            plane = x[int(b), c]
            for p in range(ph_):
                for q in range(pw_):
                    total = sum(bilinear(plane, sh + p * bh + (iy + 0.5) * bh / gh, sw + q * bw + (ix + 0.5) * bw / gw)
                                for iy in range(gh) for ix in range(gw))
                    out[n, c, p, q] = total / max(gh * gw, 1)
    return out


# Zero-area, thin, out-of-image, whole-image and edge-straddling rois on a [2, 3, 10, 12] map at scale 1/4.
EDGE_ROIS = torch.tensor([[0, 8.0, 8.0, 8.0, 8.0], [1, 5.0, 6.0, 5.0, 30.0], [0, 100.0, 100.0, 140.0, 130.0],
                          [1, -30.0, -20.0, -5.0, -2.0], [0, 0.0, 0.0, 47.0, 39.0], [1, -6.0, -6.0, 6.0, 6.0],
                          [0, 45.0, 37.0, 60.0, 50.0]])


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('output_size,sampling_ratio', [((3, 3), 2), ((2, 4), 0), ((3, 2), 1)])
def test_forward_matches_reference_and_torchvision(device, seed, output_size, sampling_ratio):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 10, 12, generator=g)
    rois = torch.cat([random_rois(8, 2, 40, 48, seed), EDGE_ROIS])
    out = roi_align(x.to(device), rois.to(device), output_size, 0.25, sampling_ratio)
    assert out.shape == (len(rois), 3, *output_size) and out.dtype == torch.float32
    ref = roi_align_reference(x, rois, output_size, 0.25, sampling_ratio)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-5)
    tv = torchvision.ops.roi_align(x, rois, output_size, 0.25, sampling_ratio, aligned=False)
    torch.testing.assert_close(out.cpu(), tv, rtol=1e-6, atol=1e-6)


def test_out_of_image_roi_is_zero_and_zero_area_roi_is_one_cell(device):
    x = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12).to(device)
    out = roi_align(x, EDGE_ROIS[[2, 0]].to(device), (2, 2), 0.25, 2)
    assert (out[0] == 0).all()  # every sample lies beyond the map's 1-cell margin
    # A zero-area roi at (2, 2) becomes the 1 x 1 cell [2, 3] x [2, 3]; its 2 x 2 bins of 2 x 2 samples sit at
    # 2.125 .. 2.875 on each axis, so bin (p, q) averages to the plane at (2.25 + p / 2, 2.25 + q / 2).
    plane = x[0, 0].cpu()
    for p in range(2):
        for q in range(2):
            y, xx = 2.25 + p / 2, 2.25 + q / 2
            assert out[1, 0, p, q].item() == pytest.approx(plane[2, 2].item() + 12 * (y - 2) + (xx - 2))


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('sampling_ratio', [0, 2])
def test_gradcheck_float64(device, seed, sampling_ratio):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64).to(device).requires_grad_()
    rois = torch.cat([random_rois(4, 2, 24, 28, seed, torch.float64), EDGE_ROIS[[0, 3, 5]].double()]).to(device)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (2, 3), 0.25, sampling_ratio), (x,))


def test_backward_matches_torchvision(device):
    x = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(4))
    rois = torch.cat([random_rois(12, 2, 40, 48, 4), EDGE_ROIS])
    grad_out = torch.randn(len(rois), 3, 3, 3, generator=torch.Generator().manual_seed(5))
    xd = x.clone().to(device).requires_grad_()
    roi_align(xd, rois.to(device), 3, 0.25, 0).backward(grad_out.to(device))
    xt = x.clone().requires_grad_()
    torchvision.ops.roi_align(xt, rois, 3, 0.25, 0, aligned=False).backward(grad_out)
    torch.testing.assert_close(xd.grad.cpu(), xt.grad, rtol=1e-5, atol=1e-6)


def test_module_matches_function_and_accepts_int_size(device):
    x = torch.randn(2, 3, 10, 12, device=device)
    rois = random_rois(5, 2, 40, 48, 6).to(device)
    layer = ROIAlign(3, 0.25, 2)
    assert layer.output_size == (3, 3) and 'sampling_ratio=2' in repr(layer)
    torch.testing.assert_close(layer(x, rois), roi_align(x, rois, (3, 3), 0.25, 2), rtol=0, atol=0)


def test_non_contiguous_inputs(device):
    x = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(8))
    rois = random_rois(6, 2, 40, 48, 8)
    x_nc = x.permute(0, 2, 3, 1).contiguous().to(device).permute(0, 3, 1, 2).requires_grad_()
    rois_nc = torch.stack([rois, rois], 2).to(device)[:, :, 1]
    assert not x_nc.is_contiguous() and not rois_nc.is_contiguous()
    out = roi_align(x_nc, rois_nc, 3, 0.25, 2)
    torch.testing.assert_close(out.cpu().double(), roi_align_reference(x, rois, (3, 3), 0.25, 2), rtol=1e-5,
                               atol=1e-5)
    grad_out = torch.randn(out.shape, device=device).transpose(2, 3)  # non-contiguous incoming gradient
    out.backward(grad_out)
    xt = x.clone().requires_grad_()
    torchvision.ops.roi_align(xt, rois, 3, 0.25, 2, aligned=False).backward(grad_out.cpu())
    torch.testing.assert_close(x_nc.grad.cpu(), xt.grad, rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_expected_and_got(device):
    x = torch.zeros(1, 2, 4, 4, device=device)
    rois = torch.zeros(1, 5, device=device)
    with pytest.raises(RuntimeError, match=r'expected input of shape \[B, C, H, W\] \(4 dims\), got 5 dims'):
        roi_align(x[None], rois, 2, 1.0)
    with pytest.raises(RuntimeError, match=r'expected rois of shape \[K, 5\].*got \[1, 6\]'):
        roi_align(x, torch.zeros(1, 6, device=device), 2, 1.0)
    with pytest.raises(RuntimeError, match=r'expected rois of the same dtype as input \(Double\), got Float'):
        roi_align(x.double(), rois, 2, 1.0)
    with pytest.raises(RuntimeError, match=r'expected a positive output size, got \(-2, -2\)'):
        roi_align(x, rois, -2, 1.0)
    with pytest.raises(RuntimeError, match='expected sampling_ratio >= 0 \\(0 = adaptive\\), got -1'):
        roi_align(x, rois, 2, 1.0, -1)
    for scale in (0.0, -0.5, float('inf'), float('nan')):
        with pytest.raises(RuntimeError, match='expected a finite positive spatial_scale'):
            roi_align(x, rois, 2, scale)


def test_backward_checks_grad_shape():
    with pytest.raises(RuntimeError, match=r'expected grad of shape \[1, 2, 2, 2\], got \[1, 2, 3, 2\]'):
        torch.ops.faster_rcnn.roi_align_backward(torch.zeros(1, 2, 3, 2), torch.zeros(1, 5), 1.0, 2, 2, 1, 2, 4, 4,
                                                 0)


def test_batch_index_out_of_range_is_refused_forward_and_backward():
    rois = torch.tensor([[1.0, 0, 0, 1, 1], [2.0, 0, 0, 1, 1]])
    with pytest.raises(RuntimeError, match=r'roi_align_forward: roi 1 has batch index 2, expected one in \[0, 2\)'):
        roi_align(torch.zeros(2, 1, 4, 4), rois, 2, 1.0)
    with pytest.raises(RuntimeError, match=r'roi_align_backward: roi 0 has batch index -1, expected one in \[0, 2\)'):
        torch.ops.faster_rcnn.roi_align_backward(torch.zeros(1, 1, 2, 2), torch.tensor([[-1.0, 0, 0, 1, 1]]), 1.0,
                                                 2, 2, 2, 1, 4, 4, 0)


def test_autocast_cpu_runs_in_float32_and_returns_input_dtype():
    x = torch.randn(1, 2, 6, 6, dtype=torch.bfloat16)
    rois = torch.tensor([[0.0, 0.0, 0.0, 20.0, 20.0]])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = roi_align(x, rois, 2, 0.25, 2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), roi_align(x.float(), rois, 2, 0.25, 2), rtol=1e-2, atol=1e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_device_mismatch():
    with pytest.raises(RuntimeError, match='expected input and rois on the same device'):
        roi_align(torch.zeros(1, 2, 4, 4, device='cuda'), torch.zeros(1, 5), 2, 1.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize('sampling_ratio', [0, 2])
def test_cuda_matches_cpu(dtype, tol, sampling_ratio):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 16, 20, 25, generator=g).to(dtype)
    rois = random_rois(40, 2, 320, 400, 9).to(dtype)
    xc = x.cuda().requires_grad_()
    out = roi_align(xc, rois.cuda(), 7, 1 / 16, sampling_ratio)
    xf = x.float().clone().requires_grad_()
    ref = roi_align(xf, rois.float(), 7, 1 / 16, sampling_ratio)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float().cpu(), ref, rtol=tol, atol=tol)
    grad = torch.randn(ref.shape, generator=g).to(dtype)
    out.backward(grad.cuda())
    ref.backward(grad.float())
    torch.testing.assert_close(xc.grad.float().cpu(), xf.grad, rtol=tol, atol=tol)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_autocast_mixed_dtypes():
    x = torch.randn(1, 4, 10, 10, device='cuda', dtype=torch.float16)
    rois = torch.tensor([[0.0, 3.0, 5.0, 100.0, 120.0]], device='cuda')
    with torch.autocast('cuda'):
        out = roi_align(x, rois, 3, 1 / 16, 2)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), roi_align(x.float(), rois, 3, 1 / 16, 2), rtol=1e-3, atol=1e-3)
