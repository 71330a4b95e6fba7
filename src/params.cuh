// params.cuh: everything one launch of the megakernel reads and writes, passed by value.
// Shapes in comments; "float" activations live in global memory (L2-resident, tiny).
#pragma once
#include "config.cuh"
#include "utils.cuh"

struct LayerWeights {
  const bf16_t* input_norm;  // (hidden)
  const bf16_t* wqkv;        // (q_dim + 2 kv_dim, hidden)  rows: q | k | v
  const bf16_t* q_norm;      // (head_dim)
  const bf16_t* k_norm;      // (head_dim)
  const bf16_t* wo;          // (hidden, q_dim)
  const bf16_t* post_norm;   // (hidden)
  const bf16_t* wgu;         // (2 inter, hidden)  rows: gate0, up0, gate1, up1, ...
  const bf16_t* wdown;       // (hidden, inter)
  const bf16_t* wo_panels;   // (kv_heads, hidden, group_dim): wo regrouped by KV-head group, each group's
                             //   column panel contiguous (the engine's copy); null: the kernel streams wo's
                             //   panels a row at a time (MK_WO_PANELS=0, megakernel.cu)
};

struct MkParams {
  LayerWeights layer[kLayers];
  const bf16_t* embed;          // (vocab, hidden)
  const bf16_t* final_norm;     // (hidden)
  const float* rope_inv_freq;   // (head_dim / 2), exactly HF's
  const bf16_t* lm_head;        // (vocab, hidden); == embed when tied
  const uint8_t* lm_q8;         // (vocab, kQ8RowBytes) int8 copy of lm_head for greedy launches
                                //   (lm_head_q8.cuh), or null: the bf16 LM head
  bf16_t* k_cache;              // (layers, kv_heads, max_ctx, head_dim)
  bf16_t* v_cache;              // (layers, kv_heads, max_ctx, head_dim)
  int max_ctx;

  // Activations as tagged words (barriers.cuh): low 32 bits float, high 32 bits tag.
  unsigned long long* h;        // (hidden)   residual stream
  unsigned long long* qkv;      // (qkv_dim)  raw projections of this layer
  unsigned long long* act;      // (inter)    silu(gate) * up
  uint32_t tag_base;            // tags of this launch start here (host advances it per launch)
  unsigned long long* attn_part; // (kv_heads, attn_max_chunks, group, head_dim + 2) split-KV partials
                                //   (m, l, o[head_dim]) as tagged words
  int attn_max_chunks;          // chunks per KV head at most (<= kMaxAttnChunks)
  int attn_min_chunk;           // positions per chunk at least (a multiple of 4; attention.cuh)
  unsigned long long* hred;     // (2, layers, hidden) Wo * attention summed over the KV-head groups,
                                //   counted fixed-point words (barriers.cuh); [step & 1][layer]
  float* lm_best_val;           // (grid) per-block best logit
  int* lm_best_idx;             // (grid) its row
  unsigned* sync;               // [1] LM-head arrivals, [2] tokens published (cumulative)
  int* error;                   // [0] MkErrorCode, [1] block, [2] barrier index / detail, [3] step

  const int* forced_tokens;     // (n_forced) inputs of the first steps (the prompt)
  int n_forced;
  int pos0;                     // position of step 0
  int n_steps;                  // steps (tokens) this launch computes
  int* out_tokens;              // (n_steps) argmax after each step
  int* cur_token;               // the token step s+1 reads when not forced
  int* stop;                    // set when an EOS token is produced: the launch ends there
  const int* eos_ids;           // (n_eos)
  int n_eos;

  // Token choice (sampling.cuh). sample_mode: 0 greedy, 1 Gumbel-max over the whole vocabulary
  // (temperature only), 2 top-k / top-p over per-block candidate lists.
  int sample_mode;
  int sample_k;                 // mode 2: candidates kept (top_k, or kMaxTopK when only top_p is set)
  int top_k;                    // 0: off (then the nucleus is normalized over the whole vocabulary)
  float inv_temperature;
  float top_p;
  unsigned long long seed;      // random stream: (seed, position + rng_offset)
  unsigned long long rng_offset;
  float* cand_val;              // (grid, kMaxTopK) block candidates, scaled logits, descending
  int* cand_idx;
  float* blk_max;               // (grid) block max of the scaled logits
  float* blk_sum;               // (grid) block sum of exp(scaled logit - block max)

  // Test mode: skip the layers; every step runs the final norm + LM head + token choice on this
  // fixed hidden state (the sampler's distribution tests), or null.
  const float* lm_only_hidden;

  float* dbg_hidden;            // (layers, 2, hidden) residual after attention / MLP, or null
  float* dbg_logits;            // (vocab) logits of the last step, or null
  unsigned long long* dbg_times; // MK_EXP builds: dbg_words(grid) (below)

  int nslots;                   // ring depth (from the device's shared memory)
  int prefetch_slots;           // sm_90: L2 prefetch distance ahead of the ring, in slots
  unsigned long long timeout_ns;  // bound on every spin-wait
  int fault_block;              // fault injection: this block never writes its QKV rows
  int fault_layer;              // ... of this layer (-1: off), so the launch must time out
  int kv_l2_pos;                // builds with deep KV staging: positions of the next layer's chunk
                                //   bulk-prefetched into L2 after the scan (attention.cuh)
};

// MK_EXP timing builds: dbg_times holds (grid, kTimedStages, kStampWords) words of step
// kStampStep (input ready, last warp done, longest ring wait of a warp; ns), then kDbgCounters
// counters summed over blocks: ring waits per stage kind (ns); the int8 LM head's rescored rows,
// blocks that fell back to bf16, and its rescoring time (ns, lm_head_q8.cuh); with MK_EXP & 8 slot
// dot cycles and slots per stage kind, poll round trip cycles, poll rounds, polls; with MK_EXP & 256 the
// sub-stage clocks (sub_stamp, kSubPoints points).
constexpr int kTimedStages = 5 * kLayers + 1;
constexpr int kStampWords = 3;
enum DbgCounter {
  kDbgRingWait = 0, kDbgDotCycles = 8, kDbgDotSlots = 24, kDbgPollCycles = 32, kDbgPollRounds = 33,
  kDbgPolls = 34, kDbgQ8Rescored = 35, kDbgQ8Overflows = 36, kDbgQ8RescoreNs = 37, kDbgSub = 40
};
// The points of a layer that MK_EXP & 256 builds stamp (sub_stamp), in the order a block passes
// them; each counter holds the clocks from the point before (the harness names them).
enum SubPoint {
  kSubLayerStart, kSubQkvInput, kSubQkvNorm, kSubQkvGemv, kSubAttnInput, kSubAttnNormRope, kSubAttnScan,
  kSubAttnFold, kSubAttnWarpMerge, kSubAttnPartials, kSubAttnChunkMerge, kSubOGemv, kSubGateUpInput,
  kSubGateUpGemv, kSubDownInput, kSubDownGemv, kSubPoints
};
constexpr int kDbgCounters = kDbgSub + kSubPoints;
__host__ __device__ constexpr size_t dbg_counters_at(int grid) {
  return (size_t)grid * kTimedStages * kStampWords;
}
__host__ __device__ constexpr size_t dbg_words(int grid) { return dbg_counters_at(grid) + kDbgCounters; }
#ifdef __CUDACC__
__device__ __forceinline__ unsigned long long* dbg_counters(const MkParams& p) {
  return p.dbg_times + dbg_counters_at(gridDim.x);
}
#endif
