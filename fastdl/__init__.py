"""fastdl: deep learning as the course teaches it, fast on the CPU.

NumPy arrays in, NumPy arrays out; the compute runs in C++17/OpenMP kernels (``fastdl._C``),
vectorised for AVX2 and AVX-512 and chosen at run time.
"""
from __future__ import annotations

import os as _os
import warnings as _warnings

try:
    from . import _C
except ImportError as _error:
    # a source checkout without its build, e.g. `python -m fastdl bench` from the repository root: the
    # installed fastdl is imported instead (fastdl/_bootstrap.py); this file's remaining lines then bind
    # names of that package and the import returns it
    from ._bootstrap import use_installed as _use_installed

    _C = _use_installed(__name__, __file__, _error)
from ._validation import check_int as _check_int
from . import ops
from . import nn, optim
from . import datasets, estimators, models
from .plot import plot_history
from .nn import load, save
from . import data
from .data import DataLoader
from .train import Callback, EarlyStopping, History, Trainer, evaluate, fit, predict

__version__ = _C.config()["version"]


def get_num_threads() -> int:
    """Threads a parallel kernel may use (default: the CPUs this process may use, or OMP_NUM_THREADS),
    at most the CPUs available to this process (its affinity mask and cgroup CPU quota)."""
    return _C.get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the number of threads fastdl's kernels use. Counts above the CPUs available to this
    process are capped at that number (more threads than CPUs only wait on each other); the
    contention guard may still run a kernel on fewer while other processes hold the CPUs."""
    _C.set_num_threads(_check_int(n, "set_num_threads", "n", minimum=1, maximum=1 << 16))


def get_isa() -> str:
    """The instruction set the kernels run with now: 'avx512', 'avx2' or 'generic'."""
    return _C.get_isa()


def set_isa(name: str) -> None:
    """Force the kernels onto 'generic', 'avx2' or 'avx512' (at most what the CPU supports)."""
    if not isinstance(name, str):
        raise TypeError(f"set_isa: name must be a str ('generic', 'avx2' or 'avx512'), got {type(name).__name__}")
    _C.set_isa(name)


def show_config() -> None:
    """Print fastdl's version, compiler, OpenMP, the instruction set in use and the thread count."""
    c = _C.config()
    print(f"fastdl {c['version']}")
    print(f"  compiler:   {c['compiler']}")
    print(f"  OpenMP:     {c['openmp']}")
    print(f"  ISA:        {c['isa']} (best this CPU runs: {c['best_isa']}; FASTDL_ISA forces a lower one)")
    print(f"  threads:    {c['num_threads']} (CPUs available: {c['available_cpus']}; contention guard "
          f"{'on' if c['contention_guard'] else 'off'})")


def _isa_from_env() -> None:
    want = _os.environ.get("FASTDL_ISA")
    if not want:
        return
    try:
        _C.set_isa(want.strip().lower())
    except ValueError as e:
        _warnings.warn(f"FASTDL_ISA ignored: {e}", RuntimeWarning, stacklevel=2)


_isa_from_env()

__all__ = [
    "ops", "nn", "optim", "models", "estimators", "datasets", "plot_history",
    "fit", "evaluate", "predict", "Trainer", "History", "Callback", "EarlyStopping", "DataLoader", "data",
    "save", "load",
    "get_num_threads", "set_num_threads", "get_isa", "set_isa", "show_config", "__version__",
]
