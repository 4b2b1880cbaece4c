"""Train a Llama on codec tokens, from one laptop core to many GPU nodes.

    python train.py                                   # the demo: tiny model, demo JPEGs, CPU, minutes
    python train.py --data=data/imagenet --preset=small --max_minutes=0 --max_steps=20000
    torchrun --nproc_per_node=8 train.py --data=... --preset=1b --fsdp
    python train.py --out_dir=out/demo --resume --max_steps=4000     # train on to step 4000

Every setting is a field of TrainConfig below; `--key=value` or `--key value` overrides it (booleans
also as bare flags) and unknown keys are rejected. One process trains on CUDA if present, else CPU;
under torchrun the processes use DDP (NCCL on GPU, gloo on CPU), or FSDP2 with --fsdp. Checkpoints
(nanocodec.checkpoint) resume exactly; a run never starts over an earlier run's files without
--overwrite; SIGTERM/SIGINT save and exit; a NaN/inf loss or weight stops the run without
overwriting the last good checkpoint. The run logs to OUT_DIR/log.jsonl and ends with the val bits
per byte (by region for JPEG), OUT_DIR/loss.png and, for JPEG data, OUT_DIR/samples.png: val images
completed from their first half with constrained decoding, beside the unconditional decode rate.
Owns the training loop and its evaluation (val loss and bits per byte of the codec stream); the
model, data loading, checkpoint files and sampling live in nanocodec/.
"""
from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math
import os
import shutil
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from nanocodec import checkpoint
from nanocodec.bpe import BpeError
from nanocodec.config import ConfigError, given_options, one_line_warnings, parse, resolve_device, set_threads, usable_cores
from nanocodec.data import DataError, TokenStream, document_lengths, documents, manifest, val_batches
from nanocodec.model import Llama, ModelConfig


@dataclass
class TrainConfig:
    # model: a preset of nanocodec.model, and overrides of its fields (None keeps the preset's value)
    preset: str = "tiny"  # tiny (1.3M parameters), small (128M), 1b, 7b
    dim: int | None = None  # model width
    n_layers: int | None = None  # transformer blocks
    n_heads: int | None = None  # query heads
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention)
    ffn_dim: int | None = None  # SwiGLU hidden width
    rope_theta: float | None = None  # RoPE base
    # data
    data: str = "demo"  # a folder made by `python -m nanocodec.prepare`, or demo (data/demo, prepared on first use)
    context: int = 0  # tokens per sequence; 0: 1024 for JPEG, the longest prepared video for AVC (the paper: 12K, 32K)
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    tokens_per_step: int = 0  # if set, grad_accum follows from it: tokens_per_step / (batch_size * context * processes)
    # optimizer and schedule: AdamW, linear warmup, cosine decay to lr * min_lr_ratio
    lr: float | None = None  # peak learning rate; None: the preset's, from LEARNING_RATES below
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 50  # linear warmup from lr / warmup_steps
    lr_decay_steps: int = 0  # where the cosine ends; 0: at max_steps, or at max_minutes if only that is set
    weight_decay: float = 0.1  # AdamW's, on matrices only
    beta1: float = 0.9  # AdamW's
    beta2: float = 0.95  # AdamW's
    grad_clip: float = 1.0  # 0 disables
    # run length: the run stops at whichever limit comes first; 0 disables a limit; on a resume, one given replaces both saved
    max_steps: int = 0  # the step the run ends at (on a resume too)
    max_minutes: float = 6.5  # minutes of training (on a resume: more minutes from now); the demo's budget, under 10 min in all on 2 cores
    # evaluation, checkpoints, output
    eval_every: int = 100  # val loss and bits per byte every N steps
    eval_batches: int = 0  # val batches per periodic evaluation; 0: the whole val split (the final one always is)
    ckpt_every: int = 200  # checkpoint every N steps (and at the end)
    out_dir: str = "out/demo"  # checkpoint, log.jsonl, loss.png, samples.png
    resume: bool = False  # continue from the checkpoint in out_dir with its settings, updated by these overrides
    init_from: str = ""  # fine-tune: a new run from the weights and model settings of this checkpoint (e.g. a nanocodec.hf import); fresh optimizer, step 0
    overwrite: bool = False  # start over in an out_dir that holds a run: first remove its checkpoint, log and pictures
    samples: int = 4  # JPEG: val images completed 3 times from their first half into out_dir/samples.png; 0: none
    decode_samples: int = 16  # unconditional samples whose decode rate the last line reports; 0: none
    # system
    seed: int = 0  # initialisation, data order and samples
    device: str = "auto"  # auto: cuda if available, else cpu
    threads: int = 0  # CPU threads per process; 0: the cores this process may use, split among torchrun's local processes
    compile: bool = False  # torch.compile the training step
    fsdp: bool = False  # shard parameters, gradients and optimizer state with FSDP2 (under torchrun)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~30% more compute


