"""fastdl.data and the gather kernel: ops.gather_rows against NumPy's fancy indexing, its binding
contract, and the DataLoader (batches, samplers, the buffer-validity rule, the background thread's
errors and shutdown)."""
import gc
import threading
import time

import numpy as np
import pytest

import fastdl
from fastdl import _C, ops
from fastdl.data import BatchSampler, DataLoader


# ---------------------------------------------------------------- the kernel

@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.float64, np.uint8, np.int16])
@pytest.mark.parametrize("shape", [(11,), (11, 3), (11, 2, 5), (11, 1, 4, 3), (7, 0)])
def test_gather_rows_equals_fancy_indexing(dtype, shape):
    rng = np.random.default_rng(0)
    src = (rng.normal(size=shape) * 50).astype(dtype)
    for idx in (rng.integers(0, shape[0], size=17), np.arange(shape[0])[::-1], np.zeros(0, np.int64),
                np.full(3, shape[0] - 1)):
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        got = ops.gather_rows(src, idx)
        np.testing.assert_array_equal(got, src[idx])
        assert got.dtype == src.dtype and got.shape == (len(idx),) + shape[1:] and got.flags.c_contiguous
        out = np.full((len(idx),) + shape[1:], 7, dtype)
        assert ops.gather_rows(src, idx, out) is out
        np.testing.assert_array_equal(out, src[idx])


def test_gather_rows_structured_and_big_rows():
    rec = np.zeros(5, dtype=[("a", np.int32), ("b", np.float64)])
    rec["a"] = np.arange(5)
    idx = np.array([4, 0, 2], np.int64)
    np.testing.assert_array_equal(ops.gather_rows(rec, idx), rec[idx])
    big = np.random.default_rng(1).normal(size=(300, 784)).astype(np.float32)
    idx = np.random.default_rng(2).permutation(300)[:128]
    np.testing.assert_array_equal(ops.gather_rows(big, idx), big[idx])


def test_gather_rows_refuses_bad_indices_naming_the_first():
    src = np.arange(12, dtype=np.float32).reshape(6, 2)
    out = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"gather_rows: idx\[1\] = 6 is out of range for src with 6 rows"):
        ops.gather_rows(src, np.array([0, 6, 9], np.int64), out)
    np.testing.assert_array_equal(out[0], src[0])          # rows before the bad one were written
    with pytest.raises(ValueError, match=r"idx\[2\] = -1 .*negative indices are not wrapped"):
        ops.gather_rows(src, np.array([0, 1, -1], np.int64))
    with pytest.raises(ValueError, match=r"idx\[0\] = 0 is out of range for src with 0 rows"):
        ops.gather_rows(np.zeros((0, 2), np.float32), np.array([0], np.int64))


def test_gather_rows_binding_contract():
    src = np.arange(24, dtype=np.float32).reshape(6, 4)
    idx = np.array([1, 2], np.int64)
    cases = [
        (TypeError, "src must be a numpy.ndarray", lambda: ops.gather_rows(src.tolist(), idx)),
        (ValueError, "src must have at least 1 dimension", lambda: ops.gather_rows(np.array(1.0, np.float32), idx)),
        (TypeError, "src has dtype object", lambda: ops.gather_rows(np.array([1, None], object), idx)),
        (TypeError, "src must be C-contiguous", lambda: ops.gather_rows(np.asfortranarray(src), idx)),
        (TypeError, "src must be C-contiguous", lambda: ops.gather_rows(src[:, ::2], idx)),
        (TypeError, "idx must be a numpy.ndarray", lambda: ops.gather_rows(src, [1, 2])),
        (TypeError, "idx must have dtype int64", lambda: ops.gather_rows(src, idx.astype(np.int32))),
        (TypeError, "idx must have dtype int64", lambda: ops.gather_rows(src, idx.astype(np.float64))),
        (ValueError, "idx must be 1-D", lambda: ops.gather_rows(src, idx.reshape(1, 2))),
        (TypeError, "idx must be C-contiguous", lambda: ops.gather_rows(src, np.arange(6, dtype=np.int64)[::2])),
        (TypeError, "out must have the dtype of src", lambda: ops.gather_rows(src, idx, np.zeros((2, 4)))),
        (ValueError, r"out has shape \(2, 3\), expected \(len\(idx\),\) \+ src.shape\[1:\] = \(2, 4\)",
         lambda: ops.gather_rows(src, idx, np.zeros((2, 3), np.float32))),
        (TypeError, "out must be C-contiguous", lambda: ops.gather_rows(src, idx, np.zeros((4, 2), np.float32).T)),
        (TypeError, "out must be a numpy.ndarray", lambda: ops.gather_rows(src, idx, [[0] * 4] * 2)),
        (ValueError, "out must not share memory with src", lambda: ops.gather_rows(src, idx, src[4:])),
    ]
    ro = np.zeros((2, 4), np.float32)
    ro.flags.writeable = False
    cases.append((ValueError, "out is read-only", lambda: ops.gather_rows(src, idx, ro)))
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


