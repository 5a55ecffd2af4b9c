"""What trainval_net.py, test_net.py and tools/demo.py share: dataset table, cfg precedence, device, seeding.

Config precedence, the same in every script (later wins):
  config.py defaults < the dataset's defaults (DATASETS below) < cfgs/<net>[_ls].yml or --cfg
  < the model-defining keys stored in a checkpoint (test_net, demo, and trainval_net --r) < --set.
"""
import argparse
import contextlib
import os
import pprint
import random
import warnings

import numpy as np
import torch
import yaml

from lib.model.utils.config import cfg, cfg_from_file, cfg_from_list, cfg_to_dict

NETS = ('vgg16', 'res18', 'res34', 'res50', 'res101', 'res152')


# imdb names for training and testing, and the cfg keys each dataset sets (the original's table; 'shapes' is the
# synthetic set of this project and 'custom' a VOC-format folder given by --data_path).
def _dataset(imdb_name, imdbval_name, anchor_scales, max_num_gt_boxes):
    return dict(imdb_name=imdb_name, imdbval_name=imdbval_name,
                set_cfgs=['ANCHOR_SCALES', str(anchor_scales), 'ANCHOR_RATIOS', '[0.5, 1, 2]',
                          'MAX_NUM_GT_BOXES', str(max_num_gt_boxes)])


DATASETS = {
    'pascal_voc': _dataset('voc_2007_trainval', 'voc_2007_test', [8, 16, 32], 20),
    'pascal_voc_0712': _dataset('voc_2007_trainval+voc_2012_trainval', 'voc_2007_test', [8, 16, 32], 20),
    'coco': _dataset('coco_2014_train+coco_2014_valminusminival', 'coco_2014_minival', [4, 8, 16, 32], 50),
    'shapes': _dataset('shapes_trainval', 'shapes_test', [2, 4, 8, 16, 32], 20),
    'custom': _dataset('custom_trainval', 'custom_test', [8, 16, 32], 20),
}

# cfg keys that define the network's shape or its input/output coding. A checkpoint stores them and test_net /
# demo restore them, so that a model is evaluated the way it was trained whatever --dataset or yml says.
MODEL_CFG_KEYS = (
    'ANCHOR_SCALES', 'ANCHOR_RATIOS', 'FEAT_STRIDE', 'POOLING_MODE', 'POOLING_SIZE', 'CROP_RESIZE_WITH_MAX_POOL',
    'INPUT_FORMAT', 'PIXEL_MEANS', 'PYTORCH_PIXEL_MEANS', 'PYTORCH_PIXEL_STDS', 'RESNET.MAX_POOL',
    'RESNET.FIXED_BLOCKS', 'TRAIN.BN_TRAIN', 'TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED',
    'TRAIN.BBOX_NORMALIZE_MEANS', 'TRAIN.BBOX_NORMALIZE_STDS',
)


