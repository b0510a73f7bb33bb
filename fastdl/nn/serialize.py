"""save / load: one ``.npz`` file per model.

Layout (format version 1), all plain arrays (never pickles):
  ``__fastdl__``   0-d unicode array holding JSON: {"format": "fastdl.nn", "format_version": 1,
                   "fastdl_version": ..., "architecture": model.get_config(), "keys": [state keys]}
  ``state/<key>``  one float32 array per ``state_dict`` entry (parameters and buffers)

Model files come from users and the Internet, so ``load`` trusts nothing in them: before it
allocates anything it checks every declared size against what the file holds (each zip entry's
size against the bytes it stores, uncompressed as np.savez writes them; each ``.npy`` header's
shape and dtype against its entry; for the built-in layers, the shapes the architecture implies
against those headers), so it never allocates more than the file's size, and it bounds the
metadata's size (4 Mi characters) and nesting (``MAX_DEPTH`` containers). Weights that are NaN or
infinite are refused. Every failure is a ValueError naming the file. (A layer registered by the
user is built from its config before its arrays' shapes are compared: its constructor is trusted.)
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import stat
import time
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from .. import ops
from . import losses as _losses
from .activation import LeakyReLU, ReLU, Sigmoid, Softmax, Step, Tanh
from .container import Sequential
from .dropout import Dropout, Dropout2d
from .linear import Linear
from .module import Module
from .normalization import BatchNorm1d, BatchNorm2d
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .registry import _REGISTRY, module_from_config
from .shape import Flatten

__all__ = ["save", "load", "FORMAT_VERSION"]

FORMAT_NAME = "fastdl.nn"
FORMAT_VERSION = 1
_META = "__fastdl__"
# Config entries that do not change what a trained model computes (how weights were first drawn).
_NOT_ARCHITECTURE = ("init", "seed")

# Bounds on what load accepts (far above any model fastdl trains; they stop hostile files early).
MAX_DEPTH = 64                  # containers nested in containers
MAX_MODULES = 100_000           # layers in one model
_MAX_JSON_DEPTH = 256           # nesting of the metadata JSON (a container takes 3 levels)
_MAX_META_CHARS = 1 << 22       # characters of metadata JSON
_MAX_ENTRIES = 2 * MAX_MODULES  # zip entries
# Temporary files of save: .fastdl-<target name>-<pid>-<random>.npz.tmp, beside the target.
_TMP_PREFIX, _TMP_SUFFIX = ".fastdl-", ".npz.tmp"
_STALE_SECONDS = 3600           # a temp file untouched this long is abandoned, whoever wrote it


def _fastdl_version():
    try:
        from .. import __version__
        return __version__
    except ImportError:  # pragma: no cover - only while the package is half-imported
        return "unknown"


# ---------------------------------------------------------------- save


def _tmp_tag(base: str) -> str:
    """The target's name as it appears in its temp files (no separators, bounded length)."""
    tag = re.sub(r"[^A-Za-z0-9._]", "_", base)
    if len(tag) > 100 or tag != base:
        tag = tag[:60] + "_" + format(zlib.crc32(base.encode("utf-8", "surrogateescape")), "08x")
    return tag


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: keep its file
    return True


