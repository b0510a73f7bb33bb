// common.h - what every bindings file shares: taking arrays, checking them, raising errors.
//
// Contract for every function of fastdl._C: arrays arrive as exact float32 (int64 for labels), C-contiguous
// and aligned to their elements, never converted or copied (a silent copy of an in-place argument would
// lose the update); every shape is checked; errors name the function the user called and the argument
// (TypeError for types and dtypes, ValueError for values and shapes); the GIL is released around each
// kernel only (without_gil).
//
// One family per file in this folder (gemm.cpp, activations.cpp, ...), each defining bind_<family>;
// module.cpp calls them all. Only csrc/bindings/ includes pybind11.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "fastdl.h"

namespace fastdl {
namespace py = pybind11;

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);  // "(3,)", "(2, 5)"
Shape shape_of(const py::array& a);
std::string value_str(double v);        // as an ostream prints it
std::string type_name(py::handle h);    // the Python type's __name__

[[noreturn]] inline void type_error(const std::string& msg) { throw py::type_error(msg); }
[[noreturn]] inline void value_error(const std::string& msg) { throw py::value_error(msg); }

// ---- taking arrays ----
enum class DType { F32, I64 };

// The argument as a NumPy array of exactly this dtype, C-contiguous, aligned to its elements (and
// writeable for outputs), else TypeError / ValueError: "fn: arg must have dtype float32, got float64 ...".
py::array take_array(py::handle h, const char* fn, const char* arg, DType dt, bool writeable);
inline py::array in_f32(py::handle h, const char* fn, const char* arg) {
  return take_array(h, fn, arg, DType::F32, false);
}
inline py::array in_i64(py::handle h, const char* fn, const char* arg) {
  return take_array(h, fn, arg, DType::I64, false);
}
inline py::array inout_f32(py::handle h, const char* fn, const char* arg) {
  return take_array(h, fn, arg, DType::F32, true);
}
// An output: a new float32 array of this shape when `out` is None, else `out` checked to match exactly.
py::array out_f32(py::handle out, const char* fn, const char* arg, const Shape& shape, const char* names);

inline const float* cf(const py::array& a) { return static_cast<const float*>(a.data()); }
inline float* mf(py::array& a) { return static_cast<float*>(a.mutable_data()); }
inline const int64_t* ci(const py::array& a) { return static_cast<const int64_t*>(a.data()); }

// ---- shapes ----
// "fn: arg must be 2-D (batch, features), got shape (3,)"
void require_ndim(const char* fn, const char* arg, const py::array& a, int ndim, const char* names);
// "fn: weight has shape (10, 783), expected (out_features, in_features) = (10, 784)"
void require_shape(const char* fn, const char* arg, const py::array& a, const Shape& want, const char* names);
void require_nonempty(const char* fn, const char* arg, const py::array& a);

// ---- memory shared between arguments ----
bool overlaps(const py::array& a, const py::array& b);
void require_no_overlap(const char* fn, const char* out_arg, const py::array& out, const char* arg,
                        const py::array& a);
// An output (elementwise, in-place capable) may be one of the inputs exactly (in place) but must not
// partly overlap one.
void require_same_or_disjoint(const char* fn, const char* out_arg, const py::array& out, const char* arg,
                              const py::array& a);
// Outputs (written whole) must share no memory with an input nor with another output.
using Named = std::vector<std::pair<const char*, py::array*>>;
void require_outputs_apart(const char* fn, const Named& outs, const Named& ins);
// Arrays updated in place must not share memory with each other nor with the inputs read.
void require_all_disjoint(const char* fn,
                          std::initializer_list<std::pair<const char*, const py::array*>> arrays);

// ---- values ----
// Index of the first NaN or Inf in a float32 array (flat), or -1.
int64_t first_nonfinite(const py::array& a);
// "fn: arg contains NaN or Inf (first at flat index 3: nan)"
void require_finite(const char* fn, const char* arg, const py::array& a);
// x as the float a kernel takes; a finite double that float32 rounds to ±inf is refused:
// "fn: arg=1e+39 does not fit in float32".
float fit_float32(const char* fn, const char* arg, double x);
// A finite scalar hyperparameter at least `lo` (and below `hi` when hi_open, else at most) that fits in
// float32: "fn: arg must be <range>, got x".
float require_scalar(const char* fn, const char* arg, double x, double lo, double hi, bool hi_open,
                     const char* range);

// An activation name: None, 'none', 'relu', 'sigmoid' or 'tanh', as its Act code (else TypeError/ValueError
// naming the argument).
int parse_act(py::handle h, const char* fn, const char* name = "activation");
// A flag that must be a bool (Python's or NumPy's): batch_invariant=1 is a TypeError, not True.
bool strict_bool(py::handle h, const char* fn, const char* name);

// Runs f (a kernel call, after every check) with the GIL released, and returns what it returns.
template <class F>
auto without_gil(F&& f) {
  py::gil_scoped_release nogil;
  return f();
}

// The kernel for the instruction set active when called, as a value a table can hold:
// FASTDL_PICK(relu_forward)() is FASTDL_KERNEL(relu_forward).
#define FASTDL_PICK(fn) (+[] { return FASTDL_KERNEL(fn); })

}  // namespace fastdl
