"""Data preparation: images or videos -> codec bytes -> BPE tokens -> shards that train.py streams.

`python -m nanocodec.prepare --kind jpeg|avc --source DIR|LIST|demo --out data/NAME` (or `prepare()`)
encodes every file with the paper's codec settings, learns the BPE tokenizer on the first
`tokenizer_docs` training files (or reuses one), and writes, into the output folder:
  {train,val}_NNNN.bin   uint16 token ids; every document is <bos> tokens <eos>, back to back
  {train,val}_NNNN.idx   little-endian int64 offsets of the documents in the .bin, then its length
  tokenizer.json         the tokenizer (nanocodec.bpe format)
  manifest.json          codec settings, tokenizer hash, library versions, per-split counts and
                         every skipped file with its reason; written last, so its presence means done
  .prepare/              run state: the settings and one record per finished shard (for resuming)
A file goes to val when the hash of its name (path relative to the folder, the line of the list, or
the demo item's name) falls under `val_fraction`, so adding files never moves another one. Work is
done shard by shard; a killed run started again with the same arguments keeps the finished shards
and ends with exactly the bytes an uninterrupted run writes. A file that cannot be read is skipped,
counted and listed with its reason; it never stops the run.
Does not own: the codecs, their settings and per-codec defaults (nanocodec.codecs, over
nanocodec.jpeg and nanocodec.avc), BPE (nanocodec.bpe), the demo footage (nanocodec.demo) or reading
shards for training (nanocodec.data).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import multiprocessing
import os
import random
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from nanocodec import avc, bpe, demo, jpeg
from nanocodec.codecs import AVC, CODECS, JPEG, Codec, CodecError, codec_for

SPLITS = ("train", "val")
STATE = ".prepare"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
FORMAT_VERSION = 1


class PrepareError(RuntimeError):
    """A run that cannot start or continue: bad arguments, no usable files, a foreign output folder."""


# ------------------------------------------------------------------------------------ sources

@dataclass
class Source:
    """Items in a fixed order: their names (the split key) and a way to get their codec inputs."""

    description: str
    names: list[str]
    payloads: Callable[[list[int]], Iterable[Any]]  # codec inputs of these (ascending) indices
    ignored: dict[str, int] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)  # folders that could not be read, with the reason


def _walk(root: Path) -> tuple[list[str], list[dict], int]:
    """(every non-folder entry under `root`, relative, in sorted order; each folder that could not be
    listed, with its reason; how many folders were reached a second time through a symlink).

    Symlinked folders are followed; a folder already walked (a symlink loop, or two links to one
    folder) is walked once. os.walk would drop unreadable folders without a word."""
    files, unreadable, seen, again = [], [], set(), 0
    stack = [""]
    while stack:
        rel = stack.pop()
        folder = root / rel if rel else root
        try:
            info = folder.stat()
            key = (info.st_dev, info.st_ino)
            if key in seen:
                again += 1
                continue
            seen.add(key)
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as e:
            unreadable.append({"path": f"{rel or '.'}/", "reason": f"unreadable folder: {e.strerror or e}"})
            continue
        subfolders = []
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()  # follows a symlink
            except OSError:
                is_dir = False
            (subfolders if is_dir else files).append(name)
        stack += reversed(subfolders)
    return sorted(files), unreadable, again


def _folder(root: Path, codec: Codec) -> Source:
    wanted = codec.extensions()
    names, ignored = [], collections.Counter()
    found, unreadable, again = _walk(root)
    for rel in found:
        ext = os.path.splitext(rel)[1].lower()
        if ext in wanted:
            names.append(rel)
        else:
            ignored[f"files with extension {ext or '(none)'}"] += 1
    if again:
        ignored["folders reached again through a symlink (walked once)"] = again
    return Source(str(root.resolve()), names, lambda idx: (str(root / names[i]) for i in idx), dict(ignored),
                  unreadable)


def _listing(path: Path) -> Source:
    names, ignored = [], collections.Counter()
    seen = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line in seen:
            ignored["repeated lines"] += 1
            continue
        seen.add(line)
        names.append(line)
    base = path.parent
    return Source(str(path.resolve()), names, lambda idx: (str(base / names[i]) for i in idx), dict(ignored))


def find_source(codec: Codec, source: str, limit: int | None, seed: int) -> Source:
    """The items of `source` ("demo", a folder, or a text file of paths), at most `limit` of them.

    A limit keeps a seeded random sample of a folder or list, in the original order.
    """
    if source == "demo":
        return Source("demo", *codec.demo(limit or codec.demo_count, seed))
    path = Path(source)
    if path.is_dir():
        found = _folder(path, codec)
    elif path.is_file():
        found = _listing(path)
    else:
        raise PrepareError(f"--source {source}: no such folder or list file (or use 'demo')")
    if limit is None or limit >= len(found.names):
        return found
    keep = sorted(random.Random(seed).sample(range(len(found.names)), limit))
    return Source(found.description, [found.names[i] for i in keep],
                  lambda idx: found.payloads([keep[i] for i in idx]), found.ignored, found.skipped)


def is_val(name: str, val_fraction: float) -> bool:
    """Stable split: the first 8 bytes of SHA-256(name) as a fraction of 2**64."""
    h = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
    return h < val_fraction * 2**64


# ------------------------------------------------------------------------ per-file work (workers)

_worker: dict[str, Any] = {}


def _load_tokenizer(path: str | os.PathLike):
    """A tokenizer file: nanocodec BPE, or the SentencePiece one of a checkpoint imported from HF."""
    from nanocodec.checkpoint import CheckpointError, load_tokenizer

    try:
        return load_tokenizer(path)
    except CheckpointError as e:
        raise PrepareError(str(e)) from None


def _init_worker(codec: Codec, tokenizer_path: str) -> None:
    _worker.clear()
    _worker.update(codec=codec, tokenizer_path=tokenizer_path, tokenizer=None)


def _diagnose(path: str, detail: str) -> tuple[str, str]:
    """Why Pillow recognised no format: is it the format its extension names, in a variant it cannot
    decode (an unsupported mode), with a broken header, or not that format at all?"""
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt in Image.OPEN:
        factory, accept = Image.OPEN[fmt]
        with open(path, "rb") as f:
            claims = accept is None or accept(f.read(16))
            if claims is True or (claims and not isinstance(claims, str)):
                try:
                    f.seek(0)
                    factory(f, path)
                except Exception as e:  # the plugin's own words say what is wrong
                    category = "unsupported mode" if "mode" in str(e).lower() else "corrupt header"
                    return category, f"{fmt}: {e}"
                return "unreadable image", detail
    return "not an image", f"no image format recognises the content (extension {ext or 'none'})"


def _reason(error: Exception, payload: Any) -> str:
    """A one-line 'category: detail' for a file that could not be encoded."""
    chain, e = [], error
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__

    def first(kinds: tuple, text: str = "") -> BaseException | None:
        return next((c for c in chain if isinstance(c, kinds) and text in str(c).lower()), None)

    detail = str(error)
    if isinstance(payload, str) and detail.startswith(payload + ": "):
        detail = detail[len(payload) + 2:]
    if _worker["codec"].video:
        category = "unreadable video" if isinstance(error, avc.VideoError) else "error"
    elif bomb := first((Image.DecompressionBombWarning, Image.DecompressionBombError)):
        category, detail = "decompression bomb", str(bomb)
    elif first((UnidentifiedImageError,)) and isinstance(payload, str):
        category, detail = _diagnose(payload, detail)
    elif cut := first((OSError,), "truncated"):
        category, detail = "truncated", str(cut)
    elif isinstance(error, jpeg.ImageError):
        category = "unreadable image"
    else:
        category, detail = "error", f"{type(error).__name__}: {detail}"
    return f"{category}: {detail}"


def _encode(payload: Any) -> tuple[bytes | None, str | None]:
    """(codec bytes, None) or (None, reason)."""
    try:
        if isinstance(payload, str):
            try:
                mode = os.stat(payload).st_mode
            except FileNotFoundError:
                return None, "missing file: no such file"
            if not stat.S_ISREG(mode):  # never open a device or a FIFO: reading one may never end
                what = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
                    "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket or other special file"
                return None, f"not a regular file: {what}"
            if os.path.getsize(payload) == 0:
                return None, "empty file: 0 bytes"
        return _worker["codec"].encode(payload), None
    except Exception as e:  # one bad file must never stop a run of millions: it is reported instead
        return None, _reason(e, payload)


def _work(payloads: list[Any], tokenize: bool) -> list[tuple[Any, str | None]]:
    """For each payload: (codec bytes, None) when not tokenizing, else ((codec length, uint16
    tokens <bos>...<eos>), None); (None, reason) for a file that was skipped."""
    encoded = [_encode(p) for p in payloads]
    if not tokenize:
        return encoded
    if _worker["tokenizer"] is None:
        _worker["tokenizer"] = _load_tokenizer(_worker["tokenizer_path"])
    good = [data for data, _ in encoded if data is not None]
    tokens = iter(_worker["tokenizer"].encode_batch(good, bos=True, eos=True))
    return [((len(data), next(tokens).astype(np.uint16)), None) if data is not None else (None, reason)
            for data, reason in encoded]


class _Pool:
    """Ordered results of `_work` over batches, in this process (workers=1) or in a process pool
    started on first use, with a bounded number of batches in flight so that a fast source (the
    demo renders pictures) never floods memory."""

    def __init__(self, workers: int, initargs: tuple):
        self.workers, self.initargs, self.pool = workers, initargs, None
        _init_worker(*initargs)

    def run(self, payloads: Iterable[Any], tokenize: bool, batch: int) -> Iterator[tuple[Any, str | None]]:
        batches = _batched(payloads, batch)
        if self.workers == 1:
            for b in batches:
                yield from _work(b, tokenize)
            return
        if self.pool is None:
            ctx = multiprocessing.get_context("spawn")  # not fork: the parent may hold threads (tqdm, torch)
            self.pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=self.initargs)
        in_flight: collections.deque = collections.deque()
        for b in batches:
            in_flight.append(self.pool.apply_async(_work, (b, tokenize)))
            if len(in_flight) >= 2 * self.workers:
                yield from in_flight.popleft().get()
        while in_flight:
            yield from in_flight.popleft().get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


# ------------------------------------------------------------------------------- output folder

def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename over `path`."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        # os.open rather than mkstemp so the file gets the usual umask permissions, not 0600.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def shard_name(split: str, number: int) -> str:
    return f"{split}_{number:04d}"


def _finished(out: Path, name: str) -> dict | None:
    """The record of a shard whose three files are all in place and agree, else None."""
    try:
        record = json.loads((out / STATE / f"{name}.json").read_text())
        ok = ((out / f"{name}.bin").stat().st_size == 2 * record["tokens"]
              and (out / f"{name}.idx").stat().st_size == 8 * (record["documents"] + 1))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if ok else None


def _write_shard(out: Path, name: str, files: list[str], results: list[tuple[Any, str | None]]) -> dict:
    """Write one shard; its record in .prepare/ goes last and is what marks the shard finished."""
    docs = [r[1] for r, _ in results if r is not None]
    offsets = np.zeros(len(docs) + 1, dtype="<i8")
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    tokens = np.concatenate(docs) if docs else np.zeros(0, dtype=np.uint16)
    _write_atomic(out / f"{name}.bin", tokens.astype("<u2").tobytes())
    _write_atomic(out / f"{name}.idx", offsets.tobytes())
    record = {
        "files": len(files),
        "documents": len(docs),
        "tokens": int(offsets[-1]),
        "codec_bytes": sum(r[0] for r, _ in results if r is not None),
        "skipped": [{"path": f, "reason": why} for f, (r, why) in zip(files, results) if r is None],
    }
    _write_atomic(out / STATE / f"{name}.json", _json_bytes(record))
    return record


def _flat(settings: dict, prefix: str = "") -> dict:
    """{"codec": {"size": 64}} -> {"codec.size": 64}, to name exactly which setting differs."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _unclaimed_state(entry: Path) -> bool:
    """A .prepare/ that a run killed before writing run.json left behind (empty but for .tmp files)."""
    return entry.name == STATE and entry.is_dir() and all(f.name.endswith(".tmp") for f in entry.iterdir())


