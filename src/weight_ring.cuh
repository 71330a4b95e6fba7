// weight_ring.cuh: the weight stream. Weights do not depend on activations, so each block's
// producer warp(s) copy the block's slice of every matrix, in the order the consumers will
// use them, into a ring of shared-memory slots, running ahead of the consumers by up to the
// whole ring (~200 KB per SM), across grid barriers and across tokens. The memory stream never
// waits on a barrier; only the consumers do.
//
//   sm_90+:  one lane issues cp.async.bulk (the TMA copy engine) per slot, completion tracked
//            by an mbarrier per slot (full), slots handed back through a second one (empty).
//   sm_80-89: the producer warp's 32 lanes issue 16-byte cp.async copies for a slot and one
//            cp.async.mbarrier.arrive each: the slot's full mbarrier completes when every copy
//            has landed, so as many slots are in flight as the ring has free (MK_RING_MBAR).
//   sm_75:   the producer warp copies with 16-byte loads and stores (a whole slot in flight),
//            and hands slots over through volatile shared-memory flags.
// Both sides walk the same sequence of segments (stream_segment), so slot number `seq` means
// the same rows to the producer and to the consumers.
#pragma once
#include "barriers.cuh"

// The rows of one matrix that this block computes: rows row0.. of the K columns from col0 on
// (ld elements apart; ld == K: whole rows, one contiguous run).
struct Segment {
  const bf16_t* base;  // the matrix
  int row0;            // first row of this block's slice
  int nrows;           // rows in the slice
  int K;               // row length (elements) as the stage reads it
  int rps;             // rows per ring slot (config.cuh, SlotRows)
  int ld = K;          // row stride of the matrix (elements)
  int col0 = 0;        // first column
};

// Balanced contiguous split of `units` over the grid.
__device__ __forceinline__ void split_units(int units, int& u0, int& u1) {
  u0 = (int)((long long)units * blockIdx.x / gridDim.x);
  u1 = (int)((long long)units * (blockIdx.x + 1) / gridDim.x);
}

// Blocks form kKVHeads groups: block b serves KV head b % kKVHeads as member b / kKVHeads of
// its group. A group computes its head's attention (split over its members) and multiplies it
// by the matching column panel of Wo (rows split over its members; from the engine's regrouped
// copy, where each panel is contiguous, when it has one: params.cuh, LayerWeights::wo_panels).
struct AttnGroup {
  int head, rank, size;
};
__device__ __forceinline__ AttnGroup attn_group() {
  const int j = (int)(blockIdx.x % kKVHeads);
  return {j, (int)(blockIdx.x / kKVHeads), ((int)gridDim.x - j + kKVHeads - 1) / kKVHeads};
}
// This block's rows of its group's Wo panel.
__device__ __forceinline__ void wo_rows(const AttnGroup& g, int& r0, int& r1) {
  r0 = kHidden * g.rank / g.size;
  r1 = kHidden * (g.rank + 1) / g.size;
}

// Stream position `idx` within one token: 4 matrices per layer, then the LM head.
constexpr int kStreamPerLayer = 4;
constexpr int kStreamLmHead = kStreamPerLayer * kLayers;  // the LM head's position
constexpr int kStreamPerToken = kStreamLmHead + 1;

// Greedy launches without debug logits stream the LM head's int8 copy (lm_head_q8.cuh).
__device__ __forceinline__ bool lm_q8_active(const MkParams& p) {
  return p.lm_q8 != nullptr && p.sample_mode == 0 && p.dbg_logits == nullptr;
}

