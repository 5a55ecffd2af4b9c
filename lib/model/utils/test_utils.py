"""Inference shared by test_net.py and tools/demo.py: restoring a detector from a checkpoint, im_detect
(forward + box decoding), per-class NMS and the per-image top-k, saving detections, PR-curve plots.

Shorthand: B images, R rois per image, C classes (background first), N kept detections.
"""
import json
import os

import numpy as np
import torch

from lib.model.utils.config import cfg
from lib.model.utils.script_utils import (BN_STATS, NETS, amp_autocast, build_detector, guess_net,
                                          load_model_weights, stored_model_cfg)


# ----------------------------------------------------------------------------------------------------------------
# restoring a detector
# ----------------------------------------------------------------------------------------------------------------
def checkpoint_settings(ck, net=None, class_agnostic=False, classes=None):
    """What a checkpoint says about the model, falling back on the command line for older files.

    Returns (net, classes, class_agnostic). A stored value wins over the argument; a checkpoint without a
    class list (the original's) needs ``classes``.
    """
    stored_net = ck.get('net')
    if stored_net is not None and stored_net in NETS:
        if net is not None and net != stored_net:
            print(f'NOTE: the checkpoint was trained with --net {stored_net}; using it instead of --net {net}')
        net = stored_net
    if net is None:
        net = guess_net(ck.get('model', {})) or 'res101'
    if 'class_agnostic' in ck:
        class_agnostic = bool(ck['class_agnostic'])
    elif 'RCNN_bbox_pred.weight' in ck.get('model', {}):
        class_agnostic = ck['model']['RCNN_bbox_pred.weight'].shape[0] == 4
    stored_classes = ck.get('classes')
    if stored_classes is not None:
        classes = list(stored_classes)
    if classes is None:
        raise ValueError('the checkpoint stores no class list (an original-format file); pass the classes '
                         '(test_net takes them from --dataset)')
    return net, list(classes), class_agnostic


def resolve_bn_stats(ck, mode='auto'):
    """'running' or 'batch': how BatchNorm normalises at test time.

    A network whose BatchNorm layers were trained (TRAIN.BN_TRAIN) on one image per batch has learnt on features
    normalised by each image's own statistics; its running averages then describe no single image well, and
    evaluating with them costs most of the accuracy (on the shapes set: mAP 0.15 instead of 0.77 for the same
    weights). 'auto' therefore picks 'batch' for such checkpoints (per-image statistics, as in training) and
    'running' otherwise (frozen BatchNorm, or batches of several images).
    """
    if mode not in BN_STATS:
        raise ValueError(f'unknown BatchNorm statistics mode {mode!r}; expected one of {BN_STATS}')
    if mode != 'auto':
        return mode
    bn_train = bool(((ck.get('cfg') or {}).get('TRAIN') or {}).get('BN_TRAIN', False))
    return 'batch' if bn_train and ck.get('batch_size', 0) == 1 else 'running'


def use_batch_statistics(model):
    """Eval mode, except that every BatchNorm that trains under ``model.train()`` normalises with the statistics
    of its current input, as it did in training; frozen ones (a frozen stem or block) keep their running
    averages. Running averages stay untouched."""
    model.train()
    trained = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    model.eval()
    for m in trained:
        m.train()
        m.momentum = 0.0  # running = (1 - momentum) * running + momentum * batch: unchanged
    return model


def detector_from_checkpoint(ck, path, net, classes, class_agnostic, device, bn_stats='running'):
    """Build the detector for (net, classes, class_agnostic) under the current cfg, load the weights, eval mode
    (with BatchNorm on batch statistics when bn_stats is 'batch', see resolve_bn_stats)."""
    # which BatchNorms trained: the stem was frozen when the backbone started from pretrained weights
    # (checkpoints without the entry come from runs that always froze it)
    model = build_detector(net, classes, class_agnostic=class_agnostic, freeze_stem=ck.get('freeze_stem', True))
    load_model_weights(model, ck['model'], net, path)
    model.to(device)
    model.eval()
    if bn_stats == 'batch':
        use_batch_statistics(model)
    return model


