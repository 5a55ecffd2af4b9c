"""Python face of the compiled faster_rcnn operators: NMS, max RoI pooling and RoIAlign.

Importing this package loads lib/model/_C*.so; ImportError says how to build it when it is missing.
"""
from lib.model.roi_layers._ext import built_with_cuda
from lib.model.roi_layers import _fake  # noqa: F401  (shape functions for torch.compile)
from lib.model.roi_layers.nms import batched_nms, batched_nms_padded, nms, nms_padded
from lib.model.roi_layers.roi_align import ROIAlign, roi_align
from lib.model.roi_layers.roi_pool import ROIPool, roi_pool

__all__ = ['built_with_cuda', 'nms', 'nms_padded', 'batched_nms', 'batched_nms_padded', 'ROIPool', 'roi_pool',
           'ROIAlign', 'roi_align']
