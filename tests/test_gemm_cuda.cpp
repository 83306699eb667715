// QuantizedLinear's tensor-core GEMM on the CUDA backend, forced with
// LinearKernelChoice::kTensorCore (on sm_90 with an sm_90a build the TMA +
// warp-specialised wgmma kernels of cuda/sm90/gemm_tma.cuh, else the mma.sync
// kernels of cuda/gemm.cu), kTensorCoreMmaSync (always mma.sync: checked
// beside kTensorCore wherever that runs the TMA kernels) and kTensorCoreTma:
// y = x W^T + b against a float64 reference of the dequantized weight,
// for every width x group size x f16/bf16 activations, batch sizes 16..4096
// across the four block tiles and their remainders, odd N, K % 64 == 32, bias,
// mixed output dtypes, f32/bf16 metadata, a Llama-sized layer, split-K,
// every weight read back through one-hot rows, determinism, kAuto's choice,
// and the errors of a kTensorCore request that cannot run. Host-only (no
// device needed): the split-K plan, and the TMA kernels' walk over k tiles
// and groups (cuda/tile_walk.hpp) against their closed forms, the
// epilogue's exchange of outputs between lanes (cuda/fragment_pairs.hpp),
// and, in a CUDA build, the two ways of forming the dequantization's row
// constants (cuda/row_consts.hpp) against each other and the kernels'
// dequantization itself (cuda/dequant.hpp) on an exact model of its f16x2 /
// bf16x2 operations.
//
// The reference never touches the layout code: W = hqq::dequantize(q) on the
// CPU backend, y_ref[m, n] = sum_k W[n, k] * x[m, k] + b[n] in double over the
// values the activations and the bias hold. y is a device buffer filled with
// 0xFF bytes (NaN in every float dtype) before each forward, with a guard
// behind the M x N outputs that must stay untouched (linear_test_helpers.hpp).
//
// Two checks per batch (check_gemm). (1) The per-row metric of the GEMV
// tests, max_n |y - y_ref| / max_n |y_ref|, with the bounds: the
// kernel forms w = (q - z) * s in the activation type (f16 or bf16 roundings
// per weight) and accumulates in f32, so the GEMV's f32 bound (kTolF32) does
// not apply: 1e-3 (kTolF16) for f16 x whatever y is, kTolBF16 when x or y is
// bf16; rows of fewer than kRowMetricMinN outputs are left to (2). (2) Every
// output within the a-priori bound of those roundings (Weight, check_gemm),
// which holds whatever the shape.
//
// Every test derives from a fixture that skips visibly (with the reason)
// without a CUDA build, a usable device, or (for the GEMM) compute capability
// 8.0. Seeds are fresh per test and printed with every failure;
// HQQ_TEST_SEED=<n> replays one, HQQ_TEST_VERBOSE=1 prints the worst errors.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../cuda/fragment_pairs.hpp"
#include "../cuda/kernels.hpp"
#if HQQ_TEST_CUDA_BUILT
#include "../cuda/dequant.hpp"
#include "../cuda/row_consts.hpp"
#endif
#include "../cuda/tile_walk.hpp"
#include "hqq/cuda.hpp"
#include "hqq/hqq.hpp"
#include "hqq/linear.hpp"
#include "linear_test_helpers.hpp"
#include "test_helpers.hpp"

namespace hqq {

[[maybe_unused]] static void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }

namespace {

using cuda::DeviceBuffer;
using detail::LinearPath;
using test::error_of;
using test::fresh_seed;
using test::GpuFixture;
using test::no_gpu_reason;
using test::seed_note;
using namespace test;  // linear_test_helpers.hpp
using ::testing::HasSubstr;

constexpr DType kHalfDtypes[] = {DType::kF16, DType::kBF16};

LinearOptions cuda_options() {
  LinearOptions o;
  o.backend = "cuda";
  return o;
}

ForwardOptions kernel(LinearKernelChoice k) {
  ForwardOptions o;  // legacy default stream
  o.kernel = k;
  return o;
}
const ForwardOptions kTensorCore = kernel(LinearKernelChoice::kTensorCore);
const ForwardOptions kMmaSync = kernel(LinearKernelChoice::kTensorCoreMmaSync);
const ForwardOptions kTma = kernel(LinearKernelChoice::kTensorCoreTma);
const ForwardOptions kGemv = kernel(LinearKernelChoice::kGemv);
const ForwardOptions kAuto = kernel(LinearKernelChoice::kAuto);

/// Compute capability of the current device as 10 * major + minor, from
/// device_description() ("NVIDIA H100 80GB HBM3 (sm_90, ...)"); 0 when it cannot be read.
int cc() {
  const std::string d = cuda::device_description();
  const std::size_t at = d.find("(sm_");
  if (at == std::string::npos) return 0;
  std::string digits;
  for (std::size_t i = at + 4; i < d.size() && std::isdigit(static_cast<unsigned char>(d[i])); ++i) digits += d[i];
  return digits.size() < 2 ? 0 : std::stoi(digits);
}
int cc_major() { return cc() / 10; }

using NamedKernel = std::pair<ForwardOptions, const char*>;

/// Every tensor-core choice the layer can be forced to: kTensorCore,
/// kTensorCoreMmaSync and, where the layer supports it, kTensorCoreTma
/// (CudaGemm.TmaKernelsWhereverTheBuildAndDeviceHaveThem fails if an sm_90
/// device with an sm_90a build does not).
std::vector<NamedKernel> forced_kernels(const QuantizedLinear& layer) {
  std::vector<NamedKernel> k = {{kTensorCore, "kTensorCore"}, {kMmaSync, "kTensorCoreMmaSync"}};
  if (layer.supports(LinearKernelChoice::kTensorCoreTma)) k.emplace_back(kTma, "kTensorCoreTma");
  return k;
}

/// The kernels a layer's GEMM checks run: kTensorCore, and kTensorCoreMmaSync
/// where kTensorCore runs the TMA kernels (elsewhere the two are the same
/// kernels; kTensorCoreTma runs what kTensorCore runs where it exists).
std::vector<NamedKernel> gemm_kernels(const QuantizedLinear& layer) {
  std::vector<NamedKernel> k = {{kTensorCore, "kTensorCore"}};
  if (layer.supports(LinearKernelChoice::kTensorCoreTma)) k.emplace_back(kMmaSync, "kTensorCoreMmaSync");
  return k;
}

/// GpuFixture (skips without a CUDA build or usable device) that also needs
/// tensor cores the GEMM can use (sm_80+).
template <class Base>
class TensorCoreFixture : public GpuFixture<Base> {
 protected:
  void SetUp() override {
    GpuFixture<Base>::SetUp();
    if (::testing::Test::IsSkipped()) return;
    if (cc_major() < 8) {
      GTEST_SKIP() << "the tensor-core GEMM needs compute capability 8.0 or newer; the device is "
                   << cuda::device_description();
    }
  }
};

using CudaGemm = TensorCoreFixture<::testing::Test>;

/// Bound of the per-row metric of a GEMM batch: the weight is rounded to the
/// activation type in the kernel.
/// The metric for the tensor-core GEMM: per row, the relative error
/// ||y_row - ref_row||_2 / ||ref_row||_2 (the norm-wise relative error, as
/// the benchmark's gate). The GEMV tests use the stricter max-abs metric
/// (row_error): the GEMM rounds every weight to the activation type (what the
/// tensor cores multiply), and a single output of a row can then sit at
/// ~1.1e-3 (f16) / ~1.1e-2 (bf16) of the row's largest value, measured on an
/// H100. Every output is still held to the a-priori bound of check_gemm,
/// which sees one code off by one level.
RowError row_error_l2(const std::vector<float>& y, const std::vector<double>& ref, std::int64_t M, std::int64_t N) {
  RowError worst;
  for (std::int64_t m = 0; m < M; ++m) {
    double num = 0, den = 0;
    for (std::int64_t n = 0; n < N; ++n) {
      const double d = static_cast<double>(y[m * N + n]) - ref[m * N + n];
      num += d * d;
      den += ref[m * N + n] * ref[m * N + n];
    }
    double e = std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
    if (std::isnan(e)) e = std::numeric_limits<double>::infinity();
    if (worst.row < 0 || e > worst.err) {
      worst.err = e;
      worst.row = m;
      worst.col = 0;
      worst.got = y[m * N];
      worst.want = ref[m * N];
    }
  }
  return worst;
}

double gemm_tolerance(DType xt, DType yt) { return xt == DType::kBF16 || yt == DType::kBF16 ? kTolBF16 : kTolF16; }

/// Fewer outputs per row than this and the per-row metric is ill-conditioned
/// (a random x can make the one or few outputs of a row arbitrarily small by
/// cancellation, while the weight's rounding error does not shrink with
/// them): such rows are held to the a-priori bound alone.
constexpr std::int64_t kRowMetricMinN = 32;

/// Unit roundoff of a float type: 2^-11 (f16), 2^-8 (bf16), 2^-24 (f32).
double unit_roundoff(DType t) { return t == DType::kF16 ? 0x1p-11 : t == DType::kBF16 ? 0x1p-8 : 0x1p-24; }

/// Whether an axis-1 [N, K] weight with group G packs at nbits (rows of the
/// grouped view a multiple of the pack ratio; 3-bit pads).
bool packable(int nbits, std::int64_t N, std::int64_t K, std::int64_t G) {
  return nbits == 3 || (N * K / G) % pack_ratio(nbits) == 0;
}

/// A quantized weight and what the checks need: W = dequantize(q) (the
/// reference) and, per weight and activation type T, the scale E_T of its
/// rounding error in the kernel. The kernel forms w = (q - zi) * s + m in T,
/// with zi the integer nearest z (clamped to where magic + zi and q - zi are
/// exact in T), s and m = -(z - zi) * s rounded to T and the result rounded
/// once more: |w_kernel - (q - z) s| <= u_T * E_T (1 + O(u_T)) with
/// E_T = |w| + (|q - zi| + |z - zi|) |s|, plus for f16 the absolute error of
/// rounding into its subnormals (2^-25 for each of w, m and s: small weights
/// near their zero-point land there), folded into E_f16 as
/// (2 + |q - zi|) 2^-25 / u_f16.
struct Weight {
  QuantizedTensor q;
  std::vector<float> W;
  std::vector<float> e16, ebf16;  // E_T for T = f16, bf16
  const std::vector<float>& E(DType t) const { return t == DType::kF16 ? e16 : ebf16; }
};

/// zi as the kernel forms it for activation type t (dequant.hpp, RowConsts).
float kernel_zi(float z, DType t, int nbits) {
  const float zi = std::rint(z);
  if (t == DType::kF16) return std::fmin(std::fmax(zi, -1024.0f), 1023.0f);
  if (nbits == 8) return std::fmin(std::fmax(zi, 0.0f), 255.0f);
  return std::fmin(std::fmax(zi, -128.0f), 127.0f);
}

Weight weight_of(QuantizedTensor q) {
  Weight w;
  w.W = dequantized(q);
  const std::vector<std::uint8_t> codes = unpack_codes(q);  // axis 1: [N, K] order
  w.e16.resize(codes.size());
  w.ebf16.resize(codes.size());
  for (std::size_t i = 0; i < codes.size(); ++i) {
    const std::size_t g = i / static_cast<std::size_t>(q.group_size);
    const float s = std::fabs(q.scale[g]), z = q.zero[g];
    for (DType t : {DType::kF16, DType::kBF16}) {
      const float zi = kernel_zi(z, t, q.nbits);
      const float d = std::fabs(codes[i] - zi);
      const float e = std::fabs(w.W[i]) + (d + std::fabs(z - zi)) * s;
      if (t == DType::kF16) {
        w.e16[i] = e + (2.0f + d) * 0x1p-14f;  // (2 + d) 2^-25 / 2^-11
      } else {
        w.ebf16[i] = e;  // bf16 has f32's exponent range: no subnormals at these magnitudes
      }
    }
  }
  w.q = std::move(q);
  return w;
}

/// One batch through the tensor-core GEMM against the reference of W (+ bias
/// values): the kernels of gemm_kernels. Every output must lie within the a-priori bound
///   |y - y_ref| <= a * c + u_y * (|y_ref| + a * c),  c = sum_k E_T[n, k] |x[m, k]|,
/// a = u_T (weight rounding) + (K/16 + 64) 2^-23 (f32 accumulation over the
/// k steps and split sums), u_y the output's unit roundoff (at least 2^-23:
/// the bias addition); rows of at least kRowMetricMinN outputs also to the
/// per-row metric's bound. Returns the worst per-row error.
double check_gemm(const QuantizedLinear& layer, const Weight& w, const std::vector<float>& bias, std::int64_t M,
                  DType xt, DType yt, std::mt19937& rng, const std::string& what) {
  const std::int64_t N = layer.out_features(), K = layer.in_features();
  const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), xt, {M, K});
  const std::vector<double> ref = reference(w.W, N, K, x.values, M, bias);
  std::vector<float> ax(x.values.size());
  std::transform(x.values.begin(), x.values.end(), ax.begin(), [](float v) { return std::fabs(v); });
  const std::vector<double> cond = reference(w.E(xt), N, K, ax, M, {});
  const double a = 1.01 * unit_roundoff(xt) + (static_cast<double>(K) / 16 + 64) * 0x1p-23;
  const double uy = std::max(unit_roundoff(yt), 0x1p-23);
  double worst = 0;
  for (const auto& [options, name] : gemm_kernels(layer)) {
    const std::string where = what + ", M = " + std::to_string(M) + ", x " + std::string(dtype_name(xt)) + ", y " +
                              std::string(dtype_name(yt)) + (bias.empty() ? "" : ", bias") + ", " + name;
    const std::vector<float> y = gpu_forward(layer, x, M, yt, options);
    std::int64_t outside = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      const double bound = a * cond[i] + uy * (std::fabs(ref[i]) + a * cond[i]);
      const double d = std::fabs(static_cast<double>(y[i]) - ref[i]);
      if (!(d <= bound) && ++outside <= 3) {
        ADD_FAILURE() << where << ": y[" << i / N << ", " << i % N << "] = " << y[i] << ", want " << ref[i]
                      << ", off by " << d << " > a-priori bound " << bound;
      }
    }
    EXPECT_EQ(outside, 0) << where << ": outputs outside the a-priori bound";
    if (N >= kRowMetricMinN) {
      const RowError e = row_error_l2(y, ref, M, N);
      EXPECT_LE(e.err, gemm_tolerance(xt, yt)) << where << ": " << e.str();
      worst = std::max(worst, e.err);
    }
  }
  return worst;
}

