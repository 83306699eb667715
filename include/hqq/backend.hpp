#pragma once
/// \file backend.hpp
/// The one backend interface: every device implements quantize and
/// dequantize behind it and may decline a configuration with a reason.

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hqq/config.hpp"
#include "hqq/error.hpp"
#include "hqq/linear.hpp"
#include "hqq/quantized.hpp"
#include "hqq/tensor.hpp"

namespace hqq {

/// Whether a backend takes a job; `reason` says why not.
struct Support {
  bool ok = true;
  std::string reason;
  explicit operator bool() const { return ok; }
};

/// A device that quantizes and dequantizes.
class Backend {
 public:
  virtual ~Backend() = default;
  /// Short name ("cpu", "cuda").
  virtual std::string_view name() const = 0;
  /// Whether the device is usable at all (a CUDA backend without a GPU says
  /// why not); "auto" skips backends that are not available.
  virtual Support available() const { return {}; }
  /// Whether this backend handles the config for an input of dtype `input`.
  virtual Support supports(const QuantConfig& config, DType input) const = 0;
  /// Quantizes `weight` (f32/f16/bf16, validated by the caller).
  virtual QuantizedTensor quantize(const TensorView& weight, const QuantConfig& config) const = 0;
  /// Dequantizes into `out` (f32/f16/bf16, numel matching).
  virtual void dequantize(const QuantizedTensor& q, const MutableTensorView& out) const = 0;
  /// The matmul engine of a QuantizedLinear over `layout` (which outlives it).
  /// A backend without one says so.
  virtual std::unique_ptr<detail::LinearKernel> make_linear(const detail::LinearLayout& layout,
                                                            const LinearOptions& options) const {
    (void)layout;
    (void)options;
    detail::throw_error("backend '{}' has no QuantizedLinear kernels", name());
  }
};

/// Adds a backend to the registry (replaces one of the same name).
void register_backend(std::shared_ptr<Backend> backend);
/// Looks a backend up by name. "auto" gives the backend named by the
/// environment variable HQQ_BACKEND when set, else the first available one
/// in preference order (cuda when built and a device is present, then cpu).
/// Throws hqq::Error listing the known names when there is none.
const Backend& get_backend(std::string_view name = "auto");
/// Names of the registered backends, preferred first.
std::vector<std::string> backend_names();

}  // namespace hqq
