// losses.cpp - the losses (value and gradient in one call) and all_finite.
#include "common.h"

#include <cmath>

namespace fastdl {
namespace {

int reduction_arg(py::handle h, const char* fn) {
  if (!py::isinstance<py::str>(h))
    type_error(std::string(fn) + ": reduction must be 'mean' or 'sum', got " + type_name(h));
  const std::string s = h.cast<std::string>();
  if (s == "mean") return RED_MEAN;
  if (s == "sum") return RED_SUM;
  value_error(std::string(fn) + ": reduction must be 'mean' or 'sum', got '" + s + "'");
}

// The gradient output: allocated or checked when grad, else none (and out must then be None).
py::object grad_out(py::handle out, bool grad, const char* fn, const Shape& shape, const char* names) {
  if (!grad) {
    if (!out.is_none()) value_error(std::string(fn) + ": out is given but grad=False (no gradient is written)");
    return py::none();
  }
  return out_f32(out, fn, "out", shape, names);
}

using PairLossKernel = double (*)(float* grad, const float* a, const float* b, int reduction, int64_t n);

// A loss over two same-shaped arrays a (the one differentiated) and b.
struct PairLoss {
  const char* name;
  PairLossKernel (*pick)();
  const char *a, *b;
  bool b_in_unit_interval;  // bce_with_logits: a target outside [0, 1] makes the loss NaN
};
const PairLoss kPairLosses[] = {
    {"mse_loss", FASTDL_PICK(mse_loss_forward_backward), "pred", "target", false},
    {"l1_loss", FASTDL_PICK(l1_loss_forward_backward), "pred", "target", false},
    {"bce_with_logits", FASTDL_PICK(bce_with_logits_forward_backward), "logits", "target", true},
};

// (loss, grad or None).
py::tuple pair_loss_call(const PairLoss& e, py::handle a, py::handle b, py::handle reduction, bool grad,
                         py::handle out) {
  const char *fn = e.name, *a_name = e.a, *b_name = e.b;
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
  PairLossKernel kernel = e.pick();
  double loss = without_gil([&] { return kernel(gp, ap, bp, red, n); });
  if (!std::isfinite(loss)) {  // the kernels make any NaN/Inf input (or bad target) show up here
    require_finite(fn, a_name, aa);
    require_finite(fn, b_name, ba);
    if (e.b_in_unit_interval) {
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

}  // namespace

void bind_losses(py::module_& m) {
  m.def(
      "all_finite",
      [](py::handle x) {
        py::array xa = in_f32(x, "all_finite", "x");
        const float* p = cf(xa);
        const int64_t n = static_cast<int64_t>(xa.size());
        return without_gil([&] { return FASTDL_KERNEL(all_finite)(p, n); });
      },
      py::arg("x"));

  for (const PairLoss& e : kPairLosses)
    m.def(
        e.name,
        [&e](py::handle a, py::handle b, py::handle reduction, bool grad, py::handle out) {
          return pair_loss_call(e, a, b, reduction, grad, out);
        },
        py::arg(e.a), py::arg(e.b), py::arg("reduction") = "mean", py::arg("grad") = true,
        py::arg("out") = py::none());

  m.def(
      "softmax_cross_entropy",
      [](py::handle logits, py::handle labels, py::handle reduction, bool grad, py::handle out) {
        const char* fn = "softmax_cross_entropy";
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
        BadLabel bad;
        double loss = without_gil(
            [&] { return FASTDL_KERNEL(softmax_cross_entropy_forward_backward)(gp, &bad, xp, lp, red, B, NC); });
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

}  // namespace fastdl
