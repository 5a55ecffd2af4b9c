// Stand-in for c10/cuda/CUDAException.h in the CUDA emulation build (see ../../../emu_runtime.h): a launch
// that fails throws at once, so there is nothing left to check.
#pragma once
#include "emu_runtime.h"

#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)
