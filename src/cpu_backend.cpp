// The CPU backend: the tile solver of detail/cpu_solver.hpp spread over
// OpenMP threads, plus packing and dequantization.

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu_backend.hpp"
#include "hqq/detail/cpu_solver.hpp"
#include "hqq/packing.hpp"

namespace hqq::detail {
namespace {

constexpr int kLanes = 64;  // groups per tile (measured best of 8..256 on AVX2)
using Tile = GroupTile<kLanes>;
using V = Tile::V;

/// Legacy iterations run this many at a time between tensor-wide checks.
constexpr int kLegacyBlock = 2;

template <class In>
[[noreturn]] void throw_non_finite(const In* w, std::int64_t numel) {
  for (std::int64_t i = 0; i < numel; ++i) {
    const float x = to_float(w[i]);
    if (!std::isfinite(x)) {
      throw_error("weight has a non-finite value ({}) at flat index {}", x, i);
    }
  }
  throw_error("weight has a non-finite value");
}

template <class In>
QuantizedTensor quantize_typed(const In* w, const std::vector<std::int64_t>& shape,
                               const QuantConfig& cfg) {
  QuantizedTensor q = QuantizedTensor::with_metadata(shape, cfg);

  const GroupedView v(shape_numel(shape), cfg.group_size, cfg.axis);
  check_packable(cfg.nbits, v.rows());
  const std::int64_t ngroups = v.num_groups();
  const std::int64_t ntiles = (ngroups + kLanes - 1) / kLanes;
  const float max_v = max_code(cfg.nbits);
  const bool round_zero = q.round_zero;

  std::vector<float> s(ngroups), z(ngroups);
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(v.numel));

  // Runs fn(tile, g0, n) on every tile of groups [g0, g0 + n), loaded, over
  // all threads. Returns false if some weight is NaN or Inf.
  auto for_each_tile = [&](auto&& fn) {
    std::atomic<bool> finite{true};
#pragma omp parallel
    {
      Tile tile(v.group_size);
#pragma omp for schedule(dynamic, 4)
      for (std::int64_t k = 0; k < ntiles; ++k) {
        const std::int64_t g0 = k * kLanes;
        const int n = static_cast<int>(std::min<std::int64_t>(kLanes, ngroups - g0));
        if (!tile.gather(w, v, g0, n)) {
          finite = false;
          continue;
        }
        fn(tile, k, g0, n);
      }
    }
    if (!finite) throw_non_finite(w, v.numel);
  };
  auto save = [](std::vector<float>& dst, const V& x, std::int64_t g0, int n) {
    for (int t = 0; t < n; ++t) dst[g0 + t] = x[t];
  };
  auto load = [](const std::vector<float>& src, std::int64_t g0, int n) {
    V x;
    for (int t = 0; t < kLanes; ++t) x[t] = src[g0 + std::min(t, n - 1)];
    return x;
  };

  if (cfg.solver != Solver::kLegacy) {
    // One pass: every tile is independent from load to codes.
    for_each_tile([&](const Tile& tile, std::int64_t, std::int64_t g0, int n) {
      V ts, tz;
      tile.init(max_v, round_zero, ts, tz);
      if (cfg.solver == Solver::kProximal) {
        tile.solve_proximal(ts, tz, max_v, cfg.params);
        // Codes for the scale and zero as stored, so that they agree with
        // what dequantize computes (the reference uses the unrounded ones).
        for (int t = 0; t < kLanes; ++t) {
          tz[t] = round_to(cfg.scale_dtype, tz[t]);
          ts[t] = 1.0f / round_to(cfg.scale_dtype, 1.0f / ts[t]);
        }
      }
      tile.store_codes(ts, tz, max_v, v, g0, codes.data());
      save(s, ts, g0, n);
      save(z, tz, g0, n);
    });
  } else {
    // Legacy: the stopping rule needs the tensor-wide mean error of every
    // iteration, so tiles run kLegacyBlock iterations at a time, keeping the
    // z of each, and the block's errors decide whether to go on.
    for_each_tile([&](const Tile& tile, std::int64_t, std::int64_t g0, int n) {
      V ts, tz;
      tile.init(max_v, round_zero, ts, tz);
      save(s, ts, g0, n);
      save(z, tz, g0, n);
    });

    const SolverParams& p = cfg.params;
    const float pm1 = static_cast<float>(static_cast<double>(p.lp_norm) - 1.0);
    const float inv_beta = static_cast<float>(1.0 / static_cast<double>(p.beta));
    const float g = static_cast<float>(v.group_size);
    // z_hist[j] holds z after j updates within the current block.
    std::vector<std::vector<float>> z_hist(kLegacyBlock + 1, std::vector<float>(ngroups));
    std::vector<double> tile_err(static_cast<std::size_t>(ntiles) * kLegacyBlock);
    float best = std::numeric_limits<float>::infinity();
    bool stopped = false;
    for (int it0 = 0; it0 < p.iters && !stopped; it0 += kLegacyBlock) {
      const int nb = std::min(kLegacyBlock, p.iters - it0);
      z_hist[0] = z;
      for_each_tile([&](const Tile& tile, std::int64_t k, std::int64_t g0, int n) {
        const V ts = load(s, g0, n);
        V tz = load(z, g0, n);
        for (int j = 0; j < nb; ++j) {
          V zsum;
          const V err = tile.step(ts, tz, max_v, inv_beta, pm1, zsum);
          double e = 0;
          for (int t = 0; t < n; ++t) e += err[t];
          tile_err[k * kLegacyBlock + j] = e;
          tz = zsum / g;  // torch.mean divides
          save(z_hist[j + 1], tz, g0, n);
        }
      });
      // Replay the reference loop: the error of iteration i is measured with
      // the z before its update; the first non-improvement stops, keeping the
      // z after that update.
      int last = nb;
      for (int j = 0; j < nb; ++j) {
        double total = 0;
        for (std::int64_t k = 0; k < ntiles; ++k) total += tile_err[k * kLegacyBlock + j];
        const float e = static_cast<float>(total / static_cast<double>(v.numel));
        if (e < best) {
          best = e;
        } else {
          last = j + 1;
          stopped = true;
          break;
        }
      }
      z = z_hist[last];
    }
    for_each_tile([&](const Tile& tile, std::int64_t, std::int64_t g0, int n) {
      tile.store_codes(load(s, g0, n), load(z, g0, n), max_v, v, g0, codes.data());
    });
  }