// kFine: the short-context build's rows per slot (config.cuh, SlotRows).
template <bool kFine>
__device__ __forceinline__ Segment stream_segment(const MkParams& p, int idx) {
  using R = SlotRows<kFine>;
  int u0, u1;
  if (idx == kStreamLmHead) {
    split_units(kVocab, u0, u1);
    if (lm_q8_active(p))
      return {reinterpret_cast<const bf16_t*>(p.lm_q8), u0, u1 - u0, kQ8RowElems, R::kLmHeadQ8};
    return {p.lm_head, u0, u1 - u0, kHidden, R::kLmHead};
  }
  const LayerWeights& w = p.layer[idx / kStreamPerLayer];
  switch (idx % kStreamPerLayer) {
    case 0: split_units(kQKVDim, u0, u1); return {w.wqkv, u0, u1 - u0, kHidden, R::kQKV};
    case 1: {
      const AttnGroup g = attn_group();
      wo_rows(g, u0, u1);
      if (w.wo_panels) return {w.wo_panels + (size_t)g.head * kHidden * kGroupDim, u0, u1 - u0, kGroupDim, R::kO};
      return {w.wo, u0, u1 - u0, kGroupDim, R::kO, kQDim, g.head * kGroupDim};
    }
    case 2: split_units(kInter, u0, u1); return {w.wgu, 2 * u0, 2 * (u1 - u0), kHidden, R::kGateUp};  // pairs
    default: split_units(kHidden, u0, u1); return {w.wdown, u0, u1 - u0, kInter, R::kDown};
  }
}

// The ring's slots are handed over through mbarriers on sm_80+ (full: copies landed; empty:
// the consuming warp is done), through volatile flags on sm_75.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define MK_RING_MBAR 1
#else
#define MK_RING_MBAR 0
#endif

#if MK_RING_MBAR
// ---- mbarrier primitives (sm_80+) -------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(unsigned long long* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(smem_addr(bar)), "r"(count));
}
// True once the phase with this parity has completed (acquire: the slot's data is visible).
__device__ __forceinline__ bool mbar_try_wait(unsigned long long* bar, unsigned parity) {
  unsigned ok;
#if __CUDA_ARCH__ >= 900
  asm volatile("{ .reg .pred P; mbarrier.try_wait.parity.shared::cta.b64 P, [%1], %2; selp.b32 %0, 1, 0, P; }"
               : "=r"(ok) : "r"(smem_addr(bar)), "r"(parity) : "memory");
#else
  asm volatile("{ .reg .pred P; mbarrier.test_wait.parity.shared::cta.b64 P, [%1], %2; selp.b32 %0, 1, 0, P; }"
               : "=r"(ok) : "r"(smem_addr(bar)), "r"(parity) : "memory");
#endif
  return ok != 0;
}
__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
#if __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(smem_addr(bar)) : "memory");
#else
  asm volatile("{ .reg .b64 state; mbarrier.arrive.shared::cta.b64 state, [%0]; }" :: "r"(smem_addr(bar)) : "memory");
#endif
}
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void mbar_expect_tx(unsigned long long* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;"
               :: "r"(smem_addr(bar)), "r"(bytes) : "memory");
}
// Global -> shared bulk copy on the TMA engine; completes `bytes` on the mbarrier. Weights are
// read exactly once per token: ask L2 to evict them first so activations and the KV cache stay.
__device__ __forceinline__ void bulk_copy_g2s(void* dst, const void* src, unsigned bytes,
                                              unsigned long long* bar, uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;"
      :: "r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(smem_addr(bar)), "l"(policy) : "memory");
}
#endif

#if MK_RING_MBAR && __CUDA_ARCH__ < 900
// sm_80-89: one lane's 16-byte global -> shared copy, and the arrive on `bar` once every copy
// this lane issued before has landed. (No L2 cache hint: with one, the H100 stopped on an
// illegal instruction running this path's PTX; RESEARCH.md.)
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_arrive(unsigned long long* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" :: "r"(smem_addr(bar)) : "memory");
}
#endif

struct Ring {
  BlockControl* ctl;
  uint8_t* slots;   // nslots * kSlotBytes of dynamic shared memory
  int nslots;
  uint32_t base;    // consumers: sequence number of the current stage's first slot

