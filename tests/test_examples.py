"""The examples run (as scripts, against the installed package) and print what their docstrings claim."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, *args, cwd):
    r = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_xor_story(tmp_path):
    out = run_example("xor.py", cwd=tmp_path)
    # 1. least squares: the constant 1/2
    assert "w = [0.0, 0.0], b = 0.500000" in out
    assert "predictions: [0.5, 0.5, 0.5, 0.5]" in out
    # 2. the hand-set ReLU network: exactly XOR
    assert "hidden layer: [[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 1.0]]" in out
    assert "network output: [0.0, 1.0, 1.0, 0.0]" in out and "computes XOR exactly: True" in out
    # 3. a trained network learns it
    assert "predicted classes: [0, 1, 1, 0]" in out and "learned XOR: True" in out


def test_universal_approximation(tmp_path):
    widths = [1, 4, 16, 32]
    out = run_example("universal_approximation.py", "--widths", *map(str, widths), cwd=tmp_path)
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0].isdigit():
            rows[int(parts[0])] = [float(v) for v in parts[1:]]
    assert sorted(rows) == widths, out
    step, relu, sig, relu_t = (np.array([rows[n][k] for n in widths]) for k in range(4))
    # the constructions: errors shrink with width, within the textbook bounds for sin on [-pi, pi]
    assert np.all(np.diff(step) < 0) and np.all(np.diff(relu[1:]) < 0)
    h_step = 2 * np.pi / (np.array(widths) + 1)          # L = max|sin'| = 1: error <= L h
    h_relu = 2 * np.pi / np.array(widths)                # M = max|sin''| = 1: error <= M h^2 / 8
    assert np.all(step <= h_step + 1e-4)
    assert np.all(relu[1:] <= h_relu[1:] ** 2 / 8 + 1e-4)
    # trained networks: wide ones fit sin to within a little more than the noise (0.05)
    assert sig[-1] < 0.1 and relu_t[-1] < 0.15
    assert sig[-1] < sig[0] and relu_t[-1] < relu_t[0]


def test_universal_approximation_plot(tmp_path):
    pytest.importorskip("matplotlib")
    run_example("universal_approximation.py", "--widths", "2", "8", "--steps", "50", "--plot", "fits.png",
                cwd=tmp_path)
    assert (tmp_path / "fits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_linear_regression_agrees_with_lstsq(tmp_path):
    out = run_example("linear_regression.py", cwd=tmp_path)
    diffs = {m.group(1).strip(): float(m.group(2))
             for m in re.finditer(r"max \|(.+?) - lstsq\| += ([0-9.e+-]+)", out)}
    assert set(diffs) == {"closed form", "GD by hand", "fastdl fit"}, out
    assert diffs["closed form"] < 1e-6
    assert diffs["GD by hand"] < 1e-6
    assert diffs["fastdl fit"] < 1e-3   # float32 gradient descent
    assert "stopped by tol" in out


def test_mnist_example_one_epoch(mnist_path, tmp_path):
    out = run_example("mnist_mlp.py", "1", "--data", str(mnist_path), cwd=tmp_path)
    acc = float(re.search(r"epoch 1/1: last batch loss [0-9.]+, test accuracy ([0-9.]+)", out).group(1))
    assert acc > 0.94, out
    assert (tmp_path / "mnist_mlp.npz").exists()


@pytest.mark.parametrize("model, n, floor", [("lenet5", 3000, 0.6), ("cnn", 512, 0.0)])
def test_mnist_cnn_example_small_subset(mnist_path, tmp_path, model, n, floor):
    out = run_example("mnist_cnn.py", "--model", model, "--epochs", "1", "--batch-size", "32", "--train-size",
                      str(n), "--test-size", "500", "--data", str(mnist_path), cwd=tmp_path)
    assert f"{n} training and 500 test images, batch size 32, 1 epochs" in out
    acc = float(re.search(r"epoch 1/1: last batch loss [0-9.]+, test accuracy ([0-9.]+)", out).group(1))
    assert acc >= floor, out           # LeNet-5 after 94 steps: well above chance (0.1)
    assert f"test accuracy: {100 * acc:.2f}%" in out
    from fastdl import nn

    kinds = [type(m).__name__ for m in nn.load(tmp_path / "mnist_cnn.npz")]
    assert kinds.count("Conv2d") == (2 if model == "lenet5" else 4)


def test_mnist_example_without_data_says_so_in_one_line(tmp_path):
    """Offline, nothing in $FASTDL_DATA, the cache or ../shared/data/mnist: one line, exit 1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "FASTDL_DATA"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), FASTDL_MNIST_URL=f"http://127.0.0.1:{port}/", no_proxy="127.0.0.1")
    (tmp_path / "cwd").mkdir()
    r = subprocess.run([sys.executable, str(EXAMPLES / "mnist_mlp.py"), "1"], cwd=tmp_path / "cwd", env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert r.stderr.startswith("mnist_mlp.py: MNIST not found") and r.stderr.count("\n") == 1, r.stderr
    assert "--data DIR" in r.stderr and "$FASTDL_DATA" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, str(EXAMPLES / "mnist_mlp.py"), "--data", str(tmp_path / "none")],
                       cwd=tmp_path / "cwd", env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not a directory" in r.stderr, r.stderr
