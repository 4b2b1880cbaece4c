"""Byte-level BPE for codec streams: a fast exact trainer, the tokenizer, its file format and CLI.

Owns: learning merges from documents (`train`), encoding and decoding bytes (`Tokenizer`), the
JSON tokenizer file (`save`/`load`/`sha256`), export to a HuggingFace `tokenizer.json` (`to_hf`),
and `python -m nanocodec.bpe train|encode`. Does not own: which bytes a codec emits (nanocodec.jpeg,
nanocodec.avc) or how token ids are stored on disk for training (nanocodec.prepare).

Semantics, exactly (tests/test_bpe.py proves them against a minbpe-style reference):
- ids 0..255 are the bytes, merge i is id 256 + i, the special tokens follow the merges.
- A split pattern (a bytes regex) cuts each document at the start and end of each of its matches
  (zero-width ones too); the non-empty parts are the pieces, so every byte is in exactly one.
  Merges never cross pieces (nor documents). "jpeg" isolates the restart markers FF D0..FF D7 and
  the start-of-scan segment, so every MCU boundary is a token boundary and a prompt cut at an MCU
  encodes to a prefix of the whole stream's tokens; "avc" isolates the Annex-B start codes
  00 00 01 and 00 00 00 01.
- Training counts every adjacent pair in every piece (overlapping ones too), picks the most frequent
  pair, ties to the smallest (left id, right id), replaces its occurrences left to right without
  overlap, and repeats; it stops early, with a BpeWarning, when the best pair occurs < 2 times.
- Encoding applies merges lowest id first within each piece, which gives the same ids as replaying
  the training merges in order.

Speed: identical pieces are counted once, with a weight (JPEG restart intervals repeat). The pieces
lie end to end in numpy arrays as linked token lists with a position index per pair, so a merge
touches only its own occurrences and their neighbours. A pair forms only when the later of its two
tokens is created, so from then on its count only falls: a lazy max-heap of counts suffices, and
pairs seen once are never tracked. Encoding replays the merges the same way over all pieces of a
large batch, or, for a small one, merges piece by piece in a plain loop with a cache.
"""
from __future__ import annotations

import argparse
import hashlib
import heapq
import itertools
import json
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence, Union

import numpy as np
import regex
from tqdm import tqdm

from nanocodec.files import write_atomic

SPLIT_PATTERNS: dict[str, bytes] = {
    # RST markers, and the SOS segment (6 + 2 * components bytes, no FF inside) so that the first
    # MCU starts a piece too: a prompt of the headers alone is then a token prefix as well.
    "jpeg": rb"\xff[\xd0-\xd7]|\xff\xda(?:\x00\x08\x01[\x00-\xfe]{5}|\x00\x0a\x02[\x00-\xfe]{7}"
            rb"|\x00\x0c\x03[\x00-\xfe]{9}|\x00\x0e\x04[\x00-\xfe]{11})",
    "avc": rb"\x00\x00\x00?\x01",
}
DEFAULT_SPECIALS = ("<bos>", "<eos>", "<pad>")
# Encoding: up to this many bytes, in pieces no longer than SHORT_PIECE, a loop per piece beats the
# numpy replay of all merges; the loop's per-piece cache is emptied past CACHE_PIECES entries.
SMALL_BATCH_BYTES = 16384
SHORT_PIECE = 256
CACHE_PIECES = 1 << 18
_NO_MERGE = 1 << 62
FORMAT = "nanocodec-bpe"
VERSION = 1

Split = Union[str, bytes, None]


class BpeError(ValueError):
    """A tokenizer file that cannot be used: names the file and what is wrong with it."""


class BpeWarning(UserWarning):
    """Training stopped before the requested number of merges."""


