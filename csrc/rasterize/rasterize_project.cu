// CUDA kernels: projection (forward fused with the tight tile count; backward per Gaussian summing
// over cameras, no atomics) and tile binning (scan, keys, CUB radix sort, tile offsets).
// Torch-free: raw pointers, sizes, a stream.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "common/splat_grad_math.h"
#include "common/splat_math.h"
#include "rasterize/rasterize.h"

namespace ffa {
namespace rasterize {
namespace {

using splat::Projected;

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

__global__ void project_fwd_kernel(const float* __restrict__ means, const float* __restrict__ quats,
                                   const float* __restrict__ scales, const float* __restrict__ opacities,
                                   const float* __restrict__ viewmats, const float* __restrict__ Ks, Dims d,
                                   float near_plane, float far_plane, float eps2d, bool antialiased,
                                   int32_t* __restrict__ radii, float* __restrict__ means2d,
                                   float* __restrict__ depths, float* __restrict__ conics,
                                   float* __restrict__ opac2d, int32_t* __restrict__ tiles) {
  int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= d.B * d.C * d.N) return;
  int64_t n = i % d.N, m = i / d.N, b = m / d.C;
  int64_t g = b * d.N + n;
  Projected<float> p = splat::project_gaussian<float>(means + g * 3, quats + g * 4, scales + g * 3, opacities[g],
                                                      viewmats + m * 16, Ks + m * 9, d.W, d.H, near_plane,
                                                      far_plane, eps2d, antialiased);
  reinterpret_cast<int2*>(radii)[i] = make_int2(p.radius[0], p.radius[1]);
  reinterpret_cast<float2*>(means2d)[i] = make_float2(p.mean2d[0], p.mean2d[1]);
  depths[i] = p.depth;
  conics[i * 3] = p.conic[0];
  conics[i * 3 + 1] = p.conic[1];
  conics[i * 3 + 2] = p.conic[2];
  opac2d[i] = p.opacity;
  tiles[i] = splat::for_each_tile(p, d.tile_size, d.tiles_x, d.tiles_y, d.W, d.H, [](int) {});
}

__global__ void project_bwd_kernel(const float* __restrict__ means, const float* __restrict__ quats,
                                   const float* __restrict__ scales, const float* __restrict__ opacities,
                                   const float* __restrict__ viewmats, const float* __restrict__ Ks, Dims d,
                                   float eps2d, bool antialiased, const int32_t* __restrict__ radii,
                                   const float* __restrict__ v_means2d, const float* __restrict__ v_depths,
                                   int64_t v_depths_stride, const float* __restrict__ v_conics,
                                   const float* __restrict__ v_opac2d,
                                   float* __restrict__ v_means, float* __restrict__ v_quats,
                                   float* __restrict__ v_scales, float* __restrict__ v_opacities) {
  int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= d.B * d.N) return;
  int64_t b = g / d.N, n = g % d.N;
  float vm[3] = {0.f, 0.f, 0.f}, vq[4] = {0.f, 0.f, 0.f, 0.f}, vs[3] = {0.f, 0.f, 0.f}, vo = 0.f;
  float mean[3] = {means[g * 3], means[g * 3 + 1], means[g * 3 + 2]};
  float quat[4] = {quats[g * 4], quats[g * 4 + 1], quats[g * 4 + 2], quats[g * 4 + 3]};
  float scale[3] = {scales[g * 3], scales[g * 3 + 1], scales[g * 3 + 2]};
  float op = opacities[g];
  for (int64_t c = 0; c < d.C; ++c) {
    int64_t m = b * d.C + c, i = m * d.N + n;
    int2 r = reinterpret_cast<const int2*>(radii)[i];
    if (r.x <= 0 && r.y <= 0) continue;
    splat::project_gaussian_vjp<float>(mean, quat, scale, op, viewmats + m * 16, Ks + m * 9, d.W, d.H, eps2d,
                                       antialiased, v_means2d + i * 2, v_depths[i * v_depths_stride], v_conics + i * 3,
                                       v_opac2d[i], vm, vq, vs, &vo);
  }
  for (int k = 0; k < 3; ++k) v_means[g * 3 + k] = vm[k];
  for (int k = 0; k < 4; ++k) v_quats[g * 4 + k] = vq[k];
  for (int k = 0; k < 3; ++k) v_scales[g * 3 + k] = vs[k];
  v_opacities[g] = vo;
}

__global__ void emit_keys_kernel(const float* __restrict__ means2d, const int32_t* __restrict__ radii,
                                 const float* __restrict__ depths, const float* __restrict__ conics,
                                 const float* __restrict__ opac2d, const int32_t* __restrict__ offsets,
                                 const int32_t* __restrict__ counts, Dims d, int tile_bits,
                                 int64_t* __restrict__ keys, int32_t* __restrict__ values, int64_t capacity) {
  int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= d.B * d.C * d.N) return;
  int2 r = reinterpret_cast<const int2*>(radii)[i];
  if (r.x <= 0 && r.y <= 0) return;
  Projected<float> p;
  p.valid = true;
  float2 mm = reinterpret_cast<const float2*>(means2d)[i];
  p.mean2d[0] = mm.x;
  p.mean2d[1] = mm.y;
  p.radius[0] = r.x;
  p.radius[1] = r.y;
  p.conic[0] = conics[i * 3];
  p.conic[1] = conics[i * 3 + 1];
  p.conic[2] = conics[i * 3 + 2];
  p.opacity = opac2d[i];
  int64_t m = i / d.N;
  int64_t hi = m << (32 + tile_bits);
  int64_t dbits = (int64_t)(uint32_t)__float_as_uint(depths[i]);
  const int64_t k_end = offsets[i];  // inclusive scan
  int64_t k = k_end - counts[i];  // the tile test is bit-identical to the count (no FMA contraction)
  // Slots [0, capacity) only: a speculative capacity may be below the count, and an int32 overflow of
  // the scan (caught on the host after this kernel is queued) may make k negative.
  const int64_t k_lim = k_end < capacity ? k_end : capacity;
  splat::for_each_tile(p, d.tile_size, d.tiles_x, d.tiles_y, d.W, d.H, [&](int t) {
    if (k >= 0 && k < k_lim) {
      keys[k] = hi | ((int64_t)t << 32) | dbits;
      values[k] = (int32_t)i;
    }
    ++k;
  });
}

