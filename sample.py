"""Sample images or videos from a trained checkpoint: unconditional, completing a partial image, or
continuing a video from its first frames.

    python sample.py --ckpt=out/demo --num_samples=8                               # unconditional
    python sample.py --ckpt=out/demo --prompt=cat.png --ratio=0.5 --num_samples=3  # complete the lower half
    python sample.py --ckpt=out/demo --prompt=photos/ --ratio=0.375 --constrain    # a folder of prompts
    python sample.py --ckpt=out/avc --prompt=clip.mp4 --frames=10                  # continue a video

Every default is in `SampleConfig`; override any with --key=value (or --key value, bare --flag).
Writes to --out: one complete .jpg per sample (tables restored; a stream the validator rejects is
saved repaired and counted), one PNG grid per prompt (prompt with its missing part gray | samples |
original), or for video one .h264 and one filmstrip PNG per sample. Ends with one summary line.
"""
from __future__ import annotations

import io
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from nanocodec import jpeg
from nanocodec.config import ConfigError, parse


@dataclass
class SampleConfig:
    ckpt: str = "out/demo"  # checkpoint directory written by train.py (its --out_dir)
    prompt: str = ""  # image or folder of images (JPEG models), video (AVC models); empty: unconditional
    ratio: float = 0.5  # image prompts: the fraction of MCUs given, cut at an MCU (paper: 0.25-0.75)
    frames: int = 10  # video prompts: the number of frames given (paper: 10 of 15)
    num_samples: int = 4  # per prompt
    out: str = "samples"
    constrain: bool = False  # JPEG: keep every stream valid by construction (nanocodec.huffman.Validator)
    seed: int = 1337
    temperature: float = 1.0  # 0: greedy
    top_k: int = 40  # paper's default; 0 disables
    top_p: float = 0.9  # paper's default; 1 disables
    max_new_tokens: int = 0  # 0: up to the model's context
    batch_size: int = 16  # rows generated together
    device: str = "auto"  # auto: cuda if available, else cpu


class SampleError(ValueError):
    """A sampling request that cannot be served: names the option or input and the problem."""


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".tga"}


def check(cfg: SampleConfig) -> None:
    if not 0.0 <= cfg.ratio <= 1.0:
        raise SampleError(f"--ratio must be in [0, 1] (the fraction of the image given), got {cfg.ratio}")
    if cfg.frames < 1:
        raise SampleError(f"--frames must be >= 1, got {cfg.frames}")
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise SampleError(f"--num_samples and --batch_size must be >= 1, got {cfg.num_samples} and {cfg.batch_size}")
    if cfg.temperature < 0 or not 0 < cfg.top_p <= 1 or cfg.top_k < 0 or cfg.max_new_tokens < 0:
        raise SampleError("need --temperature >= 0, 0 < --top_p <= 1, --top_k >= 0, --max_new_tokens >= 0")


