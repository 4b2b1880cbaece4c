"""Speed of the Triton kernels against PyTorch baselines measured in the same run:
`python -m kernels.bench [--only attention|rmsnorm|rope]`.

Owns the timing tables and nothing else: correctness lives in tests/test_kernels_*.py.
On a CUDA GPU it prints, in bf16,
  attention  TFLOP/s, forward and forward+backward, causal (FLOPs counted at half), seq 1K/4K/16K,
             head dim 64/128, against torch SDPA forced onto its flash backend;
  rmsnorm    GB/s against eager PyTorch, torch.compile of the same code, and a device-to-device copy
             of the same tensor (the bandwidth ceiling);
  rope       GB/s against eager PyTorch and torch.compile.
Each row ends with the ratios. Without CUDA it says so and exits 0.
"""
import argparse
import datetime
import time
from collections.abc import Callable

import torch

TOKENS = 16384  # tokens per batch everywhere: batch = TOKENS // seq
MODEL_DIM = 2048  # attention heads = MODEL_DIM // head_dim


def _time_ms(fn: Callable[[], object], grads: list[torch.Tensor]) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, grad_to_none=grads, return_mode="median")


def _fwd_bwd(fn: Callable[[], torch.Tensor | tuple], upstream: list[torch.Tensor]):
    def step() -> None:
        out = fn()
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(outs, upstream)

    return step


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for r in [header, *rows]:
        print("  ".join(cell.rjust(w) for cell, w in zip(r, widths)))


def bench_attention() -> None:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kernels.attention import attention_triton

    def sdpa_flash(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    rows = []
    for d in (64, 128):
        for seq in (1024, 4096, 16384):
            heads, batch = MODEL_DIM // d, TOKENS // seq
            q, k, v, do = (torch.randn(batch, heads, seq, d, device="cuda", dtype=torch.bfloat16,
                                       requires_grad=i < 3) for i in range(4))
            fwd_flops = 4 * batch * heads * seq * seq * d / 2
            for mode, flops in (("fwd", fwd_flops), ("fwd+bwd", 3.5 * fwd_flops)):
                tflops = {}
                for name, fn in (("triton", attention_triton), ("sdpa-flash", sdpa_flash)):
                    call = lambda fn=fn: fn(q, k, v)  # noqa: E731
                    step = call if mode == "fwd" else _fwd_bwd(call, [do])
                    tflops[name] = flops / _time_ms(step, [q, k, v]) / 1e9
                rows.append([str(d), str(seq), mode, f"{tflops['triton']:.0f}",
                             f"{tflops['sdpa-flash']:.0f}",
                             f"{tflops['triton'] / tflops['sdpa-flash']:.2f}x"])
    _print_table(f"attention: bf16, causal, {TOKENS} tokens/batch, {MODEL_DIM}/head_dim heads, "
                 "TFLOP/s", ["head_dim", "seq", "pass", "triton", "sdpa-flash", "triton/sdpa"],
                 rows)


def _copy_gbps(t: torch.Tensor) -> float:
    dst = torch.empty_like(t)
    return 2 * t.numel() * t.element_size() / _time_ms(lambda: dst.copy_(t), []) / 1e6


def _bandwidth_rows(providers: dict[str, Callable], inputs: list[torch.Tensor],
                    upstream: list[torch.Tensor], fwd_bytes: int, bwd_bytes: int,
                    label: list[str], copy_gbps: float) -> list[list[str]]:
    rows = []
    for mode, nbytes in (("fwd", fwd_bytes), ("fwd+bwd", fwd_bytes + bwd_bytes)):
        gbps = {}
        for name, fn in providers.items():
            call = lambda fn=fn: fn(*inputs)  # noqa: E731
            step = call if mode == "fwd" else _fwd_bwd(call, upstream)
            gbps[name] = nbytes / _time_ms(step, inputs) / 1e6
        ours = gbps["triton"]
        rows.append([*label, mode, *(f"{g:.0f}" for g in gbps.values()), f"{copy_gbps:.0f}",
                     f"{ours / gbps['eager']:.2f}x", f"{ours / gbps['compile']:.2f}x",
                     f"{ours / copy_gbps:.0%}"])
    return rows


BANDWIDTH_HEADER = ["pass", "triton", "eager", "compile", "copy", "vs eager", "vs compile",
                    "of copy"]


def bench_rmsnorm() -> None:
    from kernels.rmsnorm import rms_norm_torch, rms_norm_triton

    eps = 1e-6
    providers = {"triton": lambda x, w: rms_norm_triton(x, w, eps),
                 "eager": lambda x, w: rms_norm_torch(x, w, eps),
                 "compile": torch.compile(lambda x, w: rms_norm_torch(x, w, eps), dynamic=False)}
    rows = []
    for hidden in (2048, 4096, 8192):
        x = torch.randn(TOKENS, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn_like(x)
        nbytes = x.numel() * x.element_size()
        # Forward reads x, writes y; backward reads x and dy, writes dx (weight traffic is noise).
        rows += _bandwidth_rows(providers, [x, w], [dy], 2 * nbytes, 3 * nbytes, [str(hidden)],
                                _copy_gbps(x))
    _print_table(f"rmsnorm: bf16, {TOKENS} rows, GB/s", ["hidden", *BANDWIDTH_HEADER], rows)


def bench_rope() -> None:
    from kernels.rope import apply_rope_torch, apply_rope_triton

    providers = {"triton": apply_rope_triton, "eager": apply_rope_torch,
                 "compile": torch.compile(apply_rope_torch, dynamic=False)}
    rows = []
    d, q_heads, kv_heads = 128, 32, 8
    for seq in (2048, 8192):
        batch = TOKENS // seq
        q = torch.randn(batch, q_heads, seq, d, device="cuda", dtype=torch.bfloat16,
                        requires_grad=True)
        k = torch.randn(batch, kv_heads, seq, d, device="cuda", dtype=torch.bfloat16,
                        requires_grad=True)
        inv_freq = 1.0 / 10000 ** (torch.arange(0, d, 2, device="cuda", dtype=torch.float32) / d)
        angles = torch.outer(torch.arange(seq, device="cuda", dtype=torch.float32), inv_freq)
        emb = torch.cat((angles, angles), dim=-1)
        cos, sin = emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)
        nbytes = (q.numel() + k.numel()) * q.element_size()
        rows += _bandwidth_rows(
            {name: (lambda q, k, fn=fn: fn(q, k, cos, sin)) for name, fn in providers.items()},
            [q, k], [torch.randn_like(q), torch.randn_like(k)], 2 * nbytes, 2 * nbytes,
            [str(seq)], _copy_gbps(q))
    _print_table(f"rope: bf16, q {q_heads} heads + k {kv_heads} heads, head_dim {d}, "
                 f"{TOKENS} tokens, GB/s", ["seq", *BANDWIDTH_HEADER], rows)


BENCHES = {"attention": bench_attention, "rmsnorm": bench_rmsnorm, "rope": bench_rope}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(BENCHES), action="append",
                        help="run only this benchmark (repeatable)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels.bench needs a CUDA GPU and none is available here: nothing measured.")
        return
    import triton

    start = time.perf_counter()
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton "
          f"{triton.__version__} | {datetime.date.today().isoformat()}")
    for name in args.only or list(BENCHES):
        BENCHES[name]()
    print(f"\ntotal {time.perf_counter() - start:.0f} s (includes autotuning and torch.compile)")


if __name__ == "__main__":
    main()
