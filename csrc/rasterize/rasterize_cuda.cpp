// CUDA glue of the rasterize ops: validation, allocation through torch's caching allocator (outputs,
// intermediates, CUB temp storage), the current stream, and the launchers of rasterize_*.cu.
// float32 only. One host wait per forward, in the bin, for the intersection count (bin_cuda).
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAMacros.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "common/macros.h"
#include "rasterize/rasterize_checks.h"
#include "rasterize/bin_graph.h"

namespace ffa {
namespace rasterize {
namespace {

#define FFA_F32(t) FFA_CHECK((t).scalar_type() == at::kFloat, "rasterize (CUDA): " #t " must be float32, got ", (t).scalar_type())

constexpr size_t kAlign = 256;
inline size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_cuda(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
    const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width, int64_t height, double near_plane,
    double far_plane, double eps2d, bool antialiased, int64_t tile_size) {
  const Sized s = project_dims(means, quats, scales, opacities, viewmats, Ks, width, height, tile_size);
  const Dims& d = s.d;
  FFA_F32(means);
  c10::cuda::CUDAGuard guard(means.device());
  at::Tensor radii, means2d, depths, conics, opac2d, tiles;
  std::tie(radii, means2d, depths, conics, opac2d, tiles) = alloc_project_outputs(s, means.options());
  FFA_CHECK_CUDA(launch_project_fwd(means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                                    opacities.data_ptr<float>(), viewmats.data_ptr<float>(), Ks.data_ptr<float>(), d,
                                    (float)near_plane, (float)far_plane, (float)eps2d, antialiased,
                                    radii.data_ptr<int32_t>(), means2d.data_ptr<float>(), depths.data_ptr<float>(),
                                    conics.data_ptr<float>(), opac2d.data_ptr<float>(), tiles.data_ptr<int32_t>(),
                                    c10::cuda::getCurrentCUDAStream()),
                 "rasterize project_fwd kernel");
  return {means2d, depths, conics, opac2d, radii, tiles};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_bwd_cuda(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
    const at::Tensor& viewmats, const at::Tensor& Ks, const at::Tensor& radii, const at::Tensor& v_means2d,
    const at::Tensor& v_depths, const at::Tensor& v_conics, const at::Tensor& v_opac2d, int64_t width,
    int64_t height, double eps2d, bool antialiased) {
  const Sized s = project_dims(means, quats, scales, opacities, viewmats, Ks, width, height, 16);
  const Dims& d = s.d;
  FFA_F32(means);
  check_project_grads(s, radii, v_means2d, v_depths, v_conics, v_opac2d);
  c10::cuda::CUDAGuard guard(means.device());
  int64_t sd = 1;  // v_depths: contiguous, or expanded (stride 0: no depth gradient, nothing materialized)
  const at::Tensor vd = flat_grad(v_depths, &sd);
  const at::Tensor vm2 = v_means2d.contiguous(), vc = v_conics.contiguous(), vo = v_opac2d.contiguous();
  at::Tensor v_means = at::empty_like(means), v_quats = at::empty_like(quats);
  at::Tensor v_scales = at::empty_like(scales), v_opacities = at::empty_like(opacities);
  FFA_CHECK_CUDA(launch_project_bwd(means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                                    opacities.data_ptr<float>(), viewmats.data_ptr<float>(), Ks.data_ptr<float>(), d,
                                    (float)eps2d, antialiased, radii.data_ptr<int32_t>(), vm2.data_ptr<float>(),
                                    vd.data_ptr<float>(), sd, vc.data_ptr<float>(), vo.data_ptr<float>(),
                                    v_means.data_ptr<float>(), v_quats.data_ptr<float>(), v_scales.data_ptr<float>(),
                                    v_opacities.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
                 "rasterize project_bwd kernel");
  return {v_means, v_quats, v_scales, v_opacities};
}

// ---- bin: the intersection count without stalling the GPU --------------------------------------
//
// The count (the last tile offset) sizes the flatten-id buffer. The exact way reads it with a host
// sync right after the scan, so the GPU idles while the host queues the rest. The speculative way
// sizes the buffer from a per-device guess (`bin_hint`), queues everything behind an async copy of
// the count, and waits for that copy only then; the GPU is busy with the queued work meanwhile. If
// the count exceeds the guess (or a tile is too long for the shared-memory sort), the queued kernels
// stayed within the guessed buffer and the exact way runs again with the count. Results are the
// same either way. Exact way: the first call on a device (no guess yet), or FFAVATAR_BIN_SYNC=1 (read
// once). Neither way can be captured in a CUDA graph (a host sync / an event wait inside the op).

constexpr int kMaxDevices = C10_COMPILE_TIME_MAX_GPUS;

// Per device, a decaying high-water mark of the counts: max(count, previous - previous/8). Any value
// is correct (it is only a guess); 0: none yet.
std::atomic<int64_t> bin_hint[kMaxDevices];

bool bin_sync_forced() {
  static const bool forced = ffa_env_flag("FFAVATAR_BIN_SYNC");
  return forced;
}

// Key slots for a guess: 1/32 + 256 over it, a multiple of 256, at most INT32_MAX (CUB's item count).
int64_t bin_capacity(int64_t hint) {
  return std::min<int64_t>((int64_t)align_up((size_t)(hint + hint / 32 + 256)), INT32_MAX);
}

// The count of a speculative bin: copied from the device into pinned host memory (`slot()`, the copy
// queued by the caller) with an event behind it, so the host can queue the rest of the bin before it
// waits. Per thread: one pinned int32 and one event per device, created on first use and kept until
// the process ends (no CUDA calls at thread exit). A thread's slot is never shared by two copies in
// flight: every copy is waited for before its bin_cuda returns, also when it throws (the destructor
// waits).
class PendingCount {
 public:
  // two int32: the count and the longest tile list
  static int32_t* slot() {
    thread_local int32_t* host = nullptr;
    if (host == nullptr)
      FFA_CHECK_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&host), 2 * sizeof(int32_t), cudaHostAllocPortable),
                     "rasterize bin: pinned count");
    return host;
  }
  // After the copy into slot() is queued on `stream`.
  PendingCount(int device, cudaStream_t stream) {
    thread_local cudaEvent_t events[kMaxDevices] = {};
    cudaError_t err = cudaSuccess;
    if (events[device] == nullptr) err = cudaEventCreateWithFlags(&events[device], cudaEventDisableTiming);
    if (err == cudaSuccess) err = cudaEventRecord(events[device], stream);
    if (err != cudaSuccess) (void)cudaStreamSynchronize(stream);  // the copy is in flight: let it land
    FFA_CHECK_CUDA(err, "rasterize bin: count event");
    host_ = slot();
    event_ = events[device];
  }
  PendingCount(const PendingCount&) = delete;
  PendingCount& operator=(const PendingCount&) = delete;
  ~PendingCount() {
    if (!waited_) (void)cudaEventSynchronize(event_);
  }
  // the count and the longest tile list
  std::pair<int32_t, int32_t> wait() {
    // a host sync, as memcpy_and_sync is: reported alike under torch.cuda.set_sync_debug_mode (which
    // may throw here; the destructor then waits)
    if (C10_UNLIKELY(c10::cuda::warning_state().get_sync_debug_mode() != c10::cuda::SyncDebugMode::L_DISABLED))
      c10::cuda::warn_or_error_on_sync();
    waited_ = true;
    FFA_CHECK_CUDA(cudaEventSynchronize(event_), "rasterize bin: count wait");
    return {host_[0], host_[1]};
  }

