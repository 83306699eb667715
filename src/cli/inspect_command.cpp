/// \file inspect_command.cpp
/// `hqq inspect`: lists a safetensors file's tensors, metadata and quantized layers.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "commands.hpp"
#include "hqq/io/checkpoint.hpp"
#include "hqq/io/safetensors.hpp"

namespace hqq::cli {

int run_inspect(const InspectOptions& opt) {
  check_input_file(opt.input);
  const io::SafetensorsFile file = io::SafetensorsFile::open(opt.input);
  const auto& tensors = file.tensors();

  // Decode every quantized layer first: a broken one fails before any output.
  struct Layer {
    std::string prefix;
    QuantizedTensor q;
  };
  std::vector<Layer> layers;
  for (const std::string& p : io::quantized_layer_prefixes(file)) {
    layers.push_back({p, io::read_quantized_layer(file, p)});
  }

  std::uint64_t total_bytes = 0;
  std::size_t name_w = 4, shape_w = 5;
  for (const auto& t : tensors) {
    total_bytes += t.nbytes();
    name_w = std::max(name_w, t.name.size());
    shape_w = std::max(shape_w, shape_string(t.shape).size());
  }

  std::printf("file: %s\n", opt.input.c_str());
  std::printf("tensors: %zu, data %s\n", tensors.size(),
              megabytes(static_cast<double>(total_bytes)).c_str());
  std::printf("metadata:%s\n", file.metadata().empty() ? " (none)" : "");
  for (const auto& [key, value] : file.metadata()) {
    std::printf("  %s: %s\n", key.c_str(), value.c_str());
  }
  std::printf("%s\n", fmt::format("{:<{}}  {:<7}  {:<{}}  {:>12}", "name", name_w, "dtype",
                                  "shape", shape_w, "bytes")
                          .c_str());
  for (const auto& t : tensors) {
    std::printf("%s\n", fmt::format("{:<{}}  {:<7}  {:<{}}  {:>12}", t.name, name_w,
                                    dtype_name(t.dtype), shape_string(t.shape), shape_w,
                                    t.nbytes())
                            .c_str());
  }
  std::printf("quantized layers: %zu\n", layers.size());
  for (const auto& l : layers) {
    std::printf("  %s: shape %s nbits=%d group_size=%lld axis=%d scale=%s round_zero=%d "
                "optimize=%d bits/weight=%.3f\n",
                l.prefix.empty() ? "(no prefix)" : l.prefix.c_str(),
                shape_string(l.q.shape).c_str(), l.q.nbits,
                static_cast<long long>(l.q.group_size), l.q.axis,
                std::string(dtype_name(l.q.scale_dtype)).c_str(), l.q.round_zero ? 1 : 0,
                l.q.solver != Solver::kNone ? 1 : 0, l.q.bits_per_weight());
  }
  return 0;
}

}  // namespace hqq::cli
