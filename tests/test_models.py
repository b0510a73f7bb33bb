"""fastdl.models: the ready-made architectures (models.mlp, lenet5, cnn), and the old estimator names kept importable.

References: the layers built one by one with nn.Linear from the same generator (what the three builders
that models.mlp replaced did: the estimators', the command line's and the training benchmark's), weight
for weight; the estimators, the CLI and the benchmark checked to build through models.mlp.
"""
import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest

from fastdl import models, nn
from fastdl._validation import InvalidParameterError


def kinds(net):
    return [type(m).__name__ for m in net]


def by_hand(sizes, activation="relu", dropout=0.0, batch_norm=False, seed=0, init="kaiming_uniform",
            output_init="kaiming_uniform"):
    """The reference: Linear -> [BatchNorm1d] -> act -> [Dropout] per hidden size, then Linear, one generator."""
    acts = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
            "logistic": nn.Sigmoid, "identity": None}
    rng = np.random.default_rng(seed)
    layers, width = [], sizes[0]
    for h in sizes[1:-1]:
        layers.append(nn.Linear(width, h, init=init, rng=rng))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        if acts[activation] is not None:
            layers.append(acts[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout, seed=int(rng.integers(0, 2**63))))
        width = h
    layers.append(nn.Linear(width, sizes[-1], init=output_init, rng=rng))
    return nn.Sequential(*layers)


def assert_same_network(a, b):
    assert kinds(a) == kinds(b)
    for ma, mb in zip(a, b):
        pa, pb = list(ma.parameters()), list(mb.parameters())
        assert len(pa) == len(pb)
        for x, y in zip(pa, pb):
            np.testing.assert_array_equal(x.data, y.data)
        if isinstance(ma, nn.Dropout):
            assert ma.p == mb.p
    x = np.random.default_rng(5).normal(size=(7, list(a)[0].in_features)).astype(np.float32)
    a.train(), b.train()
    np.testing.assert_array_equal(a(x), b(x))          # dropout masks from the same seeds too


# ---------------------------------------------------------------- the architecture

def test_mlp_layer_order_and_shapes():
    net = models.mlp([5, 8, 4, 3], rng=0)
    assert isinstance(net, nn.Sequential)
    assert kinds(net) == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]          # no activation after the last
    assert [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)] == [(5, 8), (8, 4), (4, 3)]
    full = models.mlp([5, 8, 4, 3], activation="tanh", dropout=0.25, batch_norm=True, rng=0)
    assert kinds(full) == ["Linear", "BatchNorm1d", "Tanh", "Dropout"] * 2 + ["Linear"]
    assert all(m.p == 0.25 for m in full if isinstance(m, nn.Dropout))
    assert kinds(models.mlp([3, 2], rng=0)) == ["Linear"]                         # no hidden layer: a linear model
    assert kinds(models.mlp([3, 4, 2], activation="identity", rng=0)) == ["Linear", "Linear"]
    assert kinds(models.mlp([3, 4, 2], activation="logistic", rng=0)) == ["Linear", "Sigmoid", "Linear"]
    assert kinds(models.mlp([3, 4, 2], activation="leaky_relu", rng=0)) == ["Linear", "LeakyReLU", "Linear"]
    out = net(np.ones((6, 5), np.float32))
    assert out.shape == (6, 3)


@pytest.mark.parametrize("kw, init, output_init", [
    (dict(), "kaiming_uniform", "kaiming_uniform"),
    (dict(activation="leaky_relu", dropout=0.3), "kaiming_uniform", "kaiming_uniform"),
    (dict(activation="tanh", batch_norm=True), "xavier_uniform", "xavier_uniform"),
    (dict(activation="sigmoid", dropout=0.1, batch_norm=True), "xavier_uniform", "xavier_uniform"),
    (dict(activation="identity"), "xavier_uniform", "xavier_uniform"),
    (dict(output_init="xavier_uniform", dropout=0.2), "kaiming_uniform", "xavier_uniform"),
    (dict(init="kaiming_normal", activation="tanh"), "kaiming_normal", "kaiming_normal"),
])
def test_mlp_weights_equal_the_layers_built_by_hand(kw, init, output_init):
    # the same weights, biases and dropout seeds for the same seed as building the layers one by one
    sizes = [6, 9, 5, 3]
    ref_kw = {k: v for k, v in kw.items() if k not in ("init", "output_init")}
    assert_same_network(models.mlp(sizes, rng=11, **kw),
                        by_hand(sizes, seed=11, init=init, output_init=output_init, **ref_kw))


