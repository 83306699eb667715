// Tests of the safetensors reader (validation of hostile input) and the
// atomic writer.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "hqq/error.hpp"
#include "hqq/io/safetensors.hpp"

namespace {

namespace fs = std::filesystem;
using hqq::DType;
using hqq::io::SafetensorsFile;
using hqq::io::SafetensorsWriter;
using hqq::io::TensorInfo;
using ::testing::HasSubstr;
using ::testing::Not;

using Bytes = std::vector<std::uint8_t>;

/// A file image: 8-byte little-endian `header_len` (default: the real one),
/// the header text, then `data_bytes` bytes of data.
Bytes image(const std::string& header, std::size_t data_bytes, std::uint64_t header_len) {
  Bytes b(8);
  for (int i = 0; i < 8; ++i) b[i] = static_cast<std::uint8_t>(header_len >> (8 * i));
  b.insert(b.end(), header.begin(), header.end());
  for (std::size_t i = 0; i < data_bytes; ++i) b.push_back(static_cast<std::uint8_t>(i * 7 + 1));
  return b;
}
Bytes image(const std::string& header, std::size_t data_bytes) {
  return image(header, data_bytes, header.size());
}

/// One header entry as JSON text.
std::string entry(const std::string& dtype, const std::string& shape, std::uint64_t begin,
                  std::uint64_t end) {
  return "{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

/// The hqq::Error message thrown by `f`, or a marker when it does not throw.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const hqq::Error& e) {
    return e.what();
  }
  return "<no error>";
}

std::string parse_error(const Bytes& b) {
  return error_of([&] { SafetensorsFile::from_bytes(b, "model.safetensors"); });
}

Bytes read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

template <typename T>
std::vector<T> iota_values(std::size_t n, T start) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<T>(start + static_cast<T>(i));
  return v;
}

/// Every test gets its own folder: ctest runs the tests of one binary in parallel.
class SafetensorsFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(HQQ_TEST_TMP_DIR) / (std::string("safetensors_") + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }
  /// Names of the files in the test folder (to spot temporaries).
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

// ---------------------------------------------------------------- round trip