  __device__ __forceinline__ const bf16_t* slot_ptr(uint32_t seq) const {
    return reinterpret_cast<const bf16_t*>(slots + (size_t)(seq % nslots) * kSlotBytes);
  }

  // Whole warp. False on timeout or when the launch is failing; the data must then be ignored.
  __device__ __forceinline__ bool wait_full(const MkParams& p, uint32_t seq, int step) const {
    const unsigned slot = seq % nslots, fill = seq / nslots;
#if MK_RING_MBAR
    if (
#if __CUDA_ARCH__ < 900
        ctl->full_flag[slot] >= (int)fill + 1 &&  // issued (see producer_main)
#endif
        mbar_try_wait(&ctl->full[slot], fill & 1))
      return true;
#else
    if (ctl->full_flag[slot] == (int)fill + 1) { __threadfence_block(); return true; }
#endif
    const uint64_t t0 = global_timer_ns();
    for (unsigned it = 1;; ++it) {
#if MK_RING_MBAR
      if (
#if __CUDA_ARCH__ < 900
          ctl->full_flag[slot] >= (int)fill + 1 &&
#endif
          mbar_try_wait(&ctl->full[slot], fill & 1))
        return true;
#else
      if (ctl->full_flag[slot] == (int)fill + 1) { __threadfence_block(); return true; }
#endif
      if ((it & 63) == 0) {
        if (error_raised(p)) return false;
        if (global_timer_ns() - t0 > p.timeout_ns) {
          if ((threadIdx.x & 31) == 0) raise_error(p, MK_ERR_RING_TIMEOUT, (int)seq, step);
          return false;
        }
      }
    }
  }

  // Whole warp, after its last read of the slot.
  __device__ __forceinline__ void release(uint32_t seq) const {
#if MK_RING_MBAR
    // Every lane arrives (the empty mbarrier expects 32): each arrive releases that lane's own
    // reads of the slot to the producer's wait. (With __syncwarp and one lane's arrive the order
    // holds too, but compute-sanitizer's racecheck does not carry it through the __syncwarp and
    // reported the refill as a race with the reads.)
    mbar_arrive(&ctl->empty[seq % nslots]);
#else
    __syncwarp();
    if ((threadIdx.x & 31) == 0) {
      __threadfence_block();
      ctl->empty_flag[seq % nslots] = (int)(seq / nslots) + 1;
    }
#endif
  }
};

__device__ __forceinline__ void ring_init(BlockControl& ctl, int nslots) {
  if (threadIdx.x == 0) {
    for (int s = 0; s < nslots; ++s) {
#if MK_RING_MBAR
#if __CUDA_ARCH__ >= 900
      mbar_init(&ctl.full[s], 1);   // the producer's arrive.expect_tx
#else
      mbar_init(&ctl.full[s], 32);  // every producer lane's cp.async arrive
#endif
      mbar_init(&ctl.empty[s], 32);  // every lane of the consuming warp arrives (Ring::release)
#endif
      ctl.full_flag[s] = 0;
      ctl.empty_flag[s] = 0;
    }
    ctl.abort = 0;
    ctl.consumers_done = 0;
    ctl.fill_seq = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
    // (sm_80-89: the __syncthreads after ring_init orders the initializations before any use.)
  }
}

// Producer side: wait until slot `seq` may be refilled. False when the block is stopping.
__device__ __forceinline__ bool producer_wait_empty(const MkParams& p, const Ring& r, uint32_t seq) {
  if (seq < (uint32_t)r.nslots) return true;
  const unsigned slot = seq % r.nslots, prev_fill = seq / r.nslots - 1;
  const uint64_t t0 = global_timer_ns();
  for (unsigned it = 0;; ++it) {
#if MK_RING_MBAR
    if (mbar_try_wait(&r.ctl->empty[slot], prev_fill & 1)) return true;
#else
    if (r.ctl->empty_flag[slot] >= (int)prev_fill + 1) return true;
#endif
    if ((it & 63) == 0) {
      if (r.ctl->consumers_done || error_raised(p)) return false;
      // consumers hold a slot at most while they wait at a (bounded) barrier
      if (global_timer_ns() - t0 > 4 * p.timeout_ns) return false;
    }
  }
}

