// The physical bound of one Adagrad step, for benchmarks/bench_update.py: a plain streaming
// loop with the fused float32 update's memory traffic per element (read w, g, s; write w, s:
// 20 bytes), built with the package's compiler and flags and run on as many OpenMP threads.
//
// Its body is the cheapest arithmetic that still needs all five accesses (s += g*g; w -= c*g*s):
// no sqrt, no division, no clipping, so it is limited by memory alone and no update that moves
// the same bytes can beat it. Both results are stored, so the compiler cannot elide the loop.
#include <omp.h>

#include <cstdint>

namespace {
// As the fused kernels (kParallelMinElements in adagrad_ops.cc): one thread below 65536
// elements, where starting a team costs more than it saves.
constexpr int64_t kParallelMinElements = int64_t{1} << 16;
}  // namespace

extern "C" void stream_bound(float* __restrict w, const float* __restrict g,
                             float* __restrict s, int64_t n, float c, int threads) {
  const int team = n < kParallelMinElements ? 1 : threads;
#pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
  for (int64_t i = 0; i < n; ++i) {
    const float acc = s[i] + g[i] * g[i];
    s[i] = acc;
    w[i] = w[i] - c * g[i] * acc;
  }
}
