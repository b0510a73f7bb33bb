// linear.cpp - the dense layer, forward and backward, on top of gemm (csrc/gemm.cpp).
// Transposes are flags to gemm, absorbed by its packers: no transposed copy is ever made.
#include "kernel_common.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

// out (B,OC) = act(inp (B,C) · weight (OC,C)ᵀ + bias (OC)); bias nullable.
void linear_forward(float* out, const float* inp, const float* weight, const float* bias, int act, int64_t B,
                    int64_t C, int64_t OC) {
  gemm(out, inp, weight, bias, act, B, OC, C, /*trans_a=*/0, /*trans_b=*/1, /*accumulate=*/0);
}

// dinp (B,C), dweight (OC,C), dbias (OC), dout (B,OC), inp (B,C), weight (OC,C); dinp, dbias nullable.
// From out = inp·weightᵀ + bias:
//   dweight [+]= doutᵀ · inp      (gemm with trans_a: dout is read as stored)
//   dinp     =  dout · weight     (plain gemm)
//   dbias   [+]= sum over rows of dout
// Three nests with different owners (dweight by rows of OC, dinp by rows of B, dbias by columns).
void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t B, int64_t C, int64_t OC, int accumulate) {
  gemm(dweight, dout, inp, nullptr, ACT_NONE, OC, C, B, /*trans_a=*/1, /*trans_b=*/0, accumulate);
  if (dinp) gemm(dinp, dout, weight, nullptr, ACT_NONE, B, C, OC, 0, 0, 0);
  if (!dbias) return;
  // Column sums in double, 256 columns at a time (the accumulators stay in L1), rows streamed.
  const int64_t grain = kParallelGrain / B > 16 ? kParallelGrain / B : 16;  // columns per thread
  parallel_chunks(
      OC,
      [&](int64_t lo, int64_t hi) {
        constexpr int64_t kCols = 256;
        double acc[kCols];
        for (int64_t j0 = lo; j0 < hi; j0 += kCols) {
          const int64_t n = hi - j0 < kCols ? hi - j0 : kCols;
          for (int64_t j = 0; j < n; ++j) acc[j] = accumulate ? dbias[j0 + j] : 0.0;
          for (int64_t b = 0; b < B; ++b) {
            const float* row = dout + b * OC + j0;
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) acc[j] += row[j];
          }
          for (int64_t j = 0; j < n; ++j) dbias[j0 + j] = static_cast<float>(acc[j]);
        }
      },
      grain);
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
