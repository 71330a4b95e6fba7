// attention_mma.cuh: the split-KV scan's scores on tensor cores (mma.sync m16n8k16, bf16 in, f32
// accumulate), for the kernel builds with deep KV staging (sm_90 code, kv_depth_of > 1; attention.cuh
// calls it). P V stays on CUDA cores.
//
// Why: the CUDA-core scan (attention.cuh, scan_cached) spends most of its ~360 instructions a warp
// per 4 positions on q . k (q from shared memory, 3 shuffle levels a score) and is bound by its own
// issue even when every KV read hits L2 (RESEARCH.md section 20). Here a warp takes 8 positions a
// tile: 8 mma for the scores, 12 shared-memory loads, 16 shuffles and 64 FMAs for P V.
// (P V on tensor cores too, O^T += V^T P^T as m16n8k8, measured slower: its fragments hold 32
// accumulators a lane and the kernel's GEMVs lost more to register pressure than the scan gained;
// RESEARCH.md section 23, branch exp/attn-mma.)
//
// The scores S (16 x 8) = Q (16 x 128) K^T, lanes as in the PTX ISA's fragments (g = lane / 4,
// t = lane % 4): Q's rows 0, 1 are the group's two query heads rounded to bf16 (hi), rows 8, 9 the
// rounding's remainders (lo), the other rows zero, so S's rows 0 + 8 and 1 + 9 give q . k within
// ~2^-16 of the float32 dot product; K^T's columns are the tile's 8 positions. The dot product's
// order of dims is free: logical k = 16 s + 2 t + e (e < 2) of k-step s is dim 32 t + 4 s + e, and
// 16 s + 2 t + 8 + e is dim 32 t + 4 s + 2 + e, so lane (g, t) needs position g's dims 32 t ..
// 32 t + 31: four 16-byte loads. Lane (g < 2, t) ends with head g's scores of positions 2 t and
// 2 t + 1; the online softmax (base 2: q carries log2(e) / sqrt(d)) runs there, and P V on every
// lane's 4 dims of both heads as scan_cached does (the probabilities shuffled from lanes 0-7).
//
// Staging: a warp keeps kKVDepth tiles in flight in shared memory (cp.async, 16-byte pieces; 4 KB
// a tile: K rows 0-7, then V rows 0-7), each piece placed by an XOR of its index so that the
// fragment loads are free of bank conflicts (kv_piece_k).
#pragma once
#include "kv_cache.cuh"

constexpr int kMmaTile = 8;                                 // positions a warp takes per tile
constexpr int kMmaStride = kConsumerWarps * kMmaTile;       // positions the warps take in one pass
constexpr int kMmaPrefetchTiles = 2;  // tiles past the staged ones a warp keeps prefetched into L2 (long chunks)
static_assert(kKVMmaBatchBytes == 2 * kMmaTile * kHeadDim * 2, "a staged tile: 8 K rows and 8 V rows");
static_assert(kHeadDim == 128 && kGroup == 2, "the fragment layout is written for head_dim 128, 2 heads a KV head");

// Byte offset of 16-byte piece q (dims 8q..8q+7) of K row r / V row r in a staged tile. K's pieces
// are permuted within their row so that a lane's loads of pieces 4t..4t+3 of row g hit distinct bank
// quads in each quarter warp; V rows are read whole (8 bytes a lane) and stay in order.
__device__ __forceinline__ int kv_piece_k(int r, int q) { return r * 256 + ((q ^ (((r & 1) << 1) | ((q >> 3) & 1))) << 4); }
__device__ __forceinline__ int kv_piece_v(int r, int q) { return kMmaTile * 256 + r * 256 + q * 16; }

