"""fastdl's benchmark suite (issue 4): every benchmark, the machine's limits, thread scaling, SUMMARY.md.

    python bench/run_all.py [--quick] [--out DIR] [--threads N] [--only NAMES] [--no-scaling]
                            [--no-torch] [--mnist DIR]
    python -m fastdl bench [same options]          (calls main(argv))

NAMES: comma-separated benchmarks — gemm, kernels, training, contention, scaling, data, conv — each optionally followed by
`:SUBSTRING` to run only its cases whose names contain it (`kernels:relu`, `gemm:2048`,
`training:batch 128`; repeat a name for several substrings). Default: all of them.

Order: the machine's limits (FP32 FMA peak on 1 and N threads, STREAM triad at an L2-size and a
DRAM-size array), then GEMM, kernels and training on N threads in this process, the contention
benchmark (the same beside a busy-loop process, fastdl also at 1 thread), then the same GEMM
sweep and the batch-128 epoch on 1 thread in child processes (OpenBLAS reads its thread count once,
at import) for the thread-scaling table. Writes <name>.md / <name>.json (+ PNG plots when
matplotlib is installed) per benchmark and SUMMARY.md / SUMMARY.json with every bar of issue 4:
target, measured value, PASS or FAIL. A wrong result from any fastdl kernel raises
common.BenchCheckError before it is timed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402 - must set the thread count before numpy is imported

BENCHES = ["gemm", "kernels", "training", "contention", "scaling", "data", "conv"]


def parse_only(text):
    """'gemm,kernels:relu,kernels:tanh' -> {'gemm': None, 'kernels': ['relu', 'tanh']} (None: all cases)."""
    if not text:
        return {b: None for b in BENCHES}
    sel = {}
    for token in text.split(","):
        token = token.strip()
        if not token:
            continue
        name, _, sub = token.partition(":")
        name = name.strip().lower()
        if name not in BENCHES:
            raise SystemExit(f"run_all: unknown benchmark {name!r} in --only (choose from {', '.join(BENCHES)})")
        if sub:
            if sel.get(name, []) is not None:
                sel.setdefault(name, []).append(sub.strip())
        else:
            sel[name] = None
    return sel




def isa_bar():
    """Run-time dispatch: every ISA path this CPU can execute gives correct GEMM and ReLU results."""
    import numpy as np  # noqa: PLC0415
    from fastdl import _C, ops  # noqa: PLC0415

    order = ["generic", "avx2", "avx512"]
    best, prev = _C.best_isa(), _C.get_isa()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 53), dtype=np.float32)
    b = rng.standard_normal((29, 53), dtype=np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64).T
    ok, seen = True, []
    try:
        for isa in order[: order.index(best) + 1]:
            _C.set_isa(isa)
            err = common.rel_error(ops.matmul(a, b, trans_b=True), ref)
            relu_ok = bool(np.array_equal(ops.relu(a), np.maximum(a, 0)))
            ok = ok and err < 1e-5 and relu_ok
            seen.append(f"{isa} ({'ok' if err < 1e-5 and relu_ok else 'WRONG'})")
    finally:
        _C.set_isa(prev)
    not_here = order[order.index(best) + 1:]
    measured = (f"runs {prev} (best this CPU executes: {best}); paths checked here: {', '.join(seen)}"
                + (f"; {', '.join(not_here)} cannot execute on this CPU (compiled in, not run)" if not_here else ""))
    return common.bar("one wheel, kernels chosen at run time", "no crash; every executable path correct", measured, ok)


def run_child(script, threads, out, cfg, extra):
    """A benchmark in a child process at another thread count; returns its JSON (or None on failure)."""
    cmd = [sys.executable, str(HERE / script), "--threads", str(threads), "--out", str(out), "--rounds", str(cfg.rounds),
           "--max-wait", str(cfg.max_wait)]
    cmd += ["--tiny"] if cfg.tiny else ["--quick"] if cfg.quick else []
    cmd += extra
    print(f"scaling: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return None, f"{script} --threads {threads} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
    name = {"bench_gemm.py": "gemm", "bench_training.py": "training"}[script]
    return json.loads((Path(out) / f"{name}.json").read_text()), None


def scaling(cfg, sel, results, args):
    """GEMM sweep and the batch-128 epoch on 1 thread (child processes) against this run's N threads."""
    if cfg.threads == 1:
        return None
    out = cfg.out / "threads-1"
    report = {"threads": [1, cfg.threads], "gemm": [], "training": [], "errors": []}
    if "gemm" in results:
        extra = ["--cases", ",".join(sel["gemm"])] if sel.get("gemm") else []
        one, err = run_child("bench_gemm.py", 1, out, cfg, extra)
        if err:
            report["errors"].append(err)
        else:
            many = {r["case"]: r for r in results["gemm"]["data"]["results"]}
            for r in one["results"]:
                m = many.get(r["case"])
                if m:
                    report["gemm"].append({
                        "case": r["case"], "numpy_1t": r["numpy_gflops"], "numpy_nt": m["numpy_gflops"],
                        "fastdl_1t": r["fastdl_gflops"], "fastdl_nt": m["fastdl_gflops"],
                        "numpy_scaling": m["numpy_gflops"] / r["numpy_gflops"],
                        "fastdl_scaling": m["fastdl_gflops"] / r["fastdl_gflops"]})
    tr = results.get("training")
    if tr and any(r["batch"] == 128 for r in tr["data"]["results"]):
        extra = ["--batches", "128", "--skip-98"] + (["--no-torch"] if args.no_torch else [])
        extra += ["--mnist", args.mnist] if args.mnist else []
        one, err = run_child("bench_training.py", 1, out, cfg, extra)
        if err:
            report["errors"].append(err)
        else:
            many = next(r for r in tr["data"]["results"] if r["batch"] == 128)
            r1 = next((r for r in one["results"] if r["batch"] == 128), None)
            for name in ("fastdl", "numpy", "torch"):
                if r1 and name in r1 and name in many:
                    report["training"].append({
                        "contender": name, "epoch_seconds_1t": r1[name]["epoch_seconds"],
                        "epoch_seconds_nt": many[name]["epoch_seconds"],
                        "scaling": r1[name]["epoch_seconds"] / many[name]["epoch_seconds"]})
    n = cfg.threads
    lines = [f"# Thread scaling: 1 vs {n} threads", "",
             "1-thread numbers come from child processes run right after the main run (OpenBLAS fixes its thread "
             f"count at import); {n}-thread numbers are the main run's. Scaling = rate at {n} threads / rate at 1.",
             ""]
    if report["gemm"]:
        lines += ["## GEMM (GFLOP/s)", "", common.markdown_table(
            ["case", "NumPy 1t", f"NumPy {n}t", "NumPy scaling", "fastdl 1t", f"fastdl {n}t", "fastdl scaling"],
            [[g["case"], f"{g['numpy_1t']:.1f}", f"{g['numpy_nt']:.1f}", f"{g['numpy_scaling']:.2f}×",
              f"{g['fastdl_1t']:.1f}", f"{g['fastdl_nt']:.1f}", f"{g['fastdl_scaling']:.2f}×"] for g in report["gemm"]]),
            ""]
    if report["training"]:
        lines += ["## MNIST epoch at batch 128 (seconds)", "", common.markdown_table(
            ["contender", "1 thread", f"{n} threads", "scaling"],
            [[t["contender"], f"{t['epoch_seconds_1t']:.3f}", f"{t['epoch_seconds_nt']:.3f}", f"{t['scaling']:.2f}×"]
             for t in report["training"]]), ""]
    if report["errors"]:
        lines += ["Errors: " + "; ".join(report["errors"]), ""]
    md = "\n".join(lines)
    common.write_report(cfg.out, "scaling", md, report)
    plot_scaling(cfg, report)
    return {"name": "scaling", "markdown": md, "data": report}


