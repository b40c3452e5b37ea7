"""The method ExecuTorch's stock LLM runner calls (``TextLLMRunner``, the ``LlmModule`` of its apps):

    forward(tokens (1, T) int64, input_pos (1,) int64) -> logits (1, V_tok)     1 <= T <= max_seq_len

for prefill (T tokens in one parallel call) and decode (T = 1) alike. The recurrent state lives in
mutable buffers (``state.l{layer}_{name}``, float32, batch 1). The runner's ``reset()`` only sets its
position to 0, so the graph zeroes the state itself when ``input_pos == 0`` (state * (input_pos != 0)
before use, as ExecuTorch's Qwen3.5 gated-DeltaNet export does), then ``copy_``s the new state into
the buffers. One method only: a second method (a ``decode``, which ExecuTorch >= 1.5 picks by name) has
its own buffers unless the app's ``Module`` shares memory arenas, which ``create_text_llm_runner`` does not.
V_tok = the tokenizer's vocabulary: the runner's sampler reads that many logits (its vocab size comes
from the tokenizer), so the graph returns no more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xlstm_edge.model import xLSTMForCausalLM
from xlstm_edge.state import State, state_spec

from .graph_math import blend, cat, logsigmoid
from .graph_model import NEG_GATE, ExportLM, check_supported

FORWARD = "forward"
# TextLLMRunner casts (max_context_len - position) to int32: the largest length that never overflows it
# and never ends a stream (positions count on in int64; the graph only asks whether it is 0)
MAX_CONTEXT_LEN = 2**31 - 1


def buffer_name(layer: int, name: str) -> str:
    return f"l{layer}_{name}"


class StateBuffers(nn.Module):
    """The recurrent state of one sequence as buffers ``l{layer}_{name}`` (1, *shape), float32, zero."""

    def __init__(self, config) -> None:
        super().__init__()
        self.specs = state_spec(config)
        self.layers = config.num_hidden_layers
        for s in self.specs:
            self.register_buffer(buffer_name(s.layer, s.name), torch.zeros(1, *s.shape))

    def read(self, keep: Tensor) -> State:
        """The state times ``keep`` (1,) float: 0 at a sequence's first position, else 1 (exact)."""
        state: State = [{} for _ in range(self.layers)]
        for s in self.specs:
            state[s.layer][s.name] = getattr(self, buffer_name(s.layer, s.name)) * keep
        return state

    def write(self, state: State) -> None:
        for s in self.specs:
            getattr(self, buffer_name(s.layer, s.name)).copy_(state[s.layer][s.name])


