"""The ONNX Runtime GenAI graph as an ``nn.Module``: any number of tokens per call, state in
GenAI's per-layer ``conv_state`` / ``recurrent_state`` slots.

    (input_ids (B, T) int64, *past) -> (logits (B, 1, V) at the last position, *present)

T is dynamic: GenAI prefills a prompt in one call and decodes with T = 1. ``past`` / ``present`` are,
for each layer i in order, ``conv_state`` (B, *CONV) then ``recurrent_state`` (B, *REC), float32,
zero at the start of a sequence. GenAI's ``RecurrentState`` gives every layer the shapes of layer 0
(``slot_shapes``):
  mLSTM layer  conv_state (B, NH, DQK + 1) = [n | m], recurrent_state (B, NH, DQK, DV) = C
  sLSTM layer  recurrent_state = y, c, n, m (B, NHs, DHs), conv (B, K-1, D), flattened in this order
               and zero-padded; conv_state unused (kept zero). Refused when they do not fit.
GenAI binds each past input and its present output to ONE buffer on CPU (the update is in place),
so every node that reads a past input must run before the node that writes its present output: each
past input is read by one copying node (a Slice, or C's Mul) whose result the present depends on
(``genai.check_in_place`` verifies it on the exported graph).

mLSTM: the parallel form with the initial state (one chunk of T tokens, T x T gate matrix), which is
the step for T = 1. sLSTM: ``torch.scan`` over T (an ONNX Scan). Same equations as ``graph_model``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xlstm_edge.config import xLSTMConfig
from xlstm_edge.model import mLSTMLayer, sLSTMLayer, xLSTMForCausalLM

from .graph_math import logsigmoid
from .graph_model import ExportLM, check_supported

PAST = "past_key_values.{layer}.{slot}"
PRESENT = "present.{layer}.{slot}"
SLOTS = ("conv_state", "recurrent_state")


class GenAIStateError(ValueError):
    """The model's state cannot be laid out in GenAI's slots (one line naming the limit)."""


def slstm_numel(c: xLSTMConfig) -> int:
    """Floats of one sLSTM layer's state per sequence: y, c, n, m (D each) and conv ((K-1) * D)."""
    return 4 * c.hidden_size + max(c.slstm_conv_kernel_size - 1, 0) * c.hidden_size


