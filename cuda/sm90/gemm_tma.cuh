// The warp-specialised tensor-core GEMM for Hopper (sm_90a): y = x W^T + b
// with TMA, mbarriers and asynchronous wgmma.
//
// Same fragment layout, dequantization and split-K as cuda/gemm.cu (see its
// header), with the weight as wgmma's register A operand and the activations
// as its shared-memory B operand; what differs is how the operands arrive and
// how long the tensor cores wait:
//   - Block: 3 warpgroups. Warpgroup 0 is the producer: one thread issues, per
//     64-column k tile, one TMA load of the activation tile (BM rows x 64,
//     zero-filled past M and K, written in the 128-byte swizzle that wgmma
//     reads without bank conflicts), one bulk copy of the weight words (the
//     block's 8 fragment tiles lie side by side) and one or two of the
//     (scale, zero) pairs of the groups the tile meets, all completing one
//     "full" mbarrier by their byte count. Warpgroups 1 and 2 are the
//     consumers, 64 weight rows each (BN = 128): they dequantize into the A
//     registers and issue wgmma.m64nBMk16. From BM = 64 on (tensor-core
//     bound) each warpgroup pipelines its k tiles: it dequantizes tile i into
//     one of two sets of A registers while tile i - 1's wgmmas run on the
//     other, issues tile i's group, then waits for tile i - 1's (wait_group
//     1), so that a group of each warpgroup stays queued on the tensor cores
//     while it dequantizes. Below 64 rows (memory-bound; registers for 2-3
//     blocks per SM) rounds of two tiles issue each k step's wgmma as soon as
//     it is dequantized and wait once per round. ptxas serialises wgmmas whose
//     A registers it cannot tell apart from ones it must write;
//     scripts/sass_check.py checks that it did not. The stages go back to the
//     producer through their "empty" mbarriers (one arrival per consumer
//     warp) once both warpgroups' wgmmas have read them. Stage,
//     phase and k tile are counted (TileWalk), groups followed step by step
//     (GroupCursor), without a division; shared memory is addressed by 32-bit
//     offsets computed once. Blocks of
//     up to 128 rows take their k tiles from a per-block offset around
//     (kRotateK), so that blocks side by side read different activation tiles.
//   - Work per block: a block tile and one split of its k tiles (grid x, y,
//     z), or, in the stream-K instance (kSK, GemmParams::sk_per > 0), an
//     even share of all block tiles' k tiles (tile_walk.hpp, StreamK): the
//     block walks its segments one after the other with one ring of stages
//     (the producer loads the next segment's tiles while the consumers store
//     the last one's), storing whole tiles to y and parts of a tile to its
//     two partial slots, which gemm_streamk_fixup (cuda/gemm.cu) adds up in
//     block order afterwards. Both roles form a segment from its first
//     iteration where they need it (nothing more held across the k loop).
//   - kStages-deep ring of stages; BM (the wgmma N) in 16, 32, 64, 128, 256.
//     The 256-row tile moves registers from the producer to the consumers
//     (setmaxnreg) for its 128 accumulators per thread.
// Compiled only for sm_90a: one object per BM
// (gemm_tma_<BM>.cu instantiates launch_gemm_tma_bm<BM>), so that the 20
// instances of each compile in parallel.

#pragma once

#include <cuda.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../gemm_common.cuh"
#include "../tile_walk.hpp"
#include "sm90.cuh"