def test_gather_rows_is_memory_safe_while_idx_changes():
    # another thread writes out-of-range values into idx during the copies: every call either copies
    # valid rows or raises ValueError, never reads outside src
    src = np.arange(1000 * 16, dtype=np.float32).reshape(1000, 16)
    idx = np.arange(1000, dtype=np.int64)
    out = np.empty((1000, 16), np.float32)
    stop = False

    def scribble():
        r = np.random.default_rng(0)
        while not stop:
            idx[r.integers(0, 1000)] = r.choice([-(1 << 62), 5000, 3])

    th = threading.Thread(target=scribble)
    th.start()
    try:
        for _ in range(300):
            try:
                ops.gather_rows(src, idx, out)
            except ValueError as e:
                assert "out of range" in str(e)
    finally:
        stop = True
        th.join()


# ---------------------------------------------------------------- DataLoader: batches

def data(n=103, shape=(3,), seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n,) + shape).astype(np.float32)
    X.reshape(n, -1)[:, 0] = np.arange(n)          # the row index in the first feature
    y = np.arange(n, dtype=np.int64) % 10
    return X, y


def expected_batches(n, batch_size, shuffle, drop_last, seed, epochs):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        b = n if batch_size is None else batch_size
        order = rng.permutation(n) if shuffle and batch_size is not None else np.arange(n)
        stop = n - n % b if drop_last else n
        out.append([order[a:a + b] for a in range(0, stop, b)])
    return out


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("batch_size,shuffle,drop_last", [(16, True, False), (16, False, False), (16, True, True),
                                                          (None, True, False), (200, True, False), (1, True, False),
                                                          (103, False, True)])
def test_batches_follow_the_seeded_permutation(batch_size, shuffle, drop_last, background):
    X, y = data()
    loader = DataLoader(X, y, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=5,
                        background=background)
    for want in expected_batches(len(X), batch_size, shuffle, drop_last, 5, epochs=3):
        got = [(xb.copy(), yb.copy()) for xb, yb in loader]
        assert len(got) == len(want) == len(loader)
        for (xb, yb), idx in zip(got, want):
            np.testing.assert_array_equal(xb, X[idx])
            np.testing.assert_array_equal(yb, y[idx])


@pytest.mark.parametrize("shape", [(), (4,), (1, 5, 5), (2, 3, 2, 2)])
def test_any_rank_and_dtype_and_no_labels(shape):
    X = np.arange(50 * int(np.prod(shape, dtype=int)), dtype=np.float64).reshape((50,) + shape)
    y2 = np.arange(100, dtype=np.float32).reshape(50, 2)
    batches = [(xb.copy(), yb.copy()) for xb, yb in DataLoader(X, y2, batch_size=8, shuffle=True, seed=1)]
    order = np.random.default_rng(1).permutation(50)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), X[order])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y2[order])
    assert batches[0][0].dtype == np.float64 and batches[0][0].shape == (8,) + shape
    for xb, yb in DataLoader(X, batch_size=8):
        assert yb is None and xb.shape[1:] == shape


