"""Valid JPEGs where people already generate: our JPEG constraint as a `transformers` and a vLLM logits processor.

`JpegLogitsProcessor` goes into `model.generate(..., logits_processor=[proc])`. Each row stays a
viable prefix of a valid JPEG stream (`nanocodec.sampling.JpegConstraint`, one
`nanocodec.huffman.Validator` per row) and EOS is allowed exactly when the stream is complete.
Masking is lazy: checking every token of a 32K vocabulary against the validator at every step
would cost V feeds per row per step, so the processor draws the token itself, from the same
distribution (temperature, top-k, top-p, then softmax, as `nanocodec.sampling.filtered_probs`),
checks the drawn token, and only on a refusal draws again among the rest
(`nanocodec.sampling.constrained_pick`: sampled token first, then the rest in probability order).
It returns scores that are -inf everywhere but the chosen token, so whatever generate's own
warpers do next, it emits that token. Rejection sampling this way draws from the filtered
distribution renormalized over the valid tokens, exactly like `sample.py --constrain`.
So: give the processor the sampling settings (it reads generation_config.json by default) and call
`generate(do_sample=True)`; greedy search works too (`do_sample=False` in the processor). Beam
search does not: a row's continuation must be the processor's choice, and a mismatch raises.
`VllmJpegLogitsProcessor` is the same for vLLM's v1 logits-processor interface (import-guarded).
Does not own: the constraint (nanocodec.sampling), the tokenizers (nanocodec.hf.tokenizer,
nanocodec.bpe).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from nanocodec.hf import HfError
from nanocodec.codecs import JPEG
from nanocodec.sampling import JpegConstraint, constrained_pick, filtered_probs

# HF GenerationConfig's defaults, for what a folder's generation_config.json leaves out (top-k 50 and
# top-p 1 are also the release script's defaults).
HF_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}


def load_folder(path: str | Path) -> tuple[object, dict, dict]:
    """(tokenizer, codec settings or {}, sampling settings) of a nanocodec checkpoint or a HF folder."""
    from nanocodec import checkpoint
    from nanocodec.hf.convert import PAPER_SAMPLING, load_hf_tokenizer

    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise HfError(f"{path}: no readable config.json ({e}); expected a nanocodec checkpoint or a HF model folder") from None
    if "version" in config and "model" in config:  # a nanocodec checkpoint
        config = checkpoint.load_config(path)
        paper = {k: PAPER_SAMPLING[k] for k in HF_DEFAULTS}
        return checkpoint.load_tokenizer(path / checkpoint.TOKENIZER), config.get("codec", {}), paper
    tokenizer = load_hf_tokenizer(path, config.get("vocab_size"))
    sampling = dict(HF_DEFAULTS)
    if (path / "generation_config.json").is_file():
        generation = json.loads((path / "generation_config.json").read_text())
        sampling.update({k: generation[k] for k in HF_DEFAULTS if generation.get(k) is not None})
    return tokenizer, (config.get("nanocodec") or {}).get("codec", {}), sampling


def _settings(do_sample: bool, temperature: float, top_k: int, top_p: float) -> dict:
    """What `choose` samples with; greedy search is temperature 0."""
    return {"temperature": temperature if do_sample else 0.0, "top_k": top_k, "top_p": top_p}


def choose(constraint: JpegConstraint, row: int, logits: torch.Tensor, s: dict, generator: torch.Generator | None) -> int | None:
    """The constrained next token of `row` from its logits (V,): forced EOS, else a lazy constrained draw."""
    forced = constraint.forced(row)
    if forced is not None:
        return forced
    logits = logits.float().cpu()
    probs = filtered_probs(logits[None], s["temperature"], s["top_k"], s["top_p"])[0]
    return constrained_pick(row, logits, probs, constraint, generator, s["temperature"])


try:
    from transformers import LogitsProcessor as _HFLogitsProcessor
except ImportError:  # transformers is optional: the class still exists, and says what to install when used
    class _HFLogitsProcessor:  # type: ignore[no-redef]
        def __init__(self, *args, **kwargs) -> None:
            raise ImportError('JpegLogitsProcessor needs transformers: pip install -e ".[hf]"')


class JpegLogitsProcessor(_HFLogitsProcessor):
    """Keep every row of `model.generate` a viable JPEG prefix; see the module docstring.

    `prompts[i]` holds the codec bytes of row i's prompt (BOS excluded); with fewer prompts than rows
    (num_return_sequences) each prompt serves consecutive rows, as generate expands them. None:
    decode each row's prompt from the first step's input_ids. `header` pins the headers of every
    stream (from_pretrained pins those of the recorded codec settings, when the folder has them).
    """

    def __init__(self, tokenizer, prompts: Sequence[bytes] | None = None, *, header: bytes = b"",
                 do_sample: bool = True, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        self.tokenizer, self.header, self.generator = tokenizer, bytes(header), generator
        self.prompts = None if prompts is None else [bytes(p) for p in prompts]
        self.settings = _settings(do_sample, temperature, top_k, top_p)
        self.constraint: JpegConstraint | None = None
        self.picked: list[int | None] = []
        self.stuck: list[bool] = []

    @classmethod
    def from_pretrained(cls, path: str | Path, prompts: Sequence[bytes] | None = None, *, pin_header: bool = True,
                        do_sample: bool = True, temperature: float | None = None, top_k: int | None = None,
                        top_p: float | None = None, generator: torch.Generator | None = None) -> "JpegLogitsProcessor":
        """From a HF folder (ours or the release) or a nanocodec checkpoint. Sampling settings not
        given come from its generation_config.json (else HF's defaults; a checkpoint: the paper's
        top-k 40 / top-p 0.9); it samples unless do_sample=False, as the paper and the release do."""
        tokenizer, codec, sampling = load_folder(path)
        given = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        s = {**sampling, **{k: v for k, v in given.items() if v is not None}}
        header = JPEG.from_settings(codec).header() if pin_header and "size" in codec else b""
        return cls(tokenizer, prompts, header=header, do_sample=do_sample, generator=generator, **s)

    def decode(self, ids) -> bytes:
        """The codec bytes of a generated row (prompt included; BOS, EOS and padding dropped)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tokenizer.decode(ids)

    def _start(self, input_ids: torch.Tensor) -> None:
        rows = input_ids.shape[0]
        if self.prompts is None:
            prompts = [self.tokenizer.decode(row.tolist()) for row in input_ids]
        else:
            if not self.prompts or rows % len(self.prompts):
                raise HfError(f"generate runs {rows} rows but the processor got {len(self.prompts)} prompts")
            prompts = [p for p in self.prompts for _ in range(rows // len(self.prompts))]
        self.constraint = JpegConstraint(self.tokenizer, prompts, self.header)
        self.picked, self.stuck = [None] * rows, [False] * rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.constraint is None:
            self._start(input_ids)
        elif input_ids.shape[0] != len(self.picked):
            raise HfError(f"generate now runs {input_ids.shape[0]} rows, not {len(self.picked)}: beam search is not supported")
        eos, vocab = self.tokenizer.eos_id, self.tokenizer.vocab_size
        out = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            last = self.picked[row]
            if last == eos or self.stuck[row]:
                out[row, eos] = 0.0  # a finished row: generate pads it, any finite score will do
                continue
            if last is not None and int(input_ids[row, -1]) != last:
                raise HfError(f"row {row}: generate continued with token {int(input_ids[row, -1])}, not the constrained "
                              f"choice {last}; put JpegLogitsProcessor last and sample or search greedily (no beams)")
            token = choose(self.constraint, row, scores[row, :vocab], self.settings, self.generator)
            if token is None:  # no token continues the stream (the validator called a dead prefix viable)
                self.stuck[row], token = True, eos
            out[row, token] = 0.0
            self.picked[row] = token
        return out


# ----------------------------------------------------------------------------- vLLM


class _VllmRequest:
    """One vLLM request's constraint: `(prompt_ids, output_ids, logits) -> logits` with one token finite."""

    def __init__(self, tokenizer, header: bytes, settings: dict, seed: int | None) -> None:
        self.tokenizer, self.header, self.settings = tokenizer, header, settings
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.constraint: JpegConstraint | None = None
        self.fed, self.last = 0, None

    def __call__(self, prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if self.constraint is None:
            self.constraint = JpegConstraint(self.tokenizer, [self.tokenizer.decode(prompt_ids)], self.header)
        new = list(output_ids[self.fed:])
        if new != ([self.last] if self.last is not None else []):  # each step must emit the token chosen last
            raise HfError(f"vLLM emitted {new} where the JPEG constraint chose {self.last}: disable speculative decoding")
        self.fed = len(output_ids)
        vocab = self.tokenizer.vocab_size
        token = choose(self.constraint, 0, logits[:vocab], self.settings, self.generator)
        token = self.tokenizer.eos_id if token is None else token
        self.last = token
        out = torch.full_like(logits, float("-inf"))
        out[token] = 0.0
        return out


try:
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor as _VllmAdapter
except ImportError:  # vLLM is optional (and needs a GPU)
    _VllmAdapter = None

if _VllmAdapter is not None:

    class VllmJpegLogitsProcessor(_VllmAdapter):
        """vLLM (v1 engine) logits processor: `LLM(model=HF_DIR, logits_processors=[VllmJpegLogitsProcessor])`.

        Applies to requests whose `SamplingParams(extra_args={"jpeg": True})`; it samples with their
        temperature / top_k / top_p / seed itself (vLLM applies those after logits processors, and
        keeps the one token left finite).
        """

        def __init__(self, vllm_config, device, is_pin_memory: bool) -> None:
            super().__init__(vllm_config, device, is_pin_memory)
            self.tokenizer, codec, _ = load_folder(vllm_config.model_config.model)
            self.header = JPEG.from_settings(codec).header() if "size" in codec else b""

        def is_argmax_invariant(self) -> bool:
            return False

        def new_req_logits_processor(self, params):
            if not (params.extra_args or {}).get("jpeg"):
                return None
            settings = _settings(params.temperature > 0, params.temperature, max(params.top_k, 0), params.top_p)
            return _VllmRequest(self.tokenizer, self.header, settings, params.seed)
else:

    class VllmJpegLogitsProcessor:  # type: ignore[no-redef]
        def __init__(self, *args, **kwargs) -> None:
            raise ImportError("VllmJpegLogitsProcessor needs vLLM (pip install vllm, on a GPU machine)")
