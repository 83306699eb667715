// The fused HQQ solver on the GPU (DESIGN §1, §4).
//
// Register path (group_size <= 1024): a group is held by TPG lanes of one
// warp, EPL weights each, in registers from load to packed store. A block
// stages its groups through shared memory once (coalesced for either axis),
// runs every iteration on chip (group sums are warp shuffles), then writes
// the codes already packed in the interchange layout, plus scale and zero:
// one read of W, one write of the results.
//   axis 1: a block owns P packed rows, i.e. the groups c * prow + i of
//           every bit field c, so it can pack them itself;
//   axis 0: a group is a column of the grouped view and packs alone.
// Large-group path (group_size > 1024): one block per group, weights re-read
// from global memory every iteration, codes through the workspace and the
// pack kernel. Correct, slower, rare.
//
// Solvers: proximal keeps every group on chip for all iterations. legacy
// needs the tensor-wide mean error of each iteration to know when to stop:
// groups run a block of iterations keeping z after each update and per-block
// error partials; a one-block kernel sums them in a fixed order (so runs are
// deterministic) and replays the reference's stopping rule; a last pass
// writes the codes for the chosen z. No host round trip anywhere.

#include <cfloat>
#include <cmath>

#include "common.cuh"
#include "hqq/detail/sum_order.hpp"
#include "hqq/packing.hpp"

