// A small CUDA runtime on the CPU, so that the project's CUDA kernels (lib/model/csrc/cuda/*.cu) run in the test
// suite on machines without a GPU. tests/model/roi_layers/emu_build.py rewrites the .cu files into C++ that calls
// emu::launch instead of <<<...>>> and compiles them against this header and the stand-in c10/cuda headers in
// include/.
//
// Model: the blocks of a launch run one after another; the threads of a block are fibers (ucontext) switched
// cooperatively in one OS thread. A fiber runs until it reaches __syncthreads, a warp operation or its end;
// then the scheduler runs the next one. __syncthreads releases the block when every thread that has not
// returned waits at it; __syncwarp and __shfl_sync (full masks only) release a warp when all its lanes wait at
// the same kind of operation. A barrier that can never be released (threads waiting at different barriers, a
// warp whose lanes disagree or some of whose lanes returned) raises an error instead of hanging. The order in
// which runnable fibers run can be forward, reversed or shuffled (emu::Config::schedule), so results that
// depend on the order of threads between two barriers show up as differences between schedules. Shared memory
// (static and dynamic, at the start of every block) and the buffers the host code takes from at::empty are
// filled with 0xA5 bytes, so reads of memory nobody wrote show up as garbage; a canary after the dynamic shared
// memory catches writes past its end. Built with -fsanitize=address,undefined (emu_build.build(asan=True)), reads
// and writes outside the tensors and undefined arithmetic (an oversized shift, signed overflow) are caught too.
//
// One launch runs at a time (the scheduler's state is global): the emulated ops are not for concurrent threads.
//
// What it cannot check: timing, the memory model of a real GPU (fibers never interleave between barriers),
// nvcc's floating-point contraction, and the hardware's own limits beyond the launch checks below.
#pragma once

#include <ucontext.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

using cudaStream_t = void*;

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// CUDA's min/max overloads for the arithmetic types the kernels use.
using std::max;
using std::min;

namespace emu {

enum Schedule : int64_t { kForward = 0, kReverse = 1, kShuffled = 2 };

struct Config {
  int64_t grid_cap = 65535 * 8;         // blocks_for's cap; small values make grid-stride loops iterate
  int64_t max_shared_words = 5120;      // nms_cuda's shared-memory bitmap limit; small values test the global path
  bool force_int64_index = false;       // launch_with_index_type takes the 64-bit path
  int64_t schedule = kForward;
  uint64_t seed = 0;                    // for kShuffled
  int64_t launches = 0;                 // kernels launched since the last configure()
};

inline Config& config() {
  static Config c;
  return c;
}

enum class State { kRunnable, kWaitBlock, kWaitWarp, kDone };

// Which warp operation a lane waits at: lanes of one warp must meet at the same kind.
enum WarpOp : int { kSyncwarp = 1, kShflWrite = 2, kShflRead = 3 };

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  uint3 thread_idx{0, 0, 0};
  int linear = 0;
  State state = State::kRunnable;
  int warp_op = 0;
};

struct Block {
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  std::vector<unsigned char> dynamic_shared;
  std::vector<uint64_t> warp_slots;
  std::vector<const void*> poisoned_shared;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
  std::exception_ptr error;
};

inline Block*& current_block() {
  static Block* block = nullptr;
  return block;
}

inline Block& block() {
  Block* b = current_block();
  if (b == nullptr) {
    throw std::logic_error("emu: a device function was called outside a kernel launch");
  }
  return *b;
}

constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kMaxDynamicShared = 48 * 1024;  // without cudaFuncSetAttribute, as on every GPU since Kepler
// Dynamic shared memory is followed by this many canary bytes: a read past the end gets them (garbage), a write
// past the end is reported when the block ends.
constexpr size_t kCanaryBytes = 4096;
constexpr unsigned char kCanary = 0x5A;

inline std::vector<std::unique_ptr<char[]>>& stack_pool() {
  static std::vector<std::unique_ptr<char[]>> pool;
  return pool;
}

inline void fiber_main() {
  Block& b = block();
  try {
    b.body(b.body_arg);
  } catch (...) {
    if (!b.error) {
      b.error = std::current_exception();
    }
  }
  b.current->state = State::kDone;
  // returning resumes uc_link, the scheduler
}

inline void wait(State state, int warp_op) {
  Block& b = block();
  Fiber* f = b.current;
  f->state = state;
  f->warp_op = warp_op;
  swapcontext(&f->context, &b.scheduler);
}

inline std::string describe(const Block& b) {
  std::ostringstream s;
  s << "block (" << b.block_idx.x << ", " << b.block_idx.y << ", " << b.block_idx.z << "):";
  int shown = 0;
  for (const Fiber& f : b.fibers) {
    if (f.state == State::kDone || shown >= 8) {
      continue;
    }
    ++shown;
    const char* at = f.state == State::kWaitBlock ? "__syncthreads"
                     : f.state == State::kRunnable ? "no barrier"
                     : f.warp_op == kSyncwarp ? "__syncwarp"
                                              : "__shfl_sync";
    s << " thread " << f.linear << " at " << at << ";";
  }
  return s.str();
}

