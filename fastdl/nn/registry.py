"""The registry of layer types: the name saved in a model's config -> the class that rebuilds it.

``register_module`` adds a class (every built-in layer is registered where it is defined),
``module_from_config`` builds a module and its children from ``Module.get_config()`` output;
``fastdl.nn.load`` uses both.
"""
from __future__ import annotations

from collections.abc import Mapping

from .module import Module

__all__ = ["register_module", "module_from_config"]

_REGISTRY: dict = {}


def register_module(cls=None, *, name: str | None = None):
    """Register a Module subclass so that saved models using it can be rebuilt by ``load``.

    Use as a decorator (``@register_module`` or ``@register_module(name="MyLayer")``). The class
    must rebuild itself from ``cls.from_config(module.get_config()["config"])``; by default
    ``from_config(cfg)`` calls ``cls(**cfg)`` and the config comes from ``_config()``.
    """

    def deco(c):
        if not (isinstance(c, type) and issubclass(c, Module)):
            raise TypeError(f"register_module: expected a subclass of fastdl.nn.Module, got {c!r}")
        key = c.__name__ if name is None else name
        if not isinstance(key, str):
            raise TypeError(f"register_module: name must be a str, got {type(key).__name__}")
        if not key:
            raise ValueError("register_module: name must be a non-empty str")
        old = _REGISTRY.get(key)
        if old is not None and old is not c and (old.__module__, old.__qualname__) != (c.__module__, c.__qualname__):
            raise ValueError(f"register_module: the name {key!r} is already taken by {old.__module__}.{old.__qualname__}")
        _REGISTRY[key] = c
        c._registered_name = key
        return c

    return deco if cls is None else deco(cls)


def module_from_config(config) -> "Module":
    """Build a module (and its children) from ``Module.get_config()`` output."""
    if not isinstance(config, Mapping):
        raise TypeError(f"module_from_config: expected a dict with 'type' and 'config', got {type(config).__name__}")
    if "type" not in config or "config" not in config:
        raise ValueError(f"module_from_config: expected a dict with 'type' and 'config', got {config!r:.200}")
    kind = config["type"]
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise ValueError(f"module_from_config: unknown layer type {kind!r} "
                         "(register custom layers with fastdl.nn.register_module)")
    cfg = config["config"]
    if not isinstance(cfg, Mapping):
        raise ValueError(f"module_from_config: the config of {kind} must be a dict, got {type(cfg).__name__}")
    try:
        return cls.from_config(dict(cfg))
    except (TypeError, ValueError) as e:
        raise ValueError(f"module_from_config: cannot build {kind} from {dict(cfg)!r:.200}: {e}") from e
