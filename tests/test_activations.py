"""Activations: float64 NumPy references, finite differences, shape fuzzing, bad inputs."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastdl import ops
from reference import (F32_MAX, assert_close_flushed, bad_float32_arrays, f64, numeric_grad_elementwise, ref_leaky,
                       ref_sigmoid, ref_softmax, ref_step, ref_tanh)

# ---------------------------------------------------------------- relu


def test_relu_matches_reference(isa, rng):
    x = rng.standard_normal((37, 129)).astype(np.float32)
    np.testing.assert_array_equal(ops.relu(x), np.maximum(x.astype(np.float64), 0).astype(np.float32))


def test_relu_backward_matches_reference(isa, rng):
    x = rng.standard_normal(100_003).astype(np.float32)  # large: runs the parallel path
    d = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(ops.relu_backward(d, x), np.where(x > 0, d, 0).astype(np.float32))


@given(n=st.integers(1, 5000))
def test_relu_any_length(n):
    x = np.linspace(-1, 1, n, dtype=np.float32)
    np.testing.assert_array_equal(ops.relu(x), np.maximum(x, 0))


def test_relu_out_in_place(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    want = np.maximum(x, 0)
    y = ops.relu(x, out=x)
    assert y is x and np.shares_memory(y, x)
    np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize(
    "x, exc, words",
    [case[1:] for case in bad_float32_arrays(np.zeros((4, 4), np.float32))]
    + [(np.zeros(0, np.float32), ValueError, "empty")],
)
def test_relu_bad_input(x, exc, words):
    with pytest.raises(exc, match=words) as e:
        ops.relu(x)
    assert "x" in str(e.value)


def test_relu_readonly_out():
    out = np.zeros(4, np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        ops.relu(np.ones(4, np.float32), out=out)


# ================================================================ shared helpers
import threading  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

from fastdl import _C  # noqa: E402

EXTREMES = np.array(
    [0.0, -0.0, 1e-30, -1e-30, 1e-4, -1e-4, 0.29, -0.31, 1.0, -1.0, 80, -80, 87.5, -87.5, 88.7, -88.7,
     89, -89, 100, -100, 1e4, -1e4, 1e30, -1e30, F32_MAX, -F32_MAX],
    dtype=np.float32,
)
fuzz = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


# ================================================================ NaN through relu and step
# relu is np.maximum(x, 0) and step np.heaviside(x, 1): NaN in, NaN out (both gave 0 before). relu's
# backward is dout * heaviside(x, 0): a NaN in dout or in x gives NaN wherever it is. 7 floats: the
# masked tail only; 100_003: full vectors, on two threads.
def nan_sprinkled(rng, n):
    x = rng.standard_normal(n).astype(np.float32)
    x[::5] = np.nan
    x[1::10] = 0.0
    x[2::10] = -0.0
    return x


@pytest.mark.parametrize("n", [7, 100_003])
def test_relu_and_step_propagate_nan(isa, rng, n):
    x = nan_sprinkled(rng, n)
    for got, want in [(ops.relu(x), np.maximum(f64(x), 0)), (ops.step(x), ref_step(x))]:
        assert np.isnan(got[::5]).all()
        np.testing.assert_array_equal(got, want.astype(np.float32))  # NaN where want is NaN, equal elsewhere


@pytest.mark.parametrize("n", [7, 100_003])
def test_relu_backward_propagates_nan(isa, rng, n):
    x = nan_sprinkled(rng, n)
    d = rng.standard_normal(n).astype(np.float32)
    d[3::7] = np.nan  # at active and inactive x alike
    want = f64(d) * np.heaviside(f64(x), 0.0)
    got = ops.relu_backward(d, x)
    assert np.isnan(got[::5]).all() and np.isnan(got[3::7]).all()
    np.testing.assert_array_equal(got, want.astype(np.float32))


# ================================================================ relu: backward in place
def test_relu_backward_in_place_over_dout(rng):
    x = rng.standard_normal(333).astype(np.float32)
    d = rng.standard_normal(333).astype(np.float32)
    want = np.where(x > 0, d, 0).astype(np.float32)
    assert ops.relu_backward(d, x, out=d) is d
    np.testing.assert_array_equal(d, want)


# ================================================================ leaky_relu
@pytest.mark.parametrize("slope", [0.01, 0.2, 0.0, -0.5, 1.5])
def test_leaky_relu_matches_reference(isa, rng, slope):
    x = (rng.standard_normal(1037) * 3).astype(np.float32)
    np.testing.assert_allclose(ops.leaky_relu(x, slope), ref_leaky(x, slope), rtol=1e-7, atol=0)
    d = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(ops.leaky_relu_backward(d, x, slope), np.where(x > 0, f64(d), slope * f64(d)),
                               rtol=1e-7, atol=0)


def test_leaky_relu_default_slope_and_zero(isa):
    x = np.array([-2.0, -0.0, 0.0, 3.0], np.float32)
    np.testing.assert_array_equal(ops.leaky_relu(x), np.float32([-0.02, 0, 0, 3]))
    # at x == 0 the gradient is the slope (x > 0 is false), as in PyTorch
    np.testing.assert_array_equal(ops.leaky_relu_backward(np.ones(4, np.float32), x), np.float32([0.01, 0.01, 0.01, 1]))


def test_leaky_relu_finite_differences(isa, rng):
    x = rng.standard_normal(500).astype(np.float32)
    x = x[np.abs(x) > 0.05]  # away from the kink
    d = np.ones_like(x)
    num = numeric_grad_elementwise(lambda v: ops.leaky_relu(v, 0.1), x)
    np.testing.assert_allclose(ops.leaky_relu_backward(d, x, 0.1), num, rtol=1e-4, atol=1e-5)


def test_leaky_relu_bad_slope():
    with pytest.raises(ValueError, match="negative_slope must be finite"):
        ops.leaky_relu(np.ones(3, np.float32), float("nan"))
    with pytest.raises(ValueError, match="negative_slope must be finite"):
        ops.leaky_relu_backward(np.ones(3, np.float32), np.ones(3, np.float32), float("inf"))
    with pytest.raises(ValueError, match=r"leaky_relu: negative_slope=1e\+308 does not fit in float32"):
        ops.leaky_relu(np.ones(3, np.float32), 1e308)
    with pytest.raises(ValueError, match=r"leaky_relu_backward: negative_slope=-1e\+39 does not fit in float32"):
        ops.leaky_relu_backward(np.ones(3, np.float32), np.ones(3, np.float32), -1e39)


# ================================================================ sigmoid / tanh
def test_sigmoid_matches_reference_dense_grid(isa):
    # Dense grid: every output goes through the vectorised exp (max rel. error measured 2.0e-7).
    x = np.linspace(-90, 30, 400_001, dtype=np.float32)
    assert_close_flushed(ops.sigmoid(x), ref_sigmoid(x), rtol=3e-7)


def test_tanh_matches_reference_dense_grid(isa):
    # Both branches (|x| < 0.3: series; else from exp) and the switch point (max rel. error measured 1.7e-7).
    x = np.concatenate([np.linspace(-12, 12, 400_001, dtype=np.float32),
                        np.linspace(0.29, 0.31, 10_001, dtype=np.float32),
                        np.float32([1e-6, -1e-6, 1e-20, -1e-20])])
    assert_close_flushed(ops.tanh(x), ref_tanh(x), rtol=2.5e-7)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "leaky_relu", "relu", "step"])
def test_elementwise_extremes(isa, name):
    x = EXTREMES
    got = getattr(ops, name)(x)
    want = {"sigmoid": ref_sigmoid, "tanh": ref_tanh, "leaky_relu": lambda v: ref_leaky(v, 0.01),
            "relu": lambda v: np.maximum(f64(v), 0), "step": ref_step}[name](x)
    assert np.all(np.isfinite(got)), (x, got)
    assert_close_flushed(got, want, rtol=3e-7)


def test_sigmoid_tanh_saturate_exactly(isa):
    x = np.float32([1e4, -1e4, F32_MAX, -F32_MAX, 50, -200])
    np.testing.assert_array_equal(ops.sigmoid(x), np.float32([1, 0, 1, 0, 1, 0]))
    np.testing.assert_array_equal(ops.tanh(x), np.float32([1, -1, 1, -1, 1, -1]))


def test_sigmoid_tanh_nan_propagates(isa):
    x = np.float32([np.nan, 1.0])
    assert np.isnan(ops.sigmoid(x)[0]) and np.isnan(ops.tanh(x)[0])


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_backward_from_output_matches_reference(isa, rng, name):
    x = (rng.standard_normal(2049) * 2).astype(np.float32)
    d = rng.standard_normal(x.shape).astype(np.float32)
    y = getattr(ops, name)(x)
    got = getattr(ops, name + "_backward")(d, y)
    y64 = f64(y)
    want = f64(d) * y64 * (1 - y64) if name == "sigmoid" else f64(d) * (1 - y64 * y64)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_backward_finite_differences(isa, rng, name):
    x = (rng.standard_normal(1000) * 2).astype(np.float32)
    f = getattr(ops, name)
    got = getattr(ops, name + "_backward")(np.ones_like(x), f(x))
    np.testing.assert_allclose(got, numeric_grad_elementwise(f, x), rtol=1e-3, atol=2e-5)


# ================================================================ softmax
def test_softmax_matches_reference(isa, rng):
    x = (rng.standard_normal((37, 129)) * 3).astype(np.float32)
    y = ops.softmax(x)
    np.testing.assert_allclose(y, ref_softmax(x), rtol=2e-6, atol=1e-9)
    np.testing.assert_allclose(f64(y).sum(axis=1), 1.0, rtol=1e-6)


def test_softmax_extremes(isa):
    x = np.float32([[1e4, -1e4, 0], [-1e4, -1e4, -1e4], [F32_MAX, -F32_MAX, 0], [100, 80, -100],
                    [-F32_MAX, -F32_MAX, -F32_MAX], [88.7, -88.7, 87.5]])
    y = ops.softmax(x)
    assert np.all(np.isfinite(y))
    e20 = np.exp(-20.0)
    want = np.array([[1, 0, 0], [1 / 3] * 3, [1, 0, 0], [1 / (1 + e20), e20 / (1 + e20), 0],
                     [1 / 3] * 3, ref_softmax(np.float32([[88.7, -88.7, 87.5]]))[0]])
    assert_close_flushed(y, want, rtol=2e-6)


def test_softmax_backward_matches_reference(isa, rng):
    x = rng.standard_normal((19, 33)).astype(np.float32)
    d = rng.standard_normal(x.shape).astype(np.float32)
    y = ops.softmax(x)
    y64, d64 = f64(y), f64(d)
    want = y64 * (d64 - (d64 * y64).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(ops.softmax_backward(d, y), want, rtol=1e-5, atol=1e-7)


def test_softmax_finite_differences(isa, rng):
    B, C = 3, 7
    x = rng.standard_normal((B, C)).astype(np.float32)
    w = rng.standard_normal((B, C))  # non-uniform upstream gradient: a uniform one gives dinp = 0
    got = ops.softmax_backward(w.astype(np.float32), ops.softmax(x))
    num = np.zeros((B, C))
    for b in range(B):
        for c in range(C):
            xp, xm = x.copy(), x.copy()
            xp[b, c] += np.float32(1e-2)
            xm[b, c] -= np.float32(1e-2)
            num[b, c] = ((w * ops.softmax(xp)).sum() - (w * ops.softmax(xm)).sum()) / (f64(xp[b, c]) - xm[b, c])
    np.testing.assert_allclose(got, num, rtol=1e-3, atol=2e-5)


@fuzz
@given(B=st.integers(1, 40), C=st.one_of(st.sampled_from([1, 2, 7, 8, 9, 10, 15, 16, 17, 33, 1000]),
                                          st.integers(1, 300)),
       seed=st.integers(0, 2**31 - 1))
def test_softmax_any_shape(isa, B, C, seed):
    r = np.random.default_rng(seed)
    x = (r.standard_normal((B, C)) * 4).astype(np.float32)
    np.testing.assert_allclose(ops.softmax(x), ref_softmax(x), rtol=3e-6, atol=1e-9)
    d = r.standard_normal((B, C)).astype(np.float32)
    y = ops.softmax(x)
    y64, d64 = f64(y), f64(d)
    np.testing.assert_allclose(ops.softmax_backward(d, y), y64 * (d64 - (d64 * y64).sum(1, keepdims=True)),
                               rtol=1e-5, atol=1e-6)


def test_softmax_one_column_is_one(isa):
    np.testing.assert_array_equal(ops.softmax(np.float32([[3.0], [-1e4], [F32_MAX]])), np.ones((3, 1), np.float32))


# ================================================================ step
def test_step_matches_reference(isa, rng):
    x = rng.standard_normal(1003).astype(np.float32)
    x[:3] = [0.0, -0.0, -1e-30]
    np.testing.assert_array_equal(ops.step(x), ref_step(x).astype(np.float32))
    assert ops.step(x)[:3].tolist() == [1.0, 1.0, 0.0]


# ================================================================ all elementwise: fuzzing, in place
UNARY = {
    "relu": (ops.relu, lambda v: np.maximum(f64(v), 0), 0),
    "leaky_relu": (ops.leaky_relu, lambda v: ref_leaky(v, 0.01), 1e-7),
    "sigmoid": (ops.sigmoid, ref_sigmoid, 3e-7),
    "tanh": (ops.tanh, ref_tanh, 2.5e-7),
    "step": (ops.step, ref_step, 0),
}


@fuzz
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]))
def test_elementwise_any_length(isa, n, seed, scale):
    x = (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)
    for name, (f, ref, rtol) in UNARY.items():
        assert_close_flushed(f(x), ref(x), rtol=rtol)


@pytest.mark.parametrize("name", list(UNARY) + ["softmax"])
def test_forward_out_in_place(isa, rng, name):
    x = (rng.standard_normal((13, 21)) * 3).astype(np.float32)
    f = ops.softmax if name == "softmax" else UNARY[name][0]
    want = f(x)
    y = f(x, out=x)
    assert y is x and np.shares_memory(y, x)
    np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softmax"])
def test_backward_out_in_place(isa, rng, name):
    x = rng.standard_normal((9, 17)).astype(np.float32)
    d = rng.standard_normal(x.shape).astype(np.float32)
    y = getattr(ops, name)(x)
    bw = getattr(ops, name + "_backward")
    want = bw(d, y)
    assert bw(d, y, out=d) is d
    np.testing.assert_array_equal(d, want)


def test_leaky_relu_backward_out_in_place(rng):
    x = rng.standard_normal(100).astype(np.float32)
    d = rng.standard_normal(100).astype(np.float32)
    want = ops.leaky_relu_backward(d, x, 0.3)
    assert ops.leaky_relu_backward(d, x, 0.3, out=d) is d
    np.testing.assert_array_equal(d, want)


def test_out_given_is_written_and_returned(rng):
    x = rng.standard_normal(50).astype(np.float32)
    out = np.empty_like(x)
    assert ops.sigmoid(x, out=out) is out
    np.testing.assert_array_equal(out, ops.sigmoid(x))


# ================================================================ bad inputs for every activation
FORWARD = ["relu", "leaky_relu", "sigmoid", "tanh", "softmax", "step"]
BACKWARD = ["relu_backward", "leaky_relu_backward", "sigmoid_backward", "tanh_backward", "softmax_backward"]


@pytest.mark.parametrize("name", FORWARD)
@pytest.mark.parametrize(
    "x, exc, words",
    [case[1:] for case in bad_float32_arrays(np.zeros((4, 4), np.float32))]
    + [(np.zeros((0, 4), np.float32), ValueError, "empty")],
)
def test_forward_bad_input(name, x, exc, words):
    with pytest.raises(exc, match=words) as e:
        getattr(ops, name)(x)
    assert "x" in str(e.value) and name.split("_")[0] in str(e.value)


@pytest.mark.parametrize("name", BACKWARD)
def test_backward_bad_dout(name):
    two_d = name.startswith("softmax")
    shape = (3, 4) if two_d else (12,)
    a = np.ones(shape, np.float32)
    with pytest.raises(TypeError, match="dout must have dtype float32"):
        getattr(ops, name)(a.astype(np.float64), a)
    with pytest.raises(ValueError, match=r"dout has shape \(4, 3\), expected"):
        getattr(ops, name)(np.ones((4, 3), np.float32), a)
    arg = "y" if name in ("sigmoid_backward", "tanh_backward", "softmax_backward") else "x"
    with pytest.raises(TypeError, match=f"{arg} must have dtype float32"):
        getattr(ops, name)(a, a.astype(np.float64))
    with pytest.raises(ValueError, match=f"{arg} is empty"):
        getattr(ops, name)(np.ones((0, 4), np.float32), np.ones((0, 4), np.float32))


@pytest.mark.parametrize("name", FORWARD + BACKWARD)
def test_bad_out(name):
    two_d = name.startswith("softmax")
    a = np.ones((3, 4) if two_d else 12, np.float32)
    args = (a, a.copy()) if name.endswith("_backward") else (a,)
    f = getattr(ops, name)
    ro = np.zeros_like(a)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        f(*args, out=ro)
    with pytest.raises(ValueError, match="out has shape"):
        f(*args, out=np.zeros((5, 5), np.float32))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        f(*args, out=np.zeros_like(a, dtype=np.float64))
    with pytest.raises(TypeError, match="out must be C-contiguous"):
        f(*args, out=np.zeros((a.size * 2,), np.float32)[::2].reshape(a.shape) if not two_d
          else np.zeros((3, 8), np.float32)[:, ::2])


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "step"])
def test_out_partly_overlapping_x_is_refused(name):
    buf = np.arange(20, dtype=np.float32)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        getattr(ops, name)(buf[:16], out=buf[4:20])


@pytest.mark.parametrize("x", [np.ones(5, np.float32), np.ones((2, 3, 4), np.float32)])
def test_softmax_needs_2d(x):
    with pytest.raises(ValueError, match=r"x must be 2-D \(batch, features\)"):
        ops.softmax(x)
    with pytest.raises(ValueError, match=r"y must be 2-D"):
        ops.softmax_backward(x, x)


def test_elementwise_keeps_any_shape(rng):
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    for f in (ops.sigmoid, ops.tanh, ops.step, ops.leaky_relu, ops.relu):
        assert f(x).shape == (2, 3, 5)


# ================================================================ threads and determinism
@pytest.fixture
def threads():
    prev = _C.get_num_threads()
    yield
    _C.set_num_threads(prev)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "leaky_relu", "step", "softmax"])
def test_one_and_two_threads_agree(isa, rng, threads, name):
    # Big enough for the parallel path (> 2 grains). Elementwise work has no reduction: bit-identical.
    x = (rng.standard_normal((1000, 211)) * 5).astype(np.float32)
    f = getattr(ops, name)
    _C.set_num_threads(1)
    one = f(x)
    _C.set_num_threads(2)
    two = f(x)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(two, f(x))


def test_softmax_backward_threads_agree(isa, rng, threads):
    y = ops.softmax(rng.standard_normal((2000, 97)).astype(np.float32))
    d = rng.standard_normal(y.shape).astype(np.float32)
    _C.set_num_threads(1)
    one = ops.softmax_backward(d, y)
    _C.set_num_threads(2)
    np.testing.assert_array_equal(one, ops.softmax_backward(d, y))


def test_two_python_threads_at_once(rng):
    # The GIL is released around each kernel: two Python threads run kernels concurrently and correctly.
    xs = [(rng.standard_normal(300_000) * 4).astype(np.float32) for _ in range(2)]
    want = [ops.tanh(x) for x in xs]
    got = [None, None]

    def work(i):
        for _ in range(20):
            got[i] = ops.tanh(xs[i])

    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# ================================================================ large and misaligned arrays
# Elementwise maps split at out's 64-byte lines (thread 0 first does the floats before the first
# line) and, past 48 MiB of arrays, write through an L1 buffer with streaming stores. Each element
# depends on its own inputs only, so any such path must give exactly what small calls give.
STREAMED = 6_500_003  # 26 MB a float array: 2 arrays pass the streaming threshold


def offset_view(n, offset, rng, scale=3.0):
    """n float32 from a buffer `offset` floats in: not 64-B aligned (NumPy's own are 16 mod 64)."""
    buf = np.empty(n + 16, np.float32)
    v = buf[offset:offset + n]
    v[...] = rng.standard_normal(n) * scale
    return v


def piecewise(f, *args, piece=4099):
    """f applied to pieces far below every threshold, one thread, concatenated."""
    return np.concatenate([f(*(a[i:i + piece] for a in args)) for i in range(0, args[0].shape[0], piece)])


@pytest.mark.parametrize("n", [100_003, STREAMED])
@pytest.mark.parametrize("name", list(UNARY))
def test_forward_large_misaligned(isa, rng, n, name):
    f = UNARY[name][0]
    x = offset_view(n, 3, rng)
    out = offset_view(n, 5, rng)
    assert f(x, out=out) is out
    np.testing.assert_array_equal(out, piecewise(f, x))


@pytest.mark.parametrize("n", [100_003, STREAMED])
@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
def test_backward_large_misaligned(isa, rng, n, name):
    bw = getattr(ops, name + "_backward")
    d, x, out = offset_view(n, 1, rng), offset_view(n, 7, rng), offset_view(n, 2, rng)
    assert bw(d, x, out=out) is out
    np.testing.assert_array_equal(out, piecewise(bw, d, x))
    assert bw(d, x, out=d) is d  # in place over dout, streamed too
    np.testing.assert_array_equal(d, out)


def test_leaky_relu_large_misaligned(rng):
    x, d = offset_view(STREAMED, 9, rng), offset_view(STREAMED, 4, rng)
    np.testing.assert_array_equal(ops.leaky_relu(x, 0.2), piecewise(lambda v: ops.leaky_relu(v, 0.2), x))
    np.testing.assert_array_equal(ops.leaky_relu_backward(d, x, 0.2),
                                  piecewise(lambda a, b: ops.leaky_relu_backward(a, b, 0.2), d, x))
