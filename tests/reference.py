"""Float64 references and shared bad-input tables for the tests: one copy of each, imported by the test
files (``from reference import ...``). Each reference is written the plain way, from the math, independently
of the kernel it checks.

Tolerance rule of the products (``assert_close``): elementwise |got - ref| <= 4e-6 * (sum of |products| +
|bias| + |accumulated value|), plus 1e-6 * |ref| for the vectorised exp of sigmoid / tanh.
"""
import math

import numpy as np

from fastdl import _C

_ORDER = ["generic", "avx2", "avx512"]
ISAS = _ORDER[: _ORDER.index(_C.best_isa()) + 1]  # the instruction-set paths this CPU executes
F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal: kernels run with denormals flushed
RTOL = 4e-6
ACT_RTOL = 1e-6


def f64(a):
    return np.asarray(a, dtype=np.float64)


# ---------------------------------------------------------------- products (matmul, linear)


def act64(z, act):
    if act in (None, "none"):
        return z
    if act == "relu":
        return np.maximum(z, 0.0)
    if act == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if act == "tanh":
        return np.tanh(z)
    raise AssertionError(act)


def ref_matmul(a, b, trans_a=False, trans_b=False, c0=None, bias=None, act=None):
    """(value, scale): value = act([c0 +] op(a) @ op(b) [+ bias]) in float64, scale as in the docstring."""
    A = a.astype(np.float64).T if trans_a else a.astype(np.float64)
    B = b.astype(np.float64).T if trans_b else b.astype(np.float64)
    z = A @ B
    scale = np.abs(A) @ np.abs(B)
    if c0 is not None:
        z = z + c0
        scale = scale + np.abs(c0)
    if bias is not None:
        z = z + bias
        scale = scale + np.abs(bias)
    return act64(z, act), scale


def assert_close(got, want, scale, act=None):
    assert got.dtype == np.float32 and got.shape == want.shape
    tol = RTOL * scale + (ACT_RTOL * np.abs(want) if act in ("sigmoid", "tanh") else 0.0) + 1e-30
    err = np.abs(got.astype(np.float64) - want)
    bad = ~(err <= tol)  # NaN counts as bad
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / tol, 0)), got.shape)
        raise AssertionError(
            f"{bad.sum()} of {got.size} elements off; worst at {i}: got {got[i]!r}, want {want[i]!r}, "
            f"tolerance {tol[i]:.3g}"
        )


# ---------------------------------------------------------------- activations


def ref_relu(x):
    return np.maximum(f64(x), 0.0)  # NaN -> NaN, as np.maximum


def ref_leaky(x, s):
    x = f64(x)
    return np.where(x > 0, x, s * x)


def ref_sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-f64(x)))


def ref_tanh(x):
    return np.tanh(f64(x))


def ref_softmax(x):
    x = f64(x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_step(x):
    return np.heaviside(f64(x), 1.0)  # NaN -> NaN


def assert_close_flushed(got, want, rtol):
    """got (float32) == want (float64) to rtol, except that values below the smallest normal float32
    may come out as 0 (the kernels run with denormals flushed to zero)."""
    got, want = f64(got), f64(want)
    assert np.all(np.isfinite(got))
    tiny = np.abs(want) < F32_TINY
    np.testing.assert_allclose(got[~tiny], want[~tiny], rtol=rtol, atol=0)
    assert np.all(np.abs(got[tiny]) <= F32_TINY)


def numeric_grad_elementwise(f, x, h=1e-2):
    """Central differences of an elementwise float32 function, all elements at once (output i depends on
    input i only); the step is the one float32 actually took."""
    xp, xm = (x + np.float32(h)).astype(np.float32), (x - np.float32(h)).astype(np.float32)
    return (f64(f(xp)) - f64(f(xm))) / (f64(xp) - f64(xm))


# ---------------------------------------------------------------- losses


def ref_mse(p, t, reduction):
    d = f64(p) - f64(t)
    n = d.size if reduction == "mean" else 1
    return (d**2).sum() / n, 2 * d / n


def ref_l1(p, t, reduction):
    d = f64(p) - f64(t)
    n = d.size if reduction == "mean" else 1
    return np.abs(d).sum() / n, np.sign(d) / n


def ref_bce(x, t, reduction):
    """Textbook -[t log σ + (1-t) log(1-σ)]: fine in float64 for |x| < ~30."""
    x, t = f64(x), f64(t)
    s = 1 / (1 + np.exp(-x))
    n = x.size if reduction == "mean" else 1
    return -(t * np.log(s) + (1 - t) * np.log(1 - s)).sum() / n, (s - t) / n


def ref_bce_stable(x, t, reduction):
    """Same loss for any x: log(1 + e^x) - x t = logaddexp(0, x) - x t, in float64."""
    x, t = f64(x), f64(t)
    n = x.size if reduction == "mean" else 1
    with np.errstate(over="ignore", invalid="ignore"):
        s = np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))
    return (np.logaddexp(0, x) - x * t).sum() / n, (s - t) / n