# The paper's peak learning rate, 3e-4, for the sizes it trains. The tiny demo takes a few hundred
# steps, where more is better: at 150 steps 3e-4 / 1e-3 / 2e-3 reach 6.66 / 6.54 / 6.50 val bits
# per byte, and 2e-3 spikes once; 1e-3 is the safe side of that.
LEARNING_RATES = {"tiny": 1e-3, "small": 3e-4, "1b": 3e-4, "7b": 3e-4}
FINE_TUNE_LR = 3e-5  # --init_from's default: a tenth of the paper's peak rate, for weights already trained
MODEL_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "rope_theta")
JPEG_CONTEXT = 1024  # the default context for image data: a 64 px demo JPEG is ~420 tokens
CONTEXT_STEP, MAX_AUTO_CONTEXT = 256, 32768  # AVC: the longest video rounded up, at most the paper's 32K
COMPLETIONS, PROMPT_RATIO = 3, 0.5  # samples.png: completions per val image, and the share of it given
PICTURE_SIZE = 192  # samples.png: tiles are scaled up by a whole factor (nearest) to about this size
SAMPLING = dict(temperature=1.0, top_k=40, top_p=0.9)  # the paper's sampling settings
RUN_OUTPUTS = ("log.jsonl", "loss.png", "samples.png", "samples", "eval")  # what a run (and nanocodec.eval) adds
# Dense bf16 peak FLOP/s per GPU for MFU; other devices show no MFU rather than a wrong one.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or inf."""


# ----------------------------------------------------------------------------- configuration


def load_config(argv: list[str]) -> TrainConfig:
    """Defaults + overrides; with --resume, the checkpoint's settings + overrides, where a run limit
    given replaces both saved ones (see TrainConfig's run length)."""
    cfg = parse(TrainConfig, argv)
    if cfg.resume:
        if cfg.overwrite:
            raise ConfigError("--resume continues the run in --out_dir and --overwrite removes it: give one of them")
        saved = checkpoint.load_config(cfg.out_dir)["train"]
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        base = TrainConfig(**{k: v for k, v in saved.items() if k in known})
        if given_options(argv) & {"max_steps", "max_minutes"}:
            base.max_steps, base.max_minutes = 0, 0.0
        cfg = parse(TrainConfig, argv, base=base)
        cfg.resume, cfg.overwrite = True, False
    else:
        refuse_earlier_run(Path(cfg.out_dir), cfg.overwrite)
    if cfg.init_from and not cfg.resume:
        given = given_options(argv) & {"preset", *MODEL_FIELDS}
        if given:
            raise ConfigError(f"--init_from={cfg.init_from} brings its own model settings; drop --{', --'.join(sorted(given))}")
        checkpoint.load_config(cfg.init_from)  # a missing or broken checkpoint fails before any data work
    for key in ("max_steps", "max_minutes", "warmup_steps", "lr_decay_steps", "tokens_per_step", "samples", "decode_samples"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"--{key} must be >= 0 (0: {'no limit' if key.startswith('max') else 'off or automatic'}), got {getattr(cfg, key)}")
    if cfg.max_steps == 0 and cfg.max_minutes == 0:
        raise ConfigError("set --max_steps or --max_minutes (both are 0: the run would never end)")
    for key in ("batch_size", "grad_accum", "eval_every", "ckpt_every"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"--{key} must be positive, got {getattr(cfg, key)}")
    if cfg.context < 0:
        raise ConfigError(f"--context must be positive (or 0: fit the data), got {cfg.context}")
    # Fail on bad model settings before any data work (the context is settled once the data is known).
    model_config(dataclasses.replace(cfg, context=cfg.context or JPEG_CONTEXT), ModelConfig.vocab_size)
    if cfg.lr is None:
        cfg.lr = FINE_TUNE_LR if cfg.init_from else LEARNING_RATES[cfg.preset]
    if not 0 < cfg.lr <= 1 or not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f"--lr must be in (0, 1] and --min_lr_ratio in [0, 1], got {cfg.lr} and {cfg.min_lr_ratio}")
    return cfg


def earlier_run(out: Path) -> list[str]:
    """The names in `out` that a run or its evaluation wrote (nothing else of the folder counts)."""
    return [name for name in (*checkpoint.NAMES, *RUN_OUTPUTS) if (out / name).exists()]


