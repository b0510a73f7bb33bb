"""Batch invariance, bit for bit: a row's result must not depend on the batch it is computed in.

``f(X[i:j]) == f(X)[i:j]`` exactly (np.array_equal, not allclose) for every eval-mode forward: the
product of a Linear layer (its fused bias and activation included), ``ops.matmul`` in the NN and NT
forms, the elementwise and row-wise layers, a whole ``nn.Sequential`` in eval mode, ``fastdl.predict``
at any ``batch_size`` and the scikit-learn estimators (``check_methods_subset_invariance``); and that
training mode, which need not be invariant, takes the faster path (``batch_invariant=False``). Each on
every instruction-set path and at 1 and 2 threads. The GEMM keeps each element's sum over K in one
fixed order (K-blocks of a depth set by K alone, each a single multiply-add chain in k order, the
blocks added in order); these tests hold it to that whatever the number of rows, the thread count,
the tile or the alignment of the rows in memory.
"""
import numpy as np
import pytest

import fastdl
from fastdl import nn, ops

# Slice lengths: the small-M shapes (1-4 rows, once a path of its own), the edge tiles (4, 8 and 12
# or 16 rows), odd counts, and a few hundred rows (the column vs row thread split).
LENGTHS = (1, 2, 3, 4, 5, 7, 8, 12, 13, 17, 31, 64, 129, 300)
# (K, N): the MNIST layers, odd and small sizes, N within one vector (the tall tile), K past one
# K-block (several blocks), K = 1.
SHAPES = [(784, 256), (256, 128), (128, 10), (33, 17), (1, 5), (1000, 3), (7, 513), (2049, 40), (400, 1)]
ACTS = [None, "relu", "sigmoid", "tanh"]


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    prev = fastdl.get_num_threads()
    fastdl.set_num_threads(request.param)
    yield request.param
    fastdl.set_num_threads(prev)


def _slices(M, rng, count=24):
    """Row ranges [i, j) of a batch of M rows: every length in LENGTHS that fits, at random offsets
    (so at every alignment of the first row in memory), plus the first and last row alone."""
    out = [(0, 1), (M - 1, M)]
    for n in LENGTHS:
        if n <= M:
            for _ in range(2):
                i = int(rng.integers(0, M - n + 1))
                out.append((i, i + n))
    while len(out) < count:
        i = int(rng.integers(0, M))
        out.append((i, int(rng.integers(i + 1, M + 1))))
    return out


def _check_rows(f, X, rng, what):
    full = f(X)
    for i, j in _slices(len(X), rng):
        part = f(X[i:j])
        if not np.array_equal(part, full[i:j], equal_nan=True):
            bad = np.argwhere(part != full[i:j])[0]
            pytest.fail(f"{what}: rows [{i}, {j}) of a batch of {len(X)} differ from the whole batch's, first at "
                        f"row {i + bad[0]}, column {bad[1]}: {part[tuple(bad)]!r} vs {full[i:j][tuple(bad)]!r}")
    return full


@pytest.mark.parametrize("K,N", SHAPES, ids=[f"K{k}xN{n}" for k, n in SHAPES])
def test_linear_forward_rows_independent_of_batch(isa, threads, K, N):
    rng = np.random.default_rng(K * 1000 + N)
    M = 1000
    X = rng.standard_normal((M, K), dtype=np.float32)
    W = rng.standard_normal((N, K), dtype=np.float32) / np.float32(np.sqrt(K))
    b = rng.standard_normal(N, dtype=np.float32)
    act = ACTS[(K + N) % len(ACTS)]
    full = _check_rows(lambda x: ops.linear_forward(x, W, b, activation=act), X, rng,
                       f"linear_forward {isa} {threads}t K={K} N={N} act={act}")
    _check_rows(lambda x: ops.linear_forward(x, W), X, rng, f"linear_forward (no bias) {isa} {threads}t K={K} N={N}")
    # the same bits at any thread count
    prev = fastdl.get_num_threads()
    fastdl.set_num_threads(3 - threads)
    try:
        other = ops.linear_forward(X, W, b, activation=act)
    finally:
        fastdl.set_num_threads(prev)
    assert np.array_equal(full, other), f"linear_forward {isa}: 1 and 2 threads differ (K={K}, N={N})"


