"""Lossless JPEG recompression, ours against the tools people use, on the same files.

    python -m nanocodec.bench compress --ckpt=CKPT --source=DIR [--limit=N] [--json=PATH]

DIR is a prepared data folder (its val split, each document put back into the full JFIF file
`jpeg.restore` writes) or a folder of JPEG files. Every method codes every file and must give it
back byte for byte: ours (nanocodec.compress with CKPT), Lepton (`lepton_jpeg_python`, Dropbox's
format in Rust), JPEG XL lossless JPEG transcoding (`imagecodecs.jpegxl_encode_jpeg`) and xz -9e
(`lzma`, preset 9 | PRESET_EXTREME). The report gives bytes, ratio to the original, and encode and
decode MB/s of original bytes (fastest of --repeats passes; ours one pass, it takes minutes), then
bits per original byte by region (headers with their tables, entropy-coded data, restart markers)
for ours, from the model's cross-entropy of each token (eval.py's regions), beside Lepton's, read
from its file layout: a 28-byte fixed header and a zlib-compressed section holding the JPEG headers
and restart information, then the arithmetic-coded coefficients. A method that is missing or
refuses a file is reported with the reason, never a crash.
"""
from __future__ import annotations

import argparse
import json
import lzma
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from nanocodec.bench._timing import best_time
from nanocodec.codecs import JPEG

LEPTON_FIXED_HEADER = 28  # magic, version, type, threads, reserved, revision, file size, header size
XZ_PRESET = 9 | lzma.PRESET_EXTREME


@dataclass
class Method:
    name: str
    encode: Callable[[bytes], bytes]
    decode: Callable[[bytes], bytes]
    repeats: int = 3


def baselines() -> tuple[list[Method], dict[str, str]]:
    """The baseline methods that work here, and why each missing one does not."""
    methods, missing = [], {}
    try:
        import lepton_jpeg_python as lepton

        methods.append(Method("Lepton", lepton.compress_bytes, lepton.decompress_bytes))
    except ImportError as e:
        missing["Lepton"] = f"lepton_jpeg_python is not installed ({e}); pip install '.[compress]'"
    try:
        import imagecodecs

        if imagecodecs.JPEGXL.available:
            methods.append(Method("JPEG XL", imagecodecs.jpegxl_encode_jpeg, lambda b: bytes(imagecodecs.jpegxl_decode_jpeg(b))))
        else:
            missing["JPEG XL"] = f"imagecodecs {imagecodecs.__version__} was built without JPEG XL"
    except ImportError as e:
        missing["JPEG XL"] = f"imagecodecs is not installed ({e}); pip install '.[compress]'"
    methods.append(Method("xz -9e", lambda b: lzma.compress(b, preset=XZ_PRESET), lzma.decompress))
    return methods, missing


def load_files(source: Path, limit: int) -> tuple[list[tuple[str, bytes]], str]:
    """(name, full JFIF bytes) of the files to code, and a description of where they came from."""
    if (source / "manifest.json").exists():
        from nanocodec import data
        from nanocodec.bpe import Tokenizer

        manifest = data.manifest(source)
        codec = JPEG.from_settings(manifest.get("codec", {}))
        tokenizer = Tokenizer.load(source / "tokenizer.json")
        files = []
        for i, doc in enumerate(data.documents(source, "val")):
            if limit and i == limit:
                break
            stream = tokenizer.decode(doc)
            files.append((f"val_{i:05d}.jpg", codec.to_file(stream)))
        return files, f"val split of {source} restored to full JFIF files"
    paths = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    paths = paths[:limit] if limit else paths
    return [(p.name, p.read_bytes()) for p in paths], f"JPEG files of {source}"


@dataclass
class Outcome:
    """How one method did on the files: what it coded, how fast, and what it refused."""

    name: str
    original: int = 0
    coded: int = 0
    files: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0
    refused: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, bytes] = field(default_factory=dict)

    def row(self) -> dict:
        return {"files": self.files, "original_bytes": self.original, "coded_bytes": self.coded,
                "mean_coded_bytes": self.coded / self.files if self.files else None,
                "ratio": self.coded / self.original if self.original else None,
                "encode_MB_per_s": self.original / self.encode_s / 1e6 if self.encode_s else None,
                "decode_MB_per_s": self.original / self.decode_s / 1e6 if self.decode_s else None,
                "refused": len(self.refused), "first_refusal": next(iter(self.refused.items()), None)}


