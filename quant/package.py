"""Quantization as a stage of the pipeline: float weights in, a checked, measured quantized package out.

    quantize_package(Path("pkg"), Path("pkg-int8"), QuantizeOptions(scheme="int8-dynamic"))   # a float package
    quantize_checkpoint(Path("ckpt"), Path("pkg-int8"), "onnx", opts, tokenizer=tok)         # export --quantize

Both end in ``quantize_source(WeightSource, manifest layout, out, opts)``:
1. (``quantize_package``) read the package's manifest; refuse one already quantized, an unknown scheme, a
   scheme its backend lacks; take the float weights from the package itself when its manifest locates
   them (``export.package_weights.PackageWeights``), else from ``--checkpoint`` or the
   checkpoint the manifest records (same hash, same config); either way the package's own step graph
   must reproduce them (``check_source``, against the streamed float32 model)
2. the tight parity check first (same quantization as eager int8, median call to float32 noise), on
   graphs exported from the model's probe (first block of each kind, norm weights off their stored
   grid, read from the same source: see ``probe`` for why), so that a lowering bug fails in minutes; a
   model that is its own probe (one block of each kind, norm weights off the grid) on its own graphs,
   right after they are exported (step 3)
3. ``handler.load_quantized``: each weight quantized as it is read, never a float copy of the whole
   model; export the graphs the manifest lays out (file names, methods, prefill length, batch); inspect
   every graph (state I/O float32); the eager int8 model's references (``references``: prefill calls,
   its greedy steps, perplexity and KL with the float32 side streamed one block at a time), then the
   eager model is freed and the package's own graphs are checked against those references within a
   bound that lets rounding flips through (``verify.TIGHT_MAX_REL_ERR``): the eager model and a graph
   session are never in memory together (two packages); the step graph's greedy run scored by float32
   (``quality``) and sizes
4. write the manifest (``quantization`` = scheme, plan summary, quality report, gate) and move the
   package into place (``xlstm_edge.publish``), or leave nothing if the quality gate is missed without
   ``allow_quality_loss``
Each stage's log line carries the resident peak of the stage before it and the resident set it starts from.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from xlstm_edge.export import metadata as md

from xlstm_edge.config import xLSTMConfig
from xlstm_edge.publish import move_into_place, plain_modes, remove_stale, staging_dir
from xlstm_edge.state import state_spec
from xlstm_edge.weights import CheckpointWeights, WeightSource

from .handler import SCHEMES, QuantizationError, check_scheme, load_quantized
from .probe import NORM_JITTER, ProbeWeights, describe, is_own_probe, needs_probe, probe_blocks
from .quality import EvalTextError, compare_eval, eval_ids, greedy_report, zero_state
from .references import Record, eager_greedy, greedy_run, prefill_records, replay
from .verify import (
    TIGHT_MAX_REL_ERR,
    EagerGraph,
    prefill_parity,
    rel_error,
    rel_error_whole,
    require_tight,
    require_within,
    step_parity,
)

BACKEND_SCHEMES = {"onnxruntime": ("int8-weight", "int8-dynamic", "int4-dynamic"),
                   "executorch": ("int8-dynamic", "int4-dynamic")}
UNAVAILABLE = {  # why a backend lacks a scheme (see ../shared/ENVIRONMENT.md and torchao_bridge)
    "executorch": "no correct weight-only int8 Linear in ExecuTorch 1.5.1 / XNNPACK (torchao's weight-only "
                  "configs lower to wrong outputs with no error; a dequantize-in-graph Linear runs on portable "
                  "kernels, far slower than float32); use int8-dynamic or int4-dynamic, or an ONNX package for "
                  "int8-weight",
    "onnxruntime": "",
}
PROMPT_TOKENS = 32
PREFILL_SHORT_CALLS = 6
PREFILL_SHORT_CALLS_MAX = 24  # until TIGHT_CLEAN_CALLS are clean: 8 of 24 were, on the 7B shape's probe
TIGHT_STEP_TOKENS = 16
SOURCE_CHECK_REL_ERR = 1e-4  # float32 package graph vs the eager float32 model from the checkpoint


class QualityGateError(QuantizationError):
    """The int8 model misses the scheme's quality gate (and ``allow_quality_loss`` was not given)."""


