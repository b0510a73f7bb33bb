// pool.cpp - 2-D pooling over NCHW float32 planes: max, average (count_include_pad), adaptive average.
//
// Every kernel treats the input as P = N*C independent planes of H*W floats and splits the planes
// between threads (parallel_chunks): a plane is computed by one thread, in an order fixed by the shape
// alone, so results never depend on the thread count, and the backward passes, which scatter into
// their own plane only, need no atomics.
//
// Max and average pooling compute one output row at a time, window offset by window offset: for each
// (kh, kw) of the window, one loop over the output columns whose input column is inside the image
// (padding is skipped, never read). Each output still meets its window's elements in row-major order,
// as a per-output loop would, so ties and NaN resolve as in PyTorch; the loop over the output columns
// is a plain loop the compiler vectorises (contiguous for stride 1, strided loads for stride 2).
#include <cmath>

#include "kernel_common.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Planes per thread: at least enough that a thread gets kParallelGrain elements of work.
inline int64_t plane_grain(int64_t per_plane) {
  const int64_t g = kParallelGrain / (per_plane > 0 ? per_plane : 1);
  return g > 1 ? g : 1;
}

// The output columns [lo, hi) whose input column ow*S + k - PAD lies in [0, W) (hi <= lo: none).
inline void valid_cols(int64_t k, int64_t S, int64_t PAD, int64_t W, int64_t OW, int64_t& lo, int64_t& hi) {
  const int64_t a = PAD - k;  // ow*S >= a
  lo = a > 0 ? (a + S - 1) / S : 0;
  const int64_t b = W - 1 + PAD - k;  // ow*S <= b
  hi = b < 0 ? 0 : min64(b / S + 1, OW);
}

// PyTorch's adaptive window: [floor(i*H/OH), ceil((i+1)*H/OH)).
inline int64_t adaptive_start(int64_t i, int64_t H, int64_t OH) { return (i * H) / OH; }
inline int64_t adaptive_end(int64_t i, int64_t H, int64_t OH) { return ((i + 1) * H + OH - 1) / OH; }

// One window offset of a max-pool output row: for ow in [lo, hi), v = xr[ow*S]; when v > o[ow] or v is
// NaN, o[ow] = v and a[ow] = base + ow*S. Branch-free bit operations (and restrict pointers), so the
// loop vectorises.
inline void max_step(float* __restrict o, int64_t* __restrict a, const float* __restrict xr, int64_t base,
                     int64_t S, int64_t lo, int64_t hi) {
#pragma omp simd
  for (int64_t ow = lo; ow < hi; ow++) {
    const float v = xr[ow * S], m = o[ow];
    const bool take = (v > m) | ((float_bits(v) & 0x7fffffffu) > 0x7f800000u);  // NaN: exponent all ones, mantissa != 0
    const int64_t mask = -static_cast<int64_t>(take);
    o[ow] = select(take, v, m);
    a[ow] = ((base + ow * S) & mask) | (a[ow] & ~mask);
  }
}