std::string shape_name(std::int64_t N, std::int64_t K) { return "N=" + std::to_string(N) + " K=" + std::to_string(K); }

// ============================================================ correctness

using WidthGroup = std::tuple<int, std::int64_t>;
using CudaGemmSweep = TensorCoreFixture<::testing::TestWithParam<WidthGroup>>;

// f16 and bf16 activations, M across the four block tiles (16 | 32 | 64 | 128
// rows) and past their multiples, bias on (odd M) and off, y in the
// activation dtype. N = 300 is not a multiple of the 128-row block tile;
// at M <= 16 the 3 blocks of N = 300 split K in two.
TEST_P(CudaGemmSweep, MatchesFloat64ReferenceOfDequantizedWeight) {
  const auto [nbits, group] = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 300, K = 512;
  const QuantizedTensor q = quantized_weight(N, K, config(nbits, group), seed);
  const Weight w = weight_of(q);
  const Typed bias = typed(normal(static_cast<std::size_t>(N), rng, 0.5f), DType::kF32, {N});
  const QuantizedLinear plain(q, {}, cuda_options());
  const QuantizedLinear biased(q, bias.view(), cuda_options());
  ASSERT_EQ(plain.backend(), "cuda");
  ASSERT_EQ(plain.path(), LinearPath::kPacked);
  for (DType t : kHalfDtypes) {
    double worst = 0;
    for (std::int64_t M : {16, 17, 32, 33, 64, 65, 130}) {
      const bool with_bias = M % 2 == 1;
      worst = std::max(worst, check_gemm(with_bias ? biased : plain, w, with_bias ? bias.values : std::vector<float>{},
                                         M, t, t, rng, case_name(nbits, group)));
    }
    if (verbose()) std::cout << "[ error ] " << case_name(nbits, group) << " " << dtype_name(t) << ": " << worst << "\n";
  }
}

INSTANTIATE_TEST_SUITE_P(AllWidths, CudaGemmSweep,
                         ::testing::Combine(::testing::ValuesIn(kNbits), ::testing::Values<std::int64_t>(32, 64, 128)),
                         [](const auto& info) { return case_name(std::get<0>(info.param), std::get<1>(info.param)); });

// Batch sizes 16..4096, at and around every tile multiple, on a layer with
// N not a multiple of the block tile and K % 64 == 32 (a half-padded last k tile).
TEST_F(CudaGemm, BatchSizesAcrossTheTiles) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 300, K = 1056;
  const QuantizedTensor q = random_weight(N, K, 4, 32, DType::kF16, rng);
  const Weight w = weight_of(q);
  const Typed bias = typed(normal(static_cast<std::size_t>(N), rng, 0.5f), DType::kF16, {N});
  const QuantizedLinear layer(q, bias.view(), cuda_options());
  double worst = 0;
  int i = 0;
  for (std::int64_t M : {16, 17, 31, 33, 63, 65, 100, 127, 129, 255, 257, 1000, 4096}) {
    const DType yt = (i++ % 2) ? DType::kF16 : DType::kF32;
    worst = std::max(worst, check_gemm(layer, w, bias.values, M, DType::kF16, yt, rng, "4bit_g32 " + shape_name(N, K)));
  }
  for (std::int64_t M : {31, 129, 257}) check_gemm(layer, w, bias.values, M, DType::kBF16, DType::kF32, rng, "bf16 x");
  if (verbose()) std::cout << "[ error ] 4bit_g32 f16 x, M = 16..4096: " << worst << "\n";
}

// Odd N (1, 7, 129), N past the 128-row padding (300), K % 64 == 32 with group
// 32, every width where the shape packs (uniformly random codes, zeros
// slightly outside the code range), f32 output.
TEST_F(CudaGemm, OddNAndUnalignedK) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  struct Shape {
    std::int64_t N, K, G;
  };
  const Shape shapes[] = {{1, 96, 32},    {7, 96, 32},   {129, 1056, 32}, {8, 96, 32},  {40, 1056, 32},
                          {1, 1024, 128}, {7, 512, 64},  {129, 256, 32},  {300, 480, 32}};
  int ran = 0;
  for (const Shape s : shapes) {
    for (int nbits : kNbits) {
      if (!packable(nbits, s.N, s.K, s.G)) continue;
      const std::string what = case_name(nbits, s.G) + " " + shape_name(s.N, s.K);
      const QuantizedTensor q = random_weight(s.N, s.K, nbits, s.G, DType::kF16, rng);
      const Typed bias = typed(normal(static_cast<std::size_t>(s.N), rng, 0.5f), DType::kF32, {s.N});
      const QuantizedLinear layer(q, bias.view(), cuda_options());
      ASSERT_EQ(layer.path(), LinearPath::kPacked) << what;
      const Weight w = weight_of(q);
      for (std::int64_t M : {16, 40, 100}) {
        check_gemm(layer, w, bias.values, M, kHalfDtypes[M % 2], DType::kF32, rng, what);
      }
      ++ran;
    }
  }
  EXPECT_GE(ran, 30);
}

// f16/bf16 x into f32/f16/bf16 y, with and without bias.
TEST_F(CudaGemm, MixedOutputDtypesAndBias) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 45, K = 768;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), seed);
  const Weight w = weight_of(q);
  const Typed bias = typed(normal(N, rng, 0.5f), DType::kBF16, {N});
  const QuantizedLinear plain(q, {}, cuda_options());
  const QuantizedLinear biased(q, bias.view(), cuda_options());
  for (DType xt : kHalfDtypes) {
    for (DType yt : kActDtypes) {
      for (std::int64_t M : {16, 50, 130}) {
        check_gemm(plain, w, {}, M, xt, yt, rng, "4bit_g64");
        check_gemm(biased, w, bias.values, M, xt, yt, rng, "4bit_g64 bias");
      }
    }
  }
}

// f32 and bf16 metadata (f32 pairs in the layout, rounded to the activation
// type in the kernel) next to f16 metadata, every width.
TEST_F(CudaGemm, EveryScaleDtype) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 75, K = 512;
  for (DType sdt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int nbits : kNbits) {
      const QuantizedTensor q = quantized_weight(N, K, config(nbits, 64, 1, sdt), seed + nbits);
      const QuantizedLinear layer(q, {}, cuda_options());
      const Weight w = weight_of(q);
      const std::string what = case_name(nbits, 64) + " scale " + std::string(dtype_name(sdt));
      for (std::int64_t M : {16, 70}) {
        check_gemm(layer, w, {}, M, DType::kF16, DType::kF32, rng, what);
        check_gemm(layer, w, {}, M, DType::kBF16, DType::kBF16, rng, what);
      }
    }
  }
}

// A Llama-7B attention projection ([4096, 4096], 4-bit g64): decode-sized and
// prefill-sized batches.
TEST_F(CudaGemm, LlamaShape) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 4096, K = 4096;
  const QuantizedTensor q = random_weight(N, K, 4, 64, DType::kF16, rng);
  const Weight w = weight_of(q);
  const Typed bias = typed(normal(static_cast<std::size_t>(N), rng, 0.5f), DType::kF16, {N});
  const QuantizedLinear layer(q, bias.view(), cuda_options());
  const std::string what = "4bit_g64 " + shape_name(N, K);
  check_gemm(layer, w, bias.values, 16, DType::kF16, DType::kF16, rng, what);
  check_gemm(layer, w, bias.values, 512, DType::kF16, DType::kF32, rng, what);
  check_gemm(layer, w, bias.values, 100, DType::kBF16, DType::kBF16, rng, what);
}

