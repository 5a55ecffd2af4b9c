"""lib/model/utils/blob.py: image resizing as the original's prep_im_for_blob."""
import cv2
import numpy as np
import pytest

from lib.model.utils.blob import prep_im_for_blob, resize_image


@pytest.mark.parametrize('h,w,scale', [(333, 500, 600 / 333), (375, 500, 1.6), (200, 301, 256 / 200),
                                       (480, 640, 0.5)])
def test_resize_samples_as_the_originals_fx_fy_call(h, w, scale):
    im = np.random.default_rng(h).integers(0, 255, (h, w, 3)).astype(np.float32)
    out = resize_image(im, scale)
    assert out.shape == (round(h * scale), round(w * scale), 3)
    np.testing.assert_array_equal(out, cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR))


def test_prep_im_for_blob_scales_the_short_side_and_caps_the_long_one():
    im = np.full((300, 900, 3), 128, np.uint8)
    blob, scale = prep_im_for_blob(im, np.zeros((1, 1, 3), np.float32), 600, 1000)
    assert scale == pytest.approx(1000 / 900) and blob.shape == (333, 1000, 3)
