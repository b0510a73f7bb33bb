"""fastdl.data: batches of (x, y) prepared in a background thread while the training step computes.

    from fastdl.data import DataLoader

    loader = DataLoader(X, y, batch_size=128, shuffle=True, seed=0)
    for epoch in range(5):
        for xb, yb in loader:          # one pass over the data per ``for``
            ...                        # xb: (batch,) + X.shape[1:], yb: (batch,) + y.shape[1:]

How a batch is made: a sampler yields the batch's row indices (an int64 array; or a ``slice``
for a contiguous range); the native kernel ``fastdl.ops.gather_rows`` copies those rows of X (and
of y) into buffers the loader owns; then ``transform(x, y)``, when given, turns them into the pair
that is yielded (augmentation goes there). X and y may have any rank and dtype (their rows are
copied as bytes); they are made C-contiguous once, nothing else is converted. A slice without a
transform is yielded as a view of X and y (no copy).

Threads: without a transform, a native thread (``_C.RowPrefetcher``) gathers up to ``prefetch``
batches ahead and never takes the GIL, so it runs while the training step computes (a Python
thread could not: it would wait for the GIL, up to the interpreter's 5 ms switch interval, every
time the step's Python code holds it); ``next()`` only takes a batch that is already there (the
sampler's Python code runs in ``next()``, a few dozen batches at a time). With a transform (Python
code), a Python thread gathers and transforms ahead instead: keep transforms in NumPy calls that
release the GIL. ``background=False`` prepares each batch inside ``next()``, no thread at all. The
gathering thread needs a CPU of its own to be free: beside as many kernel threads as CPUs it takes one
from the step's parallel regions (3-8% of an MNIST epoch on 2 CPUs), which is why ``fit`` runs the
loader with ``background=False`` unless ``fastdl.get_num_threads()`` leaves a CPU over.

**How long a batch stays valid.** The loader writes its batches into a ring of ``prefetch + 2``
buffers and never allocates one per batch. A batch handed out by ``next()`` stays valid while the
consumer works on it and on the batch after it: it may be overwritten from the second ``next()``
after it on, and when the loader starts a new pass (the next ``for``). Copy a batch
(``xb.copy()``) to keep it longer. (So ``list(loader)`` does not keep the batches.)

Determinism: the batches depend on the sampler only (for the default one: on ``seed`` and the
pass count), never on timing or on ``fastdl.set_num_threads``; the kernel is single-threaded.

Samplers: any object whose iteration yields one index array (or slice) per batch. When it has
``set_epoch(epoch)``, the loader calls it before each pass with the pass number (from 0; set it
with ``loader.set_epoch``), so a distributed sampler can shard each epoch's permutation between
processes the same way everywhere. ``len(loader)`` is ``len(sampler)``.

Shutdown: leaving the loop early (``break``, an exception) or dropping the iterator stops the
thread (a Python one is a daemon thread: it never keeps the interpreter alive); ``iterator.close()``
stops it at once, and ``with iter(loader) as it:`` does too. An error while preparing a batch (a
bad index, the sampler, the transform) is raised by the ``next()`` that would have returned that
batch, with its traceback, and ends the pass. Ctrl-C while ``next()`` waits interrupts it.
"""
from __future__ import annotations

import threading

import numpy as np

from . import _C
from ._validation import check_bool, check_callable, check_int, check_rng

__all__ = ["DataLoader", "BatchSampler"]


class BatchSampler:
    """The default sampler: batches of ``batch_size`` rows of ``range(n)``, in order or, with
    ``shuffle``, from a fresh ``rng.permutation(n)`` every pass (``rng = np.random.default_rng(seed)``).
    The last batch holds the remainder, or is dropped with ``drop_last``. ``batch_size=None``: one
    batch of all n rows (a slice: no copy)."""

    def __init__(self, n, batch_size=32, shuffle=False, drop_last=False, seed=None):
        who = "BatchSampler"
        self.n = check_int(n, who, "n", minimum=0)
        self.batch_size = check_int(batch_size, who, "batch_size", minimum=1, allow_none=True)
        self.shuffle = check_bool(shuffle, who, "shuffle")
        self.drop_last = check_bool(drop_last, who, "drop_last")
        self.rng = check_rng(seed, who)

    def __len__(self):
        if self.batch_size is None:
            return 1 if self.n else 0
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        n, bs = self.n, self.batch_size
        if bs is None or bs >= n:
            if n and (bs is None or bs == n or not self.drop_last):
                yield self.rng.permutation(n) if self.shuffle and bs is not None else slice(0, n)
            return
        stop = n - n % bs if self.drop_last else n
        if not self.shuffle:
            for a in range(0, stop, bs):
                yield slice(a, min(a + bs, n))
            return
        perm = self.rng.permutation(n)
        for a in range(0, stop, bs):
            yield perm[a:a + bs]

    def __repr__(self):
        return (f"BatchSampler(n={self.n}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last})")