// Skinny problems split K into partial sums reduced in order (bias added in
// the reduction): one 128-row block of N = 64 at M <= 128 gets up to 16
// splits of K = 8192 (128 k tiles), 65 k tiles split unevenly (13 x 5), and a
// half-padded last k tile (K % 64 == 32).
TEST_F(CudaGemm, SplitK) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  struct Case {
    int nbits;
    std::int64_t N, K, G;
  };
  // G = 96 and 160: groups that start inside a k tile, at step 2 or 0..3, and splits that start inside a group.
  for (const Case c : {Case{4, 64, 8192, 128}, Case{4, 64, 4160, 64}, Case{3, 64, 4128, 32}, Case{8, 24, 8192, 64},
                       Case{2, 64, 8192, 32}, Case{1, 64, 8192, 128}, Case{4, 64, 4128, 96}, Case{8, 40, 4160, 160}}) {
    const std::string what = case_name(c.nbits, c.G) + " " + shape_name(c.N, c.K);
    const QuantizedTensor q = random_weight(c.N, c.K, c.nbits, c.G, DType::kF16, rng);
    const Weight w = weight_of(q);
    const Typed bias = typed(normal(static_cast<std::size_t>(c.N), rng, 0.5f), DType::kF32, {c.N});
    const QuantizedLinear layer(q, bias.view(), cuda_options());
    for (std::int64_t M : {16, 20, 40, 100}) {
      check_gemm(layer, w, bias.values, M, DType::kF16, M % 20 == 0 ? DType::kF16 : DType::kF32, rng, what);
    }
    check_gemm(layer, w, bias.values, 16, DType::kBF16, DType::kBF16, rng, what);
  }
}

// The split-K plan of the TMA kernels (host arithmetic: no device needed).
// Large batches stay whole: their partial sums would cost more traffic than
// a split saves (M = 1024 on 11008x4096 once took 3 splits, 135 MB of f32
// partials written and read back); skinny ones still split, for the SMs.
TEST(CudaGemmPlan, SplitKOnlyWhereThePartialSumsPay) {
#ifndef HQQ_TEST_WGMMA_BUILT
  GTEST_SKIP() << "a build without the sm_90a TMA kernels (CMAKE_CUDA_ARCHITECTURES without 90)";
#else
  ASSERT_TRUE(cuda::detail::gemm_wgmma_built());
  auto workspace = [](std::int64_t n, std::int64_t k, std::int64_t m) {
    cuda::detail::GemmJob job;
    job.n = n;
    job.k = job.kpad = k;
    job.npad = (n + 127) / 128 * 128;
    job.group_size = 64;
    job.groups = k / 64;
    job.nbits = 4;
    job.m = m;
    job.num_sms = 132;  // an H100 SXM
    job.wgmma = true;
    return cuda::detail::gemm_workspace_bytes(job);
  };
  for (const auto& [n, k, m] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{11008, 4096, 1024},
                                {14336, 4096, 1024}, {11008, 4096, 4096}, {28672, 8192, 4096}, {8192, 28672, 4096},
                                {28672, 8192, 256}, {4096, 4096, 1024}}) {
    EXPECT_EQ(workspace(n, k, m), 0u) << "M = " << m << ", " << shape_name(n, k) << ": split";
  }
  // Skinny: 32 blocks of 128 rows for 132 SMs (whatever the occupancy query says, or the
  // fallback of a machine without a device).
  for (const auto& [n, k, m] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{4096, 4096, 16},
                                {4096, 11008, 16}, {4096, 14336, 256}}) {
    const std::size_t per_split = static_cast<std::size_t>(m * n) * sizeof(float);
    const std::size_t bytes = workspace(n, k, m);
    EXPECT_GE(bytes, 2 * per_split) << "M = " << m << ", " << shape_name(n, k) << ": not split";
    EXPECT_LE(bytes, 16 * per_split) << "M = " << m << ", " << shape_name(n, k);
    EXPECT_EQ(bytes % per_split, 0u) << "M = " << m << ", " << shape_name(n, k);
  }
#endif
}

// The profiling knobs of the GEMM plan (cuda/gemm.cu, bench/README.md),
// read once per process: ctest's gemm_plan_knobs runs this test with
// HQQ_GEMM_TILE=64 and HQQ_GEMM_SPLITS=3 (skipped without them). A job that
// leaves tile and split to the plan takes the 64-row tile in 3 splits (the
// workspace of 3 partial sums), on either path, where the plan alone would
// take the 16-row tile; a job that names them keeps its own.
TEST(CudaGemmPlan, EnvironmentKnobsForceTileAndSplit) {
#ifndef HQQ_TEST_CUDA_BUILT
  GTEST_SKIP() << "a build without the CUDA backend";
#else
  const char* tile = std::getenv("HQQ_GEMM_TILE");
  const char* splits = std::getenv("HQQ_GEMM_SPLITS");
  if (tile == nullptr || splits == nullptr || std::string(tile) != "64" || std::string(splits) != "3") {
    GTEST_SKIP() << "run by ctest's gemm_plan_knobs (HQQ_GEMM_TILE=64 HQQ_GEMM_SPLITS=3)";
  }
  for (const bool wgmma : {false, cuda::detail::gemm_wgmma_built()}) {
    cuda::detail::GemmJob job;
    job.n = 4096;
    job.k = job.kpad = 4096;
    job.npad = 4096;
    job.group_size = 64;
    job.groups = 64;
    job.m = 16;
    job.num_sms = 132;
    job.wgmma = wgmma;
    const std::string plan = cuda::detail::gemm_plan_description(job);
    EXPECT_THAT(plan, ::testing::HasSubstr("tile 64 x ")) << plan;
    EXPECT_THAT(plan, ::testing::HasSubstr("3 split(s) of 22 k tiles")) << plan;
    EXPECT_THAT(plan, ::testing::HasSubstr(wgmma ? "TMA + wgmma" : "mma.sync")) << plan;
    EXPECT_EQ(cuda::detail::gemm_workspace_bytes(job), 3u * 16u * 4096u * sizeof(float)) << plan;
    job.config = wgmma ? 4 : 0;  // the 16-row tile, named
    job.splits = 2;
    const std::string own = cuda::detail::gemm_plan_description(job);
    EXPECT_THAT(own, ::testing::HasSubstr("tile 16 x ")) << own;
    EXPECT_THAT(own, ::testing::HasSubstr("2 split(s) of 32 k tiles")) << own;
  }
#endif
}

// The TMA kernels' walk over a block's k tiles (cuda/tile_walk.hpp), counted
// rather than divided per tile, against the closed forms: tile i's k tile is
// begin + (i + rot) mod count, its stage i mod kStages, its phase parity
// (i / kStages) mod 2; next() says when the k tiles wrap around to begin.
template <int kStages>
void expect_walk_matches_closed_forms() {
  for (const int begin : {0, 7, 1000}) {
    for (int count = 1; count <= 3 * kStages + 2; ++count) {
      for (int rot = 0; rot < count; ++rot) {
        cuda::detail::TileWalk<kStages> w(begin, count, rot);
        for (int i = 0; i < count; ++i) {
          const std::string at = "kStages " + std::to_string(kStages) + ", begin " + std::to_string(begin) +
                                 ", count " + std::to_string(count) + ", rot " + std::to_string(rot) + ", tile " +
                                 std::to_string(i);
          ASSERT_EQ(w.kb, begin + (i + rot) % count) << at;
          ASSERT_EQ(w.stage, i % kStages) << at;
          ASSERT_EQ(w.parity, static_cast<unsigned>(i / kStages) & 1u) << at;
          const bool wrapped = w.next();
          ASSERT_EQ(wrapped, i + 1 == count - rot) << at;
        }
      }
    }
  }
}

TEST(CudaGemmPlan, TileWalkCountsWhatTheClosedFormsSay) {
  expect_walk_matches_closed_forms<2>();
  expect_walk_matches_closed_forms<5>();
  expect_walk_matches_closed_forms<8>();
}

