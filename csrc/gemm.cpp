// gemm.cpp - c = [c +] op(a)·op(b) [+ bias], then an activation: the one matrix product of fastdl.
//
// The Goto/BLIS design in plain C++ intrinsics, row-major; docs/kernels.md §2-§7 gives the design and
// the measurements behind every size and choice below:
//   for each M-block (all of M, up to kMB rows)
//     for each K-block of k_block(K)                  pack a: the broadcast operand, MR-row panels
//       for each N-block of kNB columns (in L2)       pack b: the vector operand, k-major NR strips
//         for each A panel (in L1)
//           for each B strip                          micro-kernel: MR x NR tile in registers
// The packers absorb transposition (aᵀ·b and a·bᵀ cost what a·b costs) and zero-pad, so the
// micro-kernel computes whole tiles and stores the valid part under masks. The first K-block
// overwrites c (or adds to it), the others add, the last adds the bias and applies the activation.
// One micro-kernel template over `Vec` (vec.h): each instruction set supplies only Vec and the sizes.
// Batch invariance (issue 15): every path sums each element of c in one order fixed by K alone -
// K-blocks of k_block(K), each one multiply-add chain in k order from 0, the blocks added in order,
// threads splitting rows or columns, never K - so a row of c has the same bits whatever M, tile or
// thread count computed it. Keep it so: a special path for some M must reproduce that order.
// The one path that does not, gemm_dots (a·bᵀ with M <= kDotRows as dot products along K, b never
// packed), runs only when the caller waives batch invariance (batch_invariant = 0: training forward).
// matmul_reference at the end is the plain reference.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernel_common.h"
#include "vec.h"

namespace fastdl {
namespace FASTDL_ISA_NS {
namespace {

// ------------------------------------------------------------------ tile sizes
#if defined(__AVX512F__)
constexpr int kMR = 12, kNV = 2;  // 12 x 32 tile: 24 accumulators of 32
constexpr int kSmallMR = 16;       // N <= 16 (a 10-class head): 16 x 16 tile, 16 accumulators
#elif defined(__AVX2__)
constexpr int kMR = 6, kNV = 2;  // 6 x 16 tile: 12 accumulators of 16 ymm registers
constexpr int kSmallMR = 12;      // N <= 8: 12 x 8 tile, 12 accumulators
#else
constexpr int kMR = 6, kNV = 2;  // 6 x 8 tile
constexpr int kSmallMR = 12;     // N <= 4: 12 x 4 tile
#endif
// batch_invariant = 0: a·bᵀ with at most this many rows runs as dot products (gemm_dots); with more, the
// blocked path's 4-row tile is as fast or faster (measured in docs/kernels.md §9).
#if defined(__AVX2__)
constexpr int64_t kDotRows = 2;
#else
constexpr int64_t kDotRows = 3;  // the generic 4-wide tile is slow for a few rows
#endif

// The tile of the blocked product: MR rows x NV vectors of W columns (NR, the width of a B strip).
// gemm_any picks one by shape (docs/kernels.md §5): no multiply-adds spent on padding rows or columns.
template <int MR_, int NV_>
struct Tile {
  static constexpr int MR = MR_, NV = NV_, NR = NV_ * Vec::W;
};

// Cache blocking: the A panel (kKC x MR) stays in L1/L2, the B block (kKC x kNB) in L2, the A block
// (kMB x kKC) in L3. Deeper K-blocks ran faster but doubled the error against float64 (docs/kernels.md §3).
#if defined(__AVX512F__)
constexpr int64_t kKC = 400;  // depth of a K-block (balanced: K = 784 runs as 2 x 392)
constexpr int64_t kNB = 512;  // columns of a B block (a multiple of kNR), per thread
#else
constexpr int64_t kKC = 320;
constexpr int64_t kNB = 256;
#endif
constexpr int64_t kMB = 3072;  // rows of an M-block (a multiple of every tile's MR: 1, 4, 6, 12, 16)
// 2*M*N*K (N rounded up to the tile) below this runs on the calling thread: a parallel region costs
// more than it saves there (1-2 us warm, tens after an idle spell; docs/kernels.md §6).
constexpr double kParallelFlops = 0.25e6;
// b stored (K,N) is read in place, not packed, when the rows of a K-block span at most this many
// floats (and do not lie a multiple of 4 KiB apart, where a strip's rows would share an L1 set):
// packing then costs more than it saves (the MLP's weight gradients; docs/kernels.md §4).
constexpr int64_t kInPlaceB = 256 * 1024;

// ------------------------------------------------------------------ activation on a vector: vec.h's activate

// The derivative of activation act, given its output y, times the gradient v (activations.cpp's
// relu/sigmoid/tanh_backward, in the same order of operations).
FASTDL_INLINE reg dactivate(reg v, reg y, int act) {
  switch (act) {
    case ACT_RELU: return Vec::mul(v, Vec::heaviside0(y));  // y > 0 exactly where the input was; NaN y: NaN
    case ACT_SIGMOID: return Vec::mul(Vec::mul(v, y), Vec::sub(Vec::set1(1.0f), y));
    case ACT_TANH: return Vec::mul(v, Vec::sub(Vec::set1(1.0f), Vec::mul(y, y)));
    default: return v;
  }
}

// c[i][j] *= act'(y[i][j]) over rows i < rows, columns j < cols, both ld apart: gemm_dact's last
// step, run on each tile just stored (still in L1), or on all of c after the plain loop. Kept out
// of the micro-kernel, whose every store it slowed even when unused (docs/kernels.md §5).
void dact_tile(float* c, const float* y, int64_t ld, int64_t rows, int64_t cols, int act) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; j += kW) {
      float* p = c + i * ld + j;
      const float* q = y + i * ld + j;
      if (cols - j >= kW) {
        Vec::storeu(p, dactivate(Vec::loadu(p), Vec::loadu(q), act));
      } else {
        const Vec::mask m = Vec::first(static_cast<int>(cols - j));
        Vec::storeu_n(p, dactivate(Vec::loadu_n(p, m), Vec::loadu_n(q, m), act), m);
      }
    }
  }
}

