// sampling.cuh: the token choice fused into the LM-head pass, reduced in two stages.
//
// Greedy (mode 0): every warp keeps the best (logit, row) of the rows it computes; the block
// reduces its warps and writes one candidate per block. The last block to arrive (a counter,
// no grid barrier) reduces the candidates, writes the token, and publishes it with a release
// increment that every block waits on before the next step. Ties go to the lower token id, as
// torch.argmax does; the result does not depend on the grid size.
// Temperature only (mode 1): the same argmax over logit/T + Gumbel noise, which is an exact
// sample of softmax(logit/T) (the Gumbel-max trick); the noise of (seed, position, row) comes
// from a counter-based hash, so a seed reproduces its tokens on any grid.
// Top-k / top-p (mode 2): each block stages its scaled logits in shared memory, takes its k
// best (k rounds of a block argmax) and its softmax partials (max, sum of exponentials); the
// last block merges the per-block lists (k rounds over the list heads) into the global top k,
// applies top-p over them (normalized over the top k, as HF's warpers do after top-k, or over
// the whole vocabulary when top_k is off) and draws one token by inverse CDF.
#pragma once
#include "barriers.cuh"

__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(ov, oi, v, i)) { v = ov; i = oi; }
  }
}

// ---- random numbers: a counter-based hash (splitmix64 finalizer), no state ---------------------
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
// Uniform in (0, 1) strictly, 23 bits (k + 0.5 is exact in float for k < 2^23, so never 0 or 1),
// for (seed, counter, item).
__device__ __forceinline__ float uniform01(unsigned long long seed, unsigned long long ctr, unsigned item) {
  const unsigned long long x = mix64(seed ^ mix64((ctr << 32) ^ item));
  return ((float)(x >> 41) + 0.5f) * (1.0f / 8388608.0f);
}
__device__ __forceinline__ float gumbel(unsigned long long seed, unsigned long long ctr, unsigned item) {
  return -logf(-logf(uniform01(seed, ctr, item)));
}

// Mode 1, each consumer thread: its best of logit/T + Gumbel noise over its share of the
// block's scaled logits lg (rows row0..row0+n-1).
__device__ __noinline__ void gumbel_argmax(const MkParams& p, const float* lg, int row0, int n,
                                              unsigned long long ctr, float& v, int& i) {
  for (int r = threadIdx.x; r < n; r += kConsumerWarps * 32) {
    const float g = lg[r] + gumbel(p.seed, ctr, (unsigned)(row0 + r));
    if (better(g, row0 + r, v, i)) { v = g; i = row0 + r; }
  }
}

// Last block, one thread: record the step's token, the stop flag, and release them.
__device__ __forceinline__ void publish_token(const MkParams& p, int token, int step) {
  p.out_tokens[step] = token;
  *p.cur_token = token;
  if (step >= p.n_forced - 1)
    for (int e = 0; e < p.n_eos; ++e)
      if (p.eos_ids[e] == token) *p.stop = step + 1;
  red_release_gpu_add(&p.sync[2], 1u);  // release: token, stop flag, out_tokens
}

// Every block: wait for the step's token. False when the launch must stop (error or EOS).
__device__ __forceinline__ bool wait_token(const MkParams& p, BlockControl& ctl, int step) {
  if (threadIdx.x == 0) {
    if (!spin_until(p, &p.sync[2], (unsigned)step + 1, MK_ERR_TOKEN_TIMEOUT, -1, step)) ctl.abort = 1;
    else if (*(volatile int*)p.stop) ctl.abort = 2;  // finished: not an error
  }
  consumer_sync();
  return ctl.abort == 0;
}

// Thread 0, after writing the block's results: count the block in; is it the step's last?
__device__ __forceinline__ void arrive(const MkParams& p, BlockControl& ctl, int step) {
  __threadfence();  // release: this block's results (written above) are visible before its count
  const unsigned arrived = atomicAdd(&p.sync[1], 1u);
  ctl.is_last = arrived == (unsigned)(step + 1) * gridDim.x - 1;
}

// All consumer threads: the block's best (value, index) over every thread's (v, i).
__device__ __forceinline__ void block_argmax(BlockControl& ctl, float& v, int& i) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  warp_argmax(v, i);
  if (lane == 0) { ctl.best_val[warp] = v; ctl.best_idx[warp] = i; }
  consumer_sync();
  v = ctl.best_val[0];
  i = ctl.best_idx[0];
  for (int w = 1; w < kConsumerWarps; ++w)
    if (better(ctl.best_val[w], ctl.best_idx[w], v, i)) { v = ctl.best_val[w]; i = ctl.best_idx[w]; }
  consumer_sync();  // best_* are reused by the next call
}

// Called by all consumer threads once the block's LM-head rows are done, with each warp's
// best in (v, i) (mode 0: the logit; mode 1: logit/T + Gumbel noise). Publishes the step's
// token; returns false if the launch must stop (error, or an EOS token was produced). All
// consumer threads get the same answer.
__device__ __forceinline__ bool publish_argmax(const MkParams& p, BlockControl& ctl, float v, int i,
                                               int step) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  block_argmax(ctl, v, i);
  if (threadIdx.x == 0) {
    p.lm_best_val[blockIdx.x] = v;
    p.lm_best_idx[blockIdx.x] = i;
    arrive(p, ctl, step);
  }
  consumer_sync();
  if (ctl.is_last && warp == 0) {
    __threadfence();  // acquire: the other blocks' results, counted in before our count, are read after it
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int b = lane; b < (int)gridDim.x; b += 32) {
      const float cv = __ldcg(p.lm_best_val + b);
      const int ci = __ldcg(p.lm_best_idx + b);
      if (better(cv, ci, bv, bi)) { bv = cv; bi = ci; }
    }
    warp_argmax(bv, bi);
    if (lane == 0) publish_token(p, bi, step);
  }
  return wait_token(p, ctl, step);
}

