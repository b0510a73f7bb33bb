// dropout.cpp - inverted dropout, forward and backward (the mask rebuilt from the seed).
#include "common.h"

#include <sstream>

namespace fastdl {
namespace {

// p of dropout: a number in [0, 1) (also once rounded to float32, which the kernel uses).
float parse_p(double p, const char* fn) {
  float pf = static_cast<float>(p);
  if (!(p >= 0.0 && p < 1.0) || !(pf < 1.0f)) {
    std::ostringstream os;
    os << fn << ": p must be in [0, 1), got " << p;
    value_error(os.str());
  }
  return pf;
}

// seed: a Python int (or anything with __index__, bool excluded) in [0, 2**64).
uint64_t parse_seed(py::handle h, const char* fn) {
  if (PyBool_Check(h.ptr()) || !PyIndex_Check(h.ptr()))
    type_error(std::string(fn) + ": seed must be an int in [0, 2**64), got " + type_name(h));
  py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
  if (!i) throw py::error_already_set();
  unsigned long long v = PyLong_AsUnsignedLongLong(i.ptr());
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    value_error(std::string(fn) + ": seed must be an int in [0, 2**64), got " + std::string(py::repr(i)));
  }
  return static_cast<uint64_t>(v);
}

using DropoutKernel = void (*)(float* out, const float* inp, float p, uint64_t seed, int64_t n);

// out = in * keep / (1 - p), forward (in: x) or backward (in: dout): the same map, the same checks.
py::array dropout_call(const char* fn, DropoutKernel kernel, const char* in_name, py::handle in, double p,
                       py::handle seed, py::handle out) {
  py::array xa = in_f32(in, fn, in_name);
  require_nonempty(fn, in_name, xa);
  float pf = parse_p(p, fn);
  uint64_t s = parse_seed(seed, fn);
  py::array oa = out_f32(out, fn, "out", shape_of(xa), (std::string(in_name) + ".shape").c_str());
  require_same_or_disjoint(fn, "out", oa, in_name, xa);
  const float* xp = cf(xa);
  float* op = mf(oa);
  int64_t n = xa.size();
  without_gil([&] { kernel(op, xp, pf, s, n); });
  return oa;
}

using Dropout2dKernel = void (*)(float* out, const float* inp, float p, uint64_t seed, int64_t planes,
                                int64_t plane_size);

// Channel dropout of a 4-D (N, C, H, W) array, forward (in: x) or backward (in: dout).
py::array dropout2d_call(const char* fn, Dropout2dKernel kernel, const char* in_name, py::handle in, double p,
                         py::handle seed, py::handle out) {
  py::array xa = in_f32(in, fn, in_name);
  require_ndim(fn, in_name, xa, 4, "(batch, channels, height, width)");
  require_nonempty(fn, in_name, xa);
  float pf = parse_p(p, fn);
  uint64_t s = parse_seed(seed, fn);
  py::array oa = out_f32(out, fn, "out", shape_of(xa), (std::string(in_name) + ".shape").c_str());
  require_same_or_disjoint(fn, "out", oa, in_name, xa);
  const float* xp = cf(xa);
  float* op = mf(oa);
  const int64_t planes = xa.shape(0) * xa.shape(1), plane_size = xa.shape(2) * xa.shape(3);
  without_gil([&] { kernel(op, xp, pf, s, planes, plane_size); });
  return oa;
}

}  // namespace

void bind_dropout(py::module_& m) {
  m.def(
      "dropout",
      [](py::handle x, double p, py::handle seed, py::handle out) {
        return dropout_call("dropout", FASTDL_KERNEL(dropout_forward), "x", x, p, seed, out);
      },
      py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("out") = py::none());
  m.def(
      "dropout_backward",
      [](py::handle dout, double p, py::handle seed, py::handle out) {
        return dropout_call("dropout_backward", FASTDL_KERNEL(dropout_backward), "dout", dout, p, seed, out);
      },
      py::arg("dout"), py::arg("p"), py::arg("seed"), py::arg("out") = py::none());
  m.def(
      "dropout2d",
      [](py::handle x, double p, py::handle seed, py::handle out) {
        return dropout2d_call("dropout2d", FASTDL_KERNEL(dropout2d_forward), "x", x, p, seed, out);
      },
      py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("out") = py::none());
  m.def(
      "dropout2d_backward",
      [](py::handle dout, double p, py::handle seed, py::handle out) {
        return dropout2d_call("dropout2d_backward", FASTDL_KERNEL(dropout2d_backward), "dout", dout, p, seed, out);
      },
      py::arg("dout"), py::arg("p"), py::arg("seed"), py::arg("out") = py::none());
}

}  // namespace fastdl
