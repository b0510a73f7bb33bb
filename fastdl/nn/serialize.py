"""save / load: one ``.npz`` file per model.

Layout (format version 1), all plain arrays (loaded with ``allow_pickle=False``):
  ``__fastdl__``   0-d unicode array holding JSON: {"format": "fastdl.nn", "format_version": 1,
                   "fastdl_version": ..., "architecture": model.get_config(), "keys": [state keys]}
  ``state/<key>``  one float32 array per ``state_dict`` entry (parameters and buffers)
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from .module import _REGISTRY, Module, module_from_config

__all__ = ["save", "load", "FORMAT_VERSION"]

FORMAT_NAME = "fastdl.nn"
FORMAT_VERSION = 1
_META = "__fastdl__"
# Config entries that do not change what a trained model computes (how weights were first drawn).
_NOT_ARCHITECTURE = ("init", "seed")


def _fastdl_version():
    try:
        from .. import __version__
        return __version__
    except ImportError:  # pragma: no cover - only while the package is half-imported
        return "unknown"


def save(module: Module, path) -> None:
    """Write ``module``'s weights, buffers and architecture to ``path`` (one .npz file, written
    atomically; the name is used as given). Every layer type must be registered (built-in ones are;
    see ``register_module``), so that ``load`` can rebuild the model."""
    if not isinstance(module, Module):
        raise TypeError(f"save: expected a fastdl.nn.Module, got {type(module).__name__}")
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"save: path must be a str or os.PathLike, got {type(path).__name__}") from None
    for _, m in module.named_modules():
        name = m.get_config()["type"]
        if _REGISTRY.get(name) is not type(m):
            raise TypeError(f"save: layer type {type(m).__name__} is not registered; decorate it with "
                            "@fastdl.nn.register_module (and give it _config/from_config) so load can rebuild it")
    state = module.state_dict()
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "fastdl_version": _fastdl_version(),
            "architecture": module.get_config(), "keys": list(state)}
    try:
        meta_json = json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save: the model's config is not JSON-serialisable ({e})") from None
    arrays = {_META: np.array(meta_json)}
    arrays.update((f"state/{k}", np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items())
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastdl-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _describe(cfg) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in cfg.get("config", {}).items()
                     if k not in _NOT_ARCHITECTURE and k != "layers")
    return f"{cfg.get('type')}({args})"


def _arch_difference(mine, theirs, where="model"):
    """None when the configs describe the same architecture, else a sentence saying where they differ."""
    if not isinstance(mine, dict) or not isinstance(theirs, dict):
        return f"{where}: malformed config"
    if mine.get("type") != theirs.get("type"):
        return f"{where}: the model has {_describe(mine)}, the file has {_describe(theirs)}"
    a, b = mine.get("config", {}), theirs.get("config", {})
    if "layers" in a or "layers" in b:
        la, lb = a.get("layers", []), b.get("layers", [])
        if len(la) != len(lb):
            return f"{where}: the model has {len(la)} layers, the file has {len(lb)}"
        for i, (x, y) in enumerate(zip(la, lb)):
            d = _arch_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        a = {k: v for k, v in a.items() if k != "layers"}
        b = {k: v for k, v in b.items() if k != "layers"}
    strip = lambda c: {k: v for k, v in c.items() if k not in _NOT_ARCHITECTURE}  # noqa: E731
    if strip(a) != strip(b):
        return f"{where}: the model has {_describe(mine)}, the file has {_describe(theirs)}"
    return None


def load(path, model: Module | None = None) -> Module:
    """Read a file written by ``save``.

    With ``model=None`` the architecture stored in the file is rebuilt and returned. With a model,
    the file's architecture must match it (else ValueError saying where they differ) and its
    weights and buffers are copied into the model in place, which is returned.
    A file that is not a readable fastdl model (truncated, another format, a newer format
    version) raises ValueError.
    """
    if model is not None and not isinstance(model, Module):
        raise TypeError(f"load: model must be a fastdl.nn.Module or None, got {type(model).__name__}")
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"load: path must be a str or os.PathLike, got {type(path).__name__}") from None
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no such file: {path!r}")

    def bad(why):
        return ValueError(f"load: {path!r} is not a valid fastdl model file: {why}")

    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise bad("it is a single .npy array, not an .npz archive")
        with f:
            if _META not in f.files:
                raise bad(f"it has no {_META!r} entry (was it written by fastdl.nn.save?)")
            meta_raw = f[_META]
            if meta_raw.dtype.kind != "U" or meta_raw.ndim != 0:
                raise bad(f"the {_META!r} entry is not a JSON string")
            try:
                meta = json.loads(str(meta_raw))
            except json.JSONDecodeError as e:
                raise bad(f"its metadata is not valid JSON ({e})") from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
                raise bad("its metadata does not name the fastdl.nn format")
            version = meta.get("format_version")
            if not isinstance(version, int) or version < 1:
                raise bad(f"invalid format version {version!r}")
            if version > FORMAT_VERSION:
                raise ValueError(f"load: {path!r} uses format version {version}, newer than this fastdl "
                                 f"reads ({FORMAT_VERSION}); upgrade fastdl")
            keys = meta.get("keys")
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise bad("its list of state keys is malformed")
            state = {}
            for k in keys:
                name = f"state/{k}"
                if name not in f.files:
                    raise bad(f"the array for {k!r} is missing")
                state[k] = f[name]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as e:
        raise bad(f"{type(e).__name__}: {e}") from None
    except ValueError as e:
        if str(e).startswith("load:"):
            raise
        raise bad(str(e)) from None

    arch = meta.get("architecture")
    for k, v in state.items():
        if v.dtype.kind != "f":
            raise bad(f"the array for {k!r} has dtype {v.dtype}, expected float32")
    if model is None:
        try:
            model = module_from_config(arch)
        except ValueError as e:
            raise bad(f"cannot rebuild its architecture: {e}") from None
    else:
        diff = _arch_difference(model.get_config(), arch)
        if diff:
            raise ValueError(f"load: {path!r} holds a different architecture than the model ({diff})")
    try:
        model.load_state_dict(state, strict=True)
    except (ValueError, TypeError) as e:
        raise ValueError(f"load: the weights in {path!r} do not fit the architecture: {e}") from None
    return model