def prompt_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise SampleError(f"--prompt {path}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return files
    if not path.is_file():
        raise SampleError(f"--prompt {path}: no such file or folder")
    return [path]


def grid(rows: list[list[Image.Image]], gap: int = 2) -> Image.Image:
    """Rows of equal-size tiles on a white sheet."""
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (cols * w + (cols - 1) * gap, len(rows) * h + (len(rows) - 1) * gap), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            sheet.paste(tile.resize((w, h)), (j * (w + gap), i * (h + gap)))
    return sheet


def save_image_sample(data: bytes, ok: bool, codec: dict, path: Path) -> tuple[Image.Image | None, bool]:
    """Write the sample as a complete .jpg (repaired when invalid); (decoded image or None, repaired)."""
    from nanocodec import huffman

    quality, subsampling = codec.get("quality", 25), codec.get("subsampling", "4:2:0")
    try:
        full = jpeg.restore(data if ok else huffman.repair(data), quality, subsampling)
        im = Image.open(io.BytesIO(full))
        im.load()
    except (ValueError, OSError) as e:  # a header the model garbled: nothing a decoder could show
        path.with_suffix(".bin").write_bytes(data)
        print(f"{path.with_suffix('.bin')}: unreadable stream kept as raw bytes ({e})", file=sys.stderr)
        return None, False
    path.write_bytes(full)
    return im.convert("RGB"), not ok


def run_images(cfg: SampleConfig, bundle, out: Path, generator: torch.Generator) -> dict:
    from nanocodec.sampling import complete, jpeg_header, jpeg_settings

    codec = jpeg_settings(bundle.manifest.get("codec", {}))
    size = codec.get("size")
    if size is None:
        raise SampleError(f"--ckpt {cfg.ckpt}: the data manifest records no image size under 'codec'")
    quality, subsampling = codec.get("quality", 25), codec.get("subsampling", "4:2:0")
    jobs: list[tuple[str, bytes | None, bytes]] = []  # (name, original stream, prompt prefix)
    skipped = 0
    if cfg.prompt:
        files = prompt_files(Path(cfg.prompt))
        for i, path in enumerate(files):
            try:
                full = jpeg.encode(path, **codec)
            except jpeg.ImageError as e:
                if len(files) == 1:
                    raise
                skipped += 1
                print(f"skipped {e}", file=sys.stderr)
                continue
            jobs.append((f"{i:03d}_{path.stem}" if len(files) > 1 else path.stem, full, jpeg.prompt(full, cfg.ratio)))
        if not jobs:
            raise SampleError(f"--prompt {cfg.prompt}: none of its files is a readable image")
    else:
        jobs.append(("sample", None, b""))
    header = jpeg_header(codec) if cfg.constrain else b""
    out.mkdir(parents=True, exist_ok=True)
    prefixes = [prefix for _, _, prefix in jobs for _ in range(cfg.num_samples)]
    result = complete(bundle.model, bundle.tokenizer, prefixes, kind="jpeg", header=header, constrain=cfg.constrain,
                      temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                      max_new_tokens=cfg.max_new_tokens or None, generator=generator, batch_size=cfg.batch_size,
                      progress=True)
    blank = Image.new("RGB", (size, size), (0, 0, 0))
    repaired = unreadable = 0
    for j, (name, original, prefix) in enumerate(jobs):
        tiles = []
        for k in range(cfg.num_samples):
            sample = result.samples[j * cfg.num_samples + k]
            im, fixed = save_image_sample(sample.data, sample.ok, codec, out / f"{name}_{k}.jpg")
            repaired += fixed
            unreadable += im is None
            tiles.append(im or blank)
        if original is None:
            cols = min(8, len(tiles))
            grid([tiles[i : i + cols] for i in range(0, len(tiles), cols)]).save(out / f"{name}_grid.png")
        else:
            given = jpeg.decode(prefix, quality, subsampling, repair=True)  # missing MCUs come back flat gray
            grid([[given, *tiles, jpeg.decode(original, quality, subsampling)]]).save(out / f"{name}_grid.png")
    valid = sum(s.ok for s in result.samples)
    return dict(prompts=len(jobs) if cfg.prompt else 0, skipped=skipped, samples=len(result.samples), valid=valid,
                repaired=repaired, unreadable=unreadable, retried=result.retried, tokens=result.new_tokens,
                tokens_per_second=result.tokens_per_second)


def run_video(cfg: SampleConfig, bundle, out: Path, generator: torch.Generator) -> dict:
    from nanocodec import avc
    from nanocodec.sampling import complete

    if cfg.constrain:
        raise SampleError("--constrain checks JPEG streams only; this checkpoint models H.264 (avc)")
    codec = {k: v for k, v in bundle.manifest.get("codec", {}).items() if k in ("seconds", "fps", "size", "qp", "keep_sei")}
    if "size" in codec:
        codec["size"] = tuple(codec["size"])  # JSON keeps it as a list
    prefix, name, original = b"", "sample", None
    if cfg.prompt:
        path = Path(cfg.prompt)
        if not path.is_file():
            raise SampleError(f"--prompt {path}: no such video file")
        try:
            original = avc.encode(path, **codec)
        except avc.VideoError as e:
            raise SampleError(f"--prompt {path}: not a readable video ({e})") from e
        try:
            prefix, name = avc.prompt(original, cfg.frames), path.stem
        except ValueError as e:
            raise SampleError(f"--frames {cfg.frames}: {e}") from e
    out.mkdir(parents=True, exist_ok=True)
    if original is not None:
        avc.filmstrip(avc.decode(original), out / f"{name}_original.png")
    result = complete(bundle.model, bundle.tokenizer, [prefix] * cfg.num_samples, kind="avc",
                      temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                      max_new_tokens=cfg.max_new_tokens or None, generator=generator, batch_size=cfg.batch_size,
                      progress=True)
    unreadable = 0
    for k, sample in enumerate(result.samples):
        (out / f"{name}_{k}.h264").write_bytes(sample.data)
        frames = avc.decode(sample.data)
        if frames:
            avc.filmstrip(frames, out / f"{name}_{k}.png")
        else:
            unreadable += 1
            print(f"{out / f'{name}_{k}.h264'}: no frame decodes", file=sys.stderr)
    return dict(prompts=1 if cfg.prompt else 0, skipped=0, samples=len(result.samples),
                valid=sum(s.ok for s in result.samples), repaired=0, unreadable=unreadable, retried=0,
                tokens=result.new_tokens, tokens_per_second=result.tokens_per_second)


def main(argv: list[str]) -> dict:
    cfg = parse(SampleConfig, argv)
    check(cfg)
    from nanocodec.checkpoint import load_for_inference

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    bundle = load_for_inference(cfg.ckpt, device=device)
    kind = bundle.config.get("kind") or bundle.manifest.get("kind")
    out = Path(cfg.out)
    generator = torch.Generator().manual_seed(cfg.seed)
    if kind == "jpeg":
        summary = run_images(cfg, bundle, out, generator)
    elif kind == "avc":
        summary = run_video(cfg, bundle, out, generator)
    else:
        raise SampleError(f"--ckpt {cfg.ckpt}: unknown codec kind {kind!r} in config.json")
    print(f"{summary['samples']} samples, {summary['valid']} valid, {summary['repaired']} repaired"
          + (f", {summary['unreadable']} unreadable" if summary["unreadable"] else "")
          + (f", {summary['skipped']} prompts skipped" if summary["skipped"] else "")
          + (f", {summary['retried']} constrained rows retried" if summary["retried"] else "")
          + f"; {summary['tokens_per_second']:.1f} tokens/s; written to {out}/")
    return {**summary, "config": asdict(cfg)}


if __name__ == "__main__":
    from nanocodec.checkpoint import CheckpointError

    try:
        main(sys.argv[1:])
    except (ConfigError, SampleError, CheckpointError, jpeg.ImageError) as e:
        sys.exit(f"sample.py: error: {e}")
