// megakernel.cu: one persistent kernel computes whole Qwen3 decode steps (all layers, final
// norm, LM head, argmax), many tokens per launch, plus a small C API for ctypes and a
// standalone harness.
//
//   make            -> build/megakernel (harness: build/megakernel WEIGHTS.bin [--steps N])
//   make lib        -> build/libmegakernel.so (loaded by host/launcher.py)
//
// Block layout: kConsumerWarps compute warps + the weight-stream (fill) warp + the L2 prefetch
// warp (short-context build only; prefetch.cuh), one block per SM (the ring takes most of
// shared memory), launched cooperatively so that all blocks are resident. Per layer, 4 waits on
// other blocks: QKV -> attention + O (each KV-head group of blocks computes its head's attention
// and multiplies it by its panel of Wo; the groups' sums meet in counted words) -> gate/up+SiLU
// -> down+residual; each waits on its input's tagged or counted words (barriers.cuh), not on a
// grid barrier. The weight stream (weight_ring.cuh) never waits on activations.
#ifndef __CUDACC_RTC__  // host code's headers; NVRTC (scripts/nvrtc12_check.py) sees device code only
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#endif

#include "attention.cuh"
#include "barriers.cuh"
#include "gemv.cuh"
#include "lm_head_q8.cuh"
#include "prefetch.cuh"
#include "rmsnorm.cuh"
#include "sampling.cuh"
#include "weight_ring.cuh"

// MK_EXP & 4 (timing builds only): for step kStampStep, thread 0 stamps when each stage's input was ready
// (kind 0), and every consumer warp when it had written its outputs (kind 1: the block's last
// warp counts). The harness prints the breakdown.
__device__ __forceinline__ void stamp(const MkParams& p, int step, int stage, int kind) {
#if MK_EXP & 4
  unsigned long long* d = p.dbg_times + ((size_t)blockIdx.x * kTimedStages + stage) * kStampWords + kind;
  if (step == kStampStep && kind == 0 && threadIdx.x == 0) *d = global_timer_ns();
  if (step == kStampStep && kind == 1 && (threadIdx.x & 31) == 0) atomicMax(d, (unsigned long long)global_timer_ns());
#endif
}

// Tags of the activations written in (step, layer): one per stage output (barriers.cuh).
enum TagKind { kTagQKV = 0, kTagAttnPart = 1, kTagAct = 2, kTagHMlp = 3, kTagsPerLayer = 4 };
__device__ __forceinline__ uint32_t stage_tag(const MkParams& p, int step, int layer, int kind) {
  return p.tag_base + (uint32_t)((step * kLayers + layer) * kTagsPerLayer + kind);
}

// Residual update after the MLP of this block's rows (lane r: row row0 + r): h = h_full + acc,
// published as tagged words, and into the validation buffer as hidden state number dbg_index.
template <int N>
__device__ __forceinline__ void residual_add(const MkParams& p, BlockControl& ctl, int row0, int rows,
                                             const float (&acc)[N], uint32_t tag, int dbg_index) {
  const int lane = threadIdx.x & 31;
  if (lane >= rows) return;
  const int r = row0 + lane;
  const float hv = ctl.h_full[r] + pick(acc, lane);
  ll_store(p.h + r, hv, tag);
  if (p.dbg_hidden) p.dbg_hidden[(size_t)dbg_index * kHidden + r] = hv;
}

// Waits for the residual stream h written with `tag`, stages it in ctl.h_full and loads it into
// x (registers, the layout rmsnorm_redundant reads). False when the launch must stop.
// The consumer_sync first: ctl.h_full is rewritten here, and slow warps of this block may still
// be in the previous down projection reading their rows of it (residual_add). The wait below
// would order those reads anyway (it needs their tagged stores), but only through global memory,
// which racecheck does not follow; the barrier costs little, as the wait needs those warps.
__device__ __forceinline__ bool load_residual(const MkParams& p, BlockControl& ctl, uint32_t tag,
                                              float (&x)[kHidden / 32], int step) {
  consumer_sync();
  if (!ll_stage<kHidden>(p, ctl, p.h, tag, ctl.h_full, step)) return false;
  load_x_smem<kHidden>(ctl.h_full, x);
  return true;
}

// Waits until every KV-head group has added its attention output into the counted words of
// (step, layer) and adds their sum to ctl.h_full (the residual after attention); loads that into
// x. False when the launch must stop.
__device__ __forceinline__ bool load_residual_attn(const MkParams& p, BlockControl& ctl, int step, int layer,
                                                   float (&x)[kHidden / 32]) {
  const unsigned long long* src = p.hred + ((size_t)(step & 1) * kLayers + layer) * kHidden;
  float* h = ctl.h_full;
  if (!stage_words<kHidden>(
          p, ctl, src, kHidden, [](unsigned long long w) { return counted_count(w) == (unsigned)kKVHeads; },
          [&](int i, unsigned long long a, unsigned long long b) {
            h[2 * i] += counted_value(a, kKVHeads);
            h[2 * i + 1] += counted_value(b, kKVHeads);
          },
          -1 - layer, step))
    return false;
  load_x_smem<kHidden>(h, x);
  return true;
}