// Positions tb..tb+7 of K and V (rows clamped below t_end; the fold masks them) into the warp's
// staging buffer buf, one cp.async group, empty when tb >= t_end (the count of groups stays in step).
__device__ __forceinline__ void stage_kv_tile(uint8_t* buf, const bf16_t* kc, const bf16_t* vc, int tb, int t_end) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int lane = threadIdx.x & 31;
  if (tb < t_end) {
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int piece = lane + 32 * u;  // 0..127 K, 128..255 V: row (piece / 16) % 8, column piece % 16
      const int r = (piece >> 4) & 7, q = piece & 15;
      const bool is_v = piece >= 128;
      const bf16_t* src = (is_v ? vc : kc) + kv_row(min(tb + r, t_end - 1)) + q * 8;
      const int off = is_v ? kv_piece_v(r, q) : kv_piece_k(r, q);
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;"
                   :: "r"((uint32_t)__cvta_generic_to_shared(buf + off)), "l"(src) : "memory");
    }
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// L2 prefetch of positions tb..tb+7 (below t_end): a 128-byte line a lane.
__device__ __forceinline__ void prefetch_kv_tile(const bf16_t* kc, const bf16_t* vc, int tb, int t_end) {
  const int lane = threadIdx.x & 31, t = tb + lane / 4;
  if (t < t_end) prefetch_l2(((lane >> 1) & 1 ? vc : kc) + kv_row(t) + (lane & 1) * (kHeadDim / 2));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {  // lo in the low half; round to nearest even
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Q's A fragments (attention.cuh writes them once a layer, every warp reads them each tile): entry
// (k-step s, lane l < 8) at qf[8 s + l], for lane (g, t): head g's dims 32 t + 4 s .. + 3, as
// (hi 0-1, lo 0-1, hi 2-3, lo 2-3) bf16 pairs. Lanes 8-31 take zeros (Q's other rows).
constexpr int kQFragBytes = 8 * 8 * 16;
static_assert(kAttnQFragOffsetBytes + kQFragBytes <= kAttnQOffsetBytes, "the Q fragments reach q (config.cuh)");
// Warp 0, lane l = 8 t + s, holds dims 4 l .. 4 l + 3 = 32 t + 4 s .. of q[g] (kv_cache.cuh's layout).
__device__ __forceinline__ void write_q_frags(uint4* qf, const float (&q)[kGroup][4]) {
  const int lane = threadIdx.x & 31, t = lane >> 3, s = lane & 7;
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    const uint32_t h01 = pack_bf16x2(q[g][0], q[g][1]), h23 = pack_bf16x2(q[g][2], q[g][3]);
    const uint32_t l01 = pack_bf16x2(q[g][0] - bf16_lo(h01), q[g][1] - bf16_hi(h01));
    const uint32_t l23 = pack_bf16x2(q[g][2] - bf16_lo(h23), q[g][3] - bf16_hi(h23));
    qf[8 * s + 4 * g + t] = make_uint4(h01, l01, h23, l23);
  }
}

// One warp's scan of cached positions tb, tb + kMmaStride, ... below t_old (8 at a time), whose first
// kKVDepth tiles are already issued into kv_buf (stage_kv_tile), folded into the warp's partial
// (m, l, o) of both heads, written to sp0 / sp1 (attention.cuh's per-warp layout: m, l, then 128 dims
// of o). qf: the group's q (normed, roped, scaled) as write_q_frags left it. cur: this chunk holds the
// current position and this warp starts from it (its scores s_cur; its v at v_cur, float, shared memory).
template <int kKVDepth>
__device__ __forceinline__ void scan_mma(const uint4* qf, const bf16_t* kc, const bf16_t* vc, uint8_t* kv_buf, int tb,
                                         int t_old, bool prefetch, bool cur, const float (&s_cur)[kGroup],
                                         const float* v_cur, float* sp0, float* sp1) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  // State: m (head g, lanes g < 2), l_part (this lane's positions' share), ov[h] (this lane's dims
  // 4 lane .. 4 lane + 3 of head h, as scan_cached keeps them).
  float m = cur ? s_cur[g & 1] : kNegBig;
  float l_part = cur && t == 0 ? 1.f : 0.f;
  float ov[kGroup][4];
  {
    const float4 v = cur ? *reinterpret_cast<const float4*>(v_cur + 4 * lane) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int h = 0; h < kGroup; ++h) { ov[h][0] = v.x; ov[h][1] = v.y; ov[h][2] = v.z; ov[h][3] = v.w; }
  }
  int b = 0;
  for (; tb < t_old; tb += kMmaStride) {
    const uint8_t* buf = kv_buf + b * kKVMmaBatchBytes;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" :: "n"(kKVDepth - 1) : "memory");
#endif
    __syncwarp();  // every lane's copies of this tile have landed
    float sc[4] = {0.f, 0.f, 0.f, 0.f};
    {
      uint32_t kw[16];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint4 w = *reinterpret_cast<const uint4*>(buf + kv_piece_k(g, 4 * t + i));
        kw[4 * i] = w.x; kw[4 * i + 1] = w.y; kw[4 * i + 2] = w.z; kw[4 * i + 3] = w.w;
      }
#pragma unroll
      for (int s = 0; s < 8; ++s) {
        const uint4 f = lane < 8 ? qf[8 * s + lane] : make_uint4(0u, 0u, 0u, 0u);
        const uint32_t qa[4] = {f.x, f.y, f.z, f.w};
        mma_16816(sc, qa, kw[2 * s], kw[2 * s + 1]);
      }
    }
    uint2 vr[kMmaTile];  // this lane's 4 dims of the tile's V rows
