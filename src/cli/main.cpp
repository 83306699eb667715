/// \file main.cpp
/// The `hqq` command: quantize / dequantize / inspect safetensors checkpoints.
/// Every failure is one line "hqq: error: ..." on stderr and a non-zero exit.

#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "hqq/version.hpp"

namespace {

/// Prints one error line (embedded newlines folded so it stays one line).
void print_error(const std::string& message) {
  std::string line = message;
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::fprintf(stderr, "hqq: error: %s\n", line.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  using namespace hqq::cli;
  CLI::App app{"hqq-cpp: Half-Quadratic Quantization of safetensors checkpoints", "hqq"};
  app.set_version_flag("--version", std::string("hqq-cpp ") + hqq::kVersionString);
  app.require_subcommand(1);

  QuantizeOptions qopt;
  auto* quant = app.add_subcommand(
      "quantize",
      "Quantize every 2-D F32/F16/BF16 '*.weight' tensor selected by --include/--exclude; "
      "copy every other tensor unchanged");
  quant->add_option("input", qopt.input, "input .safetensors (dense)")->required();
  quant->add_option("output", qopt.output, "output .safetensors (quantized)")->required();
  quant->add_option("--nbits", qopt.nbits, "bits per weight: 8, 4, 3, 2 or 1")
      ->capture_default_str();
  quant->add_option("--group-size", qopt.group_size, "weights per group (must divide each tensor)")
      ->capture_default_str();
  quant->add_option("--axis", qopt.axis, "1: groups along rows (in-features); 0: along columns")
      ->capture_default_str();
  quant->add_option("--solver", qopt.solver,
                    "proximal (per-group best zero), legacy (the reference's), none (RTN)")
      ->capture_default_str();
  quant->add_option("--round-zero", qopt.round_zero,
                    "round the initial zero-point: auto (on for 4-bit), on or off")
      ->capture_default_str();
  quant->add_option("--scale-dtype", qopt.scale_dtype, "storage of scale and zero: f16, bf16, f32")
      ->capture_default_str();
  quant->add_option("--threads", qopt.threads, "CPU threads (default: all)");
  quant->add_option("--device", qopt.device, "where to quantize: cpu, cuda, or auto (cuda when a GPU is present)")
      ->capture_default_str();
  quant->add_option("--include", qopt.include,
                    "quantize only names matching this regex (std::regex_search)")
      ->capture_default_str();
  quant->add_option("--exclude", qopt.exclude,
                    "keep names matching this regex dense (default keeps embeddings, lm_head, "
                    "norms)")
      ->capture_default_str();
  quant->add_option("--report", qopt.report,
                    "also write the per-tensor error/speed report as JSON here");

  DequantizeOptions dopt;
  auto* dequant = app.add_subcommand(
      "dequantize", "Turn every quantized layer back into a dense 'P.weight'; copy the rest");
  dequant->add_option("input", dopt.input, "input .safetensors (quantized)")->required();
  dequant->add_option("output", dopt.output, "output .safetensors (dense)")->required();
  dequant->add_option("--dtype", dopt.dtype, "dtype of the dense weights: f32, f16 or bf16")
      ->capture_default_str();
  dequant->add_option("--threads", dopt.threads, "CPU threads (default: all)");

  InspectOptions iopt;
  auto* inspect = app.add_subcommand(
      "inspect", "List tensors, metadata and quantized layers of a .safetensors file");
  inspect->add_option("file", iopt.input, "a .safetensors file")->required();

  // CLI11 would only say "A subcommand is required" for a missing or misspelt command.
  if (argc == 1) {
    print_error("no command given (expected quantize, dequantize or inspect; see hqq --help)");
    return 1;
  }
  if (argv[1][0] != '-') {
    const std::string cmd = argv[1];
    if (cmd != "quantize" && cmd != "dequantize" && cmd != "inspect") {
      print_error("unknown command '" + cmd + "' (expected quantize, dequantize or inspect)");
      return 1;
    }
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    print_error(e.what());
    return e.get_exit_code();
  }

  try {
    if (quant->parsed()) return run_quantize(qopt);
    if (dequant->parsed()) return run_dequantize(dopt);
    if (inspect->parsed()) return run_inspect(iopt);
    print_error("no command given (expected quantize, dequantize or inspect)");
    return 1;
  } catch (const std::exception& e) {
    print_error(e.what());
    return 1;
  } catch (...) {
    print_error("unexpected failure");
    return 1;
  }
}
