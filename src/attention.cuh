// attention.cuh: GQA attention for one decode position, split over KV (flash-decoding style).
//
// Work items are (kv head j, chunk c of attn_chunk positions), spread over all blocks. Each
// item: q of the kGroup query heads of j (per-head RMSNorm + RoPE, every warp redundantly);
// the item holding the current position first appends this step's k (normed, roped) and v to
// the cache; then the consumer warps scan the chunk's positions (4 at a time per warp) with an
// online softmax, merge their partials in shared memory, and either write the head's output
// (one chunk) or a partial (m, l, o) that the last item of the head to finish merges by
// log-sum-exp (a cumulative counter per KV head: no grid barrier).
// scratch: kConsumerWarps * kGroup * (head_dim + 2) floats of shared memory for the warps' partials.
// Inputs: p.qkv (tagged words, tag_in). Outputs: p.attn_out (tagged words, tag_out), the
// cache at `pos`. counter_base: this head's counter value before this layer (the sum of the
// chunk counts of the earlier layers and steps of this launch). Returns false on error.
#pragma once
#include "kv_cache.cuh"

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegBig = -1e30f;  // "minus infinity" that keeps exp2(m - M) finite

__device__ __forceinline__ float dot4(const float (&a)[4], const uint2& kraw) {
  return a[0] * __uint_as_float(kraw.x << 16) + a[1] * __uint_as_float(kraw.x & 0xffff0000u) +
         a[2] * __uint_as_float(kraw.y << 16) + a[3] * __uint_as_float(kraw.y & 0xffff0000u);
}

// Loads K and V rows tb..tb+3 (clamped below t_end; the caller masks the excess).
__device__ __forceinline__ void load_kv_batch(const bf16_t* kc, const bf16_t* vc, int tb, int t_end,
                                              uint2 (&kr)[4], uint2 (&vr)[4]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int t = min(tb + u, t_end - 1);
    kr[u] = __ldcg(reinterpret_cast<const uint2*>(kc + (size_t)t * kHeadDim) + lane);
    vr[u] = __ldcg(reinterpret_cast<const uint2*>(vc + (size_t)t * kHeadDim) + lane);
  }
}

// Online softmax (base 2): folds scores s[0..3] into running max m, sum l and output o;
// returns the weights pu of the new scores (masked scores are kNegBig and get ~0).
__device__ __forceinline__ void online_softmax_update(float& m, float& l, float (&o)[4], const float (&s)[4],
                                                      float (&pu)[4]) {
  const float mnew = fmaxf(fmaxf(m, fmaxf(s[0], s[1])), fmaxf(s[2], s[3]));
  const float scale = exp2f(m - mnew);
  l *= scale;
#pragma unroll
  for (int i = 0; i < 4; ++i) o[i] *= scale;
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    pu[u] = exp2f(s[u] - mnew);
    l += pu[u];
  }
  m = mnew;
}

__device__ __forceinline__ void accumulate_v(float (&o)[4], float pu, const uint2& v) {
  o[0] = fmaf(pu, __uint_as_float(v.x << 16), o[0]);
  o[1] = fmaf(pu, __uint_as_float(v.x & 0xffff0000u), o[1]);
  o[2] = fmaf(pu, __uint_as_float(v.y << 16), o[2]);
  o[3] = fmaf(pu, __uint_as_float(v.y & 0xffff0000u), o[3]);
}

__device__ __forceinline__ bool attention_stage(const MkParams& p, BlockControl& ctl, float* scratch, int layer, int pos,
                                                int chunk, uint32_t tag_in, uint32_t tag_out,
                                                unsigned counter_base, int step) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int n = pos + 1;
  const int nchunks = (n + chunk - 1) / chunk;
  const int max_chunks = p.attn_max_chunks;
  const LayerWeights& w = p.layer[layer];
  const float qscale = rsqrtf((float)kHeadDim) * kLog2e;  // softmax in base 2

  for (int item = blockIdx.x; item < kKVHeads * nchunks; item += gridDim.x) {
    const int j = item % kKVHeads, c = item / kKVHeads;
    const int t0 = c * chunk, t1 = min(n, t0 + chunk);
    const bf16_t* kc = p.k_cache + kv_offset(p, layer, j, 0);
    const bf16_t* vc = p.v_cache + kv_offset(p, layer, j, 0);

    // Positions before `pos` come from the cache; their loads do not depend on this step, so
    // each warp issues its first batch before waiting for q, k and v. The current position's
    // k and v stay in registers (warp 0 folds them in) while they are appended to the cache.
    const int t_old = min(t1, pos);
    int tb = t0 + warp * 4;
    uint2 kr[4], vr[4];
    if (tb < t_old) load_kv_batch(kc, vc, tb, t_old, kr, vr);

    // This step's q (kGroup heads), k and v of head j: all loads in flight together.
    const bool has_current = t1 == n && warp == 0;
    float qkv_in[kGroup + 2][4];
    const unsigned long long* srcs[kGroup + 2];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) srcs[g] = p.qkv + (j * kGroup + g) * kHeadDim;
    srcs[kGroup] = p.qkv + kQDim + j * kHeadDim;
    srcs[kGroup + 1] = p.qkv + kQDim + kKVDim + j * kHeadDim;
    if (!ll_load_heads<kGroup + 2>(p, srcs, tag_in, qkv_in, step)) ctl.abort = 1;
    float q[kGroup][4];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
#pragma unroll
      for (int i = 0; i < 4; ++i) q[g][i] = qkv_in[g][i];
      head_norm_rope(q[g], w.q_norm, ctl.rope_cos, ctl.rope_sin);
