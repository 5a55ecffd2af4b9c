// Stand-in for c10/cuda/CUDAStream.h in the CUDA emulation build (see ../../../emu_runtime.h): one stream.
#pragma once
#include "emu_runtime.h"

namespace c10::cuda {
struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(int8_t = -1) { return {}; }
}  // namespace c10::cuda