def run_method(method: Method, files: list[tuple[str, bytes]], progress: bool) -> Outcome:
    """Code every file, check each round trip, time the passes over the files it accepts."""
    outcome = Outcome(method.name)
    accepted = []
    for name, data in tqdm(files, desc=f"{method.name} encode", disable=not progress, leave=False):
        try:
            began = time.perf_counter()
            outcome.outputs[name] = method.encode(data)
            outcome.encode_s += time.perf_counter() - began
            accepted.append((name, data))
        except Exception as e:  # each library raises its own types; a refusal is reported, not fatal
            outcome.refused[name] = f"{type(e).__name__}: {e}"
    for name, data in tqdm(accepted, desc=f"{method.name} decode", disable=not progress, leave=False):
        began = time.perf_counter()
        try:
            back = method.decode(outcome.outputs[name])
        except Exception as e:
            back, why = None, f"{type(e).__name__}: {e}"
        outcome.decode_s += time.perf_counter() - began
        if back != data:
            raise SystemExit(f"{method.name} did not round-trip {name}: {why if back is None else 'different bytes'}")
    if method.repeats > 1 and accepted:
        outcome.encode_s = best_time(lambda: [method.encode(d) for _, d in accepted], method.repeats)[0]
        outcome.decode_s = best_time(lambda: [method.decode(outcome.outputs[n]) for n, _ in accepted], method.repeats)[0]
    outcome.files = len(accepted)
    outcome.original = sum(len(d) for _, d in accepted)
    outcome.coded = sum(len(outcome.outputs[n]) for n, _ in accepted)
    return outcome


def our_regions(compressor, results: list) -> dict:
    """Original bytes and our bits by region over the files we coded (model cross-entropy per token)."""
    from nanocodec.eval import HEADERS, REGIONS, byte_regions, token_lengths, token_regions

    lengths = token_lengths(compressor.tokenizer)
    original = np.zeros(len(REGIONS), np.int64)
    bits = np.zeros(len(REGIONS))
    tables = fields = payload = 0
    for result in results:
        original += np.bincount(byte_regions(result.original), minlength=len(REGIONS))
        regions = np.append(token_regions(np.array(result.tokens[:-1]), compressor.tokenizer, lengths), HEADERS)  # EOS
        bits += np.bincount(regions, weights=result.bits, minlength=len(REGIONS))
        tables += len(result.original) - len(result.stream)
        fields += len(result.container) - result.payload_bytes
        payload += result.payload_bytes
    return {"original_bytes": dict(zip(REGIONS, original.tolist())), "bits": dict(zip(REGIONS, bits.tolist())),
            "table_bytes": tables, "container_field_bits": 8 * fields,
            "coding_loss_bits": float(8 * payload - bits.sum())}  # payload over the model's cross-entropy


def lepton_regions(outputs: dict[str, bytes]) -> dict | str:
    """Lepton's bits in its header section (JPEG headers + restart information) and in its coefficients."""
    header = coefficients = 0
    for blob in outputs.values():
        if len(blob) < LEPTON_FIXED_HEADER or blob[:2] != b"\xcf\x84":
            return "not the Lepton layout this bench reads (magic CF 84, 28-byte fixed header)"
        section = LEPTON_FIXED_HEADER + int.from_bytes(blob[24:28], "little")
        if section > len(blob):
            return "a Lepton header section longer than the file: not the layout this bench reads"
        header, coefficients = header + section, coefficients + len(blob) - section
    return {"headers_and_restart_bits": 8 * header, "entropy_bits": 8 * coefficients}


def lepton_alone(files: list[tuple[str, bytes]], outputs: dict[str, bytes]) -> str:
    """Lepton's bits per byte by region when ours did not run (the distance a model must cover)."""
    from nanocodec.eval import REGIONS, byte_regions

    coded = [(name, data) for name, data in files if name in outputs]
    n = dict(zip(REGIONS, sum(np.bincount(byte_regions(d), minlength=len(REGIONS)) for _, d in coded).tolist()))
    lepton = lepton_regions(outputs)
    if isinstance(lepton, str):
        return f"Lepton regions not measured: {lepton}"
    return (f"Lepton by region (ours did not run): headers + restart markers "
            f"{lepton['headers_and_restart_bits'] / (n['headers'] + n['restart']):.3f} bits/byte over "
            f"{n['headers'] + n['restart']} bytes, entropy-coded data {lepton['entropy_bits'] / n['entropy']:.3f} "
            f"bits/byte over {n['entropy']} bytes")


