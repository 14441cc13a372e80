// A per-device table of small positive ints computed on first use (e.g. the render launchers'
// largest channel chunk per block size, from attribute queries): one slot per (device, key), 0 = not
// computed yet. Safe under concurrent calls from several host threads: slots are std::atomic<int>;
// two threads that both find 0 compute the same value and both store it. Indexed by the current
// device (cudaGetDevice), so devices with different limits (opt-in shared memory) get their own
// values. Torch-free (.cu files include it).
#pragma once
#include <cuda_runtime.h>

#include <atomic>

namespace ffa {

template <int kKeys>
class PerDeviceCache {
 public:
  static constexpr int kMaxDevices = 64;  // devices past this are computed at every call, not cached

  // The value for `key` (0 <= key < kKeys) on the current device: compute() (must return > 0) the
  // first time, the stored value after that.
  template <typename Compute>
  int get(int key, Compute&& compute) {
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
      (void)cudaGetLastError();
      return compute();
    }
    std::atomic<int>& slot = slots_[dev][key];
    int v = slot.load(std::memory_order_acquire);
    if (v == 0) {
      v = compute();
      slot.store(v, std::memory_order_release);
    }
    return v;
  }

 private:
  std::atomic<int> slots_[kMaxDevices][kKeys] = {};  // 0: not computed yet
};

}  // namespace ffa
