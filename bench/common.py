"""Shared helpers for fastdl's benchmarks: thread setup, interleaved timing, machine facts, reports.

Method (docs/kernels.md §10): check correctness first; warm up; time the contenders in
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
    import sys  # noqa: PLC0415

    n = n or cpu_count()
    if "numpy" in sys.modules and os.environ.get("OPENBLAS_NUM_THREADS") != str(n):
        print(f"note: numpy was imported before the benchmark set OPENBLAS_NUM_THREADS={n}; OpenBLAS keeps the "
              f"thread count it read at import ({os.environ.get('OPENBLAS_NUM_THREADS', 'unset: all CPUs')}). Run "
              "the benchmark as a script (python bench/run_all.py) for an exact thread count.", file=sys.stderr)
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
    family = model = None  # "AMD EPYC" alone names Zen 3, 4 and 5 alike: the family and model tell them apart
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and cpu == (platform.processor() or platform.machine()):
                    cpu = value
                elif key == "cpu family" and family is None:
                    family = value
                elif key == "model" and model is None:
                    model = value
                elif not key and family is not None:
                    break  # the first processor's block is enough
    except OSError:
        pass
    if family is not None and model is not None:
        cpu = f"{cpu} (CPU family {family}, model {model})"
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


def interleaved(fns: dict, rounds: int = 5, phase_seconds: float = 0.2, sleep: float = 0.2, setups=None,
                loads=None) -> dict:
    """Time each named function in alternating phases: for each round, for each function: its setup
    (``setups[name]()``, when given: thread counts, say), sleep (measuring the other load meanwhile
    into ``loads`` when it is a list), one call untimed, then a batch of calls filling about
    `phase_seconds`.

    Returns {name: [seconds per call, one per round]}; summarise with statistics.median.
    """
    setups = setups or {}
    batch = {}
    for name, fn in fns.items():
        setups.get(name, lambda: None)()
        batch[name] = calls_for(fn, phase_seconds)
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            setups.get(name, lambda: None)()
            if loads is not None and sleep:
                loads.append(other_load(sleep))
            else:
                time.sleep(sleep)
            fn()
            n = batch[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return times


def paired_ratios(fa, fb, rounds: int = 15, seconds: float = 0.02) -> list:
    """time(fa) / time(fb) for two functions of the same library (one thread pool, nothing to keep
    apart): each round times a batch of fa calls and then, at once, an equal batch of fb calls, so the
    clock drift of this machine over seconds (the phases of ``interleaved``) cannot enter the ratio."""
    time.sleep(0.2)  # let another library's spinning pool (the phase before) go to sleep first
    n = max(1, min(calls_for(fa, seconds), calls_for(fb, seconds)))
    ratios = []
    for _ in range(rounds):
        ts = []
        for fn in (fa, fb):
            fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            ts.append(time.perf_counter() - t0)
        ratios.append(ts[0] / ts[1])
    return ratios


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


# ---------------------------------------------------------------------------- one run's settings


class BenchCheckError(AssertionError):
    """A benchmarked result is wrong: raised before anything is timed, so no speed is reported for it."""


class Config:
    """What one benchmark run does: thread count, sizes (full, --quick, or --tiny for the smoke test),
    timing rounds, where the reports go and which cases run.

    Timing (see ``interleaved``): ``rounds`` alternating phases per contender, each ``phase`` seconds
    long, separated by ``sleep`` seconds; ``warm`` seconds of warm-up per contender first.
    ``only``: substrings; a case runs when its name contains one of them (None: every case).
    """

    def __init__(self, *, threads, quick=False, tiny=False, out=None, rounds=None, only=None, max_wait=None):
        self.threads = threads
        self.quick = quick or tiny
        self.tiny = tiny
        self.out = Path(out) if out else RESULTS
        # seconds to wait, per case, for other processes to leave the CPUs (full run 5, else 0)
        self.max_wait = max_wait if max_wait is not None else (0.0 if self.quick else 5.0)
        if tiny:  # the smoke test: correctness checks and file writing, timings meaningless
            self.rounds, self.phase, self.sleep, self.warm = rounds or 2, 0.002, 0.0, 0.0
        elif quick:
            self.rounds, self.phase, self.sleep, self.warm = rounds or 5, 0.05, 0.2, 0.2
        else:
            self.rounds, self.phase, self.sleep, self.warm = rounds or 7, 0.25, 0.2, 1.0
        self.only = [s for s in only if s] if only else None

    def wants(self, case: str) -> bool:
        return self.only is None or any(s.lower() in case.lower() for s in self.only)

    def mode(self) -> str:
        return "tiny smoke run" if self.tiny else "quick run" if self.quick else "full run"

    def as_dict(self) -> dict:
        return {"threads": self.threads, "quick": self.quick, "tiny": self.tiny, "rounds": self.rounds,
                "phase_seconds": self.phase, "sleep_seconds": self.sleep, "warm_seconds": self.warm,
                "max_wait_seconds": self.max_wait, "only": self.only}

    def derive(self, only=None) -> "Config":
        """The same settings with another case selection."""
        c = Config(threads=self.threads, quick=self.quick, tiny=self.tiny, out=self.out, rounds=self.rounds,
                   only=only, max_wait=self.max_wait)
        c.rounds, c.phase, c.sleep, c.warm = self.rounds, self.phase, self.sleep, self.warm
        return c


def add_common_args(ap) -> None:
    """The options every benchmark script takes."""
    ap.add_argument("--quick", action="store_true", help="fewer and smaller cases, short phases")
    ap.add_argument("--tiny", action="store_true", help="smallest sizes, 2 rounds: a smoke test of the code, "
                    "not a measurement")
    ap.add_argument("--out", default=None, help="directory for the reports (default bench/results)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every contender (default: usable CPUs)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 7, quick 5)")
    ap.add_argument("--cases", default=None, help="comma-separated substrings: run only the cases whose names "
                    "contain one")
    ap.add_argument("--max-wait", type=float, default=None, help="seconds to wait, per case, for other processes "
                    "to leave the CPUs idle (default 5, quick 0); the load seen is reported either way")


def config_from_args(args) -> Config:
    """setup_threads (before numpy is imported) and the Config of parsed ``add_common_args`` options."""
    threads = setup_threads(args.threads)
    only = args.cases.split(",") if args.cases else None
    return Config(threads=threads, quick=args.quick, tiny=args.tiny, out=args.out, rounds=args.rounds, only=only,
                  max_wait=args.max_wait)


def time_cases(cfg: Config, fns: dict) -> dict:
    """Wait (up to cfg.max_wait) for the other processes to leave the CPUs, warm up, then
    ``interleaved`` with the run's settings. Returns {name: median seconds per call}, the per-round
    times under "rounds" and the CPUs other processes kept busy just before under "other_load"."""
    load = None
    if not cfg.tiny:
        load = wait_for_quiet(cfg.max_wait) if cfg.max_wait > 0 else other_load(0.2)
    warm_up(list(fns.values()), cfg.warm)
    t = interleaved(fns, rounds=cfg.rounds, phase_seconds=cfg.phase, sleep=cfg.sleep)
    out = {name: median(v) for name, v in t.items()}
    out["rounds"] = t
    out["other_load"] = load
    return out


def load_str(load) -> str:
    return "?" if load is None else f"{load:.1f}"


# ---------------------------------------------------------------------------- correctness


def rel_error(got, ref) -> float:
    """Normwise error max|got - ref| / max|ref| (ref in float64); 0 when both are 0."""
    import numpy as np  # noqa: PLC0415

    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise BenchCheckError(f"shape {got.shape} differs from the reference's {ref.shape}")
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    if not np.isfinite(diff):
        return float("inf")
    return diff / scale if scale > 0 else diff


def check(what: str, got, ref, tol: float) -> float:
    """Raise BenchCheckError unless rel_error(got, ref) <= tol; returns the error."""
    err = rel_error(got, ref)
    if not err <= tol:
        raise BenchCheckError(f"{what}: wrong result, error {err:.3g} against the float64 reference "
                              f"(allowed {tol:.3g}); not timing it")
    return err


# ---------------------------------------------------------------------------- the machine's limits


def load_average() -> list:
    """The 1, 5 and 15 minute load averages (other helpers may be compiling: the numbers say so)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def fma_peak(threads: int, cfg: Config) -> dict:
    """FP32 FMA peak in GFLOP/s on `threads` threads: fastdl._C.bench.fma_peak_run, an inline-asm loop of
    independent FMA chains the compiler cannot delete (its best ISA), timed here. Median of rounds."""
    from fastdl import _C  # noqa: PLC0415

    load = None if cfg.tiny else wait_for_quiet(cfg.max_wait) if cfg.max_wait > 0 else other_load(0.2)
    seconds = 0.002 if cfg.tiny else 0.1 if cfg.quick else 0.25
    iters = 100_000
    t0 = time.perf_counter()
    _C.bench.fma_peak_run(iters, threads)
    dt = max(time.perf_counter() - t0, 1e-6)
    iters = max(1000, int(iters * seconds / dt))
    _C.bench.fma_peak_run(iters, threads)  # clock ramp-up
    runs = []
    for _ in range(max(cfg.rounds, 5)):
        t0 = time.perf_counter()
        flops = _C.bench.fma_peak_run(iters, threads)
        runs.append(flops / (time.perf_counter() - t0) / 1e9)
    return {"threads": threads, "gflops": median(runs), "gflops_max": max(runs), "gflops_rounds": runs,
            "iters": iters, "other_load_cpus": load}