def _claim(out: Path, run: dict) -> None:
    """Start a run in `out`, or continue one with identical settings; refuse anything else."""
    state = out / STATE / "run.json"
    if state.exists():
        previous = json.loads(state.read_text())
        if previous != run:
            old, new = _flat(previous), _flat(run)
            changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
                       if old.get(k) != new.get(k)]
            raise PrepareError(f"{out} holds a run with other settings ({'; '.join(changed)}): "
                               f"use another --out, or delete {out} to start over")
        for leftover in [*out.glob("*.tmp"), *(out / STATE).glob("*.tmp")]:  # from a killed run
            leftover.unlink()
        return
    if out.exists() and any(not _unclaimed_state(entry) for entry in out.iterdir()):
        raise PrepareError(f"{out} is not empty and holds no prepare run: use an empty or new folder")
    (out / STATE).mkdir(parents=True, exist_ok=True)
    for leftover in (out / STATE).glob("*.tmp"):  # a run killed before its run.json was in place
        leftover.unlink()
    _write_atomic(state, _json_bytes(run))


# ------------------------------------------------------------------------------------ the run

def _versions() -> dict:
    import platform

    import av
    import PIL
    from PIL import features

    from nanocodec import __version__

    return {
        "nanocodec": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "libjpeg": features.version("jpg"),
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "pyav": av.__version__,
        "ffmpeg": av.ffmpeg_version_info,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
    }


