// Parity with the reference package (hqq 0.2.8.post1), from golden data made
// by tests/golden/make_golden.py: the legacy solver against the reference's
// default solver, RTN against optimize=False, packing against its bytes, and
// the proximal solver's error against both.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hqq/hqq.hpp"
#include "test_helpers.hpp"

namespace hqq {
namespace {

using io::SafetensorsFile;

struct Case {
  std::string name;
  std::vector<std::int64_t> shape;
  int nbits;
  std::int64_t group_size;
  int axis;
  std::string dtype;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name << " (" << c.nbits << "-bit g" << c.group_size << " axis " << c.axis << " " << c.dtype << ")";
}

const SafetensorsFile& golden() {
  static SafetensorsFile f = SafetensorsFile::open(std::string(HQQ_TEST_DATA_DIR) + "/golden.safetensors");
  return f;
}

std::vector<Case> cases() {
  const auto j = nlohmann::json::parse(golden().metadata().at("cases"));
  std::vector<Case> out;
  for (const auto& c : j) {
    out.push_back({c["name"], c["shape"].get<std::vector<std::int64_t>>(), c["nbits"], c["group_size"],
                   c["axis"], c["dtype"]});
  }
  return out;
}

QuantizedTensor run(const Case& c, Solver solver, DType scale_dtype = DType::kF16) {
  QuantConfig cfg;
  cfg.nbits = c.nbits;
  cfg.group_size = c.group_size;
  cfg.axis = c.axis;
  cfg.solver = solver;
  cfg.scale_dtype = scale_dtype;
  const auto& f = golden();
  const auto bytes = test::bytes_of(f, c.name + ".W");
  DType dt;
  EXPECT_TRUE(parse_dtype(c.dtype, dt));
  // The input goes in its own dtype, so the f16 and bf16 paths are covered too.
  return quantize(TensorView{bytes.data(), c.shape, dt}, cfg);
}

class Golden : public ::testing::TestWithParam<Case> {};

// Codes equal except rare rounding ties; scale exact (it depends on min/max
// only); zero within one step of its f16 storage.
TEST_P(Golden, LegacyMatchesReference) {
  const Case& c = GetParam();
  const auto& f = golden();
  const QuantizedTensor q = run(c, Solver::kLegacy);
  const auto codes = unpack_codes(q);
  const auto ref_codes = test::bytes_of(f, c.name + ".codes");
  ASSERT_EQ(codes.size(), ref_codes.size());
  std::size_t diff = 0;
  for (std::size_t i = 0; i < codes.size(); ++i) {
    diff += codes[i] != ref_codes[i];
    // A tie can move a code by one level, never more.
    ASSERT_LE(std::abs(int(codes[i]) - int(ref_codes[i])), 1) << c.name << " at " << i;
  }
  EXPECT_LE(double(diff), 1e-4 * double(codes.size()) + 1.0) << c.name << ": " << diff << " codes differ";

  const auto ref_scale = test::floats_of(f, c.name + ".scale");
  const auto ref_zero = test::floats_of(f, c.name + ".zero");
  ASSERT_EQ(q.scale.size(), ref_scale.size());
  for (std::size_t g = 0; g < ref_scale.size(); ++g) {
    ASSERT_EQ(q.scale[g], round_to(DType::kF16, ref_scale[g])) << c.name << " group " << g;
    ASSERT_LE(std::fabs(q.zero[g] - ref_zero[g]), test::f16_ulp(ref_zero[g])) << c.name << " group " << g;
  }
  if (diff == 0) {
    EXPECT_EQ(q.packed, test::bytes_of(f, c.name + ".packed")) << c.name;
  }
}

// In f32 storage the zero-points agree far below f16 rounding.
TEST_P(Golden, LegacyZeroF32) {
  const Case& c = GetParam();
  const QuantizedTensor q = run(c, Solver::kLegacy, DType::kF32);
  const auto ref_zero = test::floats_of(golden(), c.name + ".zero");
  const auto ref_scale = test::floats_of(golden(), c.name + ".scale");
  for (std::size_t g = 0; g < ref_zero.size(); ++g) {
    ASSERT_EQ(q.scale[g], ref_scale[g]) << c.name << " group " << g;
    ASSERT_LE(std::fabs(q.zero[g] - ref_zero[g]), 1e-4f * std::max(1.0f, std::fabs(ref_zero[g])))
        << c.name << " group " << g;
  }
}

// Without optimisation there is no iteration: everything is bit-exact.
TEST_P(Golden, RtnMatchesReferenceExactly) {
  const Case& c = GetParam();
  const auto& f = golden();
  const QuantizedTensor q = run(c, Solver::kNone, DType::kF32);
  EXPECT_EQ(unpack_codes(q), test::bytes_of(f, c.name + ".rtn_codes")) << c.name;
  EXPECT_EQ(q.scale, test::floats_of(f, c.name + ".rtn_scale")) << c.name;
  EXPECT_EQ(q.zero, test::floats_of(f, c.name + ".rtn_zero")) << c.name;
}

// Our packing of the reference codes gives the reference bytes, and back.
TEST_P(Golden, PackingIsBitExact) {
  const Case& c = GetParam();
  const auto& f = golden();
  const auto ref_codes = test::bytes_of(f, c.name + ".codes");
  const auto ref_packed = test::bytes_of(f, c.name + ".packed");
  const GroupedView v(shape_numel(c.shape), c.group_size, c.axis);
  std::vector<std::uint8_t> packed(static_cast<std::size_t>(packed_bytes(c.nbits, v.rows(), v.cols())), 0xAB);
  ASSERT_EQ(packed.size(), ref_packed.size());
  pack(c.nbits, ref_codes.data(), v.rows(), v.cols(), packed.data());
  EXPECT_EQ(packed, ref_packed) << c.name;
  std::vector<std::uint8_t> codes(ref_codes.size(), 0xCD);
  unpack(c.nbits, ref_packed.data(), v.rows(), v.cols(), codes.data());
  EXPECT_EQ(codes, ref_codes) << c.name;
}

// The proximal solver never does worse than legacy and beats RTN.
TEST_P(Golden, ProximalErrorAtMostLegacyAndBelowRtn) {
  const Case& c = GetParam();
  const auto bytes = test::bytes_of(golden(), c.name + ".W");
  DType dt;
  ASSERT_TRUE(parse_dtype(c.dtype, dt));
  const TensorView w{bytes.data(), c.shape, dt};
  const ErrorStats prox = measure_error(w, run(c, Solver::kProximal));
  const ErrorStats legacy = measure_error(w, run(c, Solver::kLegacy));
  const ErrorStats rtn = measure_error(w, run(c, Solver::kNone));
  EXPECT_LE(prox.mean_abs, legacy.mean_abs) << c.name;
  EXPECT_LT(prox.mean_abs, rtn.mean_abs) << c.name;
  RecordProperty("prox_mae", std::to_string(prox.mean_abs));
  RecordProperty("legacy_mae", std::to_string(legacy.mean_abs));
  RecordProperty("rtn_mae", std::to_string(rtn.mean_abs));
}

INSTANTIATE_TEST_SUITE_P(Reference, Golden, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

// A checkpoint saved by the Python package (HQQLinear state_dict) is read
// here and dequantizes to what the package computes. The package dequantizes
// in fp16: (q - z) and then * s each round once, so the bound per element is
// two f16 roundings of |(q - z) s|.
TEST(PythonCheckpoint, ReadsAndDequantizesLikeThePackage) {
  const auto ck = SafetensorsFile::open(std::string(HQQ_TEST_DATA_DIR) + "/python_checkpoint.safetensors");
  const auto dense = SafetensorsFile::open(std::string(HQQ_TEST_DATA_DIR) + "/python_checkpoint_dense.safetensors");
  const auto prefixes = io::quantized_layer_prefixes(ck);
  ASSERT_EQ(prefixes.size(), 5u);
  for (const auto& p : prefixes) {
    const QuantizedTensor q = io::read_quantized_layer(ck, p);
    EXPECT_EQ(q.scale_dtype, DType::kF16) << p;
    const auto ours = dequantize(q);
    const auto ref = test::floats_of(dense, p + ".weight");
    ASSERT_EQ(ours.size(), ref.size()) << p;
    for (std::size_t i = 0; i < ours.size(); ++i) {
      const float tol = 2.0f * test::f16_ulp(ours[i]) + 1e-7f;
      ASSERT_LE(std::fabs(ours[i] - ref[i]), tol) << p << " at " << i << ": " << ours[i] << " vs " << ref[i];
    }
  }
}

}  // namespace
}  // namespace hqq