namespace hqq::cuda::detail {
namespace {

constexpr int kMaxRegisterGroup = static_cast<int>(::hqq::detail::kRegisterGroupMax);
constexpr int kBlockThreads = 256;       // target threads per block
// The large-group path adds a group's sums over its block's threads, in the
// order of sum_order.hpp.
static_assert(kBlockThreads == ::hqq::detail::kLargeGroupParts, "large-group sums follow sum_order.hpp");
constexpr int kMaxThreads = 320;         // largest register-path block (32 lanes x 10 groups)
constexpr int kLegacyBlock = 20;         // legacy iterations between stop checks
constexpr std::size_t kAlign = 256;

enum class Mode : int { kRtn, kProximal, kLegacyIterate, kLegacyFinal };

/// Legacy stopping state, in the workspace.
struct LegacyState {
  float best;  // lowest tensor-wide mean error so far
  int stopped; // the reference loop has broken
  int sel;     // z_hist row holding the current z (the z after update sel of the last launch)
  int pad;
};

/// Workspace layout (offsets in bytes).
struct Workspace {
  std::size_t flag = kNonfiniteFlagOffset;  // int
  std::size_t state = 16;                   // LegacyState
  std::size_t z_hist = 0;                   // block * ngroups floats
  std::size_t err_part = 0;                 // block * nblocks doubles
  std::size_t codes = 0;                    // numel bytes (large-group path)
  std::size_t total = 0;
};

std::size_t align_up(std::size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

/// Launch geometry of one job.
struct Plan {
  std::int64_t numel, G, ngroups, R, C, prow;
  int axis, nbits, ratio;
  bool big;          // large-group path
  int tpg, epl;      // register path: lanes per group, weights per lane
  int slots;         // groups per block
  int P;             // axis 1: packed rows per block
  std::int64_t nblocks;
  int legacy_block;  // iterations per legacy block
  std::size_t smem;  // dynamic shared memory bytes
};

Plan make_plan(std::int64_t numel, std::int64_t G, int axis, int nbits, Solver solver, const SolverParams& p) {
  Plan pl{};
  pl.numel = numel;
  pl.G = G;
  pl.ngroups = numel / G;
  pl.axis = axis;
  pl.nbits = nbits;
  pl.ratio = pack_ratio(nbits);
  pl.R = axis == 1 ? pl.ngroups : G;
  pl.C = axis == 1 ? G : pl.ngroups;
  pl.prow = packed_rows(nbits, pl.R);
  pl.big = G > kMaxRegisterGroup;
  pl.legacy_block = solver == Solver::kLegacy ? std::min(p.iters, kLegacyBlock) : 0;
  if (pl.big) {
    pl.tpg = kBlockThreads;
    pl.slots = 1;
    pl.nblocks = pl.ngroups;
    pl.smem = 0;
    return pl;
  }
  // Lanes per group and weights per lane: the split of sum_order.hpp, so
  // the group sums add in the CPU's order.
  const ::hqq::detail::SumOrder order = ::hqq::detail::sum_order(G);
  const int tpg = order.parts;
  pl.tpg = tpg;
  pl.epl = order.epl;
  if (axis == 1) {
    // Whole warps per block (tpg * ratio * P a multiple of 32, at most 320).
    pl.P = std::max(1, kBlockThreads / (tpg * pl.ratio));
    while ((tpg * pl.ratio * pl.P) % 32 != 0) ++pl.P;
    pl.slots = pl.ratio * pl.P;
    pl.nblocks = (pl.prow + pl.P - 1) / pl.P;
  } else {
    pl.P = 0;
    pl.slots = kBlockThreads / tpg;
    pl.nblocks = (pl.ngroups + pl.slots - 1) / pl.slots;
  }
  pl.smem = static_cast<std::size_t>(pl.slots) * (G + 1) * sizeof(float) +
            static_cast<std::size_t>(pl.legacy_block) * pl.slots * sizeof(float);
  return pl;
}

Workspace make_workspace(const Plan& pl) {
  Workspace ws;
  std::size_t off = align_up(ws.state + sizeof(LegacyState));
  if (pl.legacy_block > 0) {
    ws.z_hist = off;
    off = align_up(off + static_cast<std::size_t>(pl.legacy_block) * pl.ngroups * sizeof(float));
    ws.err_part = off;
    off = align_up(off + static_cast<std::size_t>(pl.legacy_block) * pl.nblocks * sizeof(double));
  }
  if (pl.big) {
    ws.codes = off;
    off = align_up(off + static_cast<std::size_t>(pl.numel));
  }
  ws.total = off;
  return ws;
}

/// Everything a solver kernel reads, by value.
struct Args {
  const void* w;
  ElemType in_type, meta_type;
  std::int64_t G, ngroups, R, prow, numel;
  int axis, nbits, ratio, P, slots;
  Mode mode;
  float max_v, pm1, inv_beta_legacy;
  bool round_zero;
  double beta, kappa;
  int iters, patience;
  int nb;       // legacy: iterations in this launch
  bool first;   // legacy: first launch (z from the init)
  std::uint8_t* packed;
  std::uint8_t* codes;  // large-group path: unpacked codes
  void* scale;
  void* zero;
  int* flag;
  LegacyState* state;
  float* z_hist;
  double* err_part;
};

// ------------------------------------------------------------------ groups

/// A group held in registers by TPG lanes (EPL weights each).
template <int TPG, int EPL>
struct RegGroup {
  float w[EPL];
  int n;  // valid weights of this lane

  __device__ void min_max(float& mn, float& mx) const {
    mn = FLT_MAX;
    mx = -FLT_MAX;
#pragma unroll
    for (int u = 0; u < EPL; ++u) {
      if (u < n) {
        mn = fminf(mn, w[u]);
        mx = fmaxf(mx, w[u]);
      }
    }
#pragma unroll
    for (int off = TPG / 2; off > 0; off /= 2) {
      mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, off));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    }
  }

  /// Group sums of |w - w_r| and of the z terms (the same in every lane).
  __device__ void step(float s, float z, float max_v, float inv_beta, float pm1, float& err, float& zs) const {
    err = 0.0f;
    zs = 0.0f;
#pragma unroll
    for (int u = 0; u < EPL; ++u) {
      if (u < n) {
        float zt;
        err += solver_step<DeviceOps>(w[u], s, z, max_v, inv_beta, pm1, zt);
        zs += zt;
      }
    }
    err = group_sum<TPG>(err);
    zs = group_sum<TPG>(zs);
  }

