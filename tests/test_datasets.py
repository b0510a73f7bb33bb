"""fastdl.datasets: MNIST (IDX parsing, checks, search, download from a loopback server) and synthetic sets."""
import functools
import gzip
import http.server
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import mnist_dir, traced_peak
from fastdl import datasets
from fastdl.datasets import MNIST_FILES, MNISTNotFoundError, load_mnist

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _require_mnist():
    d = mnist_dir()
    if not all((d / (n + ".gz")).exists() for n in MNIST_FILES):
        pytest.skip(f"MNIST .gz files not found in {d} (set FASTDL_MNIST_DIR)")
    return d


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(_require_mnist())


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads the user's real cache, $FASTDL_DATA or ../shared/data/mnist, and loopback never
    goes through a proxy."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.delenv("FASTDL_DATA", raising=False)
    monkeypatch.delenv("FASTDL_MNIST_URL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _link_all(src: Path, dst: Path, skip=()):
    """dst gets a symlink to each MNIST .gz file of src, except the names in skip."""
    dst.mkdir(parents=True, exist_ok=True)
    for n in MNIST_FILES:
        if n not in skip:
            (dst / (n + ".gz")).symlink_to(src / (n + ".gz"))
    return dst


def _raw_bytes(name):
    return gzip.decompress((_require_mnist() / (name + ".gz")).read_bytes())


# ----------------------------------------------------------------------------- loading


def test_mnist_shapes_dtypes_and_range(mnist):
    (X, y), (Xt, yt) = mnist
    assert X.shape == (60000, 784) and Xt.shape == (10000, 784)
    assert X.dtype == np.float32 and Xt.dtype == np.float32
    assert X.flags.c_contiguous and Xt.flags.c_contiguous and X.flags.writeable
    assert y.dtype == np.int64 and yt.dtype == np.int64 and y.shape == (60000,) and yt.shape == (10000,)
    assert X.min() == 0.0 and X.max() == 1.0 and Xt.min() == 0.0 and Xt.max() == 1.0
    # every value is k/255 exactly as float32
    k = np.round(X[:1000] * 255)
    np.testing.assert_array_equal(X[:1000], (k / np.float32(255)).astype(np.float32))


def test_mnist_label_counts_and_mean_pixel(mnist):
    (X, y), (Xt, yt) = mnist
    assert np.bincount(y, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(yt, minlength=10).tolist() == TEST_COUNTS
    assert abs(X.mean(dtype=np.float64) - 33.318 / 255) < 0.001 / 255
    assert abs(Xt.mean(dtype=np.float64) - 33.791 / 255) < 0.001 / 255


def test_mnist_raw_files_load_identically(mnist, tmp_path):
    src = _require_mnist()
    for n in MNIST_FILES:  # two raw, two gzipped: each file may be either
        if n.startswith("t10k"):
            (tmp_path / n).write_bytes(_raw_bytes(n))
        else:
            (tmp_path / (n + ".gz")).symlink_to(src / (n + ".gz"))
    (X, y), (Xt, yt) = load_mnist(tmp_path)
    np.testing.assert_array_equal(Xt, mnist[1][0])
    np.testing.assert_array_equal(yt, mnist[1][1])
    np.testing.assert_array_equal(y, mnist[0][1])


def test_read_idx_gz_and_raw(tmp_path):
    src = _require_mnist()
    a = datasets.read_idx(src / "t10k-labels-idx1-ubyte.gz")
    (tmp_path / "lab").write_bytes(_raw_bytes("t10k-labels-idx1-ubyte"))
    b = datasets.read_idx(tmp_path / "lab")
    assert a.shape == (10000,) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.bincount(a).tolist() == TEST_COUNTS


def test_read_idx_other_types(tmp_path):
    want = (np.arange(12) - 5).astype(">i4").reshape(3, 4)
    p = tmp_path / "ints.idx"
    p.write_bytes(bytes([0, 0, 0x0C, 2]) + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") + want.tobytes())
    got = datasets.read_idx(p)
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------- corrupt files


def _broken_dir(tmp_path, name, content: bytes, gz=False):
    d = _link_all(_require_mnist(), tmp_path / "broken", skip=(name,))
    target = d / (name + (".gz" if gz else ""))
    target.write_bytes(gzip.compress(content) if gz else content)
    return d, target


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file_names_the_file(tmp_path, gz):
    raw = _raw_bytes("t10k-labels-idx1-ubyte")
    d, target = _broken_dir(tmp_path, "t10k-labels-idx1-ubyte", raw[:-10], gz=gz)
    with pytest.raises(ValueError, match="truncated") as e:
        load_mnist(d)
    assert str(target) in str(e.value)


def test_truncated_gzip_stream(tmp_path):
    gz = (_require_mnist() / "train-labels-idx1-ubyte.gz").read_bytes()
    d, target = _broken_dir(tmp_path, "train-labels-idx1-ubyte", b"")
    target.unlink()
    target = d / "train-labels-idx1-ubyte.gz"
    target.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ValueError, match="gzip") as e:
        load_mnist(d)
    assert str(target) in str(e.value)


def test_trailing_bytes(tmp_path):
    raw = _raw_bytes("t10k-labels-idx1-ubyte")
    d, target = _broken_dir(tmp_path, "t10k-labels-idx1-ubyte", raw + b"\0\0")
    with pytest.raises(ValueError, match="trailing") as e:
        load_mnist(d)
    assert str(target) in str(e.value)


def test_bad_magic(tmp_path):
    raw = bytearray(_raw_bytes("t10k-labels-idx1-ubyte"))
    raw[3] = 3  # 2049 -> 2051: an images magic on a labels file
    d, target = _broken_dir(tmp_path, "t10k-labels-idx1-ubyte", bytes(raw))
    with pytest.raises(ValueError, match="magic number 2051, expected 2049") as e:
        load_mnist(d)
    assert str(target) in str(e.value)
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.read_idx(_broken_dir(tmp_path / "x", "t10k-labels-idx1-ubyte", b"PK\3\4" + raw[4:])[1])


def test_wrong_dimensions(tmp_path):
    raw = _raw_bytes("t10k-labels-idx1-ubyte")
    short = raw[:4] + (9999).to_bytes(4, "big") + raw[8:-1]  # self-consistent, but 9999 labels
    d, target = _broken_dir(tmp_path, "t10k-labels-idx1-ubyte", short)
    with pytest.raises(ValueError, match=r"dimensions \(9999,\), expected \(10000,\)") as e:
        load_mnist(d)
    assert str(target) in str(e.value)


def test_md5_mismatch(tmp_path):
    raw = bytearray(_raw_bytes("t10k-labels-idx1-ubyte"))
    raw[100] = (raw[100] + 1) % 10  # still a valid label: only the checksum can tell
    d, target = _broken_dir(tmp_path, "t10k-labels-idx1-ubyte", bytes(raw), gz=True)
    with pytest.raises(ValueError, match="md5") as e:
        load_mnist(d)
    assert str(target) in str(e.value)


def test_gz_name_but_not_gzip(tmp_path):
    d, target = _broken_dir(tmp_path, "t10k-labels-idx1-ubyte", b"")
    target.unlink()
    target = d / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(_raw_bytes("t10k-labels-idx1-ubyte"))
    with pytest.raises(ValueError, match="not a gzip file") as e:
        load_mnist(d)
    assert str(target) in str(e.value)


def test_missing_file_and_bad_root(tmp_path):
    d = _link_all(_require_mnist(), tmp_path / "partial", skip=("t10k-images-idx3-ubyte",))
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(d)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_mnist(tmp_path / "nowhere")


# ------------------------------------------------------- hostile files (issue 14, section 4)


def _gzip_bomb(path, header: bytes, zeros: int):
    """A gzip file: `header`, then `zeros` zero bytes (64 MiB compress to ~64 KB), written in chunks."""
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header)
        chunk = bytes(1 << 20)
        for _ in range(zeros >> 20):
            f.write(chunk)
    return path


def _idx_header(magic, *dims):
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)




