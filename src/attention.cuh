// attention.cuh: GQA attention for one decode position, split over KV (flash-decoding style),
// computed by the group of blocks that also applies the output projection of its KV head.
//
// Blocks form kKVHeads groups (weight_ring.cuh, attn_group): group j holds the kGroup query
// heads of KV head j. The positions 0..pos are cut into at most group-size chunks of at least
// p.attn_min_chunk positions (kAttnQuantum unless MK_ATTN_MIN_CHUNK says otherwise); member c scans
// chunk c. Each chunk: q of the group's query heads (per-head RMSNorm + RoPE, every warp
// redundantly); the member holding the current position first appends this step's k (normed,
// roped) and v to the cache; the consumer warps scan the chunk's positions (4 at a time per
// warp, a position per 8 lanes; on sm_80+ the next 4 are copied into shared memory meanwhile; the
// deep-KV build on sm_90 takes 8 positions a warp with its scores on tensor cores and keeps
// kv_depth_of(2) tiles staged ahead (attention_mma.cuh), and elsewhere the 4 after the staged
// ones in registers) with an online softmax and merge their
// partials in shared memory. With one chunk (short contexts) every member scans it
// itself and no block waits for another; with several, each member publishes its partial (m, l,
// o) as tagged words and every member of the group merges all of them by log-sum-exp. The
// result, the group's heads concatenated (kGroupDim values), lands in ctl.attn_o; the caller
// multiplies it by the member's rows of the group's Wo panel and adds them into the residual
// (counted words).
// Inputs: p.qkv (tagged words, tag_in), the cache. Outputs: ctl.attn_o, the cache at `pos`,
// p.attn_part (tagged words, tag_part). Returns false on error.
#pragma once
#include "attention_mma.cuh"
#include "kv_cache.cuh"
#include "weight_ring.cuh"

constexpr float kLog2e = 1.4426950408889634f;

// The scan's lane layout: in a batch of 4 positions, lane l serves position l / 8 and, of that
// position's K row, dims 8s..8s+7 and 64+8s..64+8s+7 (s = l % 8): two 16-byte pieces, so 8 lanes
// read 128 contiguous bytes (coalesced from global, conflict-free from shared memory). A score is
// then a reduction over 8 lanes (3 shuffle levels, not 5 over 32) and a lane computes 2 scores a
// batch, not 8. V keeps the output's layout: lane l holds dims 4l..4l+3 of the 4 positions' rows.

// Loads batch tb..tb+3 (rows clamped below t_end; the caller masks the excess) into registers.
__device__ __forceinline__ void load_kv_batch(const bf16_t* kc, const bf16_t* vc, int tb, int t_end,
                                              uint4 (&kq)[2], uint2 (&vr)[4]) {
  const int lane = threadIdx.x & 31, s = lane % 8;
  const uint4* krow = reinterpret_cast<const uint4*>(kc + kv_row(min(tb + lane / 8, t_end - 1)));
  kq[0] = __ldcg(krow + s);
  kq[1] = __ldcg(krow + 8 + s);
#pragma unroll
  for (int u = 0; u < 4; ++u)
    vr[u] = __ldcg(reinterpret_cast<const uint2*>(vc + kv_row(min(tb + u, t_end - 1))) + lane);
}

// L2 prefetch of K and V rows tb..tb+3 (below t_end): lanes 0-15 one 128-byte line each.
__device__ __forceinline__ void prefetch_kv_batch(const bf16_t* kc, const bf16_t* vc, int tb, int t_end) {
  const int lane = threadIdx.x & 31;
  const int t = tb + lane / 4;
  if (lane < 16 && t < t_end) {
    const bf16_t* row = ((lane >> 1) & 1 ? vc : kc) + kv_row(t) + (lane & 1) * (kHeadDim / 2);
    prefetch_l2(row);
  }
}

