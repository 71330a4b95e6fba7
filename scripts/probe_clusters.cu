// probe_clusters.cu: can 8 clusters of 16 (or 16 of 8) one-block-per-SM CTAs be co-resident,
// can such a grid be launched cooperatively, and what do a cluster barrier, a DSMEM exchange
// and a global-memory flag hop cost? (experiment for RESEARCH.md section 6)
//   nvcc -O3 -arch=sm_90 -o build/probe_clusters scripts/probe_clusters.cu && build/probe_clusters
#include <cstdio>
#include <cooperative_groups.h>
namespace cg = cooperative_groups;
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); } } while (0)

__device__ unsigned long long g_flag[2][32];
__global__ void probe(int iters, unsigned long long* out, unsigned* arrive) {
  extern __shared__ float sm[];
  cg::cluster_group cl = cg::this_cluster();
  const unsigned r = cl.block_rank(), n = cl.num_blocks();
  // co-residency: every CTA arrives, everybody spins until all did (bounded)
  if (threadIdx.x == 0) {
    atomicAdd(arrive, 1u);
    long long t0 = clock64();
    while (*(volatile unsigned*)arrive < gridDim.x && clock64() - t0 < 2000000000LL) {}
  }
  __syncthreads();
  // cluster barrier latency
  cl.sync();
  long long t0 = clock64();
  for (int i = 0; i < iters; ++i) cl.sync();
  long long t1 = clock64();
  // DSMEM exchange: every CTA writes 32 floats into every other CTA's smem, then barrier
  long long t2 = clock64();
  for (int i = 0; i < iters; ++i) {
    if (threadIdx.x < n * 32) {
      float* dst = cl.map_shared_rank(sm, threadIdx.x / 32);
      dst[r * 32 + threadIdx.x % 32] = (float)i;
    }
    cl.sync();
  }
  long long t3 = clock64();
  // global ping-pong between CTA 0 and CTA gridDim.x-1 (one 8-byte flag each way)
  long long t4 = 0, t5 = 0;
  const bool a = blockIdx.x == 0, b = blockIdx.x == gridDim.x - 1;
  if ((a || b) && threadIdx.x == 0) {
    volatile unsigned long long* mine = g_flag[a ? 0 : 1];
    volatile unsigned long long* other = g_flag[a ? 1 : 0];
    t4 = clock64();
    for (int i = 1; i <= iters; ++i) {
      if (a) { *other = i; while (*mine != (unsigned long long)i) {} }
      else { while (*mine != (unsigned long long)i) {} *other = i; }
    }
    t5 = clock64();
  }
  if (threadIdx.x == 0) {
    out[blockIdx.x * 4 + 0] = (t1 - t0) / iters;
    out[blockIdx.x * 4 + 1] = (t3 - t2) / iters;
    out[blockIdx.x * 4 + 2] = (a || b) ? (t5 - t4) / iters / 2 : 0;
    out[blockIdx.x * 4 + 3] = 0;
  }
}

int main() {
  cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
  int clk = 0; CK(cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, 0));
  printf("%s: %d SMs, clock %d kHz, smem/block optin %zu\n", prop.name, prop.multiProcessorCount, clk, prop.sharedMemPerBlockOptin);
  const size_t smem = 200 * 1024;
  CK(cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  CK(cudaFuncSetAttribute(probe, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  for (int cs : {1, 2, 4, 8, 16}) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(cs * 8); cfg.blockDim = dim3(288); cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute at[1]; at[0].id = cudaLaunchAttributeClusterDimension; at[0].val.clusterDim.x = cs; at[0].val.clusterDim.y = 1; at[0].val.clusterDim.z = 1;
    cfg.attrs = at; cfg.numAttrs = 1;
    int nc = -1; cudaError_t e = cudaOccupancyMaxActiveClusters(&nc, probe, &cfg);
    printf("cluster %2d: max active clusters %d (%d CTAs) %s\n", cs, nc, nc * cs, e ? cudaGetErrorString(e) : "");
  }
  unsigned long long* out; unsigned* arrive;
  CK(cudaMalloc(&out, 4096 * 8)); CK(cudaMalloc(&arrive, 4));
  for (int cs : {8, 16}) for (int coop : {0, 1}) {
    const int grid = cs == 16 ? 128 : 128;
    CK(cudaMemset(arrive, 0, 4)); CK(cudaMemset(out, 0, 4096 * 8));
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid); cfg.blockDim = dim3(288); cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute at[2]; at[0].id = cudaLaunchAttributeClusterDimension; at[0].val.clusterDim.x = cs; at[0].val.clusterDim.y = 1; at[0].val.clusterDim.z = 1;
    at[1].id = cudaLaunchAttributeCooperative; at[1].val.cooperative = 1;
    cfg.attrs = at; cfg.numAttrs = coop ? 2 : 1;
    cudaError_t e = cudaLaunchKernelEx(&cfg, probe, 1000, out, arrive);
    cudaError_t e2 = cudaDeviceSynchronize();
    unsigned arr = 0; CK(cudaMemcpy(&arr, arrive, 4, cudaMemcpyDeviceToHost));
    unsigned long long h[512]; CK(cudaMemcpy(h, out, sizeof h, cudaMemcpyDeviceToHost));
    printf("cluster %d coop %d grid %d: launch %s, sync %s, arrived %u; cycles: cluster.sync %llu, dsmem+sync %llu, global hop %llu\n",
           cs, coop, grid, cudaGetErrorString(e), cudaGetErrorString(e2), arr, h[0], h[1], h[2]);
  }
  return 0;
}