TEST_F(SafetensorsFiles, RoundTripSeveralDtypesAndShapes) {
  const auto f32 = iota_values<float>(6, 0.5f);
  const auto i64 = std::vector<std::int64_t>{-1234567890123};
  const auto i32 = iota_values<std::int32_t>(3, -1);
  const auto u8 = iota_values<std::uint8_t>(7, 200);
  std::vector<hqq::half> f16;
  for (float v : {1.0f, -2.5f, 65504.0f, 0.0f}) f16.push_back(hqq::half(v));
  std::vector<hqq::bfloat16> bf16 = {hqq::bfloat16(3.0f), hqq::bfloat16(-0.125f)};

  SafetensorsWriter w;
  w.add_values("layer.weight", DType::kF32, {2, 3}, f32);
  w.add_values("scalar", DType::kI64, {}, i64);
  w.add_values("empty", DType::kF32, {0}, std::vector<float>{});
  w.add_values("h", DType::kF16, {2, 2}, f16);
  w.add_values("odd", DType::kU8, {7}, u8);  // leaves the next tensor unaligned
  w.add_values("b", DType::kBF16, {1, 2}, bf16);
  w.add_values("empty2", DType::kBF16, {3, 0, 5}, std::vector<hqq::bfloat16>{});
  w.add_values("i", DType::kI32, {3}, i32);
  ASSERT_EQ(w.size(), 8u);
  EXPECT_TRUE(w.contains("odd"));
  EXPECT_FALSE(w.contains("nope"));
  const auto path = file("m.safetensors");
  w.write(path);
  EXPECT_EQ(listing(), std::vector<std::string>{"m.safetensors"});

  const auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f.path(), path);
  EXPECT_TRUE(f.metadata().empty());
  const std::vector<std::string> order = {"layer.weight", "scalar", "empty",  "h",
                                          "odd",          "b",      "empty2", "i"};
  ASSERT_EQ(f.tensors().size(), order.size());
  std::uint64_t expect_begin = 0;
  for (std::size_t k = 0; k < order.size(); ++k) {
    const TensorInfo& t = f.tensors()[k];
    EXPECT_EQ(t.name, order[k]);
    EXPECT_EQ(t.begin, expect_begin) << t.name;  // contiguous, in the order added
    expect_begin = t.end;
    EXPECT_EQ(&f.at(t.name), &t);
  }

  const auto check = [&](const std::string& name, DType dt, std::vector<std::int64_t> shape,
                         const void* want, std::size_t nbytes) {
    const TensorInfo& t = f.at(name);
    EXPECT_EQ(t.dtype, dt) << name;
    EXPECT_EQ(t.shape, shape) << name;
    EXPECT_EQ(t.nbytes(), nbytes) << name;
    if (nbytes > 0) {
      EXPECT_EQ(std::memcmp(f.data(t), want, nbytes), 0) << name;
    }
    const auto v = f.view(t);
    EXPECT_EQ(v.data, f.data(t));
    EXPECT_EQ(v.shape, shape);
    EXPECT_EQ(v.dtype, dt);
  };
  check("layer.weight", DType::kF32, {2, 3}, f32.data(), 24);
  check("scalar", DType::kI64, {}, i64.data(), 8);
  check("empty", DType::kF32, {0}, nullptr, 0);
  check("h", DType::kF16, {2, 2}, f16.data(), 8);
  check("odd", DType::kU8, {7}, u8.data(), 7);
  check("b", DType::kBF16, {1, 2}, bf16.data(), 4);
  check("empty2", DType::kBF16, {3, 0, 5}, nullptr, 0);
  check("i", DType::kI32, {3}, i32.data(), 12);
  EXPECT_EQ(f.at("scalar").numel(), 1);
  EXPECT_EQ(f.at("empty2").numel(), 0);

  // The header is padded with spaces to a multiple of 8.
  const Bytes raw = read_file(path);
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= std::uint64_t{raw[i]} << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw.size(), 8 + n + expect_begin);

  // The in-memory path reads the same image the same way.
  const auto m = SafetensorsFile::from_bytes(raw);
  EXPECT_EQ(m.path(), "<memory>");
  ASSERT_EQ(m.tensors().size(), order.size());
  EXPECT_EQ(std::memcmp(m.data(m.at("i")), i32.data(), 12), 0);
}

TEST_F(SafetensorsFiles, MetadataRoundTripAndComesFirst) {
  SafetensorsWriter w;
  w.add_values("x", DType::kF32, {1}, std::vector<float>{1.0f});
  w.set_metadata("format", "pt");
  w.set_metadata("quant_method", "hqq");
  w.set_metadata("quant_method", "hqq2");  // a later value replaces an earlier one
  w.set_metadata("unicode", "gr\xc3\xbc\xc3\x9f");
  const auto path = file("meta.safetensors");
  w.write(path);

  const auto f = SafetensorsFile::open(path);
  const std::map<std::string, std::string> want = {
      {"format", "pt"}, {"quant_method", "hqq2"}, {"unicode", "gr\xc3\xbc\xc3\x9f"}};
  EXPECT_EQ(f.metadata(), want);
  ASSERT_EQ(f.tensors().size(), 1u);
  const Bytes raw = read_file(path);
  const std::string header(raw.begin() + 8, raw.end());
  EXPECT_EQ(header.rfind("{\"__metadata__\":", 0), 0u) << header;
}

TEST_F(SafetensorsFiles, EmptyWriterWritesAValidFile) {
  const auto path = file("empty.safetensors");
  SafetensorsWriter().write(path);
  const auto f = SafetensorsFile::open(path);
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(read_file(path).size(), 16u);  // "{}" padded to 8
}

TEST(SafetensorsRead, TensorsComeInOffsetOrderNotHeaderOrder) {
  const std::string h = "{\"b\":" + entry("F32", "[1]", 4, 8) +
                        ",\"z\":" + entry("U8", "[0]", 0, 0) +
                        ",\"a\":" + entry("F32", "[1]", 0, 4) + "}";
  const auto f = SafetensorsFile::from_bytes(image(h, 8));
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.tensors()[0].name, "z");  // [0, 0] sorts before [0, 4]
  EXPECT_EQ(f.tensors()[1].name, "a");
  EXPECT_EQ(f.tensors()[2].name, "b");
  EXPECT_EQ(f.find("b")->begin, 4u);
  EXPECT_EQ(f.find("c"), nullptr);
  EXPECT_THAT(error_of([&] { f.at("c"); }), HasSubstr("<memory>: no tensor named 'c'"));
}