// cp.async (sm_80+) stages KV batches in shared memory; older GPUs load them into registers.
// (Both are declared for every target; below sm_80 they do no copies or waits and are not called.)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
constexpr bool kCpAsync = true;
#else
constexpr bool kCpAsync = false;
#endif
// A batch in flight without registers (sm_80+): K and V rows tb..tb+3 (clamped below t_end)
// copied into the warp's 2 KB staging buffer with cp.async (K rows 0-3, then V rows 0-3), not yet
// committed.
__device__ __forceinline__ void issue_kv_copies(uint8_t* buf, const bf16_t* kc, const bf16_t* vc, int tb, int t_end) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int piece = lane + 32 * r;  // 16-byte piece: row piece / 16, column piece % 16
    const int row = piece / 16, t = min(tb + row % 4, t_end - 1);
    const bf16_t* src = (row < 4 ? kc : vc) + kv_row(t) + (piece % 16) * 8;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;"
                 :: "r"((uint32_t)__cvta_generic_to_shared(buf + piece * 16)), "l"(src) : "memory");
  }
#endif
}
__device__ __forceinline__ void commit_kv_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// One staged batch (a cp.async group of its own).
__device__ __forceinline__ void stage_kv_batch(uint8_t* buf, const bf16_t* kc, const bf16_t* vc, int tb,
                                               int t_end) {
  issue_kv_copies(buf, kc, vc, tb, t_end);
  commit_kv_copies();
}
// The deep staging (kKVDepth > 1): every call commits a group, empty when tb >= t_end, so that a
// warp's count of pending groups stays in step with its staged batches.
__device__ __forceinline__ void stage_kv_batch_or_none(uint8_t* buf, const bf16_t* kc, const bf16_t* vc, int tb,
                                                       int t_end) {
  if (tb < t_end) issue_kv_copies(buf, kc, vc, tb, t_end);
  commit_kv_copies();
}
// Waits until at most kPending of this warp's cp.async groups are in flight (so the batch staged in
// buf has landed) and moves that batch into registers (the layout load_kv_batch gives).
template <int kPending>
__device__ __forceinline__ void take_kv_batch(const uint8_t* buf, uint4 (&kq)[2], uint2 (&vr)[4]) {
  const int lane = threadIdx.x & 31, s = lane % 8;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" :: "n"(kPending) : "memory");
#endif
  __syncwarp();  // every lane's copies have landed
  const uint4* krow = reinterpret_cast<const uint4*>(buf + (lane / 8) * kHeadDim * 2);
  kq[0] = krow[s];
  kq[1] = krow[8 + s];
#pragma unroll
  for (int u = 0; u < 4; ++u) vr[u] = reinterpret_cast<const uint2*>(buf + (4 + u) * kHeadDim * 2)[lane];
  __syncwarp();  // every lane has read before the buffer is refilled
}

// q . k over this lane's 16 dims, q's head in shared memory (128 floats).
__device__ __forceinline__ float dot16(const float* qh, const uint4 (&kq)[2]) {
  const int s = (threadIdx.x & 31) % 8;
  const float4* q4 = reinterpret_cast<const float4*>(qh);
  const float4 a0 = q4[2 * s], a1 = q4[2 * s + 1], b0 = q4[16 + 2 * s], b1 = q4[16 + 2 * s + 1];
  const float qa[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
  const float qb[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
  float w0[8], w1[8], a = 0.f, b = 0.f;
  unpack_bf16x8(kq[0], w0);
  unpack_bf16x8(kq[1], w1);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    a = fmaf(qa[j], w0[j], a);
    b = fmaf(qb[j], w1[j], b);
  }
  return a + b;
}


// The current position's scores q . k of the group's heads (every lane: k and q in the lanes' layout).
__device__ __forceinline__ void current_scores(const float (&q)[kGroup][4], const float (&k)[4], float (&s)[kGroup]) {
#pragma unroll
  for (int g = 0; g < kGroup; ++g) s[g] = warp_sum(q[g][0] * k[0] + q[g][1] * k[1] + q[g][2] * k[2] + q[g][3] * k[3]);
}

// A warp's online-softmax state (base 2) for the group's query heads: running max m, sum l and
// output o (this lane's 4 dims).
struct ScanState {
  float m[kGroup], l[kGroup], o[kGroup][4];
};

// Adds the scan's share of l: each lane's l_own over the 4 positions' lane groups.
__device__ __forceinline__ void finish_scan(ScanState& st, float (&l_own)[kGroup]) {
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    const float t = l_own[g] + __shfl_xor_sync(0xffffffffu, l_own[g], 8);
    st.l[g] += t + __shfl_xor_sync(0xffffffffu, t, 16);
  }
}

