"""Argument checks, one rule for the whole package.

- ``TypeError`` when an argument has the wrong type (``patience="3"``, ``lr=None``, ``X`` of strings);
- ``ValueError`` when it has the right type and a wrong value (``patience=-1``, ``lr=1e39``, an empty ``X``);
- every message starts with ``who`` (the function or class the user called, e.g. ``"fit"`` or
  ``"SGD"``) and names the argument: ``"fit: epochs must be an int >= 0, got -1"``.

``nn``, ``optim``, ``train``, ``data``, ``estimators``, ``models``, ``datasets`` and the command line all
check through these functions; none carries a checker of its own.
"""
from __future__ import annotations

import contextlib
import math
import numbers

import numpy as np

__all__ = ["InvalidParameterError", "invalid_parameters", "check_int", "check_real", "check_bool", "check_choice",
           "check_rng", "check_callable", "as_kernel_float32", "numeric_array", "as_samples", "as_float32", "F32_TINY"]

F32_TINY = float(np.finfo(np.float32).tiny)  # 1.1754944e-38, the smallest normal float32


class InvalidParameterError(ValueError, TypeError):
    """A hyperparameter of a scikit-learn-style estimator (``fastdl.estimators``) has a wrong type or value.

    scikit-learn's estimators raise their own ``InvalidParameterError``, a subclass of both ValueError
    and TypeError, for any bad hyperparameter; so do fastdl's, with this class (``except ValueError``
    and ``except TypeError`` both catch it). The message follows the package's rule."""


@contextlib.contextmanager
def invalid_parameters():
    """Within the block, a TypeError or ValueError from the checks here becomes an InvalidParameterError
    with the same message (for estimator hyperparameters: scikit-learn's convention)."""
    try:
        yield
    except InvalidParameterError:
        raise
    except (TypeError, ValueError) as e:
        raise InvalidParameterError(str(e)) from None


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_int(value, who: str, name: str, *, minimum: int | None = None, maximum: int | None = None,
              allow_none: bool = False) -> int | None:
    """``value`` as an int within [minimum, maximum]. bool is not an int here."""
    if value is None and allow_none:
        return None
    if not _is_int(value):
        none = "None or " if allow_none else ""
        raise TypeError(f"{who}: {name} must be {none}an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{who}: {name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{who}: {name} must be <= {maximum}, got {value}")
    return value


def check_pair(value, who: str, name: str, *, minimum: int | None = None, maximum: int | None = None,
               allow_none: bool = False) -> tuple:
    """``value`` (an int, or a pair of ints for height and width) as a tuple (h, w), each within [minimum,
    maximum] (None entries kept when ``allow_none``): the image layers' kernel sizes, strides, padding."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{who}: {name} must be an int or a pair of ints (h, w), got {value!r}")
        return tuple(check_int(v, who, name, minimum=minimum, maximum=maximum, allow_none=allow_none)
                     for v in value)
    if not _is_int(value) and not (allow_none and value is None):
        raise TypeError(f"{who}: {name} must be an int or a pair of ints (h, w), got {type(value).__name__}")
    v = check_int(value, who, name, minimum=minimum, maximum=maximum, allow_none=allow_none)
    return (v, v)


def as_kernel_float32(value: float) -> float:
    """The float32 number a kernel computes with for the Python float ``value``: ±inf where it
    overflows float32 (|value| >= 3.4028235677973366e38), 0 where float32 makes it subnormal
    (|value| < 1.1754944e-38: the kernels flush subnormals to zero), else ``value`` rounded."""
    with np.errstate(over="ignore"):
        f = float(np.float32(value))
    return 0.0 if abs(f) < F32_TINY else f


def _bounds_text(low, high, low_open, high_open) -> str:
    lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
    return " and ".join(s for s in (lo, hi) if s)


def _within(v, low, high, low_open, high_open) -> bool:
    if low is not None and (v <= low if low_open else v < low):
        return False
    if high is not None and (v >= high if high_open else v > high):
        return False
    return True


def check_real(value, who: str, name: str, *, low=None, high=None, low_open: bool = False,
               high_open: bool = False, float32: bool = False, allow_none: bool = False) -> float | None:
    """``value`` as a finite float within [low, high] (open ends when asked).

    ``float32=True`` for a value a float32 kernel uses: it must also fit in float32 and lie within
    the bounds once rounded as the kernel sees it (``as_kernel_float32``), so that ``Dropout(1 - 1e-9)``
    (p = 1.0 in float32) or ``lr=1e39`` (inf) are refused where they are given.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        none = "None or " if allow_none else ""
        raise TypeError(f"{who}: {name} must be {none}a real number, got {type(value).__name__}")
    value = float(value)
    bounds = _bounds_text(low, high, low_open, high_open)
    if not math.isfinite(value):
        raise ValueError(f"{who}: {name} must be a finite number{' ' + bounds if bounds else ''}, got {value}")
    if not _within(value, low, high, low_open, high_open):
        raise ValueError(f"{who}: {name} must be {bounds}, got {value!r}")
    if float32:
        f = as_kernel_float32(value)
        if not math.isfinite(f):
            raise ValueError(f"{who}: {name}={value!r} does not fit in float32 (max 3.4028235e+38)")
        if not _within(f, low, high, low_open, high_open):
            raise ValueError(f"{who}: {name} must be {bounds} in float32, which the kernels use; "
                             f"{value!r} becomes {f!r} there")
    return value


