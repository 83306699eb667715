// The quantized-checkpoint key layout: exact write/read round trips for every
// bit width, axis and scale dtype; the encodings Python writers use; and a
// clear error naming the key for every broken layer.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "hqq/io/checkpoint.hpp"
#include "hqq/io/safetensors.hpp"
#include "hqq/packing.hpp"
#include "hqq/quantized.hpp"

namespace hqq {
// Readable parameter names in test output ("BF16", not "1-byte object <06>").
inline void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }
}  // namespace hqq

namespace {

namespace fs = std::filesystem;
using hqq::DType;
using hqq::QuantizedTensor;
using hqq::io::SafetensorsFile;
using hqq::io::SafetensorsWriter;

const std::string kPrefix = "model.layers.0.mlp.up_proj";

std::string tmp_path(const std::string& name) {
  const fs::path dir = fs::path(HQQ_TEST_TMP_DIR) / "checkpoint";
  fs::create_directories(dir);
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string test = std::string(info->test_suite_name()) + "_" + info->name();
  for (char& c : test) {
    if (c == '/') c = '_';
  }
  return (dir / (test + "_" + name)).string();
}

/// A layer with random codes (packed with the reference packer) and random
/// scale/zero rounded to the storage dtype, so no solver is involved.
QuantizedTensor make_layer(int nbits, int axis, DType scale_dtype, std::vector<std::int64_t> shape,
                           std::int64_t group_size, std::uint32_t seed) {
  QuantizedTensor q;
  q.shape = std::move(shape);
  q.nbits = nbits;
  q.group_size = group_size;
  q.axis = axis;
  q.scale_dtype = scale_dtype;
  q.round_zero = (seed % 2) == 0;
  q.solver = hqq::Solver::kProximal;
  const hqq::GroupedView v = q.view();
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(0, (1 << nbits) - 1);
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(v.numel));
  for (auto& c : codes) c = static_cast<std::uint8_t>(code(rng));
  q.packed.resize(static_cast<std::size_t>(hqq::packed_bytes(nbits, v.rows(), v.cols())));
  hqq::pack_ref(nbits, codes.data(), v.rows(), v.cols(), q.packed.data());
  std::uniform_real_distribution<float> s(1e-3f, 5e-2f), z(0.0f, static_cast<float>((1 << nbits) - 1));
  for (std::int64_t g = 0; g < v.num_groups(); ++g) {
    q.scale.push_back(hqq::round_to(scale_dtype, s(rng)));
    q.zero.push_back(hqq::round_to(scale_dtype, z(rng)));
  }
  q.validate();
  return q;
}

std::vector<std::uint8_t> tensor_bytes(const SafetensorsFile& f, const std::string& name) {
  const auto& t = f.at(name);
  const std::uint8_t* p = f.data(t);
  return std::vector<std::uint8_t>(p, p + t.nbytes());
}

std::string tensor_string(const SafetensorsFile& f, const std::string& name) {
  const auto b = tensor_bytes(f, name);
  return std::string(b.begin(), b.end());
}

template <typename T>
T tensor_scalar(const SafetensorsFile& f, const std::string& name) {
  const auto b = tensor_bytes(f, name);
  EXPECT_EQ(b.size(), sizeof(T)) << name;
  T v{};
  std::memcpy(&v, b.data(), std::min(b.size(), sizeof(T)));
  return v;
}

// ------------------------------------------------------------------ round trip

using RoundTripParam = std::tuple<int, int, DType>;

class CheckpointRoundTrip : public ::testing::TestWithParam<RoundTripParam> {};

