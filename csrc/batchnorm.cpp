// batchnorm.cpp - BatchNorm1d over (B, C) and BatchNorm2d over (N, C, H, W) inputs: statistics per
// feature (channel). Both are one layout, (N, C, S): S = 1 for BatchNorm1d (B = N rows of C columns),
// S = H*W for BatchNorm2d (N*C contiguous planes of S values); every pass below has one loop for each.
//
// S = 1:
// Rows are contiguous in C, so every pass streams whole rows (threads split the rows; reading
// column tiles instead, 512-2048 B of every row, defeated the prefetchers: the 256x256 training
// forward took 22-37 us on two threads, now 15.5; 16384x1024 14.5 ms, now 8.7). A column's sum is taken in float over each block of kBatchNormRows
// rows, 16 columns to a vector, into scratch, and the block sums are then added in double, in
// block order: the error of a sum stays near kBatchNormRows float roundings, and the result does
// not depend on the thread count (the blocks are the same whoever computes them). Statistics take
// two such passes, the mean first and then the deviations from it, so a large common offset does
// not cancel away the variance. The scratch comes from the caller (batchnorm_scratch_floats).
// S > 1: threads split the (n, c) planes; each plane is summed in double, in one contiguous pass, and
// its sum rounded into the scratch where S = 1 keeps a block sum (block n, column c); from there the
// two layouts share the code: block sums added in double in block order, per channel.
#include <cmath>

#include "kernel_common.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

namespace {

constexpr int64_t kRows = kBatchNormRows;
constexpr int64_t kCols = 1024;  // columns of a statistics work item: its block sums stay in L1

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// The work items of a statistics pass, in memory order so that a thread's contiguous range of items
// reads contiguous memory: S = 1, (row block, column tile) pairs, block-major; S > 1, the (n, c) planes
// (a block is one n, a tile one channel). Either way the block sums sit at [blk*C + c].
struct Items {
  int64_t blocks, tiles;
  Items(int64_t N, int64_t C, int64_t S)
      : blocks(S == 1 ? (N + kRows - 1) / kRows : N), tiles(S == 1 ? (C + kCols - 1) / kCols : C) {}
  int64_t count() const { return blocks * tiles; }
};

// This thread's share [lo, hi) of n things, in one parallel region of T threads.
inline void share(int64_t n, int t, int T, int64_t& lo, int64_t& hi) {
  lo = n * t / T;
  hi = n * (t + 1) / T;
}

// For each of this thread's items: zero the item's block sums (s1 and s2 at [blk*C + c0, +w)) and call
// row(p1, p2, r*C + c0, c0, w) for each row r of the block, which adds that row's terms into them.
template <class F>
void block_sums(float* s1, float* s2, const Items& it, int64_t B, int64_t C, int t, int T, F&& row) {
  int64_t lo, hi;
  share(it.count(), t, T, lo, hi);
  for (int64_t item = lo; item < hi; item++) {
    const int64_t blk = item / it.tiles, c0 = (item % it.tiles) * kCols, w = min64(kCols, C - c0);
    float* p1 = s1 + blk * C + c0;
    float* p2 = s2 + blk * C + c0;
    for (int64_t j = 0; j < w; j++) p1[j] = p2[j] = 0.0f;
    for (int64_t r = blk * kRows; r < min64((blk + 1) * kRows, B); r++) row(p1, p2, r * C + c0, c0, w);
  }
}

// S > 1: for each of this thread's planes p = n*C + c, plane(s1[p], s2[p], p*S, c), which writes the
// plane's two sums.
template <class F>
void plane_sums(float* s1, float* s2, const Items& it, int64_t S, int t, int T, F&& plane) {
  int64_t lo, hi;
  share(it.count(), t, T, lo, hi);
  for (int64_t p = lo; p < hi; p++) plane(s1[p], s2[p], p * S, p % it.tiles);
}

}  // namespace