_UNSET = object()
_CHUNK = 32  # batches the native iterator takes from the sampler at a time
_END = object()


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc):
        self.exc = exc


def _as_rows(a, who, name):
    arr = np.asarray(a)
    if arr.ndim < 1:
        raise ValueError(f"{who}: {name} must have a first axis of rows, got a 0-D array")
    if arr.dtype.hasobject:
        raise TypeError(f"{who}: {name} must hold numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


class _Ring:
    """The buffers of one pass: ``slots`` buffers for X rows and for y rows, grown when a batch needs
    more rows than a buffer holds (only then: a pass of equal batches allocates once)."""

    def __init__(self, slots, X, y):
        self.slots = slots
        self.x = [None] * slots
        self.y = [None] * slots
        self._last = [None] * slots  # (m, x view, y view) handed out last from each slot
        self._xrow, self._xdt = X.shape[1:], X.dtype
        self._yrow, self._ydt = (None, None) if y is None else (y.shape[1:], y.dtype)

    def _grow(self, s, m):
        self.x[s] = np.empty((m,) + self._xrow, self._xdt)
        if self._yrow is not None:
            self.y[s] = np.empty((m,) + self._yrow, self._ydt)
        self._last[s] = None

    def views(self, s, m):
        """The first m rows of slot s's buffers (grown first when they hold fewer)."""
        last = self._last[s]
        if last is not None and last[0] == m:
            return last[1], last[2]
        xb = self.x[s]
        if xb is None or len(xb) < m:
            self._grow(s, m)
            xb = self.x[s]
        yv = None if self._yrow is None else self.y[s][:m]
        xv = xb[:m]
        self._last[s] = (m, xv, yv)
        return xv, yv

    def buffers(self, least):
        """[[x buffer, y buffer] per slot] for the native thread; every slot holds >= ``least`` rows."""
        for s in range(self.slots):
            if self.x[s] is None or len(self.x[s]) < least:
                self._grow(s, least)
        if self._yrow is None:
            return [[xb] for xb in self.x]
        return [[xb, yb] for xb, yb in zip(self.x, self.y)]


def _as_index(idx):
    """A batch's indices as the kernel takes them: int64, 1-D, C-contiguous."""
    if idx.__class__ is np.ndarray and idx.dtype == np.int64 and idx.ndim == 1 and idx.flags.c_contiguous:
        return idx
    idx = np.asarray(idx)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise TypeError(f"DataLoader: the sampler must yield 1-D integer index arrays or slices, got "
                        f"{'dtype ' + str(idx.dtype) if idx.ndim == 1 else 'shape ' + str(idx.shape)}")
    return np.ascontiguousarray(idx, dtype=np.int64)


def _make_batch(state, s, idx):
    """The batch for index array (or slice) ``idx`` in ring slot ``s``: gather, then transform."""
    X, y, transform = state.X, state.y, state.transform
    if isinstance(idx, slice):
        xb = X[idx]
        yb = None if y is None else y[idx]
        if transform is not None:  # the transform may write into its input: never hand it X itself
            bx, by = state.ring.views(s, len(xb))
            np.copyto(bx, xb)
            if by is not None:
                np.copyto(by, yb)
            xb, yb = bx, by
    else:
        idx = _as_index(idx)
        xb, yb = state.ring.views(s, len(idx))
        _C.gather_rows(X, idx, xb)
        if yb is not None:
            _C.gather_rows(y, idx, yb)
    if transform is not None:
        out = transform(xb, yb)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"DataLoader: transform(x, y) must return a pair (x, y), got {type(out).__name__}")
        return out
    return xb, yb


class _State:
    """What the worker thread shares with the iterator (the thread holds no reference to the iterator
    itself, so that dropping the iterator stops the thread)."""

    def __init__(self, X, y, transform, ring, slots):
        self.X, self.y, self.transform, self.ring, self.slots = X, y, transform, ring, slots
        self.items = [None] * slots
        self.free = [threading.Lock() for _ in range(slots)]   # held by the worker while a slot's batch is live
        self.ready = [threading.Lock() for _ in range(slots)]  # released by the worker when the batch is there
        for lock in self.ready:
            lock.acquire()
        self.stop = False


