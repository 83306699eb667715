// QuantizedLinear on the CPU backend (hqq/linear.hpp): y = x W^T + b against
// a float64 reference of the dequantized weight, the kernel layout and its
// exact repack both ways, the fast CPU kernel against the scalar oracle, the
// constructors (from a QuantizedTensor, from_dense, from_checkpoint), moves,
// empty batches and the error messages.
//
// The reference never touches the layout code: W = hqq::dequantize(q) (f32),
// y_ref[m, n] = sum_k W[n, k] * x[m, k] + b[n] in double over the values the
// activations and the bias actually hold (after rounding to their dtype).
// The error of a batch is, per output row m, max_n |y - y_ref| / max_n |y_ref|;
// the bounds are below (kTol*). Inputs are fresh every run; the seed is printed
// with every failure and HQQ_TEST_SEED=<n> replays it. Outputs are poisoned
// with NaN (0xFF bytes) before every forward, and a guard after the M x N
// elements must stay untouched. HQQ_TEST_VERBOSE=1 prints the worst errors.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "hqq/hqq.hpp"
#include "hqq/io/checkpoint.hpp"
#include "hqq/io/safetensors.hpp"
#include "hqq/linear.hpp"
#include "linear_test_helpers.hpp"
#include "test_helpers.hpp"

namespace hqq {

[[maybe_unused]] static void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }

namespace {

using detail::LinearLayout;
using detail::LinearPath;
using test::error_of;
using test::fresh_seed;
using test::seed_note;
using namespace test;  // linear_test_helpers.hpp
using ::testing::HasSubstr;

/// Elements after the M x N outputs that forward must not touch.
constexpr std::int64_t kGuard = 64;

/// Runs layer.forward into a 0xFF-poisoned y of dtype yt (shape y_shape, or
/// [M, N]) with a guard behind it, checks the guard, returns y as floats.
std::vector<float> forward(const QuantizedLinear& layer, const TensorView& x, std::int64_t M, DType yt,
                           std::vector<std::int64_t> y_shape = {}) {
  const std::int64_t N = layer.out_features();
  if (y_shape.empty()) y_shape = {M, N};
  const std::size_t es = dtype_size(yt), used = static_cast<std::size_t>(M * N) * es;
  std::vector<std::uint8_t> buf(used + kGuard * es, 0xFF);
  layer.forward(x, MutableTensorView{buf.data(), y_shape, yt});
  const bool guard_ok = std::all_of(buf.begin() + used, buf.end(), [](std::uint8_t b) { return b == 0xFF; });
  EXPECT_TRUE(guard_ok) << "forward wrote past the " << M << " x " << N << " outputs";
  return decode_floats(buf.data(), used, yt);
}

double check_batch(const QuantizedLinear& layer, const std::vector<float>& W, const std::vector<float>& bias,
                   std::int64_t M, DType xt, DType yt, std::mt19937& rng, const std::string& what) {
  const std::int64_t N = layer.out_features(), K = layer.in_features();
  const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), xt, {M, K});
  const std::vector<float> y = forward(layer, x.view(), M, yt);
  const RowError e =
      row_error(y, reference(W, N, K, x.values, M, bias), M, N, few_output_row_floor(x.values, W, M, N, K));
  EXPECT_LE(e.err, tolerance(yt)) << what << ", M = " << M << ", x " << dtype_name(xt) << ", y " << dtype_name(yt)
                                  << ": " << e.str();
  return e.err;
}

/// Bits of a float vector (exact comparison, -0 and NaN payloads included).
std::vector<std::uint32_t> bits_of(const std::vector<float>& v) {
  std::vector<std::uint32_t> b(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) b[i] = float_bits(v[i]);
  return b;
}

void expect_same_quantized(const QuantizedTensor& got, const QuantizedTensor& want, const std::string& what) {
  EXPECT_EQ(got.shape, want.shape) << what;
  EXPECT_EQ(got.nbits, want.nbits) << what;
  EXPECT_EQ(got.group_size, want.group_size) << what;
  EXPECT_EQ(got.axis, want.axis) << what;
  EXPECT_EQ(got.round_zero, want.round_zero) << what;
  EXPECT_EQ(got.solver, want.solver) << what;
  EXPECT_EQ(got.scale_dtype, want.scale_dtype) << what;
  EXPECT_TRUE(got.packed == want.packed) << what << ": packed codes differ";
  EXPECT_TRUE(bits_of(got.scale) == bits_of(want.scale)) << what << ": scale differs";
  EXPECT_TRUE(bits_of(got.zero) == bits_of(want.zero)) << what << ": zero differs";
}

/// CPU layer options. One thread unless asked: the 2-core test machines are
/// often busy, and OpenMP regions then cost milliseconds each; the sweep's
/// biased layers and the kernel tests run the OpenMP default / 2 threads.
LinearOptions cpu_options(int threads = 1) {
  LinearOptions o;
  o.backend = "cpu";
  o.threads = threads;
  return o;
}


// ============================================================ correctness sweep

using WidthGroup = std::tuple<int, std::int64_t>;

class LinearSweep : public ::testing::TestWithParam<WidthGroup> {};