// n = n_max, or (n_dev != nullptr) the count read on the device, clamped to [0, n_max]: then the grid
// covers n_max threads and n == 0 zero-fills every offset.
__global__ void tile_offsets_kernel(const int64_t* __restrict__ keys, int64_t n_max, const int32_t* __restrict__ n_dev,
                                    int tile_bits, int64_t tiles_per_image, int64_t total_tiles,
                                    int32_t* __restrict__ offsets) {
  int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t n = n_max;
  if (n_dev != nullptr) {
    const int64_t c = *n_dev;
    n = c < 0 ? 0 : c < n_max ? c : n_max;
  }
  if (n == 0) {
    for (int64_t t = idx; t < total_tiles; t += (int64_t)gridDim.x * blockDim.x) offsets[t] = 0;
    return;
  }
  if (idx >= n) return;
  // (clamped to the last tile: an emitted key never needs it, but a slot the emit did not write, e.g.
  // a sentinel, keeps every write in bounds)
  auto global_tile = [&](int64_t key) {
    int64_t hi = (int64_t)((uint64_t)key >> 32);
    int64_t t = (hi >> tile_bits) * tiles_per_image + (hi & ((int64_t(1) << tile_bits) - 1));
    return t < total_tiles ? t : total_tiles - 1;
  };
  int64_t cur = global_tile(keys[idx]);
  if (idx == 0)
    for (int64_t t = 0; t <= cur; ++t) offsets[t] = 0;
  else {
    int64_t prev = global_tile(keys[idx - 1]);
    for (int64_t t = prev + 1; t <= cur; ++t) offsets[t] = (int32_t)idx;
  }
  if (idx == n - 1)
    for (int64_t t = cur + 1; t < total_tiles; ++t) offsets[t] = (int32_t)n;
}

}  // namespace