template <bool kDeepKV, bool kFine, int kKVDepth>
__device__ __forceinline__ void consumer_main(const MkParams& p, BlockControl& ctl, uint8_t* slots) {
  Ring ring{&ctl, slots, p.nslots, 0};
  const int lane = threadIdx.x & 31;
  int own0, own1;  // the residual rows this block owns in the down projection
  split_units(kHidden, own0, own1);
  float norm_w[kHidden / 32];  // the next RMSNorm's weight, this lane's share
  for (int step = 0; step < p.n_steps; ++step) {
    const int pos = p.pos0 + step;
    const int token = step < p.n_forced ? p.forced_tokens[step] : *(volatile int*)p.cur_token;
    if (token < 0 || token >= kVocab) {
      if (threadIdx.x == 0) raise_error(p, MK_ERR_BAD_TOKEN, token, step);
      break;
    }
    const bf16_t* emb = p.embed + (size_t)token * kHidden;
    if (threadIdx.x < 32) rope_table(p.rope_inv_freq, pos, ctl.rope_cos, ctl.rope_sin);
    // Counted words of step + 1 (last used by step - 1, whose token barrier every block has
    // passed): zero this block's rows of them (barriers.cuh, 1b).
    if (step + 1 < p.n_steps && !p.lm_only_hidden)
      for (int i = threadIdx.x; i < kLayers * (own1 - own0); i += kConsumerWarps * 32)
        p.hred[((size_t)((step + 1) & 1) * kLayers + i / (own1 - own0)) * kHidden + own0 + i % (own1 - own0)] = 0ull;
    consumer_sync();  // the table is read by every warp's attention; the previous step's readers are done
    int idx = 0;  // stream position within the token
    for (int L = 0; L < (p.lm_only_hidden ? 0 : kLayers); ++L) {
      const LayerWeights& w = p.layer[L];
      const bool mute = (int)blockIdx.x == p.fault_block && L == p.fault_layer;  // fault injection
      sub_stamp(p, ctl, step, kSubLayerStart);
      {  // QKV: qkv = Wqkv rmsnorm(h)
        float x[kHidden / 32];
        if (L == 0) {
          load_x_bf16<kHidden>(w.input_norm, norm_w);
          load_x_bf16<kHidden>(emb, x);
          if (threadIdx.x < 32) store_x_smem<kHidden>(x, ctl.h_full);  // the residual starts as the embedding row
        } else {
          if (!load_residual(p, ctl, stage_tag(p, step, L - 1, kTagHMlp), x, step)) goto done;
        }
        stamp(p, step, 5 * L, 0);
        sub_stamp(p, ctl, step, kSubQkvInput);
        rmsnorm_redundant<kHidden>(x, norm_w, kRmsEps);
        sub_stamp(p, ctl, step, kSubQkvNorm);
        const uint32_t tag = stage_tag(p, step, L, kTagQKV);
        gemv_stage<kHidden, SlotRows<kFine>::kQKV>(p, ring, x, stream_segment<kFine>(p, idx++), step, 0 + 8 * L,
                            [&](int row0, int rows, const auto& acc) {
                              if (lane < rows && !mute) ll_store(p.qkv + row0 + lane, pick(acc, lane), tag);
                            });
        stamp(p, step, 5 * L, 1);
        sub_stamp(p, ctl, step, kSubQkvGemv);
      }
      {  // attention of this block's KV-head group (attention.cuh), into ctl.attn_o
        stamp(p, step, 5 * L + 1, 0);
        if (!attention_stage<kDeepKV, kKVDepth>(p, ctl, L, pos, stage_tag(p, step, L, kTagQKV), stage_tag(p, step, L, kTagAttnPart), step,
                                                  slots + (size_t)p.nslots * kSlotBytes))
          goto done;
        stamp(p, step, 5 * L + 1, 1);
        sub_stamp(p, ctl, step, kSubAttnChunkMerge);
      }
      {  // O projection, split over K by KV-head group: hred += Wo[rows, group panel] attn_o
        float xo[kGroupDim / 32];
        load_x_smem<kGroupDim>(ctl.attn_o, xo);
        stamp(p, step, 5 * L + 2, 0);
        unsigned long long* hred = p.hred + ((size_t)(step & 1) * kLayers + L) * kHidden;
        gemv_stage<kGroupDim, SlotRows<kFine>::kO>(p, ring, xo, stream_segment<kFine>(p, idx++), step, 2 + 8 * L,
                              [&](int row0, int rows, const auto& acc) {
                                if (lane < rows) red_add_counted(hred + row0 + lane, pick(acc, lane));
                              });
        stamp(p, step, 5 * L + 2, 1);
        sub_stamp(p, ctl, step, kSubOGemv);
      }
      load_x_bf16<kHidden>(w.post_norm, norm_w);  // static: fetched before the wait
      {  // gate/up + SiLU*mul: act = silu(Wg x) * (Wu x), x = rmsnorm(h)
        float x[kHidden / 32];
        if (!load_residual_attn(p, ctl, step, L, x)) goto done;
        stamp(p, step, 5 * L + 3, 0);
        sub_stamp(p, ctl, step, kSubGateUpInput);
        if (p.dbg_hidden)
          for (int r = own0 + (int)threadIdx.x; r < own1; r += kConsumerWarps * 32)
            p.dbg_hidden[(size_t)(2 * L) * kHidden + r] = ctl.h_full[r];
        rmsnorm_redundant<kHidden>(x, norm_w, kRmsEps);
        const uint32_t tag = stage_tag(p, step, L, kTagAct);
        gemv_stage<kHidden, SlotRows<kFine>::kGateUp>(p, ring, x, stream_segment<kFine>(p, idx++), step, 3 + 8 * L,
                            [&](int row0, int rows, const auto& acc) {
                              if (2 * lane < rows)
                                ll_store(p.act + row0 / 2 + lane, silu(pick(acc, 2 * lane)) * pick(acc, 2 * lane + 1), tag);
                            });
        stamp(p, step, 5 * L + 3, 1);
        sub_stamp(p, ctl, step, kSubGateUpGemv);
      }
      {  // down projection + residual: h = h + Wd act
        if (!ll_stage<(MK_EXP & 1024) ? kInter / 2 : kInter>(p, ctl, p.act, stage_tag(p, step, L, kTagAct), ctl.xs[0], step)) goto done;
        stamp(p, step, 5 * L + 4, 0);
        sub_stamp(p, ctl, step, kSubDownInput);
        const uint32_t tag = stage_tag(p, step, L, kTagHMlp);
        gemv_stage_smem<kInter, SlotRows<kFine>::kDown>(p, ring, ctl.xs[0], stream_segment<kFine>(p, idx++), step, 4 + 8 * L,
                                [&](int row0, int rows, const auto& acc) {
                                  residual_add(p, ctl, row0, rows, acc, tag, 2 * L + 1);
                                });
        stamp(p, step, 5 * L + 4, 1);
        sub_stamp(p, ctl, step, kSubDownGemv);
      }
      load_x_bf16<kHidden>(L + 1 < kLayers ? p.layer[L + 1].input_norm : p.final_norm, norm_w);
    }
    {  // final norm + LM head + token choice (sampling.cuh)
      float x[kHidden / 32];
      if (p.lm_only_hidden) {  // test mode: a fixed hidden state, no layers
        idx = kStreamLmHead;
        load_x_f32<kHidden>(p.lm_only_hidden, x);
        load_x_bf16<kHidden>(p.final_norm, norm_w);
      } else {
        if (!load_residual(p, ctl, stage_tag(p, step, kLayers - 1, kTagHMlp), x, step)) goto done;
      }
      stamp(p, step, 5 * kLayers, 0);
      rmsnorm_redundant<kHidden>(x, norm_w, kRmsEps);
      const int mode = p.sample_mode;
      const float inv_t = p.inv_temperature;
      const unsigned long long ctr = (unsigned long long)pos + p.rng_offset;
      float* lg = &ctl.xs[0][0];  // modes 1, 2: this block's scaled logits (both staged-input buffers)
      int lm0, lm1;
      split_units(kVocab, lm0, lm1);
      if (mode != 0 || lm_q8_active(p)) consumer_sync();  // every warp has read its input from xs before lg overwrites it
      float best_v = -INFINITY;
      int best_i = 0x7fffffff;
      if (lm_q8_active(p)) {  // greedy from the int8 copy, exact (lm_head_q8.cuh)
        q8_lm_head(p, ctl, ring, stream_segment<kFine>(p, idx++), x, step, lm0, lm1 - lm0, best_v, best_i);
        stamp(p, step, 5 * kLayers, 1);
        if (!publish_argmax(p, ctl, best_v, best_i, step)) goto done;
        continue;
      }
      gemv_stage<kHidden, SlotRows<kFine>::kLmHead>(p, ring, x, stream_segment<kFine>(p, idx++), step, 5,
                          [&](int row0, int rows, const auto& acc) {
#pragma unroll
                            for (int r = 0; r < SlotRows<kFine>::kLmHead; ++r)
                              if (r < rows && mode == 0 && better(acc[r], row0 + r, best_v, best_i)) {
                                best_v = acc[r];
                                best_i = row0 + r;
                              }
                            if (mode != 0 && lane < rows) lg[row0 + lane - lm0] = pick(acc, lane) * inv_t;
                            if (p.dbg_logits && lane < rows) p.dbg_logits[row0 + lane] = pick(acc, lane);
                          });
      stamp(p, step, 5 * kLayers, 1);
      if (mode != 0) consumer_sync();  // lg complete
      if (mode == 1) gumbel_argmax(p, lg, lm0, lm1 - lm0, ctr, best_v, best_i);
      if (mode == 2) {
        if (!publish_sample(p, ctl, lg, lm0, lm1 - lm0, step, ctr)) goto done;
      } else if (!publish_argmax(p, ctl, best_v, best_i, step)) {
        goto done;
      }
    }
  }
done:
  consumer_sync();
  if (threadIdx.x == 0) ctl.consumers_done = 1;
}