# ----------------------------------------------------------------------------------------------------------------
# detection
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def im_detect(model, im_data, im_info, bbox_reg=True):
    """Run the detector and decode its boxes into the coordinates of the original images.

    Args:
        model: a _fasterRCNN in eval mode (or DataParallel of one). The deltas are un-normalised with the means and
            stds its proposal target layer normalised the training targets with (buffers made from cfg.TRAIN
            when it was built, already on its device: no host-to-GPU copy, which would wait for the GPU); a
            model without that layer gets cfg.TRAIN's.
        im_data: [B, 3, H, W] normalised images; im_info: [B, 3] (H, W, im_scale).
        bbox_reg: apply the predicted deltas (cfg.TEST.BBOX_REG); else every class gets its roi.
    Returns:
        scores [B, R, C] and boxes [B, R, 4C] (class-specific) or [B, R, 4] (class-agnostic), divided by im_scale.
    """
    from lib.model.rpn.bbox_transform import bbox_transform_inv, clip_boxes
    out = model(im_data, im_info)
    rois, scores, deltas = out[0], out[1], out[2]
    scores = scores.float()
    boxes = rois[:, :, 1:5].float()
    B, R = boxes.shape[:2]
    if bbox_reg:
        deltas = deltas.float()
        if cfg.TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED:
            target_layer = getattr(getattr(model, 'module', model), 'RCNN_proposal_target', None)
            if target_layer is not None:
                stds, means = target_layer.BBOX_NORMALIZE_STDS, target_layer.BBOX_NORMALIZE_MEANS
            else:
                stds = deltas.new_tensor(cfg.TRAIN.BBOX_NORMALIZE_STDS)
                means = deltas.new_tensor(cfg.TRAIN.BBOX_NORMALIZE_MEANS)
            # (B, R, 4k) -> (B, R, k, 4): undo the target normalisation of every class's deltas
            deltas = (deltas.view(B, R, -1, 4) * stds + means).view(B, R, -1)
        pred = bbox_transform_inv(boxes, deltas, B)
        pred = clip_boxes(pred, im_info, B)
    else:
        pred = boxes
    pred = pred / im_info[:, 2].to(pred.dtype).view(B, 1, 1)
    return scores, pred


def postprocess_detections(scores, boxes, thresh=0.0, nms_thresh=0.3, max_per_image=100, padded=None):
    """Score threshold, NMS within each class and the top ``max_per_image`` over all classes, for one image.

    Args:
        scores: [R, C] class probabilities (column 0 is background).
        boxes: [R, 4C] class-specific or [R, 4] class-agnostic boxes.
        thresh: keep scores > thresh.
        nms_thresh: IoU threshold (pixel-inclusive, cfg.TEST.NMS).
        max_per_image: 0 or less keeps everything.
        padded: work in fixed sizes on the device and copy the result to the host once (default: on CUDA
            tensors with max_per_image > 0). The other way picks the candidates above thresh first, which
            is faster on a CPU but waits for the GPU four times. Both give the same detections.
    Returns:
        list of C float32 arrays [N_j, 5] (x1, y1, x2, y2, score), sorted by decreasing score; entry 0 is empty.
    """
    from lib.model.roi_layers import batched_nms
    C = scores.shape[1]
    if padded is None:
        padded = scores.is_cuda and max_per_image > 0
    if padded:
        table = detection_table(scores, boxes, thresh, nms_thresh, max_per_image)
        return detections_from_table(table.cpu().numpy(), C)
    fg_scores, cls_boxes = _per_class(scores, boxes)
    r_idx, c_idx = torch.nonzero(fg_scores > thresh, as_tuple=True)
    s = fg_scores[r_idx, c_idx]
    b = cls_boxes[r_idx, c_idx]
    keep = batched_nms(b, s, c_idx, nms_thresh)  # by decreasing score
    if max_per_image > 0:
        keep = keep[:max_per_image]
    # group by class, keeping the score order inside each class: a stable sort on the class index
    keep = keep[torch.sort(c_idx[keep], stable=True).indices]
    dets = torch.cat([b[keep], s[keep, None]], dim=1).cpu().numpy().astype(np.float32)
    counts = torch.bincount(c_idx[keep], minlength=C - 1).tolist()
    return _split_by_class(dets, counts)