// out[j] [+]= sum over the rows r < rows of a[r*ld + j], for columns j in [lo, hi): in double, in
// row order, 256 columns at a time (the accumulators stay in L1), rows streamed. gemm_tn_sums's
// bias gradient.
void sum_columns(float* out, const float* a, int64_t rows, int64_t ld, int64_t lo, int64_t hi, int accumulate) {
  constexpr int64_t kCols = 256;
  double acc[kCols];
  for (int64_t j0 = lo; j0 < hi; j0 += kCols) {
    const int64_t n = hi - j0 < kCols ? hi - j0 : kCols;
    for (int64_t j = 0; j < n; ++j) acc[j] = accumulate ? out[j0 + j] : 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = a + r * ld + j0;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) acc[j] += row[j];
    }
    for (int64_t j = 0; j < n; ++j) out[j0 + j] = static_cast<float>(acc[j]);
  }
}

// ------------------------------------------------------------------ micro-kernel
// What a tile's store does: c = [c +] acc [+ bias], then act. bias and act only on the last K-block.
struct Epilogue {
  int beta;           // 1: add to the values already in c
  const float* bias;  // nullable; the tile's first column
  int act;            // ACT_*
};

// c (MR,NR) = epilogue(a_panel (MR,kc) · b_strip (kc,NR)), b packed k-major (b[k*NR + j]). The A panel
// is packed k-major (a[k*MR + i]) when kPackedA, else read where it is stored: a[i*rs + k*cs].
// Only the top-left mr x nr of the tile is stored; packed panels are zero beyond it. Packed A panels
// are AS floats wide and packed B strips BS (the full tile's MR and NR, read by a shorter edge tile).
// Not inlined: inlined into gemm_thread's strip loop it ran slower (docs/kernels.md §5). a_next
// (nullable): the next packed A panel, fetched into cache while this one is used. B is a packed strip
// when kPackedB (b[k*BS + j], 64-B aligned), else read where it is stored, rows of op(b) ldb apart.
template <int MR, int NV, bool kPackedA, bool kPackedB = true, int AS = MR, int BS = NV * kW>
__attribute__((noinline)) void micro_kernel(int64_t kc, const float* __restrict a, int64_t rs, int64_t cs,
                                            const float* __restrict b, int64_t ldb, float* __restrict c, int64_t ldc,
                                            int mr, int nr, Epilogue e, const float* a_next) {
  constexpr int NR = NV * kW;
  reg acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = Vec::zero();

  for (int i = 0; i < mr; ++i) __builtin_prefetch(c + i * ldc, 1);

#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    reg bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = kPackedB ? Vec::load(b + j * kW) : Vec::loadu(b + j * kW);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      reg av = Vec::bcast(kPackedA ? a + i : a + i * rs);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = Vec::fmadd(av, bv[j], acc[i][j]);
    }
    a += kPackedA ? AS : cs;
    b += kPackedB ? BS : ldb;
    if (a_next) {
      __builtin_prefetch(a_next);
      a_next += MR;
    }
  }

  // Store rows i < mr. Vector j of a row covers columns [j*W, j*W + W), of which nj are valid; the
  // last, partial one is loaded and stored under a mask, so nothing outside c is touched.
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    const int nj = nr - j * kW < kW ? nr - j * kW : kW;
    if (nj <= 0) break;
    const bool full = nj == kW;
    const Vec::mask m = Vec::first(nj);
    reg bias = Vec::zero();
    if (e.bias) bias = full ? Vec::loadu(e.bias + j * kW) : Vec::loadu_n(e.bias + j * kW, m);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      if (i >= mr) break;
      float* p = c + i * ldc + j * kW;
      reg v = acc[i][j];
      if (e.beta) v = Vec::add(v, full ? Vec::loadu(p) : Vec::loadu_n(p, m));
      if (e.bias) v = Vec::add(v, bias);
      if (e.act != ACT_NONE) v = activate(v, e.act);
      if (full)
        Vec::storeu(p, v);
      else
        Vec::storeu_n(p, v, m);
    }
  }
}

