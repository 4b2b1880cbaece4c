"""HF Llama folders <-> nanocodec checkpoints, streamed tensor by tensor.

Import (`import_checkpoint`) reads a HF `LlamaForCausalLM` folder: config.json, weights from
model.safetensors, model-*.safetensors + index, pytorch_model.bin or pytorch_model-*.bin + index
(torch.load with weights_only=True and mmap), in bf16, fp16 or fp32, and the SentencePiece
tokenizer.model (or a tokenizer.json that `export_checkpoint` wrote). It writes a normal nanocodec
checkpoint through `nanocodec.checkpoint.save_files`: step 0, the codec settings recorded as a
prepared manifest records them, config.json's "source" naming the folder.
Export (`export_checkpoint`) writes config.json (LlamaForCausalLM), model.safetensors,
generation_config.json (the paper's top-p 0.9 / top-k 40) and the tokenizer: tokenizer.json from
`nanocodec.bpe.Tokenizer.to_hf` (byte b is the character chr(b), latin-1) with
tokenizer_config.json, or, for an imported SentencePiece checkpoint, the original tokenizer.model.

Names and layouts. HF's q/k/v projections are our fused `wqkv` rows [q; k; v]; gate/up/down are
w1/w3/w2. Both models rotate RoPE pairs (i, i + head_dim/2) ("rotate_half": our tables repeat the
angles twice), so Q and K rows need no permutation either way; logits agree to float rounding.
Memory: the output file's header is laid out from the config before any weight is read; then
each source shard is mapped, its tensors are written at their offsets and dropped. Only one layer's
q, k and v wait for each other, so a 7B import never holds two copies of the model.
Does not own: the checkpoint protocol (nanocodec.checkpoint) or the tokenizer (nanocodec.hf.tokenizer).
"""
from __future__ import annotations

import json
import os
import re
import struct
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from nanocodec.codecs import JPEG
from nanocodec.files import fsync
from nanocodec.hf import HfError
from nanocodec.model import ModelConfig
from nanocodec.sampling import PAPER_SAMPLING

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SAFETENSORS_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
# The paper's JPEG settings (appendix D), recorded as a prepared manifest records them.
PAPER_CODEC = JPEG().settings()
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_PER_LAYER = {  # HF name within a layer -> ours (q/k/v go to the fused wqkv)
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
_TOP = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
        "lm_head.weight": "output.weight"}


# ----------------------------------------------------------------------------- config


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HfError(f"{path}: missing (a HF model folder has config.json beside its weights)") from None
    except (OSError, ValueError) as e:
        raise HfError(f"{path}: not readable JSON ({e})") from None


def model_config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """Our ModelConfig for a HF Llama config.json; what our model cannot express is refused by name."""
    if hf.get("model_type", "llama") != "llama":
        raise HfError(f"{where}: model_type {hf.get('model_type')!r}; only Llama models convert")
    for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if hf.get(key, ok) != ok:
            raise HfError(f"{where}: {key}={hf[key]!r}; nanocodec's Llama supports only {key}={ok!r}")
    rope = hf.get("rope_scaling") or {}
    params = hf.get("rope_parameters") or {}
    kind = rope.get("rope_type", rope.get("type")) or params.get("rope_type", "default")
    if kind != "default":
        raise HfError(f"{where}: RoPE scaling {kind!r}; nanocodec's Llama supports plain RoPE only")
    try:
        dim, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        if hf.get("head_dim") not in (None, dim // heads):
            raise HfError(f"{where}: head_dim {hf['head_dim']} is not hidden_size / num_attention_heads")
        config = ModelConfig(
            vocab_size=int(hf["vocab_size"]), dim=dim, n_layers=int(hf["num_hidden_layers"]), n_heads=heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or heads), ffn_dim=int(hf["intermediate_size"]),
            max_seq_len=int(hf.get("max_position_embeddings", 4096)),
            rope_theta=float(hf.get("rope_theta", params.get("rope_theta", 10000.0))),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)))
    except KeyError as e:
        raise HfError(f"{where}: no {e.args[0]!r} entry") from None
    except (TypeError, ValueError) as e:
        raise HfError(f"{where}: {e}") from None
    return config


