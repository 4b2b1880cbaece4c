"""train.py and nanocodec.checkpoint: exact resume, DDP under torchrun, clear errors, atomic and safe
checkpoints, bits per byte, signals and divergence. Runs use a tiny model on a tiny prepared folder."""
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nanocodec import checkpoint
from nanocodec.bpe import Tokenizer
from nanocodec.config import ConfigError
from nanocodec.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
# A model small enough that a step takes milliseconds; GQA and grad accumulation stay in play.
TINY = ["--threads=1", "--dim=32", "--n_layers=2", "--n_heads=2", "--n_kv_heads=1", "--context=32", "--batch_size=2",
        "--warmup_steps=2", "--lr=3e-3", "--min_lr_ratio=0.1", "--eval_every=1000", "--samples=0", "--decode_samples=0", "--max_minutes=0"]


def load_train():
    spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module  # dataclasses and the config parser look the module up
    spec.loader.exec_module(module)
    return module


train = load_train()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(prepared_images) -> Path:
    """A real prepared folder: 40 small smooth images with noise, as JPEG tokens."""
    return prepared_images("train_data", 40, size=32, merges=24, tokenizer_docs=40, val_fraction=0.25) / "data"


def run(data: Path, out: Path, *extra: str):
    return train.main([f"--data={data}", f"--out_dir={out}", *TINY, *extra])


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in train.read_log(out / "log.jsonl") if "loss" in r]


@pytest.mark.parametrize("threads", [1, 2])
def test_resume_continues_exactly(data, tmp_path, threads):
    # At 1 thread, 2 micro-batches per step: gradient accumulation is part of the state. At 2, batches
    # of 4 x 64 make the logits and their gradients large enough (> 32768 elements) to be split
    # between the threads.
    shape = ["--tokens_per_step=128"] if threads == 1 else ["--batch_size=4", "--context=64"]
    try:
        straight = run(data, tmp_path / "straight", "--max_steps=6", f"--threads={threads}", *shape)
        run(data, tmp_path / "halves", "--max_steps=3", "--lr_decay_steps=6", f"--threads={threads}", *shape)
        resumed = train.main([f"--out_dir={tmp_path / 'halves'}", "--resume", "--max_steps=6"])
        assert torch.get_num_threads() == threads  # the saved setting
    finally:
        torch.set_num_threads(1)
    assert losses(tmp_path / "halves") == losses(tmp_path / "straight")
    assert [r["grad_norm"] for r in train.read_log(tmp_path / "halves" / "log.jsonl") if "loss" in r] == \
        [r["grad_norm"] for r in train.read_log(tmp_path / "straight" / "log.jsonl") if "loss" in r]
    assert len(losses(tmp_path / "straight")) == 6
    assert checkpoint.load_config(tmp_path / "halves")["train"]["grad_accum"] == 3 - threads
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_holds_everything_inference_needs(data, tmp_path, capsys):
    model = run(data, tmp_path / "run", "--max_steps=2", "--samples=2", "--decode_samples=2", "--context=160")
    bundle = checkpoint.load_for_inference(tmp_path / "run")
    x = torch.randint(0, bundle.tokenizer.vocab_size, (2, 16))
    torch.testing.assert_close(bundle.model(x)[0], model.eval()(x)[0])
    config = bundle.config
    manifest_text = (data / "manifest.json").read_text()
    assert config["version"] == 1 and config["step"] == 2 and config["kind"] == "jpeg"
    assert config["codec"]["size"] == 32
    assert config["data"]["manifest_sha256"] == hashlib.sha256(manifest_text.encode()).hexdigest()
    assert config["model"]["dim"] == 32 and config["train"]["max_steps"] == 2
    assert bundle.tokenizer.sha256 == Tokenizer.load(data / "tokenizer.json").sha256
    assert bundle.manifest == json.loads(manifest_text)
    assert Image.open(tmp_path / "run" / "loss.png").size[0] > 30
    # 2 val images of 32 px: prompt | 3 completions | original, each scaled 6x, 2 px apart.
    assert Image.open(tmp_path / "run" / "samples.png").size == (5 * 192 + 4 * 2, 2 * 192 + 2)
    final = train.read_log(tmp_path / "run" / "log.jsonl")[-1]
    assert final["final"] and 0 < final["val_bpb"] < 8.5
    printed = capsys.readouterr().out
    assert re.search(r"val bits per byte by region: headers \d\.\d\d \(\d+% of the bytes\), entropy-coded data "
                     r"\d\.\d\d \(\d+% of the bytes\), restart markers", printed)
    assert re.search(r"samples: .*samples.png: 2 val images \| 3 completions of their first 50% \(constrained: (6/6 valid|\d/6 valid, \d cut off by the context of 160 tokens \(repaired\))\) "
                     r"\| original; \d+ tok/s; unconditional samples: [012]/2 decode without error", printed)


