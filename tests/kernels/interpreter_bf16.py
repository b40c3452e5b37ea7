"""Test-only fixes for Triton's CPU interpreter (3.9) and bfloat16, so CI can run the bf16 kernels.

1. ``tl.dot`` on bfloat16 tiles: the interpreter keeps bfloat16 tensors as their raw uint16 bits
   (numpy has no bfloat16) and its ``create_dot`` hands those straight to ``np.matmul``: an integer
   product of bit patterns, wrong by orders of magnitude with no error. The patch widens bfloat16
   operands to float32 first. A bf16 x bf16 product is exact in float32 and tensor cores accumulate
   in float32, so this is what the GPU computes, up to summation order.
2. ``x.to(tl.bfloat16)`` from float32: the interpreter truncates the mantissa (round toward zero),
   where the GPU rounds to nearest even; truncation's bias doubled the kernels' bf16 errors. The patch
   rounds to nearest even (through torch's own conversion).
Loads and stores of bfloat16 are right as they are. The kernels themselves are untouched.
"""

from __future__ import annotations

import numpy as np


def _widen(handle):
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    if handle.dtype != tl.bfloat16:
        return handle
    bits = np.ascontiguousarray(handle.data).astype(np.uint32) << 16
    return TensorHandle(bits.view(np.float32), tl.float32)


def _f32_to_bf16_bits(data: np.ndarray) -> np.ndarray:
    import torch

    as_f32 = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    return as_f32.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def patch_interpreter_bf16() -> None:
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    if getattr(InterpreterBuilder.create_dot, "_bf16_patched", False):
        return
    original_dot = InterpreterBuilder.create_dot
    original_cast = InterpreterBuilder.cast_impl

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original_dot(self, _widen(a), _widen(b), d, input_precision, max_num_imprecise_acc)

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return TensorHandle(_f32_to_bf16_bits(src.data), tl.bfloat16)
        return original_cast(self, src, dst_type)

    create_dot._bf16_patched = True
    InterpreterBuilder.create_dot = create_dot
    InterpreterBuilder.cast_impl = cast_impl