def detections_from_table(table, num_classes):
    """detection_table's [max_per_image, 7] result, on the host (numpy), as postprocess_detections returns it:
    a list of num_classes float32 arrays [N_j, 5] (x1, y1, x2, y2, score) by decreasing score; entry 0 empty."""
    table = table[table[:, 6] > 0]  # the kept rows, by decreasing score
    table = table[np.argsort(table[:, 5], kind='stable')]  # grouped by class, score order kept inside
    counts = np.bincount(table[:, 5].astype(np.int64), minlength=num_classes - 1)
    return _split_by_class(np.ascontiguousarray(table[:, :5]), counts)


def _split_by_class(dets, counts):
    """[N, 5] detections grouped by class and the [C - 1] counts -> the per-class list (entry 0 empty)."""
    out = [np.zeros((0, 5), np.float32)]
    out.extend(np.split(dets, np.cumsum(counts)[:-1]))
    return out


def _per_class(scores, boxes):
    """[R, C] scores and [R, 4C] or [R, 4] boxes -> foreground scores [R, C-1] and their boxes [R, C-1, 4]."""
    R, C = scores.shape
    if boxes.shape[1] == 4:
        return scores[:, 1:], boxes.view(R, 1, 4).expand(R, C - 1, 4)
    return scores[:, 1:], boxes.view(R, C, 4)[:, 1:]  # (R, 4C) -> (R, C-1, 4)


def detection_table(scores, boxes, thresh, nms_thresh, max_per_image):
    """postprocess_detections' work in fixed sizes, on the scores' device, with no host synchronisation.

    Every (roi, class) pair takes part. Those at or below thresh rank after every candidate anyway; they score
    -inf so that NaN scores (which a descending sort puts first) do too. So the per-class NMS reaches them after
    every candidate and they never suppress one: batched_nms_padded keeps the same candidates, in the same
    order, as batched_nms on the candidates alone.

    Returns:
        [max_per_image, 7] float32: x1, y1, x2, y2, score, class - 1, kept (1.0 for the detections, 0.0 for
        the padding rows), by decreasing score.
    """
    from lib.model.roi_layers import batched_nms_padded
    fg_scores, cls_boxes = _per_class(scores, boxes)
    R, K = fg_scores.shape
    if R * K == 0:
        return torch.zeros(max_per_image, 7, device=scores.device)
    flat_scores = fg_scores.reshape(-1)  # (r, c) in row-major order, as nonzero would list them
    flat_boxes = cls_boxes.reshape(-1, 4)
    flat_cls = torch.arange(K, device=scores.device).repeat(R)
    valid = flat_scores > thresh
    ranked = torch.where(valid, flat_scores, float('-inf'))
    keep, _ = batched_nms_padded(flat_boxes, ranked, flat_cls, nms_thresh, max_per_image, valid=valid)
    rows = keep.clamp(min=0)
    kept = (keep >= 0) & valid[rows]
    return torch.cat([flat_boxes[rows].float(), flat_scores[rows, None].float(), flat_cls[rows, None].float(),
                      kept[:, None].float()], dim=1)


