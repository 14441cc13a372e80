// Split tiles ("split-K" over a tile's depth-sorted list) for the CUDA blending kernels.
//
// Why: one block blends one tile, so the kernel lasts as long as its heaviest tile. On the 81K head
// at 512x512 two tiles hold 2,094 splats (median 278), and their warps walk them alone at the end.
// A heavy tile's list is cut into nsplit consecutive chunks, each blended by its own block from
// T = 1 (C_k, T_k). Then, in chunk order (chunk k waits for chunk k-1 only, as CUB's decoupled
// look-back does), each publishes the T behind it, P_k = P_(k-1) T_k, and weights its colour:
// P_(k-1) C_k. A pixel whose stop rule (stop before the splat that takes T to <= 1e-4) falls inside
// chunk k (the chunk stopped on its own, or P_(k-1) T_k <= 1e-4) is marked finished for the chunks
// behind, and chunk k blends it again from its true T, P_(k-1), with the exact rule. The tile's last
// block to finish sums the chunks' colours and writes the outputs and, for the backward, the colour
// behind every chunk. Inexact only in rounding (products of T's; a pixel whose product rounds across
// the threshold is finished there even if the exact walk would not stop: what it loses is < 1e-4).
//
// Which tiles: nsplit = min(kMaxSplit, ceil(count / kSplitChunk)); each image of a call has the same
// share of a pool of slots (one per extra chunk), and its heaviest tiles get it first (a histogram of
// the counts picks the threshold). Tiles below it, and every tile when the pool is empty, run unsplit.
//
// State (one int32 tensor, `split_state`, built by the render forward and read by its backward):
//   plan     [G] int2: (nsplit, first slot) per (image, tile), G = images x tiles
//   work     [G + pool] int32: the work items gt * kMaxSplit + chunk (one per tile, one per extra
//            chunk), heaviest first (by the chunk length, in classes of 32 splats: blocks start in
//            index order, so the light tiles fill in at the end), a tile's chunks consecutive and in
//            order; -1 past the last
//   counters [2, pool] int32: per slot, "T behind chunk j published" flags, then per split tile (at
//            its first slot) the arrivals of its blocks; all reset by the merging block
//   slots    [pool, nt, D + 2] float: slot s + j of a tile holds, per pixel: word 0, the T behind
//            chunk j (negative: the pixel finished at or before chunk j); word 1, the last id of
//            chunk j + 1; words 2.., the colour of chunk j + 1, which the merge replaces by the colour
//            of every chunk behind chunk j (where the backward of chunk j starts, with word 0's T).
//            Chunk 0's colour and last id sit in the outputs (colors, last_ids), and the T behind the
//            last chunk in final_Ts, until the merge.
#pragma once
#include <stdint.h>

#include "rasterize/rasterize.h"
#if defined(__CUDACC__)
#include "rasterize/rasterize_warp.cuh"
#endif

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

#if defined(__CUDACC__)
// Work item of block b of a blending launch -> (image x tile gt, chunk k of nsplit, first slot).
// false: nothing to do (past the plan's items).
__device__ __forceinline__ bool split_item(const Split& sp, int64_t b, int64_t& gt, int& k, int& nsplit,
                                           int& slot0) {
  gt = b;
  k = 0;
  nsplit = 1;
  slot0 = 0;
  if (sp.work == nullptr) return true;
  const int32_t w = sp.work[b];
  if (w < 0) return false;
  gt = w / kMaxSplit;
  k = w % kMaxSplit;
  const int2 pl = reinterpret_cast<const int2*>(sp.plan)[gt];
  nsplit = pl.x;
  slot0 = pl.y;
  return true;
}

// What a block of either blending kernel works on: work item -> image m, tile, chunk k of nsplit
// (first slot slot0), the tile's splats [start, end), and this thread's pixel (i, j).
struct BlockTile {
  int64_t gt, m;
  int k, nsplit, slot0;
  int i, j;
  bool inside;
  int32_t start, end;
};

// The end of the last tile's splats: n_isects, or with a count on the device (a bin captured in a
// CUDA graph: n_isects is then the buffer's capacity, the slots past the count hold sentinels)
// clamp(*n_isects_dev, 0, n_isects).
__device__ __forceinline__ int32_t isect_end(int32_t n_isects, const int32_t* n_isects_dev) {
  if (n_isects_dev == nullptr) return n_isects;
  const int32_t c = *n_isects_dev;
  return c < 0 ? 0 : c < n_isects ? c : n_isects;
}

// false: the block has nothing to do (past the plan's work items).
__device__ __forceinline__ bool block_tile(const Split& sp, const Dims& d, const int32_t* tile_offsets,
                                           int32_t n_isects, BlockTile& t) {
  if (!split_item(sp, blockIdx.x, t.gt, t.k, t.nsplit, t.slot0)) return false;
  const int64_t tiles = (int64_t)d.tiles_x * d.tiles_y;
  t.m = t.gt / tiles;
  const int tile = (int)(t.gt - t.m * tiles), ty = tile / d.tiles_x, tx = tile - ty * d.tiles_x;
  int li, lj;
  tile_pixel(threadIdx.x, d.tile_size, li, lj);
  t.i = ty * d.tile_size + li;
  t.j = tx * d.tile_size + lj;
  t.inside = li < d.tile_size && t.i < d.H && t.j < d.W;
  t.start = tile_offsets[t.gt];
  t.end = t.gt + 1 < d.B * d.C * tiles ? tile_offsets[t.gt + 1] : n_isects;
  return true;
}

// Chunk k of nsplit of the tile's splats [start, end): [cs, ce).
__device__ __forceinline__ void chunk_range(int32_t start, int32_t end, int k, int nsplit, int32_t& cs,
                                            int32_t& ce) {
  const int32_t len = (end - start + nsplit - 1) / nsplit;
  cs = min(end, start + k * len);
  ce = min(end, cs + len);
}
#endif

// Blocks of a blending launch: one per tile, plus one per slot when split (work items past the
// plan's end exit at once).
inline int64_t split_blocks(const Dims& d, const Split& sp) {
  return d.B * d.C * d.tiles_x * d.tiles_y + (sp.work ? sp.pool : 0);
}

// Words of the split state of G tiles with a pool of `pool` slots of nt pixels and D channels.
inline int64_t split_state_words(int64_t G, int64_t pool, int64_t nt, int64_t D) {
  return 3 * G + 3 * pool + pool * nt * (D + 2);
}

// Slots of a render call: per image, one per kSplitChunk intersections of an average image (the most
// it can use), at most kSlotsPerImage; 0 (no split) when the work items cannot be packed in an int32.
// A multiple of the images (each image plans its share).
inline int64_t split_pool(int64_t G, int64_t images, int64_t n_isects) {
  if (G <= 0 || images <= 0 || G >= (int64_t(1) << 27)) return 0;
  const int64_t need = n_isects / (kSplitChunk * images);
  return images * (need < kSlotsPerImage ? need : kSlotsPerImage);
}

}  // namespace rasterize
}  // namespace ffa
