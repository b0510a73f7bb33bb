// bindings.cpp - the only file that includes pybind11; builds fastdl._C.
//
// Contract for every function here: arrays arrive as exact float32 (int64 for labels), C-contiguous,
// never converted or copied (a silent copy of an in-place argument would lose the update); every
// shape is checked; errors name the function and the argument (TypeError for types and dtypes,
// ValueError for values and shapes); the GIL is released around each kernel only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "fastdl.h"

namespace py = pybind11;
using namespace fastdl;

namespace {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  if (s.size() == 1) os << ",";
  os << ")";
  return os.str();
}

Shape shape_of(const py::array& a) {
  Shape s(a.ndim());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s[i] = a.shape(i);
  return s;
}

int64_t size_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }
[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }

enum class DType { F32, I64 };

// The argument as a NumPy array of exactly this dtype, C-contiguous (and writeable for outputs).
py::array take_array(py::handle h, const char* fn, const char* arg, DType dt, bool writeable) {
  const char* want = dt == DType::F32 ? "float32" : "int64";
  if (!py::isinstance<py::array>(h))
    type_error(std::string(fn) + ": " + arg + " must be a numpy.ndarray of " + want + ", got " +
               std::string(py::str(py::type::of(h).attr("__name__"))));
  py::array a = py::reinterpret_borrow<py::array>(h);
  bool ok = dt == DType::F32 ? a.dtype().is(py::dtype::of<float>()) : a.dtype().is(py::dtype::of<int64_t>());
  if (!ok)
    type_error(std::string(fn) + ": " + arg + " must have dtype " + want + ", got " +
               std::string(py::str(a.dtype())) + " (convert it once with np.asarray(" + arg + ", dtype=np." +
               want + "))");
  if (!(a.flags() & py::array::c_style))
    type_error(std::string(fn) + ": " + arg + " must be C-contiguous, got a strided view of shape " +
               shape_str(shape_of(a)) + " (use np.ascontiguousarray(" + arg + "))");
  if (writeable && !a.writeable()) value_error(std::string(fn) + ": " + arg + " is read-only");
  return a;
}

py::array in_f32(py::handle h, const char* fn, const char* arg) { return take_array(h, fn, arg, DType::F32, false); }
py::array in_i64(py::handle h, const char* fn, const char* arg) { return take_array(h, fn, arg, DType::I64, false); }

// "fn: arg must be 2-D (batch, features), got shape (3,)"
void require_ndim(const char* fn, const char* arg, const py::array& a, int ndim, const char* names) {
  if (a.ndim() != ndim)
    value_error(std::string(fn) + ": " + arg + " must be " + std::to_string(ndim) + "-D " + names +
                ", got shape " + shape_str(shape_of(a)));
}

// "fn: weight has shape (10, 783), expected (out_features, in_features) = (10, 784)"
void require_shape(const char* fn, const char* arg, const py::array& a, const Shape& want, const char* names) {
  Shape got = shape_of(a);
  if (got != want)
    value_error(std::string(fn) + ": " + arg + " has shape " + shape_str(got) + ", expected " + names + " = " +
                shape_str(want));
}

void require_nonempty(const char* fn, const char* arg, const py::array& a) {
  if (a.size() == 0) value_error(std::string(fn) + ": " + arg + " is empty (shape " + shape_str(shape_of(a)) + ")");
}

