"""The Llama model: it learns, its KV cache matches the full forward, it computes a plain Llama's
function, its counts are right, and bad configurations fail clearly."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nanocodec.model import PRESETS, Llama, ModelConfig
from nanocodec.reference import PlainLlama


pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(**overrides) -> ModelConfig:
    # GQA (4 query heads share 2 key/value heads) so every test covers the grouped path.
    return ModelConfig(**{**dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64), **overrides})


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = Llama(small_config())
    x = torch.randint(0, 97, (4, 33))
    inputs, targets = x[:, :-1], x[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_initial_loss_is_near_uniform():
    torch.manual_seed(1)
    model = Llama(small_config())
    x = torch.randint(0, 97, (2, 40))
    _, loss = model(x, x)
    assert abs(loss.item() - math.log(97)) < 0.1


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_kv_cache_matches_full_forward(n_kv_heads):
    torch.manual_seed(2)
    model = Llama(small_config(n_kv_heads=n_kv_heads)).eval()
    x = torch.randint(0, 97, (3, 29))
    full, _ = model(x)
    cache = model.make_cache(3, 40)
    pieces = [model.forward_cached(x[:, :11], cache), model.forward_cached(x[:, 11:17], cache)]
    pieces += [model.forward_cached(x[:, t : t + 1], cache) for t in range(17, 29)]
    assert cache.pos == 29
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_kv_cache_limits_are_enforced():
    model = Llama(small_config())
    cache = model.make_cache(2, 8)
    model.forward_cached(torch.zeros(2, 6, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="6 used, 3 more do not fit"):
        model.forward_cached(torch.zeros(2, 3, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="2 rows"):
        model.forward_cached(torch.zeros(1, 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.make_cache(1, 65)
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_same_function_as_a_plain_pytorch_llama():
    torch.manual_seed(3)
    config = small_config(n_layers=3)
    ours = Llama(config)
    plain = PlainLlama(config)
    plain.load_state_dict(ours.state_dict())
    x = torch.randint(0, 97, (2, 50))
    torch.testing.assert_close(ours(x)[0], plain(x)[0], rtol=1e-5, atol=1e-5)


def test_loss_ignores_minus_100_targets():
    torch.manual_seed(4)
    model = Llama(small_config())
    x = torch.randint(0, 97, (2, 20))
    targets = x.clone()
    targets[0, :7] = -100
    targets[1, 15:] = -100
    logits, loss = model(x, targets)
    keep = targets != -100
    by_hand = -F.log_softmax(logits, -1)[keep].gather(-1, targets[keep][:, None]).mean()
    torch.testing.assert_close(loss, by_hand)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(5)
    model = Llama(small_config())
    x = torch.randint(0, 97, (2, 24))
    grads = []
    for on in (False, True):
        model.activation_checkpointing = on
        model.zero_grad()
        model(x, x)[1].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_flops_per_token_matches_counted_training_flops():
    torch.manual_seed(6)
    config = small_config(dim=128, n_layers=3, vocab_size=300, max_seq_len=256)
    model = Llama(config)
    x = torch.randint(0, 300, (2, 256))
    # The math backend spells attention out as matmuls the counter sees (the fused CPU kernel hides
    # them); it computes the full T x T scores, as the convention counts them.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, x)[1].backward()
    counted = counter.get_total_flops() / x.numel()
    assert counted == pytest.approx(model.flops_per_token(256), rel=0.02)


def test_residual_projections_start_smaller():
    torch.manual_seed(7)
    model = Llama(small_config(dim=256, n_layers=8, vocab_size=512))
    std = {n: p.std().item() for n, p in model.named_parameters()}
    assert std["layers.0.attention.wqkv.weight"] == pytest.approx(0.02, rel=0.05)
    assert std["layers.3.feed_forward.w2.weight"] == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert std["layers.2.attention.wo.weight"] == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert all(torch.all(p == 1) for n, p in model.named_parameters() if n.endswith("norm.weight"))


def test_meta_device_model_materialises_like_a_normal_one():
    config = small_config()
    with torch.device("meta"):
        model = Llama(config)
    model.to_empty(device="cpu")
    torch.manual_seed(8)
    model.init_weights()
    reference = Llama(config)
    torch.manual_seed(8)
    reference.init_weights()
    x = torch.randint(0, 97, (1, 16))
    torch.testing.assert_close(model(x)[0], reference(x)[0])


def count(name: str, **overrides) -> int:
    with torch.device("meta"):
        return Llama(ModelConfig.preset(name, **overrides)).num_params()


def test_preset_sizes():
    assert 1e6 <= count("tiny") <= 5e6
    assert 115e6 <= count("small") <= 135e6
    assert 0.9e9 <= count("1b") <= 1.3e9
    # Llama-2-7B's published parameter count, with its 32000-token vocabulary.
    assert count("7b", vocab_size=32000) == 6_738_415_616
    assert set(PRESETS) == {"tiny", "small", "1b", "7b"}


def test_num_params_counts_every_weight():
    model = Llama(small_config())
    c = small_config()
    per_layer = 2 * c.dim + c.dim * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.dim * c.dim + 3 * c.dim * c.hidden_dim
    assert model.num_params() == 2 * c.vocab_size * c.dim + c.dim + c.n_layers * per_layer


def test_llama_ffn_rule():
    assert ModelConfig(dim=4096, n_heads=32, n_kv_heads=32, multiple_of=256).hidden_dim == 11008
    assert ModelConfig(dim=64, n_heads=4, n_kv_heads=4, ffn_dim=100).hidden_dim == 100


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dim=100, n_heads=3), "split into 3 heads"),
        (dict(dim=96, n_heads=32), "even size"),
        (dict(n_heads=4, n_kv_heads=3), "must divide n_heads"),
        (dict(n_layers=0), "n_layers must be positive"),
    ],
)
def test_bad_configs_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="unknown model preset 'huge'; presets: tiny, small, 1b, 7b"):
        ModelConfig.preset("huge")
    assert ModelConfig.preset("tiny", dim=256).dim == 256
