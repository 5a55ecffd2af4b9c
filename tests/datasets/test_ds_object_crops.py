"""lib/datasets/object_crops.py: where the crops come from, their labels, padding at the borders, determinism."""
import cv2
import numpy as np
import pytest

from lib.datasets.object_crops import object_crops

RED = (0, 0, 255)  # BGR


def _image(tmp_path, name, h, w, boxes):
    """A black PNG (lossless) with red filled boxes (pixel-inclusive x1, y1, x2, y2); returns its path."""
    im = np.zeros((h, w, 3), np.uint8)
    for x1, y1, x2, y2 in boxes:
        im[y1:y2 + 1, x1:x2 + 1] = RED
    path = str(tmp_path / f'{name}.png')
    cv2.imwrite(path, im)
    return path


def _entry(path, boxes, classes, flipped=False):
    return {'image': path, 'boxes': np.array(boxes, np.uint16).reshape(-1, 4),
            'gt_classes': np.array(classes, np.int32), 'flipped': flipped}


def _is_red(px):
    return np.abs(px.astype(int) - RED).max(axis=-1) <= 2


def test_an_object_crop_is_centred_on_its_box_with_the_context_around(tmp_path):
    # a 40 x 40 box in a 100 x 200 image at scale 1: the stored crop (20 px) spans 1.2 * 1.25 * 40 = 60 px, so the
    # box covers its pixels 3.3..16.7 and the corners are background
    path = _image(tmp_path, 'a', 100, 200, [(50, 20, 89, 59)])
    crops, labels = object_crops([_entry(path, [(50, 20, 89, 59)], [3])], target_size=100, max_size=1000,
                                 crop_size=16, bg_per_image=0)
    assert crops.shape == (1, 20, 20, 3) and crops.dtype == np.uint8
    assert labels.tolist() == [3]
    assert _is_red(crops[0, 5:15, 5:15]).all()
    for corner in (crops[0, :2, :2], crops[0, :2, -2:], crops[0, -2:, :2], crops[0, -2:, -2:]):
        assert (corner.max(axis=-1) <= 2).all()


def test_images_are_scaled_as_the_data_layer_scales_them(tmp_path):
    # short side 100 -> 50 halves the image; the box, scaled with it, is still the crop's centre; with
    # max_size 80 the long side (200) caps the scale at 0.4 and the result is the same crop, only blurrier
    path = _image(tmp_path, 'a', 100, 200, [(50, 20, 89, 59)])
    entry = _entry(path, [(50, 20, 89, 59)], [1])
    for target, max_size in ((50, 1000), (100, 80)):
        crops, _ = object_crops([entry], target_size=target, max_size=max_size, crop_size=16, bg_per_image=0)
        assert _is_red(crops[0, 6:14, 6:14]).all()
        assert (crops[0, 0, 0].max() <= 10)


def test_crops_past_the_border_mirror_the_image(tmp_path):
    # the box fills the image: the crop (1.5 x the box) reaches past every border, further than one reflection
    # of a narrow image reaches, and must still come out whole, red in the middle
    path = _image(tmp_path, 'a', 30, 12, [(0, 0, 11, 29)])
    crops, labels = object_crops([_entry(path, [(0, 0, 11, 29)], [2])], target_size=12, max_size=1000,
                                 crop_size=16, bg_per_image=0)
    assert crops.shape == (1, 20, 20, 3) and labels.tolist() == [2]
    assert _is_red(crops[0]).all()  # the image is all box, so its mirror images are red too


def test_a_one_pixel_wide_image_is_padded_by_repeating_it(tmp_path):
    # nothing to mirror in a 1-pixel-wide image (reflection would loop for ever): its edge is repeated
    path = _image(tmp_path, 'a', 20, 1, [(0, 5, 0, 14)])
    crops, labels = object_crops([_entry(path, [(0, 5, 0, 14)], [1])], target_size=1, max_size=1000, crop_size=16,
                                 bg_per_image=0)
    assert crops.shape == (1, 20, 20, 3) and labels.tolist() == [1]
    assert _is_red(crops[0, 8:12, 8:12]).all()


