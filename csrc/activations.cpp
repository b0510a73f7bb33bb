// activations.cpp - elementwise activations and their derivatives, and row-wise softmax.
// Plain loops under `omp simd`: this file is compiled once per ISA, so each loop becomes
// AVX-512, AVX2 or SSE2 code; parallel_chunks splits work above kParallelGrain elements.
#include "kernel_common.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

// inp, out, dinp, dout: (n)

// out = max(inp, 0)
void relu_forward(float* out, const float* inp, int64_t n) {
  parallel_chunks(n, [&](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
  });
}

// dinp = dout * [inp > 0]
void relu_backward(float* dinp, const float* dout, const float* inp, int64_t n) {
  parallel_chunks(n, [&](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) dinp[i] = inp[i] > 0.0f ? dout[i] : 0.0f;
  });
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