def test_same_batches_whatever_the_thread_count():
    X, y = data(500, (7,))
    runs = []
    for threads in (1, 2):
        fastdl.set_num_threads(threads)
        loader = DataLoader(X, y, batch_size=32, shuffle=True, seed=9)
        runs.append([yb.copy() for _ in range(2) for _, yb in loader])
    fastdl.set_num_threads(fastdl._C.default_num_threads())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_a_sampler_gets_set_epoch_and_gives_len():
    class EveryOther:
        """A sharding-like sampler: this 'process' takes every other example of each epoch's order."""

        def __init__(self, n):
            self.n, self.epochs = n, []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __len__(self):
            return 3

        def __iter__(self):
            order = np.random.default_rng(self.epochs[-1]).permutation(self.n)[::2]
            for part in np.array_split(order, 3):
                yield part.astype(np.int32)                         # any integer dtype is accepted

    X, y = data(40)
    sampler = EveryOther(40)
    loader = DataLoader(X, y, sampler=sampler)
    assert len(loader) == 3
    first = [yb.copy() for _, yb in loader]
    loader.set_epoch(7)
    [None for _ in loader]
    [None for _ in loader]
    assert sampler.epochs == [0, 7, 8]
    order = np.random.default_rng(0).permutation(40)[::2]
    np.testing.assert_array_equal(np.concatenate(first), y[order])
    with pytest.raises(ValueError, match="cannot be given with a sampler"):
        DataLoader(X, y, batch_size=4, sampler=sampler)
    with pytest.raises(TypeError, match="has no len"):
        len(DataLoader(X, y, sampler=iter([np.arange(3)])))


def test_slices_are_views_and_index_batches_are_copies():
    X, y = data(30)
    full = next(iter(DataLoader(X, y, batch_size=None)))
    assert np.shares_memory(full[0], X)
    xb, _ = next(iter(DataLoader(X, y, batch_size=8, shuffle=True, seed=0)))
    assert not np.shares_memory(xb, X)


# ---------------------------------------------------------------- the buffer-validity rule

@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("transform", [None, "identity"])
def test_a_batch_stays_valid_until_the_second_next_after_it(background, transform):
    X, y = data(400, (5,))
    tf = (lambda a, b: (a, b)) if transform else None
    loader = DataLoader(X, y, batch_size=10, shuffle=True, seed=2, transform=tf, background=background, prefetch=2)
    order = np.random.default_rng(2).permutation(400)
    it = iter(loader)
    prev = None
    bases = set()
    for k, (xb, yb) in enumerate(it):
        time.sleep(0.0005 if k % 7 == 0 else 0)                     # let the thread run ahead now and then
        np.testing.assert_array_equal(xb, X[order[10 * k:10 * k + 10]])
        if prev is not None:                                        # the previous batch is still intact
            np.testing.assert_array_equal(prev[0], X[order[10 * k - 10:10 * k]])
            np.testing.assert_array_equal(prev[1], y[order[10 * k - 10:10 * k]])
        prev = (xb, yb)
        bases.add(id(xb.base if xb.base is not None else xb))
    assert len(bases) <= loader.prefetch + 2                        # a ring of buffers, none per batch


def test_buffers_are_reused_across_passes():
    X, y = data(64)
    loader = DataLoader(X, y, batch_size=8, shuffle=True, seed=0)
    seen = []
    for _ in range(3):
        for xb, _ in loader:
            seen.append(xb.base if xb.base is not None else xb)
    assert len({id(b) for b in seen}) <= loader.prefetch + 2


# ---------------------------------------------------------------- errors and shutdown

def test_transform_runs_on_each_batch_and_its_errors_reach_the_consumer():
    X, y = data(50)
    calls = []

    def tf(xb, yb):
        calls.append(threading.current_thread().name)
        return xb * 2, yb + 100

    batches = [(xb.copy(), yb.copy()) for xb, yb in DataLoader(X, y, batch_size=10, transform=tf)]
    np.testing.assert_array_equal(batches[1][0], X[10:20] * 2)
    np.testing.assert_array_equal(batches[1][1], y[10:20] + 100)
    assert calls == ["fastdl-DataLoader"] * 5                       # in the background thread

    def boom(xb, yb):
        if xb[0, 0] >= 20:
            raise RuntimeError("augmentation failed")
        return xb, yb

    it = iter(DataLoader(X, y, batch_size=10, transform=boom))
    next(it), next(it)
    with pytest.raises(RuntimeError, match="augmentation failed") as e:
        next(it)
    assert any(f.name == "boom" for f in __import__("traceback").extract_tb(e.value.__traceback__))
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(TypeError, match="must return a pair"):
        list(DataLoader(X, y, batch_size=10, transform=lambda a, b: a))


