"""Finite-difference checks of whole small models: float64 central differences of the scalar loss,
computed through the float32 model, against model.backward (every parameter and the input).

Each perturbation is applied to the float32 array, and the difference quotient divides by the
step actually taken (float32(v + eps) - v), so rounding of the step does not bias the estimate.
The loss comes back from the kernels as a double; the remaining noise is float32 rounding in the
forward (~1e-7 |L| per element, a few 1e-6 |L| in all), i.e. ~1e-4 |L| after dividing by
2 eps = 2e-2: hence |analytic - numeric| <= 1e-4 max(1, |L|) + 1e-3 |numeric|. A 1% error in any
gradient fails this.
"""
import numpy as np
import pytest

from fastdl import nn, ops

EPS = 1e-2
RTOL = 1e-3  # relative to the numeric gradient
ATOL = 1e-4  # times max(1, |loss|)


def _reset(model):
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.manual_seed(1234)  # the same masks on every forward


def _loss(model, loss_fn, x, y):
    _reset(model)
    return loss_fn(model(x), y)


def _numeric_grad(f, arr):
    g = np.zeros(arr.shape, dtype=np.float64)
    flat, gflat = arr.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        v = flat[i]
        flat[i] = np.float32(np.float64(v) + EPS)
        hp = np.float64(flat[i]) - np.float64(v)
        lp = f()
        flat[i] = np.float32(np.float64(v) - EPS)
        hm = np.float64(flat[i]) - np.float64(v)
        lm = f()
        flat[i] = v
        gflat[i] = (lp - lm) / (hp - hm)
    return g


def _close(name, analytic, numeric, loss_scale):
    err = np.abs(analytic - numeric)
    tol = ATOL * loss_scale + RTOL * np.abs(numeric)
    worst = np.unravel_index(np.argmax(err - tol), err.shape) if err.size else ()
    assert np.all(err <= tol), (f"{name}: analytic {analytic[worst]:.6g} vs numeric {numeric[worst]:.6g} at "
                                f"{worst} (max abs err {err.max():.3g})")


def gradcheck(model, loss_fn, x, y):
    x = np.ascontiguousarray(x, dtype=np.float32)
    model.zero_grad()
    # float32 rounding in the forward perturbs the loss by ~1e-7 |L|: the absolute tolerance scales with |L|
    loss_scale = max(1.0, abs(_loss(model, loss_fn, x, y)))
    dx = model.backward(loss_fn.backward())
    analytic = {n: p.grad.astype(np.float64) for n, p in model.named_parameters()}
    # backward must be a pure function of the forward: a second pass doubles the grads (accumulation)
    _loss(model, loss_fn, x, y)
    dx2 = model.backward(loss_fn.backward())
    np.testing.assert_array_equal(dx, dx2)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * analytic[n].astype(np.float32), rtol=1e-6, atol=1e-7)
    f = lambda: _loss(model, loss_fn, x, y)  # noqa: E731
    assert analytic, "model has no parameters"
    for n, p in model.named_parameters():
        _close(n, analytic[n], _numeric_grad(f, p.data), loss_scale)
    _close("input", dx.astype(np.float64), _numeric_grad(f, x), loss_scale)


def _kink_free(model, x, margin=5 * EPS):
    """True when no ReLU/LeakyReLU input and no L1 residual lies within the perturbation's reach of
    a kink (where finite differences are meaningless)."""
    _reset(model)
    h = np.asarray(x, dtype=np.float32)
    for layer in model:
        if isinstance(layer, (nn.ReLU, nn.LeakyReLU)) and np.abs(h).min() < margin:
            return False
        h = layer(h)
    return True


def _data(seed, n, c, model_fn, **kw):
    """Inputs and a model whose activations stay away from kinks (searching a few seeds deterministically)."""
    for s in range(seed, seed + 200):
        rng = np.random.default_rng(s)
        model = model_fn(rng)
        x = rng.standard_normal((n, c)).astype(np.float32)
        if _kink_free(model, x, **kw):
            return rng, model, x
    raise AssertionError("no kink-free draw found")


def _targets(kind, rng, out_shape):
    if kind == "ce":
        return rng.integers(0, out_shape[1], size=out_shape[0])
    if kind == "bce":
        return rng.uniform(0, 1, size=out_shape).astype(np.float32)
    return rng.standard_normal(out_shape).astype(np.float32)


