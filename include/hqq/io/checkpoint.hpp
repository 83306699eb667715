#pragma once
/// \file io/checkpoint.hpp
/// The quantized-checkpoint key layout of transformers' HQQ integration and
/// hqq's save_to_safetensors: a dense `P.weight` becomes `P.W_q`, `P.scale`,
/// `P.zero`, `P.shape`, `P.nbits`, `P.group_size`, `P.axis`, `P.packing`, ...
/// with the reference's dtypes, so files cross between Python HQQ and us.

#include <string>
#include <vector>

#include "hqq/io/safetensors.hpp"
#include "hqq/quantized.hpp"

namespace hqq::io {

/// The keys (after "P.") a quantized layer is stored as; a bias stays `P.bias`.
const std::vector<std::string>& quantized_layer_keys();

/// Adds the keys of one quantized layer under `prefix` (e.g.
/// "model.layers.0.mlp.up_proj"; no trailing dot). The writer keeps a view
/// of q's buffers: q must outlive writer.write().
void add_quantized_layer(SafetensorsWriter& writer, const std::string& prefix,
                         const QuantizedTensor& q);

/// Prefixes P of all quantized layers in a file (those with a `P.W_q` key).
std::vector<std::string> quantized_layer_prefixes(const SafetensorsFile& file);

/// True when `name` is one of the keys a quantized layer is stored as.
bool is_quantized_layer_key(const SafetensorsFile& file, const std::string& name);

/// Reads and validates one quantized layer; throws hqq::Error naming the key
/// that is missing or wrong.
QuantizedTensor read_quantized_layer(const SafetensorsFile& file, const std::string& prefix);

}  // namespace hqq::io
