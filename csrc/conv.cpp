// conv.cpp - 2-D convolution (NCHW), forward and backward, as products on gemm's micro-kernels.
//
// Letters: N images, C input channels, H x W input, OC output channels, KH x KW kernel, G groups,
// OH x OW output, P = OH*OW output pixels; per group Cg = C/G, OCg = OC/G, K = Cg*KH*KW.
// A column of the im2col matrix of image n, group g is one output pixel p = oh*OW + ow; its row
// k = (c*KH + kh)*KW + kw holds x[n][g*Cg + c][oh*SH - PH + kh*DH][ow*SW - PW + kw*DW] (0 outside).
//   forward      y[n][g] (OCg, P)   = W[g] (OCg, K) · col (K, P)  [+ bias], then act
//   input grad   dcol (K, P)        = W[g]ᵀ · dy[n][g],   dx[n][g] = col2im(dcol) [⊙ act'(x)]
//   weight grad  dW[g] (OCg, K)    += dy[n][g] (OCg, P) · colᵀ,     dbias[oc] += Σ_n,p dy[n][oc][p]
// The im2col matrix is never built whole (for LeNet's first layer at batch 128 it is ~10 MB): each
// thread builds the columns of one image's block of pixels, at most kColFloats floats, in its own
// buffer, which stays in L2 while matmul_strided multiplies it where it lies (no second packing: gemm
// reads a row-major B block in place). A 1x1, stride-1, unpadded convolution multiplies the image
// itself. Output channels are the product's rows and pixels its columns, so the vectors run along
// output pixels: a layer with 6 output channels still fills its lanes. No layout changes: x, y,
// dx and dy stay NCHW, the pixels of a channel contiguous.
// Threads: forward items (image, group, pixel block) and input-gradient items (image, group) write
// disjoint outputs. The weight gradient sums over images in kWeightParts fixed parts, each a
// partial sum in image order, added in part order afterwards: the same bits at any thread count.
#include <cmath>
#include <cstdlib>
#include <atomic>
#include <cstring>
#include <vector>

#include "kernel_common.h"
#include "vec.h"

