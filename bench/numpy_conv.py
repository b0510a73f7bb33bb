"""Convolution, max pooling and BatchNorm2d in plain NumPy: what bench_conv.py compares fastdl with.

The convolution is the textbook im2col one: ``numpy.lib.stride_tricks.sliding_window_view`` gives the
(kernel-sized) windows of the padded input as a view, one copy lays them out as the im2col matrix
(N·OH·OW, C·KH·KW), and ``np.matmul`` (OpenBLAS) does the product. Gradients:

- weight: dW = dYᵀ · cols, with dY as the (N·OH·OW, OC) matrix (the forward's cols recomputed: a
  weight-gradient call gets x, as fastdl's and PyTorch's do);
- input: dcols = dY · W, then col2im: each of the KH·KW kernel taps adds its slice of dcols into the
  strided window of the padded input gradient (KH·KW vectorised adds), the padding cut off at the end.

NCHW float32 in and out (C-contiguous), groups = 1. ``check_against_loops`` compares all three with
plain float64 loops on small sizes.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def out_size(h, k, stride, padding, dilation=1):
    return (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def im2col(x, kh, kw, stride, padding, dilation=1):
    """(N, C, H, W) -> the im2col matrix (N·OH·OW, C·KH·KW) (one copy), and (OH, OW)."""
    n, c, h, w = x.shape
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ekh, ekw = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
    win = sliding_window_view(x, (ekh, ekw), axis=(2, 3))       # (N, C, H', W', ekh, ekw), a view
    win = win[:, :, ::stride, ::stride, ::dilation, ::dilation]  # (N, C, OH, OW, KH, KW)
    oh, ow = win.shape[2], win.shape[3]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)  # the copy
    return cols, (oh, ow)


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1):
    """y = conv(x, w) + b: (N, C, H, W), (OC, C, KH, KW), (OC,) -> (N, OC, OH, OW), C-contiguous."""
    n = x.shape[0]
    oc, _, kh, kw = w.shape
    cols, (oh, ow) = im2col(x, kh, kw, stride, padding, dilation)
    y = cols @ w.reshape(oc, -1).T                  # (N·OH·OW, OC)
    if b is not None:
        y += b
    return np.ascontiguousarray(y.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2))


def _dy_matrix(dy):
    n, oc, oh, ow = dy.shape
    return dy.transpose(0, 2, 3, 1).reshape(n * oh * ow, oc)   # a copy (NCHW -> rows of pixels)


def conv2d_backward_weight(dy, x, w_shape, stride=1, padding=0, dilation=1, bias=False):
    """dW = dYᵀ · cols (and db = sum of dY over N, OH, OW when ``bias``)."""
    oc, c, kh, kw = w_shape
    cols, _ = im2col(x, kh, kw, stride, padding, dilation)
    dym = _dy_matrix(dy)
    dw = (dym.T @ cols).reshape(oc, c, kh, kw)
    return (dw, dy.sum(axis=(0, 2, 3))) if bias else dw


def conv2d_backward_input(dy, x_shape, w, stride=1, padding=0, dilation=1):
    """dX: dcols = dY · W, scattered back by col2im (one strided add per kernel tap)."""
    n, c, h, wd = x_shape
    oc, _, kh, kw = w.shape
    _, _, oh, ow = dy.shape
    dcols = (_dy_matrix(dy) @ w.reshape(oc, -1)).reshape(n, oh, ow, c, kh, kw)
    dxp = np.zeros((n, c, h + 2 * padding, wd + 2 * padding), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation, j * dilation
            dxp[:, :, r0:r0 + stride * (oh - 1) + 1:stride, c0:c0 + stride * (ow - 1) + 1:stride] += \
                dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    if padding:
        return np.ascontiguousarray(dxp[:, :, padding:padding + h, padding:padding + wd])
    return dxp


# ---------------------------------------------------------------------------- pooling, batch norm


def max_pool2d_forward(x, k=2):
    """k x k max pooling, stride k, no padding (H, W multiples of k): (y, argmax within each window)."""
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // k, k, w // k, k).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // k, w // k, k * k)
    arg = win.argmax(axis=-1)
    return np.take_along_axis(win, arg[..., None], axis=-1)[..., 0], arg


def max_pool2d_backward(dy, arg, x_shape, k=2):
    """dX: each window's gradient goes to its (first) maximum."""
    n, c, h, w = x_shape
    dwin = np.zeros((n, c, h // k, w // k, k * k), dtype=dy.dtype)
    np.put_along_axis(dwin, arg[..., None], dy[..., None], axis=-1)
    return np.ascontiguousarray(dwin.reshape(n, c, h // k, w // k, k, k).transpose(0, 1, 2, 4, 3, 5)
                                .reshape(n, c, h, w))


def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
    """Training mode: per-channel batch mean and biased variance over (N, H, W). Returns (y, xhat, invstd)."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    xc = x - mean
    var = np.mean(xc * xc, axis=(0, 2, 3), keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = xc * invstd
    return xhat * gamma[None, :, None, None] + beta[None, :, None, None], xhat, invstd


def batchnorm2d_backward(dy, xhat, invstd, gamma):
    """(dx, dgamma, dbeta): dx = invstd / M · (M·dxhat - Σdxhat - xhat·Σ(dxhat·xhat)), dxhat = dy·gamma."""
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = np.sum(dy * xhat, axis=(0, 2, 3))
    g = (gamma * invstd.reshape(-1))[None, :, None, None]
    dx = g * (dy - (dbeta / m)[None, :, None, None] - xhat * (dgamma / m)[None, :, None, None])
    return dx, dgamma, dbeta


# ---------------------------------------------------------------------------- the check


def conv2d_loops(x, w, b, stride, padding, dilation=1):
    """float64 plain loops over output pixels (the oracle of check_against_loops)."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    oh, ow = out_size(h, kh, stride, padding, dilation), out_size(wd, kw, stride, padding, dilation)
    xp = np.zeros((n, c, h + 2 * padding, wd + 2 * padding))
    xp[:, :, padding:padding + h, padding:padding + wd] = x
    y = np.zeros((n, oc, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride:i * stride + dilation * (kh - 1) + 1:dilation,
                       j * stride:j * stride + dilation * (kw - 1) + 1:dilation]
            y[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return y + (0 if b is None else b.astype(np.float64)[None, :, None, None])


def check_against_loops(seed=0) -> float:
    """Largest relative error of forward, dX and dW (and BatchNorm2d, max pooling) against float64 loops /
    finite sums on small odd sizes; raises AssertionError when one is wrong."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for (n, c, h, w, oc, k, s, p, d) in [(2, 3, 7, 9, 4, 3, 1, 1, 1), (3, 2, 8, 6, 5, 3, 2, 2, 1),
                                         (2, 1, 9, 9, 3, 5, 1, 2, 1), (1, 4, 10, 7, 2, 3, 2, 0, 2)]:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = rng.standard_normal((oc, c, k, k)).astype(np.float32)
        b = rng.standard_normal(oc).astype(np.float32)
        ref = conv2d_loops(x, wt, b, s, p, d)
        y = conv2d_forward(x, wt, b, s, p, d)
        dy = rng.standard_normal(ref.shape).astype(np.float32)
        # dX and dW from the loops' linearity: <dy, conv(x, w)> differentiated exactly in float64
        x64, w64, dy64 = x.astype(np.float64), wt.astype(np.float64), dy.astype(np.float64)
        dw_ref = np.zeros_like(w64)
        for idx in np.ndindex(*w64.shape):
            e = np.zeros_like(w64)
            e[idx] = 1.0
            dw_ref[idx] = np.sum(dy64 * conv2d_loops(x64, e, None, s, p, d))
        dx_ref = np.zeros_like(x64)
        for idx in np.ndindex(*x64.shape):
            e = np.zeros_like(x64)
            e[idx] = 1.0
            dx_ref[idx] = np.sum(dy64 * conv2d_loops(e, w64, None, s, p, d))
        dw, db = conv2d_backward_weight(dy, x, wt.shape, s, p, d, bias=True)
        dx = conv2d_backward_input(dy, x.shape, wt, s, p, d)
        for got, want, what in ((y, ref, "forward"), (dw, dw_ref, "dW"), (dx, dx_ref, "dX"),
                                (db, dy64.sum(axis=(0, 2, 3)), "db")):
            assert got.shape == want.shape and got.dtype == np.float32, (what, got.shape, want.shape, got.dtype)
            err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
            assert err < 1e-5, f"numpy_conv {what} wrong: error {err:.2e}"
            worst = max(worst, err)
    # max pooling and batch norm against their definitions
    x = rng.standard_normal((2, 3, 6, 8)).astype(np.float32)
    y, arg = max_pool2d_forward(x)
    want = np.array([[[[x[a, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max() for j in range(4)] for i in range(3)]
                      for c in range(3)] for a in range(2)])
    assert np.array_equal(y, want), "numpy_conv max pool forward wrong"
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = max_pool2d_backward(dy, arg, x.shape)
    assert np.isclose(dx.sum(), dy.sum(), rtol=1e-5) and np.array_equal(dx != 0, x == np.repeat(np.repeat(
        y, 2, 2), 2, 3)), "numpy_conv max pool backward wrong"
    gamma, beta = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    y, xhat, invstd = batchnorm2d_forward(x, gamma, beta)
    dy = rng.standard_normal(x.shape)
    dx, dgamma, dbeta = batchnorm2d_backward(dy, xhat.astype(np.float64), invstd.astype(np.float64),
                                             gamma.astype(np.float64))
    f = lambda xx: np.sum(dy * batchnorm2d_forward(xx, gamma.astype(np.float64), beta.astype(np.float64))[0])  # noqa: E731
    x64, h = x.astype(np.float64), 1e-6
    for idx in [(0, 0, 0, 0), (1, 2, 5, 7), (0, 1, 3, 2)]:
        e = np.zeros_like(x64)
        e[idx] = h
        fd = (f(x64 + e) - f(x64 - e)) / (2 * h)
        assert abs(fd - dx[idx]) < 1e-5 * (1 + abs(fd)), f"numpy_conv batchnorm dX wrong: {dx[idx]} vs {fd}"
    return worst
