"""Checkpoint directories: atomic save, safe and verified load, and loading a trained model for inference.

A checkpoint directory holds
  model.safetensors  the weights (metadata: the step)
  state.pt           what resuming needs besides weights: optimizer, step, data-stream and RNG states
  tokenizer.json     copied from the data folder
  manifest.json      copied from the data folder
  config.json        {"version": 1, "step", "model", "train", "data": {"path", "manifest_sha256"},
                      "kind", "codec", "files": {name: sha256 of every other file}}
Saving refuses non-finite weights, writes every file into `.staging/`, hard-links the current
checkpoint (when it is whole and its checksums hold) into `previous/`, then moves the new files in
with os.replace, config.json last, and removes `previous/` only once the new checkpoint reads back
whole. A kill at any moment leaves either a complete checkpoint in the directory or a complete
previous one in `previous/`. Every load checks the files against the sha256 sums in config.json
and the weights' step against config.json's, and falls back to `previous/` (with a warning) when
the directory's checkpoint fails either check. Loading never runs pickled code: weights come from
safetensors, state.pt goes through torch.load(weights_only=True). A file is hashed once per process
while its inode, size and times stay the same, so a save's own check and the next load are free.
Does not own: what goes into the state (train.py) or the model itself (nanocodec.model).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from nanocodec.files import fsync, umask_mode, write_atomic
from nanocodec.model import Llama, ModelConfig

VERSION = 1
WEIGHTS, STATE, TOKENIZER, MANIFEST, CONFIG = "model.safetensors", "state.pt", "tokenizer.json", "manifest.json", "config.json"
FILES = (WEIGHTS, STATE, TOKENIZER, MANIFEST, CONFIG)  # the order of the final renames: config.json commits
CHECKSUMMED = FILES[:-1]  # config.json records the sha256 of the others
STAGING, PREVIOUS = ".staging", "previous"
NAMES = (*FILES, STAGING, PREVIOUS, PREVIOUS + ".tmp")  # everything a checkpoint directory may hold


class CheckpointError(RuntimeError):
    """A checkpoint directory that is missing, incomplete, corrupt, or of an unknown version."""


@dataclass
class Bundle:
    """What inference needs from a checkpoint: the model (eval mode), its tokenizer, config.json and
    the data manifest (codec settings)."""

    model: Llama
    tokenizer: Any
    config: dict
    manifest: dict


_DIGESTS: dict[tuple, str] = {}  # (path, device, inode, size, mtime, ctime) -> sha256, the newest 64
_DIGESTS_KEPT = 64


def _identity(path: Path) -> tuple:
    st = os.stat(path)
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _remember(identity: tuple, digest: str) -> None:
    _DIGESTS[identity] = digest
    if len(_DIGESTS) > _DIGESTS_KEPT:
        del _DIGESTS[next(iter(_DIGESTS))]


def sha256(path: Path) -> str:
    """The file's sha256, cached while its path, inode, size and times stay the same. A rename
    changes the path (and on most filesystems the ctime), so `save_files` carries each staged file's
    digest over its own rename: a staged file is hashed once."""
    identity = _identity(path)
    if identity not in _DIGESTS:
        with open(path, "rb") as f:
            _remember(identity, hashlib.file_digest(f, "sha256").hexdigest())
    return _DIGESTS[identity]


# No trained Llama weight comes near this; a diverging run passes it long before it reaches inf, so
# a checkpoint over it is refused on save and on load like a non-finite one.
WEIGHT_LIMIT = 1e6


def weights_sound(tensors) -> bool:
    """Whether every floating-point tensor is free of NaN and inf and within WEIGHT_LIMIT: one
    reduction per tensor (no copy) and one device sync for them all (train.py checks every step)."""
    peaks = [torch.linalg.vector_norm(t.detach(), float("inf")).float() for t in tensors if t.is_floating_point() and t.numel()]
    return not peaks or bool(torch.stack(peaks).max() <= WEIGHT_LIMIT)  # a NaN peak compares False


def _broken(weights: dict[str, torch.Tensor]) -> str:
    """The names of the weights that are not sound, as a phrase ("" when all are): one check of them
    all (one device sync), and one per tensor only to name the bad ones."""
    if weights_sound(weights.values()):
        return ""
    bad = [k for k, v in weights.items() if not weights_sound([v])]
    if not bad:
        return ""
    return f"non-finite or exploded (|w| > {WEIGHT_LIMIT:g}) weights in {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''}"


def save(
    out_dir: str | os.PathLike,
    weights: dict[str, torch.Tensor],
    state: dict,
    *,
    step: int,
    model_config: dict,
    train_config: dict,
    data_dir: str | os.PathLike,
) -> None:
    """Write a complete checkpoint for `step` into `out_dir`, atomically (see the module docstring)."""
    data = Path(data_dir)
    save_files(out_dir, weights, state, step=step, model_config=model_config, train_config=train_config,
               data_path=str(data.resolve()), manifest_text=(data / MANIFEST).read_text(),
               tokenizer_text=(data / TOKENIZER).read_text())


def save_files(
    out_dir: str | os.PathLike,
    weights: dict[str, torch.Tensor] | Callable[[Path, dict[str, str]], None],
    state: dict,
    *,
    step: int,
    model_config: dict,
    train_config: dict,
    data_path: str,
    manifest_text: str,
    tokenizer_text: str,
    extra: dict | None = None,
) -> None:
    """`save` from the texts of the manifest and tokenizer rather than a data folder.

    `weights` is a state dict, or a function `write(path, metadata)` that writes the safetensors
    file itself (nanocodec.hf streams a 7B import tensor by tensor); `extra` adds config.json
    entries (nanocodec.hf records where an imported model came from).
    """
    out = Path(out_dir)
    bad = _broken(weights) if not callable(weights) else ""
    if bad:
        raise CheckpointError(f"{out}: not saving step {step}: {bad}")
    manifest = json.loads(manifest_text)
    config = {
        "version": VERSION,
        "step": step,
        "model": model_config,
        "train": train_config,
        "data": {"path": data_path, "manifest_sha256": hashlib.sha256(manifest_text.encode()).hexdigest()},
        "kind": manifest.get("kind"),
        "codec": manifest.get("codec", {}),
        **(extra or {}),
    }
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # the remains of a save that was killed
    staging.mkdir(parents=True)
    if callable(weights):
        weights(staging / WEIGHTS, {"step": str(step)})
    else:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, staging / WEIGHTS, metadata={"step": str(step)})
    umask_mode(staging / WEIGHTS)  # safetensors writes 0600; the other files follow the umask
    torch.save({**state, "step": step}, staging / STATE)
    fsync(staging / WEIGHTS)
    fsync(staging / STATE)
    write_atomic(staging / TOKENIZER, tokenizer_text)
    write_atomic(staging / MANIFEST, manifest_text)
    config["files"] = {name: sha256(staging / name) for name in CHECKSUMMED}
    write_atomic(staging / CONFIG, json.dumps(config, indent=2) + "\n")

    previous = out / PREVIOUS
    if _is_complete(out):  # it becomes the fallback; else previous/ already holds the last whole one
        shutil.rmtree(previous, ignore_errors=True)
        linking = out / NAMES[-1]
        shutil.rmtree(linking, ignore_errors=True)
        linking.mkdir()
        for name in FILES:
            try:
                os.link(out / name, linking / name)  # links, not copies: no extra disk for 7B weights
            except OSError:  # a filesystem without hard links
                shutil.copy2(out / name, linking / name)
        os.replace(linking, previous)
    for name in FILES:
        os.replace(staging / name, out / name)
        if name in config["files"]:  # the same bytes under a new name: no need to hash them again
            _remember(_identity(out / name), config["files"][name])
    fsync(out)
    shutil.rmtree(staging, ignore_errors=True)
    if not _is_complete(out):  # the disk lost what was just written: previous/ stays the fallback
        raise CheckpointError(f"{out}: the checkpoint of step {step} does not read back whole after the save; "
                              f"the loaders fall back to {previous}")
    shutil.rmtree(previous, ignore_errors=True)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a complete checkpoint directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _read_config(ckpt: Path) -> dict:
    """config.json of `ckpt`, checked against the weights' step and the manifest copy."""
    config = _read_json(ckpt / CONFIG)
    if config.get("version") != VERSION:
        raise CheckpointError(f"{ckpt / CONFIG}: unknown checkpoint version {config.get('version')!r} "
                              f"(this nanocodec reads version {VERSION})")
    for key in ("step", "model", "data"):
        if key not in config:
            raise CheckpointError(f"{ckpt / CONFIG}: no {key!r} entry")
    try:
        with safe_open(ckpt / WEIGHTS, framework="pt") as f:
            weights_step = (f.metadata() or {}).get("step")
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt / WEIGHTS}: missing (not a complete checkpoint directory)") from None
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{ckpt / WEIGHTS}: not a readable safetensors file ({e})") from None
    if weights_step != str(config["step"]):
        raise CheckpointError(f"{ckpt}: weights are from step {weights_step} but config.json from step "
                              f"{config['step']} (a save was interrupted)")
    manifest_sha = hashlib.sha256((ckpt / MANIFEST).read_bytes()).hexdigest() if (ckpt / MANIFEST).exists() else None
    if manifest_sha != config["data"].get("manifest_sha256"):
        raise CheckpointError(f"{ckpt / MANIFEST}: missing or not the manifest config.json was saved with")
    _check_files(ckpt, config)
    return config