def _remove_stale_temps(directory: str, base: str) -> None:
    """Delete temp files that earlier saves to ``base`` left behind when their process was killed:
    those whose writer is no longer running, or that nobody has touched for an hour. The temp files
    of earlier fastdl versions (``.fastdl-<8 random characters>.npz.tmp``: no target name, no pid)
    go once an hour old."""
    ours = re.compile(re.escape(_TMP_PREFIX + _tmp_tag(base)) + r"-(\d+)-[0-9a-f]+" + re.escape(_TMP_SUFFIX) + "$")
    legacy = re.compile(re.escape(_TMP_PREFIX) + r"[A-Za-z0-9_]{8}" + re.escape(_TMP_SUFFIX) + "$")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for name in names:
        m = ours.match(name)
        if m is None and legacy.match(name) is None:
            continue
        full = os.path.join(directory, name)
        try:
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                continue
            old = now - st.st_mtime > _STALE_SECONDS
            if old or (m is not None and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))):
                os.unlink(full)
        except OSError:
            pass  # gone already, or not ours to delete


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported here (Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(module: Module, path) -> None:
    """Write ``module``'s weights, buffers and architecture to ``path`` (one .npz file; the name is
    used as given). Every layer type must be registered (built-in ones are; see ``register_module``),
    so that ``load`` can rebuild the model.

    The file is written atomically: to a temp file beside it, flushed to disk (``fsync``), then
    renamed over ``path``, so a crash or power loss leaves either the old file or the new one. A new
    file gets the mode ``open`` would give it (0666 less the umask); an existing file keeps its mode.
    Temp files that an earlier, killed save to the same path left behind are removed.
    """
    if not isinstance(module, Module):
        raise TypeError(f"save: expected a fastdl.nn.Module, got {type(module).__name__}")
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"save: path must be a str or os.PathLike, got {type(path).__name__}") from None
    named = module.named_modules()
    for _, m in named:
        name = m.get_config()["type"]
        if _REGISTRY.get(name) is not type(m):
            raise TypeError(f"save: layer type {type(m).__name__} is not registered; decorate it with "
                            "@fastdl.nn.register_module (and give it _config/from_config) so load can rebuild it")
    depth = max(len(n.split(".")) if n else 0 for n, _ in named)
    if depth > MAX_DEPTH or len(named) > MAX_MODULES:
        raise ValueError(f"save: the model has {len(named)} modules nested {depth} deep; load reads at most "
                         f"{MAX_MODULES} modules nested {MAX_DEPTH} deep")
    state = module.state_dict()
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "fastdl_version": _fastdl_version(),
            "architecture": module.get_config(), "keys": list(state)}
    try:
        meta_json = json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save: the model's config is not JSON-serialisable ({e})") from None
    arrays = {_META: np.array(meta_json)}
    arrays.update((f"state/{k}", np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items())

    directory, base = os.path.split(os.path.abspath(path))
    _remove_stale_temps(directory, base)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)  # overwriting: keep the file's mode, as open() does
    except OSError:
        mode = None
    while True:
        tmp = os.path.join(directory, f"{_TMP_PREFIX}{_tmp_tag(base)}-{os.getpid()}-{secrets.token_hex(4)}"
                                      f"{_TMP_SUFFIX}")
        try:  # 0o666 less the umask, as open() creates files
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)  # the rename itself survives a power loss


# ---------------------------------------------------------------- architecture


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
    if not isinstance(a, dict) or not isinstance(b, dict):
        return f"{where}: malformed config"
    if "layers" in a or "layers" in b:
        la, lb = a.get("layers", []), b.get("layers", [])
        if not isinstance(la, list) or not isinstance(lb, list):
            return f"{where}: malformed config"
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