def _tokenizer(out: Path, pool: _Pool, src: Source, train_idx: list[int], codec: Codec, merges: int,
               docs: int, given: str | None, seed: int, batch: int) -> tuple[bpe.Tokenizer, dict]:
    """Load, copy in, or learn the tokenizer; out/tokenizer.json holds it afterwards."""
    path = out / TOKENIZER
    if given is not None:
        tok = _load_tokenizer(given)
        origin = {"from": str(given)}
    elif path.exists():  # a resumed run: the settings matched, so this is the tokenizer it learned
        tok = _load_tokenizer(path)
        origin = json.loads((out / STATE / "tokenizer.json").read_text())
    else:
        sample = sorted(random.Random(f"tokenizer-{seed}").sample(train_idx, min(docs, len(train_idx))))
        bar = tqdm(total=len(sample), unit=" files", desc="encode for tokenizer", dynamic_ncols=True)
        corpus = []
        for data, _ in pool.run(src.payloads(sample), tokenize=False, batch=batch):
            bar.update()
            if data is not None:
                corpus.append(data)
        bar.close()
        if not corpus:
            raise PrepareError(f"none of the {len(sample)} files sampled for the tokenizer could be read; "
                               f"is {src.description} a folder of {codec.media}?")
        print(f"learning {merges} BPE merges on {len(corpus)} files ({sum(map(len, corpus)) / 1e6:.1f} MB)",
              file=sys.stderr)
        tok = bpe.train(corpus, merges, split=codec.split)
        origin = {"trained_on_files": len(corpus), "trained_on_bytes": sum(map(len, corpus))}
        _write_atomic(out / STATE / "tokenizer.json", _json_bytes(origin))
    if tok.vocab_size > 2**16:
        raise PrepareError(f"tokenizer has {tok.vocab_size} ids; shards store uint16 (at most 65536)")
    try:
        tok.bos_id, tok.eos_id, tok.pad_id
    except KeyError as e:
        raise PrepareError(f"tokenizer {given or path}: {e.args[0]}") from None
    if not path.exists() or path.read_text() != tok.to_json():
        _write_atomic(path, tok.to_json().encode("utf-8"))  # the text whose hash tok.sha256 is
    return tok, origin


