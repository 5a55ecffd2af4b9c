"""Shared test data for the model tests (imported by name: the tests folder is not a package)."""
import torch

CLASSES = ('__background__', 'circle', 'square')


def make_batch(B=2, H=96, W=128):
    """Random images, im_info, two gt boxes per image (zero padding rows after them) and num_boxes."""
    g = torch.Generator().manual_seed(0)
    im_data = torch.randn(B, 3, H, W, generator=g)
    im_info = torch.tensor([[H, W, 1.0]] * B)
    gt = torch.zeros(B, 5, 5)
    gt[:, 0] = torch.tensor([8., 10., 50., 60., 1.])
    gt[:, 1] = torch.tensor([60., 30., 120., 90., 2.])
    num_boxes = torch.full((B,), 2, dtype=torch.long)
    return im_data, im_info, gt, num_boxes
