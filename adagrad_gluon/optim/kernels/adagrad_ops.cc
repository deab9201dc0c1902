// Fused Adagrad updates for MXNet 1.9.1, as an operator library for mx.library.load.
//
// Built on the user's machine by adagrad_gluon/kernels.py (never shipped as a binary) and
// tested against the reference NDArray update, adagrad_gluon/functional.py. One step, per
// element, in the accumulator's precision (float32, or float64 for float64 weights):
//
//   g = clip(rescale_grad * g, -clip_gradient, clip_gradient)    // clip only if given
//   g = -g                                                       // maximize only
//   g = g + wd * w                                               // weight_decay_mode l2
//   s = s + g * g
//   d = g / sqrt(s + eps)  or  g / (sqrt(s) + eps)               // eps_placement
//   (where eps == 0, a zero denominator is replaced by 1)
//   w = w + (d + w * wd) * -lr                                   // step
//   w = w + d * -lr                                              // l2, or wd == 0
//   w = w - w * wd * lr;  w = w - d * lr                         // decoupled
//
// Every operation rounds where the reference's NDArray operation rounds, in the same order,
// so float32 and float64 results are bit-identical to it. That needs IEEE arithmetic: build
// with -ffp-contract=off and without -ffast-math (kernels.py does).
//
// Operators (all write their inputs in place and have no outputs):
//   adagrad_gluon_update(weight, grad, acc[, master])
//       attributes lr, wd and the shared options below.
//   adagrad_gluon_multi_update(weight_0, grad_0, acc_0[, master_0], weight_1, ...)
//       attributes num_tensors, lrs, wds (comma-separated, one per tensor) and the options.
//   adagrad_gluon_row_sparse_update(weight, grad, acc[, master])
//       grad is row_sparse; only its rows of weight, acc (and master) change.
//   adagrad_gluon_rowwise_update(weight, grad, acc[, master])
//   adagrad_gluon_rowwise_row_sparse_update(weight, grad, acc[, master])
//       row-wise Adagrad (dense or row_sparse grad): acc has shape (rows,), one value per
//       row (axis 0) of a weight of two or more dimensions. Per row, g as above:
//         s = s + sum_j(g_j * g_j) / n      // n: the row length
//         u_j = (g_j * lr) / denom(s)        // denom as above
//         w = w - u                          // l2, or wd == 0
//         w = w - (u + w * wd * lr)          // step
//         w = w - w * wd * lr;  w = w - u    // decoupled
//       The sum runs left to right, Kahan-compensated for a dense grad (as MXNet's nd.mean)
//       and plain for a row_sparse one (as MXNet's GroupAdaGrad sparse kernel); one pass over
//       the row for the sum and one for the update.
// Shared attributes, each optional (every attribute costs ~1 us per call, so callers leave
// out those at their default): eps (1e-6), rescale_grad (1), clip_gradient (absent: no
// clipping), eps_placement (inside|outside), weight_decay_mode (step|l2|decoupled),
// maximize (0|1), multi_precision (0|1: a float32 master weight follows each float16
// weight's accumulator).
//
// Types: float32 weights and gradients with a float32 accumulator; float64 with float64;
// float16 weights and gradients with a float32 accumulator, updated in float32 and rounded
// back to float16 (round to nearest even, as MXNet's cast), from the master weight if given.

#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using mxnet::ext::MXContext;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXSparse;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;

namespace {

using Attrs = std::unordered_map<std::string, std::string>;

// Threads of the OpenMP team one update uses (MXNet gives its own operators fewer).
int g_num_threads = 0;  // 0: omp_get_num_procs(), read on first use
// Work below this many elements runs on the calling thread: a team costs more than it saves.
constexpr int64_t kParallelMinElements = 1 << 16;
// Elements per unit of parallel work (tensors are cut into pieces of at most this size).
constexpr int64_t kGrainElements = 1 << 15;

int num_threads() {
  if (g_num_threads <= 0) g_num_threads = std::max(1, omp_get_num_procs());
  return g_num_threads;
}

// -- float16 <-> float32, bit-exact with MXNet's conversions ---------------------------------

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7fffu;
  if (magnitude >= 0x7c00u) return float_of(sign | 0x7f800000u | ((magnitude & 0x3ffu) << 13));
  if (magnitude >= 0x0400u) return float_of(sign | ((magnitude << 13) + (112u << 23)));
  // zero or subnormal: magnitude * 2^-24 is exact in float32
  return float_of(sign | bits_of(static_cast<float>(magnitude) * 0x1p-24f));
}

inline uint16_t float_to_half(float f) {
  const uint32_t x = bits_of(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t magnitude = x & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu);  // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // rounds to infinity (>= 65520)
  if (magnitude >= 0x38800000u) {                        // a normal float16 (>= 2^-14)
    const uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);  // to nearest even
    return sign | static_cast<uint16_t>((rounded - (112u << 23)) >> 13);
  }
  // subnormal float16 (or zero): count units of 2^-24, rounding to nearest even by adding
  // and subtracting 2^23 (exact below 2^23; needs IEEE arithmetic, no -ffast-math)
  const float units = float_of(magnitude) * 0x1p24f;
  return sign | static_cast<uint16_t>((units + 0x1p23f) - 0x1p23f);
}

// Loading and storing a weight or gradient in the compute precision A.
template <typename A> inline A load(float v) { return v; }
template <typename A> inline A load(double v) { return v; }
template <typename A> inline A load(uint16_t v) { return half_to_float(v); }
inline void store(float a, float* dst) { *dst = a; }
inline void store(double a, double* dst) { *dst = a; }
inline void store(float a, uint16_t* dst) { *dst = float_to_half(a); }

// -- the update -----------------------------------------------------------------------------

enum class Decay { kNone, kStep, kL2, kDecoupled };  // kNone: wd == 0
enum class Placement { kInside, kOutside };

// Options shared by every tensor of a call, as parsed from the attributes.
struct Options {
  double eps = 0.0;
  double rescale_grad = 1.0;
  bool clip = false;
  double clip_gradient = 0.0;
  Placement placement = Placement::kInside;
  Decay decay_mode = Decay::kStep;  // the mode; a tensor with wd == 0 uses kNone
  bool maximize = false;
};

// One tensor's operands (row_sparse: one row of it) and its own lr and wd.
struct Job {
  void* weight;
  const void* grad;
  void* acc;
  void* master;  // nullptr without a master weight
  int64_t size;
  double lr;
  double wd;
};

// The scalars in the compute precision A, rounded as MXNet's scalar operators round them.
template <typename A>
struct Scalars {
  A rescale, lo, hi, eps, lr, neg_lr, wd;
  bool maximize, guard_zero, clip;

  Scalars(const Options& o, const Job& j)
      : rescale(static_cast<A>(o.rescale_grad)),
        // nd.clip takes float32 bounds, whatever the data type
        lo(o.clip ? static_cast<A>(static_cast<float>(-o.clip_gradient))
                  : -std::numeric_limits<A>::infinity()),
        hi(o.clip ? static_cast<A>(static_cast<float>(o.clip_gradient))
                  : std::numeric_limits<A>::infinity()),
        eps(static_cast<A>(o.eps)),
        lr(static_cast<A>(j.lr)),
        neg_lr(static_cast<A>(-j.lr)),
        wd(static_cast<A>(j.wd)),
        maximize(o.maximize),
        guard_zero(o.eps == 0.0),
        clip(o.clip) {}
};

template <Decay kDecay, Placement kPlace, typename A>
inline void step(A* w, A grad, A* s, const Scalars<A>& c) {
  A g = grad * c.rescale;
  g = g > c.hi ? c.hi : (g < c.lo ? c.lo : g);
  g = c.maximize ? -g : g;
  if constexpr (kDecay == Decay::kL2) g = g + *w * c.wd;
  const A acc = *s + g * g;
  *s = acc;
  A denom = kPlace == Placement::kInside ? std::sqrt(acc + c.eps) : std::sqrt(acc) + c.eps;
  if (c.guard_zero) denom = denom + (denom == A(0) ? A(1) : A(0));
  const A d = g / denom;
  if constexpr (kDecay == Decay::kStep) {
    *w = *w + (d + *w * c.wd) * c.neg_lr;
  } else if constexpr (kDecay == Decay::kDecoupled) {
    *w = *w - *w * c.wd * c.lr;
    *w = *w - d * c.lr;
  } else {
    *w = *w + d * c.neg_lr;
  }
}

// Update elements [begin, end) of a job. W: weight/grad type, A: accumulator type.
template <typename W, typename A, bool kMaster, Decay kDecay, Placement kPlace>
void update_range(const Job& job, const Options& options, int64_t begin, int64_t end) {
  const Scalars<A> c(options, job);
  W* __restrict w = static_cast<W*>(job.weight);
  const W* __restrict g = static_cast<const W*>(job.grad);
  A* __restrict s = static_cast<A*>(job.acc);
  if constexpr (kMaster) {
    A* __restrict m = static_cast<A*>(job.master);
    for (int64_t i = begin; i < end; ++i) {
      step<kDecay, kPlace>(&m[i], load<A>(g[i]), &s[i], c);
      store(m[i], &w[i]);
    }
  } else if constexpr (std::is_same<W, A>::value) {
    for (int64_t i = begin; i < end; ++i) step<kDecay, kPlace>(&w[i], g[i], &s[i], c);
  } else {
    for (int64_t i = begin; i < end; ++i) {
      A work = load<A>(w[i]);
      step<kDecay, kPlace>(&work, load<A>(g[i]), &s[i], c);
      store(work, &w[i]);
    }
  }
}

