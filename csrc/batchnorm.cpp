// batchnorm.cpp - BatchNorm1d over (B, C) inputs: statistics per feature (column).
//
// Rows are contiguous in C, so every loop runs down the rows of a tile of kTile columns and is
// vectorised across the columns of the tile, with per-column accumulators in a small stack array
// (no allocation). Statistics take two passes, the mean first and then the squared deviations from
// it, so a large common offset does not cancel away the variance; each pass sums in float over
// blocks of kRows rows, 16 columns to a vector, and adds each block's sums into double (the double
// loop alone ran 256x256 at 32 us, 16384x1024 at 16 ms; float blocks keep the error of a sum near
// kRows float roundings, not B). Threads own
// whole column ranges (a column's sums are never split), so there are no atomics and the result of
// a column does not depend on the thread count. With few columns the work stays on one thread.
#include <cmath>

#include "kernel_common.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

namespace {

constexpr int64_t kTile = 512;  // columns per tile: the per-column accumulators stay in L1
constexpr int64_t kRows = 64;   // rows per float block of a column sum

// Columns per thread at least: enough that a thread's share is kParallelGrain elements, and a
// whole number of cache lines.
inline int64_t column_grain(int64_t B) {
  int64_t g = (kParallelGrain + B - 1) / B;
  return g < 16 ? 16 : g;
}

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

}  // namespace

// inp, out: (B,C); gamma, beta, running_mean, running_var: (C); written: mean, invstd (C).
// mean = Σ_b inp / B;  var = Σ_b (inp - mean)² / B (biased, for normalising);  invstd = 1/√(var + eps);
// out = (inp - mean) · invstd · gamma + beta;
// running_mean = (1-momentum)·running_mean + momentum·mean;
// running_var  = (1-momentum)·running_var  + momentum·var·B/(B-1)   (unbiased, as PyTorch). B >= 2.
// out may be inp itself (each element is read before it is written).
void batchnorm_forward_train(float* out, float* mean, float* invstd, float* running_mean, float* running_var,
                             const float* inp, const float* gamma, const float* beta, float momentum, float eps,
                             int64_t B, int64_t C) {
  const double inv_b = 1.0 / static_cast<double>(B);
  const double unbias = B > 1 ? static_cast<double>(B) / static_cast<double>(B - 1) : 1.0;
  const double mom = momentum;
  parallel_chunks(
      C,
      [&](int64_t lo, int64_t hi) {
        double sum[kTile], sum2[kTile];
        float part[kTile], part2[kTile], mu[kTile], scale[kTile];
        for (int64_t c0 = lo; c0 < hi; c0 += kTile) {
          const int64_t w = min64(kTile, hi - c0);
          // pass 1: sum = Σ_b x
          for (int64_t j = 0; j < w; j++) sum[j] = 0.0;
          for (int64_t r0 = 0; r0 < B; r0 += kRows) {
            for (int64_t j = 0; j < w; j++) part[j] = 0.0f;
            for (int64_t r = r0; r < min64(r0 + kRows, B); r++) {
              const float* x = inp + r * C + c0;
#pragma omp simd
              for (int64_t j = 0; j < w; j++) part[j] += x[j];
            }
            for (int64_t j = 0; j < w; j++) sum[j] += part[j];
          }
          for (int64_t j = 0; j < w; j++) {
            mu[j] = static_cast<float>(sum[j] * inv_b);
            sum[j] = 0.0;
            sum2[j] = 0.0;
          }
          // pass 2: d = x - mu (mu rounded to float): var = Σd²/B - (Σd/B)², the last term correcting
          // for that rounding
          for (int64_t r0 = 0; r0 < B; r0 += kRows) {
            for (int64_t j = 0; j < w; j++) part[j] = part2[j] = 0.0f;
            for (int64_t r = r0; r < min64(r0 + kRows, B); r++) {
              const float* x = inp + r * C + c0;
#pragma omp simd
              for (int64_t j = 0; j < w; j++) {
                const float d = x[j] - mu[j];
                part[j] += d;
                part2[j] += d * d;
              }
            }
            for (int64_t j = 0; j < w; j++) {
              sum[j] += part[j];
              sum2[j] += part2[j];
            }
          }
          for (int64_t j = 0; j < w; j++) {
            const int64_t c = c0 + j;
            const double dm = sum[j] * inv_b, m = mu[j] + dm;
            double var = sum2[j] * inv_b - dm * dm;
            if (var < 0.0) var = 0.0;
            const double is = 1.0 / std::sqrt(var + static_cast<double>(eps));
            mean[c] = static_cast<float>(m);
            invstd[c] = static_cast<float>(is);
            running_mean[c] = static_cast<float>((1.0 - mom) * running_mean[c] + mom * m);
            running_var[c] = static_cast<float>((1.0 - mom) * running_var[c] + mom * var * unbias);
            mu[j] = static_cast<float>(m);
            scale[j] = static_cast<float>(is * gamma[c]);
          }
          // pass 3: y = (x - mean) · invstd · gamma + beta
          const float* bt = beta + c0;
          for (int64_t r = 0; r < B; r++) {
            const float* x = inp + r * C + c0;
            float* y = out + r * C + c0;
#pragma omp simd
            for (int64_t j = 0; j < w; j++) y[j] = (x[j] - mu[j]) * scale[j] + bt[j];
          }
        }
      },
      column_grain(B));
}