def refuse_earlier_run(out: Path, overwrite: bool) -> None:
    """A ConfigError when `out` holds an earlier run and `overwrite` is not given (nothing is touched)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out_dir={out}: not a folder")
    found = earlier_run(out)
    if found and not overwrite:
        what = "a checkpoint" if checkpoint.CONFIG in found or checkpoint.PREVIOUS in found else "an earlier run"
        raise ConfigError(f"--out_dir={out} holds {what} ({', '.join(found)}): --resume to continue, --overwrite to start over")


def remove_earlier_run(out: Path) -> None:
    """Delete what an earlier run wrote into `out` (before the new run writes anything)."""
    found = earlier_run(out)
    for name in found:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if found:
        print(f"--overwrite: removed {', '.join(found)} from {out}", flush=True)


def model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    overrides = {k: getattr(cfg, k) for k in MODEL_FIELDS if getattr(cfg, k) is not None}
    try:
        return ModelConfig.preset(cfg.preset, vocab_size=vocab_size, max_seq_len=cfg.context, **overrides)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def start_model_config(cfg: TrainConfig, tokenizer, data_dir: Path) -> ModelConfig:
    """The model settings a run starts with: the preset and overrides, or, for --init_from (and the
    resume of such a run), the checkpoint's own, whose tokenizer must be the data's."""
    if not cfg.init_from:
        return model_config(cfg, tokenizer.vocab_size)
    source = Path(cfg.out_dir if cfg.resume else cfg.init_from)
    if not cfg.resume:
        theirs = checkpoint.load_tokenizer(source / checkpoint.TOKENIZER)
        if theirs.sha256 != tokenizer.sha256:
            raise ConfigError(f"--init_from={source}: its tokenizer is not the one --data={data_dir} was prepared with; "
                              f"prepare the data with --tokenizer={source / checkpoint.TOKENIZER}")
    mc = ModelConfig(**checkpoint.load_config(source)["model"])
    return dataclasses.replace(mc, max_seq_len=max(mc.max_seq_len, cfg.context))  # RoPE tables only


def limit_reached(cfg: TrainConfig, step: int, minutes: float) -> str:
    """The run limit that `step` and `minutes` reach, in words ("" while the run goes on)."""
    if cfg.max_steps and step >= cfg.max_steps:
        return f"max_steps={cfg.max_steps} (at step {step})"
    if cfg.max_minutes and minutes >= cfg.max_minutes:
        return f"max_minutes={cfg.max_minutes:g} ({minutes:.2f} minutes trained, step {step})"
    return ""


def default_context(data_dir: Path) -> tuple[int, str]:
    """The context for --context=0 and why: JPEG_CONTEXT for images; for video, the longest prepared
    video (both splits, with <bos> and <eos>) rounded up to CONTEXT_STEP, at most MAX_AUTO_CONTEXT."""
    if manifest(data_dir).get("kind") != "avc":
        return JPEG_CONTEXT, "the default for image data"
    longest = max(int(document_lengths(data_dir, split).max(initial=0)) for split in ("train", "val"))
    context = min(MAX_AUTO_CONTEXT, -(-longest // CONTEXT_STEP) * CONTEXT_STEP)
    if context < longest:
        return context, f"the longest video, {longest} tokens, is cut at {MAX_AUTO_CONTEXT}; give --context to change"
    return context, f"fits the longest video, {longest} tokens; give --context to change"


def lr_at(cfg: TrainConfig, step: int, minutes: float) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to lr * min_lr_ratio over the run's
    progress, which is measured in steps or, for a run limited only by time, in minutes."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    if decay_steps:
        progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    else:
        progress = minutes / cfg.max_minutes
    progress = min(max(progress, 0.0), 1.0)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


# ----------------------------------------------------------------------------- processes and data


@dataclass
class Runtime:
    rank: int
    world: int
    device: torch.device
    distributed: bool
    threads: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: TrainConfig) -> Runtime:
    device = resolve_device(cfg.device)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # set by torchrun: they share this machine's cores
    threads = set_threads(cfg.threads or max(1, usable_cores() // local_processes))
    if "WORLD_SIZE" not in os.environ:
        if cfg.fsdp:
            raise ConfigError("--fsdp needs several processes: launch with torchrun --nproc_per_node=N")
        return Runtime(0, 1, device, False, threads)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Runtime(rank, world, device, True, threads)


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def data_folder(cfg: TrainConfig, rt: Runtime) -> Path:
    """The prepared data folder; "demo" is prepared into data/demo on first use (by rank 0)."""
    if cfg.data != "demo":
        path = Path(cfg.data)
        if not (path / "manifest.json").is_file():
            raise ConfigError(f"--data={cfg.data}: no manifest.json there; make the folder with python -m nanocodec.prepare")
        return path
    path = Path("data/demo")
    if rt.main and not (path / "manifest.json").is_file():
        from nanocodec.prepare import PrepareError, prepare

        print(f"preparing the demo data in {path} (once)", flush=True)
        try:
            prepare(kind="jpeg", source="demo", out=str(path))
        except PrepareError as e:
            raise DataError(f"preparing the demo data: {e}") from None
    barrier(rt)
    return path


def all_sum(values: list[float], rt: Runtime) -> list[float]:
    """Element-wise sum over processes, in float64 (and the identity for one process)."""
    if not rt.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- model and optimizer


def build_model(mc: ModelConfig, cfg: TrainConfig, rt: Runtime) -> Llama:
    if not cfg.fsdp:
        with rt.device:
            model = Llama(mc)
    else:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        with torch.device("meta"):  # a 7B model is never materialised whole on one device
            model = Llama(mc)
        bf16 = torch.bfloat16 if rt.device.type == "cuda" else None  # bf16 compute, fp32 reduction; CPU stays fp32
        policy = MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=torch.float32 if bf16 else None)
        for block in model.layers:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        model.to_empty(device=rt.device)
        # Each rank draws its own shard; with one seed the shards of a matrix would repeat each other.
        torch.manual_seed(cfg.seed + rt.rank)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="DTensor random operators")
            model.init_weights()
        torch.manual_seed(cfg.seed)
    model.activation_checkpointing = cfg.activation_checkpointing
    return model


def make_optimizer(model: Llama, cfg: TrainConfig, rt: Runtime) -> torch.optim.AdamW:
    # Weight decay on matrices only: decaying norm gains toward 0 only fights the normalisation.
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=rt.device.type == "cuda")


def state_dicts(model: Llama, optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state on CPU; under FSDP only rank 0 gets them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_model_weights(model: Llama, weights: dict, cfg: TrainConfig) -> None:
    """Full weights into the model alone (fine-tuning); under FSDP rank 0 holds them and broadcasts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=cfg.fsdp))