// Every activation dtype, M = 1..16, bias on (odd M) and off (even M), odd N.
// K = 1024 keeps the grouped view's row count 37 * 1024 / G a multiple of 8,
// which the interchange packing of 1/2/4-bit needs.
TEST_P(LinearSweep, MatchesFloat64ReferenceOfDequantizedWeight) {
  const auto [nbits, group] = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024;
  const QuantizedTensor q = quantized_weight(N, K, config(nbits, group), seed);
  const std::vector<float> W = dequantized(q);
  const Typed bias = typed(normal(static_cast<std::size_t>(N), rng, 0.5f), DType::kF32, {N});
  const QuantizedLinear plain(q, {}, cpu_options(1));
  const QuantizedLinear biased(q, bias.view(), cpu_options(0));  // OpenMP's default thread count
  ASSERT_EQ(plain.path(), LinearPath::kPacked);
  ASSERT_EQ(biased.path(), LinearPath::kPacked);
  EXPECT_FALSE(plain.has_bias());
  EXPECT_TRUE(biased.has_bias());
  EXPECT_EQ(plain.backend(), "cpu");
  EXPECT_EQ(plain.out_features(), N);
  EXPECT_EQ(plain.in_features(), K);
  EXPECT_EQ(plain.nbits(), nbits);
  EXPECT_EQ(plain.group_size(), group);
  for (DType t : kActDtypes) {
    double worst = 0;
    for (std::int64_t M = 1; M <= 16; ++M) {
      const bool with_bias = M % 2 == 1;
      worst = std::max(worst, check_batch(with_bias ? biased : plain, W, with_bias ? bias.values : std::vector<float>{},
                                          M, t, t, rng, case_name(nbits, group)));
    }
    if (verbose()) std::cout << "[ error ] " << case_name(nbits, group) << " " << dtype_name(t) << ": " << worst << "\n";
  }
}

INSTANTIATE_TEST_SUITE_P(AllWidths, LinearSweep,
                         ::testing::Combine(::testing::ValuesIn(kNbits), ::testing::Values<std::int64_t>(32, 64, 128)),
                         [](const auto& info) { return case_name(std::get<0>(info.param), std::get<1>(info.param)); });

// f32 and bf16 metadata (kept as f32 pairs in the layout) and f16 metadata.
TEST(Linear, EveryScaleDtype) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 21, K = 512;
  for (DType sdt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int nbits : kNbits) {
      const QuantizedTensor q = quantized_weight(N, K, config(nbits, 64, 1, sdt), seed + nbits);
      const QuantizedLinear layer(q, {}, cpu_options());
      EXPECT_EQ(layer.layout().meta_dtype, sdt == DType::kF16 ? DType::kF16 : DType::kF32);
      const std::vector<float> W = dequantized(q);
      for (std::int64_t M : {1, 4, 9}) {
        for (DType t : kActDtypes) {
          check_batch(layer, W, {}, M, t, t, rng,
                      case_name(nbits, 64) + " scale " + std::string(dtype_name(sdt)));
        }
      }
    }
  }
}

// x and y of different dtypes: the bound is the output's.
TEST(Linear, MixedActivationAndOutputDtypes) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const QuantizedTensor q = quantized_weight(45, 768, config(4, 64), seed);
  const std::vector<float> W = dequantized(q);
  const Typed bias = typed(normal(45, rng, 0.5f), DType::kBF16, {45});
  const QuantizedLinear layer(q, bias.view(), cpu_options());
  for (DType xt : kActDtypes) {
    for (DType yt : kActDtypes) {
      for (std::int64_t M : {1, 6, 13}) check_batch(layer, W, bias.values, M, xt, yt, rng, "4bit_g64");
    }
  }
}

// Larger odd shapes, every width, K = 3072 (K/G a multiple of 8 for groups up to 384).
TEST(Linear, OddShapes) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  struct Shape {
    std::int64_t N, K, G;
  };
  for (const Shape s : {Shape{101, 3072, 64}, Shape{101, 3072, 384}, Shape{3, 256, 32}}) {
    // (N >= 3: with N = 1 the row metric divides by one output, which can be ~0.)
    for (int nbits : kNbits) {
      const QuantizedTensor q = quantized_weight(s.N, s.K, config(nbits, s.G), seed + nbits);
      const Typed bias = typed(normal(static_cast<std::size_t>(s.N), rng, 0.5f), DType::kF16, {s.N});
      const QuantizedLinear layer(q, bias.view(), cpu_options());
      ASSERT_EQ(layer.path(), LinearPath::kPacked);
      const std::vector<float> W = dequantized(q);
      const std::string what = case_name(nbits, s.G) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K);
      for (std::int64_t M : {1, 3, 8, 16, 33}) {  // 33: past the tuned range, not a multiple of 4
        check_batch(layer, W, bias.values, M, kActDtypes[M % 3], kActDtypes[M % 3], rng, what);
      }
    }
  }
}

// One 32-code chunk per row (K = G = 32): 8- and 3-bit need no row multiple.
TEST(Linear, SingleChunkRows) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  for (int nbits : {8, 3}) {
    const QuantizedTensor q = random_weight(3, 32, nbits, 32, DType::kF16, rng);
    const QuantizedLinear layer(q, {}, cpu_options());
    ASSERT_EQ(layer.path(), LinearPath::kPacked);
    const std::vector<float> W = dequantized(q);
    for (std::int64_t M = 1; M <= 16; ++M) check_batch(layer, W, {}, M, DType::kF32, DType::kF32, rng, "K=32");
  }
}

// Uniformly random codes (every level, zeros outside the code range).
TEST(Linear, RandomCodesEveryLevel) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  for (int nbits : kNbits) {
    for (std::int64_t group : {32, 128}) {
      const QuantizedTensor q = random_weight(13, 1024, nbits, group, DType::kF16, rng);
      const QuantizedLinear layer(q, {}, cpu_options());
      const std::vector<float> W = dequantized(q);
      for (std::int64_t M : {1, 2, 5, 16}) {
        check_batch(layer, W, {}, M, DType::kF32, DType::kF32, rng, case_name(nbits, group) + " random codes");
      }
    }
  }
}

// forward() is const: two threads may run it on one layer at once.
TEST(Linear, ConcurrentForwardsOnOneLayer) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024, M = 5;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), seed);
  const QuantizedLinear layer(q, {}, cpu_options(1));
  std::vector<Typed> xs;
  std::vector<std::vector<float>> want;
  for (int i = 0; i < 4; ++i) {
    xs.push_back(typed(normal(static_cast<std::size_t>(M * K), rng), kActDtypes[i % 3], {M, K}));
    want.push_back(forward(layer, xs.back().view(), M, DType::kF32));
  }
  std::vector<std::vector<float>> got(4, std::vector<float>(static_cast<std::size_t>(M * N)));
  std::vector<std::thread> pool;
  for (int i = 0; i < 4; ++i) {
    pool.emplace_back([&, i] {
      for (int rep = 0; rep < 20; ++rep) {
        layer.forward(xs[i].view(), MutableTensorView{got[i].data(), {M, N}, DType::kF32});
      }
    });
  }
  for (auto& t : pool) t.join();
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(bits_of(got[i]) == bits_of(want[i])) << "thread " << i;
}

