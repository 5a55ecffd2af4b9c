"""The detector's CUDA code paths, traced with fake tensors: no GPU needed, and no host synchronisation allowed.

Under torch's FakeTensorMode a tensor can live on 'cuda' without a GPU: every op computes only shapes, dtypes
and devices. Whatever would make the host wait for the GPU cannot be answered there and raises: .item(),
bool(tensor) and .tolist() (DataDependentOutputException), nonzero and boolean-mask indexing, whose output size
depends on the data (DynamicOutputShapeException). Tensors mixed across devices raise as on a GPU. Copies from
the GPU to the host, which fake tensors allow, are recorded by HostTransfers. So these tests check on any machine
what the training hot path promises on a GPU (issue 7): the forward passes, the loss bookkeeping and the
gradient clipping run without one host synchronisation, in float32 and under bf16 autocast, in the
configuration the benchmark times (ResNet-101 and VGG16 at 600 x 1000, 12000/2000 proposals, 128 rois).

The backward pass cannot be traced this way: torch's autograd engine asks the CUDA driver for its device
threads. The CUDA kernels themselves are run by tests/model/roi_layers/test_cuda_emu.py.
"""
import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from frcnn_helpers import CLASSES, make_batch
from lib.model.faster_rcnn.resnet import resnet
from lib.model.faster_rcnn.vgg16 import vgg16
from lib.model.utils.config import cfg
from lib.model.utils.net_utils import clip_gradient
from lib.model.utils.test_utils import detection_table, im_detect
from lib.model.utils.train_utils import LossMeter


class HostTransfers(TorchDispatchMode):
    """Records the ops that copy between the host and the GPU: GPU to host (waits for the GPU), and host to GPU
    unless non_blocking (torch waits for the stream after a blocking host-to-GPU copy). 0-dim CPU tensors given
    to a CUDA op are scalars, not copies."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        to_host = any(t.device.type == 'cuda' for t in inputs) and any(t.device.type == 'cpu' for t in outputs)
        to_gpu = (any(t.device.type == 'cpu' and t.dim() > 0 for t in inputs)
                  and any(t.device.type == 'cuda' for t in outputs) and not (kwargs or {}).get('non_blocking'))
        if to_host or to_gpu:
            self.ops.append(f'{func} to {"host" if to_host else "GPU"}')
        return out


@contextlib.contextmanager
def fake_cuda():
    """Yields (to_cuda, transfers): to_cuda(tensor or module) gives its fake CUDA copy."""
    mode = FakeTensorMode()
    transfers = HostTransfers()

    def to_cuda(x):
        with torch.utils._python_dispatch._disable_current_modes():  # setting up is not the code under test
            with mode:
                if isinstance(x, torch.nn.Module):
                    return x._apply(lambda t: mode.from_tensor(t).to('cuda'))
                return mode.from_tensor(x).to('cuda')
    with mode, transfers:
        yield to_cuda, transfers


@contextlib.contextmanager
def cuda_autocast(enabled):
    """torch.autocast('cuda', torch.bfloat16), which turns itself off (with a warning) when torch sees no GPU:
    the same switches, set directly."""
    if not enabled:
        yield
        return
    was_enabled, was_dtype = torch.is_autocast_enabled('cuda'), torch.get_autocast_dtype('cuda')
    torch.set_autocast_enabled('cuda', True)
    torch.set_autocast_dtype('cuda', torch.bfloat16)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled('cuda', was_enabled)
        torch.set_autocast_dtype('cuda', was_dtype)


def build(net):
    """The benchmark's configuration (the defaults: 600 x 1000, 12000/2000 and 6000/300 proposals, 128 rois)."""
    cfg.CUDA = cfg.USE_GPU_NMS = True  # what training on a GPU sets
    torch.manual_seed(0)
    model = vgg16(CLASSES, pretrained=False) if net == 'vgg16' else resnet(CLASSES, 101, pretrained=False)
    model.create_architecture()
    return model