def _worker(state, batches):
    slots, free, ready, items = state.slots, state.free, state.ready, state.items

    def claim(s):
        # wait until the consumer is done with slot s; False when told to stop
        while not free[s].acquire(timeout=0.05):
            if state.stop:
                return False
        return not state.stop

    b, held = 0, False
    try:
        for idx in batches:
            s = b % slots
            if not claim(s):
                return
            held = True
            items[s] = _make_batch(state, s, idx)
            held = False
            ready[s].release()
            b += 1
        item = _END
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
        item = _Failure(e)
    s = b % slots
    if not held and not claim(s):
        return
    items[s] = item
    ready[s].release()


class _Pass:
    """One pass over a DataLoader: an iterator that is also a context manager (``close()`` on exit)."""

    def __iter__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _ThreadIter(_Pass):
    """One pass over a DataLoader with a transform (a Python thread runs it), or without a thread at all
    (``background=False``)."""

    def __init__(self, loader, batches, ring, background):
        self._loader = loader
        self._ring = ring
        slots = ring.slots
        self._state = _State(loader.X, loader.y, loader.transform, ring, slots)
        self._k = 0              # index of the next batch to hand out
        self._done = False
        self._thread = None
        if background:
            self._thread = threading.Thread(target=_worker, args=(self._state, batches),
                                            name="fastdl-DataLoader", daemon=True)
            self._thread.start()
        else:
            self._batches = iter(batches)

    def __next__(self):
        if self._done:
            raise StopIteration
        st, k = self._state, self._k
        if self._thread is None:
            return self._next_here(st, k)
        n = st.slots
        if k >= 2:
            st.free[(k - 2) % n].release()  # batch k - 2 is no longer valid: its slot may be refilled
        s = k % n
        st.ready[s].acquire()
        item = st.items[s]
        st.items[s] = None
        self._k = k + 1
        if item.__class__ is tuple:
            return item
        self._finish(joined=True)
        if item is _END:
            raise StopIteration
        raise item.exc

    def _next_here(self, st, k):
        try:
            item = _make_batch(st, k % st.slots, next(self._batches))
        except BaseException:  # StopIteration included: the pass is over
            self._finish(joined=True)
            raise
        self._k = k + 1
        return item

    def _finish(self, joined):
        """The pass is over: the loader may reuse the ring once no thread can write into it."""
        self._done = True
        if joined and self._loader is not None:
            self._loader._give_back(self._ring)
        self._loader = None

    def close(self, timeout=1.0):
        """Stop the background thread (waiting up to ``timeout`` seconds for it to end)."""
        if self._done and self._loader is None:
            return
        st = self._state
        st.stop = True
        joined = True
        th = self._thread
        if th is not None and th is not threading.current_thread():
            th.join(timeout)
            joined = not th.is_alive()
        self._finish(joined)

    def __del__(self):
        try:
            st = self._state
        except AttributeError:
            return
        st.stop = True  # the thread sees it within 0.05 s once it waits for a slot; no join here


