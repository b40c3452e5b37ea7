"""Parity at export: the exported graphs against a float64 reference, states fed back as each side
produces them, with a bound scaled to the model's own float32 error.

Scenario (``parity_check``): B rows with prompts of different lengths (one spans several prefill
calls and ends mid-chunk, one is shorter than a chunk, so later calls give it valid_length 0);
the backend prefills them chunk by chunk through the prefill graph, then runs ``steps`` steps of
random tokens through the step graph, each call fed the backend's own previous ``present.*``.

Reference (``blockwise_forward``): each row's whole sequence (prompt, then the step tokens) through
the model in float64, one block at a time (a float64 copy of one block lives at a time, never of
the whole model; the head runs in slices of the vocabulary), the logits taken where the backend
produced them. The eager float32 model runs the same sequences: its distance to float64 is the
model's own float32 error, which grows with depth, width and logit size (1e-6 on a tiny random
model, 1e-4 on a transformers checkpoint with random gate biases, more on trained 7B logits).

Bound: relative to the largest reference logit, the graphs' error must stay within
``MODEL_ERROR_FACTOR`` times the eager model's own error, or ``REL_FLOOR`` (a few float32 ulps,
for a model whose own error happens to be tiny), whichever is larger. A correct graph differs from
float64 by float32 rounding of its own (other kernels, other summation orders): the same size as
the eager model's. A wrong graph (a swapped gate, a dropped soft cap, a stale state) differs by
orders of magnitude more. ``tolerance`` (absolute max |dlogits|), when given, replaces the bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from torch import Tensor

from xlstm_edge.model import xLSTMForCausalLM
from xlstm_edge.state import State, state_spec
from xlstm_edge.streamed import streamed_forward
from xlstm_edge.weights import ModelWeights

MODEL_ERROR_FACTOR = 16.0  # graphs' error may be this many times the eager float32 model's own
REL_FLOOR = 2e-6  # relative to max |logit|: ~16 float32 ulps


class Runner(Protocol):
    def run(self, method: str, inputs: list[Tensor]) -> list[Tensor]: ...


class ParityError(RuntimeError):
    """The exported graphs disagree with the eager model beyond the tolerance (message has the figures)."""


@dataclass
class ParityReport:
    tolerance: float | None  # absolute bound given by the caller, else None (the scaled bound)
    batch: int
    prompt_lengths: list[int]
    prefill_calls: int
    steps: int
    max_abs_dlogits_prefill: float  # graphs vs float64
    max_abs_dlogits_step: float
    max_abs_dlogits: float
    logits_scale: float  # max |logit| of the float64 reference
    max_rel_dlogits: float  # max_abs_dlogits / logits_scale
    eager_float32_rel_err: float  # the eager float32 model vs float64, same measure
    bound_rel: float  # the bound max_rel_dlogits was held to
    max_abs_dstate_end: float
    argmax_agreement: float
    passed: bool
    reference: str = "float64, block by block"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        bound = (f"tolerance {self.tolerance:.1e} absolute" if self.tolerance is not None else
                 f"bound {self.bound_rel:.1e} = max({MODEL_ERROR_FACTOR:g} x the eager float32 model's own "
                 f"error {self.eager_float32_rel_err:.1e}, {REL_FLOOR:.0e})")
        return (
            f"max |dlogits| {self.max_abs_dlogits:.2e} (prefill {self.max_abs_dlogits_prefill:.2e}, "
            f"{self.steps} steps {self.max_abs_dlogits_step:.2e}) = {self.max_rel_dlogits:.1e} of max |logit| "
            f"{self.logits_scale:.3g}; {bound}; argmax agreement {self.argmax_agreement:.4f}, final state "
            f"max |d| {self.max_abs_dstate_end:.2e} (against the {self.reference} reference)"
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


def blockwise_forward(model: xLSTMForCausalLM, ids: Tensor, positions: Tensor,
                      dtype: torch.dtype = torch.float64) -> tuple[Tensor, list[Tensor]]:
    """ids (1, S) from the zero state through ``model`` in ``dtype``, one block at a time
    (``xlstm_edge.streamed``): logits (len(positions), V) and the final state (flat, spec order)."""
    return streamed_forward(ModelWeights(model), ids, positions, dtype)


@torch.no_grad()
def parity_check(
    model: xLSTMForCausalLM,
    runner: Runner,
    tokens_per_call: int,
    batch: int,
    steps: int = 64,
    tolerance: float | None = None,
    seed: int = 0,
) -> ParityReport:
    """Run the scenario of the module docstring; ``batch`` is what the graphs take (a fixed batch
    or, for a dynamic one, the rows to try). ``tolerance``: an absolute max |dlogits| to hold the
    graphs to instead of the scaled bound."""
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

    # float64 reference and eager float32, row by row, each over its whole sequence
    ref_rows, eager_rows, ref_state_rows = [], [], []
    for r, n in enumerate(lengths):
        ids = torch.cat([prompts[r : r + 1, :n], step_tokens[r : r + 1]], 1)
        positions = torch.arange(n - 1, n + steps)
        ref, st = blockwise_forward(model, ids, positions)
        ref_rows.append(ref)
        ref_state_rows.append(st)
        eager_rows.append(model(ids)[0][0, positions].double())
    ref_all = torch.stack(ref_rows, 1)  # (1 + steps, B, V)
    eager_all = torch.stack(eager_rows, 1)
    b_stack = torch.stack(b_all)
    diff = (b_stack.double() - ref_all).abs()
    scale = float(ref_all.abs().max())
    e_state = [torch.cat([row[i] for row in ref_state_rows]) for i in range(len(b_state))]
    dstate = max(float((a - b).abs().max()) for a, b in zip(b_state, e_state, strict=True))
    agree = float((b_stack.argmax(-1) == ref_all.argmax(-1)).float().mean())
    d_pre, d_step = float(diff[0].max()), float(diff[1:].max()) if steps else 0.0
    worst = max(d_pre, d_step)
    rel = worst / max(scale, 1e-30)
    own = float((eager_all - ref_all).abs().max()) / max(scale, 1e-30)
    bound = max(MODEL_ERROR_FACTOR * own, REL_FLOOR)
    finite = bool(torch.isfinite(b_stack).all())
    ok = worst <= tolerance if tolerance is not None else rel <= bound
    return ParityReport(
        tolerance=tolerance,
        batch=batch,
        prompt_lengths=lengths,
        prefill_calls=calls,
        steps=steps,
        max_abs_dlogits_prefill=d_pre,
        max_abs_dlogits_step=d_step,
        max_abs_dlogits=worst,
        logits_scale=scale,
        max_rel_dlogits=rel,
        eager_float32_rel_err=own,
        bound_rel=bound,
        max_abs_dstate_end=dstate,
        argmax_agreement=agree,
        passed=finite and ok,
    )


# ---- the stock runner's forward (state in the program's buffers) ---------------------------------
@torch.no_grad()
def runner_parity_check(
    model: xLSTMForCausalLM,
    forward: Callable[[Tensor, Tensor], Tensor],
    max_seq_len: int,
    vocab_size: int,
    steps: int = 16,
    tolerance: float | None = None,
    seed: int = 1,
) -> dict:
    """``forward(tokens (1, T), input_pos (1,)) -> logits (1, vocab_size)`` (the .pte's runner method, its
    state in buffers) against the float64 reference, held to the same bound as ``parity_check``.

    Two sequences from position 0 through one loaded method, as TextLLMRunner drives it: a prompt of
    max_seq_len + max_seq_len // 2 + 1 tokens (a full call, then a partial one), then ``steps`` decode
    calls; then a shorter prompt, again from position 0, and ``steps`` more (its state must start from
    zero: the reset at position 0 is inside the graph)."""
    g = torch.Generator().manual_seed(seed)
    got, ref, eager = [], [], []
    for prompt_len in (max_seq_len + max_seq_len // 2 + 1, max(2, max_seq_len // 2 - 1)):
        ids = torch.randint(0, vocab_size, (1, prompt_len + steps), generator=g)
        pos, ends = 0, []
        while pos < prompt_len:  # the runner's prefill: pieces of at most max_seq_len
            n = min(max_seq_len, prompt_len - pos)
            logits = forward(ids[:, pos:pos + n], torch.tensor([pos]))
            pos += n
        got.append(logits)
        ends.append(prompt_len - 1)
        for _ in range(steps):  # the runner's decode: one token per call
            got.append(forward(ids[:, pos:pos + 1], torch.tensor([pos])))
            ends.append(pos)
            pos += 1
        positions = torch.tensor(ends)
        r, _ = blockwise_forward(model, ids, positions)
        ref.append(r[:, :vocab_size])
        eager.append(model(ids)[0][0, positions, :vocab_size].double())
    got_all = torch.cat(got).double()
    ref_all, eager_all = torch.cat(ref), torch.cat(eager)
    scale = float(ref_all.abs().max())
    worst = float((got_all - ref_all).abs().max())
    rel = worst / max(scale, 1e-30)
    own = float((eager_all - ref_all).abs().max()) / max(scale, 1e-30)
    bound = max(MODEL_ERROR_FACTOR * own, REL_FLOOR)
    ok = worst <= tolerance if tolerance is not None else rel <= bound
    return {
        "method": "forward", "calls": len(got), "max_abs_dlogits": worst, "logits_scale": scale,
        "max_rel_dlogits": rel, "eager_float32_rel_err": own, "bound_rel": bound, "tolerance": tolerance,
        "argmax_agreement": float((got_all.argmax(-1) == ref_all.argmax(-1)).float().mean()),
        "passed": bool(torch.isfinite(got_all).all()) and ok,
    }
