"""Command-line overrides for the run configurations of train.py and sample.py.

One parser for every entry point: a dataclass holds the defaults, and `--key=value`, `--key value`
or a bare `--flag` (booleans) override them. Values are converted to the field's declared type;
unknown keys and unconvertible values raise `ConfigError` naming the key. Nothing is ever `exec`-ed.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A command-line override that names no field or whose value does not fit the field's type."""


def _base_type(annotation: Any) -> tuple[type, bool]:
    """The concrete type of a field annotation, and whether None is allowed (`int | None`)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        raise TypeError(f"unsupported field type {annotation!r}")
    return annotation, False


def convert(key: str, text: str, annotation: Any) -> Any:
    """Convert the text of one override to the field's type, or raise ConfigError."""
    kind, optional = _base_type(annotation)
    if optional and text.lower() in ("none", "null", ""):
        return None
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"--{key}: expected a boolean (true/false), got {text!r}")
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ConfigError(f"--{key}: expected {kind.__name__}, got {text!r}") from None


def parse(cls: type[T], argv: list[str], base: T | None = None) -> T:
    """Return `base` (default: `cls()`) with the overrides in `argv` applied.

    Dashes and underscores in keys are interchangeable (`--max-steps` is `--max_steps`).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --key=value")
        key, eq, text = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown option --{key}; known options: {known}")
        if not eq:
            takes_flag = _base_type(fields[key])[0] is bool
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if takes_flag and (nxt is None or nxt.startswith("--") or nxt.lower() not in _TRUE | _FALSE):
                text = "true"
            elif nxt is None:
                raise ConfigError(f"--{key} needs a value")
            else:
                text = nxt
                i += 1
        values[key] = convert(key, text, fields[key])
        i += 1
    return dataclasses.replace(base if base is not None else cls(), **values)