using RangeFn = void (*)(const Job&, const Options&, int64_t, int64_t);

template <typename W, typename A, bool kMaster, Decay kDecay>
RangeFn pick_placement(Placement placement) {
  return placement == Placement::kInside
             ? update_range<W, A, kMaster, kDecay, Placement::kInside>
             : update_range<W, A, kMaster, kDecay, Placement::kOutside>;
}

template <typename W, typename A, bool kMaster>
RangeFn pick_decay(Decay decay, Placement placement) {
  switch (decay) {
    case Decay::kStep: return pick_placement<W, A, kMaster, Decay::kStep>(placement);
    case Decay::kL2: return pick_placement<W, A, kMaster, Decay::kL2>(placement);
    case Decay::kDecoupled: return pick_placement<W, A, kMaster, Decay::kDecoupled>(placement);
    default: return pick_placement<W, A, kMaster, Decay::kNone>(placement);
  }
}

// The loop for a weight type (as MXDType) and an options set; nullptr if unsupported.
RangeFn pick_kernel(int weight_type, bool master, double wd, const Options& o) {
  const Decay decay = wd == 0.0 ? Decay::kNone : o.decay_mode;
  switch (weight_type) {
    case mxnet::ext::kFloat32: return pick_decay<float, float, false>(decay, o.placement);
    case mxnet::ext::kFloat64: return pick_decay<double, double, false>(decay, o.placement);
    case mxnet::ext::kFloat16:
      return master ? pick_decay<uint16_t, float, true>(decay, o.placement)
                    : pick_decay<uint16_t, float, false>(decay, o.placement);
    default: return nullptr;
  }
}

// -- attributes -----------------------------------------------------------------------------

bool parse_number(const std::string& key, const std::string& text, double* out) {
  const char* begin = text.c_str();
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(begin, &end);
  if (end == begin || *end != '\0' || errno == ERANGE || !std::isfinite(value)) {
    MX_ERROR_MSG << "attribute " << key << " must be a finite number, got '" << text << "'";
    return false;
  }
  *out = value;
  return true;
}

bool get_number(const Attrs& attrs, const std::string& key, double* out) {
  const auto it = attrs.find(key);
  if (it == attrs.end()) {
    MX_ERROR_MSG << "attribute " << key << " is required";
    return false;
  }
  return parse_number(key, it->second, out);
}

bool get_numbers(const Attrs& attrs, const std::string& key, size_t count,
                 std::vector<double>* out) {
  const auto it = attrs.find(key);
  if (it == attrs.end()) {
    MX_ERROR_MSG << "attribute " << key << " is required";
    return false;
  }
  out->clear();
  const std::string& text = it->second;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    double value;
    if (!parse_number(key, text.substr(start, comma - start), &value)) return false;
    out->push_back(value);
    start = comma + 1;
  }
  if (out->size() != count) {
    MX_ERROR_MSG << "attribute " << key << " has " << out->size() << " values, expected "
                 << count;
    return false;
  }
  return true;
}

// An optional attribute: ``fallback`` if absent.
bool get_number_or(const Attrs& attrs, const std::string& key, double fallback, double* out) {
  const auto it = attrs.find(key);
  if (it == attrs.end()) {
    *out = fallback;
    return true;
  }
  return parse_number(key, it->second, out);
}

bool get_flag(const Attrs& attrs, const std::string& key, bool* out) {
  const auto it = attrs.find(key);
  if (it == attrs.end() || it->second == "0" || it->second == "False") {
    *out = false;
  } else if (it->second == "1" || it->second == "True") {
    *out = true;
  } else {
    MX_ERROR_MSG << "attribute " << key << " must be 0 or 1, got '" << it->second << "'";
    return false;
  }
  return true;
}

bool parse_options(const Attrs& attrs, Options* o) {
  if (!get_number_or(attrs, "eps", 1e-6, &o->eps)
      || !get_number_or(attrs, "rescale_grad", 1.0, &o->rescale_grad)
      || !get_flag(attrs, "maximize", &o->maximize)) {
    return false;
  }
  o->clip = attrs.count("clip_gradient") > 0;
  if (o->clip && !get_number(attrs, "clip_gradient", &o->clip_gradient)) return false;
  const auto placement = attrs.find("eps_placement");
  const std::string place = placement == attrs.end() ? "inside" : placement->second;
  if (place == "inside" || place == "outside") {
    o->placement = place == "inside" ? Placement::kInside : Placement::kOutside;
  } else {
    MX_ERROR_MSG << "attribute eps_placement must be inside or outside, got '" << place << "'";
    return false;
  }
  const auto mode = attrs.find("weight_decay_mode");
  const std::string decay = mode == attrs.end() ? "step" : mode->second;
  if (decay == "step") {
    o->decay_mode = Decay::kStep;
  } else if (decay == "l2") {
    o->decay_mode = Decay::kL2;
  } else if (decay == "decoupled") {
    o->decay_mode = Decay::kDecoupled;
  } else {
    MX_ERROR_MSG << "attribute weight_decay_mode must be step, l2 or decoupled, got '" << decay
                 << "'";
    return false;
  }
  return true;
}

// The layout of an operator's inputs: num_tensors groups of (weight, grad, acc[, master]).
struct Layout {
  int num_tensors = 1;
  bool master = false;
  int per_tensor() const { return master ? 4 : 3; }
};

bool parse_layout(const Attrs& attrs, bool multi, Layout* layout) {
  if (!get_flag(attrs, "multi_precision", &layout->master)) return false;
  if (!multi) return true;
  double count;
  if (!get_number(attrs, "num_tensors", &count)) return false;
  if (count < 1 || count > (1 << 20) || count != std::floor(count)) {
    MX_ERROR_MSG << "attribute num_tensors must be an integer >= 1, got " << count;
    return false;
  }
  layout->num_tensors = static_cast<int>(count);
  return true;
}

// -- shape, type and storage inference (the same checks for every operator) -----------------

const char* const kRoles[] = {"weight", "grad", "acc", "master"};

MXReturnValue check_shapes(const Layout& layout,
                           const std::vector<std::vector<unsigned int>>& shapes) {
  for (int t = 0; t < layout.num_tensors; ++t) {
    const int first = t * layout.per_tensor();
    for (int k = 1; k < layout.per_tensor(); ++k) {
      if (shapes[first + k] != shapes[first]) {
        MX_ERROR_MSG << "tensor " << t << ": the " << kRoles[k]
                     << " shape does not match the weight shape";
        return MX_FAIL;
      }
    }
  }
  return MX_SUCCESS;
}

MXReturnValue check_types(const Layout& layout, const std::vector<int>& types) {
  for (int t = 0; t < layout.num_tensors; ++t) {
    const int* in = &types[t * layout.per_tensor()];
    const int weight = in[0];
    const int acc = weight == mxnet::ext::kFloat64 ? mxnet::ext::kFloat64 : mxnet::ext::kFloat32;
    bool ok = weight == mxnet::ext::kFloat32 || weight == mxnet::ext::kFloat64
              || weight == mxnet::ext::kFloat16;
    ok = ok && in[1] == weight && in[2] == acc;
    if (layout.master) ok = ok && weight == mxnet::ext::kFloat16 && in[3] == acc;
    if (!ok) {
      MX_ERROR_MSG << "tensor " << t << ": expected float32 weight and grad with a float32 "
                   << "accumulator, float64 with float64, or float16 with a float32 "
                   << "accumulator (and a float32 master weight if multi_precision)";
      return MX_FAIL;
    }
  }
  return MX_SUCCESS;
}

MXReturnValue dense_parse(const Attrs& attrs, bool multi, int* num_in, int* num_out) {
  Layout layout;
  if (!parse_layout(attrs, multi, &layout)) return MX_FAIL;
  *num_in = layout.num_tensors * layout.per_tensor();
  *num_out = 0;
  return MX_SUCCESS;
}

MXReturnValue single_parse(const Attrs& attrs, int* num_in, int* num_out) {
  return dense_parse(attrs, false, num_in, num_out);
}

MXReturnValue multi_parse(const Attrs& attrs, int* num_in, int* num_out) {
  return dense_parse(attrs, true, num_in, num_out);
}

template <bool kMulti>
MXReturnValue infer_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in,
                          std::vector<std::vector<unsigned int>>*) {
  Layout layout;
  if (!parse_layout(attrs, kMulti, &layout)) return MX_FAIL;
  return check_shapes(layout, *in);
}

template <bool kMulti>
MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in, std::vector<int>*) {
  Layout layout;
  if (!parse_layout(attrs, kMulti, &layout)) return MX_FAIL;
  return check_types(layout, *in);
}

// kSparseGrad: the gradient (input 1) is row_sparse, everything else dense.
template <bool kSparseGrad>
MXReturnValue infer_storage(const Attrs&, std::vector<int>* in, std::vector<int>*) {
  for (size_t i = 0; i < in->size(); ++i) {
    const int expected = kSparseGrad && i == 1 ? mxnet::ext::kRowSparseStorage
                                               : mxnet::ext::kDefaultStorage;
    if ((*in)[i] != expected) {
      MX_ERROR_MSG << "input " << i << " must be "
                   << (expected == mxnet::ext::kDefaultStorage ? "dense" : "row_sparse");
      return MX_FAIL;
    }
  }
  return MX_SUCCESS;
}