def test_bits_per_byte_by_hand(data):
    """A model with a zero output layer predicts uniformly: every target costs ln(V) nats."""
    tok = Tokenizer.load(data / "tokenizer.json")
    model = train.Llama(train.model_config(train.parse(train.TrainConfig, TINY), vocab_size=tok.vocab_size))
    torch.nn.init.zeros_(model.output.weight)
    manifest = json.loads((data / "manifest.json").read_text())
    targets = codec_bytes = 0
    for n in range(manifest["splits"]["val"]["shards"]):
        offsets = np.fromfile(data / f"val_{n:04d}.idx", dtype="<i8")
        tokens = np.fromfile(data / f"val_{n:04d}.bin", dtype="<u2")
        for start, end in zip(offsets[:-1], offsets[1:]):
            targets += end - start - 1  # every token of <bos> doc <eos> but the <bos>
            codec_bytes += len(tok.decode(tokens[start:end].tolist()))
    expected = targets * math.log(tok.vocab_size) / math.log(2) / codec_bytes
    cfg = train.parse(train.TrainConfig, TINY)
    rt = train.Runtime(0, 1, torch.device("cpu"), False)
    full = train.evaluate(model, data, cfg, rt)
    assert full["val_targets"] == targets
    assert full["val_loss"] == pytest.approx(math.log(tok.vocab_size), rel=1e-6)
    assert full["val_bpb"] == pytest.approx(expected, rel=1e-6)
    # A partial pass extrapolates at the split's tokens per byte: exact for a uniform model.
    assert train.evaluate(model, data, cfg, rt, max_batches=1)["val_bpb"] == pytest.approx(expected, rel=1e-6)


def test_schedule_warms_up_then_follows_a_cosine_in_steps_or_minutes(tmp_path):
    steps = train.TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=110, max_minutes=0)
    assert [train.lr_at(steps, s, 0.0) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert [train.lr_at(steps, s, 0.0) for s in (10, 60, 110, 500)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    minutes = train.TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=0, max_steps=0, max_minutes=10)
    assert [train.lr_at(minutes, 7, m) for m in (0.0, 5.0, 10.0)] == pytest.approx([1.0, 0.55, 0.1])
    assert train.load_config(["--preset=small", f"--out_dir={tmp_path}"]).lr == 3e-4  # the paper's, unless the preset says otherwise


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bogus=1"], "unknown option --bogus"),
        (["--max_steps=ten"], "--max_steps: expected int, got 'ten'"),
        (["--max_steps=0", "--max_minutes=0"], "set --max_steps or --max_minutes"),
        (["--batch_size=0"], "--batch_size must be positive"),
        (["--preset=huge"], "unknown model preset 'huge'"),
        (["--n_heads=3"], "split into 3 heads"),
        (["--data=/nonexistent/folder"], "no manifest.json"),
    ],
)
def test_bad_overrides_fail_clearly(tmp_path, argv, message):
    with pytest.raises(ConfigError, match=message):
        train.main([f"--out_dir={tmp_path}", *argv])