// Stream-K (tile_walk.hpp, StreamK): for tile counts, k tiles per tile and
// block counts around and past the tile count, every (tile, k tile)
// iteration belongs to exactly one block's segment; a segment holds a whole
// tile (slot -1) exactly where whole() says, and then only that block
// touches the tile; a block uses each of its two partial slots at most once;
// and a tile's parts are exactly the blocks first_cta .. last_cta, each in
// its slot_of slot (what the fixup sums, in that order). TileWalk::restart
// keeps the ring's stage and phase going across segments.
TEST(CudaGemmPlan, StreamKSegmentsCoverEveryIterationOnce) {
  using cuda::detail::StreamK;
  int checked = 0;
  for (const int tiles : {1, 2, 3, 7, 32, 86, 224}) {
    for (const int kb : {1, 2, 5, 64, 128}) {
      for (const int target : {1, 2, 3, 4, 7, 132, 264, 396, 1000}) {
        StreamK sk;
        sk.tiles = tiles;
        sk.kb = kb;
        sk.per = (tiles * kb + target - 1) / target;
        const std::string at = "tiles " + std::to_string(tiles) + ", kb " + std::to_string(kb) + ", per " +
                               std::to_string(sk.per);
        std::vector<int> owner(static_cast<std::size_t>(tiles * kb), -1);
        std::vector<std::vector<std::pair<int, int>>> parts(static_cast<std::size_t>(tiles));  // (cta, slot)
        std::vector<int> whole_by(static_cast<std::size_t>(tiles), -1);
        for (int c = 0; c < sk.ctas(); ++c) {
          int slots_used[2] = {0, 0}, segments = 0, last_end = c * sk.per;
          sk.for_each_segment(c, [&](const StreamK::Segment& sg) {
            ++segments;
            ASSERT_TRUE(sg.tile >= 0 && sg.tile < tiles && sg.kb_begin >= 0 && sg.count > 0 &&
                        sg.kb_begin + sg.count <= kb)
                << at << ", cta " << c;
            ASSERT_EQ(sg.tile * kb + sg.kb_begin, last_end) << at << ", cta " << c << ": segments in order";
            last_end += sg.count;
            for (int i = 0; i < sg.count; ++i) {
              int& o = owner[static_cast<std::size_t>(sg.tile * kb + sg.kb_begin + i)];
              ASSERT_EQ(o, -1) << at << ": iteration of tile " << sg.tile << " twice";
              o = c;
            }
            ASSERT_EQ(sg.slot == -1, sk.whole(sg.tile)) << at << ", cta " << c << ", tile " << sg.tile;
            ASSERT_EQ(sg.slot == -1, sg.kb_begin == 0 && sg.count == kb) << at << ", cta " << c;
            if (sg.slot == -1) {
              whole_by[static_cast<std::size_t>(sg.tile)] = c;
            } else {
              ASSERT_TRUE(sg.slot == 0 || sg.slot == 1) << at;
              ASSERT_EQ(++slots_used[sg.slot], 1) << at << ", cta " << c << ": slot " << sg.slot << " twice";
              parts[static_cast<std::size_t>(sg.tile)].emplace_back(c, sg.slot);
            }
          });
          ASSERT_GT(segments, 0) << at << ", cta " << c << " has no iteration";
          ASSERT_EQ(last_end, std::min((c + 1) * sk.per, tiles * kb)) << at << ", cta " << c;
        }
        for (int i = 0; i < tiles * kb; ++i) ASSERT_NE(owner[static_cast<std::size_t>(i)], -1) << at << ", " << i;
        for (int t = 0; t < tiles; ++t) {
          const auto& got = parts[static_cast<std::size_t>(t)];
          if (sk.whole(t)) {
            EXPECT_TRUE(got.empty()) << at << ", tile " << t;
            EXPECT_EQ(whole_by[static_cast<std::size_t>(t)], sk.first_cta(t)) << at << ", tile " << t;
            continue;
          }
          std::vector<std::pair<int, int>> want;
          for (int c = sk.first_cta(t); c <= sk.last_cta(t); ++c) want.emplace_back(c, sk.slot_of(c, t));
          EXPECT_EQ(got, want) << at << ", tile " << t;
          EXPECT_EQ(whole_by[static_cast<std::size_t>(t)], -1) << at << ", tile " << t;
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 7 * 5 * 9);

  // The ring goes on across segments: 3 + 5 + 2 tiles in a ring of 4 stages.
  cuda::detail::TileWalk<4> w(0, 3, 0);
  int n = 0;
  for (const int count : {3, 5, 2}) {
    w.restart(10 * count, count, 0);
    for (int i = 0; i < count; ++i, ++n) {
      ASSERT_EQ(w.kb, 10 * count + i);
      ASSERT_EQ(w.stage, n % 4);
      ASSERT_EQ(w.parity, static_cast<unsigned>(n / 4) & 1u);
      w.next();
    }
  }
}

// The plan takes stream-K only where asked (GemmJob::stream_k or
// HQQ_GEMM_STREAMK) and only for the TMA kernels: then no split, a
// workspace of two partial block tiles per block, and a description that
// says so (host arithmetic: no device needed).
TEST(CudaGemmPlan, StreamKOnlyWhenAskedAndOnlyForTheTmaKernels) {
#ifndef HQQ_TEST_WGMMA_BUILT
  GTEST_SKIP() << "a build without the sm_90a TMA kernels (CMAKE_CUDA_ARCHITECTURES without 90)";
#else
  cuda::detail::GemmJob job;
  job.n = 28672;
  job.k = job.kpad = 8192;
  job.npad = 28672;
  job.group_size = 64;
  job.groups = 8192 / 64;
  job.nbits = 4;
  job.m = 16;
  job.num_sms = 132;
  job.wgmma = true;
  job.stream_k = 0;
  const std::string grid = cuda::detail::gemm_plan_description(job);
  EXPECT_EQ(grid.find("stream-K"), std::string::npos) << grid;
  job.stream_k = 1;
  const std::string sk = cuda::detail::gemm_plan_description(job);
  EXPECT_NE(sk.find("stream-K"), std::string::npos) << sk;
  const std::size_t slot_pair = 2 * 16 * 128 * sizeof(float);  // two 16 x 128 f32 partial tiles
  const std::size_t bytes = cuda::detail::gemm_workspace_bytes(job);
  EXPECT_EQ(bytes % slot_pair, 0u) << sk;
  const std::size_t blocks = bytes / slot_pair;
  EXPECT_TRUE(blocks >= 132 && blocks <= 3 * 132) << blocks << " blocks: " << sk;  // 1-3 a SM
  EXPECT_NE(sk.find(std::to_string(blocks) + " blocks"), std::string::npos) << sk;
  job.wgmma = false;  // the mma.sync kernels: splits, whatever stream_k says
  const std::string mma = cuda::detail::gemm_plan_description(job);
  EXPECT_EQ(mma.find("stream-K"), std::string::npos) << mma;
#endif
}

// The groups the TMA kernel's consumers follow (gemm_tma.cuh: open_tile,
// follow, walk_on), played on the CPU with the same helpers for every group
// size the GEMM takes (multiples of 32, also not dividing 64 x tiles), split
// and rotation: at every k step the row constants in use are those of the
// step's group, read from a metadata slot the producer filled (slot 1 only
// when it loaded the tile's second group).
TEST(CudaGemmPlan, ConsumersFollowTheGroupOfEveryStep) {
  using cuda::detail::GroupCursor;
  using cuda::detail::GroupWindow;
  int checked = 0;
  for (const int G : {32, 64, 96, 128, 160, 256}) {
    for (int KB = 1; KB <= 11; ++KB) {
      const int groups = (KB * 64 + G - 1) / G;
      for (int per_split = 1; per_split <= KB; ++per_split) {
        for (int begin = 0; begin < KB; begin += per_split) {
          const int nk = std::min(KB, begin + per_split) - begin;
          for (int rot = 0; rot < nk; ++rot) {
            cuda::detail::TileWalk<5> walk(begin, nk, rot);
            GroupCursor cursor(walk.kb * 64, G);
            int loaded = -1;  // the group whose row constants the consumer holds
            for (int i = 0; i < nk; ++i) {
              const int kb = walk.kb, col = kb * 64;
              const GroupWindow win(kb, G);  // what the producer loaded: slot 0, and slot 1 if `two`
              const bool two = col + 48 >= win.next_start && win.ga + 1 < groups;
              for (int j = 0; j < 4; j += 2) {
                const std::string at = "G " + std::to_string(G) + ", " + std::to_string(KB) + " k tiles, split [" +
                                       std::to_string(begin) + ", " + std::to_string(begin + nk) + ") from " +
                                       std::to_string(rot) + ", tile " + std::to_string(kb) + " step " +
                                       std::to_string(j);
                if (cursor.advance(col + 16 * j, G)) {
                  ASSERT_TRUE(j == 0 || two) << at << ": slot 1 read, not loaded";
                  loaded = win.ga + (j == 0 ? 0 : 1);
                  ASSERT_EQ(cursor.group, loaded) << at;
                }
                for (int step = j; step < j + 2; ++step) {
                  ASSERT_EQ(loaded, (col + 16 * step) / G) << at << " (step " << step << ")";
                  ++checked;
                }
              }
              if (walk.next()) cursor = GroupCursor(walk.kb * 64, G);
            }
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 10000);
}

// The epilogue's exchange (cuda/fragment_pairs.hpp) played for a warp on the
// CPU, lane ^ 4 standing in for the shuffle: from the accumulator layout
// (lane (g, t) holds v[e] at column g + 8 (e >> 1), row 2t + (e & 1)) every
// lane ends with out[0..3] at (row, col), (row, col + 1), (row, col + 8),
// (row, col + 9) of pair_place, col even, and the warp stores each of the
// fragment's 16 x 8 outputs exactly once.
TEST(CudaGemmPlan, EpiloguePairsStoreEveryOutputOnce) {
  using cuda::detail::pair_keep;
  using cuda::detail::pair_place;
  using cuda::detail::pair_send;
  auto value = [](int row, int col) { return static_cast<float>(100 * row + col); };
  float v[32][4];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int e = 0; e < 4; ++e) v[lane][e] = value(2 * t + (e & 1), g + 8 * (e >> 1));
  }
  float sent[2][32];
  for (int k = 0; k < 2; ++k)
    for (int lane = 0; lane < 32; ++lane) sent[k][lane] = pair_send(v[lane], lane, k);
  int stored[8][16] = {};
  for (int lane = 0; lane < 32; ++lane) {
    float out[4];
    pair_keep(v[lane], sent[0][lane ^ 4], sent[1][lane ^ 4], lane, out);
    const auto at = pair_place(lane);
    ASSERT_EQ(at.col % 2, 0) << "lane " << lane;
    ASSERT_TRUE(at.row >= 0 && at.row < 8 && at.col >= 0 && at.col + 9 < 16) << "lane " << lane;
    for (int q = 0; q < 4; ++q) {
      const int row = at.row, col = at.col + (q & 1) + 8 * (q >> 1);
      EXPECT_EQ(out[q], value(row, col)) << "lane " << lane << ", out[" << q << "] at (" << row << ", " << col << ")";
      ++stored[row][col];
    }
  }
  for (int row = 0; row < 8; ++row)
    for (int col = 0; col < 16; ++col) EXPECT_EQ(stored[row][col], 1) << "(" << row << ", " << col << ")";
}

#if HQQ_TEST_CUDA_BUILT
// f16 activations with f16 metadata form the row constants in f16 arithmetic
// from the stored (scale, zero) word (row_consts_f16); every other case in
// f32 (row_consts_f32). The f16 way must give the f32 way's words for every
// f16 zero (all 65536 bit patterns) and a spread of scales (subnormal,
// tiny, ordinary, negative, the largest, inf), at every width: the same
// zb, zbs (the in-place subtrahend, cuda/row_consts.hpp) and s2,
// and the same m2 but for the sign of a zero m (zero -0) and which NaN (NaN
// zero). The f16 operations run here through cuda_fp16.h's host versions
// (f32 operation, one rounding to f16: the same result as the device's for
// these operands).
TEST(CudaGemmPlan, RowConstantsInF16AreTheF32Ones) {
  using cuda::detail::RowConstWords;
  using cuda::detail::row_consts_f16;
  using cuda::detail::row_consts_f32;
  auto f16_value = [](std::uint16_t bits) {
    __half h;
    std::memcpy(&h, &bits, 2);
    return __half2float(h);
  };
  auto half_of = [](std::uint32_t w, int hi) { return static_cast<std::uint16_t>(hi ? w >> 16 : w & 0xFFFFu); };
  const std::uint16_t scales[] = {0x0001, 0x03FF, 0x0400, 0x1A1F, 0x211F, 0x2E66, 0x3C00, 0x4B80,
                                  0x57FF, 0x7BFF, 0x7C00, 0xA51F, 0xBC00, 0x0000, 0x8000};
  int compared = 0, failures = 0;
  for (const std::uint16_t sb : scales) {
    const float s = f16_value(sb);
    for (std::uint32_t zb_bits = 0; zb_bits < 0x10000u; ++zb_bits) {
      const float z = f16_value(static_cast<std::uint16_t>(zb_bits));
      const std::uint32_t word = sb | (zb_bits << 16);
      auto check = [&](const RowConstWords& h, const RowConstWords& f, int nb) {
        ++compared;
        auto same = [&](std::uint32_t a, std::uint32_t b, const char* what) {
          if (a == b) return;
          if (++failures <= 10) {
            ADD_FAILURE() << nb << "-bit, scale " << s << " (0x" << std::hex << sb << "), zero " << z << " (0x"
                          << zb_bits << "): " << what << " f16 way 0x" << a << ", f32 way 0x" << b << std::dec;
          }
        };
        same(h.zb, f.zb, "zb");
        same(h.zbs, f.zbs, "zbs");
        same(h.s2, f.s2, "s2");
        for (int hi = 0; hi < 2; ++hi) {
          const float a = f16_value(half_of(h.m2, hi)), b = f16_value(half_of(f.m2, hi));
          const bool ok = std::isnan(z) ? std::isnan(a) && std::isnan(b)
                          : z == 0.0f   ? a == b
                                        : half_of(h.m2, hi) == half_of(f.m2, hi);
          if (!ok) same(h.m2, f.m2, "m2");
        }
      };
      check(row_consts_f16<8>(word), row_consts_f32<8, __half>(s, z), 8);
      check(row_consts_f16<4>(word), row_consts_f32<4, __half>(s, z), 4);
      check(row_consts_f16<3>(word), row_consts_f32<3, __half>(s, z), 3);
      check(row_consts_f16<2>(word), row_consts_f32<2, __half>(s, z), 2);
      check(row_consts_f16<1>(word), row_consts_f32<1, __half>(s, z), 1);
    }
  }
  EXPECT_EQ(failures, 0) << "of " << compared << " (scale, zero, width) cases";
  EXPECT_EQ(compared, 5 * 65536 * static_cast<int>(std::size(scales)));
}

// The kernels' own dequantization (cuda/dequant.hpp: dequant_fragment and
// RowConsts, the code that runs in both GEMM kernels), run on the CPU through
// its exact host model of fma.rn.f16x2/bf16x2, lop3 and prmt, for every width,
// both activation types and the three ways the constants are formed (f32
// metadata; f16 metadata with f16 activations in f16 arithmetic; f16
// metadata with bf16 activations through f32). Each lane's words come from
// the layout's encoder (gemm_encode_lane) and its rows' constants from
// row_consts_of, as set_row_pair forms them. Every code c of every lane
// must come out, in register (c % 8) / 2 of step c / 8, half c % 2, as
//   (1) the bits of (q - zi) * s + m rounded once to the activation type,
//       with zi, s and m read back from the row's constants (the one
//       rounding the math promises: checks the extraction, the magic and the
//       in-place reads of rows g + 8), and
//   (2) within the a-priori bound of w = (q - z) * s: half an ulp of w, an
//       ulp of m and |q - zi| half-ulps of s (checks that the constants
//       belong to this row's scale and zero),
// for random codes (and all-zero and all-largest tiles), scales over many
// magnitudes and both signs, zeros inside and far outside the code range
// (clamped zi) and on ties.
namespace dq {
using cuda::detail::RowConsts;
using cuda::detail::RowConstWords;
namespace exact = cuda::detail::exact;

template <typename T>
struct Tag {
  using type = T;
};

template <int NB, typename T, typename MetaT>
int check_width(std::mt19937& rng, int tiles, int* compared) {
  constexpr bool kF32 = cuda::detail::kF32Route<NB, T>;
  const double magic = cuda::detail::Magic<T>::kMagicF;
  const int top = (1 << NB) - 1;
  int failures = 0;
  std::uniform_int_distribution<int> code(0, top);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  auto random_scale = [&] {
    const double mag = std::ldexp(1.0 + unit(rng), static_cast<int>(unit(rng) * 17.0) - 13);  // 2^-13 .. 2^4
    return unit(rng) < 0.2 ? -mag : mag;
  };
  auto random_zero = [&] {
    const double u = unit(rng);
    if (u < 0.1) return std::round(unit(rng) * top) + 0.5;  // a tie
    if (u < 0.2) return std::round(unit(rng) * top);          // an integer
    if (u < 0.3) return (unit(rng) < 0.5 ? -1.0 : 1.0) * (600.0 + unit(rng) * 4000.0);  // past the clamp
    return -0.5 * top + 2.0 * top * unit(rng);
  };
  for (int tile = 0; tile < tiles; ++tile) {
    // Scale and zero of the tile's 16 rows, as the metadata type holds them.
    cuda::detail::MetaPair<MetaT> meta[16];
    double s_true[16], z_true[16];
    for (int r = 0; r < 16; ++r) {
      const float s = static_cast<float>(random_scale()), z = static_cast<float>(random_zero());
      if constexpr (std::is_same_v<MetaT, float>) {
        meta[r] = float2{s, z};
        s_true[r] = s;
        z_true[r] = z;
      } else {
        const __half2 h = __floats2half2_rn(s, z);
        std::memcpy(&meta[r], &h, 4);
        s_true[r] = __low2float(h);
        z_true[r] = __high2float(h);
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      std::uint8_t codes[32];
      for (int c = 0; c < 32; ++c) {
        codes[c] = static_cast<std::uint8_t>(tile == 0 ? 0 : tile == 1 ? top : code(rng));
      }
      std::uint32_t wq[NB];
      ::hqq::detail::gemm_encode_lane(codes, NB, wq);
      const int g = lane >> 2;
      RowConsts<NB, T> rc[2];
      RowConstWords words[2];
      for (int h = 0; h < 2; ++h) {
        words[h] = cuda::detail::row_consts_of<NB, T, MetaT>(meta[g + 8 * h]);
        rc[h].take(words[h]);
      }
      for (int j = 0; j < 4; ++j) {
        std::uint32_t a[4];
        cuda::detail::dequant_fragment<NB, T>(a, rc, wq, j);
        for (int c = 8 * j; c < 8 * j + 8; ++c) {
          ++*compared;
          const int row = ::hqq::detail::gemm_code_row(lane, c), h = row >= 8 ? 1 : 0;
          const RowConstWords& w = words[h];
          const std::uint16_t got = static_cast<std::uint16_t>(a[(c % 8) / 2] >> (16 * (c % 2)));
          // (1) One rounding of (q - zi) * s + m, with the row's own constants.
          const double zi = kF32 ? static_cast<double>(cuda::detail::float_of(w.zb)) - 8388608.0
                                 : exact::value<T>(static_cast<std::uint16_t>(w.zb)) - magic;
          const double sT = exact::value<T>(static_cast<std::uint16_t>(w.s2));
          const double mT = exact::value<T>(static_cast<std::uint16_t>(w.m2));
          const double q = codes[c];  // (q - zi) * sT is exact: |q - zi| < 2^12, s has at most 11 bits
          const std::uint16_t want = exact::round_sum<T>((q - zi) * sT, mT);
          const double got_v = exact::value<T>(got), want_v = exact::value<T>(want);
          const bool same = std::isnan(want_v) ? std::isnan(got_v) : got == want;
          // (2) Near the true weight, where nothing overflowed.
          const double wt = (q - z_true[row]) * s_true[row];
          const double bound = 0.5 * exact::spacing<T>(want_v) + exact::spacing<T>(mT) +
                               std::fabs(q - zi) * 0.5 * exact::spacing<T>(sT);
          const bool near = !std::isfinite(want_v) || !std::isfinite(mT) || std::fabs(got_v - wt) <= bound;
          if (!(same && near) && ++failures <= 8) {
            ADD_FAILURE() << NB << "-bit, lane " << lane << ", code " << c << " (row " << row << ", q " << q
                          << "), scale " << s_true[row] << ", zero " << z_true[row] << ": got " << got_v << " (0x"
                          << std::hex << got << "), one rounding of (q - zi) s + m gives " << want_v << " (0x"
                          << want << std::dec << "), true " << wt << " +- " << bound;
          }
        }
      }
    }
  }
  return failures;
}
}  // namespace dq

TEST(CudaGemmPlan, DequantFragmentsHoldEachCodesWeightRoundedOnce) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  constexpr int kTiles = 40;
  int compared = 0, failures = 0;
  auto widths = [&](auto t, auto mt) {
    using T = typename decltype(t)::type;
    using MetaT = typename decltype(mt)::type;
    failures += dq::check_width<8, T, MetaT>(rng, kTiles, &compared);
    failures += dq::check_width<4, T, MetaT>(rng, kTiles, &compared);
    failures += dq::check_width<3, T, MetaT>(rng, kTiles, &compared);
    failures += dq::check_width<2, T, MetaT>(rng, kTiles, &compared);
    failures += dq::check_width<1, T, MetaT>(rng, kTiles, &compared);
  };
  widths(dq::Tag<__half>{}, dq::Tag<__half>{});
  widths(dq::Tag<__half>{}, dq::Tag<float>{});
  widths(dq::Tag<__nv_bfloat16>{}, dq::Tag<__half>{});
  widths(dq::Tag<__nv_bfloat16>{}, dq::Tag<float>{});
  EXPECT_EQ(failures, 0) << "of " << compared << " codes";
  EXPECT_EQ(compared, 4 * 5 * kTiles * 32 * 32);
}

// The host model of the f16/bf16 fused multiply-add that the test above runs
// the dequantization on: one rounding to nearest-even of the exact result.
// Hand-worked cases: just below and just past ties (one where rounding the
// f32 result first would give the other answer), ties to even, the
// subnormal spacing, overflow to infinity and the signs of zero.
TEST(CudaGemmPlan, HostFusedMultiplyAddRoundsOnce) {
  namespace exact = cuda::detail::exact;
  auto h = [](float f) { return exact::bits_of<__half>(f); };
  auto b = [](float f) { return exact::bits_of<__nv_bfloat16>(f); };
  auto hv = [](std::uint16_t x) { return exact::value<__half>(x); };
  auto bv = [](std::uint16_t x) { return exact::value<__nv_bfloat16>(x); };
  // 1 + 2^-11 is the tie between 1 and 1 + 2^-10: to even, 1.
  const std::uint16_t one_plus = h(1.0f + std::ldexp(1.0f, -10));
  EXPECT_EQ(exact::fma<__half>(h(1.0f), h(1.0f), h(std::ldexp(1.0f, -11))), h(1.0f));
  // (1 + 2^-10)(1 - 2^-11) = 1 + 2^-11 - 2^-21, just below the tie: 1; with 2^-20 added, just past it.
  const std::uint16_t a = one_plus, b1 = h(1.0f - std::ldexp(1.0f, -11));
  EXPECT_EQ(exact::fma<__half>(a, b1, 0), h(1.0f));
  EXPECT_EQ(exact::fma<__half>(a, b1, h(std::ldexp(1.0f, -20))), one_plus);
  // 683 * 3 = 2049, the tie between 2048 and 2050 (to even: 2048). 2049 + 2^-13 is past it: 2050,
  // where rounding to f32 first (2^-13 is half of f32's spacing at 2048: back to 2049) gives 2048.
  EXPECT_EQ(hv(exact::fma<__half>(h(683.0f), h(3.0f), 0)), 2048.0);
  EXPECT_EQ(hv(exact::fma<__half>(h(683.0f), h(3.0f), h(std::ldexp(1.0f, -13)))), 2050.0);
  EXPECT_EQ(hv(exact::fma<__half>(h(683.0f), h(3.0f), h(-std::ldexp(1.0f, -13)))), 2048.0);
  // Subnormals: 2^-24 is the spacing; 2^-25 is a tie (to even: 0), 3 * 2^-25 rounds to 2 * 2^-24.
  EXPECT_EQ(hv(exact::fma<__half>(h(std::ldexp(1.0f, -13)), h(std::ldexp(1.0f, -12)), 0)), 0.0);
  EXPECT_EQ(hv(exact::fma<__half>(h(std::ldexp(3.0f, -13)), h(std::ldexp(1.0f, -12)), 0)), std::ldexp(1.0, -23));
  // Overflow: 65504 + 16 is the tie to 65536 (even): infinity; + 15 stays 65504.
  EXPECT_TRUE(std::isinf(hv(exact::fma<__half>(h(65504.0f), h(1.0f), h(16.0f)))));
  EXPECT_EQ(hv(exact::fma<__half>(h(65504.0f), h(1.0f), h(15.0f))), 65504.0);
  // Zero signs: x - x is +0; -0 * 1 + -0 is -0; NaN in, NaN out.
  EXPECT_EQ(exact::fma<__half>(h(3.0f), h(1.0f), h(-3.0f)), 0x0000);
  EXPECT_EQ(exact::fma<__half>(h(-0.0f), h(1.0f), h(-0.0f)), 0x8000);
  EXPECT_TRUE(std::isnan(hv(exact::fma<__half>(h(NAN), h(1.0f), 0))));
  // bf16 (8 significant bits): 1 + 2^-8 is the tie between 1 and 1 + 2^-7.
  const std::uint16_t bp = b(1.0f + std::ldexp(1.0f, -7));
  EXPECT_EQ(exact::fma<__nv_bfloat16>(b(1.0f), b(1.0f), b(std::ldexp(1.0f, -8))), b(1.0f));
  // (1 + 2^-7)(1 - 2^-8) = 1 + 2^-8 - 2^-15: below the tie, 1; with 2^-14 added, past it.
  EXPECT_EQ(exact::fma<__nv_bfloat16>(bp, b(1.0f - std::ldexp(1.0f, -8)), 0), b(1.0f));
  EXPECT_EQ(exact::fma<__nv_bfloat16>(bp, b(1.0f - std::ldexp(1.0f, -8)), b(std::ldexp(1.0f, -14))), bp);
  EXPECT_EQ(bv(exact::fma<__nv_bfloat16>(b(3.0f), b(-7.0f), b(0.5f))), -20.5);
  // 1.75 * (37 / 64) = 1 + 3 * 2^-8, the tie between 1 + 2^-7 and 1 + 2^-6 (to even: 1 + 2^-6); with
  // -2^-100 added (the sum is no double: the rounding's tail decides), just below it: 1 + 2^-7.
  EXPECT_EQ(bv(exact::fma<__nv_bfloat16>(b(1.75f), b(37.0f / 64.0f), 0)), 1.015625);
  EXPECT_EQ(bv(exact::fma<__nv_bfloat16>(b(1.75f), b(37.0f / 64.0f), b(-std::ldexp(1.0f, -100)))), 1.0078125);
  EXPECT_EQ(bv(exact::fma<__nv_bfloat16>(b(1.75f), b(37.0f / 64.0f), b(std::ldexp(1.0f, -100)))), 1.015625);
}
#endif

// The same x gives the same y bits, run after run (the split-K reduction is
// ordered, no atomics), whatever the tile and split.
TEST_F(CudaGemm, Deterministic) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  struct Case {
    std::int64_t N, K, M;
  };
  for (const Case c : {Case{64, 8192, 16}, Case{64, 8192, 100}, Case{300, 512, 257}, Case{300, 1024, 33}}) {
    const QuantizedTensor q = random_weight(c.N, c.K, 4, 64, DType::kF16, rng);
    const QuantizedLinear layer(q, {}, cuda_options());
    for (DType xt : kHalfDtypes) {
      const Typed x = typed(normal(static_cast<std::size_t>(c.M * c.K), rng), xt, {c.M, c.K});
      for (DType yt : {DType::kF32, xt}) {
        for (const auto& [o, name] : forced_kernels(layer)) {
          const std::vector<std::uint8_t> a = gpu_forward_bytes(layer, x, c.M, yt, o);
          const std::vector<std::uint8_t> b = gpu_forward_bytes(layer, x, c.M, yt, o);
          EXPECT_TRUE(a == b) << shape_name(c.N, c.K) << " M = " << c.M << ", x " << dtype_name(xt) << ", y "
                              << dtype_name(yt) << ", " << name << ": two runs differ";
        }
      }
    }
  }
}

// x of any rank (M = product of the leading dimensions) and M = 0.
TEST_F(CudaGemm, BatchedShapesAndEmptyBatch) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), seed);
  const std::vector<float> W = dequantized(q);
  const QuantizedLinear layer(q, {}, cuda_options());
  for (DType t : kHalfDtypes) {
    const Typed x3 = typed(normal(static_cast<std::size_t>(2 * 9 * K), rng), t, {2, 9, K});
    const std::vector<double> ref = reference(W, N, K, x3.values, 18, {});
    const RowError e = row_error_l2(gpu_forward(layer, x3, 18, t, kTensorCore, {2, 9, N}), ref, 18, N);
    EXPECT_LE(e.err, gemm_tolerance(t, t)) << "x [2, 9, K], " << dtype_name(t) << ": " << e.str();
  }
  for (const ForwardOptions& o : {kTensorCore, kMmaSync}) {
    EXPECT_NO_THROW(layer.forward(TensorView{nullptr, {0, K}, DType::kF16}, MutableTensorView{nullptr, {0, N}}, o));
  }
}

/// The weight the kernel should form for code c of group g in activation type
/// t, per its documented arithmetic (verbose diagnostics only: the checks use
/// the bound, not this): R_t((c - zi) R_t(s) + R_t(-(z - zi) s)).
float emulated_weight(const QuantizedTensor& q, std::uint8_t c, std::size_t g, DType t) {
  const float s = q.scale[g], z = q.zero[g], zi = kernel_zi(z, t, q.nbits);
  const float m = -((z - zi) * s);
  const double v = (static_cast<double>(c) - zi) * round_to(t, s) + round_to(t, m);  // exact in double
  return round_to(t, static_cast<float>(v));  // (a double rounding through f32: rare ties may differ)
}

// With x the identity (one-hot rows), y[k, n] is exactly the weight the
// kernel multiplies (one nonzero product per output, accumulated in f32):
// every weight must be within u_T * E_T of (q - z) * s, which catches one
// wrong code, group, row or padding mistake anywhere (an error of a whole
// step s) where the statistical checks can miss it. Odd N, K % 64 == 32,
// every width, f16/f32/bf16 metadata, f16 and bf16 x, both kernels over all of
// K, and the 16- and 64-row tiles (split K) over the first and last k tiles.
TEST_F(CudaGemm, OneHotRowsGiveBackEveryWeight) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  struct Case {
    int nbits;
    std::int64_t N, K, G;
    DType sdt;
  };
  const Case cases[] = {{8, 129, 96, 32, DType::kF16},  {3, 129, 96, 32, DType::kF16},  {4, 300, 480, 32, DType::kF16},
                        {2, 300, 480, 32, DType::kF32}, {1, 8, 1056, 32, DType::kF16},  {4, 7, 512, 64, DType::kF32},
                        {8, 1, 1024, 128, DType::kBF16}, {3, 40, 1056, 32, DType::kF32}, {4, 130, 384, 128, DType::kF16},
                        {1, 1, 1024, 128, DType::kF16}, {8, 130, 384, 128, DType::kF32}, {2, 64, 4160, 64, DType::kF16},
                        {4, 40, 480, 96, DType::kF16},  {2, 24, 960, 160, DType::kF32}};
  for (const Case& c : cases) {
    const std::string what = case_name(c.nbits, c.G) + " " + shape_name(c.N, c.K) + " scale " +
                             std::string(dtype_name(c.sdt));
    const Weight w = weight_of(random_weight(c.N, c.K, c.nbits, c.G, c.sdt, rng));
    const QuantizedLinear layer(w.q, {}, cuda_options());
    const std::vector<std::uint8_t> codes = unpack_codes(w.q);
    const std::int64_t N = c.N, K = c.K;
    for (DType xt : kHalfDtypes) {
      const double u = 1.01 * unit_roundoff(xt);
      // Rows k0 .. k0 + M - 1 of the identity, through kernel o; checks y[i, n] = w[n, k0 + i].
      auto check = [&](std::int64_t k0, std::int64_t M, const ForwardOptions& o, const char* name) {
        std::vector<float> v(static_cast<std::size_t>(M * K), 0.0f);
        for (std::int64_t i = 0; i < M; ++i) v[static_cast<std::size_t>(i * K + k0 + i)] = 1.0f;
        const Typed x = typed(v, xt, {M, K});
        const std::vector<float> y = gpu_forward(layer, x, M, DType::kF32, o);
        std::int64_t outside = 0, differ = 0;
        double ratio = 0;
        for (std::int64_t i = 0; i < M; ++i) {
          for (std::int64_t n = 0; n < N; ++n) {
            const std::size_t wi = static_cast<std::size_t>(n * K + k0 + i);
            const float got = y[static_cast<std::size_t>(i * N + n)], want = w.W[wi];
            const double d = std::fabs(static_cast<double>(got) - want), bound = u * w.E(xt)[wi];
            if (bound > 0) ratio = std::max(ratio, d / bound);
            const std::size_t g = wi / static_cast<std::size_t>(c.G);
            if (verbose() && float_bits(got) != float_bits(emulated_weight(w.q, codes[wi], g, xt))) ++differ;
            if (!(d <= bound) && ++outside <= 4) {
              ADD_FAILURE() << what << ", x " << dtype_name(xt) << ", " << name << ", M = " << M << ": weight (" << n
                            << ", " << k0 + i << ") is " << got << ", want " << want << " (code "
                            << static_cast<int>(codes[wi]) << ", scale " << w.q.scale[g] << ", zero " << w.q.zero[g]
                            << ", group " << g % static_cast<std::size_t>(K / c.G) << "), off by " << d
                            << " > bound " << bound;
            }
          }
        }
        EXPECT_EQ(outside, 0) << what << ", x " << dtype_name(xt) << ", " << name << ", rows " << k0 << " .. "
                              << k0 + M - 1 << ": weights outside the bound";
        if (verbose()) {
          std::cout << "[ weights ] " << what << ", x " << dtype_name(xt) << ", " << name << ", M = " << M
                    << ": worst |dw| / bound " << ratio << ", " << differ << " differ from the emulated rounding\n";
        }
      };
      check(0, K, kTensorCore, "kTensorCore");
      check(0, K, kMmaSync, "kTensorCoreMmaSync");
      const bool tma = layer.supports(LinearKernelChoice::kTensorCoreTma);
      if (tma) check(0, K, kTma, "kTensorCoreTma");
      for (std::int64_t M : {16, 64}) {
        check(0, std::min(M, K), kTensorCore, "kTensorCore");
        check(K - std::min(M, K), std::min(M, K), kTensorCore, "kTensorCore");
        if (tma) check(K - std::min(M, K), std::min(M, K), kTma, "kTensorCoreTma");
      }
    }
  }
}

