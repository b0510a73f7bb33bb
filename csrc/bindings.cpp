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
void bind_activations(py::module_& m) {
  m.def(
      "relu_forward",
      [](py::handle x, py::handle out) {
        py::array xa = in_f32(x, "relu_forward", "x");
        require_nonempty("relu_forward", "x", xa);
        py::array oa = out_f32(out, "relu_forward", "out", shape_of(xa), "x.shape");
        const float* xp = cf(xa);
        float* op = mf(oa);
        int64_t n = xa.size();
        {
          py::gil_scoped_release nogil;
          FASTDL_KERNEL(relu_forward)(op, xp, n);
        }
        return oa;
      },
      py::arg("x"), py::arg("out") = py::none());
  m.def(
      "relu_backward",
      [](py::handle dout, py::handle x, py::handle out) {
        const char* fn = "relu_backward";
        py::array d = in_f32(dout, fn, "dout"), xa = in_f32(x, fn, "x");
        require_nonempty(fn, "x", xa);
        require_shape(fn, "dout", d, shape_of(xa), "x.shape");
        py::array oa = out_f32(out, fn, "out", shape_of(xa), "x.shape");
        const float *dp = cf(d), *xp = cf(xa);
        float* op = mf(oa);
        int64_t n = xa.size();
        {
          py::gil_scoped_release nogil;
          FASTDL_KERNEL(relu_backward)(op, dp, xp, n);
        }
        return oa;
      },
      py::arg("dout"), py::arg("x"), py::arg("out") = py::none());
}

// ============================== losses ==============================
void bind_losses(py::module_& m) {
}

// ============================== dropout / batchnorm ==============================
void bind_regularization(py::module_& m) {
}

// ============================== optimizer updates ==============================
void bind_optim(py::module_& m) {
}

// ============================== machine limits (bench/) ==============================
void bind_machine(py::module_& m) {
  m.def(
      "fma_peak_run",
      [](int64_t iters, int threads) {
        if (iters < 1) value_error("fma_peak_run: iters must be >= 1, got " + std::to_string(iters));
        if (threads < 1) value_error("fma_peak_run: threads must be >= 1, got " + std::to_string(threads));
        py::gil_scoped_release nogil;
        return FASTDL_KERNEL(fma_peak_run)(iters, threads);
      },
      py::arg("iters"), py::arg("threads"),
      "Run an FMA loop the compiler cannot delete on `threads` threads; returns the flops done.");
  m.def(
      "stream_triad",
      [](py::handle a, py::handle b, py::handle c, float s, int threads) {
        const char* fn = "stream_triad";
        py::array aa = take_array(a, fn, "a", DType::F32, true), ba = in_f32(b, fn, "b"), ca = in_f32(c, fn, "c");
        require_nonempty(fn, "a", aa);
        require_shape(fn, "b", ba, shape_of(aa), "a.shape");
        require_shape(fn, "c", ca, shape_of(aa), "a.shape");
        if (threads < 1) value_error("stream_triad: threads must be >= 1, got " + std::to_string(threads));
        float* ap = mf(aa);
        const float *bp = cf(ba), *cp = cf(ca);
        int64_t n = aa.size();
        py::gil_scoped_release nogil;
        FASTDL_KERNEL(stream_triad)(ap, bp, cp, s, n, threads);
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("s"), py::arg("threads"), "a = b + s*c (STREAM triad).");
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
  bind_machine(m);
}
