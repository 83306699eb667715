#pragma once
// Shared test utilities: fresh seeds, the message of an expected hqq::Error,
// reading tensors from safetensors as typed vectors, heavy-tailed random
// weights, f16 ulp.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hqq/build_config.hpp"
#include "hqq/cuda.hpp"
#include "hqq/dtype.hpp"
#include "hqq/error.hpp"
#include "hqq/io/safetensors.hpp"

namespace hqq::test {

/// A fresh seed per test run; the environment variable HQQ_TEST_SEED replays one.
inline std::uint32_t fresh_seed() {
  if (const char* s = std::getenv("HQQ_TEST_SEED")) return static_cast<std::uint32_t>(std::strtoul(s, nullptr, 10));
  return std::random_device{}();
}

/// "seed N (replay: HQQ_TEST_SEED=N)", for SCOPED_TRACE and failure messages.
inline std::string seed_note(std::uint32_t seed) {
  return "seed " + std::to_string(seed) + " (replay: HQQ_TEST_SEED=" + std::to_string(seed) + ")";
}

/// The hqq::Error message thrown by `f`, or a marker when it throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no hqq::Error thrown>";
}

/// Copies a tensor's bytes out of a (possibly unaligned) file mapping.
inline std::vector<std::uint8_t> bytes_of(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorInfo& t = f.at(name);
  const std::uint8_t* p = f.data(t);
  return std::vector<std::uint8_t>(p, p + t.nbytes());
}

/// A float tensor (F32/F16/BF16) as f32 values.
inline std::vector<float> floats_of(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorInfo& t = f.at(name);
  const auto bytes = bytes_of(f, name);
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (t.dtype == DType::kF32) {
      std::memcpy(&out[i], bytes.data() + 4 * i, 4);
    } else {
      std::uint16_t b;
      std::memcpy(&b, bytes.data() + 2 * i, 2);
      out[i] = t.dtype == DType::kF16 ? half_bits_to_float(b) : bf16_bits_to_float(b);
    }
  }
  return out;
}

/// Student-t(3) weights scaled to ~0.02 with a few outliers; never zeros.
inline std::vector<float> heavy_tailed(std::size_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::student_t_distribution<float> t(3.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> w(n);
  for (auto& x : w) {
    x = 0.02f * t(gen);
    if (u(gen) < 0.002f) x *= 20.0f;
  }
  return w;
}

/// Distance between two consecutive f16 values around |x|.
inline float f16_ulp(float x) {
  const float ax = std::fabs(x);
  if (ax < 6.103515625e-05f) return 5.9604644775390625e-08f;  // subnormal spacing
  int e;
  std::frexp(ax, &e);  // ax = m * 2^e, m in [0.5, 1)
  return std::ldexp(1.0f, e - 11);
}

/// Why the GPU tests cannot run here; empty when they can.
inline std::string no_gpu_reason() {
  if (!kCudaEnabled) return "built without CUDA (hqq::kCudaEnabled is false)";
  const Support s = cuda::available();
  if (!s.ok) return "CUDA build, but " + s.reason;
  return {};
}

/// Base of every GPU test: skips, saying why, without a usable device.
template <class Base>
class GpuFixture : public Base {
 protected:
  void SetUp() override {
    const std::string why = no_gpu_reason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

}  // namespace hqq::test
