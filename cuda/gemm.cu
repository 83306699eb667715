// QuantizedLinear's tensor-core GEMM (sm_80 and newer): y = x W^T + b with
// the weight dequantized in registers straight into mma.sync A fragments.
//
// The GEMM computes Y^T = W X^T so that the quantized weight is the A operand
// (16 weight rows per m16n8k16 tile) and the activations, staged in shared
// memory, the B operand (8 activation rows per tile): small M wastes no
// tensor-core rows on padding beyond the next 8. The weight comes pre-shuffled
// (hqq/detail/gemm_layout.hpp): per 16x64 tile a lane reads its `nbits`
// words with one 16-byte load (4-bit) and holds, for the 4 k-steps, exactly
// the 8 codes of each of its fragments. A code pair becomes two f16 (bf16)
// numbers by OR-ing it into the magic 1536 (128) and one subtraction of
// (magic + zi), zi the integer nearest the zero (clamped to where both stay exact): exact
// integers q - zi. One fused multiply-add with the scale and m = -(z - zi) *
// scale (rounded once) gives w = (q - z) * s in the activation type; the
// float zero-point costs no more than an integer one. The row constants are
// formed once per row and group (cuda/row_consts.hpp; in f16 arithmetic for
// f16 activations with f16 metadata). bf16 at 8 bits goes through f32
// (128 + q is not exact in bf16 for q >= 128). The mask and the magic are one
// lop3; at 4 (f16 only), 3, 2 and 1 bits the codes of rows g + 8 are read in
// place, 2^S q above the magic, scaled back by an exact 2^-S in the
// subtraction (one shift for two pairs), and 8-bit f16 forms a pair with one
// byte permute (dequant.hpp, dequant_fragment).
//
// Block tiles: kWarpsN x kWarpsM warps, each warp kWN weight rows x kWM
// activation rows; kStages-deep cp.async pipeline over 64-column k tiles
// (weight words, activation rows XOR-swizzled for conflict-free ldmatrix, and
// the (scale, zero) pairs of the tile's one or two groups). Skinny problems
// split K (grid.z) into partial sums that a second kernel reduces in order
// (deterministic). Accumulation is f32.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "gemm_common.cuh"

