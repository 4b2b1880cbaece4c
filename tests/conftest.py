"""Test-wide setup: the Triton interpreter on CPU, the hypothesis profile, shared fixtures."""
import os

import torch

if not torch.cuda.is_available():
    # Must happen before any kernel module imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Under CI (CI=true) the examples are derandomized, so a landing never hangs on a lucky draw and a
# failure there reproduces; developers' runs keep exploring new examples each time.
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("CI") == "true",
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def poison(monkeypatch):
    """Fill every torch.empty / empty_like with NaN, so any element a kernel never writes shows."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def nan(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: nan(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: nan(real_empty_like(*a, **kw)))


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one thread (`pytestmark = pytest.mark.usefixtures("one_thread")`).

    Tiny matmuls gain nothing from threads, and on a loaded machine OpenMP barriers make them 30x
    slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
