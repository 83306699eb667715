// QuantizedLinear on the GPU: a fused dequantize-GEMV for M = 1..16 over the
// chunk layout of hqq/detail/linear_layout.hpp, a split-K reduction, and a
// plain kernel for the dense path.
//
// A block is 8 warps; warp w owns R consecutive weight rows and every lane a
// 32-code chunk of them at a time (lane, lane + 32, ...), so a warp's loads of
// a row are contiguous (16 bytes per lane at 4 bits). The block's MT rows of x
// are staged once per K tile in shared memory as f32 (XOR-swizzled so the
// lanes' 16-byte reads are conflict-free), with per-chunk sums of x next to
// them. Per chunk a lane forms p = sum (q - zi) * x over its 32 codes, q - zi
// made exact in f32 by a byte permute into 2^23 + q and one subtraction (zi
// the integer nearest z, see zero_integer_part), then adds
// s * (p - (z - zi) * sum x): the float zero-point applied exactly.
// Accumulation is f32 throughout.

#include <algorithm>

#include "common.cuh"
#include "hqq/detail/linear_layout.hpp"

namespace hqq::cuda::detail {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
/// Largest m tile; larger m runs as several tiles (grid.y).
constexpr int kMaxTile = 16;

/// Weight rows per warp: two for small m tiles (x reads shared by two rows).
__host__ __device__ constexpr int rows_per_warp(int mt) { return mt <= 4 ? 2 : 1; }
/// K elements staged per tile: at least one chunk per lane, at least 16 KB of x.
__host__ __device__ constexpr int k_tile(int mt) { return mt * 1024 >= 4096 ? 1024 : 4096 / mt; }
/// Dynamic shared memory of a kernel instance: x tile plus chunk sums.
__host__ __device__ constexpr std::size_t smem_bytes(int mt) {
  return static_cast<std::size_t>(mt) * (k_tile(mt) + k_tile(mt) / 32) * sizeof(float);
}

/// Position of tile element k: chunk c keeps its 32 floats, its eight float4
/// slots permuted by c & 7.
__device__ __forceinline__ int swizzle(int k) {
  const int c = k >> 5, e = k & 31;
  return (c << 5) | ((((e >> 2) ^ c) & 7) << 2) | (e & 3);
}

/// The NB words of one chunk, with the widest aligned loads.
template <int NB>
__device__ __forceinline__ void load_chunk(const std::uint32_t* p, std::uint32_t (&w)[NB]) {
  if constexpr (NB == 8 || NB == 4) {
#pragma unroll
    for (int v = 0; v < NB / 4; ++v) {
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(p) + v);
      w[4 * v] = u.x;
      w[4 * v + 1] = u.y;
      w[4 * v + 2] = u.z;
      w[4 * v + 3] = u.w;
    }
  } else if constexpr (NB == 2) {
    const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = u.x;
    w[1] = u.y;
  } else {
#pragma unroll
    for (int v = 0; v < NB; ++v) w[v] = __ldg(p + v);
  }
}

/// Codes 4f .. 4f+3 of a chunk, one per byte (the layout's per-byte rule).
template <int NB>
__device__ __forceinline__ std::uint32_t slot_bytes(const std::uint32_t (&w)[NB], int f) {
  if constexpr (NB == 8) {
    return w[f];
  } else if constexpr (NB == 4) {
    return (w[f >> 1] >> (4 * (f & 1))) & 0x0F0F0F0Fu;
  } else if constexpr (NB == 2) {
    return (w[f >> 2] >> (2 * (f & 3))) & 0x03030303u;
  } else if constexpr (NB == 1) {
    return (w[0] >> f) & 0x01010101u;
  } else {  // 3: low two bits by the 2-bit rule, the high bit by the 1-bit rule
    const std::uint32_t lo = (w[f >> 2] >> (2 * (f & 3))) & 0x03030303u;
    const std::uint32_t hi = (w[2] >> f) & 0x01010101u;
    return lo | (hi << 2);
  }
}

/// Byte i of `bytes` minus an integer offset, exactly: one permute builds the
/// float 2^23 + q, and `base` = 2^23 + zi (both exact integers below 2^24).
__device__ __forceinline__ float byte_to_float(std::uint32_t bytes, int i, float base) {
  return __uint_as_float(__byte_perm(bytes, 0x4B000000u, 0x7440u | static_cast<unsigned>(i))) - base;
}