LOSSES = {"mse": nn.MSELoss, "l1": nn.L1Loss, "bce": nn.BCEWithLogitsLoss, "ce": nn.CrossEntropyLoss}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_each_loss_through_mlp(loss, reduction):
    def make(rng):
        return nn.Sequential(nn.Linear(4, 6, rng=rng), nn.Tanh(), nn.Linear(6, 3, rng=rng))

    rng, model, x = _data(10, 5, 4, make)
    y = _targets(loss, rng, (5, 3))
    if loss == "l1":  # keep the residuals away from |r|'s kink
        y = model(x) + np.where(rng.random((5, 3)) < 0.5, -1.0, 1.0).astype(np.float32) * rng.uniform(0.2, 1, (5, 3))
        y = y.astype(np.float32)
    gradcheck(model, LOSSES[loss](reduction=reduction), x, y)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linear_relu_linear_fused(reduction):
    def make(rng):
        return nn.Sequential(nn.Linear(3, 7, rng=rng), nn.ReLU(), nn.Linear(7, 2, rng=rng))

    rng, model, x = _data(20, 6, 3, make)
    gradcheck(model, nn.MSELoss(reduction), x, _targets("mse", rng, (6, 2)))


def test_sigmoid_and_tanh_stacks():
    def make(rng):
        return nn.Sequential(nn.Linear(3, 5, rng=rng), nn.Sigmoid(), nn.Linear(5, 4, rng=rng), nn.Tanh(),
                             nn.Linear(4, 2, rng=rng), nn.Sigmoid())

    rng, model, x = _data(30, 4, 3, make)
    gradcheck(model, nn.BCEWithLogitsLoss(), x, _targets("bce", rng, (4, 2)))


def test_leaky_relu_without_bias():
    def make(rng):
        return nn.Sequential(nn.Linear(4, 5, bias=False, rng=rng), nn.LeakyReLU(0.2), nn.Linear(5, 3, rng=rng))

    rng, model, x = _data(40, 5, 4, make)
    gradcheck(model, nn.CrossEntropyLoss(reduction="sum"), x, _targets("ce", rng, (5, 3)))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_batchnorm_training_mode(reduction):
    def make(rng):
        bn = nn.BatchNorm1d(5)
        bn.weight.data = rng.uniform(0.5, 1.5, 5)  # non-trivial gamma / beta
        bn.bias.data = rng.uniform(-0.3, 0.3, 5)
        return nn.Sequential(nn.Linear(4, 5, rng=rng), bn, nn.ReLU(), nn.Linear(5, 3, rng=rng), nn.BatchNorm1d(3))

    rng, model, x = _data(50, 7, 4, make)
    gradcheck(model, nn.CrossEntropyLoss(reduction=reduction), x, _targets("ce", rng, (7, 3)))


def test_batchnorm_eval_mode():
    def make(rng):
        return nn.Sequential(nn.Linear(3, 4, rng=rng), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2, rng=rng))

    rng, model, x = _data(60, 6, 3, make)
    model[1].running_mean = rng.standard_normal(4)
    model[1].running_var = rng.uniform(0.5, 2.0, 4)
    model[1].weight.data = rng.uniform(0.5, 1.5, 4)
    model.eval()
    gradcheck(model, nn.MSELoss(), x, _targets("mse", rng, (6, 2)))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dropout_with_fixed_seed(reduction):
    def make(rng):
        return nn.Sequential(nn.Linear(4, 8, rng=rng), nn.ReLU(), nn.Dropout(0.3, seed=1),
                             nn.Linear(8, 3, rng=rng))

    rng, model, x = _data(70, 5, 4, make)
    _reset(model)
    h = model[:2](x)
    _reset(model)
    dropped = model[:3](x)
    # some activations really are dropped, the rest scaled by 1/(1-p)
    zeroed = (dropped == 0) & (h != 0)
    assert zeroed.any() and (~zeroed & (h != 0)).any()
    np.testing.assert_allclose(dropped[~zeroed], h[~zeroed] / 0.7, rtol=1e-6)
    gradcheck(model, nn.MSELoss(reduction), x, _targets("mse", rng, (5, 3)))


