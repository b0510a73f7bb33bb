"""fastdl.datasets: MNIST from IDX files, and the small synthetic sets the course uses.

MNIST::

    (X_train, y_train), (X_test, y_test) = fastdl.datasets.load_mnist()

gives float32 images scaled to [0, 1], shape (N, 784), C-contiguous, and int64 labels 0-9.
``load_mnist(root)`` reads the four standard IDX files (gzipped or not) from ``root``. With no
root it looks in ``$FASTDL_DATA`` (and ``$FASTDL_DATA/mnist``), then in the user cache
(``~/.cache/fastdl/mnist``, or ``$XDG_CACHE_HOME/fastdl/mnist``), then in ``../shared/data/mnist``
from the working directory (a data directory beside a checkout), and otherwise downloads the
four ``.gz`` files into that cache (``$FASTDL_MNIST_URL`` or ``url=`` picks the mirror; a failed
download leaves no empty cache directory behind). Every file is checked: IDX magic number,
dimensions, size against its header (before the data is read: a gzip file is decompressed no
further than its header's size), md5 against the published checksum; anything else is a
ValueError naming the file.

Synthetic sets (X float32; y int64 class labels, or float32 of shape (n, 1) for regression),
each drawn from an explicit ``random_state`` (None, an int seed or a ``np.random.Generator``;
never the global ``np.random``):

- ``make_xor(n=None, noise=0.0, random_state=None)``: the four XOR points, or n noisy copies;
- ``make_spirals(n_samples=200, noise=0.0, n_turns=1.5, random_state=None)``: two interleaved spirals;
- ``make_moons(n_samples=200, noise=0.0, random_state=None)``: two interleaving half circles;
- ``make_regression_1d(n_samples=200, fn="sin", noise=0.0, x_range=(-pi, pi), random_state=None)``:
  a noisy 1-D function, for universal approximation;
- ``split(X, y, test_fraction=0.2, random_state=None)``: a shuffled train/test split.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from ._validation import check_bool, check_int, check_real, check_rng

__all__ = [
    "load_mnist", "download_mnist", "find_mnist", "read_idx", "mnist_cache_dir", "MNISTNotFoundError",
    "MNIST_FILES", "MNIST_MIRRORS",
    "make_xor", "make_spirals", "make_moons", "make_regression_1d", "REGRESSION_FUNCTIONS", "split",
]

# ---------------------------------------------------------------------------------- MNIST

# name -> (IDX magic, expected shape, md5 of the .gz file, md5 of the uncompressed file)
MNIST_FILES = {
    "train-images-idx3-ubyte": (2051, (60000, 28, 28),
                                "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (2049, (60000,),
                                "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (2051, (10000, 28, 28),
                               "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (2049, (10000,),
                               "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}

# Base URLs tried in order; each serves the four files as <base><name>.gz.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


class MNISTNotFoundError(FileNotFoundError):
    """The MNIST files are neither on disk nor downloadable; the message says where to put them.
    ``.searched``: the directories looked in; ``.reason``: why the download failed (or None)."""

    def __init__(self, message, *, searched=(), reason=None):
        super().__init__(message)
        self.searched = list(searched)
        self.reason = reason


# IDX type byte -> big-endian NumPy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# Deflate never expands its input more than this; a gzip file whose IDX header declares more data
# than its compressed size could hold is refused before anything is decompressed.
_GZIP_MAX_RATIO = 1032


def _read_exact(stream, n: int, path, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ValueError(f"{path}: truncated IDX {what} ({len(data)} of {n} bytes)")
    return data


def _idx_header(head: bytes, path, magic=None):
    """(dtype, ndim) from the first 4 bytes; ValueError naming `path`."""
    got = int.from_bytes(head[:4], "big")
    if magic is not None and got != magic:
        raise ValueError(f"{path}: bad IDX magic number {got}, expected {magic}")
    if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or head[3] == 0:
        raise ValueError(f"{path}: not an IDX file (magic number {got})")
    return np.dtype(_IDX_DTYPES[head[2]]), head[3]


def _read_idx_bytes(path: Path, magic=None, shape=None, name=None) -> bytearray:
    """The IDX file's bytes, gunzipped when it is gzip (by its magic bytes, not its name).

    The header is read first and checked (magic, and `shape` when given) before the data; the data
    is read no further than the header's size: a raw file's size must match it before it is read,
    and a gzip stream is decompressed in bounded steps up to that size, so a file of a few bytes
    declaring gigabytes, or a gzip bomb, fails with a ValueError naming the file without using
    the memory it claims.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise FileNotFoundError(f"cannot read {path}: {e}") from e
    with f:
        size = os.fstat(f.fileno()).st_size
        gz = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        if not gz and path.name.endswith(".gz"):
            raise ValueError(f"{path}: not a gzip file (it is named .gz)")
        try:
            stream = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
            if not gz and size < 4:
                raise ValueError(f"{path}: truncated IDX file ({size} bytes, no header)")
            head = _read_exact(stream, 4, path, "header")
            dtype, ndim = _idx_header(head, path, magic)
            dims = _read_exact(stream, 4 * ndim, path, "header")
            got = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
            if shape is not None and got != shape:
                raise ValueError(f"{path}: IDX dimensions {got}, expected {shape}" + (f" for {name}" if name else ""))
            header = 4 + 4 * ndim
            expected = header + math.prod(got) * dtype.itemsize
            if gz and expected > _GZIP_MAX_RATIO * size + 1024:
                raise ValueError(f"{path}: the header {got} of {dtype.itemsize}-byte items declares {expected} "
                                 f"bytes, more than {size} bytes of gzip data can hold")
            if not gz and size != expected:
                what = "truncated" if size < expected else "has trailing bytes"
                raise ValueError(f"{path}: {what}: {size} bytes, but the header {got} "
                                 f"of {dtype.itemsize}-byte items needs {expected}")
            # the data, in bounded chunks into memory allocated once; one byte more tells a longer stream
            data = bytearray(expected)
            data[:header] = head + dims
            n = header
            while n < expected:
                chunk = stream.read(min(expected - n, 1 << 20))
                if not chunk:
                    break
                data[n:n + len(chunk)] = chunk
                n += len(chunk)
            more = n == expected and stream.read(1) != b""
        except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt stream
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from e
    unz = " uncompressed" if gz else ""
    if more:
        raise ValueError(f"{path}: has trailing bytes: more than the {expected} bytes{unz} that the header {got} "
                         f"of {dtype.itemsize}-byte items needs")
    if n != expected:
        raise ValueError(f"{path}: truncated: {n} bytes{unz}, but the header {got} of {dtype.itemsize}-byte items "
                         f"needs {expected}")
    return data