namespace fastdl {
namespace FASTDL_ISA_NS {
namespace {

// Floats in one im2col block (256 KiB: with the weights it stays in a 1-2 MiB L2).
constexpr int64_t kColFloats = 65536;
// Images in one block at most (small images: LeNet's 10 x 10 outputs make one product of 4 images).
constexpr int64_t kBlockImages = 16;
// The weight gradient's fixed partial sums over images (at most this many, at least one image each).
constexpr int64_t kWeightParts = 8;
// 2*N*OC*K*P below this runs on the calling thread.
constexpr double kConvParallelFlops = 1.0e6;

// Per-thread scratch (Arena, kernel_common.h), reused by later calls.
thread_local Arena t_col;    // a thread's im2col block
thread_local Arena t_tmp;    // a thread's block of output or output gradient, (OCg, block columns)
thread_local Arena t_pad;    // a thread's padded block input (or its gradient)
thread_local Arena t_parts;  // the caller's partial weight gradients
thread_local Arena t_flip;   // the caller's flipped weights (the input gradient as a convolution)
thread_local Arena t_apack;  // the caller's weights packed for the shifted-window forward

// The columns of one product: images [n0, n0+ni) x output rows [oh0, oh1), image by image, row by row
// (ni > 1 only with whole images).
struct Block {
  int64_t n0, ni, oh0, oh1;
};

struct Dims {
  int64_t Cg, OCg, K, P, HW;
  bool direct;        // 1x1, stride 1, no padding: the image is its own im2col matrix
  int64_t rows;       // output rows per block
  int64_t row_blocks; // blocks per image: ceil(OH / rows)
  int64_t images;     // images per block (1 unless rows == OH)
  int64_t cols;       // the most columns a block has
  explicit Dims(const Conv2dShape& s)
      : Cg(s.C / s.G), OCg(s.OC / s.G), K(s.C / s.G * s.KH * s.KW), P(s.OH * s.OW), HW(s.H * s.W),
        direct(s.KH == 1 && s.KW == 1 && s.SH == 1 && s.SW == 1 && s.PH == 0 && s.PW == 0) {
    int64_t r = direct ? s.OH : kColFloats / (K * s.OW);
    if (r < 1) r = 1;
    if (r >= s.OH) {  // whole images, as many as fit
      rows = s.OH, row_blocks = 1;
      images = direct ? 1 : kColFloats / (K * P);
      images = images < 1 ? 1 : images > kBlockImages ? kBlockImages : images;
      images = images > s.N ? s.N : images;
    } else {  // equal blocks of rows of one image
      row_blocks = (s.OH + r - 1) / r;
      rows = (s.OH + row_blocks - 1) / row_blocks;
      images = 1;
    }
    cols = images * rows * s.OW;
  }
  // block b (image blocks of `images`, each split into row_blocks) starting at image n_lo, ending by n_hi
  Block block(const Conv2dShape& s, int64_t b, int64_t n_lo, int64_t n_hi) const {
    const int64_t n0 = n_lo + b / row_blocks * images, oh0 = b % row_blocks * rows;
    return Block{n0, n_hi - n0 < images ? n_hi - n0 : images, oh0, oh0 + rows < s.OH ? oh0 + rows : s.OH};
  }
  int64_t blocks(int64_t n) const { return (n + images - 1) / images * row_blocks; }
};

// dst[0, n) = src[0, n) (dst += src when add), vectors with a masked tail.
template <bool add>
FASTDL_INLINE void copy_run(float* dst, const float* src, int64_t n) {
  int64_t j = 0;
  for (; j + kW <= n; j += kW)
    Vec::storeu(dst + j, add ? Vec::add(Vec::loadu(dst + j), Vec::loadu(src + j)) : Vec::loadu(src + j));
  if (j < n) {
    const Vec::mask m = Vec::first(static_cast<int>(n - j));
    const reg v = Vec::loadu_n(src + j, m);
    Vec::storeu_n(dst + j, add ? Vec::add(Vec::loadu_n(dst + j, m), v) : v, m);
  }
}

// The block's input, zero-padded: for each image and channel of the group, the input rows its output
// rows read (in_rows of them, from input row oh0*SH - PH), each padded to Wp = the reach of a kernel
// row, (OW-1)*SW + (KW-1)*DW + 1, column u holding input column u - PW (0 outside the input). im2col
// then copies whole runs with no bounds to test, and col2im adds whole runs.
inline int64_t in_rows(const Conv2dShape& s, const Block& b) { return (b.oh1 - b.oh0 - 1) * s.SH + (s.KH - 1) * s.DH + 1; }
inline int64_t padded_width(const Conv2dShape& s) { return (s.OW - 1) * s.SW + (s.KW - 1) * s.DW + 1; }
// Floats of a padded block (kW more: a vector read past the last run stays inside)
inline int64_t padded_floats(const Conv2dShape& s, const Dims& d) {
  const Block b{0, d.images, 0, d.rows};
  return d.images * d.Cg * in_rows(s, b) * padded_width(s) + kW;
}

// A thread's buffers for the im2col path: the block's im2col matrix (or its gradient), its padded input
// (or gradient), and its (OCg, block columns) output or output gradient when a block holds several images;
// ok false when one of those it needs cannot be had.
struct BlockScratch {
  float *col, *pad, *tmp;
  bool ok;
  BlockScratch(const Conv2dShape& s, const Dims& d)
      : col(d.direct ? nullptr : t_col.get(size_t(d.K * d.cols))),
        pad(d.direct ? nullptr : t_pad.get(size_t(padded_floats(s, d)))),
        tmp(d.images > 1 ? t_tmp.get(size_t(d.OCg * d.cols)) : nullptr),
        ok((d.direct || (col && pad)) && (d.images == 1 || tmp)) {}
};

// xp = the padded input of block b; x: image n0's first channel of the group, images C*HW apart.
void pad_block(float* xp, const Conv2dShape& s, const Dims& d, const float* x, const Block& b) {
  const int64_t rows = in_rows(s, b), wp = padded_width(s), ih0 = b.oh0 * s.SH - s.PH;
  const int64_t lo = s.PW < wp ? s.PW : wp, hi = s.PW + s.W < wp ? s.PW + s.W : wp;  // inside: [lo, hi)
  for (int64_t i = 0; i < b.ni; ++i)
    for (int64_t c = 0; c < d.Cg; ++c)
      for (int64_t v = 0; v < rows; ++v) {
        float* dst = xp + ((i * d.Cg + c) * rows + v) * wp;
        const int64_t ih = ih0 + v;
        if (ih < 0 || ih >= s.H || hi <= lo) {
          std::memset(dst, 0, sizeof(float) * wp);
          continue;
        }
        for (int64_t u = 0; u < lo; ++u) dst[u] = 0.0f;
        copy_run<false>(dst + lo, x + (i * s.C + c) * d.HW + ih * s.W, hi - lo);
        for (int64_t u = hi; u < wp; ++u) dst[u] = 0.0f;
      }
}

// The shifted-window kernels' padded input: the rows output rows [oh0, oh1) of one image read, each of the
// group's channels (x: its first, HW apart) in a plane of in_r rows of Wp (the rows past those read zeroed,
// so that every plane has the same size), then `slack` zeros for the loads that run past the last plane.
void pad_planes(float* xp, int64_t in_r, int64_t slack, const Conv2dShape& s, const Dims& d, const float* x,
                int64_t oh0, int64_t oh1) {
  const Block b{0, 1, oh0, oh1};
  const int64_t rows = in_rows(s, b), wp = padded_width(s), ih0 = oh0 * s.SH - s.PH;
  const int64_t lo = s.PW < wp ? s.PW : wp, hi = s.PW + s.W < wp ? s.PW + s.W : wp;  // inside: [lo, hi)
  // the rows that read the input, [v0, v1): the others (top and bottom padding, rows past `rows`) are zeros
  const int64_t v0 = ih0 < 0 ? (-ih0 < rows ? -ih0 : rows) : 0;
  const int64_t v1 = s.H - ih0 < rows ? (s.H - ih0 > v0 ? s.H - ih0 : v0) : rows;
  for (int64_t c = 0; c < d.Cg; ++c) {
    float* plane = xp + c * in_r * wp;
    if (v0 > 0) std::memset(plane, 0, sizeof(float) * v0 * wp);
    for (int64_t v = v0; v < v1; ++v) {
      float* dst = plane + v * wp;
      for (int64_t u = 0; u < lo; ++u) dst[u] = 0.0f;
      if (hi > lo) copy_run<false>(dst + lo, x + c * d.HW + (ih0 + v) * s.W, hi - lo);
      for (int64_t u = hi > lo ? hi : lo; u < wp; ++u) dst[u] = 0.0f;
    }
    if (v1 < in_r) std::memset(plane + v1 * wp, 0, sizeof(float) * (in_r - v1) * wp);
  }
  std::memset(xp + d.Cg * in_r * wp, 0, sizeof(float) * slack);
}

// dx += the interior of the padded block dxp (pad_block's inverse, adding).
void unpad_add(float* dx, const Conv2dShape& s, const Dims& d, const float* dxp, const Block& b) {
  const int64_t rows = in_rows(s, b), wp = padded_width(s), ih0 = b.oh0 * s.SH - s.PH;
  const int64_t lo = s.PW < wp ? s.PW : wp, hi = s.PW + s.W < wp ? s.PW + s.W : wp;
  for (int64_t i = 0; i < b.ni; ++i)
    for (int64_t c = 0; c < d.Cg; ++c)
      for (int64_t v = 0; v < rows; ++v) {
        const int64_t ih = ih0 + v;
        if (ih < 0 || ih >= s.H || hi <= lo) continue;
        copy_run<true>(dx + (i * s.C + c) * d.HW + ih * s.W, dxp + ((i * d.Cg + c) * rows + v) * wp + lo, hi - lo);
      }
}

// f(run, src) for each row k of the im2col matrix of block b and each image and output row: the OW
// columns col[run, run + OW) of that output row are src[0], src[SW], ... of the padded block xp.
template <class F>
FASTDL_INLINE void walk_block(const Conv2dShape& s, const Dims& d, const float* xp, const Block& b, F&& f) {
  const int64_t cols = b.ni * (b.oh1 - b.oh0) * s.OW, rows = in_rows(s, b), wp = padded_width(s);
  for (int64_t c = 0; c < d.Cg; ++c)
    for (int64_t kh = 0; kh < s.KH; ++kh)
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        int64_t j = ((c * s.KH + kh) * s.KW + kw) * cols;
        for (int64_t i = 0; i < b.ni; ++i) {
          const float* src = xp + (i * d.Cg + c) * rows * wp + kh * s.DH * wp + kw * s.DW;
          for (int64_t r = 0; r < b.oh1 - b.oh0; ++r, j += s.OW, src += s.SH * wp) f(j, src);
        }
      }
}

// col (K, block columns) = the im2col matrix of the block, from its padded input xp.
void im2col(float* col, const Conv2dShape& s, const Dims& d, const float* xp, const Block& b) {
  const int64_t full = s.OW / kW * kW;
  const Vec::mask tail = Vec::first(static_cast<int>(s.OW - full));
  walk_block(s, d, xp, b, [&](int64_t j, const float* src) {
    float* dst = col + j;
    if (s.SW == 1) {  // whole vectors (xp has kW floats to spare at its end), the last stored under a mask
      for (int64_t u = 0; u < full; u += kW) Vec::storeu(dst + u, Vec::loadu(src + u));
      if (full < s.OW) Vec::storeu_n(dst + full, Vec::loadu(src + full), tail);
    } else {
      for (int64_t u = 0; u < s.OW; ++u) dst[u] = src[u * s.SW];
    }
  });
}

// dxp += col2im(dcol): each entry of dcol (K, block columns) added to the padded input pixel it was read from.
void col2im_add(float* dxp, const Conv2dShape& s, const Dims& d, const float* dcol, const Block& b) {
  walk_block(s, d, dxp, b, [&](int64_t j, const float* src) {
    float* dst = const_cast<float*>(src);
    if (s.SW == 1)
      copy_run<true>(dst, dcol + j, s.OW);
    else
      for (int64_t u = 0; u < s.OW; ++u) dst[u * s.SW] += dcol[j + u];
  });
}

// The rows [oh0, oh1) of channels [0, OCg) of images [n0, n0+ni) of a (N, OC, P) array a (from its group's
// first channel) as one (OCg, block columns) matrix t, or back (to_t = false).
void gather_block(float* t, float* a, const Conv2dShape& s, const Dims& d, const Block& b, bool to_t) {
  const int64_t cols = b.ni * (b.oh1 - b.oh0) * s.OW, run = (b.oh1 - b.oh0) * s.OW;
  for (int64_t o = 0; o < d.OCg; ++o)
    for (int64_t i = 0; i < b.ni; ++i) {
      float* ap = a + (i * s.OC + o) * d.P + b.oh0 * s.OW;
      float* tp = t + o * cols + i * run;
      if (to_t)
        copy_run<false>(tp, ap, run);
      else
        copy_run<false>(ap, tp, run);
    }
}

// g (n) *= act'(y) with y the activation's output (activations.cpp's backward formulas).
void times_dact(float* g, const float* y, int act, int64_t n) {
  switch (act) {
    case ACT_RELU:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) g[i] = g[i] * heaviside0(y[i]);
      break;
    case ACT_SIGMOID:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) g[i] = g[i] * y[i] * (1.0f - y[i]);
      break;
    case ACT_TANH:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) g[i] = g[i] * (1.0f - y[i] * y[i]);
      break;
    default: break;
  }
}

