// CPU benchmark of hqq::QuantizedLinear::forward (fused dequantize-GEMV,
// backend "cpu", f32 activations) beside the machine's memory-read bandwidth
// and a dense f32 Eigen GEMV/GEMM on the same shapes, all in one run.
//
//   bench_linear [--quick] [--shapes 4096x4096,11008x4096] [--m 1,8] [--min-time 0.3]
//                [--threads N] [--bw-gib 1] [--rotate-l3 4] [--eigen-max-gib 4] [--x-offset 0]
//                [--out-dir bench/results] [--commit SHA] [--note TEXT] [--seed S]
//
// What is timed (see bench/README.md, "CPU GEMV"):
//   * bandwidth: an OpenMP read-reduce (64-bit integer sum, AVX2, all threads)
//     over a --bw-gib GiB buffer; median of 9 passes after a warm-up, at the
//     start and at the end of the run. The larger of the two medians is the
//     reference bandwidth (conservative for the "fraction of bandwidth" column).
//   * QuantizedLinear::forward on random codes (uniform over 2^b) and random
//     f16 scale/zero, 4-bit g64 on every shape and 8/3/2/1-bit g64 and 4-bit
//     g32/g128 on 4096x4096 and 11008x4096 (when those shapes are selected).
//   * Eigen dense f32 y = x W^T with W RowMajor [N, K] (the dequantized 4-bit
//     g64 weight), two ways: Eigen's own threading (Eigen::setNbThreads; Eigen
//     runs GEMV, i.e. M = 1, on one thread) and the output rows split over
//     OpenMP threads, one Eigen product per block (as src/linear_cpu.cpp's
//     dense path does). The faster of the two is the peer of each row.
// Every timed call rotates among copies of the layer whose weight bytes add
// up to >= --rotate-l3 x L3, so no call is served from the cache; one full
// rotation warms up, then samples of one full rotation each are taken until
// --min-time seconds and >= 5 samples; the median per call is reported.
// Correctness in the same run: forward()'s output (M = max M) against an
// Eigen product on hqq::dequantize of the same weight.

#include <omp.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include "hqq/hqq.hpp"
#include "hqq/linear.hpp"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// ------------------------------------------------------------------ options

struct Shape {
  std::int64_t n, k;
  std::string name() const { return std::to_string(n) + "x" + std::to_string(k); }
};

struct Options {
  std::vector<Shape> shapes;
  std::vector<std::int64_t> ms;
  double min_time = 0.3;
  int threads = 0;
  double bw_gib = 1.0;
  double rotate_l3 = 4.0;
  double eigen_max_gib = 4.0;
  std::size_t x_offset = 0;  // bytes past a 64-byte boundary where x starts
  std::string out_dir;
  std::string commit;
  std::string note;
  std::uint64_t seed = 1;
  bool quick = false;
  std::string command;
};

const std::vector<Shape> kLlamaShapes = {{4096, 4096},  {11008, 4096}, {4096, 11008}, {14336, 4096},
                                         {4096, 14336}, {28672, 8192}, {8192, 28672}};

[[noreturn]] void usage(const std::string& msg) {
  std::cerr << "bench_linear: " << msg << "\n"
            << "usage: bench_linear [--quick] [--shapes NxK,...] [--m 1,2,4,8,16] [--min-time S]\n"
               "                    [--threads N] [--bw-gib G] [--rotate-l3 X] [--eigen-max-gib G] [--x-offset B]\n"
               "                    [--out-dir DIR] [--commit SHA] [--note TEXT] [--seed S]\n";
  std::exit(2);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 0; i < argc; ++i) o.command += (i ? " " : "") + std::string(argv[i]);
  std::string shapes, ms;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i], v;
    const auto eq = a.find('=');
    bool has_v = false;
    if (eq != std::string::npos) {
      v = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_v = true;
    }
    auto value = [&]() -> std::string {
      if (has_v) return v;
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--quick") o.quick = true;
    else if (a == "--shapes") shapes = value();
    else if (a == "--m") ms = value();
    else if (a == "--min-time") o.min_time = std::stod(value());
    else if (a == "--threads") o.threads = std::stoi(value());
    else if (a == "--bw-gib") o.bw_gib = std::stod(value());
    else if (a == "--rotate-l3") o.rotate_l3 = std::stod(value());
    else if (a == "--eigen-max-gib") o.eigen_max_gib = std::stod(value());
    else if (a == "--x-offset") o.x_offset = std::stoul(value());
    else if (a == "--out-dir") o.out_dir = value();
    else if (a == "--commit") o.commit = value();
    else if (a == "--note") o.note = value();
    else if (a == "--seed") o.seed = std::stoull(value());
    else if (a == "--help" || a == "-h") usage("help");
    else usage("unknown option " + a);
  }
  if (o.quick) {
    o.shapes = {{4096, 4096}, {11008, 4096}};
    o.ms = {1, 8};
    o.min_time = 0.15;
  } else {
    o.shapes = kLlamaShapes;
    o.ms = {1, 2, 4, 8, 16};
  }
  if (!shapes.empty()) {
    o.shapes.clear();
    for (const auto& s : split(shapes, ',')) {
      const auto x = s.find('x');
      if (x == std::string::npos) usage("shape '" + s + "' is not NxK");
      const Shape sh{std::stoll(s.substr(0, x)), std::stoll(s.substr(x + 1))};
      if (sh.n <= 0 || sh.k <= 0 || sh.k % 128 != 0) usage("shape '" + s + "': K must be a positive multiple of 128");
      o.shapes.push_back(sh);
    }
  }
  if (!ms.empty()) {
    o.ms.clear();
    for (const auto& s : split(ms, ',')) o.ms.push_back(std::stoll(s));
  }
  if (o.x_offset % 4 != 0 || o.x_offset >= 64) usage("--x-offset must be a multiple of 4 below 64");
  if (o.threads > 0) omp_set_num_threads(o.threads);
  o.threads = omp_get_max_threads();
  return o;
}