def region_table(ours: dict, lepton: dict | str | None) -> list[str]:
    n, b = ours["original_bytes"], ours["bits"]
    rate = lambda bits, nbytes: f"{bits / nbytes:.3f}" if nbytes else "-"  # noqa: E731
    lep = lepton if isinstance(lepton, dict) else {}
    head_restart = n["headers"] + n["restart"]
    total_ours = sum(b.values()) + ours["container_field_bits"] + ours["coding_loss_bits"]
    lines = ["| region | original bytes | ours, bits/byte | Lepton, bits/byte |", "|---|---|---|---|",
             f"| headers (incl. {ours['table_bytes']} table bytes ours omits) | {n['headers']} | {rate(b['headers'], n['headers'])} | |",
             f"| restart markers | {n['restart']} | {rate(b['restart'], n['restart'])} | |",
             f"| headers + restart markers | {head_restart} | {rate(b['headers'] + b['restart'], head_restart)} | "
             f"{rate(lep['headers_and_restart_bits'], head_restart) if lep else '-'} |",
             f"| entropy-coded data | {n['entropy']} | {rate(b['entropy'], n['entropy'])} | "
             f"{rate(lep['entropy_bits'], n['entropy']) if lep else '-'} |",
             f"| container fields ({ours['container_field_bits'] // 8} bytes) | | {rate(ours['container_field_bits'], sum(n.values()))} | |",
             f"| range coding over the cross-entropy | | {rate(ours['coding_loss_bits'], sum(n.values()))} | |",
             f"| whole files | {sum(n.values())} | {rate(total_ours, sum(n.values()))} | "
             f"{rate(sum(lep.values()), sum(n.values())) if lep else '-'} |"]
    if isinstance(lepton, str):
        lines.append(f"\nLepton regions not measured: {lepton}")
    return lines


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench compress", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="", help="a JPEG checkpoint; empty: the baselines only")
    parser.add_argument("--source", required=True, help="a prepared data folder (its val split) or a folder of JPEG files")
    parser.add_argument("--limit", type=int, default=0, help="code the first N files only; 0: all")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for our coder")
    parser.add_argument("--repeats", type=int, default=3, help="timing passes of each baseline (the fastest counts)")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args(argv)
    source = Path(args.source)
    if not source.is_dir():
        raise SystemExit(f"--source {source}: not a folder")
    files, described = load_files(source, args.limit)
    if not files:
        raise SystemExit(f"--source {source}: no JPEG files (.jpg/.jpeg) and no prepared val split")
    methods, missing = baselines()
    compressor = None
    if args.ckpt:
        from nanocodec.compress import Compressor

        compressor = Compressor(args.ckpt, args.threads)
        results = []  # one pass (repeats=1): exactly the files ours accepted

        def encode(data: bytes) -> bytes:
            results.append(compressor.compress(data, "f.jpg"))
            return results[-1].container

        methods.insert(0, Method("ours", encode, lambda blob: compressor.decompress(blob)[1].original, repeats=1))
    mean = sum(len(d) for _, d in files) / len(files)
    print(f"{len(files)} files, mean {mean:.0f} bytes: {described}")
    outcomes = [run_method(m, files, progress=m.name == "ours") for m in methods]
    report = {"source": described, "files": len(files), "missing": missing,
              "methods": {o.name: o.row() for o in outcomes}}
    lines = ["| method | files | bytes | mean bytes | ratio | encode MB/s | decode MB/s |", "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        r = o.row()
        if not o.files:
            lines.append(f"| {o.name} | 0 | refused all {len(o.refused)}: {r['first_refusal'][1]} | | | | |")
            continue
        lines.append(f"| {o.name} | {o.files} | {o.coded} | {r['mean_coded_bytes']:.1f} | {r['ratio']:.4f} | "
                     f"{r['encode_MB_per_s']:.4f} | {r['decode_MB_per_s']:.4f} |")
    lines.append(f"| original | {len(files)} | {sum(len(d) for _, d in files)} | {mean:.1f} | 1 | | |")
    for name, why in missing.items():
        lines.append(f"\n{name} not run: {why}")
    for o in outcomes:
        if o.refused and o.files:
            lines.append(f"\n{o.name} refused {len(o.refused)} of {len(files)} files, e.g. {o.row()['first_refusal']}")
    by_name = {o.name: o for o in outcomes}
    if compressor is not None and by_name["ours"].files:
        ours = our_regions(compressor, results)
        lepton = lepton_regions({n: by_name["Lepton"].outputs[n] for n in by_name["ours"].outputs
                                 if n in by_name["Lepton"].outputs}) if "Lepton" in by_name else None
        lines += ["", *region_table(ours, lepton)]
        report["regions"] = {"ours": ours, "lepton": lepton}
        if isinstance(lepton, dict) and by_name["ours"].files == by_name["Lepton"].files:
            gap = (8 * by_name["ours"].coded - 8 * by_name["Lepton"].coded) / by_name["ours"].original
            entropy_gap = (ours["bits"]["entropy"] - lepton["entropy_bits"]) / ours["original_bytes"]["entropy"]
            report["gap_to_lepton_bits_per_byte"] = {"whole_files": gap, "entropy_coded_data": entropy_gap}
            lines.append(f"\nGap to Lepton, ours minus Lepton in bits per original byte: {gap:+.3f} on whole files "
                         f"(ours omits the {ours['table_bytes']} table bytes), {entropy_gap:+.3f} on the entropy-coded data")
    elif "Lepton" in by_name and by_name["Lepton"].files:
        lines += ["", lepton_alone(files, by_name["Lepton"].outputs)]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