template <class MetaT>
__device__ __forceinline__ void load_meta(const void* meta, std::int64_t index, float& s, float& z) {
  if constexpr (sizeof(MetaT) == 2) {
    const __half2 h = __ldg(static_cast<const __half2*>(meta) + index);
    s = __low2float(h);
    z = __high2float(h);
  } else {
    const float2 f = __ldg(static_cast<const float2*>(meta) + index);
    s = f.x;
    z = f.y;
  }
}

/// The fused kernel. grid = (row blocks, m tiles, K splits). With splits,
/// `partial` [splits][m][N] gets the raw sums; else y gets sum + bias.
template <int NB, int MT, class MetaT>
__global__ void __launch_bounds__(kThreads) gemv_kernel(LinearJob job, std::int64_t k_per_split, float* partial) {
  constexpr int KT = k_tile(MT);
  constexpr int R = rows_per_warp(MT);
  extern __shared__ float smem[];
  float* xs = smem;              // [MT][KT], swizzled
  float* sums = smem + MT * KT;  // [MT][KT / 32]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const std::int64_t n0 = (static_cast<std::int64_t>(blockIdx.x) * kWarps + warp) * R;
  const std::int64_t m0 = static_cast<std::int64_t>(blockIdx.y) * MT;
  const std::int64_t K = job.k, N = job.n;
  const std::int64_t kbeg = static_cast<std::int64_t>(blockIdx.z) * k_per_split;
  const std::int64_t kend = min(K, kbeg + k_per_split);
  const std::int64_t chunks_row = K / 32, groups_row = K / job.group_size;

  float acc[R][MT];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;

  for (std::int64_t k0 = kbeg; k0 < kend; k0 += KT) {
    const int kt = static_cast<int>(min(static_cast<std::int64_t>(KT), kend - k0));
    const int ct = kt >> 5;
    __syncthreads();  // the previous tile is consumed
    for (int idx = threadIdx.x; idx < MT * kt; idx += kThreads) {
      const int r = idx / kt, k = idx - r * kt;
      const std::int64_t row = m0 + r;
      xs[r * KT + swizzle(k)] = row < job.m ? load_elem(job.x, row * K + k0 + k, job.x_type) : 0.0f;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < MT * ct; idx += kThreads) {
      const int r = idx / ct, c = idx - r * ct;
      const float* p = xs + r * KT + c * 32;
      float s = 0.0f;
      for (int e = 0; e < 32; ++e) s += p[(e + idx) & 31];  // rotated start: no bank conflicts
      sums[r * (KT / 32) + c] = s;
    }
    __syncthreads();

    // Two chunks per iteration for small tiles: the second's loads are in
    // flight while the first is multiplied (more bytes in flight per SM).
#pragma unroll(MT <= 4 ? 2 : 1)
    for (int c = lane; c < ct; c += 32) {
      const std::int64_t gc = k0 / 32 + c;  // chunk index in the row
      const std::int64_t g = gc * 32 / job.group_size;
      std::uint32_t w[R][NB];
      float s[R], z[R], base[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const std::int64_t n = n0 + r;
        if (n < N) {
          load_chunk<NB>(job.codes + (n * chunks_row + gc) * NB, w[r]);
          load_meta<MetaT>(job.meta, n * groups_row + g, s[r], z[r]);
        } else {
#pragma unroll
          for (int v = 0; v < NB; ++v) w[r][v] = 0u;
          s[r] = z[r] = 0.0f;
        }
      }
      // Codes are multiplied as q - zi, and (z - zi) * sum x is subtracted.
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float zi = ::hqq::detail::zero_integer_part(z[r]);
        base[r] = 8388608.0f + zi;
        z[r] -= zi;
      }
      float p[R][MT];
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) p[r][m] = 0.0f;
#pragma unroll
      for (int f = 0; f < 8; ++f) {
        float q[R][4];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const std::uint32_t b = slot_bytes<NB>(w[r], f);
#pragma unroll
          for (int i = 0; i < 4; ++i) q[r][i] = byte_to_float(b, i, base[r]);
        }
        const int slot = c * 32 + (((f ^ c) & 7) << 2);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const float4 xv = *reinterpret_cast<const float4*>(xs + m * KT + slot);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            p[r][m] = __fmaf_rn(q[r][0], xv.x, p[r][m]);
            p[r][m] = __fmaf_rn(q[r][1], xv.y, p[r][m]);
            p[r][m] = __fmaf_rn(q[r][2], xv.z, p[r][m]);
            p[r][m] = __fmaf_rn(q[r][3], xv.w, p[r][m]);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const float sx = sums[m * (KT / 32) + c];
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r][m] = __fmaf_rn(s[r], __fmaf_rn(-z[r], sx, p[r][m]), acc[r][m]);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = group_sum<32>(acc[r][m]);
  if (lane != 0) return;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const std::int64_t n = n0 + r;
    if (n >= N) continue;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const std::int64_t row = m0 + m;
      if (row >= job.m) continue;
      if (partial != nullptr) {
        partial[(static_cast<std::int64_t>(blockIdx.z) * job.m + row) * N + n] = acc[r][m];
      } else {
        store_elem(job.y, row * N + n, job.y_type, acc[r][m] + (job.bias ? job.bias[n] : 0.0f));
      }
    }
  }
}

