// kernel_common.h - helpers shared by the kernel sources. Included only by csrc/*.cpp kernel files,
// which are compiled once per instruction set: everything here lives in fastdl::FASTDL_ISA_NS so no
// AVX-512 copy of an inline function can be picked by the linker for the generic path.
#pragma once
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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

// Inside a parallel region (two kernels run side by side, as linear_backward's products) a kernel
// runs on its caller's thread alone.
inline int threads_for(int64_t work, int64_t grain = kParallelGrain) {
  if (omp_in_parallel()) return 1;
  int t = team_threads();
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

// Run body(t, T) on a team of T <= nt threads (t = 0 .. T-1), or inline as body(0, 1) when nt is 1;
// every parallel kernel enters OpenMP here. Denormals are flushed on each thread. The region reports
// to the contention guard (csrc/cpu.cpp) how long the master waited for the others: the latest
// start of another thread after the region began, or the latest end of another thread after the
// master's own end, whichever is larger (a region with barriers inside sees only the first).
template <class F>
inline void parallel_region(int nt, F&& body) {
  if (nt <= 1) {
    DenormalsOff ftz;
    body(0, 1);
    return;
  }
  // when each thread started and ended; threads past kTimed are not timed (they start together)
  constexpr int kTimed = 8;
  struct alignas(64) Times {
    int64_t start, end;
  };
  Times times[kTimed];
  const int timed = nt < kTimed ? nt : kTimed;
  for (int t = 0; t < timed; t++) times[t] = Times{0, 0};
  const int64_t t0 = now_ns();
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int64_t s = t == 0 ? t0 : now_ns();
    {
      DenormalsOff ftz;
      body(t, omp_get_num_threads());
    }
    if (t < kTimed) times[t] = Times{s, now_ns()};
  }
  int64_t start_wait = 0, end_wait = 0, end = times[0].end;
  for (int t = 1; t < timed; t++) {  // threads the runtime did not give (T < nt) left theirs unset
    if (times[t].start < t0 || times[t].end < times[t].start) continue;
    start_wait = times[t].start - t0 > start_wait ? times[t].start - t0 : start_wait;
    end_wait = times[t].end - times[0].end > end_wait ? times[t].end - times[0].end : end_wait;
    end = times[t].end > end ? times[t].end : end;
  }
  team_report(end - t0, start_wait > end_wait ? start_wait : end_wait);
}

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
  parallel_region(nt, [&](int64_t t, int64_t T) {
    int64_t per = ((n + T - 1) / T + 15) & ~int64_t(15);
    int64_t lo = t * per, hi = lo + per < n ? lo + per : n;
    if (lo < hi) body(lo, hi);
  });
}

// ---- elementwise maps: aligned chunks, streaming stores for arrays beyond the caches
// A map whose arrays (inputs and output) hold more than this many bytes together - half again the
// 32 MiB L3 of this Zen 4 - writes its output with non-temporal stores, which skip the read of each
// output line that a normal store makes first (write-allocate). 2 threads, same-run medians against
// normal stores: 16M floats relu 1.46x, relu_backward 1.40x, dropout 1.44x, triad 1.27x faster;
// 5M floats (40 MB) relu 0.79x but relu_backward (60 MB) 1.39x; inside the caches streaming stores
// lose outright (1M floats: relu 168 -> 107 GB/s), as docs/kernels.md §8 records.
constexpr int64_t kStreamBytes = int64_t(48) << 20;
// Floats computed into an L1 buffer per streaming copy: 64-128 measured best at 16M floats (1024:
// relu 1.35x, 4096: 0.94x - the buffer's lines then leave L1 before they are copied).
constexpr int64_t kStreamBlock = 128;

// dst[0, n) = src[0, n) with streaming stores; dst is 64-B aligned, src a 64-B aligned buffer.
inline void stream_copy(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_load_ps(src + i));
#elif defined(__AVX__)
  for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_load_ps(src + i));
#elif defined(__SSE__)
  for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_load_ps(src + i));
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

// Floats from p to the next 64-B line (0 if p is on one).
inline int64_t to_line(const float* p) { return static_cast<int64_t>((-reinterpret_cast<uintptr_t>(p) & 63u) / 4u); }