def _summary(out: Path, manifest: dict) -> str:
    s = manifest["splits"]
    kept = sum(v["documents"] for v in s.values())
    files = sum(v["files"] for v in s.values())
    parts = [f"{out}: kept {kept} of {files} files"]
    parts.append("; ".join(f"{k} {v['documents']} docs, {v['tokens']:,} tokens" for k, v in s.items()))
    by_reason = manifest["skipped_by_reason"]
    if by_reason:
        parts.append(f"skipped {len(manifest['skipped'])} (" + ", ".join(f"{n} {r}" for r, n in by_reason.items())
                     + f"; see {out / MANIFEST})")
    else:
        parts.append("skipped none")
    if manifest["ignored"]:
        parts.append("ignored " + ", ".join(f"{n} {what}" for what, n in manifest["ignored"].items()))
    if not s["val"]["documents"]:
        parts.append("warning: the val split is empty, so train.py has no val loss; raise --val-fraction")
    return " | ".join(parts)


def _encode_shards(out: Path, pool: _Pool, src: Source, plan: dict[str, list[list[int]]],
                   todo: list[tuple[str, int]], batch: int) -> dict[str, dict]:
    """Encode, tokenize and write the shards in `todo`, in order; returns their records."""
    records = {}
    bar = tqdm(total=sum(len(plan[s][n]) for s, n in todo), unit=" files", desc=f"prepare {out}", dynamic_ncols=True)
    skipped = 0
    for split in SPLITS:
        pending = [n for s, n in todo if s == split]
        results = pool.run(src.payloads([i for n in pending for i in plan[split][n]]), tokenize=True, batch=batch)
        for n in pending:
            chunk = []
            for _ in plan[split][n]:
                chunk.append(next(results))
                bar.update()
                if chunk[-1][0] is None:
                    skipped += 1
                    bar.set_postfix(skipped=skipped, refresh=False)
            name = shard_name(split, n)
            records[name] = _write_shard(out, name, [src.names[i] for i in plan[split][n]], chunk)
    bar.close()
    return records