// Every operator writes each tensor's weight, accumulator and master weight.
template <bool kMulti>
MXReturnValue mutate_inputs(const Attrs& attrs, std::vector<int>* indices) {
  Layout layout;
  if (!parse_layout(attrs, kMulti, &layout)) return MX_FAIL;
  for (int t = 0; t < layout.num_tensors; ++t) {
    const int first = t * layout.per_tensor();
    indices->push_back(first);
    indices->push_back(first + 2);
    if (layout.master) indices->push_back(first + 3);
  }
  return MX_SUCCESS;
}

// -- forward --------------------------------------------------------------------------------

// A piece of one job, the unit of parallel work.
struct Piece {
  int job;
  int64_t begin, end;
};

void run_jobs(const std::vector<Job>& jobs, const std::vector<RangeFn>& kernels,
              const Options& options) {
  std::vector<Piece> pieces;
  int64_t total = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    total += jobs[j].size;
    for (int64_t begin = 0; begin < jobs[j].size; begin += kGrainElements) {
      pieces.push_back({static_cast<int>(j), begin,
                        std::min(jobs[j].size, begin + kGrainElements)});
    }
  }
  const int64_t count = static_cast<int64_t>(pieces.size());
  if (count == 0) return;  // nothing to do (e.g. a row_sparse gradient without rows)
  const int threads = total < kParallelMinElements ? 1 : std::min<int64_t>(num_threads(), count);
  // small pieces are handed out in batches of about kGrainElements elements
  const int batch = static_cast<int>(std::max<int64_t>(1, kGrainElements * count / total));
#pragma omp parallel for num_threads(threads) schedule(dynamic, batch) if (threads > 1)
  for (int64_t p = 0; p < count; ++p) {
    const Piece& piece = pieces[p];
    kernels[piece.job](jobs[piece.job], options, piece.begin, piece.end);
  }
}

template <bool kMulti>
MXReturnValue dense_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                            std::vector<MXTensor>*, const OpResource&) {
  Layout layout;
  Options options;
  if (!parse_layout(attrs, kMulti, &layout) || !parse_options(attrs, &options)) return MX_FAIL;
  std::vector<double> lrs, wds;
  if (kMulti) {
    if (!get_numbers(attrs, "lrs", layout.num_tensors, &lrs)
        || !get_numbers(attrs, "wds", layout.num_tensors, &wds)) {
      return MX_FAIL;
    }
  } else {
    lrs.resize(1);
    wds.resize(1);
    if (!get_number(attrs, "lr", &lrs[0]) || !get_number(attrs, "wd", &wds[0])) return MX_FAIL;
  }
  std::vector<Job> jobs;
  std::vector<RangeFn> kernels;
  for (int t = 0; t < layout.num_tensors; ++t) {
    MXTensor* in = &(*inputs)[t * layout.per_tensor()];
    const RangeFn kernel = pick_kernel(in[0].dtype, layout.master, wds[t], options);
    if (kernel == nullptr) {
      MX_ERROR_MSG << "tensor " << t << ": unsupported weight type " << in[0].dtype;
      return MX_FAIL;
    }
    jobs.push_back({in[0].data_ptr, in[1].data_ptr, in[2].data_ptr,
                    layout.master ? in[3].data_ptr : nullptr, in[0].size(), lrs[t], wds[t]});
    kernels.push_back(kernel);
  }
  run_jobs(jobs, kernels, options);
  return MX_SUCCESS;
}

// Rows ahead of the one being updated whose weight, accumulator (and master) lines are
// prefetched: a row_sparse update gathers rows the hardware prefetcher cannot predict, and one
// row of a typical embedding (64 float32) is too short for it to start.
constexpr int64_t kPrefetchRows = 8;
// Bytes of a row prefetched ahead (the hardware prefetcher follows the rest of a longer row).
constexpr int64_t kPrefetchBytes = 1024;

// The first ``bytes`` (at most kPrefetchBytes) of one row, for writing.
inline void prefetch_row(const char* row, int64_t bytes) {
  for (int64_t b = 0; b < std::min(bytes, kPrefetchBytes); b += 64) {
    __builtin_prefetch(row + b, 1, 3);
  }
}

// The attributes of a single-tensor operator: layout, options, lr and wd.
bool parse_single(const Attrs& attrs, Layout* layout, Options* options, double* lr,
                  double* wd) {
  return parse_layout(attrs, false, layout) && parse_options(attrs, options)
         && get_number(attrs, "lr", lr) && get_number(attrs, "wd", wd);
}

// A row_sparse gradient's rows, checked: strictly increasing and within [0, num_rows).
bool check_rows(const MXSparse& grad, int64_t num_rows) {
  for (int64_t k = 0; k < grad.indices_len; ++k) {
    const int64_t row = grad.indices[k];
    if (row < 0 || row >= num_rows || (k > 0 && row <= grad.indices[k - 1])) {
      MX_ERROR_MSG << "row_sparse gradient: row indices must be strictly increasing (sorted, "
                   << "no repeats) and within [0, "
                   << num_rows << "); index " << k << " is " << row;
      return false;
    }
  }
  return true;
}

// The lazy update: each row k of the gradient updates row indices[k] of weight, acc (and
// master). Rows are the unit of parallel work (a row longer than kGrainElements is cut into
// pieces of at most that many elements), handed out in chunks of ~kGrainElements elements;
// each thread prefetches the rows kPrefetchRows ahead of the one it updates.
void run_rows(const Job& table, const MXSparse& grad, int64_t row_size, size_t weight_bytes,
              size_t acc_bytes, RangeFn kernel, const Options& options) {
  const int64_t nnz = grad.indices_len;
  const int64_t parts = std::max<int64_t>(1, (row_size + kGrainElements - 1) / kGrainElements);
  const int64_t units = nnz * parts;
  if (units == 0 || row_size == 0) return;  // a gradient without rows, or rows without columns
  const int64_t w_row = row_size * static_cast<int64_t>(weight_bytes);
  const int64_t s_row = row_size * static_cast<int64_t>(acc_bytes);
  char* const weight = static_cast<char*>(table.weight);
  char* const acc = static_cast<char*>(table.acc);
  char* const master = static_cast<char*>(table.master);
  const char* const data = static_cast<const char*>(grad.data);
  const int64_t* const rows = grad.indices;
  const int threads = nnz * row_size < kParallelMinElements
                          ? 1 : static_cast<int>(std::min<int64_t>(num_threads(), units));
  const int64_t chunk = std::max<int64_t>(1, kGrainElements / row_size);
#pragma omp parallel for num_threads(threads) schedule(dynamic, chunk) if (threads > 1)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t k = u / parts;
    const int64_t begin = (u % parts) * kGrainElements;
    if (begin == 0 && k + kPrefetchRows < nnz) {
      const int64_t ahead = rows[k + kPrefetchRows];
      prefetch_row(weight + ahead * w_row, w_row);
      prefetch_row(acc + ahead * s_row, s_row);
      if (master != nullptr) prefetch_row(master + ahead * s_row, s_row);
    }
    const int64_t row = rows[k];
    const Job job{weight + row * w_row, data + k * w_row, acc + row * s_row,
                  master == nullptr ? nullptr : master + row * s_row, row_size, table.lr,
                  table.wd};
    kernel(job, options, begin, std::min(row_size, begin + kGrainElements));
  }
}

MXReturnValue row_sparse_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                 std::vector<MXTensor>*, const OpResource&) {
  Layout layout;
  Options options;
  double lr, wd;
  if (!parse_single(attrs, &layout, &options, &lr, &wd)) return MX_FAIL;
  MXTensor& weight = (*inputs)[0];
  const MXSparse* grad = (*inputs)[1].data<MXSparse>();
  const RangeFn kernel = pick_kernel(weight.dtype, layout.master, wd, options);
  if (kernel == nullptr) {
    MX_ERROR_MSG << "unsupported weight type " << weight.dtype;
    return MX_FAIL;
  }
  const int64_t num_rows = weight.shape.empty() ? 1 : weight.shape[0];
  if (!check_rows(*grad, num_rows)) return MX_FAIL;
  const int64_t row_size = num_rows == 0 ? 0 : weight.size() / num_rows;
  const size_t weight_bytes = weight.dtype == mxnet::ext::kFloat64   ? 8
                              : weight.dtype == mxnet::ext::kFloat32 ? 4
                                                                     : 2;
  const size_t acc_bytes = weight.dtype == mxnet::ext::kFloat64 ? 8 : 4;
  const Job table{weight.data_ptr, nullptr, (*inputs)[2].data_ptr,
                  layout.master ? (*inputs)[3].data_ptr : nullptr, row_size, lr, wd};
  run_rows(table, *grad, row_size, weight_bytes, acc_bytes, kernel, options);
  return MX_SUCCESS;
}

MXReturnValue row_sparse_parse(const Attrs& attrs, int* num_in, int* num_out) {
  return dense_parse(attrs, false, num_in, num_out);
}

// -- row-wise Adagrad -----------------------------------------------------------------------

