"""PASCAL VOC detection evaluation (the devkit rules, in Python), with an annotation cache that cannot go stale.

Rules (as the VOC devkit and the original's voc_eval.py): detections of one class are sorted by decreasing score
(stable, so ties keep file order); a detection is a true positive when its best IoU with a gt box of the class
in the same image is > ovthresh and that gt box is not yet matched; a second match of the same gt box is a false
positive (duplicate); a match to a 'difficult' gt box is neither TP nor FP, and difficult boxes do not count in
the number of positives. IoU is pixel-inclusive (width = x2 - x1 + 1). Boxes are compared in the annotation
files' 1-based coordinates, which is why the results files are written 1-based.
"""
import hashlib
import json
import logging
import os

import numpy as np

from lib.datasets.voc_xml import parse_voc_xml

logger = logging.getLogger(__name__)

_CACHE_VERSION = 1


def parse_rec(filename):
    """The objects of one VOC annotation file: list of {'name', 'pose', 'truncated', 'difficult', 'bbox'}."""
    return parse_voc_xml(filename)['objects']


def voc_ap(rec, prec, use_07_metric=False):
    """Average precision from a recall/precision curve.

    use_07_metric: VOC2007's 11-point metric, the mean over t in {0, 0.1, ..., 1} of the best precision at
    recall >= t (0 when recall never reaches t). Otherwise the VOC2010+ area under the precision envelope
    (precision made monotonically decreasing), summed where recall changes.
    """
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = np.max(prec[rec >= t]) if np.any(rec >= t) else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _read_image_set(imagesetfile):
    with open(imagesetfile, 'rb') as f:
        content = f.read()
    # the first word of each line, as the training side reads it (VOC's <class>_<split>.txt add a column)
    return content, [x.split()[0] for x in content.decode('utf-8').splitlines() if x.strip()]


def load_annotations(annopath, imagesetfile, cachedir=None):
    """Parse the annotations of every image in the image-set file, through a JSON cache.

    Args:
        annopath: template with one '{:s}' (or '{}') for the image name, e.g. '.../Annotations/{:s}.xml'.
        imagesetfile: text file with one image name per line.
        cachedir: where the cache lives (None: no cache). The cache file name is a hash of the image-set file's
            content, the template and every annotation file's mtime and size, so any change makes a new cache
            (the original keyed it by the image-set file name only and returned stale boxes).
    Returns:
        (imagenames, recs): the image names in file order and {name: parse_rec(...)}.
    """
    content, imagenames = _read_image_set(imagesetfile)
    h = hashlib.sha1()
    h.update(f'v{_CACHE_VERSION}\n{annopath}\n'.encode())
    h.update(content)
    for name in imagenames:
        path = annopath.format(name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f'{imagesetfile}: image {name!r} has no annotation file {path}') from None
        h.update(f'{st.st_mtime_ns} {st.st_size}\n'.encode())
    key = h.hexdigest()[:20]

    cachefile = None
    if cachedir is not None:
        base = os.path.splitext(os.path.basename(imagesetfile))[0]
        cachefile = os.path.join(cachedir, f'annots_{base}_{key}.json')
        if os.path.isfile(cachefile):
            try:
                with open(cachefile, 'r') as f:
                    data = json.load(f)
                if data.get('key') == key:
                    return data['imagenames'], data['recs']
            except (OSError, ValueError, AttributeError) as e:  # a damaged file: parse the annotations again
                logger.warning('%s: unreadable annotation cache (%s); rebuilding', cachefile, e)

    recs = {name: parse_rec(annopath.format(name)) for name in imagenames}
    if cachefile is not None:
        os.makedirs(cachedir, exist_ok=True)
        tmp = f'{cachefile}.{os.getpid()}.tmp'
        with open(tmp, 'w') as f:
            json.dump({'key': key, 'imagenames': imagenames, 'recs': recs}, f)
        os.replace(tmp, cachefile)
    return imagenames, recs


def read_detections(detpath):
    """Read a VOC results file: lines 'image_id score x1 y1 x2 y2' (1-based).

    Returns (image_ids list, confidence (N,) float64, BB (N, 4) float64).
    """
    image_ids, confidence, boxes = [], [], []
    with open(detpath, 'r') as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise ValueError(f'{detpath}:{lineno}: expected "image_id score x1 y1 x2 y2", got {line!r}')
            image_ids.append(parts[0])
            confidence.append(float(parts[1]))
            boxes.append([float(z) for z in parts[2:]])
    return (image_ids, np.array(confidence, dtype=np.float64),
            np.array(boxes, dtype=np.float64).reshape(-1, 4))


