"""Frozen config dataclasses to plain data (JSON, ``torch.load(weights_only=True)``) and back.

``to_plain`` turns a config into dicts, lists, strings, numbers, booleans and None; ``from_plain``
rebuilds it from its type hints, so a checkpoint or ``config.json`` never needs pickled classes.
Unknown keys are refused with an error naming the field; keys missing from the data take the
field's default. ``flatten`` gives the dotted field names (``sac.critic_optimizer.lr``) that a
comparison of two configs reports.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigDataError(ValueError):
    """Plain data that does not describe the config class it should (names the field)."""


def to_plain(value: Any) -> Any:
    """A dataclass (recursively) as dicts, tuples as lists, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def from_plain(cls: type[T], data: Any, where: str = "") -> T:
    """Rebuild the dataclass ``cls`` from :func:`to_plain`'s output (its ``__post_init__`` checks run)."""
    if not isinstance(data, dict):
        raise ConfigDataError(f"{where or cls.__name__}: expected a mapping of fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigDataError(f"{_join(where, unknown[0])}: no such field in {cls.__name__}")
    values = {name: _decode(hints[name], data[name], _join(where, name)) for name in data}
    return cls(**values)


def flatten(plain: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"sac": {"gamma": 0.99}}`` -> ``{"sac.gamma": 0.99}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in plain.items():
        name = _join(prefix, key)
        if isinstance(value, dict):
            out |= flatten(value, name)
        else:
            out[name] = value
    return out


def non_finite_floats(config: Any, prefix: str = "") -> list[str]:
    """Dotted names of the float fields of ``config`` (and its sub-configs) that are NaN or infinite."""
    return [name for name, value in flatten(to_plain(config), prefix).items() if _has_non_finite(value)]


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _decode(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_plain(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _decode(option, value, where)
            except ConfigDataError as error:
                errors.append(str(error))
        raise ConfigDataError(errors[0] if errors else f"{where}: {value!r} does not fit {hint}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigDataError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        item_hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_hints) != len(value):
            raise ConfigDataError(f"{where}: expected {len(item_hints)} values, got {value!r}")
        return tuple(_decode(h, v, where) for h, v in zip(item_hints, value))
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigDataError(f"{where}: {value!r} is not one of {', '.join(map(repr, typing.get_args(hint)))}")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigDataError(f"{where}: expected a path string, got {value!r}")
        return Path(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigDataError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint in (int, bool, str):
        if type(value) is not hint:
            raise ConfigDataError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    raise ConfigDataError(f"{where}: cannot decode a field of type {hint}")
