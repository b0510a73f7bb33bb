// common.cpp - the shared argument checks of the bindings (common.h).
#include "common.h"

#include <cmath>
#include <cstdlib>
#include <iomanip>
#include <sstream>

namespace fastdl {

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

std::string value_str(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

std::string type_name(py::handle h) { return std::string(py::str(py::type::of(h).attr("__name__"))); }

// Whether p is aligned to the elements of dt: kernels read float* and int64_t*, and a misaligned one is
// undefined behaviour (and a fault for aligned vector loads).
static bool aligned_for(const void* p, DType dt) {
  return reinterpret_cast<uintptr_t>(p) % (dt == DType::F32 ? alignof(float) : alignof(int64_t)) == 0;
}

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
    type_error(std::string(fn) + ": " + arg + " must be a numpy.ndarray of " + want + ", got " + type_name(h));
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

py::array out_f32(py::handle out, const char* fn, const char* arg, const Shape& shape, const char* names) {
  if (out.is_none()) return py::array_t<float>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  py::array a = inout_f32(out, fn, arg);
  require_shape(fn, arg, a, shape, names);
  return a;
}

void require_ndim(const char* fn, const char* arg, const py::array& a, int ndim, const char* names) {
  if (a.ndim() != ndim)
    value_error(std::string(fn) + ": " + arg + " must be " + std::to_string(ndim) + "-D " + names +
                ", got shape " + shape_str(shape_of(a)));
}

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

void require_same_or_disjoint(const char* fn, const char* out_arg, const py::array& out, const char* arg,
                              const py::array& a) {
  if (out.data() == a.data() && out.nbytes() == a.nbytes()) return;
  if (overlaps(out, a))
    value_error(std::string(fn) + ": " + out_arg + " must not share memory with " + arg + " (it may be " + arg +
                " itself, for in place, or separate memory)");
}

void require_all_disjoint(const char* fn,
                          std::initializer_list<std::pair<const char*, const py::array*>> arrays) {
  for (auto i = arrays.begin(); i != arrays.end(); ++i)
    for (auto j = std::next(i); j != arrays.end(); ++j)
      if (overlaps(*i->second, *j->second))
        value_error(std::string(fn) + ": " + i->first + " and " + j->first + " must not share memory");
}

int64_t first_nonfinite(const py::array& a) {
  const float* p = cf(a);
  for (int64_t i = 0, n = a.size(); i < n; i++)
    if (!std::isfinite(p[i])) return i;
  return -1;
}

void require_finite(const char* fn, const char* arg, const py::array& a) {
  int64_t i = first_nonfinite(a);
  if (i >= 0)
    value_error(std::string(fn) + ": " + arg + " contains NaN or Inf (first at flat index " + std::to_string(i) +
                ": " + value_str(cf(a)[i]) + ")");
}

// float32 rounds |x| >= FLT_MAX + half an ulp (2^128 - 2^103 = 3.4028235677973366e38) to ±inf.
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

// An activation name: None, 'none', 'relu', 'sigmoid' or 'tanh', as its Act code.
void require_outputs_apart(const char* fn, const Named& outs, const Named& ins) {
  for (size_t i = 0; i < outs.size(); ++i) {
    for (auto& in : ins) require_no_overlap(fn, outs[i].first, *outs[i].second, in.first, *in.second);
    for (size_t j = 0; j < i; ++j) require_no_overlap(fn, outs[i].first, *outs[i].second, outs[j].first, *outs[j].second);
  }
}

int parse_act(py::handle h, const char* fn, const char* name) {
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

// A flag that must be a bool (Python's or NumPy's): batch_invariant=1 is a TypeError, not True.
bool strict_bool(py::handle h, const char* fn, const char* name) {
  if (h.ptr() == Py_True || h.ptr() == Py_False) return h.ptr() == Py_True;
  const std::string tp = Py_TYPE(h.ptr())->tp_name;
  if (!py::isinstance<py::bool_>(h) && tp != "numpy.bool" && tp != "numpy.bool_")
    type_error(std::string(fn) + ": " + name + " must be True or False, got " + type_name(h));
  return PyObject_IsTrue(h.ptr()) == 1;
}

}  // namespace fastdl