BOMB = 64 << 20


def test_gzip_bomb_stops_at_the_size_its_header_declares(tmp_path):
    """10 images declared, 64 MiB in the stream: decompression stops after the 10 images."""
    path = _gzip_bomb(tmp_path / "imgs-idx3-ubyte.gz", _idx_header(2051, 10, 28, 28), BOMB)
    assert path.stat().st_size < 200_000
    err, peak = traced_peak(lambda: datasets.read_idx(path))
    assert isinstance(err, ValueError) and str(path) in str(err), err
    assert "has trailing bytes: more than the 7856 bytes uncompressed that the header (10, 28, 28)" in str(err)
    assert peak < 4 << 20, peak


def test_gzip_header_declaring_more_than_the_file_can_hold(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(_idx_header(2051, 10**6, 28, 28) + bytes(1000)))
    err, peak = traced_peak(lambda: datasets.read_idx(path))
    assert isinstance(err, ValueError) and str(path) in str(err), err
    assert "declares 784000016 bytes, more than" in str(err) and "bytes of gzip data can hold" in str(err)
    assert peak < 1 << 20


def test_raw_file_size_is_checked_before_reading(tmp_path):
    """A raw IDX file of 256 MiB (sparse) whose header declares 10 images is not read."""
    path = tmp_path / "imgs-idx3-ubyte"
    with open(path, "wb") as f:
        f.write(_idx_header(2051, 10, 28, 28))
        f.truncate(256 << 20)
    err, peak = traced_peak(lambda: datasets.read_idx(path))
    assert isinstance(err, ValueError) and str(path) in str(err) and "has trailing bytes: 268435456 bytes" in str(err)
    assert peak < 1 << 20, peak


