"""Evaluate a checkpoint the way the paper does: `python -m nanocodec.eval CHECKPOINT --data data/NAME ...`

Owns three measurements and their report:
- bits per byte of the val split (nanocodec.data.bits_per_byte: total cross-entropy over every
  predicted token, EOS included, / ln 2 / codec bytes), and for a codec that labels regions
  (`Codec.regions`; JPEG) split by region: headers (markers and segments outside the scan, EOI, and
  the EOS token), entropy-coded data, restart markers. A token counts in the region of its first
  byte (with the JPEG split pattern, RST markers are always tokens of their own); each region's
  bytes are the bytes of its tokens, so the regions add up.
- decode rate: of N samples (unconditional, or prompted from val images), how many the codec's
  validator accepts as they are; also with constrained decoding (JPEG and H.264).
- prompted-completion FID (paper, section 5): the first N val images cut at each prompt ratio,
  completed once per seed; FID of the completions against the same N images, mean and std over
  seeds. References are the val streams themselves, i.e. the images after the same JPEG q25 round
  trip the model sees, and the report says so. Features come from nanocodec.inception with the
  standard FID weights from a local file; without them the report says why there is no FID.
Writes EVAL_DIR/report.json and EVAL_DIR/report.md (a Markdown table).
Does not own: sampling (nanocodec.sampling), the codec steps (prompts, validators, pictures, byte
regions: nanocodec.codecs), the network or Frechet math (nanocodec.inception).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from nanocodec import data
from nanocodec.codecs import ENTROPY, HEADERS, JPEG, REGIONS, RESTART, Codec, CodecError, codec_for
from nanocodec.config import ConfigError, one_line_warnings, parse, resolve_device, set_threads
from nanocodec.sampling import PAPER_SAMPLING, complete, prompt_problem

NO_TARGET = 255  # label of the BOS tokens, which are never predicted


@dataclass
class EvalConfig:
    """Bits per byte by region, decode rate and prompted-completion FID of a checkpoint.

    python -m nanocodec.eval CHECKPOINT [--key=value ...]   (CHECKPOINT: or --ckpt=...)
    """

    ckpt: str = "out/demo"  # checkpoint directory written by train.py (or the first positional argument)
    data: str = ""  # prepared data folder; empty: the folder the checkpoint was trained on
    out: str = ""  # report folder; empty: CHECKPOINT/eval
    metrics: str = "bpb,decode,fid"  # any of bpb, decode, fid
    device: str = "auto"  # auto: cuda if available, else cpu
    threads: int = 0  # CPU threads for torch; 0: the cores this process may use (fewer when cores are busy)
    batch_size: int = 8  # sequences per forward (bits per byte) and rows sampled together
    context: int = 0  # bits per byte window; 0: the training context (else the model's max_seq_len)
    max_batches: int = 0  # bits per byte on the first batches only; 0: the whole val split
    decode_samples: int = 32  # samples drawn to measure the decode rate
    decode_ratio: float = 0.0  # 0: unconditional samples; > 0: prompts cut from val images
    decode_constrained: bool = True  # also the decode rate with --constrain (JPEG, H.264)
    fid_images: int = 1000  # paper: 5000 ImageNet / 1000 FFHQ images
    ratios: str = "0.25,0.5,0.75"  # prompt ratios (paper: ImageNet 0.25/0.5/0.75, FFHQ 0.375/0.4375/0.5)
    seeds: int = 3  # FID runs per ratio, seeds seed, seed+1, ...; the report gives mean and std
    inception_weights: str = ""  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth
    constrain: bool = False  # FID completions with constrained decoding (the paper samples unconstrained)
    temperature: float = PAPER_SAMPLING["temperature"]  # softmax temperature of sampling; 0: greedy
    top_k: int = PAPER_SAMPLING["top_k"]  # sample among the k most likely tokens (paper: 40); 0 disables
    top_p: float = PAPER_SAMPLING["top_p"]  # nucleus: the most likely tokens holding this mass (paper: 0.9); 1 disables
    max_new_tokens: int = 0  # most tokens sampled per stream; 0: up to the model's context
    seed: int = 0  # seed of the sampling generators
    surprise: int = 0  # JPEG: EVAL_DIR/surprise.png, the first N val images beside the bits per MCU the model spends (nanocodec.surprise); a bare --surprise: 4


class EvalError(ValueError):
    """An evaluation request that cannot be served: names the option or input and the problem."""


# --- bits per byte by region ------------------------------------------------------------------------


def byte_regions(stream: bytes) -> np.ndarray:
    """The region of every byte of a JPEG stream (uint8: HEADERS, ENTROPY or RESTART; `JPEG.regions`)."""
    return JPEG().regions(stream)


def token_lengths(tokenizer) -> np.ndarray:
    """Bytes per token id (0 for the special tokens)."""
    return np.array([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64)


def token_regions(tokens: np.ndarray, tokenizer, lengths: np.ndarray, codec: Codec = JPEG()) -> np.ndarray:
    """The region of each token of a document (no BOS/EOS): the region of its first byte."""
    stream = tokenizer.decode(tokens)
    if not stream:
        return np.full(len(tokens), HEADERS, np.uint8)
    starts = np.concatenate(([0], np.cumsum(lengths[np.asarray(tokens, dtype=np.int64)])[:-1]))
    return codec.regions(stream)[np.minimum(starts, len(stream) - 1)]


def stream_labels(path: str | Path, tokenizer, kind: str | Codec, split: str = "val") -> np.ndarray:
    """A region label for every token of the split's concatenated stream (BOS doc EOS, in shard order)."""
    lengths = token_lengths(tokenizer)
    codec = codec_for(kind)
    parts = []
    for doc in data.documents(path, split):
        regions = token_regions(doc, tokenizer, lengths, codec) if codec.by_region else np.full(len(doc), HEADERS, np.uint8)
        parts += [np.array([NO_TARGET], np.uint8), regions.astype(np.uint8), np.array([HEADERS], np.uint8)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


@torch.inference_mode()
def bits_per_byte(model, tokenizer, path: str | Path, kind: str | Codec, *, context: int, batch_size: int,
                  max_batches: int = 0, progress: bool = True) -> dict:
    """Val bits per byte (nanocodec.data's definition, as train.py's), split by region where the codec
    labels regions."""
    labels = stream_labels(path, tokenizer, kind)
    manifest = data.manifest(path)
    if len(labels) != manifest["splits"]["val"]["tokens"]:
        raise EvalError(f"{path}: val documents hold {len(labels)} tokens, the manifest says {manifest['splits']['val']['tokens']}")
    nbytes = token_lengths(tokenizer)
    device = next(model.parameters()).device
    nats, bytes_, tokens = np.zeros(len(REGIONS)), np.zeros(len(REGIONS), np.int64), np.zeros(len(REGIONS), np.int64)
    window = 0
    batches = data.val_batches(path, context, batch_size)
    total_batches = math.ceil(max(len(labels) - 1, 0) / context / batch_size)
    if max_batches:
        total_batches = min(total_batches, max_batches)
    for b, (x, y) in enumerate(tqdm(batches, total=total_batches, desc="bits per byte", disable=not progress)):
        if max_batches and b >= max_batches:
            break
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, _ = model(x.to(device))
        ce = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), ignore_index=data.IGNORE,
                             reduction="none").view(y.shape).double().cpu().numpy()
        y = y.numpy()
        rows, cols = np.nonzero(y != data.IGNORE)
        index = (window + rows) * context + cols + 1  # the stream position of each target
        region = labels[index]
        if (region == NO_TARGET).any():
            raise EvalError(f"{path}: val batches and documents disagree (a BOS is a target)")
        nats += np.bincount(region, weights=ce[rows, cols], minlength=len(REGIONS))
        bytes_ += np.bincount(region, weights=nbytes[y[rows, cols]], minlength=len(REGIONS)).astype(np.int64)
        tokens += np.bincount(region, minlength=len(REGIONS))
        window += y.shape[0]
    complete = not max_batches or window * context >= len(labels) - 1
    if complete and bytes_.sum() != data.codec_bytes(path, "val"):
        raise EvalError(f"{path}: val tokens decode to {bytes_.sum()} bytes, the manifest counts {data.codec_bytes(path, 'val')}")
    bits = nats / math.log(2)
    result = {
        "bits_per_byte": data.bits_per_byte(nats, max(bytes_.sum(), 1)),
        "tokens": int(tokens.sum()), "bytes": int(bytes_.sum()), "context": context,
        "whole_split": bool(complete),
    }
    if codec_for(kind).by_region:
        result["regions"] = {
            name: {"bits_per_byte": data.bits_per_byte(nats[i], bytes_[i]) if bytes_[i] else None, "bytes": int(bytes_[i]),
                   "tokens": int(tokens[i]), "share_of_bits": float(bits[i] / bits.sum()) if bits.sum() else None}
            for i, name in enumerate(REGIONS)
        }
    return result


