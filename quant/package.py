"""Quantize an exported float32 package into a new int8 package, checked and measured before it is written.

    quantize_package(Path("pkg"), Path("pkg-int8"), QuantizeOptions(scheme="int8-dynamic", checkpoint=...))

1. read the package's manifest; refuse one already quantized, an unknown scheme, a scheme its backend lacks
2. load the float32 weights (``--checkpoint``, else the checkpoint the manifest's ``source`` records)
   and check that they are the package's: same hash (when recorded), same config, and the package's
   own step graph reproduces them
3. ``quantize_model`` (the eager reference), export the same graphs (file names, methods, prefill
   length and I/O from the float32 manifest) in int8
4. inspect every graph (state I/O float32); the tight parity check (same quantization as eager int8,
   median call to float32 noise) on these graphs, or for a model deeper than
   ``probe.PROBE_ABOVE_BLOCKS`` on graphs exported the same way from its probe (first block of each
   kind: see ``probe`` for why); the package's own graphs against eager int8 within a bound that
   lets rounding flips through (``verify.TIGHT_MAX_REL_ERR``) and against float32 (reported); measure
   quality (``quality``) and sizes
5. write the manifest (``quantization`` = scheme, plan summary, quality report, gate) and move the
   package into place, or leave nothing if the quality gate is missed without ``allow_quality_loss``
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from xlstm_edge.export import metadata as md

from xlstm_edge.config import xLSTMConfig

from .handler import SCHEMES, QuantizationError, check_scheme, quantize_model
from .probe import describe, grid_tie_hint, needs_probe, probe_blocks, probe_model
from .quality import EvalTextError, compare_eval, eval_ids, greedy_compare, zero_state
from .verify import (
    TIGHT_MAX_REL_ERR,
    EagerGraph,
    Parity,
    prefill_parity,
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


def load_source_model(checkpoint: Path, manifest: md.Manifest) -> nn.Module:
    """The float32 model of ``checkpoint``; its config must equal the package's."""
    from xlstm_edge.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint)
    want = xLSTMConfig.from_dict(manifest.model).to_dict()
    got = model.config.to_dict()
    diff = sorted(k for k in want if want[k] != got.get(k))
    if diff:
        k = diff[0]
        raise QuantizationError(f"checkpoint {checkpoint} does not match the package: {k} is {got.get(k)!r}, "
                                f"the package's model has {want[k]!r}")
    model.eval().requires_grad_(False)
    return model


def static_batch(manifest: md.Manifest) -> int | None:
    """The fixed batch of the package's graphs (ExecuTorch), or None for a dynamic batch (ONNX)."""
    dim = manifest.graph("step").inputs[0].shape[0]
    return dim if isinstance(dim, int) else None


def _runner(package: Path, manifest: md.Manifest, key: str, num_threads: int):
    entry = manifest.graph(key)
    path = package / entry.file
    if manifest.backend == "onnxruntime":
        from .onnx_backend import OrtGraph

        return OrtGraph(path, num_threads)
    from .executorch_backend import PteMethod

    return PteMethod(path, entry.method, num_threads)


def check_source(package: Path, manifest: md.Manifest, model: nn.Module, num_threads: int, tokens: int = 8) -> float:
    """The float32 package's step graph vs the eager model over ``tokens`` steps; raises if they differ."""
    ids = torch.randint(0, model.config.vocab_size, (static_batch(manifest) or 1, tokens))
    parity = step_parity(_runner(package, manifest, "step", num_threads), {"fp32": EagerGraph(model, "step")},
                         ids, zero_state(model))["fp32"]
    worst = max(parity.logits_rel_err, parity.state_rel_err)
    if not worst <= SOURCE_CHECK_REL_ERR:
        raise QuantizationError(f"the checkpoint's weights are not the package's: its step graph differs from "
                                f"the checkpoint's model by {worst:.2e} (relative)")
    return worst


