// prefetch.cuh: the prefetch warp of the short-context kernel. It walks the same weight stream
// as the fill warp (weight_ring.cuh), p.prefetch_slots slots ahead of the fills, and asks the
// L2 for every 128-byte line of each slot (prefetch.global.L2), 32 lanes at a time.
//
// Why (RESEARCH.md section 10): with the lane-0 bulk prefetch, at short contexts the slowest
// block of each stage waited 2.0-3.8 us (median over layers) for a ring slot, and that slot
// decided the stage. With this warp's line prefetches that wait was 0.2 us at most, and context 1
// went from 1,407 to 1,594 tok/s on the H100. At 1,024 positions and beyond the same build was
// 5-10% slower than the bulk-prefetch kernel (the split-KV scan is latency-bound and meets more
// DRAM traffic), so long launches run the other kernel (megakernel.cu, MkVariant).
// The prefetches are hints: nothing waits on them and no result depends on them.
#pragma once
#include "weight_ring.cuh"

template <bool kFine>
__device__ __forceinline__ void prefetch_main(const MkParams& p, BlockControl& ctl) {
#if !(MK_EXP & 64)  // experiment switch: no L2 prefetch
  const int lane = threadIdx.x & 31;
  StreamCursor<kFine> pf;
  pf.begin(p);
  for (uint32_t pf_seq = 0; !pf.done(p); ++pf_seq, pf.advance(p)) {
    // Stay p.prefetch_slots ahead of the fills. fill_seq is a hint with no ordering duty, but a
    // plain read of it beside the fill warp's plain write is a data race (racecheck says so).
    while (pf_seq >= atomicAdd(&ctl.fill_seq, 0u) + (uint32_t)p.prefetch_slots) {
      if (ctl.consumers_done || error_raised(p)) return;
      __nanosleep(64);
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // The LM head's slots: one bulk prefetch each (lane 0). It streams 2.4 MB a block with no wait
    // in between; this way ran 1-1.8% faster a token than line prefetches (H100, RESEARCH.md
    // section 14; prefetching it 8, 24 or 64 slots further ahead: equal, -2.5%, -7%).
    if (pf.idx == kStreamLmHead) {
      if (lane == 0)
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(pf.src()), "r"(pf.bytes()) : "memory");
      continue;
    }
#endif
    constexpr int kPiecesPerLine = 128 / 16;  // StreamCursor::piece counts 16-byte pieces
    for (int i = lane; i < (int)pf.bytes() / 128; i += 32)
      prefetch_l2(pf.piece(i * kPiecesPerLine));
  }
#endif
}
