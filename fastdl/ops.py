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

