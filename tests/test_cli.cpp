// The `hqq` command end to end: quantize -> inspect -> dequantize on a small
// Llama-shaped checkpoint, the JSON report, and the failures that must exit
// non-zero with one error line and leave no output behind.

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "hqq/cuda.hpp"
#include "hqq/io/checkpoint.hpp"
#include "hqq/io/safetensors.hpp"
#include "hqq/quantize.hpp"

#ifndef HQQ_CLI_PATH
#error "test_cli needs HQQ_CLI_PATH (build with HQQ_BUILD_CLI=ON)"
#endif

namespace {

namespace fs = std::filesystem;
using hqq::DType;
using hqq::io::SafetensorsFile;
using hqq::io::SafetensorsWriter;

/// A fresh folder per test, so tests may run in parallel.
fs::path test_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::path(HQQ_TEST_TMP_DIR) / "cli" / info->name();
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct RunResult {
  int code = -1;
  std::string out;
  std::string err;
};

/// Runs `hqq ARGS` with stdout and stderr captured in files of `dir`.
RunResult run_hqq(const fs::path& dir, const std::string& args) {
  const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string cmd =
      quote(HQQ_CLI_PATH) + " " + args + " >" + quote(out.string()) + " 2>" + quote(err.string());
  const int status = std::system(cmd.c_str());
  RunResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_text(out);
  r.err = read_text(err);
  fs::remove(out);
  fs::remove(err);
  return r;
}

// ------------------------------------------------------------------ synthetic model

struct Spec {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
};

const std::vector<Spec>& model_spec() {
  static const std::vector<Spec> spec = {
      {"model.embed_tokens.weight", DType::kBF16, {96, 64}},
      {"model.layers.0.self_attn.q_proj.weight", DType::kF16, {64, 64}},
      {"model.layers.0.self_attn.q_proj.bias", DType::kF32, {64}},
      {"model.layers.0.self_attn.k_proj.weight", DType::kBF16, {64, 64}},
      {"model.layers.0.self_attn.v_proj.weight", DType::kF32, {64, 64}},
      {"model.layers.0.self_attn.o_proj.weight", DType::kBF16, {64, 64}},
      {"model.layers.0.mlp.gate_proj.weight", DType::kBF16, {128, 64}},
      {"model.layers.0.mlp.up_proj.weight", DType::kF16, {128, 64}},
      {"model.layers.0.mlp.down_proj.weight", DType::kF32, {64, 128}},
      {"model.layers.0.input_layernorm.weight", DType::kBF16, {64}},
      {"model.layers.0.post_attention_layernorm.weight", DType::kBF16, {64}},
      {"model.norm.weight", DType::kBF16, {64}},
      {"lm_head.weight", DType::kBF16, {96, 64}},
  };
  return spec;
}

/// Names `hqq quantize` picks with the default --include/--exclude.
std::set<std::string> default_quantized() {
  return {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
          "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
          "model.layers.0.mlp.gate_proj.weight",    "model.layers.0.mlp.up_proj.weight",
          "model.layers.0.mlp.down_proj.weight"};
}

std::vector<std::uint8_t> encode(const std::vector<float>& v, DType dtype) {
  std::vector<std::uint8_t> out(v.size() * hqq::dtype_size(dtype));
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {
      const std::uint16_t b =
          dtype == DType::kF16 ? hqq::float_to_half_bits(v[i]) : hqq::float_to_bf16_bits(v[i]);
      std::memcpy(out.data() + 2 * i, &b, 2);
    }
  }
  return out;
}

std::vector<float> decode(const std::uint8_t* p, std::size_t n, DType dtype) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(&v[i], p + 4 * i, 4);
    } else {
      std::uint16_t b;
      std::memcpy(&b, p + 2 * i, 2);
      v[i] = dtype == DType::kF16 ? hqq::half_bits_to_float(b) : hqq::bf16_bits_to_float(b);
    }
  }
  return v;
}

std::vector<float> tensor_floats(const SafetensorsFile& f, const std::string& name) {
  const auto& t = f.at(name);
  return decode(f.data(t), static_cast<std::size_t>(t.numel()), t.dtype);
}

