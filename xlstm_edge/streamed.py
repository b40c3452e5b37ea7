"""A forward pass that holds one block at a time: float references for models too big to copy.

``streamed_forward(source, ids, dtype)`` runs ids (1, S) from the zero state (or ``state``) through
the source's model in ``dtype``, building each block from the ``WeightSource`` just before it runs and
dropping it after; the LM head is applied in slices of ``HEAD_ROWS`` vocabulary rows. Memory: one block
and one embedding or head slice in ``dtype``, the activations (S, D), and the logits asked for.

Used where the pipeline needs the float model but must not hold it: the export's float64 parity
reference (``export.verify``), and the float32 side of the quantization quality report when the
float weights are read from a checkpoint or package (``quant``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layers import soft_cap
from .state import State, init_state, state_spec
from .weights import EMBEDDING, WeightSource, build_block, build_out_norm, head_name

HEAD_ROWS = 8192  # vocabulary rows of the head converted at a time


@torch.no_grad()
def streamed_embedding(source: WeightSource, ids: Tensor, dtype: torch.dtype) -> Tensor:
    """ids (...) -> their embedding rows (..., D) in ``dtype``, the table read ``HEAD_ROWS`` rows at a time
    (a 7B model's float32 table is 824 MB)."""
    c = source.config
    out = torch.empty(*ids.shape, c.hidden_size, dtype=dtype)
    for start in range(0, c.vocab_size, HEAD_ROWS):
        end = min(start + HEAD_ROWS, c.vocab_size)
        hit = (ids >= start) & (ids < end)
        if bool(hit.any()):
            out[hit] = source.read(EMBEDDING, dtype, (start, end))[ids[hit] - start]
    return out


@torch.no_grad()
def streamed_hidden(source: WeightSource, ids: Tensor, dtype: torch.dtype = torch.float64,
                    state: State | None = None) -> tuple[Tensor, State]:
    """ids (1, S) -> final hidden states after the output norm (S, D) in ``dtype``, and the new state."""
    c = source.config
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"ids must be (1, S), got {tuple(ids.shape)}")
    x = streamed_embedding(source, ids, dtype)  # (1, S, D)
    start = init_state(c, 1, dtype=dtype) if state is None else state
    new_state: State = []
    for idx in range(c.num_hidden_layers):
        block = build_block(source, idx, dtype)
        x, layer_state = block(x, start[idx], "chunkwise")
        new_state.append(layer_state)
        del block
    return build_out_norm(source, dtype)(x[0]), new_state


@torch.no_grad()
def streamed_head(source: WeightSource, hidden: Tensor) -> Tensor:
    """hidden (N, D) -> soft-capped logits (N, V) in hidden's dtype, the head read in row slices."""
    c = source.config
    name = head_name(c)
    parts = [hidden @ source.read(name, hidden.dtype, (i, min(i + HEAD_ROWS, c.vocab_size))).T
             for i in range(0, c.vocab_size, HEAD_ROWS)]
    return soft_cap(torch.cat(parts, -1), c.output_logit_soft_cap)


def streamed_forward(source: WeightSource, ids: Tensor, positions: Tensor | None = None,
                     dtype: torch.dtype = torch.float64, state: State | None = None) -> tuple[Tensor, list[Tensor]]:
    """ids (1, S) -> logits (len(positions) or S, V) in ``dtype`` and the final state (flat, spec order)."""
    hidden, new_state = streamed_hidden(source, ids, dtype, state)
    logits = streamed_head(source, hidden if positions is None else hidden[positions])
    return logits, [new_state[s.layer][s.name] for s in state_spec(source.config)]


__all__ = ["HEAD_ROWS", "streamed_forward", "streamed_head", "streamed_hidden"]