@pytest.mark.parametrize("K,N", SHAPES, ids=[f"K{k}xN{n}" for k, n in SHAPES])
def test_matmul_nn_nt_rows_independent_of_batch(isa, threads, K, N):
    rng = np.random.default_rng(K * 7 + N)
    M = 700
    X = rng.standard_normal((M, K), dtype=np.float32)
    B = rng.standard_normal((K, N), dtype=np.float32)   # NN: X · B
    Bt = np.ascontiguousarray(B.T)                        # NT: X · Btᵀ
    bias = rng.standard_normal(N, dtype=np.float32)
    nn_full = _check_rows(lambda x: ops.matmul(x, B), X, rng, f"matmul NN {isa} {threads}t K={K} N={N}")
    nt_full = _check_rows(lambda x: ops.matmul(x, Bt, trans_b=True), X, rng, f"matmul NT {isa} {threads}t K={K} N={N}")
    # NN and NT are the same product, packed differently: the same sums in the same order
    assert np.array_equal(nn_full, nt_full), f"matmul {isa}: NN and NT differ (K={K}, N={N})"
    _check_rows(lambda x: ops.matmul(x, B, bias=bias, activation="relu"), X, rng,
                f"matmul NN + bias + relu {isa} {threads}t K={K} N={N}")
    _check_rows(lambda x: ops.matmul(x, Bt, trans_b=True, bias=bias, activation="tanh"), X, rng,
                f"matmul NT + bias + tanh {isa} {threads}t K={K} N={N}")


@pytest.mark.parametrize("M", [1, 2, 3, 7, 31, 129, 1000])
def test_small_batches_match_rows_of_a_large_one(isa, threads, M):
    """A batch of M rows against the same rows inside a batch of 1200 (at an odd offset)."""
    rng = np.random.default_rng(M)
    K, N = 785, 129
    big = rng.standard_normal((1200, K), dtype=np.float32)
    W = rng.standard_normal((N, K), dtype=np.float32)
    b = rng.standard_normal(N, dtype=np.float32)
    full = ops.linear_forward(big, W, b, activation="relu")
    i = 37
    X = np.ascontiguousarray(big[i:i + M])            # its own buffer, aligned differently
    assert np.array_equal(ops.linear_forward(X, W, b, activation="relu"), full[i:i + M])
    assert np.array_equal(ops.matmul(X, W, trans_b=True), ops.matmul(big, W, trans_b=True)[i:i + M])


@pytest.mark.parametrize("C", [1, 10, 16, 17, 32, 33, 100, 1000])
def test_elementwise_and_rowwise_layers_rows_independent_of_batch(isa, threads, C):
    rng = np.random.default_rng(C)
    M = 600
    X = (rng.standard_normal((M, C), dtype=np.float32) * 3).astype(np.float32)
    gamma = rng.standard_normal(C, dtype=np.float32)
    beta = rng.standard_normal(C, dtype=np.float32)
    rmean = rng.standard_normal(C, dtype=np.float32)
    rvar = rng.uniform(0.1, 3.0, C).astype(np.float32)
    fns = {
        "relu": ops.relu, "sigmoid": ops.sigmoid, "tanh": ops.tanh, "softmax": ops.softmax, "step": ops.step,
        "leaky_relu": lambda x: ops.leaky_relu(x, 0.1),
        "batchnorm eval": lambda x: ops.batchnorm_forward(x, gamma, beta, rmean.copy(), rvar.copy(),
                                                         training=False)[0],
    }
    for name, f in fns.items():
        _check_rows(f, X, rng, f"{name} {isa} {threads}t C={C}")


def _model(rng, k_in, n_out):
    model = nn.Sequential(
        nn.Linear(k_in, 129, rng=rng), nn.ReLU(), nn.BatchNorm1d(129),
        nn.Linear(129, 64, rng=rng), nn.Sigmoid(), nn.Dropout(0.3, seed=5),
        nn.Linear(64, 33, rng=rng), nn.Tanh(), nn.BatchNorm1d(33), nn.Dropout(0.5, seed=6),
        nn.Linear(33, n_out, rng=rng), nn.Softmax())
    for m in model:
        if isinstance(m, nn.BatchNorm1d):
            c = m.num_features
            m.running_mean[:] = rng.standard_normal(c).astype(np.float32)
            m.running_var[:] = rng.uniform(0.2, 2.0, c).astype(np.float32)
            m.weight.data[:] = rng.standard_normal(c).astype(np.float32)
            m.bias.data[:] = rng.standard_normal(c).astype(np.float32)
    return model.eval()