def triad(n: int, threads: int, cfg: Config) -> dict:
    """STREAM triad a = b + s·c on n floats, `threads` threads: GB/s counting 12 bytes per element
    (read b and c, write a; the write-allocate read of a is not counted, as in STREAM). Median.
    Stored as fastdl's elementwise maps are: streaming stores once the three arrays pass 48 MiB, so a
    kernel and the limit it is held to write alike."""
    import numpy as np  # noqa: PLC0415
    from fastdl import _C  # noqa: PLC0415

    a = np.zeros(n, np.float32)
    b = np.ones(n, np.float32)
    c = np.full(n, 2.0, np.float32)
    _C.bench.stream_triad(a, b, c, np.float32(3.0), threads)
    if not (a[0] == 7.0 and a[-1] == 7.0):
        raise BenchCheckError(f"stream_triad gave {a[0]}, expected 7")
    t = time_cases(cfg, {"triad": lambda: _C.bench.stream_triad(a, b, c, 3.0, threads)})
    return {"n": n, "bytes_per_element": 12, "threads": threads, "gbs": 12.0 * n / t["triad"] / 1e9,
            "gbs_rounds": [12.0 * n / x / 1e9 for x in t["rounds"]["triad"]], "other_load_cpus": t["other_load"]}


_PEAK_ITERS = {}


