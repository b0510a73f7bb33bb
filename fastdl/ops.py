"""fastdl.ops: every native kernel as a plain function over NumPy arrays.

This is to ``fastdl.nn`` what ``torch.nn.functional`` is to ``torch.nn``. Arrays must be
float32 (int64 for class labels) and C-contiguous; nothing is converted silently — convert once
with ``np.asarray(x, dtype=np.float32)``. Each function allocates its outputs unless ``out=`` is
given; an ``out`` array is written in place and returned.
"""
from __future__ import annotations

from . import _C

__all__: list = []  # each section below adds its names


# ---------------------------------------------------------------- gemm / linear
__all__ += ["matmul", "matmul_reference", "linear_forward", "linear_backward"]


def matmul(a, b, *, trans_a=False, trans_b=False, out=None, accumulate=False, bias=None, activation=None):
    """c = op(a) @ op(b), shape (M, N), computed by fastdl's blocked GEMM.

    a is (M, K), or (K, M) read as its transpose when ``trans_a``; b is (K, N), or (N, K) when
    ``trans_b``. No transposed copy is made: pass the flags instead of ``.T`` views. With
    ``accumulate=True`` the product is added into ``out`` (required then): c += op(a) @ op(b).
    ``bias`` (N,) is added to every row and ``activation`` (None, 'none', 'relu', 'sigmoid',
    'tanh') applied last, in the same pass: c = act([c +] op(a) @ op(b) + bias).
    """
    return _C.matmul(a, b, bool(trans_a), bool(trans_b), out, bool(accumulate), bias, activation)


def matmul_reference(a, b, *, trans_a=False, trans_b=False, out=None, accumulate=False, bias=None,
                     activation=None):
    """matmul computed by the plain triple loop (sums in double): the oracle for tests and benchmarks."""
    return _C.matmul_reference(a, b, bool(trans_a), bool(trans_b), out, bool(accumulate), bias, activation)


def linear_forward(x, weight, bias=None, activation=None, out=None):
    """y = activation(x @ weight.T + bias): x (batch, in_features), weight (out_features, in_features)
    as in PyTorch, bias (out_features,) or None; activation None, 'none', 'relu', 'sigmoid' or 'tanh',
    fused into the product. Returns y (batch, out_features)."""
    return _C.linear_forward(x, weight, bias, activation, out)


def linear_backward(dout, x, weight, *, bias=True, need_dx=True, accumulate=False, dx=None, dweight=None,
                    dbias=None):
    """Gradients of y = x @ weight.T + bias given dout = dL/dy (batch, out_features).

    Returns (dx, dweight, dbias): dx = dout @ weight (None unless ``need_dx``), dweight = dout.T @ x,
    dbias = dout summed over the batch (None unless ``bias``). With ``accumulate=True`` dweight and
    dbias are added into the given arrays (both required then), as for gradient accumulation over
    micro-batches; dx is always overwritten. Any output array may be passed to be written in place.
    """
    return _C.linear_backward(dout, x, weight, bool(bias), bool(need_dx), bool(accumulate), dx, dweight, dbias)


# ---------------------------------------------------------------- activations
__all__ += ["relu", "relu_backward"]

def relu(x, out=None):
    """max(x, 0), elementwise."""
    return _C.relu_forward(x, out)


def relu_backward(dout, x, out=None):
    """Gradient of relu: dout where x > 0, else 0."""
    return _C.relu_backward(dout, x, out)


# ---------------------------------------------------------------- losses


# ---------------------------------------------------------------- dropout / batchnorm


# ---------------------------------------------------------------- optimizer updates