def hf_config(c: ModelConfig, dtype: torch.dtype, bos_id: int, eos_id: int, pad_id: int, extra: dict) -> dict:
    """config.json of a HF LlamaForCausalLM equal to our model `c`."""
    name = next(k for k, v in DTYPES.items() if v == dtype)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.dim, "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim, "hidden_act": "silu", "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "tie_word_embeddings": False,
        "initializer_range": 0.02, "use_cache": True, "torch_dtype": name, "dtype": name,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id, **extra,
    }


# ----------------------------------------------------------------------------- streaming safetensors


class SafetensorsWriter:
    """A safetensors file laid out up front (names, shapes, one dtype) and filled in any order.

    The header goes first; `write(name, tensor)` puts each tensor at its offset, so tensors can
    arrive shard by shard and leave memory at once. Leaving the `with` block checks that every
    tensor was written.
    """

    def __init__(self, path: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, metadata: dict[str, str]):
        self.dtype, self.shapes, self.path = dtype, shapes, path
        item = torch.empty((), dtype=dtype).element_size()
        header, offset, self.offsets = {"__metadata__": metadata}, 0, {}
        for name, shape in shapes.items():
            size = item * int(torch.Size(shape).numel())
            header[name] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.offsets[name] = offset
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
        self.base, self.written = 8 + len(text), set()
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(text)) + text)
        self.file.truncate(self.base + offset)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if tuple(tensor.shape) != tuple(self.shapes[name]):
            raise HfError(f"{name}: shape {tuple(tensor.shape)}, expected {tuple(self.shapes[name])} from config.json")
        data = tensor.detach().to("cpu", self.dtype).contiguous()
        self.file.seek(self.base + self.offsets[name])
        self.file.write(data.view(torch.uint8).numpy().data if data.numel() else b"")
        self.written.add(name)

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, kind, error, trace) -> None:
        """Close the file; on a clean exit, check that every tensor was written."""
        self.file.close()
        if kind is not None:
            return
        missing = sorted(set(self.shapes) - self.written)
        if missing:
            raise HfError(f"no weights found for {len(missing)} tensors, e.g. {missing[:3]}")


# ----------------------------------------------------------------------------- reading HF weights


