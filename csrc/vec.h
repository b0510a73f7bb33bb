// vec.h - one SIMD vector of floats for the instruction set this file is compiled for, as a traits
// type `Vec` (AVX-512: 16 lanes, AVX2: 8, otherwise 4 in GCC vector extensions), and the vector math
// built on it. Used by the kernels written with intrinsics: the GEMM micro-kernel and its epilogues
// (gemm.cpp), sigmoid and tanh (the GEMM epilogue's and activations.cpp's), and the short-row
// softmax / cross-entropy kernels (activations.cpp, losses.cpp), whose rows are shorter than
// `omp simd` can vectorise well (GCC leaves the tail of a row scalar).
// Included only by csrc/*.cpp kernel files, after kernel_common.h.
#pragma once
#include <cstring>

#include "kernel_common.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

#define FASTDL_INLINE inline __attribute__((always_inline))

#if defined(__AVX512F__)
struct Vec {
  using reg = __m512;
  static constexpr int W = 16;
  static FASTDL_INLINE reg zero() { return _mm512_setzero_ps(); }
  static FASTDL_INLINE reg set1(float x) { return _mm512_set1_ps(x); }
  static FASTDL_INLINE reg load(const float* p) { return _mm512_load_ps(p); }  // 64-B aligned
  static FASTDL_INLINE reg loadu(const float* p) { return _mm512_loadu_ps(p); }
  static FASTDL_INLINE void store(float* p, reg v) { _mm512_store_ps(p, v); }
  static FASTDL_INLINE void storeu(float* p, reg v) { _mm512_storeu_ps(p, v); }
  using mask = __mmask16;  // the first n lanes
  static FASTDL_INLINE mask first(int n) { return static_cast<mask>((1u << n) - 1u); }
  static FASTDL_INLINE reg loadu_n(const float* p, mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static FASTDL_INLINE void storeu_n(float* p, reg v, mask m) { _mm512_mask_storeu_ps(p, m, v); }
  static FASTDL_INLINE reg fill_beyond(reg v, mask m, float x) { return _mm512_mask_blend_ps(m, set1(x), v); }
  static FASTDL_INLINE float hmax(reg v) { return _mm512_reduce_max_ps(v); }
  static FASTDL_INLINE float hsum(reg v) { return _mm512_reduce_add_ps(v); }
  static FASTDL_INLINE reg bcast(const float* p) { return _mm512_set1_ps(*p); }
  static FASTDL_INLINE reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static FASTDL_INLINE reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static FASTDL_INLINE reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static FASTDL_INLINE reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static FASTDL_INLINE reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static FASTDL_INLINE reg max(reg a, reg b) { return _mm512_max_ps(a, b); }  // b when either is NaN
  static FASTDL_INLINE reg abs(reg a) { return _mm512_abs_ps(a); }
  // s's sign bit set ? a : b
  static FASTDL_INLINE reg select_neg(reg s, reg a, reg b) {
    return _mm512_mask_blend_ps(_mm512_movepi32_mask(_mm512_castps_si512(s)), b, a);
  }
  // np.heaviside(s, 0): 1 where s > 0, 0 where s <= 0, s itself where it is NaN
  static FASTDL_INLINE reg heaviside0(reg s) {
    const reg nan = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q), s);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_GT_OQ), nan, set1(1.0f));
  }
  // 2^n for integral n in [-127, 127] (2^-127 comes out as 0)
  static FASTDL_INLINE reg pow2i(reg n) {
    __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
};
#elif defined(__AVX2__)
struct Vec {
  using reg = __m256;
  static constexpr int W = 8;
  static FASTDL_INLINE reg zero() { return _mm256_setzero_ps(); }
  static FASTDL_INLINE reg set1(float x) { return _mm256_set1_ps(x); }
  static FASTDL_INLINE reg load(const float* p) { return _mm256_load_ps(p); }  // 32-B aligned
  static FASTDL_INLINE reg loadu(const float* p) { return _mm256_loadu_ps(p); }
  static FASTDL_INLINE void store(float* p, reg v) { _mm256_store_ps(p, v); }
  static FASTDL_INLINE void storeu(float* p, reg v) { _mm256_storeu_ps(p, v); }
  using mask = __m256i;  // the first n lanes
  static FASTDL_INLINE mask first(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static FASTDL_INLINE reg loadu_n(const float* p, mask m) { return _mm256_maskload_ps(p, m); }
  static FASTDL_INLINE void storeu_n(float* p, reg v, mask m) { _mm256_maskstore_ps(p, m, v); }
  static FASTDL_INLINE reg fill_beyond(reg v, mask m, float x) {
    return _mm256_blendv_ps(set1(x), v, _mm256_castsi256_ps(m));
  }
  static FASTDL_INLINE float hmax(reg v) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
  }
  static FASTDL_INLINE float hsum(reg v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }
  static FASTDL_INLINE reg bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static FASTDL_INLINE reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static FASTDL_INLINE reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static FASTDL_INLINE reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static FASTDL_INLINE reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static FASTDL_INLINE reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static FASTDL_INLINE reg max(reg a, reg b) { return _mm256_max_ps(a, b); }  // b when either is NaN
  static FASTDL_INLINE reg abs(reg a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static FASTDL_INLINE reg select_neg(reg s, reg a, reg b) { return _mm256_blendv_ps(b, a, s); }
  static FASTDL_INLINE reg heaviside0(reg s) {
    return _mm256_or_ps(_mm256_and_ps(_mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_GT_OQ), set1(1.0f)),
                        _mm256_and_ps(_mm256_cmp_ps(s, s, _CMP_UNORD_Q), s));
  }
  static FASTDL_INLINE reg pow2i(reg n) {
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
};
#else
// Portable: GCC/Clang vector extensions (SSE2 on x86-64, NEON on ARM, scalar code elsewhere).
typedef float v4sf __attribute__((vector_size(16)));
typedef int32_t v4si __attribute__((vector_size(16)));
struct Vec {
  using reg = v4sf;
  static constexpr int W = 4;
  static FASTDL_INLINE reg zero() { return reg{0.0f, 0.0f, 0.0f, 0.0f}; }
  static FASTDL_INLINE reg set1(float x) { return reg{x, x, x, x}; }
  static FASTDL_INLINE reg load(const float* p) { return *reinterpret_cast<const reg*>(p); }  // 16-B aligned
  static FASTDL_INLINE reg loadu(const float* p) {
    reg v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static FASTDL_INLINE void store(float* p, reg v) { *reinterpret_cast<reg*>(p) = v; }
  static FASTDL_INLINE void storeu(float* p, reg v) { std::memcpy(p, &v, sizeof v); }
  using mask = int;  // the first n lanes
  static FASTDL_INLINE mask first(int n) { return n; }
  static FASTDL_INLINE reg loadu_n(const float* p, mask n) {
    reg v = zero();
    std::memcpy(&v, p, sizeof(float) * n);
    return v;
  }
  static FASTDL_INLINE void storeu_n(float* p, reg v, mask n) { std::memcpy(p, &v, sizeof(float) * n); }
  static FASTDL_INLINE reg fill_beyond(reg v, mask n, float x) {
    for (int i = n; i < W; ++i) v[i] = x;
    return v;
  }
  static FASTDL_INLINE float hmax(reg v) {
    float a = v[0] > v[1] ? v[0] : v[1], b = v[2] > v[3] ? v[2] : v[3];
    return a > b ? a : b;
  }
  static FASTDL_INLINE float hsum(reg v) { return (v[0] + v[1]) + (v[2] + v[3]); }
  static FASTDL_INLINE reg bcast(const float* p) { return set1(*p); }
  static FASTDL_INLINE reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static FASTDL_INLINE reg add(reg a, reg b) { return a + b; }
  static FASTDL_INLINE reg sub(reg a, reg b) { return a - b; }
  static FASTDL_INLINE reg mul(reg a, reg b) { return a * b; }
  static FASTDL_INLINE reg div(reg a, reg b) { return a / b; }
  static FASTDL_INLINE reg max(reg a, reg b) { return a > b ? a : b; }  // b when either is NaN
  static FASTDL_INLINE reg abs(reg a) { return (reg)((v4si)a & v4si{0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff}); }
  static FASTDL_INLINE reg select_neg(reg s, reg a, reg b) { return (v4si)s < v4si{0, 0, 0, 0} ? a : b; }
  static FASTDL_INLINE reg heaviside0(reg s) {
    return (reg)(((v4si)(s > zero()) & (v4si)set1(1.0f)) | ((v4si)(s != s) & (v4si)s));
  }
  static FASTDL_INLINE reg pow2i(reg n) {
    v4si e = __builtin_convertvector(n, v4si) + v4si{127, 127, 127, 127};
    return (reg)(e << 23);
  }
};
#endif

using reg = Vec::reg;
constexpr int kW = Vec::W;

// exp(x) for x <= 0 (Cephes expf: relative error ~2 ulp). Below -87.34 the result would be under
// float's normal range: it is then 0 (2^-127 is built as 0), as with flush-to-zero.
FASTDL_INLINE reg exp_nonpos(reg x) {
  x = Vec::max(Vec::set1(-88.0f), x);  // x second, so a NaN stays NaN
  reg n = Vec::mul(x, Vec::set1(1.44269504088896341f));
  n = Vec::sub(Vec::add(n, Vec::set1(12582912.0f)), Vec::set1(12582912.0f));  // round to nearest
  reg r = Vec::fmadd(n, Vec::set1(-0.693359375f), x);
  r = Vec::fmadd(n, Vec::set1(2.12194440e-4f), r);
  reg p = Vec::set1(1.9875691500e-4f);
  p = Vec::fmadd(p, r, Vec::set1(1.3981999507e-3f));
  p = Vec::fmadd(p, r, Vec::set1(8.3334519073e-3f));
  p = Vec::fmadd(p, r, Vec::set1(4.1665795894e-2f));
  p = Vec::fmadd(p, r, Vec::set1(1.6666665459e-1f));
  p = Vec::fmadd(p, r, Vec::set1(5.0000001201e-1f));
  p = Vec::fmadd(p, Vec::mul(r, r), Vec::add(r, Vec::set1(1.0f)));
  return Vec::mul(p, Vec::pow2i(n));
}

// sigmoid(x) = 1/(1+e^-x) = e^x/(1+e^x): with e = exp(-|x|) <= 1, (x < 0 ? e : 1) / (1 + e).
FASTDL_INLINE reg sigmoid_v(reg x) {
  reg e = exp_nonpos(Vec::sub(Vec::zero(), Vec::abs(x)));
  return Vec::div(Vec::select_neg(x, e, Vec::set1(1.0f)), Vec::add(Vec::set1(1.0f), e));
}

// tanh(|x|) = (1-t)/(1+t) with t = exp(-2|x|); below 0.625 Cephes' odd polynomial (no cancellation).
FASTDL_INLINE reg tanh_v(reg x) {
  reg ax = Vec::abs(x);
  reg one = Vec::set1(1.0f);
  reg t = exp_nonpos(Vec::mul(ax, Vec::set1(-2.0f)));
  reg big = Vec::div(Vec::sub(one, t), Vec::add(one, t));
  reg s = Vec::mul(x, x);
  reg p = Vec::set1(-5.70498872745e-3f);
  p = Vec::fmadd(p, s, Vec::set1(2.06390887954e-2f));
  p = Vec::fmadd(p, s, Vec::set1(-5.37397155531e-2f));
  p = Vec::fmadd(p, s, Vec::set1(1.33314422036e-1f));
  p = Vec::fmadd(p, s, Vec::set1(-3.33332819422e-1f));
  reg small = Vec::fmadd(Vec::mul(p, s), ax, ax);
  reg r = Vec::select_neg(Vec::sub(ax, Vec::set1(0.625f)), small, big);
  return Vec::select_neg(x, Vec::sub(Vec::zero(), r), r);
}

// out[i] = f(inp[i]) for i in [0, n), a vector at a time, the tail under a mask.
template <class F>
FASTDL_INLINE void map_vectors(float* out, const float* inp, int64_t n, F f) {
  int64_t i = 0;
  for (; i + kW <= n; i += kW) Vec::storeu(out + i, f(Vec::loadu(inp + i)));
  if (i < n) {
    const Vec::mask m = Vec::first(static_cast<int>(n - i));
    Vec::storeu_n(out + i, f(Vec::loadu_n(inp + i, m)), m);
  }
}

// ---- a short row in registers (softmax and cross-entropy over 10 classes)
// A row of n floats, (NV-1)*W < n <= NV*W, as NV vectors: all full but the last, which holds
// n - (NV-1)*W lanes under `tail` (Vec::first of that count) and zeros beyond.
template <int NV>
FASTDL_INLINE void load_row(reg (&v)[NV], const float* x, Vec::mask tail) {
  for (int j = 0; j < NV - 1; ++j) v[j] = Vec::loadu(x + j * kW);
  v[NV - 1] = Vec::loadu_n(x + (NV - 1) * kW, tail);
}
template <int NV>
FASTDL_INLINE void store_row(float* y, const reg (&v)[NV], Vec::mask tail) {
  for (int j = 0; j < NV - 1; ++j) Vec::storeu(y + j * kW, v[j]);
  Vec::storeu_n(y + (NV - 1) * kW, v[NV - 1], tail);
}
// The number of vectors a row of n floats takes when it is short enough for load_row (else 0).
constexpr int short_row_vectors(int64_t n) { return n <= kW ? 1 : n <= 2 * kW ? 2 : 0; }


// Sum over x[lo, hi) of x - x: 0 when every element is finite, NaN when one is NaN or ±Inf. Four vector
// sums side by side: one waited on each add's latency (3.2 us for a 128x784 batch, now 1.7).
inline float nonfinite_sum(const float* x, int64_t lo, int64_t hi) {
  reg acc[4] = {Vec::zero(), Vec::zero(), Vec::zero(), Vec::zero()};
  int64_t i = lo;
  for (; i + 4 * kW <= hi; i += 4 * kW)
    for (int j = 0; j < 4; ++j) {
      const reg v = Vec::loadu(x + i + j * kW);
      acc[j] = Vec::add(acc[j], Vec::sub(v, v));
    }
  float tail = 0.0f;
  for (; i < hi; i++) tail += x[i] - x[i];
  return Vec::hsum(Vec::add(Vec::add(acc[0], acc[1]), Vec::add(acc[2], acc[3]))) + tail;
}

// The activation act (Act) of a vector: the fused epilogues of gemm.cpp and conv.cpp.
FASTDL_INLINE reg activate(reg v, int act) {
  switch (act) {
    case ACT_RELU: return Vec::max(Vec::zero(), v);  // v second: a NaN stays NaN, like relu_forward
    case ACT_SIGMOID: return sigmoid_v(v);
    case ACT_TANH: return tanh_v(v);
    default: return v;
  }
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
