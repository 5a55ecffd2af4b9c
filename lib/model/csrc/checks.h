// Input validation shared by the CPU and CUDA kernels of the faster_rcnn ops: every message says what was
// expected and what was given, so a caller can fix the call without reading the kernel.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <type_traits>

namespace faster_rcnn {

// The messages are built here as strings, not by TORCH_CHECK, which streams its arguments into an
// std::ostringstream. A stream formats numbers through the locale facets of its C++ runtime (std::num_put), and
// where the process holds two runtimes the facet is not found: on a lent H100 (torch built by one GCC toolchain,
// this extension by another) every message with a number or a shape crashed the process, and with the
// extension linked with -static-libstdc++ the numbers vanish from the messages (tests/model/roi_layers/
// test_cxx_runtime.py). std::to_string and snprintf take no locale. Numbers print as an ostream prints them.
namespace detail {

template <typename T>
inline constexpr bool kUnsupported = false;

template <typename T>
void append(std::string& s, const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    s += v ? "true" : "false";
  } else if constexpr (std::is_integral_v<T>) {
    s += std::to_string(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));  // an ostream's default: 6 significant digits
    s += buf;
  } else if constexpr (std::is_convertible_v<const T&, const char*> || std::is_same_v<T, std::string>) {
    s += v;
  } else if constexpr (std::is_same_v<T, at::ScalarType>) {
    s += c10::toString(v);
  } else if constexpr (std::is_same_v<T, c10::Device>) {
    s += v.str();
  } else if constexpr (std::is_same_v<T, at::IntArrayRef>) {
    s += '[';
    for (size_t i = 0; i < v.size(); ++i) {
      s += i ? ", " : "";
      s += std::to_string(v[i]);
    }
    s += ']';
  } else {
    static_assert(kUnsupported<T>, "FRCNN_CHECK formats strings, numbers, dtypes, devices and shapes");
  }
}

}  // namespace detail

template <typename... Args>
std::string check_message(const Args&... args) {
  std::string s;
  (detail::append(s, args), ...);
  return s;
}

// TORCH_CHECK with the message built by check_message, only when the check fails. For use inside namespace
// faster_rcnn (the CUDA emulation of the tests compiles these sources in a namespace of its own).
#define FRCNN_CHECK(cond, ...) TORCH_CHECK((cond), check_message(__VA_ARGS__))

inline void check_nms_inputs(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold,
                             const char* op) {
  FRCNN_CHECK(dets.dim() == 2 && dets.size(1) == 4, op,
              ": expected dets of shape [N, 4] (x1, y1, x2, y2), got ", dets.sizes());
  FRCNN_CHECK(scores.dim() == 1 && scores.size(0) == dets.size(0), op, ": expected scores of shape [N] = [",
              dets.size(0), "] to match dets, got ", scores.sizes());
  FRCNN_CHECK(dets.device() == scores.device(), op,
              ": expected dets and scores on the same device, got dets on ", dets.device(), " and scores on ",
              scores.device());
  FRCNN_CHECK(dets.scalar_type() == scores.scalar_type(), op,
              ": expected scores of the same dtype as dets (", dets.scalar_type(), "), got ",
              scores.scalar_type());
  FRCNN_CHECK(!std::isnan(iou_threshold), op, ": expected a number for iou_threshold, got NaN");
}

inline void check_pool_params(int64_t pooled_height, int64_t pooled_width, double spatial_scale,
                              const char* op) {
  FRCNN_CHECK(pooled_height > 0 && pooled_width > 0, op, ": expected a positive output size, got (",
              pooled_height, ", ", pooled_width, ")");
  FRCNN_CHECK(std::isfinite(spatial_scale) && spatial_scale > 0, op,
              ": expected a finite positive spatial_scale, got ", spatial_scale);
}

inline void check_roi_inputs(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                             int64_t pooled_width, double spatial_scale, const char* op) {
  FRCNN_CHECK(input.dim() == 4, op, ": expected input of shape [B, C, H, W] (4 dims), got ", input.dim(),
              " dims ", input.sizes());
  FRCNN_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": expected rois of shape [K, 5] (batch index, x1, y1, x2, y2), got ", rois.sizes());
  FRCNN_CHECK(input.device() == rois.device(), op,
              ": expected input and rois on the same device, got input on ", input.device(), " and rois on ",
              rois.device());
  FRCNN_CHECK(input.scalar_type() == rois.scalar_type(), op, ": expected rois of the same dtype as input (",
              input.scalar_type(), "), got ", rois.scalar_type());
  check_pool_params(pooled_height, pooled_width, spatial_scale, op);
}

// The backward ops get the forward's geometry back from Python; a mismatch means a caller bypassed the
// autograd Function, so say which argument disagrees.
inline void check_roi_backward_inputs(const at::Tensor& grad, const at::Tensor& rois, int64_t pooled_height,
                                      int64_t pooled_width, double spatial_scale, int64_t batch_size,
                                      int64_t channels, int64_t height, int64_t width, const char* op) {
  FRCNN_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": expected rois of shape [K, 5] (batch index, x1, y1, x2, y2), got ", rois.sizes());
  FRCNN_CHECK(grad.device() == rois.device(), op, ": expected grad and rois on the same device, got grad on ",
              grad.device(), " and rois on ", rois.device());
  FRCNN_CHECK(grad.scalar_type() == rois.scalar_type(), op, ": expected rois of the same dtype as grad (",
              grad.scalar_type(), "), got ", rois.scalar_type());
  check_pool_params(pooled_height, pooled_width, spatial_scale, op);
  FRCNN_CHECK(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op,
              ": expected a non-negative input shape, got [", batch_size, ", ", channels, ", ", height, ", ",
              width, "]");
  FRCNN_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
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