// One warp's scan of cached positions tb, tb + kStride, ... below t_old, 4 at a time, folded
// into st. The first batch (kr, vr) is already in registers and, on sm_80+, the second in the
// warp's staging buffer kv_buf. kDeep (the deep-KV kernel build, sm_80+): a third batch in flight.
template <bool kDeep, int kKVDepth>
__device__ __forceinline__ void scan_cached(ScanState& st, const float* q_s, const bf16_t* kc, const bf16_t* vc,
                                            uint8_t* kv_buf, int tb, int t_old, bool prefetch, uint4 (&kr)[2],
                                            uint2 (&vr)[4]) {
  constexpr int kStride = kAttnQuantum;  // positions the warps take in one pass
  const int lane = threadIdx.x & 31;
  float l_own[kGroup];  // the share of this lane's positions (the 4 lane groups add up at the end)
#pragma unroll
  for (int g = 0; g < kGroup; ++g) l_own[g] = 0.f;
  auto fold_batch = [&](const uint4 (&kq)[2], const uint2 (&vv)[4], int tbb) {
    const bool valid = tbb + lane / 8 < t_old;
    float sc[kGroup], mx[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) sc[g] = dot16(q_s + g * kHeadDim, kq);
#pragma unroll
    for (int off = 1; off < 8; off <<= 1)  // the position's 8 lanes
#pragma unroll
      for (int g = 0; g < kGroup; ++g) sc[g] += __shfl_xor_sync(0xffffffffu, sc[g], off);
#pragma unroll
    for (int g = 0; g < kGroup; ++g) { sc[g] = valid ? sc[g] : kNegBig; mx[g] = sc[g]; }
#pragma unroll
    for (int off = 8; off < 32; off <<= 1)  // the batch's 4 positions
#pragma unroll
      for (int g = 0; g < kGroup; ++g) mx[g] = fmaxf(mx[g], __shfl_xor_sync(0xffffffffu, mx[g], off));
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const float mnew = fmaxf(st.m[g], mx[g]), scale = exp2f(st.m[g] - mnew);
      const float p_own = valid ? exp2f(sc[g] - mnew) : 0.f;
      st.l[g] *= scale;
      l_own[g] = l_own[g] * scale + p_own;
#pragma unroll
      for (int i = 0; i < 4; ++i) st.o[g][i] *= scale;
#pragma unroll
      for (int u = 0; u < 4; ++u) accumulate_v(st.o[g], __shfl_sync(0xffffffffu, p_own, 8 * u), vv[u]);
      st.m[g] = mnew;
    }
    if (prefetch) prefetch_kv_batch(kc, vc, tbb + (kAttnPrefetch + 1) * kStride, t_old);
  };
  // kDeep: two batches in flight while one is folded, the staging buffer (cp.async) and
  // registers (kx, vx) taking turns. At the top of an even pass kr/vr hold batch tb, the buffer
  // tb + kStride and kx/vx tb + 2 kStride; at an odd pass the buffer and kx/vx have swapped. The
  // 16 more registers make the kernel spill in its GEMVs (RESEARCH.md section 13), hence a build of
  // its own for the longest contexts.
  constexpr bool kDeepHere = kDeep && kCpAsync;
  if constexpr (kKVDepth > 1 && kCpAsync) {
    // kKVDepth batches staged ahead (kv_buf: the warp's kKVDepth buffers). The batch taken at
    // pass k sits in buffer k % kKVDepth, which then receives the batch kKVDepth passes later.
    int b = 0;
    for (; tb < t_old; tb += kStride) {
      fold_batch(kr, vr, tb);
      if (tb + kStride < t_old) {
        uint8_t* buf = kv_buf + b * kKVStageBytes;
        take_kv_batch<kKVDepth - 1>(buf, kr, vr);
        stage_kv_batch_or_none(buf, kc, vc, tb + (kKVDepth + 1) * kStride, t_old);
        b = b + 1 == kKVDepth ? 0 : b + 1;
      }
    }
  } else if constexpr (kDeepHere) {
    uint4 kx[2];
    uint2 vx[4];
    if (tb + 2 * kStride < t_old) load_kv_batch(kc, vc, tb + 2 * kStride, t_old, kx, vx);
    for (bool even = true; tb < t_old; tb += kStride, even = !even) {
      fold_batch(kr, vr, tb);
      if (tb + kStride >= t_old) break;
      if (even) {
        take_kv_batch<0>(kv_buf, kr, vr);
        if (tb + 3 * kStride < t_old) stage_kv_batch(kv_buf, kc, vc, tb + 3 * kStride, t_old);
      } else {
#pragma unroll
        for (int i = 0; i < 2; ++i) kr[i] = kx[i];
#pragma unroll
        for (int u = 0; u < 4; ++u) vr[u] = vx[u];
        if (tb + 3 * kStride < t_old) load_kv_batch(kc, vc, tb + 3 * kStride, t_old, kx, vx);
      }
    }
  } else {
    for (; tb < t_old; tb += kStride) {
      fold_batch(kr, vr, tb);
      if (tb + kStride < t_old) {
        if constexpr (kCpAsync) {
          take_kv_batch<0>(kv_buf, kr, vr);
          if (tb + 2 * kStride < t_old) stage_kv_batch(kv_buf, kc, vc, tb + 2 * kStride, t_old);
        } else {
          load_kv_batch(kc, vc, tb + kStride, t_old, kr, vr);
        }
      }
    }
  }
  finish_scan(st, l_own);
}

