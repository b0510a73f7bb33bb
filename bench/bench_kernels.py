"""fastdl's non-GEMM kernels against pure NumPy, float32, same thread count.

    python bench/bench_kernels.py [--quick] [--out DIR] [--threads N] [--rounds R] [--cases SUBSTRS]

Cases: activations and their backward (relu, leaky_relu, sigmoid, tanh, softmax), softmax
cross-entropy forward+backward, the SGD-momentum and Adam updates over all parameters of a
784-256-128-10 MLP, BatchNorm forward (training) and backward, dropout forward — each at an
L2-resident size (64K floats) and a DRAM size (16M floats) where it is elementwise — then dense
forward with fused bias+ReLU against the bare GEMM, per-call overhead on 16 floats, and the output
layer (linear + softmax cross-entropy, forward and backward) against NumPy's chain of operations.

NumPy is written the way a careful NumPy user would: float32 throughout, `out=` and in-place
operators where they exist, no float64 temporaries. Both sides are checked against a float64
reference before anything is timed (a wrong fastdl result raises common.BenchCheckError).

Bandwidth: GB/s count each array the kernel must touch once (inputs read, outputs written; the
write-allocate read of an output is not counted, as in STREAM), stated per case in bytes per
element; "% triad" compares that with the STREAM triad measured in the same run on an array of the
same length (so an L2-resident case is compared with L2 bandwidth, a DRAM one with DRAM bandwidth).
The triad stores as fastdl's elementwise maps do (streaming stores past 48 MiB of arrays, which also
skip the write-allocate read), so at DRAM size both sides move only the bytes they count.
Kernels missing from fastdl.ops (a branch not merged yet) are reported as skipped.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - must set the thread count before numpy is imported

MLP = [(784, 256), (256, 128), (128, 10)]  # (in, out) of each dense layer
SLOPE = 0.01                               # leaky_relu's negative slope
CLASSES = 10                               # softmax / cross-entropy row length (the MLP's head)


def sizes(cfg):
    """(label, floats) for the elementwise cases: one L2-resident, one DRAM-size array."""
    if cfg.tiny:
        return [("L2 4K", 4096), ("big 16K", 16384)]
    return [("L2 64K", 65536), ("DRAM 8M" if cfg.quick else "DRAM 16M", (8 if cfg.quick else 16) * 2**20)]


# ------------------------------------------------------------------------------------------ cases
# Each builder returns a dict: name, group, needs (fastdl.ops names), n (array length for the
# triad comparison), bytes (counted per call), bytes_note, contenders {label: fn} with "numpy" and
# "fastdl" first, check() -> (err_numpy, err_fastdl) (raises when fastdl is wrong), and optionally
# flops. Builders look fastdl.ops functions up at call time, so a test can replace one.


def _unary(np, ops, rng, name, label, n, *, fwd_np, fwd_fd, ref, tol, gen=None):
    x = (gen(n) if gen else rng.standard_normal(n, dtype=np.float32) * 2).astype(np.float32)
    y_np, y_fd = np.empty_like(x), np.empty_like(x)
    tmp = np.empty_like(x)

    def check():
        fwd_np(x, y_np, tmp)
        fwd_fd(x, y_fd)
        r = ref(x.astype(np.float64))
        return common.rel_error(y_np, r), common.check(f"{name} forward", y_fd, r, tol)

    return {"name": f"{name} fwd {label}", "group": "bandwidth", "n": n, "bytes": 8 * n,
            "bytes_note": "8 B/elt: x read, y written", "contenders": {
                "numpy": lambda: fwd_np(x, y_np, tmp), "fastdl": lambda: fwd_fd(x, y_fd)}, "check": check}


def _unary_bwd(np, ops, rng, name, label, n, *, from_output, bwd_np, bwd_fd, ref, tol, fwd64=None):
    x = rng.standard_normal(n, dtype=np.float32) * 2
    # backward takes the forward output y (sigmoid, tanh) or the input x (relu, leaky_relu)
    s = fwd64(x.astype(np.float64)).astype(np.float32) if from_output else x
    dout = rng.standard_normal(n, dtype=np.float32)
    d_np, d_fd, tmp = np.empty_like(x), np.empty_like(x), np.empty_like(x)

    def check():
        bwd_np(dout, s, d_np, tmp)
        bwd_fd(dout, s, d_fd)
        r = ref(dout.astype(np.float64), s.astype(np.float64))
        return common.rel_error(d_np, r), common.check(f"{name} backward", d_fd, r, tol)

    what = "y" if from_output else "x"
    return {"name": f"{name} bwd {label}", "group": "bandwidth", "n": n, "bytes": 12 * n,
            "bytes_note": f"12 B/elt: dout and {what} read, dinp written", "contenders": {
                "numpy": lambda: bwd_np(dout, s, d_np, tmp), "fastdl": lambda: bwd_fd(dout, s, d_fd)},
            "check": check}


def activation_cases(np, ops, rng, label, n):
    def sig64(x):
        return 1.0 / (1.0 + np.exp(-x))

    def np_sigmoid(x, y, tmp):
        np.negative(x, out=y)
        np.exp(y, out=y)
        y += 1.0
        np.reciprocal(y, out=y)

    def np_sigmoid_bwd(dout, y, d, tmp):
        np.subtract(1.0, y, out=d)
        d *= y
        d *= dout

    def np_tanh_bwd(dout, y, d, tmp):
        np.multiply(y, y, out=d)
        np.subtract(1.0, d, out=d)
        d *= dout

    def np_leaky(x, y, tmp):
        np.multiply(x, SLOPE, out=tmp)
        np.maximum(x, tmp, out=y)

    def np_leaky_bwd(dout, x, d, tmp):
        np.multiply(dout, SLOPE, out=d)
        np.copyto(d, dout, where=x > 0)

    return [
        ({"relu"}, lambda: _unary(np, ops, rng, "relu", label, n, tol=0.0,
                                  fwd_np=lambda x, y, t: np.maximum(x, 0.0, out=y),
                                  fwd_fd=lambda x, y: ops.relu(x, out=y),
                                  ref=lambda x: np.maximum(x, 0.0))),
        ({"relu_backward"}, lambda: _unary_bwd(np, ops, rng, "relu", label, n, from_output=False, tol=0.0,
                                               bwd_np=lambda d, x, o, t: np.multiply(d, x > 0, out=o),
                                               bwd_fd=lambda d, x, o: ops.relu_backward(d, x, out=o),
                                               ref=lambda d, x: d * (x > 0))),
        ({"leaky_relu"}, lambda: _unary(np, ops, rng, "leaky_relu", label, n, tol=1e-7, fwd_np=np_leaky,
                                        fwd_fd=lambda x, y: ops.leaky_relu(x, SLOPE, out=y),
                                        ref=lambda x: np.where(x > 0, x, SLOPE * x))),
        ({"leaky_relu_backward"}, lambda: _unary_bwd(
            np, ops, rng, "leaky_relu", label, n, from_output=False, tol=1e-7, bwd_np=np_leaky_bwd,
            bwd_fd=lambda d, x, o: ops.leaky_relu_backward(d, x, SLOPE, out=o),
            ref=lambda d, x: np.where(x > 0, d, SLOPE * d))),
        ({"sigmoid"}, lambda: _unary(np, ops, rng, "sigmoid", label, n, tol=1e-6, fwd_np=np_sigmoid,
                                     fwd_fd=lambda x, y: ops.sigmoid(x, out=y), ref=sig64)),
        ({"sigmoid_backward"}, lambda: _unary_bwd(np, ops, rng, "sigmoid", label, n, from_output=True, tol=1e-6,
                                                  fwd64=sig64, bwd_np=np_sigmoid_bwd,
                                                  bwd_fd=lambda d, y, o: ops.sigmoid_backward(d, y, out=o),
                                                  ref=lambda d, y: d * y * (1 - y))),
        ({"tanh"}, lambda: _unary(np, ops, rng, "tanh", label, n, tol=1e-6,
                                  fwd_np=lambda x, y, t: np.tanh(x, out=y),
                                  fwd_fd=lambda x, y: ops.tanh(x, out=y), ref=np.tanh)),
        ({"tanh_backward"}, lambda: _unary_bwd(np, ops, rng, "tanh", label, n, from_output=True, tol=1e-6,
                                               fwd64=np.tanh, bwd_np=np_tanh_bwd,
                                               bwd_fd=lambda d, y, o: ops.tanh_backward(d, y, out=o),
                                               ref=lambda d, y: d * (1 - y * y))),
    ]


def softmax_cases(np, ops, rng, label, n):
    rows = max(1, n // CLASSES)
    x = rng.standard_normal((rows, CLASSES), dtype=np.float32) * 3
    dout = rng.standard_normal((rows, CLASSES), dtype=np.float32)
    labels = rng.integers(0, CLASSES, rows).astype(np.int64)
    y_np, y_fd, t = (np.empty_like(x) for _ in range(3))
    m, s = np.empty((rows, 1), np.float32), np.empty((rows, 1), np.float32)
    ar = np.arange(rows)

    def sm64(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def np_softmax(z, out):
        np.max(z, axis=1, keepdims=True, out=m)
        np.subtract(z, m, out=out)
        np.exp(out, out=out)
        np.sum(out, axis=1, keepdims=True, out=s)
        out /= s

    y = sm64(x.astype(np.float64)).astype(np.float32)

    def np_softmax_bwd(out):
        np.multiply(dout, y, out=t)
        np.sum(t, axis=1, keepdims=True, out=s)
        np.subtract(dout, s, out=out)
        out *= y

    def fwd_check():
        np_softmax(x, y_np)
        ops.softmax(x, out=y_fd)
        r = sm64(x.astype(np.float64))
        return common.rel_error(y_np, r), common.check("softmax forward", y_fd, r, 1e-6)

    def bwd_check():
        np_softmax_bwd(y_np)
        ops.softmax_backward(dout, y, out=y_fd)
        y64, d64 = y.astype(np.float64), dout.astype(np.float64)
        r = y64 * (d64 - (d64 * y64).sum(axis=1, keepdims=True))
        return common.rel_error(y_np, r), common.check("softmax backward", y_fd, r, 1e-5)

    def np_ce():
        np.max(x, axis=1, keepdims=True, out=m)
        np.subtract(x, m, out=y_np)
        np.exp(y_np, out=y_np)
        np.sum(y_np, axis=1, keepdims=True, out=s)
        loss = float(np.mean(np.log(s[:, 0]) - (x[ar, labels] - m[:, 0])))
        np.divide(y_np, s, out=y_np)
        y_np[ar, labels] -= 1.0
        np.multiply(y_np, 1.0 / rows, out=y_np)
        return loss

    def fd_ce():
        return ops.softmax_cross_entropy(x, labels, out=y_fd)[0]

    def ce_check():
        loss_np, loss_fd = np_ce(), fd_ce()
        x64 = x.astype(np.float64)
        p = sm64(x64)
        loss = float(np.mean(-np.log(p[ar, labels])))
        g = p.copy()
        g[ar, labels] -= 1.0
        g /= rows
        common.check("softmax_cross_entropy loss", loss_fd, loss, 1e-5)
        e_np = max(common.rel_error(y_np, g), common.rel_error(loss_np, loss))
        return e_np, common.check("softmax_cross_entropy gradient", y_fd, g, 1e-5)

    nn_ = rows * CLASSES
    return [
        ({"softmax"}, lambda: {"name": f"softmax fwd (rows of {CLASSES}) {label}", "group": "bandwidth",
                               "n": nn_, "bytes": 8 * nn_, "bytes_note": "8 B/elt: x read, y written",
                               "contenders": {"numpy": lambda: np_softmax(x, y_np),
                                              "fastdl": lambda: ops.softmax(x, out=y_fd)}, "check": fwd_check}),
        ({"softmax_backward"}, lambda: {
            "name": f"softmax bwd (rows of {CLASSES}) {label}", "group": "bandwidth", "n": nn_, "bytes": 12 * nn_,
            "bytes_note": "12 B/elt: dout and y read, dinp written",
            "contenders": {"numpy": lambda: np_softmax_bwd(y_np),
                           "fastdl": lambda: ops.softmax_backward(dout, y, out=y_fd)}, "check": bwd_check}),
        ({"softmax_cross_entropy"}, lambda: {
            "name": f"softmax CE fwd+bwd ({CLASSES} classes) {label}", "group": "bandwidth", "n": nn_,
            "bytes": 8 * nn_ + 8 * rows, "bytes_note": "8 B/logit (logits read, dlogits written) + 8 B/row label",
            "contenders": {"numpy": np_ce, "fastdl": fd_ce}, "check": ce_check}),
    ]


def mlp_params(np, rng):
    shapes = []
    for c_in, c_out in MLP:
        shapes += [(c_out, c_in), (c_out,)]
    return [(rng.standard_normal(sh, dtype=np.float32) * 0.05) for sh in shapes]


def optimizer_cases(np, ops, rng):
    """SGD with momentum and Adam over all parameters of the 784-256-128-10 MLP (6 arrays)."""
    lr, mu = 0.01, 0.9
    b1, b2, eps = 0.9, 0.999, 1e-8
    params0 = mlp_params(np, rng)
    grads = [rng.standard_normal(p.shape, dtype=np.float32) * 1e-3 for p in params0]
    n = sum(p.size for p in params0)

    def sgd_state():
        return [p.copy() for p in params0], [g * 3 for g in grads], [np.empty_like(p) for p in params0]

    p_np, buf_np, tmp = sgd_state()
    p_fd, buf_fd, _ = sgd_state()

    def np_sgd(ps, bufs):  # PyTorch's SGD: buf = mu*buf + g; p -= lr*buf
        for p, g, buf, t in zip(ps, grads, bufs, tmp):
            buf *= mu
            buf += g
            np.multiply(buf, lr, out=t)
            p -= t

    def fd_sgd(ps, bufs):  # one call for the whole model, as optim.SGD.step makes it
        ops.sgd_step_many(ps, grads, bufs, lr=lr, momentum=mu)

    def sgd_check():
        (pa, ba, _), (pb, bb, _) = sgd_state(), sgd_state()
        np_sgd(pa, ba)
        fd_sgd(pb, bb)
        e_np = e_fd = 0.0
        for i, (p0, g) in enumerate(zip(params0, grads)):
            buf = mu * (g.astype(np.float64) * 3) + g
            ref = p0 - lr * buf
            e_np = max(e_np, common.rel_error(pa[i], ref), common.rel_error(ba[i], buf))
            e_fd = max(e_fd, common.check(f"sgd_step param {i}", pb[i], ref, 1e-6),
                       common.check(f"sgd_step momentum buffer {i}", bb[i], buf, 1e-6))
        return e_np, e_fd

    def adam_state():
        return ([p.copy() for p in params0], [np.abs(g) * 0.5 for g in grads], [g * g * 2 for g in grads])

    a_np, a_fd = adam_state(), adam_state()
    tmp2 = [np.empty_like(p) for p in params0]
    steps = {"numpy": 10, "fastdl": 10}

    def np_adam(state, t):  # PyTorch's Adam: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
        ps, ms, vs = state
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        for p, g, m, v, t1, t2 in zip(ps, grads, ms, vs, tmp, tmp2):
            m *= b1
            np.multiply(g, 1 - b1, out=t1)
            m += t1
            v *= b2
            np.multiply(g, g, out=t1)
            t1 *= 1 - b2
            v += t1
            np.sqrt(v, out=t1)
            t1 *= 1 / math.sqrt(bc2)
            t1 += eps
            np.divide(m, t1, out=t2)
            t2 *= lr / bc1
            p -= t2

    def fd_adam(state, t):  # one call for the whole model, as optim.Adam.step makes it
        ps, ms, vs = state
        ops.adam_step_many(ps, grads, ms, vs, lr=lr, steps=[t] * len(ps), beta1=b1, beta2=b2, eps=eps)

    def adam_check():
        sa, sb = adam_state(), adam_state()
        np_adam(sa, 10)
        fd_adam(sb, 10)
        e_np = e_fd = 0.0
        s0 = adam_state()
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            m = b1 * s0[1][i] + (1 - b1) * g
            v = b2 * s0[2][i] + (1 - b2) * g * g
            ref = s0[0][i] - lr * (m / (1 - b1**10)) / (np.sqrt(v / (1 - b2**10)) + eps)
            e_np = max(e_np, common.rel_error(sa[0][i], ref))
            e_fd = max(e_fd, common.check(f"adam_step param {i}", sb[0][i], ref, 1e-6),
                       common.check(f"adam_step m {i}", sb[1][i], m, 1e-6),
                       common.check(f"adam_step v {i}", sb[2][i], v, 1e-6))
        return e_np, e_fd

    def stepper(fn, state, who):
        def go():
            steps[who] += 1
            fn(state, steps[who])
        return go

    model = "784-256-128-10 MLP, 6 arrays"
    return [
        ({"sgd_step_many"}, lambda: {"name": f"SGD momentum step, {model}, {n:,} floats", "group": "bandwidth", "n": n,
                                "bytes": 20 * n, "bytes_note": "20 B/elt: param, grad, buf read; param, buf written",
                                "contenders": {"numpy": lambda: np_sgd(p_np, buf_np),
                                               "fastdl": lambda: fd_sgd(p_fd, buf_fd)}, "check": sgd_check}),
        ({"adam_step_many"}, lambda: {"name": f"Adam step, {model}, {n:,} floats", "group": "bandwidth", "n": n,
                                 "bytes": 28 * n, "bytes_note": "28 B/elt: param, grad, m, v read; param, m, v written",
                                 "contenders": {"numpy": stepper(np_adam, a_np, "numpy"),
                                                "fastdl": stepper(fd_adam, a_fd, "fastdl")}, "check": adam_check}),
    ]


def batchnorm_cases(np, ops, rng, label, n):
    C = 256 if n <= 65536 else 1024
    N = max(2, n // C)
    eps, mom = 1e-5, 0.1
    x = rng.standard_normal((N, C), dtype=np.float32) * 2 + 1
    gamma = rng.standard_normal(C, dtype=np.float32)
    beta = rng.standard_normal(C, dtype=np.float32)
    dout = rng.standard_normal((N, C), dtype=np.float32)
    y_np, y_fd, xc = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    rm_np, rv_np = np.zeros(C, np.float32), np.ones(C, np.float32)
    rm_fd, rv_fd = np.zeros(C, np.float32), np.ones(C, np.float32)
    dg, db = np.empty(C, np.float32), np.empty(C, np.float32)
    mean_c, invstd_c = np.empty(C, np.float32), np.empty(C, np.float32)

    def np_fwd():
        np.mean(x, axis=0, out=mean_c)
        np.subtract(x, mean_c, out=xc)
        np.square(xc, out=y_np)
        var = y_np.mean(axis=0)
        np.add(var, eps, out=invstd_c)
        np.sqrt(invstd_c, out=invstd_c)
        np.reciprocal(invstd_c, out=invstd_c)
        np.multiply(xc, invstd_c * gamma, out=y_np)
        np.add(y_np, beta, out=y_np)
        np.multiply(rm_np, 1 - mom, out=rm_np)
        np.add(rm_np, mom * mean_c, out=rm_np)
        np.multiply(rv_np, 1 - mom, out=rv_np)
        np.add(rv_np, (mom * N / (N - 1)) * var, out=rv_np)

    def fd_fwd():
        return ops.batchnorm_forward(x, gamma, beta, rm_fd, rv_fd, training=True, momentum=mom, eps=eps, out=y_fd)

    x64 = x.astype(np.float64)
    mean64, var64 = x64.mean(axis=0), x64.var(axis=0)
    inv64 = 1 / np.sqrt(var64 + eps)
    xhat64 = (x64 - mean64) * inv64
    _, mean_f, inv_f = fd_fwd()  # float32 statistics the backward takes (both sides get the same)
    mean_f, inv_f = mean_f.copy(), inv_f.copy()

    def fwd_check():
        np_fwd()
        _, mf, isd = fd_fwd()
        ref = xhat64 * gamma + beta
        common.check("batchnorm_forward mean", mf, mean64, 1e-5)
        common.check("batchnorm_forward invstd", isd, inv64, 1e-5)
        return common.rel_error(y_np, ref), common.check("batchnorm_forward y", y_fd, ref, 1e-5)

    def np_bwd():
        np.subtract(x, mean_f, out=xc)
        np.multiply(xc, inv_f, out=xc)   # xhat
        np.sum(dout, axis=0, out=db)
        np.multiply(dout, xc, out=y_np)
        np.sum(y_np, axis=0, out=dg)
        np.multiply(xc, dg, out=xc)      # xhat * dgamma
        np.multiply(dout, N, out=y_np)
        np.subtract(y_np, db, out=y_np)
        np.subtract(y_np, xc, out=y_np)
        np.multiply(y_np, gamma * inv_f / N, out=y_np)

    dx_fd, dg_fd, db_fd = np.empty_like(x), np.empty(C, np.float32), np.empty(C, np.float32)

    def fd_bwd():
        ops.batchnorm_backward(dout, x, gamma, mean_f, inv_f, dx=dx_fd, dgamma=dg_fd, dbeta=db_fd)

    def bwd_check():
        np_bwd()
        fd_bwd()
        d64, inv = dout.astype(np.float64), inv_f.astype(np.float64)
        xh = (x64 - mean_f) * inv
        rdb, rdg = d64.sum(axis=0), (d64 * xh).sum(axis=0)
        rdx = gamma * inv / N * (N * d64 - rdb - xh * rdg)
        common.check("batchnorm_backward dgamma", dg_fd, rdg, 1e-5)
        common.check("batchnorm_backward dbeta", db_fd, rdb, 1e-5)
        e_np = max(common.rel_error(y_np, rdx), common.rel_error(dg, rdg), common.rel_error(db, rdb))
        return e_np, common.check("batchnorm_backward dx", dx_fd, rdx, 1e-5)

    m = N * C
    return [
        ({"batchnorm_forward"}, lambda: {
            "name": f"BatchNorm fwd train ({N}×{C}) {label}", "group": "bandwidth", "n": m, "bytes": 8 * m,
            "bytes_note": "8 B/elt: x read, y written (x read once; statistics not counted)",
            "contenders": {"numpy": np_fwd, "fastdl": fd_fwd}, "check": fwd_check}),
        ({"batchnorm_backward"}, lambda: {
            "name": f"BatchNorm bwd ({N}×{C}) {label}", "group": "bandwidth", "n": m, "bytes": 12 * m,
            "bytes_note": "12 B/elt: dout and x read, dx written (once each)",
            "contenders": {"numpy": np_bwd, "fastdl": fd_bwd}, "check": bwd_check}),
    ]


def dropout_cases(np, ops, rng, label, n):
    p, seed = 0.5, 12345
    x = rng.standard_normal(n, dtype=np.float32)
    y_np, y_fd, r = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    mask = np.empty(n, dtype=bool)
    gen = np.random.default_rng(7)
    scale = 1.0 / (1.0 - p)

    def np_drop():
        gen.random(out=r, dtype=np.float32)
        np.greater_equal(r, p, out=mask)
        np.multiply(x, mask, out=y_np)
        np.multiply(y_np, scale, out=y_np)

    def check():
        np_drop()
        ops.dropout(x, p, seed, out=y_fd)
        keep = ops.dropout_mask(x.shape, p, seed).astype(np.float64)
        kept = float(keep.mean())
        sigma = math.sqrt(p * (1 - p) / n)
        if abs(kept - (1 - p)) > 6 * sigma:
            raise common.BenchCheckError(f"dropout: kept {kept:.4f} of the elements, expected {1 - p} ± {6 * sigma:.4f}")
        ref = x.astype(np.float64) * keep * scale
        ref_np = x.astype(np.float64) * mask * scale
        return common.rel_error(y_np, ref_np), common.check("dropout", y_fd, ref, 1e-7)

    return [({"dropout"}, lambda: {
        "name": f"dropout fwd p=0.5 {label}", "group": "bandwidth", "n": n, "bytes": 8 * n,
        "bytes_note": "8 B/elt: x read, y written (NumPy also draws n random numbers)",
        "contenders": {"numpy": np_drop, "fastdl": lambda: ops.dropout(x, p, seed, out=y_fd)}, "check": check})]


def linear_cases(np, ops, rng, cfg):
    """Dense forward y = relu(x·Wᵀ + b): fused in one fastdl call, against the bare fastdl GEMM
    x·Wᵀ (the bar: fused ≤ 1.05× bare) and NumPy's matmul + bias + maximum."""
    shapes = [(16, 96, 40)] if cfg.tiny else [(32, 784, 256), (128, 784, 256), (512, 784, 256), (128, 256, 128)]
    out = []
    for B, C, OC in shapes:
        def build(B=B, C=C, OC=OC):
            x = rng.standard_normal((B, C), dtype=np.float32)
            w = rng.standard_normal((OC, C), dtype=np.float32) * 0.05
            b = rng.standard_normal(OC, dtype=np.float32)
            y_np, y_fd, y_bare = (np.empty((B, OC), np.float32) for _ in range(3))

            def np_chain():
                np.matmul(x, w.T, out=y_np)
                np.add(y_np, b, out=y_np)
                np.maximum(y_np, 0.0, out=y_np)

            def check():
                np_chain()
                ops.linear_forward(x, w, b, activation="relu", out=y_fd)
                ops.matmul(x, w, trans_b=True, out=y_bare)
                x64, w64 = x.astype(np.float64), w.astype(np.float64)
                z = x64 @ w64.T
                common.check("matmul (bare GEMM)", y_bare, z, 1e-5)
                ref = np.maximum(z + b, 0.0)
                return common.rel_error(y_np, ref), common.check("linear_forward relu", y_fd, ref, 1e-5)

            return {"name": f"linear+bias+ReLU {B}×{C}→{OC}", "group": "linear", "flops": 2.0 * B * C * OC,
                    "contenders": {"numpy": np_chain,
                                   "fastdl": lambda: ops.linear_forward(x, w, b, activation="relu", out=y_fd),
                                   "fastdl bare GEMM": lambda: ops.matmul(x, w, trans_b=True, out=y_bare)},
                    "check": check}
        out.append(({"linear_forward", "matmul"}, build))
    return out