TEST_P(CheckpointRoundTrip, KeysDtypesAndValuesSurvive) {
  const auto [nbits, axis, sdt] = GetParam();
  // [40, 96] in groups of 32: axis 1 has 120 grouped rows (a multiple of every
  // pack ratio), axis 0 has 32 (3-bit pads it to 40).
  const QuantizedTensor q = make_layer(nbits, axis, sdt, {40, 96}, 32, 7u + nbits * 3 + axis);
  const std::vector<float> bias = {0.5f, -1.25f, 3.0f};

  SafetensorsWriter w;
  hqq::io::add_quantized_layer(w, kPrefix, q);
  w.add_values(kPrefix + ".bias", DType::kF32, {3}, bias);
  w.add_values("model.norm.weight", DType::kF32, {3}, bias);
  const std::string path = tmp_path("layer.safetensors");
  w.write(path);

  const SafetensorsFile f = SafetensorsFile::open(path);
  // The reference's key layout, dtype by dtype.
  const auto& wq = f.at(kPrefix + ".W_q");
  EXPECT_EQ(wq.dtype, nbits == 3 ? DType::kI32 : DType::kU8);
  EXPECT_EQ(wq.shape, q.packed_shape());
  EXPECT_EQ(tensor_bytes(f, kPrefix + ".W_q"), q.packed);
  for (const char* k : {".scale", ".zero"}) {
    EXPECT_EQ(f.at(kPrefix + k).dtype, sdt) << k;
    EXPECT_EQ(f.at(kPrefix + k).shape, q.meta_shape()) << k;
  }
  EXPECT_EQ(f.at(kPrefix + ".shape").dtype, DType::kI64);
  EXPECT_EQ(tensor_bytes(f, kPrefix + ".shape").size(), 16u);
  for (const char* k : {".nbits", ".group_size", ".axis"}) {
    EXPECT_EQ(f.at(kPrefix + k).dtype, DType::kI32) << k;
    EXPECT_TRUE(f.at(kPrefix + k).shape.empty()) << k;
  }
  EXPECT_EQ(tensor_scalar<std::int32_t>(f, kPrefix + ".nbits"), nbits);
  EXPECT_EQ(tensor_scalar<std::int32_t>(f, kPrefix + ".group_size"), 32);
  EXPECT_EQ(tensor_scalar<std::int32_t>(f, kPrefix + ".axis"), axis);
  const std::map<int, std::string> packing = {
      {8, "8bit_u8"}, {4, "4bit_u8"}, {3, "3bit_32"}, {2, "2bit_u8"}, {1, "1bit_u8"}};
  EXPECT_EQ(tensor_string(f, kPrefix + ".packing"), packing.at(nbits));
  EXPECT_EQ(tensor_string(f, kPrefix + ".unpack_view_dtype"),
            nbits == 3 ? "torch.int32" : "torch.uint8");
  const std::map<DType, std::string> compute = {{DType::kF16, "torch.float16"},
                                                {DType::kBF16, "torch.bfloat16"},
                                                {DType::kF32, "torch.float32"}};
  EXPECT_EQ(tensor_string(f, kPrefix + ".compute_dtype"), compute.at(sdt));
  const std::map<std::string, int> flags = {
      {"view_as_float", 0},       {"quant_scale", 0},  {"quant_zero", 0},
      {"offload_meta", 0},        {"encoded_state_dict", 1}, {"stores_quant_config", 1},
      {"channel_wise", 1},        {"optimize", 1},     {"round_zero", q.round_zero ? 1 : 0}};
  for (const auto& [k, v] : flags) {
    EXPECT_EQ(f.at(kPrefix + "." + k).dtype, DType::kU8) << k;
    EXPECT_TRUE(f.at(kPrefix + "." + k).shape.empty()) << k;
    EXPECT_EQ(tensor_scalar<std::uint8_t>(f, kPrefix + "." + k), v) << k;
  }

  const QuantizedTensor r = hqq::io::read_quantized_layer(f, kPrefix);
  EXPECT_EQ(r.shape, q.shape);
  EXPECT_EQ(r.nbits, q.nbits);
  EXPECT_EQ(r.group_size, q.group_size);
  EXPECT_EQ(r.axis, q.axis);
  EXPECT_EQ(r.scale_dtype, q.scale_dtype);
  EXPECT_EQ(r.round_zero, q.round_zero);
  // The file says only "optimized": the reader names the reference's solver.
  EXPECT_EQ(r.solver, hqq::Solver::kLegacy);
  EXPECT_EQ(r.packed, q.packed);
  ASSERT_EQ(r.scale.size(), q.scale.size());
  for (std::size_t g = 0; g < q.scale.size(); ++g) {
    EXPECT_EQ(hqq::float_bits(r.scale[g]), hqq::float_bits(q.scale[g])) << "group " << g;
    EXPECT_EQ(hqq::float_bits(r.zero[g]), hqq::float_bits(q.zero[g])) << "group " << g;
  }

  EXPECT_EQ(hqq::io::quantized_layer_prefixes(f), std::vector<std::string>{kPrefix});
  EXPECT_TRUE(hqq::io::is_quantized_layer_key(f, kPrefix + ".W_q"));
  EXPECT_TRUE(hqq::io::is_quantized_layer_key(f, kPrefix + ".round_zero"));
  EXPECT_FALSE(hqq::io::is_quantized_layer_key(f, kPrefix + ".bias"));
  EXPECT_FALSE(hqq::io::is_quantized_layer_key(f, "model.norm.weight"));
  EXPECT_FALSE(hqq::io::is_quantized_layer_key(f, "model.norm.scale"));  // no model.norm.W_q
}