class DynamicLM(ExportLM):
    """The model over T tokens where T is a dynamic dim (1..max_seq_len), every position valid.

    mLSTM: the chunkwise form with one chunk of T tokens (the parallel form from a carried state):
    matrix products over (T, T), no per-token loop, so T = 1 costs about one step. sLSTM: its scan is
    unrolled to max_seq_len cell steps; positions >= T leave the state as it is (their gates are
    padding), so a decode step pays max_seq_len sLSTM cells (not projections).
    """

    def __init__(self, model: xLSTMForCausalLM, max_seq_len: int) -> None:
        super().__init__(model)
        self.max_seq_len = max_seq_len

    def run(self, input_ids: Tensor, state: State) -> tuple[Tensor, State]:
        """input_ids (1, T) -> logits (1, V) after the last token, new state."""
        m = self.model
        T = input_ids.shape[1]
        x = m.backbone.embeddings(input_ids)  # (1, T, D)
        x, new_state = self.residual_stack(x, state, self._mlstm_dynamic, self._slstm_dynamic)
        x_last = x.narrow(1, T - 1, 1).reshape(1, -1)  # (1, D)
        return self._logits(x_last), new_state

    def _mlstm_dynamic(self, layer, x: Tensor, state) -> tuple[Tensor, dict]:
        """One chunk of T tokens: x (1, T, D) -> (1, T, D); state C (1, NH, DQK, DV), n (1, NH, DQK), m (1, NH)."""
        c = self.config
        q, k, v, i, f = self._mlstm_inputs(layer, x)  # (1, NH, T, .), i/f (1, NH, T)
        B, NH, T, DQK = q.shape
        DV = v.shape[-1]
        pos = torch.arange(T, device=x.device)
        upper = (pos[:, None] <= pos[None, :]).to(torch.float32)  # (T, T): U[j, t] = 1 for j <= t
        bias = (1.0 - upper.t()) * NEG_GATE  # (T, T): 0 on and below the diagonal, "-inf" above
        qs = (q * DQK**-0.5).reshape(NH, T, DQK)
        kc = k.reshape(NH, T, DQK)
        vc = v.reshape(NH, T, DV)
        ic = i.reshape(NH, 1, T)
        b = (logsigmoid(f).reshape(NH, T) @ upper).reshape(NH, 1, T)  # inclusive cumsum of log f
        g = b.narrow(2, T - 1, 1)  # (NH, 1, 1): the chunk's total log decay
        # ---- the state after the chunk ----
        a = g - b + ic  # (NH, 1, T): log weight of token j in the end state
        a_max = torch.max(a.reshape(NH, 1, 1, T), dim=3, keepdim=True).values.reshape(NH, 1, 1)
        kw_t = (kc * torch.exp(a - a_max).reshape(NH, T, 1)).transpose(1, 2)  # (NH, DQK, T)
        C0 = state["C"].reshape(NH, DQK, DV)
        n0 = state["n"].reshape(NH, DQK, 1)
        m0 = state["m"].reshape(NH, 1, 1)
        m_end = torch.maximum(g + m0, a_max)
        decay = torch.exp(g + m0 - m_end)
        inject = torch.exp(a_max - m_end)
        C_end = decay * C0 + inject * torch.bmm(kw_t, vc)
        n_end = decay * n0 + inject * kw_t.sum(dim=2, keepdim=True)
        # ---- outputs: causal, quadratic in T ----
        log_D = b.reshape(NH, T, 1) - b + ic + bias  # (NH, T, T)
        m_inter = b.reshape(NH, T, 1) + m0  # (NH, T, 1)
        m_comb = torch.maximum(m_inter, torch.max(log_D.reshape(NH, 1, T, T), dim=3, keepdim=True).values.reshape(NH, T, 1))
        D = torch.exp(log_D - m_comb)
        scores = torch.bmm(qs, kc.transpose(1, 2)) * D  # (NH, T, T)
        q_inter = qs * torch.exp(m_inter - m_comb)
        num = torch.bmm(q_inter, C0) + torch.bmm(scores, vc)  # (NH, T, DV)
        den = torch.bmm(q_inter, n0) + scores.sum(dim=2, keepdim=True)  # (NH, T, 1)
        h = num / (torch.maximum(torch.abs(den), torch.exp(-m_comb)) + c.eps)
        new = {"C": C_end.reshape(B, NH, DQK, DV), "n": n_end.reshape(B, NH, DQK), "m": m_end.reshape(B, NH)}
        return self._mlstm_out(layer, x, h.reshape(B, NH, T, DV)), new

    def _slstm_dynamic(self, layer, x: Tensor, state) -> tuple[Tensor, dict]:
        """x (1, T, D) -> (1, T, D); the scan unrolled to max_seq_len steps, masked past T."""
        B, T, D = x.shape
        S = self.max_seq_len
        new: dict = {}
        x_conv = x
        if layer.kernel_size > 0:
            K1 = layer.kernel_size - 1
            padded = torch.cat([state["conv"], x], dim=1)  # (1, K-1+T, D)
            x_conv = self._conv(layer, padded, T)
            new["conv"] = padded.narrow(1, T, K1)  # the last K-1 inputs
        gates = [self._pad_time(gt, S) for gt in self._slstm_gates_in(layer, x, x_conv)]  # 4 x (1, S, NH, DH)
        valid = self._pad_time(torch.ones(B, T, 1, 1, device=x.device), S)  # (1, S, 1, 1): 1 at t < T
        y, c_, n, m = state["y"], state["c"], state["n"], state["m"]
        ys = []
        for t in range(S):
            wx = [g.narrow(1, t, 1).reshape(B, g.shape[2], g.shape[3]) for g in gates]
            y_t, c_t, n_t, m_t = self._slstm_cell(layer, wx, y, c_, n, m)
            k_t = valid.narrow(1, t, 1).reshape(B, 1, 1)
            d_t = 1.0 - k_t
            y, c_, n, m = (blend(a, b, k_t, d_t) for a, b in ((y_t, y), (c_t, c_), (n_t, n), (m_t, m)))
            ys.append(y_t.reshape(B, 1, *y_t.shape[1:]))
        new.update(y=y, c=c_, n=n, m=m)
        out = cat(ys, 1).narrow(1, 0, T)  # (1, T, NH, DH)
        return self._head_norm(layer.group_norm, out), new

    @staticmethod
    def _pad_time(t: Tensor, S: int) -> Tensor:
        """t (1, T, ...) -> (1, S, ...), zeros after T."""
        return t.new_zeros(t.shape[0], S, *t.shape[2:]).slice_scatter(t, dim=1, start=0, end=t.shape[1])