// Chunking of n positions over a group of `size` members: at least min_chunk positions a chunk.
__device__ __forceinline__ void attention_chunks(int n, int size, int max_chunks, int min_chunk, int& chunk,
                                                 int& nchunks) {
  const int parts = max(1, min(min(size, max_chunks), (n + min_chunk - 1) / min_chunk));
  chunk = ((n + parts - 1) / parts + 3) / 4 * 4;
  nchunks = (n + chunk - 1) / chunk;
}

// Builds with deep KV staging (sm_90): an L2 bulk prefetch of cached positions t0..t_end-1 (K and V
// rows) of KV head `head` of `layer`, issued by the calling warp's lanes in 32 KB pieces. Called after
// a layer's scan for the same chunk of the next layer (config.cuh, kKVNextL2Positions).
__device__ __forceinline__ void prefetch_kv_l2(const MkParams& p, int layer, int head, int t0, int t_end) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr uint32_t kPiece = 32768;
  const uint32_t bytes = (uint32_t)(t_end - t0) * kHeadDim * 2;
  const int pieces = (int)((bytes + kPiece - 1) / kPiece);
  for (int i = threadIdx.x & 31; i < 2 * pieces; i += 32) {
    const char* base = reinterpret_cast<const char*>((i & 1 ? p.v_cache : p.k_cache) + kv_offset(p, layer, head, t0));
    const uint32_t off = (uint32_t)(i >> 1) * kPiece;
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(base + off), "r"(min(kPiece, bytes - off)) : "memory");
  }
#endif
}