// ============================================================ shapes of x and y

TEST(Linear, VectorAndBatchedShapes) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), seed);
  const std::vector<float> W = dequantized(q);
  const Typed bias = typed(normal(N, rng, 0.5f), DType::kF32, {N});
  const QuantizedLinear layer(q, bias.view(), cpu_options());
  for (DType t : kActDtypes) {
    // x as a 1-D [K] vector: y [N] or [1, N].
    const Typed x = typed(normal(K, rng), t, {K});
    const std::vector<double> ref = reference(W, N, K, x.values, 1, bias.values);
    for (const std::vector<std::int64_t>& ys : {std::vector<std::int64_t>{N}, std::vector<std::int64_t>{1, N}}) {
      const std::vector<float> y = forward(layer, x.view(), 1, t, ys);
      EXPECT_LE(row_error(y, ref, 1, N).err, tolerance(t)) << "1-D x, " << dtype_name(t);
    }
    // x [2, 3, K] (6 rows), y [2, 3, N]; and x [6, K] into y [6, N] gives the same.
    const Typed x3 = typed(normal(6 * K, rng), t, {2, 3, K});
    const std::vector<double> ref3 = reference(W, N, K, x3.values, 6, bias.values);
    const std::vector<float> y3 = forward(layer, x3.view(), 6, t, {2, 3, N});
    EXPECT_LE(row_error(y3, ref3, 6, N).err, tolerance(t)) << "3-D x, " << dtype_name(t);
    const Typed x2 = typed(x3.values, t, {6, K});
    const std::vector<float> y2 = forward(layer, x2.view(), 6, t);
    EXPECT_TRUE(bits_of(y2) == bits_of(y3)) << "the batch shape changed the result";
  }
}

TEST(Linear, EmptyBatchDoesNothing) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const QuantizedTensor q = quantized_weight(37, 1024, config(4, 64), seed);
  for (const char* which : {"packed", "dense"}) {
    const QuantizedTensor w = which[0] == 'p' ? q : quantized_weight(37, 1024, config(4, 64, 0), seed);
    const QuantizedLinear layer(w, {}, cpu_options());
    std::vector<float> x(8, 1.0f), y(8, 2.0f);
    EXPECT_NO_THROW(layer.forward(TensorView{x.data(), {0, 1024}, DType::kF32},
                                  MutableTensorView{y.data(), {0, 37}, DType::kF32}))
        << which;
    EXPECT_NO_THROW(layer.forward(TensorView{nullptr, {0, 1024}, DType::kF16},
                                  MutableTensorView{nullptr, {0, 37}, DType::kBF16}))
        << which;
    EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](float v) { return v == 2.0f; })) << which << ": y was written";
  }
}

// ============================================================ dense path

// Axis 0 and group sizes that are not a multiple of 32 are dequantized once
// and multiplied densely; results meet the same bounds.
TEST(Linear, DensePathForAxis0AndOddGroupSizes) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  struct Case {
    int nbits, axis;
    std::int64_t group, N, K;
  };
  const Case cases[] = {
      {4, 0, 64, 37, 1024}, {1, 0, 32, 37, 512},   {3, 0, 128, 37, 1024}, {8, 0, 64, 40, 96},
      {4, 1, 48, 37, 384},  {2, 1, 16, 37, 1024},  {3, 1, 48, 21, 480},   {8, 1, 16, 5, 64},
  };
  for (const Case& c : cases) {
    const std::string what = case_name(c.nbits, c.group) + " axis " + std::to_string(c.axis) +
                             " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K);
    const QuantizedTensor q = quantized_weight(c.N, c.K, config(c.nbits, c.group, c.axis), seed + c.nbits);
    const std::vector<float> W = dequantized(q);
    const Typed bias = typed(normal(static_cast<std::size_t>(c.N), rng, 0.5f), DType::kF32, {c.N});
    const QuantizedLinear plain(q, {}, cpu_options());
    const QuantizedLinear biased(q, bias.view(), cpu_options());
    ASSERT_EQ(plain.path(), LinearPath::kDense) << what;
    EXPECT_TRUE(bits_of(plain.layout().dense) == bits_of(W)) << what << ": dense weight is not dequantize(q)";
    EXPECT_TRUE(plain.layout().codes.empty() && plain.layout().meta.empty()) << what;
    EXPECT_THAT(error_of([&] { (void)plain.to_quantized(); }), HasSubstr("dense")) << what;
    for (std::int64_t M = 1; M <= 16; ++M) {  // every dtype, every M, bias on and off
      const bool with_bias = M % 2 == 1;
      const DType t = kActDtypes[M % 3];
      check_batch(with_bias ? biased : plain, W, with_bias ? bias.values : std::vector<float>{}, M, t, t, rng, what);
    }
  }
}

// An axis-1 weight whose groups do not line up with its rows (K not a
// multiple of G: a group runs from the end of one row into the next). The
// grouped view allows it (numel % G == 0); the layer must still compute
// x W^T, whichever path it takes.
// DISABLED until the library handles it: today make_linear_layout takes the
// packed path (it checks only axis == 1 and G % 32 == 0) and the kernels
// index groups as n * (K / G) + k / G, so y is wrong (K < G: bias only).
// Run with --gtest_also_run_disabled_tests.
TEST(Linear, GroupsStraddlingRows) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  struct Case {
    std::int64_t N, K, G;
  };
  for (const Case c : {Case{4, 96, 64}, Case{6, 32, 64}, Case{10, 160, 64}}) {
    const QuantizedTensor q = random_weight(c.N, c.K, 8, c.G, DType::kF16, rng);
    const std::string what = "N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) + " G=" + std::to_string(c.G);
    const QuantizedLinear layer(q, {}, cpu_options());
    const std::vector<float> W = dequantized(q);
    for (std::int64_t M : {1, 5}) check_batch(layer, W, {}, M, DType::kF32, DType::kF32, rng, what);
  }
}

