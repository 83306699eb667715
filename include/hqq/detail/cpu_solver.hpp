#pragma once
/// \file detail/cpu_solver.hpp
/// The CPU solver core: a tile of T groups is gathered into a [T, G] buffer
/// (lane t = group g0 + t, one column per element index), so every per-group
/// reduction is a lane-wise add and the per-element math of solver.hpp runs
/// on Eigen arrays of T floats. Works for both grouping axes: only the gather
/// and scatter know the layout. Single-threaded; the backend spreads tiles
/// over threads.

#include <algorithm>
#include <cstdint>
#include <limits>

#include <Eigen/Core>

#include "hqq/config.hpp"
#include "hqq/detail/sum_order.hpp"
#include "hqq/dtype.hpp"
#include "hqq/grouping.hpp"
#include "hqq/solver.hpp"

namespace hqq::detail {

/// Policy for solver.hpp over T lanes (one group per lane).
template <int T>
struct LaneOps {
  using V = Eigen::Array<float, T, 1>;
  static V rint(const V& x) { return x.rint(); }
  static V clamp(const V& x, float lo, float hi) { return x.max(lo).min(hi); }
  static V abs(const V& x) { return x.abs(); }
  static V max0(const V& x) { return x.max(0.0f); }
  /// x^e lane by lane with pow_portable (the CUDA kernels' bits; the loop vectorises).
  static V pow(const V& x, float e) {
    V r;
    for (int t = 0; t < T; ++t) r[t] = pow_portable(x[t], e);
    return r;
  }
  static V with_sign_of(const V& t, const V& x) { return (x < 0.0f).select(-t, t); }
};

/// A tile of up to T groups of G elements each, as f32.
template <int T>
class GroupTile {
 public:
  using V = Eigen::Array<float, T, 1>;
  using Ops = LaneOps<T>;

  explicit GroupTile(std::int64_t group_size)
      : buf_(T, group_size),
        order_(sum_order(group_size)),
        part_err_(T, order_.parts),
        part_z_(T, order_.parts) {}

  std::int64_t group_size() const { return buf_.cols(); }
  int lanes() const { return n_; }

  /// Loads groups [g0, g0 + n) (n <= T); unused lanes repeat the last group
  /// so that they compute harmless copies. Returns false if any value is
  /// NaN or Inf.
  template <class In>
  bool gather(const In* w, const GroupedView& v, std::int64_t g0, int n) {
    n_ = n;
    const std::int64_t G = v.group_size;
    if (v.axis == 1) {
      for (int t = 0; t < T; ++t) {
        const In* src = w + (g0 + (t < n ? t : n - 1)) * G;
        for (std::int64_t i = 0; i < G; ++i) buf_(t, i) = to_float(src[i]);
      }
    } else {
      const std::int64_t C = v.num_groups();
      for (std::int64_t i = 0; i < G; ++i) {
        const In* src = w + i * C + g0;
        for (int t = 0; t < n; ++t) buf_(t, i) = to_float(src[t]);
        for (int t = n; t < T; ++t) buf_(t, i) = buf_(n - 1, i);
      }
    }
    // w - w is 0 for finite w and NaN for NaN/Inf: one sum finds any.
    V probe = V::Zero();
    for (std::int64_t i = 0; i < G; ++i) probe += buf_.col(i) - buf_.col(i);
    return (probe == 0.0f).all();
  }

  /// Per-lane min and max.
  void min_max(V& mn, V& mx) const {
    mn = buf_.col(0);
    mx = buf_.col(0);
    for (std::int64_t i = 1; i < group_size(); ++i) {
      mn = mn.min(buf_.col(i));
      mx = mx.max(buf_.col(i));
    }
  }

  /// Initial s and z per lane (init_scale_zero of solver.hpp).
  void init(float max_v, bool round_zero, V& s, V& z) const {
    V mn, mx;
    min_max(mn, mx);
    for (int t = 0; t < T; ++t) init_scale_zero(mn[t], mx[t], max_v, round_zero, s[t], z[t]);
  }