// ------------------------------------------------------------------ the shifted-window forward
// At stride 1 an output row needs no im2col copy: computed over the padded block's whole width Wp
// (the last Wp - OW columns of each row are discarded), output column j of the block reads the padded
// input at j + off[k] for kernel element k = (c, kh, kw), off[k] = (c·R + kh·DH)·Wp + kw·DW (R: the
// block's input rows). A tile of MR output channels x NV vectors of columns sums over k in order from
// 0 - the order the GEMM path uses for K <= its K-block (400): the same bits - reading B straight from
// the padded rows and A (the weights) from panels packed k-major once per call.
#if defined(__AVX2__)
// c (mr rows ldc apart, ncols columns) = act(Σ_k a[k*MR + i] · b[off[k] + j] + bias[i]); bias nullable.
template <int MR, int NV>
__attribute__((noinline)) void shifted_tile(float* __restrict c, int64_t ldc, const float* __restrict a,
                                            const float* __restrict b, const int64_t* __restrict off, int64_t K,
                                            int mr, int64_t ncols, const float* bias, int act) {
  reg acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 12
    for (int v = 0; v < NV; ++v) acc[i][v] = Vec::zero();
#pragma GCC unroll 2
  for (int64_t k = 0; k < K; ++k) {
    const float* bk = b + off[k];
    reg bv[NV];
#pragma GCC unroll 12
    for (int v = 0; v < NV; ++v) bv[v] = Vec::loadu(bk + v * kW);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const reg av = Vec::bcast(a + k * MR + i);
#pragma GCC unroll 12
      for (int v = 0; v < NV; ++v) acc[i][v] = Vec::fmadd(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 12
  for (int v = 0; v < NV; ++v) {
    const int64_t n = ncols - v * kW < kW ? ncols - v * kW : kW;
    if (n <= 0) break;
    const Vec::mask m = Vec::first(static_cast<int>(n));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      if (i >= mr) break;
      reg x = acc[i][v];
      if (bias) x = Vec::add(x, Vec::set1(bias[i]));
      if (act != ACT_NONE) x = activate(x, act);
      if (n == kW)
        Vec::storeu(c + i * ldc + v * kW, x);
      else
        Vec::storeu_n(c + i * ldc + v * kW, x, m);
    }
  }
}
#endif

// The reference forward for output pixels [p0, p1) of image n, group g: plain loops in double.
void forward_ref_item(float* out, const float* inp, const float* weight, const float* bias, int act,
                      const Conv2dShape& s, int64_t n, int64_t g, int64_t p0, int64_t p1) {
  const Dims d(s);
  for (int64_t o = 0; o < d.OCg; ++o) {
    const int64_t oc = g * d.OCg + o;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t oh = p / s.OW, ow = p % s.OW;
      double acc = 0.0;
      for (int64_t c = 0; c < d.Cg; ++c)
        for (int64_t kh = 0; kh < s.KH; ++kh)
          for (int64_t kw = 0; kw < s.KW; ++kw) {
            const int64_t ih = oh * s.SH - s.PH + kh * s.DH, iw = ow * s.SW - s.PW + kw * s.DW;
            if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
            acc += double(inp[((n * s.C + g * d.Cg + c) * s.H + ih) * s.W + iw]) *
                   double(weight[((oc * d.Cg + c) * s.KH + kh) * s.KW + kw]);
          }
      if (bias) acc += bias[oc];
      out[(n * s.OC + oc) * d.P + p] = static_cast<float>(activate_ref(acc, act));
    }
  }
}

int conv_threads(const Conv2dShape& s, const Dims& d, int64_t items) {
  const double flops = 2.0 * double(s.N) * double(s.OC) * double(d.K) * double(d.P);
  int nt = flops < kConvParallelFlops || omp_in_parallel() ? 1 : team_threads();
  return items < nt ? static_cast<int>(items) : nt;
}
}  // namespace

