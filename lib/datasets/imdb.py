"""The image database base class: a named list of images, their classes and a ground-truth roidb.

A roidb is a list with one dict per image:
    boxes        (n, 4) float32   x1, y1, x2, y2, 0-based, pixel-inclusive (width = x2 - x1 + 1)
    gt_classes   (n,)   int32     class index into imdb.classes (0 is '__background__')
    gt_overlaps  (n, C) float32 scipy.sparse.csr_matrix, 1 at (i, gt_classes[i]); -1 rows mark COCO crowd boxes
    gt_ishard    (n,)   int32     VOC 'difficult' flag (0 for COCO)
    seg_areas    (n,)   float32   box area (VOC) or segment area (COCO)
    width, height  int            image size in pixels
    flipped      bool
"""
import logging
import os
import os.path as osp
import zipfile

import numpy as np
import PIL.Image

from lib.model.utils.config import cfg

logger = logging.getLogger(__name__)

ROOT_DIR = cfg.ROOT_DIR


def image_size(path):
    """(width, height) of an image file from its header; errors name the file."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'image file not found: {path}')
    try:
        with PIL.Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise IOError(f'could not read image (unsupported or corrupt file): {path}: {e}') from None


def flip_boxes(boxes, width):
    """Mirror (n, 4) x1, y1, x2, y2 boxes in an image of the given width: x1' = W - x2 - 1, x2' = W - x1 - 1.

    Computed in float32 so that x1 = 0 cannot wrap around (the original stored uint16 boxes, where a box at the
    border flipped to a huge value).
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2] - 1
    flipped[:, 2] = width - boxes[:, 0] - 1
    return flipped


def write_npz_cache(path, fingerprint, arrays):
    """Write arrays (and the fingerprint of the files they come from) to an .npz, atomically."""
    tmp = f'{path}.{os.getpid()}.tmp.npz'
    np.savez(tmp, fingerprint=np.array(fingerprint), **arrays)
    os.replace(tmp, path)


def read_npz_cache(path, fingerprint):
    """The arrays of an .npz cache (no pickles); None, saying why, when it was written for other files or cannot
    be read."""
    try:
        # The file is opened here, not by np.load: some numpy releases (2.5) leave their own handle open when the
        # zip is damaged.
        with open(path, 'rb') as f, np.load(f, allow_pickle=False) as data:
            if str(data['fingerprint']) != fingerprint:
                print(f'cache {path} is out of date (its dataset files changed); rebuilding')
                return None
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        logger.warning('%s: unreadable cache (%s); rebuilding', path, e)
        return None


def concat_field(roidb, key, dtype, shape=(0,)):
    """roidb[i][key] of every image, concatenated (an empty array of ``shape`` for an empty roidb)."""
    return np.concatenate([r[key] for r in roidb]).astype(dtype) if roidb else np.zeros(shape, dtype=dtype)


def _roidb_arrays(roidb):
    """The fields every roidb cache stores: offsets ([N + 1]: image i's boxes are rows offsets[i]:offsets[i + 1]
    of the concatenated per-box fields), boxes, gt_classes, width and height."""
    return {'offsets': np.concatenate(([0], np.cumsum([r['boxes'].shape[0] for r in roidb]))).astype(np.int64),
            'boxes': concat_field(roidb, 'boxes', np.float32, (0, 4)),
            'gt_classes': concat_field(roidb, 'gt_classes', np.int32),
            'width': np.array([r['width'] for r in roidb], dtype=np.int64),
            'height': np.array([r['height'] for r in roidb], dtype=np.int64)}


