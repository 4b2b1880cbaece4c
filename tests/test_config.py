"""The shared --key=value parser of train.py and sample.py."""
from dataclasses import dataclass

import pytest

from nanocodec.config import ConfigError, parse


@dataclass
class Example:
    steps: int = 10
    lr: float = 3e-4
    name: str = "run"
    compile: bool = False
    limit: int | None = None


def test_defaults_and_both_forms():
    cfg = parse(Example, ["--steps=5", "--lr", "0.1", "--name=x", "--limit", "7"])
    assert (cfg.steps, cfg.lr, cfg.name, cfg.limit) == (5, 0.1, "x", 7)
    assert parse(Example, []) == Example()


def test_bare_boolean_flag_and_explicit_values():
    assert parse(Example, ["--compile"]).compile is True
    assert parse(Example, ["--compile", "--steps=2"]).compile is True
    assert parse(Example, ["--compile=false"]).compile is False
    assert parse(Example, ["--compile", "no"]).compile is False


def test_optional_accepts_none():
    assert parse(Example, ["--limit=none"]).limit is None


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--stepz=3"], "unknown option --stepz"),
        (["--steps=three"], "--steps: expected int"),
        (["--compile=maybe"], "--compile: expected a boolean"),
        (["steps=3"], "unexpected argument"),
        (["--steps"], "--steps needs a value"),
    ],
)
def test_bad_overrides_name_the_key(argv, words):
    with pytest.raises(ConfigError, match=words):
        parse(Example, argv)
