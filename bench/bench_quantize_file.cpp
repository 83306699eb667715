/// \file bench_quantize_file.cpp
/// Times hqq::quantize on one tensor of a safetensors file and prints one JSON
/// object: the config, median/min seconds over --reps runs (after one warm-up),
/// weights/s, reconstruction error and thread count. compare_reference.py runs
/// it beside the reference package on the same file.
///
///   bench_quantize_file IN.safetensors [--tensor W] [--nbits 4] [--group-size 64]
///       [--axis 1] [--solver legacy|proximal|none] [--round-zero auto|on|off]
///       [--reps 5] [--threads N]

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "hqq/hqq.hpp"

namespace {

struct Args {
  std::string path;
  std::string tensor = "W";
  int nbits = 4;
  std::int64_t group_size = 64;
  int axis = 1;
  std::string solver = "proximal";
  std::string round_zero = "auto";
  int reps = 5;
  int threads = 0;  // 0: the library default
};

constexpr const char* kUsage =
    "usage: bench_quantize_file IN.safetensors [--tensor W] [--nbits 4] [--group-size 64]\n"
    "           [--axis 1] [--solver legacy|proximal|none] [--round-zero auto|on|off]\n"
    "           [--reps 5] [--threads N]\n";

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "bench_quantize_file: %s\n%s", msg.c_str(), kUsage);
  std::exit(2);
}

long long to_int(std::string_view flag, const std::string& v) {
  try {
    std::size_t used = 0;
    const long long x = std::stoll(v, &used);
    if (used != v.size()) throw std::invalid_argument(v);
    return x;
  } catch (const std::exception&) {
    usage_error(fmt::format("{} expects an integer, got '{}'", flag, v));
  }
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (arg.substr(0, 2) != "--") {
      if (!a.path.empty()) usage_error(fmt::format("unexpected argument '{}'", arg));
      a.path = std::string(arg);
      continue;
    }
    // --flag value or --flag=value
    std::string flag(arg), value;
    if (const auto eq = flag.find('='); eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag.resize(eq);
    } else {
      if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", flag));
      value = argv[++i];
    }
    if (flag == "--tensor") a.tensor = value;
    else if (flag == "--nbits") a.nbits = static_cast<int>(to_int(flag, value));
    else if (flag == "--group-size") a.group_size = to_int(flag, value);
    else if (flag == "--axis") a.axis = static_cast<int>(to_int(flag, value));
    else if (flag == "--solver") a.solver = value;
    else if (flag == "--round-zero") a.round_zero = value;
    else if (flag == "--reps") a.reps = static_cast<int>(to_int(flag, value));
    else if (flag == "--threads") a.threads = static_cast<int>(to_int(flag, value));
    else usage_error(fmt::format("unknown option '{}'", flag));
  }
  if (a.path.empty()) usage_error("no input file");
  if (a.reps < 1) usage_error("--reps must be >= 1");
  if (a.round_zero != "auto" && a.round_zero != "on" && a.round_zero != "off") {
    usage_error(fmt::format("--round-zero expects auto, on or off, got '{}'", a.round_zero));
  }
  return a;
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

int run(const Args& a) {
  hqq::QuantConfig cfg;
  cfg.nbits = a.nbits;
  cfg.group_size = a.group_size;
  cfg.axis = a.axis;
  cfg.solver = hqq::parse_solver(a.solver);
  if (a.round_zero != "auto") cfg.round_zero = a.round_zero == "on";
  cfg.validate();
  if (a.threads > 0) hqq::set_num_threads(a.threads);

  const auto file = hqq::io::SafetensorsFile::open(a.path);
  const hqq::io::TensorInfo& info = file.at(a.tensor);
  HQQ_EXPECTS(info.dtype == hqq::DType::kF32 || info.dtype == hqq::DType::kF16 ||
                  info.dtype == hqq::DType::kBF16,
              "tensor '{}' has dtype {}; expected F32, F16 or BF16", a.tensor, hqq::dtype_name(info.dtype));
  // The mapped bytes may be unaligned: copy into an aligned buffer first. The
  // copy is outside the timing, as the reference gets its tensor in memory.
  std::vector<float> buffer((info.nbytes() + sizeof(float) - 1) / sizeof(float));
  std::memcpy(buffer.data(), file.data(info), info.nbytes());
  const hqq::TensorView weight{buffer.data(), info.shape, info.dtype};

  using Clock = std::chrono::steady_clock;
  hqq::QuantizedTensor q = hqq::quantize(weight, cfg);  // warm-up (pages, thread pool)
  std::vector<double> seconds;
  for (int r = 0; r < a.reps; ++r) {
    const auto t0 = Clock::now();
    q = hqq::quantize(weight, cfg);
    seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::vector<double> sorted = seconds;
  std::sort(sorted.begin(), sorted.end());
  const std::size_t n = sorted.size();
  const double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  const hqq::ErrorStats err = hqq::measure_error(weight, q);
  const double numel = static_cast<double>(info.numel());

  fmt::print(
      "{{\"file\": {}, \"tensor\": {}, \"shape\": [{}], \"dtype\": \"{}\", "
      "\"nbits\": {}, \"group_size\": {}, \"axis\": {}, \"solver\": \"{}\", \"round_zero\": {}, "
      "\"scale_dtype\": \"{}\", \"reps\": {}, \"threads\": {}, "
      "\"seconds\": [{:.6f}], \"median_s\": {:.6f}, \"min_s\": {:.6f}, \"weights_per_s\": {:.6e}, "
      "\"rel_frobenius\": {:.9e}, \"mean_abs\": {:.9e}, \"max_abs\": {:.9e}, "
      "\"bits_per_weight\": {:.4f}, \"hqq_version\": \"{}\"}}\n",
      json_string(a.path), json_string(a.tensor), fmt::join(info.shape, ", "),
      hqq::dtype_name(info.dtype), cfg.nbits, cfg.group_size, cfg.axis,
      hqq::solver_name(cfg.solver), cfg.effective_round_zero() ? "true" : "false",
      hqq::dtype_name(cfg.scale_dtype), a.reps, hqq::num_threads(), fmt::join(seconds, ", "),
      median, sorted.front(), numel / median, err.rel_frobenius, err.mean_abs, err.max_abs,
      q.bits_per_weight(), hqq::kVersionString);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  try {
    return run(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_quantize_file: %s\n", e.what());
    return 1;
  }
}