def _check_files(ckpt: Path, config: dict) -> None:
    """Every file's sha256 against config.json's record (checkpoints saved before checksums warn)."""
    recorded = config.get("files")
    if recorded is None:
        warnings.warn(f"{ckpt / CONFIG}: no checksums recorded (saved by an older nanocodec): files not verified", stacklevel=4)
        return
    if not isinstance(recorded, dict) or set(recorded) != set(CHECKSUMMED):
        raise CheckpointError(f"{ckpt / CONFIG}: 'files' should hold the sha256 of {', '.join(CHECKSUMMED)}")
    for name in CHECKSUMMED:
        try:
            actual = sha256(ckpt / name)
        except FileNotFoundError:
            raise CheckpointError(f"{ckpt / name}: missing (not a complete checkpoint directory)") from None
        if actual != recorded[name]:
            raise CheckpointError(f"{ckpt / name}: sha256 {actual[:12]}... differs from the {recorded[name][:12]}... "
                                  f"config.json recorded at the save: the file is corrupt or was changed")


def _model_config(ckpt: Path, config: dict) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(config["model"]) - known
    if unknown:
        raise CheckpointError(f"{ckpt / CONFIG}: unknown model fields {sorted(unknown)}")
    try:
        return ModelConfig(**config["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt / CONFIG}: invalid model config ({e})") from None


def _load_weights(ckpt: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        weights = load_file(ckpt / WEIGHTS, device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{ckpt / WEIGHTS}: not a readable safetensors file ({e})") from None
    bad = _broken(weights)
    if bad:  # checksums hold for a file saved broken (an old or imported one): refuse it all the same
        raise CheckpointError(f"{ckpt / WEIGHTS}: {bad}; use an earlier checkpoint")
    return weights


def _load_state(ckpt: Path, step: int) -> dict:
    try:
        # mmap: processes that only need the small entries never read the optimizer tensors.
        state = torch.load(ckpt / STATE, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt / STATE}: missing (not a complete checkpoint directory)") from None
    except Exception as e:  # torch.load raises many types on corrupt files; all mean the same here
        raise CheckpointError(f"{ckpt / STATE}: not a readable training state ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("step") != step:
        raise CheckpointError(f"{ckpt / STATE}: not the training state of step {step} (a save was interrupted)")
    return state


def _is_complete(ckpt: Path) -> bool:
    try:
        _load_state(ckpt, _read_config(ckpt)["step"])
    except CheckpointError:
        return False
    return True


def _first_good(ckpt_dir: str | os.PathLike, load):
    """`load(dir)` on the checkpoint directory, falling back to its `previous/` copy when it fails."""
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: no such checkpoint directory")
    try:
        return load(ckpt)
    except CheckpointError as error:
        if not (ckpt / PREVIOUS).is_dir():
            raise
        try:
            result = load(ckpt / PREVIOUS)
        except CheckpointError:
            raise error from None
        warnings.warn(f"{error}; using the previous checkpoint in {ckpt / PREVIOUS}", stacklevel=3)
        return result


def load_config(ckpt_dir: str | os.PathLike) -> dict:
    """config.json of the checkpoint in `ckpt_dir` (or of its intact previous copy)."""
    return _first_good(ckpt_dir, _read_config)


def load_training(ckpt_dir: str | os.PathLike, weights: bool = True) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(config, weights on CPU, state) for resuming training from `ckpt_dir`; with weights=False the
    weights come back empty (the processes that receive them by broadcast)."""

    def load(ckpt: Path):
        config = _read_config(ckpt)
        return config, _load_weights(ckpt, "cpu") if weights else {}, _load_state(ckpt, config["step"])

    return _first_good(ckpt_dir, load)


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer in a checkpoint's tokenizer.json: nanocodec BPE, or the SentencePiece model of
    a checkpoint imported from HF (nanocodec.hf.tokenizer), as the file's "format" says."""
    from nanocodec.bpe import BpeError, Tokenizer

    path = Path(path)
    try:
        kind = json.loads(path.read_text()).get("format")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a complete checkpoint directory)") from None
    except (OSError, ValueError, AttributeError):
        kind = None  # the BPE loader names the problem
    if kind == "nanocodec-sentencepiece":
        from nanocodec.hf import HfError
        from nanocodec.hf.tokenizer import SentencePieceTokenizer

        loader, errors = SentencePieceTokenizer.load, (HfError, ImportError)
    else:
        loader, errors = Tokenizer.load, (BpeError,)
    try:
        return loader(path)
    except errors as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_for_inference(ckpt_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Bundle:
    """The trained model on `device` in eval mode, with its tokenizer, config and data manifest."""
    def load(ckpt: Path) -> Bundle:
        config = _read_config(ckpt)
        model_config = _model_config(ckpt, config)
        weights = _load_weights(ckpt, device)
        with torch.device("meta"):
            model = Llama(model_config)
        try:
            model.load_state_dict(weights, strict=True, assign=True)
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt / WEIGHTS}: weights do not fit the model in config.json ({e})") from None
        model.init_rope()
        tokenizer = load_tokenizer(ckpt / TOKENIZER)
        if tokenizer.vocab_size > model_config.vocab_size:
            raise CheckpointError(f"{ckpt / TOKENIZER}: {tokenizer.vocab_size} tokens, "
                                  f"but the model knows only {model_config.vocab_size}")
        return Bundle(model.eval(), tokenizer, config, _read_json(ckpt / MANIFEST))

    return _first_good(ckpt_dir, load)
