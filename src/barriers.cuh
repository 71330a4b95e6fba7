// barriers.cuh: how blocks of the persistent grid wait for each other.
//
// 1. Activations travel as tagged 64-bit words ("LL" words, as NCCL's low-latency protocol):
//    low 32 bits the float, high 32 bits a tag naming the (step, layer, stage) that wrote it.
//    A 64-bit aligned store is single-copy atomic, so a reader that sees the expected tag also
//    sees the value written with it. Readers poll the data itself: no grid barrier, no fence,
//    and one L2 round trip from the write to the use. Tags grow monotonically (the host moves
//    tag_base past every launch), so stale words never match.
//    Why reuse is safe without barriers: a buffer is rewritten only after a wait that needs an
//    output of every block that was produced after that block's last read of it:
//      qkv (QKV of layer L+1 waits for h of L, which needs every block's act of L, written
//      after its attention read qkv); attn_part (attention of L+1, after the same wait, which
//      comes after every block merged the partials of L); act (gate/up of L+1 waits for every
//      block's O contribution of L+1, made after its down projection of L read act); h (down of
//      L+1 waits for every block's act of L+1, written after it read h at QKV of L+1).
// 1b. Sums over blocks travel as counted words: each contributor adds, with one 64-bit atomic,
//    (1 << 56) plus its value in fixed point (biased to be non-negative), so a word holds the
//    number of contributions in its top byte and their exact integer sum below: a reader polls
//    the word until the count is complete (one round trip, like a tagged word), and the sum
//    does not depend on the order of arrival (bitwise repeatable). Used for the attention
//    output: each KV-head group adds its Wo panel times its heads' output into the residual.
//    The words of step s live in buffer s & 1 and are zeroed during step s + 1 (for step s + 2):
//    zeroing follows the token barrier of step s (every read of them is done) and precedes the
//    zeroing block's arrival at the token barrier of step s + 1 (release), which every
//    contributor of step s + 2 has acquired.
// 2. The token barrier (per step) and the reductions (split-KV merge, argmax) use counters in
//    global memory with release/acquire at GPU scope: the writer's release (or __threadfence
//    before the atomic) orders its plain stores before the count; the reader's acquire orders
//    its reads after it, and bar.sync hands that to the rest of the block. The token barrier
//    also orders the KV-cache stores of a step before every read of the next step.
// Every spin is bounded by timeout_ns; on timeout (or when another block already failed) the
// block records an error and its consumer warps leave together: the host gets an error code,
// not a hang.
#pragma once
#include "params.cuh"

// Block-local control state (static shared memory).
struct BlockControl {
  unsigned long long full[kMaxSlots];   // mbarriers: slot filled (sm_90)
  unsigned long long empty[kMaxSlots];  // mbarriers: slot released (sm_90)
  volatile int full_flag[kMaxSlots];    // portable ring: fill count + 1 once filled
  volatile int empty_flag[kMaxSlots];   // portable ring: fill count + 1 once released
  volatile int abort;                   // the block must stop (error seen, or EOS)
  volatile int consumers_done;          // consumers have left: the producer drains and leaves
  unsigned fill_seq;  // slots the fill warp has issued (atomics only: read by the prefetch warp)
  int is_last;                          // this block finished a reduction last
  float best_val[kConsumerWarps];
  int best_idx[kConsumerWarps];
  // Staged stage inputs, double-buffered; the attention stage borrows them for its KV staging
  // buffers, q, its per-warp softmax partials and the split-KV partials of its KV head
  // (attention.cuh, config.cuh).
  alignas(16) float xs[2][kStageFloats];
  alignas(16) float h_full[kHidden];  // the residual stream as this block last read it (all rows)
  alignas(16) float attn_o[kGroupDim];  // attention output of this block's KV-head group
  float rope_cos[kHeadDim / 2], rope_sin[kHeadDim / 2];  // this step's RoPE table (kv_cache.cuh)
#if MK_EXP & 256
  long long dbg_last;  // sub_stamp's previous clock
#endif
};