def plot_scaling(cfg, report):
    labels, values = [], []
    for g in report["gemm"]:
        labels += [f"{g['case']} NumPy", f"{g['case']} fastdl"]
        values += [g["numpy_scaling"], g["fastdl_scaling"]]
    for t in report["training"]:
        labels.append(f"epoch b128 {t['contender']}")
        values.append(t["scaling"])
    common.plot_bars(cfg.out / "scaling.png", f"speed-up from 1 to {cfg.threads} threads", labels, values,
                     ref=float(cfg.threads), xlabel=f"rate at {cfg.threads} threads / rate at 1 thread")


BAR_ORDER = [  # issue 4's order: GEMM, layers, sweep, head and output layer, elementwise, fused, overhead,
    "GEMM 2048³",  # training, dispatch, accuracy
    "MLP ", "batch sweep", "small head", "output layer", "elementwise", "fused linear",
    "per-call", "MNIST epoch", "same accuracy", "one wheel", "GEMM error", "kernel error",
]


def bar_rank(b):
    return next((i for i, p in enumerate(BAR_ORDER) if b["bar"].startswith(p)), len(BAR_ORDER))


def summary(cfg, info, limits, results, bars, notes, loads, started):
    lines = [
        "# fastdl benchmark summary (issue 4)", "",
        f"{cfg.mode()}, {info['date']}, {cfg.threads} threads for every contender, "
        f"{time.perf_counter() - started:.0f} s in all. CPU: {info['cpu']} ({info['cpus_usable']} usable CPUs). "
        f"NumPy {info['numpy']} ({info['numpy_blas']}); fastdl {info['fastdl']}, ISA {info['fastdl_isa']}, "
        f"{info['compiler']}" + (f"; {info['torch']}" if info.get("torch") else "") + ".",
        f"Load average (1, 5, 15 min) at the start {loads['start']}, at the end {loads['end']}: other processes "
        "share this machine, so every number is a same-run ratio or a fraction of a limit measured in this run.",
        "",
        "## The bars", "",
        common.bars_markdown(bars), "",
        "## The machine's limits (measured in this run)", "",
        limits.markdown(), "",
        "## Reports", "",
    ]
    for name, res in results.items():
        lines.append(f"- [{name}](issue16/conv.md)" if name == "conv" else f"- [{name}]({name}.md)")
    lines.append("")
    if notes:
        lines += ["## Not run", ""] + [f"- {n}" for n in notes] + [""]
    if "scaling" in results:
        lines += [results["scaling"]["markdown"].replace("# Thread scaling", "## Thread scaling", 1)
                  .replace("\n## ", "\n### ").replace("### Thread scaling", "## Thread scaling"), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer and smaller cases, short phases, no time-to-98%%")
    ap.add_argument("--tiny", action="store_true", help="smallest sizes, 2 rounds: a smoke test, not a measurement")
    ap.add_argument("--out", default=None, help="directory for the reports (default bench/results)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every contender (default: usable CPUs)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 7, quick 5)")
    ap.add_argument("--only", default=None, help="comma-separated NAME or NAME:SUBSTRING, NAME in "
                    f"{', '.join(BENCHES)} (default: all)")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1-thread runs")
    ap.add_argument("--no-torch", action="store_true", help="do not run PyTorch even when installed")
    ap.add_argument("--mnist", default=None, help="directory of the MNIST IDX files")
    ap.add_argument("--max-wait", type=float, default=None, help="seconds to wait, per case, for other processes "
                    "to leave the CPUs idle (default 5, quick 0); the load seen is reported either way")
    args = ap.parse_args(argv)
    sel = parse_only(args.only)
    if args.no_scaling:
        sel.pop("scaling", None)

    started = time.perf_counter()
    threads = common.setup_threads(args.threads)
    cfg = common.Config(threads=threads, quick=args.quick, tiny=args.tiny, out=args.out, rounds=args.rounds,
                        max_wait=args.max_wait)
    cfg.out.mkdir(parents=True, exist_ok=True)
    loads = {"start": common.load_average()}
    info = common.machine()
    print(f"fastdl benchmark suite: {cfg.mode()}, {threads} threads, out {cfg.out}; load average {loads['start']}",
          flush=True)

    limits = common.Limits(cfg).measure()
    print("machine limits:\n" + limits.markdown(), flush=True)
    common.write_report(cfg.out, "limits", "# Machine limits measured in this run\n\n" + limits.markdown(),
                        {"machine": info, "config": cfg.as_dict(), "load_average": common.load_average(),
                         "limits": limits.data})

    import bench_contention  # noqa: PLC0415 - after setup_threads
    import bench_gemm  # noqa: PLC0415
    import bench_kernels  # noqa: PLC0415
    import bench_training  # noqa: PLC0415

    results, notes = {}, []
    if "gemm" in sel:
        results["gemm"] = bench_gemm.run(cfg.derive(sel["gemm"]), limits)
    if "kernels" in sel:
        results["kernels"] = bench_kernels.run(cfg.derive(sel["kernels"]), limits)
    if "training" in sel:
        try:
            results["training"] = bench_training.run(
                cfg.derive(sel["training"]), limits, batches=[32, 128] if cfg.tiny else [32, 128, 512],
                mnist=args.mnist, use_torch=not args.no_torch, time_to_98=not cfg.quick)
        except FileNotFoundError as e:  # no MNIST here: say so, run the rest
            notes.append(f"training: {e}")
            print(f"training not run: {e}", flush=True)
        if "training" in results and results["training"]["data"]["missing"]:
            for k, v in results["training"]["data"]["missing"].items():
                notes.append(f"training, {k}: {v}")
    if "contention" in sel:
        results["contention"] = bench_contention.run(cfg.derive(sel["contention"]), busy=1, mnist=args.mnist,
                                                     use_torch=not args.no_torch)
    if "data" in sel:
        import bench_data  # noqa: PLC0415 - after setup_threads

        results["data"] = bench_data.run(cfg.derive(sel["data"]), mnist=args.mnist)
    if "conv" in sel:
        import bench_conv  # noqa: PLC0415 - after setup_threads

        conv_cfg = cfg.derive(sel["conv"])
        conv_cfg.out = cfg.out / "issue16"   # issue 16's reports in their own folder, as bench_conv.py alone writes
        results["conv"] = bench_conv.run(conv_cfg, limits, mnist=args.mnist, use_torch=not args.no_torch)
    if "kernels" in results and results["kernels"]["data"]["skipped_missing_ops"]:
        notes.append("kernels not in fastdl.ops in this build (their cases skipped): "
                     + "; ".join(results["kernels"]["data"]["skipped_missing_ops"]))
    if "scaling" in sel:
        sc = scaling(cfg, sel, results, args)
        if sc:
            results["scaling"] = sc

    bars = [b for res in results.values() for b in res.get("bars", [])]
    bars.append(isa_bar())
    bars.sort(key=bar_rank)
    loads["end"] = common.load_average()
    md = summary(cfg, info, limits, results, bars, notes, loads, started)
    data = {"machine": info, "config": cfg.as_dict(), "load_average": loads, "limits": limits.data, "bars": bars,
            "notes": notes, "seconds": time.perf_counter() - started,
            "reports": {name: "issue16/conv.json" if name == "conv" else f"{name}.json" for name in results}}
    md_path, js_path = common.write_report(cfg.out, "SUMMARY", md, data)
    print("\n" + common.bars_markdown(bars))
    print(f"\nwrote {md_path} and {js_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
