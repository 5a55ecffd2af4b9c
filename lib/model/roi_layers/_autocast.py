"""Autocast support for the compiled ops, which need one dtype for all their float inputs."""
import torch


def autocast_to_float32(a, b):
    """Under autocast, runs mixed-precision pairs in float32 (as torchvision's ops do).

    Returns (a, b, dtype): the inputs, cast to float32 when autocast is on for their device and their dtypes
    differ or the CPU kernels lack a's dtype, and the dtype the caller should give its result back in.
    """
    dtype = a.dtype
    if torch.is_autocast_enabled(a.device.type) and (
            a.dtype != b.dtype or (a.device.type == 'cpu' and a.dtype not in (torch.float32, torch.float64))):
        return a.float(), b.float(), dtype
    return a, b, dtype
