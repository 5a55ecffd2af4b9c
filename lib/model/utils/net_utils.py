"""Loss, crop pooling, initialisation and small training helpers used by the Faster R-CNN model and the
training scripts (checkpoint saving lives elsewhere)."""
import contextlib

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class AutocastForward(nn.Module):
    """Runs ``module`` under ``torch.autocast(device_type, dtype=dtype)`` inside its own forward.

    DataParallel runs each replica in a worker thread and enters autocast there with that thread's default dtype
    (float16 on CUDA), not the caller's: wrapped in this, a bfloat16 run stays bfloat16 on every GPU."""

    def __init__(self, module, dtype, device_type='cuda'):
        super().__init__()
        self.module = module
        self.dtype = dtype
        self.device_type = device_type

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs)


def weights_normal_init(model, dev=0.01):
    """Draw the weights of every Conv2d and Linear in ``model`` (or a list of models) from N(0, dev)."""
    if isinstance(model, (list, tuple)):
        for m in model:
            weights_normal_init(m, dev)
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data.normal_(0.0, dev)


def normal_init(m, mean, stddev, truncated=False):
    """Initialise one layer: weight ~ N(mean, stddev) (or the original's cheap truncated normal: a standard
    normal folded into (-2, 2) by fmod, then scaled), bias = 0."""
    if truncated:
        m.weight.data.normal_().fmod_(2).mul_(stddev).add_(mean)
    else:
        m.weight.data.normal_(mean, stddev)
    if m.bias is not None:
        m.bias.data.zero_()


def clip_gradient(model, clip_norm):
    """Scale all gradients so that their global L2 norm is at most ``clip_norm``.

    Parameters without a gradient (frozen, or unused in this step) are skipped. Returns the norm before
    clipping as a 0-dim tensor (no host synchronisation).
    """
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
    scale = clip_norm / total.clamp(min=clip_norm)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total


def fused_optimizer_ok(params):
    """Whether PyTorch's fused optimizer kernels (SGD, Adam, AdamW: one kernel for all tensors instead of several
    small ops per tensor, same arithmetic) take ``params``: floating-point tensors on the CPU or CUDA."""
    return all(p.device.type in ('cpu', 'cuda') and p.is_floating_point() for p in params)


def match_state_layouts(optimizer):
    """Give each per-parameter state tensor of ``optimizer`` (momentum, Adam's moments) its parameter's memory
    layout, as after a resume where the checkpoint's model was in another layout (cfg.CHANNELS_LAST). The fused
    kernels walk a parameter, its gradient and its state in memory order, so an NCHW momentum buffer for an NHWC
    weight updates the wrong elements (torch 2.14)."""
    for group in optimizer.param_groups:
        for p in group['params']:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def adjust_learning_rate(optimizer, decay=0.1):
    """Multiply the learning rate of every parameter group by ``decay``."""
    for param_group in optimizer.param_groups:
        param_group['lr'] = decay * param_group['lr']


@contextlib.contextmanager
def scaled_learning_rate(optimizer, factor):
    """Every parameter group's lr x ``factor`` inside the block (an optimizer step), the groups' own lrs put back
    after it, exactly, so that the optimizer's state and the checkpoints hold the schedule's lr only. A factor of 1
    touches nothing."""
    if factor == 1:
        yield
        return
    scheduled = [g['lr'] for g in optimizer.param_groups]
    for g, lr in zip(optimizer.param_groups, scheduled):
        g['lr'] = lr * factor
    try:
        yield
    finally:
        for g, lr in zip(optimizer.param_groups, scheduled):
            g['lr'] = lr


def vis_detections(im, class_name, dets, thresh=0.8):
    """Draw up to 10 detections scoring above ``thresh`` on ``im`` (BGR uint8, drawn in place) and return it.

    Args:
        im: [H, W, 3] image.
        class_name: label to print.
        dets: [D, 5] array (x1, y1, x2, y2, score).
    """
    for i in range(min(10, dets.shape[0])):
        bbox = tuple(int(np.round(x)) for x in dets[i, :4])
        score = float(dets[i, -1])
        if score > thresh:
            cv2.rectangle(im, bbox[0:2], bbox[2:4], (0, 204, 0), 2)
            cv2.putText(im, f'{class_name}: {score:.3f}', (bbox[0], bbox[1] + 15),
                        cv2.FONT_HERSHEY_PLAIN, 1.0, (0, 0, 255), thickness=1)
    return im


