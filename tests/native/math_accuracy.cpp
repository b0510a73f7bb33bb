// math_accuracy.cpp - exhaustive accuracy of the vectorisable math in csrc/kernel_common.h
// (simd_exp, simd_log, simd_log1p, simd_sigmoid, simd_tanh) against double-precision libm, over every
// float in each range. Not part of the build or of pytest (it takes ~3 min). From the repo root:
//   g++ -O3 -fopenmp -fno-math-errno -mavx2 -mfma -DFASTDL_ISA_NS=avx2 -Icsrc tests/native/math_accuracy.cpp -o /tmp/acc && /tmp/acc
// (drop -mavx2 -mfma and use -DFASTDL_ISA_NS=generic for the SSE2 path).
#include <cstdio>
#include <cmath>
#include <vector>
#include "kernel_common.h"
namespace fastdl { int get_num_threads() { return 1; } }
using namespace fastdl::FASTDL_ISA_NS;
template <class F, class R>
void sweep(const char* name, float lo, float hi, F f, R ref) {
  const int64_t CH = 1 << 20;
  std::vector<float> xs(CH), ys(CH);
  double worst = 0, wx = 0, sum = 0; int64_t cnt = 0;
  // iterate over every float in [lo, hi]: walk bit patterns
  auto next = [](float x) { return std::nextafter(x, INFINITY); };
  float x = lo;
  while (x <= hi) {
    int64_t k = 0;
    for (; k < CH && x <= hi; k++) { xs[k] = x; x = next(x); }
#pragma omp simd
    for (int64_t i = 0; i < k; i++) ys[i] = f(xs[i]);
    for (int64_t i = 0; i < k; i++) {
      double r = ref((double)xs[i]);
      if (std::fabs(r) < 1.1754943508222875e-38) continue;  // denormal results: FTZ territory
      double e = std::fabs((ys[i] - r) / r);
      if (!(e <= worst)) { worst = e; wx = xs[i]; }  // a NaN result sticks as the worst
      sum += e; cnt++;
    }
  }
  printf("%-10s [%g, %g]: max rel err %.3g (at x=%.9g), mean %.3g, n=%lld\n", name, lo, hi, worst, wx, sum / cnt, (long long)cnt);
}
int main(int argc, char** argv) {
  sweep("exp", -87.33654f, 88.72283f, [](float x) { return simd_exp(x); }, [](double x) { return std::exp(x); });
  sweep("log1p", 0.0f, 1.0f, [](float x) { return simd_log1p(x); }, [](double x) { return std::log1p(x); });
  sweep("log", 0.5f, 4.0f, [](float x) { return simd_log(x); }, [](double x) { return std::log(x); });
  sweep("sigmoid", -87.0f, 20.0f, [](float x) { return simd_sigmoid(x); }, [](double x) { return 1.0 / (1.0 + std::exp(-x)); });
  sweep("tanh", -10.0f, 10.0f, [](float x) { return simd_tanh(x); }, [](double x) { return std::tanh(x); });
}