namespace hqq::cuda::detail {
namespace {

using namespace sm90;

constexpr int kBN = 128;            // weight rows per block: 2 consumer warpgroups x 64
constexpr int kThreads = 384;       // producer warpgroup + 2 consumer warpgroups
constexpr int kConsumerWarps = 8;

/// Blocks per SM the instance is compiled for (registers) and sized for
/// (shared memory): the memory-bound small tiles want bytes in flight; at
/// 8 bits the 16-row tile's stages hold twice the weight bytes, and 56
/// registers spill; so do they in the stream-K instance (kSK), whose segment
/// loop needs a few more.
template <int BM, int NB, bool kSK>
constexpr int kMinBlocks = BM <= 16 && NB <= 4 && !kSK ? 3 : BM <= 32 ? 2 : 1;
/// From 64 activation rows on (tensor-core bound) each consumer warpgroup
/// pipelines its k tiles (dequantizes one while the previous one's wgmmas
/// run); below, rounds of two tiles whose wgmmas are issued step by step (see
/// the consumer loop).
template <int BM>
constexpr bool kPipelined = BM >= 64;
/// Blocks of up to 128 activation rows start their k tiles at different
/// places (block column c at tile c mod its tile count, then around): blocks
/// side by side would otherwise read the same activation tile at the same
/// moment, a few L2 lines asked for by every SM at once. The 256-row tile
/// keeps the straight order: with the rotation it measured 4-11 % slower
/// where nothing else changed (M = 1024 and 4096 on an H100, commit 0e3b00c
/// against 66fea84), its activation band read all over instead of one tile
/// at a time by every block of the band.
template <int BM>
constexpr bool kRotateK = BM < 256;
/// The 256-row tile (128 accumulators per thread) moves registers from the
/// producer warpgroup to the consumers (setmaxnreg; ptxas compiles the
/// consumer code to the raised limit): without it, or with the consumers'
/// barrier watchdog on top, ptxas serialises its wgmmas for want of registers
/// (advisory C7512; scripts/sass_check.py fails). So does the stream-K
/// instance from 128 rows (168 registers spill there).
template <int BM, bool kSK>
constexpr bool kRealloc = BM >= 256 || (kSK && BM >= 128);
constexpr int kProducerRegs = 40, kConsumerRegs = 232;
/// The consumers' barrier waits trap after kMbarTimeoutNs (sm90.cuh), except
/// in the 256-row tile (see kRealloc); the producer's always do.
template <int BM>
constexpr bool kConsumerWatchdog = BM < 256;

template <int NB, typename MetaT, int BM, bool kSK>
struct TmaSmem {
  static constexpr int kX = BM * 128;                         // activations: BM rows x 128 bytes, swizzled
  static constexpr int kW = kBN * 8 * NB;                     // 8 fragment tiles x 32 lanes x NB words
  static constexpr int kMetaGroup = kBN * kMetaPair<MetaT>;   // one group's pairs for the block's rows
  static constexpr int kStage = (kX + kW + 2 * kMetaGroup + 1023) / 1024 * 1024;  // TMA swizzle: 1024-aligned
  static constexpr int kBudget = 200 * 1024 / kMinBlocks<BM, NB, kSK>;  // shared memory a block may take
  static constexpr int kStages = kBudget / kStage > 8 ? 8 : kBudget / kStage;
  static_assert(kStages >= 2, "at least a double buffer");
  static_assert(kX % 1024 == 0, "each stage's activation tile starts 1024-byte aligned");
  static constexpr int kBytes = 1024 + kStages * kStage + 2 * kStages * 8;  // alignment slack, barriers
};

/// kSK: the stream-K instance (p.sk_per > 0), compiled apart so that the
/// grid's instance keeps its registers and instructions.
template <int NB, typename T, typename MetaT, int BM, bool kSK>
__global__ void __launch_bounds__(kThreads, kMinBlocks<BM, NB, kSK>)
    gemm_tma_kernel(const __grid_constant__ CUtensorMap xmap, const GemmParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = TmaSmem<NB, MetaT, BM, kSK>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024u - (smem_addr(smem_raw) & 1023u)) & 1023u);
  std::uint64_t* full = reinterpret_cast<std::uint64_t*>(smem + S::kStages * S::kStage);
  std::uint64_t* empty = full + S::kStages;
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const int KB = p.kpad / 64;

