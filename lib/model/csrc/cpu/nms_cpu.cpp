// Greedy NMS on the CPU with pixel-inclusive IoU (area = (x2 - x1 + 1) * (y2 - y1 + 1)).
// The boxes still in play are kept in packed coordinate arrays that shrink as boxes are suppressed, so each
// kept box only visits the survivors instead of every later box (torchvision's loop visits all of them).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
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
  const int64_t n = dets.size(0);
  const auto d = dets.accessor<scalar_t, 2>();
  const int64_t* ord = order.data_ptr<int64_t>();
  std::vector<scalar_t> x1(n), y1(n), x2(n), y2(n), area(n);
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
  int64_t remaining = n;
  int64_t num_kept = 0;
  scalar_t* px1 = x1.data();
  scalar_t* py1 = y1.data();
  scalar_t* px2 = x2.data();
  scalar_t* py2 = y2.data();
  scalar_t* parea = area.data();
  int64_t* pid = id.data();
  while (remaining > 0 && num_kept < max_out) {
    // The head of the packed arrays has the highest score of the survivors: keep it.
    const scalar_t ix1 = px1[0], iy1 = py1[0], ix2 = px2[0], iy2 = py2[0], iarea = parea[0];
    keep[num_kept++] = pid[0];
    int64_t m = 0;
    for (int64_t j = 1; j < remaining; ++j) {
      const scalar_t jx1 = px1[j], jy1 = py1[j], jx2 = px2[j], jy2 = py2[j], jarea = parea[j];
      const int64_t jid = pid[j];
      const scalar_t w = std::max(static_cast<scalar_t>(0), std::min(ix2, jx2) - std::max(ix1, jx1) + 1);
      const scalar_t h = std::max(static_cast<scalar_t>(0), std::min(iy2, jy2) - std::max(iy1, jy1) + 1);
      const scalar_t inter = w * h;
      const scalar_t ovr = inter / (iarea + jarea - inter);
      // Branch-free compaction: always write the survivor slot, advance it only if j survives (m <= j, so
      // nothing unread is overwritten). Suppression is strictly IoU > threshold, as in the original.
      px1[m] = jx1;
      py1[m] = jy1;
      px2[m] = jx2;
      py2[m] = jy2;
      parea[m] = jarea;
      pid[m] = jid;
      m += !(ovr > thresh);
    }
    remaining = m;
  }
  return num_kept;
}

// Runs NMS and returns the padded keep buffer [N] and the number of kept boxes.
std::pair<at::Tensor, int64_t> nms_cpu_impl(const at::Tensor& dets, const at::Tensor& scores,
                                            double iou_threshold, int64_t max_out, const char* op) {
  check_nms_inputs(dets, scores, iou_threshold, op);
  TORCH_CHECK(dets.is_cpu(), op, ": expected CPU tensors, got dets on ", dets.device());
  TORCH_CHECK(dets.scalar_type() == at::kFloat || dets.scalar_type() == at::kDouble, op,
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
  TORCH_CHECK(max_out >= 0, "nms_padded: expected max_out >= 0, got ", max_out);
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
