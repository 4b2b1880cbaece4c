"""Interoperation with HuggingFace and vLLM: run the paper's released JPEG-LM, serve ours where Llamas are served.

Owns, one room each:
- `tokenizer`: `SentencePieceTokenizer`, the paper's release tokenizer (codec byte b is the
  character chr(0x2800 + b), a Braille pattern) behind the interface nanocodec's sampler,
  constraint and eval use (`encode`, `decode`, `token_bytes`, `bos_id`, `eos_id`, `pad_id`).
- `convert`: `import_checkpoint` (a HF Llama folder -> a nanocodec checkpoint, streamed shard by
  shard) and `export_checkpoint` (a nanocodec checkpoint -> a folder `transformers` and vLLM load).
- `processors`: `JpegLogitsProcessor` (our JPEG constraint inside `transformers`' `generate`) and
  `VllmJpegLogitsProcessor` (the same for vLLM).
- `__main__`: `python -m nanocodec.hf import|export`.
Does not own: the constraint itself (nanocodec.sampling.JpegConstraint over
nanocodec.huffman.Validator), checkpoint files (nanocodec.checkpoint), the model (nanocodec.model).
`transformers`, `sentencepiece` (and vLLM) are optional: `pip install -e ".[hf]"`; importing this
package needs neither, each room imports what it uses.
"""
from __future__ import annotations


class HfError(ValueError):
    """A HF folder, tokenizer model or checkpoint that cannot be converted: names it and the problem."""


_PUBLIC = {
    "SentencePieceTokenizer": "nanocodec.hf.tokenizer",
    "import_checkpoint": "nanocodec.hf.convert",
    "export_checkpoint": "nanocodec.hf.convert",
    "JpegLogitsProcessor": "nanocodec.hf.processors",
    "VllmJpegLogitsProcessor": "nanocodec.hf.processors",
}
__all__ = ["HfError", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'nanocodec.hf' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)
