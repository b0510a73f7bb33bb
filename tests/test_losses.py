"""Losses: float64 NumPy references, finite differences (both reductions), shape fuzzing, extreme values,
bad inputs (shapes, dtypes, labels, NaN/Inf, targets), threads and determinism."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fastdl import _C, ops
from reference import F32_MAX, numeric_grad, ref_bce, ref_bce_stable, ref_ce, ref_l1, ref_mse

fuzz = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
REDUCTIONS = ["mean", "sum"]


PAIR = {
    "mse": (ops.mse_loss, ref_mse),
    "l1": (ops.l1_loss, ref_l1),
    "bce": (ops.bce_with_logits, ref_bce),
}


def grad_atol(name, n, reduction):
    """bce's gradient σ(x) - t cancels where σ(x) ~ t: its error is absolute, ~1 float32 ulp of 1, over n."""
    if name != "bce":
        return 1e-30
    return 2e-7 / (n if reduction == "mean" else 1)


def pair_inputs(rng, name, shape):
    a = (rng.standard_normal(shape) * 2).astype(np.float32)
    if name == "bce":
        b = rng.uniform(0, 1, shape).astype(np.float32)
        b.flat[::3] = np.round(b.flat[::3])  # hard 0/1 labels too
    else:
        b = (rng.standard_normal(shape) * 2).astype(np.float32)
    return a, b


# ---------------------------------------------------------------- references
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(PAIR))
def test_pair_loss_matches_reference(isa, rng, name, reduction):
    f, ref = PAIR[name]
    a, b = pair_inputs(rng, name, (37, 29))
    loss, g = f(a, b, reduction=reduction)
    want_loss, want_g = ref(a, b, reduction)
    assert isinstance(loss, float)
    assert g.shape == a.shape and g.dtype == np.float32
    assert loss == pytest.approx(want_loss, rel=2e-7 if name == "bce" else 1e-12)
    np.testing.assert_allclose(g, want_g, rtol=3e-7, atol=grad_atol(name, a.size, reduction))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_reference(isa, rng, reduction):
    B, NC = 53, 10
    x = (rng.standard_normal((B, NC)) * 3).astype(np.float32)
    labels = rng.integers(0, NC, B)
    loss, g = ops.softmax_cross_entropy(x, labels, reduction=reduction)
    want_loss, want_g = ref_ce(x, labels, reduction)
    assert isinstance(loss, float)
    assert loss == pytest.approx(want_loss, rel=1e-6)
    np.testing.assert_allclose(g, want_g, rtol=2e-6, atol=1e-9)


def test_cross_entropy_confident_label_keeps_precision(isa):
    # p(label) -> 1: the label's gradient -(1 - p) is computed as -(S - e_label)/S, not p - 1 in float.
    x = np.float32([[20.0, 0.0, 0.0], [0.0, 30.0, 5.0]])
    labels = np.array([0, 1])
    loss, g = ops.softmax_cross_entropy(x, labels, reduction="sum")
    want_loss, want_g = ref_ce(x, labels, "sum")
    assert loss == pytest.approx(want_loss, rel=1e-6)
    np.testing.assert_allclose(g, want_g, rtol=1e-6, atol=0)


def test_grad_false_gives_same_loss_and_none(isa, rng):
    a, b = pair_inputs(rng, "bce", 1001)
    for f in (ops.mse_loss, ops.l1_loss, ops.bce_with_logits):
        loss, g = f(a, b)
        loss2, none = f(a, b, grad=False)
        assert none is None and loss2 == loss
    x = rng.standard_normal((7, 11)).astype(np.float32)
    labels = rng.integers(0, 11, 7)
    loss, _ = ops.softmax_cross_entropy(x, labels)
    loss2, none = ops.softmax_cross_entropy(x, labels, grad=False)
    assert none is None and loss2 == loss


def test_l1_gradient_is_zero_where_equal(isa):
    p = np.float32([1.0, 2.0, 3.0, -1.0])
    t = np.float32([1.0, 1.0, 4.0, -1.0])
    loss, g = ops.l1_loss(p, t, reduction="sum")
    assert loss == 2.0
    np.testing.assert_array_equal(g, np.float32([0, 1, -1, 0]))


def test_cross_entropy_one_class(isa):
    loss, g = ops.softmax_cross_entropy(np.float32([[3.0], [-1e4]]), np.array([0, 0]))
    assert loss == 0.0
    np.testing.assert_array_equal(g, np.zeros((2, 1), np.float32))


