// batchnorm.cpp - BatchNorm1d (x (batch, num_features)) and BatchNorm2d (x (batch, num_features, height,
// width)): the forward (training or eval) and the training backward; one kernel family over (N, C, S).
#include "common.h"

#include <cmath>

namespace fastdl {
namespace {

// The layout of x for one rank: (N, C, S) and the names its messages use.
struct Layout {
  int ndim;
  const char* names;  // "(batch, num_features)"
};
constexpr Layout k1d{2, "(batch, num_features)"};
constexpr Layout k2d{4, "(batch, num_features, height, width)"};

void nc_s(const py::array& x, int64_t& N, int64_t& C, int64_t& S) {
  N = x.shape(0);
  C = x.shape(1);
  S = x.ndim() == 4 ? x.shape(2) * x.shape(3) : 1;
}

py::tuple forward(const char* fn, const Layout& lay, py::handle x, py::handle gamma, py::handle beta,
                  py::handle running_mean, py::handle running_var, bool training, double momentum, double eps,
                  py::handle out) {
  py::array xa = in_f32(x, fn, "x"), g = in_f32(gamma, fn, "gamma"), b = in_f32(beta, fn, "beta");
  // training updates the running statistics in place; eval only reads them
  py::array rm = take_array(running_mean, fn, "running_mean", DType::F32, training);
  py::array rv = take_array(running_var, fn, "running_var", DType::F32, training);
  require_ndim(fn, "x", xa, lay.ndim, lay.names);
  require_nonempty(fn, "x", xa);
  int64_t N, C, S;
  nc_s(xa, N, C, S);
  for (auto& [name, a] : {std::pair<const char*, const py::array*>{"gamma", &g}, {"beta", &b},
                          {"running_mean", &rm}, {"running_var", &rv}})
    require_shape(fn, name, *a, Shape{C}, "(num_features,)");
  if (training && N * S < 2)
    value_error(std::string(fn) + ": expected more than 1 value per channel when training, got x of shape " +
                shape_str(shape_of(xa)));
  float mom = training ? require_scalar(fn, "momentum", momentum, 0.0, 1.0, false, "in [0, 1]") : 0.0f;
  float ep = require_scalar(fn, "eps", eps, 0.0, HUGE_VAL, true, "finite and >= 0");
  py::array oa = out_f32(out, fn, "out", shape_of(xa), "x.shape");
  require_same_or_disjoint(fn, "out", oa, "x", xa);
  if (training)
    require_all_disjoint(fn, {{"running_mean", &rm}, {"running_var", &rv}, {"x", &xa}, {"gamma", &g}, {"beta", &b}});
  for (auto& [name, a] : {std::pair<const char*, const py::array*>{"gamma", &g}, {"beta", &b},
                          {"running_mean", &rm}, {"running_var", &rv}})
    require_no_overlap(fn, "out", oa, name, *a);
  float* op = mf(oa);
  const float *xp = cf(xa), *gp = cf(g), *bp = cf(b);
  if (!training) {
    const float *rmp = cf(rm), *rvp = cf(rv);
    without_gil([&] { FASTDL_KERNEL(batchnorm_forward_eval)(op, xp, gp, bp, rmp, rvp, ep, N, C, S); });
    return py::make_tuple(oa, py::none(), py::none());
  }
  py::array mean = py::array_t<float>(C), invstd = py::array_t<float>(C);
  py::array scratch = py::array_t<float>(batchnorm_scratch_floats(N, C, S));
  float *mp = mf(mean), *ip = mf(invstd), *sp = mf(scratch), *rmp = mf(rm), *rvp = mf(rv);
  without_gil([&] {
    FASTDL_KERNEL(batchnorm_forward_train)(op, mp, ip, sp, rmp, rvp, xp, gp, bp, mom, ep, N, C, S);
  });
  return py::make_tuple(oa, mean, invstd);
}

py::tuple backward(const char* fn, const Layout& lay, py::handle dout, py::handle x, py::handle gamma,
                   py::handle mean, py::handle invstd, py::handle dx, py::handle dgamma, py::handle dbeta) {
  py::array xa = in_f32(x, fn, "x"), d = in_f32(dout, fn, "dout"), g = in_f32(gamma, fn, "gamma");
  py::array mu = in_f32(mean, fn, "mean"), is = in_f32(invstd, fn, "invstd");
  require_ndim(fn, "x", xa, lay.ndim, lay.names);
  require_nonempty(fn, "x", xa);
  int64_t N, C, S;
  nc_s(xa, N, C, S);
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
  for (auto& [name, a] : {std::pair<const char*, const py::array*>{"gamma", &g}, {"mean", &mu}, {"invstd", &is},
                          {"dgamma", &dga}, {"dbeta", &dba}})
    require_no_overlap(fn, "dx", dxa, name, *a);
  require_all_disjoint(fn, {{"dgamma", &dga}, {"dbeta", &dba}, {"dout", &d}, {"x", &xa}, {"gamma", &g},
                            {"mean", &mu}, {"invstd", &is}});
  py::array scratch = py::array_t<float>(batchnorm_scratch_floats(N, C, S));
  float *dxp = mf(dxa), *dgp = mf(dga), *dbp = mf(dba), *sp = mf(scratch);
  const float *dp = cf(d), *xp = cf(xa), *gp = cf(g), *mp = cf(mu), *ip = cf(is);
  without_gil([&] { FASTDL_KERNEL(batchnorm_backward)(dxp, dgp, dbp, sp, dp, xp, gp, mp, ip, N, C, S); });
  return py::make_tuple(dxa, dga, dba);
}

}  // namespace

void bind_batchnorm(py::module_& m) {
  const char* fwd_doc =
      "Returns (y, mean, invstd) when training, updating running_mean and running_var in place; else "
      "(y, None, None), normalised with the running statistics.";
  const char* bwd_doc = "Returns (dx, dgamma, dbeta) from the training forward's mean and invstd.";
  for (auto [name, lay] : {std::pair<const char*, const Layout*>{"batchnorm_forward", &k1d},
                           {"batchnorm2d_forward", &k2d}}) {
    m.def(
        name,
        [name = name, lay = lay](py::handle x, py::handle gamma, py::handle beta, py::handle running_mean,
                                 py::handle running_var, bool training, double momentum, double eps, py::handle out) {
          return forward(name, *lay, x, gamma, beta, running_mean, running_var, training, momentum, eps, out);
        },
        py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("running_mean"), py::arg("running_var"),
        py::arg("training"), py::arg("momentum") = 0.1, py::arg("eps") = 1e-5, py::arg("out") = py::none(), fwd_doc);
  }
  for (auto [name, lay] : {std::pair<const char*, const Layout*>{"batchnorm_backward", &k1d},
                           {"batchnorm2d_backward", &k2d}}) {
    m.def(
        name,
        [name = name, lay = lay](py::handle dout, py::handle x, py::handle gamma, py::handle mean, py::handle invstd,
                                 py::handle dx, py::handle dgamma, py::handle dbeta) {
          return backward(name, *lay, dout, x, gamma, mean, invstd, dx, dgamma, dbeta);
        },
        py::arg("dout"), py::arg("x"), py::arg("gamma"), py::arg("mean"), py::arg("invstd"),
        py::arg("dx") = py::none(), py::arg("dgamma") = py::none(), py::arg("dbeta") = py::none(), bwd_doc);
  }
}

}  // namespace fastdl
