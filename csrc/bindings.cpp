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
using GemmFn = void (*)(float*, const float*, const float*, const float*, int, int64_t, int64_t, int64_t, int, int,
                        int);

// matmul and matmul_reference: c (M,N) [+]= op(a)·op(b) [+ bias], then activation.
py::array matmul_impl(const char* fn, GemmFn kernel, py::handle a, py::handle b, bool trans_a, bool trans_b,
                      py::handle out, bool accumulate, py::handle bias, py::handle activation) {
  py::array aa = in_f32(a, fn, "a"), ba = in_f32(b, fn, "b");
  require_ndim(fn, "a", aa, 2, trans_a ? "(K, M)" : "(M, K)");
  require_nonempty(fn, "a", aa);
  const int64_t M = trans_a ? aa.shape(1) : aa.shape(0), K = trans_a ? aa.shape(0) : aa.shape(1);
  require_ndim(fn, "b", ba, 2, trans_b ? "(N, K)" : "(K, N)");
  const int64_t N = trans_b ? ba.shape(0) : ba.shape(1);
  require_shape(fn, "b", ba, trans_b ? Shape{N, K} : Shape{K, N}, trans_b ? "(N, K)" : "(K, N)");
  require_nonempty(fn, "b", ba);
  const bool has_bias = !bias.is_none();
  py::array biasa;  // (a default py::array is a real, empty array: test has_bias, not biasa)
  if (has_bias) {
    biasa = in_f32(bias, fn, "bias");
    require_shape(fn, "bias", biasa, Shape{N}, "(N,)");
  }
  const int act = parse_act(activation, fn);
  if (accumulate && out.is_none())
    value_error(std::string(fn) + ": accumulate=True needs out, the array to add into");
  py::array oa = out_f32(out, fn, "out", Shape{M, N}, "(M, N)");
  require_no_overlap(fn, "out", oa, "a", aa);
  require_no_overlap(fn, "out", oa, "b", ba);
  if (has_bias) require_no_overlap(fn, "out", oa, "bias", biasa);
  const float *ap = cf(aa), *bp = cf(ba), *biasp = has_bias ? cf(biasa) : nullptr;
  float* op = mf(oa);
  {
    py::gil_scoped_release nogil;
    kernel(op, ap, bp, biasp, act, M, N, K, trans_a, trans_b, accumulate);
  }
  return oa;
}

