// Bilinear RoIAlign on the CPU, forward and backward, with the original's aligned=False geometry: corners are
// scaled without a half-pixel shift, the roi is at least 1x1 feature cells, and sampling_ratio 0 takes
// ceil(roi_size / pooled_size) samples per bin side. Each output is the mean of its bin's samples.
// Both passes first turn each roi into a table of (4 positions, 4 weights) per sample, then sweep channels
// with it: the geometry is computed once per roi (per thread) instead of once per roi and channel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"
#include "roi_cpu_checks.h"

namespace faster_rcnn {

namespace {

template <typename scalar_t>
struct Sample {
  // Flat h * W + w positions of the 4 neighbours; pos[0] < 0 marks a sample outside the feature map.
  int32_t pos[4];
  scalar_t w[4];
};

template <typename scalar_t>
struct RoiGeometry {
  int64_t grid_h, grid_w;  // samples per bin side
  scalar_t count;          // samples per bin (at least 1)
};

// Fills samples with pooled_height * pooled_width * grid_h * grid_w entries, bin by bin, row-major.
template <typename scalar_t>
RoiGeometry<scalar_t> roi_align_samples(const scalar_t* roi, double spatial_scale, int64_t pooled_height,
                                        int64_t pooled_width, int64_t sampling_ratio, int64_t height,
                                        int64_t width, std::vector<Sample<scalar_t>>& samples) {
  // The product is taken in double, as torchvision's CPU kernel does, then stored in scalar_t.
  const scalar_t start_w = roi[1] * spatial_scale;
  const scalar_t start_h = roi[2] * spatial_scale;
  const scalar_t end_w = roi[3] * spatial_scale;
  const scalar_t end_h = roi[4] * spatial_scale;
  const scalar_t roi_w = std::max(end_w - start_w, static_cast<scalar_t>(1));
  const scalar_t roi_h = std::max(end_h - start_h, static_cast<scalar_t>(1));
  const scalar_t bin_h = roi_h / static_cast<scalar_t>(pooled_height);
  const scalar_t bin_w = roi_w / static_cast<scalar_t>(pooled_width);
  RoiGeometry<scalar_t> geo;
  geo.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(std::ceil(roi_h / pooled_height));
  geo.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(std::ceil(roi_w / pooled_width));
  geo.count = static_cast<scalar_t>(std::max<int64_t>(geo.grid_h * geo.grid_w, 1));
  samples.resize(pooled_height * pooled_width * geo.grid_h * geo.grid_w);
  int64_t k = 0;
  for (int64_t ph = 0; ph < pooled_height; ++ph) {
    for (int64_t pw = 0; pw < pooled_width; ++pw) {
      for (int64_t iy = 0; iy < geo.grid_h; ++iy) {
        scalar_t y = start_h + ph * bin_h +
                     (iy + static_cast<scalar_t>(.5f)) * bin_h / static_cast<scalar_t>(geo.grid_h);
        for (int64_t ix = 0; ix < geo.grid_w; ++ix, ++k) {
          scalar_t x = start_w + pw * bin_w +
                       (ix + static_cast<scalar_t>(.5f)) * bin_w / static_cast<scalar_t>(geo.grid_w);
          Sample<scalar_t>& s = samples[k];
          if (y < -1 || y > height || x < -1 || x > width) {
            s = Sample<scalar_t>{{-1, 0, 0, 0}, {0, 0, 0, 0}};
            continue;
          }
          scalar_t yy = std::max(y, static_cast<scalar_t>(0));
          scalar_t xx = std::max(x, static_cast<scalar_t>(0));
          int64_t y_low = static_cast<int64_t>(yy);
          int64_t x_low = static_cast<int64_t>(xx);
          int64_t y_high, x_high;
          if (y_low >= height - 1) {
            y_high = y_low = height - 1;
            yy = static_cast<scalar_t>(y_low);
          } else {
            y_high = y_low + 1;
          }
          if (x_low >= width - 1) {
            x_high = x_low = width - 1;
            xx = static_cast<scalar_t>(x_low);
          } else {
            x_high = x_low + 1;
          }
          const scalar_t ly = yy - y_low, lx = xx - x_low;
          const scalar_t hy = 1 - ly, hx = 1 - lx;
          s.pos[0] = static_cast<int32_t>(y_low * width + x_low);
          s.pos[1] = static_cast<int32_t>(y_low * width + x_high);
          s.pos[2] = static_cast<int32_t>(y_high * width + x_low);
          s.pos[3] = static_cast<int32_t>(y_high * width + x_high);
          s.w[0] = hy * hx;
          s.w[1] = hy * lx;
          s.w[2] = ly * hx;
          s.w[3] = ly * lx;
        }
      }
    }
  }
  return geo;
}

// Rois and channels are swept in blocks: one channel plane stays in L1 while all rois of a block read it,
// and the block's sample tables stay in L2, instead of every roi streaming every plane from memory.
constexpr int64_t kRoiBlock = 32;
constexpr int64_t kChannelBlock = 64;

template <typename scalar_t>
struct RoiBlockTables {
  int64_t first = -1, last = -1;  // rois [first, last) are tabulated
  std::vector<std::vector<Sample<scalar_t>>> samples;
  std::vector<RoiGeometry<scalar_t>> geometry;