TEST(SafetensorsRead, AcceptsPaddingUnknownFieldsAndNullMetadata) {
  const std::string h =
      "{\"__metadata__\":null,\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
      "\"data_offsets\":[0,4],\"extra\":1}}     ";
  const auto f = SafetensorsFile::from_bytes(image(h, 4));
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(f.tensors().size(), 1u);
}

TEST(SafetensorsRead, RejectsDataOfAnotherFile) {
  const auto f = SafetensorsFile::from_bytes(image("{\"a\":" + entry("F32", "[1]", 0, 4) + "}", 4));
  TensorInfo other;
  other.name = "far";
  other.begin = 0;
  other.end = 400;
  EXPECT_THAT(error_of([&] { f.data(other); }), HasSubstr("not inside this file's data section"));
}

// ---------------------------------------------------------------- hostile input

TEST(SafetensorsHostile, FileShorterThanEightBytes) {
  EXPECT_THAT(parse_error({}), HasSubstr("model.safetensors: file is 0 bytes, too short"));
  EXPECT_THAT(parse_error({1, 2, 3}), HasSubstr("file is 3 bytes, too short"));
}

TEST(SafetensorsHostile, HeaderLengthLargerThanFile) {
  EXPECT_THAT(parse_error(image("{}", 0, 100)),
              HasSubstr("header length 100 runs past the end of the file (10 bytes)"));
  EXPECT_THAT(parse_error(image("", 0, 1)), HasSubstr("runs past the end of the file (8 bytes)"));
}

TEST(SafetensorsHostile, HeaderLengthOverLimit) {
  EXPECT_THAT(parse_error(image("{}", 0, 100'000'001)),
              HasSubstr("header length 100000001 exceeds the limit of 100000000 bytes"));
  EXPECT_THAT(parse_error(image("{}", 0, ~std::uint64_t{0})),
              HasSubstr("header length 18446744073709551615 exceeds the limit"));
}

TEST(SafetensorsHostile, EmptyHeader) {
  EXPECT_THAT(parse_error(image("", 0)), HasSubstr("header does not start with '{'"));
}

TEST(SafetensorsHostile, BadJson) {
  const auto msg = parse_error(image("{\"a\": ", 0));
  EXPECT_THAT(msg, HasSubstr("model.safetensors: header is not valid JSON"));
  EXPECT_THAT(msg, Not(HasSubstr("json.exception")));
  EXPECT_THAT(parse_error(image("{} x", 0)), HasSubstr("header is not valid JSON"));
  // nlohmann stops at a NUL byte as if the input ended there; JSON text has none.
  EXPECT_THAT(parse_error(image(std::string("{}\0junk", 7), 0)),
              HasSubstr("header has a NUL byte at offset 2"));
}

TEST(SafetensorsHostile, NonObjectJson) {
  EXPECT_THAT(parse_error(image("[1, 2]", 0)), HasSubstr("header does not start with '{'"));
  EXPECT_THAT(parse_error(image("\"text\"", 0)), HasSubstr("header does not start with '{'"));
  EXPECT_THAT(parse_error(image(" {}", 0)), HasSubstr("header does not start with '{'"));
  EXPECT_THAT(parse_error(image("{\"a\": 3}", 0)), HasSubstr("tensor 'a' is not a JSON object"));
}