def weight_files(hf_dir: Path) -> list[Path]:
    """The folder's weight shards: safetensors preferred, then PyTorch .bin; an index names the shards."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (hf_dir / index).is_file():
            shards = sorted(set(_read_json(hf_dir / index).get("weight_map", {}).values()))
            missing = [s for s in shards if not (hf_dir / s).is_file()]
            if missing or not shards:
                raise HfError(f"{hf_dir / index}: names shards that are not in the folder: {missing or 'none at all'}")
            return [hf_dir / s for s in shards]
        if (hf_dir / single).is_file():
            return [hf_dir / single]
    found = sorted(p.name for p in hf_dir.glob("*.safetensors")) or sorted(p.name for p in hf_dir.glob("pytorch_model*.bin"))
    if found:
        return [hf_dir / name for name in found]
    raise HfError(f"{hf_dir}: no weights (model.safetensors, pytorch_model.bin, or sharded ones with an index)")


def _shard_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in a shard, read one at a time (safetensors) or mapped (.bin)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
            return
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the pre-1.6 (non-zip) format cannot be mapped: one shard is read whole
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except HfError:
        raise
    except Exception as e:  # torch.load and safetensors raise many types for a bad file
        raise HfError(f"{path}: not a readable weights file ({type(e).__name__}: {e})") from None
    if not isinstance(tensors, dict):
        raise HfError(f"{path}: expected a state dict, found {type(tensors).__name__}")
    while tensors:
        yield tensors.popitem()


def _first_dtype(files: list[Path]) -> torch.dtype:
    for _, t in _shard_tensors(files[0]):
        if t.is_floating_point():
            return t.dtype
    raise HfError(f"{files[0]}: holds no floating-point weights")


def _stream_import(files: list[Path], c: ModelConfig, tied: bool, writer: SafetensorsWriter) -> None:
    """Write every HF tensor of `files` under our names into `writer`, one shard at a time."""
    pending: dict[int, dict[str, torch.Tensor]] = {}  # layer -> the q/k/v seen so far
    for path in tqdm(files, desc="import", unit="shard", disable=len(files) < 2):
        for name, tensor in _shard_tensors(path):
            if name.endswith("rotary_emb.inv_freq"):  # a buffer older transformers saved; derived from the config
                continue
            if name in _TOP:
                writer.write(_TOP[name], tensor)
                if name == "model.embed_tokens.weight" and tied:
                    writer.write("output.weight", tensor)
                continue
            m = _LAYER.fullmatch(name)
            if m is None or int(m.group(1)) >= c.n_layers or (m.group(2) not in _PER_LAYER and m.group(2) not in _QKV):
                raise HfError(f"{path}: tensor {name!r} has no place in a Llama of {c.n_layers} layers")
            layer, part = int(m.group(1)), m.group(2)
            if part in _PER_LAYER:
                writer.write(f"layers.{layer}.{_PER_LAYER[part]}", tensor)
                continue
            qkv = pending.setdefault(layer, {})
            qkv[part] = tensor.to(writer.dtype)
            if len(qkv) == 3:
                writer.write(f"layers.{layer}.attention.wqkv.weight", torch.cat([qkv.pop(p) for p in _QKV]))
                del pending[layer]
    if pending:
        layer, parts = next(iter(pending.items()))
        raise HfError(f"layer {layer}: only {sorted(parts)} of q/k/v projections found in the weights")


def load_hf_tokenizer(hf_dir: Path, vocab_size: int | None = None):
    """The folder's tokenizer: SentencePiece tokenizer.model (the release), or the tokenizer.json
    with latin-1 bytes that `export_checkpoint` writes."""
    from nanocodec.hf.tokenizer import SentencePieceTokenizer

    if (hf_dir / "tokenizer.model").is_file():
        return SentencePieceTokenizer.from_file(hf_dir / "tokenizer.model", vocab_size)
    if (hf_dir / "tokenizer.json").is_file():
        return bpe_from_hf(hf_dir / "tokenizer.json")
    raise HfError(f"{hf_dir}: no tokenizer.model (SentencePiece) or tokenizer.json")


def bpe_from_hf(path: Path):
    """The nanocodec BPE tokenizer a tokenizer.json from `Tokenizer.to_hf` was written from."""
    from nanocodec import bpe

    hf = _read_json(path)
    try:
        model, pre = hf["model"], hf.get("pre_tokenizer")
        vocab = model["vocab"]
        strings = sorted(vocab, key=vocab.get)
        specials = [s for s in strings if vocab[s] >= 256 + len(model["merges"])]
        merges = [(vocab[a], vocab[b]) for a, b in (m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"])]
        split = None
        if pre is not None:
            pattern = pre["pattern"]["Regex"]
            split = next(name for name, p in bpe.SPLIT_PATTERNS.items() if bpe._oniguruma(p) == pattern)
        tokenizer = bpe.Tokenizer(merges, split=split, specials=specials)
    except (KeyError, TypeError, ValueError, StopIteration) as e:
        raise HfError(f"{path}: not a tokenizer.json written by nanocodec's Tokenizer.to_hf ({type(e).__name__}: {e})") from None
    if any(tokenizer.token_bytes(i).decode("latin-1") != s for i, s in enumerate(strings[: 256 + len(merges)])):
        raise HfError(f"{path}: its vocabulary does not spell latin-1 bytes as nanocodec's Tokenizer.to_hf writes them")
    return tokenizer


def manifest_for(tokenizer, codec: dict, source: str) -> dict:
    """A data manifest's codec and tokenizer entries for an imported model (it has no data folder)."""
    return {
        "format_version": 1, "kind": JPEG.kind, "codec": codec, "source": source,
        "tokenizer_sha256": tokenizer.sha256,
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
                      "pad_id": tokenizer.pad_id, "from": source},
    }