def test_softmax_layer():
    def make(rng):
        return nn.Sequential(nn.Linear(3, 4, rng=rng), nn.Softmax())

    rng, model, x = _data(80, 5, 3, make)
    gradcheck(model, nn.MSELoss(reduction="sum"), x, _targets("mse", rng, (5, 4)))


def test_flatten_and_nested_sequential():
    rng = np.random.default_rng(90)
    inner = nn.Sequential(nn.Linear(6, 5, rng=rng), nn.Tanh())
    model = nn.Sequential(nn.Flatten(), inner, nn.Linear(5, 2, rng=rng))
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    gradcheck(model, nn.MSELoss(), x, _targets("mse", rng, (4, 2)))


@pytest.mark.parametrize("shape", [(9, 13, 11), (64, 784, 256), (1, 3, 1)])
@pytest.mark.parametrize("act", [nn.ReLU, nn.Sigmoid, nn.Tanh])
def test_fused_equals_unfused(act, shape):
    b, c, oc = shape
    rng = np.random.default_rng(100)
    x = rng.standard_normal((b, c)).astype(np.float32)
    dout = rng.standard_normal((b, oc)).astype(np.float32)
    lin_a = nn.Linear(c, oc, rng=1)
    lin_b = nn.Linear(c, oc, rng=1)
    lin_a.bias.data = lin_b.bias.data = rng.standard_normal(oc)
    fused = nn.Sequential(lin_a, act())  # one linear_forward(activation=...) call
    act_b = act()
    y_fused = fused(x)
    dx_fused = fused.backward(dout)
    y_sep = act_b(lin_b(x))  # two separate calls, two kernels
    dx_sep = lin_b.backward(act_b.backward(dout))
    if act is nn.ReLU:  # max(z, 0) of the same z: bit for bit
        tol = dict(rtol=0, atol=0)
    else:  # the fused epilogue evaluates sigmoid/tanh with its own (equally accurate) code: a few ulps
        tol = dict(rtol=1e-5, atol=5e-6)
    np.testing.assert_allclose(y_fused, y_sep, **tol)
    np.testing.assert_allclose(dx_fused, dx_sep, **tol)
    np.testing.assert_allclose(lin_a.weight.grad, lin_b.weight.grad, **tol)
    np.testing.assert_allclose(lin_a.bias.grad, lin_b.bias.grad, **tol)


@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("act", [nn.ReLU, nn.Sigmoid, nn.Tanh])
def test_backward_fused_equals_unfused(act, first, monkeypatch):
    # In backward, Sequential runs an activation followed by a Linear as one linear_backward call
    # (input_activation=...): the same gradients as the two layers' own backward calls. With
    # `first`, the activation is the model's first layer (its input gradient is the model's).
    rng = np.random.default_rng(110)
    x = rng.standard_normal((37, 20)).astype(np.float32)
    dout = rng.standard_normal((37, 6)).astype(np.float32)
    layers = ([] if first else [nn.Linear(20, 20, rng=3)]) + [act(), nn.Linear(20, 6, rng=4)]
    twins = ([] if first else [nn.Linear(20, 20, rng=3)]) + [act(), nn.Linear(20, 6, rng=4)]
    model = nn.Sequential(*layers)
    model(x)
    with monkeypatch.context() as m:  # the activation's own backward must not run
        for name in ("relu_backward", "sigmoid_backward", "tanh_backward"):
            m.setattr(ops, name, None)
        dx = model.backward(dout)
    h = x
    for layer in twins:
        h = layer(h)
    d = dout
    for layer in reversed(twins):
        d = layer.backward(d)
    tol = dict(rtol=2e-6, atol=1e-7)  # the same float operations; only the compiler's FMA use may differ
    np.testing.assert_allclose(dx, d, **tol)
    for a, b in zip(model.parameters(), [p for layer in twins for p in layer.parameters()]):
        np.testing.assert_allclose(a.grad, b.grad, **tol)
    # without the input gradient: the same parameter gradients, and no input gradient
    model.zero_grad()
    model(x)
    assert model.backward(dout, need_input_grad=False) is None
    for a, b in zip(model.parameters(), [p for layer in twins for p in layer.parameters()]):
        np.testing.assert_allclose(a.grad, b.grad, **tol)
