"""save / load: round trips give identical predictions and state; other architectures and broken
files give clear errors."""
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from conftest import traced_peak
from fastdl import nn, optim


def trained_model(seed=0, hidden=16):
    rng = np.random.default_rng(seed)
    m = nn.Sequential(nn.Linear(6, hidden, rng=rng), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.3, seed=seed),
                      nn.Linear(hidden, 8, rng=rng), nn.Tanh(), nn.Linear(8, 3, rng=rng))
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):  # move weights and running stats away from their initial values
        loss_fn(m(x), y)
        opt.zero_grad()
        m.backward(loss_fn.backward())
        opt.step()
    return m.eval(), x


def test_save_load_round_trip(tmp_path):
    m, x = trained_model()
    path = tmp_path / "model.npz"
    m.save(path)
    m2 = nn.load(path)
    assert isinstance(m2, nn.Sequential) and repr(m2) == repr(m) and m2.get_config() == m.get_config()
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert list(sd) == list(sd2)
    for k in sd:
        assert sd2[k].dtype == np.float32
        np.testing.assert_array_equal(sd[k], sd2[k])
    assert m2[1].running_var.any() and not np.array_equal(m2[1].running_var, np.ones(16))
    m2.eval()
    np.testing.assert_array_equal(m(x), m2(x))  # bit-identical predictions
    assert m2[3].p == 0.3 and m2[3].seed == 0
    assert not [f for f in os.listdir(tmp_path) if f != "model.npz"]  # no temporary left behind


def test_save_uses_the_name_as_given_and_loads_into_a_model(tmp_path):
    m, x = trained_model(1)
    path = str(tmp_path / "weights.bin")
    nn.save(m, path)
    assert os.path.exists(path) and not os.path.exists(path + ".npz")
    target, _ = trained_model(2)
    out = nn.load(path, model=target)
    assert out is target
    np.testing.assert_array_equal(target.eval()(x), m(x))
    # overwriting an existing file works
    nn.save(target, path)
    nn.load(path)


@pytest.mark.parametrize("other,where", [
    (lambda: nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 8),
                           nn.Tanh(), nn.Linear(8, 3)), r"model\[0\]: the model has Linear\(in_features=6, "
                                                         r"out_features=32"),
    (lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)), "the model has 3 layers, the file has 7"),
    (lambda: nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Sigmoid(), nn.Dropout(0.3), nn.Linear(16, 8),
                           nn.Tanh(), nn.Linear(8, 3)), r"model\[2\]: the model has Sigmoid\(\), the file has ReLU\(\)"),
    (lambda: nn.Linear(6, 3), "the model has Linear"),
])
def test_load_into_a_different_architecture_is_refused(tmp_path, other, where):
    m, _ = trained_model()
    path = tmp_path / "m.npz"
    m.save(path)
    target = other()
    before = [p.data.copy() for p in target.parameters()]
    with pytest.raises(ValueError, match="different architecture") as e:
        nn.load(path, model=target)
    assert e.match(where)
    for p, b in zip(target.parameters(), before):
        np.testing.assert_array_equal(p.data, b)  # untouched


def test_init_and_seed_do_not_count_as_architecture(tmp_path):
    m = nn.Sequential(nn.Linear(3, 4, rng=0), nn.Dropout(0.5, seed=1))
    m.save(tmp_path / "a.npz")
    other = nn.Sequential(nn.Linear(3, 4, init="xavier_normal"), nn.Dropout(0.5))
    nn.load(tmp_path / "a.npz", model=other)
    np.testing.assert_array_equal(other[0].weight.data, m[0].weight.data)