# ---------------------------------------------------------------- finite differences (float64 central
# differences of the float32 kernel's double loss; the step is the one float32 actually took)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(PAIR))
def test_pair_loss_finite_differences(isa, rng, name, reduction):
    f, _ = PAIR[name]
    a, b = pair_inputs(rng, name, (3, 7))
    if name == "l1":  # keep away from the kink at pred == target
        a = np.where(np.abs(a - b) < 0.1, b + 0.5, a).astype(np.float32)
    _, g = f(a, b, reduction=reduction)
    num = numeric_grad(lambda v: f(v, b, reduction=reduction, grad=False)[0], a, h=1e-2)
    np.testing.assert_allclose(g, num, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("NC", [1, 2, 10])
def test_cross_entropy_finite_differences(isa, rng, reduction, NC):
    B = 4
    x = (rng.standard_normal((B, NC)) * 2).astype(np.float32)
    labels = rng.integers(0, NC, B)
    _, g = ops.softmax_cross_entropy(x, labels, reduction=reduction)
    num = numeric_grad(lambda v: ops.softmax_cross_entropy(v, labels, reduction=reduction, grad=False)[0], x, h=1e-2)
    np.testing.assert_allclose(g, num, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- shape fuzzing
@fuzz
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**31 - 1), reduction=st.sampled_from(REDUCTIONS))
def test_pair_losses_any_length(isa, n, seed, reduction):
    r = np.random.default_rng(seed)
    for name, (f, ref) in PAIR.items():
        a, b = pair_inputs(r, name, n)
        loss, g = f(a, b, reduction=reduction)
        want_loss, want_g = ref(a, b, reduction)
        assert loss == pytest.approx(want_loss, rel=3e-7, abs=1e-12)
        np.testing.assert_allclose(g, want_g, rtol=3e-7, atol=grad_atol(name, n, reduction))


@fuzz
@given(B=st.integers(1, 64), NC=st.one_of(st.sampled_from([1, 2, 7, 8, 9, 10, 15, 16, 17, 31, 33, 1000]),
                                           st.integers(1, 200)),
       seed=st.integers(0, 2**31 - 1), reduction=st.sampled_from(REDUCTIONS))
def test_cross_entropy_any_shape(isa, B, NC, seed, reduction):
    r = np.random.default_rng(seed)
    x = (r.standard_normal((B, NC)) * 4).astype(np.float32)
    labels = r.integers(0, NC, B)
    loss, g = ops.softmax_cross_entropy(x, labels, reduction=reduction)
    want_loss, want_g = ref_ce(x, labels, reduction)
    assert loss == pytest.approx(want_loss, rel=2e-6, abs=1e-9)
    np.testing.assert_allclose(g, want_g, rtol=3e-6, atol=1e-9)


# ---------------------------------------------------------------- extreme values
EXTREME_LOGITS = np.float32([0, 1e-4, -1e-4, 80, -80, 88.7, -88.7, 100, -100, 1e4, -1e4, 1e30, -1e30,
                             F32_MAX, -F32_MAX])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_bce_extreme_logits(isa, t, reduction):
    x = EXTREME_LOGITS
    target = np.full_like(x, t)
    loss, g = ops.bce_with_logits(x, target, reduction=reduction)
    want_loss, want_g = ref_bce_stable(x, target, reduction)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    assert loss == pytest.approx(want_loss, rel=1e-6)
    np.testing.assert_allclose(g, want_g, rtol=5e-7, atol=1e-30)


def test_bce_moderate_logits_precise(isa):
    # x t nearly cancels max(x, 0): max(x,0) - x t is taken in double.
    x = np.float32([1e4, 9999.0, -1e4])
    t = np.float32([0.9999, 1.0, 0.0001])
    loss, _ = ops.bce_with_logits(x, t, reduction="sum")
    assert loss == pytest.approx(ref_bce_stable(x, t, "sum")[0], rel=1e-9)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_extreme_logits(isa, reduction):
    x = np.float32([
        [1e4, -1e4, 0],
        [-1e4, 1e4, 0],
        [F32_MAX, -F32_MAX, 0],
        [-F32_MAX, F32_MAX, F32_MAX],
        [100, 80, -100],
        [88.7, -88.7, 87.5],
        [-1e4, -1e4, -1e4],
    ])
    labels = np.array([0, 0, 1, 1, 2, 1, 2])
    loss, g = ops.softmax_cross_entropy(x, labels, reduction=reduction)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    n = len(labels) if reduction == "mean" else 1
    # logsumexp - x[label], by hand (float64): 0, 2e4, 2·FLT_MAX, ln 2, 200 + ln(1 + e^-20 + e^-200), ...
    rows = [0.0, 2e4, 2 * F32_MAX, np.log(2.0), 200 + np.log1p(np.exp(-20.0)),
            ref_ce(x[5:6], labels[5:6], "sum")[0], np.log(3.0)]
    assert loss == pytest.approx(sum(rows) / n, rel=1e-6)
    want_g = np.array([[0, 0, 0], [-1, 1, 0], [1, -1, 0], [0, -0.5, 0.5], [1, 0, -1],
                       ref_ce(x[5:6], labels[5:6], "sum")[1][0], [1 / 3, 1 / 3, -2 / 3]]) / n
    np.testing.assert_allclose(g, want_g, rtol=1e-6, atol=1e-8)


