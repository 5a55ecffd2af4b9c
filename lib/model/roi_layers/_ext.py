"""Loads the compiled faster_rcnn operators (lib/model/_C*.so) and says how to build them when missing."""
import importlib

import torch

EXTENSION = 'lib.model._C'
BUILD_HINT = ('build it from the repository root with `python setup.py build_ext --inplace` or '
              '`pip install --no-build-isolation -e .` (FORCE_CPU=1 for a CPU-only build)')


def load(name=EXTENSION):
    """Imports the extension module, which registers torch.ops.faster_rcnn.*; returns the module."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f'the faster_rcnn ops extension {name} is not built or does not load ({err}); '
                          f'{BUILD_HINT}') from err


_C = load()


def built_with_cuda():
    """True when the extension was compiled with its CUDA kernels (it may still run where no GPU is)."""
    return bool(torch.ops.faster_rcnn.built_with_cuda())
