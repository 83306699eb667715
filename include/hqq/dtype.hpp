#pragma once
/// \file dtype.hpp
/// Element types, IEEE half and bfloat16 storage types with exact
/// round-to-nearest-even conversions (host and device).

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "hqq/detail/host_device.hpp"
#include "hqq/error.hpp"

namespace hqq {

/// Element types known to the library (the safetensors dtype set).
enum class DType : std::uint8_t {
  kBool, kU8, kI8, kU16, kI16, kF16, kBF16, kU32, kI32, kF32, kU64, kI64, kF64,
  kF8E4M3, kF8E5M2,
};

/// Size of one element in bytes.
constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::kBool: case DType::kU8: case DType::kI8:
    case DType::kF8E4M3: case DType::kF8E5M2: return 1;
    case DType::kU16: case DType::kI16: case DType::kF16: case DType::kBF16: return 2;
    case DType::kU32: case DType::kI32: case DType::kF32: return 4;
    case DType::kU64: case DType::kI64: case DType::kF64: return 8;
  }
  return 0;
}

/// The safetensors spelling ("F32", "BF16", ...).
constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kBool: return "BOOL";
    case DType::kU8: return "U8";
    case DType::kI8: return "I8";
    case DType::kU16: return "U16";
    case DType::kI16: return "I16";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kU32: return "U32";
    case DType::kI32: return "I32";
    case DType::kF32: return "F32";
    case DType::kU64: return "U64";
    case DType::kI64: return "I64";
    case DType::kF64: return "F64";
    case DType::kF8E4M3: return "F8_E4M3";
    case DType::kF8E5M2: return "F8_E5M2";
  }
  return "?";
}

/// Parses a safetensors dtype name; returns false when unknown.
inline bool parse_dtype(std::string_view s, DType& out) {
  for (int i = 0; i <= static_cast<int>(DType::kF8E5M2); ++i) {
    auto t = static_cast<DType>(i);
    if (dtype_name(t) == s) { out = t; return true; }
  }
  return false;
}

/// True for F16, BF16, F32 and F64.
constexpr bool is_float(DType t) {
  return t == DType::kF16 || t == DType::kBF16 || t == DType::kF32 || t == DType::kF64;
}

/// Bit pattern of a float and back (host and device).
HQQ_HOST_DEVICE std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
HQQ_HOST_DEVICE float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// float -> IEEE binary16 bits, round to nearest even; NaN stays NaN.
HQQ_HOST_DEVICE std::uint16_t float_to_half_bits(float f) {
  const std::uint32_t x = float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // Inf or NaN
    return static_cast<std::uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
  }
  if (ax >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to Inf
  if (ax < 0x38800000u) {  // result is subnormal or zero: align to 2^-24 units
    if (ax < 0x33000000u) return static_cast<std::uint16_t>(sign);  // below half of 2^-24
    const std::uint32_t e = ax >> 23;
    const std::uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // 14..24+
    std::uint32_t r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<std::uint16_t>(sign | r);
  }
  std::uint32_t r = ax - 0x38000000u;  // rebias exponent 127 -> 15
  const std::uint32_t rem = r & 0x1fffu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return static_cast<std::uint16_t>(sign | r);
}

/// IEEE binary16 bits -> float (exact).
HQQ_HOST_DEVICE float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu;
  std::uint32_t m = h & 0x3ffu;
  if (e == 0x1fu) return bits_float(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    if (m == 0) return bits_float(sign);
    // subnormal: value = m * 2^-24
    float v = static_cast<float>(m) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

/// float -> bfloat16 bits, round to nearest even; NaN stays NaN.
HQQ_HOST_DEVICE std::uint16_t float_to_bf16_bits(float f) {
  std::uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>(x >> 16);
}

/// bfloat16 bits -> float (exact).
HQQ_HOST_DEVICE float bf16_bits_to_float(std::uint16_t b) {
  return bits_float(static_cast<std::uint32_t>(b) << 16);
}

/// IEEE binary16 storage type (a value, not an arithmetic type).
struct half {
  std::uint16_t bits = 0;
  half() = default;
  HQQ_HOST_DEVICE explicit half(float f) : bits(float_to_half_bits(f)) {}
  HQQ_HOST_DEVICE explicit operator float() const { return half_bits_to_float(bits); }
  HQQ_HOST_DEVICE static half from_bits(std::uint16_t b) { half h; h.bits = b; return h; }
};

/// bfloat16 storage type (a value, not an arithmetic type).
struct bfloat16 {
  std::uint16_t bits = 0;
  bfloat16() = default;
  HQQ_HOST_DEVICE explicit bfloat16(float f) : bits(float_to_bf16_bits(f)) {}
  HQQ_HOST_DEVICE explicit operator float() const { return bf16_bits_to_float(bits); }
  HQQ_HOST_DEVICE static bfloat16 from_bits(std::uint16_t b) { bfloat16 h; h.bits = b; return h; }
};

static_assert(sizeof(half) == 2 && sizeof(bfloat16) == 2, "16-bit storage types");

/// DType of a C++ element type.
template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::kF32; };
template <> struct dtype_of<half> { static constexpr DType value = DType::kF16; };
template <> struct dtype_of<bfloat16> { static constexpr DType value = DType::kBF16; };

/// Loads one element of a float type as f32.
HQQ_HOST_DEVICE float to_float(float v) { return v; }
HQQ_HOST_DEVICE float to_float(half v) { return half_bits_to_float(v.bits); }
HQQ_HOST_DEVICE float to_float(bfloat16 v) { return bf16_bits_to_float(v.bits); }

/// Rounds a float to the nearest value of a storage dtype (f16, bf16 or f32).
inline float round_to(DType t, float v) {
  switch (t) {
    case DType::kF16: return half_bits_to_float(float_to_half_bits(v));
    case DType::kBF16: return bf16_bits_to_float(float_to_bf16_bits(v));
    case DType::kF32: return v;
    default: detail::throw_error("round_to: {} is not a storage float type", dtype_name(t));
  }
}

/// Floats as the bytes of an F32/F16/BF16 tensor (rounded to nearest even).
inline std::vector<std::uint8_t> encode_floats(const std::vector<float>& v, DType t) {
  HQQ_EXPECTS(t == DType::kF32 || t == DType::kF16 || t == DType::kBF16, "encode_floats: {} is not F32, F16 or BF16",
              dtype_name(t));
  std::vector<std::uint8_t> out(v.size() * dtype_size(t));
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {
      const std::uint16_t b = t == DType::kF16 ? float_to_half_bits(v[i]) : float_to_bf16_bits(v[i]);
      std::memcpy(out.data() + 2 * i, &b, 2);
    }
  }
  return out;
}

/// The bytes of an F32/F16/BF16 tensor as floats (exact; may be unaligned).
inline std::vector<float> decode_floats(const std::uint8_t* bytes, std::size_t nbytes, DType t) {
  HQQ_EXPECTS(t == DType::kF32 || t == DType::kF16 || t == DType::kBF16, "decode_floats: {} is not F32, F16 or BF16",
              dtype_name(t));
  const std::size_t n = nbytes / dtype_size(t);
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (t == DType::kF32) {
      std::memcpy(&out[i], bytes + 4 * i, 4);
    } else {
      std::uint16_t b;
      std::memcpy(&b, bytes + 2 * i, 2);
      out[i] = t == DType::kF16 ? half_bits_to_float(b) : bf16_bits_to_float(b);
    }
  }
  return out;
}

}  // namespace hqq