def check_tight(graph_dir: Path, manifest: md.Manifest, fp32: nn.Module, int8: nn.Module, prompt: torch.Tensor,
                num_threads: int, what: str) -> dict[str, Any]:
    """The tight check (``verify.require_tight``) of the graphs in ``graph_dir`` (exported from ``int8``)
    against eager ``int8``: prefill calls with 1-2 valid tokens from random states, then steps over
    the prompt's first ``TIGHT_STEP_TOKENS`` from the zero state, the graph reading the eager state.
    Raises ``QuantizationError``; returns the figures."""
    T, batch = manifest.graphs["prefill"].tokens_per_call, static_batch(manifest) or 2
    g = torch.Generator().manual_seed(0)
    runner = _runner(graph_dir, manifest, "prefill", num_threads)
    short = prefill_parity(runner, {"int8": EagerGraph(int8, "prefill", T)}, fp32, T, batch, valid_lengths=[1, 2],
                           calls=PREFILL_SHORT_CALLS, generator=g)["int8"]
    require_tight(short, f"the {manifest.backend} prefill graph ({what}, 1-2 valid tokens)")
    step_batch = static_batch(manifest) or 1
    ids = prompt[:TIGHT_STEP_TOKENS].view(1, -1).expand(step_batch, -1).contiguous()
    step = step_parity(_runner(graph_dir, manifest, "step", num_threads), {"int8": EagerGraph(int8, "step")}, ids,
                       zero_state(fp32, step_batch))["int8"]
    require_tight(step, f"the {manifest.backend} step graph ({what})")
    return {"prefill_short_vs_eager_int8": short.to_dict(), "step_vs_eager_int8": step.to_dict()}


