/// \file bench_linear_cuda.cpp
/// GPU benchmark of hqq::QuantizedLinear (backend "cuda"), one run, one JSON file.
///
///   bench_linear_cuda [--quick] [--json PATH] [--commit SHA] [--seed N] [--l2-factor F]
///                     [--shapes NxK,...] [--no-graphs] [--no-cublas] [--small] [--gemm]
///
/// Without --gemm (the decode benchmark) it measures, on the current device and in one run:
///   * copy     a device-to-device cudaMemcpyAsync of 1 GiB: the bandwidth
///              ceiling, (bytes read + bytes written) / time (as bench_cuda);
///   * cublas   cuBLAS fp16 y = x W^T (cublasGemmEx, f16 in and out, f32
///              accumulation) for every shape and M = 1, 2, 4, 8, 16 -- when
///              the toolkit has cuBLAS (linked by this program only);
///   * linear   QuantizedLinear::forward, f16 x [M, K] -> f16 y [M, N], device
///              pointers, on the Llama shapes N x K = 4096x4096, 11008x4096,
///              4096x11008, 14336x4096, 4096x14336, 28672x8192, 8192x28672:
///              nbits 8/4/3/2/1 at group 64 and 4-bit at groups 32 and 128
///              with M = 1; 4-bit g64 also with M = 2, 4, 8, 16.
///
/// Weights: uniform random codes packed with hqq::pack, random f16-exact
/// scale and zero per group (no solver: the kernel's speed does not depend on
/// how the codes were found). x: random f16 in [-1, 1], never all zeros.
///
/// Correctness, once per configuration and M, before any number is kept: the
/// output y (poisoned with NaNs first) of one forward is compared with a CPU
/// QuantizedLinear built from the same QuantizedTensor on the same x (f32 on
/// the CPU): per row ||y_gpu - y_cpu|| / ||y_cpu|| <= 1e-3 and every value
/// finite. The last output of the timed calls is checked the same way. A
/// configuration failing either is reported FAILED (and the exit status is 1),
/// never as a speed.
///
/// Timing: CUDA events on one non-blocking stream, warm-up first, medians of
/// samples of k back-to-back calls (a sample lasts >= 1 ms), twice:
///   * stream: calls enqueued one by one from the host (host launch overhead
///     shows when a call takes a few microseconds);
///   * graph:  the same k calls captured once into a CUDA graph and replayed
///     (what a decode loop of an inference engine does); the headline number
///     when the capture works, else the stream number.
/// Consecutive calls rotate among copies of the layer whose weight bytes
/// total >= --l2-factor (default 3) x the device's L2 (cudaDevAttrL2CacheSize;
/// at least 2 copies), so no call finds its weight in L2. Copy 0 is the
/// QuantizedLinear itself; copies 1.. are more device copies of its kernel
/// layout made with the call its constructor makes (Backend::make_linear), and
/// are run with LinearKernel::forward, which is what QuantizedLinear::forward
/// calls after checking its arguments on the host. cuBLAS rotates among
/// copies of its f16 weight the same way.
///
/// GB/s = QuantizedLinear::weight_bytes() (codes + scale/zero + bias) / time;
/// cuBLAS: 2 N K / time. Fractions are of the copy measured in the same run.
/// Targets (DESIGN.md section 6), printed PASS / MISS: 4-bit g64 M=1 >= 80 %
/// of the copy and >= 3.2x cuBLAS fp16; 8/3/2/1-bit g64 M=1 >= 70 %; 4-bit
/// g64 time at M=8 <= 1.3x time at M=1. compare_linear_gpu.py adds the
/// PyTorch peers and recomputes them.
///
/// --max-seconds S: no new shape starts after S seconds (what is left is
/// recorded as "not run"), so that a caller with a time limit gets a result.
///
/// --gemm: the tensor-core GEMM mode instead (nothing of the above runs):
///   * sweep    every shape (--quick: 4096x4096, 14336x4096, 4096x14336), 4-bit
///              g64, f16 x [M, K] -> f16 y, M = 1, 2, 4, 8, 16, 32, 64, 128,
///              256, 1024, 4096: ForwardOptions::kernel = kTensorCore at every
///              M (and kTensorCoreMmaSync where that runs the TMA kernels, on
///              sm_90), kGemv up to M = 64 (slow beyond), cuBLAS fp16 at every M;
///              us, TFLOP/s (2 M N K / time), x cuBLAS; per shape the crossover
///              (the smallest M from which the tensor cores beat the GEMV at
///              every larger measured M) and a suggested kAuto threshold;
///   * widths   8/3/2-bit g64 and 4-bit g32/g128 (and 4-bit g64 from the sweep)
///              on 4096x4096, 14336x4096, 4096x14336 at M = 16, 256, 4096 on
///              tensor cores, beside "dequantize then cuBLAS": hqq::cuda::dequantize
///              into an f16 [N, K] buffer followed by cublasGemmEx on it, both in
///              every timed call (what a user without our GEMM runs per call);
///   * bf16     bf16 x -> bf16 y at M = 256, 4-bit g64, every sweep shape.
/// The same correctness gate, on the rows the CPU can afford: every row up to
/// M = 64; beyond, the last row and 64 rows spread over M, against a CPU
/// forward of just those rows (the kernels compute rows independently), and
/// every value of y finite; tolerance 1e-3 (f16 x), 8e-3 (bf16 x). The
/// dequantize-then-cuBLAS output is checked the same way. Targets: 4-bit g64
/// M=16 >= 3x cuBLAS fp16 (the faster of our two kernels); 4-bit g64 M >= 256
/// >= 0.9x cuBLAS fp16 (tensor cores); 8/3/2-bit faster than dequantize+cuBLAS
/// at M = 16, 256 and 4096. Fewer samples per measurement than the decode mode
/// (about 3 minutes on an H100; --quick about 1).
///
/// Exit status: 0 every configuration measured and correct; 1 a measurement
/// threw, a check failed or a configuration was not run (misses of
/// performance targets do not count); 2 bad arguments; 77 no usable CUDA
/// device (the JSON says why).

#include <cuda_runtime.h>
#include <fmt/format.h>
#ifdef HQQ_BENCH_HAVE_CUBLAS
#include <cublas_v2.h>
#endif

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "hqq/hqq.hpp"

/// Throws std::runtime_error naming the call, file and line unless `call` returned cudaSuccess.
#define BENCH_CUDA_CHECK(call) ::check_cuda((call), #call, __FILE__, __LINE__)
/// Checks the last launch (asynchronous errors surface at the next synchronisation).
#define BENCH_CHECK_LAUNCH() ::check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
#ifdef HQQ_BENCH_HAVE_CUBLAS
#define BENCH_CUBLAS_CHECK(call) ::check_cublas((call), #call, __FILE__, __LINE__)
#endif

namespace {

void check_cuda(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) {
    throw std::runtime_error(
        fmt::format("{}:{}: {} failed: {} ({})", file, line, what, cudaGetErrorName(e), cudaGetErrorString(e)));
  }
}

#ifdef HQQ_BENCH_HAVE_CUBLAS
void check_cublas(cublasStatus_t s, const char* what, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(fmt::format("{}:{}: {} failed: cuBLAS status {}", file, line, what, static_cast<int>(s)));
  }
}
#endif

using Json = nlohmann::ordered_json;

/// A linear layer's weight [N, K] = [out_features, in_features].
struct LayerShape {
  std::int64_t n = 0, k = 0;
  std::string name() const { return fmt::format("{}x{}", n, k); }
};

// Llama-2-7B (4096 / 11008), Llama-3-8B and Mistral-7B (14336), Llama-2/3-70B (8192 / 28672).
std::vector<LayerShape> g_shapes = {{4096, 4096},  {11008, 4096}, {4096, 11008}, {14336, 4096},
                                    {4096, 14336}, {28672, 8192}, {8192, 28672}};
const std::vector<LayerShape> kSmallShapes = {{256, 256}, {512, 256}, {256, 512}};

struct QuantCase {
  int nbits;
  std::int64_t group;
};
/// Every width at g64, then 4-bit at g32 and g128. 4-bit g64 runs every M.
constexpr QuantCase kCases[] = {{8, 64}, {4, 64}, {3, 64}, {2, 64}, {1, 64}, {4, 32}, {4, 128}};
constexpr std::int64_t kAllM[] = {1, 2, 4, 8, 16};
constexpr std::int64_t kMaxM = 16;
bool all_m(const QuantCase& qc) { return qc.nbits == 4 && qc.group == 64; }

constexpr double kTolerance = 1e-3;        // max relative error per row of y
constexpr double kTargetFrac4 = 0.80;      // 4-bit g64 M=1: fraction of copy
constexpr double kTargetCublas4 = 3.2;     // 4-bit g64 M=1: x cuBLAS fp16
constexpr double kTargetFracOther = 0.70;  // 8/3/2/1-bit g64 M=1
constexpr double kTargetBatch8 = 1.3;      // 4-bit g64: t(M=8) / t(M=1)

// ---------------------------------------------------------------- options

struct Args {
  bool quick = false;
  bool small = false;  // tiny shapes: a check of this program, not a benchmark
  bool graphs = true;
  bool cublas = true;
  bool gemm = false;  // the tensor-core GEMM mode (M sweep, widths vs dequantize+cuBLAS, bf16)
  double l2_factor = 3.0;
  double max_seconds = 0;  // > 0: start no new shape after this long (a time limit of the caller)
  std::string json_path;
  std::string commit;
  std::uint64_t seed = 0;
  std::set<std::string> shapes;  // empty: all
};

constexpr const char* kUsage =
    "usage: bench_linear_cuda [--quick] [--json PATH] [--commit SHA] [--seed N] [--l2-factor F]\n"
    "                         [--shapes NxK,...] [--no-graphs] [--no-cublas] [--small] [--gemm]\n"
    "  --gemm       the tensor-core GEMM mode only: 4-bit g64 M sweep 1..4096 (GEMV, tensor cores,\n"
    "               cuBLAS fp16, crossover), other widths vs dequantize+cuBLAS, bf16 x at M=256\n"
    "  --quick      fewer repetitions (about a third of the time); with --gemm also only the\n"
    "               shapes 4096x4096, 14336x4096, 4096x14336\n"
    "  --json       write every measurement as JSON to PATH\n"
    "  --commit     commit id recorded in the JSON\n"
    "  --seed       seed of the random codes, scales, zeros and activations (default 0)\n"
    "  --l2-factor  rotate among layer copies totalling >= F x L2 bytes (default 3)\n"
    "  --shapes     only these N x K weight shapes, e.g. 4096x4096,28672x8192\n"
    "  --no-graphs  time only calls enqueued one by one (no CUDA graph replay)\n"
    "  --no-cublas  skip the cuBLAS fp16 peer\n"
    "  --max-seconds S  start no new shape after S seconds; what is left is recorded as not run\n"
    "  --small      shapes 256x256, 512x256, 256x512 (checks the program itself; not a benchmark)\n"
    "exit status: 0 all correct and complete, 1 a measurement failed, was wrong or was not run,\n"
    "             2 bad arguments, 77 no CUDA device\n";

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "bench_linear_cuda: %s\n%s", msg.c_str(), kUsage);
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
    if (flag == "--no-graphs") {
      a.graphs = false;
      continue;
    }
    if (flag == "--no-cublas") {
      a.cublas = false;
      continue;
    }
    if (flag == "--gemm") {
      a.gemm = true;
      continue;
    }
    if (const auto eq = flag.find('='); eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag.resize(eq);
    } else if (flag != "--json" && flag != "--commit" && flag != "--seed" && flag != "--l2-factor" &&
               flag != "--shapes" && flag != "--max-seconds") {
      usage_error(fmt::format("unknown option '{}'", flag));
    } else {
      if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", flag));
      value = argv[++i];
    }
    if (flag == "--json") {
      a.json_path = value;
    } else if (flag == "--commit") {
      a.commit = value;
    } else if (flag == "--seed") {
      try {
        a.seed = std::stoull(value);
      } catch (const std::exception&) {
        usage_error(fmt::format("--seed expects an integer, got '{}'", value));
      }
    } else if (flag == "--l2-factor") {
      try {
        a.l2_factor = std::stod(value);
      } catch (const std::exception&) {
        usage_error(fmt::format("--l2-factor expects a number, got '{}'", value));
      }
      if (!(a.l2_factor >= 0.0 && a.l2_factor <= 64.0)) usage_error("--l2-factor must be in [0, 64]");
    } else if (flag == "--max-seconds") {
      try {
        a.max_seconds = std::stod(value);
      } catch (const std::exception&) {
        usage_error(fmt::format("--max-seconds expects a number, got '{}'", value));
      }
    } else if (flag == "--shapes") {
      std::size_t start = 0;
      while (start <= value.size()) {
        const std::size_t end = std::min(value.find(',', start), value.size());
        a.shapes.insert(value.substr(start, end - start));
        start = end + 1;
      }
    } else {
      usage_error(fmt::format("unknown option '{}'", flag));
    }
  }
  if (a.small) g_shapes = kSmallShapes;
  for (const std::string& s : a.shapes) {
    bool known = false;
    for (const auto& sh : g_shapes) known = known || sh.name() == s;
    if (!known) usage_error(fmt::format("--shapes: unknown shape '{}'{}", s, a.small ? " (with --small)" : ""));
  }
  return a;
}

