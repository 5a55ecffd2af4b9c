"""A faster CPU path for the convolutions of the per-roi head (the ResNet's layer4 on pooled rois).

The head runs layer4 on [R, C, S, S] pooled features (S = POOLING_SIZE), so its 3x3 convolutions see maps of
2x2 to 7x7 pixels with hundreds of channels. oneDNN (mkldnn), torch's CPU convolution, is slow on such tiny maps:
on a 2-core CPU a 3x3 512->512 conv on [32, 512, 2, 2] takes about 10 ms forward and 44 ms backward, where the
same product written as unfold + one matrix multiply takes 6 and 15 ms (docs/BENCHMARKS.md). ``SmallMapConv2d``
is an ``nn.Conv2d`` (same parameters, state dict and initialisation) that takes that route on CPU tensors whose
output map has at most ``MAX_OUTPUT_PIXELS`` pixels; everything else (GPU tensors, larger maps, grouped or dilated
convs) goes through ``F.conv2d`` unchanged. The patches are gathered by ``Im2Row`` (one strided copy; its backward
adds the kh*kw shifted slices of the gradient back into the padded map) rather than by F.unfold, whose im2col,
col2im and copies took 4.4 of the 12.5 ms of a 512->512 conv's forward + backward on [32, 512, 2, 2] on a 2-core
Ice Lake CPU (10.8 ms with Im2Row; docs/BENCHMARKS.md). Autograd differentiates the matrix product.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

MAX_OUTPUT_PIXELS = 16


def output_size(h, w, kernel_size, stride, padding):
    """(Ho, Wo) of an undilated convolution."""
    return ((h + 2 * padding[0] - kernel_size[0]) // stride[0] + 1,
            (w + 2 * padding[1] - kernel_size[1]) // stride[1] + 1)


class Im2Row(torch.autograd.Function):
    """The convolution's patches as rows: x [N, C, H, W] -> [N*Ho*Wo, C*kh*kw], row (n, oy, ox) holding the
    zero-padded window under output pixel (oy, ox) in the weight's (C, kh, kw) order. Forward is one copy of a
    strided view of the padded input; backward sums each of the kh*kw window positions' gradient slices into a
    zero map (col2im as kh*kw strided adds) and crops the padding."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
        ho, wo = output_size(h, w, kernel_size, stride, padding)
        xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        s_n, s_c, s_h, s_w = xp.stride()
        windows = xp.as_strided((n, ho, wo, c, kh, kw), (s_n, s_h * sh, s_w * sw, s_c, s_h, s_w),
                                xp.storage_offset())
        ctx.geometry = (n, c, h, w, ho, wo, kernel_size, stride, padding)
        return windows.reshape(n * ho * wo, c * kh * kw)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rows):
        n, c, h, w, ho, wo, (kh, kw), (sh, sw), (ph, pw) = ctx.geometry
        g = grad_rows.view(n, ho, wo, c, kh, kw)
        # the padded map's gradient, channels innermost like the rows' (N, Ho, Wo, C) order
        grad = grad_rows.new_zeros((n, h + 2 * ph, w + 2 * pw, c)).permute(0, 3, 1, 2)
        for ky in range(kh):
            for kx in range(kw):
                grad[:, :, ky:ky + (ho - 1) * sh + 1:sh, kx:kx + (wo - 1) * sw + 1:sw] += \
                    g[:, :, :, :, ky, kx].permute(0, 3, 1, 2)
        return grad[:, :, ph:ph + h, pw:pw + w], None, None, None


def unfold_conv2d(x, weight, bias, stride, padding):
    """conv2d as im2row + matmul. x [N, C, H, W], weight [O, C, kh, kw], bias [O] or None -> [N, O, Ho, Wo]."""
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = output_size(h, w, (kh, kw), stride, padding)
    rows = Im2Row.apply(x, (kh, kw), tuple(stride), tuple(padding))  # [N*P, K]
    # one [N*Ho*Wo, C*kh*kw] x [C*kh*kw, O] product. Written as weight [O, K] @ cols [N, K, P], torch.matmul
    # made it one matrix product only while the weight needs a gradient; otherwise (bf16 autocast's weight copy
    # at test time, a frozen weight) it broadcast the weight into a batched product that took 217 ms instead of
    # 16.5 (float32) and 285 ms instead of 8.4 (bf16) for 150 rois of a 512->512 3x3 conv on a 2-core CPU.
    out = (rows @ weight.reshape(o, -1).t()).view(n, ho * wo, o).transpose(1, 2)  # [N, O, P]
    if bias is not None:
        out = out + bias.view(1, o, 1)
    return out.reshape(n, o, ho, wo)


class SmallMapConv2d(nn.Conv2d):
    """nn.Conv2d with the unfold + matmul path for small maps on CPU (see the module docstring)."""

    def forward(self, x):
        if (x.device.type == 'cpu' and x.dim() == 4 and self.groups == 1 and self.dilation == (1, 1)
                and self.padding_mode == 'zeros' and isinstance(self.padding, tuple)
                and math.prod(output_size(*x.shape[-2:], self.kernel_size, self.stride, self.padding))
                <= MAX_OUTPUT_PIXELS):
            return unfold_conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


def use_small_map_convs(module):
    """Turn every plain nn.Conv2d inside ``module`` into a SmallMapConv2d, in place (parameters untouched)."""
    for m in module.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = SmallMapConv2d
    return module