// ------------------------------------------------------------------ packing
#if defined(__AVX2__)
// In-register transpose of 8 rows of 8 floats: r[i][j] -> r[j][i].
FASTDL_INLINE void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3 and 4-7
    __m256 *s = t + 4 * h, *d = u + 4 * h;
    d[0] = _mm256_shuffle_ps(s[0], s[2], _MM_SHUFFLE(1, 0, 1, 0));
    d[1] = _mm256_shuffle_ps(s[0], s[2], _MM_SHUFFLE(3, 2, 3, 2));
    d[2] = _mm256_shuffle_ps(s[1], s[3], _MM_SHUFFLE(1, 0, 1, 0));
    d[3] = _mm256_shuffle_ps(s[1], s[3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
    r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
  }
}

// Store the first n (1..8) floats of v at p.
FASTDL_INLINE void store_first(float* p, __m256 v, int n) {
  if (n == 8) {
    _mm256_storeu_ps(p, v);
    return;
  }
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  if (n >= 4) {
    _mm_storeu_ps(p, lo);
    p += 4;
    n -= 4;
    lo = hi;
  }
  if (n >= 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(p), lo);
    p += 2;
    n -= 2;
    lo = _mm_movehl_ps(lo, lo);
  }
  if (n) _mm_store_ss(p, lo);
}

// dst[k*ld + i] = src[i*lds + k] for i < rows (<= 8; missing rows are zeros, up to `width` rows
// stored), k < kc: an (rows x kc) row-major block written k-major, 8x8 transposes at a time.
void pack_transposed(float* dst, int64_t ld, const float* src, int64_t lds, int rows, int width, int64_t kc) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = i < rows ? _mm256_loadu_ps(src + i * lds + k) : _mm256_setzero_ps();
    transpose8(r);
    for (int q = 0; q < 8; ++q) store_first(dst + (k + q) * ld, r[q], width);
  }
  for (; k < kc; ++k)
    for (int i = 0; i < width; ++i) dst[k * ld + i] = i < rows ? src[i * lds + k] : 0.0f;
}
#if defined(__AVX512F__)
// In-register transpose of 16 rows of 16 floats: r[i][j] -> r[j][i]. Within each 128-bit lane,
// unpacks by 32 and 64 bits give 4x4 blocks (u[4g + j], lane l: column 4l + j of rows 4g..4g+3);
// two rounds of 128-bit lane shuffles then move lane l of group g to lane g of column 4l + j.
FASTDL_INLINE void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * g + 1]), d = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xdd);
    t[8 + j] = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xdd);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
    r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xdd);
  }
}

// pack_transposed for 16 rows (rows <= 16 of them real, the rest zeros) written 16 wide: 16x16
// transposes, the last kc % 16 depths by the 8-wide version (one half of the rows at a time).
void pack_transposed16(float* dst, int64_t ld, const float* src, int64_t lds, int rows, int64_t kc) {
  int64_t k = 0;
  for (; k + 16 <= kc; k += 16) {
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_loadu_ps(src + i * lds + k) : _mm512_setzero_ps();
    transpose16(r);
    for (int q = 0; q < 16; ++q) _mm512_storeu_ps(dst + (k + q) * ld, r[q]);
  }
  if (k < kc) {
    pack_transposed(dst + k * ld, ld, src + k, lds, rows < 8 ? rows : 8, 8, kc - k);
    pack_transposed(dst + k * ld + 8, ld, src + 8 * lds + k, lds, rows > 8 ? rows - 8 : 0, 8, kc - k);
  }
}
#endif
#else
void pack_transposed(float* dst, int64_t ld, const float* src, int64_t lds, int rows, int width, int64_t kc) {
  for (int64_t k = 0; k < kc; ++k)
    for (int i = 0; i < width; ++i) dst[k * ld + i] = i < rows ? src[i * lds + k] : 0.0f;
}
#endif

// The operands as stored: op(a)[m][k] = a[m*lda + k] or, when trans_a, a[k*lda + m]; same for b.
struct Operands {
  float* c;
  const float* a;
  const float* b;
  const float* bias;
  int act;
  int64_t M, N, K, lda, ldb;
  int trans_a, trans_b, accumulate;
  const float* y = nullptr;  // gemm_dact: c is multiplied by act'(y), y (M,N), act = dact
  int dact = ACT_NONE;
  float* sums = nullptr;  // gemm_tn_sums: sums[m] [+]= sum over k of op(a)[m][k] (trans_a)
  int64_t ldc = 0;        // rows of c (and of y) lie ldc apart; 0: N (c contiguous)
  int64_t ld_c() const { return ldc ? ldc : N; }
};