  void build(const scalar_t* rois, int64_t n0, int64_t n1, double spatial_scale, int64_t pooled_height,
             int64_t pooled_width, int64_t sampling_ratio, int64_t height, int64_t width) {
    if (n0 == first && n1 == last) {
      return;
    }
    samples.resize(n1 - n0);
    geometry.resize(n1 - n0);
    for (int64_t n = n0; n < n1; ++n) {
      geometry[n - n0] = roi_align_samples(rois + n * 5, spatial_scale, pooled_height, pooled_width,
                                           sampling_ratio, height, width, samples[n - n0]);
    }
    first = n0;
    last = n1;
  }
};

void check_sampling_ratio(int64_t sampling_ratio, const char* op) {
  FRCNN_CHECK(sampling_ratio >= 0, op, ": expected sampling_ratio >= 0 (0 = adaptive), got ", sampling_ratio);
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input_, const at::Tensor& rois_, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio) {
  constexpr const char* op = "roi_align_forward";
  check_roi_inputs(input_, rois_, pooled_height, pooled_width, spatial_scale, op);
  check_sampling_ratio(sampling_ratio, op);
  check_cpu_roi_tensor(input_, "input", op);
  const int64_t batch_size = input_.size(0), channels = input_.size(1);
  const int64_t height = input_.size(2), width = input_.size(3);
  const int64_t num_rois = rois_.size(0);
  at::Tensor output = at::zeros({num_rois, channels, pooled_height, pooled_width}, input_.options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor input = input_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const int64_t bins_per_roi = pooled_height * pooled_width;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_align_forward_cpu", [&] {
    const scalar_t* in = input.data_ptr<scalar_t>();
    const scalar_t* rp = rois.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    const std::vector<int64_t> batch = roi_batch_indices(rp, num_rois, batch_size, op);
    const int64_t roi_blocks = (num_rois + kRoiBlock - 1) / kRoiBlock;
    const int64_t channel_blocks = (channels + kChannelBlock - 1) / kChannelBlock;
    // Tasks are (roi block, channel block) pairs, roi block major, so a thread's consecutive tasks reuse
    // the sample tables it built.
    at::parallel_for(0, roi_blocks * channel_blocks, 1, [&](int64_t begin, int64_t end) {
      RoiBlockTables<scalar_t> tables;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n0 = (task / channel_blocks) * kRoiBlock, n1 = std::min(n0 + kRoiBlock, num_rois);
        const int64_t c0 = (task % channel_blocks) * kChannelBlock, c1 = std::min(c0 + kChannelBlock, channels);
        tables.build(rp, n0, n1, spatial_scale, pooled_height, pooled_width, sampling_ratio, height, width);
        for (int64_t c = c0; c < c1; ++c) {
          for (int64_t n = n0; n < n1; ++n) {
            const scalar_t* plane = in + (batch[n] * channels + c) * height * width;
            scalar_t* o = out + (n * channels + c) * bins_per_roi;
            const auto& geo = tables.geometry[n - n0];
            const int64_t per_bin = geo.grid_h * geo.grid_w;
            const Sample<scalar_t>* smp = tables.samples[n - n0].data();
            for (int64_t p = 0; p < bins_per_roi; ++p) {
              scalar_t acc = 0;
              for (int64_t i = 0; i < per_bin; ++i, ++smp) {
                if (smp->pos[0] < 0) {
                  continue;
                }
                acc += smp->w[0] * plane[smp->pos[0]] + smp->w[1] * plane[smp->pos[1]] +
                       smp->w[2] * plane[smp->pos[2]] + smp->w[3] * plane[smp->pos[3]];
              }
              o[p] = acc / geo.count;
            }
          }
        }
      }
    });
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad_, const at::Tensor& rois_, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio) {
  constexpr const char* op = "roi_align_backward";
  check_roi_backward_inputs(grad_, rois_, pooled_height, pooled_width, spatial_scale, batch_size, channels,
                            height, width, op);
  check_sampling_ratio(sampling_ratio, op);
  check_cpu_roi_tensor(grad_, "grad", op);
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad_.options());
  const int64_t num_rois = rois_.size(0);
  if (num_rois == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  const at::Tensor grad = grad_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const int64_t bins_per_roi = pooled_height * pooled_width;
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_align_backward_cpu", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* rp = rois.data_ptr<scalar_t>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    const std::vector<int64_t> batch = roi_batch_indices(rp, num_rois, batch_size, op);
    // Each thread owns a range of channels of grad_input, so the scatter needs no atomics; every thread
    // builds the sample tables itself, which is cheap next to the channel sweep.
    at::parallel_for(0, channels, kChannelBlock, [&](int64_t c_begin, int64_t c_end) {
      RoiBlockTables<scalar_t> tables;
      for (int64_t n0 = 0; n0 < num_rois; n0 += kRoiBlock) {
        const int64_t n1 = std::min(n0 + kRoiBlock, num_rois);
        tables.build(rp, n0, n1, spatial_scale, pooled_height, pooled_width, sampling_ratio, height, width);
        for (int64_t c = c_begin; c < c_end; ++c) {
          for (int64_t n = n0; n < n1; ++n) {
            scalar_t* plane = gi + (batch[n] * channels + c) * height * width;
            const scalar_t* go = g + (n * channels + c) * bins_per_roi;
            const auto& geo = tables.geometry[n - n0];
            const int64_t per_bin = geo.grid_h * geo.grid_w;
            const Sample<scalar_t>* smp = tables.samples[n - n0].data();
            for (int64_t p = 0; p < bins_per_roi; ++p) {
              const scalar_t gb = go[p] / geo.count;
              for (int64_t i = 0; i < per_bin; ++i, ++smp) {
                if (smp->pos[0] < 0) {
                  continue;
                }
                plane[smp->pos[0]] += gb * smp->w[0];
                plane[smp->pos[1]] += gb * smp->w[1];
                plane[smp->pos[2]] += gb * smp->w[2];
                plane[smp->pos[3]] += gb * smp->w[3];
              }
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
  m.impl("roi_align_forward", &roi_align_forward_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace faster_rcnn