// ============================================================ kernel choice

// kAuto runs the GEMM from tensor_core_min_m() rows on for f16/bf16 x (the
// same bits as kTensorCore) and the GEMV below it and for f32 x (the same
// bits as kGemv); layers on the dense path have no tensor-core kernel.
TEST_F(CudaGemm, AutoPicksTheGemmFromTensorCoreMinM) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 300, K = 512;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), seed);
  const QuantizedLinear layer(q, {}, cuda_options());
  const std::int64_t min_m = layer.tensor_core_min_m();
  ASSERT_GT(min_m, 0) << "a packed layer on " << cuda::device_description() << " has no tensor-core crossover";
  auto same = [&](std::int64_t M, DType xt, DType yt, const ForwardOptions& like, const char* like_name) {
    const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), xt, {M, K});
    const auto a = gpu_forward_bytes(layer, x, M, yt, kAuto);
    const auto b = gpu_forward_bytes(layer, x, M, yt, like);
    EXPECT_TRUE(a == b) << "kAuto differs from " << like_name << " at M = " << M << " (tensor_core_min_m = " << min_m
                        << "), x " << dtype_name(xt) << ", y " << dtype_name(yt);
  };
  for (DType xt : kHalfDtypes) {
    // min_m + 37 and past 64 rows: the TMA kernels on sm_90 (mma.sync elsewhere).
    for (std::int64_t M : {min_m, min_m + 1, min_m + 37, std::max<std::int64_t>(min_m, 64) + 36}) {
      same(M, xt, DType::kF32, kTensorCore, "kTensorCore");
    }
    same(min_m, xt, xt, kTensorCore, "kTensorCore");
    if (min_m > 1) same(min_m - 1, xt, DType::kF32, kGemv, "kGemv");
    if (min_m > 1) same(1, xt, xt, kGemv, "kGemv");
  }
  same(min_m + 1, DType::kF32, DType::kF32, kGemv, "kGemv");
  same(3 * min_m + 5, DType::kF32, DType::kF16, kGemv, "kGemv");

  // The dense path: no tensor-core kernel, kAuto is the GEMV.
  const QuantizedTensor qd = quantized_weight(40, 384, config(4, 48), seed + 1);
  const QuantizedLinear dense(qd, {}, cuda_options());
  ASSERT_EQ(dense.path(), LinearPath::kDense);
  EXPECT_EQ(dense.tensor_core_min_m(), 0);
  const Typed x = typed(normal(64 * 384, rng), DType::kF16, {64, 384});
  EXPECT_TRUE(gpu_forward_bytes(dense, x, 64, DType::kF32, kAuto) == gpu_forward_bytes(dense, x, 64, DType::kF32, kGemv))
      << "dense path, M = 64";
}

