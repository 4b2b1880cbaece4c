"""The training loader (nanocodec.data) against the flat token arrays of a small prepared folder."""
from pathlib import Path

import numpy as np
import pytest
import torch

from nanocodec import bpe, data
from nanocodec.prepare import prepare

CONTEXT = 48


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "demo"
    prepare("jpeg", "demo", out, size=16, merges=24, tokenizer_docs=12, val_fraction=0.25,
            workers=1, limit=40, seed=3, shard_files=6)
    return out


def flat(folder: Path, split: str) -> np.ndarray:
    """Reference: every shard of the split read whole and concatenated."""
    shards = sorted(folder.glob(f"{split}_*.bin"))
    return np.concatenate([np.fromfile(s, dtype="<u2") for s in shards]).astype(np.int64)


def served_chunks(stream: data.TokenStream, batches: int) -> list[np.ndarray]:
    rows = []
    for _ in range(batches):
        x, y = next(stream)
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (stream.batch_size, CONTEXT)
        assert torch.equal(x[:, 1:], y[:, :-1])
        rows += [np.concatenate([xr.numpy(), yr.numpy()[-1:]]) for xr, yr in zip(x, y)]
    return rows


def chunk_index(tokens: np.ndarray, row: np.ndarray) -> int:
    """Which chunk k (tokens [k * CONTEXT, k * CONTEXT + CONTEXT + 1)) a served row is."""
    matches = [k for k in range((len(tokens) - 1) // CONTEXT)
               if np.array_equal(tokens[k * CONTEXT:k * CONTEXT + CONTEXT + 1], row)]
    assert matches, "served row is not a chunk of the concatenated shards"
    return matches[0]


def test_folder_has_several_shards(folder):
    assert len(list(folder.glob("train_*.bin"))) >= 3
    assert data.manifest(folder)["splits"]["val"]["documents"] > 0


def test_one_epoch_serves_every_chunk_once(folder):
    tokens = flat(folder, "train")
    stream = data.TokenStream(folder, "train", CONTEXT, batch_size=5, seed=1)
    n = stream.chunks
    assert n == (len(tokens) - 1) // CONTEXT
    rows = served_chunks(stream, -(-n // 5))
    assert sorted(chunk_index(tokens, r) for r in rows[:n]) == list(range(n))


def test_order_is_seeded_and_epochs_reshuffle(folder):
    a = data.TokenStream(folder, "train", CONTEXT, batch_size=4, seed=1)
    b = data.TokenStream(folder, "train", CONTEXT, batch_size=4, seed=1)
    c = data.TokenStream(folder, "train", CONTEXT, batch_size=4, seed=2)
    for _ in range(3):
        xa, ya = next(a)
        xb, yb = next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(next(a)[0], next(c)[0])
    tokens = flat(folder, "train")
    stream = data.TokenStream(folder, "train", CONTEXT, batch_size=1, seed=1)
    n = stream.chunks
    order = [chunk_index(tokens, r) for r in served_chunks(stream, 2 * n)]
    assert sorted(order[n:]) == list(range(n)) and order[n:] != order[:n]


def test_ranks_are_disjoint_and_cover_the_single_process_order(folder):
    world, batch = 3, 2
    single = data.TokenStream(folder, "train", CONTEXT, batch_size=world * batch, seed=5)
    ranks = [data.TokenStream(folder, "train", CONTEXT, batch, rank=r, world_size=world, seed=5)
             for r in range(world)]
    tokens = flat(folder, "train")
    per_rank: list[list[int]] = [[] for _ in ranks]
    for _ in range(-(-single.chunks // (world * batch))):
        x, y = next(single)
        for r, stream in enumerate(ranks):
            xr, yr = next(stream)
            assert torch.equal(xr, x[r * batch:(r + 1) * batch]) and torch.equal(yr, y[r * batch:(r + 1) * batch])
            per_rank[r] += [chunk_index(tokens, np.concatenate([a, b[-1:]])) for a, b in zip(xr.numpy(), yr.numpy())]
    steps_in_epoch = single.chunks // (world * batch)  # whole steps: no sample of the next epoch yet
    firsts = [set(chunks[:steps_in_epoch * batch]) for chunks in per_rank]
    assert all(len(f) == steps_in_epoch * batch for f in firsts)
    assert all(not (a & b) for i, a in enumerate(firsts) for b in firsts[i + 1:])


def test_state_dict_resumes_exactly_and_elastically(folder):
    stream = data.TokenStream(folder, "train", CONTEXT, batch_size=4, seed=7)
    for _ in range(5):
        next(stream)
    state = stream.state_dict()
    expected = [next(stream) for _ in range(3)]
    resumed = data.TokenStream(folder, "train", CONTEXT, batch_size=4, seed=7)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, (next(resumed) for _ in range(3))):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    # Two ranks of batch 2 resumed from the same state serve the same 4 samples per step.
    halves = [data.TokenStream(folder, "train", CONTEXT, batch_size=2, rank=r, world_size=2, seed=7) for r in (0, 1)]
    for h in halves:
        h.load_state_dict(state)
    for x, _ in expected:
        assert torch.equal(torch.cat([next(h)[0] for h in halves]), x)


def test_state_from_another_stream_is_refused(folder):
    state = data.TokenStream(folder, "train", CONTEXT, batch_size=2, seed=1).state_dict()
    with pytest.raises(data.DataError, match="seed"):
        data.TokenStream(folder, "train", CONTEXT, batch_size=2, seed=2).load_state_dict(state)
    with pytest.raises(data.DataError, match="context"):
        data.TokenStream(folder, "train", CONTEXT + 1, batch_size=2, seed=1).load_state_dict(state)


def test_val_batches_target_every_non_bos_token_once(folder):
    tokens = flat(folder, "val")
    ids = data.manifest(folder)["tokenizer"]
    targets, inputs = [], []
    for x, y in data.val_batches(folder, CONTEXT, batch_size=3):
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[0] <= 3
        inputs.append(x.reshape(-1))
        targets.append(y.reshape(-1))
    y = torch.cat(targets).numpy()
    x = torch.cat(inputs).numpy()
    assert np.array_equal(y[y != data.IGNORE], tokens[1:][tokens[1:] != ids["bos_id"]])
    n = len(tokens) - 1
    assert np.array_equal(x[:n], tokens[:-1]) and np.all(x[n:] == ids["pad_id"])
    assert np.all(y[n:] == data.IGNORE)


def test_documents_and_codec_bytes(folder):
    tok = bpe.Tokenizer.load(folder / "tokenizer.json")
    manifest = data.manifest(folder)
    for split in ("train", "val"):
        docs = list(data.documents(folder, split))
        assert len(docs) == manifest["splits"][split]["documents"]
        assert sum(len(d) + 2 for d in docs) == len(flat(folder, split))
        streams = [tok.decode(d) for d in docs]
        assert all(s.startswith(b"\xff\xd8") and s.endswith(b"\xff\xd9") for s in streams)
        assert sum(map(len, streams)) == data.codec_bytes(folder, split)


def test_bad_folders_raise_data_error(folder, tmp_path):
    with pytest.raises(data.DataError, match="no manifest.json"):
        data.TokenStream(tmp_path, "train", CONTEXT, 2)
    with pytest.raises(data.DataError, match="no chunk"):
        data.TokenStream(folder, "val", 10**7, 2)
    with pytest.raises(data.DataError, match="no split"):
        data.codec_bytes(folder, "test")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    shard = broken / "train_0001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(data.DataError, match="train_0001.bin"):
        data.TokenStream(broken, "train", CONTEXT, 2)


def test_bits_per_byte_of_a_total_and_of_its_parts():
    # ln 256 nats per byte is 8 bits per byte: a uniform guess over byte values.
    assert data.bits_per_byte(10 * np.log(256), 10) == pytest.approx(8.0)
    rng = np.random.default_rng(0)
    parts, nbytes = rng.uniform(0, 1e4, 3), 4321
    assert data.bits_per_byte(parts, nbytes) == pytest.approx(parts.sum() / np.log(2) / nbytes, rel=1e-12)
    assert data.bits_per_byte(parts[1], nbytes) == parts[1] / np.log(2) / nbytes
    assert isinstance(data.bits_per_byte(np.float64(1.0), np.int64(3)), float)