// MK_EXP & 256 (timing builds only): thread 0 adds the SM clocks since its previous sub-stamp to
// counter kDbgSub + id (summed over blocks and layers of step kStampStep; kSubLayerStart only sets
// the start). Members that scan no chunk skip the attention's inner points.
__device__ __forceinline__ void sub_stamp(const MkParams& p, BlockControl& ctl, int step, SubPoint id) {
#if MK_EXP & 256
  if (step == kStampStep && threadIdx.x == 0) {
    const long long now = clock64();
    if (id != kSubLayerStart)
      atomicAdd(dbg_counters(p) + kDbgSub + id, (unsigned long long)(now - ctl.dbg_last));
    ctl.dbg_last = now;
  }
#endif
}

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

// ---- tagged activation words -----------------------------------------------------------------
__device__ __forceinline__ void ll_store(unsigned long long* dst, float v, uint32_t tag) {
  const unsigned long long w = ((unsigned long long)tag << 32) | __float_as_uint(v);
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" :: "l"(dst), "l"(w) : "memory");
}

__device__ __forceinline__ ulonglong2 ll_load2(const unsigned long long* src) {  // 2 words, 16 B
  ulonglong2 r;
  asm volatile("ld.relaxed.gpu.global.v2.u64 {%0, %1}, [%2];" : "=l"(r.x), "=l"(r.y) : "l"(src) : "memory");
  return r;
}

__device__ __forceinline__ uint32_t ll_tag(unsigned long long w) { return (uint32_t)(w >> 32); }
__device__ __forceinline__ float ll_value(unsigned long long w) { return __uint_as_float((uint32_t)w); }

// Poll two words at src until both carry `tag`. False on timeout or when the launch is failing.
__device__ __forceinline__ bool ll_wait2(const MkParams& p, const unsigned long long* src, uint32_t tag,
                                         ulonglong2& v, int step) {
  if (ll_tag(v.x) == tag && ll_tag(v.y) == tag) return true;
  const uint64_t t0 = global_timer_ns();
  for (unsigned it = 1;; ++it) {
    __nanosleep(MK_POLL_SLEEP_NS);
    v = ll_load2(src);
    if (ll_tag(v.x) == tag && ll_tag(v.y) == tag) return true;
    if ((it & 31) == 0) {
      if (error_raised(p)) return false;
      if (global_timer_ns() - t0 > p.timeout_ns) {
        raise_error(p, MK_ERR_WAIT_TIMEOUT, (int)(tag - p.tag_base), step);
        return false;
      }
    }
  }
}

// All consumer threads: wait until all n (<= N) words are ready(word) and hand each pair to
// store(i, word 2i, word 2i+1); pair i is read at pair_src(i) (16-byte aligned). Every round re-issues the loads of all words not yet seen,
// together, so the wait ends one L2 round trip after the last word lands (not one round trip
// per word). Returns false (for every thread) when the launch must stop; store then never ran.
template <int N, class Src, class Ready, class Store>
__device__ __forceinline__ bool stage_words_at(const MkParams& p, BlockControl& ctl, Src&& pair_src, int n,
                                               Ready&& ready, Store&& store, int detail, int step) {
  constexpr int kThreads = kConsumerWarps * 32, kPer = (N / 2 + kThreads - 1) / kThreads;
  const int pairs = n / 2;
  ulonglong2 v[kPer];
  bool have[kPer];
#if MK_EXP & 8
  const long long e0 = clock64_after(0.f);
#endif
#pragma unroll
  for (int u = 0; u < kPer; ++u) {  // all loads in flight first
    const int i = threadIdx.x + u * kThreads;
    if (i < pairs) v[u] = ll_load2(pair_src(i));
  }
#if MK_EXP & 8  // timing builds: cycles of one L2 round trip (thread 0's first poll) and poll rounds
  const long long e1 = clock64_after(__uint_as_float((uint32_t)v[0].x));
  unsigned rounds_dbg = 0;
#endif
  bool ok = true;
  uint64_t t0 = 0;
  for (unsigned round = 0;; ++round) {
#if MK_EXP & 8
    rounds_dbg = round;
#endif
    bool all = true;
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int i = threadIdx.x + u * kThreads;
      have[u] = i >= pairs || (ready(v[u].x) && ready(v[u].y));
      all = all && have[u];
    }
    if (all) break;
    if (round == 0) t0 = global_timer_ns();
    else if ((round & 15) == 0 && (error_raised(p) || global_timer_ns() - t0 > p.timeout_ns)) {
      if (!error_raised(p)) raise_error(p, MK_ERR_WAIT_TIMEOUT, detail, step);
      ok = false;
      break;
    }
    __nanosleep(MK_POLL_SLEEP_NS);
#pragma unroll
    for (int u = 0; u < kPer; ++u)
      if (!have[u]) v[u] = ll_load2(pair_src(threadIdx.x + u * kThreads));
  }
  if (ok) {
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int i = threadIdx.x + u * kThreads;
      if (i < pairs) store(i, v[u].x, v[u].y);
    }
  }
  if (!ok) ctl.abort = 1;