void bind_gemm(py::module_& m) {
  m.def(
      "matmul",
      [](py::handle a, py::handle b, bool trans_a, bool trans_b, py::handle out, bool accumulate, py::handle bias,
         py::handle activation) {
        return matmul_impl("matmul", FASTDL_KERNEL(gemm), a, b, trans_a, trans_b, out, accumulate, bias, activation);
      },
      py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
      py::arg("out") = py::none(), py::arg("accumulate") = false, py::arg("bias") = py::none(),
      py::arg("activation") = py::none());
  m.def(
      "matmul_reference",
      [](py::handle a, py::handle b, bool trans_a, bool trans_b, py::handle out, bool accumulate, py::handle bias,
         py::handle activation) {
        return matmul_impl("matmul_reference", FASTDL_KERNEL(gemm_naive), a, b, trans_a, trans_b, out, accumulate,
                           bias, activation);
      },
      py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
      py::arg("out") = py::none(), py::arg("accumulate") = false, py::arg("bias") = py::none(),
      py::arg("activation") = py::none());

  m.def(
      "linear_forward",
      [](py::handle x, py::handle weight, py::handle bias, py::handle activation, py::handle out) {
        const char* fn = "linear_forward";
        py::array xa = in_f32(x, fn, "x"), wa = in_f32(weight, fn, "weight");
        require_ndim(fn, "x", xa, 2, "(batch, in_features)");
        require_nonempty(fn, "x", xa);
        const int64_t B = xa.shape(0), C = xa.shape(1);
        require_ndim(fn, "weight", wa, 2, "(out_features, in_features)");
        const int64_t OC = wa.shape(0);
        require_shape(fn, "weight", wa, Shape{OC, C}, "(out_features, in_features)");
        require_nonempty(fn, "weight", wa);
        const bool has_bias = !bias.is_none();
        py::array ba;
        if (has_bias) {
          ba = in_f32(bias, fn, "bias");
          require_shape(fn, "bias", ba, Shape{OC}, "(out_features,)");
        }
        const int act = parse_act(activation, fn);
        py::array oa = out_f32(out, fn, "out", Shape{B, OC}, "(batch, out_features)");
        require_no_overlap(fn, "out", oa, "x", xa);
        require_no_overlap(fn, "out", oa, "weight", wa);
        if (has_bias) require_no_overlap(fn, "out", oa, "bias", ba);
        const float *xp = cf(xa), *wp = cf(wa), *bp = has_bias ? cf(ba) : nullptr;
        float* op = mf(oa);
        {
          py::gil_scoped_release nogil;
          FASTDL_KERNEL(linear_forward)(op, xp, wp, bp, act, B, C, OC);
        }
        return oa;
      },
      py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("activation") = py::none(),
      py::arg("out") = py::none());

  m.def(
      "linear_backward",
      [](py::handle dout, py::handle x, py::handle weight, bool bias, bool need_dx, bool accumulate, py::handle dx,
         py::handle dweight, py::handle dbias) {
        const char* fn = "linear_backward";
        py::array da = in_f32(dout, fn, "dout"), xa = in_f32(x, fn, "x"), wa = in_f32(weight, fn, "weight");
        require_ndim(fn, "x", xa, 2, "(batch, in_features)");
        require_nonempty(fn, "x", xa);
        const int64_t B = xa.shape(0), C = xa.shape(1);
        require_ndim(fn, "weight", wa, 2, "(out_features, in_features)");
        const int64_t OC = wa.shape(0);
        require_shape(fn, "weight", wa, Shape{OC, C}, "(out_features, in_features)");
        require_nonempty(fn, "weight", wa);
        require_shape(fn, "dout", da, Shape{B, OC}, "(batch, out_features)");
        if (!need_dx && !dx.is_none()) value_error(std::string(fn) + ": dx was given but need_dx=False");
        if (!bias && !dbias.is_none()) value_error(std::string(fn) + ": dbias was given but bias=False");
        if (accumulate && dweight.is_none())
          value_error(std::string(fn) + ": accumulate=True needs dweight, the array to add into");
        if (accumulate && bias && dbias.is_none())
          value_error(std::string(fn) + ": accumulate=True needs dbias, the array to add into (or bias=False)");
        py::array dwa = out_f32(dweight, fn, "dweight", Shape{OC, C}, "(out_features, in_features)");
        py::array dba, dxa;
        if (bias) dba = out_f32(dbias, fn, "dbias", Shape{OC}, "(out_features,)");
        if (need_dx) dxa = out_f32(dx, fn, "dx", Shape{B, C}, "(batch, in_features)");
        // No output may share memory with an input or with another output.
        std::vector<std::pair<const char*, py::array*>> ins{{"dout", &da}, {"x", &xa}, {"weight", &wa}};
        std::vector<std::pair<const char*, py::array*>> outs{{"dweight", &dwa}};
        if (bias) outs.push_back({"dbias", &dba});
        if (need_dx) outs.push_back({"dx", &dxa});
        for (size_t i = 0; i < outs.size(); ++i) {
          for (auto& in : ins) require_no_overlap(fn, outs[i].first, *outs[i].second, in.first, *in.second);
          for (size_t j = 0; j < i; ++j)
            require_no_overlap(fn, outs[i].first, *outs[i].second, outs[j].first, *outs[j].second);
        }
        const float *dp = cf(da), *xp = cf(xa), *wp = cf(wa);
        float *dwp = mf(dwa), *dbp = bias ? mf(dba) : nullptr, *dxp = need_dx ? mf(dxa) : nullptr;
        {
          py::gil_scoped_release nogil;
          FASTDL_KERNEL(linear_backward)(dxp, dwp, dbp, dp, xp, wp, B, C, OC, accumulate);
        }
        return py::make_tuple(need_dx ? py::object(dxa) : py::object(py::none()), dwa,
                              bias ? py::object(dba) : py::object(py::none()));
      },
      py::arg("dout"), py::arg("x"), py::arg("weight"), py::arg("bias") = true, py::arg("need_dx") = true,
      py::arg("accumulate") = false, py::arg("dx") = py::none(), py::arg("dweight") = py::none(),
      py::arg("dbias") = py::none());
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