def overhead_cases(np, ops, rng):
    from fastdl import _C  # noqa: PLC0415

    x = rng.standard_normal(16, dtype=np.float32)
    y_np, y_fd = np.empty_like(x), np.empty_like(x)

    def check():
        np.maximum(x, 0.0, out=y_np)
        ops.relu(x, out=y_fd)
        ref = np.maximum(x.astype(np.float64), 0.0)
        return common.rel_error(y_np, ref), common.check("relu (16 floats)", y_fd, ref, 0.0)

    return [({"relu"}, lambda: {
        "name": "per-call overhead: relu of 16 floats, out=", "group": "overhead",
        "contenders": {"numpy": lambda: np.maximum(x, 0.0, out=y_np), "fastdl": lambda: ops.relu(x, out=y_fd),
                       "fastdl _C binding only": lambda: _C.relu(x, y_fd)}, "check": check})]


def head_cases(np, ops, rng, cfg):
    """The output layer of the MLP: z = h·Wᵀ + b, softmax cross-entropy, and the backward products
    dW = dzᵀ·h, db = Σ dz, dh = dz·W. fastdl: 3 calls; NumPy: its chain of ~12 operations."""
    out = []
    for B in ([16] if cfg.tiny else [128, 512]):
        def build(B=B, C=128, K=CLASSES):
            h = np.maximum(rng.standard_normal((B, C), dtype=np.float32), 0)
            w = rng.standard_normal((K, C), dtype=np.float32) * 0.1
            b = rng.standard_normal(K, dtype=np.float32) * 0.1
            labels = rng.integers(0, K, B).astype(np.int64)
            ar = np.arange(B)
            z_np, dz_np, z_fd, dz_fd = (np.empty((B, K), np.float32) for _ in range(4))
            m, s = np.empty((B, 1), np.float32), np.empty((B, 1), np.float32)
            dw_np, dw_fd = np.empty_like(w), np.empty_like(w)
            db_np, db_fd = np.empty_like(b), np.empty_like(b)
            dh_np, dh_fd = np.empty_like(h), np.empty_like(h)

            def np_chain():
                np.matmul(h, w.T, out=z_np)
                np.add(z_np, b, out=z_np)
                np.max(z_np, axis=1, keepdims=True, out=m)
                np.subtract(z_np, m, out=dz_np)
                np.exp(dz_np, out=dz_np)
                np.sum(dz_np, axis=1, keepdims=True, out=s)
                loss = float(np.mean(np.log(s[:, 0]) - (z_np[ar, labels] - m[:, 0])))
                np.divide(dz_np, s, out=dz_np)
                dz_np[ar, labels] -= 1.0
                np.multiply(dz_np, 1.0 / B, out=dz_np)
                np.matmul(dz_np.T, h, out=dw_np)
                np.sum(dz_np, axis=0, out=db_np)
                np.matmul(dz_np, w, out=dh_np)
                return loss

            def fd_chain():
                ops.linear_forward(h, w, b, out=z_fd)
                loss, _ = ops.softmax_cross_entropy(z_fd, labels, out=dz_fd)
                ops.linear_backward(dz_fd, h, w, dx=dh_fd, dweight=dw_fd, dbias=db_fd)
                return loss

            def check():
                loss_np, loss_fd = np_chain(), fd_chain()
                h64, w64 = h.astype(np.float64), w.astype(np.float64)
                z = h64 @ w64.T + b
                e = np.exp(z - z.max(axis=1, keepdims=True))
                p = e / e.sum(axis=1, keepdims=True)
                loss = float(np.mean(-np.log(p[ar, labels])))
                dz = p.copy()
                dz[ar, labels] -= 1
                dz /= B
                refs = {"loss": loss, "dweight": dz.T @ h64, "dbias": dz.sum(axis=0), "dinp": dz @ w64}
                got_np = {"loss": loss_np, "dweight": dw_np, "dbias": db_np, "dinp": dh_np}
                got_fd = {"loss": loss_fd, "dweight": dw_fd, "dbias": db_fd, "dinp": dh_fd}
                e_np = max(common.rel_error(got_np[k], r) for k, r in refs.items())
                e_fd = max(common.check(f"output layer {k}", got_fd[k], r, 1e-5) for k, r in refs.items())
                return e_np, e_fd

            return {"name": f"output layer fwd+bwd {B}×{C}→{K} + softmax CE", "group": "head",
                    "contenders": {"numpy": np_chain, "fastdl": fd_chain}, "check": check}
        out.append(({"linear_forward", "linear_backward", "softmax_cross_entropy"}, build))
    return out