#if MK_EXP & 8
  if (step == kStampStep && threadIdx.x == 0) {
    unsigned long long* d = dbg_counters(p);
    atomicAdd(d + kDbgPollCycles, (unsigned long long)(e1 - e0));
    atomicAdd(d + kDbgPollRounds, (unsigned long long)rounds_dbg);
    atomicAdd(d + kDbgPolls, 1ull);
  }
#endif
  consumer_sync();
  return !ctl.abort;
}

// The same for n consecutive words at src.
template <int N, class Ready, class Store>
__device__ __forceinline__ bool stage_words(const MkParams& p, BlockControl& ctl, const unsigned long long* src,
                                            int n, Ready&& ready, Store&& store, int detail, int step) {
  return stage_words_at<N>(p, ctl, [&](int i) { return src + 2 * i; }, n, ready, store, detail, step);
}

// The N-word activation `src` written with `tag`, values copied to shared memory dst.
template <int N>
__device__ __forceinline__ bool ll_stage(const MkParams& p, BlockControl& ctl, const unsigned long long* src,
                                         uint32_t tag, float* dst, int step) {
  return stage_words<N>(
      p, ctl, src, N, [&](unsigned long long w) { return ll_tag(w) == tag; },
      [&](int i, unsigned long long a, unsigned long long b) {
        dst[2 * i] = ll_value(a);
        dst[2 * i + 1] = ll_value(b);
      },
      (int)(tag - p.tag_base), step);
}

// ---- counted fixed-point words (1b above) ------------------------------------------------------
constexpr unsigned long long kCountOne = 1ull << 56;  // one contribution
constexpr unsigned long long kFixBias = 1ull << 52;   // added to every contribution: no borrow into the count
constexpr float kFixMax = (float)(1ll << (51 - kFixShift));  // contributions are clamped to +-this
// kKVHeads contributions of at most 1.5 * kFixBias each must stay below the count byte.
static_assert(kKVHeads * 3 < 32, "too many contributions per counted word");
__device__ __forceinline__ void red_add_counted(unsigned long long* dst, float v) {
  const long long f = __float2ll_rn(fminf(fmaxf(v, -kFixMax), kFixMax) * (float)(1ll << kFixShift));
  const unsigned long long w = kCountOne + kFixBias + (unsigned long long)f;
  asm volatile("red.relaxed.gpu.global.add.u64 [%0], %1;" :: "l"(dst), "l"(w) : "memory");
}
__device__ __forceinline__ unsigned counted_count(unsigned long long w) { return (unsigned)(w >> 56); }
// The sum of `count` contributions.
__device__ __forceinline__ float counted_value(unsigned long long w, unsigned count) {
  const long long f = (long long)((w & (kCountOne - 1)) - count * kFixBias);
  return (float)f * (1.0f / (float)(1ll << kFixShift));
}

// ---- counters ------------------------------------------------------------------------------------
// Spin (one thread) until *counter - target >= 0, bounded. Returns false on timeout or error.
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