def test_bad_override_on_the_command_line():
    result = subprocess.run([sys.executable, "train.py", "--max_step=5"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "train.py: unknown option --max_step; known options:" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_without_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint directory"):
        train.main([f"--out_dir={tmp_path / 'nothing'}", "--resume"])


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("saved") / "run"
    run(data, out, "--max_steps=2")
    return out


def test_resume_with_other_model_settings_fails_clearly(saved, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    with pytest.raises(ConfigError, match=r"model settings differ from the checkpoint in .*: dim=64 \(checkpoint: 32\)"):
        train.main([f"--out_dir={copy}", "--resume", "--dim=64"])


def corrupt_copy(saved: Path, tmp_path: Path, name: str, content: bytes) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    (copy / name).write_bytes(content)
    return copy


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("model.safetensors", b"\x00garbage" * 10, "model.safetensors: not a readable safetensors file"),
        ("config.json", b"{not json", "config.json: not readable JSON"),
        ("config.json", json.dumps({"version": 99}).encode(), "unknown checkpoint version 99"),
        ("tokenizer.json", b"[1, 2]", "tokenizer.json"),
        ("manifest.json", b"{}", "manifest.json: missing or not the manifest"),
    ],
)
def test_corrupt_checkpoint_fails_clearly(saved, tmp_path, name, content, message):
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load_for_inference(corrupt_copy(saved, tmp_path, name, content))


def test_corrupt_state_fails_clearly(saved, tmp_path):
    copy = corrupt_copy(saved, tmp_path, "state.pt", (saved / "state.pt").read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match=r"state.pt: sha256 .* differs from the .* config.json recorded"):
        checkpoint.load_training(copy)
    config = json.loads((copy / "config.json").read_text())
    config["files"]["state.pt"] = checkpoint.sha256(copy / "state.pt")  # a checksum that agrees: torch.load decides
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoint.CheckpointError, match="state.pt: not a readable training state"):
        checkpoint.load_training(copy)


def flip_bytes(path: Path, count: int) -> None:
    """Invert `count` bytes spread over the second half of the file (tensor data, past the headers)."""
    data = bytearray(path.read_bytes())
    for i in np.linspace(len(data) // 2, len(data) - 1, count).astype(int):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name, count", [("state.pt", 50), ("model.safetensors", 1000)])
def test_flipped_bytes_are_refused_or_fall_back_to_previous(saved, tmp_path, name, count):
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    flip_bytes(copy / name, count)
    message = rf"{name}: sha256 .* differs"
    for load in (checkpoint.load_training, checkpoint.load_for_inference, checkpoint.load_config):
        with pytest.raises(checkpoint.CheckpointError, match=message):
            load(copy)
    shutil.copytree(saved, copy / "previous")  # as a save that was cut off leaves it
    with pytest.warns(UserWarning, match=rf"{message}.*; using the previous checkpoint"):
        _, weights, state = checkpoint.load_training(copy)
    for key, value in checkpoint.load_training(saved)[1].items():
        assert torch.equal(weights[key], value), key


def test_non_finite_weights_are_never_saved(data, saved, tmp_path):
    _, weights, state = checkpoint.load_training(saved)
    weights = {k: v.clone() for k, v in weights.items()}
    next(iter(weights.values()))[0, 0] = float("inf")
    meta = dict(model_config=checkpoint.load_config(saved)["model"], train_config={}, data_dir=data)
    with pytest.raises(checkpoint.CheckpointError, match="not saving step 3: non-finite or exploded"):
        checkpoint.save(tmp_path / "run", weights, state, step=3, **meta)
    next(iter(weights.values()))[0, 0] = 3.5e23  # finite, but a run that diverged
    with pytest.raises(checkpoint.CheckpointError, match="not saving step 3: non-finite or exploded"):
        checkpoint.save(tmp_path / "run", weights, state, step=3, **meta)
    assert not (tmp_path / "run" / "config.json").exists()


def test_broken_weights_whose_checksums_hold_are_refused_on_load(saved, tmp_path):
    """An old or imported checkpoint saved with NaN weights verifies, and is refused all the same."""
    from safetensors.torch import save_file

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    _, weights, _ = checkpoint.load_training(copy)
    name = next(iter(weights))
    weights[name] = weights[name].clone()
    weights[name][0, 0] = float("nan")
    save_file(weights, copy / "model.safetensors", metadata={"step": str(checkpoint.load_config(copy)["step"])})
    config = json.loads((copy / "config.json").read_text())
    config["files"]["model.safetensors"] = checkpoint.sha256(copy / "model.safetensors")
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoint.CheckpointError, match=f"non-finite or exploded .* weights in {name}"):
        checkpoint.load_for_inference(copy)


def test_weights_of_another_model_fail_clearly(saved, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["dim"] = 64
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoint.CheckpointError, match="weights do not fit the model"):
        checkpoint.load_for_inference(copy)


