"""The global configuration: every key and default of the original's config.py, plus typed merging.

Consumers read it with ``from lib.model.utils.config import cfg``. Values are changed only through
``cfg_from_file`` (a cfgs/*.yml file) and ``cfg_from_list`` (``--set KEY VALUE ...``), which check that the key
exists and that the value has the default's type.
"""
import ast
import copy
import difflib
import os
import os.path as osp

import numpy as np
from easydict import EasyDict as edict

# Keys the original defined but never read anywhere in its code. They are kept so that old yml files still
# merge; changing them has no effect.
UNUSED_KEYS = frozenset({
    'TRAIN.GAMMA', 'TRAIN.STEPSIZE', 'TRAIN.USE_GT', 'TRAIN.ASPECT_GROUPING',
    'TRAIN.SNAPSHOT_KEPT', 'TRAIN.SUMMARY_INTERVAL', 'TRAIN.IMS_PER_BATCH', 'TRAIN.BBOX_REG',
    'TRAIN.BBOX_THRESH', 'TRAIN.SNAPSHOT_ITERS', 'TRAIN.SNAPSHOT_PREFIX', 'TRAIN.BBOX_NORMALIZE_TARGETS',
    'TRAIN.HAS_RPN', 'TRAIN.LEARNING_RATE',
    'TRAIN.DISPLAY', 'TRAIN.TRIM_HEIGHT', 'TRAIN.TRIM_WIDTH',
    'TEST.SVM', 'TEST.HAS_RPN', 'TEST.PROPOSAL_METHOD', 'TEST.MODE', 'TEST.RPN_TOP_N',
    'MOBILENET.REGU_DEPTH', 'MOBILENET.FIXED_LAYERS', 'MOBILENET.WEIGHT_DECAY', 'MOBILENET.DEPTH_MULTIPLIER',
    'DEDUP_BOXES', 'EPS', 'MATLAB', 'USE_GPU_NMS', 'GPU_ID', 'CUDA',
})


