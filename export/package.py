"""Build a complete package: graphs, tokenizer, parity check, manifest; atomically.

Everything is written to a hidden staging directory beside ``out_dir`` (``xlstm_edge.publish``) and
renamed to ``out_dir`` only after the parity check passed and the manifest is written, so an
interrupted or failed export leaves nothing at ``out_dir``. With ``force`` an existing ``out_dir`` is
replaced.

    result = export_package(model, "pkg/", "onnx")        # or "executorch"
    result.manifest.parity["max_abs_dlogits"], result.timings
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from xlstm_edge.model import xLSTMForCausalLM
from xlstm_edge.publish import check_target, publishing

from .metadata import (
    BATCH,
    STATE_CONVENTION,
    TOKENIZER_NAME,
    GraphEntry,
    Manifest,
    StateSection,
    TokenizerEntry,
    copy_generation_config,
    state_entries,
    validate_manifest,
    write_manifest,
)
from .step_module import prefill_chunk_size
from .verify import ParityError, parity_check, runner_parity_check


def runner_forward_parity(model: xLSTMForCausalLM, pte: Path, runner, tolerance: float | None) -> dict:
    """``verify.runner_parity_check`` of the .pte's ``forward`` (loaded fresh: its buffers start at zero)."""
    from xlstm_edge.runtime.graphs import PteMethod

    method = PteMethod(pte, "forward")
    return runner_parity_check(model, lambda ids, pos: method.run([ids, pos])[0], runner.max_seq_len,
                               runner.vocab_size, tolerance=tolerance)

