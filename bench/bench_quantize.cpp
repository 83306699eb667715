/// \file bench_quantize.cpp
/// Google Benchmark suite for the CPU path: quantize (every nbits x axis x
/// shape, plus the legacy solver and round-to-nearest for 4-bit), pack /
/// unpack of the interchange layout, and dequantize into f32 and f16.
///
/// Counters: `weights/s` (weights handled per second of wall time) on every
/// benchmark; bytes read + written per second for the memory-bound ones
/// (pack, unpack, dequantize), as `rw_bytes` (printed 1000-based: G/s = GB/s)
/// and `bytes_per_second` (SetBytesProcessed, printed 1024-based). Quantize runs an iterative solver over the data, so
/// its bytes/s says little; it reports weights/s only.
///
/// Inputs are heavy-tailed (Student-t, 4 dof, std 0.02, a few 10x outlier
/// columns), generated once per shape with a fixed seed; never zeros.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "hqq/hqq.hpp"

namespace {

constexpr std::uint64_t kSeed = 20240607;
constexpr std::int64_t kGroup = 64;
constexpr int kAllBits[] = {8, 4, 3, 2, 1};

using Shape = std::pair<std::int64_t, std::int64_t>;

/// Row-major [rows, cols] weight like a linear layer's: Student-t(4) scaled
/// to std 0.02, with every 512th input column (plus column 1) scaled 10x as
/// the outlier channels seen in LLM weights. Rows are seeded independently,
/// so the values do not depend on the thread count.
std::vector<float> make_weight(std::int64_t rows, std::int64_t cols) {
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  // t(4) has variance 4 / (4 - 2) = 2; scale it to std 0.02.
  const float scale = 0.02f / std::sqrt(2.0f);
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    std::mt19937_64 rng(kSeed ^ (0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(r + 1)));
    std::student_t_distribution<float> t4(4.0f);
    float* row = w.data() + r * cols;
    for (std::int64_t c = 0; c < cols; ++c) {
      float v = t4(rng) * scale;
      if (c == 1 || c % 512 == 511) v *= 10.0f;
      row[c] = v;
    }
  }
  return w;
}

/// The weight of a shape, generated on first use.
const std::vector<float>& weight(Shape s) {
  static std::map<Shape, std::unique_ptr<std::vector<float>>> cache;
  auto& slot = cache[s];
  if (!slot) slot = std::make_unique<std::vector<float>>(make_weight(s.first, s.second));
  return *slot;
}

/// Random codes in [0, 2^nbits) for a [rows, cols] grouped view, cached.
const std::vector<std::uint8_t>& codes(int nbits, std::int64_t rows, std::int64_t cols) {
  static std::map<std::tuple<int, std::int64_t, std::int64_t>,
                  std::unique_ptr<std::vector<std::uint8_t>>>
      cache;
  auto& slot = cache[{nbits, rows, cols}];
  if (!slot) {
    slot = std::make_unique<std::vector<std::uint8_t>>(static_cast<std::size_t>(rows * cols));
    std::mt19937_64 rng(kSeed + static_cast<std::uint64_t>(nbits));
    std::uniform_int_distribution<int> dist(0, (1 << nbits) - 1);
    for (auto& q : *slot) q = static_cast<std::uint8_t>(dist(rng));
  }
  return *slot;
}

/// A quantized 4096x4096 weight (round-to-nearest: setup stays quick; the
/// dequantize cost does not depend on how z was chosen), cached per nbits.
const hqq::QuantizedTensor& quantized(int nbits, Shape s) {
  static std::map<std::pair<int, Shape>, std::unique_ptr<hqq::QuantizedTensor>> cache;
  auto& slot = cache[{nbits, s}];
  if (!slot) {
    hqq::QuantConfig cfg;
    cfg.nbits = nbits;
    cfg.group_size = kGroup;
    cfg.axis = 1;
    cfg.solver = hqq::Solver::kNone;
    slot = std::make_unique<hqq::QuantizedTensor>(
        hqq::quantize(weight(s).data(), {s.first, s.second}, cfg));
  }
  return *slot;
}

void set_rate_counters(benchmark::State& state, double weights_per_iter, double bytes_per_iter) {
  // Rates are per second of wall time (every benchmark uses UseRealTime).
  const double iters = static_cast<double>(state.iterations());
  state.counters["weights/s"] = benchmark::Counter(weights_per_iter * iters, benchmark::Counter::kIsRate);
  if (bytes_per_iter > 0) {
    state.SetBytesProcessed(static_cast<std::int64_t>(bytes_per_iter * iters));  // shown in GiB/s
    state.counters["rw_bytes"] = benchmark::Counter(bytes_per_iter * iters, benchmark::Counter::kIsRate);  // GB/s
  }
  state.counters["threads"] = hqq::num_threads();
}

void bm_quantize(benchmark::State& state, Shape s, int nbits, int axis, hqq::Solver solver) {
  const auto& w = weight(s);
  hqq::QuantConfig cfg;
  cfg.nbits = nbits;
  cfg.group_size = kGroup;
  cfg.axis = axis;
  cfg.solver = solver;
  const std::vector<std::int64_t> shape{s.first, s.second};
  hqq::QuantizedTensor q;
  for (auto _ : state) {
    q = hqq::quantize(w.data(), shape, cfg);
    benchmark::DoNotOptimize(q.packed.data());
  }
  set_rate_counters(state, static_cast<double>(s.first * s.second), 0);
  // Untimed: the reconstruction error of the last run, so a fast but wrong
  // solver shows up in the same table.
  state.counters["rel_err"] =
      hqq::measure_error(hqq::TensorView{w.data(), shape, hqq::DType::kF32}, q).rel_frobenius;
}