def test_flipped_entries_are_read_mirrored(tmp_path):
    # a flipped roidb entry holds mirrored boxes (imdb.append_flipped_images): its crop is the mirror of the
    # unflipped one
    path = _image(tmp_path, 'a', 100, 200, [(10, 20, 49, 59)])
    im = cv2.imread(path)
    im[30:50, 12:20] = (255, 0, 0)  # a blue mark on the left of the box
    cv2.imwrite(path, im)
    plain, _ = object_crops([_entry(path, [(10, 20, 49, 59)], [1])], 100, 1000, crop_size=16, bg_per_image=0)
    flip, _ = object_crops([_entry(path, [(150, 20, 189, 59)], [1], flipped=True)], 100, 1000, crop_size=16,
                           bg_per_image=0)
    np.testing.assert_array_equal(flip[0], plain[0][:, ::-1])


def test_background_crops_are_labelled_0_and_kept_by_their_iou_with_the_boxes(tmp_path):
    boxes = [(50, 20, 89, 59), (120, 40, 179, 89)]
    path = _image(tmp_path, 'a', 100, 200, boxes)
    crops, labels = object_crops([_entry(path, boxes, [4, 5])], 100, 1000, crop_size=16, bg_per_image=40, seed=1)
    assert labels[:2].tolist() == [4, 5]
    assert 2 < len(labels) <= 2 + 40 and (labels[2:] == 0).all()

    # the box fills the left half: at bg_max_iou 0 (and no margin, so a crop is its square) every background
    # crop lies in the black right half; at the default 0.3 some squares overlap the box and are kept red in part
    half = [(0, 0, 99, 99)]
    path = _image(tmp_path, 'b', 100, 200, half)
    crops, labels = object_crops([_entry(path, half, [1])], 100, 1000, crop_size=16, margin=1.0, bg_per_image=60,
                                 bg_max_iou=0.0, seed=2)
    assert len(labels) > 3
    assert all(_is_red(c).mean() < 0.02 for c in crops[1:])
    crops, _ = object_crops([_entry(path, half, [1])], 100, 1000, crop_size=16, margin=1.0, bg_per_image=60,
                            seed=2)
    assert any(_is_red(c).mean() > 0.1 for c in crops[1:])


def test_the_same_seed_gives_the_same_crops_and_another_seed_other_background(tmp_path):
    boxes = [(50, 20, 89, 59)]
    path = _image(tmp_path, 'a', 100, 200, boxes)
    roidb = [_entry(path, boxes, [1])]
    a = object_crops(roidb, 100, 1000, crop_size=16, bg_per_image=8, seed=5)
    b = object_crops(roidb, 100, 1000, crop_size=16, bg_per_image=8, seed=5)
    c = object_crops(roidb, 100, 1000, crop_size=16, bg_per_image=8, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def test_an_image_without_boxes_gives_background_only_and_no_images_give_an_empty_set(tmp_path):
    path = _image(tmp_path, 'a', 100, 200, [])
    crops, labels = object_crops([_entry(path, [], [])], 100, 1000, crop_size=16, bg_per_image=5)
    assert len(labels) == 5 and (labels == 0).all()
    crops, labels = object_crops([], 100, 1000, crop_size=16)
    assert crops.shape == (0, 20, 20, 3) and labels.shape == (0,)


def test_background_gt_rows_are_not_objects(tmp_path):
    # rows with class 0 (proposals in a roidb) are not gt boxes (minibatch.gt_indices)
    path = _image(tmp_path, 'a', 100, 200, [(50, 20, 89, 59)])
    _, labels = object_crops([_entry(path, [(50, 20, 89, 59), (0, 0, 9, 9)], [2, 0])], 100, 1000, crop_size=16,
                             bg_per_image=0)
    assert labels.tolist() == [2]


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match='crop_size must be >= 8'):
        object_crops([], 100, crop_size=4)
    with pytest.raises(ValueError, match='margin must be >= 1'):
        object_crops([], 100, margin=0.9)