def load_state_dicts(model: Llama, optimizer, weights: dict, optim_state: dict, cfg: TrainConfig) -> None:
    """Load full state into the model and optimizer; under FSDP rank 0 holds it and broadcasts the
    shards (so a 7B checkpoint is read once, not once per GPU)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=cfg.fsdp)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)


# ----------------------------------------------------------------------------- evaluation


def bits_per_byte(total_nats: float, codec_bytes: int) -> float:
    """Cross-entropy of the codec stream in bits per byte of it (8.0 = uniform over byte values)."""
    return total_nats / math.log(2) / codec_bytes


@torch.no_grad()
def evaluate(model: Llama, data_dir: Path, cfg: TrainConfig, rt: Runtime, max_batches: int = 0) -> dict:
    """Val loss (nats per target token) and bits per byte over the val split, or its first
    `max_batches` batches; the processes share the batches."""
    was_training = model.training
    model.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=rt.device.type == "cuda")
    batches = itertools.islice(val_batches(data_dir, cfg.context, cfg.batch_size), max_batches or None)
    nats, targets = torch.zeros((), dtype=torch.float64), 0
    while group := list(itertools.islice(batches, rt.world)):
        # One batch per process; every process runs a forward (FSDP needs them in step), and one
        # left without a batch of its own in the last group recomputes the first and counts nothing.
        mine = rt.rank < len(group)
        x, y = (t.to(rt.device) for t in group[rt.rank if mine else 0])
        with autocast:
            logits, _ = model(x)
        if mine:
            nats += F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum").double().cpu()
            targets += int((y != -100).sum())
    total_nats, total_targets = all_sum([float(nats), float(targets)], rt)
    model.train(was_training)
    split = manifest(data_dir)["splits"]["val"]
    all_targets = split["tokens"] - split["documents"]  # every token but each document's <bos>
    if total_targets == 0:
        return {"val_loss": float("nan"), "val_bpb": float("nan"), "val_targets": 0}
    # A partial pass scales to the whole split at the split's own tokens-per-byte.
    covered_bytes = split["codec_bytes"] * total_targets / all_targets
    return {
        "val_loss": total_nats / total_targets,
        "val_bpb": bits_per_byte(total_nats, covered_bytes),
        "val_targets": int(total_targets),
    }


# ----------------------------------------------------------------------------- logs and pictures


def read_log(path: Path, upto_step: int | None = None) -> list[dict]:
    """The records of log.jsonl (up to `upto_step`); a line that is not a record (a kill tears the
    last one mid-write) is dropped with a warning."""
    if not path.exists():
        return []
    records, torn = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            torn.append(str(number))
    if torn:
        warnings.warn(f"{path}: dropped line {', '.join(torn)}, not a log record (a kill mid-write tears the last line)")
    return [r for r in records if upto_step is None or r["step"] <= upto_step]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    raw = (hi - lo) / n
    magnitude = 10 ** math.floor(math.log10(raw))
    spacing = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / spacing) * spacing
    return [first + i * spacing for i in range(int((hi - first) / spacing + 1e-9) + 1)]


def plot_losses(records: list[dict], path: Path) -> None:
    """Train loss (line) and val loss (dots) against step, drawn with Pillow."""
    from PIL import Image, ImageDraw

    train = [(r["step"], r["loss"]) for r in records if "loss" in r and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r and math.isfinite(r["val_loss"])]
    if not train:
        return
    W, H, left, right, top, bottom = 800, 500, 70, 20, 30, 50
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    points = train + val
    x0, x1 = min(s for s, _ in points), max(s for s, _ in points)
    y0, y1 = min(v for _, v in points), max(v for _, v in points)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1e-3)

    def xy(step: float, value: float) -> tuple[float, float]:
        return (left + (step - x0) / (x1 - x0) * (W - left - right), top + (y1 - value) / (y1 - y0) * (H - top - bottom))

    draw.rectangle([left, top, W - right, H - bottom], outline="black")
    for value in nice_ticks(y0, y1):
        y = xy(x0, value)[1]
        draw.line([left - 5, y, left, y], fill="black")
        draw.text((5, y - 6), f"{value:.4g}", fill="black")
    for step in nice_ticks(x0, x1):
        x = xy(step, y0)[0]
        draw.line([x, H - bottom, x, H - bottom + 5], fill="black")
        draw.text((x - 10, H - bottom + 8), f"{step:g}", fill="black")
    draw.text((W // 2 - 15, H - 18), "step", fill="black")
    draw.line([xy(*p) for p in train] if len(train) > 1 else [xy(*train[0])] * 2, fill=(31, 119, 180), width=2)
    for p in val:
        x, y = xy(*p)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(214, 39, 40))
    draw.text((left + 10, top - 20), "train loss (line) and val loss (dots), nats per token", fill="black")
    img.save(path)


def region_line(bundle: checkpoint.Bundle, data_dir: Path, cfg: TrainConfig) -> str:
    """Val bits per byte by region of the JPEG stream (nanocodec.eval), as one line."""
    from nanocodec.eval import bits_per_byte as bits_by_region

    result = bits_by_region(bundle.model, bundle.tokenizer, data_dir, "jpeg", context=cfg.context,
                            batch_size=cfg.batch_size, progress=False)
    names = {"headers": "headers", "entropy": "entropy-coded data", "restart": "restart markers"}
    parts = [f"{names[name]} {r['bits_per_byte']:.2f} ({r['bytes'] / result['bytes']:.0%} of the bytes)"
             for name, r in result["regions"].items() if r["bits_per_byte"] is not None]
    return f"val bits per byte by region: {', '.join(parts)}"


def completions_picture(bundle: checkpoint.Bundle, data_dir: Path, cfg: TrainConfig, path: Path) -> str:
    """Rows of prompt (first PROMPT_RATIO of a val image, the rest gray) | COMPLETIONS constrained
    completions | original for cfg.samples val images, scaled up to ~PICTURE_SIZE px, into `path`."""
    from PIL import Image

    from nanocodec import jpeg
    from nanocodec.eval import decode_image
    from nanocodec.sampling import complete
    from nanocodec.pictures import tile

    codec = bundle.config["codec"]
    quality, subsampling = codec.get("quality", 25), codec.get("subsampling", "4:2:0")
    context = bundle.model.config.max_seq_len
    fitting = (doc for doc in documents(data_dir, "val") if len(doc) + 2 <= context)  # with <bos> and <eos>
    streams = [bundle.tokenizer.decode(doc) for doc in itertools.islice(fitting, cfg.samples)]
    if not streams:
        return f"no {path.name}: no val image fits the model's context of {context} tokens"
    prompts = [jpeg.prompt(s, PROMPT_RATIO) for s in streams]
    result = complete(bundle.model, bundle.tokenizer, [p for p in prompts for _ in range(COMPLETIONS)], kind="jpeg",
                      constrain=True, generator=torch.Generator().manual_seed(cfg.seed), batch_size=cfg.batch_size,
                      progress=True, **SAMPLING)
    rows = [[jpeg.decode(prompt, quality, subsampling, repair=True),
             *(decode_image(s.data, codec) for s in result.samples[i * COMPLETIONS:(i + 1) * COMPLETIONS]),
             jpeg.decode(stream, quality, subsampling)] for i, (prompt, stream) in enumerate(zip(prompts, streams))]
    scale = max(1, PICTURE_SIZE // codec["size"])
    scaled = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for row in rows for im in row]
    tile(scaled, cols=len(rows[0]), cell=scaled[0].size).save(path)
    valid, cut = sum(s.ok for s in result.samples), sum(not s.finished for s in result.samples)
    cut_note = f", {cut} cut off by the context of {context} tokens (repaired)" if cut else ""
    return (f"{path}: {len(streams)} val images | {COMPLETIONS} completions of their first {PROMPT_RATIO:.0%} "
            f"(constrained: {valid}/{len(result.samples)} valid{cut_note}) | original; {result.tokens_per_second:.0f} tok/s")


def decode_rate_line(bundle: checkpoint.Bundle, cfg: TrainConfig) -> str:
    """How many of cfg.decode_samples unconditional samples the codec's validator accepts unrepaired."""
    from nanocodec.eval import decode_rate

    kind = bundle.config["kind"]
    rate = decode_rate(bundle, kind, [b""] * cfg.decode_samples, constrain=False, sampling=SAMPLING,
                       generator=torch.Generator().manual_seed(cfg.seed), batch_size=cfg.batch_size)
    return (f"unconditional samples: {rate['valid']}/{rate['samples']} decode without error "
            f"({rate['tokens_per_second']:.0f} tok/s)")


