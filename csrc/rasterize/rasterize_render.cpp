// CPU path of the rasterizer, part 2: front-to-back blending per tile (forward) and its back-to-front
// backward. Parallel over tiles; per-pixel math from common/splat_math.h (as the CUDA kernels).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/splat_math.h"
#include "rasterize/rasterize_checks.h"

namespace ffa {
namespace rasterize {
namespace {

// Row of colors [B,Cc,N,D] used by image m for Gaussian n.
inline int64_t color_row(const Dims& d, int64_t m, int64_t n) {
  int64_t b = m / d.C, c = m % d.C;
  return ((b * d.Cc + (d.Cc == 1 ? 0 : c)) * d.N + n);
}

struct TileRange {
  int64_t start, end;
};

inline TileRange tile_range(const int32_t* offsets, int64_t gt, int64_t MT, int64_t n_isects) {
  return {offsets[gt], gt + 1 < MT ? (int64_t)offsets[gt + 1] : n_isects};
}

template <typename T>
void render_fwd_cpu(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac2d,
                    const at::Tensor& colors, const c10::optional<at::Tensor>& backgrounds,
                    const at::Tensor& tile_offsets, const at::Tensor& flatten_ids, const Dims& d, at::Tensor& out_c,
                    at::Tensor& out_a, at::Tensor& last_ids, at::Tensor& final_T) {
  const T *m2 = means2d.data_ptr<T>(), *cc = conics.data_ptr<T>(), *oo = opac2d.data_ptr<T>();
  const T* col = colors.data_ptr<T>();
  const T* bg = backgrounds.has_value() ? backgrounds->data_ptr<T>() : nullptr;
  const int32_t *to = tile_offsets.data_ptr<int32_t>(), *fid = flatten_ids.data_ptr<int32_t>();
  T *pc = out_c.data_ptr<T>(), *pa = out_a.data_ptr<T>(), *pt = final_T.data_ptr<T>();
  int32_t* pl = last_ids.data_ptr<int32_t>();
  const int64_t TP = (int64_t)d.tiles_x * d.tiles_y, M = d.B * d.C, MT = M * TP, D = d.D;
  const int64_t n_isects = flatten_ids.numel();
  at::parallel_for(0, MT, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(D);
    std::vector<T> sx, sy, sa, sb, sc, so, scut;  // the tile's splats, structure of arrays
    std::vector<const T*> scol;
    for (int64_t gt = begin; gt < end; ++gt) {
      int64_t m = gt / TP, t = gt % TP;
      int tx = (int)(t % d.tiles_x), ty = (int)(t / d.tiles_x);
      TileRange r = tile_range(to, gt, MT, n_isects);
      const int64_t cnt = r.end - r.start;
      for (auto* v : {&sx, &sy, &sa, &sb, &sc, &so, &scut}) v->resize(cnt);
      scol.resize(cnt);
      for (int64_t q = 0; q < cnt; ++q) {
        int64_t g = fid[r.start + q];
        sx[q] = m2[g * 2]; sy[q] = m2[g * 2 + 1];
        sa[q] = cc[g * 3]; sb[q] = cc[g * 3 + 1]; sc[q] = cc[g * 3 + 2];
        so[q] = oo[g];
        // conservative pre-skip: beyond this sigma, alpha < 1/255 for sure (exact test follows)
        scut[q] = splat::sigma_cutoff<T>(oo[g]);
        scol[q] = col + color_row(d, m, g % d.N) * D;
      }
      for (int i = ty * d.tile_size; i < (ty + 1) * d.tile_size && i < d.H; ++i) {
        for (int j = tx * d.tile_size; j < (tx + 1) * d.tile_size && j < d.W; ++j) {
          T px = T(j) + T(0.5), py = T(i) + T(0.5);
          T Tr = T(1);
          int64_t last = -1;
          std::fill(acc.begin(), acc.end(), T(0));
          for (int64_t q = 0; q < cnt; ++q) {
            T dx0 = sx[q] - px, dy0 = sy[q] - py;
            T sig0 = T(0.5) * (sa[q] * dx0 * dx0 + sc[q] * dy0 * dy0) + sb[q] * dx0 * dy0;
            if (sig0 > scut[q]) continue;
            T alpha, vis, dx, dy;
            if (!splat::splat_alpha<T>(sx[q], sy[q], sa[q], sb[q], sc[q], so[q], px, py, alpha, vis, dx, dy))
              continue;
            T next_T = Tr * (T(1) - alpha);
            if (next_T <= T(splat::kTransmittanceEps)) break;
            T w = alpha * Tr;
            const T* c = scol[q];
            for (int64_t k2 = 0; k2 < D; ++k2) acc[k2] += c[k2] * w;
            last = r.start + q;
            Tr = next_T;
          }
          int64_t pix = (m * d.H + i) * (int64_t)d.W + j;
          for (int64_t k2 = 0; k2 < D; ++k2) pc[pix * D + k2] = acc[k2] + (bg ? Tr * bg[m * D + k2] : T(0));
          pa[pix] = T(1) - Tr;
          pt[pix] = Tr;
          pl[pix] = (int32_t)last;
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_cpu(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac2d, const at::Tensor& colors,
    const c10::optional<at::Tensor>& backgrounds, const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
    int64_t width, int64_t height, int64_t tile_size) {
  const Sized s = render_dims(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, width,
                              height, tile_size);
  const Dims& d = s.d;
  auto fo = means2d.options();
  at::Tensor out_c = at::empty(s.shape({d.C, d.H, d.W, d.D}), fo);
  at::Tensor out_a = at::empty(s.shape({d.C, d.H, d.W, 1}), fo);
  at::Tensor last = at::empty(s.shape({d.C, d.H, d.W}), fo.dtype(at::kInt));
  at::Tensor final_T = at::empty(s.shape({d.C, d.H, d.W, 1}), fo);
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_render", [&] {
    render_fwd_cpu<scalar_t>(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, d, out_c,
                             out_a, last, final_T);
  });
  return {out_c, out_a, last, final_T, at::empty({0}, fo.dtype(at::kInt))};  // no split state on the CPU
}

// Backward: per tile, pixels walk their splats back to front (transmittance recovered by division,
// as gsplat); each intersection slot accumulates its own gradient (no races: a slot belongs to one
// tile), then the slots are summed per Gaussian.
template <typename T>
void render_bwd_cpu(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac2d,
                    const at::Tensor& colors, const c10::optional<at::Tensor>& backgrounds,
                    const at::Tensor& tile_offsets, const at::Tensor& flatten_ids, const Dims& d,
                    const at::Tensor& final_Ts, const at::Tensor& last_ids, const PixelGrad& v_out_c,
                    const PixelGrad& v_out_a, at::Tensor& v_means2d, at::Tensor& v_conics, at::Tensor& v_opac2d,
                    at::Tensor& v_colors) {
  const T *m2 = means2d.data_ptr<T>(), *cc = conics.data_ptr<T>(), *oo = opac2d.data_ptr<T>();
  const T* col = colors.data_ptr<T>();
  const T* bg = backgrounds.has_value() ? backgrounds->data_ptr<T>() : nullptr;
  const int32_t *to = tile_offsets.data_ptr<int32_t>(), *fid = flatten_ids.data_ptr<int32_t>();
  const T *tf_out = final_Ts.data_ptr<T>(), *gc = v_out_c.t.data_ptr<T>(), *ga = v_out_a.t.data_ptr<T>();
  const int64_t gc_pix = v_out_c.pix, gc_ch = v_out_c.ch, ga_pix = v_out_a.pix;  // output-gradient strides
  const int32_t* pl = last_ids.data_ptr<int32_t>();
  const int64_t TP = (int64_t)d.tiles_x * d.tiles_y, M = d.B * d.C, MT = M * TP, D = d.D;
  const int64_t n_isects = flatten_ids.numel();
  const int64_t S = 6 + D;  // per slot: v_xy (2), v_conic (3), v_opac (1), v_color (D)
  std::vector<T> slots((size_t)(n_isects * S), T(0));
  at::parallel_for(0, MT, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf(D), cut;
    for (int64_t gt = begin; gt < end; ++gt) {
      int64_t m = gt / TP, t = gt % TP;
      int tx = (int)(t % d.tiles_x), ty = (int)(t / d.tiles_x);
      TileRange r = tile_range(to, gt, MT, n_isects);
      cut.resize(r.end - r.start);
      for (int64_t k = r.start; k < r.end; ++k) cut[k - r.start] = splat::sigma_cutoff<T>(oo[fid[k]]);
      for (int i = ty * d.tile_size; i < (ty + 1) * d.tile_size && i < d.H; ++i) {
        for (int j = tx * d.tile_size; j < (tx + 1) * d.tile_size && j < d.W; ++j) {
          int64_t pix = (m * d.H + i) * (int64_t)d.W + j;
          int64_t last = pl[pix];
          if (last < r.start) continue;
          T px = T(j) + T(0.5), py = T(i) + T(0.5);
          const T T_final = tf_out[pix];
          T Tr = T_final;
          const T* vrc = gc + pix * gc_pix;  // channel k2 at vrc[k2 * gc_ch]
          T vra = ga[pix * ga_pix];
          T bg_dot = T(0);
          if (bg)
            for (int64_t k2 = 0; k2 < D; ++k2) bg_dot += bg[m * D + k2] * vrc[k2 * gc_ch];
          std::fill(buf.begin(), buf.end(), T(0));
          for (int64_t k = last; k >= r.start; --k) {
            int64_t g = fid[k];
            T a = cc[g * 3], b = cc[g * 3 + 1], c = cc[g * 3 + 2], op = oo[g];
            if (splat::splat_far<T>(m2[g * 2], m2[g * 2 + 1], a, b, c, cut[k - r.start], px, py)) continue;
            T alpha, vis, dx, dy;
            if (!splat::splat_alpha<T>(m2[g * 2], m2[g * 2 + 1], a, b, c, op, px, py, alpha, vis, dx, dy)) continue;
            T ra = T(1) / (T(1) - alpha);
            Tr *= ra;
            T fac = alpha * Tr;
            const T* cg = col + color_row(d, m, g % d.N) * D;
            T* s = slots.data() + k * S;
            T v_alpha = T(0);
            for (int64_t k2 = 0; k2 < D; ++k2) {
              const T vk = vrc[k2 * gc_ch];
              s[6 + k2] += fac * vk;
              v_alpha += (cg[k2] * Tr - buf[k2] * ra) * vk;
              buf[k2] += cg[k2] * fac;
            }
            v_alpha += T_final * ra * vra - T_final * ra * bg_dot;
            if (op * vis <= T(splat::kMaxAlpha)) {
              T v_sigma = -op * vis * v_alpha;
              s[0] += v_sigma * (a * dx + b * dy);
              s[1] += v_sigma * (b * dx + c * dy);
              s[2] += T(0.5) * v_sigma * dx * dx;
              s[3] += v_sigma * dx * dy;
              s[4] += T(0.5) * v_sigma * dy * dy;
              s[5] += vis * v_alpha;
            }
          }
        }
      }
    }
  });
  T *vm = v_means2d.data_ptr<T>(), *vc = v_conics.data_ptr<T>(), *vo = v_opac2d.data_ptr<T>();
  T* vcol = v_colors.data_ptr<T>();
  for (int64_t k = 0; k < n_isects; ++k) {
    int64_t g = fid[k];
    const T* s = slots.data() + k * S;
    vm[g * 2] += s[0];
    vm[g * 2 + 1] += s[1];
    vc[g * 3] += s[2];
    vc[g * 3 + 1] += s[3];
    vc[g * 3 + 2] += s[4];
    vo[g] += s[5];
    T* dst = vcol + color_row(d, g / d.N, g % d.N) * D;
    for (int64_t k2 = 0; k2 < D; ++k2) dst[k2] += s[6 + k2];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_bwd_cpu_entry(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac2d, const at::Tensor& colors,
    const c10::optional<at::Tensor>& backgrounds, const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
    const at::Tensor& final_Ts, const at::Tensor& last_ids, const at::Tensor& v_render_colors,
    const at::Tensor& v_render_alphas, int64_t width, int64_t height, int64_t tile_size,
    const c10::optional<at::Tensor>& split_state) {
  const Sized s = render_dims(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, width,
                              height, tile_size);
  const Dims& d = s.d;
  check_render_grads(s, final_Ts, last_ids, v_render_colors, v_render_alphas);
  split_state_pool(split_state, means2d, 0, 1, d.D);  // must be empty here
  const PixelGrad gc = pixel_grad(v_render_colors), ga = pixel_grad(v_render_alphas);
  at::Tensor v_means2d = at::zeros_like(means2d), v_conics = at::zeros_like(conics);
  at::Tensor v_opac2d = at::zeros_like(opac2d), v_colors = at::zeros_like(colors);
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_render_bwd", [&] {
    render_bwd_cpu<scalar_t>(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, d,
                             final_Ts, last_ids, gc, ga, v_means2d, v_conics,
                             v_opac2d, v_colors);
  });
  return {v_means2d, v_conics, v_opac2d, v_colors};
}

}  // namespace
}  // namespace rasterize
}  // namespace ffa

TORCH_LIBRARY_IMPL(ffavatar, CPU, m) {
  m.impl("rasterize_render", &ffa::rasterize::render_cpu);
  m.impl("rasterize_render_bwd", &ffa::rasterize::render_bwd_cpu_entry);
}
