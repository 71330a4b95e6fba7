// lm_head_q8.cuh: greedy token choice from an int8 copy of the LM head, exact.
//
// The LM head is 26% of the bytes a token reads (0.311 GB of 1.192). For greedy decoding only the
// argmax matters, so the weight stream carries an int8 copy instead (half the bytes), and the
// bf16 rows are read again only for the few rows that could still be the argmax:
//   1. Every row r has a scale s_r = max|w_r| / 127 and q_r = round(w_r / s_r), so
//      |w_ri - s_r q_ri| <= s_r / 2; x goes to int8 too, x ~ s_x (xh + xl / 254) within s_x / 500
//      an element (q8_input), and the approximate logit a_r = s_r s_x (q_r . xh + q_r . xl / 254)
//      (dp4a, exact integer sums) is within B_r = s_r (kQ8Margin |x|_1 + 127 kHidden s_x / 500) of
//      the bf16 logit the kernel computes otherwise (0.5 |x|_1 for the rounding of w, 127 |x - x~|_1
//      for that of x; the margin's rest covers float32 rounding of both dot products, < 0.002 s_r |x|_1).
//   2. A block keeps, per warp, the rows whose upper bound a_r + B_r reaches the running
//      maximum of the lower bounds a_j - B_j. The block's final maximum T is a lower bound of its
//      best bf16 logit, and no row left out can reach it.
//   3. The candidates' bf16 rows are read from global memory and multiplied exactly as the bf16
//      path does (gemv.cuh's slot_dot_partial, one row), so the block's best (logit, row), and
//      the token, are bit-identical to the bf16 LM head's. A warp whose list overflows makes the
//      block recompute all its rows in bf16 (slow, still exact).
// Only greedy launches without debug logits use it (lm_q8_active); sampling needs every logit.
// The engine builds the copy at creation (mk_create; MK_LM_Q8=0 skips it, mk_set_lm_q8 switches it
// for the engine's next launches). Measured gain and candidate counts: RESEARCH.md section 21.
//
// Row layout (kQ8RowBytes): the kHidden int8 weights in column order (any kHidden of 256 k), so that lane l's 8-byte pieces
// c * 32 + l hold its x[8c .. 8c+7] (rmsnorm.cuh's register layout); then 16 bytes: the scale (float)
// and zeros.
#pragma once
#include "gemv.cuh"
#include "sampling.cuh"

constexpr float kQ8Margin = 0.55f;
// ctl.xs during the int8 LM head: x (kHidden floats, for the rescoring), then each warp's list of
// kQ8ListCap (upper bound, row) pairs.
constexpr int kQ8ListCap = (2 * kStageFloats - kHidden) / 2 / kConsumerWarps;
constexpr int kQ8Words = kHidden / 128;  // 32-bit words of int8 a lane holds of a row (and of x)
static_assert(kQ8RowBytes % 16 == 0 && rows_per_slot(kQ8RowElems) >= 1, "int8 rows in 16-byte pieces");
// (kQ8RowBytes is in config.cuh and lm_q8_active in weight_ring.cuh: the stream picks the copy.)

// max |v| over a warp's register share of a kHidden-vector (every lane gets it).
__device__ __forceinline__ float warp_absmax(const float (&v)[kHidden / 32]) {
  float m = 0.f;
#pragma unroll
  for (int k = 0; k < kHidden / 32; ++k) m = fmaxf(m, fabsf(v[k]));
  return warp_max(m);
}
// v rounded and clamped to [-127, 127], as byte b of a word.
__device__ __forceinline__ uint32_t s8_byte(float v, int b) {
  return ((uint32_t)(int)fminf(fmaxf(v, -127.f), 127.f) & 0xffu) << (8 * b);
}

// One warp a row: the int8 copy of lm_head (vocab rows) in the layout above.
__global__ void quantize_lm_head_q8(const bf16_t* __restrict__ w, uint8_t* __restrict__ q8, int rows) {
  const int lane = threadIdx.x & 31;
  const int r = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32);
  if (r >= rows) return;
  float x[kHidden / 32];
  load_x_bf16<kHidden>(w + (size_t)r * kHidden, x);
  const float s = warp_absmax(x) / 127.f;
  uint32_t words[kQ8Words];
