"""Validate, incrementally check and repair the Huffman-coded scan of sequential JPEG streams.

Owns `validate` (one verdict for a whole byte string), `Validator` (the same check fed piece by
piece and cloned cheaply, for samplers that must know when a prefix can no longer become a valid
file), `repair` (turn a broken stream into a valid one of the same size) and the
`python -m nanocodec.huffman FILE... [--json]` checker. Pure Python: it walks markers, segments
and every Huffman code of every block the way a decoder does, but never computes coefficients or
pixels (Pillow does that in nanocodec.jpeg) and never encodes images.

Scope: baseline and extended sequential Huffman JPEG (SOF0/SOF1, 8-bit samples) with one
interleaved scan of all components, any sampling factors, image size and restart interval.
Streams without DHT use the standard tables of ITU T.81 Annex K, as libjpeg does. Progressive,
arithmetic, lossless, hierarchical, 12-bit and multi-scan streams are reported as
"unsupported: ...". Nothing here raises on bad input except `repair`, which raises `RepairError`
when there is no frame header to keep.

Exactness: each check runs as soon as the bytes it needs have arrived, so the error is found at
the first byte after which no continuation could make the stream valid (a segment length no
contents fit, an FF inside an MCU that eight 1-bits cannot continue, a code that leads into a
block that cannot end), and it reads the same whether the bytes came whole or in pieces.

Speed: each Huffman table gets 16-bit lookahead tables whose entries decode as many whole
symbols as fit in the window (often a whole block), so the bit loop runs about once per block.
Rare cases (long codes, runs near coefficient 63, the end of the data) go through an exact

Rooms, in the order a byte meets them: `tables` (one DHT table's codes and lookahead tables),
`segments` (the header structures and one parser per segment), `walk` (the walk state, the
marker walk and the scan walk), `validator` (`validate`, `Validator`, `Report`), `mend`
(`repair`, `RepairError`) and `cli` (`main`, run by `python -m nanocodec.huffman`). Only the
names below are public; the underscored names of the rooms are shared between them alone.
"""
from __future__ import annotations

from nanocodec.huffman.cli import main
from nanocodec.huffman.mend import RepairError, repair
from nanocodec.huffman.validator import Report, Validator, validate

__all__ = ["Report", "RepairError", "Validator", "repair", "validate", "main"]