def _parse_idx(data: bytes, path, magic=None) -> np.ndarray:
    """Parse IDX bytes into a read-only view (big-endian dtype); ValueError naming `path`."""
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    dtype, ndim = _idx_header(data, path, magic)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, expected {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}: {len(data)} bytes, but the header {shape} "
                         f"of {dtype.itemsize}-byte items needs {expected}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    arr.flags.writeable = False
    return arr


def read_idx(path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a NumPy array of the header's shape.

    Checks the magic number, the dimensions and that the size matches the header, before reading
    the data (a gzip file is decompressed no further than its header's size); ValueError naming the
    file otherwise. Multi-byte types come back in native byte order; single bytes as a read-only
    view of the file's data.
    """
    path = Path(path)
    arr = _parse_idx(_read_idx_bytes(path), path)
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _find_file(directory: Path, name: str):
    """The raw or .gz variant of `name` in `directory`, or None."""
    for candidate in (directory / name, directory / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _load_mnist_file(path: Path, name: str) -> np.ndarray:
    magic, shape, _, raw_md5 = MNIST_FILES[name]
    data = _read_idx_bytes(path, magic, shape, name)  # magic and dimensions checked before the data is read
    arr = _parse_idx(data, path, magic)
    digest = _md5(data)
    if digest != raw_md5:
        raise ValueError(f"{path}: md5 of the uncompressed data is {digest}, expected {raw_md5}: "
                         "the file is corrupt or not the original MNIST file")
    return arr


def _load_dir(directory: Path):
    found = {name: _find_file(directory, name) for name in MNIST_FILES}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(f"MNIST files missing in {directory}: "
                                + ", ".join(n + "[.gz]" for n in missing))
    # labels first: they are small, so a bad file among them fails fast
    order = sorted(found, key=lambda name: "images" in name)
    arrays = {name: _load_mnist_file(found[name], name) for name in order}

    def images(name):
        a = arrays[name]
        x = a.reshape(a.shape[0], -1).astype(np.float32)  # a fresh C-contiguous copy
        np.divide(x, np.float32(255.0), out=x)
        return x

    def labels(name):  # 0-9: the md5 check has vouched for the content
        return arrays[name].astype(np.int64)

    x_train, y_train = images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte")
    x_test, y_test = images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte")
    return (x_train, y_train), (x_test, y_test)


def mnist_cache_dir() -> Path:
    """Where downloaded MNIST files live: $XDG_CACHE_HOME/fastdl/mnist or ~/.cache/fastdl/mnist."""
    base = os.environ.get("XDG_CACHE_HOME")
    base = Path(base) if base else Path.home() / ".cache"
    return base / "fastdl" / "mnist"


def _search_dirs():
    """Where load_mnist() (and the command line, and `fastdl info`) look, in order."""
    dirs = []
    env = os.environ.get("FASTDL_DATA")
    if env:
        dirs += [Path(env), Path(env) / "mnist"]
    dirs.append(mnist_cache_dir())
    try:  # a shared data directory beside the checkout, this project's layout
        dirs.append(Path.cwd().parent / "shared" / "data" / "mnist")
    except OSError:  # the working directory was deleted
        pass
    return dirs


def _has_all(directory: Path) -> bool:
    return all(_find_file(directory, name) is not None for name in MNIST_FILES)


def find_mnist():
    """The directory load_mnist() would read without downloading ($FASTDL_DATA[/mnist], the cache,
    ../shared/data/mnist from the working directory), or None."""
    return next((d for d in _search_dirs() if _has_all(d)), None)


def _mirrors(url):
    if url is None:
        env = os.environ.get("FASTDL_MNIST_URL", "").replace(",", " ").split()
        url = env or MNIST_MIRRORS
    if isinstance(url, (str, os.PathLike)):
        url = [url]
    bases = [str(u) for u in url]
    if not bases:
        raise ValueError("download_mnist: url is an empty list")
    return [b if b.endswith("/") else b + "/" for b in bases]


def _where_message(cache: Path) -> str:
    env = os.environ.get("FASTDL_DATA")
    names = ", ".join(n + ".gz" for n in MNIST_FILES)
    places = f"{cache}" + (f" or {Path(env) / 'mnist'}" if env else " (or a directory named by $FASTDL_DATA)")
    return (f"put the four MNIST files ({names}; gzipped or not) in {places}, "
            f"or pass that directory as load_mnist(root)")


def _fetch(url: str, dest: Path, gz_md5: str, timeout: float) -> None:
    """Download `url` to `dest` through a temp file in the same directory; md5 checked before rename."""
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != gz_md5:
            raise ValueError(f"{url}: md5 {h.hexdigest()}, expected {gz_md5} (corrupt download, discarded)")
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def download_mnist(dest=None, *, url=None, timeout: float = 30.0) -> Path:
    """Download the four MNIST .gz files into `dest` (default: the cache dir) and return it.

    Files already present (raw or .gz) are kept. Each file is written to a temp file, its md5
    checked against the published one, then renamed into place, so a failed or corrupt download
    leaves nothing behind (not even the directories it created, when they stay empty). `url`: a
    base URL or a list tried in order (default: $FASTDL_MNIST_URL, whitespace/comma separated,
    else MNIST_MIRRORS). Raises ValueError when a file arrives corrupt
    from every mirror, MNISTNotFoundError when no mirror can be reached.
    """
    timeout = check_real(timeout, "download_mnist", "timeout", low=0.0, low_open=True)
    dest = Path(dest) if dest is not None else mnist_cache_dir()
    bases = _mirrors(url)
    created = [d for d in (dest, *dest.parents) if not d.exists()]  # removed again if nothing arrives
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _download_into(dest, bases, timeout)
    except BaseException:
        for d in created:  # deepest first; rmdir leaves any directory that holds something
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return dest


def _download_into(dest: Path, bases, timeout: float) -> None:
    for name, (_, _, gz_md5, _) in MNIST_FILES.items():
        if _find_file(dest, name) is not None:
            continue
        failures, corrupt = [], False
        for base in bases:
            try:
                _fetch(base + name + ".gz", dest / (name + ".gz"), gz_md5, timeout)
                break
            except ValueError as e:
                failures.append(str(e))
                corrupt = True
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # 404, refused, timeout, DNS, cut off
                failures.append(f"{base}{name}.gz: {getattr(e, 'reason', e)}")
        else:
            detail = "; ".join(failures)
            if corrupt:
                raise ValueError(f"could not download {name}.gz with a correct checksum: {detail}")
            raise MNISTNotFoundError(f"could not download {name}.gz ({detail}); offline? "
                                     + _where_message(dest), reason=f"could not download {name}.gz ({detail})")


def load_mnist(root=None, *, download: bool = True, url=None):
    """MNIST as ``(X_train, y_train), (X_test, y_test)``.

    X: float32 (N, 784) in [0, 1], C-contiguous; y: int64 (N,) in 0-9; N = 60000 and 10000.

    root: a directory holding train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each raw or ``.gz``. None: search
    $FASTDL_DATA, $FASTDL_DATA/mnist, the cache dir (:func:`mnist_cache_dir`) and
    ../shared/data/mnist from the working directory (:func:`find_mnist`); when they
    are not there and ``download`` is true, fetch them into the cache (:func:`download_mnist`,
    ``url`` picks the mirror). Each file is checked (magic number, dimensions, size, md5):
    ValueError naming the file on any mismatch. MNISTNotFoundError (a FileNotFoundError) when
    the files cannot be found or downloaded; its message says where to put them.
    """
    download = check_bool(download, "load_mnist", "download")
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"load_mnist: {root} is not a directory")
        return _load_dir(root)
    found = find_mnist()
    if found is not None:
        return _load_dir(found)
    cache = mnist_cache_dir()
    searched = _search_dirs()
    if not download:
        raise MNISTNotFoundError(f"MNIST not found (searched {', '.join(map(str, searched))}) and download=False; "
                                 + _where_message(cache), searched=searched)
    try:
        return _load_dir(download_mnist(cache, url=url))
    except MNISTNotFoundError as e:
        e.searched = searched
        raise


# ------------------------------------------------------------------------- synthetic sets


def _noise(noise, who):
    return check_real(noise, who, "noise", low=0.0)


def make_xor(n=None, noise: float = 0.0, random_state=None):
    """The XOR problem.

    n=None: the four points (0,0), (0,1), (1,0), (1,1) with labels 0, 1, 1, 0, in that order
    (plus Gaussian noise of std `noise` if it is > 0). n an int: n points, each a corner drawn
    uniformly at random, plus Gaussian noise of std `noise`, labelled by its corner.
    Returns X float32 (n, 2) and y int64 (n,).
    """
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    labels = np.array([0, 1, 1, 0], dtype=np.int64)
    noise = _noise(noise, "make_xor")
    n = check_int(n, "make_xor", "n", minimum=1, allow_none=True)
    rng = check_rng(random_state, "make_xor", "random_state")
    idx = np.arange(4) if n is None else rng.integers(0, 4, size=n)
    X = corners[idx]
    if noise > 0:
        X = X + noise * rng.standard_normal(X.shape)
    return X.astype(np.float32), labels[idx]


def make_spirals(n_samples: int = 200, noise: float = 0.0, n_turns: float = 1.5, random_state=None):
    """Two interleaved spirals (class 0 and its point reflection, class 1) in about [-1, 1]^2.

    A point of class 0 at angle t in (0, 2 pi n_turns] sits at radius t / (2 pi n_turns), i.e.
    (r cos t, r sin t); class 1 is the same curve rotated by pi. Angles are drawn with density
    growing with the radius (t = T sqrt(u)), so points are about evenly spaced along the arms.
    Class 0 gets ceil(n_samples / 2) points. Gaussian noise of std `noise` is added.
    Returns X float32 (n_samples, 2) and y int64 (n_samples,), rows in random order.
    """
    n_samples = check_int(n_samples, "make_spirals", "n_samples", minimum=2)
    noise = _noise(noise, "make_spirals")
    n_turns = check_real(n_turns, "make_spirals", "n_turns", low=0.0, low_open=True)
    rng = check_rng(random_state, "make_spirals", "random_state")
    y = np.zeros(n_samples, dtype=np.int64)
    y[(n_samples + 1) // 2:] = 1
    t_max = 2 * np.pi * n_turns
    t = t_max * np.sqrt(rng.uniform(0.02, 1.0, n_samples))  # skip the crowded centre
    r = t / t_max
    angle = t + np.pi * y
    order = rng.permutation(n_samples)
    X = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)[order]
    if noise > 0:  # drawn last: the same seed gives the same points with and without noise
        X += noise * rng.standard_normal(X.shape)
    return X.astype(np.float32), y[order]


def make_moons(n_samples: int = 200, noise: float = 0.0, random_state=None):
    """Two interleaving half circles (as scikit-learn's make_moons).

    Class 0: (cos s, sin s) for s evenly spaced in [0, pi]; class 1: (1 - cos s, 0.5 - sin s).
    Class 0 gets ceil(n_samples / 2) points. Gaussian noise of std `noise` is added.
    Returns X float32 (n_samples, 2) and y int64 (n_samples,), rows in random order.
    """
    n_samples = check_int(n_samples, "make_moons", "n_samples", minimum=2)
    noise = _noise(noise, "make_moons")
    rng = check_rng(random_state, "make_moons", "random_state")
    n0 = (n_samples + 1) // 2
    n1 = n_samples - n0
    s0, s1 = np.linspace(0, np.pi, n0), np.linspace(0, np.pi, n1)
    X = np.concatenate([np.stack([np.cos(s0), np.sin(s0)], 1),
                        np.stack([1 - np.cos(s1), 0.5 - np.sin(s1)], 1)])
    y = np.concatenate([np.zeros(n0, np.int64), np.ones(n1, np.int64)])
    order = rng.permutation(n_samples)
    X = X[order]
    if noise > 0:  # drawn last: the same seed gives the same points with and without noise
        X += noise * rng.standard_normal(X.shape)
    return X.astype(np.float32), y[order]


# The named targets of make_regression_1d.
REGRESSION_FUNCTIONS = {
    "sin": np.sin,
    "cos": np.cos,
    "abs": np.abs,
    "square": np.square,
    "cubic": lambda x: x ** 3 - x,
    "step": lambda x: (x > 0).astype(np.float64),
    "gauss": lambda x: np.exp(-x ** 2),
    "sinc": np.sinc,
}


def make_regression_1d(n_samples: int = 200, fn="sin", noise: float = 0.0, x_range=(-np.pi, np.pi),
                       random_state=None):
    """A noisy 1-D function y = f(x) + noise * N(0, 1), x uniform in `x_range`.

    fn: a name in REGRESSION_FUNCTIONS ("sin", "cos", "abs", "square", "cubic" = x^3 - x,
    "step", "gauss" = exp(-x^2), "sinc") or a callable mapping a float64 array to an array of
    the same shape. Returns X float32 (n_samples, 1) and y float32 (n_samples, 1), x unsorted.
    """
    n_samples = check_int(n_samples, "make_regression_1d", "n_samples", minimum=1)
    noise = _noise(noise, "make_regression_1d")
    if isinstance(fn, str):
        if fn not in REGRESSION_FUNCTIONS:
            raise ValueError(f"make_regression_1d: fn must be one of {sorted(REGRESSION_FUNCTIONS)} or a callable, "
                             f"got {fn!r}")
        f = REGRESSION_FUNCTIONS[fn]
    elif callable(fn):
        f = fn
    else:
        raise TypeError(f"make_regression_1d: fn must be a name or a callable, got {type(fn).__name__}")
    try:
        lo, hi = x_range
    except (TypeError, ValueError):
        raise (TypeError if not hasattr(x_range, "__len__") else ValueError)(
            f"make_regression_1d: x_range must be a pair (low, high), got {x_range!r}") from None
    lo = check_real(lo, "make_regression_1d", "x_range[0]")
    hi = check_real(hi, "make_regression_1d", "x_range[1]")
    if not lo < hi:
        raise ValueError(f"make_regression_1d: x_range must be (low, high) with low < high, got {x_range!r}")
    rng = check_rng(random_state, "make_regression_1d", "random_state")
    x = rng.uniform(lo, hi, n_samples)
    y = np.asarray(f(x), dtype=np.float64)
    if y.shape != x.shape:
        raise ValueError(f"make_regression_1d: fn returned shape {y.shape} for input shape {x.shape}")
    if noise > 0:
        y = y + noise * rng.standard_normal(n_samples)
    return x.reshape(-1, 1).astype(np.float32), y.reshape(-1, 1).astype(np.float32)


def split(X, y, test_fraction: float = 0.2, random_state=None, *, shuffle: bool = True):
    """Split (X, y) into ``(X_train, y_train), (X_test, y_test)``.

    The test part has round(test_fraction * n) rows (at least 1 and at most n - 1). shuffle:
    permute the rows first with a generator from `random_state`.
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim == 0 or y.ndim == 0 or len(X) != len(y):
        raise ValueError(f"split: X and y must have the same number of rows, got shapes {X.shape} and {y.shape}")
    n = len(X)
    if n < 2:
        raise ValueError(f"split: need at least 2 rows, got {n}")
    test_fraction = check_real(test_fraction, "split", "test_fraction", low=0.0, high=1.0, low_open=True,
                               high_open=True)
    shuffle = check_bool(shuffle, "split", "shuffle")
    rng = check_rng(random_state, "split", "random_state")
    n_test = min(max(int(round(test_fraction * n)), 1), n - 1)
    order = rng.permutation(n) if shuffle else np.arange(n)
    test, train = order[:n_test], order[n_test:]
    return (X[train], y[train]), (X[test], y[test])