def test_interrupted_saves_leave_a_loadable_checkpoint(data, saved, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(saved, out)
    step2 = checkpoint.load_for_inference(out).model.state_dict()
    _, weights, state = checkpoint.load_training(out)
    meta = dict(model_config=checkpoint.load_config(out)["model"], train_config={}, data_dir=data)
    new_weights = {k: v + 1 for k, v in weights.items()}

    # Killed while writing: the directory still holds step 2, untouched.
    def die(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(checkpoint.torch, "save", die)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(out, new_weights, state, step=3, **meta)
    assert checkpoint.load_config(out)["step"] == 2

    # Killed between the renames: new weights in place, old config.json; the previous copy serves.
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        if Path(dst).parent.name == checkpoint.STAGING:  # files.write_atomic filling the staging folder
            return real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(checkpoint.os, "replace", replace_then_die)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(out, new_weights, state, step=3, **meta)
    with pytest.warns(UserWarning, match="using the previous checkpoint"):
        restored = checkpoint.load_for_inference(out).model.state_dict()
    for name, value in step2.items():
        assert torch.equal(restored[name], value), name

    # Killed again the same way: the last whole checkpoint is still the fallback.
    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(checkpoint.os, "replace", replace_then_die)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(out, new_weights, state, step=4, **meta)
    with pytest.warns(UserWarning, match="using the previous checkpoint"):
        assert checkpoint.load_training(out)[2]["step"] == 2

    # The next complete save wins again.
    checkpoint.save(out, new_weights, state, step=3, **meta)
    assert checkpoint.load_training(out)[2]["step"] == 3
    assert not (out / "previous").exists() and not (out / ".staging").exists()


def test_divergence_stops_without_overwriting(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    message = r"step \d+: (loss .*|the optimizer step made weights .*) stopping without saving; the last good checkpoint, step \d+, is in"
    real_lr_at = train.lr_at  # --lr is capped at 1; a schedule gone wild is what makes a run blow up
    monkeypatch.setattr(train, "lr_at", lambda cfg, step, minutes: 1e6 if step >= 2 else real_lr_at(cfg, step, minutes))
    with pytest.raises(train.TrainingDiverged, match=message):
        run(data, out, "--max_steps=50", "--min_lr_ratio=0", "--warmup_steps=0", "--ckpt_every=1")
    config, weights, _ = checkpoint.load_training(out)
    assert all(torch.isfinite(w).all() for w in weights.values())
    last = train.read_log(out / "log.jsonl")[-1]
    assert last["step"] == config["step"] and math.isfinite(last["loss"])


def test_sigterm_saves_and_exits(data, tmp_path):
    out = tmp_path / "run"

    log = out / "log.jsonl"

    def terminate_after_a_few_steps():
        while not log.exists() or len(train.read_log(log)) < 3:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    handler = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=terminate_after_a_few_steps, daemon=True).start()
    run(data, out, "--max_steps=100000")
    step = checkpoint.load_config(out)["step"]
    assert 3 <= step < 100000
    assert train.read_log(log)[-1]["step"] == step
    assert signal.getsignal(signal.SIGTERM) is handler


WORKER = """
import importlib.util, os, sys, torch
spec = importlib.util.spec_from_file_location("train", {train!r})
train = importlib.util.module_from_spec(spec)
sys.modules["train"] = train
spec.loader.exec_module(train)
model = train.main(sys.argv[1:])
torch.save(model.state_dict(), os.path.join({out!r}, "rank%s.pt" % os.environ["RANK"]))
"""


def test_torchrun_ddp_on_cpu_matches_one_process(data, tmp_path):
    """Two gloo ranks of batch 2 see the samples one process of batch 4 sees: same losses, and both
    ranks end with identical parameters."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(train=str(ROOT / "train.py"), out=str(tmp_path)))
    args = [f"--data={data}", *TINY, "--max_steps=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
         f"--out_dir={tmp_path / 'ddp'}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    single = train.main([*args, f"--out_dir={tmp_path / 'single'}", "--batch_size=4"])
    np.testing.assert_allclose(losses(tmp_path / "ddp"), losses(tmp_path / "single"), rtol=1e-5)
    # The two ranks split the val batches (one of them idle in the last round) yet count every target once.
    finals = [train.read_log(tmp_path / run / "log.jsonl")[-1] for run in ("ddp", "single")]
    assert finals[0]["val_targets"] == finals[1]["val_targets"]
    assert finals[0]["val_bpb"] == pytest.approx(finals[1]["val_bpb"], rel=1e-5)
    # The two sum gradients in other orders; where a gradient is mostly cancellation, Adam's division
    # by its own size turns that rounding into weight differences of a few 1e-6 (6.9e-6 at most here).
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-5)


def test_torchrun_fsdp_on_cpu_trains_saves_and_resumes(data, tmp_path):
    out = tmp_path / "fsdp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
            f"--out_dir={out}"]
    first = subprocess.run([*base, f"--data={data}", *TINY, "--fsdp", "--max_steps=3"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run([*base, "--resume", "--max_steps=5"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["step"] for r in train.read_log(out / "log.jsonl") if "loss" in r] == [1, 2, 3, 4, 5]
    bundle = checkpoint.load_for_inference(out)
    assert bundle.config["step"] == 5 and bundle.config["train"]["fsdp"]
    assert all(torch.isfinite(p).all() for p in bundle.model.parameters())


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_earlier_run_is_never_started_over_without_overwrite(data, saved, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(saved, out)
    (out / "samples.png").write_bytes(b"old picture")
    (out / "eval").mkdir()
    (out / "eval" / "report.json").write_text("{}")
    shutil.copytree(saved, out / "previous", ignore=shutil.ignore_patterns("log.jsonl", "*.png"))
    (out / "notes.txt").write_text("the user's own file")
    before = folder_digest(out)
    with pytest.raises(ConfigError, match=rf"--out_dir={out} holds a checkpoint \(model.safetensors, .*, log.jsonl, "
                                          r"loss.png, samples.png, eval\): --resume to continue, --overwrite to start over"):
        run(data, out, "--max_steps=1")
    assert folder_digest(out) == before
    with pytest.raises(ConfigError, match="give one of them"):
        train.main([f"--out_dir={out}", "--resume", "--overwrite"])
    run(data, out, "--max_steps=1", "--overwrite")
    assert "--overwrite: removed model.safetensors" in capsys.readouterr().out
    assert not (out / "samples.png").exists() and not (out / "eval").exists() and not (out / "previous").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert checkpoint.load_config(out)["step"] == 1 and [r["step"] for r in train.read_log(out / "log.jsonl")] == [1, 1]


def test_resume_limits_mean_what_the_command_line_says(data, tmp_path, capsys):
    out = tmp_path / "run"
    run(data, out, "--max_steps=0", "--max_minutes=0.0001")  # one step is longer than 6 ms
    trained = checkpoint.load_training(out)[2]
    assert trained["step"] >= 1
    train.main([f"--out_dir={out}", "--resume"])
    assert (f"nothing to train: the run in {out} has reached max_minutes=0.0001 ({trained['minutes']:.2f} minutes trained, "
            f"step {trained['step']}); to train on, resume with --max_steps=N (train until step N) or --max_minutes=M") in capsys.readouterr().out
    assert sum(r.get("final", False) for r in train.read_log(out / "log.jsonl")) == 1  # no second final record

    # --max_steps alone: train until that step; the saved time limit no longer stops the run.
    train.main([f"--out_dir={out}", "--resume", f"--max_steps={trained['step'] + 2}"])
    config = checkpoint.load_config(out)
    assert config["step"] == trained["step"] + 2 and config["train"]["max_minutes"] == 0
    train.main([f"--out_dir={out}", "--resume"])
    assert f"reached max_steps={trained['step'] + 2} (at step {trained['step'] + 2})" in capsys.readouterr().out

    # --max_minutes alone: that many minutes more, saved as the run's new total.
    minutes = checkpoint.load_training(out)[2]["minutes"]
    train.main([f"--out_dir={out}", "--resume", "--max_minutes=0.0001"])
    config, _, state = checkpoint.load_training(out)
    assert config["step"] > trained["step"] + 2 and config["train"]["max_steps"] == 0
    assert config["train"]["max_minutes"] == pytest.approx(minutes + 0.0001)
    steps = [r["step"] for r in train.read_log(out / "log.jsonl") if "loss" in r]
    assert steps == list(range(1, config["step"] + 1))


def test_threads_reach_torch():
    cfg = train.parse(train.TrainConfig, ["--threads=2"])
    try:
        assert train.setup_runtime(cfg).threads == torch.get_num_threads() == 2
        assert train.setup_runtime(train.parse(train.TrainConfig, [])).threads == train.usable_cores()
        with pytest.raises(ConfigError, match="--threads must be >= 0"):
            train.setup_runtime(train.parse(train.TrainConfig, ["--threads=-1"]))
    finally:
        torch.set_num_threads(1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_fails_clearly(data, tmp_path):
    with pytest.raises(ConfigError, match="--device=cuda: this machine has no usable CUDA GPU"):
        run(data, tmp_path / "run", "--max_steps=1", "--device=cuda")


@pytest.mark.parametrize("argv, code, message", [
    (["--help"], 0, "--overwrite=false"),
    (["--device=cuda", "--out_dir={tmp}/new"], 1, "train.py: --device=cuda: this machine has no usable CUDA GPU"),
    (["--out_dir={tmp}/run"], 1, "train.py: --out_dir={tmp}/run holds a checkpoint ("),
    (["--out_dir={tmp}/new", "--lr=1e300"], 1, "train.py: --lr must be in (0, 1]"),
    (["--out_dir={tmp}/new", "--max_steps=-2"], 1, "train.py: --max_steps must be >= 0"),
    (["--out_dir={tmp}/new", "--max_minutes=-1"], 1, "train.py: --max_minutes must be >= 0"),
])
def test_command_line_mistakes_are_one_line(saved, tmp_path, monkeypatch, capsys, argv, code, message):
    """train.py's __main__ block, run in this process (test_bad_override_on_the_command_line runs a real one)."""
    import runpy
    import warnings

    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    shutil.copytree(saved, tmp_path / "run")
    monkeypatch.setattr(sys, "argv", ["train.py", *(a.format(tmp=tmp_path) for a in argv)])
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    with pytest.raises(SystemExit) as exit:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    if code:
        assert isinstance(exit.value.code, str) and "\n" not in exit.value.code
        assert exit.value.code.startswith(message.format(tmp=tmp_path))
    else:
        assert exit.value.code == 0
        help_text = capsys.readouterr().out
        assert "remove its checkpoint, log and pictures" in help_text and "0: the cores this process may use" in help_text


def test_avc_data_gets_a_context_that_fits_its_videos(tmp_path, capsys):
    videos = tmp_path / "avc"
    prepare("avc", "demo", videos, limit=2, merges=8, tokenizer_docs=2, val_fraction=0.0, workers=1)
    longest = max(np.diff(np.fromfile(videos / "train_0000.idx", dtype="<i8")))
    args = [a for a in TINY if not a.startswith(("--context", "--batch_size"))]
    with pytest.warns(UserWarning, match="the val split is empty, so there is no val loss"):
        train.main([f"--data={videos}", f"--out_dir={tmp_path / 'run'}", *args, "--batch_size=1", "--max_steps=1"])
    context = checkpoint.load_config(tmp_path / "run")["train"]["context"]
    assert longest <= context < longest + 256 and context % 256 == 0
    assert f"context {context} (fits the longest video, {longest} tokens" in capsys.readouterr().out
    final = train.read_log(tmp_path / "run" / "log.jsonl")[-1]
    assert final["final"] and "val_loss" not in final


def test_a_torn_last_log_line_is_dropped_on_resume(data, saved, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(saved, out)
    with (out / "log.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 5.1, "lr"')  # killed mid-write
    with pytest.warns(UserWarning, match=r"log.jsonl: dropped line \d+, not a log record"):
        train.main([f"--out_dir={out}", "--resume", "--max_steps=3"])
    assert [r["step"] for r in train.read_log(out / "log.jsonl") if "loss" in r] == [1, 2, 3]


def test_weights_the_optimizer_makes_non_finite_are_never_saved(data, tmp_path, monkeypatch):
    real_step, calls = torch.optim.AdamW.step, []

    def step_then_poison(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0][0, 0] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_poison)
    with pytest.raises(train.TrainingDiverged, match="step 3: the optimizer step made weights NaN, inf or larger than 1e\\+06; stopping without "
                                                     "saving; the last good checkpoint, step 2, is in"):
        run(data, tmp_path / "run", "--max_steps=5", "--ckpt_every=1")
    config, weights, _ = checkpoint.load_training(tmp_path / "run")
    assert config["step"] == 2 and all(torch.isfinite(w).all() for w in weights.values())
