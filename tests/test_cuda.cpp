// CUDA backend tests (hqq/cuda.hpp and the "cuda" backend of quantize.hpp):
// the GPU against the CPU backend on fresh random inputs, dequantize / pack /
// unpack bit-exact, device and host pointers, a tensor past 2 GiB, and the
// error messages.
//
// Every GPU test derives from GpuFixture, which skips visibly (with the
// reason) when the build has no CUDA or no device is usable; the CudaNoDevice
// tests run exactly then and check the errors that say why. Seeds are fresh
// per test and printed with every failure; HQQ_TEST_SEED=<n> replays one,
// HQQ_TEST_VERBOSE=1 prints the agreement statistics of every comparison.
// CudaLarge* allocate ~9 GiB of device memory: filter them out with
// --gtest_filter=-*Large* on a small GPU (they also skip when allocation fails).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "hqq/hqq.hpp"
#include "test_helpers.hpp"

namespace hqq {

// Readable parameters in gtest's messages (found by argument-dependent lookup).
[[maybe_unused]] static void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }
[[maybe_unused]] static void PrintTo(Solver s, std::ostream* os) { *os << solver_name(s); }

namespace {

using cuda::DeviceBuffer;
using ::testing::HasSubstr;

// ------------------------------------------------------------ tolerance table
//
// DESIGN §1: the per-element math is shared by host and device (pow
// included: detail::pow_portable), and a group's sums are added in one order
// on both (detail/sum_order.hpp), so RTN (Solver::kNone) and everything after
// the codes (dequantize, pack, unpack) must be bit-identical, and the solvers
// are expected to be too. The one known source of a difference is legacy's
// tensor-wide mean error, summed in double in a different order on each side:
// two iterations' means within a float ulp could stop the loop at another
// iteration. The bounds below are the allowance for that.

/// Solvers: fraction of the codes that may differ (each by one level).
constexpr double kMaxCodeDiffFraction = 1e-4;
/// Solvers, F32 storage: relative difference of scale and of zero. Zero is in
/// code units, so below one unit the bound is 1e-5 of a unit (absolute).
constexpr float kMetaRelTol = 1e-5f;
/// Solvers: groups whose zero may be off by more than kMetaRelTol. None: the
/// issue's bound is 1e-5 for every group.
constexpr double kMaxTieGroupFraction = 0.0;
/// Largest zero shift (code units) a rounding tie can explain: under one step.
constexpr float kMaxTieZeroShift = 1.0f;

// ------------------------------------------------------------ small helpers

using test::error_of;
using test::fresh_seed;
using test::GpuFixture;
using test::no_gpu_reason;
using test::seed_note;

bool verbose() { return std::getenv("HQQ_TEST_VERBOSE") != nullptr; }

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

using GpuTest = GpuFixture<::testing::Test>;
using CudaDevice = GpuTest;
template <class P>
using GpuTestP = GpuFixture<::testing::TestWithParam<P>>;

std::string name_of(DType t) { return std::string(dtype_name(t)); }
std::string name_of(Solver s) { return std::string(solver_name(s)); }
std::string name_of(std::int64_t group_size) { return "g" + std::to_string(group_size); }

/// Test name of an (nbits, axis, ...) parameter: "4bit_axis1_proximal_g64_F16".
template <class... Rest>
std::string param_name(const std::tuple<int, int, Rest...>& p) {
  std::string s = std::to_string(std::get<0>(p)) + "bit_axis" + std::to_string(std::get<1>(p));
  std::apply([&s](int, int, const Rest&... rest) { ((s += "_" + name_of(rest)), ...); }, p);
  return s;
}

// ------------------------------------------------------------ data

enum class Dist { kHeavy, kUniform, kNormal };

const char* dist_name(Dist d) { return d == Dist::kHeavy ? "heavy" : d == Dist::kUniform ? "uniform" : "normal"; }

std::vector<float> make_values(Dist d, std::size_t n, std::uint32_t seed) {
  if (d == Dist::kHeavy) return test::heavy_tailed(n, seed);
  std::mt19937 gen(seed);
  std::vector<float> v(n);
  if (d == Dist::kUniform) {
    std::uniform_real_distribution<float> u(-0.05f, 0.05f);
    for (auto& x : v) x = u(gen);
  } else {
    std::normal_distribution<float> g(0.0f, 0.02f);
    for (auto& x : v) x = g(gen);
  }
  return v;
}

/// floats -> bytes of an f32/f16/bf16 tensor (rounded to nearest even).
std::vector<std::uint8_t> encode(const std::vector<float>& v, DType t) { return encode_floats(v, t); }

/// Bytes of an f32/f16/bf16 tensor -> floats (exact).
std::vector<float> decode(const std::vector<std::uint8_t>& bytes, DType t) {
  return decode_floats(bytes.data(), bytes.size(), t);
}

/// A weight in its storage dtype.
struct HostWeight {
  std::vector<std::int64_t> shape;
  DType dtype = DType::kF32;
  std::vector<std::uint8_t> bytes;
  TensorView view() const { return {bytes.data(), shape, dtype}; }
  std::int64_t numel() const { return shape_numel(shape); }
};

HostWeight make_weight(std::vector<std::int64_t> shape, DType dtype, const std::vector<float>& values) {
  return {std::move(shape), dtype, encode(values, dtype)};
}

QuantConfig make_config(int nbits, std::int64_t group, int axis, Solver solver, DType scale_dtype = DType::kF32) {
  QuantConfig c;
  c.nbits = nbits;
  c.group_size = group;
  c.axis = axis;
  c.solver = solver;
  c.scale_dtype = scale_dtype;
  return c;
}

/// Buffer sizes, computed from packing.hpp (independently of quantize_sizes).
struct Geometry {
  std::int64_t rows = 0, cols = 0, groups = 0, packed_bytes = 0, meta_bytes = 0;
};

Geometry geometry(const std::vector<std::int64_t>& shape, const QuantConfig& c) {
  const GroupedView v(shape_numel(shape), c.group_size, c.axis);
  Geometry g;
  g.rows = v.rows();
  g.cols = v.cols();
  g.groups = v.num_groups();
  g.packed_bytes = packed_bytes(c.nbits, g.rows, g.cols);
  g.meta_bytes = g.groups * static_cast<std::int64_t>(dtype_size(c.scale_dtype));
  return g;
}

cuda::DeviceQuantizedView make_view(const std::vector<std::int64_t>& shape, const QuantConfig& c, void* packed,
                                    void* scale, void* zero) {
  cuda::DeviceQuantizedView v;
  v.shape = shape;
  v.nbits = c.nbits;
  v.group_size = c.group_size;
  v.axis = c.axis;
  v.scale_dtype = c.scale_dtype;
  v.packed = packed;
  v.scale = scale;
  v.zero = zero;
  return v;
}

// ------------------------------------------------------------ GPU quantize, read back

enum class Mem { kDevice, kHost };

/// What a GPU quantize wrote: packed bytes, and scale/zero as stored (scale_dtype).
struct Raw {
  std::vector<std::uint8_t> packed, scale, zero;
  bool operator==(const Raw& o) const { return packed == o.packed && scale == o.scale && zero == o.zero; }
};

/// cuda::quantize with the weight and the outputs in the given memories; the
/// outputs are poisoned with `poison` first.
Raw gpu_quantize(const HostWeight& w, const QuantConfig& cfg, Mem in, Mem out, std::uint8_t poison,
                 const cuda::Options& options = {}) {
  const Geometry g = geometry(w.shape, cfg);
  DeviceBuffer dw;
  const void* wp = w.bytes.data();
  if (in == Mem::kDevice) {
    dw = DeviceBuffer::from(w.bytes);
    wp = dw.data();
  }
  const TensorView weight{wp, w.shape, w.dtype};
  Raw r;
  if (out == Mem::kDevice) {
    DeviceBuffer p(static_cast<std::size_t>(g.packed_bytes)), s(static_cast<std::size_t>(g.meta_bytes)),
        z(static_cast<std::size_t>(g.meta_bytes));
    p.fill(poison);
    s.fill(poison);
    z.fill(poison);
    cuda::quantize(weight, cfg, make_view(w.shape, cfg, p.data(), s.data(), z.data()), options);
    r.packed = p.to_vector<std::uint8_t>();  // synchronous: orders after the quantize
    r.scale = s.to_vector<std::uint8_t>();
    r.zero = z.to_vector<std::uint8_t>();
  } else {
    r.packed.assign(static_cast<std::size_t>(g.packed_bytes), poison);
    r.scale.assign(static_cast<std::size_t>(g.meta_bytes), poison);
    r.zero.assign(static_cast<std::size_t>(g.meta_bytes), poison);
    cuda::quantize(weight, cfg, make_view(w.shape, cfg, r.packed.data(), r.scale.data(), r.zero.data()), options);
  }
  return r;
}

/// A host QuantizedTensor's Raw form (scale/zero encoded as scale_dtype).
Raw raw_of(const QuantizedTensor& q) {
  return {q.packed, encode(q.scale, q.scale_dtype), encode(q.zero, q.scale_dtype)};
}

/// Spacing of scale_dtype values around |x| (0 for F32: compared relatively).
float storage_ulp(DType t, float x) {
  if (t == DType::kF16) return test::f16_ulp(x);
  if (t == DType::kBF16) {
    const float ax = std::fabs(x);
    if (ax < std::numeric_limits<float>::min()) return std::numeric_limits<float>::denorm_min();
    int e;
    std::frexp(ax, &e);
    return std::ldexp(1.0f, e - 8);
  }
  return 0.0f;
}

/// Statistics of a GPU-vs-CPU comparison.
struct Agreement {
  std::int64_t code_diffs = 0, code_diffs_over_one = 0, scale_bad = 0, zero_bad = 0, zero_far = 0;
  float worst_zero_shift = 0;
  std::string examples;
};

/// Checks a GPU quantize result against the CPU backend's for the same weight
/// and config (tolerances above: RTN is bit-exact).
void expect_matches_cpu(const Raw& gpu, const QuantizedTensor& cpu, const QuantConfig& cfg) {
  const GroupedView v = cpu.view();
  const std::int64_t numel = v.numel;
  ASSERT_EQ(gpu.packed.size(), cpu.packed.size());
  ASSERT_EQ(gpu.scale.size(), static_cast<std::size_t>(v.num_groups()) * dtype_size(cfg.scale_dtype));
  ASSERT_EQ(gpu.zero.size(), gpu.scale.size());
  const bool exact = cfg.solver == Solver::kNone;

  // Codes: unpacked by the scalar oracle; the packed bytes must be canonical
  // (3-bit padding rows and bits 30-31 zero), i.e. repack to the same bytes.
  std::vector<std::uint8_t> gcodes(static_cast<std::size_t>(numel), 0xEE);
  unpack_ref(cfg.nbits, gpu.packed.data(), v.rows(), v.cols(), gcodes.data());
  std::vector<std::uint8_t> repacked(gpu.packed.size(), 0xEE);
  pack_ref(cfg.nbits, gcodes.data(), v.rows(), v.cols(), repacked.data());
  if (repacked != gpu.packed) {
    const auto m = std::mismatch(repacked.begin(), repacked.end(), gpu.packed.begin());
    ADD_FAILURE() << "GPU packed bytes are not canonical (padding or spare bits set): byte "
                  << (m.first - repacked.begin()) << " is " << int(*m.second) << ", repacked " << int(*m.first);
  }
  if (exact) {
    EXPECT_TRUE(gpu.packed == cpu.packed) << "RTN packed bytes differ from the CPU backend's";
  }
  const std::vector<std::uint8_t> ccodes = unpack_codes(cpu);
  const std::vector<float> gs = decode(gpu.scale, cfg.scale_dtype), gz = decode(gpu.zero, cfg.scale_dtype);

  Agreement a;
  std::ostringstream ex;
  int shown = 0;
  for (std::int64_t i = 0; i < numel; ++i) {
    if (gcodes[i] == ccodes[i]) continue;
    ++a.code_diffs;
    if (std::abs(int(gcodes[i]) - int(ccodes[i])) > 1) ++a.code_diffs_over_one;
    if (shown++ < 4) ex << "  code at flat " << i << ": gpu " << int(gcodes[i]) << " cpu " << int(ccodes[i]) << "\n";
  }
  shown = 0;
  for (std::int64_t g = 0; g < v.num_groups(); ++g) {
    const float gsv = gs[g], csv = cpu.scale[g], gzv = gz[g], czv = cpu.zero[g];
    bool scale_ok, zero_ok;
    if (exact) {
      scale_ok = float_bits(gsv) == float_bits(csv);
      zero_ok = float_bits(gzv) == float_bits(czv);
    } else if (cfg.scale_dtype == DType::kF32) {
      scale_ok = std::fabs(gsv - csv) <= kMetaRelTol * std::max(std::fabs(gsv), std::fabs(csv));
      zero_ok = std::fabs(gzv - czv) <= kMetaRelTol * std::max({std::fabs(gzv), std::fabs(czv), 1.0f});
    } else {
      // Rounded to f16/bf16 once: equal, or neighbours around a rounding boundary.
      scale_ok = std::fabs(gsv - csv) <= storage_ulp(cfg.scale_dtype, std::max(std::fabs(gsv), std::fabs(csv)));
      zero_ok = std::fabs(gzv - czv) <= storage_ulp(cfg.scale_dtype, std::max(std::fabs(gzv), std::fabs(czv)));
    }
    if (!scale_ok) ++a.scale_bad;
    if (!zero_ok) {
      ++a.zero_bad;
      const float shift = std::fabs(gzv - czv);
      if (!(shift <= kMaxTieZeroShift)) ++a.zero_far;
      if (!(shift <= a.worst_zero_shift)) a.worst_zero_shift = shift;  // NaN sticks
    }
    if ((!scale_ok || !zero_ok) && shown++ < 4) {
      ex << "  group " << g << ": scale gpu " << gsv << " cpu " << csv << ", zero gpu " << gzv << " cpu " << czv
         << " (shift x group_size = " << (gzv - czv) * static_cast<float>(cfg.group_size) << ")\n";
    }
  }
  a.examples = ex.str();

  const std::int64_t code_budget = exact ? 0 : static_cast<std::int64_t>(kMaxCodeDiffFraction * double(numel));
  const std::int64_t tie_groups = exact ? 0 : static_cast<std::int64_t>(kMaxTieGroupFraction * double(numel));
  const std::string summary =
      "codes differing: " + std::to_string(a.code_diffs) + " of " + std::to_string(numel) + " (budget " +
      std::to_string(code_budget) + ", by more than one level: " + std::to_string(a.code_diffs_over_one) +
      "); scale off: " + std::to_string(a.scale_bad) + "; zero off: " + std::to_string(a.zero_bad) + " of " +
      std::to_string(v.num_groups()) + " groups (budget " + std::to_string(tie_groups) +
      ", beyond one step: " + std::to_string(a.zero_far) + ", worst shift " + std::to_string(a.worst_zero_shift) +
      ")\n" + a.examples;
  if (verbose()) std::cout << "[ agreement ] " << summary;
  EXPECT_EQ(a.code_diffs_over_one, 0) << summary;
  EXPECT_LE(a.code_diffs, code_budget) << summary;
  EXPECT_EQ(a.scale_bad, 0) << summary;  // scale depends on min/max only: no tie can move it
  EXPECT_LE(a.zero_bad, tie_groups) << summary;
  EXPECT_EQ(a.zero_far, 0) << summary;
}

/// Element-wise bit comparison of two tensors of `elem` bytes per element.
void expect_same_bytes(const std::vector<std::uint8_t>& got, const std::vector<std::uint8_t>& want, std::size_t elem,
                       const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  if (got == want) return;
  std::size_t bad = 0, first = got.size();
  for (std::size_t i = 0; i < got.size(); i += elem) {
    if (std::memcmp(got.data() + i, want.data() + i, elem) != 0) {
      if (first == got.size()) first = i;
      ++bad;
    }
  }
  auto hex = [&](const std::vector<std::uint8_t>& b) {
    std::ostringstream os;
    os << "0x" << std::hex;
    for (std::size_t k = elem; k-- > 0;) os << (b[first + k] >> 4) << (b[first + k] & 15);
    return os.str();
  };
  ADD_FAILURE() << what << ": " << bad << " of " << got.size() / elem << " elements differ; first at element "
                << first / elem << ": got " << hex(got) << ", want " << hex(want);
}

// ============================================================ no device

// Without a usable device every entry point exists and throws hqq::Error
// saying why (the message names CUDA). Runs exactly when the GPU tests skip.
TEST(CudaNoDevice, DeviceApiThrowsSayingWhy) {
  const Support s = cuda::available();
  if (s.ok) {
    GTEST_SKIP() << "a CUDA device is usable (" << cuda::device_description()
                 << "); this test checks the no-device errors";
  }
  EXPECT_THAT(s.reason, HasSubstr("CUDA"));
  if (!kCudaEnabled) {
    EXPECT_EQ(cuda::device_count(), 0);
  }
  EXPECT_FALSE(cuda::device_description().empty());

  EXPECT_THAT(error_of([] { DeviceBuffer b(1024); }), HasSubstr("CUDA"));
  DeviceBuffer empty;  // default construction and moves never throw
  DeviceBuffer moved(std::move(empty));
  EXPECT_EQ(moved.data(), nullptr);
  EXPECT_EQ(moved.size(), 0u);

  const std::vector<std::int64_t> shape{64, 128};
  const HostWeight w = make_weight(shape, DType::kF32, test::heavy_tailed(64 * 128, 1));
  const QuantConfig cfg = make_config(4, 64, 1, Solver::kProximal, DType::kF16);
  const Geometry g = geometry(shape, cfg);
  std::vector<std::uint8_t> packed(static_cast<std::size_t>(g.packed_bytes)),
      scale(static_cast<std::size_t>(g.meta_bytes)), zero(static_cast<std::size_t>(g.meta_bytes));
  const auto view = make_view(shape, cfg, packed.data(), scale.data(), zero.data());
  EXPECT_THAT(error_of([&] { cuda::quantize(w.view(), cfg, view); }), HasSubstr("CUDA"));
  EXPECT_THAT(error_of([&] { cuda::DeviceQuantized q(w.view(), cfg); }), HasSubstr("CUDA"));
  std::vector<float> out(64 * 128);
  EXPECT_THAT(error_of([&] {
                cuda::dequantize(view, MutableTensorView{out.data(), shape, DType::kF32});
              }),
              HasSubstr("CUDA"));
  const QuantizedTensor q = quantize(w.view(), cfg, "cpu");
  EXPECT_THAT(error_of([&] { cuda::DeviceQuantized dq(q); }), HasSubstr("CUDA"));
  std::vector<std::uint8_t> codes(64 * 128, 1), packed2(64 * 64);
  EXPECT_THAT(error_of([&] { cuda::pack(4, codes.data(), 128, 64, packed2.data()); }), HasSubstr("CUDA"));
  EXPECT_THAT(error_of([&] { cuda::unpack(4, packed2.data(), 128, 64, codes.data()); }), HasSubstr("CUDA"));
}

TEST(CudaNoDevice, CudaBackendByNameThrowsSayingWhy) {
  const Support s = cuda::available();
  if (s.ok) {
    GTEST_SKIP() << "a CUDA device is usable (" << cuda::device_description()
                 << "); this test checks the no-device errors";
  }
  const HostWeight w = make_weight({64, 128}, DType::kF16, test::heavy_tailed(64 * 128, 2));
  EXPECT_THAT(error_of([&] { quantize(w.view(), QuantConfig{}, "cuda"); }), HasSubstr("CUDA"));
  const QuantizedTensor q = quantize(w.view(), QuantConfig{}, "cpu");
  std::vector<float> out(64 * 128);
  EXPECT_THAT(error_of([&] {
                dequantize(q, MutableTensorView{out.data(), {64, 128}, DType::kF32}, "cuda");
              }),
              HasSubstr("CUDA"));
}

// ============================================================ device basics

TEST_F(CudaDevice, ReportsItselfAndTheBackendIsRegistered) {
  EXPECT_GE(cuda::device_count(), 1);
  const std::string d = cuda::device_description();
  EXPECT_FALSE(d.empty());
  std::cout << "[ device    ] " << d << "\n";
  RecordProperty("device", d);
  const Backend& b = get_backend("cuda");
  EXPECT_EQ(b.name(), "cuda");
  EXPECT_TRUE(b.supports(QuantConfig{}, DType::kF16).ok) << b.supports(QuantConfig{}, DType::kF16).reason;
  EXPECT_FALSE(b.supports(QuantConfig{}, DType::kI8).ok);
}

TEST_F(CudaDevice, BufferRoundTripsAndFills) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 gen(seed);
  std::vector<std::uint8_t> v(100003);
  for (auto& x : v) x = static_cast<std::uint8_t>(gen());
  DeviceBuffer b = DeviceBuffer::from(v);
  EXPECT_EQ(b.size(), v.size());
  EXPECT_EQ(b.to_vector<std::uint8_t>(), v);
  std::vector<std::uint8_t> part(1000);
  b.download(part.data(), part.size(), 5000);
  EXPECT_TRUE(std::equal(part.begin(), part.end(), v.begin() + 5000));
  b.upload(part.data(), 10, 7);  // bytes 7..16 <- v[5000..5009]
  std::copy(part.begin(), part.begin() + 10, v.begin() + 7);
  EXPECT_EQ(b.to_vector<std::uint8_t>(), v);
  b.fill(0xA5);
  EXPECT_EQ(b.to_vector<std::uint8_t>(), std::vector<std::uint8_t>(v.size(), 0xA5));
  DeviceBuffer moved(std::move(b));
  EXPECT_EQ(moved.size(), v.size());
  EXPECT_EQ(b.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is documented empty
  EXPECT_THAT(error_of([&] { moved.download(part.data(), 10, v.size() - 5); }),  // past the end
              ::testing::Not(HasSubstr("no hqq::Error")));
}

TEST_F(CudaDevice, QuantizeSizesMatchThePackedLayout) {
  for (int nbits : {8, 4, 3, 2, 1}) {
    for (int axis : {0, 1}) {
      for (DType sd : {DType::kF16, DType::kBF16, DType::kF32}) {
        const std::vector<std::int64_t> shape{296, 160};
        const QuantConfig cfg = make_config(nbits, 32, axis, Solver::kProximal, sd);
        const Geometry g = geometry(shape, cfg);
        const cuda::QuantizeSizes s = cuda::quantize_sizes(shape, cfg);
        EXPECT_EQ(s.packed_bytes, g.packed_bytes) << nbits << "-bit axis " << axis;
        EXPECT_EQ(s.num_groups, g.groups);
        EXPECT_EQ(s.meta_bytes, g.meta_bytes);
      }
    }
  }
}

// ============================================================ 1. quantize vs the CPU backend

using SweepParam = std::tuple<int, int, Solver, std::int64_t, DType>;  // nbits, axis, solver, group, input dtype

class CudaQuantizeSweep : public GpuTestP<SweepParam> {};

// [256, 512] heavy-tailed weights, every width x axis x solver x group x input
// dtype; F32 storage so that scale/zero compare before rounding. Grouped rows
// are 512..4096 (axis 1) or 32..256 (axis 0): 3-bit always pads.
TEST_P(CudaQuantizeSweep, MatchesCpuBackend) {
  const auto [nbits, axis, solver, group, dtype] = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const HostWeight w = make_weight({256, 512}, dtype, test::heavy_tailed(256 * 512, seed));
  const QuantConfig cfg = make_config(nbits, group, axis, solver, DType::kF32);
  const QuantizedTensor cpu = quantize(w.view(), cfg, "cpu");
  expect_matches_cpu(gpu_quantize(w, cfg, Mem::kDevice, Mem::kDevice, 0xFF), cpu, cfg);
}

INSTANTIATE_TEST_SUITE_P(All, CudaQuantizeSweep,
                         ::testing::Combine(::testing::Values(8, 4, 3, 2, 1), ::testing::Values(0, 1),
                                            ::testing::Values(Solver::kProximal, Solver::kLegacy, Solver::kNone),
                                            ::testing::Values<std::int64_t>(32, 64, 128, 256),
                                            ::testing::Values(DType::kF32, DType::kF16, DType::kBF16)),
                         [](const auto& i) { return param_name(i.param); });

// Odd shapes, group sizes that are not powers of two, groups above the fast
// path's 1024, 3-bit with rows not a multiple of 10, 1-D and 3-D weights,
// uniform and normal weights, and two larger matrices.
struct OddCase {
  std::vector<std::int64_t> shape;
  int nbits;
  int axis;
  std::int64_t group;
  Solver solver;
  DType dtype;
  Dist dist;
};

void PrintTo(const OddCase& c, std::ostream* os) {
  *os << "shape [";
  for (std::size_t i = 0; i < c.shape.size(); ++i) *os << (i ? ", " : "") << c.shape[i];
  *os << "] " << c.nbits << "-bit axis " << c.axis << " g" << c.group << " " << solver_name(c.solver) << " "
      << dtype_name(c.dtype) << " " << dist_name(c.dist);
}

std::string odd_name(const OddCase& c) {
  std::string s;
  for (auto d : c.shape) s += std::to_string(d) + "x";
  s.pop_back();
  return s + "_" + std::to_string(c.nbits) + "bit_axis" + std::to_string(c.axis) + "_g" + std::to_string(c.group) +
         "_" + name_of(c.solver) + "_" + name_of(c.dtype) + "_" + dist_name(c.dist);
}

std::vector<OddCase> odd_cases() {
  using S = Solver;
  using T = DType;
  // clang-format off
  return {
      {{96, 160},     4, 1, 32,   S::kProximal, T::kF32,  Dist::kHeavy},    // 480 rows
      {{96, 160},     8, 1, 96,   S::kProximal, T::kF16,  Dist::kUniform},  // g96: 160 rows
      {{96, 160},     3, 0, 96,   S::kLegacy,   T::kBF16, Dist::kNormal},   // 96 rows: 3-bit pads to 100
      {{96, 160},     2, 1, 160,  S::kProximal, T::kF32,  Dist::kHeavy},    // one group per matrix row
      {{96, 160},     1, 1, 32,   S::kNone,     T::kF32,  Dist::kNormal},
      {{296, 96},     1, 1, 48,   S::kNone,     T::kF16,  Dist::kHeavy},    // 592 rows
      {{296, 96},     4, 0, 48,   S::kProximal, T::kBF16, Dist::kUniform},
      {{296, 96},     3, 1, 32,   S::kProximal, T::kF32,  Dist::kHeavy},    // 888 rows: 3-bit pads to 890
      {{296, 96},     3, 1, 48,   S::kLegacy,   T::kF16,  Dist::kHeavy},    // 592 rows
      {{296, 96},     1, 0, 296,  S::kLegacy,   T::kF32,  Dist::kNormal},   // groups of 296 down the columns
      {{8, 64},       3, 1, 64,   S::kProximal, T::kF32,  Dist::kHeavy},    // 8 rows: one padded 3-bit row
      {{4096},        4, 1, 64,   S::kProximal, T::kF32,  Dist::kHeavy},    // 1-D
      {{8, 12, 256},  4, 0, 128,  S::kProximal, T::kF16,  Dist::kHeavy},    // 3-D
      {{32, 4096},    8, 1, 1024, S::kNone,     T::kF32,  Dist::kUniform},  // largest register-path group
      {{32, 4096},    1, 0, 1024, S::kProximal, T::kF16,  Dist::kHeavy},
      {{32, 4096},    4, 1, 1024, S::kLegacy,   T::kF32,  Dist::kHeavy},
      {{64, 4096},    4, 1, 2048, S::kProximal, T::kF16,  Dist::kHeavy},    // large-group path
      {{64, 4096},    3, 0, 2048, S::kProximal, T::kF32,  Dist::kHeavy},    // large-group path, 2048 rows
      {{64, 4096},    2, 1, 2048, S::kNone,     T::kBF16, Dist::kNormal},
      {{48, 4096},    2, 1, 1536, S::kLegacy,   T::kBF16, Dist::kHeavy},    // not a power of two
      {{8, 5120},     4, 1, 5120, S::kProximal, T::kF32,  Dist::kUniform},
      {{3000, 16},    4, 0, 3000, S::kProximal, T::kF16,  Dist::kHeavy},    // axis 0, 16 groups of 3000
      {{16, 2048},    8, 1, 2048, S::kLegacy,   T::kF32,  Dist::kNormal},
      {{2048, 4096},  4, 1, 64,   S::kProximal, T::kBF16, Dist::kHeavy},    // larger
      {{4096, 1024},  3, 0, 128,  S::kLegacy,   T::kF16,  Dist::kHeavy},    // larger, 128 rows
  };
  // clang-format on
}

class CudaQuantizeOdd : public GpuTestP<OddCase> {};

TEST_P(CudaQuantizeOdd, MatchesCpuBackend) {
  const OddCase& c = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const std::int64_t n = shape_numel(c.shape);
  const HostWeight w = make_weight(c.shape, c.dtype, make_values(c.dist, static_cast<std::size_t>(n), seed));
  const QuantConfig cfg = make_config(c.nbits, c.group, c.axis, c.solver, DType::kF32);
  const QuantizedTensor cpu = quantize(w.view(), cfg, "cpu");
  expect_matches_cpu(gpu_quantize(w, cfg, Mem::kDevice, Mem::kDevice, 0xFF), cpu, cfg);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaQuantizeOdd, ::testing::ValuesIn(odd_cases()),
                         [](const auto& i) { return odd_name(i.param); });

// Groups built to hit every branch of the init (DESIGN §1): constant groups
// and ranges <= 1e-4 (s = 1), tiny ranges (s capped at 2e4), all zeros, large
// magnitudes, one-signed groups, single outliers, f16 subnormals.
using SpecialParam = std::tuple<int, int, Solver, DType>;  // nbits, axis, solver, input dtype

class CudaQuantizeSpecial : public GpuTestP<SpecialParam> {};

TEST_P(CudaQuantizeSpecial, MatchesCpuBackend) {
  const auto [nbits, axis, solver, dtype] = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const std::vector<std::int64_t> shape{64, 256};
  const std::int64_t G = 64;
  const GroupedView v(64 * 256, G, axis);
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const std::vector<float> base = test::heavy_tailed(64 * 256, seed + 1);
  std::vector<float> w(64 * 256);
  for (std::int64_t g = 0; g < v.num_groups(); ++g) {
    const float c = 0.1f * u(gen);
    for (std::int64_t i = 0; i < G; ++i) {
      const std::int64_t k = v.index(g, i);
      float x = base[k];
      switch (g % 9) {
        case 0:
          break;  // plain
        case 1:
          x = c;
          break;  // constant
        case 2:
          x = c + 2.5e-5f * u(gen);
          break;  // range <= 1e-4: s = 1
        case 3:
          x = 1.5e-4f * u(gen);
          break;  // tiny range: s capped at 2e4
        case 4:
          x = 0.0f;
          break;  // all zeros
        case 5:
          x = 2000.0f * u(gen);
          break;  // large magnitudes
        case 6:
          x = std::fabs(x) + 0.01f;
          break;  // all positive
        case 7:
          x = i == 17 ? 50.0f * c + 3.0f : x;
          break;  // one outlier
        case 8:
          x = 3e-6f * u(gen);
          break;  // f16 subnormals
      }
      w[k] = x;
    }
  }
  const HostWeight hw = make_weight(shape, dtype, w);
  const QuantConfig cfg = make_config(nbits, G, axis, solver, DType::kF32);
  const QuantizedTensor cpu = quantize(hw.view(), cfg, "cpu");
  expect_matches_cpu(gpu_quantize(hw, cfg, Mem::kDevice, Mem::kDevice, 0xFF), cpu, cfg);
}

INSTANTIATE_TEST_SUITE_P(All, CudaQuantizeSpecial,
                         ::testing::Combine(::testing::Values(8, 4, 3, 2, 1), ::testing::Values(0, 1),
                                            ::testing::Values(Solver::kProximal, Solver::kLegacy, Solver::kNone),
                                            ::testing::Values(DType::kF32, DType::kF16)),
                         [](const auto& i) { return param_name(i.param); });

// F16/BF16 storage: stored scale/zero are the CPU's within one storage step
// (a value near a rounding boundary), and the codes agree as above (the
// proximal solver's codes come from the rounded values, legacy's and RTN's
// from the unrounded ones, exactly as on the CPU).
using StoredParam = std::tuple<int, int, Solver, DType>;  // nbits, axis, solver, scale dtype

class CudaQuantizeStored : public GpuTestP<StoredParam> {};

TEST_P(CudaQuantizeStored, MatchesCpuBackend) {
  const auto [nbits, axis, solver, scale_dtype] = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const HostWeight w = make_weight({128, 256}, DType::kF16, test::heavy_tailed(128 * 256, seed));
  const QuantConfig cfg = make_config(nbits, 64, axis, solver, scale_dtype);
  const QuantizedTensor cpu = quantize(w.view(), cfg, "cpu");
  expect_matches_cpu(gpu_quantize(w, cfg, Mem::kDevice, Mem::kDevice, 0xFF), cpu, cfg);
}

INSTANTIATE_TEST_SUITE_P(All, CudaQuantizeStored,
                         ::testing::Combine(::testing::Values(8, 4, 3, 2, 1), ::testing::Values(0, 1),
                                            ::testing::Values(Solver::kProximal, Solver::kLegacy, Solver::kNone),
                                            ::testing::Values(DType::kF16, DType::kBF16)),
                         [](const auto& i) { return param_name(i.param); });

// ============================================================ 4. device and host pointers

struct PathCase {
  std::vector<std::int64_t> shape;
  int nbits;
  int axis;
  std::int64_t group;
  Solver solver;
  DType dtype;
  DType scale_dtype;
};

void PrintTo(const PathCase& c, std::ostream* os) {
  *os << c.nbits << "-bit axis " << c.axis << " g" << c.group << " " << solver_name(c.solver) << " "
      << dtype_name(c.dtype) << " scale " << dtype_name(c.scale_dtype);
}

class CudaQuantizePaths : public GpuTestP<PathCase> {};

// The same job through every entry point and memory combination gives the
// same bits: cuda::quantize (device/host weight x device/host outputs, own or
// caller workspace, check_finite on or off), DeviceQuantized, and
// hqq::quantize(..., "cuda"); and it agrees with the CPU backend.
TEST_P(CudaQuantizePaths, EveryPathGivesTheSameBits) {
  const PathCase& c = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const std::int64_t n = shape_numel(c.shape);
  const HostWeight w = make_weight(c.shape, c.dtype, test::heavy_tailed(static_cast<std::size_t>(n), seed));
  const QuantConfig cfg = make_config(c.nbits, c.group, c.axis, c.solver, c.scale_dtype);

  const Raw base = gpu_quantize(w, cfg, Mem::kDevice, Mem::kDevice, 0xFF);
  expect_matches_cpu(base, quantize(w.view(), cfg, "cpu"), cfg);

  EXPECT_TRUE(gpu_quantize(w, cfg, Mem::kDevice, Mem::kDevice, 0x00) == base) << "second run, other poison";
  EXPECT_TRUE(gpu_quantize(w, cfg, Mem::kHost, Mem::kHost, 0x00) == base) << "host weight, host outputs";
  EXPECT_TRUE(gpu_quantize(w, cfg, Mem::kDevice, Mem::kHost, 0x5A) == base) << "device weight, host outputs";
  EXPECT_TRUE(gpu_quantize(w, cfg, Mem::kHost, Mem::kDevice, 0xA5) == base) << "host weight, device outputs";
  cuda::Options async;
  async.check_finite = false;
  EXPECT_TRUE(gpu_quantize(w, cfg, Mem::kDevice, Mem::kDevice, 0xFF, async) == base) << "check_finite=false";

  const cuda::QuantizeSizes sizes = cuda::quantize_sizes(w.shape, cfg);
  if (sizes.workspace_bytes > 0) {
    DeviceBuffer ws(sizes.workspace_bytes);
    ws.fill(0xFF);
    cuda::Options with_ws;
    with_ws.workspace = ws.data();
    with_ws.workspace_bytes = ws.size();
    EXPECT_TRUE(gpu_quantize(w, cfg, Mem::kDevice, Mem::kDevice, 0xFF, with_ws) == base) << "caller workspace";
    ws.fill(0x00);
    with_ws.check_finite = false;
    EXPECT_TRUE(gpu_quantize(w, cfg, Mem::kDevice, Mem::kDevice, 0xFF, with_ws) == base)
        << "caller workspace, check_finite=false";
    with_ws.workspace_bytes = sizes.workspace_bytes - 1;
    EXPECT_THAT(error_of([&] { gpu_quantize(w, cfg, Mem::kDevice, Mem::kDevice, 0xFF, with_ws); }),
                HasSubstr("workspace"));
  }

  // Owning and backend paths, compared as host QuantizedTensors.
  const DeviceBuffer dw = DeviceBuffer::from(w.bytes);
  const QuantizedTensor from_device = cuda::DeviceQuantized(TensorView{dw.data(), w.shape, w.dtype}, cfg).to_host();
  const QuantizedTensor from_host = cuda::DeviceQuantized(w.view(), cfg).to_host();
  const QuantizedTensor backend = quantize(w.view(), cfg, "cuda");
  for (const QuantizedTensor* q : {&from_device, &from_host, &backend}) {
    const char* what = q == &from_device ? "DeviceQuantized(device weight)"
                       : q == &from_host ? "DeviceQuantized(host weight)"
                                         : "quantize(..., \"cuda\")";
    EXPECT_NO_THROW(q->validate()) << what;
    EXPECT_EQ(q->shape, w.shape) << what;
    EXPECT_EQ(q->nbits, cfg.nbits) << what;
    EXPECT_EQ(q->group_size, cfg.group_size) << what;
    EXPECT_EQ(q->axis, cfg.axis) << what;
    EXPECT_EQ(q->solver, cfg.solver) << what;
    EXPECT_EQ(q->round_zero, cfg.effective_round_zero()) << what;
    EXPECT_EQ(q->scale_dtype, cfg.scale_dtype) << what;
    EXPECT_TRUE(raw_of(*q) == base) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaQuantizePaths,
                         ::testing::Values(PathCase{{256, 512}, 4, 1, 64, Solver::kProximal, DType::kF16, DType::kF16},
                                           PathCase{{256, 512}, 3, 0, 128, Solver::kLegacy, DType::kBF16, DType::kF32},
                                           PathCase{{296, 96}, 2, 1, 32, Solver::kNone, DType::kF32, DType::kBF16},
                                           PathCase{{296, 96}, 1, 0, 48, Solver::kProximal, DType::kF32, DType::kF32},
                                           PathCase{{256, 512}, 4, 1, 64, Solver::kLegacy, DType::kF32, DType::kF16},
                                           PathCase{
                                               {64, 4096}, 8, 1, 2048, Solver::kProximal, DType::kF16, DType::kF16}),
                         [](const auto& i) {
                           const PathCase& c = i.param;
                           return std::to_string(c.nbits) + "bit_axis" + std::to_string(c.axis) + "_g" +
                                  std::to_string(c.group) + "_" + name_of(c.solver) + "_" + name_of(c.dtype) +
                                  "_scale" + name_of(c.scale_dtype);
                         });

// ============================================================ 2. dequantize

/// A host QuantizedTensor as a view over host memory.
struct HostQuantized {
  std::vector<std::uint8_t> packed, scale, zero;
  cuda::DeviceQuantizedView view;
  explicit HostQuantized(const QuantizedTensor& q)
      : packed(q.packed), scale(encode(q.scale, q.scale_dtype)), zero(encode(q.zero, q.scale_dtype)) {
    QuantConfig c = make_config(q.nbits, q.group_size, q.axis, q.solver, q.scale_dtype);
    view = make_view(q.shape, c, packed.data(), scale.data(), zero.data());
  }
};

/// The same, uploaded by hand into DeviceBuffers.
struct DeviceCopy {
  DeviceBuffer packed, scale, zero;
  cuda::DeviceQuantizedView view;
  explicit DeviceCopy(const QuantizedTensor& q)
      : packed(DeviceBuffer::from(q.packed)),
        scale(DeviceBuffer::from(encode(q.scale, q.scale_dtype))),
        zero(DeviceBuffer::from(encode(q.zero, q.scale_dtype))) {
    QuantConfig c = make_config(q.nbits, q.group_size, q.axis, q.solver, q.scale_dtype);
    view = make_view(q.shape, c, packed.data(), scale.data(), zero.data());
  }
};

std::vector<std::uint8_t> cpu_dequantize(const QuantizedTensor& q, DType out) {
  std::vector<std::uint8_t> b(static_cast<std::size_t>(q.numel()) * dtype_size(out), 0xFF);
  dequantize(q, MutableTensorView{b.data(), q.shape, out}, "cpu");
  return b;
}

/// cuda::dequantize of `view` into a poisoned buffer in `mem`, read back.
std::vector<std::uint8_t> gpu_dequantize(const cuda::DeviceQuantizedView& view, DType out, Mem mem,
                                         std::uint8_t poison) {
  const std::size_t bytes = static_cast<std::size_t>(view.numel()) * dtype_size(out);
  if (mem == Mem::kHost) {
    std::vector<std::uint8_t> b(bytes, poison);
    cuda::dequantize(view, MutableTensorView{b.data(), view.shape, out});
    return b;
  }
  DeviceBuffer d(bytes);
  d.fill(poison);
  cuda::dequantize(view, MutableTensorView{d.data(), view.shape, out});
  return d.to_vector<std::uint8_t>();
}

/// Every dequantize path against the CPU backend, bit for bit.
void expect_dequantize_matches_cpu(const QuantizedTensor& q, DType out) {
  const std::vector<std::uint8_t> want = cpu_dequantize(q, out);
  const std::size_t e = dtype_size(out);
  const cuda::DeviceQuantized owned(q);
  const DeviceCopy dev(q);
  const HostQuantized host(q);
  expect_same_bytes(gpu_dequantize(owned.view(), out, Mem::kDevice, 0xFF), want, e, "DeviceQuantized -> device");
  expect_same_bytes(gpu_dequantize(dev.view, out, Mem::kDevice, 0x00), want, e, "device view -> device");
  expect_same_bytes(gpu_dequantize(dev.view, out, Mem::kHost, 0xFF), want, e, "device view -> host");
  expect_same_bytes(gpu_dequantize(host.view, out, Mem::kDevice, 0xFF), want, e, "host view -> device");
  expect_same_bytes(gpu_dequantize(host.view, out, Mem::kHost, 0x5A), want, e, "host view -> host");
  std::vector<std::uint8_t> via_backend(want.size(), 0xFF);
  dequantize(q, MutableTensorView{via_backend.data(), q.shape, out}, "cuda");
  expect_same_bytes(via_backend, want, e, "dequantize(..., \"cuda\")");
  // The upload keeps the interchange bytes and the stored values exactly.
  const QuantizedTensor back = owned.to_host();
  EXPECT_EQ(back.packed, q.packed);
  EXPECT_TRUE(raw_of(back) == raw_of(q));
}

using DequantParam = std::tuple<int, int, DType, DType>;  // nbits, axis, out dtype, scale dtype

class CudaDequantize : public GpuTestP<DequantParam> {};

// Codes, scale and zero from the CPU backend (RTN, fractional zeros); two
// geometries, 3-bit padded.
TEST_P(CudaDequantize, BitExactWithCpuBackend) {
  const auto [nbits, axis, out, scale_dtype] = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  struct Geo {
    std::vector<std::int64_t> shape;
    std::int64_t group;
  };
  for (const Geo& g : {Geo{{296, 96}, 32}, Geo{{256, 512}, 128}}) {
    SCOPED_TRACE("shape [" + std::to_string(g.shape[0]) + ", " + std::to_string(g.shape[1]) + "] g" +
                 std::to_string(g.group));
    const HostWeight w =
        make_weight(g.shape, DType::kF32, test::heavy_tailed(static_cast<std::size_t>(shape_numel(g.shape)), seed));
    QuantConfig cfg = make_config(nbits, g.group, axis, Solver::kNone, scale_dtype);
    cfg.round_zero = false;  // fractional zeros
    const QuantizedTensor q = quantize(w.view(), cfg, "cpu");
    expect_dequantize_matches_cpu(q, out);
  }
}

INSTANTIATE_TEST_SUITE_P(All, CudaDequantize,
                         ::testing::Combine(::testing::Values(8, 4, 3, 2, 1), ::testing::Values(0, 1),
                                            ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                                            ::testing::Values(DType::kF32, DType::kF16, DType::kBF16)),
                         [](const auto& i) {
                           const auto& p = i.param;
                           return param_name(std::make_tuple(std::get<0>(p), std::get<1>(p))) + "_out" +
                                  name_of(std::get<2>(p)) + "_scale" + name_of(std::get<3>(p));
                         });

using ExtremeParam = std::tuple<int, int>;  // nbits, axis

class CudaDequantizeExtreme : public GpuTestP<ExtremeParam> {};

// Random codes over the whole range with scales from 1e-8 to 6e4 (and f32
// subnormals), zeros of either sign: f16 outputs overflow to Inf and go
// subnormal, bf16 rounds; every bit must match the CPU backend.
TEST_P(CudaDequantizeExtreme, BitExactWithCpuBackend) {
  const auto [nbits, axis] = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 gen(seed);
  for (DType sd : {DType::kF32, DType::kF16, DType::kBF16}) {
    QuantizedTensor q;
    q.shape = {296, 96};
    q.nbits = nbits;
    q.group_size = 32;
    q.axis = axis;
    q.scale_dtype = sd;
    const GroupedView v = q.view();
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(v.numel));
    for (auto& c : codes) c = static_cast<std::uint8_t>(gen() & ((1u << nbits) - 1u));
    q.packed.resize(static_cast<std::size_t>(packed_bytes(nbits, v.rows(), v.cols())));
    pack_ref(nbits, codes.data(), v.rows(), v.cols(), q.packed.data());
    std::uniform_real_distribution<float> log_scale(-8.0f, 4.78f), zero_range(-300.0f, 300.0f);
    for (std::int64_t g = 0; g < v.num_groups(); ++g) {
      float s = std::pow(10.0f, log_scale(gen));
      if (sd == DType::kF32 && g % 17 == 0) s = 3e-39f * static_cast<float>(1 + g % 5);  // f32 subnormal
      float z = zero_range(gen);
      if (g % 13 == 0) z = std::nearbyint(z);  // zero on a code: exact zeros
      q.scale.push_back(round_to(sd, s));
      q.zero.push_back(round_to(sd, z));
    }
    for (DType out : {DType::kF32, DType::kF16, DType::kBF16}) {
      SCOPED_TRACE("scale " + name_of(sd) + " out " + name_of(out));
      expect_dequantize_matches_cpu(q, out);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, CudaDequantizeExtreme,
                         ::testing::Combine(::testing::Values(8, 4, 3, 2, 1), ::testing::Values(0, 1)),
                         [](const auto& i) { return param_name(i.param); });

// ============================================================ 3. pack / unpack

class CudaPacking : public GpuTestP<int> {};

TEST_P(CudaPacking, BitExactWithPackRefAndUnpackRef) {
  const int nbits = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 gen(seed);
  const int ratio = nbits == 3 ? 1 : pack_ratio(nbits);
  for (std::int64_t rows : {1, 2, 3, 7, 8, 10, 13, 16, 40, 72, 136, 296, 1000, 4096}) {
    for (std::int64_t cols : {1, 3, 17, 64, 129, 1000}) {
      if (rows % ratio != 0) continue;
      SCOPED_TRACE(std::to_string(nbits) + "-bit " + std::to_string(rows) + "x" + std::to_string(cols));
      const auto nc = static_cast<std::size_t>(rows * cols);
      const auto np = static_cast<std::size_t>(packed_bytes(nbits, rows, cols));
      std::vector<std::uint8_t> codes(nc);
      for (auto& c : codes) c = static_cast<std::uint8_t>(gen() & ((1u << nbits) - 1u));
      std::vector<std::uint8_t> want(np, 0xEE);
      pack_ref(nbits, codes.data(), rows, cols, want.data());

      const DeviceBuffer dcodes = DeviceBuffer::from(codes);
      DeviceBuffer dpacked(np);
      dpacked.fill(0xFF);
      cuda::pack(nbits, static_cast<const std::uint8_t*>(dcodes.data()), rows, cols,
                 static_cast<std::uint8_t*>(dpacked.data()));
      expect_same_bytes(dpacked.to_vector<std::uint8_t>(), want, 1, "pack");

      DeviceBuffer dback(nc);
      dback.fill(0xFF);
      cuda::unpack(nbits, static_cast<const std::uint8_t*>(dpacked.data()), rows, cols,
                   static_cast<std::uint8_t*>(dback.data()));
      expect_same_bytes(dback.to_vector<std::uint8_t>(), codes, 1, "unpack");

      // Host pointers (copied by the call): the same bytes.
      std::vector<std::uint8_t> hpacked(np, 0x5A), hback(nc, 0x5A);
      cuda::pack(nbits, codes.data(), rows, cols, hpacked.data());
      expect_same_bytes(hpacked, want, 1, "pack, host pointers");
      cuda::unpack(nbits, want.data(), rows, cols, hback.data());
      expect_same_bytes(hback, codes, 1, "unpack, host pointers");

      // Arbitrary packed bytes (3-bit: bits 30-31 set too) unpack as the oracle does.
      std::vector<std::uint8_t> noise(np);
      for (auto& b : noise) b = static_cast<std::uint8_t>(gen());
      std::vector<std::uint8_t> noise_codes(nc, 0xEE);
      unpack_ref(nbits, noise.data(), rows, cols, noise_codes.data());
      const DeviceBuffer dnoise = DeviceBuffer::from(noise);
      dback.fill(0x00);
      cuda::unpack(nbits, static_cast<const std::uint8_t*>(dnoise.data()), rows, cols,
                   static_cast<std::uint8_t*>(dback.data()));
      expect_same_bytes(dback.to_vector<std::uint8_t>(), noise_codes, 1, "unpack of arbitrary bytes");
      if (::testing::Test::HasFailure()) return;  // one shape's report is enough
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllWidths, CudaPacking, ::testing::Values(8, 4, 3, 2, 1),
                         [](const auto& i) { return std::to_string(i.param) + "bit"; });

// ============================================================ 5. past 2 GiB

struct LargeCase {
  int nbits;
  std::int64_t rows, cols;  // an f16 weight; RTN, groups of 64 along axis 1
  const char* name;
};

void PrintTo(const LargeCase& c, std::ostream* os) {
  *os << c.name << " ([" << c.rows << ", " << c.cols << "] f16, " << c.nbits << "-bit)";
}

class CudaLarge : public GpuTestP<LargeCase> {};

// An f16 weight over 2^31 bytes (and one over 2^31 elements), quantized with
// RTN along axis 1 on the GPU. Groups are independent there, so windows of
// groups (start, around element 2^30 = byte 2^31, around element 2^31, end)
// must equal the CPU backend run on just those slices: codes (through
// cuda::unpack of the whole tensor), scale and zero, and dequantize. The head
// repeats a block of odd length and the tail is unique, so a wrapped 32-bit
// offset reads different values and shows.
TEST_P(CudaLarge, RtnWindowsMatchCpuBackend) {
  const LargeCase& c = GetParam();
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  constexpr std::int64_t G = 64;
  constexpr std::int64_t kWinGroups = 4096;
  constexpr std::int64_t kWin = kWinGroups * G;
  constexpr std::int64_t kBlock = 1048583;  // odd: no power-of-two wrap lands on the same value
  const std::int64_t numel = c.rows * c.cols;
  const std::int64_t ngroups = numel / G;
  const std::int64_t tail_start = numel - kWin;
  const QuantConfig cfg = make_config(c.nbits, G, 1, Solver::kNone, DType::kF16);
  const std::vector<std::int64_t> shape{c.rows, c.cols};
  const Geometry geo = geometry(shape, cfg);

  std::vector<half> block(kBlock), tail(kWin);
  {
    const auto b = test::heavy_tailed(kBlock, seed);
    for (std::int64_t i = 0; i < kBlock; ++i) block[i] = half(b[i]);
    const auto t = test::heavy_tailed(kWin, seed ^ 0x9e3779b9u);
    for (std::int64_t i = 0; i < kWin; ++i) tail[i] = half(t[i]);
  }
  auto value = [&](std::int64_t i) { return i >= tail_start ? tail[i - tail_start] : block[i % kBlock]; };

  DeviceBuffer dw, dpacked, dscale, dzero, dcodes;
  const std::size_t total = static_cast<std::size_t>(numel) * 3 + static_cast<std::size_t>(geo.packed_bytes) +
                            2 * static_cast<std::size_t>(geo.meta_bytes);
  try {
    dw = DeviceBuffer(static_cast<std::size_t>(numel) * 2);
    dpacked = DeviceBuffer(static_cast<std::size_t>(geo.packed_bytes));
    dscale = DeviceBuffer(static_cast<std::size_t>(geo.meta_bytes));
    dzero = DeviceBuffer(static_cast<std::size_t>(geo.meta_bytes));
    dcodes = DeviceBuffer(static_cast<std::size_t>(numel));
  } catch (const Error& e) {
    GTEST_SKIP() << "cannot allocate the " << total / (1 << 20) << " MiB this test needs: " << e.what();
  }
  {
    std::vector<half> staging(static_cast<std::size_t>(kBlock) * 64);
    for (std::size_t i = 0; i < staging.size(); ++i) staging[i] = block[i % kBlock];
    for (std::int64_t off = 0; off < tail_start; off += static_cast<std::int64_t>(staging.size())) {
      const std::int64_t n = std::min<std::int64_t>(static_cast<std::int64_t>(staging.size()), tail_start - off);
      dw.upload(staging.data(), static_cast<std::size_t>(n) * 2, static_cast<std::size_t>(off) * 2);
    }
    dw.upload(tail.data(), tail.size() * 2, static_cast<std::size_t>(tail_start) * 2);
  }
  dpacked.fill(0xFF);
  dscale.fill(0xFF);
  dzero.fill(0xFF);
  dcodes.fill(0xFF);
  const auto view = make_view(shape, cfg, dpacked.data(), dscale.data(), dzero.data());
  cuda::quantize(TensorView{dw.data(), shape, DType::kF16}, cfg, view);
  cuda::unpack(c.nbits, static_cast<const std::uint8_t*>(dpacked.data()), geo.rows, geo.cols,
               static_cast<std::uint8_t*>(dcodes.data()));
  cuda::dequantize(view, MutableTensorView{dw.data(), shape, DType::kF16});  // over the weight: no longer needed

  // Windows of kWinGroups groups: the start, around element 2^30 (byte 2^31),
  // around element 2^31 where the tensor has it, the end.
  auto around = [&](std::int64_t element) { return std::min(element / G - kWinGroups / 2, ngroups - kWinGroups); };
  std::vector<std::int64_t> starts{0, around(std::int64_t{1} << 30)};
  if (numel > (std::int64_t{1} << 31)) starts.push_back(around(std::int64_t{1} << 31));
  starts.push_back(ngroups - kWinGroups);
  for (const std::int64_t g0 : starts) {
    ASSERT_GE(g0, 0);
    ASSERT_LE(g0 + kWinGroups, ngroups);
    SCOPED_TRACE("groups [" + std::to_string(g0) + ", " + std::to_string(g0 + kWinGroups) + ")");
    const std::int64_t e0 = g0 * G;
    std::vector<half> slice(kWin);
    for (std::int64_t i = 0; i < kWin; ++i) slice[i] = value(e0 + i);
    const QuantizedTensor cpu = quantize(TensorView{slice.data(), {kWinGroups, G}, DType::kF16}, cfg, "cpu");

    std::vector<std::uint8_t> codes(kWin);
    dcodes.download(codes.data(), codes.size(), static_cast<std::size_t>(e0));
    expect_same_bytes(codes, unpack_codes(cpu), 1, "codes");
    std::vector<std::uint8_t> scale(kWinGroups * 2), zero(kWinGroups * 2);
    dscale.download(scale.data(), scale.size(), static_cast<std::size_t>(g0) * 2);
    dzero.download(zero.data(), zero.size(), static_cast<std::size_t>(g0) * 2);
    expect_same_bytes(scale, encode(cpu.scale, DType::kF16), 2, "scale");
    expect_same_bytes(zero, encode(cpu.zero, DType::kF16), 2, "zero");
    std::vector<std::uint8_t> deq(static_cast<std::size_t>(kWin) * 2);
    dw.download(deq.data(), deq.size(), static_cast<std::size_t>(e0) * 2);
    expect_same_bytes(deq, cpu_dequantize(cpu, DType::kF16), 2, "dequantized");
  }
}

INSTANTIATE_TEST_SUITE_P(Past2GiB, CudaLarge,
                         ::testing::Values(LargeCase{4, 262160, 4096, "F16_2GiBplus_4bit"},  // 2^30 + 2^16 elements
                                           LargeCase{8, 524544, 4096,
                                                     "F16_2GiElemsPlus_8bit"}),  // 2^31 + 2^20 elements
                         [](const auto& i) { return std::string(i.param.name); });

// ============================================================ 6. errors

class CudaErrors : public GpuTest {
 protected:
  const std::vector<std::int64_t> shape_{128, 256};
  const QuantConfig cfg_ = make_config(4, 64, 1, Solver::kProximal, DType::kF16);
  HostWeight w_ = make_weight(shape_, DType::kF32, test::heavy_tailed(128 * 256, 7));
};

TEST_F(CudaErrors, QuantizeChecksPointersAndGeometry) {
  const Geometry g = geometry(shape_, cfg_);
  DeviceBuffer dw = DeviceBuffer::from(w_.bytes), p(static_cast<std::size_t>(g.packed_bytes)),
               s(static_cast<std::size_t>(g.meta_bytes)), z(static_cast<std::size_t>(g.meta_bytes));
  const TensorView weight{dw.data(), shape_, DType::kF32};
  const auto good = make_view(shape_, cfg_, p.data(), s.data(), z.data());
  auto err = [&](const TensorView& wv, const QuantConfig& c, const cuda::DeviceQuantizedView& v) {
    return error_of([&] { cuda::quantize(wv, c, v); });
  };

  EXPECT_THAT(lower(err(TensorView{nullptr, shape_, DType::kF32}, cfg_, good)), HasSubstr("null"));
  auto v = good;
  v.packed = nullptr;
  EXPECT_THAT(lower(err(weight, cfg_, v)), HasSubstr("null"));
  v = good;
  v.scale = nullptr;
  EXPECT_THAT(lower(err(weight, cfg_, v)), HasSubstr("null"));
  v = good;
  v.zero = nullptr;
  EXPECT_THAT(lower(err(weight, cfg_, v)), HasSubstr("null"));

  // The view's geometry against the config and the weight.
  v = good;
  v.nbits = 8;
  EXPECT_THAT(err(weight, cfg_, v), HasSubstr("nbits"));
  v = good;
  v.group_size = 128;
  EXPECT_THAT(err(weight, cfg_, v), HasSubstr("group_size"));
  v = good;
  v.axis = 0;
  EXPECT_THAT(err(weight, cfg_, v), HasSubstr("axis"));
  v = good;
  v.scale_dtype = DType::kF32;
  EXPECT_THAT(err(weight, cfg_, v), HasSubstr("scale_dtype"));
  v = good;
  v.shape = {256, 256};
  EXPECT_THAT(err(weight, cfg_, v), HasSubstr("shape"));

  // The config and the weight themselves.
  QuantConfig c = cfg_;
  c.nbits = 5;
  v = good;
  v.nbits = 5;
  EXPECT_THAT(err(weight, c, v), HasSubstr("nbits=5"));
  c = cfg_;
  c.group_size = 96;  // does not divide 128 * 256
  v = good;
  v.group_size = 96;
  EXPECT_THAT(err(weight, c, v), HasSubstr("group_size=96"));
  c = cfg_;
  c.axis = 2;
  v = good;
  v.axis = 2;
  EXPECT_THAT(err(weight, c, v), HasSubstr("axis=2"));
  EXPECT_THAT(err(TensorView{dw.data(), shape_, DType::kI8}, cfg_, good), HasSubstr("I8"));
  EXPECT_THAT(
      err(TensorView{dw.data(), {3, 64}, DType::kF32}, cfg_, make_view({3, 64}, cfg_, p.data(), s.data(), z.data())),
      HasSubstr("multiple of 2"));  // 3 groups cannot be split for 4-bit
  EXPECT_THAT(error_of([&] { cuda::quantize_sizes({3, 64}, cfg_); }), HasSubstr("multiple of 2"));
  EXPECT_THAT(lower(error_of([&] {
                cuda::DeviceQuantized q(TensorView{nullptr, shape_, DType::kF32}, cfg_);
              })),
              HasSubstr("null"));

  v = good;
  v.scale = static_cast<char*>(s.data()) + 1;  // F16 values must be 2-byte aligned
  EXPECT_THAT(err(weight, cfg_, v), HasSubstr("aligned"));

  v = good;
  EXPECT_NO_THROW(v.validate());
  v.packed = nullptr;
  EXPECT_THAT(lower(error_of([&] { v.validate(); })), HasSubstr("null"));

  // The device is still fine after all that.
  expect_matches_cpu(gpu_quantize(w_, cfg_, Mem::kDevice, Mem::kDevice, 0xFF), quantize(w_.view(), cfg_, "cpu"), cfg_);
}

// NaN/Inf anywhere: a clear error naming a non-finite value, for every input
// dtype, solver, axis, device or host weight, and through the backend.
TEST_F(CudaErrors, NonFiniteWeightsAreNamed) {
  const Geometry g = geometry(shape_, cfg_);
  std::vector<std::uint8_t> p(static_cast<std::size_t>(g.packed_bytes)), s(static_cast<std::size_t>(g.meta_bytes)),
      z(static_cast<std::size_t>(g.meta_bytes));
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()}) {
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
      for (Solver solver : {Solver::kProximal, Solver::kLegacy, Solver::kNone}) {
        for (int axis : {0, 1}) {
          SCOPED_TRACE(std::to_string(bad) + " " + name_of(dt) + " " + name_of(solver) + " axis " +
                       std::to_string(axis));
          std::vector<float> v = test::heavy_tailed(128 * 256, 8);
          v[777] = bad;
          const HostWeight hw = make_weight(shape_, dt, v);
          QuantConfig c = cfg_;
          c.solver = solver;
          c.axis = axis;
          const auto view = make_view(shape_, c, p.data(), s.data(), z.data());
          EXPECT_THAT(error_of([&] { cuda::quantize(hw.view(), c, view); }), HasSubstr("non-finite"));
          const DeviceBuffer dw = DeviceBuffer::from(hw.bytes);
          EXPECT_THAT(error_of([&] {
                        cuda::quantize(TensorView{dw.data(), shape_, dt}, c, view);
                      }),
                      HasSubstr("non-finite"));
          EXPECT_THAT(error_of([&] { quantize(hw.view(), c, "cuda"); }), HasSubstr("non-finite"));
        }
      }
    }
  }
}

// check_finite=false: no error, and with RTN along axis 1 (independent groups)
// every group without the NaN is what the CPU gives.
TEST_F(CudaErrors, UncheckedNonFiniteOnlyTouchesItsGroup) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::vector<float> v = test::heavy_tailed(128 * 256, seed);
  const QuantConfig c = make_config(4, 64, 1, Solver::kNone, DType::kF32);
  v[777] = std::nanf("");
  const HostWeight bad = make_weight(shape_, DType::kF32, v);
  v[777] = 0.0f;
  const QuantizedTensor cpu = quantize(make_weight(shape_, DType::kF32, v).view(), c, "cpu");
  cuda::Options o;
  o.check_finite = false;
  Raw gpu;
  ASSERT_NO_THROW(gpu = gpu_quantize(bad, c, Mem::kDevice, Mem::kDevice, 0xFF, o));
  const GroupedView gv = cpu.view();
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(gv.numel));
  unpack_ref(c.nbits, gpu.packed.data(), gv.rows(), gv.cols(), codes.data());
  const std::vector<std::uint8_t> want = unpack_codes(cpu);
  const std::vector<float> gs = decode(gpu.scale, c.scale_dtype), gz = decode(gpu.zero, c.scale_dtype);
  const std::int64_t nan_group = 777 / 64;
  for (std::int64_t g = 0; g < gv.num_groups(); ++g) {
    if (g == nan_group) continue;
    ASSERT_EQ(float_bits(gs[g]), float_bits(cpu.scale[g])) << "group " << g;
    ASSERT_EQ(float_bits(gz[g]), float_bits(cpu.zero[g])) << "group " << g;
    for (std::int64_t i = 0; i < 64; ++i)
      ASSERT_EQ(codes[g * 64 + i], want[g * 64 + i]) << "group " << g << " elem " << i;
  }
}