// max_step for the CNNs' pooling, 2 x 2 windows at stride 2 without padding, a whole output row at once:
// rows r0 and r1 of the input (base: r0's flat index in its plane), the window's four elements met in
// row-major order (so ties and NaN resolve as above). The stride is a constant: the loop vectorises.
inline void max_row_2x2(float* __restrict o, int64_t* __restrict a, const float* __restrict r0,
                        const float* __restrict r1, int64_t base, int64_t W, int64_t OW) {
  int64_t ow = 0;
#if defined(__AVX512F__)
  // 16 outputs at a time: the even and odd columns of 32 inputs by two permutes per row; the choice as a
  // lane index 0-3, turned into the flat index in 32 bits (used while the row's indices stay below 2^31)
  if (base + 2 * W < (int64_t(1) << 31)) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i lane2 = _mm512_add_epi32(even, _mm512_set1_epi32(static_cast<int>(base)));
    for (; ow < OW; ow += 16) {  // the last block under masks (LeNet's and the VGG net's rows are 14 wide)
      const int nv = OW - ow < 16 ? static_cast<int>(OW - ow) : 16;
      const __mmask16 lo = static_cast<__mmask16>(nv >= 8 ? 0xffffu : (1u << (2 * nv)) - 1u);
      const __mmask16 hi = static_cast<__mmask16>(nv <= 8 ? 0u : (1u << (2 * nv - 16)) - 1u);
      const __mmask16 out = static_cast<__mmask16>((1u << nv) - 1u);
      const __m512 a0 = _mm512_maskz_loadu_ps(lo, r0 + 2 * ow), a1 = _mm512_maskz_loadu_ps(hi, r0 + 2 * ow + 16);
      const __m512 b0 = _mm512_maskz_loadu_ps(lo, r1 + 2 * ow), b1 = _mm512_maskz_loadu_ps(hi, r1 + 2 * ow + 16);
      const __m512 e[4] = {_mm512_permutex2var_ps(a0, even, a1), _mm512_permutex2var_ps(a0, odd, a1),
                           _mm512_permutex2var_ps(b0, even, b1), _mm512_permutex2var_ps(b0, odd, b1)};
      __m512 m = e[0];
      const __m512i at = _mm512_add_epi32(lane2, _mm512_set1_epi32(static_cast<int>(2 * ow)));
      const int step[4] = {0, 1, static_cast<int>(W), static_cast<int>(W + 1)};
      __m512i pick = at;
      for (int q = 1; q < 4; q++) {  // replaced when greater or NaN, in row-major order
        const __mmask16 t = _mm512_cmp_ps_mask(e[q], m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(e[q], e[q], _CMP_UNORD_Q);
        m = _mm512_mask_blend_ps(t, m, e[q]);
        pick = _mm512_mask_blend_epi32(t, pick, _mm512_add_epi32(at, _mm512_set1_epi32(step[q])));
      }
      _mm512_mask_storeu_ps(o + ow, out, m);
      _mm512_mask_storeu_epi64(a + ow, static_cast<__mmask8>(out), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(pick)));
      _mm512_mask_storeu_epi64(a + ow + 8, static_cast<__mmask8>(out >> 8),
                               _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(pick, 1)));
    }
  }
#endif
  for (; ow < OW; ow++) {
    const float e0 = r0[2 * ow], e1 = r0[2 * ow + 1], e2 = r1[2 * ow], e3 = r1[2 * ow + 1];
    float m = e0;
    int sel = 0;  // which of the four: 1 and 3 one column right, 2 and 3 one row down
    int t = (e1 > m) | (e1 != e1);  // branch-free selects (random data mispredicts branches)
    m = select(t, e1, m);
    sel = t ? 1 : sel;
    t = (e2 > m) | (e2 != e2);
    m = select(t, e2, m);
    sel = (sel & (t - 1)) | (2 & -t);
    t = (e3 > m) | (e3 != e3);
    m = select(t, e3, m);
    sel = (sel & (t - 1)) | (3 & -t);
    o[ow] = m;
    a[ow] = base + 2 * ow + (sel & 1) + (sel >> 1) * W;
  }
}

}  // namespace

// inp: (N,C,H,W); out, argmax: (N,C,OH,OW), argmax the flat index ih*W + iw of each maximum in its
// input plane (kept for backward). Window of output (oh, ow): rows oh*SH - PH + [0, KH), columns
// ow*SW - PW + [0, KW), the part outside the image being -inf padding. As PyTorch's CPU kernel:
// out = max over the window in row-major order, replaced when `v > max || isnan(v)` (first index on
// ties, the last NaN wins); a window of -inf only gives -inf at the window's first element inside
// the image. Requires OH, OW >= 1 and PH <= KH/2, PW <= KW/2 (every window meets the image).
void max_pool2d_forward(float* out, int64_t* argmax, const float* inp, int64_t N, int64_t C, int64_t H,
                        int64_t W, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                        int64_t OH, int64_t OW) {
  const int64_t HW = H * W, OHW = OH * OW;
  parallel_chunks(
      N * C,
      [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; p++) {
          const float* x = inp + p * HW;
          if (KH == 2 && KW == 2 && SH == 2 && SW == 2 && PH == 0 && PW == 0) {
            for (int64_t oh = 0; oh < OH; oh++)
              max_row_2x2(out + p * OHW + oh * OW, argmax + p * OHW + oh * OW, x + 2 * oh * W, x + (2 * oh + 1) * W,
                          2 * oh * W, W, OW);
            continue;
          }
          for (int64_t oh = 0; oh < OH; oh++) {
            float* o = out + p * OHW + oh * OW;
            int64_t* a = argmax + p * OHW + oh * OW;
            const int64_t h0 = oh * SH - PH;
            const int64_t hs = max64(h0, 0), he = min64(h0 + KH, H);
            for (int64_t ow = 0; ow < OW; ow++) {
              o[ow] = -__builtin_inff();
              a[ow] = hs * W + max64(ow * SW - PW, 0);
            }
            for (int64_t ih = hs; ih < he; ih++) {
              const float* xr = x + ih * W;
              for (int64_t kw = 0; kw < KW; kw++) {
                int64_t lo, hi;
                valid_cols(kw, SW, PW, W, OW, lo, hi);
                const int64_t off = kw - PW;  // input column ow*SW + off
                const int64_t base = ih * W + off;
                max_step(o, a, xr + off, base, SW, lo, hi);
              }
            }
          }
        }
      },
      plane_grain(HW + 2 * OHW));
}