 private:
  int32_t* host_ = nullptr;
  cudaEvent_t event_ = nullptr;
  bool waited_ = false;
};

// The flatten ids of a call with a tile list longer than the shared-memory sort takes
// (rasterize_bin.cu), count of them: pairs sorted by depth, their tile counts scanned in that order,
// keys (image | tile) emitted in depth order, a stable sort of those. Exact way only (count known).
at::Tensor depth_sorted_lists(const at::Tensor& means2d, const at::Tensor& radii, const at::Tensor& depths,
                              const at::Tensor& conics, const at::Tensor& opac2d, const at::Tensor& tiles,
                              const Dims& d, int64_t count, cudaStream_t stream) {
  const int64_t MN = d.B * d.C * d.N, TP = (int64_t)d.tiles_x * d.tiles_y;
  const int end_bit = bit_width(TP) + bit_width(d.B * d.C);
  FFA_CHECK(end_bit <= 32, "rasterize: images x tiles too large for 32-bit keys (a tile holds more than ",
            kTileSortCap, " splats, so the call is binned by a global sort)");
  auto io = means2d.options().dtype(at::kInt);
  auto bo = means2d.options().dtype(at::kByte);
  // pairs by depth: keys, their double buffer and the sort's temp storage in one allocation
  size_t dsort_bytes = 0;
  FFA_CHECK_CUDA(launch_sort_pairs(nullptr, &dsort_bytes, nullptr, nullptr, nullptr, nullptr, MN, 32, nullptr, stream),
                 "rasterize depth sort (size)");
  const size_t dkey_bytes = align_up((size_t)MN * sizeof(uint32_t));
  at::Tensor dbuf = at::empty({(int64_t)(2 * dkey_bytes + dsort_bytes + 1)}, bo);
  char* dp = static_cast<char*>(dbuf.data_ptr());
  uint32_t* dkeys = reinterpret_cast<uint32_t*>(dp);
  at::Tensor ids = at::empty({MN}, io), ids_alt = at::empty({MN}, io);
  FFA_CHECK_CUDA(launch_depth_keys(depths.data_ptr<float>(), MN, dkeys, ids.data_ptr<int32_t>(), stream),
                 "rasterize depth_keys kernel");
  bool alt = false;
  FFA_CHECK_CUDA(launch_sort_pairs(dp + 2 * dkey_bytes, &dsort_bytes, dkeys, reinterpret_cast<uint32_t*>(dp + dkey_bytes),
                                   ids.data_ptr<int32_t>(), ids_alt.data_ptr<int32_t>(), MN, 32, &alt, stream),
                 "rasterize depth sort");
  const int32_t* order = (alt ? ids_alt : ids).data_ptr<int32_t>();
  // their tile counts scanned in depth order (offsets and the scan's temp storage: one allocation)
  size_t scan_bytes = 0;
  FFA_CHECK_CUDA(launch_scan_counts(nullptr, &scan_bytes, tiles.data_ptr<int32_t>(), nullptr, nullptr, MN, stream),
                 "rasterize scan (size)");
  const size_t off_bytes = align_up((size_t)MN * sizeof(int32_t));
  at::Tensor pbuf = at::empty({(int64_t)(off_bytes + scan_bytes + 1)}, bo);
  int32_t* poffsets = static_cast<int32_t*>(pbuf.data_ptr());
  FFA_CHECK_CUDA(launch_scan_counts(static_cast<char*>(pbuf.data_ptr()) + off_bytes, &scan_bytes,
                                    tiles.data_ptr<int32_t>(), order, poffsets, MN, stream),
                 "rasterize scan");
  // keys in depth order, sorted by image and tile (stable)
  size_t sort_bytes = 0;
  FFA_CHECK_CUDA(launch_sort_pairs(nullptr, &sort_bytes, nullptr, nullptr, nullptr, nullptr, count, end_bit, nullptr,
                                   stream),
                 "rasterize sort (size)");
  const size_t key_bytes = align_up((size_t)count * sizeof(uint32_t));
  at::Tensor kbuf = at::empty({(int64_t)(2 * key_bytes + sort_bytes + 1)}, bo);
  char* kp = static_cast<char*>(kbuf.data_ptr());
  uint32_t* keys = reinterpret_cast<uint32_t*>(kp);
  at::Tensor vals = at::empty({count}, io), vals_alt = at::empty({count}, io);
  FFA_CHECK_CUDA(launch_emit_keys(means2d.data_ptr<float>(), radii.data_ptr<int32_t>(), conics.data_ptr<float>(),
                                  opac2d.data_ptr<float>(), order, poffsets, d, keys, vals.data_ptr<int32_t>(), stream),
                 "rasterize emit_keys kernel");
  FFA_CHECK_CUDA(launch_sort_pairs(kp + 2 * key_bytes, &sort_bytes, keys, reinterpret_cast<uint32_t*>(kp + key_bytes),
                                   vals.data_ptr<int32_t>(), vals_alt.data_ptr<int32_t>(), count, end_bit, &alt,
                                   stream),
                 "rasterize sort");
  return alt ? vals_alt : vals;
}

std::tuple<at::Tensor, at::Tensor> bin_cuda(const at::Tensor& means2d, const at::Tensor& radii,
                                            const at::Tensor& depths, const at::Tensor& conics,
                                            const at::Tensor& opac2d, const at::Tensor& tiles, int64_t width,
                                            int64_t height, int64_t tile_size) {
  const Sized s = bin_dims(means2d, radii, depths, conics, opac2d, tiles, width, height, tile_size);
  const Dims& d = s.d;
  FFA_F32(means2d);
  c10::cuda::CUDAGuard guard(means2d.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto io = means2d.options().dtype(at::kInt);
  auto bo = means2d.options().dtype(at::kByte);
  const int64_t MN = d.B * d.C * d.N, TP = (int64_t)d.tiles_x * d.tiles_y, G = d.B * d.C * TP;
  const Shape off_shape = s.shape({d.C, d.tiles_y, d.tiles_x});
  if (MN == 0) return {at::zeros(off_shape, io), at::empty({0}, io)};
  FFA_CHECK(G < INT32_MAX, "rasterize: too many tiles (", G, ")");
  const int dev = means2d.get_device();
  FFA_CHECK(dev >= 0 && dev < kMaxDevices, "rasterize: CUDA device index out of range: ", dev);
  std::atomic<int64_t>& hint = bin_hint[dev];
  const int64_t guess = hint.load(std::memory_order_relaxed);
  const bool speculative = !(guess == 0 || bin_sync_forced());

  // Every buffer of a speculative bin is allocated before the first launch: the host then only
  // queues work and stays ahead of the GPU. cnt: the histogram [G+1], the emit's fill counters [G]
  // and the stats [2] (one allocation, zeroed in one memset), then the scan's temp storage; the tile
  // offsets [G+1] (the returned offsets are a view of the first G).
  size_t scan_bytes = 0;
  FFA_CHECK_CUDA(launch_tile_scan(nullptr, &scan_bytes, nullptr, nullptr, G, stream), "rasterize scan (size)");
  const size_t cnt_bytes = align_up((size_t)(2 * G + 3) * sizeof(int32_t));
  at::Tensor cnt = at::empty({(int64_t)(cnt_bytes + scan_bytes + 1)}, bo);
  int32_t* hist = reinterpret_cast<int32_t*>(cnt.data_ptr());
  int32_t* fill = hist + G + 1;
  int32_t* stats = fill + G;
  void* scan_temp = static_cast<char*>(cnt.data_ptr()) + cnt_bytes;
  at::Tensor offs = at::empty({G + 1}, io);
  int32_t* offsets = offs.data_ptr<int32_t>();
  at::Tensor spec_ids = speculative ? at::empty({bin_capacity(guess)}, io) : at::Tensor();
  int32_t* count_host = speculative ? PendingCount::slot() : nullptr;

  // 1-3. Tile histogram, its scan (the tile offsets), the count and the longest list (speculative:
  // copied into count_host).
  auto tile_counts = [&](cudaStream_t st, int* /*result*/) -> cudaError_t {
    cudaError_t e = cudaMemsetAsync(hist, 0, (size_t)(2 * G + 3) * sizeof(int32_t), st);
    if (e == cudaSuccess)
      e = launch_tile_hist(means2d.data_ptr<float>(), radii.data_ptr<int32_t>(), conics.data_ptr<float>(),
                           opac2d.data_ptr<float>(), tiles.data_ptr<int32_t>(), d, hist, st);
    if (e == cudaSuccess)
      e = launch_tile_scan(scan_temp, &scan_bytes, hist, offsets, G, st);
    if (e == cudaSuccess) e = launch_tile_stats(hist, offsets, G, stats, st);
    if (e == cudaSuccess && count_host != nullptr)
      e = cudaMemcpyAsync(count_host, stats, 2 * sizeof(int32_t), cudaMemcpyDeviceToHost, st);
    return e;
  };
  // 4-5. Flatten ids into their tiles' lists, each list sorted (slots [0, cap) of ids).
  auto tile_lists = [&](at::Tensor& ids, cudaStream_t st, int* /*result*/) -> cudaError_t {
    cudaError_t e = launch_tile_emit(means2d.data_ptr<float>(), radii.data_ptr<int32_t>(), conics.data_ptr<float>(),
                                     opac2d.data_ptr<float>(), tiles.data_ptr<int32_t>(), d, offsets, fill,
                                     ids.data_ptr<int32_t>(), ids.numel(), st);
    if (e == cudaSuccess) e = launch_tile_sort(offsets, G, depths.data_ptr<float>(), ids.data_ptr<int32_t>(),
                                               ids.numel(), st);
    return e;
  };
  // The exact way with the count known: the lists as above, or (a list longer than the shared-memory
  // sort takes) the depth-sorted way. The tile offsets are the histogram's either way.
  auto exact_lists = [&](int64_t count, int64_t longest) {
    at::Tensor ids = at::empty({count}, io);
    int unused = 0;
    if (longest <= kTileSortCap)
      FFA_CHECK_CUDA(tile_lists(ids, stream, &unused), "rasterize tile emit / sort");
    else
      ids = depth_sorted_lists(means2d, radii, depths, conics, opac2d, tiles, d, count, stream);
    return ids;
  };
  // int32 scan: an overflow (> 2^31 intersections) shows up as a negative count
  auto checked = [](int32_t count) {
    FFA_CHECK(count >= 0, "rasterize: too many tile intersections (int32 overflow)");
    return (int64_t)count;
  };

  int64_t n_isects = 0;
  at::Tensor sorted;
  int unused = 0;
  if (!speculative) {
    FFA_CHECK_CUDA(tile_counts(stream, &unused), "rasterize tile histogram / scan");
    int32_t st[2] = {0, 0};
    c10::cuda::memcpy_and_sync(st, stats, 2 * sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
    n_isects = checked(st[0]);
    if (n_isects > 0) sorted = exact_lists(n_isects, st[1]);
  } else {
    // In a steady loop both launch sequences repeat with the same buffers: cached graphs.
    GraphKey k1;
    k1.device = dev;
    k1.add(uint64_t(1)).add(uint64_t(MN)).add(uint64_t(G)).add(uint64_t(scan_bytes));
    k1.add(uint64_t(d.B)).add(uint64_t(d.C)).add(uint64_t(d.N)).add(uint64_t(d.W)).add(uint64_t(d.H));
    k1.add(uint64_t(d.tile_size)).add(means2d.data_ptr()).add(radii.data_ptr()).add(conics.data_ptr());
    k1.add(opac2d.data_ptr()).add(tiles.data_ptr()).add(hist).add(offsets).add(count_host);  // (scan temp: after hist)
    const cudaError_t e = launch_cached(k1, tile_counts, &unused, stream);
    if (e != cudaSuccess) (void)cudaStreamSynchronize(stream);  // a queued count copy lands before we throw
    FFA_CHECK_CUDA(e, "rasterize tile histogram / scan");
    PendingCount pending(dev, stream);
    GraphKey k2 = k1;
    k2.w[0] = 2;
    k2.add(depths.data_ptr()).add(spec_ids.data_ptr()).add(uint64_t(spec_ids.numel()));
    FFA_CHECK_CUDA(launch_cached(k2, [&](cudaStream_t st, int* r) { return tile_lists(spec_ids, st, r); }, &unused,
                                 stream),
                   "rasterize tile emit / sort");
    const auto got = pending.wait();  // by now the scan is long done; the GPU works on the queued kernels
    n_isects = checked(got.first);
    if (n_isects <= spec_ids.numel() && got.second <= kTileSortCap) {
      sorted = spec_ids;
    } else {
      // the guess was short, or a list too long for the shared-memory sort: the kernels above wrote
      // within their buffer only; redo with the count (the speculative buffer goes back to the
      // allocator first: stream order makes that safe)
      spec_ids = at::Tensor();
      // the fill counters are spent: zero them for the redo (the histogram and offsets stand)
      FFA_CHECK_CUDA(cudaMemsetAsync(fill, 0, (size_t)G * sizeof(int32_t), stream), "rasterize bin memset");
      if (n_isects > 0) sorted = exact_lists(n_isects, got.second);
    }
  }
  hint.store(std::max(n_isects, guess - guess / 8), std::memory_order_relaxed);
  at::Tensor tile_offsets = offs.narrow(0, 0, G).view(off_shape);
  if (n_isects == 0) return {tile_offsets, at::empty({0}, io)};
  // flatten_ids: the first n_isects sorted ids (a view; its storage may hold the guess's slack)
  return {tile_offsets, sorted.narrow(0, 0, n_isects)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_cuda(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac2d, const at::Tensor& colors,
    const c10::optional<at::Tensor>& backgrounds, const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
    int64_t width, int64_t height, int64_t tile_size) {
  const Sized s = render_dims(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, width,
                              height, tile_size);
  const Dims& d = s.d;
  FFA_F32(means2d);
  c10::cuda::CUDAGuard guard(means2d.device());
  auto fo = means2d.options();
  at::Tensor out_c = at::empty(s.shape({d.C, d.H, d.W, d.D}), fo);
  at::Tensor out_a = at::empty(s.shape({d.C, d.H, d.W, 1}), fo);
  at::Tensor last = at::empty(s.shape({d.C, d.H, d.W}), fo.dtype(at::kInt));
  at::Tensor final_T = at::empty(s.shape({d.C, d.H, d.W, 1}), fo);
  auto stream = c10::cuda::getCurrentCUDAStream();
  // heavy tiles are blended in chunks (rasterize_split.h); the plan and the merge state go to the backward
  const int64_t G = d.B * d.C * d.tiles_x * d.tiles_y, n_isects = flatten_ids.numel();
  // FFAVATAR_NO_SPLIT=1 (read per call, for A/B runs and tests): every tile in one block
  const int64_t pool = ffa_env_flag("FFAVATAR_NO_SPLIT") ? 0 : split_pool(G, d.B * d.C, n_isects);
  const int64_t nt = ((d.tile_size * d.tile_size + 31) / 32) * 32;
  at::Tensor state = at::empty({pool > 0 ? split_state_words(G, pool, nt, d.D) : 0}, fo.dtype(at::kInt));
  if (pool > 0)
    FFA_CHECK_CUDA(launch_split_plan(tile_offsets.data_ptr<int32_t>(), G, d.B * d.C, n_isects, pool,
                                     state.data_ptr<int32_t>(), stream),
                   "rasterize split plan kernel");
  const Split sp = split_view(pool > 0 ? state.data_ptr<int32_t>() : nullptr, G, pool, d.D);
  FFA_CHECK_CUDA(launch_render_fwd(means2d.data_ptr<float>(), conics.data_ptr<float>(), opac2d.data_ptr<float>(),
                                   colors.data_ptr<float>(),
                                   backgrounds.has_value() ? backgrounds->data_ptr<float>() : nullptr,
                                   tile_offsets.data_ptr<int32_t>(), flatten_ids.data_ptr<int32_t>(), n_isects, d,
                                   sp, out_c.data_ptr<float>(), out_a.data_ptr<float>(), last.data_ptr<int32_t>(),
                                   final_T.data_ptr<float>(), stream),
                 "rasterize render_fwd kernel");
  return {out_c, out_a, last, final_T, state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_bwd_cuda(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac2d, const at::Tensor& colors,
    const c10::optional<at::Tensor>& backgrounds, const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
    const at::Tensor& final_Ts, const at::Tensor& last_ids, const at::Tensor& v_render_colors,
    const at::Tensor& v_render_alphas, int64_t width, int64_t height, int64_t tile_size,
    const c10::optional<at::Tensor>& split_state) {
  const Sized s = render_dims(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, width,
                              height, tile_size);
  const Dims& d = s.d;
  FFA_F32(means2d);
  check_render_grads(s, final_Ts, last_ids, v_render_colors, v_render_alphas);
  // the forward's split state (none: every tile in one block, the same gradients up to rounding)
  const int64_t G = d.B * d.C * d.tiles_x * d.tiles_y, nt = ((d.tile_size * d.tile_size + 31) / 32) * 32;
  const int64_t pool = split_state_pool(split_state, means2d, G, nt, d.D);
  const Split sp = split_view(pool > 0 ? split_state->data_ptr<int32_t>() : nullptr, G, pool, d.D);
  c10::cuda::CUDAGuard guard(means2d.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  // output gradients as they come (e.g. the expanded ones of a sum: no copy); contiguous copies otherwise
  const PixelGrad gc = pixel_grad(v_render_colors), ga = pixel_grad(v_render_alphas);
  // the gradients are accumulated with atomics: zeroed first, all four in one launch
  at::Tensor v_means2d = at::empty_like(means2d, at::MemoryFormat::Contiguous);
  at::Tensor v_conics = at::empty_like(conics, at::MemoryFormat::Contiguous);
  at::Tensor v_opac2d = at::empty_like(opac2d, at::MemoryFormat::Contiguous);
  at::Tensor v_colors = at::empty_like(colors, at::MemoryFormat::Contiguous);
  float* const zp[4] = {v_means2d.data_ptr<float>(), v_conics.data_ptr<float>(), v_opac2d.data_ptr<float>(),
                        v_colors.data_ptr<float>()};
  const int64_t zn[4] = {v_means2d.numel(), v_conics.numel(), v_opac2d.numel(), v_colors.numel()};
  FFA_CHECK_CUDA(launch_zero4(zp, zn, stream), "rasterize zero4 kernel");
  FFA_CHECK_CUDA(launch_render_bwd(means2d.data_ptr<float>(), conics.data_ptr<float>(), opac2d.data_ptr<float>(),
                                   colors.data_ptr<float>(),
                                   backgrounds.has_value() ? backgrounds->data_ptr<float>() : nullptr,
                                   tile_offsets.data_ptr<int32_t>(), flatten_ids.data_ptr<int32_t>(),
                                   flatten_ids.numel(), d, sp, final_Ts.data_ptr<float>(), last_ids.data_ptr<int32_t>(),
                                   gc.t.data_ptr<float>(), ga.t.data_ptr<float>(), GradStrides{gc.pix, gc.ch, ga.pix},
                                   v_means2d.data_ptr<float>(), v_conics.data_ptr<float>(), v_opac2d.data_ptr<float>(),
                                   v_colors.data_ptr<float>(), stream),
                 "rasterize render_bwd kernel");
  return {v_means2d, v_conics, v_opac2d, v_colors};
}

}  // namespace
}  // namespace rasterize
}  // namespace ffa

TORCH_LIBRARY_IMPL(ffavatar, CUDA, m) {
  m.impl("rasterize_project", &ffa::rasterize::project_cuda);
  m.impl("rasterize_project_bwd", &ffa::rasterize::project_bwd_cuda);
  m.impl("rasterize_bin", &ffa::rasterize::bin_cuda);
  m.impl("rasterize_render", &ffa::rasterize::render_cuda);
  m.impl("rasterize_render_bwd", &ffa::rasterize::render_bwd_cuda);
}