def _smooth_l1_loss(bbox_pred, bbox_targets, bbox_inside_weights, bbox_outside_weights, sigma=1.0, dim=(1,)):
    """The original's weighted smooth-L1 loss.

    With d = inside * (pred - target):  0.5 * sigma^2 * d^2 where |d| < 1 / sigma^2, else |d| - 0.5 / sigma^2;
    multiplied by the outside weights, summed over ``dim`` (highest first) and averaged over what is left.
    """
    sigma_2 = sigma ** 2
    in_box_diff = bbox_inside_weights * (bbox_pred - bbox_targets)
    abs_in_box_diff = torch.abs(in_box_diff)
    smooth_l1_sign = (abs_in_box_diff < 1. / sigma_2).detach().to(in_box_diff.dtype)
    in_loss_box = (torch.pow(in_box_diff, 2) * (sigma_2 / 2.) * smooth_l1_sign
                   + (abs_in_box_diff - (0.5 / sigma_2)) * (1. - smooth_l1_sign))
    loss_box = bbox_outside_weights * in_loss_box
    for i in sorted(dim, reverse=True):
        loss_box = loss_box.sum(i)
    return loss_box.mean()


def _affine_theta(rois, input_size, spatial_scale=1.0 / 16):
    """Affine matrices mapping the output grid of ``F.affine_grid`` onto each roi (align_corners=True).

    A roi (x1, y1, x2, y2) in image pixels is scaled to feature cells (times spatial_scale); with a feature
    map of width W, the normalised x of cell x is 2x/(W-1) - 1, so u in [-1, 1] maps to
    x = (x2-x1)/(W-1) * u + (x1+x2-W+1)/(W-1), and likewise for y.

    Args:
        rois: [K, 5] (batch index, x1, y1, x2, y2).
        input_size: (H, W) of the feature map.
    Returns:
        theta [K, 2, 3], rows (x, y) as F.affine_grid expects.
    """
    rois = rois.detach()
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale for i in range(1, 5))
    height, width = input_size
    # a one-cell-wide map has no extent to normalise by; any finite value samples its single cell
    wd = float(max(width - 1, 1))
    hd = float(max(height - 1, 1))
    zero = torch.zeros_like(x1)
    theta = torch.stack((
        (x2 - x1) / wd, zero, (x1 + x2 - width + 1) / wd,
        zero, (y2 - y1) / hd, (y1 + y2 - height + 1) / hd), dim=1)
    return theta.view(-1, 2, 3)


def _affine_grid_gen(rois, input_size, grid_size, spatial_scale=1.0 / 16):
    """Sampling grid [K, grid_size, grid_size, 2] (x, y normalised, align_corners=True) for each roi."""
    theta = _affine_theta(rois, input_size, spatial_scale)
    return F.affine_grid(theta, [rois.size(0), 1, grid_size, grid_size], align_corners=True)


def _crop_pool_layer(bottom, rois, pooling_size=7, max_pool=True, spatial_scale=1.0 / 16):
    """POOLING_MODE 'crop': bilinear crop-and-resize of each roi (a spatial transformer), optionally sampled
    at twice the size and max-pooled 2x2 (CROP_RESIZE_WITH_MAX_POOL).

    Args:
        bottom: [B, C, H, W] feature map.
        rois: [B, R, 5] rois as produced by the proposal layers (row b belongs to image b), or [K, 5] with
            K = B * R rows ordered image by image (the layout of ``rois.view(-1, 5)``). Column 0 is not read:
            the image of a roi is given by its position, as in the original's RoICrop.
        pooling_size: side of the output.
        max_pool: sample 2 * pooling_size and max-pool 2x2.
        spatial_scale: feature cells per image pixel.
    Returns:
        [B*R, C, pooling_size, pooling_size].
    """
    B, C, H, W = bottom.shape
    if rois.dim() == 2:
        if rois.size(0) % B != 0:
            raise ValueError(f'_crop_pool_layer: {rois.size(0)} rois cannot be split evenly over {B} images; '
                             f'pass rois as [B, R, 5]')
        rois = rois.view(B, -1, 5)
    R = rois.size(1)
    gs = pooling_size * 2 if max_pool else pooling_size
    device_type = bottom.device.type
    if torch.is_autocast_enabled(device_type):
        # autocast would build the grid with a bf16/fp16 matmul: sample positions off by ~0.1-0.2 cells. Sample in
        # float32, as the compiled RoI ops do under autocast, and return the input's dtype.
        with torch.autocast(device_type, enabled=False):
            crops = _crop_pool_layer(bottom.float(), rois.float(), pooling_size, max_pool, spatial_scale)
        return crops.to(bottom.dtype)
    grid = _affine_grid_gen(rois.reshape(-1, 5), (H, W), gs, spatial_scale).to(bottom.dtype)
    # (B*R, gs, gs, 2) -> (B, R*gs, gs, 2): each image samples all of its rois in one grid_sample call
    grid = grid.view(B, R * gs, gs, 2)
    crops = F.grid_sample(bottom, grid, mode='bilinear', padding_mode='zeros', align_corners=True)
    # (B, C, R*gs, gs) -> (B, C, R, gs, gs) -> (B*R, C, gs, gs)
    crops = crops.view(B, C, R, gs, gs).permute(0, 2, 1, 3, 4).reshape(B * R, C, gs, gs)
    if max_pool:
        crops = F.max_pool2d(crops, 2, 2)
    return crops
