#pragma once
/// \file linear.hpp
/// QuantizedLinear: a linear layer y = x W^T + b whose weight stays quantized.
/// The weight is repacked once from the interchange layout into a kernel
/// layout (detail/linear_layout.hpp) and multiplied by fused
/// dequantize-matmul kernels on the CPU or a CUDA device.
///
/// \code
///   auto layer = hqq::QuantizedLinear(q);            // q: a [N, K] QuantizedTensor
///   std::vector<float> y(M * layer.out_features());
///   layer.forward({x, {M, K}, hqq::DType::kF32}, {y.data(), {M, N}, hqq::DType::kF32});
/// \endcode

#include <cstdint>
#include <memory>
#include <string>

#include "hqq/config.hpp"
#include "hqq/detail/linear_layout.hpp"
#include "hqq/quantized.hpp"
#include "hqq/tensor.hpp"

struct CUstream_st;

namespace hqq {

namespace io {
class SafetensorsFile;
}

/// Which kernel layouts a QuantizedLinear on the cuda backend keeps in device memory.
enum class DeviceLayouts {
  /// Both the CUDA-core GEMV's chunk layout and, on sm_80+ with the packed
  /// path, the tensor-core GEMM's fragment layout: every forward() works, and
  /// the weight takes about twice its packed size (QuantizedLinear::device_bytes).
  kAll,
  /// Only the fragment layout where the GEMM exists (sm_80+, packed path;
  /// elsewhere as kAll): about half the device memory. forward() then runs
  /// only what the GEMM can: 16-byte-aligned f16/bf16 x from
  /// tensor_core_min_m() rows on (every M on sm_80+ today), f16 x only on a
  /// layer within the f16 range; f32 or unaligned x, fewer rows, or
  /// LinearKernelChoice::kGemv throw, saying why.
  kTensorCoreOnly,
};

/// How a QuantizedLinear is built.
struct LinearOptions {
  /// "cpu", "cuda" or "auto" (see get_backend()).
  std::string backend = "auto";
  /// CPU threads for forward(); 0 = OpenMP's default.
  int threads = 0;
  /// Kernel layouts kept on a cuda device (the cpu backend ignores it).
  DeviceLayouts device_layouts = DeviceLayouts::kAll;
};

/// Which kernel QuantizedLinear::forward runs on the cuda backend (the cpu
/// backend has one kernel and ignores it).
enum class LinearKernelChoice {
  /// By M: the CUDA-core GEMV below the device's measured crossover
  /// (QuantizedLinear::tensor_core_min_m), the tensor-core GEMM from it on.
  /// f32 activations, the dense path and x not 16-byte aligned always take the GEMV.
  /// f16 activations also take the GEMV on a layer whose scales, zero offsets or
  /// dequantized weights reach past the f16 range (65504; possible with f32
  /// metadata, or f16 metadata whose zero lies far from the codes): the GEMM
  /// forms them in f16, where they would become inf, while the GEMV computes in
  /// f32. bf16 activations are unaffected.
  kAuto,
  /// The fused CUDA-core GEMV (any activation dtype; tuned for M = 1..16).
  kGemv,
  /// The tensor-core GEMM (sm_80 and newer; f16 or bf16 x, 16-byte aligned,
  /// packed path); forward() throws saying why when it cannot run. On sm_90
  /// (when the library was built for sm_90a) the warp-specialised TMA + wgmma
  /// kernels, else the mma.sync kernels. With f16 x on a layer past the f16
  /// range (see kAuto) it throws ("outside the f16 range") rather than return inf.
  kTensorCore,
  /// As kTensorCore, but always the mma.sync (sm_80) kernels, also on sm_90:
  /// for comparisons and tests.
  kTensorCoreMmaSync,
  /// As kTensorCore, but only the TMA + wgmma kernels (block tile 128 weight
  /// rows x 16..256 activation rows, by M): throws where they cannot run (not
  /// sm_90, or a library built without sm_90a; see QuantizedLinear::supports).
  kTensorCoreTma,
};

/// Per-call options of QuantizedLinear::forward.
struct ForwardOptions {
  /// CUDA stream the kernels run on (cuda backend; nullptr = legacy default
  /// stream). forward() returns without synchronising it.
  CUstream_st* stream = nullptr;
  /// Kernel choice (cuda backend).
  LinearKernelChoice kernel = LinearKernelChoice::kAuto;
};

namespace detail {
/// A backend's matmul engine for one layer (see Backend::make_linear).
class LinearKernel {
 public:
  virtual ~LinearKernel() = default;
  /// y[M, N] = x[M, K] W^T + b. Shapes and dtypes are already validated.
  virtual void forward(const TensorView& x, const MutableTensorView& y, std::int64_t m,
                       const ForwardOptions& options) const = 0;
  /// The smallest M that kAuto sends to a tensor-core kernel (0: none).
  virtual std::int64_t tensor_core_min_m() const { return 0; }
  /// Bytes of device memory the engine holds (weights, metadata, bias).
  virtual std::int64_t device_bytes() const { return 0; }
  /// Whether forward() honours `choice` for 16-byte-aligned f16/bf16 x.
  virtual bool supports(LinearKernelChoice choice) const {
    return choice == LinearKernelChoice::kAuto || choice == LinearKernelChoice::kGemv;
  }
};
}  // namespace detail

/// A quantized linear layer. Weight [out_features, in_features] (PyTorch's
/// nn.Linear order); forward multiplies activations x[M, in_features].
class QuantizedLinear {
 public:
  /// From a quantized weight of shape [N, K] and an optional bias (N values
  /// of any float dtype; data == nullptr for none).
  explicit QuantizedLinear(const QuantizedTensor& weight, const TensorView& bias = {},
                           const LinearOptions& options = {});
  /// Quantizes a dense weight [N, K] with `config` (on the same backend) first.
  static QuantizedLinear from_dense(const TensorView& weight, const QuantConfig& config,
                                    const TensorView& bias = {}, const LinearOptions& options = {});
  /// Loads layer `prefix` of a quantized checkpoint (keys `prefix.W_q`, ...;
  /// `prefix.bias` is used when present).
  static QuantizedLinear from_checkpoint(const io::SafetensorsFile& file, const std::string& prefix,
                                         const LinearOptions& options = {});

