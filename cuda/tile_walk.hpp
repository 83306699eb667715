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

  /// On to another run of `count` k tiles from `begin`, started `rot` in
  /// (the next stream-K segment): the ring's stage and phase go on where
  /// they are.
  HQQ_HOST_DEVICE void restart(int begin_, int count, int rot) {
    kb = begin_ + rot;
    begin = begin_;
    end = begin_ + count;
  }

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

/// Stream-K: `ctas` blocks share the tiles x kb k-tile iterations of an
/// output's block tiles (tile-major: tile t's k tiles are iterations
/// t kb .. t kb + kb - 1) evenly, block c taking the `per` iterations from
/// c per (the last fewer). A block's iterations fall into segments, one per
/// tile they meet: a whole tile (its k tiles all in the block) goes to y
/// directly; a part of a tile is a partial sum, kept in one of the block's two
/// partial slots: slot 0 for the tile the block starts in, slot 1 for the
/// one it ends in (any tile between is whole). A tile that no block holds
/// whole is summed afterwards (the fixup) from the blocks first_cta(t) ..
/// last_cta(t), in that order, each block's slot of it being slot_of(c, t).
struct StreamK {
  int tiles = 0, kb = 1, per = 1;

  /// One run of a block's k tiles within one tile.
  struct Segment {
    int tile, kb_begin, count;
    int slot;  ///< -1: the whole tile (to y); 0, 1: the block's partial slot
  };

  HQQ_HOST_DEVICE int total() const { return tiles * kb; }
  /// Blocks that get iterations: ceil(total / per).
  HQQ_HOST_DEVICE int ctas() const { return (total() + per - 1) / per; }
  HQQ_HOST_DEVICE int first_cta(int tile) const { return tile * kb / per; }
  HQQ_HOST_DEVICE int last_cta(int tile) const { return ((tile + 1) * kb - 1) / per; }
  /// Whether one block holds all of tile t (it goes to y from that block).
  HQQ_HOST_DEVICE bool whole(int tile) const { return first_cta(tile) == last_cta(tile); }
  /// The slot in which block c keeps its part of tile t (t not whole).
  HQQ_HOST_DEVICE int slot_of(int cta, int tile) const { return cta * per / kb == tile ? 0 : 1; }

  /// Block c's iterations: [begin(c), end(c)).
  HQQ_HOST_DEVICE int begin(int cta) const { return cta * per; }
  HQQ_HOST_DEVICE int end(int cta) const { return cta * per + per < total() ? cta * per + per : total(); }
  /// Block c's segment that starts at its iteration `it` (begin(c) for the
  /// first, then each segment's it + count while below end(c)).
  HQQ_HOST_DEVICE Segment segment(int cta, int it) const {
    const int tile = it / kb, k0 = it - tile * kb, left = end(cta) - it;
    const int count = kb - k0 < left ? kb - k0 : left;
    return Segment{tile, k0, count, whole(tile) ? -1 : slot_of(cta, tile)};
  }
  /// Block c's segments, in order: f(Segment) for each.
  template <class F>
  HQQ_HOST_DEVICE void for_each_segment(int cta, F&& f) const {
    for (int it = begin(cta); it < end(cta);) {
      const Segment sg = segment(cta, it);
      f(sg);
      it += sg.count;
    }
  }
};

}  // namespace hqq::cuda::detail