def get_default_cfg():
    """A fresh EasyDict holding the defaults (the original's config.py, plus the keys marked 'added')."""
    C = edict()

    C.TRAIN = edict()
    C.TRAIN.LEARNING_RATE = 0.001            # unused: trainval_net.py takes --lr
    C.TRAIN.MOMENTUM = 0.9
    C.TRAIN.WEIGHT_DECAY = 0.0005
    C.TRAIN.GAMMA = 0.1
    C.TRAIN.STEPSIZE = [30000]
    C.TRAIN.DISPLAY = 10
    C.TRAIN.DOUBLE_BIAS = True               # bias lr x 2
    C.TRAIN.TRUNCATED = False
    C.TRAIN.BIAS_DECAY = False               # weight decay on biases too
    C.TRAIN.USE_GT = False
    C.TRAIN.ASPECT_GROUPING = False
    C.TRAIN.SNAPSHOT_KEPT = 3
    C.TRAIN.SUMMARY_INTERVAL = 180
    C.TRAIN.SCALES = (600,)                  # short side; one is drawn per image
    C.TRAIN.MAX_SIZE = 1000                  # cap on the long side
    C.TRAIN.TRIM_HEIGHT = 600
    C.TRAIN.TRIM_WIDTH = 600
    C.TRAIN.IMS_PER_BATCH = 1
    C.TRAIN.BATCH_SIZE = 128                 # RoIs sampled per image for the RCNN head
    C.TRAIN.FG_FRACTION = 0.25
    C.TRAIN.FG_THRESH = 0.5                  # fg when IoU >= FG_THRESH
    C.TRAIN.BG_THRESH_HI = 0.5               # bg when IoU in [LO, HI)
    C.TRAIN.BG_THRESH_LO = 0.1
    C.TRAIN.USE_FLIPPED = True
    C.TRAIN.BBOX_REG = True
    C.TRAIN.BBOX_THRESH = 0.5
    C.TRAIN.SNAPSHOT_ITERS = 5000
    C.TRAIN.SNAPSHOT_PREFIX = 'res101_faster_rcnn'
    C.TRAIN.BBOX_NORMALIZE_TARGETS = True
    C.TRAIN.BBOX_INSIDE_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
    C.TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED = True
    C.TRAIN.BBOX_NORMALIZE_MEANS = (0.0, 0.0, 0.0, 0.0)
    C.TRAIN.BBOX_NORMALIZE_STDS = (0.1, 0.1, 0.2, 0.2)
    C.TRAIN.PROPOSAL_METHOD = 'gt'
    C.TRAIN.HAS_RPN = True
    C.TRAIN.RPN_POSITIVE_OVERLAP = 0.7       # IoU >= this: positive anchor
    C.TRAIN.RPN_NEGATIVE_OVERLAP = 0.3       # IoU < this: negative anchor
    C.TRAIN.RPN_CLOBBER_POSITIVES = False    # an anchor both positive and negative ends negative
    C.TRAIN.RPN_FG_FRACTION = 0.5
    C.TRAIN.RPN_BATCHSIZE = 256
    C.TRAIN.RPN_NMS_THRESH = 0.7
    C.TRAIN.RPN_PRE_NMS_TOP_N = 12000
    C.TRAIN.RPN_POST_NMS_TOP_N = 2000
    C.TRAIN.RPN_MIN_SIZE = 8                 # at the original image scale
    C.TRAIN.RPN_BBOX_INSIDE_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
    C.TRAIN.RPN_POSITIVE_WEIGHT = -1.0
    C.TRAIN.USE_ALL_GT = True                # False drops COCO 'iscrowd' boxes
    C.TRAIN.BN_TRAIN = False                 # train BatchNorm (needed without pretrained weights)

    C.TEST = edict()
    C.TEST.SCALES = (600,)
    C.TEST.MAX_SIZE = 1000
    C.TEST.NMS = 0.3
    C.TEST.SVM = False
    C.TEST.BBOX_REG = True
    C.TEST.HAS_RPN = False
    C.TEST.PROPOSAL_METHOD = 'gt'
    C.TEST.RPN_NMS_THRESH = 0.7
    C.TEST.RPN_PRE_NMS_TOP_N = 6000
    C.TEST.RPN_POST_NMS_TOP_N = 300
    C.TEST.RPN_MIN_SIZE = 16
    C.TEST.MODE = 'nms'
    C.TEST.RPN_TOP_N = 5000

    C.RESNET = edict()
    C.RESNET.MAX_POOL = False
    C.RESNET.FIXED_BLOCKS = 1                # 0 (none) to 3: conv1 and layer1..FIXED_BLOCKS frozen

    C.MOBILENET = edict()
    C.MOBILENET.REGU_DEPTH = False
    C.MOBILENET.FIXED_LAYERS = 5
    C.MOBILENET.WEIGHT_DECAY = 0.00004
    C.MOBILENET.DEPTH_MULTIPLIER = 1.

    C.DEDUP_BOXES = 1. / 16.
    # BGR means on the 0..255 scale, for the caffe-converted weights, as a (1, 1, 3) array.
    C.PIXEL_MEANS = np.array([[[102.9801, 115.9465, 122.7717]]])
    C.RNG_SEED = 3
    C.EPS = 1e-14
    C.ROOT_DIR = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', '..'))
    C.DATA_DIR = osp.abspath(osp.join(C.ROOT_DIR, 'data'))
    C.MATLAB = 'matlab'
    C.EXP_DIR = 'default'
    C.USE_GPU_NMS = True
    C.GPU_ID = 0
    C.POOLING_MODE = 'crop'                  # 'align', 'pool' or 'crop'
    C.POOLING_SIZE = 7
    C.MAX_NUM_GT_BOXES = 20
    C.ANCHOR_SCALES = [8, 16, 32]
    C.ANCHOR_RATIOS = [0.5, 1, 2]
    C.FEAT_STRIDE = [16, ]
    C.CUDA = False
    C.CROP_RESIZE_WITH_MAX_POOL = True

    # Added: the detector's input image and the weights of its trunk and RPN (so their convolutions) in
    # channels_last memory layout, and tools/pretrain_backbone.py's crops too. Off by default, the original's
    # layout. Measured on CPUs only (docs/BENCHMARKS.md): faster on a 2-core AVX-512 Ice Lake in float32, slower
    # on an AVX2-only CPU.
    C.CHANNELS_LAST = False

    # Added: how images are normalised for the backbone. 'caffe' is the original's (BGR, 0..255, minus
    # PIXEL_MEANS); 'pytorch' is for torchvision weights (RGB, 0..1, minus PYTORCH_PIXEL_MEANS, divided by
    # PYTORCH_PIXEL_STDS). The model sets it from the pretrained file it loads.
    C.INPUT_FORMAT = 'caffe'
    C.PYTORCH_PIXEL_MEANS = np.array([[[0.485, 0.456, 0.406]]])
    C.PYTORCH_PIXEL_STDS = np.array([[[0.229, 0.224, 0.225]]])
    return C


cfg = get_default_cfg()
__C = cfg


def reset_cfg():
    """Restore every key of the global cfg to its default, in place (the object others imported stays the same)."""
    fresh = get_default_cfg()
    cfg.clear()
    cfg.update(fresh)


