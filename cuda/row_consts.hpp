#pragma once
// The constants with which the GEMM kernels turn code pairs into weights, one
// set per weight row and group, as 32-bit words of two activation-type
// numbers (cuda/dequant.hpp, RowConsts). Host and device code, so that
// the tests compare the two ways of forming them on the CPU.
//
// A code pair becomes magic + q (two numbers in one register, the code OR-ed
// into the magic's mantissa); (magic + q) - zb = q - zi is exact, zi the
// integer nearest the zero clamped to where both stay exact; one fused
// multiply-add with s2 (the scale) and m2 = -(z - zi) * s gives
// w = (q - z) * s, rounded once. The codes of rows g + 8 are mostly read in
// place, 2^S q above the magic (kInPlaceShift): (magic + 2^S q) / 2^S + zbs
// = q - zi with zbs = -(magic / 2^S + zi), one exact fused multiply-add.
//
// Two ways to form them:
//   row_consts_f32: from the scale and zero as f32 (any metadata type, any
//     activation type): zi = rint(z) clamped, m in f32, each constant
//     rounded once to the activation type.
//   row_consts_f16: f16 activations with f16 metadata, from the stored
//     (scale, zero) word in f16 arithmetic (about half the instructions of
//     the f32 way's conversions, rounding and packing): z clamped to
//     [-512, 512] plus 1536 rounds it to an integer (the spacing of f16 in
//     [1024, 2048) is 1, ties to even like rint), zb - 1536 is zi exactly,
//     z - zi is exact for every finite z, and m = (z - zi) * -s is rounded
//     once, as the f32 product of two f16 is exact. The words are those of
//     row_consts_f32 for every scale and zero, except that a zero of -0 may
//     give m2 the other zero's sign (the same weights but for the sign of a
//     zero weight) and a NaN zero another NaN; tests/test_gemm_cuda.cpp
//     checks every f16 zero.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "hqq/detail/host_device.hpp"

namespace hqq::cuda::detail {

/// The activation type's magic and the range of zi (magic + zi and q - zi
/// exact, q < 2^8).
template <typename T>
struct Magic;

template <>
struct Magic<__half> {
  static constexpr std::uint32_t kMagic = 0x66006600u;  // 1536 + q for q < 512 (mantissa bit 9 is the magic's)
  static constexpr float kMagicF = 1536.0f;
  // 1536 + zi in [1024, 2048] (spacing 1 below 2048); z - zi exact for every
  // finite f16 z (512 is a multiple of the spacing of f16 up to 2^19).
  static constexpr float kZiLo = -512.0f, kZiHi = 512.0f;
  static constexpr std::uint32_t kMinusOne = 0xBC00BC00u;
};

template <>
struct Magic<__nv_bfloat16> {
  static constexpr std::uint32_t kMagic = 0x43004300u;  // 128 + q for q < 128
  static constexpr float kMagicF = 128.0f;
  static constexpr float kZiLo = -128.0f, kZiHi = 127.0f;
  static constexpr std::uint32_t kMinusOne = 0xBF80BF80u;
};

/// bf16 at 8 bits forms q - zi in f32 (2^23 + q minus 2^23 + zi), then packs.
template <int NB, typename T>
constexpr bool kF32Route = NB == 8 && std::is_same_v<T, __nv_bfloat16>;

/// The bit S at which the codes of rows g + 8 (the odd pairs of a fragment)
/// are read in place, or 0 where they are shifted down like those of rows g.
/// The GEMM layout puts a row g + 8 code S bits above a row g code (4/2/1-bit:
/// the next field of the word; 3-bit: gemm3_slot), so that one shift brings
/// both where the magic takes them: masked and OR-ed into the magic, the
/// row g + 8 code gives magic + 2^S q, exact while 2^S q stays below the
/// magic's free mantissa bits (f16: 2^S q < 512; bf16: 2^S q < 128), and
/// (magic + 2^S q) / 2^S - (magic / 2^S + zi) = q - zi is one exact fused
/// multiply-add, as magic + q - (magic + zi) is for rows g. That saves the
/// shifts of half the pairs. bf16 at 4 bits (16 q up to 240) cannot; 8 bits
/// need none (one byte permute per pair).
template <int NB, typename T>
constexpr int kInPlaceShift = NB == 4 ? (std::is_same_v<T, __half> ? 4 : 0) : NB == 8 ? 0 : NB;

/// One row's constants for one group (the words RowConsts holds): the
/// subtrahends of codes read at bit 0 (zb) and in place at bit S (zbs).
struct RowConstWords {
  std::uint32_t zb = 0, zbs = 0, s2 = 0, m2 = 0;
};

/// The bits of two 16-bit numbers (low, high) as one word.
template <typename P>
HQQ_HOST_DEVICE std::uint32_t pair_bits_of(const P& p) {
  static_assert(sizeof(P) == 4, "a pair of 16-bit numbers");
  std::uint32_t u;
  std::memcpy(&u, &p, 4);
  return u;
}

/// (lo, hi) rounded to nearest-even in T, as one word.
template <typename T>
HQQ_HOST_DEVICE std::uint32_t pack_pair(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    return pair_bits_of(__floats2half2_rn(lo, hi));
  } else {
    return pair_bits_of(__floats2bfloat162_rn(lo, hi));
  }
}