std::vector<std::uint8_t> tensor_bytes(const SafetensorsFile& f, const std::string& name) {
  const auto& t = f.at(name);
  return std::vector<std::uint8_t>(f.data(t), f.data(t) + t.nbytes());
}

/// Writes the model (heavy-tailed weights, a few outlier columns) plus an
/// integer tensor; `poison` gets a NaN in its first element.
void write_model(const fs::path& path, const std::string& poison = "") {
  std::mt19937 rng(1234);
  std::student_t_distribution<float> t(4.0f);
  SafetensorsWriter w;
  for (const Spec& s : model_spec()) {
    std::vector<float> v(static_cast<std::size_t>(hqq::shape_numel(s.shape)));
    for (std::size_t i = 0; i < v.size(); ++i) {
      const bool outlier = s.shape.size() == 2 && (i % static_cast<std::size_t>(s.shape[1])) == 5;
      v[i] = (s.shape.size() == 1 ? 1.0f : 0.0f) + 0.014f * t(rng) * (outlier ? 10.0f : 1.0f);
    }
    if (s.name == poison) v[0] = std::numeric_limits<float>::quiet_NaN();
    w.add(s.name, s.dtype, s.shape, encode(v, s.dtype));
  }
  w.add_values("model.position_ids", DType::kI64, {8},
               std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7});
  w.set_metadata("format", "pt");
  w.set_metadata("source", "test_cli");
  w.write(path.string());
}

std::string prefix_of(const std::string& weight) {
  return weight.substr(0, weight.size() - std::string(".weight").size());
}

double rel_frobenius(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0, n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    e += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    n += static_cast<double>(a[i]) * a[i];
  }
  return std::sqrt(e / n);
}

