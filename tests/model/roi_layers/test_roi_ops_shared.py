"""Edge cases RoIAlign and RoIPool must handle alike, written once and run for each op (and device); the tests
of each op's own values are in test_roi_align.py and test_roi_pool.py."""
import pytest
import torch

from lib.model.roi_layers import roi_align, roi_pool

# each op with a 2x2 output as op(input, rois, spatial_scale, sampling_ratio); RoIPool has no sampling ratio
OPS = {
    'roi_align': lambda x, rois, scale, sampling_ratio: roi_align(x, rois, (2, 2), scale, sampling_ratio),
    'roi_pool': lambda x, rois, scale, sampling_ratio: roi_pool(x, rois, (2, 2), scale),
}


@pytest.mark.parametrize('name', OPS)
def test_empty_rois(device, name):
    x = torch.randn(1, 3, 5, 5, device=device, requires_grad=True)
    out = OPS[name](x, torch.zeros(0, 5, device=device), 1.0, 2)
    assert out.shape == (0, 3, 2, 2) and out.device.type == device.type
    out.sum().backward()
    assert x.grad.shape == x.shape and (x.grad == 0).all()


@pytest.mark.parametrize('name', OPS)
@pytest.mark.parametrize('shape', [(1, 3, 0, 5), (1, 3, 5, 0)])
def test_empty_feature_map_gives_zeros(device, name, shape):
    # rois starting at or before 0 would sample at -1..0, the edge an empty map has no pixel for
    x = torch.randn(*shape, device=device, requires_grad=True)
    rois = torch.tensor([[0, -16., -16., 32., 32.], [0, 0., 0., 15., 15.]], device=device)
    out = OPS[name](x, rois, 1 / 16., 0)
    assert out.shape == (2, 3, 2, 2) and (out == 0).all()
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
@pytest.mark.parametrize('name', OPS)
def test_cuda_backward_is_flagged_nondeterministic(name):
    # the CUDA backward adds with atomicAdd: torch.use_deterministic_algorithms must hear of it
    x = torch.randn(1, 2, 6, 6, device='cuda', requires_grad=True)
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]], device='cuda')
    out = OPS[name](x, rois, 1.0, 2)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match=f'{name}_backward_cuda does not have a deterministic implementation'):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(before)
