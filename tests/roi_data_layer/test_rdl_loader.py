"""roibatchLoader / get_minibatch: shapes and scales, crop/pad keeping gt inside the blob, gt padding, test mode,
normalisation, flipping, bad images, and a DataLoader with worker processes."""
import os

import cv2
import numpy as np
import pytest
import scipy.sparse
import torch

from lib.model.utils.config import cfg
from lib.roi_data_layer.minibatch import get_minibatch
from lib.roi_data_layer.roibatchLoader import block_target_ratios, roibatchLoader
from lib.roi_data_layer.roidb import combined_roidb, rank_roidb_ratio
from lib.roi_data_layer.sampler import sampler


def _entry(path, im, boxes, classes=None, flipped=False, crowd=None):
    cv2.imwrite(path, im)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = boxes.shape[0]
    classes = np.ones(n, dtype=np.int32) if classes is None else np.asarray(classes, dtype=np.int32)
    overlaps = np.zeros((n, 3), dtype=np.float32)
    overlaps[np.arange(n), classes] = 1
    if crowd is not None:
        overlaps[crowd] = -1
    return {'image': path, 'width': im.shape[1], 'height': im.shape[0], 'boxes': boxes, 'gt_classes': classes,
            'gt_overlaps': scipy.sparse.csr_matrix(overlaps), 'flipped': flipped, 'img_id': 0}


def _loader(roidb, batch_size=1, training=True):
    ratio_list, ratio_index = rank_roidb_ratio(roidb)
    return roibatchLoader(roidb, ratio_list, ratio_index, batch_size, 3, training=training)


def _check_item(im_data, im_info, gt, num_boxes, num_classes=7):
    _, h, w = im_data.shape
    assert im_data.dtype == torch.float32 and gt.dtype == torch.float32 and num_boxes.dtype == torch.int64
    assert im_info.tolist()[:2] == [h, w]
    n = int(num_boxes)
    assert (gt[n:] == 0).all()
    g = gt[:n]
    assert (g[:, 0] >= 0).all() and (g[:, 1] >= 0).all()
    assert (g[:, 2] <= w - 1).all() and (g[:, 3] <= h - 1).all()
    assert (g[:, 2] > g[:, 0]).all() and (g[:, 3] > g[:, 1]).all()
    assert ((g[:, 4] >= 1) & (g[:, 4] < num_classes)).all()


def test_block_target_ratios_by_hand():
    ratios = np.array([0.5, 0.7, 0.9, 1.2, 1.5, 2.0])
    # blocks of 2: all < 1 -> the block's smallest; across 1 -> 1; all > 1 -> the largest
    np.testing.assert_allclose(block_target_ratios(ratios, 2), [0.5, 0.5, 1, 1, 2, 2])
    np.testing.assert_allclose(block_target_ratios(ratios, 4), [1, 1, 1, 1, 2, 2])
    np.testing.assert_allclose(block_target_ratios(ratios[:5], 2), [0.5, 0.5, 1, 1, 1.5])


@pytest.mark.parametrize('batch_size', [1, 2, 3])
def test_training_items_stay_inside_the_blob_and_blocks_share_a_shape(custom_shapes, batch_size):
    cfg.TRAIN.SCALES = (96,)
    cfg.TRAIN.MAX_SIZE = 160
    imdb, roidb, ratio_list, ratio_index = combined_roidb('custom_trainval')
    ds = roibatchLoader(roidb, ratio_list, ratio_index, batch_size, imdb.num_classes)
    shapes = []
    for i in range(len(ds)):
        item = ds[i]
        _check_item(*item)
        shapes.append(tuple(item[0].shape))
        assert max(item[0].shape[1:]) <= 160
        assert min(item[0].shape[1:]) <= 96
    for start in range(0, len(ds), batch_size):
        assert len(set(shapes[start:start + batch_size])) == 1


def test_max_size_lowers_the_block_scale_so_blocks_still_collate(custom_shapes):
    cfg.TRAIN.SCALES = (64, 120)
    cfg.TRAIN.MAX_SIZE = 150
    imdb, roidb, ratio_list, ratio_index = combined_roidb('custom_trainval')
    ds = roibatchLoader(roidb, ratio_list, ratio_index, 2, imdb.num_classes)
    dl = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler(len(ds), 2, seed=0))
    n = 0
    for epoch in range(2):
        ds.set_epoch(epoch)
        for im_data, im_info, gt, num_boxes in dl:
            assert max(im_data.shape[2:]) <= 150
            n += im_data.shape[0]
    assert n == 2 * len(ds)


