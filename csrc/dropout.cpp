// dropout.cpp - inverted dropout with a counter-based random number generator.
//
// The mask is a pure function of (seed, i): keep_i = bits(seed, i) >= threshold(p), with
//   k0, k1   = the low and high halves of splitmix64(seed)            (once per call)
//   bits     = fmix32(fmix32(lo32(i) ^ k0) ^ k1 ^ hi32(i) * 0x9E3779B9)
// where fmix32 is MurmurHash3's 32-bit finaliser (a bijection with full avalanche). Everything per
// element is 32-bit integer arithmetic, so `omp simd` turns the loop into 8 (AVX2) or 16 (AVX-512)
// lanes, and since integer arithmetic is exact the mask is bit-identical on every ISA path and for
// every thread count (no state is carried from one element to the next). The backward pass
// regenerates the same mask from the seed instead of storing it. tests/test_dropout.py re-implements
// bits() in NumPy and checks the kernel against it exactly.
//
// Dropout2d (channel dropout) keeps or drops whole (n, c) planes: plane p's mask is keep_p, the same
// bits(seed, p) with p the plane's index, so its mask is dropout's mask over an array of N*C elements.
#include <cstring>

#include "kernel_common.h"

namespace fastdl {
namespace FASTDL_ISA_NS {

namespace {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// A run: at most 2^31 elements that never cross a multiple of 2^32, so hi32(i) is constant in it
// and the index within it fits a uint32 loop counter.
constexpr int64_t kRun = int64_t(1) << 31;

// y[i - lo] = inp[i] * (keep ? scale : 0) for i in [lo, hi), keep = bits(seed, i) >= threshold.
void dropout_range(float* y0, const float* inp, uint32_t threshold, float scale, uint32_t k0, uint32_t k1,
                   int64_t lo, int64_t hi) {
  for (int64_t b = lo; b < hi;) {
    int64_t end = (b | int64_t(0xFFFFFFFF)) + 1;  // next multiple of 2^32
    if (end > b + kRun) end = b + kRun;
    if (end > hi) end = hi;
    const uint32_t len = static_cast<uint32_t>(end - b);
    const uint32_t base = static_cast<uint32_t>(b);
    const uint32_t key = k1 ^ (static_cast<uint32_t>(b >> 32) * 0x9E3779B9u);
    const float* x = inp + b;
    float* y = y0 + (b - lo);
    // x86 has no unsigned 32-bit compare before AVX-512: flip the sign bits and compare signed
    // (same order). A select between two constants keeps the loop branch-free, so GCC vectorises it.
    const int32_t t = static_cast<int32_t>(threshold ^ 0x80000000u);
#pragma omp simd
    for (uint32_t j = 0; j < len; j++) {
      uint32_t bits = fmix32(fmix32((base + j) ^ k0) ^ key);
      y[j] = x[j] * (static_cast<int32_t>(bits ^ 0x80000000u) >= t ? scale : 0.0f);
    }
    b = end;
  }
}

// The constants of one call: threshold and scale from p, the two key halves from the seed.
struct MaskKey {
  uint32_t threshold, k0, k1;
  float scale;
  MaskKey(float p, uint64_t seed) {
    // p in (0, 1) is a float, so p * 2^32 is exact and below 2^32: P(keep) = 1 - threshold / 2^32.
    threshold = static_cast<uint32_t>(static_cast<double>(p) * 4294967296.0);
    scale = static_cast<float>(1.0 / (1.0 - static_cast<double>(p)));
    const uint64_t key = splitmix64(seed);
    k0 = static_cast<uint32_t>(key);
    k1 = static_cast<uint32_t>(key >> 32);
  }
  // keep_i for one index i (the scalar form of dropout_range's loop)
  bool keep(int64_t i) const {
    const uint32_t key = k1 ^ (static_cast<uint32_t>(static_cast<uint64_t>(i) >> 32) * 0x9E3779B9u);
    return fmix32(fmix32(static_cast<uint32_t>(i) ^ k0) ^ key) >= threshold;
  }
};

// out = inp, in parallel chunks (p = 0: the identity).
void copy_unless_same(float* out, const float* inp, int64_t n) {
  if (out != inp)
    parallel_chunks(n, [&](int64_t lo, int64_t hi) { std::memcpy(out + lo, inp + lo, (hi - lo) * sizeof(float)); });
}

// The shared body of forward and backward: both multiply by the same scaled mask.
void dropout_apply(float* out, const float* inp, float p, uint64_t seed, int64_t n) {
  if (p == 0.0f) return copy_unless_same(out, inp, n);
  const MaskKey mk(p, seed);
  map_chunks(2, out, n, [&](int64_t lo, int64_t hi, float* y) {
    dropout_range(y, inp, mk.threshold, mk.scale, mk.k0, mk.k1, lo, hi);
  });
}

// Dropout2d's shared body: plane q of plane_size values times (keep_q ? scale : 0), threads splitting the planes.
void dropout2d_apply(float* out, const float* inp, float p, uint64_t seed, int64_t planes, int64_t plane_size) {
  if (p == 0.0f) return copy_unless_same(out, inp, planes * plane_size);
  const MaskKey mk(p, seed);
  int64_t grain = kParallelGrain / plane_size;
  parallel_chunks(
      planes,
      [&](int64_t lo, int64_t hi) {
        for (int64_t q = lo; q < hi; q++) {
          const float f = mk.keep(q) ? mk.scale : 0.0f;
          const float* x = inp + q * plane_size;
          float* y = out + q * plane_size;
#pragma omp simd
          for (int64_t j = 0; j < plane_size; j++) y[j] = x[j] * f;
        }
      },
      grain > 1 ? grain : 1);
}

}  // namespace

// inp, out: (n); p in [0, 1) (checked by the caller); seed: any 64-bit value.
// out = inp * keep / (1 - p), keep_i = bits(seed, i) >= p * 2^32 (see the top of this file).
// As in PyTorch (inp * mask * scale), a dropped element is inp * 0: 0 with inp's sign, NaN for NaN/Inf.
void dropout_forward(float* out, const float* inp, float p, uint64_t seed, int64_t n) {
  dropout_apply(out, inp, p, seed, n);
}

// dinp, dout: (n). From out = inp * keep / (1 - p): dinp = dout * keep / (1 - p), with the mask
// regenerated from the same (seed, i).
void dropout_backward(float* dinp, const float* dout, float p, uint64_t seed, int64_t n) {
  dropout_apply(dinp, dout, p, seed, n);
}

// inp, out: (planes, plane_size), e.g. (N*C, H*W); p in [0, 1). Channel dropout:
// out[q] = inp[q] * keep_q / (1 - p), keep_q = bits(seed, q) >= p * 2^32, q the plane's index.
// out may be inp itself.
void dropout2d_forward(float* out, const float* inp, float p, uint64_t seed, int64_t planes, int64_t plane_size) {
  dropout2d_apply(out, inp, p, seed, planes, plane_size);
}

// dinp, dout: (planes, plane_size). From out = inp * keep_q / (1 - p): dinp = dout * keep_q / (1 - p),
// the mask regenerated from (seed, q).
void dropout2d_backward(float* dinp, const float* dout, float p, uint64_t seed, int64_t planes, int64_t plane_size) {
  dropout2d_apply(dinp, dout, p, seed, planes, plane_size);
}

}  // namespace FASTDL_ISA_NS
}  // namespace fastdl