// ============================================================ layout and repack

/// The chunk layout as linear_layout.hpp documents it, written independently:
/// 8/4/2/1-bit: word w holds codes 32w/b .. 32(w+1)/b - 1, code 4j + i of the
/// word in byte i at bit b*j; 3-bit: low two bits by the 2-bit rule in words
/// 0-1, the high bit by the 1-bit rule in word 2.
std::vector<std::uint32_t> documented_chunk(const std::uint8_t* codes, int nbits) {
  std::vector<std::uint32_t> out(static_cast<std::size_t>(nbits), 0u);
  auto put = [&](int b, int word0, int c, std::uint32_t v) {
    const int per = 32 / b, w = c / per, local = c % per, i = local % 4, j = local / 4;
    out[static_cast<std::size_t>(word0 + w)] |= v << (8 * i + b * j);
  };
  for (int c = 0; c < 32; ++c) {
    if (nbits == 3) {
      put(2, 0, c, codes[c] & 3u);
      put(1, 2, c, codes[c] >> 2);
    } else {
      put(nbits, 0, c, codes[c]);
    }
  }
  return out;
}

TEST(LinearLayout, ChunkEncodingRoundTripsAndMatchesItsDocumentation) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  for (int nbits : kNbits) {
    EXPECT_EQ(detail::chunk_words(nbits), nbits);
    std::uniform_int_distribution<int> code(0, (1 << nbits) - 1);
    for (int trial = 0; trial < 500; ++trial) {
      std::uint8_t codes[32];
      for (auto& c : codes) c = static_cast<std::uint8_t>(code(rng));
      if (trial == 0) std::fill(std::begin(codes), std::end(codes), static_cast<std::uint8_t>((1 << nbits) - 1));
      if (trial == 1) std::fill(std::begin(codes), std::end(codes), std::uint8_t{0});
      std::uint32_t chunk[9];  // one spare word: encode_chunk writes nbits words
      std::fill(std::begin(chunk), std::end(chunk), 0xDEADBEEFu);
      detail::encode_chunk(codes, nbits, chunk);
      for (int c = 0; c < 32; ++c) {
        ASSERT_EQ(detail::chunk_code(chunk, nbits, c), codes[c]) << nbits << "-bit, code " << c << ", trial " << trial;
      }
      const std::vector<std::uint32_t> doc = documented_chunk(codes, nbits);
      ASSERT_TRUE(std::equal(doc.begin(), doc.end(), chunk)) << nbits << "-bit chunk differs from the documented layout";
      ASSERT_EQ(chunk[nbits], 0xDEADBEEFu) << nbits << "-bit encode_chunk wrote past its " << nbits << " words";
    }
    // The per-byte masks: one b-bit code per byte.
    if (nbits != 3) {
      std::uint32_t m = 0;
      for (int i = 0; i < 4; ++i) m |= ((nbits == 8 ? 0xFFu : (1u << nbits) - 1u)) << (8 * i);
      EXPECT_EQ(detail::byte_code_mask(nbits), m) << nbits;
    }
  }
}

class LinearRepack : public ::testing::TestWithParam<WidthGroup> {};