// ---------------------------------------------------------------- device memory and timing
// (the same helpers as bench_cuda.cpp, plus CUDA-graph replay)

/// Owning cudaMalloc'd bytes.
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

struct Policy {
  int reps = 30;               // timed samples (upper bound)
  int min_reps = 5;            // timed samples (lower bound, whatever the budget)
  double sample_ms = 1.0;      // a sample lasts at least this long (k calls)
  double warmup_ms = 20.0;     // warm-up lasts at least this long
  double budget_ms = 300.0;    // timed work per measurement (soft cap on reps)
  int max_graph_calls = 4096;  // calls captured into one graph (at most)
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

void finish_timing(Timing& t) {
  t.median = median_of(t.ms);
  t.min = *std::min_element(t.ms.begin(), t.ms.end());
  t.max = *std::max_element(t.ms.begin(), t.ms.end());
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

int reps_for(const Policy& pol, double sample_ms_est) {
  const int by_budget = static_cast<int>(pol.budget_ms / std::max(sample_ms_est, 1e-4));
  return std::clamp(by_budget, pol.min_reps, pol.reps);
}

/// Times op(set) enqueued call by call on dev.stream, rotating set over [0, sets).
template <class Op>
Timing time_stream(const Device& dev, int sets, const Policy& pol, Op&& op) {
  Timing t;
  t.sets = sets;
  EventPair ev;
  int next = 0;
  auto call = [&] {
    op(next);
    BENCH_CHECK_LAUNCH();
    next = (next + 1) % sets;
  };
  // Warm-up: every set once (module load, first touch), then a timed pass to estimate.
  for (int i = 0; i < sets; ++i) call();
  BENCH_CUDA_CHECK(cudaStreamSynchronize(dev.stream));
  ev.start(dev.stream);
  for (int i = 0; i < sets; ++i) call();
  ev.stop(dev.stream);
  double est = std::max(ev.elapsed_ms() / sets, 1e-4);
  // More warm-up until warmup_ms have passed (clocks up).
  const int extra = static_cast<int>(std::min(4000.0, std::ceil(pol.warmup_ms / est))) - 2 * sets;
  if (extra > 0) {
    ev.start(dev.stream);
    for (int i = 0; i < extra; ++i) call();
    ev.stop(dev.stream);
    est = std::max(ev.elapsed_ms() / extra, 1e-4);
  }
  t.calls_per_sample = static_cast<int>(std::clamp(std::ceil(pol.sample_ms / est), 1.0, 4000.0));
  const int reps = reps_for(pol, est * t.calls_per_sample);
  for (int r = 0; r < reps; ++r) {
    ev.start(dev.stream);
    for (int i = 0; i < t.calls_per_sample; ++i) call();
    ev.stop(dev.stream);
    t.ms.push_back(ev.elapsed_ms() / t.calls_per_sample);
  }
  BENCH_CUDA_CHECK(cudaStreamSynchronize(dev.stream));
  finish_timing(t);
  return t;
}

/// Owning CUDA graph and its executable instance.
struct Graph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  Graph() = default;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  ~Graph() {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
    if (graph != nullptr) cudaGraphDestroy(graph);
  }
};

/// Times op(set) captured into one CUDA graph of k calls (k a multiple of `sets`,
/// so every replay starts on the copy least recently used) and replayed.
/// `est_ms`: a per-call estimate (from the stream timing). Throws when the
/// capture fails (the stream is left out of capture mode).
template <class Op>
Timing time_graph(const Device& dev, int sets, const Policy& pol, double est_ms, Op&& op) {
  Timing t;
  t.sets = sets;
  // Twice the calls the stream estimate asks for: replayed calls are usually faster
  // (no host overhead), and a replay should still last >= sample_ms.
  int k = static_cast<int>(std::clamp(std::ceil(2.0 * pol.sample_ms / std::max(est_ms, 1e-4)), 1.0,
                                      static_cast<double>(pol.max_graph_calls)));
  k = std::max(sets, (k + sets - 1) / sets * sets);
  t.calls_per_sample = k;

  Graph g;
  BENCH_CUDA_CHECK(cudaStreamBeginCapture(dev.stream, cudaStreamCaptureModeThreadLocal));
  try {
    for (int i = 0; i < k; ++i) {
      op(i % sets);
      BENCH_CHECK_LAUNCH();
    }
  } catch (...) {
    cudaGraph_t partial = nullptr;
    cudaStreamEndCapture(dev.stream, &partial);  // leave capture mode whatever happened
    if (partial != nullptr) cudaGraphDestroy(partial);
    cudaGetLastError();
    throw;
  }
  // A capture the calls invalidated fails here; clear the error it left, so that
  // the next check of a launch does not report it again.
  if (const cudaError_t e = cudaStreamEndCapture(dev.stream, &g.graph); e != cudaSuccess) {
    cudaGetLastError();
    check_cuda(e, "cudaStreamEndCapture", __FILE__, __LINE__);
  }
  if (const cudaError_t e = cudaGraphInstantiate(&g.exec, g.graph, 0); e != cudaSuccess) {
    cudaGetLastError();
    check_cuda(e, "cudaGraphInstantiate", __FILE__, __LINE__);
  }

  EventPair ev;
  // Warm-up: one replay (uploads the graph), then replays until warmup_ms have passed.
  BENCH_CUDA_CHECK(cudaGraphLaunch(g.exec, dev.stream));
  BENCH_CUDA_CHECK(cudaStreamSynchronize(dev.stream));
  ev.start(dev.stream);
  BENCH_CUDA_CHECK(cudaGraphLaunch(g.exec, dev.stream));
  ev.stop(dev.stream);
  const double replay_ms = std::max(ev.elapsed_ms(), 1e-4);
  const int warm = static_cast<int>(std::min(200.0, std::ceil(pol.warmup_ms / replay_ms)));
  for (int i = 0; i < warm; ++i) BENCH_CUDA_CHECK(cudaGraphLaunch(g.exec, dev.stream));
  const int reps = reps_for(pol, replay_ms);
  for (int r = 0; r < reps; ++r) {
    ev.start(dev.stream);
    BENCH_CUDA_CHECK(cudaGraphLaunch(g.exec, dev.stream));
    ev.stop(dev.stream);
    t.ms.push_back(ev.elapsed_ms() / k);
  }
  BENCH_CUDA_CHECK(cudaStreamSynchronize(dev.stream));
  finish_timing(t);
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

/// Both timings of one operation; "method"/"median_ms" is the graph timing when
/// it worked, else the stream timing.
template <class Op>
Json measure(const Device& dev, int sets, const Policy& pol, bool graphs, Op&& op) {
  Json j;
  const Timing ts = time_stream(dev, sets, pol, op);
  j["stream"] = timing_json(ts);
  double ms = ts.median, min = ts.min;
  std::string method = "stream";
  if (graphs) {
    try {
      const Timing tg = time_graph(dev, sets, pol, ts.median, op);
      j["graph"] = timing_json(tg);
      ms = tg.median;
      min = tg.min;
      method = "graph";
    } catch (const std::exception& e) {
      j["graph"] = {{"error", e.what()}};
    }
  }
  j["method"] = method;
  j["median_ms"] = ms;
  j["min_ms"] = min;
  return j;
}

double gbps(double bytes, double ms) { return ms > 0 ? bytes / (ms * 1e-3) / 1e9 : 0.0; }

/// How many copies of a working set of `bytes` to rotate among: their total
/// reaches factor x L2 (at least 2, at most 256).
int rotation_sets(const Device& dev, double factor, std::size_t bytes) {
  const double target = factor * static_cast<double>(std::max<std::size_t>(dev.l2_bytes, 1));
  const double n = std::ceil(target / static_cast<double>(std::max<std::size_t>(bytes, 1)));
  return static_cast<int>(std::clamp(n, 2.0, 256.0));
}

template <class T>
std::vector<T> download(const void* src, std::size_t count, cudaStream_t stream) {
  std::vector<T> v(count);
  BENCH_CUDA_CHECK(cudaMemcpyAsync(v.data(), src, count * sizeof(T), cudaMemcpyDeviceToHost, stream));
  BENCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  return v;
}

// ---------------------------------------------------------------- inputs

/// splitmix64: a fast generator, seeded per row so rows are made in parallel.
struct SplitMix {
  std::uint64_t s;
  explicit SplitMix(std::uint64_t seed) : s(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

std::uint64_t row_seed(std::uint64_t seed, std::uint64_t salt, std::int64_t row) {
  return (seed * 0x2545f4914f6cdd1dULL) ^ (salt * 0x9e3779b97f4a7c15ULL) ^ static_cast<std::uint64_t>(row + 1);
}

/// A [n, k] weight quantized along axis 1 with `group`: uniform random codes
/// (hqq::pack), scale and zero random per group and exact in f16.
hqq::QuantizedTensor make_quantized(const LayerShape& s, int nbits, std::int64_t group, std::uint64_t seed) {
  hqq::QuantConfig cfg;
  cfg.nbits = nbits;
  cfg.group_size = group;
  cfg.axis = 1;
  cfg.solver = hqq::Solver::kNone;
  cfg.scale_dtype = hqq::DType::kF16;
  cfg.validate();
  hqq::QuantizedTensor q = hqq::QuantizedTensor::with_metadata({s.n, s.k}, cfg);
  const hqq::GroupedView gv = q.view();  // axis 1: [n * k / group, group], the weight's own order
  const std::int64_t rows = gv.rows(), cols = gv.cols();
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(s.n * s.k));
  const std::uint64_t mask = (nbits == 8) ? 0xFF : ((1u << nbits) - 1u);
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < s.n; ++r) {
    SplitMix rng(row_seed(seed, 1000 + static_cast<std::uint64_t>(nbits), r));
    std::uint8_t* row = codes.data() + r * s.k;
    for (std::int64_t j = 0; j < s.k; j += 8) {
      std::uint64_t bits = rng.next();
      for (std::int64_t b = 0; b < 8 && j + b < s.k; ++b, bits >>= 8)
        row[j + b] = static_cast<std::uint8_t>(bits & mask);
    }
  }
  q.packed.assign(static_cast<std::size_t>(hqq::packed_bytes(nbits, rows, cols)), 0);
  hqq::pack(nbits, codes.data(), rows, cols, q.packed.data());
  const std::int64_t groups = q.num_groups();
  q.scale.resize(static_cast<std::size_t>(groups));
  q.zero.resize(static_cast<std::size_t>(groups));
  const double levels = static_cast<double>((1 << nbits) - 1);
  const double step = 0.04 / levels;  // a weight range of about 0.04 per group
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < s.n; ++r) {
    SplitMix rng(row_seed(seed, 2000 + static_cast<std::uint64_t>(nbits), r));
    for (std::int64_t g = r * (s.k / group); g < (r + 1) * (s.k / group); ++g) {
      q.scale[g] = static_cast<float>(hqq::half(static_cast<float>(step * (0.5 + rng.uniform()))));
      q.zero[g] = static_cast<float>(hqq::half(static_cast<float>(levels * rng.uniform())));
    }
  }
  q.validate();
  return q;
}

/// [rows, cols] f16 values uniform in [-amp, amp], never exactly zero.
std::vector<hqq::half> random_half(std::int64_t rows, std::int64_t cols, double amp, std::uint64_t seed,
                                   std::uint64_t salt) {
  std::vector<hqq::half> v(static_cast<std::size_t>(rows * cols));
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    SplitMix rng(row_seed(seed, salt, r));
    for (std::int64_t c = 0; c < cols; ++c) {
      hqq::half h(static_cast<float>(amp * (2.0 * rng.uniform() - 1.0)));
      if ((h.bits & 0x7fffu) == 0) h = hqq::half(static_cast<float>(amp * 1e-3));
      v[static_cast<std::size_t>(r * cols + c)] = h;
    }
  }
  return v;
}

