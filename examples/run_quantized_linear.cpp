// Loads one layer of a quantized checkpoint (written by `hqq quantize`) as a
// hqq::QuantizedLinear and runs y = x W^T + b on the CPU or a CUDA GPU, then
// checks y against a float64 product with the dequantized weight.
//
//   run_quantized_linear <checkpoint.safetensors> [layer-prefix] [--device cpu|cuda|auto] [--m M]
//
// Without a layer prefix it lists the quantized layers and runs the first.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include <hqq/hqq.hpp>

namespace {

struct Args {
  std::string path, layer, device = "auto";
  std::int64_t m = 1;
};

Args parse_args(int argc, char** argv) {
  Args a;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    HQQ_EXPECTS((arg != "--device" && arg != "--m") || i + 1 < argc, "{} needs a value", arg);
    if (arg == "--device") {
      a.device = argv[++i];
    } else if (arg == "--m") {
      const char* v = argv[++i];
      char* end = nullptr;
      a.m = std::strtoll(v, &end, 10);
      HQQ_EXPECTS(*v != '\0' && *end == '\0' && a.m >= 1 && a.m <= 1 << 20, "--m must be 1..1048576, got '{}'", v);
    } else {
      HQQ_EXPECTS(arg.rfind("--", 0) != 0, "unknown option {}", arg);
      positional.push_back(arg);
    }
  }
  HQQ_EXPECTS(!positional.empty() && positional.size() <= 2,
              "expected a checkpoint and at most one layer prefix, got {} arguments", positional.size());
  HQQ_EXPECTS(a.device == "cpu" || a.device == "cuda" || a.device == "auto",
              "--device must be cpu, cuda or auto, got '{}'", a.device);
  a.path = positional[0];
  if (positional.size() == 2) a.layer = positional[1];
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: run_quantized_linear <checkpoint.safetensors> [layer-prefix]"
                         " [--device cpu|cuda|auto] [--m M]\n");
    return 2;
  }
  try {
    const Args args = parse_args(argc, argv);
    const hqq::Support gpu = hqq::cuda::available();
    HQQ_EXPECTS(args.device != "cuda" || gpu.ok, "--device cuda: {}", gpu.reason);
    const auto file = hqq::io::SafetensorsFile::open(args.path);

    // Pick the layer: the one asked for, or the first quantized one.
    const std::vector<std::string> layers = hqq::io::quantized_layer_prefixes(file);
    HQQ_EXPECTS(!layers.empty(), "{} has no quantized layers (no '<prefix>.W_q' tensor)", args.path);
    std::string prefix = args.layer;
    if (prefix.empty()) {
      std::printf("quantized layers in %s (%zu):\n", args.path.c_str(), layers.size());
      for (const auto& l : layers) std::printf("  %s\n", l.c_str());
      prefix = layers.front();
    }
    HQQ_EXPECTS(std::find(layers.begin(), layers.end(), prefix) != layers.end(),
                "{} has no quantized layer '{}' (run without a layer to list its {} layers)", args.path, prefix,
                layers.size());

    // Build the layer on the requested backend ("auto": the GPU when there is one).
    hqq::LinearOptions options;
    options.backend = args.device;
    const auto layer = hqq::QuantizedLinear::from_checkpoint(file, prefix, options);
    if (args.device == "auto" && !gpu.ok) std::printf("--device auto: running on the CPU (%s)\n", gpu.reason.c_str());
    const std::int64_t M = args.m, N = layer.out_features(), K = layer.in_features();
    std::printf("layer %s: [%lld, %lld]%s, %d-bit, group %lld, %s path, backend %s, %.2f MiB of weights\n",
                prefix.c_str(), static_cast<long long>(N), static_cast<long long>(K), layer.has_bias() ? " + bias" : "",
                layer.nbits(), static_cast<long long>(layer.group_size()),
                layer.path() == hqq::detail::LinearPath::kPacked ? "packed" : "dense", layer.backend().c_str(),
                static_cast<double>(layer.weight_bytes()) / (1 << 20));

    // Deterministic random f16 activations x[M, K]; y[M, N] in f32.
    std::mt19937 rng(1234);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<hqq::half> x(static_cast<std::size_t>(M * K));
    for (auto& v : x) v = hqq::half(normal(rng));
    std::vector<float> y(static_cast<std::size_t>(M * N));

    // On the CPU x and y are host memory; on CUDA they must be device memory.
    const bool on_gpu = layer.backend() == "cuda";
    hqq::cuda::DeviceBuffer d_x, d_y;
    hqq::TensorView xv{x.data(), {M, K}, hqq::DType::kF16};
    hqq::MutableTensorView yv{y.data(), {M, N}, hqq::DType::kF32};
    if (on_gpu) {
      d_x = hqq::cuda::DeviceBuffer::from(x);
      d_y = hqq::cuda::DeviceBuffer(y.size() * sizeof(float));
      xv.data = d_x.data();
      yv.data = d_y.data();
    }
    // forward() does not wait for the GPU; a download (synchronous) does.
    auto run = [&] {
      layer.forward(xv, yv);
      if (on_gpu) d_y.download(y.data(), sizeof(float));
    };

    run();  // warm-up
    const int reps = 20;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) run();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
    if (on_gpu) d_y.download(y.data(), y.size() * sizeof(float));

    // Reference: float64 x * dequantize(W)^T + b.
    const std::vector<float> w = hqq::dequantize(hqq::io::read_quantized_layer(file, prefix));
    std::vector<float> bias(static_cast<std::size_t>(N), 0.0f);
    if (const hqq::io::TensorInfo* b = file.find(prefix + ".bias")) {
      bias = hqq::decode_floats(file.data(*b), b->nbytes(), b->dtype);
    }
    double max_err = 0, max_ref = 0;
    for (std::int64_t r = 0; r < M; ++r) {
      for (std::int64_t n = 0; n < N; ++n) {
        double ref = bias[n];
        for (std::int64_t k = 0; k < K; ++k) {
          ref += static_cast<double>(w[n * K + k]) * static_cast<float>(x[r * K + k]);
        }
        max_err = std::max(max_err, std::abs(ref - y[r * N + n]));
        max_ref = std::max(max_ref, std::abs(ref));
      }
    }
    const double rel = max_err / std::max(max_ref, 1e-30);
    std::printf("forward M=%lld: %.3f ms per call (mean of %d), max |y - y_ref| / max |y_ref| = %.2e\n",
                static_cast<long long>(M), ms, reps, rel);
    HQQ_EXPECTS(rel < 1e-4, "forward differs from the float64 reference by {:.2e} (relative)", rel);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
