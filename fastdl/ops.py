"""fastdl.ops: every native kernel as a plain function over NumPy arrays.

This is to ``fastdl.nn`` what ``torch.nn.functional`` is to ``torch.nn``. Arrays must be
float32 (int64 for class labels) and C-contiguous; nothing is converted silently — convert once
with ``np.asarray(x, dtype=np.float32)``. Each function allocates its outputs unless ``out=`` is
given; an ``out`` array is written in place and returned.
"""
from __future__ import annotations

import numpy as np

from . import _C
from ._validation import check_int, check_pair

__all__: list = []  # each section below adds its names


# ---------------------------------------------------------------- gemm / linear
__all__ += ["matmul", "matmul_reference", "linear_forward", "linear_backward"]


def matmul(a, b, *, trans_a=False, trans_b=False, out=None, accumulate=False, bias=None, activation=None,
           batch_invariant=True):
    """c = op(a) @ op(b), shape (M, N), computed by fastdl's blocked GEMM.

    a is (M, K), or (K, M) read as its transpose when ``trans_a``; b is (K, N), or (N, K) when
    ``trans_b``. No transposed copy is made: pass the flags instead of ``.T`` views. With
    ``accumulate=True`` the product is added into ``out`` (required then): c += op(a) @ op(b).
    ``bias`` (N,) is added to every row and ``activation`` (None, 'none', 'relu', 'sigmoid',
    'tanh') applied last, in the same pass: c = act([c +] op(a) @ op(b) + bias).

    ``batch_invariant`` (True or False; default True): True sums every element in one order fixed by
    K, so a row of c has the same bits whatever the number of rows or threads computing it
    (``matmul(a[i:j], b) == matmul(a, b)[i:j]`` exactly). False lets a·bᵀ (``trans_b``, not
    ``trans_a``) with one or two rows (three on the generic path) use dot products along K instead,
    1.5-2.5x faster; the result is as accurate but may differ from the invariant one in the last bits
    (~1e-7 relative). Other shapes are computed the same either way, as fast. Anything but a bool (1,
    None) is a TypeError.
    """
    return _C.matmul(a, b, bool(trans_a), bool(trans_b), out, bool(accumulate), bias, activation, batch_invariant)


def matmul_reference(a, b, *, trans_a=False, trans_b=False, out=None, accumulate=False, bias=None,
                     activation=None):
    """matmul computed by the plain triple loop (sums in double): the oracle for tests and benchmarks."""
    return _C.matmul_reference(a, b, bool(trans_a), bool(trans_b), out, bool(accumulate), bias, activation)


def linear_forward(x, weight, bias=None, activation=None, out=None, *, batch_invariant=True):
    """y = activation(x @ weight.T + bias): x (batch, in_features), weight (out_features, in_features)
    as in PyTorch, bias (out_features,) or None; activation None, 'none', 'relu', 'sigmoid' or 'tanh',
    fused into the product. Returns y (batch, out_features).

    ``batch_invariant`` (True or False; default True): True gives each row of y the same bits whatever
    the batch it is computed in (``linear_forward(x[i:j], ...) == linear_forward(x, ...)[i:j]``), on any
    thread count; what ``nn.Linear`` uses in eval mode. False (``nn.Linear`` in training mode) lets a
    batch of one or two rows use the faster dot-product path of ``matmul``: as accurate, other bits.
    Anything but a bool is a TypeError.
    """
    return _C.linear_forward(x, weight, bias, activation, out, batch_invariant)


def linear_backward(dout, x, weight, *, bias=True, need_dx=True, accumulate=False, dx=None, dweight=None,
                    dbias=None, input_activation=None):
    """Gradients of y = x @ weight.T + bias given dout = dL/dy (batch, out_features).

    Returns (dx, dweight, dbias): dx = dout @ weight (None unless ``need_dx``), dweight = dout.T @ x,
    dbias = dout summed over the batch (None unless ``bias``). With ``accumulate=True`` dweight and
    dbias are added into the given arrays (both required then), as for gradient accumulation over
    micro-batches; dx is always overwritten. Any output array may be passed to be written in place.

    ``input_activation`` ('relu', 'sigmoid', 'tanh'; None or 'none' for nothing): x is the output of
    that activation, and dx is carried back through it as well, in the product's epilogue:
    dx = (dout @ weight) * act'(x), what ``relu_backward(dx, x)`` (etc.) would give after the product.
    """
    return _C.linear_backward(dout, x, weight, bool(bias), bool(need_dx), bool(accumulate), dx, dweight, dbias,
                              input_activation)