@dataclass
class QuantizeOptions:
    scheme: str
    embedding: str = "fp32"
    checkpoint: Path | None = None
    eval_text: Path | None = None
    calibration_text: Path | None = None
    allow_quality_loss: bool = False
    eval_tokens: int = 2048
    greedy_tokens: int = 256
    max_ppl_increase: float | None = None  # relative; None: the scheme's default (handler.SCHEMES)
    min_greedy_agreement: float | None = None  # None: the scheme's default
    num_threads: int = 2

    def gate(self) -> tuple[float, float]:
        """(largest relative perplexity increase, smallest greedy agreement): given, else the scheme's."""
        sch = SCHEMES[self.scheme]
        return (sch.max_ppl_increase if self.max_ppl_increase is None else self.max_ppl_increase,
                sch.min_greedy_agreement if self.min_greedy_agreement is None else self.min_greedy_agreement)


@dataclass
class QuantizeResult:
    out: Path | None  # None when the gate failed and nothing was written
    report: dict[str, Any]
    passed: bool
    notes: list[str] = field(default_factory=list)


# ---- inputs ---------------------------------------------------------------------------------------
def _check_inputs(package: Path, out: Path, opts: QuantizeOptions) -> md.Manifest:
    manifest = md.read_manifest(package)
    check_scheme(opts.scheme, opts.embedding)
    if manifest.quantization:
        raise QuantizationError(f"package {package} is already quantized ({manifest.quantization.get('scheme')}); "
                                "quantize the float32 package it came from")
    if opts.scheme not in BACKEND_SCHEMES.get(manifest.backend, ()):
        raise QuantizationError(
            f"scheme {opts.scheme} is not available for backend {manifest.backend} "
            f"(available: {', '.join(BACKEND_SCHEMES.get(manifest.backend, ()))}): {UNAVAILABLE[manifest.backend]}"
        )
    for what, path in (("evaluation", opts.eval_text), ("calibration", opts.calibration_text)):
        if path is not None and not Path(path).is_file():
            raise EvalTextError(f"{what} text {path} does not exist")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QuantizationError(f"output {out} already exists and is not an empty directory")
    return manifest


def resolve_checkpoint(package: Path, manifest: md.Manifest, checkpoint: Path | None) -> Path:
    """The float32 checkpoint to re-export: ``checkpoint`` if given, else the one the manifest records."""
    recorded = (manifest.source or {}).get("checkpoint")
    if checkpoint is None and recorded is None:
        raise QuantizationError(
            f"package {package} does not record the checkpoint it was exported from; pass --checkpoint DIR"
        )
    path = Path(checkpoint if checkpoint is not None else recorded)
    if not path.is_dir():
        how = "given by --checkpoint" if checkpoint is not None else f"recorded in {package}'s manifest"
        raise QuantizationError(f"checkpoint {path} ({how}) does not exist; pass --checkpoint DIR")
    want = (manifest.source or {}).get("weights_sha256")
    if want is not None:
        from xlstm_edge.checkpoint import weights_sha256

        if weights_sha256(path) != want:
            raise QuantizationError(f"checkpoint {path} holds other weights than the ones {package} was exported "
                                    "from (weights_sha256 differs)")
    return path


def checkpoint_source(checkpoint: Path, manifest: md.Manifest) -> CheckpointWeights:
    """``checkpoint``'s weights, read tensor by tensor; its config must equal the package's."""
    source = CheckpointWeights(checkpoint)
    want = xLSTMConfig.from_dict(manifest.model).to_dict()
    got = source.config.to_dict()
    diff = sorted(k for k in want if want[k] != got.get(k))
    if diff:
        k = diff[0]
        raise QuantizationError(f"checkpoint {checkpoint} does not match the package: {k} is {got.get(k)!r}, "
                                f"the package's model has {want[k]!r}")
    return source