// A panels [p_lo, p_hi) of the M-block starting at row mb (mc rows): panel p holds rows
// mb + p*MR ... (zero-padded to MR) of op(a) at depths [k0, k0+kc), stored from dst + (p-p_lo)*MR*kc
// as [k*MR + i].
template <class Tl>
void pack_a(float* dst, const Operands& g, int64_t mb, int64_t mc, int64_t p_lo, int64_t p_hi, int64_t k0,
            int64_t kc) {
  constexpr int MR = Tl::MR;
  if (g.trans_a) {  // a stored (K,M): walk it row by row (one run of MR floats per panel and k)
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = g.a + (k0 + k) * g.lda + mb;
      for (int64_t p = p_lo; p < p_hi; ++p) {
        float* d = dst + (p - p_lo) * MR * kc + k * MR;
        const int64_t i0 = p * MR;
        if (i0 + MR <= mc) {
          std::memcpy(d, src + i0, sizeof(float) * MR);
        } else {
          const int64_t mr = mc - i0;
          for (int i = 0; i < MR; ++i) d[i] = i < mr ? src[i0 + i] : 0.0f;
        }
      }
    }
    return;
  }
  for (int64_t p = p_lo; p < p_hi; ++p) {  // a stored (M,K): transpose 8 rows at a time
    const int64_t i0 = p * MR;
    const int mr = static_cast<int>(mc - i0 < MR ? mc - i0 : MR);
    const float* src = g.a + (mb + i0) * g.lda + k0;
    for (int r0 = 0; r0 < MR; r0 += 8) {
      int width = MR - r0 < 8 ? MR - r0 : 8;
      int rows = mr - r0 < 0 ? 0 : (mr - r0 < width ? mr - r0 : width);
      pack_transposed(dst + (p - p_lo) * MR * kc + r0, MR, src + r0 * g.lda, g.lda, rows, width, kc);
    }
  }
}

// The B block of columns [nb, nb+nc) of op(b) at depths [k0, k0+kc), as strips of NR columns
// (the last zero-padded): strip s stored dst[s*NR*kc + k*NR + j].
template <class Tl>
void pack_b(float* dst, const Operands& g, int64_t nb, int64_t nc, int64_t k0, int64_t kc) {
  constexpr int NR = Tl::NR, NV = Tl::NV;
  const int64_t strips = (nc + NR - 1) / NR;
  if (g.trans_b) {  // b stored (N,K): transpose 16 (AVX-512) or 8 columns of op(b) at a time
    for (int64_t s = 0; s < strips; ++s) {
      const int64_t j0 = s * NR;
      const int nr = static_cast<int>(nc - j0 < NR ? nc - j0 : NR);
      const float* src = g.b + (nb + j0) * g.ldb + k0;
      for (int c0 = 0; c0 < NR;) {
        const int left = nr - c0 < 0 ? 0 : nr - c0;  // real columns from c0 on
#if defined(__AVX512F__)
        if (NR - c0 >= 16) {  // 16 at a time: faster on the MNIST first layer's forward (docs/kernels.md §4)
          pack_transposed16(dst + s * NR * kc + c0, NR, src + c0 * g.ldb, g.ldb, left < 16 ? left : 16, kc);
          c0 += 16;
          continue;
        }
#endif
        const int width = NR - c0 < 8 ? NR - c0 : 8;
        pack_transposed(dst + s * NR * kc + c0, NR, src + c0 * g.ldb, g.ldb, left < width ? left : width, width, kc);
        c0 += width;
      }
    }
    return;
  }
  const int64_t full = nc / NR;  // b stored (K,N): walk it row by row
  for (int64_t k = 0; k < kc; ++k) {
    const float* src = g.b + (k0 + k) * g.ldb + nb;
    float* d = dst + k * NR;
    for (int64_t s = 0; s < full; ++s)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) Vec::store(d + s * NR * kc + j * kW, Vec::loadu(src + s * NR + j * kW));
    if (full < strips) {
      const int64_t nr = nc - full * NR;
      for (int j = 0; j < NR; ++j) d[full * NR * kc + j] = j < nr ? src[full * NR + j] : 0.0f;
    }
  }
}

// ------------------------------------------------------------------ blocked product
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Depth of each K-block: K split into equal blocks of at most kKC, rounded up to 8.
inline int64_t k_block(int64_t K) { return round_up(ceil_div(K, ceil_div(K, kKC)), 8); }

// Where thread t of T starts when the rows are split: equal shares, at multiples of 4 rows (a
// thread's last panel then runs an edge tile); panel boundaries gave one thread a whole panel more.
inline int64_t row_split(int64_t M, int64_t t, int64_t T) {
  if (t >= T) return M;
  const int64_t m = round_up(M * t / T, 4);
  return m < M ? m : M;
}

// How a thread gets its A panels.
enum APanels {
  A_SHARED,    // the A block of each K-block is packed jointly by all threads into a double buffer
               // (two halves of a_half floats); each thread covers all rows, one barrier per K-block
  A_PRIVATE,   // the thread packs the panels of its own rows into a_buf
  A_IN_PLACE,  // full panels of a (stored (M,K)) are read where they are; only a last, partial panel
               // is packed (into a_buf), as reading it in place would run past a's rows
};