def match_detections(recs, imagenames, classname, image_ids, confidence, BB):
    """Sort one class's detections by score and find each one's best-overlapping gt box (threshold-free part).

    Args:
        recs, imagenames: as returned by load_annotations.
        image_ids: length-N list of image names; confidence: (N,); BB: (N, 4) x1 y1 x2 y2 in the annotations'
            coordinates (1-based for VOC files).
    Returns:
        dict with 'npos' (non-difficult gt boxes of the class), and per detection in score order: 'ovmax' (N,)
        best IoU (-inf when the image has no gt box of the class), 'gt' (N,) global id of that gt box,
        'difficult' (N,) whether that gt box is difficult.
    """
    classname = classname.lower()
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    BB = np.asarray(BB, dtype=np.float64).reshape(-1, 4)
    nd = len(image_ids)
    if confidence.shape[0] != nd or BB.shape[0] != nd:
        raise ValueError(f'{nd} image ids but {confidence.shape[0]} scores and {BB.shape[0]} boxes')

    gt_boxes, gt_difficult, first_gt = {}, [], {}
    npos = 0
    offset = 0
    for name in imagenames:
        objs = [o for o in recs[name] if o['name'].lower() == classname]
        gt_boxes[name] = np.array([o['bbox'] for o in objs], dtype=np.float64).reshape(-1, 4)
        diff = [bool(o['difficult']) for o in objs]
        gt_difficult.extend(diff)
        npos += len(diff) - sum(diff)
        first_gt[name] = offset
        offset += len(objs)
    gt_difficult = np.array(gt_difficult, dtype=bool)

    order = np.argsort(-confidence, kind='stable')
    ovmax = np.full(nd, -np.inf)
    gt_id = np.full(nd, -1, dtype=np.int64)
    for d, k in enumerate(order):
        name = image_ids[k]
        BBGT = gt_boxes.get(name)
        if BBGT is None:
            raise KeyError(f'detection for image {name!r}, which is not in the image set')
        if BBGT.shape[0] == 0:
            continue
        bb = BB[k]
        ixmin = np.maximum(BBGT[:, 0], bb[0])
        iymin = np.maximum(BBGT[:, 1], bb[1])
        ixmax = np.minimum(BBGT[:, 2], bb[2])
        iymax = np.minimum(BBGT[:, 3], bb[3])
        iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
        ih = np.maximum(iymax - iymin + 1.0, 0.0)
        inters = iw * ih
        uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
               + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
        overlaps = inters / uni
        jmax = int(np.argmax(overlaps))
        ovmax[d] = overlaps[jmax]
        gt_id[d] = first_gt[name] + jmax
    difficult = np.zeros(nd, dtype=bool)
    has_gt = gt_id >= 0
    difficult[has_gt] = gt_difficult[gt_id[has_gt]]
    return {'npos': int(npos), 'ovmax': ovmax, 'gt': gt_id, 'difficult': difficult}


def eval_match(match, ovthresh=0.5, use_07_metric=False):
    """Precision/recall/AP of matched detections at one IoU threshold.

    The VOC greedy rule: in score order, a detection with IoU > ovthresh takes its best gt box if that box is
    free (TP), is a duplicate if it is taken (FP), and is ignored if the box is difficult; IoU <= ovthresh is FP.
    Since each detection's best gt box does not depend on earlier matches, the first detection (in score
    order) above the threshold on each gt box is its TP and the later ones are duplicates.
    Returns rec (N,), prec (N,), ap (nan when npos == 0: recall is undefined).
    """
    ovmax, gt_id, difficult = match['ovmax'], match['gt'], match['difficult']
    nd = ovmax.shape[0]
    above = ovmax > ovthresh
    counted = above & ~difficult
    tp = np.zeros(nd)
    idx = np.nonzero(counted)[0]
    if idx.size:
        _, first = np.unique(gt_id[idx], return_index=True)
        tp[idx[first]] = 1.0
    fp = np.where(above, counted & (tp == 0), True).astype(np.float64)
    tp = np.cumsum(tp)
    fp = np.cumsum(fp)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if match['npos'] == 0:
        return np.zeros(nd), prec, float('nan')
    rec = tp / float(match['npos'])
    return rec, prec, voc_ap(rec, prec, use_07_metric)


def eval_detections(recs, imagenames, classname, image_ids, confidence, BB, ovthresh=0.5,
                    use_07_metric=False):
    """Evaluate in-memory detections of one class (no files): rec, prec, ap (see match_detections, eval_match)."""
    match = match_detections(recs, imagenames, classname, image_ids, confidence, BB)
    return eval_match(match, ovthresh, use_07_metric)


def voc_eval(detpath, annopath, imagesetfile, classname, cachedir=None, ovthresh=0.5, use_07_metric=False):
    """The original's entry point: evaluate one class from a results file.

    Args:
        detpath: results file path, optionally a template with '{:s}' for the class name.
        annopath: annotation path template with '{:s}' for the image name.
        imagesetfile: text file with one image name per line.
        classname: the class to evaluate.
        cachedir: directory for the JSON annotation cache (None: no cache).
    Returns:
        rec, prec, ap (see eval_detections).
    """
    imagenames, recs = load_annotations(annopath, imagesetfile, cachedir)
    detfile = detpath.format(classname) if '{' in detpath else detpath
    image_ids, confidence, BB = read_detections(detfile)
    return eval_detections(recs, imagenames, classname, image_ids, confidence, BB, ovthresh, use_07_metric)
