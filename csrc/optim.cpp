// optim.cpp - optimizer updates, in place, one fused pass over each array (the CPU analogue of
// PyTorch's fused/foreach optimizers). Plain `omp simd` loops: each element is independent, so the
// per-ISA builds turn them into AVX2 / AVX-512 code, and parallel_arrays splits large arrays.
// Per element the arithmetic is float; the step-dependent scalars are worked out once in double.
// With check_finite every update reads its gradients once more first and writes nothing at all if
// one of them is NaN or ±Inf (returns false): a refused step leaves every array as it was.
#include <cmath>

#include "kernel_common.h"
#include "vec.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

// param, grad, momentum_buf: (n); momentum_buf is nullptr when momentum == 0.
// PyTorch's torch.optim.SGD, per element:
//   g = grad + weight_decay·param
//   if momentum != 0:  buf = first_step ? g : momentum·buf + (1 - dampening)·g
//                      g   = nesterov ? g + momentum·buf : buf
//   param -= lr·g
// sgd_range does elements [lo, hi) of one array; sgd_step and sgd_step_many split the work.
static void sgd_range(float* param, float* momentum_buf, const float* grad, float lr, float momentum,
                      float dampening, float weight_decay, int nesterov, int first_step, int64_t lo, int64_t hi) {
  const float wd = weight_decay, mom = momentum, damp1 = 1.0f - dampening;
  if (momentum == 0.0f || momentum_buf == nullptr) {
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) param[i] -= lr * (grad[i] + wd * param[i]);
  } else if (first_step) {
    const float nest = nesterov ? mom : 0.0f;
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
      float g = grad[i] + wd * param[i];
      momentum_buf[i] = g;
      param[i] -= lr * (g + nest * g);  // buf = g
    }
  } else {
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
      float g = grad[i] + wd * param[i];
      float buf = mom * momentum_buf[i] + damp1 * g;
      momentum_buf[i] = buf;
      param[i] -= lr * (nesterov ? g + mom * buf : buf);
    }
  }
}

// body(t, a, b) on the part [a, b) of every array t that the range [lo, hi) of the concatenation
// of count arrays of n[t] elements covers.
template <class F>
static void for_pieces(const int64_t* n, int64_t count, int64_t lo, int64_t hi, F&& body) {
  int64_t off = 0;  // where array t starts in the concatenation
  for (int64_t t = 0; t < count && off < hi; off += n[t], t++) {
    const int64_t a = lo > off ? lo - off : 0, b = hi - off < n[t] ? hi - off : n[t];
    if (a < b) body(t, a, b);
  }
}

// count arrays of n[t] elements as one: threads split their concatenation as parallel_chunks
// splits one array (one parallel region for a whole model, PyTorch's foreach), and each thread
// runs body(t, lo, hi) on the part [lo, hi) of every array t its range covers. With check (the
// gradients, non-null), each thread first checks check[t] over the same parts and, after one
// barrier, no thread runs body if any found a NaN or Inf: returns false then, with nothing written.
template <class F>
static bool parallel_arrays(const int64_t* n, int64_t count, const float* const* check, F body) {
  int64_t total = 0;
  for (int64_t t = 0; t < count; t++) total += n[t];
  auto finite = [=](int64_t lo, int64_t hi) {
    bool ok = true;
    for_pieces(n, count, lo, hi,
               [&](int64_t t, int64_t a, int64_t b) { ok = ok && nonfinite_sum(check[t], a, b) == 0.0f; });
    return ok;
  };
  int refused = 0;  // set by any thread that found a non-finite gradient, read by all after the barrier
  parallel_region(threads_for(total), [&](int64_t th, int64_t T) {
    const int64_t per = ((total + T - 1) / T + 15) & ~int64_t(15);
    const int64_t lo = th * per, hi = lo + per < total ? lo + per : total;
    if (check) {  // the same value on every thread: all of them reach the barrier or none
      if (lo < hi && !finite(lo, hi)) {
#pragma omp atomic write
        refused = 1;
      }
#pragma omp barrier
    }
    int stop;
#pragma omp atomic read
    stop = refused;
    if (!stop && lo < hi) for_pieces(n, count, lo, hi, body);
  });
  return refused == 0;
}

bool sgd_step(float* param, float* momentum_buf, const float* grad, float lr, float momentum, float dampening,
              float weight_decay, int nesterov, int first_step, int check_finite, int64_t n) {
  return parallel_arrays(&n, 1, check_finite ? &grad : nullptr, [=](int64_t, int64_t lo, int64_t hi) {
    sgd_range(param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov, first_step, lo, hi);
  });
}

