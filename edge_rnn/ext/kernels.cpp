// Vectorised CPU kernels for edge-rnn training on x86 (optional; see edge_rnn/ext/__init__.py).
//
// MLX's CPU backend evaluates exp/sigmoid/tanh one element at a time on x86 (~20-60 ns each).
// These primitives compute the same functions 8 floats at a time (AVX2 + FMA), split large
// arrays over the cores, and agree with the exact functions to a few float32 ulp:
//
//   sigmoid(x), tanh(x)                      element-wise, with their vjp (autodiff path)
//   logsumexp_rows(z, ranges)  (N, V) -> (N,), (N,)  every row's softmax normaliser and argmax
//   softmax_xent_grad(z, lse, targets, scale, ranges) (N, V): scale[n] * (softmax(z[n]) - onehot(t[n]))
//
// ``ranges`` (N, 2) int32 holds each row's columns [lo, hi): the softmax is over those alone (the
// prefix objective: only the words the typed letters allow), and the gradient is 0 outside them.
//
// The two cross-entropy kernels are what edge_rnn.loss uses for the output layer, whose softmax
// over ~10k words is most of a training step's element-wise work.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EDGE_AVX2 1
#endif

#include <nanobind/nanobind.h>
#include <nanobind/stl/vector.h>

#include "mlx/backend/common/utils.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"

namespace nb = nanobind;
using namespace nb::literals;
namespace mx = mlx::core;