@pytest.mark.parametrize("transform", [None, lambda a, b: (a, b)])
@pytest.mark.parametrize("background", [True, False])
def test_sampler_errors_reach_the_consumer(transform, background):
    X, y = data(20)
    bad = DataLoader(X, y, sampler=[np.array([0, 1]), np.array([3, 20])], transform=transform, background=background)
    it = iter(bad)
    next(it)
    with pytest.raises(ValueError, match=r"idx\[1\] = 20 is out of range for src with 20 rows"):
        next(it)
    with pytest.raises(TypeError, match="1-D integer index arrays"):
        list(DataLoader(X, y, sampler=[np.array([0.5, 1.0])], transform=transform, background=background))

    def failing():
        yield np.array([0, 1])
        raise KeyError("sampler broke")

    with pytest.raises(KeyError, match="sampler broke"):
        list(DataLoader(X, y, sampler=_Iterable(failing), transform=transform, background=background))


class _Iterable:
    def __init__(self, gen):
        self.gen = gen

    def __iter__(self):
        return self.gen()


def _loader_threads():
    return [t for t in threading.enumerate() if t.name == "fastdl-DataLoader"]


def _wait_no_loader_threads(timeout=3.0):
    end = time.monotonic() + timeout
    while _loader_threads() and time.monotonic() < end:
        time.sleep(0.01)
    return not _loader_threads()


@pytest.mark.parametrize("transform", [None, lambda a, b: (a, b)])
def test_break_close_and_garbage_collection_stop_the_thread(transform):
    X, y = data(2000, (8,))
    loader = DataLoader(X, y, batch_size=4, shuffle=True, seed=0, transform=transform)
    for k, _ in enumerate(loader):
        if k == 3:
            break
    gc.collect()
    assert _wait_no_loader_threads()
    it = iter(loader)
    next(it)
    it.close()
    assert _wait_no_loader_threads()
    with pytest.raises(StopIteration):
        next(it)
    with iter(loader) as it2:
        next(it2)
    assert _wait_no_loader_threads()
    it3 = iter(loader)
    next(it3)
    del it3
    gc.collect()
    assert _wait_no_loader_threads()
    # and the loader still works afterwards
    assert sum(len(xb) for xb, _ in loader) == 2000


def test_native_prefetcher_contract():
    X = np.arange(30, dtype=np.float32).reshape(10, 3)
    with pytest.raises(ValueError, match="slots must be in"):
        _C.RowPrefetcher([X], 0)
    with pytest.raises(TypeError, match="sources\\[0\\] must be a numpy.ndarray"):
        _C.RowPrefetcher([[1, 2]], 2)
    with pytest.raises(ValueError, match="same number of rows"):
        _C.RowPrefetcher([X, np.zeros(9)], 2)
    pf = _C.RowPrefetcher([X], 2)
    bufs = [[np.zeros((4, 3), np.float32)], [np.zeros((4, 3), np.float32)]]
    with pytest.raises(ValueError, match="bounds must run from 0 to len"):
        pf.push(np.arange(3, dtype=np.int64), np.array([0, 2], np.int64), 0, bufs, ["a"])
    with pytest.raises(ValueError, match="more than its slot's buffers hold"):
        pf.push(np.arange(5, dtype=np.int64), np.array([0, 5], np.int64), 0, bufs, ["a"])
    with pytest.raises(TypeError, match="must have its source's dtype"):
        pf.push(np.arange(3, dtype=np.int64), np.array([0, 3], np.int64), 0, [[np.zeros((4, 3))]] * 2, ["a"])
    with pytest.raises(TypeError, match="items must be a list of one object per job"):
        pf.push(np.arange(3, dtype=np.int64), np.array([0, 3], np.int64), 0, bufs, [])
    with pytest.raises(ValueError, match="no job is pending"):
        pf.take(0)
    pf.push(np.array([1, 2, 9, 0], np.int64), np.array([0, 2, 4], np.int64), 0, bufs, ["first", "second"])
    pf.push_ready("view")
    pf.set_exhausted()
    assert [pf.next(), pf.next(), pf.next(), pf.next()] == ["first", "second", "view", None]
    np.testing.assert_array_equal(bufs[0][0][:2], X[[1, 2]])
    np.testing.assert_array_equal(bufs[1][0][:2], X[[9, 0]])
    pf.close()
    assert pf.next() is None
    with pytest.raises(ValueError, match="closed"):
        pf.take(0)