def _compile_split(split: Split) -> tuple[Split, bytes | None, "regex.Pattern[bytes] | None"]:
    """(split as given, its pattern bytes, the pattern wrapped in one group for `_pieces`)."""
    if split is None:
        return None, None, None
    if isinstance(split, str):
        if split not in SPLIT_PATTERNS:
            raise ValueError(f"unknown split {split!r}: use one of {sorted(SPLIT_PATTERNS)}, None, or a bytes regex")
        pattern = SPLIT_PATTERNS[split]
    elif isinstance(split, (bytes, bytearray)):
        split = pattern = bytes(split)
    else:
        raise TypeError(f"split must be a name, a bytes regex or None, got {type(split).__name__}")
    try:
        return split, pattern, regex.compile(b"(" + pattern + b")")
    except regex.error as e:
        raise ValueError(f"split pattern {pattern!r} does not compile: {e}") from e


def _pieces(doc: bytes, wrapped: "regex.Pattern[bytes] | None") -> list[bytes]:
    """`doc` cut at the start and end of every match of the pattern, empty parts dropped."""
    if wrapped is None:
        return [doc] if doc else []
    parts = wrapped.split(doc)
    # split() interleaves each gap with the whole match (group 1) and then the pattern's own groups.
    period = wrapped.groups + 1
    if period == 2:
        return [p for p in parts if p]
    return [p for i, p in enumerate(parts) if i % period < 2 and p]


def _as_bytes(doc: object, index: int) -> bytes:
    if isinstance(doc, bytes):
        return doc
    if isinstance(doc, (bytearray, memoryview)):
        return bytes(doc)
    raise TypeError(f"document {index} is a {type(doc).__name__}, expected bytes")


class _PairGroups(NamedTuple):
    """Pair start positions sorted by pair code: starts[bounds[i]:bounds[i + 1]] all hold codes[i]."""

    starts: np.ndarray
    codes: np.ndarray
    bounds: np.ndarray


def _group(starts: np.ndarray, codes: np.ndarray, order: np.ndarray | None = None) -> _PairGroups:
    """Pair starts sorted by their codes (`order` if already known), one group per code."""
    order = np.argsort(codes, kind="stable") if order is None else order
    starts, codes = starts[order], codes[order]
    first = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1]))) if len(codes) else np.zeros(0, np.int64)
    return _PairGroups(starts, codes[first], np.append(first, len(codes)))


