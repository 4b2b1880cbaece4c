"""Sample images or videos from a trained checkpoint: unconditional, completing a partial image, or
continuing a video from its first frames.

    python sample.py --ckpt=out/demo --num_samples=8                               # unconditional
    python sample.py --ckpt=out/demo --prompt=cat.png --ratio=0.5 --num_samples=3  # complete the lower half
    python sample.py --ckpt=out/demo --prompt=photos/ --ratio=0.375 --constrain    # a folder of prompts
    python sample.py --ckpt=out/demo-avc --prompt=clip.mp4 --frames=4              # continue a video
    python sample.py --ckpt=out/demo-avc --prompt=clip.mp4 --frames=4 --constrain  # every continuation decodes

Every default is in `SampleConfig`; override any with --key=value (or --key value, bare --flag);
--help lists them with their meanings. A user's mistake is one line and exit status 1 (`cli`).
Writes to --out (default CKPT/samples): one complete .jpg per sample (tables restored; a stream the validator rejects is
saved repaired and counted), one PNG grid per prompt (prompt with its missing part gray | samples |
original), or for video one .h264 and one filmstrip PNG per sample. Ends with one summary line.
Does not own: the codec steps (encode, prompt, validate, pictures: nanocodec.codecs) or generation
(nanocodec.sampling).
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nanocodec import jpeg
from nanocodec.codecs import VIDEO_EXTENSIONS, Codec, CodecError, codec_for
from nanocodec.config import ConfigError, one_line_warnings, parse, resolve_device, set_threads
from nanocodec.pictures import tile
from nanocodec.sampling import PAPER_SAMPLING, complete, prompt_problem


@dataclass
class SampleConfig:
    """Sample images or videos from a checkpoint: unconditional, completing images, continuing a video.

    python sample.py --ckpt=out/demo --prompt=cat.png --ratio=0.5 --constrain
    python sample.py --ckpt=out/demo-avc --prompt=clip.mp4 --frames=4
    """

    ckpt: str = "out/demo"  # checkpoint directory written by train.py (its --out_dir)
    prompt: str = ""  # image or folder of images (JPEG models), video (AVC models); empty: unconditional
    ratio: float = 0.5  # image prompts: the fraction of MCUs given, cut at an MCU (paper: 0.25-0.75)
    frames: int = 10  # video prompts: the number of frames given (paper: 10 of 15)
    num_samples: int = 4  # samples drawn for each prompt (or in all, unconditional)
    out: str = ""  # output folder; empty: CKPT/samples (beside the checkpoint, never the source tree)
    constrain: bool = False  # keep every stream valid by construction (nanocodec.huffman / nanocodec.h264 Validator)
    seed: int = 1337  # seed of the sampling generator: same seed, same samples on any device
    temperature: float = PAPER_SAMPLING["temperature"]  # softmax temperature of sampling; 0: greedy
    top_k: int = PAPER_SAMPLING["top_k"]  # sample among the k most likely tokens (paper: 40); 0 disables
    top_p: float = PAPER_SAMPLING["top_p"]  # nucleus: the most likely tokens holding this mass (paper: 0.9); 1 disables
    max_new_tokens: int = 0  # most tokens sampled per stream; 0: up to the model's context
    batch_size: int = 16  # rows generated together
    device: str = "auto"  # auto: cuda if available, else cpu
    threads: int = 0  # CPU threads for torch; 0: the cores this process may use (fewer when cores are busy)


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


def save_image_sample(data: bytes, ok: bool, codec: Codec, path: Path) -> tuple[Image.Image | None, bool]:
    """Write the sample as a complete .jpg (repaired when invalid); (decoded image or None, repaired)."""
    images = codec.to_images(data)
    if not images:  # a header the model garbled: nothing a decoder could show
        path.with_suffix(".bin").write_bytes(data)
        print(f"{path.with_suffix('.bin')}: unreadable stream kept as raw bytes (no picture decodes)", file=sys.stderr)
        return None, False
    path.write_bytes(codec.to_file(data))
    return images[0], not ok


def cut_off(samples, prompt_tokens: list[int], cfg: SampleConfig, context: int) -> dict[str, int]:
    """Samples that stopped before their stream was complete, by the limit that stopped them."""
    count = {"context": 0, "max_new_tokens": 0}
    for sample, tokens in zip(samples, prompt_tokens):
        if not sample.finished and not sample.ok:
            count["max_new_tokens" if cfg.max_new_tokens and tokens + cfg.max_new_tokens < context else "context"] += 1
    return count


def describe_cut_off(count: dict[str, int], cfg: SampleConfig, context: int) -> str:
    """'(3 stopped before the stream was complete: 2 at the model's context of 1024 tokens, ...)'."""
    if not sum(count.values()):
        return ""
    parts = [f"{count['context']} at the model's context of {context} tokens"] if count["context"] else []
    if count["max_new_tokens"]:
        parts.append(f"{count['max_new_tokens']} at --max_new_tokens={cfg.max_new_tokens}")
    return f" ({sum(count.values())} stopped before the stream was complete: {', '.join(parts)})"


