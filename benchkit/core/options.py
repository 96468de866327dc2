"""Type checks and string coercion for dataclass-typed options (registries and config overrides)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from benchkit.core.errors import ConfigError, suggest


def type_name(tp: Any) -> str:
    """A short readable name for an annotation."""
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` where lossless (int -> float, list -> tuple), else raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{where} = {value!r} is not valid; valid: {', '.join(map(repr, get_args(tp)))}")
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return check_value(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} = {value!r} has the wrong type; expected {type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where} = {value!r} has the wrong type; expected None")
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{where} = {value!r} has the wrong type; expected a list")
        args = get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where} = {value!r} needs {len(args)} items")
            items = [check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [check_value(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{where} = {value!r} has the wrong type; expected a table")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value
    raise ConfigError(f"{where} = {value!r} has the wrong type; expected {type_name(tp)}")


def parse_text(text: str, tp: Any, where: str) -> Any:
    """Parse a command-line string into ``tp`` (used by ``--set a.b=value``): TOML syntax, bare strings allowed."""
    try:
        value = toml_loads(f"v = {text}")["v"]
    except Exception:  # not a TOML literal: take it as a bare string
        value = text
    if isinstance(value, str) and tp in (int, float, bool):
        raise ConfigError(f"{where} = {text!r} has the wrong type; expected {type_name(tp)}")
    return check_value(value, tp, where)


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, checking names and types; unknown keys list the valid ones."""
    types_ = field_types(cls)
    unknown = [k for k in values if k not in types_]
    if unknown:
        raise ConfigError(
            f"unknown option {where}.{unknown[0]}; valid: {', '.join(types_) or '(none)'}" + suggest(unknown[0], types_)
        )
    checked = {k: check_value(v, types_[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return cls(**checked)
    except (ValueError, TypeError, ConfigError) as e:  # __post_init__ range checks
        raise ConfigError(f"{where}: {e}") from None


def toml_loads(text: str) -> dict[str, Any]:
    """tomllib on 3.11+, tomli on 3.10."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)
