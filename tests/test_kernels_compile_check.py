"""`python -m kernels.compile_check`: every kernel compiles for sm_80 and sm_90 without spilling.

The compile runs in a subprocess without TRITON_INTERPRET (the interpreter replaces the jitted
functions that triton.compile needs). The default suite compiles one config per kernel and arch
(--quick); the full list is the slow test. Triton's cache (~/.triton/cache) makes reruns fast.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import compile_check as C

REPO = Path(__file__).resolve().parents[1]


def run_check(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "kernels.compile_check", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def assert_clean_table(done: subprocess.CompletedProcess, launches: list) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()
             if line.startswith("| ")]
    rows = [cells for cells in table if len(cells) == 9 and cells[3] in ("sm_80", "sm_90")]
    assert len(rows) == sum(2 if x.arch is None else 1 for x in launches)
    for cells in rows:
        row = " | ".join(cells)
        kernel, arch, spill, tensor_cores = cells[0], cells[3], cells[6], cells[8]
        assert spill == "0", row
        if kernel.startswith(("fwd", "bwd_dkdv", "bwd_dq")):
            assert tensor_cores == {"sm_80": "mma.sync", "sm_90": "wgmma"}[arch], row
        elif kernel.startswith("decode_split"):  # 16 query rows: below wgmma's 64, mma.sync it is
            assert tensor_cores in ("mma.sync", "wgmma"), row


def test_quick_check_compiles_clean_for_a100_and_h100():
    assert_clean_table(run_check("--quick", "--workers", "2"), C.all_launches(quick=True))


@pytest.mark.slow  # every config, dtype, head dim and causality: ~560 compiles, ~10 min on 2 cores
def test_full_check_compiles_clean_for_a100_and_h100():
    assert_clean_table(run_check("--workers", "2"), C.all_launches())


def fake(group, arch, stack=0, shared=1024, error="", tile=(64, 64)):
    launch = C.Launch("m", "k", group, "cfg", {}, dict(BLOCK_M=tile[0], BLOCK_N=tile[1]), 4, 2)
    return C.Result(launch, arch, registers=100, stack=stack, shared=shared, error=error)


def test_verdict_fails_a_row_without_a_clean_config_and_any_config_over_shared_memory():
    g = ("fwd", "bf16", 128)
    assert C.verdict([fake(g, 80), fake(g, 80, stack=64)]) == []
    assert len(C.verdict([fake(g, 80, stack=64), fake(g, 80, error="boom")])) == 1
    too_big = fake(g, 80, shared=C.SHARED_LIMIT[80] + 1)
    problems = C.verdict([fake(g, 80), too_big])
    assert len(problems) == 1 and "shared memory" in problems[0]
    assert C.verdict([fake(g, 90, shared=C.SHARED_LIMIT[80] + 1)]) == []  # H100 has more
    assert len(C.verdict([fake(g, 80, tile=(32, 32))])) == 1  # clean, but too small a tile
    assert C.verdict([fake(("fwd", "bf16", 64), 80, tile=(32, 32))]) == []


def test_refuses_to_run_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "TRITON_INTERPRET" in done.stderr
