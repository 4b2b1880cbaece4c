"""nanocodec.sampling: logit filters, KV-cache generation, constraints, constrained JPEG decoding."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nanocodec.sampling import (
    Constraint,
    apply_temperature,
    filtered_probs,
    generate,
    sample_next,
    top_k_filter,
    top_p_filter,
)

logit_rows = st.builds(
    lambda seed, rows, vocab, scale: torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale,
    st.integers(0, 2**31), st.integers(1, 4), st.integers(2, 300), st.floats(0.1, 20.0),
)


@given(logit_rows, st.integers(1, 400))
def test_top_k_keeps_exactly_the_k_largest_unchanged(logits, k):
    out = top_k_filter(logits, k)
    kept = torch.isfinite(out)
    assert (kept.sum(-1) == min(k, logits.shape[-1])).all()
    assert torch.equal(out[kept], logits[kept])
    for row in range(logits.shape[0]):
        if (~kept[row]).any():
            assert logits[row][kept[row]].min() > logits[row][~kept[row]].max()


@given(logit_rows)
def test_top_k_one_is_argmax(logits):
    out = top_k_filter(logits, 1)
    assert torch.equal(out.argmax(-1), logits.argmax(-1))
    assert (torch.isfinite(out).sum(-1) == 1).all()
    gen = torch.Generator().manual_seed(0)
    for temperature in (0.5, 1.0, 3.0):
        assert torch.equal(sample_next(logits, temperature, top_k=1, generator=gen), logits.argmax(-1))


@given(logit_rows, st.floats(0.01, 0.999))
def test_top_p_keeps_the_smallest_top_set_reaching_p(logits, p):
    out = top_p_filter(logits, p)
    probs = logits.softmax(-1)
    for row in range(logits.shape[0]):
        kept = torch.isfinite(out[row])
        assert kept[logits[row].argmax()]
        mass = probs[row][kept].sum().item()
        assert mass >= p - 1e-5
        # minimal: without its least likely member the kept set falls short of p
        assert mass - probs[row][kept].min().item() < p + 1e-5
        if (~kept).any():  # order: the nucleus is a top set
            assert logits[row][kept].min() >= logits[row][~kept].max()
        assert torch.equal(out[row][kept], logits[row][kept])


def test_filters_disabled_by_their_neutral_values():
    logits = torch.randn(3, 50)
    assert torch.equal(top_k_filter(logits, 0), logits)
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    assert torch.equal(apply_temperature(logits, 1.0), logits)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, -1.0)


@given(logit_rows, st.floats(0.05, 10.0))
def test_temperature_keeps_order_and_sharpens_below_one(logits, t):
    probs = apply_temperature(logits, t).softmax(-1)
    assert torch.equal(probs.argmax(-1), logits.argmax(-1))
    entropy = lambda q: -(q * q.clamp_min(1e-30).log()).sum(-1)  # noqa: E731
    base = entropy(logits.softmax(-1))
    if t < 1:
        assert (entropy(probs) <= base + 1e-4).all()
    else:
        assert (entropy(probs) >= base - 1e-4).all()


def test_samples_only_come_from_the_filtered_set():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 100, generator=gen).repeat(50, 1)
    probs = filtered_probs(logits, 0.8, top_k=10, top_p=0.7)
    picks = sample_next(logits, 0.8, top_k=10, top_p=0.7, generator=gen)
    assert (probs.gather(1, picks[:, None]) > 0).all()
    assert torch.equal(sample_next(logits, 0.0), logits.argmax(-1))


# --- generation -----------------------------------------------------------------------------------

VOCAB, EOS, BOS, PAD = 48, 45, 46, 47


@pytest.fixture(scope="module")
def tiny_model(tiny_llama):
    return tiny_llama(VOCAB, 96)


PROMPTS = [[BOS, 3, 4, 5], [BOS], [BOS, 9, 10, 11, 12, 13, 14, 15]]


def test_greedy_with_kv_cache_equals_full_recompute(tiny_model):
    kw = dict(max_new_tokens=40, eos_id=EOS, pad_id=PAD, banned=(BOS, PAD), temperature=0.0)
    cached = generate(tiny_model, PROMPTS, use_cache=True, **kw)
    full = generate(tiny_model, PROMPTS, use_cache=False, **kw)
    assert cached.tokens == full.tokens and cached.finished == full.finished
    assert sum(map(len, cached.tokens)) > 0
    # each row on its own gives the same continuation as inside the ragged batch
    for prompt, tokens in zip(PROMPTS, cached.tokens):
        assert generate(tiny_model, [prompt], **kw).tokens[0] == tokens


def test_seeded_sampling_is_reproducible_and_never_emits_banned(tiny_model):
    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return generate(tiny_model, PROMPTS, max_new_tokens=30, eos_id=EOS, pad_id=PAD, banned=(BOS, PAD),
                        temperature=1.5, top_k=0, top_p=1.0, generator=gen).tokens

    first = run(7)
    assert first == run(7) and first != run(8)
    assert all(t not in (BOS, PAD, EOS) for row in first for t in row)


class StopAfter(Constraint):
    """Rows accept only odd tokens and must end after `lengths[row]` of them."""

    def __init__(self, lengths):
        self.lengths, self.seen = lengths, [0] * len(lengths)

    def forced(self, row):
        return EOS if self.seen[row] == self.lengths[row] else None

    def accept(self, row, token):
        if token == EOS or token % 2 == 0:
            return False
        self.seen[row] += 1
        return True


@pytest.mark.parametrize("temperature, top_k", [(0.0, 0), (1.0, 1), (1.0, 0)])
def test_constraint_rejections_resample_and_forced_eos_stops_each_row(tiny_model, temperature, top_k):
    lengths = [3, 11, 0]
    gen = torch.Generator().manual_seed(3)
    out = generate(tiny_model, PROMPTS, max_new_tokens=50, eos_id=EOS, pad_id=PAD, banned=(BOS, PAD),
                   temperature=temperature, top_k=top_k, generator=gen, constraint=StopAfter(lengths))
    assert [len(t) for t in out.tokens] == lengths
    assert out.finished == [True, True, True]
    assert all(t % 2 == 1 for row in out.tokens for t in row)
    assert out.new_tokens == sum(lengths) + 3  # the EOS of each row counts as generated


def test_max_new_tokens_and_context_limit(tiny_model):
    out = generate(tiny_model, PROMPTS, max_new_tokens=5, eos_id=EOS, banned=(BOS, PAD, EOS), temperature=1.0)
    assert [len(t) for t in out.tokens] == [5, 5, 5] and out.finished == [False] * 3
    long = generate(tiny_model, [[BOS] * 90], max_new_tokens=50, eos_id=EOS, banned=(BOS, PAD, EOS))
    assert len(long.tokens[0]) == 96 - 90
    with pytest.raises(ValueError, match="context"):
        generate(tiny_model, [[BOS] * 96], max_new_tokens=1, eos_id=EOS)


# --- constrained JPEG decoding --------------------------------------------------------------------

SIZE = 32


@pytest.fixture(scope="module")
def jpeg_setup(tiny_llama):
    from PIL import Image

    from nanocodec import bpe, jpeg

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    images = [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(3)]
    images.append(Image.fromarray(np.stack([x * 8, y * 8, (x + y) * 4], -1).astype(np.uint8)))
    streams = [jpeg.encode(im, size=SIZE) for im in images]
    tokenizer = bpe.train(streams, 40, split="jpeg")
    return tiny_llama(tokenizer.vocab_size, 1536), tokenizer, streams


def test_jpeg_constraint_follows_a_real_stream_and_forces_eos_at_its_end(jpeg_setup):
    from nanocodec.sampling import JpegConstraint

    _, tokenizer, streams = jpeg_setup
    tokens = tokenizer.encode(streams[3])
    constraint = JpegConstraint(tokenizer, [b""])
    for i, token in enumerate(tokens):
        assert constraint.forced(0) is None
        assert not constraint.accept(0, tokenizer.eos_id), f"EOS accepted before the end, at token {i}"
        assert constraint.accept(0, token), f"token {i} of a valid stream refused"
    assert constraint.forced(0) == tokenizer.eos_id and constraint.accept(0, tokenizer.eos_id)
    assert not constraint.accept(0, tokens[-1])  # nothing may follow EOI


def test_jpeg_constraint_refuses_breaking_tokens_and_a_wrong_header(jpeg_setup):
    from nanocodec import jpeg
    from nanocodec.sampling import JpegConstraint

    _, tokenizer, streams = jpeg_setup
    header = jpeg.prompt(streams[0], 0.0)
    other = jpeg.prompt(jpeg.encode(jpeg.decode(streams[0]), size=16), 0.0)  # another size in SOF
    constraint = JpegConstraint(tokenizer, [b"", b""], header=header)
    for byte in other:
        if not constraint.accept(0, byte):
            break
    else:
        pytest.fail("a stream whose header differs from the pinned one was accepted")
    assert not constraint.accept(1, 0x00)  # a stream starts with FF D8
    assert not constraint.accept(1, tokenizer.bos_id)
    with pytest.raises(ValueError, match="not a viable prefix"):
        JpegConstraint(tokenizer, [b"\xff\xd8\x00"])


def test_constrain_makes_a_random_model_write_only_valid_jpegs(jpeg_setup):
    from PIL import Image

    from nanocodec import huffman, jpeg
    from nanocodec.sampling import complete

    model, tokenizer, _ = jpeg_setup
    for size, count in ((16, 4), (SIZE, 2)):
        header = jpeg.prompt(jpeg.encode(Image.new("RGB", (size, size), (128, 128, 128)), size=size), 0.0)
        out = complete(model, tokenizer, [b""] * count, header=header, constrain=True, temperature=1.0, top_k=40,
                       top_p=0.9, generator=torch.Generator().manual_seed(size))
        assert len(out.samples) == count and out.new_tokens > 0
        for sample in out.samples:
            assert sample.ok and sample.finished and huffman.validate(sample.data).ok
            assert jpeg.decode(sample.data).size == (size, size)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_prompt_at_ratio_keeps_its_first_mcus(jpeg_setup, ratio):
    from nanocodec import huffman, jpeg
    from nanocodec.sampling import complete

    model, tokenizer, streams = jpeg_setup
    prefix = jpeg.prompt(streams[3], ratio)
    kept = math.floor(ratio * jpeg.mcu_count(streams[3]))
    out = complete(model, tokenizer, [prefix] * 2, constrain=True, generator=torch.Generator().manual_seed(1))
    given = np.asarray(jpeg.decode(prefix, repair=True))
    cols = SIZE // 16
    for sample in out.samples:
        assert sample.ok and sample.data.startswith(prefix)
        assert huffman.validate(sample.data).mcus == jpeg.mcu_count(streams[3])
        pixels = np.asarray(jpeg.decode(sample.data))
        for m in range(kept):
            row, col = divmod(m, cols)
            # Chroma upsampling blends the last pixel row/column with the next, generated, MCU.
            bottom = 16 if m + cols < kept else 15
            right = 16 if (col + 1 < cols and m + 1 < kept) or col + 1 == cols else 15
            block = (slice(16 * row, 16 * row + bottom), slice(16 * col, 16 * col + right))
            assert np.array_equal(pixels[block], given[block]), f"MCU {m} differs from the prompt's"