def test_mlp_rng_forms_and_determinism():
    def a():
        return models.mlp([4, 6, 2], dropout=0.5, rng=3)

    assert_same_network(a(), models.mlp([4, 6, 2], dropout=0.5, rng=3))    # (a forward pass draws masks: fresh ones)
    assert_same_network(a(), models.mlp([4, 6, 2], dropout=0.5, rng=np.random.default_rng(3)))
    other = models.mlp([4, 6, 2], dropout=0.5, rng=4)
    assert not np.array_equal(a()[0].weight.data, other[0].weight.data)
    g = np.random.default_rng(3)          # a Generator is used as it is, and advanced
    models.mlp([4, 6, 2], rng=g)
    assert g.integers(1 << 30) != np.random.default_rng(3).integers(1 << 30)
    models.mlp([4, 6, 2], rng=np.random.RandomState(0))     # scikit-learn's legacy generator is accepted
    fresh = [models.mlp([4, 6, 2])[0].weight.data for _ in range(2)]   # None: fresh entropy
    assert not np.array_equal(*fresh)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(sizes=[4]), ValueError, r"mlp: sizes must hold at least in_features and out_features"),
    (dict(sizes=[4, 0, 2]), ValueError, r"mlp: sizes\[1\] must be >= 1, got 0"),
    (dict(sizes=[4, 2.5, 2]), TypeError, r"mlp: sizes\[1\] must be an int, got float"),
    (dict(sizes=4), TypeError, r"mlp: sizes must be a sequence of ints"),
    (dict(sizes="42"), TypeError, r"mlp: sizes must be a sequence of ints"),
    (dict(activation="softplus"), ValueError, r"mlp: activation must be one of"),
    (dict(activation=3), TypeError, r"mlp: activation must be one of"),
    (dict(dropout=1.0), ValueError, r"mlp: dropout must be >= 0.0 and < 1.0"),
    (dict(dropout=1 - 1e-9), ValueError, r"mlp: dropout must be >= 0.0 and < 1.0 in float32"),
    (dict(dropout="0.1"), TypeError, r"mlp: dropout must be a real number"),
    (dict(batch_norm=1), TypeError, r"mlp: batch_norm must be True or False"),
    (dict(rng=-1), ValueError, r"mlp: rng must be None, an int >= 0"),
    (dict(rng="0"), TypeError, r"mlp: rng must be None, an int >= 0"),
    (dict(init="he"), ValueError, r"mlp: init must be one of"),
    (dict(output_init="he"), ValueError, r"mlp: output_init must be one of"),
])
def test_mlp_bad_arguments(kw, exc, match):
    kw = dict(dict(sizes=[4, 3, 2]), **kw)
    with pytest.raises(exc, match=match) as e:
        models.mlp(**kw)
    assert not isinstance(e.value, InvalidParameterError)   # the package rule here, not scikit-learn's


def test_mlp_trains_and_saves(tmp_path):
    from fastdl import optim
    from fastdl.train import fit, predict

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)                      # XOR-like: needs the hidden layer
    net = models.mlp([2, 16, 2], batch_norm=True, dropout=0.05, rng=0)
    fit(net, nn.CrossEntropyLoss(), optim.Adam(net.parameters(), lr=0.02), X, y, epochs=80, batch_size=32,
        seed=0, verbose=0)
    acc = (predict(net, X).argmax(1) == y).mean()
    assert acc > 0.9, acc
    net.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(predict(nn.load(tmp_path / "m.npz"), X), predict(net, X))


# ---------------------------------------------------------------- one builder for all

def test_estimators_build_through_models_mlp():
    from fastdl.estimators import MLPClassifier, MLPRegressor

    for cls, n_out in ((MLPClassifier, 2), (MLPRegressor, 1)):
        est = cls(hidden_layer_sizes=(7, 5), activation="tanh", dropout=0.1, batch_norm=True, random_state=4)
        p = est._checked_params("t")
        model, _ = est._build(p, 3, n_out, np.random.default_rng(4))
        assert_same_network(model, models.mlp([3, 7, 5, n_out], activation="tanh", dropout=0.1, batch_norm=True,
                                              rng=4, output_init="xavier_uniform"))