#if defined(__AVX2__)
// conv2d_forward at stride 1 by shifted_tile<MR, NV>: false (nothing written) when its scratch cannot be had.
template <int MR, int NV>
bool forward_shifted(float* out, const float* inp, const float* weight, const float* bias, int act,
                     const Conv2dShape& s, const Dims& d) {
  constexpr int NR = NV * kW;
  const int64_t wp = padded_width(s), panels = (d.OCg + MR - 1) / MR;
  // blocks of output rows whose padded input (Cg x R x Wp) stays within kColFloats floats
  int64_t rows = kColFloats / (d.Cg * wp) - (s.KH - 1) * s.DH;
  rows = rows < 1 ? 1 : rows > s.OH ? s.OH : rows;
  const int64_t row_blocks = (s.OH + rows - 1) / rows;
  rows = (s.OH + row_blocks - 1) / row_blocks;
  const int64_t in_r = (rows - 1) + (s.KH - 1) * s.DH + 1, cols = rows * wp;
  // the weights in panels of MR output channels, k-major (zero rows past OCg), each group's in turn
  float* apack = t_apack.get(size_t(s.G * panels * MR * d.K));
  if (!apack) return false;
  std::vector<int64_t> offsets(size_t(d.K));  // off[k] (K entries: once per call, not per block)
  int64_t* off = offsets.data();
  for (int64_t c = 0; c < d.Cg; ++c)
    for (int64_t kh = 0; kh < s.KH; ++kh)
      for (int64_t kw = 0; kw < s.KW; ++kw)
        off[(c * s.KH + kh) * s.KW + kw] = (c * in_r + kh * s.DH) * wp + kw * s.DW;
  for (int64_t g = 0; g < s.G; ++g)
    for (int64_t p = 0; p < panels; ++p)
      for (int64_t k = 0; k < d.K; ++k)
        for (int i = 0; i < MR; ++i) {
          const int64_t o = p * MR + i;
          apack[((g * panels + p) * d.K + k) * MR + i] = o < d.OCg ? weight[(g * d.OCg + o) * d.K + k] : 0.0f;
        }
  const int64_t items = s.N * s.G * row_blocks;
  std::atomic<bool> scratch{true};
  parallel_region(conv_threads(s, d, items), [&](int t, int T) {
    // the padded block (and what the last strip's loads run past it), and the block's output at width Wp
    float* xp = t_pad.get(size_t(d.Cg * in_r * wp + (s.KW - 1) * s.DW + NR));
    float* yp = t_tmp.get(size_t(d.OCg * cols));
    if (!xp || !yp) scratch = false;
#pragma omp barrier
    if (!scratch) return;
    for (int64_t it = items * t / T; it < items * (t + 1) / T; ++it) {
      const int64_t rb = it % row_blocks, g = it / row_blocks % s.G, n = it / (row_blocks * s.G);
      const int64_t oh0 = rb * rows, oh1 = oh0 + rows < s.OH ? oh0 + rows : s.OH;
      const int64_t ncols = (oh1 - oh0) * wp;
      // pad_block lays out rin rows per channel; shifted offsets assume in_r: pad into in_r-row planes
      pad_planes(xp, in_r, (s.KW - 1) * s.DW + NR, s, d, inp + (n * s.C + g * d.Cg) * d.HW, oh0, oh1);
      for (int64_t j = 0; j < ncols; j += NR)
        for (int64_t p = 0; p < panels; ++p) {
          const int mr = static_cast<int>(d.OCg - p * MR < MR ? d.OCg - p * MR : MR);
          const float* bp = bias ? bias + g * d.OCg + p * MR : nullptr;
          const float* ap = apack + (g * panels + p) * d.K * MR;
          const int64_t nc = ncols - j < NR ? ncols - j : NR;
          shifted_tile<MR, NV>(yp + p * MR * cols + j, cols, ap, xp + j, off, d.K, mr, nc, bp, act);
        }
      float* y = out + ((n * s.OC + g * d.OCg) * s.OH + oh0) * s.OW;  // drop the columns past OW
      for (int64_t o = 0; o < d.OCg; ++o)
        for (int64_t r = 0; r < oh1 - oh0; ++r) copy_run<false>(y + (o * s.OH + r) * s.OW, yp + o * cols + r * wp, s.OW);
    }
  });
  return scratch;
}

// The weight gradient by shifted windows, stride 1: dWᵀ[k][o] += Σ_j xp[off[k] + j] · dyᵀ[j][o] over the
// block's padded grid (dy is 0 at the columns past OW). A tile of MR kernel elements x NV vectors of
// output channels, c (rows ldc apart) loaded (unless first), summed over j in order, stored back.
template <int MR, int NV>
__attribute__((noinline)) void shifted_dw_tile(float* __restrict c, int64_t ldc, const float* __restrict xp,
                                               const int64_t* __restrict off, const float* __restrict dyt,
                                               int64_t lddy, int64_t J, int mr, bool first) {
  reg acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = first || i >= mr ? Vec::zero() : Vec::loadu(c + i * ldc + v * kW);
  const float* a[MR];
  for (int i = 0; i < MR; ++i) a[i] = xp + off[i < mr ? i : 0];
#pragma GCC unroll 2
  for (int64_t j = 0; j < J; ++j) {
    reg bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = Vec::loadu(dyt + j * lddy + v * kW);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const reg av = Vec::bcast(a[i] + j);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = Vec::fmadd(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= mr) break;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) Vec::storeu(c + i * ldc + v * kW, acc[i][v]);
  }
}

// The weight gradient for a few output channels (LeNet's 6): vectors along the pixels j instead, dW[o][k] +=
// Σ_j dy[o][j] · xp[off[k] + j] as MR x NK lane-wise sums, added across the lanes at the end; c (rows ldc
// apart) loaded unless first. dy (rows lddy apart) and the reads of xp run J rounded up to a vector (dy is
// 0 there).
template <int MR, int NK>
__attribute__((noinline)) void shifted_dw_dots(float* __restrict c, int64_t ldc, const float* __restrict dy,
                                               int64_t lddy, const float* __restrict xp,
                                               const int64_t* __restrict off, int64_t J, int mr, int nk, bool first) {
  reg acc[MR][NK];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int q = 0; q < NK; ++q) acc[i][q] = Vec::zero();
  const float* b[NK];
  for (int q = 0; q < NK; ++q) b[q] = xp + off[q < nk ? q : 0];
  for (int64_t j = 0; j < J; j += kW) {
    reg bv[NK];
#pragma GCC unroll 8
    for (int q = 0; q < NK; ++q) bv[q] = Vec::loadu(b[q] + j);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const reg av = Vec::loadu(dy + (i < mr ? i : 0) * lddy + j);
#pragma GCC unroll 8
      for (int q = 0; q < NK; ++q) acc[i][q] = Vec::fmadd(av, bv[q], acc[i][q]);
    }
  }
  for (int i = 0; i < mr; ++i)
    for (int q = 0; q < nk; ++q) c[i * ldc + q] = (first ? 0.0f : c[i * ldc + q]) + Vec::hsum(acc[i][q]);
}

