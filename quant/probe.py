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
from torch import nn

from xlstm_edge.model import xLSTMForCausalLM

PROBE_ABOVE_BLOCKS = 3  # models with more blocks get the tight check on their probe; others on themselves


def probe_blocks(config) -> list[int]:
    """Indices of the first block of each kind ("m" mLSTM, "s" sLSTM), in model order."""
    kinds = config.block_types()
    return sorted(kinds.index(kind) for kind in set(kinds))


def needs_probe(config) -> bool:
    return config.num_hidden_layers > PROBE_ABOVE_BLOCKS


@torch.no_grad()
def probe_model(model: xLSTMForCausalLM) -> xLSTMForCausalLM:
    """A float32 copy of ``model`` with only the ``probe_blocks`` (their weights, in order), the
    embedding, output norm and LM head; eval mode, no gradients."""
    c = model.config
    keep = probe_blocks(c)
    kinds = c.block_types()
    config = dataclasses.replace(c, num_hidden_layers=len(keep),
                                 slstm_at=[j for j, i in enumerate(keep) if kinds[i] == "s"])
    probe = xLSTMForCausalLM(config)
    renamed = {f"backbone.blocks.{i}.": f"backbone.blocks.{j}." for j, i in enumerate(keep)}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone.blocks."):
            prefix = ".".join(key.split(".")[:3]) + "."
            if prefix not in renamed:
                continue
            key = renamed[prefix] + key[len(prefix):]
        state[key] = value
    probe.load_state_dict(state, strict=True)
    return probe.eval().requires_grad_(False)


def describe(model: nn.Module) -> str:
    kinds = model.config.block_types()
    return ", ".join(f"block {i} ({'mLSTM' if kinds[i] == 'm' else 'sLSTM'})" for i in probe_blocks(model.config))
