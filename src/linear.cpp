// QuantizedLinear: the repack into the kernel layout, its inverse, the scalar
// oracle, and forward()'s checks before a backend's kernel runs.

#include "hqq/linear.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "hqq/backend.hpp"
#include "hqq/io/checkpoint.hpp"
#include "hqq/io/safetensors.hpp"
#include "hqq/quantize.hpp"

namespace hqq {
namespace detail {
namespace {

/// The fused kernels need each group inside one row, in whole 32-code chunks.
bool packed_path_fits(const QuantizedTensor& w) {
  return w.axis == 1 && w.group_size % kLinearChunk == 0 && w.shape[1] % w.group_size == 0;
}

std::vector<float> floats_from_view(const TensorView& v, const char* what) {
  HQQ_EXPECTS(v.dtype == DType::kF32 || v.dtype == DType::kF16 || v.dtype == DType::kBF16,
              "{} has dtype {}, expected F32, F16 or BF16", what, dtype_name(v.dtype));
  const auto n = static_cast<std::size_t>(v.numel());
  return decode_floats(static_cast<const std::uint8_t*>(v.data), n * dtype_size(v.dtype), v.dtype);
}

}  // namespace

LinearLayout make_linear_layout(const QuantizedTensor& w) {
  w.validate();
  HQQ_EXPECTS(w.shape.size() == 2, "a linear weight must be 2-D [out_features, in_features], got shape {}",
              w.shape);
  LinearLayout L;
  L.out_features = w.shape[0];
  L.in_features = w.shape[1];
  L.nbits = w.nbits;
  L.group_size = w.group_size;
  HQQ_EXPECTS(L.out_features > 0 && L.in_features > 0, "linear weight shape {} is empty", w.shape);
  if (!packed_path_fits(w)) {
    // Axis-0 groups run across rows and groups not a multiple of 32 straddle
    // the kernels' 32-code chunks: dequantize once and multiply densely.
    L.path = LinearPath::kDense;
    L.dense.resize(static_cast<std::size_t>(w.numel()));
    dequantize(w, MutableTensorView{L.dense.data(), w.shape, DType::kF32}, "cpu");
    return L;
  }
  L.path = LinearPath::kPacked;
  const std::int64_t N = L.out_features, K = L.in_features;
  const std::vector<std::uint8_t> codes = unpack_codes(w);  // axis 1: the weight's [N, K] order
  const std::int64_t chunks = N * (K / kLinearChunk);
  L.codes.assign(static_cast<std::size_t>(chunks * L.nbits), 0u);
#pragma omp parallel for schedule(static)
  for (std::int64_t c = 0; c < chunks; ++c) {
    encode_chunk(codes.data() + c * kLinearChunk, L.nbits, L.codes.data() + c * L.nbits);
  }
  // Metadata pairs (scale, zero) per group, in f16 when that is exact.
  L.meta_dtype = w.scale_dtype == DType::kF16 ? DType::kF16 : DType::kF32;
  const std::int64_t groups = w.num_groups();
  std::vector<float> pairs(static_cast<std::size_t>(2 * groups));
  for (std::int64_t g = 0; g < groups; ++g) {
    pairs[2 * g] = w.scale[g];
    pairs[2 * g + 1] = w.zero[g];
  }
  L.meta = encode_floats(pairs, L.meta_dtype);
  if (L.meta_dtype == DType::kF16) {
    // validate() does not prove the values are f16-exact: refuse a lossy copy.
    const auto back = decode_floats(L.meta.data(), L.meta.size(), DType::kF16);
    for (std::size_t i = 0; i < back.size(); ++i) {
      HQQ_EXPECTS(float_bits(back[i]) == float_bits(pairs[i]) || (std::isnan(back[i]) && std::isnan(pairs[i])),
                  "quantized tensor's {} {} of group {} is not representable in its scale dtype F16",
                  i % 2 ? "zero" : "scale", pairs[i], i / 2);
    }
  }
  return L;
}

QuantizedTensor linear_layout_to_quantized(const LinearLayout& L, const QuantizedTensor& like) {
  HQQ_EXPECTS(L.path == LinearPath::kPacked,
              "this layer holds a dense (dequantized) weight; its codes are not kept");
  QuantizedTensor q = like;
  q.shape = {L.out_features, L.in_features};
  q.nbits = L.nbits;
  q.group_size = L.group_size;
  q.axis = 1;
  const std::int64_t N = L.out_features, K = L.in_features;
  const std::int64_t chunks = N * (K / kLinearChunk);
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(N * K));
#pragma omp parallel for schedule(static)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::uint32_t* chunk = L.codes.data() + c * L.nbits;
    for (int i = 0; i < kLinearChunk; ++i) {
      codes[static_cast<std::size_t>(c * kLinearChunk + i)] = static_cast<std::uint8_t>(chunk_code(chunk, L.nbits, i));
    }
  }
  const auto v = q.view();
  q.packed.assign(static_cast<std::size_t>(packed_bytes(q.nbits, v.rows(), v.cols())), 0);
  pack(q.nbits, codes.data(), v.rows(), v.cols(), q.packed.data());
  const auto pairs = decode_floats(L.meta.data(), L.meta.size(), L.meta_dtype);
  const std::int64_t groups = static_cast<std::int64_t>(pairs.size() / 2);
  q.scale.resize(static_cast<std::size_t>(groups));
  q.zero.resize(static_cast<std::size_t>(groups));
  for (std::int64_t g = 0; g < groups; ++g) {
    q.scale[g] = pairs[2 * g];
    q.zero[g] = pairs[2 * g + 1];
  }
  q.validate();
  return q;
}