// One row-wise update: rows of length row_size; row k of grad updates row rows[k] of weight,
// acc (one value per row) and master, or row k if rows is nullptr (a dense gradient).
struct RowTask {
  void* weight;
  const void* grad;
  void* acc;
  void* master;
  const int64_t* rows;
  int64_t row_size;
  double lr;
  double wd;
};

// The gradient as the step prepares it (rescale, clip, maximize, l2), in A; wv: the weight.
template <Decay kDecay, typename A>
inline A prepared(A grad, A wv, const Scalars<A>& c) {
  A g = grad * c.rescale;
  if (c.clip) g = g > c.hi ? c.hi : (g < c.lo ? c.lo : g);  // unclipped: lo, hi = -inf, inf
  if (c.maximize) g = -g;
  if constexpr (kDecay == Decay::kL2) g = g + wv * c.wd;
  return g;
}

// The weight's element j in A (from the master copy if kept).
template <typename W, typename A, bool kMaster>
inline A weight_at(const W* w, const A* m, int64_t j) {
  if constexpr (kMaster) {
    return m[j];
  } else {
    return load<A>(w[j]);
  }
}

// Rows whose sums of squares are computed side by side: each row's sum still runs left to
// right, in its own order, but the independent dependency chains of kRowBlock rows overlap
// (with AVX-512, as the 16 lanes of one vector).
constexpr int64_t kRowBlock = 16;
// Rows ahead of the one being updated whose weight (and master) row and accumulator are
// prefetched: a block and a half, so they arrive before the block that needs them starts.
constexpr int64_t kRowwisePrefetch = 24;

template <typename W, typename A, bool kMaster>
struct RowView {
  W* __restrict w;
  const W* __restrict g;
  A* __restrict m;
  A* s;
};

template <typename W, typename A, bool kMaster>
inline RowView<W, A, kMaster> row_view(const RowTask& task, int64_t k) {
  const int64_t n = task.row_size;
  const int64_t row = task.rows == nullptr ? k : task.rows[k];
  return {static_cast<W*>(task.weight) + row * n, static_cast<const W*>(task.grad) + k * n,
          kMaster ? static_cast<A*>(task.master) + row * n : nullptr,
          static_cast<A*>(task.acc) + row};
}

// Columns per tile of row_sums: the squares of kRowBlock rows of a tile fit in L1.
constexpr int64_t kSumTile = 128;

#if defined(__AVX512F__)
// Columns c0..c0+15 of 16 rows of `squares` (row stride kSumTile), transposed: out[c] holds
// column c0 + c, lane r the element of row r.
inline void transpose16(const float (*squares)[kSumTile], int64_t c0, __m512* out) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = _mm512_loadu_ps(squares[2 * i] + c0);
    const __m512 b = _mm512_loadu_ps(squares[2 * i + 1] + c0);
    t[2 * i] = _mm512_unpacklo_ps(a, b);
    t[2 * i + 1] = _mm512_unpackhi_ps(a, b);
  }
  // u[4i + k], 128-bit lane L: column 4L + k of rows 4i .. 4i + 3
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    const __m512 y0 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x44);
    const __m512 y1 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xEE);
    const __m512 y2 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x44);
    const __m512 y3 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xEE);
    out[k] = _mm512_shuffle_f32x4(y0, y2, 0x88);
    out[4 + k] = _mm512_shuffle_f32x4(y0, y2, 0xDD);
    out[8 + k] = _mm512_shuffle_f32x4(y1, y3, 0x88);
    out[12 + k] = _mm512_shuffle_f32x4(y1, y3, 0xDD);
  }
}

// The plain sums of 16 rows' squares (a tile of len columns) added to sums, each row's left
// to right as the scalar loop adds them: lane r of one vector is row r's running sum.
inline void add_columns16(const float (*squares)[kSumTile], int64_t len, float* sums) {
  __m512 sum = _mm512_loadu_ps(sums);
  __m512 columns[16];
  int64_t j = 0;
  for (; j + 16 <= len; j += 16) {
    transpose16(squares, j, columns);
    for (int c = 0; c < 16; ++c) sum = _mm512_add_ps(sum, columns[c]);
  }
  _mm512_storeu_ps(sums, sum);
  for (; j < len; ++j) {
    for (int64_t r = 0; r < 16; ++r) sums[r] = sums[r] + squares[r][j];
  }
}
#endif

// The sums of the squared prepared gradients of rows[0..count) (count <= kRowBlock), each
// left to right; kKahan: compensated (a dense gradient, as nd.mean) or plain (row_sparse, as
// GroupAdaGrad's kernel). Per tile of columns, the squares are computed first (a vectorisable
// loop per row), then added in column order, the kRowBlock rows' chains side by side.
template <typename W, typename A, bool kMaster, Decay kDecay, bool kKahan>
inline void row_sums(const RowView<W, A, kMaster>* rows, int64_t count, int64_t n,
                     const Scalars<A>& scalars, A* sums) {
  const Scalars<A> c = scalars;  // a local copy: its fields stay in registers
  A residual[kRowBlock] = {};
  A squares[kRowBlock][kSumTile];
  for (int64_t r = 0; r < count; ++r) sums[r] = 0;
  for (int64_t j0 = 0; j0 < n; j0 += kSumTile) {
    const int64_t len = std::min(kSumTile, n - j0);
    for (int64_t r = 0; r < count; ++r) {
      const W* __restrict g = rows[r].g + j0;
      const W* __restrict w = rows[r].w + j0;
      const A* __restrict m = kMaster ? rows[r].m + j0 : nullptr;
      A* __restrict out = squares[r];
      for (int64_t j = 0; j < len; ++j) {
        const A x = prepared<kDecay>(load<A>(g[j]), weight_at<W, A, kMaster>(w, m, j), c);
        out[j] = x * x;
      }
    }
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<A, float> && !kKahan) {
      if (count == 16) {
        add_columns16(squares, len, sums);
        continue;
      }
    }
#endif
    for (int64_t j = 0; j < len; ++j) {
      for (int64_t r = 0; r < count; ++r) {
        const A square = squares[r][j];
        if constexpr (kKahan) {
          const A y = square - residual[r];
          const A t = sums[r] + y;
          residual[r] = (t - sums[r]) - y;
          sums[r] = t;
        } else {
          sums[r] = sums[r] + square;
        }
      }
    }
  }
}

// Update one row, given its denominator (from its accumulator, already updated).
template <typename W, typename A, bool kMaster, Decay kDecay, Placement kPlace>
inline void row_step(const RowView<W, A, kMaster>& row, int64_t n, const Scalars<A>& scalars,
                     A denom) {
  const Scalars<A> c = scalars;  // a local copy: its fields stay in registers
  W* __restrict w = row.w;
  const W* __restrict g = row.g;
  A* __restrict m = row.m;
  for (int64_t j = 0; j < n; ++j) {
    A wv = weight_at<W, A, kMaster>(w, m, j);
    const A u = (prepared<kDecay>(load<A>(g[j]), wv, c) * c.lr) / denom;
    if constexpr (kDecay == Decay::kStep) {
      wv = wv - (u + wv * c.wd * c.lr);
    } else if constexpr (kDecay == Decay::kDecoupled) {
      wv = wv - wv * c.wd * c.lr;
      wv = wv - u;
    } else {
      wv = wv - u;
    }
    if constexpr (kMaster) m[j] = wv;
    store(wv, &w[j]);
  }
}

// Prefetch the weight (and master) row and the accumulator of update k.
template <typename W, typename A, bool kMaster>
inline void prefetch_task_row(const RowTask& task, int64_t k) {
  const RowView<W, A, kMaster> row = row_view<W, A, kMaster>(task, k);
  prefetch_row(reinterpret_cast<const char*>(row.w), task.row_size * sizeof(W));
  if constexpr (kMaster) {
    prefetch_row(reinterpret_cast<const char*>(row.m), task.row_size * sizeof(A));
  }
  __builtin_prefetch(row.s, 1, 3);
}

template <typename W, typename A, bool kMaster, Decay kDecay, Placement kPlace, bool kKahan>
void rowwise_rows(const RowTask& task, const Options& options, int64_t count) {
  const Job scalars_of{nullptr, nullptr, nullptr, nullptr, 0, task.lr, task.wd};
  const Scalars<A> c(options, scalars_of);
  const int64_t n = task.row_size;
  const int64_t blocks = (count + kRowBlock - 1) / kRowBlock;
  const int threads = count * n < kParallelMinElements
                          ? 1 : static_cast<int>(std::min<int64_t>(num_threads(), blocks));
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4) if (threads > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t first = b * kRowBlock;
    const int64_t size = std::min(kRowBlock, count - first);
    RowView<W, A, kMaster> rows[kRowBlock];
    A sums[kRowBlock];
    for (int64_t r = 0; r < size; ++r) rows[r] = row_view<W, A, kMaster>(task, first + r);
    if (size == kRowBlock) {
      row_sums<W, A, kMaster, kDecay, kKahan>(rows, kRowBlock, n, c, sums);
    } else {
      row_sums<W, A, kMaster, kDecay, kKahan>(rows, size, n, c, sums);
    }
    A denoms[kRowBlock];  // the block's accumulators first: their latency overlaps
    for (int64_t r = 0; r < size; ++r) {
      const A acc = *rows[r].s + sums[r] / static_cast<A>(n);
      *rows[r].s = acc;
      A denom = kPlace == Placement::kInside ? std::sqrt(acc + c.eps) : std::sqrt(acc) + c.eps;
      if (c.guard_zero) denom = denom + (denom == A(0) ? A(1) : A(0));
      denoms[r] = denom;
    }
    for (int64_t r = 0; r < size; ++r) {
      if (first + r + kRowwisePrefetch < count) {
        prefetch_task_row<W, A, kMaster>(task, first + r + kRowwisePrefetch);
      }
      row_step<W, A, kMaster, kDecay, kPlace>(rows[r], n, c, denoms[r]);
    }
  }
}