TEST(SafetensorsHostile, InvalidUtf8) {
  const std::string good = entry("F32", "[1]", 0, 4);
  EXPECT_THAT(parse_error(image("{\"a\xff\":" + good + "}", 4)),
              HasSubstr("header is not valid UTF-8 (bad byte 0xff at header offset 3)"));
  // Overlong '/', a UTF-16 surrogate and a cut sequence are invalid too.
  EXPECT_THAT(parse_error(image("{\"a\xc0\xaf\":" + good + "}", 4)), HasSubstr("not valid UTF-8"));
  EXPECT_THAT(parse_error(image("{\"a\xed\xa0\x80\":" + good + "}", 4)),
              HasSubstr("not valid UTF-8"));
  EXPECT_THAT(parse_error(image("{\"a\":" + good + "}\xe2\x82", 4)), HasSubstr("not valid UTF-8"));
  // Valid multi-byte names are fine.
  EXPECT_NO_THROW(SafetensorsFile::from_bytes(image("{\"\xe2\x82\xac\":" + good + "}", 4)));
}

TEST(SafetensorsHostile, UnknownDtype) {
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("F17", "[1]", 0, 4) + "}", 4)),
              HasSubstr("model.safetensors: tensor 'a' has unknown dtype 'F17'"));
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("f32", "[1]", 0, 4) + "}", 4)),
              HasSubstr("unknown dtype 'f32'"));
  EXPECT_THAT(parse_error(image("{\"a\":{\"dtype\":4,\"shape\":[],\"data_offsets\":[0,1]}}", 1)),
              HasSubstr("tensor 'a' \"dtype\" is not a string"));
}

TEST(SafetensorsHostile, BadShape) {
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("F32", "[-1]", 0, 4) + "}", 4)),
              HasSubstr("tensor 'a' shape has -1 (not a non-negative integer)"));
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("F32", "[2.5]", 0, 4) + "}", 4)),
              HasSubstr("shape has 2.5 (not a non-negative integer)"));
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("F32", "[1.0]", 0, 4) + "}", 4)),
              HasSubstr("shape has 1.0"));
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("F32", "[\"1\"]", 0, 4) + "}", 4)),
              HasSubstr("shape has \"1\""));
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("F32", "4", 0, 4) + "}", 4)),
              HasSubstr("tensor 'a' \"shape\" is not an array"));
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("U8", "[18446744073709551615]", 0, 4) + "}", 4)),
              HasSubstr("shape dimension 18446744073709551615 does not fit in int64"));
}

TEST(SafetensorsHostile, MissingOrMalformedFields) {
  EXPECT_THAT(parse_error(image("{\"a\":{\"shape\":[],\"data_offsets\":[0,4]}}", 4)),
              HasSubstr("tensor 'a' has no \"dtype\""));
  EXPECT_THAT(parse_error(image("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4)),
              HasSubstr("tensor 'a' has no \"shape\""));
  EXPECT_THAT(parse_error(image("{\"a\":{\"dtype\":\"F32\",\"shape\":[]}}", 4)),
              HasSubstr("tensor 'a' has no \"data_offsets\""));
  for (const char* off : {"[0]", "[0,4,8]", "[0,-4]", "[0,4.0]", "{}", "null"}) {
    const std::string h =
        std::string("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":") + off + "}}";
    EXPECT_THAT(parse_error(image(h, 4)),
                HasSubstr("tensor 'a' \"data_offsets\" is not [begin, end] with non-negative"))
        << off;
  }
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("U8", "[0]", 4, 0) + "}", 4)),
              HasSubstr("tensor 'a' data_offsets [4, 0] end before they begin"));
}

TEST(SafetensorsHostile, OffsetsDoNotMatchShape) {
  EXPECT_THAT(
      parse_error(image("{\"a.weight\":" + entry("F32", "[2, 2]", 0, 12) + "}", 12)),
      HasSubstr("model.safetensors: tensor 'a.weight' data_offsets [0, 12] do not match shape "
                "[2, 2] x F32 (16 bytes)"));
  EXPECT_THAT(parse_error(image("{\"s\":" + entry("F64", "[]", 0, 4) + "}", 4)),
              HasSubstr("do not match shape [] x F64 (8 bytes)"));
}