// The layout holds exactly the weight's codes and (scale, zero) pairs, and
// converts back to the identical interchange tensor, for every scale dtype.
TEST_P(LinearRepack, ExactBothWays) {
  const auto [nbits, group] = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  // 37 * K / G grouped rows: a multiple of 8 for 1-bit needs K / G a multiple of 8.
  const std::int64_t N = 37, K = std::max<std::int64_t>(1024, 8 * group);
  for (DType sdt : {DType::kF16, DType::kBF16, DType::kF32}) {
    for (int source = 0; source < 2; ++source) {
      const QuantizedTensor q =
          source == 0 ? quantized_weight(N, K, config(nbits, group, 1, sdt), seed) : random_weight(N, K, nbits, group, sdt, rng);
      const std::string what = case_name(nbits, group) + " scale " + std::string(dtype_name(sdt)) +
                               (source == 0 ? " quantized" : " random codes");
      const QuantizedLinear layer(q, {}, cpu_options());
      const LinearLayout& L = layer.layout();
      ASSERT_EQ(L.path, LinearPath::kPacked) << what;
      ASSERT_EQ(L.out_features, N);
      ASSERT_EQ(L.in_features, K);
      ASSERT_EQ(static_cast<std::int64_t>(L.codes.size()), N * K / 32 * nbits) << what;
      EXPECT_TRUE(L.dense.empty()) << what;

      // Decoder: chunk_code over the layout gives unpack_codes(q), element by element.
      const std::vector<std::uint8_t> codes = unpack_codes(q);
      std::int64_t bad = 0, first = -1;
      for (std::int64_t n = 0; n < N; ++n) {
        for (std::int64_t k = 0; k < K; ++k) {
          const std::uint32_t* chunk = L.codes.data() + (n * (K / 32) + k / 32) * nbits;
          if (detail::chunk_code(chunk, nbits, static_cast<int>(k % 32)) != codes[n * K + k]) {
            if (first < 0) first = n * K + k;
            ++bad;
          }
        }
      }
      EXPECT_EQ(bad, 0) << what << ": codes differ from unpack_codes(q), first at flat index " << first;

      // Metadata: [N][K/G] pairs (scale, zero), f16 for f16 tensors, else f32.
      const DType mdt = sdt == DType::kF16 ? DType::kF16 : DType::kF32;
      ASSERT_EQ(L.meta_dtype, mdt) << what;
      const std::vector<float> pairs = decode_floats(L.meta.data(), L.meta.size(), mdt);
      ASSERT_EQ(static_cast<std::int64_t>(pairs.size()), 2 * N * (K / group)) << what;
      for (std::int64_t g = 0; g < N * (K / group); ++g) {
        ASSERT_EQ(float_bits(pairs[2 * g]), float_bits(q.scale[g])) << what << ": scale of group " << g;
        ASSERT_EQ(float_bits(pairs[2 * g + 1]), float_bits(q.zero[g])) << what << ": zero of group " << g;
      }
      EXPECT_EQ(layer.weight_bytes(), static_cast<std::int64_t>(N * K / 8 * nbits + 2 * N * (K / group) *
                                                                                        static_cast<std::int64_t>(dtype_size(mdt))))
          << what;

      // Interchange -> layout -> interchange.
      expect_same_quantized(layer.to_quantized(), q, what + ", to_quantized()");
      QuantizedTensor like = q;
      like.packed.clear();
      like.scale.clear();
      like.zero.clear();
      const QuantizedTensor back = detail::linear_layout_to_quantized(L, like);
      expect_same_quantized(back, q, what + ", linear_layout_to_quantized()");
      // Layout -> interchange -> layout.
      const LinearLayout L2 = detail::make_linear_layout(back);
      EXPECT_EQ(L2.path, L.path) << what;
      EXPECT_EQ(L2.out_features, L.out_features) << what;
      EXPECT_EQ(L2.in_features, L.in_features) << what;
      EXPECT_EQ(L2.nbits, L.nbits) << what;
      EXPECT_EQ(L2.group_size, L.group_size) << what;
      EXPECT_EQ(L2.meta_dtype, L.meta_dtype) << what;
      EXPECT_TRUE(L2.codes == L.codes) << what << ": codes differ after the round trip";
      EXPECT_TRUE(L2.meta == L.meta) << what << ": meta differs after the round trip";
      EXPECT_TRUE(L2.bias.empty() && L2.dense.empty()) << what;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllWidths, LinearRepack,
                         ::testing::Combine(::testing::ValuesIn(kNbits),
                                            ::testing::Values<std::int64_t>(32, 64, 128, 256)),
                         [](const auto& info) { return case_name(std::get<0>(info.param), std::get<1>(info.param)); });

// ============================================================ kernels

// The fast kernel (AVX2 or portable) against the scalar float64 oracle on the
// same layout, with 1 and 2 threads; and the oracle against the reference of
// dequantize(q), which does not read the layout.
TEST(LinearKernels, FastCpuKernelMatchesOracle) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024;
  for (int nbits : kNbits) {
    for (std::int64_t group : {32, 64, 128, 16}) {
      // f32 metadata (and a bias) with g64, f16 metadata otherwise.
      for (DType sdt : {group == 64 ? DType::kF32 : DType::kF16}) {
        const std::string what = case_name(nbits, group) + " scale " + std::string(dtype_name(sdt));
        const QuantizedTensor q = quantized_weight(N, K, config(nbits, group, 1, sdt), seed + nbits);
        LinearLayout L = detail::make_linear_layout(q);
        ASSERT_EQ(L.path, group % 32 == 0 ? LinearPath::kPacked : LinearPath::kDense) << what;
        const std::vector<float> bias = normal(N, rng, 0.5f);
        if (sdt == DType::kF32) L.bias = bias;  // with and without bias
        const std::vector<float> W = dequantized(q);
        for (std::int64_t M : {1, 2, 3, 4, 5, 8, 11, 16}) {
          const std::vector<float> x = normal(static_cast<std::size_t>(M * K), rng);
          std::vector<float> oracle(static_cast<std::size_t>(M * N), std::numeric_limits<float>::quiet_NaN());
          detail::linear_forward_ref(L, x.data(), M, oracle.data());
          const std::vector<double> ref = reference(W, N, K, x, M, L.bias);
          const RowError eo = row_error(oracle, ref, M, N);
          EXPECT_LE(eo.err, 1e-6) << what << ", M = " << M << ": oracle vs dequantize reference, " << eo.str();
          if (verbose()) std::cout << "[ oracle ] " << what << " " << eo.err << "\n";
          const std::vector<double> oracle_d(oracle.begin(), oracle.end());
          for (int threads : {1, 2}) {
            std::vector<float> y(static_cast<std::size_t>(M * N + kGuard), std::numeric_limits<float>::quiet_NaN());
            detail::linear_forward_cpu(L, x.data(), M, y.data(), threads);
            EXPECT_TRUE(std::all_of(y.begin() + M * N, y.end(), [](float v) { return std::isnan(v); }))
                << what << ": wrote past the outputs";
            y.resize(static_cast<std::size_t>(M * N));
            const RowError e = row_error(y, oracle_d, M, N);
            EXPECT_LE(e.err, kTolF32) << what << ", M = " << M << ", threads = " << threads << ": " << e.str();
            if (verbose()) std::cout << "[ kernel ] " << what << " " << e.err << "\n";
          }
        }
      }
    }
  }
}

// The layer's thread option: 1 and 2 threads give results within the f32 bound.
TEST(LinearKernels, LayerThreadOption) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const QuantizedTensor q = quantized_weight(129, 512, config(3, 64), seed);
  const std::vector<float> W = dequantized(q);
  for (int threads : {1, 2}) {
    const QuantizedLinear layer(q, {}, cpu_options(threads));
    for (std::int64_t M : {1, 4, 16}) {
      check_batch(layer, W, {}, M, DType::kF32, DType::kF32, rng, "threads " + std::to_string(threads));
    }
  }
}