// The work of one thread: rows [m_lo, m_hi) x columns [n_lo, n_hi) of c, in M-blocks of mb_rows
// rows (a multiple of MR: the most an A buffer holds). b_buf: this thread's B block.
template <class Tl>
void gemm_thread(const Operands& g, int64_t m_lo, int64_t m_hi, int64_t n_lo, int64_t n_hi, int64_t mb_rows,
                 APanels mode, float* a_buf, int64_t a_half, float* b_buf, int t, int nt) {
  constexpr int MR = Tl::MR, NV = Tl::NV, NR = Tl::NR;
  const int64_t kcb = k_block(g.K);
  // One A panel uses each packed B strip once: pack a strip just before its use, not a whole B block
  // ahead, so it is read back from L1/L2 and b stays in L2 across calls (one sample's forward).
  const int64_t nb_cols = g.trans_b && m_hi - m_lo <= MR ? NR : kNB / NR * NR;
  const bool b_compact = kcb * g.ldb <= kInPlaceB && g.ldb % 1024 != 0;
  const int64_t ldc = g.ld_c();
  int64_t round = 0;  // which half of the double buffer
  for (int64_t mb = m_lo; mb < m_hi; mb += mb_rows) {
    const int64_t mc = m_hi - mb < mb_rows ? m_hi - mb : mb_rows;
    const int64_t panels = ceil_div(mc, MR);
    for (int64_t k0 = 0; k0 < g.K; k0 += kcb, ++round) {
      const int64_t kc = g.K - k0 < kcb ? g.K - k0 : kcb;
      const bool first = k0 == 0, last = k0 + kc >= g.K;
      float* ab = mode == A_SHARED ? a_buf + (round & 1) * a_half : a_buf;
      if (mode == A_SHARED) {
        const int64_t p_lo = panels * t / nt, p_hi = panels * (t + 1) / nt;
        pack_a<Tl>(ab + p_lo * MR * kc, g, mb, mc, p_lo, p_hi, k0, kc);
#pragma omp barrier
      } else if (mode == A_PRIVATE) {
        pack_a<Tl>(ab, g, mb, mc, 0, panels, k0, kc);
      } else if (mc % MR) {
        pack_a<Tl>(ab, g, mb, mc, panels - 1, panels, k0, kc);
      }
      Epilogue e{first ? g.accumulate : 1, nullptr, last ? g.act : ACT_NONE};
      const bool dact = last && g.y;  // gemm_dact: each tile times act'(y) once stored
      for (int64_t nb = n_lo; nb < n_hi; nb += nb_cols) {
        const int64_t nc = n_hi - nb < nb_cols ? n_hi - nb : nb_cols;
        const int64_t strips = ceil_div(nc, NR);
        // Full strips of b (stored (K,N)) are read in place, and only a last, partial one is packed
        // (reading it in place would run past b's last row), when one A panel meets each strip once,
        // or when the strip's rows span little memory (see kInPlaceB).
        const bool b_in_place = !g.trans_b && (panels == 1 || b_compact);
        const int64_t full_strips = nc / NR;
        if (!b_in_place)
          pack_b<Tl>(b_buf, g, nb, nc, k0, kc);
        else if (full_strips < strips)
          pack_b<Tl>(b_buf, g, nb + full_strips * NR, nc - full_strips * NR, k0, kc);
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t m0 = mb + p * MR;
          const int mr = static_cast<int>(mb + mc - m0 < MR ? mb + mc - m0 : MR);
          const bool in_place = mode == A_IN_PLACE && mr == MR;
          const float* ap = in_place ? g.a + m0 * g.lda + k0 : mode == A_IN_PLACE ? ab : ab + p * MR * kc;
          // The panel against every strip, with a tile of R rows (a packed panel stays MR wide).
          auto strips_with = [&](auto rows) {
            constexpr int R = decltype(rows)::value;
            for (int64_t s = 0; s < strips; ++s) {
              const int64_t n0 = nb + s * NR;
              const int nr = static_cast<int>(nc - s * NR < NR ? nc - s * NR : NR);
              float* cp = g.c + m0 * ldc + n0;
              e.bias = last && g.bias ? g.bias + n0 : nullptr;
              const bool prefetch = s == strips - 1 && p + 1 < panels && mode != A_IN_PLACE;
              const float* a_next = prefetch ? ap + MR * kc : nullptr;
              if (b_in_place && s < full_strips) {
                const float* bp = g.b + k0 * g.ldb + n0;
                if (in_place)
                  micro_kernel<R, NV, false, false>(kc, ap, g.lda, 1, bp, g.ldb, cp, ldc, mr, nr, e, nullptr);
                else
                  micro_kernel<R, NV, true, false, MR>(kc, ap, 0, 0, bp, g.ldb, cp, ldc, mr, nr, e, a_next);
              } else if (NV > 1 && nr <= kW) {  // a last strip one vector wide (784 = 24 x 32 + 16): a
                // one-vector tile, not half a tile of zeros
                const float* bp = b_buf + (b_in_place ? 0 : s * NR * kc);
                if (in_place)
                  micro_kernel<R, 1, false, true, R, NR>(kc, ap, g.lda, 1, bp, NR, cp, ldc, mr, nr, e, nullptr);
                else
                  micro_kernel<R, 1, true, true, MR, NR>(kc, ap, 0, 0, bp, NR, cp, ldc, mr, nr, e, a_next);
              } else {
                const float* bp = b_buf + (b_in_place ? 0 : s * NR * kc);
                if (in_place)
                  micro_kernel<R, NV, false>(kc, ap, g.lda, 1, bp, NR, cp, ldc, mr, nr, e, nullptr);
                else
                  micro_kernel<R, NV, true, true, MR>(kc, ap, 0, 0, bp, NR, cp, ldc, mr, nr, e, a_next);
              }
              if (dact) dact_tile(cp, g.y + m0 * ldc + n0, ldc, mr, nr, g.dact);
            }
          };
          // A last, partial panel runs a shorter tile instead of multiplying zeros: 128 rows = 10
          // panels of 12 + 8 rows, 256 = 21 x 12 + 4.
          if (MR > 4 && mr <= 4)
            strips_with(std::integral_constant<int, 4>{});
          else if (MR > 8 && mr <= 8)
            strips_with(std::integral_constant<int, 8>{});
          else
            strips_with(std::integral_constant<int, MR>{});
        }
      }
    }
  }
}

