import numpy as np
import pytest
import torch
from torch import nn

from lib.model.utils.net_utils import (_affine_grid_gen, _crop_pool_layer, _smooth_l1_loss, adjust_learning_rate,
                                       clip_gradient, fused_optimizer_ok, match_state_layouts, normal_init,
                                       vis_detections, weights_normal_init)


def test_smooth_l1_hand_computed_sigma_1():
    pred = torch.tensor([[0.5, 2.0], [-0.2, 0.0]])
    target = torch.zeros(2, 2)
    inside = torch.tensor([[1., 1.], [1., 0.]])
    outside = torch.tensor([[1., 1.], [2., 2.]])
    # row 0: |0.5| < 1 -> 0.5 * 0.25 = 0.125; |2| >= 1 -> 2 - 0.5 = 1.5; sum 1.625
    # row 1: 0.5 * 0.04 = 0.02 times outside 2 = 0.04; second entry masked by inside 0; sum 0.04
    # mean over rows: (1.625 + 0.04) / 2
    loss = _smooth_l1_loss(pred, target, inside, outside)
    torch.testing.assert_close(loss, torch.tensor((1.625 + 0.04) / 2))


def test_smooth_l1_sigma_3_sums_dims_then_means():
    pred = torch.tensor([0.5, 0.05]).view(1, 2, 1, 1).repeat(2, 1, 1, 1)
    z = torch.zeros_like(pred)
    one = torch.ones_like(pred)
    # sigma 3: switch at 1/9. 0.5 -> 0.5 - 0.5/9; 0.05 -> 0.5 * 9 * 0.0025 = 0.01125; summed per image,
    # both images equal -> the mean is that sum
    expect = (0.5 - 0.5 / 9) + 0.01125
    loss = _smooth_l1_loss(pred, z, one, one, sigma=3, dim=[1, 2, 3])
    torch.testing.assert_close(loss, torch.tensor(expect))
    pred.requires_grad_(True)
    _smooth_l1_loss(pred, z, one, one, sigma=3, dim=[1, 2, 3]).backward()
    # d/dx: 1 (linear part) / 2 images; 9 * 0.05 (quadratic part) / 2 images
    torch.testing.assert_close(pred.grad[0].flatten(), torch.tensor([0.5, 9 * 0.05 / 2]))


def _ramp(axis, h=8, w=8):
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing='ij')
    return (xs if axis == 'x' else ys).view(1, 1, h, w)


def test_crop_constant_and_linear_maps():
    # roi (16, 16, 80, 48) in pixels = feature cells x 1..5, y 1..3 at stride 16
    rois = torch.tensor([[[0., 16., 16., 80., 48.]]])
    const = torch.full((1, 2, 8, 8), 3.5)
    torch.testing.assert_close(_crop_pool_layer(const, rois, 3, False), torch.full((1, 2, 3, 3), 3.5))
    # 3 samples span the roi end to end: x = 1, 3, 5 and y = 1, 2, 3
    cx = _crop_pool_layer(_ramp('x'), rois, 3, False)
    torch.testing.assert_close(cx[0, 0], torch.tensor([[1., 3., 5.]] * 3))
    cy = _crop_pool_layer(_ramp('y'), rois, 3, False)
    torch.testing.assert_close(cy[0, 0], torch.tensor([[1.] * 3, [2.] * 3, [3.] * 3]))
    # max-pool variant: 4 samples x = 1, 7/3, 11/3, 5, max over pairs -> 7/3, 5
    mx = _crop_pool_layer(_ramp('x'), rois, 2, True)
    torch.testing.assert_close(mx[0, 0], torch.tensor([[7 / 3, 5.]] * 2))


def test_crop_uses_each_rois_own_image_and_flat_layout():
    feats = torch.cat([torch.full((1, 1, 6, 6), 1.0), torch.full((1, 1, 6, 6), 2.0)])
    rois = torch.tensor([[[0., 0., 0., 40., 40.]] * 3, [[1., 8., 8., 60., 60.]] * 3])
    out = _crop_pool_layer(feats, rois, 7, True)
    assert out.shape == (6, 1, 7, 7)
    assert (out[:3] == 1).all() and (out[3:] == 2).all()
    assert torch.equal(_crop_pool_layer(feats, rois.view(-1, 5), 7, True), out)
    with pytest.raises(ValueError, match='evenly'):
        _crop_pool_layer(feats, rois.view(-1, 5)[:5], 7, True)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_crop_under_autocast_samples_in_float32(dtype):
    # the grid comes from a matmul, which autocast would run in bfloat16 (positions off by ~3e-3 of the map)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 40, 60, generator=g)
    rois = torch.cat([torch.zeros(2, 6, 1), torch.rand(2, 6, 4, generator=g) * 300], dim=2)
    rois[..., 3:] += rois[..., 1:3]
    expected = _crop_pool_layer(feats.to(dtype).float(), rois, 7, True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = _crop_pool_layer(feats.to(dtype), rois, 7, True)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected.to(dtype).float(), rtol=0, atol=0)