def cfg_to_dict(c=None):
    """A plain, JSON-serialisable copy of the cfg (arrays become nested lists, tuples become lists)."""
    c = cfg if c is None else c
    out = {}
    for k, v in c.items():
        if isinstance(v, dict):
            out[k] = cfg_to_dict(v)
        elif isinstance(v, np.ndarray):
            out[k] = v.tolist()
        elif isinstance(v, tuple):
            out[k] = list(v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _all_keys(d, prefix=''):
    keys = []
    for k, v in d.items():
        full = prefix + k
        keys.append(full)
        if isinstance(v, dict):
            keys.extend(_all_keys(v, full + '.'))
    return keys


def _unknown_key(full_key):
    close = difflib.get_close_matches(full_key, _all_keys(cfg), n=3, cutoff=0.5)
    hint = ('; closest valid keys: ' + ', '.join(close)) if close else ''
    return KeyError(f'{full_key!r} is not a valid config key{hint}')


def _type_name(default):
    if isinstance(default, np.ndarray):
        return f'array of shape {default.shape}'
    return type(default).__name__


def _coerce(full_key, default, value):
    """Return ``value`` converted to the type of ``default``, or raise ValueError naming the key."""
    def bad():
        return ValueError(f'config key {full_key}: expected {_type_name(default)}, '
                          f'got {type(value).__name__} {value!r}')

    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad()
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad()
        return value
    if isinstance(default, np.ndarray):
        try:
            arr = np.array(value, dtype=default.dtype)
        except (TypeError, ValueError):
            raise bad() from None
        if arr.size != default.size:
            raise bad()
        return arr.reshape(default.shape)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise bad()
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in default)
        if numeric and not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            raise bad()
        return type(default)(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise bad()
        return value
    if type(value) is not type(default):
        raise bad()
    return value


def _merge_a_into_b(a, b, prefix=''):
    """Merge dict ``a`` into config ``b``: every key of ``a`` must exist in ``b`` with a compatible type."""
    for k, v in a.items():
        full = prefix + k
        if k not in b:
            raise _unknown_key(full)
        if isinstance(b[k], dict):
            _coerce(full, b[k], v)  # raises unless v is a mapping too
            _merge_a_into_b(v, b[k], full + '.')
        else:
            b[k] = _coerce(full, b[k], v)


def cfg_from_file(filename):
    """Load a yml file and merge it into the global cfg."""
    import yaml
    with open(filename, 'r') as f:
        try:
            yaml_cfg = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f'{filename}: not valid YAML: {e}') from None
    if yaml_cfg is None:
        return
    if not isinstance(yaml_cfg, dict):
        raise ValueError(f'{filename}: expected a mapping of config keys, got {type(yaml_cfg).__name__}')
    try:
        _merge_a_into_b(yaml_cfg, cfg)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise type(e)(f'{filename}: {msg}') from None


def cfg_from_list(cfg_list):
    """Set keys from a flat list, e.g. ``['TRAIN.SCALES', '[800]', 'POOLING_MODE', 'align']``.

    Values are Python literals; anything that is not a literal is taken as a string.
    """
    if len(cfg_list) % 2 != 0:
        raise ValueError(f'--set needs KEY VALUE pairs, got an odd number of items: {list(cfg_list)}')
    for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
        d = cfg
        parts = full_key.split('.')
        for sub in parts[:-1]:
            if sub not in d or not isinstance(d[sub], dict):
                raise _unknown_key(full_key)
            d = d[sub]
        last = parts[-1]
        if last not in d or isinstance(d[last], dict):
            raise _unknown_key(full_key)
        try:
            value = ast.literal_eval(raw) if isinstance(raw, str) else raw
        except (ValueError, SyntaxError):
            value = raw
        d[last] = _coerce(full_key, d[last], value)


def get_output_dir(imdb, weights_filename):
    """Directory for test artefacts: output/<EXP_DIR>/<imdb.name>/<weights_filename or 'default'>, created."""
    outdir = osp.abspath(osp.join(cfg.ROOT_DIR, 'output', cfg.EXP_DIR, imdb.name))
    outdir = osp.join(outdir, weights_filename if weights_filename is not None else 'default')
    os.makedirs(outdir, exist_ok=True)
    return outdir


def get_output_tb_dir(imdb, weights_filename):
    """Directory for tensorboard summaries: tensorboard/<EXP_DIR>/<imdb.name>/<weights_filename>, created."""
    outdir = osp.abspath(osp.join(cfg.ROOT_DIR, 'tensorboard', cfg.EXP_DIR, imdb.name))
    outdir = osp.join(outdir, weights_filename if weights_filename is not None else 'default')
    os.makedirs(outdir, exist_ok=True)
    return outdir
