"""fastdl.optim: a hand-worked SGD example, updates against NumPy float64 re-implementations of
PyTorch's formulas (and torch.optim itself when installed), schedules against their closed forms,
state and argument validation."""
import math

import numpy as np
import pytest

from fastdl import nn, optim
from fastdl.nn import Parameter


# ---------------------------------------------------------------- the 3-2-1 network by hand


def test_sgd_momentum_weight_decay_two_steps_by_hand():
    # Network: x (3) -> Linear(3, 2) -> ReLU -> Linear(2, 1) -> MSE against y = 1.
    #   x = [1, 2, -1]
    #   W1 = [[0.1, 0.2, 0.3], [-0.1, 0.4, 0.2]], b1 = [0, 0.1]; W2 = [[0.5, -0.3]], b2 = [0.1]
    # SGD(lr=0.1, momentum=0.9, weight_decay=0.01).
    #
    # Step 1, forward:
    #   z1 = W1 x + b1 = [0.1 + 0.4 - 0.3 + 0, -0.1 + 0.8 - 0.2 + 0.1] = [0.2, 0.6];  h = relu(z1) = [0.2, 0.6]
    #   out = 0.5*0.2 - 0.3*0.6 + 0.1 = 0.02;  L = (0.02 - 1)^2 = 0.9604
    # backward:
    #   dout = 2 (out - y) = -1.96
    #   dW2 = dout h = [-0.392, -1.176];  db2 = -1.96
    #   dh = dout W2 = [-0.98, 0.588];  dz1 = dh (z1 > 0) = [-0.98, 0.588]
    #   dW1 = dz1 xᵀ = [[-0.98, -1.96, 0.98], [0.588, 1.176, -0.588]];  db1 = [-0.98, 0.588]
    # update (first step: buf = g = grad + 0.01 param; param -= 0.1 buf):
    #   W2: g = [-0.392 + 0.005, -1.176 - 0.003] = [-0.387, -1.179]  -> W2 = [0.5387, -0.1821]
    #   b2: g = -1.96 + 0.001 = -1.959                               -> b2 = 0.2959
    #   W1: g = [[-0.979, -1.958, 0.983], [0.587, 1.180, -0.586]]   -> W1 = [[0.1979, 0.3958, 0.2017],
    #                                                                        [-0.1587, 0.2820, 0.2586]]
    #   b1: g = [-0.98, 0.589]                                       -> b1 = [0.098, 0.0411]
    #
    # Step 2, forward:
    #   z1 = [0.1979 + 0.7916 - 0.2017 + 0.098, -0.1587 + 0.564 - 0.2586 + 0.0411] = [0.8858, 0.1878] = h
    #   out = 0.5387*0.8858 - 0.1821*0.1878 + 0.2959 = 0.73888208;  L = 0.26111792^2 = 0.06818257
    # backward: dout = -0.52223584
    #   dW2 = dout h = [-0.46259651, -0.09807589];  db2 = -0.52223584
    #   dz1 = dout W2 = [-0.28132845, 0.09509915] (both units active)
    #   dW1 = dz1 xᵀ = [[-0.28132845, -0.56265689, 0.28132845], [0.09509915, 0.19019829, -0.09509915]]
    # update (buf = 0.9 buf + g, g = grad + 0.01 param; param -= 0.1 buf):
    #   W2: g = [-0.46259651 + 0.005387, -0.09807589 - 0.001821] = [-0.45720951, -0.09989689]
    #       buf = 0.9 [-0.387, -1.179] + g = [-0.80550951, -1.16099689]  -> W2 = [0.61925095, -0.06600031]
    #   b2: g = -0.52223584 + 0.002959 = -0.51927684; buf = -1.7631 - 0.51927684 = -2.28237684 -> b2 = 0.52413768
    #   W1: buf = [[-1.16044945, -2.32089889, 1.16804545], [0.62181215, 1.25501829, -0.61991315]]
    #       -> W1 = [[0.31394494, 0.62788989, 0.08489546], [-0.22088121, 0.15649817, 0.32059131]]
    #   b1: buf = [-1.16234845, 0.62561015] -> b1 = [0.21423484, -0.02146101]
    lin1, lin2 = nn.Linear(3, 2), nn.Linear(2, 1)
    lin1.weight.data = [[0.1, 0.2, 0.3], [-0.1, 0.4, 0.2]]
    lin1.bias.data = [0.0, 0.1]
    lin2.weight.data = [[0.5, -0.3]]
    lin2.bias.data = [0.1]
    model = nn.Sequential(lin1, nn.ReLU(), lin2)
    loss_fn = nn.MSELoss()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    x = np.array([[1.0, 2.0, -1.0]], dtype=np.float32)
    y = np.array([[1.0]], dtype=np.float32)

    losses = []
    for _ in range(2):
        out = model(x)
        losses.append(loss_fn(out, y))
        opt.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        if len(losses) == 1:
            np.testing.assert_allclose(out, [[0.02]], atol=1e-6)
            np.testing.assert_allclose(lin1.weight.grad, [[-0.98, -1.96, 0.98], [0.588, 1.176, -0.588]], atol=1e-6)
            np.testing.assert_allclose(lin2.weight.grad, [[-0.392, -1.176]], atol=1e-6)
            np.testing.assert_allclose(lin2.weight.data, [[0.5387, -0.1821]], atol=1e-6)
            np.testing.assert_allclose(lin2.bias.data, [0.2959], atol=1e-6)
            np.testing.assert_allclose(lin1.weight.data, [[0.1979, 0.3958, 0.2017], [-0.1587, 0.2820, 0.2586]],
                                       atol=1e-6)
            np.testing.assert_allclose(lin1.bias.data, [0.098, 0.0411], atol=1e-6)
    np.testing.assert_allclose(losses, [0.9604, 0.06818257], rtol=1e-5)
    np.testing.assert_allclose(lin2.weight.data, [[0.61925095, -0.06600031]], atol=2e-6)
    np.testing.assert_allclose(lin2.bias.data, [0.52413768], atol=2e-6)
    np.testing.assert_allclose(lin1.weight.data, [[0.31394494, 0.62788989, 0.08489546],
                                                  [-0.22088121, 0.15649817, 0.32059131]], atol=2e-6)
    np.testing.assert_allclose(lin1.bias.data, [0.21423484, -0.02146101], atol=2e-6)
    np.testing.assert_allclose(opt.state[lin2.bias]["momentum_buffer"], [-2.28237684], atol=2e-6)


