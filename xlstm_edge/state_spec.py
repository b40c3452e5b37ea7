"""The state's tensors by name and shape, without torch (the runtime reads them; ``xlstm_edge.state``
re-exports them beside the torch helpers).

mLSTM block: C (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH)
sLSTM block: y, c, n, m (B, NH_s, DH_s), and conv (B, K-1, D) when the causal conv is on
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import xLSTMConfig


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