/// Activations x [kMaxM, k] (the first M rows are used), the same for every layer of width k.
std::vector<hqq::half> make_x(std::int64_t k, std::uint64_t seed) { return random_half(kMaxM, k, 1.0, seed, 7); }

struct CheckResult {
  double max_rel_err = 0;  // over rows
  bool finite = true;
  bool ok() const { return finite && max_rel_err <= kTolerance; }
};

/// Per row ||y - ref|| / ||ref||, y f16 from the device, ref f32 from the CPU.
CheckResult compare_rows(const std::vector<std::uint16_t>& y, const std::vector<float>& ref, std::int64_t m,
                         std::int64_t n) {
  CheckResult c;
  for (std::int64_t r = 0; r < m; ++r) {
    double num = 0, den = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const double g = hqq::half_bits_to_float(y[static_cast<std::size_t>(r * n + j)]);
      const double e = ref[static_cast<std::size_t>(r * n + j)];
      if (!std::isfinite(g)) c.finite = false;
      num += (g - e) * (g - e);
      den += e * e;
    }
    const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    c.max_rel_err = std::isnan(rel) ? INFINITY : std::max(c.max_rel_err, rel);
  }
  if (!c.finite) c.max_rel_err = INFINITY;
  return c;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// ---------------------------------------------------------------- the parts

struct Context {
  Args args;
  Device dev;
  Policy pol;
  double copy_gbps = 0;
  /// cuBLAS fp16 headline ms per (shape, M); absent when not measured.
  std::map<std::pair<std::string, std::int64_t>, double> cublas_ms;
  Json out;
  int failures = 0;                     // measurements that threw, checks that failed
  int not_run = 0;                      // configurations skipped for --max-seconds
  std::int64_t tensor_core_min_m = -1;  // --gemm: QuantizedLinear::tensor_core_min_m() of the layers (-1: none built)
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();

  /// Whether --max-seconds is spent (then no new shape starts).
  bool out_of_time() const {
    return args.max_seconds > 0 &&
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > args.max_seconds;
  }
};

/// Records a configuration skipped for --max-seconds.
void not_run(Context& c, Json& rows, Json key) {
  ++c.not_run;
  key["status"] = "not run";
  key["error"] = fmt::format("not run: --max-seconds {} spent", c.args.max_seconds);
  rows.push_back(std::move(key));
}

/// Runs one measurement; an exception is recorded (a JSON row with "error" and
/// a line on stdout) and the run goes on with the next one.
template <class F>
void guarded(Context& c, Json& rows, Json key, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    ++c.failures;
    fmt::print("ERROR {}: {}\n", key.dump(), e.what());
    key["status"] = "error";
    key["error"] = e.what();
    std::fflush(stdout);
    rows.push_back(std::move(key));
  }
}

double fraction_of_copy(const Context& c, double g) { return c.copy_gbps > 0 ? g / c.copy_gbps : 0.0; }

bool write_json(const Json& j, const std::string& path) {
  std::ofstream f(path);
  f << j.dump(2) << "\n";
  return static_cast<bool>(f);
}

/// Writes what has been measured so far ("complete": false), so that a run cut
/// short (a time limit) still leaves its numbers; main() writes the final file.
void checkpoint(Context& c) {
  if (c.args.json_path.empty()) return;
  c.out["complete"] = false;
  write_json(c.out, c.args.json_path);
}