/// y = sum over splits of the partials, in split order, plus bias.
__global__ void reduce_splits(LinearJob job, const float* partial, int splits) {
  const std::int64_t total = job.m * job.n;
  for (std::int64_t i = global_thread(); i < total; i += grid_threads()) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += partial[s * total + i];
    const std::int64_t n = i % job.n;
    store_elem(job.y, i, job.y_type, v + (job.bias ? job.bias[n] : 0.0f));
  }
}

/// Dense path: one warp per weight row, up to kMaxTile rows of x per block row.
__global__ void __launch_bounds__(kThreads) dense_kernel(LinearJob job) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const std::int64_t n = static_cast<std::int64_t>(blockIdx.x) * kWarps + warp;
  const std::int64_t m0 = static_cast<std::int64_t>(blockIdx.y) * kMaxTile;
  if (n >= job.n) return;
  const int rows = static_cast<int>(min(static_cast<std::int64_t>(kMaxTile), job.m - m0));
  float acc[kMaxTile];
#pragma unroll
  for (int r = 0; r < kMaxTile; ++r) acc[r] = 0.0f;
  const float* wrow = job.dense + n * job.k;
  for (std::int64_t k = lane; k < job.k; k += 32) {
    const float wv = wrow[k];
#pragma unroll
    for (int r = 0; r < kMaxTile; ++r) {
      if (r < rows) acc[r] = __fmaf_rn(wv, load_elem(job.x, (m0 + r) * job.k + k, job.x_type), acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < kMaxTile; ++r) {
    const float v = group_sum<32>(acc[r]);
    if (lane == 0 && r < rows) store_elem(job.y, (m0 + r) * job.n + n, job.y_type, v + (job.bias ? job.bias[n] : 0.0f));
  }
}

/// How a packed job is cut: m tile, rows per block, K splits.
struct Plan {
  int mt = 1;
  int rows_per_block = kWarps;
  int splits = 1;
  std::int64_t k_per_split = 0;
};

/// grid.y limit: m tiles per launch.
constexpr std::int64_t kMaxMTiles = 65535;

Plan plan_for(const LinearJob& job) {
  Plan p;
  p.mt = job.m <= 1 ? 1 : job.m <= 2 ? 2 : job.m <= 4 ? 4 : job.m <= 8 ? 8 : 16;
  p.rows_per_block = kWarps * rows_per_warp(p.mt);
  p.k_per_split = job.k;
  const std::int64_t m_tiles = std::min(kMaxMTiles, (job.m + p.mt - 1) / p.mt);
  const std::int64_t blocks = (job.n + p.rows_per_block - 1) / p.rows_per_block * m_tiles;
  const std::int64_t want = 4 * static_cast<std::int64_t>(std::max(job.num_sms, 1));
  if (blocks < want) {
    // Split K so every SM has blocks, keeping >= 2048 k (2 chunks per lane) per split.
    const std::int64_t by_sms = (want + blocks - 1) / blocks;
    const std::int64_t splits = std::min<std::int64_t>({by_sms, std::max<std::int64_t>(1, job.k / 2048), 16});
    if (splits > 1) {
      p.k_per_split = ((job.k + splits - 1) / splits + 31) / 32 * 32;
      p.splits = static_cast<int>((job.k + p.k_per_split - 1) / p.k_per_split);
    }
  }
  return p;
}

template <int NB, int MT, class MetaT>
cudaError_t launch_tile(const LinearJob& job, const Plan& plan, float* partial, cudaStream_t stream) {
  auto kernel = gemv_kernel<NB, MT, MetaT>;
  constexpr std::size_t smem = smem_bytes(MT);
  if constexpr (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(static_cast<unsigned>((job.n + plan.rows_per_block - 1) / plan.rows_per_block),
                  static_cast<unsigned>((job.m + MT - 1) / MT), static_cast<unsigned>(plan.splits));
  kernel<<<grid, kThreads, smem, stream>>>(job, plan.k_per_split, partial);
  return cudaGetLastError();
}

template <int NB, class MetaT>
cudaError_t launch_nb(const LinearJob& job, const Plan& plan, float* partial, cudaStream_t stream) {
  switch (plan.mt) {
    case 1: return launch_tile<NB, 1, MetaT>(job, plan, partial, stream);
    case 2: return launch_tile<NB, 2, MetaT>(job, plan, partial, stream);
    case 4: return launch_tile<NB, 4, MetaT>(job, plan, partial, stream);
    case 8: return launch_tile<NB, 8, MetaT>(job, plan, partial, stream);
    default: return launch_tile<NB, 16, MetaT>(job, plan, partial, stream);
  }
}

template <class MetaT>
cudaError_t launch_meta(const LinearJob& job, const Plan& plan, float* partial, cudaStream_t stream) {
  switch (job.nbits) {
    case 8: return launch_nb<8, MetaT>(job, plan, partial, stream);
    case 4: return launch_nb<4, MetaT>(job, plan, partial, stream);
    case 3: return launch_nb<3, MetaT>(job, plan, partial, stream);
    case 2: return launch_nb<2, MetaT>(job, plan, partial, stream);
    case 1: return launch_nb<1, MetaT>(job, plan, partial, stream);
    default: return cudaErrorInvalidValue;
  }
}

/// One launch (m tiles within the grid.y limit).
cudaError_t launch_slab(const LinearJob& job, void* workspace, cudaStream_t stream) {
  if (job.dense != nullptr) {
    const dim3 grid(static_cast<unsigned>((job.n + kWarps - 1) / kWarps),
                    static_cast<unsigned>((job.m + kMaxTile - 1) / kMaxTile));
    dense_kernel<<<grid, kThreads, 0, stream>>>(job);
    return cudaGetLastError();
  }
  const Plan plan = plan_for(job);
  float* partial = plan.splits > 1 ? static_cast<float*>(workspace) : nullptr;
  if (plan.splits > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  const cudaError_t e = job.meta_type == ElemType::kF16 ? launch_meta<__half>(job, plan, partial, stream)
                                                        : launch_meta<float>(job, plan, partial, stream);
  if (e != cudaSuccess || partial == nullptr) return e;
  const std::int64_t total = job.m * job.n;
  const unsigned blocks = static_cast<unsigned>(std::min<std::int64_t>((total + 255) / 256, 4096));
  reduce_splits<<<blocks, 256, 0, stream>>>(job, partial, plan.splits);
  return cudaGetLastError();
}

/// Rows of x per launch (grid.y limit times the largest tile).
constexpr std::int64_t kSlabRows = kMaxMTiles * kMaxTile;

}  // namespace

std::size_t linear_workspace_bytes(const LinearJob& job) {
  if (job.dense != nullptr) return 0;
  // Every slab but the last has kSlabRows rows; the last one (fewer rows, so
  // fewer blocks) may split K where the full slabs do not.
  std::size_t bytes = 0;
  for (const std::int64_t m : {std::min(job.m, kSlabRows), job.m % kSlabRows}) {
    if (m == 0) continue;
    LinearJob slab = job;
    slab.m = m;
    const Plan plan = plan_for(slab);
    if (plan.splits > 1) bytes = std::max(bytes, static_cast<std::size_t>(plan.splits) * m * job.n * sizeof(float));
  }
  return bytes;
}

cudaError_t launch_linear(const LinearJob& job, void* workspace, cudaStream_t stream) {
  const std::size_t xe = job.x_type == ElemType::kF32 ? 4 : 2, ye = job.y_type == ElemType::kF32 ? 4 : 2;
  for (std::int64_t m0 = 0; m0 < job.m; m0 += kSlabRows) {
    LinearJob slab = job;
    slab.m = std::min(kSlabRows, job.m - m0);
    slab.x = static_cast<const char*>(job.x) + m0 * job.k * xe;
    slab.y = static_cast<char*>(job.y) + m0 * job.n * ye;
    const cudaError_t e = launch_slab(slab, workspace, stream);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace hqq::cuda::detail
