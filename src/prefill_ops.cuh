// prefill_ops.cuh: the bulk prefill's elementwise work, fused (host/prefill.py calls these
// through ctypes on PyTorch's stream, inside its CUDA graphs; cuBLAS and flash attention do the
// matrix work). A short prompt's prefill is bound by kernel launches: these three kernels stand
// in for ~12 PyTorch kernels per layer.
//   mk_prefill_rmsnorm:  x = bf16(rmsnorm(h) * w)                     h: (T, hidden) float32
//   mk_prefill_qkv:      per-head RMSNorm of q and k, RoPE, q -> (q_heads, T, head_dim) bf16,
//                        k and v -> this layer's KV cache at positions start.. (bf16)
//   mk_prefill_silu_mul: act = bf16(silu(gate) * up)                 gu: (T, inter, 2) float32
// Each returns 0, or a CUDA error code with the launch's error. Checked against the PyTorch
// path by tests/test_gpu.py (test_prefill_kernels_match_the_pytorch_ops). Numerics follow PyTorch's float32
// ops (rsqrt(mean(x^2) + eps), cosf/sinf of position * inv_freq) with one rounding to bf16.
#pragma once
#ifndef __CUDACC_RTC__  // host-only; NVRTC (scripts/nvrtc12_check.py) sees the kernels only
#include <cuda_runtime.h>
#endif

#include "config.cuh"
#include "utils.cuh"

constexpr int kPrefillThreads = 256;

// One block per row of h: kHidden / 256 values per thread.
__global__ void __launch_bounds__(kPrefillThreads) prefill_rmsnorm(const float* __restrict__ h,
                                                                   const float* __restrict__ w,
                                                                   bf16_t* __restrict__ out, float eps) {
  constexpr int kPer = kHidden / kPrefillThreads;
  static_assert(kHidden % kPrefillThreads == 0, "hidden must be a multiple of the block size");
  __shared__ float part[kPrefillThreads / 32];
  const float* row = h + (size_t)blockIdx.x * kHidden;
  float v[kPer], ss = 0.f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    v[i] = row[threadIdx.x + i * kPrefillThreads];
    ss = fmaf(v[i], v[i], ss);
  }
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kPrefillThreads / 32; ++i) total += part[i];
  const float r = rsqrtf(total / kHidden + eps);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int c = threadIdx.x + i * kPrefillThreads;
    out[(size_t)blockIdx.x * kHidden + c] = float_to_bf16(v[i] * r * w[c]);
  }
}

// One warp per (token, head) of the QKV output (q heads, then k, then v); lane l holds head
// dims 4l..4l+3, so RoPE's partner dim d +- head_dim/2 sits in lane l ^ 16.
__global__ void __launch_bounds__(kPrefillThreads) prefill_qkv(const float* __restrict__ qkv,
                                                               const float* __restrict__ qk_norm,
                                                               const float* __restrict__ inv_freq, int start, int T,
                                                               bf16_t* __restrict__ q_out, bf16_t* __restrict__ k_cache,
                                                               bf16_t* __restrict__ v_cache, int max_ctx, float eps) {
  static_assert(kHeadDim == 128, "4 head dims per lane");
  constexpr int kHeads = kQHeads + 2 * kKVHeads;
  const int gw = (int)(blockIdx.x * (kPrefillThreads / 32) + threadIdx.x / 32);
  if (gw >= T * kHeads) return;
  const int t = gw / kHeads, head = gw % kHeads, lane = threadIdx.x & 31;
  const float4 x4 = reinterpret_cast<const float4*>(qkv + ((size_t)t * kHeads + head) * kHeadDim)[lane];
  float x[4] = {x4.x, x4.y, x4.z, x4.w};
  if (head < kQHeads + kKVHeads) {  // q or k: RMSNorm over the head, its weight, RoPE
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) ss = fmaf(x[i], x[i], ss);
    const float r = rsqrtf(warp_sum(ss) / kHeadDim + eps);
    const float4 w4 = reinterpret_cast<const float4*>(qk_norm + (size_t)head * kHeadDim)[lane];
    // (x * r) * w in PyTorch's order: rms_norm's output, then the weight
    x[0] = x[0] * r * w4.x; x[1] = x[1] * r * w4.y; x[2] = x[2] * r * w4.z; x[3] = x[3] * r * w4.w;
    const float pos = (float)(start + t);
    float y[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int dim = 4 * lane + i, j = dim % (kHeadDim / 2);
      const float f = pos * inv_freq[j];
      const float c = cosf(f), s = sinf(f);
      const float partner = __shfl_xor_sync(0xffffffffu, x[i], 16);
      y[i] = dim < kHeadDim / 2 ? x[i] * c - partner * s : x[i] * c + partner * s;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = y[i];
  }
  bf16_t* dst;
  if (head < kQHeads) dst = q_out + ((size_t)head * T + t) * kHeadDim;
  else if (head < kQHeads + kKVHeads) dst = k_cache + ((size_t)(head - kQHeads) * max_ctx + start + t) * kHeadDim;
  else dst = v_cache + ((size_t)(head - kQHeads - kKVHeads) * max_ctx + start + t) * kHeadDim;
  uint2 packed;
  packed.x = (uint32_t)float_to_bf16(x[0]) | ((uint32_t)float_to_bf16(x[1]) << 16);
  packed.y = (uint32_t)float_to_bf16(x[2]) | ((uint32_t)float_to_bf16(x[3]) << 16);
  reinterpret_cast<uint2*>(dst)[lane] = packed;
}

