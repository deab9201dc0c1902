// The physical bound of one lazy (row_sparse) Adagrad step, for benchmarks/bench_sparse.py: a
// plain loop that gathers the gradient's rows of the table by index with the update's memory
// traffic, built with the package's compiler and flags and run on as many OpenMP threads.
//
// Per updated row of `width` float32 elements, beside its 8-byte index:
//   gather_bound          read w, g, s; write w, s (20 * width bytes): elementwise Adagrad;
//   gather_bound_rowwise  read w, g; write w (12 * width bytes), read and write the row's one
//                         accumulator s[row] (8 bytes): row-wise Adagrad.
// Each body is the cheapest arithmetic that needs all those accesses (no sqrt, no division),
// so it is limited by memory alone. Like the fused row_sparse kernel (run_rows in
// adagrad_gluon/optim/kernels/adagrad_ops.cc) it hands rows out in chunks of ~32768 elements
// and prefetches the row 8 ahead, which the hardware prefetcher cannot predict: an update that
// moves the same bytes the same way cannot beat it.
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace {
// As the fused kernels: one thread below 65536 elements, chunks of ~32768 elements, rows
// prefetched 8 ahead (kParallelMinElements, kGrainElements, kPrefetchRows in adagrad_ops.cc).
constexpr int64_t kParallelMinElements = int64_t{1} << 16;
constexpr int64_t kGrainElements = int64_t{1} << 15;
constexpr int64_t kPrefetchRows = 8;
constexpr int kLanes = 16;  // partial sums of the row-wise loop (two AVX2 registers)

inline void prefetch_row(const float* row, int64_t width) {
  for (int64_t j = 0; j < width; j += 16) __builtin_prefetch(row + j, 1, 3);
}

int team(int64_t n, int64_t width, int threads) {
  return n * width < kParallelMinElements ? 1 : threads;
}
}  // namespace

extern "C" void gather_bound(float* __restrict w, const float* __restrict g,
                             float* __restrict s, const int64_t* __restrict rows, int64_t n,
                             int64_t width, float c, int threads) {
  const int64_t chunk = std::max<int64_t>(1, kGrainElements / width);
  const int t = team(n, width, threads);
#pragma omp parallel for num_threads(t) schedule(dynamic, chunk) if (t > 1)
  for (int64_t k = 0; k < n; ++k) {
    if (k + kPrefetchRows < n) {
      prefetch_row(w + rows[k + kPrefetchRows] * width, width);
      prefetch_row(s + rows[k + kPrefetchRows] * width, width);
    }
    float* __restrict wr = w + rows[k] * width;
    float* __restrict sr = s + rows[k] * width;
    const float* __restrict gr = g + k * width;
    for (int64_t j = 0; j < width; ++j) {
      const float acc = sr[j] + gr[j] * gr[j];
      sr[j] = acc;
      wr[j] = wr[j] - c * gr[j] * acc;
    }
  }
}

extern "C" void gather_bound_rowwise(float* __restrict w, const float* __restrict g,
                                     float* __restrict s, const int64_t* __restrict rows,
                                     int64_t n, int64_t width, float c, int threads) {
  const int64_t chunk = std::max<int64_t>(1, kGrainElements / width);
  const int t = team(n, width, threads);
#pragma omp parallel for num_threads(t) schedule(dynamic, chunk) if (t > 1)
  for (int64_t k = 0; k < n; ++k) {
    if (k + kPrefetchRows < n) {
      prefetch_row(w + rows[k + kPrefetchRows] * width, width);
      __builtin_prefetch(s + rows[k + kPrefetchRows], 1, 3);
    }
    float* __restrict wr = w + rows[k] * width;
    const float* __restrict gr = g + k * width;
    // kLanes partial sums, so the sum of squares is not one chain of dependent additions
    float part[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= width; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) part[l] += gr[j + l] * gr[j + l];
    }
    for (; j < width; ++j) part[0] += gr[j] * gr[j];
    float sum = 0.0f;
    for (int l = 0; l < kLanes; ++l) sum += part[l];
    const float acc = s[rows[k]] + sum;
    s[rows[k]] = acc;
    const float step = c * acc;
    for (int64_t j = 0; j < width; ++j) wr[j] = wr[j] - step * gr[j];
  }
}
