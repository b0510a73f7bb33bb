// losses.cpp - loss value and gradient in one pass; see csrc/kernels.inc for the contract.
// Sums are kept in double. Parallel sums go through parallel_sum: chunks fixed by the length, one double
// partial per chunk, added in chunk order, so a result depends only on the inputs, not on the thread count.
// exp/log1p are the vectorisable versions in kernel_common.h; rows of <= 2 vectors use vec.h.
#include "kernel_common.h"
#include "vec.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

constexpr int kMaxPartials = 64;
// An exp and a log1p cost ~20x an add: such losses pay for a second thread at a smaller grain.
constexpr int64_t kExpGrain = kParallelGrain / 4;

// sum over [0, n) of body(lo, hi) -> double, in chunks of 16-aligned length fixed by n alone (about
// grain/8 each, at most kMaxPartials), one double partial per chunk added in chunk order. Threads take
// chunks t, t+T, ...; which thread runs a chunk, and how many threads there are (the contention guard may
// lower the count mid-run), never changes a result: the same bits at any thread count.
template <class F>
double parallel_sum(int64_t n, F&& body, int64_t grain) {
  const int64_t piece = grain / 8 > 16 ? grain / 8 : 16;
  int64_t chunks = n / piece;
  if (chunks > kMaxPartials) chunks = kMaxPartials;
  if (chunks <= 1) {
    DenormalsOff ftz;
    return body(int64_t(0), n);
  }
  const int64_t per = ((n + chunks - 1) / chunks + 15) & ~int64_t(15);
  double partial[kMaxPartials];
  int nt = threads_for(n, grain);
  if (nt > chunks) nt = static_cast<int>(chunks);
  parallel_region(nt, [&](int t, int T) {
    for (int64_t c = t; c < chunks; c += T) {
      const int64_t lo = c * per, hi = lo + per < n ? lo + per : n;
      partial[c] = lo < hi ? body(lo, hi) : 0.0;
    }
  });
  double s = 0.0;
  for (int64_t c = 0; c < chunks; c++) s += partial[c];
  return s;
}

// x (n): true when no element is NaN or ±Inf (nonfinite_sum, in vec.h).
bool all_finite(const float* x, int64_t n) {
  const double s = parallel_sum(n, [=](int64_t lo, int64_t hi) { return double(nonfinite_sum(x, lo, hi)); },
                                4 * kParallelGrain);
  return s == 0.0;
}

// Each loss below is a chunk function over [lo, hi) -> partial loss sum, called by parallel_sum.
// (Plain functions, not lambda bodies: GCC leaves loops with simd reductions that read their
// pointers through a lambda's closure unvectorised.)

// dpred (nullable), pred, target: (n)
// loss = sum (pred - target)² [/ n];  dpred = 2 (pred - target) [/ n]. The difference is taken in
// double, so any finite inputs give a finite loss.
static double mse_chunk(float* dpred, const float* pred, const float* target, double gscale, int64_t lo,
                        int64_t hi) {
  double acc = 0.0;
  if (dpred) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = lo; i < hi; i++) {
      double d = static_cast<double>(pred[i]) - target[i];
      dpred[i] = static_cast<float>(d * gscale);
      acc += d * d;
    }
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = lo; i < hi; i++) {
      double d = static_cast<double>(pred[i]) - target[i];
      acc += d * d;
    }
  }
  return acc;
}

double mse_loss_forward_backward(float* dpred, const float* pred, const float* target, int reduction, int64_t n) {
  const double gscale = reduction == RED_MEAN ? 2.0 / static_cast<double>(n) : 2.0;
  double s = parallel_sum(
      n, [=](int64_t lo, int64_t hi) { return mse_chunk(dpred, pred, target, gscale, lo, hi); }, kParallelGrain);
  return reduction == RED_MEAN ? s / static_cast<double>(n) : s;
}

// dpred (nullable), pred, target: (n)
// loss = sum |pred - target| [/ n];  dpred = sign(pred - target) [/ n], with sign(0) = 0.
static double l1_chunk(float* dpred, const float* pred, const float* target, float g, int64_t lo, int64_t hi) {
  double acc = 0.0;
  if (dpred) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = lo; i < hi; i++) {
      double d = static_cast<double>(pred[i]) - target[i];
      dpred[i] = select(pred[i] > target[i], g, select(pred[i] < target[i], -g, 0.0f));
      acc += std::fabs(d);
    }
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = lo; i < hi; i++) acc += std::fabs(static_cast<double>(pred[i]) - target[i]);
  }
  return acc;
}

double l1_loss_forward_backward(float* dpred, const float* pred, const float* target, int reduction, int64_t n) {
  const float g = reduction == RED_MEAN ? static_cast<float>(1.0 / static_cast<double>(n)) : 1.0f;
  double s = parallel_sum(
      n, [=](int64_t lo, int64_t hi) { return l1_chunk(dpred, pred, target, g, lo, hi); }, kParallelGrain);
  return reduction == RED_MEAN ? s / static_cast<double>(n) : s;
}