TEST_F(CudaErrors, DequantizeChecksItsArguments) {
  const QuantizedTensor q = quantize(w_.view(), cfg_, "cpu");
  const cuda::DeviceQuantized dq(q);
  DeviceBuffer out(static_cast<std::size_t>(q.numel()) * 4);
  auto err = [&](const cuda::DeviceQuantizedView& v, const MutableTensorView& o) {
    return error_of([&] { cuda::dequantize(v, o); });
  };
  EXPECT_THAT(lower(err(dq.view(), MutableTensorView{nullptr, shape_, DType::kF32})), HasSubstr("null"));
  auto v = dq.view();
  v.packed = nullptr;
  EXPECT_THAT(lower(err(v, MutableTensorView{out.data(), shape_, DType::kF32})), HasSubstr("null"));
  v = dq.view();
  v.scale = nullptr;
  EXPECT_THAT(lower(err(v, MutableTensorView{out.data(), shape_, DType::kF32})), HasSubstr("null"));
  const std::string numel = err(dq.view(), MutableTensorView{out.data(), {7, 11}, DType::kF32});
  EXPECT_TRUE(numel.find("77") != std::string::npos || numel.find("7, 11") != std::string::npos) << numel;
  EXPECT_THAT(err(dq.view(), MutableTensorView{out.data(), shape_, DType::kI32}), HasSubstr("I32"));
  v = dq.view();
  v.nbits = 5;
  EXPECT_THAT(err(v, MutableTensorView{out.data(), shape_, DType::kF32}), HasSubstr("nbits"));
  v = dq.view();
  v.group_size = 96;
  EXPECT_THAT(err(v, MutableTensorView{out.data(), shape_, DType::kF32}), HasSubstr("group_size"));
  std::vector<float> host_out(10);
  EXPECT_THAT(error_of([&] {
                dequantize(q, MutableTensorView{host_out.data(), {10}, DType::kF32}, "cuda");
              }),
              HasSubstr("10 elements"));
}