TEST(SafetensorsHostile, OverlappingRanges) {
  const std::string h =
      "{\"a\":" + entry("F32", "[2]", 0, 8) + ",\"b\":" + entry("F32", "[2]", 4, 12) + "}";
  EXPECT_THAT(parse_error(image(h, 12)),
              HasSubstr("tensor 'b' data_offsets [4, 12] overlap tensor 'a' [0, 8]"));
  const std::string same =
      "{\"a\":" + entry("F32", "[1]", 0, 4) + ",\"b\":" + entry("F32", "[1]", 0, 4) + "}";
  EXPECT_THAT(parse_error(image(same, 4)), HasSubstr("overlap tensor 'a' [0, 4]"));
}

TEST(SafetensorsHostile, GapBetweenRanges) {
  const std::string h =
      "{\"a\":" + entry("F32", "[1]", 0, 4) + ",\"b\":" + entry("F32", "[1]", 8, 12) + "}";
  EXPECT_THAT(parse_error(image(h, 12)),
              HasSubstr("bytes [4, 8) of the data section are not covered by any tensor (gap "
                        "before tensor 'b')"));
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("F32", "[1]", 4, 8) + "}", 8)),
              HasSubstr("bytes [0, 4) of the data section are not covered"));
}

TEST(SafetensorsHostile, RangeOutsideBuffer) {
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("F32", "[4]", 0, 16) + "}", 8)),
              HasSubstr("tensor 'a' data_offsets [0, 16] lie outside the data section (8 bytes)"));
  // Offsets near 2^64 must not wrap around.
  const std::uint64_t big = ~std::uint64_t{0} - 4;
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("F32", "[1]", big, big + 4) + "}", 4)),
              HasSubstr("lie outside the data section"));
}

TEST(SafetensorsHostile, BufferNotFullyCovered) {
  EXPECT_THAT(
      parse_error(image("{\"a\":" + entry("F32", "[1]", 0, 4) + "}", 8)),
      HasSubstr("data section is 8 bytes but the tensors cover only 4 (not fully covered)"));
  EXPECT_THAT(parse_error(image("{}", 1)), HasSubstr("cover only 0 (not fully covered)"));
}

TEST(SafetensorsHostile, ShapeProductOverflow) {
  EXPECT_THAT(
      parse_error(image("{\"a\":" + entry("U8", "[4294967296, 4294967296]", 0, 0) + "}", 0)),
      HasSubstr("tensor 'a' shape [4294967296, 4294967296] overflows int64 elements"));
  // Overflow is caught even when a later dimension is 0 (same order as the Rust reader).
  EXPECT_THAT(
      parse_error(image("{\"a\":" + entry("U8", "[4294967296, 4294967296, 0]", 0, 0) + "}", 0)),
      HasSubstr("overflows int64 elements"));
  // Elements fit in int64 but bytes do not fit in u64.
  EXPECT_THAT(parse_error(image("{\"a\":" + entry("F64", "[4611686018427387904]", 0, 0) + "}", 0)),
              HasSubstr("shape [4611686018427387904] x F64 overflows 64-bit byte count"));
}

// nlohmann::json would keep only the last of two equal keys, silently hiding a
// tensor; the parser callback sees every key, so duplicates are rejected.
TEST(SafetensorsHostile, DuplicateNames) {
  const std::string e = entry("F32", "[1]", 0, 4);
  EXPECT_THAT(parse_error(image("{\"a\":" + e + ",\"a\":" + e + "}", 4)),
              HasSubstr("model.safetensors: duplicate tensor name 'a' in header"));
  EXPECT_THAT(parse_error(image("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],"
                                "\"data_offsets\":[0,4]}}",
                                4)),
              HasSubstr("duplicate key 'dtype' in header entry 'a'"));
  EXPECT_THAT(parse_error(image("{\"__metadata__\":{},\"__metadata__\":{}}", 0)),
              HasSubstr("duplicate tensor name '__metadata__'"));
}

TEST(SafetensorsHostile, BadMetadata) {
  EXPECT_THAT(parse_error(image("{\"__metadata__\":[]}", 0)),
              HasSubstr("\"__metadata__\" is not a JSON object"));
  EXPECT_THAT(parse_error(image("{\"__metadata__\":{\"k\":1}}", 0)),
              HasSubstr("\"__metadata__\" value of 'k' is not a string"));
}