FORMATS: dict[str, str] = {"onnx": "onnxruntime", "executorch": "executorch"}  # --format -> manifest backend
STAGES: dict[str, list[str]] = {
    "onnx": ["step graph", "prefill graph", "tokenizer", "parity", "genai graph", "shared weights", "onnx checker",
             "genai parity", "manifest"],
    "executorch": ["export + lower to XNNPACK", "weights index", "tokenizer", "parity", "runner parity", "manifest"],
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
    check_target(out_dir, force, ExportError)


def package_manifest(model: xLSTMForCausalLM, fmt: str, tokenizer, tokens_per_call: int, batch: int = 1,
                     source: dict | None = None, graphs: dict[str, GraphEntry] | None = None) -> Manifest:
    """The manifest of a package of ``model`` for ``fmt`` (no parity, no quantization yet).

    ``graphs``: the entries the exporters returned; default, the entries they will write (a meta-device
    ``model`` will do: only its config is read), for a pipeline that lays the package out first.
    """
    config = model.config
    runner = stock_runner(fmt, tokenizer, tokens_per_call, batch)
    if graphs is None:
        from .step_module import graph_entry

        files = {"onnx": {"step": "step.onnx", "prefill": "prefill.onnx"},
                 "executorch": {"step": "model.pte", "prefill": "model.pte"}}[fmt]
        dim = BATCH if fmt == "onnx" else batch
        graphs = {m: graph_entry(model, m, 1 if m == "step" else tokens_per_call, f, batch=dim)
                  for m, f in files.items()}
    return Manifest(
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
        parity={},
        tools=_tool_versions(fmt),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        source=source,
        runner=runner.to_manifest() if runner is not None else None,
    )


def stock_runner(fmt: str, tokenizer, tokens_per_call: int, batch: int):
    """The ``RunnerSpec`` of a package's stock-runner ``forward``: ExecuTorch packages of batch 1 have one
    (its calls take up to the prefill's T tokens); others None."""
    if fmt != "executorch" or batch != 1:
        return None
    from .runner_module import RunnerSpec

    return RunnerSpec.for_tokenizer(tokenizer, tokens_per_call)


def export_package(
    model: xLSTMForCausalLM,
    out_dir: str | Path,
    fmt: str,
    *,
    tokenizer=None,
    prefill_tokens: int | None = None,
    batch: int = 1,
    parity_steps: int = DEFAULT_PARITY_STEPS,
    tolerance: float | None = None,
    force: bool = False,
    source: dict | None = None,
    on_stage: Callable[[str], None] | None = None,
    genai: bool = True,
    runner_method: bool = True,
) -> ExportResult:
    """Export ``model`` to a package at ``out_dir`` for ``fmt`` ("onnx" | "executorch").

    tokenizer       an ``xlstm_edge.tokenizer.Tokenizer`` (default: the byte-level one)
    prefill_tokens  T of the prefill graph (default: the config's chunk size); a multiple of the
                    chunk size, or at most it
    batch           the fixed batch of an ExecuTorch package (ONNX graphs take any batch)
    parity_steps    fed-back steps of the parity check (at least 64 for a release package)
    tolerance       absolute max |dlogits| to accept; None: the bound scaled to the model's own
                    float32 error (``verify``)
    source          recorded in the manifest, e.g. {"checkpoint": "/abs/path"} (``quantize`` reads it)
    on_stage        called with each stage's name as it starts (progress display)
    genai           ONNX only: also write ``genai.onnx`` + ``genai_config.json`` (ONNX Runtime GenAI runs
                    the package as it is; ``export.genai``), or record why GenAI cannot carry the model
    runner_method   ExecuTorch, batch 1: also the ``forward`` method (and metadata) of ExecuTorch's stock LLM
                    runner (``export.runner_module``); without it the package runs in our runtime only
    Raises ``ExportError`` for bad arguments and ``ParityError`` (with the figures) when the graphs
    disagree with the float64 reference beyond the bound; either way nothing is left at ``out_dir``.
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

    with publishing(out_dir, replace=force, error=ExportError) as tmp:
        graphs: dict[str, GraphEntry]
        runner = None
        extra: dict[str, object] = {}
        weights_index = None
        genai_info = None
        if fmt == "onnx":
            from .genai import (
                CONFIG_NAME,
                GRAPH_NAME,
                GenAIInfo,
                export_genai_graph,
                genai_parity,
                write_genai_config,
            )
            from .genai_graph import GenAIStateError, slot_shapes
            from .to_onnx import OnnxRunner, PackageGraphs, check_onnx, export_onnx_method

            package_graphs = PackageGraphs(tmp)  # each graph's weights into weights.bin as it is written
            for key, tokens in (("step", 1), ("prefill", T)):
                path = tmp / f"{key}.onnx"
                package_graphs.add(path, key, timed(f"{key} graph", partial(export_onnx_method, model, key, tokens, path)))
            graphs = package_graphs.graphs
            make_runner = lambda: OnnxRunner(tmp, graphs)  # noqa: E731
            parity_batch = PARITY_BATCH_DYNAMIC
        else:
            from .pte_weights import pte_weights_index
            from .to_executorch import ExecuTorchRunner, export_executorch

            runner = stock_runner(fmt, tokenizer, T, batch) if runner_method else None
            graphs, delegates = timed(
                "export + lower to XNNPACK", lambda: export_executorch(model, T, tmp, batch=batch, runner=runner)
            )
            extra["xnnpack_delegate_calls"] = delegates
            weights_index = timed("weights index", lambda: pte_weights_index(model, tmp / graphs["step"].file))
            make_runner = lambda: ExecuTorchRunner(tmp, graphs)  # noqa: E731
            parity_batch = batch

        saved = timed("tokenizer", lambda: tokenizer.save(tmp))
        if source and source.get("checkpoint"):
            copy_generation_config(source["checkpoint"], tmp)
        if not (tmp / TOKENIZER_NAME).is_file():
            raise ExportError(f"the tokenizer wrote {[p.name for p in saved]}, not {TOKENIZER_NAME}")

        report = timed(
            "parity",
            lambda: parity_check(model, make_runner(), T, parity_batch, steps=parity_steps, tolerance=tolerance),
        )
        if not report.passed:
            raise ParityError(f"{FORMATS[fmt]} graphs disagree with the model: {report.summary()}")
        if fmt == "onnx":  # after the package's own parity: a refused export pays for no GenAI graph
            extra_files: list[str] = []
            if genai:
                try:
                    conv, rec = slot_shapes(config)
                    timed("genai graph", lambda: export_genai_graph(model, tmp / GRAPH_NAME))
                    package_graphs.add(tmp / GRAPH_NAME)
                    extra_files.append(GRAPH_NAME)
                    genai_info = GenAIInfo(graph=GRAPH_NAME, config=None, conv_state=["batch", *conv],
                                           recurrent_state=["batch", *rec])
                except GenAIStateError as e:
                    genai_info = GenAIInfo(graph=None, config=None, refused=str(e))
            shared = timed("weights index", lambda: package_graphs.finish(model))
            weights_index = shared["index"]
            timed("onnx checker", lambda: [check_onnx(tmp / f) for f in [*(g.file for g in graphs.values()),
                                                                         *extra_files]])
        if genai_info is not None and genai_info.graph is not None:
            gen = timed("genai parity", lambda: genai_parity(model, tmp, T, parity_steps, tolerance))
            if not gen.passed:
                raise ParityError(f"the ONNX Runtime GenAI graph disagrees with the model: {gen.summary()}")
            genai_info.parity = gen.to_dict()
        if fmt == "executorch" and runner is not None:  # the stock runner's forward, its state in buffers
            extra["runner"] = timed("runner parity", lambda: runner_forward_parity(
                model, tmp / graphs["step"].file, runner, tolerance))
            if not extra["runner"]["passed"]:
                raise ParityError(f"the .pte's forward (stock runner) disagrees with the model: {extra['runner']}")

        stage("manifest")
        manifest = package_manifest(model, fmt, tokenizer, T, batch, source, graphs)
        if runner is None:
            manifest.runner = None  # no forward method was written
        if genai_info is not None:
            if genai_info.graph is not None:
                write_genai_config(model, tmp, manifest.tokenizer)
                genai_info.config = CONFIG_NAME
            manifest.genai = genai_info.to_dict()
        manifest.parity = {**report.to_dict(), **extra}
        manifest.weights = weights_index
        validate_manifest(manifest, tmp)
        write_manifest(manifest, tmp)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    return ExportResult(out_dir, manifest, timings)


__all__ = ["FORMATS", "ExportError", "ExportResult", "ParityError", "export_package"]