cudaError_t launch_project_fwd(const float* means, const float* quats, const float* scales, const float* opacities,
                               const float* viewmats, const float* Ks, const Dims& d, float near_plane,
                               float far_plane, float eps2d, bool antialiased, int32_t* radii, float* means2d,
                               float* depths, float* conics, float* opac2d, int32_t* tiles_per_gauss,
                               cudaStream_t stream) {
  int64_t n = d.B * d.C * d.N;
  if (n == 0) return cudaSuccess;
  project_fwd_kernel<<<blocks_for(n), kThreads, 0, stream>>>(means, quats, scales, opacities, viewmats, Ks, d,
                                                              near_plane, far_plane, eps2d, antialiased, radii,
                                                              means2d, depths, conics, opac2d, tiles_per_gauss);
  return cudaGetLastError();
}

cudaError_t launch_project_bwd(const float* means, const float* quats, const float* scales, const float* opacities,
                               const float* viewmats, const float* Ks, const Dims& d, float eps2d, bool antialiased,
                               const int32_t* radii, const float* v_means2d, const float* v_depths,
                               int64_t v_depths_stride, const float* v_conics, const float* v_opac2d,
                               float* v_means, float* v_quats, float* v_scales, float* v_opacities,
                               cudaStream_t stream) {
  int64_t n = d.B * d.N;
  if (n == 0) return cudaSuccess;
  project_bwd_kernel<<<blocks_for(n), kThreads, 0, stream>>>(means, quats, scales, opacities, viewmats, Ks, d, eps2d,
                                                              antialiased, radii, v_means2d, v_depths,
                                                              v_depths_stride, v_conics, v_opac2d, v_means, v_quats,
                                                              v_scales, v_opacities);
  return cudaGetLastError();
}

cudaError_t launch_scan_counts(void* temp, size_t* temp_bytes, const int32_t* counts, int32_t* offsets, int64_t n,
                               cudaStream_t stream) {
  return cub::DeviceScan::InclusiveSum(temp, *temp_bytes, counts, offsets, (int)n, stream);
}

cudaError_t launch_emit_keys(const float* means2d, const int32_t* radii, const float* depths, const float* conics,
                             const float* opac2d, const int32_t* offsets, const int32_t* counts, const Dims& d,
                             int64_t* keys, int32_t* values, int64_t capacity, cudaStream_t stream) {
  int64_t n = d.B * d.C * d.N;
  if (n == 0) return cudaSuccess;
  int tile_bits = bit_width((int64_t)d.tiles_x * d.tiles_y);
  emit_keys_kernel<<<blocks_for(n), kThreads, 0, stream>>>(means2d, radii, depths, conics, opac2d, offsets, counts,
                                                            d, tile_bits, keys, values, capacity);
  return cudaGetLastError();
}

cudaError_t launch_sort_pairs(void* temp, size_t* temp_bytes, int64_t* keys, int64_t* keys_alt, int32_t* values,
                              int32_t* values_alt, int64_t n, int end_bit, bool* result_in_alt,
                              cudaStream_t stream) {
  // unsigned: the bits [0, end_bit) are compared as they are (CUB flips the sign bit of signed keys,
  // which would move keys with bit 63 set, and the all-ones sentinel, when end_bit == 64)
  cub::DoubleBuffer<uint64_t> k(reinterpret_cast<uint64_t*>(keys), reinterpret_cast<uint64_t*>(keys_alt));
  cub::DoubleBuffer<int32_t> v(values, values_alt);
  cudaError_t err = cub::DeviceRadixSort::SortPairs(temp, *temp_bytes, k, v, (int)n, 0, end_bit, stream);
  if (result_in_alt) *result_in_alt = k.selector == 1;
  return err;
}

cudaError_t launch_tile_offsets(const int64_t* sorted_keys, int64_t n_isects, const int32_t* n_isects_dev,
                                const Dims& d, int32_t* tile_offsets, cudaStream_t stream) {
  if (n_isects == 0) return cudaSuccess;  // the glue zero-fills
  int64_t tp = (int64_t)d.tiles_x * d.tiles_y;
  tile_offsets_kernel<<<blocks_for(n_isects), kThreads, 0, stream>>>(sorted_keys, n_isects, n_isects_dev,
                                                                      bit_width(tp), tp, d.B * d.C * tp, tile_offsets);
  return cudaGetLastError();
}

}  // namespace rasterize
}  // namespace ffa
