// CUDA glue of the rasterize ops: validation, allocation through torch's caching allocator (outputs,
// intermediates, CUB temp storage), the current stream, and the launchers of rasterize_*.cu.
// float32 only. One host wait per forward, in the bin, for the intersection count (bin_cuda); none under
// stream capture (the bin's capture way).
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAMacros.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>
#include <cstdlib>

#include "common/env.h"
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
    int64_t height, int64_t tile_size, double eps2d, bool antialiased) {
  const Sized s = project_dims(means, quats, scales, opacities, viewmats, Ks, width, height, tile_size);
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
// The count (the last offset of the scan) sizes the key/value buffers. The exact way reads it with a
// host sync right after the scan, so the GPU idles while the host queues emit, sort (~14 CUB launches)
// and offsets. The speculative way sizes the buffers from a per-device guess (`bin_hint`), queues
// everything behind an async copy of the count, and waits for that copy only then; the GPU is busy
// with the queued work meanwhile. If the count exceeds the guess, the queued kernels stayed within the
// guessed buffers and the exact way runs again with the count. Results are the same either way.
// Exact way: the first call on a device (no guess yet), or FFAVATAR_BIN_SYNC=1 (read per call).
// Neither way can be captured in a CUDA graph (a host sync / an event wait inside the op): under stream
// capture the bin takes a third way (no wait; see `capturing` in bin_cuda).

constexpr int kMaxDevices = C10_COMPILE_TIME_MAX_GPUS;

bool stream_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  FFA_CHECK_CUDA(cudaStreamIsCapturing(stream, &status), "rasterize: stream capture status");
  return status != cudaStreamCaptureStatusNone;
}

// Bins captured in a CUDA graph by this thread (the latest 8): their flatten_ids (data pointer) and the
// buffer holding their intersection count on the device, kept alive until the render that reads the
// count is recorded (a buffer freed during a capture may be reused by a later allocation of it).
struct CapturedBin {
  const void* ids = nullptr;
  at::Tensor keep;
  const int32_t* count = nullptr;
};
constexpr int kCapturedBins = 8;
thread_local CapturedBin captured_bins[kCapturedBins];
thread_local int captured_next = 0;

void remember_captured(const at::Tensor& flatten_ids, const at::Tensor& keep, const int32_t* count) {
  CapturedBin& c = captured_bins[captured_next];
  captured_next = (captured_next + 1) % kCapturedBins;
  c.ids = flatten_ids.data_ptr();
  c.keep = keep;
  c.count = count;
}

// The device count of flatten_ids when a captured bin of this thread made them and the stream is
// capturing; else nullptr (the count is flatten_ids.numel()).
const int32_t* captured_count(const at::Tensor& flatten_ids, cudaStream_t stream) {
  if (flatten_ids.numel() == 0 || !stream_capturing(stream)) return nullptr;
  for (const CapturedBin& c : captured_bins)
    if (c.ids != nullptr && c.ids == flatten_ids.data_ptr()) return c.count;
  return nullptr;
}

