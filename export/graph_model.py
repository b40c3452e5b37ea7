"""The model's forward, re-spelled for export: one token (step) or a fixed chunk of T tokens with a
valid length (prefill), on the eager model's own parameters.

Same equations as ``xlstm_edge.model`` / ``mlstm`` / ``slstm`` (see ../shared/XLSTM_MATH.md), in
ops that XNNPACK and ONNX Runtime both take (``graph_math``): reductions and cumsum as products
with constant matrices, selections as one-hot products, masks as 0/1 multipliers. Padded prefill
positions carry i = ``NEG_GATE`` and log f = 0, so they add nothing to the mLSTM state and decay
nothing; the sLSTM scan keeps its old state there, and the conv history is read at the valid
length. ``NEG_GATE`` is finite so that a wholly padded chunk has no inf - inf in its stabilizer;
every exp() of it is exactly 0, as for -inf.

Shapes: B batch, T tokens, D model dim, NH heads, DQK / DV mLSTM head dims, DH sLSTM head dim,
NC chunks of L tokens, K conv kernel. State: as ``xlstm_edge.state``, float32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xlstm_edge.layers import GatedFFN, MultiHeadLayerNorm, RMSNorm, soft_cap
from xlstm_edge.model import mLSTMBlock, mLSTMLayer, sLSTMBlock, sLSTMLayer, xLSTMForCausalLM
from xlstm_edge.state import LayerState, State

from .graph_math import ReductionConstants, blend, bmm, cat, logsigmoid, max_last, narrow, silu

NEG_GATE = -1.0e30  # "minus infinity" for padded input gates (finite: see the module docstring)


class ExportLM(nn.Module):
    """Export-friendly forward of an ``xLSTMForCausalLM``; shares (does not copy) its parameters.

    ``fused_norms``: spell the RMS and per-head layer norms as ONNX Runtime fuses them (RMS norm as
    x / sqrt(mean(x^2) + eps) * w with ReduceMean, which its optimizer turns into one
    SimplifiedLayerNormalization; ``F.layer_norm``, one LayerNormalization) instead of ~9 elementwise
    ops and products with constant mean vectors each (the spelling XNNPACK takes). ONNX graphs only.
    ``flat_step``: the step's residual stream is (B, D) instead of (B, 1, D), so that no Linear and no
    norm wraps its input in reshapes (XNNPACK runs each as a copy). ExecuTorch graphs only: ONNX keeps
    (B, 1, D), whose Linears export as MatMul on W^T like the prefill's, sharing one weights file.
    """

    def __init__(self, model: xLSTMForCausalLM, prefill_chunk: int | None = None, fused_norms: bool = False,
                 flat_step: bool = False):
        super().__init__()
        c = model.config
        self.model = model
        self.config = c
        self.chunk = prefill_chunk
        self.fused_norms = fused_norms
        self.flat_step = flat_step
        kinds = c.block_types()
        means = [c.hidden_size]
        if "m" in kinds:
            means.append(c.v_head_dim)
        if "s" in kinds:
            means.append(c.slstm_head_dim)
        chunks = [prefill_chunk] if prefill_chunk else []
        self.consts = ReductionConstants(means, chunks, chunks)

    # ---- whole model -------------------------------------------------------------------------
    def step(self, input_ids: Tensor, state: State) -> tuple[Tensor, State]:
        """input_ids (B, 1) -> logits (B, V), new state.

        The residual stream stays (B, 1, D), as in prefill (a Linear on a 2-D input exports to ONNX
        as Gemm on W, on a 3-D one as MatMul on W^T, and the two graphs share W^T in one weights file),
        or is (B, D) with ``flat_step``.
        """
        m = self.model
        x = m.backbone.embeddings(input_ids)  # (B, 1, D)
        if self.flat_step:
            x = x.view(x.shape[0], -1)  # (B, D)
        x, new_state = self.residual_stack(x, state, self._mlstm_step, self._slstm_step)
        B = x.shape[0]
        return self._logits(x.view(B, -1)), new_state

    def prefill(self, input_ids: Tensor, valid_length: Tensor, state: State) -> tuple[Tensor, State]:
        """input_ids (B, T), valid_length (B,) int64 in 1..T -> logits (B, V) at valid_length - 1, state."""
        m = self.model
        B, T = input_ids.shape
        if self.chunk is None or T % self.chunk:
            raise ValueError(f"prefill length {T} is not a multiple of the chunk {self.chunk}")
        positions = torch.arange(T, device=input_ids.device)[None, :]  # (1, T)
        keep = (positions < valid_length[:, None]).float()  # (B, T) 1 at real tokens
        drop = 1.0 - keep
        last = (positions == (valid_length[:, None] - 1)).float()[:, None, :]  # (B, 1, T) one-hot
        x = m.backbone.embeddings(input_ids)  # (B, T, D)
        x, new_state = self.residual_stack(
            x, state,
            lambda layer, h, s: self._mlstm_prefill(layer, h, s, keep, drop),
            lambda layer, h, s: self._slstm_prefill(layer, h, s, keep, drop, valid_length),
        )
        x_last = torch.bmm(last, x).view(B, -1)  # (B, D): exact selection of row valid_length - 1
        return self._logits(x_last), new_state

    def residual_stack(self, x: Tensor, states: list, mlstm, slstm) -> tuple[Tensor, list]:
        """The blocks over the residual stream x (B, ..., D): per block, x += cell(norm(x)), then
        x += ffn(norm(x)). ``mlstm`` / ``slstm`` (layer, normed x, the block's entry of ``states``) ->
        (y like x, the block's new entry): each graph's own form of the cell (step, chunkwise prefill,
        dynamic T, GenAI slots) and of its state. Returns (x, the new entries in block order)."""
        new_states = []
        for idx, block in enumerate(self.model.backbone.blocks):
            if isinstance(block, mLSTMBlock):
                y, s = mlstm(block.mlstm_layer, self._rms(block.norm_mlstm, x), states[idx])
            else:
                y, s = slstm(block.slstm_layer, self._rms(block.norm_slstm, x), states[idx])
            x = x + y
            x = x + self._ffn(block.ffn, self._rms(block.norm_ffn, x))
            new_states.append(s)
        return x, new_states

    def _logits(self, x: Tensor) -> Tensor:
        """x (B, D) -> soft-capped logits (B, V)."""
        m = self.model
        norm = m.backbone.out_norm
        h = self._rms(norm, x) if isinstance(norm, RMSNorm) else x
        return soft_cap(m.lm_head(h), self.config.output_logit_soft_cap)

    # ---- shared pieces --------------------------------------------------------------------------
    def _rms(self, norm: RMSNorm, x: Tensor) -> Tensor:
        """x (..., D) / rms * weight."""
        if self.fused_norms:
            y = x / torch.sqrt(torch.mean(x.pow(2), dim=-1, keepdim=True) + norm.eps) * norm.weight
        else:
            y = x * torch.rsqrt(self.consts.mean_last(x * x) + norm.eps) * norm.weight
        return y + norm.bias if norm.bias is not None else y

    def _head_norm(self, norm: MultiHeadLayerNorm, h: Tensor) -> Tensor:
        """Per-head layer norm: h (B, S, NH, DH) -> (B, S, NH * DH)."""
        B, S = h.shape[0], h.shape[1]
        return self._head_norm_rows(norm, h.reshape(-1, h.shape[-1]), (B, S, -1))

    def _head_norm_rows(self, norm: MultiHeadLayerNorm, h: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Per-head layer norm of h (rows, DH), one row per (token, head), reshaped to ``shape``
        (..., NH * DH) before the weight."""
        if self.fused_norms:
            y = torch.nn.functional.layer_norm(h, (h.shape[-1],), eps=norm.eps).reshape(shape) * norm.weight
            return y + norm.bias if norm.bias is not None else y
        centered = h - self.consts.mean_last(h)
        var = self.consts.mean_last(centered * centered)
        y = (centered * torch.rsqrt(var + norm.eps)).reshape(shape) * norm.weight
        return y + norm.bias if norm.bias is not None else y

    def _ffn(self, ffn: GatedFFN, x: Tensor) -> Tensor:
        gate = ffn.proj_up_gate(x)
        gate = silu(gate) if ffn.activation == "silu" else torch.nn.functional.gelu(gate)
        return ffn.proj_down(gate * ffn.proj_up(x))

    # ---- mLSTM ----------------------------------------------------------------------------------
    def _mlstm_inputs(self, layer: mLSTMLayer, x: Tensor):
        """x (B, S, D) -> q, k (B, NH, S, DQK), v (B, NH, S, DV), i, f pre-activations (B, NH, S)."""
        c = self.config
        B, S, _ = x.shape
        NH = c.num_heads
        i = soft_cap(layer.igate_preact(x), c.gate_soft_cap)
        f = soft_cap(layer.fgate_preact(x), c.gate_soft_cap)
        q = layer.q(x).view(B, S, NH, c.qk_head_dim).permute(0, 2, 1, 3)
        k = layer.k(x).view(B, S, NH, c.qk_head_dim).permute(0, 2, 1, 3)
        v = layer.v(x).view(B, S, NH, c.v_head_dim).permute(0, 2, 1, 3)
        return q, k, v, i.permute(0, 2, 1), f.permute(0, 2, 1)

    def _mlstm_out(self, layer: mLSTMLayer, x: Tensor, h: Tensor) -> Tensor:
        """h (B, NH, S, DV) -> layer output (B, S, D)."""
        h = self._head_norm(layer.multihead_norm, h.permute(0, 2, 1, 3))  # (B, S, NH, DV) -> (B, S, D)
        return layer.out_proj(torch.sigmoid(layer.ogate_preact(x)) * h)

    def _mlstm_step(self, layer: mLSTMLayer, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """x (B, 1, D) or (B, D) -> layer output of the same shape; state C (B, NH, DQK, DV), n (B, NH, DQK),
        m (B, NH).

        Heads are merged with the batch (BH = B * NH rows, views of the same memory: one token's
        head-major layout needs no permute). C_new = f * C + i * (k v^T), in this order: scaling k
        before the outer product saves one pass over C (measured ~0.15 ms of 5-9 ms, int8 small
        preset) but its other rounding moved the demo's ExecuTorch parity from 9.4e-5 to 1.06e-4
        (bound 1e-4).
        """
        c = self.config
        C = state["C"]
        B, NH, DQK, DV = C.shape
        BH = B * NH
        i = soft_cap(layer.igate_preact(x), c.gate_soft_cap).view(B, NH)
        f = soft_cap(layer.fgate_preact(x), c.gate_soft_cap).view(B, NH)
        log_f_m = logsigmoid(f) + state["m"]  # log f + m
        m_new = torch.maximum(log_f_m, i)  # (B, NH)
        f_act = torch.exp(log_f_m - m_new)  # (B, NH)
        i_act = torch.exp(i - m_new)
        q = layer.q(x).view(BH, 1, DQK)
        k_col = layer.k(x).view(BH, DQK, 1)
        v = layer.v(x).view(BH, 1, DV)
        # C stays 4-D where it is a graph input / output: XNNPACK copies a reshape of an external value
        kv = torch.bmm(k_col, v).view(B, NH, DQK, DV)
        C_new = f_act.view(B, NH, 1, 1) * C + i_act.view(B, NH, 1, 1) * kv
        n_new = f_act.view(BH, 1, 1) * state["n"].view(BH, DQK, 1) + i_act.view(BH, 1, 1) * k_col  # (BH, DQK, 1)
        q_scaled = q * (DQK**-0.5)  # (BH, 1, DQK)
        num = torch.bmm(q_scaled, C_new.view(BH, DQK, DV))  # (BH, 1, DV)
        den = torch.bmm(q_scaled, n_new)  # (BH, 1, 1)
        h = num / (torch.maximum(torch.abs(den), torch.exp(-m_new).view(BH, 1, 1)) + c.eps)
        h = self._head_norm_rows(layer.multihead_norm, h.view(BH, DV), (*x.shape[:-1], NH * DV))
        new = {"C": C_new, "n": n_new.view(B, NH, DQK), "m": m_new}
        return layer.out_proj(torch.sigmoid(layer.ogate_preact(x)) * h), new

    def _mlstm_prefill(
        self, layer: mLSTMLayer, x: Tensor, state: LayerState, keep: Tensor, drop: Tensor
    ) -> tuple[Tensor, LayerState]:
        """Chunkwise form over T = NC * L tokens; x (B, T, D), keep/drop (B, T).

        Batch and heads are merged (BH = B * NH) so that no tensor has more than 4 dims.
        """
        c = self.config
        q, k, v, i, f = self._mlstm_inputs(layer, x)
        B, NH, T, DQK = q.shape
        DV = v.shape[-1]
        L = self.chunk
        NC = T // L
        keep_h, drop_h = keep.reshape(B, 1, T), drop.reshape(B, 1, T)
        i = i * keep_h + NEG_GATE * drop_h  # padded: i = NEG_GATE
        log_f = logsigmoid(f) * keep_h  # padded: log f = 0
        qc = (q * DQK**-0.5).reshape(-1, NC, L, DQK)  # (BH, NC, L, DQK)
        kc = k.reshape(-1, NC, L, DQK)
        vc = v.reshape(-1, NC, L, DV)
        BH = qc.shape[0]
        b = self.consts.cumsum_last(log_f.reshape(BH, NC, L))  # inclusive cumsum of log f in each chunk
        ic = i.reshape(BH, NC, L)
        g = narrow(b, 2, L - 1, 1)  # (BH, NC, 1): total log decay of each chunk

        # ---- inter-chunk: state at the start of every chunk (NC static: the loop unrolls) ----
        a = g - b + ic  # (BH, NC, L): log weight of token j in its chunk's end state
        a_max = max_last(a)  # (BH, NC, 1)
        k_weighted = kc * torch.exp(a - a_max).reshape(BH, NC, L, 1)
        kw_t = k_weighted.transpose(-2, -1)  # (BH, NC, DQK, L)
        C_chunk = bmm(kw_t, vc)  # (BH, NC, DQK, DV)
        n_chunk = self.consts.sum_last(kw_t)  # (BH, NC, DQK, 1)
        C_k = state["C"].reshape(BH, DQK, DV)
        n_k = state["n"].reshape(BH, DQK, 1)
        m_k = state["m"].reshape(BH, 1, 1)
        C_starts, n_starts, m_starts = [], [], []
        for ci in range(NC):
            C_starts.append(C_k.reshape(BH, 1, DQK, DV))
            n_starts.append(n_k.reshape(BH, 1, DQK, 1))
            m_starts.append(m_k.reshape(BH, 1, 1))
            g_c = narrow(g, 1, ci, 1)  # (BH, 1, 1)
            a_c = narrow(a_max, 1, ci, 1)
            m_next = torch.maximum(g_c + m_k, a_c)
            decay = torch.exp(g_c + m_k - m_next)
            inject = torch.exp(a_c - m_next)
            C_k = decay * C_k + inject * narrow(C_chunk, 1, ci, 1).reshape(BH, DQK, DV)
            n_k = decay * n_k + inject * narrow(n_chunk, 1, ci, 1).reshape(BH, DQK, 1)
            m_k = m_next
        Cs = cat(C_starts, 1)  # (BH, NC, DQK, DV)
        ns = cat(n_starts, 1)  # (BH, NC, DQK, 1)
        ms = cat(m_starts, 1)  # (BH, NC, 1)

        # ---- intra-chunk: causal, quadratic in L, all chunks at once ----
        log_D = (
            b.reshape(BH, NC, L, 1) - b.reshape(BH, NC, 1, L) + ic.reshape(BH, NC, 1, L)
            + self.consts.causal_bias(L)
        )  # (BH, NC, L, L)
        m_inter = b + ms  # (BH, NC, L)
        m_comb = torch.maximum(m_inter, max_last(log_D).reshape(BH, NC, L))
        D = torch.exp(log_D - m_comb.reshape(BH, NC, L, 1))
        scores = bmm(qc, kc.transpose(-2, -1)) * D  # (BH, NC, L, L)
        q_inter = qc * torch.exp(m_inter - m_comb).reshape(BH, NC, L, 1)
        num = bmm(q_inter, Cs) + bmm(scores, vc)  # (BH, NC, L, DV)
        den = bmm(q_inter, ns) + self.consts.sum_last(scores)  # (BH, NC, L, 1)
        h = num / (torch.maximum(torch.abs(den), torch.exp(-m_comb).reshape(BH, NC, L, 1)) + c.eps)
        h = h.reshape(B, NH, T, DV)
        new = {"C": C_k.reshape(B, NH, DQK, DV), "n": n_k.reshape(B, NH, DQK), "m": m_k.reshape(B, NH)}
        return self._mlstm_out(layer, x, h), new

    # ---- sLSTM ----------------------------------------------------------------------------------
    def _slstm_gates_in(self, layer: sLSTMLayer, x: Tensor, x_conv: Tensor) -> list[Tensor]:
        """Input pre-activations i, f, z, o (bias included), each (B, S, NH, DH)."""
        c = self.config
        B, S, D = x.shape
        NH, DH = c.slstm_num_heads, c.slstm_head_dim
        bias = layer.bias
        outs = []
        for g, (lin, src) in enumerate(
            ((layer.igate, x_conv), (layer.fgate, x_conv), (layer.zgate, x), (layer.ogate, x))
        ):
            outs.append((lin(src) + bias[g * D : (g + 1) * D]).view(B, S, NH, DH))
        return outs

    def _slstm_cell(self, layer: sLSTMLayer, wx: list[Tensor], y, c_, n, m):
        """One sLSTM step; wx 4 x (B, NH, DH), state 4 x (B, NH, DH) -> new y, c, n, m."""
        DH = self.config.slstm_head_dim
        ry = torch.bmm(y.transpose(0, 1), layer.recurrent).transpose(0, 1)  # (B, NH, 4 * DH), per head
        i_raw, f_raw, z_raw, o_raw = (wx[g] + ry[..., g * DH : (g + 1) * DH] for g in range(4))
        log_f = logsigmoid(f_raw)
        m_new = torch.maximum(log_f + m, i_raw)
        i_act = torch.exp(i_raw - m_new)
        f_act = torch.exp(log_f + m - m_new)
        c_new = f_act * c_ + i_act * torch.tanh(z_raw)
        n_new = f_act * n + i_act
        y_new = torch.sigmoid(o_raw) * c_new / n_new
        return y_new, c_new, n_new, m_new

    def _conv(self, layer: sLSTMLayer, padded: Tensor, S: int) -> Tensor:
        """Causal depthwise conv + SiLU: padded (B, K-1+S, D) -> (B, S, D), as K shifted products."""
        K = layer.kernel_size
        w = layer.conv.weight.reshape(-1, K).t()  # (K, D): tap j in row j
        out = narrow(padded, 1, 0, S) * narrow(w, 0, 0, 1)
        for j in range(1, K):
            out = out + narrow(padded, 1, j, S) * narrow(w, 0, j, 1)
        return silu(out + layer.conv.bias)

    def _slstm_step(self, layer: sLSTMLayer, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """x (B, 1, D) or (B, D) -> output of the same shape; state y, c, n, m (B, NH, DH), conv (B, K-1, D)."""
        B, flat = x.shape[0], x.dim() == 2
        x = x.view(B, 1, -1) if flat else x
        new: LayerState = {}
        x_conv = x
        if layer.kernel_size > 0:
            padded = torch.cat([state["conv"], x], dim=1)  # (B, K, D)
            x_conv = self._conv(layer, padded, 1)
            new["conv"] = padded[:, 1:]
        wx = [t.view(B, t.shape[2], t.shape[3]) for t in self._slstm_gates_in(layer, x, x_conv)]
        y, c_, n, m = self._slstm_cell(layer, wx, state["y"], state["c"], state["n"], state["m"])
        new.update(y=y, c=c_, n=n, m=m)
        out = self._head_norm(layer.group_norm, y.reshape(B, 1, *y.shape[1:]))
        return (out.view(B, -1) if flat else out), new

    def _slstm_prefill(
        self, layer: sLSTMLayer, x: Tensor, state: LayerState, keep: Tensor, drop: Tensor, valid_length: Tensor
    ) -> tuple[Tensor, LayerState]:
        """The scan over T static tokens; padded positions keep the old state. x (B, T, D)."""
        B, T, D = x.shape
        new: LayerState = {}
        x_conv = x
        if layer.kernel_size > 0:
            K1 = layer.kernel_size - 1
            padded = torch.cat([state["conv"], x], dim=1)  # (B, K-1+T, D)
            x_conv = self._conv(layer, padded, T)
            # rows valid_length .. valid_length + K-2 of padded, by one-hot products (exact)
            rows = torch.arange(K1 + T, device=x.device)[None, None, :]  # (1, 1, K-1+T)
            wanted = valid_length[:, None, None] + torch.arange(K1, device=x.device)[None, :, None]  # (B, K-1, 1)
            new["conv"] = torch.bmm((rows == wanted).float(), padded)  # (B, K-1, D)
        gates = self._slstm_gates_in(layer, x, x_conv)  # 4 x (B, T, NH, DH)
        y, c_, n, m = state["y"], state["c"], state["n"], state["m"]
        ys = []
        for t in range(T):
            wx = [narrow(g, 1, t, 1).view(B, g.shape[2], g.shape[3]) for g in gates]
            y_t, c_t, n_t, m_t = self._slstm_cell(layer, wx, y, c_, n, m)
            k_t = narrow(keep, 1, t, 1).view(B, 1, 1)
            d_t = narrow(drop, 1, t, 1).view(B, 1, 1)
            y, c_, n, m = (blend(new_, old, k_t, d_t) for new_, old in ((y_t, y), (c_t, c_), (n_t, n), (m_t, m)))
            ys.append(y_t.reshape(B, 1, *y_t.shape[1:]))
        new.update(y=y, c=c_, n=n, m=m)
        return self._head_norm(layer.group_norm, cat(ys, 1)), new


def check_supported(model: xLSTMForCausalLM) -> None:
    """Raise for models this module cannot export (wrong block types or non-float32 weights)."""
    for block in model.backbone.blocks:
        if not isinstance(block, mLSTMBlock | sLSTMBlock):
            raise TypeError(f"cannot export block type {type(block).__name__}")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise ValueError(f"export needs float32 weights, model has {sorted(str(d) for d in dtypes)}")
