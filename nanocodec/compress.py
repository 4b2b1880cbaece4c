"""A trained JPEG-LM as a lossless JPEG compressor: `python -m nanocodec.compress CKPT FILE... --out DIR`.

Owns the compressor, its container and its command line:
- `model_stream` checks that a file is in the checkpoint's codec format (a full JFIF file as
  `jpeg.restore` writes it, or the abbreviated stream the model sees) and returns the abbreviated
  stream; anything else is refused with what differs (quality, size, progressive, restart markers...).
- `walk` is the one step-by-step path both directions take: `<bos>`, then one token per
  `Llama.forward_cached` call (a KV cache, batch 1, CPU, fp32, a fixed thread count), each
  distribution quantized by `quantize` to integer frequencies summing to 2**PRECISION with every
  token at least 1, and range-coded with `constriction`'s RangeEncoder/RangeDecoder. The range
  coder (a queue) codes symbols in the order the model produces them, so the encoder streams like the
  decoder; ANS (a stack) would have to keep every distribution to code them in reverse.
- `Compressor.compress` / `Compressor.decompress`: bytes <-> container. The decoder rebuilds the
  stream, puts the tables back when the file had them, and checks the original's checksum: a
  container that decodes to anything else is an error, never a file.
Does not own: the model (nanocodec.model), checkpoint files (nanocodec.checkpoint), the JPEG format
(nanocodec.jpeg), surprise maps (nanocodec.surprise).

Container, version 1 (integers little-endian):
  0   4  magic b"NCLM"
  4   1  version
  5   1  flags: bit 0 = the file carried its DQT/DHT tables (a full JFIF file)
  6   1  device type (0 cpu)      7  1  dtype (0 float32)      8  1  kernels path (0 torch)
  9   1  intra-op threads the coding ran with
  10  4  platform fingerprint: crc32 of the torch version and CPU kernel set (warned on, see below)
  14  16 model identity: sha256 of (weights file sha256, tokenizer sha256, model config, codec)
  30  8  sha256 of the original file, first 8 bytes
  38  1  length N of the original file name (UTF-8), then N bytes of it
  ..     range-coder payload (32-bit words)
  -4  4  crc32 of every byte before it
Device, dtype, kernels path and threads are what the decoder must match: it refuses another device,
dtype or kernels path and runs with the recorded threads. Both matter: for the demo checkpoint on
this CPU, 2 threads instead of 1, or a batch of 2 rows instead of 1, moved logits by up to 7e-7,
enough to change a 24-bit frequency; so every file is its own batch of 1. fp32 results can still change with the
torch build or the CPU's vector kernels; a container from another platform is decoded with a
warning, and the checksum turns any divergence into an error.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import time
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from nanocodec import jpeg
from nanocodec.codecs import JPEG, codec_for

MAGIC = b"NCLM"
VERSION = 1
SUFFIX = ".nclm"
PRECISION = 24  # bits of the integer frequencies: constriction's default range coder works at 24
HAS_TABLES = 1
_FIXED = struct.Struct("<4sBBBBBBI16s8sB")  # magic .. name length, as laid out in the docstring
DEVICES, DTYPES, KERNELS = ("cpu",), ("float32",), ("torch", "triton")


class CompressError(ValueError):
    """A file or container that cannot be (de)compressed: names it and says what is wrong."""


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ----------------------------------------------------------------------------- the format check


def _segments(data: bytes) -> list[jpeg.Segment]:
    return jpeg.header_segments(data)[0]


def _quality_of(dqt: bytes, subsampling: str) -> int | None:
    """The Pillow quality whose quantization tables are exactly `dqt`, if any."""
    return next((q for q in range(1, 101) if jpeg._table_segments(q, subsampling)[0] == dqt), None)


def _differences(data: bytes, reference: bytes, codec: dict) -> list[str]:
    """How the headers of abbreviated stream `data` differ from `reference`, in a user's words."""
    mine, ref = jpeg.frame_info(data), jpeg.frame_info(reference)
    sof = next(s.marker for s in _segments(data) if s.marker in jpeg.SOF_MARKERS)
    problems = []
    if sof != 0xC0:
        kind = "progressive" if sof in (0xC2, 0xC6, 0xCA, 0xCE) else "not baseline"
        problems.append(f"{kind} (SOF{sof - 0xC0}); the checkpoint's format is baseline (SOF0)")
    if (mine.width, mine.height) != (ref.width, ref.height):
        problems.append(f"size {mine.width}x{mine.height}; the checkpoint's format is {ref.width}x{ref.height}")
    if mine.sampling != ref.sampling:
        problems.append(f"sampling factors {mine.sampling}; the checkpoint's {JPEG.from_settings(codec).subsampling} is {ref.sampling}")
    if mine.restart_interval != ref.restart_interval:
        have = f"restart interval {mine.restart_interval} MCUs" if mine.restart_interval else "no restart markers"
        problems.append(f"{have}; the checkpoint's format has a restart marker every {ref.restart_interval} MCU(s)")
    if not problems:
        extra = sorted({s.marker for s in _segments(data)} - {s.marker for s in _segments(reference)})
        named = ", ".join(f"{m:02X}" for m in extra)
        problems.append(f"extra header segments (markers {named})" if extra else
                        "headers differ from the ones Pillow writes for the checkpoint's settings")
    return problems


