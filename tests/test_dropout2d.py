"""Dropout2d (channel dropout): whole planes kept (scaled) or zeroed, the plane mask re-derived in NumPy
(dropout's hash over plane indices), the keep rate, determinism across thread counts and instruction sets,
the layer's gradient by finite differences, eval identity, bad inputs, save/load and printing."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastdl import _C, nn, ops
from reference import ISAS, reference_keep
from test_nn_gradcheck import gradcheck


def reference_dropout2d(x, p, seed):
    """float64: plane q = n*C + c kept (times 1/(1-p)) where dropout's keep mask over N*C elements is set."""
    N, C = x.shape[:2]
    keep = reference_keep(N * C, p, seed).reshape(N, C, 1, 1)
    return np.where(keep, x.astype(np.float64) / (1.0 - float(np.float32(p))), 0.0), keep.reshape(N, C)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(4, 7, 5, 3), (1, 1, 1, 1), (3, 50, 13, 17)])
def test_matches_reference(isa, rng, p, shape):
    x = (rng.random(shape) + 0.5).astype(np.float32)  # nonzero: y != 0 is exactly the mask
    seed = 0xDEADBEEF12345678
    y = ops.dropout2d(x, p, seed)
    want, keep = reference_dropout2d(x, p, seed)
    np.testing.assert_array_equal((y != 0).all(axis=(2, 3)), keep)
    np.testing.assert_array_equal((y == 0).all(axis=(2, 3)), ~keep)  # whole planes, nothing in between
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=0)
    d = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(ops.dropout2d_backward(d, p, seed), reference_dropout2d(d, p, seed)[0], rtol=1e-6,
                               atol=0)


def test_mask_is_dropouts_mask_over_planes(rng):
    x = np.ones((6, 9, 4, 4), np.float32)
    y = ops.dropout2d(x, 0.3, 77)
    np.testing.assert_array_equal((y[:, :, 0, 0] != 0).astype(np.float32), ops.dropout_mask((6, 9), 0.3, 77))


@given(N=st.integers(1, 5), C=st.integers(1, 20), H=st.integers(1, 6), W=st.integers(1, 6),
       p=st.floats(0.0, 0.95), seed=st.integers(0, 2**64 - 1))
def test_any_shape(N, C, H, W, p, seed):
    x = np.linspace(0.5, 2.0, N * C * H * W, dtype=np.float32).reshape(N, C, H, W)
    y = ops.dropout2d(x, p, seed)
    want, _ = reference_dropout2d(x, p, seed)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=0)


def test_keep_rate_is_one_minus_p():
    for p in (0.2, 0.5, 0.8):
        x = np.ones((1000, 200, 1, 2), np.float32)
        kept = (ops.dropout2d(x, p, 12345)[:, :, 0, 0] != 0).mean()
        assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / 200_000), (p, kept)
        y = ops.dropout2d(x, p, 12345)
        assert abs(y.mean() - 1.0) < 5 * math.sqrt(p / (1 - p) / 200_000)  # inverted: the mean is kept


def test_p_zero_identity_and_nan(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(ops.dropout2d(x, 0.0, 5), x)
    x[0, 0, 1, 1] = np.nan
    y = ops.dropout2d(x, 0.999, 5)  # every plane dropped: NaN * 0 stays NaN, as PyTorch's x * mask
    assert np.isnan(y[0, 0, 1, 1]) and np.count_nonzero(y[~np.isnan(y)]) == 0


def test_out_in_place(rng):
    x = rng.standard_normal((2, 8, 3, 3)).astype(np.float32)
    want = ops.dropout2d(x, 0.5, 3)
    assert ops.dropout2d(x, 0.5, 3, out=x) is x
    np.testing.assert_array_equal(x, want)


def test_same_bits_on_1_and_2_threads_and_every_isa(rng):
    x = rng.standard_normal((16, 64, 12, 12)).astype(np.float32)  # 147K elements: the parallel path
    prev_t, prev_isa = _C.get_num_threads(), _C.get_isa()
    outs = []
    try:
        for isa in ISAS:
            _C.set_isa(isa)
            for t in (1, 2):
                _C.set_num_threads(t)
                outs.append(ops.dropout2d(x, 0.4, 2024).tobytes() + ops.dropout2d_backward(x, 0.4, 2024).tobytes())
    finally:
        _C.set_num_threads(prev_t)
        _C.set_isa(prev_isa)
    assert all(o == outs[0] for o in outs)  # one multiply per element: the same bits everywhere


def test_against_torch_structure(rng):
    torch = pytest.importorskip("torch")
    # PyTorch's masks come from its own generator: compare the structure, not the bits
    x = (rng.random((8, 16, 5, 5)) + 0.5).astype(np.float32)
    ty = torch.nn.functional.dropout2d(torch.tensor(x), p=0.25, training=True).numpy()
    y = ops.dropout2d(x, 0.25, 9)
    for out in (ty, y):
        planes = out.reshape(8, 16, -1)
        kept = (planes != 0).all(axis=2)
        assert np.all(kept | (planes == 0).all(axis=2))
        np.testing.assert_allclose(out[kept], (x / 0.75)[kept], rtol=1e-6)


# ---------------------------------------------------------------- the layer


def test_layer_training_eval_and_gradient(rng):
    layer = nn.Dropout2d(0.5, seed=0)
    x = (rng.random((4, 6, 3, 3)) + 0.5).astype(np.float32)
    y = layer(x)
    kept = (y != 0).all(axis=(2, 3))
    assert np.all(kept | (y == 0).all(axis=(2, 3)))
    d = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(d), np.where(kept[:, :, None, None], d * np.float32(2.0), 0))
    layer.eval()
    assert layer(x) is x
    assert layer.backward(d) is d


