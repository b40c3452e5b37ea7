"""The two exported graphs as ``nn.Module``s with flat, positional tensor I/O.

step     (input_ids (B, 1) int64, *past) -> (logits (B, V), *present)
prefill  (input_ids (B, T) int64, valid_length (B,) int64, *past) -> (logits (B, V) at position
         valid_length - 1, *present)   T fixed at export; 1 <= valid_length <= T
``past``/``present`` are the state tensors in ``xlstm_edge.state.state_spec`` order, float32.
Both run ``graph_model.ExportLM`` on the eager model's parameters (shared, not copied).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xlstm_edge.model import xLSTMForCausalLM
from xlstm_edge.state import State, state_spec

from .graph_model import ExportLM, check_supported
from .metadata import BATCH, INPUT_IDS, LOGITS, VALID_LENGTH, GraphEntry, TensorEntry, state_entries


def _unflatten(config, flat: tuple[Tensor, ...]) -> State:
    specs = state_spec(config)
    if len(flat) != len(specs):
        raise ValueError(f"got {len(flat)} state tensors, the model has {len(specs)}")
    state: State = [{} for _ in range(config.num_hidden_layers)]
    for spec, t in zip(specs, flat, strict=True):
        state[spec.layer][spec.name] = t
    return state


def _flatten(config, state: State) -> tuple[Tensor, ...]:
    return tuple(state[s.layer][s.name] for s in state_spec(config))


def input_names(model: xLSTMForCausalLM, prefill: bool) -> list[str]:
    extra = [VALID_LENGTH] if prefill else []
    return [INPUT_IDS, *extra, *(s.input_name for s in state_spec(model.config))]


def output_names(model: xLSTMForCausalLM) -> list[str]:
    return [LOGITS, *(s.output_name for s in state_spec(model.config))]


def prefill_chunk_size(model: xLSTMForCausalLM, tokens_per_call: int) -> int:
    """The chunkwise form's inner chunk for a prefill of ``tokens_per_call`` tokens."""
    c = model.config
    if tokens_per_call < 1:
        raise ValueError(f"prefill length must be positive, got {tokens_per_call}")
    L = min(c.chunk_size, tokens_per_call)
    if tokens_per_call % L:
        raise ValueError(
            f"prefill length {tokens_per_call} must be a multiple of the chunk size {c.chunk_size} (or at most it)"
        )
    return L


class StepModule(nn.Module):
    """One token: (input_ids (B, 1), *past) -> (logits (B, V), *present). ``fused_norms``, ``flat_step``:
    see ``ExportLM``."""

    def __init__(self, model: xLSTMForCausalLM, fused_norms: bool = False, flat_step: bool = False):
        super().__init__()
        check_supported(model)
        self.lm = ExportLM(model, fused_norms=fused_norms, flat_step=flat_step)
        self.eval()

    def forward(self, input_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        c = self.lm.config
        logits, state = self.lm.step(input_ids, _unflatten(c, past))
        return (logits, *_flatten(c, state))


class PrefillModule(nn.Module):
    """A fixed chunk of T tokens with a valid length, chunkwise mLSTM (matrix products, not T steps).

    (input_ids (B, T), valid_length (B,), *past) -> (logits (B, V) at valid_length - 1, *present)
    """

    def __init__(self, model: xLSTMForCausalLM, tokens_per_call: int, fused_norms: bool = False):
        super().__init__()
        check_supported(model)
        self.tokens_per_call = tokens_per_call
        self.chunk_size = prefill_chunk_size(model, tokens_per_call)
        self.lm = ExportLM(model, self.chunk_size, fused_norms=fused_norms)
        self.eval()

    def forward(self, input_ids: Tensor, valid_length: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        c = self.lm.config
        logits, state = self.lm.prefill(input_ids, valid_length, _unflatten(c, past))
        return (logits, *_flatten(c, state))


def random_state(model: xLSTMForCausalLM, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
    """A random state that a model could reach (n of sLSTM positive), flat in spec order."""
    c = model.config
    out = []
    for s in state_spec(c):
        t = torch.randn(batch, *s.shape, generator=generator) * 0.3
        if s.layer in c.slstm_at and s.name == "n":
            t = t.abs() + 1.0
        out.append(t)
    return tuple(out)


def example_inputs(
    model: xLSTMForCausalLM, batch: int, tokens: int, prefill: bool, generator: torch.Generator | None = None
) -> tuple[Tensor, ...]:
    """Random inputs for tracing: ids, (valid_length = tokens,) and a random state."""
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=generator)
    state = random_state(model, batch, generator)
    if prefill:
        return (ids, torch.full((batch,), tokens, dtype=torch.int64), *state)
    return (ids, *state)


def graph_entry(
    model: xLSTMForCausalLM, method: str, tokens_per_call: int, file: str, batch: int | str = BATCH
) -> GraphEntry:
    """The manifest entry of a ``method`` graph ("step" | "prefill") with this package's I/O contract;
    ``batch`` is "batch" for a dynamic batch dim or the fixed batch size."""
    prefill = method == "prefill"
    entries = state_entries(model.config)
    inputs = [TensorEntry(INPUT_IDS, [batch, tokens_per_call], "int64")]
    if prefill:
        inputs.append(TensorEntry(VALID_LENGTH, [batch], "int64"))
    inputs += [TensorEntry(e.input, [batch, *e.shape[1:]], e.dtype) for e in entries]
    outputs = [TensorEntry(LOGITS, [batch, model.config.vocab_size], "float32")]
    outputs += [TensorEntry(e.output, [batch, *e.shape[1:]], e.dtype) for e in entries]
    return GraphEntry(
        file=file,
        method=method,
        inputs=inputs,
        outputs=outputs,
        tokens_per_call=tokens_per_call,
        valid_length_input=VALID_LENGTH if prefill else None,
        chunk_size=prefill_chunk_size(model, tokens_per_call) if prefill else None,
    )