// Walks the weight stream of one block slot by slot: every step, every segment, its rows per
// slot (Segment::rps) at a time. The ring fill and the L2 prefetch front are two cursors over it.
template <bool kFine>
struct StreamCursor {
  int step, idx, r0;
  Segment s;
  __device__ __forceinline__ void begin(const MkParams& p) {
    step = 0; idx = p.lm_only_hidden ? kStreamLmHead : 0; r0 = 0;
    s = stream_segment<kFine>(p, idx);
  }
  __device__ __forceinline__ bool done(const MkParams& p) const { return step >= p.n_steps; }
  __device__ __forceinline__ const bf16_t* src() const { return s.base + (size_t)(s.row0 + r0) * s.ld + s.col0; }
  __device__ __forceinline__ int rows() const { return min(s.rps, s.nrows - r0); }
  __device__ __forceinline__ unsigned bytes() const { return (unsigned)(rows() * s.K * 2); }
  __device__ __forceinline__ bool contiguous() const { return s.ld == s.K; }
  // 16-byte piece i of the slot's rows in global memory
  __device__ __forceinline__ const uint4* piece(int i) const {
    const int per_row = s.K / 8;
    return reinterpret_cast<const uint4*>(src() + (size_t)(i / per_row) * s.ld) + i % per_row;
  }
  __device__ __forceinline__ void advance(const MkParams& p) {
    r0 += s.rps;
    while (r0 >= s.nrows && step < p.n_steps) {  // next non-empty segment
      r0 = 0;
      if (++idx == kStreamPerToken) { idx = p.lm_only_hidden ? kStreamLmHead : 0; ++step; }
      if (step < p.n_steps) s = stream_segment<kFine>(p, idx);
    }
  }
};

// The producer warp: stream every segment of every step into the ring, in use order.
// kBulkPrefetch (the long-context kernel, sm_90): lane 0 also keeps an L2 prefetch front
// p.prefetch_slots slots ahead of the fills with bulk prefetches. Otherwise the prefetch warp
// (prefetch.cuh) does it, and the producer publishes how many slots it has issued (ctl.fill_seq).
template <bool kBulkPrefetch, bool kFine>
__device__ __forceinline__ void producer_main(const MkParams& p, BlockControl& ctl, uint8_t* slots) {
  Ring r{&ctl, slots, p.nslots, 0};
  const int lane = threadIdx.x & 31;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (lane != 0) return;
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
#endif
  StreamCursor<kFine> fill;
  fill.begin(p);
  uint32_t seq = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  StreamCursor<kFine> pf;
  if (kBulkPrefetch) pf.begin(p);
  uint32_t pf_seq = 0;
#endif
  for (; !fill.done(p); ++seq, fill.advance(p)) {
    const unsigned bytes = fill.bytes();
    uint8_t* dst = slots + (size_t)(seq % r.nslots) * kSlotBytes;
    if (!kBulkPrefetch && lane == 0) atomicExch(&ctl.fill_seq, seq);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !(MK_EXP & 64)
    if (kBulkPrefetch)
    for (; !pf.done(p) && pf_seq < seq + (uint32_t)p.prefetch_slots; ++pf_seq, pf.advance(p)) {
      if (pf.contiguous()) {
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(pf.src()), "r"(pf.bytes()) : "memory");
      } else {
        for (int r = 0; r < pf.rows(); ++r)
          asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;"
                       :: "l"(pf.src() + (size_t)r * pf.s.ld), "r"((unsigned)pf.s.K * 2) : "memory");
      }
    }
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#if MK_EXP & 16  // experiment: no weight copies (slots keep the zeros written at start)
    if (!producer_wait_empty(p, r, seq)) break;
    mbar_expect_tx(&ctl.full[seq % r.nslots], 0);
    continue;