  __device__ static bool any(bool b) { return __syncthreads_or(b) != 0; }
};

/// Block-wide sum in a fixed order (deterministic); every thread gets it.
__device__ float block_sum(float v, float* red) {
  const int tid = threadIdx.x;
  red[tid] = v;
  __syncthreads();
  for (int off = blockDim.x / 2; off > 0; off /= 2) {
    if (tid < off) red[tid] += red[tid + off];
    __syncthreads();
  }
  const float r = red[0];
  __syncthreads();
  return r;
}

__device__ float block_min(float v, float* red) {
  const int tid = threadIdx.x;
  red[tid] = v;
  __syncthreads();
  for (int off = blockDim.x / 2; off > 0; off /= 2) {
    if (tid < off) red[tid] = fminf(red[tid], red[tid + off]);
    __syncthreads();
  }
  const float r = red[0];
  __syncthreads();
  return r;
}

/// A large group read from global memory by the whole block.
struct BigGroup {
  const Args* a;
  std::int64_t g;
  float* red;  // kBlockThreads floats of shared memory

  __device__ float at(std::int64_t e) const {
    const std::int64_t idx = a->axis == 1 ? g * a->G + e : e * a->ngroups + g;
    return load_elem(a->w, idx, a->in_type);
  }
  __device__ void min_max(float& mn, float& mx) const {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (std::int64_t e = threadIdx.x; e < a->G; e += blockDim.x) {
      const float x = at(e);
      if (!isfinite(x)) *a->flag = 1;
      lo = fminf(lo, x);
      hi = fmaxf(hi, x);
    }
    mn = block_min(lo, red);
    mx = -block_min(-hi, red);
  }
  __device__ void step(float s, float z, float max_v, float inv_beta, float pm1, float& err, float& zs) const {
    float e_sum = 0.0f, z_sum = 0.0f;
    for (std::int64_t e = threadIdx.x; e < a->G; e += blockDim.x) {
      float zt;
      e_sum += solver_step<DeviceOps>(at(e), s, z, max_v, inv_beta, pm1, zt);
      z_sum += zt;
    }
    err = block_sum(e_sum, red);
    zs = block_sum(z_sum, red);
  }
  __device__ static bool any(bool b) { return b; }  // one group per block: uniform
};

// ------------------------------------------------------------------ solver logic

/// Proximal solver of one group (DESIGN §1, our variant): beta grows by
/// kappa, the group keeps its lowest-error z and stops after `patience`
/// iterations without improvement (0: runs all). Mirrors GroupTile::solve_proximal.
template <class Group>
__device__ float solve_proximal(const Group& grp, const Args& a, float s, float z) {
  const float g = static_cast<float>(a.G);
  double beta = a.beta;
  float best_err = INFINITY;
  float best_z = z;
  int stale = 0;
  bool active = true;
  for (int it = 0; it <= a.iters; ++it) {
    float err, zs;
    grp.step(s, z, a.max_v, static_cast<float>(1.0 / beta), a.pm1, err, zs);
    const bool improved = active && err < best_err;
    if (improved) {
      best_err = err;
      best_z = z;
      stale = 0;
    } else {
      ++stale;
    }
    if (a.patience > 0 && stale >= a.patience) active = false;
    if (it == a.iters || (a.patience > 0 && !Group::any(active))) break;  // a.patience is uniform
    z = zs / g;  // torch.mean divides
    beta *= a.kappa;
  }
  return best_z;
}

/// Legacy: this launch's iterations; z after update j goes to z_hist[j],
/// the group's error of iteration j to `record(j, err)`.
template <class Group, class Record>
__device__ void legacy_iterate(const Group& grp, const Args& a, float s, float z, std::int64_t gi, bool valid,
                               Record record) {
  const float g = static_cast<float>(a.G);
  for (int j = 0; j < a.nb; ++j) {
    float err, zs;
    grp.step(s, z, a.max_v, a.inv_beta_legacy, a.pm1, err, zs);
    z = zs / g;
    record(j, err);
    if (valid) a.z_hist[static_cast<std::int64_t>(j) * a.ngroups + gi] = z;
  }
}

/// The group's final z (the proximal solver runs here; RTN and legacy's last
/// pass keep the z they start from), and the s and z its codes are computed
/// with: proximal codes use scale and zero as stored (what dequantize will
/// use), the others the unrounded values, as on the CPU.
template <class Group>
__device__ void final_zero(const Group& grp, const Args& a, float s, float& z, float& cs, float& cz) {
  cs = s;
  cz = z;
  if (a.mode != Mode::kProximal) return;
  z = solve_proximal(grp, a, s, z);
  cz = round_elem(a.meta_type, z);
  cs = 1.0f / round_elem(a.meta_type, 1.0f / s);
}

/// Initial s and z of a group, and the z the current mode starts from.
__device__ void start(const Args& a, float mn, float mx, std::int64_t gi, bool valid, float& s, float& z) {
  init_scale_zero(mn, mx, a.max_v, a.round_zero, s, z);
  const bool from_hist = a.mode == Mode::kLegacyFinal || (a.mode == Mode::kLegacyIterate && !a.first);
  if (from_hist && valid) z = a.z_hist[static_cast<std::int64_t>(a.state->sel) * a.ngroups + gi];
}

/// Stores scale = 1/s and zero = z of group gi in the meta type.
__device__ void store_meta(const Args& a, std::int64_t gi, float s, float z) {
  store_elem(a.scale, gi, a.meta_type, 1.0f / s);
  store_elem(a.zero, gi, a.meta_type, z);
}

// ------------------------------------------------------------------ kernels

template <int TPG, int EPL>
__global__ void __launch_bounds__(kMaxThreads) solve_registers(Args a) {
  extern __shared__ float smem[];
  if (a.mode == Mode::kLegacyIterate && a.state->stopped) return;  // uniform: the loop already broke
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  const std::int64_t b = blockIdx.x;
  const int stride = static_cast<int>(a.G) + 1;  // padded: no bank conflicts on the transpose
  float* buf = smem;
  float* slot_err = smem + static_cast<std::size_t>(a.slots) * stride;

  // Group of slot k, or -1 when the slot holds none.
  auto group_of = [&](int k) -> std::int64_t {
    if (a.axis == 1) {
      const std::int64_t i = b * a.P + k % a.P;
      const std::int64_t r = static_cast<std::int64_t>(k / a.P) * a.prow + i;
      return (i < a.prow && r < a.R) ? r : -1;
    }
    const std::int64_t j = b * a.slots + k;
    return j < a.ngroups ? j : -1;
  };

  // Load: coalesced along memory for both axes, transposed into buf[slot][e].
  bool finite = true;
  const std::int64_t tile = static_cast<std::int64_t>(a.slots) * a.G;
  for (std::int64_t idx = tid; idx < tile; idx += nthreads) {
    int k;
    std::int64_t e;
    if (a.axis == 1) {
      k = static_cast<int>(idx / a.G);
      e = idx % a.G;
    } else {
      e = idx / a.slots;
      k = static_cast<int>(idx % a.slots);
    }
    const std::int64_t gi = group_of(k);
    float x = 0.0f;
    if (gi >= 0) {
      x = load_elem(a.w, a.axis == 1 ? gi * a.G + e : e * a.ngroups + gi, a.in_type);
      finite = finite && isfinite(x);
    }
    buf[k * stride + e] = x;
  }
  if (!finite) *a.flag = 1;
  __syncthreads();

  const int k = tid / TPG;
  const int t = tid % TPG;
  const std::int64_t gi = group_of(k);
  const bool valid = gi >= 0;
  RegGroup<TPG, EPL> grp;
  const int e0 = t * EPL;
  grp.n = static_cast<int>(min(static_cast<std::int64_t>(EPL), max(a.G - e0, std::int64_t{0})));
#pragma unroll
  for (int u = 0; u < EPL; ++u) grp.w[u] = u < grp.n ? buf[k * stride + e0 + u] : 0.0f;

  float mn, mx, s, z;
  grp.min_max(mn, mx);
  start(a, mn, mx, gi, valid, s, z);

  if (a.mode == Mode::kLegacyIterate) {
    legacy_iterate(grp, a, s, z, gi, valid, [&](int j, float err) {
      if (t == 0) slot_err[j * a.slots + k] = valid ? err : 0.0f;
    });
    __syncthreads();
    if (tid < a.nb) {  // per-block partial of iteration tid, in slot order
      double sum = 0.0;
      for (int q = 0; q < a.slots; ++q) sum += slot_err[tid * a.slots + q];
      a.err_part[static_cast<std::int64_t>(tid) * gridDim.x + b] = sum;
    }
    return;
  }

  float cs, cz;
  final_zero(grp, a, s, z, cs, cz);
  if (valid && t == 0) store_meta(a, gi, s, z);

  // Codes into shared memory (over the weights, all read by now), then packed.
  __syncthreads();
  std::uint8_t* cbuf = reinterpret_cast<std::uint8_t*>(smem);
  const int G = static_cast<int>(a.G);
#pragma unroll
  for (int u = 0; u < EPL; ++u)
    if (u < grp.n) cbuf[k * G + e0 + u] = static_cast<std::uint8_t>(quantize_value<DeviceOps>(grp.w[u], cs, cz, a.max_v));
  __syncthreads();

  if (a.axis == 1) {
    const std::int64_t n = static_cast<std::int64_t>(a.P) * G;
    for (std::int64_t idx = tid; idx < n; idx += nthreads) {
      const int p = static_cast<int>(idx / G);
      const int j = static_cast<int>(idx % G);
      const std::int64_t i = b * a.P + p;
      if (i >= a.prow) continue;
      std::uint32_t word = 0;
      for (int c = 0; c < a.ratio; ++c) {
        if (static_cast<std::int64_t>(c) * a.prow + i < a.R)
          word |= static_cast<std::uint32_t>(cbuf[(c * a.P + p) * G + j]) << chunk_shift(a.nbits, c);
      }
      const std::int64_t out = i * G + j;
      if (a.nbits == 3) reinterpret_cast<std::uint32_t*>(a.packed)[out] = word;
      else a.packed[out] = static_cast<std::uint8_t>(word);
    }
  } else {
    const std::int64_t prow = a.prow;  // packed rows of one column
    const std::int64_t n = prow * a.slots;
    for (std::int64_t idx = tid; idx < n; idx += nthreads) {
      const std::int64_t ip = idx / a.slots;
      const int kk = static_cast<int>(idx % a.slots);
      const std::int64_t j = b * a.slots + kk;
      if (j >= a.ngroups) continue;
      std::uint32_t word = 0;
      for (int c = 0; c < a.ratio; ++c) {
        const std::int64_t e = c * prow + ip;
        if (e < a.G) word |= static_cast<std::uint32_t>(cbuf[kk * G + e]) << chunk_shift(a.nbits, c);
      }
      const std::int64_t out = ip * a.ngroups + j;
      if (a.nbits == 3) reinterpret_cast<std::uint32_t*>(a.packed)[out] = word;
      else a.packed[out] = static_cast<std::uint8_t>(word);
    }
  }
}

/// Large groups: one block per group; codes to a.codes (unpacked), packed after.
__global__ void __launch_bounds__(kBlockThreads) solve_big(Args a) {
  __shared__ float red[kBlockThreads];
  if (a.mode == Mode::kLegacyIterate && a.state->stopped) return;
  const std::int64_t gi = blockIdx.x;
  const BigGroup grp{&a, gi, red};
  float mn, mx, s, z;
  grp.min_max(mn, mx);
  start(a, mn, mx, gi, true, s, z);
  if (a.mode == Mode::kLegacyIterate) {
    legacy_iterate(grp, a, s, z, gi, true, [&](int j, float err) {
      if (threadIdx.x == 0) a.err_part[static_cast<std::int64_t>(j) * gridDim.x + gi] = err;
    });
    return;
  }
  float cs, cz;
  final_zero(grp, a, s, z, cs, cz);
  if (threadIdx.x == 0) store_meta(a, gi, s, z);
  for (std::int64_t e = threadIdx.x; e < a.G; e += blockDim.x) {
    const std::int64_t idx = a.axis == 1 ? gi * a.G + e : e * a.ngroups + gi;
    a.codes[idx] = static_cast<std::uint8_t>(quantize_value<DeviceOps>(grp.at(e), cs, cz, a.max_v));
  }
}

__global__ void legacy_init(LegacyState* st) {
  st->best = INFINITY;
  st->stopped = 0;
  st->sel = 0;
}

/// Sums the per-block error partials of each iteration of the last launch in
/// a fixed order and replays the reference's loop: the error of iteration j
/// is measured with the z before its update; the first one that does not
/// improve on the best stops the loop, keeping the z after that update.
__global__ void legacy_decide(const double* err_part, std::int64_t nblocks, int nb, std::int64_t numel,
                              LegacyState* st) {
  __shared__ double red[kBlockThreads];
  __shared__ double totals[kLegacyBlock];
  if (st->stopped) return;
  for (int j = 0; j < nb; ++j) {
    double sum = 0.0;
    for (std::int64_t q = threadIdx.x; q < nblocks; q += blockDim.x) sum += err_part[j * nblocks + q];
    red[threadIdx.x] = sum;
    __syncthreads();
    for (int off = blockDim.x / 2; off > 0; off /= 2) {
      if (threadIdx.x < off) red[threadIdx.x] += red[threadIdx.x + off];
      __syncthreads();
    }
    if (threadIdx.x == 0) totals[j] = red[0];
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  int last = nb - 1;  // the z after the last update, unless the loop breaks
  for (int j = 0; j < nb; ++j) {
    const float e = static_cast<float>(totals[j] / static_cast<double>(numel));
    if (e < st->best) {
      st->best = e;
    } else {
      last = j;  // the reference keeps the z of the update that did not improve
      st->stopped = 1;
      break;
    }
  }
  st->sel = last;
}

template <int TPG, int EPL>
cudaError_t launch_registers(const Plan& pl, const Args& a, cudaStream_t stream) {
  auto kernel = solve_registers<TPG, EPL>;
  if (pl.slots * TPG > kMaxThreads) return cudaErrorInvalidConfiguration;
  if (pl.smem > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(pl.smem));
    if (e != cudaSuccess) return e;
  }
  kernel<<<static_cast<unsigned>(pl.nblocks), pl.slots * TPG, pl.smem, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_solver(const Plan& pl, const Args& a, cudaStream_t stream) {
  if (pl.big) {
    solve_big<<<static_cast<unsigned>(pl.nblocks), kBlockThreads, 0, stream>>>(a);
    return cudaGetLastError();
  }
  switch (pl.tpg * 100 + pl.epl) {
    case 108: return launch_registers<1, 8>(pl, a, stream);
    case 208: return launch_registers<2, 8>(pl, a, stream);
    case 408: return launch_registers<4, 8>(pl, a, stream);
    case 808: return launch_registers<8, 8>(pl, a, stream);
    case 1608: return launch_registers<16, 8>(pl, a, stream);
    case 3208: return launch_registers<32, 8>(pl, a, stream);
    case 3216: return launch_registers<32, 16>(pl, a, stream);
    case 3232: return launch_registers<32, 32>(pl, a, stream);
    default: return cudaErrorInvalidConfiguration;
  }
}

__global__ void find_nonfinite(const void* w, ElemType type, std::int64_t numel, unsigned long long* first) {
  for (std::int64_t i = global_thread(); i < numel; i += grid_threads()) {
    if (!isfinite(load_elem(w, i, type))) atomicMin(first, static_cast<unsigned long long>(i));
  }
}

}  // namespace

cudaError_t launch_find_nonfinite(const void* weight, ElemType type, std::int64_t numel,
                                  unsigned long long* first, cudaStream_t stream) {
  const std::int64_t blocks = std::min<std::int64_t>((numel + kBlockThreads - 1) / kBlockThreads, 65535 * 16);
  find_nonfinite<<<static_cast<unsigned>(blocks), kBlockThreads, 0, stream>>>(weight, type, numel, first);
  return cudaGetLastError();
}

std::size_t quantize_workspace_bytes(std::int64_t numel, std::int64_t group_size, int axis, int nbits,
                                     Solver solver, const SolverParams& params) {
  return make_workspace(make_plan(numel, group_size, axis, nbits, solver, params)).total;
}

cudaError_t launch_quantize(const QuantizeJob& job, cudaStream_t stream) {
  const Plan pl = make_plan(job.numel, job.group_size, job.axis, job.nbits, job.solver, job.params);
  if (pl.nblocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const Workspace ws = make_workspace(pl);
  auto* base = static_cast<std::uint8_t*>(job.workspace);

  Args a{};
  a.w = job.weight;
  a.in_type = job.in_type;
  a.meta_type = job.meta_type;
  a.G = pl.G;
  a.ngroups = pl.ngroups;
  a.R = pl.R;
  a.prow = pl.prow;
  a.numel = pl.numel;
  a.axis = pl.axis;
  a.nbits = pl.nbits;
  a.ratio = pl.ratio;
  a.P = pl.P;
  a.slots = pl.slots;
  a.max_v = max_code(job.nbits);
  a.pm1 = static_cast<float>(static_cast<double>(job.params.lp_norm) - 1.0);
  a.inv_beta_legacy = static_cast<float>(1.0 / static_cast<double>(job.params.beta));
  a.round_zero = job.round_zero;
  a.beta = job.params.beta;
  a.kappa = job.params.kappa;
  a.iters = job.params.iters;
  a.patience = job.params.patience;
  a.packed = job.packed;
  a.codes = pl.big ? base + ws.codes : nullptr;
  a.scale = job.scale;
  a.zero = job.zero;
  a.flag = reinterpret_cast<int*>(base + ws.flag);
  a.state = reinterpret_cast<LegacyState*>(base + ws.state);
  a.z_hist = pl.legacy_block > 0 ? reinterpret_cast<float*>(base + ws.z_hist) : nullptr;
  a.err_part = pl.legacy_block > 0 ? reinterpret_cast<double*>(base + ws.err_part) : nullptr;

  cudaError_t e = cudaMemsetAsync(a.flag, 0, sizeof(int), stream);
  if (e != cudaSuccess) return e;

  if (job.solver == Solver::kLegacy) {
    legacy_init<<<1, 1, 0, stream>>>(a.state);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    for (int it0 = 0; it0 < job.params.iters; it0 += pl.legacy_block) {
      a.mode = Mode::kLegacyIterate;
      a.nb = std::min(pl.legacy_block, job.params.iters - it0);
      a.first = it0 == 0;
      if ((e = launch_solver(pl, a, stream)) != cudaSuccess) return e;
      legacy_decide<<<1, kBlockThreads, 0, stream>>>(a.err_part, pl.nblocks, a.nb, pl.numel, a.state);
      if ((e = cudaGetLastError()) != cudaSuccess) return e;
    }
    a.mode = Mode::kLegacyFinal;
    a.first = false;
  } else {
    a.mode = job.solver == Solver::kProximal ? Mode::kProximal : Mode::kRtn;
  }
  if ((e = launch_solver(pl, a, stream)) != cudaSuccess) return e;
  if (pl.big) return launch_pack(pl.nbits, a.codes, pl.R, pl.C, job.packed, stream);
  return cudaSuccess;
}

}  // namespace hqq::cuda::detail