def ref_ce(x, labels, reduction):
    x = f64(x)
    B, NC = x.shape
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    p = e / e.sum(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(e.sum(axis=1))
    n = B if reduction == "mean" else 1
    g = p.copy()
    rows = np.arange(B)
    # the label's entry p - 1 = -(sum of the other exps)/S: summed directly, 1 - p cancels even in float64
    others = np.where(np.arange(NC) == labels[:, None], 0.0, e).sum(axis=1)
    g[rows, labels] = -others / e.sum(axis=1)
    return (lse - x[rows, labels]).sum() / n, g / n


def numeric_grad(loss_of, a, h):
    num = np.zeros(a.shape)
    for i in range(a.size):
        ap, am = a.copy(), a.copy()
        ap.flat[i] += np.float32(h)
        am.flat[i] -= np.float32(h)
        num.flat[i] = (loss_of(ap) - loss_of(am)) / (f64(ap.flat[i]) - f64(am.flat[i]))
    return num


# ---------------------------------------------------------------- batch normalization (naive loops)


def ref_batchnorm_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5):
    x = x.astype(np.float64)
    B, C = x.shape
    y = np.empty((B, C))
    mean, invstd = np.empty(C), np.empty(C)
    rm, rv = running_mean.astype(np.float64).copy(), running_var.astype(np.float64).copy()
    for c in range(C):
        col = x[:, c]
        mu = sum(col) / B
        var = sum((v - mu) ** 2 for v in col) / B  # biased: used to normalise
        mean[c], invstd[c] = mu, 1.0 / np.sqrt(var + eps)
        y[:, c] = (col - mu) * invstd[c] * gamma[c] + beta[c]
        rm[c] = (1 - momentum) * rm[c] + momentum * mu
        rv[c] = (1 - momentum) * rv[c] + momentum * var * B / (B - 1)  # unbiased in the running estimate
    return y, mean, invstd, rm, rv


def ref_batchnorm_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    x = x.astype(np.float64)
    y = np.empty_like(x)
    for c in range(x.shape[1]):
        y[:, c] = (x[:, c] - running_mean[c]) / np.sqrt(float(running_var[c]) + eps) * gamma[c] + beta[c]
    return y


def ref_batchnorm_backward(dout, x, gamma, eps=1e-5):
    """Gradients of the training forward, from its batch statistics in float64."""
    dout, x = dout.astype(np.float64), x.astype(np.float64)
    B, C = x.shape
    dx, dgamma, dbeta = np.empty((B, C)), np.empty(C), np.empty(C)
    for c in range(C):
        mu = x[:, c].mean()
        invstd = 1.0 / np.sqrt(((x[:, c] - mu) ** 2).mean() + eps)
        xhat = (x[:, c] - mu) * invstd
        dbeta[c] = dout[:, c].sum()
        dgamma[c] = (dout[:, c] * xhat).sum()
        # y = gamma*xhat + beta; d xhat_i / d x_j = invstd*(delta_ij - 1/B - xhat_i xhat_j / B)
        dxhat = dout[:, c] * gamma[c]
        for j in range(B):
            dx[j, c] = invstd * sum(dxhat[i] * ((i == j) - 1.0 / B - xhat[i] * xhat[j] / B) for i in range(B))
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- dropout: the counter-based mask
# Written from the description at the top of csrc/dropout.cpp, independently of the kernel.

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def fmix32(h):
    h = h.astype(np.uint64)  # products of two uint32 fit in uint64; keep the low 32 bits
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    h ^= h >> 16
    return h


