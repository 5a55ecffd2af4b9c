// Kernels that check the CUDA emulator itself (tests/model/roi_layers/test_cuda_emu.py): warp shuffles across
// two warps, a missing __syncthreads that the poisoned shared memory exposes, and two broken barrier patterns
// that must raise instead of hanging. Written as CUDA and rewritten like lib/model/csrc/cuda/*.cu.
#include <torch/library.h>

#include <c10/cuda/CUDAStream.h>

namespace {

__global__ void shfl_rotate_kernel(const int64_t* in, int64_t* out, int shift) {
  const int lane = threadIdx.x & 31;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, in[threadIdx.x], (lane + shift) & 31);
}

__global__ void shfl_xor_kernel(const int64_t* in, int64_t* out, int lane_mask) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, in[threadIdx.x], lane_mask);
}

__global__ void neighbour_kernel(int64_t* out, bool barrier) {
  __shared__ int64_t values[64];
  values[threadIdx.x] = 10 * threadIdx.x;
  if (barrier) {
    __syncthreads();
  }
  out[threadIdx.x] = values[(threadIdx.x + 1) % 64];
}

__global__ void warp_waits_for_block_kernel() {
  if (threadIdx.x == 0) {
    __syncwarp();
  } else {
    __syncthreads();
  }
}

__global__ void divergent_shuffle_kernel(int64_t* out) {
  if (threadIdx.x < 16) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, int64_t(threadIdx.x), 0);
  } else {
    __syncwarp();
  }
}

at::Tensor shfl_rotate(const at::Tensor& in, int64_t shift) {
  TORCH_CHECK(in.dim() == 1 && in.size(0) == 64 && in.scalar_type() == at::kLong, "shfl_rotate: 64 int64");
  at::Tensor out = at::empty_like(in);
  shfl_rotate_kernel<<<1, 64, 0, c10::cuda::getCurrentCUDAStream()>>>(in.data_ptr<int64_t>(),
                                                                       out.data_ptr<int64_t>(), shift);
  return out;
}

at::Tensor shfl_xor(const at::Tensor& in, int64_t lane_mask) {
  TORCH_CHECK(in.dim() == 1 && in.size(0) == 64 && in.scalar_type() == at::kLong, "shfl_xor: 64 int64");
  at::Tensor out = at::empty_like(in);
  shfl_xor_kernel<<<1, 64, 0, c10::cuda::getCurrentCUDAStream()>>>(in.data_ptr<int64_t>(), out.data_ptr<int64_t>(),
                                                                   static_cast<int>(lane_mask));
  return out;
}

at::Tensor neighbour(bool barrier) {
  at::Tensor out = at::empty({64}, at::kLong);
  neighbour_kernel<<<2, 64, 0, c10::cuda::getCurrentCUDAStream()>>>(out.data_ptr<int64_t>(), barrier);
  return out;
}

void warp_waits_for_block() {
  warp_waits_for_block_kernel<<<1, 64, 0, c10::cuda::getCurrentCUDAStream()>>>();
}

void divergent_shuffle() {
  at::Tensor out = at::empty({32}, at::kLong);
  divergent_shuffle_kernel<<<1, 32, 0, c10::cuda::getCurrentCUDAStream()>>>(out.data_ptr<int64_t>());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(faster_rcnn_cuda_emu, m) {
  m.def("selftest_shfl_rotate(Tensor input, int shift) -> Tensor", &shfl_rotate);
  m.def("selftest_shfl_xor(Tensor input, int lane_mask) -> Tensor", &shfl_xor);
  m.def("selftest_neighbour(bool barrier) -> Tensor", &neighbour);
  m.def("selftest_warp_waits_for_block() -> ()", &warp_waits_for_block);
  m.def("selftest_divergent_shuffle() -> ()", &divergent_shuffle);
}
