"""Any dataset in the PASCAL VOC folder layout, with its own classes and splits; pascal_voc specialises it.

    <root>/Annotations/<id>.xml          VOC XML, 1-based pixel coordinates
    <root>/ImageSets/Main/<split>.txt    one image id per line
    <root>/JPEGImages/<id>.jpg           (.jpeg / .png / .bmp are found too)
    <root>/classes.txt                   optional: one class name per line

Boxes touching the border are valid (xmin = 1 becomes x1 = 0). Coordinates outside [1, width] x [1, height] are
clamped into the image with a logged warning (an off-by-one of the export tool, common in custom sets); a box
with xmax < xmin or ymax < ymin, or lying entirely outside the image, raises AnnotationError naming the file and
the box. The gt roidb is cached in cfg.DATA_DIR/cache as .npz, rebuilt whenever the image-set file, an
annotation file or an image file changes (their content hash / mtimes are stored in the cache and compared).
"""
import hashlib
import json
import logging
import os
import os.path as osp
import uuid

import numpy as np
import scipy.sparse

from lib.datasets.imdb import concat_field, image_size, imdb
from lib.datasets.voc_eval import eval_match, load_annotations, match_detections, read_detections, voc_ap
from lib.datasets.voc_xml import AnnotationError, parse_voc_xml

logger = logging.getLogger(__name__)

BACKGROUND = '__background__'
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.JPG', '.JPEG', '.PNG')
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_CACHE_VERSION = 2  # 2: class names collected case-insensitively


def _sha1(*parts):
    h = hashlib.sha1()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode('utf-8'))
        h.update(b'\0')
    return h.hexdigest()


def read_classes_file(path):
    """Class names from a classes.txt: one per line; blank lines and '#' comments ignored."""
    names = []
    with open(path, 'r', encoding='utf-8') as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                names.append(line)
    if not names:
        raise ValueError(f'{path}: no class names')
    _check_unique(names, path)
    return names


def _check_unique(names, where):
    """Class names match annotations case-insensitively, so two that differ only in case are one too many."""
    lower = [n.lower() for n in names]
    dup = sorted({n for n in names if lower.count(n.lower()) > 1})
    if dup:
        raise ValueError(f'{where}: duplicate class names {dup} (names match case-insensitively)')


def _with_background(classes, where='classes'):
    classes = [c for c in classes]
    _check_unique(classes, where)
    if BACKGROUND in classes[1:]:
        raise ValueError(f"'{BACKGROUND}' must be the first class, got {classes}")
    if not classes or classes[0] != BACKGROUND:
        classes = [BACKGROUND] + classes
    return tuple(classes)