// inp, out: (N,C,S) (S = 1: (B,C)); gamma, beta, running_mean, running_var: (C); written: mean, invstd (C).
// With M = N*S values per channel:
// mean = Σ inp / M;  var = Σ (inp - mean)² / M (biased, for normalising);  invstd = 1/√(var + eps);
// out = (inp - mean) · invstd · gamma + beta;
// running_mean = (1-momentum)·running_mean + momentum·mean;
// running_var  = (1-momentum)·running_var  + momentum·var·M/(M-1)   (unbiased, as PyTorch). M >= 2.
// out may be inp itself (each element is read before it is written).
void batchnorm_forward_train(float* out, float* mean, float* invstd, float* scratch, float* running_mean,
                             float* running_var, const float* inp, const float* gamma, const float* beta,
                             float momentum, float eps, int64_t N, int64_t C, int64_t S) {
  const Items it(N, C, S);
  float* s1 = scratch;                   // (blocks, C) block sums
  float* s2 = scratch + it.blocks * C;   // (blocks, C)
  float* mu = s2 + it.blocks * C;        // (C) the mean, rounded to float
  float* scale = mu + C;                 // (C) invstd · gamma
  const double M = static_cast<double>(N) * static_cast<double>(S);
  const double inv_m = 1.0 / M;
  const double unbias = M / (M - 1.0);
  const double mom = momentum;
  const int nt = threads_for(N * C * S);
  parallel_region(nt, [&](int t, int T) {
    int64_t lo, hi;
    // pass 1: Σ x per block (s2 unused)
    if (S == 1) {
      block_sums(s1, s2, it, N, C, t, T, [&](float* p1, float*, int64_t off, int64_t, int64_t w) {
        const float* x = inp + off;
#pragma omp simd
        for (int64_t j = 0; j < w; j++) p1[j] += x[j];
      });
    } else {
      plane_sums(s1, s2, it, S, t, T, [&](float& p1, float&, int64_t off, int64_t) {
        const float* x = inp + off;
        double a = 0.0;
#pragma omp simd reduction(+ : a)
        for (int64_t j = 0; j < S; j++) a += x[j];
        p1 = static_cast<float>(a);
      });
    }
#pragma omp barrier
    share(C, t, T, lo, hi);
    for (int64_t c = lo; c < hi; c++) {
      double s = 0.0;
      for (int64_t blk = 0; blk < it.blocks; blk++) s += s1[blk * C + c];
      mu[c] = static_cast<float>(s * inv_m);
    }
#pragma omp barrier
    // pass 2: d = x - mu per block: Σ d and Σ d²; var = Σd²/M - (Σd/M)², the last term correcting
    // for mu's rounding to float
    if (S == 1) {
      block_sums(s1, s2, it, N, C, t, T, [&](float* p1, float* p2, int64_t off, int64_t c0, int64_t w) {
        const float* x = inp + off;
        const float* m = mu + c0;
#pragma omp simd
        for (int64_t j = 0; j < w; j++) {
          const float d = x[j] - m[j];
          p1[j] += d;
          p2[j] += d * d;
        }
      });
    } else {
      plane_sums(s1, s2, it, S, t, T, [&](float& p1, float& p2, int64_t off, int64_t c) {
        const float* x = inp + off;
        const float m = mu[c];
        double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
        for (int64_t j = 0; j < S; j++) {
          const double d = static_cast<double>(x[j] - m);
          a += d;
          b += d * d;
        }
        p1 = static_cast<float>(a);
        p2 = static_cast<float>(b);
      });
    }
#pragma omp barrier
    for (int64_t c = lo; c < hi; c++) {
      double sd = 0.0, sd2 = 0.0;
      for (int64_t blk = 0; blk < it.blocks; blk++) {
        sd += s1[blk * C + c];
        sd2 += s2[blk * C + c];
      }
      const double dm = sd * inv_m, m = mu[c] + dm;
      double var = sd2 * inv_m - dm * dm;
      if (var < 0.0) var = 0.0;
      const double is = 1.0 / std::sqrt(var + static_cast<double>(eps));
      mean[c] = mu[c] = static_cast<float>(m);
      invstd[c] = static_cast<float>(is);
      running_mean[c] = static_cast<float>((1.0 - mom) * running_mean[c] + mom * m);
      running_var[c] = static_cast<float>((1.0 - mom) * running_var[c] + mom * var * unbias);
      scale[c] = static_cast<float>(is * gamma[c]);
    }
#pragma omp barrier
    // pass 3: y = (x - mean) · invstd · gamma + beta, whole rows (S = 1) or whole planes
    if (S == 1) {
      share(N, t, T, lo, hi);
      for (int64_t r = lo; r < hi; r++) {
        const float* x = inp + r * C;
        float* y = out + r * C;
#pragma omp simd
        for (int64_t j = 0; j < C; j++) y[j] = (x[j] - mu[j]) * scale[j] + beta[j];
      }
    } else {
      share(N * C, t, T, lo, hi);
      for (int64_t p = lo; p < hi; p++) {
        const int64_t c = p % C;
        const float m = mu[c], sc = scale[c], bt = beta[c];
        const float* x = inp + p * S;
        float* y = out + p * S;
#pragma omp simd
        for (int64_t j = 0; j < S; j++) y[j] = (x[j] - m) * sc + bt;
      }
    }
  });
}