// dlogits (nullable), logits, target: (n), target in [0, 1]
// loss = sum [max(x, 0) - x t + log1p(exp(-|x|))] [/ n]  (= -t log σ(x) - (1-t) log(1-σ(x)), stable);
// dlogits = (σ(x) - t) [/ n]. max(x,0) - x t is taken in double (x t may nearly cancel max(x, 0)).
// A target outside [0, 1] (or NaN) makes its term NaN, so the caller learns of it from the result.
static inline double bce_term(float x, float t, float z) {  // z = exp(-|x|)
  double l = static_cast<double>(select(x > 0.0f, x, 0.0f)) - static_cast<double>(x) * t + simd_log1p(z);
  return l + static_cast<double>(select((t >= 0.0f) & (t <= 1.0f), 0.0f, __builtin_nanf("")));
}

static double bce_chunk(float* dlogits, const float* logits, const float* target, float g, int64_t lo,
                        int64_t hi) {
  double acc = 0.0;
  if (dlogits) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = lo; i < hi; i++) {
      const float x = logits[i], t = target[i];
      const float z = simd_exp(-std::fabs(x));  // in [0, 1]
      acc += bce_term(x, t, z);
      const float r = 1.0f / (1.0f + z);
      dlogits[i] = (select(x >= 0.0f, r, z * r) - t) * g;  // σ(x), from z = exp(-|x|)
    }
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = lo; i < hi; i++) acc += bce_term(logits[i], target[i], simd_exp(-std::fabs(logits[i])));
  }
  return acc;
}

double bce_with_logits_forward_backward(float* dlogits, const float* logits, const float* target, int reduction,
                                        int64_t n) {
  const float g = reduction == RED_MEAN ? static_cast<float>(1.0 / static_cast<double>(n)) : 1.0f;
  double s = parallel_sum(
      n, [=](int64_t lo, int64_t hi) { return bce_chunk(dlogits, logits, target, g, lo, hi); }, kExpGrain);
  return reduction == RED_MEAN ? s / static_cast<double>(n) : s;
}

// dlogits (B, NC) nullable, logits (B, NC), labels (B) in [0, NC)
// Per row x, m = max x, S = sum exp(x - m):  loss_b = m + log S - x[label]  (log-sum-exp, stable for any
// finite logits); dlogits = (softmax(x) - onehot(label)) [/ B], softmax(x) = exp(x - m) / S.
// The label's entry is written as -(S - e_label)/S [/ B] so it keeps its precision when p -> 1.
// Any Inf or NaN logit makes the result NaN (x - x is 0 only for finite x). dlogits may be logits.
// crossentropy_row does one row: writes d (nullable), sets S and returns m - x[label] (+ NaN if a
// logit is not finite); the caller adds the logs of products of S (see below).
static double crossentropy_row(float* d, const float* x, int64_t label, double scale, int64_t NC, double& S) {
  const float xl = x[label];  // read before d (which may be x) is written
  float m = x[0];
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < NC; i++) m = x[i] > m ? x[i] : m;
  double s = 0.0;
  float bad = 0.0f;
  if (d) {
#pragma omp simd reduction(+ : s, bad)
    for (int64_t i = 0; i < NC; i++) {
      const float e = simd_exp(x[i] - m);
      bad += x[i] - x[i];
      d[i] = e;
      s += e;
    }
    const double el = d[label];
    const float k = static_cast<float>(scale / s);
#pragma omp simd
    for (int64_t i = 0; i < NC; i++) d[i] *= k;
    d[label] = static_cast<float>((el - s) * (scale / s));
  } else {
#pragma omp simd reduction(+ : s, bad)
    for (int64_t i = 0; i < NC; i++) {
      s += simd_exp(x[i] - m);
      bad += x[i] - x[i];
    }
  }
  S = s;
  return static_cast<double>(m) - static_cast<double>(xl) + bad;
}