using RowsFn = void (*)(const RowTask&, const Options&, int64_t);

template <typename W, typename A, bool kMaster, Decay kDecay, bool kKahan>
RowsFn rowwise_pick_placement(Placement placement) {
  return placement == Placement::kInside
             ? rowwise_rows<W, A, kMaster, kDecay, Placement::kInside, kKahan>
             : rowwise_rows<W, A, kMaster, kDecay, Placement::kOutside, kKahan>;
}

template <typename W, typename A, bool kMaster, bool kKahan>
RowsFn rowwise_pick_decay(Decay decay, Placement placement) {
  switch (decay) {
    case Decay::kStep:
      return rowwise_pick_placement<W, A, kMaster, Decay::kStep, kKahan>(placement);
    case Decay::kL2: return rowwise_pick_placement<W, A, kMaster, Decay::kL2, kKahan>(placement);
    case Decay::kDecoupled:
      return rowwise_pick_placement<W, A, kMaster, Decay::kDecoupled, kKahan>(placement);
    default: return rowwise_pick_placement<W, A, kMaster, Decay::kNone, kKahan>(placement);
  }
}

template <bool kKahan>
RowsFn rowwise_pick(int weight_type, bool master, double wd, const Options& o) {
  const Decay decay = wd == 0.0 ? Decay::kNone : o.decay_mode;
  switch (weight_type) {
    case mxnet::ext::kFloat32:
      return rowwise_pick_decay<float, float, false, kKahan>(decay, o.placement);
    case mxnet::ext::kFloat64:
      return rowwise_pick_decay<double, double, false, kKahan>(decay, o.placement);
    case mxnet::ext::kFloat16:
      return master ? rowwise_pick_decay<uint16_t, float, true, kKahan>(decay, o.placement)
                    : rowwise_pick_decay<uint16_t, float, false, kKahan>(decay, o.placement);
    default: return nullptr;
  }
}

// weight (rows, ...) of two or more dimensions, grad and master of its shape, acc (rows,).
MXReturnValue rowwise_infer_shape(const Attrs& attrs,
                                  std::vector<std::vector<unsigned int>>* in,
                                  std::vector<std::vector<unsigned int>>*) {
  Layout layout;
  if (!parse_layout(attrs, false, &layout)) return MX_FAIL;
  const std::vector<unsigned int>& weight = (*in)[0];
  if (weight.size() < 2) {
    MX_ERROR_MSG << "row-wise Adagrad needs a weight of two or more dimensions";
    return MX_FAIL;
  }
  bool ok = (*in)[1] == weight && (*in)[2] == std::vector<unsigned int>{weight[0]};
  if (layout.master) ok = ok && (*in)[3] == weight;
  if (!ok) {
    MX_ERROR_MSG << "row-wise Adagrad: grad (and master) must have the weight's shape and acc "
                 << "the shape (rows,)";
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

template <bool kSparseGrad>
MXReturnValue rowwise_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                              std::vector<MXTensor>*, const OpResource&) {
  Layout layout;
  Options options;
  double lr, wd;
  if (!parse_single(attrs, &layout, &options, &lr, &wd)) return MX_FAIL;
  MXTensor& weight = (*inputs)[0];
  // kKahan (a dense gradient) iff !kSparseGrad
  const RowsFn update = rowwise_pick<!kSparseGrad>(weight.dtype, layout.master, wd, options);
  if (update == nullptr) {
    MX_ERROR_MSG << "unsupported weight type " << weight.dtype;
    return MX_FAIL;
  }
  const int64_t num_rows = weight.shape[0];
  const int64_t row_size = num_rows == 0 ? 0 : weight.size() / num_rows;
  RowTask task{weight.data_ptr, (*inputs)[1].data_ptr, (*inputs)[2].data_ptr,
               layout.master ? (*inputs)[3].data_ptr : nullptr, nullptr, row_size, lr, wd};
  int64_t count = num_rows;
  if constexpr (kSparseGrad) {
    const MXSparse* grad = (*inputs)[1].data<MXSparse>();
    if (!check_rows(*grad, num_rows)) return MX_FAIL;
    count = grad->indices_len;
    task.grad = grad->data;
    task.rows = grad->indices;
  }
  if (row_size > 0) update(task, options, count);
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(adagrad_gluon_update)
    .setParseAttrs(single_parse)
    .setInferShape(infer_shape<false>)
    .setInferType(infer_type<false>)
    .setInferSType(infer_storage<false>)
    .setMutateInputs(mutate_inputs<false>)
    .setForward(dense_forward<false>, "cpu");

REGISTER_OP(adagrad_gluon_multi_update)
    .setParseAttrs(multi_parse)
    .setInferShape(infer_shape<true>)
    .setInferType(infer_type<true>)
    .setInferSType(infer_storage<false>)
    .setMutateInputs(mutate_inputs<true>)
    .setForward(dense_forward<true>, "cpu");

REGISTER_OP(adagrad_gluon_row_sparse_update)
    .setParseAttrs(row_sparse_parse)
    .setInferShape(infer_shape<false>)
    .setInferType(infer_type<false>)
    .setInferSType(infer_storage<true>)
    .setMutateInputs(mutate_inputs<false>)
    .setForward(row_sparse_forward, "cpu");

REGISTER_OP(adagrad_gluon_rowwise_update)
    .setParseAttrs(single_parse)
    .setInferShape(rowwise_infer_shape)
    .setInferType(infer_type<false>)
    .setInferSType(infer_storage<false>)
    .setMutateInputs(mutate_inputs<false>)
    .setForward(rowwise_forward<false>, "cpu");

REGISTER_OP(adagrad_gluon_rowwise_row_sparse_update)
    .setParseAttrs(row_sparse_parse)
    .setInferShape(rowwise_infer_shape)
    .setInferType(infer_type<false>)
    .setInferSType(infer_storage<true>)
    .setMutateInputs(mutate_inputs<false>)
    .setForward(rowwise_forward<true>, "cpu");

MXReturnValue initialize(int version) {
  if (version < 10700) {
    MX_ERROR_MSG << "adagrad_gluon's operators need MXNet >= 1.7, got version " << version;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

// Set (n >= 1) and return the number of threads an update may use; n <= 0 only returns it.
extern "C" int adagrad_gluon_num_threads(int n) {
  if (n >= 1) g_num_threads = n;
  return num_threads();
}

// -- 8-bit blockwise accumulator (state_bits=8; reference: adagrad_gluon/optim/quantized.py) --
//
//   adagrad_gluon_q8_update(weight_0, grad_0, codes_0, scales_0[, master_0], weight_1, ...)
//       attributes num_tensors, lrs, wds and the shared options (as the multi update).
// codes: uint8, the weight's shape; scales: float32, one per block of 256 elements. The map
// (quantized.REGIMES): tapered 8-bit floats in regimes, from the top, of 6, 4 and 3 mantissa
// bits, down to 2^-2, 2^-6 and code 1; code 255 is 1.0 and code 0 is 0. A code c of regime k
// stands for the float32 whose bits are (c + base_k) << shift_k. Per block, in one pass over
// memory through a buffer in the L1 cache (fused_blocks: in registers, the block's values
// stored once):
//   s = value(code) * scale; the float32 step above on s;
//   scale = the s with the largest bit pattern (the largest value, as s >= 0; a NaN if any);
//   r = (s * f) * (1 / (scale * f)), f = 2^64 if scale < 2^-64 (so 1 / (scale * f) is finite)
//   else 1; code = clamp(((bits(r) + half_k) >> shift_k) - base_k, 1, 255) for r > 0 in
//   regime k (the nearest code, never 0 for a positive value), else 0 (0, and NaN: 0/0, NaN,
//   infinity).
// Every step is integer arithmetic or one float32 operation: no table, no gather.

// -DADAGRAD_GLUON_Q8_PORTABLE builds the portable loops only (tests/test_state8.py builds it
// so, and compares it with the reference as it does the default build).
#if defined(__AVX512F__) && defined(__AVX512BW__) && !defined(ADAGRAD_GLUON_Q8_PORTABLE)
#define ADAGRAD_GLUON_Q8_AVX512 1
#include <immintrin.h>
#ifdef __AVX512VBMI__
#define ADAGRAD_GLUON_Q8_VBMI 1
#endif
#endif

namespace {

constexpr int64_t kQuantBlock = 256;

// One regime of the map: its code of a ratio r with bits(r) >= low is
// ((bits(r) + half) >> shift) - base; first is its smallest code.
struct Regime {
  uint32_t shift, half, low;
  int32_t base, first;
};

constexpr int kNumRegimes = 3;

constexpr std::array<Regime, kNumRegimes> make_regimes() {
  constexpr int kMantissaBits[kNumRegimes] = {6, 4, 3};
  constexpr int kLowestExponent[kNumRegimes - 1] = {-2, -6};
  std::array<Regime, kNumRegimes> regimes{};
  int32_t code = 255, top = 127;  // the code of the regime's top value and its biased exponent
  for (int k = 0; k < kNumRegimes; ++k) {
    const uint32_t shift = 23 - kMantissaBits[k];
    const int32_t base = (top << kMantissaBits[k]) - code;
    const bool last = k == kNumRegimes - 1;
    const uint32_t low = last ? 0 : static_cast<uint32_t>(kLowestExponent[k] + 127) << 23;
    const int32_t first = last ? 1 : static_cast<int32_t>(low >> shift) - base;
    regimes[k] = {shift, 1u << (shift - 1), low, base, first};
    if (!last) {
      code = first;
      top = kLowestExponent[k] + 127;
    }
  }
  return regimes;
}

constexpr std::array<Regime, kNumRegimes> kRegimes = make_regimes();

constexpr bool high_halves_suffice() {
  for (const Regime& r : kRegimes) {
    if (r.shift < 17) return false;
  }
  return true;
}
static_assert(high_halves_suffice(), "the vectorized loops use the values' high 16 bits only");

// The bits of code c's value (0.0 for code 0). Their low 16 bits are 0 (shift >= 17).
constexpr uint32_t code_bits(int32_t c) {
  uint32_t bits = 0;
  for (int k = kNumRegimes - 1; k >= 0; --k) {
    const Regime& r = kRegimes[k];
    bits = c >= r.first ? static_cast<uint32_t>(c + r.base) << r.shift : bits;
  }
  return bits;
}

#ifdef ADAGRAD_GLUON_Q8_VBMI
// For the vectorized dequantize: bytes 2 and 3 of every code's value, and the order in which
// to gather 64 codes so that unpacking those bytes into floats leaves them in order.
struct CodeBytes {
  alignas(64) uint8_t bytes[2][256];
  alignas(64) uint8_t order[64];
  CodeBytes() {
    for (int c = 0; c < 256; ++c) {
      bytes[0][c] = static_cast<uint8_t>(code_bits(c) >> 16);
      bytes[1][c] = static_cast<uint8_t>(code_bits(c) >> 24);
    }
    // _mm512_unpack*_epi16 below leave 128-bit lane L's bytes 4m..4m+3 in vector m
    for (int lane = 0; lane < 4; ++lane) {
      for (int m = 0; m < 4; ++m) {
        for (int j = 0; j < 4; ++j) order[16 * lane + 4 * m + j] = 16 * m + 4 * lane + j;
      }
    }
  }
};

const CodeBytes& code_bytes() {
  static const CodeBytes bytes;
  return bytes;
}

// Byte 2 (plane 0) or 3 (plane 1) of the values of 64 codes x: a lookup in 256 bytes.
inline __m512i code_byte(const __m512i (&plane)[4], __m512i x, __mmask64 high) {
  return _mm512_mask_blend_epi8(high, _mm512_permutex2var_epi8(plane[0], x, plane[1]),
                                _mm512_permutex2var_epi8(plane[2], x, plane[3]));
}

// The code table in registers: its two planes and the gather order (see CodeBytes).
struct CodeLookup {
  __m512i planes[2][4];
  __m512i order;
  CodeLookup() {
    const CodeBytes& table = code_bytes();
    for (int p = 0; p < 2; ++p) {
      for (int q = 0; q < 4; ++q) planes[p][q] = _mm512_load_si512(table.bytes[p] + 64 * q);
    }
    order = _mm512_load_si512(table.order);
  }
};

// out[m] = value(codes[16 m + j]) * scale, j = 0..15, for 64 codes: ~6 instructions a vector.
inline void dequantize64(const CodeLookup& lookup, const uint8_t* codes, __m512 scale,
                         __m512 (&out)[4]) {
  const __m512i x = _mm512_permutexvar_epi8(lookup.order, _mm512_loadu_si512(codes));
  const __mmask64 high = _mm512_movepi8_mask(x);  // codes >= 128
  const __m512i low_bytes = code_byte(lookup.planes[0], x, high);
  const __m512i high_bytes = code_byte(lookup.planes[1], x, high);
  const __m512i zero = _mm512_setzero_si512();
  for (int h = 0; h < 2; ++h) {
    const __m512i words = h == 0 ? _mm512_unpacklo_epi8(low_bytes, high_bytes)
                                 : _mm512_unpackhi_epi8(low_bytes, high_bytes);
    out[2 * h] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, words)), scale);
    out[2 * h + 1] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, words)),
                                   scale);
  }
}
#endif

