"""The kernels as torch custom ops: opcheck on each, and torch.compile of the model without graph breaks.

torch.library.opcheck tests each op's schema, its fake (meta) function against the real one, its
registered autograd and its tracing by AOTAutograd. The Triton paths run under the interpreter.
"""
import importlib

import pytest
import torch

from nanocodec.model import Llama, ModelConfig

A = importlib.import_module("kernels.attention")
R = importlib.import_module("kernels.rmsnorm")
P = importlib.import_module("kernels.rope")


def rand(*shape, grad=True):
    return torch.randn(*shape).requires_grad_(grad)


def test_opcheck_attention():
    q, k, v = rand(1, 4, 17, 16), rand(1, 2, 33, 16), rand(1, 2, 33, 16)
    torch.library.opcheck(A.flash_attention_op, (q, k, v, True, 0.25))
    torch.library.opcheck(A.flash_attention_op, (q, k, v, False, 0.3))


def test_opcheck_attention_decode():
    q, k, v = rand(1, 4, 2, 16, grad=False), rand(1, 2, 40, 16, grad=False), rand(1, 2, 40, 16, grad=False)
    torch.library.opcheck(A.attention_decode, (q, k, v, True, 0.25, 3))


def test_opcheck_rms_norm():
    torch.library.opcheck(R.rms_norm_op, (rand(3, 5, 48), rand(48), 1e-5))


@pytest.mark.parametrize("with_positions", [False, True])
def test_opcheck_rope(with_positions):
    cos, sin = torch.randn(20, 16), torch.randn(20, 16)
    positions = torch.tensor([3, 0, 7, 19, 5]) if with_positions else None
    torch.library.opcheck(P.rope_op, (rand(2, 4, 5, 16), rand(2, 2, 5, 16), cos, sin, positions, False))


def small_model():
    torch.manual_seed(0)
    return Llama(ModelConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=64))


def loss_and_grads(model, fn, tokens):
    model.zero_grad(set_to_none=True)
    logits, loss = fn(tokens, tokens)
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(eager, compiled, tol):
    assert (eager[0] - compiled[0]).abs().max() < tol
    for name, g in eager[1].items():
        assert (g - compiled[1][name]).abs().max() < tol, name


def compiled_vs_eager(monkeypatch, path: str, **compile_kw):
    monkeypatch.setenv("NANOCODEC_KERNELS", path)
    torch._dynamo.reset()
    model = small_model()
    tokens = torch.randint(0, 579, (2, 17))
    eager = loss_and_grads(model, model, tokens)
    return eager, loss_and_grads(model, torch.compile(model, fullgraph=True, **compile_kw), tokens)


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_compile_has_no_graph_break(monkeypatch, path):
    """fullgraph=True fails on any graph break; aot_eager traces fwd and bwd without codegen."""
    assert_same(*compiled_vs_eager(monkeypatch, path, backend="aot_eager"), 1e-5)


@pytest.mark.slow  # inductor's C++ codegen takes about 2 minutes on a loaded 2-core machine
def test_inductor_compile_of_the_torch_path_matches_eager(monkeypatch):
    assert_same(*compiled_vs_eager(monkeypatch, "torch"), 1e-4)