void linear_forward_ref(const LinearLayout& L, const float* x, std::int64_t m, float* y) {
  const std::int64_t N = L.out_features, K = L.in_features;
  std::vector<float> pairs;
  if (L.path == LinearPath::kPacked) pairs = decode_floats(L.meta.data(), L.meta.size(), L.meta_dtype);
  std::vector<double> w(static_cast<std::size_t>(K));
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t k = 0; k < K; ++k) {
      if (L.path == LinearPath::kDense) {
        w[k] = L.dense[n * K + k];
      } else {
        const std::uint32_t* chunk = L.codes.data() + (n * (K / kLinearChunk) + k / kLinearChunk) * L.nbits;
        const std::int64_t g = n * L.row_groups() + k / L.group_size;
        const double q = chunk_code(chunk, L.nbits, static_cast<int>(k % kLinearChunk));
        w[k] = (q - pairs[2 * g + 1]) * static_cast<double>(pairs[2 * g]);
      }
    }
    for (std::int64_t r = 0; r < m; ++r) {
      double acc = L.bias.empty() ? 0.0 : L.bias[n];
      for (std::int64_t k = 0; k < K; ++k) acc += w[k] * x[r * K + k];
      y[r * N + n] = static_cast<float>(acc);
    }
  }
}

}  // namespace detail

QuantizedLinear::QuantizedLinear(const QuantizedTensor& weight, const TensorView& bias,
                                 const LinearOptions& options) {
  const Backend& be = get_backend(options.backend);
  const Support ok = be.available();
  HQQ_EXPECTS(ok.ok, "backend '{}' is not usable: {}", be.name(), ok.reason);
  layout_ = std::make_shared<detail::LinearLayout>(detail::make_linear_layout(weight));
  if (bias.data != nullptr) {
    HQQ_EXPECTS(bias.numel() == layout_->out_features,
                "bias has {} elements (shape {}), expected out_features = {}", bias.numel(), bias.shape,
                layout_->out_features);
    layout_->bias = detail::floats_from_view(bias, "bias");
  }
  // The fields to_quantized() restores, without a copy of the data.
  source_meta_.shape = weight.shape;
  source_meta_.nbits = weight.nbits;
  source_meta_.group_size = weight.group_size;
  source_meta_.axis = weight.axis;
  source_meta_.round_zero = weight.round_zero;
  source_meta_.solver = weight.solver;
  source_meta_.scale_dtype = weight.scale_dtype;
  backend_ = std::string(be.name());
  kernel_ = be.make_linear(*layout_, options);
}

QuantizedLinear QuantizedLinear::from_dense(const TensorView& weight, const QuantConfig& config,
                                            const TensorView& bias, const LinearOptions& options) {
  HQQ_EXPECTS(weight.shape.size() == 2, "a linear weight must be 2-D [out_features, in_features], got shape {}",
              weight.shape);
  return QuantizedLinear(quantize(weight, config, options.backend), bias, options);
}

QuantizedLinear QuantizedLinear::from_checkpoint(const io::SafetensorsFile& file, const std::string& prefix,
                                                 const LinearOptions& options) {
  const QuantizedTensor q = io::read_quantized_layer(file, prefix);
  const io::TensorInfo* b = file.find(prefix + ".bias");
  if (b == nullptr) return QuantizedLinear(q, {}, options);
  // Tensor data in a file may be unaligned: copy it out first.
  HQQ_EXPECTS(b->dtype == DType::kF32 || b->dtype == DType::kF16 || b->dtype == DType::kBF16,
              "{}.bias has dtype {}, expected F32, F16 or BF16", prefix, dtype_name(b->dtype));
  std::vector<std::uint8_t> bytes(file.data(*b), file.data(*b) + b->nbytes());
  return QuantizedLinear(q, TensorView{bytes.data(), b->shape, b->dtype}, options);
}

QuantizedLinear::QuantizedLinear(QuantizedLinear&&) noexcept = default;
QuantizedLinear& QuantizedLinear::operator=(QuantizedLinear&&) noexcept = default;
QuantizedLinear::~QuantizedLinear() = default;

void QuantizedLinear::forward(const TensorView& x, const MutableTensorView& y, const ForwardOptions& options) const {
  const std::int64_t K = layout_->in_features, N = layout_->out_features;
  auto float_type = [](DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; };
  HQQ_EXPECTS(float_type(x.dtype), "forward: x has dtype {}, expected F32, F16 or BF16", dtype_name(x.dtype));
  HQQ_EXPECTS(float_type(y.dtype), "forward: y has dtype {}, expected F32, F16 or BF16", dtype_name(y.dtype));
  HQQ_EXPECTS(!x.shape.empty() && x.shape.back() == K,
              "forward: x has shape {}, its last dimension must be in_features = {}", x.shape, K);
  HQQ_EXPECTS(!y.shape.empty() && y.shape.back() == N,
              "forward: y has shape {}, its last dimension must be out_features = {}", y.shape, N);
  const std::int64_t m = x.numel() / K;
  HQQ_EXPECTS(y.numel() == m * N, "forward: y has {} elements (shape {}), expected {} rows x {} = {}",
              y.numel(), y.shape, m, N, m * N);
  if (m == 0) return;
  HQQ_EXPECTS(x.data != nullptr && y.data != nullptr, "forward: null x or y pointer");
  kernel_->forward(x, y, m, options);
}

std::int64_t QuantizedLinear::tensor_core_min_m() const { return kernel_->tensor_core_min_m(); }

std::int64_t QuantizedLinear::device_bytes() const { return kernel_->device_bytes(); }

bool QuantizedLinear::supports(LinearKernelChoice choice) const {
  return kernel_->supports(choice);
}

QuantizedTensor QuantizedLinear::to_quantized() const {
  return detail::linear_layout_to_quantized(*layout_, source_meta_);
}

}  // namespace hqq