class imdb(object):
    """Image database: subclasses set _classes and _image_index and provide gt_roidb()."""

    def __init__(self, name, classes=None):
        self._name = name
        self._classes = tuple(classes) if classes else ()
        self._image_index = []
        self._obj_proposer = 'gt'
        self._roidb = None
        self._roidb_handler = self.default_roidb
        self._widths = None
        self.config = {}

    @property
    def name(self):
        return self._name

    @property
    def num_classes(self):
        return len(self._classes)

    @property
    def classes(self):
        return self._classes

    @property
    def image_index(self):
        return self._image_index

    @property
    def roidb_handler(self):
        return self._roidb_handler

    @roidb_handler.setter
    def roidb_handler(self, val):
        self._roidb_handler = val

    def set_proposal_method(self, method):
        """Choose where the roidb comes from: '<method>_roidb' of this class ('gt' for ground truth)."""
        handler = getattr(self, f'{method}_roidb', None)
        if handler is None or not callable(handler):
            known = sorted(a[:-len('_roidb')] for a in dir(self)
                           if a.endswith('_roidb') and a != 'default_roidb' and callable(getattr(self, a, None)))
            raise ValueError(f'{self.name}: unknown proposal method {method!r}; available: {known}')
        self._obj_proposer = method
        self.roidb_handler = handler

    @property
    def roidb(self):
        if self._roidb is None:
            self._roidb = self.roidb_handler()
        return self._roidb

    @property
    def cache_path(self):
        path = osp.abspath(osp.join(cfg.DATA_DIR, 'cache'))
        os.makedirs(path, exist_ok=True)
        return path

    @property
    def num_images(self):
        return len(self.image_index)

    def image_path_at(self, i):
        raise NotImplementedError

    def image_id_at(self, i):
        raise NotImplementedError

    def default_roidb(self):
        raise NotImplementedError(f'{type(self).__name__} has no roidb; call set_proposal_method first')

    def gt_roidb(self):
        """The ground-truth roidb, from the .npz cache when its fingerprint matches, else parsed and cached.

        Subclasses provide ``_fingerprint()``, ``_cache_file()``, ``_load_annotation(index)``, and the cache's
        contents: ``_cache_arrays(roidb)`` (a dict of the numpy arrays it stores besides offsets, boxes,
        gt_classes, width and height) and ``_roidb_from_cache(arrays)`` (the roidb, or None when the arrays do
        not fit this dataset).
        """
        fingerprint = self._fingerprint()
        cache_file = self._cache_file()
        if osp.isfile(cache_file):
            arrays = read_npz_cache(cache_file, fingerprint)
            roidb = None if arrays is None else self._roidb_from_cache(arrays)
            if roidb is not None:
                print(f'{self.name} gt roidb loaded from {cache_file}')
                return roidb
            if arrays is not None:
                print(f'{self.name}: cache {cache_file} does not fit this dataset; rebuilding')
        roidb = [self._load_annotation(index) for index in self._image_index]
        write_npz_cache(cache_file, fingerprint, {**_roidb_arrays(roidb), **self._cache_arrays(roidb)})
        print(f'wrote gt roidb to {cache_file}')
        return roidb

    def evaluate_detections(self, all_boxes, output_dir=None):
        """all_boxes[cls][image] = (N, 5) array x1, y1, x2, y2, score (0-based) or an empty list."""
        raise NotImplementedError(f'{type(self).__name__} {self.name!r} cannot evaluate detections')

    def _get_widths(self):
        """Image widths, read once: from the roidb entries when they carry them, else from the files."""
        if self._widths is None:
            roidb = self.roidb
            if all('width' in r for r in roidb):
                self._widths = [int(r['width']) for r in roidb]
            else:
                self._widths = [image_size(self.image_path_at(i))[0] for i in range(self.num_images)]
        return self._widths

    def append_flipped_images(self):
        """Append a horizontally mirrored copy of every image's entry (boxes flipped, flipped=True)."""
        num_images = self.num_images
        widths = self._get_widths()
        roidb = self.roidb
        for i in range(num_images):
            boxes = flip_boxes(roidb[i]['boxes'], widths[i])
            if boxes.size and (boxes[:, 2] < boxes[:, 0]).any():
                j = int(np.nonzero(boxes[:, 2] < boxes[:, 0])[0][0])
                raise ValueError(f'{self.name}: image {self.image_path_at(i)}: box {roidb[i]["boxes"][j].tolist()} '
                                 f'is not inside its width {widths[i]}; flipping it inverts it')
            entry = dict(roidb[i])
            entry['boxes'] = boxes
            entry['flipped'] = True
            roidb.append(entry)
        self._image_index = list(self._image_index) * 2
        self._widths = list(widths) * 2

    def competition_mode(self, on):
        """Turn competition mode on (keep results files, no random salt in their names) or off."""
        pass