/// Every failure: non-zero exit, exactly one line "hqq: error: ..." holding
/// each of `expect`, and the folder holds nothing but what was there before.
void expect_failure(const RunResult& r, const std::vector<std::string>& expect,
                    const fs::path& dir, const std::set<std::string>& files_before) {
  EXPECT_NE(r.code, 0) << r.err;
  EXPECT_EQ(r.err.rfind("hqq: error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  for (const auto& s : expect) EXPECT_NE(r.err.find(s), std::string::npos) << r.err;
  std::set<std::string> files_after;
  for (const auto& e : fs::directory_iterator(dir)) files_after.insert(e.path().filename().string());
  EXPECT_EQ(files_after, files_before) << "a failed run left files behind";
}

std::set<std::string> list_dir(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

// ------------------------------------------------------------------ round trip

TEST(CliTest, QuantizeInspectDequantizeRoundTrip) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors", out = dir / "model-hqq.safetensors",
                 report = dir / "report.json", back = dir / "model-dense.safetensors";
  write_model(in);

  const RunResult q = run_hqq(dir, "quantize " + quote(in.string()) + " " + quote(out.string()) +
                                       " --threads 2 --report " + quote(report.string()));
  ASSERT_EQ(q.code, 0) << q.err;
  EXPECT_EQ(q.err, "") << "stderr is not a terminal: no progress expected";
  for (const auto& n : default_quantized()) EXPECT_NE(q.out.find(n), std::string::npos) << q.out;
  EXPECT_NE(q.out.find("total:"), std::string::npos) << q.out;

  const SafetensorsFile src = SafetensorsFile::open(in.string());
  const SafetensorsFile qf = SafetensorsFile::open(out.string());
  const auto quantized = default_quantized();
  for (const Spec& s : model_spec()) {
    if (quantized.count(s.name)) {
      const std::string p = prefix_of(s.name);
      EXPECT_EQ(qf.find(s.name), nullptr) << s.name;
      ASSERT_NE(qf.find(p + ".W_q"), nullptr) << s.name;
      EXPECT_EQ(qf.at(p + ".W_q").dtype, DType::kU8);
      EXPECT_EQ(qf.at(p + ".scale").dtype, DType::kF16);
      const auto layer = hqq::io::read_quantized_layer(qf, p);
      EXPECT_EQ(layer.shape, s.shape);
      EXPECT_EQ(layer.nbits, 4);
      EXPECT_EQ(layer.group_size, 64);
    } else {
      // Excluded weights, norms and the bias are copied byte for byte.
      ASSERT_NE(qf.find(s.name), nullptr) << s.name;
      EXPECT_EQ(qf.at(s.name).dtype, s.dtype) << s.name;
      EXPECT_EQ(tensor_bytes(qf, s.name), tensor_bytes(src, s.name)) << s.name;
    }
  }
  EXPECT_EQ(tensor_bytes(qf, "model.position_ids"), tensor_bytes(src, "model.position_ids"));
  EXPECT_EQ(hqq::io::quantized_layer_prefixes(qf).size(), quantized.size());
  ASSERT_EQ(qf.metadata().count("hqq_config"), 1u);
  const auto cfg = nlohmann::json::parse(qf.metadata().at("hqq_config"));
  EXPECT_EQ(cfg.at("nbits"), 4);
  EXPECT_EQ(cfg.at("group_size"), 64);
  EXPECT_EQ(cfg.at("solver"), "proximal");
  EXPECT_EQ(qf.metadata().at("format"), "pt");
  EXPECT_NE(qf.metadata().at("quantized_by").find("hqq-cpp"), std::string::npos);

  // The report: one entry per quantized tensor; HQQ never worse than RTN.
  const auto rep = nlohmann::json::parse(read_text(report));
  ASSERT_EQ(rep.at("tensors").size(), quantized.size());
  for (const auto& t : rep.at("tensors")) {
    const std::string name = t.at("name");
    SCOPED_TRACE(name);
    EXPECT_EQ(quantized.count(name), 1u);
    EXPECT_EQ(t.at("nbits"), 4);
    EXPECT_EQ(t.at("group_size"), 64);
    EXPECT_EQ(t.at("axis"), 1);
    EXPECT_EQ(t.at("solver"), "proximal");
    EXPECT_EQ(t.at("shape").get<std::vector<std::int64_t>>(), src.at(name).shape);
    const double rel = t.at("rel_frobenius"), mae = t.at("mean_abs");
    const double rtn_rel = t.at("rtn_rel_frobenius"), rtn_mae = t.at("rtn_mean_abs");
    EXPECT_GT(rel, 0.0);
    EXPECT_LT(rel, 0.2);
    // The proximal solver keeps each group's best mean |error|, starting from
    // the RTN point, so the mean abs error cannot exceed RTN's.
    EXPECT_LE(mae, rtn_mae * (1 + 1e-9));
    // It optimises an lp norm, not the Frobenius norm: allow a hair of slack.
    EXPECT_LE(rel, rtn_rel * 1.01);
    EXPECT_NEAR(t.at("bits_per_weight").get<double>(), 4.0 + 2 * 16.0 / 64, 1e-9);
    EXPECT_GE(t.at("seconds").get<double>(), 0.0);
  }
  std::int64_t total = 0;
  for (const auto& n : quantized) total += hqq::shape_numel(src.at(n).shape);
  EXPECT_EQ(rep.at("totals").at("weights"), total);

  const RunResult ins = run_hqq(dir, "inspect " + quote(out.string()));
  ASSERT_EQ(ins.code, 0) << ins.err;
  EXPECT_NE(ins.out.find("quantized layers: 7"), std::string::npos) << ins.out;
  EXPECT_NE(ins.out.find("nbits=4 group_size=64 axis=1 scale=F16"), std::string::npos) << ins.out;
  EXPECT_NE(ins.out.find("bits/weight=4.500"), std::string::npos) << ins.out;
  EXPECT_NE(ins.out.find("hqq_config"), std::string::npos) << ins.out;
  for (const auto& t : qf.tensors()) EXPECT_NE(ins.out.find(t.name), std::string::npos) << t.name;

  const RunResult d =
      run_hqq(dir, "dequantize " + quote(out.string()) + " " + quote(back.string()));
  ASSERT_EQ(d.code, 0) << d.err;
  const SafetensorsFile bf = SafetensorsFile::open(back.string());
  std::set<std::string> names_in, names_back;
  for (const auto& t : src.tensors()) names_in.insert(t.name);
  for (const auto& t : bf.tensors()) names_back.insert(t.name);
  EXPECT_EQ(names_back, names_in);
  for (const Spec& s : model_spec()) {
    SCOPED_TRACE(s.name);
    if (quantized.count(s.name)) {
      EXPECT_EQ(bf.at(s.name).dtype, DType::kF32);
      EXPECT_EQ(bf.at(s.name).shape, s.shape);
      const auto got = tensor_floats(bf, s.name);
      // Exactly what the library gives for the stored layer...
      EXPECT_EQ(got, hqq::dequantize(hqq::io::read_quantized_layer(qf, prefix_of(s.name))));
      // ...and close to the original weight.
      EXPECT_LT(rel_frobenius(tensor_floats(src, s.name), got), 0.2);
    } else {
      EXPECT_EQ(tensor_bytes(bf, s.name), tensor_bytes(src, s.name));
    }
  }
  EXPECT_EQ(tensor_bytes(bf, "model.position_ids"), tensor_bytes(src, "model.position_ids"));
  EXPECT_EQ(bf.metadata().count("hqq_config"), 0u);
  EXPECT_EQ(bf.metadata().at("source"), "test_cli");
}

TEST(CliTest, OptionsReachTheFile) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors", out = dir / "q.safetensors",
                 back = dir / "d.safetensors";
  write_model(in);
  const RunResult q = run_hqq(
      dir, "quantize " + quote(in.string()) + " " + quote(out.string()) +
               " --nbits 3 --group-size 32 --axis 0 --solver none --scale-dtype bf16"
               " --round-zero on --exclude '(embed|lm_head|norm|down_proj)'");
  ASSERT_EQ(q.code, 0) << q.err;
  const SafetensorsFile qf = SafetensorsFile::open(out.string());
  const SafetensorsFile src = SafetensorsFile::open(in.string());
  EXPECT_EQ(tensor_bytes(qf, "model.layers.0.mlp.down_proj.weight"),
            tensor_bytes(src, "model.layers.0.mlp.down_proj.weight"));
  const auto l = hqq::io::read_quantized_layer(qf, "model.layers.0.mlp.up_proj");
  EXPECT_EQ(l.nbits, 3);
  EXPECT_EQ(l.group_size, 32);
  EXPECT_EQ(l.axis, 0);
  EXPECT_EQ(l.scale_dtype, DType::kBF16);
  EXPECT_EQ(l.solver, hqq::Solver::kNone);
  EXPECT_TRUE(l.round_zero);
  EXPECT_EQ(qf.at("model.layers.0.mlp.up_proj.W_q").dtype, DType::kI32);
  EXPECT_EQ(qf.at("model.layers.0.mlp.up_proj.scale").shape,
            (std::vector<std::int64_t>{1, 128 * 64 / 32}));

  const RunResult d = run_hqq(
      dir, "dequantize " + quote(out.string()) + " " + quote(back.string()) + " --dtype bf16");
  ASSERT_EQ(d.code, 0) << d.err;
  const SafetensorsFile bf = SafetensorsFile::open(back.string());
  EXPECT_EQ(bf.at("model.layers.0.mlp.up_proj.weight").dtype, DType::kBF16);
  EXPECT_LT(rel_frobenius(tensor_floats(src, "model.layers.0.mlp.up_proj.weight"),
                          tensor_floats(bf, "model.layers.0.mlp.up_proj.weight")),
            0.4);
}

TEST(CliTest, IncludeSelectsTensors) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors", out = dir / "q.safetensors";
  write_model(in);
  const RunResult q = run_hqq(dir, "quantize " + quote(in.string()) + " " + quote(out.string()) +
                                       " --include 'q_proj|lm_head' --exclude lm_head");
  ASSERT_EQ(q.code, 0) << q.err;
  const SafetensorsFile qf = SafetensorsFile::open(out.string());
  EXPECT_EQ(hqq::io::quantized_layer_prefixes(qf),
            std::vector<std::string>{"model.layers.0.self_attn.q_proj"});
  EXPECT_NE(qf.find("lm_head.weight"), nullptr);
  EXPECT_NE(qf.find("model.layers.0.self_attn.k_proj.weight"), nullptr);
}

