"""Parity at export: the exported graphs against the eager model, states fed back as each side
produces them.

Scenario (``parity_check``): B rows with prompts of different lengths (one spans several prefill
calls and ends mid-chunk, one is shorter than a chunk, so later calls give it valid_length 0);
the backend prefills them chunk by chunk through the prefill graph, then runs ``steps`` steps of
random tokens through the step graph, each call fed the backend's own previous ``present.*``.
The eager model prefills each row in one chunkwise call, then steps. Every logits vector is
compared; the figures go into the manifest and the export fails above ``tolerance``.

The eager side runs in float64 (a copy of the model) up to ``FLOAT64_REFERENCE_MAX_PARAMS``
parameters: the figures then measure the graphs' own float32 error, not the sum of theirs and the
float32 eager model's (on the trained demo model after 64 steps: 9.6e-5 against float64, 1.2e-4
against float32 eager, whose own error is of the same size). Larger models are compared with the
float32 eager model; the report says which (``reference``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from torch import Tensor

from xlstm_edge.model import xLSTMForCausalLM
from xlstm_edge.state import State, init_state, state_spec

DEFAULT_TOLERANCE = 1e-4  # max |dlogits| in float32
FLOAT64_REFERENCE_MAX_PARAMS = 2_000_000_000  # a float64 copy of larger models costs too much memory


class Runner(Protocol):
    def run(self, method: str, inputs: list[Tensor]) -> list[Tensor]: ...


class ParityError(RuntimeError):
    """The exported graphs disagree with the eager model beyond the tolerance (message has the figures)."""


@dataclass
class ParityReport:
    tolerance: float
    batch: int
    prompt_lengths: list[int]
    prefill_calls: int
    steps: int
    max_abs_dlogits_prefill: float
    max_abs_dlogits_step: float
    max_abs_dlogits: float
    max_abs_dstate_end: float
    argmax_agreement: float
    passed: bool
    reference: str = "eager float64"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"max |dlogits| {self.max_abs_dlogits:.2e} (prefill {self.max_abs_dlogits_prefill:.2e}, "
            f"{self.steps} steps {self.max_abs_dlogits_step:.2e}; tolerance {self.tolerance:.0e}), "
            f"argmax agreement {self.argmax_agreement:.4f}, final state max |d| {self.max_abs_dstate_end:.2e} "
            f"(against the {self.reference} model)"
        )


def _flat(config, state: State) -> list[Tensor]:
    return [state[s.layer][s.name] for s in state_spec(config)]


def _rows(config, flat: list[Tensor], rows: slice) -> State:
    state: State = [{} for _ in range(config.num_hidden_layers)]
    for s, t in zip(state_spec(config), flat, strict=True):
        state[s.layer][s.name] = t[rows]
    return state


def backend_prefill(runner: Runner, prompts: Tensor, lengths: list[int], T: int, state: list[Tensor]):
    """Prefill rows of different lengths chunk by chunk. prompts (B, P) int64 (right-padded);
    returns logits (B, V) at each row's last token, the state and the number of calls."""
    B, P = prompts.shape
    lens = torch.tensor(lengths, dtype=torch.int64)
    logits = None
    calls = 0
    for start in range(0, P, T):
        ids = torch.zeros(B, T, dtype=torch.int64)
        piece = prompts[:, start:start + T]
        ids[:, : piece.shape[1]] = piece
        valid = (lens - start).clamp(0, T)
        outs = runner.run("prefill", [ids, valid, *state])
        calls += 1
        ends_here = (valid > 0) & (lens <= start + T)
        logits = outs[0] if logits is None else torch.where(ends_here[:, None], outs[0], logits)
        state = outs[1:]
    assert logits is not None
    return logits, state, calls


@torch.no_grad()
def parity_check(
    model: xLSTMForCausalLM,
    runner: Runner,
    tokens_per_call: int,
    batch: int,
    steps: int = 64,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> ParityReport:
    """Run the scenario of the module docstring; ``batch`` is what the graphs take (a fixed batch
    or, for a dynamic one, the rows to try)."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    T = tokens_per_call
    long_len = T + T // 2 + 1 if T > 1 else 3
    lengths = [long_len if r % 2 == 0 else max(1, T // 2 - r) for r in range(batch)]
    P = max(lengths)
    prompts = torch.randint(0, c.vocab_size, (batch, P), generator=g)
    for r, n in enumerate(lengths):
        prompts[r, n:] = 0
    step_tokens = torch.randint(0, c.vocab_size, (batch, steps), generator=g)

    # backend
    state = [torch.zeros(batch, *s.shape) for s in state_spec(c)]
    b_logits, state, calls = backend_prefill(runner, prompts, lengths, T, state)
    b_all = [b_logits]
    for t in range(steps):
        outs = runner.run("step", [step_tokens[:, t : t + 1], *state])
        b_all.append(outs[0])
        state = outs[1:]
    b_state = state

    # eager, row by row
    n_params = sum(p.numel() for p in model.parameters())
    dtype = torch.float64 if n_params <= FLOAT64_REFERENCE_MAX_PARAMS else torch.float32
    reference = copy.deepcopy(model).to(dtype) if dtype == torch.float64 else model
    e_all_rows, e_state_rows = [], []
    for r, n in enumerate(lengths):
        logits, st = reference(prompts[r : r + 1, :n], init_state(c, 1, dtype=dtype))
        row = [logits[:, -1]]
        for t in range(steps):
            logits, st = reference(step_tokens[r : r + 1, t : t + 1], st)
            row.append(logits[:, -1])
        e_all_rows.append(torch.stack(row).double())  # (1 + steps, 1, V)
        e_state_rows.append([t.double() for t in _flat(c, st)])
    del reference
    e_all = torch.cat(e_all_rows, 1)  # (1 + steps, B, V)
    b_stack = torch.stack(b_all)
    diff = (b_stack.double() - e_all).abs()
    e_state = [torch.cat([row[i] for row in e_state_rows]) for i in range(len(b_state))]
    dstate = max(float((a - b).abs().max()) for a, b in zip(b_state, e_state, strict=True))
    agree = float((b_stack.argmax(-1) == e_all.argmax(-1)).float().mean())
    d_pre, d_step = float(diff[0].max()), float(diff[1:].max()) if steps else 0.0
    worst = max(d_pre, d_step)
    finite = bool(torch.isfinite(b_stack).all())
    return ParityReport(
        tolerance=tolerance,
        batch=batch,
        prompt_lengths=lengths,
        prefill_calls=calls,
        steps=steps,
        max_abs_dlogits_prefill=d_pre,
        max_abs_dlogits_step=d_step,
        max_abs_dlogits=worst,
        max_abs_dstate_end=dstate,
        argmax_agreement=agree,
        passed=finite and worst <= tolerance,
        reference=f"eager {str(dtype).removeprefix('torch.')}",
    )
