// Writes a Llama-shaped safetensors checkpoint of synthetic weights, for trying
// `hqq quantize` without downloading a model.
//
//   make_synthetic_checkpoint OUT.safetensors [--layers 2] [--hidden 1024]
//       [--intermediate 2816] [--vocab 4096] [--seed 0] [--dtype bf16]
//
// Trained weights are heavy-tailed, with a few large input channels; both make
// quantization harder than Gaussian data does, so the values follow a
// Student-t (4 degrees of freedom, std 0.02) with some columns scaled by 10.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include <hqq/hqq.hpp>

namespace {

struct Options {
  std::string output;
  std::int64_t layers = 2;
  std::int64_t hidden = 1024;
  std::int64_t intermediate = 2816;
  std::int64_t vocab = 4096;
  std::uint64_t seed = 0;
  hqq::DType dtype = hqq::DType::kBF16;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr,
               "make_synthetic_checkpoint: error: %s\n"
               "usage: make_synthetic_checkpoint OUT.safetensors [--layers N] [--hidden H] "
               "[--intermediate I] [--vocab V] [--seed S] [--dtype f16|bf16|f32]\n",
               message.c_str());
  std::exit(2);
}

std::int64_t parse_positive(const std::string& flag, const char* text) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || v <= 0 || v > (1LL << 20)) {
    usage_error(flag + " expects a positive integer up to 2^20, got '" + text + "'");
  }
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      if (!o.output.empty()) usage_error("more than one output path given");
      o.output = a;
      continue;
    }
    if (i + 1 >= argc) usage_error(a + " needs a value");
    const char* v = argv[++i];
    if (a == "--layers") o.layers = parse_positive(a, v);
    else if (a == "--hidden") o.hidden = parse_positive(a, v);
    else if (a == "--intermediate") o.intermediate = parse_positive(a, v);
    else if (a == "--vocab") o.vocab = parse_positive(a, v);
    else if (a == "--seed") o.seed = static_cast<std::uint64_t>(std::strtoull(v, nullptr, 10));
    else if (a == "--dtype") {
      const std::string d = v;
      if (d == "f16") o.dtype = hqq::DType::kF16;
      else if (d == "bf16") o.dtype = hqq::DType::kBF16;
      else if (d == "f32") o.dtype = hqq::DType::kF32;
      else usage_error("--dtype expects f16, bf16 or f32, got '" + d + "'");
    } else {
      usage_error("unknown option " + a);
    }
  }
  if (o.output.empty()) usage_error("missing OUT.safetensors");
  return o;
}

/// Encodes f32 values as `dtype` bytes.
std::vector<std::uint8_t> encode(const std::vector<float>& v, hqq::DType dtype) {
  std::vector<std::uint8_t> out(v.size() * hqq::dtype_size(dtype));
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (dtype == hqq::DType::kF32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {
      const std::uint16_t b = dtype == hqq::DType::kF16 ? hqq::float_to_half_bits(v[i])
                                                         : hqq::float_to_bf16_bits(v[i]);
      std::memcpy(out.data() + 2 * i, &b, 2);
    }
  }
  return out;
}

class Generator {
 public:
  explicit Generator(std::uint64_t seed) : rng_(seed) {}

  /// [rows, cols] heavy-tailed matrix with ~1% of its input columns (at least
  /// one) ten times larger.
  std::vector<float> matrix(std::int64_t rows, std::int64_t cols) {
    // t(4) has variance 4 / (4 - 2) = 2.
    const float scale = 0.02f / std::sqrt(2.0f);
    std::student_t_distribution<float> t(4.0f);
    std::vector<float> column_gain(static_cast<std::size_t>(cols), 1.0f);
    std::uniform_int_distribution<std::int64_t> pick(0, cols - 1);
    const std::int64_t outliers = std::max<std::int64_t>(1, cols / 100);
    for (std::int64_t k = 0; k < outliers; ++k) column_gain[static_cast<std::size_t>(pick(rng_))] = 10.0f;
    std::vector<float> w(static_cast<std::size_t>(rows * cols));
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t c = 0; c < cols; ++c) {
        w[static_cast<std::size_t>(r * cols + c)] =
            t(rng_) * scale * column_gain[static_cast<std::size_t>(c)];
      }
    }
    return w;
  }

  /// A norm's gains: around 1 with a small spread, as trained norms look.
  std::vector<float> norm(std::int64_t n) {
    std::normal_distribution<float> d(1.0f, 0.05f);
    std::vector<float> w(static_cast<std::size_t>(n));
    for (auto& x : w) x = d(rng_);
    return w;
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse_args(argc, argv);
  try {
    Generator gen(o.seed);
    hqq::io::SafetensorsWriter writer;
    std::int64_t count = 0;
    auto add_matrix = [&](const std::string& name, std::int64_t rows, std::int64_t cols) {
      writer.add(name, o.dtype, {rows, cols}, encode(gen.matrix(rows, cols), o.dtype));
      count += rows * cols;
    };
    auto add_norm = [&](const std::string& name, std::int64_t n) {
      writer.add(name, o.dtype, {n}, encode(gen.norm(n), o.dtype));
      count += n;
    };
    const std::int64_t h = o.hidden, inter = o.intermediate;
    add_matrix("model.embed_tokens.weight", o.vocab, h);
    for (std::int64_t i = 0; i < o.layers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
        add_matrix(p + "self_attn." + proj + ".weight", h, h);
      }
      add_matrix(p + "mlp.gate_proj.weight", inter, h);
      add_matrix(p + "mlp.up_proj.weight", inter, h);
      add_matrix(p + "mlp.down_proj.weight", h, inter);
      add_norm(p + "input_layernorm.weight", h);
      add_norm(p + "post_attention_layernorm.weight", h);
    }
    add_norm("model.norm.weight", h);
    add_matrix("lm_head.weight", o.vocab, h);
    writer.set_metadata("format", "pt");
    writer.set_metadata("generated_by", "hqq-cpp make_synthetic_checkpoint");
    writer.write(o.output);
    std::printf("wrote %s: %zu tensors, %lld weights, %s\n", o.output.c_str(), writer.size(),
                static_cast<long long>(count), std::string(hqq::dtype_name(o.dtype)).c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_synthetic_checkpoint: error: %s\n", e.what());
    return 1;
  }
}
