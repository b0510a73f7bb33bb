"""GEMM (fastdl.ops.matmul): float64 NumPy references, the naive kernel as a second oracle, shape
fuzzing, threads, concurrency and bad inputs.

Tolerance. A float32 dot product of length K has a rounding error bounded by about K * 2^-24 times
sum_k |a_ik||b_kj|, and in practice of order sqrt(K) * 2^-24 of it. We check, elementwise,
    |c - ref| <= RTOL * (sum_k |a_ik||b_kj| + |bias_j| + |c0_ij|) + ACT_RTOL * |ref|
with RTOL = 4e-6 (about 67 float32 ulps of the scale; the observed errors are ~1e-7 at K = 1000)
and ACT_RTOL = 1e-6 for the vectorised exp inside sigmoid / tanh. relu, sigmoid and tanh are
1-Lipschitz, so the pre-activation bound carries over to the activated values. A real bug (a
wrong index, a missed tile, a lost K-block) gives errors of order 1, far above the bound.
"""
import threading

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastdl
from fastdl import _C, ops
from reference import ISAS, act64, assert_close, ref_matmul


ACTS = [None, "relu", "sigmoid", "tanh"]


# ---------------------------------------------------------------- float64 reference, written plainly


def operands(rng, M, N, K, trans_a, trans_b):
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    return a, b


# ---------------------------------------------------------------- against the float64 reference

SIZES = [
    (1, 1, 1),
    (1, 17, 3),
    (5, 1, 9),
    (7, 13, 5),
    (6, 16, 8),  # exactly one AVX2 tile
    (12, 32, 16),  # exactly one AVX-512 tile
    (13, 33, 31),  # one past both tiles
    (20, 40, 30),  # a last panel of 8 rows (AVX-512) or 2 (AVX2, generic): the shorter edge tiles
    (50, 784, 70),  # a last strip of 16 columns (AVX-512) or 0 (AVX2): a one-vector tile for it
    (37, 50, 129),
    (64, 800, 1000),  # several K-blocks and N-blocks, 2 threads (split by columns); b packed (a K-block of
    # its rows spans more than kInPlaceB)
    (70, 200, 900),  # several A panels and K-blocks, b read in place but for its last, partial strip
    (30, 1024, 64),  # b's rows 4 KiB apart: packed, not read in place
    (300, 10, 700),  # few columns: split by rows, a read in place
    (35, 4, 70),  # N fits one vector: the small tile (generic 12 x 4)
    (29, 8, 33),  # the AVX2 small tile, 12 x 8
    (50, 16, 900),  # the AVX-512 small tile, 16 x 16, three K-blocks
    (40, 70, 1024),  # a's rows 4 KiB apart: packed instead of read in place
    (10, 100, 300),  # one A panel (AVX-512): full B strips read in place, the last one packed
    (5, 70, 40),  # one A panel on every path
    (1, 300, 200),  # one row (batch 1): the 4-row tile
    (3, 33, 50),  # three rows, a partial B strip
]


@pytest.mark.parametrize("M,N,K", SIZES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_sizes(isa, rng, M, N, K, trans_a, trans_b):
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    want, scale = ref_matmul(a, b, trans_a, trans_b)
    assert_close(ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b), want, scale)


