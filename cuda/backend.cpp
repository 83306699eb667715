// The "cuda" entry of the backend registry: hqq::quantize()/dequantize() on
// host QuantizedTensors, with weights and outputs in host or device memory.

#include <memory>

#include "hqq/backend.hpp"
#include "hqq/cuda.hpp"

namespace hqq::cuda::detail {

std::unique_ptr<::hqq::detail::LinearKernel> make_cuda_linear(const ::hqq::detail::LinearLayout& layout,
                                                              const LinearOptions& options);

namespace {

class CudaBackend final : public Backend {
 public:
  std::string_view name() const override { return "cuda"; }

  Support available() const override { return cuda::available(); }

  Support supports(const QuantConfig&, DType input) const override {
    Support s = cuda::available();
    if (!s.ok) return s;
    if (input == DType::kF32 || input == DType::kF16 || input == DType::kBF16) return {};
    return {false, fmt::format("input dtype {} is not F32, F16 or BF16", dtype_name(input))};
  }

  QuantizedTensor quantize(const TensorView& w, const QuantConfig& cfg) const override {
    return DeviceQuantized(w, cfg).to_host();
  }

  std::unique_ptr<::hqq::detail::LinearKernel> make_linear(const ::hqq::detail::LinearLayout& layout,
                                                           const LinearOptions& options) const override {
    return make_cuda_linear(layout, options);
  }

  void dequantize(const QuantizedTensor& q, const MutableTensorView& out) const override {
    const DeviceQuantized dq(q);
    cuda::dequantize(dq.view(), out);
  }
};

}  // namespace

std::shared_ptr<Backend> make_cuda_backend() { return std::make_shared<CudaBackend>(); }

}  // namespace hqq::cuda::detail
