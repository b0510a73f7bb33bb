// bindings.cpp - the only file that includes pybind11; builds fastdl._C.
//
// Contract for every function here: arrays arrive as exact float32 (int64 for labels), C-contiguous and
// aligned to their elements, never converted or copied (a silent copy of an in-place argument would lose
// the update); every shape is checked; errors name the function and the argument (TypeError for types and
// dtypes, ValueError for values and shapes); the GIL is released around each kernel only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iomanip>
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

// Whether p is aligned to the elements of dt: kernels read float* and int64_t*, and a misaligned one is
// undefined behaviour (and a fault for aligned vector loads).
bool aligned_for(const void* p, DType dt) {
  return reinterpret_cast<uintptr_t>(p) % (dt == DType::F32 ? alignof(float) : alignof(int64_t)) == 0;
}

// The argument as a NumPy array of exactly this dtype, C-contiguous, aligned to its elements (and writeable
// for outputs).
py::array take_array(py::handle h, const char* fn, const char* arg, DType dt, bool writeable) {
  // Fast path (most calls): a C-contiguous array of the native-order dtype, read from NumPy's structs.
  if (py::detail::npy_api::get().PyArray_Check_(h.ptr())) {
    const auto* ap = py::detail::array_proxy(h.ptr());
    const auto* d = py::detail::array_descriptor_proxy(ap->descr);
    const int type_num = dt == DType::F32 ? py::detail::npy_api::NPY_FLOAT32_ : py::detail::npy_api::NPY_INT64_;
    const int need = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ |
                     (writeable ? py::detail::npy_api::NPY_ARRAY_WRITEABLE_ : 0);
    if (d->type_num == type_num && d->byteorder != '>' && (ap->flags & need) == need && aligned_for(ap->data, dt))
      return py::reinterpret_borrow<py::array>(h);
  }
  const char* want = dt == DType::F32 ? "float32" : "int64";
  if (!py::isinstance<py::array>(h))
    type_error(std::string(fn) + ": " + arg + " must be a numpy.ndarray of " + want + ", got " +
               std::string(py::str(py::type::of(h).attr("__name__"))));
  py::array a = py::reinterpret_borrow<py::array>(h);
  // equal(), not is(): an array unpickled (or built from a buffer) has an equal but distinct dtype object.
  bool ok = dt == DType::F32 ? a.dtype().equal(py::dtype::of<float>()) : a.dtype().equal(py::dtype::of<int64_t>());
  if (!ok)
    type_error(std::string(fn) + ": " + arg + " must have dtype " + want + ", got " +
               std::string(py::str(a.dtype())) + " (convert it once with np.asarray(" + arg + ", dtype=np." +
               want + "))");
  if (!(a.flags() & py::array::c_style))
    type_error(std::string(fn) + ": " + arg + " must be C-contiguous, got a strided view of shape " +
               shape_str(shape_of(a)) + " (use np.ascontiguousarray(" + arg + "))");
  if (!aligned_for(a.data(), dt)) {
    const std::string size = dt == DType::F32 ? "4" : "8";
    // np.ascontiguousarray would hand back the same misaligned array; np.require(..., 'A') copies it
    value_error(std::string(fn) + ": " + arg + " is not aligned to its " + size + "-byte elements (as from " +
                "np.frombuffer at an offset that is not a multiple of " + size + "); pass an aligned copy, " +
                "np.require(" + arg + ", requirements='A')");
  }
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

// An output (elementwise, in-place capable) may be one of the inputs exactly (in place) but must not partly overlap one.
void require_same_or_disjoint(const char* fn, const char* out_arg, const py::array& out, const char* arg,
                              const py::array& a) {
  if (out.data() == a.data() && out.nbytes() == a.nbytes()) return;
  if (overlaps(out, a))
    value_error(std::string(fn) + ": " + out_arg + " must not share memory with " + arg + " (it may be " + arg +
                " itself, for in place, or separate memory)");
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

int parse_act(py::handle h, const char* fn, const char* name = "activation") {
  if (h.is_none()) return ACT_NONE;
  const std::string what = std::string(fn) + ": " + name + " must be None or one of 'none', 'relu', 'sigmoid', 'tanh'";
  if (!py::isinstance<py::str>(h)) type_error(what + ", got " + std::string(Py_TYPE(h.ptr())->tp_name));
  std::string s = h.cast<std::string>();
  if (s == "none") return ACT_NONE;
  if (s == "relu") return ACT_RELU;
  if (s == "sigmoid") return ACT_SIGMOID;
  if (s == "tanh") return ACT_TANH;
  value_error(what + ", got '" + s + "'");
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
  m.def("available_cpus", &available_cpus, "CPUs this process may use (affinity mask, cgroup CPU quota).");
  m.def("set_contention_guard", &set_contention_guard, py::arg("on").noconvert(),
        "Turn the contention guard on (default) or off.");
  m.def("contention_guard", &contention_guard);
  m.def(
      "contention_stats",
      [] {
        const TeamStats s = team_stats();
        py::dict d;
        d["regions"] = s.regions;
        d["stalled_regions"] = s.stalled_regions;
        d["stalls"] = s.stalls;
        d["guarded_regions"] = s.guarded_regions;
        d["threads_cap"] = s.cap;
        d["waited_s"] = static_cast<double>(s.lost_ns) * 1e-9;
        d["waited_in_stalls_s"] = static_cast<double>(s.stalled_lost_ns) * 1e-9;
        d["longest_wait_s"] = static_cast<double>(s.max_lost_ns) * 1e-9;
        return d;
      },
      "The contention guard since the process started: parallel regions run, stalled regions, times it "
      "engaged, kernel calls it limited, time masters waited for their team; threads_cap is its limit now "
      "(0: none).");
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
    d["available_cpus"] = available_cpus();
    d["contention_guard"] = contention_guard();
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
         py::handle dweight, py::handle dbias, py::handle input_activation) {
        const char* fn = "linear_backward";
        const int input_act = parse_act(input_activation, fn, "input_activation");
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
          FASTDL_KERNEL(linear_backward)(dxp, dwp, dbp, dp, xp, wp, B, C, OC, accumulate, input_act);
        }
        return py::make_tuple(need_dx ? py::object(dxa) : py::object(py::none()), dwa,
                              bias ? py::object(dba) : py::object(py::none()));
      },
      py::arg("dout"), py::arg("x"), py::arg("weight"), py::arg("bias") = true, py::arg("need_dx") = true,
      py::arg("accumulate") = false, py::arg("dx") = py::none(), py::arg("dweight") = py::none(),
      py::arg("dbias") = py::none(), py::arg("input_activation") = py::none());
}

