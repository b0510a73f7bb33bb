"""The command line end to end (train -> predict, bench, info, bad flags) on a tiny budget."""
import contextlib
import gzip
import importlib.util
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
import tracemalloc

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
    (["train", "--epochs", "0"], "argument --epochs: value must be >= 1, got 0"),
    (["train", "--epochs", "2.5"], "argument --epochs: expected an integer, got '2.5'"),
    (["train", "--seed", "-1"], "argument --seed: value must be >= 0, got -1"),
    (["train", "--lr", "-1"], "argument --lr: value must be > 0.0, got -1.0"),
    (["train", "--dropout", "1.5"], "value must be >= 0.0 and < 1.0, got 1.5"),
    (["train", "--dropout", "nan"], "value must be a finite number >= 0.0 and < 1.0, got nan"),
    (["train", "--dropout", "0.9999999999"], "argument --dropout: value must be >= 0.0 and < 1.0 in float32, which "
                                             "the kernels use; 0.9999999999 becomes 1.0 there"),
    (["train", "--lr", "1e39"], "argument --lr: value=1e+39 does not fit in float32"),
    (["train", "--lr", "1e-50"], "argument --lr: value must be > 0.0 in float32"),
    (["train", "--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
    (["train", "--weight-decay", "1e308"], "argument --weight-decay: value=1e+308 does not fit in float32"),
    (["train", "--weight-decay", "-0.1"], "argument --weight-decay: value must be >= 0.0, got -0.1"),
    (["train", "--hidden"], "expected at least one argument"),
    (["train", "--bogus"], "unrecognized arguments"),
    (["train", "--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
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
    for shown in ("activation (mlp) (default: relu)", "optimizer (default: sgd)", "mini-batch size (default: 128)",
                  "training epochs (default: 20)", "before the last layer) (default: 0.1)", "(default: 0)",
                  "(default: mlp)", "cnn changes the defaults to --epochs 12 --lr 0.01 --dropout 0.5 --batch-norm"):
        assert shown in out


def test_missing_data_dir_is_a_clean_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "none"), "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastdl train: error:") and "not a directory" in err


def test_defaults_are_the_measured_ones():
    """The flags whose MNIST accuracy (>= 98%) was measured; change them only with a new measurement."""
    args = build_parser().parse_args(["train"])
    assert vars(args) | {"func": None} == {
        "command": "train", "func": None, "model": "mlp", "data": None, "hidden": [256, 128], "activation": "relu",
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


# ---------------------------------------------------------------- issue 16: --model lenet5 | cnn


@pytest.mark.parametrize("model, epochs, bound", [
    # The full runs (the bars; bench/results/issue16/accuracy.md): lenet5 (20 epochs) 99.09%, cnn
    # (12 epochs) >= 99.3%. CI runs fewer epochs with a lower bound measured the same way: lenet5 after 2
    # epochs 98.14%, cnn after 1 epoch 98.55% (Zen 5, AVX-512; ~45 s on 2 cores together).
    ("lenet5", 2, 97.5),
    ("cnn", 1, 98.0),
])
def test_image_models_reach_their_accuracy(mnist_path, tmp_path, capsys, model, epochs, bound):
    assert main(["train", "--model", model, "--epochs", str(epochs), "--data", str(mnist_path), "--quiet",
                 "--out", str(tmp_path / "m.npz")]) == 0
    m = ACC.search(capsys.readouterr().out)
    assert m and int(m.group(3)) == epochs and float(m.group(1)) >= bound, m and m.group(0)


@pytest.fixture(scope="module")
def trained_cnns(tmp_path_factory):
    """One tiny run of each image model: {name: (model path, stdout)} and the MNIST dir."""
    d = mnist_dir()
    if not (d / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found in {d} (set FASTDL_MNIST_DIR)")
    out, tmp = {}, tmp_path_factory.mktemp("cli-cnn")
    for name, n in (("lenet5", 2000), ("cnn", 256)):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            rc = main(["train", "--model", name, "--data", str(d), "--limit-train", str(n), "--limit-test", "500",
                       "--epochs", "1", "--batch-size", "32", "--seed", "1", "--out", str(tmp / f"{name}.npz")])
        assert rc == 0, buf.getvalue()
        out[name] = (tmp / f"{name}.npz", buf.getvalue())
    return out, d


def test_train_image_models(trained_cnns):
    runs, _ = trained_cnns
    path, text = runs["lenet5"]
    m = ACC.search(text)
    assert m and int(m.group(3)) == 1, text
    assert float(m.group(1)) > 50.0          # 1 epoch on 2000 images (63 steps): well above chance
    assert "model: LeNet-5 (conv 6, 16; dense 120, 84, 10), 61706 parameters" in text
    assert [type(x).__name__ for x in nn.load(path)] == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU",
                                                         "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear", "ReLU",
                                                         "Linear"]
    path, text = runs["cnn"]
    assert ACC.search(text), text
    assert "model: VGG-style CNN" in text and "468010 parameters, batch norm, dropout 0.5" in text
    kinds = [type(x).__name__ for x in nn.load(path)]
    assert kinds.count("Conv2d") == 4 and kinds.count("BatchNorm2d") == 4 and kinds[-2:] == ["Dropout", "Linear"]


def test_image_model_defaults_and_refused_flags(tmp_path, monkeypatch, capsys):
    import fastdl.__main__ as cli
    from fastdl import models

    seen = {}

    def stop_after_build(name):
        real = getattr(models, name)

        def spy(*a, **k):
            seen[name] = (a, k)
            raise KeyboardInterrupt  # no training: the command exits 130 right after building the model
        return real, spy

    for name in ("lenet5", "cnn"):
        monkeypatch.setattr(models, name, stop_after_build(name)[1])
    monkeypatch.setattr(cli, "_load_mnist", lambda data: ((np.zeros((8, 784), np.float32), np.zeros(8, np.int64)),) * 2)
    assert main(["train", "--model", "cnn"]) == 130
    assert seen["cnn"] == ((10,), dict(batch_norm=True, dropout=0.5, rng=0))
    assert main(["train", "--model", "cnn", "--no-batch-norm", "--dropout", "0.25", "--seed", "4"]) == 130
    assert seen["cnn"] == ((10,), dict(batch_norm=False, dropout=0.25, rng=4))
    assert main(["train", "--model", "lenet5", "--seed", "2"]) == 130
    assert seen["lenet5"] == ((10,), dict(rng=2))
    capsys.readouterr()
    for argv, flag, users in ((["--model", "lenet5", "--dropout", "0.1"], "--dropout", "mlp and cnn"),
                              (["--model", "lenet5", "--batch-n"], "--batch-norm", "mlp and cnn"),
                              (["--model", "cnn", "--hidden", "64"], "--hidden", "mlp"),
                              (["--model", "cnn", "--activation", "tanh"], "--activation", "mlp")):
        assert main(["train", *argv]) == 1
        err = capsys.readouterr().err
        assert err == f"fastdl train: error: {flag} applies to --model {users} only, not to --model {argv[1]}\n"
    # the defaults the CNN changes: only where the flag is not given
    args = build_parser().parse_args(["train", "--model", "cnn", "--epochs", "3"])
    args._explicit = cli._explicit_train_flags(["train", "--model", "cnn", "--epo", "3"])
    cli._apply_model_defaults(args)
    assert (args.epochs, args.lr, args.dropout, args.batch_norm) == (3, 0.01, 0.5, True)
    assert cli.MODEL_DEFAULTS["cnn"]["epochs"] == 12
    args = build_parser().parse_args(["train", "--model", "cnn", "--lr", "0.1"])
    args._explicit = cli._explicit_train_flags(["train", "--model", "cnn", "--lr", "0.1"])
    cli._apply_model_defaults(args)
    assert (args.epochs, args.lr) == (12, 0.1)


def test_predict_image_model_any_image_layout(trained_cnns, tmp_path, capsys):
    runs, d = trained_cnns
    images = read_idx(d / "t10k-images-idx3-ubyte.gz")[:200]  # uint8 (200, 28, 28)
    labels = read_idx(d / "t10k-labels-idx1-ubyte.gz")[:200].astype(np.int64)
    X = images.reshape(200, 1, 28, 28).astype(np.float32) / np.float32(255)
    files = {"u8_nhw.npy": images, "u8_flat.npy": images.reshape(200, 784), "f32_nchw.npy": X,
             "f32_flat.npy": X.reshape(200, 784)}
    for name, arr in files.items():
        np.save(tmp_path / name, arr)
    np.save(tmp_path / "labels.npy", labels)
    for model_name in ("lenet5", "cnn"):
        model_path = runs[model_name][0]
        want = predict(nn.load(model_path), X).argmax(axis=1)
        for name in (*files, "idx"):
            src = d / "t10k-images-idx3-ubyte.gz" if name == "idx" else tmp_path / name
            out = tmp_path / f"{model_name}-{name}.preds.npy"
            assert main(["predict", str(model_path), str(src), "--labels",
                         str(d / "t10k-labels-idx1-ubyte.gz" if name == "idx" else tmp_path / "labels.npy"),
                         "--out", str(out)]) == 0, capsys.readouterr().err
            got = np.load(out)
            np.testing.assert_array_equal(got[:200], want, err_msg=f"{model_name} {name}")
            text = capsys.readouterr().out
            if name != "idx":
                assert f"accuracy: {100 * np.mean(want == labels):.2f}%" in text
        np.save(tmp_path / "one.npy", images[3])         # one image, (28, 28)
        assert main(["predict", str(model_path), str(tmp_path / "one.npy")]) == 0
        assert f"1 images; predicted classes: {want[3]}" in capsys.readouterr().out
    np.save(tmp_path / "rgb.npy", np.zeros((4, 3, 28, 28), np.float32))
    assert main(["predict", str(runs["lenet5"][0]), str(tmp_path / "rgb.npy")]) == 1
    err = capsys.readouterr().err
    assert "images of shape (3, 28, 28); the model starts with a convolution over 1 channel and wants " \
           "(N, 1, H, W) images" in err and err.count("\n") == 1
    np.save(tmp_path / "rows.npy", np.zeros((4, 700), np.float32))
    assert main(["predict", str(runs["cnn"][0]), str(tmp_path / "rows.npy")]) == 1
    assert "or rows of square images" in capsys.readouterr().err


def test_model_input_shapes_for_the_first_layer():
    import fastdl.__main__ as cli

    conv3 = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32)
    assert cli._model_input(conv3, x.reshape(2, 48), "f").shape == (2, 3, 4, 4)
    assert cli._model_input(conv3, x.reshape(2, 3, 4, 4), "f").shape == (2, 3, 4, 4)
    with pytest.raises(cli.CLIError, match="wants \\(N, 3, H, W\\) images or rows"):
        cli._model_input(conv3, x.reshape(2, 12, 4), "f")        # (N, H, W) only for one channel
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    assert cli._model_input(mlp, x.reshape(2, 3, 4, 4), "f").shape == (2, 48)


# ---------------------------------------------------------------- issue 14: files, data, Ctrl-C


@pytest.fixture
def no_mnist_anywhere(tmp_path, monkeypatch):
    """No $FASTDL_DATA, an empty cache under tmp_path, no ../shared/data/mnist, downloads refused."""
    monkeypatch.delenv("FASTDL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FASTDL_MNIST_URL", f"http://127.0.0.1:{port}/")  # nothing listens: refused
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    return tmp_path


def test_offline_train_tells_about_data_flag_and_env(no_mnist_anywhere, capsys):
    assert main(["train", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastdl train: error: MNIST not found") and err.count("\n") == 1, err
    assert "--data DIR" in err and "$FASTDL_DATA" in err and "load_mnist(root)" not in err
    assert "Connection refused" in err  # why the download failed
    assert not (no_mnist_anywhere / "xdg").exists()  # no empty cache directory left behind


def test_info_finds_mnist_where_train_does(no_mnist_anywhere, capsys):
    assert main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "MNIST:" in x)
    assert "not found (looked in" in line and "--data DIR" in line and "$FASTDL_DATA" in line
    d = mnist_dir()
    if not (d / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found in {d} (set FASTDL_MNIST_DIR)")
    shared = no_mnist_anywhere / "shared" / "data" / "mnist"  # ../shared/data/mnist from the working dir
    shared.mkdir(parents=True)
    for name in os.listdir(d):
        (shared / name).symlink_to(d / name)
    assert main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "MNIST:" in x)
    assert line.split() == ["MNIST:", str(shared)]
    # and train, without --data, reads it from there
    assert main(["train", "--limit-train", "500", "--limit-test", "100", "--epochs", "1", "--hidden", "8",
                 "--out", "", "--quiet"]) == 0
    assert ACC.search(capsys.readouterr().out)


def _bad_npy(path, shape, data=b"\0" * 64):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    path.write_bytes(buf.getvalue() + data)
    return path


def test_predict_hostile_inputs_fail_in_one_line_without_allocating(tmp_path, capsys):
    model = tmp_path / "m.npz"
    nn.Sequential(nn.Linear(784, 10, rng=0)).save(model)
    with gzip.open(tmp_path / "bomb-idx3-ubyte.gz", "wb") as f:  # 10 images declared, 64 MiB of zeros
        f.write((2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (10, 28, 28)))
        for _ in range(64):
            f.write(bytes(1 << 20))
    cases = {_bad_npy(tmp_path / "big.npy", (10**6, 784)): "declares shape (1000000, 784)",
             _bad_npy(tmp_path / "huge.npy", (2**40, 784)): "declares shape (1099511627776, 784)",
             tmp_path / "bomb-idx3-ubyte.gz": "has trailing bytes"}
    for path, match in cases.items():
        tracemalloc.start()
        rc = main(["predict", str(model), str(path)])
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and err.startswith("fastdl predict: error:"), err
        assert str(path) in err and match in err, err
        assert peak < 16 << 20, (path, peak)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["predict", str(model), str(tmp_path / "objects.npy")]) == 1
    err = capsys.readouterr().err
    assert "objects.npy: not a readable .npy array" in err and err.count("\n") == 1


def test_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    import fastdl.__main__ as cli

    def too_big(path):
        raise MemoryError

    nn.Sequential(nn.Linear(784, 10, rng=0)).save(tmp_path / "m.npz")
    np.save(tmp_path / "x.npy", np.zeros((1, 784), np.float32))
    monkeypatch.setattr(cli, "_read_images", too_big)
    assert main(["predict", str(tmp_path / "m.npz"), str(tmp_path / "x.npy")]) == 1
    assert capsys.readouterr().err == "fastdl predict: error: out of memory\n"


def _start_training(tmp_path, mnist_path, *extra):
    """`python -m fastdl train` in a child: stdout piped line by line, stderr (the progress bar) to a file."""
    err = open(tmp_path / "stderr.txt", "w")
    p = subprocess.Popen([sys.executable, "-u", "-m", "fastdl", "train", "--data", str(mnist_path),
                          "--limit-test", "500", "--hidden", "32", "--out", str(tmp_path / "m.npz"), *extra],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True,
                         # a shell's background job starts with SIGINT ignored, and Python then keeps
                         # ignoring it: give the child the default disposition, as a terminal would
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err.close()
    return p


def _finish(p):
    try:
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    return out


def test_ctrl_c_saves_the_model_says_after_how_many_epochs_and_exits_130(mnist_path, tmp_path):
    p = _start_training(tmp_path, mnist_path, "--limit-train", "2000", "--batch-size", "32", "--epochs", "1000")
    out = ""
    try:
        for line in p.stdout:  # wait for the first epoch's line
            out += line
            if line.startswith("Epoch 1/1000"):
                break
        p.send_signal(signal.SIGINT)
    finally:
        out += _finish(p)
    err = (tmp_path / "stderr.txt").read_text()
    assert p.returncode == 130, (out, err)
    m = re.search(r"training interrupted after (\d+) epochs? \(Ctrl-C\)", err)
    assert m and int(m.group(1)) >= 1, err
    assert f"after {m.group(1)} epochs (stopped: interrupted); " in out and " s per epoch" in out
    assert "Traceback" not in err
    nn.load(tmp_path / "m.npz")  # saved, and whole


def test_ctrl_c_in_the_first_epoch(mnist_path, tmp_path):
    p = _start_training(tmp_path, mnist_path, "--batch-size", "4", "--epochs", "3")  # 15000 steps an epoch
    try:
        deadline = time.monotonic() + 120
        while "Epoch 1/3" not in (tmp_path / "stderr.txt").read_text():  # the bar: fit has begun
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        p.send_signal(signal.SIGINT)
    finally:
        out = _finish(p)
    err = (tmp_path / "stderr.txt").read_text()
    assert p.returncode == 130, (out, err)
    assert "training interrupted after 0 epochs (Ctrl-C)" in err
    assert "after 0 epochs (stopped: interrupted)" in out and "nan" not in out and "per epoch" not in out
    nn.load(tmp_path / "m.npz")


# ---------------------------------------------------------------- run from a source checkout

def _bare_checkout(tmp_path):
    """A copy of the package's Python files without the compiled extension, as a fresh clone's
    fastdl/ folder is (what `python -m fastdl` finds first when run from the repository root)."""
    import shutil

    import fastdl

    installed = Path(fastdl.__file__).resolve().parent
    root = tmp_path / "checkout"
    shutil.copytree(installed, root / "fastdl", ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__"))
    return root, installed


def test_python_m_fastdl_from_a_source_checkout_uses_the_installed_package(tmp_path):
    root, installed = _bare_checkout(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(installed.parent))
    code = "import fastdl; print(fastdl.__file__); print(fastdl._C.__file__); print(fastdl.get_num_threads() >= 1)"
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pkg, ext, ok = r.stdout.split()
    assert Path(pkg).resolve().parent == installed and Path(ext).resolve().parent == installed and ok == "True"
    r = subprocess.run([sys.executable, "-m", "fastdl", "info"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "fastdl" in r.stdout, r.stderr


def test_a_source_checkout_without_an_installed_package_says_what_to_do(tmp_path):
    root, _ = _bare_checkout(tmp_path)
    # -S: no site-packages, so no installed fastdl either
    r = subprocess.run([sys.executable, "-S", "-c", "import fastdl"], cwd=root, capture_output=True, text=True,
                       timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 1
    assert "is not built" in r.stderr and "pip install ." in r.stderr and "dev_build.sh" in r.stderr


def test_train_builds_its_network_with_models_mlp(tmp_path, monkeypatch):
    # `fastdl train` builds fastdl.models.mlp([784, *hidden, 10], ...), seeded by --seed; its initial weights are
    # those the CLI's own builder gave before models.mlp existed: He uniform everywhere (the output layer too) and
    # each Dropout's seed drawn after its Linear, all from default_rng(seed)
    from fastdl import models

    d = mnist_dir()
    if not (d / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found in {d} (set FASTDL_MNIST_DIR)")
    built = []
    real = models.mlp

    def spy(*a, **k):
        net = real(*a, **k)
        built.append((a, k, [p.data.copy() for p in net.parameters()], [m.seed for m in net
                                                                          if isinstance(m, nn.Dropout)]))
        return net

    monkeypatch.setattr(models, "mlp", spy)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--data", str(d), "--limit-train", "300", "--limit-test", "100", "--epochs", "1",
                     "--hidden", "32", "16", "--seed", "7", "--out", "", "--quiet"]) == 0
    (args, kwargs, weights, seeds), = built
    assert args == ([784, 32, 16, 10],)
    assert kwargs == dict(activation="relu", dropout=0.1, batch_norm=False, rng=7)
    rng = np.random.default_rng(7)
    ref, ref_seeds = [], []
    for i, (a, b) in enumerate([(784, 32), (32, 16), (16, 10)]):
        lin = nn.Linear(a, b, init="kaiming_uniform", rng=rng)
        ref += [lin.weight.data, lin.bias.data]
        if i < 2:
            ref_seeds.append(int(rng.integers(0, 2**63)))
    assert len(weights) == len(ref) and all(np.array_equal(w, r) for w, r in zip(weights, ref))
    assert seeds == ref_seeds