// Register budget: one block per SM. Warps are spread over the SM's 4 sub-partitions, each with
// a quarter of the 64K registers, so the fullest sub-partition sets the per-thread limit.
// __launch_bounds__ alone left ptxas short of it; __maxnreg__ (CUDA 12.4+) states it.
constexpr int kWarpsPerSubPartition = (kBlockThreads / 32 + 3) / 4;
constexpr int kMaxRegs = (16384 / (kWarpsPerSubPartition * 32)) / 8 * 8 > 248 ? 248 : (16384 / (kWarpsPerSubPartition * 32)) / 8 * 8;
#if __CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 4)
#define MK_KERNEL_BOUNDS __maxnreg__(kMaxRegs)
#else
#define MK_KERNEL_BOUNDS __launch_bounds__(kBlockThreads, 1)
#endif
// Three builds of the same kernel: the short-context one (a prefetch warp keeps the L2 ahead of
// the weight copies, prefetch.cuh), the long-context one (lane 0 of the fill warp prefetches with
// bulk prefetches; its prefetch warp leaves at once) and the deep-KV one (the long one with more
// KV batches in flight in the attention scan: config.cuh, kv_depth_of; attention.cuh). mk_run picks
// by the launch's mean position.
enum MkVariant { kShortCtx = 0, kLongCtx = 1, kDeepKVCtx = 2 };
template <int kVariant>
__global__ void MK_KERNEL_BOUNDS qwen3_megakernel(const __grid_constant__ MkParams p) {
  extern __shared__ __align__(128) uint8_t ring_slots[];
  __shared__ BlockControl ctl;
  ring_init(ctl, p.nslots);
#if MK_EXP & 16
  for (int i = threadIdx.x; i < p.nslots * kSlotBytes / 16; i += blockDim.x)
    reinterpret_cast<uint4*>(ring_slots)[i] = make_uint4(0, 0, 0, 0);
#endif
  __syncthreads();
  const int warp = threadIdx.x / 32;
  // The short build: the prefetch warp and, on sm_90+, fine slots (config.cuh, SlotRows); the
  // others: full slots, and on sm_90 the fill warp's lane-0 bulk prefetch.
  constexpr bool kFine = kVariant == kShortCtx && kFineSlotsArch;
  if (warp == kConsumerWarps + 1) {
    if (kVariant == kShortCtx) prefetch_main<kFine>(p, ctl);
    return;
  }
  if (warp >= kConsumerWarps) producer_main<kVariant != kShortCtx, kFine>(p, ctl, ring_slots);
  else consumer_main<kVariant == kDeepKVCtx, kFine, kFineSlotsArch ? kv_depth_of(kVariant) : 1>(p, ctl, ring_slots);
}

// =============================================================================================
// Host side: the engine behind the C API (host/launcher.py binds it with ctypes).
// =============================================================================================
#ifndef __CUDACC_RTC__
#include "flat_file.h"

struct MkEngine {
  int device = 0, sms = 0, cc = 0;
  int grid = 0, threads = 0, nslots = 0;
  bool fine_slots = false;  // kernels are sm_90+ code: the short build's fine slots (config.cuh, SlotRows), deep KV staging
  bool prefetch_slots_set = false;  // MK_PREFETCH_SLOTS gave the prefetch distance
  size_t smem = 0;
  int max_ctx = 0, attn_max_chunks = 0;
  FlatFileInfo info;
  void* weights = nullptr;        // the whole payload, as in the file
  void* wo_panels = nullptr;      // every layer's wo regrouped by KV-head group (kWoPanelBytes), or null
  void* lm_q8 = nullptr;          // the LM head's int8 copy (kLmQ8Bytes, lm_head_q8.cuh), or null
  size_t weight_bytes = 0;
  void* scratch = nullptr;        // KV cache + activations + counters (one allocation)
  size_t scratch_bytes = 0;
  MkParams p{};
  int* d_tokens = nullptr;        // forced tokens, up to max_ctx
  std::vector<int> eos;
  float last_ms = 0.f;
  float* lm_only_buf = nullptr;   // mk_set_lm_only's hidden state on the device
  cudaEvent_t ev0 = nullptr, ev1 = nullptr;
  std::string err;
};

static const char* kAbiVersion = "megakernel-abi-4";  // host/launcher.py ABI_VERSION

#define MK_TRY(call)                                                                           \
  do {                                                                                         \
    cudaError_t e__ = (call);                                                                  \
    if (e__ != cudaSuccess) {                                                                  \
      e->err = std::string(#call) + " failed: " + cudaGetErrorName(e__) + ": " + cudaGetErrorString(e__); \
      return -1;                                                                               \
    }                                                                                          \
  } while (0)

static const void* const kKernels[3] = {(const void*)qwen3_megakernel<kShortCtx>, (const void*)qwen3_megakernel<kLongCtx>,
                                        (const void*)qwen3_megakernel<kDeepKVCtx>};

// The kernel build for a launch by its mean position: deep-KV from kDeepKVPositions (sm_90 code:
// kDeepKVPositionsSm90), else long-context;
// where the kernels are not sm_90 code (older GPUs, PTX-only builds), short-context below
// kShortCtxPositions. On sm_90 code the long build now wins at short contexts too (H100, tok/s, long /
// short, two rounds of one call, RESEARCH.md section 21): context 1 1,873-1,875 / 1,792-1,795, 128
// 1,806-1,815 / 1,720-1,724, 640 1,638-1,643 / 1,554-1,555, 1,024 1,547-1,553 / 1,486-1,491.
// MK_KERNEL=short|long|deep forces one (measurements).
static int launch_variant(const MkEngine* e, int pos0, int n_steps) {
  if (const char* env = getenv("MK_KERNEL")) {  // other values: the rule below
    if (strcmp(env, "short") == 0) return kShortCtx;
    if (strcmp(env, "long") == 0) return kLongCtx;
    if (strcmp(env, "deep") == 0) return kDeepKVCtx;
  }
  const int mean = pos0 + n_steps / 2;
  if (mean >= (e->fine_slots ? kDeepKVPositionsSm90 : kDeepKVPositions)) return kDeepKVCtx;
  return mean < kShortCtxPositions && !e->fine_slots ? kShortCtx : kLongCtx;
}

// Ring slots a launch of build `variant` uses: on sm_90 code a build with deep KV staging
// (config.cuh, kv_depth_of) takes kConsumerWarps, its staging the shared memory past them, and the
// short-context build kShortCtxRingSlots; the others, and every build of PTX-only compute_80/75 code
// (full slots; on the H100 8 and 16 slots measured alike, RESEARCH.md section 20), every slot the
// engine sized. (The same rule as launch_prefetch_slots and the fine slots: what the code is.)
static int launch_slots(const MkEngine* e, int variant) {
  if (e->fine_slots && kv_depth_of(variant) > 1) return kConsumerWarps;  // the KV staging takes the rest
  return variant == kShortCtx && e->fine_slots ? std::min(e->nslots, kShortCtxRingSlots) : e->nslots;
}

// L2 prefetch distance of a launch of build `variant`, where its code is sm_90's. The short
// build's slots are smaller (config.cuh, SlotRows), so its prefetch warp runs twice the engine's
// distance ahead, up to the 16 slots measured. H100, tok/s, 16 / 8 slots: context 640 1,519-1,522 /
// 1,486-1,497, 1,024 1,455 / 1,426-1,429, context 1 alike (RESEARCH.md section 15); with 12 KB slots
// 24 were slower and 36 much slower. The long build's bulk prefetches (fill warp, lane 0) run half
// the engine's distance ahead, the deep build's a quarter (RESEARCH.md section 22). H100, tok/s, long
// build, 4 / 8 slots: context 1 1,898-1,922 / 1,868-1,898, 128 1,821-1,871 / 1,798-1,814, 8,192
// 995-1,002 / 955-976; deep build, 2 / 4 slots: 8,192 1,051-1,056 / 1,028, 16,384 798-799 / 785-787,
// 32,768 533-535 / 532-534. Older GPUs and PTX-only builds keep the engine's distance (not measured
// there). An MK_PREFETCH_SLOTS setting (engine creation) is taken as it is.
constexpr int kFinePrefetchSlotsMax = 16;
static int launch_prefetch_slots(const MkEngine* e, int variant) {
  const int slots = e->p.prefetch_slots;
  if (!e->fine_slots || e->prefetch_slots_set) return slots;
  if (variant == kDeepKVCtx) return std::max(std::min(slots, 1), slots / 4);  // (0 stays 0, 1 stays 1)
  if (variant == kLongCtx) return std::max(std::min(slots, 1), slots / 2);
  return std::max(slots, std::min(2 * slots, kFinePrefetchSlotsMax));
}

static size_t align256(size_t n) { return (n + 255) & ~size_t(255); }
// One layer's wo (kHidden rows of kQDim, HF's layout) regrouped into panels: panel j (the kGroupDim
// columns from j * kGroupDim, all kHidden rows) at j * kHidden * kGroupDim. A 16-byte piece a thread.
// (One kernel, not kKVHeads strided copies a layer: with the 224 cudaMemcpy2D calls compute-sanitizer's
// initcheck printed nothing in 60-380 s; RESEARCH.md section 25.)
constexpr int kWoPieces = kHidden * kQDim / 8;  // 16-byte pieces of a layer's wo
__global__ void regroup_wo_panels(const bf16_t* __restrict__ wo, bf16_t* __restrict__ panels) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= kWoPieces) return;
  const int r = i / (kQDim / 8), col = i % (kQDim / 8) * 8, j = col / kGroupDim;
  reinterpret_cast<uint4*>(panels + (size_t)j * kHidden * kGroupDim + (size_t)r * kGroupDim + col % kGroupDim)[0] =
      reinterpret_cast<const uint4*>(wo + (size_t)r * kQDim + col)[0];
}