// ============================== activations ==============================
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

// x as the float a kernel takes; a finite double that float32 rounds to ±inf, |x| >= FLT_MAX + half
// an ulp (2^128 - 2^103 = 3.4028235677973366e38), is refused: "fn: arg=1e+39 does not fit in float32".
float fit_float32(const char* fn, const char* arg, double x) {
  if (std::fabs(x) >= 0x1p128 - 0x1p103) {
    std::string digits;  // the fewest that give x back, as Python's repr (3.40282e+38 could be many values)
    for (int precision = 6; precision <= 17; precision++) {
      std::ostringstream os;
      os << std::setprecision(precision) << x;
      digits = os.str();
      if (std::strtod(digits.c_str(), nullptr) == x) break;
    }
    value_error(std::string(fn) + ": " + arg + "=" + digits + " does not fit in float32 (max 3.4028235e+38)");
  }
  return static_cast<float>(x);
}

float finite_slope(const char* fn, double slope) {
  if (!std::isfinite(slope))
    value_error(std::string(fn) + ": negative_slope must be finite, got " + std::to_string(slope));
  return fit_float32(fn, "negative_slope", slope);
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
      "all_finite",
      [](py::handle x) {
        py::array xa = in_f32(x, "all_finite", "x");
        const float* p = static_cast<const float*>(xa.data());
        const int64_t n = static_cast<int64_t>(xa.size());
        py::gil_scoped_release nogil;
        return FASTDL_KERNEL(all_finite)(p, n);
      },
      py::arg("x"));
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
        auto label_error = [&](int64_t b, int64_t label) {
          value_error(std::string(fn) + ": labels[" + std::to_string(b) + "] = " + std::to_string(label) +
                      " is out of range [0, " + std::to_string(NC) + ") for logits of shape " +
                      shape_str(shape_of(xa)));
        };
        for (int64_t b = 0; b < B; b++)
          if (lp[b] < 0 || lp[b] >= NC) label_error(b, lp[b]);
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
        BadLabel bad;
        {
          py::gil_scoped_release nogil;
          loss = FASTDL_KERNEL(softmax_crossentropy_forward_backward)(gp, &bad, xp, lp, red, B, NC);
        }
        // labels changed by another thread after the check above: the kernel refused what it read
        if (bad.row >= 0) label_error(bad.row, bad.label);
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
// p of dropout: a number in [0, 1) (also once rounded to float32, which the kernel uses).
float parse_dropout_p(double p, const char* fn) {
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
    type_error(std::string(fn) + ": seed must be an int in [0, 2**64), got " +
               std::string(py::str(py::type::of(h).attr("__name__"))));
  py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
  if (!i) throw py::error_already_set();
  unsigned long long v = PyLong_AsUnsignedLongLong(i.ptr());
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    value_error(std::string(fn) + ": seed must be an int in [0, 2**64), got " + std::string(py::repr(i)));
  }
  return static_cast<uint64_t>(v);
}