@pytest.mark.parametrize('box,wide', [((300, 20, 350, 60), True), ((5, 10, 40, 30), True),
                                      ((20, 300, 60, 350), False), ((10, 30, 390, 70), True)])
def test_crop_keeps_the_gt_region(tmp_path, box, wide):
    # A 400x100 (or 100x400) image has ratio 4 (0.25), clipped to 2 (0.5): it is cropped to 200x100 (100x200).
    shape = (100, 400, 3) if wide else (400, 100, 3)
    entry = _entry(str(tmp_path / 'a.jpg'), np.full(shape, 128, np.uint8), [box])
    cfg.TRAIN.SCALES = (100,)
    ds = _loader([entry])
    assert entry['need_crop'] == 1
    np.random.seed(0)
    x1, y1, x2, y2 = box
    for _ in range(20):
        im_data, im_info, gt, num_boxes = ds[0]
        assert tuple(im_data.shape[1:]) == ((100, 200) if wide else (200, 100))
        _check_item(im_data, im_info, gt, num_boxes, 3)
        assert int(num_boxes) == 1
        g = gt[0].tolist()
        if (x2 - x1 + 1) <= 200 and (y2 - y1 + 1) <= 200:
            # the whole box fits in the crop window, and the crop keeps it whole
            assert g[2] - g[0] == x2 - x1 and g[3] - g[1] == y2 - y1
        else:
            # a box longer than the window starts inside it and is clipped at the window's end
            assert g[0] == 0 and g[2] == 199


def _painted(shape, box):
    """A dark grey image with the box's pixels bright: the box must stay on bright pixels whatever the loader does."""
    im = np.full(shape, 20, np.uint8)
    x1, y1, x2, y2 = box
    im[y1:y2 + 1, x1:x2 + 1] = 250
    return im


