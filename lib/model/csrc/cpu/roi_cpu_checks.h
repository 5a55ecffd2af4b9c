// Input checks shared by the CPU RoI kernels (roi_pool_cpu.cpp, roi_align_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "../checks.h"

namespace faster_rcnn {

// The CPU kernels are compiled for float32 and float64.
inline void check_cpu_roi_tensor(const at::Tensor& t, const char* what, const char* op) {
  FRCNN_CHECK(t.is_cpu(), op, ": expected CPU tensors, got ", what, " on ", t.device());
  FRCNN_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": expected float32 or float64 ", what, " on the CPU, got ", t.scalar_type());
}

// Returns the batch index of every roi, checked against the batch size so a bad roi cannot read out of bounds.
template <typename scalar_t>
std::vector<int64_t> roi_batch_indices(const scalar_t* rois, int64_t num_rois, int64_t batch_size,
                                       const char* op) {
  std::vector<int64_t> batch(num_rois);
  for (int64_t n = 0; n < num_rois; ++n) {
    const scalar_t b = rois[n * 5];
    FRCNN_CHECK(b >= 0 && b < batch_size, op, ": roi ", n, " has batch index ", b, ", expected one in [0, ",
                batch_size, ")");
    batch[n] = static_cast<int64_t>(b);
  }
  return batch;
}

}  // namespace faster_rcnn