// The engine's copy of every layer's wo regrouped by KV-head group (params.cuh, LayerWeights::wo_panels):
// a group's column panel is contiguous, so a ring slot of it is one bulk copy instead of one a row.
// H100, tok/s (RESEARCH.md section 18): context 1 +4.9%, 128 +1.8%, 1,024 -1.7%, 8,192 +2.3%, 32,768
// +4.5%. MK_WO_PANELS=0 (engine creation) saves its GPU memory. The file keeps HF's layout, which the
// prefill reads.
constexpr size_t kWoPanelBytes = (size_t)kLayers * kHidden * kQDim * sizeof(bf16_t);
static bool wo_panels_wanted() {
  const char* env = getenv("MK_WO_PANELS");
  return !env || atoi(env) != 0;
}
// The LM head's int8 copy for greedy launches (lm_head_q8.cuh): the weight stream reads 0.158 GB
// instead of 0.311 GB for it, and the token is the bf16 LM head's, bit for bit. MK_LM_Q8=0 (engine
// creation) saves its GPU memory; mk_set_lm_q8 switches it off and on per engine.
constexpr size_t kLmQ8Bytes = (size_t)kVocab * kQ8RowBytes;
static bool lm_q8_wanted() {
  const char* env = getenv("MK_LM_Q8");
  return !env || atoi(env) != 0;
}
// The counted words of two steps (params.cuh, hred); zeroed before every launch.
constexpr size_t kHredBytes = (size_t)2 * kLayers * kHidden * 8;

// Lays out every run-time buffer in one allocation; with base == nullptr only sizes it.
static size_t layout_scratch(MkEngine* e, char* base) {
  size_t off = 0;
  auto take = [&](size_t bytes) { char* ptr = base ? base + off : nullptr; off += align256(bytes); return ptr; };
  const size_t kv = (size_t)kLayers * kKVHeads * e->max_ctx * kHeadDim * sizeof(bf16_t);
  MkParams& p = e->p;
  p.k_cache = (bf16_t*)take(kv);
  p.v_cache = (bf16_t*)take(kv);
  using ll_t = unsigned long long;
  p.h = (ll_t*)take(kHidden * 8);
  p.qkv = (ll_t*)take(kQKVDim * 8);
  p.act = (ll_t*)take(kInter * 8);
  p.attn_part = (ll_t*)take((size_t)kKVHeads * e->attn_max_chunks * kGroup * (kHeadDim + 2) * 8);
  p.hred = (ll_t*)take(kHredBytes);
  p.lm_best_val = (float*)take(e->grid * 4);
  p.lm_best_idx = (int*)take(e->grid * 4);
  p.cand_val = (float*)take((size_t)e->grid * kMaxTopK * 4);
  p.cand_idx = (int*)take((size_t)e->grid * kMaxTopK * 4);
  p.blk_max = (float*)take(e->grid * 4);
  p.blk_sum = (float*)take(e->grid * 4);
  e->lm_only_buf = (float*)take(kHidden * 4);
  p.out_tokens = (int*)take((size_t)e->max_ctx * 4);
  p.dbg_hidden = (float*)take((size_t)kLayers * 2 * kHidden * 4);
  p.dbg_logits = (float*)take((size_t)kVocab * 4);
  // small control block, zeroed before every launch: sync[4], error[4], token, stop
  char* ctl = take(256);
  p.sync = (unsigned*)ctl;
  p.error = (int*)(ctl + 16);
  p.cur_token = (int*)(ctl + 32);
  p.stop = p.cur_token + 1;
  p.eos_ids = (const int*)take(64 * 4);
  p.dbg_times = (unsigned long long*)take(dbg_words(e->grid) * 8);
  return off;
}