// body(lo, hi, y) computes elements [lo, hi) of an elementwise map into y[0, hi - lo), where y is
// out + lo or a scratch buffer. map_chunks_on runs it over [0, n) on nt threads, each thread's range
// starting on a 64-B line of out (thread 0 first does the few elements before the first line on
// their own), so every vector store is aligned and no line is written by two threads (NumPy's
// buffers sit at 16 mod 64: 7-10% on L2-resident streams, docs/kernels.md §8). When the map's `arrays`
// arrays of n floats pass kStreamBytes, each range is computed kStreamBlock floats at a time into an
// L1 buffer and streamed to out.
// The result never depends on the split: each element is a function of its own inputs.
template <class F>
inline void map_chunks_on(int nt, int arrays, float* out, int64_t n, F&& body) {
  const bool floats_aligned = (reinterpret_cast<uintptr_t>(out) & 3u) == 0;
  const bool stream = n * arrays * int64_t(sizeof(float)) > kStreamBytes && floats_aligned;
  const int64_t head = floats_aligned ? to_line(out) : 0;
  auto range = [&](int64_t lo, int64_t hi) {
    if (lo < hi && head && lo < head) {  // thread 0's part line
      const int64_t e = head < hi ? head : hi;
      body(lo, e, out + lo);
      lo = e;
    }
    if (!stream) {
      if (lo < hi) body(lo, hi, out + lo);
      return;
    }
    alignas(64) float buf[kStreamBlock];
    for (; lo < hi; lo += kStreamBlock) {
      const int64_t e = lo + kStreamBlock < hi ? lo + kStreamBlock : hi;
      body(lo, e, buf);
      stream_copy(out + lo, buf, e - lo);
    }
#if defined(__SSE__) || defined(__x86_64__)
    _mm_sfence();  // streaming stores are weakly ordered: make them visible before the region ends
#endif
  };
  if (nt <= 1 || n < 64 * nt) {
    DenormalsOff ftz;
    range(0, n);
    return;
  }
  parallel_region(nt, [&](int64_t t, int64_t T) {
    const int64_t per = ((n - head + T - 1) / T + 15) & ~int64_t(15);
    const int64_t lo = t == 0 ? 0 : (head + t * per < n ? head + t * per : n);
    const int64_t hi = head + (t + 1) * per < n ? head + (t + 1) * per : n;
    range(lo, hi);
  });
}

// map_chunks_on with threads_for(n, grain) threads.
template <class F>
inline void map_chunks(int arrays, float* out, int64_t n, F&& body, int64_t grain = kParallelGrain) {
  map_chunks_on(threads_for(n, grain), arrays, out, n, body);
}

// ---- vectorisable math ----
// Plain float/int arithmetic in inline functions, so a `#pragma omp simd` loop that calls them
// compiles to AVX2 / AVX-512 code (glibc's expf/logf stay scalar calls without -ffast-math, which
// fastdl never uses). Denormal inputs/results are not treated specially: kernels run under FTZ/DAZ.

inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// c ? a : b, with both a and b already computed, as bit operations. A plain `?:` on computed floats lets
// GCC move the computation into a branch, and under its default -ftrapping-math it then will not
// if-convert the branch, so the loop stays scalar; integer and/or/andnot never trap.
inline float select(bool c, float a, float b) {
  uint32_t m = 0u - static_cast<uint32_t>(c);
  return bits_float((float_bits(a) & m) | (float_bits(b) & ~m));
}

// np.heaviside(x, 0): 1 for x > 0, 0 for x <= 0, x itself for NaN. relu's derivative, so that a NaN
// input gives a NaN gradient (as Vec::heaviside0 in the GEMM epilogue).
inline float heaviside0(float x) { return select(x > 0.0f, 1.0f, select(x != x, x, 0.0f)); }