def peak_contender(threads: int, seconds: float = 0.002):
    """(fn, flops per call): the FMA peak loop sized to about `seconds` per call, to be timed in the
    same interleaved rounds as a benchmark case, so the case's share of peak is immune to clock and
    load drift between the start of the run and the case."""
    from fastdl import _C  # noqa: PLC0415

    key = (threads, seconds)
    if key not in _PEAK_ITERS:
        iters = 20_000
        _C.bench.fma_peak_run(iters, threads)
        t0 = time.perf_counter()
        flops = _C.bench.fma_peak_run(iters, threads)
        dt = max(time.perf_counter() - t0, 1e-7)
        _PEAK_ITERS[key] = (max(1000, int(iters * seconds / dt)), flops / iters)
    iters, per_iter = _PEAK_ITERS[key]
    return (lambda: _C.bench.fma_peak_run(iters, threads)), per_iter * iters


def triad_contender(n: int, threads: int):
    """(fn, bytes per call): STREAM triad on n floats (12 bytes per element counted), to be timed in
    the same interleaved rounds as a bandwidth-bound case of the same length."""
    import numpy as np  # noqa: PLC0415
    from fastdl import _C  # noqa: PLC0415

    a, b, c = np.zeros(n, np.float32), np.ones(n, np.float32), np.full(n, 2.0, np.float32)
    return (lambda: _C.bench.stream_triad(a, b, c, 3.0, threads)), 12.0 * n


L2_FLOATS = 32 * 1024          # triad working set 384 KiB: inside the L2 of 2 cores (512 KiB each here)
DRAM_FLOATS = 16 * 1024 * 1024  # 192 MiB: far beyond the 32 MiB L3