namespace {

// ---- vector math: 8 floats at a time ------------------------------------------------------------

#ifdef EDGE_AVX2
using V8 = __m256;
inline V8 set1(float v) { return _mm256_set1_ps(v); }

// exp (Cephes' expf): n = round(x / ln2), r = x - n ln2 (Cody-Waite), e^r by a degree-5
// polynomial, times 2^n built in the exponent bits (as 2^(n/2) * 2^(n - n/2) so n = 128 works).
inline V8 exp8(V8 x) {
  const V8 too_big = _mm256_cmp_ps(x, set1(88.72283935546875f), _CMP_GT_OQ);
  const V8 too_small = _mm256_cmp_ps(x, set1(-87.33654022216797f), _CMP_LT_OQ);
  const V8 is_nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  V8 v = _mm256_min_ps(_mm256_max_ps(x, set1(-87.33654022216797f)), set1(88.72283935546875f));
  V8 n = _mm256_round_ps(_mm256_mul_ps(v, set1(1.44269504088896341f)),
                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V8 r = _mm256_fnmadd_ps(n, set1(0.693359375f), v);
  r = _mm256_fnmadd_ps(n, set1(-2.12194440e-4f), r);
  V8 p = set1(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, set1(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, set1(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, set1(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, set1(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, set1(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, set1(1.0f)));
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i half = _mm256_srai_epi32(ni, 1);
  __m256i rest = _mm256_sub_epi32(ni, half);
  V8 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
  V8 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(rest, _mm256_set1_epi32(127)), 23));
  p = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  p = _mm256_blendv_ps(p, set1(INFINITY), too_big);
  p = _mm256_blendv_ps(p, _mm256_setzero_ps(), too_small);
  return _mm256_blendv_ps(p, x, is_nan);
}

inline V8 sigmoid8(V8 x) {
  const V8 one = set1(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

// tanh: odd Taylor series below |x| = 0.6 (error < 1e-8 relative there), else
// sign(x) * (1 - 2 / (exp(2|x|) + 1)), which has no cancellation for |x| >= 0.6.
inline V8 tanh8(V8 x) {
  const V8 sign = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x80000000)));
  const V8 a = _mm256_andnot_ps(_mm256_castsi256_ps(_mm256_set1_epi32(0x80000000)), x);
  const V8 one = set1(1.0f);
  V8 big = _mm256_sub_ps(one, _mm256_div_ps(set1(2.0f), _mm256_add_ps(exp8(_mm256_add_ps(a, a)), one)));
  V8 s = _mm256_mul_ps(a, a);
  V8 p = set1(-443861162.0f / 1856156927625.0f);              // x^19
  p = _mm256_fmadd_ps(p, s, set1(6404582.0f / 10854718875.0f));  // x^17
  p = _mm256_fmadd_ps(p, s, set1(-929569.0f / 638512875.0f));    // x^15
  p = _mm256_fmadd_ps(p, s, set1(21844.0f / 6081075.0f));        // x^13
  p = _mm256_fmadd_ps(p, s, set1(-1382.0f / 155925.0f));         // x^11
  p = _mm256_fmadd_ps(p, s, set1(62.0f / 2835.0f));              // x^9
  p = _mm256_fmadd_ps(p, s, set1(-17.0f / 315.0f));              // x^7
  p = _mm256_fmadd_ps(p, s, set1(2.0f / 15.0f));                 // x^5
  p = _mm256_fmadd_ps(p, s, set1(-1.0f / 3.0f));                 // x^3
  V8 small = _mm256_fmadd_ps(_mm256_mul_ps(a, s), p, a);
  V8 t = _mm256_blendv_ps(big, small, _mm256_cmp_ps(a, set1(0.6f), _CMP_LT_OQ));
  t = _mm256_or_ps(t, sign);
  return _mm256_blendv_ps(t, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN stays NaN
}

// Apply an 8-wide function to n floats; the tail goes through a padded buffer so every element
// sees exactly the same arithmetic.
template <typename F>
inline void map8(const float* in, float* out, size_t n, F f) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, f(_mm256_loadu_ps(in + i)));
  if (i < n) {
    alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(buf, in + i, (n - i) * sizeof(float));
    _mm256_store_ps(buf, f(_mm256_load_ps(buf)));
    std::memcpy(out + i, buf, (n - i) * sizeof(float));
  }
}
#endif

enum class Act { Sigmoid, Tanh };

void activation(Act kind, const float* in, float* out, size_t n) {
#ifdef EDGE_AVX2
  if (kind == Act::Sigmoid) map8(in, out, n, sigmoid8);
  else map8(in, out, n, tanh8);
#else
  for (size_t i = 0; i < n; ++i)
    out[i] = kind == Act::Sigmoid ? 1.0f / (1.0f + std::exp(-in[i])) : std::tanh(in[i]);
#endif
}

// log(sum(exp(z))) of one row; *top = the first index of the row's maximum (the top-1 word).
float row_logsumexp(const float* z, size_t V, uint32_t* top) {
#ifdef EDGE_AVX2
  size_t j = 0;
  V8 vm = set1(-INFINITY);
  for (; j + 8 <= V; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(z + j));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vm);
  float m = *std::max_element(lanes, lanes + 8);
  for (size_t k = j; k < V; ++k) m = std::max(m, z[k]);
  size_t at = 0;
  for (const V8 vmax = set1(m); at + 8 <= V; at += 8) {
    int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(z + at), vmax, _CMP_EQ_OQ));
    if (hit) {
      at += __builtin_ctz(hit);
      break;
    }
  }
  while (at < V && z[at] != m) ++at;
  *top = static_cast<uint32_t>(at % V);  // a row of NaN: 0
  if (!std::isfinite(m)) return m;  // all -inf, or inf/nan somewhere
  V8 acc = _mm256_setzero_ps();
  const V8 vmax = set1(m);
  for (j = 0; j + 8 <= V; j += 8) acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(_mm256_loadu_ps(z + j), vmax)));
  if (j < V) {
    alignas(32) float buf[8];
    for (int k = 0; k < 8; ++k) buf[k] = j + k < V ? z[j + k] - m : -INFINITY;
    acc = _mm256_add_ps(acc, exp8(_mm256_load_ps(buf)));
  }
  _mm256_store_ps(lanes, acc);
  double s = 0;
  for (float v : lanes) s += v;
  return m + static_cast<float>(std::log(s));
#else
  float m = -INFINITY;
  for (size_t j = 0; j < V; ++j) m = std::max(m, z[j]);
  *top = static_cast<uint32_t>(std::find(z, z + V, m) - z) % V;
  if (!std::isfinite(m)) return m;
  double s = 0;
  for (size_t j = 0; j < V; ++j) s += std::exp(z[j] - m);
  return m + static_cast<float>(std::log(s));
