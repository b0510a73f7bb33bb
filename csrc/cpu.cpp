// cpu.cpp - run-time choices: which instruction set the kernels use, and how many threads.
// Compiled once, with the baseline flags, so it runs on any x86-64 CPU.
#include <atomic>
#include <cstdlib>
#include <omp.h>
#include <sched.h>

#include "fastdl.h"

namespace fastdl {

int best_isa() {
#if defined(FASTDL_X86) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    return ISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
      __builtin_cpu_supports("bmi2"))
    return ISA_AVX2;
#endif
  return ISA_GENERIC;
}

static std::atomic<int> g_isa{best_isa()};
static std::atomic<int> g_threads{default_num_threads()};

int active_isa() { return g_isa.load(std::memory_order_relaxed); }

bool set_isa(int isa) {
  if (isa < ISA_GENERIC || isa > best_isa()) return false;
  g_isa.store(isa, std::memory_order_relaxed);
  return true;
}

const char* isa_name(int isa) {
  switch (isa) {
    case ISA_AVX512: return "avx512";
    case ISA_AVX2: return "avx2";
    default: return "generic";
  }
}

int default_num_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    int n = std::atoi(env);  // "4" or "4,2" (nested levels): the first level counts
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  int n = omp_get_num_procs();
  return n > 0 ? n : 1;
}

int get_num_threads() { return g_threads.load(std::memory_order_relaxed); }

void set_num_threads(int n) { g_threads.store(n > 0 ? n : 1, std::memory_order_relaxed); }

}  // namespace fastdl
