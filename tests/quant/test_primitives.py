"""The int8 arithmetic (per-channel weights, per-token activations) and the two quantized products,
against float64 references on fresh random inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from xlstm_edge.quant import ops
from xlstm_edge.quant.modules import Int8Embedding, Int8Linear
from xlstm_edge.quant.primitives import (
    INT4_QMAX,
    WEIGHT_QMAX,
    dequantize_per_channel,
    expand_group_scales,
    fake_quantize_per_token,
    pack_int4,
    quantize_per_block_symmetric,
    quantize_per_channel_symmetric,
    quantize_per_group_symmetric,
    quantize_per_token,
    unpack_int4,
)

from tests.conftest import rel_err


def half_step(scale: torch.Tensor) -> torch.Tensor:
    """Round to nearest lands within half a step, plus float32 rounding: x / scale and q * scale are
    float32 (relative error 2^-24 each, on values up to 255 steps), so a value a hair past a tie can
    round the other way (seed 3705384851: w / s = -102.5000028 exactly, -102.5 in float32). A wrong
    rounding rule would be off by up to a whole step."""
    return scale * (0.5 + 2 * 255 * 2.0**-24)


@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_round_trip(seed, axis):
    w = torch.randn(48, 80) * torch.rand(48, 1) * 3
    q, scale = quantize_per_channel_symmetric(w, axis=axis)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert int(q.abs().max()) == WEIGHT_QMAX
    deq = dequantize_per_channel(q, scale, axis)
    s = scale[:, None] if axis == 0 else scale[None, :]
    # round to nearest: every element within half a step of its own channel's grid
    assert bool(((deq.double() - w.double()).abs() <= half_step(s.double())).all()), f"seed {seed}"
    amax = w.abs().amax(dim=1 - axis)
    torch.testing.assert_close(scale, amax / WEIGHT_QMAX)


def test_per_channel_zero_row_and_bad_input():
    w = torch.randn(4, 16)
    w[2] = 0
    q, scale = quantize_per_channel_symmetric(w)
    assert bool((q[2] == 0).all()) and float(scale[2]) > 0
    with pytest.raises(ValueError, match="2-D"):
        quantize_per_channel_symmetric(torch.randn(3))
    with pytest.raises(TypeError, match="floating-point"):
        quantize_per_channel_symmetric(torch.ones(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="axis"):
        quantize_per_channel_symmetric(w, axis=2)


def test_per_token_grid(seed):
    x = torch.randn(7, 64) * 2 + torch.randn(7, 1)
    x[3] = x[3].abs() + 0.1  # all positive: zero must still be on the grid
    q, scale, zp = quantize_per_token(x)
    assert float(q.min()) >= 0 and float(q.max()) <= 255
    assert bool((q == q.round()).all()) and bool((zp == zp.round()).all())
    deq = (q - zp[:, None]) * scale[:, None]
    assert bool(((deq.double() - x.double()).abs() <= half_step(scale[:, None].double())).all()), f"seed {seed}"
    zero_q = torch.clamp(torch.round(torch.zeros(7, 1) / scale[:, None]) + zp[:, None], 0, 255)
    assert bool(((zero_q - zp[:, None]) == 0).all())  # 0.0 is represented exactly
    torch.testing.assert_close(fake_quantize_per_token(x), deq)


def test_linear_a8w8_is_the_integer_product(seed):
    """y = (x fake-quantized per token) @ (w dequantized)^T in float64, to float32 rounding."""
    x = torch.randn(3, 5, 96)
    w = torch.randn(40, 96) * 0.2
    bias = torch.randn(40)
    q, scale = quantize_per_channel_symmetric(w)
    y = ops.linear_a8w8(x, q, scale, bias)
    xq = fake_quantize_per_token(x.double().reshape(-1, 96).float()).double().reshape(3, 5, 96)
    ref = xq @ dequantize_per_channel(q, scale).double().t() + bias.double()
    assert y.shape == (3, 5, 40)
    assert rel_err(y, ref) < 1e-6, f"seed {seed}"
    assert rel_err(y, x.double() @ w.double().t() + bias.double()) < 3e-2  # int8 noise, not a bug


def test_linear_w8(seed):
    x = torch.randn(6, 96)
    w = torch.randn(24, 96)
    q, scale = quantize_per_channel_symmetric(w)
    y = ops.linear_w8(x, q, scale, None)
    assert rel_err(y, x.double() @ dequantize_per_channel(q, scale).double().t()) < 1e-6, f"seed {seed}"
    with pytest.raises(TypeError, match="int8"):
        ops.linear_w8(x, w, scale, None)
    with pytest.raises(ValueError, match="features"):
        ops.linear_w8(torch.randn(2, 95), q, scale, None)


@pytest.mark.parametrize("activation", ["none", "per_token"])
def test_int8_linear_module(seed, activation):
    lin = nn.Linear(64, 32, bias=True)
    mod = Int8Linear.from_linear(lin, activation)
    assert mod.weight.dtype == torch.int8 and mod.bias.dtype == torch.float32
    x = torch.randn(4, 64)
    ref = x.double() @ lin.weight.double().t() + lin.bias.double()
    assert rel_err(mod(x), ref) < (1e-2 if activation == "none" else 3e-2), f"seed {seed}"
    with pytest.raises(ValueError, match="activation"):
        Int8Linear(4, 4, activation="per_tensor")  # type: ignore[arg-type]


def test_int8_embedding(seed):
    emb = nn.Embedding(50, 24)
    mod = Int8Embedding.from_embedding(emb)
    ids = torch.randint(0, 50, (3, 9))
    assert rel_err(mod(ids), emb(ids).double()) < 1e-2, f"seed {seed}"
    torch.testing.assert_close(mod(ids), mod.dequantized_weight()[ids])


def test_per_block_symmetric_grid(seed):
    x = torch.randn(5, 200) * 3
    x[2, 128:] = 0  # an all-zero (short) block: scale 0, q 0
    q, scale = quantize_per_block_symmetric(x, 128)
    assert q.shape == x.shape and scale.shape == (5, 2) and float(scale[2, 1]) == 0
    assert bool((q == q.round()).all()) and float(q.abs().max()) == 127
    deq = q * scale.repeat_interleave(128, 1)[:, :200]
    assert bool(((deq.double() - x.double()).abs() <= half_step(scale.repeat_interleave(128, 1)[:, :200].double())).all()), f"seed {seed}"
    # near-ties where only MLAS's float32 order gives ONNX Runtime's integer (checked on a lone MatMulNBits):
    # one division 127 / amax, then one product. With 127 * (1 / amax) instead (what torch's 127.0 / tensor
    # computes) both would round the other way.
    tie = torch.tensor([[1.4104024171829224, 2.8208048343658447]])  # 63.499996 in float32
    assert quantize_per_block_symmetric(tie, 128)[0].tolist() == [[63.0, 127.0]]
    tie = torch.tensor([[1.91458737850189208984375, 3.8291747570037841796875]])  # 63.5 exactly: even
    assert quantize_per_block_symmetric(tie, 128)[0].tolist() == [[64.0, 127.0]]


def _grid_rows(rows: int, K: int) -> torch.Tensor:
    """Rows of int8-quantized values after an RMS norm (an int8 embedding row entering a block): on a
    grid, so x * (127 / amax) lands on exact .5 ties."""
    x = torch.randn(rows, K)
    x = torch.round(x / (x.abs().amax(-1, keepdim=True) / 127)) * (x.abs().amax(-1, keepdim=True) / 127)
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6)


def test_per_block_symmetric_is_mlas_float32_arithmetic(seed):
    """Against numpy float32, operation for operation: amax, 127 / amax, one product, round half even."""
    import numpy as np

    x = torch.cat([_grid_rows(40, 256), torch.randn(8, 256)])
    q, _ = quantize_per_block_symmetric(x, 32)
    xb = x.numpy().reshape(48, 8, 32)
    amax = np.abs(xb).max(-1, keepdims=True)
    ref = np.clip(np.rint(xb * (np.float32(127) / amax)), -127, 127).reshape(48, 256)
    assert np.array_equal(q.numpy(), ref), f"seed {seed}: {(q.numpy() != ref).sum()} values differ"


@pytest.mark.parametrize("bits", [8, 4])
def test_matmulnbits_quantizes_activations_as_the_reference(seed, bits):
    """A lone MatMulNBits (accuracy level 4) on identity weights returns ORT's dequantized activation: it
    equals q * scale of ``quantize_per_block_symmetric`` up to float32 noise (its zero-point correction is a
    separate float sum), never a whole step off, on grid rows too."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from xlstm_edge.quant.onnx_backend import pack_matmulnbits

    K, block = 256, 32
    packed, flat = pack_matmulnbits(np.eye(K, dtype=np.int8), np.ones(K, np.float32), block, bits)
    node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=K, N=K, bits=bits,
                            block_size=block, accuracy_level=4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, K])],
                              [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(flat, "S")])
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17),
                                                                  helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = torch.cat([_grid_rows(24, K), torch.randn(8, K)])
    got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0]).double()
    q, scale = quantize_per_block_symmetric(x, block)
    step = scale.repeat_interleave(block, 1).double()
    off = ((got - q.double() * step).abs() / step.clamp_min(1e-30)).max()
    # a different rounding is a whole step; the float32 noise of ORT's zero-point correction (128 * sum of q
    # per block for 8 bits, cancelled in a float sum) reached 0.11 of a step over 300 seeds (4 bits: 0.007)
    assert off < 0.3, f"seed {seed}: {float(off):.3f} of a step"