// ============================================================ errors

/// y (dtype yt, [M, N]) poisoned with 0xFF; forward with x uploaded `offset`
/// bytes into a larger device buffer. Returns y's bytes (guard checked).
/// forward() with x `x_offset` bytes and y `y_offset` bytes into their
/// buffers; y's bytes, checked untouched around it.
std::vector<std::uint8_t> forward_at_offset(const QuantizedLinear& layer, const Typed& x, std::int64_t M, DType yt,
                                            const ForwardOptions& options, std::size_t x_offset,
                                            std::size_t y_offset = 0) {
  const std::int64_t N = layer.out_features();
  DeviceBuffer dx(x.bytes.size() + 64);
  dx.upload(x.bytes.data(), x.bytes.size(), x_offset);
  const std::size_t es = dtype_size(yt), used = static_cast<std::size_t>(M * N) * es;
  DeviceBuffer dy(y_offset + used + kGpuGuard * es);
  dy.fill(0xFF);
  layer.forward(TensorView{static_cast<char*>(dx.data()) + x_offset, x.shape, x.dtype},
                MutableTensorView{static_cast<char*>(dy.data()) + y_offset, {M, N}, yt}, options);
  std::vector<std::uint8_t> out = dy.to_vector<std::uint8_t>();
  EXPECT_TRUE(std::all_of(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(y_offset),
                          [](std::uint8_t b) { return b == 0xFF; }))
      << "forward wrote before the " << M << " x " << N << " outputs";
  EXPECT_TRUE(std::all_of(out.begin() + static_cast<std::ptrdiff_t>(y_offset + used), out.end(),
                          [](std::uint8_t b) { return b == 0xFF; }))
      << "forward wrote past the " << M << " x " << N << " outputs";
  return {out.begin() + static_cast<std::ptrdiff_t>(y_offset), out.begin() + static_cast<std::ptrdiff_t>(y_offset + used)};
}

