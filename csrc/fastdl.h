// fastdl.h - the one header every C++ file includes.
//
// Letter vocabulary used in every kernel comment:
//   B   batch rows                     C   in-features (columns of the layer input)
//   OC  out-features                   NC  number of classes (softmax, cross-entropy)
//   n   element count of an elementwise kernel
//   GEMM: c (M,N) = op(a) (M,K) . op(b) (K,N), all row-major and contiguous;
//         op(a) = a stored (M,K), or aᵀ with a stored (K,M) when trans_a; likewise op(b).
//
// Kernels live in csrc/*.cpp, each compiled once per instruction set into namespace
// fastdl::generic, fastdl::avx2 and fastdl::avx512 (CMakeLists.txt). They take raw pointers and
// sizes, never allocate in the hot path and never throw; callers (csrc/bindings/) validate
// everything first. FASTDL_KERNEL(name) picks the version for the instruction set chosen at run time.
#pragma once
#include <cstddef>
#include <cstdint>

namespace fastdl {

enum Isa : int { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

// Activation codes shared by the fused epilogues and the bindings.
enum Act : int { ACT_NONE = 0, ACT_RELU = 1, ACT_SIGMOID = 2, ACT_TANH = 3 };

// Loss reductions.
enum Reduction : int { RED_MEAN = 0, RED_SUM = 1 };

// A class label that a kernel read outside [0, NC): the lowest such row (-1: none) and the value read
// there. The caller's range check ran before another thread could change the labels; the kernel reports
// what it read itself, and skips that row.
struct BadLabel {
  int64_t row = -1, label = 0;
};

// BatchNorm's training forward and backward over (N, C, S) sum each channel over blocks (S = 1: of
// kBatchNormRows rows; S > 1: one (n, c) plane each) into a scratch buffer that the caller allocates:
// two block sums per channel and block, and two per-channel vectors.
constexpr int64_t kBatchNormRows = 64;
inline int64_t batchnorm_scratch_floats(int64_t N, int64_t C, int64_t S = 1) {
  const int64_t blocks = S == 1 ? (N + kBatchNormRows - 1) / kBatchNormRows : N;
  return (2 * blocks + 2) * C;
}

// A 2-D convolution's sizes (conv.cpp): input (N,C,H,W), weight (OC,C/G,KH,KW), stride SH,SW, zero
// padding PH,PW, dilation DH,DW, G groups, output (N,OC,OH,OW) with OH = (H + 2PH - DH(KH-1) - 1)/SH + 1
// (likewise OW). The bindings check that they are consistent before a kernel sees them.
struct Conv2dShape {
  int64_t N, C, H, W, OC, KH, KW, SH, SW, PH, PW, DH, DW, G, OH, OW;
};

// ---- run-time configuration (csrc/cpu.cpp, compiled once) ----
int best_isa();             // best instruction set this CPU and OS support
int active_isa();           // the one kernels dispatch to
bool set_isa(int isa);      // false if the CPU cannot run it
const char* isa_name(int isa);
int available_cpus();       // CPUs this process may use: affinity mask, cgroup CPU quota
int get_num_threads();      // threads a parallel kernel may use, at most available_cpus()
void set_num_threads(int n);  // capped at available_cpus()
int default_num_threads();  // OMP_NUM_THREADS if set, else available_cpus(); capped likewise

// Contention guard: team_threads() is get_num_threads(), or 1 while other work has been seen to
// keep this process's threads waiting for a CPU; every parallel region reports its wall time and
// the time its master waited for the other threads (team_report).
int64_t now_ns();
int team_threads();
void team_report(int64_t wall_ns, int64_t lost_ns);
void set_contention_guard(bool on);
bool contention_guard();
struct TeamStats {
  int64_t regions, stalled_regions, stalls, guarded_regions, cap, lost_ns, stalled_lost_ns, max_lost_ns;
  // stalls: times the guard engaged; cap 0: not guarding
};
TeamStats team_stats();

// ---- kernels, declared once per instruction-set namespace ----
namespace generic {
#include "kernels.inc"
}
namespace avx2 {
#include "kernels.inc"
}
namespace avx512 {
#include "kernels.inc"
}

}  // namespace fastdl

#if defined(FASTDL_X86)
#define FASTDL_KERNEL(fn)                                                              \
  (::fastdl::active_isa() == ::fastdl::ISA_AVX512 ? &::fastdl::avx512::fn              \
   : ::fastdl::active_isa() == ::fastdl::ISA_AVX2 ? &::fastdl::avx2::fn                \
                                                  : &::fastdl::generic::fn)
#else
#define FASTDL_KERNEL(fn) (&::fastdl::generic::fn)
#endif