// The cpu backend has one kernel: it ignores ForwardOptions::kernel, so every
// choice is supported and gives the same bits; it has no tensor-core crossover,
// holds no device memory and ignores LinearOptions::device_layouts.
TEST(LinearKernels, CpuIgnoresTheKernelChoice) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 256, M = 5;
  LinearOptions options = cpu_options(1);
  options.device_layouts = DeviceLayouts::kTensorCoreOnly;  // ignored on the cpu
  const QuantizedLinear layer(quantized_weight(N, K, config(4, 64), seed), {}, options);
  EXPECT_EQ(layer.tensor_core_min_m(), 0);
  EXPECT_EQ(layer.device_bytes(), 0);
  const std::vector<float> x = normal(static_cast<std::size_t>(M * K), rng);
  std::vector<float> want(static_cast<std::size_t>(M * N)), got(want.size());
  layer.forward({x.data(), {M, K}, DType::kF32}, {want.data(), {M, N}, DType::kF32});
  for (const LinearKernelChoice k : {LinearKernelChoice::kAuto, LinearKernelChoice::kGemv,
                                     LinearKernelChoice::kTensorCore, LinearKernelChoice::kTensorCoreMmaSync,
                                     LinearKernelChoice::kTensorCoreTma}) {
    EXPECT_TRUE(layer.supports(k)) << "choice " << static_cast<int>(k);
    ForwardOptions o;
    o.kernel = k;
    std::fill(got.begin(), got.end(), NAN);
    layer.forward({x.data(), {M, K}, DType::kF32}, {got.data(), {M, N}, DType::kF32}, o);
    EXPECT_TRUE(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0) << "choice " << static_cast<int>(k);
  }
}

// The f32 bound is tight enough to see one wrong code (one level off, at the
// largest activation) in one output, and one row reading its neighbouring
// groups' metadata: the metric of such a corrupted layout exceeds it.
TEST(LinearKernels, MetricCatchesOneWrongCode) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024;
  for (int nbits : kNbits) {
    for (std::int64_t group : {32, 128}) {
      const QuantizedTensor q = quantized_weight(N, K, config(nbits, group), seed + nbits);
      const std::vector<float> W = dequantized(q);
      const std::vector<float> x = normal(static_cast<std::size_t>(K), rng);
      const std::vector<double> ref = reference(W, N, K, x, 1, {});
      // The code at the activation of largest magnitude, of the output row n = 5.
      const std::int64_t k = std::max_element(x.begin(), x.end(), [](float a, float b) {
                               return std::fabs(a) < std::fabs(b);
                             }) - x.begin();
      LinearLayout L = detail::make_linear_layout(q);
      std::uint32_t* chunk = L.codes.data() + (5 * (K / 32) + k / 32) * nbits;
      std::uint8_t codes[32];
      for (int c = 0; c < 32; ++c) codes[c] = static_cast<std::uint8_t>(detail::chunk_code(chunk, nbits, c));
      codes[k % 32] = static_cast<std::uint8_t>(codes[k % 32] == 0 ? 1 : codes[k % 32] - 1);
      detail::encode_chunk(codes, nbits, chunk);
      std::vector<float> y(static_cast<std::size_t>(N));
      detail::linear_forward_cpu(L, x.data(), 1, y.data(), 1);
      EXPECT_GT(row_error(y, ref, 1, N).err, kTolF32) << case_name(nbits, group);
      if (verbose()) std::cout << "[ mutant ] code " << case_name(nbits, group) << " " << row_error(y, ref, 1, N).err << "\n";
      // And a wrong group: row 5 reads the (scale, zero) of the next group (cyclically).
      LinearLayout L2 = detail::make_linear_layout(q);
      const std::size_t pair = static_cast<std::size_t>(dtype_size(L2.meta_dtype)) * 2;
      const auto row0 = L2.meta.begin() + static_cast<std::ptrdiff_t>(5 * (K / group) * pair);
      std::rotate(row0, row0 + static_cast<std::ptrdiff_t>(pair), row0 + static_cast<std::ptrdiff_t>((K / group) * pair));
      detail::linear_forward_cpu(L2, x.data(), 1, y.data(), 1);
      EXPECT_GT(row_error(y, ref, 1, N).err, kTolF32) << case_name(nbits, group) << ", shifted groups";
      if (verbose()) std::cout << "[ mutant ] group " << case_name(nbits, group) << " " << row_error(y, ref, 1, N).err << "\n";
    }
  }
}

// ============================================================ construction

TEST(LinearConstruct, FromDense) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024;
  const std::vector<float> w = test::heavy_tailed(static_cast<std::size_t>(N * K), seed);
  const Typed bias = typed(normal(N, rng, 0.5f), DType::kF16, {N});
  for (DType wt : kActDtypes) {
    for (int axis : {1, 0}) {
      const Typed wv = typed(w, wt, {N, K});
      const QuantConfig cfg = config(axis == 1 ? 2 : 4, 64, axis);
      const std::string what = std::string("weight ") + std::string(dtype_name(wt)) + " axis " + std::to_string(axis);
      const QuantizedLinear layer = QuantizedLinear::from_dense(wv.view(), cfg, bias.view(), cpu_options());
      const QuantizedTensor q = quantize(wv.view(), cfg, "cpu");
      const QuantizedLinear direct(q, bias.view(), cpu_options());
      EXPECT_EQ(layer.path(), axis == 1 ? LinearPath::kPacked : LinearPath::kDense) << what;
      EXPECT_TRUE(layer.has_bias()) << what;
      if (axis == 1) expect_same_quantized(layer.to_quantized(), q, what);
      const std::vector<float> W = dequantized(q);
      for (std::int64_t M : {1, 7}) {
        check_batch(layer, W, bias.values, M, DType::kF32, DType::kF32, rng, what);
        const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), DType::kF16, {M, K});
        EXPECT_TRUE(bits_of(forward(layer, x.view(), M, DType::kF32)) == bits_of(forward(direct, x.view(), M, DType::kF32)))
            << what << ": from_dense differs from QuantizedLinear(quantize(w))";
      }
    }
  }
  // A weight that is not 2-D.
  EXPECT_THAT(error_of([&] {
                QuantizedLinear::from_dense(TensorView{w.data(), {N * K}, DType::kF32}, config(4, 64), {}, cpu_options());
              }),
              HasSubstr("2-D"));
}

