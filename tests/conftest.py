"""Shared fixtures. Run `pytest` from the repository root: it tests the installed package."""
import os
import tracemalloc
from pathlib import Path

# before SciPy is imported: scikit-learn's check_estimator runs its array-API checks only with it set
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=30, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

import fastdl  # noqa: E402
from fastdl import _C  # noqa: E402
from reference import ISAS  # noqa: E402


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test once per instruction-set path this CPU can execute."""
    prev = _C.get_isa()
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa(prev)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def mnist_dir():
    """The MNIST IDX files: $FASTDL_MNIST_DIR, else ../shared/data/mnist beside the checkout."""
    env = os.environ.get("FASTDL_MNIST_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture
def mnist_path():
    p = mnist_dir()
    if not (p / "train-images-idx3-ubyte.gz").exists() and not (p / "train-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST files not found in {p} (set FASTDL_MNIST_DIR)")
    return p


def traced_peak(fn):
    """(the exception fn raised or None, peak bytes Python and NumPy allocated while it ran)."""
    tracemalloc.start()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the caller checks what it was
        err = e
    else:
        err = None
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return err, peak