TEST(SafetensorsHostile, DeepNesting) {
  const std::string h = "{\"a\":" + std::string(1000, '[') + std::string(1000, ']') + "}";
  EXPECT_THAT(parse_error(image(h, 0)), HasSubstr("header JSON nests deeper than 128 levels"));
}

TEST(SafetensorsHostile, ControlCharactersInNamesStayOnOneLine) {
  const std::string h = "{\"a\\nb\":" + entry("F17", "[1]", 0, 4) + "}";
  const auto msg = parse_error(image(h, 4));
  EXPECT_THAT(msg, HasSubstr("tensor 'a\\x0ab' has unknown dtype"));
  EXPECT_EQ(msg.find('\n'), std::string::npos);
}

TEST_F(SafetensorsFiles, MissingFile) {
  const auto path = file("does_not_exist.safetensors");
  EXPECT_THAT(error_of([&] { SafetensorsFile::open(path); }),
              HasSubstr(path + ": cannot open: No such file or directory"));
}

TEST_F(SafetensorsFiles, DirectoryAndTinyFiles) {
  EXPECT_THAT(error_of([&] { SafetensorsFile::open(dir_.string()); }),
              HasSubstr(dir_.string() + ": not a regular file"));
  const auto empty = file("empty.safetensors");
  std::ofstream(empty).close();
  EXPECT_THAT(error_of([&] { SafetensorsFile::open(empty); }),
              HasSubstr(empty + ": file is 0 bytes, too short"));
  const auto tiny = file("tiny.safetensors");
  std::ofstream(tiny) << "abc";
  EXPECT_THAT(error_of([&] { SafetensorsFile::open(tiny); }), HasSubstr("file is 3 bytes"));
  const auto bad = file("bad.safetensors");
  {
    const Bytes b = image("{\"a\":" + entry("F32", "[2, 2]", 0, 12) + "}", 12);
    std::ofstream out(bad, std::ios::binary);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  EXPECT_THAT(error_of([&] { SafetensorsFile::open(bad); }),
              HasSubstr(bad + ": tensor 'a' data_offsets [0, 12] do not match"));
}

// Deterministic corruption of a valid image: every variant must either load
// or throw hqq::Error; under ASan/UBSan this also proves no out-of-bounds read.
TEST_F(SafetensorsFiles, MutatedImagesNeverCrash) {
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.add_values("model.layers.0.weight", DType::kF16, {4, 3},
               std::vector<std::uint16_t>(12, 0x3c00));
  w.add_values("s", DType::kF32, {}, std::vector<float>{2.0f});
  w.add_values("z", DType::kI8, {0, 2}, std::vector<std::int8_t>{});
  w.add_values("n", DType::kI64, {2}, std::vector<std::int64_t>{7, -7});
  const auto path = file("valid.safetensors");
  w.write(path);
  const Bytes valid = read_file(path);
  std::uint64_t header_end = 0;
  for (int i = 0; i < 8; ++i) header_end |= std::uint64_t{valid[i]} << (8 * i);
  header_end += 8;
  ASSERT_LT(header_end, valid.size());

  std::mt19937 rng(20240601u);  // fixed seed: the same variants on every run
  const auto pick = [&](std::uint64_t n) { return static_cast<std::size_t>(rng() % n); };
  int loaded = 0, rejected = 0;
  const auto attempt = [&](const Bytes& b, int variant) {
    try {
      const auto f = SafetensorsFile::from_bytes(b, "mutant");
      std::uint64_t sum = 0;  // touch every byte the reader hands out
      for (const auto& t : f.tensors()) {
        const std::uint8_t* p = f.data(t);
        for (std::uint64_t i = 0; i < t.nbytes(); ++i) sum += p[i];
        EXPECT_GE(t.numel(), 0);
      }
      volatile std::uint64_t sink = sum;  // keeps the reads
      (void)sink;
      ++loaded;
    } catch (const hqq::Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind("mutant: ", 0), 0u) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      ++rejected;
    } catch (...) {
      ADD_FAILURE() << "variant " << variant << " threw something other than hqq::Error";
    }
  };

  int variant = 0;
  for (int k = 0; k < 200; ++k, ++variant) {  // one byte changed, mostly in the header
    Bytes b = valid;
    const std::size_t at = pick(4) == 0 ? pick(b.size()) : pick(header_end);
    b[at] = static_cast<std::uint8_t>(b[at] ^ (1 + pick(255)));
    attempt(b, variant);
  }
  for (int k = 0; k < 80; ++k, ++variant) {  // a few bytes replaced by digits or JSON punctuation
    Bytes b = valid;
    static constexpr char kChars[] = "0123456789-.e[]{}\",: \\";
    for (int r = 0; r < 3; ++r) b[8 + pick(header_end - 8)] = kChars[pick(sizeof(kChars) - 1)];
    attempt(b, variant);
  }
  for (int k = 0; k < 80; ++k, ++variant) {  // truncated
    attempt(Bytes(valid.begin(), valid.begin() + static_cast<std::ptrdiff_t>(pick(valid.size()))),
            variant);
  }
  for (int k = 0; k < 40; ++k, ++variant) {  // a bogus header length
    Bytes b = valid;
    const std::uint64_t n =
        k % 2 == 0 ? pick(valid.size() + 16) : (std::uint64_t{rng()} << 32) | rng();
    for (int i = 0; i < 8; ++i) b[i] = static_cast<std::uint8_t>(n >> (8 * i));
    attempt(b, variant);
  }
  EXPECT_EQ(loaded + rejected, variant);
  std::printf("mutation test: %d variants, %d loaded, %d rejected\n", variant, loaded, rejected);
  EXPECT_GT(rejected, variant / 2);
  EXPECT_GT(loaded, 0);  // flips inside tensor data keep the file valid
}