// Packing space of the calling thread (an Arena, kernel_common.h): per thread, not static, as the GIL
// is released and two Python threads may multiply at once.
thread_local Arena t_arena;

// Returns false (having written nothing) when the packing space cannot be allocated.
template <class Tl>
bool gemm_blocked(const Operands& g) {
  constexpr int MR = Tl::MR, NR = Tl::NR;
  const int64_t strips = ceil_div(g.N, NR), panels = ceil_div(g.M, MR);
  const double flops = 2.0 * double(g.M) * double(strips * NR) * double(g.K);  // padding included
  int nt = flops < kParallelFlops || omp_in_parallel() ? 1 : team_threads();
  // Split the rows when every thread gets 8 A panels or more (each thread then reads only its own
  // rows of a), else the columns when every thread gets at least 2 strips of them, else the rows.
  // Also the rows when op(b) is small and rows are many: two threads writing halves of each row of c
  // would share a cache line per row. Measured in docs/kernels.md §6.
  const bool small_b = g.K * g.N <= 8192 && panels >= 4 * nt;
  const bool many_rows = panels >= 8 * nt;
  const bool split_n = nt > 1 && strips >= 2 * nt && !small_b && !many_rows;
  if (!split_n && nt > panels) nt = static_cast<int>(panels);
  if (nt < 1) nt = 1;
  // When a thread's columns fit one B block, each A panel meets each B strip once per K-block:
  // reading a in place then beats packing it, and spares the barriers. Not when a's rows lie a
  // multiple of 4 KiB apart: the MR rows read at once would fall in one L1 set (docs/kernels.md §4).
  const int64_t cols = split_n ? ceil_div(strips, nt) * NR : g.N;
  const bool a_aliases = g.lda % 1024 == 0;
  const APanels mode = !g.trans_a && !a_aliases && cols <= kNB ? A_IN_PLACE : split_n ? A_SHARED : A_PRIVATE;

  // Packing space, in 4 KiB multiples: [a B block per thread][A: a shared double buffer, or one
  // block per thread]. A B block is k_block x (at most kNB columns); an A block is k_block x (at
  // most kMB rows: all of M when shared, the thread's share of it when private, one panel in place).
  const int64_t kcb = k_block(g.K);
  const int64_t b_cols = round_up(cols, NR) < kNB ? round_up(cols, NR) : kNB;
  const int64_t b_floats = round_up(kcb * b_cols, 1024);
  const int64_t rows = mode == A_PRIVATE ? row_split(g.M, 1, nt) + 4 : g.M;  // the most rows a thread gets
  const int64_t mb_rows = mode == A_IN_PLACE ? round_up(g.M, MR) : round_up(rows < kMB ? rows : kMB, MR);
  const int64_t a_floats = round_up(kcb * (mode == A_IN_PLACE ? MR : mb_rows), 1024);
  const int64_t a_count = mode == A_SHARED ? 2 : nt;
  float* ws = t_arena.get(size_t(nt * b_floats + a_count * a_floats));
  if (!ws) return false;

  if (nt == 1) {
    DenormalsOff ftz;
    gemm_thread<Tl>(g, 0, g.M, 0, g.N, mb_rows, mode, ws + b_floats, 0, ws, 0, 1);
    if (g.sums) sum_columns(g.sums, g.a, g.K, g.lda, 0, g.M, g.accumulate);
    return true;
  }
  parallel_region(nt, [&](int t, int T) {  // T < nt if the runtime says so
    float* b_buf = ws + t * b_floats;
    float* a_buf = ws + nt * b_floats + (mode == A_SHARED ? 0 : t * a_floats);
    if (split_n) {
      const int64_t s_lo = strips * t / T, s_hi = strips * (t + 1) / T;
      const int64_t n_lo = s_lo * NR, n_hi = s_hi * NR < g.N ? s_hi * NR : g.N;
      gemm_thread<Tl>(g, 0, g.M, n_lo, n_hi, mb_rows, mode, a_buf, a_floats, b_buf, t, T);
    } else {
      const int64_t m_lo = row_split(g.M, t, T), m_hi = row_split(g.M, t + 1, T);
      if (m_lo < m_hi) gemm_thread<Tl>(g, m_lo, m_hi, 0, g.N, mb_rows, mode, a_buf, 0, b_buf, t, T);
    }
    // gemm_tn_sums: each thread sums the rows of op(a) (columns of a) it multiplied, still in its
    // caches; as the rows are split, also when the columns were
    if (g.sums) sum_columns(g.sums, g.a, g.K, g.lda, row_split(g.M, t, T), row_split(g.M, t + 1, T), g.accumulate);
  });
  return true;
}