def test_layer_is_seeded():
    x = np.ones((8, 16, 2, 2), np.float32)
    a, b = nn.Dropout2d(0.5, seed=7), nn.Dropout2d(0.5, seed=7)
    np.testing.assert_array_equal(a(x), b(x))
    np.testing.assert_array_equal(a(x), b(x))  # the second draws agree too
    assert not np.array_equal(a(x), nn.Dropout2d(0.5, seed=8)(x))
    a.manual_seed(7)
    np.testing.assert_array_equal(a(x), nn.Dropout2d(0.5, seed=7)(x))


def test_layer_finite_differences():
    rng = np.random.default_rng(4)
    model = nn.Sequential(nn.Dropout2d(0.4, seed=1), nn.Flatten(), nn.Linear(3 * 2 * 2, 2, rng=rng))
    x = rng.standard_normal((3, 3, 2, 2)).astype(np.float32)
    gradcheck(model, nn.MSELoss(), x, rng.standard_normal((3, 2)).astype(np.float32))


def test_layer_save_load_print(tmp_path, rng):
    model = nn.Sequential(nn.Dropout2d(0.3, seed=5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert "Dropout2d(p=0.3)" in repr(model)
    path = tmp_path / "d2.npz"
    model.save(path)
    loaded = nn.load(path)
    assert repr(loaded) == repr(model)
    assert loaded[0].get_config() == {"type": "Dropout2d", "config": {"p": 0.3, "seed": 5}}
    model.eval()
    loaded.eval()
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))


def test_layer_errors():
    with pytest.raises(ValueError, match=r"Dropout2d: p must be >= 0.0 and < 1.0"):
        nn.Dropout2d(1.0)
    with pytest.raises(TypeError, match="Dropout2d: seed must be"):
        nn.Dropout2d(0.5, seed="x")
    with pytest.raises(ValueError, match=r"Dropout2d: input must be 4-D .*x\[None\]"):
        nn.Dropout2d(0.5)(np.ones((3, 4, 4), np.float32))


# ---------------------------------------------------------------- bad inputs to the ops


@pytest.mark.parametrize("fn, arg", [("dropout2d", "x"), ("dropout2d_backward", "dout")])
def test_bad_inputs(fn, arg):
    f = getattr(ops, fn)
    x = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(TypeError, match=f"{fn}: {arg} must have dtype float32"):
        f(x.astype(np.float64), 0.5, 1)
    with pytest.raises(TypeError, match=f"{fn}: {arg} must be C-contiguous"):
        f(np.ones((2, 3, 4, 8), np.float32)[..., ::2], 0.5, 1)
    with pytest.raises(ValueError, match=rf"{fn}: {arg} must be 4-D \(batch, channels, height, width\)"):
        f(np.ones((3, 4), np.float32), 0.5, 1)
    with pytest.raises(ValueError, match=f"{fn}: {arg} is empty"):
        f(np.ones((0, 3, 4, 4), np.float32), 0.5, 1)
    with pytest.raises(ValueError, match=rf"{fn}: p must be in \[0, 1\)"):
        f(x, 1.0, 1)
    with pytest.raises(ValueError, match=f"{fn}: seed must be an int"):
        f(x, 0.5, -1)
    with pytest.raises(TypeError, match=f"{fn}: seed must be an int"):
        f(x, 0.5, 1.5)
    with pytest.raises(ValueError, match=f"{fn}: out has shape"):
        f(x, 0.5, 1, out=np.ones((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=f"{fn}: out must not share memory with {arg}"):
        buf = np.ones(2 * 3 * 4 * 4 + 1, np.float32)
        f(buf[:-1].reshape(x.shape), 0.5, 1, out=buf[1:].reshape(x.shape))
