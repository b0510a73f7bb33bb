"""Activations: float64 NumPy references, finite differences, shape fuzzing, bad inputs."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastdl import ops

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
    [
        (np.zeros(4, np.float64), TypeError, "float32"),
        (np.zeros((4, 4), np.float32, order="F"), TypeError, "C-contiguous"),
        (np.zeros((4, 4), np.float32)[:, ::2], TypeError, "C-contiguous"),
        (np.zeros(0, np.float32), ValueError, "empty"),
        ([1.0, 2.0], TypeError, "ndarray"),
    ],
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
