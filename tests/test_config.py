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


@dataclass
class Commented:
    # run length
    steps: int = 10  # optimizer steps to take
    name: str = "run"  # a label for the run
    bare: float = 0.5


def test_help_shows_defaults_meanings_and_sections_then_exits_0(capsys):
    with pytest.raises(SystemExit) as stop:
        parse(Commented, ["--steps=3", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "run length" in text
    assert "--steps=10" in text and "optimizer steps to take" in text
    assert "--name='run'" in text and "a label for the run" in text
    assert "--bare=0.5" in text
    with pytest.raises(SystemExit):
        parse(Commented, ["-h"])


def test_threads_reach_torch():
    import torch

    from nanocodec.config import set_threads, usable_cores

    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == torch.get_num_threads()
        assert set_threads(0) == usable_cores() == torch.get_num_threads()
        with pytest.raises(ConfigError, match="--threads"):
            set_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_unusable_device_is_a_config_error():
    import torch

    from nanocodec.config import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device=nonsense"):
        resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA"):
            resolve_device("cuda")
