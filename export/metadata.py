"""The package manifest ``xlstm_edge.json``: the one piece of code the exporter and the runtime share.

A package is a directory::

    xlstm_edge.json     this manifest (format "xlstm-edge-package", format_version 1)
    tokenizer.json      the tokenizer (copied from the checkpoint, or the byte-level one)
    generation_config.json   copied from the checkpoint when it has one (the runtime stops at its
                        ``eos_token_id``s, as transformers' ``generate`` does)
    step.onnx, prefill.onnx (+ .onnx.data above 2 GB)   backend "onnxruntime"
    model.pte (methods "step" and "prefill", and "forward" for   backend "executorch"
               ExecuTorch's stock LLM runner: see ``Manifest.runner``)
    genai.onnx + genai_config.json (ONNX Runtime GenAI's graph, ``export/genai.py``; manifest key ``genai``)

Graph I/O (positional in this order for ExecuTorch methods, by name for ONNX):
    step     input_ids (B, 1) int64, every past.{layer}.{name}
             -> logits (B, V) float32, every present.{layer}.{name}
    prefill  input_ids (B, T) int64 (T fixed: ``GraphEntry.tokens_per_call``),
             valid_length (B,) int64 (1 <= valid_length <= T; positions >= valid_length are padding
             that leaves the state untouched), every past.* -> logits (B, V) at position
             valid_length - 1, every present.*
State tensors: float32, shapes ("batch", *static dims); C and n hold unscaled k, q is scaled by
1/sqrt(DQK) inside the cell (``convention`` "scale_q").

This module needs only the standard library (no torch), so a runtime can read a package without it.
``read_manifest(package_dir)`` checks everything it can and raises ``ManifestError`` with one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "xlstm-edge-package"
FORMAT_VERSION = 1
MANIFEST_NAME = "xlstm_edge.json"
TOKENIZER_NAME = "tokenizer.json"
GENERATION_CONFIG_NAME = "generation_config.json"
STATE_CONVENTION = "scale_q"
BACKENDS = ("onnxruntime", "executorch")
METHODS = ("step", "prefill")
INPUT_IDS = "input_ids"
VALID_LENGTH = "valid_length"
LOGITS = "logits"
BATCH = "batch"


class ManifestError(ValueError):
    """A package or manifest is missing, malformed or inconsistent (the message is one line)."""


# ---- entries ------------------------------------------------------------------------------------
@dataclass
class TensorEntry:
    """One graph input or output: ``shape`` has ``"batch"`` (or another symbol) for dynamic dims."""

    name: str
    shape: list[int | str]
    dtype: str


@dataclass
class StateEntry:
    """One state tensor. ``role`` is ``"mlstm.C"``, ``"mlstm.n"``, ``"mlstm.m"``, ``"slstm.y"``,
    ``"slstm.c"``, ``"slstm.n"``, ``"slstm.m"`` or ``"slstm.conv"``; initial value zero."""

    layer: int
    name: str
    input: str
    output: str
    shape: list[int | str]  # ["batch", *static dims]
    dtype: str
    role: str

    @property
    def static_shape(self) -> tuple[int, ...]:
        """The shape without the batch dim."""
        return tuple(int(d) for d in self.shape[1:])


@dataclass
class StateSection:
    convention: str
    tensors: list[StateEntry]


@dataclass
class TokenizerEntry:
    file: str
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    vocab_size: int | None = None


@dataclass
class GraphEntry:
    """One callable graph. ``file`` is relative to the package; ``method`` the ExecuTorch method name
    (for ONNX the graph name, equal to the key). ``tokens_per_call`` is 1 for step and the fixed T
    for prefill; ``valid_length_input`` names the prefill's valid-length input (None for step);
    ``chunk_size`` is the chunkwise form's inner chunk (prefill only); ``data_file`` the external
    weights file the graph reads (ONNX graphs of one package share one), None when self-contained."""

    file: str
    method: str
    inputs: list[TensorEntry]
    outputs: list[TensorEntry]
    tokens_per_call: int
    valid_length_input: str | None = None
    chunk_size: int | None = None
    data_file: str | None = None


@dataclass
class Manifest:
    backend: str
    model: dict[str, Any]
    tokenizer: TokenizerEntry
    state: StateSection
    graphs: dict[str, GraphEntry]
    quantization: dict[str, Any] | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    created: str = ""
    # where the weights came from: {"checkpoint": absolute path, "weights_sha256": ...} (or None for an
    # in-memory model); ``xlstm-edge quantize`` re-reads the float32 weights from there
    source: dict[str, Any] | None = None
    # where each float parameter lies in the package's own files (ONNX: weights.bin offsets, see
    # ``export.package_weights.weights_index``; ExecuTorch: model.pte offsets), so that ``xlstm-edge quantize`` needs no checkpoint
    weights: dict[str, Any] | None = None
    # ONNX Runtime GenAI (``export/genai.py``): {"graph": "genai.onnx", "config": "genai_config.json",
    # "conv_state", "recurrent_state" (slot shapes), "parity"}, or {"refused": why}; None: not exported
    genai: dict[str, Any] | None = None
    # ExecuTorch packages of batch 1: the .pte's ``forward`` method for ExecuTorch's stock LLM runner
    # (``export.runner_module``): {"method", "max_seq_len", "vocab_size", "bos_id", "eos_ids",
    # "max_context_len"}; None when the package has none
    runner: dict[str, Any] | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    # ---- convenience -----------------------------------------------------------------------
    @property
    def state_inputs(self) -> list[str]:
        return [t.input for t in self.state.tensors]

    @property
    def state_outputs(self) -> list[str]:
        return [t.output for t in self.state.tensors]

    def graph(self, method: str) -> GraphEntry:
        if method not in self.graphs:
            raise ManifestError(f"package has no {method!r} graph (has {', '.join(sorted(self.graphs))})")
        return self.graphs[method]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        order = ["format", "format_version", "backend", "created", "model", "tokenizer", "state", "graphs",
                 "quantization", "parity", "tools", "source", "weights", "genai", "runner"]
        return {k: d[k] for k in order}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        """Parse (without touching the file system); raises ``ManifestError`` on a bad structure."""
        if not isinstance(raw, dict):
            raise ManifestError(f"manifest must be a JSON object, got {type(raw).__name__}")
        if raw.get("format") != FORMAT:
            raise ManifestError(f"not an xlstm-edge package: format is {raw.get('format')!r}, expected {FORMAT!r}")
        if raw.get("format_version") != FORMAT_VERSION:
            raise ManifestError(
                f"unsupported format_version {raw.get('format_version')!r} (this code reads {FORMAT_VERSION})"
            )
        missing = [k for k in ("backend", "model", "tokenizer", "state", "graphs") if k not in raw]
        if missing:
            raise ManifestError(f"manifest lacks key(s) {', '.join(missing)}")
        try:
            state = StateSection(
                convention=raw["state"]["convention"],
                tensors=[StateEntry(**t) for t in raw["state"]["tensors"]],
            )
            graphs = {
                key: GraphEntry(
                    **{
                        **g,
                        "inputs": [TensorEntry(**t) for t in g["inputs"]],
                        "outputs": [TensorEntry(**t) for t in g["outputs"]],
                    }
                )
                for key, g in raw["graphs"].items()
            }
            return cls(
                backend=raw["backend"],
                model=dict(raw["model"]),
                tokenizer=TokenizerEntry(**raw["tokenizer"]),
                state=state,
                graphs=graphs,
                quantization=raw.get("quantization"),
                parity=dict(raw.get("parity") or {}),
                tools=dict(raw.get("tools") or {}),
                created=raw.get("created", ""),
                source=raw.get("source"),
                weights=raw.get("weights"),
                genai=raw.get("genai"),
                runner=raw.get("runner"),
                format=raw["format"],
                format_version=raw["format_version"],
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ManifestError(f"malformed manifest: {type(e).__name__}: {e}") from None


# ---- building entries ---------------------------------------------------------------------------
def state_entries(config: Any) -> list[StateEntry]:
    """State entries of an ``xLSTMConfig`` in ``xlstm_edge.state.state_spec`` order (imports torch)."""
    from xlstm_edge.state_spec import state_spec

    kinds = config.block_types()
    return [
        StateEntry(
            layer=s.layer,
            name=s.name,
            input=s.input_name,
            output=s.output_name,
            shape=[BATCH, *s.shape],
            dtype=s.dtype,
            role=("mlstm." if kinds[s.layer] == "m" else "slstm.") + s.name,
        )
        for s in state_spec(config)
    ]


def state_tensor_entries(entries: list[StateEntry], *, output: bool) -> list[TensorEntry]:
    """Graph I/O entries for the state (``present.*`` names when ``output``)."""
    return [TensorEntry(e.output if output else e.input, list(e.shape), e.dtype) for e in entries]


# ---- validation ---------------------------------------------------------------------------------
def copy_generation_config(checkpoint: str | os.PathLike, package_dir: str | os.PathLike) -> bool:
    """Copy the checkpoint's ``generation_config.json`` (if it has one) into the package, after checking
    that its eos ids read; returns whether there was one."""
    src = Path(checkpoint) / GENERATION_CONFIG_NAME
    if not src.is_file():
        return False
    generation_eos_ids(Path(checkpoint))  # a malformed file is refused at export, not at serving time
    (Path(package_dir) / GENERATION_CONFIG_NAME).write_bytes(src.read_bytes())
    return True


def generation_eos_ids(directory: str | os.PathLike) -> list[int]:
    """The ``eos_token_id`` of ``directory``/generation_config.json (an int or a list of ints, as
    transformers writes it); [] when the file or the field is absent. ``ManifestError`` if malformed."""
    path = Path(directory) / GENERATION_CONFIG_NAME
    if not path.is_file():
        return []
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None
    eos = raw.get("eos_token_id") if isinstance(raw, dict) else None
    if eos is None:
        return []
    ids = eos if isinstance(eos, list) else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ManifestError(f"{path}: eos_token_id must be a non-negative int or a list of them, got {eos!r}")
    return list(ids)


def validate_manifest(manifest: Manifest, package_dir: str | os.PathLike | None = None) -> None:
    """Check internal consistency (and that the files exist when ``package_dir`` is given).

    Raises ``ManifestError`` naming the first problem found.
    """
    m = manifest
    if m.backend not in BACKENDS:
        raise ManifestError(f"unknown backend {m.backend!r}; expected one of {', '.join(BACKENDS)}")
    if m.state.convention != STATE_CONVENTION:
        raise ManifestError(f"unknown state convention {m.state.convention!r}; expected {STATE_CONVENTION!r}")
    if not m.state.tensors:
        raise ManifestError("manifest lists no state tensors")
    for e in m.state.tensors:
        if e.input != f"past.{e.layer}.{e.name}" or e.output != f"present.{e.layer}.{e.name}":
            raise ManifestError(f"state tensor {e.layer}.{e.name} has names {e.input!r}/{e.output!r}")
        if not e.shape or e.shape[0] != BATCH or not all(isinstance(d, int) and d > 0 for d in e.shape[1:]):
            raise ManifestError(f"state tensor {e.input} has shape {e.shape}; expected ['batch', positive ints]")
        if e.dtype != "float32":
            raise ManifestError(f"state tensor {e.input} has dtype {e.dtype}; state is float32")
    for method in METHODS:
        if method not in m.graphs:
            raise ManifestError(f"manifest lacks the {method!r} graph")
    for key, g in m.graphs.items():
        extra = [g.valid_length_input] if g.valid_length_input else []
        want_in = [INPUT_IDS, *extra, *m.state_inputs]
        want_out = [LOGITS, *m.state_outputs]
        got_in = [t.name for t in g.inputs]
        got_out = [t.name for t in g.outputs]
        if got_in != want_in:
            raise ManifestError(f"graph {key!r} inputs {got_in[:4]}... differ from the expected {want_in[:4]}...")
        if got_out != want_out:
            raise ManifestError(f"graph {key!r} outputs {got_out[:4]}... differ from the expected {want_out[:4]}...")
        if g.tokens_per_call < 1:
            raise ManifestError(f"graph {key!r} has tokens_per_call {g.tokens_per_call}")
    if m.graphs["step"].tokens_per_call != 1:
        raise ManifestError(f"step graph takes {m.graphs['step'].tokens_per_call} tokens per call, expected 1")
    if package_dir is not None:
        root = Path(package_dir)
        files = {g.file for g in m.graphs.values()} | {m.tokenizer.file}
        files |= {g.data_file for g in m.graphs.values() if g.data_file}
        files |= {m.genai[k] for k in ("graph", "config") if m.genai and m.genai.get(k)}
        for name in sorted(files):
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ManifestError(f"manifest names a file outside the package: {name!r}")
            if not (root / name).is_file():
                raise ManifestError(f"package {root} lacks the file {name!r} that its manifest names")


# ---- file I/O -----------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_manifest(manifest: Manifest, package_dir: str | os.PathLike) -> Path:
    """Validate (without the file checks) and write ``package_dir/xlstm_edge.json`` atomically."""
    validate_manifest(manifest)
    root = Path(package_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(prefix=".xlstm_edge.", suffix=".json.tmp", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(manifest.to_dict(), fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would stay on the finished file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_manifest(package_dir: str | os.PathLike) -> Manifest:
    """Read and validate ``package_dir/xlstm_edge.json`` (format, version, structure, files present)."""
    root = Path(package_dir)
    if not root.is_dir():
        raise ManifestError(f"package directory {root} does not exist")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{root} is not a complete package: no {MANIFEST_NAME}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None
    manifest = Manifest.from_dict(raw)
    validate_manifest(manifest, root)
    return manifest
