#pragma once
/// \file solver.hpp
/// The per-element HQQ math of DESIGN §1, written once. Every function is a
/// template over an "ops" policy and a value type, so the same lines run on a
/// float (ScalarOps: host and CUDA device) and on a SIMD array of groups (the
/// CPU solver's Eigen policy in detail/cpu_solver.hpp).

#include <cmath>
#include <cstdint>

#include "hqq/detail/host_device.hpp"

namespace hqq {

/// Largest code of an nbits quantizer (2^nbits - 1).
HQQ_HOST_DEVICE float max_code(int nbits) { return static_cast<float>((1 << nbits) - 1); }

namespace detail {

/// Scalar policy: one float per call (host and device).
struct ScalarOps {
  using V = float;
  HQQ_HOST_DEVICE static float rint(float x) { return ::rintf(x); }  // half to even
  HQQ_HOST_DEVICE static float clamp(float x, float lo, float hi) { return fminf(fmaxf(x, lo), hi); }
  HQQ_HOST_DEVICE static float abs(float x) { return ::fabsf(x); }
  HQQ_HOST_DEVICE static float max0(float x) { return fmaxf(x, 0.0f); }
  /// |x|^e for x >= 0 (0^e with e < 0 is +inf, as torch.pow).
  HQQ_HOST_DEVICE static float pow(float x, float e) { return ::powf(x, e); }
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