// ------------------------------------------------------------------ machine

std::string read_first_line(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto c = line.find(':');
      return c == std::string::npos ? line : line.substr(c + 2);
    }
  }
  return "unknown";
}

std::int64_t l3_bytes() {
  const std::string s = read_first_line("/sys/devices/system/cpu/cpu0/cache/index3/size");
  if (s.empty()) return 32ll << 20;
  std::int64_t v = std::stoll(s);
  if (s.back() == 'K') v <<= 10;
  else if (s.back() == 'M') v <<= 20;
  return v;
}

std::int64_t mem_total_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  std::int64_t kb = 0;
  f >> key >> kb;
  return kb * 1024;
}

std::string loadavg() {
  const std::string s = read_first_line("/proc/loadavg");
  const auto parts = split(s, ' ');
  return parts.size() >= 3 ? parts[0] + " " + parts[1] + " " + parts[2] : s;
}

std::string shell(const std::string& cmd) {
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[256];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string now_iso(bool date_only) {
  const std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, date_only ? "%Y-%m-%d" : "%Y-%m-%dT%H:%M:%S", std::localtime(&t));
  return buf;
}

// ------------------------------------------------------------------ helpers

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Timing {
  double median_us = 0, min_us = 0, max_us = 0;
  int samples = 0, copies = 0;
};

/// One thing timed in an interleaved window: f(copy) over `copies` rotating copies.
struct Item {
  std::function<void(int)> f;
  int copies;
  std::vector<double> per_call_us;
};

/// Times several items side by side: one rotation of each as warm-up, then
/// rounds of one rotation of each item in turn, until at least 5 rounds and
/// min_time seconds per item on average. Slow drifts of the machine's speed
/// then hit every item alike.
void time_interleaved(std::vector<Item>& items, double min_time) {
  for (auto& it : items) {
    for (int c = 0; c < it.copies; ++c) it.f(c);
  }
  const auto start = Clock::now();
  for (int round = 1;; ++round) {
    for (auto& it : items) {
      const auto t0 = Clock::now();
      for (int c = 0; c < it.copies; ++c) it.f(c);
      const auto t1 = Clock::now();
      it.per_call_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / it.copies);
    }
    const double total = std::chrono::duration<double>(Clock::now() - start).count();
    if ((round >= 5 && total >= min_time * static_cast<double>(items.size())) || round >= 5000) break;
  }
}

Timing summarize(const Item& it) {
  Timing t;
  t.median_us = median(it.per_call_us);
  t.min_us = *std::min_element(it.per_call_us.begin(), it.per_call_us.end());
  t.max_us = *std::max_element(it.per_call_us.begin(), it.per_call_us.end());
  t.samples = static_cast<int>(it.per_call_us.size());
  t.copies = it.copies;
  return t;
}

struct Rng {
  std::uint64_t s;
  explicit Rng(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  std::uint64_t next() {  // splitmix64
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
};

// ------------------------------------------------------------------ bandwidth

/// Sum of n words read as S sub-ranges in lockstep (64 bytes of each per
/// step): S sequential streams at once, as a GEMV over S rows reads them.
template <int S>
__attribute__((target("avx2"))) std::uint64_t sum_streams(const std::uint64_t* p, std::int64_t n) {
  const std::int64_t len = n / S / 8 * 8;
  __m256i acc[S][2];
  for (int s = 0; s < S; ++s) acc[s][0] = acc[s][1] = _mm256_setzero_si256();
  for (std::int64_t i = 0; i < len; i += 8) {
    for (int s = 0; s < S; ++s) {
      const __m256i* q = reinterpret_cast<const __m256i*>(p + s * len + i);
      acc[s][0] = _mm256_add_epi64(acc[s][0], _mm256_load_si256(q));
      acc[s][1] = _mm256_add_epi64(acc[s][1], _mm256_load_si256(q + 1));
    }
  }
  __m256i t = _mm256_setzero_si256();
  for (int s = 0; s < S; ++s) t = _mm256_add_epi64(t, _mm256_add_epi64(acc[s][0], acc[s][1]));
  alignas(32) std::uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), t);
  std::uint64_t r = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (std::int64_t i = S * len; i < n; ++i) r += p[i];
  return r;
}

std::uint64_t sum_range(const std::uint64_t* p, std::int64_t n, int streams) {
  switch (streams) {
    case 1: return sum_streams<1>(p, n);
    case 2: return sum_streams<2>(p, n);
    case 4: return sum_streams<4>(p, n);
    default: return sum_streams<8>(p, n);
  }
}

/// Stream counts per thread the bandwidth measurement tries.
const std::vector<int> kStreamCounts = {1, 2, 4, 8};

