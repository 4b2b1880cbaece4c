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
from nanocodec.codecs import JPEG, Codec, CodecError, codec_for
from nanocodec.config import ConfigError, given_options, one_line_warnings, parse, resolve_device, set_threads, usable_cores
from nanocodec.data import DataError, TokenStream, bits_per_byte, document_lengths, documents, manifest, val_batches
from nanocodec.model import Llama, ModelConfig
from nanocodec.sampling import PAPER_SAMPLING, complete


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
CONTEXT_STEP, MAX_AUTO_CONTEXT = 256, 32768  # AVC: the longest video rounded up, at most the paper's 32K
COMPLETIONS, PROMPT_RATIO = 3, 0.5  # samples.png: completions per val image, and the share of it given
PICTURE_SIZE = 192  # samples.png: tiles are scaled up by a whole factor (nearest) to about this size
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
    model_config(dataclasses.replace(cfg, context=cfg.context or JPEG.default_context), ModelConfig.vocab_size)
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
    """The context for --context=0 and why: the codec's default (JPEG: 1024); for a codec without one
    (video), the longest prepared document (both splits, with <bos> and <eos>) rounded up to
    CONTEXT_STEP, at most MAX_AUTO_CONTEXT."""
    codec = codec_for(manifest(data_dir), where=f"--data={data_dir}: manifest.json")
    if codec.default_context is not None:
        return codec.default_context, f"the default for {codec.name} data"
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
            prepare(kind=JPEG.kind, source="demo", out=str(path))
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


def region_line(bundle: checkpoint.Bundle, codec: Codec, data_dir: Path, cfg: TrainConfig) -> str:
    """Val bits per byte by region of the codec stream (nanocodec.eval), as one line."""
    from nanocodec.eval import bits_per_byte as bits_by_region

    result = bits_by_region(bundle.model, bundle.tokenizer, data_dir, codec, context=cfg.context,
                            batch_size=cfg.batch_size, progress=False)
    names = {"headers": "headers", "entropy": "entropy-coded data", "restart": "restart markers"}
    parts = [f"{names[name]} {r['bits_per_byte']:.2f} ({r['bytes'] / result['bytes']:.0%} of the bytes)"
             for name, r in result["regions"].items() if r["bits_per_byte"] is not None]
    return f"val bits per byte by region: {', '.join(parts)}"


def completions_picture(bundle: checkpoint.Bundle, codec: Codec, data_dir: Path, cfg: TrainConfig, path: Path) -> str:
    """Rows of prompt (first PROMPT_RATIO of a val image, the rest gray) | COMPLETIONS constrained
    completions | original for cfg.samples val images, scaled up to ~PICTURE_SIZE px, into `path`."""
    from PIL import Image

    from nanocodec.eval import decode_image
    from nanocodec.pictures import tile

    context = bundle.model.config.max_seq_len
    fitting = (doc for doc in documents(data_dir, "val") if len(doc) + 2 <= context)  # with <bos> and <eos>
    streams = [bundle.tokenizer.decode(doc) for doc in itertools.islice(fitting, cfg.samples)]
    if not streams:
        return f"no {path.name}: no val image fits the model's context of {context} tokens"
    prompts = [codec.prompt(s, PROMPT_RATIO) for s in streams]
    result = complete(bundle.model, bundle.tokenizer, [p for p in prompts for _ in range(COMPLETIONS)], kind=codec,
                      constrain=True, generator=torch.Generator().manual_seed(cfg.seed), batch_size=cfg.batch_size,
                      progress=True, **PAPER_SAMPLING)
    completions = [s.data for s in result.samples]
    rows = [[decode_image(data, codec) for data in (prompt, *completions[i * COMPLETIONS:(i + 1) * COMPLETIONS], stream)]
            for i, (prompt, stream) in enumerate(zip(prompts, streams))]
    scale = max(1, PICTURE_SIZE // max(codec.frame_size))
    scaled = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for row in rows for im in row]
    tile(scaled, cols=len(rows[0]), cell=scaled[0].size).save(path)
    valid, cut = sum(s.ok for s in result.samples), sum(not s.finished for s in result.samples)
    cut_note = f", {cut} cut off by the context of {context} tokens (repaired)" if cut else ""
    return (f"{path}: {len(streams)} val images | {COMPLETIONS} completions of their first {PROMPT_RATIO:.0%} "
            f"(constrained: {valid}/{len(result.samples)} valid{cut_note}) | original; {result.tokens_per_second:.0f} tok/s")