// ---------------------------------------------------------------- writer

TEST(SafetensorsWriterAdd, RejectsDuplicateAndBadEntries) {
  SafetensorsWriter w;
  w.add_values("a", DType::kF32, {2}, std::vector<float>{1, 2});
  EXPECT_THAT(error_of([&] { w.add_values("a", DType::kF32, {1}, std::vector<float>{1}); }),
              HasSubstr("duplicate tensor name 'a'"));
  EXPECT_THAT(error_of([&] {
                w.add_values("b", DType::kF32, {2, 2}, std::vector<float>{1, 2});
              }),
              HasSubstr("tensor 'b' has 8 bytes but shape [2, 2] x F32 needs 16 bytes"));
  EXPECT_THAT(error_of([&] { w.add("c", DType::kF16, {}, Bytes(4)); }),
              HasSubstr("tensor 'c' has 4 bytes but shape [] x F16 needs 2 bytes"));
  EXPECT_THAT(error_of([&] { w.add("", DType::kU8, {1}, Bytes(1)); }),
              HasSubstr("empty tensor name"));
  EXPECT_THAT(error_of([&] { w.add("__metadata__", DType::kU8, {1}, Bytes(1)); }),
              HasSubstr("reserved"));
  EXPECT_THAT(error_of([&] { w.add("d", DType::kU8, {-1}, Bytes(1)); }),
              HasSubstr("tensor 'd' shape [-1] has a negative dimension"));
  EXPECT_THAT(error_of([&] { w.add("bad\xff", DType::kU8, {1}, Bytes(1)); }),
              HasSubstr("not valid UTF-8"));
  EXPECT_THAT(error_of([&] { w.add_view("e", DType::kU8, {1}, nullptr, 1); }),
              HasSubstr("tensor 'e' has no data"));
  EXPECT_EQ(w.size(), 1u);  // failed adds leave no trace
  EXPECT_FALSE(w.contains("b"));
}

TEST_F(SafetensorsFiles, WriteIntoMissingFolderFails) {
  SafetensorsWriter w;
  w.add_values("a", DType::kF32, {1}, std::vector<float>{1});
  const auto path = file("no/such/folder/out.safetensors");
  const auto msg = error_of([&] { w.write(path); });
  EXPECT_THAT(msg, HasSubstr(path + ": cannot create a temporary file in '" +
                             file("no/such/folder") + "': No such file or directory"));
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(listing().empty());

  // A regular file where a folder should be fails the same way.
  std::ofstream(file("plain")) << "x";
  const auto under_file = file("plain/out.safetensors");
  EXPECT_THAT(error_of([&] { w.write(under_file); }),
              HasSubstr(under_file + ": cannot create a temporary file in '" + file("plain") +
                        "': Not a directory"));
  EXPECT_EQ(listing(), std::vector<std::string>{"plain"});
}