// The weight gradient at stride 1 into parts x groups transposed partials (K, OCp) each, OCp = OCg rounded up
// to NV vectors (the partials' columns past OCg hold zeros' products, ignored): part q sums images
// [N*q/parts, N*(q+1)/parts) in order. False (nothing usable written) when scratch cannot be had.
// With DOTS (shifted_dw_dots, MR output channels x NV kernel elements a tile) the partials are (OCg, K) per
// group instead, dW's own layout.
template <int MR, int NV, bool DOTS = false>
bool weight_grad_shifted(float* partial, int64_t parts, const float* dout, const float* inp, const Conv2dShape& s,
                         const Dims& d) {
  constexpr int NR = NV * kW;
  const int64_t wp = padded_width(s), ocp = DOTS ? d.OCg : (d.OCg + NR - 1) / NR * NR;
  int64_t rows = kColFloats / (d.Cg * wp) - (s.KH - 1) * s.DH;
  rows = rows < 1 ? 1 : rows > s.OH ? s.OH : rows;
  const int64_t row_blocks = (s.OH + rows - 1) / rows;
  rows = (s.OH + row_blocks - 1) / row_blocks;
  const int64_t in_r = (rows - 1) + (s.KH - 1) * s.DH + 1, cols = rows * wp;
  std::vector<int64_t> off(size_t(d.K));
  for (int64_t c = 0; c < d.Cg; ++c)
    for (int64_t kh = 0; kh < s.KH; ++kh)
      for (int64_t kw = 0; kw < s.KW; ++kw) off[size_t((c * s.KH + kh) * s.KW + kw)] = (c * in_r + kh * s.DH) * wp + kw * s.DW;
  const int64_t items = parts * s.G, psize = s.G * d.K * ocp;
  std::atomic<bool> scratch{true};
  parallel_region(conv_threads(s, d, items), [&](int t, int T) {
    float* xp = t_pad.get(size_t(d.Cg * in_r * wp + (s.KW - 1) * s.DW + 2 * kW));
    float* dyt = t_tmp.get(size_t((cols + kW) * ocp));
    if (!xp || !dyt) scratch = false;
#pragma omp barrier
    if (!scratch) return;
    for (int64_t it = items * t / T; it < items * (t + 1) / T; ++it) {
      const int64_t q = it / s.G, g = it % s.G;
      float* dw = partial + q * psize + g * d.K * ocp;  // (K, ocp)
      bool first = true;
      for (int64_t n = s.N * q / parts; n < s.N * (q + 1) / parts; ++n)
        for (int64_t rb = 0; rb < row_blocks; ++rb) {
          const int64_t oh0 = rb * rows, oh1 = oh0 + rows < s.OH ? oh0 + rows : s.OH;
          const int64_t J = (oh1 - oh0) * wp;
          pad_planes(xp, in_r, (s.KW - 1) * s.DW + 2 * kW, s, d, inp + (n * s.C + g * d.Cg) * d.HW, oh0, oh1);
          const float* dy = dout + (n * s.OC + g * d.OCg) * d.P + oh0 * s.OW;
          if (DOTS) {  // dy on the padded grid, (OCg, J rounded up to a vector), zero past OW
            const int64_t jr = (J + kW - 1) / kW * kW;
            std::memset(dyt, 0, sizeof(float) * d.OCg * jr);
            for (int64_t o = 0; o < d.OCg; ++o)
              for (int64_t r = 0; r < oh1 - oh0; ++r) copy_run<false>(dyt + o * jr + r * wp, dy + o * d.P + r * s.OW, s.OW);
            for (int64_t o0 = 0; o0 < d.OCg; o0 += MR)
              for (int64_t k0 = 0; k0 < d.K; k0 += NV) {
                const int mr = static_cast<int>(d.OCg - o0 < MR ? d.OCg - o0 : MR);
                const int nk = static_cast<int>(d.K - k0 < NV ? d.K - k0 : NV);
                shifted_dw_dots<MR, NV>(dw + o0 * d.K + k0, d.K, dyt + o0 * jr, jr, xp, off.data() + k0, jr, mr, nk,
                                        first);
              }
            first = false;
            continue;
          }
          // dyᵀ on the padded grid: (J, ocp), zero past OW and past OCg
          std::memset(dyt, 0, sizeof(float) * J * ocp);
          for (int64_t o = 0; o < d.OCg; ++o)
            for (int64_t r = 0; r < oh1 - oh0; ++r)
              for (int64_t u = 0; u < s.OW; ++u) dyt[(r * wp + u) * ocp + o] = dy[o * d.P + r * s.OW + u];
          for (int64_t k0 = 0; k0 < d.K; k0 += MR) {
            const int mr = static_cast<int>(d.K - k0 < MR ? d.K - k0 : MR);
            for (int64_t o0 = 0; o0 < ocp; o0 += NR)
              shifted_dw_tile<MR, NV>(dw + k0 * ocp + o0, ocp, xp, off.data() + k0, dyt + o0, ocp, J, mr, first);
          }
          first = false;
        }
    }
  });
  return scratch;
}
#endif

