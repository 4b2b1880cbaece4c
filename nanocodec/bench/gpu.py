"""One command for a GPU machine: `python -m nanocodec.bench gpu [--dry-run] [--out DIR]`.

Run from a checkout on one CUDA GPU; in under 8 minutes it
  1. runs the GPU tests (`pytest -m gpu`),
  2. runs `python -m kernels.bench` (attention TFLOP/s vs SDPA at 1K-16K, causal, bf16, head dim
     64/128; RMSNorm and RoPE GB/s vs a device-to-device copy),
  3. probes training: tokens/s and MFU of the `small` preset at context 12288 over 20 steps
     (fwd + bwd + AdamW, bf16 autocast), our Triton kernels vs NANOCODEC_KERNELS=torch,
  4. probes sampling: decode tokens/s of `small` at 1K and 12K cached tokens, split-K decoding vs
     the one-pass forward kernel vs the torch path,
and writes one JSON and one Markdown report, gpu-<date>-<time>.{json,md}, into --out (never over
an existing file). Each step has a time limit; a step that fails or runs out of time is recorded
as such and the others still run. Without CUDA, --dry-run lists the steps and exits 0.

Owns the orchestration and the two probes; the kernels, their tests and kernels.bench live in
kernels/ and tests/. Works with torch >= 2.4 and triton >= 3.0 (a GPU machine may be older).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Step:
    name: str
    what: str
    limit_s: int


STEPS = [
    Step("tests", "pytest -m gpu tests/ (GPU-only kernel and model tests)", 150),
    Step("kernels", "python -m kernels.bench (attention vs SDPA, RMSNorm/RoPE vs device copy)", 180),
    Step("train", "training probe: small @ 12288 ctx, 20 steps, triton kernels vs torch path", 100),
    Step("sample", "sampling probe: small decode tok/s at 1K and 12K cache, split-K vs not", 50),
]


def _subprocess_step(cmd: list[str], limit_s: int) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=limit_s)
        status, out = ("ok" if done.returncode == 0 else f"failed (exit {done.returncode})",
                       done.stdout + done.stderr)
    except subprocess.TimeoutExpired as e:
        status = f"timed out after {limit_s} s"
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), "output": out[-20000:]}


def _peak_flops() -> float | None:
    sys.path.insert(0, str(REPO))
    from train import peak_flops  # the one table of dense bf16 peaks, shared with train.py's MFU

    return peak_flops(torch.cuda.get_device_name())


@contextmanager
def _with_env(name: str, value: str):
    """os.environ[name] = value for the block; the dispatch in kernels/ reads its switches at every
    call, so this flips kernel paths in-process."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")


def train_probe(context: int = 12288, steps: int = 20, warmup: int = 3, preset: str = "small",
                device: str = "cuda") -> dict:
    """tokens/s and MFU of `preset` for our kernels and for the torch path, same weights and data."""
    from nanocodec.model import Llama, ModelConfig

    config = ModelConfig.preset(preset, max_seq_len=context)
    peak = _peak_flops() if device == "cuda" else None
    rows = {}
    for path in ("triton", "torch"):
        with _with_env("NANOCODEC_KERNELS", path):
            torch.manual_seed(0)
            model = Llama(config).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
            x = torch.randint(0, config.vocab_size, (1, context), device=device)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for i in range(warmup + steps):
                if i == warmup:
                    _sync(device)
                    start = time.perf_counter()
                with _autocast(device):
                    _, loss = model(x, x)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            _sync(device)
            rate = steps * context / (time.perf_counter() - start)
            mfu = rate * model.flops_per_token(context) / peak if peak else None
            peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
            rows[path] = {"tokens_per_s": round(rate), "mfu": None if mfu is None else round(mfu, 4),
                          "peak_memory_gb": None if peak_gb is None else round(peak_gb, 2),
                          "final_loss": round(loss.item(), 4)}
            del model, opt
            if device == "cuda":
                torch.cuda.empty_cache()
    rows["ratio_triton_over_torch"] = round(rows["triton"]["tokens_per_s"] / rows["torch"]["tokens_per_s"], 3)
    return rows