// s[i] = value(codes[i]) * scale for the n elements of a block. GCC vectorizes the portable
// loop by selects (a dozen instructions a vector); with AVX-512 VBMI 64 codes are looked up
// in registers holding the table's two nonzero bytes (~6 instructions a vector), same bits.
inline void dequantize(const uint8_t* __restrict codes, float scale, float* __restrict s,
                       int64_t n) {
  int64_t i = 0;
#ifdef ADAGRAD_GLUON_Q8_VBMI
  const CodeLookup lookup;
  const __m512 factor = _mm512_set1_ps(scale);
  for (; i + 64 <= n; i += 64) {
    __m512 values[4];
    dequantize64(lookup, codes + i, factor, values);
    for (int m = 0; m < 4; ++m) _mm512_storeu_ps(s + i + 16 * m, values[m]);
  }
#endif
  for (; i < n; ++i) s[i] = float_of(code_bits(codes[i])) * scale;
}

// The largest bit pattern of n values: the largest value if all are >= 0, or a NaN.
inline float block_top(const float* __restrict s, int64_t n) {
  uint32_t top = 0;
  for (int64_t i = 0; i < n; ++i) top = std::max(top, bits_of(s[i]));
  return float_of(top);
}

// The code of a ratio r (see above).
inline uint8_t quant_code(float r) {
  const uint32_t bits = bits_of(r);
  int32_t c = 0;
  for (int k = kNumRegimes - 1; k >= 0; --k) {
    const Regime& g = kRegimes[k];
    c = bits >= g.low ? static_cast<int32_t>((bits + g.half) >> g.shift) - g.base : c;
  }
  return r > 0.0f ? static_cast<uint8_t>(std::min(std::max(c, 1), 255)) : 0;
}

// The ratio of a value s of a block whose scale is top: (s * factor) * inverse (see above).
struct Ratio {
  float factor, inverse;
  explicit Ratio(float top)
      : factor(top < 0x1p-64f ? 0x1p64f : 1.0f), inverse(1.0f / (top * factor)) {}
  float of(float s) const { return (s * factor) * inverse; }
};

#ifdef ADAGRAD_GLUON_Q8_AVX512
// The ratios of 16 values. The multiply by factor is left out where factor is 1 (all but the
// blocks whose top is below 2^-64): x * 1 is x, and a NaN, whose bits it could quiet, gets
// code 0 either way.
struct RatioLanes {
  __m512 factor, inverse;
  bool scaled;
  explicit RatioLanes(const Ratio& r)
      : factor(_mm512_set1_ps(r.factor)), inverse(_mm512_set1_ps(r.inverse)),
        scaled(r.factor != 1.0f) {}
  __m512 of(__m512 s) const {
    return _mm512_mul_ps(scaled ? _mm512_mul_ps(s, factor) : s, inverse);
  }
};

// The indices of the high 16 bits of 2 x 16 floats, in order.
struct HighHalves {
  alignas(64) int16_t index[32];
  constexpr HighHalves() : index{} {
    for (int k = 0; k < 32; ++k) index[k] = static_cast<int16_t>(2 * k + 1);
  }
};
constexpr HighHalves kHighHalves;

// The codes of 32 ratios r0, r1 (as quant_code), from their high 16 bits (every regime's
// shift is >= 17, so ((bits + half) >> shift) is ((bits >> 16) + (half >> 16)) >> (shift -
// 16)), in 16-bit lanes: the same bits.
inline __m256i quant_codes32(__m512 r0, __m512 r1) {
  const __m512i t = _mm512_permutex2var_epi16(_mm512_castps_si512(r0),
                                              _mm512_load_si512(kHighHalves.index),
                                              _mm512_castps_si512(r1));
  __m512i c = _mm512_setzero_si512();
  for (int k = kNumRegimes - 1; k >= 0; --k) {
    const Regime& g = kRegimes[k];
    const __m512i shifted = _mm512_srli_epi16(
        _mm512_add_epi16(t, _mm512_set1_epi16(static_cast<int16_t>(g.half >> 16))),
        g.shift - 16);
    const __mmask32 in = _mm512_cmpge_epu16_mask(
        t, _mm512_set1_epi16(static_cast<int16_t>(g.low >> 16)));
    c = _mm512_mask_sub_epi16(c, in, shifted, _mm512_set1_epi16(static_cast<int16_t>(g.base)));
  }
  c = _mm512_max_epi16(c, _mm512_set1_epi16(1));
  const __mmask32 positive = _mm512_kunpackw(
      _mm512_cmp_ps_mask(r1, _mm512_setzero_ps(), _CMP_GT_OQ),
      _mm512_cmp_ps_mask(r0, _mm512_setzero_ps(), _CMP_GT_OQ));
  // unsigned saturation: c > 255 (a ratio rounded above 1, or infinite) becomes 255
  return _mm512_maskz_cvtusepi16_epi8(positive, c);
}
#endif