def test_mse_l1_extremes_stay_finite(isa):
    p = np.float32([F32_MAX, -F32_MAX, 1e4])
    t = np.float32([-F32_MAX, F32_MAX, -1e4])
    loss, _ = ops.mse_loss(p, t, reduction="sum", grad=False)
    assert loss == pytest.approx(2 * (2 * F32_MAX) ** 2 + 4e8, rel=1e-12)
    loss, g = ops.l1_loss(p, t)
    assert loss == pytest.approx((4 * F32_MAX + 2e4) / 3, rel=1e-12)
    np.testing.assert_array_equal(g, np.float32([1, -1, 1]) / np.float32(3))


# ---------------------------------------------------------------- out=, in place
@pytest.mark.parametrize("name", list(PAIR))
def test_pair_loss_out(isa, rng, name):
    f, _ = PAIR[name]
    a, b = pair_inputs(rng, name, 300)
    loss, want = f(a, b)
    out = np.empty_like(a)
    loss2, g = f(a, b, out=out)
    assert g is out and loss2 == loss
    np.testing.assert_array_equal(out, want)
    a_copy = a.copy()
    loss3, g = f(a, b, out=a)  # the gradient may overwrite the first input
    assert g is a and loss3 == loss
    np.testing.assert_array_equal(a, want)
    assert not np.array_equal(a, a_copy)


def test_cross_entropy_out_in_place(isa, rng):
    x = rng.standard_normal((20, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 20)
    loss, want = ops.softmax_cross_entropy(x, labels)
    loss2, g = ops.softmax_cross_entropy(x, labels, out=x)
    assert g is x and loss2 == loss
    np.testing.assert_array_equal(x, want)


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("name", list(PAIR))
def test_pair_loss_shape_mismatch_names_both_shapes(name):
    f, _ = PAIR[name]
    first = "logits" if name == "bce" else "pred"
    with pytest.raises(ValueError, match=rf"target has shape \(4, 3\), expected {first}.shape = \(3, 4\)"):
        f(np.zeros((3, 4), np.float32), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"target has shape \(12,\), expected"):
        f(np.zeros((3, 4), np.float32), np.zeros(12, np.float32))


@pytest.mark.parametrize("name", list(PAIR))
@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (np.zeros(6, np.float64), TypeError, "must have dtype float32"),
        (np.zeros((3, 2), np.float32, order="F"), TypeError, "must be C-contiguous"),
        (np.zeros((3, 4), np.float32)[:, ::2], TypeError, "must be C-contiguous"),
        ([0.0] * 6, TypeError, "must be a numpy.ndarray"),
    ],
)
def test_pair_loss_bad_arrays(name, bad, exc, words):
    f, _ = PAIR[name]
    first = "logits" if name == "bce" else "pred"
    ok = np.zeros((3, 2), np.float32) if np.ndim(bad) == 2 else np.zeros(6, np.float32)
    with pytest.raises(exc, match=f"{first} {words}"):
        f(bad, ok)
    with pytest.raises(exc, match=f"target {words}"):
        f(ok, bad)


@pytest.mark.parametrize("name", list(PAIR))
def test_pair_loss_empty(name):
    with pytest.raises(ValueError, match="is empty"):
        PAIR[name][0](np.zeros(0, np.float32), np.zeros(0, np.float32))