TEST(CliTest, VersionAndHelp) {
  const fs::path dir = test_dir();
  const RunResult v = run_hqq(dir, "--version");
  EXPECT_EQ(v.code, 0) << v.err;
  EXPECT_NE(v.out.find("0.1.0"), std::string::npos) << v.out;
  const RunResult h = run_hqq(dir, "quantize --help");
  EXPECT_EQ(h.code, 0) << h.err;
  EXPECT_NE(h.out.find("(embed|lm_head|norm|wte|wpe)"), std::string::npos) << h.out;
}

// ------------------------------------------------------------------ failures

TEST(CliTest, MissingInputFails) {
  const fs::path dir = test_dir();
  const auto before = list_dir(dir);
  const RunResult r = run_hqq(dir, "quantize " + quote((dir / "nope.safetensors").string()) + " " +
                                       quote((dir / "out.safetensors").string()));
  expect_failure(r, {"nope.safetensors", "does not exist"}, dir, before);
}

TEST(CliTest, TruncatedInputFails) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors";
  write_model(in);
  fs::resize_file(in, fs::file_size(in) / 2);
  const auto before = list_dir(dir);
  const RunResult r =
      run_hqq(dir, "quantize " + quote(in.string()) + " " + quote((dir / "o.safetensors").string()));
  expect_failure(r, {"model.safetensors"}, dir, before);
  const RunResult i = run_hqq(dir, "inspect " + quote(in.string()));
  expect_failure(i, {"model.safetensors"}, dir, before);
}