# --- sampling-based metrics -------------------------------------------------------------------------


def val_streams(path: str | Path, tokenizer, count: int) -> list[bytes]:
    """The codec bytes of the first `count` val documents."""
    streams = []
    for doc in data.documents(path, "val"):
        if len(streams) == count:
            break
        streams.append(tokenizer.decode(doc))
    return streams


def check_prompts(bundle, prefixes: list[bytes], option: str) -> None:
    """An EvalError when a prompt leaves no room in the model's context (the option names the cut)."""
    _, problem = max((prompt_problem(bundle, p) for p in prefixes), key=lambda fit: fit[0], default=(0, None))
    if problem:
        raise EvalError(f"{option}: the longest val prompt is {problem}; use a smaller ratio")


def decode_rate(bundle, kind: str | Codec, prefixes: list[bytes], *, constrain: bool, sampling: dict, generator,
                header: bytes = b"", batch_size: int) -> dict:
    """How many of the samples continuing `prefixes` the codec's validator accepts unrepaired."""
    out = complete(bundle.model, bundle.tokenizer, prefixes, kind=kind, header=header, constrain=constrain,
                   generator=generator, batch_size=batch_size, progress=True, **sampling)
    valid = sum(s.ok for s in out.samples)
    return {"samples": len(out.samples), "valid": valid, "rate": valid / max(len(out.samples), 1),
            "ended_with_eos": sum(s.finished for s in out.samples), "tokens_per_second": out.tokens_per_second}