def final_report(out: Path, data_dir: Path, cfg: TrainConfig, rt: Runtime, has_val: bool) -> None:
    """After the last evaluation, on the main process: loss.png, and what the saved checkpoint
    (loaded back as sample.py would) makes of the val split and of sampling."""
    plot_losses(read_log(out / "log.jsonl"), out / "loss.png")
    if not (cfg.samples or cfg.decode_samples or has_val):
        return
    threads = torch.get_num_threads()
    if rt.device.type == "cpu":
        # A decode step of a few rows is too small to share: with another process on the second
        # core, 2 threads sampled the demo model at 37 tokens/s and 1 thread at 1310.
        torch.set_num_threads(1)
    try:
        report_checkpoint(out, data_dir, cfg, rt, has_val)
    finally:
        torch.set_num_threads(threads)


def report_checkpoint(out: Path, data_dir: Path, cfg: TrainConfig, rt: Runtime, has_val: bool) -> None:
    """Region bits per byte, samples.png and the decode rate of the checkpoint in `out`, printed."""
    bundle = checkpoint.load_for_inference(out, rt.device)
    jpeg_data = bundle.config.get("kind") == "jpeg"
    if jpeg_data and has_val:
        print(region_line(bundle, data_dir, cfg), flush=True)
    lines = []
    if cfg.samples and has_val and jpeg_data:
        lines.append(completions_picture(bundle, data_dir, cfg, out / "samples.png"))
    elif cfg.samples and not jpeg_data:
        lines.append(f"no samples.png for video: python sample.py --ckpt={out} --prompt=VIDEO --frames=N")
    if cfg.decode_samples:
        lines.append(decode_rate_line(bundle, cfg))
    if lines:
        print("samples: " + "; ".join(lines), flush=True)


