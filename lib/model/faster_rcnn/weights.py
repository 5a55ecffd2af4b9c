"""Pretrained backbone files: where they are, which of the two formats they hold, and loading them.

Two formats are understood (see docs/MODEL.md):

* 'caffe': the original's caffe-converted files (resnet101_caffe.pth, vgg16_caffe.pth). The network expects
  BGR images on the 0..255 scale minus cfg.PIXEL_MEANS, and ResNet bottlenecks stride in their first 1x1 conv.
* 'pytorch': torchvision state dicts. The network expects RGB images on the 0..1 scale, minus
  cfg.PYTORCH_PIXEL_MEANS and divided by cfg.PYTORCH_PIXEL_STDS; ResNet bottlenecks stride in the 3x3 conv.

Both use torchvision's key names, so the keys cannot tell them apart. The rule, first match wins:
1. an explicit ``weight_format`` argument;
2. a metadata entry ``'__format__'`` in the file ('caffe' or 'pytorch'; ``tools/`` conversion scripts and
   users can add it with ``sd['__format__'] = 'pytorch'; torch.save(sd, path)``);
3. a file name containing 'caffe' (case-insensitive) -> 'caffe' (the original's file names);
4. otherwise 'pytorch'.
"""
import os
import os.path as osp

import torch

from lib.model.utils.config import cfg

WEIGHT_FORMATS = ('caffe', 'pytorch')
FORMAT_KEY = '__format__'


def default_model_path(name):
    """``<DATA_DIR>/pretrained_model/<name>_caffe.pth``, e.g. name 'resnet101' or 'vgg16' (the original's names)."""
    return osp.join(cfg.DATA_DIR, 'pretrained_model', f'{name}_caffe.pth')


def check_weight_format(fmt):
    """Return ``fmt`` if it is a known format, else raise ValueError."""
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; expected 'caffe' or 'pytorch'")
    return fmt


def load_state_dict_file(path, name='backbone'):
    """Load a state dict saved with torch.save (tensors only; a {'state_dict': ...} or {'model': ...} wrapper
    is unwrapped). Raises FileNotFoundError with instructions when the file is missing."""
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'pretrained {name} weights not found at {path!r}. Put the file there (data/pretrained_model/: the '
            f"original's caffe-converted {name}_caffe.pth, or a torchvision {name} state dict saved with "
            f'torch.save), pass model_path=..., or train from scratch with pretrained=False '
            f'(and TRAIN.BN_TRAIN True). See docs/MODEL.md.')
    sd = torch.load(path, map_location='cpu', weights_only=True)
    for wrapper in ('state_dict', 'model'):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            inner = dict(sd[wrapper])
            if FORMAT_KEY in sd and FORMAT_KEY not in inner:
                inner[FORMAT_KEY] = sd[FORMAT_KEY]
            sd = inner
    if not isinstance(sd, dict):
        raise ValueError(f'{path}: expected a state dict (a mapping of names to tensors), got {type(sd).__name__}')
    return sd


def detect_weight_format(state_dict, path=None):
    """'caffe' or 'pytorch' for a loaded state dict, by the rule in this module's docstring (steps 2-4)."""
    marker = state_dict.get(FORMAT_KEY) if isinstance(state_dict, dict) else None
    if marker is not None:
        if isinstance(marker, bytes):
            marker = marker.decode()
        if marker not in WEIGHT_FORMATS:
            raise ValueError(f"{path or 'state dict'}: {FORMAT_KEY} is {marker!r}; expected 'caffe' or 'pytorch'")
        return marker
    if path is not None and 'caffe' in osp.basename(os.fspath(path)).lower():
        return 'caffe'
    return 'pytorch'


def read_weight_format(path):
    """The format of the file at ``path``; lets a script set cfg.INPUT_FORMAT before it builds the data loader."""
    return detect_weight_format(load_state_dict_file(path), path)


def load_backbone(module, state_dict, path, ignore_prefixes=()):
    """Copy the matching tensors of ``state_dict`` into ``module``.

    Every parameter and buffer of ``module`` must be in the file except those under ``ignore_prefixes`` (the
    ImageNet classifier) and BatchNorm's num_batches_tracked; a missing key or a shape mismatch raises
    ValueError naming the file.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(tuple(ignore_prefixes))
               and not k.endswith('num_batches_tracked')]
    if missing:
        raise ValueError(f'{path}: {len(missing)} backbone tensors are missing from the file, e.g. '
                         f'{missing[:5]}; is it the right network and depth?')
    wanted = {}
    for k, v in own.items():
        if k not in state_dict or k.startswith(tuple(ignore_prefixes)):
            continue
        src = state_dict[k]
        if not torch.is_tensor(src) or src.shape != v.shape:
            got = tuple(src.shape) if torch.is_tensor(src) else type(src).__name__
            raise ValueError(f'{path}: {k} has shape {got}, the model expects {tuple(v.shape)}')
        wanted[k] = src
    module.load_state_dict(wanted, strict=False)
