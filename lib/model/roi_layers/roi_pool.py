"""Caffe max RoI pooling (the original's ROIPool) with autograd, over torch.ops.faster_rcnn.

Shapes: B images, C channels, H x W feature map, K rois, (ph, pw) output size.
rois are (batch index, x1, y1, x2, y2) in image pixels; spatial_scale maps them to the feature map
(1/16 for a stride-16 backbone). Corners are rounded to cells, a roi covers max(x2 - x1 + 1, 1) cells, and
each output cell is the max over its bin (0 for an empty bin). Gradients go to the argmax of each bin.
"""
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

from lib.model.roi_layers._ext import _C  # noqa: F401  (registers torch.ops.faster_rcnn)
from lib.model.roi_layers._autocast import autocast_to_float32


class _ROIPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale):
        ph, pw = output_size
        output, argmax = torch.ops.faster_rcnn.roi_pool_forward(input, rois, spatial_scale, ph, pw)
        ctx.save_for_backward(rois, argmax)
        ctx.geometry = (spatial_scale, ph, pw, tuple(input.shape))
        ctx.mark_non_differentiable(argmax)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        rois, argmax = ctx.saved_tensors
        spatial_scale, ph, pw, (b, c, h, w) = ctx.geometry
        grad_input = torch.ops.faster_rcnn.roi_pool_backward(
            grad_output, rois, argmax, spatial_scale, ph, pw, b, c, h, w)
        return grad_input, None, None, None


def roi_pool(input, rois, output_size, spatial_scale):
    """Max RoI pooling.

    Args:
        input (Tensor[B, C, H, W]): feature map.
        rois (Tensor[K, 5]): (batch index, x1, y1, x2, y2) in image pixels, same dtype and device as input.
        output_size (int or (ph, pw)): output cells per roi.
        spatial_scale (float): feature-map cells per image pixel.

    Returns:
        Tensor[K, C, ph, pw]
    """
    ph, pw = _pair(output_size)
    input, rois, dtype = autocast_to_float32(input, rois)
    return _ROIPoolFunction.apply(input, rois, (int(ph), int(pw)), float(spatial_scale)).to(dtype)


class ROIPool(nn.Module):
    """Module form of roi_pool: ROIPool(output_size, spatial_scale)(input[B, C, H, W], rois[K, 5])."""

    def __init__(self, output_size, spatial_scale):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)

    def forward(self, input, rois):
        """input [B, C, H, W], rois [K, 5] -> [K, C, ph, pw]."""
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self):
        return f'output_size={self.output_size}, spatial_scale={self.spatial_scale}'
