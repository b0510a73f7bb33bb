// machine.h - the benchmark-only natives (csrc/bench/machine.cpp): the machine's own limits, which
// bench/ measures the kernels against. Not product kernels: fastdl._C.bench binds them.
#pragma once
#include "fastdl.h"

// Compiled once per instruction set like the kernels, so declared in each ISA namespace (as kernels.inc is).
#define FASTDL_BENCH_DECLARATIONS                                                                      \
  /* Runs `iters` iterations of independent vector FMAs on each of `threads` threads, in inline asm */ \
  /* the compiler cannot delete; returns the floating-point operations done (2 per lane per FMA). */   \
  double fma_peak_run(int64_t iters, int threads);                                                     \
  /* STREAM triad a = b + s*c over n floats, on `threads` threads, split and stored as the maps. */    \
  void stream_triad(float* a, const float* b, const float* c, float s, int64_t n, int threads);

namespace fastdl {
namespace generic {
FASTDL_BENCH_DECLARATIONS
}
namespace avx2 {
FASTDL_BENCH_DECLARATIONS
}
namespace avx512 {
FASTDL_BENCH_DECLARATIONS
}
}  // namespace fastdl
#undef FASTDL_BENCH_DECLARATIONS