// inp, out: (N,C,S) (S = 1: (B,C)); gamma, beta, running_mean, running_var: (C).
// out = (inp - running_mean) · gamma/√(running_var + eps) + beta. out may be inp itself.
// Elementwise once the per-channel scale is known, so threads split the rows (S = 1: any B, C; the
// scale of a tile of columns is computed once per block of rows) or the planes.
void batchnorm_forward_eval(float* out, const float* inp, const float* gamma, const float* beta,
                            const float* running_mean, const float* running_var, float eps, int64_t N, int64_t C,
                            int64_t S) {
  if (S > 1) {
    int64_t plane_grain = kParallelGrain / S;
    if (plane_grain < 1) plane_grain = 1;
    parallel_chunks(
        N * C,
        [&](int64_t lo, int64_t hi) {
          for (int64_t p = lo; p < hi; p++) {
            const int64_t c = p % C;
            const float sc = static_cast<float>(gamma[c] / std::sqrt(static_cast<double>(running_var[c]) + eps));
            const float m = running_mean[c], bt = beta[c];
            const float* x = inp + p * S;
            float* y = out + p * S;
#pragma omp simd
            for (int64_t j = 0; j < S; j++) y[j] = (x[j] - m) * sc + bt;
          }
        },
        plane_grain);
    return;
  }
  constexpr int64_t kTile = 1024;
  int64_t row_grain = kParallelGrain / C;
  if (row_grain < 1) row_grain = 1;
  parallel_chunks(
      N,
      [&](int64_t lo, int64_t hi) {
        float scale[kTile];
        for (int64_t r0 = lo; r0 < hi; r0 += kRows) {
          const int64_t r1 = min64(r0 + kRows, hi);
          for (int64_t c0 = 0; c0 < C; c0 += kTile) {
            const int64_t w = min64(kTile, C - c0);
            for (int64_t j = 0; j < w; j++)
              scale[j] = static_cast<float>(gamma[c0 + j] / std::sqrt(static_cast<double>(running_var[c0 + j]) + eps));
            const float* mu = running_mean + c0;
            const float* bt = beta + c0;
            for (int64_t r = r0; r < r1; r++) {
              const float* x = inp + r * C + c0;
              float* y = out + r * C + c0;
#pragma omp simd
              for (int64_t j = 0; j < w; j++) y[j] = (x[j] - mu[j]) * scale[j] + bt[j];
            }
          }
        }
      },
      row_grain);
}