class _LinkedPieces:
    """Pieces laid end to end as linked token lists in numpy arrays, with a position index per pair.

    `tok[p]` is the token at position p (-1 once merged into its left neighbour); `nxt`/`prv` link
    the live positions of a piece (-1 at its ends). A pair is named by its code, left * capacity +
    right, so codes sort like (left, right) tuples. A pair only forms when the later of its two
    tokens is created (or at the start, for byte pairs), so all its positions are known at once:
    `index[code]` holds them, and stale ones are filtered out when the pair is merged.
    """

    def __init__(self, data: bytes, lengths: np.ndarray, capacity: int):
        """`data` holds the pieces end to end; `lengths` (all > 0) says where each ends."""
        n = len(data)
        dtype = np.int32 if n < 2**31 - 1 else np.int64
        self.starts = np.cumsum(lengths) - lengths
        self.tok = np.frombuffer(data, dtype=np.uint8).astype(dtype)
        self.nxt = np.arange(1, n + 1, dtype=dtype)
        self.prv = np.arange(-1, n - 1, dtype=dtype)
        self.nxt[self.starts + lengths - 1] = -1
        self.prv[self.starts] = -1
        self.capacity = capacity
        self.index: dict[int, np.ndarray] = {}
        self._mark = np.zeros(n, dtype=bool)

    def byte_pairs(self, wanted: np.ndarray | None = None) -> _PairGroups:
        """The pairs of the unmerged pieces; only those where `wanted[left * 256 + right]`, if given."""
        starts = np.flatnonzero(self.nxt >= 0).astype(self.tok.dtype)
        pairs = (self.tok[starts] * 256 + self.tok[starts + 1]).astype(np.uint16)
        if wanted is not None:
            keep = wanted[pairs]
            starts, pairs = starts[keep], pairs[keep]
        order = np.argsort(pairs, kind="stable")  # a radix sort for uint16
        return _group(starts, pairs.astype(np.int64) // 256 * self.capacity + pairs % 256, order)

    def file(self, groups: _PairGroups, keep: np.ndarray) -> None:
        """Index the groups where `keep` is true (the pairs that may still be merged)."""
        bounds = groups.bounds.tolist()
        for i, code in zip(np.flatnonzero(keep).tolist(), groups.codes[keep].tolist()):
            self.index[code] = groups.starts[bounds[i] : bounds[i + 1]]

    def codes(self, starts: np.ndarray) -> np.ndarray:
        return self.tok[starts].astype(np.int64) * self.capacity + self.tok[self.nxt[starts]]

    def pair_starts(self, positions: np.ndarray) -> np.ndarray:
        """The given positions that are live and have a right neighbour, i.e. start a pair."""
        positions = positions[positions >= 0]
        positions = positions[self.tok[positions] >= 0]
        return positions[self.nxt[positions] >= 0]

    def occurrences(self, a: int, b: int) -> np.ndarray:
        """Positions of the pair (a, b) that a left-to-right, non-overlapping pass would merge."""
        pos = self.index.pop(a * self.capacity + b, None)
        if pos is None:
            return np.zeros(0, dtype=self.tok.dtype)
        pos = pos[self.tok[pos] == a]
        pos = pos[self.nxt[pos] >= 0]
        pos = pos[self.tok[self.nxt[pos]] == b]
        if a == b and len(pos) > 1:
            # In a run "aaaa" the pair starts at every position; keep every other one of each
            # chain of overlapping starts, counting from the chain's left end.
            pos = np.sort(pos)
            index = np.arange(len(pos))
            chained = np.zeros(len(pos), dtype=bool)
            chained[1:] = self.nxt[pos[:-1]] == pos[1:]
            chain_start = np.maximum.accumulate(np.where(chained, 0, index))
            pos = pos[(index - chain_start) % 2 == 0]
        return pos

    def doomed(self, pos: np.ndarray) -> np.ndarray:
        """Starts of the pairs a merge at `pos` destroys: (left neighbour, a), (a, b), (b, right neighbour)."""
        right = self.nxt[pos]
        left = self.prv[pos]
        left = left[left >= 0]
        # A left neighbour that is the right half of another merged pair is already in `right`.
        self._mark[right] = True
        left = left[~self._mark[left]]
        self._mark[right] = False
        return self.pair_starts(np.concatenate((left, pos, right)))

    def merge(self, pos: np.ndarray, new: int) -> _PairGroups:
        """Replace the pairs starting at `pos` (from `occurrences`) by `new`; returns the pairs formed."""
        right = self.nxt[pos]
        after = self.nxt[right]
        self.tok[pos] = new
        self.tok[right] = -1
        self.nxt[pos] = after
        linked = after >= 0
        self.prv[after[linked]] = pos[linked]
        left = self.prv[pos]
        left = left[left >= 0]
        # A left neighbour holding `new` is itself in `pos`: its pair is counted there.
        left = left[self.tok[left] != new]
        fresh = self.pair_starts(np.concatenate((left, pos)))
        return _group(fresh, self.codes(fresh))

    def piece_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """(all live tokens in order, number of live tokens of each piece)."""
        live = self.tok >= 0
        counts = np.add.reduceat(live.astype(np.int64), self.starts) if len(self.starts) else np.zeros(0, np.int64)
        return self.tok[live], counts


class _PairCounts:
    """Weighted count of every pair that formed, and a lazy max-heap of (count, smallest code).

    Each pair code is registered once, when it forms (see _LinkedPieces); after that its count only
    falls. So a heap entry may overstate its count, and is corrected when it reaches the top; pairs
    seen fewer than twice can never be merged and are left out of the heap.
    """

    def __init__(self, positions: int, weight: np.ndarray):
        self.weight = weight
        self.pair_id = np.zeros(positions, dtype=np.int64)  # id of the pair starting at a position
        self.count = np.zeros(1024, dtype=np.int64)
        self.size = 0
        self.heap: list[tuple[int, int, int]] = []

    def add(self, groups: _PairGroups) -> np.ndarray:
        """Register newly formed pairs; returns which of them occur at least twice."""
        k = len(groups.codes)
        if not k:
            return np.zeros(0, dtype=bool)
        sums = np.add.reduceat(self.weight[groups.starts], groups.bounds[:-1])
        first = self.size
        if first + k > len(self.count):
            self.count = np.concatenate((self.count, np.zeros(len(self.count) + k, dtype=np.int64)))
        self.count[first : first + k] = sums
        self.pair_id[groups.starts] = np.repeat(np.arange(first, first + k), np.diff(groups.bounds))
        self.size += k
        frequent = sums >= 2
        for item in zip((-sums[frequent]).tolist(), groups.codes[frequent].tolist(), (np.flatnonzero(frequent) + first).tolist()):
            heapq.heappush(self.heap, item)
        return frequent

    def remove(self, starts: np.ndarray) -> None:
        np.subtract.at(self.count, self.pair_id[starts], self.weight[starts])

    def best(self) -> tuple[int, int]:
        """(count, code) of the most frequent pair, ties to the smallest code; (0, -1) if none."""
        heap = self.heap
        while heap:
            claimed, code, i = heap[0]
            actual = int(self.count[i])
            if actual == -claimed:
                return actual, code
            if actual >= 2:
                heapq.heapreplace(heap, (-actual, code, i))
            else:
                heapq.heappop(heap)
        return 0, -1


def train(
    docs: Iterable[bytes],
    merges: int,
    *,
    split: Split = "jpeg",
    specials: Sequence[str] = DEFAULT_SPECIALS,
    progress: bool = False,
) -> "Tokenizer":
    """Learn up to `merges` merges from `docs` (see the module docstring for the exact rules)."""
    if not isinstance(merges, int) or merges < 0:
        raise ValueError(f"merges must be a non-negative int, got {merges!r}")
    _, _, pattern = _compile_split(split)
    piece_counts: Counter[bytes] = Counter()
    for i, doc in enumerate(docs):
        piece_counts.update(_pieces(_as_bytes(doc, i), pattern))
    pieces = list(piece_counts)
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    corpus = _LinkedPieces(b"".join(pieces), lengths, 256 + merges)
    weight = np.repeat(np.fromiter(piece_counts.values(), dtype=np.int64, count=len(pieces)), lengths)
    counts = _PairCounts(len(corpus.tok), weight)
    groups = corpus.byte_pairs()
    corpus.file(groups, counts.add(groups))

    learned: list[tuple[int, int]] = []
    bar = tqdm(total=merges, unit="merge", desc="bpe train", disable=not progress)
    while len(learned) < merges:
        best, code = counts.best()
        if best < 2:
            warnings.warn(f"BPE training stopped after {len(learned)} of {merges} merges: "
                          f"the most frequent pair occurs {best} time(s), fewer than 2", BpeWarning, stacklevel=2)
            break
        a, b = divmod(code, corpus.capacity)
        pos = corpus.occurrences(a, b)
        counts.remove(corpus.doomed(pos))
        groups = corpus.merge(pos, 256 + len(learned))
        corpus.file(groups, counts.add(groups))
        learned.append((a, b))
        bar.update()
    bar.close()
    return Tokenizer(learned, split=split, specials=specials)


class Tokenizer:
    """Byte-level BPE tokenizer: merges, split pattern and special tokens; see the module docstring."""

    def __init__(self, merges: Sequence[Sequence[int]], *, split: Split = "jpeg", specials: Sequence[str] = DEFAULT_SPECIALS):
        self.merges: list[tuple[int, int]] = []
        for i, pair in enumerate(merges):
            a, b = (int(x) for x in pair)
            if not (0 <= a < 256 + i and 0 <= b < 256 + i):
                raise ValueError(f"merge {i} ({a}, {b}) uses an id that does not exist yet (ids < {256 + i})")
            self.merges.append((a, b))
        self.split, self.pattern, self._regex = _compile_split(split)
        self.specials: tuple[str, ...] = tuple(specials)
        if len(set(self.specials)) != len(self.specials) or not all(isinstance(s, str) and s for s in self.specials):
            raise ValueError(f"specials must be distinct non-empty strings, got {self.specials!r}")
        self.special_ids = {name: 256 + len(self.merges) + i for i, name in enumerate(self.specials)}
        table = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            table.append(table[a] + table[b])
        self._table = table + [b""] * len(self.specials)
        self._rank = {pair: 256 + i for i, pair in enumerate(self.merges)}
        self._cache: dict[bytes, tuple[int, ...]] = {}

    def __repr__(self) -> str:
        return f"Tokenizer(merges={len(self.merges)}, split={self.split!r}, specials={self.specials}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return len(self._table)

    def _special(self, name: str) -> int:
        if name not in self.special_ids:
            raise KeyError(f"this tokenizer has no {name} token (its specials are {list(self.specials)})")
        return self.special_ids[name]

    @property
    def bos_id(self) -> int:
        return self._special("<bos>")

    @property
    def eos_id(self) -> int:
        return self._special("<eos>")

    @property
    def pad_id(self) -> int:
        return self._special("<pad>")

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (b"" for special tokens)."""
        if not 0 <= token < len(self._table):
            raise ValueError(f"token id {token} is outside the vocabulary [0, {len(self._table)})")
        return self._table[token]

    def encode(self, data: bytes, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of one document, optionally framed by <bos> and <eos>."""
        return self.encode_batch([data], bos=bos, eos=eos)[0].tolist()

    def encode_batch(self, docs: Sequence[bytes], *, bos: bool = False, eos: bool = False) -> list[np.ndarray]:
        """Token ids (int32 arrays) of each document.

        A small batch (a prompt, a file) goes through a plain loop per piece with a cache; a large
        one (data preparation) through the numpy replay of all merges, whose fixed cost is one step
        per merge. Both give the same ids.
        """
        docs = [_as_bytes(doc, i) for i, doc in enumerate(docs)]
        per_doc = [_pieces(doc, self._regex) for doc in docs]
        pieces = list(itertools.chain.from_iterable(per_doc))
        if sum(map(len, docs)) <= SMALL_BATCH_BYTES and max(map(len, pieces), default=0) <= SHORT_PIECE:
            tokens, counts = self._loop(pieces)
        else:
            # The pieces of a document tile it, so the documents end to end are the pieces end to end.
            tokens, counts = self._replay(b"".join(docs), np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces)))
        piece_offsets = np.cumsum([0] + [len(p) for p in per_doc])
        token_offsets = np.concatenate(([0], np.cumsum(counts)))[piece_offsets]
        tokens = tokens.astype(np.int32)
        head = np.array([self.bos_id] if bos else [], dtype=np.int32)
        tail = np.array([self.eos_id] if eos else [], dtype=np.int32)
        return [np.concatenate((head, tokens[s:e], tail)) for s, e in zip(token_offsets[:-1], token_offsets[1:])]

    def _loop(self, pieces: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(the tokens of all pieces in order, token count of each), piece by piece through the cache."""
        cache = self._cache
        encoded = []
        for piece in pieces:
            ids = cache.get(piece)
            if ids is None:
                ids = cache[piece] = self._encode_piece(piece)
            encoded.append(ids)
        if len(cache) > CACHE_PIECES:
            cache.clear()
        return (np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64),
                np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))

    def _encode_piece(self, piece: bytes) -> tuple[int, ...]:
        """Merge the lowest-id pair present, all its occurrences left to right, until none is left."""
        ids, rank = list(piece), self._rank.get
        while len(ids) > 1:
            new = _NO_MERGE
            for pair in zip(ids, ids[1:]):
                r = rank(pair, _NO_MERGE)
                if r < new:
                    new, a, b = r, pair[0], pair[1]
            if new == _NO_MERGE:
                break
            out, i = [], 0
            while i < len(ids):
                if ids[i] == a and i + 1 < len(ids) and ids[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return tuple(ids)

    def _replay(self, data: bytes, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What `_loop` returns, by replaying every merge, in order, over all pieces at once."""
        linked = _LinkedPieces(data, lengths, 256 + len(self.merges))
        mergeable = np.sort(np.array([a * linked.capacity + b for a, b in self.merges] or [-1], dtype=np.int64))

        def file(groups: _PairGroups) -> None:
            at = np.minimum(np.searchsorted(mergeable, groups.codes), len(mergeable) - 1)
            linked.file(groups, mergeable[at] == groups.codes)

        byte_merges = np.zeros(65536, dtype=bool)
        byte_merges[[a * 256 + b for a, b in self.merges if a < 256 and b < 256]] = True
        file(linked.byte_pairs(byte_merges))
        for i, (a, b) in enumerate(self.merges):
            pos = linked.occurrences(a, b)
            if len(pos):
                file(linked.merge(pos, 256 + i))
        return linked.piece_tokens()

    def decode(self, ids: Iterable[int]) -> bytes:
        """The bytes of a token sequence; special tokens are dropped."""
        table = self._table
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = ids[(ids < 0) | (ids >= len(table))]
        if len(bad):
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {len(table)})")
        return b"".join([table[i] for i in ids.tolist()])

    # -- the file format -------------------------------------------------------------------------

    def to_json(self) -> str:
        """The canonical file text: one merge per line so the file reads and diffs well."""
        split = self.split if self.split is None or isinstance(self.split, str) else "custom"
        header = {
            "format": FORMAT,
            "version": VERSION,
            "split": split,
            "pattern": None if self.pattern is None else self.pattern.decode("latin-1"),
            "specials": list(self.specials),
        }
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in header.items()]
        merges = ",\n".join(f"    [{a}, {b}]" for a, b in self.merges)
        return "{\n" + "\n".join(lines) + '\n  "merges": [' + (f"\n{merges}\n  " if merges else "") + "]\n}\n"

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the saved file text (what the data manifest records)."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        write_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a file written by `save`; any problem raises BpeError naming the file."""
        text = Path(path).read_bytes()
        try:
            obj = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BpeError(f"{path}: not a JSON tokenizer file ({e})") from e
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise BpeError(f"{path}: not a nanocodec BPE tokenizer (missing \"format\": \"{FORMAT}\")")
        if obj.get("version") != VERSION:
            raise BpeError(f"{path}: tokenizer file version {obj.get('version')!r} is not supported (this nanocodec reads version {VERSION})")
        split, pattern = obj.get("split"), obj.get("pattern")
        if split == "custom" and isinstance(pattern, str) and max(pattern, default="\0") <= "\xff":
            split = pattern.encode("latin-1")
        elif split is not None and not (split in SPLIT_PATTERNS and pattern == SPLIT_PATTERNS[split].decode("latin-1")):
            raise BpeError(f"{path}: split {split!r} with pattern {pattern!r} is neither a known split nor \"custom\"")
        merges, specials = obj.get("merges"), obj.get("specials")
        if not isinstance(merges, list) or not all(
            isinstance(m, list) and len(m) == 2 and all(type(x) is int for x in m) for m in merges
        ):
            raise BpeError(f"{path}: \"merges\" must be a list of [left id, right id] pairs")
        if not isinstance(specials, list):
            raise BpeError(f"{path}: \"specials\" must be a list of strings")
        try:
            return cls(merges, split=split, specials=specials)
        except (ValueError, TypeError) as e:
            raise BpeError(f"{path}: {e}") from e

    def to_hf(self, path: str | os.PathLike) -> None:
        """Write a HuggingFace `tokenizers` (>= 0.20) tokenizer.json giving the same ids.

        Bytes map to characters by latin-1 (byte b is the character chr(b)), so encode
        `data.decode("latin-1")` and decode back with `.encode("latin-1")`. Special tokens are plain
        vocabulary entries, never matched in the input text. Two merges spelling the same bytes
        cannot exist in a HF vocabulary, and custom split patterns have no exact Oniguruma
        equivalent; both raise ValueError.
        """
        if self.split is not None and not isinstance(self.split, str):
            raise ValueError(f"to_hf supports the splits {sorted(SPLIT_PATTERNS)} and None, not the custom pattern {self.pattern!r}")
        strings = [t.decode("latin-1") for t in self._table[: 256 + len(self.merges)]] + list(self.specials)
        vocab: dict[str, int] = {}
        for i, s in enumerate(strings):
            if s in vocab:
                raise ValueError(f"tokens {vocab[s]} and {i} both spell {s.encode('latin-1')!r}; a HF vocabulary cannot hold both")
            vocab[s] = i
        pre = None if self.split is None else {
            "type": "Split", "pattern": {"Regex": _oniguruma(self.pattern)}, "behavior": "Isolated", "invert": False}
        hf = {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": pre, "post_processor": None, "decoder": {"type": "Fuse"},
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": vocab, "merges": [[strings[a], strings[b]] for a, b in self.merges],
            },
        }
        write_atomic(path, json.dumps(hf, ensure_ascii=False))