def image_blob(im, scale=None, max_size=None):
    """One BGR image -> (im_data [1, 3, H, W] float32 tensor, im_info [1, 3] tensor) with cfg.TEST scales."""
    from lib.model.utils.blob import im_list_to_blob, prep_im_for_blob
    scale = cfg.TEST.SCALES[0] if scale is None else scale
    max_size = cfg.TEST.MAX_SIZE if max_size is None else max_size
    fmt = cfg.INPUT_FORMAT
    means = cfg.PIXEL_MEANS if fmt == 'caffe' else cfg.PYTORCH_PIXEL_MEANS
    stds = None if fmt == 'caffe' else cfg.PYTORCH_PIXEL_STDS
    im_scaled, im_scale = prep_im_for_blob(im, means, scale, max_size, pixel_stds=stds, input_format=fmt)
    blob = im_list_to_blob([im_scaled])
    im_data = torch.from_numpy(blob).permute(0, 3, 1, 2).contiguous()  # (1, H, W, 3) -> (1, 3, H, W)
    im_info = torch.tensor([[blob.shape[1], blob.shape[2], im_scale]], dtype=torch.float32)
    return im_data, im_info


def draw_detections(im, dets_per_class, classes, thresh=0.5):
    """Draw every class's detections scoring above thresh on a copy of im (BGR uint8)."""
    from lib.model.utils.net_utils import vis_detections
    out = np.copy(im)
    for j in range(1, len(classes)):
        if len(dets_per_class[j]):
            out = vis_detections(out, str(classes[j]), dets_per_class[j], thresh)
    return out


# ----------------------------------------------------------------------------------------------------------------
# detections on disk
# ----------------------------------------------------------------------------------------------------------------
def save_detections(all_boxes, classes, image_index, path):
    """Write all_boxes[cls][img] ([N, 5]) as one float32 array [M, 7] (image, class, x1, y1, x2, y2, score) in
    ``path`` (.npz) plus a JSON index (classes, image ids) beside it. No pickle: safe to load from anywhere."""
    rows = []
    for j in range(1, len(classes)):
        for i, dets in enumerate(all_boxes[j]):
            if len(dets):
                d = np.asarray(dets, dtype=np.float32).reshape(-1, 5)
                rows.append(np.concatenate([np.full((len(d), 1), i, np.float32),
                                            np.full((len(d), 1), j, np.float32), d], axis=1))
    flat = np.concatenate(rows) if rows else np.zeros((0, 7), np.float32)
    np.savez_compressed(path, dets=flat)
    with open(os.path.splitext(path)[0] + '.json', 'w') as f:
        json.dump({'classes': [str(c) for c in classes], 'image_index': [str(x) for x in image_index],
                   'columns': ['image', 'class', 'x1', 'y1', 'x2', 'y2', 'score']}, f)
    return path


def load_detections(path):
    """Read what save_detections wrote: (all_boxes, classes, image_index)."""
    with open(os.path.splitext(path)[0] + '.json') as f:
        index = json.load(f)
    with np.load(path, allow_pickle=False) as data:
        flat = data['dets']
    C, N = len(index['classes']), len(index['image_index'])
    all_boxes = [[np.zeros((0, 5), np.float32) for _ in range(N)] for _ in range(C)]
    if len(flat):
        key = flat[:, 1].astype(np.int64) * N + flat[:, 0].astype(np.int64)
        order = np.argsort(key, kind='stable')  # group by (class, image), keeping the score order inside
        flat, key = flat[order], key[order]
        groups, starts = np.unique(key, return_index=True)
        ends = np.append(starts[1:], len(key))
        for k, s, e in zip(groups.tolist(), starts.tolist(), ends.tolist()):
            j, i = divmod(k, N)
            all_boxes[j][i] = flat[s:e, 2:]
    return all_boxes, index['classes'], index['image_index']


