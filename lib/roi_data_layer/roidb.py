"""Turn imdbs into a training roidb: flipped copies, per-image metadata, empty images dropped, aspect-ratio ranking.

After prepare_roidb each entry also has: img_id, image (path), width, height, max_classes (n,), max_overlaps
(n,); after rank_roidb_ratio: need_crop (1 when w/h lies outside [0.5, 2]).
"""
import numpy as np

from lib.datasets.factory import get_imdb
from lib.datasets.imdb import image_size, imdb as imdb_base
from lib.model.utils.config import cfg

RATIO_LARGE = 2.0   # widest aspect ratio (w / h) kept; wider images are cropped
RATIO_SMALL = 0.5   # tallest aspect ratio kept; taller images are cropped


def prepare_roidb(imdb):
    """Add img_id, image, width, height, max_classes and max_overlaps to every entry of imdb.roidb.

    Image sizes come from the entries (read once when the gt roidb was built and stored in its cache); only
    entries without them are read from the image file headers.
    """
    roidb = imdb.roidb
    for i in range(len(imdb.image_index)):
        entry = roidb[i]
        entry['img_id'] = imdb.image_id_at(i)
        entry['image'] = imdb.image_path_at(i)
        if 'width' not in entry or 'height' not in entry:
            entry['width'], entry['height'] = image_size(entry['image'])
        gt_overlaps = entry['gt_overlaps']
        gt_overlaps = gt_overlaps.toarray() if hasattr(gt_overlaps, 'toarray') else np.asarray(gt_overlaps)
        if gt_overlaps.shape[0]:
            entry['max_classes'] = gt_overlaps.argmax(axis=1)
            entry['max_overlaps'] = gt_overlaps.max(axis=1)
        else:
            entry['max_classes'] = np.zeros((0,), dtype=np.int64)
            entry['max_overlaps'] = np.zeros((0,), dtype=np.float32)


def rank_roidb_ratio(roidb):
    """Aspect ratios w / h clipped to [0.5, 2] (need_crop set on clipped entries), sorted ascending.

    Returns:
        ratio_list (N,) sorted ratios and ratio_index (N,) the roidb index of each, so that
        ratio_list[k] is the (clipped) ratio of roidb[ratio_index[k]].
    """
    ratio_list = np.zeros(len(roidb), dtype=np.float64)
    for i, entry in enumerate(roidb):
        ratio = entry['width'] / float(entry['height'])
        if ratio > RATIO_LARGE:
            entry['need_crop'] = 1
            ratio = RATIO_LARGE
        elif ratio < RATIO_SMALL:
            entry['need_crop'] = 1
            ratio = RATIO_SMALL
        else:
            entry['need_crop'] = 0
        ratio_list[i] = ratio
    ratio_index = np.argsort(ratio_list, kind='stable')
    return ratio_list[ratio_index], ratio_index


def filter_roidb(roidb):
    """Drop the images without any box (they cannot train the detector); prints the counts."""
    print(f'before filtering, there are {len(roidb)} images...')
    kept = [entry for entry in roidb if len(entry['boxes']) > 0]
    print(f'after filtering, there are {len(kept)} images...')
    return kept


def get_training_roidb(imdb, training=True):
    """imdb.roidb with flipped copies appended (cfg.TRAIN.USE_FLIPPED, training only), prepared."""
    if training and cfg.TRAIN.USE_FLIPPED:
        print('Appending horizontally-flipped training examples...')
        imdb.append_flipped_images()
        print('done')
    print('Preparing training data...')
    prepare_roidb(imdb)
    print('done')
    return imdb.roidb


def _get_roidb(imdb_name, training):
    imdb = get_imdb(imdb_name)
    print(f'Loaded dataset `{imdb.name}` for {"training" if training else "testing"}')
    imdb.set_proposal_method(cfg.TRAIN.PROPOSAL_METHOD)
    print(f'Set proposal method: {cfg.TRAIN.PROPOSAL_METHOD}')
    return imdb, get_training_roidb(imdb, training)


def combined_roidb(imdb_names, training=True):
    """Load and combine the datasets named in ``imdb_names`` ('a' or 'a+b+...').

    Returns:
        imdb: the dataset (a bare imdb named ``imdb_names`` with the shared classes when several are combined),
        roidb: list of entries (images without boxes dropped when training),
        ratio_list (N,), ratio_index (N,): see rank_roidb_ratio.
    """
    names = [n for n in imdb_names.split('+') if n]
    if not names:
        raise ValueError(f'no dataset name in {imdb_names!r}')
    loaded = [_get_roidb(n, training) for n in names]
    imdb = loaded[0][0]
    roidb = list(loaded[0][1])
    if len(loaded) > 1:
        for other, r in loaded[1:]:
            if tuple(other.classes) != tuple(imdb.classes):
                raise ValueError(f'cannot combine {imdb.name} and {other.name}: their classes differ '
                                 f'({list(imdb.classes)} vs {list(other.classes)})')
            roidb.extend(r)
        imdb = imdb_base(imdb_names, imdb.classes)
    if training:
        roidb = filter_roidb(roidb)
    ratio_list, ratio_index = rank_roidb_ratio(roidb)
    return imdb, roidb, ratio_list, ratio_index