namespace hqq::cuda::detail {
namespace {

template <int kWarpsN_, int kWarpsM_, int kWN_, int kWM_, int kStages_>
struct TileCfg {
  static constexpr int kWarpsN = kWarpsN_, kWarpsM = kWarpsM_, kWN = kWN_, kWM = kWM_, kStages = kStages_;
  static constexpr int kThreads = 32 * kWarpsN * kWarpsM;
  static constexpr int kBN = kWarpsN * kWN, kBM = kWarpsM * kWM;
  static constexpr int kTN = kWN / 16, kTM = kWM / 8;  // A and B fragments per warp and k-step
  static_assert(kWN % 16 == 0 && kWM % 16 == 0, "warp tiles are whole ldmatrix.x4 / A tiles");
  static_assert(::hqq::detail::kGemmPadN % kBN == 0, "the row padding covers every block tile");
};

// The tile configurations, by index (GemmJob::config).
using Cfg0 = TileCfg<4, 1, 32, 16, 4>;  // BM 16:  M <= 16
using Cfg1 = TileCfg<4, 1, 32, 32, 4>;  // BM 32:  M <= 32
using Cfg2 = TileCfg<2, 2, 64, 32, 4>;  // BM 64:  M <= 64
using Cfg3 = TileCfg<2, 4, 64, 32, 4>;  // BM 128: larger M
// Configs 4-8: the sm_90a TMA + warp-specialised wgmma kernels (cuda/sm90/gemm_tma.cuh),
// 128 weight rows x 16, 32, 64, 128, 256 activation rows.
constexpr int kTmaConfig = 4;
constexpr int kConfigs = 9;
constexpr int kConfigBM[kConfigs] = {Cfg0::kBM, Cfg1::kBM, Cfg2::kBM, Cfg3::kBM, 16, 32, 64, 128, 256};
constexpr int kConfigBN[kConfigs] = {Cfg0::kBN, Cfg1::kBN, Cfg2::kBN, Cfg3::kBN, 128, 128, 128, 128, 128};
/// Blocks per SM the split-K rule of the mma.sync kernels aims at (the small
/// tiles are memory-bound: bytes in flight); the TMA kernels' rule asks the
/// occupancy of the instance (tma_splits), this is its fallback.
constexpr int kConfigBlocksPerSm[kConfigs] = {2, 2, 1, 1, 2, 2, 1, 1, 1};

/// Pipeline depth: 3 stages for 8-bit 128-row tiles, so that every instance
/// fits the 99 KB per block of sm_86/sm_89 (4 would take 100-104 KB).
template <int NB, class C>
constexpr int kStagesOf = (NB == 8 && C::kBM >= 128) ? 3 : C::kStages;

template <int NB, typename MetaT, class C>
struct Smem {
  static constexpr int kW = C::kBN * 8 * NB;  // BN/16 tiles of 32 lanes x NB words
  static constexpr int kX = C::kBM * 128;     // BM rows of 64 16-bit values
  static constexpr int kM = 2 * C::kBN * kMetaPair<MetaT>;  // two groups
  static constexpr int kStage = kW + kX + kM;
  static constexpr int kStages = kStagesOf<NB, C>;
  static constexpr int kBytes = kStages * kStage;
};

template <int NB, typename T, typename MetaT, class C>
__global__ void __launch_bounds__(C::kThreads) gemm_kernel(const GemmParams p) {
  using S = Smem<NB, MetaT, C>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int warp_n = warp % C::kWarpsN, warp_m = warp / C::kWarpsN;
  const int g = lane >> 2;
  const std::int64_t n0 = static_cast<std::int64_t>(blockIdx.x) * C::kBN;
  const std::int64_t m0 = static_cast<std::int64_t>(blockIdx.y) * C::kBM;
  const int KB = p.kpad / 64;
  const int kb_begin = static_cast<int>(blockIdx.z) * p.kb_per_split;
  const int nk = min(KB, kb_begin + p.kb_per_split) - kb_begin;
  const T* x = static_cast<const T*>(p.x);

  auto load_stage = [&](int slot, int kb) {
    unsigned char* base = smem + slot * S::kStage;
    load_weight_tile<NB, C::kBN, C::kThreads>(base, p.codes, n0, KB, kb, tid);
    // Activations: BM rows x 8 chunks, chunk kc of row r at kc ^ (r & 7); zero past M and K.
    unsigned char* xs = base + S::kW;
#pragma unroll 1
    for (int c = tid; c < C::kBM * 8; c += C::kThreads) {
      const int row = c >> 3, kc = c & 7;
      const std::int64_t gm = m0 + row, gk = static_cast<std::int64_t>(kb) * 64 + kc * 8;
      const bool ok = gm < p.m && gk < p.k;
      cp_async16(xs + row * 128 + ((kc ^ (row & 7)) << 4), ok ? x + gm * p.k + gk : x, ok);
    }
    load_meta_tile<MetaT, C::kBN, C::kThreads>(xs + S::kX, p, n0, kb, tid);
  };

  float acc[C::kTN][C::kTM][4];
#pragma unroll
  for (int i = 0; i < C::kTN; ++i)
#pragma unroll
    for (int j = 0; j < C::kTM; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

#pragma unroll
  for (int s = 0; s < S::kStages - 1; ++s) {
    if (s < nk) load_stage(s, kb_begin + s);
    cp_async_commit();
  }

  RowConsts<NB, T> rc[C::kTN][2];
  int cur_group = -1;
#pragma unroll 1
  for (int i = 0; i < nk; ++i) {
    cp_async_wait<S::kStages - 2>();
    __syncthreads();  // stage i landed for everyone; everyone is done with stage i - 1
    {
      const int next = i + S::kStages - 1;
      if (next < nk) load_stage(next % S::kStages, kb_begin + next);
      cp_async_commit();
    }
    const int kb = kb_begin + i;
    const unsigned char* base = smem + (i % S::kStages) * S::kStage;
    const unsigned char* xs = base + S::kW;
    const unsigned char* ms = xs + S::kX;

    std::uint32_t wq[C::kTN][NB];
#pragma unroll
    for (int ti = 0; ti < C::kTN; ++ti) load_words<NB>(base + ((warp_n * C::kTN + ti) * 32 + lane) * (NB * 4), wq[ti]);

    const GroupWindow win(kb, p.group_size);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int grp = win.group(kb, j);
      if (grp != cur_group) {
        cur_group = grp;
#pragma unroll
        for (int ti = 0; ti < C::kTN; ++ti) {
          set_row_pair<NB, T, MetaT, C::kBN>(rc[ti], ms, grp - win.ga, warp_n * C::kWN + 16 * ti + g);
        }
      }
      std::uint32_t b[C::kTM][2];
#pragma unroll
      for (int mt = 0; mt < C::kTM / 2; ++mt) {
        const int row = warp_m * C::kWM + 16 * mt + (lane & 7) + 8 * (lane >> 4);
        const int chunk = 2 * j + ((lane >> 3) & 1);
        ldmatrix_x4(xs + row * 128 + ((chunk ^ (row & 7)) << 4), b[2 * mt][0], b[2 * mt][1], b[2 * mt + 1][0],
                    b[2 * mt + 1][1]);
      }
#pragma unroll
      for (int ti = 0; ti < C::kTN; ++ti) {
        std::uint32_t a[4];
        dequant_fragment<NB, T>(a, rc[ti], wq[ti], j);
#pragma unroll
        for (int mt = 0; mt < C::kTM; ++mt) Num<T>::mma(acc[ti][mt], a, b[mt]);
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue: acc[ti][mt] is fragment (ti, mt) of fragment_pairs.hpp, weight
  // rows (y's columns) down, activation rows (y's rows) across.
  store_tile<C::kTN, C::kTM>(p, m0 + warp_m * C::kWM, n0 + warp_n * C::kWN, [&](int ti, int mt, float(&v)[4]) {
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = acc[ti][mt][e];
  });
}

struct Plan {
  int config = 0, splits = 1, kb_per_split = 1;
  std::int64_t slab = 0;  // rows per launch (grid.y limit)
  StreamK sk;             // stream-K (TMA kernels) where sk.tiles > 0: the slab's block tiles shared by sk.ctas()
  int sk_tiles_n = 0;     // block tiles along N
};

/// The first of configs first..last (activation tiles growing) whose tile
/// holds m rows, else `last`.
int smallest_tile(std::int64_t m, int first, int last) {
  int c = first;
  while (c < last && kConfigBM[c] < m) ++c;
  return c;
}

/// Calls f(std::integral_constant<int, BM>{}) for TMA config `config`
/// (activation tile BM); `none` in a build without the sm_90a kernels.
template <typename R, typename F>
R with_tma_tile(int config, R none, F&& f) {
#ifdef HQQ_HAVE_WGMMA
  (void)none;
  switch (kConfigBM[config]) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: return f(std::integral_constant<int, 256>{});
  }
#else
  (void)config, (void)f;
  return none;
#endif
}

/// Blocks per SM of TMA config `config` (its stream-K instance if
/// stream_k) for the job's types (0: unknown).
int tma_blocks_per_sm(int config, const GemmJob& job, bool stream_k) {
  return with_tma_tile(config, 0, [&](auto bm) {
    return gemm_tma_blocks_per_sm<decltype(bm)::value>(job.nbits, job.x_type, job.meta_type, stream_k);
  });
}

/// Split-K of the TMA kernels: the count (1..16) with the least estimated
/// time in k-tile steps of a full wave, waves x (k tiles per split +
/// kSplitStartup), plus, when split, kReduceCost and the steps a full wave
/// would take to move as many bytes as the partial sums do (8 bytes per
/// output and split: the GEMM writes them, the reduction reads them back),
/// where a wave is as many blocks as fit all SMs at once (by the occupancy of
/// the kernel instance) and a step moves each block's k tile (weights,
/// metadata, activations). It avoids a last wave of a few blocks (448 blocks
/// on 396 slots take two waves, 5 splits of 224 tiles about 1.4 shorter
/// ones) but not at the price of the partials of a large M (M = 1024 x
/// N = 11008 in 3 splits: 270 MB).
int tma_splits(const GemmJob& job, int config, std::int64_t blocks, int kb, std::int64_t rows) {
  constexpr double kSplitStartup = 2.0, kReduceCost = 3.0;
  int per_sm = tma_blocks_per_sm(config, job, false);
  if (per_sm <= 0) per_sm = kConfigBlocksPerSm[config];
  const std::int64_t slots = static_cast<std::int64_t>(std::max(1, job.num_sms)) * per_sm;
  const double meta_pair = job.meta_type == ElemType::kF16 ? 4.0 : 8.0;
  const double tile_bytes = kConfigBN[config] * (64.0 * job.nbits / 8.0 + 2.0 * meta_pair) + kConfigBM[config] * 128.0;
  const double outputs = static_cast<double>(rows) * static_cast<double>(job.n);
  int best = 1;
  double best_cost = 0;
  for (int s = 1; s <= std::min(16, kb); ++s) {
    const int per = (kb + s - 1) / s;
    if ((kb + per - 1) / per != s) continue;  // the same split as a smaller count
    const std::int64_t waves = (blocks * s + slots - 1) / slots;
    double cost = static_cast<double>(waves) * (per + kSplitStartup);
    if (s > 1) cost += kReduceCost + 8.0 * s * outputs / (static_cast<double>(slots) * tile_bytes);
    if (s == 1 || cost < best_cost) {
      best = s;
      best_cost = cost;
    }
  }
  return best;
}

/// Profiling knobs, read once per process (bench/README.md): HQQ_GEMM_TILE
/// forces the block tile's activation rows (16, 32, 64, 128 or 256: the
/// path's config of that many rows; 256 exists only for the TMA kernels),
/// HQQ_GEMM_SPLITS the K split count (clamped to the k tiles), for every
/// GEMM whose job leaves config / splits to the plan; HQQ_GEMM_PLAN=1 prints
/// each launch's plan to stderr. Every tile and split computes the same
/// products (the tests run them all); only the speed changes.
struct PlanKnobs {
  int tile_rows = 0, splits = 0, stream_k = -1;
  bool print = false;
};

const PlanKnobs& plan_knobs() {
  static const PlanKnobs knobs = [] {
    auto read = [](const char* name) {
      const char* v = std::getenv(name);
      return v != nullptr ? std::atoi(v) : 0;
    };
    PlanKnobs k;
    k.tile_rows = read("HQQ_GEMM_TILE");
    k.splits = read("HQQ_GEMM_SPLITS");
    if (std::getenv("HQQ_GEMM_STREAMK") != nullptr) k.stream_k = read("HQQ_GEMM_STREAMK") != 0 ? 1 : 0;
    k.print = read("HQQ_GEMM_PLAN") != 0;
    return k;
  }();
  return knobs;
}

Plan plan_for(const GemmJob& job) {
  Plan pl;
  const int first = job.wgmma ? kTmaConfig : 0, last = job.wgmma ? kConfigs - 1 : kTmaConfig - 1;
  const PlanKnobs& knobs = plan_knobs();
  if (job.config >= 0) {
    pl.config = job.config;
  } else {
    pl.config = smallest_tile(job.m, first, last);
    for (int c = first; c <= last && knobs.tile_rows > 0; ++c) {
      if (kConfigBM[c] == knobs.tile_rows) pl.config = c;
    }
  }
  const std::int64_t bm = kConfigBM[pl.config], bn = kConfigBN[pl.config];
  pl.slab = std::min<std::int64_t>(job.m, 65535 * bm);
  const int kb = static_cast<int>(job.kpad / 64);
  const std::int64_t blocks = (job.n + bn - 1) / bn * ((pl.slab + bm - 1) / bm);
  int splits = job.splits > 0 ? job.splits : knobs.splits;
  if (splits <= 0 && pl.config >= kTmaConfig) {
    splits = tma_splits(job, pl.config, blocks, kb, pl.slab);
  } else if (splits <= 0) {
    // Skinny problems: about two blocks per SM for the small tiles (memory-bound:
    // bytes in flight), one for the large ones; at least 4 k tiles per split.
    const std::int64_t target = static_cast<std::int64_t>(job.num_sms) * kConfigBlocksPerSm[pl.config];
    splits = blocks >= target ? 1 : static_cast<int>((target + blocks - 1) / blocks);
    splits = std::min({splits, 16, std::max(1, kb / 4)});
  }
  splits = std::max(1, std::min(splits, kb));
  pl.kb_per_split = (kb + splits - 1) / splits;
  pl.splits = (kb + pl.kb_per_split - 1) / pl.kb_per_split;  // no empty split
  // Stream-K: where asked for (GemmJob::stream_k, else HQQ_GEMM_STREAMK; off
  // unless asked: not yet measured against the splits), the TMA kernels'
  // block tiles x k tiles shared evenly by as many blocks as fit the SMs.
  const int stream_k = job.stream_k >= 0 ? job.stream_k : knobs.stream_k;
  if (stream_k > 0 && pl.config >= kTmaConfig && blocks * kb < (std::int64_t{1} << 30)) {  // int iterations
    const int per_sm = std::max(1, tma_blocks_per_sm(pl.config, job, true));
    pl.sk_tiles_n = static_cast<int>((job.n + bn - 1) / bn);
    pl.sk.tiles = static_cast<int>(blocks);
    pl.sk.kb = kb;
    const std::int64_t slots = static_cast<std::int64_t>(std::max(1, job.num_sms)) * per_sm;
    pl.sk.per = static_cast<int>((static_cast<std::int64_t>(pl.sk.total()) + slots - 1) / slots);
    pl.splits = 1;
    pl.kb_per_split = kb;
  }
  return pl;
}

template <int NB, typename T, typename MetaT, class C>
cudaError_t launch_cfg(const GemmParams& p, int splits, cudaStream_t stream) {
  constexpr int bytes = Smem<NB, MetaT, C>::kBytes;
  auto kernel = gemm_kernel<NB, T, MetaT, C>;
  if constexpr (bytes > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(static_cast<unsigned>((p.n + C::kBN - 1) / C::kBN), static_cast<unsigned>((p.m + C::kBM - 1) / C::kBM),
                  static_cast<unsigned>(splits));
  kernel<<<grid, C::kThreads, bytes, stream>>>(p);
  return cudaGetLastError();
}

template <int NB, typename T, typename MetaT>
cudaError_t launch_typed(const GemmParams& p, int config, int splits, cudaStream_t stream) {
  switch (config) {
    case 0: return launch_cfg<NB, T, MetaT, Cfg0>(p, splits, stream);
    case 1: return launch_cfg<NB, T, MetaT, Cfg1>(p, splits, stream);
    case 2: return launch_cfg<NB, T, MetaT, Cfg2>(p, splits, stream);
    default: return launch_cfg<NB, T, MetaT, Cfg3>(p, splits, stream);
  }
}

}  // namespace

__global__ void gemm_reduce(const GemmParams p, int splits) {
  const std::int64_t total = p.m * p.n;
  for (std::int64_t i = global_thread(); i < total; i += grid_threads()) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += p.partial[s * total + i];
    if (p.bias != nullptr) v += p.bias[i % p.n];
    store_elem(p.y, i, p.y_type, v);
  }
}

__global__ void gemm_streamk_fixup(const GemmParams p, int bm, int bn) {
  const StreamK sk{p.sk_tiles, p.kpad / 64, p.sk_per};
  const int t = static_cast<int>(blockIdx.x);
  if (sk.whole(t)) return;  // its block stored it
  const int mt = t / p.sk_tiles_n, nt = t - mt * p.sk_tiles_n;
  const std::int64_t m0 = static_cast<std::int64_t>(mt) * bm, n0 = static_cast<std::int64_t>(nt) * bn;
  const int c0 = sk.first_cta(t), c1 = sk.last_cta(t), tile = bm * bn;
  for (int e = static_cast<int>(threadIdx.x); e < tile; e += static_cast<int>(blockDim.x)) {
    const int r = e / bn, col = e - r * bn;
    const std::int64_t m = m0 + r, n = n0 + col;
    if (m >= p.m || n >= p.n) continue;
    float v = 0.0f;
    for (int c = c0; c <= c1; ++c) v += p.partial[(static_cast<std::int64_t>(c) * 2 + sk.slot_of(c, t)) * tile + e];
    if (p.bias != nullptr) v += p.bias[n];
    store_elem(p.y, m * p.n + n, p.y_type, v);
  }
}

int gemm_config_count() { return kConfigs; }

bool gemm_wgmma_built() {
#ifdef HQQ_HAVE_WGMMA
  return true;
#else
  return false;
#endif
}

std::string gemm_plan_description(const GemmJob& job) {
  const Plan pl = plan_for(job);
  char text[320];
  int at = std::snprintf(text, sizeof text, "M %lld N %lld K %lld, %d-bit, %s, tile %d x %d, ",
                         static_cast<long long>(job.m), static_cast<long long>(job.n), static_cast<long long>(job.k),
                         job.nbits, pl.config >= kTmaConfig ? "TMA + wgmma" : "mma.sync", kConfigBM[pl.config],
                         kConfigBN[pl.config]);
  if (pl.sk.tiles > 0) {
    std::snprintf(text + at, sizeof text - at, "stream-K: %d blocks of %d k tiles over %d tiles of %d", pl.sk.ctas(),
                  pl.sk.per, pl.sk.tiles, pl.sk.kb);
  } else {
    std::snprintf(text + at, sizeof text - at, "%d split(s) of %d k tiles", pl.splits, pl.kb_per_split);
  }
  return text;
}

std::size_t gemm_workspace_bytes(const GemmJob& job) {
  const Plan pl = plan_for(job);
  if (pl.sk.tiles > 0) {  // two partial slots of a block tile per block
    return static_cast<std::size_t>(pl.sk.ctas()) * 2 * kConfigBM[pl.config] * kConfigBN[pl.config] * sizeof(float);
  }
  return pl.splits > 1 ? static_cast<std::size_t>(pl.splits) * pl.slab * job.n * sizeof(float) : 0;
}

cudaError_t launch_gemm(const GemmJob& job, void* workspace, cudaStream_t stream) {
  if (job.x_type == ElemType::kF32) return cudaErrorInvalidValue;  // the caller routes f32 to the GEMV
  if (job.config >= kConfigs || (job.config >= kTmaConfig && !job.wgmma)) return cudaErrorInvalidValue;
  const Plan pl = plan_for(job);
  if ((pl.splits > 1 || pl.sk.tiles > 0) && workspace == nullptr) return cudaErrorInvalidValue;
  if (plan_knobs().print) std::fprintf(stderr, "hqq gemm plan: %s\n", gemm_plan_description(job).c_str());
  const std::size_t xe = 2, ye = job.y_type == ElemType::kF32 ? 4 : 2;
  for (std::int64_t r0 = 0; r0 < job.m; r0 += pl.slab) {
    GemmParams p{};
    p.codes = job.codes;
    p.meta = static_cast<const unsigned char*>(job.meta);
    p.bias = job.bias;
    p.x = static_cast<const char*>(job.x) + r0 * job.k * xe;
    p.y = static_cast<char*>(job.y) + r0 * job.n * ye;
    p.partial = static_cast<float*>(workspace);
    p.m = std::min(pl.slab, job.m - r0);
    p.n = job.n;
    p.k = job.k;
    p.npad = job.npad;
    p.groups = job.groups;
    p.kpad = static_cast<int>(job.kpad);
    p.group_size = static_cast<int>(job.group_size);
    p.kb_per_split = pl.kb_per_split;
    p.y_type = job.y_type;
    StreamK sk = pl.sk;
    if (sk.tiles > 0) {  // this slab's tiles (the last slab may hold fewer rows)
      const std::int64_t bm = kConfigBM[pl.config];
      sk.tiles = static_cast<int>(pl.sk_tiles_n * ((p.m + bm - 1) / bm));
      p.sk_per = sk.per;
      p.sk_tiles_n = pl.sk_tiles_n;
      p.sk_tiles = sk.tiles;
    }
    cudaError_t e;
    if (pl.config >= kTmaConfig) {
      e = with_tma_tile(pl.config, cudaErrorNotSupported, [&](auto bm) {
        return launch_gemm_tma_bm<decltype(bm)::value>(job.nbits, job.x_type, job.meta_type, p, pl.splits, stream);
      });
    } else {
      e = with_gemm_instance(job.nbits, job.x_type, job.meta_type, cudaErrorInvalidValue,
                             [&](auto nb, auto t, auto mt) {
                               return launch_typed<decltype(nb)::value, typename decltype(t)::type,
                                                   typename decltype(mt)::type>(p, pl.config, pl.splits, stream);
                             });
    }
    if (e != cudaSuccess) return e;
    if (sk.tiles > 0) {
      gemm_streamk_fixup<<<sk.tiles, 256, 0, stream>>>(p, kConfigBM[pl.config], kConfigBN[pl.config]);
      e = cudaGetLastError();
      if (e != cudaSuccess) return e;
    } else if (pl.splits > 1) {
      const std::int64_t total = p.m * p.n;
      const int blocks = static_cast<int>(std::min<std::int64_t>((total + 255) / 256, 4096));
      gemm_reduce<<<blocks, 256, 0, stream>>>(p, pl.splits);
      e = cudaGetLastError();
      if (e != cudaSuccess) return e;
    }
  }
  return cudaSuccess;
}

}  // namespace hqq::cuda::detail