# the 2nd: 2 K-blocks (AVX-512; 3 on AVX2), 2 threads; the 3rd: a few rows (the 4-row tile)
@pytest.mark.parametrize("M,N,K", [(37, 50, 129), (70, 200, 900), (3, 50, 129)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("act", ACTS)
def test_matmul_epilogue(isa, rng, M, N, K, trans_a, trans_b, accumulate, with_bias, act):
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    # scale so that sigmoid and tanh see both their linear part and their saturation
    a *= np.float32(0.3)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    c0 = rng.standard_normal((M, N)).astype(np.float32) if accumulate else None
    out = c0.copy() if accumulate else None
    want, scale = ref_matmul(a, b, trans_a, trans_b, c0, bias, act)
    got = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, out=out, accumulate=accumulate, bias=bias,
                     activation=act)
    if accumulate:
        assert got is out
    assert_close(got, want, scale, act)


def test_matmul_accumulate_adds_in_place(isa, rng):
    a, b = operands(rng, 40, 70, 300, False, False)
    c = rng.standard_normal((40, 70)).astype(np.float32)
    c0 = c.astype(np.float64)
    r = ops.matmul(a, b, out=c, accumulate=True)
    assert r is c and np.shares_memory(r, c)
    want, scale = ref_matmul(a, b, c0=c0)
    assert_close(c, want, scale)
    # twice: c0 + 2ab
    ops.matmul(a, b, out=c, accumulate=True)
    want2, scale2 = ref_matmul(a, b, c0=want)
    assert_close(c, want2, scale2 + scale)


def test_matmul_out_is_overwritten_without_accumulate(isa, rng):
    a, b = operands(rng, 20, 30, 40, False, True)
    out = np.full((20, 30), np.nan, np.float32)
    r = ops.matmul(a, b, trans_b=True, out=out)
    assert r is out
    want, scale = ref_matmul(a, b, trans_b=True)
    assert_close(out, want, scale)


def test_matmul_none_activation_string(isa, rng):
    a, b = operands(rng, 9, 11, 13, False, False)
    np.testing.assert_array_equal(ops.matmul(a, b, activation="none"), ops.matmul(a, b))


# Activations in the epilogue, element by element: c = act(x * 1) with a (M,1) and b (1,N) of ones.
SPECIAL = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 0.1, -0.3, 0.6249, 0.6251, -0.6251, 1.0, -2.5, 7.0,
                    -9.0, 15.0, -17.0, 40.0, -40.0, 80.0, -80.0, 87.0, -87.0, 100.0, -100.0, 1e4, -1e4, 3e38,
                    -3e38, np.inf, -np.inf], np.float32)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_matmul_activation_values(isa, act):
    x = np.concatenate([SPECIAL, np.linspace(-12, 12, 4001, dtype=np.float32)])
    a = x.reshape(-1, 1)
    b = np.ones((1, 21), np.float32)  # a partial strip too
    got = ops.matmul(a, b, activation=act)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        want = act64(x64, act)
    # relative accuracy, except below float32's normal range (results there are flushed to zero)
    tol = 2e-6 * np.abs(want) + 1.2e-38
    for j in (0, 20):
        with np.errstate(invalid="ignore"):  # inf - inf
            err = np.abs(got[:, j].astype(np.float64) - want)
        ok = (got[:, j] == want) | (err <= tol)  # the first for relu(inf)
        assert ok.all(), (x[~ok], got[~ok, j], want[~ok])
    if act != "relu":
        assert np.isfinite(got).all()
    if act == "tanh":
        assert (np.sign(got[:, 0]) == np.sign(np.tanh(x64).astype(np.float32))).all()


# A NaN in a row of a (or in the bias) gives a NaN row (column) of c under every activation, relu
# included (relu turned it into 0 before, unlike np.maximum). Shapes: the one-vector tile (N <= 16),
# the 4-row tile, the full tile over several K-blocks, the 4-row tile with b transposed (one
# sample's forward; with batch_invariant=False dot products), and the full tile with b transposed; the
# reference kernel alike.
@pytest.mark.parametrize("M,N,K,trans_b", [(2, 3, 1, False), (3, 40, 20, False), (50, 70, 900, False),
                                           (3, 20, 30, True), (30, 20, 30, True)])
@pytest.mark.parametrize("act", ACTS)
def test_matmul_nan_propagates(isa, rng, M, N, K, trans_b, act):
    a = rng.standard_normal((M, K)).astype(np.float32)
    a[1, K // 2] = np.nan
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    bias[N - 1] = np.nan
    fast = lambda *args, **kw: ops.matmul(*args, batch_invariant=False, **kw)  # noqa: E731 - dot products
    for f in (ops.matmul, fast, ops.matmul_reference):
        c = f(a, b, trans_b=trans_b, bias=bias, activation=act)
        nan = np.zeros((M, N), bool)
        nan[1, :] = nan[:, N - 1] = True
        assert np.isnan(c[nan]).all() and np.isfinite(c[~nan]).all(), c


# ---------------------------------------------------------------- batch_invariant=False: a few rows, any order

# (N, K): a K tail shorter than a vector, K = 1, columns not a multiple of the 4 taken at a time,
# and one sample's first layer (784 -> 256, 513 columns: split over 2 threads).
FAST_SHAPES = [(1, 1), (5, 33), (17, 7), (256, 784), (513, 784), (10, 128)]


@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_not_batch_invariant_small_rows(isa, rng, M, trans_a, trans_b, threads):
    """batch_invariant=False (a·bᵀ with M <= 2, 3 on the generic path: dot products along K) is as
    accurate as the blocked path: every epilogue, every transpose (only a·bᵀ changes path), 1 and 2
    threads."""
    prev = fastdl.get_num_threads()
    fastdl.set_num_threads(threads)
    try:
        for N, K in FAST_SHAPES:
            a, b = operands(rng, M, N, K, trans_a, trans_b)
            a *= np.float32(0.3)  # sigmoid and tanh: both their linear part and their saturation
            for act in ACTS:
                for with_bias, accumulate in ((False, False), (True, False), (True, True)):
                    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
                    c0 = rng.standard_normal((M, N)).astype(np.float32) if accumulate else None
                    out = c0.copy() if accumulate else None
                    want, scale = ref_matmul(a, b, trans_a, trans_b, c0, bias, act)
                    got = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, out=out, accumulate=accumulate,
                                     bias=bias, activation=act, batch_invariant=False)
                    assert_close(got, want, scale, act)
    finally:
        fastdl.set_num_threads(prev)


