// activations.cpp - the activations and their backwards. The elementwise maps that share a signature are
// defined from two tables; leaky_relu (a slope) and softmax (rows) are written out.
#include "common.h"

#include <cmath>

namespace fastdl {
namespace {

using MapKernel = void (*)(float* out, const float* inp, int64_t n);
using MapBackwardKernel = void (*)(float* dinp, const float* dout, const float* saved, int64_t n);

// out = f(x): x any shape, non-empty; out has x's shape (and may be x itself).
struct Map {
  const char* name;
  MapKernel (*pick)();
  const char* doc;
};
const Map kMaps[] = {
    {"relu", FASTDL_PICK(relu_forward), "max(x, 0), elementwise; NaN stays NaN."},
    {"sigmoid", FASTDL_PICK(sigmoid_forward), "1 / (1 + exp(-x)), elementwise, stable for any x."},
    {"tanh", FASTDL_PICK(tanh_forward), "tanh(x), elementwise."},
    {"step", FASTDL_PICK(step_forward), "Heaviside step: 1 where x >= 0, else 0, NaN where x is NaN."},
};

// dinp = f(dout, saved): saved is the forward's input x or its output y, as the kernel needs.
struct MapBackward {
  const char* name;
  MapBackwardKernel (*pick)();
  const char* saved;
  const char* doc;
};
const MapBackward kMapBackwards[] = {
    {"relu_backward", FASTDL_PICK(relu_backward), "x", "dout where x > 0, else 0."},
    {"sigmoid_backward", FASTDL_PICK(sigmoid_backward), "y", "dout * y * (1 - y), from y = sigmoid(x)."},
    {"tanh_backward", FASTDL_PICK(tanh_backward), "y", "dout * (1 - y**2), from y = tanh(x)."},
};

// y = kernel(x) elementwise: out (or a new array) of x's shape; kernel(out, x, n).
template <class K>
py::array map_call(const char* fn, py::handle x, py::handle out, K&& kernel) {
  py::array xa = in_f32(x, fn, "x");
  require_nonempty(fn, "x", xa);
  py::array oa = out_f32(out, fn, "out", shape_of(xa), "x.shape");
  require_same_or_disjoint(fn, "out", oa, "x", xa);
  const float* xp = cf(xa);
  float* op = mf(oa);
  int64_t n = xa.size();
  without_gil([&] { kernel(op, xp, n); });
  return oa;
}

// dinp = kernel(dout, saved) elementwise, saved being the forward's input or output; kernel(out, dout, saved, n).
template <class K>
py::array map_backward_call(const char* fn, py::handle dout, py::handle saved, const char* saved_name,
                            py::handle out, K&& kernel) {
  py::array d = in_f32(dout, fn, "dout"), sa = in_f32(saved, fn, saved_name);
  require_nonempty(fn, saved_name, sa);
  std::string like = std::string(saved_name) + ".shape";
  require_shape(fn, "dout", d, shape_of(sa), like.c_str());
  py::array oa = out_f32(out, fn, "out", shape_of(sa), like.c_str());
  require_same_or_disjoint(fn, "out", oa, "dout", d);
  require_same_or_disjoint(fn, "out", oa, saved_name, sa);
  const float *dp = cf(d), *sp = cf(sa);
  float* op = mf(oa);
  int64_t n = sa.size();
  without_gil([&] { kernel(op, dp, sp, n); });
  return oa;
}

float finite_slope(const char* fn, double slope) {
  if (!std::isfinite(slope))
    value_error(std::string(fn) + ": negative_slope must be finite, got " + std::to_string(slope));
  return fit_float32(fn, "negative_slope", slope);
}

}  // namespace

void bind_activations(py::module_& m) {
  for (const Map& e : kMaps)
    m.def(
        e.name, [&e](py::handle x, py::handle out) { return map_call(e.name, x, out, e.pick()); }, py::arg("x"),
        py::arg("out") = py::none(), e.doc);
  for (const MapBackward& e : kMapBackwards)
    m.def(
        e.name,
        [&e](py::handle dout, py::handle saved, py::handle out) {
          return map_backward_call(e.name, dout, saved, e.saved, out, e.pick());
        },
        py::arg("dout"), py::arg(e.saved), py::arg("out") = py::none(), e.doc);

  m.def(
      "leaky_relu",
      [](py::handle x, double negative_slope, py::handle out) {
        const char* fn = "leaky_relu";
        const float slope = finite_slope(fn, negative_slope);
        return map_call(fn, x, out, [slope](float* op, const float* xp, int64_t n) {
          FASTDL_KERNEL(leaky_relu_forward)(op, xp, slope, n);
        });
      },
      py::arg("x"), py::arg("negative_slope") = 0.01, py::arg("out") = py::none(),
      "x where x > 0, else negative_slope * x.");
  m.def(
      "leaky_relu_backward",
      [](py::handle dout, py::handle x, double negative_slope, py::handle out) {
        const char* fn = "leaky_relu_backward";
        const float slope = finite_slope(fn, negative_slope);
        return map_backward_call(fn, dout, x, "x", out, [slope](float* op, const float* dp, const float* xp, int64_t n) {
          FASTDL_KERNEL(leaky_relu_backward)(op, dp, xp, slope, n);
        });
      },
      py::arg("dout"), py::arg("x"), py::arg("negative_slope") = 0.01, py::arg("out") = py::none(),
      "dout where x > 0, else negative_slope * dout.");

  m.def(
      "softmax",
      [](py::handle x, py::handle out) {
        const char* fn = "softmax";
        py::array xa = in_f32(x, fn, "x");
        require_ndim(fn, "x", xa, 2, "(batch, features)");
        require_nonempty(fn, "x", xa);
        py::array oa = out_f32(out, fn, "out", shape_of(xa), "x.shape");
        require_same_or_disjoint(fn, "out", oa, "x", xa);
        const float* xp = cf(xa);
        float* op = mf(oa);
        int64_t B = xa.shape(0), C = xa.shape(1);
        without_gil([&] { FASTDL_KERNEL(softmax_forward)(op, xp, B, C); });
        return oa;
      },
      py::arg("x"), py::arg("out") = py::none(), "Softmax over each row of x (batch, features).");
  m.def(
      "softmax_backward",
      [](py::handle dout, py::handle y, py::handle out) {
        const char* fn = "softmax_backward";
        py::array d = in_f32(dout, fn, "dout"), ya = in_f32(y, fn, "y");
        require_ndim(fn, "y", ya, 2, "(batch, features)");
        require_nonempty(fn, "y", ya);
        require_shape(fn, "dout", d, shape_of(ya), "y.shape");
        py::array oa = out_f32(out, fn, "out", shape_of(ya), "y.shape");
        require_same_or_disjoint(fn, "out", oa, "dout", d);
        require_same_or_disjoint(fn, "out", oa, "y", ya);  // a row is read whole before it is written
        const float *dp = cf(d), *yp = cf(ya);
        float* op = mf(oa);
        int64_t B = ya.shape(0), C = ya.shape(1);
        without_gil([&] { FASTDL_KERNEL(softmax_backward)(op, dp, yp, B, C); });
        return oa;
      },
      py::arg("dout"), py::arg("y"), py::arg("out") = py::none(),
      "y * (dout - sum(dout * y, axis=1, keepdims=True)), from y = softmax(x).");
}

}  // namespace fastdl
