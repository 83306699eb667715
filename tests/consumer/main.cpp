// A downstream project: quantizes a small matrix through the installed package.
#include <cmath>
#include <cstdio>
#include <vector>

#include <hqq/hqq.hpp>

int main() {
  std::vector<float> w(64 * 128);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.37f * static_cast<float>(i));
  const hqq::QuantizedTensor q = hqq::quantize(w.data(), {64, 128}, hqq::QuantConfig{});
  const std::vector<float> back = hqq::dequantize(q);
  double err = 0;
  for (std::size_t i = 0; i < w.size(); ++i) err += std::fabs(back[i] - w[i]);
  err /= static_cast<double>(w.size());
  // The CUDA entry points link from the installed package with or without CUDA.
  const hqq::Support gpu = hqq::cuda::available();
  std::printf("consumer: mean abs error %.5f, CUDA built: %s, device: %s\n", err,
              hqq::kCudaEnabled ? "yes" : "no", gpu.ok ? hqq::cuda::device_description().c_str() : gpu.reason.c_str());
  return err < 0.1 ? 0 : 1;
}
