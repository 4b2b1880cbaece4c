"""`python -m nanocodec.bench gpu`: the one command for a GPU machine lists its steps on any machine."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanocodec.bench import gpu

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_lists_every_step_and_exits_0():
    done = subprocess.run([sys.executable, "-m", "nanocodec.bench", "gpu", "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for step in gpu.STEPS:
        assert step.name in done.stdout
    assert sum(s.limit_s for s in gpu.STEPS) <= 8 * 60  # the whole run fits in 8 minutes


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_without_cuda_says_so_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nanocodec.bench", "gpu", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no CUDA GPU" in done.stderr and not list(tmp_path.iterdir())


def test_markdown_report_shows_each_step():
    report = {"date": "d", "gpu": "G", "torch": "t", "triton": "x", "seconds": 1.0, "steps": {
        "train": {"status": "ok", "seconds": 2, "result": {"triton": {"tokens_per_s": 5}}},
        "tests": {"status": "failed (exit 1)", "seconds": 3, "output": "1 failed"}}}
    text = gpu.markdown(report)
    assert "## train: ok" in text and '"tokens_per_s": 5' in text and "1 failed" in text


def test_probes_run_end_to_end_on_a_tiny_model(monkeypatch):
    """The probes' logic (paths, cache sizes, env switches restored) on CPU, Triton interpreted."""
    monkeypatch.setattr(importlib.import_module("kernels.attention"), "DECODE_MIN_SPLIT", 16)
    monkeypatch.setenv("NANOCODEC_SPLIT_K", "1")
    monkeypatch.delenv("NANOCODEC_KERNELS", raising=False)
    train = gpu.train_probe(context=32, steps=1, warmup=1, preset="tiny", device="cpu")
    assert train["triton"]["tokens_per_s"] > 0 and train["triton"]["final_loss"] == pytest.approx(
        train["torch"]["final_loss"], abs=1e-3)
    sample = gpu.sample_probe(contexts=(40,), new_tokens=2, preset="tiny", device="cpu")
    assert set(sample["40"]) == {"split-K", "one-pass kernel", "torch (SDPA)", "split-K / one-pass"}
    assert os.environ["NANOCODEC_SPLIT_K"] == "1" and "NANOCODEC_KERNELS" not in os.environ