// dout, argmax: (N,C,OH,OW); dinp: (N,C,H,W). From out = inp[argmax] (per plane):
// dinp = 0, then dinp[argmax] += dout, output by output in row-major order. An index outside [0, H*W)
// is skipped; the return value is the flat position in argmax of the first such index, or -1.
int64_t max_pool2d_backward(float* dinp, const float* dout, const int64_t* argmax, int64_t N, int64_t C,
                            int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const int64_t HW = H * W, OHW = OH * OW, P = N * C;
  std::atomic<int64_t> bad{-1};  // the lowest bad position (planes are split, so compare before storing)
  parallel_chunks(
      P,
      [&](int64_t p0, int64_t p1) {
        int64_t first_bad = -1;
        for (int64_t p = p0; p < p1; p++) {
          float* dx = dinp + p * HW;
          const float* d = dout + p * OHW;
          const int64_t* a = argmax + p * OHW;
          std::memset(dx, 0, HW * sizeof(float));
          for (int64_t j = 0; j < OHW; j++) {
            const int64_t i = a[j];
            if (static_cast<uint64_t>(i) < static_cast<uint64_t>(HW))
              dx[i] += d[j];
            else if (first_bad < 0)
              first_bad = p * OHW + j;
          }
        }
        if (first_bad >= 0) {
          int64_t cur = bad.load();
          while ((cur < 0 || first_bad < cur) && !bad.compare_exchange_weak(cur, first_bad)) {
          }
        }
      },
      plane_grain(HW + 2 * OHW));
  return bad.load();
}

// inp: (N,C,H,W); out: (N,C,OH,OW). Windows as in max_pool2d_forward; with count_include_pad (PyTorch's
// default) and no ceil mode every window counts KH*KW elements, padding included:
// out = (Σ of the window's elements inside the image) / (KH*KW), summed in float in row-major order.
void avg_pool2d_forward(float* out, const float* inp, int64_t N, int64_t C, int64_t H, int64_t W, int64_t KH,
                        int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t OH, int64_t OW) {
  const int64_t HW = H * W, OHW = OH * OW;
  const float div = static_cast<float>(KH * KW);
  parallel_chunks(
      N * C,
      [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; p++) {
          const float* x = inp + p * HW;
          for (int64_t oh = 0; oh < OH; oh++) {
            float* o = out + p * OHW + oh * OW;
            const int64_t h0 = oh * SH - PH;
            const int64_t hs = max64(h0, 0), he = min64(h0 + KH, H);
            for (int64_t ow = 0; ow < OW; ow++) o[ow] = 0.0f;
            for (int64_t ih = hs; ih < he; ih++) {
              const float* xr = x + ih * W;
              for (int64_t kw = 0; kw < KW; kw++) {
                int64_t lo, hi;
                valid_cols(kw, SW, PW, W, OW, lo, hi);
                const int64_t off = kw - PW;
#pragma omp simd
                for (int64_t ow = lo; ow < hi; ow++) o[ow] += xr[ow * SW + off];
              }
            }
#pragma omp simd
            for (int64_t ow = 0; ow < OW; ow++) o[ow] /= div;
          }
        }
      },
      plane_grain(HW + OHW));
}