def reference_keep(n, p, seed, start=0):
    """Boolean keep mask for flat indices start .. start+n-1."""
    key = splitmix64(seed)
    k0, k1 = key & M32, key >> 32
    i = np.arange(start, start + n, dtype=np.uint64)
    lo, hi = i & np.uint64(M32), i >> np.uint64(32)
    hikey = np.uint64(k1) ^ ((hi * np.uint64(0x9E3779B9)) & np.uint64(M32))
    bits = fmix32(fmix32(lo ^ np.uint64(k0)) ^ hikey)
    threshold = math.floor(float(np.float32(p)) * 2.0**32)
    return bits >= threshold


def reference_dropout(x, p, seed):
    keep = reference_keep(x.size, p, seed).reshape(x.shape)
    return np.where(keep, x.astype(np.float64) / (1.0 - float(np.float32(p))), 0.0)


# ---------------------------------------------------------------- optimizer updates (PyTorch's formulas)


def ref_sgd_step(param, grad, buf, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
            first_step=False):
    """torch.optim.SGD for one parameter, element by element; returns (param, buf)."""
    param, buf = param.astype(np.float64).copy(), None if buf is None else buf.astype(np.float64).copy()
    for i in range(param.size):
        g = float(grad.flat[i]) + weight_decay * param.flat[i]
        if momentum != 0:
            buf.flat[i] = g if first_step else momentum * buf.flat[i] + (1 - dampening) * g
            g = g + momentum * buf.flat[i] if nesterov else buf.flat[i]
        param.flat[i] -= lr * g
    return param, buf


def ref_adam_step(param, grad, m, v, *, lr, step, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    """torch.optim.Adam / AdamW for one parameter; returns (param, m, v)."""
    param, m, v = (a.astype(np.float64).copy() for a in (param, m, v))
    for i in range(param.size):
        g = float(grad.flat[i])
        if decoupled:
            param.flat[i] *= 1 - lr * weight_decay
        else:
            g += weight_decay * param.flat[i]
        m.flat[i] = beta1 * m.flat[i] + (1 - beta1) * g
        v.flat[i] = beta2 * v.flat[i] + (1 - beta2) * g * g
        m_hat = m.flat[i] / (1 - beta1**step)
        v_hat = v.flat[i] / (1 - beta2**step)
        param.flat[i] -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return param, m, v


# ---------------------------------------------------------------- bad inputs shared by every kernel's tests


def bad_float32_arrays(a):
    """[(kind, a bad stand-in for the float32 array ``a``, exception type, words its message holds)]: the
    ways an array argument can be wrong in kind, which every binding refuses the same way."""
    strided = np.repeat(a, 2, axis=-1)[..., ::2] if a.ndim else a
    cases = [
        ("float64", a.astype(np.float64), TypeError, "float32"),
        ("float16", a.astype(np.float16), TypeError, "float32"),
        ("int", a.astype(np.int64), TypeError, "float32"),
        ("strided", strided, TypeError, "C-contiguous"),
        ("list", a.tolist(), TypeError, "ndarray"),
        ("None", None, TypeError, "ndarray"),
    ]
    if a.ndim == 2 and min(a.shape) > 1:
        cases.append(("fortran", np.asfortranarray(a), TypeError, "C-contiguous"))
    return cases


# ---------------------------------------------------------------- convolution (conv2d_forward / backward)


def _conv_geometry(x, w, stride, padding, dilation):
    (sh, sw), (dh, dw) = stride, dilation
    top, left, bottom, right = padding
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    return oh, ow


def _conv_taps(x, w, stride, padding, dilation, groups):
    """For each group g and kernel tap (kh, kw): (output channels, input channels, the input pixels that tap
    reads for every output pixel, (N, C/groups, OH, OW) views of the zero-padded float64 input, its slices)."""
    (sh, sw), (dh, dw) = stride, dilation
    top, left, bottom, right = padding
    n, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    oh, ow = _conv_geometry(x, w, stride, padding, dilation)
    xp = np.zeros((n, c, h + top + bottom, wd + left + right))
    xp[:, :, top:top + h, left:left + wd] = x
    ocg = oc // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
                yield (slice(g * ocg, (g + 1) * ocg), slice(g * cg, (g + 1) * cg), i, j, xp, rows, cols)


def ref_conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, act=None):
    """(value, scale) of y = act(conv2d(x, w) + b) in float64: y[n,o,p,q] = Σ_c,i,j x[n, c, p·sh - top + i·dh,
    q·sw - left + j·dw] · w[o, c, i, j] (zero outside x), summed tap by tap; scale the same sum of |terms|."""
    x, w = f64(x), f64(w)
    oh, ow = _conv_geometry(x, w, stride, padding, dilation)
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    scale = np.zeros_like(y)
    for o, c, i, j, xp, rows, cols in _conv_taps(x, w, stride, padding, dilation, groups):
        patch = xp[:, c, rows, cols]
        y[:, o] += np.einsum("nchw,oc->nohw", patch, w[o, :, i, j])
        scale[:, o] += np.einsum("nchw,oc->nohw", np.abs(patch), np.abs(w[o, :, i, j]))
    if b is not None:
        y += f64(b)[None, :, None, None]
        scale += np.abs(f64(b))[None, :, None, None]
    return act64(y, act), scale