# ---------------------------------------------------------------- convolution
__all__ += ["conv2d_forward", "conv2d_backward", "conv2d_forward_reference", "conv2d_backward_reference",
            "conv2d_padding", "conv2d_output_size"]


def conv2d_padding(padding, kernel_size, stride=1, dilation=1, who="conv2d"):
    """Padding as (top, left, bottom, right) zeros: an int, a pair (h, w), such a 4-tuple, or PyTorch's strings "valid"
    (none) and "same" (output as large as the input; stride 1 only; an even reach pads one more at the
    bottom and right, as PyTorch does)."""
    if isinstance(padding, str):
        kh, kw = check_pair(kernel_size, who, "kernel_size", minimum=1)
        dh, dw = check_pair(dilation, who, "dilation", minimum=1)
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"{who}: padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
        if check_pair(stride, who, "stride", minimum=1) != (1, 1):
            raise ValueError(f"{who}: padding='same' needs stride=1, got stride={stride!r}")
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (th // 2, tw // 2, th - th // 2, tw - tw // 2)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        return tuple(check_int(p, who, "padding", minimum=0) for p in padding)
    ph, pw = check_pair(padding, who, "padding", minimum=0)
    return (ph, pw, ph, pw)


def conv2d_output_size(height, width, kernel_size, stride=1, padding=0, dilation=1, who="conv2d"):
    """(out_h, out_w) of a convolution (or pooling window) over a height x width input:
    floor((size + pads - dilation*(kernel-1) - 1) / stride) + 1."""
    kh, kw = check_pair(kernel_size, who, "kernel_size", minimum=1)
    sh, sw = check_pair(stride, who, "stride", minimum=1)
    dh, dw = check_pair(dilation, who, "dilation", minimum=1)
    top, left, bottom, right = conv2d_padding(padding, (kh, kw), (sh, sw), (dh, dw), who)
    return ((height + top + bottom - dh * (kh - 1) - 1) // sh + 1, (width + left + right - dw * (kw - 1) - 1) // sw + 1)


def _conv_args(weight, stride, padding, dilation, groups, who):
    shape = getattr(weight, "shape", None)
    kernel = tuple(shape[2:]) if shape is not None and len(shape) == 4 else (1, 1)
    stride = check_pair(stride, who, "stride", minimum=1)
    dilation = check_pair(dilation, who, "dilation", minimum=1)
    return (stride, conv2d_padding(padding, kernel, stride, dilation, who), dilation,
            check_int(groups, who, "groups", minimum=1))


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None, out=None):
    """y = activation(conv2d(x, weight) + bias), as ``torch.nn.functional.conv2d`` (cross-correlation):
    x (N, C, H, W), weight (OC, C / groups, KH, KW), bias (OC,) or None; stride, dilation an int or a
    pair (h, w); padding an int, a pair, "same" or "valid"; groups dividing C and OC (groups = C:
    depthwise). activation None, 'none', 'relu', 'sigmoid' or 'tanh', applied as the output is stored.
    Returns y (N, OC, OH, OW), OH = (H + 2·pad_h - dilation_h·(KH-1) - 1) // stride_h + 1 (OW alike).
    """
    s, p, d, g = _conv_args(weight, stride, padding, dilation, groups, "conv2d_forward")
    return _C.conv2d_forward(x, weight, bias, s, p, d, g, activation, out)


def conv2d_backward(dout, x, weight, *, stride=1, padding=0, dilation=1, groups=1, bias=True, need_dx=True,
                    need_dweight=True, accumulate=False, dx=None, dweight=None, dbias=None,
                    input_activation=None):
    """Gradients of y = conv2d(x, weight) + bias given dout = dL/dy (N, OC, OH, OW).

    Returns (dx, dweight, dbias), each None when not asked for (``need_dx``, ``need_dweight``,
    ``bias``). With ``accumulate=True`` dweight and dbias are added into the given arrays; dx is
    always overwritten. ``input_activation`` ('relu', 'sigmoid', 'tanh'): x is that activation's
    output, and dx comes back multiplied by its derivative (the activation's backward, fused).
    The weight gradient has the same bits on any thread count.
    """
    s, p, d, g = _conv_args(weight, stride, padding, dilation, groups, "conv2d_backward")
    return _C.conv2d_backward(dout, x, weight, s, p, d, g, bool(bias), bool(need_dx), bool(need_dweight),
                              bool(accumulate), dx, dweight, dbias, input_activation)


def conv2d_forward_reference(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
                             out=None):
    """conv2d_forward by plain loops in double (the tests' oracle; slow)."""
    s, p, d, g = _conv_args(weight, stride, padding, dilation, groups, "conv2d_forward_reference")
    return _C.conv2d_forward_reference(x, weight, bias, s, p, d, g, activation, out)


def conv2d_backward_reference(dout, x, weight, *, stride=1, padding=0, dilation=1, groups=1, bias=True,
                              need_dx=True, need_dweight=True, accumulate=False, dx=None, dweight=None, dbias=None,
                              input_activation=None):
    """conv2d_backward by plain loops in double (the tests' oracle; slow)."""
    s, p, d, g = _conv_args(weight, stride, padding, dilation, groups, "conv2d_backward_reference")
    return _C.conv2d_backward_reference(dout, x, weight, s, p, d, g, bool(bias), bool(need_dx), bool(need_dweight),
                                        bool(accumulate), dx, dweight, dbias, input_activation)


# ---------------------------------------------------------------- activations
__all__ += [
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward", "softmax", "softmax_backward", "step",
]
# Elementwise functions take x of any shape; out=x computes in place.


def relu(x, out=None):
    """max(x, 0), elementwise; NaN stays NaN, as with np.maximum(x, 0)."""
    return _C.relu(x, out)


def relu_backward(dout, x, out=None):
    """Gradient of relu: dout * heaviside(x, 0), i.e. dout where x > 0, else 0; a NaN in dout or x gives NaN."""
    return _C.relu_backward(dout, x, out)


def leaky_relu(x, negative_slope=0.01, out=None):
    """x where x > 0, else negative_slope * x."""
    return _C.leaky_relu(x, negative_slope, out)


def leaky_relu_backward(dout, x, negative_slope=0.01, out=None):
    """Gradient of leaky_relu: dout where x > 0, else negative_slope * dout."""
    return _C.leaky_relu_backward(dout, x, negative_slope, out)


def sigmoid(x, out=None):
    """1 / (1 + exp(-x)), stable for any x (computed from exp(-|x|))."""
    return _C.sigmoid(x, out)


def sigmoid_backward(dout, y, out=None):
    """Gradient of sigmoid from its output y = sigmoid(x): dout * y * (1 - y)."""
    return _C.sigmoid_backward(dout, y, out)


def tanh(x, out=None):
    """tanh(x), stable for any x."""
    return _C.tanh(x, out)


def tanh_backward(dout, y, out=None):
    """Gradient of tanh from its output y = tanh(x): dout * (1 - y**2)."""
    return _C.tanh_backward(dout, y, out)


def softmax(x, out=None):
    """Softmax over the last axis of a 2-D x (batch, features); each row's max is subtracted first."""
    return _C.softmax(x, out)


def softmax_backward(dout, y, out=None):
    """Gradient of softmax from its output y (rows): y * (dout - sum(dout * y, axis=1, keepdims=True))."""
    return _C.softmax_backward(dout, y, out)


def step(x, out=None):
    """Heaviside step: 1 where x >= 0, else 0, NaN where x is NaN (np.heaviside(x, 1)); forward only, it has
    no useful gradient."""
    return _C.step(x, out)


# ---------------------------------------------------------------- losses
__all__ += ["all_finite", "mse_loss", "l1_loss", "bce_with_logits", "softmax_cross_entropy"]
# Each loss returns (loss, grad): loss a Python float (the sum is kept in double), grad the gradient
# of that loss with respect to the first argument (None when grad=False), written into out if given.
# reduction="mean" divides by the element count (by the batch size for softmax_cross_entropy), "sum"
# does not. A NaN or Inf input raises ValueError naming the argument; it is found from the loss
# itself, so checking costs nothing when the inputs are finite (out may have been written by then).


def all_finite(x):
    """True when no element of ``x`` (float32, C-contiguous, any shape) is NaN or ±Inf: one native pass."""
    return _C.all_finite(x)


def mse_loss(pred, target, reduction="mean", grad=True, out=None):
    """Mean squared error: mean((pred - target)**2); dpred = 2 (pred - target) / n."""
    return _C.mse_loss(pred, target, reduction, grad, out)


def l1_loss(pred, target, reduction="mean", grad=True, out=None):
    """Mean absolute error: mean(|pred - target|); dpred = sign(pred - target) / n (0 where equal)."""
    return _C.l1_loss(pred, target, reduction, grad, out)


def bce_with_logits(logits, target, reduction="mean", grad=True, out=None):
    """Binary cross-entropy on logits, target in [0, 1]:
    mean(max(x, 0) - x t + log1p(exp(-|x|))); dlogits = (sigmoid(x) - t) / n."""
    return _C.bce_with_logits(logits, target, reduction, grad, out)


def softmax_cross_entropy(logits, labels, reduction="mean", grad=True, out=None):
    """Cross-entropy of softmax(logits) (B, NC) against int64 class labels (B,), fused:
    loss = mean(logsumexp(row) - row[label]); dlogits = (softmax(logits) - onehot(labels)) / B."""
    return _C.softmax_cross_entropy(logits, labels, reduction, grad, out)


# ---------------------------------------------------------------- dropout / batchnorm
__all__ += ["dropout", "dropout_backward", "dropout_mask", "batchnorm_forward", "batchnorm_backward"]


def dropout(x, p, seed, out=None):
    """Inverted dropout: x * keep / (1 - p), each element kept with probability 1 - p.

    The mask is a pure function of ``seed`` (an int in [0, 2**64)) and the element's flat index,
    so a seed gives the same mask on every thread count and instruction set, and
    ``dropout_backward`` with the same seed recomputes it. ``p`` must be in [0, 1); p = 0 is the
    identity. ``out`` may be ``x`` itself.
    """
    return _C.dropout(x, p, seed, out)


def dropout_backward(dout, p, seed, out=None):
    """Gradient of ``dropout(x, p, seed)``: dout * keep / (1 - p), the mask rebuilt from ``seed``."""
    return _C.dropout_backward(dout, p, seed, out)


def dropout_mask(shape, p, seed):
    """The keep mask (float32 ones and zeros) that ``dropout`` with this p and seed applies to an
    array of this shape: ``dropout(x, p, seed) == x * dropout_mask(x.shape, p, seed) / (1 - p)``."""
    ones = np.ones(shape, dtype=np.float32)
    if ones.size == 0:
        raise ValueError(f"dropout_mask: shape {ones.shape} is empty")
    try:
        kept = _C.dropout(ones, p, seed, ones)
    except (TypeError, ValueError) as e:  # p or seed refused: say so under the name the user called
        raise type(e)(str(e).replace("dropout:", "dropout_mask:", 1)) from None
    return (kept != 0).astype(np.float32)


__all__ += ["dropout2d", "dropout2d_backward"]


def dropout2d(x, p, seed, out=None):
    """Channel dropout of x (N, C, H, W), as ``torch.nn.functional.dropout2d`` in training: each (n, c)
    plane is kept with probability 1 - p and scaled by 1 / (1 - p), or zeroed as a whole.

    Plane n*C + c is kept where ``dropout_mask((N*C,), p, seed)`` is 1: the mask depends only on the
    seed and the plane's index, never on the thread count. ``out`` may be ``x`` itself."""
    return _C.dropout2d(x, p, seed, out)


def dropout2d_backward(dout, p, seed, out=None):
    """Gradient of ``dropout2d(x, p, seed)``: dout with the same planes kept (scaled) and zeroed."""
    return _C.dropout2d_backward(dout, p, seed, out)


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
    return _C.batchnorm_forward(x, gamma, beta, running_mean, running_var, bool(training), momentum, eps, out)


def batchnorm_backward(dout, x, gamma, mean, invstd, *, dx=None, dgamma=None, dbeta=None):
    """Gradients of the training-mode ``batchnorm_forward``: returns (dx, dgamma, dbeta).

    dbeta = sum(dout), dgamma = sum(dout * xhat) over the batch, and
    dx = gamma * invstd / B * (B * dout - dbeta - xhat * dgamma), xhat = (x - mean) * invstd.
    """
    return _C.batchnorm_backward(dout, x, gamma, mean, invstd, dx, dgamma, dbeta)


__all__ += ["batchnorm2d_forward", "batchnorm2d_backward"]


def batchnorm2d_forward(x, gamma, beta, running_mean, running_var, *, training, momentum=0.1, eps=1e-5,
                        out=None):
    """BatchNorm2d over x (N, C, H, W): ``batchnorm_forward`` with the statistics of each channel taken
    over its N*H*W values (the running variance unbiased by n / (n - 1), n = N*H*W), as
    ``torch.nn.functional.batch_norm`` on 4-D input. Returns (y, mean, invstd) when training, else
    (y, None, None)."""
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"batchnorm2d_forward: training must be a bool, got {type(training).__name__}")
    return _C.batchnorm2d_forward(x, gamma, beta, running_mean, running_var, bool(training), momentum, eps, out)