@pytest.mark.parametrize("name", list(PAIR) + ["ce"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_in_first_input(isa, name, bad):
    a = np.zeros((4, 5), np.float32)
    a[2, 3] = bad
    if name == "ce":
        f, b, first = ops.softmax_cross_entropy, np.array([0, 1, 0, 4]), "logits"
    else:
        f, b, first = PAIR[name][0], np.full((4, 5), 0.5, np.float32), "logits" if name == "bce" else "pred"
    for grad in (True, False):
        with pytest.raises(ValueError, match=rf"{first} contains NaN or Inf \(first at flat index 13"):
            f(a, b, grad=grad)


@pytest.mark.parametrize("name", list(PAIR))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_in_target(isa, name, bad):
    a = np.zeros(40, np.float32)
    b = np.full(40, 0.5, np.float32)
    b[37] = bad
    with pytest.raises(ValueError, match=r"target contains NaN or Inf \(first at flat index 37"):
        PAIR[name][0](a, b)


@pytest.mark.parametrize("bad", [1.5, -0.1, 1.0000001])
def test_bce_target_outside_unit_interval(isa, bad):
    t = np.full(30, 0.5, np.float32)
    t[21] = bad
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\], got .* at flat index 21"):
        ops.bce_with_logits(np.zeros(30, np.float32), t)


def test_cross_entropy_labels_dtype_and_shape():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(TypeError, match="labels must have dtype int64, got int32"):
        ops.softmax_cross_entropy(x, np.array([0, 1, 2], np.int32))
    with pytest.raises(TypeError, match="labels must have dtype int64, got float32"):
        ops.softmax_cross_entropy(x, np.array([0, 1, 2], np.float32))
    with pytest.raises(TypeError, match="labels must be a numpy.ndarray"):
        ops.softmax_cross_entropy(x, [0, 1, 2])
    with pytest.raises(ValueError, match=r"labels has shape \(4,\), expected \(batch,\) = \(3,\)"):
        ops.softmax_cross_entropy(x, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels has shape \(3, 1\)"):
        ops.softmax_cross_entropy(x, np.array([[0], [1], [2]]))
    with pytest.raises(TypeError, match="labels must be C-contiguous"):
        ops.softmax_cross_entropy(x, np.arange(6)[::2])
    with pytest.raises(ValueError, match=r"logits must be 2-D \(batch, classes\)"):
        ops.softmax_cross_entropy(np.zeros(4, np.float32), np.array([0]))
    with pytest.raises(ValueError, match="logits is empty"):
        ops.softmax_cross_entropy(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    with pytest.raises(TypeError, match="logits must have dtype float32"):
        ops.softmax_cross_entropy(x.astype(np.float64), np.array([0, 1, 2]))


@pytest.mark.parametrize("value, index", [(-1, 0), (4, 2), (2**40, 1), (-(2**63), 2)])
def test_cross_entropy_labels_out_of_range(value, index):
    labels = np.array([0, 1, 2])
    labels[index] = value
    with pytest.raises(ValueError, match=rf"labels\[{index}\] = {value} is out of range \[0, 4\)"):
        ops.softmax_cross_entropy(np.zeros((3, 4), np.float32), labels)


# A Python thread rewrites the labels while the main thread computes the loss on them: the binding's
# range check (GIL held) passes, then the kernel (GIL released) reads other values. The kernel must
# check each label it reads itself and report an out-of-range one as the binding's own error; it may
# never index with it (before the fix: a segfault in an OpenMP worker in every run). In a child
# process, so that a crash fails this test instead of killing pytest.
RACING_LABELS = r"""
import re, threading
import numpy as np
from fastdl import ops

B, NC = 50_000, 10  # ~1 ms a call: the writer's wake-up and its 400 kB write land inside it
x = np.random.default_rng(0).standard_normal((B, NC)).astype(np.float32)
good = np.random.default_rng(1).integers(0, NC, B)
labels = good.copy()
bad = [np.full(B, v, np.int64) for v in (2**62, -(2**62), NC, -1, 2**31, -(2**31))]
go, returned, restored = threading.Event(), threading.Event(), threading.Event()
stop = False

def writer():
    i = 0
    while True:
        go.wait(); go.clear()
        if stop:
            return
        labels[:] = bad[i % len(bad)]  # runs once the call has released the GIL, after the range check
        i += 1
        returned.wait(); returned.clear()
        labels[:] = good
        restored.set()

t = threading.Thread(target=writer)
t.start()
refused = 0
try:
    for _ in range(200):
        go.set()
        try:
            ops.softmax_cross_entropy(x, labels)
        except ValueError as e:
            assert re.fullmatch(r"softmax_cross_entropy: labels\[\d+\] = -?\d+ is out of range "
                                r"\[0, 10\) for logits of shape \(50000, 10\)", str(e)), str(e)
            refused += 1
        returned.set()
        restored.wait(); restored.clear()
finally:
    stop = True
    go.set()
    t.join()
print("refused", refused)
"""


def test_cross_entropy_labels_written_during_the_call_never_crash(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", RACING_LABELS], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"exit code {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    # the kernel saw (and refused) labels written after the range check: the race was really run
    assert int(r.stdout.split()[-1]) > 0, r.stdout


@pytest.mark.parametrize("name", list(PAIR) + ["ce"])
def test_bad_reduction_grad_out(name):
    if name == "ce":
        f, a, b = ops.softmax_cross_entropy, np.zeros((2, 3), np.float32), np.array([0, 2])
    else:
        f, a, b = PAIR[name][0], np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'avg'"):
        f(a, b, reduction="avg")
    with pytest.raises(TypeError, match="reduction must be 'mean' or 'sum'"):
        f(a, b, reduction=None)
    with pytest.raises(ValueError, match="out is given but grad=False"):
        f(a, b, grad=False, out=np.zeros_like(a))
    ro = np.zeros_like(a)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        f(a, b, out=ro)
    with pytest.raises(ValueError, match=r"out has shape \(3, 2\), expected"):
        f(a, b, out=np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        f(a, b, out=np.zeros((2, 3)))
    buf = np.zeros(12, np.float32)
    a2 = buf[:6].reshape(2, 3)
    with pytest.raises(ValueError, match="out must not share memory with"):
        f(a2, b, out=buf[2:8].reshape(2, 3))


def test_cross_entropy_out_over_labels_is_refused():
    labels = np.array([0, 1, 0, 1], np.int64)
    with pytest.raises(ValueError, match="out must not share memory with labels"):
        ops.softmax_cross_entropy(np.zeros((4, 2), np.float32), labels, out=labels.view(np.float32).reshape(4, 2))


# ---------------------------------------------------------------- threads and determinism
@pytest.fixture
def threads():
    prev = _C.get_num_threads()
    yield
    _C.set_num_threads(prev)


def _all_losses(rng):
    n = 200_003  # several grains: runs the parallel reductions
    p = (rng.standard_normal(n) * 3).astype(np.float32)
    t = rng.uniform(0, 1, n).astype(np.float32)
    x = (rng.standard_normal((8_000, 10)) * 3).astype(np.float32)
    labels = rng.integers(0, 10, 8_000)
    return [
        lambda: ops.mse_loss(p, t),
        lambda: ops.l1_loss(p, t, reduction="sum"),
        lambda: ops.bce_with_logits(p, t),
        lambda: ops.softmax_cross_entropy(x, labels),
    ]


def test_losses_same_bits_at_any_thread_count(isa, rng, threads):
    # the chunks of a parallel sum are fixed by the length alone: 1, 2 or 3 threads (or the contention
    # guard lowering the count under load) give the same bits
    for call in _all_losses(rng):
        _C.set_num_threads(1)
        l1, g1 = call()
        for nt in (2, 3):
            _C.set_num_threads(nt)
            l2, g2 = call()
            assert l2 == l1
            np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("nt", [1, 2, 3])
def test_losses_bit_identical_on_repeat(isa, rng, threads, nt):
    _C.set_num_threads(nt)
    for call in _all_losses(rng):
        l1, g1 = call()
        for _ in range(3):
            l2, g2 = call()
            assert l2 == l1  # exactly: fixed chunks, partials added in order
            np.testing.assert_array_equal(g1, g2)


# ---------------------------------------------------------------- all_finite (the input check of fastdl.nn)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 300_001])  # 300,001: several chunks, two threads
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_bad_element_anywhere(isa, rng, n, bad):
    x = (rng.standard_normal(n) * 1e30).astype(np.float32)  # large finite values must not overflow the check
    assert ops.all_finite(x) is True
    for i in sorted({0, n // 2, n - 1}):
        y = x.copy()
        y[i] = bad
        assert ops.all_finite(y) is False, i
    assert ops.all_finite(np.full((3, 4), np.finfo(np.float32).max, np.float32)) is True


def test_all_finite_refuses_other_arrays():
    with pytest.raises(TypeError, match="all_finite: x must have dtype float32"):
        ops.all_finite(np.zeros(4))
    with pytest.raises(TypeError, match="all_finite: x must be C-contiguous"):
        ops.all_finite(np.zeros((4, 4), np.float32)[:, ::2])
