"""lib/model/utils/cuda_graph.py: the step functions (eagerly, on any device) and their CUDA-graph replay (on a
GPU: these tests are skipped without one, and tools/gpu_checks.sh runs them on the lent machines)."""
import numpy as np
import pytest
import torch

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
    graphed = GraphedStep(train_step(model, sgd(model)), batch)
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
