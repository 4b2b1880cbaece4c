"""Offline GPU compile check: `python -m kernels.compile_check [--quick] [--arch 80 90]`.

Owns the table of what every launchable kernel costs on an A100 (sm_80) and an H100 (sm_90) without
either: each (kernel, config, dtype, head dim) that the dispatch in kernels/ can launch is compiled
with `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`, and the cubin's resource
usage is read with the `cuobjdump` bundled in the triton wheel: registers per thread, stack frame
bytes (where ptxas puts spilled registers; 0 means no spills), dynamic shared memory (Triton's
allocation), and which tensor-core instruction the matmuls lowered to (`mma.sync` on sm_80; on
sm_90 `wgmma`, or `mma.sync` for tiles under the 64 rows a warpgroup MMA takes), read from the PTX.

The launch choices come from the kernels' own modules (`kernels.attention.tuned_configs` and
`decode_config`, `kernels.rmsnorm.backward_launch`), so what is checked is what runs. Exit status
is 1 when a (kernel, dtype, head dim, arch) has no clean config (no spills, shared memory within
the chip's opt-in limit) or any config exceeds the chip's shared memory, 0 otherwise. Triton caches compiled kernels by
source hash (~/.triton/cache), so a second run only re-reads the cubins.

Does not own the kernels, their correctness (tests/test_kernels_*.py) or their speed (kernels.bench).
It must run in a process without TRITON_INTERPRET=1 (the interpreter replaces the jitted functions).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

# Opt-in shared memory per block: A100 163 KB, H100 227 KB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
TENSOR_CORE_OPS = ("wgmma", "mma.sync")  # sm_90's warpgroup MMA (M >= 64), and the sm_80 one
ARCHS = (80, 90)


@dataclass(frozen=True)
class Launch:
    """One compilable launch: a kernel, its argument types, constexprs and launch options.

    `group` names the row of the verdict (kernel, dtype, head dim): a group is clean on an arch
    when at least one of its launches is.
    """
    module: str  # e.g. "kernels.attention"
    kernel: str  # attribute name of the @triton.jit function in that module
    group: tuple[str, str, int]  # (kernel label, dtype, head dim or row length)
    config: str  # human-readable config, e.g. "128x64 w8 s3"
    signature: dict[str, str]  # every non-constexpr argument -> triton type ("*bf16", "i32", ...)
    constexprs: dict[str, object]
    num_warps: int
    num_stages: int
    aligned: tuple[str, ...] = ()  # arguments known divisible by 16 (pointers and strides)
    uses_dot: bool = True
    arch: int | None = None  # None: launched on every arch; else only there (per-arch config lists)


@dataclass
class Result:
    launch: Launch
    arch: int
    registers: int = 0
    stack: int = 0
    shared: int = 0
    tensor_cores: str = ""  # the tensor-core instruction in the PTX, "" for none
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.error and self.stack == 0 and self.shared <= SHARED_LIMIT[self.arch]


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_one(launch: Launch, arch: int) -> Result:
    """Compile `launch` for `arch` and read its resource usage from the cubin."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    result = Result(launch, arch)
    fn = getattr(importlib.import_module(launch.module), launch.kernel)
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in launch.aligned}
    src = ASTSource(fn, launch.signature, launch.constexprs, attrs)
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=launch.num_warps,
                                               num_stages=launch.num_stages))
    except Exception as e:  # a config that does not compile is a finding, not a crash
        result.error = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        return result
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+):(\d+)", usage.split("Function", 1)[-1]))
    result.registers = int(fields.get("REG", 0))
    result.stack = int(fields.get("STACK", 0)) + int(fields.get("LOCAL", 0))
    result.shared = int(compiled.metadata.shared) + int(fields.get("SHARED", 0))
    ptx = compiled.asm["ptx"]
    result.tensor_cores = next((op for op in TENSOR_CORE_OPS if op in ptx), "")
    return result


