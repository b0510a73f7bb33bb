"""BatchNorm1d: float64 NumPy references (forward train/eval, running statistics, backward),
finite-difference gradients with a non-uniform upstream gradient, shape fuzzing, in-place
running statistics that are never copied, bad inputs."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastdl import _C, ops
from reference import ref_batchnorm_backward, ref_batchnorm_eval, ref_batchnorm_train

# ---------------------------------------------------------------- float64 references (naive loops)


def make(rng, B, C, offset=0.0, scale=1.0):
    x = (offset + scale * rng.standard_normal((B, C))).astype(np.float32)
    gamma = (1 + 0.5 * rng.standard_normal(C)).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    rm = (0.1 * rng.standard_normal(C)).astype(np.float32)
    rv = (1 + 0.5 * rng.random(C)).astype(np.float32)
    return x, gamma, beta, rm, rv


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("B, C", [(2, 1), (5, 3), (32, 100), (7, 129), (3, 1100)])  # 1100: 3 column tiles
def test_forward_train_matches_reference(isa, rng, B, C):
    x, g, b, rm, rv = make(rng, B, C)
    want_y, want_mean, want_invstd, want_rm, want_rv = ref_batchnorm_train(x, g, b, rm, rv, momentum=0.2, eps=1e-3)
    y, mean, invstd = ops.batchnorm_forward(x, g, b, rm, rv, training=True, momentum=0.2, eps=1e-3)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(invstd, want_invstd, rtol=1e-6)
    np.testing.assert_allclose(rm, want_rm, rtol=1e-6, atol=1e-7)  # updated in place
    np.testing.assert_allclose(rv, want_rv, rtol=1e-6)


def test_forward_eval_matches_reference(isa, rng):
    x, g, b, rm, rv = make(rng, 37, 131)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, invstd = ops.batchnorm_forward(x, g, b, rm, rv, training=False, eps=1e-4)
    assert mean is None and invstd is None
    np.testing.assert_allclose(y, ref_batchnorm_eval(x, g, b, rm, rv, eps=1e-4), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rm, rm0)  # eval never touches the running statistics
    np.testing.assert_array_equal(rv, rv0)


def test_eval_batch_of_one(rng):
    x, g, b, rm, rv = make(rng, 1, 10)
    y, _, _ = ops.batchnorm_forward(x, g, b, rm, rv, training=False)
    np.testing.assert_allclose(y, ref_batchnorm_eval(x, g, b, rm, rv), rtol=1e-5, atol=1e-5)


def test_statistics_are_accurate_with_a_large_offset(isa, rng):
    # mean 1e4, std 1: a float32 one-pass E[x²] - E[x]² would lose the variance entirely.
    x, g, b, rm, rv = make(rng, 4096, 24, offset=1e4)
    want_y, want_mean, want_invstd, _, want_rv = ref_batchnorm_train(x, g, b, rm, rv)
    y, mean, invstd = ops.batchnorm_forward(x, g, b, rm, rv, training=True)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-7)
    np.testing.assert_allclose(invstd, want_invstd, rtol=1e-6)
    np.testing.assert_allclose(rv, want_rv, rtol=1e-6)
    # y inherits float32's spacing of x near 1e4 (~1e-3), no more
    np.testing.assert_allclose(y, want_y, atol=2e-3 * np.abs(g).max())


def test_running_stats_over_several_steps(rng):
    x0, g, b, rm, rv = make(rng, 16, 33)
    rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
    rm_id, rv_id = rm.__array_interface__["data"][0], rv.__array_interface__["data"][0]
    for step in range(5):
        x = (x0 * (1 + step) + step).astype(np.float32)
        _, _, _, rm_ref, rv_ref = ref_batchnorm_train(x, g, b, rm_ref, rv_ref, momentum=0.1)
        ops.batchnorm_forward(x, g, b, rm, rv, training=True)
    assert rm.__array_interface__["data"][0] == rm_id and rv.__array_interface__["data"][0] == rv_id
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-5)


def test_running_stats_in_a_view_of_a_flat_buffer(rng):
    # A buffer that is a contiguous slice of a bigger array is updated there, not in a copy.
    x, g, b, _, _ = make(rng, 8, 5)
    flat = np.zeros(20, np.float32)
    flat[5:10] = 1.0
    rm, rv = flat[:5], flat[5:10]
    ops.batchnorm_forward(x, g, b, rm, rv, training=True, momentum=1.0)
    assert np.shares_memory(rm, flat)
    np.testing.assert_allclose(flat[:5], x.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat[5:10], x.astype(np.float64).var(0, ddof=1), rtol=1e-5)
    assert np.all(flat[10:] == 0)


def test_out_in_place_and_out_array(rng):
    x, g, b, rm, rv = make(rng, 9, 17)
    want, _, _, _, _ = ref_batchnorm_train(x, g, b, rm.copy(), rv.copy())
    out = np.empty_like(x)
    y, _, _ = ops.batchnorm_forward(x, g, b, rm.copy(), rv.copy(), training=True, out=out)
    assert y is out
    y, _, _ = ops.batchnorm_forward(x, g, b, rm.copy(), rv.copy(), training=True, out=x)
    assert y is x
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)


def test_parallel_path_same_at_1_and_2_threads(rng):
    x, g, b, rm, rv = make(rng, 256, 1030)  # 263K elements: split across threads by columns
    d = rng.standard_normal(x.shape).astype(np.float32)
    prev = _C.get_num_threads()
    res = []
    try:
        for t in (1, 2):
            _C.set_num_threads(t)
            r1, r2 = rm.copy(), rv.copy()
            y, mean, invstd = ops.batchnorm_forward(x, g, b, r1, r2, training=True)
            dx, dg, db = ops.batchnorm_backward(d, x, g, mean, invstd)
            ye, _, _ = ops.batchnorm_forward(x, g, b, r1, r2, training=False)
            res.append([y, mean, invstd, r1, r2, dx, dg, db, ye])
    finally:
        _C.set_num_threads(prev)
    for a, b_ in zip(*res):  # each column is computed by one thread whatever the split: same bits
        assert a.tobytes() == b_.tobytes()
    want_y, want_mean, _, _, _ = ref_batchnorm_train(x[:, :40], g[:40], b[:40], rm[:40], rv[:40])
    np.testing.assert_allclose(res[0][0][:, :40], want_y, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- backward


@pytest.mark.parametrize("B, C", [(2, 3), (6, 5), (33, 70), (3, 1100)])
def test_backward_matches_reference(isa, rng, B, C):
    x, g, b, rm, rv = make(rng, B, C)
    d = rng.standard_normal((B, C)).astype(np.float32)
    _, mean, invstd = ops.batchnorm_forward(x, g, b, rm, rv, training=True, eps=1e-5)
    dx, dg, db = ops.batchnorm_backward(d, x, g, mean, invstd)
    want_dx, want_dg, want_db = ref_batchnorm_backward(d, x, g)
    np.testing.assert_allclose(db, want_db, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dg, want_dg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-5)


def test_backward_into_out_arrays(rng):
    x, g, b, rm, rv = make(rng, 10, 6)
    d = rng.standard_normal((10, 6)).astype(np.float32)
    _, mean, invstd = ops.batchnorm_forward(x, g, b, rm, rv, training=True)
    want = ops.batchnorm_backward(d, x, g, mean, invstd)
    dx, dg, db = np.empty_like(x), np.empty(6, np.float32), np.empty(6, np.float32)
    got = ops.batchnorm_backward(d, x, g, mean, invstd, dx=dx, dgamma=dg, dbeta=db)
    assert got[0] is dx and got[1] is dg and got[2] is db
    got = ops.batchnorm_backward(d, x, g, mean, invstd, dx=d)  # in place over dout
    assert got[0] is d
    for a, w in zip(got, want):
        np.testing.assert_array_equal(a, w)


def test_backward_finite_differences(rng):
    # L = sum(w * y) with a non-uniform w: a uniform upstream gradient makes dx vanish and hides bugs.
    B, C = 6, 4
    x, g, b, rm, rv = make(rng, B, C)
    w = rng.standard_normal((B, C))

    def loss(xx, gg, bb):
        y, _, _ = ops.batchnorm_forward(xx, gg, bb, rm.copy(), rv.copy(), training=True)
        return float((w * y.astype(np.float64)).sum())

    _, mean, invstd = ops.batchnorm_forward(x, g, b, rm.copy(), rv.copy(), training=True)
    dx, dg, db = ops.batchnorm_backward(w.astype(np.float32), x, g, mean, invstd)

    def numeric(arr, which):
        grad = np.empty(arr.shape)
        for idx in np.ndindex(arr.shape):
            hi, lo = arr.copy(), arr.copy()
            h = np.float32(1e-2 * max(1.0, abs(float(arr[idx]))))
            hi[idx] += h
            lo[idx] -= h
            args_hi = [x, g, b]
            args_lo = [x, g, b]
            args_hi[which], args_lo[which] = hi, lo
            grad[idx] = (loss(*args_hi) - loss(*args_lo)) / (float(hi[idx]) - float(lo[idx]))
        return grad

    np.testing.assert_allclose(dx, numeric(x, 0), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(dg, numeric(g, 1), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(db, numeric(b, 2), rtol=2e-3, atol=2e-3)


@given(B=st.integers(2, 40), C=st.integers(1, 150), seed=st.integers(0, 2**32 - 1))
def test_train_forward_and_backward_any_shape(B, C, seed):
    rng = np.random.default_rng(seed)
    x, g, b, rm, rv = make(rng, B, C, offset=float(rng.uniform(-3, 3)))
    d = rng.standard_normal((B, C)).astype(np.float32)
    want_y, want_mean, want_invstd, want_rm, want_rv = ref_batchnorm_train(x, g, b, rm, rv)
    y, mean, invstd = ops.batchnorm_forward(x, g, b, rm, rv, training=True)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(invstd, want_invstd, rtol=1e-5)
    np.testing.assert_allclose(rv, want_rv, rtol=1e-5)
    dx, dg, db = ops.batchnorm_backward(d, x, g, mean, invstd)
    # vectorised float64 reference of the closed form (the loop reference is too slow for fuzzing)
    x64, d64 = x.astype(np.float64), d.astype(np.float64)
    xhat = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    want_db, want_dg = d64.sum(0), (d64 * xhat).sum(0)
    want_dx = g / np.sqrt(x64.var(0) + 1e-5) / B * (B * d64 - want_db - xhat * want_dg)
    np.testing.assert_allclose(db, want_db, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dg, want_dg, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-3, atol=1e-4)


@given(B=st.integers(1, 40), C=st.integers(1, 150))
def test_eval_any_shape(B, C):
    rng = np.random.default_rng(B * 1000 + C)
    x, g, b, rm, rv = make(rng, B, C)
    y, _, _ = ops.batchnorm_forward(x, g, b, rm, rv, training=False)
    np.testing.assert_allclose(y, ref_batchnorm_eval(x, g, b, rm, rv), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad inputs


def args(rng, B=4, C=3):
    x, g, b, rm, rv = make(rng, B, C)
    return dict(x=x, gamma=g, beta=b, running_mean=rm, running_var=rv)


def test_batch_of_one_in_training(rng):
    a = args(rng, B=1)
    with pytest.raises(ValueError, match="more than 1 value per channel when training"):
        ops.batchnorm_forward(**a, training=True)


@pytest.mark.parametrize("name", ["running_mean", "running_var"])
@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (lambda a: a.astype(np.float64), TypeError, "float32"),
        (lambda a: np.repeat(a, 2)[::2], TypeError, "C-contiguous"),
        (lambda a: a[:-1].copy(), ValueError, r"has shape \(2,\), expected \(num_features,\) = \(3,\)"),
        (lambda a: list(a), TypeError, "ndarray"),
    ],
)
def test_bad_running_stats(rng, name, bad, exc, words):
    a = args(rng)
    a[name] = bad(a[name])
    with pytest.raises(exc, match=words) as e:
        ops.batchnorm_forward(**a, training=True)
    assert f"batchnorm_forward: {name}" in str(e.value)


@pytest.mark.parametrize("name", ["running_mean", "running_var"])
def test_read_only_running_stats(rng, name):
    a = args(rng)
    a[name].flags.writeable = False
    with pytest.raises(ValueError, match=f"{name} is read-only"):
        ops.batchnorm_forward(**a, training=True)
    ops.batchnorm_forward(**a, training=False)  # eval only reads them


def test_overlapping_running_stats(rng):
    a = args(rng)
    buf = np.ones(4, np.float32)
    a["running_mean"], a["running_var"] = buf[:3], buf[1:]
    with pytest.raises(ValueError, match="running_mean and running_var must not share memory"):
        ops.batchnorm_forward(**a, training=True)
    a = args(rng)
    a["running_mean"] = a["gamma"]
    with pytest.raises(ValueError, match="must not share memory"):
        ops.batchnorm_forward(**a, training=True)


@pytest.mark.parametrize(
    "name, value, exc, words",
    [
        ("x", np.zeros((4, 3), np.float64), TypeError, "x must have dtype float32"),
        ("x", np.zeros((4, 3), np.float32, order="F"), TypeError, "x must be C-contiguous"),
        ("x", np.zeros((4, 6), np.float32)[:, ::2], TypeError, "x must be C-contiguous"),
        ("x", np.zeros(12, np.float32), ValueError, "x must be 2-D"),
        ("x", np.zeros((0, 3), np.float32), ValueError, "x is empty"),
        ("x", np.zeros((4, 4), np.float32), ValueError, r"gamma has shape \(3,\), expected"),
        ("gamma", np.zeros(4, np.float32), ValueError, r"gamma has shape \(4,\), expected \(num_features,\)"),
        ("beta", np.zeros((1, 3), np.float32), ValueError, "beta has shape"),
        ("gamma", np.zeros(3, np.int64), TypeError, "gamma must have dtype float32"),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_bad_forward_arrays(rng, name, value, exc, words, training):
    a = args(rng)
    a[name] = value
    with pytest.raises(exc, match=words):
        ops.batchnorm_forward(**a, training=training)


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(momentum=-0.1), "momentum must be in"),
        (dict(momentum=1.5), "momentum must be in"),
        (dict(momentum=float("nan")), "momentum must be in"),
        (dict(eps=-1e-5), "eps must be finite and >= 0"),
        (dict(eps=float("inf")), "eps must be finite and >= 0"),
        (dict(eps=1e39), r"eps=1e\+39 does not fit in float32"),
    ],
)
def test_bad_scalars(rng, kw, words):
    with pytest.raises(ValueError, match=words):
        ops.batchnorm_forward(**args(rng), training=True, **kw)


def test_training_must_be_bool(rng):
    with pytest.raises(TypeError, match="training must be a bool"):
        ops.batchnorm_forward(**args(rng), training="yes")


def test_bad_out(rng):
    a = args(rng)
    ro = np.zeros((4, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        ops.batchnorm_forward(**a, training=True, out=ro)
    with pytest.raises(ValueError, match="out has shape"):
        ops.batchnorm_forward(**a, training=False, out=np.zeros((3, 4), np.float32))
    buf = np.zeros(13, np.float32)
    a["x"] = buf[:12].reshape(4, 3)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        ops.batchnorm_forward(**a, training=True, out=buf[1:].reshape(4, 3))


def test_bad_backward_inputs(rng):
    x, g, b, rm, rv = make(rng, 5, 3)
    d = rng.standard_normal((5, 3)).astype(np.float32)
    _, mean, invstd = ops.batchnorm_forward(x, g, b, rm, rv, training=True)
    with pytest.raises(ValueError, match=r"batchnorm_backward: dout has shape \(5, 2\), expected x.shape"):
        ops.batchnorm_backward(d[:, :2].copy(), x, g, mean, invstd)
    with pytest.raises(ValueError, match=r"batchnorm_backward: mean has shape \(2,\)"):
        ops.batchnorm_backward(d, x, g, mean[:2].copy(), invstd)
    with pytest.raises(ValueError, match=r"batchnorm_backward: invstd has shape"):
        ops.batchnorm_backward(d, x, g, mean, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="batchnorm_backward: dout must have dtype float32"):
        ops.batchnorm_backward(d.astype(np.float64), x, g, mean, invstd)
    with pytest.raises(TypeError, match="batchnorm_backward: x must be C-contiguous"):
        ops.batchnorm_backward(d, np.asfortranarray(x), g, mean, invstd)
    with pytest.raises(ValueError, match="batchnorm_backward: x is empty"):
        ops.batchnorm_backward(d[:0], x[:0], g, mean, invstd)
    ro = np.zeros(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dgamma is read-only"):
        ops.batchnorm_backward(d, x, g, mean, invstd, dgamma=ro)
    with pytest.raises(ValueError, match="dgamma and dbeta must not share memory"):
        buf = np.zeros(3, np.float32)
        ops.batchnorm_backward(d, x, g, mean, invstd, dgamma=buf, dbeta=buf)
    with pytest.raises(ValueError, match="dgamma and gamma must not share memory"):
        ops.batchnorm_backward(d, x, g, mean, invstd, dgamma=g)


@pytest.mark.parametrize("training", [True, False])
def test_out_overlapping_a_parameter(rng, training):
    a = args(rng, B=4, C=3)
    out = np.zeros((4, 3), np.float32)
    a["gamma"] = out[0]  # a row of out: written while still being read
    with pytest.raises(ValueError, match="out must not share memory with gamma"):
        ops.batchnorm_forward(**a, training=training, out=out)
