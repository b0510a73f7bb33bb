"""Optimizer update kernels (sgd_step, adam_step): steps worked by hand with PyTorch's formulas,
float64 NumPy references over several consecutive steps, shape fuzzing, threads, in-place
contract (never a copy), bad inputs."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastdl import _C, ops
from reference import bad_float32_arrays, ref_adam_step, ref_sgd_step

# ---------------------------------------------------------------- float64 references (PyTorch's formulas)


f32 = lambda *a: np.array(a, dtype=np.float32)  # noqa: E731

# ---------------------------------------------------------------- worked by hand


def test_sgd_momentum_weight_decay_by_hand():
    # lr = 0.1, momentum = 0.9, dampening = 0, weight_decay = 0.01, param = [1, -2]
    p, buf = f32(1.0, -2.0), np.zeros(2, np.float32)
    # step 1, grad [0.5, 0.25]: g = grad + 0.01*param = [0.51, 0.23]; buf = g (first step)
    #   param = [1 - 0.1*0.51, -2 - 0.1*0.23] = [0.949, -2.023]
    ops.sgd_step(p, f32(0.5, 0.25), buf, lr=0.1, momentum=0.9, weight_decay=0.01, first_step=True)
    np.testing.assert_allclose(buf, [0.51, 0.23], rtol=1e-6)
    np.testing.assert_allclose(p, [0.949, -2.023], rtol=1e-6)
    # step 2, grad [-0.1, 0.4]: g = [-0.1 + 0.00949, 0.4 - 0.02023] = [-0.09051, 0.37977]
    #   buf = 0.9*[0.51, 0.23] + g = [0.36849, 0.58677]
    #   param = [0.949 - 0.036849, -2.023 - 0.058677] = [0.912151, -2.081677]
    ops.sgd_step(p, f32(-0.1, 0.4), buf, lr=0.1, momentum=0.9, weight_decay=0.01)
    np.testing.assert_allclose(buf, [0.36849, 0.58677], rtol=1e-6)
    np.testing.assert_allclose(p, [0.912151, -2.081677], rtol=1e-6)


def test_sgd_nesterov_and_dampening_by_hand():
    # nesterov, lr 0.1, momentum 0.9, first step, grad [0.51, 0.23] (no decay): buf = g and the
    # step uses g + 0.9*buf = 1.9*g = [0.969, 0.437]: param = [1 - 0.0969, -2 - 0.0437] = [0.9031, -2.0437]
    p, buf = f32(1.0, -2.0), np.zeros(2, np.float32)
    ops.sgd_step(p, f32(0.51, 0.23), buf, lr=0.1, momentum=0.9, nesterov=True, first_step=True)
    np.testing.assert_allclose(p, [0.9031, -2.0437], rtol=1e-6)
    # dampening 0.5, not the first step: buf = 0.9*[1, 1] + 0.5*[0.2, -0.4] = [1.0, 0.7]
    #   param = [0, 0] - 0.1*buf = [-0.1, -0.07]
    p, buf = np.zeros(2, np.float32), f32(1.0, 1.0)
    ops.sgd_step(p, f32(0.2, -0.4), buf, lr=0.1, momentum=0.9, dampening=0.5)
    np.testing.assert_allclose(buf, [1.0, 0.7], rtol=1e-6)
    np.testing.assert_allclose(p, [-0.1, -0.07], rtol=1e-6)
    # plain SGD: param = [1, -2] - 0.5*[0.2, -0.4] = [0.9, -1.8]
    p = f32(1.0, -2.0)
    assert ops.sgd_step(p, f32(0.2, -0.4), lr=0.5) is p
    np.testing.assert_allclose(p, [0.9, -1.8], rtol=1e-6)


def test_adam_by_hand():
    # lr 0.1, betas (0.9, 0.999), eps 1e-8, param [1, -2], the same grad [0.5, -0.25] twice.
    p, m, v = f32(1.0, -2.0), np.zeros(2, np.float32), np.zeros(2, np.float32)
    g = f32(0.5, -0.25)
    # step 1: m = 0.1*g = [0.05, -0.025]; v = 0.001*g² = [0.00025, 0.0000625];
    #   m_hat = m/0.1 = g, v_hat = v/0.001 = g², so the step is lr*g/|g| = [0.1, -0.1]: param [0.9, -1.9]
    ops.adam_step(p, g, m, v, lr=0.1, step=1)
    np.testing.assert_allclose(m, [0.05, -0.025], rtol=1e-6)
    np.testing.assert_allclose(v, [0.00025, 0.0000625], rtol=1e-6)
    np.testing.assert_allclose(p, [0.9, -1.9], rtol=1e-6)
    # step 2: m = 0.9*m + 0.1*g = [0.095, -0.0475]; v = 0.999*v + 0.001*g² = [0.00049975, 0.0001249375];
    #   1 - 0.9² = 0.19 and 1 - 0.999² = 0.001999 give m_hat = g, v_hat = g² again: param [0.8, -1.8]
    ops.adam_step(p, g, m, v, lr=0.1, step=2)
    np.testing.assert_allclose(m, [0.095, -0.0475], rtol=1e-6)
    np.testing.assert_allclose(v, [0.00049975, 0.0001249375], rtol=1e-6)
    np.testing.assert_allclose(p, [0.8, -1.8], rtol=1e-6)


def test_adam_weight_decay_l2_and_decoupled_by_hand():
    g = f32(0.5, -0.25)
    # Adam, weight_decay 0.1: the gradient becomes g + 0.1*param = [0.6, -0.45];
    #   m = 0.1*[0.6, -0.45] = [0.06, -0.045], v = 0.001*[0.36, 0.2025]; step 1 moves lr*sign: [0.9, -1.9]
    p, m, v = f32(1.0, -2.0), np.zeros(2, np.float32), np.zeros(2, np.float32)
    ops.adam_step(p, g, m, v, lr=0.1, step=1, weight_decay=0.1)
    np.testing.assert_allclose(m, [0.06, -0.045], rtol=1e-6)
    np.testing.assert_allclose(v, [0.00036, 0.0002025], rtol=1e-6)
    np.testing.assert_allclose(p, [0.9, -1.9], rtol=1e-6)
    # AdamW, weight_decay 0.1: param *= 1 - 0.1*0.1 = 0.99 -> [0.99, -1.98], m and v from grad alone,
    #   then the step lr*sign(g): [0.89, -1.88]
    p, m, v = f32(1.0, -2.0), np.zeros(2, np.float32), np.zeros(2, np.float32)
    ops.adam_step(p, g, m, v, lr=0.1, step=1, weight_decay=0.1, decoupled=True)
    np.testing.assert_allclose(m, [0.05, -0.025], rtol=1e-6)
    np.testing.assert_allclose(p, [0.89, -1.88], rtol=1e-6)


# ---------------------------------------------------------------- several steps against the reference

SGD_CASES = [
    dict(lr=0.05),
    dict(lr=0.05, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2),
]


@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_steps_match_reference(isa, rng, kw):
    n = 1003
    p = rng.standard_normal(n).astype(np.float32)
    buf = np.zeros(n, np.float32) if kw.get("momentum") else None
    p_ref, buf_ref = p.copy(), None if buf is None else buf.copy()
    for step in range(5):
        g = rng.standard_normal(n).astype(np.float32)
        p_ref, buf_ref = ref_sgd_step(p_ref, g, buf_ref, first_step=step == 0, **kw)
        ops.sgd_step(p, g, buf, first_step=step == 0, **kw)
    np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-6)
    if buf is not None:
        np.testing.assert_allclose(buf, buf_ref, rtol=1e-5, atol=1e-6)


ADAM_CASES = [
    dict(lr=1e-2),
    dict(lr=1e-2, beta1=0.5, beta2=0.9, eps=1e-6),
    dict(lr=1e-2, weight_decay=0.1),
    dict(lr=1e-2, weight_decay=0.1, decoupled=True),
    dict(lr=1e-3, beta1=0.0, beta2=0.0, eps=0.0),  # sign descent: m = g, v = g²
]


@pytest.mark.parametrize("kw", ADAM_CASES)
def test_adam_steps_match_reference(isa, rng, kw):
    n = (37, 29)  # any shape: the update is elementwise
    p = rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    p_ref, m_ref, v_ref = p.copy(), m.copy(), v.copy()
    for step in range(1, 7):
        g = rng.standard_normal(n).astype(np.float32)
        p_ref, m_ref, v_ref = ref_adam_step(p_ref, g, m_ref, v_ref, step=step, **kw)
        ops.adam_step(p, g, m, v, step=step, **kw)
    np.testing.assert_allclose(m, m_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-6)


def test_adam_large_step_count(rng):
    # at step 10^6 both bias corrections are 1 (beta^step underflows to 0)
    p, g = rng.standard_normal(50).astype(np.float32), rng.standard_normal(50).astype(np.float32)
    m, v = (0.1 * g).astype(np.float32), (0.01 * g * g).astype(np.float32)
    want = ref_adam_step(p, g, m, v, lr=1e-3, step=10**6)
    ops.adam_step(p, g, m, v, lr=1e-3, step=10**6)
    for got, w in zip((p, m, v), want):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-8)


@given(n=st.integers(1, 3000), momentum=st.sampled_from([0.0, 0.5, 0.9]), nesterov=st.booleans(),
       wd=st.sampled_from([0.0, 1e-2]), seed=st.integers(0, 2**32 - 1))
def test_sgd_any_length(n, momentum, nesterov, wd, seed):
    rng = np.random.default_rng(seed)
    nesterov = nesterov and momentum > 0
    kw = dict(lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    p = rng.standard_normal(n).astype(np.float32)
    buf = np.zeros(n, np.float32) if momentum else None
    p_ref, buf_ref = p.copy(), None if buf is None else buf.copy()
    for step in range(3):
        g = rng.standard_normal(n).astype(np.float32)
        p_ref, buf_ref = ref_sgd_step(p_ref, g, buf_ref, first_step=step == 0, **kw)
        ops.sgd_step(p, g, buf, first_step=step == 0, **kw)
    np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-6)


@given(n=st.integers(1, 3000), decoupled=st.booleans(), wd=st.sampled_from([0.0, 0.05]),
       seed=st.integers(0, 2**32 - 1))
def test_adam_any_length(n, decoupled, wd, seed):
    rng = np.random.default_rng(seed)
    kw = dict(lr=1e-2, weight_decay=wd, decoupled=decoupled)
    p = rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    p_ref, m_ref, v_ref = p.copy(), m.copy(), v.copy()
    for step in range(1, 4):
        g = rng.standard_normal(n).astype(np.float32)
        p_ref, m_ref, v_ref = ref_adam_step(p_ref, g, m_ref, v_ref, step=step, **kw)
        ops.adam_step(p, g, m, v, step=step, **kw)
    np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- threads, in place


def test_parallel_path_same_bits_at_1_and_2_threads(rng):
    n = 200_003
    p0 = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    prev = _C.get_num_threads()
    res = []
    try:
        for t in (1, 2):
            _C.set_num_threads(t)
            p, buf, m, v = p0.copy(), np.ones(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
            ops.sgd_step(p, g, buf, lr=0.1, momentum=0.9, weight_decay=1e-3)
            ops.adam_step(p, g, m, v, lr=1e-3, step=3, weight_decay=0.01, decoupled=True)
            res.append((p, buf, m, v))
    finally:
        _C.set_num_threads(prev)
    for a, b in zip(*res):
        assert a.tobytes() == b.tobytes()
    p_ref, buf_ref = ref_sgd_step(p0[:100], g[:100], np.ones(100), lr=0.1, momentum=0.9, weight_decay=1e-3)
    np.testing.assert_allclose(res[0][1][:100], buf_ref, rtol=1e-6)


def test_updates_land_in_a_flat_parameter_buffer(rng):
    # Layers view one flat buffer: a contiguous slice is updated in place, its neighbours untouched.
    flat = np.zeros(30, np.float32)
    w = flat[10:20].reshape(2, 5)
    ops.sgd_step(w, np.ones((2, 5), np.float32), lr=0.5)
    assert np.shares_memory(w, flat)
    np.testing.assert_array_equal(flat[10:20], -0.5)
    assert not flat[:10].any() and not flat[20:].any()
    state = np.zeros(20, np.float32)
    m, v = state[:10], state[10:]
    ops.adam_step(flat[:10], np.ones(10, np.float32), m, v, lr=0.1, step=1)
    np.testing.assert_allclose(state[:10], 0.1, rtol=1e-6)
    np.testing.assert_allclose(state[10:], 0.001, rtol=1e-6)
    np.testing.assert_allclose(flat[:10], -0.1, rtol=1e-6)


def test_read_only_grad_is_fine(rng):
    g = np.ones(4, np.float32)
    g.flags.writeable = False
    p = np.zeros(4, np.float32)
    ops.sgd_step(p, g, lr=1.0)
    np.testing.assert_array_equal(p, -1.0)


def test_momentum_buf_ignored_content_on_first_step():
    p, buf = np.zeros(3, np.float32), np.full(3, 1e30, np.float32)
    ops.sgd_step(p, np.ones(3, np.float32), buf, lr=1.0, momentum=0.9, first_step=True)
    np.testing.assert_array_equal(buf, 1.0)
    np.testing.assert_array_equal(p, -1.0)


# ---------------------------------------------------------------- bad inputs


def sgd_args():
    return [np.zeros(5, np.float32), np.ones(5, np.float32), np.zeros(5, np.float32)]


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(lr=-0.1), "lr must be finite and >= 0"),
        (dict(lr=float("nan")), "lr must be finite and >= 0"),
        (dict(lr=0.1, momentum=-0.5), "momentum must be finite and >= 0"),
        (dict(lr=0.1, weight_decay=-1.0), "weight_decay must be finite and >= 0"),
        (dict(lr=0.1, dampening=float("inf"), momentum=0.9), "dampening must be finite"),
        (dict(lr=0.1, nesterov=True), "nesterov momentum requires a momentum > 0 and zero dampening"),
        (dict(lr=0.1, nesterov=True, momentum=0.9, dampening=0.1), "nesterov"),
    ],
)
def test_sgd_bad_hyperparameters(kw, words):
    with pytest.raises(ValueError, match=words) as e:
        ops.sgd_step(*sgd_args(), **kw)
    assert "sgd_step" in str(e.value)


def test_sgd_momentum_buf_required():
    with pytest.raises(ValueError, match="momentum_buf is required when momentum != 0"):
        ops.sgd_step(np.zeros(3, np.float32), np.ones(3, np.float32), lr=0.1, momentum=0.9)


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(lr=-1.0, step=1), "lr must be finite and >= 0"),
        (dict(lr=0.1, step=0), "step must be >= 1"),
        (dict(lr=0.1, step=1, beta1=1.0), r"beta1 must be in \[0, 1\)"),
        (dict(lr=0.1, step=1, beta1=-0.1), r"beta1 must be in \[0, 1\)"),
        (dict(lr=0.1, step=1, beta2=1.0), r"beta2 must be in \[0, 1\)"),
        (dict(lr=0.1, step=1, eps=-1e-8), "eps must be finite and >= 0"),
        (dict(lr=0.1, step=1, weight_decay=-0.1), "weight_decay must be finite and >= 0"),
    ],
)
def test_adam_bad_hyperparameters(kw, words):
    z = lambda: np.zeros(5, np.float32)  # noqa: E731
    with pytest.raises(ValueError, match=words) as e:
        ops.adam_step(z(), z(), z(), z(), **kw)
    assert "adam_step" in str(e.value)


def test_adam_step_must_be_int():
    z = lambda: np.zeros(5, np.float32)  # noqa: E731
    for step in (1.0, True, "1"):
        with pytest.raises(TypeError, match="step must be an int"):
            ops.adam_step(z(), z(), z(), z(), lr=0.1, step=step)


BAD_ARRAYS = [case[1:] for case in bad_float32_arrays(np.zeros(5, np.float32))] + [
    # a short param makes the others mismatch it: the message then names grad
    (np.zeros(4, np.float32), ValueError, r"has shape \([45],\), expected param.shape = \([45],\)"),
]


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("bad, exc, words", BAD_ARRAYS)
def test_sgd_bad_arrays(which, bad, exc, words):
    a = sgd_args()
    a[which] = bad
    name = ["param", "grad", "momentum_buf"][which]
    if which == 0 and exc is ValueError:
        name = "grad"
    if which == 2 and bad is None:  # no buffer is allowed without momentum, and refused with it
        exc, words = ValueError, "momentum_buf is required when momentum != 0"
    with pytest.raises(exc, match=words) as e:
        ops.sgd_step(*a, lr=0.1, momentum=0.9)
    assert f"sgd_step: {name}" in str(e.value)


@pytest.mark.parametrize("which", [0, 1, 2, 3])
@pytest.mark.parametrize("bad, exc, words", BAD_ARRAYS)
def test_adam_bad_arrays(which, bad, exc, words):
    a = [np.zeros(5, np.float32) for _ in range(4)]
    a[which] = bad
    name = ["param", "grad", "m", "v"][which]
    if which == 0 and exc is ValueError:
        name = "grad"
    with pytest.raises(exc, match=words) as e:
        ops.adam_step(*a, lr=0.1, step=1)
    assert f"adam_step: {name}" in str(e.value)


@pytest.mark.parametrize("name", ["param", "momentum_buf"])
def test_sgd_read_only_in_place_arrays(name):
    a = dict(zip(["param", "grad", "momentum_buf"], sgd_args()))
    a[name].flags.writeable = False
    with pytest.raises(ValueError, match=f"sgd_step: {name} is read-only"):
        ops.sgd_step(a["param"], a["grad"], a["momentum_buf"], lr=0.1, momentum=0.9)


@pytest.mark.parametrize("name", ["param", "m", "v"])
def test_adam_read_only_in_place_arrays(name):
    a = {k: np.zeros(5, np.float32) for k in ("param", "grad", "m", "v")}
    a[name].flags.writeable = False
    with pytest.raises(ValueError, match=f"adam_step: {name} is read-only"):
        ops.adam_step(a["param"], a["grad"], a["m"], a["v"], lr=0.1, step=1)


def test_overlapping_arrays_are_refused():
    p = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="param and grad must not share memory"):
        ops.sgd_step(p, p, lr=0.1)
    buf = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="param and momentum_buf must not share memory"):
        ops.sgd_step(buf[:5], np.ones(5, np.float32), buf[3:], lr=0.1, momentum=0.9)
    state = np.zeros(9, np.float32)
    with pytest.raises(ValueError, match="m and v must not share memory"):
        ops.adam_step(p, np.ones(5, np.float32), state[:5], state[4:], lr=0.1, step=1)


def test_empty_is_refused():
    e = np.zeros(0, np.float32)
    with pytest.raises(ValueError, match="sgd_step: param is empty"):
        ops.sgd_step(e, e.copy(), lr=0.1)
    with pytest.raises(ValueError, match="adam_step: param is empty"):
        ops.adam_step(e, e.copy(), e.copy(), e.copy(), lr=0.1, step=1)


# ---------------------------------------------------------------- sgd_step_many (one call for many arrays)


@pytest.mark.parametrize("kw", SGD_CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_sgd_step_many_is_sgd_step_on_each_array(isa, rng, kw, threads):
    # sizes that put array boundaries inside a thread's range and a range inside one array
    sizes = [1, 17, 40_000, 3, 200_003, 256]
    ps = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    one = [p.copy() for p in ps]
    bufs = [np.zeros(n, np.float32) for n in sizes] if kw.get("momentum") else None
    bufs_one = None if bufs is None else [b.copy() for b in bufs]
    prev = _C.get_num_threads()
    try:
        _C.set_num_threads(threads)
        for step in range(3):
            gs = [rng.standard_normal(n).astype(np.float32) for n in sizes]
            assert ops.sgd_step_many(ps, gs, bufs, first_step=step == 0, **kw) is ps
            for i, (p, g) in enumerate(zip(one, gs)):
                ops.sgd_step(p, g, None if bufs_one is None else bufs_one[i], first_step=step == 0, **kw)
    finally:
        _C.set_num_threads(prev)
    for a, b in zip(ps, one):
        assert a.tobytes() == b.tobytes()
    for a, b in zip(bufs or [], bufs_one or []):
        assert a.tobytes() == b.tobytes()


def test_sgd_step_many_errors():
    a, b, g = np.zeros(4, np.float32), np.zeros(3, np.float32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"sgd_step_many: params, grads and momentum_bufs must have the same length"):
        ops.sgd_step_many([a, b], [g], lr=0.1)
    with pytest.raises(ValueError, match=r"sgd_step_many: grads\[1\] has shape \(4,\), expected params\[1\]\.shape"):
        ops.sgd_step_many([a, b], [g, g], lr=0.1)
    with pytest.raises(ValueError, match=r"sgd_step_many: params\[0\] and params\[1\] must not share memory"):
        ops.sgd_step_many([a, a], [g, g.copy()], lr=0.1)
    with pytest.raises(ValueError, match=r"sgd_step_many: momentum_bufs is required when momentum != 0"):
        ops.sgd_step_many([a], [g], lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"sgd_step_many: params\[0\] must have dtype float32"):
        ops.sgd_step_many([np.zeros(4)], [g], lr=0.1)
    with pytest.raises(TypeError, match=r"sgd_step_many: params must be a list or tuple of arrays, got ndarray"):
        ops.sgd_step_many(a, [g], lr=0.1)
    with pytest.raises(ValueError, match=r"sgd_step_many: params is empty"):
        ops.sgd_step_many([], [], lr=0.1)
    with pytest.raises(ValueError, match=r"sgd_step_many: lr must be finite and >= 0"):
        ops.sgd_step_many([a], [g], lr=-1.0)


# ---------------------------------------------------------------- adam_step_many (one call for many arrays)


@pytest.mark.parametrize("kw", ADAM_CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_adam_step_many_is_adam_step_on_each_array(isa, rng, kw, threads):
    # sizes that put array boundaries inside a thread's range and a range inside one array; each
    # array at its own step count (a parameter that joined later)
    sizes = [1, 17, 40_000, 3, 200_003, 256]
    first = [1, 1, 4, 1, 2, 7]
    ps = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    ms = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    vs = [rng.random(n).astype(np.float32) for n in sizes]
    one = [[a.copy() for a in arrays] for arrays in (ps, ms, vs)]
    prev = _C.get_num_threads()
    try:
        _C.set_num_threads(threads)
        for step in range(3):
            gs = [rng.standard_normal(n).astype(np.float32) for n in sizes]
            steps = [s + step for s in first]
            assert ops.adam_step_many(ps, gs, ms, vs, steps=steps, **kw) is ps
            for p, m, v, g, s in zip(*one, gs, steps):
                ops.adam_step(p, g, m, v, step=s, **kw)
    finally:
        _C.set_num_threads(prev)
    for got, want in zip((ps, ms, vs), one):
        for a, b in zip(got, want):
            assert a.tobytes() == b.tobytes()


def test_adam_step_many_against_the_reference(rng):
    sizes = [(37, 29), (29,), (5,)]
    ps = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    ms = [np.zeros(s, np.float32) for s in sizes]
    vs = [np.zeros(s, np.float32) for s in sizes]
    ref = [(p.copy(), m.copy(), v.copy()) for p, m, v in zip(ps, ms, vs)]
    for step in range(1, 5):
        gs = [rng.standard_normal(s).astype(np.float32) for s in sizes]
        ops.adam_step_many(ps, gs, ms, vs, lr=1e-2, steps=(step,) * 3, weight_decay=0.1)
        ref = [ref_adam_step(p, g, m, v, lr=1e-2, step=step, weight_decay=0.1) for (p, m, v), g in zip(ref, gs)]
    for (p_ref, m_ref, v_ref), p, m, v in zip(ref, ps, ms, vs):
        np.testing.assert_allclose(m, m_ref, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-6)


def test_adam_step_many_errors():
    a, b, g = np.zeros(4, np.float32), np.zeros(3, np.float32), np.zeros(4, np.float32)
    z = lambda: [np.zeros(4, np.float32), np.zeros(3, np.float32)]  # noqa: E731
    with pytest.raises(ValueError, match=r"adam_step_many: params, grads, m, v and steps must have the same length"):
        ops.adam_step_many([a, b], [g], z(), z(), lr=0.1, steps=[1, 1])
    with pytest.raises(ValueError, match=r"adam_step_many: params, grads, m, v and steps must have the same length"):
        ops.adam_step_many([a, b], [g, np.zeros(3, np.float32)], z(), z(), lr=0.1, steps=[1])
    with pytest.raises(ValueError, match=r"adam_step_many: grads\[1\] has shape \(4,\), expected params\[1\]\.shape"):
        ops.adam_step_many([a, b], [g, g], z(), z(), lr=0.1, steps=[1, 1])
    with pytest.raises(ValueError, match=r"adam_step_many: params\[0\] and m\[1\] must not share memory"):
        ops.adam_step_many([a, b], [g, g[:3].copy()], [np.zeros(4, np.float32), a[:3]], z(), lr=0.1, steps=[1, 1])
    with pytest.raises(ValueError, match=r"adam_step_many: steps\[1\] must be >= 1"):
        ops.adam_step_many([a, b], [g, g[:3].copy()], z(), z(), lr=0.1, steps=[1, 0])
    with pytest.raises(TypeError, match=r"adam_step_many: steps\[0\] must be an int, got bool"):
        ops.adam_step_many([a], [g], [g.copy()], [g.copy()], lr=0.1, steps=[True])
    with pytest.raises(ValueError, match=r"adam_step_many: steps\[0\] must fit in 64 bits, got 2361183241434822606848"):
        ops.adam_step_many([a], [g], [g.copy()], [g.copy()], lr=0.1, steps=[2**71])

    class BadIndex:
        def __index__(self):
            raise OverflowError("no index here")

    with pytest.raises(OverflowError, match="no index here"):  # the object's own error, not a crash
        ops.adam_step_many([a], [g], [g.copy()], [g.copy()], lr=0.1, steps=[BadIndex()])
    assert ops.adam_step_many([a.copy()], [g], [g.copy()], [g.copy()], lr=0.1, steps=[np.int64(2)]) is not None
    with pytest.raises(TypeError, match=r"adam_step_many: steps must be a list or tuple of ints, got int"):
        ops.adam_step_many([a], [g], [g.copy()], [g.copy()], lr=0.1, steps=1)
    with pytest.raises(TypeError, match=r"adam_step_many: m\[0\] must have dtype float32"):
        ops.adam_step_many([a], [g], [np.zeros(4)], [g.copy()], lr=0.1, steps=[1])
    with pytest.raises(TypeError, match=r"adam_step_many: params must be a list or tuple of arrays, got ndarray"):
        ops.adam_step_many(a, [g], [g.copy()], [g.copy()], lr=0.1, steps=[1])
    with pytest.raises(ValueError, match=r"adam_step_many: params is empty"):
        ops.adam_step_many([], [], [], [], lr=0.1, steps=[])
    with pytest.raises(ValueError, match=r"adam_step_many: beta2 must be in \[0, 1\)"):
        ops.adam_step_many([a], [g], [g.copy()], [g.copy()], lr=0.1, steps=[1], beta2=1.0)
    np.testing.assert_array_equal(a, 0)  # nothing was written by a refused call


def test_step_many_finds_any_overlapping_pair():
    # the overlap check sorts the arrays by address: a pair far apart in the list, or one array
    # inside another with disjoint ones between, is still found and named
    flat = np.zeros(1000, np.float32)
    ps = [flat[:100], np.zeros(5, np.float32), flat[200:300], flat[50:60]]
    gs = [np.zeros(p.shape, np.float32) for p in ps]
    with pytest.raises(ValueError, match=r"sgd_step_many: params\[0\] and params\[3\] must not share memory"):
        ops.sgd_step_many(ps, gs, lr=0.1)
    ms, vs = [np.zeros(p.shape, np.float32) for p in ps], [np.zeros(p.shape, np.float32) for p in ps]
    vs[2] = gs[2]
    with pytest.raises(ValueError, match=r"adam_step_many: grads\[2\] and v\[2\] must not share memory"):
        ops.adam_step_many(ps[:3], gs[:3], ms[:3], vs[:3], lr=0.1, steps=[1, 1, 1])
    ops.adam_step_many(ps[:3], gs[:3], ms[:3], [np.zeros(p.shape, np.float32) for p in ps[:3]], lr=0.1,
                       steps=[1, 1, 1])  # disjoint: accepted


# ---------------------------------------------------------------- float32 hyperparameters, non-finite gradients


@pytest.mark.parametrize("arg, value, shown", [
    ("lr", 1e39, r"1e\+39"), ("momentum", 1e308, r"1e\+308"), ("dampening", -1e39, r"-1e\+39"),
    ("weight_decay", 1e39, r"1e\+39"),
    ("lr", 3.4028235677973366e38, r"3\.4028235677973366e\+38"),  # the smallest double float32 rounds to inf
])
@pytest.mark.parametrize("many", [False, True])
def test_sgd_hyperparameters_must_fit_in_float32(many, arg, value, shown):
    kw = {"lr": 0.1, "momentum": 0.9, arg: value}
    name = "sgd_step_many" if many else "sgd_step"
    with pytest.raises(ValueError, match=rf"{name}: {arg}={shown} does not fit in float32 \(max 3\.4028235e\+38\)"):
        if many:
            ops.sgd_step_many(*[[a] for a in sgd_args()], **kw)
        else:
            ops.sgd_step(*sgd_args(), **kw)


@pytest.mark.parametrize("many", [False, True])
@pytest.mark.parametrize("arg", ["lr", "eps", "weight_decay"])
def test_adam_hyperparameters_must_fit_in_float32(many, arg):
    z = lambda: np.zeros(5, np.float32)  # noqa: E731
    kw = {"lr": 0.1, arg: 1e39}
    with pytest.raises(ValueError, match=rf"adam_step{'_many' if many else ''}: {arg}=1e\+39 does not fit in float32 "
                                         r"\(max 3\.4028235e\+38\)"):
        if many:
            ops.adam_step_many([z()], [z()], [z()], [z()], steps=[1], **kw)
        else:
            ops.adam_step(z(), z(), z(), z(), step=1, **kw)


def test_the_largest_double_that_float32_rounds_to_its_max_is_accepted():
    p = np.zeros(3, np.float32)
    ops.sgd_step(p, np.zeros(3, np.float32), lr=3.4028235677973362e38)
    np.testing.assert_array_equal(p, 0)


def _many_arrays(rng, sizes):
    ps = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    gs = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    state = [[rng.standard_normal(n).astype(np.float32) for n in sizes] for _ in range(2)]
    state[1] = [np.abs(v) for v in state[1]]  # Adam's v >= 0
    return ps, gs, state


# a NaN / Inf at the first element, inside a thread's range, in the last tail element, in a tiny array
NONFINITE_PLACES = [(0, 0), (2, 123_457), (4, 200_002), (3, 1)]


@pytest.mark.parametrize("where", NONFINITE_PLACES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["sgd", "sgd_momentum", "adam"])
def test_many_updates_refuse_a_non_finite_gradient_and_write_nothing(isa, rng, kind, threads, bad, where):
    sizes = [1, 17, 240_000, 3, 200_003, 256]
    ps, gs, state = _many_arrays(rng, sizes)
    gs[where[0]][where[1]] = bad
    before = [a.tobytes() for a in ps + state[0] + state[1]]
    prev = _C.get_num_threads()
    try:
        _C.set_num_threads(threads)
        fn = "adam_step_many" if kind == "adam" else "sgd_step_many"
        with pytest.raises(ValueError, match=rf"{fn}: grads\[{where[0]}\] contains NaN or Inf \(first at flat index "
                                             rf"{where[1]}: -?(nan|inf)\); nothing was updated"):
            if kind == "adam":
                ops.adam_step_many(ps, gs, state[0], state[1], lr=0.1, steps=[3] * len(sizes))
            else:
                ops.sgd_step_many(ps, gs, state[0] if kind == "sgd_momentum" else None, lr=0.1,
                                  momentum=0.9 if kind == "sgd_momentum" else 0.0)
    finally:
        _C.set_num_threads(prev)
    assert [a.tobytes() for a in ps + state[0] + state[1]] == before


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_single_updates_refuse_a_non_finite_gradient_and_write_nothing(rng, bad):
    p, m, v = rng.standard_normal(100_000).astype(np.float32), np.zeros(100_000, np.float32), np.ones(100_000, np.float32)
    g = rng.standard_normal(100_000).astype(np.float32)
    g[77_777] = bad
    before = [a.tobytes() for a in (p, m, v)]
    with pytest.raises(ValueError, match=r"sgd_step: grad contains NaN or Inf \(first at flat index 77777"):
        ops.sgd_step(p, g, m, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"adam_step: grad contains NaN or Inf \(first at flat index 77777"):
        ops.adam_step(p, g, m, v, lr=0.1, step=1)
    assert [a.tobytes() for a in (p, m, v)] == before


def test_check_finite_false_propagates_the_non_finite_gradient(rng):
    ps, gs, state = _many_arrays(rng, [10, 50_000])
    gs[1][7] = np.nan
    ops.sgd_step_many(ps, gs, lr=0.1, check_finite=False)
    assert np.isnan(ps[1][7]) and np.isfinite(np.delete(ps[1], 7)).all() and np.isfinite(ps[0]).all()
    ops.adam_step_many(ps[:1], gs[:1], state[0][:1], state[1][:1], lr=0.1, steps=[1], check_finite=False)
    p = np.zeros(3, np.float32)
    ops.sgd_step(p, f32(1.0, np.inf, 1.0), lr=0.1, check_finite=False)
    assert np.isinf(p[1])


@pytest.mark.parametrize("kw", SGD_CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_the_check_does_not_change_the_update(isa, rng, kw, threads):
    # finite gradients: the checked and the unchecked update give the same bits
    sizes = [1, 17, 240_000, 3, 200_003, 256]
    ps, gs, state = _many_arrays(rng, sizes)
    ps2, bufs2 = [p.copy() for p in ps], [b.copy() for b in state[0]]
    bufs = state[0] if kw.get("momentum") else None
    prev = _C.get_num_threads()
    try:
        _C.set_num_threads(threads)
        ops.sgd_step_many(ps, gs, bufs, **kw)
        ops.sgd_step_many(ps2, gs, bufs2 if bufs is not None else None, check_finite=False, **kw)
    finally:
        _C.set_num_threads(prev)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(ps, ps2))