void run_copy(Context& c) {
  const std::size_t bytes = std::size_t{1} << (c.args.small ? 24 : 30);  // 1 GiB each way
  Mem src(bytes), dst(bytes);
  BENCH_CUDA_CHECK(cudaMemsetAsync(src.get(), 0x5a, bytes, c.dev.stream));  // not zeros
  BENCH_CUDA_CHECK(cudaMemsetAsync(dst.get(), 0xa5, bytes, c.dev.stream));
  Policy pol = c.pol;
  pol.sample_ms = 0;  // one 1 GiB copy (~0.7 ms) per sample
  pol.reps = c.args.quick ? 20 : 50;
  pol.min_reps = pol.reps;
  const Timing t = time_stream(c.dev, 1, pol, [&](int) {
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
      "(the ceiling for the fractions below)\n\n",
      bytes >> 20, t.median, t.min, c.copy_gbps);
}

/// `sets` device copies of one random f16 weight [N, K] (the same values for
/// every cuBLAS measurement of the shape), queued on the context's stream.
std::vector<Mem> fp16_weight_copies(const Context& c, const LayerShape& s, int sets) {
  const std::size_t wbytes = static_cast<std::size_t>(s.n * s.k) * 2;
  std::vector<Mem> w;
  const auto host = random_half(s.n, s.k, 0.05, c.args.seed, 11);
  w.emplace_back(wbytes);
  BENCH_CUDA_CHECK(cudaMemcpy(w[0].get(), host.data(), wbytes, cudaMemcpyHostToDevice));
  for (int i = 1; i < sets; ++i) {
    w.emplace_back(wbytes);
    BENCH_CUDA_CHECK(cudaMemcpyAsync(w[i].get(), w[0].get(), wbytes, cudaMemcpyDeviceToDevice, c.dev.stream));
  }
  return w;
}

void run_cublas(Context& c) {
  Json j;
#ifndef HQQ_BENCH_HAVE_CUBLAS
  j["available"] = false;
  j["error"] = "built without cuBLAS (CMake found no CUDA::cublas)";
  fmt::print("cuBLAS fp16: not measured ({})\n\n", j["error"].get<std::string>());
#else
  if (!c.args.cublas) {
    j["available"] = false;
    j["error"] = "skipped (--no-cublas)";
    c.out["cublas_fp16"] = j;
    return;
  }
  j["available"] = true;
  int version = 0;
  cublasHandle_t handle = nullptr;
  Json rows = Json::array();
  try {
    BENCH_CUBLAS_CHECK(cublasCreate(&handle));
    BENCH_CUBLAS_CHECK(cublasGetVersion(handle, &version));
    BENCH_CUBLAS_CHECK(cublasSetStream(handle, c.dev.stream));
  } catch (const std::exception& e) {
    if (handle != nullptr) cublasDestroy(handle);
    j["available"] = false;
    j["error"] = e.what();
    c.out["cublas_fp16"] = j;
    fmt::print("cuBLAS fp16: not measured ({})\n\n", e.what());
    return;
  }
  j["version"] = version;
  j["call"] =
      "cublasGemmEx(OP_T, OP_N, N, M, K, W f16 [N,K], x f16 [M,K], y f16 [M,N], CUBLAS_COMPUTE_32F, "
      "CUBLAS_GEMM_DEFAULT), 32 MiB workspace (cublasSetWorkspace)";
  // A workspace of our own: cuBLAS then allocates nothing inside a graph capture.
  const Mem workspace(32u << 20);
  BENCH_CUBLAS_CHECK(cublasSetWorkspace(handle, workspace.get(), workspace.size()));
  fmt::print("cuBLAS {} fp16 y = x W^T (GemmEx, f32 accumulation); GB/s = 2 N K / time\n", version);
  fmt::print("{:<12} {:>3} {:>5} {:>10} {:>10} {:>8} {:>7}\n", "N x K", "M", "sets", "graph us", "stream us", "GB/s",
             "x copy");
  for (const LayerShape& s : g_shapes) {
    if (!c.args.shapes.empty() && c.args.shapes.count(s.name()) == 0) continue;
    if (c.out_of_time()) {
      not_run(c, rows, {{"n", s.n}, {"k", s.k}});
      continue;
    }
    guarded(c, rows, {{"n", s.n}, {"k", s.k}}, [&] {
      const std::size_t wbytes = static_cast<std::size_t>(s.n * s.k) * 2;
      const int sets = rotation_sets(c.dev, c.args.l2_factor, wbytes);
      const std::vector<Mem> w = fp16_weight_copies(c, s, sets);
      const auto xh = make_x(s.k, c.args.seed);
      Mem x(xh.size() * 2), y(static_cast<std::size_t>(kMaxM * s.n) * 2);
      BENCH_CUDA_CHECK(cudaMemcpy(x.get(), xh.data(), x.size(), cudaMemcpyHostToDevice));
      BENCH_CUDA_CHECK(cudaStreamSynchronize(c.dev.stream));
      for (std::int64_t m : kAllM) {
        const float alpha = 1.0f, beta = 0.0f;
        auto op = [&](int set) {
          // Column-major: y^T [N, M] = W [K, N]^T x^T [K, M].
          BENCH_CUBLAS_CHECK(cublasGemmEx(
              handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(s.n), static_cast<int>(m), static_cast<int>(s.k),
              &alpha, w[set].get(), CUDA_R_16F, static_cast<int>(s.k), x.get(), CUDA_R_16F, static_cast<int>(s.k),
              &beta, y.get(), CUDA_R_16F, static_cast<int>(s.n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        };
        Json r = measure(c.dev, sets, c.pol, c.args.graphs, op);
        const double ms = r["median_ms"].get<double>();
        const double g = gbps(static_cast<double>(wbytes), ms);
        Json row;
        row["n"] = s.n;
        row["k"] = s.k;
        row["m"] = m;
        row["weight_bytes"] = wbytes;
        row.update(r);
        row["gbps"] = g;
        row["fraction_of_copy"] = fraction_of_copy(c, g);
        row["tflops"] = 2.0 * static_cast<double>(m * s.n * s.k) / (ms * 1e-3) / 1e12;
        rows.push_back(row);
        c.cublas_ms[{s.name(), m}] = ms;
        const double gms =
            r.contains("graph") && r["graph"].contains("median_ms") ? r["graph"]["median_ms"].get<double>() : NAN;
        fmt::print("{:<12} {:>3} {:>5} {:>10.2f} {:>10.2f} {:>8.0f} {:>7.3f}\n", s.name(), m, sets, gms * 1e3,
                   r["stream"]["median_ms"].get<double>() * 1e3, g, fraction_of_copy(c, g));
        std::fflush(stdout);
      }
    });
  }
  cublasDestroy(handle);
  j["rows"] = rows;
  fmt::print("\n");
#endif
  c.out["cublas_fp16"] = j;
}

/// One QuantizedLinear configuration: the layer, its rotation copies, the CPU
/// oracle; every M of the case is checked and timed.
void run_linear_case(Context& c, const LayerShape& s, const QuantCase& qc, Json& rows) {
  const std::uint64_t seed = c.args.seed + static_cast<std::uint64_t>(s.n * 131 + s.k);
  const hqq::QuantizedTensor q = make_quantized(s, qc.nbits, qc.group, seed);

  hqq::LinearOptions gpu_opt;
  gpu_opt.backend = "cuda";
  const hqq::QuantizedLinear layer(q, {}, gpu_opt);
  hqq::LinearOptions cpu_opt;
  cpu_opt.backend = "cpu";
  const hqq::QuantizedLinear oracle(q, {}, cpu_opt);

  const std::int64_t wbytes = layer.weight_bytes();
  const int sets = rotation_sets(c.dev, c.args.l2_factor, static_cast<std::size_t>(wbytes));
  // Copies 1..sets-1: more device copies of the same kernel layout, made as the constructor makes its own.
  const hqq::Backend& be = hqq::get_backend("cuda");
  std::vector<std::unique_ptr<hqq::detail::LinearKernel>> copies;
  for (int i = 1; i < sets; ++i) copies.push_back(be.make_linear(layer.layout(), gpu_opt));
  BENCH_CUDA_CHECK(cudaDeviceSynchronize());

  const auto xh = make_x(s.k, c.args.seed);
  std::vector<float> xf(xh.size());
  for (std::size_t i = 0; i < xh.size(); ++i) xf[i] = static_cast<float>(xh[i]);
  Mem x(xh.size() * 2), y(static_cast<std::size_t>(kMaxM * s.n) * 2);
  BENCH_CUDA_CHECK(cudaMemcpy(x.get(), xh.data(), x.size(), cudaMemcpyHostToDevice));

  for (std::int64_t m : kAllM) {
    if (m > 1 && !all_m(qc)) break;
    Json key = {{"n", s.n}, {"k", s.k}, {"m", m}, {"nbits", qc.nbits}, {"group_size", qc.group}};
    guarded(c, rows, key, [&] {
      const hqq::TensorView xv{x.get(), {m, s.k}, hqq::DType::kF16};
      const hqq::MutableTensorView yv{y.get(), {m, s.n}, hqq::DType::kF16};
      hqq::ForwardOptions fo;
      fo.stream = c.dev.stream;
      const std::size_t ybytes = static_cast<std::size_t>(m * s.n) * 2;

      // The CPU oracle on the same x (f32).
      std::vector<float> ref(static_cast<std::size_t>(m * s.n));
      oracle.forward(hqq::TensorView{xf.data(), {m, s.k}, hqq::DType::kF32},
                     hqq::MutableTensorView{ref.data(), {m, s.n}, hqq::DType::kF32});

      // Correctness first: y poisoned with NaNs (0xffff), one forward, compared.
      BENCH_CUDA_CHECK(cudaMemsetAsync(y.get(), 0xff, ybytes, c.dev.stream));
      layer.forward(xv, yv, fo);
      BENCH_CHECK_LAUNCH();
      const CheckResult first = compare_rows(download<std::uint16_t>(y.get(), ybytes / 2, c.dev.stream), ref, m, s.n);

      auto op = [&](int set) {
        if (set == 0) {
          layer.forward(xv, yv, fo);
        } else {
          copies[static_cast<std::size_t>(set - 1)]->forward(xv, yv, m, fo);
        }
      };
      Json r;
      CheckResult timed;
      if (first.ok()) {
        BENCH_CUDA_CHECK(cudaMemsetAsync(y.get(), 0xff, ybytes, c.dev.stream));
        r = measure(c.dev, sets, c.pol, c.args.graphs, op);
        // The output the timed calls left (the last ran on the last copy).
        timed = compare_rows(download<std::uint16_t>(y.get(), ybytes / 2, c.dev.stream), ref, m, s.n);
      }
      const bool ok = first.ok() && timed.ok();
      Json row = key;
      row["weight_bytes"] = wbytes;
      row["bits_per_weight"] = q.bits_per_weight();
      row["path"] = layer.path() == hqq::detail::LinearPath::kPacked ? "packed" : "dense";
      row["rotating_sets"] = sets;
      row["check"] = {{"max_rel_err_row", first.max_rel_err},
                      {"finite", first.finite},
                      {"timed_max_rel_err_row", first.ok() ? Json(timed.max_rel_err) : Json(nullptr)},
                      {"tolerance", kTolerance},
                      {"ok", ok}};
      row["status"] = ok ? "ok" : "FAILED";
      if (!ok) {
        ++c.failures;
        rows.push_back(row);
        fmt::print(
            "{:<12} {:>2} {:>4} {:>3} {:>5}   FAILED: max rel. error per row {:.3e} (timed output {}), "
            "tolerance {:.0e}\n",
            s.name(), qc.nbits, qc.group, m, sets, first.max_rel_err,
            first.ok() ? fmt::format("{:.3e}", timed.max_rel_err) : std::string("not run"), kTolerance);
        std::fflush(stdout);
        return;
      }
      row.update(r);
      const double ms = r["median_ms"].get<double>();
      const double g = gbps(static_cast<double>(wbytes), ms);
      row["gbps"] = g;
      row["gbps_best"] = gbps(static_cast<double>(wbytes), r["min_ms"].get<double>());
      row["fraction_of_copy"] = fraction_of_copy(c, g);
      const auto cb = c.cublas_ms.find({s.name(), m});
      row["cublas_fp16_ms"] = cb == c.cublas_ms.end() ? Json(nullptr) : Json(cb->second);
      row["speedup_vs_cublas_fp16"] = cb == c.cublas_ms.end() ? Json(nullptr) : Json(cb->second / ms);
      rows.push_back(row);
      const double gms =
          r.contains("graph") && r["graph"].contains("median_ms") ? r["graph"]["median_ms"].get<double>() : NAN;
      fmt::print(
          "{:<12} {:>2} {:>4} {:>3} {:>5} {:>9.2f} {:>9.2f} {:>7.0f} {:>7.3f} {:>7} {:>9.2e}\n", s.name(), qc.nbits,
          qc.group, m, sets, gms * 1e3, r["stream"]["median_ms"].get<double>() * 1e3, g, fraction_of_copy(c, g),
          cb == c.cublas_ms.end() ? std::string("-") : fmt::format("{:.2f}", cb->second / ms), first.max_rel_err);
      std::fflush(stdout);
    });
  }
  copies.clear();  // before `layer`, whose layout they read
}

void run_linear(Context& c) {
  Json rows = Json::array();
  fmt::print(
      "QuantizedLinear (cuda) f16 x [M, K] -> f16 y [M, N]; GB/s = weight_bytes() / time; x cuBLAS = cuBLAS fp16 "
      "time / ours; check: max rel. error per row vs the CPU QuantizedLinear (<= {:.0e})\n",
      kTolerance);
  fmt::print("{:<12} {:>2} {:>4} {:>3} {:>5} {:>9} {:>9} {:>7} {:>7} {:>7} {:>9}\n", "N x K", "b", "g", "M", "sets",
             "graph us", "strm us", "GB/s", "x copy", "x cuBL", "rel err");
  for (const LayerShape& s : g_shapes) {
    if (!c.args.shapes.empty() && c.args.shapes.count(s.name()) == 0) continue;
    const bool late = c.out_of_time();
    for (const QuantCase& qc : kCases) {
      Json key = {{"n", s.n}, {"k", s.k}, {"nbits", qc.nbits}, {"group_size", qc.group}};
      if (late) {
        not_run(c, rows, key);
        continue;
      }
      guarded(c, rows, key, [&] { run_linear_case(c, s, qc, rows); });
    }
    c.out["linear"] = rows;
    checkpoint(c);
  }
  c.out["linear"] = rows;
  fmt::print("\n");
}

/// DESIGN.md section 6 targets against the cuBLAS of this run (compare_linear_gpu.py
/// recomputes them with the PyTorch peers as well).
void report_targets(Context& c) {
  const Json& rows = c.out["linear"];
  auto find = [&](const LayerShape& s, int nbits, std::int64_t group, std::int64_t m) -> const Json* {
    for (const auto& r : rows) {
      // A row without "m" is an error of the whole configuration (every M).
      if (r.value("n", 0) == s.n && r.value("k", 0) == s.k && r.value("nbits", 0) == nbits &&
          r.value("group_size", 0) == group && (!r.contains("m") || r["m"] == m)) {
        return &r;
      }
    }
    return nullptr;
  };
  auto ok = [](const Json* r) { return r != nullptr && r->value("status", "") == "ok"; };
  auto skipped = [](const Json* r) { return r != nullptr && r->value("status", "") == "not run"; };
  Json targets = Json::array();
  // FAILED when a row it needs failed, NO DATA when one is missing or the value
  // could not be computed, else PASS / MISS.
  auto add = [&](std::string what, std::initializer_list<const Json*> need, double value, const char* unit, bool pass) {
    bool failed = false, missing = std::isnan(value);
    for (const Json* r : need) {
      failed = failed || (r != nullptr && !ok(r) && !skipped(r));
      missing = missing || r == nullptr || skipped(r);
    }
    const std::string verdict = failed ? "FAILED" : missing ? "NO DATA" : pass ? "PASS" : "MISS";
    const std::string shown = failed || missing ? "-" : fmt::format("{:.2f}{}", value, unit);
    fmt::print("  {:<7} {} ({})\n", verdict, what, shown);
    targets.push_back({{"what", std::move(what)}, {"value", shown}, {"verdict", verdict}});
  };
  auto frac = [&](const Json* r) { return ok(r) ? 100 * (*r)["fraction_of_copy"].get<double>() : NAN; };
  fmt::print("targets (DESIGN.md section 6; x cuBLAS from this run's cuBLAS):\n");
  for (const LayerShape& s : g_shapes) {
    if (!c.args.shapes.empty() && c.args.shapes.count(s.name()) == 0) continue;
    const Json* r4 = find(s, 4, 64, 1);
    const double f4 = frac(r4);
    add(fmt::format("{} 4-bit g64 M=1 >= {:.0f} % of copy", s.name(), 100 * kTargetFrac4), {r4}, f4, " %",
        f4 >= 100 * kTargetFrac4);
    const double x4 =
        ok(r4) && (*r4)["speedup_vs_cublas_fp16"].is_number() ? (*r4)["speedup_vs_cublas_fp16"].get<double>() : NAN;
    add(fmt::format("{} 4-bit g64 M=1 >= {:.1f}x cuBLAS fp16", s.name(), kTargetCublas4), {r4}, x4, "x",
        x4 >= kTargetCublas4);
    for (int b : {8, 3, 2, 1}) {
      const Json* r = find(s, b, 64, 1);
      const double f = frac(r);
      add(fmt::format("{} {}-bit g64 M=1 >= {:.0f} % of copy", s.name(), b, 100 * kTargetFracOther), {r}, f, " %",
          f >= 100 * kTargetFracOther);
    }
    const Json* r8 = find(s, 4, 64, 8);
    const double ratio = ok(r4) && ok(r8) ? (*r8)["median_ms"].get<double>() / (*r4)["median_ms"].get<double>() : NAN;
    add(fmt::format("{} 4-bit g64 time(M=8) <= {:.1f}x time(M=1)", s.name(), kTargetBatch8), {r4, r8}, ratio, "x",
        ratio <= kTargetBatch8);
  }
  c.out["targets"] = targets;
  fmt::print("\n");
}

// ---------------------------------------------------------------- --gemm: the tensor-core GEMM
//
// A mode of its own (the decode benchmark above does not run): per shape, cuBLAS
// fp16 and the 4-bit g64 sweep over M (GEMV up to kGemvMaxM, tensor cores at
// every M), on the width shapes the other widths and groups beside
// dequantize-then-cuBLAS, and bf16 x once; then the crossover and the targets.

constexpr std::int64_t kGemmM[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096};
constexpr std::int64_t kGemmMaxM = 4096;
constexpr std::int64_t kGemvMaxM = 64;  // the GEMV is timed up to here (it is slow beyond)
constexpr std::int64_t kWidthM[] = {16, 256, 4096};
constexpr QuantCase kWidthCases[] = {{8, 64}, {3, 64}, {2, 64}, {4, 32}, {4, 128}};
constexpr std::int64_t kBf16M = 256;
constexpr double kToleranceBf16 = 8e-3;   // bf16 x (and y): 8 significant bits
constexpr std::int64_t kSpreadRows = 64;  // rows checked per M > kGemvMaxM, spread over M
constexpr double kTargetGemm16 = 3.0;     // 4-bit g64 M=16: x cuBLAS fp16 (the faster of our kernels)
constexpr double kTargetGemmLarge = 0.9;  // 4-bit g64 M >= kLargeM: x cuBLAS fp16 (tensor cores)
constexpr std::int64_t kLargeM = 256;
const char* const kWidthShapeNames[] = {"4096x4096", "14336x4096", "4096x14336"};

/// Fewer samples than the decode mode: about 300 measurements, some of milliseconds each.
Policy gemm_policy(bool quick) {
  Policy p;
  p.reps = quick ? 10 : 20;
  p.min_reps = 3;
  p.warmup_ms = quick ? 5 : 10;
  p.budget_ms = quick ? 60 : 120;
  return p;
}

bool gemm_selected(const Context& c, const LayerShape& s) {
  return c.args.shapes.empty() || c.args.shapes.count(s.name()) > 0;
}
/// The shapes of the widths part (every shape with --small).
bool width_shape(const Context& c, const LayerShape& s) {
  if (c.args.small) return true;
  for (const char* name : kWidthShapeNames) {
    if (s.name() == name) return true;
  }
  return false;
}
/// The shapes of the sweep: all, with --quick only the width shapes.
bool sweep_shape(const Context& c, const LayerShape& s) {
  return gemm_selected(c, s) && (!c.args.quick || width_shape(c, s));
}

const char* kernel_name(hqq::LinearKernelChoice k) {
  return k == hqq::LinearKernelChoice::kGemv             ? "gemv"
         : k == hqq::LinearKernelChoice::kTensorCore     ? "tensor_core"
         : k == hqq::LinearKernelChoice::kTensorCoreTma  ? "tensor_core_tma"
         : k == hqq::LinearKernelChoice::kTensorCoreMmaSync ? "tensor_core_mma_sync"
                                                         : "auto";
}

double tflops(std::int64_t m, const LayerShape& s, double ms) {
  return ms > 0
             ? 2.0 * static_cast<double>(m) * static_cast<double>(s.n) * static_cast<double>(s.k) / (ms * 1e-3) / 1e12
             : 0.0;
}

/// One cuBLAS handle for the --gemm mode, with a workspace of ours (so that
/// cuBLAS allocates nothing inside a graph capture); `error` says why there is none.
struct Cublas {
  std::string error;
  int version = 0;
  Mem workspace;
#ifdef HQQ_BENCH_HAVE_CUBLAS
  cublasHandle_t handle = nullptr;
#endif
  Cublas() = default;
  Cublas(const Cublas&) = delete;
  Cublas& operator=(const Cublas&) = delete;
  ~Cublas() {
#ifdef HQQ_BENCH_HAVE_CUBLAS
    if (handle != nullptr) cublasDestroy(handle);  // before the workspace (a member) is freed
#endif
  }
  bool ok() const { return error.empty(); }

  void init(const Context& c) {
#ifndef HQQ_BENCH_HAVE_CUBLAS
    (void)c;
    error = "built without cuBLAS (CMake found no CUDA::cublas)";
#else
    if (!c.args.cublas) {
      error = "skipped (--no-cublas)";
      return;
    }
    try {
      BENCH_CUBLAS_CHECK(cublasCreate(&handle));
      BENCH_CUBLAS_CHECK(cublasGetVersion(handle, &version));
      BENCH_CUBLAS_CHECK(cublasSetStream(handle, c.dev.stream));
      workspace = Mem(32u << 20);
      BENCH_CUBLAS_CHECK(cublasSetWorkspace(handle, workspace.get(), workspace.size()));
    } catch (const std::exception& e) {
      error = e.what();
    }
#endif
  }

  /// y [m, n] = x [m, k] W [n, k]^T, f16 in and out, f32 accumulation, on the stream set in init().
  void gemm(const void* w, const void* x, void* y, std::int64_t n, std::int64_t m, std::int64_t k) const {
    if (!ok()) throw std::runtime_error("cuBLAS not available: " + error);
#ifdef HQQ_BENCH_HAVE_CUBLAS
    const float alpha = 1.0f, beta = 0.0f;
    // Column-major: y^T [N, M] = W [K, N]^T x^T [K, M].
    BENCH_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                                    static_cast<int>(k), &alpha, w, CUDA_R_16F, static_cast<int>(k), x, CUDA_R_16F,
                                    static_cast<int>(k), &beta, y, CUDA_R_16F, static_cast<int>(n), CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
#else
    (void)w, (void)x, (void)y, (void)n, (void)m, (void)k;
#endif
  }
};

/// One shape's activations and output, shared by the configurations measured on it.
struct GemmInputs {
  LayerShape s;
  std::int64_t mmax = 0;
  std::vector<hqq::half> xh;      // host f16 x [mmax, K] (its first 16 rows are make_x()'s)
  Mem x;                          // device copy of xh
  Mem y;                          // device [mmax, N], 2 bytes an element (f16 or bf16)
  std::vector<std::uint16_t> yh;  // host staging of y for the checks
};

GemmInputs make_inputs(const Context& c, const LayerShape& s, std::int64_t mmax) {
  GemmInputs in;
  in.s = s;
  in.mmax = mmax;
  in.xh = random_half(mmax, s.k, 1.0, c.args.seed, 7);
  in.x = Mem(in.xh.size() * 2);
  BENCH_CUDA_CHECK(cudaMemcpy(in.x.get(), in.xh.data(), in.x.size(), cudaMemcpyHostToDevice));
  in.y = Mem(static_cast<std::size_t>(mmax * s.n) * 2);
  return in;
}

/// The rows of y the checks compare with the CPU oracle when the M of `ms` are
/// measured: every row below kGemvMaxM, and for each larger M its last row and
/// kSpreadRows rows spread over it (one per slice, at varying offsets).
std::vector<std::int64_t> check_rows(const std::vector<std::int64_t>& ms) {
  std::set<std::int64_t> rows;
  for (const std::int64_t m : ms) {
    for (std::int64_t r = 0; r < std::min(m, kGemvMaxM); ++r) rows.insert(r);
    if (m <= kGemvMaxM) continue;
    rows.insert(m - 1);
    const std::int64_t slice = m / kSpreadRows;  // >= 1
    for (std::int64_t i = 0; i < kSpreadRows; ++i) rows.insert(i * slice + (i * 37 + 11) % slice);
  }
  return {rows.begin(), rows.end()};
}

/// The CPU oracle's y for some rows of x.
struct Reference {
  std::vector<std::int64_t> rows;  // ascending
  std::vector<float> y;            // [rows.size(), N]
};

/// The CPU QuantizedLinear on rows `rows` of in.xh (f32; rounded to bf16 first when `bf16`).
/// The GPU kernels compute every output row from its own x row only, so a forward of
/// just these rows is the reference of the same rows of a larger M.
Reference reference(const hqq::QuantizedLinear& oracle, const GemmInputs& in, std::vector<std::int64_t> rows,
                    bool bf16) {
  Reference ref;
  ref.rows = std::move(rows);
  const std::int64_t k = in.s.k, n = in.s.n, r = static_cast<std::int64_t>(ref.rows.size());
  std::vector<float> xr(static_cast<std::size_t>(r * k));
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < r; ++i) {
    const hqq::half* src = in.xh.data() + ref.rows[static_cast<std::size_t>(i)] * k;
    for (std::int64_t j = 0; j < k; ++j) {
      const float v = static_cast<float>(src[j]);
      xr[static_cast<std::size_t>(i * k + j)] = bf16 ? hqq::bf16_bits_to_float(hqq::float_to_bf16_bits(v)) : v;
    }
  }
  ref.y.assign(static_cast<std::size_t>(r * n), 0.0f);
  if (r > 0) {
    oracle.forward(hqq::TensorView{xr.data(), {r, k}, hqq::DType::kF32},
                   hqq::MutableTensorView{ref.y.data(), {r, n}, hqq::DType::kF32});
  }
  return ref;
}

struct GemmCheck {
  double max_rel_err = 0;  // over the checked rows
  bool finite = true;      // every value of y
  std::int64_t rows = 0;   // rows compared
  double tolerance = kTolerance;
  bool ok() const { return finite && rows > 0 && max_rel_err <= tolerance; }
};

/// Downloads y [m, N] (f16 or bf16), checks that every value is finite (y was
/// poisoned with NaNs before) and compares the reference rows below m:
/// ||y - ref|| / ||ref|| per row.
GemmCheck check_output(const Context& c, GemmInputs& in, hqq::DType ydt, std::int64_t m, const Reference& ref,
                       double tolerance) {
  const std::int64_t n = in.s.n, total = m * n;
  in.yh.resize(static_cast<std::size_t>(total));
  BENCH_CUDA_CHECK(cudaMemcpyAsync(in.yh.data(), in.y.get(), static_cast<std::size_t>(total) * 2,
                                   cudaMemcpyDeviceToHost, c.dev.stream));
  BENCH_CUDA_CHECK(cudaStreamSynchronize(c.dev.stream));
  const bool f16 = ydt == hqq::DType::kF16;
  const std::uint16_t exp_mask = f16 ? 0x7c00u : 0x7f80u;  // all exponent bits set: Inf or NaN
  const std::uint16_t* y = in.yh.data();
  GemmCheck chk;
  chk.tolerance = tolerance;
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
  for (std::int64_t i = 0; i < total; ++i) bad |= (y[i] & exp_mask) == exp_mask ? 1 : 0;
  chk.finite = bad == 0;
  for (std::size_t i = 0; i < ref.rows.size() && ref.rows[i] < m; ++i) {
    const std::int64_t r = ref.rows[i];
    double num = 0, den = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const std::uint16_t b = y[r * n + j];
      const double g = f16 ? hqq::half_bits_to_float(b) : hqq::bf16_bits_to_float(b);
      const double e = ref.y[i * static_cast<std::size_t>(n) + static_cast<std::size_t>(j)];
      num += (g - e) * (g - e);
      den += e * e;
    }
    const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    chk.max_rel_err = std::isnan(rel) ? INFINITY : std::max(chk.max_rel_err, rel);
    ++chk.rows;
  }
  if (!chk.finite) chk.max_rel_err = INFINITY;
  return chk;
}

Json check_json(const GemmCheck& first, const GemmCheck* timed) {
  return {{"max_rel_err_row", first.max_rel_err},
          {"rows_checked", first.rows},
          {"finite", first.finite},
          {"timed_max_rel_err_row", timed != nullptr ? Json(timed->max_rel_err) : Json(nullptr)},
          {"tolerance", first.tolerance},
          {"ok", first.ok() && timed != nullptr && timed->ok()}};
}

double headline_graph_us(const Json& r) {
  return r.contains("graph") && r["graph"].contains("median_ms") ? r["graph"]["median_ms"].get<double>() * 1e3 : NAN;
}

/// A configuration's layer on the device, its rotation copies and the CPU oracle.
struct GemmLayer {
  hqq::QuantizedTensor q;
  std::unique_ptr<hqq::QuantizedLinear> gpu, cpu;
  std::vector<std::unique_ptr<hqq::detail::LinearKernel>> copies;  // destroyed before gpu, whose layout they read
  int sets = 1;
};

/// Checks, then times, QuantizedLinear::forward on the first m rows of x (xdt), y of
/// ydt, with `kernel`; appends a row (FAILED rows count as failures). Returns the
/// headline ms, NaN when there is none.
double measure_forward(Context& c, GemmLayer& L, GemmInputs& in, const void* x, hqq::DType xdt, hqq::DType ydt,
                       std::int64_t m, hqq::LinearKernelChoice kernel, const Reference& ref, double tolerance,
                       const Json& key, Json& rows) {
  double result = NAN;
  guarded(c, rows, key, [&] {
    const LayerShape& s = in.s;
    const hqq::TensorView xv{x, {m, s.k}, xdt};
    const hqq::MutableTensorView yv{in.y.get(), {m, s.n}, ydt};
    hqq::ForwardOptions fo;
    fo.stream = c.dev.stream;
    fo.kernel = kernel;
    const std::size_t ybytes = static_cast<std::size_t>(m * s.n) * 2;

    // Correctness first: y poisoned with NaNs (0xffff in f16 and bf16), one forward, compared.
    BENCH_CUDA_CHECK(cudaMemsetAsync(in.y.get(), 0xff, ybytes, c.dev.stream));
    L.gpu->forward(xv, yv, fo);
    BENCH_CHECK_LAUNCH();
    const GemmCheck first = check_output(c, in, ydt, m, ref, tolerance);

    auto op = [&](int set) {
      if (set == 0) {
        L.gpu->forward(xv, yv, fo);
      } else {
        L.copies[static_cast<std::size_t>(set - 1)]->forward(xv, yv, m, fo);
      }
    };
    Json r;
    GemmCheck timed;
    if (first.ok()) {
      BENCH_CUDA_CHECK(cudaMemsetAsync(in.y.get(), 0xff, ybytes, c.dev.stream));
      r = measure(c.dev, L.sets, c.pol, c.args.graphs, op);
      timed = check_output(c, in, ydt, m, ref, tolerance);  // what the timed calls left
    }
    const bool ok = first.ok() && timed.ok();
    Json row = key;
    row["weight_bytes"] = L.gpu->weight_bytes();
    row["rotating_sets"] = L.sets;
    row["check"] = check_json(first, first.ok() ? &timed : nullptr);
    row["status"] = ok ? "ok" : "FAILED";
    const std::string dt = xdt == hqq::DType::kF16 ? "f16" : "bf16";
    const char* kn = kernel == hqq::LinearKernelChoice::kGemv ? "gemv" : "tc";
    if (!ok) {
      ++c.failures;
      rows.push_back(row);
      fmt::print(
          "{:<12} {:<4} {:>2} {:>4} {:>5} {:<4} {:>4}   FAILED: max rel. error per row {:.3e} over {} rows, "
          "finite {} (timed output {}), tolerance {:.0e}\n",
          s.name(), dt, L.q.nbits, L.q.group_size, m, kn, L.sets, first.max_rel_err, first.rows, first.finite,
          first.ok() ? fmt::format("{:.3e}", timed.max_rel_err) : std::string("not run"), tolerance);
      std::fflush(stdout);
      return;
    }
    row.update(r);
    const double ms = r["median_ms"].get<double>();
    row["tflops"] = tflops(m, s, ms);
    const auto cb = c.cublas_ms.find({s.name(), m});
    row["cublas_fp16_ms"] = cb == c.cublas_ms.end() ? Json(nullptr) : Json(cb->second);
    row["speedup_vs_cublas_fp16"] = cb == c.cublas_ms.end() ? Json(nullptr) : Json(cb->second / ms);
    rows.push_back(row);
    result = ms;
    fmt::print("{:<12} {:<4} {:>2} {:>4} {:>5} {:<4} {:>4} {:>10.2f} {:>10.2f} {:>8.1f} {:>7} {:>9.2e} {:>4}\n",
               s.name(), dt, L.q.nbits, L.q.group_size, m, kn, L.sets, headline_graph_us(r),
               r["stream"]["median_ms"].get<double>() * 1e3, tflops(m, s, ms),
               cb == c.cublas_ms.end() ? std::string("-") : fmt::format("{:.2f}", cb->second / ms), first.max_rel_err,
               first.rows);
    std::fflush(stdout);
  });
  return result;
}

/// cuBLAS fp16 on this shape at every M of the sweep (rotating weight copies); fills c.cublas_ms.
void run_gemm_cublas(Context& c, const Cublas& cb, GemmInputs& in, Json& rows) {
  const LayerShape& s = in.s;
  const std::size_t wbytes = static_cast<std::size_t>(s.n * s.k) * 2;
  const int sets = rotation_sets(c.dev, c.args.l2_factor, wbytes);
  const std::vector<Mem> w = fp16_weight_copies(c, s, sets);
  BENCH_CUDA_CHECK(cudaStreamSynchronize(c.dev.stream));
  for (const std::int64_t m : kGemmM) {
    if (m > in.mmax) break;
    guarded(c, rows, {{"n", s.n}, {"k", s.k}, {"m", m}}, [&] {
      auto op = [&](int set) { cb.gemm(w[static_cast<std::size_t>(set)].get(), in.x.get(), in.y.get(), s.n, m, s.k); };
      const Json r = measure(c.dev, sets, c.pol, c.args.graphs, op);
      const double ms = r["median_ms"].get<double>();
      Json row = {{"n", s.n}, {"k", s.k}, {"m", m}, {"weight_bytes", wbytes}};
      row.update(r);
      row["tflops"] = tflops(m, s, ms);
      rows.push_back(row);
      c.cublas_ms[{s.name(), m}] = ms;
      fmt::print("{:<12} {:<4} {:>2} {:>4} {:>5} {:<4} {:>4} {:>10.2f} {:>10.2f} {:>8.1f}\n", s.name(), "f16", 16, "-",
                 m, "cuBL", sets, headline_graph_us(r), r["stream"]["median_ms"].get<double>() * 1e3, tflops(m, s, ms));
      std::fflush(stdout);
    });
  }
}

/// What one configuration measures.
struct GemmCase {
  const char* part;  // "sweep" or "widths"
  QuantCase qc;
  std::vector<std::int64_t> tc_ms;  // M timed on tensor cores
  bool gemv = false;                // and with the GEMV up to kGemvMaxM
  std::vector<std::int64_t> dq_ms;  // M timed as dequantize + cuBLAS
  bool bf16 = false;                // bf16 x -> bf16 y at kBf16M on tensor cores
};

void run_gemm_case(Context& c, const Cublas& cb, GemmInputs& in, const GemmCase& gc, Json& rows, Json& dq_rows) {
  const LayerShape& s = in.s;
  const QuantCase& qc = gc.qc;
  GemmLayer L;
  L.q = make_quantized(s, qc.nbits, qc.group, c.args.seed + static_cast<std::uint64_t>(s.n * 131 + s.k));
  hqq::LinearOptions gpu_opt;
  gpu_opt.backend = "cuda";
  L.gpu = std::make_unique<hqq::QuantizedLinear>(L.q, hqq::TensorView{}, gpu_opt);
  hqq::LinearOptions cpu_opt;
  cpu_opt.backend = "cpu";
  L.cpu = std::make_unique<hqq::QuantizedLinear>(L.q, hqq::TensorView{}, cpu_opt);
  L.sets = rotation_sets(c.dev, c.args.l2_factor, static_cast<std::size_t>(L.gpu->weight_bytes()));
  const hqq::Backend& be = hqq::get_backend("cuda");
  for (int i = 1; i < L.sets; ++i) L.copies.push_back(be.make_linear(L.gpu->layout(), gpu_opt));
  BENCH_CUDA_CHECK(cudaDeviceSynchronize());
  if (c.tensor_core_min_m < 0) c.tensor_core_min_m = L.gpu->tensor_core_min_m();

  std::vector<std::int64_t> all = gc.tc_ms;
  all.insert(all.end(), gc.dq_ms.begin(), gc.dq_ms.end());
  const Reference ref = reference(*L.cpu, in, check_rows(all), false);
  auto key_for = [&](const char* part, std::int64_t m, const char* dtype, hqq::LinearKernelChoice k) {
    return Json{{"part", part},      {"n", s.n},
                {"k", s.k},          {"m", m},
                {"nbits", qc.nbits}, {"group_size", qc.group},
                {"dtype", dtype},    {"kernel", kernel_name(k)}};
  };

  std::map<std::int64_t, double> tc_ms;  // by M: the faster of our tensor-core kernels (default, mma.sync)
  for (const std::int64_t m : gc.tc_ms) {
    if (m > in.mmax) break;
    if (gc.gemv && m <= kGemvMaxM) {
      measure_forward(c, L, in, in.x.get(), hqq::DType::kF16, hqq::DType::kF16, m, hqq::LinearKernelChoice::kGemv, ref,
                      kTolerance, key_for(gc.part, m, "f16", hqq::LinearKernelChoice::kGemv), rows);
    }
    tc_ms[m] = measure_forward(c, L, in, in.x.get(), hqq::DType::kF16, hqq::DType::kF16, m,
                               hqq::LinearKernelChoice::kTensorCore, ref, kTolerance,
                               key_for(gc.part, m, "f16", hqq::LinearKernelChoice::kTensorCore), rows);
    // Where the default runs the TMA + wgmma kernels (sm_90a), the mma.sync kernels beside it.
    if (L.gpu->supports(hqq::LinearKernelChoice::kTensorCoreTma)) {
      const double mma = measure_forward(c, L, in, in.x.get(), hqq::DType::kF16, hqq::DType::kF16, m,
                                         hqq::LinearKernelChoice::kTensorCoreMmaSync, ref, kTolerance,
                                         key_for(gc.part, m, "f16", hqq::LinearKernelChoice::kTensorCoreMmaSync), rows);
      if (!std::isnan(mma) && (std::isnan(tc_ms[m]) || mma < tc_ms[m])) tc_ms[m] = mma;
    }
  }

  // Dequantize then cuBLAS: per call hqq::cuda::dequantize into one f16 [N, K] buffer and
  // cublasGemmEx on it; the quantized weight rotates among `sets` device copies as ours.
  if (!gc.dq_ms.empty()) {
    std::vector<hqq::cuda::DeviceQuantized> dq;
    dq.reserve(static_cast<std::size_t>(L.sets));
    for (int i = 0; i < L.sets; ++i) dq.emplace_back(L.q);
    std::vector<hqq::cuda::DeviceQuantizedView> views;
    for (const auto& d : dq) views.push_back(d.view());
    Mem wbuf(static_cast<std::size_t>(s.n * s.k) * 2);
    const hqq::MutableTensorView wv{wbuf.get(), {s.n, s.k}, hqq::DType::kF16};
    hqq::cuda::Options dopt;
    dopt.stream = c.dev.stream;
    for (const std::int64_t m : gc.dq_ms) {
      if (m > in.mmax) break;
      const Json key = {{"part", "dequant_cublas"}, {"n", s.n}, {"k", s.k}, {"m", m}, {"nbits", qc.nbits},
                        {"group_size", qc.group}};
      guarded(c, dq_rows, key, [&] {
        auto op = [&](int set) {
          hqq::cuda::dequantize(views[static_cast<std::size_t>(set)], wv, dopt);
          BENCH_CHECK_LAUNCH();
          cb.gemm(wbuf.get(), in.x.get(), in.y.get(), s.n, m, s.k);
        };
        const std::size_t ybytes = static_cast<std::size_t>(m * s.n) * 2;
        BENCH_CUDA_CHECK(cudaMemsetAsync(in.y.get(), 0xff, ybytes, c.dev.stream));
        BENCH_CUDA_CHECK(cudaMemsetAsync(wbuf.get(), 0xff, wbuf.size(), c.dev.stream));
        op(0);
        const GemmCheck first = check_output(c, in, hqq::DType::kF16, m, ref, kTolerance);
        Json r;
        GemmCheck timed;
        if (first.ok()) {
          BENCH_CUDA_CHECK(cudaMemsetAsync(in.y.get(), 0xff, ybytes, c.dev.stream));
          r = measure(c.dev, L.sets, c.pol, c.args.graphs, op);
          timed = check_output(c, in, hqq::DType::kF16, m, ref, kTolerance);
        }
        const bool ok = first.ok() && timed.ok();
        Json row = key;
        row["call"] =
            "hqq::cuda::dequantize(q, f16 [N, K]) + cublasGemmEx(f16, CUBLAS_COMPUTE_32F), both in every timed call";
        row["rotating_sets"] = L.sets;
        row["check"] = check_json(first, first.ok() ? &timed : nullptr);
        row["status"] = ok ? "ok" : "FAILED";
        if (!ok) {
          ++c.failures;
          dq_rows.push_back(row);
          fmt::print(
              "{:<12} {:<4} {:>2} {:>4} {:>5} {:<4} {:>4}   FAILED (dequantize + cuBLAS): max rel. error per "
              "row {:.3e}, finite {}\n",
              s.name(), "f16", qc.nbits, qc.group, m, "dq+c", L.sets, first.max_rel_err, first.finite);
          std::fflush(stdout);
          return;
        }
        row.update(r);
        const double ms = r["median_ms"].get<double>();
        row["tflops"] = tflops(m, s, ms);
        const auto it = tc_ms.find(m);
        const double ours = it == tc_ms.end() ? NAN : it->second;
        row["ours_tensor_core_ms"] = std::isnan(ours) ? Json(nullptr) : Json(ours);
        row["speedup_ours_vs_dequant_cublas"] = std::isnan(ours) ? Json(nullptr) : Json(ms / ours);
        dq_rows.push_back(row);
        fmt::print(
            "{:<12} {:<4} {:>2} {:>4} {:>5} {:<4} {:>4} {:>10.2f} {:>10.2f} {:>8.1f} {:>7} {:>9.2e} {:>4}  "
            "(dequantize + cuBLAS; ours x {})\n",
            s.name(), "f16", qc.nbits, qc.group, m, "dq+c", L.sets, headline_graph_us(r),
            r["stream"]["median_ms"].get<double>() * 1e3, tflops(m, s, ms), "-", first.max_rel_err, first.rows,
            std::isnan(ours) ? std::string("-") : fmt::format("{:.2f}", ms / ours));
        std::fflush(stdout);
      });
    }
  }

  // bf16 x -> bf16 y at kBf16M on tensor cores: the same x values rounded to bf16.
  if (gc.bf16 && kBf16M <= in.mmax) {
    std::vector<hqq::bfloat16> xb(static_cast<std::size_t>(kBf16M * s.k));
    for (std::size_t i = 0; i < xb.size(); ++i) xb[i] = hqq::bfloat16(static_cast<float>(in.xh[i]));
    Mem xd(xb.size() * 2);
    BENCH_CUDA_CHECK(cudaMemcpy(xd.get(), xb.data(), xd.size(), cudaMemcpyHostToDevice));
    std::vector<std::int64_t> rows_b;
    for (const std::int64_t r : ref.rows) {
      if (r < kBf16M) rows_b.push_back(r);
    }
    const Reference ref_b = reference(*L.cpu, in, rows_b, true);
    measure_forward(c, L, in, xd.get(), hqq::DType::kBF16, hqq::DType::kBF16, kBf16M,
                    hqq::LinearKernelChoice::kTensorCore, ref_b, kToleranceBf16,
                    key_for("bf16", kBf16M, "bf16", hqq::LinearKernelChoice::kTensorCore), rows);
  }
  L.copies.clear();
}

/// A row of `rows` matching every given key; a row lacking one of the keys is an
/// error or "not run" row of a larger unit (a shape, a configuration) and matches too.
const Json* find_row(const Json& rows, const Json& key) {
  for (const auto& r : rows) {
    bool match = true;
    for (const auto& [k, v] : key.items()) {
      if (r.contains(k) && r[k] != v) {
        match = false;
        break;
      }
    }
    if (match) return &r;
  }
  return nullptr;
}

/// Per shape, the crossover of the 4-bit g64 f16 sweep: the smallest M from which
/// the tensor-core GEMM is faster than the GEMV at every larger M where both were
/// measured (when it is not faster at the largest, the next M of the sweep:
/// "beyond_measured"). Suggested threshold for kAuto: the candidate M that
/// minimises the worst slowdown, over shapes and M <= kGemvMaxM, of the kernel
/// it picks against the faster of the two (ties: the smaller mean slowdown, then
/// the smaller M); the max over shapes of the per-shape crossover is given too.
Json gemm_crossover(const Context& c, const Json& rows) {
  struct ShapeTimes {
    LayerShape s;
    std::map<std::int64_t, std::array<double, 2>> t;  // M -> {gemv, tensor_core}
  };
  std::vector<ShapeTimes> shapes;
  for (const LayerShape& s : g_shapes) {
    if (!sweep_shape(c, s)) continue;
    ShapeTimes st{s, {}};
    for (const auto& r : rows) {
      if (r.value("part", "") != "sweep" || r.value("status", "") != "ok" || r.value("dtype", "") != "f16" ||
          r.value("n", 0) != s.n || r.value("k", 0) != s.k || r.value("nbits", 0) != 4 ||
          r.value("group_size", 0) != 64) {
        continue;
      }
      auto& p = st.t.try_emplace(r["m"].get<std::int64_t>(), std::array<double, 2>{NAN, NAN}).first->second;
      p[r["kernel"] == "gemv" ? 0 : 1] = r["median_ms"].get<double>();
    }
    shapes.push_back(std::move(st));
  }
  auto next_m = [](std::int64_t m) {
    for (const std::int64_t x : kGemmM) {
      if (x > m) return x;
    }
    return 2 * m;
  };
  Json per_shape = Json::array();
  std::set<std::int64_t> candidates;
  std::int64_t max_cross = -1;
  for (const ShapeTimes& st : shapes) {
    std::vector<std::int64_t> both;
    Json gemv = Json::object(), tc = Json::object();
    for (const auto& [m, p] : st.t) {
      if (!std::isnan(p[0])) gemv[std::to_string(m)] = p[0];
      if (!std::isnan(p[1])) tc[std::to_string(m)] = p[1];
      if (!std::isnan(p[0]) && !std::isnan(p[1])) both.push_back(m);
    }
    Json j = {{"n", st.s.n}, {"k", st.s.k}, {"gemv_ms", gemv}, {"tensor_core_ms", tc}};
    if (both.empty()) {
      j["crossover_m"] = nullptr;
      j["beyond_measured"] = false;
    } else {
      std::size_t i = both.size();
      while (i > 0 && st.t.at(both[i - 1])[1] < st.t.at(both[i - 1])[0]) --i;
      const bool beyond = i == both.size();
      const std::int64_t cross = beyond ? next_m(both.back()) : both[i];
      j["crossover_m"] = cross;
      j["beyond_measured"] = beyond;
      max_cross = std::max(max_cross, cross);
      candidates.insert(both.begin(), both.end());
      candidates.insert(next_m(both.back()));
    }
    per_shape.push_back(j);
  }
  Json out;
  out["rule"] =
      "per shape: the smallest M from which tensor_core < gemv at every larger M where both were measured (M <= "
      "64; beyond_measured: not even at the largest, the next M of the sweep); suggested_m: the threshold T "
      "(kAuto runs the GEMV below T, tensor cores from T) minimising the worst slowdown over shapes and measured M "
      "against the faster kernel (ties: smaller mean slowdown, then smaller T)";
  out["per_shape"] = per_shape;
  out["max_over_shapes"] = max_cross >= 0 ? Json(max_cross) : Json(nullptr);
  std::int64_t best = -1;
  double best_worst = INFINITY, best_mean = INFINITY;
  for (const std::int64_t t : candidates) {
    double worst = 1.0, sum = 0;
    int count = 0;
    for (const ShapeTimes& st : shapes) {
      for (const auto& [m, p] : st.t) {
        if (std::isnan(p[0]) || std::isnan(p[1])) continue;
        const double slow = (m >= t ? p[1] : p[0]) / std::min(p[0], p[1]);
        worst = std::max(worst, slow);
        sum += slow;
        ++count;
      }
    }
    const double mean = count > 0 ? sum / count : 1.0;
    if (worst < best_worst - 1e-12 || (std::abs(worst - best_worst) <= 1e-12 && mean < best_mean - 1e-12)) {
      best = t;
      best_worst = worst;
      best_mean = mean;
    }
  }
  out["suggested_m"] = best >= 0 ? Json(best) : Json(nullptr);
  out["suggested_worst_slowdown"] = best >= 0 ? Json(best_worst) : Json(nullptr);
  out["suggested_mean_slowdown"] = best >= 0 ? Json(best_mean) : Json(nullptr);
  out["library_tensor_core_min_m"] = c.tensor_core_min_m >= 0 ? Json(c.tensor_core_min_m) : Json(nullptr);
  return out;
}

void print_crossover(const Json& x) {
  fmt::print("crossover GEMV -> tensor cores (4-bit g64 f16; {}):\n", x["rule"].get<std::string>());
  for (const auto& r : x["per_shape"]) {
    const std::string name = fmt::format("{}x{}", r["n"].get<std::int64_t>(), r["k"].get<std::int64_t>());
    std::string ratios;
    for (const auto& [m, g] : r["gemv_ms"].items()) {
      if (r["tensor_core_ms"].contains(m)) {
        ratios += fmt::format(" M={}:{:.2f}", m, g.get<double>() / r["tensor_core_ms"][m].get<double>());
      }
    }
    fmt::print("  {:<12} crossover M = {}{}   (gemv / tc:{})\n", name,
               r["crossover_m"].is_null() ? std::string("-") : std::to_string(r["crossover_m"].get<std::int64_t>()),
               r["beyond_measured"].get<bool>() ? " (beyond the measured M)" : "", ratios);
  }
  auto num = [](const Json& v) { return v.is_null() ? std::string("-") : v.dump(); };
  fmt::print(
      "  suggested kAuto threshold: M = {} (worst slowdown {}x, mean {}x); max over shapes: {}; the "
      "library's tensor_core_min_m() now: {}\n\n",
      num(x["suggested_m"]),
      x["suggested_worst_slowdown"].is_null() ? "-"
                                              : fmt::format("{:.3f}", x["suggested_worst_slowdown"].get<double>()),
      x["suggested_mean_slowdown"].is_null() ? "-" : fmt::format("{:.3f}", x["suggested_mean_slowdown"].get<double>()),
      num(x["max_over_shapes"]), num(x["library_tensor_core_min_m"]));
}

/// The targets against this run's C++ cuBLAS (compare_linear_gpu.py --gemm recomputes
/// them with the faster of it and torch.matmul).
Json gemm_targets(const Context& c, const Json& rows, const Json& dq_rows) {
  Json targets = Json::array();
  auto status = [](const Json* r) { return r == nullptr ? std::string("missing") : r->value("status", "error"); };
  // FAILED when a row it needs failed or errored, NO DATA when one is missing or not run or the value is NaN.
  auto add = [&](std::string what, const std::vector<const Json*>& need, double value, const std::string& shown,
                 bool pass) {
    bool failed = false, missing = std::isnan(value);
    for (const Json* r : need) {
      const std::string st = status(r);
      failed = failed || (st != "ok" && st != "not run" && st != "missing");
      missing = missing || st == "missing" || st == "not run";
    }
    const std::string verdict = failed ? "FAILED" : missing ? "NO DATA" : pass ? "PASS" : "MISS";
    const std::string v = failed || missing ? "-" : shown;
    fmt::print("  {:<7} {} ({})\n", verdict, what, v);
    targets.push_back({{"what", std::move(what)}, {"value", v}, {"verdict", verdict}});
  };
  auto ms_of = [](const Json* r) {
    return r != nullptr && r->value("status", "") == "ok" ? (*r)["median_ms"].get<double>() : NAN;
  };
  auto cublas = [&](const LayerShape& s, std::int64_t m) {
    const auto it = c.cublas_ms.find({s.name(), m});
    return it == c.cublas_ms.end() ? NAN : it->second;
  };
  auto ours = [&](const char* part, const LayerShape& s, std::int64_t m, int b, std::int64_t g, const char* kernel) {
    return find_row(rows, {{"part", part},
                           {"n", s.n},
                           {"k", s.k},
                           {"m", m},
                           {"nbits", b},
                           {"group_size", g},
                           {"dtype", "f16"},
                           {"kernel", kernel}});
  };
  // The faster of the default tensor-core choice and the mma.sync kernels (where measured).
  auto best_tc = [&](const char* part, const LayerShape& s, std::int64_t m, int b, std::int64_t g) {
    const Json* tc = ours(part, s, m, b, g, "tensor_core");
    const Json* mma = ours(part, s, m, b, g, "tensor_core_mma_sync");
    return ms_of(mma) < ms_of(tc) ? mma : tc;  // false when either is NaN: the default
  };
  fmt::print("the default tensor-core choice (TMA + wgmma) vs the mma.sync kernels (x = mma.sync / default time):\n");
  for (const LayerShape& s : g_shapes) {
    if (!sweep_shape(c, s)) continue;
    std::string line;
    for (const std::int64_t m : kGemmM) {
      const double x = ms_of(ours("sweep", s, m, 4, 64, "tensor_core_mma_sync")) / ms_of(ours("sweep", s, m, 4, 64, "tensor_core"));
      if (!std::isnan(x)) line += fmt::format(" M={}:{:.2f}", m, x);
    }
    fmt::print("  {:<12} 4-bit g64{}\n", s.name(), line.empty() ? std::string(" (not measured)") : line);
  }
  fmt::print("targets (the GEMM issue; x cuBLAS from this run's cuBLAS fp16; tensor cores = the faster of the default and mma.sync kernels):\n");
  for (const LayerShape& s : g_shapes) {
    if (!sweep_shape(c, s)) continue;
    const Json* tc = best_tc("sweep", s, 16, 4, 64);
    const Json* gv = ours("sweep", s, 16, 4, 64, "gemv");
    const double t_tc = ms_of(tc), t_gv = ms_of(gv), cb = cublas(s, 16);
    const double best = std::min(t_tc, t_gv);  // NaN when either is
    const double x16 = cb / best;
    add(fmt::format("{} 4-bit g64 M=16 >= {:.1f}x cuBLAS fp16 (the faster of GEMV and tensor cores)", s.name(),
                    kTargetGemm16),
        {tc, gv}, x16, fmt::format("{:.2f}x ({})", x16, t_gv <= t_tc ? "gemv" : "tensor cores"), x16 >= kTargetGemm16);
    std::vector<const Json*> need;
    double worst = INFINITY;
    std::int64_t worst_m = 0;
    for (const std::int64_t m : kGemmM) {
      if (m < kLargeM) continue;
      const Json* r = best_tc("sweep", s, m, 4, 64);
      need.push_back(r);
      const double x = cublas(s, m) / ms_of(r);
      if (std::isnan(x)) {
        worst = NAN;
      } else if (!std::isnan(worst) && x < worst) {
        worst = x;
        worst_m = m;
      }
    }
    add(fmt::format("{} 4-bit g64 M>={} >= {:.1f}x cuBLAS fp16 (tensor cores, every M)", s.name(), kLargeM,
                    kTargetGemmLarge),
        need, worst, fmt::format("worst {:.2f}x at M={}", worst, worst_m), worst >= kTargetGemmLarge);
  }
  for (const LayerShape& s : g_shapes) {
    if (!gemm_selected(c, s) || !width_shape(c, s)) continue;
    for (const int b : {8, 3, 2}) {
      std::vector<const Json*> need;
      double worst = INFINITY;
      std::int64_t worst_m = 0;
      for (const std::int64_t m : kWidthM) {
        const Json* r = best_tc("widths", s, m, b, 64);
        const Json* d = find_row(dq_rows, {{"n", s.n}, {"k", s.k}, {"m", m}, {"nbits", b}, {"group_size", 64}});
        need.push_back(r);
        need.push_back(d);
        const double x = ms_of(d) / ms_of(r);
        if (std::isnan(x)) {
          worst = NAN;
        } else if (!std::isnan(worst) && x < worst) {
          worst = x;
          worst_m = m;
        }
      }
      add(fmt::format("{} {}-bit g64 faster than dequantize+cuBLAS (tensor cores, M = 16, 256, 4096)", s.name(), b),
          need, worst, fmt::format("worst {:.2f}x at M={}", worst, worst_m), worst > 1.0);
    }
  }
  fmt::print("\n");
  return targets;
}

void run_gemm(Context& c) {
  Cublas cb;
  cb.init(c);
  Json cublas_rows = Json::array(), rows = Json::array(), dq_rows = Json::array();
  auto publish = [&] {
    Json g;
    g["m_list"] = kGemmM;
    g["gemv_max_m"] = kGemvMaxM;
    g["width_m_list"] = kWidthM;
    g["bf16_m"] = kBf16M;
    g["cublas_fp16"] = {{"available", cb.ok()},
                        {"version", cb.version},
                        {"error", cb.ok() ? Json(nullptr) : Json(cb.error)},
                        {"call",
                         "cublasGemmEx(OP_T, OP_N, N, M, K, W f16 [N,K], x f16 [M,K], y f16 [M,N], CUBLAS_COMPUTE_32F, "
                         "CUBLAS_GEMM_DEFAULT), 32 MiB workspace (cublasSetWorkspace)"},
                        {"rows", cublas_rows}};
    g["rows"] = rows;
    g["dequant_cublas"] = {{"call",
                            "hqq::cuda::dequantize(DeviceQuantized copy, f16 [N,K] buffer) then the cuBLAS fp16 call "
                            "above on it, both in every timed call; the quantized weight rotates like ours"},
                           {"rows", dq_rows}};
    c.out["gemm"] = g;
    checkpoint(c);
  };
  fmt::print(
      "QuantizedLinear (cuda) GEMM mode: x [M, K] -> y [M, N]; TFLOP/s = 2 M N K / time; x cuBLAS = cuBLAS fp16 time "
      "/ ours; check: max rel. error per row vs the CPU QuantizedLinear over the rows shown (<= {:.0e} f16, {:.0e} "
      "bf16); cuBLAS: {}\n",
      kTolerance, kToleranceBf16, cb.ok() ? fmt::format("version {}", cb.version) : cb.error);
  fmt::print("{:<12} {:<4} {:>2} {:>4} {:>5} {:<4} {:>4} {:>10} {:>10} {:>8} {:>7} {:>9} {:>4}\n", "N x K", "x", "b",
             "g", "M", "kern", "sets", "graph us", "stream us", "TFLOP/s", "x cuBL", "rel err", "rows");
  for (const LayerShape& s : g_shapes) {
    if (!gemm_selected(c, s)) continue;
    const bool sweep = sweep_shape(c, s), widths = width_shape(c, s);
    if (!sweep && !widths) continue;
    if (c.out_of_time()) {
      if (sweep) not_run(c, rows, {{"part", "sweep"}, {"n", s.n}, {"k", s.k}});
      if (widths) {
        for (const QuantCase& qc : kWidthCases) {
          not_run(c, rows, {{"part", "widths"}, {"n", s.n}, {"k", s.k}, {"nbits", qc.nbits}, {"group_size", qc.group}});
        }
      }
      publish();
      continue;
    }
    std::unique_ptr<GemmInputs> in;
    guarded(c, rows, {{"part", "inputs"}, {"n", s.n}, {"k", s.k}},
            [&] { in = std::make_unique<GemmInputs>(make_inputs(c, s, kGemmMaxM)); });
    if (!in) {
      publish();
      continue;
    }
    if (sweep) {
      if (cb.ok()) run_gemm_cublas(c, cb, *in, cublas_rows);
      GemmCase gc{"sweep", {4, 64}, {std::begin(kGemmM), std::end(kGemmM)}, true, {}, true};
      if (widths && cb.ok()) gc.dq_ms.assign(std::begin(kWidthM), std::end(kWidthM));
      guarded(c, rows, {{"part", "sweep"}, {"n", s.n}, {"k", s.k}},
              [&] { run_gemm_case(c, cb, *in, gc, rows, dq_rows); });
      publish();
    }
    if (widths) {
      for (const QuantCase& qc : kWidthCases) {
        const Json key = {{"part", "widths"}, {"n", s.n}, {"k", s.k}, {"nbits", qc.nbits}, {"group_size", qc.group}};
        if (c.out_of_time()) {
          not_run(c, rows, key);
          continue;
        }
        GemmCase gc{"widths", qc, {std::begin(kWidthM), std::end(kWidthM)}, false, {}, false};
        if (cb.ok()) gc.dq_ms = gc.tc_ms;
        guarded(c, rows, key, [&] { run_gemm_case(c, cb, *in, gc, rows, dq_rows); });
        publish();
      }
    }
  }
  fmt::print("\n");
  publish();
  const Json x = gemm_crossover(c, rows);
  print_crossover(x);
  c.out["gemm"]["crossover"] = x;
  c.out["targets"] = gemm_targets(c, rows, dq_rows);
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
  c.out["tool"] = "bench_linear_cuda";
  c.out["hqq_version"] = hqq::kVersionString;
  c.out["commit"] = c.args.commit;
  c.out["date_utc"] = utc_now();
  hqq::Support ok;  // the backend QuantizedLinear runs on (in a CUDA build: hqq::cuda::available())
  try {
    ok = hqq::get_backend("cuda").available();
  } catch (const std::exception& e) {
    ok = {false, e.what()};
  }
  if (!ok) {
    std::fprintf(stderr, "bench_linear_cuda: no CUDA device, nothing measured: %s\n", ok.reason.c_str());
    c.out["error"] = "no CUDA device: " + ok.reason;
    c.out["skipped"] = true;
    return 77;
  }
  Device& dev = c.dev;
  BENCH_CUDA_CHECK(cudaGetDevice(&dev.id));
  BENCH_CUDA_CHECK(cudaGetDeviceProperties(&dev.prop, dev.id));
  int l2 = 0;
  BENCH_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev.id));
  dev.l2_bytes = static_cast<std::size_t>(l2);
  BENCH_CUDA_CHECK(cudaStreamCreateWithFlags(&dev.stream, cudaStreamNonBlocking));

  if (c.args.quick) {
    c.pol.reps = 10;
    c.pol.min_reps = 3;
    c.pol.warmup_ms = 5;
    c.pol.budget_ms = 100;
  }
  if (c.args.gemm) c.pol = gemm_policy(c.args.quick);

  c.out["device"] = device_json(dev);
  std::vector<std::string> shape_names;
  for (const auto& s : g_shapes) {
    if (c.args.gemm ? sweep_shape(c, s) || (gemm_selected(c, s) && width_shape(c, s))
                    : c.args.shapes.empty() || c.args.shapes.count(s.name()) > 0) {
      shape_names.push_back(s.name());
    }
  }
  c.out["mode"] = c.args.gemm ? "gemm" : "decode";
  c.out["options"] = {{"mode", c.args.gemm ? "gemm" : "decode"},
                      {"quick", c.args.quick},
                      {"max_seconds", c.args.max_seconds},
                      {"small", c.args.small},
                      {"graphs", c.args.graphs},
                      {"seed", c.args.seed},
                      {"l2_factor", c.args.l2_factor},
                      {"shapes", shape_names},
                      {"reps_max", c.pol.reps},
                      {"reps_min", c.pol.min_reps},
                      {"sample_ms_min", c.pol.sample_ms},
                      {"warmup_ms", c.pol.warmup_ms},
                      {"budget_ms", c.pol.budget_ms},
                      {"activations", c.args.gemm ? "F16 x [M, K] -> F16 y [M, N]; BF16 -> BF16 at M = 256"
                                                  : "F16 x [M, K] -> F16 y [M, N]"},
                      {"tolerance_rel_err_per_row", kTolerance}};
  if (c.args.gemm) {
    c.out["options"]["tolerance_rel_err_per_row_bf16"] = kToleranceBf16;
    c.out["options"]["checked_rows"] = fmt::format(
        "every row for M <= {}; beyond, the first {} rows, the last row and {} rows spread over M (a CPU forward of "
        "those rows only); every value of y finite",
        kGemvMaxM, kGemvMaxM, kSpreadRows);
  }
  c.out["timing_method"] =
      "CUDA events on one non-blocking stream; warm-up, then samples of k back-to-back calls (sample >= 1 ms), "
      "median per call; 'stream' = calls enqueued one by one, 'graph' = the k calls captured into a CUDA graph and "
      "replayed (the headline when the capture works); calls rotate among copies of the weight totalling >= "
      "l2_factor x L2";
  c.out["weights"] =
      "uniform random codes (hqq::pack), scale = 0.04/(2^b-1) x U[0.5,1.5) and zero = (2^b-1) x U[0,1) per group, "
      "both rounded to f16; x = U[-1,1] in f16; cuBLAS weight U[-0.05,0.05] in f16";

  fmt::print("# bench_linear_cuda{}: {} | hqq {} | commit {} | L2 {:.1f} MB, rotating >= {:g} x L2{}\n\n",
             c.args.gemm ? " --gemm" : "", hqq::cuda::device_description(), hqq::kVersionString,
             c.args.commit.empty() ? "-" : c.args.commit, dev.l2_bytes / 1e6, c.args.l2_factor,
             c.args.quick ? " | --quick" : "");

  Json errors = Json::array();
  if (c.args.gemm) {
    guarded(c, errors, {{"part", "gemm"}}, [&] { run_gemm(c); });
  } else {
    run_copy(c);
    checkpoint(c);
    guarded(c, errors, {{"part", "cublas"}}, [&] { run_cublas(c); });
    checkpoint(c);
    guarded(c, errors, {{"part", "linear"}}, [&] { run_linear(c); });
    if (c.out.contains("linear")) report_targets(c);
  }
  if (!errors.empty()) c.out["errors"] = errors;
  c.out["failures"] = c.failures;
  c.out["not_run"] = c.not_run;

  BENCH_CUDA_CHECK(cudaStreamSynchronize(dev.stream));
  BENCH_CUDA_CHECK(cudaStreamDestroy(dev.stream));
  dev.stream = nullptr;
  if (c.not_run > 0) {
    fmt::print("bench_linear_cuda: {} configuration(s) not run: --max-seconds {} spent\n", c.not_run,
               c.args.max_seconds);
  }
  if (c.failures > 0) {
    fmt::print("bench_linear_cuda: {} measurement(s) failed or gave a wrong result (ERROR / FAILED above)\n",
               c.failures);
  }
  return c.failures > 0 || c.not_run > 0 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Context c;
  c.args = parse_args(argc, argv);
  int rc = 1;
  try {
    rc = run(c);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_linear_cuda: %s\n", e.what());
    c.out["error"] = e.what();
    rc = 1;
  }
  c.out["exit_code"] = rc;
  c.out["complete"] = true;
  if (!c.args.json_path.empty()) {
    if (!write_json(c.out, c.args.json_path)) {
      std::fprintf(stderr, "bench_linear_cuda: cannot write %s\n", c.args.json_path.c_str());
      return 1;
    }
    std::printf("wrote %s\n", c.args.json_path.c_str());
  }
  return rc;
}
