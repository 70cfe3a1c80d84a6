// CPU emulation of the small part of the CUDA runtime and device language that fastlmk's kernels
// use, so that csrc/cuda/*.cu can be compiled by g++ and run on a machine without a GPU (see
// tools/cuda_emu/check.py). Blocks run one after another; the threads of a block run as real OS
// threads, so __syncthreads, warp shuffles and atomics are exercised for real (a barrier that not
// every live thread reaches hangs, a shuffle with exited lanes aborts). Build with
// -DFASTLMK_CUDA_EMULATION and AddressSanitizer to catch out-of-bounds global/shared accesses.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct float2 { float x, y; };
struct double2 { double x, y; };
struct uint4 { unsigned x, y, z, w; };

typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidConfiguration = 9;
typedef void* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)
#define __shared__ static  // blocks run one at a time, so a static is per-block shared memory

using std::max;
using std::min;

namespace emu {

struct Block {
  int nthreads;
  std::barrier<> block_bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  std::unique_ptr<std::atomic<int>[]> alive;  // live lanes per warp
  std::vector<uint64_t> slots;
  std::vector<unsigned char> smem;
  explicit Block(int n, size_t smem_bytes)
      : nthreads(n), block_bar(n), alive(new std::atomic<int>[(n + 31) / 32]), slots(n), smem(smem_bytes) {
    for (int w = 0; w < (n + 31) / 32; ++w) {
      const int lanes = std::min(32, n - 32 * w);
      warp_bar.emplace_back(new std::barrier<>(lanes));
      alive[w] = lanes;
    }
  }
};

inline thread_local uint3 tl_thread, tl_block;
inline thread_local dim3 tl_block_dim, tl_grid_dim;
inline thread_local Block* tl_ctx = nullptr;
inline thread_local int tl_lin = 0;
inline std::atomic<cudaError_t> last_error{cudaSuccess};

[[noreturn]] inline void fatal(const char* what) {
  std::fprintf(stderr, "cuda_emu: %s\n", what);
  std::abort();
}

template <typename K> auto launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, K kernel) {
  return [=](auto... args) {
    const unsigned nthreads = block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
        grid.z > 65535 || smem > 48 * 1024) {
      last_error = cudaErrorInvalidConfiguration;
      return;
    }
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          Block ctx(int(nthreads), smem);
          // poison dynamic shared memory: reading it before writing shows up as NaN / garbage
          if (smem > 0) std::memset(ctx.smem.data(), 0xff, smem);
          std::vector<std::thread> threads;
          threads.reserve(nthreads);
          for (unsigned t = 0; t < nthreads; ++t) {
            threads.emplace_back([&, t] {
              tl_ctx = &ctx;
              tl_lin = int(t);
              tl_block_dim = block;
              tl_grid_dim = grid;
              tl_block = uint3{bx, by, bz};
              tl_thread = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
              kernel(args...);
              ctx.alive[t / 32].fetch_sub(1);
              ctx.warp_bar[t / 32]->arrive_and_drop();
              ctx.block_bar.arrive_and_drop();  // exited threads no longer hold up __syncthreads
            });
          }
          for (auto& th : threads) th.join();
        }
  };
}

}  // namespace emu

#define threadIdx (::emu::tl_thread)
#define blockIdx (::emu::tl_block)
#define blockDim (::emu::tl_block_dim)
#define gridDim (::emu::tl_grid_dim)
#define FASTLMK_LAUNCH(grid, block, smem, stream, ...) ::emu::launch(grid, block, smem, stream, __VA_ARGS__)

inline void __syncthreads() { emu::tl_ctx->block_bar.arrive_and_wait(); }

template <typename T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  emu::Block& c = *emu::tl_ctx;
  const int w = emu::tl_lin / 32, lane = emu::tl_lin % 32;
  if (mask != 0xffffffffu || c.alive[w].load() != 32) emu::fatal("__shfl_xor_sync with inactive lanes");
  std::memcpy(&c.slots[emu::tl_lin], &v, sizeof(T));
  c.warp_bar[w]->arrive_and_wait();
  T r;
  std::memcpy(&r, &c.slots[w * 32 + (lane ^ lane_mask)], sizeof(T));
  c.warp_bar[w]->arrive_and_wait();
  return r;
}

template <typename T> T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }

inline unsigned char* fastlmk_emu_dynamic_smem() { return emu::tl_ctx->smem.data(); }

inline cudaError_t cudaGetLastError() { return emu::last_error.exchange(cudaSuccess); }
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaErrorInvalidConfiguration ? "invalid configuration argument (emulated)" : "emulated CUDA error";
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
// few "SMs" and few resident blocks, so that the persistent kernels loop over several tiles
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = 2;
  return cudaSuccess;
}
template <typename K> cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, K, int, size_t) {
  *n = 2;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