def plot_pr_curves(curves, path, title=None):
    """One PNG with a precision-recall curve per class; curves: {class: (recall array, precision array, ap)}."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 6))
    for name, (rec, prec, ap) in curves.items():
        ax.plot(np.asarray(rec), np.asarray(prec), label=f'{name} (AP {ap:.3f})', linewidth=1.2)
    ax.set_xlabel('recall')
    ax.set_ylabel('precision')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc='lower left', ncol=2 if len(curves) > 10 else 1)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------
# test_net.py
# ----------------------------------------------------------------------------------------------------------------
def _format_results(results):
    """Summary lines of an evaluate_detections result (the imdb prints its per-class table itself)."""
    names = (('mAP', 'mAP (the dataset\'s metric{})'), ('mAP_voc07', 'mAP, VOC07 11-point metric'),
             ('mAP_area', 'mAP, VOC2010+ area metric'), ('AP_coco', 'AP@[.5:.95], COCO-style'))
    lines = []
    for key, label in names:
        if isinstance(results.get(key), (int, float)):
            metric = ''
            if key == 'mAP' and 'use_07_metric' in results:
                metric = ': VOC07' if results['use_07_metric'] else ': area'
            lines.append(f'{label.format(metric)}: {results[key]:.4f}')
    for key, value in results.items():
        if key not in dict(names) and isinstance(value, float):
            lines.append(f'{key}: {value:.4f}')
    return lines


def pr_curves_from_results(results):
    """{class: (recall, precision, AP)} from evaluate_detections' 'pr_curves' and 'per_class' entries."""
    curves = results.get('pr_curves') or {}
    per_class = results.get('per_class') or {}
    out = {}
    for cls, c in curves.items():
        ap = per_class.get(cls)
        if ap is None or len(c.get('rec', ())) == 0:
            continue
        out[cls] = (c['rec'], c['prec'], float(ap))
    return out


