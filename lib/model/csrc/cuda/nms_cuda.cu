// Greedy NMS on the GPU with pixel-inclusive IoU, entirely on the device.
// 1. nms_mask_kernel: for the score-sorted boxes, bit j of mask[i][w] says box 64w + j (later than i) has
//    IoU > threshold with box i (64 x 64 tiles, one 64-bit word per thread).
// 2. nms_sweep_kernel: one block replays the greedy pass over the mask 64 boxes at a time: warp 0 resolves
//    which boxes of word w survive (a serial walk over the tile's diagonal words, broadcast by shuffles) while
//    the other warps OR the rows kept in word w - 1 into the running "removed" bitmap of the words after w;
//    one block barrier per word. Kept indices are written directly, so nothing but the final count (one
//    int64, and only for the variable-size nms) crosses to the host.
#include <torch/library.h>

#include <limits>

#include "../checks.h"
#include "cuda_helpers.cuh"

namespace faster_rcnn {

namespace {

constexpr int kBoxesPerWord = 64;
constexpr int kSweepThreads = 512;
// The removed bitmap lives in shared memory up to this size (N <= 327,680 boxes), in global memory beyond it.
constexpr int64_t kMaxSharedWords = 5120;

// A rounded product that nvcc cannot fuse into the subtraction that follows (it contracts a * b + c into an fma by
// default), so that the IoU, and a keep/suppress decision at the threshold, round as in the CPU kernel.
__device__ inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <typename acc_t>
__device__ inline bool iou_above(const acc_t* a, const acc_t* b, acc_t thresh) {
  const acc_t w = max(min(a[2], b[2]) - max(a[0], b[0]) + acc_t(1), acc_t(0));
  const acc_t h = max(min(a[3], b[3]) - max(a[1], b[1]) + acc_t(1), acc_t(0));
  const acc_t inter = mul_rn(w, h);
  return inter / (a[4] + b[4] - inter) > thresh;
}

template <typename scalar_t, typename acc_t>
__global__ void nms_mask_kernel(int64_t n, int64_t num_words, const scalar_t* __restrict__ boxes, acc_t thresh,
                                unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (row_block > col_block) {
    return;  // only later boxes can be suppressed: the lower triangle is never read
  }
  const int row_size = static_cast<int>(min(n - row_block * kBoxesPerWord, int64_t(kBoxesPerWord)));
  const int col_size = static_cast<int>(min(n - col_block * kBoxesPerWord, int64_t(kBoxesPerWord)));
  __shared__ acc_t col_boxes[kBoxesPerWord][5];  // x1, y1, x2, y2, area
  if (threadIdx.x < col_size) {
    const scalar_t* b = boxes + (col_block * kBoxesPerWord + threadIdx.x) * 4;
    acc_t* s = col_boxes[threadIdx.x];
    s[0] = static_cast<acc_t>(b[0]);
    s[1] = static_cast<acc_t>(b[1]);
    s[2] = static_cast<acc_t>(b[2]);
    s[3] = static_cast<acc_t>(b[3]);
    s[4] = mul_rn(s[2] - s[0] + acc_t(1), s[3] - s[1] + acc_t(1));
  }
  __syncthreads();
  if (threadIdx.x < row_size) {
    const int64_t i = row_block * kBoxesPerWord + threadIdx.x;
    const scalar_t* b = boxes + i * 4;
    acc_t box[5] = {static_cast<acc_t>(b[0]), static_cast<acc_t>(b[1]), static_cast<acc_t>(b[2]),
                    static_cast<acc_t>(b[3]), acc_t(0)};
    // rounded products, like the intersection: a fused multiply-add into the union would change decisions
    box[4] = mul_rn(box[2] - box[0] + acc_t(1), box[3] - box[1] + acc_t(1));
    unsigned long long bits = 0;
    for (int j = (row_block == col_block) ? threadIdx.x + 1 : 0; j < col_size; ++j) {
      if (iou_above(box, col_boxes[j], thresh)) {
        bits |= 1ULL << j;
      }
    }
    mask[i * num_words + col_block] = bits;
  }
}

// The greedy pass, pipelined so that only warp 0's work is on the critical path. At the start of step `word`,
// removed[w] (w >= word) holds the suppressions by every box kept in the words before word - 1, and the rows of
// the boxes kept in word - 1 are in s_rows[(word - 1) & 1]. In one step, with one block barrier:
// - warp 0 ORs those rows' bits for this word into removed[word], resolves which boxes of the word survive (a
//   serial walk over the diagonal words, broadcast by shuffles) and writes their indices and rows;
// - the other warps OR the same rows into every later word, so that removed[] holds them by the next step.
__global__ void nms_sweep_kernel(int64_t n, int64_t num_words, const unsigned long long* __restrict__ mask,
                                 const int64_t* __restrict__ order, int64_t max_out, int64_t* __restrict__ keep,
                                 int64_t* __restrict__ num_kept, unsigned long long* removed_global) {
  extern __shared__ unsigned long long removed_shared[];
  unsigned long long* removed = removed_global != nullptr ? removed_global : removed_shared;
  __shared__ int64_t s_count;
  __shared__ int s_num_rows[2];
  __shared__ int64_t s_rows[2][kBoxesPerWord];  // double-buffered: written in one step, read in the next
  if (removed_global == nullptr) {
    for (int64_t w = threadIdx.x; w < num_words; w += blockDim.x) {
      removed[w] = 0;
    }
  }
  if (threadIdx.x == 0) {
    s_count = 0;
    s_num_rows[1] = 0;  // no word before the first
  }
  // Diagonal words (which later boxes of a word each box of that word suppresses) do not depend on the
  // sweep's state, so warp 0 loads the next word's while it works on the current one.
  const int lane = threadIdx.x & 31;
  const auto load_diagonal = [&](int64_t word, unsigned long long& lo, unsigned long long& hi) {
    const int64_t base = word * kBoxesPerWord;
    const int64_t rows = min(n - base, int64_t(kBoxesPerWord));
    lo = (word < num_words && lane < rows) ? mask[(base + lane) * num_words + word] : 0ULL;
    hi = (word < num_words && lane + 32 < rows) ? mask[(base + lane + 32) * num_words + word] : 0ULL;
  };
  unsigned long long next_lo = 0, next_hi = 0;
  if (threadIdx.x < 32) {
    load_diagonal(0, next_lo, next_hi);
  }
  __syncthreads();
  for (int64_t word = 0; word < num_words; ++word) {
    const int cur = static_cast<int>(word & 1), prev = cur ^ 1;
    const int num_prev = s_num_rows[prev];
    const int64_t* prev_rows = s_rows[prev];
    if (threadIdx.x < 32) {
      const int64_t base = word * kBoxesPerWord;
      const int rows = static_cast<int>(min(n - base, int64_t(kBoxesPerWord)));
      const unsigned long long diag_lo = next_lo, diag_hi = next_hi;
      load_diagonal(word + 1, next_lo, next_hi);
      unsigned long long bits = 0;
      for (int k = lane; k < num_prev; k += 32) {
        bits |= mask[prev_rows[k] * num_words + word];
      }
      for (int offset = 16; offset > 0; offset >>= 1) {
        bits |= __shfl_xor_sync(0xffffffffu, bits, offset);
      }
      const unsigned long long valid = rows == kBoxesPerWord ? ~0ULL : (1ULL << rows) - 1;
      unsigned long long rem = removed[word] | bits;
      const int64_t count = s_count;
      const int64_t room = max_out - count;
      // Every lane runs the same walk (uniform control flow), visiting only the boxes that survive.
      unsigned long long kept = 0;
      int num_block_kept = 0;
      unsigned long long candidates = ~rem & valid;
      while (candidates != 0 && num_block_kept < room) {
        const int b = __ffsll(static_cast<long long>(candidates)) - 1;
        const unsigned long long lo = __shfl_sync(0xffffffffu, diag_lo, b & 31);
        const unsigned long long hi = __shfl_sync(0xffffffffu, diag_hi, b & 31);
        kept |= 1ULL << b;
        ++num_block_kept;
        rem |= b < 32 ? lo : hi;
        // Drop b and everything before it; boxes after it that b suppresses are now in rem.
        candidates = ~rem & valid & (b == 63 ? 0ULL : ~((2ULL << b) - 1));
      }
      for (int b = lane; b < kBoxesPerWord; b += 32) {
        if ((kept >> b) & 1ULL) {
          const int pos = __popcll(kept & ((1ULL << b) - 1));
          keep[count + pos] = order[base + b];
          s_rows[cur][pos] = base + b;
        }
      }
      __syncwarp();
      if (lane == 0) {
        s_count = count + num_block_kept;
        s_num_rows[cur] = num_block_kept;
      }
    } else if (num_prev > 0) {
      // OR the previous word's kept rows into the words after this one. Each thread takes later words and a
      // slice of the rows (more slices when fewer words are left), so its loads are few and independent.
      // (num_words <= 65535, so 32-bit index math suffices.)
      const int later = static_cast<int>(num_words - word - 1);
      const int workers = static_cast<int>(blockDim.x) - 32;
      const int u = static_cast<int>(threadIdx.x) - 32;
      const int span = min(later, workers);  // neighbouring threads take neighbouring words: coalesced loads
      const int slices = workers / max(span, 1);
      const int slice = span > 0 ? u / span : slices;
      for (int w = span > 0 ? u % span : later; slice < slices && w < later; w += span) {
        const int64_t col = word + 1 + w;
        unsigned long long bits = 0;
        for (int k = slice; k < num_prev; k += slices) {
          bits |= mask[prev_rows[k] * num_words + col];
        }
        if (bits != 0) {
          atomicOr(&removed[col], bits);
        }
      }
    }
    __syncthreads();
    if (s_count >= max_out) {
      break;
    }
  }
  // the padding after the kept boxes (keep is not filled beforehand: one kernel launch less per call)
  for (int64_t i = s_count + threadIdx.x; i < max_out; i += blockDim.x) {
    keep[i] = -1;
  }
  if (threadIdx.x == 0) {
    *num_kept = s_count;
  }
}

template <typename acc_t>
acc_t device_threshold(double t) {
  return static_cast<acc_t>(t);
}
template <>
float device_threshold<float>(double t) {
  return float_threshold(t);
}

// keep [max_out] (padded with -1) and the number kept (a 0-dim device tensor).
std::tuple<at::Tensor, at::Tensor> nms_cuda_impl(const at::Tensor& dets, const at::Tensor& scores,
                                                 double iou_threshold, int64_t max_out, const char* op) {
  check_nms_inputs(dets, scores, iou_threshold, op);
  check_cuda_tensor(dets, "dets", op);
  FRCNN_CHECK(max_out >= 0, op, ": expected max_out >= 0, got ", max_out);
  const c10::cuda::CUDAGuard guard(dets.device());
  const int64_t n = dets.size(0);
  const at::TensorOptions long_options = dets.options().dtype(at::kLong);
  if (n == 0 || max_out == 0) {
    return {at::full({max_out}, -1, long_options), at::zeros({}, long_options)};
  }
  // the sweep kernel writes all of both
  at::Tensor keep = at::empty({max_out}, long_options);
  at::Tensor num_kept = at::empty({}, long_options);
  const int64_t num_words = (n + kBoxesPerWord - 1) / kBoxesPerWord;
  FRCNN_CHECK(num_words <= 65535, op, ": expected at most ", 65535 * kBoxesPerWord, " boxes, got ", n);
  // A stable descending sort keeps tied scores in input order, so the result is deterministic.
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted = dets.index_select(0, order).contiguous();
  at::Tensor mask = at::empty({n * num_words}, dets.options().dtype(at::kLong));
  auto* mask_ptr = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dets.scalar_type(), "nms_mask_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const dim3 grid(static_cast<unsigned int>(num_words), static_cast<unsigned int>(num_words));
    nms_mask_kernel<scalar_t, acc_t><<<grid, kBoxesPerWord, 0, stream>>>(
        n, num_words, sorted.data_ptr<scalar_t>(), device_threshold<acc_t>(iou_threshold), mask_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor removed_global;
  size_t shared_bytes = 0;
  if (num_words <= kMaxSharedWords) {
    shared_bytes = num_words * sizeof(unsigned long long);
  } else {
    removed_global = at::zeros({num_words}, dets.options().dtype(at::kLong));
  }
  nms_sweep_kernel<<<1, kSweepThreads, shared_bytes, stream>>>(
      n, num_words, mask_ptr, order.data_ptr<int64_t>(), max_out, keep.data_ptr<int64_t>(),
      num_kept.data_ptr<int64_t>(),
      removed_global.defined() ? reinterpret_cast<unsigned long long*>(removed_global.data_ptr<int64_t>())
                               : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {keep, num_kept};
}

at::Tensor nms_cuda(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold) {
  auto [keep, num_kept] = nms_cuda_impl(dets, scores, iou_threshold, dets.dim() == 2 ? dets.size(0) : 0, "nms");
  // The result's length is data-dependent, so this is the one device-to-host copy (a single int64);
  // nms_padded avoids it.
  return keep.narrow(0, 0, num_kept.item<int64_t>());
}

std::tuple<at::Tensor, at::Tensor> nms_padded_cuda(const at::Tensor& dets, const at::Tensor& scores,
                                                   double iou_threshold, int64_t max_out) {
  return nms_cuda_impl(dets, scores, iou_threshold, max_out, "nms_padded");
}

}  // namespace

TORCH_LIBRARY_IMPL(faster_rcnn, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("nms_padded", &nms_padded_cuda);
}

}  // namespace faster_rcnn