template <bool kDeep, int kKVDepth>
__device__ __forceinline__ bool attention_stage(const MkParams& p, BlockControl& ctl, int layer, int pos,
                                                uint32_t tag_in, uint32_t tag_part, int step, uint8_t* kv_extra) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const AttnGroup grp = attn_group();
  const int j = grp.head;
  const int n = pos + 1;
  int chunk, nchunks;
  attention_chunks(n, grp.size, p.attn_max_chunks, p.attn_min_chunk, chunk, nchunks);
  const LayerWeights& w = p.layer[layer];
  const float qscale = rsqrtf((float)kHeadDim) * kLog2e;  // softmax in base 2
  float* scratch = &ctl.xs[0][0];  // per-warp partials, then the chunks' partials (both xs buffers)
  const size_t part_stride = (size_t)kGroup * (kHeadDim + 2);  // words per chunk
  unsigned long long* parts = p.attn_part + (size_t)j * p.attn_max_chunks * part_stride;

  // One chunk: every member scans it (no waiting on other blocks). Several: member c scans chunk c.
  const int c = nchunks == 1 ? 0 : grp.rank;
  if (c < nchunks) {
    const int t0 = c * chunk, t1 = min(n, t0 + chunk);
    const bf16_t* kc = p.k_cache + kv_offset(p, layer, j, 0);
    const bf16_t* vc = p.v_cache + kv_offset(p, layer, j, 0);
    // Nothing below depends on this step until q, k and v arrive: issue the first batch of
    // cached positions and the norm weights' loads before waiting.
    const int t_old = min(t1, pos);
    // kMma: the tensor-core scan (attention_mma.cuh), 8 positions a warp per pass, all staged.
    constexpr bool kMma = MK_ATTN_MMA && kKVDepth > 1 && kCpAsync;
    int tb = t0 + warp * (kMma ? kMmaTile : 4);
    uint4 kr[2];  // this lane's K pieces and V rows of its first batch (scan_cached)
    uint2 vr[4];
    if (!kMma && tb < t_old) load_kv_batch(kc, vc, tb, t_old, kr, vr);
    constexpr int kStride = kAttnQuantum;  // positions the warps take in one pass
    // The warps' staging buffers fill the front of xs (q/k/v are staged at its end, the warps'
    // partials overwrite the front only after the scan and a consumer_sync).
    // (kKVDepth > 1: the warp's buffers in the shared memory past the ring, kv_extra.)
    constexpr int kBufBytes = kMma ? kKVMmaBatchBytes : kKVStageBytes;
    uint8_t* kv_buf = kKVDepth > 1 ? kv_extra + warp * kKVDepth * kBufBytes
                                   : reinterpret_cast<uint8_t*>(&ctl.xs[0][0]) + warp * kKVStageBytes;
    // a warp has a second batch in xs (block-uniform)
    const bool staged = kCpAsync && t_old - t0 > kStride;
    // long chunks only (RESEARCH.md sections 9, 24)
    const bool prefetch = t_old - t0 >= (kMma ? kMmaPrefetchMinChunk : kAttnPrefetchMinChunk);
    // tiles issued before the q/k/v wait (config.cuh, kMmaPreWait3Chunk); the rest right after it
    const int pre_wait = min(kKVDepth, t_old - t0 >= kMmaPreWait3Chunk ? 3 : 2);
    if constexpr (kMma) {
#pragma unroll
      for (int b = 0; b < kKVDepth; ++b)
        if (b < pre_wait) stage_kv_tile(kv_buf + b * kBufBytes, kc, vc, tb + b * kMmaStride, t_old);
      if (prefetch)
        for (int a = 0; a < kMmaPrefetchTiles; ++a) prefetch_kv_tile(kc, vc, tb + (kKVDepth + a) * kMmaStride, t_old);
    } else if constexpr (kKVDepth > 1 && kCpAsync) {
#pragma unroll
      for (int b = 0; b < kKVDepth; ++b)
        stage_kv_batch_or_none(kv_buf + b * kKVStageBytes, kc, vc, tb + (b + 1) * kStride, t_old);
    } else {
      if (kCpAsync && tb + kStride < t_old) stage_kv_batch(kv_buf, kc, vc, tb + kStride, t_old);
    }
    if (!kMma && prefetch)
#pragma unroll
      for (int a = 1; a <= kAttnPrefetch; ++a) prefetch_kv_batch(kc, vc, tb + a * kStride, t_old);
    float qw[4], kw[4];
    load_head_weight(w.q_norm, qw);
    load_head_weight(w.k_norm, kw);

    // This step's q (kGroup heads), k and v of head j, polled once for the block (all words in
    // flight together) and staged in shared memory for every warp.
    float* qkv_s = &ctl.xs[1][kStageFloats - kAttnQKVWords];
    if (!stage_words_at<kAttnQKVWords>(
            p, ctl,
            [&](int i) {  // q of the group's heads, then k, then v
              const int word = 2 * i;
              return word < kGroupDim ? p.qkv + j * kGroupDim + word
                                      : p.qkv + kQDim + (word - kGroupDim) / kHeadDim * kKVDim + j * kHeadDim +
                                            (word - kGroupDim) % kHeadDim;
            },
            kAttnQKVWords, [&](unsigned long long x) { return ll_tag(x) == tag_in; },
            [&](int i, unsigned long long a, unsigned long long b) {
              qkv_s[2 * i] = ll_value(a);
              qkv_s[2 * i + 1] = ll_value(b);
            },
            (int)(tag_in - p.tag_base), step))
      return false;
    sub_stamp(p, ctl, step, kSubAttnInput);
    if constexpr (kMma)
#pragma unroll
      for (int b = 0; b < kKVDepth; ++b)
        if (b >= pre_wait) stage_kv_tile(kv_buf + b * kBufBytes, kc, vc, tb + b * kMmaStride, t_old);
    const bool has_current = t1 == n && warp == 0;
    float qkv_in[kGroup + 2][4];
#pragma unroll
    for (int h = 0; h < kGroup + 2; ++h) {
      const float4 v4 = *reinterpret_cast<const float4*>(qkv_s + h * kHeadDim + 4 * lane);
      qkv_in[h][0] = v4.x; qkv_in[h][1] = v4.y; qkv_in[h][2] = v4.z; qkv_in[h][3] = v4.w;
    }
    // q's heads and k are normed in one straight run, so that their warp reductions interleave
    // (every warp norms k; only the current position's chunk uses it).
    float q[kGroup][4], kcur[4], vcur[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) q[g][i] = qkv_in[g][i];
      kcur[i] = qkv_in[kGroup][i];
      vcur[i] = qkv_in[kGroup + 1][i];
    }