def _write(path, meta=None, **arrays):
    if meta is not None:
        arrays["__fastdl__"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _meta(m, **over):
    meta = {"format": "fastdl.nn", "format_version": 1, "fastdl_version": "x", "architecture": m.get_config(),
            "keys": list(m.state_dict())}
    meta.update(over)
    return meta


def _good_arrays(m):
    return {f"state/{k}": v for k, v in m.state_dict().items()}


def test_broken_files_give_clear_errors(tmp_path):
    m = nn.Sequential(nn.Linear(3, 2, rng=0), nn.ReLU())
    good = tmp_path / "good.npz"
    m.save(good)
    raw = good.read_bytes()

    cases = {}
    (tmp_path / "junk").write_bytes(b"this is not a zip file at all")
    cases["junk"] = "not a valid fastdl model file"
    (tmp_path / "truncated").write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = "not a valid fastdl model file"
    (tmp_path / "empty").write_bytes(b"")
    cases["empty"] = "not a valid fastdl model file"
    np.save(tmp_path / "single.npy", np.zeros(3))
    cases["single.npy"] = "single .npy array"
    _write(tmp_path / "nometa", None, x=np.zeros(2))
    cases["nometa"] = "no '__fastdl__' entry"
    _write(tmp_path / "badjson", "{not json", **_good_arrays(m))
    cases["badjson"] = "not valid JSON"
    _write(tmp_path / "otherformat", _meta(m, format="keras"), **_good_arrays(m))
    cases["otherformat"] = "does not name the fastdl.nn format"
    _write(tmp_path / "newer", _meta(m, format_version=99), **_good_arrays(m))
    cases["newer"] = "format version 99, newer than this fastdl reads"
    _write(tmp_path / "badversion", _meta(m, format_version="1"), **_good_arrays(m))
    cases["badversion"] = "invalid format version"
    arrays = _good_arrays(m)
    del arrays["state/0.bias"]
    _write(tmp_path / "missing", _meta(m), **arrays)
    cases["missing"] = "the array for '0.bias' is missing"
    arrays = _good_arrays(m)
    arrays["state/0.weight"] = np.zeros((5, 5), np.float32)
    _write(tmp_path / "shape", _meta(m), **arrays)
    cases["shape"] = r"do not fit the architecture.*0.weight: got shape \(5, 5\), expected \(2, 3\)"
    _write(tmp_path / "unknown", _meta(m, architecture={"type": "Mystery", "config": {}}), **_good_arrays(m))
    cases["unknown"] = "unknown layer type 'Mystery'"
    _write(tmp_path / "keys", _meta(m, keys="0.weight"), **_good_arrays(m))
    cases["keys"] = "state keys is malformed"
    arrays = _good_arrays(m)
    arrays["state/0.weight"] = np.array([["a"] * 3] * 2)
    _write(tmp_path / "strings", _meta(m), **arrays)
    cases["strings"] = "dtype <U1, expected float32"
    flipped = bytearray(raw)
    i = raw.find(b"0.weight.npy")  # corrupt the stored data of an entry (CRC check)
    j = raw.find(b"\x93NUMPY", i)
    flipped[j + 130] ^= 0xFF
    (tmp_path / "crc").write_bytes(bytes(flipped))
    cases["crc"] = "not a valid fastdl model file"

    for name, match in cases.items():
        with pytest.raises(ValueError, match=match):
            nn.load(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no such file"):
        nn.load(tmp_path / "does-not-exist.npz")


def test_save_and_load_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="Module"):
        nn.save({"w": np.zeros(2)}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="path"):
        nn.save(nn.ReLU(), 3.5)
    with pytest.raises(TypeError, match="path"):
        nn.load(None)
    with pytest.raises(TypeError, match="model"):
        nn.load(tmp_path / "x.npz", model="net")

    class Custom(nn.Module):  # not registered: load could not rebuild it
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="not registered"):
        nn.Sequential(nn.Linear(2, 2), Custom()).save(tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()


def test_registered_custom_layer_round_trips(tmp_path):
    @nn.register_module
    class Scale(nn.Module):
        def __init__(self, n, init_value=1.0):
            super().__init__()
            self.n, self.init_value = n, init_value
            self.s = nn.Parameter(np.full(n, init_value))

        def forward(self, x):
            return np.asarray(x, np.float32) * self.s.data

        def _config(self):
            return {"n": self.n, "init_value": self.init_value}

    m = nn.Sequential(nn.Linear(3, 4, rng=0), Scale(4, 2.0))
    m[1].s.data = [1, 2, 3, 4]
    m.save(tmp_path / "s.npz")
    m2 = nn.load(tmp_path / "s.npz")
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(m2(x), m(x))
    np.testing.assert_array_equal(m2[1].s.data, [1, 2, 3, 4])


# ---------------------------------------------------------------- untrusted files (issue 14, section 4)

def _npy_bytes(header_shape, data: bytes, descr="<f4"):
    """An .npy entry whose header declares `header_shape` whatever `data` holds."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": header_shape})
    return buf.getvalue() + data


def _craft(path, arch, entries, keys=None):
    """A model file by hand: metadata naming `arch` and `keys`, then each entry's raw .npy bytes."""
    meta = {"format": "fastdl.nn", "format_version": 1, "fastdl_version": "x", "architecture": arch,
            "keys": list(entries) if keys is None else keys}
    meta_npy = io.BytesIO()
    np.lib.format.write_array(meta_npy, np.array(json.dumps(meta)))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__fastdl__.npy", meta_npy.getvalue())
        for k, raw in entries.items():
            zf.writestr(f"state/{k}.npy", raw)
    return path


def _linear_arch(n_in, n_out, count=1):
    layer = {"type": "Linear", "config": {"in_features": n_in, "out_features": n_out, "bias": True,
                                           "init": "kaiming_uniform"}}
    return {"type": "Sequential", "config": {"layers": [layer] * count}}


def _load_peak(path, **kw):
    """(the exception load raised, peak bytes traced while it ran)."""
    return traced_peak(lambda: nn.load(path, **kw))


SMALL = 50 << 20  # every hostile file below fails within this much memory (NumPy's arrays are traced)


@pytest.mark.parametrize("case", ["small-arrays", "header-claims-the-shape", "header-claims-2**32"])
def test_huge_declared_sizes_fail_before_allocating(tmp_path, case):
    """A 1-2 KB file declaring Linear(16384, 16384) (1 GiB of weights) used to make load allocate it."""
    arch = _linear_arch(16384, 16384)
    if case == "small-arrays":       # the architecture is huge, the arrays are not
        entries = {"0.weight": _npy_bytes((2, 3), bytes(24)), "0.bias": _npy_bytes((2,), bytes(8))}
        match = r"do not fit the architecture.*0.weight: got shape \(2, 3\), expected \(16384, 16384\)"
    elif case == "header-claims-the-shape":  # the headers agree with it, the data is 8 bytes
        entries = {"0.weight": _npy_bytes((16384, 16384), bytes(8)), "0.bias": _npy_bytes((16384,), bytes(8))}
        match = r"'0.weight' declares shape \(16384, 16384\) of float32 \(1073741824 bytes\), but its entry holds 8"
    else:                            # an entry whose header claims 2**32 floats
        arch = _linear_arch(2, 3)
        entries = {"0.weight": _npy_bytes((2**32,), bytes(24)), "0.bias": _npy_bytes((3,), bytes(12))}
        match = r"'0.weight' declares shape \(4294967296,\)"
    path = _craft(tmp_path / "huge.npz", arch, entries)
    assert path.stat().st_size < 2048
    err, peak = _load_peak(path)
    assert isinstance(err, ValueError) and str(path) in str(err), err
    assert re.search(match, str(err)), err
    assert peak < SMALL, peak


def test_many_large_layers_in_a_small_file_fail_fast(tmp_path):
    """2000 x Linear(4096, 4096) (128 GiB) declared by a file of a few hundred KB."""
    arch = _linear_arch(4096, 4096, count=2000)
    entries = {}
    for i in range(2000):
        entries[f"{i}.weight"] = _npy_bytes((4096, 4096), b"")
        entries[f"{i}.bias"] = _npy_bytes((4096,), b"")
    path = _craft(tmp_path / "many.npz", arch, entries)
    err, peak = _load_peak(path)
    assert isinstance(err, ValueError) and str(path) in str(err) and "declares shape (4096, 4096)" in str(err)
    assert peak < SMALL, peak
    # the same architecture with no arrays at all: refused from the keys alone
    path = _craft(tmp_path / "nokeys.npz", arch, {})
    err, peak = _load_peak(path)
    assert isinstance(err, ValueError) and "missing keys: 0.weight, 0.bias" in str(err), err
    assert peak < SMALL, peak


def test_entry_sizes_must_match_what_the_file_stores(tmp_path):
    m = nn.Sequential(nn.Linear(3, 2, rng=0))
    good = tmp_path / "good.npz"
    m.save(good)
    # a compressed entry: fastdl writes stored ones only, so the size of every entry is the bytes it takes
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "deflated.npz", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(ValueError, match="deflated.npz.*compression method 8; fastdl model files have stored entries only"):
        nn.load(tmp_path / "deflated.npz")
    # a central directory that claims more bytes than the entry stores
    raw = bytearray(good.read_bytes())
    entry = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"state/0.weight.npy"))  # its central directory record
    raw[entry + 24: entry + 28] = (2**31).to_bytes(4, "little")           # the uncompressed size
    (tmp_path / "liar.npz").write_bytes(bytes(raw))
    err, peak = _load_peak(tmp_path / "liar.npz")
    assert isinstance(err, ValueError), err
    assert re.search(r"liar.npz.*'state/0.weight.npy' declares 2147483648 bytes but stores 152", str(err)), err
    assert peak < SMALL