/// One read-reduce pass over the buffer with `threads` threads (static split
/// into 64-byte aligned blocks), each reading its block as `streams` streams.
std::uint64_t read_pass(const std::uint64_t* buf, std::int64_t words, int threads, int streams) {
  std::uint64_t total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    const std::int64_t id = omp_get_thread_num(), nt = omp_get_num_threads();
    const std::int64_t b0 = (words / 8) * id / nt * 8, b1 = (words / 8) * (id + 1) / nt * 8;
    total += sum_range(buf + b0, b1 - b0, streams);
  }
  static volatile std::uint64_t sink = 0;
  sink = sink + total;
  return total;
}

struct Bandwidth {
  double median_gbs = 0, max_gbs = 0, min_gbs = 0;
  int threads = 0, reps = 0, streams = 1;
};

/// Read bandwidth of `threads` threads over `words` 64-bit words (buffer
/// touched first by the same static partition).
Bandwidth measure_bandwidth(const std::uint64_t* buf, std::int64_t words, int threads, int reps, int streams) {
  const double bytes = static_cast<double>(words) * 8.0;
  std::vector<double> gbs;
  volatile std::uint64_t sink = 0;
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = Clock::now();
    const std::uint64_t total = read_pass(buf, words, threads, streams);
    const auto t1 = Clock::now();
    sink = sink + total;
    if (r > 0) gbs.push_back(bytes / std::chrono::duration<double>(t1 - t0).count() / 1e9);  // r = 0: warm-up
  }
  Bandwidth b;
  b.median_gbs = median(gbs);
  b.max_gbs = *std::max_element(gbs.begin(), gbs.end());
  b.min_gbs = *std::min_element(gbs.begin(), gbs.end());
  b.threads = threads;
  b.reps = reps;
  b.streams = streams;
  return b;
}

json bw_json(const Bandwidth& b) {
  return {{"median_gbs", b.median_gbs}, {"min_gbs", b.min_gbs}, {"max_gbs", b.max_gbs},
          {"threads", b.threads}, {"reps", b.reps}, {"streams_per_thread", b.streams}};
}

struct BandwidthBuffer {
  std::uint64_t* p = nullptr;
  std::int64_t words = 0;
  explicit BandwidthBuffer(double gib) {
    words = static_cast<std::int64_t>(gib * (1ll << 30)) / 8 / 8 * 8;
    p = static_cast<std::uint64_t*>(std::aligned_alloc(64, static_cast<std::size_t>(words) * 8));
    if (!p) throw std::runtime_error("bandwidth buffer allocation failed");
#pragma omp parallel
    {
      const std::int64_t id = omp_get_thread_num(), nt = omp_get_num_threads();
      const std::int64_t b0 = (words / 8) * id / nt * 8, b1 = (words / 8) * (id + 1) / nt * 8;
      for (std::int64_t i = b0; i < b1; ++i) p[i] = static_cast<std::uint64_t>(i) * 2654435761u + 1;
    }
  }
  ~BandwidthBuffer() { std::free(p); }
};

// ------------------------------------------------------------------ weights

struct QConfig {
  int nbits;
  std::int64_t group;
  std::string name() const { return std::to_string(nbits) + "-bit g" + std::to_string(group); }
};

/// A random axis-1 quantized weight [N, K]: uniform codes, f16 scale in
/// [5e-4, 2e-2], f16 zero in [0, 2^b - 1].
hqq::QuantizedTensor random_quantized(const Shape& s, const QConfig& c, std::uint64_t seed) {
  hqq::QuantConfig cfg;
  cfg.nbits = c.nbits;
  cfg.group_size = c.group;
  cfg.axis = 1;
  cfg.solver = hqq::Solver::kNone;
  cfg.scale_dtype = hqq::DType::kF16;
  hqq::QuantizedTensor q = hqq::QuantizedTensor::with_metadata({s.n, s.k}, cfg);
  const auto v = q.view();
  const std::int64_t numel = s.n * s.k;
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(numel));
  const std::uint64_t mask = (1ull << c.nbits) - 1;
#pragma omp parallel
  {
    const std::int64_t id = omp_get_thread_num(), nt = omp_get_num_threads();
    const std::int64_t b0 = numel / 8 * id / nt * 8, b1 = id + 1 == nt ? numel : numel / 8 * (id + 1) / nt * 8;
    Rng rng(seed * 1315423911ull + static_cast<std::uint64_t>(id) + 7);
    for (std::int64_t i = b0; i < b1; i += 8) {
      std::uint64_t r = rng.next();
      for (std::int64_t j = i; j < std::min(i + 8, b1); ++j, r >>= 8) codes[j] = static_cast<std::uint8_t>(r & mask);
    }
  }
  q.packed.assign(static_cast<std::size_t>(hqq::packed_bytes(c.nbits, v.rows(), v.cols())), 0);
  hqq::pack(c.nbits, codes.data(), v.rows(), v.cols(), q.packed.data());
  const std::int64_t groups = q.num_groups();
  q.scale.resize(static_cast<std::size_t>(groups));
  q.zero.resize(static_cast<std::size_t>(groups));
  Rng rng(seed ^ 0xABCDEF);
  const double zmax = static_cast<double>((1 << c.nbits) - 1);
  for (std::int64_t g = 0; g < groups; ++g) {
    q.scale[g] = hqq::round_to(hqq::DType::kF16, static_cast<float>(5e-4 + rng.uniform() * (2e-2 - 5e-4)));
    q.zero[g] = hqq::round_to(hqq::DType::kF16, static_cast<float>(rng.uniform() * zmax));
  }
  q.validate();
  return q;
}