def model_stream(data: bytes, codec: dict) -> tuple[bytes, bool]:
    """The abbreviated stream the model codes for a JPEG file, and whether the file carried tables.

    Raises CompressError saying what differs from the checkpoint's codec format (`codec`, the data
    manifest's settings). A full file is accepted only if `jpeg.restore` of its abbreviated stream
    gives it back byte for byte, so decompression can rebuild it exactly.
    """
    settings = JPEG.from_settings(codec)
    quality, subsampling = settings.quality, settings.subsampling
    try:
        segments = _segments(data)
        if not any(s.marker in jpeg.SOF_MARKERS for s in segments):
            raise jpeg.InvalidJPEG("no frame header (SOF) before the scan")
    except jpeg.InvalidJPEG as e:
        raise CompressError(f"not a JPEG stream: {e}") from None
    dqt = b"".join(data[s.start : s.end] for s in segments if s.marker == jpeg.DQT)
    dht = b"".join(data[s.start : s.end] for s in segments if s.marker == jpeg.DHT)
    stream = b"".join(data[s.start : s.end] for s in segments if s.marker not in (jpeg.DQT, jpeg.DHT))
    stream += data[segments[-1].end :]
    reference = settings.header()
    problems = _differences(stream, reference, codec) if stream[: len(reference)] != reference else []
    expected_dqt, expected_dht = jpeg._table_segments(quality, subsampling)
    if dqt and dqt != expected_dqt:
        found = _quality_of(dqt, subsampling)
        problems.append(f"{'quality ' + str(found) if found else 'quantization tables of no Pillow quality'}; "
                        f"the checkpoint's format is quality {quality}")
    if dht and dht != expected_dht:
        problems.append("Huffman tables are not the standard ones (an optimized or custom DHT); "
                        "the checkpoint's format uses the standard tables")
    if problems:
        raise CompressError("; ".join(problems))
    if not dqt and not dht:
        return data, False
    if jpeg.restore(stream, quality, subsampling) != data:
        raise CompressError("its tables are not where jpeg.restore puts them (after APP0 and SOF)")
    return stream, True


# ----------------------------------------------------------------------------- the coding path


def quantize(logits: torch.Tensor, precision: int = PRECISION) -> np.ndarray:
    """Integer frequencies (int64) of the softmax of `logits` (V,): each >= 1, summing to 2**precision.

    Every token keeps at least frequency 1, so any token can be coded whatever the model believes;
    the rounding remainder goes to the most likely token.
    """
    total = 1 << precision
    if logits.shape[-1] >= total:
        raise ValueError(f"a vocabulary of {logits.shape[-1]} tokens does not fit {precision}-bit frequencies")
    probs = torch.softmax(logits.double(), dim=-1)
    if not torch.isfinite(probs).all():
        raise CompressError("the model gave non-finite logits: its weights are broken")
    freq = torch.floor(probs * (total - logits.shape[-1])).long() + 1
    freq[int(probs.argmax())] += total - int(freq.sum())
    return freq.numpy()


@contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for the block, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def walk(model, bos: int, eos: int, choose: Callable[[int, np.ndarray], int], max_tokens: int) -> tuple[list[int], np.ndarray]:
    """Run the model from `bos` one token at a time until `choose` returns `eos`.

    `choose(step, frequencies)` gives the token at `step` (the encoder: the stream's token, after
    coding it; the decoder: the token it decodes). Returns the tokens (EOS included) and the bits
    -log2 p the model's own (unquantized) distribution gives each of them.
    """
    cache = model.make_cache(1, max_tokens)
    token, tokens, bits = bos, [], []
    for step in range(max_tokens):
        logits = model.forward_cached(torch.tensor([[token]]), cache)[0, -1]
        token = choose(step, quantize(logits))
        tokens.append(token)
        bits.append(-float(torch.log_softmax(logits.double(), -1)[token]) / np.log(2))
        if token == eos:
            return tokens, np.array(bits)
    raise CompressError(f"no end of stream within {max_tokens} tokens (the model's context)")


def encode_tokens(model, tokens: list[int], bos: int, eos: int) -> tuple[bytes, np.ndarray]:
    """Range-code `tokens` (EOS last) under the model; (payload, model bits per token)."""
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()

    def put(step: int, freq: np.ndarray) -> int:
        encoder.encode(tokens[step], _categorical(freq))
        return tokens[step]

    _, bits = walk(model, bos, eos, put, len(tokens))
    return encoder.get_compressed().astype("<u4").tobytes(), bits


def decode_tokens(model, payload: bytes, bos: int, eos: int, max_tokens: int) -> tuple[list[int], np.ndarray]:
    """The tokens (EOS last) that `encode_tokens` coded into `payload`, and their model bits."""
    import constriction

    if len(payload) % 4:
        raise CompressError(f"payload of {len(payload)} bytes is not whole 32-bit words")
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, "<u4").astype(np.uint32))
    return walk(model, bos, eos, lambda step, freq: int(decoder.decode(_categorical(freq))), max_tokens)


def _categorical(freq: np.ndarray):
    import constriction

    # lazy: the model is used for one symbol; perfect=False: constriction's fast (exactly
    # reproducible) mapping of our integer table onto its fixed-point one.
    return constriction.stream.model.Categorical(freq.astype(np.float64), lazy=True, perfect=False)


# ----------------------------------------------------------------------------- the container


def platform() -> str:
    """What besides device, dtype, kernels and threads decides fp32 results: torch build, CPU kernels."""
    return f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}"


def _kernels_path() -> str:
    from kernels import backend

    return backend(torch.zeros(1))


@dataclass(frozen=True)
class Container:
    name: str
    tables: bool
    model_id: bytes
    original_sha: bytes
    payload: bytes
    device: str = "cpu"
    dtype: str = "float32"
    kernels: str = "torch"
    threads: int = 1
    platform_crc: int = 0

    def to_bytes(self) -> bytes:
        name = self.name.encode("utf-8")
        head = _FIXED.pack(MAGIC, VERSION, HAS_TABLES if self.tables else 0, DEVICES.index(self.device),
                           DTYPES.index(self.dtype), KERNELS.index(self.kernels), self.threads, self.platform_crc,
                           self.model_id, self.original_sha, len(name))
        body = head + name + self.payload
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Container:
        """Parse a container; a truncated, corrupt or foreign one raises CompressError."""
        if len(data) < _FIXED.size + 4 or data[:4] != MAGIC:
            raise CompressError("not an .nclm container (no NCLM magic)" if data[:4] != MAGIC else
                                f"truncated container ({len(data)} bytes)")
        if data[4] != VERSION:
            raise CompressError(f"container version {data[4]}; this nanocodec reads version {VERSION}")
        if struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
            raise CompressError("container is truncated or corrupt (its crc32 does not match)")
        _, _, flags, device, dtype, kernels, n_threads, crc, model_id, sha, n = _FIXED.unpack_from(data)
        try:
            name = data[_FIXED.size : _FIXED.size + n].decode("utf-8")
            fields = dict(device=DEVICES[device], dtype=DTYPES[dtype], kernels=KERNELS[kernels])
        except (UnicodeDecodeError, IndexError):
            raise CompressError("container holds an unknown device, dtype, kernels path or file name") from None
        if not name or Path(name).name != name or name in (".", ".."):
            raise CompressError(f"container names the original {name!r}, which is not a plain file name")
        return cls(name, bool(flags & HAS_TABLES), model_id, sha, data[_FIXED.size + n : -4],
                   threads=n_threads, platform_crc=crc, **fields)


