// Small pieces shared by the CUDA kernels of the faster_rcnn ops.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

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

// The pooling kernels' forward (and RoIAlign's backward) give each thread one bin (ph, pw) of one roi for
// kChannelsPerThread consecutive channels: the bin's geometry (the roi's corners and batch index, the bin's cells,
// RoIAlign's sample points and their bilinear weights) is the same in every channel, so it is computed once and
// applied to each of them, where a thread per output cell (torchvision's kernels) computes it again for every
// channel. The threads of a warp still take consecutive bins of one roi, so their reads of a plane and their
// writes of the output stay as close together as before.
constexpr int kChannelsPerThread = 4;

__host__ __device__ inline int64_t channel_groups(int64_t channels) {
  return (channels + kChannelsPerThread - 1) / kChannelsPerThread;
}

// The launch size of those kernels: one item per bin of every roi and channel group (ChannelGrid below).
inline int64_t channel_grid_items(int64_t num_rois, int64_t channels, int64_t pooled_height, int64_t pooled_width) {
  return num_rois * channel_groups(channels) * pooled_height * pooled_width;
}

// Roi n's bin (ph, pw) in channels c0 .. c0 + count - 1; `out` is the index of its first cell in the pooled
// [K, C, PH, PW] tensor. A group of fewer than kChannelsPerThread channels (the last, when C is not a multiple
// of it) repeats its last channel in the other places (ChannelGrid::planes): the kernels' loops over a group
// then test nothing per channel (a branch per channel in the inner loops, which nvcc does not remove), and what
// they compute there is not written.
template <typename index_t>
struct ChannelGroup {
  int64_t n, c0;
  int ph, pw, count;
  index_t out;
};

// The grid of those kernels: item i of [K, channel_groups(C), PH, PW] is a ChannelGroup. index_t must hold the
// pooled tensor's size (launch_with_index_type).
template <typename index_t>
struct ChannelGrid {
  int64_t channels, groups, plane_size, pooled_height, pooled_width;

  __device__ ChannelGrid(int64_t channels_, int height, int width, int64_t pooled_height_, int64_t pooled_width_)
      : channels(channels_), groups(channel_groups(channels_)), plane_size(static_cast<int64_t>(height) * width),
        pooled_height(pooled_height_), pooled_width(pooled_width_) {}

  __device__ ChannelGroup<index_t> at(index_t item) const {
    const PooledCell cell = pooled_cell(item, groups, pooled_height, pooled_width);  // its c is the group
    ChannelGroup<index_t> g;
    g.n = cell.n;
    g.ph = cell.ph;
    g.pw = cell.pw;
    g.c0 = cell.c * kChannelsPerThread;
    g.count = static_cast<int>(min(static_cast<int64_t>(kChannelsPerThread), channels - g.c0));
    g.out = ((static_cast<index_t>(g.n) * static_cast<index_t>(channels) + static_cast<index_t>(g.c0)) *
                 static_cast<index_t>(pooled_height) + static_cast<index_t>(g.ph)) *
                static_cast<index_t>(pooled_width) + static_cast<index_t>(g.pw);
    return g;
  }

  // The index in the pooled tensor of channel c0 + k's cell.
  __device__ index_t cell(const ChannelGroup<index_t>& g, int k) const {
    return g.out + static_cast<index_t>(k) * static_cast<index_t>(pooled_height * pooled_width);
  }

  // The planes of the group's channels in image `batch` of a [B, C, H, W] map (repeating the last past count).
  template <typename T>
  __device__ void planes(T* map, int64_t batch, const ChannelGroup<index_t>& g,
                         T* (&out)[kChannelsPerThread]) const {
    T* first = map + (batch * channels + g.c0) * plane_size;
    for (int k = 0; k < kChannelsPerThread; ++k) {
      out[k] = first + min(k, g.count - 1) * plane_size;
    }
  }
};

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

// The roi geometry (batch index, corners times spatial_scale) is defined in double, as the CPU kernels compute it.
// Where spatial_scale is a power of two (every feature stride: 1/16, 1/8, ...) a float, half or bfloat16
// coordinate times it is exact in float as in double (an overflow gives inf in both, which the kernels clamp
// alike; an underflow rounds the same exact value), and a batch index compares exactly in float below 2^24: the
// kernels then take the float path, with results identical to the double one. Per output cell the double path
// costs about a dozen conversions to and from double, which run at a fraction of the float rate on the GPU.
inline bool float_geometry(double spatial_scale, int64_t batch_size, at::ScalarType dtype) {
  int exponent = 0;
  return dtype != at::kDouble && std::isfinite(spatial_scale) && spatial_scale > 0 &&
         std::frexp(spatial_scale, &exponent) == 0.5 && exponent > -100 && exponent < 100 &&
         batch_size <= (int64_t(1) << 24);
}

// The batch index of a roi (its column 0), or -1 when it is not one of the batch's images.
template <typename scalar_t>
__device__ inline int64_t roi_batch_index(const scalar_t* roi, int64_t batch_size, bool float_geom) {
  if constexpr (!std::is_same_v<scalar_t, double>) {
    if (float_geom) {
      const float b = static_cast<float>(roi[0]);
      return (b >= 0.f && b < static_cast<float>(batch_size)) ? static_cast<int>(b) : -1;
    }
  }
  const double b = static_cast<double>(roi[0]);
  return (b >= 0 && b < static_cast<double>(batch_size)) ? static_cast<int64_t>(b) : -1;
}

// A roi coordinate times spatial_scale, as acc_t: computed in double and rounded to acc_t, or in float where
// that is the same (float_geometry).
template <typename acc_t, typename scalar_t>
__device__ inline acc_t scaled_coordinate(scalar_t v, double spatial_scale, bool float_geom) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if (float_geom) {
      return static_cast<float>(v) * static_cast<float>(spatial_scale);
    }
  }
  return static_cast<acc_t>(static_cast<double>(v) * spatial_scale);
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
