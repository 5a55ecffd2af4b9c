"""The `cuda_emu` fixture: the project's CUDA kernels run on the CPU by the emulator (emu_build.py, cuda_emu/)."""
import os

import pytest

import emu_build


@pytest.fixture(scope='session')
def cuda_emu():
    """torch.ops.faster_rcnn_cuda_emu: the CUDA kernels, run on CPU tensors by the emulator."""
    return emu_build.build(asan=os.environ.get(emu_build.ASAN_ENV) == '1')
