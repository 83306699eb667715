#pragma once
// The GEMM kernels' in-register dequantization of a lane's code words into
// A-fragment registers (two activation-type numbers per register), as host
// and device code: on the GPU the f16x2/bf16x2 fused multiply-adds, the
// three-input logic op and the byte permute are single PTX instructions; on
// the host the same functions run on an exact model of them (one rounding
// to nearest-even of the exact a * b + c, IEEE zero signs), so that the tests
// run the kernels' own dequantization, bit for bit, on the CPU
// (tests/test_gemm_cuda.cpp).
//
// The math (see cuda/row_consts.hpp for the constants): a code pair at bits
// 0 and 16 of a register, OR-ed into the magic's mantissas, is magic + q in
// each half; (magic + q) - (magic + zi) = q - zi exactly; one fused
// multiply-add with the scale and m = -(z - zi) * s gives
// w = (q - z) * s rounded once. Per width, dequant_fragment gets a pair to
// bits 0 and 16 as cheaply as the layout (hqq/detail/gemm_layout.hpp) allows.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "hqq/detail/gemm_layout.hpp"
#include "hqq/detail/host_device.hpp"
#include "row_consts.hpp"

// Loops the device code wants unrolled (host compilers do not know the pragma).
#if defined(__CUDA_ARCH__)
#define HQQ_DEQUANT_UNROLL _Pragma("unroll")
#else
#define HQQ_DEQUANT_UNROLL
#endif

namespace hqq::cuda::detail {

// ------------------------------------------------------------------ host model
namespace exact {

/// The 16-bit formats: explicit mantissa bits and the smallest normal exponent.
template <typename T>
struct Format;
template <>
struct Format<__half> {
  static constexpr int kMant = 10, kEmin = -14;
};
template <>
struct Format<__nv_bfloat16> {
  static constexpr int kMant = 7, kEmin = -126;
};

/// The value of T's bits (exact in double).
template <typename T>
inline double value(std::uint16_t bits) {
  T h;
  std::memcpy(&h, &bits, 2);
  if constexpr (std::is_same_v<T, __half>) {
    return static_cast<double>(__half2float(h));
  } else {
    return static_cast<double>(__bfloat162float(h));
  }
}

/// The bits of f in T, for an f that T holds exactly, or an infinity, or a
/// NaN (any NaN); a finite f beyond T's largest rounds to the infinity.
template <typename T>
inline std::uint16_t bits_of(float f) {
  T h;
  if constexpr (std::is_same_v<T, __half>) {
    h = __float2half_rn(f);
  } else {
    h = __float2bfloat16_rn(f);
  }
  std::uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}

/// The spacing of T's numbers at magnitude |v| (the subnormal spacing below
/// the smallest normal; 0 counts as subnormal).
template <typename T>
inline double spacing(double v) {
  int e = v == 0.0 ? Format<T>::kEmin : std::ilogb(v);
  if (e < Format<T>::kEmin) e = Format<T>::kEmin;
  return std::ldexp(1.0, e - Format<T>::kMant);
}

/// v + tail rounded once to nearest-even in T, where v is the double nearest
/// v + tail (|tail| at most half an ulp of v in double; only its sign is
/// read). Every T number and every midpoint between two of them is a double,
/// so v lies on the same side of each midpoint as v + tail, or on it, where
/// tail decides.
template <typename T>
inline std::uint16_t round_nearest_even(double v, double tail) {
  if (!std::isfinite(v) || v == 0.0) return bits_of<T>(static_cast<float>(v));
  const double ulp = spacing<T>(v);
  const double q = v / ulp, whole = std::floor(q), frac = q - whole;  // exact: a power-of-two scaling
  const bool odd = std::fmod(whole, 2.0) != 0.0;
  const bool up = frac > 0.5 || (frac == 0.5 && (tail > 0.0 || (tail == 0.0 && odd)));
  // |result| past T's largest finite: bits_of rounds it to the infinity.
  return bits_of<T>(static_cast<float>((up ? whole + 1.0 : whole) * ulp));
}

/// p + c rounded once to nearest-even in T, for doubles p and c whose sum
/// is what matters exactly (two-sum recovers the double sum's error).
template <typename T>
inline std::uint16_t round_sum(double p, double c) {
  const double s = p + c;
  if (!std::isfinite(s)) return bits_of<T>(static_cast<float>(s));
  const double bv = s - p;
  return round_nearest_even<T>(s, (p - (s - bv)) + (c - bv));
}

/// a * b + c rounded once to nearest-even in T (what fma.rn.f16/bf16 does):
/// the product of two 16-bit numbers is exact in double.
template <typename T>
inline std::uint16_t fma(std::uint16_t a, std::uint16_t b, std::uint16_t c) {
  return round_sum<T>(value<T>(a) * value<T>(b), value<T>(c));
}

}  // namespace exact

// ------------------------------------------------------------------ operations

/// a * b + c on two T in each register, rounded once (fma.rn.f16x2 / .bf16x2).
template <typename T>
HQQ_HOST_DEVICE std::uint32_t fma2(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
#if defined(__CUDA_ARCH__)
  std::uint32_t d;
  if constexpr (std::is_same_v<T, __half>) {
    asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  } else {
    asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  }
  return d;
#else
  const auto half = [&](int sh) {
    return static_cast<std::uint32_t>(exact::fma<T>(static_cast<std::uint16_t>(a >> sh),
                                                   static_cast<std::uint16_t>(b >> sh),
                                                   static_cast<std::uint16_t>(c >> sh)));
  };
  return half(0) | half(16) << 16;
#endif
}

/// (a & b) | c in one instruction (the compiler emits two for the mask-and-magic of a code pair).
HQQ_HOST_DEVICE std::uint32_t and_or(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
#if defined(__CUDA_ARCH__)
  std::uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
#else
  return (a & b) | c;
#endif
}

/// Byte i of the result is byte (s >> 4i) & 7 of the eight bytes y:x (x's low first).
HQQ_HOST_DEVICE std::uint32_t byte_perm(std::uint32_t x, std::uint32_t y, std::uint32_t s) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(x, y, s);
#else
  const std::uint64_t xy = static_cast<std::uint64_t>(y) << 32 | x;
  std::uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<std::uint32_t>(xy >> (8 * ((s >> (4 * i)) & 7u)) & 0xFFu) << (8 * i);
  return r;
#endif
}