def _count(value):
    """value as a positive int, else None (the layer's constructor will say what is wrong)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def _linear_state(cfg):
    n_in, n_out, bias = _count(cfg.get("in_features")), _count(cfg.get("out_features")), cfg.get("bias", True)
    if n_in is None or n_out is None or not isinstance(bias, bool):
        return None
    return {"weight": (n_out, n_in), **({"bias": (n_out,)} if bias else {})}


def _batchnorm_state(cfg):
    c = _count(cfg.get("num_features"))
    if c is None:
        return None
    return {"weight": (c,), "bias": (c,), "running_mean": (c,), "running_var": (c,)}


# layer class -> its state's shapes from its config alone (None: the config is malformed)
_STATE_SHAPES = {Linear: _linear_state, BatchNorm1d: _batchnorm_state, BatchNorm2d: _batchnorm_state}
_STATELESS = (ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, Step, Dropout, Flatten, _losses.MSELoss, _losses.L1Loss, _losses.BCEWithLogitsLoss,
              _losses.CrossEntropyLoss, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Dropout2d)


def _walk_architecture(arch, bad):
    """Check the architecture's shape (without recursion) and return (expected, unknown): the
    state shapes the built-in layers imply, {key: shape}, and the key prefixes of layers whose
    state cannot be known before they are built (layers registered by the user)."""
    expected, unknown = {}, []
    stack, count = [(arch, "", 0)], 0
    while stack:
        node, prefix, depth = stack.pop()
        count += 1
        if count > MAX_MODULES:
            raise bad(f"its architecture has more than {MAX_MODULES} layers")
        if depth > MAX_DEPTH:
            raise bad(f"its architecture nests containers more than {MAX_DEPTH} deep")
        if not isinstance(node, Mapping) or "type" not in node or "config" not in node:
            raise bad(f"cannot rebuild its architecture: expected a dict with 'type' and 'config', got {node!r:.200}")
        kind, cfg = node["type"], node["config"]
        cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise bad(f"cannot rebuild its architecture: unknown layer type {kind!r} "
                      "(register custom layers with fastdl.nn.register_module)")
        if not isinstance(cfg, Mapping):
            raise bad(f"cannot rebuild its architecture: the config of {kind} must be a dict")
        dot = prefix + "." if prefix else ""
        if cls is Sequential:
            children = cfg.get("layers")
            if not isinstance(children, list):
                raise bad("cannot rebuild its architecture: Sequential config must be {'layers': [layer configs]}")
            stack.extend((c, f"{dot}{i}", depth + 1) for i, c in reversed(list(enumerate(children))))
        elif cls in _STATE_SHAPES:
            shapes = _STATE_SHAPES[cls](cfg)
            if shapes is None:
                unknown.append(prefix)
            else:
                expected.update((dot + k, v) for k, v in shapes.items())
        elif cls not in _STATELESS:
            unknown.append(prefix)
    return expected, unknown


def _fit_problems(expected, declared, unknown=()):
    """Where the file's arrays ({key: shape}) and the expected ones differ ('' when they fit)."""
    def covered(k):
        return any(p == "" or k == p or k.startswith(p + ".") for p in unknown)

    missing = [k for k in expected if k not in declared]
    unexpected = [k for k in declared if k not in expected and not covered(k)]
    mismatched = [f"{k}: got shape {declared[k]}, expected {shape}" for k, shape in expected.items()
                  if k in declared and tuple(declared[k]) != tuple(shape)]
    problems = []
    if mismatched:
        problems.append("shape mismatch for " + "; ".join(mismatched[:10]))
    if missing:
        problems.append("missing keys: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else ""))
    return " | ".join(problems)


# ---------------------------------------------------------------- reading the archive


def _json_depth(text: str) -> int:
    """How deeply ``text``'s brackets nest, strings skipped (no parsing, no recursion)."""
    skeleton = re.sub(r'"[^"\\]*(?:\\.[^"\\]*)*"', "", text).encode("utf-8", "surrogatepass")
    b = np.frombuffer(skeleton, np.uint8)
    step = ((b == ord("[")) | (b == ord("{"))).astype(np.int64) - ((b == ord("]")) | (b == ord("}")))
    return int(np.cumsum(step).max(initial=0))


def _entries(zf, file_size, bad):
    """{name: ZipInfo}, each entry's declared size checked against the bytes the file holds."""
    infos = zf.infolist()
    if len(infos) > _MAX_ENTRIES:
        raise bad(f"it has {len(infos)} entries (at most {_MAX_ENTRIES} are read)")
    stored = 0
    for info in infos:
        name = info.filename
        if info.flag_bits & 0x1:
            raise bad(f"its entry {name!r} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:  # what np.savez writes: sizes are then the bytes held
            raise bad(f"its entry {name!r} uses compression method {info.compress_type}; fastdl model files have "
                      "stored entries only (a compressed entry's size could not be checked before inflating it)")
        if info.file_size != info.compress_size:
            raise bad(f"its entry {name!r} declares {info.file_size} bytes but stores {info.compress_size}")
        stored += info.compress_size
        if info.header_offset + info.compress_size > file_size:
            raise bad(f"its entry {name!r} reaches past the end of the file ({file_size} bytes)")
    if stored > file_size:
        raise bad(f"its entries declare {stored} stored bytes, more than the file's {file_size}")
    return {info.filename: info for info in infos}


def read_npy_header(f, size: int, holder: str):
    """(shape, fortran_order, dtype) of the .npy stream ``f``, read from its start, of ``size`` bytes
    in all; ``f`` is left at the data. ValueError (saying what is wrong, of ``holder``: "its entry",
    "the file") unless it is format 1.0 or 2.0, of a plain dtype, and its declared data fills exactly
    the rest. Nothing past the header is read, so a header that lies costs no allocation."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"has .npy format version {version}, which fastdl does not read")
    if any(d < 0 for d in shape):
        raise ValueError(f"declares the shape {shape}")
    if dtype.hasobject or dtype.itemsize == 0:
        raise ValueError(f"has dtype {dtype}")
    need = math.prod(shape) * dtype.itemsize
    held = size - f.tell()
    if need != held:
        raise ValueError(f"declares shape {shape} of {dtype} ({need} bytes), but {holder} holds {held} bytes of data")
    return shape, fortran, dtype


def _read_header(zf, info, what, bad):
    """(shape, fortran_order, dtype, offset of the data) from an entry's .npy header, the data's
    declared size checked against the entry's size before anything is read."""
    with zf.open(info) as f:
        try:
            shape, fortran, dtype = read_npy_header(f, info.file_size, "its entry")
        except ValueError as e:
            raise bad(f"the array for {what} {e}") from None
        return shape, fortran, dtype, f.tell()


def _read_data(zf, info, header, what, bad):
    """The entry's array (a fresh one), read in chunks into memory allocated once."""
    shape, fortran, dtype, offset = header
    arr = np.empty(math.prod(shape), dtype=dtype)
    view = memoryview(arr).cast("B")
    with zf.open(info) as f:
        f.read(offset)
        pos, total = 0, len(view)
        while pos < total:
            chunk = f.read(min(total - pos, 1 << 20))
            if not chunk:
                raise bad(f"the array for {what} is truncated")
            view[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
        if f.read(1):  # (also lets zipfile check the CRC)
            raise bad(f"the array for {what} has trailing bytes")
    return arr.reshape(shape, order="F" if fortran else "C")


# ---------------------------------------------------------------- load


def load(path, model: Module | None = None) -> Module:
    """Read a file written by ``save``.

    With ``model=None`` the architecture stored in the file is rebuilt and returned. With a model,
    the file's architecture must match it (else ValueError saying where they differ) and its
    weights and buffers are copied into the model in place, which is returned (a model is left
    untouched when loading fails).

    A file that is not a readable fastdl model (truncated, another format, a newer format version,
    sizes that disagree with its contents, metadata nested more than ``MAX_DEPTH`` containers deep,
    NaN or infinite weights) raises ValueError naming the file, before anything large is allocated.
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

    def misfit(problems):
        return ValueError(f"load: the weights in {path!r} do not fit the architecture: {problems}")

    try:
        with open(path, "rb") as fh:
            if fh.read(6) == b"\x93NUMPY":
                raise bad("it is a single .npy array, not an .npz archive")
            fh.seek(0)
            file_size = os.fstat(fh.fileno()).st_size
            with zipfile.ZipFile(fh) as zf:
                entries = _entries(zf, file_size, bad)
                meta = _read_meta(zf, entries, path, bad)
                keys = meta["keys"]
                arch = meta.get("architecture")
                expected, unknown = _walk_architecture(arch, bad)
                headers = {}
                for k in keys:
                    info = entries.get(f"state/{k}.npy")
                    if info is None:
                        raise bad(f"the array for {k!r} is missing")
                    headers[k] = _read_header(zf, info, repr(k), bad)
                    if headers[k][2].kind != "f":
                        raise bad(f"the array for {k!r} has dtype {headers[k][2]}, expected float32")
                declared = {k: h[0] for k, h in headers.items()}

                if model is None:
                    problems = _fit_problems(expected, declared, unknown)  # before building anything
                    if problems:
                        raise misfit(problems)
                    try:
                        target = module_from_config(arch)
                    except ValueError as e:
                        raise bad(f"cannot rebuild its architecture: {e}") from None
                else:
                    diff = _arch_difference(model.get_config(), arch)
                    if diff:
                        raise ValueError(f"load: {path!r} holds a different architecture than the model ({diff})")
                    target = model
                problems = _fit_problems({k: a.shape for k, a in target._state_targets().items()}, declared)
                if problems:
                    raise misfit(problems)

                state = {}
                for k in keys:
                    arr = _read_data(zf, entries[f"state/{k}.npy"], headers[k], repr(k), bad)
                    if arr.dtype != np.float32:
                        with np.errstate(over="ignore"):
                            arr = arr.astype(np.float32)  # values beyond float32's range become inf: refused below
                    arr = np.ascontiguousarray(arr)
                    if arr.size and not ops.all_finite(arr):
                        raise ValueError(f"load: {path!r}: the array for {k!r} contains NaN or Inf; "
                                         "a model with non-finite weights cannot predict anything")
                    state[k] = arr
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, NotImplementedError, RuntimeError) as e:
        raise bad(f"{type(e).__name__}: {e}") from None
    except ValueError as e:
        if str(e).startswith("load:"):
            raise
        raise bad(str(e)) from None

    try:
        target.load_state_dict(state, strict=True)
    except (ValueError, TypeError) as e:
        raise misfit(e) from None
    return target


def _read_meta(zf, entries, path, bad):
    """The metadata dict, its size and nesting bounded before it is parsed, its fields checked."""
    info = entries.get(_META + ".npy")
    if info is None:
        raise bad(f"it has no {_META!r} entry (was it written by fastdl.nn.save?)")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version != (1, 0):
            raise bad(f"the {_META!r} entry is not a JSON string")
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        offset = f.tell()
        if dtype.kind != "U" or shape != ():
            raise bad(f"the {_META!r} entry is not a JSON string")
        if dtype.itemsize > 4 * _MAX_META_CHARS:
            raise bad(f"its metadata is {dtype.itemsize // 4} characters long (at most {_MAX_META_CHARS} are read)")
        if info.file_size - offset != dtype.itemsize:
            raise bad(f"the {_META!r} entry declares {dtype.itemsize} bytes but holds {info.file_size - offset}")
        raw = f.read(dtype.itemsize)
    if len(raw) != dtype.itemsize:
        raise bad(f"the {_META!r} entry is truncated")
    text = str(np.frombuffer(raw, dtype=dtype)[0])
    depth = _json_depth(text)
    if depth > _MAX_JSON_DEPTH:
        raise bad(f"its metadata nests {depth} levels deep (at most {_MAX_JSON_DEPTH}: containers may nest "
                  f"{MAX_DEPTH} deep)")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"its metadata is not valid JSON ({e})") from None
    except RecursionError:
        raise bad("its metadata is nested too deeply") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise bad("its metadata does not name the fastdl.nn format")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise bad(f"invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"load: {path!r} uses format version {version}, newer than this fastdl reads "
                         f"({FORMAT_VERSION}); upgrade fastdl")
    keys = meta.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise bad("its list of state keys is malformed")
    if len(set(keys)) != len(keys):
        raise bad("its list of state keys has duplicates")
    return meta
