/// \file bench_cuda.cpp
/// GPU benchmarks of the CUDA backend (hqq/cuda.hpp), one run, one JSON file.
///
///   bench_cuda [--quick] [--json PATH] [--commit SHA] [--weights FILE.safetensors]
///              [--only copy,quantize,llama,dequantize,pack] [--seed N]
///
/// Measures, on the current device:
///   * copy        a device-to-device cudaMemcpyAsync of 1 GiB: the bandwidth
///                 ceiling, (bytes read + bytes written) / time;
///   * quantize    hqq::cuda::quantize of f16 weights 4096x4096 and 4096x11008,
///                 group 64, axis 1, nbits 8/4/3/2/1, solvers proximal, legacy
///                 and none (round-to-nearest), device pointers in and out, a
///                 preallocated workspace, check_finite off; plus the error of
///                 each result (rel. Frobenius, mean/max abs) measured on the
///                 host with hqq::measure_error on DeviceQuantized::to_host();
///   * llama       all linear layers of Llama-2-7B, 32 x [4 x 4096x4096 +
///                 3 x 4096x11008]: estimated from the per-shape medians, and
///                 run for real at 4-bit (224 distinct weight buffers) when the
///                 device has the memory;
///   * dequantize  4096x11008, every nbits, to f16 and f32, in GB/s (bytes read
///                 + written) and as a fraction of the copy; bit-compared with
///                 the CPU backend;
///   * pack        hqq::cuda::pack / unpack of 4096x11008 codes, GB/s and
///                 fraction of the copy; compared with hqq::pack and round-tripped.
///
/// Timing: CUDA events on one non-blocking stream; every operation is warmed
/// up first, then timed in samples of k back-to-back calls (k chosen so that a
/// sample lasts >= 1 ms), and the median and minimum per call are reported.
/// Consecutive calls rotate among copies of their inputs and outputs whose
/// total is more than twice the device's L2, so no call finds its data in L2.
/// Weights are heavy-tailed (Student-t, 4 dof, std 0.02, outlier columns 1
/// and c % 512 == 511 scaled 10x; the rule of bench_quantize.cpp), generated
/// from --seed or read from --weights (tensors "W_4096x4096" and
/// "W_4096x11008", F16 or F32), which compare_reference_gpu.py uses so that
/// the reference package is measured on the very same matrices.

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "hqq/hqq.hpp"

/// Throws std::runtime_error naming the call, file and line unless `call` returned cudaSuccess.
#define BENCH_CUDA_CHECK(call) ::check_cuda((call), #call, __FILE__, __LINE__)
/// Checks the last launch (asynchronous errors surface at the next synchronisation).
#define BENCH_CHECK_LAUNCH() ::check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

namespace {

void check_cuda(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) {
    throw std::runtime_error(
        fmt::format("{}:{}: {} failed: {} ({})", file, line, what, cudaGetErrorName(e), cudaGetErrorString(e)));
  }
}

using Json = nlohmann::ordered_json;
using Shape = std::vector<std::int64_t>;

constexpr std::int64_t kGroup = 64;
constexpr int kAxis = 1;
constexpr int kAllBits[] = {8, 4, 3, 2, 1};
constexpr hqq::Solver kAllSolvers[] = {hqq::Solver::kProximal, hqq::Solver::kLegacy, hqq::Solver::kNone};
// The two test shapes; --small shrinks them (set once, before any part runs).
Shape g_square = {4096, 4096};
Shape g_wide = {4096, 11008};
// Llama-2-7B: per decoder layer q, k, v, o [4096, 4096]; gate, up [11008, 4096]; down [4096, 11008].
constexpr int kLlamaLayers = 32;
constexpr int kLlamaSquarePerLayer = 4;
constexpr int kLlamaWidePerLayer = 3;

// ---------------------------------------------------------------- options

struct Args {
  bool quick = false;
  bool small = false;  // tiny shapes: a check of this program on a host stand-in, not a benchmark
  std::string json_path;
  std::string commit;
  std::string weights_path;
  std::uint64_t seed = 0;
  std::set<std::string> only;  // empty: everything
  bool want(const std::string& part) const { return only.empty() || only.count(part) > 0; }
};

constexpr const char* kUsage =
    "usage: bench_cuda [--quick] [--json PATH] [--commit SHA] [--weights FILE.safetensors]\n"
    "                  [--only copy,quantize,llama,dequantize,pack] [--seed N]\n"
    "  --quick     fewer repetitions (about a third of the time)\n"
    "  --json      write every measurement as JSON to PATH\n"
    "  --commit    commit id recorded in the JSON\n"
    "  --weights   read W_4096x4096 and W_4096x11008 (F16 or F32) instead of generating them\n"
    "  --only      comma-separated parts to run (copy always runs: it is the ceiling)\n"
    "  --seed      seed of the generated weights (default 0)\n"
    "  --small     256x256 and 256x688 instead (checks the program itself; not a benchmark)\n";

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "bench_cuda: %s\n%s", msg.c_str(), kUsage);
  std::exit(2);
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i], value;
    if (flag == "-h" || flag == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (flag == "--quick") {
      a.quick = true;
      continue;
    }
    if (flag == "--small") {
      a.small = true;
      continue;
    }
    if (const auto eq = flag.find('='); eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag.resize(eq);
    } else {
      if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", flag));
      value = argv[++i];
    }
    if (flag == "--json") {
      a.json_path = value;
    } else if (flag == "--commit") {
      a.commit = value;
    } else if (flag == "--weights") {
      a.weights_path = value;
    } else if (flag == "--seed") {
      try {
        a.seed = std::stoull(value);
      } catch (const std::exception&) {
        usage_error(fmt::format("--seed expects an integer, got '{}'", value));
      }
    } else if (flag == "--only") {
      std::size_t start = 0;
      while (start <= value.size()) {
        const std::size_t end = std::min(value.find(',', start), value.size());
        const std::string part = value.substr(start, end - start);
        if (part != "copy" && part != "quantize" && part != "llama" && part != "dequantize" && part != "pack") {
          usage_error(fmt::format("--only: unknown part '{}'", part));
        }
        a.only.insert(part);
        start = end + 1;
      }
    } else {
      usage_error(fmt::format("unknown option '{}'", flag));
    }
  }
  return a;
}

// ---------------------------------------------------------------- device memory and timing

