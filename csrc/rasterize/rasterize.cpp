// CPU path of the rasterizer, part 1: projection (forward and backward) and tile binning.
// Same per-Gaussian math as CUDA (common/splat_math.h, splat_grad_math.h); float32 and float64.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "common/splat_grad_math.h"
#include "common/splat_math.h"
#include "rasterize/rasterize_checks.h"

namespace ffa {
namespace rasterize {
namespace {

using splat::Projected;

template <typename T>
void project_fwd_cpu(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                     const at::Tensor& opacities, const at::Tensor& viewmats, const at::Tensor& Ks, const Dims& d,
                     double near_plane, double far_plane, double eps2d, bool antialiased, at::Tensor& radii,
                     at::Tensor& means2d, at::Tensor& depths, at::Tensor& conics, at::Tensor& opac2d,
                     at::Tensor& tiles) {
  const T* pm = means.data_ptr<T>();
  const T* pq = quats.data_ptr<T>();
  const T* ps = scales.data_ptr<T>();
  const T* po = opacities.data_ptr<T>();
  const T* pv = viewmats.data_ptr<T>();
  const T* pk = Ks.data_ptr<T>();
  int32_t* rr = radii.data_ptr<int32_t>();
  T* m2 = means2d.data_ptr<T>();
  T* dd = depths.data_ptr<T>();
  T* cc = conics.data_ptr<T>();
  T* oo = opac2d.data_ptr<T>();
  int32_t* tt = tiles.data_ptr<int32_t>();
  const int64_t total = d.B * d.C * d.N;
  at::parallel_for(0, total, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t n = i % d.N, m = i / d.N, b = m / d.C;
      int64_t g = b * d.N + n;
      Projected<T> p = splat::project_gaussian<T>(pm + g * 3, pq + g * 4, ps + g * 3, po[g], pv + m * 16, pk + m * 9,
                                                  d.W, d.H, (T)near_plane, (T)far_plane, (T)eps2d, antialiased);
      rr[i * 2] = p.radius[0];
      rr[i * 2 + 1] = p.radius[1];
      m2[i * 2] = p.mean2d[0];
      m2[i * 2 + 1] = p.mean2d[1];
      dd[i] = p.depth;
      cc[i * 3] = p.conic[0];
      cc[i * 3 + 1] = p.conic[1];
      cc[i * 3 + 2] = p.conic[2];
      oo[i] = p.opacity;
      tt[i] = splat::for_each_tile(p, d.tile_size, d.tiles_x, d.tiles_y, d.W, d.H, [](int) {});
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_cpu(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
    const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width, int64_t height, double near_plane,
    double far_plane, double eps2d, bool antialiased, int64_t tile_size) {
  const Sized s = project_dims(means, quats, scales, opacities, viewmats, Ks, width, height, tile_size);
  const Dims& d = s.d;
  at::Tensor radii, means2d, depths, conics, opac2d, tiles;
  std::tie(radii, means2d, depths, conics, opac2d, tiles) = alloc_project_outputs(s, means.options());
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "rasterize_project", [&] {
    project_fwd_cpu<scalar_t>(means, quats, scales, opacities, viewmats, Ks, d, near_plane, far_plane, eps2d,
                              antialiased, radii, means2d, depths, conics, opac2d, tiles);
  });
  return {means2d, depths, conics, opac2d, radii, tiles};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_bwd_cpu(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
    const at::Tensor& viewmats, const at::Tensor& Ks, const at::Tensor& radii, const at::Tensor& v_means2d,
    const at::Tensor& v_depths, const at::Tensor& v_conics, const at::Tensor& v_opac2d, int64_t width,
    int64_t height, int64_t tile_size, double eps2d, bool antialiased) {
  const Sized s = project_dims(means, quats, scales, opacities, viewmats, Ks, width, height, tile_size);
  const Dims& d = s.d;
  check_project_grads(s, radii, v_means2d, v_depths, v_conics, v_opac2d);
  int64_t sd = 1;  // v_depths: contiguous, or expanded (stride 0: no depth gradient, nothing materialized)
  const at::Tensor vd = flat_grad(v_depths, &sd);
  const at::Tensor vm2 = v_means2d.contiguous(), vc = v_conics.contiguous(), vo = v_opac2d.contiguous();
  at::Tensor v_means = at::zeros_like(means), v_quats = at::zeros_like(quats);
  at::Tensor v_scales = at::zeros_like(scales), v_opacities = at::zeros_like(opacities);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "rasterize_project_bwd", [&] {
    using T = scalar_t;
    const T *pm = means.data_ptr<T>(), *pq = quats.data_ptr<T>(), *ps = scales.data_ptr<T>();
    const T *po = opacities.data_ptr<T>(), *pv = viewmats.data_ptr<T>(), *pk = Ks.data_ptr<T>();
    const int32_t* rr = radii.data_ptr<int32_t>();
    const T *gm2 = vm2.data_ptr<T>(), *gd = vd.data_ptr<T>();
    const T *gc = vc.data_ptr<T>(), *go = vo.data_ptr<T>();
    T *om = v_means.data_ptr<T>(), *oq = v_quats.data_ptr<T>(), *os = v_scales.data_ptr<T>();
    T* oo = v_opacities.data_ptr<T>();
    at::parallel_for(0, d.B * d.N, 256, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        int64_t b = g / d.N, n = g % d.N;
        for (int64_t c = 0; c < d.C; ++c) {
          int64_t m = b * d.C + c, i = m * d.N + n;
          if (rr[i * 2] <= 0 && rr[i * 2 + 1] <= 0) continue;
          splat::project_gaussian_vjp<T>(pm + g * 3, pq + g * 4, ps + g * 3, po[g], pv + m * 16, pk + m * 9, d.W,
                                         d.H, (T)eps2d, antialiased, gm2 + i * 2, gd[i * sd], gc + i * 3, go[i],
                                         om + g * 3, oq + g * 4, os + g * 3, oo + g);
        }
      }
    });
  });
  return {v_means, v_quats, v_scales, v_opacities};
}

// Tile binning: counting sort of the intersections by (image, tile), then a stable sort by depth
// inside each tile (ties keep Gaussian order, as a stable radix sort of gsplat's keys does).
template <typename T>
void bin_cpu_impl(const at::Tensor& means2d, const at::Tensor& radii, const at::Tensor& depths,
                  const at::Tensor& conics, const at::Tensor& opac2d, const at::Tensor& tiles, const Dims& d,
                  at::Tensor& tile_offsets, at::Tensor& flatten_ids_out) {
  const int64_t MN = d.B * d.C * d.N;
  const int64_t T_per = (int64_t)d.tiles_x * d.tiles_y;
  const int64_t MT = d.B * d.C * T_per;
  const int32_t* cnt = tiles.data_ptr<int32_t>();
  std::vector<int64_t> goff(MN + 1, 0);
  for (int64_t i = 0; i < MN; ++i) goff[i + 1] = goff[i] + cnt[i];
  const int64_t n_isects = goff[MN];
  FFA_CHECK(n_isects < (int64_t(1) << 31), "rasterize: too many tile intersections (", n_isects, ")");
  std::vector<int32_t> isect_tile(n_isects);  // global tile id m*T + t
  const T *m2 = means2d.data_ptr<T>(), *cc = conics.data_ptr<T>(), *oo = opac2d.data_ptr<T>();
  const int32_t* rr = radii.data_ptr<int32_t>();
  at::parallel_for(0, MN, 512, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (cnt[i] == 0) continue;
      Projected<T> p;
      p.valid = true;
      p.mean2d[0] = m2[i * 2]; p.mean2d[1] = m2[i * 2 + 1];
      p.radius[0] = rr[i * 2]; p.radius[1] = rr[i * 2 + 1];
      p.conic[0] = cc[i * 3]; p.conic[1] = cc[i * 3 + 1]; p.conic[2] = cc[i * 3 + 2];
      p.opacity = oo[i];
      int64_t base = (i / d.N) * T_per, k = goff[i];
      splat::for_each_tile(p, d.tile_size, d.tiles_x, d.tiles_y, d.W, d.H,
                           [&](int t) { if (k < goff[i + 1]) isect_tile[k++] = (int32_t)(base + t); });
    }
  });
  // counting sort by global tile (stable: Gaussian order inside a tile)
  std::vector<int64_t> toff(MT + 1, 0);
  for (int64_t k = 0; k < n_isects; ++k) toff[isect_tile[k] + 1]++;
  for (int64_t t = 0; t < MT; ++t) toff[t + 1] += toff[t];
  flatten_ids_out = at::empty({n_isects}, means2d.options().dtype(at::kInt));
  int32_t* fid = flatten_ids_out.data_ptr<int32_t>();
  {
    std::vector<int64_t> cursor(toff.begin(), toff.end() - 1);
    for (int64_t i = 0; i < MN; ++i)
      for (int64_t k = goff[i]; k < goff[i + 1]; ++k) fid[cursor[isect_tile[k]]++] = (int32_t)i;
  }
  const T* dp = depths.data_ptr<T>();
  at::parallel_for(0, MT, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      std::stable_sort(fid + toff[t], fid + toff[t + 1], [&](int32_t a, int32_t b) { return dp[a] < dp[b]; });
  });
  int32_t* to = tile_offsets.data_ptr<int32_t>();
  for (int64_t t = 0; t < MT; ++t) to[t] = (int32_t)toff[t];
}

