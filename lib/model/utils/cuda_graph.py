"""A fixed-shape step replayed as one CUDA graph, which takes the host's per-op dispatch out of the step.

A training step of this detector makes no host synchronisation, and for one input size its shapes are fixed
(the original's padded proposals and fixed roi counts), so the forward, the backward and the optimizer step can
be captured once with ``torch.cuda.graph`` and replayed: each replay launches the whole step at once, and the
host no longer spends its ~25 us per op (docs/BENCHMARKS.md: at 600 x 1000 a step waits on the host). The same
holds for the test forward up to ``detection_table``.

This pays only while the input size stays the same: the benchmark's fixed images, or a camera's frames. The
training and test scripts resize each image to its own aspect ratio (the original's loader), so they run eagerly.

    step = GraphedStep(train_step(model, optimizer), (im_data, im_info, gt_boxes, num_boxes))
    for batch in batches:            # same shapes, dtypes and device as the example inputs
        losses = step(*batch)        # the static output tensors, overwritten by the next call

What a captured step must not do: synchronise with the host (.item(), .cpu(), nonzero, data-dependent shapes;
tests/model/faster_rcnn/test_fake_cuda.py checks the model for these), copy from host memory that changes, or
branch in Python on values that change between calls (the branch taken at capture is replayed). Random draws
on the default CUDA generator are fine: each replay draws new numbers.
"""
import contextlib

import torch


def _autocast(device_type, amp_dtype):
    """autocast to amp_dtype without its weight cache, which a graph cannot keep; nothing for amp_dtype None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=amp_dtype, cache_enabled=False)


class GraphedStep:
    """``fn(*inputs)`` captured in a CUDA graph; calling the object copies new inputs into the captured ones and
    replays it.

    Args:
        fn: the step; takes CUDA tensors shaped like ``example_inputs`` and returns a tensor or a tuple/list of
            tensors. Kept as ``self.fn`` as long as the graph: the graph uses the memory of what fn holds.
        example_inputs: CUDA tensors; copies of them become the static inputs the graph reads.
        warmup: eager calls before the capture, on a side stream (cudnn picks its algorithms, the optimizer
            makes its state, the allocator warms up); they are real steps (a training step updates the model).
    """

    # device -> the side stream of every warm-up on that device. PyTorch keeps a cuBLAS workspace (32 MiB on
    # Hopper) for each stream cuBLAS has run on, allocated until the process ends; a new stream per graph left
    # one more of them allocated for every graph made (tools/bench.py's graph rows on the H200 of 2026-11-28).
    # torch.cuda.graph shares its capture stream the same way.
    warmup_streams = {}

    def __init__(self, fn, example_inputs, warmup=3):
        if not example_inputs or not all(isinstance(t, torch.Tensor) and t.is_cuda for t in example_inputs):
            raise ValueError('GraphedStep: CUDA graphs need CUDA tensors as inputs, got '
                             + ', '.join(f'{type(t).__name__} on {getattr(t, "device", "-")}'
                                         for t in example_inputs))
        self.static_inputs = tuple(t.clone() for t in example_inputs)
        device = example_inputs[0].device
        side = GraphedStep.warmup_streams.get(device)
        if side is None:
            side = GraphedStep.warmup_streams[device] = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        # The graph reads and writes memory by address, also memory that fn's objects own outside the graph's
        # pool: the optimizer's momentum buffers, made in the warm-up above. Kept here, they live as long as the
        # graph; dropped, they go back to the allocator, and after torch.cuda.empty_cache() a replay writes to
        # freed memory (on the H100: an illegal memory access, or a segfault in replay()).
        self.fn = fn
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_outputs = fn(*self.static_inputs)

    def __call__(self, *inputs):
        if len(inputs) != len(self.static_inputs):
            raise ValueError(f'GraphedStep: expected {len(self.static_inputs)} inputs, got {len(inputs)}')
        for i, (dst, src) in enumerate(zip(self.static_inputs, inputs)):
            if src.shape != dst.shape or src.dtype != dst.dtype:
                raise ValueError(f'GraphedStep: input {i} must keep the captured {tuple(dst.shape)} {dst.dtype}, '
                                 f'got {tuple(src.shape)} {src.dtype}')
            if src.data_ptr() != dst.data_ptr():
                dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.static_outputs


def train_step(model, optimizer, amp_dtype=None):
    """One training step of a _fasterRCNN as a function for GraphedStep (or eager use):
    step(im_data, im_info, gt_boxes, num_boxes) -> [5] losses (total, rpn_cls, rpn_box, rcnn_cls, rcnn_box),
    after the backward and the optimizer step.

    The gradients are set to None before each backward, so the backward writes them rather than adding to them:
    in a graph, every replay then starts from fresh gradients, in the same memory. amp_dtype (torch.bfloat16 or
    torch.float16) runs the forward under autocast (_autocast)."""
    device_type = next(model.parameters()).device.type

    def step(im_data, im_info, gt_boxes, num_boxes):
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device_type, amp_dtype):
            out = model(im_data, im_info, gt_boxes, num_boxes)
            parts = torch.stack([out.rpn_loss_cls.mean(), out.rpn_loss_bbox.mean(), out.RCNN_loss_cls.mean(),
                                 out.RCNN_loss_bbox.mean()]).float()
        loss = parts.sum()
        loss.backward()
        optimizer.step()
        return torch.cat([loss.detach().view(1), parts.detach()])

    return step


def detect_step(model, thresh=0.0, nms_thresh=0.3, max_per_image=100, amp_dtype=None):
    """The test forward of one image as a function for GraphedStep (or eager use): step(im_data [1, 3, H, W],
    im_info [1, 3]) -> the [max_per_image, 7] detection table of lib.model.utils.test_utils.detection_table
    (x1, y1, x2, y2, score, class - 1, kept), on the device; one copy to the host after the step reads it."""
    from lib.model.utils.test_utils import detection_table, im_detect
    device_type = next(model.parameters()).device.type

    @torch.no_grad()
    def step(im_data, im_info):
        with _autocast(device_type, amp_dtype):
            scores, boxes = im_detect(model, im_data, im_info)
        return detection_table(scores[0], boxes[0], thresh, nms_thresh, max_per_image)

    return step