def _nested_json(depth, leaf='{"type": "ReLU", "config": {}}'):
    """A Sequential nested `depth` deep, as JSON text (json.dumps itself cannot nest that deep)."""
    return '{"type": "Sequential", "config": {"layers": [' * depth + leaf + "]}}" * depth


def _write_meta_text(path, arch_text, keys="[]"):
    meta = ('{"format": "fastdl.nn", "format_version": 1, "fastdl_version": "x", "keys": ' + keys
            + ', "architecture": ' + arch_text + "}")
    with open(path, "wb") as f:
        np.savez(f, __fastdl__=np.array(meta))
    return path


@pytest.mark.parametrize("depth,match", [(400, "its metadata nests 1203 levels deep"),
                                         (70, "nests containers more than 64 deep"),
                                         (30_000, "its metadata nests 90003 levels deep")])
def test_deeply_nested_architecture_is_refused(tmp_path, depth, match):
    """400 nested Sequentials used to raise RecursionError (a traceback from the CLI)."""
    path = _write_meta_text(tmp_path / "deep.npz", _nested_json(depth))
    err, peak = _load_peak(path)
    assert isinstance(err, ValueError) and str(path) in str(err) and match in str(err), repr(err)
    assert peak < SMALL


def test_nesting_within_the_limit_round_trips_and_save_refuses_deeper(tmp_path):
    inner = nn.Sequential(nn.Linear(2, 2, rng=0))
    m = inner
    for _ in range(63):
        m = nn.Sequential(m)
    m.save(tmp_path / "ok.npz")
    m2 = nn.load(tmp_path / "ok.npz")
    x = np.ones((1, 2), np.float32)
    np.testing.assert_array_equal(m2(x), m(x))
    with pytest.raises(ValueError, match="load reads at most 100000 modules nested 64 deep"):
        nn.Sequential(m).save(tmp_path / "deep.npz")
    assert not (tmp_path / "deep.npz").exists()