def slot_shapes(c: xLSTMConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(conv_state, recurrent_state) shapes without the batch dim, the same for every layer.

    Raises ``GenAIStateError`` when an sLSTM layer's state does not fit the recurrent_state slot."""
    kinds = c.block_types()
    if "m" not in kinds:
        return (1, 1), (1, 1, slstm_numel(c))
    conv = (c.num_heads, c.qk_head_dim + 1)
    rec = (c.num_heads, c.qk_head_dim, c.v_head_dim)
    if "s" in kinds and slstm_numel(c) > math.prod(rec):
        raise GenAIStateError(
            f"ONNX Runtime GenAI gives every layer the state shapes of layer 0 (RecurrentState reads them from "
            f"its first layer only): an sLSTM layer's state ({slstm_numel(c)} floats: y, c, n, m and conv) does "
            f"not fit an mLSTM layer's C {list(rec)} ({math.prod(rec)} floats)")
    return conv, rec


def input_names(c: xLSTMConfig) -> list[str]:
    return ["input_ids", *(PAST.format(layer=i, slot=s) for i in range(c.num_hidden_layers) for s in SLOTS)]


def output_names(c: xLSTMConfig) -> list[str]:
    return ["logits", *(PRESENT.format(layer=i, slot=s) for i in range(c.num_hidden_layers) for s in SLOTS)]


class GenAIModule(ExportLM):
    """(input_ids (B, T), *past) -> (logits (B, 1, V), *present); see the module docstring."""

    def __init__(self, model: xLSTMForCausalLM):
        check_supported(model)
        super().__init__(model, fused_norms=True)
        self.conv_shape, self.rec_shape = slot_shapes(model.config)
        self.eval()

    def forward(self, input_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        x = m.backbone.embeddings(input_ids)  # (B, T, D)
        slots = [(past[2 * idx], past[2 * idx + 1]) for idx in range(len(past) // 2)]  # (conv, rec) per layer

        def cell(seq):
            def run(layer, h: Tensor, slot: tuple[Tensor, Tensor]):
                y, conv, rec = seq(layer, h, *slot)
                return y, (conv, rec)
            return run

        x, new_slots = self.residual_stack(x, slots, cell(self._mlstm_seq), cell(self._slstm_seq))
        present = [t for slot in new_slots for t in slot]
        return (self._logits(x[:, -1:]), *present)  # (B, 1, V)

    # ---- mLSTM: parallel form from the initial state --------------------------------------------
    def _mlstm_seq(self, layer: mLSTMLayer, x: Tensor, conv: Tensor, rec: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D); conv (B, NH, DQK + 1) = [n | m], rec = C (B, NH, DQK, DV) -> (B, T, D), conv, rec."""
        c = self.config
        q, k, v, i, f = self._mlstm_inputs(layer, x)  # q, k (B, NH, T, DQK), v (B, NH, T, DV), i, f (B, NH, T)
        DQK = q.shape[-1]
        n0 = conv[..., :DQK]  # (B, NH, DQK)   Slice: a copy, read before present is written
        m0 = conv[..., DQK:]  # (B, NH, 1)
        # C's one reader: an exact copy (x * exp(0)) that both uses below read, so that C's in-place
        # update cannot overwrite it while the h path still needs it
        C0 = rec * torch.exp(m0 - m0).unsqueeze(-1)  # (B, NH, DQK, DV)
        T = x.shape[1]
        b = torch.cumsum(logsigmoid(f), dim=-1)  # (B, NH, T) inclusive log decay
        g = b[..., -1:]  # (B, NH, 1) whole call's log decay
        pos = torch.arange(T, device=x.device)
        causal = pos[:, None] >= pos[None, :]  # (T, T)
        log_D = b.unsqueeze(-1) - b.unsqueeze(-2) + i.unsqueeze(-2)  # (B, NH, T, T): query t, key j
        log_D = torch.where(causal, log_D, torch.full_like(log_D, float("-inf")))
        m_inter = b + m0  # (B, NH, T)
        m_comb = torch.maximum(m_inter, log_D.amax(-1))  # (B, NH, T)
        D = torch.exp(log_D - m_comb.unsqueeze(-1))
        qs = q * DQK**-0.5
        scores = (qs @ k.transpose(-2, -1)) * D  # (B, NH, T, T)
        q_inter = qs * torch.exp(m_inter - m_comb).unsqueeze(-1)
        num = q_inter @ C0 + scores @ v  # (B, NH, T, DV)
        den = q_inter @ n0.unsqueeze(-1) + scores.sum(-1, keepdim=True)  # (B, NH, T, 1)
        h = num / (torch.maximum(den.abs(), torch.exp(-m_comb).unsqueeze(-1)) + c.eps)
        # end state: C0 decayed over the call plus each token's k v^T weighted by its gates
        a = g - b + i  # (B, NH, T)
        m_new = torch.maximum(g + m0, a.amax(-1, keepdim=True))  # (B, NH, 1)
        decay = torch.exp(g + m0 - m_new)  # (B, NH, 1)
        kw = k * torch.exp(a - m_new).unsqueeze(-1)  # (B, NH, T, DQK)
        C_new = decay.unsqueeze(-1) * C0 + kw.transpose(-2, -1) @ v  # (B, NH, DQK, DV)
        n_new = decay * n0 + kw.sum(-2)  # (B, NH, DQK)
        return self._mlstm_out(layer, x, h), torch.cat([n_new, m_new], -1), C_new

    # ---- sLSTM: a scan over T ---------------------------------------------------------------------
    def _slstm_seq(self, layer: sLSTMLayer, x: Tensor, conv_slot: Tensor, rec: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D); rec holds y, c, n, m, conv flattened (padded) -> (B, T, D), conv_slot (zero), rec."""
        from torch._higher_order_ops.scan import scan

        c = self.config
        B, T, D = x.shape
        NH, DH = c.slstm_num_heads, c.slstm_head_dim
        K1 = max(layer.kernel_size - 1, 0)
        flat = rec.reshape(B, -1)
        y0, c0, n0, m0 = (flat[:, j * D:(j + 1) * D].reshape(B, NH, DH).clone() for j in range(4))  # copies
        x_conv = x
        parts_conv: list[Tensor] = []
        if layer.kernel_size > 0:
            hist = flat[:, 4 * D:(4 + K1) * D].reshape(B, K1, D)
            padded = torch.cat([hist, x], dim=1)  # (B, K-1+T, D)
            x_conv = self._conv(layer, padded, T)
            parts_conv = [padded[:, -K1:].reshape(B, -1)] if K1 else []
        gates = [g.transpose(0, 1).contiguous() for g in self._slstm_gates_in(layer, x, x_conv)]  # 4 x (T, B, NH, DH)

        def cell(carry: tuple[Tensor, ...], wx: tuple[Tensor, ...]):
            y, c_, n, m_ = self._slstm_cell(layer, list(wx), *carry)
            return (y, c_, n, m_), y.clone()

        (y, c_, n, m_), ys = scan(cell, (y0, c0, n0, m0), tuple(gates))  # ys (T, B, NH, DH)
        used = (4 + K1) * D
        pad = flat.new_zeros(B, flat.shape[1] - used)
        new_rec = torch.cat([y.reshape(B, -1), c_.reshape(B, -1), n.reshape(B, -1), m_.reshape(B, -1),
                             *parts_conv, pad], dim=1).reshape(rec.shape)
        out = self._head_norm(layer.group_norm, ys.transpose(0, 1))  # (B, T, NH * DH)
        return out, torch.zeros_like(conv_slot), new_rec


def example_inputs(model: xLSTMForCausalLM, batch: int, tokens: int, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, ...]:
    """Random ids and a random reachable state (mLSTM m within the gates' range, sLSTM n > 0), packed."""
    c = model.config
    conv, rec = slot_shapes(c)
    ids = torch.randint(0, c.vocab_size, (batch, tokens), generator=generator)
    state: list[Tensor] = []
    for kind in c.block_types():
        cs = torch.randn(batch, *conv, generator=generator) * 0.3
        rs = torch.randn(batch, *rec, generator=generator) * 0.3
        if kind == "s":
            D = c.hidden_size
            flat = rs.reshape(batch, -1)
            flat[:, 2 * D:3 * D] = flat[:, 2 * D:3 * D].abs() + 1.0
            cs = torch.zeros_like(cs)
        state += [cs, rs]
    return (ids, *state)


def pack_state(config: xLSTMConfig, state: list[dict[str, Tensor]]) -> list[Tensor]:
    """Our state (``xlstm_edge.state``, one dict per layer) -> GenAI's slots, in ``input_names`` order."""
    conv, rec = slot_shapes(config)
    out: list[Tensor] = []
    for kind, s in zip(config.block_types(), state, strict=True):
        if kind == "m":
            B = s["C"].shape[0]
            out += [torch.cat([s["n"], s["m"].unsqueeze(-1)], -1), s["C"].clone()]
        else:
            B = s["y"].shape[0]
            parts = [s[k].reshape(B, -1) for k in ("y", "c", "n", "m")] + ([s["conv"].reshape(B, -1)]
                                                                        if "conv" in s else [])
            flat = torch.cat(parts, 1)
            flat = torch.cat([flat, flat.new_zeros(B, math.prod(rec) - flat.shape[1])], 1)
            out += [torch.zeros(B, *conv), flat.reshape(B, *rec)]
    return out


def unpack_state(config: xLSTMConfig, slots: list[Tensor]) -> list[dict[str, Tensor]]:
    """GenAI's slots -> our state (inverse of ``pack_state``)."""
    c = config
    state: list[dict[str, Tensor]] = []
    D, K1 = c.hidden_size, max(c.slstm_conv_kernel_size - 1, 0)
    for layer, kind in enumerate(c.block_types()):
        conv, rec = slots[2 * layer], slots[2 * layer + 1]
        B = rec.shape[0]
        if kind == "m":
            DQK = c.qk_head_dim
            state.append({"C": rec, "n": conv[..., :DQK], "m": conv[..., DQK]})
        else:
            flat = rec.reshape(B, -1)
            s = {k: flat[:, j * D:(j + 1) * D].reshape(B, c.slstm_num_heads, c.slstm_head_dim)
                 for j, k in enumerate(("y", "c", "n", "m"))}
            if K1:
                s["conv"] = flat[:, 4 * D:(4 + K1) * D].reshape(B, K1, D)
            state.append(s)
    return state


__all__ = ["GenAIModule", "GenAIStateError", "example_inputs", "input_names", "output_names", "pack_state",
           "slot_shapes", "unpack_state"]