def all_cases(np, ops, cfg):
    rng = np.random.default_rng(0)
    cases = []
    for label, n in sizes(cfg):
        cases += activation_cases(np, ops, rng, label, n)
        cases += softmax_cases(np, ops, rng, label, n)
        cases += batchnorm_cases(np, ops, rng, label, n)
        cases += dropout_cases(np, ops, rng, label, n)
    cases += optimizer_cases(np, ops, rng)
    cases += linear_cases(np, ops, rng, cfg)
    cases += overhead_cases(np, ops, rng)
    cases += head_cases(np, ops, rng, cfg)
    return cases


# ------------------------------------------------------------------------------------------- run


def run(cfg: common.Config, limits: common.Limits) -> dict:
    import numpy as np  # noqa: PLC0415 - after setup_threads
    from fastdl import ops  # noqa: PLC0415

    info = common.machine()
    load_before = common.load_average()
    print(f"kernels: fastdl vs NumPy, float32, {cfg.threads} threads, {cfg.rounds} rounds", flush=True)
    records, skipped = [], []
    for needs, build in all_cases(np, ops, cfg):
        missing = sorted(n for n in needs if not hasattr(ops, n))
        if missing:  # a kernel from a branch not merged yet: say which
            skipped.append(", ".join(missing))
            continue
        case = build()
        name = case["name"]
        if not cfg.wants(name):
            continue
        err_np, err_fd = case["check"]()
        fns = dict(case["contenders"])
        if case["group"] == "bandwidth":  # the triad on the same length, timed in the same rounds
            fns["triad"], triad_bytes = common.triad_contender(case["n"], cfg.threads)
        t = common.time_cases(cfg, fns)
        fns.pop("triad", None)
        rec = {"case": name, "group": case["group"], "numpy_us": t["numpy"] * 1e6, "fastdl_us": t["fastdl"] * 1e6,
               "ratio": t["numpy"] / t["fastdl"], "error_numpy": err_np, "error_fastdl": err_fd,
               "us_rounds": {k: [x * 1e6 for x in v] for k, v in t["rounds"].items()},
               "other_load_cpus": t["other_load"]}
        for extra in case["contenders"]:
            if extra not in ("numpy", "fastdl", "triad"):
                rec[f"{extra} us"] = t[extra] * 1e6
        if case["group"] == "bandwidth":
            # the same-length triad timed in the same rounds, or measured alone when that is higher
            triad_rounds = triad_bytes / t["triad"] / 1e9
            triad = max(triad_rounds, limits.triad_gbs(case["n"]))
            rec.update({"n": case["n"], "bytes": case["bytes"], "bytes_note": case["bytes_note"],
                        "numpy_gbs": case["bytes"] / t["numpy"] / 1e9, "fastdl_gbs": case["bytes"] / t["fastdl"] / 1e9,
                        "triad_gbs_same_n": triad, "triad_gbs_same_rounds": triad_rounds})
            rec["fastdl_triad_fraction"] = rec["fastdl_gbs"] / triad
            rec["numpy_triad_fraction"] = rec["numpy_gbs"] / triad
            detail = (f"{rec['fastdl_gbs']:6.1f} GB/s = {rec['fastdl_triad_fraction']:4.0%} of triad "
                      f"{triad:.1f} (NumPy {rec['numpy_gbs']:.1f})")
        elif case["group"] == "linear":
            peak = limits.peak(cfg.threads)
            # the bar's ratio: both fastdl calls back to back (paired_ratios); the phase medians' ratio,
            # taken 0.45 s apart and so open to the machine's drift, is kept beside it
            pair = common.paired_ratios(case["contenders"]["fastdl"], case["contenders"]["fastdl bare GEMM"],
                                        rounds=3 if cfg.tiny else 15)
            rec["fused_over_bare"] = common.median(pair)
            rec["fused_over_bare_rounds"] = pair
            rec["fused_over_bare_phases"] = t["fastdl"] / t["fastdl bare GEMM"]
            rec["fastdl_gflops"] = case["flops"] / t["fastdl"] / 1e9
            rec["fastdl_peak_fraction"] = rec["fastdl_gflops"] / peak
            detail = f"fused/bare GEMM {rec['fused_over_bare']:.3f}, {rec['fastdl_peak_fraction']:.0%} of peak"
        elif case["group"] == "overhead":
            detail = f"binding alone {rec['fastdl _C binding only us']:.2f} us"
        else:
            detail = ""
        records.append(rec)
        print(f"  {name:58s} numpy {rec['numpy_us']:10.2f} us  fastdl {rec['fastdl_us']:10.2f} us  "
              f"x{rec['ratio']:6.2f}  {detail}  other load {common.load_str(t['other_load'])}", flush=True)
    skipped = sorted(set(skipped))
    if skipped:
        print(f"  skipped (not in fastdl.ops yet): {'; '.join(skipped)}")

    bars = kernel_bars(records, skipped)
    md = markdown(cfg, info, load_before, records, skipped, limits, bars)
    data = {"machine": info, "config": cfg.as_dict(), "load_average_before": load_before,
            "load_average_after": common.load_average(), "limits": limits.data, "results": records,
            "skipped_missing_ops": skipped, "bars": bars}
    md_path, js_path = common.write_report(cfg.out, "kernels", md, data)
    plots = []
    if records:
        p = common.plot_bars(cfg.out / "kernels_speedup.png", f"kernels: speed-up over NumPy, {cfg.threads} threads",
                             [r["case"] for r in records], [r["ratio"] for r in records])
        plots += [p] if p else []
        bw = [r for r in records if r["group"] == "bandwidth"]
        p = common.plot_bars(cfg.out / "kernels_bandwidth.png", "fastdl GB/s as a fraction of the same-size triad",
                             [r["case"] for r in bw], [r["fastdl_triad_fraction"] for r in bw], ref=0.8,
                             xlabel="fraction of STREAM triad GB/s (same array length)")
        plots += [p] if p else []
    print(f"wrote {md_path} and {js_path}" + "".join(f" and {p}" for p in plots))
    return {"name": "kernels", "markdown": md, "data": data, "bars": bars}