// The codes of n values s of a block whose scale is top. GCC vectorizes the portable loop
// clumsily (its masks spill); with AVX-512, 32 codes at a time by quant_codes32.
inline void quantize(const float* __restrict s, uint8_t* __restrict codes, int64_t n,
                     float top) {
  const Ratio ratio(top);
  int64_t i = 0;
#ifdef ADAGRAD_GLUON_Q8_AVX512
  const RatioLanes lanes(ratio);
  for (; i + 32 <= n; i += 32) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i),
                        quant_codes32(lanes.of(_mm512_loadu_ps(s + i)),
                                      lanes.of(_mm512_loadu_ps(s + i + 16))));
  }
#endif
  for (; i < n; ++i) codes[i] = quant_code(ratio.of(s[i]));
}

struct QuantJob {
  void* weight;
  const void* grad;
  uint8_t* codes;
  float* scales;
  float* master;  // nullptr without a master weight
  int64_t size;
  double lr;
  double wd;
};

// Update block b of a job through a buffer s in the L1 cache: dequantize into it, the
// elementwise update on it, take its top, requantize.
template <typename W, bool kMaster, Decay kDecay, Placement kPlace>
void buffered_block(const QuantJob& job, const Options& options, int64_t b, float* s) {
  const int64_t begin = b * kQuantBlock;
  const int64_t n = std::min(kQuantBlock, job.size - begin);
  uint8_t* codes = job.codes + begin;
  dequantize(codes, job.scales[b], s, n);
  const Job part{static_cast<W*>(job.weight) + begin, static_cast<const W*>(job.grad) + begin,
                 s, kMaster ? job.master + begin : nullptr, n, job.lr, job.wd};
  update_range<W, float, kMaster, kDecay, kPlace>(part, options, 0, n);
  const float top = block_top(s, n);
  job.scales[b] = top;
  quantize(s, codes, n, top);
}

#ifdef ADAGRAD_GLUON_Q8_VBMI
// Scalars<float> in 16 lanes, for step16.
struct StepLanes {
  __m512 rescale, lo, hi, eps, lr, neg_lr, wd, one;
  __m512i sign;
  bool clip, maximize, guard_zero;
  explicit StepLanes(const Scalars<float>& c)
      : rescale(_mm512_set1_ps(c.rescale)), lo(_mm512_set1_ps(c.lo)), hi(_mm512_set1_ps(c.hi)),
        eps(_mm512_set1_ps(c.eps)), lr(_mm512_set1_ps(c.lr)), neg_lr(_mm512_set1_ps(c.neg_lr)),
        wd(_mm512_set1_ps(c.wd)), one(_mm512_set1_ps(1.0f)),
        sign(_mm512_set1_epi32(static_cast<int32_t>(0x80000000u))), clip(c.clip),
        maximize(c.maximize), guard_zero(c.guard_zero) {}
  // no clip, no maximize, eps > 0: the common options, whose loop runs none of their tests
  bool plain() const { return !clip && !maximize && !guard_zero; }
};

// step<kDecay, kPlace> on 16 elements: the weights w[0..15] in place, their accumulator values
// s in and out. Operation for operation as step, in its order (so the same bits); without
// clip_gradient its bounds are infinite and the clip leaves every g (NaN too) as it is.
template <Decay kDecay, Placement kPlace, bool kPlain>
inline __m512 step16(float* w, const float* grad, __m512 s, const StepLanes& c) {
  __m512 g = _mm512_mul_ps(_mm512_loadu_ps(grad), c.rescale);
  if (!kPlain && c.clip) {
    // g > hi ? hi : (g < lo ? lo : g); max_ps(lo, g) is g < lo ? lo : g (a NaN g stays g)
    g = _mm512_mask_mov_ps(_mm512_max_ps(c.lo, g), _mm512_cmp_ps_mask(g, c.hi, _CMP_GT_OQ),
                           c.hi);
  }
  if (!kPlain && c.maximize) {
    // -g, a NaN left as it is: step's -g is folded into the operations that follow it
    // (-g * -g is g * g), so its NaNs keep their sign
    const __mmask16 ordered = _mm512_cmp_ps_mask(g, g, _CMP_ORD_Q);
    g = _mm512_castsi512_ps(
        _mm512_mask_xor_epi32(_mm512_castps_si512(g), ordered, _mm512_castps_si512(g), c.sign));
  }
  const __m512 old = _mm512_loadu_ps(w);
  if constexpr (kDecay == Decay::kL2) g = _mm512_add_ps(g, _mm512_mul_ps(old, c.wd));
  const __m512 acc = _mm512_add_ps(s, _mm512_mul_ps(g, g));
  __m512 denom = kPlace == Placement::kInside ? _mm512_sqrt_ps(_mm512_add_ps(acc, c.eps))
                                              : _mm512_add_ps(_mm512_sqrt_ps(acc), c.eps);
  if (!kPlain && c.guard_zero) {
    const __mmask16 zero = _mm512_cmp_ps_mask(denom, _mm512_setzero_ps(), _CMP_EQ_OQ);
    denom = _mm512_add_ps(denom, _mm512_maskz_mov_ps(zero, c.one));
  }
  const __m512 d = _mm512_div_ps(g, denom);
  __m512 updated;
  if constexpr (kDecay == Decay::kStep) {
    updated = _mm512_add_ps(old, _mm512_mul_ps(_mm512_add_ps(d, _mm512_mul_ps(old, c.wd)),
                                               c.neg_lr));
  } else if constexpr (kDecay == Decay::kDecoupled) {
    updated = _mm512_sub_ps(old, _mm512_mul_ps(_mm512_mul_ps(old, c.wd), c.lr));
    updated = _mm512_sub_ps(updated, _mm512_mul_ps(d, c.lr));
  } else {
    updated = _mm512_add_ps(old, _mm512_mul_ps(d, c.neg_lr));
  }
  _mm512_storeu_ps(w, updated);
  return acc;
}

// A block whose new accumulator values wait in a buffer to be requantized.
struct Requantize {
  const float* s;
  uint8_t* codes;
  RatioLanes ratio;
  // codes of the values of vectors k and k + 1 (of 16)
  void pair(int k) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + 16 * k),
                        quant_codes32(ratio.of(_mm512_load_ps(s + 16 * k)),
                                      ratio.of(_mm512_load_ps(s + 16 * k + 16))));
  }
};

// The steps of one whole block of a float32 weight without a master: 64 codes at a time
// dequantized and stepped, the new accumulator values stored in s and their largest bit
// pattern taken as they come; returns the block's requantization (its new scale is written).
// The requantization of the block before, if any, runs interleaved with these steps, so that
// its integer work overlaps their divisions and square roots.
template <Decay kDecay, Placement kPlace, bool kPlain>
inline Requantize step_block(const QuantJob& job, int64_t b, const StepLanes& c,
                             const CodeLookup& lookup, float* s, const Requantize* before) {
  constexpr int kVectors = kQuantBlock / 16;
  float* w = static_cast<float*>(job.weight) + b * kQuantBlock;
  const float* g = static_cast<const float*>(job.grad) + b * kQuantBlock;
  uint8_t* codes = job.codes + b * kQuantBlock;
  const __m512 scale = _mm512_set1_ps(job.scales[b]);
  __m512i top = _mm512_setzero_si512();
  for (int q = 0; q < kVectors; q += 4) {
    __m512 values[4];
    dequantize64(lookup, codes + 16 * q, scale, values);
    for (int m = 0; m < 4; ++m) {
      const __m512 acc = step16<kDecay, kPlace, kPlain>(w + 16 * (q + m), g + 16 * (q + m),
                                                        values[m], c);
      _mm512_store_ps(s + 16 * (q + m), acc);
      top = _mm512_max_epu32(top, _mm512_castps_si512(acc));  // as block_top
      if (before != nullptr && m % 2 == 1) before->pair(q + m - 1);
    }
  }
  const float top_value = float_of(_mm512_reduce_max_epu32(top));
  job.scales[b] = top_value;
  return {s, codes, RatioLanes(Ratio(top_value))};
}

// Whole blocks [first, last) of a float32 weight without a master, by step_block: the
// buffered pass's bits, with one store and one load of each value instead of four passes
// over the buffer, and the requantization's integer work beside the divider's.
// (flatten: every call in it inlined, which GCC's size limits would not all do by themselves)
template <Decay kDecay, Placement kPlace, bool kPlain>
[[gnu::flatten]] void step_blocks(const QuantJob& job, const StepLanes& lanes, int64_t first,
                                  int64_t last) {
  const CodeLookup lookup;
  alignas(64) float s[2][kQuantBlock];
  Requantize before = step_block<kDecay, kPlace, kPlain>(job, first, lanes, lookup, s[0],
                                                         nullptr);
  for (int64_t b = first + 1; b < last; ++b) {
    before = step_block<kDecay, kPlace, kPlain>(job, b, lanes, lookup, s[(b - first) % 2],
                                                &before);
  }
  for (int k = 0; k < kQuantBlock / 16; k += 2) before.pair(k);
}

