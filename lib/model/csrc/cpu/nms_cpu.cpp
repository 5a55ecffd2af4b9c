// Greedy NMS on the CPU with pixel-inclusive IoU (area = (x2 - x1 + 1) * (y2 - y1 + 1)).
// Sorted boxes are copied into coordinate arrays; each kept box runs one branch-free (vectorized) pass that
// clears the live flag of the boxes it suppresses, and the survivors are packed to the front whenever most
// of the range is dead, so kept boxes mostly visit live boxes (torchvision's loop visits every later box).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "../checks.h"

namespace faster_rcnn {

namespace {

// Compares a scalar_t IoU with the double threshold as a double comparison would (see float_threshold).
template <typename scalar_t>
scalar_t cmp_threshold(double t) {
  return static_cast<scalar_t>(t);
}
template <>
float cmp_threshold<float>(double t) {
  return float_threshold(t);
}

// Writes the kept positions (indices into dets) in decreasing score order into keep; returns how many,
// stopping once max_out are kept.
template <typename scalar_t>
int64_t nms_cpu_kernel(const at::Tensor& dets, const at::Tensor& order, double iou_threshold, int64_t max_out,
                       int64_t* keep) {
  // An integer of the coordinates' width keeps the suppression pass a single vectorizable loop.
  using flag_t = std::conditional_t<sizeof(scalar_t) == 8, int64_t, int32_t>;
  const int64_t n = dets.size(0);
  const auto d = dets.accessor<scalar_t, 2>();
  const int64_t* ord = order.data_ptr<int64_t>();
  std::vector<scalar_t> x1(n), y1(n), x2(n), y2(n), area(n);
  std::vector<flag_t> alive(n, 1);
  std::vector<int64_t> id(n);
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = ord[k];
    x1[k] = d[i][0];
    y1[k] = d[i][1];
    x2[k] = d[i][2];
    y2[k] = d[i][3];
    area[k] = (x2[k] - x1[k] + 1) * (y2[k] - y1[k] + 1);
    id[k] = i;
  }
  const scalar_t thresh = cmp_threshold<scalar_t>(iou_threshold);
  scalar_t* __restrict px1 = x1.data();
  scalar_t* __restrict py1 = y1.data();
  scalar_t* __restrict px2 = x2.data();
  scalar_t* __restrict py2 = y2.data();
  scalar_t* __restrict parea = area.data();
  flag_t* __restrict palive = alive.data();
  int64_t* __restrict pid = id.data();
  // Boxes [begin, end) of the packed arrays are still in play (if alive), in decreasing score order.
  int64_t begin = 0, end = n, num_kept = 0;
  while (num_kept < max_out) {
    while (begin < end && !palive[begin]) {
      ++begin;
    }
    if (begin == end) {
      break;
    }
    // The first live box has the highest score of the survivors: keep it and suppress the boxes whose IoU
    // with it is strictly greater than the threshold, as in the original.
    const scalar_t ix1 = px1[begin], iy1 = py1[begin], ix2 = px2[begin], iy2 = py2[begin], iarea = parea[begin];
    keep[num_kept++] = pid[begin];
    ++begin;
    flag_t live = 0;
    for (int64_t j = begin; j < end; ++j) {
      const scalar_t w = std::max(static_cast<scalar_t>(0), std::min(ix2, px2[j]) - std::max(ix1, px1[j]) + 1);
      const scalar_t h = std::max(static_cast<scalar_t>(0), std::min(iy2, py2[j]) - std::max(iy1, py1[j]) + 1);
      const scalar_t inter = w * h;
      const scalar_t ovr = inter / (iarea + parea[j] - inter);
      const flag_t a = ovr > thresh ? 0 : palive[j];
      palive[j] = a;
      live += a;
    }
    // Once most of the range is dead, pack the survivors to the front so later passes skip the dead.
    if (2 * static_cast<int64_t>(live) < end - begin) {
      int64_t m = 0;
      for (int64_t j = begin; j < end; ++j) {
        if (palive[j]) {
          px1[m] = px1[j];
          py1[m] = py1[j];
          px2[m] = px2[j];
          py2[m] = py2[j];
          parea[m] = parea[j];
          pid[m] = pid[j];
          palive[m] = 1;
          ++m;
        }
      }
      begin = 0;
      end = m;
    }
  }
  return num_kept;
}

// Runs NMS and returns the padded keep buffer [N] and the number of kept boxes.
std::pair<at::Tensor, int64_t> nms_cpu_impl(const at::Tensor& dets, const at::Tensor& scores,
                                            double iou_threshold, int64_t max_out, const char* op) {
  check_nms_inputs(dets, scores, iou_threshold, op);
  FRCNN_CHECK(dets.is_cpu(), op, ": expected CPU tensors, got dets on ", dets.device());
  FRCNN_CHECK(dets.scalar_type() == at::kFloat || dets.scalar_type() == at::kDouble, op,
              ": expected float32 or float64 dets on the CPU, got ", dets.scalar_type());
  const int64_t n = dets.size(0);
  at::Tensor keep = at::empty({n}, dets.options().dtype(at::kLong));
  if (n == 0 || max_out == 0) {
    return {keep, 0};
  }
  // A stable descending sort keeps tied scores in input order, so the result is deterministic.
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  int64_t num_kept = 0;
  AT_DISPATCH_FLOATING_TYPES(dets.scalar_type(), "nms_cpu", [&] {
    num_kept = nms_cpu_kernel<scalar_t>(dets, order, iou_threshold, max_out, keep.data_ptr<int64_t>());
  });
  return {keep, num_kept};
}

at::Tensor nms_cpu(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold) {
  auto result = nms_cpu_impl(dets, scores, iou_threshold, std::numeric_limits<int64_t>::max(), "nms");
  return result.first.narrow(0, 0, result.second);
}

std::tuple<at::Tensor, at::Tensor> nms_padded_cpu(const at::Tensor& dets, const at::Tensor& scores,
                                                  double iou_threshold, int64_t max_out) {
  FRCNN_CHECK(max_out >= 0, "nms_padded: expected max_out >= 0, got ", max_out);
  auto result = nms_cpu_impl(dets, scores, iou_threshold, max_out, "nms_padded");
  at::Tensor padded = at::full({max_out}, -1, dets.options().dtype(at::kLong));
  const int64_t k = std::min(result.second, max_out);
  if (k > 0) {
    padded.narrow(0, 0, k).copy_(result.first.narrow(0, 0, k));
  }
  return {padded, at::scalar_tensor(k, dets.options().dtype(at::kLong))};
}

}  // namespace

TORCH_LIBRARY_IMPL(faster_rcnn, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("nms_padded", &nms_padded_cpu);
}

}  // namespace faster_rcnn
