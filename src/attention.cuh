// attention.cuh: GQA attention for one decode position, split over KV (flash-decoding style).
//
// Work items are (kv head j, chunk c of attn_chunk positions), spread over all blocks. Each
// item: q of the kGroup query heads of j (per-head RMSNorm + RoPE, every warp redundantly);
// the item holding the current position first appends this step's k (normed, roped) and v to
// the cache; then the consumer warps scan the chunk's positions (4 at a time per warp) with an
// online softmax, merge their partials in shared memory, and either write the head's output
// (one chunk) or a partial (m, l, o) that the last item of the head to finish merges by
// log-sum-exp (a cumulative counter per KV head: no grid barrier).
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

__device__ __forceinline__ bool attention_stage(const MkParams& p, BlockControl& ctl, int layer, int pos,
                                                int chunk, uint32_t tag_in, uint32_t tag_out,
                                                unsigned counter_base, int step) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int n = pos + 1;
  const int nchunks = (n + chunk - 1) / chunk;
  const int max_chunks = (p.max_ctx + chunk - 1) / chunk;
  const LayerWeights& w = p.layer[layer];
  const float qscale = rsqrtf((float)kHeadDim) * kLog2e;  // softmax in base 2

  for (int item = blockIdx.x; item < kKVHeads * nchunks; item += gridDim.x) {
    const int j = item % kKVHeads, c = item / kKVHeads;
    const int t0 = c * chunk, t1 = min(n, t0 + chunk);
    const bf16_t* kc = p.k_cache + kv_offset(p, layer, j, 0);
    const bf16_t* vc = p.v_cache + kv_offset(p, layer, j, 0);

    float q[kGroup][4];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      if (!ll_load_head(p, p.qkv + (j * kGroup + g) * kHeadDim, tag_in, q[g], step)) ctl.abort = 1;
      head_norm_rope(q[g], w.q_norm, p.rope_inv_freq, pos);
#pragma unroll
      for (int i = 0; i < 4; ++i) q[g][i] *= qscale;
    }
    if (t1 == n) {  // this item holds the current position: append k and v first
      if (warp == 0) {
        float k[4], v[4];
        if (!ll_load_head(p, p.qkv + kQDim + j * kHeadDim, tag_in, k, step) ||
            !ll_load_head(p, p.qkv + kQDim + kKVDim + j * kHeadDim, tag_in, v, step))
          ctl.abort = 1;
        head_norm_rope(k, w.k_norm, p.rope_inv_freq, pos);
        store_head_bf16(p.k_cache + kv_offset(p, layer, j, pos), k);
        store_head_bf16(p.v_cache + kv_offset(p, layer, j, pos), v);
        __threadfence_block();
      }
      consumer_sync();
    }

    float m[kGroup], l[kGroup], o[kGroup][4];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      m[g] = kNegBig; l[g] = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) o[g][i] = 0.f;
    }
    for (int tb = t0 + warp * 4; tb < t1; tb += kConsumerWarps * 4) {
      uint2 kr[4], vr[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int t = min(tb + u, t1 - 1);  // clamp: masked below
        kr[u] = __ldcg(reinterpret_cast<const uint2*>(kc + (size_t)t * kHeadDim) + lane);
        vr[u] = __ldcg(reinterpret_cast<const uint2*>(vc + (size_t)t * kHeadDim) + lane);
      }
      float s[kGroup][4];
#pragma unroll
      for (int g = 0; g < kGroup; ++g)
#pragma unroll
        for (int u = 0; u < 4; ++u) s[g][u] = dot4(q[g], kr[u]);
#pragma unroll
      for (int g = 0; g < kGroup; ++g)
#pragma unroll
        for (int u = 0; u < 4; ++u) s[g][u] = tb + u < t1 ? warp_sum(s[g][u]) : kNegBig;
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        const float mnew = fmaxf(fmaxf(m[g], fmaxf(s[g][0], s[g][1])), fmaxf(s[g][2], s[g][3]));
        const float scale = exp2f(m[g] - mnew);
        l[g] *= scale;
#pragma unroll
        for (int i = 0; i < 4; ++i) o[g][i] *= scale;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const float pu = tb + u < t1 ? exp2f(s[g][u] - mnew) : 0.f;
          l[g] += pu;
          const uint2 v = vr[u];
          o[g][0] = fmaf(pu, __uint_as_float(v.x << 16), o[g][0]);
          o[g][1] = fmaf(pu, __uint_as_float(v.x & 0xffff0000u), o[g][1]);
          o[g][2] = fmaf(pu, __uint_as_float(v.y << 16), o[g][2]);
          o[g][3] = fmaf(pu, __uint_as_float(v.y & 0xffff0000u), o[g][3]);
        }
        m[g] = mnew;
      }
    }
    // merge the warps' partials: warp g merges query head g of the group
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      if (lane == 0) { ctl.attn[warp][g][0] = m[g]; ctl.attn[warp][g][1] = l[g]; }
#pragma unroll
      for (int i = 0; i < 4; ++i) ctl.attn[warp][g][2 + 4 * lane + i] = o[g][i];
    }
    consumer_sync();
    if (warp < kGroup) {
      const int g = warp;
      float M = kNegBig;
      for (int w2 = 0; w2 < kConsumerWarps; ++w2) M = fmaxf(M, ctl.attn[w2][g][0]);
      float L = 0.f, O[4] = {0.f, 0.f, 0.f, 0.f};
      for (int w2 = 0; w2 < kConsumerWarps; ++w2) {
        const float f = exp2f(ctl.attn[w2][g][0] - M);
        L += ctl.attn[w2][g][1] * f;
#pragma unroll
        for (int i = 0; i < 4; ++i) O[i] += ctl.attn[w2][g][2 + 4 * lane + i] * f;
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
    consumer_sync();  // ctl.attn and ctl.is_last are reused by the next item
  }
  consumer_sync();
  return !ctl.abort;
}
