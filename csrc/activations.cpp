// activations.cpp - elementwise activations and their derivatives, and row-wise softmax.
// Plain loops under `omp simd`: this file is compiled once per ISA, so each loop becomes
// AVX-512, AVX2 or SSE2 code; map_chunks splits the elementwise ones above kParallelGrain elements
// (aligned to out's cache lines, streaming stores beyond the caches), parallel_chunks the rows.
// sigmoid and tanh run on whole vectors (sigmoid_v, tanh_v in vec.h, the GEMM epilogue's own), the
// tail of an array under a mask; exp is simd_exp (kernel_common.h) or exp_nonpos (vec.h), never libm's.
#include "kernel_common.h"
#include "vec.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

// An exp costs ~10x a max, so kernels built on it pay for a second thread at a smaller grain.
constexpr int64_t kExpGrain = kParallelGrain / 4;

// Rows per parallel chunk so that a chunk holds at least `grain` elements of C columns.
inline int64_t row_grain(int64_t C, int64_t grain) { return C >= grain ? 1 : grain / C; }

// inp, out, dinp, dout: (n)

// out = max(0, inp), NaN kept (np.maximum(inp, 0)): 0 > x ? 0 : x is x86's max(0, x), x when x is NaN.
// max only selects, so a subnormal x (0 to the compare under DAZ) would pass as it is, negative ones
// too; + 0 flushes it to +0 like every other kernel's subnormals (README).
void relu_forward(float* out, const float* inp, int64_t n) {
  map_chunks(2, out, n, [&](int64_t lo, int64_t hi, float* y) {
    const float* x = inp + lo;
#pragma omp simd
    for (int64_t i = 0; i < hi - lo; i++) y[i] = (0.0f > x[i] ? 0.0f : x[i]) + 0.0f;
  });
}

// dinp = dout * heaviside(inp, 0): a NaN in dout or inp gives NaN (dout * (inp > 0) would zero a NaN inp)
void relu_backward(float* dinp, const float* dout, const float* inp, int64_t n) {
  map_chunks(3, dinp, n, [&](int64_t lo, int64_t hi, float* g) {
    const float *d = dout + lo, *x = inp + lo;
#pragma omp simd
    for (int64_t i = 0; i < hi - lo; i++) g[i] = d[i] * heaviside0(x[i]);
  });
}

// inp, out, dinp, dout: (n)
// out = inp > 0 ? inp : slope * inp
void leaky_relu_forward(float* out, const float* inp, float slope, int64_t n) {
  map_chunks(2, out, n, [&](int64_t lo, int64_t hi, float* y) {
    const float* x = inp + lo;
#pragma omp simd
    for (int64_t i = 0; i < hi - lo; i++) y[i] = select(x[i] > 0.0f, x[i], slope * x[i]);
  });
}

// dinp = dout * (inp > 0 ? 1 : slope)   (slope at 0, as PyTorch)
void leaky_relu_backward(float* dinp, const float* dout, const float* inp, float slope, int64_t n) {
  map_chunks(3, dinp, n, [&](int64_t lo, int64_t hi, float* g) {
    const float *d = dout + lo, *x = inp + lo;
#pragma omp simd
    for (int64_t i = 0; i < hi - lo; i++) g[i] = select(x[i] > 0.0f, d[i], slope * d[i]);
  });
}

// inp, out, dinp, dout: (n)
// out = 1 / (1 + exp(-inp)), from exp(-|inp|) so it never overflows (sigmoid_v)
void sigmoid_forward(float* out, const float* inp, int64_t n) {
  map_chunks(
      2, out, n, [&](int64_t lo, int64_t hi, float* y) { map_vectors(y, inp + lo, hi - lo, [](reg v) { return sigmoid_v(v); }); }, kExpGrain);
}

// From the output y = sigmoid(x): dinp = dout * y * (1 - y)
void sigmoid_backward(float* dinp, const float* dout, const float* out, int64_t n) {
  map_chunks(3, dinp, n, [&](int64_t lo, int64_t hi, float* g) {
    const float *d = dout + lo, *y = out + lo;
#pragma omp simd
    for (int64_t i = 0; i < hi - lo; i++) g[i] = d[i] * y[i] * (1.0f - y[i]);
  });
}

// inp, out, dinp, dout: (n)
// out = tanh(inp), from exp(-2|inp|) so it never overflows (tanh_v)
void tanh_forward(float* out, const float* inp, int64_t n) {
  map_chunks(
      2, out, n, [&](int64_t lo, int64_t hi, float* y) { map_vectors(y, inp + lo, hi - lo, [](reg v) { return tanh_v(v); }); }, kExpGrain);
}

// From the output y = tanh(x): dinp = dout * (1 - y²)
void tanh_backward(float* dinp, const float* dout, const float* out, int64_t n) {
  map_chunks(3, dinp, n, [&](int64_t lo, int64_t hi, float* g) {
    const float *d = dout + lo, *y = out + lo;
#pragma omp simd
    for (int64_t i = 0; i < hi - lo; i++) g[i] = d[i] * (1.0f - y[i] * y[i]);
  });
}