// Releases the fibers whose barrier is complete; false when nothing can be released.
inline bool release(Block& b) {
  bool released = false;
  const int n = static_cast<int>(b.fibers.size());
  for (int w = 0; w * 32 < n; ++w) {
    const int lo = w * 32, hi = std::min(n, lo + 32);
    int waiting = 0, done = 0, op = 0;
    bool same_op = true;
    for (int i = lo; i < hi; ++i) {
      const Fiber& f = b.fibers[i];
      if (f.state == State::kWaitWarp) {
        if (waiting > 0 && f.warp_op != op) {
          same_op = false;
        }
        op = f.warp_op;
        ++waiting;
      } else if (f.state == State::kDone) {
        ++done;
      }
    }
    if (waiting == 0) {
      continue;
    }
    if (!same_op) {
      throw std::runtime_error("emu: lanes of warp " + std::to_string(w) +
                               " wait at different warp operations (divergent __shfl_sync/__syncwarp); " +
                               describe(b));
    }
    if (waiting + done == hi - lo) {
      if (done > 0) {
        throw std::runtime_error("emu: a full-mask warp operation in warp " + std::to_string(w) +
                                 " after some of its lanes returned; " + describe(b));
      }
      for (int i = lo; i < hi; ++i) {
        b.fibers[i].state = State::kRunnable;
      }
      released = true;
    }
  }
  if (released) {
    return true;
  }
  bool any_block = false;
  for (const Fiber& f : b.fibers) {
    if (f.state == State::kWaitWarp) {
      return false;
    }
    any_block = any_block || f.state == State::kWaitBlock;
  }
  if (!any_block) {
    return false;
  }
  for (Fiber& f : b.fibers) {
    if (f.state == State::kWaitBlock) {
      f.state = State::kRunnable;
    }
  }
  return true;
}

inline void run_block(Block& b, std::mt19937_64& rng) {
  const int n = static_cast<int>(b.block_dim.x * b.block_dim.y * b.block_dim.z);
  auto& pool = stack_pool();
  while (static_cast<int>(pool.size()) < n) {
    pool.emplace_back(new char[kStackBytes]);
  }
  b.fibers.assign(n, Fiber{});
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.linear = i;
    f.thread_idx = uint3{static_cast<unsigned int>(i % b.block_dim.x),
                         static_cast<unsigned int>((i / b.block_dim.x) % b.block_dim.y),
                         static_cast<unsigned int>(i / (b.block_dim.x * b.block_dim.y))};
    f.stack = pool[i].get();
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, &fiber_main, 0);
  }
  const int64_t schedule = config().schedule;
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) {
    order[i] = schedule == kReverse ? n - 1 - i : i;
  }
  while (true) {
    if (schedule == kShuffled) {
      std::shuffle(order.begin(), order.end(), rng);  // a new order for every stretch between barriers
    }
    for (const int i : order) {
      Fiber& f = b.fibers[i];
      if (f.state != State::kRunnable) {
        continue;
      }
      b.current = &f;
      swapcontext(&b.scheduler, &f.context);
      b.current = nullptr;
      if (b.error) {
        std::rethrow_exception(b.error);
      }
    }
    if (std::all_of(b.fibers.begin(), b.fibers.end(), [](const Fiber& f) { return f.state == State::kDone; })) {
      return;
    }
    if (!release(b)) {
      throw std::runtime_error("emu: deadlock, no barrier can complete; " + describe(b));
    }
  }
}

struct BlockScope {
  explicit BlockScope(Block* b) { current_block() = b; }
  ~BlockScope() { current_block() = nullptr; }
};

template <typename Tuple, typename Kernel>
struct Invocation {
  Kernel kernel;
  Tuple args;
  static void run(void* self) {
    auto* inv = static_cast<Invocation*>(self);
    std::apply(inv->kernel, inv->args);
  }
};