@pytest.mark.parametrize("M,N,K,trans_a,trans_b", [(1, 256, 784, False, True), (3, 513, 784, False, True),
                                                    (4, 17, 7, False, True), (5, 256, 784, False, True),
                                                    (2, 256, 784, False, False), (3, 256, 784, True, True)])
def test_matmul_not_batch_invariant_same_bits_on_any_thread_count(isa, rng, M, N, K, trans_a, trans_b):
    """The dot products give each element to one thread, summed alike: 1 and 2 threads agree bit for
    bit. Shapes other than a·bᵀ with M <= 3 run the blocked path either way: the same bits as True."""
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    bias = rng.standard_normal(N).astype(np.float32)
    kw = dict(trans_a=trans_a, trans_b=trans_b, bias=bias, activation="relu")
    prev = fastdl.get_num_threads()
    try:
        fastdl.set_num_threads(1)
        one = ops.matmul(a, b, batch_invariant=False, **kw)
        fastdl.set_num_threads(2)
        two = ops.matmul(a, b, batch_invariant=False, **kw)
        invariant = ops.matmul(a, b, **kw)
    finally:
        fastdl.set_num_threads(prev)
    np.testing.assert_array_equal(one, two)
    if not (trans_b and not trans_a and M <= 3):
        np.testing.assert_array_equal(two, invariant)


def test_matmul_not_batch_invariant_takes_the_dot_products(isa, rng):
    """With these operands the two summation orders round differently somewhere: False really ran the
    other path (and True the blocked one: the row's bits inside a larger batch)."""
    a, b = operands(rng, 8, 256, 784, False, True)
    fast = ops.matmul(a[:1], b, trans_b=True, batch_invariant=False)
    blocked = ops.matmul(a[:1], b, trans_b=True)
    np.testing.assert_array_equal(blocked, ops.matmul(a, b, trans_b=True)[:1])
    assert not np.array_equal(fast, blocked)


@pytest.mark.parametrize("value", [1, 0, None, "yes", 1.0, np.int64(1), np.array(True)])
@pytest.mark.parametrize("fn", ["matmul", "matmul_C", "linear_forward", "linear_forward_C"])
def test_batch_invariant_must_be_a_bool(value, fn):
    x, w = ones(2, 3), ones(4, 3)
    call = {"matmul": lambda v: ops.matmul(x, w, trans_b=True, batch_invariant=v),
            "matmul_C": lambda v: _C.matmul(x, w, False, True, batch_invariant=v),
            "linear_forward": lambda v: ops.linear_forward(x, w, batch_invariant=v),
            "linear_forward_C": lambda v: _C.linear_forward(x, w, batch_invariant=v)}[fn]
    name = fn.removesuffix("_C")
    with pytest.raises(TypeError, match=rf"^{name}: batch_invariant must be True or False, got "):
        call(value)
    for ok in (True, False, np.True_, np.False_):  # NumPy's bools are bools
        np.testing.assert_array_equal(call(ok), np.full((2, 4), 3, F32))


def test_batch_invariant_is_keyword_only():
    with pytest.raises(TypeError):
        ops.linear_forward(ones(2, 3), ones(4, 3), None, None, None, False)
    with pytest.raises(TypeError):
        ops.matmul(ones(2, 3), ones(4, 3), False, True)


