"""fastdl.ops: every native kernel as a plain function over NumPy arrays.

This is to ``fastdl.nn`` what ``torch.nn.functional`` is to ``torch.nn``. Arrays must be
float32 (int64 for class labels) and C-contiguous; nothing is converted silently — convert once
with ``np.asarray(x, dtype=np.float32)``. Each function allocates its outputs unless ``out=`` is
given; an ``out`` array is written in place and returned.
"""
from __future__ import annotations

import numpy as np

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
__all__ += ["dropout", "dropout_backward", "dropout_mask", "batchnorm_forward", "batchnorm_backward"]


def dropout(x, p, seed, out=None):
    """Inverted dropout: x * keep / (1 - p), each element kept with probability 1 - p.

    The mask is a pure function of ``seed`` (an int in [0, 2**64)) and the element's flat index,
    so a seed gives the same mask on every thread count and instruction set, and
    ``dropout_backward`` with the same seed recomputes it. ``p`` must be in [0, 1); p = 0 is the
    identity. ``out`` may be ``x`` itself.
    """
    return _C.dropout_forward(x, p, seed, out)


def dropout_backward(dout, p, seed, out=None):
    """Gradient of ``dropout(x, p, seed)``: dout * keep / (1 - p), the mask rebuilt from ``seed``."""
    return _C.dropout_backward(dout, p, seed, out)


def dropout_mask(shape, p, seed):
    """The keep mask (float32 ones and zeros) that ``dropout`` with this p and seed applies to an
    array of this shape: ``dropout(x, p, seed) == x * dropout_mask(x.shape, p, seed) / (1 - p)``."""
    ones = np.ones(shape, dtype=np.float32)
    if ones.size == 0:
        raise ValueError(f"dropout_mask: shape {ones.shape} is empty")
    kept = _C.dropout_forward(ones, p, seed, ones)
    return (kept != 0).astype(np.float32)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, training, momentum=0.1, eps=1e-5,
                      out=None):
    """BatchNorm1d over x (batch, num_features), like ``torch.nn.functional.batch_norm``.

    training=True: normalise with the batch mean and biased variance, update ``running_mean`` and
    ``running_var`` in place (running = (1 - momentum) * running + momentum * batch statistic, the
    variance unbiased by B / (B - 1)); returns (y, mean, invstd), the last two for
    ``batchnorm_backward``. The running arrays must be float32, C-contiguous and writeable: they are
    never copied. training=False: normalise with the running statistics; returns (y, None, None).
    """
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"batchnorm_forward: training must be a bool, got {type(training).__name__}")
    if training:
        return _C.batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps, out)
    return _C.batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, out), None, None


def batchnorm_backward(dout, x, gamma, mean, invstd, *, dx=None, dgamma=None, dbeta=None):
    """Gradients of the training-mode ``batchnorm_forward``: returns (dx, dgamma, dbeta).

    dbeta = sum(dout), dgamma = sum(dout * xhat) over the batch, and
    dx = gamma * invstd / B * (B * dout - dbeta - xhat * dgamma), xhat = (x - mean) * invstd.
    """
    return _C.batchnorm_backward(dout, x, gamma, mean, invstd, dx, dgamma, dbeta)


# ---------------------------------------------------------------- optimizer updates
__all__ += ["sgd_step", "adam_step"]


def sgd_step(param, grad, momentum_buf=None, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, first_step=False):
    """One step of PyTorch's SGD, in place on ``param`` (and ``momentum_buf``); returns ``param``.

        g = grad + weight_decay * param
        if momentum != 0:
            buf = g if first_step else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        param -= lr * g

    ``momentum_buf`` is required when momentum != 0 (its contents are ignored when first_step).
    In-place arrays must be float32, C-contiguous, writeable and must not overlap: never copied.
    """
    _C.sgd_update(param, grad, momentum_buf, lr, momentum, dampening, weight_decay, nesterov, first_step)
    return param


def adam_step(param, grad, m, v, *, lr, step, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              decoupled=False):
    """One Adam step (AdamW when ``decoupled``), in place on ``param``, ``m`` and ``v``; returns ``param``.

        g = grad + weight_decay * param        (Adam; AdamW instead does param *= 1 - lr * weight_decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        param -= lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - beta1**step), v_hat = v / (1 - beta2**step)

    ``step`` counts updates from 1 (the first call has step=1).
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"adam_step: step must be an int, got {type(step).__name__}")
    _C.adam_update(param, grad, m, v, lr, step, beta1, beta2, eps, weight_decay, decoupled)
    return param
