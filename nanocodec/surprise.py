"""Surprise maps: where a JPEG-LM spends its bits, drawn over the image, one cell per MCU.

Owns turning the bits of each token of an abbreviated JPEG stream into bits per MCU (`mcu_bits`: a
token counts in the restart interval that holds its first byte, and an interval of R MCUs shares
its bits evenly; header tokens and EOS are left out), and the picture: the decoded image beside a
heat map of those bits with its scale (`surprise_image`), one per file (`surprise_png`, for
`python -m nanocodec.compress --surprise`) or a column of val images (`write_val_maps`, for
`python -m nanocodec.eval --surprise=N`).
Does not own: the bits themselves (nanocodec.compress codes them; `token_bits` here is a plain
forward pass), the regions of a stream and its pictures (nanocodec.codecs.JPEG).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from nanocodec import jpeg
from nanocodec.codecs import ENTROPY, JPEG, RESTART

# A perceptually ordered dark-to-bright ramp (after matplotlib's "inferno"): cheap MCUs dark.
RAMP = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float64)
DISPLAY = 256  # pixels of the longer side each panel is drawn at (nearest-neighbour upscaling)


def mcu_bits(stream: bytes, tokens: list[int] | np.ndarray, bits: np.ndarray, tokenizer) -> np.ndarray:
    """Bits spent on each MCU of `stream`, as an (MCU rows, MCU columns) float array.

    `tokens` are the stream's tokens (EOS may follow them; BOS is not among them) and `bits` their
    -log2 p under the model. MCUs past the last coded interval are NaN.
    """
    info = jpeg.frame_info(stream)
    if not info.restart_interval:
        raise ValueError("stream has no restart markers: bits cannot be placed on MCUs")
    hmax, vmax = max(h for h, _ in info.sampling), max(v for _, v in info.sampling)
    rows, cols = math.ceil(info.height / (8 * vmax)), math.ceil(info.width / (8 * hmax))
    lengths = np.array([len(tokenizer.token_bytes(int(t))) for t in tokens], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    regions = JPEG().regions(stream)
    inside = (lengths > 0) & (starts < len(stream))
    inside[inside] = np.isin(regions[starts[inside]], (ENTROPY, RESTART))
    offsets = np.array(jpeg.restart_offsets(stream))
    interval = np.searchsorted(offsets, starts[inside], side="right") - 1
    per_interval = np.bincount(interval, weights=np.asarray(bits, dtype=np.float64)[inside], minlength=len(offsets))
    per_mcu = np.repeat(per_interval / info.restart_interval, info.restart_interval)[: rows * cols]
    return np.concatenate((per_mcu, np.full(rows * cols - len(per_mcu), np.nan))).reshape(rows, cols)


def colorize(values: np.ndarray, top: float) -> np.ndarray:
    """uint8 RGB of values in [0, top] on RAMP; NaN is mid gray."""
    x = np.clip(np.nan_to_num(values, nan=0.0) / max(top, 1e-9), 0, 1) * (len(RAMP) - 1)
    rgb = np.stack([np.interp(x, np.arange(len(RAMP)), RAMP[:, c]) for c in range(3)], -1)
    rgb[np.isnan(values)] = 128
    return rgb.round().astype(np.uint8)


def surprise_image(stream: bytes, per_mcu: np.ndarray, codec: dict, top: float | None = None) -> Image.Image:
    """The decoded image beside its heat map of bits per MCU and a scale from 0 to `top` bits."""
    image = JPEG.from_settings(codec).to_images(stream)[0]  # repaired when invalid
    scale = max(1, DISPLAY // max(image.size))
    size = (image.size[0] * scale, image.size[1] * scale)
    top = float(np.nanmax(per_mcu)) if top is None else top
    heat = Image.fromarray(colorize(per_mcu, top)).resize(size, Image.Resampling.NEAREST)
    bar = Image.fromarray(colorize(np.linspace(top, 0, size[1])[:, None].repeat(12, 1), top))
    canvas = Image.new("RGB", (2 * size[0] + 60, size[1] + 16), "white")
    canvas.paste(image.resize(size, Image.Resampling.NEAREST), (0, 0))
    canvas.paste(heat, (size[0] + 4, 0))
    canvas.paste(bar, (2 * size[0] + 8, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((2 * size[0] + 22, 0), f"{top:.0f}", fill="black")
    draw.text((2 * size[0] + 22, size[1] - 10), "0", fill="black")
    draw.text((0, size[1] + 3), f"bits per MCU, mean {np.nanmean(per_mcu):.1f}, total {np.nansum(per_mcu):.0f}", fill="black")
    return canvas


def surprise_png(path: str | Path, result, tokenizer, codec: dict) -> None:
    """Write the surprise map of one coded file (a nanocodec.compress.Result) to `path`."""
    surprise_image(result.stream, mcu_bits(result.stream, result.tokens, result.bits, tokenizer), codec).save(path)


@torch.inference_mode()
def token_bits(model, tokens: list[int], bos: int) -> np.ndarray:
    """-log2 p of each of `tokens` after `bos` and the tokens before it, from one forward pass."""
    device = next(model.parameters()).device
    x = torch.tensor([[bos, *tokens[:-1]]], device=device)
    logits, _ = model(x)
    return (-F.log_softmax(logits[0].double(), -1).gather(1, torch.tensor(tokens, device=device)[:, None])[:, 0]
            / math.log(2)).cpu().numpy()


def write_val_maps(bundle, streams: list[bytes], codec: dict, out: Path) -> dict:
    """OUT/surprise.png: each stream beside its bits per MCU on one shared scale; a summary for the report."""
    tokenizer = bundle.tokenizer
    maps = []
    for stream in streams:
        tokens = tokenizer.encode(stream) + [tokenizer.eos_id]
        maps.append(mcu_bits(stream, tokens, token_bits(bundle.model, tokens, tokenizer.bos_id), tokenizer))
    top = max(float(np.nanmax(m)) for m in maps)
    panels = [surprise_image(s, m, codec, top) for s, m in zip(streams, maps)]
    column = Image.new("RGB", (panels[0].width, sum(p.height for p in panels)), "white")
    for i, panel in enumerate(panels):
        column.paste(panel, (0, i * panels[0].height))
    out.mkdir(parents=True, exist_ok=True)
    column.save(out / "surprise.png")
    return {"png": str(out / "surprise.png"), "images": len(streams),
            "mean_bits_per_mcu": float(np.mean([np.nanmean(m) for m in maps])), "max_bits_per_mcu": top}
