"""`python -m nanocodec.hf import|export`: convert between HF Llama folders and nanocodec checkpoints.

    python -m nanocodec.hf import HF_DIR --out CKPT_DIR [--size 256 --quality 25 --subsampling 4:2:0 --restart-blocks 1]
    python -m nanocodec.hf export CKPT_DIR --out HF_DIR

Every path is local: download a hub folder first (docs/hf.md); nothing is fetched here.
"""
from __future__ import annotations

import argparse
import resource
import sys

from nanocodec.codecs import JPEG
from nanocodec.hf import HfError


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanocodec.hf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="a HF Llama folder (e.g. uwnlp/jpeg-lm-reimplementation) -> a nanocodec checkpoint")
    imp.add_argument("hf_dir")
    imp.add_argument("--out", required=True, help="checkpoint directory to write")
    paper = JPEG()
    imp.add_argument("--size", type=int, default=paper.size, help=f"image side the model was trained on (paper: {paper.size})")
    imp.add_argument("--quality", type=int, default=paper.quality, help=f"JPEG quality (paper: {paper.quality})")
    imp.add_argument("--subsampling", default=paper.subsampling, help=f"chroma subsampling (paper: {paper.subsampling})")
    imp.add_argument("--restart-blocks", type=int, default=paper.restart_blocks,
                     help=f"MCUs per restart interval (paper: {paper.restart_blocks})")
    imp.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                     help="weights' dtype in the checkpoint (auto: as in the folder)")
    imp.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    exp = sub.add_parser("export", help="a nanocodec checkpoint -> a HF LlamaForCausalLM folder")
    exp.add_argument("ckpt_dir")
    exp.add_argument("--out", required=True, help="HF folder to write")
    exp.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    args = parser.parse_args(argv)

    from nanocodec.checkpoint import CheckpointError
    from nanocodec.hf.convert import export_checkpoint, import_checkpoint

    try:
        if args.command == "import":
            codec = {"size": args.size, "quality": args.quality, "subsampling": args.subsampling,
                     "restart_blocks": args.restart_blocks}
            info = import_checkpoint(args.hf_dir, args.out, codec=codec, dtype=args.dtype, overwrite=args.overwrite)
            print(f"imported {info['params'] / 1e6:.2f}M parameters ({info['dtype']}), {info['tokenizer']} into "
                  f"{info['out']} in {info['seconds']:.1f} s, peak RSS {_peak_rss_mib():.0f} MiB")
            if info["uncovered_bytes"]:
                print(f"warning: no piece of the tokenizer holds the bytes {', '.join(f'0x{b:02x}' for b in info['uncovered_bytes'])}"
                      ": they encode through byte fallback, and constrained decoding can never write them", file=sys.stderr)
        else:
            info = export_checkpoint(args.ckpt_dir, args.out, overwrite=args.overwrite)
            print(f"exported {info['tensors']} tensors ({info['dtype']}) to {info['out']} in {info['seconds']:.1f} s, "
                  f"peak RSS {_peak_rss_mib():.0f} MiB")
    except (HfError, CheckpointError) as e:
        sys.exit(f"python -m nanocodec.hf: error: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