def _assert_box_on_bright_pixels(im_data, box):
    """Inside the box (1 px in from its edges, past the resize's blending) bright; 2 px outside, dark or padding."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    plane = im_data[0].numpy()  # B channel, PIXEL_MEANS subtracted: bright ~ +147, dark ~ -83, padding 0
    assert (plane[y1 + 1:y2, x1 + 1:x2] > 100).all()
    h, w = plane.shape
    for y, x in ((y1, x2 + 2), (y1, x1 - 2), (y1 - 2, x1), (y2 + 2, x1)):
        if 0 <= y < h and 0 <= x < w:
            assert plane[y, x] < 50, (y, x)


@pytest.mark.parametrize('box,wide', [((300, 20, 350, 60), True), ((5, 10, 40, 30), True),
                                      ((20, 300, 60, 350), False), ((30, 150, 70, 200), False)])
def test_cropped_images_keep_their_pixels_under_their_boxes(tmp_path, box, wide):
    shape = (100, 400, 3) if wide else (400, 100, 3)
    entry = _entry(str(tmp_path / 'a.png'), _painted(shape, box), [box])
    cfg.TRAIN.SCALES = (100,)
    cfg.TRAIN.USE_FLIPPED = False
    ds = _loader([entry])
    np.random.seed(1)
    for _ in range(10):  # random crop windows
        im_data, im_info, gt, num_boxes = ds[0]
        assert int(num_boxes) == 1
        _assert_box_on_bright_pixels(im_data, gt[0, :4].tolist())


def test_padded_images_keep_their_pixels_under_their_boxes(tmp_path):
    """A block of two tall images (ratios 0.8 and 0.6) takes the smaller ratio: the first is padded below."""
    a = _entry(str(tmp_path / 'a.png'), _painted((100, 80, 3), (10, 20, 50, 70)), [(10, 20, 50, 70)])
    b = _entry(str(tmp_path / 'b.png'), _painted((100, 60, 3), (5, 5, 30, 40)), [(5, 5, 30, 40)])
    cfg.TRAIN.SCALES = (100,)
    ds = _loader([a, b], batch_size=2)
    items = [ds[0], ds[1]]
    assert items[0][0].shape == items[1][0].shape
    padded = [it for it in items if (it[0][0] == 0).all(dim=1).any()]
    assert len(padded) == 1  # the 0.8 image gets zero rows
    for im_data, _, gt, num_boxes in items:
        _assert_box_on_bright_pixels(im_data, gt[0, :4].tolist())
    rows = (padded[0][0][0] == 0).all(dim=1)
    assert rows[-1] and not rows[0]  # below the image, not above


def test_max_num_gt_boxes_padding(tmp_path):
    boxes = [[i * 10, i * 5, i * 10 + 8, i * 5 + 6] for i in range(5)]
    entry = _entry(str(tmp_path / 'a.jpg'), np.zeros((60, 60, 3), np.uint8), boxes)
    cfg.TRAIN.SCALES = (60,)
    cfg.TRAIN.USE_FLIPPED = False
    cfg.MAX_NUM_GT_BOXES = 3
    im_data, im_info, gt, num_boxes = _loader([entry])[0]
    assert gt.shape == (3, 5) and int(num_boxes) == 3
    rows = {tuple(r) for r in gt[:, :4].tolist()}
    assert rows <= {tuple(float(v) for v in b) for b in boxes}
    cfg.MAX_NUM_GT_BOXES = 8
    im_data, im_info, gt, num_boxes = _loader([entry])[0]
    assert gt.shape == (8, 5) and int(num_boxes) == 5
    assert (gt[5:] == 0).all() and (gt[:5, 4] == 1).all()
    assert sorted(map(tuple, gt[:5, :4].tolist())) == sorted(tuple(float(v) for v in b) for b in boxes)


def test_test_mode_uses_test_scale_and_max_size(tmp_path):
    entries = [_entry(str(tmp_path / 'a.jpg'), np.zeros((100, 400, 3), np.uint8), [[40, 10, 139, 59]]),
               _entry(str(tmp_path / 'b.jpg'), np.zeros((50, 50, 3), np.uint8), [[0, 0, 49, 49]])]
    cfg.TRAIN.SCALES = (300,)
    cfg.TEST.SCALES = (50,)
    cfg.TEST.MAX_SIZE = 80
    ds = roibatchLoader(entries, np.array([1.0, 2.0]), np.array([1, 0]), 1, 3, training=False)
    im_data, im_info, gt, num_boxes = ds[0]  # test mode: index 0 is roidb[0], not ratio_index[0]
    # short side 100 -> 50 would make the long side 200 > 80, so the scale is 80 / 400 = 0.2
    assert tuple(im_data.shape) == (3, 20, 80)
    np.testing.assert_allclose(im_info.numpy(), [20, 80, 0.2], rtol=1e-6)
    assert int(num_boxes) == 1 and gt.shape == (cfg.MAX_NUM_GT_BOXES, 5)
    np.testing.assert_allclose(gt[0].numpy(), [8, 2, 27.8, 11.8, 1], rtol=1e-5)
    im_data, im_info, gt, num_boxes = ds[1]
    assert tuple(im_data.shape) == (3, 50, 50) and float(im_info[2]) == 1.0


def test_pixel_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = str(tmp_path / 'a.png')  # lossless, so pixels compare exactly
    entry = _entry(path, im, [[0, 0, 5, 5]])
    cfg.TEST.SCALES = (30,)
    im_data = roibatchLoader([entry], np.array([1.0]), np.array([0]), 1, 3, training=False)[0][0]
    expected = im.astype(np.float32) - cfg.PIXEL_MEANS.astype(np.float32)
    np.testing.assert_allclose(im_data.numpy().transpose(1, 2, 0), expected, atol=1e-4)
    cfg.INPUT_FORMAT = 'pytorch'
    im_data = roibatchLoader([entry], np.array([1.0]), np.array([0]), 1, 3, training=False)[0][0]
    rgb = im[:, :, ::-1].astype(np.float32) / 255.0
    expected = (rgb - cfg.PYTORCH_PIXEL_MEANS) / cfg.PYTORCH_PIXEL_STDS
    np.testing.assert_allclose(im_data.numpy().transpose(1, 2, 0), expected, atol=1e-5)
    cfg.INPUT_FORMAT = 'bgr'
    with pytest.raises(ValueError, match="unknown INPUT_FORMAT 'bgr'"):
        roibatchLoader([entry], np.array([1.0]), np.array([0]), 1, 3)


def test_flipped_entries_are_read_mirrored(tmp_path):
    rng = np.random.default_rng(1)
    im = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    plain = _entry(str(tmp_path / 'a.png'), im, [[0, 0, 5, 5]])
    flipped = dict(plain, flipped=True, boxes=np.array([[24, 0, 29, 5]], np.float32))
    cfg.TEST.SCALES = (20,)
    ds = roibatchLoader([plain, flipped], np.array([1.5, 1.5]), np.array([0, 1]), 1, 3, training=False)
    a, b = ds[0][0], ds[1][0]
    torch.testing.assert_close(b, a.flip(-1))


def test_grayscale_images_become_three_channels(tmp_path):
    gray = np.arange(20 * 20, dtype=np.uint8).reshape(20, 20)
    path = str(tmp_path / 'g.png')
    cv2.imwrite(path, gray)
    entry = _entry(str(tmp_path / 'unused.png'), np.zeros((20, 20, 3), np.uint8), [[0, 0, 5, 5]])
    entry['image'] = path
    cfg.TEST.SCALES = (20,)
    im_data = roibatchLoader([entry], np.array([1.0]), np.array([0]), 1, 3, training=False)[0][0]
    assert im_data.shape == (3, 20, 20)
    torch.testing.assert_close(im_data[0] + float(cfg.PIXEL_MEANS[0, 0, 0]),
                               im_data[2] + float(cfg.PIXEL_MEANS[0, 0, 2]))


def test_missing_unreadable_or_resized_image_is_named(tmp_path):
    entry = _entry(str(tmp_path / 'a.jpg'), np.zeros((20, 20, 3), np.uint8), [[0, 0, 5, 5]])
    ds = _loader([entry])
    os.remove(entry['image'])
    with pytest.raises(FileNotFoundError, match='a.jpg'):
        ds[0]
    with open(entry['image'], 'wb') as f:
        f.write(b'not an image at all')
    with pytest.raises(IOError, match='a.jpg'):
        ds[0]
    cv2.imwrite(entry['image'], np.zeros((20, 21, 3), np.uint8))
    with pytest.raises(ValueError, match='a.jpg.*21x20.*20x20'):
        ds[0]


def test_get_minibatch_blobs_and_crowd_boxes(tmp_path):
    entry = _entry(str(tmp_path / 'a.jpg'), np.zeros((40, 80, 3), np.uint8), [[0, 0, 9, 9], [10, 10, 19, 19]],
                   classes=[1, 2], crowd=[1])
    cfg.TRAIN.SCALES = (20,)
    blobs = get_minibatch([entry], 3)
    assert blobs['data'].shape == (1, 20, 40, 3) and blobs['data'].dtype == np.float32
    np.testing.assert_allclose(blobs['im_info'], [[20, 40, 0.5]])
    np.testing.assert_allclose(blobs['gt_boxes'], [[0, 0, 4.5, 4.5, 1], [5, 5, 9.5, 9.5, 2]])
    assert blobs['img_id'] == 0
    cfg.TRAIN.USE_ALL_GT = False
    np.testing.assert_allclose(get_minibatch([entry], 3)['gt_boxes'], [[0, 0, 4.5, 4.5, 1]])
    with pytest.raises(ValueError, match='single image'):
        get_minibatch([entry, entry], 3)


def test_dataloader_with_two_workers(custom_shapes):
    cfg.TRAIN.SCALES = (80,)
    cfg.TRAIN.MAX_SIZE = 140
    imdb, roidb, ratio_list, ratio_index = combined_roidb('custom_trainval')
    ds = roibatchLoader(roidb, ratio_list, ratio_index, 2, imdb.num_classes)
    dl = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler(len(ds), 2, seed=0), num_workers=2)
    seen = 0
    for im_data, im_info, gt, num_boxes in dl:
        assert im_data.dim() == 4 and im_data.shape[1] == 3
        assert im_info.shape == (im_data.shape[0], 3) and gt.shape[1:] == (cfg.MAX_NUM_GT_BOXES, 5)
        assert num_boxes.dtype == torch.int64 and (num_boxes >= 0).all()
        seen += im_data.shape[0]
    assert seen == len(ds)


def test_exif_orientation_is_ignored(tmp_path):
    # Boxes are in stored-pixel coordinates and sizes come from the file header, so a decoder that applied the
    # EXIF rotation (orientation 6: rotate 90 degrees) would return a 20x40 image for this 40x20 one.
    from PIL import Image
    from lib.datasets.imdb import image_size
    from lib.model.utils.blob import read_image
    path = str(tmp_path / 'rot.jpg')
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(path, exif=exif)
    assert image_size(path) == (40, 20)
    assert read_image(path).shape == (20, 40, 3)
