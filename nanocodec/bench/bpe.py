"""Benchmark nanocodec.bpe against HuggingFace `tokenizers` on real JPEG streams.

`python -m nanocodec.bench bpe [--docs 600] [--repeats 3] [--merges 320 1024]`

Corpus: real footage, random 256x256 crops of random scale from the demo clips (nanocodec.demo),
each encoded as the paper's abbreviated q25 JPEG stream (nanocodec.jpeg). For each merge count it times, best of --repeats:
- training: our `train` (split "jpeg") vs HF's BpeTrainer on the same bytes mapped to latin-1
  characters, no pre-tokenizer, same vocabulary size, min_frequency 2;
- encoding: our `encode_batch` vs the HF tokenizer that our `to_hf` writes (same merges, same
  ids, checked), on the same documents.
Ratios below 1 for training time and above 1 for encode throughput mean we are faster.
Owns no library code; nanocodec.bpe is what it measures.
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

from tqdm import tqdm

from nanocodec import bpe, demo, jpeg
from nanocodec.bench._timing import best_time

CROP = 256


def jpeg_corpus(count: int, seed: int = 0) -> list[bytes]:
    """`count` abbreviated q25 JPEG streams of real 256x256 demo crops (nanocodec.demo)."""
    pictures = demo.render_images(demo.image_crops(count, seed), CROP)
    docs = [jpeg.encode(picture) for picture in tqdm(pictures, total=count, unit="img", desc="corpus")]
    random.Random(seed).shuffle(docs)
    return docs


def hf_train(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=[chr(i) for i in range(256)])
    tok.train_from_iterator(texts, trainer)
    return tok


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.bench bpe", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--merges", type=int, nargs="+", default=[320, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        raise SystemExit("this benchmark compares against HuggingFace tokenizers: pip install tokenizers")

    docs = jpeg_corpus(args.docs, args.seed)
    texts = [d.decode("latin-1") for d in docs]
    mb = sum(map(len, docs)) / 1e6
    print(f"corpus: {len(docs)} real {CROP}x{CROP} q25 JPEG streams, {mb:.2f} MB; "
          f"{os.cpu_count()} CPUs; best of {args.repeats}")
    columns = ["merges", "ours train", "HF train", "time ratio", "ours encode", "HF encode", "speed ratio", "bytes/token"]
    widths = [6, 19, 19, 10, 12, 12, 11, 11]
    print("  ".join(f"{c:>{w}}" for c, w in zip(columns, widths)))
    for merges in args.merges:
        ours_train, tok = best_time(lambda: bpe.train(docs, merges, split="jpeg"), args.repeats)
        hf_train_s, _ = best_time(lambda: hf_train(texts, 256 + merges), args.repeats)
        with tempfile.TemporaryDirectory() as tmp:
            tok.to_hf(Path(tmp) / "tokenizer.json")
            hf = HFTokenizer.from_file(str(Path(tmp) / "tokenizer.json"))
        ours_enc, ours_ids = best_time(lambda: tok.encode_batch(docs), args.repeats)
        hf_enc, hf_out = best_time(lambda: hf.encode_batch(texts), args.repeats)
        if any(list(a) != b.ids for a, b in zip(ours_ids, hf_out)):
            raise SystemExit(f"{merges} merges: HF and nanocodec token ids differ; the encode comparison is void")
        tokens = sum(map(len, ours_ids))
        row = [f"{len(tok.merges)}", f"{ours_train:.2f} s {mb / ours_train:.2f} MB/s", f"{hf_train_s:.2f} s {mb / hf_train_s:.2f} MB/s",
               f"{ours_train / hf_train_s:.2f}",
               f"{mb / ours_enc:.1f} MB/s", f"{mb / hf_enc:.1f} MB/s", f"{hf_enc / ours_enc:.2f}", f"{mb * 1e6 / tokens:.3f}"]
        print("  ".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    print("time ratio = ours / HF training time (< 1: we train faster); "
          "speed ratio = ours / HF encode throughput (> 1: we encode faster)")
