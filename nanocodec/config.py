"""Command-line overrides for the run configurations of train.py, sample.py and nanocodec.eval.

One parser for every entry point: a dataclass holds the defaults, and `--key=value`, `--key value`
or a bare `--flag` (booleans) override them. Values are converted to the field's declared type;
unknown keys and unconvertible values raise `ConfigError` naming the key. Nothing is ever `exec`-ed.
`-h`/`--help` prints every option with its default and its meaning, which is the comment written
beside the field in the dataclass (one source of truth), and exits 0.

Also the two run-wide settings every entry point shares: `--threads` (`set_threads`) and
`--device` (`resolve_device`, which turns an unusable device into a ConfigError, not a traceback).
Does not own: what the options mean to each entry point.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import os
import sys
import tokenize
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


def option_key(arg: str) -> str:
    """The field an `--key=value` or `--key` argument names (dashes read as underscores)."""
    return arg[2:].partition("=")[0].replace("-", "_")


def given_options(argv: list[str]) -> set[str]:
    """The fields a command line sets (train.py's resume rules ask which limits were given)."""
    return {option_key(arg) for arg in argv if arg.startswith("--")}


def parse(cls: type[T], argv: list[str], base: T | None = None) -> T:
    """Return `base` (default: `cls()`) with the overrides in `argv` applied.

    Dashes and underscores in keys are interchangeable (`--max-steps` is `--max_steps`).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if "-h" in argv or "--help" in argv:
        print(usage(cls))
        raise SystemExit(0)
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --key=value")
        key = option_key(arg)
        _, eq, text = arg.partition("=")
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


# ----------------------------------------------------------------------------- help


def field_comments(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """The comment beside each field of a dataclass, and the section comment standing above it.

    Read from the class's source with `tokenize`; a class whose source cannot be read (an
    interactive session) gives empty dicts, and the help then shows defaults alone.
    """
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}, {}
    names = {f.name for f in dataclasses.fields(cls)}
    meaning: dict[str, str] = {}
    section: dict[str, str] = {}
    heading, line_field = "", {}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for tok in tokens:
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names and tok.start[0] not in line_field:
            line_field[tok.start[0]] = tok.string
            if heading:
                section[tok.string] = heading
                heading = ""
        elif tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if tok.start[0] in line_field:
                meaning[line_field[tok.start[0]]] = text
            elif tok.line.strip().startswith("#"):
                heading = text
    return meaning, section


def usage(cls: type, prog: str | None = None) -> str:
    """Every option of `cls` with its type, default and meaning, grouped under the class's section
    comments."""
    if prog is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # set under `python -m NAME`
        prog = f"python -m {spec.name}" if spec and spec.name else f"python {os.path.basename(sys.argv[0])}"
    hints = typing.get_type_hints(cls)
    meaning, section = field_comments(cls)
    doc = (cls.__doc__ or "").strip()
    lines = [f"usage: {prog} [--key=value ...]   (also --key value; a bare --flag sets a boolean)"]
    if doc and not doc.startswith(cls.__name__ + "("):
        lines += ["", doc]
    lines += ["", "options:"]
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in section:
            lines += ["", f"  {section[f.name]}"]
        kind, optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        type_name = kind.__name__ + (" or none" if optional else "")
        head = f"    --{f.name}={default!r}" if not isinstance(default, bool) else f"    --{f.name}={str(default).lower()}"
        text = meaning.get(f.name, "")
        lines.append(f"{head:<34} ({type_name}) {text}".rstrip())
    lines += ["", "  -h, --help                     show this message and exit"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- threads and device


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads (0: `usable_cores()`) and return the number in force.

    More threads than free cores makes every parallel op wait for its slowest thread: with one of
    two cores busy, two threads ran constrained sampling 60x slower than one.
    """
    import torch

    if threads < 0:
        raise ConfigError(f"--threads must be >= 0 (0: the {usable_cores()} cores this process may use), got {threads}")
    n = threads or usable_cores()
    torch.set_num_threads(n)
    return torch.get_num_threads()


def resolve_device(name: str) -> "torch.device":  # noqa: F821
    """`auto` is cuda when available, else cpu; a device this machine cannot use is a ConfigError."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device={name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device={name}: this machine has no usable CUDA GPU (torch {torch.__version__}); "
                              f"use --device=cpu or --device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device={name}: only {torch.cuda.device_count()} CUDA device(s) here; "
                              f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device={name}: MPS is not available here; use --device=cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device={name}: unsupported device type; use auto, cpu or cuda")
    return device


def one_line_warnings(prog: str) -> None:
    """Show warnings as `prog: warning: message`, one line each, as the entry points' errors are."""
    import warnings

    warnings.formatwarning = lambda message, *args, **kwargs: f"{prog}: warning: {message}\n"
