/// \file quantize_command.cpp
/// `hqq quantize`: dense safetensors checkpoint -> HQQ quantized checkpoint.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "hqq/backend.hpp"
#include "hqq/config.hpp"
#include "hqq/cuda.hpp"
#include "hqq/error.hpp"
#include "hqq/io/checkpoint.hpp"
#include "hqq/io/safetensors.hpp"
#include "hqq/quantize.hpp"
#include "hqq/version.hpp"

namespace hqq::cli {
namespace {

constexpr std::string_view kWeightSuffix = ".weight";

std::regex compile_regex(const std::string& pattern, const char* option) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    detail::throw_error("{} '{}' is not a valid regular expression: {}", option, pattern, e.what());
  }
}

std::optional<bool> parse_round_zero(const std::string& s) {
  if (s == "auto") return std::nullopt;
  if (s == "on" || s == "true" || s == "1") return true;
  if (s == "off" || s == "false" || s == "0") return false;
  detail::throw_error("--round-zero '{}' is not supported (expected auto, on or off)", s);
}

/// Whether a tensor is one `quantize` works on (before --include/--exclude).
bool is_candidate(const io::TensorInfo& t) {
  const std::string& n = t.name;
  const bool weight = n.size() > kWeightSuffix.size() &&
                      n.compare(n.size() - kWeightSuffix.size(), kWeightSuffix.size(),
                                kWeightSuffix) == 0;
  const bool floating = t.dtype == DType::kF32 || t.dtype == DType::kF16 || t.dtype == DType::kBF16;
  return weight && floating && t.shape.size() == 2;
}

std::string prefix_of(const std::string& weight_name) {
  return weight_name.substr(0, weight_name.size() - kWeightSuffix.size());
}

/// One quantized tensor's line of the report.
struct ReportRow {
  std::string name;
  std::vector<std::int64_t> shape;
  DType dtype = DType::kF32;
  ErrorStats hqq;
  ErrorStats rtn;
  double bits_per_weight = 0;
  double seconds = 0;
  std::int64_t numel = 0;
  std::uint64_t bytes_before = 0;
  std::uint64_t bytes_after = 0;
};

/// A float as the shortest decimal that reads back to it (1.01, not 1.0099999904632568).
double short_decimal(float v) { return std::stod(fmt::format("{}", v)); }

nlohmann::json config_json(const QuantConfig& cfg, const QuantizeOptions& opt) {
  nlohmann::json j;
  j["nbits"] = cfg.nbits;
  j["group_size"] = cfg.group_size;
  j["axis"] = cfg.axis;
  j["solver"] = std::string(solver_name(cfg.solver));
  j["round_zero"] = opt.round_zero;
  j["scale_dtype"] = std::string(dtype_name(cfg.scale_dtype));
  j["lp_norm"] = short_decimal(cfg.params.lp_norm);
  j["beta"] = short_decimal(cfg.params.beta);
  j["kappa"] = short_decimal(cfg.params.kappa);
  j["iters"] = cfg.params.iters;
  j["include"] = opt.include;
  j["exclude"] = opt.exclude;
  return j;
}

void print_table(const std::vector<ReportRow>& rows, const QuantConfig& cfg) {
  std::size_t name_w = 4, shape_w = 5;
  for (const auto& r : rows) {
    name_w = std::max(name_w, r.name.size());
    shape_w = std::max(shape_w, shape_string(r.shape).size());
  }
  const std::string header = fmt::format(
      "{:<{}}  {:<{}}  {:>4}  {:>5}  {:>4}  {:<8}  {:>9}  {:>9}  {:>9}  {:>9}  {:>6}  {:>8}", "name",
      name_w, "shape", shape_w, "bits", "group", "axis", "solver", "rel_err", "mean_abs",
      "rtn_rel", "rtn_abs", "bits/w", "seconds");
  std::printf("%s\n%s\n", header.c_str(), std::string(header.size(), '-').c_str());
  for (const auto& r : rows) {
    std::printf("%s\n",
                fmt::format("{:<{}}  {:<{}}  {:>4}  {:>5}  {:>4}  {:<8}  {:>9.5f}  {:>9.3e}  "
                            "{:>9.5f}  {:>9.3e}  {:>6.3f}  {:>8.3f}",
                            r.name, name_w, shape_string(r.shape), shape_w, cfg.nbits,
                            cfg.group_size, cfg.axis, solver_name(cfg.solver), r.hqq.rel_frobenius,
                            r.hqq.mean_abs, r.rtn.rel_frobenius, r.rtn.mean_abs, r.bits_per_weight,
                            r.seconds)
                    .c_str());
  }
}

}  // namespace

