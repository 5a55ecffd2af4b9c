// Caffe max RoI pooling on the GPU, forward and backward, with the same geometry as cpu/roi_pool_cpu.cpp
// (corners scaled in double and rounded half away from zero, so CPU and GPU pick the same cells).
// The forward runs one thread per bin of kChannelsPerThread channels, the backward one per output cell; 32-bit
// geometry within a feature plane; half/bfloat16 are compared in float and the backward accumulates in float.
// A roi whose batch index is out of range yields zeros (checking it on the host would need a sync).
#include <ATen/Context.h>
#include <torch/library.h>

#include <limits>

#include "../checks.h"
#include "cuda_helpers.cuh"

namespace faster_rcnn {

namespace {

// A roi corner in cells: scaled in double and rounded half away from zero, as the CPU kernel does (in float
// where that is the same: float_geometry). It is clamped to +-2^28 cells first, which no feature map comes near,
// so the 32-bit geometry cannot overflow.
template <typename scalar_t>
__device__ inline int roi_corner(scalar_t v, double spatial_scale, bool float_geom) {
  if constexpr (!std::is_same_v<scalar_t, double>) {
    if (float_geom) {
      const float cell = roundf(static_cast<float>(v) * static_cast<float>(spatial_scale));
      return static_cast<int>(fminf(fmaxf(cell, -268435456.f), 268435456.f));
    }
  }
  const double cell = ::round(static_cast<double>(v) * spatial_scale);
  return static_cast<int>(fmin(fmax(cell, -268435456.0), 268435456.0));
}

// One thread per bin and kChannelsPerThread channels (ChannelGrid): the bin's cells are found once and
// scanned in each channel's plane.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void roi_pool_forward_kernel(index_t items, const scalar_t* __restrict__ input,
                                        const scalar_t* __restrict__ rois, double spatial_scale,
                                        int64_t batch_size, int64_t channels, int height, int width,
                                        int64_t pooled_height, int64_t pooled_width, bool float_geom,
                                        scalar_t* __restrict__ output, int32_t* __restrict__ argmax) {
  const ChannelGrid<index_t> grid(channels, height, width, pooled_height, pooled_width);
  for (index_t item = grid_start<index_t>(); item < items; item += grid_stride<index_t>()) {
    const auto g = grid.at(item);
    const scalar_t* roi = rois + g.n * 5;
    const int64_t b = roi_batch_index(roi, batch_size, float_geom);
    const int roi_start_w = roi_corner(roi[1], spatial_scale, float_geom);
    const int roi_start_h = roi_corner(roi[2], spatial_scale, float_geom);
    const int roi_end_w = roi_corner(roi[3], spatial_scale, float_geom);
    const int roi_end_h = roi_corner(roi[4], spatial_scale, float_geom);
    const int roi_width = max(roi_end_w - roi_start_w + 1, 1);
    const int roi_height = max(roi_end_h - roi_start_h + 1, 1);
    const acc_t bin_h = static_cast<acc_t>(roi_height) / static_cast<acc_t>(pooled_height);
    const acc_t bin_w = static_cast<acc_t>(roi_width) / static_cast<acc_t>(pooled_width);
    int hstart = static_cast<int>(dev_floor(static_cast<acc_t>(g.ph) * bin_h));
    int wstart = static_cast<int>(dev_floor(static_cast<acc_t>(g.pw) * bin_w));
    int hend = static_cast<int>(dev_ceil(static_cast<acc_t>(g.ph + 1) * bin_h));
    int wend = static_cast<int>(dev_ceil(static_cast<acc_t>(g.pw + 1) * bin_w));
    hstart = min(max(hstart + roi_start_h, 0), height);
    hend = min(max(hend + roi_start_h, 0), height);
    wstart = min(max(wstart + roi_start_w, 0), width);
    wend = min(max(wend + roi_start_w, 0), width);
    acc_t best[kChannelsPerThread];
    int best_index[kChannelsPerThread];
    const bool empty = b < 0 || hend <= hstart || wend <= wstart;
    for (int k = 0; k < kChannelsPerThread; ++k) {
      best[k] = empty ? acc_t(0) : std::numeric_limits<acc_t>::lowest();
      best_index[k] = -1;
    }
    if (!empty) {
      const scalar_t* planes[kChannelsPerThread];
      grid.planes(input, b, g, planes);
      for (int h = hstart; h < hend; ++h) {
        for (int w = wstart; w < wend; ++w) {
          const int i = h * width + w;
          for (int k = 0; k < kChannelsPerThread; ++k) {
            const acc_t v = static_cast<acc_t>(planes[k][i]);
            if (v > best[k]) {
              best[k] = v;
              best_index[k] = i;
            }
          }
        }
      }
    }
    for (int k = 0; k < kChannelsPerThread; ++k) {  // a constant count: best stays in registers
      if (k < g.count) {
        output[grid.cell(g, k)] = static_cast<scalar_t>(best[k]);
        argmax[grid.cell(g, k)] = best_index[k];
      }
    }
  }
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void roi_pool_backward_kernel(index_t total, const scalar_t* __restrict__ grad,
                                         const scalar_t* __restrict__ rois, const int32_t* __restrict__ argmax,
                                         int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                         int64_t pooled_height, int64_t pooled_width, bool float_geom,
                                         acc_t* __restrict__ grad_input) {
  for (index_t index = grid_start<index_t>(); index < total; index += grid_stride<index_t>()) {
    const int32_t a = argmax[index];
    if (a < 0) {
      continue;
    }
    const auto cell = pooled_cell(index, channels, pooled_height, pooled_width);
    const int64_t n = cell.n, c = cell.c;
    const int64_t b = roi_batch_index(rois + n * 5, batch_size, float_geom);
    if (b < 0) {
      continue;
    }
    atomicAdd(grad_input + (b * channels + c) * height * width + a, static_cast<acc_t>(grad[index]));
  }
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cuda(const at::Tensor& input_, const at::Tensor& rois_,
                                                         double spatial_scale, int64_t pooled_height,
                                                         int64_t pooled_width) {
  constexpr const char* op = "roi_pool_forward";
  check_roi_inputs(input_, rois_, pooled_height, pooled_width, spatial_scale, op);
  check_cuda_tensor(input_, "input", op);
  const c10::cuda::CUDAGuard guard(input_.device());
  check_plane_size(input_.size(2), input_.size(3), op);
  const int64_t num_rois = rois_.size(0), channels = input_.size(1);
  // The kernel writes every cell, so no fill is needed (each would cost a pass over the output).
  at::Tensor output = at::empty({num_rois, channels, pooled_height, pooled_width}, input_.options());
  at::Tensor argmax =
      at::empty({num_rois, channels, pooled_height, pooled_width}, input_.options().dtype(at::kInt));
  if (output.numel() == 0) {
    return {output, argmax};
  }
  const at::Tensor input = input_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const int64_t total = output.numel();
  const int64_t items = channel_grid_items(num_rois, channels, pooled_height, pooled_width);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_with_index_type(total, [&](auto index_zero) {
      using index_t = decltype(index_zero);
      roi_pool_forward_kernel<scalar_t, acc_t, index_t><<<blocks_for(items), kThreadsPerBlock, 0, stream>>>(
          static_cast<index_t>(items), input.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), spatial_scale,
          input.size(0), channels, static_cast<int>(input.size(2)), static_cast<int>(input.size(3)),
          pooled_height, pooled_width, float_geometry(spatial_scale, input.size(0), input.scalar_type()),
          output.data_ptr<scalar_t>(), argmax.data_ptr<int32_t>());
    });
  });
  return {output, argmax};
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad_, const at::Tensor& rois_, const at::Tensor& argmax_,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  constexpr const char* op = "roi_pool_backward";
  check_roi_backward_inputs(grad_, rois_, pooled_height, pooled_width, spatial_scale, batch_size, channels,
                            height, width, op);
  check_cuda_tensor(grad_, "grad", op);
  // gradients are summed with atomicAdd: warn (or fail) under torch.use_deterministic_algorithms
  at::globalContext().alertNotDeterministic("roi_pool_backward_cuda");
  FRCNN_CHECK(argmax_.scalar_type() == at::kInt && argmax_.sizes() == grad_.sizes(), op,
              ": expected an int32 argmax of shape ", grad_.sizes(), ", got ", argmax_.scalar_type(), " ",
              argmax_.sizes());
  FRCNN_CHECK(argmax_.device() == grad_.device(), op, ": expected argmax on ", grad_.device(), ", got ",
              argmax_.device());
  const c10::cuda::CUDAGuard guard(grad_.device());
  at::Tensor grad_acc = grad_accumulator(grad_, batch_size, channels, height, width);
  if (grad_.numel() == 0 || grad_acc.numel() == 0) {
    return grad_acc.to(grad_.scalar_type());
  }
  const at::Tensor grad = grad_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const at::Tensor argmax = argmax_.contiguous();
  const int64_t total = grad.numel();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_with_index_type(total, [&](auto index_zero) {
      using index_t = decltype(index_zero);
      roi_pool_backward_kernel<scalar_t, acc_t, index_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
          static_cast<index_t>(total), grad.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(),
          argmax.data_ptr<int32_t>(), batch_size, channels, height, width, pooled_height, pooled_width,
          float_geometry(spatial_scale, batch_size, grad.scalar_type()), grad_acc.data_ptr<acc_t>());
    });
  });
  return grad_acc.to(grad_.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(faster_rcnn, CUDA, m) {
  m.impl("roi_pool_forward", &roi_pool_forward_cuda);
  m.impl("roi_pool_backward", &roi_pool_backward_cuda);
}

}  // namespace faster_rcnn