#pragma unroll
      for (int i = 0; i < 4; ++i) q[g][i] *= qscale;
    }
    float kcur[4], vcur[4];
    if (has_current) {
#pragma unroll
      for (int i = 0; i < 4; ++i) { kcur[i] = qkv_in[kGroup][i]; vcur[i] = qkv_in[kGroup + 1][i]; }
      head_norm_rope(kcur, w.k_norm, ctl.rope_cos, ctl.rope_sin);
      store_head_bf16(p.k_cache + kv_offset(p, layer, j, pos), kcur);
      store_head_bf16(p.v_cache + kv_offset(p, layer, j, pos), vcur);
    }

    float m[kGroup], l[kGroup], o[kGroup][4];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      m[g] = kNegBig; l[g] = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) o[g][i] = 0.f;
    }
    for (; tb < t_old; tb += kConsumerWarps * 4) {
      float s[kGroup][4];
#pragma unroll
      for (int g = 0; g < kGroup; ++g)
#pragma unroll
        for (int u = 0; u < 4; ++u) s[g][u] = dot4(q[g], kr[u]);
#pragma unroll
      for (int g = 0; g < kGroup; ++g)
#pragma unroll
        for (int u = 0; u < 4; ++u) s[g][u] = tb + u < t_old ? warp_sum(s[g][u]) : kNegBig;
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float pu[4];
        online_softmax_update(m[g], l[g], o[g], s[g], pu);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          if (tb + u >= t_old) pu[u] = 0.f;
          accumulate_v(o[g], pu[u], vr[u]);
        }
      }
      if (tb + kConsumerWarps * 4 < t_old) load_kv_batch(kc, vc, tb + kConsumerWarps * 4, t_old, kr, vr);
    }
    if (has_current) {  // fold in the current position
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float sc[4] = {warp_sum(q[g][0] * kcur[0] + q[g][1] * kcur[1] + q[g][2] * kcur[2] + q[g][3] * kcur[3]),
                       kNegBig, kNegBig, kNegBig};
        float pu[4];
        online_softmax_update(m[g], l[g], o[g], sc, pu);
#pragma unroll
        for (int i = 0; i < 4; ++i) o[g][i] = fmaf(pu[0], vcur[i], o[g][i]);
      }
    }
    // merge the warps' partials: warp g merges query head g of the group
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      if (lane == 0) { scratch[(warp * kGroup + g) * (kHeadDim + 2) + 0] = m[g]; scratch[(warp * kGroup + g) * (kHeadDim + 2) + 1] = l[g]; }
#pragma unroll
      for (int i = 0; i < 4; ++i) scratch[(warp * kGroup + g) * (kHeadDim + 2) + 2 + 4 * lane + i] = o[g][i];
    }
    consumer_sync();
    if (warp < kGroup) {
      const int g = warp;
      float M = kNegBig;
      for (int w2 = 0; w2 < kConsumerWarps; ++w2) M = fmaxf(M, scratch[(w2 * kGroup + g) * (kHeadDim + 2) + 0]);
      float L = 0.f, O[4] = {0.f, 0.f, 0.f, 0.f};
      for (int w2 = 0; w2 < kConsumerWarps; ++w2) {
        const float f = exp2f(scratch[(w2 * kGroup + g) * (kHeadDim + 2) + 0] - M);
        L += scratch[(w2 * kGroup + g) * (kHeadDim + 2) + 1] * f;
#pragma unroll
        for (int i = 0; i < 4; ++i) O[i] += scratch[(w2 * kGroup + g) * (kHeadDim + 2) + 2 + 4 * lane + i] * f;
      }
      if (nchunks == 1) {
#pragma unroll
        for (int i = 0; i < 4; ++i) ll_store(p.attn_out + (j * kGroup + g) * kHeadDim + 4 * lane + i, O[i] / L, tag_out);
      } else {
        float* part = p.attn_partial + ((size_t)(j * max_chunks + c) * kGroup + g) * (kHeadDim + 2);
        if (lane == 0) { part[0] = M; part[1] = L; }
#pragma unroll
        for (int i = 0; i < 4; ++i) part[2 + 4 * lane + i] = O[i];
        __threadfence();
      }
    }
    if (nchunks > 1) {
      consumer_sync();
      if (threadIdx.x == 0) {
        __threadfence();
        ctl.is_last = atomicAdd(&p.head_counter[j], 1u) == counter_base + (unsigned)(nchunks - 1);
      }
      consumer_sync();
      if (ctl.is_last) {  // every chunk of head j is done: merge them by log-sum-exp
        __threadfence();
        if (warp < kGroup) {
          const int g = warp;
          const float* part0 = p.attn_partial + ((size_t)j * max_chunks * kGroup + g) * (kHeadDim + 2);
          const size_t stride = (size_t)kGroup * (kHeadDim + 2);
          float M = kNegBig;
          for (int cc = 0; cc < nchunks; ++cc) M = fmaxf(M, ld_cg(part0 + cc * stride));
          float L = 0.f, O[4] = {0.f, 0.f, 0.f, 0.f};
          for (int cc = 0; cc < nchunks; ++cc) {
            const float* part = part0 + cc * stride;
            const float f = exp2f(ld_cg(part) - M);
            L += ld_cg(part + 1) * f;
#pragma unroll
            for (int i = 0; i < 4; ++i) O[i] += ld_cg(part + 2 + 4 * lane + i) * f;
          }
#pragma unroll
          for (int i = 0; i < 4; ++i) ll_store(p.attn_out + (j * kGroup + g) * kHeadDim + 4 * lane + i, O[i] / L, tag_out);
        }
      }
    }
    consumer_sync();  // scratch and ctl.is_last are reused by the next item
  }
  consumer_sync();
  return !ctl.abort;
}
