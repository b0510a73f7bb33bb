"""BatchNorm2d: the (N, C, S) batchnorm kernels with S = H*W against float64 plain-loop references and
PyTorch, finite-difference gradients (training and eval), same bits on 1 and 2 threads, every ISA,
shape fuzzing, bad inputs, the layer's state dict (PyTorch's names), save/load and printing."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastdl import _C, nn, ops
from reference import ISAS, ref_batchnorm2d_backward, ref_batchnorm2d_eval, ref_batchnorm2d_train
from test_nn_gradcheck import gradcheck


def make(rng, shape, offset=0.0, scale=1.0):
    C = shape[1]
    x = (offset + scale * rng.standard_normal(shape)).astype(np.float32)
    gamma = (1 + 0.5 * rng.standard_normal(C)).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    rm = (0.1 * rng.standard_normal(C)).astype(np.float32)
    rv = (1 + 0.5 * rng.random(C)).astype(np.float32)
    return x, gamma, beta, rm, rv


SHAPES = [(2, 3, 4, 5), (1, 2, 3, 3), (5, 1, 1, 1), (3, 4, 1, 7), (2, 3, 9, 11), (1, 1, 1, 2)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_train_matches_reference(isa, rng, shape):
    x, g, b, rm, rv = make(rng, shape)
    want_y, want_mean, want_invstd, want_rm, want_rv = ref_batchnorm2d_train(x, g, b, rm, rv, momentum=0.2, eps=1e-3)
    y, mean, invstd = ops.batchnorm2d_forward(x, g, b, rm, rv, training=True, momentum=0.2, eps=1e-3)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(invstd, want_invstd, rtol=1e-6)
    np.testing.assert_allclose(rm, want_rm, rtol=1e-6, atol=1e-7)  # updated in place
    np.testing.assert_allclose(rv, want_rv, rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_eval_matches_reference(isa, rng, shape):
    x, g, b, rm, rv = make(rng, shape)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, invstd = ops.batchnorm2d_forward(x, g, b, rm, rv, training=False, eps=1e-4)
    assert mean is None and invstd is None
    np.testing.assert_allclose(y, ref_batchnorm2d_eval(x, g, b, rm, rv, eps=1e-4), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_reference(isa, rng, shape):
    x, g, b, rm, rv = make(rng, shape)
    d = rng.standard_normal(shape).astype(np.float32)
    _, mean, invstd = ops.batchnorm2d_forward(x, g, b, rm, rv, training=True)
    dx, dg, db = ops.batchnorm2d_backward(d, x, g, mean, invstd)
    want_dx, want_dg, want_db = ref_batchnorm2d_backward(d, x, g)
    np.testing.assert_allclose(db, want_db, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dg, want_dg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-5)


def test_statistics_are_accurate_with_a_large_offset(isa, rng):
    x, g, b, rm, rv = make(rng, (16, 3, 20, 20), offset=1e4)
    want_y, want_mean, want_invstd, _, want_rv = ref_batchnorm2d_train(x, g, b, rm, rv)
    y, mean, invstd = ops.batchnorm2d_forward(x, g, b, rm, rv, training=True)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-7)
    np.testing.assert_allclose(invstd, want_invstd, rtol=1e-6)
    np.testing.assert_allclose(rv, want_rv, rtol=1e-6)
    np.testing.assert_allclose(y, want_y, atol=2e-3 * np.abs(g).max())


def test_one_by_one_images_are_batchnorm1d(rng):
    # (N, C, 1, 1) is BatchNorm1d on (N, C): the same numbers
    x, g, b, rm, rv = make(rng, (70, 9, 1, 1))
    d = rng.standard_normal(x.shape).astype(np.float32)
    r1, r2 = rm.copy(), rv.copy()
    y2, m2, s2 = ops.batchnorm2d_forward(x, g, b, rm, rv, training=True)
    y1, m1, s1 = ops.batchnorm_forward(x.reshape(70, 9), g, b, r1, r2, training=True)
    np.testing.assert_array_equal(y2.reshape(70, 9), y1)
    np.testing.assert_array_equal(rm, r1)
    np.testing.assert_array_equal(rv, r2)
    for a, w in zip(ops.batchnorm2d_backward(d, x, g, m2, s2), ops.batchnorm_backward(d.reshape(70, 9), x.reshape(70, 9),
                                                                                        g, m1, s1)):
        np.testing.assert_array_equal(a.reshape(w.shape), w)


def test_same_bits_on_1_and_2_threads(rng):
    x, g, b, rm, rv = make(rng, (8, 24, 30, 31))  # 179K elements: the parallel path
    d = rng.standard_normal(x.shape).astype(np.float32)
    prev_t, prev_isa = _C.get_num_threads(), _C.get_isa()
    res = {}
    try:
        for isa in ISAS:
            _C.set_isa(isa)
            for t in (1, 2):
                _C.set_num_threads(t)
                r1, r2 = rm.copy(), rv.copy()
                y, mean, invstd = ops.batchnorm2d_forward(x, g, b, r1, r2, training=True)
                dx, dg, db = ops.batchnorm2d_backward(d, x, g, mean, invstd)
                ye, _, _ = ops.batchnorm2d_forward(x, g, b, r1, r2, training=False)
                res[isa, t] = [y, mean, invstd, r1, r2, dx, dg, db, ye]
    finally:
        _C.set_num_threads(prev_t)
        _C.set_isa(prev_isa)
    for isa in ISAS:
        for a, b_ in zip(res[isa, 1], res[isa, 2]):
            assert a.tobytes() == b_.tobytes(), isa
    # and the result is right: against the float64 mean and variance per channel
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(x64.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(res[ISAS[0], 2][0], want * g.reshape(-1, 1, 1) + b.reshape(-1, 1, 1), rtol=1e-5,
                               atol=1e-5)


@given(N=st.integers(1, 6), C=st.integers(1, 9), H=st.integers(1, 9), W=st.integers(1, 9),
       seed=st.integers(0, 2**32 - 1))
def test_train_forward_and_backward_any_shape(N, C, H, W, seed):
    if N * H * W < 2:
        N = 2
    rng = np.random.default_rng(seed)
    x, g, b, rm, rv = make(rng, (N, C, H, W), offset=float(rng.uniform(-3, 3)))
    d = rng.standard_normal(x.shape).astype(np.float32)
    want_y, want_mean, want_invstd, want_rm, want_rv = ref_batchnorm2d_train(x, g, b, rm, rv)
    y, mean, invstd = ops.batchnorm2d_forward(x, g, b, rm, rv, training=True)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(invstd, want_invstd, rtol=1e-5)
    np.testing.assert_allclose(rv, want_rv, rtol=1e-5)
    dx, dg, db = ops.batchnorm2d_backward(d, x, g, mean, invstd)
    want_dx, want_dg, want_db = ref_batchnorm2d_backward(d, x, g)
    np.testing.assert_allclose(db, want_db, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dg, want_dg, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-3, atol=1e-4)
    ye, _, _ = ops.batchnorm2d_forward(x, g, b, rm, rv, training=False)
    np.testing.assert_allclose(ye, ref_batchnorm2d_eval(x, g, b, rm, rv), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- against PyTorch


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 8, 7, 7), (16, 5, 1, 1)])
def test_against_torch_functional(rng, shape):
    torch = pytest.importorskip("torch")
    x, g, b, rm, rv = make(rng, shape)
    d = rng.standard_normal(shape).astype(np.float32)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, g, b))
    yt = torch.nn.functional.batch_norm(xt, trm, trv, gt, bt, training=True, momentum=0.3, eps=1e-4)
    yt.backward(torch.tensor(d))
    y, mean, invstd = ops.batchnorm2d_forward(x, g, b, rm, rv, training=True, momentum=0.3, eps=1e-4)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-6)
    dx, dg, db = ops.batchnorm2d_backward(d, x, g, mean, invstd)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dg, gt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-5, atol=1e-5)
    ye, _, _ = ops.batchnorm2d_forward(x, g, b, rm, rv, training=False, eps=1e-4)
    yte = torch.nn.functional.batch_norm(torch.tensor(x), trm, trv, torch.tensor(g), torch.tensor(b), training=False,
                                         eps=1e-4)
    np.testing.assert_allclose(ye, yte.numpy(), rtol=1e-5, atol=1e-5)


def test_layer_against_torch_module(rng):
    torch = pytest.importorskip("torch")
    ours, theirs = nn.BatchNorm2d(3, eps=1e-3, momentum=0.2), torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.2)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(rng.standard_normal(3).astype(np.float32)))
        theirs.bias.copy_(torch.tensor(rng.standard_normal(3).astype(np.float32)))
    # PyTorch's state dict maps onto ours by name (num_batches_tracked aside)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items() if k != "num_batches_tracked"})
    for step in range(3):
        x = (rng.standard_normal((4, 3, 6, 5)) * (1 + step) + step).astype(np.float32)
        d = rng.standard_normal(x.shape).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        yt.backward(torch.tensor(d))
        ours.zero_grad()
        np.testing.assert_allclose(ours(x), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours.backward(d), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-5, atol=1e-5)
        theirs.zero_grad()
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(ours.state_dict()[name], theirs.state_dict()[name].numpy(), rtol=1e-5, atol=1e-6)
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    d = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.tensor(d))
    np.testing.assert_allclose(ours(x), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.backward(d), xt.grad.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the layer


@pytest.mark.parametrize("training", [True, False])
def test_layer_gradients_finite_differences(training):
    rng = np.random.default_rng(3)
    bn = nn.BatchNorm2d(2)
    bn.weight.data[:] = [1.5, -0.7]
    bn.bias.data[:] = [0.2, -0.4]
    bn.running_mean[:] = [0.3, -0.1]
    bn.running_var[:] = [0.8, 1.7]
    model = nn.Sequential(bn, nn.Flatten(), nn.Linear(2 * 3 * 2, 3, rng=rng))
    if not training:
        model.eval()
    x = rng.standard_normal((3, 2, 3, 2)).astype(np.float32)
    gradcheck(model, nn.MSELoss(), x, rng.standard_normal((3, 3)).astype(np.float32))


def test_layer_save_load_print_and_pickle(tmp_path, rng):
    import pickle

    model = nn.Sequential(nn.BatchNorm2d(3, eps=1e-3, momentum=0.3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 2))
    assert "BatchNorm2d(3, eps=0.001, momentum=0.3)" in repr(model)
    assert set(model.state_dict()) >= {"0.weight", "0.bias", "0.running_mean", "0.running_var"}
    x = rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
    model(x)  # updates the running statistics
    model.eval()
    y = model(x)
    path = tmp_path / "bn2d.npz"
    model.save(path)
    loaded = nn.load(path)
    loaded.eval()
    np.testing.assert_array_equal(loaded(x), y)
    np.testing.assert_array_equal(loaded[0].running_var, model[0].running_var)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model))(x), y)


def test_layer_errors(rng):
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\): input must be 4-D \(batch, 3, height, width\)"):
        bn(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\): input has 2 channels, expected 3"):
        bn(np.ones((4, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(np.ones((1, 3, 1, 1), np.float32))
    bn(np.ones((1, 3, 1, 2), np.float32))  # two values per channel are enough
    bn.eval()
    bn(np.ones((1, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match="BatchNorm2d: num_features must be >= 1"):
        nn.BatchNorm2d(0)
    with pytest.raises(ValueError, match="BatchNorm2d: momentum must be"):
        nn.BatchNorm2d(2, momentum=2.0)
    with pytest.raises(TypeError, match="BatchNorm2d: eps must be"):
        nn.BatchNorm2d(2, eps="small")


# ---------------------------------------------------------------- bad inputs to the ops


def args(rng, shape=(2, 3, 4, 4)):
    x, g, b, rm, rv = make(rng, shape)
    return dict(x=x, gamma=g, beta=b, running_mean=rm, running_var=rv)


@pytest.mark.parametrize(
    "name, value, exc, words",
    [
        ("x", np.zeros((2, 3, 4, 4), np.float64), TypeError, "x must have dtype float32"),
        ("x", np.zeros((2, 3, 4, 8), np.float32)[..., ::2], TypeError, "x must be C-contiguous"),
        ("x", np.zeros((2, 3), np.float32), ValueError, r"x must be 4-D \(batch, num_features, height, width\)"),
        ("x", np.zeros((2, 3, 4), np.float32), ValueError, "x must be 4-D"),
        ("x", np.zeros((2, 3, 0, 4), np.float32), ValueError, "x is empty"),
        ("gamma", np.zeros(4, np.float32), ValueError, r"gamma has shape \(4,\), expected \(num_features,\)"),
        ("running_var", np.zeros(3, np.float64), TypeError, "running_var must have dtype float32"),
        ("beta", [0.0, 0.0, 0.0], TypeError, "beta must be a numpy.ndarray"),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_bad_forward_arrays(rng, name, value, exc, words, training):
    a = args(rng)
    a[name] = value
    with pytest.raises(exc, match="batchnorm2d_forward: " + words):
        ops.batchnorm2d_forward(**a, training=training)


def test_bad_forward_values(rng):
    with pytest.raises(ValueError, match="batchnorm2d_forward: expected more than 1 value per channel when training"):
        ops.batchnorm2d_forward(**args(rng, (1, 3, 1, 1)), training=True)
    with pytest.raises(ValueError, match="batchnorm2d_forward: momentum must be in"):
        ops.batchnorm2d_forward(**args(rng), training=True, momentum=1.5)
    with pytest.raises(ValueError, match="batchnorm2d_forward: eps must be finite"):
        ops.batchnorm2d_forward(**args(rng), training=True, eps=-1.0)
    with pytest.raises(TypeError, match="batchnorm2d_forward: training must be a bool"):
        ops.batchnorm2d_forward(**args(rng), training=1)
    a = args(rng)
    a["running_mean"].flags.writeable = False
    with pytest.raises(ValueError, match="batchnorm2d_forward: running_mean is read-only"):
        ops.batchnorm2d_forward(**a, training=True)
    a = args(rng)
    with pytest.raises(ValueError, match="batchnorm2d_forward: out has shape"):
        ops.batchnorm2d_forward(**a, training=True, out=np.zeros((2, 3, 4, 5), np.float32))


def test_bad_backward_inputs(rng):
    a = args(rng)
    d = rng.standard_normal(a["x"].shape).astype(np.float32)
    _, mean, invstd = ops.batchnorm2d_forward(**a, training=True)
    x, g = a["x"], a["gamma"]
    fn = "batchnorm2d_backward"
    with pytest.raises(ValueError, match=rf"{fn}: dout has shape \(2, 3, 4, 3\), expected x.shape"):
        ops.batchnorm2d_backward(np.ascontiguousarray(d[..., :3]), x, g, mean, invstd)
    with pytest.raises(ValueError, match=rf"{fn}: x must be 4-D"):
        ops.batchnorm2d_backward(d.reshape(2, -1), x.reshape(2, -1), g, mean, invstd)
    with pytest.raises(ValueError, match=rf"{fn}: invstd has shape"):
        ops.batchnorm2d_backward(d, x, g, mean, np.ones(4, np.float32))
    with pytest.raises(TypeError, match=rf"{fn}: dout must have dtype float32"):
        ops.batchnorm2d_backward(d.astype(np.float64), x, g, mean, invstd)
    with pytest.raises(ValueError, match=rf"{fn}: dgamma and gamma must not share memory"):
        ops.batchnorm2d_backward(d, x, g, mean, invstd, dgamma=g)
    dx, _, _ = ops.batchnorm2d_backward(d, x, g, mean, invstd)
    got, _, _ = ops.batchnorm2d_backward(d, x, g, mean, invstd, dx=d)  # in place over dout
    assert got is d
    np.testing.assert_array_equal(got, dx)