def batchnorm2d_backward(dout, x, gamma, mean, invstd, *, dx=None, dgamma=None, dbeta=None):
    """Gradients of the training-mode ``batchnorm2d_forward``: returns (dx, dgamma, dbeta), sums over
    the n = N*H*W values of each channel: dx = gamma * invstd / n * (n * dout - dbeta - xhat * dgamma)."""
    return _C.batchnorm2d_backward(dout, x, gamma, mean, invstd, dx, dgamma, dbeta)


# ---------------------------------------------------------------- pooling (NCHW)
__all__ += ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d",
            "adaptive_avg_pool2d_backward"]
# x is float32 (N, C, H, W), C-contiguous. kernel_size, stride and padding are each an int or an (h, w)
# pair; stride None means kernel_size (PyTorch's default). Output size (floor mode, as PyTorch's
# default ceil_mode=False): OH = (H + 2*padding - kernel_size) // stride + 1. padding must be at most half
# of kernel_size and the kernel no larger than the padded input (ValueError naming the argument).


def _pool_args(who, kernel_size, stride, padding):
    k = check_pair(kernel_size, who, "kernel_size")
    s = k if stride is None else check_pair(stride, who, "stride")
    p = check_pair(padding, who, "padding")
    return k + s + p


def _input_shape(input_shape, who):
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 4:
        raise ValueError(f"{who}: input_shape must be the 4 sizes (N, C, H, W) of the forward's input, "
                         f"got {input_shape!r}")
    return tuple(check_int(v, who, "input_shape") for v in input_shape)


