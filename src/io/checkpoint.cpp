/// \file checkpoint.cpp
/// The reference package's quantized-layer key layout (HQQLinear.state_dict()
/// of hqq 0.2.8.post1 with encoded metadata, as transformers saves it).

#include "hqq/io/checkpoint.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "hqq/error.hpp"

namespace hqq::io {

const std::vector<std::string>& quantized_layer_keys() {
  static const std::vector<std::string> keys = {
      "W_q",           "scale",        "zero",          "shape",
      "nbits",         "group_size",   "axis",          "packing",
      "unpack_view_dtype", "compute_dtype", "view_as_float", "quant_scale",
      "quant_zero",    "offload_meta", "encoded_state_dict", "stores_quant_config",
      "channel_wise",  "optimize",     "round_zero",
  };
  return keys;
}

namespace {

std::string key_of(const std::string& prefix, std::string_view key) {
  return prefix.empty() ? std::string(key) : prefix + "." + std::string(key);
}

/// The reference's name of the interchange packing for nbits.
std::string_view packing_name(int nbits) {
  switch (nbits) {
    case 8: return "8bit_u8";
    case 4: return "4bit_u8";
    case 3: return "3bit_32";
    case 2: return "2bit_u8";
    case 1: return "1bit_u8";
  }
  return "?";
}

/// The torch spelling of the packed element type.
std::string_view view_dtype_name(int nbits) {
  return nbits == 3 ? "torch.int32" : "torch.uint8";
}

/// The torch spelling of a float storage type.
std::string_view torch_dtype_name(DType t) {
  switch (t) {
    case DType::kF16: return "torch.float16";
    case DType::kBF16: return "torch.bfloat16";
    case DType::kF32: return "torch.float32";
    default: break;
  }
  detail::throw_error("scale dtype {} has no torch compute dtype", dtype_name(t));
}

std::vector<std::uint8_t> ascii_bytes(std::string_view s) {
  return std::vector<std::uint8_t>(s.begin(), s.end());
}

// ------------------------------------------------------------------ reading
// Every helper throws a message without the file/layer context; the caller of
// read_quantized_layer() adds it once.

std::string shape_text(const std::vector<std::int64_t>& s) { return fmt::format("{}", s); }

/// Reads a little-endian integer element (memcpy: file data may be unaligned).
template <typename T>
T load(const std::uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

/// One integer from a scalar tensor ([] or [1]); accepts the integer, bool and
/// float encodings different writers use (floats must be integral).
std::int64_t read_int_scalar(const SafetensorsFile& f, const TensorInfo& t) {
  HQQ_EXPECTS(t.numel() == 1, "key '{}' should hold one value, has shape {}", t.name,
              shape_text(t.shape));
  const std::uint8_t* p = f.data(t);
  switch (t.dtype) {
    case DType::kBool:
    case DType::kU8: return load<std::uint8_t>(p);
    case DType::kI8: return load<std::int8_t>(p);
    case DType::kU16: return load<std::uint16_t>(p);
    case DType::kI16: return load<std::int16_t>(p);
    case DType::kU32: return load<std::uint32_t>(p);
    case DType::kI32: return load<std::int32_t>(p);
    case DType::kI64: return load<std::int64_t>(p);
    case DType::kU64: {
      const auto v = load<std::uint64_t>(p);
      HQQ_EXPECTS(v <= static_cast<std::uint64_t>(INT64_MAX), "key '{}' value {} is too large",
                  t.name, v);
      return static_cast<std::int64_t>(v);
    }
    case DType::kF32:
    case DType::kF64: {
      const double v = t.dtype == DType::kF32 ? load<float>(p) : load<double>(p);
      HQQ_EXPECTS(std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.0e15,
                  "key '{}' holds {} where an integer is expected", t.name, v);
      return static_cast<std::int64_t>(v);
    }
    default: break;
  }
  detail::throw_error("key '{}' has dtype {}, expected an integer", t.name, dtype_name(t.dtype));
}

bool read_bool(const SafetensorsFile& f, const TensorInfo& t) {
  const std::int64_t v = read_int_scalar(f, t);
  HQQ_EXPECTS(v == 0 || v == 1, "key '{}' holds {} where a boolean (0 or 1) is expected", t.name,
              v);
  return v == 1;
}

/// An ASCII string stored as a 1-D U8 (or I8) tensor.
std::string read_string(const SafetensorsFile& f, const TensorInfo& t) {
  HQQ_EXPECTS((t.dtype == DType::kU8 || t.dtype == DType::kI8) && t.shape.size() <= 1,
              "key '{}' should be a 1-D U8 string, has dtype {} shape {}", t.name,
              dtype_name(t.dtype), shape_text(t.shape));
  const auto* p = reinterpret_cast<const char*>(f.data(t));
  std::string s(p, p + t.nbytes());
  for (unsigned char c : s) {
    HQQ_EXPECTS(c >= 0x20 && c < 0x7f, "key '{}' is not a printable ASCII string", t.name);
  }
  return s;
}

std::vector<std::int64_t> read_shape(const SafetensorsFile& f, const TensorInfo& t) {
  HQQ_EXPECTS(t.shape.size() == 1 && t.shape[0] >= 1 && t.shape[0] <= 8,
              "key '{}' should be a 1-D list of 1 to 8 dims, has shape {}", t.name,
              shape_text(t.shape));
  HQQ_EXPECTS(t.dtype == DType::kI64 || t.dtype == DType::kI32,
              "key '{}' has dtype {}, expected I64 or I32", t.name, dtype_name(t.dtype));
  const std::uint8_t* p = f.data(t);
  std::vector<std::int64_t> dims(static_cast<std::size_t>(t.shape[0]));
  for (std::size_t i = 0; i < dims.size(); ++i) {
    dims[i] = t.dtype == DType::kI64 ? load<std::int64_t>(p + 8 * i) : load<std::int32_t>(p + 4 * i);
    HQQ_EXPECTS(dims[i] > 0, "key '{}' holds a non-positive dimension {}", t.name, dims[i]);
  }
  return dims;
}

std::vector<float> read_floats(const SafetensorsFile& f, const TensorInfo& t, std::int64_t n) {
  HQQ_EXPECTS(t.dtype == DType::kF16 || t.dtype == DType::kBF16 || t.dtype == DType::kF32,
              "key '{}' has dtype {}, expected F16, BF16 or F32", t.name, dtype_name(t.dtype));
  HQQ_EXPECTS(t.numel() == n, "key '{}' has shape {} ({} values), expected {} (one per group)",
              t.name, shape_text(t.shape), t.numel(), n);
  const std::uint8_t* p = f.data(t);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < v.size(); ++i) {
    switch (t.dtype) {
      case DType::kF16: v[i] = half_bits_to_float(load<std::uint16_t>(p + 2 * i)); break;
      case DType::kBF16: v[i] = bf16_bits_to_float(load<std::uint16_t>(p + 2 * i)); break;
      default: v[i] = load<float>(p + 4 * i); break;
    }
  }
  return v;
}

QuantizedTensor read_layer(const SafetensorsFile& f, const std::string& prefix) {
  auto required = [&](std::string_view key) -> const TensorInfo& {
    const std::string name = key_of(prefix, key);
    const TensorInfo* t = f.find(name);
    HQQ_EXPECTS(t != nullptr, "missing key '{}'", name);
    return *t;
  };
  auto optional = [&](std::string_view key) { return f.find(key_of(prefix, key)); };

  // Encodings this library cannot decode come first, so their message wins
  // over the shape errors they would otherwise cause.
  if (const TensorInfo* t = optional("view_as_float"); t && read_bool(f, *t)) {
    detail::throw_error("view_as_float checkpoints are not supported ('{}' = 1)", t->name);
  }
  for (std::string_view k : {"quant_scale", "quant_zero", "offload_meta"}) {
    if (const TensorInfo* t = optional(k); t && read_bool(f, *t)) {
      detail::throw_error("'{}' = 1 is not supported (meta-data quantization/offloading)",
                          t->name);
    }
  }

  QuantizedTensor q;
  const TensorInfo& nbits_t = required("nbits");
  const std::int64_t nbits = read_int_scalar(f, nbits_t);
  HQQ_EXPECTS(nbits == 8 || nbits == 4 || nbits == 3 || nbits == 2 || nbits == 1,
              "key '{}' = {} is not a supported bit width (8, 4, 3, 2 or 1)", nbits_t.name, nbits);
  q.nbits = static_cast<int>(nbits);

  const TensorInfo& gs_t = required("group_size");
  q.group_size = read_int_scalar(f, gs_t);
  HQQ_EXPECTS(q.group_size > 0, "key '{}' = {} must be positive", gs_t.name, q.group_size);

  const TensorInfo& axis_t = required("axis");
  const std::int64_t axis = read_int_scalar(f, axis_t);
  HQQ_EXPECTS(axis == 0 || axis == 1, "key '{}' = {} must be 0 or 1", axis_t.name, axis);
  q.axis = static_cast<int>(axis);

  const TensorInfo& shape_t = required("shape");
  q.shape = read_shape(f, shape_t);
  const std::int64_t numel = q.numel();
  HQQ_EXPECTS(numel % q.group_size == 0, "group_size {} does not divide the {} weights of shape {}",
              q.group_size, numel, shape_text(q.shape));

  if (const TensorInfo* t = optional("packing")) {
    const std::string packing = read_string(f, *t);
    HQQ_EXPECTS(packing == packing_name(q.nbits),
                "key '{}' = '{}' is not supported for {}-bit (expected '{}')", t->name, packing,
                q.nbits, packing_name(q.nbits));
  }
  if (const TensorInfo* t = optional("unpack_view_dtype")) {
    const std::string v = read_string(f, *t);
    HQQ_EXPECTS(v == view_dtype_name(q.nbits), "key '{}' = '{}' does not match {}-bit (expected '{}')",
                t->name, v, q.nbits, view_dtype_name(q.nbits));
  }

  const TensorInfo& wq = required("W_q");
  const GroupedView view = q.view();
  check_packable(q.nbits, view.rows());
  const std::vector<std::int64_t> want_shape = q.packed_shape();
  HQQ_EXPECTS(wq.dtype == packed_dtype(q.nbits) && wq.shape == want_shape,
              "key '{}' is {} {}, expected {} {} for shape {} at {} bits, group_size {}, axis {}",
              wq.name, dtype_name(wq.dtype), shape_text(wq.shape),
              dtype_name(packed_dtype(q.nbits)), shape_text(want_shape), shape_text(q.shape),
              q.nbits, q.group_size, q.axis);
  const std::uint8_t* wq_data = f.data(wq);
  q.packed.assign(wq_data, wq_data + wq.nbytes());

  const TensorInfo& scale_t = required("scale");
  const TensorInfo& zero_t = required("zero");
  q.scale = read_floats(f, scale_t, view.num_groups());
  q.zero = read_floats(f, zero_t, view.num_groups());
  // One storage dtype describes both: a mixed pair would silently lose zero bits on re-save.
  HQQ_EXPECTS(scale_t.dtype == zero_t.dtype, "key '{}' is {} but '{}' is {} (expected one dtype)",
              scale_t.name, dtype_name(scale_t.dtype), zero_t.name, dtype_name(zero_t.dtype));
  q.scale_dtype = scale_t.dtype;

  bool optimize = true;  // the reference's default
  if (const TensorInfo* t = optional("optimize")) optimize = read_bool(f, *t);
  // The file does not say which solver ran; kLegacy is what the reference uses.
  q.solver = optimize ? Solver::kLegacy : Solver::kNone;
  q.round_zero = q.nbits == 4;  // the reference's default when the key is absent
  if (const TensorInfo* t = optional("round_zero")) q.round_zero = read_bool(f, *t);

  q.validate();
  return q;
}

}  // namespace

void add_quantized_layer(SafetensorsWriter& writer, const std::string& prefix,
                         const QuantizedTensor& q) {
  q.validate();
  const DType sd = q.scale_dtype;
  HQQ_EXPECTS(sd == DType::kF16 || sd == DType::kBF16 || sd == DType::kF32,
              "layer '{}': scale dtype {} is not supported (expected F16, BF16 or F32)", prefix,
              dtype_name(sd));
  auto k = [&](std::string_view key) { return key_of(prefix, key); };
  auto add_bool = [&](std::string_view key, bool v) {
    writer.add(k(key), DType::kU8, {}, {static_cast<std::uint8_t>(v ? 1 : 0)});
  };
  auto add_i32 = [&](std::string_view key, std::int64_t v) {
    writer.add_values(k(key), DType::kI32, {}, std::vector<std::int32_t>{static_cast<std::int32_t>(v)});
  };
  auto add_string = [&](std::string_view key, std::string_view s) {
    writer.add(k(key), DType::kU8, {static_cast<std::int64_t>(s.size())}, ascii_bytes(s));
  };

  HQQ_EXPECTS(q.group_size <= INT32_MAX, "layer '{}': group_size {} does not fit the I32 key",
              prefix, q.group_size);
  // Same order as the reference's state_dict, so files diff cleanly against Python's.
  writer.add_view(k("W_q"), q.packed_dtype(), q.packed_shape(), q.packed.data(), q.packed.size());
  writer.add(k("scale"), sd, q.meta_shape(), encode_floats(q.scale, sd));
  writer.add(k("zero"), sd, q.meta_shape(), encode_floats(q.zero, sd));
  writer.add_values(k("shape"), DType::kI64, {static_cast<std::int64_t>(q.shape.size())}, q.shape);
  add_i32("nbits", q.nbits);
  add_i32("group_size", q.group_size);
  add_i32("axis", q.axis);
  add_string("packing", packing_name(q.nbits));
  add_string("unpack_view_dtype", view_dtype_name(q.nbits));
  add_string("compute_dtype", torch_dtype_name(sd));
  add_bool("view_as_float", false);
  add_bool("quant_scale", false);
  add_bool("quant_zero", false);
  add_bool("offload_meta", false);
  add_bool("encoded_state_dict", true);
  add_bool("stores_quant_config", true);
  add_bool("channel_wise", true);
  add_bool("optimize", q.solver != Solver::kNone);
  add_bool("round_zero", q.round_zero);
}

std::vector<std::string> quantized_layer_prefixes(const SafetensorsFile& file) {
  constexpr std::string_view kSuffix = ".W_q";
  std::vector<std::string> out;
  for (const TensorInfo& t : file.tensors()) {
    const std::string& n = t.name;
    if (n == "W_q") {
      out.emplace_back();  // a lone layer saved without a prefix
    } else if (n.size() > kSuffix.size() &&
               n.compare(n.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0) {
      out.push_back(n.substr(0, n.size() - kSuffix.size()));
    }
  }
  return out;
}

bool is_quantized_layer_key(const SafetensorsFile& file, const std::string& name) {
  // Keys hold no dot, so the last dot splits prefix and key.
  const auto dot = name.rfind('.');
  const std::string prefix = dot == std::string::npos ? std::string() : name.substr(0, dot);
  const std::string_view key =
      dot == std::string::npos ? std::string_view(name) : std::string_view(name).substr(dot + 1);
  const auto& keys = quantized_layer_keys();
  if (std::find(keys.begin(), keys.end(), key) == keys.end()) return false;
  return file.find(key_of(prefix, "W_q")) != nullptr;
}

QuantizedTensor read_quantized_layer(const SafetensorsFile& file, const std::string& prefix) {
  try {
    return read_layer(file, prefix);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: quantized layer '{}': {}", file.path(), prefix, e.what()));
  }
}

}  // namespace hqq::io