// kernel<<<grid, block, shared_bytes, stream>>>(args...) becomes emu::launch(kernel, grid, block, shared_bytes,
// stream, args...). The arguments are converted to the kernel's parameter types once, as a launch does.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block_dim, size_t shared_bytes, cudaStream_t,
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "emu::launch: wrong number of kernel arguments");
  const uint64_t threads = uint64_t(block_dim.x) * block_dim.y * block_dim.z;
  if (threads == 0 || threads > 1024 || block_dim.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) {
    std::ostringstream s;
    s << "emu: invalid configuration argument: grid (" << grid.x << ", " << grid.y << ", " << grid.z
      << "), block (" << block_dim.x << ", " << block_dim.y << ", " << block_dim.z << ")";
    throw std::runtime_error(s.str());
  }
  if (shared_bytes > kMaxDynamicShared) {
    throw std::runtime_error("emu: " + std::to_string(shared_bytes) + " bytes of dynamic shared memory, over the " +
                             std::to_string(kMaxDynamicShared) + " a kernel gets without cudaFuncSetAttribute");
  }
  ++config().launches;
  using Tuple = std::tuple<std::decay_t<Params>...>;
  Invocation<Tuple, void (*)(Params...)> inv{kernel, Tuple(static_cast<std::decay_t<Params>>(args)...)};
  std::mt19937_64 rng(config().seed);
  for (unsigned int z = 0; z < grid.z; ++z) {
    for (unsigned int y = 0; y < grid.y; ++y) {
      for (unsigned int x = 0; x < grid.x; ++x) {
        Block b;
        b.block_idx = uint3{x, y, z};
        b.block_dim = block_dim;
        b.grid_dim = grid;
        b.dynamic_shared.assign(shared_bytes + kCanaryBytes, 0xA5);
        std::memset(b.dynamic_shared.data() + shared_bytes, kCanary, kCanaryBytes);
        b.warp_slots.assign((threads + 31) / 32 * 32, 0);
        b.body = &decltype(inv)::run;
        b.body_arg = &inv;
        BlockScope scope(&b);
        run_block(b, rng);
        for (size_t i = shared_bytes; i < b.dynamic_shared.size(); ++i) {
          if (b.dynamic_shared[i] != kCanary) {
            throw std::runtime_error("emu: block (" + std::to_string(x) + ", " + std::to_string(y) + ", " +
                                     std::to_string(z) + ") wrote past the " + std::to_string(shared_bytes) +
                                     " bytes of dynamic shared memory it was launched with (at byte " +
                                     std::to_string(i) + ")");
          }
        }
      }
    }
  }
}

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(block().dynamic_shared.data());
}

// A `__shared__ T name[...];` declaration becomes `static T name[...]; emu::poison_shared(&name, sizeof(name));`:
// one object for the block (blocks run in turn, so the next block reuses it), filled with 0xA5 bytes by the
// first thread of each block that reaches the declaration, before any thread can write it.
inline void poison_shared(void* address, size_t bytes) {
  Block& b = block();
  if (std::find(b.poisoned_shared.begin(), b.poisoned_shared.end(), address) == b.poisoned_shared.end()) {
    b.poisoned_shared.push_back(address);
    std::memset(address, 0xA5, bytes);
  }
}

inline const uint3& thread_idx() { return block().current->thread_idx; }
inline const uint3& block_idx() { return block().block_idx; }
inline const dim3& block_dim() { return block().block_dim; }
inline const dim3& grid_dim() { return block().grid_dim; }

// at::empty in the emulated host code: the same tensor, filled with 0xA5 bytes.
inline at::Tensor poisoned_empty(at::IntArrayRef size, const at::TensorOptions& options) {
  at::Tensor t = at::empty(size, options);
  if (t.numel() > 0) {
    std::memset(t.data_ptr(), 0xA5, t.numel() * t.element_size());
  }
  return t;
}

inline void configure(int64_t grid_cap, int64_t max_shared_words, bool force_int64_index, int64_t schedule,
                      int64_t seed) {
  TORCH_CHECK(grid_cap >= 1 && max_shared_words >= 0 && schedule >= 0 && schedule <= 2,
              "emu.configure: bad arguments");
  Config& c = config();
  c.grid_cap = grid_cap;
  c.max_shared_words = max_shared_words;
  c.force_int64_index = force_int64_index;
  c.schedule = schedule;
  c.seed = static_cast<uint64_t>(seed);
  c.launches = 0;
}

inline int64_t launches() { return config().launches; }

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())

inline void __syncthreads() { ::emu::wait(::emu::State::kWaitBlock, 0); }

inline void __syncwarp(unsigned int mask = 0xffffffffu) {
  if (mask != 0xffffffffu) {
    throw std::runtime_error("emu: only full-warp masks are emulated");
  }
  ::emu::wait(::emu::State::kWaitWarp, ::emu::kSyncwarp);
}

template <typename T>
T __shfl_sync(unsigned int mask, T value, int src_lane, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value, "emu: __shfl_sync type");
  if (mask != 0xffffffffu || width != 32) {
    throw std::runtime_error("emu: only full-warp masks and width 32 are emulated");
  }
  ::emu::Block& b = ::emu::block();
  const int linear = b.current->linear;
  uint64_t* slots = b.warp_slots.data() + (linear / 32) * 32;
  std::memcpy(&slots[linear % 32], &value, sizeof(T));
  ::emu::wait(::emu::State::kWaitWarp, ::emu::kShflWrite);
  T out;
  std::memcpy(&out, &slots[src_lane & 31], sizeof(T));
  ::emu::wait(::emu::State::kWaitWarp, ::emu::kShflRead);  // nobody overwrites a slot before every lane read it
  return out;
}

// lane i reads lane i ^ lane_mask's value (a butterfly, as the warp reductions use it)
template <typename T>
T __shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = 32) {
  return __shfl_sync(mask, value, (::emu::block().current->linear % 32) ^ lane_mask, width);
}

inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }

// Fibers never run at the same time, so the atomics are plain read-modify-writes.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

inline unsigned long long atomicOr(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  *address = old | value;
  return old;
}
