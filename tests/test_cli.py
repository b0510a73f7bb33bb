"""The command line end to end (train -> predict, bench, info, bad flags) on a tiny budget."""
import contextlib
import gzip
import importlib.util
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import mnist_dir
from fastdl import nn
from fastdl.__main__ import DEFAULT_LR, TRAIN_DEFAULTS, build_parser, main
from fastdl.datasets import read_idx
from fastdl.train import predict

ACC = re.compile(r"test accuracy: ([0-9.]+)% \(test loss ([0-9.]+)\) after (\d+) epochs; ([0-9.]+) s per epoch")


def _tiny_train(mnist_path, out, *extra):
    return ["train", "--data", str(mnist_path), "--limit-train", "3000", "--limit-test", "1000",
            "--epochs", "1", "--hidden", "64", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the predict tests: (model path, its stdout, the MNIST dir)."""
    d = mnist_dir()
    if not (d / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found in {d} (set FASTDL_MNIST_DIR)")
    out = tmp_path_factory.mktemp("cli") / "model.npz"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(_tiny_train(d, out, "--seed", "3"))
    assert rc == 0, buf.getvalue()
    return out, buf.getvalue(), d


def test_train_prints_accuracy_and_saves(trained):
    out, text, _ = trained
    m = ACC.search(text)
    assert m, text
    assert 75.0 < float(m.group(1)) <= 100.0  # 1 epoch on 3000 images: well above chance (10%)
    assert int(m.group(3)) == 1 and float(m.group(4)) > 0
    assert "Epoch 1/1" in text and "784-64-10 relu MLP, 50890 parameters, dropout 0.1" in text
    model = nn.load(out)
    assert [type(layer).__name__ for layer in model] == ["Linear", "ReLU", "Dropout", "Linear"]


def test_predict_idx_matches_model_and_reports_accuracy(trained, tmp_path, capsys):
    model_path, _, d = trained
    preds_path = tmp_path / "preds.npy"
    rc = main(["predict", str(model_path), str(d / "t10k-images-idx3-ubyte.gz"),
               "--labels", str(d / "t10k-labels-idx1-ubyte.gz"), "--out", str(preds_path)])
    text = capsys.readouterr().out
    assert rc == 0, text
    preds = np.load(preds_path)
    assert preds.shape == (10000,) and preds.dtype == np.int64
    X = read_idx(d / "t10k-images-idx3-ubyte.gz").reshape(10000, -1).astype(np.float32) / np.float32(255)
    want = predict(nn.load(model_path), X).argmax(axis=1)
    np.testing.assert_array_equal(preds, want)
    labels = read_idx(d / "t10k-labels-idx1-ubyte.gz")
    acc = 100 * np.mean(preds == labels)
    assert f"accuracy: {acc:.2f}%" in text
    assert "predicted classes: " + " ".join(str(p) for p in preds[:5]) in text


def test_predict_npy_uint8_float_and_raw_idx_agree(trained, tmp_path, capsys):
    model_path, _, d = trained
    images = read_idx(d / "t10k-images-idx3-ubyte.gz")[:300]  # uint8 (300, 28, 28)
    np.save(tmp_path / "u8.npy", images)
    np.save(tmp_path / "f32.npy", images.reshape(300, 784).astype(np.float32) / 255)
    raw = gzip.decompress((d / "t10k-images-idx3-ubyte.gz").read_bytes())
    header = raw[:4] + (300).to_bytes(4, "big") + raw[8:16]
    (tmp_path / "imgs-idx3-ubyte").write_bytes(header + raw[16:16 + 300 * 784])
    results = []
    for name in ("u8.npy", "f32.npy", "imgs-idx3-ubyte"):
        out = tmp_path / (name + ".preds.npy")
        assert main(["predict", str(model_path), str(tmp_path / name), "--out", str(out)]) == 0
        results.append(np.load(out))
    capsys.readouterr()
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
    # one image (28, 28)
    np.save(tmp_path / "one.npy", images[7])
    assert main(["predict", str(model_path), str(tmp_path / "one.npy")]) == 0
    assert f"1 images; predicted classes: {results[0][7]}" in capsys.readouterr().out


def test_predict_errors(trained, tmp_path, capsys):
    model_path, _, d = trained
    np.save(tmp_path / "bad.npy", np.zeros((5, 100), np.float32))
    assert main(["predict", str(model_path), str(tmp_path / "bad.npy")]) == 1
    assert "100 values each, the model expects 784" in capsys.readouterr().err
    np.save(tmp_path / "neg.npy", np.full((2, 784), -3, np.int16))
    assert main(["predict", str(model_path), str(tmp_path / "neg.npy")]) == 1
    assert "0-255" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing.npz"), str(tmp_path / "bad.npy")]) == 1
    assert "missing.npz" in capsys.readouterr().err
    assert main(["predict", str(model_path), str(d / "t10k-images-idx3-ubyte.gz"),
                 "--labels", str(d / "train-labels-idx1-ubyte.gz")]) == 1
    assert "60000 labels for 10000 images" in capsys.readouterr().err


def test_train_quiet_options_and_history_png(mnist_path, tmp_path, capsys):
    png = tmp_path / "h.png"
    extra = ["--quiet", "--activation", "tanh", "--optimizer", "adam", "--schedule", "step", "--dropout", "0.1",
             "--batch-norm", "--val-split", "0.1", "--threads", "1", "--hidden", "32", "16"]
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    if has_mpl:
        extra += ["--history-png", str(png)]
    rc = main(_tiny_train(mnist_path, "", *extra))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and ACC.search(lines[0]), captured.out  # quiet: the result line only
    assert captured.err == ""  # no progress bar either
    assert not list(tmp_path.glob("*.npz"))  # --out '' saves nothing
    if has_mpl:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, expect", [
    ([], "required"),
    (["nope"], "invalid choice"),
    (["train", "--activation", "softplus"], "invalid choice"),
    (["train", "--epochs", "0"], "positive integer"),
    (["train", "--lr", "-1"], "finite number >= 0"),
    (["train", "--dropout", "1.5"], "in [0, 1)"),
    (["train", "--dropout", "nan"], "in [0, 1)"),
    (["train", "--dropout", "0.9999999999"], "argument --dropout: expected a number below 1 in float32"),
    (["train", "--lr", "1e39"], "argument --lr: expected a number that fits in float32"),
    (["train", "--lr", "1e-50"], "argument --lr: expected a number > 0 in float32"),
    (["train", "--lr", "fast"], "argument --lr: expected a number"),
    (["train", "--weight-decay", "1e308"], "argument --weight-decay: expected a number that fits in float32"),
    (["train", "--hidden"], "expected at least one argument"),
    (["train", "--bogus"], "unrecognized arguments"),
    (["predict", "model.npz"], "required"),
])
def test_bad_flags_exit_2(argv, expect, capsys):
    assert main(argv) == 2
    assert expect in capsys.readouterr().err


def test_help_exits_0_and_states_each_default_once(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "--weight-decay" in out and "98% test accuracy" in out and "%%" not in out
    assert "(default: None)" not in out and not re.search(r"\(default:[^)]*\) \(default:", out)
    for shown in ("activation (default: relu)", "optimizer (default: sgd)", "mini-batch size (default: 128)",
                  "training epochs (default: 20)", "hidden layer (default: 0.1)", "(default: 0)"):
        assert shown in out


def test_missing_data_dir_is_a_clean_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "none"), "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastdl train: error:") and "not a directory" in err


def test_defaults_are_the_measured_ones():
    """The flags whose MNIST accuracy (>= 98%) was measured; change them only with a new measurement."""
    args = build_parser().parse_args(["train"])
    assert vars(args) | {"func": None} == {
        "command": "train", "func": None, "data": None, "hidden": [256, 128], "activation": "relu",
        "optimizer": "sgd", "lr": None, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "dropout": 0.1,
        "batch_norm": False, "batch_size": 128, "epochs": 20, "schedule": "cosine", "seed": 0, "threads": None,
        "val_split": 0.0, "out": "model.npz", "history_png": None, "quiet": False, "limit_train": None,
        "limit_test": None}
    assert DEFAULT_LR["sgd"] == 0.05
    assert {k: getattr(args, k) for k in TRAIN_DEFAULTS} == TRAIN_DEFAULTS


def test_bench_runs_the_checkout_script(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    assert main(["bench"]) == 1
    assert "bench/run_all.py" in capfd.readouterr().err
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "run_all.py").write_text(
        "import sys\nprint('BENCH', sys.argv[1:])\nsys.exit(3 if '--fail' in sys.argv else 0)\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # found from a subdirectory too
    assert main(["bench", "--quick", "--only", "gemm"]) == 0
    assert "BENCH ['--quick', '--only', 'gemm']" in capfd.readouterr().out
    assert main(["bench", "--fail"]) == 3  # the suite's exit status is the command's
    script = tmp_path / "bench" / "run_all.py"
    monkeypatch.chdir(tmp_path.parent)
    assert main(["bench", "--script", str(script), "--", "-n", "3"]) == 0
    assert "BENCH ['-n', '3']" in capfd.readouterr().out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fastdl ") and "ISA:" in out and "MNIST:" in out


def test_python_dash_m_subprocess(mnist_path, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "fastdl", *_tiny_train(mnist_path, tmp_path / "m.npz", "--quiet")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert ACC.search(r.stdout) and (tmp_path / "m.npz").exists()
    r = subprocess.run([sys.executable, "-m", "fastdl", "train", "--optimizer", "rmsprop"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "invalid choice: 'rmsprop'" in r.stderr


def test_default_train_reaches_98_percent(mnist_path, tmp_path, capsys):
    """The whole default run (20 epochs, ~25 s on 2 idle cores): the issue's promise, checked in CI."""
    assert main(["train", "--data", str(mnist_path), "--out", str(tmp_path / "m.npz")]) == 0
    m = ACC.search(capsys.readouterr().out)
    assert float(m.group(1)) >= 98.0