def test_metadata_size_is_bounded(tmp_path):
    arch = '{"type": "ReLU", "config": {"pad": "' + "x" * (1 << 22) + '"}}'
    path = _write_meta_text(tmp_path / "bigmeta.npz", arch)
    with pytest.raises(ValueError, match=r"bigmeta.npz.*metadata is \d+ characters long \(at most 4194304"):
        nn.load(path)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_at_load(tmp_path, bad_value):
    m, x = trained_model()
    m[0].weight.data[1, 2] = bad_value
    path = tmp_path / "nan.npz"
    m.save(path)
    with pytest.raises(ValueError, match=r"nan.npz.*the array for '0.weight' contains NaN or Inf"):
        nn.load(path)
    target, _ = trained_model(1)
    before = [a.copy() for a in target.state_dict().values()]
    with pytest.raises(ValueError, match="0.weight"):
        nn.load(path, model=target)
    for a, b in zip(target.state_dict().values(), before):
        np.testing.assert_array_equal(a, b)  # untouched


def test_float64_weights_beyond_float32_range_are_refused(tmp_path):
    m = nn.Sequential(nn.Linear(3, 2, rng=0))
    arrays = _good_arrays(m)
    arrays["state/0.bias"] = np.array([1.0, 1e300])
    _write(tmp_path / "big.npz", _meta(m), **arrays)
    with pytest.raises(ValueError, match="'0.bias' contains NaN or Inf"):
        nn.load(tmp_path / "big.npz")
    arrays["state/0.bias"] = np.array([1.0, 2.0])  # float64 within range: read as float32, as before
    _write(tmp_path / "f64.npz", _meta(m), **arrays)
    np.testing.assert_array_equal(nn.load(tmp_path / "f64.npz")[0].bias.data, [1, 2])


