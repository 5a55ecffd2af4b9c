// Stand-in for c10/cuda/CUDAGuard.h in the CUDA emulation build (see ../../../emu_runtime.h).
#pragma once
#include <c10/core/Device.h>

#include "emu_runtime.h"

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
