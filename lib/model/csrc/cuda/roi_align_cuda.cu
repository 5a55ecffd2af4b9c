// Bilinear RoIAlign (aligned=False) on the GPU, forward and backward, with the geometry of
// cpu/roi_align_cpu.cpp. One thread per bin of kChannelsPerThread channels (cuda_helpers.cuh), 32-bit indices
// within a feature plane (the sample loop's index math is the kernels' hot path); half/bfloat16 are computed in
// float and the backward scatters into a float (double for double) buffer with atomics, cast to the input's dtype
// at the end.
// A roi whose batch index is out of range yields zeros (checking it on the host would need a sync).
#include <ATen/Context.h>
#include <torch/library.h>

#include <limits>

#include "../checks.h"
#include "cuda_helpers.cuh"

namespace faster_rcnn {

namespace {

// A sample point's four neighbours in the feature plane (in-plane indices: top-left, top-right, bottom-left,
// bottom-right) and their bilinear weights.
template <typename acc_t>
struct Sample {
  int index[4];
  acc_t weight[4];
};

// The neighbours and weights of (y, x); false when the sample is outside the map's 1-cell margin.
template <typename acc_t>
__device__ inline bool bilinear_sample(int height, int width, acc_t y, acc_t x, Sample<acc_t>& s) {
  if (y < acc_t(-1) || y > static_cast<acc_t>(height) || x < acc_t(-1) || x > static_cast<acc_t>(width)) {
    return false;
  }
  y = max(y, acc_t(0));
  x = max(x, acc_t(0));
  int y_low = static_cast<int>(y), x_low = static_cast<int>(x), y_high, x_high;
  if (y_low >= height - 1) {
    y_high = y_low = height - 1;
    y = static_cast<acc_t>(y_low);
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = static_cast<acc_t>(x_low);
  } else {
    x_high = x_low + 1;
  }
  const acc_t ly = y - static_cast<acc_t>(y_low), lx = x - static_cast<acc_t>(x_low);
  const acc_t hy = acc_t(1) - ly, hx = acc_t(1) - lx;
  s.index[0] = y_low * width + x_low;
  s.index[1] = y_low * width + x_high;
  s.index[2] = y_high * width + x_low;
  s.index[3] = y_high * width + x_high;
  s.weight[0] = hy * hx;
  s.weight[1] = hy * lx;
  s.weight[2] = ly * hx;
  s.weight[3] = ly * lx;
  return true;
}

template <typename scalar_t, typename acc_t>
struct RoiBin {
  int64_t batch;
  acc_t start_h, start_w, bin_h, bin_w;
  int64_t grid_h, grid_w;
  acc_t count;
};

template <typename scalar_t, typename acc_t>
__device__ inline RoiBin<scalar_t, acc_t> roi_bin(const scalar_t* roi, double spatial_scale, int64_t batch_size,
                                                  int64_t pooled_height, int64_t pooled_width,
                                                  int64_t sampling_ratio, bool float_geom) {
  RoiBin<scalar_t, acc_t> r;
  r.batch = roi_batch_index(roi, batch_size, float_geom);
  // Scaled in double and then rounded to acc_t, as the CPU kernel does (in float where that is the same).
  r.start_w = scaled_coordinate<acc_t>(roi[1], spatial_scale, float_geom);
  r.start_h = scaled_coordinate<acc_t>(roi[2], spatial_scale, float_geom);
  const acc_t end_w = scaled_coordinate<acc_t>(roi[3], spatial_scale, float_geom);
  const acc_t end_h = scaled_coordinate<acc_t>(roi[4], spatial_scale, float_geom);
  const acc_t roi_w = max(end_w - r.start_w, acc_t(1));
  const acc_t roi_h = max(end_h - r.start_h, acc_t(1));
  r.bin_h = roi_h / static_cast<acc_t>(pooled_height);
  r.bin_w = roi_w / static_cast<acc_t>(pooled_width);
  r.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(dev_ceil(roi_h / pooled_height));
  r.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(dev_ceil(roi_w / pooled_width));
  r.count = static_cast<acc_t>(max(r.grid_h * r.grid_w, int64_t(1)));
  return r;
}

// Calls f(sample) for every sample point of bin (ph, pw) of roi r that lies on the map (the forward reads its
// neighbours, the backward scatters into them).
template <typename scalar_t, typename acc_t, typename F>
__device__ inline void for_each_sample(const RoiBin<scalar_t, acc_t>& r, int ph, int pw, int height, int width,
                                       const F& f) {
  for (int64_t iy = 0; iy < r.grid_h; ++iy) {
    const acc_t y = r.start_h + ph * r.bin_h + (iy + acc_t(.5)) * r.bin_h / static_cast<acc_t>(r.grid_h);
    for (int64_t ix = 0; ix < r.grid_w; ++ix) {
      const acc_t x = r.start_w + pw * r.bin_w + (ix + acc_t(.5)) * r.bin_w / static_cast<acc_t>(r.grid_w);
      Sample<acc_t> s;
      if (bilinear_sample(height, width, y, x, s)) {
        f(s);
      }
    }
  }
}

// One thread per bin and kChannelsPerThread channels (ChannelGrid): the sample points and their weights are
// computed once per bin and read in each channel's plane.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void roi_align_forward_kernel(index_t items, const scalar_t* __restrict__ input,
                                         const scalar_t* __restrict__ rois, double spatial_scale,
                                         int64_t batch_size, int64_t channels, int height, int width,
                                         int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                         bool float_geom, scalar_t* __restrict__ output) {
  const ChannelGrid<index_t> grid(channels, height, width, pooled_height, pooled_width);
  for (index_t item = grid_start<index_t>(); item < items; item += grid_stride<index_t>()) {
    const auto g = grid.at(item);
    const auto r = roi_bin<scalar_t, acc_t>(rois + g.n * 5, spatial_scale, batch_size, pooled_height,
                                            pooled_width, sampling_ratio, float_geom);
    acc_t acc[kChannelsPerThread] = {};
    if (r.batch >= 0) {
      const scalar_t* planes[kChannelsPerThread];
      grid.planes(input, r.batch, g, planes);
      for_each_sample(r, g.ph, g.pw, height, width, [&](const Sample<acc_t>& s) {
        for (int k = 0; k < kChannelsPerThread; ++k) {
          const scalar_t* q = planes[k];
          acc[k] += s.weight[0] * static_cast<acc_t>(q[s.index[0]]) +
                    s.weight[1] * static_cast<acc_t>(q[s.index[1]]) +
                    s.weight[2] * static_cast<acc_t>(q[s.index[2]]) +
                    s.weight[3] * static_cast<acc_t>(q[s.index[3]]);
        }
      });
    }
    for (int k = 0; k < kChannelsPerThread; ++k) {  // a constant count: acc stays in registers
      if (k < g.count) {
        output[grid.cell(g, k)] = static_cast<scalar_t>(acc[k] / r.count);
      }
    }
  }
}

// The same grid as the forward: each sample's neighbours and weights once, scattered into each channel's plane.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void roi_align_backward_kernel(index_t items, const scalar_t* __restrict__ grad,
                                          const scalar_t* __restrict__ rois, double spatial_scale,
                                          int64_t batch_size, int64_t channels, int height, int width,
                                          int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                          bool float_geom, acc_t* __restrict__ grad_input) {
  const ChannelGrid<index_t> grid(channels, height, width, pooled_height, pooled_width);
  for (index_t item = grid_start<index_t>(); item < items; item += grid_stride<index_t>()) {
    const auto g = grid.at(item);
    const auto r = roi_bin<scalar_t, acc_t>(rois + g.n * 5, spatial_scale, batch_size, pooled_height,
                                            pooled_width, sampling_ratio, float_geom);
    if (r.batch < 0) {
      continue;
    }
    acc_t* planes[kChannelsPerThread];
    grid.planes(grad_input, r.batch, g, planes);
    acc_t gk[kChannelsPerThread];
    for (int k = 0; k < kChannelsPerThread; ++k) {  // a repeated channel adds zeros
      gk[k] = k < g.count ? static_cast<acc_t>(grad[grid.cell(g, k)]) / r.count : acc_t(0);
    }
    for_each_sample(r, g.ph, g.pw, height, width, [&](const Sample<acc_t>& s) {
      for (int k = 0; k < kChannelsPerThread; ++k) {
        for (int j = 0; j < 4; ++j) {
          atomicAdd(planes[k] + s.index[j], gk[k] * s.weight[j]);
        }
      }
    });
  }
}