// A finite scalar hyperparameter at least `lo` (and below `hi` when hi_open) that fits in float32.
float require_scalar(const char* fn, const char* arg, double x, double lo, double hi, bool hi_open,
                     const char* range) {
  bool ok = std::isfinite(x) && x >= lo && (hi_open ? x < hi : x <= hi);
  if (!ok) {
    std::ostringstream os;
    os << fn << ": " << arg << " must be " << range << ", got " << x;
    value_error(os.str());
  }
  return fit_float32(fn, arg, x);
}

// Arrays updated in place must not share memory with each other nor with the inputs read.
void require_all_disjoint(const char* fn, std::initializer_list<std::pair<const char*, const py::array*>> arrays) {
  for (auto i = arrays.begin(); i != arrays.end(); ++i)
    for (auto j = std::next(i); j != arrays.end(); ++j)
      if (overlaps(*i->second, *j->second))
        value_error(std::string(fn) + ": " + i->first + " and " + j->first + " must not share memory");
}

py::array dropout_call(const char* fn, const char* in_name, py::handle x, double p, py::handle seed, py::handle out,
                       bool forward) {
  py::array xa = in_f32(x, fn, in_name);
  require_nonempty(fn, in_name, xa);
  float pf = parse_dropout_p(p, fn);
  uint64_t s = parse_seed(seed, fn);
  py::array oa = out_f32(out, fn, "out", shape_of(xa), (std::string(in_name) + ".shape").c_str());
  require_same_or_disjoint(fn, "out", oa, in_name, xa);
  const float* xp = cf(xa);
  float* op = mf(oa);
  int64_t n = xa.size();
  {
    py::gil_scoped_release nogil;
    if (forward)
      FASTDL_KERNEL(dropout_forward)(op, xp, pf, s, n);
    else
      FASTDL_KERNEL(dropout_backward)(op, xp, pf, s, n);
  }
  return oa;
}

// Shape checks shared by the two batchnorm forwards: x (B, C) non-empty, the per-feature arrays (C,).
void batchnorm_check(const char* fn, const py::array& xa, const py::array& g, const py::array& b,
                     const py::array& rm, const py::array& rv) {
  require_ndim(fn, "x", xa, 2, "(batch, num_features)");
  require_nonempty(fn, "x", xa);
  Shape c{xa.shape(1)};
  require_shape(fn, "gamma", g, c, "(num_features,)");
  require_shape(fn, "beta", b, c, "(num_features,)");
  require_shape(fn, "running_mean", rm, c, "(num_features,)");
  require_shape(fn, "running_var", rv, c, "(num_features,)");
}

