// kv_cache.cuh: the KV cache layout, and the per-head RMSNorm + RoPE that q and k get before
// they are used or stored.
//
// Layout (bf16): k_cache[layer][kv_head][position][head_dim], v_cache likewise, so a split-KV
// work item reads one contiguous run of positions per head.
// Head vectors live in a warp as 4 consecutive dims per lane (lane l: dims 4l..4l+3); RoPE's
// rotate-half partner of dim d is d +- head_dim/2, held by lane l ^ 16.
#pragma once
#include "barriers.cuh"

__device__ __forceinline__ size_t kv_offset(const MkParams& p, int layer, int kv_head, int pos) {
  return (((size_t)layer * kKVHeads + kv_head) * p.max_ctx + pos) * kHeadDim;
}
// Offset of cached position t's row within a head's run. Timing experiment MK_EXP & 2048 (config.cuh;
// wrong results): t % 64, so every KV read of the scan hits a window that stays in L2 (RESEARCH.md
// section 20).
__device__ __forceinline__ size_t kv_row(int t) { return (size_t)((MK_EXP & 2048) ? (t & 63) : t) * kHeadDim; }

constexpr float kNegBig = -1e30f;  // the scans' "minus infinity", which keeps exp2(m - M) finite

// cos and sin of pos * inv_freq[i], i < head_dim/2: computed once per step into shared memory
// (by warp 0 of each block; the caller synchronizes) and used by every layer's q and k.
__device__ __forceinline__ void rope_table(const float* inv_freq, int pos, float* cos_t, float* sin_t) {
  for (int i = threadIdx.x; i < kHeadDim / 2; i += 32) sincosf((float)pos * inv_freq[i], &sin_t[i], &cos_t[i]);
}

// This lane's 4 dims of a per-head norm weight (loaded before the wait for q and k).
__device__ __forceinline__ void load_head_weight(const bf16_t* norm_w, float (&w)[4]) {
  const uint2 wraw = *reinterpret_cast<const uint2*>(norm_w + 4 * (threadIdx.x & 31));
  w[0] = __uint_as_float(wraw.x << 16);
  w[1] = __uint_as_float(wraw.x & 0xffff0000u);
  w[2] = __uint_as_float(wraw.y << 16);
  w[3] = __uint_as_float(wraw.y & 0xffff0000u);
}

// v (this lane's 4 dims of one head) <- RoPE(RMSNorm(v) * w), with the step's rope_table.
__device__ __forceinline__ void head_norm_rope(float (&v)[4], const float (&w)[4], const float* cos_t,
                                               const float* sin_t) {
  const int lane = threadIdx.x & 31;
  const float inv = rsqrtf(warp_sum(v[0] * v[0] + v[1] * v[1] + v[2] * v[2] + v[3] * v[3]) / kHeadDim + kRmsEps);
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = (v[i] * inv) * w[i];
  float partner[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) partner[i] = __shfl_xor_sync(0xffffffffu, v[i], 16);
  const bool low = lane < 16;  // dims 0..63 rotate with -x[d+64], dims 64..127 with +x[d-64]
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int f = (4 * lane + i) % (kHeadDim / 2);
    const float c = cos_t[f], s = sin_t[f];
    v[i] = low ? v[i] * c - partner[i] * s : v[i] * c + partner[i] * s;
  }
}

__device__ __forceinline__ void store_head_bf16(bf16_t* dst, const float (&v)[4]) {
  const int lane = threadIdx.x & 31;
  uint2 packed;
  packed.x = (uint32_t)float_to_bf16(v[0]) | ((uint32_t)float_to_bf16(v[1]) << 16);
  packed.y = (uint32_t)float_to_bf16(v[2]) | ((uint32_t)float_to_bf16(v[3]) << 16);
  *reinterpret_cast<uint2*>(dst + 4 * lane) = packed;
}

// o (4 dims of a head) += pu * v (the same 4 dims of a V row, bf16).
__device__ __forceinline__ void accumulate_v(float (&o)[4], float pu, const uint2& v) {
  o[0] = fmaf(pu, __uint_as_float(v.x << 16), o[0]);
  o[1] = fmaf(pu, __uint_as_float(v.x & 0xffff0000u), o[1]);
  o[2] = fmaf(pu, __uint_as_float(v.y << 16), o[2]);
  o[3] = fmaf(pu, __uint_as_float(v.y & 0xffff0000u), o[3]);
}
