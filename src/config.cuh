// config.cuh: model dimensions (generated from config.json) and the kernel's tuning constants.
//
// The dimensions come from generated_layout.h, which host/layout.py writes from the model's
// config.json; nothing here repeats a number from that file. Tuning constants are chosen per
// architecture at compile time; sizes that depend on the device (grid, ring depth) are read
// from the device at run time (see mk_create in megakernel.cu).
#pragma once
#include <generated_layout.h>  // -I picks the model: src/ by default, a generated one for others

// ---- derived model dimensions -------------------------------------------------------------
constexpr int kVocab = MK_VOCAB;
constexpr int kHidden = MK_HIDDEN;
constexpr int kInter = MK_INTER;
constexpr int kLayers = MK_LAYERS;
constexpr int kQHeads = MK_Q_HEADS;
constexpr int kKVHeads = MK_KV_HEADS;
constexpr int kHeadDim = MK_HEAD_DIM;
constexpr int kGroup = kQHeads / kKVHeads;          // query heads sharing one KV head
constexpr int kQDim = kQHeads * kHeadDim;           // 2048
constexpr int kKVDim = kKVHeads * kHeadDim;         // 1024
constexpr int kGroupDim = kGroup * kHeadDim;        // 256: one KV head's query heads (a column panel of Wo)
constexpr int kQKVDim = kQDim + 2 * kKVDim;         // 4096 rows of the fused QKV matrix
constexpr float kRmsEps = MK_RMS_EPS;

// Timing experiments only (RESEARCH.md sections 7, 10 and 12); 0 in every real build. Bits:
//   4 per-stage timestamps (the harness prints the breakdown), 8 dot-product cycles and poll
//   round trips, 16 no weight copies (slots stay zero), 32 no dot products, 64 no L2 prefetch,
//   128 weight copies from a 4 MB window that stays in L2 (sm_90), 256 sub-stage clocks of block
//   thread 0 (sub_stamp in barriers.cuh), 1024 the down stage polls half of act (wrong results: how
//   much the poll's L2 traffic costs), 2048 the attention scan reads cached position t as t % 64 (wrong
//   results: the scan with every KV read an L2 hit). They all time step MK_STAMP_STEP (default 1).
#ifndef MK_EXP
#define MK_EXP 0
#endif
#ifndef MK_STAMP_STEP
#define MK_STAMP_STEP 1
#endif
constexpr int kStampStep = MK_STAMP_STEP;
// Timing experiment (RESEARCH.md section 16; 0 in every real build): bit k skips the dot products of
// the GEMV stage kind k (gemv.cuh: 0 QKV, 2 O, 3 gate/up, 4 down, 5 LM head); wrong results.
// (MK_EXP & 32, no dot products at all, is every bit.)
#ifndef MK_NODOT_MASK
#define MK_NODOT_MASK 0
#endif
constexpr unsigned kNoDotMask = (unsigned)(MK_NODOT_MASK) | ((MK_EXP & 32) ? 0xffu : 0u);

