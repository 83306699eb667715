#pragma once
// Shared by the QuantizedLinear tests of both backends (test_linear.cpp,
// test_linear_cuda.cpp, test_gemm_cuda.cpp): the error bounds, test data, the
// float64 reference of the dequantized weight, the per-row error metric and
// the poisoned, guarded forward of a cuda layer.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "hqq/hqq.hpp"
#include "test_helpers.hpp"

namespace hqq::test {

/// HQQ_TEST_VERBOSE set: the sweeps print their worst errors.
inline bool verbose() { return std::getenv("HQQ_TEST_VERBOSE") != nullptr; }

// ------------------------------------------------------------ bounds
//
// f32 output. The kernels accumulate in f32 as
//   y = sum_g s_g * (sum_k (q_k - zi_g) x_k) - sum_g s_g * (z_g - zi_g) * sum_k x_k
// with zi_g the integer nearest z_g, so a group whose codes sit near a large
// zero (an outlier group) does not cancel two large sums. Measured over
// many runs: worst 1.6e-6 of the row's largest output (the dense path's f32
// Eigen product included). Without the zi_g shift the worst was 2.5e-5, so
// 4e-6 also guards the shift; one code one level off in one row gives
// >= 9e-5 (test MetricCatchesOneWrongCode).
constexpr double kTolF32 = 4e-6;
// f16 output: rounding the result costs up to 2^-11 (4.9e-4) of a value
// (measured worst 4.9e-4).
constexpr double kTolF16 = 1e-3;
// bf16 output: rounding the result alone costs up to 2^-9 (2e-3) of a value
// (bf16 keeps 8 significant bits), so 1e-3 cannot hold; 8e-3 leaves room for
// that plus the accumulation (measured worst 3.9e-3). It still fails on a
// wrong width, layout or group offset; the f32 runs see single-code errors.
constexpr double kTolBF16 = 8e-3;

double tolerance(DType y) { return y == DType::kF32 ? kTolF32 : y == DType::kF16 ? kTolF16 : kTolBF16; }

constexpr int kNbits[] = {8, 4, 3, 2, 1};
constexpr DType kActDtypes[] = {DType::kF32, DType::kF16, DType::kBF16};
// ------------------------------------------------------------ data

std::vector<float> normal(std::size_t n, std::mt19937& rng, float sigma = 1.0f) {
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

/// A host tensor in its dtype: the bytes and the exact values they hold.
struct Typed {
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;
  std::vector<float> values;
  TensorView view() const { return {bytes.data(), shape, dtype}; }
};

Typed typed(const std::vector<float>& v, DType t, std::vector<std::int64_t> shape) {
  Typed r;
  r.dtype = t;
  r.shape = std::move(shape);
  r.bytes = encode_floats(v, t);
  r.values = decode_floats(r.bytes.data(), r.bytes.size(), t);
  return r;
}

QuantConfig config(int nbits, std::int64_t group, int axis = 1, DType scale_dtype = DType::kF16) {
  QuantConfig c;
  c.nbits = nbits;
  c.group_size = group;
  c.axis = axis;
  c.scale_dtype = scale_dtype;
  return c;
}

/// A [N, K] weight quantized by the CPU backend from heavy-tailed values.
QuantizedTensor quantized_weight(std::int64_t N, std::int64_t K, const QuantConfig& cfg, std::uint32_t seed) {
  const std::vector<float> w = test::heavy_tailed(static_cast<std::size_t>(N * K), seed);
  return quantize(TensorView{w.data(), {N, K}, DType::kF32}, cfg, "cpu");
}

/// A [N, K] weight with uniformly random codes and random scale/zero exactly
/// representable in scale_dtype (no solver: fast for large shapes).
QuantizedTensor random_weight(std::int64_t N, std::int64_t K, int nbits, std::int64_t group, DType scale_dtype,
                              std::mt19937& rng, int axis = 1) {
  QuantizedTensor q;
  q.shape = {N, K};
  q.nbits = nbits;
  q.group_size = group;
  q.axis = axis;
  q.scale_dtype = scale_dtype;
  const GroupedView v = q.view();
  std::uniform_int_distribution<int> code(0, (1 << nbits) - 1);
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(v.numel));
  for (auto& c : codes) c = static_cast<std::uint8_t>(code(rng));
  q.packed.assign(static_cast<std::size_t>(packed_bytes(nbits, v.rows(), v.cols())), 0);
  pack(nbits, codes.data(), v.rows(), v.cols(), q.packed.data());
  std::uniform_real_distribution<float> s(1e-3f, 4e-2f), z(-0.5f, static_cast<float>((1 << nbits) - 1) + 0.5f);
  for (std::int64_t g = 0; g < v.num_groups(); ++g) {
    q.scale.push_back(round_to(scale_dtype, s(rng)));
    q.zero.push_back(round_to(scale_dtype, z(rng)));
  }
  q.validate();
  return q;
}

/// W = dequantize(q) as f32 [N, K] on the CPU backend.
std::vector<float> dequantized(const QuantizedTensor& q) {
  std::vector<float> w(static_cast<std::size_t>(q.numel()));
  dequantize(q, MutableTensorView{w.data(), q.shape, DType::kF32}, "cpu");
  return w;
}

/// y_ref[M, N] = x[M, K] W[N, K]^T + b in double (output features split over host threads).
std::vector<double> reference(const std::vector<float>& W, std::int64_t N, std::int64_t K, const std::vector<float>& x,
                              std::int64_t M, const std::vector<float>& bias) {
  std::vector<double> y(static_cast<std::size_t>(M * N));
  auto work = [&](std::int64_t n0, std::int64_t n1) {
    for (std::int64_t n = n0; n < n1; ++n) {
      const float* w = W.data() + n * K;
      for (std::int64_t m = 0; m < M; ++m) {
        const float* xr = x.data() + m * K;
        double acc = bias.empty() ? 0.0 : static_cast<double>(bias[n]);
        for (std::int64_t k = 0; k < K; ++k) acc += static_cast<double>(w[k]) * static_cast<double>(xr[k]);
        y[m * N + n] = acc;
      }
    }
  };
  const std::int64_t T =
      N * K * M < (1 << 22) ? 1 : std::max<std::int64_t>(1, std::min<std::int64_t>(16, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (std::int64_t t = 1; t < T; ++t) pool.emplace_back(work, N * t / T, N * (t + 1) / T);
  work(0, N / T);
  for (auto& th : pool) th.join();
  return y;
}

/// The worst row of a batch: max_n |y - y_ref| / max_n |y_ref| (NaN counts as infinite).
struct RowError {
  double err = 0;
  std::int64_t row = -1, col = -1;
  double got = 0, want = 0;
  std::string str() const {
    std::ostringstream os;
    os << "worst row " << row << ": rel. error " << err << " (at n = " << col << ": got " << got << ", want " << want
       << ")";
    return os.str();
  }
};

/// The row floor of row_error for layers of few outputs (N < 32; empty
/// otherwise). A row of a few outputs can cancel to far below the size of its
/// terms (seen on an H100 with N = 1, and on the CPU with N = 3: 8e-6 of one
/// cancelled output), which the f32 rounding of the terms does not follow:
/// there the error is measured against the larger of max |y| and the largest
/// root sum of squares of the terms x_k W_nk, the typical size of such a sum.
std::vector<double> few_output_row_floor(const std::vector<float>& x, const std::vector<float>& W, std::int64_t M,
                                         std::int64_t N, std::int64_t K) {
  std::vector<double> row_floor;
  if (N >= 32) return row_floor;
  row_floor.assign(static_cast<std::size_t>(M), 0.0);
  for (std::int64_t m = 0; m < M; ++m) {
    for (std::int64_t n = 0; n < N; ++n) {
      double ss = 0;
      for (std::int64_t k = 0; k < K; ++k) {
        const double t = static_cast<double>(x[m * K + k]) * W[n * K + k];
        ss += t * t;
      }
      row_floor[m] = std::max(row_floor[m], std::sqrt(ss));
    }
  }
  return row_floor;
}

/// Per row, max |y - ref| / max |ref|; `row_floor` (M values, optional) puts
/// a lower limit under a row's max |ref|.
RowError row_error(const std::vector<float>& y, const std::vector<double>& ref, std::int64_t M, std::int64_t N,
                   const std::vector<double>& row_floor = {}) {
  RowError worst;
  for (std::int64_t m = 0; m < M; ++m) {
    double scale = row_floor.empty() ? 0.0 : row_floor[m], diff = 0;
    std::int64_t at = 0;
    for (std::int64_t n = 0; n < N; ++n) {
      scale = std::max(scale, std::fabs(ref[m * N + n]));
      const double d = std::fabs(static_cast<double>(y[m * N + n]) - ref[m * N + n]);
      if (!(d <= diff)) {  // NaN sticks
        diff = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
        at = n;
      }
    }
    const double e = diff / std::max(scale, 1e-30);
    if (worst.row < 0 || e > worst.err) {
      worst.err = e;
      worst.row = m;
      worst.col = at;
      worst.got = y[m * N + at];
      worst.want = ref[m * N + at];
    }
  }
  return worst;
}

std::vector<std::uint32_t> bits_of(const std::vector<float>& v) {
  std::vector<std::uint32_t> b(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) b[i] = float_bits(v[i]);
  return b;
}

std::string case_name(int nbits, std::int64_t group) {
  return std::to_string(nbits) + "bit_g" + std::to_string(group);
}

// ------------------------------------------------------------ cuda layers
//
// (hqq/cuda.hpp exists in every build; without CUDA its DeviceBuffer throws,
// and the GPU tests that call these skip before.)

/// Elements of the guard behind y that a forward must leave untouched.
constexpr std::int64_t kGpuGuard = 256;

/// layer.forward(options) with x uploaded to the device and y a 0xFF-poisoned
/// device buffer (NaN in every float dtype) of dtype yt (shape y_shape, or
/// [M, N]) with a guard behind it; checks the guard and returns y's bytes.
inline std::vector<std::uint8_t> gpu_forward_bytes(const QuantizedLinear& layer, const Typed& x, std::int64_t M,
                                                   DType yt, const ForwardOptions& options,
                                                   std::vector<std::int64_t> y_shape = {}) {
  const std::int64_t N = layer.out_features();
  if (y_shape.empty()) y_shape = {M, N};
  const std::size_t es = dtype_size(yt), used = static_cast<std::size_t>(M * N) * es;
  cuda::DeviceBuffer dx = cuda::DeviceBuffer::from(x.bytes);  // exactly the activations: no slack to read past
  cuda::DeviceBuffer dy(used + kGpuGuard * es);
  dy.fill(0xFF);
  layer.forward(TensorView{dx.data(), x.shape, x.dtype}, MutableTensorView{dy.data(), y_shape, yt}, options);
  std::vector<std::uint8_t> out = dy.to_vector<std::uint8_t>();  // synchronous, after the forward
  const bool guard_ok = std::all_of(out.begin() + static_cast<std::ptrdiff_t>(used), out.end(),
                                    [](std::uint8_t b) { return b == 0xFF; });
  EXPECT_TRUE(guard_ok) << "forward wrote past the " << M << " x " << N << " outputs";
  out.resize(used);
  return out;
}

/// gpu_forward_bytes as floats.
inline std::vector<float> gpu_forward(const QuantizedLinear& layer, const Typed& x, std::int64_t M, DType yt,
                                      const ForwardOptions& options, std::vector<std::int64_t> y_shape = {}) {
  const std::vector<std::uint8_t> out = gpu_forward_bytes(layer, x, M, yt, options, std::move(y_shape));
  return decode_floats(out.data(), out.size(), yt);
}

}  // namespace hqq::test