def check_bool(value, who: str, name: str) -> bool:
    """``value`` as a bool (Python or NumPy bool only: ``shuffle="no"`` is a TypeError, not True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{who}: {name} must be True or False, got {type(value).__name__}")
    return bool(value)


def check_choice(value, who: str, name: str, choices):
    """``value`` if it is one of ``choices`` (ValueError otherwise; TypeError when the choices are
    strings and ``value`` is not one)."""
    choices = tuple(choices)
    if all(isinstance(c, str) for c in choices) and not isinstance(value, str) and value is not None:
        raise TypeError(f"{who}: {name} must be one of {', '.join(map(repr, choices))}, "
                        f"got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{who}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_rng(seed, who: str, name: str = "seed") -> np.random.Generator:
    """A Generator from None (fresh entropy), an int seed >= 0 (``default_rng(seed)``), a Generator
    (itself) or a legacy ``RandomState`` (scikit-learn's convention: a seed is drawn from it)."""
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.RandomState):
        return np.random.default_rng(seed.randint(0, 2**31 - 1))
    if not _is_int(seed):
        raise TypeError(f"{who}: {name} must be None, an int >= 0 or a numpy.random.Generator, "
                        f"got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"{who}: {name} must be None, an int >= 0 or a numpy.random.Generator, got {seed}")
    return np.random.default_rng(int(seed))


def check_callable(value, who: str, name: str, what: str = "a callable"):
    if not callable(value):
        raise TypeError(f"{who}: {name} must be {what}, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------- arrays


def numeric_array(a, who: str, name: str) -> np.ndarray:
    """``a`` as a NumPy array of real numbers (bool, integer or floating dtype), any rank.

    TypeError for None, sparse matrices, strings and objects that are not numbers; ValueError for
    ragged nesting and complex numbers (scikit-learn's checks expect ValueError there)."""
    if a is None:
        raise TypeError(f"{who}: {name} is None; an array is required")
    if hasattr(a, "toarray") and hasattr(a, "nnz"):  # scipy.sparse
        raise TypeError(f"{who}: {name} is a sparse matrix, but dense data is required; use {name}.toarray()")
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as e:  # ragged lists and the like
        raise ValueError(f"{who}: {name} could not be read as an array: {e}") from None
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{who}: {name} is complex: Complex data not supported")  # scikit-learn's wording and type
    if arr.dtype == object:  # e.g. numbers in an object array: convert, or say why not
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{who}: {name} must hold real numbers; its dtype object entries could not "
                            f"be converted ({e})") from None
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{who}: {name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def as_samples(X, who: str, name: str = "X", *, dtype=np.float32, any_rank: bool = False) -> np.ndarray:
    """A data set ``X`` as a C-contiguous, aligned, finite ``dtype`` array, converted once (no copy when it
    already is one): 2-D (n_samples, n_features) as scikit-learn wants, or with ``any_rank`` (n_samples, ...)
    of rank >= 2 as ``fit`` takes (images (n, 1, 28, 28)). ValueError for the wrong rank, no samples, no
    features, NaN or infinity (values too large for ``dtype`` become infinity and are refused the same way)."""
    arr = numeric_array(X, who, name)
    if arr.ndim != 2 and not (any_rank and arr.ndim > 2):
        want = "at least 2-D (n_samples, n_features, ...)" if any_rank else "2-D (n_samples, n_features)"
        raise ValueError(f"{who}: {name} must be {want}, got shape {arr.shape}"
                         + (f". Reshape your data: {name}.reshape(-1, 1) for one feature, "
                            f"{name}.reshape(1, -1) for one sample" if arr.ndim == 1 else ""))
    if arr.shape[0] == 0:
        raise ValueError(f"{who}: {name} is empty: 0 sample(s) (shape={arr.shape}) while a minimum of 1 is required.")
    if arr.size == 0:
        raise ValueError(f"{who}: {name} is empty: 0 feature(s) (shape={arr.shape}) while a minimum of 1 is "
                         "required.")
    with np.errstate(over="ignore", invalid="ignore"):  # values too large for dtype become inf: refused below
        arr = np.require(arr, dtype, "CA")  # "A": the kernels refuse misaligned data
    if arr.dtype == np.float32:
        from . import ops  # here, not at import: ops needs the compiled module

        finite = ops.all_finite(arr)
    else:
        finite = bool(np.isfinite(arr).all())
    if not finite:
        raise ValueError(f"{who}: {name} contains NaN or infinity (or values too large for {np.dtype(dtype)})")
    return arr


def as_float32(x, who: str, what: str = "input", *, check_finite: bool = True) -> np.ndarray:
    """``x`` as a float32 C-contiguous, aligned array (no copy when it already is one; the kernels refuse
    a misaligned array, as ``np.frombuffer`` at an odd offset gives).

    TypeError for non-numeric data, ValueError for an empty array or (with ``check_finite``)
    NaN/Inf values (values too large for float32 become inf, and are refused the same way).
    """
    if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.aligned:
        arr = x
    else:
        data = getattr(x, "data", None)
        if isinstance(data, np.ndarray) and type(x).__name__ == "Parameter":
            x = data
        try:
            a = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise TypeError(f"{who}: {what} must be a numeric array, could not convert "
                            f"{type(x).__name__} ({e})") from None
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{who}: {what} must be a numeric array (float32 preferred), got dtype {a.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: reported below
            arr = np.require(a, np.float32, "CA")
    if arr.size == 0:
        raise ValueError(f"{who}: {what} is empty (shape {arr.shape})")
    if check_finite:
        from . import ops  # here, not at import: ops needs the compiled module

        if not ops.all_finite(arr):
            raise ValueError(f"{who}: {what} contains NaN or Inf")
    return arr
