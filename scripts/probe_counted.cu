// probe_counted.cu: what does it cost to sum a 1,024-float vector over every block of the grid
// through counted words (64-bit red.add, count in the top byte, barriers.cuh 1b), against the
// tagged-word hop the down projection uses now? (experiment for RESEARCH.md, issue "Speed")
//   nvcc -O3 -arch=sm_90a -o build/probe_counted scripts/probe_counted.cu && build/probe_counted
// Per round: a grid barrier, then every block (or the first C blocks) adds its 1,024 values,
// then every block polls all 1,024 words until complete. Kernel time per round minus that of
// the barrier alone = the exchange's cost with every block starting at once (the worst case).
#include <cstdio>
#include <vector>
#include <algorithm>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

constexpr int kN = 1024, kThreads = 256;
__device__ __forceinline__ unsigned long long ld_relaxed(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

// mode 0: barrier only; 1: tagged words (each block stores its share, everybody polls);
// 2: counted words, `contrib` blocks add every word; stride: words apart (1 = packed);
// 3: counted words, each of `contrib` blocks adds all of its 1,024 words with one bulk reduction
//    (cp.reduce.async.bulk .add.u64 from shared memory: the L2 does the adds, sm_90);
// 4: the same, every warp reducing its 128 words itself (no block barrier before the reduction).
__global__ void probe(int rounds, int mode, int contrib, int stride, unsigned long long* words,
                      unsigned* bar) {
  __shared__ alignas(128) unsigned long long stage[kN];
  for (int r = 0; r < rounds; ++r) {
    __syncthreads();
    if (threadIdx.x == 0) {  // grid barrier (sense by round number)
      __threadfence();
      atomicAdd(bar, 1u);
      while (*(volatile unsigned*)bar < (unsigned)(r + 1) * gridDim.x) {}
      __threadfence();
    }
    __syncthreads();
    unsigned long long* w = words + (size_t)r * kN * stride;
    if (mode == 1) {
      const int i0 = kN * blockIdx.x / gridDim.x, i1 = kN * (blockIdx.x + 1) / gridDim.x;
      if (i0 + (int)threadIdx.x < i1) {
        const unsigned long long v = ((unsigned long long)(r + 1) << 32) | 0x3f800000u;
        asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" :: "l"(w + (size_t)(i0 + threadIdx.x) * stride), "l"(v) : "memory");
      }
    } else if (mode == 2 && (int)blockIdx.x < contrib) {
      for (int k = threadIdx.x; k < kN; k += kThreads) {
        const unsigned long long v = (1ull << 56) + (1ull << 47) + (unsigned long long)(k + blockIdx.x);
        asm volatile("red.relaxed.gpu.global.add.u64 [%0], %1;" :: "l"(w + (size_t)k * stride), "l"(v) : "memory");
      }
    }
#if __CUDA_ARCH__ >= 900
    else if ((mode == 3 || mode == 4) && (int)blockIdx.x < contrib) {
      for (int k = threadIdx.x; k < kN; k += kThreads)
        stage[k] = (1ull << 56) + (1ull << 47) + (unsigned long long)(k + blockIdx.x);
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      if (mode == 3) __syncthreads(); else __syncwarp();
      const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
      const int nbytes = mode == 3 ? kN * 8 : kN * 8 / (kThreads / 32);
      const bool issuer = mode == 3 ? threadIdx.x == 0 : lane == 0;
      if (issuer) {
        const int off = mode == 3 ? 0 : warp * (kN / (kThreads / 32));
        asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.u64 [%0], [%1], %2;"
                     :: "l"(w + off), "r"((unsigned)__cvta_generic_to_shared(stage + off)), "r"(nbytes) : "memory");
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
      }
      __syncthreads();
    }
#endif
    if (mode != 0) {
      for (int k = threadIdx.x; k < kN; k += kThreads) {
        const unsigned long long* a = w + (size_t)k * stride;
        if (mode == 1) {
          while ((ld_relaxed(a) >> 32) != (unsigned long long)(r + 1)) __nanosleep(200);
        } else {
          while ((ld_relaxed(a) >> 56) != (unsigned long long)contrib) __nanosleep(200);
          if (mode >= 3 && r == 0 && blockIdx.x == 0) {  // check the sum once
            unsigned long long expect = (unsigned long long)contrib << 56, v = ld_relaxed(a);
            for (int b = 0; b < contrib; ++b) expect += (1ull << 47) + (unsigned long long)(k + b);
            if (v != expect) printf("bad sum at word %d\n", k);
          }
        }
      }
    }
  }
}

int main() {
  cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
  const int grid = prop.multiProcessorCount, rounds = 2000;
  printf("%s, %d SMs; %d rounds, grid %d x %d threads, %d words\n", prop.name, grid, rounds, grid, kThreads, kN);
  unsigned long long* words; unsigned* bar;
  const int max_stride = 16;
  CK(cudaMalloc(&words, (size_t)rounds * kN * max_stride * 8));
  CK(cudaMalloc(&bar, 4));
  struct Case { const char* name; int mode, contrib, stride; };
  const Case cases[] = {
    {"grid barrier only", 0, 0, 1},
    {"tagged words (down projection now)", 1, 0, 1},
    {"counted, 8 contributors (attention now)", 2, 8, 1},
    {"counted, 33 contributors", 2, 33, 1},
    {"counted, 66 contributors", 2, 66, 1},
    {"counted, all blocks contribute", 2, grid, 1},
    {"counted, all blocks, words 32 B apart", 2, grid, 4},
    {"counted, all blocks, words 128 B apart", 2, grid, 16},
    {"bulk-reduced counted, 8 blocks", 3, 8, 1},
    {"bulk-reduced counted, 66 blocks", 3, 66, 1},
    {"bulk-reduced counted, all blocks", 3, grid, 1},
    {"bulk-reduced counted, all blocks, per warp", 4, grid, 1},
  };
  cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  double base = 0;
  for (const Case& c : cases) {
    std::vector<float> ms;
    for (int rep = 0; rep < 5; ++rep) {
      CK(cudaMemset(words, 0, (size_t)rounds * kN * c.stride * 8));
      CK(cudaMemset(bar, 0, 4));
      int rr = rounds, mode = c.mode, contrib = c.contrib, stride = c.stride;
      void* args[] = {&rr, &mode, &contrib, &stride, &words, &bar};
      CK(cudaEventRecord(e0));
      CK(cudaLaunchCooperativeKernel((void*)probe, grid, kThreads, args, 0, 0));
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float t; CK(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    const double per = ms[2] * 1e3 / rounds;
    if (c.mode == 0) base = per;
    printf("%-44s %7.3f us/round  (+%.3f us over the barrier)\n", c.name, per, per - base);
  }
  return 0;
}
