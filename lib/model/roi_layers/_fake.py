"""Shape-only (fake) kernels of the faster_rcnn ops, so torch.compile can trace through them."""
import torch

from lib.model.roi_layers._ext import _C  # noqa: F401  (the ops must exist before fakes are registered)


@torch.library.register_fake('faster_rcnn::nms')
def _nms_fake(dets, scores, iou_threshold):
    num_kept = torch.library.get_ctx().new_dynamic_size()
    return dets.new_empty(num_kept, dtype=torch.long)


@torch.library.register_fake('faster_rcnn::nms_padded')
def _nms_padded_fake(dets, scores, iou_threshold, max_out):
    return dets.new_empty(max_out, dtype=torch.long), dets.new_empty((), dtype=torch.long)


@torch.library.register_fake('faster_rcnn::roi_pool_forward')
def _roi_pool_forward_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    shape = (rois.size(0), input.size(1), pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@torch.library.register_fake('faster_rcnn::roi_pool_backward')
def _roi_pool_backward_fake(grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size,
                            channels, height, width):
    return grad.new_empty((batch_size, channels, height, width))


@torch.library.register_fake('faster_rcnn::roi_align_forward')
def _roi_align_forward_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    return input.new_empty((rois.size(0), input.size(1), pooled_height, pooled_width))


@torch.library.register_fake('faster_rcnn::roi_align_backward')
def _roi_align_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                             height, width, sampling_ratio):
    return grad.new_empty((batch_size, channels, height, width))