#endif
    if (!producer_wait_empty(p, r, seq)) break;
    // The consumers' last reads of this slot were ordinary (generic-proxy) loads, ordered before
    // this point by the empty mbarrier; the refill is an async-proxy write: order them across proxies.
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    unsigned long long* full = &ctl.full[seq % r.nslots];
    mbar_expect_tx(full, bytes);
#if MK_EXP & 128  // experiment: the same copies, but from a 4 MB window that stays in L2
    if (true) {
      const uint64_t win = (uint64_t)4 << 20;
      for (int r = 0; r < fill.rows(); ++r) {
        const unsigned rb = fill.contiguous() ? bytes : (unsigned)fill.s.K * 2;
        const char* s0 = reinterpret_cast<const char*>(fill.src() + (size_t)r * fill.s.ld);
        const char* b0 = reinterpret_cast<const char*>(p.embed);
        bulk_copy_g2s(dst + r * (size_t)fill.s.K * 2, b0 + (uint64_t)(s0 - b0) % win, rb, full, policy);
        if (fill.contiguous()) break;
      }
    } else
#endif
    if (fill.contiguous()) {
      bulk_copy_g2s(dst, fill.src(), bytes, full, policy);
    } else {  // a column panel: one copy per row
      const unsigned row_bytes = (unsigned)fill.s.K * 2;
      for (int r = 0; r < fill.rows(); ++r)
        bulk_copy_g2s(dst + r * row_bytes, fill.src() + (size_t)r * fill.s.ld, row_bytes, full, policy);
    }
#elif MK_RING_MBAR  // sm_80-89: every lane copies its 16-byte pieces; no lane waits for them
    if (!producer_wait_empty(p, r, seq)) break;
    const int n16 = (int)(bytes / 16);
    for (int i = lane; i < n16; i += 32) cp_async16(dst + (size_t)i * 16, fill.piece(i));
    cp_async_arrive(&ctl.full[seq % r.nslots]);
    // Fills issued per slot: a consumer waits for fill f only after fill f was issued, so the
    // parity it tests cannot be an older phase's (any ring depth; sm_90 binds slots to warps).
    __syncwarp();
    if (lane == 0) ctl.full_flag[seq % r.nslots] = (int)(seq / r.nslots) + 1;
#else
    if (!producer_wait_empty(p, r, seq)) break;
    uint4* d4 = reinterpret_cast<uint4*>(dst);
    const int n16 = (int)(bytes / 16);
    constexpr int kPerLane = kSlotBytes / 16 / 32;  // the whole slot in flight: 24 loads a lane
    uint4 v[kPerLane];
#pragma unroll
    for (int u = 0; u < kPerLane; ++u)
      if (lane + 32 * u < n16) v[u] = ld_weight16(fill.piece(lane + 32 * u));
#pragma unroll
    for (int u = 0; u < kPerLane; ++u)
      if (lane + 32 * u < n16) d4[lane + 32 * u] = v[u];
    __syncwarp();
    if (lane == 0) {
      __threadfence_block();
      ctl.full_flag[seq % r.nslots] = (int)(seq / r.nslots) + 1;
    }
#endif
  }
#if MK_RING_MBAR && __CUDA_ARCH__ < 900
  asm volatile("cp.async.wait_all;" ::: "memory");  // copies in flight land before the block exits
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Copies still in flight must land before the block's shared memory goes away.
  const uint32_t first = seq > (uint32_t)r.nslots ? seq - r.nslots : 0;
  for (uint32_t q = first; q < seq; ++q) {
    const uint64_t t0 = global_timer_ns();
    while (!mbar_try_wait(&ctl.full[q % r.nslots], (q / r.nslots) & 1))
      if (global_timer_ns() - t0 > p.timeout_ns) break;
  }
#endif
}