def decode_rate_line(bundle: checkpoint.Bundle, codec: Codec, cfg: TrainConfig) -> str:
    """How many of cfg.decode_samples unconditional samples the codec's validator accepts unrepaired."""
    from nanocodec.eval import decode_rate

    rate = decode_rate(bundle, codec, [b""] * cfg.decode_samples, constrain=False, sampling=PAPER_SAMPLING,
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
    codec = codec_for(bundle.config, where=str(out / checkpoint.CONFIG))
    if codec.by_region and has_val:
        print(region_line(bundle, codec, data_dir, cfg), flush=True)
    lines = []
    if cfg.samples and has_val and not codec.video:
        lines.append(completions_picture(bundle, codec, data_dir, cfg, out / "samples.png"))
    elif cfg.samples and codec.video:
        lines.append(f"no samples.png for video: python sample.py --ckpt={out} --prompt=VIDEO --frames=N")
    if cfg.decode_samples:
        lines.append(decode_rate_line(bundle, codec, cfg))
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


@dataclass
class Run:
    """A training run between its steps: what it trains on, the model and optimizer, and how far it
    is (`step`, `minutes` trained, `saved_step`: the step of its last checkpoint, -1 for none)."""

    cfg: TrainConfig
    rt: Runtime
    data_dir: Path
    context_note: str  # why the context is what it is
    vocab_size: int  # the data's tokenizer's
    has_val: bool
    mc: ModelConfig
    model: Llama
    optimizer: torch.optim.Optimizer
    stream: TokenStream
    step: int = 0
    minutes: float = 0.0
    saved_step: int = -1

    @property
    def out(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"


def train(cfg: TrainConfig, rt: Runtime, minutes_from_now: bool = False) -> Llama:
    """Train as `cfg` says: set up, resume (or start over), wrap for the processes, the steps, the final
    evaluation and report. `minutes_from_now`: a resume's max_minutes counts from where it resumes."""
    run = set_up(cfg, rt)
    if cfg.resume:
        resume(run, minutes_from_now)
    elif cfg.overwrite and rt.main:
        remove_earlier_run(run.out)
    barrier(rt)
    run.out.mkdir(parents=True, exist_ok=True)
    if cfg.resume and finished(run):
        return run.model
    if rt.main:  # lines past the checkpoint belong to a run that died: drop them
        kept = read_log(run.log_path, run.step) if cfg.resume else []
        run.log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    step_fn, ddp = wrap_for_processes(run.model, cfg, rt)
    speed = throughput(run)
    if rt.main:
        print(f"model {cfg.init_from or cfg.preset}: {run.model.num_params() / 1e6:.2f}M parameters, vocab {run.vocab_size}; "
              f"context {cfg.context} ({run.context_note}); {speed.tokens} tokens per step on {rt.world} x {rt.device}"
              f"{f', {rt.threads} threads' if rt.device.type == 'cpu' else ''}", flush=True)
    if train_steps(run, step_fn, ddp, speed):
        if rt.main:
            print(f"stopped by signal at step {run.step}; checkpoint saved in {run.out}", flush=True)
        return run.model
    final = evaluate(run.model, run.data_dir, cfg, rt) if run.has_val else {}
    append_log(run, {"step": run.step, "final": True, **final})
    if rt.main:
        result = (f"val loss {final['val_loss']:.4f} nats/token, val bits per byte {final['val_bpb']:.4f} "
                  f"(uniform over bytes: 8.0)" if run.has_val else "no val split to evaluate")
        print(f"step {run.step}: {result}; checkpoint in {run.out}", flush=True)
        final_report(run.out, run.data_dir, cfg, rt, run.has_val)
    return run.model


def set_up(cfg: TrainConfig, rt: Runtime) -> Run:
    """A run at step 0: the data folder, the context and grad_accum settled in `cfg`, the model
    (seeded; with --init_from, its weights), the optimizer and the train stream."""
    data_dir = data_folder(cfg, rt)
    context_note = "given"
    if not cfg.context:
        cfg.context, context_note = default_context(data_dir)
    if cfg.tokens_per_step:
        cfg.grad_accum = max(1, round(cfg.tokens_per_step / (cfg.batch_size * cfg.context * rt.world)))
    if not (data_dir / "tokenizer.json").is_file():
        raise DataError(f"--data={data_dir}: no tokenizer.json; prepare the folder again")
    tokenizer = checkpoint.load_tokenizer(data_dir / "tokenizer.json")
    has_val = has_val_split(data_dir, warn=rt.main)
    mc = start_model_config(cfg, tokenizer, data_dir)
    torch.manual_seed(cfg.seed)
    model = build_model(mc, cfg, rt)
    optimizer = make_optimizer(model, cfg, rt)
    if cfg.init_from and not cfg.resume:
        _, weights, _ = checkpoint.load_training(cfg.init_from, weights=rt.main or not cfg.fsdp)
        load_model_weights(model, weights, cfg)
    stream = TokenStream(data_dir, "train", cfg.context, cfg.batch_size, rank=rt.rank, world_size=rt.world, seed=cfg.seed)
    return Run(cfg, rt, data_dir, context_note, tokenizer.vocab_size, has_val, mc, model, optimizer, stream)


def resume(run: Run, minutes_from_now: bool) -> None:
    """Load the checkpoint in out_dir into `run`: weights, optimizer, step, minutes, data position and
    (at the same world size) each process's RNG. Its model settings must be the run's."""
    cfg, rt = run.cfg, run.rt
    saved, weights, state = checkpoint.load_training(run.out, weights=rt.main or not cfg.fsdp)
    differ = [f"{k}={v} (checkpoint: {saved['model'].get(k)})"
              for k, v in dataclasses.asdict(run.mc).items() if saved["model"].get(k) != v]
    if differ:
        raise ConfigError(f"--resume: the model settings differ from the checkpoint in {run.out}: {', '.join(differ)}")
    optim_state = state["optimizer"] if rt.main or not cfg.fsdp else {}
    load_state_dicts(run.model, run.optimizer, weights, optim_state, cfg)
    run.step, run.minutes = state["step"], state["minutes"]
    run.saved_step = run.step
    run.stream.load_state_dict(state["data"])  # the same on every rank, whatever the world size
    if len(state["rng"]) == rt.world:
        torch.set_rng_state(state["rng"][rt.rank])
    if minutes_from_now and cfg.max_minutes:
        cfg.max_minutes += run.minutes


def finished(run: Run) -> bool:
    """On a resume, whether the run is over: it has reached its limit (said in one line) and its log
    holds the final evaluation (else the final evaluation and pictures are still to come)."""
    note = resume_note(run.cfg, run.out, run.step, run.minutes)
    if note and run.rt.main:
        print(note, flush=True)
    return bool(note) and finished_at(run.log_path, run.step)


def wrap_for_processes(model: Llama, cfg: TrainConfig, rt: Runtime) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(what the step calls, the DDP wrapper or None): DDP under torchrun without --fsdp (FSDP2
    shards the model itself, in build_model), torch.compile with --compile."""
    ddp = None
    if rt.distributed and not cfg.fsdp:
        from torch.nn.parallel import DistributedDataParallel

        # The only buffers are the RoPE tables, identical everywhere: no need to resend them every step.
        options = inspect.signature(DistributedDataParallel).parameters
        no_resend = "forward_sync_buffers" if "forward_sync_buffers" in options else "broadcast_buffers"  # torch < 2.13
        device_ids = [rt.device.index] if rt.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=device_ids, **{no_resend: False})
    step_fn = ddp if ddp is not None else model
    return (torch.compile(step_fn) if cfg.compile else step_fn), ddp


@dataclass
class Throughput:
    """Tokens and FLOPs of one optimizer step (all processes), and one GPU's peak FLOP/s (None: no MFU)."""

    tokens: int
    flops: float
    peak: float | None


def throughput(run: Run) -> Throughput:
    """The run's Throughput; the peak is known for the GPUs in PEAK_FLOPS only."""
    cfg, rt = run.cfg, run.rt
    tokens = cfg.batch_size * cfg.context * cfg.grad_accum * rt.world
    gpu = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else ""
    return Throughput(tokens, run.model.flops_per_token(cfg.context) * tokens, peak_flops(gpu))


def peak_flops(gpu_name: str) -> float | None:
    """The dense bf16 peak of the GPU of this name, if PEAK_FLOPS knows it (bench/gpu.py asks too)."""
    return next((v for k, v in PEAK_FLOPS.items() if k in gpu_name), None)


def train_steps(run: Run, step_fn: torch.nn.Module, ddp: torch.nn.Module | None, speed: Throughput) -> bool:
    """Optimizer steps until a run limit, each logged, with a checkpoint every ckpt_every steps and at
    the end. SIGTERM/SIGINT end the run after the step under way (and its checkpoint): returns True."""
    cfg, rt = run.cfg, run.rt
    stop_signal: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, frame: stop_signal.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    started, minutes_before = time.perf_counter(), run.minutes
    bar = tqdm(total=cfg.max_steps or None, initial=run.step, desc="train", unit="step", disable=not rt.main, dynamic_ncols=True)
    run.model.train()
    tok_s, stopped = 0.0, False
    try:
        while not limit_reached(cfg, run.step, run.minutes):
            t0 = time.perf_counter()
            lr = lr_at(cfg, run.step, run.minutes)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            loss_sum, grad_norm = accumulate_gradients(run, step_fn, ddp)
            elapsed = minutes_before + (time.perf_counter() - started) / 60
            loss_total, stops, elapsed_total = all_sum([float(loss_sum) / cfg.grad_accum, len(stop_signal), elapsed], rt)
            train_loss, run.minutes = loss_total / rt.world, elapsed_total / rt.world
            optimizer_step(run, train_loss, float(grad_norm))
            dt = time.perf_counter() - t0
            tok_s = speed.tokens / dt if tok_s == 0 else 0.9 * tok_s + 0.1 * speed.tokens / dt
            record, postfix = step_record(run, speed, dt, tok_s, lr=lr, loss=train_loss, grad_norm=float(grad_norm))
            append_log(run, record)
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if stops:
                stopped = True
                break
            if run.step % cfg.ckpt_every == 0:
                save(run)
        bar.close()
        if run.step != run.saved_step:
            save(run)
    finally:
        bar.close()
        for s, handler in handlers.items():  # from here on Ctrl-C interrupts as usual
            signal.signal(s, handler)
    return stopped


def accumulate_gradients(run: Run, step_fn: torch.nn.Module, ddp: torch.nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward over grad_accum micro-batches, the gradients synchronised on the last one
    only; returns this process's summed loss and the clipped gradients' (global) norm."""
    cfg, rt = run.cfg, run.rt
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=rt.device.type == "cuda")
    loss_sum = torch.zeros((), device=rt.device)
    for micro in range(cfg.grad_accum):
        last = micro == cfg.grad_accum - 1
        x, y = next(run.stream)
        if rt.device.type == "cuda":
            x, y = (t.pin_memory().to(rt.device, non_blocking=True) for t in (x, y))
        if cfg.fsdp:
            run.model.set_requires_gradient_sync(last)
        with (ddp.no_sync() if ddp is not None and not last else nullcontext()), autocast:
            _, loss = step_fn(x, y)
        (loss / cfg.grad_accum).backward()
        loss_sum += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    return loss_sum, grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm


def optimizer_step(run: Run, loss: float, grad_norm: float) -> None:
    """The optimizer step, which a NaN/inf loss or gradient norm refuses and after which a weight
    NaN, inf or beyond checkpoint.WEIGHT_LIMIT stops the run: TrainingDiverged, nothing saved."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise diverged(run, run.step + 1, f"loss {loss}, gradient norm {grad_norm}")
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    if not weights_sound(run.model, run.rt):
        raise diverged(run, run.step, f"the optimizer step made weights NaN, inf or larger than {checkpoint.WEIGHT_LIMIT:g}")


def diverged(run: Run, step: int, problem: str) -> TrainingDiverged:
    """The error that stops a run at `step`, saying where its last good checkpoint is."""
    where = f"the last good checkpoint, step {run.saved_step}, is in {run.out}" if run.saved_step >= 0 else "no checkpoint was saved"
    return TrainingDiverged(f"step {step}: {problem}; stopping without saving; {where}")


def step_record(run: Run, speed: Throughput, dt: float, tok_s: float, *, lr: float, loss: float,
                grad_norm: float) -> tuple[dict, dict]:
    """The log record of the step just taken in `dt` seconds (with the val metrics every eval_every
    steps), and the progress bar's postfix (`tok_s`: the smoothed rate it shows)."""
    record = {"step": run.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
              "tokens": run.step * speed.tokens, "tok_s": speed.tokens / dt, "minutes": run.minutes}
    postfix = {"loss": f"{loss:.4f}", "tok/s": f"{tok_s:.0f}"}
    if speed.peak:
        record["mfu"] = speed.flops / dt / (speed.peak * run.rt.world)
        postfix["mfu"] = f"{record['mfu']:.1%}"
    if run.step % run.cfg.eval_every == 0 and run.has_val:
        record.update(evaluate(run.model, run.data_dir, run.cfg, run.rt, run.cfg.eval_batches))
        postfix["val_bpb"] = f"{record['val_bpb']:.3f}"
    return record, postfix


def append_log(run: Run, record: dict) -> None:
    """One record more in log.jsonl (the main process writes)."""
    if run.rt.main:
        with run.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def save(run: Run) -> None:
    """A checkpoint of `run` at its step (every process takes part: FSDP gathers the full state and
    each process's RNG state is kept)."""
    weights, optim_state = state_dicts(run.model, run.optimizer)
    rng = [torch.get_rng_state()]
    if run.rt.distributed:
        rng = [None] * run.rt.world
        dist.all_gather_object(rng, torch.get_rng_state())
    if run.rt.main:
        state = {"optimizer": optim_state, "minutes": run.minutes, "data": run.stream.state_dict(), "rng": rng}
        checkpoint.save(run.out, weights, state, step=run.step, model_config=dataclasses.asdict(run.mc),
                        train_config=dataclasses.asdict(run.cfg), data_dir=run.data_dir)
    barrier(run.rt)
    run.saved_step = run.step


if __name__ == "__main__":
    one_line_warnings("train.py")
    try:
        main(sys.argv[1:])
    except (ConfigError, DataError, BpeError, CodecError, checkpoint.CheckpointError, TrainingDiverged, OSError) as e:
        sys.exit(f"train.py: {e}")