def decode_image(stream: bytes, codec: dict | Codec) -> Image.Image:
    """A sample as one picture (`Codec.to_images`): repaired when invalid, `Codec.blank()` when nothing decodes."""
    codec = codec if isinstance(codec, Codec) else JPEG.from_settings(codec)
    return (codec.to_images(stream) or [codec.blank()])[0]


def prompted_fid(bundle, streams: list[bytes], codec: Codec, *, ratios: list[float], seeds: list[int],
                 inception, sampling: dict, constrain: bool, batch_size: int) -> dict:
    """FID of completions of `streams` cut at each ratio, per seed, against the streams themselves."""
    from nanocodec.inception import frechet_to_features, gaussian_stats, pool_features

    references = [decode_image(s, codec) for s in streams]
    ref_mu, ref_sigma = gaussian_stats(pool_features(inception, references))
    results = {}
    for ratio in ratios:
        prefixes = [codec.prompt(s, ratio) for s in streams]
        check_prompts(bundle, prefixes, f"--ratios={ratio:g}")
        runs = []
        for seed in seeds:
            out = complete(bundle.model, bundle.tokenizer, prefixes, kind=codec, constrain=constrain,
                           generator=torch.Generator().manual_seed(seed), batch_size=batch_size, progress=True, **sampling)
            images = [decode_image(s.data, codec) for s in out.samples]
            fid = frechet_to_features(ref_mu, ref_sigma, pool_features(inception, images))
            runs.append({"seed": seed, "fid": fid,
                         "valid": sum(s.ok for s in out.samples), "samples": len(out.samples)})
        values = np.array([r["fid"] for r in runs])
        results[f"{ratio:g}"] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                 "runs": runs}
    return {
        "images": len(streams), "ratios": results,
        "std": "sample standard deviation over seeds (ddof=1)",
        "references": f"the first {len(streams)} val images after the same JPEG q{codec.quality} {codec.subsampling} round trip "
                      "the model sees (decoded from their val streams), not the original pixels",
        "features": "Inception-v3 pool (2048-d), FID weights of pytorch-fid, bilinear resize to 299",
        "note": "with fewer images than 2048 feature dimensions the covariances are rank-deficient and FID is "
                "biased upward; compare only runs with the same number of images" if len(streams) < 2048 else None,
        "invalid_samples": "decoded after nanocodec.huffman.repair (missing MCUs flat gray)",
    }


