// optim.cpp - the optimizer updates: sgd_step, adam_step and their *_many forms (a whole parameter group in
// one call), in place.
#include "common.h"

#include <algorithm>
#include <cmath>

namespace fastdl {
namespace {

// An array updated in place: exact float32, C-contiguous, writeable, non-empty, shaped like param.
py::array inplace_f32(py::handle h, const char* fn, const char* arg, const py::array* like) {
  py::array a = inout_f32(h, fn, arg);
  if (like) require_shape(fn, arg, a, shape_of(*like), "param.shape");
  return a;
}

// No two of the arrays share memory: their byte ranges, sorted by start, each begin after the
// furthest end before them (n log n: a model's 4 x 6 arrays in ~0.1 us). The error names the pair.
void require_disjoint_list(const char* fn, const std::vector<py::array>& arrays,
                           const std::vector<std::string>& names) {
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

// SGD's hyper-parameters, checked once for sgd_step and sgd_step_many.
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

// Adam's hyper-parameters, checked once for adam_step and adam_step_many.
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
    type_error(std::string(fn) + ": " + arg + " must be an int, got " + type_name(h));
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
    type_error(std::string(fn) + ": " + arg + " must be a list or tuple of " + what + ", got " + type_name(h));
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

}  // namespace

void bind_optim(py::module_& m) {
  m.def(
      "sgd_step",
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
        const bool ran = without_gil([&] {
          return FASTDL_KERNEL(sgd_step)(pp, bp, gp, h.lr, h.momentum, h.dampening, h.weight_decay, nesterov ? 1 : 0,
                                         first_step ? 1 : 0, check_finite ? 1 : 0, n);
        });
        if (!ran) nonfinite_grad_error(fn, {ga}, {"grad"});
      },
      py::arg("param"), py::arg("grad"), py::arg("momentum_buf"), py::arg("lr"), py::arg("momentum"),
      py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"), py::arg("first_step"),
      py::arg("check_finite"),
      "PyTorch's SGD step, in place on param (and momentum_buf when momentum != 0); with check_finite a grad "
      "holding NaN or Inf raises ValueError and nothing is written.");

  m.def(
      "sgd_step_many",
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
        const bool ran = without_gil([&] {
          return FASTDL_KERNEL(sgd_step_many)(pp.data(), with_bufs ? bp.data() : nullptr, gp.data(), n.data(),
                                              static_cast<int64_t>(count), h.lr, h.momentum, h.dampening,
                                              h.weight_decay, nesterov ? 1 : 0, first_step ? 1 : 0,
                                              check_finite ? 1 : 0);
        });
        if (!ran) nonfinite_grad_error(fn, keep, names);
      },
      py::arg("params"), py::arg("grads"), py::arg("momentum_bufs"), py::arg("lr"), py::arg("momentum"),
      py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"), py::arg("first_step"),
      py::arg("check_finite"),
      "sgd_step on several arrays at once, in one parallel region (PyTorch's foreach SGD); with check_finite "
      "no array is written when any grad holds NaN or Inf.");

  m.def(
      "adam_step",
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
        const bool ran = without_gil([&] {
          return FASTDL_KERNEL(adam_step)(pp, mp, vp, gp, h.lr, beta1, beta2, h.eps, h.weight_decay,
                                          decoupled ? 1 : 0, step, check_finite ? 1 : 0, n);
        });
        if (!ran) nonfinite_grad_error(fn, {ga}, {"grad"});
      },
      py::arg("param"), py::arg("grad"), py::arg("m"), py::arg("v"), py::arg("lr"), py::arg("step"),
      py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"),
      py::arg("check_finite"),
      "Adam (decoupled=False) or AdamW (decoupled=True) step, in place on param, m and v; with check_finite a "
      "grad holding NaN or Inf raises ValueError and nothing is written.");

  m.def(
      "adam_step_many",
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
        const bool ran = without_gil([&] {
          return FASTDL_KERNEL(adam_step_many)(pp.data(), mp.data(), vp.data(), gp.data(), n.data(), st.data(),
                                               static_cast<int64_t>(count), h.lr, beta1, beta2, h.eps,
                                               h.weight_decay, decoupled ? 1 : 0, check_finite ? 1 : 0);
        });
        if (!ran) nonfinite_grad_error(fn, keep, names);
      },
      py::arg("params"), py::arg("grads"), py::arg("m"), py::arg("v"), py::arg("lr"), py::arg("steps"),
      py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"),
      py::arg("check_finite"),
      "adam_step on several arrays at once (each with its own step), in one parallel region (PyTorch's "
      "foreach Adam); with check_finite no array is written when any grad holds NaN or Inf.");
}

}  // namespace fastdl