namespace fs = std::filesystem;

std::string tmp_path(const std::string& name) {
  const fs::path dir = fs::path(HQQ_TEST_TMP_DIR) / "linear";
  fs::create_directories(dir);
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return (dir / (std::string(info->test_suite_name()) + "_" + info->name() + "_" + name)).string();
}

TEST(LinearConstruct, FromCheckpoint) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024;
  const std::string with = "model.layers.0.mlp.down_proj", without = "model.layers.0.self_attn.o_proj";
  const QuantizedTensor qa = quantized_weight(N, K, config(4, 64), seed);
  const QuantizedTensor qb = quantized_weight(N, K, config(3, 128, 1, DType::kBF16), seed + 1);
  const Typed bias = typed(normal(N, rng, 0.5f), DType::kBF16, {N});

  io::SafetensorsWriter writer;
  io::add_quantized_layer(writer, with, qa);
  writer.add(with + ".bias", DType::kBF16, {N}, bias.bytes);
  io::add_quantized_layer(writer, without, qb);
  writer.add("odd.bias", DType::kI32, {N}, std::vector<std::uint8_t>(static_cast<std::size_t>(4 * N)));
  io::add_quantized_layer(writer, "odd", qa);
  const std::string path = tmp_path("model.safetensors");
  writer.write(path);
  const io::SafetensorsFile file = io::SafetensorsFile::open(path);

  const QuantizedLinear a = QuantizedLinear::from_checkpoint(file, with, cpu_options());
  const QuantizedLinear b = QuantizedLinear::from_checkpoint(file, without, cpu_options());
  EXPECT_TRUE(a.has_bias());
  EXPECT_FALSE(b.has_bias());
  EXPECT_EQ(a.nbits(), 4);
  EXPECT_EQ(b.nbits(), 3);
  EXPECT_EQ(b.layout().meta_dtype, DType::kF32);
  // Same data as the layers that were written (the file does not keep the solver).
  QuantizedTensor ga = a.to_quantized(), gb = b.to_quantized();
  ga.solver = qa.solver;
  gb.solver = qb.solver;
  expect_same_quantized(ga, qa, "with bias");
  expect_same_quantized(gb, qb, "without bias");
  const QuantizedLinear direct(qa, bias.view(), cpu_options());
  for (std::int64_t M : {1, 5, 16}) {
    check_batch(a, dequantized(qa), bias.values, M, DType::kF16, DType::kF16, rng, "from_checkpoint, bias");
    check_batch(b, dequantized(qb), {}, M, DType::kBF16, DType::kBF16, rng, "from_checkpoint");
    const Typed x = typed(normal(static_cast<std::size_t>(M * K), rng), DType::kF32, {M, K});
    EXPECT_TRUE(bits_of(forward(a, x.view(), M, DType::kF32)) == bits_of(forward(direct, x.view(), M, DType::kF32)))
        << "from_checkpoint differs from the layer it was written from";
  }
  EXPECT_THAT(error_of([&] { QuantizedLinear::from_checkpoint(file, "odd", cpu_options()); }),
              HasSubstr("odd.bias has dtype I32"));
  EXPECT_THAT(error_of([&] { QuantizedLinear::from_checkpoint(file, "model.layers.1.mlp", cpu_options()); }),
              HasSubstr("model.layers.1.mlp"));
}

// The layer keeps working after being moved (the kernel refers to the layout).
TEST(LinearConstruct, MovesKeepTheLayerUsable) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 37, K = 1024;
  const QuantizedTensor q = quantized_weight(N, K, config(4, 64), seed);
  const QuantizedTensor q2 = quantized_weight(N, K, config(2, 32, 0), seed + 1);  // dense path
  const std::vector<float> W = dequantized(q);
  const Typed bias = typed(normal(N, rng, 0.5f), DType::kF32, {N});
  std::vector<QuantizedLinear> layers;
  {
    QuantizedLinear original(q, bias.view(), cpu_options());
    QuantizedLinear moved(std::move(original));
    check_batch(moved, W, bias.values, 3, DType::kF32, DType::kF32, rng, "move-constructed");
    QuantizedLinear target(q2, {}, cpu_options());
    target = std::move(moved);
    EXPECT_EQ(target.path(), LinearPath::kPacked);
    check_batch(target, W, bias.values, 4, DType::kF16, DType::kF16, rng, "move-assigned");
    layers.push_back(std::move(target));
    for (int i = 0; i < 8; ++i) layers.emplace_back(q2, TensorView{}, cpu_options());  // reallocates
  }
  check_batch(layers[0], W, bias.values, 16, DType::kBF16, DType::kBF16, rng, "moved into a growing vector");
  check_batch(layers[8], dequantized(q2), {}, 2, DType::kF32, DType::kF32, rng, "dense, moved into a vector");
}

// ============================================================ errors

class LinearErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    q_ = quantized_weight(N, K, config(4, 64), 1234);
    layer_ = std::make_unique<QuantizedLinear>(q_, TensorView{}, cpu_options());
  }
  static constexpr std::int64_t N = 37, K = 1024;
  QuantizedTensor q_;
  std::unique_ptr<QuantizedLinear> layer_;
  std::vector<float> x_ = std::vector<float>(4 * K, 0.5f), y_ = std::vector<float>(4 * N);
};

TEST_F(LinearErrors, ActivationShape) {
  EXPECT_THAT(error_of([&] {
                layer_->forward(TensorView{x_.data(), {4, K - 1}, DType::kF32}, MutableTensorView{y_.data(), {4, N}});
              }),
              ::testing::AllOf(HasSubstr("x has shape [4, 1023]"), HasSubstr("in_features = 1024")));
  EXPECT_THAT(error_of([&] {
                layer_->forward(TensorView{x_.data(), {}, DType::kF32}, MutableTensorView{y_.data(), {4, N}});
              }),
              HasSubstr("in_features = 1024"));
}