/// Owning cudaMalloc'd bytes (the bench's own: hqq::cuda::DeviceBuffer would do as
/// well, but its fill/upload are synchronous and we need async copies on our stream).
class Mem {
 public:
  Mem() = default;
  explicit Mem(std::size_t bytes) : bytes_(bytes) {
    if (bytes > 0) BENCH_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
  }
  ~Mem() {
    if (ptr_ != nullptr) cudaFree(ptr_);  // no throw in a destructor
  }
  Mem(Mem&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  Mem& operator=(Mem&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  Mem(const Mem&) = delete;
  Mem& operator=(const Mem&) = delete;
  void* get() const { return ptr_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  std::size_t size() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

struct Device {
  int id = 0;
  cudaDeviceProp prop{};
  std::size_t l2_bytes = 0;
  cudaStream_t stream = nullptr;
};

/// How many copies of a working set of `bytes` to rotate among so that their
/// total exceeds twice the L2 (at least 2).
int rotation_sets(const Device& dev, std::size_t bytes) {
  const std::size_t target = 2 * std::max<std::size_t>(dev.l2_bytes, 1);
  const std::size_t n = target / std::max<std::size_t>(bytes, 1) + 1;
  return static_cast<int>(std::clamp<std::size_t>(n, 2, 64));
}

struct Policy {
  int reps = 30;              // timed samples (upper bound)
  int min_reps = 5;           // timed samples (lower bound, whatever the budget)
  double sample_ms = 1.0;     // a sample lasts at least this long (k calls)
  double warmup_ms = 20.0;    // warm-up lasts at least this long
  double budget_ms = 1500.0;  // timed work per measurement (soft cap on reps)
};

struct Timing {
  std::vector<double> ms;  // per call, one entry per sample
  int calls_per_sample = 1;
  int sets = 1;
  double median = 0, min = 0, max = 0;
};

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

class EventPair {
 public:
  EventPair() {
    BENCH_CUDA_CHECK(cudaEventCreate(&a_));
    BENCH_CUDA_CHECK(cudaEventCreate(&b_));
  }
  ~EventPair() {
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
  void start(cudaStream_t s) { BENCH_CUDA_CHECK(cudaEventRecord(a_, s)); }
  void stop(cudaStream_t s) { BENCH_CUDA_CHECK(cudaEventRecord(b_, s)); }
  /// Waits for the stop event; milliseconds between the two.
  double elapsed_ms() {
    BENCH_CUDA_CHECK(cudaEventSynchronize(b_));
    float ms = 0;
    BENCH_CUDA_CHECK(cudaEventElapsedTime(&ms, a_, b_));
    return ms;
  }

 private:
  cudaEvent_t a_{}, b_{};
};

/// Times op(set) (which queues work on dev.stream), rotating set over [0, sets).
template <class Op>
Timing time_op(const Device& dev, int sets, const Policy& pol, Op&& op) {
  Timing t;
  t.sets = sets;
  EventPair ev;
  int next = 0;
  auto call = [&] {
    op(next);
    BENCH_CHECK_LAUNCH();
    next = (next + 1) % sets;
  };
  // Warm-up: every set once (module load, first-touch), then a timed pass to estimate.
  for (int i = 0; i < sets; ++i) call();
  BENCH_CUDA_CHECK(cudaStreamSynchronize(dev.stream));
  ev.start(dev.stream);
  for (int i = 0; i < sets; ++i) call();
  ev.stop(dev.stream);
  double est = ev.elapsed_ms() / sets;
  est = std::max(est, 1e-4);
  // More warm-up until warmup_ms have passed (clocks up, caches of the driver warm).
  const int extra = static_cast<int>(std::min(1000.0, std::ceil(pol.warmup_ms / est))) - 2 * sets;
  if (extra > 0) {
    ev.start(dev.stream);
    for (int i = 0; i < extra; ++i) call();
    ev.stop(dev.stream);
    est = std::max(ev.elapsed_ms() / extra, 1e-4);
  }
  t.calls_per_sample = static_cast<int>(std::clamp(std::ceil(pol.sample_ms / est), 1.0, 1000.0));
  const int by_budget = static_cast<int>(pol.budget_ms / (est * t.calls_per_sample));
  const int reps = std::clamp(by_budget, pol.min_reps, pol.reps);
  t.ms.reserve(reps);
  for (int r = 0; r < reps; ++r) {
    ev.start(dev.stream);
    for (int i = 0; i < t.calls_per_sample; ++i) call();
    ev.stop(dev.stream);
    t.ms.push_back(ev.elapsed_ms() / t.calls_per_sample);
  }
  BENCH_CUDA_CHECK(cudaStreamSynchronize(dev.stream));
  t.median = median_of(t.ms);
  t.min = *std::min_element(t.ms.begin(), t.ms.end());
  t.max = *std::max_element(t.ms.begin(), t.ms.end());
  return t;
}

Json timing_json(const Timing& t) {
  Json j;
  j["median_ms"] = t.median;
  j["min_ms"] = t.min;
  j["max_ms"] = t.max;
  j["samples"] = t.ms.size();
  j["calls_per_sample"] = t.calls_per_sample;
  j["rotating_sets"] = t.sets;
  return j;
}

// ---------------------------------------------------------------- inputs

std::string shape_name(const Shape& s) { return fmt::format("{}x{}", s[0], s[1]); }

std::size_t numel_of(const Shape& s) { return static_cast<std::size_t>(hqq::shape_numel(s)); }

/// Heavy-tailed weight like a real linear layer's (bench_quantize.cpp's rule):
/// Student-t(4) scaled to std 0.02, columns 1 and c % 512 == 511 times 10;
/// every row seeded on its own so the rows are generated in parallel.
std::vector<hqq::half> make_weight(const Shape& shape, std::uint64_t seed) {
  const std::int64_t rows = shape[0], cols = shape[1];
  std::vector<hqq::half> w(numel_of(shape));
  const float scale = 0.02f / std::sqrt(2.0f);  // t(4) has variance 2
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    std::mt19937_64 rng((seed + 0x51ed2701u) ^ (0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(r + 1)));
    std::student_t_distribution<float> t4(4.0f);
    for (std::int64_t c = 0; c < cols; ++c) {
      float v = t4(rng) * scale;
      if (c == 1 || c % 512 == 511) v *= 10.0f;
      hqq::half h(v);
      if ((h.bits & 0x7fffu) == 0) h = hqq::half(1e-6f);  // never an exact zero
      w[static_cast<std::size_t>(r * cols + c)] = h;
    }
  }
  return w;
}

/// Reads tensor `name` ([rows, cols], F16 or F32) of an open safetensors file as f16.
std::vector<hqq::half> read_weight(const hqq::io::SafetensorsFile& file, const std::string& name, const Shape& shape) {
  const hqq::io::TensorInfo& info = file.at(name);
  HQQ_EXPECTS(info.shape == shape, "--weights: tensor '{}' has shape {}, expected {}", name, fmt::join(info.shape, "x"),
              shape_name(shape));
  std::vector<hqq::half> w(numel_of(shape));
  const std::uint8_t* src = file.data(info);
  if (info.dtype == hqq::DType::kF16) {
    std::memcpy(w.data(), src, w.size() * sizeof(hqq::half));
  } else if (info.dtype == hqq::DType::kF32) {
    for (std::size_t i = 0; i < w.size(); ++i) {
      float v;
      std::memcpy(&v, src + 4 * i, 4);
      w[i] = hqq::half(v);
    }
  } else {
    hqq::detail::throw_error("--weights: tensor '{}' has dtype {}, expected F16 or F32", name,
                             hqq::dtype_name(info.dtype));
  }
  return w;
}

/// Copies `host` rows into `dst`, rotated by `shift` rows (row r of dst = row r + shift of host).
void upload_rotated(const std::vector<hqq::half>& host, const Shape& shape, std::int64_t shift, void* dst,
                    cudaStream_t stream) {
  const std::size_t row_bytes = static_cast<std::size_t>(shape[1]) * sizeof(hqq::half);
  const std::size_t rows = static_cast<std::size_t>(shape[0]);
  const std::size_t s = static_cast<std::size_t>(shift) % rows;
  auto* d = static_cast<std::uint8_t*>(dst);
  const auto* h = reinterpret_cast<const std::uint8_t*>(host.data());
  BENCH_CUDA_CHECK(cudaMemcpyAsync(d, h + s * row_bytes, (rows - s) * row_bytes, cudaMemcpyHostToDevice, stream));
  if (s > 0) {
    BENCH_CUDA_CHECK(cudaMemcpyAsync(d + (rows - s) * row_bytes, h, s * row_bytes, cudaMemcpyHostToDevice, stream));
  }
}

template <class T>
std::vector<T> download(const void* src, std::size_t count, cudaStream_t stream) {
  std::vector<T> v(count);
  BENCH_CUDA_CHECK(cudaMemcpyAsync(v.data(), src, count * sizeof(T), cudaMemcpyDeviceToHost, stream));
  BENCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  return v;
}

hqq::QuantConfig make_config(int nbits, hqq::Solver solver) {
  hqq::QuantConfig cfg;
  cfg.nbits = nbits;
  cfg.group_size = kGroup;
  cfg.axis = kAxis;
  cfg.solver = solver;
  cfg.scale_dtype = hqq::DType::kF16;  // the reference's storage type
  cfg.validate();
  return cfg;
}

/// Quantize outputs for one rotation set.
struct QuantOut {
  Mem packed, scale, zero;
};

hqq::cuda::DeviceQuantizedView out_view(const Shape& shape, const hqq::QuantConfig& cfg, const QuantOut& o) {
  hqq::cuda::DeviceQuantizedView v;
  v.shape = shape;
  v.nbits = cfg.nbits;
  v.group_size = cfg.group_size;
  v.axis = cfg.axis;
  v.scale_dtype = cfg.scale_dtype;
  v.packed = o.packed.get();
  v.scale = o.scale.get();
  v.zero = o.zero.get();
  return v;
}

hqq::cuda::Options make_options(const Device& dev, const Mem& workspace) {
  hqq::cuda::Options opt;
  opt.stream = dev.stream;
  opt.workspace = workspace.get();
  opt.workspace_bytes = workspace.size();
  opt.check_finite = false;
  return opt;
}

double gbps(double bytes, double ms) { return ms > 0 ? bytes / (ms * 1e-3) / 1e9 : 0.0; }

// ---------------------------------------------------------------- the parts

struct Context {
  Args args;
  Device dev;
  Policy pol;
  double copy_gbps = 0;                                   // measured ceiling, (read + write) bytes / s / 1e9
  std::map<std::string, std::vector<hqq::half>> weights;  // by shape name
  /// Proximal results of the wide weight for each nbits (inputs of the dequantize part).
  std::map<int, hqq::QuantizedTensor> wide_proximal;
  /// Median ms per call of quantize, by (shape, nbits, solver).
  std::map<std::tuple<std::string, int, std::string>, double> quant_ms;
  Json out;
  int failures = 0;  // measurements that threw, checks that failed
};

/// Runs one measurement; an exception is recorded (a JSON row with "error" and
/// a line on stdout) and the run goes on with the next one.
template <class F>
void guarded(Context& c, Json& rows, Json key, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    ++c.failures;
    fmt::print("ERROR {}: {}\n", key.dump(), e.what());
    key["error"] = e.what();
    std::fflush(stdout);
    rows.push_back(std::move(key));
  }
}

double fraction_of_copy(const Context& c, double g) { return c.copy_gbps > 0 ? g / c.copy_gbps : 0.0; }

void run_copy(Context& c) {
  const std::size_t bytes = std::size_t{1} << (c.args.small ? 24 : 30);  // 1 GiB each way
  Mem src(bytes), dst(bytes);
  BENCH_CUDA_CHECK(cudaMemsetAsync(src.get(), 0x5a, bytes, c.dev.stream));  // not zeros
  BENCH_CUDA_CHECK(cudaMemsetAsync(dst.get(), 0xa5, bytes, c.dev.stream));
  Policy pol = c.pol;
  pol.sample_ms = 0;  // one 1 GiB copy (~0.7 ms) per sample
  pol.reps = c.args.quick ? 20 : 50;
  pol.min_reps = pol.reps;
  const Timing t = time_op(c.dev, 1, pol, [&](int) {
    BENCH_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, c.dev.stream));
  });
  c.copy_gbps = gbps(2.0 * static_cast<double>(bytes), t.median);
  Json j = timing_json(t);
  j["bytes_copied"] = bytes;
  j["bytes_read_plus_written"] = 2 * bytes;
  j["gbps"] = c.copy_gbps;
  j["gbps_best"] = gbps(2.0 * static_cast<double>(bytes), t.min);
  c.out["copy"] = j;
  fmt::print(
      "copy  D2D cudaMemcpyAsync {} MiB: {:.3f} ms median ({:.3f} min) -> {:.0f} GB/s read+write "
      "(ceiling for the fractions below)\n\n",
      bytes >> 20, t.median, t.min, c.copy_gbps);
}

void run_quantize(Context& c) {
  Json rows = Json::array();
  fmt::print(
      "quantize: f16 weight, group {}, axis {}, device pointers, workspace preallocated; "
      "ms per call, median [min]; errors on the host (hqq::measure_error)\n",
      kGroup, kAxis);
  fmt::print("{:<11} {:>4} {:<9} {:>9} {:>9} {:>11} {:>12} {:>12} {:>6}\n", "shape", "bits", "solver", "median", "min",
             "Gweights/s", "rel_frob", "mean_abs", "same");
  for (const Shape& shape : {g_square, g_wide}) {
    const std::string sname = shape_name(shape);
    const auto& host = c.weights.at(sname);
    const std::size_t n = numel_of(shape);
    const std::size_t w_bytes = n * sizeof(hqq::half);
    const hqq::TensorView host_view{host.data(), shape, hqq::DType::kF16};

    // Inputs: rotated copies (the largest output, 8-bit codes, counts toward the working set).
    const int sets = rotation_sets(c.dev, w_bytes + n);
    std::vector<Mem> in;
    for (int s = 0; s < sets; ++s) {
      in.emplace_back(w_bytes);
      upload_rotated(host, shape, static_cast<std::int64_t>(s) * shape[0] / sets, in.back().get(), c.dev.stream);
    }
    BENCH_CUDA_CHECK(cudaStreamSynchronize(c.dev.stream));

    for (int nbits : kAllBits) {
      for (hqq::Solver solver : kAllSolvers) {
        const std::string sv(hqq::solver_name(solver));
        guarded(c, rows, {{"shape", shape}, {"nbits", nbits}, {"solver", sv}}, [&] {
          const hqq::QuantConfig cfg = make_config(nbits, solver);
          const hqq::cuda::QuantizeSizes sz = hqq::cuda::quantize_sizes(shape, cfg);
          const std::size_t meta_bytes = static_cast<std::size_t>(sz.meta_bytes);
          std::vector<QuantOut> outs(sets);
          for (auto& o : outs) {
            o.packed = Mem(static_cast<std::size_t>(sz.packed_bytes));
            o.scale = Mem(meta_bytes);
            o.zero = Mem(meta_bytes);
          }
          const Mem workspace(std::max<std::size_t>(sz.workspace_bytes, 1));
          const hqq::cuda::Options opt = make_options(c.dev, workspace);

          // Poisoned outputs of set 0, one call, then the timing.
          BENCH_CUDA_CHECK(cudaMemsetAsync(outs[0].packed.get(), 0xa7, outs[0].packed.size(), c.dev.stream));
          BENCH_CUDA_CHECK(cudaMemsetAsync(outs[0].scale.get(), 0xff, meta_bytes, c.dev.stream));
          BENCH_CUDA_CHECK(cudaMemsetAsync(outs[0].zero.get(), 0xff, meta_bytes, c.dev.stream));
          const Timing t = time_op(c.dev, sets, c.pol, [&](int s) {
            hqq::cuda::quantize(hqq::TensorView{in[s].get(), shape, hqq::DType::kF16}, cfg,
                                out_view(shape, cfg, outs[s]), opt);
          });

          // The error, through the owning API on the unrotated weight (set 0).
          hqq::cuda::Options plain;
          plain.stream = c.dev.stream;
          const hqq::cuda::DeviceQuantized dq(hqq::TensorView{in[0].get(), shape, hqq::DType::kF16}, cfg, plain);
          hqq::QuantizedTensor q = dq.to_host();
          const hqq::ErrorStats err = hqq::measure_error(host_view, q);

          // The timed calls wrote set 0 last time round: same bytes as the owning API?
          const auto packed0 = download<std::uint8_t>(outs[0].packed.get(), outs[0].packed.size(), c.dev.stream);
          const auto scale0 = download<std::uint16_t>(outs[0].scale.get(), meta_bytes / 2, c.dev.stream);
          const auto zero0 = download<std::uint16_t>(outs[0].zero.get(), meta_bytes / 2, c.dev.stream);
          bool same = packed0 == q.packed && scale0.size() == q.scale.size();
          for (std::size_t g = 0; same && g < scale0.size(); ++g) {
            same = hqq::half_bits_to_float(scale0[g]) == q.scale[g] && hqq::half_bits_to_float(zero0[g]) == q.zero[g];
          }

          const double wps = static_cast<double>(n) / (t.median * 1e-3);
          // Fewest bytes a quantizer must move: read the weight, write codes, scale and zero.
          const double min_bytes = static_cast<double>(w_bytes) + static_cast<double>(sz.packed_bytes) +
                                   2.0 * static_cast<double>(meta_bytes);
          Json j;
          j["shape"] = shape;
          j["nbits"] = nbits;
          j["group_size"] = kGroup;
          j["axis"] = kAxis;
          j["solver"] = std::string(hqq::solver_name(solver));
          j["round_zero"] = cfg.effective_round_zero();
          j["input_dtype"] = "F16";
          j["scale_dtype"] = "F16";
          j.update(timing_json(t));
          j["weights_per_s"] = wps;
          j["workspace_bytes"] = sz.workspace_bytes;
          j["min_traffic_bytes"] = min_bytes;
          j["min_traffic_gbps"] = gbps(min_bytes, t.median);
          j["rel_frobenius"] = err.rel_frobenius;
          j["mean_abs"] = err.mean_abs;
          j["max_abs"] = err.max_abs;
          j["bits_per_weight"] = q.bits_per_weight();
          j["timed_output_matches_owning_api"] = same;
          rows.push_back(j);
          c.quant_ms[{sname, nbits, std::string(hqq::solver_name(solver))}] = t.median;
          if (solver == hqq::Solver::kProximal && shape == g_wide) c.wide_proximal[nbits] = std::move(q);

          fmt::print("{:<11} {:>4} {:<9} {:>9.3f} {:>9.3f} {:>11.2f} {:>12.5e} {:>12.5e} {:>6}\n", sname, nbits,
                     hqq::solver_name(solver), t.median, t.min, wps / 1e9, err.rel_frobenius, err.mean_abs,
                     same ? "yes" : "NO");
          std::fflush(stdout);
          if (!same) ++c.failures;
        });
      }
    }
  }
  c.out["quantize"] = rows;
  fmt::print("(same: the timed call's output equals DeviceQuantized's on the same weight)\n\n");
}

void run_llama(Context& c) {
  const double n_sq = static_cast<double>(numel_of(g_square));
  const double n_wide = static_cast<double>(numel_of(g_wide));
  const int count_sq = kLlamaLayers * kLlamaSquarePerLayer;
  const int count_wide = kLlamaLayers * kLlamaWidePerLayer;
  const double total_weights = count_sq * n_sq + count_wide * n_wide;
  Json j;
  j["model"] = "Llama-2-7B linear layers";
  j["layers"] = kLlamaLayers;
  j["per_layer"] = "4 x [4096, 4096] (q, k, v, o) + 2 x [11008, 4096] (gate, up) + 1 x [4096, 11008] (down)";
  j["weights"] = total_weights;
  j["target_s"] = 0.5;
  j["target_config"] = "4-bit g64 axis 1 proximal";

  // (a) Estimate: median of one weight of each shape times its count.
  Json est = Json::array();
  if (!c.quant_ms.empty()) {
    for (int nbits : kAllBits) {
      for (hqq::Solver solver : kAllSolvers) {
        const std::string sv(hqq::solver_name(solver));
        const auto a = c.quant_ms.find({shape_name(g_square), nbits, sv});
        const auto b = c.quant_ms.find({shape_name(g_wide), nbits, sv});
        if (a == c.quant_ms.end() || b == c.quant_ms.end()) continue;
        const double s = (count_sq * a->second + count_wide * b->second) * 1e-3;
        est.push_back({{"nbits", nbits}, {"solver", sv}, {"seconds", s}});
      }
    }
  }
  j["estimate_method"] =
      fmt::format("per-shape median ms x count ({} x 4096x4096 + {} x 4096x11008)", count_sq, count_wide);
  j["estimate"] = est;

  // (b) The real thing at 4-bit: 224 distinct weights and outputs, back to back on one stream.
  Json full = Json::array();
  std::vector<Shape> layer_shapes;
  for (int l = 0; l < kLlamaLayers; ++l) {
    for (int i = 0; i < kLlamaSquarePerLayer; ++i) layer_shapes.push_back(g_square);
    layer_shapes.push_back({g_wide[1], g_wide[0]});
    layer_shapes.push_back({g_wide[1], g_wide[0]});
    layer_shapes.push_back(g_wide);
  }
  std::vector<hqq::Solver> solvers = {hqq::Solver::kProximal};
  if (!c.args.quick) {
    solvers.push_back(hqq::Solver::kLegacy);
    solvers.push_back(hqq::Solver::kNone);
  }
  std::size_t w_total = 0, packed_total = 0, meta_total = 0, ws_max = 1;
  std::vector<std::size_t> w_off, p_off, m_off;
  for (const Shape& s : layer_shapes) {
    w_off.push_back(w_total);
    p_off.push_back(packed_total);
    m_off.push_back(meta_total);
    w_total += numel_of(s) * sizeof(hqq::half);
    std::size_t m = 0;
    for (hqq::Solver sv : solvers) {
      const auto sz = hqq::cuda::quantize_sizes(s, make_config(4, sv));
      ws_max = std::max(ws_max, sz.workspace_bytes);
      m = static_cast<std::size_t>(sz.meta_bytes);
      if (sv == hqq::Solver::kProximal) packed_total += static_cast<std::size_t>(sz.packed_bytes);
    }
    meta_total += (m + 255) / 256 * 256;
  }
  const std::size_t need = w_total + packed_total + 2 * meta_total + ws_max;
  std::size_t free_b = 0, total_b = 0;
  BENCH_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  j["full_run_bytes_needed"] = need;
  j["device_free_bytes"] = free_b;
  if (need + (std::size_t{1} << 30) > free_b) {
    j["full_run_skipped"] =
        fmt::format("needs {:.1f} GiB, {:.1f} GiB free", need / 1073741824.0, free_b / 1073741824.0);
    fmt::print("Llama-2-7B full run skipped: {}\n", j["full_run_skipped"].get<std::string>());
  } else {
    Mem weights(w_total), packed(packed_total), scale(meta_total), zero(meta_total), workspace(ws_max);
    // Layer weights: the test matrices, rotated by a different row count per layer.
    const auto& sq = c.weights.at(shape_name(g_square));
    const auto& wide = c.weights.at(shape_name(g_wide));
    for (std::size_t i = 0; i < layer_shapes.size(); ++i) {
      const Shape& s = layer_shapes[i];
      const bool is_sq = s == g_square;
      // gate/up [11008, 4096] hold the 4096x11008 matrix's values in that shape.
      upload_rotated(is_sq ? sq : wide, is_sq ? g_square : g_wide, static_cast<std::int64_t>((i * 977) % g_square[0]),
                     weights.as<std::uint8_t>() + w_off[i], c.dev.stream);
    }
    BENCH_CUDA_CHECK(cudaStreamSynchronize(c.dev.stream));
    const hqq::cuda::Options opt = make_options(c.dev, workspace);
    EventPair ev;
    for (hqq::Solver sv : solvers) {
      const hqq::QuantConfig cfg = make_config(4, sv);
      auto pass = [&] {
        for (std::size_t i = 0; i < layer_shapes.size(); ++i) {
          hqq::cuda::DeviceQuantizedView v;
          v.shape = layer_shapes[i];
          v.nbits = 4;
          v.group_size = kGroup;
          v.axis = kAxis;
          v.scale_dtype = cfg.scale_dtype;
          v.packed = packed.as<std::uint8_t>() + p_off[i];
          v.scale = scale.as<std::uint8_t>() + m_off[i];
          v.zero = zero.as<std::uint8_t>() + m_off[i];
          hqq::cuda::quantize(hqq::TensorView{weights.as<std::uint8_t>() + w_off[i], layer_shapes[i], hqq::DType::kF16},
                              cfg, v, opt);
          BENCH_CHECK_LAUNCH();
        }
      };
      ev.start(c.dev.stream);
      pass();  // warm-up, timed only to choose the number of passes
      ev.stop(c.dev.stream);
      const double warm_s = ev.elapsed_ms() * 1e-3;
      std::vector<double> secs;
      const double budget_s = c.args.quick ? 2.0 : 6.0;
      const int reps = std::clamp(static_cast<int>(budget_s / std::max(warm_s, 1e-3)), 1, c.args.quick ? 2 : 5);
      for (int r = 0; r < reps; ++r) {
        ev.start(c.dev.stream);
        pass();
        ev.stop(c.dev.stream);
        secs.push_back(ev.elapsed_ms() * 1e-3);
      }
      const double med = median_of(secs);
      full.push_back({{"nbits", 4},
                      {"solver", std::string(hqq::solver_name(sv))},
                      {"median_s", med},
                      {"min_s", *std::min_element(secs.begin(), secs.end())},
                      {"samples", secs.size()},
                      {"weights_per_s", total_weights / med}});
    }
  }
  j["full_run_method"] =
      "all 224 layers quantized back to back on one stream, distinct weight and output buffers, one warm-up pass, "
      "events around each pass";
  j["full_run"] = full;

  fmt::print(
      "Llama-2-7B linear layers ({:.3f} B weights, 32 x [4 x 4096x4096 + 3 x 4096x11008]), "
      "target <= 0.5 s at 4-bit g64 proximal:\n",
      total_weights / 1e9);
  for (const auto& e : est) {
    if (e["nbits"] != 4) continue;
    fmt::print("  estimate (per-shape medians x count)  4-bit {:<9} {:.3f} s\n", e["solver"].get<std::string>(),
               e["seconds"].get<double>());
  }
  for (const auto& e : full) {
    const double s = e["median_s"].get<double>();
    const bool prox = e["solver"] == "proximal";
    fmt::print("  full run (224 layers, median of {})     4-bit {:<9} {:.3f} s{}\n", e["samples"].get<int>(),
               e["solver"].get<std::string>(), s, prox ? (s <= 0.5 ? "  target MET" : "  target NOT MET") : "");
  }
  fmt::print("\n");
  c.out["llama2_7b"] = j;
}

void run_dequantize(Context& c) {
  const Shape shape = g_wide;
  const std::size_t n = numel_of(shape);
  Json rows = Json::array();
  fmt::print(
      "dequantize {} (proximal codes, f16 scale/zero): GB/s = (packed + scale + zero + output bytes) / "
      "time; fraction of copy; bit-equal to the CPU backend\n",
      shape_name(shape));
  fmt::print("{:>4} {:>4} {:>9} {:>9} {:>9} {:>7} {:>6}\n", "bits", "out", "median", "min", "GB/s", "x copy", "= cpu");
  for (int nbits : kAllBits) {
    guarded(c, rows, {{"shape", shape}, {"nbits", nbits}}, [&] {
      auto it = c.wide_proximal.find(nbits);
      if (it == c.wide_proximal.end()) {
        // The quantize part did not run: quantize here (outside any timing).
        hqq::cuda::Options plain;
        plain.stream = c.dev.stream;
        const auto& host = c.weights.at(shape_name(shape));
        hqq::cuda::DeviceBuffer w = hqq::cuda::DeviceBuffer::from(host);
        const hqq::cuda::DeviceQuantized dq(hqq::TensorView{w.data(), shape, hqq::DType::kF16},
                                            make_config(nbits, hqq::Solver::kProximal), plain);
        it = c.wide_proximal.emplace(nbits, dq.to_host()).first;
      }
      const hqq::QuantizedTensor& q = it->second;
      const hqq::cuda::DeviceQuantized dq(q);  // uploads codes, scale, zero
      const hqq::cuda::DeviceQuantizedView src = dq.view();
      const std::size_t packed_bytes = q.packed.size();
      const std::size_t meta_bytes = static_cast<std::size_t>(q.num_groups()) * hqq::dtype_size(q.scale_dtype);

      for (hqq::DType out_t : {hqq::DType::kF16, hqq::DType::kF32}) {
        const std::size_t out_bytes = n * hqq::dtype_size(out_t);
        const std::size_t set_bytes = packed_bytes + 2 * meta_bytes + out_bytes;
        const int sets = rotation_sets(c.dev, set_bytes);
        std::vector<QuantOut> ins(sets);
        std::vector<Mem> outs;
        for (int s = 0; s < sets; ++s) {
          ins[s].packed = Mem(packed_bytes);
          ins[s].scale = Mem(meta_bytes);
          ins[s].zero = Mem(meta_bytes);
          BENCH_CUDA_CHECK(
              cudaMemcpyAsync(ins[s].packed.get(), src.packed, packed_bytes, cudaMemcpyDeviceToDevice, c.dev.stream));
          BENCH_CUDA_CHECK(
              cudaMemcpyAsync(ins[s].scale.get(), src.scale, meta_bytes, cudaMemcpyDeviceToDevice, c.dev.stream));
          BENCH_CUDA_CHECK(
              cudaMemcpyAsync(ins[s].zero.get(), src.zero, meta_bytes, cudaMemcpyDeviceToDevice, c.dev.stream));
          outs.emplace_back(out_bytes);
        }
        const hqq::QuantConfig cfg = make_config(nbits, q.solver);
        auto view_of = [&](int s) {
          hqq::cuda::DeviceQuantizedView v = out_view(shape, cfg, ins[s]);
          v.scale_dtype = q.scale_dtype;
          return v;
        };
        hqq::cuda::Options opt;
        opt.stream = c.dev.stream;

        // Correctness first: poisoned output, one call, bit-compare with the CPU backend.
        BENCH_CUDA_CHECK(cudaMemsetAsync(outs[0].get(), 0xff, out_bytes, c.dev.stream));
        hqq::cuda::dequantize(view_of(0), hqq::MutableTensorView{outs[0].get(), shape, out_t}, opt);
        BENCH_CHECK_LAUNCH();
        const auto gpu = download<std::uint8_t>(outs[0].get(), out_bytes, c.dev.stream);
        std::vector<std::uint8_t> cpu(out_bytes);
        hqq::dequantize(q, hqq::MutableTensorView{cpu.data(), shape, out_t}, "cpu");
        const bool equal = gpu == cpu;

        const Timing t = time_op(c.dev, sets, c.pol, [&](int s) {
          hqq::cuda::dequantize(view_of(s), hqq::MutableTensorView{outs[s].get(), shape, out_t}, opt);
        });
        const double g = gbps(static_cast<double>(set_bytes), t.median);
        Json j;
        j["shape"] = shape;
        j["nbits"] = nbits;
        j["group_size"] = kGroup;
        j["axis"] = kAxis;
        j["out_dtype"] = std::string(hqq::dtype_name(out_t));
        j["scale_dtype"] = std::string(hqq::dtype_name(q.scale_dtype));
        j["bytes_read_plus_written"] = set_bytes;
        j.update(timing_json(t));
        j["gbps"] = g;
        j["gbps_best"] = gbps(static_cast<double>(set_bytes), t.min);
        j["fraction_of_copy"] = fraction_of_copy(c, g);
        j["bit_equal_to_cpu"] = equal;
        rows.push_back(j);
        fmt::print("{:>4} {:>4} {:>9.4f} {:>9.4f} {:>9.0f} {:>7.3f} {:>6}\n", nbits, hqq::dtype_name(out_t), t.median,
                   t.min, g, fraction_of_copy(c, g), equal ? "yes" : "NO");
        std::fflush(stdout);
        if (!equal) ++c.failures;
      }
    });
  }
  c.out["dequantize"] = rows;
  fmt::print("\n");
}

void run_pack(Context& c) {
  const Shape shape = g_wide;
  const std::size_t n = numel_of(shape);
  const hqq::GroupedView gv(static_cast<std::int64_t>(n), kGroup, kAxis);
  const std::int64_t rows = gv.rows(), cols = gv.cols();
  Json jp = Json::array(), ju = Json::array();
  fmt::print(
      "pack / unpack {} codes as the grouped view [{}, {}] (u8 codes <-> interchange layout): "
      "GB/s = (codes + packed bytes) / time\n",
      shape_name(shape), rows, cols);
  fmt::print("{:>4} {:<6} {:>9} {:>9} {:>9} {:>7} {:>6}\n", "bits", "op", "median", "min", "GB/s", "x copy", "check");
  for (int nbits : kAllBits) {
    guarded(c, jp, {{"shape", shape}, {"nbits", nbits}}, [&] {
      // Uniform random codes, rows seeded on their own (parallel).
      std::vector<std::uint8_t> codes(n);
      const std::uint32_t mask = (1u << nbits) - 1u;
#pragma omp parallel for schedule(static)
      for (std::int64_t r = 0; r < rows; ++r) {
        std::mt19937_64 rng((c.args.seed + 77u + static_cast<std::uint64_t>(nbits)) * 0x2545f4914f6cdd1dULL ^
                            static_cast<std::uint64_t>(r));
        for (std::int64_t j = 0; j < cols; ++j) {
          codes[static_cast<std::size_t>(r * cols + j)] = static_cast<std::uint8_t>(rng() & mask);
        }
      }
      const std::size_t pbytes = static_cast<std::size_t>(hqq::packed_bytes(nbits, rows, cols));
      const std::size_t set_bytes = n + pbytes;
      const int sets = rotation_sets(c.dev, set_bytes);
      std::vector<Mem> d_codes, d_packed, d_back;
      for (int s = 0; s < sets; ++s) {
        d_codes.emplace_back(n);
        d_packed.emplace_back(pbytes);
        d_back.emplace_back(n);
        BENCH_CUDA_CHECK(cudaMemcpyAsync(d_codes.back().get(), codes.data(), n, cudaMemcpyHostToDevice, c.dev.stream));
      }
      // Correctness: pack equals hqq::pack on the host; unpack(pack(codes)) == codes.
      BENCH_CUDA_CHECK(cudaMemsetAsync(d_packed[0].get(), 0xa7, pbytes, c.dev.stream));
      BENCH_CUDA_CHECK(cudaMemsetAsync(d_back[0].get(), 0xa7, n, c.dev.stream));
      hqq::cuda::pack(nbits, d_codes[0].as<std::uint8_t>(), rows, cols, d_packed[0].as<std::uint8_t>(), c.dev.stream);
      BENCH_CHECK_LAUNCH();
      hqq::cuda::unpack(nbits, d_packed[0].as<std::uint8_t>(), rows, cols, d_back[0].as<std::uint8_t>(), c.dev.stream);
      BENCH_CHECK_LAUNCH();
      std::vector<std::uint8_t> cpu_packed(pbytes);
      hqq::pack(nbits, codes.data(), rows, cols, cpu_packed.data());
      const bool pack_ok = download<std::uint8_t>(d_packed[0].get(), pbytes, c.dev.stream) == cpu_packed;
      const bool unpack_ok = download<std::uint8_t>(d_back[0].get(), n, c.dev.stream) == codes;
      for (int s = 1; s < sets; ++s) {
        BENCH_CUDA_CHECK(
            cudaMemcpyAsync(d_packed[s].get(), d_packed[0].get(), pbytes, cudaMemcpyDeviceToDevice, c.dev.stream));
      }

      const Timing tp = time_op(c.dev, sets, c.pol, [&](int s) {
        hqq::cuda::pack(nbits, d_codes[s].as<std::uint8_t>(), rows, cols, d_packed[s].as<std::uint8_t>(), c.dev.stream);
      });
      const Timing tu = time_op(c.dev, sets, c.pol, [&](int s) {
        hqq::cuda::unpack(nbits, d_packed[s].as<std::uint8_t>(), rows, cols, d_back[s].as<std::uint8_t>(),
                          c.dev.stream);
      });
      for (int k = 0; k < 2; ++k) {
        const Timing& t = k == 0 ? tp : tu;
        const double g = gbps(static_cast<double>(set_bytes), t.median);
        Json j;
        j["shape"] = shape;
        j["grouped_view"] = {rows, cols};
        j["nbits"] = nbits;
        j["bytes_read_plus_written"] = set_bytes;
        j.update(timing_json(t));
        j["gbps"] = g;
        j["gbps_best"] = gbps(static_cast<double>(set_bytes), t.min);
        j["fraction_of_copy"] = fraction_of_copy(c, g);
        if (k == 0) {
          j["equal_to_cpu_pack"] = pack_ok;
          jp.push_back(j);
        } else {
          j["round_trip_exact"] = unpack_ok;
          ju.push_back(j);
        }
        const bool ok = k == 0 ? pack_ok : unpack_ok;
        fmt::print("{:>4} {:<6} {:>9.4f} {:>9.4f} {:>9.0f} {:>7.3f} {:>6}\n", nbits, k == 0 ? "pack" : "unpack",
                   t.median, t.min, g, fraction_of_copy(c, g), ok ? "ok" : "FAIL");
        if (!ok) ++c.failures;
      }
      std::fflush(stdout);
    });
  }
  c.out["pack"] = jp;
  c.out["unpack"] = ju;
  fmt::print("(check: pack equals hqq::pack on the host; unpack(pack(codes)) == codes)\n\n");
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Json device_json(const Device& dev) {
  Json j;
  j["name"] = dev.prop.name;
  j["description"] = hqq::cuda::device_description();
  j["compute_capability"] = fmt::format("{}.{}", dev.prop.major, dev.prop.minor);
  j["multiprocessors"] = dev.prop.multiProcessorCount;
  j["l2_bytes"] = dev.l2_bytes;
  j["global_memory_bytes"] = dev.prop.totalGlobalMem;
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMemoryClockRate, dev.id) == cudaSuccess) j["memory_clock_khz"] = v;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrGlobalMemoryBusWidth, dev.id) == cudaSuccess) j["memory_bus_bits"] = v;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrClockRate, dev.id) == cudaSuccess) j["sm_clock_khz"] = v;
  cudaGetLastError();  // an attribute this driver lacks is not an error of ours
  int drv = 0, rt = 0;
  BENCH_CUDA_CHECK(cudaDriverGetVersion(&drv));
  BENCH_CUDA_CHECK(cudaRuntimeGetVersion(&rt));
  j["driver_api_version"] = drv;
  j["runtime_version"] = rt;
  return j;
}