#endif
}

void row_xent_grad(const float* z, float lse, int32_t target, float scale, float* g, size_t V) {
  if (scale == 0.0f) {
    std::memset(g, 0, V * sizeof(float));
    return;
  }
#ifdef EDGE_AVX2
  const V8 vl = set1(lse), vs = set1(scale);
  map8(z, g, V, [&](V8 v) { return _mm256_mul_ps(exp8(_mm256_sub_ps(v, vl)), vs); });
#else
  for (size_t j = 0; j < V; ++j) g[j] = std::exp(z[j] - lse) * scale;
#endif
  if (target >= 0 && static_cast<size_t>(target) < V) g[target] -= scale;
}

// A row's [lo, hi) columns, clamped into [0, V] (hi >= lo).
inline std::pair<size_t, size_t> row_range(const int32_t* r, size_t V) {
  size_t lo = static_cast<size_t>(std::clamp<int64_t>(r[0], 0, V));
  return {lo, static_cast<size_t>(std::clamp<int64_t>(r[1], lo, V))};
}

// Run body(begin, end) over [0, n) on up to hardware_concurrency threads (one for small work).
template <typename F>
void parallel_for(size_t n, size_t min_per_thread, F body) {
  size_t threads = std::max(1u, std::thread::hardware_concurrency());
  threads = std::min(threads, std::max<size_t>(1, n / std::max<size_t>(1, min_per_thread)));
  if (threads <= 1) {
    body(size_t(0), n);
    return;
  }
  std::vector<std::thread> pool;
  size_t chunk = (n + threads - 1) / threads;
  for (size_t t = 1; t < threads; ++t) {
    size_t b = t * chunk, e = std::min(n, b + chunk);
    if (b < e) pool.emplace_back(body, b, e);
  }
  body(size_t(0), std::min(n, chunk));
  for (auto& th : pool) th.join();
}

// ---- primitives ---------------------------------------------------------------------------------

void check_cpu_float32(const mx::array& a, const char* op) {
  if (a.dtype() != mx::float32) throw std::invalid_argument(std::string(op) + ": float32 only");
}