def has_val_split(data_dir: Path, warn: bool) -> bool:
    """Whether the data folder has val documents (with `warn`, say so when it has none)."""
    if manifest(data_dir)["splits"].get("val", {}).get("documents", 0):
        return True
    if warn:
            warnings.warn(f"--data={data_dir}: the val split is empty, so there is no val loss, bits per byte or samples.png; "
                      f"prepare the folder with --val-fraction above 0")
    return False


def resume_note(cfg: TrainConfig, out: Path, step: int, minutes: float) -> str:
    """What a resumed run will do, in one line ("" when it trains)."""
    reached = limit_reached(cfg, step, minutes)
    if not reached:
        return ""
    return (f"nothing to train: the run in {out} has reached {reached}; to train on, resume with "
            f"--max_steps=N (train until step N) or --max_minutes=M (M more minutes)")


def finished_at(log_path: Path, step: int) -> bool:
    """Whether the log already ends with the final evaluation of `step`."""
    records = read_log(log_path)
    return bool(records) and records[-1].get("final", False) and records[-1]["step"] == step


def weights_sound(model: Llama, rt: Runtime) -> bool:
    """Whether every parameter is finite and within checkpoint.WEIGHT_LIMIT, on every process (each
    checks its own shards)."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    return all_sum([float(not checkpoint.weights_sound(local))], rt)[0] == 0


# ----------------------------------------------------------------------------- training


def main(argv: list[str]) -> Llama:
    """Run training as configured by `argv`; returns the trained model (sharded under FSDP)."""
    cfg = load_config(argv)
    rt = setup_runtime(cfg)
    try:
        model = train(cfg, rt, minutes_from_now=cfg.resume and "max_minutes" in given_options(argv))
        # Ranks leave together: a gloo rank that tears down while its peer is still busy (rank 0
        # plotting) can abort at exit ("terminate called without an active exception").
        barrier(rt)
        return model
    finally:
        if rt.distributed:
            dist.destroy_process_group()


def train(cfg: TrainConfig, rt: Runtime, minutes_from_now: bool = False) -> Llama:
    """Train as `cfg` says; `minutes_from_now`: a resume's max_minutes counts from where it resumes."""
    out = Path(cfg.out_dir)
    data_dir = data_folder(cfg, rt)
    context_note = "given"
    if not cfg.context:
        cfg.context, context_note = default_context(data_dir)
    if cfg.tokens_per_step:
        cfg.grad_accum = max(1, round(cfg.tokens_per_step / (cfg.batch_size * cfg.context * rt.world)))
    if not (data_dir / "tokenizer.json").is_file():
        raise DataError(f"--data={data_dir}: no tokenizer.json; prepare the folder again")
    tokenizer = checkpoint.load_tokenizer(data_dir / "tokenizer.json")
    vocab_size = tokenizer.vocab_size
    has_val = has_val_split(data_dir, warn=rt.main)
    mc = start_model_config(cfg, tokenizer, data_dir)
    torch.manual_seed(cfg.seed)
    model = build_model(mc, cfg, rt)
    optimizer = make_optimizer(model, cfg, rt)
    if cfg.init_from and not cfg.resume:
        _, weights, _ = checkpoint.load_training(cfg.init_from, weights=rt.main or not cfg.fsdp)
        load_model_weights(model, weights, cfg)
    stream = TokenStream(data_dir, "train", cfg.context, cfg.batch_size, rank=rt.rank, world_size=rt.world, seed=cfg.seed)

    step, minutes_before = 0, 0.0
    if cfg.resume:
        saved, weights, state = checkpoint.load_training(out, weights=rt.main or not cfg.fsdp)
        differ = [f"{k}={v} (checkpoint: {saved['model'].get(k)})"
                  for k, v in dataclasses.asdict(mc).items() if saved["model"].get(k) != v]
        if differ:
            raise ConfigError(f"--resume: the model settings differ from the checkpoint in {out}: {', '.join(differ)}")
        optim_state = state["optimizer"] if rt.main or not cfg.fsdp else {}
        load_state_dicts(model, optimizer, weights, optim_state, cfg)
        step, minutes_before = state["step"], state["minutes"]
        stream.load_state_dict(state["data"])  # the same on every rank, whatever the world size
        if len(state["rng"]) == rt.world:
            torch.set_rng_state(state["rng"][rt.rank])
        if minutes_from_now and cfg.max_minutes:
            cfg.max_minutes += minutes_before
    elif cfg.overwrite and rt.main:
        remove_earlier_run(out)
    barrier(rt)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"
    nothing_to_do = resume_note(cfg, out, step, minutes_before) if cfg.resume else ""
    if nothing_to_do:
        if rt.main:
            print(nothing_to_do, flush=True)
        if finished_at(log_path, step):  # else the final evaluation and pictures are still to come
            return model
    if rt.main:  # lines past the checkpoint belong to a run that died: drop them
        log_path.write_text("".join(json.dumps(r) + "\n" for r in (read_log(log_path, step) if cfg.resume else [])))

    ddp = None
    if rt.distributed and not cfg.fsdp:
        from torch.nn.parallel import DistributedDataParallel

        # The only buffers are the RoPE tables, identical everywhere: no need to resend them every step.
        options = inspect.signature(DistributedDataParallel).parameters
        no_resend = "forward_sync_buffers" if "forward_sync_buffers" in options else "broadcast_buffers"  # torch < 2.13
        device_ids = [rt.device.index] if rt.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=device_ids, **{no_resend: False})
    step_fn = ddp if ddp is not None else model
    if cfg.compile:
        step_fn = torch.compile(step_fn)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=rt.device.type == "cuda")
    tokens_per_step = cfg.batch_size * cfg.context * cfg.grad_accum * rt.world
    flops_per_step = model.flops_per_token(cfg.context) * tokens_per_step
    gpu = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else ""
    peak = next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)
    if rt.main:
        print(f"model {cfg.init_from or cfg.preset}: {model.num_params() / 1e6:.2f}M parameters, vocab {vocab_size}; context {cfg.context} "
              f"({context_note}); {tokens_per_step} tokens per step on {rt.world} x {rt.device}"
              f"{f', {rt.threads} threads' if rt.device.type == 'cpu' else ''}", flush=True)

    stop_signal: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, frame: stop_signal.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    saved_step = step if cfg.resume else -1

    def save() -> None:
        nonlocal saved_step
        weights, optim_state = state_dicts(model, optimizer)
        rng = [torch.get_rng_state()]
        if rt.distributed:
            rng = [None] * rt.world
            dist.all_gather_object(rng, torch.get_rng_state())
        if rt.main:
            state = {"optimizer": optim_state, "minutes": minutes, "data": stream.state_dict(), "rng": rng}
            checkpoint.save(out, weights, state, step=step, model_config=dataclasses.asdict(mc),
                            train_config=dataclasses.asdict(cfg), data_dir=data_dir)
        barrier(rt)
        saved_step = step

    def log(record: dict) -> None:
        if rt.main:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    started = time.perf_counter()
    minutes = minutes_before
    bar = tqdm(total=cfg.max_steps or None, initial=step, desc="train", unit="step", disable=not rt.main, dynamic_ncols=True)
    model.train()
    tok_s, stopped = 0.0, False
    try:
        while not limit_reached(cfg, step, minutes):
            t0 = time.perf_counter()
            lr = lr_at(cfg, step, minutes)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=rt.device)
            for micro in range(cfg.grad_accum):
                last = micro == cfg.grad_accum - 1
                x, y = next(stream)
                if rt.device.type == "cuda":
                    x, y = (t.pin_memory().to(rt.device, non_blocking=True) for t in (x, y))
                if cfg.fsdp:
                    model.set_requires_gradient_sync(last)
                with (ddp.no_sync() if ddp is not None and not last else nullcontext()), autocast:
                    _, loss = step_fn(x, y)
                (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            elapsed = minutes_before + (time.perf_counter() - started) / 60
            loss_total, stops, elapsed_total = all_sum([float(loss_sum) / cfg.grad_accum, len(stop_signal), elapsed], rt)
            train_loss, minutes = loss_total / rt.world, elapsed_total / rt.world
            if not (math.isfinite(train_loss) and math.isfinite(float(grad_norm))):
                where = f"the last good checkpoint, step {saved_step}, is in {out}" if saved_step >= 0 else "no checkpoint was saved"
                raise TrainingDiverged(f"step {step + 1}: loss {train_loss}, gradient norm {float(grad_norm)}; "
                                       f"stopping without saving; {where}")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if not weights_sound(model, rt):
                where = f"the last good checkpoint, step {saved_step}, is in {out}" if saved_step >= 0 else "no checkpoint was saved"
                raise TrainingDiverged(f"step {step}: the optimizer step made weights NaN, inf or larger than {checkpoint.WEIGHT_LIMIT:g}; "
                                       f"stopping without saving; {where}")
            dt = time.perf_counter() - t0
            tok_s = tokens_per_step / dt if tok_s == 0 else 0.9 * tok_s + 0.1 * tokens_per_step / dt
            record = {"step": step, "loss": train_loss, "lr": lr, "grad_norm": float(grad_norm),
                      "tokens": step * tokens_per_step, "tok_s": tokens_per_step / dt, "minutes": minutes}
            postfix = {"loss": f"{train_loss:.4f}", "tok/s": f"{tok_s:.0f}"}
            if peak:
                record["mfu"] = flops_per_step / dt / (peak * rt.world)
                postfix["mfu"] = f"{record['mfu']:.1%}"
            if step % cfg.eval_every == 0 and has_val:
                record.update(evaluate(model, data_dir, cfg, rt, cfg.eval_batches))
                postfix["val_bpb"] = f"{record['val_bpb']:.3f}"
            log(record)
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if stops:
                stopped = True
                break
            if step % cfg.ckpt_every == 0:
                save()
        bar.close()
        if step != saved_step:
            save()
    finally:
        bar.close()
        for s, handler in handlers.items():  # from here on Ctrl-C interrupts as usual
            signal.signal(s, handler)
    if stopped:
        if rt.main:
            print(f"stopped by signal at step {step}; checkpoint saved in {out}", flush=True)
        return model
    final = evaluate(model, data_dir, cfg, rt) if has_val else {}
    log({"step": step, "final": True, **final})
    if rt.main:
        result = (f"val loss {final['val_loss']:.4f} nats/token, val bits per byte {final['val_bpb']:.4f} "
                  f"(uniform over bytes: 8.0)" if has_val else "no val split to evaluate")
        print(f"step {step}: {result}; checkpoint in {out}", flush=True)
        final_report(out, data_dir, cfg, rt, has_val)
    return model


if __name__ == "__main__":
    one_line_warnings("train.py")
    try:
        main(sys.argv[1:])
    except (ConfigError, DataError, BpeError, checkpoint.CheckpointError, TrainingDiverged, OSError) as e:
        sys.exit(f"train.py: {e}")
