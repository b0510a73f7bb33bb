"""Dense layer (fastdl.ops.linear_forward / linear_backward): float64 NumPy references,
finite-difference gradients, accumulation, threads and bad inputs.

Tolerances as in test_gemm.py: elementwise |got - ref| <= 4e-6 * (sum of |products| + |bias| +
|accumulated value|), plus 1e-6 * |ref| for the vectorised exp of sigmoid / tanh.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastdl
from fastdl import ops
from reference import act64, assert_close

F32 = np.float32


def layer(rng, B, C, OC):
    x = rng.standard_normal((B, C)).astype(F32)
    w = (rng.standard_normal((OC, C)) / np.sqrt(C)).astype(F32)
    b = rng.standard_normal(OC).astype(F32)
    return x, w, b


# ---------------------------------------------------------------- forward

SHAPES = [(1, 1, 1), (3, 5, 2), (7, 13, 11), (32, 784, 256), (128, 256, 128), (128, 128, 10), (65, 37, 100)]


@pytest.mark.parametrize("B,C,OC", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("act", [None, "none", "relu", "sigmoid", "tanh"])
def test_linear_forward_matches_reference(isa, rng, B, C, OC, with_bias, act):
    x, w, b = layer(rng, B, C, OC)
    bias = b if with_bias else None
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    z = x64 @ w64.T
    scale = np.abs(x64) @ np.abs(w64).T
    if with_bias:
        z = z + b
        scale = scale + np.abs(b)
    y = ops.linear_forward(x, w, bias, activation=act)
    assert y.shape == (B, OC)
    assert_close(y, act64(z, act), scale, act)


def test_linear_forward_out(isa, rng):
    x, w, b = layer(rng, 40, 30, 20)
    out = np.full((40, 20), np.nan, F32)
    y = ops.linear_forward(x, w, b, "relu", out=out)
    assert y is out and np.shares_memory(y, out)
    np.testing.assert_array_equal(out, ops.linear_forward(x, w, b, "relu"))


# The fused relu keeps NaN as np.maximum does (it gave 0 before): a batch of 3 runs the 4-row tile
# (with batch_invariant=False the dot-product path), 40 the blocked product.
@pytest.mark.parametrize("B", [3, 40])
@pytest.mark.parametrize("batch_invariant", [True, False])
def test_linear_forward_relu_propagates_nan(isa, rng, B, batch_invariant):
    x, w, b = layer(rng, B, 30, 20)
    x[1, 7] = np.nan
    y = ops.linear_forward(x, w, b, "relu", batch_invariant=batch_invariant)
    assert np.isnan(y[1]).all() and not np.isnan(np.delete(y, 1, axis=0)).any()


@pytest.mark.parametrize("B", [1, 2, 3, 4, 50])
@pytest.mark.parametrize("batch_invariant", [True, False])
def test_linear_forward_is_matmul_with_trans_b(isa, rng, B, batch_invariant):
    x, w, b = layer(rng, B, 70, 90)
    np.testing.assert_array_equal(ops.linear_forward(x, w, b, "tanh", batch_invariant=batch_invariant),
                                  ops.matmul(x, w, trans_b=True, bias=b, activation="tanh",
                                             batch_invariant=batch_invariant))


# batch_invariant=False: batches of 1-4 rows as dot products along K (nn.Linear in training mode), as
# accurate as the blocked path, on 1 and 2 threads (784 -> 256: the columns split over 2).
@pytest.mark.parametrize("B", [1, 2, 3, 4])
@pytest.mark.parametrize("C,OC", [(1, 1), (5, 2), (13, 11), (784, 256), (256, 128), (128, 10), (37, 100)])
@pytest.mark.parametrize("threads", [1, 2])
def test_linear_forward_not_batch_invariant_matches_reference(isa, rng, B, C, OC, threads):
    x, w, b = layer(rng, B, C, OC)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    prev = fastdl.get_num_threads()
    fastdl.set_num_threads(threads)
    try:
        for bias in (None, b):
            z = x64 @ w64.T + (0.0 if bias is None else bias)
            scale = np.abs(x64) @ np.abs(w64).T + (0.0 if bias is None else np.abs(bias))
            for act in (None, "relu", "sigmoid", "tanh"):
                y = ops.linear_forward(x, w, bias, activation=act, batch_invariant=False)
                assert_close(y, act64(z, act), scale, act)
    finally:
        fastdl.set_num_threads(prev)


# ---------------------------------------------------------------- backward: reference


def backward64(dout, x, w):
    d64, x64, w64 = (v.astype(np.float64) for v in (dout, x, w))
    return (d64 @ w64, d64.T @ x64, d64.sum(axis=0)), (np.abs(d64) @ np.abs(w64), np.abs(d64).T @ np.abs(x64),
                                                       np.abs(d64).sum(axis=0))


@pytest.mark.parametrize("B,C,OC", SHAPES)
def test_linear_backward_matches_reference(isa, rng, B, C, OC):
    x, w, _ = layer(rng, B, C, OC)
    dout = rng.standard_normal((B, OC)).astype(F32)
    dx, dw, db = ops.linear_backward(dout, x, w)
    (want_dx, want_dw, want_db), (s_dx, s_dw, s_db) = backward64(dout, x, w)
    assert_close(dx, want_dx, s_dx)
    assert_close(dw, want_dw, s_dw)
    assert_close(db, want_db, s_db)


def test_linear_backward_options(isa, rng):
    x, w, _ = layer(rng, 20, 30, 40)
    dout = rng.standard_normal((20, 40)).astype(F32)
    dx, dw, db = ops.linear_backward(dout, x, w, bias=False, need_dx=False)
    assert dx is None and db is None
    full = ops.linear_backward(dout, x, w)
    np.testing.assert_array_equal(dw, full[1])
    # outputs written in place when given
    bufs = np.empty((20, 30), F32), np.empty((40, 30), F32), np.empty(40, F32)
    got = ops.linear_backward(dout, x, w, dx=bufs[0], dweight=bufs[1], dbias=bufs[2])
    for g, buf, f in zip(got, bufs, full):
        assert g is buf
        np.testing.assert_array_equal(g, f)


def test_linear_backward_accumulates(isa, rng):
    x, w, _ = layer(rng, 33, 70, 50)
    d1 = rng.standard_normal((33, 50)).astype(F32)
    d2 = rng.standard_normal((33, 50)).astype(F32)
    dw0 = rng.standard_normal((50, 70)).astype(F32)
    db0 = rng.standard_normal(50).astype(F32)
    dw, db = dw0.copy(), db0.copy()
    dx = np.full((33, 70), np.nan, F32)
    r = ops.linear_backward(d1, x, w, accumulate=True, dx=dx, dweight=dw, dbias=db)
    assert r[0] is dx and r[1] is dw and r[2] is db
    assert np.shares_memory(r[1], dw) and np.shares_memory(r[2], db)
    ops.linear_backward(d2, x, w, accumulate=True, need_dx=False, dweight=dw, dbias=db)
    (_, g1, b1), (_, s1, t1) = backward64(d1, x, w)
    (dx2, g2, b2), (sx, s2, t2) = backward64(d2, x, w)
    assert_close(dw, dw0 + g1 + g2, np.abs(dw0) + s1 + s2)
    assert_close(db, db0 + b1 + b2, np.abs(db0) + t1 + t2)
    # dx is overwritten, never accumulated
    (dx1, _, _), (sx1, _, _) = backward64(d1, x, w)
    assert_close(dx, dx1, sx1)


def test_linear_backward_dbias_sums_in_double(isa):
    # 200000 rows of 1 + 2^-20: a float32 running sum would stall far below the true total.
    B = 200_000
    dout = np.full((B, 3), 1 + 2.0**-20, F32)
    x = np.ones((B, 1), F32)
    w = np.ones((3, 1), F32)
    _, _, db = ops.linear_backward(dout, x, w, need_dx=False)
    np.testing.assert_allclose(db, B * (1 + 2.0**-20), rtol=1e-7)


@given(B=st.integers(1, 80), C=st.integers(1, 90), OC=st.integers(1, 70), bias=st.booleans())
def test_linear_backward_fuzz(B, C, OC, bias):
    rng = np.random.default_rng(B * 7919 + C * 31 + OC)
    x, w, _ = layer(rng, B, C, OC)
    dout = rng.standard_normal((B, OC)).astype(F32)
    dx, dw, db = ops.linear_backward(dout, x, w, bias=bias)
    (want_dx, want_dw, want_db), (s_dx, s_dw, s_db) = backward64(dout, x, w)
    assert_close(dx, want_dx, s_dx)
    assert_close(dw, want_dw, s_dw)
    if bias:
        assert_close(db, want_db, s_db)
    else:
        assert db is None


# The activation's backward fused into the input gradient's product: x is the activation's output.
# Shapes cover each tile (the 4-row one: B <= 4; the one-vector one: C <= 16), partial strips,
# several K-blocks (OC = 900) and both thread layouts of linear_backward (side by side, split).
@pytest.mark.parametrize("B,C,OC", [(2, 50, 20), (37, 10, 50), (33, 70, 50), (70, 200, 900), (128, 256, 128),
                                    (600, 784, 256)])
@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_linear_backward_input_activation(isa, rng, B, C, OC, act):
    z, w, _ = layer(rng, B, C, OC)
    z[rng.random(z.shape) < 0.1] = 0.0  # relu's output has exact zeros: their gradient is 0
    x = act64(z.astype(np.float64), act).astype(F32)
    dout = rng.standard_normal((B, OC)).astype(F32)
    dx, dw, db = ops.linear_backward(dout, x, w, input_activation=act)
    plain = ops.linear_backward(dout, x, w)
    unfused = {"relu": ops.relu_backward, "sigmoid": ops.sigmoid_backward, "tanh": ops.tanh_backward}[act](
        plain[0], x)
    np.testing.assert_array_equal(dw, plain[1])
    np.testing.assert_array_equal(db, plain[2])
    np.testing.assert_allclose(dx, unfused, rtol=2e-7, atol=0)  # same float operations, FMA aside
    (want_dx, _, _), (s_dx, _, _) = backward64(dout, x, w)
    x64 = x.astype(np.float64)
    deriv = {"relu": (x64 > 0).astype(np.float64), "sigmoid": x64 * (1 - x64), "tanh": 1 - x64 * x64}[act]
    # deriv is computed in float32 (1 - y*y loses to cancellation near |y| = 1): ~1e-7 absolute error
    assert_close(dx, want_dx * deriv, s_dx * np.abs(deriv) + 0.05 * np.abs(want_dx))
    if act == "relu":
        assert (dx[x == 0] == 0).all()


# relu's derivative in the product's epilogue is heaviside(x, 0), as in relu_backward: a NaN in x (the
# relu's output) gives NaN there, a NaN in a row of dout a NaN row of dx, at x = 0 too (x * (x > 0)
# would zero both).
@pytest.mark.parametrize("B,C,OC", [(2, 50, 20), (37, 10, 50), (70, 200, 900), (128, 256, 128)])
def test_linear_backward_input_relu_propagates_nan(isa, rng, B, C, OC):
    z, w, _ = layer(rng, B, C, OC)
    x = np.maximum(z, 0)
    x[0, 3] = np.nan
    x[B - 1, :] = 0.0
    dout = rng.standard_normal((B, OC)).astype(F32)
    dout[B - 1, OC // 2] = np.nan
    dx, _, _ = ops.linear_backward(dout, x, w, input_activation="relu")
    d64 = dout.astype(np.float64) @ w.astype(np.float64)
    want = d64 * np.heaviside(x.astype(np.float64), 0.0)
    assert np.isnan(dx[0, 3]) and np.isnan(dx[B - 1]).all()
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(want))
    np.testing.assert_allclose(dx, ops.relu_backward(ops.linear_backward(dout, x, w)[0], x), rtol=2e-7, atol=0)


@pytest.mark.parametrize("none", [None, "none"])
def test_linear_backward_input_activation_none(rng, none):
    x, w, _ = layer(rng, 9, 20, 7)
    dout = rng.standard_normal((9, 7)).astype(F32)
    for got, want in zip(ops.linear_backward(dout, x, w, input_activation=none), ops.linear_backward(dout, x, w)):
        np.testing.assert_array_equal(got, want)


# Without dx, the weight and bias gradients come from one product whose threads each sum the rows
# they computed: split by rows (OC = 256), by columns (OC = 50), and on one thread.
@pytest.mark.parametrize("B,C,OC", [(128, 784, 256), (100, 700, 50), (9, 20, 7)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_linear_backward_weight_and_bias_gradients_threads(isa, rng, B, C, OC, accumulate):
    x, w, _ = layer(rng, B, C, OC)
    dout = rng.standard_normal((B, OC)).astype(F32)
    dw0, db0 = rng.standard_normal((OC, C)).astype(F32), rng.standard_normal(OC).astype(F32)
    (_, want_dw, want_db), (_, s_dw, s_db) = backward64(dout, x, w)
    prev = fastdl.get_num_threads()
    got = []
    try:
        for nt in (1, 2):
            fastdl.set_num_threads(nt)
            dw, db = dw0.copy(), db0.copy()
            ops.linear_backward(dout, x, w, need_dx=False, accumulate=accumulate, dweight=dw, dbias=db)
            got.append((dw, db))
    finally:
        fastdl.set_num_threads(prev)
    base_w, base_b = (dw0.astype(np.float64), db0.astype(np.float64)) if accumulate else (0.0, 0.0)
    for dw, db in got:
        assert_close(dw, base_w + want_dw, s_dw + np.abs(base_w))
        assert_close(db, base_b + want_db, s_db + np.abs(base_b))
    np.testing.assert_array_equal(got[0][1], got[1][1])  # the same sums, in the same order


# ---------------------------------------------------------------- backward: finite differences


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("B,C,OC", [(5, 7, 3), (40, 33, 20)])
def test_linear_gradients_finite_differences(isa, rng, with_bias, B, C, OC):
    # L = sum(R * linear_forward(x, w, b)) with a non-uniform R, so dL/dy = R. L is linear in each of
    # x, w and b, so central differences have no truncation error and eps can be large (0.25): the
    # float32 rounding of the forward pass (~1e-7 relative) is all that is left, divided by 2*eps.
    x, w, b = layer(rng, B, C, OC)
    bias = b if with_bias else None
    R = rng.standard_normal((B, OC))

    def loss(x_, w_, b_):
        return float(np.sum(R * ops.linear_forward(x_, w_, b_).astype(np.float64)))

    dx, dw, db = ops.linear_backward(R.astype(F32), x, w, bias=with_bias)
    eps = 0.25
    params = [("x", x, dx), ("w", w, dw)] + ([("b", b, db)] if with_bias else [])
    for name, p, grad in params:
        flat = p.reshape(-1)
        idx = rng.choice(flat.size, size=min(flat.size, 25), replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + F32(eps)
            up = loss(x, w, bias)
            flat[i] = old - F32(eps)
            down = loss(x, w, bias)
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            g = grad.reshape(-1)[i]
            assert abs(numeric - g) <= 1e-4 * (1 + abs(numeric)), (name, i, numeric, g)


# ---------------------------------------------------------------- threads


# On 2 threads the backward products run side by side (one thread each) up to 64 MFLOP each, and
# one after the other, each split, above: 128x128->10 and 512x300->200 pair, 600x784->256 splits.
@pytest.mark.parametrize("B,C,OC", [(128, 128, 10), (512, 300, 200), (600, 784, 256)])
def test_linear_one_and_two_threads_agree(isa, rng, B, C, OC):
    x, w, b = layer(rng, B, C, OC)
    dout = rng.standard_normal((B, OC)).astype(F32)
    prev = fastdl.get_num_threads()
    res = []
    try:
        for nt in (1, 2):
            fastdl.set_num_threads(nt)
            res.append((ops.linear_forward(x, w, b, "sigmoid"),) + ops.linear_backward(dout, x, w))
    finally:
        fastdl.set_num_threads(prev)
    for one, two in zip(*res):
        np.testing.assert_allclose(one, two, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- bad inputs


def ones(*shape):
    return np.ones(shape, F32)


@pytest.mark.parametrize(
    "args, kwargs, exc, pattern",
    [
        ((ones(4, 784), ones(10, 783)), {}, ValueError,
         r"linear_forward: weight has shape \(10, 783\), expected \(out_features, in_features\) = \(10, 784\)"),
        ((np.ones((4, 3)), ones(2, 3)), {}, TypeError, r"linear_forward: x must have dtype float32"),
        ((ones(4, 3), np.ones((2, 3), np.float64)), {}, TypeError, r"linear_forward: weight must have dtype float32"),
        ((np.ones((4, 3), F32, order="F"), ones(2, 3)), {}, TypeError, r"linear_forward: x must be C-contiguous"),
        ((ones(4, 6)[:, ::2], ones(2, 3)), {}, TypeError, r"linear_forward: x must be C-contiguous"),
        ((ones(3), ones(2, 3)), {}, ValueError, r"linear_forward: x must be 2-D \(batch, in_features\)"),
        ((ones(4, 3), ones(3)), {}, ValueError, r"linear_forward: weight must be 2-D"),
        ((ones(0, 3), ones(2, 3)), {}, ValueError, r"linear_forward: x is empty"),
        ((ones(4, 3), ones(0, 3)), {}, ValueError, r"linear_forward: weight is empty"),
        ((ones(4, 3), ones(2, 3), ones(3)), {}, ValueError,
         r"linear_forward: bias has shape \(3,\), expected \(out_features,\) = \(2,\)"),
        ((ones(4, 3), ones(2, 3)), dict(activation="softmax"), ValueError, r"linear_forward: activation must be"),
        ((ones(4, 3), ones(2, 3)), dict(out=ones(2, 4)), ValueError,
         r"linear_forward: out has shape \(2, 4\), expected \(batch, out_features\) = \(4, 2\)"),
    ],
)
def test_linear_forward_bad_input(args, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ops.linear_forward(*args, **kwargs)


def test_linear_forward_out_checks():
    out = ones(4, 2)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="linear_forward: out is read-only"):
        ops.linear_forward(ones(4, 3), ones(2, 3), out=out)
    buf = ones(20)
    with pytest.raises(ValueError, match="linear_forward: out must not share memory with x"):
        ops.linear_forward(buf[:12].reshape(4, 3), ones(2, 3), out=buf[8:16].reshape(4, 2))


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(dout=ones(4, 3)), ValueError,
         r"linear_backward: dout has shape \(4, 3\), expected \(batch, out_features\) = \(4, 2\)"),
        (dict(dout=np.ones((4, 2))), TypeError, r"linear_backward: dout must have dtype float32"),
        (dict(weight=ones(2, 4)), ValueError,
         r"linear_backward: weight has shape \(2, 4\), expected \(out_features, in_features\) = \(2, 5\)"),
        (dict(x=ones(0, 5), dout=ones(0, 2)), ValueError, r"linear_backward: x is empty"),
        (dict(accumulate=True), ValueError, r"linear_backward: accumulate=True needs dweight"),
        (dict(accumulate=True, dweight=ones(2, 5)), ValueError, r"linear_backward: accumulate=True needs dbias"),
        (dict(need_dx=False, dx=ones(4, 5)), ValueError, r"linear_backward: dx was given but need_dx=False"),
        (dict(bias=False, dbias=ones(2)), ValueError, r"linear_backward: dbias was given but bias=False"),
        (dict(dweight=ones(5, 2)), ValueError,
         r"linear_backward: dweight has shape \(5, 2\), expected \(out_features, in_features\) = \(2, 5\)"),
        (dict(dbias=ones(5)), ValueError, r"linear_backward: dbias has shape \(5,\), expected \(out_features,\)"),
        (dict(dx=ones(5, 4)), ValueError, r"linear_backward: dx has shape \(5, 4\), expected \(batch, in_features\)"),
        (dict(dx=np.ones((4, 5), F32, order="F")), TypeError, r"linear_backward: dx must be C-contiguous"),
        (dict(dweight=np.ones((2, 5), np.float64)), TypeError, r"linear_backward: dweight must have dtype float32"),
        (dict(input_activation="gelu"), ValueError,
         r"linear_backward: input_activation must be None or one of 'none', 'relu', 'sigmoid', 'tanh', got 'gelu'"),
        (dict(input_activation=1), TypeError, r"linear_backward: input_activation must be None or one of .*, got int"),
    ],
)
def test_linear_backward_bad_input(kwargs, exc, pattern):
    args = dict(dout=ones(4, 2), x=ones(4, 5), weight=ones(2, 5))
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        ops.linear_backward(args.pop("dout"), args.pop("x"), args.pop("weight"), **args)


def test_linear_backward_outputs_must_not_overlap():
    dout, x, w = ones(4, 2), ones(4, 5), ones(2, 5)
    with pytest.raises(ValueError, match="linear_backward: dx must not share memory with x"):
        ops.linear_backward(dout, x, w, dx=x)
    with pytest.raises(ValueError, match="linear_backward: dweight must not share memory with weight"):
        ops.linear_backward(dout, x, w, dweight=w)
    buf = ones(30)
    with pytest.raises(ValueError, match="linear_backward: dx must not share memory with dweight"):
        ops.linear_backward(dout, x, w, dweight=buf[:10].reshape(2, 5), dx=buf[8:28].reshape(4, 5))
    ro = ones(2, 5)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="linear_backward: dweight is read-only"):
        ops.linear_backward(dout, x, w, dweight=ro)