def static_batch(manifest: md.Manifest) -> int | None:
    """The fixed batch of the package's graphs (ExecuTorch), or None for a dynamic batch (ONNX)."""
    dim = manifest.graph("step").inputs[0].shape[0]
    return dim if isinstance(dim, int) else None


def _runner(package: Path, manifest: md.Manifest, key: str, num_threads: int):
    entry = manifest.graph(key)
    path = package / entry.file
    if manifest.backend == "onnxruntime":
        from xlstm_edge.runtime.graphs import OrtGraph

        return OrtGraph(path, num_threads)
    from xlstm_edge.runtime.graphs import PteMethod

    return PteMethod(path, entry.method, num_threads)


def check_source(package: Path, manifest: md.Manifest, source: WeightSource, num_threads: int,
                 tokens: int = 8, what: str = "the checkpoint's weights") -> float:
    """The float32 package's step graph over ``tokens`` steps vs the source's float32 model over the same
    tokens (one streamed pass); raises if they differ. Returns the worst relative error."""
    from xlstm_edge.streamed import streamed_forward

    c = source.config
    ids = torch.randint(0, c.vocab_size, (1, tokens))
    batch = static_batch(manifest) or 1
    runner = _runner(package, manifest, "step", num_threads)
    state = [torch.zeros(batch, *s.shape) for s in state_spec(c)]
    logits = []
    for t in range(tokens):
        out = runner.run([ids[:, t : t + 1].expand(batch, 1).contiguous(), *state])
        logits.append(out[0][0])
        state = out[1:]
    ref, ref_state = streamed_forward(source, ids, dtype=torch.float32)
    errs = [rel_error(torch.stack(logits), ref), *(rel_error(a[0], b[0]) for a, b in zip(state, ref_state, strict=True))]
    worst = max(errs)
    if not worst <= SOURCE_CHECK_REL_ERR:
        raise QuantizationError(f"{what} are not the package's: its step graph differs from the model they "
                                f"make by {worst:.2e} (relative)")
    return worst


def check_tight(graph_dir: Path, manifest: md.Manifest, int8: nn.Module, prompt: torch.Tensor,
                num_threads: int, what: str) -> dict[str, Any]:
    """The tight check (``verify.require_tight``) of the graphs in ``graph_dir`` (exported from ``int8``)
    against eager ``int8``: prefill calls with 1-2 valid tokens from random states, then steps over
    the prompt's first ``TIGHT_STEP_TOKENS`` from the zero state, the graph reading the eager state.
    Raises ``QuantizationError``; returns the figures."""
    T, batch = manifest.graphs["prefill"].tokens_per_call, static_batch(manifest) or 2
    g = torch.Generator().manual_seed(0)
    runner = _runner(graph_dir, manifest, "prefill", num_threads)
    short = prefill_parity(runner, {"int8": EagerGraph(int8, "prefill", T)}, int8, T, batch, valid_lengths=[1, 2],
                           calls=PREFILL_SHORT_CALLS, generator=g, max_calls=PREFILL_SHORT_CALLS_MAX)["int8"]
    require_tight(short, f"the {manifest.backend} prefill graph ({what}, 1-2 valid tokens)")
    step_batch = static_batch(manifest) or 1
    ids = prompt[:TIGHT_STEP_TOKENS].view(1, -1).expand(step_batch, -1).contiguous()
    step = step_parity(_runner(graph_dir, manifest, "step", num_threads), {"int8": EagerGraph(int8, "step")}, ids,
                       zero_state(int8, step_batch))["int8"]
    require_tight(step, f"the {manifest.backend} step graph ({what})")
    return {"prefill_short_vs_eager_int8": short.to_dict(), "step_vs_eager_int8": step.to_dict()}


