"""Pooling (max, average, adaptive average): float64 plain-loop references, PyTorch when importable,
shape fuzzing, NaN/tie rules, determinism across thread counts and instruction sets, finite-difference
gradients through the layers, bad inputs, save/load and printing of the layers."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastdl import _C, nn, ops
from reference import (bad_float32_arrays, ref_adaptive_avg_pool2d, ref_adaptive_avg_pool2d_backward,
                       ref_avg_pool2d, ref_avg_pool2d_backward, ref_max_pool2d, ref_max_pool2d_backward)
from test_nn_gradcheck import gradcheck


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# (input shape, kernel_size, stride, padding): odd sizes, stride > kernel, padding = kernel/2, the
# kernel as large as the (padded) input, batch 1
CASES = [
    ((2, 3, 8, 8), 2, 2, 0),
    ((1, 2, 7, 9), 3, 2, 1),
    ((2, 1, 5, 5), 5, 1, 2),
    ((1, 3, 6, 7), (3, 2), (1, 3), (1, 1)),
    ((3, 2, 9, 5), 2, 3, 0),
    ((1, 1, 4, 4), 4, None, 0),
    ((2, 2, 3, 11), (1, 4), (2, 1), (0, 2)),
    ((1, 1, 1, 1), 1, 1, 0),
]


def stride_of(k, s):
    return pair(k) if s is None else pair(s)


@pytest.mark.parametrize("shape, k, s, p", CASES)
def test_max_pool_matches_reference(isa, rng, shape, k, s, p):
    x = rng.standard_normal(shape).astype(np.float32)
    out, idx = ops.max_pool2d(x, k, s, p)
    want, want_idx = ref_max_pool2d(x, pair(k), stride_of(k, s), pair(p))
    assert out.dtype == np.float32 and idx.dtype == np.int64
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(idx, want_idx)
    d = rng.standard_normal(out.shape).astype(np.float32)
    dx = ops.max_pool2d_backward(d, idx, x.shape)
    np.testing.assert_allclose(dx, ref_max_pool2d_backward(d, idx, x.shape), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape, k, s, p", CASES)
def test_avg_pool_matches_reference(isa, rng, shape, k, s, p):
    x = rng.standard_normal(shape).astype(np.float32)
    out = ops.avg_pool2d(x, k, s, p)
    np.testing.assert_allclose(out, ref_avg_pool2d(x, pair(k), stride_of(k, s), pair(p)), rtol=1e-5, atol=1e-6)
    d = rng.standard_normal(out.shape).astype(np.float32)
    dx = ops.avg_pool2d_backward(d, x.shape, k, s, p)
    np.testing.assert_allclose(dx, ref_avg_pool2d_backward(d, x.shape, pair(k), stride_of(k, s), pair(p)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, size", [((2, 3, 7, 9), 1), ((1, 2, 7, 9), (3, 4)), ((2, 1, 5, 6), (5, 2)),
                                         ((1, 2, 4, 5), (9, 11)), ((1, 1, 1, 1), 1), ((2, 2, 33, 35), 1),
                                         ((1, 2, 6, 6), (None, 2))])
def test_adaptive_avg_pool_matches_reference(isa, rng, shape, size):
    x = rng.standard_normal(shape).astype(np.float32)
    out = ops.adaptive_avg_pool2d(x, size)
    oh, ow = pair(size) if size is not None else (None, None)
    oh, ow = shape[2] if oh is None else oh, shape[3] if ow is None else ow
    assert out.shape == shape[:2] + (oh, ow)
    np.testing.assert_allclose(out, ref_adaptive_avg_pool2d(x, oh, ow), rtol=1e-6, atol=1e-7)
    d = rng.standard_normal(out.shape).astype(np.float32)
    np.testing.assert_allclose(ops.adaptive_avg_pool2d_backward(d, x.shape),
                               ref_adaptive_avg_pool2d_backward(d, x.shape), rtol=1e-6, atol=1e-7)


@st.composite
def pool_shapes(draw):
    H, W = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    kh, kw = draw(st.integers(1, H + 2)), draw(st.integers(1, W + 2))
    ph = draw(st.integers(max(0, -((H - kh) // 2)), kh // 2))  # enough padding for the kernel to fit
    pw = draw(st.integers(max(0, -((W - kw) // 2)), kw // 2))
    if kh > H + 2 * ph or kw > W + 2 * pw:
        kh, kw, ph, pw = min(kh, H), min(kw, W), 0, 0
    sh, sw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 3)), H, W), (kh, kw), (sh, sw), (ph, pw)


@given(geo=pool_shapes(), seed=st.integers(0, 2**32 - 1))
def test_pools_any_shape(geo, seed):
    shape, k, s, p = geo
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    out, idx = ops.max_pool2d(x, k, s, p)
    want, want_idx = ref_max_pool2d(x, k, s, p)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(idx, want_idx)
    d = rng.standard_normal(out.shape).astype(np.float32)
    np.testing.assert_allclose(ops.max_pool2d_backward(d, idx, shape), ref_max_pool2d_backward(d, idx, shape),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ops.avg_pool2d(x, k, s, p), ref_avg_pool2d(x, k, s, p), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.avg_pool2d_backward(d, shape, k, s, p), ref_avg_pool2d_backward(d, shape, k, s, p),
                               rtol=1e-5, atol=1e-6)


@given(H=st.integers(1, 10), W=st.integers(1, 10), OH=st.integers(1, 12), OW=st.integers(1, 12),
       seed=st.integers(0, 2**32 - 1))
def test_adaptive_any_shape(H, W, OH, OW, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, H, W)).astype(np.float32)
    np.testing.assert_allclose(ops.adaptive_avg_pool2d(x, (OH, OW)), ref_adaptive_avg_pool2d(x, OH, OW),
                               rtol=1e-6, atol=1e-7)
    d = rng.standard_normal((2, 2, OH, OW)).astype(np.float32)
    np.testing.assert_allclose(ops.adaptive_avg_pool2d_backward(d, x.shape),
                               ref_adaptive_avg_pool2d_backward(d, x.shape), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- NaN, -inf and ties


def test_max_pool_nan_inf_and_ties():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 1] = np.nan           # window (0, 0): NaN is the maximum
    x[0, 0, 0, 2:] = 5.0             # window (0, 1): a tie, the first index wins
    x[0, 0, 2:, :2] = -np.inf        # window (1, 0): all -inf: -inf at the window's first element
    x[0, 0, 2, 3], x[0, 0, 3, 2] = np.nan, np.nan  # window (1, 1): two NaNs: the last one, as PyTorch
    out, idx = ops.max_pool2d(x, 2)
    assert np.isnan(out[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1
    assert out[0, 0, 0, 1] == 5.0 and idx[0, 0, 0, 1] == 2
    assert out[0, 0, 1, 0] == -np.inf and idx[0, 0, 1, 0] == 8
    assert np.isnan(out[0, 0, 1, 1]) and idx[0, 0, 1, 1] == 14
    want, want_idx = ref_max_pool2d(x, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(idx, want_idx)


# ---------------------------------------------------------------- against PyTorch


@pytest.mark.parametrize("shape, k, s, p", CASES)
def test_against_torch(rng, shape, k, s, p):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 0, 0] = np.nan if shape[2] * shape[3] > 4 else x[0, 0, 0, 0]  # NaN propagation as well
    out, idx = ops.max_pool2d(x, k, s, p)
    xt = torch.tensor(x, requires_grad=True)
    tout, tidx = F.max_pool2d(xt, k, s, p, return_indices=True)
    np.testing.assert_array_equal(out, tout.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    d = rng.standard_normal(out.shape).astype(np.float32)
    tout.backward(torch.tensor(d))
    np.testing.assert_allclose(ops.max_pool2d_backward(d, idx, shape), xt.grad.numpy(), rtol=1e-6, atol=1e-6)

    x = rng.standard_normal(shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    tout = F.avg_pool2d(xt, k, s, p)
    np.testing.assert_allclose(ops.avg_pool2d(x, k, s, p), tout.detach().numpy(), rtol=1e-5, atol=1e-6)
    tout.backward(torch.tensor(d))
    np.testing.assert_allclose(ops.avg_pool2d_backward(d, shape, k, s, p), xt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [1, 2, (3, 5), (7, 4), (10, 13)])
def test_adaptive_against_torch(rng, size):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 7, 10)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    tout = torch.nn.functional.adaptive_avg_pool2d(xt, size)
    out = ops.adaptive_avg_pool2d(x, size)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-6, atol=1e-6)
    d = rng.standard_normal(out.shape).astype(np.float32)
    tout.backward(torch.tensor(d))
    np.testing.assert_allclose(ops.adaptive_avg_pool2d_backward(d, x.shape), xt.grad.numpy(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- determinism


def test_same_bits_on_1_and_2_threads_and_every_isa(rng):
    x = rng.standard_normal((4, 40, 33, 31)).astype(np.float32)  # 164K elements: the parallel path
    prev_t, prev_isa = _C.get_num_threads(), _C.get_isa()
    results = []

    def run():
        out, idx = ops.max_pool2d(x, 3, 2, 1)
        d = np.ascontiguousarray(out[:, ::-1])
        a = ops.avg_pool2d(x, (2, 3), (2, 2), (1, 0))
        g = ops.adaptive_avg_pool2d(x, 1)
        g5 = ops.adaptive_avg_pool2d(x, (5, 7))
        return [out, idx, ops.max_pool2d_backward(d, idx, x.shape), a,
                ops.avg_pool2d_backward(np.ascontiguousarray(a[::-1]), x.shape, (2, 3), (2, 2), (1, 0)), g,
                ops.adaptive_avg_pool2d_backward(np.ascontiguousarray(g[::-1]), x.shape), g5,
                ops.adaptive_avg_pool2d_backward(np.ascontiguousarray(g5[::-1]), x.shape)]

    try:
        from reference import ISAS
        for isa in ISAS:
            _C.set_isa(isa)
            for t in (1, 2):
                _C.set_num_threads(t)
                results.append((isa, t, run()))
    finally:
        _C.set_num_threads(prev_t)
        _C.set_isa(prev_isa)
    for isa, t, res in results:
        ref = next(r for i, _, r in results if i == isa)  # the 1-thread run on this ISA
        for a, b in zip(ref, res):
            assert a.tobytes() == b.tobytes(), (isa, t)
    # max pooling is exact: every ISA gives the same bits
    for _, _, res in results:
        assert res[0].tobytes() == results[0][2][0].tobytes() and res[1].tobytes() == results[0][2][1].tobytes()


def test_global_average_pool_is_the_mean(rng):
    x = rng.standard_normal((8, 64, 56, 56)).astype(np.float32) + 3.0
    g = ops.adaptive_avg_pool2d(x, 1)
    np.testing.assert_allclose(g[:, :, 0, 0], x.astype(np.float64).mean(axis=(2, 3)), rtol=1e-6)


# ---------------------------------------------------------------- out arrays


def test_out_arrays(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    out, idx = np.empty((2, 3, 3, 3), np.float32), np.empty((2, 3, 3, 3), np.int64)
    o, i = ops.max_pool2d(x, 2, out=out, indices=idx)
    assert o is out and i is idx
    dx = np.empty_like(x)
    assert ops.max_pool2d_backward(out, idx, x.shape, out=dx) is dx
    assert ops.avg_pool2d(x, 2, out=out) is out
    assert ops.avg_pool2d_backward(out, x.shape, 2, out=dx) is dx
    g = np.empty((2, 3, 1, 1), np.float32)
    assert ops.adaptive_avg_pool2d(x, 1, out=g) is g
    assert ops.adaptive_avg_pool2d_backward(g, x.shape, out=dx) is dx


# ---------------------------------------------------------------- bad inputs


FORWARDS = {
    "max_pool2d": lambda x, **kw: ops.max_pool2d(x, **{"kernel_size": 2, **kw}),
    "avg_pool2d": lambda x, **kw: ops.avg_pool2d(x, **{"kernel_size": 2, **kw}),
    "adaptive_avg_pool2d": lambda x, **kw: ops.adaptive_avg_pool2d(x, **{"output_size": 2, **kw}),
}


@pytest.mark.parametrize("fn", list(FORWARDS))
def test_bad_x(fn):
    x = np.ones((2, 3, 4, 4), np.float32)
    for kind, bad, exc, words in bad_float32_arrays(x):
        with pytest.raises(exc, match=words) as e:
            FORWARDS[fn](bad)
        assert f"{fn}: x" in str(e.value), kind
    for shape in [(4, 4), (3, 4, 4), (1, 2, 3, 4, 4)]:
        with pytest.raises(ValueError, match=rf"{fn}: x must be 4-D \(batch, channels, height, width\)"):
            FORWARDS[fn](np.ones(shape, np.float32))
    with pytest.raises(ValueError, match=f"{fn}: x is empty"):
        FORWARDS[fn](np.ones((0, 3, 4, 4), np.float32))


@pytest.mark.parametrize("fn", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize(
    "kw, exc, words",
    [
        (dict(kernel_size=0), ValueError, "kernel_size must be >= 1"),
        (dict(kernel_size=(2, -1)), ValueError, "kernel_size must be >= 1"),
        (dict(kernel_size=5), ValueError, r"kernel_size \(5, 5\) is larger than the padded input \(4, 4\)"),
        (dict(kernel_size=(2, 7), padding=(0, 1)), ValueError, "kernel_size .* is larger than the padded input"),
        (dict(stride=0), ValueError, "stride must be >= 1"),
        (dict(padding=-1), ValueError, "padding must be >= 0"),
        (dict(kernel_size=3, padding=2), ValueError, "padding must be at most half of kernel_size"),
        (dict(kernel_size=2.0), TypeError, "kernel_size must be an int"),
        (dict(kernel_size=(2, 2, 2)), ValueError, r"kernel_size must be an int or a pair"),
        (dict(stride="2"), TypeError, "stride must be"),
        (dict(padding=True), TypeError, "padding must be"),
        (dict(kernel_size=2**40), ValueError, "kernel_size must be"),
    ],
)
def test_bad_pool_arguments(fn, kw, exc, words):
    x = np.ones((1, 2, 4, 4), np.float32)
    with pytest.raises(exc, match=words) as e:
        FORWARDS[fn](x, **kw)
    assert str(e.value).startswith(fn)


@pytest.mark.parametrize("size, exc, words", [(0, ValueError, "output_size must be >= 1"),
                                              ((2, -3), ValueError, "output_size must be >= 1"),
                                              (1.5, TypeError, "output_size must be"),
                                              ((1, 2, 3), ValueError, "output_size must be an int or a pair")])
def test_bad_output_size(size, exc, words):
    with pytest.raises(exc, match=words):
        ops.adaptive_avg_pool2d(np.ones((1, 1, 4, 4), np.float32), size)


def test_bad_backward_arguments(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    out, idx = ops.max_pool2d(x, 2)
    fn = "max_pool2d_backward"
    with pytest.raises(TypeError, match=f"{fn}: indices must have dtype int64"):
        ops.max_pool2d_backward(out, idx.astype(np.int32), x.shape)
    with pytest.raises(ValueError, match=rf"{fn}: indices has shape \(2, 3, 3, 2\), expected dout.shape"):
        ops.max_pool2d_backward(out, np.ascontiguousarray(idx[..., :2]), x.shape)
    bad = idx.copy()
    bad[1, 2, 2, 1] = 36
    with pytest.raises(ValueError, match=rf"{fn}: indices must lie in \[0, H\*W\) = \[0, 36\), got 36 at flat position 52"):
        ops.max_pool2d_backward(out, bad, x.shape)
    bad[1, 2, 2, 1] = -1
    with pytest.raises(ValueError, match="got -1"):
        ops.max_pool2d_backward(out, bad, x.shape)
    with pytest.raises(ValueError, match=rf"{fn}: input_shape \(3, 3, 6, 6\) does not match dout's"):
        ops.max_pool2d_backward(out, idx, (3, 3, 6, 6))
    with pytest.raises(ValueError, match=f"{fn}: input_shape must be the 4 sizes"):
        ops.max_pool2d_backward(out, idx, (6, 6))
    with pytest.raises(ValueError, match=f"{fn}: input_shape must hold 4 sizes >= 1"):
        ops.max_pool2d_backward(out, idx, (2, 3, 0, 6))
    with pytest.raises(TypeError, match=f"{fn}: input_shape must be an int"):
        ops.max_pool2d_backward(out, idx, (2, 3, 6.0, 6))
    with pytest.raises(ValueError, match=f"{fn}: input_shape .* is too large"):
        ops.max_pool2d_backward(out, idx, (2, 3, 2**31, 2**31 - 1))
    with pytest.raises(TypeError, match=f"{fn}: dout must have dtype float32"):
        ops.max_pool2d_backward(out.astype(np.float64), idx, x.shape)
    fn = "avg_pool2d_backward"
    with pytest.raises(ValueError, match=rf"{fn}: dout has shape \(2, 3, 3, 3\), expected the pooled input_shape"):
        ops.avg_pool2d_backward(out, x.shape, 3)
    with pytest.raises(ValueError, match=f"{fn}: padding must be at most half"):
        ops.avg_pool2d_backward(out, x.shape, 2, padding=2)
    fn = "adaptive_avg_pool2d_backward"
    with pytest.raises(ValueError, match=rf"{fn}: input_shape \(2, 4, 6, 6\) does not match"):
        ops.adaptive_avg_pool2d_backward(out, (2, 4, 6, 6))


def test_bad_out_arrays(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    with pytest.raises(ValueError, match=r"max_pool2d: out has shape \(2, 3, 6, 6\), expected"):
        ops.max_pool2d(x, 2, out=np.empty_like(x))
    with pytest.raises(TypeError, match="max_pool2d: indices must have dtype int64"):
        ops.max_pool2d(x, 2, indices=np.empty((2, 3, 3, 3), np.int32))
    buf = np.empty(2 * 3 * 3 * 3 * 2, np.float32)
    with pytest.raises(ValueError, match="max_pool2d: out and indices must not share memory"):
        ops.max_pool2d(x, 2, out=buf[:54].reshape(2, 3, 3, 3), indices=buf.view(np.int64).reshape(2, 3, 3, 3))
    ro = np.empty((2, 3, 3, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="avg_pool2d: out is read-only"):
        ops.avg_pool2d(x, 2, out=ro)
    with pytest.raises(ValueError, match="avg_pool2d: out must not share memory with x"):
        ops.avg_pool2d(x, 2, out=x.reshape(-1)[:54].reshape(2, 3, 3, 3))


# ---------------------------------------------------------------- layers


def spread(rng, shape):
    """Inputs whose values differ by >= 0.1: no two within a finite-difference step (max pooling's ties)."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0).astype(np.float32)


@pytest.mark.parametrize("pool", [lambda: nn.MaxPool2d(2), lambda: nn.MaxPool2d(3, stride=2, padding=1),
                                  lambda: nn.AvgPool2d((2, 3), stride=1, padding=(1, 0)),
                                  lambda: nn.AdaptiveAvgPool2d((2, 3)), lambda: nn.AdaptiveAvgPool2d(1)])
def test_layer_gradients_finite_differences(pool):
    rng = np.random.default_rng(5)
    layer = pool()
    x = spread(rng, (2, 2, 5, 6))
    feats = layer(x).size // 2
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(feats, 3, rng=rng))
    gradcheck(model, nn.MSELoss(), x, rng.standard_normal((2, 3)).astype(np.float32))