def kernel_bars(records, skipped):
    bars = []
    bw = [r for r in records if r["group"] == "bandwidth"]
    note = " (some kernels not in fastdl.ops yet)" if skipped else ""
    if bw:
        worst = min(bw, key=lambda r: r["fastdl_triad_fraction"])
        ok = sum(r["fastdl_triad_fraction"] >= 0.8 for r in bw)
        bars.append(common.bar("elementwise kernels and optimizer updates: GB/s vs triad at the same size",
                               "≥ 80% each", f"min {worst['fastdl_triad_fraction']:.0%} ({worst['case']}); "
                               f"{ok} of {len(bw)} cases pass{note}", ok == len(bw)))
        worst = min(bw, key=lambda r: r["ratio"])
        ok = sum(r["ratio"] >= 3.0 for r in bw)
        bars.append(common.bar("elementwise kernels and optimizer updates vs NumPy", "≥ 3× each",
                               f"min {worst['ratio']:.2f}× ({worst['case']}); {ok} of {len(bw)} cases pass{note}",
                               ok == len(bw)))
    lin = [r for r in records if r["group"] == "linear"]
    if lin:
        worst = max(lin, key=lambda r: r["fused_over_bare"])
        bars.append(common.bar("fused linear+bias+ReLU time / bare GEMM time", "≤ 1.05×",
                               f"worst {worst['fused_over_bare']:.3f}× ({worst['case']})",
                               worst["fused_over_bare"] <= 1.05))
    ov = [r for r in records if r["group"] == "overhead"]
    if ov:
        r = ov[0]
        bars.append(common.bar("per-call overhead (ops.relu on 16 floats, out= given)", "≤ 1.5 µs",
                               f"{r['fastdl_us']:.2f} µs (binding alone {r['fastdl _C binding only us']:.2f} µs; "
                               f"NumPy {r['numpy_us']:.2f} µs)", r["fastdl_us"] <= 1.5))
    head = [r for r in records if r["group"] == "head"]
    if head:
        worst = min(head, key=lambda r: r["ratio"])
        each = ", ".join(f"{r['case'].split()[3]}: {r['ratio']:.2f}×" for r in head)
        bars.append(common.bar("output layer (linear + softmax CE, fwd+bwd) vs NumPy's chain", "≥ 3×",
                               f"min {worst['ratio']:.2f}× ({each})", worst["ratio"] >= 3.0))
    elif skipped:
        bars.append(common.bar("output layer (linear + softmax CE, fwd+bwd) vs NumPy's chain", "≥ 3×",
                               "not measured: softmax_cross_entropy not in fastdl.ops", None))
    if records:
        floor = 2.0**-24
        worst = max(records, key=lambda r: r["error_fastdl"] / max(r["error_numpy"], floor))
        q = worst["error_fastdl"] / max(worst["error_numpy"], floor)
        bars.append(common.bar("kernel error vs float64, every case", "≤ 2× NumPy's",
                               f"worst {q:.2f}× NumPy's ({worst['case']})", q <= 2.0))
    return bars