// ------------------------------------------------------------------ a few rows times bᵀ, any order
// c (M,N) = [c +] a (M,K) · b (N,K)ᵀ [+ bias], then act, for M <= kDotRows (one sample's forward): each
// c[m][n] is a dot product of two contiguous rows, taken along K four columns of c at a time, so b
// is read once and never packed (packing it costs what the product does when M is 1). Lane l sums
// k ≡ l (mod W), then a horizontal sum: not the blocked path's order, so a row's bits differ from the
// same row's in a larger batch (by ~1e-7); only for callers that waive batch invariance.
template <int M>
void gemm_dots_rows(const Operands& g, int64_t n_lo, int64_t n_hi) {
  const int64_t K = g.K, kv = K / kW * kW;
  const Vec::mask tail = Vec::first(static_cast<int>(K - kv));
  for (int64_t n0 = n_lo; n0 < n_hi; n0 += 4) {
    const int cols = n_hi - n0 < 4 ? static_cast<int>(n_hi - n0) : 4;
    reg acc[M][4];
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = Vec::zero();
    const float* bj[4];
    for (int j = 0; j < 4; ++j) bj[j] = g.b + (n0 + (j < cols ? j : 0)) * K;
    for (int64_t k = 0; k <= kv; k += kW) {
      const bool partial = k == kv;
      if (partial && kv == K) break;
      reg av[M], bv[4];
      for (int m = 0; m < M; ++m) av[m] = partial ? Vec::loadu_n(g.a + m * K + k, tail) : Vec::loadu(g.a + m * K + k);
      for (int j = 0; j < 4; ++j) bv[j] = partial ? Vec::loadu_n(bj[j] + k, tail) : Vec::loadu(bj[j] + k);
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < 4; ++j) acc[m][j] = Vec::fmadd(av[m], bv[j], acc[m][j]);
    }
    for (int m = 0; m < M; ++m) {
      float* p = g.c + m * g.N + n0;
      static_assert(kW >= 4, "the 4 columns fit one vector");
      alignas(64) float v[kW] = {};
      for (int j = 0; j < cols; ++j)
        v[j] = Vec::hsum(acc[m][j]) + (g.accumulate ? p[j] : 0.0f) + (g.bias ? g.bias[n0 + j] : 0.0f);
      if (g.act != ACT_NONE) Vec::store(v, activate(Vec::load(v), g.act));  // the blocked path's epilogue
      for (int j = 0; j < cols; ++j) p[j] = v[j];
    }
  }
}

void gemm_dots(const Operands& g) {
  auto rows = [&](int64_t lo, int64_t hi) {
    switch (g.M) {
      case 1: return gemm_dots_rows<1>(g, lo, hi);
      case 2: return gemm_dots_rows<2>(g, lo, hi);
      default: return gemm_dots_rows<3>(g, lo, hi);  // (kDotRows is 3 at most)
    }
  };
  // columns in chunks of 4 (parallel_chunks splits at multiples of 16); from 64K multiply-adds on,
  // two threads. Each element is one thread's, summed alike on any count: the same bits on 1 or 2.
  parallel_chunks(g.N, rows, (kParallelGrain * 2) / (g.K * g.M) + 16);
}

// The plain loop in double on g's strides: matmul_reference, and gemm_any's fallback.
void reference_strided(const Operands& g) {
  const int64_t ldc = g.ld_c();
  for (int64_t m = 0; m < g.M; ++m) {
    for (int64_t n = 0; n < g.N; ++n) {
      double s = g.accumulate ? g.c[m * ldc + n] : 0.0;
      for (int64_t k = 0; k < g.K; ++k)
        s += double(g.trans_a ? g.a[k * g.lda + m] : g.a[m * g.lda + k]) *
             double(g.trans_b ? g.b[n * g.ldb + k] : g.b[k * g.ldb + n]);
      if (g.bias) s += g.bias[n];
      g.c[m * ldc + n] = static_cast<float>(activate_ref(s, g.act));
    }
  }
}