bool sgd_step_many(float* const* param, float* const* momentum_buf, const float* const* grad, const int64_t* n,
                   int64_t count, float lr, float momentum, float dampening, float weight_decay, int nesterov,
                   int first_step, int check_finite) {
  return parallel_arrays(n, count, check_finite ? grad : nullptr, [=](int64_t t, int64_t lo, int64_t hi) {
    sgd_range(param[t], momentum_buf ? momentum_buf[t] : nullptr, grad[t], lr, momentum, dampening, weight_decay,
              nesterov, first_step, lo, hi);
  });
}

// param, m, v, grad: (n); step >= 1 counts this update (the first update has step 1).
// PyTorch's torch.optim.Adam (decoupled = 0) and AdamW (decoupled = 1), per element:
//   Adam:  g = grad + weight_decay·param          AdamW: g = grad; param *= 1 - lr·weight_decay
//   m = beta1·m + (1-beta1)·g;   v = beta2·v + (1-beta2)·g²
//   param -= lr/(1-beta1^step) · m / (√v / √(1-beta2^step) + eps)
// which is lr·m̂/(√v̂ + eps) with m̂ = m/(1-beta1^step), v̂ = v/(1-beta2^step), arranged as PyTorch does.
// The per-array scalars of one Adam step, worked out in double.
struct AdamScalars {
  float step_size, inv_sqrt_bc2, l2, decay, b1, b2, c1, c2, eps;
};
static AdamScalars adam_scalars(float lr, double beta1, double beta2, float eps, float weight_decay, int decoupled,
                                int64_t step) {
  // beta1, beta2 and 1 - beta are each rounded to float once, from double, as PyTorch's scalar
  // arguments are: 1.0f - float(0.999) would be 0.000999987, 1.3e-5 off.
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  AdamScalars s;
  s.step_size = static_cast<float>(static_cast<double>(lr) / bc1);
  s.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  s.l2 = decoupled ? 0.0f : weight_decay;
  s.decay = decoupled ? static_cast<float>(1.0 - static_cast<double>(lr) * weight_decay) : 1.0f;
  s.b1 = static_cast<float>(beta1);
  s.b2 = static_cast<float>(beta2);
  s.c1 = static_cast<float>(1.0 - beta1);
  s.c2 = static_cast<float>(1.0 - beta2);
  s.eps = eps;
  return s;
}

// Elements [lo, hi) of one array.
static void adam_range(float* param, float* m, float* v, const float* grad, const AdamScalars& s, int64_t lo,
                       int64_t hi) {
  const float step_size = s.step_size, inv_sqrt_bc2 = s.inv_sqrt_bc2, l2 = s.l2, decay = s.decay, b1 = s.b1,
              b2 = s.b2, c1 = s.c1, c2 = s.c2, eps = s.eps;
#pragma omp simd
  for (int64_t i = lo; i < hi; i++) {
    float p = param[i];
    float g = grad[i] + l2 * p;
    float mi = b1 * m[i] + c1 * g;
    float vi = b2 * v[i] + c2 * (g * g);
    m[i] = mi;
    v[i] = vi;
    param[i] = p * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
}

bool adam_step(float* param, float* m, float* v, const float* grad, float lr, double beta1, double beta2,
               float eps, float weight_decay, int decoupled, int64_t step, int check_finite, int64_t n) {
  const AdamScalars s = adam_scalars(lr, beta1, beta2, eps, weight_decay, decoupled, step);
  return parallel_arrays(&n, 1, check_finite ? &grad : nullptr,
                         [&](int64_t, int64_t lo, int64_t hi) { adam_range(param, m, v, grad, s, lo, hi); });
}

// adam_step on count arrays, each with its own step count, in one parallel region over their
// concatenation (PyTorch's foreach Adam): a 6-array MLP costs one region instead of six.
bool adam_step_many(float* const* param, float* const* m, float* const* v, const float* const* grad,
                    const int64_t* n, const int64_t* step, int64_t count, float lr, double beta1, double beta2,
                    float eps, float weight_decay, int decoupled, int check_finite) {
  return parallel_arrays(n, count, check_finite ? grad : nullptr, [=](int64_t t, int64_t lo, int64_t hi) {
    adam_range(param[t], m[t], v[t], grad[t], adam_scalars(lr, beta1, beta2, eps, weight_decay, decoupled, step[t]),
               lo, hi);
  });
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
