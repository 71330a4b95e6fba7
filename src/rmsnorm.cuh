// rmsnorm.cuh: activation vectors in registers, and RMSNorm computed redundantly by every warp.
//
// A K-vector is spread over a warp the way gemv.cuh reads weight rows: lane l holds elements
// (c*32 + l)*8 .. +7 for c = 0 .. K/256-1, in x[c*8 .. c*8+7]. Every warp of every block loads
// the whole vector (4-12 KB from L2) and normalizes it itself: no barrier, no shared memory,
// and all warps compute bit-identical values (same data, same order).
#pragma once
#include "utils.cuh"

template <int K>
__device__ __forceinline__ void load_x_f32(const float* src, float (&x)[K / 32]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int c = 0; c < K / 256; ++c) {
    const float* p = src + (c * 32 + lane) * 8;
    const float4 a = ld_cg_f4(p), b = ld_cg_f4(p + 4);
    x[c * 8 + 0] = a.x; x[c * 8 + 1] = a.y; x[c * 8 + 2] = a.z; x[c * 8 + 3] = a.w;
    x[c * 8 + 4] = b.x; x[c * 8 + 5] = b.y; x[c * 8 + 6] = b.z; x[c * 8 + 7] = b.w;
  }
}

template <int K>
__device__ __forceinline__ void load_x_bf16(const bf16_t* src, float (&x)[K / 32]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int c = 0; c < K / 256; ++c) {
    float f[8];
    unpack_bf16x8(ld_weight16(src + (c * 32 + lane) * 8), f);
#pragma unroll
    for (int j = 0; j < 8; ++j) x[c * 8 + j] = f[j];
  }
}

// This lane's register share of a staged K-vector (rmsnorm.cuh's layout).
template <int K>
__device__ __forceinline__ void load_x_smem(const float* xs, float (&x)[K / 32]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int c = 0; c < K / 256; ++c) {
    const float4 a = *reinterpret_cast<const float4*>(xs + (c * 32 + lane) * 8);
    const float4 b = *reinterpret_cast<const float4*>(xs + (c * 32 + lane) * 8 + 4);
    x[c * 8 + 0] = a.x; x[c * 8 + 1] = a.y; x[c * 8 + 2] = a.z; x[c * 8 + 3] = a.w;
    x[c * 8 + 4] = b.x; x[c * 8 + 5] = b.y; x[c * 8 + 6] = b.z; x[c * 8 + 7] = b.w;
  }
}

// The other way: this lane's register share into a K-vector in shared memory (one warp writes it).
template <int K>
__device__ __forceinline__ void store_x_smem(const float (&x)[K / 32], float* xs) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int c = 0; c < K / 256; ++c)
#pragma unroll
    for (int j = 0; j < 8; ++j) xs[(c * 32 + lane) * 8 + j] = x[c * 8 + j];
}

// x <- x * rsqrt(mean(x^2) + eps) * w, as HF Qwen3RMSNorm in float32. The weight w comes in
// registers (load_x_bf16 of the norm vector), loaded before the barrier that guards x, so the
// norm adds no memory round trip after it.
template <int K>
__device__ __forceinline__ void rmsnorm_redundant(float (&x)[K / 32], const float (&w)[K / 32], float eps) {
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < K / 32; ++i) ss += x[i] * x[i];
  const float inv = rsqrtf(warp_sum(ss) / K + eps);
#pragma unroll
  for (int i = 0; i < K / 32; ++i) x[i] = (x[i] * inv) * w[i];
}
