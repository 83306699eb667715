#pragma once
/// \file commands.hpp
/// The subcommands of the `hqq` executable and the helpers they share.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "hqq/dtype.hpp"

namespace hqq::cli {

/// Default --exclude: embeddings, the output head and norms stay dense, as in
/// the reference's usual skip list.
inline constexpr const char* kDefaultExclude = "(embed|lm_head|norm|wte|wpe)";

/// Options of `hqq quantize`.
struct QuantizeOptions {
  std::string input;
  std::string output;
  int nbits = 4;
  std::int64_t group_size = 64;
  int axis = 1;
  std::string solver = "proximal";
  std::string round_zero = "auto";
  std::string scale_dtype = "f16";
  std::optional<int> threads;
  std::string device = "auto";
  std::string include = ".*";
  std::string exclude = kDefaultExclude;
  std::string report;
};

/// Options of `hqq dequantize`.
struct DequantizeOptions {
  std::string input;
  std::string output;
  std::string dtype = "f32";
  std::optional<int> threads;
};

/// Options of `hqq inspect`.
struct InspectOptions {
  std::string input;
};

/// Runs a subcommand; throws on failure (main turns it into one error line).
int run_quantize(const QuantizeOptions& opt);
int run_dequantize(const DequantizeOptions& opt);
int run_inspect(const InspectOptions& opt);

// ------------------------------------------------------------------ helpers

/// Throws unless `input` exists and is a regular file.
void check_input_file(const std::string& input);
/// Throws when `output` (or `other`) names the same file as `input`: the input
/// is memory-mapped while the output is written.
void check_distinct_paths(const std::string& input, const std::string& output,
                          const char* what = "output");
/// Throws unless the folder of `output` exists and is writable, so a long run
/// does not fail only at the end.
void check_output_path(const std::string& output, const char* what = "output");
/// Parses f32 / f16 / bf16 for the option named `option`.
DType parse_float_dtype(const std::string& s, const char* option);
/// Writes `text` to `path` atomically (temporary in the same folder, fsync,
/// rename); on failure nothing is left behind.
void write_text_atomic(const std::string& path, const std::string& text);
/// "[4096, 11008]"
std::string shape_string(const std::vector<std::int64_t>& shape);
/// Bytes as "12.34 MB" (10^6 bytes).
std::string megabytes(double bytes);

/// One-line progress on stderr, only when stderr is a terminal.
class Progress {
 public:
  Progress();
  /// Replaces the progress line.
  void update(const std::string& line);
  /// Clears the progress line.
  void done();
  ~Progress() { done(); }

 private:
  bool enabled_ = false;
  std::size_t last_len_ = 0;
};

}  // namespace hqq::cli