class voc_format(imdb):
    """A VOC-layout dataset split.

    Args:
        image_set: split name, the file ImageSets/Main/<image_set>.txt.
        root: the folder holding Annotations/, ImageSets/Main/ and JPEGImages/.
        classes: class names (background added first if missing); None: <root>/classes.txt when present, else
            every name found in <root>/Annotations, sorted.
        name: the imdb name (default 'voc_format_<folder>_<image_set>').
        use_07_metric: report the VOC2007 11-point AP as the main metric (else the VOC2010+ area AP).
        results_dir: where the comp4 results files go (default: <root>/../results/<folder>/Main as VOCdevkit).
    """

    def __init__(self, image_set, root, classes=None, name=None, use_07_metric=True, results_dir=None):
        root = osp.abspath(root)
        name = name or f'voc_format_{osp.basename(root)}_{image_set}'
        super().__init__(name)
        self._image_set = image_set
        self._data_path = root
        self._use_07_metric = bool(use_07_metric)
        self._results_dir = results_dir
        if not osp.isdir(root):
            raise FileNotFoundError(f'{name}: dataset folder not found: {root}')
        for sub in ('Annotations', osp.join('ImageSets', 'Main'), 'JPEGImages'):
            if not osp.isdir(osp.join(root, sub)):
                raise FileNotFoundError(f'{name}: {root} is not a VOC-format folder: missing {sub}/')
        if classes is not None:
            self._classes = _with_background(classes)
        elif osp.isfile(osp.join(root, 'classes.txt')):
            self._classes = _with_background(read_classes_file(osp.join(root, 'classes.txt')))
        else:
            self._classes = _with_background(self._collect_classes())
        if len(self._classes) < 2:
            raise ValueError(f'{name}: no object classes found (give classes= or write {root}/classes.txt)')
        self._class_to_ind = {c: i for i, c in enumerate(self._classes)}
        self._class_to_ind_lower = {c.lower(): i for i, c in enumerate(self._classes)}
        self._image_paths = {}
        self._image_index = self._load_image_set_index()
        self._roidb_handler = self.gt_roidb
        self._salt = str(uuid.uuid4())
        self._comp_id = 'comp4'
        self.config = {'cleanup': True, 'use_salt': True}

    # ---- paths ----
    @property
    def data_path(self):
        return self._data_path

    def _image_set_file(self):
        return osp.join(self._data_path, 'ImageSets', 'Main', self._image_set + '.txt')

    def _annotation_path(self, index):
        return osp.join(self._data_path, 'Annotations', index + '.xml')

    def image_path_at(self, i):
        return self.image_path_from_index(self._image_index[i])

    def image_id_at(self, i):
        return i

    def image_path_from_index(self, index):
        """Path of the image named ``index`` in JPEGImages (the first of IMAGE_EXTS that exists)."""
        path = self._image_paths.get(index)
        if path is not None:
            return path
        base = osp.join(self._data_path, 'JPEGImages', index)
        for ext in IMAGE_EXTS:
            if osp.isfile(base + ext):
                self._image_paths[index] = base + ext
                return base + ext
        raise FileNotFoundError(f'{self.name}: image file not found: {base}.jpg '
                                f'(listed in {self._image_set_file()}; also tried {", ".join(IMAGE_EXTS[1:])})')

    def _load_image_set_index(self):
        path = self._image_set_file()
        if not osp.isfile(path):
            main = osp.dirname(path)
            splits = sorted(f[:-4] for f in os.listdir(main) if f.endswith('.txt') and '_' not in f)
            raise FileNotFoundError(f'{self.name}: image-set file not found: {path}; splits here: {splits}')
        with open(path, 'r', encoding='utf-8') as f:
            index = [line.split()[0] for line in f if line.strip()]
        return index

    # ---- classes ----
    def _collect_classes(self):
        """Every object name in <root>/Annotations, sorted; cached, keyed by the files' names and mtimes."""
        ann_dir = osp.join(self._data_path, 'Annotations')
        files = sorted(f for f in os.listdir(ann_dir) if f.endswith('.xml'))
        stats = []
        for f in files:
            st = os.stat(osp.join(ann_dir, f))
            stats.append(f'{f} {st.st_mtime_ns} {st.st_size}')
        key = _sha1(_CACHE_VERSION, ann_dir, *stats)
        cache_file = osp.join(self.cache_path, f'classes_{key[:20]}.json')
        if osp.isfile(cache_file):
            with open(cache_file, 'r') as fh:
                return json.load(fh)
        names = set()
        for f in files:
            names.update(o['name'] for o in parse_voc_xml(osp.join(ann_dir, f))['objects'])
        # one class per name whatever its case (as objects are matched), spelt as it sorts first ('Dog' < 'dog')
        spelling = {}
        for n in sorted(names):
            spelling.setdefault(n.lower(), n)
        names = sorted(spelling.values())
        with open(cache_file + '.tmp', 'w') as fh:
            json.dump(names, fh)
        os.replace(cache_file + '.tmp', cache_file)
        return names

    def _class_index(self, name, path, obj_i):
        ind = self._class_to_ind.get(name)
        if ind is None:
            ind = self._class_to_ind_lower.get(name.lower())
        if ind is None or ind == 0:
            raise AnnotationError(f'{path}: object {obj_i}: unknown class {name!r}; the classes of {self.name} are '
                                  f'{list(self._classes[1:])}')
        return ind

    # ---- ground truth ----
    def _fingerprint(self):
        """A hash of everything the gt roidb depends on: classes, the image-set file, annotation/image stats."""
        h = hashlib.sha1()
        h.update(f'v{_CACHE_VERSION}\n{self._data_path}\n{json.dumps(list(self._classes))}\n'.encode())
        set_file = self._image_set_file()
        with open(set_file, 'rb') as f:
            h.update(f.read())
        for lineno, index in enumerate(self._image_index, 1):
            ann = self._annotation_path(index)
            try:
                st = os.stat(ann)
            except FileNotFoundError:
                raise FileNotFoundError(f'{set_file}:{lineno}: image {index!r} has no annotation file {ann}') from None
            im_path = self.image_path_from_index(index)
            st_im = os.stat(im_path)
            h.update(f'{index} {st.st_mtime_ns} {st.st_size} {im_path} {st_im.st_mtime_ns} {st_im.st_size}\n'.encode())
        return h.hexdigest()

    def _cache_file(self):
        return osp.join(self.cache_path, f'{self.name}_{_sha1(self._data_path)[:8]}_gt_roidb.npz')

    def _load_annotation(self, index):
        """One roidb entry from <root>/Annotations/<index>.xml (boxes converted to 0-based float32)."""
        path = self._annotation_path(index)
        ann = parse_voc_xml(path)
        width, height = image_size(self.image_path_from_index(index))
        if ann['size'] is not None and ann['size'][:2] != (width, height) and ann['size'][:2] != (0, 0):
            logger.warning('%s: <size> says %dx%d but the image is %dx%d; using the image size',
                           path, ann['size'][0], ann['size'][1], width, height)
        objs = ann['objects']
        n = len(objs)
        boxes = np.zeros((n, 4), dtype=np.float32)
        gt_classes = np.zeros((n,), dtype=np.int32)
        ishards = np.zeros((n,), dtype=np.int32)
        for i, obj in enumerate(objs):
            x1, y1, x2, y2 = obj['bbox']
            box_txt = f'object {i} ({obj["name"]}) box [xmin={x1:g}, ymin={y1:g}, xmax={x2:g}, ymax={y2:g}]'
            if x2 < x1 or y2 < y1:
                raise AnnotationError(f'{path}: {box_txt} has xmax < xmin or ymax < ymin')
            if x1 > width or y1 > height or x2 < 1 or y2 < 1:
                raise AnnotationError(f'{path}: {box_txt} lies outside the {width}x{height} image '
                                      f'(VOC coordinates are 1-based, within [1, {width}] x [1, {height}])')
            if x1 < 1 or y1 < 1 or x2 > width or y2 > height:
                logger.warning('%s: %s extends past the %dx%d image; clamped to it', path, box_txt, width, height)
                x1, y1 = max(x1, 1.0), max(y1, 1.0)
                x2, y2 = min(x2, float(width)), min(y2, float(height))
            boxes[i] = [x1 - 1, y1 - 1, x2 - 1, y2 - 1]
            gt_classes[i] = self._class_index(obj['name'], path, i)
            ishards[i] = 1 if obj['difficult'] else 0
        return self._make_entry(boxes, gt_classes, ishards, width, height)

    def _make_entry(self, boxes, gt_classes, ishards, width, height):
        n = boxes.shape[0]
        overlaps = scipy.sparse.csr_matrix(
            (np.ones(n, dtype=np.float32), (np.arange(n), gt_classes.astype(np.int64))),
            shape=(n, self.num_classes), dtype=np.float32)
        seg_areas = ((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)).astype(np.float32)
        return {'boxes': boxes, 'gt_classes': gt_classes, 'gt_ishard': ishards, 'gt_overlaps': overlaps,
                'flipped': False, 'seg_areas': seg_areas, 'width': int(width), 'height': int(height)}

    def _cache_arrays(self, roidb):
        return {'index': np.array(self._image_index, dtype=str),
                'image_paths': np.array([self.image_path_from_index(i) for i in self._image_index], dtype=str),
                'gt_ishard': concat_field(roidb, 'gt_ishard', np.int32)}

    def _roidb_from_cache(self, d):
        off = d['offsets']
        roidb = []
        for i, index in enumerate(d['index'].tolist()):
            self._image_paths[index] = str(d['image_paths'][i])
            s = slice(int(off[i]), int(off[i + 1]))
            roidb.append(self._make_entry(d['boxes'][s].copy(), d['gt_classes'][s].copy(),
                                          d['gt_ishard'][s].copy(), int(d['width'][i]), int(d['height'][i])))
        return roidb

    # ---- results and evaluation ----
    def _get_comp_id(self):
        return f'{self._comp_id}_{self._salt}' if self.config['use_salt'] else self._comp_id

    def _results_dir_for(self, output_dir):
        candidates = []
        if self._results_dir is not None:
            candidates.append(self._results_dir)
        candidates.append(osp.join(osp.dirname(self._data_path), 'results', osp.basename(self._data_path), 'Main'))
        if output_dir is not None:
            candidates.append(osp.join(output_dir, 'results', 'Main'))
        for d in candidates:
            try:
                os.makedirs(d, exist_ok=True)
            except OSError:
                continue
            if os.access(d, os.W_OK):
                return d
        raise PermissionError(f'{self.name}: none of {candidates} is writable for the results files')

    def _get_voc_results_file_template(self, output_dir=None):
        """<results dir>/<comp_id>_det_<image_set>_{:s}.txt (the class name goes in the braces)."""
        return osp.join(self._results_dir_for(output_dir), f'{self._get_comp_id()}_det_{self._image_set}_{{:s}}.txt')

    def _write_voc_results_file(self, all_boxes, output_dir=None, template=None):
        """One file per class: lines 'image_id score x1 y1 x2 y2' with 1-based coordinates, as VOCdevkit wants.
        ``template`` (with '{:s}' for the class) defaults to _get_voc_results_file_template(output_dir)."""
        if len(all_boxes) != self.num_classes:
            raise ValueError(f'{self.name}: all_boxes has {len(all_boxes)} classes, expected {self.num_classes}')
        if template is None:
            template = self._get_voc_results_file_template(output_dir)
        for cls_ind, cls in enumerate(self._classes):
            if cls == BACKGROUND:
                continue
            if len(all_boxes[cls_ind]) != self.num_images:
                raise ValueError(f'{self.name}: all_boxes[{cls_ind}] ({cls}) has {len(all_boxes[cls_ind])} images, '
                                 f'expected {self.num_images}')
            with open(template.format(cls), 'wt') as f:
                for im_ind, index in enumerate(self.image_index):
                    dets = np.asarray(all_boxes[cls_ind][im_ind], dtype=np.float64)
                    if dets.size == 0:
                        continue
                    for k in range(dets.shape[0]):
                        f.write('{:s} {:.3f} {:.1f} {:.1f} {:.1f} {:.1f}\n'.format(
                            index, dets[k, -1], dets[k, 0] + 1, dets[k, 1] + 1, dets[k, 2] + 1, dets[k, 3] + 1))
        return template

    def evaluate_detections(self, all_boxes, output_dir=None):
        """Write the results files and evaluate them with the VOC rules.

        Args:
            all_boxes: all_boxes[cls][image] = (N, 5) array x1, y1, x2, y2, score (0-based) or [].
            output_dir: where the PR curves (pr_curves.npz) and the summary (voc_eval.json) are saved.
        Returns:
            {'mAP': main metric, 'mAP_voc07', 'mAP_area', 'AP_coco' (mean over IoU .5:.05:.95 of the area AP),
             'use_07_metric', 'per_class': {cls: main AP}, 'per_class_voc07', 'per_class_area', 'per_class_coco',
             'pr_curves': {cls: {'rec', 'prec'}}}. A class with no non-difficult gt box has AP None and is left
            out of the means.
        """
        final = self._get_voc_results_file_template(output_dir)
        # This run writes and evaluates files of its own, then (competition mode) renames them to the shared names.
        # The original wrote the shared names and read them back: in competition mode, which its test_net turns
        # on, two runs evaluating at once on one dataset (several checkpoints) read each other's detections.
        private = f'{final}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
        self._write_voc_results_file(all_boxes, output_dir, template=private)
        try:
            result = self._do_python_eval(private, output_dir)
            if not self.config['cleanup']:
                for cls in self._classes[1:]:
                    os.replace(private.format(cls), final.format(cls))
            return result
        finally:
            for cls in self._classes[1:]:
                if osp.isfile(private.format(cls)):
                    os.remove(private.format(cls))

    def _do_python_eval(self, template, output_dir=None):
        annopath = osp.join(self._data_path, 'Annotations', '{:s}.xml')
        imagenames, recs = load_annotations(annopath, self._image_set_file(), osp.join(self.cache_path, 'voc_eval'))
        print(f'VOC07 metric? {"Yes" if self._use_07_metric else "No"}')
        per = {'voc07': {}, 'area': {}, 'coco': {}}
        curves = {}
        for cls in self._classes[1:]:
            image_ids, confidence, BB = read_detections(template.format(cls))
            match = match_detections(recs, imagenames, cls, image_ids, confidence, BB)
            rec, prec, ap_area = eval_match(match, 0.5, use_07_metric=False)
            if match['npos'] == 0:
                for k in per:
                    per[k][cls] = None
                curves[cls] = {'rec': rec, 'prec': prec}
                continue
            per['area'][cls] = ap_area
            per['voc07'][cls] = voc_ap(rec, prec, use_07_metric=True)
            per['coco'][cls] = float(np.mean([eval_match(match, t, use_07_metric=False)[2]
                                              for t in COCO_IOU_THRESHOLDS]))
            curves[cls] = {'rec': rec, 'prec': prec}

        def mean(d):
            vals = [v for v in d.values() if v is not None]
            return float(np.mean(vals)) if vals else 0.0

        main = 'voc07' if self._use_07_metric else 'area'
        result = {'mAP': mean(per[main]), 'mAP_voc07': mean(per['voc07']), 'mAP_area': mean(per['area']),
                  'AP_coco': mean(per['coco']), 'use_07_metric': self._use_07_metric,
                  'per_class': dict(per[main]), 'per_class_voc07': per['voc07'], 'per_class_area': per['area'],
                  'per_class_coco': per['coco'], 'pr_curves': curves}
        self._print_table(result)
        if output_dir is not None:
            os.makedirs(output_dir, exist_ok=True)
            arrays = {}
            for cls, c in curves.items():
                arrays[f'rec_{cls}'] = c['rec']
                arrays[f'prec_{cls}'] = c['prec']
            np.savez(osp.join(output_dir, 'pr_curves.npz'), **arrays)
            summary = {k: v for k, v in result.items() if k != 'pr_curves'}
            with open(osp.join(output_dir, 'voc_eval.json'), 'w') as f:
                json.dump(summary, f, indent=1)
            result['pr_file'] = osp.join(output_dir, 'pr_curves.npz')
        return result

    def _print_table(self, result):
        main = 'VOC07 11-point' if self._use_07_metric else 'VOC area'

        def fmt(v):
            return '   n/a' if v is None else f'{v:6.4f}'
        width = max(12, max(len(c) for c in self._classes[1:]))
        print(f'{self.name}: AP per class at IoU 0.5 (main metric: {main})')
        print(f'{"class":<{width}}  AP07    AParea  AP@[.5:.95]')
        for cls in self._classes[1:]:
            print(f'{cls:<{width}}  {fmt(result["per_class_voc07"][cls])}  {fmt(result["per_class_area"][cls])}  '
                  f'{fmt(result["per_class_coco"][cls])}')
        print(f'{"mean":<{width}}  {result["mAP_voc07"]:6.4f}  {result["mAP_area"]:6.4f}  {result["AP_coco"]:6.4f}')
        print(f'Mean AP = {result["mAP"]:.4f}')

    def competition_mode(self, on):
        self.config['use_salt'] = not on
        self.config['cleanup'] = not on