def ref_conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """((dx, dx_scale), (dw, dw_scale), (db, db_scale)) of y = conv2d(x, w) + b in float64, from the
    forward's sum: dx gathers dy·w back onto the pixels each tap read, dw[o,c,i,j] = Σ dy · x at the tap."""
    dy, x, w = f64(dy), f64(x), f64(w)
    top, left = padding[0], padding[1]
    h, wd = x.shape[2:]
    dxp = dxs = None
    dw, dws = np.zeros_like(w), np.zeros_like(w)
    for o, c, i, j, xp, rows, cols in _conv_taps(x, w, stride, padding, dilation, groups):
        if dxp is None:
            dxp, dxs = np.zeros_like(xp), np.zeros_like(xp)
        dxp[:, c, rows, cols] += np.einsum("nohw,oc->nchw", dy[:, o], w[o, :, i, j])
        dxs[:, c, rows, cols] += np.einsum("nohw,oc->nchw", np.abs(dy[:, o]), np.abs(w[o, :, i, j]))
        patch = xp[:, c, rows, cols]
        dw[o, :, i, j] = np.einsum("nohw,nchw->oc", dy[:, o], patch)
        dws[o, :, i, j] = np.einsum("nohw,nchw->oc", np.abs(dy[:, o]), np.abs(patch))
    crop = (slice(None), slice(None), slice(top, top + h), slice(left, left + wd))
    db = dy.sum(axis=(0, 2, 3))
    return (dxp[crop], dxs[crop]), (dw, dws), (db, np.abs(dy).sum(axis=(0, 2, 3)))

# ---------------------------------------------------------------- pooling (NCHW, plain loops, PyTorch's rules)


def _pool_geometry(shape, k, s, p):
    N, C, H, W = shape
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    return N, C, H, W, kh, kw, sh, sw, ph, pw, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1


