"""Checkpoints: load HF-layout or official ``xlstm_large``-layout safetensors, save HF layout, inspect headers.

Accepted inputs of ``load_checkpoint`` / ``checkpoint_info``:
    a directory with ``config.json`` and ``model.safetensors``, or a sharded ``model.safetensors.index.json``
    (Hugging Face layout), or exactly one other ``*.safetensors`` file; or a path to a single ``.safetensors``
    file with a ``config.json`` beside it.

Tensor names (auto-detected, per tensor):
    HF layout           ``backbone.embeddings.weight``, ``backbone.blocks.{i}.mlstm_layer.q.weight``, ...
    xlstm_large layout  ``embedding.weight`` at the top, the rest as in HF.
    fused weights       ``mlstm_layer.qkv_opreact.{weight,bias}`` rows q|k|v|o (qk_dim, qk_dim, v_dim, v_dim),
                        ``mlstm_layer.ifgate_preact.{weight,bias}`` rows i|f (num_heads each),
                        ``ffn.proj_up_gate_z.{weight,bias}`` rows gate|up (ffn_dim each).

Every problem raises ``CheckpointError`` (a ``ValueError``) with one line that names it. Loading is cheap:
safetensors files are opened lazily (mmap) and read tensor by tensor into the asked dtype
(``weights.CheckpointWeights``), the model is built on the meta device and the loaded tensors are
assigned to it (``weights.build_model``), so no weight is allocated twice and none is initialized
(the first meta-device model in a process costs a one-time ~2-4 s: torch imports torch._dynamo for it).
``checkpoint_info`` reads headers only and works out the expected shapes from the config (milliseconds).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .config import xLSTMConfig
from .model import xLSTMForCausalLM
from .publish import publishing
from .state import state_bytes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
EMBEDDING = "backbone.embeddings.weight"
LARGE_EMBEDDING = "embedding.weight"  # the official xlstm_large layout keeps the embedding at the top
LM_HEAD = "lm_head.weight"

# safetensors dtype codes -> (torch dtype name, bytes per element)
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
_FLOAT_CODES = {"F64", "F32", "F16", "BF16"}

# fused tensor suffix -> the unfused names its rows hold, in order
_FUSED: dict[str, tuple[str, ...]] = {
    "mlstm_layer.qkv_opreact": ("mlstm_layer.q", "mlstm_layer.k", "mlstm_layer.v", "mlstm_layer.ogate_preact"),
    "mlstm_layer.ifgate_preact": ("mlstm_layer.igate_preact", "mlstm_layer.fgate_preact"),
    "ffn.proj_up_gate_z": ("ffn.proj_up_gate", "ffn.proj_up"),
}
_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(.+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded or saved; the message is one line naming the problem."""


class SavesItself(Protocol):
    """What ``save_checkpoint`` needs of a tokenizer: ``save(directory)`` writes ``tokenizer.json`` there."""

    def save(self, directory: str | os.PathLike[str]) -> Any: ...


# ---- reading: files, config, headers ---------------------------------------------------------------
@dataclass(frozen=True)
class _TensorInfo:
    """Where one stored tensor lives; ``rows`` selects a slice of dim 0 (a part of a fused tensor)."""

    file: Path
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors code, e.g. "F32"
    rows: tuple[int, int] | None = None

    @property
    def nbytes(self) -> int:
        n = _DTYPES.get(self.dtype, ("?", 0))[1]
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class _Checkpoint:
    """A located, header-checked checkpoint: config plus a plan mapping model names to stored tensors."""

    root: Path
    files: list[Path]
    config: xLSTMConfig
    plan: dict[str, _TensorInfo]  # model parameter name -> its source (lm_head absent when tied)
    stored: dict[str, _TensorInfo]  # every tensor in the files, by stored name
    layout: str  # "hf" | "xlstm_large"
    weight_mode: str  # "single" | "fused"