  QuantizedLinear(QuantizedLinear&&) noexcept;
  QuantizedLinear& operator=(QuantizedLinear&&) noexcept;
  ~QuantizedLinear();

  /// y = x W^T + b, accumulated in f32. x: [.., K] (M = numel / K rows),
  /// y: M * N elements with last dimension N; each f32, f16 or bf16. On the
  /// cpu backend x and y are host memory, on cuda device (or managed) memory.
  /// Any M works: on cuda, small M runs a fused CUDA-core GEMV and larger M
  /// (f16/bf16 x) a tensor-core GEMM (ForwardOptions::kernel).
  void forward(const TensorView& x, const MutableTensorView& y, const ForwardOptions& options = {}) const;

  std::int64_t out_features() const { return layout_->out_features; }  ///< N
  std::int64_t in_features() const { return layout_->in_features; }    ///< K
  int nbits() const { return layout_->nbits; }
  std::int64_t group_size() const { return layout_->group_size; }
  bool has_bias() const { return !layout_->bias.empty(); }
  /// Packed (fused kernels) or dense (axis 0, group size not a multiple of 32
  /// or not dividing in_features).
  detail::LinearPath path() const { return layout_->path; }
  /// The backend the layer runs on ("cpu", "cuda").
  const std::string& backend() const { return backend_; }
  /// Bytes of weights, metadata and bias one forward pass reads.
  std::int64_t weight_bytes() const { return layout_->weight_bytes(); }
  /// Bytes of device memory the layer holds: its kernel layouts and bias on a
  /// cuda device (LinearOptions::device_layouts); 0 on the cpu backend.
  std::int64_t device_bytes() const;
  /// The smallest M that LinearKernelChoice::kAuto runs on tensor cores (f16
  /// or bf16 x); 0 when the backend has no tensor-core kernel (cpu, dense path).
  std::int64_t tensor_core_min_m() const;
  /// Whether forward() runs `choice` (rather than throwing) for 16-byte-aligned
  /// bf16 activations (and f16 ones where the layer fits f16, see kAuto) on this
  /// layer, backend and device: kAuto and kGemv always; the tensor-core choices
  /// on cuda with the packed path and a device (and build) that has the
  /// kernels. The cpu backend ignores the choice: always true.
  bool supports(LinearKernelChoice choice) const;
  /// The host copy of the kernel layout (what the kernels read).
  const detail::LinearLayout& layout() const { return *layout_; }
  /// The weight back in the interchange layout: the exact inverse of the
  /// repack (packed path); throws for the dense path.
  QuantizedTensor to_quantized() const;

 private:
  std::shared_ptr<detail::LinearLayout> layout_;  // stable address: kernel_ refers to it
  QuantizedTensor source_meta_;  // shape/config fields of the source (no data)
  std::string backend_;
  std::unique_ptr<detail::LinearKernel> kernel_;
};

namespace detail {
/// Repacks an axis-1 [N, K] quantized weight (group size a multiple of 32)
/// into the chunk layout, or dequantizes it for the dense path. Exact.
LinearLayout make_linear_layout(const QuantizedTensor& weight);
/// The inverse of make_linear_layout for the packed path: codes, scale and
/// zero back in the interchange layout (fields other than the data come from `like`).
QuantizedTensor linear_layout_to_quantized(const LinearLayout& layout, const QuantizedTensor& like);
/// Plain scalar y = x W^T + b over the layout (any path), f32 x [M, K] and
/// f32 y [M, N]: the test oracle of the fast kernels.
void linear_forward_ref(const LinearLayout& layout, const float* x, std::int64_t m, float* y);
/// The CPU fused kernel (AVX2 when the CPU has it, else portable) on f32
/// activations. `threads` 0 = OpenMP default.
void linear_forward_cpu(const LinearLayout& layout, const float* x, std::int64_t m, float* y, int threads);
}  // namespace detail

}  // namespace hqq
