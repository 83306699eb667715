// quantize()/dequantize(): validate, then hand over to a backend.

#include "hqq/quantize.hpp"

#include <omp.h>

#include <cmath>

#include <fmt/ranges.h>

#include "hqq/grouping.hpp"
#include "hqq/packing.hpp"

namespace hqq {
namespace {

void check_weight(const TensorView& w, const QuantConfig& cfg) {
  cfg.validate();
  HQQ_EXPECTS(w.data != nullptr, "weight data is null");
  HQQ_EXPECTS(!w.shape.empty(), "weight has no dimensions (a scalar cannot be grouped)");
  const std::int64_t n = w.numel();
  HQQ_EXPECTS(n > 0, "weight of shape {} is empty", w.shape);
  HQQ_EXPECTS(n % cfg.group_size == 0, "group_size={} does not divide the {} elements of shape {}",
              cfg.group_size, n, w.shape);
  check_packable(cfg.nbits, GroupedView(n, cfg.group_size, cfg.axis).rows());
}

const Backend& pick(std::string_view name, const QuantConfig& cfg, DType dtype) {
  const Backend& b = get_backend(name);
  const Support s = b.supports(cfg, dtype);
  HQQ_EXPECTS(s.ok, "backend '{}' cannot run this job: {}", b.name(), s.reason);
  return b;
}

}  // namespace

QuantizedTensor quantize(const TensorView& weight, const QuantConfig& config, std::string_view backend) {
  check_weight(weight, config);
  return pick(backend, config, weight.dtype).quantize(weight, config);
}

QuantizedTensor quantize(const float* data, std::vector<std::int64_t> shape, const QuantConfig& config) {
  return quantize(TensorView{data, std::move(shape), DType::kF32}, config);
}
QuantizedTensor quantize(const half* data, std::vector<std::int64_t> shape, const QuantConfig& config) {
  return quantize(TensorView{data, std::move(shape), DType::kF16}, config);
}
QuantizedTensor quantize(const bfloat16* data, std::vector<std::int64_t> shape, const QuantConfig& config) {
  return quantize(TensorView{data, std::move(shape), DType::kBF16}, config);
}

void dequantize(const QuantizedTensor& q, const MutableTensorView& out, std::string_view backend) {
  q.validate();
  HQQ_EXPECTS(out.data != nullptr, "dequantize: output data is null");
  HQQ_EXPECTS(out.numel() == q.numel(), "dequantize: output of shape {} has {} elements, the weight {} has {}",
              out.shape, out.numel(), q.shape, q.numel());
  QuantConfig cfg;
  cfg.nbits = q.nbits;
  cfg.group_size = q.group_size;
  cfg.axis = q.axis;
  cfg.scale_dtype = q.scale_dtype;
  pick(backend, cfg, out.dtype).dequantize(q, out);
}

std::vector<float> dequantize(const QuantizedTensor& q) {
  std::vector<float> out(static_cast<std::size_t>(q.numel()));
  dequantize(q, MutableTensorView{out.data(), q.shape, DType::kF32});
  return out;
}

std::vector<std::uint8_t> unpack_codes(const QuantizedTensor& q) {
  q.validate();
  const GroupedView v = q.view();
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(v.numel));
  unpack(q.nbits, q.packed.data(), v.rows(), v.cols(), codes.data());
  return codes;
}

namespace {
template <class T>
ErrorStats error_typed(const T* w, const std::vector<float>& r) {
  const std::int64_t n = static_cast<std::int64_t>(r.size());
  double se = 0, sw = 0, sa = 0, mx = 0;
#pragma omp parallel for reduction(+ : se, sw, sa) reduction(max : mx) schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const double x = to_float(w[i]);
    const double d = x - static_cast<double>(r[i]);
    se += d * d;
    sw += x * x;
    sa += std::fabs(d);
    mx = std::max(mx, std::fabs(d));
  }
  ErrorStats s;
  s.rel_frobenius = sw > 0 ? std::sqrt(se / sw) : std::sqrt(se);
  s.mean_abs = sa / static_cast<double>(n);
  s.max_abs = mx;
  return s;
}
}  // namespace

ErrorStats measure_error(const TensorView& original, const QuantizedTensor& q) {
  HQQ_EXPECTS(original.numel() == q.numel(), "measure_error: original has {} elements, quantized {}",
              original.numel(), q.numel());
  const std::vector<float> r = dequantize(q);
  switch (original.dtype) {
    case DType::kF32: return error_typed(static_cast<const float*>(original.data), r);
    case DType::kF16: return error_typed(static_cast<const half*>(original.data), r);
    case DType::kBF16: return error_typed(static_cast<const bfloat16*>(original.data), r);
    default: detail::throw_error("measure_error: unsupported dtype {}", dtype_name(original.dtype));
  }
}

namespace {
int& default_threads() {
  static int n = omp_get_max_threads();
  return n;
}
}  // namespace

void set_num_threads(int n) {
  const int d = default_threads();
  omp_set_num_threads(n > 0 ? n : d);
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace hqq