def model_identity(ckpt: str | os.PathLike, bundle) -> bytes:
    """16 bytes naming the exact distribution a checkpoint gives: weights, tokenizer, model, codec."""
    from nanocodec.checkpoint import WEIGHTS

    sha = hashlib.sha256()
    with open(Path(ckpt) / WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            sha.update(block)
    described = json.dumps({"weights": sha.hexdigest(), "tokenizer": bundle.tokenizer.sha256,
                            "model": bundle.config["model"], "codec": bundle.config.get("codec", {})}, sort_keys=True)
    return _digest(described.encode())[:16]


@dataclass
class Result:
    """One file's coding: the container, the abbreviated stream and tokens, the model's bits per token."""

    container: bytes
    original: bytes
    stream: bytes
    tokens: list[int]  # EOS last, BOS left out
    bits: np.ndarray  # -log2 p(token) under the model, per token

    @property
    def payload_bytes(self) -> int:
        return len(Container.from_bytes(self.container).payload)


class Compressor:
    """A checkpoint loaded for coding: CPU, fp32, `threads` intra-op threads, batch 1."""

    def __init__(self, ckpt: str | os.PathLike, threads: int = 1) -> None:
        from nanocodec.checkpoint import load_for_inference

        if threads < 1:
            raise CompressError(f"--threads must be >= 1 (recorded in each container), got {threads}")
        try:
            import constriction  # noqa: F401
        except ImportError:
            raise CompressError("the range coder is missing: pip install 'nanocodec[compress]' (constriction)") from None
        self.ckpt = Path(ckpt)
        self.bundle = load_for_inference(ckpt, device="cpu")
        kind = self.bundle.config.get("kind") or self.bundle.manifest.get("kind")
        if not isinstance(codec_for(kind, where=str(ckpt)), JPEG):
            raise CompressError(f"{ckpt}: a {kind} checkpoint; compression needs a JPEG checkpoint")
        self.model = self.bundle.model.float()
        self.tokenizer = self.bundle.tokenizer
        self.codec = self.bundle.config.get("codec") or self.bundle.manifest.get("codec", {})
        self.threads = threads
        self.model_id = model_identity(ckpt, self.bundle)
        self.platform_crc = zlib.crc32(platform().encode())

    def _check_path(self) -> str:
        path = _kernels_path()
        if path != "torch":
            raise CompressError(f"NANOCODEC_KERNELS forces the {path} kernels; coding runs the torch path on CPU "
                                "(unset NANOCODEC_KERNELS)")
        return path

    def compress(self, data: bytes, name: str) -> Result:
        """The container of one JPEG file (CompressError if it is not in the checkpoint's format)."""
        stream, tables = model_stream(data, self.codec)
        tokens = self.tokenizer.encode(stream) + [self.tokenizer.eos_id]
        context = self.model.config.max_seq_len
        if len(tokens) > context:
            raise CompressError(f"its stream is {len(tokens)} tokens with EOS; the model's context holds {context}")
        kernels = self._check_path()
        with fixed_threads(self.threads):
            payload, bits = encode_tokens(self.model, tokens, self.tokenizer.bos_id, self.tokenizer.eos_id)
        container = Container(Path(name).name, tables, self.model_id, _digest(data)[:8], payload, kernels=kernels,
                              threads=self.threads, platform_crc=self.platform_crc).to_bytes()
        return Result(container, data, stream, tokens, bits)

    def decompress(self, blob: bytes) -> tuple[str, Result]:
        """(original file name, the coding) of a container; CompressError unless it is exact."""
        box = Container.from_bytes(blob)
        if box.model_id != self.model_id:
            raise CompressError(f"made by another checkpoint (model identity {box.model_id.hex()[:16]}, "
                                f"this checkpoint's is {self.model_id.hex()[:16]})")
        kernels = self._check_path()
        if (box.device, box.dtype, box.kernels) != ("cpu", "float32", kernels):
            raise CompressError(f"coded on {box.device} {box.dtype} with the {box.kernels} kernels; "
                                f"this decoder runs cpu float32 {kernels}")
        if box.platform_crc != self.platform_crc:
            warnings.warn(f"{box.name}: coded on another platform (fingerprint {box.platform_crc:08x}; here "
                          f"{self.platform_crc:08x}: {platform()}); fp32 results may differ, the checksum will tell",
                          stacklevel=2)
        with fixed_threads(box.threads):
            tokens, bits = decode_tokens(self.model, box.payload, self.tokenizer.bos_id, self.tokenizer.eos_id,
                                         self.model.config.max_seq_len)
        try:
            stream = self.tokenizer.decode(tokens[:-1])
            settings = JPEG.from_settings(self.codec)
            data = jpeg.restore(stream, settings.quality, settings.subsampling) if box.tables else stream
        except ValueError:  # a token outside the tokenizer, or no JPEG headers: a wrong decode
            stream = data = b""
        if _digest(data)[:8] != box.original_sha:
            raise CompressError("decoded bytes do not match the original's checksum (a corrupt payload, or a "
                                "platform whose fp32 arithmetic differs from the encoder's)")
        return box.name, Result(blob, data, stream, tokens, bits)


# ----------------------------------------------------------------------------- command line


def _write(path: Path, data: bytes, overwrite: bool) -> None:
    from nanocodec.prepare import _write_atomic

    if path.exists() and not overwrite:
        raise CompressError(f"{path} exists; pass --overwrite to replace it")
    _write_atomic(path, data)


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from nanocodec.checkpoint import CheckpointError

    parser = argparse.ArgumentParser(prog="python -m nanocodec.compress", description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="checkpoint directory (a JPEG checkpoint)")
    parser.add_argument("files", nargs="*", help="JPEG files to compress (full JFIF or abbreviated streams)")
    parser.add_argument("--decompress", nargs="+", metavar="FILE.nclm", default=[], help="containers to decompress")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads while coding (recorded; decoding uses the recorded count)")
    parser.add_argument("--surprise", action="store_true", help="also write OUT/NAME.surprise.png: the image beside the bits the model spends per MCU")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    args = parser.parse_args(argv)
    if bool(args.files) == bool(args.decompress):
        parser.error("give either FILE... to compress or --decompress FILE.nclm..., not both or neither")
    try:
        compressor = Compressor(args.ckpt, args.threads)
    except (CheckpointError, CompressError) as e:
        print(f"python -m nanocodec.compress: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = args.decompress or args.files
    failed, original, coded, model_bits = [], 0, 0, 0.0
    began = time.perf_counter()
    for path in tqdm(inputs, unit="file", disable=len(inputs) < 2):
        try:
            data = Path(path).read_bytes()
            if args.decompress:
                name, result = compressor.decompress(data)
                _write(out / name, result.original, args.overwrite)
            else:
                name, result = Path(path).name, compressor.compress(data, Path(path).name)
                _write(out / (name + SUFFIX), result.container, args.overwrite)
            if args.surprise:
                from nanocodec.surprise import surprise_png

                surprise_png(out / (name + ".surprise.png"), result, compressor.tokenizer, compressor.codec)
        except (OSError, CompressError) as e:
            failed.append(f"{path}: {e}")
            continue
        original, coded, model_bits = original + len(result.original), coded + len(result.container), model_bits + result.bits.sum()
    seconds = time.perf_counter() - began
    for line in failed:
        print(f"skipped {line}", file=sys.stderr)
    done = len(inputs) - len(failed)
    verb = "decompressed" if args.decompress else "compressed"
    if done:
        print(f"{verb} {done} of {len(inputs)} files into {out}: {original} original bytes, {coded} container bytes "
              f"(ratio {coded / original:.4f}, model cross-entropy {model_bits / 8:.0f} bytes), "
              f"{original / seconds / 1e6:.4f} MB/s")
    if failed:
        print(f"{len(failed)} of {len(inputs)} files skipped", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
