"""lib/model/utils/cuda_graph.py: the step functions (eagerly, on any device) and their CUDA-graph replay (on a
GPU: these tests are skipped without one, and tools/gpu_checks.sh runs them on the lent machines)."""
import contextlib
import gc
import weakref

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

pytest.importorskip('lib.model.roi_layers', reason='compiled ops not built', exc_type=ImportError)

from lib.model.faster_rcnn.resnet import resnet  # noqa: E402
from lib.model.utils.cuda_graph import GraphedStep, detect_step, train_step  # noqa: E402
from lib.model.utils.test_utils import detections_from_table, im_detect, postprocess_detections  # noqa: E402
from frcnn_helpers import CLASSES, make_batch  # noqa: E402

no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')


def build(device, train=True):
    torch.manual_seed(0)
    model = resnet(CLASSES, 18, pretrained=False)
    model.create_architecture()
    return model.to(device).train(train)


def sgd(model):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)


@pytest.mark.parametrize('amp', [None, torch.bfloat16])
def test_train_step_returns_its_losses_and_updates_the_model(tiny_cfg, amp):
    model = build('cpu')
    opt = sgd(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trained]
    for p in trained:  # a stale gradient must not reach the update
        p.grad = torch.full_like(p, 1e6)
    losses = train_step(model, opt, amp)(*make_batch())
    assert losses.shape == (5,) and losses.dtype == torch.float32 and torch.isfinite(losses).all()
    torch.testing.assert_close(losses[0], losses[1:].sum())
    assert not losses.requires_grad
    moved = [(p - b).abs().max().item() for p, b in zip(trained, before)]
    assert max(moved) > 0  # the optimizer stepped
    assert max(moved) < 1.0  # from the step's own gradients (lr 1e-3), not the 1e6 planted before
    assert all(p.grad is None or p.grad.abs().max() < 1e5 for p in trained)


def test_detect_step_gives_postprocess_detections(tiny_cfg):
    model = build('cpu', train=False)
    im_data, im_info, _, _ = make_batch(B=1)
    table = detect_step(model, thresh=0.0, nms_thresh=0.3, max_per_image=100)(im_data, im_info)
    assert table.shape == (100, 7)
    with torch.no_grad():
        scores, boxes = im_detect(model, im_data, im_info)
    expected = postprocess_detections(scores[0], boxes[0], 0.0, 0.3, 100, padded=False)
    got = detections_from_table(table.numpy(), len(CLASSES))
    assert len(got) == len(expected) and sum(len(d) for d in got) > 0
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-5)


def test_graphed_step_refuses_inputs_off_the_gpu():
    with pytest.raises(ValueError, match=r'CUDA graphs need CUDA tensors as inputs, got Tensor on cpu'):
        GraphedStep(lambda x: x * 2, (torch.ones(3),))


class Accumulate:
    """A step with state of its own, made in its first call (as an optimizer makes its momentum buffers in the
    warm-up): acc += x, returns acc * 1."""

    def __init__(self):
        self.acc = None

    def __call__(self, x):
        if self.acc is None:
            self.acc = torch.zeros_like(x)
        self.acc.add_(x)
        return self.acc * 1


class FakeStream:
    made = 0

    def __init__(self, device=None):
        FakeStream.made += 1

    def wait_stream(self, other):
        pass


@pytest.fixture
def fake_cuda_capture(monkeypatch):
    """GraphedStep without a GPU: fake CUDA tensors (FakeTensorMode, entered by the test), streams that do
    nothing, the capture a no-op; GraphedStep's shared warm-up streams are the test's own."""
    current = FakeStream()
    monkeypatch.setattr(FakeStream, 'made', 0)  # the streams GraphedStep makes
    monkeypatch.setattr(GraphedStep, 'warmup_streams', {})
    monkeypatch.setattr(torch.cuda, 'Stream', FakeStream)
    monkeypatch.setattr(torch.cuda, 'current_stream', lambda device=None: current)
    monkeypatch.setattr(torch.cuda, 'stream', lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, 'CUDAGraph', object)
    monkeypatch.setattr(torch.cuda, 'graph', lambda g: contextlib.nullcontext())