std::tuple<at::Tensor, at::Tensor> bin_cpu(const at::Tensor& means2d, const at::Tensor& radii,
                                           const at::Tensor& depths, const at::Tensor& conics,
                                           const at::Tensor& opac2d, const at::Tensor& tiles, int64_t width,
                                           int64_t height, int64_t tile_size) {
  const Sized s = bin_dims(means2d, radii, depths, conics, opac2d, tiles, width, height, tile_size);
  const Dims& d = s.d;
  at::Tensor tile_offsets = at::empty(s.shape({d.C, d.tiles_y, d.tiles_x}), means2d.options().dtype(at::kInt));
  at::Tensor flatten_ids;
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_bin", [&] {
    bin_cpu_impl<scalar_t>(means2d, radii, depths, conics, opac2d, tiles, d, tile_offsets, flatten_ids);
  });
  return {tile_offsets, flatten_ids};
}

}  // namespace
}  // namespace rasterize
}  // namespace ffa

TORCH_LIBRARY_IMPL(ffavatar, CPU, m) {
  m.impl("rasterize_project", &ffa::rasterize::project_cpu);
  m.impl("rasterize_project_bwd", &ffa::rasterize::project_bwd_cpu);
  m.impl("rasterize_bin", &ffa::rasterize::bin_cpu);
}