int run(Context& c) {
  const hqq::Support ok = hqq::cuda::available();
  if (!ok) {
    std::fprintf(stderr, "bench_cuda: %s\n", ok.reason.c_str());
    c.out["error"] = ok.reason;
    return 77;
  }
  Device& dev = c.dev;
  BENCH_CUDA_CHECK(cudaGetDevice(&dev.id));
  BENCH_CUDA_CHECK(cudaGetDeviceProperties(&dev.prop, dev.id));
  dev.l2_bytes = static_cast<std::size_t>(dev.prop.l2CacheSize);
  BENCH_CUDA_CHECK(cudaStreamCreateWithFlags(&dev.stream, cudaStreamNonBlocking));

  if (c.args.small) {
    g_square = {256, 256};
    g_wide = {256, 688};
  }
  if (c.args.quick) {
    c.pol.reps = 10;
    c.pol.min_reps = 3;
    c.pol.warmup_ms = 10;
    c.pol.budget_ms = 400;
  }

  c.out["tool"] = "bench_cuda";
  c.out["hqq_version"] = hqq::kVersionString;
  c.out["commit"] = c.args.commit;
  c.out["date_utc"] = utc_now();
  c.out["device"] = device_json(dev);
  c.out["options"] = {
      {"quick", c.args.quick},        {"reps_max", c.pol.reps},
      {"reps_min", c.pol.min_reps},   {"sample_ms_min", c.pol.sample_ms},
      {"budget_ms", c.pol.budget_ms}, {"only", std::vector<std::string>(c.args.only.begin(), c.args.only.end())}};
  c.out["timing_method"] =
      "CUDA events on one non-blocking stream; warm-up, then samples of k back-to-back calls (sample >= 1 ms), "
      "median and min per call; inputs/outputs rotate among copies totalling > 2x L2";

  fmt::print("# bench_cuda: {} | hqq {} | commit {} | L2 {:.0f} MB{}\n\n", hqq::cuda::device_description(),
             hqq::kVersionString, c.args.commit.empty() ? "-" : c.args.commit, dev.l2_bytes / 1e6,
             c.args.quick ? " | --quick" : "");

  run_copy(c);

  const bool need_weights = c.args.want("quantize") || c.args.want("llama") || c.args.want("dequantize");
  if (need_weights) {
    Json w;
    if (!c.args.weights_path.empty()) {
      const auto file = hqq::io::SafetensorsFile::open(c.args.weights_path);
      for (const Shape& s : {g_square, g_wide}) c.weights[shape_name(s)] = read_weight(file, "W_" + shape_name(s), s);
      w["source"] = "file";
      w["path"] = c.args.weights_path;
    } else {
      for (const Shape& s : {g_square, g_wide}) c.weights[shape_name(s)] = make_weight(s, c.args.seed + s[1]);
      w["source"] = "generated";
      w["seed"] = c.args.seed;
    }
    w["rule"] = "Student-t(4) * 0.02/sqrt(2), columns 1 and c % 512 == 511 x10, stored as f16";
    c.out["weights"] = w;
  }

  // A part that throws (a CUDA error, say) is recorded in "errors" and the next part still runs.
  Json errors = Json::array();
  auto part = [&](const char* name, void (*fn)(Context&)) {
    if (c.args.want(name)) guarded(c, errors, {{"part", name}}, [&] { fn(c); });
  };
  part("quantize", run_quantize);
  part("llama", run_llama);
  part("dequantize", run_dequantize);
  part("pack", run_pack);
  if (!errors.empty()) c.out["errors"] = errors;
  c.out["failures"] = c.failures;

  BENCH_CUDA_CHECK(cudaStreamSynchronize(dev.stream));
  BENCH_CUDA_CHECK(cudaStreamDestroy(dev.stream));
  dev.stream = nullptr;
  if (c.failures > 0) {
    fmt::print("bench_cuda: {} measurement(s) failed or gave a wrong result (ERROR / NO / FAIL above)\n", c.failures);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Context c;
  c.args = parse_args(argc, argv);
  int rc = 1;
  try {
    rc = run(c);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda: %s\n", e.what());
    c.out["error"] = e.what();
    rc = 1;
  }
  if (!c.args.json_path.empty()) {
    std::ofstream f(c.args.json_path);
    f << c.out.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "bench_cuda: cannot write %s\n", c.args.json_path.c_str());
      return 1;
    }
    std::printf("wrote %s\n", c.args.json_path.c_str());
  }
  return rc;
}
