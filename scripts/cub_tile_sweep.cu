// CUB onesweep radix sort: time per sort for the default sm90 tuning vs smaller tiles, on the sizes
// of the rasterizer's two sorts (pairs by 32 depth bits; intersections by 13 image/tile bits), each
// sort captured in a CUDA graph and replayed (as the bin does). A diagnostic for the tile size of
// the bin's sorts (notes/rasterize.md, tenth pass). Build and run on the GPU:
//   nvcc -std=c++17 -O3 -arch=sm_90 scripts/cub_tile_sweep.cu -o /tmp/cub_tile_sweep && /tmp/cub_tile_sweep
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

using Key = uint32_t;
using Val = int32_t;
using Off = cub::detail::choose_offset_t<int>;
using Base = cub::detail::radix::policy_hub<Key, Val, Off>;

template <int Threads, int Items>
struct Hub {
  struct Policy : cub::ChainedPolicy<900, Policy, Policy>,
                  Base::template OnesweepSmallKeyTunedPolicy<cub::detail::radix::sm90_small_key_tuning<4, 4, 4>> {
    using OnesweepPolicy =
        cub::AgentRadixSortOnesweepPolicy<Threads, Items, Key, 1, cub::RADIX_RANK_MATCH_EARLY_COUNTS_ANY,
                                          cub::BLOCK_SCAN_RAKING_MEMOIZE, cub::RADIX_SORT_STORE_DIRECT, 8>;
  };
  using MaxPolicy = Policy;
};

#define CK(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e = (x);                                                                       \
    if (e != cudaSuccess) {                                                                    \
      printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e));                         \
      exit(1);                                                                                 \
    }                                                                                          \
  } while (0)

template <typename Sort>
float time_sort(Sort sort, Key* k0, Key* k1, Val* v0, Val* v1, const std::vector<Key>& hk, int n, int bits) {
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  size_t tb = 0;
  cub::DoubleBuffer<Key> dk(k0, k1);
  cub::DoubleBuffer<Val> dv(v0, v1);
  CK(sort(nullptr, tb, dk, dv, n, bits, st));
  void* tmp;
  CK(cudaMalloc(&tmp, tb));
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  CK(sort(tmp, tb, dk, dv, n, bits, st));
  CK(cudaStreamEndCapture(st, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> ts;
  for (int r = 0; r < 60; ++r) {
    CK(cudaMemcpyAsync(k0, hk.data(), n * sizeof(Key), cudaMemcpyHostToDevice, st));
    CK(cudaEventRecord(a, st));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    if (r >= 10) ts.push_back(ms * 1000.f);
  }
  std::sort(ts.begin(), ts.end());
  CK(cudaGraphExecDestroy(ge));
  CK(cudaGraphDestroy(g));
  CK(cudaFree(tmp));
  CK(cudaStreamDestroy(st));
  return ts[ts.size() / 2];
}

template <int T, int I>
cudaError_t custom(void* tmp, size_t& tb, cub::DoubleBuffer<Key>& k, cub::DoubleBuffer<Val>& v, int n, int bits,
                   cudaStream_t st) {
  return cub::DispatchRadixSort<cub::SortOrder::Ascending, Key, Val, Off, cub::detail::identity_decomposer_t,
                                Hub<T, I>>::Dispatch(tmp, tb, k, v, (Off)n, 0, bits, true, st);
}

int main() {
  const int sizes[] = {80000, 173038, 651392, 1384421};
  const int bitss[] = {32, 13};
  Key *k0, *k1;
  Val *v0, *v1;
  const int nmax = 1400000;
  CK(cudaMalloc(&k0, nmax * 4));
  CK(cudaMalloc(&k1, nmax * 4));
  CK(cudaMalloc(&v0, nmax * 4));
  CK(cudaMalloc(&v1, nmax * 4));
  printf("%-9s %-4s %9s %9s %9s %9s %9s %9s %9s\n", "n", "bits", "default", "128x8", "256x8", "256x12", "384x8",
         "256x16", "512x8");
  for (int bits : bitss)
    for (int n : sizes) {
      std::vector<Key> hk(n);
      srand(1);
      for (auto& x : hk) x = ((uint32_t)rand() * 2654435761u) & (bits == 32 ? 0xffffffffu : (1u << bits) - 1);
      auto dflt = [](void* t, size_t& b, cub::DoubleBuffer<Key>& k, cub::DoubleBuffer<Val>& v, int n, int bits,
                     cudaStream_t st) { return cub::DeviceRadixSort::SortPairs(t, b, k, v, n, 0, bits, st); };
      printf("%-9d %-4d %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n", n, bits,
             time_sort(dflt, k0, k1, v0, v1, hk, n, bits), time_sort(custom<128, 8>, k0, k1, v0, v1, hk, n, bits),
             time_sort(custom<256, 8>, k0, k1, v0, v1, hk, n, bits),
             time_sort(custom<256, 12>, k0, k1, v0, v1, hk, n, bits),
             time_sort(custom<384, 8>, k0, k1, v0, v1, hk, n, bits),
             time_sort(custom<256, 16>, k0, k1, v0, v1, hk, n, bits),
             time_sort(custom<512, 8>, k0, k1, v0, v1, hk, n, bits));
    }
  printf("(us per sort, median of 50 graph replays; keys uint32, values int32)\n");
  return 0;
}