class _NativeIter(_Pass):
    """One pass over a DataLoader without a transform: a native thread gathers the batches
    (``_C.RowPrefetcher``, which never takes the GIL) and hands them out in order; the sampler runs
    here, a few dozen batches at a time, before the thread's queue runs dry."""

    def __init__(self, loader, batches, ring):
        self._loader = loader
        self._ring = ring
        self._X, self._y = loader.X, loader.y
        self._slots = ring.slots
        self._pf = _C.RowPrefetcher([self._X] if self._y is None else [self._X, self._y], ring.slots)
        self._pf.set_group(max(1, (ring.slots - 2) // 2))
        # ask for more batches while the thread still has half a chunk queued beyond the ring: it never
        # runs dry (and need not be woken by a push)
        self._pf.set_low_water(ring.slots + _CHUNK // 2)
        self._next = self._pf.next
        self._batches = batches
        self._pushed = 0
        self._done = False
        self._fill(_CHUNK)

    def _fill(self, count):
        """Pull up to ``count`` batches from the sampler and queue them: the index arrays of a run go to
        the native thread in one call (the indices are copied there); slices are queued as views."""
        X, y, pf = self._X, self._y, self._pf
        group = []
        for _ in range(count):
            try:
                idx = next(self._batches)
            except StopIteration:
                self._push(group)
                pf.set_exhausted()
                return
            if idx.__class__ is slice:
                self._push(group)
                group = []
                pf.push_ready((X[idx], None if y is None else y[idx]))
                self._pushed += 1
            else:
                group.append(_as_index(idx))
        self._push(group)

    def _push(self, group):
        if not group:
            return
        sizes = [len(g) for g in group]
        first, slots, ring = self._pushed % self._slots, self._slots, self._ring
        bufs = ring.buffers(max(sizes))
        bounds = np.zeros(len(group) + 1, np.int64)
        np.cumsum(sizes, out=bounds[1:])
        items = [ring.views((first + j) % slots, m) for j, m in enumerate(sizes)]
        self._pf.push(group[0] if len(group) == 1 else np.concatenate(group), bounds, first, bufs, items)
        self._pushed += len(group)

    def __next__(self):
        try:
            item = self._next()
            if item is None:
                item = self._refill()
        except BaseException:  # a bad index, the sampler's error, Ctrl-C while waiting: the pass is over
            self.close()
            raise
        return item

    def _refill(self):
        if self._done:
            raise StopIteration
        self._fill(_CHUNK)
        item = self._next()
        if item is None:
            self._finish(True)
            raise StopIteration
        return item

    def _finish(self, reusable):
        self._done = True
        self._next = lambda: None
        pf, self._pf = self._pf, None
        if pf is not None:
            pf.close()
        if reusable and self._loader is not None:
            self._loader._give_back(self._ring)
        self._loader = None

    def close(self, timeout=None):
        """Stop the native thread (it finishes the rows it is copying) and end the pass."""
        if not self._done:
            self._finish(True)

    def __del__(self):
        pf = getattr(self, "_pf", None)
        if pf is not None:
            pf.close()


class DataLoader:
    """Batches (x, y) of the rows of X and y, prepared in a background thread (module docstring).

    X: array (n, ...) of any rank and dtype; y: array (n,) or (n, k) (any rank) or None (then the
    batches are (x, None)). Without a sampler: ``batch_size`` rows per batch (None: all n in one),
    ``shuffle`` with a fresh permutation each pass from ``np.random.default_rng(seed)``,
    ``drop_last`` drops a last short batch. ``sampler``: instead of those four, an object whose
    iteration yields each batch's indices (module docstring). ``transform(x, y) -> (x, y)``: runs
    in the background thread on each gathered batch. ``prefetch``: batches prepared ahead (>= 1);
    the ring holds ``prefetch + 2`` buffers. ``background=False`` prepares each batch inside
    ``next()`` instead (same batches, same buffers and validity rule; for debugging).
    ``len(loader)``: batches per pass.
    """

    def __init__(self, X, y=None, batch_size=_UNSET, shuffle=False, drop_last=False, seed=None, sampler=None,
                 transform=None, *, prefetch=6, background=True):
        who = "DataLoader"
        self.X = _as_rows(X, who, "X")
        self.y = None if y is None else _as_rows(y, who, "y")
        if self.y is not None and len(self.y) != len(self.X):
            raise ValueError(f"{who}: X and y have different lengths: {len(self.X)} and {len(self.y)}")
        if sampler is None:
            sampler = BatchSampler(len(self.X), 32 if batch_size is _UNSET else batch_size, shuffle, drop_last, seed)
        else:
            if not hasattr(sampler, "__iter__"):
                raise TypeError(f"{who}: sampler must be iterable (yielding index arrays), got {type(sampler).__name__}")
            given = [name for name, v, d in (("batch_size", batch_size, _UNSET), ("shuffle", shuffle, False),
                                             ("drop_last", drop_last, False), ("seed", seed, None)) if v is not d]
            if given:
                raise ValueError(f"{who}: {', '.join(given)} cannot be given with a sampler (the sampler decides "
                                 "the batches)")
        self.sampler = sampler
        self.transform = None if transform is None else check_callable(transform, who, "transform",
                                                                         "a function transform(x, y) -> (x, y)")
        self.prefetch = check_int(prefetch, who, "prefetch", minimum=1, maximum=62)
        self.background = check_bool(background, who, "background")
        self._epoch = 0
        self._spare = None  # a ring no pass is using

    @property
    def batch_size(self):
        return getattr(self.sampler, "batch_size", None)

    def set_epoch(self, epoch):
        """The pass number the next ``iter`` gives the sampler's ``set_epoch`` (then counts on from it)."""
        self._epoch = check_int(epoch, "DataLoader.set_epoch", "epoch", minimum=0)

    def __len__(self):
        try:
            return len(self.sampler)
        except TypeError:
            raise TypeError(f"DataLoader: its sampler ({type(self.sampler).__name__}) has no len()") from None

    def __iter__(self):
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self._epoch)
        self._epoch += 1
        batches = iter(self.sampler)
        ring, self._spare = self._spare, None
        if ring is None:
            ring = _Ring(self.prefetch + 2, self.X, self.y)
        if self.background and self.transform is None:
            return _NativeIter(self, batches, ring)
        return _ThreadIter(self, batches, ring, self.background)

    def _give_back(self, ring):
        self._spare = ring

    def __repr__(self):
        return (f"DataLoader(n={len(self.X)}, x_shape={self.X.shape[1:]}, sampler={self.sampler!r}, "
                f"transform={self.transform!r}, prefetch={self.prefetch})")
