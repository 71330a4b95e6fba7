// utils.cuh: small device helpers shared by every stage.
//   - bf16 <-> float with integer bit operations (no bf16 instructions: runs on sm_75 too)
//   - SiLU, warp reductions, an L2 prefetch hint, memory-ordering primitives (acquire/release at
//     GPU scope)
//   - CUDA_CHECK for host code
#pragma once
#include <cstdint>
#ifndef __CUDACC_RTC__  // host-only; NVRTC (scripts/nvrtc12_check.py) builds in what device code needs
#include <cstdio>
#include <cuda_runtime.h>
#endif

typedef uint16_t bf16_t;  // raw bfloat16 bits

__host__ __device__ __forceinline__ float bf16_to_float(bf16_t v) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(static_cast<uint32_t>(v) << 16);
#else
  uint32_t u = static_cast<uint32_t>(v) << 16; float f; memcpy(&f, &u, 4); return f;
#endif
}

// Round to nearest even, as torch's float -> bfloat16 conversion does.
__device__ __forceinline__ bf16_t float_to_bf16(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<bf16_t>(u >> 16);
}

// 8 bf16 packed in a uint4 -> 8 floats.
__device__ __forceinline__ void unpack_bf16x8(const uint4& w, float (&f)[8]) {
  const uint32_t v[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(v[i] << 16);
    f[2 * i + 1] = __uint_as_float(v[i] & 0xffff0000u);
  }
}

// Asks L2 for the 128-byte line holding p (a hint: nothing waits on it).
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" :: "l"(p)); }

__device__ __forceinline__ float silu(float g) { return g / (1.f + expf(-g)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Loads of data that other blocks write during this launch must not use the read-only
// (non-coherent) path; .cg reads from L2, where the writer's release made them visible.
__device__ __forceinline__ float4 ld_cg_f4(const float* p) { return __ldcg(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ float ld_cg(const float* p) { return __ldcg(p); }

// Weights never change during a launch: the read-only path with no L1 allocation.
__device__ __forceinline__ uint4 ld_weight16(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

// ---- GPU-scope release/acquire, used by the barriers (see barriers.cuh for why) -------------
__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
  unsigned v;
#if __CUDA_ARCH__ >= 700
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
#else
  v = *(volatile const unsigned*)p; __threadfence();
#endif
  return v;
}

__device__ __forceinline__ void red_release_gpu_add(unsigned* p, unsigned v) {
#if __CUDA_ARCH__ >= 700
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" :: "l"(p), "r"(v) : "memory");
#else
  __threadfence(); atomicAdd(p, v);
#endif
}

// clock64 read after v is computed (timing builds: the input orders it after v's producers).
__device__ __forceinline__ long long clock64_after(float v) {
  long long t;
  asm volatile("{ .reg .f32 d; mov.f32 d, %1; mov.u64 %0, %%clock64; }" : "=l"(t) : "f"(v) : "memory");
  return t;
}

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

#define CUDA_CHECK(call)                                                              \
  do {                                                                                \
    cudaError_t err__ = (call);                                                       \
    if (err__ != cudaSuccess) {                                                       \
      fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(err__),        \
              __FILE__, __LINE__, cudaGetErrorString(err__));                         \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)