# --- the report --------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    lines = [f"# Evaluation of `{report['checkpoint']}` (step {report['step']})", "",
             f"Data: `{report['data']}` ({report['kind']}, {report['codec']})", "", "| metric | value |", "|---|---|"]
    bpb = report.get("bits_per_byte")
    if bpb:
        scope = "whole val split" if bpb["whole_split"] else "first batches of the val split"
        lines.append(f"| bits per byte ({scope}, {bpb['bytes']} bytes) | {bpb['bits_per_byte']:.4f} |")
        for name, r in (bpb.get("regions") or {}).items():
            value = f"{r['bits_per_byte']:.4f} ({100 * r['share_of_bits']:.1f}% of bits)" if r["bits_per_byte"] is not None else "no bytes"
            lines.append(f"| &nbsp;&nbsp;{name} ({r['bytes']} bytes) | {value} |")
    for key, label in (("decode_rate", "decode rate"), ("decode_rate_constrained", "decode rate, constrained")):
        d = report.get(key)
        if d:
            lines.append(f"| {label} ({report['decode_prompt']}) | {d['valid']}/{d['samples']} ({100 * d['rate']:.1f}%) |")
    fid = report.get("fid")
    if fid and "skipped" in fid:
        lines.append(f"| prompted FID | not computed: {fid['skipped']} |")
    elif fid:
        for ratio, r in fid["ratios"].items():
            lines.append(f"| FID, prompt ratio {ratio} ({fid['images']} images, {len(r['runs'])} seeds) | {r['mean']:.2f} ± {r['std']:.2f} |")
        lines += ["", f"FID references: {fid['references']}.", f"Features: {fid['features']}."]
        if fid.get("note"):
            lines.append(f"Note: {fid['note']}.")
    s = report["sampling"]
    limit = f", at most {s['max_new_tokens']} new tokens" if s["max_new_tokens"] else ""
    lines += ["", f"Sampling: temperature {s['temperature']}, top-k {s['top_k']}, top-p {s['top_p']}{limit}."]
    return "\n".join(lines) + "\n"


SURPRISE_IMAGES = 4  # what a bare --surprise draws


def split_argv(argv: list[str]) -> list[str]:
    """`CHECKPOINT --opt ...` -> `--ckpt CHECKPOINT --opt ...` (`-h` stays a request for help), and a
    bare `--surprise` -> `--surprise=SURPRISE_IMAGES`."""
    if argv and not argv[0].startswith("-"):
        argv = ["--ckpt", argv[0], *argv[1:]]
    return [f"--surprise={SURPRISE_IMAGES}" if a == "--surprise" and (i + 1 == len(argv) or argv[i + 1].startswith("-")) else a
            for i, a in enumerate(argv)]