# ---------------------------------------------------------------- NumPy float64 references


def ref_sgd(params, grads_seq, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """PyTorch's SGD (torch/optim/sgd.py, _single_tensor_sgd) in float64."""
    params = [p.astype(np.float64) for p in params]
    bufs = [None] * len(params)
    for grads in grads_seq:
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g.astype(np.float64)
            if weight_decay != 0:
                d = d + weight_decay * p
            if momentum != 0:
                if bufs[i] is None:
                    bufs[i] = d.copy()
                else:
                    bufs[i] = momentum * bufs[i] + (1 - dampening) * d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            params[i] = p - lr * d
    return params, bufs


def ref_adam(params, grads_seq, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    """PyTorch's Adam / AdamW (torch/optim/adam.py, adamw.py) in float64."""
    b1, b2 = betas
    params = [p.astype(np.float64) for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_seq, start=1):
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            p = params[i]
            if decoupled:
                p = p * (1 - lr * weight_decay)
            elif weight_decay != 0:
                g = g + weight_decay * p
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mhat = m[i] / (1 - b1 ** t)
            vhat = v[i] / (1 - b2 ** t)
            params[i] = p - lr * mhat / (np.sqrt(vhat) + eps)
    return params, m, v


def _problem(seed, steps=6):
    rng = np.random.default_rng(seed)
    shapes = [(5, 7), (7,), (3, 5), (1,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(steps)]
    return init, grads


def _run(opt_factory, init, grads_seq):
    params = [Parameter(a) for a in init]
    opt = opt_factory(params)
    for grads in grads_seq:
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad += g  # as a backward pass would accumulate
        opt.step()
    return params, opt


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05),
]


@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_sgd_matches_numpy_reference(kw):
    init, grads = _problem(1)
    params, opt = _run(lambda ps: optim.SGD(ps, **kw), init, grads)
    want, bufs = ref_sgd(init, grads, **kw)
    for p, w in zip(params, want):
        np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-5)
    if kw.get("momentum"):
        for p, b in zip(params, bufs):
            np.testing.assert_allclose(opt.state[p]["momentum_buffer"], b, rtol=1e-5, atol=1e-5)
    else:
        assert not opt.state  # plain SGD keeps no state