def sample_probe(contexts: tuple[int, ...] = (1024, 12288), new_tokens: int = 64, preset: str = "small",
                 device: str = "cuda") -> dict:
    """Decode tokens/s (one token per step, batch 1) after a prefill of `context` tokens."""
    from nanocodec.model import Llama, ModelConfig

    warmup = 4  # decode steps before timing: autotuning, allocator
    torch.manual_seed(0)
    config = ModelConfig.preset(preset, max_seq_len=max(contexts) + warmup + new_tokens)
    model = Llama(config).to(device).eval()
    paths = {"split-K": ("triton", "1"), "one-pass kernel": ("triton", "0"), "torch (SDPA)": ("torch", "1")}
    rows = {}
    for context in contexts:
        prompt = torch.randint(0, config.vocab_size, (1, context), device=device)
        row = {}
        for label, (kernels_path, split_k) in paths.items():
            with _with_env("NANOCODEC_KERNELS", kernels_path), _with_env("NANOCODEC_SPLIT_K", split_k), \
                    _autocast(device):
                cache = model.make_cache(1, context + warmup + new_tokens)
                model.forward_cached(prompt, cache)
                token = prompt[:, -1:]
                for _ in range(warmup):
                    model.forward_cached(token, cache)
                _sync(device)
                start = time.perf_counter()
                for _ in range(new_tokens):
                    model.forward_cached(token, cache)
                _sync(device)
                row[label] = round(new_tokens / (time.perf_counter() - start), 1)
        row["split-K / one-pass"] = round(row["split-K"] / row["one-pass kernel"], 2)
        rows[str(context)] = row
    return rows


def _probe_step(fn, limit_s: int) -> dict:
    start = time.perf_counter()
    try:
        result = fn()
        status = "ok"
    except Exception as e:  # a failed probe is a finding for the report, not a reason to stop
        result, status = None, f"failed: {type(e).__name__}: {e}"
    seconds = time.perf_counter() - start
    if seconds > limit_s:
        status += f" (took {seconds:.0f} s, over its {limit_s} s budget)"
    return {"status": status, "seconds": round(seconds, 1), "result": result}


def run_step(step: Step) -> dict:
    py = sys.executable
    if step.name == "tests":
        return _subprocess_step([py, "-m", "pytest", "-q", "-m", "gpu", "tests/"], step.limit_s)
    if step.name == "kernels":
        return _subprocess_step([py, "-m", "kernels.bench"], step.limit_s)
    if step.name == "train":
        return _probe_step(train_probe, step.limit_s)
    return _probe_step(sample_probe, step.limit_s)


def markdown(report: dict) -> str:
    lines = [f"# GPU report {report['date']}", "", f"{report['gpu']} | torch {report['torch']} | "
             f"triton {report['triton']} | total {report['seconds']:.0f} s", ""]
    for name, r in report["steps"].items():
        lines += [f"## {name}: {r['status']} ({r['seconds']} s)", ""]
        if r.get("result") is not None:
            lines += ["```json", json.dumps(r["result"], indent=2), "```", ""]
        if r.get("output"):
            lines += ["```", r["output"].strip()[-6000:], "```", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="list the steps and exit")
    parser.add_argument("--out", default="reports", help="folder for gpu-<date>-<time>.{json,md}")
    parser.add_argument("--only", choices=[s.name for s in STEPS], action="append",
                        help="run only this step (repeatable)")
    args = parser.parse_args(argv)
    steps = [s for s in STEPS if not args.only or s.name in args.only]
    print(f"nanocodec GPU check: {len(steps)} steps, at most {sum(s.limit_s for s in steps)} s")
    for i, s in enumerate(steps, 1):
        print(f"  {i}. {s.name:<8} {s.what} (limit {s.limit_s} s)")
    if args.dry_run:
        return
    if not torch.cuda.is_available():
        sys.exit("nanocodec.bench gpu: no CUDA GPU here; run it on a GPU machine (--dry-run lists the steps)")
    import triton

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"gpu-{stamp}.{ext}" for ext in ("json", "md")]
    if any(p.exists() for p in paths):
        sys.exit(f"nanocodec.bench gpu: {paths[0]} already exists; wait a second or pass another --out")
    start = time.perf_counter()
    report = {"date": stamp, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "steps": {}}
    for s in steps:
        print(f"[{s.name}] {s.what} ...", flush=True)
        report["steps"][s.name] = run_step(s)
        print(f"[{s.name}] {report['steps'][s.name]['status']} in {report['steps'][s.name]['seconds']} s", flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    paths[0].write_text(json.dumps(report, indent=2))
    paths[1].write_text(markdown(report))
    print(f"report: {paths[0]} and {paths[1]}")