  if (tid == 0) {
    for (int s = 0; s < S::kStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], kConsumerWarps);
    }
    mbar_fence_init();
  }
  __syncthreads();
  // The block's work: one segment (block tile and run of k tiles) of the
  // grid of tiles and splits, or its stream-K segments (p.sk_per > 0;
  // tile_walk.hpp, StreamK). In the grid, the block's i-th k tile is
  // kb_begin + (i + rot) mod nk (TileWalk).
  struct Segment {
    std::int64_t n0, m0;
    int kb_begin, count, rot;
    int slot;  // stream-K partial slot (0, 1), else -1: y, or the split's partial sums
  };
  const StreamK sk{p.sk_tiles, KB, kSK ? p.sk_per : 1};
  const int cta = static_cast<int>(blockIdx.x);
  // The segment that starts at the block's iteration `it` (stream-K; the
  // grid's block has one segment, it = 0). Cheap: both roles form it again
  // where they need it rather than keep it in registers across the k loop.
  auto segment_at = [&](int it) {
    if constexpr (!kSK) {
      (void)it;
      const int kb_begin = static_cast<int>(blockIdx.z) * p.kb_per_split;
      const int nk = min(KB, kb_begin + p.kb_per_split) - kb_begin;
      const int rot = kRotateK<BM> && nk > 0 ? static_cast<int>(blockIdx.x % static_cast<unsigned>(nk)) : 0;
      return Segment{static_cast<std::int64_t>(blockIdx.x) * kBN, static_cast<std::int64_t>(blockIdx.y) * BM,
                     kb_begin, nk, rot, -1};
    } else {
      const StreamK::Segment sg = sk.segment(cta, it);
      const int mt = sg.tile / p.sk_tiles_n, nt = sg.tile - mt * p.sk_tiles_n;
      return Segment{static_cast<std::int64_t>(nt) * kBN, static_cast<std::int64_t>(mt) * BM, sg.kb_begin,
                     sg.count, 0, sg.slot};
    }
  };
  // f(it) for the iteration each of the block's segments starts at, in
  // order (one call site: one copy of the loops in the machine code).
  auto for_each_segment = [&](auto&& f) {
    if constexpr (!kSK) {
      f(0);
    } else {
      int it = sk.begin(cta);
#pragma unroll 1
      do {
        f(it);
        it += segment_at(static_cast<int>(opaque(static_cast<unsigned>(it)))).count;
      } while (it < sk.end(cta));
    }
  };

  if (warp < 4) {
    // ---------------------------------------------------------------- producer
    if constexpr (kRealloc<BM, kSK>) regs_dec<kProducerRegs>();
    if (warp == 0 && lane == 0) {
      prefetch_tensormap(&xmap);
      TileWalk<S::kStages> walk(0, 0, 0);
      int issued = 0;  // k tiles issued by the block so far (all segments)
      for_each_segment([&](int it) {
        const Segment sg = segment_at(it);
        walk.restart(sg.kb_begin, sg.count, sg.rot);
        const std::int64_t n0 = sg.n0, m0 = sg.m0;
#pragma unroll 1
        for (int i = 0; i < sg.count; ++i, ++issued, walk.next()) {
          const int s = walk.stage, kb = walk.kb;
          // The stage's previous tile (kStages earlier, a phase before) went back.
          if (issued >= S::kStages) mbar_wait(&empty[s], walk.parity ^ 1u);
          const GroupWindow win(kb, p.group_size);
          // The second group is read by the consumers only from the k step it starts at.
          const bool two = kb * 64 + 48 >= win.next_start && win.ga + 1 < p.groups;
          unsigned char* base = smem + s * S::kStage;
          mbar_arrive_expect_tx(&full[s], S::kX + S::kW + (two ? 2 : 1) * S::kMetaGroup);
          tma_load_2d(base, &xmap, kb * 64, static_cast<int>(m0), &full[s]);
          bulk_load(base + S::kX, block_weight_words<NB>(p.codes, n0, KB, kb), S::kW, &full[s]);
          const unsigned char* meta = p.meta + (win.ga * p.npad + n0) * kMetaPair<MetaT>;
          bulk_load(base + S::kX + S::kW, meta, S::kMetaGroup, &full[s]);
          if (two) {
            bulk_load(base + S::kX + S::kW + S::kMetaGroup, meta + p.npad * kMetaPair<MetaT>, S::kMetaGroup,
                      &full[s]);
          }
        }
      });
    }
    return;
  }

  // ------------------------------------------------------------------ consumers
  if constexpr (kRealloc<BM, kSK>) regs_inc<kConsumerRegs>();
  const int c = warp - 4;  // weight rows 16c .. 16c + 15 of the block (warpgroup c / 4: 64 rows)
  const int g = lane >> 2;
  float d[BM / 2];
  RowConsts<NB, T> rc[2];
  TileWalk<S::kStages> walk(0, 0, 0);
  GroupCursor cursor(0, p.group_size);
  // Shared memory by 32-bit address: stage s at stages + s * kStage, its
  // barriers at full_at + 8 s and empty_at + 8 s (behind the stages); this
  // lane's weight words and its rows' metadata at fixed offsets in a stage.
  const unsigned stages = opaque(smem_addr(smem)), full_at = stages + S::kStages * S::kStage;
  const unsigned empty_at = full_at + 8 * S::kStages;
  const unsigned words_at = opaque(S::kX + (c * 32 + lane) * (NB * 4));
  const unsigned meta_at = opaque(S::kX + S::kW + (16 * c + g) * kMetaPair<MetaT>);
  // An open k tile: its stage, the stage's address and the tile's first column.
  struct Open {
    int stage, col;
    unsigned base;
  };
  // Waits for the walk's current tile and reads this lane's words of it.
  auto open_tile = [&](std::uint32_t(&wq)[NB]) {
    const Open o{walk.stage, walk.kb * 64, stages + walk.stage * S::kStage};
    mbar_wait<kConsumerWatchdog<BM>>(full_at + 8 * o.stage, walk.parity);
    load_words<NB>(o.base + words_at, wq);
    return o;
  };
  // The row constants of k step j of the open tile, steps in order: slot 0
  // holds the group of the tile's first step, slot 1 the next one. Groups
  // (multiples of 32 columns) start only at steps 0 and 2.
  auto follow = [&](const Open& o, int j) {
    if (j % 2 != 0) return;
    if (cursor.advance(o.col + 16 * j, p.group_size)) {
      set_row_pair<NB, T, MetaT, kBN>(rc, o.base + meta_at, j == 0 ? 0 : 1, 0);
    }
  };
  // After the open tile's steps were followed: on to the next tile (the one
  // after a wrap starts its groups over).
  auto walk_on = [&] {
    if (walk.next()) cursor = GroupCursor(walk.kb * 64, p.group_size);
  };
  // An open tile's stage goes back to the producer: one arrival per consumer warp.
  auto release = [&](const Open& o) {
    __syncwarp();
    if (lane == 0) mbar_arrive(empty_at + 8 * o.stage);
  };

  for_each_segment([&](int it) {
    const Segment sg = segment_at(it);
    const int nk = sg.count;
    walk.restart(sg.kb_begin, nk, sg.rot);
    cursor = GroupCursor(walk.kb * 64, p.group_size);
#pragma unroll
    for (int i = 0; i < BM / 2; ++i) d[i] = 0.0f;
    if constexpr (kPipelined<BM>) {
      // From 64 rows on (tensor-core bound): a software pipeline per warpgroup.
      // Tile i is dequantized into one of two sets of A registers while tile
      // i - 1's wgmmas (the other set) run; its 4 wgmmas are then issued as one
      // group, and only then does the warpgroup wait for tile i - 1's group
      // (wgmma.wait_group 1) and give that tile's stage back. Each warpgroup so
      // keeps a group queued on the tensor cores while it dequantizes, on its
      // own (no turns to take), and a stage goes back as soon as both
      // warpgroups' wgmmas have read it. The loop body is two tiles, one per
      // register set, so that the set is known at compile time (ptxas would
      // serialise wgmmas whose A registers it cannot tell apart;
      // scripts/sass_check.py checks that it did not).
      std::uint32_t a[2][4][4];
      // Opens the walk's tile and dequantizes its 4 steps into `as`.
      auto dequant_tile = [&](std::uint32_t(&as)[4][4]) {
        std::uint32_t wq[NB];
        const Open o = open_tile(wq);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          follow(o, j);
          dequant_fragment<NB, T>(as[j], rc, wq, j);
        }
        walk_on();
        return o;
      };
      // The tile's 4 wgmmas, one group.
      auto issue_tile = [&](const std::uint32_t(&as)[4][4], const Open& o) {
        wgmma_fence();
#pragma unroll
        for (int j = 0; j < 4; ++j) Wgmma<T, BM>::run(d, as[j], desc_advance(desc_sw128(o.base), 32 * j));
        wgmma_commit();
      };
      if (nk > 0) {
        Open prev = dequant_tile(a[0]);
        issue_tile(a[0], prev);
        auto next_tile = [&](auto set) {
          constexpr int kSet = decltype(set)::value;
          const Open o = dequant_tile(a[kSet]);
          issue_tile(a[kSet], o);
          wgmma_wait<1>();  // the previous tile's group is done
          release(prev);
          prev = o;
        };
        int i = 1;
#pragma unroll 1
        for (; i + 1 < nk; i += 2) {
          next_tile(std::integral_constant<int, 1>{});
          next_tile(std::integral_constant<int, 0>{});
        }
        if (i < nk) next_tile(std::integral_constant<int, 1>{});
        wgmma_wait<0>();
        release(prev);
      }
    } else {
      // Below 64 rows (memory-bound; 3 or 2 blocks per SM leave no registers
      // for a second set of A registers: ptxas serialises the pipeline above,
      // advisories C7511/C7512): rounds of two k tiles (one for an odd last
      // tile), each step's wgmma issued as soon as it is dequantized, one full
      // wgmma wait per round. The second tile's step j reuses the first one's
      // A registers once their wgmma is done (at most 3 groups left in flight
      // before it), and the first tile's stage goes back before the second
      // tile's last step. This keeps the 16-row tile at 3 blocks per SM (56
      // registers a thread).
      std::uint32_t a[4][4];
      // Round: the next kT tiles (straight-line wgmmas: a branch among them
      // makes ptxas serialise them, advisory C7520).
      auto run_round = [&](auto tiles) {
        constexpr int kT = decltype(tiles)::value;
        Open o[kT];
#pragma unroll
        for (int h = 0; h < kT; ++h) {
          std::uint32_t wq[NB];
          o[h] = open_tile(wq);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            follow(o[h], j);
            if (h > 0) {
              wgmma_wait<3>();            // the first tile's step j is done with a[j]
              if (j == 3) release(o[0]);  // and the first tile with its stage
            }
            dequant_fragment<NB, T>(a[j], rc, wq, j);
            wgmma_fence();
            Wgmma<T, BM>::run(d, a[j], desc_advance(desc_sw128(o[h].base), 32 * j));
            wgmma_commit();
          }
          walk_on();
        }
        wgmma_wait<0>();
        release(o[kT - 1]);
      };
#pragma unroll 1
      for (int r = 0; r < nk / 2; ++r) run_round(std::integral_constant<int, 2>{});
      if (nk & 1) run_round(std::integral_constant<int, 1>{});
    }

    // Accumulators: d[4i + e] = (weight row 16c + g + 8 (e >> 1), activation row 8i + 2t + (e & 1)).
    auto frag = [&](int, int i, float(&v)[4]) {
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = d[4 * i + e];
    };
    const Segment done = segment_at(static_cast<int>(opaque(static_cast<unsigned>(it))));  // formed again, not kept
    if (kSK && done.slot >= 0) {
      // A stream-K part of the tile: the block's partial slot, [BM][kBN] f32.
      float* slot = p.partial + (static_cast<std::int64_t>(cta) * 2 + done.slot) * (BM * kBN);
      store_tile_as<float, 1, BM / 8>(slot, nullptr, BM, kBN, 0, 16 * c, frag);
    } else {
      store_tile<1, BM / 8>(p, done.m0, done.n0 + 16 * c, frag);
    }
  });