def test_the_cli_reports_hostile_model_files_in_one_line(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 784), np.float32))
    files = {"huge": _craft(tmp_path / "huge.npz", _linear_arch(16384, 16384),
                            {"0.weight": _npy_bytes((16384, 16384), bytes(8)), "0.bias": _npy_bytes((16384,), b"")}),
             "deep": _write_meta_text(tmp_path / "deep.npz", _nested_json(400))}
    for name, path in files.items():
        r = subprocess.run([sys.executable, "-m", "fastdl", "predict", str(path), str(tmp_path / "x.npy")],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, (name, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("fastdl predict: error: load:"), r.stderr
        assert str(path) in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- save: mode, fsync, stale temps (section 5)


def test_save_creates_files_with_the_umask_like_open(tmp_path):
    m = nn.Sequential(nn.Linear(3, 2, rng=0))
    old = os.umask(0o022)
    try:
        m.save(tmp_path / "a.npz")
        with open(tmp_path / "b", "w"):
            pass
        os.umask(0o077)
        m.save(tmp_path / "c.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.npz").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "c.npz").stat().st_mode) == 0o600
    os.chmod(tmp_path / "a.npz", 0o640)  # overwriting keeps the file's mode, as open("w") does
    m.save(tmp_path / "a.npz")
    assert stat.S_IMODE((tmp_path / "a.npz").stat().st_mode) == 0o640


def test_save_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", os.path.basename(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    nn.Sequential(nn.Linear(3, 2, rng=0)).save(tmp_path / "m.npz")
    assert events == [("fsync", False), ("replace", "m.npz"), ("fsync", True)]


def _killed_save(target):
    """Run a save in a child that dies (SIGKILL) between writing its temp file and the rename."""
    code = ("import os, signal, sys\nfrom fastdl import nn\n"
            "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
            "nn.Sequential(nn.Linear(30, 20, rng=0)).save(sys.argv[1])\n")
    r = subprocess.run([sys.executable, "-c", code, str(target)], cwd=target.parent, capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_save_removes_temp_files_that_killed_saves_left(tmp_path):
    target = tmp_path / "model.npz"
    for _ in range(3):  # each save removes what the one killed before it left: one leftover at a time
        _killed_save(target)
        leftovers = [p.name for p in tmp_path.iterdir()]
        assert len(leftovers) == 1 and leftovers[0].startswith(".fastdl-model.npz-"), leftovers
    other = tmp_path / "other.npz"
    _killed_save(other)  # another target's leftover: not this save's to remove
    other_tmp = [p.name for p in tmp_path.iterdir() if p.name.startswith(".fastdl-other.npz-")]
    assert len(other_tmp) == 1
    # one being written right now by a live process (this one's parent stands in for it)
    live = tmp_path / f".fastdl-model.npz-{os.getppid()}-0123abcd.npz.tmp"
    live.write_bytes(b"in progress")
    # an earlier version's name (no target, no pid in it): removed once an hour old
    legacy_old, legacy_new = tmp_path / ".fastdl-ab_cd123.npz.tmp", tmp_path / ".fastdl-zz9yy876.npz.tmp"
    legacy_old.write_bytes(b"x")
    legacy_new.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(legacy_old, (two_hours_ago, two_hours_ago))

    nn.Sequential(nn.Linear(3, 2, rng=0)).save(target)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["model.npz", live.name, legacy_new.name] + other_tmp), left
    nn.load(target)
    os.utime(live, (two_hours_ago, two_hours_ago))  # untouched for an hour: removed whoever wrote it
    nn.Sequential(nn.Linear(3, 2, rng=0)).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.npz", legacy_new.name] + other_tmp)