def str2bool(value):
    """argparse type for real booleans: true/false, yes/no, on/off, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ('true', 't', 'yes', 'y', 'on', '1'):
        return True
    if v in ('false', 'f', 'no', 'n', 'off', '0'):
        return False
    raise argparse.ArgumentTypeError(f'expected a boolean (true/false, yes/no, 1/0), got {value!r}')


def add_cfg_args(parser, with_ls=True):
    """--cfg, --ls and --set, identical in every script. --set takes the rest of the command line, as the original."""
    parser.add_argument('--cfg', dest='cfg_file', default=None, type=str,
                        help='config file; default cfgs/<net>.yml'
                        + (' (cfgs/<net>_ls.yml with --ls)' if with_ls else ''))
    if with_ls:
        parser.add_argument('--ls', dest='large_scale', action='store_true',
                            help='use the large image scale config (cfgs/<net>_ls.yml)')
    parser.add_argument('--set', dest='set_cfgs', default=None, nargs=argparse.REMAINDER,
                        help='KEY VALUE pairs applied after every other config source; must come last')


# test-time BatchNorm statistics (test_net / demo --bn_stats; see test_utils.resolve_bn_stats)
BN_STATS = ('auto', 'running', 'batch')


def add_checkpoint_args(parser, mgpus_help):
    """The flags test_net.py and demo.py share to pick a device and a checkpoint (the original's names)."""
    parser.add_argument('--cuda', dest='cuda', action='store_true', help='use CUDA')
    parser.add_argument('--mGPUs', dest='mGPUs', action='store_true', help=mgpus_help)
    parser.add_argument('--cag', dest='class_agnostic', action='store_true',
                        help='class-agnostic bbox regression (only for checkpoints that do not record it)')
    parser.add_argument('--checksession', dest='checksession', default=1, type=int,
                        help='checksession to load model')
    parser.add_argument('--checkepoch', dest='checkepoch', default=1, type=int, help='checkepoch to load network')
    parser.add_argument('--checkpoint', dest='checkpoint', default=10021, type=int,
                        help='checkpoint to load network')
    parser.add_argument('--bs', dest='batch_size', default=1, type=int, choices=(1,),
                        help='images per batch: 1, as the original tested (accepted for its command lines)')
    parser.add_argument('--parallel_type', dest='parallel_type', default=0, type=int,
                        help='accepted for the original\'s command lines; unused there and here')
    parser.add_argument('--bn_stats', dest='bn_stats', default='auto', choices=BN_STATS,
                        help="BatchNorm statistics at test time; auto: 'batch' (per image) for models trained "
                             "with TRAIN.BN_TRAIN at --bs 1, else 'running'")


def dataset_settings(dataset):
    """The imdb names and default cfg list of a --dataset value."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f'unknown dataset {dataset!r}; expected one of {", ".join(DATASETS)}') from None


def default_cfg_file(net, large_scale=False):
    """cfgs/<net>.yml or cfgs/<net>_ls.yml under the repository root, or None if the file does not exist."""
    path = os.path.join(cfg.ROOT_DIR, 'cfgs', f'{net}_ls.yml' if large_scale else f'{net}.yml')
    return path if os.path.isfile(path) else None


def _set_key(dotted, value):
    d = cfg
    parts = dotted.split('.')
    for p in parts[:-1]:
        d = d[p]
    d[parts[-1]] = value


def _get_key(source, dotted):
    d = source
    for p in dotted.split('.'):
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def stored_model_cfg(ck):
    """The cfg dict stored in a checkpoint, completed with the top-level anchor/pooling entries of older files."""
    stored = dict(ck.get('cfg') or {})
    for key, ck_key in (('ANCHOR_SCALES', 'anchor_scales'), ('ANCHOR_RATIOS', 'anchor_ratios'),
                        ('POOLING_MODE', 'pooling_mode')):
        if ck_key in ck and key not in stored:
            stored[key] = ck[ck_key]
    return stored


def apply_model_cfg(stored_cfg):
    """Set the MODEL_CFG_KEYS from a checkpoint's stored cfg dict (keys absent from it keep their value)."""
    for key in MODEL_CFG_KEYS:
        value = _get_key(stored_cfg, key)
        if value is None:
            continue
        current = _get_key(cfg, key)
        if isinstance(current, np.ndarray):
            value = np.array(value, dtype=current.dtype).reshape(current.shape)
        elif isinstance(current, tuple):
            value = tuple(value)
        _set_key(key, value)


def setup_cfg(dataset, net, large_scale=False, cfg_file=None, set_cfgs=None, stored_cfg=None, data_path=None,
              needs_data=True):
    """Build the global cfg in the documented precedence and return the yml file used (or None).

    Args:
        dataset: a DATASETS key.
        net: one of NETS; picks cfgs/<net>[_ls].yml unless cfg_file is given.
        cfg_file: explicit yml; must exist.
        set_cfgs: flat KEY VALUE list from --set, applied last.
        stored_cfg: a checkpoint's cfg dict; its MODEL_CFG_KEYS override the yml (test_net, demo).
        data_path: folder of a 'custom' VOC-format dataset.
        needs_data: False when no dataset is read (demo): 'custom' then needs no data_path.
    """
    settings = dataset_settings(dataset)
    if dataset == 'custom' and (needs_data or data_path):
        if not data_path:
            raise ValueError("--dataset custom needs --data_path pointing at a VOC-format folder "
                             "(Annotations/, ImageSets/Main/, JPEGImages/)")
        from lib.datasets.factory import set_custom_root
        set_custom_root(data_path)
    cfg_from_list(settings['set_cfgs'])
    if cfg_file is not None:
        if not os.path.isfile(cfg_file):
            raise FileNotFoundError(f'--cfg {cfg_file}: no such file')
        used = cfg_file
        if large_scale:
            print(f'NOTE: --ls has no effect with --cfg: {cfg_file} is read, not cfgs/{net}_ls.yml')
    else:
        used = default_cfg_file(net, large_scale)
    if used is not None:
        cfg_from_file(used)
    if stored_cfg is not None:
        apply_model_cfg(stored_cfg)
    if set_cfgs:
        cfg_from_list(set_cfgs)
    return used


def cfg_differences(stored_cfg, ignore=('DATA_DIR', 'ROOT_DIR', 'EXP_DIR', 'CUDA', 'USE_GPU_NMS')):
    """'KEY: stored -> current' for every cfg key whose value differs from a checkpoint's stored cfg dict."""
    def flat(d, prefix=''):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f'{prefix}{k}.')
            else:
                yield f'{prefix}{k}', v
    current = dict(flat(cfg_to_dict()))
    return [f'{k}: {v} -> {current[k]}' for k, v in flat(stored_cfg or {})
            if k in current and k not in ignore and v != current[k]]