# ---- graphs ---------------------------------------------------------------------------------------
def write_graphs(qmodel: nn.Module, manifest: md.Manifest, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The float32 package's graphs (same files, methods, prefill length) from the quantized model.

    Returns (facts per graph, the new manifest's graph entries). ONNX graphs keep their weights in
    one shared external file, as the float32 package does (``export.onnx_weights``).
    """
    facts: dict[str, Any] = {}
    if manifest.backend == "onnxruntime":
        from xlstm_edge.export.onnx_weights import DATA_NAME, share_weights

        from .onnx_backend import export_graph, inspect_graph

        paths = [export_graph(qmodel, key, entry.tokens_per_call, out / entry.file)
                 for key, entry in manifest.graphs.items()]
        share_weights(paths, DATA_NAME)
        for key, path in zip(manifest.graphs, paths, strict=True):
            facts[key] = inspect_graph(path)
        return facts, {k: dataclasses.replace(e, data_file=DATA_NAME) for k, e in manifest.graphs.items()}
    from .executorch_backend import PteMethod, export_program, inspect_method

    by_file: dict[str, dict[str, tuple[str, int]]] = {}
    for key, entry in manifest.graphs.items():
        by_file.setdefault(entry.file, {})[entry.method] = (key, entry.tokens_per_call)
    for file, methods in by_file.items():
        lowering = export_program(qmodel, methods, out / file, batch=static_batch(manifest) or 1)
        for method, (key, _) in methods.items():
            runner = PteMethod(out / file, method)
            facts[key] = {**lowering[method], **inspect_method(runner, 2 if key == "prefill" else 1)}
    return facts, dict(manifest.graphs)


def copy_other_files(package: Path, manifest: md.Manifest, out: Path) -> list[str]:
    """Copy what is neither a graph nor the manifest (tokenizer.json and its companions) into ``out``."""
    graph_files = {g.file for g in manifest.graphs.values()} | {g.data_file for g in manifest.graphs.values()}
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
@contextlib.contextmanager
def _explained(hint: str | None):
    """Append ``hint`` (a likely cause, when there is one) to a ``QuantizationError`` raised inside."""
    try:
        yield
    except QuantizationError as e:
        if hint is None:
            raise
        raise QuantizationError(f"{e}; {hint}") from None


def quantize_package(package: Path, out: Path, opts: QuantizeOptions, log=print) -> QuantizeResult:
    """Build, check and measure the int8 package; see the module docstring. Raises ``QuantizationError``
    (one line) on bad input or a failed parity check, ``QualityGateError`` when the gate is missed."""
    package, out = Path(package), Path(out)
    t0 = time.perf_counter()

    def log_t(msg: str) -> None:
        log(f"[{time.perf_counter() - t0:5.0f} s] {msg}")

    manifest = _check_inputs(package, out, opts)
    checkpoint = resolve_checkpoint(package, manifest, opts.checkpoint)
    torch.set_num_threads(opts.num_threads)
    from xlstm_edge.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(package / manifest.tokenizer.file)
    ids, eval_source = eval_ids(tokenizer, opts.eval_text, opts.eval_tokens)
    if opts.calibration_text is not None:
        prompt, _ = eval_ids(tokenizer, opts.calibration_text, PROMPT_TOKENS)
    else:
        prompt = ids[:PROMPT_TOKENS]

    log_t(f"loading {checkpoint} and checking it against {package} ...")
    model = load_source_model(checkpoint, manifest)
    source_err = check_source(package, manifest, model, opts.num_threads)
    qmodel = quantize_model(copy.deepcopy(model), opts.scheme, opts.embedding, backend=manifest.backend)
    tie_hint = grid_tie_hint(model, opts.embedding, qmodel.quant_plan.activation)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        log_t(f"exporting {opts.scheme} graphs for {manifest.backend} ...")
        graph_facts, graphs = write_graphs(qmodel, manifest, tmp)
        copy_other_files(package, manifest, tmp)

        if needs_probe(model.config):
            log_t(f"tight parity check on a probe of the model ({describe(model)}): exporting it ...")
            probe = probe_model(model)
            qprobe = quantize_model(copy.deepcopy(probe), opts.scheme, opts.embedding, backend=manifest.backend)
            probe_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.probe.", dir=out.parent))
            try:
                write_graphs(qprobe, manifest, probe_dir)
                with _explained(tie_hint):
                    tight = check_tight(probe_dir, manifest, probe, qprobe, prompt, opts.num_threads, "probe")
            finally:
                shutil.rmtree(probe_dir, ignore_errors=True)
            tight_on = {"graphs": "probe", "blocks": probe_blocks(model.config)}
        else:
            log_t("tight parity check of the graphs against eager PyTorch int8 ...")
            with _explained(tie_hint):
                tight = check_tight(tmp, manifest, model, qmodel, prompt, opts.num_threads, "package")
            tight_on = {"graphs": "package", "blocks": list(range(model.config.num_hidden_layers))}

        log_t("checking the package's graphs against eager PyTorch (int8 and float32) ...")
        parity: dict[str, Any] = {"tight": {**tight_on, **tight}}
        prefill = manifest.graphs["prefill"]
        T, batch = prefill.tokens_per_call, static_batch(manifest) or 2
        runner = _runner(tmp, manifest, "prefill", opts.num_threads)
        refs = {"int8": EagerGraph(qmodel, "prefill", T), "fp32": EagerGraph(model, "prefill", T)}
        full = prefill_parity(runner, refs, model, T, batch, generator=torch.Generator().manual_seed(1))
        require_within(full["int8"], TIGHT_MAX_REL_ERR, f"the {manifest.backend} prefill graph ({T} tokens)")
        parity["prefill_vs_eager_int8"] = full["int8"].to_dict()
        parity["prefill_vs_fp32"] = full["fp32"].to_dict()

        log_t(f"greedy agreement over {opts.greedy_tokens} tokens (graph) ...")
        greedy = greedy_compare(_runner(tmp, manifest, "step", opts.num_threads), model, qmodel, prompt,
                                opts.greedy_tokens, batch=static_batch(manifest) or 1)
        require_within(Parity(**greedy.parity_vs_eager_int8), TIGHT_MAX_REL_ERR,
                       f"the {manifest.backend} step graph (greedy, reading the eager int8 state)")
        parity["step_vs_eager_int8"] = greedy.parity_vs_eager_int8
        parity["step_drift_vs_fp32"] = greedy.drift_vs_fp32
        parity["source_check_rel_err"] = source_err

        log_t(f"perplexity and KL over {ids.numel()} held-out tokens ...")
        ev = compare_eval(model, qmodel, ids)
        size_fp32, size_int8 = _dir_bytes(package), _dir_bytes(tmp)
        max_ppl, min_greedy = opts.gate()
        passed = ev.ppl_increase <= max_ppl and greedy.agreement >= min_greedy
        report = {
            "eval": {"source": eval_source, **asdict(ev), "measured_on": "eager int8 reference (graph parity above)"},
            "greedy": {"prompt_tokens": greedy.prompt_tokens, "generated_tokens": greedy.generated_tokens,
                       "agreement": greedy.agreement, "agreement_eager_int8": greedy.agreement_eager_int8,
                       "measured_on": f"{manifest.backend} step graph, teacher-forced on float32's greedy tokens"},
            "size": {"fp32_bytes": size_fp32, "quantized_bytes": size_int8, "ratio": size_int8 / size_fp32},
            "gate": {"max_ppl_increase": max_ppl, "min_greedy_agreement": min_greedy,
                     "passed": passed, "allowed_loss": bool(opts.allow_quality_loss and not passed)},
        }
        if not passed and not opts.allow_quality_loss:
            shutil.rmtree(tmp, ignore_errors=True)
            return QuantizeResult(None, report, False)

        quantization = {
            **qmodel.quant_plan.summary(),
            "source_package": str(package),
            "source_checkpoint": str(checkpoint.resolve()),
            "graphs": graph_facts,
            "quality": report,
        }
        new = md.Manifest(
            backend=manifest.backend, model=manifest.model, tokenizer=manifest.tokenizer, state=manifest.state,
            graphs=graphs, quantization=quantization,
            parity={**manifest.parity, "int8": parity},
            tools={**manifest.tools, **tool_versions(manifest.backend)},
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            source=manifest.source,
        )
        md.write_manifest(new, tmp)
        md.read_manifest(tmp)  # the package as the runtime will see it
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
        return QuantizeResult(out, report, passed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
