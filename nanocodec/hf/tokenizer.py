"""The paper's release tokenizer: a SentencePiece model over Braille text, as a nanocodec tokenizer.

The release (`uwnlp/jpeg-lm-reimplementation`, script `xhan77/jpeg-lm` run.py) writes codec byte b
as the character chr(0x2800 + b) and tokenizes that string with SentencePiece, `<s>` first.
`SentencePieceTokenizer.encode(data, bos=True)` gives exactly those ids (the Braille string
through `SentencePieceProcessor.encode`), and `decode` inverts it byte for byte. What a piece
stands for, in codec bytes:
- a normal piece: its Braille characters, one byte each; the `▁` dummy prefix (SentencePiece puts
  it before the text) stands for no byte and is dropped wherever it appears;
- `<s>`, `</s>`, `<pad>`, other control pieces, and ids past the SentencePiece model that only
  pad the model's embedding: no bytes, dropped by `decode`;
- `<unk>`: unknown bytes. `encode` refuses bytes that would become `<unk>` (naming them), `decode`
  drops it;
- byte-fallback pieces `<0xNN>`: one UTF-8 byte of a Braille character, not a codec byte. `decode`
  reassembles runs of them into characters; alone they stand for no whole codec byte.
`token_bytes(id)` is b"" for every id whose codec bytes are not known on its own (all but normal
pieces with at least one Braille character), so the JPEG constraint, which refuses empty tokens,
never picks one. A model whose normal pieces miss some byte value can still encode and decode it
through byte fallback, but constrained decoding can then never write it: `uncovered_bytes` lists
such values and the importer warns about them.
In a checkpoint the tokenizer lives in tokenizer.json as {"format": "nanocodec-sentencepiece",
"model": base64 of the .model file, ...}, so the checkpoint keeps its five files and their
atomic save. Does not own: BPE (nanocodec.bpe), or how tokens are sampled (nanocodec.sampling).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nanocodec.hf import HfError

FORMAT = "nanocodec-sentencepiece"
VERSION = 1
BRAILLE = 0x2800  # codec byte b <-> character chr(BRAILLE + b)
DUMMY_PREFIX = "\u2581"  # SentencePiece's word-boundary piece, "▁"
_TO_TEXT = {b: chr(BRAILLE + b) for b in range(256)}


def to_text(data: bytes) -> str:
    """Codec bytes as the release's Braille string (byte b -> chr(0x2800 + b))."""
    return bytes(data).decode("latin-1").translate(_TO_TEXT)


def from_text(text: str) -> bytes:
    """The codec bytes of a Braille string; `▁` and any non-Braille character stand for no byte."""
    return bytes(ord(c) - BRAILLE for c in text if BRAILLE <= ord(c) < BRAILLE + 256)