class FastActivation : public mx::UnaryPrimitive {
 public:
  FastActivation(mx::Stream s, Act kind) : mx::UnaryPrimitive(s), kind_(kind) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    auto& in = inputs[0];  // row-contiguous float32 (ensured by the op)
    if (mx::is_donatable(in, out)) out.copy_shared_buffer(in);
    else out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    encoder.set_input_array(in);
    encoder.set_output_array(out);
    encoder.dispatch([in = mx::array::unsafe_weak_copy(in), out = mx::array::unsafe_weak_copy(out),
                      kind = kind_]() mutable {
      const float* src = in.data<float>();
      float* dst = out.data<float>();
      parallel_for(in.size(), 1 << 17, [&](size_t b, size_t e) { activation(kind, src + b, dst + b, e - b); });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("edge_rnn.ext kernels run on the CPU only");
  }
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override {
    const auto& y = outputs[0];
    const auto& c = cotangents[0];
    auto one = mx::array(1.0f, y.dtype());
    auto slope = kind_ == Act::Sigmoid ? mx::multiply(y, mx::subtract(one, y, stream()), stream())
                                       : mx::subtract(one, mx::square(y, stream()), stream());
    return {mx::multiply(c, slope, stream())};
  }
  std::vector<mx::array> jvp(const std::vector<mx::array>& primals, const std::vector<mx::array>& tangents,
                             const std::vector<int>& argnums) override {
    auto y = mx::array(primals[0].shape(), primals[0].dtype(),
                       std::make_shared<FastActivation>(stream(), kind_), {primals[0]});
    auto one = mx::array(1.0f, y.dtype());
    auto slope = kind_ == Act::Sigmoid ? mx::multiply(y, mx::subtract(one, y, stream()), stream())
                                       : mx::subtract(one, mx::square(y, stream()), stream());
    return {mx::multiply(tangents[0], slope, stream())};
  }
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(const std::vector<mx::array>& inputs,
                                                           const std::vector<int>& axes) override {
    auto y = mx::array(inputs[0].shape(), inputs[0].dtype(),
                       std::make_shared<FastActivation>(stream(), kind_), {inputs[0]});
    return {{y}, axes};
  }
  const char* name() const override { return kind_ == Act::Sigmoid ? "EdgeSigmoid" : "EdgeTanh"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return kind_ == static_cast<const FastActivation&>(other).kind_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

 private:
  Act kind_;
};

class LogSumExpRows : public mx::Primitive {
 public:
  explicit LogSumExpRows(mx::Stream s) : mx::Primitive(s) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto &z = inputs[0], &ranges = inputs[1];
    for (auto& o : outputs) o.set_data(mx::allocator::malloc(o.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    encoder.set_input_array(z);
    encoder.set_input_array(ranges);
    encoder.set_output_array(outputs[0]);
    encoder.set_output_array(outputs[1]);
    encoder.dispatch([z = mx::array::unsafe_weak_copy(z), ranges = mx::array::unsafe_weak_copy(ranges),
                      lse = mx::array::unsafe_weak_copy(outputs[0]),
                      top = mx::array::unsafe_weak_copy(outputs[1])]() mutable {
      size_t V = z.shape(-1), N = z.size() / V;
      const float* src = z.data<float>();
      const int32_t* rp = ranges.data<int32_t>();
      float* lp = lse.data<float>();
      uint32_t* tp = top.data<uint32_t>();
      parallel_for(N, std::max<size_t>(1, (1 << 16) / V), [&](size_t b, size_t e) {
        for (size_t n = b; n < e; ++n) {
          auto [lo, hi] = row_range(rp + 2 * n, V);
          lp[n] = row_logsumexp(src + n * V + lo, hi - lo, tp + n);
          tp[n] += lo;
        }
      });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("edge_rnn.ext kernels run on the CPU only");
  }
  const char* name() const override { return "EdgeLogSumExpRows"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

class SoftmaxXentGrad : public mx::UnaryPrimitive {
 public:
  explicit SoftmaxXentGrad(mx::Stream s) : mx::UnaryPrimitive(s) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    auto &z = inputs[0], &lse = inputs[1], &targets = inputs[2], &scale = inputs[3], &ranges = inputs[4];
    if (mx::is_donatable(z, out)) out.copy_shared_buffer(z);  // write the gradient over the logits
    else out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (auto& a : inputs) encoder.set_input_array(a);
    encoder.set_output_array(out);
    encoder.dispatch([z = mx::array::unsafe_weak_copy(z), lse = mx::array::unsafe_weak_copy(lse),
                      targets = mx::array::unsafe_weak_copy(targets), scale = mx::array::unsafe_weak_copy(scale),
                      ranges = mx::array::unsafe_weak_copy(ranges), out = mx::array::unsafe_weak_copy(out)]() mutable {
      size_t V = z.shape(-1), N = z.size() / V;
      const float* zp = z.data<float>();
      const float* lp = lse.data<float>();
      const int32_t* tp = targets.data<int32_t>();
      const float* sp = scale.data<float>();
      const int32_t* rp = ranges.data<int32_t>();
      float* gp = out.data<float>();
      parallel_for(N, std::max<size_t>(1, (1 << 16) / V), [&](size_t b, size_t e) {
        for (size_t n = b; n < e; ++n) {
          auto [lo, hi] = row_range(rp + 2 * n, V);
          float* g = gp + n * V;
          std::memset(g, 0, lo * sizeof(float));
          row_xent_grad(zp + n * V + lo, lp[n], tp[n] - static_cast<int32_t>(lo), sp[n], g + lo, hi - lo);
          std::memset(g + hi, 0, (V - hi) * sizeof(float));
        }
      });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("edge_rnn.ext kernels run on the CPU only");
  }
  const char* name() const override { return "EdgeSoftmaxXentGrad"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

// ---- ops ------------------------------------------------------------------------------------------

mx::array fast_activation(const mx::array& x, Act kind) {
  check_cpu_float32(x, kind == Act::Sigmoid ? "sigmoid" : "tanh");
  auto s = mx::to_stream({});
  auto xc = mx::contiguous(x, false, s);
  return mx::array(xc.shape(), mx::float32, std::make_shared<FastActivation>(s, kind), {xc});
}

mx::array checked_ranges(const mx::array& ranges, int N, mx::Stream s, const char* op) {
  if (ranges.ndim() != 2 || ranges.shape(0) != N || ranges.shape(1) != 2)
    throw std::invalid_argument(std::string(op) + ": ranges must be (N, 2)");
  return mx::contiguous(mx::astype(ranges, mx::int32, s), false, s);
}

std::vector<mx::array> logsumexp_rows(const mx::array& z, const mx::array& ranges) {
  check_cpu_float32(z, "logsumexp_rows");
  if (z.ndim() != 2) throw std::invalid_argument("logsumexp_rows: expects (N, V) logits");
  auto s = mx::to_stream({});
  std::vector<mx::array> in = {mx::contiguous(z, false, s), checked_ranges(ranges, z.shape(0), s, "logsumexp_rows")};
  return mx::array::make_arrays({{z.shape(0)}, {z.shape(0)}}, {mx::float32, mx::uint32},
                                std::make_shared<LogSumExpRows>(s), in);
}

mx::array softmax_xent_grad(const mx::array& z, const mx::array& lse, const mx::array& targets,
                            const mx::array& scale, const mx::array& ranges) {
  check_cpu_float32(z, "softmax_xent_grad");
  if (z.ndim() != 2) throw std::invalid_argument("softmax_xent_grad: expects (N, V) logits");
  auto N = z.shape(0);
  auto s = mx::to_stream({});
  std::vector<mx::array> in = {
      mx::contiguous(z, false, s),
      mx::contiguous(mx::astype(mx::reshape(lse, {N}, s), mx::float32, s), false, s),
      mx::contiguous(mx::astype(mx::reshape(targets, {N}, s), mx::int32, s), false, s),
      mx::contiguous(mx::astype(mx::broadcast_to(scale, {N}, s), mx::float32, s), false, s),
      checked_ranges(ranges, N, s, "softmax_xent_grad")};
  return mx::array(z.shape(), mx::float32, std::make_shared<SoftmaxXentGrad>(s), in);
}

}  // namespace

NB_MODULE(_ext, m) {
  m.doc() = "edge-rnn's vectorised CPU kernels (AVX2+FMA) for MLX";
  m.def("sigmoid", [](const mx::array& x) { return fast_activation(x, Act::Sigmoid); }, "x"_a,
        "Element-wise logistic sigmoid of a float32 array.");
  m.def("tanh", [](const mx::array& x) { return fast_activation(x, Act::Tanh); }, "x"_a,
        "Element-wise tanh of a float32 array.");
  m.def("logsumexp_rows", &logsumexp_rows, "z"_a, "ranges"_a,
        "(log(sum(exp(z[lo:hi]))), lo + argmax(z[lo:hi])) of each row of (N, V) float32 logits.");
  m.def("softmax_xent_grad", &softmax_xent_grad, "z"_a, "lse"_a, "targets"_a, "scale"_a, "ranges"_a,
        "scale[:, None] * (softmax(z[lo:hi]) - one_hot(targets)) from z (N, V) and its logsumexp, 0 outside [lo, hi).");
#ifndef EDGE_MLX_VERSION
#define EDGE_MLX_VERSION "unknown"
#endif
  m.attr("mlx_version") = EDGE_MLX_VERSION;
  m.attr("api") = 2;  // edge_rnn.ext.API: bumped when a kernel's signature changes (2: ranges)
#ifdef EDGE_AVX2
  m.attr("simd") = "avx2";
#else
  m.attr("simd") = "none";
#endif
}