def test_affine_grid_corners():
    grid = _affine_grid_gen(torch.tensor([[0., 16., 32., 80., 96.]]), (9, 11), 5)
    # corners of the grid are the roi corners in normalised cells: x 1..5 of 0..10, y 2..6 of 0..8
    torch.testing.assert_close(grid[0, 0, 0], torch.tensor([2 * 1 / 10 - 1, 2 * 2 / 8 - 1]))
    torch.testing.assert_close(grid[0, -1, -1], torch.tensor([2 * 5 / 10 - 1, 2 * 6 / 8 - 1]))


def test_clip_gradient_and_lr():
    m = nn.Linear(2, 1, bias=False)
    frozen = nn.Linear(2, 1)
    frozen.weight.requires_grad_(False)
    model = nn.Sequential(m, frozen)
    m.weight.grad = torch.tensor([[3.0, 4.0]])   # norm 5
    total = clip_gradient(model, 1.0)
    torch.testing.assert_close(total, torch.tensor(5.0))
    torch.testing.assert_close(m.weight.grad, torch.tensor([[0.6, 0.8]]))
    clip_gradient(model, 10.0)   # below the limit: unchanged
    torch.testing.assert_close(m.weight.grad, torch.tensor([[0.6, 0.8]]))

    opt = torch.optim.SGD([{'params': [m.weight], 'lr': 0.01}, {'params': [frozen.bias], 'lr': 0.02}])
    adjust_learning_rate(opt, 0.1)
    assert [g['lr'] for g in opt.param_groups] == pytest.approx([0.001, 0.002])


def test_inits():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 64, 3)
    normal_init(conv, 0, 0.01)
    assert (conv.bias == 0).all() and abs(conv.weight.std().item() - 0.01) < 0.001
    normal_init(conv, 0, 0.01, truncated=True)
    assert conv.weight.abs().max() <= 0.02
    lin = nn.Linear(100, 100)
    weights_normal_init([nn.Sequential(lin)], dev=0.5)
    assert abs(lin.weight.std().item() - 0.5) < 0.02


def test_vis_detections_draws_only_confident_boxes():
    im = np.zeros((60, 60, 3), dtype=np.uint8)
    dets = np.array([[5, 5, 30, 30, 0.9], [35, 35, 55, 55, 0.5]])
    out = vis_detections(im, 'cat', dets, thresh=0.8)
    assert out is im
    assert out[5, 5:30].any()            # the confident box's top edge is drawn
    assert not out[50:56, 50:56].any()   # the weak one is not


def test_fused_optimizer_ok_takes_floating_cpu_and_cuda_tensors_only():
    assert fused_optimizer_ok([torch.zeros(2), torch.zeros(3, dtype=torch.float64)])
    assert not fused_optimizer_ok([torch.zeros(2), torch.zeros(2, dtype=torch.long)])
    assert not fused_optimizer_ok([torch.zeros(2), torch.zeros(2, device='meta')])


@pytest.mark.parametrize('optim,kw', [(torch.optim.SGD, {'momentum': 0.9}), (torch.optim.AdamW, {})])
@pytest.mark.parametrize('param_nhwc', [False, True])
def test_match_state_layouts_lets_the_fused_step_resume_across_layouts(optim, kw, param_nhwc):
    """A checkpoint's optimizer state in the other memory layout than the parameters (a run resumed with another
    cfg.CHANNELS_LAST): after match_state_layouts the fused step equals the plain for-loop step."""
    torch.manual_seed(0)
    layout = torch.channels_last if param_nhwc else torch.contiguous_format
    other = torch.contiguous_format if param_nhwc else torch.channels_last
    w0, g0, g1 = torch.randn(3, 6, 4, 3, 3).unbind()
    results = []
    for fused in (True, None):
        saved = nn.Parameter(w0.clone().contiguous(memory_format=other))
        first = optim([saved], lr=0.1, fused=fused, **kw)  # the checkpoint's groups carry the fused flag
        saved.grad = g0.clone().contiguous(memory_format=other)
        first.step()
        p = nn.Parameter(saved.detach().clone().contiguous(memory_format=layout))
        opt = optim([p], lr=0.1, fused=fused, **kw)
        opt.load_state_dict(first.state_dict())
        assert opt.param_groups[0]['fused'] == fused
        match_state_layouts(opt)
        for value in opt.state[p].values():
            if value.dim() == 4:
                assert value.stride() == p.stride()
        p.grad = g1.clone().contiguous(memory_format=layout)
        opt.step()
        results.append(p.detach())
    torch.testing.assert_close(results[0], results[1])
