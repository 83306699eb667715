// A profiler's target: one QuantizedLinear::forward configuration on the GPU,
// launched a few times, so that ncu, compute-sanitizer or nsys see exactly
// the kernel under study and nothing else of the benchmark around it.
//
//   probe_gemm_cuda --n N --k K --m M [--nbits 4] [--group 64]
//                   [--kernel auto|gemv|tc|mmasync|tma] [--dtype f16|bf16]
//                   [--iters 20]
//
// for example
//   ncu --set full -k regex:gemm_tma --launch-skip 3 --launch-count 1
//       build-gpu/bench/probe_gemm_cuda --n 28672 --k 8192 --m 16 --kernel tma
//
// The weight is random (round-to-nearest quantization of a uniform random
// matrix, f16 scale and zero), x is random in [-1, 1]. It prints the time
// per call of --iters calls back to back and the median of calls timed one
// at a time, host work included (CUDA events, one weight: L2-warm for small
// layers; bench_linear_cuda is the benchmark), and y's first value, so that
// the work cannot be skipped. A profiler sees 2 x --iters + 1 launches. Exit status: 0 done, 2 bad arguments, 77 no CUDA device.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include <hqq/hqq.hpp>

namespace {

#define PROBE_CUDA_CHECK(call)                                                                   \
  do {                                                                                           \
    const cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "probe_gemm_cuda: %s: %s\n", #call, cudaGetErrorString(e_));          \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

struct Args {
  std::int64_t n = 4096, k = 4096, m = 16, group = 64;
  int nbits = 4, iters = 20;
  std::string kernel = "auto", dtype = "f16";
};

std::int64_t parse_int(const std::string& flag, const char* v, std::int64_t lo, std::int64_t hi) {
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  HQQ_EXPECTS(*v != '\0' && *end == '\0' && x >= lo && x <= hi, "{} must be an integer in [{}, {}], got '{}'",
              flag, lo, hi, v);
  return x;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    HQQ_EXPECTS(i + 1 < argc, "{} needs a value (or is not an option)", flag);
    const char* v = argv[++i];
    if (flag == "--n") {
      a.n = parse_int(flag, v, 1, 1 << 20);
    } else if (flag == "--k") {
      a.k = parse_int(flag, v, 1, 1 << 20);
    } else if (flag == "--m") {
      a.m = parse_int(flag, v, 1, 1 << 20);
    } else if (flag == "--group") {
      a.group = parse_int(flag, v, 1, 1 << 20);
    } else if (flag == "--nbits") {
      a.nbits = static_cast<int>(parse_int(flag, v, 1, 8));
    } else if (flag == "--iters") {
      a.iters = static_cast<int>(parse_int(flag, v, 1, 100000));
    } else if (flag == "--kernel") {
      a.kernel = v;
    } else if (flag == "--dtype") {
      a.dtype = v;
    } else {
      HQQ_EXPECTS(false, "unknown option {}", flag);
    }
  }
  HQQ_EXPECTS(a.dtype == "f16" || a.dtype == "bf16", "--dtype must be f16 or bf16, got '{}'", a.dtype);
  return a;
}

hqq::LinearKernelChoice kernel_choice(const std::string& s) {
  if (s == "auto") return hqq::LinearKernelChoice::kAuto;
  if (s == "gemv") return hqq::LinearKernelChoice::kGemv;
  if (s == "tc") return hqq::LinearKernelChoice::kTensorCore;
  if (s == "mmasync") return hqq::LinearKernelChoice::kTensorCoreMmaSync;
  if (s == "tma") return hqq::LinearKernelChoice::kTensorCoreTma;
  HQQ_EXPECTS(false, "--kernel must be auto, gemv, tc, mmasync or tma, got '{}'", s);
  return hqq::LinearKernelChoice::kAuto;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse_args(argc, argv);
    const hqq::LinearKernelChoice choice = kernel_choice(a.kernel);
    const hqq::Support gpu = hqq::cuda::available();
    if (!gpu.ok) {
      std::fprintf(stderr, "probe_gemm_cuda: no CUDA device: %s\n", gpu.reason.c_str());
      return 77;
    }
    HQQ_EXPECTS(a.k % a.group == 0, "--k ({}) must be a multiple of --group ({})", a.k, a.group);

    std::mt19937 rng(1234);
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    std::vector<float> w(static_cast<std::size_t>(a.n * a.k));
    for (float& v : w) v = uni(rng) * 0.02f;
    hqq::QuantConfig cfg;
    cfg.nbits = a.nbits;
    cfg.group_size = a.group;
    cfg.axis = 1;
    cfg.solver = hqq::Solver::kNone;
    cfg.scale_dtype = hqq::DType::kF16;
    const hqq::QuantizedTensor q = hqq::quantize(w.data(), {a.n, a.k}, cfg);
    w = {};
    hqq::LinearOptions opt;
    opt.backend = "cuda";
    const hqq::QuantizedLinear layer(q, {}, opt);
    HQQ_EXPECTS(layer.supports(choice), "this layer on this device does not run --kernel {}", a.kernel);

    const hqq::DType dt = a.dtype == "f16" ? hqq::DType::kF16 : hqq::DType::kBF16;
    std::vector<std::uint16_t> xh(static_cast<std::size_t>(a.m * a.k));
    for (auto& v : xh) {
      const float f = uni(rng);
      v = dt == hqq::DType::kF16 ? hqq::half(f).bits : hqq::bfloat16(f).bits;
    }
    void *x = nullptr, *y = nullptr;
    PROBE_CUDA_CHECK(cudaMalloc(&x, xh.size() * 2));
    PROBE_CUDA_CHECK(cudaMalloc(&y, static_cast<std::size_t>(a.m * a.n) * 2));
    PROBE_CUDA_CHECK(cudaMemcpy(x, xh.data(), xh.size() * 2, cudaMemcpyHostToDevice));
    cudaStream_t stream = nullptr;
    PROBE_CUDA_CHECK(cudaStreamCreate(&stream));
    hqq::ForwardOptions fo;
    fo.stream = stream;
    fo.kernel = choice;
    const hqq::TensorView xv{x, {a.m, a.k}, dt};
    const hqq::MutableTensorView yv{y, {a.m, a.n}, dt};

    cudaEvent_t t0, t1;
    PROBE_CUDA_CHECK(cudaEventCreate(&t0));
    PROBE_CUDA_CHECK(cudaEventCreate(&t1));
    // One call at a time: events around each call, so its host work (checks,
    // the tensor map, the launches) counts too; then `iters` calls back to
    // back between two events, where the host work of a call overlaps the
    // kernels of the one before (close to the kernels' own time when they
    // take longer than the host work).
    layer.forward(xv, yv, fo);
    PROBE_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<float> ms;
    for (int i = 0; i < a.iters; ++i) {
      PROBE_CUDA_CHECK(cudaEventRecord(t0, stream));
      layer.forward(xv, yv, fo);
      PROBE_CUDA_CHECK(cudaEventRecord(t1, stream));
      PROBE_CUDA_CHECK(cudaEventSynchronize(t1));
      float e = 0.0f;
      PROBE_CUDA_CHECK(cudaEventElapsedTime(&e, t0, t1));
      ms.push_back(e);
    }
    PROBE_CUDA_CHECK(cudaEventRecord(t0, stream));
    for (int i = 0; i < a.iters; ++i) layer.forward(xv, yv, fo);
    PROBE_CUDA_CHECK(cudaEventRecord(t1, stream));
    PROBE_CUDA_CHECK(cudaEventSynchronize(t1));
    float back_to_back = 0.0f;
    PROBE_CUDA_CHECK(cudaEventElapsedTime(&back_to_back, t0, t1));
    std::uint16_t y0 = 0;
    PROBE_CUDA_CHECK(cudaMemcpy(&y0, y, 2, cudaMemcpyDeviceToHost));
    std::sort(ms.begin(), ms.end());
    const float f = dt == hqq::DType::kF16 ? static_cast<float>(hqq::half::from_bits(y0))
                                           : static_cast<float>(hqq::bfloat16::from_bits(y0));
    std::printf(
        "probe_gemm_cuda: N=%lld K=%lld M=%lld %d-bit g%lld %s --kernel %s: %.2f us per call back to back, "
        "median %.2f us one call at a time (with its host work), over %d; y[0] = %g\n",
        static_cast<long long>(a.n), static_cast<long long>(a.k), static_cast<long long>(a.m), a.nbits,
        static_cast<long long>(a.group), a.dtype.c_str(), a.kernel.c_str(), 1e3 * back_to_back / a.iters,
        1e3 * ms[ms.size() / 2], a.iters, f);
    PROBE_CUDA_CHECK(cudaFree(x));
    PROBE_CUDA_CHECK(cudaFree(y));
    PROBE_CUDA_CHECK(cudaStreamDestroy(stream));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "probe_gemm_cuda: %s\n", e.what());
    return 2;
  }
}
