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

// v (this lane's 4 dims of one head) <- RoPE(RMSNorm(v) * w) at position pos.
__device__ __forceinline__ void head_norm_rope(float (&v)[4], const bf16_t* norm_w,
                                               const float* inv_freq, int pos) {
  const int lane = threadIdx.x & 31;
  const float inv = rsqrtf(warp_sum(v[0] * v[0] + v[1] * v[1] + v[2] * v[2] + v[3] * v[3]) / kHeadDim + kRmsEps);
  const uint2 wraw = *reinterpret_cast<const uint2*>(norm_w + 4 * lane);
  const float w[4] = {__uint_as_float(wraw.x << 16), __uint_as_float(wraw.x & 0xffff0000u),
                      __uint_as_float(wraw.y << 16), __uint_as_float(wraw.y & 0xffff0000u)};
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = (v[i] * inv) * w[i];
  float partner[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) partner[i] = __shfl_xor_sync(0xffffffffu, v[i], 16);
  const bool low = lane < 16;  // dims 0..63 rotate with -x[d+64], dims 64..127 with +x[d-64]
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int d = 4 * lane + i;
    float s, c;
    sincosf((float)pos * inv_freq[d % (kHeadDim / 2)], &s, &c);
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

// This lane's 4 dims of a head stored as tagged words (barriers.cuh), waiting for `tag`.
__device__ __forceinline__ bool ll_load_head(const MkParams& p, const unsigned long long* src, uint32_t tag,
                                             float (&v)[4], int step) {
  const unsigned long long* s = src + 4 * (threadIdx.x & 31);
  ulonglong2 a = ll_load2(s), b = ll_load2(s + 2);
  bool ok = true;
  if (ll_tag(a.x) != tag || ll_tag(a.y) != tag || ll_tag(b.x) != tag || ll_tag(b.y) != tag)
    ok = ll_wait2(p, s, tag, a, step) && ll_wait2(p, s + 2, tag, b, step);
  v[0] = ll_value(a.x); v[1] = ll_value(a.y); v[2] = ll_value(b.x); v[3] = ll_value(b.y);
  return ok;
}