def max_pool2d(x, kernel_size, stride=None, padding=0, out=None, indices=None):
    """Max pooling, as ``torch.nn.functional.max_pool2d(x, kernel_size, stride, padding, return_indices=True)``.

    Returns (out, indices): out (N, C, OH, OW) float32, indices (N, C, OH, OW) int64, the flat index
    ih * W + iw of each maximum in its input plane, for ``max_pool2d_backward``. Padding counts as -inf;
    the first maximum wins ties and a NaN in a window is its maximum (NaN propagates), as in PyTorch.
    """
    return _C.max_pool2d(x, *_pool_args("max_pool2d", kernel_size, stride, padding), out, indices)


def max_pool2d_backward(dout, indices, input_shape, out=None):
    """Gradient of ``max_pool2d``: dx of ``input_shape`` (N, C, H, W), zero except dx[indices] += dout."""
    return _C.max_pool2d_backward(dout, indices, *_input_shape(input_shape, "max_pool2d_backward"), out)


def avg_pool2d(x, kernel_size, stride=None, padding=0, out=None):
    """Average pooling, as ``torch.nn.functional.avg_pool2d`` with its defaults (count_include_pad=True,
    ceil_mode=False): every window is divided by kernel_size[0] * kernel_size[1], padding included."""
    return _C.avg_pool2d(x, *_pool_args("avg_pool2d", kernel_size, stride, padding), out)


