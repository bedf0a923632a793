// The canary's one binding: checks its inputs, launches the kernel on torch's current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

namespace canary {
cudaError_t launch_saxpy(float a, const float* x, const float* y, float* out, int64_t n, cudaStream_t stream);

torch::Tensor saxpy(double a, const torch::Tensor& x, const torch::Tensor& y) {
  TORCH_CHECK(x.is_cuda() && y.is_cuda(), "canary.saxpy: x and y must be CUDA tensors");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && y.scalar_type() == torch::kFloat32,
              "canary.saxpy: x and y must be float32");
  TORCH_CHECK(x.sizes() == y.sizes(), "canary.saxpy: x and y must have the same shape");
  TORCH_CHECK(x.device() == y.device(), "canary.saxpy: x and y must be on the same device");
  const c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto yc = y.contiguous();
  auto out = torch::empty_like(xc);
  const cudaError_t err = launch_saxpy(static_cast<float>(a), xc.data_ptr<float>(), yc.data_ptr<float>(),
                                       out.data_ptr<float>(), xc.numel(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "canary.saxpy: kernel launch failed: ", cudaGetErrorString(err));
  return out;
}
}  // namespace canary

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "canary: one CUDA kernel, one binding";
  m.def("saxpy", &canary::saxpy, "a * x + y on the GPU", pybind11::arg("a"), pybind11::arg("x"), pybind11::arg("y"));
}
