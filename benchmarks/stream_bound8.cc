// The physical bound of one state_bits=8 Adagrad step, for benchmarks/bench_state8.py: a plain
// streaming loop with the fused 8-bit update's memory traffic per element (read w, g and the
// 1-byte code; write w and the code: 14 bytes; and per block of 256, read and write its 4-byte
// scale), built with the package's compiler and flags and run on as many OpenMP threads. As
// stream_bound.cc for float32: the cheapest arithmetic that still needs every access, so no
// update that moves the same bytes can beat it.
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace {
constexpr int64_t kParallelMinElements = int64_t{1} << 16;  // as adagrad_ops.cc
constexpr int64_t kBlock = 256;
}  // namespace

extern "C" void stream_bound8(float* __restrict w, const float* __restrict g,
                              uint8_t* __restrict codes, float* __restrict scales, int64_t n,
                              float c, int threads) {
  const int team = n < kParallelMinElements ? 1 : threads;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const float scale = scales[b];
    const int64_t begin = b * kBlock, end = std::min(n, begin + kBlock);
    float* __restrict wb = w + begin;
    const float* __restrict gb = g + begin;
    uint8_t* __restrict cb = codes + begin;
    for (int64_t i = 0; i < end - begin; ++i) {
      const uint8_t code = static_cast<uint8_t>(cb[i] + 1);
      cb[i] = code;
      wb[i] = wb[i] - scale * gb[i] * static_cast<float>(code);
    }
    scales[b] = scale * c;
  }
}