@pytest.mark.usefixtures('fake_cuda_capture')
def test_graphed_steps_on_one_device_share_one_warmup_stream():
    """PyTorch keeps a cuBLAS workspace (32 MiB on Hopper) for every stream cuBLAS ran on, for the life of the
    process: with a new warm-up stream per graph, each graph made left one more allocated (on the H200 of
    2026-11-28, tools/bench.py's replayed test rows, measured after four training graphs, peaked at 561 and 596
    MB per image; in a process of their own on an H100 they had peaked at 268 and 302)."""
    with FakeTensorMode():
        x = torch.ones(4, device='cuda')
        first = GraphedStep(lambda t: t * 2, (x,), warmup=1)
        made = FakeStream.made
        GraphedStep(lambda t: t + 1, (x,), warmup=1)
        GraphedStep(Accumulate(), (x,), warmup=2)
    assert made == 1 and FakeStream.made == 1  # the later graphs made no stream of their own
    assert list(GraphedStep.warmup_streams) == [x.device] and first.static_inputs[0].device == x.device


@pytest.mark.usefixtures('fake_cuda_capture')
def test_graphed_step_keeps_its_step_and_its_state_alive():
    """The graph writes to the step's own memory by address, so the step must live as long as the graph. On the
    2026-11-27 H100 every training graph of tools/bench.py crashed (an illegal memory access, or a segfault in
    replay()): its optimizer was held only by the step, and the benchmark's empty_cache() before timing handed
    the freed momentum buffers back to the driver. Here without a GPU: fake CUDA tensors, the capture a no-op."""
    with FakeTensorMode():
        step = Accumulate()
        graphed = GraphedStep(step, (torch.ones(4, device='cuda'),), warmup=2)
    alive = weakref.ref(step)
    state = weakref.ref(step.acc)
    del step
    gc.collect()
    assert alive() is not None and state() is not None
    del graphed
    gc.collect()
    assert alive() is None  # held by the graphed step, not leaked


@pytest.mark.cuda
@no_cuda
def test_graphed_step_state_survives_empty_cache():
    """The crash above on a GPU: the step's state made in the warm-up, the cache emptied after the capture (as
    tools/bench.py does before timing), then replays that must go on from that state."""
    x = torch.ones(1000, device='cuda')
    graphed = GraphedStep(Accumulate(), (x,), warmup=1)  # the warm-up leaves acc = 1; the capture runs nothing
    gc.collect()
    torch.cuda.empty_cache()
    others = [torch.full((1000,), 7.0, device='cuda') for _ in range(8)]  # allocations after the capture
    sums = [graphed(x)[0].item() for _ in range(3)]
    assert sums == [2.0, 3.0, 4.0]
    assert all(bool((o == 7).all()) for o in others)


@pytest.mark.cuda
@no_cuda
@pytest.mark.parametrize('amp', [None, torch.bfloat16])
@pytest.mark.usefixtures('tiny_cfg')
def test_graphed_detect_step_replays_the_eager_detections(amp):
    model = build('cuda', train=False)
    fn = detect_step(model, 0.0, 0.3, 100, amp)
    first, _, _, _ = make_batch(B=1)
    second = torch.randn_like(first)
    im_info = torch.tensor([[first.shape[2], first.shape[3], 1.0]])
    graphed = GraphedStep(fn, (first.cuda(), im_info.cuda()))
    for im in (second, first):  # new inputs are copied into the captured ones
        replayed = graphed(im.cuda(), im_info.cuda()).clone()
        eager = fn(im.cuda(), im_info.cuda())
        torch.testing.assert_close(replayed, eager, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match=r'input 0 must keep the captured \(1, 3, 96, 128\)'):
        graphed(torch.zeros(1, 3, 64, 64, device='cuda'), im_info.cuda())


@pytest.mark.cuda
@no_cuda
@pytest.mark.usefixtures('tiny_cfg')
def test_graphed_train_step_trains():
    model = build('cuda')
    batch = [t.cuda() for t in make_batch()]
    graphed = GraphedStep(train_step(model, sgd(model)), batch)  # the optimizer is held by the step alone
    gc.collect()
    torch.cuda.empty_cache()  # as tools/bench.py before timing: freed memory goes back to the driver
    trained = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trained]
    history = []
    for _ in range(20):
        losses = graphed(*batch)
        history.append(losses.clone())
    assert losses is graphed.static_outputs  # the same tensor, overwritten by every replay
    history = torch.stack(history).cpu()
    assert torch.isfinite(history).all() and len(set(history[:, 0].tolist())) > 1  # not a frozen replay
    assert history[-5:, 0].mean() < history[:5, 0].mean()  # twenty steps on one batch: the loss goes down
    assert any((p - b).abs().max() > 0 for p, b in zip(trained, before))