ADAM_CASES = [
    dict(lr=1e-2),
    dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=5e-3, weight_decay=0.1),
]


@pytest.mark.parametrize("kw", ADAM_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_adam_matches_numpy_reference(kw):
    init, grads = _problem(2)
    params, opt = _run(lambda ps: optim.Adam(ps, **kw), init, grads)
    want, m, v = ref_adam(init, grads, **kw)
    for p, w, mm, vv in zip(params, want, m, v):
        np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(opt.state[p]["exp_avg"], mm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(opt.state[p]["exp_avg_sq"], vv, rtol=1e-5, atol=1e-7)
        assert opt.state[p]["step"] == len(grads)


@pytest.mark.parametrize("kw", [dict(lr=1e-2), dict(lr=1e-2, weight_decay=0.3, betas=(0.85, 0.95))])
def test_adamw_matches_numpy_reference(kw):
    init, grads = _problem(3)
    params, _ = _run(lambda ps: optim.AdamW(ps, **kw), init, grads)
    want, _, _ = ref_adam(init, grads, weight_decay=kw.get("weight_decay", 1e-2), decoupled=True,
                          **{k: v for k, v in kw.items() if k != "weight_decay"})
    for p, w in zip(params, want):
        np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-5)


def test_adam_and_adamw_differ_with_weight_decay():
    init, grads = _problem(4)
    a, _ = _run(lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=0.5), init, grads)
    b, _ = _run(lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.5), init, grads)
    assert max(np.abs(x.data - y.data).max() for x, y in zip(a, b)) > 1e-4


TORCH_CASES = [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
               ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
               ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.5)),
               ("Adam", dict(lr=1e-2, weight_decay=0.1)),
               ("AdamW", dict(lr=1e-2, weight_decay=0.1))]


@pytest.mark.parametrize("name,kw", TORCH_CASES)
def test_matches_torch_optim(name, kw):
    torch = pytest.importorskip("torch")
    init, grads = _problem(5)
    params, _ = _run(lambda ps: getattr(optim, name)(ps, **kw), init, grads)
    tp = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in init]
    topt = getattr(torch.optim, name)(tp, **kw)
    for gs in grads:
        topt.zero_grad()
        for p, g in zip(tp, gs):
            p.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
    for p, t in zip(params, tp):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_param_groups_have_their_own_settings():
    init, grads = _problem(6, steps=3)
    params = [Parameter(a) for a in init]
    opt = optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.01, "momentum": 0.5}], lr=0.1)
    for gs in grads:
        opt.zero_grad()
        for p, g in zip(params, gs):
            p.grad += g
        opt.step()
    want_a, _ = ref_sgd(init[:2], [g[:2] for g in grads], lr=0.1)
    want_b, _ = ref_sgd(init[2:], [g[2:] for g in grads], lr=0.01, momentum=0.5)
    for p, w in zip(params, want_a + want_b):
        np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-6)
    opt.lr = 0.3
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.3] and opt.lr == 0.3


def test_zero_grad_and_accumulation():
    p = Parameter(np.ones(3))
    opt = optim.SGD([p], lr=1.0)
    p.grad += 1.0
    p.grad += 2.0
    np.testing.assert_array_equal(p.grad, [3, 3, 3])
    opt.step()
    np.testing.assert_array_equal(p.data, [-2, -2, -2])
    opt.zero_grad()
    np.testing.assert_array_equal(p.grad, [0, 0, 0])


def test_step_closure_returns_its_value():
    p = Parameter([1.0])
    opt = optim.SGD([p], lr=0.5)

    def closure():
        p.grad[...] = 2.0
        return 7.0

    assert opt.step(closure) == 7.0
    np.testing.assert_array_equal(p.data, [0.0])


