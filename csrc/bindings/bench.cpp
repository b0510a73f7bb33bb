// bench.cpp - fastdl._C.bench: the benchmark-only natives (csrc/bench/), the machine's own limits that
// bench/ measures the kernels against. Not part of fastdl.ops.
#include "bench/machine.h"
#include "common.h"

namespace fastdl {

void bind_bench(py::module_& m) {
  m.def(
      "fma_peak_run",
      [](int64_t iters, int threads) {
        if (iters < 1) value_error("fma_peak_run: iters must be >= 1, got " + std::to_string(iters));
        if (threads < 1) value_error("fma_peak_run: threads must be >= 1, got " + std::to_string(threads));
        return without_gil([&] { return FASTDL_KERNEL(fma_peak_run)(iters, threads); });
      },
      py::arg("iters"), py::arg("threads"),
      "Run an FMA loop the compiler cannot delete on `threads` threads; returns the flops done.");
  m.def(
      "stream_triad",
      [](py::handle a, py::handle b, py::handle c, float s, int threads) {
        const char* fn = "stream_triad";
        py::array aa = inout_f32(a, fn, "a"), ba = in_f32(b, fn, "b"), ca = in_f32(c, fn, "c");
        require_nonempty(fn, "a", aa);
        require_shape(fn, "b", ba, shape_of(aa), "a.shape");
        require_shape(fn, "c", ca, shape_of(aa), "a.shape");
        if (threads < 1) value_error("stream_triad: threads must be >= 1, got " + std::to_string(threads));
        float* ap = mf(aa);
        const float *bp = cf(ba), *cp = cf(ca);
        int64_t n = aa.size();
        without_gil([&] { FASTDL_KERNEL(stream_triad)(ap, bp, cp, s, n, threads); });
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("s"), py::arg("threads"), "a = b + s*c (STREAM triad).");
}

}  // namespace fastdl