def image_jobs(cfg: SampleConfig, bundle, codec: Codec) -> tuple[list[tuple[str, bytes, bytes, int]], int]:
    """(name, original stream, prompt prefix, prompt tokens) per usable prompt file, and how many
    were skipped. A single prompt that cannot be used is an error; in a folder it is skipped."""
    path = Path(cfg.prompt)
    if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        raise SampleError(f"--prompt {path}: this checkpoint models JPEG images; the prompt is a video "
                          f"(give an image or a folder of images, or a checkpoint trained on --kind avc data)")
    files = prompt_files(path)
    jobs, skipped = [], 0
    for i, file in enumerate(files):
        try:
            full = codec.encode(file)
            prefix = codec.prompt(full, cfg.ratio)
            tokens, problem = prompt_problem(bundle, prefix)
            if problem:
                raise SampleError(f"--prompt {file}: at --ratio={cfg.ratio:g} the prompt is {problem}; use a smaller "
                                  f"--ratio or a checkpoint trained with a longer --context")
        except (jpeg.ImageError, SampleError) as e:
            if len(files) == 1:
                raise
            skipped += 1
            print(f"skipped {e}", file=sys.stderr)
            continue
        jobs.append((f"{i:03d}_{file.stem}" if len(files) > 1 else file.stem, full, prefix, tokens))
    if not jobs:
        raise SampleError(f"--prompt {cfg.prompt}: none of its {len(files)} files can be used as a prompt (see above)")
    return jobs, skipped


def run_images(cfg: SampleConfig, bundle, codec: Codec, out: Path, generator: torch.Generator) -> dict:
    if "size" not in bundle.manifest.get("codec", {}):
        raise SampleError(f"--ckpt {cfg.ckpt}: the data manifest records no image size under 'codec'")
    jobs, skipped = image_jobs(cfg, bundle, codec) if cfg.prompt else ([("sample", None, b"", 1)], 0)
    header = codec.header() if cfg.constrain else b""
    out.mkdir(parents=True, exist_ok=True)
    prefixes = [prefix for _, _, prefix, _ in jobs for _ in range(cfg.num_samples)]
    result = complete(bundle.model, bundle.tokenizer, prefixes, kind=codec, header=header, constrain=cfg.constrain,
                      temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                      max_new_tokens=cfg.max_new_tokens or None, generator=generator, batch_size=cfg.batch_size,
                      progress=True)
    blank = codec.blank()
    repaired = unreadable = 0
    for j, (name, original, prefix, _) in enumerate(jobs):
        tiles = []
        for k in range(cfg.num_samples):
            sample = result.samples[j * cfg.num_samples + k]
            im, fixed = save_image_sample(sample.data, sample.ok, codec, out / f"{name}_{k}{codec.extension}")
            repaired += fixed
            unreadable += im is None
            tiles.append(im or blank)
        if original is None:
            tile(tiles, cols=8, cell=tiles[0].size).save(out / f"{name}_grid.png")
        else:
            given = codec.to_images(prefix)[0]  # missing MCUs come back flat gray
            row = [given, *tiles, codec.to_images(original)[0]]
            tile(row, cols=len(row), cell=given.size).save(out / f"{name}_grid.png")
    valid = sum(s.ok for s in result.samples)
    prompt_tokens = [tokens for *_, tokens in jobs for _ in range(cfg.num_samples)]
    return dict(prompts=len(jobs) if cfg.prompt else 0, skipped=skipped, samples=len(result.samples), valid=valid,
                repaired=repaired, unreadable=unreadable, retried=result.retried, tokens=result.new_tokens,
                tokens_per_second=result.tokens_per_second,
                cut_off=cut_off(result.samples, prompt_tokens, cfg, bundle.model.config.max_seq_len))


def video_prompt(cfg: SampleConfig, bundle, codec: Codec) -> tuple[bytes, bytes, int]:
    """(original stream, its first --frames frames, their tokens) of the --prompt video."""
    from nanocodec import avc

    path = Path(cfg.prompt)
    if path.is_dir():
        raise SampleError(f"--prompt {path}: a folder; this checkpoint continues one video file at a time")
    if not path.is_file():
        raise SampleError(f"--prompt {path}: no such video file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SampleError(f"--prompt {path}: this checkpoint models H.264 video; the prompt is an image "
                          f"(give a video file such as .mp4, or a checkpoint trained on --kind jpeg data)")
    try:
        original = codec.encode(path)
    except avc.VideoError as e:
        raise SampleError(f"--prompt {path}: not a readable video ({e})") from e
    pictures = len(avc.frame_offsets(original))
    if cfg.frames > pictures:
        raise SampleError(f"--prompt {path}: --frames={cfg.frames}, but the video gives only {pictures} frames "
                          f"(at {codec.fps} fps over its first {codec.seconds} s); use --frames={max(pictures - 1, 1)} or fewer")
    prefix = codec.prompt(original, cfg.frames)
    tokens, problem = prompt_problem(bundle, prefix)
    if problem:
        fit = [f for f in range(1, cfg.frames) if prompt_problem(bundle, codec.prompt(original, f + 1))[1] is None]
        hint = (f"use --frames={fit[-1]} or fewer (then the next frame still fits)" if fit
                else "not even two frames fit")
        raise SampleError(f"--prompt {path}: its first {cfg.frames} frames are {problem}; {hint}, "
                          f"or a checkpoint trained with a longer --context")
    return original, prefix, tokens


