"""fastdl.nn: the module object model, each layer and loss against a float64 NumPy reference,
train()/eval() effects, buffer reuse, initializers, and bad inputs to every public function."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastdl import nn, ops, optim
from fastdl.nn import Parameter, init


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


# ---------------------------------------------------------------- float64 references


def ref_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def ref_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_mlp_forward_backward(x, W1, b1, W2, b2, dout):
    """y = relu(x W1ᵀ + b1) W2ᵀ + b2 and its gradients, by hand in float64."""
    x, W1, b1, W2, b2, dout = (np.asarray(a, np.float64) for a in (x, W1, b1, W2, b2, dout))
    z = x @ W1.T + b1
    h = np.maximum(z, 0)
    y = h @ W2.T + b2
    dW2 = dout.T @ h
    db2 = dout.sum(0)
    dz = (dout @ W2) * (z > 0)
    return y, dict(W1=dz.T @ x, b1=dz.sum(0), W2=dW2, b2=db2, x=dz @ W1)


# ---------------------------------------------------------------- Parameter


def test_parameter_basics():
    p = Parameter([[1, 2, 3], [4, 5, 6]])
    assert p.data.dtype == np.float32 and p.data.flags.c_contiguous and p.shape == (2, 3)
    assert p.grad.dtype == np.float32 and p.grad.shape == (2, 3) and not p.grad.any()
    assert p.numel() == p.size == 6 and p.ndim == 2 and len(p) == 2
    data, grad = p.data, p.grad
    p.data = np.ones((2, 3))  # copies in place: the array keeps its identity
    p.grad = np.full((2, 3), 2.0)
    assert p.data is data and p.grad is grad
    np.testing.assert_array_equal(p.data, 1)
    p.grad = None  # PyTorch's idiom: zeros again
    assert not p.grad.any()
    np.testing.assert_array_equal(np.asarray(p), p.data)
    assert repr(p).startswith("Parameter containing:\narray(")
    with pytest.raises(ValueError, match=r"data: got shape \(3,\), expected \(2, 3\)"):
        p.data = np.ones(3)
    with pytest.raises(TypeError, match="numeric"):
        p.grad = np.array([["a"] * 3] * 2)
    with pytest.raises(ValueError, match="empty"):
        Parameter(np.zeros((0, 3)))
    src = np.zeros(3, dtype=np.float32)
    q = Parameter(src)
    src[0] = 5
    assert q.data[0] == 0  # Parameter owns a copy


# ---------------------------------------------------------------- Module object model


def mlp(seed=0):
    return nn.Sequential(nn.Linear(4, 8, rng=seed), nn.ReLU(), nn.BatchNorm1d(8), nn.Dropout(0.2, seed=seed),
                         nn.Linear(8, 3, rng=seed + 1))


def test_named_parameters_buffers_and_counts():
    m = mlp()
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight",
                                                      "4.bias"]
    assert [p.shape for p in m.parameters()] == [(8, 4), (8,), (8,), (8,), (3, 8), (3,)]
    assert [n for n, _ in m.named_buffers()] == ["2.running_mean", "2.running_var"]
    assert m.num_parameters() == nn.num_parameters(m) == 8 * 4 + 8 + 8 + 8 + 3 * 8 + 3
    assert nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)).num_parameters() == 203530
    assert len(m.modules()) == 6 and m.children()[0] is m[0]
    with pytest.raises(TypeError, match="Module"):
        nn.num_parameters([1, 2])


def test_custom_module_registers_attributes():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(3, 4, rng=0)
            self.act = nn.Tanh()
            self.fc2 = nn.Linear(4, 2, rng=1)
            self.scale = Parameter([2.0])
            self.register_buffer("count", np.zeros(1))

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x))) * self.scale.data

    net = Net()
    assert [n for n, _ in net.named_parameters()] == ["scale", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert list(net.state_dict()) == ["scale", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "count"]
    net.eval()
    assert not net.fc1.training and not net.training
    assert net(np.ones((1, 3))).shape == (1, 2)
    assert "(fc1): Linear(in_features=3, out_features=4, bias=True)" in repr(net)
    del net.fc2
    assert "fc2.weight" not in dict(net.named_parameters())

    class Broken(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="super"):
        Broken()
    with pytest.raises(NotImplementedError):
        nn.Module()(np.ones(2))


def test_repr_like_pytorch():
    m = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.5), nn.BatchNorm1d(256),
                      nn.LeakyReLU(0.1), nn.Linear(256, 10, bias=False))
    assert repr(m) == (
        "Sequential(\n"
        "  (0): Linear(in_features=784, out_features=256, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Dropout(p=0.5)\n"
        "  (3): BatchNorm1d(256, eps=1e-05, momentum=0.1)\n"
        "  (4): LeakyReLU(negative_slope=0.1)\n"
        "  (5): Linear(in_features=256, out_features=10, bias=False)\n"
        ")")
    assert repr(nn.Sequential(nn.Sequential(nn.Tanh()))) == "Sequential(\n  (0): Sequential(\n    (0): Tanh()\n  )\n)"
    assert repr(nn.CrossEntropyLoss()) == "CrossEntropyLoss(reduction='mean')"


def test_sequential_container():
    layers = [nn.Linear(2, 3, rng=0), nn.ReLU(), nn.Linear(3, 1, rng=1)]
    m = nn.Sequential(*layers)
    assert len(m) == 3 and list(m) == layers and m[0] is layers[0] and m[-1] is layers[2]
    head = m[:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2 and head[0] is layers[0]
    assert len(nn.Sequential(layers)) == 3  # a list works too, as in Keras
    m2 = nn.Sequential().append(nn.Linear(2, 2)).append(nn.Tanh())
    assert len(m2) == 2 and [n for n, _ in m2.named_parameters()] == ["0.weight", "0.bias"]
    with pytest.raises(IndexError, match="out of range"):
        m[3]
    with pytest.raises(IndexError):
        m[-4]
    with pytest.raises(TypeError, match="integers or slices"):
        m["0"]
    with pytest.raises(TypeError, match="layer 1 must be a fastdl.nn.Module, got function"):
        nn.Sequential(nn.ReLU(), lambda x: x)
    with pytest.raises(TypeError, match="loss"):
        nn.Sequential(nn.Linear(2, 2), nn.MSELoss())
    x = np.ones((2, 5), dtype=np.float32)
    np.testing.assert_array_equal(nn.Sequential()(x), x)  # empty Sequential is the identity


def test_train_eval_flags():
    m = mlp()
    assert m.training and all(c.training for c in m.modules())
    assert m.eval() is m
    assert not any(c.training for c in m.modules())
    assert m.train() is m and all(c.training for c in m.modules())
    m.train(False)
    assert not m[3].training
    with pytest.raises(TypeError, match="mode must be True or False"):
        m.train("yes")


def test_grads_accumulate_until_zero_grad():
    m = nn.Sequential(nn.Linear(3, 4, rng=0), nn.Tanh(), nn.Linear(4, 2, rng=1))
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    d = np.ones((5, 2), dtype=np.float32)
    m(x)
    m.backward(d)
    g1 = [p.grad.copy() for p in m.parameters()]
    m(x)
    m.backward(d)
    for p, g in zip(m.parameters(), g1):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-6)
    m.zero_grad()
    assert not any(p.grad.any() for p in m.parameters())


def test_backward_after_zero_grad_writes_the_gradient_afresh():
    # zero_grad is lazy (the next backward overwrites instead of adding): the result must be exactly
    # what adding into real zeros gives, also when only one of weight and bias was zeroed.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    d = rng.standard_normal((6, 3)).astype(np.float32)
    lin = nn.Linear(5, 3, rng=0)
    lin(x)
    lin.backward(d)
    g_w, g_b = lin.weight.grad.copy(), lin.bias.grad.copy()
    for _ in range(2):  # stale sums in .grad must not leak into the fresh gradient
        lin(x)
        lin.backward(d)
    lin.zero_grad()
    lin(x)
    lin.backward(d)
    np.testing.assert_array_equal(lin.weight.grad, g_w)
    np.testing.assert_array_equal(lin.bias.grad, g_b)
    lin.weight.zero_grad()  # weight only: the bias keeps adding
    lin(x)
    lin.backward(d)
    np.testing.assert_array_equal(lin.weight.grad, g_w)
    np.testing.assert_allclose(lin.bias.grad, 2 * g_b, rtol=1e-6)
    held = lin.bias.grad
    lin.bias.grad = None  # PyTorch's idiom: reads back as zeros, in the same array
    assert lin.bias.grad is held and not held.any()


def test_backward_errors():
    lin = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="forward first"):
        lin.backward(np.ones((1, 2)))
    lin(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"dout has shape \(4, 3\), expected the shape of the last output \(4, 2\)"):
        lin.backward(np.ones((4, 3)))
    with pytest.raises(TypeError, match="dout"):
        lin.backward("abc")
    step = nn.Step()
    step(np.ones((2, 2)))
    with pytest.raises(RuntimeError, match="derivative 0"):
        step.backward(np.ones((2, 2)))
    m = nn.Sequential(nn.Linear(3, 2), nn.Step())
    m(np.ones((1, 3)))
    with pytest.raises(RuntimeError, match="Step"):
        m.backward(np.ones((1, 2)))


def test_need_input_grad_false_still_computes_parameter_grads():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    d = rng.standard_normal((6, 2)).astype(np.float32)
    a = nn.Sequential(nn.Linear(5, 4, rng=0), nn.ReLU(), nn.Linear(4, 2, rng=1))
    b = nn.Sequential(nn.Linear(5, 4, rng=0), nn.ReLU(), nn.Linear(4, 2, rng=1))
    a(x)
    assert a.backward(d, need_input_grad=False) is None
    b(x)
    assert b.backward(d).shape == (6, 5)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)


# ---------------------------------------------------------------- Linear


def test_linear_forward_backward_vs_numpy():
    rng = np.random.default_rng(0)
    lin = nn.Linear(7, 5, rng=rng)
    lin.bias.data = rng.standard_normal(5)
    x = rng.standard_normal((6, 7))
    y = lin(x)  # float64 input converted once
    assert y.dtype == np.float32 and y.shape == (6, 5)
    W, b = lin.weight.data.astype(np.float64), lin.bias.data.astype(np.float64)
    np.testing.assert_allclose(y, f32(x).astype(np.float64) @ W.T + b, rtol=1e-5, atol=1e-5)
    dout = rng.standard_normal((6, 5))
    dx = lin.backward(dout)
    np.testing.assert_allclose(dx, dout @ W, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lin.weight.grad, dout.T @ f32(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lin.bias.grad, dout.sum(0), rtol=1e-5, atol=1e-5)
    assert nn.Linear(7, 5, bias=False)(x).shape == (6, 5)
    np.testing.assert_allclose(lin([list(r) for r in x]), y)  # nested lists work too


@given(b=st.integers(1, 37), c=st.integers(1, 41), h=st.integers(1, 35), oc=st.integers(1, 19),
       seed=st.integers(0, 2**31))
def test_mlp_vs_numpy_fuzzed_shapes(b, c, h, oc, seed):
    rng = np.random.default_rng(seed)
    m = nn.Sequential(nn.Linear(c, h, rng=rng), nn.ReLU(), nn.Linear(h, oc, rng=rng))
    m[0].bias.data = rng.standard_normal(h)
    m[2].bias.data = rng.standard_normal(oc)
    x = rng.standard_normal((b, c)).astype(np.float32)
    dout = rng.standard_normal((b, oc)).astype(np.float32)
    y = m(x)
    dx = m.backward(dout)
    ry, g = ref_mlp_forward_backward(x, m[0].weight.data, m[0].bias.data, m[2].weight.data, m[2].bias.data, dout)
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(max(c, h)))
    np.testing.assert_allclose(y, ry, **tol)
    np.testing.assert_allclose(dx, g["x"], **tol)
    np.testing.assert_allclose(m[0].weight.grad, g["W1"], **tol)
    np.testing.assert_allclose(m[0].bias.grad, g["b1"], **tol)
    np.testing.assert_allclose(m[2].weight.grad, g["W2"], **tol)
    np.testing.assert_allclose(m[2].bias.grad, g["b2"], **tol)


def test_linear_bad_inputs():
    lin = nn.Linear(784, 256)
    with pytest.raises(ValueError, match=r"^Linear\(784 -> 256\): input has 783 features, expected 784$"):
        lin(np.zeros((2, 783), np.float32))
    with pytest.raises(ValueError, match=r"input must be 2-D \(batch, 784\), got shape \(784,\)"):
        lin(np.zeros(784, np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        lin(np.full((1, 784), np.nan))
    with pytest.raises(ValueError, match="NaN or Inf"):
        lin(np.full((1, 784), 1e300))  # overflows float32
    with pytest.raises(ValueError, match="empty"):
        lin(np.zeros((0, 784)))
    with pytest.raises(TypeError, match="numeric"):
        lin(np.array([["a"] * 784]))
    with pytest.raises(TypeError, match="numeric"):
        lin(np.zeros((1, 784), dtype=complex))
    with pytest.raises(TypeError, match="input"):
        lin(None)


@pytest.mark.parametrize("args,kw,exc,match", [
    ((0, 3), {}, ValueError, "in_features must be >= 1"),
    ((3, -1), {}, ValueError, "out_features"),
    ((3.0, 2), {}, TypeError, "in_features must be an int"),
    ((True, 2), {}, TypeError, "in_features"),
    ((3, 2), dict(bias=1), TypeError, "bias"),
    ((3, 2), dict(init="he"), ValueError, "init"),
    ((3, 2), dict(rng="seed"), TypeError, "rng"),
    ((3, 2), dict(rng=-1), ValueError, "rng must be None, an int >= 0"),
    ((3, 2), dict(init=3), TypeError, "init"),
])
def test_linear_constructor_validation(args, kw, exc, match):
    with pytest.raises(exc, match=match):
        nn.Linear(*args, **kw)


def test_rng_arguments_follow_check_rng():
    # one reading of rng/seed for the package (fastdl._validation.check_rng): a legacy RandomState is
    # accepted (a seed is drawn from it), as in scikit-learn
    a = nn.Linear(3, 2, rng=np.random.RandomState(0)).weight.data
    b = nn.Linear(3, 2, rng=np.random.RandomState(0)).weight.data
    np.testing.assert_array_equal(a, b)
    nn.Dropout(0.5, seed=np.random.RandomState(0))(np.ones((2, 3), np.float32))


def test_linear_init_is_reproducible_and_scaled():
    a = nn.Linear(200, 300, rng=5)
    b = nn.Linear(200, 300, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert not a.bias.data.any()
    bound = np.sqrt(6 / 200)  # He uniform, ReLU gain
    assert np.abs(a.weight.data).max() <= bound
    assert abs(a.weight.data.std() - bound / np.sqrt(3)) < 0.02 * bound
    c = nn.Linear(200, 300)  # rng=None: fresh entropy each time
    d = nn.Linear(200, 300)
    assert not np.array_equal(c.weight.data, d.weight.data)
    x = nn.Linear(200, 300, init="xavier_normal", rng=0).weight.data
    assert abs(x.std() - np.sqrt(2 / 500)) < 0.03 * np.sqrt(2 / 500)
    assert not nn.Linear(5, 5, init="zeros").weight.data.any()


# ---------------------------------------------------------------- activations


ACTS = [
    (nn.ReLU(), lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(float)),
    (nn.LeakyReLU(0.1), lambda z: np.where(z > 0, z, 0.1 * z), lambda z: np.where(z > 0, 1.0, 0.1)),
    (nn.Sigmoid(), ref_sigmoid, lambda z: ref_sigmoid(z) * (1 - ref_sigmoid(z))),
    (nn.Tanh(), np.tanh, lambda z: 1 - np.tanh(z) ** 2),
]


@pytest.mark.parametrize("layer,f,df", ACTS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_activations_vs_numpy(layer, f, df):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 9)).astype(np.float32)
    x[np.abs(x) < 1e-3] = 0.5
    dout = rng.standard_normal((5, 9)).astype(np.float32)
    np.testing.assert_allclose(layer(x), f(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.backward(dout), dout * df(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    assert layer(x[0]).shape == (9,)  # elementwise: any shape


def test_softmax_and_step_vs_numpy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6)).astype(np.float32) * 3
    sm = nn.Softmax()
    y = sm(x)
    ry = ref_softmax(x.astype(np.float64))
    np.testing.assert_allclose(y, ry, rtol=1e-5, atol=1e-7)
    d = rng.standard_normal((4, 6))
    np.testing.assert_allclose(sm.backward(d), ry * (d - (d * ry).sum(1, keepdims=True)), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        sm(np.ones(3))
    np.testing.assert_array_equal(nn.Step()(np.array([-1.0, 0.0, 2.0])), [0, 1, 1])


def test_leaky_relu_validation():
    with pytest.raises(TypeError, match="negative_slope"):
        nn.LeakyReLU("0.1")
    with pytest.raises(ValueError, match="negative_slope"):
        nn.LeakyReLU(float("inf"))
    with pytest.raises(ValueError, match="negative_slope"):
        nn.LeakyReLU(float("nan"))
    for slope in (1e308, -1e39):  # finite in float64, ±inf in float32
        with pytest.raises(ValueError, match=r"LeakyReLU: negative_slope=-?1e\+(308|39) does not fit in float32"):
            nn.LeakyReLU(slope)


# ---------------------------------------------------------------- Dropout


def test_dropout_training_and_eval():
    x = np.ones((200, 500), dtype=np.float32)
    d = nn.Dropout(0.3, seed=0)
    y = d(x)
    kept = y != 0
    assert abs(1 - kept.mean() - 0.3) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    # backward applies the same mask
    g = d.backward(np.full_like(x, 2.0))
    np.testing.assert_array_equal(g != 0, kept)
    np.testing.assert_allclose(g[kept], 2 / 0.7, rtol=1e-6)
    # a fresh mask every forward
    assert not np.array_equal(d(x) != 0, kept)
    # same seed, same sequence of masks
    a, b = nn.Dropout(0.5, seed=7), nn.Dropout(0.5, seed=np.random.default_rng(7))
    for _ in range(3):
        np.testing.assert_array_equal(a(x), b(x))
    a.manual_seed(7)
    c = nn.Dropout(0.5, seed=7)
    np.testing.assert_array_equal(a(x), c(x))
    # eval: identity, and backward passes dout through
    d.eval()
    np.testing.assert_array_equal(d(x), x)
    np.testing.assert_array_equal(d.backward(np.full_like(x, 3.0)), 3.0)
    # p = 0 is the identity in training too
    np.testing.assert_array_equal(nn.Dropout(0.0)(x), x)


def test_dropout_in_model_eval_is_deterministic():
    m = nn.Sequential(nn.Linear(5, 50, rng=0), nn.ReLU(), nn.Dropout(0.5, seed=1), nn.Linear(50, 2, rng=1))
    x = np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)
    assert not np.array_equal(m(x), m(x))
    m.eval()
    np.testing.assert_array_equal(m(x), m(x))
    ref = m[3](m[1](m[0](x)))
    np.testing.assert_allclose(m(x), ref, rtol=1e-6)


@pytest.mark.parametrize("p,exc", [(-0.1, ValueError), (1.0, ValueError), (1.5, ValueError), ("0.5", TypeError),
                                   (float("nan"), ValueError)])
def test_dropout_rejects_bad_p(p, exc):
    with pytest.raises(exc, match="Dropout: p"):
        nn.Dropout(p)


@pytest.mark.parametrize("p", [1 - 1e-9, 1 - 2**-25, 0.99999998])
def test_dropout_refuses_at_construction_a_p_that_float32_makes_1(p):
    # the kernel refuses p unless float32(p) < 1: Dropout says so where p is given, not at the first forward
    with pytest.raises(ValueError, match=r"Dropout: p must be .*< 1.0 in float32.*becomes 1.0"):
        nn.Dropout(p)


@pytest.mark.parametrize("p", [0.0, 1e-50, 0.5, 1 - 2**-24, 0.9999999, 1 - 2**-25, 1 - 1e-9, 1.0, -1e-300])
def test_dropout_accepts_exactly_the_p_the_kernel_accepts(p):
    try:
        nn.Dropout(p, seed=0)
        layer_ok = True
    except ValueError:
        layer_ok = False
    try:
        ops.dropout(np.ones(4, np.float32), p, 0)
        kernel_ok = True
    except ValueError:
        kernel_ok = False
    assert layer_ok == kernel_ok
    if layer_ok:
        nn.Dropout(p, seed=0)(np.ones((2, 3), np.float32))  # and it runs


def test_register_buffer_and_manual_seed_validation():
    m = nn.Module()
    with pytest.raises(ValueError, match="name"):
        m.register_buffer("a.b", np.zeros(2))
    with pytest.raises(ValueError, match="name"):
        m.register_buffer("", np.zeros(2))
    with pytest.raises(TypeError, match="numeric"):
        m.register_buffer("s", np.array(["x"]))
    m.register_buffer("s", [1, 2])
    assert m.s.dtype == np.float32 and list(m.state_dict()) == ["s"]
    m.s = [3, 4]  # assigning to a buffer name keeps it registered (and float32)
    np.testing.assert_array_equal(m.state_dict()["s"], [3, 4])
    with pytest.raises(TypeError, match="manual_seed"):
        nn.Dropout(0.5).manual_seed("x")


def test_dropout_rejects_bad_seed():
    with pytest.raises(TypeError, match="seed"):
        nn.Dropout(0.5, seed=True)
    with pytest.raises(TypeError, match="seed"):
        nn.Dropout(0.5, seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        nn.Dropout(0.5, seed=-3)


# ---------------------------------------------------------------- BatchNorm1d


def test_batchnorm_training_forward_and_running_stats():
    rng = np.random.default_rng(4)
    bn = nn.BatchNorm1d(6, momentum=0.2)
    bn.weight.data = rng.uniform(0.5, 2, 6)
    bn.bias.data = rng.standard_normal(6)
    rm, rv = np.zeros(6), np.ones(6)
    for _ in range(3):
        x = (rng.standard_normal((10, 6)) * 3 + 1).astype(np.float32)
        y = bn(x)
        x64 = x.astype(np.float64)
        mu, var = x64.mean(0), x64.var(0)
        ref = bn.weight.data * (x64 - mu) / np.sqrt(var + 1e-5) + bn.bias.data
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
        rm = 0.8 * rm + 0.2 * mu
        rv = 0.8 * rv + 0.2 * x64.var(0, ddof=1)  # unbiased, as PyTorch
        np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn.running_var, rv, rtol=1e-5, atol=1e-6)
    sd = bn.state_dict()
    assert set(sd) == {"weight", "bias", "running_mean", "running_var"}
    np.testing.assert_array_equal(sd["running_var"], bn.running_var)
    # eval: running statistics, which stay put
    bn.eval()
    x = rng.standard_normal((1, 6)).astype(np.float32)  # one sample is fine in eval
    y = bn(x)
    ref = bn.weight.data * (x - rm) / np.sqrt(rv + 1e-5) + bn.bias.data
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-5, atol=1e-6)


def test_batchnorm_bad_inputs():
    bn = nn.BatchNorm1d(64)
    with pytest.raises(ValueError, match=r"^BatchNorm1d\(64\): input has 63 features, expected 64$"):
        bn(np.zeros((4, 63)))
    with pytest.raises(ValueError, match="2-D"):
        bn(np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="more than 1 sample"):
        bn(np.zeros((1, 64)))
    for kw, exc, name in [(dict(num_features=0), ValueError, "num_features"),
                          (dict(num_features=4, eps=0), ValueError, "eps"),
                          (dict(num_features=4, momentum=1.5), ValueError, "momentum"),
                          (dict(num_features="4"), TypeError, "num_features"),
                          (dict(num_features=4, eps="1e-5"), TypeError, "eps"),
                          (dict(num_features=4, eps=float("nan")), ValueError, "eps"),
                          (dict(num_features=4, momentum=float("nan")), ValueError, "momentum"),
                          (dict(num_features=4, eps=1e39), ValueError, r"eps=1e\+39 does not fit in float32"),
                          # > 0 in float64, 0 in float32 (1e-40 is subnormal there, and the kernels flush it)
                          (dict(num_features=4, eps=1e-50), ValueError, r"eps must be > 0.0 in float32.*becomes 0.0"),
                          (dict(num_features=4, eps=1e-40), ValueError, r"eps must be > 0.0 in float32.*becomes 0.0")]:
        with pytest.raises(exc, match=f"BatchNorm1d: {name}"):
            nn.BatchNorm1d(**kw)


# ---------------------------------------------------------------- Flatten


def test_flatten():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    f = nn.Flatten()
    y = f(x)
    assert y.shape == (2, 12)
    np.testing.assert_array_equal(y, x.reshape(2, 12))
    assert f.backward(np.ones((2, 12))).shape == (2, 3, 4)
    assert nn.Flatten(0, 1)(x).shape == (6, 4)
    with pytest.raises(ValueError, match="Flatten"):
        nn.Flatten(2, 1)(x)
    with pytest.raises(TypeError, match="start_dim"):
        nn.Flatten(1.0)


# ---------------------------------------------------------------- buffers are reused but never handed out


def test_returned_arrays_are_never_overwritten():
    rng = np.random.default_rng(5)
    m = nn.Sequential(nn.Linear(6, 7, rng=0), nn.ReLU(), nn.Linear(7, 4, rng=1), nn.Tanh())
    x1, x2 = (rng.standard_normal((3, 6)).astype(np.float32) for _ in range(2))
    y1 = m(x1)
    y1c = y1.copy()
    d1 = m.backward(np.ones((3, 4), np.float32))
    d1c = d1.copy()
    y2 = m(x2)
    m.backward(np.full((3, 4), 2.0, np.float32))
    np.testing.assert_array_equal(y1, y1c)
    np.testing.assert_array_equal(d1, d1c)
    assert not np.shares_memory(y1, y2)
    # an identity-like last layer must not hand back an internal buffer
    m2 = nn.Sequential(nn.Linear(6, 5, rng=0), nn.ReLU(), nn.Dropout(0.5)).eval()
    a = m2(x1)
    a_copy = a.copy()
    m2(x2)
    np.testing.assert_array_equal(a, a_copy)
    m3 = nn.Sequential(nn.Flatten(), nn.Linear(6, 5, rng=0), nn.ReLU())
    m3(x1)
    g = m3.backward(np.ones((3, 5), np.float32))
    g_copy = g.copy()
    m3(x2)
    m3.backward(np.full((3, 5), 5.0, np.float32))
    np.testing.assert_array_equal(g, g_copy)


def test_intermediate_buffers_are_reused_across_steps():
    m = nn.Sequential(nn.Linear(5, 6, rng=0), nn.ReLU(), nn.Linear(6, 3, rng=1))
    x = np.ones((4, 5), np.float32)
    m(x)
    m.backward(np.ones((4, 3), np.float32))
    hidden, dhidden = m[1]._y, m[2]._ws["dinp"]
    m(x + 1)
    m.backward(np.ones((4, 3), np.float32))
    assert m[1]._y is hidden and m[2]._ws["dinp"] is dhidden  # same arrays, rewritten
    m(np.ones((7, 5), np.float32))  # a new batch size gets new buffers
    assert m[1]._y.shape == (7, 6)


def test_models_deepcopy_and_pickle():
    import copy
    import pickle

    m = mlp(3)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    m.eval()
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        np.testing.assert_array_equal(clone(x), m(x))
        clone[0].weight.data[...] = 0
        assert m[0].weight.data.any()
        assert [n for n, _ in clone.named_parameters()] == [n for n, _ in m.named_parameters()]


def test_reused_buffers_give_the_same_results_as_fresh_ones():
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(3)] + [
        rng.standard_normal((2, 5)).astype(np.float32)]

    def build():
        return nn.Sequential(nn.Linear(5, 6, rng=0), nn.BatchNorm1d(6), nn.LeakyReLU(), nn.Linear(6, 6, rng=1),
                             nn.Sigmoid(), nn.Linear(6, 3, rng=2))

    long_lived = build()
    for x in xs:
        fresh = build()
        np.testing.assert_array_equal(long_lived(x), fresh(x))
        d = np.ones((x.shape[0], 3), np.float32)
        long_lived.zero_grad()
        np.testing.assert_array_equal(long_lived.backward(d), fresh.backward(d))
        for p, q in zip(long_lived.parameters(), fresh.parameters()):
            np.testing.assert_array_equal(p.grad, q.grad)
        long_lived.load_state_dict(fresh.state_dict())  # same running stats for the next round


# ---------------------------------------------------------------- losses


def _loss_refs(kind, out, tgt, reduction):
    o = out.astype(np.float64)
    if kind == "ce":
        p = ref_softmax(o)
        n = o.shape[0]
        per = -np.log(p[np.arange(n), tgt])
        g = p.copy()
        g[np.arange(n), tgt] -= 1
        scale = n
    else:
        t = tgt.astype(np.float64)
        if kind == "mse":
            per, g = (o - t) ** 2, 2 * (o - t)
        elif kind == "l1":
            per, g = np.abs(o - t), np.sign(o - t)
        else:
            per = np.maximum(o, 0) - o * t + np.log1p(np.exp(-np.abs(o)))
            g = ref_sigmoid(o) - t
        scale = o.size
    if reduction == "mean":
        return per.sum() / scale, g / scale
    return per.sum(), g


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind,cls", [("mse", nn.MSELoss), ("l1", nn.L1Loss), ("bce", nn.BCEWithLogitsLoss),
                                      ("ce", nn.CrossEntropyLoss)])
def test_losses_vs_numpy(kind, cls, reduction):
    rng = np.random.default_rng(7)
    out = (rng.standard_normal((6, 5)) * 3).astype(np.float32)
    tgt = {"ce": rng.integers(0, 5, 6), "bce": rng.uniform(0, 1, (6, 5)),
           "mse": rng.standard_normal((6, 5)), "l1": rng.standard_normal((6, 5))}[kind]
    loss_fn = cls(reduction=reduction)
    loss = loss_fn(out, tgt)
    assert isinstance(loss, float)
    ref, g = _loss_refs(kind, out, tgt if kind == "ce" else f32(tgt), reduction)
    assert loss == pytest.approx(ref, rel=1e-5)
    grad = loss_fn.backward()
    assert grad.dtype == np.float32 and grad.shape == out.shape
    np.testing.assert_allclose(grad, g, rtol=1e-4, atol=1e-6)


def test_cross_entropy_label_dtypes():
    out = np.zeros((3, 4), np.float32)
    a = nn.CrossEntropyLoss()(out, np.array([0, 3, 1], dtype=np.uint8))
    b = nn.CrossEntropyLoss()(out, [0, 3, 1])
    assert a == b == pytest.approx(np.log(4))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: nn.MSELoss(reduction="avg"), ValueError, "reduction must be one of 'mean', 'sum', got 'avg'"),
    (lambda: nn.MSELoss()(np.ones((4, 1)), np.ones(4)), ValueError, r"reshape it: target.reshape\(4, 1\)"),
    (lambda: nn.L1Loss()(np.ones((4, 2)), np.ones((4, 3))), ValueError, "target has shape"),
    (lambda: nn.MSELoss()(np.ones(3), [1, np.nan, 2]), ValueError, "target contains NaN"),
    (lambda: nn.MSELoss()(np.ones(3), ["a", "b", "c"]), TypeError, "target"),
    (lambda: nn.MSELoss()(np.ones(0), np.ones(0)), ValueError, "empty"),
    (lambda: nn.BCEWithLogitsLoss()(np.ones(3), [0, 1, 2]), ValueError, r"\[0, 1\]"),
    (lambda: nn.CrossEntropyLoss()(np.ones((3, 4)), np.array([0.0, 1.0, 2.0])), TypeError, "integer class labels"),
    (lambda: nn.CrossEntropyLoss()(np.ones((3, 4)), np.array([True, False, True])), TypeError, "integer"),
    (lambda: nn.CrossEntropyLoss()(np.ones((3, 4)), [0, 4, 1]), ValueError, r"labels must lie in \[0, 4\).*got 4"),
    (lambda: nn.CrossEntropyLoss()(np.ones((3, 4)), [0, -1, 1]), ValueError, "got -1"),
    (lambda: nn.CrossEntropyLoss()(np.ones((3, 4)), [0, 1]), ValueError, r"expected \(3,\)"),
    (lambda: nn.CrossEntropyLoss()(np.ones((3, 4)), [[0], [1], [2]]), ValueError, "one label per row"),
    (lambda: nn.CrossEntropyLoss()(np.ones(4), [0]), ValueError, "output must be 2-D"),
    (lambda: nn.MSELoss().backward(), RuntimeError, "first"),
])
def test_losses_reject_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_loss_of_diverged_output_is_a_clear_error():
    with pytest.raises(ValueError, match="MSELoss: output contains NaN or Inf.*learning rate"):
        nn.MSELoss()(np.array([np.inf, 1.0]), np.zeros(2))
    with pytest.raises(ValueError, match="CrossEntropyLoss: output contains NaN"):
        nn.CrossEntropyLoss()(np.array([[np.nan, 1.0]]), [0])


# ---------------------------------------------------------------- state_dict


def test_state_dict_is_a_copy_and_load_is_strict():
    a, b = mlp(0), mlp(5)
    sd = a.state_dict()
    sd["0.weight"][...] = 0  # a copy: the model is untouched
    assert a[0].weight.data.any()
    sd = a.state_dict()
    w = b[0].weight.data
    assert b.load_state_dict(sd) == ([], [])
    assert b[0].weight.data is w  # copied in place
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])

    bad = dict(sd)
    del bad["0.bias"]
    bad["extra"] = np.zeros(2)
    bad["4.weight"] = np.zeros((2, 8))
    before = {k: v.copy() for k, v in b.state_dict().items()}
    with pytest.raises(ValueError) as e:
        b.load_state_dict(bad)
    msg = str(e.value)
    assert "missing keys: 0.bias" in msg and "unexpected keys: extra" in msg
    assert "4.weight: got shape (2, 8), expected (3, 8)" in msg
    for k, v in b.state_dict().items():  # nothing was copied
        np.testing.assert_array_equal(v, before[k])
    del bad["4.weight"]
    missing, unexpected = b.load_state_dict(bad, strict=False)
    assert missing == ["0.bias", "4.weight"] and unexpected == ["extra"]
    with pytest.raises(TypeError, match="dict"):
        b.load_state_dict([1, 2])
    with pytest.raises(TypeError, match="numeric"):
        b.load_state_dict({**sd, "0.bias": np.array(["x"] * 8)})
    with pytest.raises(TypeError, match="strict"):
        b.load_state_dict(sd, strict="yes")


# ---------------------------------------------------------------- config and registry


def test_config_round_trip_and_registry():
    m = nn.Sequential(nn.Linear(3, 4, init="xavier_uniform"), nn.BatchNorm1d(4, eps=1e-3, momentum=0.05),
                      nn.LeakyReLU(0.2), nn.Dropout(0.25, seed=3), nn.Flatten(), nn.Sequential(nn.Linear(4, 2)),
                      nn.Softmax())
    cfg = m.get_config()
    assert cfg["type"] == "Sequential" and cfg["config"]["layers"][0] == {
        "type": "Linear", "config": {"in_features": 3, "out_features": 4, "bias": True, "init": "xavier_uniform"}}
    m2 = nn.module_from_config(cfg)
    assert m2.get_config() == cfg and repr(m2) == repr(m)

    @nn.register_module
    class Double(nn.Module):
        def forward(self, x):
            return 2 * np.asarray(x)

    assert nn.module_from_config({"type": "Double", "config": {}}).forward([1.0]) == [2.0]
    with pytest.raises(ValueError, match="unknown layer type 'Nope'"):
        nn.module_from_config({"type": "Nope", "config": {}})
    with pytest.raises(ValueError, match="cannot build Linear"):
        nn.module_from_config({"type": "Linear", "config": {"in_features": 0, "out_features": 2}})
    with pytest.raises(TypeError, match="'type' and 'config'"):
        nn.module_from_config([1])
    with pytest.raises(ValueError, match="'type' and 'config'"):
        nn.module_from_config({"type": "Linear"})
    with pytest.raises(TypeError, match="subclass"):
        nn.register_module(int)
    with pytest.raises(ValueError, match="already taken"):
        nn.register_module(type("Other", (nn.Module,), {}), name="Linear")


# ---------------------------------------------------------------- initializers


def test_initializers_statistics():
    rng = np.random.default_rng(0)
    w = np.empty((400, 300), np.float32)
    init.kaiming_uniform_(w, rng)
    b = np.sqrt(6 / 300)
    assert np.abs(w).max() <= b and abs(w.std() - b / np.sqrt(3)) < 0.01 * b
    init.kaiming_normal_(w, rng, mode="fan_out", nonlinearity="relu")
    assert abs(w.std() - np.sqrt(2 / 400)) < 0.01 * np.sqrt(2 / 400) and abs(w.mean()) < 0.001
    init.xavier_uniform_(w, rng, gain=2.0)
    b = 2 * np.sqrt(6 / 700)
    assert np.abs(w).max() <= b and abs(w.std() - b / np.sqrt(3)) < 0.01 * b
    init.xavier_normal_(w, rng)
    assert abs(w.std() - np.sqrt(2 / 700)) < 0.01 * np.sqrt(2 / 700)
    init.uniform_(w, -2, 3, rng=rng)
    assert w.min() >= -2 and w.max() <= 3
    init.normal_(w, 5, 0.1, rng=rng)
    assert abs(w.mean() - 5) < 0.01
    assert init.zeros_(w) is w and not w.any()
    assert (init.ones_(w) == 1).all() and (init.constant_(w, 0.5) == 0.5).all()
    p = Parameter(np.zeros((3, 4)))
    assert init.xavier_uniform_(p, 0) is p and p.data.any()
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(np.sqrt(2 / 1.04))
    # reproducible from a seed
    a, c = np.empty((5, 5)), np.empty((5, 5))
    np.testing.assert_array_equal(init.kaiming_normal_(a, 3), init.kaiming_normal_(c, 3))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: init.kaiming_uniform_(np.zeros(5)), ValueError, "2 dimensions"),
    (lambda: init.kaiming_uniform_(np.zeros((2, 2), int)), TypeError, "float32"),
    (lambda: init.kaiming_uniform_([[1.0, 2.0]]), TypeError, "ndarray"),
    (lambda: init.kaiming_uniform_(np.zeros((2, 2)), mode="fan"), ValueError, "mode"),
    (lambda: init.kaiming_normal_(np.zeros((2, 2)), nonlinearity="gelu"), ValueError, "nonlinearity"),
    (lambda: init.xavier_uniform_(np.zeros((2, 2)), rng=1.5), TypeError, "rng"),
    (lambda: init.xavier_normal_(np.zeros((2, 2)), gain=-1), ValueError, "gain"),
    (lambda: init.uniform_(np.zeros((2, 2)), 3, 1), ValueError, "a <= b"),
    (lambda: init.normal_(np.zeros((2, 2)), std=-1), ValueError, "std"),
    (lambda: init.zeros_(np.zeros((0, 2))), ValueError, "empty"),
])
def test_initializers_reject_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_initializer_rejects_read_only():
    w = np.zeros((2, 2))
    w.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        init.zeros_(w)


# ---------------------------------------------------------------- end to end


def test_training_loop_learns_xor_and_is_deterministic():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([0, 1, 1, 0])

    def run():
        model = nn.Sequential(nn.Linear(2, 8, rng=0), nn.Tanh(), nn.Linear(8, 2, rng=1))
        loss_fn = nn.CrossEntropyLoss()
        opt = optim.Adam(model.parameters(), lr=0.05)
        losses = []
        for _ in range(300):
            out = model(X)
            losses.append(loss_fn(out, y))
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
        return model, losses

    model, losses = run()
    assert losses[-1] < 0.05 < losses[0]
    np.testing.assert_array_equal(model(X).argmax(1), y)
    _, again = run()
    assert losses == again  # same seeds, same bits


# ---------------------------------------------------------------- layout, fusion table, gradients, any rank


def test_layers_live_in_their_family_files_and_old_imports_still_work():
    import importlib

    homes = {"Linear": "linear", "ReLU": "activation", "LeakyReLU": "activation", "Sigmoid": "activation",
             "Tanh": "activation", "Softmax": "activation", "Step": "activation", "BatchNorm1d": "normalization",
             "Dropout": "dropout", "Flatten": "shape", "Sequential": "container"}
    layers = importlib.import_module("fastdl.nn.layers")  # the compatibility re-export
    for name, home in homes.items():
        cls = getattr(nn, name)
        assert cls.__module__ == f"fastdl.nn.{home}"
        assert getattr(layers, name) is cls
    registry = importlib.import_module("fastdl.nn.registry")
    module = importlib.import_module("fastdl.nn.module")
    assert nn.register_module is registry.register_module and nn.module_from_config is registry.module_from_config
    # names other code imports from fastdl.nn.module keep working
    assert module.register_module is registry.register_module and module._REGISTRY is registry._REGISTRY


def test_module_py_imports_nothing_else_from_nn():
    # the registry moved out of module.py: module <- registry <- layers <- serialize, no import cycle
    import ast
    import pathlib

    import fastdl.nn.module as module

    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in top if isinstance(n, ast.ImportFrom) and n.level == 1]


def test_fusion_table_drives_sequential(monkeypatch):
    from fastdl.nn import fusion

    assert fusion.FUSIONS == {(nn.Linear, nn.ReLU): "relu", (nn.Linear, nn.Sigmoid): "sigmoid",
                              (nn.Linear, nn.Tanh): "tanh", (nn.Conv2d, nn.ReLU): "relu",
                              (nn.Conv2d, nn.Sigmoid): "sigmoid", (nn.Conv2d, nn.Tanh): "tanh"}
    assert fusion.fused_activations(nn.Linear) == {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}
    calls = []
    real_fwd, real_bwd = ops.linear_forward, ops.linear_backward

    def fwd(*a, **k):
        calls.append(("fwd", k.get("activation")))
        return real_fwd(*a, **k)

    def bwd(*a, **k):
        calls.append(("bwd", k.get("input_activation")))
        return real_bwd(*a, **k)

    monkeypatch.setattr(ops, "linear_forward", fwd)
    monkeypatch.setattr(ops, "linear_backward", bwd)
    x = f32(np.random.default_rng(0).standard_normal((5, 4)))
    m = nn.Sequential(nn.Linear(4, 6, rng=0), nn.Tanh(), nn.Linear(6, 3, rng=1), nn.LeakyReLU())
    ref = [m(x), m.backward(np.ones((5, 3), np.float32))]
    # forward: Linear+Tanh in one call; backward: Tanh's derivative inside the second Linear's dx
    assert calls == [("fwd", "tanh"), ("fwd", None), ("bwd", "tanh"), ("bwd", None)]
    # a row removed: the same model runs unfused, with the same results
    calls.clear()
    saved = dict(fusion.FUSIONS)
    try:
        del fusion.FUSIONS[(nn.Linear, nn.Tanh)]
        fusion._index()
        m.zero_grad()
        out = [m(x), m.backward(np.ones((5, 3), np.float32))]
    finally:
        fusion.FUSIONS.clear()
        fusion.FUSIONS.update(saved)
        fusion._index()
    assert calls == [("fwd", None), ("fwd", None), ("bwd", None), ("bwd", None)]
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out[1], ref[1], rtol=1e-5, atol=1e-7)


def test_register_fusion_adds_a_row():
    from fastdl.nn import fusion

    class MyTanh(nn.Tanh):
        pass

    x = f32(np.random.default_rng(1).standard_normal((4, 3)))
    m = nn.Sequential(nn.Linear(3, 5, rng=0), MyTanh(), nn.Linear(5, 2, rng=1))
    ref = m(x), m.backward(np.ones((4, 2), np.float32))
    m.zero_grad()
    saved = dict(fusion.FUSIONS)
    try:
        fusion.register_fusion(nn.Linear, MyTanh, "tanh")
        assert fusion.fused_activations(nn.Linear)[MyTanh] == "tanh"
        got = m(x), m.backward(np.ones((4, 2), np.float32))
    finally:
        fusion.FUSIONS.clear()
        fusion.FUSIONS.update(saved)
        fusion._index()
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-5, atol=1e-7)
    with pytest.raises(TypeError, match="name"):
        fusion.register_fusion(nn.Linear, MyTanh, 3)


@pytest.mark.parametrize("zero", ["all", "none", "weight", "bias"])
@pytest.mark.parametrize("make", [lambda: nn.Linear(4, 3, rng=0), lambda: nn.BatchNorm1d(4)])
def test_every_layer_accumulates_gradients_the_same_way(make, zero):
    # one mechanism (grads_for_backward): after zero_grad the gradient is written, otherwise added;
    # a parameter zeroed on its own gets exactly its new gradient while the other one accumulates
    layer = make()
    rng = np.random.default_rng(3)
    x = f32(rng.standard_normal((6, 4)))
    dout = f32(rng.standard_normal(layer(x).shape))
    layer.zero_grad()
    layer(x)
    layer.backward(dout)
    g1 = {n: p.grad.copy() for n, p in layer.named_parameters()}
    if zero == "all":
        layer.zero_grad()
    elif zero in ("weight", "bias"):
        getattr(layer, zero).zero_grad()
    layer(x)
    layer.backward(dout)
    for n, p in layer.named_parameters():
        expect = g1[n] if zero in ("all", n) else 2 * g1[n]
        np.testing.assert_allclose(p.grad, expect, rtol=1e-5, atol=1e-6)


def test_batchnorm_eval_backward_accumulates_like_training():
    bn = nn.BatchNorm1d(3).eval()
    x = f32(np.random.default_rng(0).standard_normal((5, 3)))
    d = f32(np.random.default_rng(1).standard_normal((5, 3)))
    bn(x)
    bn.backward(d)
    g = bn.weight.grad.copy()
    bn.backward(d)
    np.testing.assert_allclose(bn.weight.grad, 2 * g, rtol=1e-6)
    bn.zero_grad()
    bn.backward(d)
    np.testing.assert_allclose(bn.weight.grad, g, rtol=1e-6)


def test_sequential_takes_any_rank_input():
    rng = np.random.default_rng(0)
    x = f32(rng.standard_normal((6, 1, 28, 28)))
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 10, rng=0))
    y = m(x)
    W, b = m[1].weight.data.astype(np.float64), m[1].bias.data
    np.testing.assert_allclose(y, x.reshape(6, -1) @ W.T + b, rtol=1e-4, atol=1e-5)
    dout = f32(rng.standard_normal(y.shape))
    dx = m.backward(dout)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, (dout @ W).reshape(x.shape), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m[1].weight.grad, dout.T.astype(np.float64) @ x.reshape(6, -1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"dout has shape \(6, 784\), expected the shape of the last output \(6, 10\)"):
        m.backward(np.zeros((6, 784), np.float32))


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.LeakyReLU(0.2), nn.Sigmoid(), nn.Tanh(), nn.Softmax(),
                                   nn.Dropout(0.3, seed=0)])
def test_activations_and_dropout_work_on_any_rank(layer):
    rng = np.random.default_rng(1)
    x = f32(rng.uniform(0.1, 1.0, (3, 2, 4, 5)) * rng.choice([-1, 1], (3, 2, 4, 5)))
    y = layer(x)
    assert y.shape == x.shape
    dout = f32(rng.standard_normal(x.shape))
    dx = layer.backward(dout)
    assert dx.shape == x.shape
    # the same as on the flattened (rows, last axis) input, which the 2-D tests check against references
    layer2 = layer.from_config(layer._config()) if not isinstance(layer, nn.Dropout) else nn.Dropout(0.3, seed=0)
    y2 = layer2(x.reshape(-1, 5))
    np.testing.assert_allclose(y, y2.reshape(x.shape), rtol=1e-6)
    np.testing.assert_allclose(dx, layer2.backward(dout.reshape(-1, 5)).reshape(x.shape), rtol=1e-6)
    if isinstance(layer, nn.Softmax):
        np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-6)
    in_seq = nn.Sequential(nn.Linear(5, 5, rng=0), layer2)  # and inside a Sequential (buffer reuse)
    assert in_seq(x.reshape(-1, 5)).shape == (24, 5)


@pytest.mark.parametrize("layer,name", [(nn.Linear(784, 10), r"Linear\(784 -> 10\)"),
                                        (nn.BatchNorm1d(784), r"BatchNorm1d\(784\)")])
def test_linear_and_batchnorm_keep_the_2d_rule_and_suggest_flatten(layer, name):
    with pytest.raises(ValueError, match=name + r": input must be 2-D \(batch, 784\), got shape \(2, 1, 28, 28\); "
                                              r"put nn.Flatten\(\) before it"):
        layer(np.zeros((2, 1, 28, 28), np.float32))


def test_input_is_converted_and_checked_once_per_call(monkeypatch):
    import fastdl._validation as validation

    counts = {"as_float32": 0, "all_finite": 0}
    real_as, real_fin = validation.as_float32, ops.all_finite

    def counting_as(*a, **k):
        counts["as_float32"] += 1
        return real_as(*a, **k)

    def counting_fin(*a, **k):
        counts["all_finite"] += 1
        return real_fin(*a, **k)

    monkeypatch.setattr(validation, "as_float32", counting_as)
    monkeypatch.setattr(ops, "all_finite", counting_fin)
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 8, rng=0), nn.ReLU(), nn.BatchNorm1d(8), nn.Dropout(0.2, seed=0),
                      nn.Sequential(nn.Linear(8, 8, rng=1), nn.Tanh()), nn.LeakyReLU(), nn.Linear(8, 3, rng=2),
                      nn.Softmax())
    x = np.random.default_rng(0).standard_normal((4, 3, 4))  # float64: converted once
    y = m(x)
    assert counts == {"as_float32": 1, "all_finite": 1}
    m.backward(np.ones_like(y))
    assert counts == {"as_float32": 2, "all_finite": 1}  # dout: converted, not checked for NaN


def test_fresh_outputs_never_alias_buffers_with_any_last_layer():
    x = f32(np.random.default_rng(0).standard_normal((4, 3)))
    for last in (nn.ReLU(), nn.Dropout(0.5, seed=0), nn.Flatten(), nn.BatchNorm1d(5), nn.Step(), nn.Softmax()):
        m = nn.Sequential(nn.Linear(3, 5, rng=0), nn.Sigmoid(), last)
        a = m(x)
        b = m(x).copy()
        m(2 * x)
        if not isinstance(last, nn.Dropout) or not m.training:
            assert not any(np.may_share_memory(a, buf) for layer in m for buf in layer._ws.values())
        np.testing.assert_array_equal(a, b) if not isinstance(last, (nn.Dropout, nn.BatchNorm1d)) else None


# ---------------------------------------------------------------- pickling and read-only weights


def _mixed_model():
    m = nn.Sequential(nn.Linear(6, 8, rng=0), nn.ReLU(), nn.BatchNorm1d(8), nn.Dropout(0.3, seed=1),
                      nn.Linear(8, 3, rng=2))
    rng = np.random.default_rng(5)
    opt = optim.SGD(m.parameters(), lr=0.1)
    for _ in range(3):  # some training: buffers and workspace filled, running stats moved
        x = f32(rng.standard_normal((16, 6)))
        opt.zero_grad()
        m(x)
        m.backward(np.ones((16, 3), np.float32))
        opt.step()
    return m


def test_pickling_drops_workspace_and_per_call_caches():
    import pickle

    m = _mixed_model()
    assert m[0]._ws and m[0]._x is not None
    m2 = pickle.loads(pickle.dumps(m))
    for layer in m2:
        assert layer._ws == {} and layer._out_shape is None
        for name in type(layer)._per_call:
            assert getattr(layer, name) is None
        for p in layer.parameters():
            assert not p.grad.any()
    assert m2[2].running_mean is m2[2]._buffers["running_mean"]  # one array, not two copies
    small = len(pickle.dumps(m2))
    assert len(pickle.dumps(m)) == small  # nothing per-call was written
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(m2.state_dict()[k], v)
    x = f32(np.random.default_rng(0).standard_normal((5, 6)))
    np.testing.assert_array_equal(m2.eval()(x), m.eval()(x))
    m2.train()
    m2(x)
    m2.backward(np.ones((5, 3), np.float32))  # trains after unpickling


def test_joblib_memmapped_model_predicts_and_refuses_training(tmp_path):
    import copy

    joblib = pytest.importorskip("joblib")
    m = _mixed_model().eval()
    x = f32(np.random.default_rng(0).standard_normal((7, 6)))
    ref = m(x)
    path = tmp_path / "model.joblib"
    joblib.dump(m, path)
    m2 = joblib.load(path, mmap_mode="r")
    assert not m2[0].weight.data.flags.writeable  # really memory-mapped, read-only
    assert not m2[2].running_mean.flags.writeable
    np.testing.assert_array_equal(m2(x), ref)
    np.testing.assert_array_equal(m2(x), ref)  # and again (workspace buffers are its own)
    np.testing.assert_array_equal(m2[1:](m2[0](x)), ref)
    # training would write into the mapped arrays: refused, naming the array
    m2(x)
    with pytest.raises(ValueError, match=r"Linear\(8 -> 3\)\.backward: parameter 'weight' is read-only .*mmap_mode"):
        m2.backward(np.ones((7, 3), np.float32))
    m2.train()
    with pytest.raises(ValueError, match=r"BatchNorm1d\(8\): running_mean is read-only .*mmap_mode.*eval\(\)"):
        m2(x)
    m3 = copy.deepcopy(m2)  # the way out that the messages give
    m3(x)
    m3.backward(np.ones((7, 3), np.float32))
    assert m3[4].weight.grad.any()


def test_old_model_file_still_loads():
    # written by fastdl before the layers were split into family files (format version 1)
    import pathlib

    data = pathlib.Path(__file__).parent / "data"
    m = nn.load(data / "seq_v1.npz")
    io = np.load(data / "seq_v1_io.npz")
    assert [type(layer).__name__ for layer in m] == ["Flatten", "Linear", "Tanh", "BatchNorm1d", "LeakyReLU",
                                                     "Dropout", "Linear", "Softmax"]
    np.testing.assert_allclose(m.eval()(io["x"]), io["y"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: Parameter(["a", "b"]), TypeError, "Parameter: data must hold real numbers"),
    (lambda: Parameter(None), TypeError, "Parameter: data is None"),
    (lambda: nn.Module().register_buffer(3, np.zeros(2)), TypeError, "register_buffer: name must be a str"),
    (lambda: nn.register_module(type("Anon", (nn.Module,), {}), name=""), ValueError, "non-empty"),
    (lambda: nn.register_module(type("Anon", (nn.Module,), {}), name=3), TypeError, "name must be a str"),
    (lambda: init.kaiming_uniform_(np.zeros((2, 2)), mode=1), TypeError, "mode"),
    (lambda: init.calculate_gain(3), TypeError, "nonlinearity"),
    (lambda: init.calculate_gain("leaky_relu", "0.1"), TypeError, "param"),
    (lambda: init.normal_(np.zeros((2, 2)), rng=-1), ValueError, "rng"),
    (lambda: nn.MSELoss(reduction=1), TypeError, "reduction"),
    (lambda: nn.Linear(2, 2).backward(np.zeros((1, 2))), RuntimeError, "forward first"),
    (lambda: nn.Dropout(0.5, seed="1"), TypeError, "Dropout: seed"),
    (lambda: nn.Dropout(0.5).manual_seed(-2), ValueError, r"Dropout.manual_seed: seed must be None, an int >= 0"),
    (lambda: nn.Sequential(nn.Linear(2, 2)).load_state_dict({}, strict=1), TypeError, "strict must be True or False"),
])
def test_nn_checks_follow_the_one_rule(call, exc, match):
    # fastdl._validation's rule: TypeError for a wrong type, ValueError for a wrong value
    with pytest.raises(exc, match=match):
        call()


def test_backward_need_input_grad_must_be_a_bool():
    lin = nn.Linear(2, 2, rng=0)
    lin(np.ones((3, 2), np.float32))
    assert lin.backward(np.ones((3, 2), np.float32), need_input_grad=np.bool_(False)) is None
    with pytest.raises(TypeError, match=r"need_input_grad must be True or False"):
        lin.backward(np.ones((3, 2), np.float32), need_input_grad=0)


def test_model_pickled_by_the_old_layout_still_loads():
    # pickled (with its workspace and caches, as fastdl did then) when the layers lived in fastdl.nn.layers
    import pathlib
    import pickle

    data = pathlib.Path(__file__).parent / "data"
    with open(data / "seq_old_pickle.pkl", "rb") as f:
        m = pickle.load(f)
    io = np.load(data / "seq_old_pickle_io.npz")
    assert all(layer._ws == {} for layer in m) and m[0]._x is None
    assert m[2].running_mean is m[2]._buffers["running_mean"]
    np.testing.assert_array_equal(m(io["x"]), io["y"])
    m.train()
    m(io["x"])
    m.backward(np.ones((5, 3), np.float32))