def avg_pool2d_backward(dout, input_shape, kernel_size, stride=None, padding=0, out=None):
    """Gradient of ``avg_pool2d``: each input element gets dout / (kh * kw) from every window it lies in."""
    who = "avg_pool2d_backward"
    return _C.avg_pool2d_backward(dout, *_input_shape(input_shape, who), *_pool_args(who, kernel_size, stride, padding),
                                  out)


def adaptive_avg_pool2d(x, output_size, out=None):
    """Adaptive average pooling to ``output_size`` (an int or (OH, OW); None in a pair keeps that input
    size), as ``torch.nn.functional.adaptive_avg_pool2d``: output (i, j) averages rows
    [floor(i*H/OH), ceil((i+1)*H/OH)) and the columns likewise. output_size 1 is global average pooling."""
    oh, ow = check_pair(output_size, "adaptive_avg_pool2d", "output_size", allow_none=True)
    shape = getattr(x, "shape", ())
    if (oh is None or ow is None) and len(shape) == 4:
        oh = shape[2] if oh is None else oh
        ow = shape[3] if ow is None else ow
    if oh is None or ow is None:  # x is not 4-D: let the binding say so
        oh, ow = oh or 1, ow or 1
    return _C.adaptive_avg_pool2d(x, oh, ow, out)