// exp(x), Cephes expf's method: x = n·ln2 + r with n = round(x·log2 e) and |r| <= ln2/2 (ln2 split
// in two, Cody-Waite), exp(r) = 1 + r + r²·P(r) with a degree-5 minimax P, 2^n written into the
// exponent bits. Max relative error 8.5e-8 (under 1 ulp) over every float in [-87.33, 88.72], on the
// generic and AVX2 paths (measured exhaustively by tests/native/math_accuracy.cpp).
// x < ln(FLT_MIN) = -87.34 gives 0 (the true value is below the smallest normal float), x > ln(FLT_MAX)
// gives +inf, NaN gives NaN.
inline float simd_exp(float x) {
  const float hi = 88.72283935546875f, lo = -87.33654022216797f;
  // Clamps as bit selects: with `?:` GCC threads the clamped paths into constants and the loop
  // stays scalar. A NaN fails both tests and stays NaN.
  float xc = select(x > hi, hi, x);
  xc = select(xc < lo, lo, xc);
  // Adding 1.5·2^23 rounds x·log2 e to an integer n held in the low mantissa bits of t.
  const float shifter = 12582912.0f;
  float t = xc * 1.44269504088896341f + shifter;
  float n = t - shifter;
  int32_t ni = static_cast<int32_t>(float_bits(t) - float_bits(shifter));  // n, in [-126, 128]
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // 2^n: the float exponent field stops at 2^127, so n = 128 is done as 2^127 · 2.
  int32_t e = ni > 127 ? 127 : ni;
  float y = p * bits_float(static_cast<uint32_t>(e + 127) << 23);
  y = select(ni > 127, y * 2.0f, y);
  y = select(x < lo, 0.0f, y);
  return select(x > hi, __builtin_inff(), y);
}

// log(x) for a positive normal float x, Cephes logf: x = m·2^e with m in [sqrt(1/2), sqrt(2)),
// log(m) = f - f²/2 + f³·P(f) with f = m - 1 and a degree-8 P, ln2 split in two. Max relative error
// 8.2e-8 on [0.5, 4] (measured). Zero, negative, denormal, inf and NaN inputs are not handled: no
// caller passes them.
inline float simd_log(float x) {
  uint32_t u = float_bits(x);
  int32_t e = static_cast<int32_t>(u >> 23) - 126;                  // x = m·2^e, m in [0.5, 1)
  float m = bits_float((u & 0x007fffffu) | 0x3f000000u);
  bool low = m < 0.707106781186547524f;
  float ef = static_cast<float>(e - static_cast<int32_t>(low));
  float f = select(low, m + m - 1.0f, m - 1.0f);
  float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y = y + ef * -2.12194440e-4f;
  y = y - 0.5f * z;
  return f + y + ef * 0.693359375f;
}

// log1p(z) for finite z >= 0 (it gets exp(-|x|) in [0, 1]): u = 1 + z rounds, and
// log(u)·z/(u - 1) cancels that rounding (Goldberg's trick); u == 1 means log1p(z) = z to float precision.
// Max relative error 1.8e-7 on [0, 1] (measured).
inline float simd_log1p(float z) {
  float u = 1.0f + z;
  float d = u - 1.0f;  // exact
  float ratio = z / select(d == 0.0f, 1.0f, d);
  return select(d == 0.0f, z, simd_log(u) * ratio);
}

// The activation act (Act) of v in double: the plain reference loops' epilogue (gemm.cpp, conv.cpp).
inline double activate_ref(double v, int act) {
  if (act == ACT_RELU) return 0.0 > v ? 0.0 : v;  // NaN stays NaN
  if (act == ACT_SIGMOID) return v >= 0.0 ? 1.0 / (1.0 + std::exp(-v)) : std::exp(v) / (1.0 + std::exp(v));
  if (act == ACT_TANH) return std::tanh(v);
  return v;
}

// Scratch space of the thread that holds it (thread_local): grown on demand, 4 KiB aligned, kept for later
// calls; get() returns nullptr when it cannot be had (the kernels then fall back to plain loops).
struct Arena {
  float* p = nullptr;
  size_t cap = 0;  // floats
  ~Arena() { std::free(p); }
  float* get(size_t n) {
    if (n > cap) {
      std::free(p);
      size_t bytes = (n * sizeof(float) + 4095) & ~size_t(4095);
      p = static_cast<float*>(std::aligned_alloc(4096, bytes));
      cap = p ? bytes / sizeof(float) : 0;
    }
    return p;
  }
};

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