// dout: (N,C,OH,OW); dinp: (N,C,H,W). From out = Σ window / (KH*KW): dinp = 0, then each input element
// inside a window gets dout/(KH*KW), output row by output row (an order fixed by the shape).
void avg_pool2d_backward(float* dinp, const float* dout, int64_t N, int64_t C, int64_t H, int64_t W, int64_t KH,
                         int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t OH, int64_t OW) {
  const int64_t HW = H * W, OHW = OH * OW;
  const float div = static_cast<float>(KH * KW);
  parallel_chunks(
      N * C,
      [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; p++) {
          float* dx = dinp + p * HW;
          std::memset(dx, 0, HW * sizeof(float));
          for (int64_t oh = 0; oh < OH; oh++) {
            const float* d = dout + p * OHW + oh * OW;
            const int64_t h0 = oh * SH - PH;
            const int64_t hs = max64(h0, 0), he = min64(h0 + KH, H);
            for (int64_t ih = hs; ih < he; ih++) {
              float* dr = dx + ih * W;
              for (int64_t kw = 0; kw < KW; kw++) {
                int64_t lo, hi;
                valid_cols(kw, SW, PW, W, OW, lo, hi);
                const int64_t off = kw - PW;
                // distinct input columns for distinct ow (SW >= 1): no dependence between iterations
#pragma omp simd
                for (int64_t ow = lo; ow < hi; ow++) dr[ow * SW + off] += d[ow] / div;
              }
            }
          }
        }
      },
      plane_grain(HW + OHW));
}

// inp: (N,C,H,W); out: (N,C,OH,OW). Output (oh, ow) averages rows [floor(oh*H/OH), ceil((oh+1)*H/OH))
// and columns [floor(ow*W/OW), ceil((ow+1)*W/OW)) (PyTorch's windows), summed in double.
// OH = OW = 1 is global average pooling: one contiguous sum per plane.
void adaptive_avg_pool2d_forward(float* out, const float* inp, int64_t N, int64_t C, int64_t H, int64_t W,
                                 int64_t OH, int64_t OW) {
  const int64_t HW = H * W, OHW = OH * OW;
  parallel_chunks(
      N * C,
      [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; p++) {
          const float* x = inp + p * HW;
          float* o = out + p * OHW;
          if (OHW == 1) {
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (int64_t i = 0; i < HW; i++) s += x[i];
            o[0] = static_cast<float>(s / static_cast<double>(HW));
            continue;
          }
          for (int64_t oh = 0; oh < OH; oh++) {
            const int64_t hs = adaptive_start(oh, H, OH), he = adaptive_end(oh, H, OH);
            for (int64_t ow = 0; ow < OW; ow++) {
              const int64_t ws = adaptive_start(ow, W, OW), we = adaptive_end(ow, W, OW);
              double s = 0.0;
              for (int64_t ih = hs; ih < he; ih++)
                for (int64_t iw = ws; iw < we; iw++) s += x[ih * W + iw];
              o[oh * OW + ow] = static_cast<float>(s / static_cast<double>((he - hs) * (we - ws)));
            }
          }
        }
      },
      plane_grain(HW + OHW));
}

// dout: (N,C,OH,OW); dinp: (N,C,H,W). From out = Σ window / count: dinp = 0, then each element of the
// window of (oh, ow) gets dout/count, in row-major output order (adaptive windows may overlap).
void adaptive_avg_pool2d_backward(float* dinp, const float* dout, int64_t N, int64_t C, int64_t H, int64_t W,
                                  int64_t OH, int64_t OW) {
  const int64_t HW = H * W, OHW = OH * OW;
  parallel_chunks(
      N * C,
      [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; p++) {
          float* dx = dinp + p * HW;
          const float* d = dout + p * OHW;
          if (OHW == 1) {
            const float g = d[0] / static_cast<float>(HW);
#pragma omp simd
            for (int64_t i = 0; i < HW; i++) dx[i] = g;
            continue;
          }
          std::memset(dx, 0, HW * sizeof(float));
          for (int64_t oh = 0; oh < OH; oh++) {
            const int64_t hs = adaptive_start(oh, H, OH), he = adaptive_end(oh, H, OH);
            for (int64_t ow = 0; ow < OW; ow++) {
              const int64_t ws = adaptive_start(ow, W, OW), we = adaptive_end(ow, W, OW);
              const float g = d[oh * OW + ow] / static_cast<float>((he - hs) * (we - ws));
              for (int64_t ih = hs; ih < he; ih++)
                for (int64_t iw = ws; iw < we; iw++) dx[ih * W + iw] += g;
            }
          }
        }
      },
      plane_grain(HW + OHW));
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