def import_checkpoint(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, *, codec: dict | None = None,
                      dtype: str = "auto", overwrite: bool = False) -> dict:
    """Convert the HF Llama folder `hf_dir` into a nanocodec checkpoint in `out_dir`; returns a summary."""
    from nanocodec import checkpoint

    began = time.perf_counter()
    hf_dir, out = Path(hf_dir), Path(out_dir)
    if not hf_dir.is_dir():
        raise HfError(f"{hf_dir}: no such folder (download the hub folder first; nothing is fetched here)")
    if (out / checkpoint.CONFIG).exists() and not overwrite:
        raise HfError(f"{out}: already holds a checkpoint; pass --overwrite to replace it (previous/ keeps the old one)")
    codec = dict(PAPER_CODEC, **(codec or {}))
    try:
        JPEG.from_settings(codec).check()  # settings the codec refuses fail here, before any weight is read
    except (ValueError, TypeError) as e:
        raise HfError(f"codec settings {codec}: {e}") from None
    hf = _read_json(hf_dir / "config.json")
    c = model_config_from_hf(hf, str(hf_dir / "config.json"))
    tokenizer = load_hf_tokenizer(hf_dir, c.vocab_size)
    if tokenizer.vocab_size > c.vocab_size:
        raise HfError(f"{hf_dir}: the tokenizer has {tokenizer.vocab_size} ids, the model's vocab_size is {c.vocab_size}")
    files = weight_files(hf_dir)
    out_dtype = _first_dtype(files) if dtype == "auto" else DTYPES[dtype]
    shapes = our_shapes(c)

    def write(path: Path, metadata: dict[str, str]) -> None:
        with SafetensorsWriter(path, shapes, out_dtype, metadata) as writer:
            _stream_import(files, c, bool(hf.get("tie_word_embeddings", False)), writer)

    source = str(hf_dir.resolve())
    manifest = manifest_for(tokenizer, codec, f"imported from {source}")
    checkpoint.save_files(out, write, {"imported_from": source}, step=0, model_config=asdict(c), train_config={},
                          data_path=source, manifest_text=json.dumps(manifest, indent=2) + "\n",
                          tokenizer_text=tokenizer.to_json(),
                          extra={"source": {"hf_dir": source, "weights": [p.name for p in files],
                                            "dtype": str(out_dtype).removeprefix("torch.")}})
    uncovered = tokenizer.uncovered_bytes() if hasattr(tokenizer, "uncovered_bytes") else []
    return {"out": str(out), "params": sum(torch.Size(s).numel() for s in shapes.values()), "dtype": out_dtype,
            "vocab_size": c.vocab_size, "tokenizer": repr(tokenizer), "uncovered_bytes": uncovered,
            "seconds": time.perf_counter() - began}


# ----------------------------------------------------------------------------- export