void bind_regularization(py::module_& m) {
  m.def(
      "dropout_forward",
      [](py::handle x, double p, py::handle seed, py::handle out) {
        return dropout_call("dropout_forward", "x", x, p, seed, out, true);
      },
      py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("out") = py::none());
  m.def(
      "dropout_backward",
      [](py::handle dout, double p, py::handle seed, py::handle out) {
        return dropout_call("dropout_backward", "dout", dout, p, seed, out, false);
      },
      py::arg("dout"), py::arg("p"), py::arg("seed"), py::arg("out") = py::none());

  m.def(
      "batchnorm_forward_train",
      [](py::handle x, py::handle gamma, py::handle beta, py::handle running_mean, py::handle running_var,
         double momentum, double eps, py::handle out) {
        const char* fn = "batchnorm_forward";
        py::array xa = in_f32(x, fn, "x"), g = in_f32(gamma, fn, "gamma"), b = in_f32(beta, fn, "beta");
        py::array rm = take_array(running_mean, fn, "running_mean", DType::F32, true);
        py::array rv = take_array(running_var, fn, "running_var", DType::F32, true);
        batchnorm_check(fn, xa, g, b, rm, rv);
        const int64_t B = xa.shape(0), C = xa.shape(1);
        if (B < 2)
          value_error(std::string(fn) + ": expected more than 1 value per channel when training, got x of shape " +
                      shape_str(shape_of(xa)));
        float mom = require_scalar(fn, "momentum", momentum, 0.0, 1.0, false, "in [0, 1]");
        float ep = require_scalar(fn, "eps", eps, 0.0, HUGE_VAL, true, "finite and >= 0");
        py::array oa = out_f32(out, fn, "out", shape_of(xa), "x.shape");
        require_same_or_disjoint(fn, "out", oa, "x", xa);
        require_all_disjoint(fn, {{"running_mean", &rm}, {"running_var", &rv}, {"x", &xa}, {"gamma", &g},
                                  {"beta", &b}});
        for (auto& [name, a] : {std::pair<const char*, const py::array*>{"gamma", &g}, {"beta", &b},
                                {"running_mean", &rm}, {"running_var", &rv}})
          require_no_overlap(fn, "out", oa, name, *a);
        py::array mean = py::array_t<float>(C), invstd = py::array_t<float>(C);
        py::array scratch = py::array_t<float>(batchnorm_scratch_floats(B, C));
        float *op = mf(oa), *mp = mf(mean), *ip = mf(invstd), *sp = mf(scratch), *rmp = mf(rm), *rvp = mf(rv);
        const float *xp = cf(xa), *gp = cf(g), *bp = cf(b);
        {
          py::gil_scoped_release nogil;
          FASTDL_KERNEL(batchnorm_forward_train)(op, mp, ip, sp, rmp, rvp, xp, gp, bp, mom, ep, B, C);
        }
        return py::make_tuple(oa, mean, invstd);
      },
      py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"), py::arg("running_var"),
      py::arg("momentum") = 0.1, py::arg("eps") = 1e-5, py::arg("out") = py::none(),
      "Training forward: returns (y, mean, invstd); updates running_mean and running_var in place.");

  m.def(
      "batchnorm_forward_eval",
      [](py::handle x, py::handle gamma, py::handle beta, py::handle running_mean, py::handle running_var,
         double eps, py::handle out) {
        const char* fn = "batchnorm_forward";
        py::array xa = in_f32(x, fn, "x"), g = in_f32(gamma, fn, "gamma"), b = in_f32(beta, fn, "beta");
        py::array rm = in_f32(running_mean, fn, "running_mean"), rv = in_f32(running_var, fn, "running_var");
        batchnorm_check(fn, xa, g, b, rm, rv);
        const int64_t B = xa.shape(0), C = xa.shape(1);
        float ep = require_scalar(fn, "eps", eps, 0.0, HUGE_VAL, true, "finite and >= 0");
        py::array oa = out_f32(out, fn, "out", shape_of(xa), "x.shape");
        require_same_or_disjoint(fn, "out", oa, "x", xa);
        for (auto& [name, a] : {std::pair<const char*, const py::array*>{"gamma", &g}, {"beta", &b},
                                {"running_mean", &rm}, {"running_var", &rv}})
          require_no_overlap(fn, "out", oa, name, *a);
        float* op = mf(oa);
        const float *xp = cf(xa), *gp = cf(g), *bp = cf(b), *rmp = cf(rm), *rvp = cf(rv);
        {
          py::gil_scoped_release nogil;
          FASTDL_KERNEL(batchnorm_forward_eval)(op, xp, gp, bp, rmp, rvp, ep, B, C);
        }
        return oa;
      },
      py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"), py::arg("running_var"),
      py::arg("eps") = 1e-5, py::arg("out") = py::none(), "Eval forward with the running statistics.");

  m.def(
      "batchnorm_backward",
      [](py::handle dout, py::handle x, py::handle gamma, py::handle mean, py::handle invstd, py::handle dx,
         py::handle dgamma, py::handle dbeta) {
        const char* fn = "batchnorm_backward";
        py::array xa = in_f32(x, fn, "x"), d = in_f32(dout, fn, "dout"), g = in_f32(gamma, fn, "gamma");
        py::array mu = in_f32(mean, fn, "mean"), is = in_f32(invstd, fn, "invstd");
        require_ndim(fn, "x", xa, 2, "(batch, num_features)");
        require_nonempty(fn, "x", xa);
        const int64_t B = xa.shape(0), C = xa.shape(1);
        Shape c{C};
        require_shape(fn, "dout", d, shape_of(xa), "x.shape");
        require_shape(fn, "gamma", g, c, "(num_features,)");
        require_shape(fn, "mean", mu, c, "(num_features,)");
        require_shape(fn, "invstd", is, c, "(num_features,)");
        py::array dxa = out_f32(dx, fn, "dx", shape_of(xa), "x.shape");
        py::array dga = out_f32(dgamma, fn, "dgamma", c, "(num_features,)");
        py::array dba = out_f32(dbeta, fn, "dbeta", c, "(num_features,)");
        require_same_or_disjoint(fn, "dx", dxa, "dout", d);
        require_same_or_disjoint(fn, "dx", dxa, "x", xa);
        for (auto& [name, a] : {std::pair<const char*, const py::array*>{"gamma", &g}, {"mean", &mu},
                                {"invstd", &is}, {"dgamma", &dga}, {"dbeta", &dba}})
          require_no_overlap(fn, "dx", dxa, name, *a);
        require_all_disjoint(fn, {{"dgamma", &dga}, {"dbeta", &dba}, {"dout", &d}, {"x", &xa}, {"gamma", &g},
                                  {"mean", &mu}, {"invstd", &is}});
        py::array scratch = py::array_t<float>(batchnorm_scratch_floats(B, C));
        float *dxp = mf(dxa), *dgp = mf(dga), *dbp = mf(dba), *sp = mf(scratch);
        const float *dp = cf(d), *xp = cf(xa), *gp = cf(g), *mp = cf(mu), *ip = cf(is);
        {
          py::gil_scoped_release nogil;
          FASTDL_KERNEL(batchnorm_backward)(dxp, dgp, dbp, sp, dp, xp, gp, mp, ip, B, C);
        }
        return py::make_tuple(dxa, dga, dba);
      },
      py::arg("dout"), py::arg("x"), py::arg("gamma"), py::arg("mean"), py::arg("invstd"),
      py::arg("dx") = py::none(), py::arg("dgamma") = py::none(), py::arg("dbeta") = py::none(),
      "Returns (dx, dgamma, dbeta) from the training forward's mean and invstd.");
}

