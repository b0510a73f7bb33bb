// machine.cpp - the machine's own limits, measured by bench/: FMA peak and STREAM-triad bandwidth.
// Benchmark-only (declared in machine.h, bound as fastdl._C.bench), apart from the product's kernels.
#include "bench/machine.h"
#include "kernel_common.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

// One thread's FMA loop. The accumulators form independent chains (FMA latency x ports needs >= 8);
// inline asm keeps every FMA in the binary. Returns flops done.
static double fma_loop(int64_t iters) {
  if (iters <= 0) return 0.0;
#if defined(__AVX512F__)
  __asm__ volatile(
      "vxorps %%zmm0, %%zmm0, %%zmm0\n\t"
      "vmovaps %%zmm0, %%zmm1\n\t"
      "1:\n\t"
      "vfmadd231ps %%zmm0, %%zmm1, %%zmm2\n\t"
      "vfmadd231ps %%zmm0, %%zmm1, %%zmm3\n\t"
      "vfmadd231ps %%zmm0, %%zmm1, %%zmm4\n\t"
      "vfmadd231ps %%zmm0, %%zmm1, %%zmm5\n\t"
      "vfmadd231ps %%zmm0, %%zmm1, %%zmm6\n\t"
      "vfmadd231ps %%zmm0, %%zmm1, %%zmm7\n\t"
      "vfmadd231ps %%zmm0, %%zmm1, %%zmm8\n\t"
      "vfmadd231ps %%zmm0, %%zmm1, %%zmm9\n\t"
      "vfmadd231ps %%zmm0, %%zmm1, %%zmm10\n\t"
      "vfmadd231ps %%zmm0, %%zmm1, %%zmm11\n\t"
      "vfmadd231ps %%zmm0, %%zmm1, %%zmm12\n\t"
      "vfmadd231ps %%zmm0, %%zmm1, %%zmm13\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(iters)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
        "xmm12", "xmm13", "cc");
  return 0.0;  // the caller counts: 12 FMAs x 16 lanes x 2
#elif defined(__AVX2__) && defined(__FMA__)
  __asm__ volatile(
      "vxorps %%ymm0, %%ymm0, %%ymm0\n\t"
      "vmovaps %%ymm0, %%ymm1\n\t"
      "1:\n\t"
      "vfmadd231ps %%ymm0, %%ymm1, %%ymm2\n\t"
      "vfmadd231ps %%ymm0, %%ymm1, %%ymm3\n\t"
      "vfmadd231ps %%ymm0, %%ymm1, %%ymm4\n\t"
      "vfmadd231ps %%ymm0, %%ymm1, %%ymm5\n\t"
      "vfmadd231ps %%ymm0, %%ymm1, %%ymm6\n\t"
      "vfmadd231ps %%ymm0, %%ymm1, %%ymm7\n\t"
      "vfmadd231ps %%ymm0, %%ymm1, %%ymm8\n\t"
      "vfmadd231ps %%ymm0, %%ymm1, %%ymm9\n\t"
      "vfmadd231ps %%ymm0, %%ymm1, %%ymm10\n\t"
      "vfmadd231ps %%ymm0, %%ymm1, %%ymm11\n\t"
      "vfmadd231ps %%ymm0, %%ymm1, %%ymm12\n\t"
      "vfmadd231ps %%ymm0, %%ymm1, %%ymm13\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(iters)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
        "xmm12", "xmm13", "cc");
  return 0.0;
#elif defined(__x86_64__)
  // SSE2 has no FMA: a multiply and an add per lane, 12 independent chains.
  __asm__ volatile(
      "xorps %%xmm0, %%xmm0\n\t"
      "1:\n\t"
      "mulps %%xmm0, %%xmm2\n\t" "addps %%xmm0, %%xmm3\n\t"
      "mulps %%xmm0, %%xmm4\n\t" "addps %%xmm0, %%xmm5\n\t"
      "mulps %%xmm0, %%xmm6\n\t" "addps %%xmm0, %%xmm7\n\t"
      "mulps %%xmm0, %%xmm8\n\t" "addps %%xmm0, %%xmm9\n\t"
      "mulps %%xmm0, %%xmm10\n\t" "addps %%xmm0, %%xmm11\n\t"
      "mulps %%xmm0, %%xmm12\n\t" "addps %%xmm0, %%xmm13\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(iters)
      :
      : "xmm0", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
        "xmm13", "cc");
  return 0.0;
#else
  volatile float sink = 0.0f;
  float acc[12] = {0};
  for (int64_t i = 0; i < iters; i++)
    for (int j = 0; j < 12; j++) acc[j] = acc[j] * 0.999f + 1e-3f;
  for (int j = 0; j < 12; j++) sink = sink + acc[j];
  return 0.0;
#endif
}

// Flops per loop iteration of fma_loop on this ISA.
static constexpr double kFlopsPerIter =
#if defined(__AVX512F__)
    12 * 16 * 2;
#elif defined(__AVX2__) && defined(__FMA__)
    12 * 8 * 2;
#else
    12 * 4;  // 6 mulps + 6 addps, 4 lanes
#endif

double fma_peak_run(int64_t iters, int threads) {
  if (threads < 1) threads = 1;
  if (threads > available_cpus()) threads = available_cpus();
#pragma omp parallel num_threads(threads)
  fma_loop(iters);
  return kFlopsPerIter * static_cast<double>(iters) * threads;
}

// a (n) = b (n) + s * c (n)
// Split and stored as fastdl's elementwise maps are (map_chunks: chunks on a's cache lines, streaming
// stores above kStreamBytes), so that a kernel and the limit it is measured against write alike.
void stream_triad(float* a, const float* b, const float* c, float s, int64_t n, int threads) {
  if (threads > available_cpus()) threads = available_cpus();
  map_chunks_on(threads < 1 ? 1 : threads, 3, a, n, [&](int64_t lo, int64_t hi, float* y) {
    const float *x = b + lo, *z = c + lo;
#pragma omp simd
    for (int64_t i = 0; i < hi - lo; i++) y[i] = x[i] + s * z[i];
  });
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