class SentencePieceTokenizer:
    """A SentencePiece model (.model bytes) with nanocodec's tokenizer interface; see the module docstring.

    `vocab_size` may exceed the SentencePiece model's pieces (a model whose embedding was padded):
    the extra ids stand for no bytes.
    """

    def __init__(self, model_proto: bytes, vocab_size: int | None = None, *, source: str = "tokenizer.model") -> None:
        import sentencepiece

        self.model_proto, self.source = bytes(model_proto), source
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model_proto)
        except (RuntimeError, OSError) as e:
            raise HfError(f"{source}: not a SentencePiece model ({e})") from None
        pieces = self.sp.get_piece_size()
        if vocab_size is not None and vocab_size < pieces:
            raise HfError(f"{source}: {pieces} pieces do not fit a vocabulary of {vocab_size}")
        self.vocab_size = pieces if vocab_size is None else int(vocab_size)
        if self.sp.bos_id() < 0 or self.sp.eos_id() < 0:
            raise HfError(f"{source}: the model defines no <s> or </s> piece (bos_id {self.sp.bos_id()}, "
                          f"eos_id {self.sp.eos_id()}); the release format needs both")
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        # No <pad> piece (as in Llama's): pad with <unk>, whose bytes are unknown anyway, so the
        # samplers' ban on the pad id keeps <unk> out of every sample.
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.unk_id
        self._text: list[str] = []  # what each id adds to the decoded text ("" for none)
        self._byte: dict[int, int] = {}  # byte-fallback ids -> their UTF-8 byte
        for i in range(pieces):
            piece = self.sp.id_to_piece(i)
            if self.sp.is_byte(i):
                self._byte[i] = int(piece[3:5], 16)
                self._text.append("")
            elif self.sp.is_control(i) or self.sp.is_unknown(i) or self.sp.is_unused(i):
                self._text.append("")
            else:
                self._text.append(piece)
        self._table = [from_text(t) for t in self._text] + [b""] * (self.vocab_size - pieces)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.source!r}, pieces={self.sp.get_piece_size()}, vocab_size={self.vocab_size})"

    @classmethod
    def from_file(cls, path: str | os.PathLike, vocab_size: int | None = None) -> "SentencePieceTokenizer":
        try:
            proto = Path(path).read_bytes()
        except OSError as e:
            raise HfError(f"{path}: cannot read the SentencePiece model ({e.strerror or e})") from None
        return cls(proto, vocab_size, source=str(path))

    def token_bytes(self, token: int) -> bytes:
        """The codec bytes token `token` stands for on its own (b"" when none or not known)."""
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"token id {token} is outside the vocabulary [0, {self.vocab_size})")
        return self._table[token]

    def uncovered_bytes(self) -> list[int]:
        """Byte values no normal piece holds: encodable only through byte fallback, never constrained."""
        seen = set(b"".join(self._table))
        return [b for b in range(256) if b not in seen]

    def encode(self, data: bytes, *, bos: bool = False, eos: bool = False) -> list[int]:
        """The release's ids for codec bytes: SentencePiece on the Braille string, `<s>`/`</s>` around it."""
        ids = self.sp.encode(to_text(data)) if data else []
        if self.unk_id in ids:
            missing = sorted(set(bytes(data)) - set(b"".join(self._table)) - self._fallback_bytes())
            raise HfError(f"{self.source}: codec bytes {', '.join(f'0x{b:02x}' for b in missing) or '?'} encode to "
                          "<unk> (no piece and no byte fallback for them): this tokenizer cannot represent the stream")
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def _fallback_bytes(self) -> set[int]:
        """Codec bytes whose Braille character byte fallback can spell (all three UTF-8 bytes present)."""
        have = set(self._byte.values())
        return {b for b in range(256) if set(chr(BRAILLE + b).encode("utf-8")) <= have}

    def encode_batch(self, docs: Sequence[bytes], *, bos: bool = False, eos: bool = False) -> list[np.ndarray]:
        return [np.asarray(self.encode(d, bos=bos, eos=eos), dtype=np.int32) for d in docs]

    def decode(self, ids: Iterable[int]) -> bytes:
        """The codec bytes of a token sequence: control, <unk> and padding ids dropped, byte-fallback
        runs reassembled into characters (an incomplete one is dropped)."""
        utf8, texts, table = bytearray(), self._text, self._table
        for i in np.asarray(list(ids), dtype=np.int64).reshape(-1).tolist():
            if not 0 <= i < len(table):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(table)})")
            if i in self._byte:
                utf8.append(self._byte[i])
            elif i < len(texts):
                utf8 += texts[i].encode("utf-8")
        return from_text(utf8.decode("utf-8", errors="ignore"))

    # -- the file inside a checkpoint ------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "version": VERSION, "vocab_size": self.vocab_size,
            "pieces": self.sp.get_piece_size(), "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id,
            "model_sha256": hashlib.sha256(self.model_proto).hexdigest(),
            "model": base64.b64encode(self.model_proto).decode("ascii"),
        }, indent=1) + "\n"

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the saved file text (what a data manifest records)."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SentencePieceTokenizer":
        try:
            obj = json.loads(Path(path).read_text())
            proto = base64.b64decode(obj["model"], validate=True)
            vocab_size = int(obj["vocab_size"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise HfError(f"{path}: not a {FORMAT} tokenizer file ({type(e).__name__}: {e})") from None
        if obj.get("format") != FORMAT or obj.get("version") != VERSION:
            raise HfError(f"{path}: format {obj.get('format')!r} version {obj.get('version')!r}, "
                          f"expected {FORMAT!r} version {VERSION}")
        if hashlib.sha256(proto).hexdigest() != obj.get("model_sha256"):
            raise HfError(f"{path}: the embedded SentencePiece model does not match its model_sha256 (corrupt file)")
        return cls(proto, vocab_size, source=str(path))

    def write_model(self, path: str | os.PathLike) -> None:
        """The original .model file, byte for byte (for an exported HF folder)."""
        Path(path).write_bytes(self.model_proto)
