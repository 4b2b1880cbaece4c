"""What every benchmark module shares: the timing rule (the fastest of several runs), the cost of a
validator's clone()+feed(), and, for the modules that time torch, the run-wide --threads and
--device options of the entry points."""
from __future__ import annotations

import argparse
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def best_time(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """(fastest wall time of `repeats` calls, result of the last call).

    The minimum is the run least disturbed by other load on a shared machine.
    """
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def clone_feed_cost(cases: list[tuple[object, bytes]], repeats: int = 3) -> float:
    """Mean microseconds of `validator.clone().feed(token)` over (parked validator, token) cases,
    from the fastest of `repeats` passes (the validator benches of JPEG and H.264)."""
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        for parked, token in cases:
            parked.clone().feed(token)
        best = min(best, time.perf_counter() - begin)
    return best / len(cases) * 1e6


def add_torch_options(parser: argparse.ArgumentParser) -> None:
    """--threads and --device, meaning what they mean to train.py, sample.py and nanocodec.eval."""
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: the cores this process may use; fewer when cores are busy)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


def apply_torch_options(args: argparse.Namespace) -> "torch.device":  # noqa: F821
    """Set the threads and return the device; an unusable value exits with one line."""
    from nanocodec.config import ConfigError, resolve_device, set_threads

    try:
        set_threads(args.threads)
        return resolve_device(args.device)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