TEST(CliTest, NanWeightFails) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors";
  write_model(in, "model.layers.0.mlp.gate_proj.weight");
  const auto before = list_dir(dir);
  const RunResult r =
      run_hqq(dir, "quantize " + quote(in.string()) + " " + quote((dir / "o.safetensors").string()));
  expect_failure(r, {"model.layers.0.mlp.gate_proj.weight"}, dir, before);
  std::string lower = r.err;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  EXPECT_TRUE(lower.find("nan") != std::string::npos || lower.find("finite") != std::string::npos)
      << r.err;
}

TEST(CliTest, GroupSizeThatDoesNotDivideFails) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors";
  write_model(in);
  const auto before = list_dir(dir);
  const RunResult r = run_hqq(dir, "quantize " + quote(in.string()) + " " +
                                       quote((dir / "o.safetensors").string()) +
                                       " --group-size 48 --report " +
                                       quote((dir / "r.json").string()));
  expect_failure(r, {"model.layers.0.self_attn.q_proj.weight", "group_size=48"}, dir, before);
}

TEST(CliTest, UnwritableOutputFolderFails) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors";
  write_model(in);
  const auto before = list_dir(dir);
  const RunResult r = run_hqq(dir, "quantize " + quote(in.string()) + " " +
                                       quote((dir / "missing" / "o.safetensors").string()));
  expect_failure(r, {"missing", "does not exist"}, dir, before);
  const RunResult d = run_hqq(dir, "dequantize " + quote(in.string()) + " " +
                                       quote((dir / "missing" / "o.safetensors").string()));
  expect_failure(d, {"missing", "does not exist"}, dir, before);
}

TEST(CliTest, BadNbitsFails) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors";
  write_model(in);
  const auto before = list_dir(dir);
  const RunResult r = run_hqq(dir, "quantize " + quote(in.string()) + " " +
                                       quote((dir / "o.safetensors").string()) + " --nbits 5");
  expect_failure(r, {"nbits=5"}, dir, before);
  const RunResult s = run_hqq(dir, "quantize " + quote(in.string()) + " " +
                                       quote((dir / "o.safetensors").string()) + " --nbits four");
  expect_failure(s, {"--nbits"}, dir, before);
}

TEST(CliTest, UnknownDeviceFails) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors";
  write_model(in);
  const auto before = list_dir(dir);
  const RunResult r = run_hqq(dir, "quantize " + quote(in.string()) + " " +
                                       quote((dir / "o.safetensors").string()) + " --device tpu");
  expect_failure(r, {"--device", "tpu"}, dir, before);
}