def test_mnist_dimensions_are_checked_before_the_data_is_decompressed(tmp_path):
    d, target = _broken_dir(tmp_path, "train-images-idx3-ubyte", b"")
    target.unlink()
    target = _gzip_bomb(d / "train-images-idx3-ubyte.gz", _idx_header(2051, 70000, 28, 28), BOMB)
    err, peak = traced_peak(lambda: load_mnist(d))
    assert isinstance(err, ValueError) and str(target) in str(err), err
    assert "IDX dimensions (70000, 28, 28), expected (60000, 28, 28)" in str(err)
    assert peak < 8 << 20, peak  # (the label files, read first, are 10 and 60 KB)
    # the right dimensions, then a bomb: stops after the 47 MB the header declares
    target = _gzip_bomb(target, _idx_header(2051, 60000, 28, 28), 128 << 20)
    err, peak = traced_peak(lambda: load_mnist(d))
    assert isinstance(err, ValueError) and "has trailing bytes" in str(err), err
    assert peak < 60 << 20, peak


# ----------------------------------------------------------------------------- search


def _chosen_dir(monkeypatch, **kw):
    """Which directory load_mnist would read (the reading itself is tested above)."""
    monkeypatch.setattr(datasets, "_load_dir", lambda d: Path(d))
    return load_mnist(**kw)


def test_search_order(monkeypatch, tmp_path):
    src = _require_mnist()
    cache = datasets.mnist_cache_dir()
    assert cache == tmp_path / "xdg-cache" / "fastdl" / "mnist"
    _link_all(src, cache)
    assert _chosen_dir(monkeypatch, download=False) == cache
    data = tmp_path / "data"
    _link_all(src, data / "mnist")
    monkeypatch.setenv("FASTDL_DATA", str(data))
    assert _chosen_dir(monkeypatch, download=False) == data / "mnist"
    _link_all(src, data)
    assert _chosen_dir(monkeypatch, download=False) == data


