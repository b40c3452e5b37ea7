"""Helpers shared by the Triton kernels' launchers: input checks, block picking, device rules.

Nothing here imports Triton, so `xlstm_edge.kernels.dispatch` can ask these questions on a machine
without it.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_available() -> bool:
    """True when the `triton` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def check_triton_device(name: str, x: Tensor) -> None:
    """Raise unless `x` lives where a Triton kernel can run: CUDA, or CPU under the interpreter."""
    if not triton_available():
        raise RuntimeError(f"{name}: the Triton backend needs the `triton` package, which is not installed")
    if x.device.type == "cuda":
        return
    if x.device.type == "cpu" and interpreter_on():
        return
    raise ValueError(
        f"{name}: Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors); got device {x.device}"
    )


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision: exact fp32 products for fp32 inputs (no TF32), default otherwise."""
    return "ieee" if dtype == torch.float32 else "tf32"


def pick_block(dim: int, cap: int = 64) -> int:
    """The largest power of two <= cap that divides `dim` (dims are multiples of 16, so >= 16)."""
    block = cap
    while block > 16 and dim % block:
        block //= 2
    if dim % block:
        raise ValueError(f"dimension {dim} is not a multiple of 16")
    return block


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_shape(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def check_float(name: str, t: Tensor) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