def check_genai(graph_dir: Path, facts: dict[str, Any], config: xLSTMConfig, steps: list[Record],
                prompt_call: Record | None, num_threads: int, strict: bool) -> dict[str, Any]:
    """The quantized ``genai.onnx`` against eager int8's recorded calls (``references``): its step method
    on the kept eager steps, its prefill on the prompt in one call. ``strict``: the tight check on the
    steps, else within ``TIGHT_MAX_REL_ERR`` (deep models: see ``probe``). Returns the manifest's
    ``genai`` entry (or {"refused": why})."""
    from xlstm_edge.export.genai import CONFIG_NAME, GRAPH_NAME, GenAIGraphRunner
    from xlstm_edge.export.genai_graph import slot_shapes

    if "refused" in facts:
        return {"refused": facts["refused"]}
    if prompt_call is None:
        raise ValueError("check_genai needs the eager model's prompt call")
    runner = GenAIGraphRunner(graph_dir / GRAPH_NAME, config, num_threads)
    step = replay(_Method(runner, "step"), steps)
    what = "the ONNX Runtime GenAI graph (int8 steps)"
    if strict:
        require_tight(step, what)
    else:
        require_within(step, TIGHT_MAX_REL_ERR, what)
    got, ref = runner.run("prefill", prompt_call.inputs), prompt_call.outputs
    call = max(rel_error(got[0], ref[0]), rel_error_whole(got[1:], ref[1:]))
    T = prompt_call.inputs[0].shape[1]
    if not call <= TIGHT_MAX_REL_ERR:
        raise QuantizationError(f"the ONNX Runtime GenAI graph ({T} prompt tokens in one call) differs from the same "
                                f"quantization in eager PyTorch by {call:.2e} (relative; bound {TIGHT_MAX_REL_ERR:.0e})")
    conv, rec = slot_shapes(config)
    return {"graph": GRAPH_NAME, "config": CONFIG_NAME, "conv_state": ["batch", *conv],
            "recurrent_state": ["batch", *rec], "facts": facts,
            "parity": {"steps_vs_eager_int8": step.to_dict(), "prompt_call_vs_eager_int8_rel_err": call}}


class _Method:
    """One method of a two-method runner (``GenAIGraphRunner``) as a one-graph runner."""

    def __init__(self, runner: Any, method: str):
        self.runner, self.method = runner, method

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.runner.run(self.method, inputs)


