"""A synthetic PASCAL-VOC-format dataset of coloured shapes, generated deterministically from a seed.

It is written as a real VOCdevkit folder and read through the same voc_format code as PASCAL VOC, so that
training and evaluation can be exercised end to end on machines without the real data:

    <DATA_DIR>/VOCdevkit_shapes/VOC2007/
        Annotations/<id>.xml            VOC schema, 1-based boxes
        ImageSets/Main/trainval.txt     ids 000001 .. <num_train>
        ImageSets/Main/test.txt         the next <num_test> ids
        JPEGImages/<id>.jpg             colour (3-channel) or grayscale (1-channel) JPEGs
        classes.txt                     the class names, one per line
        shapes_params.json              the generator parameters (written last: marks a complete dataset)

What it contains, so that it exercises what real VOC does:
- 6 classes (circle, square, triangle, star, hexagon, cross) with random colour, size (about 10 px up to 80 %
  of the short side), rotation, and a shaded, noisy fill.
- Textured backgrounds (low-frequency colour noise, gradients, stripes, pixel noise) and clutter that is not an
  object (lines, thin arcs, speckles).
- Partial occlusion by later shapes; every object keeps at least 45 % of its area visible. The box is the tight
  box of the object's *visible* pixels (the VOC convention), so an occluded or border-clipped shape gets the box
  of what can be seen. 'truncated' = 1 when the shape is cut by the image border.
- Objects touching the border (xmin = 1 in the XML), tiny objects (visible box < 12 px on its longer side)
  marked difficult, grayscale images, images with no object, and image aspect ratios from 0.45 to 2.2 (so a few
  need the loader's crop), short side between min_size and max_size.
Every split index i has its guaranteed cases: i % 10 == 3 an object cut by the left border, i % 10 == 6 a tiny
(difficult) object, i % 12 == 5 grayscale, i % 25 == 7 empty, i % 20 == 1 tall (w/h < 0.5), i % 20 == 2 wide
(w/h > 2); the rest is random.
"""
import json
import multiprocessing as mp
import os
import os.path as osp
import shutil

import cv2
import numpy as np

from lib.model.utils.config import cfg

SHAPE_CLASSES = ('circle', 'square', 'triangle', 'star', 'hexagon', 'cross')
GENERATOR_VERSION = 1
DEFAULT_PARAMS = {'num_train': 800, 'num_test': 200, 'seed': 0, 'min_size': 200, 'max_size': 400}
MARKER = 'shapes_params.json'
DIFFICULT_SIZE = 12          # visible box longer side below this: difficult
MIN_VISIBLE = 0.45           # fraction of a shape's area that must stay visible
_JPEG_QUALITY = 90


def default_root():
    """<cfg.DATA_DIR>/VOCdevkit_shapes/VOC2007."""
    return osp.join(cfg.DATA_DIR, 'VOCdevkit_shapes', 'VOC2007')


# ---------------------------------------------------------------- drawing
def _polygon(kind, r, angle):
    """Vertices (K, 2) around the origin of a shape with circumradius r, rotated by angle (radians)."""
    if kind == 'square':
        t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif kind == 'triangle':
        t = angle + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif kind == 'hexagon':
        t = angle + np.arange(6) * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif kind == 'star':
        t = angle + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], 1)
    elif kind == 'cross':
        w = 0.3 * r
        base = np.array([[w, r], [w, w], [r, w], [r, -w], [w, -w], [w, -r],
                         [-w, -r], [-w, -w], [-r, -w], [-r, w], [-w, w], [-w, r]]) / np.sqrt(1 + 0.09)
        c, s = np.cos(angle), np.sin(angle)
        pts = base @ np.array([[c, s], [-s, c]])
    else:
        raise ValueError(f'unknown shape {kind!r}; expected one of {SHAPE_CLASSES}')
    return pts


def _shape_mask(kind, r, angle, cx, cy):
    """Rasterise a shape: (mask uint8 (h, w) of 0/1, x0, y0) with the mask's top-left at image pixel (x0, y0)."""
    x0, y0 = int(np.floor(cx - r)) - 1, int(np.floor(cy - r)) - 1
    w, h = int(np.ceil(cx + r)) + 2 - x0, int(np.ceil(cy + r)) + 2 - y0
    mask = np.zeros((h, w), dtype=np.uint8)
    shift = 4
    scale = 1 << shift
    if kind == 'circle':
        center = (int(round((cx - x0) * scale)), int(round((cy - y0) * scale)))
        cv2.circle(mask, center, int(round(r * scale)), 1, -1, cv2.LINE_8, shift)
    else:
        pts = _polygon(kind, r, angle) + np.array([cx - x0, cy - y0])
        cv2.fillPoly(mask, [np.round(pts * scale).astype(np.int32)], 1, cv2.LINE_8, shift)
    return mask, x0, y0


