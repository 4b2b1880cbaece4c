"""`python -m nanocodec.bench memory`: the computed plan against what autograd really saves."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanocodec.bench import memory
from nanocodec.model import Block, Llama, ModelConfig, rope_tables

REPO = Path(__file__).resolve().parents[1]


def saved_bytes(fn, exclude: set[int]) -> int:
    """Bytes of the distinct storages autograd saves for the backward while fn runs."""
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


@pytest.mark.parametrize("config", [
    ModelConfig(dim=64, n_heads=4, n_kv_heads=2, max_seq_len=64),
    ModelConfig(dim=96, n_heads=3, n_kv_heads=3, ffn_dim=200, max_seq_len=64),
    ModelConfig(dim=128, n_heads=8, n_kv_heads=1, max_seq_len=64),
])
def test_activation_estimate_within_20_percent_of_measured(config, monkeypatch):
    """One block's saved activations in fp32 on CPU through the Triton kernels (the GPU path)."""
    monkeypatch.setenv("NANOCODEC_KERNELS", "triton")
    torch.manual_seed(0)
    block = Block(config, 0)
    batch, seq = 2, 48
    x = torch.randn(batch, seq, config.dim, requires_grad=True)
    cos, sin = rope_tables(config.head_dim, seq, config.rope_theta)
    exclude = {p.untyped_storage().data_ptr() for p in block.parameters()}
    exclude |= {cos.untyped_storage().data_ptr(), sin.untyped_storage().data_ptr()}
    measured, out = saved_bytes(lambda: block(x, cos, sin), exclude)
    out.sum().backward()  # what was saved really is what the backward needs
    estimate = memory.activation_bytes_per_token(config, autocast=False) * batch * seq
    assert abs(estimate - measured) <= 0.2 * measured, (estimate, measured)


@pytest.mark.parametrize("preset", ["tiny", "small", "1b", "7b"])
def test_parameter_count_matches_the_model(preset):
    config = ModelConfig.preset(preset)
    with torch.device("meta"):
        model = Llama(config)
    assert memory.parameter_counts(config)[0] == model.num_params()


def test_plan_shards_with_fsdp_and_checkpointing_saves_activations():
    ddp = memory.plan("7b", 12288, 32)
    fsdp = memory.plan("7b", 12288, 32, fsdp=True)
    fsdp_ac = memory.plan("7b", 12288, 32, fsdp=True, activation_checkpointing=True)
    assert fsdp.parts["optimizer (AdamW, fp32)"] * 32 == pytest.approx(ddp.parts["optimizer (AdamW, fp32)"])
    assert fsdp_ac.total < fsdp.total < ddp.total
    assert not ddp.fits(memory.GPUS["H200 141GB"])  # 7B in DDP holds ~22 bytes per parameter
    assert fsdp_ac.fits(memory.GPUS["A100 80GB"])


def test_cli_prints_the_plan_and_the_table():
    done = subprocess.run([sys.executable, "-m", "nanocodec.bench", "memory", "--preset=7b", "--context=12288",
                           "--gpus=32", "--fsdp", "--activation_checkpointing", "--all"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "total per GPU" in done.stdout and "| 7b | 32768 | FSDP + AC |" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "nanocodec.bench", "memory", "--preset=13b"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "13b" in bad.stderr and "Traceback" not in bad.stderr
