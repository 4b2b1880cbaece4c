"""Generation from a trained model: logit filters, batched KV-cache decoding, constrained decoding.

Owns: the small pure functions that turn logits into a next token (temperature, top-k, top-p,
`sample_next`), the generation loop (`generate`: ragged prompts in one batch, the model's static KV
cache, a stop at EOS per row, an optional `Constraint`), `StreamConstraint`, which keeps every row
a viable prefix of a valid stream with one incremental validator per row (`JpegConstraint`: with
`nanocodec.huffman.Validator`), `prompt_problem` (does a prompt leave room in the context), and
`complete`, which turns codec-byte prompts into whole streams checked by the codec's validator.
Does not own: which validator a codec has and how it checks streams (nanocodec.codecs), loading
checkpoints (nanocodec.checkpoint), prompts and files on disk (sample.py), metrics (nanocodec.eval).

Ragged prompts follow the LLaMA reference generator: the shortest prompt is prefilled for every row,
and rows with a longer prompt are fed their own prompt tokens through the decode steps instead of
samples, so no attention mask or padding is needed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import torch
from tqdm import tqdm

from nanocodec.codecs import JPEG, Codec, codec_for

# The paper's sampling defaults (section 5: top-p 0.9 and top-k 40, at temperature 1): the one
# definition sample.py, nanocodec.eval, train.py's samples.png and nanocodec.hf's exports start from.
PAPER_SAMPLING = {"temperature": 1.0, "top_k": 40, "top_p": 0.9}


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits divided by a positive temperature (1 leaves them unchanged)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to scale logits, got {temperature} (use 0 only for greedy sampling)")
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits with all but the k largest of each row set to -inf; k <= 0 or k >= V keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p.

    The most likely token is always kept; p >= 1 keeps all.
    """
    if p >= 1.0:
        return logits
    if p <= 0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # A token goes when the tokens ranked above it already hold mass p.
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= p
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def filtered_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The sampling distribution of each row: temperature, then top-k, then top-p, then softmax.

    Temperature 0 means greedy: a one-hot distribution on the argmax.
    """
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    logits = top_p_filter(top_k_filter(apply_temperature(logits, temperature), top_k), top_p)
    return logits.softmax(dim=-1)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of `logits` (B, V): greedy at temperature 0, else filtered sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filtered_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Constraint:
    """What a constrained sampler asks about each row; the default allows everything.

    `accept(row, token)` answers whether `token` may come next and, when it may, records it as that
    row's next token. `forced(row)` names a token that must come next (or None).
    """

    def accept(self, row: int, token: int) -> bool:
        return True

    def forced(self, row: int) -> int | None:
        return None


class StreamValidator(Protocol):
    """What `StreamConstraint` needs of a codec's incremental validator (a fresh one: no bytes yet)."""

    def feed(self, chunk: bytes) -> bool: ...  # append; False once no continuation can make the bytes valid
    def clone(self) -> StreamValidator: ...
    @property
    def complete(self) -> bool: ...  # the bytes so far are a whole valid stream: EOS may come
    @property
    def done(self) -> bool: ...  # complete, and nothing more may follow: EOS must come


