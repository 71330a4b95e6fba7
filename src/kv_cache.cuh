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

// cos and sin of pos * inv_freq[i], i < head_dim/2: computed once per step into shared memory
// (by warp 0 of each block; the caller synchronizes) and used by every layer's q and k.
__device__ __forceinline__ void rope_table(const float* inv_freq, int pos, float* cos_t, float* sin_t) {
  for (int i = threadIdx.x; i < kHeadDim / 2; i += 32) sincosf((float)pos * inv_freq[i], &sin_t[i], &cos_t[i]);
}

// v (this lane's 4 dims of one head) <- RoPE(RMSNorm(v) * w), with the step's rope_table.
__device__ __forceinline__ void head_norm_rope(float (&v)[4], const bf16_t* norm_w, const float* cos_t,
                                               const float* sin_t) {
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

// This lane's 4 dims of N heads stored as tagged words (barriers.cuh), waiting for `tag`. All
// 2N loads are in flight together and re-issued together, so the wait ends one L2 round trip
// after the last word lands.
template <int N>
__device__ __forceinline__ bool ll_load_heads(const MkParams& p, const unsigned long long* const (&src)[N],
                                              uint32_t tag, float (&v)[N][4], int step) {
  const int lane = threadIdx.x & 31;
  ulonglong2 w[2 * N];
#pragma unroll
  for (int i = 0; i < 2 * N; ++i) w[i] = ll_load2(src[i / 2] + 4 * lane + 2 * (i % 2));
  bool ok = true;
  uint64_t t0 = 0;
  for (unsigned round = 0;; ++round) {
    bool all = true;
#pragma unroll
    for (int i = 0; i < 2 * N; ++i) all = all && ll_tag(w[i].x) == tag && ll_tag(w[i].y) == tag;
    if (all) break;
    if (round == 0) t0 = global_timer_ns();
    else if ((round & 15) == 0 && (error_raised(p) || global_timer_ns() - t0 > p.timeout_ns)) {
      if (!error_raised(p)) raise_error(p, MK_ERR_WAIT_TIMEOUT, -1, step);
      ok = false;
      break;
    }
    __nanosleep(MK_POLL_SLEEP_NS);
#pragma unroll
    for (int i = 0; i < 2 * N; ++i)
      if (ll_tag(w[i].x) != tag || ll_tag(w[i].y) != tag) w[i] = ll_load2(src[i / 2] + 4 * lane + 2 * (i % 2));
  }
#pragma unroll
  for (int h = 0; h < N; ++h) {
    v[h][0] = ll_value(w[2 * h].x); v[h][1] = ll_value(w[2 * h].y);
    v[h][2] = ll_value(w[2 * h + 1].x); v[h][3] = ll_value(w[2 * h + 1].y);
  }
  return ok;
}
