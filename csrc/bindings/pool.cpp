// pool.cpp - 2-D pooling over NCHW float32: max (with the argmax indices for backward), average
// (count_include_pad, floor mode) and adaptive average, forward and backward.
#include "common.h"

#include <string>

namespace fastdl {
namespace {

constexpr int64_t kMaxParam = 2147483647;  // sizes past 2^31 - 1 are refused: no product of two overflows

std::string pair_str(int64_t a, int64_t b) { return "(" + std::to_string(a) + ", " + std::to_string(b) + ")"; }

void require_pair(const char* fn, const char* arg, int64_t a, int64_t b, int64_t lo) {
  if (a < lo || b < lo || a > kMaxParam || b > kMaxParam)
    value_error(std::string(fn) + ": " + arg + " must be >= " + std::to_string(lo) + " and <= " +
                std::to_string(kMaxParam) + ", got " + pair_str(a, b));
}

// A 4-D (N, C, H, W) float32 input, not empty.
py::array take_nchw(py::handle h, const char* fn, const char* arg) {
  py::array a = in_f32(h, fn, arg);
  require_ndim(fn, arg, a, 4, "(batch, channels, height, width)");
  require_nonempty(fn, arg, a);
  return a;
}

// The window geometry of max/avg pooling, checked as PyTorch checks it.
struct Geometry {
  int64_t N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW;
};

Geometry geometry(const char* fn, int64_t N, int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t SH,
                  int64_t SW, int64_t PH, int64_t PW) {
  require_pair(fn, "kernel_size", KH, KW, 1);
  require_pair(fn, "stride", SH, SW, 1);
  require_pair(fn, "padding", PH, PW, 0);
  if (2 * PH > KH || 2 * PW > KW)
    value_error(std::string(fn) + ": padding must be at most half of kernel_size, got padding " + pair_str(PH, PW) +
                " for kernel_size " + pair_str(KH, KW));
  if (KH > H + 2 * PH || KW > W + 2 * PW)
    value_error(std::string(fn) + ": kernel_size " + pair_str(KH, KW) + " is larger than the padded input " +
                pair_str(H + 2 * PH, W + 2 * PW) + " (input " + pair_str(H, W) + ", padding " + pair_str(PH, PW) +
                ")");
  return Geometry{N, C, H, W, KH, KW, SH, SW, PH, PW, (H + 2 * PH - KH) / SH + 1, (W + 2 * PW - KW) / SW + 1};
}

// input_shape (N, C, H, W) of a backward: positive, its (N, C) those of dout, and not absurdly large.
void check_input_shape(const char* fn, const py::array& dout, int64_t N, int64_t C, int64_t H, int64_t W) {
  const std::string s = "(" + std::to_string(N) + ", " + std::to_string(C) + ", " + std::to_string(H) + ", " +
                        std::to_string(W) + ")";
  if (N < 1 || C < 1 || H < 1 || W < 1)
    value_error(std::string(fn) + ": input_shape must hold 4 sizes >= 1, got " + s);
  if (N != dout.shape(0) || C != dout.shape(1))
    value_error(std::string(fn) + ": input_shape " + s + " does not match dout's (batch, channels) = " +
                pair_str(dout.shape(0), dout.shape(1)));
  if (H > kMaxParam || W > kMaxParam || static_cast<double>(N) * C * H * W > 9.0e18)
    value_error(std::string(fn) + ": input_shape " + s + " is too large");
}

py::array out_i64(py::handle out, const char* fn, const char* arg, const Shape& shape, const char* names) {
  if (out.is_none()) return py::array_t<int64_t>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  py::array a = take_array(out, fn, arg, DType::I64, true);
  require_shape(fn, arg, a, shape, names);
  return a;
}

py::array new_dinp(py::handle out, const char* fn, const Shape& shape) {
  return out_f32(out, fn, "out", shape, "input_shape");
}

}  // namespace

void bind_pool(py::module_& m) {
  m.def(
      "max_pool2d",
      [](py::handle x, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, py::handle out,
         py::handle indices) {
        const char* fn = "max_pool2d";
        py::array xa = take_nchw(x, fn, "x");
        const Geometry g = geometry(fn, xa.shape(0), xa.shape(1), xa.shape(2), xa.shape(3), kh, kw, sh, sw, ph, pw);
        const Shape os{g.N, g.C, g.OH, g.OW};
        py::array oa = out_f32(out, fn, "out", os, "(N, C, OH, OW)");
        py::array ia = out_i64(indices, fn, "indices", os, "(N, C, OH, OW)");
        require_all_disjoint(fn, {{"out", &oa}, {"indices", &ia}, {"x", &xa}});
        float* op = mf(oa);
        int64_t* ip = static_cast<int64_t*>(ia.mutable_data());
        const float* xp = cf(xa);
        without_gil([&] {
          FASTDL_KERNEL(max_pool2d_forward)(op, ip, xp, g.N, g.C, g.H, g.W, g.KH, g.KW, g.SH, g.SW, g.PH, g.PW, g.OH,
                                            g.OW);
        });
        return py::make_tuple(oa, ia);
      },
      py::arg("x"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
      py::arg("out") = py::none(), py::arg("indices") = py::none(),
      "Returns (out, indices): the window maxima and their flat indices ih*W + iw in the input plane (int64).");

  m.def(
      "max_pool2d_backward",
      [](py::handle dout, py::handle indices, int64_t N, int64_t C, int64_t H, int64_t W, py::handle out) {
        const char* fn = "max_pool2d_backward";
        py::array da = take_nchw(dout, fn, "dout");
        py::array ia = in_i64(indices, fn, "indices");
        require_shape(fn, "indices", ia, shape_of(da), "dout.shape");
        check_input_shape(fn, da, N, C, H, W);
        py::array oa = new_dinp(out, fn, Shape{N, C, H, W});
        require_all_disjoint(fn, {{"out", &oa}, {"dout", &da}, {"indices", &ia}});
        float* op = mf(oa);
        const float* dp = cf(da);
        const int64_t* ip = ci(ia);
        const int64_t OH = da.shape(2), OW = da.shape(3);
        int64_t bad = without_gil([&] { return FASTDL_KERNEL(max_pool2d_backward)(op, dp, ip, N, C, H, W, OH, OW); });
        if (bad >= 0)
          value_error(std::string(fn) + ": indices must lie in [0, H*W) = [0, " + std::to_string(H * W) +
                      "), got " + std::to_string(ci(ia)[bad]) + " at flat position " + std::to_string(bad));
        return oa;
      },
      py::arg("dout"), py::arg("indices"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"),
      py::arg("out") = py::none(), "Gradient of max_pool2d: zeros, then dout added at the stored indices.");

  m.def(
      "avg_pool2d",
      [](py::handle x, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, py::handle out) {
        const char* fn = "avg_pool2d";
        py::array xa = take_nchw(x, fn, "x");
        const Geometry g = geometry(fn, xa.shape(0), xa.shape(1), xa.shape(2), xa.shape(3), kh, kw, sh, sw, ph, pw);
        py::array oa = out_f32(out, fn, "out", Shape{g.N, g.C, g.OH, g.OW}, "(N, C, OH, OW)");
        require_no_overlap(fn, "out", oa, "x", xa);
        float* op = mf(oa);
        const float* xp = cf(xa);
        without_gil([&] {
          FASTDL_KERNEL(avg_pool2d_forward)(op, xp, g.N, g.C, g.H, g.W, g.KH, g.KW, g.SH, g.SW, g.PH, g.PW, g.OH, g.OW);
        });
        return oa;
      },
      py::arg("x"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
      py::arg("out") = py::none());

  m.def(
      "avg_pool2d_backward",
      [](py::handle dout, int64_t N, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
         int64_t ph, int64_t pw, py::handle out) {
        const char* fn = "avg_pool2d_backward";
        py::array da = take_nchw(dout, fn, "dout");
        check_input_shape(fn, da, N, C, H, W);
        const Geometry g = geometry(fn, N, C, H, W, kh, kw, sh, sw, ph, pw);
        require_shape(fn, "dout", da, Shape{N, C, g.OH, g.OW}, "the pooled input_shape");
        py::array oa = new_dinp(out, fn, Shape{N, C, H, W});
        require_no_overlap(fn, "out", oa, "dout", da);
        float* op = mf(oa);
        const float* dp = cf(da);
        without_gil([&] {
          FASTDL_KERNEL(avg_pool2d_backward)(op, dp, N, C, H, W, g.KH, g.KW, g.SH, g.SW, g.PH, g.PW, g.OH, g.OW);
        });
        return oa;
      },
      py::arg("dout"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("kh"), py::arg("kw"),
      py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("out") = py::none());

  m.def(
      "adaptive_avg_pool2d",
      [](py::handle x, int64_t oh, int64_t ow, py::handle out) {
        const char* fn = "adaptive_avg_pool2d";
        py::array xa = take_nchw(x, fn, "x");
        require_pair(fn, "output_size", oh, ow, 1);
        const int64_t N = xa.shape(0), C = xa.shape(1), H = xa.shape(2), W = xa.shape(3);
        py::array oa = out_f32(out, fn, "out", Shape{N, C, oh, ow}, "(N, C, OH, OW)");
        require_no_overlap(fn, "out", oa, "x", xa);
        float* op = mf(oa);
        const float* xp = cf(xa);
        without_gil([&] { FASTDL_KERNEL(adaptive_avg_pool2d_forward)(op, xp, N, C, H, W, oh, ow); });
        return oa;
      },
      py::arg("x"), py::arg("oh"), py::arg("ow"), py::arg("out") = py::none());

  m.def(
      "adaptive_avg_pool2d_backward",
      [](py::handle dout, int64_t N, int64_t C, int64_t H, int64_t W, py::handle out) {
        const char* fn = "adaptive_avg_pool2d_backward";
        py::array da = take_nchw(dout, fn, "dout");
        check_input_shape(fn, da, N, C, H, W);
        const int64_t OH = da.shape(2), OW = da.shape(3);
        require_pair(fn, "output_size", OH, OW, 1);
        py::array oa = new_dinp(out, fn, Shape{N, C, H, W});
        require_no_overlap(fn, "out", oa, "dout", da);
        float* op = mf(oa);
        const float* dp = cf(da);
        without_gil([&] { FASTDL_KERNEL(adaptive_avg_pool2d_backward)(op, dp, N, C, H, W, OH, OW); });
        return oa;
      },
      py::arg("dout"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("out") = py::none());
}

}  // namespace fastdl