TEST_F(LinearErrors, OutputShapeAndSize) {
  EXPECT_THAT(error_of([&] {
                layer_->forward(TensorView{x_.data(), {4, K}, DType::kF32}, MutableTensorView{y_.data(), {3, N}});
              }),
              ::testing::AllOf(HasSubstr("y has 111 elements"), HasSubstr("expected 4 rows x 37 = 148")));
  EXPECT_THAT(error_of([&] {
                layer_->forward(TensorView{x_.data(), {4, K}, DType::kF32}, MutableTensorView{y_.data(), {N, 4}});
              }),
              HasSubstr("out_features = 37"));
}

TEST_F(LinearErrors, NonFloatDtypes) {
  EXPECT_THAT(error_of([&] {
                layer_->forward(TensorView{x_.data(), {4, K}, DType::kI32}, MutableTensorView{y_.data(), {4, N}});
              }),
              HasSubstr("x has dtype I32, expected F32, F16 or BF16"));
  EXPECT_THAT(error_of([&] {
                layer_->forward(TensorView{x_.data(), {4, K}, DType::kU8}, MutableTensorView{y_.data(), {4, N}});
              }),
              HasSubstr("x has dtype U8"));
  EXPECT_THAT(error_of([&] {
                layer_->forward(TensorView{x_.data(), {4, K}, DType::kF32},
                                MutableTensorView{y_.data(), {4, N}, DType::kF64});
              }),
              HasSubstr("y has dtype F64"));
  std::vector<std::int32_t> ib(N, 1);
  EXPECT_THAT(error_of([&] { QuantizedLinear(q_, TensorView{ib.data(), {N}, DType::kI32}, cpu_options()); }),
              HasSubstr("bias has dtype I32"));
}

TEST_F(LinearErrors, NullPointers) {
  EXPECT_THAT(error_of([&] {
                layer_->forward(TensorView{nullptr, {4, K}, DType::kF32}, MutableTensorView{y_.data(), {4, N}});
              }),
              HasSubstr("null"));
  EXPECT_THAT(error_of([&] {
                layer_->forward(TensorView{x_.data(), {4, K}, DType::kF32}, MutableTensorView{nullptr, {4, N}});
              }),
              HasSubstr("null"));
}

TEST_F(LinearErrors, WeightNot2D) {
  // The same codes viewed as [37 * 1024] and as [37, 2, 512].
  QuantizedTensor flat = q_;
  flat.shape = {N * K};
  EXPECT_THAT(error_of([&] { QuantizedLinear(flat, {}, cpu_options()); }),
              ::testing::AllOf(HasSubstr("2-D"), HasSubstr("[37888]")));
  QuantizedTensor three = q_;
  three.shape = {N, 2, K / 2};
  EXPECT_THAT(error_of([&] { QuantizedLinear(three, {}, cpu_options()); }), HasSubstr("2-D"));
  // An inconsistent tensor is refused by validate().
  QuantizedTensor broken = q_;
  broken.scale.pop_back();
  EXPECT_THAT(error_of([&] { QuantizedLinear(broken, {}, cpu_options()); }), HasSubstr("scales"));
}

TEST_F(LinearErrors, BiasLength) {
  std::vector<float> b(N + 1, 0.0f);
  EXPECT_THAT(error_of([&] { QuantizedLinear(q_, TensorView{b.data(), {N - 1}, DType::kF32}, cpu_options()); }),
              ::testing::AllOf(HasSubstr("bias has 36 elements"), HasSubstr("out_features = 37")));
  EXPECT_THAT(error_of([&] { QuantizedLinear(q_, TensorView{b.data(), {N + 1}, DType::kF32}, cpu_options()); }),
              HasSubstr("bias has 38 elements"));
}

TEST_F(LinearErrors, UnusableOrUnknownBackend) {
  LinearOptions o;
  o.backend = "cuda";
  if (cuda::available().ok) {
    EXPECT_NO_THROW(QuantizedLinear(q_, {}, o)) << "a device is usable here";
  } else if (kCudaEnabled) {
    EXPECT_THAT(error_of([&] { QuantizedLinear(q_, {}, o); }),
                ::testing::AllOf(HasSubstr("backend 'cuda' is not usable"), HasSubstr("CUDA")));
  } else {
    EXPECT_THAT(error_of([&] { QuantizedLinear(q_, {}, o); }),
                ::testing::AllOf(HasSubstr("no backend named 'cuda'"), HasSubstr("no CUDA backend")));
  }
  o.backend = "tpu";
  EXPECT_THAT(error_of([&] { QuantizedLinear(q_, {}, o); }), HasSubstr("no backend named 'tpu'"));
}

// f16 metadata must be exact in the f16 layout: a tensor built by hand that
// claims F16 but holds 0.1f is refused, naming the value and group.
TEST_F(LinearErrors, ScaleNotRepresentableInF16) {
  QuantizedTensor bad = q_;
  ASSERT_EQ(bad.scale_dtype, DType::kF16);
  bad.scale[3] = 0.1f;
  EXPECT_THAT(error_of([&] { QuantizedLinear(bad, {}, cpu_options()); }),
              ::testing::AllOf(HasSubstr("scale"), HasSubstr("0.1"), HasSubstr("group 3"),
                               HasSubstr("not representable"), HasSubstr("F16")));
  QuantizedTensor badz = q_;
  badz.zero[5] = 0.1f;
  EXPECT_THAT(error_of([&] { QuantizedLinear(badz, {}, cpu_options()); }),
              ::testing::AllOf(HasSubstr("zero"), HasSubstr("group 5"), HasSubstr("not representable")));
  // F32 storage keeps any float.
  QuantizedTensor f32 = q_;
  f32.scale_dtype = DType::kF32;
  f32.scale[3] = 0.1f;
  EXPECT_NO_THROW(QuantizedLinear(f32, {}, cpu_options()));
}

}  // namespace
}  // namespace hqq