// out (N,OC,OH,OW) = act(conv(inp (N,C,H,W), weight (OC,C/G,KH,KW)) + bias (OC)); bias nullable.
void conv2d_forward(float* out, const float* inp, const float* weight, const float* bias, int act,
                    const Conv2dShape& s) {
  const Dims d(s);
#if defined(__AVX2__)
  if (s.SH == 1 && s.SW == 1 && !d.direct) {  // the tile by output channels per group, as gemm_any's
#if defined(__AVX512F__)
    // (no padded rows where it can be helped: 6 -> 6x4; 16, 32, 64 -> 8x3; 12, 24, 48 -> 12x2)
    // (one channel, as LeNet's first input gradient: 1 row x 12 vectors)
    const bool done = d.OCg == 1        ? forward_shifted<1, 12>(out, inp, weight, bias, act, s, d)
                      : d.OCg <= 2      ? forward_shifted<2, 8>(out, inp, weight, bias, act, s, d)
                      : d.OCg <= 4      ? forward_shifted<4, 6>(out, inp, weight, bias, act, s, d)
                      : d.OCg <= 6      ? forward_shifted<6, 4>(out, inp, weight, bias, act, s, d)
                      : d.OCg % 12 == 0 ? forward_shifted<12, 2>(out, inp, weight, bias, act, s, d)
                                        : forward_shifted<8, 3>(out, inp, weight, bias, act, s, d);
#else
    const bool done = d.OCg <= 2 ? forward_shifted<2, 4>(out, inp, weight, bias, act, s, d)
                                 : forward_shifted<6, 2>(out, inp, weight, bias, act, s, d);
#endif
    if (done) return;
  }
#endif
  const int64_t items = d.blocks(s.N) * s.G;
  parallel_region(conv_threads(s, d, items), [&](int t, int T) {
    const BlockScratch buf(s, d);
    float *col = buf.col, *xp = buf.pad, *tmp = buf.tmp;
    for (int64_t it = items * t / T; it < items * (t + 1) / T; ++it) {
      const int64_t g = it % s.G;
      const Block b = d.block(s, it / s.G, 0, s.N);
      const int64_t cols = b.ni * (b.oh1 - b.oh0) * s.OW, p0 = b.oh0 * s.OW;
      if (!buf.ok) {  // no scratch: the plain loops
        for (int64_t n = b.n0; n < b.n0 + b.ni; ++n)
          forward_ref_item(out, inp, weight, bias, act, s, n, g, p0, b.oh1 * s.OW);
        continue;
      }
      const float* x = inp + (b.n0 * s.C + g * d.Cg) * d.HW;
      float* yg = out + (b.n0 * s.OC + g * d.OCg) * d.P;
      // the product's target: the output itself (one image), else tmp, copied out after
      float* y = b.ni == 1 ? yg + p0 : tmp;
      const int64_t ldy = b.ni == 1 ? d.P : cols;
      if (bias)  // the product adds itself to the bias (accumulate) and applies act to the sum
        for (int64_t o = 0; o < d.OCg; ++o)
          for (int64_t j = 0; j < cols; ++j) y[o * ldy + j] = bias[g * d.OCg + o];
      if (!d.direct) {
        pad_block(xp, s, d, x, b);
        im2col(col, s, d, xp, b);
      }
      const float* bp = d.direct ? x + p0 : col;
      matmul_strided(y, ldy, weight + g * d.OCg * d.K, d.K, bp, d.direct ? d.HW : cols, act, d.OCg, cols, d.K, 0,
                     0, bias ? 1 : 0);
      if (b.ni > 1) gather_block(tmp, yg, s, d, b, false);
    }
  });
}

