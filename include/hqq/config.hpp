#pragma once
/// \file config.hpp
/// QuantConfig and SolverParams with the reference package's defaults.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "hqq/dtype.hpp"
#include "hqq/error.hpp"

namespace hqq {

/// How the zero-point is optimised.
enum class Solver : std::uint8_t {
  kProximal,  ///< per-group best z, beta grows by kappa (default)
  kLegacy,    ///< bit-compatible with the reference's default solver
  kNone,      ///< no optimisation: round-to-nearest with the min/max init
};

/// "proximal", "legacy" or "none".
constexpr std::string_view solver_name(Solver s) {
  switch (s) {
    case Solver::kProximal: return "proximal";
    case Solver::kLegacy: return "legacy";
    case Solver::kNone: return "none";
  }
  return "?";
}

/// Parses a solver name; throws hqq::Error naming the value when unknown.
inline Solver parse_solver(std::string_view s) {
  if (s == "proximal") return Solver::kProximal;
  if (s == "legacy") return Solver::kLegacy;
  if (s == "none" || s == "rtn") return Solver::kNone;
  detail::throw_error("unknown solver '{}' (expected proximal, legacy or none)", s);
}

/// Parameters of the half-quadratic solver (DESIGN §1).
struct SolverParams {
  float lp_norm = 0.7f;  ///< p of the lp-norm shrink, in (0, 1]
  float beta = 10.0f;    ///< initial penalty
  float kappa = 1.01f;   ///< beta growth per iteration (proximal only)
  int iters = 20;        ///< maximum iterations
  /// Proximal only: a group stops after this many iterations without a lower
  /// error (0: runs all iters). Its best z is kept either way.
  int patience = 0;
};

/// What to quantize to and how. Defaults follow the reference's
/// BaseQuantizeConfig: 4-bit, groups of 64 along axis 1, optimised.
struct QuantConfig {
  int nbits = 4;                     ///< 8, 4, 3, 2 or 1
  std::int64_t group_size = 64;      ///< elements per group; must divide numel
  int axis = 1;                      ///< 1: groups along rows; 0: along columns
  Solver solver = Solver::kProximal; ///< kNone = round-to-nearest
  /// Round the initial zero-point; unset = the reference's rule (4-bit only).
  std::optional<bool> round_zero;
  SolverParams params;               ///< solver parameters
  DType scale_dtype = DType::kF16;   ///< storage type of scale and zero: f16, bf16 or f32

  /// The round_zero actually used (resolves the default).
  bool effective_round_zero() const { return round_zero.value_or(nbits == 4); }
  /// True when the solver runs (solver != kNone).
  bool optimize() const { return solver != Solver::kNone; }

  /// Throws hqq::Error naming the first invalid value.
  void validate() const {
    HQQ_EXPECTS(nbits == 8 || nbits == 4 || nbits == 3 || nbits == 2 || nbits == 1,
                "nbits={} is not supported (expected 8, 4, 3, 2 or 1)", nbits);
    HQQ_EXPECTS(group_size > 0, "group_size={} must be positive", group_size);
    HQQ_EXPECTS(axis == 0 || axis == 1, "axis={} must be 0 or 1", axis);
    HQQ_EXPECTS(scale_dtype == DType::kF16 || scale_dtype == DType::kBF16 ||
                    scale_dtype == DType::kF32,
                "scale_dtype={} is not supported (expected F16, BF16 or F32)",
                dtype_name(scale_dtype));
    HQQ_EXPECTS(params.lp_norm > 0.0f && params.lp_norm <= 1.0f,
                "lp_norm={} must be in (0, 1]", params.lp_norm);
    HQQ_EXPECTS(params.beta > 0.0f, "beta={} must be positive", params.beta);
    HQQ_EXPECTS(params.kappa >= 1.0f, "kappa={} must be >= 1", params.kappa);
    HQQ_EXPECTS(params.patience >= 0, "patience={} must be >= 0", params.patience);
    HQQ_EXPECTS(params.iters >= 1 && params.iters <= 10000,
                "iters={} must be in [1, 10000]", params.iters);
  }
};

}  // namespace hqq