// dout, inp, dinp: (N,C,S) (S = 1: (B,C)); gamma, mean, invstd (from the training forward): (C);
// written: dgamma, dbeta (C). From out = xhat·gamma + beta, xhat = (inp - mean)·invstd with the batch's
// mean and invstd, sums over the M = N*S values of a channel:
// dbeta = Σ dout;  dgamma = Σ dout·xhat;
// dinp  = gamma·invstd/M · (M·dout - dbeta - xhat·dgamma).
// dinp may be dout or inp itself (the second pass reads each element before writing it).
void batchnorm_backward(float* dinp, float* dgamma, float* dbeta, float* scratch, const float* dout,
                        const float* inp, const float* gamma, const float* mean, const float* invstd, int64_t N,
                        int64_t C, int64_t S) {
  const Items it(N, C, S);
  float* s1 = scratch;                  // (blocks, C) block sums of dout
  float* s2 = scratch + it.blocks * C;  // (blocks, C) block sums of dout·xhat
  float* k = s2 + it.blocks * C;        // (C) gamma · invstd / M
  const double md = static_cast<double>(N) * static_cast<double>(S);
  const float mf = static_cast<float>(md);
  const int nt = threads_for(N * C * S);
  parallel_region(nt, [&](int t, int T) {
    int64_t lo, hi;
    // pass 1: Σ dout and Σ dout·xhat per block
    if (S == 1) {
      block_sums(s1, s2, it, N, C, t, T, [&](float* p1, float* p2, int64_t off, int64_t c0, int64_t w) {
        const float* x = inp + off;
        const float* d = dout + off;
        const float* m = mean + c0;
        const float* is = invstd + c0;
#pragma omp simd
        for (int64_t j = 0; j < w; j++) {
          const float xhat = (x[j] - m[j]) * is[j];
          p1[j] += d[j];
          p2[j] += d[j] * xhat;
        }
      });
    } else {
      plane_sums(s1, s2, it, S, t, T, [&](float& p1, float& p2, int64_t off, int64_t c) {
        const float* x = inp + off;
        const float* d = dout + off;
        const float m = mean[c], is = invstd[c];
        double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
        for (int64_t j = 0; j < S; j++) {
          const float xhat = (x[j] - m) * is;
          a += d[j];
          b += static_cast<double>(d[j] * xhat);
        }
        p1 = static_cast<float>(a);
        p2 = static_cast<float>(b);
      });
    }
#pragma omp barrier
    share(C, t, T, lo, hi);
    for (int64_t c = lo; c < hi; c++) {
      double sd = 0.0, sdx = 0.0;
      for (int64_t blk = 0; blk < it.blocks; blk++) {
        sd += s1[blk * C + c];
        sdx += s2[blk * C + c];
      }
      dbeta[c] = static_cast<float>(sd);
      dgamma[c] = static_cast<float>(sdx);
      k[c] = static_cast<float>(gamma[c] * static_cast<double>(invstd[c]) / md);
    }
#pragma omp barrier
    // pass 2: dinp, whole rows (S = 1) or whole planes
    if (S == 1) {
      share(N, t, T, lo, hi);
      for (int64_t r = lo; r < hi; r++) {
        const float* x = inp + r * C;
        const float* d = dout + r * C;
        float* dx = dinp + r * C;
#pragma omp simd
        for (int64_t j = 0; j < C; j++) {
          const float xhat = (x[j] - mean[j]) * invstd[j];
          dx[j] = k[j] * (mf * d[j] - dbeta[j] - xhat * dgamma[j]);
        }
      }
    } else {
      share(N * C, t, T, lo, hi);
      for (int64_t p = lo; p < hi; p++) {
        const int64_t c = p % C;
        const float m = mean[c], is = invstd[c], kc = k[c], db = dbeta[c], dg = dgamma[c];
        const float* x = inp + p * S;
        const float* d = dout + p * S;
        float* dx = dinp + p * S;
#pragma omp simd
        for (int64_t j = 0; j < S; j++) {
          const float xhat = (x[j] - m) * is;
          dx[j] = kc * (mf * d[j] - db - xhat * dg);
        }
      }
    }
  });
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