// --device cuda: the file on a GPU, one clear line and no output without one.
TEST(CliTest, DeviceCudaWorksOrSaysWhyNot) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors", out = dir / "o.safetensors";
  write_model(in);
  const auto before = list_dir(dir);
  const RunResult r = run_hqq(dir, "quantize " + quote(in.string()) + " " + quote(out.string()) + " --device cuda");
  if (hqq::cuda::available()) {
    ASSERT_EQ(r.code, 0) << r.err;
    const SafetensorsFile qf = SafetensorsFile::open(out.string());
    EXPECT_FALSE(hqq::io::quantized_layer_prefixes(qf).empty());
  } else {
    expect_failure(r, {"--device cuda", "CUDA"}, dir, before);
  }
}

TEST(CliTest, UnknownSolverFails) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors";
  write_model(in);
  const auto before = list_dir(dir);
  const RunResult r = run_hqq(dir, "quantize " + quote(in.string()) + " " +
                                       quote((dir / "o.safetensors").string()) + " --solver magic");
  expect_failure(r, {"solver", "magic"}, dir, before);
}

TEST(CliTest, BadOptionValuesFail) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors";
  write_model(in);
  const auto before = list_dir(dir);
  const std::string base =
      "quantize " + quote(in.string()) + " " + quote((dir / "o.safetensors").string());
  expect_failure(run_hqq(dir, base + " --scale-dtype f8"), {"--scale-dtype", "f8"}, dir, before);
  expect_failure(run_hqq(dir, base + " --round-zero maybe"), {"--round-zero"}, dir, before);
  expect_failure(run_hqq(dir, base + " --include '('"), {"--include"}, dir, before);
  expect_failure(run_hqq(dir, base + " --include nothing_matches"), {"no tensor"}, dir, before);
  expect_failure(run_hqq(dir, "dequantize " + quote(in.string()) + " " +
                                  quote((dir / "o.safetensors").string()) + " --dtype i8"),
                 {"--dtype", "i8"}, dir, before);
  expect_failure(run_hqq(dir, "frobnicate"), {"frobnicate"}, dir, before);
}

TEST(CliTest, SamePathIsRefused) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors";
  write_model(in);
  const auto bytes = read_text(in);
  const auto before = list_dir(dir);
  const RunResult r = run_hqq(dir, "quantize " + quote(in.string()) + " " +
                                       quote((dir / "." / "model.safetensors").string()));
  expect_failure(r, {"is the input file"}, dir, before);
  EXPECT_EQ(read_text(in), bytes);
}

TEST(CliTest, NameCollisionIsRefused) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors";
  SafetensorsWriter w;
  w.add_values("layer.weight", DType::kF32, {8, 64}, std::vector<float>(8 * 64, 0.25f));
  w.add_values("layer.scale", DType::kF32, {1}, std::vector<float>{1.0f});
  w.write(in.string());
  const auto before = list_dir(dir);
  const RunResult r =
      run_hqq(dir, "quantize " + quote(in.string()) + " " + quote((dir / "o.safetensors").string()));
  expect_failure(r, {"layer.scale", "collide"}, dir, before);
}

TEST(CliTest, DequantizeRejectsBrokenLayer) {
  const fs::path dir = test_dir();
  const fs::path in = dir / "model.safetensors", q = dir / "q.safetensors";
  write_model(in);
  ASSERT_EQ(run_hqq(dir, "quantize " + quote(in.string()) + " " + quote(q.string())).code, 0);
  // Rewrite one layer as if it were a view_as_float checkpoint.
  const SafetensorsFile qf = SafetensorsFile::open(q.string());
  const fs::path bad = dir / "bad.safetensors";
  SafetensorsWriter w;
  for (const auto& t : qf.tensors()) {
    if (t.name == "model.layers.0.self_attn.k_proj.view_as_float") {
      w.add(t.name, DType::kU8, {}, {1});
    } else {
      w.add(t.name, t.dtype, t.shape, tensor_bytes(qf, t.name));
    }
  }
  w.write(bad.string());
  const auto before = list_dir(dir);
  const RunResult r =
      run_hqq(dir, "dequantize " + quote(bad.string()) + " " + quote((dir / "o.safetensors").string()));
  expect_failure(r, {"view_as_float checkpoints are not supported", "k_proj", "bad.safetensors"},
                 dir, before);
}

}  // namespace
