"""Bilinear RoIAlign (the original's ROIAlign, aligned=False) with autograd, over torch.ops.faster_rcnn.

Shapes: B images, C channels, H x W feature map, K rois, (ph, pw) output size.
rois are (batch index, x1, y1, x2, y2) in image pixels. The roi is scaled by spatial_scale with no half-pixel
shift and made at least 1 x 1 cells; each bin averages grid_h x grid_w bilinear samples, where the grid is
sampling_ratio per side, or ceil(roi size / output size) when sampling_ratio is 0. Equals
torchvision.ops.roi_align(..., aligned=False). The backward scatters the bilinear weights.
"""
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

from lib.model.roi_layers._ext import _C  # noqa: F401  (registers torch.ops.faster_rcnn)
from lib.model.roi_layers._autocast import autocast_to_float32


class _ROIAlignFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio):
        ph, pw = output_size
        output = torch.ops.faster_rcnn.roi_align_forward(input, rois, spatial_scale, ph, pw, sampling_ratio)
        ctx.save_for_backward(rois)
        ctx.geometry = (spatial_scale, ph, pw, tuple(input.shape), sampling_ratio)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        spatial_scale, ph, pw, (b, c, h, w), sampling_ratio = ctx.geometry
        grad_input = torch.ops.faster_rcnn.roi_align_backward(
            grad_output, rois, spatial_scale, ph, pw, b, c, h, w, sampling_ratio)
        return grad_input, None, None, None, None


def roi_align(input, rois, output_size, spatial_scale, sampling_ratio=0):
    """RoIAlign with aligned=False geometry.

    Args:
        input (Tensor[B, C, H, W]): feature map.
        rois (Tensor[K, 5]): (batch index, x1, y1, x2, y2) in image pixels, same dtype and device as input.
        output_size (int or (ph, pw)): output cells per roi.
        spatial_scale (float): feature-map cells per image pixel.
        sampling_ratio (int): samples per bin side; 0 = adaptive.

    Returns:
        Tensor[K, C, ph, pw]
    """
    ph, pw = _pair(output_size)
    input, rois, dtype = autocast_to_float32(input, rois)
    return _ROIAlignFunction.apply(input, rois, (int(ph), int(pw)), float(spatial_scale),
                                   int(sampling_ratio)).to(dtype)


class ROIAlign(nn.Module):
    """Module form of roi_align: ROIAlign(output_size, spatial_scale, sampling_ratio)(input, rois)."""

    def __init__(self, output_size, spatial_scale, sampling_ratio=0):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)

    def forward(self, input, rois):
        """input [B, C, H, W], rois [K, 5] -> [K, C, ph, pw]."""
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)

    def extra_repr(self):
        return (f'output_size={self.output_size}, spatial_scale={self.spatial_scale}, '
                f'sampling_ratio={self.sampling_ratio}')