extern "C" {

const char* mk_abi_version() { return kAbiVersion; }

// The model dimensions this library was compiled for.
void mk_compiled_dims(int* out) {
  const int d[8] = {MK_VOCAB, MK_HIDDEN, MK_INTER, MK_LAYERS, MK_Q_HEADS, MK_KV_HEADS, MK_HEAD_DIM, MK_MAX_POS};
  memcpy(out, d, sizeof d);
}

// Host-only check of a flat file (no GPU needed). 0 on success, else err holds the message.
int mk_check_flat_file(const char* path, char* err, int errlen) {
  FlatFileInfo info;
  std::string m;
  if (flat_read_info(path, &info, &m)) return 0;
  snprintf(err, errlen, "%s", m.c_str());
  return -1;
}

const char* mk_error(MkEngine* e) { return e ? e->err.c_str() : "no engine"; }

static int engine_init(MkEngine* e, const char* path, int max_ctx, int verify_crc, int grid_override) {
  if (!flat_read_info(path, &e->info, &e->err)) return -1;
  if (max_ctx < 1 || max_ctx > MK_MAX_POS) {
    e->err = "max_ctx=" + std::to_string(max_ctx) + " is outside [1, " + std::to_string(MK_MAX_POS) +
             "]; pick a context the model supports";
    return -1;
  }
  e->max_ctx = max_ctx;
  e->attn_max_chunks = 0;  // set with the grid below
  MK_TRY(cudaGetDevice(&e->device));
  cudaDeviceProp prop;
  MK_TRY(cudaGetDeviceProperties(&prop, e->device));
  e->sms = prop.multiProcessorCount;
  e->cc = prop.major * 10 + prop.minor;
  if (e->cc < 75) {
    e->err = std::string(prop.name) + " has compute capability " + std::to_string(prop.major) + "." +
             std::to_string(prop.minor) + "; the megakernel needs 7.5 or newer (T4, A100, H100, RTX 20xx+)";
    return -1;
  }
  if (!prop.cooperativeLaunch) {
    e->err = std::string(prop.name) + " does not support cooperative launches, which keep every block resident";
    return -1;
  }
  // Ring depth: as many slots as the device's opt-in shared memory holds, beside the static part.
  cudaFuncAttributes fa;
  MK_TRY(cudaFuncGetAttributes(&fa, qwen3_megakernel<kShortCtx>));
  e->fine_slots = fa.ptxVersion >= 90;  // compiled as sm_90+ code (not a PTX-only compute_80/75 build)
  const size_t avail = prop.sharedMemPerBlockOptin - fa.sharedSizeBytes - 1024;
  e->nslots = (int)std::min<size_t>(kRingSlots, avail / kSlotBytes);
  if (const char* env = getenv("MK_RING_SLOTS")) e->nslots = std::min(e->nslots, atoi(env));  // tuning knob
  if (e->cc >= 90) e->nslots -= e->nslots % kConsumerWarps;  // one consumer warp per slot (gemv_stage)
  if (e->nslots < (e->cc >= 90 ? kConsumerWarps : 2)) {
    e->err = "only " + std::to_string(avail) + " bytes of shared memory per block; the weight ring needs " +
             std::to_string(kConsumerWarps * kSlotBytes);
    return -1;
  }
  e->smem = (size_t)e->nslots * kSlotBytes;
  for (int v = 0; v < 3 && e->fine_slots; ++v)
    if (kv_depth_of(v) > 1 && (size_t)kConsumerWarps * kSlotBytes + (size_t)kv_depth_of(v) * kConsumerWarps * kv_stage_bytes_of(v) > e->smem) {
      e->err = "KV staging depth " + std::to_string(kv_depth_of(v)) + " does not fit in " + std::to_string(e->smem) +
               " B of shared memory; build with a smaller MK_KV_DEPTH_*";
      return -1;
    }
  for (const void* k : kKernels)
    MK_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)e->smem));
  e->threads = kBlockThreads;
  int per_sm = INT_MAX;
  for (const void* k : kKernels) {  // every build must fit; the smallest count decides
    int n = 0;
    MK_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, e->threads, e->smem));
    per_sm = std::min(per_sm, n);
  }
  if (per_sm < 1) {
    e->err = "the kernel cannot be resident on this GPU (occupancy 0 with " + std::to_string(e->smem) + " B shared memory)";
    return -1;
  }
  const int max_grid = per_sm * e->sms;
  e->grid = grid_override > 0 ? grid_override : e->sms;  // one block per SM: the ring fills the SM
  if (e->grid > max_grid) {
    e->err = "grid of " + std::to_string(e->grid) + " blocks cannot be co-resident (at most " +
             std::to_string(max_grid) + " on this GPU); refusing to launch";
    return -1;
  }
  if (e->grid < kKVHeads) {
    e->err = "grid of " + std::to_string(e->grid) + " blocks: at least " + std::to_string(kKVHeads) +
             " are needed (one group per KV head)";
    return -1;
  }
  // a group's members, at most (attention.cuh chunks the positions over them)
  e->attn_max_chunks = std::min((e->grid + kKVHeads - 1) / kKVHeads, kMaxAttnChunks);
  // Memory: weights + scratch must fit in what is free now.
  const bool wo_panels = wo_panels_wanted(), lm_q8 = lm_q8_wanted();
  e->weight_bytes = e->info.header.payload_bytes + (wo_panels ? kWoPanelBytes : 0) + (lm_q8 ? kLmQ8Bytes : 0);
  e->scratch_bytes = layout_scratch(e, nullptr);
  size_t free_b = 0, total_b = 0;
  MK_TRY(cudaMemGetInfo(&free_b, &total_b));
  const size_t need = e->weight_bytes + e->scratch_bytes + ((size_t)64 << 20);
  if (need > free_b) {
    char m[300];
    snprintf(m, sizeof m, "needs %.2f GB of GPU memory (weights %.2f GB + KV cache and buffers %.2f GB for max_ctx %d) "
             "but only %.2f GB is free; lower max_ctx or free the GPU", need / 1e9, e->weight_bytes / 1e9,
             e->scratch_bytes / 1e9, max_ctx, free_b / 1e9);
    e->err = m;
    return -1;
  }
  MK_TRY(cudaMalloc(&e->weights, e->info.header.payload_bytes));
  if (wo_panels) MK_TRY(cudaMalloc(&e->wo_panels, kWoPanelBytes));
  if (lm_q8) MK_TRY(cudaMalloc(&e->lm_q8, kLmQ8Bytes));
  MK_TRY(cudaMalloc(&e->scratch, e->scratch_bytes));
  MK_TRY(cudaMemset(e->scratch, 0, e->scratch_bytes));
  layout_scratch(e, (char*)e->scratch);
  MK_TRY(cudaMalloc(&e->d_tokens, (size_t)max_ctx * sizeof(int)));
  MK_TRY(cudaEventCreate(&e->ev0));
  MK_TRY(cudaEventCreate(&e->ev1));

  // Payload -> GPU in 64 MB pieces (pinned staging), CRC-32 on the way when asked.
  const size_t piece = (size_t)64 << 20;
  void* staging = nullptr;
  MK_TRY(cudaMallocHost(&staging, piece));
  FILE* f = fopen(path, "rb");
  if (!f) { cudaFreeHost(staging); e->err = std::string(path) + ": cannot open"; return -1; }
  fseek(f, (long)e->info.header.header_bytes, SEEK_SET);
  uint32_t crc = 0;
  bool ok = true;
  const size_t payload = e->info.header.payload_bytes;
  for (size_t off = 0; off < payload && ok; off += piece) {
    const size_t n = std::min(piece, payload - off);
    ok = fread(staging, 1, n, f) == n;
    if (ok && verify_crc) crc = crc32_update(crc, (const unsigned char*)staging, n);
    if (ok) ok = cudaMemcpy((char*)e->weights + off, staging, n, cudaMemcpyHostToDevice) == cudaSuccess;
  }
  fclose(f);
  cudaFreeHost(staging);
  if (!ok) { e->err = std::string(path) + ": read or copy of the payload failed"; return -1; }
  if (verify_crc && crc != e->info.header.payload_crc32) {
    char m[200];
    snprintf(m, sizeof m, ": checksum mismatch (payload crc32 %#010x, header %#010x); the file is corrupt, re-convert it",
             crc, e->info.header.payload_crc32);
    e->err = std::string(path) + m;
    return -1;
  }

  // Weight pointers from the table.
  auto tensor = [&](int i) { return (const bf16_t*)((const char*)e->weights + e->info.tensors[i].offset); };
  MkParams& p = e->p;
  p.embed = tensor(MK_T_EMBED);
  for (int L = 0; L < kLayers; ++L) {
    const int b = MK_T_LAYER0 + L * MK_TENSORS_PER_LAYER;
    p.layer[L] = {tensor(b + MK_L_INPUT_NORM), tensor(b + MK_L_WQKV), tensor(b + MK_L_Q_NORM),
                  tensor(b + MK_L_K_NORM), tensor(b + MK_L_WO), tensor(b + MK_L_POST_NORM),
                  tensor(b + MK_L_WGU), tensor(b + MK_L_WDOWN), nullptr};
    if (!e->wo_panels) continue;
    bf16_t* panels = (bf16_t*)e->wo_panels + (size_t)L * kHidden * kQDim;
    constexpr int kThreads = 256;
    regroup_wo_panels<<<(kWoPieces + kThreads - 1) / kThreads, kThreads>>>(p.layer[L].wo, panels);
    MK_TRY(cudaGetLastError());
    p.layer[L].wo_panels = panels;
  }
  if (e->wo_panels) MK_TRY(cudaDeviceSynchronize());
  p.final_norm = tensor(MK_T_FINAL_NORM);
  p.rope_inv_freq = (const float*)tensor(MK_T_ROPE_INV_FREQ);
  p.lm_head = e->info.header.tie_word_embeddings ? p.embed : tensor(MK_T_LM_HEAD);
  if (e->lm_q8) {
    constexpr int kRowsPerBlock = 8;  // a warp a row
    quantize_lm_head_q8<<<(kVocab + kRowsPerBlock - 1) / kRowsPerBlock, 32 * kRowsPerBlock>>>(p.lm_head, (uint8_t*)e->lm_q8, kVocab);
    MK_TRY(cudaGetLastError());
    MK_TRY(cudaDeviceSynchronize());
    p.lm_q8 = (const uint8_t*)e->lm_q8;
  }
  p.max_ctx = max_ctx;
  p.attn_max_chunks = e->attn_max_chunks;
  p.attn_min_chunk = kAttnQuantum;
  if (const char* env = getenv("MK_ATTN_MIN_CHUNK")) p.attn_min_chunk = std::max(4, atoi(env) / 4 * 4);  // tuning knob
  p.nslots = e->nslots;
  // The deep-staged builds' L2 prefetch of the next layer's chunk (attention.cuh, prefetch_kv_l2).
  p.kv_l2_pos = kKVNextL2Positions;
  if (const char* env = getenv("MK_KV_L2_POS")) p.kv_l2_pos = std::max(0, atoi(env));  // tuning knob
  // L2 prefetch distance: 1/4 of the L2 shared by all blocks, in slots per block (H100: 8 slots;
  // 4-12 measured alike, 24 slower, 36 much slower: RESEARCH.md). On sm_90 code the short build's
  // launches double it, the long build's halve it and the deep build's quarter it (launch_prefetch_slots).
  p.prefetch_slots = (int)(0.25 * prop.l2CacheSize / ((double)e->grid * kSlotBytes));
  if (const char* env = getenv("MK_PREFETCH_SLOTS")) {  // tuning knob
    p.prefetch_slots = atoi(env);
    e->prefetch_slots_set = true;
  }
  p.timeout_ns = 2000ull * 1000 * 1000;
  if (const char* env = getenv("MK_TIMEOUT_MS")) p.timeout_ns = (unsigned long long)(atof(env) * 1e6);
  p.fault_block = -1;
  p.fault_layer = -1;
  p.tag_base = 1;
  p.sample_mode = 0;  // greedy until mk_set_sampling
  p.inv_temperature = 1.f;
  p.top_p = 1.f;
  return 0;
}

