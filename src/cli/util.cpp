/// \file util.cpp
/// Helpers shared by the subcommands: path checks, atomic text files, progress.

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "commands.hpp"
#include "hqq/error.hpp"

namespace hqq::cli {
namespace fs = std::filesystem;

void check_input_file(const std::string& input) {
  std::error_code ec;
  const auto st = fs::status(input, ec);
  HQQ_EXPECTS(fs::exists(st), "input file '{}' does not exist", input);
  HQQ_EXPECTS(fs::is_regular_file(st), "input '{}' is not a regular file", input);
}

void check_distinct_paths(const std::string& input, const std::string& output, const char* what) {
  std::error_code ec, ec_a, ec_b;
  bool same = fs::exists(output, ec) && fs::equivalent(input, output, ec);
  if (!same) {
    // The output does not exist yet: compare the paths it would resolve to.
    const auto a = fs::weakly_canonical(input, ec_a);
    const auto b = fs::weakly_canonical(output, ec_b);
    same = !ec_a && !ec_b && a == b;
  }
  HQQ_EXPECTS(!same, "{} '{}' is the input file; write to another path", what, output);
}

void check_output_path(const std::string& output, const char* what) {
  const fs::path target(output);
  HQQ_EXPECTS(!target.filename().empty(), "{} '{}' names a folder, not a file", what, output);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  const auto st = fs::status(dir, ec);
  HQQ_EXPECTS(fs::exists(st), "{} folder '{}' does not exist", what, dir.string());
  HQQ_EXPECTS(fs::is_directory(st), "{} folder '{}' is not a folder", what, dir.string());
  HQQ_EXPECTS(::access(dir.c_str(), W_OK) == 0, "{} folder '{}' is not writable", what,
              dir.string());
  HQQ_EXPECTS(!fs::is_directory(target, ec), "{} '{}' is a folder", what, output);
}

DType parse_float_dtype(const std::string& s, const char* option) {
  if (s == "f32" || s == "F32" || s == "float32") return DType::kF32;
  if (s == "f16" || s == "F16" || s == "float16") return DType::kF16;
  if (s == "bf16" || s == "BF16" || s == "bfloat16") return DType::kBF16;
  detail::throw_error("{} '{}' is not supported (expected f32, f16 or bf16)", option, s);
}

void write_text_atomic(const std::string& path, const std::string& text) {
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::string tmpl = (dir / ("." + target.filename().string() + ".tmp.XXXXXX")).string();
  const int fd = ::mkstemp(tmpl.data());
  HQQ_EXPECTS(fd >= 0, "cannot create a file in '{}' for '{}': {}", dir.string(), path,
              std::strerror(errno));
  const char* p = text.data();
  std::size_t left = text.size();
  int err = 0;
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && ::rename(tmpl.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmpl.c_str());
    detail::throw_error("cannot write '{}': {}", path, std::strerror(err));
  }
}

std::string shape_string(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::string megabytes(double bytes) { return fmt::format("{:.2f} MB", bytes / 1e6); }

Progress::Progress() : enabled_(::isatty(STDERR_FILENO) == 1) {}

void Progress::update(const std::string& line) {
  if (!enabled_) return;
  // Pad over the previous line so a shorter one leaves no stale characters.
  const std::size_t pad = last_len_ > line.size() ? last_len_ - line.size() : 0;
  std::fprintf(stderr, "\r%s%*s", line.c_str(), static_cast<int>(pad), "");
  std::fflush(stderr);
  last_len_ = line.size();
}

void Progress::done() {
  if (!enabled_ || last_len_ == 0) return;
  std::fprintf(stderr, "\r%*s\r", static_cast<int>(last_len_), "");
  std::fflush(stderr);
  last_len_ = 0;
}

}  // namespace hqq::cli
