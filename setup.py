"""Builds lib/model/_C*.so, the faster_rcnn operators (NMS, ROIPool, ROIAlign) from lib/model/csrc.

CPU kernels are always compiled; CUDA kernels whenever a CUDA toolkit is found (or FORCE_CUDA=1), unless
FORCE_CPU=1. Either of these builds it:
    python setup.py build_ext --inplace
    pip install --no-build-isolation -e .
"""
import glob
import os

from setuptools import find_packages, setup

# torch.utils.cpp_extension settles CUDA_HOME when it is imported. Without CUDA_HOME it guesses from the nvcc
# on PATH, and an nvcc in /usr/local/bin makes it guess /usr/local, where libcudart is not, so prefer the
# conventional toolkit directory before importing it.
if not os.environ.get('CUDA_HOME') and not os.environ.get('CUDA_PATH') and os.path.isdir('/usr/local/cuda'):
    os.environ['CUDA_HOME'] = '/usr/local/cuda'

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join('lib', 'model', 'csrc')


def _flag(name):
    return os.environ.get(name, '0') == '1'


def _use_cuda():
    """Decides whether the CUDA kernels are compiled (FORCE_CPU=1 wins, FORCE_CUDA=1 insists)."""
    if _flag('FORCE_CPU'):
        return False
    toolkit = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, 'bin', 'nvcc'))
    if _flag('FORCE_CUDA'):
        if torch.version.cuda is None or CUDA_HOME is None:
            raise RuntimeError(f'FORCE_CUDA=1 needs a CUDA build of torch and a CUDA toolkit; got torch '
                               f'{torch.__version__} (CUDA {torch.version.cuda}) and CUDA_HOME={CUDA_HOME}')
        return True
    return toolkit and torch.version.cuda is not None


def _extension():
    sources = [os.path.join(CSRC, 'ops.cpp')] + sorted(glob.glob(os.path.join(CSRC, 'cpu', '*.cpp')))
    cxx_flags = ['-O3']
    if not _use_cuda():
        print('faster_rcnn ops: building the CPU kernels only')
        return CppExtension('lib.model._C', sources, extra_compile_args={'cxx': cxx_flags})
    if not torch.cuda.is_available() and not os.environ.get('TORCH_CUDA_ARCH_LIST'):
        # With no GPU to ask, torch would target every architecture it knows; Ampere and Hopper cover the
        # machines this project trains on and keep the build short; Hopper's PTX lets newer GPUs JIT-compile it.
        os.environ['TORCH_CUDA_ARCH_LIST'] = '8.0;9.0+PTX'
    print(f'faster_rcnn ops: building the CPU and CUDA kernels (CUDA_HOME={CUDA_HOME}, '
          f'TORCH_CUDA_ARCH_LIST={os.environ.get("TORCH_CUDA_ARCH_LIST", "the visible GPU")})')
    sources += sorted(glob.glob(os.path.join(CSRC, 'cuda', '*.cu')))
    return CUDAExtension(
        'lib.model._C', sources,
        define_macros=[('WITH_CUDA', None)],
        extra_compile_args={'cxx': cxx_flags, 'nvcc': ['-O3']})


setup(
    name='faster-rcnn-pytorch',
    version='1.0.0',
    description='A faithful, modern reimplementation of jwyang/faster-rcnn.pytorch',
    python_requires='>=3.9',
    packages=find_packages(include=['lib', 'lib.*']),
    ext_modules=[_extension()],
    cmdclass={'build_ext': BuildExtension},
    zip_safe=False,
)