/// Copies needed so that their bytes add up to >= target (at least 1).
int copies_for(std::int64_t bytes, double target) {
  return std::max<int>(1, static_cast<int>(std::ceil(target / static_cast<double>(bytes))));
}

/// Floats at a chosen alignment: data() is 64-byte aligned plus `offset` bytes
/// (a multiple of 4), so the x loads' alignment is fixed, not up to malloc.
class FloatBuf {
 public:
  FloatBuf(std::size_t n, std::size_t offset) : n_(n) {
    base_ = static_cast<char*>(std::aligned_alloc(64, (n * 4 + offset + 63) / 64 * 64));
    if (!base_) throw std::runtime_error("allocation failed");
    p_ = reinterpret_cast<float*>(base_ + offset);
  }
  FloatBuf(FloatBuf&& o) noexcept : base_(o.base_), p_(o.p_), n_(o.n_) { o.base_ = nullptr; }
  FloatBuf(const FloatBuf&) = delete;
  FloatBuf& operator=(const FloatBuf&) = delete;
  ~FloatBuf() { std::free(base_); }
  float* data() { return p_; }
  const float* data() const { return p_; }
  std::size_t size() const { return n_; }

 private:
  char* base_;
  float* p_;
  std::size_t n_;
};

FloatBuf random_x(std::int64_t m, std::int64_t k, std::uint64_t seed, std::size_t offset) {
  FloatBuf x(static_cast<std::size_t>(m * k), offset);
  Rng rng(seed);
  for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.uniform() * 2.0 - 1.0);
  return x;
}

/// max |y - ref| / max |ref|.
double rel_max_err(const float* y, const float* ref, std::size_t n) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs(static_cast<double>(y[i]) - ref[i]));
    den = std::max(den, std::fabs(static_cast<double>(ref[i])));
  }
  return den > 0 ? num / den : num;
}

/// Eigen y = x W^T, one product, Eigen's own threading.
void eigen_own(const float* w, std::int64_t n, std::int64_t k, const float* x, std::int64_t m, float* y) {
  const Eigen::Map<const RowMajor> W(w, n, k);
  const Eigen::Map<const RowMajor> X(x, m, k);
  Eigen::Map<RowMajor> Y(y, m, n);
  Y.noalias() = X * W.transpose();
}

/// Eigen y = x W^T with the output features split over OpenMP threads.
void eigen_omp_rows(const float* w, std::int64_t n, std::int64_t k, const float* x, std::int64_t m, float* y,
                    int threads) {
  const Eigen::Map<const RowMajor> W(w, n, k);
  const Eigen::Map<const RowMajor> X(x, m, k);
  Eigen::Map<RowMajor> Y(y, m, n);
#pragma omp parallel num_threads(threads)
  {
    const std::int64_t id = omp_get_thread_num(), nt = omp_get_num_threads();
    const std::int64_t n0 = n * id / nt, n1 = n * (id + 1) / nt;
    if (n1 > n0) Y.middleCols(n0, n1 - n0).noalias() = X * W.middleRows(n0, n1 - n0).transpose();
  }
}

std::string fixed(double v, int prec) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

bool file_exists(const std::string& p) { return std::filesystem::exists(p); }

}  // namespace