def _compile_star(args: tuple[Launch, int]) -> Result:
    return compile_one(*args)


def _signature(fn, pointers: dict[str, str], floats: tuple[str, ...],
               constexprs: dict[str, object]) -> tuple[dict[str, str], tuple[str, ...]]:
    """Argument types for `fn`: named pointers, fp32 scalars, the rest i32; plus the aligned args."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
        else:
            sig[name] = "fp32" if name in floats else "i32"
    aligned = tuple(n for n in fn.arg_names if n in pointers or n.startswith("stride"))
    return sig, aligned


def _causal(label: str, causal: bool) -> str:
    return label if causal else f"{label} (non-causal)"


def attention_launches() -> list[Launch]:
    """Forward, delta, dK/dV and dQ for every autotune config, dtype, head dim and causality."""
    import importlib

    A = importlib.import_module("kernels.attention")  # kernels.attention is also the function
    out = []
    for dtype in ("bf16", "fp16"):
        x, f = f"*{dtype}", "*fp32"
        roles = {
            "fwd": (A._attn_fwd, dict(Q=x, K=x, V=x, O=x, LSE=f)),
            "bwd_dkdv": (A._attn_bwd_dkdv, dict(Q=x, K=x, V=x, DO=x, LSE=f, DELTA=f, DK=x, DV=x)),
            "bwd_dq": (A._attn_bwd_dq, dict(Q=x, K=x, V=x, DO=x, LSE=f, DELTA=f, DQ=x)),
        }
        for d in (64, 128):
            for label, (fn, pointers) in roles.items():
                for arch in ARCHS:
                    for cfg in A.tuned_configs(label, arch, d):
                        for causal in (True, False):
                            consts = dict(CAUSAL=causal, HEAD_DIM=d, PRECISION="tf32", **cfg.kwargs)
                            sig, aligned = _signature(fn, pointers, ("qk_scale", "scale"), consts)
                            name = f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']} " \
                                   f"w{cfg.num_warps} s{cfg.num_stages}"
                            out.append(Launch("kernels.attention", fn.__name__,
                                              (_causal(label, causal), dtype, d),
                                              name, sig, consts, cfg.num_warps, cfg.num_stages,
                                              aligned, arch=arch))
            consts = dict(BLOCK_M=A.DELTA_BLOCK, HEAD_DIM=d)
            sig, aligned = _signature(A._attn_bwd_delta, dict(O=x, DO=x, DELTA=f), (), consts)
            out.append(Launch("kernels.attention", "_attn_bwd_delta", ("bwd_delta", dtype, d),
                              f"{A.DELTA_BLOCK} w4", sig, consts, 4, 3, aligned, uses_dot=False))
    return out


def decode_launches() -> list[Launch]:
    """The split-K kernel for every row count a decode step can pack, and the merge kernel."""
    import importlib

    import triton

    A = importlib.import_module("kernels.attention")
    out = []
    for dtype in ("bf16", "fp16"):
        x, f = f"*{dtype}", "*fp32"
        for d in (64, 128):
            for arch in ARCHS:
                block_m = 16
                while block_m <= A.DECODE_MAX_ROWS:
                    block_n, warps, stages = A.decode_config(block_m, d, arch)
                    for causal in (True, False):
                        consts = dict(CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n,
                                      HEAD_DIM=d, PRECISION="tf32")
                        sig, aligned = _signature(A._attn_decode_split,
                                                  dict(Q=x, K=x, V=x, O_PART=f, LSE_PART=f),
                                                  ("qk_scale",), consts)
                        out.append(Launch("kernels.attention", "_attn_decode_split",
                                          (_causal("decode_split", causal), dtype, d),
                                          f"{block_m}x{block_n} w{warps} s{stages}", sig, consts,
                                          warps, stages, aligned, arch=arch))
                    block_m *= 2
            block_s = triton.next_power_of_2(A.DECODE_MAX_SPLITS)
            consts = dict(BLOCK_M=A.DECODE_MAX_ROWS, BLOCK_S=block_s, CHUNK=A.COMBINE_CHUNK,
                          HEAD_DIM=d)
            sig, aligned = _signature(A._attn_decode_combine, dict(O_PART=f, LSE_PART=f, O=x), (),
                                      consts)
            out.append(Launch("kernels.attention", "_attn_decode_combine",
                              ("decode_combine", dtype, d), f"{block_s} splits w4", sig, consts,
                              4, 1, aligned, uses_dot=False))
    return out


def rmsnorm_launches() -> list[Launch]:
    """Forward and backward for every row length the kernels take, in blocks of powers of two."""
    from kernels import rmsnorm as R

    out = []
    for dtype in ("bf16", "fp16"):
        x, f = f"*{dtype}", "*fp32"
        block = 128
        while block <= R.MAX_COLS:
            forward = (R._rms_norm_fwd, dict(BLOCK=block), R._num_warps(block))
            for (fn, consts, w), pointers in ((forward, dict(X=x, W=f, Y=x, RSTD=f)),
                                              (R.backward_launch(block), dict(DY=x, X=x, W=f, RSTD=f, DX=x, DW_PARTIAL=f))):
                sig, aligned = _signature(fn, pointers, ("eps",), consts)
                label = "rms_norm_fwd" if fn is R._rms_norm_fwd else "rms_norm_bwd"
                out.append(Launch("kernels.rmsnorm", fn.__name__, (label, dtype, block),
                                  f"{fn.__name__.removeprefix('_')} w{w}", sig, consts, w, 3,
                                  aligned, uses_dot=False))
            block *= 2
    return out


def rope_launches() -> list[Launch]:
    """The rotation, forward and backward, with and without positions, every token block."""
    from kernels import rope as P

    out = []
    for dtype in ("bf16", "fp16"):
        x = f"*{dtype}"
        pointers = dict(Q=x, K=x, QO=x, KO=x, COS="*fp32", SIN="*fp32", POS="*i64")
        for d in (64, 128):
            half = d // 2
            for block_t in P.token_blocks(half):
                for has_pos in (False, True):
                    for backward in (False, True):
                        consts = dict(HALF=half, BLOCK_HALF=half, BLOCK_T=block_t,
                                      HAS_POS=has_pos, BACKWARD=backward)
                        sig, aligned = _signature(P._rope_kernel, pointers, (), consts)
                        out.append(Launch("kernels.rope", "_rope_kernel", ("rope", dtype, d),
                                          f"T{block_t}{' pos' if has_pos else ''}"
                                          f"{' bwd' if backward else ''} w4", sig, consts, 4, 3,
                                          aligned, uses_dot=False))
    return out


def all_launches(quick: bool = False) -> list[Launch]:
    """Every launch the dispatch can make. `quick`: one launch per kernel and arch, the first
    config of its list, causal, bf16, at the largest size (head dim 128, rows of 16384)."""
    launches = [*attention_launches(), *decode_launches(), *rmsnorm_launches(), *rope_launches()]
    if not quick:
        return launches
    first: dict[tuple, Launch] = {}
    for x in launches:
        largest = 16384 if x.group[0].startswith("rms") else 128
        if x.group[1] == "bf16" and x.group[2] == largest and "non-causal" not in x.group[0]:
            first.setdefault((x.group, x.arch), x)
    return list(first.values())


def run(launches: list[Launch], archs: tuple[int, ...], workers: int) -> list[Result]:
    from tqdm import tqdm

    jobs = [(x, a) for x in launches for a in archs if x.arch in (None, a)]
    bar = dict(total=len(jobs), desc="compiling", unit="kernel", file=sys.stderr)
    if workers <= 1:
        return [compile_one(*j) for j in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(_compile_star, jobs, chunksize=1), **bar))


def verdict(results: list[Result]) -> list[str]:
    """One line per failure: a group with no clean config, or a config over shared memory."""
    problems = []
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        groups.setdefault((*r.launch.group, r.arch), []).append(r)
        if r.shared > SHARED_LIMIT[r.arch]:
            problems.append(f"{r.launch.group[0]} {r.launch.config} {r.launch.group[1]} "
                            f"d{r.launch.group[2]} sm_{r.arch}: {r.shared} B of shared memory, "
                            f"limit {SHARED_LIMIT[r.arch]}")
    for (name, dtype, size, arch), rs in groups.items():
        if not any(r.clean and _flash_sized(r) for r in rs):
            problems.append(f"{name} {dtype} d{size} sm_{arch}: no clean config with a "
                            f"FlashAttention-sized tile ({', '.join(_cell(r) for r in rs)})")
    return problems


# At head dim 128 the training kernels must keep tiles of at least 64 x 32 elements: shrinking them
# until nothing spills would trade the spills for memory traffic.
MIN_TILE = 64 * 32
TILED = ("fwd", "bwd_dkdv", "bwd_dq")


def _flash_sized(r: Result) -> bool:
    c = r.launch.constexprs
    if not r.launch.group[0].startswith(TILED) or r.launch.group[2] < 128:
        return True
    return c["BLOCK_M"] * c["BLOCK_N"] >= MIN_TILE


def _cell(r: Result) -> str:
    if r.error:
        return f"{r.launch.config}: ERROR {r.error}"
    tc = "" if not r.launch.uses_dot else " " + (r.tensor_cores or "no-tensor-cores")
    spill = f" SPILL {r.stack} B" if r.stack else ""
    return f"{r.launch.config}: {r.registers} regs{spill} {r.shared // 1024} KB{tc}"


def print_table(results: list[Result]) -> None:
    print("| kernel | dtype | size | arch | config | registers | spill B | shared KB | tensor cores |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (r.launch.group, r.arch, r.launch.config)):
        name, dtype, size = r.launch.group
        tc = "-" if not r.launch.uses_dot else (r.tensor_cores or "NO")
        if r.error:
            print(f"| {name} | {dtype} | {size} | sm_{r.arch} | {r.launch.config} | ERROR "
                  f"{r.error} | | | |")
            continue
        print(f"| {name} | {dtype} | {size} | sm_{r.arch} | {r.launch.config} | {r.registers} | "
              f"{r.stack} | {r.shared / 1024:.0f} | {tc} |")


def summary(results: list[Result]) -> None:
    """The issue's table shape: per kernel and size, clean configs out of all, per dtype and arch."""
    cols = sorted({(r.launch.group[1], r.arch) for r in results})
    rows = sorted({(r.launch.group[0], r.launch.group[2]) for r in results})
    print("\n| kernel | size | " + " | ".join(f"{d} sm_{a}" for d, a in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name, size in rows:
        cells = []
        for dtype, arch in cols:
            rs = [r for r in results if r.launch.group == (name, dtype, size) and r.arch == arch]
            cells.append(f"{sum(r.clean for r in rs)}/{len(rs)} clean" if rs else "")
        print(f"| {name} | {size} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.compile_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="one config per kernel and arch (causal, bf16, head dim 128, rows of "
                             "16384): the test suite's run")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--kernel", default="", help="only kernels whose label contains this")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernels.compile_check: TRITON_INTERPRET=1 replaces the jitted kernels; run it "
              "without that variable (env -u TRITON_INTERPRET ...)", file=sys.stderr)
        return 2
    launches = [x for x in all_launches(args.quick) if args.kernel in x.group[0]]
    results = run(launches, tuple(args.arch), args.workers)
    print_table(results)
    summary(results)
    problems = verdict(results)
    print()
    for p in problems:
        print("FAIL", p)
    print(f"{len(results)} compiles, {sum(r.clean for r in results)} clean, "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
