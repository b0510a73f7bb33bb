// linear.cpp - the dense layer, forward and backward, on top of gemm (csrc/gemm.cpp).
// Transposes are flags to gemm, absorbed by its packers: no transposed copy is ever made.
#include <cstdlib>

#include "kernel_common.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

// out (B,OC) = act(inp (B,C) · weight (OC,C)ᵀ + bias (OC)); bias nullable. batch_invariant: see matmul.
void linear_forward(float* out, const float* inp, const float* weight, const float* bias, int act, int64_t B,
                    int64_t C, int64_t OC, int batch_invariant) {
  matmul(out, inp, weight, bias, act, B, OC, C, /*trans_a=*/0, /*trans_b=*/1, /*accumulate=*/0, batch_invariant);
}

// linear_backward runs dweight and dinp side by side, one thread each, when each product takes at
// most this many flops (2 threads): below it one unsplit product per thread beats two split ones
// (measured in docs/kernels.md §6). With more threads the bound shrinks as 2/threads (a guess).
constexpr double kPairFlops = 64.0e6;

// dinp (B,C), dweight (OC,C), dbias (OC), dout (B,OC), inp (B,C), weight (OC,C); dinp, dbias nullable.
// From out = inp·weightᵀ + bias:
//   dweight [+]= doutᵀ · inp      (gemm with trans_a: dout is read as stored)
//   dbias   [+]= sum over rows of dout   (in the product's parallel region, each thread its rows)
//   dinp     =  dout · weight     (plain gemm), ⊙ input_act'(inp) when inp is an activation's output
// dweight and dinp take the same 2·B·C·OC flops: up to kPairFlops they run side by side, one thread
// each (dbias with dweight), each product unsplit; above it one after the other, each split.
void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t B, int64_t C, int64_t OC, int accumulate, int input_act) {
  auto weight_grads = [&] {
    if (dbias)
      gemm_tn_sums(dweight, dbias, dout, inp, OC, C, B, accumulate);
    else
      matmul(dweight, dout, inp, nullptr, ACT_NONE, OC, C, B, /*trans_a=*/1, /*trans_b=*/0, accumulate,
             /*batch_invariant=*/1);
  };
  auto input_grad = [&] {
    if (input_act != ACT_NONE)
      gemm_dact(dinp, dout, weight, inp, input_act, B, C, OC, 0, 0);
    else
      matmul(dinp, dout, weight, nullptr, ACT_NONE, B, C, OC, 0, 0, 0, /*batch_invariant=*/1);
  };
  const double flops = 2.0 * double(B) * double(C) * double(OC);
  const int nt = omp_in_parallel() ? 1 : team_threads();
  if (dinp && nt >= 2 && flops <= kPairFlops * 2.0 / nt) {
    parallel_region(2, [&](int t, int T) {
      if (t == 0) weight_grads();
      if (t == 1 || T < 2) input_grad();  // also right if the runtime gave 1 thread
    });
    return;
  }
  weight_grads();
  if (dinp) input_grad();
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
