"""BatchNorm2d for the ResNet backbone: nn.BatchNorm2d, except when it is frozen and a gradient flows through it.

The original fine-tunes with every BatchNorm frozen (eval mode, affine parameters fixed; TRAIN.BN_TRAIN False).
A frozen BatchNorm is the per-channel affine map x * scale + shift, with scale = weight / sqrt(running_var + eps)
and shift = bias - running_mean * scale, whose input gradient is grad * scale. Yet F.batch_norm keeps its whole
input for the backward (the formula it shares with training mode needs it), so in a frozen ResNet every
convolution's output was kept twice: the saved tensors of a ResNet-101 C4 training step at 600 x 1000 (batch 1,
float32, the benchmark's configuration, the GPU's convolution path) came to 1302 MB against 814 MB for
torchvision's Faster R-CNN, whose FrozenBatchNorm2d is an affine map (counted with
torch.autograd.graph.saved_tensors_hooks, 2026-11-26; 753 MB with this class). Here the
frozen case is one torch.addcmul(shift, x, scale), which keeps only the [C] scale; scale and shift are computed
once and recomputed when a parameter or buffer changes (load_state_dict, .to()). Training BatchNorm, evaluation
under no_grad and an input that needs no gradient take nn.BatchNorm2d's path, so those results are unchanged.
Same parameters, buffers and state-dict keys as nn.BatchNorm2d.
"""
import torch
from torch import nn


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose frozen training-time forward keeps no copy of its input (see the module docstring)."""

    def forward(self, x):
        if self.training or not (torch.is_grad_enabled() and x.requires_grad) or not self._frozen_affine_ok():
            return super().forward(x)
        scale, shift = self._frozen_affine(x.dtype)
        return torch.addcmul(shift, x, scale)

    def _frozen_affine_ok(self):
        """Running statistics and affine parameters that do not train: the map is fixed."""
        return (self.track_running_stats and self.running_mean is not None and self.weight is not None
                and not self.weight.requires_grad and not self.bias.requires_grad)

    def _frozen_affine(self, dtype):
        """(scale, shift) as [1, C, 1, 1] tensors of ``dtype``, cached while the four tensors stay the same."""
        tensors = (self.weight, self.bias, self.running_mean, self.running_var)
        # the tensor objects, their in-place versions (load_state_dict copies in place) and devices (.to() swaps
        # their data); no data pointers, which fake tensors (tests/model/faster_rcnn/test_fake_cuda.py) lack
        key = (dtype,) + tuple((id(t), t._version, t.device) for t in tensors)
        if getattr(self, '_affine_key', None) != key:
            acc = torch.promote_types(self.weight.dtype, torch.float32)  # float32 at least, float64 stays
            with torch.no_grad():
                scale = self.weight.to(acc) * torch.rsqrt(self.running_var.to(acc) + self.eps)
                shift = self.bias.to(acc) - self.running_mean.to(acc) * scale
            self._affine = (scale.to(dtype).view(1, -1, 1, 1), shift.to(dtype).view(1, -1, 1, 1))
            self._affine_key = key
        return self._affine