// step_blocks with the options' scalars, the loop for plain options if they are.
template <Decay kDecay, Placement kPlace>
void fused_blocks(const QuantJob& job, const Options& options, int64_t first, int64_t last) {
  const StepLanes lanes{Scalars<float>(options, {nullptr, nullptr, nullptr, nullptr, 0, job.lr,
                                                 job.wd})};
  if (lanes.plain()) {
    step_blocks<kDecay, kPlace, true>(job, lanes, first, last);
  } else {
    step_blocks<kDecay, kPlace, false>(job, lanes, first, last);
  }
}
#endif

// Update blocks [first, last) of a job, one pass over memory: fused_blocks where it applies,
// else buffered_block (other weight types, a partial last block, CPUs without AVX-512 VBMI).
template <typename W, bool kMaster, Decay kDecay, Placement kPlace>
void quant_blocks(const QuantJob& job, const Options& options, int64_t first, int64_t last) {
  int64_t b = first;
#ifdef ADAGRAD_GLUON_Q8_VBMI
  if constexpr (std::is_same<W, float>::value && !kMaster) {
    const int64_t whole = std::min(last, job.size / kQuantBlock);
    if (b < whole) fused_blocks<kDecay, kPlace>(job, options, b, whole);
    b = std::max(b, whole);
  }
#endif
  alignas(64) float s[kQuantBlock];
  for (; b < last; ++b) buffered_block<W, kMaster, kDecay, kPlace>(job, options, b, s);
}

using QuantFn = void (*)(const QuantJob&, const Options&, int64_t, int64_t);

template <typename W, bool kMaster, Decay kDecay>
QuantFn quant_placement(Placement placement) {
  return placement == Placement::kInside ? quant_blocks<W, kMaster, kDecay, Placement::kInside>
                                         : quant_blocks<W, kMaster, kDecay, Placement::kOutside>;
}

template <typename W, bool kMaster>
QuantFn quant_decay(Decay decay, Placement placement) {
  switch (decay) {
    case Decay::kStep: return quant_placement<W, kMaster, Decay::kStep>(placement);
    case Decay::kL2: return quant_placement<W, kMaster, Decay::kL2>(placement);
    case Decay::kDecoupled: return quant_placement<W, kMaster, Decay::kDecoupled>(placement);
    default: return quant_placement<W, kMaster, Decay::kNone>(placement);
  }
}

QuantFn pick_quant(int weight_type, bool master, double wd, const Options& o) {
  const Decay decay = wd == 0.0 ? Decay::kNone : o.decay_mode;
  if (weight_type == mxnet::ext::kFloat32 && !master) return quant_decay<float, false>(decay,
                                                                                  o.placement);
  if (weight_type != mxnet::ext::kFloat16) return nullptr;
  return master ? quant_decay<uint16_t, true>(decay, o.placement)
                : quant_decay<uint16_t, false>(decay, o.placement);
}

// Inputs per tensor: weight, grad, codes, scales[, master].
int quant_per_tensor(const Layout& layout) { return layout.master ? 5 : 4; }

MXReturnValue quant_parse(const Attrs& attrs, int* num_in, int* num_out) {
  Layout layout;
  if (!parse_layout(attrs, true, &layout)) return MX_FAIL;
  *num_in = layout.num_tensors * quant_per_tensor(layout);
  *num_out = 0;
  return MX_SUCCESS;
}

MXReturnValue quant_infer_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in,
                                std::vector<std::vector<unsigned int>>*) {
  Layout layout;
  if (!parse_layout(attrs, true, &layout)) return MX_FAIL;
  for (int t = 0; t < layout.num_tensors; ++t) {
    const std::vector<unsigned int>* shapes = &(*in)[t * quant_per_tensor(layout)];
    int64_t size = 1;
    for (unsigned int d : shapes[0]) size *= d;
    const std::vector<unsigned int> blocks{
        static_cast<unsigned int>((size + kQuantBlock - 1) / kQuantBlock)};
    if (shapes[1] != shapes[0] || shapes[2] != shapes[0] || shapes[3] != blocks
        || (layout.master && shapes[4] != shapes[0])) {
      MX_ERROR_MSG << "tensor " << t << ": grad, codes (and master) must have the weight's "
                   << "shape and scales one element per block of 256";
      return MX_FAIL;
    }
  }
  return MX_SUCCESS;
}

MXReturnValue quant_infer_type(const Attrs& attrs, std::vector<int>* in, std::vector<int>*) {
  Layout layout;
  if (!parse_layout(attrs, true, &layout)) return MX_FAIL;
  for (int t = 0; t < layout.num_tensors; ++t) {
    const int* types = &(*in)[t * quant_per_tensor(layout)];
    const bool weight_ok = layout.master ? types[0] == mxnet::ext::kFloat16
                                         : (types[0] == mxnet::ext::kFloat32
                                            || types[0] == mxnet::ext::kFloat16);
    if (!weight_ok || types[1] != types[0] || types[2] != mxnet::ext::kUint8
        || types[3] != mxnet::ext::kFloat32
        || (layout.master && types[4] != mxnet::ext::kFloat32)) {
      MX_ERROR_MSG << "tensor " << t << ": expected a float32 or float16 weight and grad, "
                   << "uint8 codes, float32 scales (and a float32 master for float16)";
      return MX_FAIL;
    }
  }
  return MX_SUCCESS;
}

MXReturnValue quant_mutate_inputs(const Attrs& attrs, std::vector<int>* indices) {
  Layout layout;
  if (!parse_layout(attrs, true, &layout)) return MX_FAIL;
  for (int t = 0; t < layout.num_tensors; ++t) {
    const int first = t * quant_per_tensor(layout);
    for (int k : {0, 2, 3}) indices->push_back(first + k);
    if (layout.master) indices->push_back(first + 4);
  }
  return MX_SUCCESS;
}

MXReturnValue quant_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                            std::vector<MXTensor>*, const OpResource&) {
  Layout layout;
  Options options;
  std::vector<double> lrs, wds;
  if (!parse_layout(attrs, true, &layout) || !parse_options(attrs, &options)
      || !get_numbers(attrs, "lrs", layout.num_tensors, &lrs)
      || !get_numbers(attrs, "wds", layout.num_tensors, &wds)) {
    return MX_FAIL;
  }
  std::vector<QuantJob> jobs;
  std::vector<QuantFn> kernels;
  struct Blocks { int job; int64_t first, last; };
  std::vector<Blocks> pieces;
  constexpr int64_t kGrainBlocks = kGrainElements / kQuantBlock;
  int64_t total = 0;
  for (int t = 0; t < layout.num_tensors; ++t) {
    MXTensor* in = &(*inputs)[t * quant_per_tensor(layout)];
    const QuantFn kernel = pick_quant(in[0].dtype, layout.master, wds[t], options);
    if (kernel == nullptr) {
      MX_ERROR_MSG << "tensor " << t << ": unsupported weight type " << in[0].dtype;
      return MX_FAIL;
    }
    const int64_t size = in[0].size();
    jobs.push_back({in[0].data_ptr, in[1].data_ptr, in[2].data<uint8_t>(), in[3].data<float>(),
                    layout.master ? in[4].data<float>() : nullptr, size, lrs[t], wds[t]});
    kernels.push_back(kernel);
    total += size;
    const int64_t blocks = (size + kQuantBlock - 1) / kQuantBlock;
    for (int64_t first = 0; first < blocks; first += kGrainBlocks) {
      pieces.push_back({t, first, std::min(blocks, first + kGrainBlocks)});
    }
  }
  const int64_t count = static_cast<int64_t>(pieces.size());
  const int threads = total < kParallelMinElements ? 1 : std::min<int64_t>(num_threads(), count);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
  for (int64_t p = 0; p < count; ++p) {
    const Blocks& piece = pieces[p];
    kernels[piece.job](jobs[piece.job], options, piece.first, piece.last);
  }
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(adagrad_gluon_q8_update)
    .setParseAttrs(quant_parse)
    .setInferShape(quant_infer_shape)
    .setInferType(quant_infer_type)
    .setInferSType(infer_storage<false>)
    .setMutateInputs(quant_mutate_inputs)
    .setForward(quant_forward, "cpu");

// -- Gradient states of many arrays (the flat layout: adagrad_gluon/optim/flat.py) ------------
//
// MXNet's C API reads or sets the gradient state of one NDArray (the flag backward sets and
// gluon.Trainer checks) per call, ~0.3 us through ctypes: most of a step of a flat parameter of
// 1000 members. These make the same calls for n arrays in one. MXNet opens its library
// RTLD_LOCAL, so the caller passes its MXNDArrayGetGradState / MXNDArraySetGradState. Each
// returns 0, or -1 at the first call that fails (MXNet's last error says why).
using GetGradState = int (*)(void* array, int* state);
using SetGradState = int (*)(void* array, int state);

extern "C" int adagrad_gluon_get_grad_states(GetGradState get, void* const* arrays, int64_t n,
                                             int* states) {
  for (int64_t i = 0; i < n; ++i) {
    if (get(arrays[i], states + i) != 0) return -1;
  }
  return 0;
}

extern "C" int adagrad_gluon_set_grad_states(SetGradState set, void* const* arrays, int64_t n,
                                             int state) {
  for (int64_t i = 0; i < n; ++i) {
    if (set(arrays[i], state) != 0) return -1;
  }
  return 0;
}
