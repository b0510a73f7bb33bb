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

// One binding per (name, argument, kernel), each with call's checks.
template <class Kernel>
struct Entry {
  const char* name;
  const char* arg;
  Kernel (*pick)();
};
template <class Kernel, class Call>
void def_each(py::module_& m, std::initializer_list<Entry<Kernel>> entries, Call call) {
  for (const Entry<Kernel>& e : entries)
    m.def(
        e.name,
        [e, call](py::handle x, double p, py::handle seed, py::handle out) {
          return call(e.name, e.pick(), e.arg, x, p, seed, out);
        },
        py::arg(e.arg), py::arg("p"), py::arg("seed"), py::arg("out") = py::none());
}

}  // namespace

void bind_dropout(py::module_& m) {
  def_each<DropoutKernel>(m, {{"dropout", "x", FASTDL_PICK(dropout_forward)},
                              {"dropout_backward", "dout", FASTDL_PICK(dropout_backward)}},
                          dropout_call);
  def_each<Dropout2dKernel>(m, {{"dropout2d", "x", FASTDL_PICK(dropout2d_forward)},
                                {"dropout2d_backward", "dout", FASTDL_PICK(dropout2d_backward)}},
                            dropout2d_call);
}

}  // namespace fastdl
