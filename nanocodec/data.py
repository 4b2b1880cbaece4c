"""Reading a prepared data folder (nanocodec.prepare) for training and evaluation.

Owns: `TokenStream`, the endless training batches: the split's shards read as one flat uint16 token
stream (memmaps, as in nanoGPT), cut into `context + 1`-token chunks every `context` tokens (the
paper's concatenate-and-chunk: documents run into each other, <bos>/<eos> mark the seams), served
in a seeded random order, epoch after epoch; `val_batches`, one walk over the val split in which
every token but the <bos> of each document is a target exactly once; `codec_bytes` and
`bits_per_byte`, the one definition of bits per byte (train.py and nanocodec.eval use it);
`documents`, the token ids of each document (for prompts), and `document_lengths`.
Does not own: writing shards or their format (nanocodec.prepare), tokenization (nanocodec.bpe).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

IGNORE = -100  # the targets torch's cross-entropy skips (ignore_index)


class DataError(RuntimeError):
    """A data folder that is missing, unfinished or inconsistent, or a request it cannot serve."""


def manifest(path: str | os.PathLike) -> dict:
    """The manifest of a finished data folder."""
    file = Path(path) / "manifest.json"
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} is not a finished data folder (no manifest.json): "
                        "run python -m nanocodec.prepare") from None
    except ValueError as e:
        raise DataError(f"{file} is not valid JSON: {e}") from e


class _Split:
    """The shards of one split: one virtual array of tokens, and where its documents start."""

    def __init__(self, path: str | os.PathLike, split: str):
        self.manifest = manifest(path)
        if split not in self.manifest["splits"]:
            raise DataError(f"{path} has no split {split!r} (it has {sorted(self.manifest['splits'])})")
        self.shards: list[np.ndarray] = []
        self.offsets: list[np.ndarray] = []
        for n in range(self.manifest["splits"][split]["shards"]):
            bin_path, idx_path = Path(path) / f"{split}_{n:04d}.bin", Path(path) / f"{split}_{n:04d}.idx"
            try:
                offsets = np.fromfile(idx_path, dtype="<i8")
                size = bin_path.stat().st_size
            except OSError as e:
                raise DataError(f"{path}: shard {bin_path.name} or its index is missing: {e}") from e
            if len(offsets) == 0 or offsets[0] != 0 or size != 2 * offsets[-1] or np.any(np.diff(offsets) < 2):
                raise DataError(f"{bin_path}: {size} bytes do not match its index {idx_path.name}; prepare it again")
            self.offsets.append(offsets)
            if size:  # numpy cannot map an empty file
                self.shards.append(np.memmap(bin_path, dtype="<u2", mode="r"))
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.size = int(self.starts[-1])
        if self.size != self.manifest["splits"][split]["tokens"]:
            raise DataError(f"{path}: {split} shards hold {self.size} tokens, the manifest says "
                            f"{self.manifest['splits'][split]['tokens']}; prepare it again")

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the concatenated shards."""
        pieces = []
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while length > 0:
            lo = start - int(self.starts[shard])
            piece = self.shards[shard][lo:lo + length]
            pieces.append(piece)
            start, length, shard = start + len(piece), length - len(piece), shard + 1
        return np.concatenate(pieces) if len(pieces) > 1 else np.asarray(pieces[0])