def test_optimizer_state_dict_round_trip():
    init, grads = _problem(7, steps=4)
    params, opt = _run(lambda ps: optim.Adam(ps, lr=1e-2), init, grads[:2])
    sd = opt.state_dict()
    assert set(sd["state"]) == {0, 1, 2, 3} and sd["param_groups"][0]["params"] == [0, 1, 2, 3]
    # a fresh optimizer over copies of the parameters continues exactly like the original
    params2 = [Parameter(p.data) for p in params]
    opt2 = optim.Adam(params2, lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.lr == 1e-2
    for ps, o in ((params, opt), (params2, opt2)):
        for gs in grads[2:]:
            o.zero_grad()
            for p, g in zip(ps, gs):
                p.grad += g
            o.step()
    for a, b in zip(params, params2):
        np.testing.assert_array_equal(a.data, b.data)
    # the snapshot is a copy: later steps did not change it
    assert sd["state"][0]["step"] == 2
    with pytest.raises(ValueError, match="parameters"):
        optim.Adam(params[:2], lr=1e-2).load_state_dict(sd)
    bad = opt.state_dict()
    bad["state"][0]["exp_avg"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="shape"):
        opt2.load_state_dict(bad)


# ---------------------------------------------------------------- validation


def _p():
    return [Parameter(np.zeros(2))]


@pytest.mark.parametrize("kw,exc,match", [
    (dict(lr=-0.1), ValueError, "lr"),
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(lr="0.1"), TypeError, "lr"),
    (dict(lr=0.1, momentum=-0.5), ValueError, "momentum"),
    (dict(lr=0.1, weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(lr=0.1, nesterov=True), ValueError, "nesterov"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "dampening"),
    (dict(lr=0.1, nesterov=1), TypeError, "nesterov"),
])
def test_sgd_rejects_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        optim.SGD(_p(), **kw)


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
@pytest.mark.parametrize("kw,exc,match", [
    (dict(lr=-1e-3), ValueError, "lr"),
    (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (dict(betas=0.9), TypeError, "betas"),
    (dict(eps=-1e-8), ValueError, "eps"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
])
def test_adam_rejects_bad_arguments(cls, kw, exc, match):
    with pytest.raises(exc, match=match):
        cls(_p(), **kw)


def test_optimizer_rejects_bad_params():
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="model.parameters"):
        optim.SGD(nn.Linear(2, 2, rng=0), lr=0.1)
    with pytest.raises(TypeError, match="Parameter"):
        optim.SGD([np.zeros(3, np.float32)], lr=0.1)
    with pytest.raises(TypeError, match="list"):
        optim.SGD(Parameter([1.0]), lr=0.1)
    with pytest.raises(TypeError, match="iterable"):
        optim.SGD(3, lr=0.1)
    p = Parameter([1.0])
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="unknown"):
        optim.SGD([{"params": [p], "foo": 1}], lr=0.1)
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1
    with pytest.raises(TypeError, match="closure"):
        opt.step(closure=3)


# ---------------------------------------------------------------- schedules


def _lrs(sched, n):
    out = [sched.get_last_lr()]
    for _ in range(n):
        sched.step()
        out.append(sched.get_last_lr())
    return out


def _sgd(lr=0.5):
    return optim.SGD([Parameter(np.zeros(2))], lr=lr)


def test_step_lr():
    lrs = _lrs(optim.StepLR(_sgd(0.5), step_size=3, gamma=0.1), 10)
    np.testing.assert_allclose(lrs, [0.5 * 0.1 ** (t // 3) for t in range(11)], rtol=1e-12)
    assert lrs[:4] == [0.5, 0.5, 0.5, pytest.approx(0.05)]


def test_exponential_lr():
    opt = _sgd(0.2)
    lrs = _lrs(optim.ExponentialLR(opt, gamma=0.9), 12)
    np.testing.assert_allclose(lrs, [0.2 * 0.9 ** t for t in range(13)], rtol=1e-12)
    assert opt.lr == lrs[-1]


def test_cosine_annealing_lr():
    T, lo = 10, 0.01
    lrs = _lrs(optim.CosineAnnealingLR(_sgd(0.5), T_max=T, eta_min=lo), 2 * T)
    np.testing.assert_allclose(lrs, [lo + (0.5 - lo) * (1 + math.cos(math.pi * t / T)) / 2 for t in range(2 * T + 1)],
                               rtol=1e-12)
    assert lrs[0] == 0.5 and lrs[T] == pytest.approx(lo) and lrs[T // 2] == pytest.approx((0.5 + lo) / 2)


def test_inverse_time_lr():
    lrs = _lrs(optim.InverseTimeLR(_sgd(0.3), tau=4.0), 20)
    np.testing.assert_allclose(lrs, [0.3 / (1 + t / 4.0) for t in range(21)], rtol=1e-12)
    assert lrs[4] == pytest.approx(0.15)  # halved after tau epochs


def test_schedule_scales_every_group_from_its_own_base():
    p, q = Parameter([0.0]), Parameter([0.0])
    opt = optim.SGD([{"params": [p]}, {"params": [q], "lr": 1.0}], lr=0.1)
    s = optim.StepLR(opt, step_size=1, gamma=0.5)
    s.step()
    s.step()
    assert [g["lr"] for g in opt.param_groups] == [0.025, 0.25]


def test_reduce_lr_on_plateau_sequence():
    # patience 2, factor 0.5, cooldown 1, threshold 0: worked epoch by epoch
    #   10 best | 9 best | 9 bad1 | 9 bad2 | 9 bad3 > 2 -> lr 0.5, cooldown 1 | 8 best (cooldown ends)
    #   8 bad1 | 8 bad2 | 8 bad3 -> lr 0.25, cooldown 1 | 8 bad1 reset by cooldown
    opt = _sgd(1.0)
    s = optim.ReduceLROnPlateau(opt, factor=0.5, patience=2, threshold=0.0, cooldown=1)
    lrs = []
    for m in [10, 9, 9, 9, 9, 8, 8, 8, 8, 8]:
        s.step(m)
        lrs.append(s.get_last_lr())
    assert lrs == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    # a flat metric: the epoch after a reduction is in cooldown and does not count as bad
    #   10 best | bad1 | bad2 | bad3 -> 0.5, cooldown 1 | bad1 reset by cooldown | bad1 | bad2 | bad3 -> 0.25
    s = optim.ReduceLROnPlateau(_sgd(1.0), factor=0.5, patience=2, threshold=0.0, cooldown=1)
    lrs = []
    for _ in range(8):
        s.step(10.0)
        lrs.append(s.get_last_lr())
    assert lrs == [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_reduce_lr_on_plateau_modes_threshold_and_min_lr():
    # mode max: rising metric is improvement
    s = optim.ReduceLROnPlateau(_sgd(1.0), mode="max", factor=0.1, patience=0)
    s.step(1.0)
    s.step(2.0)
    assert s.get_last_lr() == 1.0
    s.step(2.0)
    assert s.get_last_lr() == pytest.approx(0.1)
    # relative threshold: 1% better is needed, 0.5% is a bad epoch
    s = optim.ReduceLROnPlateau(_sgd(1.0), factor=0.5, patience=0, threshold=0.01)
    s.step(100.0)
    s.step(99.5)
    assert s.get_last_lr() == 0.5
    s.step(98.0)  # < 100 * 0.99
    assert s.get_last_lr() == 0.5
    # absolute threshold
    s = optim.ReduceLROnPlateau(_sgd(1.0), factor=0.5, patience=0, threshold=0.5, threshold_mode="abs")
    s.step(10.0)
    s.step(9.6)
    assert s.get_last_lr() == 0.5
    # min_lr floors the decay
    s = optim.ReduceLROnPlateau(_sgd(1.0), factor=0.1, patience=0, min_lr=0.05)
    for m in [1.0, 1.0, 1.0, 1.0]:
        s.step(m)
    assert s.get_last_lr() == 0.05
    # NaN is never an improvement
    s = optim.ReduceLROnPlateau(_sgd(1.0), factor=0.5, patience=0)
    s.step(1.0)
    s.step(float("nan"))
    assert s.get_last_lr() == 0.5


def test_scheduler_state_dict_round_trip():
    s = optim.StepLR(_sgd(1.0), step_size=2, gamma=0.5)
    for _ in range(3):
        s.step()
    opt2 = _sgd(1.0)
    s2 = optim.StepLR(opt2, step_size=2, gamma=0.5)
    s2.load_state_dict(s.state_dict())
    s.step()
    s2.step()
    assert s.get_last_lr() == s2.get_last_lr() == 0.25


@pytest.mark.parametrize("make,exc,match", [
    (lambda o: optim.StepLR(o, step_size=0), ValueError, "step_size"),
    (lambda o: optim.StepLR(o, step_size=2.5), TypeError, "step_size"),
    (lambda o: optim.StepLR(o, step_size=2, gamma=-0.1), ValueError, "gamma"),
    (lambda o: optim.ExponentialLR(o, gamma=0), ValueError, "gamma"),
    (lambda o: optim.CosineAnnealingLR(o, T_max=0), ValueError, "T_max"),
    (lambda o: optim.CosineAnnealingLR(o, T_max=5, eta_min=-1), ValueError, "eta_min"),
    (lambda o: optim.InverseTimeLR(o, tau=0), ValueError, "tau"),
    (lambda o: optim.InverseTimeLR(o, tau="1"), TypeError, "tau"),
    (lambda o: optim.ReduceLROnPlateau(o, mode="up"), ValueError, "mode"),
    (lambda o: optim.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor"),
    (lambda o: optim.ReduceLROnPlateau(o, patience=-1), ValueError, "patience"),
    (lambda o: optim.ReduceLROnPlateau(o, threshold_mode="x"), ValueError, "threshold_mode"),
    (lambda o: optim.ReduceLROnPlateau(o, min_lr=-1), ValueError, "min_lr"),
    (lambda o: optim.StepLR("not an optimizer", step_size=1), TypeError, "optimizer"),
    (lambda o: optim.ReduceLROnPlateau(None), TypeError, "optimizer"),
])
def test_schedules_reject_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make(_sgd())


def test_reduce_lr_on_plateau_rejects_non_numeric_metric():
    s = optim.ReduceLROnPlateau(_sgd())
    with pytest.raises(TypeError, match="metric"):
        s.step("0.5")
    with pytest.raises(TypeError, match="metric"):
        s.step(None)


def test_optimizer_repr():
    r = repr(optim.SGD(_p(), lr=0.1, momentum=0.9))
    assert r.startswith("SGD (") and "momentum: 0.9" in r and "lr: 0.1" in r


def test_adam_refused_step_changes_nothing():
    # one native call per group: a bad array of one parameter leaves every parameter, moment and
    # step count as it was
    a, b = Parameter(np.ones(3, np.float32)), Parameter(np.ones(2, np.float32))
    opt = optim.Adam([a, b], lr=0.1)
    a.grad, b.grad = np.full(3, 0.5, np.float32), np.full(2, 0.5, np.float32)
    opt.step()
    before = a.data.copy(), b.data.copy()
    opt.state[b]["exp_avg"].flags.writeable = False  # b's first moment: refused by the kernel's checks
    with pytest.raises(ValueError, match=r"adam_step_many: m\[1\] is read-only"):
        opt.step()
    opt.state[b]["exp_avg"].flags.writeable = True
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(b.data, before[1])
    assert [opt.state[p]["step"] for p in (a, b)] == [1, 1]
    opt.step()
    assert [opt.state[p]["step"] for p in (a, b)] == [2, 2]


# ---------------------------------------------------------------- hyperparameters must fit in float32

F32_OVERFLOW = [1e39, 1e308, 3.4028235677973366e38]  # the last: the smallest double float32 rounds to inf


@pytest.mark.parametrize("value", F32_OVERFLOW)
@pytest.mark.parametrize("name", ["lr", "momentum", "dampening", "weight_decay"])
def test_sgd_refuses_hyperparameters_that_overflow_float32(name, value):
    kw = {"lr": 0.1, name: value}
    with pytest.raises(ValueError, match=rf"SGD: {name}=.* does not fit in float32 \(max 3.4028235e\+38\)"):
        optim.SGD(_p(), **kw)


def test_sgd_accepts_the_largest_double_that_float32_rounds_to_its_max():
    optim.SGD(_p(), lr=3.4028235677973362e38)  # rounds to 3.4028235e38, not inf: it fits


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
@pytest.mark.parametrize("name", ["lr", "eps", "weight_decay"])
def test_adam_refuses_hyperparameters_that_overflow_float32(cls, name):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: {name}=1e\+39 does not fit in float32"):
        cls(_p(), **{name: 1e39})


def test_lr_setter_and_param_groups_refuse_float32_overflow():
    opt = optim.SGD(_p(), lr=0.1)
    with pytest.raises(ValueError, match=r"SGD: lr=1e\+39 does not fit in float32"):
        opt.lr = 1e39
    assert opt.lr == 0.1
    with pytest.raises(ValueError, match=r"SGD: weight_decay=1e\+308 does not fit in float32"):
        opt.add_param_group({"params": [Parameter(np.zeros(2))], "weight_decay": 1e308})
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 1e39
    with pytest.raises(ValueError, match=r"SGD: lr=1e\+39 does not fit in float32"):
        opt.load_state_dict(sd)


def test_schedules_refuse_a_learning_rate_that_overflows_float32():
    opt = _sgd(lr=1.0)
    sched = optim.ExponentialLR(opt, gamma=1e20)
    sched.step()                                        # 1e20: fits
    with pytest.raises(ValueError, match=r"ExponentialLR: lr \(epoch 2\)=1e\+40 does not fit in float32"):
        sched.step()
    assert opt.lr == 1e20 and sched.last_epoch == 1    # the refused step changed nothing
    with pytest.raises(ValueError, match=r"CosineAnnealingLR: eta_min=1e\+39 does not fit in float32"):
        optim.CosineAnnealingLR(_sgd(), T_max=5, eta_min=1e39)
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau: min_lr=1e\+39 does not fit in float32"):
        optim.ReduceLROnPlateau(_sgd(), min_lr=1e39)


# ---------------------------------------------------------------- non-finite gradients


def _mlp_with_grads(bad=None, where=0):
    """A small MLP whose gradients are set; ``bad`` (nan, inf) is put at flat index ``where`` of the
    gradient of parameter 2."""
    model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.ReLU(), nn.Linear(8, 3, rng=1))
    rng = np.random.default_rng(0)
    for p in model.parameters():
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    if bad is not None:
        model.parameters()[2].grad.flat[where] = bad
    return model


def _snapshot(model, opt):
    return ([p.data.copy() for p in model.parameters()],
            {id(p): {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
             for p, st in opt.state.items()})


def _same(a, b):
    (da, sa), (db, sb) = a, b
    assert all(x.tobytes() == y.tobytes() for x, y in zip(da, db))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].keys() == sb[k].keys()
        for name in sa[k]:
            x, y = sa[k][name], sb[k][name]
            assert (x.tobytes() == y.tobytes()) if isinstance(x, np.ndarray) else x == y


OPTIMIZERS = [
    lambda ps: optim.SGD(ps, lr=0.1),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.5),
    lambda ps: optim.Adam(ps, lr=0.1),
    lambda ps: optim.AdamW(ps, lr=0.1),
]


@pytest.mark.parametrize("make", OPTIMIZERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("second_step", [False, True])
def test_step_refuses_a_non_finite_gradient_and_changes_nothing(make, bad, second_step):
    model = _mlp_with_grads()
    opt = make(model.parameters())
    if second_step:  # with momentum buffers / moments in the state
        opt.step()
    before = _snapshot(model, opt)
    model.parameters()[2].grad.flat[5] = bad
    name = type(opt).__name__
    with pytest.raises(ValueError, match=rf"{name}.step: the gradient of parameter 2 \(shape \(3, 8\)\) contains "
                                         rf"NaN or Inf \(first at flat index 5: -?(nan|inf)\); no parameter was updated"
                                         rf".*check_finite=False"):
        opt.step()
    _same(before, _snapshot(model, opt))


@pytest.mark.parametrize("make", OPTIMIZERS)
def test_a_refused_step_leaves_the_next_one_as_if_it_had_not_happened(make):
    # the refused first step must not leave a momentum buffer or a step count behind
    good = _mlp_with_grads()
    ref = _mlp_with_grads()
    opt, opt_ref = make(good.parameters()), make(ref.parameters())
    saved = [p.grad.copy() for p in good.parameters()]
    good.parameters()[2].grad.flat[0] = np.nan
    with pytest.raises(ValueError, match="parameter 2"):
        opt.step()
    for p, g in zip(good.parameters(), saved):
        p.grad = g
    for _ in range(2):
        opt.step()
        opt_ref.step()
    for a, b in zip(good.parameters(), ref.parameters()):
        assert a.data.tobytes() == b.data.tobytes()


def test_check_finite_false_updates_with_the_non_finite_gradient():
    model = _mlp_with_grads(np.nan, where=3)
    opt = optim.SGD(model.parameters(), lr=0.1, check_finite=False)
    opt.step()
    assert np.isnan(model.parameters()[2].data.flat[3])
    assert np.isfinite(np.delete(model.parameters()[2].data.ravel(), 3)).all()
    # the attribute can be switched later
    opt.check_finite = True
    with pytest.raises(ValueError, match="parameter 2"):
        opt.step()


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
@pytest.mark.parametrize("value", [1, "yes", None])
def test_check_finite_must_be_a_bool(cls, value):
    with pytest.raises(TypeError, match=f"{cls.__name__}: check_finite must be True or False"):
        cls(_p(), lr=0.1, check_finite=value)


@pytest.mark.parametrize("make", OPTIMIZERS)
def test_a_non_finite_gradient_in_a_later_group_leaves_earlier_groups_untouched(make):
    model = _mlp_with_grads()
    ps = model.parameters()
    opt = make([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.01}])
    before = _snapshot(model, opt)
    ps[3].grad[1] = np.inf
    with pytest.raises(ValueError, match=r"parameter 3 \(shape \(3,\)\)"):
        opt.step()
    _same(before, _snapshot(model, opt))


def test_sgd_step_with_some_new_momentum_buffers_is_refused_whole():
    # one buffer exists, the others are new: two native calls, the gradients checked before both
    model = _mlp_with_grads()
    ps = model.parameters()
    opt = optim.SGD(ps, lr=0.1, momentum=0.9)
    opt.state[ps[0]] = {"momentum_buffer": np.ones(ps[0].shape, np.float32)}
    before = _snapshot(model, opt)
    ps[3].grad[0] = np.nan
    with pytest.raises(ValueError, match="parameter 3"):
        opt.step()
    _same(before, _snapshot(model, opt))


def test_a_custom_optimizer_gets_the_check_too():
    class SignSGD(optim.Optimizer):
        def __init__(self, params, lr):
            super().__init__(params, {"lr": lr})

        def _validate(self, g):
            return dict(g)

        def _update(self, p, g):
            p.data -= g["lr"] * np.sign(p.grad)

    model = _mlp_with_grads()
    opt = SignSGD(model.parameters(), lr=0.1)
    before = _snapshot(model, opt)
    model.parameters()[2].grad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"SignSGD.step: the gradient of parameter 2"):
        opt.step()
    _same(before, _snapshot(model, opt))


def test_manual_loop_with_a_nan_stops_at_step():
    # the case: a NaN reaches model.backward in a hand-written loop
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.ReLU(), nn.Linear(4, 2, rng=1))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = model(np.ones((5, 3), np.float32))
    opt.zero_grad()
    model.backward(np.full_like(out, np.nan))
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="SGD.step: the gradient of parameter"):
        opt.step()
    assert all(np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))


def test_argument_checks_follow_the_validation_rule():
    # fastdl._validation's rule: TypeError for a wrong type, ValueError for a wrong value
    with pytest.raises(TypeError, match="ReduceLROnPlateau: mode must be one of 'min', 'max', got int"):
        optim.ReduceLROnPlateau(_sgd(1.0), mode=1)
    with pytest.raises(ValueError, match="ReduceLROnPlateau: threshold_mode must be one of 'rel', 'abs', got 'x'"):
        optim.ReduceLROnPlateau(_sgd(1.0), threshold_mode="x")
    opt = _sgd(1.0)
    with pytest.raises(TypeError, match="SGD.load_state_dict: state_dict must be a dict"):   # was a ValueError
        opt.load_state_dict([("state", {})])
    with pytest.raises(ValueError, match="SGD.load_state_dict: state_dict must be a dict with 'state'"):
        opt.load_state_dict({"state": {}})
    with pytest.raises(TypeError, match="SGD.step: closure must be a callable, got int"):
        opt.step(closure=3)
    with pytest.raises(TypeError, match="SGD: nesterov must be True or False, got str"):
        optim.SGD(opt.param_groups[0]["params"], lr=0.1, momentum=0.9, nesterov="yes")