def _background(rng, h, w):
    base = rng.uniform(20, 235, 3)
    gh, gw = int(rng.integers(2, 8)), int(rng.integers(2, 8))
    low = cv2.resize(rng.normal(0, 1, (gh, gw, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    im = base + low * rng.uniform(10, 45)
    phi = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = (xx * np.cos(phi) + yy * np.sin(phi)) / max(h, w)
    im += (proj[..., None] * rng.uniform(-60, 60, 3)).astype(np.float32)
    if rng.random() < 0.3:
        period = rng.uniform(6, 30)
        im += (np.sin(2 * np.pi * proj * max(h, w) / period)[..., None] * rng.uniform(5, 20)).astype(np.float32)
    return im.astype(np.float32)


def _clutter(rng, im, n_lines, n_arcs, n_specks):
    h, w = im.shape[:2]
    for _ in range(n_lines):
        p1 = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
        p2 = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
        cv2.line(im, p1, p2, rng.uniform(0, 255, 3).tolist(), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(n_arcs):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(8, max(9, w // 3))), int(rng.integers(8, max(9, h // 3))))
        start = float(rng.uniform(0, 360))
        cv2.ellipse(im, center, axes, float(rng.uniform(0, 180)), start, start + float(rng.uniform(30, 200)),
                    rng.uniform(0, 255, 3).tolist(), 1, cv2.LINE_AA)
    for _ in range(n_specks):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(im, center, int(rng.integers(1, 3)), rng.uniform(0, 255, 3).tolist(), -1, cv2.LINE_AA)


def _image_size(rng, i, min_size, max_size):
    short = int(rng.integers(min_size, max_size + 1))
    if i % 20 == 1:
        aspect = rng.uniform(0.45, 0.5)
    elif i % 20 == 2:
        aspect = rng.uniform(2.0, 2.2)
    else:
        aspect = float(np.exp(rng.uniform(np.log(0.45), np.log(2.2))))
    if aspect >= 1:
        return short, int(round(short * aspect))
    return int(round(short / aspect)), short


def render_image(seed, image_number, split_index, min_size=200, max_size=400):
    """Draw one image.

    Args:
        seed: dataset seed; image_number: global image number (the random stream); split_index: index within
            its split (chooses the guaranteed cases, see the module docstring).
    Returns:
        im: (H, W, 3) or (H, W) uint8 BGR/gray; objects: list of dicts {'name', 'bbox' (x1, y1, x2, y2 0-based,
        pixel-inclusive), 'difficult', 'truncated'}.
    """
    rng = np.random.default_rng([seed, image_number])
    i = split_index
    h, w = _image_size(rng, i, min_size, max_size)
    im = _background(rng, h, w)
    _clutter(rng, im, int(rng.integers(2, 10)), int(rng.integers(0, 4)), int(rng.integers(0, 30)))

    if i % 25 == 7 or rng.random() < 0.02:
        n_obj = 0
    else:
        n_obj = int(rng.integers(1, 7))
    id_map = np.zeros((h, w), dtype=np.int16)
    placed = []  # dicts: name, full (area), vis (visible pixels), truncated
    short = min(h, w)
    for k in range(n_obj):
        force_left = (k == 0 and i % 10 == 3)
        force_tiny = (k == 0 and i % 10 == 6)
        for _attempt in range(30):
            kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
            if force_tiny:
                size = rng.uniform(8, 10)
            elif force_left:
                size = rng.uniform(max(30, 0.2 * short), max(31, 0.6 * short))
            else:
                size = float(np.exp(rng.uniform(np.log(10), np.log(0.8 * short))))
            r = size / 2
            angle = rng.uniform(0, 2 * np.pi)
            border = force_left or (not force_tiny and rng.random() < 0.15)
            if border:
                side = 0 if force_left else int(rng.integers(4))
                along_x, along_y = rng.uniform(r, w - r), rng.uniform(r, h - r)
                depth = rng.uniform(0.1, 0.7) * r
                cx, cy = [(depth, along_y), (w - 1 - depth, along_y),
                          (along_x, depth), (along_x, h - 1 - depth)][side]
            else:
                cx, cy = rng.uniform(r + 1, w - r - 1), rng.uniform(r + 1, h - r - 1)
            mask, x0, y0 = _shape_mask(kind, r, angle, cx, cy)
            full = int(mask.sum())
            if full < 20:
                continue
            ix0, iy0 = max(x0, 0), max(y0, 0)
            ix1, iy1 = min(x0 + mask.shape[1], w), min(y0 + mask.shape[0], h)
            crop = mask[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0].astype(bool)
            inside = int(crop.sum())
            if inside < MIN_VISIBLE * full or (force_left and inside == full):
                continue
            region = id_map[iy0:iy1, ix0:ix1]
            covered = np.bincount(region[crop], minlength=len(placed) + 1)
            if any(placed[j]['vis'] - covered[j + 1] < MIN_VISIBLE * placed[j]['full'] for j in range(len(placed))):
                continue
            colour = rng.uniform(0, 255, 3)
            under = im[iy0:iy1, ix0:ix1][crop].mean(axis=0)
            for _c in range(10):
                if np.abs(colour - under).sum() >= 90:
                    break
                colour = rng.uniform(0, 255, 3)
            for j in range(len(placed)):
                placed[j]['vis'] -= int(covered[j + 1])
            region[crop] = len(placed) + 1
            yy, xx = np.nonzero(crop)
            shade = ((xx - xx.mean()) * np.cos(angle) + (yy - yy.mean()) * np.sin(angle)) / max(size, 1)
            fill = colour[None, :] + shade[:, None] * rng.uniform(-40, 40) + rng.normal(0, 5, (xx.size, 3))
            im[iy0 + yy, ix0 + xx] = fill
            placed.append({'name': kind, 'full': full, 'vis': inside, 'truncated': int(inside < full)})
            break

    _clutter(rng, im, int(rng.integers(0, 3)), 0, 0)
    im += rng.normal(0, rng.uniform(2, 8), im.shape).astype(np.float32)
    im = np.clip(im, 0, 255).astype(np.uint8)
    if i % 12 == 5 or rng.random() < 0.04:
        im = cv2.cvtColor(im, cv2.COLOR_BGR2GRAY)

    objects = []
    for j, p in enumerate(placed):
        ys, xs = np.nonzero(id_map == j + 1)
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        difficult = int(max(x2 - x1 + 1, y2 - y1 + 1) < DIFFICULT_SIZE)
        objects.append({'name': p['name'], 'bbox': (x1, y1, x2, y2), 'difficult': difficult,
                        'truncated': p['truncated']})
    return im, objects


def voc_xml(image_id, width, height, depth, objects, folder='VOC2007'):
    """The VOC annotation text for one image (boxes converted to 1-based)."""
    lines = ['<annotation>', f'\t<folder>{folder}</folder>', f'\t<filename>{image_id}.jpg</filename>',
             '\t<source>', '\t\t<database>Synthetic shapes</database>', '\t\t<annotation>generated</annotation>',
             '\t</source>', '\t<size>', f'\t\t<width>{width}</width>', f'\t\t<height>{height}</height>',
             f'\t\t<depth>{depth}</depth>', '\t</size>', '\t<segmented>0</segmented>']
    for o in objects:
        x1, y1, x2, y2 = o['bbox']
        lines += ['\t<object>', f'\t\t<name>{o["name"]}</name>', '\t\t<pose>Unspecified</pose>',
                  f'\t\t<truncated>{o["truncated"]}</truncated>', f'\t\t<difficult>{o["difficult"]}</difficult>',
                  '\t\t<bndbox>', f'\t\t\t<xmin>{x1 + 1}</xmin>', f'\t\t\t<ymin>{y1 + 1}</ymin>',
                  f'\t\t\t<xmax>{x2 + 1}</xmax>', f'\t\t\t<ymax>{y2 + 1}</ymax>', '\t\t</bndbox>', '\t</object>']
    lines.append('</annotation>')
    return '\n'.join(lines) + '\n'


def _write_one(job):
    root, seed, number, split_index, min_size, max_size = job
    image_id = f'{number:06d}'
    im, objects = render_image(seed, number, split_index, min_size, max_size)
    ok, buf = cv2.imencode('.jpg', im, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise IOError(f'JPEG encoding failed for image {image_id}')
    with open(osp.join(root, 'JPEGImages', image_id + '.jpg'), 'wb') as f:
        f.write(buf.tobytes())
    h, w = im.shape[:2]
    depth = 1 if im.ndim == 2 else 3
    with open(osp.join(root, 'Annotations', image_id + '.xml'), 'w') as f:
        f.write(voc_xml(image_id, w, h, depth, objects))
    return image_id


def _params(num_train, num_test, seed, min_size, max_size):
    if min_size < 32 or max_size < min_size:
        raise ValueError(f'need 32 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}')
    if num_train < 0 or num_test < 0:
        raise ValueError(f'image counts must be >= 0, got num_train={num_train}, num_test={num_test}')
    return {'generator_version': GENERATOR_VERSION, 'num_train': int(num_train), 'num_test': int(num_test),
            'seed': int(seed), 'min_size': int(min_size), 'max_size': int(max_size), 'classes': list(SHAPE_CLASSES)}


def generate_shapes_dataset(root, num_train=800, num_test=200, seed=0, min_size=200, max_size=400, workers=None):
    """Write the dataset into ``root`` (replacing a previously generated one there); returns ``root``.

    The files are written into a temporary sibling folder that is renamed into place when complete, so an
    interrupted run never leaves a half-written dataset behind. Output is byte-identical for the same parameters,
    whatever ``workers`` is. Refuses to delete an existing folder that was not made by this generator.
    """
    params = _params(num_train, num_test, seed, min_size, max_size)
    root = osp.abspath(root)
    if osp.exists(root):
        if osp.isfile(osp.join(root, MARKER)) or (osp.isdir(root) and not os.listdir(root)):
            shutil.rmtree(root)
        else:
            raise FileExistsError(f'{root} exists and is not a generated shapes dataset (no {MARKER}); '
                                  f'remove it or choose another --root')
    tmp = f'{root}.tmp-{os.getpid()}'
    if osp.exists(tmp):
        shutil.rmtree(tmp)
    for sub in ('Annotations', osp.join('ImageSets', 'Main'), 'JPEGImages'):
        os.makedirs(osp.join(tmp, sub))
    splits = {'trainval': range(1, num_train + 1), 'test': range(num_train + 1, num_train + num_test + 1)}
    jobs = []
    for numbers in splits.values():
        jobs += [(tmp, seed, n, k, min_size, max_size) for k, n in enumerate(numbers)]
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 16:
        ctx = mp.get_context('fork') if 'fork' in mp.get_all_start_methods() else mp.get_context()
        # one OpenCV thread per worker, set here in the parent and inherited: cv2.setNumThreads called in a forked
        # child whose parent had used OpenCV's thread pool (any large resize) waits forever on that pool
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with ctx.Pool(workers) as pool:
                list(pool.imap_unordered(_write_one, jobs, chunksize=8))
        finally:
            cv2.setNumThreads(threads)
    else:
        for job in jobs:
            _write_one(job)
    for split, numbers in splits.items():
        with open(osp.join(tmp, 'ImageSets', 'Main', split + '.txt'), 'w') as f:
            f.write(''.join(f'{n:06d}\n' for n in numbers))
    with open(osp.join(tmp, 'classes.txt'), 'w') as f:
        f.write(''.join(c + '\n' for c in SHAPE_CLASSES))
    with open(osp.join(tmp, MARKER), 'w') as f:
        json.dump(params, f, indent=1, sort_keys=True)
    os.makedirs(osp.dirname(root), exist_ok=True)
    try:
        os.replace(tmp, root)
    except OSError:
        # Another process finished the same dataset first (rename onto a non-empty folder fails).
        if _marker_matches(root, params):
            shutil.rmtree(tmp)
        else:
            raise
    return root


def _marker_matches(root, params):
    path = osp.join(root, MARKER)
    if not osp.isfile(path):
        return False
    try:
        with open(path, 'r') as f:
            return json.load(f) == params
    except (OSError, ValueError):
        return False


def ensure_shapes_dataset(root=None, num_train=800, num_test=200, seed=0, min_size=200, max_size=400,
                          workers=None, verbose=True):
    """Generate the dataset at ``root`` (default: default_root()) unless it is already there with these
    parameters (compared with its shapes_params.json); returns the root. Idempotent."""
    root = osp.abspath(root or default_root())
    params = _params(num_train, num_test, seed, min_size, max_size)
    if _marker_matches(root, params):
        return root
    if verbose:
        reason = 'with other parameters' if osp.isfile(osp.join(root, MARKER)) else 'missing'
        print(f'Synthetic shapes dataset {reason} at {root}: generating {num_train} trainval + {num_test} test '
              f'images (seed {seed}) ...', flush=True)
    generate_shapes_dataset(root, num_train, num_test, seed, min_size, max_size, workers)
    if verbose:
        print(f'Synthetic shapes dataset ready at {root}', flush=True)
    return root