// ---- tuning ---------------------------------------------------------------------------------
#ifndef MK_POLL_SLEEP_NS
#define MK_POLL_SLEEP_NS 200  // back-off between polls of an activation word; tuned (RESEARCH.md)
#endif
// Weights stream through a ring of shared-memory slots. A slot holds whole rows; its size is a
// common multiple of the three row widths (K = hidden, q_dim, intermediate) in bytes, so a stage's
// slots are full except its last (SlotRows below: the short build's QKV and down slots hold fewer rows).
constexpr int kSlotBytes = 12288;
constexpr int kMaxSlots = 32;                        // shared-memory control arrays
// Ring depth: min(this, what shared memory holds); tuned on an H200 (RESEARCH.md).
constexpr int kRingSlots = 16;  // a multiple of kConsumerWarps (gemv_stage)
// Warps that compute. With the two producer warps that makes 10 warps: 3 on two SM
// sub-partitions, so every thread gets at most 168 registers. The GEMV holds at most 1024
// activations in registers (gemv.cuh) to stay inside that.
constexpr int kConsumerWarps = 8;
// Two producer warps: the fill warp (on sm_90 one lane issues bulk copies; older GPUs copy with
// its 32 lanes) and the prefetch warp, whose 32 lanes keep an L2 prefetch front ahead of the
// fills, line by line (prefetch.cuh). (One block size for every architecture: nvcc applies a
// kernel's __launch_bounds__ from a single evaluation, so it cannot differ by architecture.)
constexpr int kProducerWarps = 2;
// Builds of the kernel (megakernel.cu, MkVariant): launches whose mean position is below
// this run the short-context one (prefetch warp, a ring of kShortCtxRingSlots), the others a
// long-context one (lane-0 bulk prefetch; the split-KV scan is latency-bound and suffers from
// the prefetch warp's traffic): the long build, or the deep-KV build from kDeepKVPositions (below).
// Crossover on the H100 with the 8-slot short ring (RESEARCH.md section 14), short / long tok/s:
// mean position 1,152: 1,469 / 1,399; 2,176: 1,288 / 1,371. (Section 12, 16 slots: 896 and 1,024.)
// Since section 21 the rule applies only where the kernels are not sm_90 code: on sm_90 code the long
// build is faster at every context (megakernel.cu, launch_variant).
constexpr int kShortCtxPositions = 1536;
// The short-context build's ring depth on sm_90+ (the long one uses every slot that fits, 16):
// fewer bytes in flight, quicker activation round trips. H100, 256 tokens, tok/s, 8 / 16 slots:
// context 1: 1,695-1,714 / 1,668-1,671; 128: 1,634-1,662 / 1,614; 640: 1,506-1,511 / 1,467. Applied
// where the kernels are sm_90 code (launch_slots, megakernel.cu); PTX-only builds and older GPUs keep
// the full ring (not measured on older GPUs).
constexpr int kShortCtxRingSlots = 8;
// ... and from this mean position the deep-KV build (more KV batches in flight in the scan: on sm_90
// code kv_depth_of(2) staged a warp and an 8-slot ring, below; on older code a third batch in registers,
// which spill in the GEMVs). H100, long / deep tok/s (RESEARCH.md section 17), mean position 8,320:
// 927 / 917 (deep staging in the long build); 12,416: 787.7 / 800.5; 16,512: 679.6 / 711.1; 24,704:
// 524.8 / 583.3; 32,896: 431.1 / 489.8. (With the register batch, section 13, the crossover was ~20K.)
// On sm_90 code, since the long and deep builds' prefetch distance was halved (megakernel.cu,
// launch_prefetch_slots), from kDeepKVPositionsSm90 instead. H100, long / deep tok/s (RESEARCH.md
// section 22), mean position 4,352: 1,246-1,247 / 1,211; 6,400: 1,107-1,109 / 1,107-1,109; 8,448:
// 998-999 / 1,023-1,026; 16,640: 712-715 / 785. With the deep build's scores on tensor cores (below,
// MK_ATTN_MMA; section 23) from 4,096: mean position 4,224, long / deep: 1,259-1,264 / 1,301-1,307.
#ifndef MK_ATTN_MMA
#define MK_ATTN_MMA 1  // the deep build's scores on tensor cores (below, kKVMmaBatchBytes)
#endif
#ifndef MK_DEEP_KV_POSITIONS
#define MK_DEEP_KV_POSITIONS 10240
#endif
#ifndef MK_DEEP_KV_POSITIONS_SM90
#define MK_DEEP_KV_POSITIONS_SM90 (MK_ATTN_MMA ? 4096 : 7168)
#endif
constexpr int kDeepKVPositions = MK_DEEP_KV_POSITIONS;
constexpr int kDeepKVPositionsSm90 = MK_DEEP_KV_POSITIONS_SM90;
constexpr int kBlockThreads = (kConsumerWarps + kProducerWarps) * 32;
// Positions the warps take in one pass: the smallest split-KV chunk by default (the environment's
// MK_ATTN_MIN_CHUNK overrides it at engine creation; 64 measured alike, 128 and 256 slower).
constexpr int kAttnQuantum = kConsumerWarps * 4;
// The attention's shared-memory use of the staged-input buffers xs (attention.cuh): at the front
// the warps' staged KV batches (sm_80+: 4 positions x (K + V) rows of bf16 a warp), then q of the
// group's heads; at the end this step's q, k and v of the KV head (words). After the scan the
// warps' partials overwrite the front (on sm_75 without a barrier: they must end before q).
constexpr int kAttnQKVWords = (kGroup + 2) * kHeadDim;
constexpr int kKVStageBytes = 8 * kHeadDim * 2;
// KV batches a warp keeps in flight in shared memory during the split-KV scan (cp.async), per kernel
// build (short, long, deep-KV). 1: one staging buffer at the front of xs (and in the deep build a
// third batch in registers, which spills in the GEMVs). Above 1 (sm_90 code only): that many buffers
// a warp in the shared memory past a ring of kConsumerWarps slots, so the launch's ring shrinks from
// 16 slots to 8 (megakernel.cu, launch_slots). H100, tok/s (RESEARCH.md section 17), 16-slot ring /
// depth 3 / depth 6: 8K (long build) 926-934 / 927-928 / 937; 32K (deep build) 468 / 484 / 479-480.
// The scan shortens (8K: 15.7 -> 13.5 / 11.6 us a layer) but the 8-slot ring starves the QKV stage
// (its slowest block waits ~5 us for weights), so only the deep build, where the scan dominates,
// takes it.
#ifndef MK_KV_DEPTH_SHORT
#define MK_KV_DEPTH_SHORT 1
#endif
#ifndef MK_KV_DEPTH_LONG
#define MK_KV_DEPTH_LONG 1
#endif
#ifndef MK_KV_DEPTH_DEEP
#define MK_KV_DEPTH_DEEP 3
#endif
__host__ __device__ constexpr int kv_depth_of(int variant) {
  return variant == 0 ? MK_KV_DEPTH_SHORT : variant == 1 ? MK_KV_DEPTH_LONG : MK_KV_DEPTH_DEEP;
}
static_assert(MK_KV_DEPTH_SHORT >= 1 && MK_KV_DEPTH_LONG >= 1 && MK_KV_DEPTH_DEEP >= 1, "KV depth: 1 or more");
// The builds with deep KV staging (kv_depth_of > 1) take their scores from tensor cores
// (attention_mma.cuh) and stage 8 positions a buffer; MK_ATTN_MMA=0 keeps the CUDA-core scan there
// (measurements). H100, tok/s, deep build (RESEARCH.md section 23), CUDA-core / tensor-core scores:
// 8,192 1,059-1,060 / 1,087-1,089; 16,384 802 / 807-811; at 4,096 the long build 1,259-1,264 / the
// deep build 1,301-1,307.
constexpr int kKVMmaBatchBytes = 16 * kHeadDim * 2;
// Tiles a warp issues before the wait for q, k and v: KV bytes in flight lengthen that wait (8K:
// 4.1 us with 16 positions a warp, 6.1 with 24), so 2, and 3 where a chunk is this long (32K: 533-535
// vs 525-527 tok/s with 2; 8K 1,072-1,081 vs 1,087-1,089; 16K 796-798 vs 807-811).
constexpr int kMmaPreWait3Chunk = 2048;
__host__ __device__ constexpr int kv_stage_bytes_of(int variant) {
  return MK_ATTN_MMA && kv_depth_of(variant) > 1 ? kKVMmaBatchBytes : kKVStageBytes;
}
// ... and those builds bulk-prefetch into L2, after each layer's scan, the first this many cached
// positions of the block's chunk of the next layer (attention.cuh, prefetch_kv_l2) (MK_KV_L2_POS overrides it at engine creation).
// H100, 32K: 192 positions +1%, 512 -2% (the L2 then loses the weights' prefetch front).
constexpr int kKVNextL2Positions = 192;
constexpr int kAttnQOffsetBytes = kConsumerWarps * kKVStageBytes;
// The tensor-core scan's Q fragments (attention_mma.cuh, 1 KB), between the warps' partials and q.
constexpr int kAttnQFragOffsetBytes = (kConsumerWarps * kGroup * (kHeadDim + 2) * 4 + 127) / 128 * 128;
#ifndef MK_ATTN_PREFETCH
#define MK_ATTN_PREFETCH 4
#endif
constexpr int kAttnPrefetch = MK_ATTN_PREFETCH;      // KV batches a warp prefetches into L2 ahead of its scan,
#ifndef MK_ATTN_PREFETCH_MIN
#define MK_ATTN_PREFETCH_MIN 1024
#endif
// ... in chunks of this many positions or more (H100: +8% at 32K, -4% at 4K when every chunk
// prefetched; since the scan stages its next batch, thresholds of 256 and 512 were no better at 8K:
// RESEARCH.md sections 9, 11). -DMK_ATTN_PREFETCH(_MIN)=N override both for experiments.
constexpr int kAttnPrefetchMinChunk = MK_ATTN_PREFETCH_MIN;
// The tensor-core scan (deep build) reads KV at the DRAM rate, so its L2 prefetch (attention_mma.cuh,
// kMmaPrefetchTiles past the staged ones) pays from shorter chunks: H100, tok/s (RESEARCH.md section
// 24), threshold 256 / 1,024: 8,192 1,099-1,106 / 1,085-1,088 (two calls); 4,096 1,293-1,299 /
// 1,288-1,289; 32,768 521-522 / 522.
#ifndef MK_MMA_PREFETCH_MIN
#define MK_MMA_PREFETCH_MIN 256
#endif
constexpr int kMmaPrefetchMinChunk = MK_MMA_PREFETCH_MIN;
// Staged stage inputs (two buffers, BlockControl::xs) hold this many floats each.
constexpr int kStageFloats = kInter > kQDim ? kInter : kQDim;
// Split-KV chunks of one KV head at most (its partials buffer), and how many chunks' partials
// (m, l, o per query head) one merge pass stages in a buffer: as many words as the largest
// activation, so the poll keeps the same 6 word pairs per thread in flight (more spill registers).
constexpr int kMaxAttnChunks = 32;
constexpr int kMergeChunks = kStageFloats / (kGroup * (kHeadDim + 2));
// The attention output reaches the residual as a sum over KV-head groups in fixed point
// (barriers.cuh, counted words): values are kept to 2^-kFixShift, up to +-2^(51-kFixShift).
constexpr int kFixShift = 24;
// Sampling with top-k / top-p keeps at most this many candidates per block and overall.
constexpr int kMaxTopK = 64;
// ... and stages a block's LM-head logits in shared memory (the two staged-input buffers).
constexpr int kMaxLmRowsPerBlock = 2 * kStageFloats;