def test_per_group_symmetric_bf16_scales(seed):
    w = torch.randn(24, 96) * torch.rand(24, 1)
    q, scale = quantize_per_group_symmetric(w, 32, INT4_QMAX)
    assert q.dtype == torch.int8 and scale.shape == (24, 3) and int(q.abs().max()) <= INT4_QMAX
    assert bool((scale.to(torch.bfloat16).float() == scale).all())  # XNNPACK keeps 4-bit scales as bfloat16
    amax = w.reshape(24, 3, 32).abs().amax(-1)
    assert bool((scale >= amax / INT4_QMAX).all()) and bool((scale <= amax / INT4_QMAX * (1 + 2**-7)).all())
    deq = q.float() * expand_group_scales(scale, 96, 32)
    assert bool(((deq.double() - w.double()).abs() <= half_step(expand_group_scales(scale, 96, 32).double())).all()), f"seed {seed}"


@pytest.mark.parametrize(("bits", "group"), [(8, 0), (4, 32)])
def test_linear_block_is_the_blockwise_integer_product(seed, bits, group):
    """ONNX Runtime's arithmetic: x fake-quantized per block (symmetric), exact products, float64 reference."""
    x, w = torch.randn(2, 3, 160), torch.randn(40, 160) * 0.2
    q, scale = (quantize_per_group_symmetric(w, group, INT4_QMAX) if group else quantize_per_channel_symmetric(w))
    block = group or 64
    y = ops.linear_block(x, q, scale, None, block, bits)
    xq, xs = quantize_per_block_symmetric(x.reshape(6, 160), block)
    xd = (xq.double() * xs.double().repeat_interleave(block, 1)[:, :160]).reshape(2, 3, 160)
    ref = xd @ (q.double() * expand_group_scales(scale, 160, group or 160).double()).t()
    assert y.shape == (2, 3, 40) and rel_err(y, ref) < 1e-6, f"seed {seed}"
    assert rel_err(y, x.double() @ w.double().t()) < (2e-1 if bits == 4 else 3e-2)