// inp, out: (B,C); gamma, beta, running_mean, running_var: (C).
// out = (inp - running_mean) · gamma/√(running_var + eps) + beta. out may be inp itself.
// Elementwise once the per-column scale is known, so threads split the rows (any B, C).
void batchnorm_forward_eval(float* out, const float* inp, const float* gamma, const float* beta,
                            const float* running_mean, const float* running_var, float eps, int64_t B, int64_t C) {
  int64_t row_grain = kParallelGrain / C;
  if (row_grain < 1) row_grain = 1;
  parallel_chunks(
      B,
      [&](int64_t lo, int64_t hi) {
        float scale[kTile];
        for (int64_t c0 = 0; c0 < C; c0 += kTile) {
          const int64_t w = min64(kTile, C - c0);
          for (int64_t j = 0; j < w; j++)
            scale[j] = static_cast<float>(gamma[c0 + j] / std::sqrt(static_cast<double>(running_var[c0 + j]) + eps));
          const float* mu = running_mean + c0;
          const float* bt = beta + c0;
          for (int64_t r = lo; r < hi; r++) {
            const float* x = inp + r * C + c0;
            float* y = out + r * C + c0;
#pragma omp simd
            for (int64_t j = 0; j < w; j++) y[j] = (x[j] - mu[j]) * scale[j] + bt[j];
          }
        }
      },
      row_grain);
}

// dout, inp, dinp: (B,C); gamma, mean, invstd (from the training forward): (C); written: dgamma, dbeta (C).
// From out = xhat·gamma + beta, xhat = (inp - mean)·invstd with the batch's mean and invstd:
// dbeta = Σ_b dout;  dgamma = Σ_b dout·xhat;
// dinp  = gamma·invstd/B · (B·dout - dbeta - xhat·dgamma).
// dinp may be dout or inp itself (the second pass reads each element before writing it).
void batchnorm_backward(float* dinp, float* dgamma, float* dbeta, const float* dout, const float* inp,
                        const float* gamma, const float* mean, const float* invstd, int64_t B, int64_t C) {
  const double bd = static_cast<double>(B);
  parallel_chunks(
      C,
      [&](int64_t lo, int64_t hi) {
        double sd[kTile], sdx[kTile];
        float psd[kTile], psdx[kTile], mu[kTile], is[kTile], k[kTile], fsd[kTile], fsdx[kTile];
        for (int64_t c0 = lo; c0 < hi; c0 += kTile) {
          const int64_t w = min64(kTile, hi - c0);
          for (int64_t j = 0; j < w; j++) {
            sd[j] = 0.0;
            sdx[j] = 0.0;
            mu[j] = mean[c0 + j];
            is[j] = invstd[c0 + j];
          }
          // pass 1: dbeta = Σ dout, dgamma = Σ dout·xhat
          for (int64_t r0 = 0; r0 < B; r0 += kRows) {
            for (int64_t j = 0; j < w; j++) psd[j] = psdx[j] = 0.0f;
            for (int64_t r = r0; r < min64(r0 + kRows, B); r++) {
              const float* x = inp + r * C + c0;
              const float* d = dout + r * C + c0;
#pragma omp simd
              for (int64_t j = 0; j < w; j++) {
                const float xhat = (x[j] - mu[j]) * is[j];
                psd[j] += d[j];
                psdx[j] += d[j] * xhat;
              }
            }
            for (int64_t j = 0; j < w; j++) {
              sd[j] += psd[j];
              sdx[j] += psdx[j];
            }
          }
          for (int64_t j = 0; j < w; j++) {
            dbeta[c0 + j] = fsd[j] = static_cast<float>(sd[j]);
            dgamma[c0 + j] = fsdx[j] = static_cast<float>(sdx[j]);
            k[j] = static_cast<float>(gamma[c0 + j] * static_cast<double>(is[j]) / bd);
          }
          // pass 2: dinp = gamma·invstd/B · (B·dout - dbeta - xhat·dgamma)
          const float bf = static_cast<float>(B);
          for (int64_t r = 0; r < B; r++) {
            const float* x = inp + r * C + c0;
            const float* d = dout + r * C + c0;
            float* dx = dinp + r * C + c0;
#pragma omp simd
            for (int64_t j = 0; j < w; j++) {
              const float xhat = (x[j] - mu[j]) * is[j];
              dx[j] = k[j] * (bf * d[j] - fsd[j] - xhat * fsdx[j]);
            }
          }
        }
      },
      column_grain(B));
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