def markdown(cfg, info, load_before, records, skipped, limits, bars):
    lines = common.header_lines("Kernels: fastdl vs NumPy", cfg, info, load_before)
    lines += ["Machine limits measured in this run:", "", limits.markdown(), ""]
    bw = [r for r in records if r["group"] == "bandwidth"]
    if bw:
        lines += ["## Bandwidth-bound kernels", "",
                  "GB/s count each array once (bytes per element in the last column); % triad = fastdl GB/s / "
                  "STREAM triad GB/s (12 B/element) on an array of the same length: timed in the same interleaved "
                  "rounds as the case, or alone (also in this run) when that is higher. Errors: "
                  "max|got − ref| / max|ref| against float64. other load: CPUs kept busy by other processes "
                  "just before the case.", "",
                  common.markdown_table(
                      ["case", "NumPy µs", "fastdl µs", "× NumPy", "NumPy GB/s", "fastdl GB/s", "triad GB/s",
                       "fastdl % triad", "NumPy error", "fastdl error", "other load", "bytes counted"],
                      [[r["case"], f"{r['numpy_us']:.2f}", f"{r['fastdl_us']:.2f}", f"{r['ratio']:.2f}",
                        f"{r['numpy_gbs']:.1f}", f"{r['fastdl_gbs']:.1f}", f"{r['triad_gbs_same_n']:.1f}",
                        f"{r['fastdl_triad_fraction']:.0%}", f"{r['error_numpy']:.1e}", f"{r['error_fastdl']:.1e}",
                        common.load_str(r["other_load_cpus"]), r["bytes_note"]] for r in bw]), ""]
    lin = [r for r in records if r["group"] == "linear"]
    if lin:
        lines += ["## Dense forward with fused bias+ReLU", "",
                  "fastdl fused: `ops.linear_forward(x, W, b, activation='relu', out=y)`; bare: "
                  "`ops.matmul(x, W, trans_b=True, out=y)`; NumPy: `np.matmul(x, W.T, out=y); y += b; "
                  "np.maximum(y, 0, out=y)`. fused / bare: median over 15 pairs of back-to-back batches of the "
                  "two fastdl calls; the ratio of their phase medians (phases 0.45 s apart, open to the "
                  "machine's clock drift) stands beside it.", "",
                  common.markdown_table(
                      ["case", "NumPy µs", "fastdl bare GEMM µs", "fastdl fused µs", "fused / bare",
                       "fused / bare (phases)", "fused × NumPy", "fused % peak"],
                      [[r["case"], f"{r['numpy_us']:.1f}", f"{r['fastdl bare GEMM us']:.1f}", f"{r['fastdl_us']:.1f}",
                        f"{r['fused_over_bare']:.3f}", f"{r['fused_over_bare_phases']:.3f}", f"{r['ratio']:.2f}",
                        f"{r['fastdl_peak_fraction']:.0%}"]
                       for r in lin]), ""]
    other = [r for r in records if r["group"] in ("overhead", "head")]
    if other:
        lines += ["## Call overhead and the output layer", "",
                  "Output layer: fastdl `linear_forward` + `softmax_cross_entropy` + `linear_backward` (3 calls) "
                  "against NumPy's chain (matmul, bias, max, subtract, exp, sum, log, divide, label scatter, "
                  "two matmuls and a sum).", "",
                  common.markdown_table(
                      ["case", "NumPy µs", "fastdl µs", "× NumPy", "NumPy error", "fastdl error"],
                      [[r["case"], f"{r['numpy_us']:.2f}", f"{r['fastdl_us']:.2f}", f"{r['ratio']:.2f}",
                        f"{r['error_numpy']:.1e}", f"{r['error_fastdl']:.1e}"] for r in other]), ""]
    if skipped:
        lines += [f"Skipped, not in fastdl.ops in this build: {'; '.join(skipped)}.", ""]
    if bars:
        lines += [common.bars_markdown(bars)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(ap)
    args = ap.parse_args(argv)
    cfg = common.config_from_args(args)
    run(cfg, common.Limits(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
