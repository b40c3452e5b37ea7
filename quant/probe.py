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

Its norm weights are moved off the grid they were stored on (``NORM_JITTER``). A bfloat16 checkpoint's
norm weights take few distinct values (about 13 bfloat16 values lie within 5% of 1; all are 1 in an
untrained model), and an embedding row is int8 levels times one scale (``--embedding int8``) or
bfloat16 values: the first Linear's input, normed row times norm weight, then holds values whose
ratios are small rationals, and quantizing it (x * 127 / amax per block) puts some exactly on .5
ties, which a 1-ulp difference in the norm breaks one way in the graph and the other in eager
PyTorch, in every call. Measured on a one-block probe of the 1.4 B shape (D 2048, bf16 random
checkpoint, norm weights 1 + 0.05 N(0, 1) rounded to bfloat16, ONNX Runtime int8-dynamic, int8
embedding): 83 of the 262,144 activations of the q projection sat exactly on a tie; 41 landed one
level apart; per-block quantization then turns that into a difference of order sqrt(level * noise)
in every later quantized Linear, and the prefill median reached 9.8e-3 (bound 1e-4), refusing a
correct graph. Weights off the grid (float32 values, ``1 + NORM_JITTER * N(0, 1)`` times the stored
ones, fixed per name) make an exact tie as rare as for any float32 input; a lowering bug shows
whatever the norm weights are.
"""

from __future__ import annotations

import dataclasses
import zlib

import torch

from xlstm_edge.config import xLSTMConfig
from xlstm_edge.model import xLSTMForCausalLM
from xlstm_edge.weights import ModelWeights, WeightSource, build_model

PROBE_ABOVE_BLOCKS = 3  # deeper models: the greedy comparison reads the eager int8 state after the prompt
NORM_JITTER = 1e-3  # the probe's norm weights: stored value * (1 + NORM_JITTER * N(0, 1)), float32


def probe_blocks(config) -> list[int]:
    """Indices of the first block of each kind ("m" mLSTM, "s" sLSTM), in model order."""
    kinds = config.block_types()
    return sorted(kinds.index(kind) for kind in set(kinds))


def needs_probe(config) -> bool:
    return config.num_hidden_layers > PROBE_ABOVE_BLOCKS


ON_GRID_SHARE = 0.01  # a model is its own probe only while at most this share of each norm weight is on the grid


def on_bfloat16_grid(weight: torch.Tensor) -> float:
    """The share of ``weight``'s values that bfloat16 holds exactly (1.0 for a bfloat16 checkpoint or an
    untrained model's ones; ~2^-16 for trained float32 values)."""
    w = weight.float()
    return float((w.to(torch.bfloat16).float() == w).double().mean())


def is_own_probe(source: WeightSource) -> bool:
    """Whether the model needs no probe: every block is the first of its kind (the probe would have the
    same blocks) and no norm weight sits on the bfloat16 grid (what the probe's jitter is for: at most
    ``ON_GRID_SHARE`` of its values exact in bfloat16). Then the tight check runs on the package's own
    graphs, and the probe's export (as long as the package's) is saved."""
    config = source.config
    if len(probe_blocks(config)) != config.num_hidden_layers:
        return False
    return all(on_bfloat16_grid(source.read(name, torch.float32)) <= ON_GRID_SHARE
               for name in source.names() if is_norm_weight(name))


def probe_config(config: xLSTMConfig) -> xLSTMConfig:
    """The probe's config: ``probe_blocks`` only, renumbered."""
    keep = probe_blocks(config)
    kinds = config.block_types()
    return dataclasses.replace(config, num_hidden_layers=len(keep),
                               slstm_at=[j for j, i in enumerate(keep) if kinds[i] == "s"])


def is_norm_weight(name: str) -> bool:
    """A norm's scale vector (block pre-norms, per-head norms, the output norm), by its HF-layout name."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and "norm" in parts[-2]


class ProbeWeights:
    """The probe's weights as a ``WeightSource`` over the whole model's (blocks renumbered): the
    embedding, output norm, LM head and the ``probe_blocks``; nothing else is ever read. Norm weights
    are read in float32 and scaled by ``1 + norm_jitter * N(0, 1)`` (a generator seeded by the name)."""

    def __init__(self, source: WeightSource, norm_jitter: float = NORM_JITTER):
        self.source = source
        self.norm_jitter = norm_jitter
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
        if not (self.norm_jitter and is_norm_weight(name)):
            return self.source.read(self._name(name), dtype, rows)
        if dtype != torch.float32:  # a coarser dtype would put the values back on a grid
            raise ValueError(f"the probe's norm weight {name} is read in float32, not {dtype}")
        weight = self.source.read(self._name(name), torch.float32, rows)
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        return weight * (1 + self.norm_jitter * torch.randn(weight.shape, generator=generator))

    def describe(self) -> str:
        return f"the probe of {self.source.describe()}"


@torch.no_grad()
def probe_model(model: xLSTMForCausalLM, norm_jitter: float = NORM_JITTER) -> xLSTMForCausalLM:
    """A float32 copy of ``model`` with only the ``probe_blocks`` (their weights, in order; norm weights
    jittered by ``norm_jitter``), the embedding, output norm and LM head; eval mode, no gradients."""
    return build_model(ProbeWeights(ModelWeights(model), norm_jitter)).requires_grad_(False)


def describe(config: xLSTMConfig) -> str:
    kinds = config.block_types()
    return ", ".join(f"block {i} ({'mLSTM' if kinds[i] == 'm' else 'sLSTM'})" for i in probe_blocks(config))