bool all_poisoned(const std::vector<std::uint8_t>& bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](std::uint8_t b) { return b == 0xFF; });
}

// kTensorCore (and kTensorCoreMmaSync, kTensorCoreTma) that cannot run throws
// hqq::Error saying why, before any kernel writes y: f32 x, a dense-path layer
// (axis 0, group not a multiple of 32), x not 16-byte aligned.
TEST_F(CudaGemm, TensorCoreRefusesWhatItCannotRun) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024, M = 32;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), seed);
  const QuantizedLinear layer(q, {}, cuda_options());
  const std::int64_t yn = M * N;
  DeviceBuffer dy(static_cast<std::size_t>(yn) * 4);
  auto y_untouched = [&] { return all_poisoned(dy.to_vector<std::uint8_t>()); };

  // f32 activations.
  {
    const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), DType::kF32, {M, K});
    DeviceBuffer dx = DeviceBuffer::from(x.bytes);
    dy.fill(0xFF);
    for (const ForwardOptions& o : {kTensorCore, kMmaSync, kTma}) {
      auto run = [&] {
        layer.forward(TensorView{dx.data(), {M, K}, DType::kF32}, MutableTensorView{dy.data(), {M, N}}, o);
      };
      EXPECT_THROW(run(), Error);
      EXPECT_THAT(error_of(run), HasSubstr("f16 or bf16"));
      EXPECT_TRUE(y_untouched()) << "f32 x";
    }
  }

  // Dense-path layers: axis 0, group 48.
  for (const QuantConfig& cfg : {config(4, 64, 0), config(4, 48)}) {
    const std::int64_t Kd = 384;
    const QuantizedTensor qd = quantized_weight(N, Kd, cfg, seed + 1);
    const QuantizedLinear dense(qd, {}, cuda_options());
    ASSERT_EQ(dense.path(), LinearPath::kDense);
    EXPECT_EQ(dense.tensor_core_min_m(), 0);
    const Typed x = typed(normal(static_cast<std::size_t>(M * Kd), rng), DType::kF16, {M, Kd});
    DeviceBuffer dx = DeviceBuffer::from(x.bytes);
    dy.fill(0xFF);
    for (const ForwardOptions& o : {kTensorCore, kMmaSync, kTma}) {
      auto run = [&] {
        dense.forward(TensorView{dx.data(), {M, Kd}, DType::kF16}, MutableTensorView{dy.data(), {M, N}}, o);
      };
      EXPECT_THROW(run(), Error);
      EXPECT_THAT(error_of(run), HasSubstr("packed path"));
      EXPECT_TRUE(y_untouched()) << "dense path, axis " << cfg.axis << ", group " << cfg.group_size;
    }
  }

  // x 2 bytes past a 16-byte boundary (element-aligned, so the GEMV can take it).
  for (DType xt : kHalfDtypes) {
    const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), xt, {M, K});
    DeviceBuffer dx(x.bytes.size() + 16);
    dx.upload(x.bytes.data(), x.bytes.size(), 2);
    dy.fill(0xFF);
    for (const ForwardOptions& o : {kTensorCore, kMmaSync, kTma}) {
      auto run = [&] {
        layer.forward(TensorView{static_cast<char*>(dx.data()) + 2, {M, K}, xt}, MutableTensorView{dy.data(), {M, N}},
                      o);
      };
      EXPECT_THROW(run(), Error);
      EXPECT_THAT(error_of(run), HasSubstr("16-byte aligned"));
      EXPECT_TRUE(y_untouched()) << "misaligned " << dtype_name(xt) << " x";
    }
  }
}

// Where kTensorCore refuses an unaligned x, kAuto takes the GEMV (its bounds);
// an x 16 bytes into a buffer is aligned and gives the GEMM the same bits.
TEST_F(CudaGemm, UnalignedXTakesTheGemvUnderAuto) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), seed);
  const std::vector<float> W = dequantized(q);
  const QuantizedLinear layer(q, {}, cuda_options());
  for (DType xt : kHalfDtypes) {
    for (std::int64_t M : {16, 100}) {
      const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), xt, {M, K});
      const std::vector<double> ref = reference(W, N, K, x.values, M, {});
      const auto y2 = forward_at_offset(layer, x, M, DType::kF32, kAuto, 2);
      const RowError e = row_error(decode_floats(y2.data(), y2.size(), DType::kF32), ref, M, N);
      EXPECT_LE(e.err, tolerance(DType::kF32)) << "x " << dtype_name(xt) << " at +2 bytes, M = " << M
                                               << " (the GEMV's bound): " << e.str();
      for (const auto& [o, name] : forced_kernels(layer)) {
        EXPECT_TRUE(forward_at_offset(layer, x, M, DType::kF32, o, 16) == gpu_forward_bytes(layer, x, M, DType::kF32, o))
            << "x " << dtype_name(xt) << " at +16 bytes, M = " << M << ", " << name;
      }
    }
  }
}

// y need only be aligned to its element: the GEMM stores two outputs at a
// time where N is even and y's rows are aligned to two elements, else one at
// a time. A y one element into its buffer (odd row starts) gives the same
// bits as an aligned one, whatever the split, with and without bias, every
// y dtype and kernel, nothing written around it.
TEST_F(CudaGemm, YOneElementIntoItsBufferGivesTheSameBits) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t K = 1024;
  for (const std::int64_t N : {std::int64_t{256}, std::int64_t{130}}) {
    const QuantizedTensor q = quantized_weight(N, K, config(4, 64), seed);
    const Typed bias = typed(normal(static_cast<std::size_t>(N), rng, 0.5f), DType::kF32, {N});
    const QuantizedLinear plain(q, {}, cuda_options());
    const QuantizedLinear biased(q, bias.view(), cuda_options());
    for (const std::int64_t M : {std::int64_t{16}, std::int64_t{77}, std::int64_t{300}}) {
      const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), DType::kF16, {M, K});
      for (DType yt : {DType::kF16, DType::kBF16, DType::kF32}) {
        const QuantizedLinear& layer = M == 77 ? biased : plain;
        for (const auto& [o, name] : forced_kernels(layer)) {
          const auto aligned = forward_at_offset(layer, x, M, yt, o, 0, 0);
          const auto shifted = forward_at_offset(layer, x, M, yt, o, 0, dtype_size(yt));
          EXPECT_FALSE(all_poisoned(aligned)) << name;
          EXPECT_TRUE(shifted == aligned) << "y " << dtype_name(yt) << " one element in, M = " << M << ", N = " << N
                                          << (M == 77 ? ", bias" : "") << ", " << name;
        }
      }
    }
  }
}

// kTensorCoreTma runs exactly where the build holds the sm_90a kernels and
// the device is sm_90: there kTensorCore runs the same kernels (every GEMM
// check above, beside mma.sync; a Hopper run that silently left the TMA
// kernels out fails here) and gives the same bits; elsewhere it is
// refused before y is written, naming what is missing. The choices the layer
// reports as supported agree with what forward() does.
TEST_F(CudaGemm, TmaKernelsWhereverTheBuildAndDeviceHaveThem) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024, M = 32;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), seed);
  const QuantizedLinear layer(q, {}, cuda_options());
#ifdef HQQ_TEST_WGMMA_BUILT
  const bool built = true;
#else
  const bool built = false;
#endif
  const bool expected = built && cc() == 90;
  EXPECT_EQ(layer.supports(LinearKernelChoice::kTensorCoreTma), expected)
      << "device " << cuda::device_description() << ", sm_90a kernels built: " << built;
  EXPECT_TRUE(layer.supports(LinearKernelChoice::kTensorCore));
  EXPECT_TRUE(layer.supports(LinearKernelChoice::kTensorCoreMmaSync));
  EXPECT_TRUE(layer.supports(LinearKernelChoice::kGemv));
  EXPECT_TRUE(layer.supports(LinearKernelChoice::kAuto));
  const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), DType::kF16, {M, K});
  if (expected) {
    check_gemm(layer, weight_of(q), {}, M, DType::kF16, DType::kF16, rng, "4bit_g64 " + shape_name(N, K));
    for (const std::int64_t m : {M, std::int64_t{300}}) {
      const Typed xm = typed(normal(static_cast<std::size_t>(m * K), rng), DType::kF16, {m, K});
      EXPECT_TRUE(gpu_forward_bytes(layer, xm, m, DType::kF16, kTma) ==
                  gpu_forward_bytes(layer, xm, m, DType::kF16, kTensorCore))
          << "kTensorCoreTma and kTensorCore differ on sm_90 at M = " << m;
    }
  } else {
    const DeviceBuffer dx = DeviceBuffer::from(x.bytes);
    DeviceBuffer dy(static_cast<std::size_t>(M * N) * 2);
    dy.fill(0xFF);
    auto run = [&] {
      layer.forward(TensorView{dx.data(), {M, K}, DType::kF16}, MutableTensorView{dy.data(), {M, N}, DType::kF16},
                    kTma);
    };
    EXPECT_THROW(run(), Error);
    EXPECT_THAT(error_of(run), HasSubstr("sm_90"));
    EXPECT_TRUE(all_poisoned(dy.to_vector<std::uint8_t>())) << "kTensorCoreTma refused, but y was written";
  }
  // The dense path supports no tensor-core choice.
  const QuantizedLinear dense(quantized_weight(N, 384, config(4, 48), seed + 1), {}, cuda_options());
  ASSERT_EQ(dense.path(), LinearPath::kDense);
  for (const LinearKernelChoice k : {LinearKernelChoice::kTensorCore, LinearKernelChoice::kTensorCoreMmaSync,
                                     LinearKernelChoice::kTensorCoreTma}) {
    EXPECT_FALSE(dense.supports(k)) << "dense path, choice " << static_cast<int>(k);
  }
}

