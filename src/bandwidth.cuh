// bandwidth.cuh: the GPU's streaming read bandwidth, the denominator of the roofline.
// A read-only pass over a buffer several times the L2 size, 16-byte loads, grid-stride, with
// a data-dependent sink so the loads cannot be dropped. The median of `reps` passes is taken.
#pragma once
#ifndef __CUDACC_RTC__  // host code's headers; NVRTC (scripts/nvrtc12_check.py) sees the kernel only
#include <algorithm>
#include <vector>
#endif

#include "utils.cuh"

__global__ void read_bandwidth_kernel(const uint4* __restrict__ src, size_t n16, unsigned* sink) {
  unsigned acc = 0;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    const uint4 a = ld_weight16(src + i), b = ld_weight16(src + i + stride);
    const uint4 c = ld_weight16(src + i + 2 * stride), d = ld_weight16(src + i + 3 * stride);
    acc ^= a.x ^ a.w ^ b.y ^ b.z ^ c.x ^ c.w ^ d.y ^ d.z;
  }
  for (; i < n16; i += stride) { const uint4 a = ld_weight16(src + i); acc ^= a.x ^ a.y ^ a.z ^ a.w; }
  if (acc == 0x9e3779b9u) *sink = acc;  // practically never true, but the compiler cannot know
}

#ifndef __CUDACC_RTC__
// Returns GB/s (1e9 bytes per second), or a negative value on a CUDA error.
static double measure_read_bandwidth(size_t bytes, int reps) {
  void* buf = nullptr;
  unsigned* sink = nullptr;
  if (cudaMalloc(&buf, bytes) != cudaSuccess) { cudaGetLastError(); return -1; }
  cudaMalloc(&sink, sizeof(unsigned));
  cudaMemset(buf, 0x5a, bytes);
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> ms;
  for (int r = 0; r < reps + 1; ++r) {
    cudaEventRecord(a);
    read_bandwidth_kernel<<<sms * 4, 512>>>((const uint4*)buf, bytes / 16, sink);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    if (r) ms.push_back(t);  // the first pass warms up
  }
  const bool ok = cudaGetLastError() == cudaSuccess;
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaFree(buf);
  cudaFree(sink);
  if (!ok) return -1;
  std::sort(ms.begin(), ms.end());
  return bytes / (ms[ms.size() / 2] * 1e-3) / 1e9;
}
#endif  // __CUDACC_RTC__