def adaptive_avg_pool2d_backward(dout, input_shape, out=None):
    """Gradient of ``adaptive_avg_pool2d`` (the output size is dout's): each input element gets
    dout / (window size) from every window it lies in."""
    return _C.adaptive_avg_pool2d_backward(dout, *_input_shape(input_shape, "adaptive_avg_pool2d_backward"), out)


# ---------------------------------------------------------------- optimizer updates
__all__ += ["sgd_step", "sgd_step_many", "adam_step", "adam_step_many"]


def sgd_step(param, grad, momentum_buf=None, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, first_step=False, check_finite=True):
    """One step of PyTorch's SGD, in place on ``param`` (and ``momentum_buf``); returns ``param``.

        g = grad + weight_decay * param
        if momentum != 0:
            buf = g if first_step else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        param -= lr * g

    ``momentum_buf`` is required when momentum != 0 (its contents are ignored when first_step).
    In-place arrays must be float32, C-contiguous, writeable and must not overlap: never copied.
    ``check_finite``: a ``grad`` holding NaN or Inf raises ValueError and nothing is written (the check
    reads grad once more, in the same native call); False updates anyway, as PyTorch does.
    """
    _C.sgd_step(param, grad, momentum_buf, lr, momentum, dampening, weight_decay, nesterov, first_step,
                check_finite)
    return param


def sgd_step_many(params, grads, momentum_bufs=None, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                  nesterov=False, first_step=False, check_finite=True):
    """``sgd_step`` on every array of ``params`` (a list) with the same hyper-parameters, in one native
    call whose threads split all the arrays together (PyTorch's foreach SGD): for a whole model this
    costs one parallel region instead of one per array. ``grads`` and ``momentum_bufs`` are lists
    of the same length; nothing may share memory. Returns ``params``. ``check_finite``: as in
    ``sgd_step``; when any of ``grads`` holds NaN or Inf no array at all is written.
    """
    _C.sgd_step_many(params, grads, momentum_bufs, lr, momentum, dampening, weight_decay, nesterov, first_step,
                     check_finite)
    return params


def adam_step(param, grad, m, v, *, lr, step, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              decoupled=False, check_finite=True):
    """One Adam step (AdamW when ``decoupled``), in place on ``param``, ``m`` and ``v``; returns ``param``.

        g = grad + weight_decay * param        (Adam; AdamW instead does param *= 1 - lr * weight_decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        param -= lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - beta1**step), v_hat = v / (1 - beta2**step)

    ``step`` counts updates from 1 (the first call has step=1). ``check_finite``: as in ``sgd_step``.
    """
    check_int(step, "adam_step", "step")
    _C.adam_step(param, grad, m, v, lr, step, beta1, beta2, eps, weight_decay, decoupled, check_finite)
    return param


def adam_step_many(params, grads, ms, vs, *, lr, steps, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                   decoupled=False, check_finite=True):
    """``adam_step`` on every array of ``params`` (a list) with the same hyper-parameters, in one native
    call whose threads split all the arrays together (PyTorch's foreach Adam). ``grads``, ``ms``,
    ``vs`` and ``steps`` (each array's step count, from 1) are lists of the same length; nothing may
    share memory. Returns ``params``. ``check_finite``: as in ``sgd_step_many``.
    """
    _C.adam_step_many(params, grads, ms, vs, lr, steps, beta1, beta2, eps, weight_decay, decoupled,
                      check_finite)
    return params


# ---------------------------------------------------------------- data
__all__ += ["gather_rows"]


def gather_rows(src, idx, out=None):
    """out[i] = src[idx[i]]: the rows (first axis) of ``src`` picked by ``idx``, as ``src[idx]`` gives them.

    ``src``: C-contiguous array of any numeric dtype and rank >= 1 (rows are copied as bytes);
    ``idx``: int64 (B,), every index checked against ``len(src)`` (negative ones are refused, not
    wrapped: ValueError naming the first bad position); ``out``: (B,) + src.shape[1:] of src's dtype,
    C-contiguous, writeable, sharing no memory with src or idx (allocated when None). Single-threaded,
    without the GIL (the DataLoader's background thread, ``fastdl.data``, runs the same kernel). Returns
    ``out``; after a bad index, the rows before it have been written.
    """
    return _C.gather_rows(src, idx, out)