// LinearOptions::device_layouts = kTensorCoreOnly keeps only the fragment
// layout: the layer holds exactly the GEMV's chunk layout (codes and
// metadata) fewer device bytes, gives the same bits as a kAll layer wherever
// the GEMM runs, and refuses every call that needs the GEMV (kGemv, f32 x,
// unaligned x, f16 x on a layer past the f16 range), saying why, before y is
// written. The dense path keeps what it has.
TEST_F(CudaGemm, TensorCoreOnlyLayoutsKeepHalfTheMemory) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 300, K = 512;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), seed);
  const Typed bias = typed(normal(static_cast<std::size_t>(N), rng, 0.5f), DType::kF32, {N});
  LinearOptions tc_options = cuda_options();
  tc_options.device_layouts = DeviceLayouts::kTensorCoreOnly;
  const QuantizedLinear all(q, bias.view(), cuda_options());
  const QuantizedLinear tc(q, bias.view(), tc_options);
  const detail::LinearLayout& L = all.layout();
  const auto chunk = static_cast<std::int64_t>(L.codes.size() * sizeof(std::uint32_t) + L.meta.size());
  EXPECT_EQ(all.device_bytes() - tc.device_bytes(), chunk) << "kAll " << all.device_bytes() << " bytes, kTensorCoreOnly "
                                                           << tc.device_bytes();
  EXPECT_GT(tc.device_bytes(), static_cast<std::int64_t>(N * K / 2)) << "the 4-bit codes alone take N K / 2 bytes";
  EXPECT_TRUE(all.supports(LinearKernelChoice::kGemv));
  EXPECT_FALSE(tc.supports(LinearKernelChoice::kGemv));
  EXPECT_TRUE(tc.supports(LinearKernelChoice::kTensorCore));
  const std::int64_t min_m = tc.tensor_core_min_m();
  ASSERT_GT(min_m, 0);
  for (DType xt : kHalfDtypes) {
    for (std::int64_t M : {min_m, std::max<std::int64_t>(min_m, 16), std::max<std::int64_t>(min_m, 64) + 36}) {
      const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), xt, {M, K});
      for (const ForwardOptions& o : {kAuto, kTensorCore}) {
        EXPECT_TRUE(gpu_forward_bytes(tc, x, M, xt, o) == gpu_forward_bytes(all, x, M, xt, o))
            << "kTensorCoreOnly differs from kAll, x " << dtype_name(xt) << ", M = " << M;
      }
    }
  }
  // Calls that need the GEMV: x of `xt` placed `offset` bytes into a buffer.
  auto refused = [&](const QuantizedLinear& layer, DType xt, std::size_t offset, const ForwardOptions& o,
                     const char* phrase) {
    const std::int64_t M = std::max<std::int64_t>(min_m, 16);
    const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), xt, {M, K});
    DeviceBuffer dx(x.bytes.size() + 16);
    dx.upload(x.bytes.data(), x.bytes.size(), offset);
    DeviceBuffer dy(static_cast<std::size_t>(M * N) * 4);
    dy.fill(0xFF);
    auto run = [&] {
      layer.forward(TensorView{static_cast<char*>(dx.data()) + offset, {M, K}, xt}, MutableTensorView{dy.data(), {M, N}},
                    o);
    };
    EXPECT_THROW(run(), Error);
    EXPECT_THAT(error_of(run), HasSubstr("kTensorCoreOnly"));
    EXPECT_THAT(error_of(run), HasSubstr(phrase));
    EXPECT_TRUE(all_poisoned(dy.to_vector<std::uint8_t>())) << phrase << ": y was written";
  };
  refused(tc, DType::kF16, 0, kGemv, "kGemv");
  refused(tc, DType::kF32, 0, kAuto, "the GEMM takes f16 or bf16");
  refused(tc, DType::kBF16, 2, kAuto, "not 16-byte aligned");
  QuantizedTensor big = random_weight(N, K, 4, 64, DType::kF32, rng);
  for (float& v : big.scale) v *= 0x1p20f;
  const QuantizedLinear big_tc(big, {}, tc_options);
  refused(big_tc, DType::kF16, 0, kAuto, "past the f16 range");
  const std::int64_t M = std::max<std::int64_t>(min_m, 16);
  check_gemm(big_tc, weight_of(big), {}, M, DType::kBF16, DType::kF32, rng, "kTensorCoreOnly, scales x 2^20, bf16 x");

  // The dense path has no tensor-core layout: it keeps its weights and runs the GEMV.
  const QuantizedTensor qd = quantized_weight(40, 384, config(4, 48), seed + 1);
  const QuantizedLinear dense_all(qd, {}, cuda_options()), dense_tc(qd, {}, tc_options);
  ASSERT_EQ(dense_tc.path(), LinearPath::kDense);
  EXPECT_EQ(dense_tc.device_bytes(), dense_all.device_bytes());
  const Typed xd = typed(normal(16 * 384, rng), DType::kF32, {16, 384});
  EXPECT_TRUE(gpu_forward_bytes(dense_tc, xd, 16, DType::kF32, kAuto) == gpu_forward_bytes(dense_all, xd, 16, DType::kF32, kAuto));
}

// ============================================================ f16 range

// With f16 x the GEMM forms every scale, zero offset and dequantized weight in
// f16 (dequant.hpp, RowConsts), where f32 metadata can reach past 65504
// and become inf; the GEMV computes in f32. A 4-bit layer with f32 scales
// raised by 2^20 (exact; weights up to ~6.5e5): with f16 x, kAuto takes the
// GEMV at every M (its bits, its bound), kTensorCore and kTensorCoreMmaSync
// refuse before writing y, saying why; bf16 x (f32's exponent range) still
// runs the GEMM under kAuto, within the GEMM's bounds. The same layer with
// its scales as drawn takes the GEMM with f16 x.
TEST_F(CudaGemm, F16ActivationsPastTheF16RangeTakeTheGemv) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 300, K = 512;
  const QuantizedTensor drawn = random_weight(N, K, 4, 64, DType::kF32, rng);
  QuantizedTensor q = drawn;
  for (float& s : q.scale) s *= 0x1p20f;  // [1e3, 4.2e4]
  q.scale[q.scale.size() / 2] = 0x1p15f;  // this group's end codes reach at least 7.5 * 2^15 = 245760
  const Weight w = weight_of(q);
  const QuantizedLinear layer(q, {}, cuda_options());
  ASSERT_EQ(layer.path(), LinearPath::kPacked);
  const std::int64_t min_m = layer.tensor_core_min_m();
  ASSERT_GT(min_m, 0) << "a packed layer on " << cuda::device_description() << " has no tensor-core crossover";
  for (std::int64_t M : {min_m, std::max<std::int64_t>(min_m, 16), std::max<std::int64_t>(min_m, 64) + 36}) {
    const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), DType::kF16, {M, K});
    const std::vector<double> ref = reference(w.W, N, K, x.values, M, {});
    const std::vector<std::uint8_t> y = gpu_forward_bytes(layer, x, M, DType::kF32, kAuto);
    EXPECT_TRUE(y == gpu_forward_bytes(layer, x, M, DType::kF32, kGemv))
        << "kAuto differs from kGemv at M = " << M << " (tensor_core_min_m = " << min_m << ")";
    const RowError e = row_error(decode_floats(y.data(), y.size(), DType::kF32), ref, M, N);
    EXPECT_LE(e.err, tolerance(DType::kF32)) << "f16 x, M = " << M << " (the GEMV's bound): " << e.str();

    const DeviceBuffer dx = DeviceBuffer::from(x.bytes);
    DeviceBuffer dy(static_cast<std::size_t>(M * N) * 4);
    for (const auto& [o, name] : forced_kernels(layer)) {
      dy.fill(0xFF);
      auto run = [&] {
        layer.forward(TensorView{dx.data(), {M, K}, DType::kF16}, MutableTensorView{dy.data(), {M, N}}, o);
      };
      EXPECT_THROW(run(), Error) << name;
      EXPECT_THAT(error_of(run), HasSubstr("outside the f16 range")) << name;
      EXPECT_TRUE(all_poisoned(dy.to_vector<std::uint8_t>())) << "f16 x, M = " << M << ", " << name << ": y was written";
    }

    const Typed xb = typed(x.values, DType::kBF16, {M, K});
    EXPECT_TRUE(gpu_forward_bytes(layer, xb, M, DType::kF32, kAuto) ==
                gpu_forward_bytes(layer, xb, M, DType::kF32, kTensorCore))
        << "bf16 x: kAuto differs from kTensorCore at M = " << M;
    check_gemm(layer, w, {}, M, DType::kBF16, DType::kF32, rng, "4bit_g64, scales x 2^20");
  }
  const QuantizedLinear as_drawn(drawn, {}, cuda_options());
  const std::int64_t M = std::max<std::int64_t>(min_m, 16);
  const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), DType::kF16, {M, K});
  EXPECT_TRUE(gpu_forward_bytes(as_drawn, x, M, DType::kF32, kAuto) ==
              gpu_forward_bytes(as_drawn, x, M, DType::kF32, kTensorCore))
      << "scales as drawn, f16 x: kAuto differs from kTensorCore at M = " << M;
}

// On a device without sm_80 tensor cores kTensorCore is refused, saying so,
// and kAuto never picks it.
TEST(CudaGemmOlderDevice, TensorCoreNeedsComputeCapability8) {
  const std::string why = no_gpu_reason();
  if (!why.empty()) GTEST_SKIP() << why;
  if (cc_major() >= 8) GTEST_SKIP() << "the device has sm_80+ tensor cores (" << cuda::device_description() << ")";
  const std::int64_t N = 37, K = 1024, M = 32;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), 3);
  const QuantizedLinear layer(q, {}, cuda_options());
  EXPECT_EQ(layer.tensor_core_min_m(), 0);
  std::mt19937 rng(3);
  const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), DType::kF16, {M, K});
  for (const ForwardOptions& o : {kTensorCore, kMmaSync, kTma}) {
    EXPECT_THAT(error_of([&] { gpu_forward_bytes(layer, x, M, DType::kF16, o); }), HasSubstr("compute capability"));
  }
}

}  // namespace
}  // namespace hqq