def run(cfg: EvalConfig) -> dict:
    from nanocodec.checkpoint import load_for_inference

    metrics = {m.strip() for m in cfg.metrics.split(",") if m.strip()}
    if metrics - {"bpb", "decode", "fid"}:
        raise EvalError(f"--metrics: unknown {sorted(metrics - {'bpb', 'decode', 'fid'})}; choose from bpb, decode, fid")
    try:
        ratios = [float(r) for r in cfg.ratios.split(",") if r.strip()]
    except ValueError:
        raise EvalError(f"--ratios: expected comma-separated numbers, got {cfg.ratios!r}") from None
    if any(not 0 <= r < 1 for r in ratios + [cfg.decode_ratio]):
        raise EvalError(f"prompt ratios must be in [0, 1), got --ratios={cfg.ratios} --decode_ratio={cfg.decode_ratio}")
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    inception = None
    if "fid" in metrics and cfg.inception_weights:
        from nanocodec.inception import load_inception

        inception = load_inception(cfg.inception_weights, device)
    bundle = load_for_inference(cfg.ckpt, device=device)
    kind = bundle.config.get("kind") or bundle.manifest.get("kind")
    # Val images are read only by bits per byte, prompted decode rates, FID and surprise maps; an
    # unconditional decode rate needs no data folder (an imported release has none).
    needs_data = bool("bpb" in metrics or ("decode" in metrics and cfg.decode_ratio > 0)
                      or ("fid" in metrics and inception is not None) or cfg.surprise)
    path = Path(cfg.data or bundle.config["data"]["path"]) if needs_data or cfg.data else None
    manifest = data.manifest(path) if path is not None else bundle.manifest
    if path is not None and manifest.get("tokenizer_sha256") != bundle.tokenizer.sha256:
        raise EvalError(f"--data {path}: tokenized with another tokenizer than checkpoint {cfg.ckpt} (tokenizer_sha256 differs)")
    settings = manifest.get("codec", {})
    codec = codec_for({"kind": kind, "codec": settings}, where=f"checkpoint {cfg.ckpt}")
    sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens or None)
    report = {"checkpoint": str(cfg.ckpt), "step": bundle.config.get("step"), "data": str(path) if path else None, "kind": kind,
              "codec": settings, "sampling": sampling, "config": asdict(cfg)}
    began = time.time()
    if "bpb" in metrics:
        context = cfg.context or bundle.config.get("train", {}).get("context") or bundle.model.config.max_seq_len
        report["bits_per_byte"] = bits_per_byte(bundle.model, bundle.tokenizer, path, codec, context=min(context, bundle.model.config.max_seq_len),
                                                batch_size=cfg.batch_size, max_batches=cfg.max_batches)
    if "decode" in metrics:
        if cfg.decode_ratio > 0:
            if codec.video:
                raise EvalError(f"--decode_ratio prompts are JPEG prompts; use 0 (unconditional) for {codec.kind}")
            streams = val_streams(path, bundle.tokenizer, cfg.decode_samples)
            prefixes = [codec.prompt(s, cfg.decode_ratio) for s in streams]
            check_prompts(bundle, prefixes, f"--decode_ratio={cfg.decode_ratio:g}")
            report["decode_prompt"] = f"{len(prefixes)} val images prompted at ratio {cfg.decode_ratio:g}"
        else:
            prefixes = [b""] * cfg.decode_samples
            report["decode_prompt"] = f"{len(prefixes)} unconditional samples"
        report["decode_rate"] = decode_rate(bundle, codec, prefixes, constrain=False, sampling=sampling, batch_size=cfg.batch_size,
                                            generator=torch.Generator().manual_seed(cfg.seed))
        if cfg.decode_constrained and not codec.constraint_problem():
            report["decode_rate_constrained"] = decode_rate(bundle, codec, prefixes, constrain=True, sampling=sampling, header=codec.header(),
                                                            batch_size=cfg.batch_size, generator=torch.Generator().manual_seed(cfg.seed))
    if "fid" in metrics:
        if not isinstance(codec, JPEG):
            report["fid"] = {"skipped": "prompted-completion FID is defined for image (jpeg) checkpoints"}
        elif inception is None:
            report["fid"] = {"skipped": "no --inception_weights: FID needs the standard FID Inception-v3 weights "
                                        "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth) in a local file; nothing is downloaded"}
        else:
            streams = val_streams(path, bundle.tokenizer, cfg.fid_images)
            if len(streams) < 2:
                raise EvalError(f"--data {path}: FID needs at least 2 val images, the split has {len(streams)}")
            report["fid"] = prompted_fid(bundle, streams, codec, ratios=ratios, seeds=[cfg.seed + i for i in range(cfg.seeds)],
                                         inception=inception, sampling=sampling, constrain=cfg.constrain, batch_size=cfg.batch_size)
    if cfg.surprise:
        from nanocodec.surprise import write_val_maps

        if not isinstance(codec, JPEG):
            raise EvalError(f"--surprise maps bits onto JPEG MCUs; this is an {codec.kind} checkpoint")
        report["surprise"] = write_val_maps(bundle, val_streams(path, bundle.tokenizer, cfg.surprise), settings,
                                            Path(cfg.out or Path(cfg.ckpt) / "eval"))
    report["seconds"] = round(time.time() - began, 1)
    return report


def main(argv: list[str]) -> dict:
    cfg = parse(EvalConfig, split_argv(argv))
    report = run(cfg)
    out = Path(cfg.out or Path(cfg.ckpt) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (out / "report.md").write_text(table)
    print(table)
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return report


def cli(argv: list[str]) -> None:
    """main() with every user mistake turned into one line on stderr and exit status 1."""
    from nanocodec.checkpoint import CheckpointError
    from nanocodec.inception import InceptionWeightsError

    one_line_warnings("python -m nanocodec.eval")
    try:
        main(argv)
    except (ConfigError, EvalError, CheckpointError, CodecError, InceptionWeightsError, data.DataError) as e:
        sys.exit(f"python -m nanocodec.eval: error: {e}")


if __name__ == "__main__":
    cli(sys.argv[1:])