def prepare(kind: str, source: str, out: str | os.PathLike, *, size: Any = None, quality: int | None = None,
            qp: int | None = None, merges: int | None = None, tokenizer_docs: int = 10000,
            tokenizer: str | os.PathLike | None = None, val_fraction: float = 0.05,
            workers: int | None = None, limit: int | None = None, seed: int = 0,
            shard_files: int | None = None) -> dict:
    """Prepare a data folder (see the module docstring) and return its manifest.

    `size` is an int for jpeg, (width, height) for avc; the default is the paper's (256 / 256x144)
    or, for the demo, the codec's small demo_size. `quality` is JPEG's (25), `qp` H.264's (37). `limit` caps
    the number of files (the demo's item count, default the codec's demo_count). `workers` defaults
    to every core; the output does not depend on it. Codec defaults: nanocodec.codecs.
    """
    try:
        codec = codec_for(kind)
    except CodecError:
        raise PrepareError(f"--kind must be one of {tuple(CODECS)}, got {kind!r}") from None
    if not 0.0 <= val_fraction < 1.0:
        raise PrepareError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    for option, value in (("tokenizer-docs", tokenizer_docs), ("limit", limit), ("shard-files", shard_files),
                          ("workers", workers), ("merges", merges)):
        if value is not None and value < (0 if option == "merges" else 1):
            raise PrepareError(f"--{option} must be {'>= 0' if option == 'merges' else 'positive'}, got {value}")
    source = str(source)
    merges = codec.default_merges if merges is None else merges
    shard_files = shard_files or codec.shard_files
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        if size is None and source == "demo":
            size = codec.demo_size
        codec = codec.configure(size=size, quality=quality, qp=qp)
        codec.check()  # settings the codec refuses fail here, once, not as one skipped file per input
    except (ValueError, TypeError) as e:
        raise PrepareError(f"codec settings {codec.settings()}: {e}") from e
    out = Path(out)
    try:
        src = find_source(codec, source, limit, seed)
    except demo.DemoError as e:
        raise PrepareError(str(e)) from e
    if not src.names:
        unreadable = "".join(f"; could not read {e['path']} ({e['reason']})" for e in src.skipped)
        raise PrepareError(f"--source {source}: found no {codec.media}{unreadable}")
    run = {
        "format_version": FORMAT_VERSION, "kind": codec.kind, "codec": codec.settings(), "source": src.description,
        "files_sha256": hashlib.sha256("\n".join(src.names).encode("utf-8")).hexdigest(),
        "merges": merges, "tokenizer_docs": tokenizer_docs,
        "tokenizer": _load_tokenizer(tokenizer).sha256 if tokenizer is not None else None,
        "val_fraction": val_fraction, "limit": limit, "seed": seed, "shard_files": shard_files,
        "versions": _versions(),  # other codec libraries may write other bytes: no mixing on resume
    }
    run = json.loads(json.dumps(run))  # tuples become lists, as they read back from run.json
    _claim(out, run)

    split_idx: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, name in enumerate(src.names):
        split_idx["val" if is_val(name, val_fraction) else "train"].append(i)
    plan = {s: [idx[k:k + shard_files] for k in range(0, len(idx), shard_files)] for s, idx in split_idx.items()}
    records = {shard_name(s, n): _finished(out, shard_name(s, n)) for s in SPLITS for n in range(len(plan[s]))}
    todo = [(s, n) for s in SPLITS for n in range(len(plan[s])) if records[shard_name(s, n)] is None]
    if len(todo) < len(records):
        print(f"resuming: {len(records) - len(todo)} of {len(records)} shards already written", file=sys.stderr)

    pool = _Pool(workers, (codec, str(out / TOKENIZER)))
    try:
        tok, origin = _tokenizer(out, pool, src, split_idx["train"], codec, merges, tokenizer_docs,
                                 tokenizer, seed, codec.batch)
        records.update(_encode_shards(out, pool, src, plan, todo, codec.batch))
    finally:
        pool.close()

    splits, skipped = {}, list(src.skipped)
    for split in SPLITS:
        recs = [records[shard_name(split, n)] for n in range(len(plan[split]))]
        splits[split] = {key: sum(r[key] for r in recs) for key in ("files", "documents", "tokens", "codec_bytes")}
        splits[split]["shards"] = len(recs)
        skipped += [entry for r in recs for entry in r["skipped"]]
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": codec.kind,
        "codec": run["codec"],
        "source": src.description,
        "seed": seed, "val_fraction": val_fraction, "limit": limit, "shard_files": shard_files,
        "dtype": "uint16",
        "tokenizer_sha256": tok.sha256,
        "tokenizer": {"merges": len(getattr(tok, "merges", ())), "vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
                      "eos_id": tok.eos_id, "pad_id": tok.pad_id, **origin},
        "splits": splits,
        "skipped": skipped,
        "skipped_by_reason": dict(collections.Counter(e["reason"].split(":", 1)[0] for e in skipped).most_common()),
        "ignored": src.ignored,
        "versions": run["versions"],
    }
    _write_atomic(out / MANIFEST, _json_bytes(manifest))
    print(_summary(out, manifest), file=sys.stderr)
    return manifest