INSTANTIATE_TEST_SUITE_P(
    All, CheckpointRoundTrip,
    ::testing::Combine(::testing::Values(8, 4, 3, 2, 1), ::testing::Values(0, 1),
                       ::testing::Values(DType::kF16, DType::kBF16, DType::kF32)),
    [](const ::testing::TestParamInfo<RoundTripParam>& info) {
      return "b" + std::to_string(std::get<0>(info.param)) + "_axis" +
             std::to_string(std::get<1>(info.param)) + "_" +
             std::string(hqq::dtype_name(std::get<2>(info.param)));
    });

TEST(CheckpointTest, RtnLayerReadsAsSolverNone) {
  QuantizedTensor q = make_layer(4, 1, DType::kF16, {8, 64}, 64, 3);
  q.solver = hqq::Solver::kNone;
  SafetensorsWriter w;
  hqq::io::add_quantized_layer(w, "lin", q);
  const std::string path = tmp_path("rtn.safetensors");
  w.write(path);
  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(tensor_scalar<std::uint8_t>(f, "lin.optimize"), 0);
  EXPECT_EQ(hqq::io::read_quantized_layer(f, "lin").solver, hqq::Solver::kNone);
}

TEST(CheckpointTest, SeveralLayersAndNoPrefix) {
  const QuantizedTensor a = make_layer(4, 1, DType::kF16, {8, 64}, 64, 1);
  const QuantizedTensor b = make_layer(2, 0, DType::kF32, {16, 32}, 16, 2);
  SafetensorsWriter w;
  hqq::io::add_quantized_layer(w, "a.proj", a);
  hqq::io::add_quantized_layer(w, "", b);  // a lone layer, as HQQLinear.state_dict() gives
  const std::string path = tmp_path("two.safetensors");
  w.write(path);
  const SafetensorsFile f = SafetensorsFile::open(path);
  auto prefixes = hqq::io::quantized_layer_prefixes(f);
  std::sort(prefixes.begin(), prefixes.end());
  EXPECT_EQ(prefixes, (std::vector<std::string>{"", "a.proj"}));
  EXPECT_TRUE(hqq::io::is_quantized_layer_key(f, "W_q"));
  EXPECT_TRUE(hqq::io::is_quantized_layer_key(f, "scale"));
  EXPECT_EQ(hqq::io::read_quantized_layer(f, "").packed, b.packed);
  EXPECT_EQ(hqq::io::read_quantized_layer(f, "a.proj").packed, a.packed);
}

// ------------------------------------------------------------------ Python-style files

/// A layer's tensors by key, to be edited and written back.
struct RawTensor {
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;
};
using RawLayer = std::map<std::string, RawTensor>;