@pytest.mark.parametrize("n_out", [10, 47])
def test_sequential_eval_and_predict_independent_of_batch(isa, threads, n_out):
    rng = np.random.default_rng(n_out)
    model = _model(rng, 784, n_out)
    X = rng.standard_normal((1000, 784), dtype=np.float32)
    full = _check_rows(lambda x: np.array(model(x)), X, rng, f"Sequential eval {isa} {threads}t")
    for bs in (1, 2, 3, 7, 31, 129, 1000, 4096):
        got = fastdl.predict(model, X[:300] if bs < 7 else X, batch_size=bs)
        assert np.array_equal(got, full[:len(got)]), f"predict batch_size={bs} {isa} {threads}t"


# ---------------------------------------------------------------- training mode: the fast path, not invariance
# Training-mode forward need not be batch-invariant: nn.Linear then passes batch_invariant=False, so a
# batch of 1-2 rows takes the dot-product path (2-3x faster for one sample). Checked without timing:
# the layer's output equals ops.linear_forward(..., batch_invariant=False) bit for bit, and these
# operands round differently on the two paths, so it could not equal both.


def test_linear_passes_batch_invariant_by_mode(monkeypatch):
    seen = []
    real = ops.linear_forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("batch_invariant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "linear_forward", spy)
    rng = np.random.default_rng(0)
    layer = nn.Linear(20, 7, rng=rng)
    model = nn.Sequential(nn.Linear(20, 9, rng=rng), nn.ReLU(), nn.Linear(9, 3, rng=rng))
    x = rng.standard_normal((2, 20), dtype=np.float32)
    layer(x), model(x)
    assert seen == [False, False, False]  # a new module is in training mode
    seen.clear()
    layer.eval(), model.eval()
    layer(x), model(x)
    assert seen == [True, True, True]


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5])
def test_linear_training_forward_takes_the_fast_path(isa, threads, M):
    rng = np.random.default_rng(M)
    layer = nn.Linear(784, 256, rng=rng)
    layer.bias.data[:] = rng.standard_normal(256).astype(np.float32)
    X = rng.standard_normal((40, 784), dtype=np.float32)
    w, b = layer.weight.data, layer.bias.data
    fast = ops.linear_forward(X[:M], w, b, batch_invariant=False)
    invariant = ops.linear_forward(X[:M], w, b)
    np.testing.assert_array_equal(invariant, ops.linear_forward(X, w, b)[:M])
    if M <= 2:  # the dot products (on every ISA)
        assert not np.array_equal(fast, invariant), "the operands should tell the two paths apart"
    if M > 4:  # the blocked path either way
        np.testing.assert_array_equal(fast, invariant)
    np.testing.assert_array_equal(np.array(layer.train()(X[:M])), fast)
    np.testing.assert_array_equal(np.array(layer.eval()(X[:M])), invariant)


def test_sequential_training_forward_takes_the_fast_path(isa, threads):
    """Inside Sequential, with the activations fused into the Linear layers (fusion.FUSIONS): training
    mode gives what the ops give with batch_invariant=False, eval mode what they give with True."""
    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Linear(784, 256, rng=rng), nn.ReLU(), nn.Linear(256, 128, rng=rng), nn.Tanh(),
                          nn.Linear(128, 10, rng=rng))
    for m in model:
        if isinstance(m, nn.Linear):
            m.bias.data[:] = rng.standard_normal(m.out_features).astype(np.float32) * 0.1
    x = rng.standard_normal((1, 784), dtype=np.float32)

    def by_ops(invariant):
        h = x
        for i, act in ((0, "relu"), (2, "tanh"), (4, None)):
            h = ops.linear_forward(h, model[i].weight.data, model[i].bias.data, activation=act,
                                   batch_invariant=invariant)
        return h

    fast, invariant = by_ops(False), by_ops(True)
    assert not np.array_equal(fast, invariant)
    np.testing.assert_array_equal(np.array(model.train()(x)), fast)
    np.testing.assert_array_equal(np.array(model.eval()(x)), invariant)
    # a training step on one sample runs (forward on the fast path, backward as before)
    model.train()
    out = model(x)
    dx = model.backward(np.ones_like(out))
    assert dx.shape == x.shape and np.isfinite(dx).all()


@pytest.mark.parametrize("name", ["MLPClassifier", "MLPRegressor"])
def test_sklearn_methods_subset_invariance(name):
    estimator_checks = pytest.importorskip("sklearn.utils.estimator_checks")
    if not hasattr(estimator_checks, "check_methods_subset_invariance"):
        pytest.skip("this scikit-learn has no check_methods_subset_invariance")
    import fastdl.estimators as estimators
    est = getattr(estimators, name)(hidden_layer_sizes=(17, 9), max_iter=20, random_state=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator_checks.check_methods_subset_invariance(name, est)