// Rows [lo, hi) of softmax_forward when C <= NV*W: one row in NV registers (`omp simd` would leave
// a row of 10 scalar under AVX-512, whose vectors are 16 wide). Lanes past C hold -inf, so their
// exp is 0. The sum is a float one (of at most 32 terms in [0, 1]).
template <int NV>
void softmax_short_rows(float* out, const float* inp, int64_t lo, int64_t hi, int64_t C) {
  const Vec::mask tail = Vec::first(static_cast<int>(C - (NV - 1) * kW));
  for (int64_t b = lo; b < hi; b++) {
    reg v[NV];
    load_row<NV>(v, inp + b * C, tail);
    v[NV - 1] = Vec::fill_beyond(v[NV - 1], tail, -__builtin_inff());
    reg m = v[0];
    for (int j = 1; j < NV; ++j) m = Vec::max(v[j], m);
    const reg mv = Vec::set1(Vec::hmax(m));
    reg s = Vec::zero();
    for (int j = 0; j < NV; ++j) {
      v[j] = exp_nonpos(Vec::sub(v[j], mv));
      s = Vec::add(s, v[j]);
    }
    const reg inv = Vec::set1(1.0f / Vec::hsum(s));
    for (int j = 0; j < NV; ++j) v[j] = Vec::mul(v[j], inv);
    store_row<NV>(out + b * C, v, tail);
  }
}

// Rows [lo, hi) of softmax_backward when C <= NV*W (lanes past C are 0 in both rows).
template <int NV>
void softmax_backward_short_rows(float* dinp, const float* dout, const float* out, int64_t lo, int64_t hi,
                                 int64_t C) {
  const Vec::mask tail = Vec::first(static_cast<int>(C - (NV - 1) * kW));
  for (int64_t b = lo; b < hi; b++) {
    reg d[NV], y[NV];
    load_row<NV>(d, dout + b * C, tail);
    load_row<NV>(y, out + b * C, tail);
    reg dot = Vec::zero();
    for (int j = 0; j < NV; ++j) dot = Vec::fmadd(d[j], y[j], dot);
    const reg dv = Vec::set1(Vec::hsum(dot));
    for (int j = 0; j < NV; ++j) d[j] = Vec::mul(y[j], Vec::sub(d[j], dv));
    store_row<NV>(dinp + b * C, d, tail);
  }
}

// inp, out, dinp, dout: (B, C), softmax over each row
// out[b, i] = exp(inp[b, i] - m) / sum_j exp(inp[b, j] - m), m = max_j inp[b, j] (so every exp <= 1);
// the sum is kept in double (in float for rows of at most 2 vectors). out may be inp itself.
void softmax_forward(float* out, const float* inp, int64_t B, int64_t C) {
  parallel_chunks(
      B,
      [&](int64_t lo, int64_t hi) {
        if (short_row_vectors(C) == 1) return softmax_short_rows<1>(out, inp, lo, hi, C);
        if (short_row_vectors(C) == 2) return softmax_short_rows<2>(out, inp, lo, hi, C);
        for (int64_t b = lo; b < hi; b++) {
          const float* x = inp + b * C;
          float* y = out + b * C;
          float m = x[0];
#pragma omp simd reduction(max : m)
          for (int64_t i = 0; i < C; i++) m = x[i] > m ? x[i] : m;
          double s = 0.0;
#pragma omp simd reduction(+ : s)
          for (int64_t i = 0; i < C; i++) {
            const float e = simd_exp(x[i] - m);
            y[i] = e;
            s += e;
          }
          const float inv = static_cast<float>(1.0 / s);
#pragma omp simd
          for (int64_t i = 0; i < C; i++) y[i] *= inv;
        }
      },
      row_grain(C, short_row_vectors(C) ? kExpGrain / 4 : kExpGrain));  // a short row: ~25 ns
}

// From the output y = softmax(x) (rows): dinp[b, i] = y[b, i] * (dout[b, i] - sum_j dout[b, j] * y[b, j]),
// the dot product in double (in float for rows of at most 2 vectors). dinp may be dout itself.
void softmax_backward(float* dinp, const float* dout, const float* out, int64_t B, int64_t C) {
  parallel_chunks(
      B,
      [&](int64_t lo, int64_t hi) {
        if (short_row_vectors(C) == 1) return softmax_backward_short_rows<1>(dinp, dout, out, lo, hi, C);
        if (short_row_vectors(C) == 2) return softmax_backward_short_rows<2>(dinp, dout, out, lo, hi, C);
        for (int64_t b = lo; b < hi; b++) {
          const float* d = dout + b * C;
          const float* y = out + b * C;
          float* g = dinp + b * C;
          double dot = 0.0;
#pragma omp simd reduction(+ : dot)
          for (int64_t i = 0; i < C; i++) dot += static_cast<double>(d[i]) * y[i];
          const float dotf = static_cast<float>(dot);
#pragma omp simd
          for (int64_t i = 0; i < C; i++) g[i] = y[i] * (d[i] - dotf);
        }
      },
      row_grain(C, kParallelGrain));
}

// inp, out: (n)
// out = inp >= 0 ? 1 : 0, NaN kept (np.heaviside(inp, 1); forward only, it has no useful gradient)
void step_forward(float* out, const float* inp, int64_t n) {
  map_chunks(2, out, n, [&](int64_t lo, int64_t hi, float* y) {
    const float* x = inp + lo;
#pragma omp simd
    for (int64_t i = 0; i < hi - lo; i++) y[i] = select(x[i] >= 0.0f, 1.0f, select(x[i] != x[i], x[i], 0.0f));
  });
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