#endif
}

// ------------------------------------------------------------------ host side

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

/// cuTensorMapEncodeTiled from the driver (through the runtime: no link to libcuda); null if absent.
EncodeTiled encode_tiled() {
  static const EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      return static_cast<EncodeTiled>(nullptr);
    }
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
}

/// The activation slab [p.m, p.k] (16-bit, rows K * 2 bytes apart, 16-byte
/// aligned) as a tensor map of 64 x BM boxes in the 128-byte swizzle.
template <typename T, int BM>
cudaError_t activation_map(const GemmParams& p, CUtensorMap* map) {
  const EncodeTiled encode = encode_tiled();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(p.k), static_cast<cuuint64_t>(p.m)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(p.k) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(BM)};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUtensorMapDataType type =
      std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUresult r = encode(map, type, 2, const_cast<void*>(p.x), dims, strides, box, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

template <int NB, typename T, typename MetaT, int BM, bool kSK>
cudaError_t launch_instance(const GemmParams& p, const CUtensorMap& map, int splits, cudaStream_t stream) {
  constexpr int bytes = TmaSmem<NB, MetaT, BM, kSK>::kBytes;
  auto kernel = gemm_tma_kernel<NB, T, MetaT, BM, kSK>;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e != cudaSuccess) return e;
  const StreamK sk{p.sk_tiles, p.kpad / 64, kSK ? p.sk_per : 1};
  const dim3 grid = kSK ? dim3(static_cast<unsigned>(sk.ctas()), 1, 1)
                        : dim3(static_cast<unsigned>((p.n + kBN - 1) / kBN),
                               static_cast<unsigned>((p.m + BM - 1) / BM), static_cast<unsigned>(splits));
  kernel<<<grid, kThreads, bytes, stream>>>(map, p);
  return cudaGetLastError();
}

