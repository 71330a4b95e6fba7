// barriers.cuh: synchronization of a persistent grid through counters in global memory.
//
// Grid barrier (one counter, monotonic within a launch, zeroed by the host before it):
//   arrive:  bar.sync among the consumer warps (this block's writes are done), then thread 0
//            does red.release.gpu: the release orders every write this block made before it
//            (made visible at GPU scope through the CTA barrier's cumulativity) ahead of the
//            increment, so a block that sees the count also sees the data.
//   wait:    thread 0 spins with ld.acquire.gpu until the count reaches epoch * grid; the
//            acquire orders the data reads after the observation, and the following bar.sync
//            extends that to the other threads of the block.
// Every spin is bounded by timeout_ns; on timeout (or when another block already failed) the
// block records an error and all its consumer warps leave together, so the host gets an error
// code instead of a hang.
#pragma once
#include "params.cuh"

// Block-local control state (static shared memory).
struct BlockControl {
  unsigned long long full[kMaxSlots];   // mbarriers: slot filled (sm_90)
  unsigned long long empty[kMaxSlots];  // mbarriers: slot released (sm_90)
  volatile int full_flag[kMaxSlots];    // portable ring: fill count + 1 once filled
  volatile int empty_flag[kMaxSlots];   // portable ring: fill count + 1 once released
  volatile int abort;                   // the block must stop (error seen)
  volatile int consumers_done;          // consumers have left: the producer drains and leaves
  int is_last;                          // this block finished a reduction last
  float best_val[kConsumerWarps];
  int best_idx[kConsumerWarps];
  float attn[kConsumerWarps][kGroup][kHeadDim + 2];  // per-warp softmax partials (m, l, o)
};

// Named barrier 1: the consumer warps only (the producer warps never wait on it).
__device__ __forceinline__ void consumer_sync() {
  asm volatile("bar.sync 1, %0;" :: "r"(kConsumerWarps * 32) : "memory");
}

__device__ __forceinline__ bool error_raised(const MkParams& p) {
  return *(volatile const int*)p.error != MK_OK;
}

// First error wins; later ones (other blocks timing out as a consequence) are dropped.
__device__ __forceinline__ void raise_error(const MkParams& p, int code, int detail, int step) {
  if (atomicCAS(p.error, MK_OK, code) == MK_OK) {
    p.error[1] = blockIdx.x;
    p.error[2] = detail;
    p.error[3] = step;
    __threadfence();
  }
}

// Spin (thread 0) until *counter - target >= 0, bounded. Returns false on timeout or error.
__device__ __forceinline__ bool spin_until(const MkParams& p, const unsigned* counter,
                                           unsigned target, int code, int detail, int step) {
  if ((int)(ld_acquire_gpu(counter) - target) >= 0) return true;
  const uint64_t t0 = global_timer_ns();
  for (unsigned it = 1;; ++it) {
    if ((int)(ld_acquire_gpu(counter) - target) >= 0) return true;
    if ((it & 63) == 0) {
      if (error_raised(p)) return false;
      if (global_timer_ns() - t0 > p.timeout_ns) {
        raise_error(p, code, detail, step);
        return false;
      }
    }
  }
}

// Grid-wide barrier over the consumer warps of every block. `index` counts barriers within
// the launch (used for the fault-injection test and error reports). Returns false when the
// launch must stop; all consumer threads of the block get the same answer.
__device__ __forceinline__ bool grid_barrier(const MkParams& p, BlockControl& ctl,
                                             unsigned& index, int step) {
  consumer_sync();
  ++index;
  if (threadIdx.x == 0) {
    const bool skip = (int)blockIdx.x == p.fault_block && (int)index == p.fault_barrier;
    if (!skip) red_release_gpu_add(&p.sync[0], 1u);
#if MK_EXP & 2  // experiment: do not wait (results are garbage; measures the barrier's cost)
    if (false)
#endif
    if (!spin_until(p, &p.sync[0], index * gridDim.x, MK_ERR_BARRIER_TIMEOUT, (int)index, step))
      ctl.abort = 1;
  }
  consumer_sync();
  return !ctl.abort;
}