# ---- graphs ---------------------------------------------------------------------------------------
def write_graphs(qmodel: nn.Module, manifest: md.Manifest, out: Path, genai: bool = False, runner: bool = True
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The float32 package's graphs (same files, methods, prefill length) from the quantized model;
    ``runner`` (ExecuTorch): with the stock runner's ``forward`` where the package has one (the probe's
    graphs, which only the tight check of ``step`` and ``prefill`` reads, go without).

    Returns (facts per graph, the new manifest's graph entries). ONNX graphs keep their weights in
    one shared external file, as the float32 package does (``export.onnx_weights``). ``genai`` (ONNX):
    also ``genai.onnx`` (``export.genai``), its facts under "genai" (or {"refused": why}).
    """
    facts: dict[str, Any] = {}
    if manifest.backend == "onnxruntime":
        from xlstm_edge.export.genai import GRAPH_NAME, export_genai_graph
        from xlstm_edge.export.genai_graph import GenAIStateError
        from xlstm_edge.export.to_onnx import PackageGraphs

        from .onnx_backend import LOWERING, export_graph, inspect_graph

        package_graphs = PackageGraphs(out)  # each graph's weights into weights.bin as it is written
        for key, entry in manifest.graphs.items():
            entry = dataclasses.replace(entry)
            export_graph(qmodel, key, entry.tokens_per_call, out / entry.file)
            package_graphs.add(out / entry.file, key, entry)
        extra: list[str] = []
        if genai:
            try:
                export_genai_graph(qmodel, out / GRAPH_NAME, lowering=LOWERING)
                package_graphs.add(out / GRAPH_NAME)
                extra.append(GRAPH_NAME)
            except GenAIStateError as e:
                facts["genai"] = {"refused": str(e)}
        package_graphs.finish()
        graphs = package_graphs.graphs
        for key, entry in graphs.items():
            facts[key] = inspect_graph(out / entry.file)
        if extra:
            facts["genai"] = inspect_graph(out / GRAPH_NAME)
        return facts, graphs
    from xlstm_edge.export.runner_module import RunnerSpec

    from .executorch_backend import PteMethod, export_program, inspect_method

    by_file: dict[str, dict[str, tuple[str, int]]] = {}
    for key, entry in manifest.graphs.items():
        by_file.setdefault(entry.file, {})[entry.method] = (key, entry.tokens_per_call)
    for file, methods in by_file.items():
        spec = RunnerSpec.from_manifest(manifest.runner) if manifest.runner and runner else None
        lowering = export_program(qmodel, methods, out / file, batch=static_batch(manifest) or 1, runner=spec)
        for method, (key, _) in methods.items():
            facts[key] = {**lowering[method], **inspect_method(PteMethod(out / file, method),
                                                              2 if key == "prefill" else 1)}
    return facts, dict(manifest.graphs)


def copy_other_files(package: Path, manifest: md.Manifest, out: Path) -> list[str]:
    """Copy what is neither a graph nor the manifest (tokenizer.json and its companions) into ``out``."""
    from xlstm_edge.export.genai import CONFIG_NAME, GRAPH_NAME

    graph_files = {g.file for g in manifest.graphs.values()} | {g.data_file for g in manifest.graphs.values()}
    graph_files |= {GRAPH_NAME, CONFIG_NAME}  # the quantized package gets its own
    copied = []
    for f in sorted(package.iterdir()):
        if f.is_file() and f.name not in graph_files and f.name != md.MANIFEST_NAME:
            shutil.copy2(f, out / f.name)
            copied.append(f.name)
    if manifest.tokenizer.file not in copied:
        raise QuantizationError(f"package {package} lacks its tokenizer file {manifest.tokenizer.file}")
    return copied


def tool_versions(backend: str) -> dict[str, str]:
    from importlib.metadata import version

    names = ["torch", "onnx", "onnxruntime"] if backend == "onnxruntime" else ["torch", "executorch", "torchao"]
    return {name: version(name) for name in names}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- the whole command ------------------------------------------------------------------------------
def quantize_package(package: Path, out: Path, opts: QuantizeOptions, log=print) -> QuantizeResult:
    """Quantize the float package ``package`` into ``out``; see the module docstring. Raises
    ``QuantizationError`` (one line) on bad input or a failed parity check; a missed quality gate
    returns a result with ``out`` None (nothing written) unless ``opts.allow_quality_loss``."""
    package, out = Path(package), Path(out)
    t0 = time.perf_counter()
    manifest = _check_inputs(package, out, opts)
    torch.set_num_threads(opts.num_threads)
    provenance = {"source_package": str(package)}
    if opts.checkpoint is None and own_weights_readable(manifest):
        from xlstm_edge.export.package_weights import PackageWeights

        log(f"[{time.perf_counter() - t0:5.0f} s] reading the weights of {package} ...")
        source: WeightSource = PackageWeights(package, manifest)
        what = "its own weights"
    else:
        checkpoint = resolve_checkpoint(package, manifest, opts.checkpoint)
        log(f"[{time.perf_counter() - t0:5.0f} s] reading {checkpoint} and checking it against {package} ...")
        source = checkpoint_source(checkpoint, manifest)
        provenance["source_checkpoint"] = str(checkpoint.resolve())
        what = "the checkpoint's weights"
    source_err = check_source(package, manifest, source, opts.num_threads, what=what)
    return quantize_source(
        source, manifest, out, opts,
        write_files=lambda tmp: copy_other_files(package, manifest, tmp),
        fp32_bytes=("float32 package", _dir_bytes(package)), provenance=provenance,
        extra_parity={"source_check_rel_err": source_err}, log=log, t0=t0,
    )


def own_weights_readable(manifest: md.Manifest) -> bool:
    """Whether the package's manifest locates every float weight in its own files (packages exported with
    a weights index): then ``quantize`` reads them there and needs no checkpoint."""
    index = manifest.weights or {}
    return bool(index.get("tensors")) and not index.get("missing")


def quantize_checkpoint(checkpoint: Path, out: Path, fmt: str, opts: QuantizeOptions, *, tokenizer,
                        prefill_tokens: int | None = None, batch: int = 1, log=print) -> QuantizeResult:
    """``export CKPT OUT --quantize``: the checkpoint's weights straight into a quantized package at ``out``,
    quantized as they are read; no float package is written, no float model is held whole."""
    from xlstm_edge.export.package import FORMATS, package_manifest
    from xlstm_edge.export.step_module import prefill_chunk_size

    from xlstm_edge.checkpoint import weights_sha256
    from xlstm_edge.model import xLSTMForCausalLM

    t0 = time.perf_counter()
    check_scheme(opts.scheme, opts.embedding)
    backend = FORMATS[fmt]
    if opts.scheme not in BACKEND_SCHEMES[backend]:
        raise QuantizationError(f"scheme {opts.scheme} is not available for backend {backend} (available: "
                                f"{', '.join(BACKEND_SCHEMES[backend])}): {UNAVAILABLE[backend]}")
    source = CheckpointWeights(checkpoint)
    with torch.device("meta"):
        layout = xLSTMForCausalLM(source.config)
    T = source.config.chunk_size if prefill_tokens is None else prefill_tokens
    try:
        prefill_chunk_size(layout, T)
    except ValueError as e:
        raise QuantizationError(str(e)) from None
    if tokenizer.vocab_size > source.config.vocab_size:
        raise QuantizationError(f"tokenizer has {tokenizer.vocab_size} ids, the model only {source.config.vocab_size}")
    recorded = {"checkpoint": str(Path(checkpoint).resolve()), "weights_sha256": weights_sha256(checkpoint)}
    manifest = package_manifest(layout, fmt, tokenizer, T, batch, recorded)
    def write_files(tmp: Path) -> None:
        tokenizer.save(tmp)
        md.copy_generation_config(checkpoint, tmp)

    return quantize_source(source, manifest, out, opts, write_files=write_files,
                           fp32_bytes=("float32 weights", float_bytes(source)),
                           provenance={"source_checkpoint": recorded["checkpoint"]}, log=log, t0=t0)


def float_bytes(source: WeightSource) -> int:
    """Bytes of the source's weights in float32 (what a float32 package would hold)."""
    from xlstm_edge.checkpoint import expected_shapes

    shapes = expected_shapes(source.config)
    n = sum(math.prod(shape) for name, shape in shapes.items() if name in set(source.names()))
    return 4 * n


