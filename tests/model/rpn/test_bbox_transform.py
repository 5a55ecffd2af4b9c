import math

import pytest
import torch

from lib.model.rpn.bbox_transform import (BBOX_XFORM_CLIP, bbox_overlaps, bbox_overlaps_batch, bbox_transform,
                                          bbox_transform_batch, bbox_transform_inv, clip_boxes)


def test_encode_hand_worked():
    ex = torch.tensor([[0., 0., 9., 19.]])    # w 10, h 20, centre (5, 10)
    gt = torch.tensor([[5., 10., 24., 29.]])  # w 20, h 20, centre (15, 20)
    d = bbox_transform(ex, gt)
    torch.testing.assert_close(d, torch.tensor([[10 / 10, 10 / 20, math.log(2.0), 0.0]]))


def test_round_trip_batched():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 50, 2, generator=g) * 100
    wh = torch.rand(2, 50, 2, generator=g) * 60 + 1
    ex = torch.cat([xy, xy + wh], 2)
    xy2 = torch.rand(2, 50, 2, generator=g) * 100
    wh2 = torch.rand(2, 50, 2, generator=g) * 60 + 1
    gt = torch.cat([xy2, xy2 + wh2], 2)
    d = bbox_transform_batch(ex, gt)
    assert d.shape == (2, 50, 4)
    torch.testing.assert_close(bbox_transform_inv(ex, d), gt, atol=1e-4, rtol=1e-5)
    # shared [N, 4] reference boxes against per-image targets
    d2 = bbox_transform_batch(ex[0], gt)
    torch.testing.assert_close(bbox_transform_inv(ex[0].expand(2, -1, -1), d2), gt, atol=1e-4, rtol=1e-5)


def test_decode_per_class_groups_and_clamp():
    boxes = torch.tensor([[[0., 0., 15., 15.]]])
    deltas = torch.tensor([[[0., 0., 0., 0., 0.5, 0., 0., 0., 0., 0., 100., 100.]]])
    out = bbox_transform_inv(boxes, deltas)
    assert out.shape == (1, 1, 12)
    # group 0: the box itself (centre 0 + 0.5 * 16 = 8, w 16 -> x1 = 8 - 8 = 0, x2 = 8 + 8 - 1 = 15)
    torch.testing.assert_close(out[0, 0, :4], torch.tensor([0., 0., 15., 15.]))
    # group 1: shifted by half a width (dx 0.5 * w 16 = 8)
    torch.testing.assert_close(out[0, 0, 4:8], torch.tensor([8., 0., 23., 15.]))
    # group 2: dw = 100 is clamped so the box stays finite: w = 16 * 1000 / 16
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 0, 10] - out[0, 0, 8] + 1, torch.tensor(16 * math.exp(BBOX_XFORM_CLIP)))


def test_clip_boxes_per_image_and_not_in_place():
    boxes = torch.tensor([[[-5., -3., 120., 90.]], [[-5., -3., 120., 90.]]])
    im_info = torch.tensor([[64., 100., 1.], [80., 50., 1.]])  # (H, W, scale)
    before = boxes.clone()
    out = clip_boxes(boxes, im_info)
    assert torch.equal(boxes, before)
    assert torch.equal(out[0, 0], torch.tensor([0., 0., 99., 63.]))
    assert torch.equal(out[1, 0], torch.tensor([0., 0., 49., 79.]))


def test_iou_hand_worked_pixel_inclusive():
    a = torch.tensor([[0., 0., 9., 9.]])          # 10 x 10 = 100 pixels
    b = torch.tensor([[5., 5., 14., 14.],         # 10 x 10; intersection x 5..9, y 5..9 = 5 x 5 = 25
                      [0., 0., 9., 9.],           # identical: 1
                      [10., 0., 19., 9.],         # touches at x 9|10: no shared pixel: 0
                      [9., 9., 9., 9.],           # one pixel inside a: 1 / 100
                      [0., 0., 4., 9.]])          # left half: 50 / 100
    iou = bbox_overlaps(a, b)
    # 25 / (100 + 100 - 25) = 25 / 175
    expect = torch.tensor([[25 / 175, 1.0, 0.0, 1 / 100, 0.5]])
    torch.testing.assert_close(iou, expect)


def test_iou_batch_padding_rules():
    anchors = torch.tensor([[0., 0., 9., 9.], [0., 0., 0., 0.]])
    gt = torch.tensor([[[0., 0., 9., 9., 1.], [0., 0., 0., 0., 0.]]])  # a box and a zero padding row
    ov = bbox_overlaps_batch(anchors, gt)
    assert ov.shape == (1, 2, 2)
    assert ov[0, 0, 0] == 1.0
    assert ov[0, 0, 1] == 0.0          # padding gt: 0 (not 1 / 100)
    assert (ov[0, 1] == -1).all()      # zero-area anchor: -1 against everything
    # [B, N, 5] rois read columns 1..4; [B, N, 4] all four
    rois = torch.tensor([[[0., 0., 0., 9., 9.]]])
    assert bbox_overlaps_batch(rois, gt)[0, 0, 0] == 1.0
    assert bbox_overlaps_batch(rois[:, :, 1:], gt)[0, 0, 0] == 1.0
    with pytest.raises(ValueError, match='anchors must be'):
        bbox_overlaps_batch(torch.zeros(4), gt)