def run_test(args, log=print):
    """Evaluate a checkpoint as test_net.py does. Returns a dict: output_dir, detections (path), results
    (what imdb.evaluate_detections returned), num_images."""
    import time
    from tqdm import tqdm

    from lib.model.utils.checkpoint import checkpoint_name, load_checkpoint
    from lib.model.utils.config import get_output_dir
    from lib.model.utils.script_utils import dataset_settings, print_cfg, seed_everything, select_device, \
        setup_cfg
    from lib.roi_data_layer.roibatchLoader import roibatchLoader
    from lib.roi_data_layer.roidb import combined_roidb

    log(f'Called with args:\n{args}')
    settings = dataset_settings(args.dataset)
    load_dir = os.path.join(args.load_dir, args.net, args.dataset)
    load_name = checkpoint_name(load_dir, args.checksession, args.checkepoch, args.checkpoint)
    log(f'load checkpoint {load_name}')
    ck = load_checkpoint(load_name)
    setup_cfg(args.dataset, ck.get('net', args.net), args.large_scale, args.cfg_file, args.set_cfgs,
              stored_cfg=stored_model_cfg(ck), data_path=args.data_path)
    device = select_device(args.cuda)
    cfg.CUDA = device.type == 'cuda'
    seed_everything(args.seed if args.seed is not None else cfg.RNG_SEED)
    print_cfg()

    cfg.TRAIN.USE_FLIPPED = False
    imdb, roidb, ratio_list, ratio_index = combined_roidb(settings['imdbval_name'], False)
    imdb.competition_mode(on=True)
    log(f'{len(roidb):d} roidb entries')

    net, classes, class_agnostic = checkpoint_settings(ck, args.net, args.class_agnostic, imdb.classes)
    if [str(c) for c in classes] != [str(c) for c in imdb.classes]:
        raise ValueError(f'{load_name} detects {classes}, but {imdb.name} has classes {list(imdb.classes)}; '
                         f'evaluate it on a dataset with the same classes')
    bn_stats = resolve_bn_stats(ck, args.bn_stats)
    log(f'BatchNorm at test time: {bn_stats} statistics')
    model = detector_from_checkpoint(ck, load_name, net, classes, class_agnostic, device, bn_stats)
    if args.mGPUs and device.type == 'cuda' and torch.cuda.device_count() > 1:
        model = torch.nn.DataParallel(model)
    log('load model successfully!')

    thresh = args.thresh if args.thresh is not None else (0.05 if args.vis else 0.0)
    num_images = len(imdb.image_index)
    all_boxes = [[np.zeros((0, 5), np.float32) for _ in range(num_images)] for _ in range(imdb.num_classes)]
    save_name = os.path.splitext(os.path.basename(load_name))[0]
    output_dir = get_output_dir(imdb, save_name)
    vis_dir = os.path.join(output_dir, 'vis')
    if args.vis:
        os.makedirs(vis_dir, exist_ok=True)

    dataset = roibatchLoader(roidb, ratio_list, ratio_index, 1, imdb.num_classes, training=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, num_workers=args.num_workers,
                                         pin_memory=device.type == 'cuda')
    start = time.time()
    t_detect = t_misc = 0.0
    autocast, _ = amp_autocast(device, args.amp)
    bar = tqdm(loader, total=num_images, desc='im_detect', unit='img', dynamic_ncols=True)
    for i, data in enumerate(bar):
        im_data, im_info = data[0].to(device), data[1].to(device)
        tic = time.time()
        with autocast():
            scores, boxes = im_detect(model, im_data, im_info, cfg.TEST.BBOX_REG)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        detect_time = time.time() - tic
        tic = time.time()
        dets = postprocess_detections(scores[0], boxes[0], thresh, cfg.TEST.NMS, args.max_per_image)
        for j in range(1, imdb.num_classes):
            all_boxes[j][i] = dets[j]
        if args.vis:
            from lib.model.utils.blob import read_image
            im = read_image(imdb.image_path_at(i))
            import cv2
            cv2.imwrite(os.path.join(vis_dir, f'{imdb.image_index[i]}.jpg'),
                        draw_detections(im, dets, classes, 0.3))
        misc_time = time.time() - tic
        t_detect += detect_time
        t_misc += misc_time
        bar.set_postfix(im_detect=f'{detect_time:.3f}s', misc=f'{misc_time:.3f}s')
    bar.close()
    log(f'im_detect: {num_images:d} images, {t_detect / max(num_images, 1):.3f}s detect + '
        f'{t_misc / max(num_images, 1):.3f}s misc per image')

    det_file = save_detections(all_boxes, classes, imdb.image_index, os.path.join(output_dir, 'detections.npz'))
    log(f'detections saved to {det_file}')
    log('Evaluating detections')
    results = imdb.evaluate_detections(all_boxes, output_dir)
    results = results if isinstance(results, dict) else {'mAP': float(results)}
    for line in _format_results(results):
        log(line)
    curves = pr_curves_from_results(results)
    if curves:
        png = plot_pr_curves(curves, os.path.join(output_dir, 'pr_curves.png'), title=f'{net} on {imdb.name}')
        log(f'precision-recall curves: {png}')
    log(f'test time: {time.time() - start:.4f}s')
    return {'output_dir': output_dir, 'detections': det_file, 'results': results, 'num_images': num_images}


# ----------------------------------------------------------------------------------------------------------------
# tools/demo.py
# ----------------------------------------------------------------------------------------------------------------
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.tif', '.tiff', '.webp')

# for checkpoints of the original, which store no class list (its demo hard-coded these)
PASCAL_CLASSES = ('__background__', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
                  'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
                  'train', 'tvmonitor')


def list_images(image_dir):
    """Image files of a folder, sorted, leaving out the demo's own outputs (*_det.jpg)."""
    if not os.path.isdir(image_dir):
        return []
    return sorted(n for n in os.listdir(image_dir)
                  if n.lower().endswith(IMAGE_EXTENSIONS) and not os.path.splitext(n)[0].endswith('_det'))


def sample_shapes_images(image_dir, count=4):
    """Copy the first ``count`` images of the synthetic shapes test set (generated on first use) into image_dir."""
    import shutil
    from lib.datasets.factory import get_imdb
    imdb = get_imdb('shapes_test')
    os.makedirs(image_dir, exist_ok=True)
    copied = []
    for i in range(min(count, imdb.num_images)):
        src = imdb.image_path_at(i)
        dst = os.path.join(image_dir, os.path.basename(src))
        shutil.copyfile(src, dst)
        copied.append(dst)
    return copied


