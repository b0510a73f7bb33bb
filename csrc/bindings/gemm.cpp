// gemm.cpp - matmul, matmul_reference and the dense layer (linear_forward, linear_backward).
#include "common.h"

namespace fastdl {
namespace {

using MatmulKernel = void (*)(float*, const float*, const float*, const float*, int, int64_t, int64_t, int64_t, int,
                              int, int, int);

// matmul and matmul_reference: c (M,N) [+]= op(a)·op(b) [+ bias], then activation.
py::array matmul_call(const char* fn, MatmulKernel kernel, py::handle a, py::handle b, bool trans_a, bool trans_b,
                      py::handle out, bool accumulate, py::handle bias, py::handle activation,
                      py::handle batch_invariant) {
  const bool invariant = strict_bool(batch_invariant, fn, "batch_invariant");
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
  without_gil([&] { kernel(op, ap, bp, biasp, act, M, N, K, trans_a, trans_b, accumulate, invariant); });
  return oa;
}

}  // namespace

// x (B, C) and weight (OC, C) of a dense layer, both non-empty: their sizes.
static void layer_sizes(const char* fn, const py::array& xa, const py::array& wa, int64_t& B, int64_t& C, int64_t& OC) {
  require_ndim(fn, "x", xa, 2, "(batch, in_features)");
  require_nonempty(fn, "x", xa);
  B = xa.shape(0);
  C = xa.shape(1);
  require_ndim(fn, "weight", wa, 2, "(out_features, in_features)");
  OC = wa.shape(0);
  require_shape(fn, "weight", wa, Shape{OC, C}, "(out_features, in_features)");
  require_nonempty(fn, "weight", wa);
}

void bind_gemm(py::module_& m) {
  struct Matmul {
    const char* name;
    MatmulKernel (*pick)();
  };
  // Same arguments, same checks; matmul_reference runs the plain triple loop.
  static const Matmul matmuls[] = {{"matmul", FASTDL_PICK(matmul)},
                                   {"matmul_reference", FASTDL_PICK(matmul_reference)}};
  for (const Matmul& e : matmuls)
    m.def(
        e.name,
        [e](py::handle a, py::handle b, bool trans_a, bool trans_b, py::handle out, bool accumulate, py::handle bias,
            py::handle activation, py::handle batch_invariant) {
          return matmul_call(e.name, e.pick(), a, b, trans_a, trans_b, out, accumulate, bias, activation,
                             batch_invariant);
        },
        py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
        py::arg("out") = py::none(), py::arg("accumulate") = false, py::arg("bias") = py::none(),
        py::arg("activation") = py::none(), py::arg("batch_invariant") = true);

  m.def(
      "linear_forward",
      [](py::handle x, py::handle weight, py::handle bias, py::handle activation, py::handle out,
         py::handle batch_invariant) {
        const char* fn = "linear_forward";
        const bool invariant = strict_bool(batch_invariant, fn, "batch_invariant");
        py::array xa = in_f32(x, fn, "x"), wa = in_f32(weight, fn, "weight");
        int64_t B, C, OC;
        layer_sizes(fn, xa, wa, B, C, OC);
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
        without_gil([&] { FASTDL_KERNEL(linear_forward)(op, xp, wp, bp, act, B, C, OC, invariant); });
        return oa;
      },
      py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("activation") = py::none(),
      py::arg("out") = py::none(), py::arg("batch_invariant") = true);

  m.def(
      "linear_backward",
      [](py::handle dout, py::handle x, py::handle weight, bool bias, bool need_dx, bool accumulate, py::handle dx,
         py::handle dweight, py::handle dbias, py::handle input_activation) {
        const char* fn = "linear_backward";
        const int input_act = parse_act(input_activation, fn, "input_activation");
        py::array da = in_f32(dout, fn, "dout"), xa = in_f32(x, fn, "x"), wa = in_f32(weight, fn, "weight");
        int64_t B, C, OC;
        layer_sizes(fn, xa, wa, B, C, OC);
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
        Named ins{{"dout", &da}, {"x", &xa}, {"weight", &wa}};
        Named outs{{"dweight", &dwa}};
        if (bias) outs.push_back({"dbias", &dba});
        if (need_dx) outs.push_back({"dx", &dxa});
        require_outputs_apart(fn, outs, ins);
        const float *dp = cf(da), *xp = cf(xa), *wp = cf(wa);
        float *dwp = mf(dwa), *dbp = bias ? mf(dba) : nullptr, *dxp = need_dx ? mf(dxa) : nullptr;
        without_gil([&] {
          FASTDL_KERNEL(linear_backward)(dxp, dwp, dbp, dp, xp, wp, B, C, OC, accumulate, input_act);
        });
        return py::make_tuple(need_dx ? py::object(dxa) : py::object(py::none()), dwa,
                              bias ? py::object(dba) : py::object(py::none()));
      },
      py::arg("dout"), py::arg("x"), py::arg("weight"), py::arg("bias") = true, py::arg("need_dx") = true,
      py::arg("accumulate") = false, py::arg("dx") = py::none(), py::arg("dweight") = py::none(),
      py::arg("dbias") = py::none(), py::arg("input_activation") = py::none());
}

}  // namespace fastdl