/// The f32 whose bits are u.
HQQ_HOST_DEVICE float float_of(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// ------------------------------------------------------------------ dequantization

/// Per weight row and group: the subtrahend (magic + zi, or 2^23 + zi as f32
/// bits; where kInPlaceShift S > 0 also zbs = -(magic / 2^S + zi) for the
/// codes read in place), the scale and m = -(z - zi) * s, as pairs of T
/// (cuda/row_consts.hpp).
template <int NB, typename T>
struct RowConsts {
  static constexpr int kS = kInPlaceShift<NB, T>;
  std::uint32_t zb, zbs, s2, m2;
  HQQ_HOST_DEVICE void take(const RowConstWords& w) {
    zb = w.zb;
    zbs = w.zbs;
    s2 = w.s2;
    m2 = w.m2;
  }
  /// w = (q - z) * s for the codes in bytes b and b + 1 of `word`, through
  /// f32 (kF32Route): each byte permuted under the bits of 2^23 (one
  /// instruction), minus 2^23 + zi (exact), the two packed to T.
  HQQ_HOST_DEVICE std::uint32_t from_bytes_f32(std::uint32_t word, unsigned b) const {
    static_assert(kF32Route<NB, T>, "the f32 route is bf16 at 8 bits");
    // Result bytes: code byte b, 0, 0, 0x4B (bytes 4..7 are those of 0x4B000000).
    const float lo = float_of(byte_perm(word, 0x4B000000u, 0x7440u | b)) - float_of(zb);
    const float hi = float_of(byte_perm(word, 0x4B000000u, 0x7440u | (b + 1))) - float_of(zb);
    return fma2<T>(pack_pair<T>(lo, hi), s2, m2);
  }
  /// w = (q - z) * s from magic + q (two T in one register).
  HQQ_HOST_DEVICE std::uint32_t from_magic(std::uint32_t h) const {
    const std::uint32_t q = fma2<T>(zb, Magic<T>::kMinusOne, h);  // (magic + q) - (magic + zi)
    return fma2<T>(q, s2, m2);
  }
  /// w = (q - z) * s from magic + 2^S q (a code read in place at bit S).
  HQQ_HOST_DEVICE std::uint32_t from_magic_s(std::uint32_t h) const {
    static_assert(kS > 0, "no code is read in place at this width and type");
    // 2^-S in both halves: f16 exponent 15 - S (10-bit mantissa), bf16 127 - S (7-bit).
    constexpr std::uint32_t kInv = std::is_same_v<T, __half> ? (15u - kS) << 10 : (127u - kS) << 7;
    const std::uint32_t q = fma2<T>(h, kInv | kInv << 16, zbs);  // h / 2^S - (magic / 2^S + zi)
    return fma2<T>(q, s2, m2);
  }
};

/// A fragment of k step j (0..3): its four registers, dequantized from a
/// lane's words with the constants of its rows g (rc[0]) and g + 8 (rc[1]).
/// Register r holds pair P = 4j + r, of row g for even r.
template <int NB, typename T>
HQQ_HOST_DEVICE void dequant_fragment(std::uint32_t (&a)[4], const RowConsts<NB, T> (&rc)[2],
                                      const std::uint32_t (&wq)[NB], int j) {
  constexpr std::uint32_t kMagic = Magic<T>::kMagic;
  constexpr int S = kInPlaceShift<NB, T>;
  constexpr std::uint32_t kMask = (1u << NB) - 1, kMask2 = kMask | kMask << 16;
  if constexpr (NB == 8 && !kF32Route<NB, T>) {
    // Pair P: bytes 2 (P & 1) and 2 (P & 1) + 1 of word P / 2 under the magic's high bytes (one permute).
HQQ_DEQUANT_UNROLL
    for (int r = 0; r < 4; ++r) {
      const int P = 4 * j + r;
      a[r] = rc[r & 1].from_magic(byte_perm(wq[P >> 1], kMagic, (P & 1) ? 0x7352u : 0x7150u));
    }
  } else if constexpr (NB == 3) {
    // gemm3_slot: field f of its word shifted by 3f - S_r (S_r = 0 for rows
    // g, 3 for rows g + 8: read in place); pair 15 (rows g + 8) gathered
    // from bit 15 of word i to bit S + i.
    static_assert(S == 3, "3-bit rows g + 8 are read at bit 3");
HQQ_DEQUANT_UNROLL
    for (int r = 0; r < 4; ++r) {
      const int P = 4 * j + r, sr = (r & 1) ? S : 0;
      const ::hqq::detail::Gemm3Slot slot = ::hqq::detail::gemm3_slot(P);
      std::uint32_t h;
      if (slot.field < 5) {
        const int sh = 3 * slot.field - sr;
        const std::uint32_t x = sh >= 0 ? wq[slot.word] >> sh : wq[slot.word] << -sh;
        h = and_or(x, kMask2 << sr, kMagic);
      } else {
        h = kMagic;
        for (int i = 0; i < 3; ++i) h = and_or(wq[i] >> (15 - S - i), 0x00010001u << (S + i), h);
      }
      a[r] = (r & 1) ? rc[1].from_magic_s(h) : rc[0].from_magic(h);
    }
  } else if constexpr (NB == 4 || NB == 2 || NB == 1) {
    // Pair P at bit NB (P % per) of word P / per; with S > 0 an odd pair is
    // read in place, NB bits above the even pair before it (one shift for both).
    static_assert(S == 0 || S == NB, "odd pairs sit NB bits above even ones");
HQQ_DEQUANT_UNROLL
    for (int r = 0; r < 4; ++r) {
      const int P = 4 * j + r, per = 16 / NB;  // pairs per word
      if constexpr (S > 0) {
        const std::uint32_t x = wq[P / per] >> (NB * ((P % per) & ~1));
        a[r] = (r & 1) ? rc[1].from_magic_s(and_or(x, kMask2 << S, kMagic))
                       : rc[0].from_magic(and_or(x, kMask2, kMagic));
      } else {
        a[r] = rc[r & 1].from_magic(and_or(wq[P / per] >> (NB * (P % per)), kMask2, kMagic));
      }
    }
  } else {
    // bf16 at 8 bits: pair P in bytes 2 (P & 1) and 2 (P & 1) + 1 of word P / 2, through f32.
HQQ_DEQUANT_UNROLL
    for (int r = 0; r < 4; ++r) {
      const int P = 4 * j + r;
      a[r] = rc[r & 1].from_bytes_f32(wq[P >> 1], 2u * (P & 1));
    }
  }
}

}  // namespace hqq::cuda::detail
