// probe_counted.cu: what does it cost to sum a 1,024-float vector over every block of the grid
// through counted words (64-bit red.add, count in the top byte, barriers.cuh 1b), against the
// tagged-word hop the down projection uses now? (experiment for RESEARCH.md, issue "Speed")
//   nvcc -O3 -arch=sm_90 -o build/probe_counted scripts/probe_counted.cu && build/probe_counted
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
// 2: counted words, `contrib` blocks add every word; stride: words apart (1 = packed).
__global__ void probe(int rounds, int mode, int contrib, int stride, unsigned long long* words,
                      unsigned* bar) {
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
    if (mode != 0) {
      for (int k = threadIdx.x; k < kN; k += kThreads) {
        const unsigned long long* a = w + (size_t)k * stride;
        if (mode == 1) {
          while ((ld_relaxed(a) >> 32) != (unsigned long long)(r + 1)) __nanosleep(200);
        } else {
          while ((ld_relaxed(a) >> 56) != (unsigned long long)contrib) __nanosleep(200);
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