// The blocked product, with the tile that suits its shape; the plain loop when it cannot run (K = 0,
// or no packing space), then the epilogue's extras done the same way. Every tile sums in the same
// order (see the top of this file), so the choice changes speed, never bits.
void gemm_any(const Operands& g) {
  const int64_t M = g.M, N = g.N, K = g.K;
  const bool ok = K > 0 && (N <= kW   ? gemm_blocked<Tile<kSmallMR, 1>>(g)  // a 10-class head: no padded columns
                            : M == 1 ? gemm_blocked<Tile<1, 4>>(g)  // one sample: 4 chains, no padded rows
                            : M <= 4 ? gemm_blocked<Tile<4, kNV>>(g)  // a few rows: no 12-row tile
                                     : gemm_blocked<Tile<kMR, kNV>>(g));
  if (ok) return;
  reference_strided(g);
  if (g.sums) sum_columns(g.sums, g.a, K, g.lda, 0, M, g.accumulate);
  if (g.y) dact_tile(g.c, g.y, g.ld_c(), M, N, g.dact);
}
}  // namespace

// c (M,N) [+]= op(a) (M,K) · op(b) (K,N) [+ bias (N)], then act; a stored (M,K) or, trans_a, (K,M);
// b stored (K,N) or, trans_b, (N,K). batch_invariant = 0 lets a·bᵀ with M <= kDotRows take gemm_dots
// (2-3x faster for one row, another summation order). The reference version is matmul_reference below.
void matmul(float* c, const float* a, const float* b, const float* bias, int act, int64_t M, int64_t N, int64_t K,
            int trans_a, int trans_b, int accumulate, int batch_invariant) {
  if (M <= 0 || N <= 0) return;
  Operands g{c, a, b, bias, act, M, N, K, trans_a ? M : K, trans_b ? K : N, trans_a, trans_b, accumulate};
  static_assert(kDotRows <= 3, "gemm_dots has cases for 1-3 rows");
  if (!batch_invariant && K > 0 && M <= kDotRows && trans_b && !trans_a) return gemm_dots(g);
  gemm_any(g);
}

// matmul on sub-matrices: rows of c lie ldc apart, of a lda apart, of b ldb apart (as stored: a (M,K) or,
// trans_a, (K,M); b likewise). Batch-invariant, no bias (a caller adds a per-row bias by writing it into c
// first, accumulate = 1). Runs on the calling thread inside a parallel region: conv.cpp gives each thread
// its own products.
void matmul_strided(float* c, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb, int act,
                    int64_t M, int64_t N, int64_t K, int trans_a, int trans_b, int accumulate) {
  if (M <= 0 || N <= 0) return;
  Operands g{c, a, b, nullptr, act, M, N, K, lda, ldb, trans_a, trans_b, accumulate};
  g.ldc = ldc;
  gemm_any(g);
}

// c = (op(a)·op(b)) ⊙ act'(y): each tile of c, once stored, is multiplied by the derivative of act,
// read from its output y (M,N) (ACT_RELU: heaviside(y, 0), ACT_SIGMOID: y(1-y), ACT_TANH: 1-y²).
void gemm_dact(float* c, const float* a, const float* b, const float* y, int act, int64_t M, int64_t N, int64_t K,
               int trans_a, int trans_b) {
  if (M <= 0 || N <= 0) return;
  Operands g{c, a, b, nullptr, ACT_NONE, M, N, K, trans_a ? M : K, trans_b ? K : N, trans_a, trans_b, 0};
  g.y = y;
  g.dact = act;
  gemm_any(g);
}

// c (M,N) [+]= aᵀ·b (a stored (K,M)) and sums (M) [+]= the column sums of a, in the product's
// parallel region: the dense layer's weight and bias gradients (before, the bias gradient ran after
// the product on one thread, ~3 us of the MNIST step while the other waited).
void gemm_tn_sums(float* c, float* sums, const float* a, const float* b, int64_t M, int64_t N, int64_t K,
                  int accumulate) {
  if (M <= 0 || N <= 0) return;
  Operands g{c, a, b, nullptr, ACT_NONE, M, N, K, M, N, 1, 0, accumulate};
  g.sums = sums;
  gemm_any(g);
}

// Same contract as matmul: the plain triple loop, in double. The oracle for the tests. Batch-invariant
// whatever batch_invariant says (each element is its own sum).
void matmul_reference(float* c, const float* a, const float* b, const float* bias, int act, int64_t M, int64_t N,
                      int64_t K, int trans_a, int trans_b, int accumulate, int /*batch_invariant*/) {
  if (M <= 0 || N <= 0) return;
  reference_strided(Operands{c, a, b, bias, act, M, N, K, trans_a ? M : K, trans_b ? K : N, trans_a, trans_b,
                             accumulate});
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
