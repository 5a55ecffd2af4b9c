"""MS COCO detection datasets through pycocotools: coco(image_set, year).

Layout (as the original): <DATA_DIR>/coco/annotations/instances_<set><year>.json and images under
<DATA_DIR>/coco/images/<set><year>/ (minival2014 and valminusminival2014 read the val2014 images); the image file
name is the json's 'file_name'. COCO boxes (x, y, w, h) become pixel-inclusive x1, y1, x2 = x1 + max(0, w - 1)
clipped to the image, as the original; boxes with zero area are dropped. Crowd boxes keep their class but get
gt_overlaps -1 for every class; training drops them when cfg.TRAIN.USE_ALL_GT is False.
"""
import hashlib
import json
import os
import os.path as osp
import uuid

import numpy as np
import scipy.sparse

from lib.datasets import ds_utils
from lib.datasets.imdb import concat_field, imdb
from lib.model.utils.config import cfg

_CACHE_VERSION = 1


# COCOeval.stats, in its order
COCO_STATS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


class coco(imdb):
    """coco_<year>_<image_set>; data_path defaults to cfg.DATA_DIR/coco."""

    def __init__(self, image_set, year, data_path=None):
        from pycocotools.coco import COCO
        super().__init__(f'coco_{year}_{image_set}')
        self.config = {'use_salt': True, 'cleanup': True}
        self._year = str(year)
        self._image_set = image_set
        self._data_path = data_path or osp.join(cfg.DATA_DIR, 'coco')
        ann_file = self._get_ann_file()
        if not osp.isfile(ann_file):
            raise FileNotFoundError(f'{self.name}: annotation file not found: {ann_file} (see docs/DATA.md for the '
                                    f'COCO layout)')
        self._COCO = COCO(ann_file)
        cats = self._COCO.loadCats(self._COCO.getCatIds())
        self._classes = tuple(['__background__'] + [c['name'] for c in cats])
        self._class_to_ind = {c: i for i, c in enumerate(self._classes)}
        self._class_to_coco_cat_id = {c['name']: c['id'] for c in cats}
        self._image_index = sorted(self._COCO.getImgIds())
        # Some image sets are views of others: minival2014 is a 5k subset of val2014, and so on.
        self._view_map = {'minival2014': 'val2014', 'valminusminival2014': 'val2014',
                          'test-dev2015': 'test2015', 'valminuscapval2014': 'val2014',
                          'capval2014': 'val2014', 'captest2014': 'val2014'}
        coco_name = image_set + self._year
        self._data_name = self._view_map.get(coco_name, coco_name)
        self._gt_splits = ('train', 'val', 'minival')
        self.set_proposal_method('gt')
        self.competition_mode(False)

    def _get_ann_file(self):
        prefix = 'instances' if 'test' not in self._image_set else 'image_info'
        return osp.join(self._data_path, 'annotations', f'{prefix}_{self._image_set}{self._year}.json')

    def image_path_at(self, i):
        return self.image_path_from_index(self._image_index[i])

    def image_id_at(self, i):
        return self._image_index[i]

    def image_path_from_index(self, index):
        file_name = self._COCO.loadImgs(index)[0]['file_name']
        return osp.join(self._data_path, 'images', self._data_name, file_name)

    # ---- ground truth ----
    def _fingerprint(self):
        ann_file = self._get_ann_file()
        st = os.stat(ann_file)
        return hashlib.sha1(f'v{_CACHE_VERSION}|{osp.abspath(ann_file)}|{st.st_mtime_ns}|{st.st_size}|'
                            f'{json.dumps(list(self._classes))}'.encode()).hexdigest()

    def _cache_file(self):
        return osp.join(self.cache_path, f'{self.name}_gt_roidb.npz')

    def _load_annotation(self, index):
        im_ann = self._COCO.loadImgs(index)[0]
        width, height = im_ann['width'], im_ann['height']
        objs = self._COCO.loadAnns(self._COCO.getAnnIds(imgIds=index, iscrowd=None))
        boxes, classes, crowd, areas = [], [], [], []
        for obj in objs:
            x, y, w, h = obj['bbox']
            x1 = max(0.0, x)
            y1 = max(0.0, y)
            x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
            y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
            if obj['area'] > 0 and x2 >= x1 and y2 >= y1:
                boxes.append([x1, y1, x2, y2])
                classes.append(self._class_to_ind[self._cat_name(obj['category_id'])])
                crowd.append(int(obj.get('iscrowd', 0)))
                areas.append(obj['area'])
        boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
        ds_utils.validate_boxes(boxes, width=width, height=height,
                                where=f'{self._get_ann_file()}: image id {index}')
        return self._make_entry(boxes, np.array(classes, dtype=np.int32), np.array(crowd, dtype=np.int32),
                                np.array(areas, dtype=np.float32), width, height)

    def _cat_name(self, cat_id):
        if not hasattr(self, '_coco_cat_id_to_name'):
            self._coco_cat_id_to_name = {v: k for k, v in self._class_to_coco_cat_id.items()}
        return self._coco_cat_id_to_name[cat_id]

    def _make_entry(self, boxes, gt_classes, crowd, seg_areas, width, height):
        overlaps = np.zeros((boxes.shape[0], self.num_classes), dtype=np.float32)
        overlaps[np.arange(boxes.shape[0]), gt_classes] = 1.0
        # Crowd regions: -1 for every class so that they are never a training target when USE_ALL_GT is False.
        overlaps[crowd.astype(bool)] = -1.0
        return {'width': int(width), 'height': int(height), 'boxes': boxes, 'gt_classes': gt_classes,
                'gt_ishard': np.zeros_like(gt_classes), 'gt_iscrowd': crowd,
                'gt_overlaps': scipy.sparse.csr_matrix(overlaps), 'flipped': False, 'seg_areas': seg_areas}

    def _cache_arrays(self, roidb):
        return {'gt_iscrowd': concat_field(roidb, 'gt_iscrowd', np.int32),
                'seg_areas': concat_field(roidb, 'seg_areas', np.float32)}

    def _roidb_from_cache(self, d):
        off = d['offsets']
        if len(off) != len(self._image_index) + 1:
            return None
        return [self._make_entry(*(d[k][off[i]:off[i + 1]].copy()
                                   for k in ('boxes', 'gt_classes', 'gt_iscrowd', 'seg_areas')),
                                 d['width'][i], d['height'][i])
                for i in range(len(self._image_index))]

    # ---- evaluation ----
    def _coco_results_one_category(self, boxes, cat_id):
        results = []
        for im_ind, index in enumerate(self.image_index):
            dets = np.asarray(boxes[im_ind], dtype=np.float64)
            if dets.size == 0:
                continue
            xs, ys = dets[:, 0], dets[:, 1]
            ws = dets[:, 2] - xs + 1
            hs = dets[:, 3] - ys + 1
            results.extend({'image_id': int(index), 'category_id': int(cat_id),
                            'bbox': [float(xs[k]), float(ys[k]), float(ws[k]), float(hs[k])],
                            'score': float(dets[k, -1])} for k in range(dets.shape[0]))
        return results

    def _write_coco_results_file(self, all_boxes, res_file):
        if len(all_boxes) != self.num_classes:
            raise ValueError(f'{self.name}: all_boxes has {len(all_boxes)} classes, expected {self.num_classes}')
        results = []
        for cls_ind, cls in enumerate(self.classes):
            if cls == '__background__':
                continue
            results.extend(self._coco_results_one_category(all_boxes[cls_ind], self._class_to_coco_cat_id[cls]))
        print(f'Writing results json to {res_file}')
        with open(res_file, 'w') as fid:
            json.dump(results, fid)
        return len(results)

    def _do_detection_eval(self, res_file, output_dir):
        from pycocotools.cocoeval import COCOeval
        coco_dt = self._COCO.loadRes(res_file)
        coco_eval = COCOeval(self._COCO, coco_dt, 'bbox')
        coco_eval.evaluate()
        coco_eval.accumulate()
        per_class = self._print_detection_eval_metrics(coco_eval)
        result = {k: float(v) for k, v in zip(COCO_STATS, coco_eval.stats)}
        result.update({'mAP': result['AP'], 'AP_coco': result['AP'], 'per_class': per_class})
        if output_dir is not None:
            with open(osp.join(output_dir, 'detection_results.json'), 'w') as f:
                json.dump(result, f, indent=1)
            print(f'Wrote COCO eval results to: {osp.join(output_dir, "detection_results.json")}')
        return result

    def _print_detection_eval_metrics(self, coco_eval):
        """Mean and per-category AP@[.5:.95] (area 'all', 100 detections), then COCO's standard summary."""
        precision = coco_eval.eval['precision'][:, :, :, 0, 2]  # (iou, recall, category)
        valid = precision[precision > -1]
        print('~~~~ Mean and per-category AP @ IoU=[0.50,0.95] ~~~~')
        print(f'{100 * (valid.mean() if valid.size else 0.0):.1f}')
        per_class = {}
        cat_ids = coco_eval.params.catIds
        for cls in self.classes[1:]:
            k = cat_ids.index(self._class_to_coco_cat_id[cls])
            p = precision[:, :, k]
            p = p[p > -1]
            per_class[cls] = float(p.mean()) if p.size else None
            print(f'{cls:>20s}: ' + ('  n/a' if per_class[cls] is None else f'{100 * per_class[cls]:.1f}'))
        print('~~~~ Summary metrics ~~~~')
        coco_eval.summarize()
        return per_class

    def evaluate_detections(self, all_boxes, output_dir=None):
        """Write the results json (xywh, w = x2 - x1 + 1) and run COCOeval on sets with annotations.

        Returns {'mAP' (= AP@[.5:.95]), 'AP_coco', 'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10',
        'AR100', 'ARs', 'ARm', 'ARl', 'per_class'}, or None for a test split without annotations.
        """
        out = output_dir or self.cache_path
        os.makedirs(out, exist_ok=True)
        res_file = osp.join(out, f'detections_{self._image_set}{self._year}_results')
        if self.config['use_salt']:
            res_file += f'_{uuid.uuid4()}'
        res_file += '.json'
        n = self._write_coco_results_file(all_boxes, res_file)
        try:
            if 'test' in self._image_set:
                return None
            if n == 0:
                print(f'{self.name}: no detections to evaluate; AP is 0')
                return {'mAP': 0.0, 'AP_coco': 0.0, **{k: 0.0 for k in COCO_STATS},
                        'per_class': {c: 0.0 for c in self.classes[1:]}}
            return self._do_detection_eval(res_file, output_dir)
        finally:
            if self.config['cleanup'] and osp.isfile(res_file):
                os.remove(res_file)

    def competition_mode(self, on):
        self.config['use_salt'] = not on
        self.config['cleanup'] = not on