void bm_pack(benchmark::State& state, Shape s, int nbits) {
  const hqq::GroupedView v(s.first * s.second, kGroup, 1);
  const auto& q = codes(nbits, v.rows(), v.cols());
  std::vector<std::uint8_t> out(static_cast<std::size_t>(hqq::packed_bytes(nbits, v.rows(), v.cols())));
  for (auto _ : state) {
    hqq::pack(nbits, q.data(), v.rows(), v.cols(), out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_rate_counters(state, static_cast<double>(v.numel), static_cast<double>(q.size() + out.size()));
}

void bm_unpack(benchmark::State& state, Shape s, int nbits) {
  const hqq::GroupedView v(s.first * s.second, kGroup, 1);
  const auto& q = codes(nbits, v.rows(), v.cols());
  std::vector<std::uint8_t> packed(static_cast<std::size_t>(hqq::packed_bytes(nbits, v.rows(), v.cols())));
  hqq::pack(nbits, q.data(), v.rows(), v.cols(), packed.data());
  std::vector<std::uint8_t> out(q.size());
  for (auto _ : state) {
    hqq::unpack(nbits, packed.data(), v.rows(), v.cols(), out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  if (out != q) state.SkipWithError("unpack(pack(codes)) != codes");
  set_rate_counters(state, static_cast<double>(v.numel), static_cast<double>(packed.size() + out.size()));
}

template <typename T>
void bm_dequantize(benchmark::State& state, Shape s, int nbits) {
  const auto& q = quantized(nbits, s);
  std::vector<T> out(static_cast<std::size_t>(q.numel()));
  const hqq::MutableTensorView view{out.data(), q.shape, hqq::dtype_of<T>::value};
  for (auto _ : state) {
    hqq::dequantize(q, view);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // Read: packed codes + scale and zero (held as f32 in memory); write: the output.
  const double bytes = static_cast<double>(q.packed.size()) +
                       static_cast<double>(q.scale.size() + q.zero.size()) * sizeof(float) +
                       static_cast<double>(out.size()) * sizeof(T);
  set_rate_counters(state, static_cast<double>(q.numel()), bytes);
}

std::string shape_name(Shape s) { return fmt::format("{}x{}", s.first, s.second); }

bool register_all() {
  const Shape square{4096, 4096};
  const Shape mlp{4096, 11008};

  for (Shape s : {square, mlp}) {
    const bool big = s == mlp;
    auto tune = [big](benchmark::internal::Benchmark* b) {
      b->UseRealTime()->Unit(benchmark::kMillisecond);
      if (big) {
        b->Iterations(2);  // the 4096x11008 sweep is long; two timed runs each
      } else {
        b->MinTime(2.0);  // a run can take a second on 2 cores: time at least two
      }
    };
    for (int nbits : kAllBits) {
      for (int axis : {1, 0}) {
        tune(benchmark::RegisterBenchmark(
            fmt::format("quantize/proximal/{}bit/axis{}/g{}/{}", nbits, axis, kGroup, shape_name(s)).c_str(),
            bm_quantize, s, nbits, axis, hqq::Solver::kProximal));
      }
    }
    for (hqq::Solver solver : {hqq::Solver::kLegacy, hqq::Solver::kNone}) {
      tune(benchmark::RegisterBenchmark(
          fmt::format("quantize/{}/4bit/axis1/g{}/{}", hqq::solver_name(solver), kGroup, shape_name(s)).c_str(),
          bm_quantize, s, 4, 1, solver));
    }
  }

  for (int nbits : kAllBits) {
    benchmark::RegisterBenchmark(fmt::format("pack/{}bit/axis1/g{}/{}", nbits, kGroup, shape_name(square)).c_str(),
                                 bm_pack, square, nbits)
        ->UseRealTime()->MinTime(0.3)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(fmt::format("unpack/{}bit/axis1/g{}/{}", nbits, kGroup, shape_name(square)).c_str(),
                                 bm_unpack, square, nbits)
        ->UseRealTime()->MinTime(0.3)->Unit(benchmark::kMillisecond);
  }
  for (int nbits : kAllBits) {
    benchmark::RegisterBenchmark(
        fmt::format("dequantize/f32/{}bit/axis1/g{}/{}", nbits, kGroup, shape_name(square)).c_str(),
        bm_dequantize<float>, square, nbits)
        ->UseRealTime()->MinTime(0.3)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(
        fmt::format("dequantize/f16/{}bit/axis1/g{}/{}", nbits, kGroup, shape_name(square)).c_str(),
        bm_dequantize<hqq::half>, square, nbits)
        ->UseRealTime()->MinTime(0.3)->Unit(benchmark::kMillisecond);
  }
  return true;
}

[[maybe_unused]] const bool kRegistered = register_all();

}  // namespace

BENCHMARK_MAIN();