// From out = conv(inp, weight) + bias: dinp (N,C,H,W) = the input gradient [⊙ input_act'(inp), inp
// being that activation's output], dweight (OC,C/G,KH,KW) [+]= the weight gradient, dbias (OC) [+]=
// Σ dout over images and pixels; dinp, dweight and dbias each nullable.
void conv2d_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int input_act, int accumulate, const Conv2dShape& s) {
  const Dims d(s);
  float* dy_all = const_cast<float*>(dout);  // read only (gather_block's to_t direction)

  if (dbias) {  // each channel's sum in double, images then pixels in order
    parallel_chunks(s.OC, [&](int64_t lo, int64_t hi) {
      for (int64_t oc = lo; oc < hi; ++oc) {
        double acc = accumulate ? dbias[oc] : 0.0;
        for (int64_t n = 0; n < s.N; ++n) {
          const float* g = dout + (n * s.OC + oc) * d.P;
          double part = 0.0;
#pragma omp simd reduction(+ : part)
          for (int64_t p = 0; p < d.P; ++p) part += g[p];
          acc += part;
        }
        dbias[oc] = static_cast<float>(acc);
      }
    }, s.OC * s.N * d.P >= kParallelGrain * 4 ? 1 : s.OC + 1);
  }

#if defined(__AVX2__)
  if (dweight && s.SH == 1 && s.SW == 1 && !d.direct) {  // by shifted windows, partials (K, OCp) per part
    const int64_t parts = s.N < kWeightParts ? s.N : kWeightParts;
    // tile columns: the output channels in vectors (1, 2 or, AVX-512, 4 of them; 6 kernel elements a tile
    // with 4, 12 with fewer), so that at most a vector's worth of columns is padding
#if defined(__AVX512F__)
    const int nv = d.OCg <= kW ? 1 : d.OCg <= 2 * kW ? 2 : 4;
#else
    const int nv = d.OCg <= kW ? 1 : 2;
#endif
    int64_t ocp = (d.OCg + nv * kW - 1) / (nv * kW) * (nv * kW), psize = 0;
    float* partial = nullptr;
    // a few output channels, or a few kernel elements (a first layer's 9 or 25): vectors along the pixels,
    // dy read in its own layout (partials (OCg, K)); else transposing dy would cost more than the products
    const bool dots = d.OCg <= 8 || d.K <= 32;
    if (dots) ocp = d.OCg;
    psize = s.G * d.K * ocp;
    partial = t_parts.get(size_t(parts * psize));
#if defined(__AVX512F__)
    const bool done = partial && (dots      ? weight_grad_shifted<6, 4, true>(partial, parts, dout, inp, s, d)
                                  : nv == 1 ? weight_grad_shifted<12, 1>(partial, parts, dout, inp, s, d)
                                  : nv == 2 ? weight_grad_shifted<12, 2>(partial, parts, dout, inp, s, d)
                                            : weight_grad_shifted<6, 4>(partial, parts, dout, inp, s, d));
#else
    const bool done = partial && (dots      ? weight_grad_shifted<4, 3, true>(partial, parts, dout, inp, s, d)
                                  : nv == 1 ? weight_grad_shifted<12, 1>(partial, parts, dout, inp, s, d)
                                            : weight_grad_shifted<6, 2>(partial, parts, dout, inp, s, d));
#endif
    if (done) {
      parallel_chunks(s.OC * d.K, [&](int64_t lo, int64_t hi) {  // dweight [+]= the partials, in part order
        for (int64_t i = lo; i < hi; ++i) {
          const int64_t oc = i / d.K, k = i % d.K, g = oc / d.OCg, o = oc % d.OCg;
          const int64_t at = dots ? i : (g * d.K + k) * ocp + o;
          float acc = accumulate ? dweight[i] + partial[at] : partial[at];
          for (int64_t q = 1; q < parts; ++q) acc += partial[q * psize + at];
          dweight[i] = acc;
        }
      });
      dweight = nullptr;  // done
    }
  }
#endif

  if (dweight) {
    // parts x groups items; part q sums images [N*q/parts, N*(q+1)/parts) into its own partial (into
    // dweight itself when there is one part). With 16 output channels or more per group the product is
    // taken transposed, dWᵀ (K, OCg) [+]= col · dyᵀ: col is then read where it lies and only the smaller
    // dy is packed (transposed), and the partials hold dWᵀ (each group's (K, OCg) block).
    const int64_t parts = s.N < kWeightParts ? s.N : kWeightParts, wsize = s.OC * d.K;
    const bool transposed = d.OCg >= 16 && !d.direct;
    float* partial = parts > 1 || transposed ? t_parts.get(size_t(parts * wsize)) : nullptr;
    const bool ok = (parts == 1 && !transposed) || partial;
    const int64_t items = ok ? parts * s.G : 0;
    std::atomic<bool> scratch{true};  // every thread got its buffers (else the caller runs the plain loops)
    parallel_region(conv_threads(s, d, items), [&](int t, int T) {
      const BlockScratch buf(s, d);
      float *col = buf.col, *xp = buf.pad, *tmp = buf.tmp;
      if (!buf.ok) scratch = false;
#pragma omp barrier
      if (!scratch) return;
      for (int64_t it = items * t / T; it < items * (t + 1) / T; ++it) {
        const int64_t q = it / s.G, g = it % s.G;
        const int64_t n_lo = s.N * q / parts, n_hi = s.N * (q + 1) / parts;
        float* dw = (partial ? partial + q * wsize : dweight) + g * d.OCg * d.K;
        bool first = partial || !accumulate;
        for (int64_t bi = 0; bi < d.blocks(n_hi - n_lo); ++bi) {
          const Block b = d.block(s, bi, n_lo, n_hi);
          const int64_t cols = b.ni * (b.oh1 - b.oh0) * s.OW, p0 = b.oh0 * s.OW;
          const float* x = inp + (b.n0 * s.C + g * d.Cg) * d.HW;
          float* dyg = dy_all + (b.n0 * s.OC + g * d.OCg) * d.P;
          if (!d.direct) {
            pad_block(xp, s, d, x, b);
            im2col(col, s, d, xp, b);
          }
          if (b.ni > 1) gather_block(tmp, dyg, s, d, b, true);
          const float* dyb = b.ni > 1 ? tmp : dyg + p0;
          const int64_t lddy = b.ni > 1 ? cols : d.P;
          if (transposed)  // dwᵀ (K, OCg) [+]= col (K, cols) · dy blockᵀ (cols, OCg), dy stored (OCg, cols)
            matmul_strided(dw, d.OCg, col, cols, dyb, lddy, ACT_NONE, d.K, d.OCg, cols, 0, 1, first ? 0 : 1);
          else  // dw (OCg, K) [+]= dy block (OCg, cols) · colᵀ (cols, K), col stored (K, cols)
            matmul_strided(dw, d.K, dyb, lddy, d.direct ? x + p0 : col, d.direct ? d.HW : cols, ACT_NONE, d.OCg,
                           d.K, cols, 0, 1, first ? 0 : 1);
          first = false;
        }
      }
    });
    if (!ok || !scratch) {
      conv2d_backward_reference(nullptr, dweight, nullptr, dout, inp, weight, ACT_NONE, accumulate, s);
    } else if (partial) {  // dweight [+]= the partials, in part order, element by element
      parallel_chunks(wsize, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) {
          // element i = (oc, k) of dweight; transposed partials hold it at (group block, k, o)
          const int64_t oc = i / d.K, k = i % d.K;
          const int64_t at = transposed ? (oc - oc % d.OCg) * d.K + k * d.OCg + oc % d.OCg : i;
          float acc = accumulate ? dweight[i] + partial[at] : partial[at];
          for (int64_t q = 1; q < parts; ++q) acc += partial[q * wsize + at];
          dweight[i] = acc;
        }
      });
    }
  }

  // Stride 1: the input gradient is itself a convolution, of dout padded by the kernel's reach less the
  // padding, with the weights flipped and their channel axes swapped (W'[c][o][kh][kw] = W[o][c][KH-1-kh]
  // [KW-1-kw] per group): dx[n][c][ih][iw] = Σ W[o][c][kh][kw]·dy[n][o][ih + PH - kh·DH][iw + PW - kw·DW].
  // It runs on the forward's path (gathers, no scatter-adds); other strides scatter (col2im) below.
  const int64_t reach_h = s.DH * (s.KH - 1), reach_w = s.DW * (s.KW - 1);
  const int64_t bottom = s.OH + reach_h - s.H - s.PH, right = s.OW + reach_w - s.W - s.PW;  // (stride 1)
  float* flip = dinp && s.SH == 1 && s.SW == 1 && s.PH <= reach_h && s.PW <= reach_w && bottom <= reach_h &&
                        right <= reach_w && !d.direct
                    ? t_flip.get(size_t(s.OC * d.K))
                    : nullptr;
  if (flip) {
    for (int64_t g = 0; g < s.G; ++g)
      for (int64_t o = 0; o < d.OCg; ++o)
        for (int64_t c = 0; c < d.Cg; ++c)
          for (int64_t kh = 0; kh < s.KH; ++kh)
            for (int64_t kw = 0; kw < s.KW; ++kw)
              flip[(((g * d.Cg + c) * d.OCg + o) * s.KH + kh) * s.KW + kw] =
                  weight[(((g * d.OCg + o) * d.Cg + c) * s.KH + (s.KH - 1 - kh)) * s.KW + (s.KW - 1 - kw)];
    Conv2dShape t = s;
    t.C = s.OC, t.H = s.OH, t.W = s.OW, t.OC = s.C, t.OH = s.H, t.OW = s.W;
    t.PH = reach_h - s.PH, t.PW = reach_w - s.PW;
    conv2d_forward(dinp, dout, flip, nullptr, ACT_NONE, t);
    if (input_act != ACT_NONE)
      parallel_chunks(s.N * s.C * d.HW, [&](int64_t lo, int64_t hi) { times_dact(dinp + lo, inp + lo, input_act, hi - lo); });
    dinp = nullptr;  // done
  }

  if (dinp) {
    // items: image blocks x groups (the blocks of rows of one image scatter into overlapping rows of dx)
    const int64_t image_blocks = (s.N + d.images - 1) / d.images, items = image_blocks * s.G;
    std::atomic<bool> scratch{true};
    parallel_region(conv_threads(s, d, items), [&](int t, int T) {
      const BlockScratch buf(s, d);
      float *dcol = buf.col, *dxp = buf.pad, *tmp = buf.tmp;
      if (!buf.ok) scratch = false;
#pragma omp barrier
      if (!scratch) return;
      for (int64_t it = items * t / T; it < items * (t + 1) / T; ++it) {
        const int64_t g = it % s.G, ib = it / s.G;
        const int64_t n0 = ib * d.images, ni = s.N - n0 < d.images ? s.N - n0 : d.images;
        float* dx = dinp + (n0 * s.C + g * d.Cg) * d.HW;
        const float* w = weight + g * d.OCg * d.K;
        if (d.direct) {  // dx (Cg, HW) = W[g]ᵀ (Cg, OCg) · dy (OCg, HW), image by image
          for (int64_t n = n0; n < n0 + ni; ++n)
            matmul_strided(dinp + (n * s.C + g * d.Cg) * d.HW, d.HW, w, d.K, dout + (n * s.OC + g * d.OCg) * d.P,
                           d.P, ACT_NONE, d.Cg, d.HW, d.OCg, 1, 0, 0);
        } else {
          for (int64_t i = 0; i < ni; ++i) std::memset(dx + i * s.C * d.HW, 0, sizeof(float) * d.Cg * d.HW);
          for (int64_t rb = 0; rb < d.row_blocks; ++rb) {
            const Block b = d.block(s, rb, n0, n0 + ni);
            const int64_t cols = b.ni * (b.oh1 - b.oh0) * s.OW, p0 = b.oh0 * s.OW;
            float* dyg = dy_all + (n0 * s.OC + g * d.OCg) * d.P;
            if (b.ni > 1) gather_block(tmp, dyg, s, d, b, true);
            // dcol (K, cols) = W[g]ᵀ (K, OCg) · dy block (OCg, cols), W[g] stored (OCg, K)
            matmul_strided(dcol, cols, w, d.K, b.ni > 1 ? tmp : dyg + p0, b.ni > 1 ? cols : d.P, ACT_NONE, d.K,
                           cols, d.OCg, 1, 0, 0);
            std::memset(dxp, 0, sizeof(float) * b.ni * d.Cg * in_rows(s, b) * padded_width(s));
            col2im_add(dxp, s, d, dcol, b);
            unpad_add(dx, s, d, dxp, b);
          }
        }
        if (input_act != ACT_NONE)
          for (int64_t i = 0; i < ni; ++i)
            times_dact(dx + i * s.C * d.HW, inp + ((n0 + i) * s.C + g * d.Cg) * d.HW, input_act, d.Cg * d.HW);
      }
    });
    if (!scratch) conv2d_backward_reference(dinp, nullptr, nullptr, dout, inp, weight, input_act, 0, s);
  }
}

