"""fastdl._C's layout: each fastdl.ops function reaches the native function of the same name (so its errors
name what the user called), and the benchmark-only natives live apart, in fastdl._C.bench."""
import numpy as np
import pytest

from fastdl import _C, ops

PYTHON_ONLY = {"dropout_mask", "conv2d_padding", "conv2d_output_size"}  # helpers in Python (sizes, masks)


@pytest.mark.parametrize("name", sorted(set(ops.__all__) - PYTHON_ONLY))
def test_every_op_has_its_native_function_of_the_same_name(name):
    assert callable(getattr(_C, name))


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "step", "softmax", "leaky_relu"])
def test_errors_name_the_function_called(name):
    with pytest.raises(TypeError, match=f"^{name}: x must have dtype float32"):
        getattr(ops, name)(np.zeros((2, 3)))


def test_bench_natives_are_apart():
    assert not hasattr(_C, "fma_peak_run") and not hasattr(_C, "stream_triad")
    assert _C.bench.fma_peak_run(10, 1) > 0
    a = np.zeros(8, np.float32)
    _C.bench.stream_triad(a, np.ones(8, np.float32), np.ones(8, np.float32), 2.0, 1)
    assert (a == 3).all()


def test_dropout_mask_errors_name_dropout_mask():
    with pytest.raises(ValueError, match=r"^dropout_mask: p must be in \[0, 1\)"):
        ops.dropout_mask((3,), 1.5, 0)
    with pytest.raises(TypeError, match=r"^dropout_mask: seed must be an int"):
        ops.dropout_mask((3,), 0.5, 1.0)
