"""Smoke tests of the benchmark suite (bench/): it runs end to end on tiny sizes, writes its reports,
and refuses to time a wrong result. Timings here mean nothing; the code paths are the point."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import fastdl
from fastdl import ops

BENCH = Path(__file__).resolve().parents[1] / "bench"
if not (BENCH / "run_all.py").exists():
    pytest.skip("bench/ is not beside the tests (installed without the source checkout)", allow_module_level=True)
sys.path.insert(0, str(BENCH))

import bench_gemm  # noqa: E402
import bench_training  # noqa: E402
import common  # noqa: E402
import numpy_mlp  # noqa: E402
import run_all  # noqa: E402


@pytest.fixture(autouse=True)
def restore_threads():
    """The suite sets fastdl's thread count and the BLAS environment: give both back."""
    env, threads = dict(os.environ), fastdl.get_num_threads()
    yield
    os.environ.clear()
    os.environ.update(env)
    fastdl.set_num_threads(threads)


def tiny(out, only, *extra):
    return ["--tiny", "--threads", "1", "--out", str(out), "--only", only, "--no-torch", "--no-scaling", *extra]


def test_run_all_tiny_writes_every_report(tmp_path, mnist_path):
    rc = run_all.main(tiny(tmp_path, "gemm:64,kernels:relu fwd,kernels:SGD,kernels:overhead,training:batch 128",
                           "--mnist", str(mnist_path)))
    assert rc == 0
    for name in ("limits", "gemm", "kernels", "training", "SUMMARY"):
        assert (tmp_path / f"{name}.md").stat().st_size > 0
        json.loads((tmp_path / f"{name}.json").read_text())
    gemm = json.loads((tmp_path / "gemm.json").read_text())
    assert [r["case"] for r in gemm["results"]] == ["64³"]
    r = gemm["results"][0]
    assert r["max_rel_error_fastdl"] <= bench_gemm.RTOL and r["fastdl_gflops"] > 0
    kernels = json.loads((tmp_path / "kernels.json").read_text())
    names = [r["case"] for r in kernels["results"]]
    assert any(n.startswith("relu fwd") for n in names) and any(n.startswith("SGD") for n in names)
    assert not any("bwd" in n for n in names)  # --only selected the forward cases
    for rec in kernels["results"]:
        if rec["group"] == "bandwidth":
            assert rec["fastdl_gbs"] > 0 and rec["triad_gbs_same_n"] > 0
    summary = json.loads((tmp_path / "SUMMARY.json").read_text())
    assert summary["limits"]["fma_peak"]["1"]["gflops"] > 0
    assert summary["load_average"]["start"]
    bars = {b["bar"] for b in summary["bars"]}
    assert any(b.startswith("per-call overhead") for b in bars)
    assert any(b.startswith("one wheel") for b in bars)
    md = (tmp_path / "SUMMARY.md").read_text()
    assert "| bar | target | measured | pass |" in md
    if common.have_matplotlib():
        for png in ("gemm_square.png", "gemm_speedup.png", "kernels_speedup.png", "kernels_bandwidth.png"):
            assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    training = json.loads((tmp_path / "training.json").read_text())
    assert [r["batch"] for r in training["results"]] == [128]
    rec = training["results"][0]
    assert 0.0 <= rec["numpy"]["test_accuracy"] <= 1.0 and rec["numpy"]["epoch_seconds"] > 0
    assert "numpy" in training["check_errors"]


def test_wrong_kernel_result_raises(tmp_path, monkeypatch):
    real = ops.relu

    def off_by_one_ulp_too_many(x, out=None):  # a subtly wrong relu: a tiny positive leak
        y = real(x, out=out)
        y[x < 0] = 1e-3
        return y

    monkeypatch.setattr(ops, "relu", off_by_one_ulp_too_many)
    with pytest.raises(common.BenchCheckError, match="relu forward"):
        run_all.main(tiny(tmp_path, "kernels:relu fwd"))


def test_wrong_gemm_result_raises(tmp_path, monkeypatch):
    real = ops.matmul

    def slightly_wrong(a, b, **kw):
        c = real(a, b, **kw)
        c.flat[0] += 1e-3 * (abs(c.flat[0]) + 1)
        return c

    monkeypatch.setattr(ops, "matmul", slightly_wrong)
    with pytest.raises(common.BenchCheckError, match="GEMM 64³"):
        run_all.main(tiny(tmp_path, "gemm:64"))


def test_wrong_training_step_raises(tmp_path, monkeypatch, mnist_path):
    def no_momentum(self):  # plain SGD instead of SGD with momentum: must not pass the check
        for p, g in zip(self.w + self.b, self.dw + self.db):
            p -= self.lr * g
        self.steps += 1

    monkeypatch.setattr(numpy_mlp.NumpyMLP, "sgd_step", no_momentum)
    with pytest.raises(common.BenchCheckError, match="training numpy"):
        run_all.main(tiny(tmp_path, "training:batch 128", "--mnist", str(mnist_path)))


def test_numpy_mlp_matches_float64_reference():
    rng = np.random.default_rng(3)
    layers = [(rng.standard_normal((6, 5)).astype(np.float32) * 0.5, rng.standard_normal(6).astype(np.float32)),
              (rng.standard_normal((3, 6)).astype(np.float32) * 0.5, rng.standard_normal(3).astype(np.float32))]
    x = rng.standard_normal((7, 5)).astype(np.float32)
    y = rng.integers(0, 3, 7)
    net = numpy_mlp.NumpyMLP(layers, lr=bench_training.LR, momentum=bench_training.MOMENTUM)
    for _ in range(3):
        net.train_step(x, y)
    ref = bench_training.reference_steps(layers, x, y, 3)
    for (w, b), (rw, rb), (w0, b0) in zip(zip(net.w, net.b), ref, layers):
        assert common.rel_error(w - w0, rw - w0) < 1e-5
        assert common.rel_error(b - b0, rb - b0) < 1e-5