int run_quantize(const QuantizeOptions& opt) {
  QuantConfig cfg;
  cfg.nbits = opt.nbits;
  cfg.group_size = opt.group_size;
  cfg.axis = opt.axis;
  cfg.solver = parse_solver(opt.solver);
  cfg.round_zero = parse_round_zero(opt.round_zero);
  cfg.scale_dtype = parse_float_dtype(opt.scale_dtype, "--scale-dtype");
  cfg.validate();
  QuantConfig rtn_cfg = cfg;
  rtn_cfg.solver = Solver::kNone;
  if (opt.threads) set_num_threads(*opt.threads);
  HQQ_EXPECTS(opt.device == "auto" || opt.device == "cpu" || opt.device == "cuda",
              "--device '{}' is not supported (expected cpu, cuda or auto)", opt.device);
  const Backend* backend = nullptr;
  try {
    backend = &get_backend(opt.device);
  } catch (const Error& e) {
    detail::throw_error("--device {}: {}", opt.device, e.what());
  }
  if (const Support ok = backend->available(); !ok) detail::throw_error("--device {}: {}", opt.device, ok.reason);
  const std::string device(backend->name());

  check_input_file(opt.input);
  check_distinct_paths(opt.input, opt.output);
  check_output_path(opt.output);
  if (!opt.report.empty()) {
    check_distinct_paths(opt.input, opt.report, "--report");
    check_distinct_paths(opt.output, opt.report, "--report (the output)");
    check_output_path(opt.report, "--report");
  }
  const std::regex include = compile_regex(opt.include, "--include");
  const std::regex exclude = compile_regex(opt.exclude, "--exclude");

  const io::SafetensorsFile file = io::SafetensorsFile::open(opt.input);

  // Select, then check every selected shape before the first (slow) solve.
  std::vector<const io::TensorInfo*> selected;
  std::set<std::string> selected_names;
  for (const io::TensorInfo& t : file.tensors()) {
    if (!is_candidate(t) || !std::regex_search(t.name, include) ||
        std::regex_search(t.name, exclude)) {
      continue;
    }
    try {
      const GroupedView view(t.numel(), cfg.group_size, cfg.axis);
      check_packable(cfg.nbits, view.rows());
    } catch (const Error& e) {
      detail::throw_error("tensor '{}' of shape {} cannot be quantized with these settings: {}",
                          t.name, shape_string(t.shape), e.what());
    }
    selected.push_back(&t);
    selected_names.insert(t.name);
  }
  HQQ_EXPECTS(!selected.empty(),
              "no tensor of '{}' to quantize (looked for 2-D F32/F16/BF16 '*.weight' tensors "
              "matching --include '{}' and not --exclude '{}')",
              opt.input, opt.include, opt.exclude);

  // A copied tensor must not share a name with a generated key, or the
  // output would be ambiguous (e.g. the input is already quantized).
  std::set<std::string> generated;
  for (const auto* t : selected) {
    for (const auto& key : io::quantized_layer_keys()) generated.insert(prefix_of(t->name) + "." + key);
  }
  for (const io::TensorInfo& t : file.tensors()) {
    if (selected_names.count(t.name) == 0 && generated.count(t.name) != 0) {
      detail::throw_error(
          "tensor '{}' would collide with a key of the quantized layer '{}' (is the input "
          "already quantized?)",
          t.name, t.name.substr(0, t.name.rfind('.')));
    }
  }

  std::vector<QuantizedTensor> layers;
  layers.reserve(selected.size());
  std::vector<ReportRow> rows;
  std::vector<std::uint8_t> aligned;
  Progress progress;
  const auto t_all = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < selected.size(); ++i) {
    const io::TensorInfo& t = *selected[i];
    progress.update(fmt::format("[{}/{}] {} {} ...", i + 1, selected.size(), t.name,
                                shape_string(t.shape)));
    try {
      // Mapped tensor data may be unaligned for its element type: copy when so.
      TensorView view = file.view(t);
      if (reinterpret_cast<std::uintptr_t>(view.data) % dtype_size(t.dtype) != 0) {
        aligned.resize(t.nbytes());
        std::memcpy(aligned.data(), view.data, t.nbytes());
        view.data = aligned.data();
      }
      const auto t0 = std::chrono::steady_clock::now();
      QuantizedTensor q = quantize(view, cfg, device);
      const auto t1 = std::chrono::steady_clock::now();
      ReportRow row;
      row.name = t.name;
      row.shape = t.shape;
      row.dtype = t.dtype;
      row.seconds = std::chrono::duration<double>(t1 - t0).count();
      row.hqq = measure_error(view, q);
      row.rtn = measure_error(view, quantize(view, rtn_cfg, device));
      row.bits_per_weight = q.bits_per_weight();
      row.numel = t.numel();
      row.bytes_before = t.nbytes();
      row.bytes_after = q.packed.size() + 2 * q.scale.size() * dtype_size(q.scale_dtype);
      rows.push_back(std::move(row));
      layers.push_back(std::move(q));
    } catch (const Error& e) {
      progress.done();
      detail::throw_error("tensor '{}': {}", t.name, e.what());
    }
  }
  progress.done();
  const double wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_all).count();

  // Same tensor order as the input; each quantized layer takes its weight's place.
  io::SafetensorsWriter writer;
  std::size_t next = 0;
  for (const io::TensorInfo& t : file.tensors()) {
    if (next < selected.size() && selected[next] == &t) {
      io::add_quantized_layer(writer, prefix_of(t.name), layers[next]);
      ++next;
    } else {
      writer.add_view(t.name, t.dtype, t.shape, file.data(t), t.nbytes());
    }
  }
  for (const auto& [key, value] : file.metadata()) writer.set_metadata(key, value);
  writer.set_metadata("format", "pt");
  writer.set_metadata("quantized_by", std::string("hqq-cpp ") + kVersionString);
  writer.set_metadata("hqq_config", config_json(cfg, opt).dump());

  double total_seconds = 0, bytes_before = 0, bytes_after = 0;
  std::int64_t total_weights = 0;
  for (const auto& r : rows) {
    total_seconds += r.seconds;
    total_weights += r.numel;
    bytes_before += static_cast<double>(r.bytes_before);
    bytes_after += static_cast<double>(r.bytes_after);
  }
  const double weights_per_second =
      total_seconds > 0 ? static_cast<double>(total_weights) / total_seconds : 0.0;

  std::string report_text;
  if (!opt.report.empty()) {
    nlohmann::json j;
    j["input"] = opt.input;
    j["output"] = opt.output;
    j["quantized_by"] = std::string("hqq-cpp ") + kVersionString;
    j["config"] = config_json(cfg, opt);
    j["threads"] = num_threads();
    j["device"] = device;
    if (device == "cuda") j["device_name"] = cuda::device_description();
    nlohmann::json tensors = nlohmann::json::array();
    for (const auto& r : rows) {
      tensors.push_back({{"name", r.name},
                         {"shape", r.shape},
                         {"dtype", std::string(dtype_name(r.dtype))},
                         {"nbits", cfg.nbits},
                         {"group_size", cfg.group_size},
                         {"axis", cfg.axis},
                         {"solver", std::string(solver_name(cfg.solver))},
                         {"rel_frobenius", r.hqq.rel_frobenius},
                         {"mean_abs", r.hqq.mean_abs},
                         {"rtn_rel_frobenius", r.rtn.rel_frobenius},
                         {"rtn_mean_abs", r.rtn.mean_abs},
                         {"bits_per_weight", r.bits_per_weight},
                         {"seconds", r.seconds}});
    }
    j["tensors"] = std::move(tensors);
    j["totals"] = {{"tensors", rows.size()},
                   {"weights", total_weights},
                   {"seconds", total_seconds},
                   {"wall_seconds", wall_seconds},
                   {"weights_per_second", weights_per_second},
                   {"bytes_before", bytes_before},
                   {"bytes_after", bytes_after}};
    report_text = j.dump(2) + "\n";
  }

  writer.write(opt.output);
  if (!opt.report.empty()) {
    try {
      write_text_atomic(opt.report, report_text);
    } catch (...) {
      // All or nothing: a run whose report failed leaves no output either.
      std::error_code ec;
      std::filesystem::remove(opt.output, ec);
      throw;
    }
  }

  print_table(rows, cfg);
  std::printf("total: %lld weights in %zu tensors on %s, %.3f s solver (%.3f s wall), %.3g weights/s, "
              "%s -> %s\n",
              static_cast<long long>(total_weights), rows.size(),
              device == "cuda" ? cuda::device_description().c_str() : "cpu", total_seconds, wall_seconds,
              weights_per_second, megabytes(bytes_before).c_str(),
              megabytes(bytes_after).c_str());
  std::error_code ec;
  const auto in_size = std::filesystem::file_size(opt.input, ec);
  const auto out_size = std::filesystem::file_size(opt.output, ec);
  std::printf("wrote %s: %zu tensors, file %s -> %s%s%s\n", opt.output.c_str(), writer.size(),
              megabytes(static_cast<double>(in_size)).c_str(),
              megabytes(static_cast<double>(out_size)).c_str(),
              opt.report.empty() ? "" : ", report ", opt.report.c_str());
  return 0;
}

}  // namespace hqq::cli