# ---------------------------------------------------------------- the naive kernel as a second oracle


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_matches_reference_kernel(isa, rng, trans_a, trans_b):
    M, N, K = 45, 70, 260
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    bias = rng.standard_normal(N).astype(np.float32)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    kw = dict(trans_a=trans_a, trans_b=trans_b, bias=bias, activation="tanh", accumulate=True)
    fast = ops.matmul(a, b, out=c0.copy(), **kw)
    naive = ops.matmul_reference(a, b, out=c0.copy(), **kw)
    _, scale = ref_matmul(a, b, trans_a, trans_b, c0, bias)
    want, _ = ref_matmul(a, b, trans_a, trans_b, c0, bias, "tanh")
    assert_close(naive, want, scale, "tanh")  # the oracle itself is right
    assert_close(fast, naive.astype(np.float64), scale, "tanh")


def test_reference_kernel_shape_checks():
    with pytest.raises(ValueError, match=r"matmul_reference: b has shape \(5, 7\), expected \(K, N\) = \(6, 7\)"):
        ops.matmul_reference(np.ones((3, 6), np.float32), np.ones((5, 7), np.float32))


@given(
    M=st.integers(1, 70),
    N=st.integers(1, 90),
    K=st.integers(1, 300),
    trans_a=st.booleans(),
    trans_b=st.booleans(),
    accumulate=st.booleans(),
)
def test_matmul_fuzz(M, N, K, trans_a, trans_b, accumulate):
    rng = np.random.default_rng(M * 10007 + N * 101 + K)
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    want, scale = ref_matmul(a, b, trans_a, trans_b, c0 if accumulate else None)
    prev = _C.get_isa()
    try:
        for isa in ISAS:
            _C.set_isa(isa)
            out = c0.copy()
            got = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, out=out, accumulate=accumulate)
            assert_close(got, want, scale)
    finally:
        _C.set_isa(prev)


@given(M=st.integers(150, 700), N=st.integers(1, 300), K=st.integers(100, 400), trans_b=st.booleans())
def test_matmul_fuzz_parallel_sizes(M, N, K, trans_b):
    # big enough to run on several threads (by rows or by columns, depending on N)
    rng = np.random.default_rng(M + 1000 * N + K)
    a, b = operands(rng, M, N, K, False, trans_b)
    want, scale = ref_matmul(a, b, False, trans_b)
    assert_close(ops.matmul(a, b, trans_b=trans_b), want, scale)


# ---------------------------------------------------------------- threads and determinism


@pytest.mark.parametrize("M,N,K,trans_a,trans_b", [(300, 500, 700, False, True), (700, 12, 300, True, False),
                                                    (64, 784, 256, False, False), (512, 10, 128, False, True),
                                                    (10, 784, 256, True, False), (512, 128, 10, False, False),
                                                    (1, 784, 256, False, True)])
def test_matmul_one_and_two_threads_agree(isa, rng, M, N, K, trans_a, trans_b):
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    bias = rng.standard_normal(N).astype(np.float32)
    prev = fastdl.get_num_threads()
    try:
        fastdl.set_num_threads(1)
        one = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, bias=bias, activation="relu")
        fastdl.set_num_threads(2)
        two = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, bias=bias, activation="relu")
        again = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, bias=bias, activation="relu")
    finally:
        fastdl.set_num_threads(prev)
    want, scale = ref_matmul(a, b, trans_a, trans_b, bias=bias, act="relu")
    assert_close(one, want, scale)
    assert_close(two, want, scale)
    np.testing.assert_array_equal(two, again)  # same inputs, same thread count: same bits
    # The summation order of an element does not depend on how threads split the tiles.
    np.testing.assert_array_equal(one, two)


def test_matmul_two_python_threads(rng):
    # The GIL is released in the kernel and packing space is per calling thread: two Python threads
    # multiplying different matrices at once must both get their own right answers.
    jobs = []
    for t in range(2):
        a, b = operands(rng, 200 + 30 * t, 300, 260 - 40 * t, bool(t), not t)
        jobs.append((a, b, bool(t), not t, ops.matmul(a, b, trans_a=bool(t), trans_b=not t)))
    barrier = threading.Barrier(2)
    errors = []

    def work(a, b, ta, tb, expected):
        try:
            out = np.empty_like(expected)
            barrier.wait()
            for _ in range(30):
                ops.matmul(a, b, trans_a=ta, trans_b=tb, out=out)
                np.testing.assert_array_equal(out, expected)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors


# ---------------------------------------------------------------- bad inputs

F32 = np.float32