def test_the_harness_catches_what_would_wait_for_the_gpu():
    with fake_cuda() as (to_cuda, transfers):
        x = to_cuda(torch.rand(10))
        with pytest.raises(DataDependentOutputException):
            x.sum().item()
        with pytest.raises(DataDependentOutputException):
            bool((x > 0.5).any())
        with pytest.raises(DynamicOutputShapeException):
            x[x > 0.5]
        x.cpu()
        assert transfers.ops == ['aten._to_copy.default to host']
        transfers.ops.clear()
        x.new_tensor([1.0, 2.0])
        assert transfers.ops and transfers.ops[-1].endswith('to GPU')
        transfers.ops.clear()
        x * torch.tensor(2.0) + torch.full((10,), 3.0, device='cuda')  # a CPU scalar and a fill: no copies
        torch.ones(3).to('cuda', non_blocking=True)
        assert transfers.ops == []
        with pytest.raises(RuntimeError, match='Expected all tensors to be on the same device'):
            x + torch.ones(10)


@pytest.mark.parametrize('amp', [False, True], ids=['fp32', 'bf16'])
@pytest.mark.parametrize('net,mode', [('res101', 'align'), ('res101', 'pool'), ('res101', 'crop'),
                                      ('vgg16', 'align')])
def test_train_and_test_forward_on_cuda_never_wait_for_the_gpu(net, mode, amp):
    cfg.POOLING_MODE = mode
    model = build(net)
    im_data, im_info, gt_boxes, num_boxes = make_batch(B=2, H=600, W=1000)
    # torch has no shape function for cuDNN's grid sampler; without cuDNN, crop pooling uses the native one
    cudnn = torch.backends.cudnn.flags(enabled=False) if mode == 'crop' else contextlib.nullcontext()
    with fake_cuda() as (to_cuda, transfers), cudnn, cuda_autocast(amp):
        model = to_cuda(model)
        batch = [to_cuda(t) for t in (im_data, im_info, gt_boxes, num_boxes)]
        model.train()
        out = model(*batch)
        R = cfg.TRAIN.BATCH_SIZE
        assert out.rois.shape == (2, R, 5) and out.rois_label.shape == (2 * R,)
        assert out.bbox_pred.dtype == (torch.bfloat16 if amp else torch.float32)  # a Linear's output
        for loss in out[3:7]:
            assert loss.device.type == 'cuda' and loss.dim() == 0
        meter = LossMeter(torch.device('cuda'))
        losses = torch.stack([loss.float().mean() for loss in out[3:7]])
        meter.add(1, 0, losses, out.rois_label, torch.arange(2))
        assert meter.sums.device.type == 'cuda' and meter.first_bad.device.type == 'cuda'
        model.eval()
        with torch.no_grad():
            scores, boxes = im_detect(model, batch[0], batch[1])
        assert scores.shape == (2, cfg.TEST.RPN_POST_NMS_TOP_N, len(CLASSES)) and boxes.device.type == 'cuda'
        assert transfers.ops == []


def test_test_time_postprocessing_stays_on_the_device():
    """postprocess_detections' fixed-size way (the default on CUDA): the per-class threshold, NMS and top 100
    run without waiting for the GPU, and the detections reach the host in the one copy that follows."""
    R, C = cfg.TEST.RPN_POST_NMS_TOP_N, len(CLASSES)
    scores, boxes = torch.rand(R, C), torch.rand(R, 4 * C) * 500
    with fake_cuda() as (to_cuda, transfers):
        table = detection_table(to_cuda(scores), to_cuda(boxes), 0.05, 0.3, 100)
        assert table.shape == (100, 7) and table.device.type == 'cuda' and transfers.ops == []
        table.cpu()
        assert transfers.ops == ['aten._to_copy.default to host']


def test_the_graphed_test_step_never_waits_for_the_gpu():
    """The function tools/bench.py captures in a CUDA graph at test time (a capture fails on any host wait)."""
    from lib.model.utils.cuda_graph import detect_step
    cfg.POOLING_MODE = 'align'  # the benchmark's (the default, crop, has no fake cuDNN grid sampler)
    model = build('res101').eval()
    im_data, im_info, _, _ = make_batch(B=1, H=600, W=1000)
    with fake_cuda() as (to_cuda, transfers):
        table = detect_step(to_cuda(model), 0.0, 0.3, 100)(to_cuda(im_data), to_cuda(im_info))
        assert table.shape == (100, 7) and table.device.type == 'cuda' and transfers.ops == []


def test_gradient_clipping_stays_on_the_device():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with fake_cuda() as (to_cuda, transfers):
        model = to_cuda(model)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        norm = clip_gradient(model, 10.)
        assert norm.device.type == 'cuda' and transfers.ops == []
