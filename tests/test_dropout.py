"""Dropout: the counter-based mask re-derived in NumPy, statistics of the mask, determinism across
seeds, thread counts and instruction sets, the gradient by finite differences, bad inputs."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastdl import _C, ops
from reference import ISAS, reference_dropout, reference_keep

# ---------------------------------------------------------------- against the reference


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_matches_reference(isa, rng, p):
    x = rng.standard_normal((61, 257)).astype(np.float32)
    seed = 0xDEADBEEF12345678
    y = ops.dropout(x, p, seed)
    np.testing.assert_array_equal(y != 0, reference_keep(x.size, p, seed).reshape(x.shape))
    np.testing.assert_allclose(y, reference_dropout(x, p, seed), rtol=1e-6, atol=0)


@pytest.mark.parametrize("n", [100_003, 6_500_003])  # the second passes the streaming-store threshold
def test_dropout_large_misaligned_matches_reference(isa, rng, n):
    buf = rng.standard_normal(n + 16).astype(np.float32)
    x, out = buf[3:3 + n], np.empty(n + 16, np.float32)[5:5 + n]  # 12 and 20 bytes past 64-B lines
    assert ops.dropout(x, 0.3, 99, out=out) is out
    np.testing.assert_array_equal(out != 0, reference_keep(n, 0.3, 99))
    np.testing.assert_allclose(out, reference_dropout(x, 0.3, 99), rtol=1e-6, atol=0)


def test_dropout_mask_matches_reference(isa):
    mask = ops.dropout_mask((7, 9, 11), 0.3, 42)
    assert mask.dtype == np.float32 and mask.shape == (7, 9, 11)
    np.testing.assert_array_equal(mask, reference_keep(7 * 9 * 11, 0.3, 42).reshape(7, 9, 11).astype(np.float32))


def test_dropout_backward_matches_reference(isa, rng):
    d = rng.standard_normal(100_003).astype(np.float32)  # large: runs the parallel path
    np.testing.assert_allclose(ops.dropout_backward(d, 0.25, 7), reference_dropout(d, 0.25, 7), rtol=1e-6, atol=0)


def test_backward_uses_the_forward_mask(rng):
    x = rng.standard_normal(4099).astype(np.float32)
    d = rng.standard_normal(4099).astype(np.float32)
    keep = ops.dropout(x, 0.4, 99) != 0
    dx = ops.dropout_backward(d, 0.4, 99)
    np.testing.assert_array_equal(dx != 0, keep)
    np.testing.assert_array_equal(dx, ops.dropout(d, 0.4, 99))


@given(n=st.integers(1, 5000), p=st.floats(0.0, 0.99), seed=st.integers(0, 2**64 - 1))
def test_dropout_any_length(n, p, seed):
    x = np.linspace(0.5, 2.0, n, dtype=np.float32)  # nonzero, so y != 0 is exactly the mask
    y = ops.dropout(x, p, seed)
    np.testing.assert_array_equal(y != 0, reference_keep(n, p, seed))
    np.testing.assert_allclose(y, reference_dropout(x, p, seed), rtol=1e-6, atol=0)


def test_p_zero_is_identity(rng):
    x = rng.standard_normal(1001).astype(np.float32)
    np.testing.assert_array_equal(ops.dropout(x, 0.0, 5), x)
    np.testing.assert_array_equal(ops.dropout_backward(x, 0.0, 5), x)
    assert ops.dropout_mask((3, 4), 0.0, 5).min() == 1.0


def test_out_in_place(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    want = ops.dropout(x, 0.5, 3)
    y = ops.dropout(x, 0.5, 3, out=x)
    assert y is x and np.shares_memory(y, x)
    np.testing.assert_array_equal(x, want)
    out = np.empty_like(x)
    assert ops.dropout_backward(want, 0.5, 3, out=out) is out


# ---------------------------------------------------------------- statistics of the mask


def binomial_tol(n, q, sigmas=5.0):
    return sigmas * math.sqrt(q * (1 - q) / n)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.8, 0.95])
def test_keep_fraction_is_one_minus_p(p):
    n = 1_000_003
    for seed in (0, 1, 2**63 + 5):
        keep = ops.dropout_mask(n, p, seed)
        assert abs(keep.mean() - (1 - p)) < binomial_tol(n, 1 - p), (p, seed, keep.mean())


def test_mask_has_no_obvious_structure():
    # Neighbours, every 8th / 16th element (vector lanes) and rows are independent: the joint keep
    # frequency of two elements at a fixed distance is (1-p)^2 within binomial noise.
    p, n = 0.5, 1 << 20
    keep = ops.dropout_mask(n, p, 2024).astype(bool)
    for lag in (1, 2, 8, 16, 256):
        both = (keep[:-lag] & keep[lag:]).mean()
        assert abs(both - 0.25) < binomial_tol(n - lag, 0.25), (lag, both)
    # and the counts per lane of a 16-wide vector are all near n/16 * (1-p)
    per_lane = keep.reshape(-1, 16).mean(axis=0)
    assert np.all(np.abs(per_lane - 0.5) < binomial_tol(n // 16, 0.5))


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bits_different_seed_differs(rng):
    x = rng.standard_normal(50_000).astype(np.float32)
    a, b = ops.dropout(x, 0.5, 123), ops.dropout(x, 0.5, 123)
    assert a.tobytes() == b.tobytes()
    masks = [ops.dropout_mask(x.shape, 0.5, s) for s in (0, 1, 2, 2**32, 2**63, 2**64 - 1)]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            # two independent p = 0.5 masks disagree on half of the elements
            differ = (masks[i] != masks[j]).mean()
            assert abs(differ - 0.5) < binomial_tol(x.size, 0.5), (i, j, differ)


def test_same_mask_at_1_and_2_threads(rng):
    x = rng.standard_normal(300_001).astype(np.float32)  # above the parallel grain
    prev = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        one = ops.dropout(x, 0.3, 77)
        one_b = ops.dropout_backward(x, 0.3, 77)
        _C.set_num_threads(2)
        two = ops.dropout(x, 0.3, 77)
        two_b = ops.dropout_backward(x, 0.3, 77)
    finally:
        _C.set_num_threads(prev)
    assert one.tobytes() == two.tobytes()
    assert one_b.tobytes() == two_b.tobytes()


def test_same_bits_on_every_isa(rng):
    x = rng.standard_normal(70_001).astype(np.float32)
    prev = _C.get_isa()
    got = {}
    try:
        for name in ISAS:
            _C.set_isa(name)
            got[name] = ops.dropout(x, 0.37, 2**40 + 3).tobytes()
    finally:
        _C.set_isa(prev)
    assert len(set(got.values())) == 1, list(got)


# ---------------------------------------------------------------- gradient by finite differences


def test_dropout_gradient_finite_differences(rng):
    # L(x) = sum(w * dropout(x)) with a fixed seed; dL/dx = dropout_backward(w).
    p, seed = 0.3, 11
    x = rng.standard_normal(53).astype(np.float32)
    w = rng.standard_normal(53)

    def loss(xx):
        return float(np.dot(w, ops.dropout(xx, p, seed).astype(np.float64)))

    analytic = ops.dropout_backward(w.astype(np.float32), p, seed).astype(np.float64)
    numeric = np.empty(53)
    h = 1e-2
    for i in range(53):
        xp, xm = x.copy(), x.copy()
        xp[i] += np.float32(h)
        xm[i] -= np.float32(h)
        numeric[i] = (loss(xp) - loss(xm)) / (float(xp[i]) - float(xm[i]))  # the step actually taken
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), float("inf"), 1 - 1e-12])
def test_bad_p(p):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        ops.dropout(np.ones(4, np.float32), p, 0)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        ops.dropout_backward(np.ones(4, np.float32), p, 0)


@pytest.mark.parametrize("seed", [-1, 2**64, 2**100])
def test_seed_out_of_range(seed):
    with pytest.raises(ValueError, match="seed"):
        ops.dropout(np.ones(4, np.float32), 0.5, seed)


@pytest.mark.parametrize("seed", [1.0, "3", None, True])
def test_seed_not_an_int(seed):
    with pytest.raises(TypeError, match="seed must be an int"):
        ops.dropout(np.ones(4, np.float32), 0.5, seed)


def test_numpy_integer_seed_is_accepted():
    a = ops.dropout_mask(100, 0.5, np.uint64(2**64 - 1))
    np.testing.assert_array_equal(a, ops.dropout_mask(100, 0.5, 2**64 - 1))


@pytest.mark.parametrize(
    "x, exc, words",
    [
        (np.zeros(4, np.float64), TypeError, "float32"),
        (np.zeros((4, 4), np.float32, order="F"), TypeError, "C-contiguous"),
        (np.zeros((4, 4), np.float32)[:, ::2], TypeError, "C-contiguous"),
        (np.zeros(0, np.float32), ValueError, "empty"),
        ([1.0, 2.0], TypeError, "ndarray"),
    ],
)
def test_bad_input(x, exc, words):
    with pytest.raises(exc, match=words) as e:
        ops.dropout(x, 0.5, 1)
    assert "dropout: x" in str(e.value)
    with pytest.raises(exc, match=words) as e:
        ops.dropout_backward(x, 0.5, 1)
    assert "dropout_backward: dout" in str(e.value)


def test_bad_out():
    x = np.ones(8, np.float32)
    ro = np.zeros(8, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        ops.dropout(x, 0.5, 1, out=ro)
    with pytest.raises(ValueError, match=r"out has shape \(7,\), expected x.shape"):
        ops.dropout(x, 0.5, 1, out=np.zeros(7, np.float32))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        ops.dropout(x, 0.5, 1, out=np.zeros(8, np.float64))
    base = np.zeros(9, np.float32)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        ops.dropout(base[:8], 0.5, 1, out=base[1:])


def test_two_python_threads_at_once(rng):
    # The GIL is released around the kernel: concurrent calls from Python threads stay correct.
    import threading

    xs = [rng.standard_normal(200_000).astype(np.float32) for _ in range(4)]
    want = [reference_dropout(x, 0.5, i) for i, x in enumerate(xs)]
    got = [None] * 4

    def work(i):
        for _ in range(5):
            got[i] = ops.dropout(xs[i], 0.5, i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=0)


def test_dropout_mask_bad_arguments():
    with pytest.raises(ValueError, match=r"dropout_mask: shape \(3, 0\) is empty"):
        ops.dropout_mask((3, 0), 0.5, 1)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        ops.dropout_mask((3, 2), 1.0, 1)