// Per device, a decaying high-water mark of the counts: max(count, previous - previous/8). Any value
// is correct (it is only a guess); 0: none yet.
std::atomic<int64_t> bin_hint[kMaxDevices];

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
  static int32_t* slot() {
    thread_local int32_t* host = nullptr;
    if (host == nullptr)
      FFA_CHECK_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&host), sizeof(int32_t), cudaHostAllocPortable),
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
  int32_t wait() {
    // a host sync, as memcpy_and_sync is: reported alike under torch.cuda.set_sync_debug_mode (which
    // may throw here; the destructor then waits)
    if (C10_UNLIKELY(c10::cuda::warning_state().get_sync_debug_mode() != c10::cuda::SyncDebugMode::L_DISABLED))
      c10::cuda::warn_or_error_on_sync();
    waited_ = true;
    FFA_CHECK_CUDA(cudaEventSynchronize(event_), "rasterize bin: count wait");
    return *host_;
  }

 private:
  int32_t* host_ = nullptr;
  cudaEvent_t event_ = nullptr;
  bool waited_ = false;
};

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
  const int64_t MN = d.B * d.C * d.N, TP = (int64_t)d.tiles_x * d.tiles_y;
  at::Tensor tile_offsets = at::empty(s.shape({d.C, d.tiles_y, d.tiles_x}), io);
  if (MN == 0) return {tile_offsets.zero_(), at::empty({0}, io)};
  const int end_bit = bit_width(TP) + bit_width(d.B * d.C);
  FFA_CHECK(end_bit <= 32, "rasterize: images x tiles too large for 32-bit keys");
  const int dev = means2d.get_device();
  FFA_CHECK(dev >= 0 && dev < kMaxDevices, "rasterize: CUDA device index out of range: ", dev);
  std::atomic<int64_t>& hint = bin_hint[dev];
  const int64_t guess = hint.load(std::memory_order_relaxed);
  // Under stream capture (a CUDA graph) no host wait can be recorded: the capture way (below).
  const bool capturing = stream_capturing(stream);
  FFA_CHECK(!capturing || guess > 0,
            "rasterize: capturing a CUDA graph needs one uncaptured rasterize call on this device first (it sizes "
            "the intersection buffers)");
  const bool speculative = capturing || !(guess == 0 || env::bin_sync());

  // Sorts: the onesweep sorts of rasterize_bin_sort.cu (their counters in one zeroed region each),
  // or cub::DeviceRadixSort (temp storage) with FFAVATAR_BIN_CUB_SORT=1 (read per call; for A/B runs) and
  // for sorts beyond onesweep_ok's size.
  const bool cub_sort = env::bin_cub_sort();
  // Sort storage: the onesweep state (zeroed before use) or CUB's temp storage, in bytes.
  auto sort_bytes_for = [&](int64_t n, int bits, bool own) {
    size_t bytes = 0;
    if (own) return align_up((size_t)sort_state_words(n, bits) * sizeof(int32_t));
    FFA_CHECK_CUDA(launch_sort_pairs(nullptr, &bytes, nullptr, nullptr, nullptr, nullptr, n, bits, nullptr, stream),
                   "rasterize sort (size)");
    return bytes;
  };

  // Buffers of steps 4-6 for `cap` key slots: keys, their double buffer and the sort's storage in one
  // allocation; the values in two (the sorted ones are returned, everything else is freed on return,
  // before the render allocates).
  struct IsectBuffers {
    int64_t cap = 0;
    bool own = false;  // onesweep sort
    size_t key_bytes = 0, sort_bytes = 0;
    at::Tensor kbuf, vals, vals_alt;
    char* sort_storage() const { return static_cast<char*>(kbuf.data_ptr()) + 2 * key_bytes; }
  };
  auto isect_buffers = [&](int64_t cap) {
    IsectBuffers b;
    b.cap = cap;
    b.own = !cub_sort && onesweep_ok(cap);
    b.sort_bytes = sort_bytes_for(cap, end_bit, b.own);
    b.key_bytes = align_up((size_t)cap * sizeof(uint32_t));
    b.kbuf = at::empty({(int64_t)(2 * b.key_bytes + b.sort_bytes + 1)}, bo);
    b.vals = at::empty({cap}, io);
    b.vals_alt = at::empty({cap}, io);
    return b;
  };

  // Every buffer of a speculative bin is allocated before the first launch: the host then only
  // queues work, and stays ahead of the GPU (host work between two launches would idle it).
  // 1-2: depth keys, their double buffer and the sort's storage (one allocation), the ids (two).
  const bool own_depth = !cub_sort && onesweep_ok(MN);
  size_t dsort_bytes = sort_bytes_for(MN, 32, own_depth);
  const size_t dkey_bytes = align_up((size_t)MN * sizeof(uint32_t));
  at::Tensor dbuf = at::empty({(int64_t)(2 * dkey_bytes + dsort_bytes + 1)}, bo);
  at::Tensor ids = at::empty({MN}, io), ids_alt = at::empty({MN}, io);
  // 3: offsets and the scan's temp storage (one allocation)
  size_t scan_bytes = 0;
  FFA_CHECK_CUDA(launch_scan_counts(nullptr, &scan_bytes, tiles.data_ptr<int32_t>(), nullptr, nullptr, MN, stream),
                 "rasterize scan (size)");
  const size_t off_bytes = align_up((size_t)MN * sizeof(int32_t));
  at::Tensor obuf = at::empty({(int64_t)(off_bytes + scan_bytes + 1)}, bo);
  int32_t* offsets = static_cast<int32_t*>(obuf.data_ptr());
  const int32_t* count_dev = offsets + (MN - 1);
  IsectBuffers spec;
  if (speculative) spec = isect_buffers(bin_capacity(capturing ? guess + guess / 2 : guess));

  char* dp = static_cast<char*>(dbuf.data_ptr());
  uint32_t* dkeys = reinterpret_cast<uint32_t*>(dp);
  uint32_t* dkeys_alt = reinterpret_cast<uint32_t*>(dp + dkey_bytes);
  const SortState dstate = own_depth ? sort_state(reinterpret_cast<int32_t*>(dp + 2 * dkey_bytes), MN, 32)
                                     : SortState();
  // the speculative tile sort's state is zeroed by the depth keys kernel, long before it is used
  int32_t* spec_zero = speculative && spec.own ? reinterpret_cast<int32_t*>(spec.sort_storage()) : nullptr;
  const int64_t spec_zero_words = spec_zero ? (int64_t)(spec.sort_bytes / sizeof(int32_t)) : 0;
  int32_t* count_host = speculative && !capturing ? PendingCount::slot() : nullptr;
  // 1-3. The pairs in depth order, and the inclusive scan of their counts in that order (the last
  // offset is the count; speculative: copied into count_host). result: the sorted ids are in ids_alt.
  auto depth_order = [&](cudaStream_t st, int* result) -> cudaError_t {
    cudaError_t e = cudaSuccess;
    if (own_depth) e = cudaMemsetAsync(dp + 2 * dkey_bytes, 0, dsort_bytes, st);
    if (e == cudaSuccess)
      e = launch_depth_keys(depths.data_ptr<float>(), MN, dkeys, ids.data_ptr<int32_t>(), own_depth ? &dstate : nullptr,
                            spec_zero, spec_zero_words, st);
    bool alt = false;
    if (e == cudaSuccess)
      e = own_depth ? launch_onesweep(dstate, dkeys, dkeys_alt, ids.data_ptr<int32_t>(), ids_alt.data_ptr<int32_t>(),
                                      &alt, st)
                    : launch_sort_pairs(dp + 2 * dkey_bytes, &dsort_bytes, dkeys, dkeys_alt, ids.data_ptr<int32_t>(),
                                        ids_alt.data_ptr<int32_t>(), MN, 32, &alt, st);
    *result = alt;
    if (e == cudaSuccess)
      e = launch_scan_counts(static_cast<char*>(obuf.data_ptr()) + off_bytes, &scan_bytes, tiles.data_ptr<int32_t>(),
                             (alt ? ids_alt : ids).data_ptr<int32_t>(), offsets, MN, st);
    if (e == cudaSuccess && count_host != nullptr)
      e = cudaMemcpyAsync(count_host, count_dev, sizeof(int32_t), cudaMemcpyDeviceToHost, st);
    return e;
  };
  const int32_t* order = nullptr;

  // 4-6. Emit keys, sort, tile offsets into b; returns the values buffer holding the sorted flatten
  // ids (entries [0, min(count, cap)) are meaningful). speculative == false: cap is the count (every
  // slot is emitted). speculative: cap is a guess; the slots past the count hold sentinel keys (all
  // ones in bits [0, end_bit), sorted after every emitted key: the sort is stable, so even an emitted
  // key of the last tile of the last image, equal to it in those bits, stays in front), the emit
  // writes below cap only, and the offsets kernel reads the count on the device (min(count, cap)).
  // In a steady loop the speculative way's launches repeat with the same buffers: a cached graph.
  auto emit_sort_offsets = [&](IsectBuffers& b, bool spec_way) {
    char* kp = static_cast<char*>(b.kbuf.data_ptr());
    uint32_t* keys = reinterpret_cast<uint32_t*>(kp);
    uint32_t* keys_alt = reinterpret_cast<uint32_t*>(kp + b.key_bytes);
    auto isects = [&](cudaStream_t st, int* result) -> cudaError_t {
      const SortState ts = b.own ? sort_state(reinterpret_cast<int32_t*>(b.sort_storage()), b.cap, end_bit)
                                 : SortState();
      cudaError_t e = cudaSuccess;
      if (b.own && !spec_way) e = cudaMemsetAsync(b.sort_storage(), 0, b.sort_bytes, st);  // (speculative: step 1)
      if (e == cudaSuccess)
        e = launch_emit_keys(means2d.data_ptr<float>(), radii.data_ptr<int32_t>(), conics.data_ptr<float>(),
                             opac2d.data_ptr<float>(), order, offsets, d, keys, b.vals.data_ptr<int32_t>(), b.cap,
                             spec_way, b.own ? &ts : nullptr, st);
      bool alt = false;
      if (e == cudaSuccess && b.own) {
        e = launch_onesweep(ts, keys, keys_alt, b.vals.data_ptr<int32_t>(), b.vals_alt.data_ptr<int32_t>(), &alt, st);
      } else if (e == cudaSuccess) {
        e = launch_sort_pairs(kp + 2 * b.key_bytes, &b.sort_bytes, keys, keys_alt, b.vals.data_ptr<int32_t>(),
                              b.vals_alt.data_ptr<int32_t>(), b.cap, end_bit, &alt, st);
      }
      *result = alt;
      if (e == cudaSuccess)
        e = launch_tile_offsets(alt ? keys_alt : keys, b.cap, spec_way ? count_dev : nullptr, d,
                                tile_offsets.data_ptr<int32_t>(), st);
      return e;
    };
    int in_alt = 0;
    if (spec_way && !capturing) {
      GraphKey key;
      key.device = dev;
      key.add(uint64_t(2)).add(uint64_t(b.cap)).add(uint64_t(end_bit)).add(uint64_t(b.sort_bytes)).add(uint64_t(b.own));
      key.add(uint64_t(d.B)).add(uint64_t(d.C)).add(uint64_t(d.N)).add(uint64_t(d.W)).add(uint64_t(d.H));
      key.add(uint64_t(d.tile_size)).add(means2d.data_ptr()).add(radii.data_ptr()).add(conics.data_ptr());
      key.add(opac2d.data_ptr()).add(order).add(offsets).add(kp).add(b.vals.data_ptr()).add(b.vals_alt.data_ptr());
      key.add(tile_offsets.data_ptr());
      FFA_CHECK_CUDA(launch_cached(key, isects, &in_alt, stream), "rasterize emit / sort / tile offsets");
    } else {
      FFA_CHECK_CUDA(isects(stream, &in_alt), "rasterize emit / sort / tile offsets");
    }
    at::Tensor sorted = in_alt ? b.vals_alt : b.vals;
    b = IsectBuffers();  // the rest goes back to the allocator (stream order makes that safe)
    return sorted;
  };
  // int32 scan: an overflow (> 2^31 intersections) shows up as a negative count
  auto checked = [](int32_t count) {
    FFA_CHECK(count >= 0, "rasterize: too many tile intersections (int32 overflow)");
    return (int64_t)count;
  };

  int64_t n_isects = 0;
  at::Tensor sorted_vals;
  int order_alt = 0;
  if (capturing) {
    // The capture way: the speculative launches with 1.5x the guess as capacity, no count copy, no
    // wait, no cached graph (they are recorded into the caller's). flatten_ids is the whole capacity;
    // the count stays on the device, where the render of these flatten_ids reads it (captured_count:
    // the last tile ends there). A count above the capacity renders the first `capacity`
    // intersections in depth order only: the caller detects it (sum of tiles_per_gauss > capacity)
    // and captures again after an uncaptured call has raised the guess.
    FFA_CHECK_CUDA(depth_order(stream, &order_alt), "rasterize depth sort / scan (captured)");
    order = (order_alt ? ids_alt : ids).data_ptr<int32_t>();
    at::Tensor all = emit_sort_offsets(spec, true);
    remember_captured(all, obuf, count_dev);
    return {tile_offsets, all};
  }
  if (!speculative) {
    FFA_CHECK_CUDA(depth_order(stream, &order_alt), "rasterize depth sort / scan");
    order = (order_alt ? ids_alt : ids).data_ptr<int32_t>();
    int32_t count = 0;
    c10::cuda::memcpy_and_sync(&count, count_dev, sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
    n_isects = checked(count);
    if (n_isects > 0) {
      IsectBuffers exact = isect_buffers(n_isects);
      sorted_vals = emit_sort_offsets(exact, false);
    }
  } else {
    GraphKey key;
    key.device = dev;
    key.add(uint64_t(1)).add(uint64_t(MN)).add(uint64_t(dsort_bytes)).add(uint64_t(scan_bytes)).add(uint64_t(own_depth));
    key.add(spec_zero).add(uint64_t(spec_zero_words));
    key.add(depths.data_ptr()).add(tiles.data_ptr()).add(dp).add(ids.data_ptr()).add(ids_alt.data_ptr());
    key.add(obuf.data_ptr()).add(count_host);
    const cudaError_t e = launch_cached(key, depth_order, &order_alt, stream);
    if (e != cudaSuccess) (void)cudaStreamSynchronize(stream);  // a queued count copy lands before we throw
    FFA_CHECK_CUDA(e, "rasterize depth sort / scan");
    order = (order_alt ? ids_alt : ids).data_ptr<int32_t>();
    const int64_t cap = spec.cap;
    PendingCount count(dev, stream);
    sorted_vals = emit_sort_offsets(spec, true);
    n_isects = checked(count.wait());  // by now the scan is long done; the GPU works on the queued kernels
    if (n_isects > cap) {
      // the guess was short: the kernels above wrote within their buffers only; redo with the count
      // (the speculative buffer goes back to the allocator first: stream order makes that safe)
      sorted_vals = at::Tensor();
      IsectBuffers exact = isect_buffers(n_isects);
      sorted_vals = emit_sort_offsets(exact, false);
    }
  }
  hint.store(std::max(n_isects, guess - guess / 8), std::memory_order_relaxed);
  if (n_isects == 0) return {tile_offsets.zero_(), at::empty({0}, io)};
  // flatten_ids: the first n_isects sorted values (a view; its storage may hold the guess's slack)
  return {tile_offsets, sorted_vals.narrow(0, 0, n_isects)};
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
  const int64_t pool = env::no_split() ? 0 : split_pool(G, d.B * d.C, n_isects);
  const int32_t* count_dev = captured_count(flatten_ids, stream);  // the capture way of bin_cuda
  const int64_t nt = ((d.tile_size * d.tile_size + 31) / 32) * 32;
  at::Tensor state = at::empty({pool > 0 ? split_state_words(G, pool, nt, d.D) : 0}, fo.dtype(at::kInt));
  if (pool > 0)
    FFA_CHECK_CUDA(launch_split_plan(tile_offsets.data_ptr<int32_t>(), G, d.B * d.C, n_isects, count_dev, pool,
                                     state.data_ptr<int32_t>(), stream),
                   "rasterize split plan kernel");
  const Split sp = split_view(pool > 0 ? state.data_ptr<int32_t>() : nullptr, G, pool, d.D);
  FFA_CHECK_CUDA(launch_render_fwd(means2d.data_ptr<float>(), conics.data_ptr<float>(), opac2d.data_ptr<float>(),
                                   colors.data_ptr<float>(),
                                   backgrounds.has_value() ? backgrounds->data_ptr<float>() : nullptr,
                                   tile_offsets.data_ptr<int32_t>(), flatten_ids.data_ptr<int32_t>(), n_isects,
                                   count_dev, d, sp, out_c.data_ptr<float>(), out_a.data_ptr<float>(), last.data_ptr<int32_t>(),
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
  FFA_CHECK(captured_count(flatten_ids, stream) == nullptr,
            "rasterize: the backward of a render whose bin was captured in the same CUDA graph is not supported "
            "(capture rendering without gradients, e.g. under torch.no_grad())");
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
  auto launch = [&](const DetAccum* det) {
    FFA_CHECK_CUDA(launch_render_bwd(means2d.data_ptr<float>(), conics.data_ptr<float>(), opac2d.data_ptr<float>(),
                                     colors.data_ptr<float>(),
                                     backgrounds.has_value() ? backgrounds->data_ptr<float>() : nullptr,
                                     tile_offsets.data_ptr<int32_t>(), flatten_ids.data_ptr<int32_t>(),
                                     flatten_ids.numel(), d, sp, final_Ts.data_ptr<float>(),
                                     last_ids.data_ptr<int32_t>(), gc.t.data_ptr<float>(), ga.t.data_ptr<float>(),
                                     GradStrides{gc.pix, gc.ch, ga.pix}, v_means2d.data_ptr<float>(),
                                     v_conics.data_ptr<float>(), v_opac2d.data_ptr<float>(),
                                     v_colors.data_ptr<float>(), det, stream),
                   "rasterize render_bwd kernel");
  };
  if (!at::globalContext().deterministicAlgorithms()) {
    launch(nullptr);
    return {v_means2d, v_conics, v_opac2d, v_colors};
  }
  // torch.use_deterministic_algorithms(True): two passes, fixed-point sums (DetAccum in rasterize.h)
  at::Tensor maxbits = at::zeros({4}, means2d.options().dtype(at::kInt));
  at::Tensor fx[4];
  at::Tensor* grads[4] = {&v_means2d, &v_conics, &v_opac2d, &v_colors};
  DetAccum det{1, maxbits.data_ptr<int32_t>(), {}, {}};
  det_fixed_bits(d, det.bits);
  for (int b = 0; b < 4; ++b) {
    fx[b] = at::zeros(grads[b]->sizes(), means2d.options().dtype(at::kLong));
    det.fx[b] = reinterpret_cast<unsigned long long*>(fx[b].data_ptr<int64_t>());
  }
  launch(&det);
  det.pass = 2;
  launch(&det);
  // back to floats, all on the device (no host sync): term max m = mant * 2^ex, unit 2^(ex - bits)
  const at::Tensor m = maxbits.view(at::kFloat);
  const at::Tensor bits = at::tensor(std::vector<int32_t>(det.bits, det.bits + 4), at::kInt).to(m.device(), true);
  const at::Tensor unit = at::exp2((std::get<1>(at::frexp(m)) - bits).to(at::kDouble));
  const at::Tensor finite = at::isfinite(m);
  for (int b = 0; b < 4; ++b)
    *grads[b] = at::where(finite.select(0, b), (fx[b].to(at::kDouble) * unit.select(0, b)).to(at::kFloat), *grads[b]);
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