TEST_F(SafetensorsFiles, WriteIntoUnwritableFolderFails) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: folder permissions are not enforced";
  const auto sub = dir_ / "ro";
  fs::create_directories(sub);
  fs::permissions(sub, fs::perms::owner_read | fs::perms::owner_exec);
  SafetensorsWriter w;
  w.add_values("a", DType::kF32, {1}, std::vector<float>{1});
  const auto path = (sub / "out.safetensors").string();
  EXPECT_THAT(error_of([&] { w.write(path); }), HasSubstr("Permission denied"));
  fs::permissions(sub, fs::perms::owner_all);
  EXPECT_TRUE(fs::is_empty(sub));
}

TEST_F(SafetensorsFiles, ExistingFileIsReplacedAtomically) {
  const auto path = file("out.safetensors");
  SafetensorsWriter first;
  first.add_values("old", DType::kI32, {2}, std::vector<std::int32_t>{1, 2});
  first.write(path);
  const auto old_file = SafetensorsFile::open(path);  // maps the old inode
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);

  SafetensorsWriter second;
  second.add_values("new", DType::kF32, {3}, std::vector<float>{1, 2, 3});
  second.write(path);
  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  // rename() swapped in a new inode: readers of the old file keep a whole file.
  EXPECT_NE(before.st_ino, after.st_ino);
  std::int32_t v[2];
  std::memcpy(v, old_file.data(old_file.at("old")), sizeof v);
  EXPECT_EQ(v[1], 2);

  const auto f = SafetensorsFile::open(path);
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.tensors()[0].name, "new");
  EXPECT_EQ(listing(), std::vector<std::string>{"out.safetensors"});
}

TEST_F(SafetensorsFiles, FailedRenameLeavesNothingBehind) {
  // The target is a folder: the temporary is written, then rename() fails.
  const auto target = dir_ / "taken";
  fs::create_directories(target);
  SafetensorsWriter w;
  w.add_values("a", DType::kF32, {1}, std::vector<float>{1});
  EXPECT_THAT(error_of([&] { w.write(target.string()); }),
              HasSubstr(target.string() + ": cannot write safetensors file (renaming"));
  EXPECT_TRUE(fs::is_directory(target));
  EXPECT_EQ(listing(), std::vector<std::string>{"taken"});
}

TEST_F(SafetensorsFiles, FailedWriteKeepsOldFileAndLeavesNoTemporary) {
  const auto path = file("out.safetensors");
  SafetensorsWriter small;
  small.add_values("old", DType::kU8, {3}, std::vector<std::uint8_t>{1, 2, 3});
  small.write(path);
  const Bytes old_bytes = read_file(path);

  SafetensorsWriter big;
  big.add("big", DType::kU8, {1 << 16}, Bytes(1 << 16, 0x5a));
  // A file-size limit makes write() fail with EFBIG part-way through.
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  rlimit low = saved;
  low.rlim_cur = 4096;
  const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &low), 0);
  const auto msg = error_of([&] { big.write(path); });
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, old_handler);

  EXPECT_THAT(msg, HasSubstr(path + ": cannot write safetensors file (writing"));
  EXPECT_THAT(msg, HasSubstr("File too large"));
  EXPECT_EQ(read_file(path), old_bytes);
  EXPECT_EQ(listing(), std::vector<std::string>{"out.safetensors"});
}

TEST_F(SafetensorsFiles, RelativePathInCurrentFolder) {
  const auto cwd = fs::current_path();
  fs::current_path(dir_);
  SafetensorsWriter w;
  w.add_values("a", DType::kU8, {1}, std::vector<std::uint8_t>{9});
  w.write("rel.safetensors");
  EXPECT_EQ(SafetensorsFile::open("rel.safetensors").at("a").nbytes(), 1u);
  fs::current_path(cwd);
  EXPECT_EQ(listing(), std::vector<std::string>{"rel.safetensors"});
}

}  // namespace