bool overlaps(const py::array& a, const py::array& b) {
  auto pa = static_cast<const char*>(a.data()), pb = static_cast<const char*>(b.data());
  return pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

void require_no_overlap(const char* fn, const char* out_arg, const py::array& out, const char* arg,
                        const py::array& a) {
  if (overlaps(out, a)) value_error(std::string(fn) + ": " + out_arg + " must not share memory with " + arg);
}

// An output: a new float32 array of this shape when `out` is None, else `out` checked to match exactly.
py::array out_f32(py::handle out, const char* fn, const char* arg, const Shape& shape, const char* names) {
  if (out.is_none()) return py::array_t<float>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  py::array a = take_array(out, fn, arg, DType::F32, true);
  require_shape(fn, arg, a, shape, names);
  return a;
}

const float* cf(const py::array& a) { return static_cast<const float*>(a.data()); }
float* mf(py::array& a) { return static_cast<float*>(a.mutable_data()); }
const int64_t* ci(const py::array& a) { return static_cast<const int64_t*>(a.data()); }

int parse_act(py::handle h, const char* fn) {
  if (h.is_none()) return ACT_NONE;
  if (!py::isinstance<py::str>(h))
    type_error(std::string(fn) + ": activation must be None or one of 'none', 'relu', 'sigmoid', 'tanh'");
  std::string s = h.cast<std::string>();
  if (s == "none") return ACT_NONE;
  if (s == "relu") return ACT_RELU;
  if (s == "sigmoid") return ACT_SIGMOID;
  if (s == "tanh") return ACT_TANH;
  value_error(std::string(fn) + ": activation must be None or one of 'none', 'relu', 'sigmoid', 'tanh', got '" +
              s + "'");
}

int parse_reduction(const std::string& s, const char* fn) {
  if (s == "mean") return RED_MEAN;
  if (s == "sum") return RED_SUM;
  value_error(std::string(fn) + ": reduction must be 'mean' or 'sum', got '" + s + "'");
}

// ============================== configuration ==============================
void bind_config(py::module_& m) {
  m.def("get_num_threads", &get_num_threads, "Threads a parallel kernel may use.");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
        set_num_threads(n);
      },
      py::arg("n"), "Set the threads parallel kernels may use (default: the CPUs this process may use).");
  m.def("default_num_threads", &default_num_threads);
  m.def("best_isa", [] { return std::string(isa_name(best_isa())); }, "Best instruction set this CPU runs.");
  m.def("get_isa", [] { return std::string(isa_name(active_isa())); }, "Instruction set the kernels use now.");
  m.def(
      "set_isa",
      [](const std::string& name) {
        int isa = name == "avx512" ? ISA_AVX512 : name == "avx2" ? ISA_AVX2 : name == "generic" ? ISA_GENERIC : -1;
        if (isa < 0) value_error("set_isa: name must be 'generic', 'avx2' or 'avx512', got '" + name + "'");
        if (!set_isa(isa))
          value_error("set_isa: this CPU cannot run '" + name + "' (best: '" + isa_name(best_isa()) + "')");
      },
      py::arg("name"), "Force the kernels onto an instruction set at or below the best this CPU runs.");
  m.def("config", [] {
    py::dict d;
    d["version"] = FASTDL_VERSION;
    d["compiler"] = FASTDL_COMPILER;
    d["openmp"] = std::to_string(_OPENMP);
    d["isa"] = isa_name(active_isa());
    d["best_isa"] = isa_name(best_isa());
    d["num_threads"] = get_num_threads();
    return d;
  });
}

// ============================== gemm / linear ==============================
void bind_gemm(py::module_& m) {
}

// ============================== activations ==============================
// An elementwise output may be one of the inputs exactly (in place) but must not partly overlap one.
void require_same_or_disjoint(const char* fn, const char* out_arg, const py::array& out, const char* arg,
                              const py::array& a) {
  if (out.data() == a.data() && out.nbytes() == a.nbytes()) return;
  if (overlaps(out, a))
    value_error(std::string(fn) + ": " + out_arg + " partly overlaps " + arg + " (it may be " + arg +
                " itself, for in place, or separate memory)");
}

using UnaryKernel = void (*)(float*, const float*, int64_t);
using BinaryKernel = void (*)(float*, const float*, const float*, int64_t);
using RowsKernel = void (*)(float*, const float*, const float*, int64_t, int64_t);

// out = f(x) elementwise: x any shape, non-empty; out has x's shape.
py::array unary_op(const char* fn, UnaryKernel kernel, py::handle x, py::handle out) {
  py::array xa = in_f32(x, fn, "x");
  require_nonempty(fn, "x", xa);
  py::array oa = out_f32(out, fn, "out", shape_of(xa), "x.shape");
  require_same_or_disjoint(fn, "out", oa, "x", xa);
  const float* xp = cf(xa);
  float* op = mf(oa);
  int64_t n = xa.size();
  {
    py::gil_scoped_release nogil;
    kernel(op, xp, n);
  }
  return oa;
}

