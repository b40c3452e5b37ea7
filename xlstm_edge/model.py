"""xLSTM language model: the xLSTM 7B mLSTM block stack, with optional sLSTM blocks (xLSTM[m:s]).

``model(input_ids, state=None) -> (logits, state)``
    input_ids  (B, S) int64
    logits     (B, S, V) float (or (B, 1, V) with ``last_only=True``)
    state      list with one dict per block (see ``xlstm_edge.state``); None means all zeros

Module names follow Hugging Face's ``xLSTMForCausalLM`` so that ``state_dict()`` is its layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import xLSTMConfig
from .layers import GatedFFN, MultiHeadLayerNorm, RMSNorm, soft_cap
from .mlstm import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, mlstm_step
from .slstm import slstm_scan
from .state import LayerState, State, init_state

Form = Literal["chunkwise", "parallel", "recurrent"]
# (q, k, v, i, f, state | None, chunk_size, eps) -> (h, (C, n, m)); see xlstm_edge.mlstm.mlstm_chunkwise
ChunkwiseKernel = Callable[..., tuple[Tensor, tuple[Tensor, Tensor, Tensor]]]
# (wx, R, state | None) -> (y, (y, c, n, m)); see xlstm_edge.slstm.slstm_scan
SLSTMKernel = Callable[..., tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]]
FORMS: tuple[str, ...] = ("chunkwise", "parallel", "recurrent")


class mLSTMLayer(nn.Module):  # noqa: N801
    """x (B, S, D) -> y (B, S, D); state {"C": (B,NH,DQK,DV), "n": (B,NH,DQK), "m": (B,NH)}."""

    def __init__(self, config: xLSTMConfig):
        super().__init__()
        c = config
        self.config = c
        self.q = nn.Linear(c.hidden_size, c.qk_dim, bias=c.use_bias)
        self.k = nn.Linear(c.hidden_size, c.qk_dim, bias=c.use_bias)
        self.v = nn.Linear(c.hidden_size, c.v_dim, bias=c.use_bias)
        self.ogate_preact = nn.Linear(c.hidden_size, c.v_dim, bias=c.use_bias)
        self.igate_preact = nn.Linear(c.hidden_size, c.num_heads, bias=True)
        self.fgate_preact = nn.Linear(c.hidden_size, c.num_heads, bias=True)
        self.multihead_norm = MultiHeadLayerNorm(c.num_heads, c.v_head_dim, c.norm_eps, c.use_bias)
        self.out_proj = nn.Linear(c.v_dim, c.hidden_size, bias=c.use_bias)
        # the chunkwise form's implementation: ``mlstm_chunkwise`` (PyTorch) unless a kernel is plugged
        # in (``xLSTMForCausalLM.set_chunkwise_kernel``), same signature and return
        self.chunkwise_kernel: ChunkwiseKernel = mlstm_chunkwise

    def forward(
        self, x: Tensor, state: LayerState | None, form: Form = "chunkwise", chunk_size: int | None = None
    ) -> tuple[Tensor, LayerState]:
        c = self.config
        B, S, _ = x.shape
        NH = c.num_heads
        q = self.q(x).view(B, S, NH, -1).transpose(1, 2)  # (B, NH, S, DQK)
        k = self.k(x).view(B, S, NH, -1).transpose(1, 2)
        v = self.v(x).view(B, S, NH, -1).transpose(1, 2)  # (B, NH, S, DV)
        i = soft_cap(self.igate_preact(x), c.gate_soft_cap).transpose(1, 2)  # (B, NH, S)
        f = soft_cap(self.fgate_preact(x), c.gate_soft_cap).transpose(1, 2)
        cell_state = None if state is None else (state["C"], state["n"], state["m"])
        if S == 1 and cell_state is not None:
            h, (C, n, m) = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[..., 0], f[..., 0], cell_state, c.eps)
            h = h[:, :, None]
        elif form == "chunkwise":
            h, (C, n, m) = self.chunkwise_kernel(q, k, v, i, f, cell_state, chunk_size or c.chunk_size, c.eps)
        elif form == "parallel":
            h, (C, n, m) = mlstm_parallel(q, k, v, i, f, cell_state, c.eps)
        elif form == "recurrent":
            h, (C, n, m) = mlstm_recurrent(q, k, v, i, f, cell_state, c.eps)
        else:
            raise ValueError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
        h = self.multihead_norm(h.transpose(1, 2).to(x.dtype))  # (B, S, NH * DV)
        y = self.out_proj(torch.sigmoid(self.ogate_preact(x)) * h)
        return y, {"C": C, "n": n, "m": m}


class sLSTMLayer(nn.Module):  # noqa: N801
    """x (B, S, D) -> y (B, S, D); state {"y","c","n","m": (B, NH, DH), "conv": (B, K-1, D)}.

    i and f see x through a causal depthwise conv + SiLU; z and o see x directly; per-head
    recurrent matrices; the output goes through a per-head layer norm (group norm).
    """

    def __init__(self, config: xLSTMConfig):
        super().__init__()
        c = config
        D, NH, DH = c.hidden_size, c.slstm_num_heads, c.slstm_head_dim
        self.config = c
        self.kernel_size = c.slstm_conv_kernel_size
        if self.kernel_size > 0:
            self.conv = nn.Conv1d(D, D, self.kernel_size, groups=D, bias=True)
        self.igate = nn.Linear(D, D, bias=False)
        self.fgate = nn.Linear(D, D, bias=False)
        self.zgate = nn.Linear(D, D, bias=False)
        self.ogate = nn.Linear(D, D, bias=False)
        self.recurrent = nn.Parameter(torch.zeros(NH, DH, 4 * DH))
        self.bias = nn.Parameter(torch.zeros(4 * D))  # i | f | z | o
        self.group_norm = MultiHeadLayerNorm(NH, DH, c.norm_eps, c.use_bias)
        # the scan's implementation: ``slstm_scan`` (PyTorch) unless a kernel is plugged in
        # (``xLSTMForCausalLM.set_slstm_kernel``), same signature and return
        self.scan_kernel: SLSTMKernel = slstm_scan

    def forward(
        self, x: Tensor, state: LayerState | None, form: Form = "chunkwise", chunk_size: int | None = None
    ) -> tuple[Tensor, LayerState]:
        del form, chunk_size  # the sLSTM recurrence is a scan in every form
        c = self.config
        B, S, D = x.shape
        NH, DH = c.slstm_num_heads, c.slstm_head_dim
        new_state: LayerState = {}
        x_conv = x
        if self.kernel_size > 0:
            history = (
                state["conv"].to(x.dtype)
                if state is not None
                else x.new_zeros(B, self.kernel_size - 1, D)
            )
            padded = torch.cat([history, x], dim=1)  # (B, K-1+S, D)
            x_conv = F.silu(F.conv1d(padded.transpose(1, 2), self.conv.weight, self.conv.bias, groups=D))
            x_conv = x_conv.transpose(1, 2)
            new_state["conv"] = padded[:, S:]
        wx = torch.stack([self.igate(x_conv), self.fgate(x_conv), self.zgate(x), self.ogate(x)], dim=2)
        wx = (wx + self.bias.view(4, D)).view(B, S, 4, NH, DH)
        cell_state = None if state is None else (state["y"], state["c"], state["n"], state["m"])
        y, (y_last, c_last, n_last, m_last) = self.scan_kernel(wx, self.recurrent, cell_state)
        new_state.update(y=y_last, c=c_last, n=n_last, m=m_last)
        return self.group_norm(y.to(x.dtype)), new_state


class mLSTMBlock(nn.Module):  # noqa: N801
    """x = x + mLSTM(RMSNorm(x)); x = x + SwiGLU(RMSNorm(x))."""

    def __init__(self, config: xLSTMConfig):
        super().__init__()
        self.norm_mlstm = RMSNorm(config.hidden_size, config.norm_eps, config.use_bias)
        self.mlstm_layer = mLSTMLayer(config)
        self.norm_ffn = RMSNorm(config.hidden_size, config.norm_eps, config.use_bias)
        self.ffn = GatedFFN(config.hidden_size, config.ffn_dim, "silu", config.use_bias)

    def forward(self, x: Tensor, state: LayerState | None, form: Form = "chunkwise", chunk_size=None):
        y, state = self.mlstm_layer(self.norm_mlstm(x), state, form, chunk_size)
        x = x + y
        return x + self.ffn(self.norm_ffn(x)), state


class sLSTMBlock(nn.Module):  # noqa: N801
    """x = x + sLSTM(RMSNorm(x)); x = x + GeGLU(RMSNorm(x)) (proj factor 1.3)."""

    def __init__(self, config: xLSTMConfig):
        super().__init__()
        self.norm_slstm = RMSNorm(config.hidden_size, config.norm_eps, config.use_bias)
        self.slstm_layer = sLSTMLayer(config)
        self.norm_ffn = RMSNorm(config.hidden_size, config.norm_eps, config.use_bias)
        self.ffn = GatedFFN(config.hidden_size, config.slstm_ffn_dim, "gelu", config.use_bias)

    def forward(self, x: Tensor, state: LayerState | None, form: Form = "chunkwise", chunk_size=None):
        y, state = self.slstm_layer(self.norm_slstm(x), state, form, chunk_size)
        x = x + y
        return x + self.ffn(self.norm_ffn(x)), state


class xLSTMBackbone(nn.Module):  # noqa: N801
    def __init__(self, config: xLSTMConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(
            sLSTMBlock(config) if kind == "s" else mLSTMBlock(config) for kind in config.block_types()
        )
        self.out_norm = RMSNorm(config.hidden_size, config.norm_eps, config.use_bias) if config.add_out_norm \
            else nn.Identity()


class xLSTMForCausalLM(nn.Module):  # noqa: N801
    """The language model. ``forward(input_ids, state=None, form=..., chunk_size=None, last_only=False)``."""

    def __init__(self, config: xLSTMConfig):
        super().__init__()
        self.config = config
        self.backbone = xLSTMBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight
        self.init_weights()

    def num_params(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    @torch.no_grad()
    def column_major_linears_(self) -> xLSTMForCausalLM:
        """Store every Linear weight (out, in) column-major, i.e. as the transpose of a contiguous
        (in, out) matrix, in place (same values, same Parameter objects). ``F.linear`` then multiplies
        by a contiguous matrix, which on CPU streams a decode step's weights about 2x faster than the
        row-major layout (MKL's M=1 path: 13 vs 26 GB/s for the 154 MB LM head of ``small``).
        For inference on CPU; ``state_dict`` values are unchanged (``save_checkpoint`` writes them
        contiguous). Returns the model."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.weight.is_contiguous() and module.weight.dim() == 2:
                module.weight.data = module.weight.data.t().contiguous().t()
        return self

    def set_chunkwise_kernel(self, kernel: ChunkwiseKernel | None) -> None:
        """Run every mLSTM layer's chunkwise form through ``kernel`` (None: the PyTorch form)."""
        for block in self.backbone.blocks:
            if isinstance(block, mLSTMBlock):
                block.mlstm_layer.chunkwise_kernel = kernel or mlstm_chunkwise

    def set_slstm_kernel(self, kernel: SLSTMKernel | None) -> None:
        """Run every sLSTM layer's scan through ``kernel`` (None: the PyTorch loop)."""
        for block in self.backbone.blocks:
            if isinstance(block, sLSTMBlock):
                block.slstm_layer.scan_kernel = kernel or slstm_scan

    def init_state(self, batch_size: int = 1, device=None) -> State:
        return init_state(self.config, batch_size, device=device)

    def forward(
        self,
        input_ids: Tensor,
        state: State | None = None,
        form: Form = "chunkwise",
        chunk_size: int | None = None,
        last_only: bool = False,
        labels: Tensor | None = None,
    ) -> tuple[Tensor, State]:
        """(logits, state); with labels (B, S) int64, (loss, state) instead: the mean cross-entropy of
        the logits against labels (``lm_loss``), the logits never returned (a compiled ``lm_loss``
        fuses the head's soft cap, the float32 upcast and the loss, ``compile_for_training``)."""
        if labels is not None and last_only:
            raise ValueError("labels and last_only exclude each other")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids is empty: need at least one token")
        if form not in FORMS:
            raise ValueError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
        if state is not None and len(state) != len(self.backbone.blocks):
            raise ValueError(f"state has {len(state)} layers, model has {len(self.backbone.blocks)}")
        x = self.backbone.embeddings(input_ids)
        new_state: State = []
        for idx, block in enumerate(self.backbone.blocks):
            x, layer_state = block(x, None if state is None else state[idx], form, chunk_size)
            new_state.append(layer_state)
        if labels is not None:
            return self.lm_loss(x, labels), new_state
        if last_only:
            x = x[:, -1:]
        return self.logits(x), new_state

    def logits(self, x: Tensor) -> Tensor:
        """The head: the last block's output x (B, S, D) -> soft-capped logits (B, S, V)."""
        return soft_cap(self.lm_head(self.backbone.out_norm(x)), self.config.output_logit_soft_cap)

    def lm_loss(self, x: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy (float32) of the head's logits for x (B, S, D) against labels (B, S)."""
        return F.cross_entropy(self.logits(x).float().flatten(0, 1), labels.flatten())

    def compile_for_training(self, backend: str = "inductor") -> xLSTMForCausalLM:
        """torch.compile, region by region: every block (compiled once, reused by the blocks of its
        kind) and ``lm_loss``; the Triton kernels plugged in by ``set_chunkwise_kernel`` /
        ``set_slstm_kernel`` must be wrapped in ``torch.compiler.disable`` (they run eagerly between
        the compiled pieces). Fuses the norms, gates, soft caps and casts around the matmuls, and the
        head's soft cap, upcast and loss (seen as ~60% of a `small` training step's device time run
        eagerly, bench/results/kernels.md). In place (parameter names unchanged); returns the model."""
        for block in self.backbone.blocks:
            block.compile(backend=backend)
        self.lm_loss = torch.compile(self.lm_loss, backend=backend)  # type: ignore[method-assign]
        return self

    # ---- initialization (as Hugging Face does for xLSTM 7B) --------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        c = self.config
        small_std = math.sqrt(2 / (5 * c.hidden_size))
        nn.init.normal_(self.backbone.embeddings.weight, std=small_std)
        if not c.tie_word_embeddings:
            nn.init.normal_(self.lm_head.weight, std=small_std)
        for block in self.backbone.blocks:
            init_block_weights(block, c)


@torch.no_grad()
def init_block_weights(block: nn.Module, c: xLSTMConfig) -> None:
    """One block's initial weights, as ``xLSTMForCausalLM.init_weights`` gives them (so that a model can
    be initialized block by block, e.g. written to disk without ever being whole in memory)."""
    D = c.hidden_size
    small_std = math.sqrt(2 / (5 * D))
    out_std = 2 / (c.num_hidden_layers * math.sqrt(D))
    for name, mod in block.named_modules():
        if isinstance(mod, nn.Linear):
            std = out_std if name.endswith(("proj_down", "out_proj")) else small_std
            nn.init.normal_(mod.weight, std=std)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
    if isinstance(block, mLSTMBlock):
        layer = block.mlstm_layer
        nn.init.zeros_(layer.igate_preact.weight)
        nn.init.zeros_(layer.fgate_preact.weight)
        layer.igate_preact.bias.fill_(-10.0)
        layer.fgate_preact.bias.copy_(torch.linspace(3.0, 6.0, c.num_heads))
    else:
        layer = block.slstm_layer
        DH = c.slstm_head_dim
        nn.init.normal_(layer.recurrent, std=1 / math.sqrt(DH) * 0.1)
        bias = layer.bias.view(4, c.slstm_num_heads, DH)
        bias.zero_()
        bias[1].copy_(torch.linspace(3.0, 6.0, DH).expand(c.slstm_num_heads, DH))
