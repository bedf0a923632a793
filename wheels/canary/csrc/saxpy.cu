// The canary's one kernel. It includes only the CUDA runtime, not torch, so it compiles in seconds per arch.
#include <cuda_runtime.h>
#include <cstdint>

namespace canary {

__global__ void saxpy_kernel(float a, const float* __restrict__ x, const float* __restrict__ y,
                             float* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    out[i] = a * x[i] + y[i];
  }
}

cudaError_t launch_saxpy(float a, const float* x, const float* y, float* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int threads = 256;
  const int64_t wanted = (n + threads - 1) / threads;
  const int blocks = static_cast<int>(wanted < 65535 ? wanted : 65535);
  saxpy_kernel<<<blocks, threads, 0, stream>>>(a, x, y, out, n);
  return cudaGetLastError();
}

}  // namespace canary