class TokenStream:
    """Endless (x, y) int64 batches of shape (batch_size, context), y being x shifted by one.

    Chunk k is tokens [k * context, k * context + context + 1). Each epoch visits every chunk once, in
    a permutation drawn from (seed, epoch). Global sample i is chunk perm_{i // n}[i % n]; at each
    step rank r takes the batch_size samples starting at step * batch_size * world_size + r *
    batch_size, so ranks never share a sample and together see every chunk once per epoch.
    `state_dict()` is the same on every rank (the next global sample); a run resumed from it may
    change batch size or world size and still continues the same sequence of samples.
    """

    def __init__(self, path: str | os.PathLike, split: str, context: int, batch_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0):
        if context < 1 or batch_size < 1:
            raise DataError(f"context ({context}) and batch_size ({batch_size}) must be positive")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.data = _Split(path, split)
        self.path, self.split, self.context, self.batch_size = str(path), split, context, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.chunks = (self.data.size - 1) // context
        if self.chunks < 1:
            raise DataError(f"{path} {split}: {self.data.size} tokens hold no chunk of context {context} + 1")
        self.sample = 0
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}  # a step spans <= 2
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.chunks)
        return self._orders[epoch]

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.sample + self.rank * self.batch_size
        rows = np.empty((self.batch_size, self.context + 1), dtype=np.int64)
        for row, i in enumerate(range(first, first + self.batch_size)):
            epoch, k = divmod(i, self.chunks)
            rows[row] = self.data.read(int(self._order(epoch)[k]) * self.context, self.context + 1)
        self.sample += self.batch_size * self.world_size
        rows_t = torch.from_numpy(rows)
        return rows_t[:, :-1], rows_t[:, 1:]

    def state_dict(self) -> dict:
        return {"sample": self.sample, "seed": self.seed, "context": self.context, "chunks": self.chunks}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "context", "chunks"):
            if state.get(key) != mine[key]:
                raise DataError(f"stream state for {key}={state.get(key)!r} does not fit this stream "
                                f"({key}={mine[key]!r}: {self.path} {self.split})")
        self.sample = int(state["sample"])


def val_batches(path: str | os.PathLike, context: int, batch_size: int,
                split: str = "val") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over a split in (x, y) int64 batches of width `context`.

    Window w holds x = tokens [w * context, (w + 1) * context) and y the same shifted by one, so
    every token after the first is a target exactly once. Targets that are a document's <bos>
    (unpredictable by design) and the padding past the end are IGNORE; x is padded with <pad>.
    The last batch may have fewer rows.
    """
    data = _Split(path, split)
    ids = data.manifest["tokenizer"]
    windows = max(0, -(-(data.size - 1) // context))
    for first in range(0, windows, batch_size):
        rows = min(batch_size, windows - first)
        x = np.full((rows, context), ids["pad_id"], dtype=np.int64)
        y = np.full((rows, context), IGNORE, dtype=np.int64)
        for r in range(rows):
            start = (first + r) * context
            tokens = data.read(start, min(context + 1, data.size - start)).astype(np.int64)
            x[r, : len(tokens) - 1] = tokens[:-1]
            y[r, : len(tokens) - 1] = np.where(tokens[1:] == ids["bos_id"], IGNORE, tokens[1:])
        yield torch.from_numpy(x), torch.from_numpy(y)


def codec_bytes(path: str | os.PathLike, split: str) -> int:
    """Codec bytes of the split's documents: the denominator of bits per byte."""
    splits = manifest(path)["splits"]
    if split not in splits:
        raise DataError(f"{path} has no split {split!r} (it has {sorted(splits)})")
    return int(splits[split]["codec_bytes"])


def bits_per_byte(nats: float | np.ndarray, nbytes: float) -> float:
    """The cross-entropy of a codec stream in bits per byte of it (8.0: uniform over byte values):
    `nats`, the total over every predicted token (EOS included, each document's <bos> not), / ln 2 /
    the stream's `nbytes`. `nats` may be the totals of parts of the stream (nanocodec.eval's
    regions): each is turned into bits, then they are summed."""
    return float(np.sum(np.asarray(nats, dtype=np.float64) / math.log(2)) / nbytes)


def documents(path: str | os.PathLike, split: str) -> Iterator[np.ndarray]:
    """The token ids of each document of a split, without its <bos> and <eos>, in shard order."""
    data = _Split(path, split)
    shards = iter(data.shards)
    for offsets in data.offsets:
        if offsets[-1] == 0:
            continue
        tokens = next(shards)
        for start, end in zip(offsets[:-1], offsets[1:]):
            yield np.asarray(tokens[start + 1:end - 1])


def document_lengths(path: str | os.PathLike, split: str) -> np.ndarray:
    """Tokens per document of a split, its <bos> and <eos> included (from the shard indexes)."""
    return np.concatenate([np.diff(offsets) for offsets in _Split(path, split).offsets] or [np.zeros(0, np.int64)])
