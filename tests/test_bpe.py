"""nanocodec.bpe: the fast trainer against a minbpe-style reference, encoding, JPEG prompt prefixes,
the file format, HuggingFace export and the CLI."""
import hashlib
import json
import warnings
from collections import Counter
from unittest.mock import patch

import numpy as np
import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from PIL import Image

from nanocodec import bpe, jpeg
from nanocodec.bpe import BpeError, BpeWarning, Tokenizer


# -- the reference: minbpe's get_stats and merge, plus the pre-split, by the letter of the spec -----

def ref_pieces(doc: bytes, split) -> list[list[int]]:
    if split is None:
        return [list(doc)] if doc else []
    pattern = bpe.SPLIT_PATTERNS.get(split, split)
    cuts = sorted({0, len(doc)} | {i for m in regex.finditer(pattern, doc) for i in m.span()})
    return [list(doc[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a]


def get_stats(ids: list[int], counts: Counter) -> None:
    counts.update(zip(ids, ids[1:]))


def merge(ids: list[int], pair: tuple[int, int], new: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def ref_train(docs: list[bytes], merges: int, split) -> list[tuple[int, int]]:
    pieces = [p for d in docs for p in ref_pieces(d, split)]
    learned = []
    for i in range(merges):
        counts = Counter()
        for p in pieces:
            get_stats(p, counts)
        if not counts:
            break
        pair = min(counts, key=lambda k: (-counts[k], k))
        if counts[pair] < 2:
            break
        pieces = [merge(p, pair, 256 + i) for p in pieces]
        learned.append(pair)
    return learned


def ref_encode(data: bytes, merges: list[tuple[int, int]], split) -> list[int]:
    """Replay the training merges in order over every piece."""
    out = []
    for p in ref_pieces(data, split):
        for i, pair in enumerate(merges):
            p = merge(p, pair, 256 + i)
        out.extend(p)
    return out


def encode_both_ways(tok: Tokenizer, data: bytes) -> tuple[list[int], list[int]]:
    """(ids from the per-piece loop, ids from the numpy replay of all merges), each with a cold cache."""
    with patch.multiple(bpe, SMALL_BATCH_BYTES=10**9, SHORT_PIECE=10**9):
        loop = Tokenizer(tok.merges, split=tok.split).encode(data)
    with patch.object(bpe, "SMALL_BATCH_BYTES", -1):
        replay = Tokenizer(tok.merges, split=tok.split).encode(data)
    return loop, replay


def quiet_train(*args, **kwargs) -> Tokenizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BpeWarning)
        return bpe.train(*args, **kwargs)


# -- strategies ----------------------------------------------------------------------------------

# Few distinct byte values so pairs repeat, ties abound and runs like b"aaaa" appear; the marker
# bytes make the jpeg and avc splits cut.
ALPHABETS = [b"a", b"ab", b"\x00\x01\xff\xd0", b"ab\xff\xd3\x00\x01", bytes(range(8))]
small_docs = st.sampled_from(ALPHABETS).flatmap(
    lambda alphabet: st.lists(
        st.one_of(
            st.lists(st.sampled_from(list(alphabet)), max_size=120).map(bytes),
            st.sampled_from([b"", alphabet[:1], alphabet[:1] * 6]),
        ),
        max_size=10,
    )
)
splits = st.sampled_from([None, "jpeg", "avc", rb"(?=\xff)", rb"a+", rb"(\x00)(\x01)?"])


@given(docs=small_docs, merges=st.integers(0, 40), split=splits)
def test_trainer_matches_reference(docs, merges, split):
    expected = ref_train(docs, merges, split)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = bpe.train(docs, merges, split=split)
    assert tok.merges == expected
    stopped = [w for w in caught if issubclass(w.category, BpeWarning)]
    assert bool(stopped) == (len(expected) < merges)
    assert tok.vocab_size == 256 + len(expected) + 3


@pytest.mark.parametrize("seed", range(4))
def test_trainer_matches_reference_on_larger_corpora(seed):
    # Hypothesis shrinks toward tiny corpora; bookkeeping bugs (a pair whose count falls but that
    # wins later, neighbouring merges sharing a pair) need a few hundred bytes to show.
    rng = np.random.default_rng(seed)
    for _ in range(15):
        alphabet = rng.choice([2, 3, 4, 6])
        docs = [rng.integers(0, alphabet, rng.integers(0, 150)).astype(np.uint8).tobytes() for _ in range(rng.integers(1, 10))]
        merges, split = int(rng.integers(10, 60)), [None, "avc"][seed % 2]
        assert quiet_train(docs, merges, split=split).merges == ref_train(docs, merges, split)


@given(docs=small_docs, merges=st.integers(0, 40), split=splits, data=st.binary(max_size=200))
def test_encode_replays_merges_and_round_trips(docs, merges, split, data):
    tok = quiet_train(docs, merges, split=split)
    for x in [data, *docs]:
        loop, replay = encode_both_ways(tok, x)
        assert loop == replay == ref_encode(x, tok.merges, split)
        assert tok.decode(loop) == x


@pytest.fixture(scope="module")
def jpeg_streams() -> list[bytes]:
    rng = np.random.default_rng(0)
    streams = []
    for seed in range(8):
        # Smooth random fields: flat MCUs repeat, textured ones do not, as in photos.
        small = rng.integers(0, 256, (4 + seed % 3, 4 + seed % 2, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((128, 128), Image.Resampling.BICUBIC)
        streams.append(jpeg.encode(im, size=128))
    return streams


@pytest.fixture(scope="module")
def jpeg_tokenizer(jpeg_streams) -> Tokenizer:
    return quiet_train(jpeg_streams, 300, split="jpeg")


@given(data=st.binary(max_size=3000))
def test_arbitrary_bytes_round_trip_with_many_merges(jpeg_tokenizer, data):
    ids = jpeg_tokenizer.encode(data, bos=True, eos=True)
    assert ids[0] == jpeg_tokenizer.bos_id and ids[-1] == jpeg_tokenizer.eos_id
    assert jpeg_tokenizer.decode(ids) == data
    assert ids[1:-1] == ref_encode(data, jpeg_tokenizer.merges, "jpeg")
    loop, replay = encode_both_ways(jpeg_tokenizer, data)
    assert loop == replay == ids[1:-1]


def test_jpeg_prompt_tokens_are_a_prefix(jpeg_streams, jpeg_tokenizer):
    assert len(jpeg_tokenizer.merges) == 300
    for stream in jpeg_streams:
        whole = jpeg_tokenizer.encode(stream)
        cuts = jpeg.restart_offsets(stream)
        assert len(cuts) == jpeg.mcu_count(stream)  # one restart interval per MCU
        for cut in cuts:
            head = jpeg_tokenizer.encode(stream[:cut])
            assert whole[: len(head)] == head
        ratio_prompt = jpeg.prompt(stream, 0.5)
        head = jpeg_tokenizer.encode(ratio_prompt)
        assert whole[: len(head)] == head and jpeg_tokenizer.decode(head) == ratio_prompt


def test_headers_end_a_piece(jpeg_streams):
    for stream in jpeg_streams:
        scan = jpeg.restart_offsets(stream)[0]
        headers = jpeg.prompt(stream, 0.0)
        assert len(headers) == scan
        # A merge of the last header byte with the first scan byte must not apply ...
        tok = Tokenizer([(stream[scan - 1], stream[scan])], split="jpeg")
        head = tok.encode(headers)
        assert tok.encode(stream)[: len(head)] == head
        # ... which isolating the restart markers alone would not ensure.
        rst_only = Tokenizer(tok.merges, split=rb"\xff[\xd0-\xd7]")
        head = rst_only.encode(headers)
        assert rst_only.encode(stream)[: len(head)] != head


@given(chunks=st.lists(st.binary(max_size=30), min_size=1, max_size=6), markers=st.data(), split=st.sampled_from(["jpeg", "avc"]))
def test_cut_after_a_marker_is_a_token_prefix(jpeg_tokenizer, chunks, markers, split):
    sos = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    rst = [b"\xff" + bytes([m]) for m in range(0xD0, 0xD8)]
    marker = st.sampled_from([*rst, sos] if split == "jpeg" else [b"\x00\x00\x01", b"\x00\x00\x00\x01"])
    parts = [c + markers.draw(marker) for c in chunks]
    data = b"".join(parts)
    tok = Tokenizer(jpeg_tokenizer.merges, split=split)
    whole = tok.encode(data)
    cut = 0
    for part in parts:
        cut += len(part)
        head = tok.encode(data[:cut])
        assert whole[: len(head)] == head


def test_runs_merge_left_to_right_without_overlap():
    tok = bpe.train([b"aaaa", b"aaaa"], 2, split=None)
    assert tok.merges == [(97, 97), (256, 256)]
    assert tok.encode(b"aaaaa") == [257, 97]
    assert tok.encode(b"aaa") == [256, 97]


def test_early_stop_is_announced():
    with pytest.warns(BpeWarning, match="stopped after 1 of 5 merges"):
        tok = bpe.train([b"abab", b"c"], 5, split=None)
    assert tok.merges == [(97, 98)]
    with pytest.warns(BpeWarning, match="stopped after 0 of 3"):
        assert bpe.train([], 3).merges == []


def test_encode_batch_matches_encode(jpeg_streams, jpeg_tokenizer):
    docs = [*jpeg_streams, b"", b"\xff", jpeg_streams[0][:50], jpeg_streams[1]]
    with patch.object(bpe, "SMALL_BATCH_BYTES", -1):
        batch = Tokenizer(jpeg_tokenizer.merges).encode_batch(docs, bos=True, eos=True)
    # A tiny cache bound makes the per-piece loop empty its cache between documents.
    with patch.object(bpe, "CACHE_PIECES", 5):
        singles = [jpeg_tokenizer.encode(doc, bos=True, eos=True) for doc in docs]
    for ids, single, doc in zip(batch, singles, docs):
        assert ids.dtype == np.int32
        assert ids.tolist() == single == [jpeg_tokenizer.bos_id, *ref_encode(doc, jpeg_tokenizer.merges, "jpeg"), jpeg_tokenizer.eos_id]
    assert jpeg_tokenizer.encode_batch([]) == []


def test_specials_and_token_bytes(jpeg_tokenizer):
    tok = jpeg_tokenizer
    n = 256 + len(tok.merges)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (n, n + 1, n + 2, n + 3)
    assert tok.decode([tok.bos_id, 65, tok.pad_id, 66, tok.eos_id]) == b"AB"
    for i, (a, b) in enumerate(tok.merges):
        assert tok.token_bytes(256 + i) == tok.token_bytes(a) + tok.token_bytes(b)
    assert tok.token_bytes(tok.eos_id) == b""
    for bad in (-1, tok.vocab_size):
        with pytest.raises(ValueError, match=f"token id {bad} is outside"):
            tok.decode([1, bad])
        with pytest.raises(ValueError, match="outside"):
            tok.token_bytes(bad)
    custom = Tokenizer(tok.merges, specials=("<img>",))
    assert custom.special_ids == {"<img>": n}
    with pytest.raises(KeyError, match="no <bos> token"):
        custom.encode(b"x", bos=True)


@pytest.mark.parametrize("call, error, match", [
    (lambda: bpe.train([b"ok", "text"], 4), TypeError, "document 1 is a str"),
    (lambda: bpe.train([b"ok"], -1), ValueError, "merges must be"),
    (lambda: bpe.train([b"ok"], 4, split="png"), ValueError, "unknown split 'png'"),
    (lambda: bpe.train([b"ok"], 4, split=rb"(unclosed"), ValueError, "does not compile"),
    (lambda: Tokenizer([(256, 1)]), ValueError, "merge 0 .* does not exist yet"),
    (lambda: Tokenizer([], specials=("<a>", "<a>")), ValueError, "distinct"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# -- the file format -------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["jpeg", "avc", None, rb"\xfe[\x80-\xff]|(?=\x00)"])
def test_save_load_round_trip(tmp_path, jpeg_streams, split):
    tok = quiet_train(jpeg_streams[:3], 50, split=split, specials=("<bos>", "<eos>", "<pad>", "<frame>"))
    path = tmp_path / "tok.json"
    tok.save(path)
    back = Tokenizer.load(path)
    assert (back.merges, back.split, back.pattern, back.specials) == (tok.merges, tok.split, tok.pattern, tok.specials)
    assert back.sha256 == tok.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert back.encode(jpeg_streams[4]) == tok.encode(jpeg_streams[4])
    obj = json.loads(path.read_text())
    assert obj["version"] == 1 and obj["merges"] == [list(m) for m in tok.merges]
    assert len(path.read_text().splitlines()) > len(tok.merges)  # one merge per line


def test_sha256_tracks_content(jpeg_tokenizer):
    assert Tokenizer(jpeg_tokenizer.merges).sha256 == jpeg_tokenizer.sha256
    assert Tokenizer(jpeg_tokenizer.merges[:-1]).sha256 != jpeg_tokenizer.sha256
    assert Tokenizer(jpeg_tokenizer.merges, split="avc").sha256 != jpeg_tokenizer.sha256


def _good_file() -> dict:
    return json.loads(Tokenizer([(97, 98), (256, 99)]).to_json())


@pytest.mark.parametrize("content, match", [
    (b"", "not a JSON tokenizer file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a JSON tokenizer file"),
    (Tokenizer([(97, 98)]).to_json().encode()[:-20], "not a JSON tokenizer file"),
    (b"[1, 2]", "not a nanocodec BPE tokenizer"),
    (json.dumps({**_good_file(), "format": "hf"}).encode(), "not a nanocodec BPE tokenizer"),
    (json.dumps({**_good_file(), "version": 2}).encode(), "version 2 is not supported"),
    (json.dumps({k: v for k, v in _good_file().items() if k != "version"}).encode(), "version None is not supported"),
    (json.dumps({**_good_file(), "merges": [[97, 98], [300, 1]]}).encode(), "merge 1 .* does not exist yet"),
    (json.dumps({**_good_file(), "merges": [[97, 98, 99]]}).encode(), "list of \\[left id, right id\\] pairs"),
    (json.dumps({**_good_file(), "merges": [["a", "b"]]}).encode(), "pairs"),
    (json.dumps({**_good_file(), "split": "png"}).encode(), "neither a known split"),
    (json.dumps({**_good_file(), "pattern": "x"}).encode(), "neither a known split"),
    (json.dumps({**_good_file(), "split": "custom", "pattern": "("}).encode(), "does not compile"),
    (json.dumps({**_good_file(), "split": "custom", "pattern": "\u20ac"}).encode(), "neither a known split"),
    (json.dumps({**_good_file(), "specials": "<bos>"}).encode(), "specials"),
    (json.dumps({**_good_file(), "specials": ["<bos>", 3]}).encode(), "distinct non-empty strings"),
])
def test_corrupt_files_raise_bpe_error(tmp_path, content, match):
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(BpeError, match=match) as info:
        Tokenizer.load(path)
    assert str(path) in str(info.value)


# -- HuggingFace export ------------------------------------------------------------------------------

def _hf_ids(tok: Tokenizer, tmp_path, docs: list[bytes]) -> list[list[int]]:
    tokenizers = pytest.importorskip("tokenizers")
    path = tmp_path / "tokenizer.json"
    tok.to_hf(path)
    hf = tokenizers.Tokenizer.from_file(str(path))
    return [e.ids for e in hf.encode_batch([d.decode("latin-1") for d in docs])]


@given(docs=small_docs, merges=st.integers(0, 40), split=st.sampled_from([None, "jpeg", "avc"]), data=st.binary(max_size=100))
def test_to_hf_gives_the_same_ids(tmp_path_factory, docs, merges, split, data):
    tok = quiet_train(docs, merges, split=split)
    spelled = [tok.token_bytes(i) for i in range(256 + len(tok.merges))]
    if len(set(spelled)) < len(spelled):
        with pytest.raises(ValueError, match="both spell"):
            tok.to_hf(tmp_path_factory.mktemp("hf") / "tokenizer.json")
        return
    inputs = [data, *docs, b"<bos>"]
    assert _hf_ids(tok, tmp_path_factory.mktemp("hf"), inputs) == [tok.encode(x) for x in inputs]


def test_to_hf_on_jpeg_streams(tmp_path, jpeg_streams, jpeg_tokenizer):
    assert _hf_ids(jpeg_tokenizer, tmp_path, jpeg_streams) == [jpeg_tokenizer.encode(s) for s in jpeg_streams]
    hf = pytest.importorskip("tokenizers").Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.token_to_id("<eos>") == jpeg_tokenizer.eos_id
    assert hf.decode(jpeg_tokenizer.encode(jpeg_streams[0])).encode("latin-1") == jpeg_streams[0]


def test_to_hf_refuses_custom_patterns(tmp_path):
    with pytest.raises(ValueError, match="custom pattern"):
        Tokenizer([], split=rb"\xff").to_hf(tmp_path / "tokenizer.json")


# -- command line -----------------------------------------------------------------------------------

def test_cli_train_and_encode(tmp_path, jpeg_streams, capsys):
    folder = tmp_path / "jpegs"
    (folder / "nested").mkdir(parents=True)
    for i, s in enumerate(jpeg_streams):
        (folder / ("nested" if i % 2 else "") / f"{i}.jpg").write_bytes(s)
    out = tmp_path / "tok.json"
    assert bpe.main(["train", str(folder), "--merges", "40", "-o", str(out)]) == 0
    tok = Tokenizer.load(out)
    assert tok.merges == quiet_train(jpeg_streams, 40).merges
    assert "learned 40 merges from 8 files" in capsys.readouterr().out

    assert bpe.main(["encode", str(out), str(folder / "0.jpg")]) == 0
    captured = capsys.readouterr()
    assert [int(x) for x in captured.out.split()] == tok.encode(jpeg_streams[0])
    assert "bytes per token" in captured.err
    assert bpe.main(["encode", str(out), str(folder / "0.jpg"), "--show"]) == 0
    ids = tok.encode(jpeg_streams[0])
    assert capsys.readouterr().out.splitlines() == [f"{i}\t{tok.token_bytes(i).hex(' ')}" for i in ids]


def test_cli_skips_and_counts_missing_files(tmp_path, capsys):
    good = tmp_path / "a.bin"
    good.write_bytes(b"abab" * 10)
    out = tmp_path / "tok.json"
    assert bpe.main(["train", str(good), str(tmp_path / "missing.bin"), "--merges", "2", "--split", "none", "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "missing.bin" in captured.err and "1 skipped" in captured.out
    assert Tokenizer.load(out).split is None


def test_cli_encode_reports_a_bad_tokenizer_file(tmp_path, capsys):
    bad = tmp_path / "tok.json"
    bad.write_text('{"format": "nanocodec-bpe", "version": 7}')
    assert bpe.main(["encode", str(bad), str(bad)]) == 1
    assert "version 7 is not supported" in capsys.readouterr().err
    good = tmp_path / "good.json"
    Tokenizer([]).save(good)
    assert bpe.main(["encode", str(good), str(tmp_path / "missing.jpg")]) == 1
    assert "missing.jpg" in capsys.readouterr().err
