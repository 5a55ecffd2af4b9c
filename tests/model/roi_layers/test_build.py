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


def op_arguments():
    """A valid CPU call of every op: (name, args)."""
    x = torch.randn(2, 3, 10, 12)
    rois = torch.tensor([[0, 1.0, 2.0, 30.0, 20.0], [1, 5.0, 5.0, 40.0, 39.0]])
    dets = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    grad = torch.randn(2, 3, 2, 2)
    argmax = torch.ops.faster_rcnn.roi_pool_forward(x, rois, 0.25, 2, 2)[1]
    return [('nms', (dets, scores, 0.5)), ('nms_padded', (dets, scores, 0.5, 2)),
            ('roi_pool_forward', (x, rois, 0.25, 2, 2)),
            ('roi_pool_backward', (grad, rois, argmax, 0.25, 2, 2, 2, 3, 10, 12)),
            ('roi_align_forward', (x, rois, 0.25, 2, 2, 2)),
            ('roi_align_backward', (grad, rois, 0.25, 2, 2, 2, 3, 10, 12, 2))]


@pytest.mark.parametrize('name,args', op_arguments(), ids=OPS)
def test_cuda_kernel_refuses_what_it_cannot_run(name, args):
    # Send CPU tensors to the CUDA kernel through the dispatcher. A CPU-only build must say it lacks CUDA
    # (that is where CUDA tensors would land); a CUDA build must refuse CPU tensors before touching a GPU.
    cuda_keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    expected = 'expected CUDA tensors' if roi_layers.built_with_cuda() else (
        f'faster_rcnn::{name}: got CUDA tensors, but the faster_rcnn extension was built without CUDA')
    with pytest.raises(RuntimeError, match=expected):
        getattr(torch.ops.faster_rcnn, name).default.redispatch(cuda_keys, *args)


@pytest.mark.parametrize('name,args', op_arguments(), ids=OPS)
def test_schema_and_fake_kernels_pass_opcheck(name, args):
    # Checks the schema against the kernel and that the fake (shape-only) kernels used by torch.compile agree
    # with the real ones.
    results = torch.library.opcheck(getattr(torch.ops.faster_rcnn, name).default, args)
    assert set(results.values()) == {'SUCCESS'}, results


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