def _oniguruma(pattern: bytes) -> str:
    """A built-in split pattern (only \\xHH escapes, classes and groups) over latin-1 characters."""
    return regex.sub(r"\\x([0-9a-f]{2})", r"\\x{\1}", pattern.decode("ascii"))


# -- command line ---------------------------------------------------------------------------------


def _files(inputs: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for name in inputs:
        p = Path(name)
        found.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return found


def _cmd_train(args: argparse.Namespace) -> int:
    docs, skipped = [], 0
    for path in tqdm(_files(args.inputs), unit="file", desc="read", disable=None):
        try:
            docs.append(path.read_bytes())
        except OSError as e:
            skipped += 1
            print(f"skipped {path}: {e.strerror or e}", file=sys.stderr)
    if not docs:
        print("no readable input files", file=sys.stderr)
        return 1
    split = None if args.split == "none" else args.split
    start = time.perf_counter()
    tok = train(docs, args.merges, split=split, progress=True)
    seconds = time.perf_counter() - start
    tok.save(args.out)
    size = sum(map(len, docs))
    print(f"learned {len(tok.merges)} merges from {len(docs)} files ({size / 1e6:.2f} MB) in {seconds:.2f} s"
          f"{f', {skipped} skipped' if skipped else ''}; wrote {args.out} (sha256 {tok.sha256[:16]})")
    return 1 if skipped else 0


def _cmd_encode(args: argparse.Namespace) -> int:
    try:
        tok = Tokenizer.load(args.tokenizer)
        data = Path(args.file).read_bytes()
    except (BpeError, OSError) as e:
        print(e, file=sys.stderr)
        return 1
    ids = tok.encode(data)
    if args.show:
        for i in ids:
            print(f"{i}\t{tok.token_bytes(i).hex(' ')}")
    else:
        print(" ".join(map(str, ids)))
    print(f"{args.file}: {len(data)} bytes -> {len(ids)} tokens ({len(data) / max(len(ids), 1):.3f} bytes per token)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bpe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="learn merges from files (directories are searched recursively)")
    tr.add_argument("inputs", nargs="+", metavar="FILES_OR_DIR")
    tr.add_argument("--merges", type=int, required=True)
    tr.add_argument("-o", "--out", required=True, help="tokenizer file to write (JSON)")
    tr.add_argument("--split", choices=[*SPLIT_PATTERNS, "none"], default="jpeg")
    tr.set_defaults(run=_cmd_train)
    en = sub.add_parser("encode", help="print the token ids of a file, and its bytes per token")
    en.add_argument("tokenizer")
    en.add_argument("file")
    en.add_argument("--show", action="store_true", help="one line per token: id and its bytes in hex")
    en.set_defaults(run=_cmd_encode)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