template <int NB, typename T, typename MetaT, int BM>
cudaError_t launch_typed(const GemmParams& p, int splits, cudaStream_t stream) {
  CUtensorMap map;
  const cudaError_t e = activation_map<T, BM>(p, &map);
  if (e != cudaSuccess) return e;
  return p.sk_per > 0 ? launch_instance<NB, T, MetaT, BM, true>(p, map, splits, stream)
                      : launch_instance<NB, T, MetaT, BM, false>(p, map, splits, stream);
}

/// Blocks of one instance that fit an SM (0 when the runtime cannot say), asked once.
template <int NB, typename T, typename MetaT, int BM, bool kSK>
int blocks_per_sm_typed() {
  static std::atomic<int> cached{-1};
  int n = cached.load(std::memory_order_relaxed);
  if (n >= 0) return n;
  constexpr int bytes = TmaSmem<NB, MetaT, BM, kSK>::kBytes;
  auto kernel = gemm_tma_kernel<NB, T, MetaT, BM, kSK>;
  n = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, bytes) != cudaSuccess) {
    n = 0;
  }
  cached.store(n, std::memory_order_relaxed);
  return n;
}

}  // namespace

template <int BM>
int gemm_tma_blocks_per_sm(int nbits, ElemType x_type, ElemType meta_type, bool stream_k) {
  return with_gemm_instance(nbits, x_type, meta_type, 0, [&](auto nb, auto t, auto mt) {
    using T = typename decltype(t)::type;
    using MetaT = typename decltype(mt)::type;
    constexpr int NB = decltype(nb)::value;
    return stream_k ? blocks_per_sm_typed<NB, T, MetaT, BM, true>() : blocks_per_sm_typed<NB, T, MetaT, BM, false>();
  });
}

template <int BM>
cudaError_t launch_gemm_tma_bm(int nbits, ElemType x_type, ElemType meta_type, const GemmParams& p, int splits,
                               cudaStream_t stream) {
  return with_gemm_instance(nbits, x_type, meta_type, cudaErrorInvalidValue, [&](auto nb, auto t, auto mt) {
    return launch_typed<decltype(nb)::value, typename decltype(t)::type, typename decltype(mt)::type, BM>(p, splits,
                                                                                                         stream);
  });
}

}  // namespace hqq::cuda::detail
