"""Host-side helpers the kernel files share: the stride rule of their launches and the interpreter
check.

Owns `last_dim_contiguous` (every kernel indexes the last dimension with stride 1 and takes the
others as arguments, so only a strided last dimension needs a copy) and `interpreted` (whether a
launch runs in Triton's CPU interpreter, where launches pick small fixed blocks and program
counts). Does not own dispatch between the Triton and torch paths (kernels/__init__.py) nor any
kernel.
"""
import os

import torch


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """t itself when its last dimension has stride 1, else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def interpreted(t: torch.Tensor) -> bool:
    """True when kernels launched on t run in the CPU interpreter (a CPU tensor, or
    TRITON_INTERPRET=1 on a GPU machine)."""
    return not t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