#pragma unroll
    for (int g = 0; g < kGroup; ++g) head_norm_rope(q[g], qw, ctl.rope_cos, ctl.rope_sin);
    head_norm_rope(kcur, kw, ctl.rope_cos, ctl.rope_sin);
#pragma unroll
    for (int g = 0; g < kGroup; ++g)
#pragma unroll
      for (int i = 0; i < 4; ++i) q[g][i] *= qscale;
    // One writer per head: with one chunk every member holds the current position; rank 0 writes.
    if (has_current && grp.rank == c) {
      store_head_bf16(p.k_cache + kv_offset(p, layer, j, pos), kcur);
      store_head_bf16(p.v_cache + kv_offset(p, layer, j, pos), vcur);
    }
    sub_stamp(p, ctl, step, kSubAttnNormRope);

    if constexpr (kMma) {  // the tensor-core scan writes the warp's partial itself
      float sg[kGroup] = {kNegBig, kNegBig};  // the current position's scores
      if (has_current) current_scores(q, kcur, sg);
      uint4* qf = reinterpret_cast<uint4*>(reinterpret_cast<uint8_t*>(&ctl.xs[0][0]) + kAttnQFragOffsetBytes);
      if (warp == 0) write_q_frags(qf, q);
      consumer_sync();
      scan_mma<kKVDepth>(qf, kc, vc, kv_buf, tb, t_old, prefetch, has_current, sg, qkv_s + (kGroup + 1) * kHeadDim,
                         scratch + (warp * kGroup) * (kHeadDim + 2), scratch + (warp * kGroup + 1) * (kHeadDim + 2));
      sub_stamp(p, ctl, step, kSubAttnScan);
    } else {
      // The current position first (m = its score, l = 1, o = its v), then the cached ones.
      ScanState st;
      if (has_current) {
        float sg[kGroup];
        current_scores(q, kcur, sg);
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          st.m[g] = sg[g]; st.l[g] = 1.f;
#pragma unroll
          for (int i = 0; i < 4; ++i) st.o[g][i] = vcur[i];
        }
      } else {
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          st.m[g] = kNegBig; st.l[g] = 0.f;
#pragma unroll
          for (int i = 0; i < 4; ++i) st.o[g][i] = 0.f;
        }
      }
      // q of the group's heads (normed, roped, scaled) in shared memory after the warps' staging
      // buffers, where the scan reads each lane's 16 dims.
      float* q_s = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(&ctl.xs[0][0]) + kAttnQOffsetBytes);
      if (warp == 0)
#pragma unroll
        for (int g = 0; g < kGroup; ++g)
          *reinterpret_cast<float4*>(q_s + g * kHeadDim + 4 * lane) = make_float4(q[g][0], q[g][1], q[g][2], q[g][3]);
      consumer_sync();
      if (tb < t_old) scan_cached<kDeep, kKVDepth>(st, q_s, kc, vc, kv_buf, tb, t_old, prefetch, kr, vr);
      sub_stamp(p, ctl, step, kSubAttnScan);
      if (kKVDepth == 1 && staged) consumer_sync();  // the partials below overwrite other warps' staging buffers
      // merge the warps' partials: warp g merges query head g of the group
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float* sp = scratch + (warp * kGroup + g) * (kHeadDim + 2);
        if (lane == 0) { sp[0] = st.m[g]; sp[1] = st.l[g]; }