def test_only_parsing_and_rel_error():
    assert run_all.parse_only("gemm,kernels:relu,kernels:tanh") == {"gemm": None, "kernels": ["relu", "tanh"]}
    assert run_all.parse_only("kernels,kernels:relu") == {"kernels": None}
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.parse_only("gem")
    assert common.rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert common.rel_error(np.array([1.0, 2.5]), np.array([1.0, 2.0])) == pytest.approx(0.25)
    assert common.rel_error(np.array([np.nan]), np.array([1.0])) == float("inf")
    with pytest.raises(common.BenchCheckError):
        common.check("x", np.array([1.0, 2.1]), np.array([1.0, 2.0]), 1e-3)


def test_scaling_runs_a_one_thread_child(tmp_path):
    rc = run_all.main(["--tiny", "--threads", "2", "--out", str(tmp_path), "--only", "gemm:64,scaling",
                       "--no-torch"])
    assert rc == 0
    scaling = json.loads((tmp_path / "scaling.json").read_text())
    assert not scaling["errors"]
    assert [g["case"] for g in scaling["gemm"]] == ["64³"]
    assert scaling["gemm"][0]["fastdl_1t"] > 0
    assert (tmp_path / "threads-1" / "gemm.json").exists()
    assert "Thread scaling" in (tmp_path / "SUMMARY.md").read_text()


@pytest.mark.parametrize("n", [1000, 100_003, 6_500_003])  # the last one streams its stores
def test_stream_triad_computes_the_triad(n):
    rng = np.random.default_rng(5)
    b, c = rng.standard_normal(n + 16).astype(np.float32)[1:n + 1], rng.standard_normal(n).astype(np.float32)
    a = np.empty(n + 16, np.float32)[3:n + 3]
    fastdl._C.bench.stream_triad(a, b, c, np.float32(3.0), 2)
    np.testing.assert_allclose(a, b + np.float32(3.0) * c, rtol=1e-6, atol=1e-6)


def test_contention_benchmark_runs_beside_a_busy_process(tmp_path, mnist_path):
    rc = run_all.main(["--tiny", "--threads", "2", "--out", str(tmp_path), "--only",
                       "contention:head,contention:batch 128", "--no-torch", "--no-scaling", "--mnist", str(mnist_path)])
    assert rc == 0
    rep = json.loads((tmp_path / "contention.json").read_text())
    assert rep["busy_processes"] == 1
    assert [r["case"] for r in rep["results"]] == ["10-class head X·Wᵀ 128x128->10", "MNIST epoch, batch 128"]
    for r in rep["results"]:
        assert r["fastdl 2 threads"]["seconds"] > 0 and r["fastdl 1 thread"]["seconds"] > 0 and r["numpy"]["seconds"] > 0
    assert any("vs 1 thread" in b["bar"] for b in rep["bars"])
    assert "busy-loop process(es) ran for the whole benchmark" in (tmp_path / "contention.md").read_text()


def test_conv_benchmark_tiny_writes_its_report(tmp_path, mnist_path):
    """bench_conv through run_all (reports in OUT/issue16/), PyTorch included when installed: every case checked
    and timed, the epochs of both models on a few rows, the memory children."""
    import importlib.util

    torch_args = [] if importlib.util.find_spec("torch") else ["--no-torch"]
    rc = run_all.main(["--tiny", "--threads", "2", "--out", str(tmp_path), "--only", "conv", "--no-scaling",
                       "--mnist", str(mnist_path), *torch_args])
    assert rc == 0
    rep = json.loads((tmp_path / "issue16" / "conv.json").read_text())
    convs = [r for r in rep["kernels"] if r["kind"] == "conv"]
    assert len(convs) == 12 and {r["op"] for r in convs} == {"forward", "dX", "dW"}
    for r in convs:
        assert r["fastdl"]["ms"] > 0 and r["numpy"]["ms"] > 0 and r["fastdl"]["rel_error"] < 1e-4
        assert 0 < r["fastdl"]["peak_fraction"] and r["speedup_vs_numpy"] > 0
    assert {r["kind"] for r in rep["kernels"]} == {"conv", "pool", "batchnorm"}
    assert [r["model"] for r in rep["epochs"]] == ["lenet5", "cnn"]
    assert all(0 <= r["fastdl"]["test_accuracy"] <= 1 for r in rep["epochs"])
    assert rep["memory"]["fastdl"]["vm_hwm_kib"] > 0 and rep["machine"]["cpu"] and rep["load_average_before"]
    if not torch_args:
        assert all("torch" in r for r in rep["kernels"]) and "torch" in rep["memory"]
        assert any(b["bar"].startswith("LeNet-5 epoch") for b in rep["bars"])
    assert "| bar | target | measured | pass |" in (tmp_path / "issue16" / "conv.md").read_text()
    assert "[conv](issue16/conv.md)" in (tmp_path / "SUMMARY.md").read_text()


def test_numpy_conv_matches_float64_loops():
    import numpy_conv

    assert numpy_conv.check_against_loops() < 1e-5