def test_shared_data_dir_beside_the_working_directory(monkeypatch, tmp_path):
    """../shared/data/mnist (this project's layout: data beside the checkout) comes after the cache."""
    src = _require_mnist()
    assert datasets.find_mnist() is None
    shared = _link_all(src, tmp_path / "shared" / "data" / "mnist")
    assert datasets.find_mnist() == shared and _chosen_dir(monkeypatch, download=False) == shared
    cache = _link_all(src, datasets.mnist_cache_dir())
    assert datasets.find_mnist() == cache


def test_cache_dir_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert datasets.mnist_cache_dir() == tmp_path / ".cache" / "fastdl" / "mnist"


def test_not_found_without_download(tmp_path):
    with pytest.raises(MNISTNotFoundError) as e:
        load_mnist(download=False)
    msg = str(e.value)
    assert str(datasets.mnist_cache_dir()) in msg and "train-images-idx3-ubyte.gz" in msg
    assert isinstance(e.value, FileNotFoundError)


# --------------------------------------------------------------------------- download


class _Server:
    def __init__(self, directory):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(directory):
        servers.append(_Server(directory))
        return servers[-1].url

    yield start
    for s in servers:
        s.close()


def _closed_port_url():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"  # nothing listens there now: connection refused


def test_download_then_load_from_cache(mnist, serve):
    url = serve(_require_mnist())
    (X, y), (Xt, yt) = load_mnist(url=url)
    cache = datasets.mnist_cache_dir()
    assert sorted(os.listdir(cache)) == sorted(n + ".gz" for n in MNIST_FILES)  # no temp files left
    np.testing.assert_array_equal(X, mnist[0][0])
    np.testing.assert_array_equal(yt, mnist[1][1])
    # second time: from the cache, no network needed
    (X2, _), _ = load_mnist(url=_closed_port_url())
    np.testing.assert_array_equal(X2, X)


def test_download_falls_back_to_next_mirror_from_env(monkeypatch, serve, tmp_path):
    good = serve(_require_mnist())
    (tmp_path / "empty-mirror").mkdir()
    empty = serve(tmp_path / "empty-mirror")  # answers 404
    monkeypatch.setenv("FASTDL_MNIST_URL", f"{_closed_port_url()} {empty},{good}")
    dest = datasets.download_mnist(tmp_path / "dl")
    for n, (_, _, gz_md5, _) in MNIST_FILES.items():
        assert datasets._md5((dest / (n + ".gz")).read_bytes()) == gz_md5
    assert len(os.listdir(dest)) == 4


def test_download_keeps_files_already_there(serve, tmp_path):
    src = _require_mnist()
    dest = _link_all(src, tmp_path / "dl", skip=("t10k-labels-idx1-ubyte",))
    (dest / "train-images-idx3-ubyte.gz").unlink()
    (dest / "train-images-idx3-ubyte").write_bytes(b"already here, not touched")
    bad = tmp_path / "mirror"
    bad.mkdir()
    shutil.copy(src / "t10k-labels-idx1-ubyte.gz", bad)  # the mirror has only the missing file
    datasets.download_mnist(dest, url=serve(bad))
    assert (dest / "t10k-labels-idx1-ubyte.gz").read_bytes() == (src / "t10k-labels-idx1-ubyte.gz").read_bytes()
    assert (dest / "train-images-idx3-ubyte").read_bytes() == b"already here, not touched"


def test_corrupt_download_is_an_error_and_leaves_nothing(serve, tmp_path):
    mirror = _link_all(_require_mnist(), tmp_path / "mirror", skip=("train-labels-idx1-ubyte",))
    gz = bytearray((mnist_dir() / "train-labels-idx1-ubyte.gz").read_bytes())
    gz[1000] ^= 0xFF
    (mirror / "train-labels-idx1-ubyte.gz").write_bytes(bytes(gz))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz.*md5") as e:
        load_mnist(url=serve(mirror))
    assert "expected d53e105ee54ea40749a09fcbcd1e9432" in str(e.value)
    cache = datasets.mnist_cache_dir()
    assert not any(name.startswith("train-labels") for name in os.listdir(cache))
    assert not any(name.endswith(".part") for name in os.listdir(cache))


