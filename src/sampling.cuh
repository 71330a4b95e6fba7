// sampling.cuh: greedy token choice fused into the LM-head pass, reduced in two stages.
//
// Stage 1: every warp keeps the best (logit, row) of the rows it computes; the block reduces
// its warps and writes one candidate per block. Stage 2: the last block to arrive (a counter,
// no grid barrier) reduces the candidates, writes the token, and publishes it with a release
// increment that every block waits on before the next step. Ties go to the lower token id, as
// torch.argmax does; the result does not depend on the grid size.
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

// Called by all consumer threads once the block's LM-head rows are done, with each warp's
// best in (v, i). Publishes the step's token; returns false if the launch must stop
// (error, or an EOS token was produced). All consumer threads get the same answer.
__device__ __forceinline__ bool publish_argmax(const MkParams& p, BlockControl& ctl, float v, int i,
                                               int step) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  if (lane == 0) { ctl.best_val[warp] = v; ctl.best_idx[warp] = i; }
  consumer_sync();
  if (threadIdx.x == 0) {
    float bv = ctl.best_val[0];
    int bi = ctl.best_idx[0];
    for (int w = 1; w < kConsumerWarps; ++w)
      if (better(ctl.best_val[w], ctl.best_idx[w], bv, bi)) { bv = ctl.best_val[w]; bi = ctl.best_idx[w]; }
    p.lm_best_val[blockIdx.x] = bv;
    p.lm_best_idx[blockIdx.x] = bi;
    __threadfence();
    const unsigned arrived = atomicAdd(&p.sync[1], 1u);
    ctl.is_last = arrived == (unsigned)(step + 1) * gridDim.x - 1;
  }
  consumer_sync();
  if (ctl.is_last && warp == 0) {
    __threadfence();
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int b = lane; b < (int)gridDim.x; b += 32) {
      const float cv = __ldcg(p.lm_best_val + b);
      const int ci = __ldcg(p.lm_best_idx + b);
      if (better(cv, ci, bv, bi)) { bv = cv; bi = ci; }
    }
    warp_argmax(bv, bi);
    if (lane == 0) {
      p.out_tokens[step] = bi;
      *p.cur_token = bi;
      if (step >= p.n_forced - 1)
        for (int e = 0; e < p.n_eos; ++e)
          if (p.eos_ids[e] == bi) *p.stop = step + 1;
      red_release_gpu_add(&p.sync[2], 1u);  // release: token, stop flag, out_tokens
    }
  }
  if (threadIdx.x == 0) {
    if (!spin_until(p, &p.sync[2], (unsigned)step + 1, MK_ERR_TOKEN_TIMEOUT, -1, step)) ctl.abort = 1;
    else if (*(volatile int*)p.stop) ctl.abort = 2;  // finished: not an error
  }
  consumer_sync();
  return ctl.abort == 0;
}