// Mode 2. lg: this block's scaled logits (logit / T) in shared memory, rows row0..row0+n-1,
// written by the LM-head epilogue (consumer_sync'ed by the caller). Overwrites lg.
__device__ __noinline__ bool publish_sample(const MkParams& p, BlockControl& ctl, float* lg, int row0, int n,
                                               int step, unsigned long long ctr) {
  const int tid = threadIdx.x, K = p.sample_k;
  constexpr int kThreads = kConsumerWarps * 32;
  // softmax partials of the block
  float m = -INFINITY;
  for (int r = tid; r < n; r += kThreads) m = fmaxf(m, lg[r]);
  int dummy = 0;
  block_argmax(ctl, m, dummy);
  float s = 0.f;
  for (int r = tid; r < n; r += kThreads) s += expf(lg[r] - m);
  s = warp_sum(s);
  if ((tid & 31) == 0) ctl.best_val[tid / 32] = s;
  consumer_sync();
  float sum = 0.f;
  for (int w = 0; w < kConsumerWarps; ++w) sum += ctl.best_val[w];  // fixed order: deterministic
  consumer_sync();
  // the block's K best, in order
  float* cv = p.cand_val + (size_t)blockIdx.x * kMaxTopK;
  int* ci = p.cand_idx + (size_t)blockIdx.x * kMaxTopK;
  for (int k = 0; k < K; ++k) {
    float v = -INFINITY;
    int i = 0x7fffffff;
    for (int r = tid; r < n; r += kThreads)
      if (lg[r] > -INFINITY && better(lg[r], row0 + r, v, i)) { v = lg[r]; i = row0 + r; }
    block_argmax(ctl, v, i);
    if (tid == 0) {
      cv[k] = v;
      ci[k] = i;
      if (i != 0x7fffffff) lg[i - row0] = -INFINITY;
    }
    consumer_sync();
  }
  if (tid == 0) {
    p.blk_max[blockIdx.x] = m;
    p.blk_sum[blockIdx.x] = sum;
    arrive(p, ctl, step);
  }
  consumer_sync();
  if (ctl.is_last) {
    __threadfence();  // acquire, as in publish_argmax
    // merge the per-block lists: thread b follows block b's list (gridDim.x <= kThreads)
    int head = 0;
    float hv = -INFINITY;
    int hi = 0x7fffffff;
    const bool owner = tid < (int)gridDim.x;
    if (owner) { hv = __ldcg(p.cand_val + (size_t)tid * kMaxTopK); hi = __ldcg(p.cand_idx + (size_t)tid * kMaxTopK); }
    float* fin_val = lg;                          // the final list, in shared memory
    int* fin_idx = reinterpret_cast<int*>(lg + kMaxTopK);
    for (int k = 0; k < K; ++k) {
      float v = hv;
      int i = hi;
      block_argmax(ctl, v, i);
      if (tid == 0) { fin_val[k] = v; fin_idx[k] = i; }
      if (owner && i == hi && i != 0x7fffffff) {  // rows are unique: this thread's head won
        ++head;
        hv = head < K ? __ldcg(p.cand_val + (size_t)tid * kMaxTopK + head) : -INFINITY;
        hi = head < K ? __ldcg(p.cand_idx + (size_t)tid * kMaxTopK + head) : 0x7fffffff;
      }
    }
    consumer_sync();
    if (tid == 0) {
      const float l0 = fin_val[0];
      float z;  // normalizer relative to exp(l0)
      if (p.top_k > 0) {
        z = 0.f;
        for (int k = 0; k < K; ++k) z += expf(fin_val[k] - l0);
      } else {
        float gm = -INFINITY;
        for (int b = 0; b < (int)gridDim.x; ++b) gm = fmaxf(gm, __ldcg(p.blk_max + b));
        z = 0.f;
        for (int b = 0; b < (int)gridDim.x; ++b) z += __ldcg(p.blk_sum + b) * expf(__ldcg(p.blk_max + b) - gm);
        z *= expf(gm - l0);
      }
      // top-p: keep a candidate while the mass ranked above it is below top_p (HF's rule)
      float kept = 0.f;
      int nk = 0;
      for (int k = 0; k < K && fin_idx[k] != 0x7fffffff; ++k) {
        if (nk > 0 && kept >= p.top_p * z) break;
        kept += expf(fin_val[k] - l0);
        nk = k + 1;
      }
      const float u = uniform01(p.seed, ctr, 0xffffffffu) * kept;
      float c = 0.f;
      int tok = fin_idx[0];
      for (int k = 0; k < nk; ++k) {
        c += expf(fin_val[k] - l0);
        tok = fin_idx[k];
        if (u < c) break;
      }
      publish_token(p, tok, step);
    }
  }
  return wait_token(p, ctl, step);
}
