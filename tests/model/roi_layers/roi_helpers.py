"""Inputs shared by the RoI op tests (imported by name: the tests folder is not a package)."""
import torch


def random_rois(n, batch, img_h, img_w, seed, dtype=torch.float32):
    """n rois (batch index, x1, y1, x2, y2) in image pixels, some reaching outside the image."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([img_w, img_h]) * 1.2 - 10
    wh = torch.rand(n, 2, generator=g) * torch.tensor([img_w, img_h]) * 0.6
    b = torch.randint(batch, (n, 1), generator=g).float()
    return torch.cat([b, xy, xy + wh], 1).to(dtype)
