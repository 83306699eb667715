// Quantizing weights that live on the GPU, as an inference engine would:
// upload an f16 weight, quantize it on the device into device buffers,
// dequantize it there, and compare with the CPU backend. Without a CUDA
// device (or a build without CUDA) it says why and exits 0.

#include <cstdio>
#include <exception>
#include <random>
#include <vector>

#include <hqq/hqq.hpp>

int main() {
  try {
    const hqq::Support gpu = hqq::cuda::available();
    if (!gpu) {
      std::printf("no GPU path here: %s\n", gpu.reason.c_str());
      return 0;
    }
    std::printf("device: %s\n", hqq::cuda::device_description().c_str());

    // An f16 [4096, 4096] weight, uploaded once (an engine already has it there).
    const std::int64_t rows = 4096, cols = 4096;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    std::vector<hqq::half> w(static_cast<std::size_t>(rows * cols));
    for (auto& x : w) x = hqq::half(normal(rng));
    const hqq::cuda::DeviceBuffer d_w = hqq::cuda::DeviceBuffer::from(w);
    const hqq::TensorView weight{d_w.data(), {rows, cols}, hqq::DType::kF16};

    // Quantize on the device: codes, scale and zero stay in device memory.
    hqq::QuantConfig config;  // 4-bit, groups of 64, proximal solver
    const hqq::cuda::DeviceQuantized q(weight, config);

    // Dequantize into another device buffer (an engine would now run its matmul).
    hqq::cuda::DeviceBuffer d_out(w.size() * sizeof(hqq::half));
    hqq::cuda::dequantize(q.view(), hqq::MutableTensorView{d_out.data(), {rows, cols}, hqq::DType::kF16});
    const std::vector<hqq::half> w_hat = d_out.to_vector<hqq::half>();

    // The same job on the CPU backend gives the same bits.
    const hqq::QuantizedTensor on_cpu = hqq::quantize(hqq::TensorView{w.data(), {rows, cols}, hqq::DType::kF16},
                                                      config, "cpu");
    const hqq::QuantizedTensor on_gpu = q.to_host();
    std::printf("packed codes identical to the CPU backend: %s\n", on_gpu.packed == on_cpu.packed ? "yes" : "no");
    const hqq::ErrorStats e =
        hqq::measure_error(hqq::TensorView{w.data(), {rows, cols}, hqq::DType::kF16}, on_gpu);
    std::printf("relative Frobenius error %.4f, mean |error| %.3g, %.2f bits per weight, first value %.5f -> %.5f\n",
                e.rel_frobenius, e.mean_abs, on_gpu.bits_per_weight(), static_cast<float>(w[0]),
                static_cast<float>(w_hat[0]));
    return 0;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "error: %s\n", ex.what());
    return 1;
  }
}