#pragma unroll
    for (int n = 0; n < kMmaTile; ++n)
      vr[n] = *reinterpret_cast<const uint2*>(buf + kv_piece_v(n, lane >> 1) + (lane & 1) * 8);
    __syncwarp();  // every lane has read the tile before its buffer is refilled
    stage_kv_tile(kv_buf + b * kKVMmaBatchBytes, kc, vc, tb + kKVDepth * kMmaStride, t_old);
    if (prefetch) prefetch_kv_tile(kc, vc, tb + (kKVDepth + kMmaPrefetchTiles) * kMmaStride, t_old);
    b = b + 1 == kKVDepth ? 0 : b + 1;
    // lane (g < 2, t): head g's scores of positions 2t, 2t + 1
    const bool ok0 = tb + 2 * t < t_old, ok1 = tb + 2 * t + 1 < t_old;
    const float s0 = ok0 ? sc[0] + sc[2] : kNegBig, s1 = ok1 ? sc[1] + sc[3] : kNegBig;
    float mx = fmaxf(s0, s1);
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mnew = fmaxf(m, mx), scale = exp2f(m - mnew);
    const float p0 = ok0 ? exp2f(s0 - mnew) : 0.f, p1 = ok1 ? exp2f(s1 - mnew) : 0.f;
    l_part = l_part * scale + p0 + p1;
    m = mnew;
    const float sc_h0 = __shfl_sync(0xffffffffu, scale, 0), sc_h1 = __shfl_sync(0xffffffffu, scale, 4);
    // P V on CUDA cores: every lane gets the 8 probabilities of both heads (lane 4 h + n / 2 holds
    // head h's position n in p0 / p1) and folds them into its 4 dims, as scan_cached does.
#pragma unroll
    for (int i = 0; i < 4; ++i) { ov[0][i] *= sc_h0; ov[1][i] *= sc_h1; }
#pragma unroll
    for (int n = 0; n < kMmaTile; ++n) {
      const float pn = n & 1 ? p1 : p0;
      accumulate_v(ov[0], __shfl_sync(0xffffffffu, pn, n / 2), vr[n]);
      accumulate_v(ov[1], __shfl_sync(0xffffffffu, pn, 4 + n / 2), vr[n]);
    }
  }
  // The warp's partial: l over the 4 lanes of a head.
  l_part += __shfl_xor_sync(0xffffffffu, l_part, 1);
  l_part += __shfl_xor_sync(0xffffffffu, l_part, 2);
  if (lane == 0) { sp0[0] = m; sp0[1] = l_part; }
  if (lane == 4) { sp1[0] = m; sp1[1] = l_part; }
#pragma unroll
  for (int i = 0; i < 4; i += 2) {  // (8-byte aligned)
    *reinterpret_cast<float2*>(sp0 + 2 + 4 * lane + i) = make_float2(ov[0][i], ov[0][i + 1]);
    *reinterpret_cast<float2*>(sp1 + 2 + 4 * lane + i) = make_float2(ov[1][i], ov[1][i + 1]);
  }
}