// Also frees a partly created engine (mk_create's failure path): cudaFree(nullptr) is a no-op.
void mk_destroy(MkEngine* e) {
  if (!e) return;
  cudaFree(e->weights);
  cudaFree(e->wo_panels);
  cudaFree(e->lm_q8);
  cudaFree(e->scratch);
  cudaFree(e->d_tokens);
  if (e->ev0) cudaEventDestroy(e->ev0);
  if (e->ev1) cudaEventDestroy(e->ev1);
  delete e;
}

// Loads the flat file onto the current GPU and sizes the KV cache for max_ctx positions.
// grid_override > 0 asks for that many blocks (tests); returns null with err filled on failure.
MkEngine* mk_create(const char* path, int max_ctx, int verify_crc, int grid_override, char* err, int errlen) {
  MkEngine* e = new MkEngine();
  if (engine_init(e, path, max_ctx, verify_crc, grid_override) != 0) {
    snprintf(err, errlen, "%s", e->err.c_str());
    mk_destroy(e);       // what was allocated before the failure
    cudaGetLastError();  // a failed allocation must not poison the next call
    return nullptr;
  }
  return e;
}

// out: grid, threads, ring slots (the long builds'; launch_slots gives a launch's), dynamic smem
// bytes, SMs, compute capability, max_ctx, weight bytes, scratch bytes (KV cache + activations +
// counters, one allocation), of which KV cache bytes
void mk_info(MkEngine* e, long long* out) {
  const long long kv = 2LL * kLayers * kKVHeads * e->max_ctx * kHeadDim * (long long)sizeof(bf16_t);
  const long long v[10] = {e->grid, e->threads, e->nslots, (long long)e->smem, e->sms, e->cc, e->max_ctx,
                           (long long)e->weight_bytes, (long long)e->scratch_bytes, kv};
  memcpy(out, v, sizeof v);
}

int mk_set_eos(MkEngine* e, const int* ids, int n) {
  if (n < 0 || n > 64) { e->err = "at most 64 EOS ids"; return -1; }
  e->eos.assign(ids, ids + n);
  if (n) MK_TRY(cudaMemcpy((void*)e->p.eos_ids, ids, n * sizeof(int), cudaMemcpyHostToDevice));
  return 0;
}

// Token choice for the next launches. temperature 0 (or top_k 1): greedy argmax. top_k 0: off;
// top_p 1: off. With temperature only, an exact sample of softmax(logits / T) over the whole
// vocabulary (Gumbel-max); with top_k and/or top_p, over the top min(top_k, kMaxTopK)
// candidates (kMaxTopK when only top_p is set). The token at position q uses the random stream
// (seed, q + rng_offset): the same seed gives the same tokens.
int mk_set_sampling(MkEngine* e, float temperature, int top_k, float top_p, unsigned long long seed,
                    unsigned long long rng_offset) {
  if (!(temperature >= 0.f) || std::isinf(temperature)) {
    e->err = "temperature=" + std::to_string(temperature) + "; it must be a finite number >= 0 (0: greedy)";
    return -1;
  }
  if (top_k < 0 || top_k > kMaxTopK) {
    e->err = "top_k=" + std::to_string(top_k) + "; it must be in [0, " + std::to_string(kMaxTopK) + "] (0: off)";
    return -1;
  }
  if (!(top_p > 0.f && top_p <= 1.f)) {
    e->err = "top_p=" + std::to_string(top_p) + "; it must be in (0, 1] (1: off)";
    return -1;
  }
  MkParams& p = e->p;
  p.sample_mode = (temperature == 0.f || top_k == 1) ? 0 : (top_k == 0 && top_p >= 1.f) ? 1 : 2;
  if (p.sample_mode == 2) {
    const int rows = (kVocab + e->grid - 1) / e->grid;
    if (rows > kMaxLmRowsPerBlock || e->grid > kConsumerWarps * 32) {
      e->err = "top-k/top-p sampling needs a grid of " + std::to_string((kVocab + kMaxLmRowsPerBlock - 1) / kMaxLmRowsPerBlock) +
               ".." + std::to_string(kConsumerWarps * 32) + " blocks (this engine has " + std::to_string(e->grid) + ")";
      p.sample_mode = 0;
      return -1;
    }
  }
  p.top_k = top_k;
  p.sample_k = top_k > 0 ? top_k : kMaxTopK;
  p.inv_temperature = temperature > 0.f ? 1.f / temperature : 1.f;
  p.top_p = top_p;
  p.seed = seed;
  p.rng_offset = rng_offset;
  return 0;
}

// Test mode: with hidden != null, launches skip the layers and run the final norm, LM head and
// token choice on this hidden state (kHidden floats) at every step; null turns it off.
int mk_set_lm_only(MkEngine* e, const float* hidden) {
  if (hidden) MK_TRY(cudaMemcpy(e->lm_only_buf, hidden, kHidden * sizeof(float), cudaMemcpyHostToDevice));
  e->p.lm_only_hidden = hidden ? e->lm_only_buf : nullptr;
  return 0;
}

// Greedy launches choose the token from the LM head's int8 copy (on != 0, the default when the engine
// has one) or from the bf16 LM head; the tokens are the same (lm_head_q8.cuh).
int mk_set_lm_q8(MkEngine* e, int on) {
  if (on && !e->lm_q8) {
    e->err = "this engine has no int8 LM head (it was created with MK_LM_Q8=0); create it without that setting";
    return -1;
  }
  e->p.lm_q8 = on ? (const uint8_t*)e->lm_q8 : nullptr;
  return 0;
}

int mk_set_timeout_ms(MkEngine* e, double ms) { e->p.timeout_ns = (unsigned long long)(ms * 1e6); return 0; }

// Fault injection (tests): block `block` never writes its QKV rows of layer `layer` (-1: off), so
// the launch must time out and report it.
int mk_set_fault(MkEngine* e, int block, int layer) { e->p.fault_block = block; e->p.fault_layer = layer; return 0; }

float mk_last_ms(MkEngine* e) { return e->last_ms; }