def detect_bgr(model, im, device, thresh=0.05):
    """Detections on one BGR image: list of C arrays [N_j, 5] in the image's coordinates."""
    im_data, im_info = image_blob(im)
    scores, boxes = im_detect(model, im_data.to(device), im_info.to(device), cfg.TEST.BBOX_REG)
    return postprocess_detections(scores[0], boxes[0], thresh, cfg.TEST.NMS, 100)


def run_demo(args, log=print):
    """tools/demo.py: detect on every image of args.image_dir (or webcam frames) and write <name>_det.jpg files.
    Returns the list of written paths."""
    import time
    import cv2

    from lib.model.utils.blob import read_image
    from lib.model.utils.checkpoint import checkpoint_name, load_checkpoint
    from lib.model.utils.script_utils import print_cfg, select_device, setup_cfg

    load_dir = os.path.join(args.load_dir, args.net, args.dataset)
    load_name = checkpoint_name(load_dir, args.checksession, args.checkepoch, args.checkpoint)
    log(f'load checkpoint {load_name}')
    ck = load_checkpoint(load_name)
    net, classes, class_agnostic = checkpoint_settings(
        ck, args.net, args.class_agnostic, None if ck.get('classes') else PASCAL_CLASSES)
    setup_cfg(args.dataset, net, False, args.cfg_file, args.set_cfgs, stored_cfg=stored_model_cfg(ck),
              needs_data=False)
    device = select_device(args.cuda)
    cfg.CUDA = device.type == 'cuda'
    print_cfg()
    model = detector_from_checkpoint(ck, load_name, net, classes, class_agnostic, device,
                                     resolve_bn_stats(ck, args.bn_stats))
    log('load model successfully!')

    written = []
    if args.webcam_num >= 0:
        cap = cv2.VideoCapture(args.webcam_num)
        if not cap.isOpened():
            raise RuntimeError(f'webcam {args.webcam_num} could not be opened (no camera, or no permission)')
        out_dir = args.output_dir or 'images'
        os.makedirs(out_dir, exist_ok=True)
        try:
            while True:
                tic = time.time()
                ok, frame = cap.read()
                if not ok:
                    break
                dets = detect_bgr(model, frame, device)
                shown = draw_detections(frame, dets, classes, args.thresh)
                try:
                    cv2.imshow('frame', shown)
                    if cv2.waitKey(1) & 0xFF == ord('q'):
                        break
                except cv2.error:
                    # headless OpenCV: keep the latest frame on disk instead of a window
                    path = os.path.join(out_dir, 'webcam_det.jpg')
                    cv2.imwrite(path, shown)
                log(f'Frame rate: {1.0 / max(time.time() - tic, 1e-6):.2f}')
        except KeyboardInterrupt:
            pass
        finally:
            cap.release()
        return written

    image_dir = args.image_dir
    names = list_images(image_dir)
    if not names and args.image_dir_is_default:
        copied = sample_shapes_images(image_dir)
        log(f'{image_dir} held no images: copied {len(copied)} images of the shapes test set into it')
        names = list_images(image_dir)
    if not names:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {image_dir}')
    out_dir = args.output_dir or image_dir
    os.makedirs(out_dir, exist_ok=True)
    log(f'Loaded Photo: {len(names)} images.')
    for k, name in enumerate(names):
        im = read_image(os.path.join(image_dir, name))
        tic = time.time()
        dets = detect_bgr(model, im, device)
        detect_time = time.time() - tic
        path = os.path.join(out_dir, os.path.splitext(name)[0] + '_det.jpg')
        cv2.imwrite(path, draw_detections(im, dets, classes, args.thresh))
        written.append(path)
        n = sum(int((d[:, 4] > args.thresh).sum()) for d in dets[1:])
        log(f'im_detect: {k + 1:d}/{len(names):d} {detect_time:.3f}s, {n} detections above {args.thresh} -> {path}')
    return written
