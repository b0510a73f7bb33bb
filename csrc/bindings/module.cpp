// module.cpp - fastdl._C: one bind_<family> per file of this folder. A new family is a kernel file
// (csrc/<family>.cpp), a bindings file here (bind_<family>), its two lines below, and its file in
// CMakeLists.txt.
#include "common.h"

namespace fastdl {
void bind_system(py::module_& m);
void bind_gemm(py::module_& m);
void bind_conv(py::module_& m);
void bind_activations(py::module_& m);
void bind_losses(py::module_& m);
void bind_dropout(py::module_& m);
void bind_batchnorm(py::module_& m);
void bind_optim(py::module_& m);
void bind_data(py::module_& m);
void bind_bench(py::module_& m);
void bind_pool(py::module_& m);
}  // namespace fastdl

PYBIND11_MODULE(_C, m) {
  using namespace fastdl;
  m.doc() = "fastdl native kernels (C++17, OpenMP); the Python face is fastdl.ops";
  bind_system(m);
  bind_gemm(m);
  bind_conv(m);
  bind_activations(m);
  bind_losses(m);
  bind_dropout(m);
  bind_batchnorm(m);
  bind_optim(m);
  bind_data(m);
  bind_pool(m);
  py::module_ bench = m.def_submodule("bench", "Benchmark-only natives (the machine's limits), used by bench/");
  bind_bench(bench);
}