def test_cli_and_benchmark_build_through_models_mlp(monkeypatch):
    import fastdl.__main__ as cli

    calls = []
    real = models.mlp

    def spy(*a, **k):
        calls.append((a, k))
        return real(*a, **k)

    monkeypatch.setattr(models, "mlp", spy)
    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    bt = importlib.import_module("bench_training")
    layers = bt.initial_layers()
    ref = by_hand(bt.SIZES, seed=bt.SEED)
    for (w, b), lin in zip(layers, [m for m in ref if isinstance(m, nn.Linear)]):
        np.testing.assert_array_equal(w, lin.weight.data)
        np.testing.assert_array_equal(b, lin.bias.data)
    net = bt.FastdlNet(layers)
    assert kinds(net.model) == kinds(ref)
    assert len(calls) == 2 and calls[0][0][0] == bt.SIZES
    assert "models.mlp(" in Path(cli.__file__).read_text()    # `fastdl train` builds its network there too
    assert not hasattr(cli, "build_mlp")


# ---------------------------------------------------------------- the image models: lenet5, cnn

def torch_lenet5(torch, num_classes=10):
    tnn = torch.nn
    return tnn.Sequential(tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                          tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
                          tnn.Linear(84, num_classes))


def torch_cnn(torch, num_classes=10, batch_norm=True, dropout=0.5):
    tnn = torch.nn
    layers = []
    for c_in, c_out in ((1, 32), (32, 32), (32, 64), (64, 64)):
        layers.append(tnn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm))
        layers += [tnn.BatchNorm2d(c_out)] if batch_norm else []
        layers.append(tnn.ReLU())
        layers += [tnn.MaxPool2d(2)] if c_in == c_out else []
    layers += [tnn.Flatten(), tnn.Linear(3136, 128), tnn.ReLU()]
    layers += [tnn.Dropout(dropout)] if dropout else []
    return tnn.Sequential(*layers, tnn.Linear(128, num_classes))


def test_lenet5_layers_and_shapes():
    net = models.lenet5(rng=0)
    assert kinds(net) == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
                          "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [m.weight.data.shape for m in convs] == [(6, 1, 5, 5), (16, 6, 5, 5)]
    assert [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)] == [(400, 120), (120, 84),
                                                                                         (84, 10)]
    assert sum(p.data.size for p in net.parameters()) == 61706
    x = np.random.default_rng(0).random((3,) + models.IMAGE_SHAPE, dtype=np.float32)
    assert net(x).shape == (3, 10)
    assert models.lenet5(7, rng=0)(x).shape == (3, 7)
    h = x
    for m in list(net)[:6]:           # (N, 6, 14, 14) after the first block, (N, 16, 5, 5) after the second
        h = m(h)
    assert h.shape == (3, 16, 5, 5)


@pytest.mark.parametrize("kw", [dict(), dict(batch_norm=False), dict(dropout=0.0), dict(batch_norm=False, dropout=0.2)])
def test_cnn_layers_and_shapes(kw):
    net = models.cnn(rng=0, **kw)
    bn, p = kw.get("batch_norm", True), kw.get("dropout", 0.5)
    block = ["Conv2d"] + (["BatchNorm2d"] if bn else []) + ["ReLU"]
    assert kinds(net) == (block * 2 + ["MaxPool2d"]) * 2 + ["Flatten", "Linear", "ReLU"] + (["Dropout"] if p else []) \
        + ["Linear"]
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [m.weight.data.shape for m in convs] == [(32, 1, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3), (64, 64, 3, 3)]
    assert all((m.bias is None) == bn for m in convs)
    assert [m.p for m in net if isinstance(m, nn.Dropout)] == ([p] if p else [])
    assert sum(q.data.size for q in net.parameters()) == (468010 if bn else 467818)
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    assert net(x).shape == (2, 10)
    net.eval()
    assert models.cnn(3, rng=0, **kw).eval()(x).shape == (2, 3)


