// Split tiles ("split-K" over a tile's depth-sorted list) for the CUDA blending kernels.
//
// Why: one block blends one tile, so the kernel lasts as long as its heaviest tile. On the 81K head
// at 512x512 two tiles hold 2,094 splats (median 278), and their warps walk them alone at the end.
// A heavy tile's list is cut into nsplit consecutive chunks, each blended by its own block from
// T = 1; the block that finishes last for the tile merges them in depth order:
//   C = C_0 + T_0 C_1 + T_0 T_1 C_2 + ...,  T = T_0 T_1 ...
// The stop rule (stop before the splat that takes T to <= 1e-4) depends on the T in front of the
// chunk, so a chunk that stopped on its own, or whose product crosses the threshold, is blended again
// from its true T by the merging block (the only inexact step is the rounding of those products).
//
// Which tiles: nsplit = min(kMaxSplit, ceil(count / kSplitChunk)); a pool of slots (one per extra
// chunk) is shared by the images of a call, and the heaviest tiles get it first (a histogram of the
// counts picks the threshold). Tiles below it, and every tile when the pool is empty, run unsplit.
//
// State (one int32 tensor, `split_state`, built by the render forward and read by its backward):
//   plan     [G] int2: (nsplit, first slot) per (image, tile), G = images x tiles
//   work     [G + pool] int32: gt * kMaxSplit + chunk, in tile order; -1 past the end
//   counters [pool] int32: arrivals of a split tile's blocks (at its first slot; reset by the merger)
//   slots    [pool, nt, D + 2] float: slot s + j of a tile holds, per pixel, during the forward the
//            raw partial of chunk j + 1 (T, with its sign set when the chunk stopped; last id; C[D]),
//            and after the merge what the backward of chunk j needs (T after the chunk, unused,
//            S[D] = colour of every splat behind the chunk). Chunk 0's raw partial sits in the
//            outputs (colors, final_Ts, last_ids) until the merge.
#pragma once
#include <stdint.h>

#include "rasterize/rasterize.h"

namespace ffa {
namespace rasterize {

constexpr int kMaxSplit = 8;        // chunks per tile at most (work items pack the chunk in 3 bits)
constexpr int kSplitChunk = 512;    // splats per chunk that make a tile worth splitting
constexpr int kSlotsPerImage = 32;  // pool of extra chunks: 32 per image (160 KB at D = 3, 16x16 tiles)

struct Split {
  const int32_t* work = nullptr;  // nullptr: no split, block b blends tile b
  const int32_t* plan = nullptr;  // [G, 2]
  int32_t* counters = nullptr;
  float* slots = nullptr;
  int64_t stride = 0;  // floats per pixel of a slot: D + 2
  int64_t pool = 0;    // slots
};

// Blocks of a blending launch: one per tile, plus one per slot when split (work items past the
// plan's end exit at once).
inline int64_t split_blocks(const Dims& d, const Split& sp) {
  return d.B * d.C * d.tiles_x * d.tiles_y + (sp.work ? sp.pool : 0);
}

// Words of the split state of G tiles with a pool of `pool` slots of nt pixels and D channels.
inline int64_t split_state_words(int64_t G, int64_t pool, int64_t nt, int64_t D) {
  return 3 * G + 2 * pool + pool * nt * (D + 2);
}

// Slots of a render call: one per kSplitChunk intersections (the most a call can use), at most
// kSlotsPerImage per image; 0 (no split) when the work items cannot be packed in an int32.
inline int64_t split_pool(int64_t G, int64_t images, int64_t n_isects) {
  if (G <= 0 || G >= (int64_t(1) << 27)) return 0;
  const int64_t need = n_isects / kSplitChunk;
  const int64_t cap = kSlotsPerImage * images;
  return need < cap ? need : cap;
}

}  // namespace rasterize
}  // namespace ffa
