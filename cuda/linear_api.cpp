// The cuda backend's QuantizedLinear engine: a device copy of the kernel
// layout, forward()'s pointer checks, the launch on the caller's stream.

#include <memory>

#include "device_util.hpp"
#include "hqq/cuda.hpp"
#include "hqq/linear.hpp"

namespace hqq::cuda::detail {
namespace {

class CudaLinear final : public ::hqq::detail::LinearKernel {
 public:
  explicit CudaLinear(const ::hqq::detail::LinearLayout& L) {
    require_device("QuantizedLinear on cuda");
    HQQ_CUDA_CHECK(cudaGetDevice(&device_));
    HQQ_CUDA_CHECK(cudaDeviceGetAttribute(&job_.num_sms, cudaDevAttrMultiProcessorCount, device_));
    job_.n = L.out_features;
    job_.k = L.in_features;
    job_.group_size = L.group_size;
    job_.nbits = L.nbits;
    if (L.path == ::hqq::detail::LinearPath::kPacked) {
      codes_ = DeviceBuffer::from(L.codes);
      meta_ = DeviceBuffer::from(L.meta);
      job_.codes = static_cast<const std::uint32_t*>(codes_.data());
      job_.meta = meta_.data();
      job_.meta_type = L.meta_dtype == DType::kF16 ? ElemType::kF16 : ElemType::kF32;
    } else {
      dense_ = DeviceBuffer::from(L.dense);
      job_.dense = static_cast<const float*>(dense_.data());
    }
    if (!L.bias.empty()) {
      bias_ = DeviceBuffer::from(L.bias);
      job_.bias = static_cast<const float*>(bias_.data());
    }
  }

  void forward(const TensorView& x, const MutableTensorView& y, std::int64_t m,
               const ForwardOptions& options) const override {
    int current = 0;
    HQQ_CUDA_CHECK(cudaGetDevice(&current));
    HQQ_EXPECTS(current == device_,
                "QuantizedLinear lives on CUDA device {}, but the current device is {}", device_, current);
    HQQ_EXPECTS(on_device(x.data, "forward: x"),
                "forward: x ({}) is host memory; a QuantizedLinear on cuda takes device (or managed) memory",
                x.data);
    HQQ_EXPECTS(on_device(y.data, "forward: y"),
                "forward: y ({}) is host memory; a QuantizedLinear on cuda takes device (or managed) memory",
                y.data);
    LinearJob job = job_;
    job.x = x.data;
    job.x_type = elem_type(x.dtype, "forward: x");
    job.m = m;
    job.y = y.data;
    job.y_type = elem_type(y.dtype, "forward: y");
    check_aligned(x.data, dtype_size(x.dtype), "forward: x");
    check_aligned(y.data, dtype_size(y.dtype), "forward: y");
    const cudaStream_t stream = options.stream;
    const StreamBuffer workspace(linear_workspace_bytes(job), stream);
    HQQ_CUDA_CHECK(launch_linear(job, workspace.get(), stream));
  }

 private:
  int device_ = 0;
  DeviceBuffer codes_, meta_, dense_, bias_;
  LinearJob job_;
};

}  // namespace

std::unique_ptr<::hqq::detail::LinearKernel> make_cuda_linear(const ::hqq::detail::LinearLayout& layout) {
  return std::make_unique<CudaLinear>(layout);
}

}  // namespace hqq::cuda::detail