// Same contract as conv2d_forward: plain loops in double, the oracle for the tests.
void conv2d_forward_reference(float* out, const float* inp, const float* weight, const float* bias, int act,
                              const Conv2dShape& s) {
  const Dims d(s);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t g = 0; g < s.G; ++g) forward_ref_item(out, inp, weight, bias, act, s, n, g, 0, d.P);
}

// Same contract as conv2d_backward: plain loops in double, each gradient element one sum.
void conv2d_backward_reference(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                               const float* weight, int input_act, int accumulate, const Conv2dShape& s) {
  const Dims d(s);
  auto at = [&](int64_t p, int64_t kh, int64_t kw, int64_t& ih, int64_t& iw) {
    ih = p / s.OW * s.SH - s.PH + kh * s.DH;
    iw = p % s.OW * s.SW - s.PW + kw * s.DW;
    return ih >= 0 && ih < s.H && iw >= 0 && iw < s.W;
  };
  if (dbias)
    for (int64_t oc = 0; oc < s.OC; ++oc) {
      double acc = accumulate ? dbias[oc] : 0.0;
      for (int64_t n = 0; n < s.N; ++n)
        for (int64_t p = 0; p < d.P; ++p) acc += dout[(n * s.OC + oc) * d.P + p];
      dbias[oc] = static_cast<float>(acc);
    }
  if (dweight)
    for (int64_t oc = 0; oc < s.OC; ++oc) {
      const int64_t g = oc / d.OCg;
      for (int64_t c = 0; c < d.Cg; ++c)
        for (int64_t kh = 0; kh < s.KH; ++kh)
          for (int64_t kw = 0; kw < s.KW; ++kw) {
            float* w = dweight + ((oc * d.Cg + c) * s.KH + kh) * s.KW + kw;
            double acc = accumulate ? *w : 0.0;
            for (int64_t n = 0; n < s.N; ++n)
              for (int64_t p = 0, ih, iw; p < d.P; ++p)
                if (at(p, kh, kw, ih, iw))
                  acc += double(dout[(n * s.OC + oc) * d.P + p]) *
                         double(inp[((n * s.C + g * d.Cg + c) * s.H + ih) * s.W + iw]);
            *w = static_cast<float>(acc);
          }
    }
  if (dinp) {
    std::vector<double> acc(size_t(s.N * s.C * d.HW), 0.0);
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t oc = 0; oc < s.OC; ++oc) {
        const int64_t g = oc / d.OCg;
        for (int64_t c = 0; c < d.Cg; ++c)
          for (int64_t kh = 0; kh < s.KH; ++kh)
            for (int64_t kw = 0; kw < s.KW; ++kw) {
              const double w = weight[((oc * d.Cg + c) * s.KH + kh) * s.KW + kw];
              for (int64_t p = 0, ih, iw; p < d.P; ++p)
                if (at(p, kh, kw, ih, iw))
                  acc[size_t(((n * s.C + g * d.Cg + c) * s.H + ih) * s.W + iw)] += w * dout[(n * s.OC + oc) * d.P + p];
            }
      }
    for (int64_t i = 0; i < s.N * s.C * d.HW; ++i) {
      double v = acc[size_t(i)];
      const double y = inp[i];
      if (input_act == ACT_RELU) v = y > 0.0 ? v : (y != y ? y : 0.0);
      if (input_act == ACT_SIGMOID) v = v * y * (1.0 - y);
      if (input_act == ACT_TANH) v = v * (1.0 - y * y);
      dinp[i] = static_cast<float>(v);
    }
  }
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