def test_constructor_checks():
    X, y = data(10)
    with pytest.raises(ValueError, match="different lengths: 10 and 9"):
        DataLoader(X, y[:9])
    with pytest.raises(TypeError, match="shuffle must be True or False"):
        DataLoader(X, y, shuffle="yes")
    with pytest.raises(TypeError, match="batch_size must be None or an int"):
        DataLoader(X, y, batch_size=2.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        DataLoader(X, y, batch_size=0)
    with pytest.raises(ValueError, match="prefetch must be >= 1"):
        DataLoader(X, y, prefetch=0)
    with pytest.raises(TypeError, match="transform must be"):
        DataLoader(X, y, transform=3)
    with pytest.raises(TypeError, match="must hold numbers"):
        DataLoader(np.array([None] * 3), None)
    assert len(BatchSampler(10, 3)) == 4 and len(BatchSampler(10, 3, drop_last=True)) == 3
    assert len(BatchSampler(10, None)) == 1


def _ctrl_c_after(seconds):
    import os
    import signal
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_ctrl_c_interrupts_a_waiting_next():
    import signal
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT has a custom handler in this process")
    # native: a job waiting for a slot the consumer never gives back; take() must still hear Ctrl-C
    X = np.zeros((4, 2), np.float32)
    pf = _C.RowPrefetcher([X], 1)
    bufs = [[np.zeros((2, 2), np.float32)]]
    pf.push(np.array([0, 1], np.int64), np.array([0, 2], np.int64), 0, bufs, ["a"])
    pf.take(0)
    pf.push(np.array([2, 3], np.int64), np.array([0, 2], np.int64), 0, bufs, ["b"])
    t0 = time.monotonic()
    _ctrl_c_after(0.2)
    with pytest.raises(KeyboardInterrupt):
        pf.take(0)                                                    # slot 0 was never released
    assert time.monotonic() - t0 < 2.0
    pf.close()
    # a Python thread stuck in a slow transform
    X, y = data(20)
    it = iter(DataLoader(X, y, batch_size=5, transform=lambda a, b: (time.sleep(3), (a, b))[1]))
    t0 = time.monotonic()
    _ctrl_c_after(0.2)
    with pytest.raises(KeyboardInterrupt):
        next(it)
    assert time.monotonic() - t0 < 2.0
    it.close(timeout=0.1)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(n="10"), TypeError, r"BatchSampler: n must be an int, got str"),
    (dict(n=-1), ValueError, r"BatchSampler: n must be >= 0, got -1"),
    (dict(batch_size=0), ValueError, r"BatchSampler: batch_size must be >= 1, got 0"),
    (dict(batch_size=2.5), TypeError, r"BatchSampler: batch_size must be None or an int, got float"),
    (dict(shuffle="yes"), TypeError, r"BatchSampler: shuffle must be True or False, got str"),
    (dict(drop_last=1), TypeError, r"BatchSampler: drop_last must be True or False, got int"),
    (dict(seed=-1), ValueError, r"BatchSampler: seed must be None, an int >= 0"),
    (dict(seed=float("nan")), TypeError, r"BatchSampler: seed must be None, an int >= 0"),
])
def test_batch_sampler_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        BatchSampler(**dict(dict(n=10, batch_size=3), **kw))
