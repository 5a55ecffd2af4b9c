"""NMS against a pure-PyTorch greedy reference and torchvision, with the original's pixel-inclusive IoU."""
import pytest
import torch
import torchvision

from lib.model.roi_layers import batched_nms, batched_nms_padded, nms, nms_padded


def nms_reference(dets, scores, thresh):
    """Greedy NMS in plain torch: stable descending order, suppress when IoU (in dets' dtype) > thresh."""
    order = torch.sort(scores, stable=True, descending=True).indices.tolist()
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    keep, suppressed = [], set()
    for pos, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[pos + 1:]:
            if j in suppressed:
                continue
            w = (torch.minimum(x2[i], x2[j]) - torch.maximum(x1[i], x1[j]) + 1).clamp(min=0)
            h = (torch.minimum(y2[i], y2[j]) - torch.maximum(y1[i], y1[j]) + 1).clamp(min=0)
            inter = w * h
            if (inter / (areas[i] + areas[j] - inter)).item() > thresh:
                suppressed.add(j)
    return torch.tensor(keep, dtype=torch.long)


def random_boxes(n, seed, dtype=torch.float32, integer=False):
    """n clustered boxes in a 200 x 300 image (clusters make suppression frequent) and their scores."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(max(n // 8, 1), 2, generator=g) * torch.tensor([300.0, 200.0])
    c = centers[torch.randint(len(centers), (n,), generator=g)] + torch.randn(n, 2, generator=g) * 6
    wh = torch.rand(n, 2, generator=g) * 60 + 4
    boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
    if integer:
        boxes = boxes.round()
    scores = torch.rand(n, generator=g)
    return boxes.to(dtype), scores.to(dtype)


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('thresh', [0.3, 0.5, 0.7])
def test_nms_matches_reference_and_torchvision(device, seed, thresh):
    boxes, scores = random_boxes(120, seed)
    keep = nms(boxes.to(device), scores.to(device), thresh)
    assert keep.device.type == device.type and keep.dtype == torch.long
    expected = nms_reference(boxes, scores, thresh)
    assert 0 < len(expected) < len(boxes)  # the case must exercise both keeping and suppressing
    torch.testing.assert_close(keep.cpu(), expected, rtol=0, atol=0)
    shifted = boxes.clone()
    shifted[:, 2:] += 1  # torchvision's boxes are not pixel-inclusive
    torch.testing.assert_close(keep.cpu(), torchvision.ops.nms(shifted, scores, thresh), rtol=0, atol=0)


def test_nms_float64(device):
    boxes, scores = random_boxes(80, 7, dtype=torch.float64)
    keep = nms(boxes.to(device), scores.to(device), 0.6)
    torch.testing.assert_close(keep.cpu(), nms_reference(boxes, scores, 0.6), rtol=0, atol=0)


def test_iou_exactly_at_threshold_keeps_both_and_just_above_suppresses(device):
    # a is 10 x 10 pixels (inclusive corners), b covers its top 5 rows: IoU = 50 / 100 = 0.5 exactly.
    dets = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 4.0]], device=device)
    scores = torch.tensor([0.9, 0.8], device=device)
    assert nms(dets, scores, 0.5).tolist() == [0, 1]
    # Just above: b covers 5.25 rows -> IoU 0.525 > 0.5.
    dets[1, 3] = 4.25
    assert nms(dets, scores, 0.5).tolist() == [0]
    assert nms(dets, scores, 0.525).tolist() == [0, 1]


def test_pixel_inclusive_touching_boxes_overlap(device):
    # [0, 9] and [9, 18] share pixel column 9: IoU = 10 / 190 > 0.05 with inclusive corners, 0 without.
    dets = torch.tensor([[0.0, 0.0, 9.0, 9.0], [9.0, 0.0, 18.0, 9.0]], device=device)
    scores = torch.tensor([0.5, 0.6], device=device)
    assert nms(dets, scores, 0.05).tolist() == [1]
    assert nms(dets, scores, 0.06).tolist() == [1, 0]


def test_identical_boxes(device):
    dets = torch.tensor([[5.0, 5.0, 20.0, 30.0]] * 4, device=device)
    scores = torch.tensor([0.2, 0.9, 0.5, 0.1], device=device)
    assert nms(dets, scores, 0.7).tolist() == [1]
    # IoU 1 is not greater than 1: nothing is suppressed, all come back by decreasing score.
    assert nms(dets, scores, 1.0).tolist() == [1, 2, 0, 3]


def test_tied_scores_keep_input_order(device):
    dets = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0], [0.0, 0.0, 10.0, 10.0],
                         [50.0, 50.0, 60.0, 60.0], [1.0, 1.0, 10.0, 10.0]], device=device)
    scores = torch.full((5,), 0.5, device=device)
    # Box 0 wins its cluster (2 and 4 overlap it) because it comes first; the rest keep input order.
    assert nms(dets, scores, 0.5).tolist() == [0, 1, 3]


def test_empty_input(device):
    keep = nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.long and keep.device.type == device.type
    padded, count = nms_padded(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), 0.5, 3)
    assert padded.tolist() == [-1, -1, -1] and count.item() == 0


def test_non_contiguous_inputs(device):
    boxes, scores = random_boxes(64, 3)
    dets_t = boxes.t().contiguous().to(device).t()  # [N, 4] view with strides (1, N)
    scores_s = torch.stack([scores, torch.zeros_like(scores)], 1).to(device)[:, 0]  # stride 2
    assert not dets_t.is_contiguous() and not scores_s.is_contiguous()
    torch.testing.assert_close(nms(dets_t, scores_s, 0.5).cpu(), nms_reference(boxes, scores, 0.5),
                               rtol=0, atol=0)


@pytest.mark.parametrize('max_out', [0, 5, 1000])
def test_nms_padded_is_a_padded_prefix_of_nms(device, max_out):
    boxes, scores = random_boxes(150, 11)
    boxes, scores = boxes.to(device), scores.to(device)
    full = nms(boxes, scores, 0.7)
    padded, count = nms_padded(boxes, scores, 0.7, max_out)
    k = min(max_out, len(full))
    assert padded.shape == (max_out,) and padded.dtype == torch.long and count.dim() == 0
    assert count.item() == k
    assert padded[:k].tolist() == full[:k].tolist()
    assert (padded[k:] == -1).all()


@pytest.mark.parametrize('seed', range(3))
def test_batched_nms_equals_nms_per_category(device, seed):
    # Integer coordinates keep the shifted boxes exact in float32, so the IoUs match the per-class ones.
    boxes, scores = random_boxes(150, seed, integer=True)
    idxs = torch.randint(4, (150,), generator=torch.Generator().manual_seed(seed))
    keep = batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.4).cpu()
    per_class = torch.cat([torch.nonzero(idxs == c).flatten()[nms_reference(boxes[idxs == c], scores[idxs == c],
                                                                            0.4)] for c in range(4)])
    expected = per_class[torch.sort(scores[per_class], stable=True, descending=True).indices]
    assert keep.tolist() == expected.tolist()
    assert len(keep) > len(nms_reference(boxes, scores, 0.4))  # categories really were kept apart


@pytest.mark.parametrize('max_out', [0, 10, 400])
def test_batched_nms_padded_is_batched_nms_cut_and_padded(device, max_out):
    boxes, scores = random_boxes(150, 3, integer=True)
    idxs = torch.randint(4, (150,), generator=torch.Generator().manual_seed(3))
    expected = batched_nms(boxes, scores, idxs, 0.4)
    keep, num_kept = batched_nms_padded(boxes.to(device), scores.to(device), idxs.to(device), 0.4, max_out)
    k = min(max_out, len(expected))
    assert keep.device.type == num_kept.device.type == device.type and keep.shape == (max_out,)
    assert int(num_kept) == k and keep.cpu().tolist() == expected[:k].tolist() + [-1] * (max_out - k)


def test_batched_nms_padded_leaves_the_invalid_rows_out_of_the_decisions(device):
    """Rows outside valid scoring -inf: the valid rows keep what batched_nms keeps on them alone, first; the
    shift of the categories comes from the valid rows (a far-away invalid box changes nothing)."""
    boxes, scores = random_boxes(120, 4, integer=True)
    idxs = torch.randint(3, (120,), generator=torch.Generator().manual_seed(4))
    valid = torch.rand(120, generator=torch.Generator().manual_seed(5)) < 0.6
    boxes[~valid.nonzero()[0]] = torch.tensor([5000., 5000., 9000., 9000.])
    alone = torch.nonzero(valid).flatten()[batched_nms(boxes[valid], scores[valid], idxs[valid], 0.5)]
    ranked = torch.where(valid, scores, float('-inf'))
    keep, num_kept = batched_nms_padded(boxes.to(device), ranked.to(device), idxs.to(device), 0.5, 120,
                                        valid=valid.to(device))
    keep = keep.cpu()[:int(num_kept)]
    assert keep[:len(alone)].tolist() == alone.tolist() and not valid[keep[len(alone):]].any()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_batched_nms_on_half_boxes_shifts_in_float32(device, dtype):
    """80 classes of 1000-px boxes: shifted in half they would pass 65504 (inf) or round to tens of pixels."""
    boxes, scores = random_boxes(300, 0, integer=True)
    boxes = boxes * 1.5  # up to ~1000 px; integers and halves, exact in float16 and (below 256) in bfloat16
    boxes = boxes.to(dtype).float()  # the values the half tensor holds
    idxs = torch.randint(80, (300,), generator=torch.Generator().manual_seed(0))
    idxs[:2] = 79  # two identical boxes of the last class: one must go
    boxes[1] = boxes[0]
    keep = batched_nms(boxes.to(dtype).to(device), scores.to(dtype).to(device), idxs.to(device), 0.5).cpu()
    half_scores = scores.to(dtype).float()
    per_class = torch.cat([torch.nonzero(idxs == c).flatten()[nms_reference(boxes[idxs == c], half_scores[idxs == c],
                                                                            0.5)] for c in range(80)])
    per_class = per_class.sort().values  # ties in the rounded scores keep input order, as nms does
    expected = per_class[torch.sort(half_scores[per_class], stable=True, descending=True).indices]
    assert keep.tolist() == expected.tolist() and not {0, 1} <= set(keep.tolist())


def test_batched_nms_empty(device):
    keep = batched_nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device),
                       torch.zeros(0, dtype=torch.long, device=device), 0.5)
    assert keep.shape == (0,) and keep.device.type == device.type


def test_bad_inputs_name_expected_and_got(device):
    dets = torch.zeros(3, 4, device=device)
    scores = torch.zeros(3, device=device)
    with pytest.raises(RuntimeError, match=r'expected dets of shape \[N, 4\].*got \[3, 5\]'):
        nms(torch.zeros(3, 5, device=device), scores, 0.5)
    with pytest.raises(RuntimeError, match=r'expected scores of shape \[N\] = \[3\].*got \[4\]'):
        nms(dets, torch.zeros(4, device=device), 0.5)
    with pytest.raises(RuntimeError, match=r'expected scores of the same dtype as dets \(Float\), got Double'):
        nms(dets, scores.double(), 0.5)
    with pytest.raises(RuntimeError, match='expected max_out >= 0, got -1'):
        nms_padded(dets, scores, 0.5, -1)
    with pytest.raises(RuntimeError, match='iou_threshold, got NaN'):
        nms(dets, scores, float('nan'))


def test_cpu_rejects_integer_boxes():
    with pytest.raises(RuntimeError, match='expected float32 or float64 dets on the CPU, got Long'):
        nms(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long), 0.5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_device_mismatch():
    with pytest.raises(RuntimeError, match='expected dets and scores on the same device'):
        nms(torch.zeros(3, 4, device='cuda'), torch.zeros(3), 0.5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    # Many boxes span several 64-box mask words and the multi-block sweep.
    boxes, scores = random_boxes(3000, 5)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    # The CUDA kernel computes IoU in float32 from the low-precision values, like the CPU on their float copy.
    expected = nms(boxes.float(), scores.float(), 0.7)
    torch.testing.assert_close(nms(boxes.cuda(), scores.cuda(), 0.7).cpu(), expected, rtol=0, atol=0)
    padded, count = nms_padded(boxes.cuda(), scores.cuda(), 0.7, 500)
    assert count.item() == min(500, len(expected))
    assert padded[:count.item()].cpu().tolist() == expected[:500].tolist()
