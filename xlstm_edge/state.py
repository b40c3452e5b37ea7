"""The recurrent state: one dict of float32 tensors per block, constant in size at any context.

mLSTM block: C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH)
sLSTM block: y, c, n, m (B, NH_s, DH_s), and conv (B, K-1, D) when the causal conv is on
Exported graphs name them ``past.{layer}.{name}`` in and ``present.{layer}.{name}`` out.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import xLSTMConfig
from .state_spec import StateTensorSpec, state_bytes, state_spec

LayerState = dict[str, Tensor]
State = list[LayerState]

__all__ = ["LayerState", "State", "StateTensorSpec", "flatten_state", "init_state", "state_bytes", "state_spec",
           "unflatten_state"]


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
