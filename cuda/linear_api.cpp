// The cuda backend's QuantizedLinear engine: device copies of the kernel
// layouts (the chunk layout for the CUDA-core GEMV, the fragment layout for
// the tensor-core GEMM), forward()'s pointer checks, the kernel choice by M,
// and the launch on the caller's stream.

#include <fmt/format.h>

#include <cstdint>
#include <memory>
#include <string>

#include "device_util.hpp"
#include "hqq/cuda.hpp"
#include "hqq/detail/gemm_layout.hpp"
#include "hqq/linear.hpp"

namespace hqq::cuda::detail {
namespace {

/// The smallest M from which the tensor-core GEMM beats the GEMV, per
/// compute capability, as measured by `bench_linear_cuda --gemm` (Llama
/// shapes, 4-bit g64, f16 x): see bench/results/ for the run behind each value.
///   sm_90 (H100, bench/results/gpu-gemm-2026-11-23-h100-b5d5d03): the
///   mma.sync kernel is faster than the GEMV from M = 1 on all 7 shapes
///   (1.00-1.31x at M = 1, 13-24x at M = 16).
/// Architectures without a measurement (sm_80, sm_86, sm_89) use the sm_90
/// value until one is taken.
std::int64_t measured_crossover(int major, int minor) {
  (void)minor;
  if (major >= 8) return 1;
  return 0;  // no mma.sync before sm_80: GEMV only
}

class CudaLinear final : public ::hqq::detail::LinearKernel {
 public:
  CudaLinear(const ::hqq::detail::LinearLayout& L, const LinearOptions& options) {
    require_device("QuantizedLinear on cuda");
    HQQ_CUDA_CHECK(cudaGetDevice(&device_));
    HQQ_CUDA_CHECK(cudaDeviceGetAttribute(&job_.num_sms, cudaDevAttrMultiProcessorCount, device_));
    int major = 0, minor = 0;
    HQQ_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_));
    HQQ_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device_));
    tensor_cores_ = major >= 8;
    job_.n = L.out_features;
    job_.k = L.in_features;
    job_.group_size = L.group_size;
    job_.nbits = L.nbits;
    if (L.path == ::hqq::detail::LinearPath::kPacked) {
      // The GEMV's chunk layout, unless only the tensor-core layout is wanted and the GEMM exists.
      gemv_ = !(options.device_layouts == DeviceLayouts::kTensorCoreOnly && tensor_cores_);
      if (gemv_) {
        codes_ = DeviceBuffer::from(L.codes);
        meta_ = DeviceBuffer::from(L.meta);
        job_.codes = static_cast<const std::uint32_t*>(codes_.data());
        job_.meta = meta_.data();
      }
      job_.meta_type = L.meta_dtype == DType::kF16 ? ElemType::kF16 : ElemType::kF32;
      if (tensor_cores_) {
        const ::hqq::detail::GemmLayout G = ::hqq::detail::make_gemm_layout(L);
        gemm_f16_peak_ = G.f16_peak;
        gemm_fits_f16_ = G.fits_f16();
        gemm_codes_ = DeviceBuffer::from(G.codes);
        gemm_meta_ = DeviceBuffer::from(G.meta);
        gemm_.codes = static_cast<const std::uint32_t*>(gemm_codes_.data());
        gemm_.meta = gemm_meta_.data();
        gemm_.meta_type = job_.meta_type;
        gemm_.n = G.n;
        gemm_.k = G.k;
        gemm_.npad = G.npad;
        gemm_.kpad = G.kpad;
        gemm_.group_size = G.group_size;
        gemm_.groups = G.groups;
        gemm_.nbits = G.nbits;
        gemm_.num_sms = job_.num_sms;
        gemm_.wgmma = major == 9 && minor == 0 && gemm_wgmma_built();
        crossover_ = measured_crossover(major, minor);
      }
    } else {
      dense_ = DeviceBuffer::from(L.dense);
      job_.dense = static_cast<const float*>(dense_.data());
    }
    if (!L.bias.empty()) {
      bias_ = DeviceBuffer::from(L.bias);
      job_.bias = static_cast<const float*>(bias_.data());
      gemm_.bias = job_.bias;
    }
  }

  std::int64_t tensor_core_min_m() const override { return gemm_.codes != nullptr ? crossover_ : 0; }

  std::int64_t device_bytes() const override {
    std::size_t b = 0;
    for (const DeviceBuffer* d : {&codes_, &meta_, &dense_, &bias_, &gemm_codes_, &gemm_meta_}) b += d->size();
    return static_cast<std::int64_t>(b);
  }

  bool supports(LinearKernelChoice choice) const override {
    switch (choice) {
      case LinearKernelChoice::kAuto: return true;
      case LinearKernelChoice::kGemv: return gemv_;
      case LinearKernelChoice::kTensorCoreTma: return gemm_.codes != nullptr && gemm_.wgmma;
      default: return gemm_.codes != nullptr;  // tensor_cores_ (cc >= 8.0) whenever the GEMM layout exists
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
    const ElemType x_type = elem_type(x.dtype, "forward: x");
    const ElemType y_type = elem_type(y.dtype, "forward: y");
    check_aligned(x.data, dtype_size(x.dtype), "forward: x");
    check_aligned(y.data, dtype_size(y.dtype), "forward: y");
    const cudaStream_t stream = options.stream;
    const Route r = route(x, m, options.kernel);
    if (r == Route::kGemm) {
      GemmJob job = gemm_;
      // The TMA kernels wherever they exist (sm_90 with an sm_90a build), unless mma.sync is asked for.
      if (options.kernel == LinearKernelChoice::kTensorCoreMmaSync) job.wgmma = false;
      job.x = x.data;
      job.x_type = x_type;
      job.m = m;
      job.y = y.data;
      job.y_type = y_type;
      const StreamBuffer workspace(gemm_workspace_bytes(job), stream);
      HQQ_CUDA_CHECK(launch_gemm(job, workspace.get(), stream));
      return;
    }
    HQQ_EXPECTS(gemv_,
                "forward: this layer keeps only the tensor-core layout on the device "
                "(LinearOptions::device_layouts = kTensorCoreOnly), and this call needs the GEMV: {}",
                gemv_reason(r, x, m));
    LinearJob job = job_;
    job.x = x.data;
    job.x_type = x_type;
    job.m = m;
    job.y = y.data;
    job.y_type = y_type;
    const StreamBuffer workspace(linear_workspace_bytes(job), stream);
    HQQ_CUDA_CHECK(launch_linear(job, workspace.get(), stream));
  }

 private:
  /// Where a call goes: the GEMM, or the GEMV and why.
  enum class Route { kGemm, kGemvAsked, kGemvNoGemm, kGemvDtype, kGemvUnaligned, kGemvF16Range, kGemvBelowCrossover };

  /// The route of this call; throws when a tensor-core kernel was asked for and cannot run.
  Route route(const TensorView& x, std::int64_t m, LinearKernelChoice choice) const {
    if (choice == LinearKernelChoice::kGemv) return Route::kGemvAsked;
    const bool aligned = reinterpret_cast<std::uintptr_t>(x.data) % 16 == 0;
    const bool half = x.dtype == DType::kF16 || x.dtype == DType::kBF16;
    if (choice != LinearKernelChoice::kAuto) {
      HQQ_EXPECTS(tensor_cores_, "forward: the tensor-core GEMM needs compute capability 8.0 or newer");
      HQQ_EXPECTS(gemm_.codes != nullptr,
                  "forward: the tensor-core GEMM needs the packed path (axis 1, group size a multiple of 32 "
                  "dividing in_features); this layer holds the dense path");
      HQQ_EXPECTS(half, "forward: the tensor-core GEMM takes f16 or bf16 activations, x is {}",
                  dtype_name(x.dtype));
      HQQ_EXPECTS(aligned, "forward: the tensor-core GEMM needs x 16-byte aligned, x = {}", x.data);
      HQQ_EXPECTS(choice != LinearKernelChoice::kTensorCoreTma || gemm_.wgmma,
                  "forward: the TMA tensor-core kernels need an sm_90 (Hopper) device and a library built for "
                  "sm_90a (CMAKE_CUDA_ARCHITECTURES containing 90); this is {}",
                  device_description());
      HQQ_EXPECTS(fits(x.dtype),
                  "forward: this layer's values are outside the f16 range of the tensor-core GEMM with f16 "
                  "activations: it forms every scale, zero offset and dequantized weight in f16, and here one "
                  "reaches {:g}, past 65504, the largest finite f16 (inf in the GEMM); use bf16 activations or "
                  "LinearKernelChoice::kGemv",
                  gemm_f16_peak_);
      return Route::kGemm;
    }
    if (gemm_.codes == nullptr || crossover_ == 0) return Route::kGemvNoGemm;
    if (!half) return Route::kGemvDtype;
    if (!aligned) return Route::kGemvUnaligned;
    if (!fits(x.dtype)) return Route::kGemvF16Range;
    if (m < crossover_) return Route::kGemvBelowCrossover;
    return Route::kGemm;
  }

  /// Why `r` took the GEMV (for the error of a layer without the GEMV's layout).
  std::string gemv_reason(Route r, const TensorView& x, std::int64_t m) const {
    switch (r) {
      case Route::kGemvAsked: return "LinearKernelChoice::kGemv";
      case Route::kGemvDtype: return fmt::format("{} activations (the GEMM takes f16 or bf16)", dtype_name(x.dtype));
      case Route::kGemvUnaligned: return fmt::format("x = {} is not 16-byte aligned", x.data);
      case Route::kGemvF16Range:
        return fmt::format("f16 activations on a layer past the f16 range (a value reaches {:g}; bf16 x would run)",
                           gemm_f16_peak_);
      case Route::kGemvBelowCrossover: return fmt::format("M = {} is below tensor_core_min_m() = {}", m, crossover_);
      default: return "the layer has no tensor-core GEMM";
    }
  }

  /// Whether the GEMM holds this layer's values in x's type: with f16 x it
  /// forms the scales, zero offsets and weights in f16, where values of f32
  /// (or extreme f16) metadata can overflow to inf; the GEMV computes in f32.
  bool fits(DType x_type) const { return x_type != DType::kF16 || gemm_fits_f16_; }

  int device_ = 0;
  bool tensor_cores_ = false;
  bool gemv_ = true;  ///< the GEMV can run (its layout is on the device: not kTensorCoreOnly with a GEMM)
  std::int64_t crossover_ = 0;
  bool gemm_fits_f16_ = true;  ///< GemmLayout::fits_f16 of the tensor-core layout
  double gemm_f16_peak_ = 0;   ///< GemmLayout::f16_peak, for the error message
  DeviceBuffer codes_, meta_, dense_, bias_, gemm_codes_, gemm_meta_;
  LinearJob job_;
  GemmJob gemm_;
};

}  // namespace

std::unique_ptr<::hqq::detail::LinearKernel> make_cuda_linear(const ::hqq::detail::LinearLayout& layout,
                                                              const LinearOptions& options) {
  return std::make_unique<CudaLinear>(layout, options);
}

}  // namespace hqq::cuda::detail
