"""What ``import fastdl`` does when this folder is a source checkout without its compiled extension.

``python -m fastdl bench`` (or ``python -c "import fastdl"``) run from the repository root puts the
checkout first on ``sys.path``, so Python finds this folder, which has no ``_C`` unless it was built in
place (tools/dev_build.sh). Then the installed fastdl, when there is one, is imported instead, whole (its
Python files and its extension together, so they match); without one, the ImportError says what to do.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _installed_package(here: Path):
    """The first other folder named fastdl on sys.path that holds a built extension, or None."""
    for entry in sys.path:
        try:
            candidate = (Path(entry) if entry else Path.cwd()).resolve() / "fastdl"
        except OSError:
            continue
        if candidate == here or not (candidate / "__init__.py").is_file():
            continue
        if any(candidate.glob("_C.*.so")) or any(candidate.glob("_C.*.pyd")) or any(candidate.glob("_C.so")):
            return candidate
    return None


def use_installed(name: str, init_file: str, error: ImportError):
    """Make ``sys.modules[name]`` the installed fastdl and return its ``_C``; the import statement that
    is running returns that package. Raises ImportError with instructions when none is installed."""
    here = Path(init_file).resolve().parent
    if any(here.glob("_C.*")):  # there is a build here, and it failed to load: that error is the one to see
        raise error
    other = _installed_package(here)
    if other is None:
        raise ImportError(
            f"fastdl: {here} is a source checkout whose extension fastdl._C is not built, and no installed "
            "fastdl was found. Install it with `pip install .` from the repository root (then it runs from "
            "anywhere, the root included), or build it in place for development with tools/dev_build.sh"
            f" ({error})") from None
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        if key != __name__:
            del sys.modules[key]
    spec = importlib.util.spec_from_file_location(name, other / "__init__.py",
                                                  submodule_search_locations=[str(other)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module._C