def test_offline_says_where_to_put_the_files(tmp_path):
    with pytest.raises(MNISTNotFoundError) as e:
        load_mnist(url=_closed_port_url())
    msg = str(e.value)
    cache = datasets.mnist_cache_dir()
    assert "offline" in msg and str(cache) in msg
    for n in MNIST_FILES:
        assert n + ".gz" in msg
    assert not (tmp_path / "xdg-cache").exists()  # no empty cache directory left behind
    assert e.value.reason.startswith("could not download train-images-idx3-ubyte.gz")
    assert e.value.searched == datasets._search_dirs()
    (tmp_path / "xdg-cache").mkdir()  # directories that were there stay
    with pytest.raises(MNISTNotFoundError):
        load_mnist(url=_closed_port_url())
    assert os.listdir(tmp_path / "xdg-cache") == []


def test_offline_message_names_fastdl_data(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTDL_DATA", str(tmp_path / "mydata"))
    with pytest.raises(MNISTNotFoundError, match="mydata"):
        load_mnist(url=[_closed_port_url()])


# ----------------------------------------------------------------------- synthetic sets


def _global_state_untouched(fn):
    before = np.random.get_state()[1].copy()
    fn()
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_make_xor_exact_points():
    X, y = datasets.make_xor()
    assert X.dtype == np.float32 and X.shape == (4, 2) and y.dtype == np.int64
    np.testing.assert_array_equal(X, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(y, [0, 1, 1, 0])


def test_make_xor_noisy_samples():
    X, y = datasets.make_xor(500, noise=0.1, random_state=3)
    assert X.shape == (500, 2) and X.dtype == np.float32 and y.shape == (500,)
    corner = np.round(X).astype(np.int64)  # noise 0.1: 5 sigma from the rounding boundary
    np.testing.assert_array_equal(y, corner[:, 0] ^ corner[:, 1])
    assert 0.05 < np.std(X - corner) < 0.15
    assert set(np.unique(y)) == {0, 1}
    X2, y2 = datasets.make_xor(500, noise=0.1, random_state=3)
    np.testing.assert_array_equal(X, X2)
    assert not np.array_equal(X, datasets.make_xor(500, noise=0.1, random_state=4)[0])
    _global_state_untouched(lambda: datasets.make_xor(10, noise=0.2))


def test_make_spirals_geometry():
    X, y = datasets.make_spirals(301, noise=0.0, n_turns=2.0, random_state=0)
    assert X.shape == (301, 2) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [151, 150]
    X64 = X.astype(np.float64)
    r = np.hypot(X64[:, 0], X64[:, 1])
    assert r.max() <= 1 + 1e-6
    t = r * 2 * np.pi * 2.0
    sign = np.where(y == 0, 1.0, -1.0)[:, None]  # class 1 is class 0 rotated by pi
    np.testing.assert_allclose(X64, sign * r[:, None] * np.stack([np.cos(t), np.sin(t)], 1), atol=1e-5)
    Xn, _ = datasets.make_spirals(301, noise=0.05, n_turns=2.0, random_state=0)
    assert 0.03 < np.std(Xn - X) < 0.07
    _global_state_untouched(lambda: datasets.make_spirals(20))


def test_make_moons_geometry():
    X, y = datasets.make_moons(101, random_state=1)
    assert X.shape == (101, 2) and X.dtype == np.float32 and np.bincount(y).tolist() == [51, 50]
    a, b = X[y == 0].astype(np.float64), X[y == 1].astype(np.float64)
    np.testing.assert_allclose(np.hypot(a[:, 0], a[:, 1]), 1, atol=1e-6)
    np.testing.assert_allclose(np.hypot(b[:, 0] - 1, b[:, 1] - 0.5), 1, atol=1e-6)
    assert a[:, 1].min() >= -1e-7 and b[:, 1].max() <= 0.5 + 1e-7
    np.testing.assert_array_equal(X, datasets.make_moons(101, random_state=1)[0])


def test_make_regression_1d():
    X, y = datasets.make_regression_1d(1000, fn="sin", random_state=0)
    assert X.shape == (1000, 1) and y.shape == (1000, 1) and X.dtype == np.float32 and y.dtype == np.float32
    assert X.min() >= -np.pi and X.max() <= np.pi
    np.testing.assert_allclose(y, np.sin(X.astype(np.float64)), atol=1e-6)
    Xn, yn = datasets.make_regression_1d(1000, fn="sin", noise=0.2, random_state=0)
    np.testing.assert_array_equal(Xn, X)
    assert 0.17 < np.std(yn - y) < 0.23
    Xc, yc = datasets.make_regression_1d(50, fn=lambda x: 2 * x + 1, x_range=(0, 1), random_state=2)
    assert Xc.min() >= 0 and Xc.max() <= 1
    np.testing.assert_allclose(yc, 2 * Xc + 1, atol=1e-6)
    _global_state_untouched(lambda: datasets.make_regression_1d(10, noise=1.0))


def test_split():
    X = np.arange(100, dtype=np.float32).reshape(50, 2)
    y = np.arange(50)
    (Xa, ya), (Xb, yb) = datasets.split(X, y, test_fraction=0.2, random_state=0)
    assert len(Xb) == 10 and len(Xa) == 40
    np.testing.assert_array_equal(Xa[:, 0], 2 * ya)
    np.testing.assert_array_equal(np.sort(np.concatenate([ya, yb])), y)
    (Xc, _), _ = datasets.split(X, y, test_fraction=0.2, random_state=0)
    np.testing.assert_array_equal(Xa, Xc)
    (_, y_ordered), (_, y_test) = datasets.split(X, y, 0.1, shuffle=False)
    np.testing.assert_array_equal(y_test, np.arange(5))


@pytest.mark.parametrize("call, exc", [
    (lambda: datasets.make_spirals(0), ValueError),
    (lambda: datasets.make_moons(10, noise=-1), ValueError),
    (lambda: datasets.make_xor(2.5), TypeError),
    (lambda: datasets.make_xor(4, random_state=1.5), TypeError),
    (lambda: datasets.make_spirals(10, n_turns=0), ValueError),
    (lambda: datasets.make_regression_1d(10, fn="nope"), ValueError),
    (lambda: datasets.make_regression_1d(10, fn=3), TypeError),
    (lambda: datasets.make_regression_1d(10, x_range=(1, 0)), ValueError),
    (lambda: datasets.make_regression_1d(10, fn=lambda x: x[:3]), ValueError),
    (lambda: datasets.split(np.zeros((4, 2)), np.zeros(3)), ValueError),
    (lambda: datasets.split(np.zeros((4, 2)), np.zeros(4), test_fraction=1.0), ValueError),
    # fastdl._validation's rule: TypeError for a wrong type, ValueError for a wrong value, who and what named
    (lambda: datasets.make_moons(10, random_state=-1), ValueError),          # was a TypeError
    (lambda: datasets.make_moons(10, noise="0.1"), TypeError),
    (lambda: datasets.make_moons(10, noise=float("nan")), ValueError),
    (lambda: datasets.make_spirals(10, n_turns="2"), TypeError),
    (lambda: datasets.make_regression_1d(10, x_range=("a", 1)), TypeError),  # was a ValueError
    (lambda: datasets.make_regression_1d(10, x_range=5), TypeError),
    (lambda: datasets.make_regression_1d(10, x_range=(0, 1, 2)), ValueError),
    (lambda: datasets.split(np.zeros((4, 2)), np.zeros(4), test_fraction="0.5"), TypeError),  # was a ValueError
    (lambda: datasets.split(np.zeros((4, 2)), np.zeros(4), shuffle="no"), TypeError),
    (lambda: datasets.load_mnist(download="no"), TypeError),
    (lambda: datasets.download_mnist("/nonexistent/x", timeout=0), ValueError),
])
def test_bad_arguments(call, exc):
    with pytest.raises(exc) as e:
        call()
    assert e.type is exc