#pragma unroll
  for (int k = 0; k < kQ8Words; ++k) {
    words[k] = 0u;
#pragma unroll
    for (int b = 0; b < 4; ++b) words[k] |= s8_byte(s > 0.f ? rintf(x[4 * k + b] / s) : 0.f, b);
  }
  uint2* row = reinterpret_cast<uint2*>(q8 + (size_t)r * kQ8RowBytes);
#pragma unroll
  for (int c = 0; c < kQ8Words / 2; ++c) row[c * 32 + lane] = make_uint2(words[2 * c], words[2 * c + 1]);
  if (lane == 0) reinterpret_cast<uint4*>(row)[kHidden / 16] = make_uint4(__float_as_uint(s), 0u, 0u, 0u);
}

// x as int8 pairs for dp4a: x ~ s_x (xh + xl / 254), |x - that| <= s_x / 500 per element
// (s_x = max|x| / 127; the 1/508 of the two roundings plus float32 slack). Byte b of word k is
// element 4k + b of this lane's x, as in the int8 rows.
struct Q8Input {
  uint32_t hi[kQ8Words], lo[kQ8Words];
  float sx;
};
__device__ __forceinline__ Q8Input q8_input(const float (&x)[kHidden / 32]) {
  const float m = warp_absmax(x);
  Q8Input in;
  in.sx = m / 127.f;
  const float inv = m > 0.f ? 1.f / in.sx : 0.f;
#pragma unroll
  for (int k = 0; k < kQ8Words; ++k) {
    in.hi[k] = in.lo[k] = 0u;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const float v = x[4 * k + b] * inv, h = rintf(v);
      in.hi[k] |= s8_byte(h, b);
      in.lo[k] |= s8_byte(rintf((v - h) * 254.f), b);
    }
  }
  return in;
}

// This lane's partial s_r s_x (q_r . (xh + xl / 254)) for the slot's RPS int8 rows (integer dot
// products, exact), and scale[r] = s_r (every lane).
template <int RPS>
__device__ __forceinline__ void q8_slot_dot(const uint8_t* tile, const Q8Input& in, float (&acc)[RPS],
                                            float (&scale)[RPS]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < RPS; ++r) {
    const uint2* row = reinterpret_cast<const uint2*>(tile + r * kQ8RowBytes);
    scale[r] = *reinterpret_cast<const float*>(row + kHidden / 8);
    int h = 0, l = 0;
#pragma unroll
    for (int c = 0; c < kQ8Words / 2; ++c) {
      const uint2 w = row[c * 32 + lane];
      h = __dp4a((int)w.x, (int)in.hi[2 * c], h);
      l = __dp4a((int)w.x, (int)in.lo[2 * c], l);
      h = __dp4a((int)w.y, (int)in.hi[2 * c + 1], h);
      l = __dp4a((int)w.y, (int)in.lo[2 * c + 1], l);
    }
    acc[r] = fmaf((float)l, 1.f / 254.f, (float)h) * (scale[r] * in.sx);
  }
}

// A warp's candidate list in shared memory: (upper bound, row) pairs, and its running threshold
// (the largest lower bound a_j - B_j seen so far). The warp's values are uniform.
struct Q8List {
  float* ub;
  int* row;
  int n = 0;
  float thr = -INFINITY;
  bool overflow = false;

