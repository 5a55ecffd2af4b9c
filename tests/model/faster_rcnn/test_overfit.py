"""The whole model learns: a small ResNet-18 from scratch overfits one synthetic image."""
import pytest
import torch

pytest.importorskip('lib.model.roi_layers', reason='compiled ops not built', exc_type=ImportError)

from lib.model.faster_rcnn.resnet import resnet  # noqa: E402
from lib.model.utils.config import cfg  # noqa: E402
from frcnn_helpers import CLASSES  # noqa: E402


def test_res18_overfits_one_image(tiny_cfg):
    cfg.TRAIN.BN_TRAIN = True
    cfg.RESNET.FIXED_BLOCKS = 0
    cfg.POOLING_SIZE = 4      # a smaller per-roi head keeps the 30 steps fast on a CPU
    torch.manual_seed(0)
    model = resnet(CLASSES, 18)
    model.create_architecture()
    model.train()

    H, W = 64, 64
    im = torch.zeros(1, 3, H, W)
    im[:, :, 6:34, 8:30] = 2.0        # a bright rectangle (class 2)
    im[:, 0, 36:60, 34:60] = -2.0     # a dark-red patch (class 1)
    gt = torch.zeros(1, 4, 5)
    gt[0, 0] = torch.tensor([8., 6., 29., 33., 2.])
    gt[0, 1] = torch.tensor([34., 36., 59., 59., 1.])
    im_info = torch.tensor([[H, W, 1.0]])
    num_boxes = torch.tensor([2])

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    losses = []
    for _ in range(30):
        out = model(im, im_info, gt, num_boxes)
        loss = out.rpn_loss_cls + out.rpn_loss_bbox + out.RCNN_loss_cls + out.RCNN_loss_bbox
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # the sampled anchors and rois change every step, so compare averages
    first = sum(losses[:3]) / 3
    last = sum(losses[-5:]) / 5
    assert last < 0.5 * first, losses