  /// One solver iteration: returns per-lane sum |w - w_r| and sets zsum to the
  /// per-lane sum whose mean is the next z, both added in the order of
  /// sum_order.hpp (the CUDA kernels' order).
  V step(const V& s, const V& z, float max_v, float inv_beta, float p_minus_1, V& zsum) const {
    const std::int64_t G = group_size();
    const int parts = order_.parts;
    for (int t = 0; t < parts; ++t) {
      V err = V::Zero(), zs = V::Zero();
      const std::int64_t first = order_.epl > 0 ? std::int64_t{t} * order_.epl : t;
      const std::int64_t end = order_.epl > 0 ? std::min<std::int64_t>(G, first + order_.epl) : G;
      const std::int64_t stride = order_.epl > 0 ? 1 : parts;
      for (std::int64_t i = first; i < end; i += stride) {
        const V w = buf_.col(i);
        V zt;
        err += solver_step<Ops>(w, s, z, max_v, inv_beta, p_minus_1, zt);
        zs += zt;
      }
      part_err_.col(t) = err;
      part_z_.col(t) = zs;
    }
    for (int off = parts / 2; off > 0; off /= 2) {
      for (int l = 0; l < off; ++l) {
        part_err_.col(l) += part_err_.col(l + off);
        part_z_.col(l) += part_z_.col(l + off);
      }
    }
    zsum = part_z_.col(0);
    return part_err_.col(0);
  }

  /// Writes the codes of the valid lanes to their flat positions.
  void store_codes(const V& s, const V& z, float max_v, const GroupedView& v, std::int64_t g0,
                   std::uint8_t* codes) const {
    const std::int64_t G = v.group_size;
    if (v.axis == 1) {
      for (std::int64_t i = 0; i < G; ++i) {
        const V q = quantize_value<Ops>(V(buf_.col(i)), s, z, max_v);
        for (int t = 0; t < n_; ++t) codes[(g0 + t) * G + i] = static_cast<std::uint8_t>(q[t]);
      }
    } else {
      const std::int64_t C = v.num_groups();
      for (std::int64_t i = 0; i < G; ++i) {
        const V q = quantize_value<Ops>(V(buf_.col(i)), s, z, max_v);
        std::uint8_t* dst = codes + i * C + g0;
        for (int t = 0; t < n_; ++t) dst[t] = static_cast<std::uint8_t>(q[t]);
      }
    }
  }

  /// Proximal solver on this tile (DESIGN §1): beta grows by kappa and every
  /// lane keeps the z with its lowest error over the iterations it ran. A lane
  /// stops (its best z is final) after `patience` iterations without
  /// improvement (0: never), whatever the other lanes of the tile do.
  void solve_proximal(const V& s, V& z, float max_v, const SolverParams& p) const {
    using Mask = Eigen::Array<bool, T, 1>;
    const float pm1 = static_cast<float>(static_cast<double>(p.lp_norm) - 1.0);
    const float g = static_cast<float>(group_size());
    double beta = p.beta;
    V best_err = V::Constant(std::numeric_limits<float>::infinity());
    V best_z = z;
    Eigen::Array<int, T, 1> stale = Eigen::Array<int, T, 1>::Zero();
    Mask active = Mask::Constant(true);
    for (int it = 0; it <= p.iters; ++it) {
      V zsum;
      const float inv_beta = static_cast<float>(1.0 / beta);
      const V err = step(s, z, max_v, inv_beta, pm1, zsum);  // the last zsum goes unused
      const Mask improved = active && (err < best_err);
      best_err = improved.select(err, best_err);
      best_z = improved.select(z, best_z);
      stale = improved.select(0, stale + 1);
      if (p.patience > 0) active = active && (stale < p.patience);
      if (it == p.iters || !active.any()) break;
      z = zsum / g;  // torch.mean divides
      beta *= p.kappa;
    }
    z = best_z;
  }

 private:
  Eigen::Array<float, T, Eigen::Dynamic> buf_;  // column i = element i of every lane
  SumOrder order_;
  mutable Eigen::Array<float, T, Eigen::Dynamic> part_err_, part_z_;  // step()'s partial sums
  int n_ = 0;
};

}  // namespace hqq::detail