__host__ __device__ constexpr int rows_per_slot(int K) { return kSlotBytes / (K * 2); }
static_assert(rows_per_slot(kHidden) >= 2 && rows_per_slot(kHidden) % 2 == 0,
              "gate/up rows come in pairs: a slot must hold an even number of hidden-wide rows");
static_assert(rows_per_slot(kQDim) >= 1 && rows_per_slot(kInter) >= 1, "slot smaller than a row");
// Rows a ring slot holds, per stage (at most rows_per_slot(K)). A block's stage ends when its
// slowest consumer warp has done its slots (slot seq goes to warp seq % 8), so a stage with fewer
// slots than warps leaves warps idle and the busy ones with whole 12 KB slots. The short-context
// build (kFine, sm_90+) cuts QKV (31-32 rows a block on 132 SMs) into 8 slots of 4 rows and the down
// projection (7-8 rows of 3,072) into slots of one row; O (64 rows of 256: 3 slots) and gate/up
// (46 or 48 rows: 8 slots) keep full slots, as do the long builds, whose 16-slot ring streams the
// weights during long scans (smaller slots hold fewer bytes). H100, tok/s (RESEARCH.md section 15):
// QKV 4 / O 24 / down 1 vs full slots: context 1 1,662 vs 1,632-1,645, 128 1,631-1,636 vs
// 1,598-1,608; QKV 6 instead of 4: -2.5%; O 8: -1.8%; down 2: -1.5%; the long build at 8K: -2.6%.
#ifndef MK_RPS_QKV
#define MK_RPS_QKV 4
#endif
#ifndef MK_RPS_DOWN
#define MK_RPS_DOWN 1
#endif
// Fine slots were measured with sm_90's bulk copies; the sm_80 and sm_75 fill paths keep full ones
// (PTX-only builds on the H100 with fine slots: compute_80 784 vs 838 tok/s, compute_75 314 vs 334).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr bool kFineSlotsArch = false;
#else
constexpr bool kFineSlotsArch = true;
#endif
// Greedy launches stream the LM head's int8 copy (lm_head_q8.cuh): kQ8RowBytes a row, counted as
// bf16 elements like every other row.
constexpr int kQ8RowBytes = kHidden + 16;
constexpr int kQ8RowElems = kQ8RowBytes / 2;
template <bool kFine>
struct SlotRows {
  static constexpr int kQKV = kFine ? MK_RPS_QKV : rows_per_slot(kHidden);
  static constexpr int kO = rows_per_slot(kGroupDim);
  static constexpr int kGateUp = rows_per_slot(kHidden);
  static constexpr int kDown = kFine ? MK_RPS_DOWN : rows_per_slot(kInter);
  static constexpr int kLmHead = rows_per_slot(kHidden);
  static constexpr int kLmHeadQ8 = rows_per_slot(kQ8RowElems) < 32 ? rows_per_slot(kQ8RowElems) : 32;  // (lm_head_q8.cuh)
  static_assert(kQKV >= 1 && kQKV <= rows_per_slot(kHidden) && kDown >= 1 && kDown <= rows_per_slot(kInter),
                "rows per slot: from 1 to what a slot holds");
};
static_assert(kHidden % 256 == 0 && kQDim % 256 == 0 && kInter % 256 == 0,
              "a warp reads a row in 16-byte pieces, 32 lanes at a time");