def _locate(path: str | os.PathLike[str]) -> tuple[Path, Path, list[Path], dict[str, str] | None]:
    """(root dir, config path, weight files, index weight_map or None) for a checkpoint path."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint path not found: {p}")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise CheckpointError(f"{p} is not a directory or a .safetensors file")
        root, files, index = p.parent, [p], None
    else:
        root = p
        index_path = p / INDEX_NAME
        if (p / WEIGHTS_NAME).is_file():
            files, index = [p / WEIGHTS_NAME], None
        elif index_path.is_file():
            index = _read_index(index_path)
            files = [p / f for f in sorted(set(index.values()))]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise CheckpointError(f"{index_path} names shard(s) that do not exist: {', '.join(absent[:3])}")
        else:
            found = sorted(p.glob("*.safetensors"))
            if not found:
                raise CheckpointError(f"no weights file in {p}: expected {WEIGHTS_NAME} or {INDEX_NAME}")
            if len(found) > 1:
                names = ", ".join(f.name for f in found[:4])
                raise CheckpointError(f"several .safetensors files in {p} ({names}) but no {INDEX_NAME}")
            files, index = found, None
    config_path = root / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} in {root}")
    return root, config_path, files, index


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not UTF-8 text: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(raw).__name__}")
    return raw


def _read_index(path: Path) -> dict[str, str]:
    weight_map = _read_json(path).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path} has no 'weight_map' object of tensor name -> shard file")
    bad = [v for v in weight_map.values() if Path(v).name != v]
    if bad:
        raise CheckpointError(f"{path} names a shard outside its directory: {bad[0]!r}")
    return weight_map


def _read_config(path: Path) -> tuple[dict[str, Any], xLSTMConfig]:
    raw = _read_json(path)
    if raw.get("model_type", "xlstm") != "xlstm":
        raise CheckpointError(f"{path} describes model_type {raw['model_type']!r}, not 'xlstm'")
    try:
        return raw, xLSTMConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _read_headers(files: list[Path], index: dict[str, str] | None, index_path: Path) -> dict[str, _TensorInfo]:
    """Shapes and dtypes of every stored tensor, from the headers only (no tensor data is read)."""
    stored: dict[str, _TensorInfo] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    if name in stored:
                        raise CheckpointError(f"tensor {name} is stored twice ({stored[name].file.name}, {file.name})")
                    stored[name] = _TensorInfo(file, name, tuple(sl.get_shape()), sl.get_dtype())
        except SafetensorError as exc:
            raise CheckpointError(f"{file} is not a valid safetensors file (truncated or corrupt): {exc}") from exc
        except OSError as exc:
            raise CheckpointError(f"cannot read {file}: {exc}") from exc
    if index is not None:
        for name, shard in index.items():
            if name not in stored or stored[name].file.name != shard:
                raise CheckpointError(f"{index_path} puts tensor {name} in {shard}, which does not hold it")
    return stored


# ---- mapping stored names to model names ----------------------------------------------------------
def expected_shapes(config: xLSTMConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape, in ``xLSTMForCausalLM(config).state_dict()`` order (lm_head left out when tied).

    Worked out from the config alone: building even a meta-device model costs seconds the first time in a
    process (``normal_`` on meta imports torch._dynamo), too much for ``checkpoint_info``. A test keeps this
    equal to the model's own state dict.
    """
    c = config
    D, V = c.hidden_size, c.vocab_size
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING: (V, D)}

    def linear(name: str, n_in: int, n_out: int, bias: bool) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        if bias:
            shapes[f"{name}.bias"] = (n_out,)

    def norm(name: str, dim: int) -> None:
        shapes[f"{name}.weight"] = (dim,)
        if c.use_bias:
            shapes[f"{name}.bias"] = (dim,)

    def ffn(prefix: str, hidden: int) -> None:
        linear(f"{prefix}.ffn.proj_up_gate", D, hidden, c.use_bias)
        linear(f"{prefix}.ffn.proj_up", D, hidden, c.use_bias)
        linear(f"{prefix}.ffn.proj_down", hidden, D, c.use_bias)

    for i, kind in enumerate(c.block_types()):
        b = f"backbone.blocks.{i}"
        if kind == "m":
            norm(f"{b}.norm_mlstm", D)
            for name, dim in (("q", c.qk_dim), ("k", c.qk_dim), ("v", c.v_dim), ("ogate_preact", c.v_dim)):
                linear(f"{b}.mlstm_layer.{name}", D, dim, c.use_bias)
            linear(f"{b}.mlstm_layer.igate_preact", D, c.num_heads, True)
            linear(f"{b}.mlstm_layer.fgate_preact", D, c.num_heads, True)
            norm(f"{b}.mlstm_layer.multihead_norm", c.v_dim)
            linear(f"{b}.mlstm_layer.out_proj", c.v_dim, D, c.use_bias)
            norm(f"{b}.norm_ffn", D)
            ffn(b, c.ffn_dim)
        else:
            norm(f"{b}.norm_slstm", D)
            layer = f"{b}.slstm_layer"
            shapes[f"{layer}.recurrent"] = (c.slstm_num_heads, c.slstm_head_dim, 4 * c.slstm_head_dim)
            shapes[f"{layer}.bias"] = (4 * D,)
            if c.slstm_conv_kernel_size > 0:
                shapes[f"{layer}.conv.weight"] = (D, 1, c.slstm_conv_kernel_size)
                shapes[f"{layer}.conv.bias"] = (D,)
            for gate in ("igate", "fgate", "zgate", "ogate"):
                linear(f"{layer}.{gate}", D, D, False)
            norm(f"{layer}.group_norm", D)
            norm(f"{b}.norm_ffn", D)
            ffn(b, c.slstm_ffn_dim)
    if c.add_out_norm:
        norm("backbone.out_norm", D)
    if not c.tie_word_embeddings:
        shapes[LM_HEAD] = (V, D)
    return shapes


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _check_config(config: xLSTMConfig, raw: dict[str, Any], stored: dict[str, _TensorInfo]) -> None:
    """Raise when config.json and the tensors disagree on a size; say which field and what the weights imply."""
    problems: list[str] = []

    def disagree(field: str, stated: Any, tensor: str, implied: Any, derived: str | None = None) -> None:
        """``derived``: the size that ``field`` sets (e.g. qk_dim from qk_dim_factor), when it is not the field."""
        ours = stated if derived is None else getattr(config, derived)
        if ours != implied:
            said = f"{field}={stated}" + ("" if derived is None else f" ({derived}={ours})")
            problems.append(f"{said} but {tensor} {_fmt(stored[tensor].shape)} implies {derived or field}={implied}")

    for emb in (EMBEDDING, LARGE_EMBEDDING, LM_HEAD):
        if emb in stored and len(stored[emb].shape) == 2:
            disagree("vocab_size", config.vocab_size, emb, stored[emb].shape[0])
            disagree("hidden_size", config.hidden_size, emb, stored[emb].shape[1])
            break
    blocks: dict[int, dict[str, str]] = {}  # block index -> {suffix: stored name}
    for name in stored:
        match = _BLOCK.match(name)
        if match:
            blocks.setdefault(int(match.group(1)), {})[match.group(2)] = name
    if blocks:
        last = max(blocks)
        if last + 1 != config.num_hidden_layers:
            problems.append(
                f"num_hidden_layers={config.num_hidden_layers} but the weights have blocks 0..{last} "
                f"(num_hidden_layers={last + 1})"
            )
        s_blocks = sorted(i for i, parts in blocks.items() if any(k.startswith("slstm_layer.") for k in parts))
        if s_blocks != config.slstm_at:
            problems.append(f"slstm_at={config.slstm_at} but the weights have sLSTM blocks at {s_blocks}")
        hidden_ok = not any(p.startswith("hidden_size=") for p in problems)  # else derived sizes repeat it
        m_parts = next((blocks[i] for i in sorted(blocks) if i not in s_blocks), {})
        rows_of = {suffix: stored[name].shape[0] for suffix, name in m_parts.items() if stored[name].shape}
        for suffix, field, divisor, derived in (
            ("mlstm_layer.igate_preact.weight", "num_heads", 1, None),
            ("mlstm_layer.ifgate_preact.weight", "num_heads", 2, None),
            ("mlstm_layer.q.weight", "qk_dim_factor", 1, "qk_dim"),
            ("mlstm_layer.v.weight", "v_dim_factor", 1, "v_dim"),
            ("ffn.proj_up.weight", "ffn_proj_factor", 1, "ffn_dim"),
            ("ffn.proj_up_gate_z.weight", "ffn_proj_factor", 2, "ffn_dim"),
        ):
            if suffix in rows_of and (derived is None or hidden_ok):
                disagree(field, getattr(config, field), m_parts[suffix], rows_of[suffix] // divisor, derived)
        s_parts = blocks[s_blocks[0]] if s_blocks else {}
        recurrent = s_parts.get("slstm_layer.recurrent")
        if recurrent is not None and stored[recurrent].shape:
            disagree("slstm_num_heads", config.slstm_num_heads, recurrent, stored[recurrent].shape[0])
    fused = any(name.rsplit(".", 1)[0].endswith(tuple(_FUSED)) for name in stored)
    stated_mode = raw.get("weight_mode")
    if stated_mode is not None and stated_mode != ("fused" if fused else "single"):
        problems.append(f"weight_mode={stated_mode} but the weights are {'fused' if fused else 'single (unfused)'}")
    if problems:
        raise CheckpointError("config.json contradicts the weights: " + "; ".join(problems))


def _plan(
    stored: dict[str, _TensorInfo], expected: dict[str, tuple[int, ...]], tied: bool
) -> tuple[dict[str, _TensorInfo], str, str]:
    """Map model parameter names to stored tensors (renaming the xlstm_large embedding, splitting fused rows).

    Returns (plan, layout, weight_mode); raises on missing or unexpected names and on wrong shapes.
    """
    plan: dict[str, _TensorInfo] = {}
    unexpected: list[str] = []
    wrong: list[str] = []
    misshapen: set[str] = set()  # model names whose stored tensor has the wrong shape (not "missing")
    layout, weight_mode = "hf", "single"
    for name, info in stored.items():
        target = name
        if name == LARGE_EMBEDDING:
            target, layout = EMBEDDING, "xlstm_large"
        module, _, leaf = target.rpartition(".")
        fused_key = next((k for k in _FUSED if module.endswith("." + k)), None)
        if fused_key is not None:
            weight_mode = "fused"
            prefix = module[: -len(fused_key)]
            parts = [f"{prefix}{p}.{leaf}" for p in _FUSED[fused_key]]
            if not all(p in expected for p in parts):
                unexpected.append(name)
                continue
            sizes = [expected[p][0] for p in parts]
            want = (sum(sizes), *expected[parts[0]][1:])
            if info.shape != want:
                wrong.append(f"{name} has shape {_fmt(info.shape)}, expected {_fmt(want)}")
                misshapen.update(parts)
                continue
            start = 0
            for part, size in zip(parts, sizes, strict=True):
                if part in plan:
                    raise CheckpointError(f"tensor {part} is stored both fused ({name}) and on its own")
                plan[part] = _TensorInfo(info.file, name, (size, *info.shape[1:]), info.dtype, (start, start + size))
                start += size
            continue
        if target == LM_HEAD and tied:
            continue  # tied to the embedding; checked to be equal to it at load time
        if target not in expected:
            unexpected.append(name)
            continue
        if target in plan:
            raise CheckpointError(f"tensor {target} is stored twice (as {plan[target].name} and {name})")
        if info.shape != expected[target]:
            wrong.append(f"{name} has shape {_fmt(info.shape)}, expected {_fmt(expected[target])}")
            misshapen.add(target)
            continue
        plan[target] = info
    missing = [k for k in expected if k not in plan and k not in misshapen]
    if missing:
        hint = " (lm_head.weight is needed unless tie_word_embeddings is true)" if missing == [LM_HEAD] else ""
        raise CheckpointError(f"{len(missing)} tensor(s) missing from the checkpoint: {', '.join(missing[:5])}{hint}")
    if unexpected:
        raise CheckpointError(
            f"{len(unexpected)} unexpected tensor(s) in the checkpoint: {', '.join(sorted(unexpected)[:5])}"
        )
    if wrong:
        raise CheckpointError(f"{len(wrong)} tensor(s) with the wrong shape: {'; '.join(wrong[:3])}")
    bad_dtype = [f"{i.name} ({i.dtype})" for i in plan.values() if i.dtype not in _FLOAT_CODES]
    if bad_dtype:
        raise CheckpointError(f"tensor(s) not stored as floating point: {', '.join(bad_dtype[:3])}")
    return plan, layout, weight_mode


def _open(path: str | os.PathLike[str]) -> _Checkpoint:
    """Locate files, read config and headers, check them against each other; reads no tensor data."""
    root, config_path, files, index = _locate(path)
    raw, config = _read_config(config_path)
    stored = _read_headers(files, index, root / INDEX_NAME)
    if not stored:
        raise CheckpointError(f"the weights in {root} hold no tensors")
    _check_config(config, raw, stored)
    plan, layout, weight_mode = _plan(stored, expected_shapes(config), config.tie_word_embeddings)
    return _Checkpoint(root, files, config, plan, stored, layout, weight_mode)


# ---- public API -----------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> xLSTMForCausalLM:
    """Load a checkpoint (HF or xlstm_large layout, single or fused, one file or shards) in eval mode.

    Parameters end up in ``dtype`` on the CPU. Tied embeddings (``tie_word_embeddings``) share one tensor.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    from .weights import CheckpointWeights, build_model

    source = CheckpointWeights(path)
    model = build_model(source, dtype)
    ckpt = source._ckpt
    lm_head_stored = ckpt.stored.get(LM_HEAD) if ckpt.config.tie_word_embeddings else None
    if lm_head_stored is not None:
        try:
            with safe_open(lm_head_stored.file, framework="pt") as f:
                lm_head = f.get_tensor(LM_HEAD).to(dtype)
        except SafetensorError as exc:
            raise CheckpointError(f"cannot read tensor data from {ckpt.root}: {exc}") from exc
        if not torch.equal(lm_head, model.backbone.embeddings.weight):
            raise CheckpointError(
                "config.json says tie_word_embeddings=true but the stored lm_head.weight differs from the "
                "embedding (transformers' xLSTM never ties them; set tie_word_embeddings to false to load it)"
            )
    return model.eval()


def checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Sizes of a checkpoint from its headers (no tensor data read; the model exists only on meta).

    Keys: path, layout ("hf" | "xlstm_large"), weight_mode ("single" | "fused"), files, num_params (as the
    model counts them: a tied embedding once), bytes_by_dtype and total_bytes (of the tensors stored),
    state_bytes_per_sequence (float32 recurrent state, any context length), config (our config dict).
    """
    ckpt = _open(path)
    bytes_by_dtype: dict[str, int] = {}
    for info in ckpt.stored.values():
        key = _DTYPES.get(info.dtype, (info.dtype.lower(), 0))[0]
        bytes_by_dtype[key] = bytes_by_dtype.get(key, 0) + info.nbytes
    num_params = 0
    for info in ckpt.plan.values():
        n = 1
        for d in info.shape:
            n *= d
        num_params += n
    return {
        "path": str(ckpt.root),
        "layout": ckpt.layout,
        "weight_mode": ckpt.weight_mode,
        "files": [f.name for f in ckpt.files],
        "num_params": num_params,
        "bytes_by_dtype": bytes_by_dtype,
        "total_bytes": sum(bytes_by_dtype.values()),
        "state_bytes_per_sequence": state_bytes(ckpt.config, 1),
        "config": ckpt.config.to_dict(),
    }


# ---- saving ---------------------------------------------------------------------------------------
def _write_weights(tensors: dict[str, Tensor], path: Path) -> None:
    """Write one safetensors file (the ``format: pt`` metadata is what transformers expects)."""
    save_file(tensors, str(path), metadata={"format": "pt"})


def _tensors_to_save(model: xLSTMForCausalLM) -> dict[str, Tensor]:
    """The state dict as contiguous CPU tensors with no shared storage.

    A tied lm_head is written as its own copy: transformers' xLSTM (5.23) does not tie the two, and
    without ``lm_head.weight`` in the file it would initialize its lm_head at random, without an error.
    """
    if model.config.tie_word_embeddings and model.lm_head.weight is not model.backbone.embeddings.weight:
        raise CheckpointError("config says tie_word_embeddings=true but the model's lm_head is not tied")
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        if t.is_meta:
            raise CheckpointError(f"tensor {name} is on the meta device: the model holds no weights to save")
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _write_shards(root: Path, items: Iterable[tuple[str, Tensor]], max_shard_bytes: int | None) -> None:
    """Write tensors as they come: ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` shards of
    at most ``max_shard_bytes`` (a larger tensor gets a shard of its own) plus the index. Holds one
    shard in memory at a time."""
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise CheckpointError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    written: list[tuple[Path, list[str]]] = []
    shard: dict[str, Tensor] = {}
    size = total = 0

    def flush() -> None:
        path = root / f".shard-{len(written):05d}.safetensors"
        _write_weights(shard, path)
        written.append((path, list(shard)))
        shard.clear()

    for name, t in items:
        nbytes = t.numel() * t.element_size()
        if shard and max_shard_bytes is not None and size + nbytes > max_shard_bytes:
            flush()
            size = 0
        shard[name] = t
        size += nbytes
        total += nbytes
    if shard or not written:
        flush()
    if len(written) == 1:
        written[0][0].rename(root / WEIGHTS_NAME)
        return
    weight_map: dict[str, str] = {}
    for i, (path, names) in enumerate(written, start=1):
        file = f"model-{i:05d}-of-{len(written):05d}.safetensors"
        path.rename(root / file)
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _hf_config_dict(model: xLSTMForCausalLM) -> dict[str, Any]:
    return _config_dict(model.config, model.lm_head.weight.dtype)


def _config_dict(config: xLSTMConfig, dtype: torch.dtype) -> dict[str, Any]:
    d = config.to_hf_dict()
    dtype_name = str(dtype).removeprefix("torch.")
    d["dtype"] = dtype_name
    if "torch_dtype" in d:
        d["torch_dtype"] = dtype_name
    return d


def save_checkpoint(
    model: xLSTMForCausalLM,
    out_dir: str | os.PathLike[str],
    tokenizer: SavesItself | None = None,
    *,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Save in the Hugging Face layout that ``transformers.xLSTMForCausalLM.from_pretrained`` reads.

    Writes ``config.json``, ``model.safetensors`` (or ``model-0000i-of-0000n.safetensors`` shards of at most
    ``max_shard_bytes`` each plus ``model.safetensors.index.json``) and, given a tokenizer, whatever
    ``tokenizer.save(dir)`` writes. Everything goes to a temporary sibling directory first, which is then
    renamed to ``out_dir``: an interrupted save leaves no ``out_dir`` (only a ``.{name}.partial-*`` folder if
    the process itself died). Returns ``out_dir``.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; pass overwrite=True to replace it")
    tensors = _tensors_to_save(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    with publishing(out, replace=overwrite, error=CheckpointError) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(_hf_config_dict(model), indent=2, sort_keys=True) + "\n")
        _write_shards(tmp, tensors.items(), max_shard_bytes)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return out


def write_random_checkpoint(
    config: xLSTMConfig,
    out_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    tokenizer: SavesItself | None = None,
    max_shard_bytes: int | None = 2**30,
    overwrite: bool = False,
    progress: bool = False,
    norm_jitter: float = 0.0,
) -> Path:
    """A randomly initialized model (``init_weights``' scheme) written block by block in ``dtype``: the
    model is never whole in memory (one block in float32 and one shard at a time), so a 7B checkpoint
    can be made on a laptop. The layout is ``save_checkpoint``'s; returns ``out_dir``.

    ``norm_jitter``: norm weights 1 + jitter * N(0, 1) instead of exactly 1, as in a trained model (an
    untrained model's int8 embedding rows then sit on exact rounding ties: see ``quant.probe``).
    """
    import math

    from tqdm import tqdm

    from .model import init_block_weights, mLSTMBlock, sLSTMBlock

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; pass overwrite=True to replace it")
    generator = torch.manual_seed(seed)
    std = math.sqrt(2 / (5 * config.hidden_size))

    def tensors() -> Iterable[tuple[str, Tensor]]:
        V, D = config.vocab_size, config.hidden_size
        yield EMBEDDING, (torch.randn(V, D, generator=generator) * std).to(dtype)
        kinds = config.block_types()
        for idx in tqdm(range(config.num_hidden_layers), desc="writing blocks", disable=not progress):
            block = sLSTMBlock(config) if kinds[idx] == "s" else mLSTMBlock(config)
            init_block_weights(block, config)
            for name, t in block.state_dict().items():
                if norm_jitter and "norm" in name and name.endswith("weight"):
                    t = t + norm_jitter * torch.randn(t.shape, generator=generator)
                yield f"backbone.blocks.{idx}.{name}", t.to(dtype)
        if config.add_out_norm:
            yield "backbone.out_norm.weight", (1 + norm_jitter * torch.randn(D, generator=generator)).to(dtype)
            if config.use_bias:
                yield "backbone.out_norm.bias", torch.zeros(D, dtype=dtype)
        if not config.tie_word_embeddings:
            yield LM_HEAD, (torch.randn(V, D, generator=generator) * std).to(dtype)

    out.parent.mkdir(parents=True, exist_ok=True)
    with publishing(out, replace=overwrite, error=CheckpointError) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(_config_dict(config, dtype), indent=2, sort_keys=True) + "\n")
        _write_shards(tmp, tensors(), max_shard_bytes)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return out


def weights_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 over a checkpoint directory's ``*.safetensors`` files, in name order (identifies the weights)."""
    import hashlib

    digest = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()