// One launch: n_steps decode steps from position pos0. Step s reads forced[s] for s < n_forced,
// else the previous step's argmax (step 0 with n_forced == 0 reads start_token). out_tokens[s]
// receives step s's argmax; *steps_done how many steps ran (fewer when an EOS id was produced).
// debug != 0 also records per-layer hidden states and the last step's logits (mk_get_debug).
// Returns 0, or -1 with mk_error() set (a kernel-side timeout or bad token included).
int mk_run(MkEngine* e, const int* forced, int n_forced, int pos0, int n_steps, int start_token,
           int* out_tokens, int* steps_done, int debug) {
  if (n_steps < 1 || n_forced < 0 || n_forced > n_steps || pos0 < 0 || pos0 + n_steps > e->max_ctx) {
    e->err = "positions " + std::to_string(pos0) + ".." + std::to_string(pos0 + n_steps) + " (with " +
             std::to_string(n_forced) + " forced of " + std::to_string(n_steps) + " steps) do not fit max_ctx " +
             std::to_string(e->max_ctx) + "; shorten the prompt or raise max_ctx";
    return -1;
  }
  for (int i = 0; i < n_forced; ++i)
    if (forced[i] < 0 || forced[i] >= kVocab) {
      e->err = "token id " + std::to_string(forced[i]) + " at index " + std::to_string(i) + " is outside [0, " +
               std::to_string(kVocab) + ")";
      return -1;
    }
  if (n_forced == 0 && (start_token < 0 || start_token >= kVocab)) {
    e->err = "start token " + std::to_string(start_token) + " is outside [0, " + std::to_string(kVocab) + ")";
    return -1;
  }
  MkParams p = e->p;
  p.forced_tokens = e->d_tokens;
  p.n_forced = n_forced;
  p.pos0 = pos0;
  p.n_steps = n_steps;
  p.n_eos = (int)e->eos.size();
  if (!debug) { p.dbg_hidden = nullptr; p.dbg_logits = nullptr; }
  if (n_forced) MK_TRY(cudaMemcpy(e->d_tokens, forced, n_forced * sizeof(int), cudaMemcpyHostToDevice));
  MK_TRY(cudaMemset(p.sync, 0, 256));
  MK_TRY(cudaMemset(p.hred, 0, kHredBytes));
  if (MK_EXP & 4) MK_TRY(cudaMemset(p.dbg_times, 0, dbg_words(e->grid) * 8));
  // Tags of this launch are new: nothing left by an earlier (even failed) launch can match.
  e->p.tag_base = p.tag_base + (uint32_t)((n_steps + 1) * kLayers * kTagsPerLayer + 8);
  MK_TRY(cudaMemcpy(p.cur_token, &start_token, sizeof(int), cudaMemcpyHostToDevice));
  void* args[] = {&p};
  MK_TRY(cudaEventRecord(e->ev0));
  const int variant = launch_variant(e, pos0, n_steps);
  p.nslots = launch_slots(e, variant);
  p.prefetch_slots = launch_prefetch_slots(e, variant);
  MK_TRY(cudaLaunchCooperativeKernel(kKernels[variant], dim3(e->grid), dim3(e->threads), args, e->smem, 0));
  MK_TRY(cudaEventRecord(e->ev1));
  MK_TRY(cudaEventSynchronize(e->ev1));
  MK_TRY(cudaGetLastError());
  MK_TRY(cudaEventElapsedTime(&e->last_ms, e->ev0, e->ev1));
  int errinfo[4], stop = 0;
  MK_TRY(cudaMemcpy(errinfo, p.error, sizeof errinfo, cudaMemcpyDeviceToHost));
  MK_TRY(cudaMemcpy(&stop, p.stop, sizeof stop, cudaMemcpyDeviceToHost));
  if (errinfo[0] != MK_OK) {
    static const char* names[] = {"ok", "activation wait timeout", "weight ring timeout", "token publish timeout",
                                  "token id out of range"};
    char m[300];
    snprintf(m, sizeof m, "kernel stopped: %s (block %d, detail %d, step %d); the GPU state is clean, "
             "the next call starts afresh", names[errinfo[0] < 5 ? errinfo[0] : 0], errinfo[1], errinfo[2], errinfo[3]);
    e->err = m;
    return -1;
  }
  const int done = stop ? stop : n_steps;
  if (steps_done) *steps_done = done;
  if (out_tokens) MK_TRY(cudaMemcpy(out_tokens, p.out_tokens, done * sizeof(int), cudaMemcpyDeviceToHost));
  return 0;
}

// Device buffers for host-side work on the same memory (host/prefill.py writes the KV cache
// in bulk): out = weights (the file's payload), its bytes, K cache, V cache (both (layers, kv_heads, max_ctx,
// head_dim) bf16), max_ctx, device ordinal.
void mk_device_buffers(MkEngine* e, unsigned long long* out) {
  const unsigned long long v[6] = {(unsigned long long)e->weights, e->info.header.payload_bytes, (unsigned long long)e->p.k_cache,
                                   (unsigned long long)e->p.v_cache, (unsigned long long)e->max_ctx,
                                   (unsigned long long)e->device};
  memcpy(out, v, sizeof v);
}

// Copies the validation buffers of the last debug run: hidden (layers*2*hidden), logits (vocab).
int mk_get_debug(MkEngine* e, float* hidden, float* logits) {
  if (hidden) MK_TRY(cudaMemcpy(hidden, e->p.dbg_hidden, (size_t)kLayers * 2 * kHidden * 4, cudaMemcpyDeviceToHost));
  if (logits) MK_TRY(cudaMemcpy(logits, e->p.dbg_logits, (size_t)kVocab * 4, cudaMemcpyDeviceToHost));
  return 0;
}

}  // extern "C"
#endif  // __CUDACC_RTC__

// =============================================================================================
// Roofline helpers shared by the harness and host/benchmark.py.
// =============================================================================================
#include "bandwidth.cuh"

#ifndef __CUDACC_RTC__
extern "C" {

double mk_measure_read_bandwidth(double gigabytes, int reps) {
  return measure_read_bandwidth((size_t)(gigabytes * 1e9) & ~size_t(15), reps);
}

// Bytes one decode step at `context` positions must read: every tensor once, except that the
// embedding contributes one row (it is read again in full as the LM head when tied), plus
// K and V of every layer for `context` positions.
double mk_bytes_per_token(MkEngine* e, int context) {
  double bytes = 0;
  for (const FlatTensorEntry& t : e->info.tensors) bytes += (double)t.nbytes;
  const double embed = (double)e->info.tensors[MK_T_EMBED].nbytes;
  bytes += (e->info.header.tie_word_embeddings ? 0.0 : -embed) + embed / kVocab;
  return bytes + (double)context * 2.0 * kLayers * kKVDim * sizeof(bf16_t);
}

}  // extern "C"
#endif  // __CUDACC_RTC__

// The bulk prefill's fused elementwise kernels (host/prefill.py).
#include "prefill_ops.cuh"

