"""Detection quality by object size: where a detector's mAP goes.

The ground-truth objects of a test set (difficult and crowd boxes left out, as the VOC and COCO metrics leave
them out) are put in bins by the longer side of their box in the image's own pixels, and for each bin three
rates are counted, per object:
- found: some detection, of any class, scores >= found_thresh at IoU >= iou with the object;
- class: of the found objects, those whose best-scoring such detection has the object's class;
- right: some detection of the object's class scores >= right_thresh at IoU >= iou with it.
IoU is pixel-inclusive (width = x2 - x1 + 1): the model's own bbox_overlaps. Detections are in the layout
test_net.py saves (all_boxes[class][image] = [N, 5] x1, y1, x2, y2, score, 0-based like the roidb's boxes).
"""
import numpy as np
import torch

from lib.model.rpn.bbox_transform import bbox_overlaps

SIZE_EDGES = (24, 48, 96)  # px: bins < 24, 24-48, 48-96, >= 96


def bin_labels(edges=SIZE_EDGES):
    """Names of the bins that ``edges`` make: ['< 24 px', '24-48 px', '48-96 px', '>= 96 px'] by default."""
    edges = list(edges)
    if not edges:
        return ['all']
    return ([f'< {edges[0]:g} px'] + [f'{lo:g}-{hi:g} px' for lo, hi in zip(edges[:-1], edges[1:])]
            + [f'>= {edges[-1]:g} px'])


def _objects(entry):
    """The counted objects of one roidb entry: boxes [G, 4] and classes [G]."""
    keep = np.ones(len(entry['gt_classes']), bool)
    for key in ('gt_ishard', 'gt_iscrowd'):
        if key in entry:
            keep &= np.asarray(entry[key]) == 0
    return np.asarray(entry['boxes'], np.float64).reshape(-1, 4)[keep], np.asarray(entry['gt_classes'])[keep]


def object_outcomes(all_boxes, roidb, iou=0.5, found_thresh=0.3, right_thresh=0.5):
    """Per counted object of the whole set: (longer side in px, found, class right, right), four [M] arrays.

    all_boxes[j][i]: [N, 5] detections of class j (1..C-1) in image i; roidb[i]: the image's entry (boxes,
    gt_classes, and gt_ishard / gt_iscrowd where the dataset has them). Images and classes must line up.
    """
    num_classes = len(all_boxes)
    if num_classes and len(all_boxes[0]) != len(roidb):
        raise ValueError(f'detections cover {len(all_boxes[0])} images, the test set has {len(roidb)}')
    sizes, found, cls_right, right = [], [], [], []
    for i, entry in enumerate(roidb):
        gt, gt_cls = _objects(entry)
        if not len(gt):
            continue
        per_class = [np.asarray(all_boxes[j][i], np.float64).reshape(-1, 5) for j in range(1, num_classes)]
        dets = np.concatenate([np.zeros((0, 5))] + per_class)  # every class's, [D, 5]
        labels = np.concatenate([np.zeros(0, int)] + [np.full(len(d), j) for j, d in enumerate(per_class, 1)])
        ov = bbox_overlaps(torch.from_numpy(gt), torch.from_numpy(dets[:, :4])).numpy() >= iou  # [G, D]
        scores = dets[:, 4]
        cand = ov & (scores[None, :] >= found_thresh)
        f = cand.any(axis=1)
        c = np.zeros(len(gt), bool)
        if len(dets):  # the class of each object's best-scoring candidate (only read where one was found)
            best = np.argmax(np.where(cand, scores[None, :], -np.inf), axis=1)
            c = f & (labels[best] == gt_cls)
        r = (ov & (scores[None, :] >= right_thresh) & (labels[None, :] == gt_cls[:, None])).any(axis=1)
        sizes.append(np.maximum(gt[:, 2] - gt[:, 0] + 1, gt[:, 3] - gt[:, 1] + 1))
        found.append(f)
        cls_right.append(c)
        right.append(r)
    if not sizes:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, bool)
    return np.concatenate(sizes), np.concatenate(found), np.concatenate(cls_right), np.concatenate(right)


def size_breakdown(all_boxes, roidb, edges=SIZE_EDGES, iou=0.5, found_thresh=0.3, right_thresh=0.5):
    """Rows {'bin', 'objects', 'found', 'class', 'right'} per size bin, then one for all objects. The rates are
    fractions (None where the bin, or for 'class' its found objects, is empty)."""
    sizes, found, cls_right, right = object_outcomes(all_boxes, roidb, iou, found_thresh, right_thresh)
    which = np.digitize(sizes, edges)  # 0 below edges[0], len(edges) from the last edge up
    rows = []
    for k, name in enumerate(bin_labels(edges) + ['all']):
        m = which == k if name != 'all' else np.ones(len(sizes), bool)
        n, nf = int(m.sum()), int(found[m].sum())
        rows.append({'bin': name, 'objects': n,
                     'found': nf / n if n else None,
                     'class': int(cls_right[m].sum()) / nf if nf else None,
                     'right': int(right[m].sum()) / n if n else None})
    return rows


def format_breakdown(rows, found_thresh=0.3, right_thresh=0.5, iou=0.5):
    """The rows as a text table, with a line saying what the columns count."""
    def fmt(v):
        return '    -' if v is None else f'{v:5.3f}'
    lines = [f'objects by the longer side of their box: found = a detection of any class scoring >= {found_thresh:g} '
             f'at IoU >= {iou:g}; class = its best such detection has the right class (of the found); '
             f'right = a right-class detection scoring >= {right_thresh:g} at IoU >= {iou:g}',
             f'{"size":>10} {"objects":>8} {"found":>6} {"class":>6} {"right":>6}']
    for r in rows:
        lines.append(f'{r["bin"]:>10} {r["objects"]:8d} {fmt(r["found"]):>6} {fmt(r["class"]):>6} '
                     f'{fmt(r["right"]):>6}')
    return '\n'.join(lines)
