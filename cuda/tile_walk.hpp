#pragma once
// The walk of a TMA GEMM block (cuda/sm90/gemm_tma.cuh) over its k tiles,
// kept by counters rather than recomputed per tile: host and device code, so
// that the tests check it on the CPU against the closed forms it replaces.

#include "hqq/detail/host_device.hpp"

namespace hqq::cuda::detail {

/// Tile i (i = 0, 1, ... in order) of a block whose split holds the `count`
/// k tiles from `begin`, started `rot` tiles in (0 <= rot < count, or 0):
///   k tile  kb     = begin + (i + rot) mod count,
///   stage          = i mod kStages (the ring of shared-memory stages),
///   parity         = (i / kStages) mod 2 (of the stage's mbarrier phase),
/// without a division or a modulo per tile.
template <int kStages>
struct TileWalk {
  int kb, begin, end;
  int stage = 0;
  unsigned parity = 0;

  HQQ_HOST_DEVICE TileWalk(int begin_, int count, int rot) : kb(begin_ + rot), begin(begin_), end(begin_ + count) {}

  /// To tile i + 1. True when its k tile wrapped around to `begin` (a block
  /// started inside its split; its group cursor starts over there).
  HQQ_HOST_DEVICE bool next() {
    if (++stage == kStages) {
      stage = 0;
      parity ^= 1u;
    }
    if (++kb == end) {
      kb = begin;
      return true;
    }
    return false;
  }
};

}  // namespace hqq::cuda::detail
