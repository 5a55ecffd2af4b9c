"""The compiled extension: it loads, registers every op, reports its CUDA kernels truthfully, and says how
to build it when it is missing."""
import sys

import pytest
import torch

from lib.model import roi_layers
from lib.model.roi_layers import _ext

OPS = ['nms', 'nms_padded', 'roi_pool_forward', 'roi_pool_backward', 'roi_align_forward', 'roi_align_backward']


def test_every_op_has_a_cpu_and_a_cuda_kernel():
    # In a CPU-only build the CUDA kernel is the stub that explains the build lacks CUDA.
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f'faster_rcnn::{name}', 'CPU'), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f'faster_rcnn::{name}', 'CUDA'), name


def test_built_with_cuda_matches_the_binary():
    flag = roi_layers.built_with_cuda()
    assert isinstance(flag, bool)
    # nvcc puts the device code in an .nv_fatbin section; a CPU-only build has none.
    with open(_ext._C.__file__, 'rb') as f:
        has_device_code = b'.nv_fatbin' in f.read()
    assert flag == has_device_code


def test_cpu_only_build_names_the_missing_cuda():
    if roi_layers.built_with_cuda():
        pytest.skip('this build has CUDA kernels')
    # Send CPU tensors to the CUDA kernel through the dispatcher: this is where CUDA tensors would land.
    cuda_keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    with pytest.raises(RuntimeError, match='faster_rcnn::nms: got CUDA tensors, but the faster_rcnn extension '
                                           'was built without CUDA'):
        torch.ops.faster_rcnn.nms.default.redispatch(cuda_keys, torch.zeros(1, 4), torch.zeros(1), 0.5)


def test_missing_extension_says_how_to_build(monkeypatch):
    monkeypatch.setitem(sys.modules, _ext.EXTENSION, None)  # makes the import fail as if the .so were absent
    with pytest.raises(ImportError) as info:
        _ext.load()
    message = str(info.value)
    assert 'python setup.py build_ext --inplace' in message
    assert 'pip install --no-build-isolation -e .' in message
    assert _ext.EXTENSION in message


def test_wrong_module_name_is_an_import_error_too():
    with pytest.raises(ImportError, match='lib.model._C_missing is not built'):
        _ext.load('lib.model._C_missing')
