"""Test-wide setup: the Triton interpreter on CPU, and the hypothesis profile."""
import os

import torch

if not torch.cuda.is_available():
    # Must happen before any kernel module imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
