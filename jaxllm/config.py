"""Typed configs: frozen dataclasses, `--set a.b=value` overrides, JSON round trip, experiment files.

Each layer defines its own section dataclass next to its code (tokenizer, data, model, ...);
this module holds only the machinery, so it sits at the bottom of the import graph.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key and the fix."""


def resolve_function(ref: str) -> Callable:
    """Turn a `module:function` reference (how functions are stored in configs) into the function."""
    if ":" not in ref:
        raise ConfigError(f"function reference {ref!r} must look like 'package.module:function'")
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import module {module_name!r} for function reference {ref!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r} (from reference {ref!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{ref!r} is not callable")
    return obj


def function_ref(fn: Callable) -> str:
    """The `module:function` string for a module-level function (inverse of resolve_function)."""
    ref = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in ref:
        raise ConfigError(f"{ref} is not importable; use a module-level function")
    return ref


def _hints(cls) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=False)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert `value` (from JSON or a --set string) to annotation `tp`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: {value!r} does not fit {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""] if not value.startswith("[") else json.loads(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        elem = args[0] if args else Any
        return tuple(_coerce(v, elem, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, vt = get_args(tp) or (str, Any)
        return {str(k): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a {tp.__name__} section, got {value!r}")
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if value.replace("e", "").replace(".", "").lstrip("-").isdigit() and float(value).is_integer() else int(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


def _unknown_key(cls, key: str, path: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"valid keys: {', '.join(names)}"
    where = f"{path}.{key}" if path else key
    return ConfigError(f"unknown config key {where!r}: {hint}")


def from_dict(cls, data: dict, path: str = ""):
    """Build dataclass `cls` from a nested dict, type-checking every value."""
    hints = _hints(cls)
    field_names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in field_names:
            raise _unknown_key(cls, key, path)
        kwargs[key] = _coerce(value, hints[key], f"{path}.{key}" if path else key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path or cls.__name__}: {e}") from e


def to_dict(cfg) -> dict:
    """Nested plain dict (JSON-ready) of a config dataclass."""
    def convert(v):
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v
    return convert(cfg)


def to_json(cfg) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=False)


def override(cfg, assignments: list[str] | tuple[str, ...]):
    """Apply `a.b.c=value` strings to a config, type-checked, with close-match hints on bad keys."""
    for assignment in assignments:
        if "=" not in assignment:
            raise ConfigError(f"override {assignment!r} must look like section.field=value")
        key, _, raw = assignment.partition("=")
        cfg = _set_path(cfg, key.strip().split("."), raw, "")
    return cfg


def _set_path(cfg, parts: list[str], raw: str, prefix: str):
    head, rest = parts[0], parts[1:]
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"{prefix} is not a config section, so {prefix}.{head} cannot be set")
    names = {f.name for f in dataclasses.fields(cfg)}
    if head not in names:
        raise _unknown_key(type(cfg), head, prefix)
    path = f"{prefix}.{head}" if prefix else head
    current = getattr(cfg, head)
    if rest:
        return dataclasses.replace(cfg, **{head: _set_path(current, rest, raw, path)})
    tp = _hints(type(cfg))[head]
    value: Any = raw
    if raw.lower() in ("none", "null") and type(None) in get_args(tp):
        value = None
    elif dataclasses.is_dataclass(tp) or get_origin(tp) is dict:
        value = json.loads(raw)
    try:
        return dataclasses.replace(cfg, **{head: _coerce(value, tp, path)})
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path}: {e}") from e


def load_json(cls, path: str | Path):
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {p} is not valid JSON ({e}); fix or regenerate it") from None
    return from_dict(cls, data)


def load_python_file(path: str | Path, attr: str = "config", **kwargs):
    """Import an experiment file and call its `config(**kwargs)` (or return its `config` object)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"experiment file {p} does not exist")
    module_name = f"jaxllm_experiment_{p.stem}"
    spec = importlib.util.spec_from_file_location(module_name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, attr):
        raise ConfigError(f"experiment file {p} must define `{attr}()` returning a config")
    obj = getattr(module, attr)
    if not callable(obj):
        return obj
    try:
        return obj(**kwargs)
    except TypeError as e:
        if kwargs:
            raise ConfigError(f"{p}: {attr}() does not accept {sorted(kwargs)} ({e})") from None
        raise