def print_cfg(file=None):
    print('Using config:', file=file)
    print(pprint.pformat(cfg_to_dict()), file=file)


def save_cfg(directory, name):
    """Write the effective cfg as <name>.yml and <name>.json into directory; returns the yml path."""
    import json
    os.makedirs(directory, exist_ok=True)
    d = cfg_to_dict()
    yml = os.path.join(directory, name + '.yml')
    with open(yml, 'w') as f:
        yaml.safe_dump(d, f, default_flow_style=None, sort_keys=True)
    with open(os.path.join(directory, name + '.json'), 'w') as f:
        json.dump(d, f, indent=1, sort_keys=True)
    return yml


def select_device(use_cuda, local_rank=None):
    """torch.device for --cuda (and the DDP local rank); warns like the original when a GPU goes unused."""
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError('--cuda given but no CUDA device is available (torch.cuda.is_available() is False)')
        if local_rank is not None:
            torch.cuda.set_device(local_rank)
            return torch.device('cuda', local_rank)
        return torch.device('cuda')
    if torch.cuda.is_available():
        print('WARNING: You have a CUDA device, so you should probably run with --cuda')
    return torch.device('cpu')


def cpu_has_native_bf16():
    """Whether this CPU computes bfloat16 matrix products natively (AVX512-BF16 or AMX): there, bf16 autocast
    makes a CPU training step about a third faster; elsewhere oneDNN emulates it, slower than float32.

    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is not this question: it is also true on AVX512 CPUs without
    bf16 instructions (an Ice Lake Xeon, where oneDNN emulates bf16 and a step of the CPU main job took twice as
    long as in float32), so the instruction sets are asked for by name."""
    probes = [getattr(torch.cpu, name, None) for name in ('_is_avx512_bf16_supported', '_is_amx_tile_supported')]
    try:
        return any(bool(probe()) for probe in probes if probe is not None)
    except RuntimeError:
        return False


def cpu_has_avx512():
    """Whether torch's CPU kernels run at the AVX-512 level here (``ATEN_CPU_CAPABILITY`` can lower it). On such a
    CPU the channels_last layout (cfg.CHANNELS_LAST) made the float32 CPU main job's steps faster; on an AVX2-only
    CPU it made them slower (docs/BENCHMARKS.md)."""
    return torch.backends.cpu.get_cpu_capability().startswith('AVX512')


