// Small pieces shared by the CUDA kernels of the faster_rcnn ops.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>

#include "../checks.h"

namespace faster_rcnn {

constexpr int kThreadsPerBlock = 256;

inline unsigned int blocks_for(int64_t n) {
  // A grid-stride loop covers whatever the grid cap leaves out.
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreadsPerBlock - 1) / kThreadsPerBlock, 65535 * 8));
}

// Whether a grid-stride loop over total elements can use 32-bit indices without overflowing.
inline bool fits_int32(int64_t total) {
  return total <= std::numeric_limits<int32_t>::max() - int64_t(65535) * 8 * kThreadsPerBlock;
}

// Runs launch(int32_t{0}) when a grid-stride loop over total elements fits 32-bit indices (32-bit index math is
// several times cheaper than 64-bit division on the GPU), else launch(int64_t{0}); then checks the launch.
// launch is a generic lambda that takes the index type from its argument: using index_t = decltype(index_zero).
template <typename Launch>
inline void launch_with_index_type(int64_t total, const Launch& launch) {
  if (fits_int32(total)) {
    launch(int32_t{0});
  } else {
    launch(int64_t{0});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The grid-stride loop of every per-element kernel: for (index_t i = grid_start<index_t>(); i < total;
// i += grid_stride<index_t>()). The products are taken in index_t, as the launch chose it.
template <typename index_t>
__device__ inline index_t grid_start() {
  return blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
}
template <typename index_t>
__device__ inline index_t grid_stride() {
  return static_cast<index_t>(blockDim.x) * gridDim.x;
}

// Where element `index` of a pooled [K, C, PH, PW] tensor lies: roi n, channel c, bin (ph, pw). The divisions
// are done in index_t (32-bit where the launch allows it, several times cheaper than 64-bit on the GPU).
struct PooledCell {
  int64_t n, c;
  int ph, pw;
};

template <typename index_t>
__device__ inline PooledCell pooled_cell(index_t index, int64_t channels, int64_t pooled_height,
                                         int64_t pooled_width) {
  PooledCell cell;
  cell.pw = static_cast<int>(index % static_cast<index_t>(pooled_width));
  cell.ph = static_cast<int>((index / static_cast<index_t>(pooled_width)) % static_cast<index_t>(pooled_height));
  const index_t plane_index = index / static_cast<index_t>(pooled_width * pooled_height);
  cell.c = plane_index % static_cast<index_t>(channels);
  cell.n = plane_index / static_cast<index_t>(channels);
  return cell;
}

// The kernels index within one feature plane in 32 bits (a 64-bit multiply is several instructions on the GPU,
// and the pooling kernels do one per sample); the plane's own offset stays 64-bit.
inline void check_plane_size(int64_t height, int64_t width, const char* op) {
  FRCNN_CHECK(height * width <= std::numeric_limits<int32_t>::max(), op,
              ": expected a feature map of at most 2^31 - 1 cells per channel on CUDA, got ", height, " x ",
              width);
}

// The zeroed buffer a backward kernel adds its gradients into with atomics: float for half/bfloat16/float,
// double for double; the op returns it cast to the gradient's dtype.
inline at::Tensor grad_accumulator(const at::Tensor& grad, int64_t batch_size, int64_t channels, int64_t height,
                                   int64_t width) {
  const at::ScalarType acc_type = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
}

__device__ inline float dev_floor(float x) { return floorf(x); }
__device__ inline double dev_floor(double x) { return ::floor(x); }
__device__ inline float dev_ceil(float x) { return ceilf(x); }
__device__ inline double dev_ceil(double x) { return ::ceil(x); }

inline void check_cuda_tensor(const at::Tensor& t, const char* what, const char* op) {
  FRCNN_CHECK(t.is_cuda(), op, ": expected CUDA tensors, got ", what, " on ", t.device());
  const at::ScalarType dtype = t.scalar_type();
  FRCNN_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": expected float32, float64, float16 or bfloat16 ", what, " on CUDA, got ", dtype);
}

}  // namespace faster_rcnn
