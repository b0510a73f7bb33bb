"""conv2d_forward / conv2d_backward and nn.Conv2d: against the float64 references of reference.py, the
plain-loop kernels (conv2d_*_reference), finite differences, PyTorch where installed; every ISA path,
1 vs 2 threads, batch invariance, and bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdl
from fastdl import _C, nn, ops
from reference import (ISAS, act64, assert_close, bad_float32_arrays, f64, ref_conv2d,
                       ref_conv2d_backward)

# (N, C, H, W, OC, kernel, stride, padding (top, left, bottom, right), dilation, groups)
SHAPES = [
    (2, 1, 28, 28, 6, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 1),     # LeNet conv1
    (3, 6, 14, 14, 16, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),    # LeNet conv2
    (2, 32, 7, 7, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),     # VGG-style 3x3, same padding
    (1, 3, 9, 11, 5, (3, 2), (2, 3), (1, 0, 1, 0), (1, 1), 1),      # odd sizes, batch 1, stride > kernel
    (2, 4, 10, 9, 6, (3, 3), (2, 2), (2, 2, 2, 2), (2, 2), 2),      # dilation, groups, padding = k - 1
    (2, 8, 6, 6, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8),       # depthwise
    (3, 16, 5, 5, 12, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),     # 1x1 (the image is its own im2col)
    (2, 5, 4, 4, 3, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),       # 1x1 strided
    (2, 3, 5, 6, 4, (5, 6), (1, 1), (0, 0, 0, 0), (1, 1), 1),       # kernel = input size
    (2, 2, 5, 5, 3, (4, 4), (1, 1), (1, 2, 2, 1), (1, 1), 1),       # asymmetric padding ("same", even k)
    (20, 3, 6, 5, 4, (2, 2), (1, 1), (1, 1, 1, 1), (1, 1), 1),      # more images than one block
    (3, 4, 9, 8, 32, (3, 3), (1, 1), (2, 1, 2, 0), (2, 1), 2),      # 16 outputs per group, dilated, stride 1
    (2, 3, 8, 8, 4, (3, 3), (1, 1), (3, 3, 3, 3), (1, 1), 1),       # padding beyond the reach: col2im path
    (2, 2, 7, 9, 1, (3, 2), (1, 1), (1, 0, 1, 1), (1, 2), 1),       # one output channel (1-row tile)
    (2, 5, 6, 6, 2, (2, 2), (1, 1), (0, 0, 0, 0), (1, 1), 1),       # two output channels
    (3, 2, 12, 11, 12, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),    # 12 channels (12-row tile), 3 images
]


def _data(shape, seed=0, bias=True):
    n, c, h, w, oc, k, s, p, d, g = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((oc, c // g) + k).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32) if bias else None
    return x, wt, b, dict(stride=s, padding=p, dilation=d, groups=g)


def _dy(x, wt, kw, seed=1):
    y = ops.conv2d_forward_reference(x, wt, None, **kw)
    return np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", [None, "relu", "tanh"])
def test_forward_matches_reference(isa, shape, act):
    x, wt, b, kw = _data(shape)
    want, scale = ref_conv2d(x, wt, b, kw["stride"], kw["padding"], kw["dilation"], kw["groups"], act)
    assert_close(ops.conv2d_forward(x, wt, b, activation=act, **kw), want, scale, act)
    assert_close(ops.conv2d_forward_reference(x, wt, b, activation=act, **kw), want, scale, act)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_reference(isa, shape):
    x, wt, _, kw = _data(shape)
    dy = _dy(x, wt, kw)
    (dx_r, dxs), (dw_r, dws), (db_r, dbs) = ref_conv2d_backward(dy, x, wt, kw["stride"], kw["padding"],
                                                                kw["dilation"], kw["groups"])
    for fn in (ops.conv2d_backward, ops.conv2d_backward_reference):
        dx, dw, db = fn(dy, x, wt, **kw)
        assert_close(dx, dx_r, dxs)
        assert_close(dw, dw_r, dws)
        assert_close(db, db_r, dbs)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_backward_input_activation(isa, act):
    x, wt, _, kw = _data(SHAPES[2])
    xa = act64(f64(x), act).astype(np.float32)  # x is the output of the activation
    if act == "relu":
        xa[0, 0, 0, :3] = 0.0  # the derivative at 0 is 0, as in relu_backward
    dy = _dy(xa, wt, kw)
    (dx_r, dxs), _, _ = ref_conv2d_backward(dy, xa, wt, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    deriv = {"relu": (xa > 0).astype(np.float64), "sigmoid": f64(xa) * (1 - f64(xa)), "tanh": 1 - f64(xa) ** 2}[act]
    dx, _, _ = ops.conv2d_backward(dy, xa, wt, input_activation=act, **kw)
    assert_close(dx, dx_r * deriv, dxs)
    dx_plain, _, _ = ops.conv2d_backward(dy, xa, wt, **kw)
    want = ops.relu_backward(dx_plain, xa) if act == "relu" else None
    if want is not None:
        np.testing.assert_array_equal(dx, want)  # the fused derivative is relu_backward's, bit for bit


def test_backward_accumulate_and_optional_outputs():
    x, wt, _, kw = _data(SHAPES[1])
    dy = _dy(x, wt, kw)
    dx, dw, db = ops.conv2d_backward(dy, x, wt, **kw)
    dw2, db2 = np.ones_like(dw), np.ones_like(db)
    out = ops.conv2d_backward(dy, x, wt, need_dx=False, accumulate=True, dweight=dw2, dbias=db2, **kw)
    assert out[0] is None and out[1] is dw2 and out[2] is db2
    np.testing.assert_allclose(dw2, dw + 1, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(db2, db + 1, rtol=1e-6, atol=1e-5)
    only_dx = ops.conv2d_backward(dy, x, wt, bias=False, need_dweight=False, **kw)
    assert only_dx[1] is None and only_dx[2] is None
    np.testing.assert_array_equal(only_dx[0], dx)


def test_threads_give_the_same_bits():
    x, wt, b, kw = _data((37, 6, 14, 14, 16, (5, 5), (1, 1), (1, 1, 1, 1), (1, 1), 1))
    dy = _dy(x, wt, kw)
    prev = fastdl.get_num_threads()
    try:
        res = []
        for t in (1, 2):
            fastdl.set_num_threads(t)
            res.append((ops.conv2d_forward(x, wt, b, activation="relu", **kw),) + ops.conv2d_backward(dy, x, wt, **kw))
    finally:
        fastdl.set_num_threads(prev)
    for a, c in zip(*res):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[4], SHAPES[10]])
def test_forward_is_batch_invariant(shape):
    x, wt, b, kw = _data(shape)
    y = ops.conv2d_forward(x, wt, b, **kw)
    for i in range(x.shape[0]):
        np.testing.assert_array_equal(ops.conv2d_forward(x[i:i + 1], wt, b, **kw), y[i:i + 1])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 5), h=st.integers(1, 12), w=st.integers(1, 12),
       oc=st.integers(1, 7), kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 4),
       sw=st.integers(1, 4), dh=st.integers(1, 3), dw=st.integers(1, 3), groups=st.sampled_from([1, 2, 3]),
       pads=st.tuples(*[st.integers(0, 4)] * 4), seed=st.integers(0, 2**16))
def test_hypothesis_shapes(n, c, h, w, oc, kh, kw, sh, sw, dh, dw, groups, pads, seed):
    c, oc = c * groups, oc * groups
    pads = tuple(min(p, k - 1) for p, k in zip(pads, (kh, kw, kh, kw)))  # padding up to kernel - 1
    if dh * (kh - 1) + 1 > h + pads[0] + pads[2] or dw * (kw - 1) + 1 > w + pads[1] + pads[3]:
        return  # the bad-input tests cover a kernel larger than the padded input
    x, wt, b, kwargs = _data((n, c, h, w, oc, (kh, kw), (sh, sw), pads, (dh, dw), groups), seed)
    want, scale = ref_conv2d(x, wt, b, (sh, sw), pads, (dh, dw), groups)
    assert_close(ops.conv2d_forward(x, wt, b, **kwargs), want, scale)
    dy = _dy(x, wt, kwargs, seed + 1)
    (dx_r, dxs), (dw_r, dws), (db_r, dbs) = ref_conv2d_backward(dy, x, wt, (sh, sw), pads, (dh, dw), groups)
    dx, dwt, db = ops.conv2d_backward(dy, x, wt, **kwargs)
    assert_close(dx, dx_r, dxs)
    assert_close(dwt, dw_r, dws)
    assert_close(db, db_r, dbs)


# ---------------------------------------------------------------- bad input


def _good():
    x, wt, b, kw = _data(SHAPES[1])
    return x, wt, b, kw


@pytest.mark.parametrize("case", [
    (dict(x=np.zeros((2, 5, 14, 14), np.float32)), ValueError, "weight"),          # channel mismatch
    (dict(x=np.zeros((2, 6, 3, 3), np.float32)), ValueError, "larger than the padded input"),
    (dict(x=np.zeros((6, 14, 14), np.float32)), ValueError, "x must be 4-D"),
    (dict(x=np.zeros((0, 6, 14, 14), np.float32)), ValueError, "x is empty"),
    (dict(weight=np.zeros((16, 6, 5), np.float32)), ValueError, "weight must be 4-D"),
    (dict(weight=np.zeros((16, 6, 0, 5), np.float32)), ValueError, "weight is empty"),
    (dict(bias=np.zeros(15, np.float32)), ValueError, "bias"),
    (dict(stride=0), ValueError, "stride"),
    (dict(stride=-1), ValueError, "stride"),
    (dict(stride=1.5), TypeError, "stride"),
    (dict(stride=(1, 2, 3)), ValueError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(padding="same", stride=2), ValueError, "stride"),
    (dict(dilation=0), ValueError, "dilation"),
    (dict(groups=4), ValueError, "groups"),                                         # does not divide 6
    (dict(groups=0), ValueError, "groups"),
    (dict(groups=True), TypeError, "groups"),
    (dict(activation="gelu"), ValueError, "activation"),
    (dict(out=np.zeros((3, 16, 10, 9), np.float32)), ValueError, "out"),
])
def test_forward_bad_input(case):
    change, exc, words = case
    x, wt, b, kw = _good()
    args = dict(x=x, weight=wt, bias=b, **kw)
    args.update(change)
    with pytest.raises(exc, match=words):
        ops.conv2d_forward(**args)


@pytest.mark.parametrize("arg", ["x", "weight", "bias"])
def test_forward_bad_arrays(arg):
    x, wt, b, kw = _good()
    args = dict(x=x, weight=wt, bias=b, **kw)
    for kind, bad, exc, words in bad_float32_arrays(args[arg]):
        if kind == "None" and arg == "bias":
            continue  # no bias is allowed
        args2 = dict(args, **{arg: bad})
        with pytest.raises(exc, match=words):
            ops.conv2d_forward(**args2)


def test_backward_bad_input():
    x, wt, _, kw = _good()
    dy = _dy(x, wt, kw)
    with pytest.raises(ValueError, match="dout"):
        ops.conv2d_backward(np.ascontiguousarray(dy[:, :, :-1]), x, wt, **kw)
    with pytest.raises(ValueError, match="dx was given"):
        ops.conv2d_backward(dy, x, wt, need_dx=False, dx=np.zeros_like(x), **kw)
    with pytest.raises(ValueError, match="accumulate"):
        ops.conv2d_backward(dy, x, wt, accumulate=True, **kw)
    with pytest.raises(ValueError, match="dweight"):
        ops.conv2d_backward(dy, x, wt, dweight=np.zeros((16, 6, 5, 4), np.float32), **kw)
    with pytest.raises(ValueError, match="share memory"):
        ops.conv2d_backward(dy, x, wt, dx=x, **kw)
    with pytest.raises(ValueError, match="input_activation"):
        ops.conv2d_backward(dy, x, wt, input_activation="softmax", **kw)
    for kind, bad, exc, words in bad_float32_arrays(dy):
        with pytest.raises(exc, match=words):
            ops.conv2d_backward(bad, x, wt, **kw)


# ---------------------------------------------------------------- nn.Conv2d


def test_layer_shapes_repr_and_config():
    c = nn.Conv2d(3, 8, 3, stride=2, padding=1, rng=0)
    assert c.weight.shape == (8, 3, 3, 3) and c.bias.shape == (8,)
    assert c(np.zeros((2, 3, 9, 10), np.float32)).shape == (2, 8, 5, 5)
    assert repr(c) == "Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))"
    d = nn.Conv2d(4, 4, (1, 3), padding="same", groups=4, bias=False)
    assert "padding='same'" in repr(d) and "groups=4" in repr(d) and "bias=False" in repr(d)
    assert d(np.zeros((1, 4, 5, 6), np.float32)).shape == (1, 4, 5, 6)
    e = nn.module_from_config(c.get_config())
    assert repr(e) == repr(c)


@pytest.mark.parametrize("bad, exc, words", [
    (dict(in_channels=0), ValueError, "in_channels"),
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(kernel_size=(3,)), ValueError, "kernel_size"),
    (dict(groups=4), ValueError, "groups"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(padding="same", stride=2), ValueError, "stride"),
    (dict(bias=1), TypeError, "bias"),
])
def test_layer_bad_arguments(bad, exc, words):
    args = dict(in_channels=6, out_channels=8, kernel_size=3)
    args.update(bad)
    with pytest.raises(exc, match=words):
        nn.Conv2d(**args)


def test_layer_bad_input_names_the_fix():
    c = nn.Conv2d(1, 4, 5)
    with pytest.raises(ValueError, match="4-D.*reshape"):
        c(np.zeros((2, 784), np.float32))
    with pytest.raises(ValueError, match="channels, expected 1"):
        c(np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(ValueError, match="larger than the padded input"):
        c(np.zeros((2, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        c(np.full((1, 1, 8, 8), np.nan, np.float32))


def test_fused_activation_equals_unfused():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    fused = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, rng=1), nn.ReLU(), nn.Conv2d(8, 4, 3, rng=2), nn.Tanh())
    plain = nn.Sequential(*[m for m in fused])  # the same layers, run one at a time below
    y = fused(x)
    h = x
    for m in plain:
        h = m.forward(h)
    np.testing.assert_array_equal(y, h)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    fused.zero_grad()
    dx = fused.backward(dy)
    grads = [p.grad.copy() for p in fused.parameters()]
    fused.zero_grad()
    g = dy
    for m in reversed(list(plain)):
        g = m.backward(g)
    np.testing.assert_array_equal(dx, g)
    for a, p in zip(grads, fused.parameters()):
        np.testing.assert_array_equal(a, p.grad)


def test_save_load_and_predict(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding="same", rng=0), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3, rng=1))
    x = np.random.default_rng(0).standard_normal((5, 1, 6, 6)).astype(np.float32)
    model.eval()
    y = model(x)
    model.save(tmp_path / "cnn.npz")
    back = nn.load(tmp_path / "cnn.npz")
    back.eval()
    np.testing.assert_array_equal(back(x), y)
    assert repr(back) == repr(model)


def test_gradcheck_small_cnn():
    from test_nn_gradcheck import gradcheck

    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=0), nn.Tanh(), nn.Conv2d(3, 2, (2, 3), stride=2, rng=1),
                          nn.Flatten(), nn.Linear(2 * 3 * 2, 3, rng=2))
    x = np.random.default_rng(1).standard_normal((2, 2, 6, 5)).astype(np.float32)
    gradcheck(model, nn.CrossEntropyLoss(), x, np.array([0, 2]))


# ---------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch(shape):
    torch = pytest.importorskip("torch")
    x, wt, b, kw = _data(shape)
    top, left, bottom, right = kw["padding"]
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wtt = torch.tensor(wt, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    xpad = torch.nn.functional.pad(xt, (left, right, top, bottom))
    yt = torch.nn.functional.conv2d(xpad, wtt, bt, kw["stride"], 0, kw["dilation"], kw["groups"])
    y = ops.conv2d_forward(x, wt, b, **kw)
    scale = ref_conv2d(x, wt, b, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])[1]
    assert_close(y, yt.detach().numpy(), scale)
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    dx, dw, db = ops.conv2d_backward(dy, x, wt, **kw)
    (_, dxs), (_, dws), (_, dbs) = ref_conv2d_backward(dy, x, wt, kw["stride"], kw["padding"], kw["dilation"],
                                                       kw["groups"])
    assert_close(dx, xt.grad.numpy(), dxs)
    assert_close(dw, wtt.grad.numpy(), dws)
    assert_close(db, bt.grad.numpy(), dbs)


def test_state_dict_maps_onto_torch():
    torch = pytest.importorskip("torch")
    ours = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding="same" if False else (1, 0), dilation=(1, 2), groups=2,
                     rng=0)
    theirs = torch.nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(2).standard_normal((3, 4, 9, 8)).astype(np.float32)
    np.testing.assert_allclose(ours(x), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_isa_list_is_known():
    assert set(ISAS) <= {"generic", "avx2", "avx512"} and _C.best_isa() in ISAS


def test_batchnorm2d_folds_into_conv_in_eval_mode(monkeypatch):
    rng = np.random.default_rng(7)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, rng=0), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 1, rng=1))
    x = rng.standard_normal((8, 3, 7, 7)).astype(np.float32)
    for _ in range(3):
        model(x)  # training mode: running statistics move away from (0, 1)
    bn = model[1]
    bn.weight.data[:] = rng.uniform(0.5, 2.0, 6)
    bn.bias.data[:] = rng.standard_normal(6)
    model.eval()
    h = x  # unfolded: layer by layer
    for m in model:
        h = m.forward(h)
    calls = []
    real_fwd, real_bwd = nn.BatchNorm2d._ops
    monkeypatch.setattr(nn.BatchNorm2d, "_ops", (lambda *a, **k: calls.append(1) or real_fwd(*a, **k), real_bwd))
    model[1].forward(np.zeros((2, 6, 3, 3), np.float32))
    assert calls == [1]  # (the counter sees the layer's forward)
    calls.clear()
    y = model(x)
    assert calls == []  # folded: the batch norm did not run (a backward reruns it, below)
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-5)
    # a backward after a folded forward reruns the pair unfolded: gradients as without folding
    dy = rng.standard_normal(y.shape).astype(np.float32)
    model.zero_grad()
    dx = model.backward(dy)
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    g = dy
    for m in reversed(list(model)):
        g = m.backward(g)
    np.testing.assert_allclose(dx, g, rtol=1e-5, atol=1e-6)
    for a, p in zip(grads, model.parameters()):
        np.testing.assert_allclose(a, p.grad, rtol=1e-5, atol=1e-5)
    calls.clear()
    model.train()
    model(x)
    assert calls == [1]  # training mode: the batch norm runs


def test_padding_and_output_size_helpers():
    assert ops.conv2d_padding(1, 3) == (1, 1, 1, 1)
    assert ops.conv2d_padding((2, 0), 3) == (2, 0, 2, 0)
    assert ops.conv2d_padding("valid", 5) == (0, 0, 0, 0)
    assert ops.conv2d_padding("same", 4) == (1, 1, 2, 2)          # an even reach pads one more at the end
    assert ops.conv2d_padding("same", 3, dilation=2) == (2, 2, 2, 2)
    assert ops.conv2d_output_size(28, 28, 5, padding=2) == (28, 28)
    assert ops.conv2d_output_size(14, 9, (3, 2), stride=(2, 3), dilation=(1, 2)) == (6, 3)
    assert ops.conv2d_output_size(7, 8, 3, padding="same") == (7, 8)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: ops.conv2d_padding(-1, 3), ValueError, "padding"),
    (lambda: ops.conv2d_padding(1.5, 3), TypeError, "padding"),
    (lambda: ops.conv2d_padding(float("nan"), 3), TypeError, "padding"),
    (lambda: ops.conv2d_padding((1, 2, 3), 3), ValueError, "padding"),
    (lambda: ops.conv2d_padding("full", 3), ValueError, "padding"),
    (lambda: ops.conv2d_padding("same", 3, stride=2), ValueError, "stride"),
    (lambda: ops.conv2d_padding("same", 0), ValueError, "kernel_size"),
    (lambda: ops.conv2d_output_size(28, 28, 0), ValueError, "kernel_size"),
    (lambda: ops.conv2d_output_size(28, 28, 3, stride=0), ValueError, "stride"),
    (lambda: ops.conv2d_output_size(28, 28, 3, dilation="2"), TypeError, "dilation"),
    (lambda: ops.conv2d_output_size(28, 28, (3, None)), TypeError, "kernel_size"),
])
def test_padding_and_output_size_bad_input(call, exc, words):
    with pytest.raises(exc, match=words):
        call()