class RunnerModule(nn.Module):
    """The stock runner's ``forward``; see the module docstring. Shares the model's parameters."""

    def __init__(self, model: xLSTMForCausalLM, max_seq_len: int, vocab_out: int) -> None:
        super().__init__()
        check_supported(model)
        if not 1 <= vocab_out <= model.config.vocab_size:
            raise ValueError(f"vocab_out {vocab_out} is outside 1..{model.config.vocab_size}")
        self.vocab_out = vocab_out
        self.lm = DynamicLM(model, max_seq_len)
        self.state = StateBuffers(model.config)
        self.eval()

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        """tokens (1, T) int64, input_pos (1,) int64 -> logits (1, V_tok) after the last token."""
        keep = (input_pos != 0).to(torch.float32)  # (1,): 0 starts a new sequence
        logits, new = self.lm.run(tokens, self.state.read(keep))
        self.state.write(new)
        return logits[:, : self.vocab_out]


def runner_example_inputs(max_seq_len: int) -> tuple[Tensor, Tensor]:
    """(tokens, input_pos) for tracing, with a T that neither it nor the padding (max_seq_len - T)
    makes 0 or 1, sizes that torch.export would specialise on."""
    return torch.zeros(1, max(2, max_seq_len // 2), dtype=torch.int64), torch.zeros(1, dtype=torch.int64)


def export_runner_program(model: xLSTMForCausalLM, max_seq_len: int, vocab_out: int) -> torch.export.ExportedProgram:
    """The ``forward`` program of ``model`` (dynamic T in 1..max_seq_len)."""
    if max_seq_len < 4:
        raise ValueError(f"the runner's max_seq_len must be at least 4, got {max_seq_len}")
    module = RunnerModule(model, max_seq_len, vocab_out)
    shapes = {"tokens": {1: torch.export.Dim("T", min=1, max=max_seq_len)}, "input_pos": None}
    with torch.no_grad():
        return torch.export.export(module, runner_example_inputs(max_seq_len), dynamic_shapes=shapes, strict=False)


@dataclass(frozen=True)
class RunnerSpec:
    """What the ``forward`` method and the runner's metadata methods are built from (the manifest's
    ``runner`` section)."""

    max_seq_len: int  # tokens per forward call (the runner prefills a longer prompt in pieces of this)
    vocab_size: int  # logits returned: the tokenizer's ids
    bos_id: int | None
    eos_ids: tuple[int, ...]

    @classmethod
    def for_tokenizer(cls, tokenizer, max_seq_len: int) -> RunnerSpec:
        eos = () if tokenizer.eos_token_id is None else (int(tokenizer.eos_token_id),)
        return cls(max_seq_len, int(tokenizer.vocab_size), tokenizer.bos_token_id, eos)

    @classmethod
    def from_manifest(cls, section: dict) -> RunnerSpec:
        return cls(int(section["max_seq_len"]), int(section["vocab_size"]), section.get("bos_id"),
                   tuple(section.get("eos_ids") or ()))

    def to_manifest(self) -> dict:
        return {"method": FORWARD, "max_seq_len": self.max_seq_len, "vocab_size": self.vocab_size,
                "bos_id": self.bos_id, "eos_ids": list(self.eos_ids), "max_context_len": MAX_CONTEXT_LEN}

    def constant_methods(self) -> dict:
        """The metadata methods TextLLMRunner reads (``extension/llm/runner/constants.h``)."""
        methods: dict = {
            "get_max_seq_len": self.max_seq_len,
            "get_max_context_len": MAX_CONTEXT_LEN,  # > max_seq_len: the runner never counts a stream down
            "use_kv_cache": True,  # state carried between calls (here: the recurrent state)
            "enable_dynamic_shape": True,  # forward takes 1..max_seq_len tokens: a prefill is one call
            "get_vocab_size": self.vocab_size,
        }
        if self.eos_ids:
            methods["get_eos_ids"] = list(self.eos_ids)
        if self.bos_id is not None:
            methods["get_bos_id"] = int(self.bos_id)
        return methods


def export_runner_method(model: xLSTMForCausalLM, spec: RunnerSpec) -> torch.export.ExportedProgram:
    return export_runner_program(model, spec.max_seq_len, spec.vocab_size)