// dinp = f(dout, a) elementwise, a = the forward's input or output (named a_name): same shapes.
py::array binary_op(const char* fn, BinaryKernel kernel, py::handle dout, py::handle a, const char* a_name,
                    py::handle out) {
  py::array d = in_f32(dout, fn, "dout"), aa = in_f32(a, fn, a_name);
  require_nonempty(fn, a_name, aa);
  std::string like = std::string(a_name) + ".shape";
  require_shape(fn, "dout", d, shape_of(aa), like.c_str());
  py::array oa = out_f32(out, fn, "out", shape_of(aa), like.c_str());
  require_same_or_disjoint(fn, "out", oa, "dout", d);
  require_same_or_disjoint(fn, "out", oa, a_name, aa);
  const float *dp = cf(d), *ap = cf(aa);
  float* op = mf(oa);
  int64_t n = aa.size();
  {
    py::gil_scoped_release nogil;
    kernel(op, dp, ap, n);
  }
  return oa;
}

float finite_slope(const char* fn, double slope) {
  if (!std::isfinite(slope))
    value_error(std::string(fn) + ": negative_slope must be finite, got " + std::to_string(slope));
  return static_cast<float>(slope);
}

void bind_activations(py::module_& m) {
  m.def("relu_forward", [](py::handle x, py::handle out) {
    return unary_op("relu_forward", FASTDL_KERNEL(relu_forward), x, out);
  }, py::arg("x"), py::arg("out") = py::none());
  m.def("relu_backward", [](py::handle dout, py::handle x, py::handle out) {
    return binary_op("relu_backward", FASTDL_KERNEL(relu_backward), dout, x, "x", out);
  }, py::arg("dout"), py::arg("x"), py::arg("out") = py::none());

  m.def(
      "leaky_relu_forward",
      [](py::handle x, double negative_slope, py::handle out) {
        const char* fn = "leaky_relu_forward";
        float slope = finite_slope(fn, negative_slope);
        py::array xa = in_f32(x, fn, "x");
        require_nonempty(fn, "x", xa);
        py::array oa = out_f32(out, fn, "out", shape_of(xa), "x.shape");
        require_same_or_disjoint(fn, "out", oa, "x", xa);
        const float* xp = cf(xa);
        float* op = mf(oa);
        int64_t n = xa.size();
        {
          py::gil_scoped_release nogil;
          FASTDL_KERNEL(leaky_relu_forward)(op, xp, slope, n);
        }
        return oa;
      },
      py::arg("x"), py::arg("negative_slope") = 0.01, py::arg("out") = py::none());
  m.def(
      "leaky_relu_backward",
      [](py::handle dout, py::handle x, double negative_slope, py::handle out) {
        const char* fn = "leaky_relu_backward";
        float slope = finite_slope(fn, negative_slope);
        py::array d = in_f32(dout, fn, "dout"), xa = in_f32(x, fn, "x");
        require_nonempty(fn, "x", xa);
        require_shape(fn, "dout", d, shape_of(xa), "x.shape");
        py::array oa = out_f32(out, fn, "out", shape_of(xa), "x.shape");
        require_same_or_disjoint(fn, "out", oa, "dout", d);
        require_same_or_disjoint(fn, "out", oa, "x", xa);
        const float *dp = cf(d), *xp = cf(xa);
        float* op = mf(oa);
        int64_t n = xa.size();
        {
          py::gil_scoped_release nogil;
          FASTDL_KERNEL(leaky_relu_backward)(op, dp, xp, slope, n);
        }
        return oa;
      },
      py::arg("dout"), py::arg("x"), py::arg("negative_slope") = 0.01, py::arg("out") = py::none());

  m.def("sigmoid_forward", [](py::handle x, py::handle out) {
    return unary_op("sigmoid_forward", FASTDL_KERNEL(sigmoid_forward), x, out);
  }, py::arg("x"), py::arg("out") = py::none());
  m.def("sigmoid_backward", [](py::handle dout, py::handle y, py::handle out) {
    return binary_op("sigmoid_backward", FASTDL_KERNEL(sigmoid_backward), dout, y, "y", out);
  }, py::arg("dout"), py::arg("y"), py::arg("out") = py::none());
  m.def("tanh_forward", [](py::handle x, py::handle out) {
    return unary_op("tanh_forward", FASTDL_KERNEL(tanh_forward), x, out);
  }, py::arg("x"), py::arg("out") = py::none());
  m.def("tanh_backward", [](py::handle dout, py::handle y, py::handle out) {
    return binary_op("tanh_backward", FASTDL_KERNEL(tanh_backward), dout, y, "y", out);
  }, py::arg("dout"), py::arg("y"), py::arg("out") = py::none());
  m.def("step_forward", [](py::handle x, py::handle out) {
    return unary_op("step_forward", FASTDL_KERNEL(step_forward), x, out);
  }, py::arg("x"), py::arg("out") = py::none());

  m.def(
      "softmax_forward",
      [](py::handle x, py::handle out) {
        const char* fn = "softmax_forward";
        py::array xa = in_f32(x, fn, "x");
        require_ndim(fn, "x", xa, 2, "(batch, features)");
        require_nonempty(fn, "x", xa);
        py::array oa = out_f32(out, fn, "out", shape_of(xa), "x.shape");
        require_same_or_disjoint(fn, "out", oa, "x", xa);
        const float* xp = cf(xa);
        float* op = mf(oa);
        int64_t B = xa.shape(0), C = xa.shape(1);
        {
          py::gil_scoped_release nogil;
          FASTDL_KERNEL(softmax_forward)(op, xp, B, C);
        }
        return oa;
      },
      py::arg("x"), py::arg("out") = py::none());
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
        {
          py::gil_scoped_release nogil;
          FASTDL_KERNEL(softmax_backward)(op, dp, yp, B, C);
        }
        return oa;
      },
      py::arg("dout"), py::arg("y"), py::arg("out") = py::none());
}

