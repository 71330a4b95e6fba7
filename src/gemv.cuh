// gemv.cuh: y = W x for this block's rows of W, reading W from the weight ring.
//
// Each consumer warp takes whole slots (ring slot seq goes to warp seq % kConsumerWarps) and
// computes every row in it: lane l multiplies 16-byte pieces l, l+32, ... of the row (bf16,
// conflict-free shared-memory reads) with its register share of x (rmsnorm.cuh's layout; for
// K > 1024, taken from shared memory 1024 values at a time), in float32, then one warp
// reduction per row. The epilogue gets (first row, rows, sums) with
// every lane holding every sum; it writes the outputs (residual add, SiLU*mul, argmax, ...).
// Checked against host/reference.py by host/validate.py (per-layer hidden states, logits).
#pragma once
#include <type_traits>

#include "rmsnorm.cuh"
#include "weight_ring.cuh"

// This lane's partial dot products of all RPS rows of a slot with x. x comes 1024 values at a
// time from load_part(part, x_part) in rmsnorm.cuh's register layout, which caps the register
// footprint (config.cuh). Chunk-outer, row-inner, two accumulators per row: the FMA chains of
// different rows and halves interleave, so the warp is throughput-bound rather than waiting out
// one long dependent chain per row. Rows past the slot's end are computed on stale data and
// discarded by the caller.
template <int K, int RPS, class LoadPart>
__device__ __forceinline__ void slot_dot_partial(const bf16_t* tile, LoadPart&& load_part, float (&acc)[RPS]) {
  constexpr int kPart = K < 1024 ? K : 1024;
  static_assert(K % kPart == 0, "x is taken 1024 values at a time");
  const int lane = threadIdx.x & 31;
  const uint4* t = reinterpret_cast<const uint4*>(tile);
  float a0[RPS], a1[RPS];
#pragma unroll
  for (int r = 0; r < RPS; ++r) a0[r] = a1[r] = 0.f;
#pragma unroll
  for (int part = 0; part < K / kPart; ++part) {
    float x[kPart / 32];
    load_part(part, x);
#pragma unroll
    for (int c = 0; c < kPart / 256; ++c) {
#pragma unroll
      for (int r = 0; r < RPS; ++r) {
        float w[8];
        unpack_bf16x8(t[r * (K / 8) + (part * (kPart / 256) + c) * 32 + lane], w);
#pragma unroll
        for (int j = 0; j < 8; j += 2) {
          a0[r] = fmaf(w[j], x[c * 8 + j], a0[r]);
          a1[r] = fmaf(w[j + 1], x[c * 8 + j + 1], a1[r]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < RPS; ++r) acc[r] = a0[r] + a1[r];
}

// acc[i] for a run-time i without indexing a register array (which would go to local memory).
template <int N>
__device__ __forceinline__ float pick(const float (&acc)[N], int i) {
  float v = 0.f;
#pragma unroll
  for (int r = 0; r < N; ++r) v = r == i ? acc[r] : v;
  return v;
}

// Runs the stage's slots through dot(tile, acc) (this lane's partial sums of the slot's RPS rows:
// the segment's rows per slot, config.cuh).
// stage_kind names the stage for the timing builds only: its kind (megakernel.cu's stamps: 0 QKV,
// 2 O, 3 gate/up, 4 down, 5 LM head) + 8 * layer.
// kReduce false: the epilogue gets each lane's partial sums and reduces them itself.
template <int K, int RPS, bool kReduce = true, class Dot, class Epilogue>
__device__ __forceinline__ void gemv_run(const MkParams& p, Ring& ring, const Segment& s, int step,
                                         int stage_kind, Dot&& dot, Epilogue&& epilogue) {
  static_assert(RPS >= 1 && RPS <= rows_per_slot(K), "rows per slot");
  const int nslots = (s.nrows + RPS - 1) / RPS;
  // Slot seq always goes to warp seq % kConsumerWarps, and the ring depth is a multiple of
  // kConsumerWarps, so each slot has one consumer warp that takes its fills in order. (A warp
  // must never wait for fill f+1 of a slot whose fill f is still pending: the mbarrier parity
  // test would see the older completed phase and return at once.)
  const int first = (int)((threadIdx.x / 32 + kConsumerWarps - ring.base % kConsumerWarps) % kConsumerWarps);
  for (int i = first; i < nslots; i += kConsumerWarps) {
    const uint32_t seq = ring.base + i;
    const int rows = min(RPS, s.nrows - i * RPS);
    float acc[RPS];
#if MK_EXP & 4  // timing builds: how long warps wait for weights, per stage kind (step kStampStep)
    const uint64_t tw0 = global_timer_ns();
    const bool landed = ring.wait_full(p, seq, step);
    if (step == kStampStep && (threadIdx.x & 31) == 0)
    {
      const unsigned long long waited = global_timer_ns() - tw0;
      atomicAdd(dbg_counters(p) + kDbgRingWait + stage_kind % 8, waited);
      const int timed = stage_kind % 8 == 5 ? 5 * kLayers : 5 * (stage_kind / 8) + stage_kind % 8;
      atomicMax(p.dbg_times + ((size_t)blockIdx.x * kTimedStages + timed) * kStampWords + 2, waited);
    }
    if (landed) {
#else
    if (ring.wait_full(p, seq, step)) {
#endif
#if MK_EXP & 8  // timing builds: cycles of the slot's dot product (step kStampStep)
      const long long c0 = clock64_after(0.f);
      dot(ring.slot_ptr(seq), acc);
      float s1 = 0.f;
#pragma unroll
      for (int r = 0; r < RPS; ++r) s1 += acc[r];
      const long long c1 = clock64_after(s1);
      if (step == kStampStep && (threadIdx.x & 31) == 0) {
        unsigned long long* d = dbg_counters(p);
        atomicAdd(d + kDbgDotCycles + stage_kind % 8, (unsigned long long)(c1 - c0));
        atomicAdd(d + kDbgDotSlots + stage_kind % 8, 1ull);
      }
#else
      if ((kNoDotMask >> (stage_kind % 8)) & 1) {  // experiment: no dot products in these stage kinds
#pragma unroll
        for (int r = 0; r < RPS; ++r) acc[r] = 0.f;
      } else {
        dot(ring.slot_ptr(seq), acc);
      }
#endif
      ring.release(seq);
    } else {
#pragma unroll
      for (int r = 0; r < RPS; ++r) acc[r] = 0.f;  // the launch is failing; outputs are discarded
    }
#if MK_EXP & 8  // timing builds: cycles of the warp sums and epilogue (counter slot 6 + kind / 5)
    const long long e0 = clock64_after(acc[0]);
#endif
#pragma unroll
    for (int r = 0; r < RPS; ++r)
      if (kReduce) acc[r] = warp_sum(acc[r]);
    epilogue(s.row0 + i * RPS, rows, acc);
#if MK_EXP & 8
    const long long e1 = clock64_after(acc[0]);
    if (step == kStampStep && (threadIdx.x & 31) == 0 && stage_kind % 8 >= 4) {
      atomicAdd(dbg_counters(p) + kDbgDotCycles + 6 + (stage_kind % 8 - 4), (unsigned long long)(e1 - e0));
      atomicAdd(dbg_counters(p) + kDbgDotSlots + 6 + (stage_kind % 8 - 4), 1ull);
    }
#endif
  }
  ring.base += nslots;
}

// x in registers (K <= 1024: rmsnorm.cuh's layout).
template <int K, int RPS, class Epilogue, class = typename std::enable_if<K <= 1024>::type>
__device__ __forceinline__ void gemv_stage(const MkParams& p, Ring& ring, const float (&x)[K / 32],
                                           const Segment& s, int step, int stage_kind, Epilogue&& epilogue) {
  gemv_run<K, RPS>(p, ring, s, step, stage_kind,
              [&](const bf16_t* tile, auto& acc) {
                slot_dot_partial<K>(tile, [&](int, float (&xp)[K / 32]) {
#pragma unroll
                  for (int i = 0; i < K / 32; ++i) xp[i] = x[i];
                }, acc);
              }, epilogue);
}

// x in shared memory (K > 1024).
template <int K, int RPS, class Epilogue>
__device__ __forceinline__ void gemv_stage_smem(const MkParams& p, Ring& ring, const float* xs,
                                                const Segment& s, int step, int stage_kind, Epilogue&& epilogue) {
  gemv_run<K, RPS>(p, ring, s, step, stage_kind,
              [&](const bf16_t* tile, auto& acc) {
                slot_dot_partial<K>(tile, [&](int part, float (&xp)[32]) { load_x_smem<1024>(xs + part * 1024, xp); }, acc);
              }, epilogue);
}