TEST_F(CudaErrors, PackAndUnpackCheckTheirArguments) {
  DeviceBuffer codes(64 * 64), packed(64 * 64);
  auto* c = static_cast<std::uint8_t*>(codes.data());
  auto* p = static_cast<std::uint8_t*>(packed.data());
  EXPECT_THAT(error_of([&] { cuda::pack(5, c, 8, 8, p); }), HasSubstr("nbits"));
  EXPECT_THAT(error_of([&] { cuda::unpack(5, p, 8, 8, c); }), HasSubstr("nbits"));
  EXPECT_THAT(error_of([&] { cuda::pack(4, c, 3, 8, p); }), HasSubstr("multiple of 2"));
  EXPECT_THAT(error_of([&] { cuda::pack(1, c, 12, 8, p); }), HasSubstr("multiple of 8"));
  EXPECT_THAT(error_of([&] { cuda::unpack(2, p, 6, 8, c); }), HasSubstr("multiple of 4"));
  EXPECT_THAT(lower(error_of([&] { cuda::pack(4, nullptr, 8, 8, p); })), HasSubstr("null"));
  EXPECT_THAT(lower(error_of([&] { cuda::pack(4, c, 8, 8, nullptr); })), HasSubstr("null"));
  EXPECT_THAT(lower(error_of([&] { cuda::unpack(4, nullptr, 8, 8, c); })), HasSubstr("null"));
  EXPECT_THAT(lower(error_of([&] { cuda::unpack(4, p, 8, 8, nullptr); })), HasSubstr("null"));
}

}  // namespace
}  // namespace hqq