RawLayer raw_layer(const QuantizedTensor& q, const std::string& path) {
  SafetensorsWriter w;
  hqq::io::add_quantized_layer(w, kPrefix, q);
  w.write(path);
  const SafetensorsFile f = SafetensorsFile::open(path);
  RawLayer out;
  for (const auto& t : f.tensors()) {
    out[t.name.substr(kPrefix.size() + 1)] = {t.dtype, t.shape, tensor_bytes(f, t.name)};
  }
  return out;
}

void write_raw(const RawLayer& layer, const std::string& path) {
  SafetensorsWriter w;
  for (const auto& [k, t] : layer) w.add(kPrefix + "." + k, t.dtype, t.shape, t.bytes);
  w.write(path);
}

template <typename T>
RawTensor scalar(DType dtype, T v, std::vector<std::int64_t> shape = {}) {
  std::vector<std::uint8_t> b(sizeof(T));
  std::memcpy(b.data(), &v, sizeof(T));
  return {dtype, std::move(shape), b};
}

RawTensor ascii(const std::string& s) {
  return {DType::kU8, {static_cast<std::int64_t>(s.size())}, {s.begin(), s.end()}};
}

TEST(CheckpointTest, AcceptsPythonEncodings) {
  const QuantizedTensor q = make_layer(3, 1, DType::kBF16, {20, 64}, 64, 11);
  const std::string path = tmp_path("py.safetensors");
  RawLayer l = raw_layer(q, path);
  // Other writers use I64 scalars of shape [1], BOOL flags, an I32 shape and
  // flat scale/zero.
  l["nbits"] = scalar<std::int64_t>(DType::kI64, 3, {1});
  l["group_size"] = scalar<std::int64_t>(DType::kI64, 64);
  l["axis"] = scalar<std::int64_t>(DType::kI64, 1, {1});
  l["round_zero"] = scalar<std::uint8_t>(DType::kBool, q.round_zero ? 1 : 0);
  l["optimize"] = scalar<std::uint8_t>(DType::kBool, 0);
  l["view_as_float"] = scalar<std::uint8_t>(DType::kBool, 0);
  std::vector<std::int32_t> shape32 = {20, 64};
  l["shape"] = {DType::kI32, {2}, std::vector<std::uint8_t>(8)};
  std::memcpy(l["shape"].bytes.data(), shape32.data(), 8);
  l["scale"].shape = {q.num_groups()};
  l["zero"].shape = {q.num_groups()};
  l.erase("stores_quant_config");
  write_raw(l, path);

  const SafetensorsFile f = SafetensorsFile::open(path);
  const QuantizedTensor r = hqq::io::read_quantized_layer(f, kPrefix);
  EXPECT_EQ(r.nbits, 3);
  EXPECT_EQ(r.shape, (std::vector<std::int64_t>{20, 64}));
  EXPECT_EQ(r.scale_dtype, DType::kBF16);
  EXPECT_EQ(r.solver, hqq::Solver::kNone);
  EXPECT_EQ(r.round_zero, q.round_zero);
  EXPECT_EQ(r.packed, q.packed);
  EXPECT_EQ(r.scale, q.scale);
  EXPECT_EQ(r.zero, q.zero);
}

/// Writes the layer after `edit` and expects read_quantized_layer to fail with
/// a message containing every string of `expect` and the file's path.
void expect_read_error(const std::string& path, const std::function<void(RawLayer&)>& edit,
                       const std::vector<std::string>& expect) {
  const QuantizedTensor q = make_layer(4, 1, DType::kF16, {16, 128}, 64, 5);
  RawLayer l = raw_layer(q, path);
  edit(l);
  write_raw(l, path);
  const SafetensorsFile f = SafetensorsFile::open(path);
  try {
    (void)hqq::io::read_quantized_layer(f, kPrefix);
    ADD_FAILURE() << "no error; expected one mentioning " << ::testing::PrintToString(expect);
  } catch (const hqq::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& s : expect) EXPECT_NE(msg.find(s), std::string::npos) << msg;
  }
}