// ============================== optimizer updates ==============================
// An array updated in place: exact float32, C-contiguous, writeable, non-empty, shaped like param.
py::array inplace_f32(py::handle h, const char* fn, const char* arg, const py::array* like) {
  py::array a = take_array(h, fn, arg, DType::F32, true);
  if (like) require_shape(fn, arg, a, shape_of(*like), "param.shape");
  return a;
}

// No two of the arrays share memory: their byte ranges, sorted by start, each begin after the
// furthest end before them (n log n: a model's 4 x 6 arrays in ~0.1 us). The error names the pair.
void require_disjoint_list(const char* fn, const std::vector<py::array>& arrays, const std::vector<std::string>& names) {
  struct Span {
    const char *lo, *hi;
    size_t i;
  };
  std::vector<Span> spans(arrays.size());
  for (size_t i = 0; i < arrays.size(); i++) {
    const char* p = static_cast<const char*>(arrays[i].data());
    spans[i] = {p, p + arrays[i].nbytes(), i};
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.lo < b.lo; });
  for (size_t k = 1, far = 0; k < spans.size(); k++) {  // far: the span reaching furthest so far
    if (spans[k].lo < spans[far].hi) {
      const size_t i = std::min(spans[k].i, spans[far].i), j = std::max(spans[k].i, spans[far].i);
      value_error(std::string(fn) + ": " + names[i] + " and " + names[j] + " must not share memory");
    }
    if (spans[k].hi > spans[far].hi) far = k;
  }
}

// SGD's hyper-parameters, checked once for sgd_update and sgd_update_many.
struct SgdArgs {
  float lr, momentum, dampening, weight_decay;
};
SgdArgs sgd_args(const char* fn, double lr, double momentum, double dampening, double weight_decay, bool nesterov) {
  SgdArgs a;
  a.lr = require_scalar(fn, "lr", lr, 0.0, HUGE_VAL, true, "finite and >= 0");
  a.momentum = require_scalar(fn, "momentum", momentum, 0.0, HUGE_VAL, true, "finite and >= 0");
  a.dampening = require_scalar(fn, "dampening", dampening, -HUGE_VAL, HUGE_VAL, true, "finite");
  a.weight_decay = require_scalar(fn, "weight_decay", weight_decay, 0.0, HUGE_VAL, true, "finite and >= 0");
  if (nesterov && (a.momentum <= 0.0f || a.dampening != 0.0f))
    value_error(std::string(fn) + ": nesterov momentum requires a momentum > 0 and zero dampening");
  return a;
}

// Adam's hyper-parameters, checked once for adam_update and adam_update_many.
struct AdamArgs {
  float lr, eps, weight_decay;
};
AdamArgs adam_args(const char* fn, double lr, double beta1, double beta2, double eps, double weight_decay) {
  AdamArgs a;
  a.lr = require_scalar(fn, "lr", lr, 0.0, HUGE_VAL, true, "finite and >= 0");
  require_scalar(fn, "beta1", beta1, 0.0, 1.0, true, "in [0, 1)");
  require_scalar(fn, "beta2", beta2, 0.0, 1.0, true, "in [0, 1)");
  a.eps = require_scalar(fn, "eps", eps, 0.0, HUGE_VAL, true, "finite and >= 0");
  a.weight_decay = require_scalar(fn, "weight_decay", weight_decay, 0.0, HUGE_VAL, true, "finite and >= 0");
  return a;
}
void require_adam_step(const char* fn, const std::string& arg, int64_t step) {
  if (step < 1)
    value_error(std::string(fn) + ": " + arg + " must be >= 1 (the first update is step 1), got " +
                std::to_string(step));
}