class Limits:
    """The machine's limits measured in this run: FMA peak (1 and N threads) and triad bandwidth at
    an L2-size and a DRAM-size array, plus the triad at any other size a benchmark asks for."""

    def __init__(self, cfg: Config, data: dict | None = None):
        self.cfg = cfg
        self.data = data if data is not None else {"fma_peak": {}, "triad": {}}

    def measure(self) -> "Limits":
        cfg = self.cfg
        for t in sorted({1, cfg.threads}):
            self.peak(t)
        self.triad_gbs(self.l2_floats())
        self.triad_gbs(self.dram_floats())
        return self

    def l2_floats(self) -> int:
        return 4096 if self.cfg.tiny else L2_FLOATS

    def dram_floats(self) -> int:
        return 65536 if self.cfg.tiny else 4 * 1024 * 1024 if self.cfg.quick else DRAM_FLOATS

    def peak(self, threads: int | None = None) -> float:
        """FMA peak GFLOP/s on `threads` (default: the run's thread count)."""
        threads = threads or self.cfg.threads
        key = str(threads)
        if key not in self.data["fma_peak"]:
            self.data["fma_peak"][key] = fma_peak(threads, self.cfg)
        return self.data["fma_peak"][key]["gflops"]

    def triad_gbs(self, n: int, threads: int | None = None) -> float:
        """Triad GB/s on n floats (measured once per size and thread count)."""
        threads = threads or self.cfg.threads
        key = f"{n}@{threads}"
        if key not in self.data["triad"]:
            self.data["triad"][key] = triad(n, threads, self.cfg)
        return self.data["triad"][key]["gbs"]

    def markdown(self) -> str:
        rows = [[f"FP32 FMA peak, {k} thread(s)", f"{v['gflops']:.1f} GFLOP/s",
                 f"median of {len(v['gflops_rounds'])} (max {v['gflops_max']:.1f})",
                 load_str(v.get("other_load_cpus"))]
                for k, v in sorted(self.data["fma_peak"].items())]
        for key, v in sorted(self.data["triad"].items(), key=lambda kv: (kv[1]["threads"], kv[1]["n"])):
            mib = 12 * v["n"] / 2**20
            rows.append([f"STREAM triad, {v['n']:,} floats ({mib:.2f} MiB), {v['threads']} thread(s)",
                         f"{v['gbs']:.1f} GB/s",
                         "12 B/element counted" + (", streaming stores" if 12 * v["n"] > 48 * 2**20 else ""),
                         load_str(v.get("other_load_cpus"))])
        return markdown_table(["limit", "measured", "note", "other load"], rows)


# ---------------------------------------------------------------------------- reports


def bar(name: str, target: str, measured: str, ok) -> dict:
    """One row of SUMMARY.md: an issue-4 bar, its target, what was measured, and PASS/FAIL (None: not
    measured in this run)."""
    return {"bar": name, "target": target, "measured": measured, "pass": ok}


def verdict(ok) -> str:
    return "—" if ok is None else "PASS" if ok else "FAIL"


def bars_markdown(bars: list) -> str:
    return markdown_table(["bar", "target", "measured", "pass"],
                          [[b["bar"], b["target"], b["measured"], verdict(b["pass"])] for b in bars])


def header_lines(title: str, cfg: Config, info: dict, load_before: list) -> list:
    return [
        f"# {title}",
        "",
        f"{cfg.threads} threads on every side, median of {cfg.rounds} interleaved rounds "
        f"({cfg.mode()}, {info['date']}); load average before the run {load_before}.",
        f"CPU: {info['cpu']} ({info['cpus_usable']} usable CPUs); NumPy {info['numpy']} with "
        f"{info['numpy_blas']}; fastdl {info['fastdl']} ISA {info['fastdl_isa']}, {info['compiler']}.",
        "",
    ]


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def plot_lines(path, title, xlabel, ylabel, xs, series: dict, hlines: dict | None = None, logx=True) -> Path | None:
    """A PNG of lines (series: {label: ys}) with horizontal reference lines (hlines: {label: y}).
    Returns the path, or None without matplotlib."""
    if not have_matplotlib():
        return None
    from matplotlib.figure import Figure  # noqa: PLC0415 - no pyplot: no GUI backend needed

    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for label, ys in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    for label, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", color="gray")
        ax.annotate(label, (xs[0], y), textcoords="offset points", xytext=(2, -12), fontsize=8, color="gray")
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_bars(path, title, labels: list, values: list, ref: float = 1.0, xlabel="speed-up (× NumPy)") -> Path | None:
    """A PNG of horizontal bars (e.g. speed-ups) with a vertical line at `ref`."""
    if not have_matplotlib() or not labels:
        return None
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(10, 0.3 * len(labels) + 1.5))
    ax = fig.add_subplot()
    ys = list(range(len(labels)))
    colors = ["tab:green" if v >= ref else "tab:red" for v in values]
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 20:  # ratios spanning decades: a log axis keeps all visible
        ax.set_xscale("log")
        ax.set_xlim(min(min(positive), ref) / 1.5, max(max(positive), ref) * 3)
    ax.barh(ys, values, color=colors)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(ref, color="black", linewidth=1)
    for y, v in zip(ys, values):
        ax.annotate(f"{v:.2f}", (v, y), textcoords="offset points", xytext=(3, -3), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)