def test_linear_token_group_is_the_integer_product(seed):
    """XNNPACK qd8-qb4w's arithmetic: x fake-quantized per token, 4-bit group weights."""
    x, w = torch.randn(4, 96), torch.randn(24, 96)
    q, scale = quantize_per_group_symmetric(w, 32, INT4_QMAX)
    y = ops.linear_a8w8_token_group(x, q, scale, None, 32)
    ref = fake_quantize_per_token(x).double() @ (q.double() * expand_group_scales(scale, 96, 32).double()).t()
    assert rel_err(y, ref) < 1e-6, f"seed {seed}"


@pytest.mark.parametrize(("bits", "group"), [(8, 0), (4, 32)])
def test_matmulnbits_packing_round_trip(bits, group):
    from xlstm_edge.quant.onnx_backend import pack_matmulnbits

    w = torch.randn(6, 80)
    q, scale = (quantize_per_group_symmetric(w, group, INT4_QMAX) if group else quantize_per_channel_symmetric(w))
    block = group or 64
    packed, flat = pack_matmulnbits(q.numpy(), scale.numpy(), block, bits)
    nb = -(-80 // block)
    assert packed.shape == (6, nb, block * bits // 8) and flat.shape == (6 * nb,)
    u = torch.from_numpy(packed.astype("int16")).reshape(6, -1)
    if bits == 4:
        u = torch.stack([u & 15, u >> 4], -1).reshape(6, -1)
    assert torch.equal(u[:, :80] - (1 << (bits - 1)), q.to(torch.int16))  # zero point 2^(bits-1)
    assert bool((u[:, 80:] == 1 << (bits - 1)).all())  # padding holds the zero point


def test_int4_linear_module(seed):
    lin = nn.Linear(64, 16)
    mod = Int8Linear.from_linear(lin, "per_token", bits=4, group_size=32)
    assert mod.scales.shape == (16, 2)
    ref = torch.randn(3, 64)
    assert rel_err(mod(ref), ref.double() @ lin.weight.double().t() + lin.bias.double()) < 2e-1, f"seed {seed}"
    with pytest.raises(ValueError, match="4-bit weights per group"):
        Int8Linear(64, 16, bits=4, group_size=0, activation="per_token")
    with pytest.raises(ValueError, match="8-bit only"):
        Int8Linear(64, 16, bits=4, group_size=32, activation="none")


def test_int4_packing_round_trip_and_layout(seed):
    """Two values a byte, value + 8, the even index low: MatMulNBits' own layout."""
    q = torch.randint(-8, 8, (5, 64), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 32)
    assert torch.equal(unpack_int4(packed), q), f"seed {seed}"
    assert torch.equal(packed[:, 0].to(torch.int16), (q[:, 0] + 8).to(torch.int16) | ((q[:, 1] + 8).to(torch.int16) << 4))
    with pytest.raises(ValueError, match="even"):
        pack_int4(q[:, :63])
    with pytest.raises(ValueError, match="4-bit range"):
        pack_int4(torch.full((2, 4), 9, dtype=torch.int8))


def test_packed_int4_products_equal_the_unpacked_ones(seed):
    """The grouped ops on a packed weight compute exactly what they compute on its int8 values."""
    x, w = torch.randn(3, 2, 96), torch.randn(40, 96)
    q, scale = quantize_per_group_symmetric(w, 32, INT4_QMAX)
    bias = torch.randn(40)
    packed = pack_int4(q)
    assert torch.equal(ops.linear_block(x, packed, scale, bias, 32, 4), ops.linear_block(x, q, scale, bias, 32, 4))
    assert torch.equal(ops.linear_a8w8_token_group(x, packed, scale, bias, 32),
                       ops.linear_a8w8_token_group(x, q, scale, bias, 32)), f"seed {seed}"
    with pytest.raises(ValueError, match="bits must be 4"):
        ops.linear_block(x, packed, scale, bias, 32, 8)


def test_int4_linear_holds_half_a_byte_per_value(seed):
    lin = nn.Linear(64, 16)
    mod = Int8Linear.from_linear(lin, "per_block", bits=4, group_size=32)
    assert mod.weight.dtype == torch.uint8 and mod.weight.shape == (16, 32)
    q, scale = quantize_per_group_symmetric(lin.weight, 32, INT4_QMAX)
    assert torch.equal(mod.integer_weight(), q)
    assert torch.equal(mod.dequantized_weight(), q.float() * expand_group_scales(scale, 64, 32))
    with pytest.raises(ValueError, match="even"):
        Int8Linear(63, 16, bits=4, group_size=32, activation="per_block")


def test_matmulnbits_packing_of_a_packed_weight(seed):
    """A 4-bit model's packed weight gives MatMulNBits the same bytes as its int8 values do (K padded)."""
    from xlstm_edge.quant.onnx_backend import pack_matmulnbits

    for K in (96, 80):  # whole blocks, and a short last block
        q, scale = quantize_per_group_symmetric(torch.randn(6, K), 32, INT4_QMAX)
        direct = pack_matmulnbits(q.numpy(), scale.numpy(), 32, 4)
        from_packed = pack_matmulnbits(pack_int4(q).numpy(), scale.numpy(), 32, 4)
        assert all((a == b).all() and a.shape == b.shape for a, b in zip(direct, from_packed, strict=True)), f"K {K} seed {seed}"


@pytest.mark.parametrize(("block", "q_max", "packed"), [(32, 127, False), (48, 255, True), (1100, 127, False)])
def test_block_products_are_exact_in_every_row_chunk(seed, monkeypatch, block, q_max, packed):
    """Each yielded chunk holds the exact integer product of each block of K (a short last block, several
    row chunks; float32 while the block sums stay below 2^24, float64 past it)."""
    monkeypatch.setattr(ops, "PRODUCT_ELEMENTS", 3000)
    K = 2 * block + block // 2
    q = torch.randint(-q_max, q_max + 1, (3, K)).float()
    w = torch.randint(-8, 8, (37, K), dtype=torch.int8) if packed else torch.randint(-128, 128, (37, K), dtype=torch.int8)
    nb, seen = 3, []
    for n0, n1, acc in ops.block_products(q, pack_int4(w) if packed else w, block, q_max):
        assert acc.shape == (nb, 3, n1 - n0) and acc.dtype == (torch.float64 if block > 1032 else torch.float32)
        for b in range(nb):
            k = slice(b * block, min(K, (b + 1) * block))
            assert torch.equal(acc[b].double(), q[:, k].double() @ w[n0:n1, k].double().t()), f"seed {seed}"
        seen.append((n0, n1))
    assert len(seen) > 1 and seen[0][0] == 0 and seen[-1][1] == 37
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:], strict=False))