// act[t, i] = silu(gu[t, i, 0]) * gu[t, i, 1]; two outputs per thread.
__global__ void __launch_bounds__(kPrefillThreads) prefill_silu_mul(const float4* __restrict__ gu,
                                                                    uint32_t* __restrict__ act, size_t pairs) {
  const size_t i = (size_t)blockIdx.x * kPrefillThreads + threadIdx.x;
  if (i >= pairs) return;
  const float4 v = gu[i];  // gate, up of two consecutive intermediate columns
  const float a = silu(v.x) * v.y, b = silu(v.z) * v.w;
  act[i] = (uint32_t)float_to_bf16(a) | ((uint32_t)float_to_bf16(b) << 16);
}

#ifndef __CUDACC_RTC__  // the launchers: host code
extern "C" {

int mk_prefill_rmsnorm(const float* h, const float* w, bf16_t* out, int T, float eps, void* stream) {
  if (T <= 0) return 0;
  prefill_rmsnorm<<<T, kPrefillThreads, 0, (cudaStream_t)stream>>>(h, w, out, eps);
  return (int)cudaGetLastError();
}

int mk_prefill_qkv(const float* qkv, const float* qk_norm, const float* inv_freq, int start, int T, bf16_t* q_out,
                   bf16_t* k_cache, bf16_t* v_cache, int max_ctx, float eps, void* stream) {
  if (T <= 0) return 0;
  if (start < 0 || start + T > max_ctx) return (int)cudaErrorInvalidValue;
  const int warps = T * (kQHeads + 2 * kKVHeads), per_block = kPrefillThreads / 32;
  prefill_qkv<<<(warps + per_block - 1) / per_block, kPrefillThreads, 0, (cudaStream_t)stream>>>(
      qkv, qk_norm, inv_freq, start, T, q_out, k_cache, v_cache, max_ctx, eps);
  return (int)cudaGetLastError();
}

int mk_prefill_silu_mul(const float* gu, bf16_t* act, int T, void* stream) {
  static_assert(kInter % 2 == 0, "two intermediate columns per thread");
  const size_t pairs = (size_t)T * kInter / 2;
  if (pairs == 0) return 0;
  prefill_silu_mul<<<(unsigned)((pairs + kPrefillThreads - 1) / kPrefillThreads), kPrefillThreads, 0,
                     (cudaStream_t)stream>>>(reinterpret_cast<const float4*>(gu), reinterpret_cast<uint32_t*>(act),
                                             pairs);
  return (int)cudaGetLastError();
}

}  // extern "C"
#endif  // __CUDACC_RTC__
