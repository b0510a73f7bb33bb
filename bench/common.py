"""Shared helpers for fastdl's benchmarks: thread setup, interleaved timing, machine facts, reports.

Method (../shared/docs/kernels.md §5): check correctness first; warm up; time the contenders in
alternating phases (A, B, A, B, ...) separated by a sleep, because NumPy's OpenBLAS pool and
fastdl's OpenMP pool both spin after a call and fight over the cores if run back to back; take the
median over rounds. Import this module BEFORE numpy when the thread count must reach OpenBLAS:
call ``setup_threads`` first.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_count() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def setup_threads(n: int | None) -> int:
    """Give NumPy's BLAS and fastdl the same thread count. Must run before numpy is imported."""
    n = n or cpu_count()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    import fastdl  # noqa: PLC0415 - after the environment is set

    fastdl.set_num_threads(n)
    return n


def machine() -> dict:
    """What ran the benchmark: CPU, cores, NumPy and its BLAS, fastdl's build."""
    import numpy as np  # noqa: PLC0415
    import fastdl  # noqa: PLC0415
    from fastdl import _C  # noqa: PLC0415

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")
        info = cfg["Build Dependencies"]["blas"]
        blas = f"{info.get('name', '?')} {info.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older NumPy: leave it unknown
        pass
    c = _C.config()
    return {
        "cpu": cpu,
        "cpus_usable": cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": blas,
        "fastdl": fastdl.__version__,
        "fastdl_isa": c["isa"],
        "fastdl_threads": c["num_threads"],
        "compiler": c["compiler"],
        "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _cpu_busy_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v) - idle, sum(v)


def other_load(seconds: float = 0.3) -> float | None:
    """CPUs kept busy by everything on the machine over `seconds` (None where /proc/stat is missing).
    Call it while the benchmark itself is idle: then it is the load of other processes."""
    try:
        b0, t0 = _cpu_busy_jiffies()
        time.sleep(seconds)
        b1, t1 = _cpu_busy_jiffies()
    except OSError:
        return None
    return cpu_count() * (b1 - b0) / max(1, t1 - t0)


def wait_for_quiet(max_wait: float, threshold: float = 0.25) -> float | None:
    """Wait (up to max_wait seconds) until other processes keep less than `threshold` CPUs busy.
    Returns the last load seen: the report records it, since a shared machine skews the numbers."""
    end = time.perf_counter() + max_wait
    load = other_load()
    while load is not None and load > threshold and time.perf_counter() < end:
        load = other_load()
    return load


def calls_for(fn, seconds: float) -> int:
    """How many calls of fn fill about `seconds` (at least 1)."""
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    n = 1
    while dt < 0.01:  # too fast to judge from one call
        n *= 4
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
    return max(1, int(seconds * n / dt))


def warm_up(fns, seconds: float) -> None:
    """Run each function for about `seconds` (clock ramp-up, page faults, pools started)."""
    for fn in fns:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            fn()


def interleaved(fns: dict, rounds: int = 5, phase_seconds: float = 0.2, sleep: float = 0.2) -> dict:
    """Time each named function in alternating phases: for each round, for each function: sleep,
    one call untimed, then a batch of calls filling about `phase_seconds`.

    Returns {name: [seconds per call, one per round]}; summarise with statistics.median.
    """
    batch = {name: calls_for(fn, phase_seconds) for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(sleep)
            fn()
            n = batch[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return times


def median(xs):
    return statistics.median(xs)


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out_dir, name: str, markdown: str, data: dict) -> tuple[Path, Path]:
    """Write <out_dir>/<name>.md and <name>.json; returns both paths."""
    out = Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{name}.md", out / f"{name}.json"
    md.write_text(markdown + "\n")
    js.write_text(json.dumps(data, indent=2) + "\n")
    return md, js