// A step count from a list: a Python int (or anything with __index__, bool excluded), >= 1.
int64_t parse_step(py::handle h, const char* fn, const std::string& arg) {
  if (PyBool_Check(h.ptr()) || !PyIndex_Check(h.ptr()))
    type_error(std::string(fn) + ": " + arg + " must be an int, got " +
               std::string(py::str(py::type::of(h).attr("__name__"))));
  py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
  if (!i) throw py::error_already_set();  // its __index__ raised: that exception goes on
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
  if (overflow)
    value_error(std::string(fn) + ": " + arg + " must fit in 64 bits, got " + std::string(py::repr(i)));
  require_adam_step(fn, arg, v);
  return v;
}

// A list or tuple argument of the *_many updates ("... must be a list or tuple of <what>").
py::sequence require_sequence(const char* fn, py::handle h, const char* arg, const char* what = "arrays") {
  if (!py::isinstance<py::list>(h) && !py::isinstance<py::tuple>(h))
    type_error(std::string(fn) + ": " + arg + " must be a list or tuple of " + what + ", got " +
               std::string(py::str(py::type::of(h).attr("__name__"))));
  return py::reinterpret_borrow<py::sequence>(h);
}

// The error of an update that refused its step (check_finite): it names the first gradient (an
// array whose name starts with "grad") that holds a NaN or Inf. Nothing was written.
[[noreturn]] void nonfinite_grad_error(const char* fn, const std::vector<py::array>& arrays,
                                       const std::vector<std::string>& names) {
  for (size_t k = 0; k < arrays.size(); k++) {
    const int64_t i = names[k].rfind("grad", 0) == 0 ? first_nonfinite(arrays[k]) : -1;
    if (i >= 0)
      value_error(std::string(fn) + ": " + names[k] + " contains NaN or Inf (first at flat index " +
                  std::to_string(i) + ": " + value_str(cf(arrays[k])[i]) +
                  "); nothing was updated (check_finite=False skips this check)");
  }
  value_error(std::string(fn) + ": a gradient contained NaN or Inf; nothing was updated");  // changed since
}

