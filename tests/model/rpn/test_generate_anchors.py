import numpy as np
import torch

from lib.model.rpn.generate_anchors import generate_anchors, grid_anchors

ORIGINAL_ANCHORS = np.array([
    [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
    [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
    [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]], dtype=np.float64)


def test_default_anchors_equal_the_originals():
    np.testing.assert_array_equal(generate_anchors(), ORIGINAL_ANCHORS)


def test_custom_scales_and_ratios():
    # ratio 1, scale 1: the base window itself (0, 0, 15, 15)
    np.testing.assert_array_equal(generate_anchors(ratios=[1], scales=[1]), [[0, 0, 15, 15]])
    a = generate_anchors(ratios=[0.5, 2], scales=[1, 2, 4])
    assert a.shape == (6, 4)
    w = a[:, 2] - a[:, 0] + 1
    h = a[:, 3] - a[:, 1] + 1
    # ratio 0.5: w = round(sqrt(256 / 0.5)) = 23, h = round(23 * 0.5) = 12; then scaled by 1, 2, 4
    np.testing.assert_array_equal(w[:3], [23, 46, 92])
    np.testing.assert_array_equal(h[:3], [12, 24, 48])


def test_grid_anchors_order_is_h_w_a():
    base = torch.tensor([[0., 0., 15., 15.], [-8., -8., 23., 23.]])
    g = grid_anchors(base, 2, 3, 16)
    assert g.shape == (2 * 3 * 2, 4)
    # row (h * W + w) * A + a is base anchor a shifted by (16 w, 16 h)
    for h in range(2):
        for w in range(3):
            for a in range(2):
                expect = base[a] + torch.tensor([16. * w, 16. * h, 16. * w, 16. * h])
                assert torch.equal(g[(h * 3 + w) * 2 + a], expect)
