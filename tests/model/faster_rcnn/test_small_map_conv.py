"""The head's small-map CPU convolution: same values and gradients as F.conv2d, and the right fallbacks."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.model.faster_rcnn.small_map_conv import (MAX_OUTPUT_PIXELS, Im2Row, SmallMapConv2d, unfold_conv2d,
                                                  use_small_map_convs)


@pytest.mark.parametrize('shape,k,stride,padding,bias', [
    ((3, 8, 2, 2), 3, 1, 1, False),     # layer4's 3x3 on a 2x2 map
    ((3, 6, 4, 4), 3, 2, 1, False),     # layer4's first, strided 3x3 (POOLING_SIZE 4)
    ((2, 6, 7, 7), 3, 2, 1, True),      # POOLING_SIZE 7
    ((2, 6, 4, 4), 1, 2, 0, False),     # the downsample 1x1
    ((2, 5, 3, 5), 3, 1, 1, True),      # non-square
])
def test_unfold_conv2d_matches_conv2d_forward_and_backward(shape, k, stride, padding, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, shape[1], k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    out = unfold_conv2d(x, w, b, (stride, stride), (padding, padding))
    ref = F.conv2d(x, w, b, stride=stride, padding=padding)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [t for t in (x, w, b) if t is not None], g)
    ref_grads = torch.autograd.grad(ref, [t for t in (x, w, b) if t is not None], g)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r)
    assert torch.autograd.gradcheck(lambda x_, w_: unfold_conv2d(x_, w_, None, (stride, stride),
                                                                 (padding, padding)), (x, w))


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'sliced'])
@pytest.mark.parametrize('k,stride,padding', [(3, 1, 1), (3, 2, 1), (1, 2, 0), (2, 1, 0)])
def test_im2row_is_unfold_transposed_on_any_strides(layout, k, stride, padding):
    """Rows of Im2Row are F.unfold's columns, (n, oy, ox) by (c, ky, kx), for inputs of any memory layout, and its
    backward is F.fold's (the gradient summed over the overlapping windows)."""
    torch.manual_seed(0)
    base = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    x = {'contiguous': base, 'channels_last': base.contiguous(memory_format=torch.channels_last),
         'sliced': base[:, 1:, :, 1:]}[layout].requires_grad_()
    rows = Im2Row.apply(x, (k, k), (stride, stride), (padding, padding))
    cols = F.unfold(x, k, padding=padding, stride=stride)  # [N, C*k*k, P]
    torch.testing.assert_close(rows, cols.transpose(1, 2).reshape(-1, cols.size(1)), rtol=0, atol=0)
    g = torch.randn_like(rows)
    (grad,) = torch.autograd.grad(rows, x, g)
    ref = F.fold(g.view(x.size(0), -1, g.size(1)).transpose(1, 2), x.shape[-2:], k, padding=padding, stride=stride)
    torch.testing.assert_close(grad, ref)


def test_module_takes_the_fast_path_only_where_it_applies(monkeypatch):
    import lib.model.faster_rcnn.small_map_conv as smc
    calls = []
    real = smc.unfold_conv2d
    monkeypatch.setattr(smc, 'unfold_conv2d', lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, padding=1)
    fast = use_small_map_convs(nn.Sequential(conv))[0]
    assert type(fast) is SmallMapConv2d and fast is conv
    small = torch.randn(2, 6, 4, 4)            # 16 output pixels: fast path
    torch.testing.assert_close(fast(small), F.conv2d(small, conv.weight, conv.bias, padding=1))
    assert len(calls) == 1
    big = torch.randn(1, 6, 5, 5)              # 25 > MAX_OUTPUT_PIXELS: mkldnn
    assert 25 > MAX_OUTPUT_PIXELS
    torch.testing.assert_close(fast(big), F.conv2d(big, conv.weight, conv.bias, padding=1))
    assert len(calls) == 1
    dilated = use_small_map_convs(nn.Sequential(nn.Conv2d(6, 4, 3, padding=2, dilation=2)))[0]
    dilated(small)
    assert len(calls) == 1


def test_state_dict_and_the_resnet_head_are_unchanged(tiny_cfg):
    from lib.model.faster_rcnn.resnet import resnet
    from frcnn_helpers import CLASSES
    torch.manual_seed(0)
    model = resnet(CLASSES, 18)
    model.create_architecture()
    convs = [m for m in model.RCNN_top.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is SmallMapConv2d for m in convs)
    assert all(type(m) is nn.Conv2d for m in model.RCNN_base.modules() if isinstance(m, nn.Conv2d))
    keys = set(model.state_dict())
    assert 'RCNN_top.0.0.conv1.weight' in keys and not any('SmallMap' in k for k in keys)
    pooled = torch.randn(5, 256, 4, 4)
    model.eval()
    with torch.no_grad():
        fast = model._head_to_tail(pooled)
        for m in convs:
            m.__class__ = nn.Conv2d
        ref = model._head_to_tail(pooled)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('amp', [False, True])
def test_the_product_is_one_matrix_multiply_whether_or_not_the_weight_needs_a_gradient(amp):
    """At test time under bf16 autocast the weight is a copy that needs no gradient; the product must stay one
    matrix multiply (a batched one over a broadcast weight was 17-34x slower on the CPU) and equal conv2d."""
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    conv = use_small_map_convs(nn.Sequential(nn.Conv2d(16, 8, 3, padding=1, bias=False)))[0].eval()
    x = torch.randn(5, 16, 2, 2)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = conv(x)
    ref = F.conv2d(x, conv.weight.detach(), padding=1)
    ops = {e.key: e.count for e in prof.key_averages()}
    assert ops.get('aten::mm') == 1 and 'aten::bmm' not in ops
    assert out.dtype == (torch.bfloat16 if amp else torch.float32)
    torch.testing.assert_close(out.float(), ref, **({'rtol': 2e-2, 'atol': 5e-2} if amp else {}))
