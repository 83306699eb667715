#pragma once
// The bookkeeping of the GEMM kernels' walk over k tiles and groups: which
// groups a k tile meets (GroupWindow), the group of each k step followed
// without a division (GroupCursor), and a TMA block's stage, phase and k tile
// kept by counters (TileWalk). Host and device code, so that the tests check
// it on the CPU against the closed forms it replaces.

#include "hqq/detail/host_device.hpp"

namespace hqq::cuda::detail {

/// The groups a 64-column k tile meets: its first, ga, and from column
/// next_start on the one after (G >= 32: at most two).
struct GroupWindow {
  int ga, next_start;
  HQQ_HOST_DEVICE GroupWindow(int kb, int group_size)
      : ga(kb * 64 / group_size), next_start((kb * 64 / group_size + 1) * group_size) {}
  /// Group of k-step j (0..3) of tile kb.
  HQQ_HOST_DEVICE int group(int kb, int j) const { return ga + (kb * 64 + 16 * j >= next_start ? 1 : 0); }
};

/// Follows the group of consecutive 16-column k steps without a division per
/// step: `group` is the group of the last step seen, `next_start` the column
/// its successor starts at (G a multiple of 32: a 64-column tile meets at
/// most two groups, and groups change only between steps).
struct GroupCursor {
  int group, next_start;
  /// Before the step at column `col` (the first step seen).
  HQQ_HOST_DEVICE GroupCursor(int col, int group_size)
      : group(col / group_size - 1), next_start(col / group_size * group_size) {}
  /// Moves to the step at column `col` (the next one): true when a new group starts there.
  HQQ_HOST_DEVICE bool advance(int col, int group_size) {
    if (col < next_start) return false;
    ++group;
    next_start += group_size;
    return true;
  }
};

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