void bind_optim(py::module_& m) {
  m.def(
      "sgd_update",
      [](py::handle param, py::handle grad, py::handle momentum_buf, double lr, double momentum, double dampening,
         double weight_decay, bool nesterov, bool first_step, bool check_finite) {
        const char* fn = "sgd_step";
        py::array pa = inplace_f32(param, fn, "param", nullptr);
        require_nonempty(fn, "param", pa);
        py::array ga = in_f32(grad, fn, "grad");
        require_shape(fn, "grad", ga, shape_of(pa), "param.shape");
        const SgdArgs h = sgd_args(fn, lr, momentum, dampening, weight_decay, nesterov);
        if (h.momentum != 0.0f && momentum_buf.is_none())
          value_error(std::string(fn) + ": momentum_buf is required when momentum != 0");
        float* bp = nullptr;
        if (!momentum_buf.is_none()) {  // checked whenever given; used only when momentum != 0
          py::array ba = inplace_f32(momentum_buf, fn, "momentum_buf", &pa);
          require_all_disjoint(fn, {{"param", &pa}, {"grad", &ga}, {"momentum_buf", &ba}});
          if (h.momentum != 0.0f) bp = mf(ba);  // ba's memory is owned by the caller's array, alive during the call
        } else {
          require_all_disjoint(fn, {{"param", &pa}, {"grad", &ga}});
        }
        float* pp = mf(pa);
        const float* gp = cf(ga);
        int64_t n = pa.size();
        bool ran;
        {
          py::gil_scoped_release nogil;
          ran = FASTDL_KERNEL(sgd_update)(pp, bp, gp, h.lr, h.momentum, h.dampening, h.weight_decay,
                                          nesterov ? 1 : 0, first_step ? 1 : 0, check_finite ? 1 : 0, n);
        }
        if (!ran) nonfinite_grad_error(fn, {ga}, {"grad"});
      },
      py::arg("param"), py::arg("grad"), py::arg("momentum_buf"), py::arg("lr"), py::arg("momentum"),
      py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"), py::arg("first_step"),
      py::arg("check_finite"),
      "PyTorch's SGD step, in place on param (and momentum_buf when momentum != 0); with check_finite a grad "
      "holding NaN or Inf raises ValueError and nothing is written.");

  m.def(
      "sgd_update_many",
      [](py::handle params, py::handle grads, py::handle momentum_bufs, double lr, double momentum, double dampening,
         double weight_decay, bool nesterov, bool first_step, bool check_finite) {
        const char* fn = "sgd_step_many";
        py::sequence ps = require_sequence(fn, params, "params"), gs = require_sequence(fn, grads, "grads");
        const SgdArgs h = sgd_args(fn, lr, momentum, dampening, weight_decay, nesterov);
        const bool with_bufs = h.momentum != 0.0f;
        if (with_bufs && momentum_bufs.is_none())
          value_error(std::string(fn) + ": momentum_bufs is required when momentum != 0");
        py::sequence bs = momentum_bufs.is_none() ? py::sequence(py::list())
                                                  : require_sequence(fn, momentum_bufs, "momentum_bufs");
        const size_t count = ps.size();
        if (count == 0) value_error(std::string(fn) + ": params is empty");
        if (gs.size() != count || (!momentum_bufs.is_none() && bs.size() != count))
          value_error(std::string(fn) + ": params, grads and momentum_bufs must have the same length, got " +
                      std::to_string(count) + ", " + std::to_string(gs.size()) + " and " +
                      (momentum_bufs.is_none() ? std::string("None") : std::to_string(bs.size())));
        std::vector<py::array> keep;  // every array, in the order named below, alive during the call
        std::vector<std::string> names;
        std::vector<float*> pp(count), bp(count);
        std::vector<const float*> gp(count);
        std::vector<int64_t> n(count);
        for (size_t i = 0; i < count; i++) {
          const std::string k = "[" + std::to_string(i) + "]";
          py::array pa = inplace_f32(ps[i], fn, ("params" + k).c_str(), nullptr);
          require_nonempty(fn, ("params" + k).c_str(), pa);
          py::array ga = in_f32(gs[i], fn, ("grads" + k).c_str());
          require_shape(fn, ("grads" + k).c_str(), ga, shape_of(pa), ("params" + k + ".shape").c_str());
          pp[i] = mf(pa);
          gp[i] = cf(ga);
          n[i] = pa.size();
          keep.push_back(pa);
          names.push_back("params" + k);
          keep.push_back(ga);
          names.push_back("grads" + k);
          if (!momentum_bufs.is_none()) {  // checked whenever given; used only when momentum != 0
            py::array ba = inplace_f32(bs[i], fn, ("momentum_bufs" + k).c_str(), &pa);
            bp[i] = mf(ba);
            keep.push_back(ba);
            names.push_back("momentum_bufs" + k);
          }
        }
        require_disjoint_list(fn, keep, names);  // one array updated twice at once would race
        bool ran;
        {
          py::gil_scoped_release nogil;
          ran = FASTDL_KERNEL(sgd_update_many)(pp.data(), with_bufs ? bp.data() : nullptr, gp.data(), n.data(),
                                               static_cast<int64_t>(count), h.lr, h.momentum, h.dampening,
                                               h.weight_decay, nesterov ? 1 : 0, first_step ? 1 : 0,
                                               check_finite ? 1 : 0);
        }
        if (!ran) nonfinite_grad_error(fn, keep, names);
      },
      py::arg("params"), py::arg("grads"), py::arg("momentum_bufs"), py::arg("lr"), py::arg("momentum"),
      py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"), py::arg("first_step"),
      py::arg("check_finite"),
      "sgd_update on several arrays at once, in one parallel region (PyTorch's foreach SGD); with check_finite "
      "no array is written when any grad holds NaN or Inf.");

  m.def(
      "adam_update",
      [](py::handle param, py::handle grad, py::handle m_, py::handle v_, double lr, int64_t step, double beta1,
         double beta2, double eps, double weight_decay, bool decoupled, bool check_finite) {
        const char* fn = "adam_step";
        py::array pa = inplace_f32(param, fn, "param", nullptr);
        require_nonempty(fn, "param", pa);
        py::array ga = in_f32(grad, fn, "grad");
        require_shape(fn, "grad", ga, shape_of(pa), "param.shape");
        py::array ma = inplace_f32(m_, fn, "m", &pa), va = inplace_f32(v_, fn, "v", &pa);
        const AdamArgs h = adam_args(fn, lr, beta1, beta2, eps, weight_decay);
        require_adam_step(fn, "step", step);
        require_all_disjoint(fn, {{"param", &pa}, {"grad", &ga}, {"m", &ma}, {"v", &va}});
        float *pp = mf(pa), *mp = mf(ma), *vp = mf(va);
        const float* gp = cf(ga);
        int64_t n = pa.size();
        bool ran;
        {
          py::gil_scoped_release nogil;
          ran = FASTDL_KERNEL(adam_update)(pp, mp, vp, gp, h.lr, beta1, beta2, h.eps, h.weight_decay,
                                           decoupled ? 1 : 0, step, check_finite ? 1 : 0, n);
        }
        if (!ran) nonfinite_grad_error(fn, {ga}, {"grad"});
      },
      py::arg("param"), py::arg("grad"), py::arg("m"), py::arg("v"), py::arg("lr"), py::arg("step"),
      py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"),
      py::arg("check_finite"),
      "Adam (decoupled=False) or AdamW (decoupled=True) step, in place on param, m and v; with check_finite a "
      "grad holding NaN or Inf raises ValueError and nothing is written.");

  m.def(
      "adam_update_many",
      [](py::handle params, py::handle grads, py::handle ms, py::handle vs, double lr, py::handle steps,
         double beta1, double beta2, double eps, double weight_decay, bool decoupled, bool check_finite) {
        const char* fn = "adam_step_many";
        py::sequence ps = require_sequence(fn, params, "params"), gs = require_sequence(fn, grads, "grads"),
                     msq = require_sequence(fn, ms, "m"), vsq = require_sequence(fn, vs, "v");
        py::sequence ss = require_sequence(fn, steps, "steps", "ints");
        const AdamArgs h = adam_args(fn, lr, beta1, beta2, eps, weight_decay);
        const size_t count = ps.size();
        if (count == 0) value_error(std::string(fn) + ": params is empty");
        if (gs.size() != count || msq.size() != count || vsq.size() != count || ss.size() != count)
          value_error(std::string(fn) + ": params, grads, m, v and steps must have the same length, got " +
                      std::to_string(count) + ", " + std::to_string(gs.size()) + ", " + std::to_string(msq.size()) +
                      ", " + std::to_string(vsq.size()) + " and " + std::to_string(ss.size()));
        std::vector<py::array> keep;  // every array, in the order named below, alive during the call
        std::vector<std::string> names;
        std::vector<float*> pp(count), mp(count), vp(count);
        std::vector<const float*> gp(count);
        std::vector<int64_t> n(count), st(count);
        for (size_t i = 0; i < count; i++) {
          const std::string k = "[" + std::to_string(i) + "]";
          st[i] = parse_step(ss[i], fn, "steps" + k);  // int or NumPy integer
          py::array pa = inplace_f32(ps[i], fn, ("params" + k).c_str(), nullptr);
          require_nonempty(fn, ("params" + k).c_str(), pa);
          py::array ga = in_f32(gs[i], fn, ("grads" + k).c_str());
          require_shape(fn, ("grads" + k).c_str(), ga, shape_of(pa), ("params" + k + ".shape").c_str());
          py::array ma = inplace_f32(msq[i], fn, ("m" + k).c_str(), &pa);
          py::array va = inplace_f32(vsq[i], fn, ("v" + k).c_str(), &pa);
          pp[i] = mf(pa);
          gp[i] = cf(ga);
          mp[i] = mf(ma);
          vp[i] = mf(va);
          n[i] = pa.size();
          for (auto& [a, name] : {std::pair{pa, "params"}, {ga, "grads"}, {ma, "m"}, {va, "v"}}) {
            keep.push_back(a);
            names.push_back(name + k);
          }
        }
        require_disjoint_list(fn, keep, names);  // one array updated twice at once would race
        bool ran;
        {
          py::gil_scoped_release nogil;
          ran = FASTDL_KERNEL(adam_update_many)(pp.data(), mp.data(), vp.data(), gp.data(), n.data(), st.data(),
                                                static_cast<int64_t>(count), h.lr, beta1, beta2, h.eps,
                                                h.weight_decay, decoupled ? 1 : 0, check_finite ? 1 : 0);
        }
        if (!ran) nonfinite_grad_error(fn, keep, names);
      },
      py::arg("params"), py::arg("grads"), py::arg("m"), py::arg("v"), py::arg("lr"), py::arg("steps"),
      py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"),
      py::arg("check_finite"),
      "adam_update on several arrays at once (each with its own step), in one parallel region (PyTorch's "
      "foreach Adam); with check_finite no array is written when any grad holds NaN or Inf.");
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

void bind_data(py::module_& m);  // csrc/bindings_data.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastdl native kernels (C++17, OpenMP); the Python face is fastdl.ops";
  bind_config(m);
  bind_gemm(m);
  bind_activations(m);
  bind_losses(m);
  bind_regularization(m);
  bind_optim(m);
  bind_machine(m);
  bind_data(m);
}