  // One level of a reduce-scatter of kV values over the lanes: the lanes with lane bit
  // kHalf * 32 / kV keep the upper kHalf values, their partners the lower.
  template <int kV, int kHalf>
  __device__ __forceinline__ static void halve(float (&v)[kV]) {
    constexpr int kBit = kHalf * 32 / kV;
    const bool up = (threadIdx.x & 31) & kBit;
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
      const float send = up ? v[i] : v[i + kHalf], keep = up ? v[i + kHalf] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, kBit);
    }
  }
  // A slot's rows: lane l's partial sums acc[0..RPS) of rows r0.. (rows valid), scale[] every
  // lane's. A reduce-scatter over the lanes (15 + 1 shuffles for up to 16 rows, 31 for up to 32,
  // instead of 5 a row) leaves lanes 2j and 2j+1 with row (8 b4 + 4 b3 + 2 b2 + b1) of lane bits b
  // (up to 32 rows: lane l with row l); one lane of a row keeps it if its upper bound reaches the
  // threshold.
  template <int RPS>
  __device__ __forceinline__ void offer_slot(const float (&acc)[RPS], const float (&scale)[RPS], float bx, int r0,
                                             int rows) {
    static_assert(RPS <= 32, "the reduce-scatter takes up to 32 rows");
    constexpr int kV = RPS <= 16 ? 16 : 32;
    const int lane = threadIdx.x & 31;
    float v[kV];
#pragma unroll
    for (int r = 0; r < kV; ++r) v[r] = r < RPS ? acc[r] : 0.f;
    if (kV == 32) halve<kV, kV / 2>(v);
    halve<kV, 8>(v);
    halve<kV, 4>(v);
    halve<kV, 2>(v);
    halve<kV, 1>(v);
    const float a = kV == 32 ? v[0] : v[0] + __shfl_xor_sync(0xffffffffu, v[0], 1);
    const int r = kV == 32 ? lane : lane >> 1;
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < RPS; ++k) s = k == r ? scale[k] : s;
    const bool valid = r < rows;
    const float b = s * bx;
    thr = fmaxf(thr, warp_max(valid ? a - b : -INFINITY));
    const bool keep = valid && (kV == 32 || !(lane & 1)) && a + b >= thr;
    unsigned mask = __ballot_sync(0xffffffffu, keep);
    if (!mask) return;
    if (n + __popc(mask) > kQ8ListCap) compact();
    if (n + __popc(mask) > kQ8ListCap) { overflow = true; return; }
    if (keep) {
      const int at = n + __popc(mask & ((1u << lane) - 1u));
      ub[at] = a + b;
      row[at] = r0 + r;
    }
    n += __popc(mask);
  }
  // Drops the entries the threshold has passed (lane 0 rewrites the list in order; rare).
  __device__ __forceinline__ void compact() {
    __syncwarp();
    int m = 0;
    if ((threadIdx.x & 31) == 0)
      for (int i = 0; i < n; ++i)
        if (ub[i] >= thr) { ub[m] = ub[i]; row[m] = row[i]; ++m; }
    n = __shfl_sync(0xffffffffu, m, 0);
    __syncwarp();
  }
};

// The bf16 logit of row r, bit-identical to the bf16 LM head's (gemv.cuh, one row from global
// memory); x in shared memory (rmsnorm.cuh's layout, as every warp held it).
__device__ __forceinline__ float bf16_logit(const MkParams& p, int r, const float* xs) {
  float acc[1];
  slot_dot_partial<kHidden, 1>(p.lm_head + (size_t)r * kHidden,
                               [&](int, float (&xp)[kHidden / 32]) { load_x_smem<kHidden>(xs, xp); }, acc);
  return warp_sum(acc[0]);
}

__device__ __forceinline__ float* q8_x(BlockControl& ctl) { return &ctl.xs[0][0]; }
__device__ __forceinline__ float* q8_list(BlockControl& ctl, int warp) {
  return &ctl.xs[0][0] + kHidden + warp * 2 * kQ8ListCap;
}

// All consumer warps, after the int8 stage: each warp's list and threshold -> the block's best
// (logit, row) in (v, i) of every warp (then publish_argmax reduces blocks as for bf16 rows).
// row0..row0+n-1: the block's rows.
__device__ __forceinline__ void q8_rescore(const MkParams& p, BlockControl& ctl, const Q8List& mine, int row0,
                                           int n, float& v, int& i, int step) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
#if MK_EXP & 4
  const uint64_t t0 = global_timer_ns();
#endif
  int rescored = 0;  // (timing builds report it)
  if (lane == 0) { ctl.best_val[warp] = mine.thr; ctl.best_idx[warp] = mine.overflow ? -1 : mine.n; }
  consumer_sync();
  float T = -INFINITY;
  bool overflow = false;
  int counts[kConsumerWarps];