static_assert(kHeadDim == 128, "attention maps 4 head dims to each of 32 lanes");
static_assert(kConsumerWarps * kGroup * (kHeadDim + 2) <= kStageFloats,
              "attention's per-warp partials borrow one staged-input buffer");
static_assert(kGroupDim % 256 == 0, "the O projection's K-slice is read like any row (16-byte pieces, 32 lanes)");
static_assert(kMergeChunks >= 2, "split-KV needs room for two chunks' partials");
static_assert(kAttnQOffsetBytes + kGroup * kHeadDim * 4 + kAttnQKVWords * 4 <= 2 * kStageFloats * 4,
              "attention's KV staging buffers and q (front of xs) and its staged q/k/v (end of xs) overlap");
static_assert(kConsumerWarps * kGroup * (kHeadDim + 2) * 4 <= kAttnQOffsetBytes,
              "attention's per-warp partials (written with no barrier after the scan) reach q");

// ---- error codes written by the kernel (MkParams::error[0]) ---------------------------------
enum MkErrorCode {
  MK_OK = 0,
  MK_ERR_WAIT_TIMEOUT = 1,      // an activation (tagged word) was not written in time
  MK_ERR_RING_TIMEOUT = 2,      // a weight slot never arrived / was never released
  MK_ERR_TOKEN_TIMEOUT = 3,     // the next token was not published in time
  MK_ERR_BAD_TOKEN = 4,         // an input token id outside [0, vocab)
};
