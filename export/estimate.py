"""How much memory an export will take, worked out before it starts (``xlstm-edge export`` refuses at
once, in one line, when the machine lacks it, rather than failing an hour later).

The estimate is linear in what the export holds, with coefficients measured on this project's
machine (``bench/scale.py``; see bench/RESULTS.md, "CPU: export memory and the pipeline"):

float32 export     the model in float32 (W bytes) plus, in the parity stage, one ONNX Runtime
                   session's copy of the weights (or the lowered program's), plus the libraries:
                   ``FLOAT_BASE + FLOAT_PER_BYTE * W``
quantized export   the quantized model (Q bytes: 1 byte per int8 weight; an int4 weight half a byte
                   plus its float32 group scale, 1/8 byte, but 1 byte again for ExecuTorch, whose
                   torchao form holds one value a byte; and the float32 parts), the exporter's copy while it writes and rewrites the graphs,
                   one float32 block at a time for the streamed float reference:
                   ``QUANT_BASE + QUANT_PER_BYTE * Q + 4 * largest block``

The figures err high. Quantized coefficients refit 2026-12-07 on the pipeline of that day (eager
references recorded before any graph session opens): ``small`` int8 ONNX 2.12 GiB and ExecuTorch int4
2.23 GiB (Q 0.15 GiB: the libraries and the quality pass's fixed buffers dominate), 1.4 B int8 ONNX
3.72 GiB (Q 1.32 GiB); the fit (2.1 GiB + 1.3 Q + one float32 block) gives 2.32 and 4.01 GiB.
"""

from __future__ import annotations

from dataclasses import dataclass

from xlstm_edge.config import xLSTMConfig

GIB = 2**30
INT4_GROUP = 32  # quant.handler.INT4_GROUP (not imported: this module stays free of torch)
# the Linears every scheme keeps float32 (quant.handler's gate pre-activations); the sLSTM recurrent
# matrix is 3-D and never counted as a Linear
FLOAT_LINEARS = ("mlstm_layer.igate_preact.weight", "mlstm_layer.fgate_preact.weight",
                 "slstm_layer.igate.weight", "slstm_layer.fgate.weight")
FLOAT_BASE, FLOAT_PER_BYTE = 1.0 * GIB, 2.6
QUANT_BASE, QUANT_PER_BYTE = 2.1 * GIB, 1.3


@dataclass(frozen=True)
class Estimate:
    peak_bytes: int
    what: str  # one phrase: what dominates

    def refusal(self, available: int, fmt: str, scheme: str | None, prefill_tokens: int | None) -> str | None:
        """One line if ``available`` bytes are not enough, naming what would fit; else None."""
        if self.peak_bytes <= available:
            return None
        options = []
        if scheme != "int4-dynamic":
            options.append("--quantize int4-dynamic (the smallest package)")
        if prefill_tokens is None or prefill_tokens > 64:
            options.append("fewer --prefill-tokens")
        options.append(f"a machine with {self.peak_bytes / GIB:.0f} GiB free")
        return (f"this export needs about {self.peak_bytes / GIB:.1f} GiB of memory ({self.what}), the machine has "
                f"{available / GIB:.1f} GiB available: nothing was started; try {', or '.join(options)}")


def _sizes(config: xLSTMConfig) -> tuple[int, int, int, int]:
    """(all params, params of quantizable Linears, embedding params, largest block's params)."""
    from xlstm_edge.checkpoint import expected_shapes

    shapes = expected_shapes(config)
    total = linear = block_max = 0
    blocks: dict[str, int] = {}
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        total += n
        if name.startswith("backbone.blocks."):
            key = ".".join(name.split(".")[:3])
            blocks[key] = blocks.get(key, 0) + n
            if len(shape) == 2 and not name.endswith(FLOAT_LINEARS):
                linear += n
        elif name == "lm_head.weight":
            linear += n
    block_max = max(blocks.values(), default=0)
    embedding = config.vocab_size * config.hidden_size
    if config.tie_word_embeddings:
        linear += embedding  # the head gets its own quantized copy
    return total, linear, embedding, block_max


def _quantized_bytes(config: xLSTMConfig, scheme: str, embedding: str, unpacked_int4: bool) -> int:
    """Bytes of the quantized weights: 1 a weight for int8; int4 half a byte (one byte where
    ``unpacked_int4``: ExecuTorch's torchao form) plus its float32 group scale; the rest float32."""
    total, linear, emb, _ = _sizes(config)
    float_params = total - linear - (emb if embedding == "int8" else 0)
    per_weight = 1.0 if scheme != "int4-dynamic" else (1.0 if unpacked_int4 else 0.5) + 4 / INT4_GROUP
    return int(per_weight * linear) + (emb if embedding == "int8" else 0) + 4 * float_params


def estimate_export(config: xLSTMConfig, scheme: str | None = None, embedding: str = "fp32",
                    fmt: str = "onnx") -> Estimate:
    """The peak resident memory of ``xlstm-edge export`` (float32 when ``scheme`` is None) to ``fmt``
    ("onnx" | "executorch")."""
    total, _, _, block = _sizes(config)
    if scheme is None:
        return Estimate(int(FLOAT_BASE + FLOAT_PER_BYTE * 4 * total), f"{4 * total / GIB:.1f} GiB of float32 weights")
    q = _quantized_bytes(config, scheme, embedding, unpacked_int4=fmt == "executorch")
    return Estimate(int(QUANT_BASE + QUANT_PER_BYTE * q + 4 * block),
                    f"{q / GIB:.1f} GiB of quantized model, one float32 block at a time")


def estimate_disk(config: xLSTMConfig, scheme: str | None = None, embedding: str = "fp32", fmt: str = "onnx") -> int:
    """Bytes of disk an export takes at its peak beside the output: an ONNX export holds the package's
    shared weights file, the graph being written (the exporter's data file) and, quantized, its packed
    copy (``export.onnx_weights.WeightsWriter`` merges each graph as it is written): 2 packages float32,
    3 quantized; an ExecuTorch export writes its one program (plus a probe's, small)."""
    package = 4 * _sizes(config)[0] if scheme is None else _quantized_bytes(config, scheme, embedding, False)
    copies = 1 if fmt == "executorch" else (2 if scheme is None else 3)
    return int(copies * package * 1.05)


def disk_refusal(needed: int, free: int, where: str) -> str | None:
    """One line if ``free`` bytes at ``where`` are fewer than ``needed``; else None."""
    if needed <= free:
        return None
    return (f"this export needs about {needed / GIB:.1f} GiB of disk beside {where} (the package and the graph "
            f"being written), {free / GIB:.1f} GiB are free: nothing was started; free some space or write "
            "the package elsewhere")


__all__ = ["Estimate", "disk_refusal", "estimate_disk", "estimate_export"]