def ones(*shape):
    return np.ones(shape, F32)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(a=np.ones((3, 4)), b=ones(4, 5)), TypeError, r"matmul: a must have dtype float32, got float64"),
        (dict(a=ones(3, 4), b=np.ones((4, 5), np.float16)), TypeError, r"matmul: b must have dtype float32"),
        (dict(a=[[1.0]], b=ones(1, 1)), TypeError, r"matmul: a must be a numpy.ndarray"),
        (dict(a=np.ones((3, 4), F32, order="F"), b=ones(4, 5)), TypeError, r"matmul: a must be C-contiguous"),
        (dict(a=ones(3, 8)[:, ::2], b=ones(4, 5)), TypeError, r"matmul: a must be C-contiguous"),
        (dict(a=ones(3, 4), b=ones(5, 8)[:4, :5]), TypeError, r"matmul: b must be C-contiguous"),
        (dict(a=ones(3, 4), b=ones(4, 5).T), TypeError, r"matmul: b must be C-contiguous"),
        (dict(a=ones(12), b=ones(4, 5)), ValueError, r"matmul: a must be 2-D \(M, K\), got shape \(12,\)"),
        (dict(a=ones(3, 4, 1), b=ones(4, 5)), ValueError, r"matmul: a must be 2-D"),
        (dict(a=ones(3, 4), b=ones(4)), ValueError, r"matmul: b must be 2-D \(K, N\)"),
        (dict(a=ones(3, 6), b=ones(5, 7)), ValueError, r"matmul: b has shape \(5, 7\), expected \(K, N\) = \(6, 7\)"),
        (dict(a=ones(3, 6), b=ones(6, 7), trans_b=True), ValueError,
         r"matmul: b has shape \(6, 7\), expected \(N, K\) = \(6, 6\)"),
        (dict(a=ones(3, 6), b=ones(6, 7), trans_a=True), ValueError,
         r"matmul: b has shape \(6, 7\), expected \(K, N\) = \(3, 7\)"),
        (dict(a=ones(0, 4), b=ones(4, 5)), ValueError, r"matmul: a is empty"),
        (dict(a=ones(3, 0), b=ones(0, 5)), ValueError, r"matmul: a is empty"),
        (dict(a=ones(3, 4), b=ones(4, 0)), ValueError, r"matmul: b is empty"),
        (dict(a=ones(3, 4), b=ones(4, 5), out=ones(3, 6)), ValueError,
         r"matmul: out has shape \(3, 6\), expected \(M, N\) = \(3, 5\)"),
        (dict(a=ones(3, 4), b=ones(4, 5), out=np.ones((3, 5))), TypeError, r"matmul: out must have dtype float32"),
        (dict(a=ones(3, 4), b=ones(4, 5), out=np.ones((3, 5), F32, order="F")), TypeError,
         r"matmul: out must be C-contiguous"),
        (dict(a=ones(3, 4), b=ones(4, 5), accumulate=True), ValueError, r"matmul: accumulate=True needs out"),
        (dict(a=ones(3, 4), b=ones(4, 5), bias=ones(4)), ValueError,
         r"matmul: bias has shape \(4,\), expected \(N,\) = \(5,\)"),
        (dict(a=ones(3, 4), b=ones(4, 5), bias=np.ones(5)), TypeError, r"matmul: bias must have dtype float32"),
        (dict(a=ones(3, 4), b=ones(4, 5), activation="gelu"), ValueError,
         r"matmul: activation must be None or one of 'none', 'relu', 'sigmoid', 'tanh', got 'gelu'"),
        (dict(a=ones(3, 4), b=ones(4, 5), activation=1), TypeError, r"matmul: activation must be None or one of"),
    ],
)
def test_matmul_bad_input(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ops.matmul(**kwargs)


def test_matmul_readonly_out():
    out = ones(3, 5)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="matmul: out is read-only"):
        ops.matmul(ones(3, 4), ones(4, 5), out=out)


def test_matmul_out_must_not_overlap_inputs():
    a = ones(4, 4)
    with pytest.raises(ValueError, match="matmul: out must not share memory with a"):
        ops.matmul(a, ones(4, 4), out=a)
    b = ones(4, 4)
    with pytest.raises(ValueError, match="matmul: out must not share memory with b"):
        ops.matmul(ones(4, 4), b, out=b, accumulate=True)
    buf = ones(4 * 4 + 4)
    with pytest.raises(ValueError, match="matmul: out must not share memory with bias"):
        ops.matmul(ones(4, 4), ones(4, 4), out=buf[:16].reshape(4, 4), bias=buf[12:16])


def test_matmul_inputs_unchanged(rng):
    a, b = operands(rng, 30, 40, 50, False, False)
    a0, b0 = a.copy(), b.copy()
    ops.matmul(a, b, bias=np.ones(40, F32), activation="relu")
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)
