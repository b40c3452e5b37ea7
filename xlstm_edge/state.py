"""The recurrent state: one dict of float32 tensors per block, constant in size at any context.

mLSTM block: C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH)
sLSTM block: y, c, n, m (B, NH_s, DH_s), and conv (B, K-1, D) when the causal conv is on
Exported graphs name them ``past.{layer}.{name}`` in and ``present.{layer}.{name}`` out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import xLSTMConfig

LayerState = dict[str, Tensor]
State = list[LayerState]


@dataclass(frozen=True)
class StateTensorSpec:
    """One state tensor: its name, shape without the batch dim, dtype and layer."""

    layer: int
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def input_name(self) -> str:
        return f"past.{self.layer}.{self.name}"

    @property
    def output_name(self) -> str:
        return f"present.{self.layer}.{self.name}"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def state_spec(config: xLSTMConfig) -> list[StateTensorSpec]:
    """Every state tensor of the model, in a fixed order (layer, then name)."""
    c = config
    specs: list[StateTensorSpec] = []
    for layer, kind in enumerate(c.block_types()):
        if kind == "m":
            NH, DQK, DV = c.num_heads, c.qk_head_dim, c.v_head_dim
            specs += [
                StateTensorSpec(layer, "C", (NH, DQK, DV)),
                StateTensorSpec(layer, "n", (NH, DQK)),
                StateTensorSpec(layer, "m", (NH,)),
            ]
        else:
            NH, DH = c.slstm_num_heads, c.slstm_head_dim
            specs += [StateTensorSpec(layer, name, (NH, DH)) for name in ("y", "c", "n", "m")]
            if c.slstm_conv_kernel_size > 0:
                specs.append(StateTensorSpec(layer, "conv", (c.slstm_conv_kernel_size - 1, c.hidden_size)))
    return specs


def state_bytes(config: xLSTMConfig, batch_size: int = 1) -> int:
    """Bytes of the float32 state for ``batch_size`` sequences (independent of context length)."""
    return 4 * batch_size * sum(s.numel for s in state_spec(config))


def init_state(config: xLSTMConfig, batch_size: int = 1, device=None, dtype=torch.float32) -> State:
    """All-zero state (m = 0 too), as the models start a sequence."""
    state: State = [{} for _ in range(config.num_hidden_layers)]
    for s in state_spec(config):
        state[s.layer][s.name] = torch.zeros(batch_size, *s.shape, device=device, dtype=dtype)
    return state


def flatten_state(state: State) -> dict[str, Tensor]:
    """{"past.{layer}.{name}": tensor} in spec order."""
    return {f"past.{layer}.{name}": t for layer, d in enumerate(state) for name, t in d.items()}


def unflatten_state(flat: dict[str, Tensor], config: xLSTMConfig) -> State:
    """Inverse of ``flatten_state``; accepts ``past.`` or ``present.`` prefixes; checks names and shapes."""
    state: State = [{} for _ in range(config.num_hidden_layers)]
    by_key = {k.split(".", 1)[1] if k.startswith(("past.", "present.")) else k: v for k, v in flat.items()}
    expected = {f"{s.layer}.{s.name}": s for s in state_spec(config)}
    missing = sorted(set(expected) - set(by_key))
    extra = sorted(set(by_key) - set(expected))
    if missing or extra:
        raise ValueError(f"state does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, spec in expected.items():
        t = by_key[key]
        if tuple(t.shape[1:]) != spec.shape:
            raise ValueError(f"state tensor {key} has shape {tuple(t.shape)}, expected (batch, *{spec.shape})")
        state[spec.layer][spec.name] = t
    return state
