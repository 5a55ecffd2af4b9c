// Input validation shared by the CPU and CUDA kernels of the faster_rcnn ops: every message says what was
// expected and what was given, so a caller can fix the call without reading the kernel.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

namespace faster_rcnn {

inline void check_nms_inputs(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold,
                             const char* op) {
  TORCH_CHECK(dets.dim() == 2 && dets.size(1) == 4, op,
              ": expected dets of shape [N, 4] (x1, y1, x2, y2), got ", dets.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == dets.size(0), op, ": expected scores of shape [N] = [",
              dets.size(0), "] to match dets, got ", scores.sizes());
  TORCH_CHECK(dets.device() == scores.device(), op,
              ": expected dets and scores on the same device, got dets on ", dets.device(), " and scores on ",
              scores.device());
  TORCH_CHECK(dets.scalar_type() == scores.scalar_type(), op,
              ": expected scores of the same dtype as dets (", dets.scalar_type(), "), got ",
              scores.scalar_type());
  TORCH_CHECK(!std::isnan(iou_threshold), op, ": expected a number for iou_threshold, got NaN");
}

inline void check_pool_params(int64_t pooled_height, int64_t pooled_width, double spatial_scale,
                              const char* op) {
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op, ": expected a positive output size, got (",
              pooled_height, ", ", pooled_width, ")");
  TORCH_CHECK(std::isfinite(spatial_scale) && spatial_scale > 0, op,
              ": expected a finite positive spatial_scale, got ", spatial_scale);
}

inline void check_roi_inputs(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                             int64_t pooled_width, double spatial_scale, const char* op) {
  TORCH_CHECK(input.dim() == 4, op, ": expected input of shape [B, C, H, W] (4 dims), got ", input.dim(),
              " dims ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": expected rois of shape [K, 5] (batch index, x1, y1, x2, y2), got ", rois.sizes());
  TORCH_CHECK(input.device() == rois.device(), op,
              ": expected input and rois on the same device, got input on ", input.device(), " and rois on ",
              rois.device());
  TORCH_CHECK(input.scalar_type() == rois.scalar_type(), op, ": expected rois of the same dtype as input (",
              input.scalar_type(), "), got ", rois.scalar_type());
  check_pool_params(pooled_height, pooled_width, spatial_scale, op);
}

// The backward ops get the forward's geometry back from Python; a mismatch means a caller bypassed the
// autograd Function, so say which argument disagrees.
inline void check_roi_backward_inputs(const at::Tensor& grad, const at::Tensor& rois, int64_t pooled_height,
                                      int64_t pooled_width, double spatial_scale, int64_t batch_size,
                                      int64_t channels, int64_t height, int64_t width, const char* op) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": expected rois of shape [K, 5] (batch index, x1, y1, x2, y2), got ", rois.sizes());
  TORCH_CHECK(grad.device() == rois.device(), op, ": expected grad and rois on the same device, got grad on ",
              grad.device(), " and rois on ", rois.device());
  TORCH_CHECK(grad.scalar_type() == rois.scalar_type(), op, ": expected rois of the same dtype as grad (",
              grad.scalar_type(), "), got ", rois.scalar_type());
  check_pool_params(pooled_height, pooled_width, spatial_scale, op);
  TORCH_CHECK(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op,
              ": expected a non-negative input shape, got [", batch_size, ", ", channels, ", ", height, ", ",
              width, "]");
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": expected grad of shape [", rois.size(0), ", ", channels, ", ", pooled_height, ", ",
              pooled_width, "], got ", grad.sizes());
}

// Largest float f with (x > f) == (double(x) > t) for every float x: lets float kernels compare a float IoU
// with the double threshold exactly as a double comparison would, without converting every IoU.
inline float float_threshold(double t) {
  float f = static_cast<float>(t);
  if (static_cast<double>(f) > t) {
    f = std::nextafter(f, -INFINITY);
  }
  return f;
}

}  // namespace faster_rcnn