// crossentropy_row for NC <= NV*W: the row in NV registers, lanes past NC -inf for the max and the
// exps. The label's entry is -(sum of the other exps)/S [/ B]: that sum is taken over the row with
// the label's lane zeroed, so it keeps its precision when p -> 1, and S = e_label + others in double.
template <int NV>
static double crossentropy_short_row(float* d, const float* x, int64_t label, double scale, int64_t NC,
                                     double& S) {
  const Vec::mask tail = Vec::first(static_cast<int>(NC - (NV - 1) * kW));
  const float xl = x[label];  // read before d (which may be x) is written
  reg v[NV];
  load_row<NV>(v, x, tail);
  reg bad = Vec::zero();  // x - x: 0 for a finite logit, NaN otherwise
  for (int j = 0; j < NV; ++j) bad = Vec::add(bad, Vec::sub(v[j], v[j]));
  v[NV - 1] = Vec::fill_beyond(v[NV - 1], tail, -__builtin_inff());
  reg m = v[0];
  for (int j = 1; j < NV; ++j) m = Vec::max(v[j], m);
  const float mf = Vec::hmax(m);
  const int jl = static_cast<int>(label / kW), il = static_cast<int>(label % kW);
  alignas(64) float e[NV * kW];
  reg others = Vec::zero();
  for (int j = 0; j < NV; ++j) {
    v[j] = exp_nonpos(Vec::sub(v[j], Vec::set1(mf)));
    Vec::store(e + j * kW, v[j]);
    // lanes below il, plus lanes above il (v minus lanes up to il): the label's lane is exactly 0
    const reg o = j != jl ? v[j]
                          : Vec::add(Vec::fill_beyond(v[j], Vec::first(il), 0.0f),
                                     Vec::sub(v[j], Vec::fill_beyond(v[j], Vec::first(il + 1), 0.0f)));
    others = Vec::add(others, o);
  }
  const double el = e[label], rest = Vec::hsum(others);
  S = el + rest;
  if (d) {
    const reg k = Vec::set1(static_cast<float>(scale / S));
    for (int j = 0; j < NV; ++j) v[j] = Vec::mul(v[j], k);
    store_row<NV>(d, v, tail);
    d[label] = static_cast<float>(-rest * (scale / S));
  }
  return static_cast<double>(mf) - static_cast<double>(xl) + Vec::hsum(bad);
}

// Rows [lo, hi) of softmax_cross_entropy_forward_backward, one row at a time by Row (crossentropy_row or
// crossentropy_short_row<NV>). Each S is in [1, NC] (the max term is exp(0) = 1), so sum log S = log of
// their product, taken once the product passes 1e200 instead of once per row (a log costs as much as a
// row of 10). The first row whose label is out of range goes to bad.
using CrossentropyRow = double (*)(float*, const float*, int64_t, double, int64_t, double&);
template <CrossentropyRow row>
static double crossentropy_chunk(float* dlogits, BadLabel& bad, const float* logits, const int64_t* labels,
                                 double scale, int64_t NC, int64_t lo, int64_t hi) {
  double acc = 0.0, prod = 1.0;
  for (int64_t b = lo; b < hi; b++) {
    // Read once, checked here: another Python thread may write labels while the GIL is released.
    const int64_t label = labels[b];
    float* d = dlogits ? dlogits + b * NC : nullptr;
    if (static_cast<uint64_t>(label) >= static_cast<uint64_t>(NC)) {
      if (bad.row < 0) bad = BadLabel{b, label};
      if (d)
        for (int64_t i = 0; i < NC; i++) d[i] = __builtin_nanf("");
      acc += __builtin_nan("");
      continue;
    }
    double S;
    acc += row(d, logits + b * NC, label, scale, NC, S);
    prod *= S;
    if (!(prod < 1e200)) {  // also flushes a NaN at once
      acc += std::log(prod);
      prod = 1.0;
    }
  }
  return acc + std::log(prod);
}

double softmax_cross_entropy_forward_backward(float* dlogits, BadLabel* bad, const float* logits,
                                              const int64_t* labels, int reduction, int64_t B, int64_t NC) {
  const double scale = reduction == RED_MEAN ? 1.0 / static_cast<double>(B) : 1.0;
  // A short row costs ~25 ns (a chain of dependent vector steps), not 10 elements' worth: from 200 rows
  // on, a second thread pays (512 rows of 10: 12.6 us on one thread).
  const int64_t row_grain = short_row_vectors(NC) ? kExpGrain / 4 : kExpGrain;
  const int64_t grain = NC >= row_grain ? 1 : row_grain / NC;
  auto chunk = [=](BadLabel& first, int64_t lo, int64_t hi) {
    if (short_row_vectors(NC) == 1)
      return crossentropy_chunk<crossentropy_short_row<1>>(dlogits, first, logits, labels, scale, NC, lo, hi);
    if (short_row_vectors(NC) == 2)
      return crossentropy_chunk<crossentropy_short_row<2>>(dlogits, first, logits, labels, scale, NC, lo, hi);
    return crossentropy_chunk<crossentropy_row>(dlogits, first, logits, labels, scale, NC, lo, hi);
  };
  double s = parallel_sum(
      B,
      [=](int64_t lo, int64_t hi) {
        BadLabel first;
        const double r = chunk(first, lo, hi);
        if (first.row >= 0) {  // only when a label is bad: keep the lowest row of all chunks
#pragma omp critical(fastdl_bad_label)
          if (bad->row < 0 || first.row < bad->row) *bad = first;
        }
        return r;
      },
      grain);
  return reduction == RED_MEAN ? s / static_cast<double>(B) : s;
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
