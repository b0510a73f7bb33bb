// kernel_common.h - helpers shared by the kernel sources. Included only by csrc/*.cpp kernel files,
// which are compiled once per instruction set: everything here lives in fastdl::FASTDL_ISA_NS so no
// AVX-512 copy of an inline function can be picked by the linker for the generic path.
#pragma once
#include <cstdint>
#include <omp.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include "fastdl.h"

#ifndef FASTDL_ISA_NS
#error "kernel sources are compiled with -DFASTDL_ISA_NS=<isa> (see CMakeLists.txt)"
#endif

namespace fastdl {
namespace FASTDL_ISA_NS {

// Work below this many elements runs on one thread: a parallel region costs 1-2 us warm.
constexpr int64_t kParallelGrain = 32768;

inline int threads_for(int64_t work, int64_t grain = kParallelGrain) {
  int t = get_num_threads();
  int64_t by_work = work / grain;
  if (by_work < 1) return 1;
  return by_work < t ? static_cast<int>(by_work) : t;
}

// Flush denormals to zero while a kernel runs (they cost ~100x); MXCSR is per thread, so each
// parallel region sets it on entry and restores it on exit.
struct DenormalsOff {
#if defined(__SSE__) || defined(__x86_64__)
  unsigned saved;
  DenormalsOff() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
  ~DenormalsOff() { _mm_setcsr(saved); }
#endif
};

// Run body(lo, hi) over [0, n) split into one contiguous, 64-byte-aligned chunk per thread; below
// `grain` elements it runs inline on the calling thread with no parallel region at all.
template <class F>
inline void parallel_chunks(int64_t n, F&& body, int64_t grain = kParallelGrain) {
  int nt = threads_for(n, grain);
  if (nt <= 1) {
    DenormalsOff ftz;
    body(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    DenormalsOff ftz;
    int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
    int64_t per = ((n + T - 1) / T + 15) & ~int64_t(15);
    int64_t lo = t * per, hi = lo + per < n ? lo + per : n;
    if (lo < hi) body(lo, hi);
  }
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