// =============================================================================================
// Standalone harness: build/megakernel WEIGHTS.bin [--steps N] [--ctx C] (random K/V above 1,024)
// =============================================================================================
#ifdef MK_STANDALONE
// Contexts above this are not decoded token by token before the timed launch (32K positions
// would take ~40 s a run): the cache's positions 0..ctx-1 get random K and V instead. The
// attention's work per position does not depend on the values.
constexpr int kHarnessDecodedCtx = 1024;
__global__ void harness_fill_kv(bf16_t* k, bf16_t* v, int max_ctx, int ctx) {
  const size_t n = (size_t)kLayers * kKVHeads * max_ctx * kHeadDim;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    if ((int)(i / kHeadDim % max_ctx) >= ctx) continue;
    k[i] = float_to_bf16(4.f * uniform01(11, 0, (unsigned)i) - 2.f);
    v[i] = float_to_bf16(4.f * uniform01(12, 0, (unsigned)i) - 2.f);
  }
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s WEIGHTS.bin [--steps N] [--ctx C]\n", argv[0]);
    return 2;
  }
  int steps = 512, ctx = 1;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--ctx")) ctx = atoi(argv[i + 1]);
  }
  char err[512];
  MkEngine* e = mk_create(argv[1], ctx + steps + 8, 1, 0, err, sizeof err);
  if (!e) { fprintf(stderr, "error: %s\n", err); return 1; }
  long long info[10];
  mk_info(e, info);
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, e->device));
  printf("device %s (sm_%d, %d SMs): grid %lld x %lld threads, ring %lld x %d KB (short-context build: %lld)\n",
         prop.name, e->cc, e->sms, info[0], info[1], info[2], kSlotBytes / 1024,
         (long long)launch_slots(e, kShortCtx));
  std::vector<int> prompt(ctx), out(std::max(ctx, steps) + 8);
  srand(1234);
  for (int& t : prompt) t = rand() % kVocab;
  int done = 0, next = prompt[0];
  if (ctx <= kHarnessDecodedCtx) {
    if (mk_run(e, prompt.data(), ctx, 0, ctx, 0, out.data(), &done, 0)) { fprintf(stderr, "error: %s\n", mk_error(e)); return 1; }
    next = out[ctx - 1];
  } else {
    harness_fill_kv<<<1024, 256>>>(e->p.k_cache, e->p.v_cache, e->max_ctx, ctx);
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  // warm-up, then the timed launch: `steps` tokens in one launch
  if (mk_run(e, nullptr, 0, ctx, 8, next, out.data(), &done, 0)) { fprintf(stderr, "error: %s\n", mk_error(e)); return 1; }
  if (mk_run(e, nullptr, 0, ctx, steps, next, out.data(), &done, 0)) { fprintf(stderr, "error: %s\n", mk_error(e)); return 1; }
  const double ms_tok = mk_last_ms(e) / steps;
#if MK_EXP & 4
  {  // where step kStampStep spent its time: per stage kind, medians over layers (microseconds)
    const int G = e->grid;
    std::vector<unsigned long long> t(dbg_words(G));
    CUDA_CHECK(cudaMemcpy(t.data(), e->p.dbg_times, t.size() * 8, cudaMemcpyDeviceToHost));
    auto T = [&](int b, int s, int k) { return (double)t[((size_t)b * kTimedStages + s) * kStampWords + k]; };
    const char* names[6] = {"qkv", "attn", "o", "gateup", "down", "lm"};
    std::vector<double> span[6], lat[6], work[6], spread[6];
    for (int s = 1; s < kTimedStages; ++s) {
      double prev_done = 0, first_ready = 1e30, last_ready = 0, last_done = 0;
      for (int b = 0; b < G; ++b) {
        prev_done = std::max(prev_done, T(b, s - 1, 1));
        first_ready = std::min(first_ready, T(b, s, 0));
        last_ready = std::max(last_ready, T(b, s, 0));
        last_done = std::max(last_done, T(b, s, 1));
      }
      const int kind = s == kTimedStages - 1 ? 5 : s % 5;
      span[kind].push_back((last_done - prev_done) / 1e3);      // stage on the critical path
      lat[kind].push_back((first_ready - prev_done) / 1e3);     // last write -> first reader ready
      spread[kind].push_back((last_ready - first_ready) / 1e3);  // readers' skew
      work[kind].push_back((last_done - last_ready) / 1e3);     // after the last reader was ready
    }
    auto med = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v.empty() ? 0.0 : v[v.size() / 2]; };
    printf("stage   span   latency  skew   work  ring-wait/warp (us, medians over layers, step %d)\n", kStampStep);
    const unsigned long long* counters = t.data() + dbg_counters_at(G);
    for (int k = 0; k < 6; ++k)
      printf("%-7s %6.2f %6.2f %6.2f %6.2f %6.2f\n", names[k], med(span[k]), med(lat[k]), med(spread[k]), med(work[k]),
             counters[kDbgRingWait + k] / 1e3 / G / kConsumerWarps / (k == 5 ? 1 : kLayers));
    if (counters[kDbgQ8Rescored] || counters[kDbgQ8Overflows])
      printf("int8 LM head: %.2f rows rescored a block, %llu blocks fell back to bf16, rescoring %.2f us (warp 0, mean)\n",
             (double)counters[kDbgQ8Rescored] / G, counters[kDbgQ8Overflows], counters[kDbgQ8RescoreNs] / 1e3 / G);
    if ((MK_EXP & 8) && counters[kDbgPolls])
      printf("activation polls: first L2 round trip %.0f cycles, %.2f poll rounds (%llu waits)\n",
             (double)counters[kDbgPollCycles] / counters[kDbgPolls], (double)counters[kDbgPollRounds] / counters[kDbgPolls], counters[kDbgPolls]);
    {  // each block's own time from its input ready to its warp 0 done, and its poll latency
      for (int k = 0; k < 5; ++k) {
        std::vector<double> own, lat_b, rw, rw_max;
        for (int s = 1; s < kTimedStages - 1; ++s) {
          if (s % 5 != k) continue;
          double prev_done = 0, m = 0;
          for (int b = 0; b < G; ++b) prev_done = std::max(prev_done, T(b, s - 1, 1));
          for (int b = 0; b < G; ++b) {
            own.push_back((T(b, s, 1) - T(b, s, 0)) / 1e3);
            lat_b.push_back((T(b, s, 0) - prev_done) / 1e3);
            rw.push_back(T(b, s, 2) / 1e3);
            m = std::max(m, T(b, s, 2) / 1e3);
          }
          rw_max.push_back(m);
        }
        std::sort(own.begin(), own.end());
        std::sort(lat_b.begin(), lat_b.end());
        std::sort(rw.begin(), rw.end());
        printf("%-7s own work median %.2f p90 %.2f max %.2f | ready after last input: median %.2f p90 %.2f max %.2f"
               " | longest ring wait of a block: median %.2f p90 %.2f, max over blocks (median over layers) %.2f\n", names[k],
               own[own.size() / 2], own[own.size() * 9 / 10], own.back(), lat_b[lat_b.size() / 2], lat_b[lat_b.size() * 9 / 10], lat_b.back(),
               rw[rw.size() / 2], rw[rw.size() * 9 / 10], med(rw_max));
      }
    }
    if (MK_EXP & 256) {  // sub-stage clocks of block thread 0 (sub_stamp), us per block and layer
      static const char* const sub_names[kSubPoints] = {
          "", "qkv: input staged", "qkv: rmsnorm", "qkv: gemv (warp 0)", "attn: q/k/v staged",
          "attn: q/k norm, rope", "attn: scan", "attn: fold, partials, sync", "attn: warp merge, publish",
          "attn: partials polled", "attn: chunk merge", "o: gemv (warp 0)", "gateup: input staged",
          "gateup: gemv (warp 0)", "down: input staged", "down: gemv (warp 0)"};
      int khz = 0;
      CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, e->device));
      const double per = (double)G * kLayers * khz * 1e-3;  // clocks per us, blocks x layers
      double total = 0;
      for (int i = kSubLayerStart + 1; i < kSubPoints; ++i) {
        const double us = counters[kDbgSub + i] / per;
        total += us;
        printf("sub %-26s %6.2f us\n", sub_names[i], us);
      }
      printf("sub %-26s %6.2f us (per layer, block thread 0, step %d)\n", "total", total, kStampStep);
    }
    if (MK_EXP & 8)
      for (int k = 0; k < 6; ++k)
        if (counters[kDbgDotSlots + k])
          printf("dot %-7s %.0f cycles per slot (%llu slots)\n", names[k], (double)counters[kDbgDotCycles + k] / counters[kDbgDotSlots + k],
                 counters[kDbgDotSlots + k]);
    if (MK_EXP & 8)
      for (int k = 6; k < 8; ++k)
        if (counters[kDbgDotSlots + k])
          printf("epilogue %-4s %.0f cycles per slot (warp sums and epilogue)\n", k == 6 ? "down" : "lm",
                 (double)counters[kDbgDotCycles + k] / counters[kDbgDotSlots + k]);
  }
#endif
  const double bw = mk_measure_read_bandwidth(4.0, 9);
  const double bytes = mk_bytes_per_token(e, ctx + steps / 2);
  const double roofline = bw * 1e9 / bytes;
  printf("context %d, %d tokens in one launch: %.1f tok/s, %.4f ms/token, %.0f GB/s achieved, "
         "read bandwidth %.0f GB/s, roofline %.0f tok/s, %.1f%% of roofline\n",
         ctx, steps, 1e3 / ms_tok, ms_tok, bytes / (ms_tok * 1e-3) / 1e9, bw, roofline, 100.0 * (1e3 / ms_tok) / roofline);
  mk_destroy(e);
  return 0;
}
#endif