/// The constants from the scale and zero in f32.
template <int NB, typename T>
HQQ_HOST_DEVICE RowConstWords row_consts_f32(float s, float z) {
  RowConstWords w;
  float zi = rintf(z);
  if constexpr (kF32Route<NB, T>) {
    zi = fminf(fmaxf(zi, 0.0f), 255.0f);  // |q - zi| <= 255: exact in bf16
    const float b = 8388608.0f + zi;
    std::memcpy(&w.zb, &b, 4);
  } else {
    zi = fminf(fmaxf(zi, Magic<T>::kZiLo), Magic<T>::kZiHi);
    const float b = Magic<T>::kMagicF + zi;
    w.zb = pack_pair<T>(b, b);
    if constexpr (kInPlaceShift<NB, T> > 0) {
      // Exact: an integer of magnitude at most 1280 (f16) or 191 (bf16); +0
      // at zi = -magic / 2^S, as the f16 way forms it.
      const float bs = -(Magic<T>::kMagicF / float(1 << kInPlaceShift<NB, T>)) - zi;
      w.zbs = pack_pair<T>(bs, bs);
    }
  }
  const float m = -((z - zi) * s);  // NaN z stays NaN here and reaches y
  w.s2 = pack_pair<T>(s, s);
  w.m2 = pack_pair<T>(m, m);
  return w;
}

/// The constants of f16 activations from an f16 (scale, zero) word (scale in
/// the low half), in f16 arithmetic (see the header).
template <int NB>
HQQ_HOST_DEVICE RowConstWords row_consts_f16(std::uint32_t scale_zero) {
  __half2 sz;
  std::memcpy(&sz, &scale_zero, 4);
  const __half2 s = __low2half2(sz), z = __high2half2(sz);
  const __half2 magic = __float2half2_rn(Magic<__half>::kMagicF);
  const __half2 zc = __hmin2(__hmax2(z, __float2half2_rn(Magic<__half>::kZiLo)),
                             __float2half2_rn(Magic<__half>::kZiHi));
  const __half2 zb = __hadd2_rn(zc, magic);  // magic + rint(zc)
  const __half2 zi = __hsub2_rn(zb, magic);  // exact
  RowConstWords w;
  w.zb = pair_bits_of(zb);
  if constexpr (constexpr int S = kInPlaceShift<NB, __half>; S > 0) {
    // -(magic / 2^S + zi) = (magic - magic / 2^S) - zb, exact (integers below 2048).
    constexpr float kM = Magic<__half>::kMagicF;
    w.zbs = pair_bits_of(__hsub2_rn(__float2half2_rn(kM - kM / float(1 << S)), zb));
  }
  w.s2 = pair_bits_of(s);
  w.m2 = pair_bits_of(__hmul2_rn(__hsub2_rn(z, zi), __hneg2(s)));  // _rn: never contracted to an fma
  return w;
}

/// A row's (scale, zero) pair as the kernels read it from a stage: one word
/// of two f16 (scale low) for f16 metadata, float2 for f32 metadata.
template <typename MetaT>
using MetaPair = std::conditional_t<std::is_same_v<MetaT, __half>, std::uint32_t, float2>;

/// The constants of a row and group from its stored pair: in f16 arithmetic
/// for f16 activations with f16 metadata, else in f32.
template <int NB, typename T, typename MetaT>
HQQ_HOST_DEVICE RowConstWords row_consts_of(const MetaPair<MetaT>& sz) {
  if constexpr (std::is_same_v<MetaT, float>) {
    return row_consts_f32<NB, T>(sz.x, sz.y);
  } else if constexpr (std::is_same_v<T, __half>) {
    return row_consts_f16<NB>(sz);  // f16 arithmetic on the stored pair
  } else {
    __half2 h;
    std::memcpy(&h, &sz, 4);
    const float2 f = __half22float2(h);
    return row_consts_f32<NB, T>(f.x, f.y);
  }
}

}  // namespace hqq::cuda::detail