def test_layers_in_a_model_forward_backward(rng):
    model = nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(3, stride=1, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(3, 2, rng=rng))
    x = rng.standard_normal((4, 3, 8, 9)).astype(np.float32)
    y = model(x)
    dx = model.backward(np.ones_like(y))
    # the same through ops, layer by layer
    h1, idx = ops.max_pool2d(x, 2)
    h2 = ops.avg_pool2d(h1, 3, 1, 1)
    h3 = ops.adaptive_avg_pool2d(h2, 1)
    g3 = (np.ones_like(y) @ model[4].weight.data).reshape(h3.shape)
    g2 = ops.adaptive_avg_pool2d_backward(g3, h2.shape)
    g1 = ops.avg_pool2d_backward(g2, h1.shape, 3, 1, 1)
    np.testing.assert_array_equal(dx, ops.max_pool2d_backward(g1, idx, x.shape))
    # a second pass reuses the layers' buffers and gives the same
    np.testing.assert_array_equal(model(x), y)
    np.testing.assert_array_equal(model.backward(np.ones_like(y)), dx)


def test_layer_save_load_and_print(tmp_path, rng):
    model = nn.Sequential(nn.MaxPool2d((3, 2), stride=(2, 1), padding=(1, 0)), nn.AvgPool2d(2),
                          nn.AdaptiveAvgPool2d((2, None)), nn.Flatten(), nn.Linear(2 * 3, 4, rng=rng))
    text = repr(model)
    assert "MaxPool2d(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0))" in text
    assert "AvgPool2d(kernel_size=2, stride=2, padding=0)" in text
    assert "AdaptiveAvgPool2d(output_size=(2, None))" in text
    x = rng.standard_normal((2, 1, 9, 7)).astype(np.float32)
    y = model(x)
    path = tmp_path / "pool.npz"
    model.save(path)
    loaded = nn.load(path)
    assert repr(loaded) == text
    np.testing.assert_array_equal(loaded(x), y)
    for layer in list(loaded)[:3]:
        assert type(layer).from_config(layer.get_config()["config"]).get_config() == layer.get_config()
    nn.load(path, model)  # the same architecture loads into the model itself


def test_layer_errors():
    with pytest.raises(ValueError, match="MaxPool2d: padding must be at most half of kernel_size"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="AvgPool2d: kernel_size must be >= 1"):
        nn.AvgPool2d(0)
    with pytest.raises(TypeError, match="MaxPool2d: stride must be"):
        nn.MaxPool2d(2, stride=1.5)
    with pytest.raises(ValueError, match="AdaptiveAvgPool2d: output_size must be >= 1"):
        nn.AdaptiveAvgPool2d(0)
    with pytest.raises(ValueError, match=r"MaxPool2d: input must be 4-D .*; for a single image use x\[None\]"):
        nn.MaxPool2d(2)(np.ones((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="max_pool2d: kernel_size .* is larger than the padded input"):
        nn.MaxPool2d(5)(np.ones((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="AdaptiveAvgPool2d: input must be 4-D"):
        nn.AdaptiveAvgPool2d(1)(np.ones((4, 4), np.float32))
