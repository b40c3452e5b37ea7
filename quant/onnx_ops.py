"""ONNX translations of the custom ops in ``ops`` (for ``torch.onnx.export(custom_translation_table=...)``).

linear_w8   MatMul(x, Cast(Transpose(W)) * scales): ONNX Runtime folds the constant product at session
            load, so the weights are float32 in memory (a 4x smaller file, float32 speed). Its faster
            route for DequantizeLinear weights (a MatMulNBits fusion at accuracy level 4) quantizes the
            activations too, which is int8-dynamic by another name, so it is not used here.
linear_a8w8 per-token asymmetric uint8 activations (``primitives.quantize_per_token``, op for op),
            MatMulInteger(uint8 x, uint8 W^T + 128, zero points 0 and 128) -> int32, minus
            zero_point * column sums of W (ONNX Runtime's MatMulInteger takes only a scalar zero point
            for x), then * x_scale * scales. Same integers as the eager reference, so the two agree to
            float32 rounding. No scheme uses it on ONNX Runtime now (int8-dynamic moved to
            ``linear_block``: MatMulInteger's uint8 x uint8 GEMV reads ~15 GB/s here, MatMulNBits ~40);
            it is the exact ONNX form of a model quantized per token, as for ExecuTorch.
            The weight is uint8 with zero point 128, not int8: on CPUs without VNNI (AVX2 only, as the
            machine this was written on) ONNX Runtime's uint8 x int8 kernel sums pairs of products in
            int16 with saturation (255 * 127 * 2 > 32767) and returns wrong integers with no error;
            the uint8 x uint8 kernel is exact and as fast.
linear_block a placeholder node ``xlstm_quant.LinearBlock(x, weight int8 (N, K) or packed 4-bit
            uint8 (N, K / 2), scales, block_size, bits)``; ``onnx_backend.lower_linear_blocks`` replaces it after export by ONNX Runtime's
            ``com.microsoft.MatMulNBits`` (accuracy level 4), packing the weight initializer to
            its uint8 layout. MatMulNBits quantizes x per block of ``block_size`` inputs,
            symmetric int8, and multiplies in integers per block: the arithmetic of
            ``ops.linear_block``, to float32 rounding (checked per graph and in the tests).
            One fused kernel per Linear (int8-dynamic and int4-dynamic), at any number of rows.
            Two things looked like a departure of its many-row path and were not: the eager
            ``127 / amax`` was computed by torch as ``reciprocal(amax) * 127`` (fixed in
            ``primitives``), and rows on a grid (an int8 embedding row through a norm whose weights
            are all exactly 1, as in an untrained model) put many activations on exact .5 ties,
            which any 1-ulp difference in the norm breaks the other way (see ``package``'s hint).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import torch
from onnx.defs import OpSchema
from onnxscript import FLOAT, INT32, UINT8
from onnxscript import opset20 as op
from onnxscript.values import Op, Opset

from .primitives import ACT_LEVELS, SCALE_EPS

PLACEHOLDER_DOMAIN = "xlstm_quant"
_SCHEMA = OpSchema(
    "LinearBlock", PLACEHOLDER_DOMAIN, 1,
    inputs=[OpSchema.FormalParameter("x", "T"), OpSchema.FormalParameter("weight", "W"),
            OpSchema.FormalParameter("scales", "T")],
    outputs=[OpSchema.FormalParameter("y", "T")],
    type_constraints=[("T", ["tensor(float)"], "float32"),
                      ("W", ["tensor(int8)", "tensor(uint8)"], "int8 (N, K), or 4-bit packed two a byte (N, K / 2)")],
    attributes=[OpSchema.Attribute("block_size", OpSchema.AttrType.INT, "inputs per block of K"),
                OpSchema.Attribute("bits", OpSchema.AttrType.INT, "weight bits, 8 or 4")],
)
_LINEAR_BLOCK = Op(Opset(PLACEHOLDER_DOMAIN, 1), "LinearBlock", _SCHEMA)  # lowered before anything runs it


def _u8(value: int):
    return onnx.helper.make_tensor("zp", onnx.TensorProto.UINT8, [], [value])


def _i32(value: int):
    return onnx.helper.make_tensor("c", onnx.TensorProto.INT32, [], [value])


def _const(value: float):
    return op.Constant(value_float=float(value))


def onnx_linear_w8(x, weight, scales, bias=None):
    """x (..., K) float, weight (N, K) int8, scales (N,) -> (..., N)."""
    w = op.Mul(op.Cast(op.Transpose(weight, perm=[1, 0]), to=FLOAT.dtype), scales)  # (K, N)
    y = op.MatMul(x, w)
    return y if bias is None else op.Add(y, bias)


def onnx_linear_a8w8(x, weight, scales, bias=None):
    """x (..., K) float, weight (N, K) int8, scales (N,) -> (..., N); activations quantized per token."""
    zero = _const(0.0)
    lo = op.Min(op.ReduceMin(x, op.Constant(value_ints=[-1]), keepdims=1), zero)  # (..., 1)
    hi = op.Max(op.ReduceMax(x, op.Constant(value_ints=[-1]), keepdims=1), zero)
    x_scale = op.Max(op.Div(op.Sub(hi, lo), _const(ACT_LEVELS)), _const(SCALE_EPS))  # (..., 1)
    zp = op.Clip(op.Neg(op.Round(op.Div(lo, x_scale))), zero, _const(ACT_LEVELS))  # (..., 1) in [0, 255]
    q = op.Cast(op.Clip(op.Add(op.Round(op.Div(x, x_scale)), zp), zero, _const(ACT_LEVELS)), to=UINT8.dtype)
    w_t = op.Transpose(weight, perm=[1, 0])  # (K, N) int8
    w_u8 = op.Cast(op.Add(op.Cast(w_t, to=INT32.dtype), op.Constant(value=_i32(128))), to=UINT8.dtype)
    acc = op.MatMulInteger(q, w_u8, op.Constant(value=_u8(0)), op.Constant(value=_u8(128)))  # (..., N) int32
    col_sum = op.ReduceSum(op.Cast(w_t, to=INT32.dtype), op.Constant(value_ints=[0]), keepdims=0)  # (N,)
    acc = op.Sub(acc, op.Mul(op.Cast(zp, to=INT32.dtype), col_sum))
    y = op.Mul(op.Mul(op.Cast(acc, to=FLOAT.dtype), x_scale), scales)
    return y if bias is None else op.Add(y, bias)


def onnx_linear_block(x, weight, scales, bias=None, block_size: int = 128, bits: int = 8):
    """x (..., K) float, weight (N, K) int8 or (N, K / 2) packed 4-bit uint8, scales (N,) or (N, nb) ->
    (..., N) (placeholder, see above)."""
    y = _LINEAR_BLOCK(x, weight, scales, block_size=block_size, bits=bits)
    return y if bias is None else op.Add(y, bias)


def translation_table() -> dict[Callable, Callable]:
    """{custom op overload: ONNX translation} for ``torch.onnx.export(..., custom_translation_table=...)``."""
    from . import ops  # noqa: F401  (registers the ops)

    return {
        torch.ops.xlstm_quant.linear_w8.default: onnx_linear_w8,
        torch.ops.xlstm_quant.linear_a8w8.default: onnx_linear_a8w8,
        torch.ops.xlstm_quant.linear_block.default: onnx_linear_block,
    }