// ============================== losses ==============================
// Index of the first NaN or Inf in a (flat), or -1. Only run after a kernel returned a non-finite
// loss, to say which argument caused it.
int64_t first_nonfinite(const py::array& a) {
  const float* p = cf(a);
  for (int64_t i = 0, n = a.size(); i < n; i++)
    if (!std::isfinite(p[i])) return i;
  return -1;
}

std::string value_str(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

void require_finite(const char* fn, const char* arg, const py::array& a) {
  int64_t i = first_nonfinite(a);
  if (i >= 0)
    value_error(std::string(fn) + ": " + arg + " contains NaN or Inf (first at flat index " + std::to_string(i) +
                ": " + value_str(cf(a)[i]) + ")");
}

int reduction_arg(py::handle h, const char* fn) {
  if (!py::isinstance<py::str>(h))
    type_error(std::string(fn) + ": reduction must be 'mean' or 'sum', got " +
               std::string(py::str(py::type::of(h).attr("__name__"))));
  return parse_reduction(h.cast<std::string>(), fn);
}

// The gradient output: allocated or checked when grad, else none (and out must then be None).
py::object grad_out(py::handle out, bool grad, const char* fn, const Shape& shape, const char* names) {
  if (!grad) {
    if (!out.is_none()) value_error(std::string(fn) + ": out is given but grad=False (no gradient is written)");
    return py::none();
  }
  return out_f32(out, fn, "out", shape, names);
}

using PairLossKernel = double (*)(float*, const float*, const float*, int, int64_t);

// (loss, grad or None) for a loss over two same-shaped arrays a (the one differentiated) and b.
py::tuple pair_loss(const char* fn, PairLossKernel kernel, const char* a_name, const char* b_name, py::handle a,
                    py::handle b, py::handle reduction, bool grad, py::handle out, bool b_in_unit_interval) {
  int red = reduction_arg(reduction, fn);
  py::array aa = in_f32(a, fn, a_name), ba = in_f32(b, fn, b_name);
  require_nonempty(fn, a_name, aa);
  std::string like = std::string(a_name) + ".shape";
  require_shape(fn, b_name, ba, shape_of(aa), like.c_str());
  py::object g = grad_out(out, grad, fn, shape_of(aa), like.c_str());
  float* gp = nullptr;
  if (grad) {
    py::array ga = py::reinterpret_borrow<py::array>(g);
    require_same_or_disjoint(fn, "out", ga, a_name, aa);
    require_same_or_disjoint(fn, "out", ga, b_name, ba);
    gp = mf(ga);
  }
  const float *ap = cf(aa), *bp = cf(ba);
  int64_t n = aa.size();
  double loss;
  {
    py::gil_scoped_release nogil;
    loss = kernel(gp, ap, bp, red, n);
  }
  if (!std::isfinite(loss)) {  // the kernels make any NaN/Inf input (or bad target) show up here
    require_finite(fn, a_name, aa);
    require_finite(fn, b_name, ba);
    if (b_in_unit_interval) {
      const float* t = cf(ba);
      for (int64_t i = 0; i < n; i++)
        if (!(t[i] >= 0.0f && t[i] <= 1.0f))
          value_error(std::string(fn) + ": " + b_name + " must lie in [0, 1], got " + value_str(t[i]) +
                      " at flat index " + std::to_string(i));
    }
    value_error(std::string(fn) + ": the loss is not finite");
  }
  return py::make_tuple(loss, g);
}

void bind_losses(py::module_& m) {
  m.def(
      "mse_forward_backward",
      [](py::handle pred, py::handle target, py::handle reduction, bool grad, py::handle out) {
        return pair_loss("mse_forward_backward", FASTDL_KERNEL(mse_forward_backward), "pred", "target", pred,
                         target, reduction, grad, out, false);
      },
      py::arg("pred"), py::arg("target"), py::arg("reduction") = "mean", py::arg("grad") = true,
      py::arg("out") = py::none());
  m.def(
      "l1_forward_backward",
      [](py::handle pred, py::handle target, py::handle reduction, bool grad, py::handle out) {
        return pair_loss("l1_forward_backward", FASTDL_KERNEL(l1_forward_backward), "pred", "target", pred,
                         target, reduction, grad, out, false);
      },
      py::arg("pred"), py::arg("target"), py::arg("reduction") = "mean", py::arg("grad") = true,
      py::arg("out") = py::none());
  m.def(
      "bce_logits_forward_backward",
      [](py::handle logits, py::handle target, py::handle reduction, bool grad, py::handle out) {
        return pair_loss("bce_logits_forward_backward", FASTDL_KERNEL(bce_logits_forward_backward), "logits",
                         "target", logits, target, reduction, grad, out, true);
      },
      py::arg("logits"), py::arg("target"), py::arg("reduction") = "mean", py::arg("grad") = true,
      py::arg("out") = py::none());
  m.def(
      "softmax_crossentropy_forward_backward",
      [](py::handle logits, py::handle labels, py::handle reduction, bool grad, py::handle out) {
        const char* fn = "softmax_crossentropy_forward_backward";
        int red = reduction_arg(reduction, fn);
        py::array xa = in_f32(logits, fn, "logits");
        require_ndim(fn, "logits", xa, 2, "(batch, classes)");
        require_nonempty(fn, "logits", xa);
        int64_t B = xa.shape(0), NC = xa.shape(1);
        py::array la = in_i64(labels, fn, "labels");
        require_shape(fn, "labels", la, {B}, "(batch,)");
        const int64_t* lp = ci(la);
        for (int64_t b = 0; b < B; b++)
          if (lp[b] < 0 || lp[b] >= NC)
            value_error(std::string(fn) + ": labels[" + std::to_string(b) + "] = " + std::to_string(lp[b]) +
                        " is out of range [0, " + std::to_string(NC) + ") for logits of shape " +
                        shape_str(shape_of(xa)));
        py::object g = grad_out(out, grad, fn, shape_of(xa), "logits.shape");
        float* gp = nullptr;
        if (grad) {
          py::array ga = py::reinterpret_borrow<py::array>(g);
          require_same_or_disjoint(fn, "out", ga, "logits", xa);
          require_no_overlap(fn, "out", ga, "labels", la);  // labels are read while out is written
          gp = mf(ga);
        }
        const float* xp = cf(xa);
        double loss;
        {
          py::gil_scoped_release nogil;
          loss = FASTDL_KERNEL(softmax_crossentropy_forward_backward)(gp, xp, lp, red, B, NC);
        }
        if (!std::isfinite(loss)) {
          require_finite(fn, "logits", xa);
          value_error(std::string(fn) + ": the loss is not finite");
        }
        return py::make_tuple(loss, g);
      },
      py::arg("logits"), py::arg("labels"), py::arg("reduction") = "mean", py::arg("grad") = true,
      py::arg("out") = py::none());
}

// ============================== dropout / batchnorm ==============================
void bind_regularization(py::module_& m) {
}

// ============================== optimizer updates ==============================
void bind_optim(py::module_& m) {
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastdl native kernels (C++17, OpenMP); the Python face is fastdl.ops";
  bind_config(m);
  bind_gemm(m);
  bind_activations(m);
  bind_losses(m);
  bind_regularization(m);
  bind_optim(m);
}
