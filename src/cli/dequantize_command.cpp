/// \file dequantize_command.cpp
/// `hqq dequantize`: HQQ quantized checkpoint -> dense safetensors checkpoint.

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "commands.hpp"
#include "hqq/error.hpp"
#include "hqq/io/checkpoint.hpp"
#include "hqq/io/safetensors.hpp"
#include "hqq/quantize.hpp"
#include "hqq/version.hpp"

namespace hqq::cli {

int run_dequantize(const DequantizeOptions& opt) {
  const DType dtype = parse_float_dtype(opt.dtype, "--dtype");
  if (opt.threads) set_num_threads(*opt.threads);
  check_input_file(opt.input);
  check_distinct_paths(opt.input, opt.output);
  check_output_path(opt.output);

  const io::SafetensorsFile file = io::SafetensorsFile::open(opt.input);
  const std::vector<std::string> prefixes = io::quantized_layer_prefixes(file);

  // Dense weights by the name of their layer's W_q key, which fixes where each
  // one goes in the output's tensor order.
  struct Dense {
    std::string name;
    std::vector<std::int64_t> shape;
    std::vector<std::uint8_t> bytes;
  };
  std::map<std::string, Dense> dense;
  Progress progress;
  for (std::size_t i = 0; i < prefixes.size(); ++i) {
    const std::string& p = prefixes[i];
    const std::string weight = p.empty() ? "weight" : p + ".weight";
    HQQ_EXPECTS(file.find(weight) == nullptr,
                "'{}' holds both the quantized layer '{}' and a dense '{}'", opt.input, p, weight);
    progress.update(fmt::format("[{}/{}] {} ...", i + 1, prefixes.size(), weight));
    const QuantizedTensor q = io::read_quantized_layer(file, p);
    Dense d{weight, q.shape, {}};
    d.bytes.resize(static_cast<std::size_t>(q.numel()) * dtype_size(dtype));
    dequantize(q, MutableTensorView{d.bytes.data(), q.shape, dtype});
    dense.emplace(p.empty() ? "W_q" : p + ".W_q", std::move(d));
  }
  progress.done();

  io::SafetensorsWriter writer;
  for (const io::TensorInfo& t : file.tensors()) {
    if (auto it = dense.find(t.name); it != dense.end()) {
      Dense& d = it->second;
      writer.add_view(d.name, dtype, d.shape, d.bytes.data(), d.bytes.size());
    } else if (!io::is_quantized_layer_key(file, t.name)) {
      writer.add_view(t.name, t.dtype, t.shape, file.data(t), t.nbytes());
    }
  }
  for (const auto& [key, value] : file.metadata()) {
    // The quantization settings no longer describe the output.
    if (key != "hqq_config" && key != "quantized_by") writer.set_metadata(key, value);
  }
  writer.set_metadata("format", "pt");
  writer.set_metadata("dequantized_by", std::string("hqq-cpp ") + kVersionString);
  writer.write(opt.output);

  std::printf("wrote %s: %zu quantized layers dequantized to %s, %zu tensors\n",
              opt.output.c_str(), prefixes.size(), std::string(dtype_name(dtype)).c_str(),
              writer.size());
  return 0;
}

}  // namespace hqq::cli