def _parse_size(text: str) -> Any:
    try:
        if "x" in text:
            width, height = (int(v) for v in text.lower().split("x"))
            return width, height
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes N (jpeg) or WIDTHxHEIGHT (avc), got {text!r}") from None


def _per_codec(default: Callable[[type[Codec]], Any]) -> str:
    """'320 jpeg, 1024 avc': a default of every codec, for --help."""
    def text(value: Any) -> str:
        return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return ", ".join(f"{text(default(c))} {kind}" for kind, c in CODECS.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", required=True, choices=tuple(CODECS))
    parser.add_argument("--source", required=True, help="a folder (recursive), a text file of paths, or 'demo'")
    parser.add_argument("--out", required=True, help="output folder, e.g. data/NAME")
    parser.add_argument("--size", type=_parse_size,
                        help=f"N or WxH (default {_per_codec(lambda c: c.size)}; demo {_per_codec(lambda c: c.demo_size)})")
    parser.add_argument("--quality", type=int, help=f"JPEG quality (default {JPEG.quality})")
    parser.add_argument("--qp", type=int, help=f"H.264 constant QP (default {AVC.qp})")
    parser.add_argument("--merges", type=int, help=f"BPE merges (default {_per_codec(lambda c: c.default_merges)})")
    parser.add_argument("--tokenizer-docs", type=int, default=10000, help="files to learn BPE on (default 10000)")
    parser.add_argument("--tokenizer", help="reuse this tokenizer.json instead of learning one (a checkpoint's: "
                        "also the SentencePiece one of a model imported with python -m nanocodec.hf)")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--workers", type=int, help="processes (default: every core)")
    parser.add_argument("--limit", type=int, help="use at most N files (a seeded sample); demo: N items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-files", type=int, help=f"files per shard (default {_per_codec(lambda c: c.shard_files)})")
    args = parser.parse_args(argv)
    codec = codec_for(args.kind)
    if args.size is not None and isinstance(args.size, tuple) != codec.video:
        parser.error(f"--size for {args.kind} takes {codec.size_form}")
    try:
        prepare(args.kind, args.source, args.out, size=args.size, quality=args.quality, qp=args.qp,
                merges=args.merges, tokenizer_docs=args.tokenizer_docs, tokenizer=args.tokenizer,
                val_fraction=args.val_fraction, workers=args.workers, limit=args.limit, seed=args.seed,
                shard_files=args.shard_files)
    except (PrepareError, bpe.BpeError) as e:
        sys.exit(f"prepare: {e}")


if __name__ == "__main__":
    main()