  q.scale.resize(ngroups);
  q.zero.resize(ngroups);
  for (std::int64_t i = 0; i < ngroups; ++i) {
    q.scale[i] = round_to(cfg.scale_dtype, 1.0f / s[i]);
    q.zero[i] = round_to(cfg.scale_dtype, z[i]);
  }
  q.packed.resize(static_cast<std::size_t>(packed_bytes(cfg.nbits, v.rows(), v.cols())));
  pack(cfg.nbits, codes.data(), v.rows(), v.cols(), q.packed.data());
  return q;
}

/// Stores n floats as Out (f32 as is; f16 with F16C where the build has it).
template <class Out>
void store_row(const float* src, std::int64_t n, Out* dst) {
  std::int64_t i = 0;
#ifdef __F16C__
  if constexpr (std::is_same<Out, half>::value) {
    // Round-to-nearest-even, the same bits as float_to_half_bits (tested).
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
    }
  }
#endif
  for (; i < n; ++i) dst[i] = Out(src[i]);
}

template <class Out>
void dequantize_typed(const QuantizedTensor& q, Out* out) {
  const GroupedView v = q.view();
  const std::int64_t R = v.rows();
  const std::int64_t C = v.cols();
  // Row by row of the grouped view [R, C], unpacked on the fly: a row is one
  // group (axis 1) or one element of every group (axis 0).
#pragma omp parallel
  {
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(C));
    std::vector<float> row(static_cast<std::size_t>(C));
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < R; ++r) {
      unpack_row(q.nbits, q.packed.data(), R, C, r, codes.data());
      if (v.axis == 1) {
        const float sc = q.scale[r], ze = q.zero[r];
        for (std::int64_t j = 0; j < C; ++j) row[j] = dequantize_value(codes[j], sc, ze);
      } else {
        for (std::int64_t j = 0; j < C; ++j) row[j] = dequantize_value(codes[j], q.scale[j], q.zero[j]);
      }
      store_row(row.data(), C, out + r * C);
    }
  }
}

class CpuBackend final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }

  Support supports(const QuantConfig&, DType input) const override {
    if (input == DType::kF32 || input == DType::kF16 || input == DType::kBF16) return {};
    return {false, fmt::format("input dtype {} is not F32, F16 or BF16", dtype_name(input))};
  }

  QuantizedTensor quantize(const TensorView& w, const QuantConfig& cfg) const override {
    switch (w.dtype) {
      case DType::kF32: return quantize_typed(static_cast<const float*>(w.data), w.shape, cfg);
      case DType::kF16: return quantize_typed(static_cast<const half*>(w.data), w.shape, cfg);
      case DType::kBF16: return quantize_typed(static_cast<const bfloat16*>(w.data), w.shape, cfg);
      default: throw_error("cannot quantize a {} tensor (expected F32, F16 or BF16)", dtype_name(w.dtype));
    }
  }

  std::unique_ptr<LinearKernel> make_linear(const LinearLayout& layout,
                                            const LinearOptions& options) const override {
    return make_cpu_linear(layout, options);
  }
  void dequantize(const QuantizedTensor& q, const MutableTensorView& out) const override {
    switch (out.dtype) {
      case DType::kF32: return dequantize_typed(q, static_cast<float*>(out.data));
      case DType::kF16: return dequantize_typed(q, static_cast<half*>(out.data));
      case DType::kBF16: return dequantize_typed(q, static_cast<bfloat16*>(out.data));
      default: throw_error("cannot dequantize into {} (expected F32, F16 or BF16)", dtype_name(out.dtype));
    }
  }
};

}  // namespace

std::shared_ptr<Backend> make_cpu_backend() { return std::make_shared<CpuBackend>(); }

}  // namespace hqq::detail