TEST(CheckpointTest, MissingRequiredKeyIsNamed) {
  for (const char* key : {"W_q", "scale", "zero", "shape", "nbits", "group_size", "axis"}) {
    SCOPED_TRACE(key);
    expect_read_error(tmp_path(std::string("missing_") + key + ".safetensors"),
                      [&](RawLayer& l) { l.erase(key); },
                      {"missing", kPrefix + "." + key});
  }
}

TEST(CheckpointTest, WrongWqShapeIsNamed) {
  expect_read_error(tmp_path("wq_shape.safetensors"),
                    [](RawLayer& l) {
                      auto& wq = l["W_q"];
                      wq.shape[0] += 1;
                      wq.bytes.resize(wq.bytes.size() + static_cast<std::size_t>(wq.shape[1]));
                    },
                    {kPrefix + ".W_q", "[17, 64]"});
}

TEST(CheckpointTest, WrongWqDtypeIsNamed) {
  expect_read_error(tmp_path("wq_dtype.safetensors"),
                    [](RawLayer& l) {
                      auto& wq = l["W_q"];
                      wq.dtype = DType::kI8;
                    },
                    {kPrefix + ".W_q", "I8"});
}

TEST(CheckpointTest, ViewAsFloatIsRefused) {
  expect_read_error(tmp_path("vaf.safetensors"),
                    [](RawLayer& l) { l["view_as_float"] = scalar<std::uint8_t>(DType::kU8, 1); },
                    {"view_as_float checkpoints are not supported"});
}

TEST(CheckpointTest, QuantizedMetaIsRefused) {
  expect_read_error(tmp_path("qs.safetensors"),
                    [](RawLayer& l) { l["quant_scale"] = scalar<std::uint8_t>(DType::kBool, 1); },
                    {kPrefix + ".quant_scale"});
  expect_read_error(tmp_path("qz.safetensors"),
                    [](RawLayer& l) { l["quant_zero"] = scalar<std::uint8_t>(DType::kU8, 1); },
                    {kPrefix + ".quant_zero"});
}

TEST(CheckpointTest, PackingMustMatchNbits) {
  expect_read_error(tmp_path("packing.safetensors"),
                    [](RawLayer& l) { l["packing"] = ascii("4bit_32"); },
                    {kPrefix + ".packing", "4bit_32", "4bit_u8"});
  expect_read_error(tmp_path("nbits.safetensors"),
                    [](RawLayer& l) { l["nbits"] = scalar<std::int32_t>(DType::kI32, 2); },
                    {kPrefix + ".packing", "2bit_u8"});
}

TEST(CheckpointTest, BadScalarsAreNamed) {
  expect_read_error(tmp_path("nbits5.safetensors"),
                    [](RawLayer& l) { l["nbits"] = scalar<std::int32_t>(DType::kI32, 5); },
                    {kPrefix + ".nbits", "5"});
  expect_read_error(tmp_path("axis2.safetensors"),
                    [](RawLayer& l) { l["axis"] = scalar<std::int32_t>(DType::kI32, 2); },
                    {kPrefix + ".axis"});
  expect_read_error(tmp_path("gs.safetensors"),
                    [](RawLayer& l) { l["group_size"] = scalar<std::int32_t>(DType::kI32, 48); },
                    {"group_size 48"});
  expect_read_error(tmp_path("flag.safetensors"),
                    [](RawLayer& l) { l["round_zero"] = scalar<std::uint8_t>(DType::kU8, 7); },
                    {kPrefix + ".round_zero", "boolean"});
}

TEST(CheckpointTest, ScaleMustHaveOneValuePerGroup) {
  expect_read_error(tmp_path("scale.safetensors"),
                    [](RawLayer& l) {
                      auto& s = l["scale"];
                      s.shape = {s.shape[0] - 1, 1};
                      s.bytes.resize(s.bytes.size() - 2);
                    },
                    {kPrefix + ".scale"});
  expect_read_error(tmp_path("zero_dtype.safetensors"),
                    [](RawLayer& l) { l["zero"].dtype = DType::kI16; },
                    {kPrefix + ".zero", "I16"});
}

}  // namespace