int main(int argc, char** argv) {
  Options opt = parse(argc, argv);
  const int T = opt.threads;
  const std::int64_t l3 = l3_bytes();
  const double rotate_target = opt.rotate_l3 * static_cast<double>(l3);
  if (opt.commit.empty()) opt.commit = shell("git rev-parse --short HEAD 2>/dev/null");
  if (opt.commit.empty()) opt.commit = "unknown";
  const std::string dirty = shell("git status --porcelain --untracked-files=no 2>/dev/null");
  const std::string started = now_iso(false);
  const std::string load_start = loadavg();
  const auto run_t0 = Clock::now();
  Eigen::setNbThreads(T);

  std::printf("bench_linear: %s, %d threads, L3 %.1f MiB, rotate >= %.0f MiB, commit %s%s\n", cpu_model().c_str(), T,
              l3 / 1048576.0, rotate_target / 1048576.0, opt.commit.c_str(), dirty.empty() ? "" : " (dirty)");
  std::printf("load average at start: %s; Eigen threads %d\n", load_start.c_str(), Eigen::nbThreads());

  // ---- bandwidth at start (the buffer stays allocated: it is also sampled
  // inside every measurement window below)
  BandwidthBuffer bwbuf(opt.bw_gib);
  const double bw_bytes = static_cast<double>(bwbuf.words) * 8.0;
  // streams per thread: the count with the best median (5 passes each) is used from here on
  json bw_scan = json::array();
  int streams = 1;
  double best_scan = 0;
  for (const int sc : kStreamCounts) {
    const Bandwidth b = measure_bandwidth(bwbuf.p, bwbuf.words, T, 5, sc);
    bw_scan.push_back(bw_json(b));
    if (b.median_gbs > best_scan) {
      best_scan = b.median_gbs;
      streams = sc;
    }
  }
  const Bandwidth bw_start = measure_bandwidth(bwbuf.p, bwbuf.words, T, 9, streams);
  const Bandwidth bw_single = measure_bandwidth(bwbuf.p, bwbuf.words, 1, 5, streams);
  std::printf("read bandwidth (%.2f GiB, %d threads x %d streams): median %.2f GB/s (min %.2f, max %.2f); "
              "1 thread %.2f GB/s\n",
              opt.bw_gib, T, streams, bw_start.median_gbs, bw_start.min_gbs, bw_start.max_gbs, bw_single.median_gbs);
  std::fflush(stdout);

  // ---- configurations per shape
  const std::vector<QConfig> extra = {{8, 64}, {3, 64}, {2, 64}, {1, 64}, {4, 32}, {4, 128}};
  auto configs_for = [&](const Shape& s) {
    std::vector<QConfig> v = {{4, 64}};
    if ((s.n == 4096 && s.k == 4096) || (s.n == 11008 && s.k == 4096)) v.insert(v.end(), extra.begin(), extra.end());
    return v;
  };
  const std::int64_t max_m = *std::max_element(opt.ms.begin(), opt.ms.end());

  json rows = json::array();
  json eigen_rows = json::array();
  json checks = json::array();
  std::vector<std::string> notes;

  std::printf("\n%-12s %-11s %3s %11s %8s %8s %6s %11s %-8s %7s\n", "shape", "config", "M", "time_us", "GB/s",
              "bw_GB/s", "%bw", "eigen_us", "eigen", "x_eigen");

  for (const Shape& s : opt.shapes) {
    const std::vector<QConfig> cfgs = configs_for(s);
    std::uint64_t seed = opt.seed * 1000003ull + static_cast<std::uint64_t>(s.n * 31 + s.k);
    // activations for every M (one buffer each, reused by all copies: x and y
    // are small and stay in cache as they would in an engine)
    std::vector<FloatBuf> xs;
    std::vector<std::vector<float>> ys;
    for (const std::int64_t m : opt.ms) {
      xs.push_back(random_x(m, s.k, seed + static_cast<std::uint64_t>(m), opt.x_offset));
      ys.emplace_back(static_cast<std::size_t>(m * s.n), 0.0f);
    }
    const FloatBuf xcheck = random_x(max_m, s.k, seed + 999, opt.x_offset);

    // ---- Eigen dense f32 copies: the dequantized 4-bit g64 weight
    const std::int64_t dense_bytes = s.n * s.k * 4;
    int dense_copies = copies_for(dense_bytes, rotate_target);
    bool rotated = true;
    const double max_dense = opt.eigen_max_gib * (1ll << 30);
    if (static_cast<double>(dense_copies) * dense_bytes > max_dense) {
      dense_copies = std::max<int>(1, static_cast<int>(max_dense / dense_bytes));
      rotated = static_cast<double>(dense_copies) * dense_bytes >= rotate_target;
    }
    if (!rotated) {
      notes.push_back("Eigen " + s.name() + ": " + std::to_string(dense_copies) +
                      " dense copies (memory cap --eigen-max-gib), below the rotation target");
    }
    std::vector<std::vector<float>> dense(static_cast<std::size_t>(dense_copies));

    // ---- quantized layers of every configuration, checked against Eigen on
    // hqq::dequantize of the same weight (M = max M)
    struct Layers {
      QConfig cfg;
      std::vector<hqq::QuantizedLinear> copies;
      std::int64_t wb = 0;
      std::string path;
    };
    std::vector<Layers> qlayers;
    for (const QConfig& c : cfgs) {
      hqq::QuantizedTensor qc = random_quantized(s, c, seed + static_cast<std::uint64_t>(c.nbits * 7 + c.group));
      hqq::LinearOptions lo;
      lo.backend = "cpu";
      lo.threads = 0;
      Layers L;
      L.cfg = c;
      L.copies.emplace_back(qc, hqq::TensorView{}, lo);
      L.wb = L.copies[0].weight_bytes();
      const int ncopies = copies_for(L.wb, rotate_target);
      for (int i = 1; i < ncopies; ++i) L.copies.emplace_back(qc, hqq::TensorView{}, lo);
      L.path = L.copies[0].path() == hqq::detail::LinearPath::kPacked ? "packed" : "dense";
      std::vector<float> wd = hqq::dequantize(qc);
      qc = hqq::QuantizedTensor{};
      std::vector<float> yq(static_cast<std::size_t>(max_m * s.n)), yr(yq.size());
      L.copies[0].forward({xcheck.data(), {max_m, s.k}, hqq::DType::kF32}, {yq.data(), {max_m, s.n}, hqq::DType::kF32});
      eigen_omp_rows(wd.data(), s.n, s.k, xcheck.data(), max_m, yr.data(), T);
      const double err = rel_max_err(yq.data(), yr.data(), yq.size());
      const bool ok = err < 1e-4;
      checks.push_back({{"shape", s.name()}, {"config", c.name()}, {"m", max_m}, {"rel_max_err", err}, {"ok", ok}});
      if (!ok) std::printf("CHECK FAILED: %s %s rel max err %.3e\n", s.name().c_str(), c.name().c_str(), err);
      if (c.nbits == 4 && c.group == 64) {
        dense[0] = std::move(wd);
        for (int i = 1; i < dense_copies; ++i) dense[i] = dense[0];
      }
      qlayers.push_back(std::move(L));
    }

    // ---- per M: bandwidth, both Eigen variants and every configuration,
    // interleaved sample by sample in one window
    for (std::size_t mi = 0; mi < opt.ms.size(); ++mi) {
      const std::int64_t m = opt.ms[mi];
      const float* x = xs[mi].data();
      float* y = ys[mi].data();
      const hqq::TensorView xv{x, {m, s.k}, hqq::DType::kF32};
      const hqq::MutableTensorView yv{y, {m, s.n}, hqq::DType::kF32};
      std::vector<Item> items;
      items.push_back({[&](int) { read_pass(bwbuf.p, bwbuf.words, T, streams); }, 1, {}});
      items.push_back({[&](int c) { eigen_own(dense[c].data(), s.n, s.k, x, m, y); }, dense_copies, {}});
      items.push_back({[&](int c) { eigen_omp_rows(dense[c].data(), s.n, s.k, x, m, y, T); }, dense_copies, {}});
      for (auto& L : qlayers) {
        items.push_back({[&L, &xv, &yv](int i) { L.copies[i].forward(xv, yv); }, static_cast<int>(L.copies.size()), {}});
      }
      // The first configuration (4-bit g64) once more on one thread (threads = 0
      // follows OpenMP's default at call time): its thread scaling in this window.
      const bool scaling = T > 1;
      if (scaling) {
        Layers& L0 = qlayers[0];
        items.push_back({[&L0, &xv, &yv, T](int i) {
                           omp_set_num_threads(1);
                           L0.copies[i].forward(xv, yv);
                           omp_set_num_threads(T);
                         },
                         static_cast<int>(L0.copies.size()), {}});
      }
      time_interleaved(items, opt.min_time);
      const Timing tbw = summarize(items[0]), town = summarize(items[1]), tomp = summarize(items[2]);
      const double bw_local = bw_bytes / (tbw.median_us * 1e-6) / 1e9;
      const bool own_wins = town.median_us < tomp.median_us;
      const double eig_best = own_wins ? town.median_us : tomp.median_us;
      const std::string eig_name = own_wins ? "eigen-nbthreads" : "omp-rows";
      const double egbs = dense_bytes / (eig_best * 1e-6) / 1e9;
      const double t1_us = scaling ? summarize(items.back()).median_us : 0.0;
      const double scale = scaling ? t1_us / summarize(items[3]).median_us : 1.0;
      eigen_rows.push_back({{"shape", s.name()}, {"n", s.n}, {"k", s.k}, {"m", m}, {"weight_bytes", dense_bytes},
                            {"copies", dense_copies}, {"rotated_beyond_l3", rotated},
                            {"eigen_nbthreads_us", town.median_us}, {"eigen_nbthreads_min_us", town.min_us},
                            {"omp_rows_us", tomp.median_us}, {"omp_rows_min_us", tomp.min_us}, {"best", eig_name},
                            {"best_us", eig_best}, {"best_gbs", egbs}, {"window_bw_gbs", bw_local},
                            {"best_frac_bw", egbs / bw_local}, {"samples", town.samples},
                            {"q4g64_1thread_us", t1_us}, {"q4g64_thread_scaling", scale}});
      for (std::size_t j = 0; j < qlayers.size(); ++j) {
        const Layers& L = qlayers[j];
        const Timing t = summarize(items[3 + j]);
        const double gbs = L.wb / (t.median_us * 1e-6) / 1e9;
        const double x_eigen = eig_best / t.median_us;
        rows.push_back({{"shape", s.name()}, {"n", s.n}, {"k", s.k}, {"nbits", L.cfg.nbits}, {"group", L.cfg.group},
                        {"m", m}, {"path", L.path}, {"weight_bytes", L.wb}, {"copies", t.copies},
                        {"median_us", t.median_us}, {"min_us", t.min_us}, {"max_us", t.max_us},
                        {"samples", t.samples}, {"gbs", gbs}, {"window_bw_gbs", bw_local},
                        {"frac_bw", gbs / bw_local}, {"frac_bw_run", 0.0}, {"eigen_us", eig_best},
                        {"eigen_variant", eig_name}, {"x_eigen", x_eigen}});
        std::printf("%-12s %-11s %3lld %11.1f %8.2f %8.2f %6.1f %11.1f %-8s %7.2f\n", s.name().c_str(),
                    L.cfg.name().c_str(), static_cast<long long>(m), t.median_us, gbs, bw_local, 100.0 * gbs / bw_local,
                    eig_best, own_wins ? "eigen-nt" : "omp-rows", x_eigen);
      }
      if (scaling) {
        std::printf("%-12s %-11s %3lld %11.1f   (1 thread; %.2fx scaling on %d threads)\n", s.name().c_str(),
                    "4-bit g64", static_cast<long long>(m), t1_us, scale, T);
      }
      std::fflush(stdout);
    }
  }

  // ---- bandwidth at end
  const Bandwidth bw_end = measure_bandwidth(bwbuf.p, bwbuf.words, T, 9, streams);
  const double bw_ref = std::max(bw_start.median_gbs, bw_end.median_gbs);
  std::printf("\nread bandwidth at end: median %.2f GB/s; run reference (max of start and end medians) %.2f GB/s\n",
              bw_end.median_gbs, bw_ref);
  for (auto& r : rows) r["frac_bw_run"] = r["gbs"].get<double>() / bw_ref;

  const double seconds = std::chrono::duration<double>(Clock::now() - run_t0).count();
  const std::string load_end = loadavg();
  bool all_ok = true;
  for (const auto& c : checks) all_ok = all_ok && c["ok"].get<bool>();

  // ---- summary: M=8 / M=1 time ratio, headline rows
  json ratios = json::array();
  auto find_row = [&](const std::string& shape, int nbits, std::int64_t group, std::int64_t m) -> const json* {
    for (const auto& r : rows) {
      if (r["shape"] == shape && r["nbits"] == nbits && r["group"] == group && r["m"] == m) return &r;
    }
    return nullptr;
  };
  for (const Shape& s : opt.shapes) {
    for (const QConfig& c : configs_for(s)) {
      const json* r1 = find_row(s.name(), c.nbits, c.group, 1);
      const json* r8 = find_row(s.name(), c.nbits, c.group, 8);
      if (r1 && r8) {
        ratios.push_back({{"shape", s.name()}, {"config", c.name()},
                          {"m8_over_m1", (*r8)["median_us"].get<double>() / (*r1)["median_us"].get<double>()}});
      }
    }
  }

  json out;
  out["tool"] = "bench_linear";
  out["date"] = started;
  out["commit"] = opt.commit;
  out["tree_dirty"] = !dirty.empty();
  out["dirty_files"] = split(dirty, '\n');
  out["command"] = opt.command;
  out["note"] = opt.note;
  out["machine"] = {{"cpu", cpu_model()},
                    {"logical_cpus", static_cast<int>(std::thread::hardware_concurrency())},
                    {"threads", T},
                    {"l3_bytes", l3},
                    {"mem_total_bytes", mem_total_bytes()},
                    {"load_avg_start", load_start},
                    {"load_avg_end", load_end},
                    {"compiler", __VERSION__},
#ifdef __AVX2__
                    {"bench_tu_avx2", true},
#else
                    {"bench_tu_avx2", false},
#endif
                    {"eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) +
                                          "." + std::to_string(EIGEN_MINOR_VERSION)},
                    {"eigen_nb_threads", Eigen::nbThreads()}};
  out["bandwidth"] = {{"buffer_gib", opt.bw_gib},
                      {"kernel", "OpenMP read-reduce, AVX2 64-bit integer sum, static split, each thread's block read as "
                                 "streams_per_thread sequential streams in lockstep (best of 1/2/4/8 at start)"},
                      {"start", bw_json(bw_start)},
                      {"end", bw_json(bw_end)},
                      {"single_thread", bw_json(bw_single)},
                      {"stream_scan", bw_scan},
                      {"streams_per_thread", streams},
                      {"reference_gbs", bw_ref}};
  out["settings"] = {{"min_time_s", opt.min_time}, {"rotate_target_bytes", rotate_target},
                     {"rotate_l3", opt.rotate_l3}, {"eigen_max_gib", opt.eigen_max_gib},
                     {"x_offset_bytes", opt.x_offset}, {"quick", opt.quick},
                     {"seed", opt.seed}, {"ms", opt.ms}};
  out["quantized"] = rows;
  out["eigen"] = eigen_rows;
  out["checks"] = checks;
  out["checks_ok"] = all_ok;
  out["m8_over_m1"] = ratios;
  out["notes"] = notes;
  out["seconds"] = seconds;

  // ---- markdown
  std::ostringstream md;
  md << "# QuantizedLinear CPU GEMV vs memory bandwidth and Eigen f32, " << started << "\n\n";
  md << "- machine: " << cpu_model() << ", " << std::thread::hardware_concurrency() << " logical CPUs, L3 "
     << fixed(l3 / 1048576.0, 0) << " MiB, " << fixed(mem_total_bytes() / 1073741824.0, 1) << " GiB; load average at start "
     << load_start << ", at end " << load_end << "\n";
  md << "- threads: " << T << " (OpenMP, QuantizedLinear backend \"cpu\", threads = 0); Eigen "
     << EIGEN_WORLD_VERSION << "." << EIGEN_MAJOR_VERSION << "." << EIGEN_MINOR_VERSION << "\n";
  std::string dirty_list;
  for (const auto& f : split(dirty, '\n')) dirty_list += (dirty_list.empty() ? "" : ", ") + f.substr(std::min<std::size_t>(3, f.size()));
  md << "- commit: " << opt.commit << (dirty.empty() ? "" : " (uncommitted changes in: " + dirty_list + ")")
     << "; run took " << fixed(seconds, 0) << " s\n";
  md << "- command: `" << opt.command << "`\n";
  if (!opt.note.empty()) md << "- note: " << opt.note << "\n";
  md << "- read bandwidth (" << fixed(opt.bw_gib, 2) << " GiB buffer, " << T
     << " threads x " << streams << " streams each (best of 1/2/4/8), AVX2 64-bit integer sum): start " << fixed(bw_start.median_gbs, 2) << " GB/s, end "
     << fixed(bw_end.median_gbs, 2) << " GB/s (medians of 9), 1 thread " << fixed(bw_single.median_gbs, 2)
     << " GB/s; the same read pass is also one of the items of every measurement window below (`read BW` column)\n";
  md << "- timing: for each shape and M, the read pass, both Eigen variants and every quantized configuration are "
        "timed side by side, interleaved: each item rotates among copies of its weight totalling >= "
     << fixed(opt.rotate_l3, 0) << "x L3 (" << fixed(rotate_target / 1048576.0, 0)
     << " MiB) so no call is served from the cache; one rotation of warm-up each, then rounds of one rotation of each "
        "item in turn until >= 5 rounds and " << fixed(opt.min_time, 2)
     << " s per item; median per call. GB/s = QuantizedLinear::weight_bytes() (codes + f16 scale/zero) / time; "
        "Eigen GB/s = N*K*4 / time; `% of read BW` = GB/s / the read bandwidth of the same window (`% of run BW`: / "
     << fixed(bw_ref, 2) << " GB/s, the larger of the start and end medians)\n";
  md << "- weights: random uniform codes, random f16 scale/zero (axis 1, packed path); x 64-byte aligned + "
     << opt.x_offset << " bytes; Eigen: RowMajor f32 W[N,K] "
        "(the dequantized 4-bit g64 weight), y = x W^T, the faster of Eigen's own threading (`eigen-nbthreads`, "
        "Eigen::setNbThreads; Eigen runs M = 1 on one thread) and output rows split over OpenMP threads "
        "(`omp-rows`, one Eigen product per block, as the library's dense path)\n";
  md << "- correctness in the same run (forward vs Eigen on hqq::dequantize, M = " << max_m
     << ", rel. max error < 1e-4): " << (all_ok ? "all ok" : "**FAILED** (see JSON checks)") << "\n";
  for (const auto& n : notes) md << "- note: " << n << "\n";
  md << "\n| shape NxK | nbits | group | M | time µs | GB/s | read BW GB/s | % of read BW | % of run BW | Eigen f32 µs | "
        "Eigen variant | × Eigen |\n";
  md << "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : rows) {
    md << "| " << r["shape"].get<std::string>() << " | " << r["nbits"].get<int>() << " | "
       << r["group"].get<std::int64_t>() << " | " << r["m"].get<std::int64_t>() << " | "
       << fixed(r["median_us"].get<double>(), 1) << " | " << fixed(r["gbs"].get<double>(), 2) << " | "
       << fixed(r["window_bw_gbs"].get<double>(), 2) << " | " << fixed(100.0 * r["frac_bw"].get<double>(), 1) << " | "
       << fixed(100.0 * r["frac_bw_run"].get<double>(), 1) << " | " << fixed(r["eigen_us"].get<double>(), 1) << " | "
       << r["eigen_variant"].get<std::string>() << " | " << fixed(r["x_eigen"].get<double>(), 2) << " |\n";
  }
  md << "\n### Per window: Eigen f32 alone, read bandwidth, thread scaling of 4-bit g64\n\n"
        "`4-bit g64 scaling` = its time on 1 thread / its time on " << T << " threads, in the same window: about "
     << T << " when the cores run the decode independently, lower when they share a physical core (SMT "
        "siblings on the host) or wait for each other.\n\n"
        "| shape NxK | M | copies | eigen-nbthreads µs | omp-rows µs | best GB/s | read BW GB/s | % of read BW "
        "| 4-bit g64 1-thread µs | 4-bit g64 scaling |\n|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : eigen_rows) {
    md << "| " << r["shape"].get<std::string>() << " | " << r["m"].get<std::int64_t>() << " | "
       << r["copies"].get<int>() << (r["rotated_beyond_l3"].get<bool>() ? "" : " (not rotated)") << " | "
       << fixed(r["eigen_nbthreads_us"].get<double>(), 1) << " | " << fixed(r["omp_rows_us"].get<double>(), 1) << " | "
       << fixed(r["best_gbs"].get<double>(), 2) << " | " << fixed(r["window_bw_gbs"].get<double>(), 2) << " | "
       << fixed(100.0 * r["best_frac_bw"].get<double>(), 1) << " | " << fixed(r["q4g64_1thread_us"].get<double>(), 1)
       << " | " << fixed(r["q4g64_thread_scaling"].get<double>(), 2) << " |\n";
  }
  if (!ratios.empty()) {
    md << "\n### Time at M = 8 / time at M = 1\n\n| shape | config | ratio |\n|---|---|---|\n";
    for (const auto& r : ratios) {
      md << "| " << r["shape"].get<std::string>() << " | " << r["config"].get<std::string>() << " | "
         << fixed(r["m8_over_m1"].get<double>(), 2) << " |\n";
    }
  }
  md << "\n### Target (DESIGN §6): CPU GEMV >= 60 % of measured read bandwidth, faster than Eigen f32 (M = 1)\n\n";
  md << "| shape | config | % of read BW | % of run BW | × Eigen | >= 60 % | faster than Eigen |\n"
        "|---|---|---|---|---|---|---|\n";
  for (const auto& r : rows) {
    if (r["m"].get<std::int64_t>() != 1) continue;
    const double f = r["frac_bw"].get<double>(), fr = r["frac_bw_run"].get<double>(), xe = r["x_eigen"].get<double>();
    md << "| " << r["shape"].get<std::string>() << " | " << r["nbits"].get<int>() << "-bit g"
       << r["group"].get<std::int64_t>() << " | " << fixed(100 * f, 1) << " | " << fixed(100 * fr, 1) << " | "
       << fixed(xe, 2) << " | " << (f >= 0.6 ? "yes" : "**no**") << " | " << (xe > 1.0 ? "yes" : "**no**") << " |\n";
  }

  std::printf("%s", ("\n" + md.str()).c_str());

  if (!opt.out_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(opt.out_dir, ec);
    const std::string base = opt.out_dir + "/cpu-linear-" + now_iso(true) + "-" + opt.commit;
    std::string stem = base;
    for (int i = 2; file_exists(stem + ".json") || file_exists(stem + ".md"); ++i) stem = base + "-" + std::to_string(i);
    std::ofstream fj(stem + ".json"), fm(stem + ".md");
    fj << out.dump(2) << "\n";
    fm << md.str();
    fj.close();
    fm.close();
    if (!fj || !fm) {
      std::fprintf(stderr, "bench_linear: could not write %s.json / .md\n", stem.c_str());
      return 1;
    }
    std::printf("wrote %s.json and %s.md\n", stem.c_str(), stem.c_str());
  }
  return all_ok ? 0 : 1;
}