def filmstrip(frames: list[Image.Image], path: Path) -> None:
    from nanocodec import avc

    avc.filmstrip([np.asarray(frame) for frame in frames], path)


def run_video(cfg: SampleConfig, bundle, codec: Codec, out: Path, generator: torch.Generator) -> dict:
    prefix, name, original, tokens = b"", "sample", None, 1
    if cfg.prompt:
        original, prefix, tokens = video_prompt(cfg, bundle, codec)
        name = Path(cfg.prompt).stem
    out.mkdir(parents=True, exist_ok=True)
    if original is not None:
        filmstrip(codec.to_images(original), out / f"{name}_original.png")
    result = complete(bundle.model, bundle.tokenizer, [prefix] * cfg.num_samples, kind=codec,
                      header=codec.header() if cfg.constrain and not prefix else b"", constrain=cfg.constrain,
                      temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                      max_new_tokens=cfg.max_new_tokens or None, generator=generator, batch_size=cfg.batch_size,
                      progress=True)
    unreadable = 0
    for k, sample in enumerate(result.samples):
        (out / f"{name}_{k}{codec.extension}").write_bytes(codec.to_file(sample.data))
        frames = codec.to_images(sample.data)
        if frames:
            filmstrip(frames, out / f"{name}_{k}.png")
        else:
            unreadable += 1
            print(f"{out / f'{name}_{k}{codec.extension}'}: no frame decodes", file=sys.stderr)
    return dict(prompts=1 if cfg.prompt else 0, skipped=0, samples=len(result.samples),
                valid=sum(s.ok for s in result.samples), repaired=0, unreadable=unreadable, retried=result.retried,
                cut_back=sum(s.cut for s in result.samples), tokens=result.new_tokens, tokens_per_second=result.tokens_per_second,
                cut_off=cut_off(result.samples, [tokens] * len(result.samples), cfg, bundle.model.config.max_seq_len),
                nothing_added=sum(bool(prefix) and s.data == s.prompt for s in result.samples))


def summary_line(codec: Codec, summary: dict, cfg: SampleConfig, context: int, out: Path) -> str:
    """One line: how many samples, how many are valid as sampled, what happened to the rest."""
    n, valid = summary["samples"], summary["valid"]
    stopped = describe_cut_off(summary["cut_off"], cfg, context)
    if codec.video:
        concealed = n - valid - summary["unreadable"]
        head = (f"{n} samples: {valid} decode without error, {concealed} decode with errors concealed"
                f", {summary['unreadable']} decode to no frame{stopped}")
    else:
        head = (f"{n} samples, {valid} valid, {summary['repaired']} repaired{stopped}"
                + (f", {summary['unreadable']} unreadable" if summary["unreadable"] else ""))
    return (head + (f", {summary['skipped']} prompts skipped" if summary["skipped"] else "")
            + (f", {summary['retried']} constrained rows retried" if summary["retried"] else "")
            + (f", {summary['cut_back']} cut back to their last complete picture when they ran out of tokens"
               if summary.get("cut_back") else "")
            + (f", {summary['nothing_added']} of them with no picture beyond the prompt (more --max_new_tokens)"
               if summary.get("nothing_added") else "")
            + f"; {summary['tokens_per_second']:.1f} tokens/s; written to {out}/")


def main(argv: list[str]) -> dict:
    cfg = parse(SampleConfig, argv)
    check(cfg)
    from nanocodec.checkpoint import load_for_inference

    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    bundle = load_for_inference(cfg.ckpt, device=device)
    codec = codec_for({"kind": bundle.config.get("kind") or bundle.manifest.get("kind"),
                       "codec": bundle.manifest.get("codec")}, where=f"--ckpt {cfg.ckpt}: config.json")
    if cfg.constrain and codec.constraint_problem():
        raise SampleError(codec.constraint_problem())
    out = Path(cfg.out or Path(cfg.ckpt) / "samples")
    generator = torch.Generator().manual_seed(cfg.seed)
    summary = (run_video if codec.video else run_images)(cfg, bundle, codec, out, generator)
    print(summary_line(codec, summary, cfg, bundle.model.config.max_seq_len, out))
    return {**summary, "config": asdict(cfg)}


def cli(argv: list[str]) -> None:
    """main() with every user mistake turned into one line on stderr and exit status 1."""
    from nanocodec.checkpoint import CheckpointError

    one_line_warnings("sample.py")
    try:
        main(argv)
    except (ConfigError, SampleError, CheckpointError, CodecError, jpeg.ImageError) as e:
        sys.exit(f"sample.py: error: {e}")


if __name__ == "__main__":
    cli(sys.argv[1:])