#pragma unroll
        for (int i = 0; i < 4; ++i) sp[2 + 4 * lane + i] = st.o[g][i];
      }
    }
    // (The chunking depends on the position only: this chunk of the next layer is this member's too.)
    if (kKVDepth > 1 && warp == 0 && layer + 1 < kLayers && t0 < min(t_old, t0 + p.kv_l2_pos))
      prefetch_kv_l2(p, layer + 1, j, t0, min(t_old, t0 + p.kv_l2_pos));
    consumer_sync();
    sub_stamp(p, ctl, step, kSubAttnFold);
    if (warp < kGroup) {
      const int g = warp;
      float M = kNegBig;
      for (int w2 = 0; w2 < kConsumerWarps; ++w2) M = fmaxf(M, scratch[(w2 * kGroup + g) * (kHeadDim + 2) + 0]);
      float L = 0.f, O[4] = {0.f, 0.f, 0.f, 0.f};
      for (int w2 = 0; w2 < kConsumerWarps; ++w2) {
        const float* sp = scratch + (w2 * kGroup + g) * (kHeadDim + 2);
        const float f = exp2f(sp[0] - M);
        L += sp[1] * f;
#pragma unroll
        for (int i = 0; i < 4; ++i) O[i] += sp[2 + 4 * lane + i] * f;
      }
      if (nchunks == 1) {
        const float inv = 1.f / L;
#pragma unroll
        for (int i = 0; i < 4; ++i) ctl.attn_o[g * kHeadDim + 4 * lane + i] = O[i] * inv;
      } else {  // publish the chunk's partial: m, l, o
        unsigned long long* part = parts + c * part_stride + g * (kHeadDim + 2);
        if (lane == 0) { ll_store(part, M, tag_part); ll_store(part + 1, L, tag_part); }
#pragma unroll
        for (int i = 0; i < 4; ++i) ll_store(part + 2 + 4 * lane + i, O[i], tag_part);
      }
    }
  }
  sub_stamp(p, ctl, step, kSubAttnWarpMerge);
  if (nchunks > 1) {  // every member: all chunks' partials of head j, merged by log-sum-exp
    float M = kNegBig, L = 0.f, O[4] = {0.f, 0.f, 0.f, 0.f};  // warp g < kGroup: query head g
    for (int c0 = 0; c0 < nchunks; c0 += kMergeChunks) {  // kMergeChunks chunks per pass
      const int nc = min(kMergeChunks, nchunks - c0);
      consumer_sync();  // scratch is free (the per-warp partials, the previous pass)
      if (!stage_words<kMergeChunks * kGroup * (kHeadDim + 2)>(
              p, ctl, parts + c0 * part_stride, nc * (int)part_stride,
              [&](unsigned long long x) { return ll_tag(x) == tag_part; },
              [&](int i, unsigned long long a, unsigned long long b) {
                scratch[2 * i] = ll_value(a);
                scratch[2 * i + 1] = ll_value(b);
              },
              (int)(tag_part - p.tag_base), step))
        return false;
      if (c0 == 0) sub_stamp(p, ctl, step, kSubAttnPartials);
      if (warp < kGroup) {
        for (int cc = 0; cc < nc; ++cc) {
          const float* sp = scratch + cc * part_stride + warp * (kHeadDim + 2);
          const float Mn = fmaxf(M, sp[0]), a = exp2f(M - Mn), b = exp2f(sp[0] - Mn);
          L = L * a + sp[1] * b;
#pragma unroll
          for (int i = 0; i < 4; ++i) O[i] = O[i] * a + sp[2 + 4 * lane + i] * b;
          M = Mn;
        }
      }
    }
    if (warp < kGroup) {
      const float inv = 1.f / L;
#pragma unroll
      for (int i = 0; i < 4; ++i) ctl.attn_o[warp * kHeadDim + 4 * lane + i] = O[i] * inv;
    }
  }
  consumer_sync();  // attn_o complete; scratch free
  return !ctl.abort;
}
