"""save / load: round trips give identical predictions and state; other architectures and broken
files give clear errors."""
import json
import os

import numpy as np
import pytest

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
