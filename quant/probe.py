"""The probe: a shallow copy of a model (one block of each kind) on which the tight parity check runs.

Why. The tight check asks whether a quantized graph computes *the same* quantization as the eager
reference: the median call must agree to float32 noise (``verify``). Both sides quantize ~10^4-10^5
activations per token, from float32 inputs that differ by rounding noise, so now and then a value on
a rounding boundary lands one int8 level apart (a "flip"), and the difference flows on through the
later layers. The chance that a call has no flip falls geometrically with depth: on the 12-block
``small`` preset (random init) a 1-2 token prefill call from a prefilled state flipped in 9 of 12
calls (ExecuTorch int8, 2026-11-23), so the median check refused good graphs about half the time;
xLSTM 7B (32 blocks, D 4096) would be refused every time.

What a lowering bug looks like does not depend on depth (a quantized state, another rounding rule or
activation granularity, a wrong op shows in every block), so the tight check runs on graphs exported
by the same code from a model cut down to its first block of each kind, with the same embedding,
output norm and LM head. The full package's graphs are still checked against the full eager int8
model, with a bound that lets flips through but not garbage, and by the quality gate.
"""

from __future__ import annotations

import dataclasses

import torch

from xlstm_edge.config import xLSTMConfig
from xlstm_edge.model import xLSTMForCausalLM
from xlstm_edge.weights import ModelWeights, WeightSource, build_model

PROBE_ABOVE_BLOCKS = 3  # models with more blocks get the tight check on their probe; others on themselves


def probe_blocks(config) -> list[int]:
    """Indices of the first block of each kind ("m" mLSTM, "s" sLSTM), in model order."""
    kinds = config.block_types()
    return sorted(kinds.index(kind) for kind in set(kinds))


def needs_probe(config) -> bool:
    return config.num_hidden_layers > PROBE_ABOVE_BLOCKS


def probe_config(config: xLSTMConfig) -> xLSTMConfig:
    """The probe's config: ``probe_blocks`` only, renumbered."""
    keep = probe_blocks(config)
    kinds = config.block_types()
    return dataclasses.replace(config, num_hidden_layers=len(keep),
                               slstm_at=[j for j, i in enumerate(keep) if kinds[i] == "s"])


class ProbeWeights:
    """The probe's weights as a ``WeightSource`` over the whole model's (blocks renumbered): the
    embedding, output norm, LM head and the ``probe_blocks``; nothing else is ever read."""

    def __init__(self, source: WeightSource):
        self.source = source
        self.config = probe_config(source.config)
        self._block = {j: i for j, i in enumerate(probe_blocks(source.config))}

    def _name(self, name: str) -> str:
        if not name.startswith("backbone.blocks."):
            return name
        j, _, rest = name[len("backbone.blocks."):].partition(".")
        return f"backbone.blocks.{self._block[int(j)]}.{rest}"

    def names(self) -> list[str]:
        back = {i: j for j, i in self._block.items()}
        out = []
        for name in self.source.names():
            if name.startswith("backbone.blocks."):
                i, _, rest = name[len("backbone.blocks."):].partition(".")
                if int(i) not in back:
                    continue
                name = f"backbone.blocks.{back[int(i)]}.{rest}"
            out.append(name)
        return out

    def read(self, name: str, dtype: torch.dtype, rows: tuple[int, int] | None = None) -> torch.Tensor:
        return self.source.read(self._name(name), dtype, rows)

    def describe(self) -> str:
        return f"the probe of {self.source.describe()}"


@torch.no_grad()
def probe_model(model: xLSTMForCausalLM) -> xLSTMForCausalLM:
    """A float32 copy of ``model`` with only the ``probe_blocks`` (their weights, in order), the
    embedding, output norm and LM head; eval mode, no gradients."""
    return build_model(ProbeWeights(ModelWeights(model))).requires_grad_(False)


def describe(config: xLSTMConfig) -> str:
    kinds = config.block_types()
    return ", ".join(f"block {i} ({'mLSTM' if kinds[i] == 'm' else 'sLSTM'})" for i in probe_blocks(config))


def grid_tie_hint(model: xLSTMForCausalLM, embedding: str, activation: str) -> str | None:
    """A likely cause of a failed tight check that is not a lowering bug, or None.

    With an int8 embedding, a token's row is int8 values times one scale; a norm whose weights are all
    exactly 1 (an untrained model) keeps it on that grid, and per-block symmetric quantization of such
    a row puts many values on exact .5 ties (x * 127 / amax = k + 1/2). A 1-ulp difference in the norm
    between the graph and eager PyTorch then breaks every such tie the other way, in every call.
    Measured on the ``small`` preset (random init, ONNX Runtime int4-dynamic, --embedding int8): probe
    median 7.65e-3 refused; the same with norm weights scaled by 1 + 0.05 N(0, 1): 4.4e-7, passed.
    """
    if embedding != "int8" or activation != "per_block" or not model.backbone.blocks:
        return None
    first = model.backbone.blocks[0]
    norm = getattr(first, "norm_mlstm", None) or getattr(first, "norm_slstm", None)
    if norm is None or not bool((norm.weight == 1).all()):
        return None
    return ("likely cause: this model's norm weights are all exactly 1 (untrained?), so int8 embedding rows "
            "reach the first Linear on a grid whose values land on exact rounding ties, which ONNX Runtime "
            "and PyTorch break differently after 1-ulp differences in the norm; a trained checkpoint, or "
            "--embedding fp32, avoids it")