#pragma unroll
  for (int w = 0; w < kConsumerWarps; ++w) {
    T = fmaxf(T, ctl.best_val[w]);
    counts[w] = ctl.best_idx[w];
    overflow |= counts[w] < 0;
  }
  consumer_sync();  // best_* are reused by publish_argmax
  const float* xs = q8_x(ctl);
  v = -INFINITY;
  i = 0x7fffffff;
  auto rescore = [&](int r) {
    ++rescored;
    const float l = bf16_logit(p, r, xs);
    if (better(l, r, v, i)) { v = l; i = r; }
  };
  if (overflow) {  // every row of the block again, in bf16
    for (int r = row0 + warp; r < row0 + n; r += kConsumerWarps) rescore(r);
  } else {
    // Entry e of warp w's list is number k0 + e of the concatenated lists: warp (k0 + e) % 8 takes it.
    int k0 = 0;
#pragma unroll
    for (int w = 0; w < kConsumerWarps; ++w) {
      const float* ub = q8_list(ctl, w);
      const int* rows = reinterpret_cast<const int*>(ub + kQ8ListCap);
      for (int e = (warp - k0 % kConsumerWarps + kConsumerWarps) % kConsumerWarps; e < counts[w]; e += kConsumerWarps)
        if (ub[e] >= T) rescore(rows[e]);
      k0 += counts[w];
    }
  }
#if MK_EXP & 4  // timing builds: rescored rows, fallbacks and time (step kStampStep)
  if (step == kStampStep && lane == 0) {
    atomicAdd(dbg_counters(p) + kDbgQ8Rescored, (unsigned long long)rescored);
    if (warp == 0) {
      atomicAdd(dbg_counters(p) + kDbgQ8RescoreNs, (unsigned long long)(global_timer_ns() - t0));
      if (overflow) atomicAdd(dbg_counters(p) + kDbgQ8Overflows, 1ull);
    }
  }
#endif
}

// The greedy LM head from the int8 copy: the stage over the block's rows (segment s), then the
// rescoring; (v, i) = the block's best bf16 (logit, row) for publish_argmax. x: the final norm's
// output in registers (every warp the same); ctl.xs must be free (the caller's consumer_sync).
#ifndef MK_Q8_INLINE
#define MK_Q8_INLINE __forceinline__  // __noinline__ measured 8% slower: RESEARCH.md section 21
#endif
__device__ MK_Q8_INLINE void q8_lm_head(const MkParams& p, BlockControl& ctl, Ring& ring, const Segment& s,
                                        const float (&x)[kHidden / 32], int step, int row0, int n, float& v, int& i) {
  constexpr int kR = SlotRows<true>::kLmHeadQ8;
  static_assert(SlotRows<false>::kLmHeadQ8 == kR, "one int8 slot size in every build");
  const int warp = threadIdx.x / 32;
  float l1 = 0.f;
#pragma unroll
  for (int k = 0; k < kHidden / 32; ++k) l1 += fabsf(x[k]);
  if (warp == 0) store_x_smem<kHidden>(x, q8_x(ctl));  // x for the rescoring (every warp holds the same values)
  const Q8Input in = q8_input(x);
  // B_r / s_r: the rounding of w (0.5 |x|_1, with float32 slack: kQ8Margin) and of x (127 |x - x~|_1)
  const float bx = kQ8Margin * warp_sum(l1) + 127.f * kHidden * in.sx / 500.f;
  float* list_mem = q8_list(ctl, warp);
  Q8List list{list_mem, reinterpret_cast<int*>(list_mem + kQ8ListCap)};
  float scale[kR];
#pragma unroll
  for (int r = 0; r < kR; ++r) scale[r] = 0.f;
  gemv_run<kQ8RowElems, kR, false>(p, ring, s, step, 5,
                                   [&](const bf16_t* tile, auto& acc) {
                                     q8_slot_dot<kR>(reinterpret_cast<const uint8_t*>(tile), in, acc, scale);
                                   },
                                   [&](int r0, int rows, const auto& acc) { list.offer_slot(acc, scale, bx, r0, rows); });
  q8_rescore(p, ctl, list, row0, n, v, i, step);
}
