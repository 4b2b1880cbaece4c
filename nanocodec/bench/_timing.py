"""The one timing rule every benchmark module shares: the fastest of several runs."""
from __future__ import annotations

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