class StreamConstraint(Constraint):
    """Keep each row a viable prefix of a valid stream, and let it end with EOS once it is complete.

    `validator` is the class of the codec's incremental validator (`StreamValidator`), one per row.
    `prefixes[row]` holds the codec bytes already in that row's prompt (BOS excluded). `header`, when
    given, pins the start of every stream to these bytes (e.g. the headers through SOS of the
    checkpoint's image size), so even an untrained model yields images of the trained size. `stream`
    names the format in errors. EOS may come once the stream is complete and the row has added a
    nonzero byte to its prompt: a video prompt of whole pictures is complete already, and zero bytes
    after it are padding, so its continuation must add a picture first.
    """

    def __init__(self, validator: type[StreamValidator], tokenizer, prefixes: Sequence[bytes], header: bytes = b"",
                 stream: str = "codec") -> None:
        self.eos_id = tokenizer.eos_id
        specials = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
        self.token_bytes = [b"" if i in specials else tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
        self.header = bytes(header)
        self.validators = []
        self.lengths = []
        self.starts = []  # each row's validator after its prompt, for `last_complete`
        self.grown: list[bool] = []
        for row, prefix in enumerate(prefixes):
            checker = validator()
            if prefix and not checker.feed(bytes(prefix)):
                raise ValueError(f"prompt of row {row} ({len(prefix)} bytes) is not a viable prefix of a valid {stream} stream")
            if not _agrees(self.header, 0, bytes(prefix)):
                raise ValueError(f"prompt of row {row} does not start with the pinned header")
            self.validators.append(checker)
            self.lengths.append(len(prefix))
            self.starts.append(checker.clone())
            self.grown.append(False)

    def forced(self, row: int) -> int | None:
        return self.eos_id if self.validators[row].done else None

    def accept(self, row: int, token: int) -> bool:
        validator = self.validators[row]
        if token == self.eos_id:
            return self.grown[row] and validator.complete
        chunk = self.token_bytes[token]
        if not chunk or validator.done or not _agrees(self.header, self.lengths[row], chunk):
            return False
        trial = validator.clone()
        if not trial.feed(chunk):  # feed refuses any prefix that no byte could continue
            return False
        self.validators[row] = trial
        self.lengths[row] += len(chunk)
        self.grown[row] = self.grown[row] or any(chunk)
        return True

    def last_complete(self, row: int, tokens: Sequence[int]) -> int | None:
        """How many of `tokens` (the row's accepted tokens) end where its stream was last complete
        (None: nowhere, not even at its prompt). Replayed here, since `complete` may cost far more
        than a `feed`."""
        validator = self.starts[row].clone()
        last = 0 if validator.complete else None
        for taken, token in enumerate(tokens, 1):
            validator.feed(self.token_bytes[token])
            if validator.complete:
                last = taken
        return last


class JpegConstraint(StreamConstraint):
    """`StreamConstraint` for JPEG: one `nanocodec.huffman.Validator` (`JPEG.validator`) per row."""

    def __init__(self, tokenizer, prefixes: Sequence[bytes], header: bytes = b"") -> None:
        super().__init__(JPEG.validator, tokenizer, prefixes, header, stream=JPEG.name)


def _agrees(header: bytes, offset: int, chunk: bytes) -> bool:
    """Whether `chunk`, placed at `offset` of a stream, matches the pinned header where they overlap."""
    overlap = header[offset : offset + len(chunk)]
    return chunk[: len(overlap)] == overlap


def constrained_pick(
    row: int,
    logits: torch.Tensor,
    probs: torch.Tensor,
    constraint: Constraint,
    generator: torch.Generator | None,
    temperature: float,
) -> int | None:
    """Sample from `probs`, rejecting what the constraint refuses and resampling among the rest.

    When every token of the filtered distribution is refused, the search goes on in the unfiltered
    softmax of `logits / temperature` (greedy: by descending logit), then in any token left, so a
    constraint that always admits some token is always satisfied. None when no token is accepted.

    Resampling without replacement is one Gumbel-top-k order per tier (Gumbel-max: the argmax of
    log p + Gumbel noise is a sample of p, the following ones are the next draws without
    replacement). A step then costs a sort of the few tokens top-k/top-p keep, and a sort of the
    vocabulary only once all of those are refused, never one pass over the vocabulary per refused
    token (at a 32K vocabulary, a stretch of the stream can refuse thousands in a row).
    """
    logits = logits.double()
    probs = probs.double().nan_to_num(nan=0.0, posinf=0.0)
    kept = probs > 0
    finite = torch.isfinite(logits)
    # Three tiers: the filtered distribution (top-k: a few tokens), the unfiltered one, any token left;
    # a tier's scores are computed for its own tokens, and only once the tiers before it are used up.
    tiers = ((lambda: kept, lambda ids: probs[ids].log()),
             (lambda: finite & ~kept, lambda ids: logits[ids] / (temperature or 1.0)),
             (lambda: ~(finite | kept), None))
    for tier, scores_of in tiers:
        ids = tier().nonzero().squeeze(1)
        if scores_of is None:
            order = ids  # no distribution left to follow: by id
        elif temperature == 0:
            order = ids[logits[ids].argsort(descending=True, stable=True)]
        else:
            gumbel = -torch.empty(len(ids), dtype=torch.float64).exponential_(generator=generator).log()
            order = ids[(scores_of(ids) + gumbel).argsort(descending=True, stable=True)]
        for token in order.tolist():
            if constraint.accept(row, token):
                return token
    return None


@dataclass
class Generation:
    """What `generate` returns: per row the new tokens (EOS excluded) and whether EOS ended the row."""

    tokens: list[list[int]]
    finished: list[bool]
    stuck: list[bool]
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int = 0,
    banned: Iterable[int] = (),
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    constraint: Constraint | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> Generation:
    """Continue every prompt (token ids, BOS included) until EOS or `max_new_tokens` new tokens.

    Rows run in one batch through the model's KV cache (`make_cache`/`forward_cached`), or through a
    full forward of the whole prefix at every step with `use_cache=False` (the reference the cache is
    tested and benchmarked against). `banned` ids (BOS, PAD) are never sampled. Sampling happens on
    the CPU with `generator`, so a seed gives the same samples on any device. A row whose constraint
    admits no token at all stops there and is flagged `stuck`.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (BOS)")
    lengths = [len(p) for p in prompts]
    batch, start = len(prompts), min(lengths)
    context = model.config.max_seq_len
    if max(lengths) >= context:
        raise ValueError(f"a prompt of {max(lengths)} tokens leaves no room in the model's context of {context}")
    total = min(max(lengths) + max_new_tokens, context)
    limits = [min(n + max_new_tokens, total) for n in lengths]
    device = next(model.parameters()).device
    tokens = torch.full((batch, total), pad_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.as_tensor(list(prompt), dtype=torch.long)
    banned = sorted(set(banned))
    out: list[list[int]] = [[] for _ in range(batch)]
    finished, stuck = [False] * batch, [False] * batch
    sampled = 0

    model.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    cache = model.make_cache(batch, total) if use_cache else None

    def step_logits(pos: int, new: int) -> torch.Tensor:
        with autocast:
            if cache is None:
                logits, _ = model(tokens[:, :pos].to(device))
            else:
                logits = model.forward_cached(tokens[:, pos - new : pos].to(device), cache)
        return logits[:, -1].float().cpu()

    began = time.perf_counter()
    logits = step_logits(start, start)
    bar = tqdm(total=total - start, desc="sampling", unit="tok", disable=not progress, leave=False)
    for pos in range(start, total):
        live = {r for r in range(batch) if lengths[r] <= pos < limits[r] and not finished[r] and not stuck[r]}
        if banned:
            logits[:, banned] = float("-inf")
        if constraint is None:
            choice = sample_next(logits, temperature, top_k, top_p, generator).tolist()
        else:
            probs = filtered_probs(logits, temperature, top_k, top_p)
            choice = [pad_id] * batch
            for r in sorted(live):
                forced = constraint.forced(r)
                picked = forced if forced is not None else constrained_pick(r, logits[r], probs[r], constraint, generator, temperature)
                if picked is None:
                    stuck[r] = True
                else:
                    choice[r] = picked
        for r in range(batch):
            if pos < lengths[r]:
                continue  # still inside this row's prompt: its own token, not a sample
            if r in live and not stuck[r]:
                tokens[r, pos] = choice[r]
                sampled += 1
                if choice[r] == eos_id:
                    finished[r] = True
                else:
                    out[r].append(choice[r])
            else:
                tokens[r, pos] = pad_id
        bar.update(1)
        if pos + 1 == total or all(finished[r] or stuck[r] or pos + 1 >= limits[r] for r in range(batch)):
            break
        logits = step_logits(pos + 1, 1)
    bar.close()
    return Generation(out, finished, stuck, sampled, time.perf_counter() - began)


@dataclass
class Sample:
    """One finished stream: the prompt's codec bytes, the whole stream, and its validity unrepaired.

    `cut`: a constrained row that ran out of tokens (or got stuck), cut back to where its stream was
    last complete (H.264: its last whole picture).
    """

    prompt: bytes
    data: bytes
    ok: bool
    finished: bool
    cut: bool = False


@dataclass
class Completions:
    samples: list[Sample]
    new_tokens: int
    seconds: float
    retried: int  # rows generated again because the constraint admitted no token (see `complete`)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def is_valid(kind: str | Codec, data: bytes) -> bool:
    """Whether the codec's validator accepts `data` as it is (`Codec.validate`)."""
    return codec_for(kind).validate(data).ok


def prompt_problem(bundle, prefix: bytes) -> tuple[int, str | None]:
    """The prompt's length in tokens (BOS included), and why the model cannot continue it (or None)."""
    tokens = len(bundle.tokenizer.encode(prefix, bos=True))
    context = bundle.model.config.max_seq_len
    if tokens >= context:
        return tokens, f"{tokens} tokens, which fill the model's context of {context} tokens"
    return tokens, None


def complete(
    model: torch.nn.Module,
    tokenizer,
    prefixes: Sequence[bytes],
    *,
    kind: str | Codec = "jpeg",
    header: bytes = b"",
    constrain: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 16,
    retries: int = 3,
    progress: bool = False,
) -> Completions:
    """Continue each codec prefix (b"" for unconditional) into a whole stream, `batch_size` rows at a time.

    `kind` is a codec or its kind name (nanocodec.codecs). Prompts are tokenized with BOS (the split
    pattern makes a prefix cut at an MCU or NAL boundary tokenize to a prefix of the whole file's
    tokens). With `constrain` (codecs with a validator: `Codec.constraint`) every row is kept a
    viable prefix and ends exactly when the stream is complete; `header` pins the start of
    unconditional streams; a row that runs out of `max_new_tokens` or context is cut back to where
    its stream was last complete (a video to its last whole picture; `Sample.cut`). A constrained row
    can only get stuck if the validator calls a dead prefix viable; such a row is generated again, up
    to `retries` times, and counted. Every result is checked with the codec's validator.
    """
    codec = codec_for(kind)
    if constrain and codec.constraint_problem():
        raise ValueError(codec.constraint_problem())
    max_new_tokens = model.config.max_seq_len if max_new_tokens is None else max_new_tokens
    banned = (tokenizer.bos_id, tokenizer.pad_id)
    samples: list[Sample | None] = [None] * len(prefixes)
    attempts = [0] * len(prefixes)
    queue = list(range(len(prefixes)))
    new_tokens, seconds, retried = 0, 0.0, 0
    bar = tqdm(total=len(prefixes), desc="samples", unit="sample", disable=not progress)
    while queue:
        rows, queue = queue[:batch_size], queue[batch_size:]
        chunk = [bytes(prefixes[i]) for i in rows]
        prompts = [tokenizer.encode(p, bos=True) for p in chunk]
        constraint = codec.constraint(tokenizer, chunk, header) if constrain else None
        out = generate(model, prompts, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                       banned=banned, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                       constraint=constraint, progress=progress)
        new_tokens, seconds = new_tokens + out.new_tokens, seconds + out.seconds
        for row, (i, prefix, tokens, finished, stuck) in enumerate(zip(rows, chunk, out.tokens, out.finished, out.stuck)):
            attempts[i] += 1
            if stuck and attempts[i] <= retries:
                queue.append(i)
                retried += 1
                continue
            keep = constraint.last_complete(row, tokens) if constraint is not None and not finished else None
            cut = keep is not None and keep < len(tokens)
            data = prefix + tokenizer.decode(tokens[:keep] if cut else tokens)
            samples[i] = Sample(prefix, data, codec.validate(data).ok, finished, cut)
            bar.update(1)
    bar.close()
    return Completions(samples, new_tokens, seconds, retried)
