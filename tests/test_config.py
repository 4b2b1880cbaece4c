"""The shared --key=value parser of train.py, sample.py and nanocodec.eval, and their --help."""
import dataclasses
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nanocodec.config import ConfigError, field_comments, parse


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


# --- the entry points: train.py, sample.py, nanocodec.eval ---------------------------------------------

ROOT = Path(__file__).parents[1]
ENTRY_POINTS = {"train.py": ["train.py"], "sample.py": ["sample.py"], "nanocodec.eval": ["-m", "nanocodec.eval"]}


def entry_config(name: str) -> type:
    """The run configuration dataclass of an entry point, from its own file."""
    if name == "nanocodec.eval":
        from nanocodec.eval import EvalConfig

        return EvalConfig
    spec = importlib.util.spec_from_file_location(f"entry_{name[:-3]}", ROOT / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return getattr(module, {"train.py": "TrainConfig", "sample.py": "SampleConfig"}[name])


def run_entry(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *ENTRY_POINTS[name], *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


NAMES = ["train.py", "sample.py", "nanocodec.eval"]


@pytest.mark.parametrize("name", NAMES)
def test_every_option_has_a_meaning(name):
    cls = entry_config(name)
    meaning, _ = field_comments(cls)
    assert [f.name for f in dataclasses.fields(cls) if not meaning.get(f.name)] == []


@pytest.mark.parametrize("name", NAMES)
def test_help_lists_every_option_with_default_and_meaning(name):
    done = run_entry(name, "--help")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    cls = entry_config(name)
    meaning, _ = field_comments(cls)
    lines = {line.split("=")[0].strip(): line for line in done.stdout.splitlines() if line.strip().startswith("--")}
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        shown = str(default).lower() if isinstance(default, bool) else repr(default)
        assert f"--{field.name}={shown} " in lines.get(f"--{field.name}", "") + " ", f"--{field.name} of {name}"
        assert meaning.get(field.name) and meaning[field.name] in lines[f"--{field.name}"]


def test_short_help_and_a_positional_checkpoint(capsys):
    from nanocodec import eval as evaluation

    with pytest.raises(SystemExit) as stop:
        evaluation.main(["-h"])  # not taken for a checkpoint named "-h"
    assert stop.value.code == 0 and "--decode_samples=32" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        evaluation.main(["out/some-checkpoint", "-h"])
    assert stop.value.code == 0
    assert evaluation.split_argv(["ckpt", "--seeds=2"]) == ["--ckpt", "ckpt", "--seeds=2"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line_in_eval():
    from nanocodec import eval as evaluation

    with pytest.raises(SystemExit) as stop:
        evaluation.cli(["/nonexistent", "--device=cuda"])
    assert "--device=cuda: this machine has no usable CUDA GPU" in stop.value.code and "\n" not in stop.value.code


def test_bench_modules_take_the_same_threads_and_device():
    import argparse

    from nanocodec.bench._timing import add_torch_options, apply_torch_options

    parser = argparse.ArgumentParser()
    add_torch_options(parser)
    before = torch.get_num_threads()
    try:
        assert apply_torch_options(parser.parse_args(["--threads", "1"])) == torch.device("cpu")
        assert torch.get_num_threads() == 1
        with pytest.raises(SystemExit, match="--threads must be >= 0"):
            apply_torch_options(parser.parse_args(["--threads", "-2"]))
    finally:
        torch.set_num_threads(before)