def amp_autocast(device, amp, amp_dtype='bf16'):
    """(a factory of the autocast context, its dtype) for the scripts' --amp; (nullcontext, None) without it.

    On CUDA: bf16, or fp16 with amp_dtype 'fp16' (the trainer adds a GradScaler). On a CPU: bf16 only (fp16
    falls back to it, with a warning), and a warning where the CPU has no native bf16 (cpu_has_native_bf16)."""
    if not amp:
        return contextlib.nullcontext, None
    device_type = torch.device(device).type
    dtype = torch.float16 if amp_dtype == 'fp16' else torch.bfloat16
    if device_type == 'cpu':
        if dtype == torch.float16:
            warnings.warn('--amp_dtype fp16 is for CUDA (with a GradScaler); the CPU autocasts to bf16')
            dtype = torch.bfloat16
        if not cpu_has_native_bf16():
            warnings.warn('--amp on a CPU without native bfloat16 (AVX512-BF16 or AMX): oneDNN emulates it, '
                          'which is slower than float32')
    return (lambda: torch.autocast(device_type, dtype=dtype)), dtype


def seed_everything(seed, deterministic=False):
    """Seed python, numpy and torch; in deterministic mode also ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # warn_only: some CUDA kernels (e.g. atomic-add backward passes) have no deterministic version.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')


def build_detector(net, classes, pretrained=False, class_agnostic=False, weights=None, freeze_stem=None):
    """The Faster R-CNN for --net with its architecture created.

    Args:
        weights: pretrained backbone file; None means the model's default (data/pretrained_model/...);
            ignored unless pretrained.
        freeze_stem: whether the first layers stay fixed (default: when pretrained); a checkpoint's model is
            rebuilt as it trained.
    """
    if net not in NETS:
        raise ValueError(f'unknown --net {net!r}; expected one of {", ".join(NETS)}')
    kwargs = dict(pretrained=pretrained, class_agnostic=class_agnostic)
    if pretrained and weights is not None:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f'pretrained weights {weights} not found; download them (see README) or '
                                    f'train from scratch with --weights none')
        kwargs['model_path'] = weights
    if net == 'vgg16':
        from lib.model.faster_rcnn.vgg16 import vgg16
        model = vgg16(classes, **kwargs)
    else:
        from lib.model.faster_rcnn.resnet import resnet
        model = resnet(classes, int(net[3:]), **kwargs)
    if freeze_stem is not None:
        model.freeze_stem = bool(freeze_stem)
    try:
        model.create_architecture()
    except FileNotFoundError as e:
        raise FileNotFoundError(f'{e}\nWith trainval_net.py: --weights <file>, or --weights none to train from '
                                f'scratch (then set TRAIN.BN_TRAIN True and RESNET.FIXED_BLOCKS 0).') from None
    return model


def guess_net(state_dict):
    """Which --net produced a model state dict (None if unrecognisable).

    VGG16 has conv layers up to RCNN_base.28; ResNets keep layer3 at RCNN_base.6, whose block count and
    block type (bottleneck blocks have conv3) give the depth.
    """
    keys = state_dict.keys()
    if 'RCNN_base.28.weight' in keys:
        return 'vgg16'
    blocks = {k.split('.')[2] for k in keys if k.startswith('RCNN_base.6.')}
    if not blocks:
        return None
    bottleneck = 'RCNN_base.6.0.conv3.weight' in keys
    depth = {(False, 2): 'res18', (False, 6): 'res34', (True, 6): 'res50',
             (True, 23): 'res101', (True, 36): 'res152'}
    return depth.get((bottleneck, len(blocks)))


def load_model_weights(model, state_dict, net, path):
    """load_state_dict with a message naming the keys that do not fit and the --net that would fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f'{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})'
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(items):
            return ', '.join(items[:5]) + (f' ... ({len(items)} in all)' if len(items) > 5 else '')
        parts = []
        if missing:
            parts.append(f'missing keys: {few(missing)}')
        if unexpected:
            parts.append(f'unexpected keys: {few(unexpected)}')
        if shapes:
            parts.append(f'shape mismatches: {few(shapes)}')
        guess = guess_net(state_dict)
        hint = f' The checkpoint looks like a {guess} model: try --net {guess}.' if guess and guess != net else ''
        key = 'RCNN_cls_score.weight'
        if key in own and key in state_dict and state_dict[key].shape[0] != own[key].shape[0]:
            hint += (f' It scores {state_dict[key].shape[0]} classes (background included), this model '
                     f'{own[key].shape[0]}: it was trained on another class list.')
        raise ValueError(f'{path} does not fit --net {net}: ' + '; '.join(parts) + '.' + hint)
    model.load_state_dict(state_dict)
