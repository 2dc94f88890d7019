"""The one config loader and writer: TOML to and from typed, validated dataclasses.

Every job, agent and fleet file goes through ``load_section``: unknown keys, missing
required keys and wrong types are refused with the dotted path of the field and what to
write instead, before anything starts. Every generated config is written by
``write_toml(path, dump_section(config))`` (tomli-w escapes what it must), so that
``load_section(cls, dump_section(config)) == config``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from ftte.fileio import atomic_write

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        super().__init__(f"{source}: {field}: {problem}")
        self.field = field


def resolve(base: Path, path: Path) -> Path:
    """A path from a config file, made absolute relative to the file's folder."""
    return path if path.is_absolute() else (base.parent / path).resolve()


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error names the file and line."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "(syntax)", str(exc)) from None


def load_section(cls: type[T], data: Any, source: str, prefix: str) -> T:
    """Build dataclass ``cls`` from the table ``data`` found at ``prefix`` in ``source``."""
    if not isinstance(data, dict):
        raise ConfigError(source, prefix, f"expected a table [{prefix}]")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - fields.keys())
    if unknown:
        raise ConfigError(
            source,
            f"{prefix}.{unknown[0]}" if prefix else unknown[0],
            f"unknown key; known keys: {', '.join(fields)}",
        )
    values = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if name not in data:
            no_default = f.default is dataclasses.MISSING
            if no_default and f.default_factory is dataclasses.MISSING:
                raise ConfigError(source, path, "required; add it")
            continue
        values[name] = _convert(hints[name], data[name], source, path)
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigError(source, prefix or "(top level)", str(exc)) from None


def _convert(kind: Any, value: Any, source: str, path: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return _convert(options[0], value, source, path)
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return load_section(kind, value, source, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, path, f"expected a table [{path}], got {value!r}")
        _, item = typing.get_args(kind)
        return {k: _convert(item, v, source, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(source, path, f"expected a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_convert(item, v, source, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(source, path, f"expected a list, got {value!r}")
        args = typing.get_args(kind)
        return tuple(_convert(args[0], v, source, f"{path}[{i}]") for i, v in enumerate(value))
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in kind)
            raise ConfigError(source, path, f"{value!r} is not one of {choices}") from None
    if kind is Path:
        if not isinstance(value, str):
            raise ConfigError(source, path, f"expected a path string, got {value!r}")
        return Path(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool):
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise ConfigError(source, path, f"expected {kind.__name__}, got {value!r}")
        return value
    if kind is Any:
        return value
    raise ConfigError(source, path, f"unsupported config type {kind!r}")


def dump_section(config: Any) -> dict[str, Any]:
    """A config dataclass as a TOML table: the inverse of ``load_section``.

    Paths and enums become strings, nested dataclasses tables, and ``None`` fields are
    left out (TOML has no null; loading gives them their default, which is ``None``).
    """
    if not (dataclasses.is_dataclass(config) and not isinstance(config, type)):
        raise TypeError(f"expected a config dataclass, got {type(config).__name__}")
    table = {}
    for f in dataclasses.fields(config):
        value = _dump_value(getattr(config, f.name))
        if value is not None:
            table[f.name] = value
    return table


def _dump_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dump_section(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_dump_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump_value(v) for k, v in value.items() if v is not None}
    return value


def write_toml(path: Path, table: dict[str, Any], mode: int = 0o644) -> None:
    """Write a TOML file atomically with ``mode`` (0o600 for files holding secrets)."""
    atomic_write(path, tomli_w.dumps(table).encode(), mode)
