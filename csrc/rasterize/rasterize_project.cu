// CUDA kernels of the projection: forward fused with the tight tile count; backward per Gaussian
// summing over cameras, no atomics. Torch-free: raw pointers, sizes, a stream. (Binning:
// rasterize_bin.cu.)
#include "common/splat_grad_math.h"
#include "common/splat_math.h"
#include "rasterize/rasterize.h"

namespace ffa {
namespace rasterize {
namespace {

using splat::Projected;

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

}  // namespace rasterize
}  // namespace ffa
