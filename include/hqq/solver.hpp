#pragma once
/// \file solver.hpp
/// The per-element HQQ math of DESIGN §1, written once. Every function is a
/// template over an "ops" policy and a value type, so the same lines run on a
/// float (ScalarOps: host and CUDA device) and on a SIMD array of groups (the
/// CPU solver's Eigen policy in detail/cpu_solver.hpp).

#include <cmath>
#include <cstdint>

#include "hqq/detail/host_device.hpp"
#include "hqq/dtype.hpp"

namespace hqq {

/// Largest code of an nbits quantizer (2^nbits - 1).
HQQ_HOST_DEVICE float max_code(int nbits) { return static_cast<float>((1 << nbits) - 1); }

namespace detail {

/// x^e for finite x >= 0 and e < 0 (0^e = +inf, as torch.pow), within a few
/// float ulp for the arguments the solver sees. Built only from +, -, *, /,
/// rint, min/max and exact bit operations, each correctly rounded in IEEE
/// float, so with contraction off (-ffp-contract=off, nvcc -fmad=false) it
/// gives the same bits on every CPU lane and every GPU thread: the solver's
/// keep/stop decisions then agree exactly between backends.
HQQ_HOST_DEVICE float pow_portable(float x, float e) {
  // log2 x = k + log2 m with m in [sqrt(1/2), sqrt(2)); subnormals scaled by 2^24.
  // (Every operation runs unconditionally and only constants are selected,
  // so the CPU's lane loop if-converts and vectorises.)
  const bool sub = x < 1.17549435e-38f;
  const float xs = x * (sub ? 16777216.0f : 1.0f);
  const std::uint32_t b = float_bits(xs);
  int k = static_cast<int>((b >> 23) & 0xffu) - (sub ? 127 + 24 : 127);
  float m = bits_float((b & 0x007fffffu) | 0x3f800000u);
  const bool high = m > 1.41421356f;
  m = m * (high ? 0.5f : 1.0f);
  k = k + (high ? 1 : 0);
  // ln m = 2 atanh(t) = 2 (t + t^3/3 + ... + t^9/9), t = (m - 1) / (m + 1), |t| < 0.172.
  const float t = (m - 1.0f) / (m + 1.0f);
  const float t2 = t * t;
  float p = 1.0f / 9.0f;
  p = p * t2 + 1.0f / 7.0f;
  p = p * t2 + 0.2f;
  p = p * t2 + 1.0f / 3.0f;
  p = p * t2 + 1.0f;
  const float log2x = static_cast<float>(k) + (t * p) * 2.88539008f;  // 2 / ln 2
  // 2^y = 2^n * e^(f ln 2), n = rint(y), |f| <= 1/2; clamped: 2^-150 rounds to 0, 2^128 is inf.
  float y = e * log2x;
  y = y < -150.0f ? -150.0f : y;  // selects, not fminf: the CPU loop vectorises
  y = y > 128.0f ? 128.0f : y;
  const float n = rintf(y);
  const float u = (y - n) * 0.693147181f;
  float q = 1.0f / 5040.0f;
  q = q * u + 1.0f / 720.0f;
  q = q * u + 1.0f / 120.0f;
  q = q * u + 1.0f / 24.0f;
  q = q * u + 1.0f / 6.0f;
  q = q * u + 0.5f;
  q = q * u + 1.0f;
  q = q * u + 1.0f;
  const int ni = static_cast<int>(n);
  const int n1 = ni / 2, n2 = ni - n1;  // each in [-75, 64]: normal powers of two
  const float r = (q * bits_float(static_cast<std::uint32_t>(n1 + 127) << 23)) *
                  bits_float(static_cast<std::uint32_t>(n2 + 127) << 23);
  return x == 0.0f ? INFINITY : r;
}

/// Scalar policy: one float per call (host and device).
struct ScalarOps {
  using V = float;
  HQQ_HOST_DEVICE static float rint(float x) { return ::rintf(x); }  // half to even
  HQQ_HOST_DEVICE static float clamp(float x, float lo, float hi) { return fminf(fmaxf(x, lo), hi); }
  HQQ_HOST_DEVICE static float abs(float x) { return ::fabsf(x); }
  HQQ_HOST_DEVICE static float max0(float x) { return fmaxf(x, 0.0f); }
  /// x^e for x >= 0, e < 0 (pow_portable: the same bits on every backend).
  HQQ_HOST_DEVICE static float pow(float x, float e) { return pow_portable(x, e); }
  /// t with the sign of x (t >= 0); x == 0 gives +t.
  HQQ_HOST_DEVICE static float with_sign_of(float t, float x) { return x < 0.0f ? -t : t; }
};

}  // namespace detail

/// Initial inverse scale s and zero z of one group from its min and max:
/// s = max_v / (max - min) (1 where |max - min| <= 1e-4), at most 2e4,
/// computed as (1 / (max - min)) * max_v: the reference's `int / tensor` is a
/// reciprocal then a multiply, and its rounding is what codes depend on;
/// z = -min * s, rounded half-to-even when round_zero.
HQQ_HOST_DEVICE void init_scale_zero(float mn, float mx, float max_v, bool round_zero, float& s,
                                     float& z) {
  const float denom = mx - mn;
  s = (fabsf(denom) <= 1e-4f) ? 1.0f : (1.0f / denom) * max_v;
  s = fminf(s, 2e4f);
  z = -mn * s;
  if (round_zero) z = rintf(z);
}

/// Code of one weight: clamp(round(w * s + z), 0, max_v). The multiply and
/// add are separate roundings, as in the reference.
template <class Ops, class V>
HQQ_HOST_DEVICE V quantize_value(const V& w, const V& s, const V& z, float max_v) {
  const V ws = w * s;
  return Ops::clamp(Ops::rint(ws + z), 0.0f, max_v);
}

/// Solver-side reconstruction (q - z) / s (a division, as the reference).
template <class Ops, class V>
HQQ_HOST_DEVICE V reconstruct_value(const V& q, const V& s, const V& z) {
  return (q - z) / s;
}

/// Stored-form dequantization (q - zero) * scale with scale = 1/s.
HQQ_HOST_DEVICE float dequantize_value(float q, float scale, float zero) { return (q - zero) * scale; }

/// Generalised soft threshold of the lp-norm prox:
/// sign(x) * max(|x| - inv_beta * |x|^(p-1), 0); x = 0 gives 0; p = 1 is the
/// plain soft threshold.
template <class Ops, class V>
HQQ_HOST_DEVICE V shrink_lp(const V& x, float inv_beta, float p_minus_1) {
  const V ax = Ops::abs(x);
  V t;
  if (p_minus_1 == 0.0f) {
    t = ax - inv_beta;
  } else {
    const V pw = Ops::pow(ax, p_minus_1);
    const V scaled = pw * inv_beta;
    t = ax - scaled;
  }
  return Ops::with_sign_of(Ops::max0(t), x);
}

/// One solver step on one weight with the current z: returns |w - w_r| (the
/// error term) and sets zt to q - (w - shrink(w - w_r)) * s, whose group mean
/// is the next z.
template <class Ops, class V>
HQQ_HOST_DEVICE V solver_step(const V& w, const V& s, const V& z, float max_v, float inv_beta,
                              float p_minus_1, V& zt) {
  const V q = quantize_value<Ops>(w, s, z, max_v);
  const V wr = reconstruct_value<Ops>(q, s, z);
  const V d = w - wr;
  const V we = shrink_lp<Ops>(d, inv_beta, p_minus_1);
  const V wd = w - we;
  const V wds = wd * s;
  zt = q - wds;
  return Ops::abs(d);
}

}  // namespace hqq
