// conv.cpp - conv2d_forward / conv2d_backward and their plain-loop references.
//
// Sizes arrive as Python ints already split by fastdl.ops (stride (sh, sw), padding (top, left, bottom,
// right), dilation (dh, dw), groups); every one is checked here again, so that fastdl._C is safe alone.
#include <algorithm>
#include <tuple>

#include "common.h"

namespace fastdl {
namespace {

using Pair = std::pair<int64_t, int64_t>;
using Pad4 = std::tuple<int64_t, int64_t, int64_t, int64_t>;

void require_at_least(const char* fn, const char* arg, int64_t v, int64_t lo) {
  if (v < lo)
    value_error(std::string(fn) + ": " + arg + " must be at least " + std::to_string(lo) + ", got " +
                std::to_string(v));
}

// x (N,C,H,W) and weight (OC,C/groups,KH,KW), both non-empty, with the hyperparameters: the checked sizes.
Conv2dShape conv_shape(const char* fn, const py::array& xa, const py::array& wa, Pair stride, Pad4 padding,
                       Pair dilation, int64_t groups) {
  const std::string f = fn;
  require_ndim(fn, "x", xa, 4, "(batch, channels, height, width)");
  require_nonempty(fn, "x", xa);
  require_ndim(fn, "weight", wa, 4, "(out_channels, in_channels / groups, kernel_h, kernel_w)");
  require_nonempty(fn, "weight", wa);
  Conv2dShape s{};
  s.N = xa.shape(0), s.C = xa.shape(1), s.H = xa.shape(2), s.W = xa.shape(3);
  s.OC = wa.shape(0), s.KH = wa.shape(2), s.KW = wa.shape(3);
  s.SH = stride.first, s.SW = stride.second;
  s.PH = std::get<0>(padding), s.PW = std::get<1>(padding);
  const int64_t PH1 = std::get<2>(padding), PW1 = std::get<3>(padding);
  s.DH = dilation.first, s.DW = dilation.second;
  s.G = groups;
  require_at_least(fn, "stride", s.SH < s.SW ? s.SH : s.SW, 1);
  require_at_least(fn, "dilation", s.DH < s.DW ? s.DH : s.DW, 1);
  require_at_least(fn, "padding", std::min({s.PH, s.PW, PH1, PW1}), 0);
  require_at_least(fn, "groups", s.G, 1);
  // (sizes that cannot overflow the index arithmetic: a kernel or padding beyond 2^30 is nonsense)
  const int64_t big = int64_t(1) << 30;
  if (std::max({s.SH, s.SW, s.DH, s.DW, s.PH, s.PW, PH1, PW1, s.G}) > big)
    value_error(f + ": stride, padding, dilation and groups must be below 2^30");
  if (s.C % s.G)
    value_error(f + ": groups=" + std::to_string(s.G) + " does not divide the input's " + std::to_string(s.C) +
                " channels (x has shape " + shape_str(shape_of(xa)) + ")");
  if (s.OC % s.G)
    value_error(f + ": groups=" + std::to_string(s.G) + " does not divide weight's " + std::to_string(s.OC) +
                " output channels (weight has shape " + shape_str(shape_of(wa)) + ")");
  if (wa.shape(1) != s.C / s.G)
    value_error(f + ": weight has shape " + shape_str(shape_of(wa)) + ", expected (out_channels, in_channels / groups, "
                "kernel_h, kernel_w) with in_channels / groups = " + std::to_string(s.C / s.G) + " (x has " +
                std::to_string(s.C) + " channels, groups=" + std::to_string(s.G) + ")");
  const int64_t eh = s.DH * (s.KH - 1) + 1, ew = s.DW * (s.KW - 1) + 1;  // the kernel's reach
  const int64_t hp = s.H + s.PH + PH1, wp = s.W + s.PW + PW1;
  if (eh > hp || ew > wp)
    value_error(f + ": the kernel (" + std::to_string(eh) + " x " + std::to_string(ew) +
                " with dilation) is larger than the padded input (" + std::to_string(hp) + " x " + std::to_string(wp) +
                "); weight has shape " + shape_str(shape_of(wa)) + ", x " + shape_str(shape_of(xa)));
  s.OH = (hp - eh) / s.SH + 1;
  s.OW = (wp - ew) / s.SW + 1;
  return s;
}

using ForwardKernel = void (*)(float*, const float*, const float*, const float*, int, const Conv2dShape&);
using BackwardKernel = void (*)(float*, float*, float*, const float*, const float*, const float*, int, int,
                                const Conv2dShape&);

py::array forward_call(const char* fn, ForwardKernel kernel, py::handle x, py::handle weight, py::handle bias,
                       Pair stride, Pad4 padding, Pair dilation, int64_t groups, py::handle activation,
                       py::handle out) {
  py::array xa = in_f32(x, fn, "x"), wa = in_f32(weight, fn, "weight");
  const Conv2dShape s = conv_shape(fn, xa, wa, stride, padding, dilation, groups);
  const bool has_bias = !bias.is_none();
  py::array ba;
  if (has_bias) {
    ba = in_f32(bias, fn, "bias");
    require_shape(fn, "bias", ba, Shape{s.OC}, "(out_channels,)");
  }
  const int act = parse_act(activation, fn);
  py::array oa = out_f32(out, fn, "out", Shape{s.N, s.OC, s.OH, s.OW}, "(batch, out_channels, out_h, out_w)");
  require_no_overlap(fn, "out", oa, "x", xa);
  require_no_overlap(fn, "out", oa, "weight", wa);
  if (has_bias) require_no_overlap(fn, "out", oa, "bias", ba);
  const float *xp = cf(xa), *wp = cf(wa), *bp = has_bias ? cf(ba) : nullptr;
  float* op = mf(oa);
  without_gil([&] { kernel(op, xp, wp, bp, act, s); });
  return oa;
}

py::tuple backward_call(const char* fn, BackwardKernel kernel, py::handle dout, py::handle x, py::handle weight,
                        Pair stride, Pad4 padding, Pair dilation, int64_t groups, bool bias, bool need_dx,
                        bool need_dweight, bool accumulate, py::handle dx, py::handle dweight, py::handle dbias,
                        py::handle input_activation) {
  const int input_act = parse_act(input_activation, fn, "input_activation");
  py::array da = in_f32(dout, fn, "dout"), xa = in_f32(x, fn, "x"), wa = in_f32(weight, fn, "weight");
  const Conv2dShape s = conv_shape(fn, xa, wa, stride, padding, dilation, groups);
  require_shape(fn, "dout", da, Shape{s.N, s.OC, s.OH, s.OW}, "(batch, out_channels, out_h, out_w)");
  const std::string f = fn;
  if (!need_dx && !dx.is_none()) value_error(f + ": dx was given but need_dx=False");
  if (!need_dweight && !dweight.is_none()) value_error(f + ": dweight was given but need_dweight=False");
  if (!bias && !dbias.is_none()) value_error(f + ": dbias was given but bias=False");
  if (accumulate && need_dweight && dweight.is_none())
    value_error(f + ": accumulate=True needs dweight, the array to add into");
  if (accumulate && bias && dbias.is_none())
    value_error(f + ": accumulate=True needs dbias, the array to add into (or bias=False)");
  py::array dwa, dba, dxa;
  if (need_dweight)
    dwa = out_f32(dweight, fn, "dweight", shape_of(wa), "weight's shape");
  if (bias) dba = out_f32(dbias, fn, "dbias", Shape{s.OC}, "(out_channels,)");
  if (need_dx) dxa = out_f32(dx, fn, "dx", shape_of(xa), "x's shape");
  // No output may share memory with an input or with another output.
  Named ins{{"dout", &da}, {"x", &xa}, {"weight", &wa}};
  Named outs;
  if (need_dweight) outs.push_back({"dweight", &dwa});
  if (bias) outs.push_back({"dbias", &dba});
  if (need_dx) outs.push_back({"dx", &dxa});
  require_outputs_apart(fn, outs, ins);
  const float *dp = cf(da), *xp = cf(xa), *wp = cf(wa);
  float *dwp = need_dweight ? mf(dwa) : nullptr, *dbp = bias ? mf(dba) : nullptr, *dxp = need_dx ? mf(dxa) : nullptr;
  without_gil([&] { kernel(dxp, dwp, dbp, dp, xp, wp, input_act, accumulate, s); });
  auto opt = [](bool have, py::array& a) { return have ? py::object(a) : py::object(py::none()); };
  return py::make_tuple(opt(need_dx, dxa), opt(need_dweight, dwa), opt(bias, dba));
}

}  // namespace

void bind_conv(py::module_& m) {
  struct Forward {
    const char* name;
    ForwardKernel (*pick)();
  };
  struct Backward {
    const char* name;
    BackwardKernel (*pick)();
  };
  // The fast kernels and the plain loops: same arguments, same checks.
  static const Forward forwards[] = {{"conv2d_forward", FASTDL_PICK(conv2d_forward)},
                                     {"conv2d_forward_reference", FASTDL_PICK(conv2d_forward_reference)}};
  static const Backward backwards[] = {{"conv2d_backward", FASTDL_PICK(conv2d_backward)},
                                       {"conv2d_backward_reference", FASTDL_PICK(conv2d_backward_reference)}};
  for (const Forward& e : forwards)
    m.def(
        e.name,
        [e](py::handle x, py::handle weight, py::handle bias, Pair stride, Pad4 padding, Pair dilation,
            int64_t groups, py::handle activation, py::handle out) {
          return forward_call(e.name, e.pick(), x, weight, bias, stride, padding, dilation, groups, activation,
                              out);
        },
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("groups"), py::arg("activation") = py::none(), py::arg("out") = py::none());
  for (const Backward& e : backwards)
    m.def(
        e.name,
        [e](py::handle dout, py::handle x, py::handle weight, Pair stride, Pad4 padding, Pair dilation,
            int64_t groups, bool bias, bool need_dx, bool need_dweight, bool accumulate, py::handle dx,
            py::handle dweight, py::handle dbias, py::handle input_activation) {
          return backward_call(e.name, e.pick(), dout, x, weight, stride, padding, dilation, groups, bias, need_dx,
                               need_dweight, accumulate, dx, dweight, dbias, input_activation);
        },
        py::arg("dout"), py::arg("x"), py::arg("weight"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("groups"), py::arg("bias") = true, py::arg("need_dx") = true,
        py::arg("need_dweight") = true, py::arg("accumulate") = false, py::arg("dx") = py::none(),
        py::arg("dweight") = py::none(), py::arg("dbias") = py::none(), py::arg("input_activation") = py::none());
}

}  // namespace fastdl
