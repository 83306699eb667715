#pragma once
/// \file hqq.hpp
/// Umbrella header: everything a user of hqq-cpp needs.

#include "hqq/backend.hpp"
#include "hqq/build_config.hpp"
#include "hqq/config.hpp"
#include "hqq/cuda.hpp"
#include "hqq/dtype.hpp"
#include "hqq/eigen.hpp"
#include "hqq/error.hpp"
#include "hqq/grouping.hpp"
#include "hqq/io/checkpoint.hpp"
#include "hqq/io/safetensors.hpp"
#include "hqq/linear.hpp"
#include "hqq/packing.hpp"
#include "hqq/quantize.hpp"
#include "hqq/quantized.hpp"
#include "hqq/tensor.hpp"
#include "hqq/version.hpp"