def ref_max_pool2d(x, k, s, p):
    """(out float64, indices int64): window maxima with -inf padding, visited row-major; a value replaces
    the maximum when greater or NaN (first index on ties, the last NaN wins), as PyTorch's CPU kernel."""
    N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW = _pool_geometry(x.shape, k, s, p)
    out, idx = np.empty((N, C, OH, OW)), np.empty((N, C, OH, OW), np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    h0, w0 = oh * sh - ph, ow * sw - pw
                    best, at = -math.inf, max(h0, 0) * W + max(w0, 0)
                    for ih in range(max(h0, 0), min(h0 + kh, H)):
                        for iw in range(max(w0, 0), min(w0 + kw, W)):
                            v = float(x[n, c, ih, iw])
                            if v > best or math.isnan(v):
                                best, at = v, ih * W + iw
                    out[n, c, oh, ow], idx[n, c, oh, ow] = best, at
    return out, idx


def ref_max_pool2d_backward(dout, idx, input_shape):
    dx = np.zeros(input_shape)
    N, C, H, W = input_shape
    for n, c, oh, ow in np.ndindex(dout.shape):
        i = idx[n, c, oh, ow]
        dx[n, c, i // W, i % W] += dout[n, c, oh, ow]
    return dx


def ref_avg_pool2d(x, k, s, p):
    """Window sums over the image part divided by kh*kw (count_include_pad=True, floor mode)."""
    N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW = _pool_geometry(x.shape, k, s, p)
    out = np.empty((N, C, OH, OW))
    for n, c, oh, ow in np.ndindex(out.shape):
        h0, w0 = oh * sh - ph, ow * sw - pw
        total = 0.0
        for ih in range(max(h0, 0), min(h0 + kh, H)):
            for iw in range(max(w0, 0), min(w0 + kw, W)):
                total += float(x[n, c, ih, iw])
        out[n, c, oh, ow] = total / (kh * kw)
    return out


def ref_avg_pool2d_backward(dout, input_shape, k, s, p):
    N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW = _pool_geometry(input_shape, k, s, p)
    dx = np.zeros(input_shape)
    for n, c, oh, ow in np.ndindex(dout.shape):
        h0, w0 = oh * sh - ph, ow * sw - pw
        for ih in range(max(h0, 0), min(h0 + kh, H)):
            for iw in range(max(w0, 0), min(w0 + kw, W)):
                dx[n, c, ih, iw] += float(dout[n, c, oh, ow]) / (kh * kw)
    return dx


def _adaptive_window(i, size, out_size):
    return (i * size) // out_size, -((-(i + 1) * size) // out_size)  # floor, ceil


def ref_adaptive_avg_pool2d(x, OH, OW):
    N, C, H, W = x.shape
    out = np.empty((N, C, OH, OW))
    for n, c, oh, ow in np.ndindex(out.shape):
        h0, h1 = _adaptive_window(oh, H, OH)
        w0, w1 = _adaptive_window(ow, W, OW)
        total = 0.0
        for ih in range(h0, h1):
            for iw in range(w0, w1):
                total += float(x[n, c, ih, iw])
        out[n, c, oh, ow] = total / ((h1 - h0) * (w1 - w0))
    return out


def ref_adaptive_avg_pool2d_backward(dout, input_shape):
    N, C, H, W = input_shape
    OH, OW = dout.shape[2:]
    dx = np.zeros(input_shape)
    for n, c, oh, ow in np.ndindex(dout.shape):
        h0, h1 = _adaptive_window(oh, H, OH)
        w0, w1 = _adaptive_window(ow, W, OW)
        for ih in range(h0, h1):
            for iw in range(w0, w1):
                dx[n, c, ih, iw] += float(dout[n, c, oh, ow]) / ((h1 - h0) * (w1 - w0))
    return dx


# ---------------------------------------------------------------- BatchNorm2d (per channel over N, H, W)


def ref_batchnorm2d_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5):
    """(y, mean, invstd, running_mean, running_var) in float64; each channel's statistics over its N*H*W values."""
    N, C, H, W = x.shape
    n = N * H * W
    y = np.empty(x.shape)
    mean, invstd = np.empty(C), np.empty(C)
    rm, rv = running_mean.astype(np.float64).copy(), running_var.astype(np.float64).copy()
    for c in range(C):
        vals = [float(x[b, c, i, j]) for b in range(N) for i in range(H) for j in range(W)]
        mu = math.fsum(vals) / n
        var = math.fsum((v - mu) ** 2 for v in vals) / n  # biased: used to normalise
        mean[c], invstd[c] = mu, 1.0 / math.sqrt(var + eps)
        for b in range(N):
            for i in range(H):
                for j in range(W):
                    y[b, c, i, j] = (float(x[b, c, i, j]) - mu) * invstd[c] * float(gamma[c]) + float(beta[c])
        rm[c] = (1 - momentum) * rm[c] + momentum * mu
        rv[c] = (1 - momentum) * rv[c] + momentum * var * n / (n - 1)  # unbiased in the running estimate
    return y, mean, invstd, rm, rv


def ref_batchnorm2d_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    y = np.empty(x.shape)
    for b, c, i, j in np.ndindex(x.shape):
        y[b, c, i, j] = ((float(x[b, c, i, j]) - float(running_mean[c])) / math.sqrt(float(running_var[c]) + eps)
                         * float(gamma[c]) + float(beta[c]))
    return y


def ref_batchnorm2d_backward(dout, x, gamma, eps=1e-5):
    """Gradients of the training forward from its batch statistics in float64, channel by channel:
    dbeta = Σ dout, dgamma = Σ dout·xhat, dx = gamma·invstd/n·(n·dout - dbeta - xhat·dgamma)."""
    N, C, H, W = x.shape
    n = N * H * W
    dx, dgamma, dbeta = np.empty(x.shape), np.empty(C), np.empty(C)
    for c in range(C):
        xc, dc = x[:, c].astype(np.float64), dout[:, c].astype(np.float64)
        mu = xc.sum() / n
        invstd = 1.0 / math.sqrt(((xc - mu) ** 2).sum() / n + eps)
        xhat = (xc - mu) * invstd
        dbeta[c], dgamma[c] = dc.sum(), (dc * xhat).sum()
        dx[:, c] = float(gamma[c]) * invstd / n * (n * dc - dbeta[c] - xhat * dgamma[c])
    return dx, dgamma, dbeta