void check_sampling_ratio(int64_t sampling_ratio, const char* op) {
  FRCNN_CHECK(sampling_ratio >= 0, op, ": expected sampling_ratio >= 0 (0 = adaptive), got ", sampling_ratio);
}

at::Tensor roi_align_forward_cuda(const at::Tensor& input_, const at::Tensor& rois_, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio) {
  constexpr const char* op = "roi_align_forward";
  check_roi_inputs(input_, rois_, pooled_height, pooled_width, spatial_scale, op);
  check_sampling_ratio(sampling_ratio, op);
  check_cuda_tensor(input_, "input", op);
  const c10::cuda::CUDAGuard guard(input_.device());
  check_plane_size(input_.size(2), input_.size(3), op);
  const int64_t num_rois = rois_.size(0), channels = input_.size(1);
  if (num_rois * channels * pooled_height * pooled_width == 0 || input_.numel() == 0) {
    // no roi, or an empty feature map: every sample lies outside it (the CPU kernel gives 0 too)
    return at::zeros({num_rois, channels, pooled_height, pooled_width}, input_.options());
  }
  // The kernel writes every cell, so no fill is needed (it would cost a pass over the output).
  at::Tensor output = at::empty({num_rois, channels, pooled_height, pooled_width}, input_.options());
  const at::Tensor input = input_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const int64_t total = output.numel();
  const int64_t items = channel_grid_items(num_rois, channels, pooled_height, pooled_width);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_with_index_type(total, [&](auto index_zero) {
      using index_t = decltype(index_zero);
      roi_align_forward_kernel<scalar_t, acc_t, index_t><<<blocks_for(items), kThreadsPerBlock, 0, stream>>>(
          static_cast<index_t>(items), input.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), spatial_scale,
          input.size(0), channels, static_cast<int>(input.size(2)), static_cast<int>(input.size(3)), pooled_height,
          pooled_width, sampling_ratio, float_geometry(spatial_scale, input.size(0), input.scalar_type()),
          output.data_ptr<scalar_t>());
    });
  });
  return output;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad_, const at::Tensor& rois_, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                   int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio) {
  constexpr const char* op = "roi_align_backward";
  check_roi_backward_inputs(grad_, rois_, pooled_height, pooled_width, spatial_scale, batch_size, channels,
                            height, width, op);
  check_sampling_ratio(sampling_ratio, op);
  check_cuda_tensor(grad_, "grad", op);
  check_plane_size(height, width, op);
  // gradients are summed with atomicAdd: warn (or fail) under torch.use_deterministic_algorithms
  at::globalContext().alertNotDeterministic("roi_align_backward_cuda");
  const c10::cuda::CUDAGuard guard(grad_.device());
  at::Tensor grad_acc = grad_accumulator(grad_, batch_size, channels, height, width);
  if (grad_.numel() == 0 || grad_acc.numel() == 0) {
    return grad_acc.to(grad_.scalar_type());
  }
  const at::Tensor grad = grad_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const int64_t total = grad.numel();
  const int64_t items = channel_grid_items(grad.size(0), channels, pooled_height, pooled_width);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_with_index_type(total, [&](auto index_zero) {
      using index_t = decltype(index_zero);
      roi_align_backward_kernel<scalar_t, acc_t, index_t><<<blocks_for(items), kThreadsPerBlock, 0, stream>>>(
          static_cast<index_t>(items), grad.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), spatial_scale,
          batch_size, channels, static_cast<int>(height), static_cast<int>(width), pooled_height, pooled_width,
          sampling_ratio, float_geometry(spatial_scale, batch_size, grad.scalar_type()), grad_acc.data_ptr<acc_t>());
    });
  });
  return grad_acc.to(grad_.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(faster_rcnn, CUDA, m) {
  m.impl("roi_align_forward", &roi_align_forward_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
}

}  // namespace faster_rcnn
