"""Image -> network input: read, scale, normalise one image, and stack images into a zero-padded blob.

Images are HxWx3 BGR uint8 arrays as OpenCV reads them. Two normalisations (cfg.INPUT_FORMAT):
  'caffe'   : BGR, 0..255, minus PIXEL_MEANS (BGR)                 -- the original's, for caffe weights
  'pytorch' : RGB, 0..1, minus PYTORCH_PIXEL_MEANS, / PYTORCH_PIXEL_STDS (RGB) -- torchvision weights
"""
import os

import cv2
import numpy as np

INPUT_FORMATS = ('caffe', 'pytorch')

# IGNORE_ORIENTATION: image sizes are read from file headers (PIL) and VOC boxes are in stored-pixel
# coordinates, so an EXIF rotation applied by the decoder would silently misplace every box.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | getattr(cv2, 'IMREAD_IGNORE_ORIENTATION', 0)


def read_image(path):
    """Read an image file as HxWx3 BGR uint8 (grayscale and 4-channel files become 3-channel).

    Raises FileNotFoundError when the file is missing and IOError when OpenCV cannot decode it; both name the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'image file not found: {path}')
    im = cv2.imread(path, _IMREAD_FLAGS)
    if im is None:
        raise IOError(f'could not read image (unsupported or corrupt file): {path}')
    return im


def im_scale_for(height, width, target_size, max_size=None):
    """Scale that makes the short side ``target_size``, reduced so the long side stays <= ``max_size``."""
    size_min = min(height, width)
    size_max = max(height, width)
    im_scale = float(target_size) / float(size_min)
    if max_size is not None and np.round(im_scale * size_max) > max_size:
        im_scale = float(max_size) / float(size_max)
    return im_scale


def normalize_image(im, input_format='caffe', pixel_means=None, pixel_stds=None):
    """BGR uint8/float HxWx3 -> float32 HxWx3 normalised as ``input_format`` says (see the module docstring).

    pixel_means / pixel_stds: (1, 1, 3) arrays (BGR for 'caffe', RGB for 'pytorch').
    """
    im = im.astype(np.float32, copy=True)
    if input_format == 'caffe':
        if pixel_means is not None:
            im -= np.asarray(pixel_means, dtype=np.float32)
        return im
    if input_format == 'pytorch':
        im = im[:, :, ::-1] / np.float32(255.0)
        if pixel_means is not None:
            im -= np.asarray(pixel_means, dtype=np.float32)
        if pixel_stds is not None:
            im /= np.asarray(pixel_stds, dtype=np.float32)
        return np.ascontiguousarray(im, dtype=np.float32)
    raise ValueError(f"unknown INPUT_FORMAT {input_format!r}; expected 'caffe' or 'pytorch'")


def resize_image(im, im_scale):
    """Resize by one factor on both axes (bilinear). The output size is round(H * s) x round(W * s).

    As the original, OpenCV is given the factor (fx = fy = s), so pixels are sampled at exactly 1 / s; given only
    the output size it would sample at W / round(W * s), up to a few pixel values apart.
    """
    h, w = im.shape[:2]
    new_w = max(1, int(np.round(w * im_scale)))
    new_h = max(1, int(np.round(h * im_scale)))
    if (new_h, new_w) == (h, w):
        return im
    out = cv2.resize(im, None, None, fx=im_scale, fy=im_scale, interpolation=cv2.INTER_LINEAR)
    if out.shape[:2] != (new_h, new_w):  # OpenCV rounds a .5 size its own way: keep the documented size
        out = cv2.resize(im, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return out


def prep_im_for_blob(im, pixel_means, target_size, max_size, pixel_stds=None, input_format='caffe'):
    """Normalise and scale one image (the original's name and first four arguments).

    Args:
        im: (H, W, 3) BGR image.
        pixel_means: (1, 1, 3) means in the order of ``input_format``.
        target_size: short side after scaling.
        max_size: cap on the long side after scaling (None: no cap).
    Returns:
        (H', W', 3) float32 image and the scale factor applied.
    """
    im = normalize_image(im, input_format, pixel_means, pixel_stds)
    im_scale = im_scale_for(im.shape[0], im.shape[1], target_size, max_size)
    return resize_image(im, im_scale), im_scale


def im_list_to_blob(ims):
    """Stack (H_i, W_i, 3) float images into a (N, max H, max W, 3) float32 blob, zero-padded bottom/right."""
    if len(ims) == 0:
        raise ValueError('im_list_to_blob needs at least one image')
    max_shape = np.array([im.shape for im in ims]).max(axis=0)
    blob = np.zeros((len(ims), max_shape[0], max_shape[1], 3), dtype=np.float32)
    for i, im in enumerate(ims):
        blob[i, :im.shape[0], :im.shape[1], :] = im
    return blob