@pytest.mark.parametrize("build", ["lenet5", "cnn", "cnn_plain"])
def test_image_models_match_torch(build):
    """Same tensors in the same order as the PyTorch network (a state dict maps one to one), and with
    fastdl's weights copied in, the same outputs (eval mode: BatchNorm2d on its running statistics)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    if build == "lenet5":
        net, ref = models.lenet5(rng=1), torch_lenet5(torch)
    else:
        bn = build == "cnn"
        net, ref = models.cnn(rng=1, batch_norm=bn), torch_cnn(torch, batch_norm=bn)
    ours = net.state_dict()
    theirs = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {k: v.shape for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}  # same names
    assert [p.data.shape for p in net.parameters()] == [tuple(p.shape) for p in ref.parameters()]  # same order
    assert sum(p.data.size for p in net.parameters()) == sum(p.numel() for p in ref.parameters())
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.items()}, strict=False)
    x = np.random.default_rng(2).random((5, 1, 28, 28), dtype=np.float32)
    net.eval(), ref.eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("build", [models.lenet5, models.cnn])
def test_image_models_seeded_determinism(build):
    def weights(net):
        return [p.data.copy() for p in net.parameters()]

    a, b = build(rng=3), build(rng=np.random.default_rng(3))
    for x, y in zip(weights(a), weights(b)):
        np.testing.assert_array_equal(x, y)
    other = weights(build(rng=4))
    assert not any(np.array_equal(x, y) for x, y in zip(weights(a), other) if x.std() > 0)
    g = np.random.default_rng(3)
    build(rng=g)                          # a Generator is used as it is, and advanced
    assert g.integers(1 << 30) != np.random.default_rng(3).integers(1 << 30)
    x = np.random.default_rng(5).random((4, 1, 28, 28), dtype=np.float32)
    a.train(), b.train()
    np.testing.assert_array_equal(a(x), b(x))   # training mode too: same dropout seeds
    fresh = [weights(build())[0] for _ in range(2)]
    assert not np.array_equal(*fresh)


@pytest.mark.parametrize("fn, kw, exc, match", [
    ("lenet5", dict(num_classes=0), ValueError, r"lenet5: num_classes must be >= 1, got 0"),
    ("lenet5", dict(num_classes=2.0), TypeError, r"lenet5: num_classes must be an int"),
    ("lenet5", dict(rng=-1), ValueError, r"lenet5: rng must be None, an int >= 0"),
    ("cnn", dict(num_classes=0), ValueError, r"cnn: num_classes must be >= 1"),
    ("cnn", dict(dropout=1.0), ValueError, r"cnn: dropout must be >= 0.0 and < 1.0"),
    ("cnn", dict(batch_norm="yes"), TypeError, r"cnn: batch_norm must be True or False"),
    ("cnn", dict(rng="0"), TypeError, r"cnn: rng must be None, an int >= 0"),
])
def test_image_models_bad_arguments(fn, kw, exc, match):
    with pytest.raises(exc, match=match):
        getattr(models, fn)(**kw)


def test_image_models_train_and_save(tmp_path):
    from fastdl import optim
    from fastdl.train import fit, predict

    rng = np.random.default_rng(0)
    X = rng.random((64, 1, 28, 28), dtype=np.float32)
    y = (X[:, 0, :14].mean(axis=(1, 2)) > X[:, 0, 14:].mean(axis=(1, 2))).astype(np.int64)  # top vs bottom half
    for net in (models.lenet5(2, rng=0), models.cnn(2, rng=0)):
        hist = fit(net, nn.CrossEntropyLoss(), optim.Adam(net.parameters(), lr=2e-3), X, y, epochs=6,
                   batch_size=16, seed=0, verbose=0)
        assert hist["loss"][-1] < hist["loss"][0]
        net.save(tmp_path / "m.npz")
        np.testing.assert_array_equal(predict(nn.load(tmp_path / "m.npz"), X), predict(net, X))


# ---------------------------------------------------------------- the estimators' old home

@pytest.mark.parametrize("name", ["LinearRegression", "LogisticRegression", "MLPClassifier", "MLPRegressor",
                                  "NotFittedError", "ConvergenceWarning"])
def test_old_estimator_names_still_import_with_a_deprecation_warning(name):
    from fastdl import estimators

    with pytest.warns(DeprecationWarning, match=rf"fastdl.models.{name} has moved to fastdl.estimators.{name}"):
        obj = getattr(models, name)
    assert obj is getattr(estimators, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(DeprecationWarning):
            exec(f"from fastdl.models import {name}", {})
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        models.nothing_here  # noqa: B018


def test_estimator_pickled_under_the_old_module_still_loads():
    import pickle

    from fastdl.estimators import LinearRegression

    est = LinearRegression().fit(np.arange(10.0).reshape(5, 2), np.arange(5.0))
    LinearRegression.__module__ = "fastdl.models"        # pickle it as it was pickled before the move
    try:
        with pytest.warns(DeprecationWarning):
            old = pickle.dumps(est)
    finally:
        LinearRegression.__module__ = "fastdl.estimators"
    assert b"fastdl.models" in old
    with pytest.warns(DeprecationWarning, match="moved to fastdl.estimators"):
        back = pickle.loads(old)
    assert type(back) is LinearRegression
    np.testing.assert_array_equal(back.coef_, est.coef_)
