"""Build a complete package: graphs, tokenizer, parity check, manifest; atomically.

Everything is written to a hidden temporary directory beside ``out_dir`` (``.NAME.partial-*``) and
renamed to ``out_dir`` only after the parity check passed and the manifest is written, so an
interrupted or failed export leaves no directory at ``out_dir`` (a killed process may leave the
hidden one, never anything at ``out_dir``). With ``force`` an existing ``out_dir`` is replaced.

    result = export_package(model, "pkg/", "onnx")        # or "executorch"
    result.manifest.parity["max_abs_dlogits"], result.timings
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from xlstm_edge.model import xLSTMForCausalLM

from .metadata import (
    STATE_CONVENTION,
    TOKENIZER_NAME,
    GraphEntry,
    Manifest,
    StateSection,
    TokenizerEntry,
    state_entries,
    validate_manifest,
    write_manifest,
)
from .step_module import prefill_chunk_size
from .verify import DEFAULT_TOLERANCE, ParityError, parity_check

FORMATS: dict[str, str] = {"onnx": "onnxruntime", "executorch": "executorch"}  # --format -> manifest backend
STAGES: dict[str, list[str]] = {
    "onnx": ["step graph", "prefill graph", "shared weights", "onnx checker", "tokenizer", "parity", "manifest"],
    "executorch": ["export + lower to XNNPACK", "tokenizer", "parity", "manifest"],
}
DEFAULT_PARITY_STEPS = 64
PARITY_BATCH_DYNAMIC = 2  # rows the parity check runs through a dynamic-batch graph


class ExportError(ValueError):
    """Bad export arguments (unknown format, OUT exists, bad prefill length...): one line."""


@dataclass
class ExportResult:
    out_dir: Path
    manifest: Manifest
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, and "total"


def _tool_versions(fmt: str) -> dict[str, str]:
    names = ["xlstm-edge", "torch"] + (["onnx", "onnxruntime", "onnxscript"] if fmt == "onnx" else ["executorch"])
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} already exists (pass --force to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory")
    if not out_dir.parent.is_dir():
        raise ExportError(f"parent directory {out_dir.parent} does not exist")


def finalize(tmp: Path, out_dir: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out_dir`` (moving an existing one aside first when ``force``)."""
    old = None
    if out_dir.exists():
        if not force:
            raise ExportError(f"{out_dir} appeared during the export; not replacing it without --force")
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        old.rmdir()
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old)


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A hidden temporary directory beside ``out_dir``, removed unless the caller renamed it away."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    mask = os.umask(0)
    os.umask(mask)
    tmp.chmod(0o777 & ~mask)  # mkdtemp's 0700 would stay on the finished package
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def export_package(
    model: xLSTMForCausalLM,
    out_dir: str | Path,
    fmt: str,
    *,
    tokenizer=None,
    prefill_tokens: int | None = None,
    batch: int = 1,
    parity_steps: int = DEFAULT_PARITY_STEPS,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    source: dict | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model`` to a package at ``out_dir`` for ``fmt`` ("onnx" | "executorch").

    tokenizer       an ``xlstm_edge.tokenizer.Tokenizer`` (default: the byte-level one)
    prefill_tokens  T of the prefill graph (default: the config's chunk size); a multiple of the
                    chunk size, or at most it
    batch           the fixed batch of an ExecuTorch package (ONNX graphs take any batch)
    parity_steps    fed-back steps of the parity check (at least 64 for a release package)
    source          recorded in the manifest, e.g. {"checkpoint": "/abs/path"} (``quantize`` reads it)
    on_stage        called with each stage's name as it starts (progress display)
    Raises ``ExportError`` for bad arguments and ``ParityError`` (with the figures) when the graphs
    disagree with the eager model beyond ``tolerance``; either way nothing is left at ``out_dir``.
    """
    t_start = time.perf_counter()
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, force)
    config = model.config
    T = config.chunk_size if prefill_tokens is None else prefill_tokens
    try:
        prefill_chunk_size(model, T)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if batch < 1:
        raise ExportError(f"batch must be >= 1, got {batch}")
    if tokenizer is None:
        from xlstm_edge.tokenizer import byte_tokenizer

        tokenizer = byte_tokenizer()
    if tokenizer.vocab_size > config.vocab_size:
        raise ExportError(f"tokenizer has {tokenizer.vocab_size} ids, the model only {config.vocab_size}")
    model.eval()

    timings: dict[str, float] = {}

    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(name)

    def timed(name: str, fn: Callable[[], object]):
        stage(name)
        t0 = time.perf_counter()
        value = fn()
        timings[name] = round(time.perf_counter() - t0, 3)
        return value

    with _staging(out_dir) as tmp:
        graphs: dict[str, GraphEntry]
        extra: dict[str, object] = {}
        if fmt == "onnx":
            from .to_onnx import OnnxRunner, check_onnx, export_onnx_method, share_graph_weights

            graphs = {
                "step": timed("step graph", lambda: export_onnx_method(model, "step", 1, tmp / "step.onnx")),
                "prefill": timed(
                    "prefill graph", lambda: export_onnx_method(model, "prefill", T, tmp / "prefill.onnx")
                ),
            }
            timed("shared weights", lambda: share_graph_weights(tmp, graphs))
            timed("onnx checker", lambda: [check_onnx(tmp / g.file) for g in graphs.values()])
            make_runner = lambda: OnnxRunner(tmp, graphs)  # noqa: E731
            parity_batch = PARITY_BATCH_DYNAMIC
        else:
            from .to_executorch import ExecuTorchRunner, export_executorch

            graphs, delegates = timed(
                "export + lower to XNNPACK", lambda: export_executorch(model, T, tmp, batch=batch)
            )
            extra["xnnpack_delegate_calls"] = delegates
            make_runner = lambda: ExecuTorchRunner(tmp, graphs)  # noqa: E731
            parity_batch = batch

        saved = timed("tokenizer", lambda: tokenizer.save(tmp))
        if not (tmp / TOKENIZER_NAME).is_file():
            raise ExportError(f"the tokenizer wrote {[p.name for p in saved]}, not {TOKENIZER_NAME}")

        report = timed(
            "parity",
            lambda: parity_check(model, make_runner(), T, parity_batch, steps=parity_steps, tolerance=tolerance),
        )
        if not report.passed:
            raise ParityError(f"{FORMATS[fmt]} graphs disagree with the eager model: {report.summary()}")

        stage("manifest")
        manifest = Manifest(
            backend=FORMATS[fmt],
            model=config.to_dict(),
            tokenizer=TokenizerEntry(
                file=TOKENIZER_NAME,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                vocab_size=tokenizer.vocab_size,
            ),
            state=StateSection(STATE_CONVENTION, state_entries(config)),
            graphs=graphs,
            quantization=None,
            parity={**report.to_dict(), **extra},
            tools=_tool_versions(fmt),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            source=source,
        )
        validate_manifest(manifest, tmp)
        write_manifest(manifest, tmp)
        finalize(tmp, out_dir, force)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    return ExportResult(out_dir, manifest, timings)


__all__ = ["FORMATS", "ExportError", "ExportResult", "ParityError", "export_package"]