def our_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight of `Llama(c)`, from the config alone (building even a meta-device
    model costs seconds of imports; tests check this against the model)."""
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (c.vocab_size, c.dim)}
    for i in range(c.n_layers):
        shapes.update({
            f"layers.{i}.attention_norm.weight": (c.dim,),
            f"layers.{i}.attention.wqkv.weight": ((c.n_heads + 2 * c.n_kv_heads) * c.head_dim, c.dim),
            f"layers.{i}.attention.wo.weight": (c.dim, c.n_heads * c.head_dim),
            f"layers.{i}.ffn_norm.weight": (c.dim,),
            f"layers.{i}.feed_forward.w1.weight": (c.hidden_dim, c.dim),
            f"layers.{i}.feed_forward.w3.weight": (c.hidden_dim, c.dim),
            f"layers.{i}.feed_forward.w2.weight": (c.dim, c.hidden_dim),
        })
    shapes.update({"norm.weight": (c.dim,), "output.weight": (c.vocab_size, c.dim)})
    return shapes


def _hf_names(c: ModelConfig) -> Iterator[tuple[str, str, slice | None]]:
    """(HF name, our name, rows of ours) for every HF tensor of model `c`."""
    yield "model.embed_tokens.weight", "tok_embeddings.weight", None
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    for i in range(c.n_layers):
        for part, rows in zip(_QKV, (slice(0, q), slice(q, q + kv), slice(q + kv, q + 2 * kv))):
            yield f"model.layers.{i}.{part}", f"layers.{i}.attention.wqkv.weight", rows
        for hf_part, ours in _PER_LAYER.items():
            yield f"model.layers.{i}.{hf_part}", f"layers.{i}.{ours}", None
    yield "model.norm.weight", "norm.weight", None
    yield "lm_head.weight", "output.weight", None


def export_checkpoint(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Write the checkpoint in `ckpt_dir` as a HF LlamaForCausalLM folder `out_dir`; returns a summary."""
    from safetensors import safe_open

    from nanocodec import checkpoint
    from nanocodec.bpe import Tokenizer

    began = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise HfError(f"{out}: not empty; pass --overwrite to write into it")
    config = checkpoint.load_config(ckpt_dir)
    ckpt = Path(ckpt_dir)
    try:
        c = ModelConfig(**config["model"])
    except (TypeError, ValueError) as e:
        raise HfError(f"{ckpt / checkpoint.CONFIG}: invalid model config ({e})") from None
    tokenizer = checkpoint.load_tokenizer(ckpt / checkpoint.TOKENIZER)
    out.mkdir(parents=True, exist_ok=True)
    with safe_open(ckpt / checkpoint.WEIGHTS, framework="pt") as f:
        dtype = f.get_slice("output.weight").get_dtype()
        dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[dtype]
        names = list(_hf_names(c))
        shapes = {}
        for hf_name, ours, rows in names:
            shape = list(f.get_slice(ours).get_shape())
            if rows is not None:
                shape[0] = rows.stop - rows.start
            shapes[hf_name] = tuple(shape)
        with SafetensorsWriter(out / "model.safetensors.tmp", shapes, dtype, {"format": "pt"}) as writer:
            for hf_name, ours, rows in tqdm(names, desc="export", unit="tensor", leave=False):
                writer.write(hf_name, f.get_slice(ours)[rows] if rows is not None else f.get_tensor(ours))
    fsync(out / "model.safetensors.tmp")
    os.replace(out / "model.safetensors.tmp", out / "model.safetensors")
    nanocodec_entry = {"kind": config.get("kind"), "codec": config.get("codec", {}), "step": config.get("step"),
                       "tokenizer": "sentencepiece-braille" if not isinstance(tokenizer, Tokenizer) else "bpe-latin1"}
    files = {"config.json": hf_config(c, dtype, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, {"nanocodec": nanocodec_entry}),
             "generation_config.json": {"do_sample": True, **PAPER_SAMPLING, "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                                        "pad_token_id": tokenizer.pad_id, "max_length": c.max_seq_len}}
    if isinstance(tokenizer, Tokenizer):
        tokenizer.to_hf(out / "tokenizer.json")
        names_of = {i: s for s, i in tokenizer.special_ids.items()}
        files["tokenizer_config.json"] = {
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": c.max_seq_len,
            "bos_token": names_of[tokenizer.bos_id], "eos_token": names_of[tokenizer.eos_id],
            "pad_token": names_of[tokenizer.pad_id], "clean_up_tokenization_spaces": False,
            "split_special_tokens": True}  # the bytes "<eos>" in a stream are bytes, not the EOS token
    else:
        tokenizer.write_model(out / "tokenizer.model")
        sp = tokenizer.sp
        files["tokenizer_config.json"] = {
            "tokenizer_class": "LlamaTokenizer", "model_max_length": c.max_seq_len, "legacy": True,
            "add_bos_token": True, "add_eos_token": False, "bos_token": sp.id_to_piece(tokenizer.bos_id),
            "eos_token": sp.id_to_piece(tokenizer.eos_id), "unk_token": sp.id_to_piece(tokenizer.unk_id),
            "pad_token": None, "clean_up_tokenization_spaces": False}
    for name, value in files.items():
        (out / name).write_text(json.dumps(value, indent=2) + "\n")
    return {"out": str(out), "dtype": dtype, "tensors": len(names), "seconds": time.perf_counter() - began}
