"""Model configuration: one dataclass, field names as in Hugging Face's ``xLSTMConfig`` where they overlap.

Presets (``xLSTMConfig.from_preset``):
    tiny   a few hundred K params, for tests
    small  D 768, 12 blocks, 4 heads, vocab 50304 (162 M params), the CPU benchmark shape
    7b     the xLSTM 7B shape (D 4096, 32 blocks, 8 heads); for export and memory planning only
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def round_up(value: float, multiple_of: int) -> int:
    """Hugging Face's rounding: floor((value + multiple_of - 1) / multiple_of) * multiple_of.

    For a fractional value this can round down (768 * 2.667 = 2048.3 -> 2048); we keep it
    bit-for-bit so that checkpoints have the same FFN width as transformers builds.
    """
    return int(((value + multiple_of - 1) // multiple_of) * multiple_of)


@dataclass
class xLSTMConfig:  # noqa: N801 (name follows Hugging Face)
    vocab_size: int = 50304
    hidden_size: int = 4096
    num_hidden_layers: int = 32
    num_heads: int = 8
    use_bias: bool = False
    norm_eps: float = 1e-6
    add_out_norm: bool = True
    tie_word_embeddings: bool = False
    # mLSTM layer: q/k get D * qk_dim_factor features, v/o get D * v_dim_factor
    qk_dim_factor: float = 0.5
    v_dim_factor: float = 1.0
    # mLSTM cell: eps in the h denominator; chunk size of the chunkwise form
    eps: float = 1e-6
    chunk_size: int = 64
    # SwiGLU FFN (mLSTM blocks): up dim = round_up(D * ffn_proj_factor, ffn_round_up_to_multiple_of)
    ffn_proj_factor: float = 2.667
    ffn_round_up_to_multiple_of: int = 64
    # tanh soft caps (x -> cap * tanh(x / cap)); 0 disables
    gate_soft_cap: float = 15.0
    output_logit_soft_cap: float = 30.0
    # xLSTM[m:s] stacks: indices of sLSTM blocks (empty: the xLSTM 7B all-mLSTM stack)
    slstm_at: list[int] = field(default_factory=list)
    slstm_num_heads: int = 4
    slstm_conv_kernel_size: int = 4  # causal depthwise conv on the i/f path; 0 disables
    slstm_ffn_proj_factor: float = 1.3  # gated GELU FFN after an sLSTM layer
    # special tokens (Hugging Face defaults)
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2

    def __post_init__(self) -> None:
        self.slstm_at = sorted(int(i) for i in self.slstm_at)
        problems = []
        if self.hidden_size <= 0 or self.num_hidden_layers <= 0 or self.vocab_size <= 0:
            problems.append("hidden_size, num_hidden_layers and vocab_size must be positive")
        if self.qk_dim % self.num_heads or self.v_dim % self.num_heads:
            problems.append(
                f"qk_dim {self.qk_dim} and v_dim {self.v_dim} must divide by num_heads {self.num_heads}"
            )
        if any(not 0 <= i < self.num_hidden_layers for i in self.slstm_at):
            problems.append(f"slstm_at {self.slstm_at} outside 0..{self.num_hidden_layers - 1}")
        if self.slstm_at and self.hidden_size % self.slstm_num_heads:
            problems.append(f"hidden_size {self.hidden_size} must divide by slstm_num_heads {self.slstm_num_heads}")
        if self.chunk_size <= 0:
            problems.append("chunk_size must be positive")
        if problems:
            raise ValueError("invalid xLSTMConfig: " + "; ".join(problems))

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def qk_dim(self) -> int:
        return int(self.hidden_size * self.qk_dim_factor)

    @property
    def v_dim(self) -> int:
        return int(self.hidden_size * self.v_dim_factor)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_dim // self.num_heads

    @property
    def v_head_dim(self) -> int:
        return self.v_dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return round_up(self.hidden_size * self.ffn_proj_factor, self.ffn_round_up_to_multiple_of)

    @property
    def slstm_ffn_dim(self) -> int:
        return round_up(self.hidden_size * self.slstm_ffn_proj_factor, 64)

    @property
    def slstm_head_dim(self) -> int:
        return self.hidden_size // self.slstm_num_heads

    def block_types(self) -> list[str]:
        """Block map: ``"m"`` or ``"s"`` for each block, in order."""
        return ["s" if i in self.slstm_at else "m" for i in range(self.num_hidden_layers)]

    # ---- (de)serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` that ``transformers.xLSTMConfig`` reads (sLSTM fields ride along)."""
        d = self.to_dict()
        if not self.slstm_at:
            for key in ("slstm_at", "slstm_num_heads", "slstm_conv_kernel_size", "slstm_ffn_proj_factor"):
                d.pop(key)
        d.update(
            model_type="xlstm",
            architectures=["xLSTMForCausalLM"],
            embedding_dim=self.hidden_size,
            num_blocks=self.num_hidden_layers,
            weight_mode="single",
            mode="inference",
            chunkwise_kernel="chunkwise--native_autograd",
            sequence_kernel="native_sequence__native",
            step_kernel="native",
            inference_state_dtype="float32",
            autocast_kernel_dtype="float32",
            torch_dtype="float32",
        )
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> xLSTMConfig:
        """Build from our own dict, a Hugging Face ``config.json`` or an ``xlstm_large`` config.

        Unknown keys are ignored; aliases (``embedding_dim``, ``num_blocks``) are honoured; a
        contradiction between an alias and its field is an error.
        """
        raw = dict(raw)
        for alias, name in (("embedding_dim", "hidden_size"), ("num_blocks", "num_hidden_layers")):
            if raw.get(alias) is not None:
                if raw.get(name) is not None and raw[name] != raw[alias]:
                    raise ValueError(f"config says {name}={raw[name]} but {alias}={raw[alias]}")
                raw[name] = raw[alias]
        if raw.get("weight_mode", "single") not in ("single", "fused"):
            raise ValueError(f"unknown weight_mode {raw['weight_mode']!r}")
        eos = raw.get("eos_token_id")
        if isinstance(eos, list):
            raw["eos_token_id"] = eos[0] if eos else None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> xLSTMConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# byte-level models: ids 0..255 are the bytes, then <bos> 256, <eos> 257, <pad> 258 (vocab padded to 260)
BYTE_SPECIALS: dict[str, Any] = dict(vocab_size=260, bos_token_id=256, eos_token_id=257, pad_token_id=258)

PRESETS: dict[str, dict[str, Any]] = {
    # tiny: mLSTM-only like xLSTM 7B; tiny-ms: an xLSTM[m:s] stack with an sLSTM block in the middle
    "tiny": dict(**BYTE_SPECIALS, hidden_size=64, num_hidden_layers=2, num_heads=2, chunk_size=16),
    "tiny-ms": dict(**BYTE_SPECIALS, hidden_size=64, num_hidden_layers=3, num_heads=2, chunk_size=16,
                    slstm_at=[1], slstm_num_heads=2),
    "small": dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_heads=4),
    "7b": dict(vocab_size=50304, hidden_size=4096, num_hidden_layers=32, num_heads=8, ffn_proj_factor=2.667),
}
