// Caffe max RoI pooling on the CPU, forward and backward. Geometry follows the original (and torchvision's
// roi_pool): roi corners are rounded to feature cells, the roi spans max(x2 - x1 + 1, 1) cells, bin edges are
// floor/ceil of the split, an empty bin outputs 0 with argmax -1. argmax is the flat h * W + w index in the
// roi's feature plane.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "roi_cpu_checks.h"

namespace faster_rcnn {

namespace {

// Rois and channels are swept in blocks so that a channel plane stays in L1 while a block of rois reads it.
constexpr int64_t kRoiBlock = 32;
constexpr int64_t kChannelBlock = 64;

// Bin edges of one roi, clipped to the feature map: bins[p] = {hstart, hend, wstart, wend}.
template <typename scalar_t>
void roi_pool_bins(const scalar_t* roi, double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                   int64_t height, int64_t width, std::vector<std::array<int64_t, 4>>& bins) {
  // The product is taken in double, as torchvision's CPU kernel does, then rounded half away from zero.
  const int64_t roi_start_w = std::llround(roi[1] * spatial_scale);
  const int64_t roi_start_h = std::llround(roi[2] * spatial_scale);
  const int64_t roi_end_w = std::llround(roi[3] * spatial_scale);
  const int64_t roi_end_h = std::llround(roi[4] * spatial_scale);
  const int64_t roi_width = std::max<int64_t>(roi_end_w - roi_start_w + 1, 1);
  const int64_t roi_height = std::max<int64_t>(roi_end_h - roi_start_h + 1, 1);
  const scalar_t bin_h = static_cast<scalar_t>(roi_height) / static_cast<scalar_t>(pooled_height);
  const scalar_t bin_w = static_cast<scalar_t>(roi_width) / static_cast<scalar_t>(pooled_width);
  bins.resize(pooled_height * pooled_width);
  for (int64_t ph = 0; ph < pooled_height; ++ph) {
    int64_t hstart = static_cast<int64_t>(std::floor(static_cast<scalar_t>(ph) * bin_h));
    int64_t hend = static_cast<int64_t>(std::ceil(static_cast<scalar_t>(ph + 1) * bin_h));
    hstart = std::min(std::max<int64_t>(hstart + roi_start_h, 0), height);
    hend = std::min(std::max<int64_t>(hend + roi_start_h, 0), height);
    for (int64_t pw = 0; pw < pooled_width; ++pw) {
      int64_t wstart = static_cast<int64_t>(std::floor(static_cast<scalar_t>(pw) * bin_w));
      int64_t wend = static_cast<int64_t>(std::ceil(static_cast<scalar_t>(pw + 1) * bin_w));
      wstart = std::min(std::max<int64_t>(wstart + roi_start_w, 0), width);
      wend = std::min(std::max<int64_t>(wend + roi_start_w, 0), width);
      bins[ph * pooled_width + pw] = {hstart, hend, wstart, wend};
    }
  }
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cpu(const at::Tensor& input_, const at::Tensor& rois_,
                                                        double spatial_scale, int64_t pooled_height,
                                                        int64_t pooled_width) {
  constexpr const char* op = "roi_pool_forward";
  check_roi_inputs(input_, rois_, pooled_height, pooled_width, spatial_scale, op);
  check_cpu_roi_tensor(input_, "input", op);
  const int64_t batch_size = input_.size(0), channels = input_.size(1);
  const int64_t height = input_.size(2), width = input_.size(3);
  const int64_t num_rois = rois_.size(0);
  at::Tensor output = at::zeros({num_rois, channels, pooled_height, pooled_width}, input_.options());
  at::Tensor argmax = at::full({num_rois, channels, pooled_height, pooled_width}, -1,
                               input_.options().dtype(at::kInt));
  if (output.numel() == 0) {
    return {output, argmax};
  }
  const at::Tensor input = input_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const int64_t bins_per_roi = pooled_height * pooled_width;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_pool_forward_cpu", [&] {
    const scalar_t* in = input.data_ptr<scalar_t>();
    const scalar_t* rp = rois.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    int32_t* am = argmax.data_ptr<int32_t>();
    const std::vector<int64_t> batch = roi_batch_indices(rp, num_rois, batch_size, op);
    const int64_t roi_blocks = (num_rois + kRoiBlock - 1) / kRoiBlock;
    const int64_t channel_blocks = (channels + kChannelBlock - 1) / kChannelBlock;
    // Tasks are (roi block, channel block) pairs; within one, a channel plane stays in L1 for all its rois.
    at::parallel_for(0, roi_blocks * channel_blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<std::vector<std::array<int64_t, 4>>> bins(kRoiBlock);
      int64_t tabulated = -1;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n0 = (task / channel_blocks) * kRoiBlock, n1 = std::min(n0 + kRoiBlock, num_rois);
        const int64_t c0 = (task % channel_blocks) * kChannelBlock, c1 = std::min(c0 + kChannelBlock, channels);
        if (tabulated != n0) {
          for (int64_t n = n0; n < n1; ++n) {
            roi_pool_bins(rp + n * 5, spatial_scale, pooled_height, pooled_width, height, width, bins[n - n0]);
          }
          tabulated = n0;
        }
        for (int64_t c = c0; c < c1; ++c) {
          for (int64_t n = n0; n < n1; ++n) {
            const scalar_t* plane = in + (batch[n] * channels + c) * height * width;
            scalar_t* o = out + (n * channels + c) * bins_per_roi;
            int32_t* a = am + (n * channels + c) * bins_per_roi;
            for (int64_t p = 0; p < bins_per_roi; ++p) {
              const auto& bin = bins[n - n0][p];
              if (bin[1] <= bin[0] || bin[3] <= bin[2]) {
                continue;  // empty bin: output stays 0, argmax -1
              }
              scalar_t best = std::numeric_limits<scalar_t>::lowest();
              int64_t best_index = -1;
              for (int64_t h = bin[0]; h < bin[1]; ++h) {
                for (int64_t w = bin[2]; w < bin[3]; ++w) {
                  const int64_t index = h * width + w;
                  if (plane[index] > best) {
                    best = plane[index];
                    best_index = index;
                  }
                }
              }
              o[p] = best;
              a[p] = static_cast<int32_t>(best_index);
            }
          }
        }
      }
    });
  });
  return {output, argmax};
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad_, const at::Tensor& rois_, const at::Tensor& argmax_,
                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                 int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  constexpr const char* op = "roi_pool_backward";
  check_roi_backward_inputs(grad_, rois_, pooled_height, pooled_width, spatial_scale, batch_size, channels,
                            height, width, op);
  check_cpu_roi_tensor(grad_, "grad", op);
  FRCNN_CHECK(argmax_.scalar_type() == at::kInt && argmax_.sizes() == grad_.sizes(), op,
              ": expected an int32 argmax of shape ", grad_.sizes(), ", got ", argmax_.scalar_type(), " ",
              argmax_.sizes());
  FRCNN_CHECK(argmax_.is_cpu(), op, ": expected argmax on the CPU, got ", argmax_.device());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad_.options());
  const int64_t num_rois = rois_.size(0);
  if (num_rois == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  const at::Tensor grad = grad_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const at::Tensor argmax = argmax_.contiguous();
  const int64_t bins_per_roi = pooled_height * pooled_width;
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_pool_backward_cpu", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const int32_t* am = argmax.data_ptr<int32_t>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    const std::vector<int64_t> batch = roi_batch_indices(rois.data_ptr<scalar_t>(), num_rois, batch_size, op);
    // Each thread owns a range of channels of grad_input, so the scatter needs no atomics.
    // Channel-major so each grad_input plane stays in L1 while every roi scatters into it.
    at::parallel_for(0, channels, kChannelBlock, [&](int64_t c_begin, int64_t c_end) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        for (int64_t n = 0; n < num_rois; ++n) {
          scalar_t* plane = gi + (batch[n] * channels + c) * height * width;
          const scalar_t* go = g + (n * channels + c) * bins_per_roi;
          const int32_t* a = am + (n * channels + c) * bins_per_roi;
          for (int64_t p = 0; p < bins_per_roi; ++p) {
            if (a[p] >= 0) {
              plane[a[p]] += go[p];
            }
          }
        }
      }
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(faster_rcnn, CPU, m) {
  m.impl("roi_pool_forward", &roi_pool_forward_cpu);
  m.impl("roi_pool_backward", &roi_pool_backward_cpu);
}

}  // namespace faster_rcnn