def quantize_source(source: WeightSource, manifest: md.Manifest, out: Path, opts: QuantizeOptions, *,
                    write_files: Callable[[Path], Any], fp32_bytes: tuple[str, int], provenance: dict[str, str],
                    extra_parity: dict[str, Any] | None = None, log=print, t0: float | None = None) -> QuantizeResult:
    """The pipeline's quantization stage: ``source``'s weights, quantized as they are read, into the
    graphs ``manifest`` lays out (backend, files, methods, prefill length, batch), checked and
    measured, published at ``out``.

    ``manifest`` is the float package's (``quantize PACKAGE``) or one laid out for a checkpoint
    (``export --quantize``: no float package is ever written); its ``parity`` (the float export's) is
    carried over. ``write_files(tmp)`` puts the tokenizer (and its companions) into the package.
    The float32 model is never held whole: quality and greedy agreement stream it block by block.
    """
    from xlstm_edge.memory import PeakSampler, release_freed, rss_bytes

    out = Path(out)
    t0 = time.perf_counter() if t0 is None else t0
    sampler = PeakSampler()

    def log_t(msg: str) -> None:
        """``[elapsed] stage ...`` with the resident peak of the stage before (sampled) and the resident
        set it starts from. Releases the stage before's garbage first (``release_freed``: exporters
        leave cycles of large objects, and malloc keeps freed pages), which would otherwise live on
        into the next stage."""
        release_freed()
        peak, now = sampler.restart(), rss_bytes()
        before = f" (previous stage: peak RSS {peak / 2**30:.2f} GiB; now {now / 2**30:.2f} GiB)" if peak and now else ""
        log(f"[{time.perf_counter() - t0:5.0f} s] {msg}{before}")

    torch.set_num_threads(opts.num_threads)
    from xlstm_edge.tokenizer import load_tokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = staging_dir(out)
    try:
        write_files(tmp)
        tokenizer = load_tokenizer(tmp / manifest.tokenizer.file)
        ids, eval_source = eval_ids(tokenizer, opts.eval_text, opts.eval_tokens)
        if opts.calibration_text is not None:
            prompt, _ = eval_ids(tokenizer, opts.calibration_text, PROMPT_TOKENS)
        else:
            prompt = ids[:PROMPT_TOKENS]

        config = source.config
        # the tight check runs on a probe of the model: its first block of each kind, norm weights off the
        # stored grid (quant.probe: a bfloat16 grid puts activations on exact rounding ties). First: a
        # lowering that does not compute the same quantization fails in the probe's minutes, before the
        # whole model is quantized and exported. A model that is its own probe is checked on its graphs.
        own_probe = is_own_probe(source)
        if not own_probe:
            log_t(f"tight parity check on a probe of the model ({describe(config)}, norm weights jittered "
                  f"by {NORM_JITTER:g}): exporting it ...")
            qprobe = load_quantized(ProbeWeights(source), opts.scheme, opts.embedding, backend=manifest.backend)
            probe_dir = staging_dir(out, "probe")
            try:
                write_graphs(qprobe, manifest, probe_dir, runner=False)
                tight = check_tight(probe_dir, manifest, qprobe, prompt, opts.num_threads, "probe")
            finally:
                shutil.rmtree(probe_dir, ignore_errors=True)
            del qprobe
            tight_on = {"graphs": "probe", "blocks": probe_blocks(config), "norm_jitter": NORM_JITTER}

        log_t(f"reading and quantizing the weights ({opts.scheme}, embedding {opts.embedding}) ...")
        qmodel = load_quantized(source, opts.scheme, opts.embedding, backend=manifest.backend)
        log_t(f"exporting {opts.scheme} graphs for {manifest.backend} ...")
        graph_facts, graphs = write_graphs(qmodel, manifest, tmp, genai=manifest.backend == "onnxruntime")
        if own_probe:
            log_t(f"tight parity check on the package's graphs (the model is its own probe: "
                  f"{describe(config)}, norm weights off the bfloat16 grid) ...")
            tight = check_tight(tmp, manifest, qmodel, prompt, opts.num_threads, "package")
            tight_on = {"graphs": "package", "blocks": probe_blocks(config), "norm_jitter": 0.0}

        # the eager int8 model's references, then it is freed before any package graph opens
        # (``references``: the two together would be two packages)
        P = prompt.shape[0]
        eager_steps = PROMPT_TOKENS + TIGHT_STEP_TOKENS if needs_probe(config) else P + opts.greedy_tokens - 1
        log_t(f"eager int8 references (prefill calls, {eager_steps} greedy steps; perplexity and KL over "
              f"{ids.numel()} held-out tokens, float32 streamed) ...")
        prefill = manifest.graphs["prefill"]
        T, batch = prefill.tokens_per_call, static_batch(manifest) or 2
        step_batch = static_batch(manifest) or 1
        prefill_refs = prefill_records(qmodel, T, batch, torch.Generator().manual_seed(1))
        eager = eager_greedy(qmodel, prompt, eager_steps, step_batch)
        genai_call = None
        if "refused" not in graph_facts.get("genai", {"refused": "none"}):
            from xlstm_edge.export.genai import write_genai_config

            n = min(TIGHT_STEP_TOKENS, P)
            whole = [prompt[:n].view(1, -1), torch.tensor([n]), *zero_state(qmodel, 1)]
            genai_call = Record(whole, EagerGraph(qmodel, "prefill", n).run(whole))
            write_genai_config(qmodel, tmp, manifest.tokenizer)
        ev = compare_eval(source, qmodel, ids)
        plan = qmodel.quant_plan.summary()
        del qmodel

        log_t("checking the package's graphs against the eager int8 references ...")
        parity: dict[str, Any] = {"tight": {**tight_on, **tight}}
        full = replay(_runner(tmp, manifest, "prefill", opts.num_threads), prefill_refs)
        require_within(full, TIGHT_MAX_REL_ERR, f"the {manifest.backend} prefill graph ({T} tokens)")
        parity["prefill_vs_eager_int8"] = full.to_dict()
        step_graph = _runner(tmp, manifest, "step", opts.num_threads)
        steps = replay(step_graph, eager.steps)
        require_within(steps, TIGHT_MAX_REL_ERR,
                       f"the {manifest.backend} step graph ({steps.calls} steps of eager int8's greedy run)")
        log_t(f"greedy run of the step graph over {opts.greedy_tokens} tokens ...")
        run = greedy_run(step_graph, config, prompt, P + opts.greedy_tokens - 1, step_batch)
        del step_graph
        genai_entry = None
        if "genai" in graph_facts:
            genai_entry = check_genai(tmp, graph_facts["genai"], config, eager.steps, genai_call,
                                      opts.num_threads, strict=not needs_probe(config))
            if "parity" in genai_entry:
                parity["genai_vs_eager_int8"] = genai_entry["parity"]
        log_t(f"greedy agreement over {opts.greedy_tokens} tokens (float32 streamed) ...")
        greedy = greedy_report(source, run, eager, P, steps)
        parity["step_vs_eager_int8"] = greedy.parity_vs_eager_int8
        parity["step_drift_vs_fp32"] = greedy.drift_vs_fp32
        parity.update(extra_parity or {})

        fp32_what, size_fp32 = fp32_bytes
        size_int8 = _dir_bytes(tmp)
        max_ppl, min_greedy = opts.gate()
        passed = ev.ppl_increase <= max_ppl and greedy.agreement >= min_greedy
        report = {
            "eval": {"source": eval_source, **asdict(ev), "measured_on": "eager int8 reference (graph parity above)"},
            "greedy": {"prompt_tokens": greedy.prompt_tokens, "generated_tokens": greedy.generated_tokens,
                       "agreement": greedy.agreement, "agreement_eager_int8": greedy.agreement_eager_int8,
                       "measured_on": f"{manifest.backend} step graph's greedy tokens, float32 teacher-forced"},
            "size": {"fp32_bytes": size_fp32, "fp32_measured_on": fp32_what, "quantized_bytes": size_int8,
                     "ratio": size_int8 / size_fp32},
            "gate": {"max_ppl_increase": max_ppl, "min_greedy_agreement": min_greedy,
                     "passed": passed, "allowed_loss": bool(opts.allow_quality_loss and not passed)},
        }
        if not passed and not opts.allow_quality_loss:
            shutil.rmtree(tmp, ignore_errors=True)
            return QuantizeResult(None, report, False)

        quantization = {**plan, **provenance, "graphs": graph_facts, "quality": report}
        new = md.Manifest(
            backend=manifest.backend, model=manifest.model, tokenizer=manifest.tokenizer, state=manifest.state,
            graphs=graphs, quantization=quantization,
            parity={**manifest.parity, "int8": parity},
            tools={**manifest.tools, **tool_versions(manifest.backend)},
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            source=manifest.source,
            genai=genai_entry,
            runner=manifest.runner,
        )
        md.write_manifest(new, tmp)
        md.read_manifest(tmp)  # the package as the runtime will see it
        if out.exists():
            out.rmdir()  # empty (checked by the caller)
        plain_modes(tmp)
        move_into_place(tmp, out, False, QuantizationError)
        log_t("done")
        return QuantizeResult(out, report, passed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        sampler.stop()
