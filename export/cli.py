"""``xlstm-edge export CKPT OUT --format onnx|executorch``: a checkpoint -> a parity-checked package.

Plugged into ``xlstm_edge.cli`` lazily (``COMMANDS``); the work is in ``package.export_package``.
With ``--quantize SCHEME`` the float32 package is built in a hidden directory beside OUT, then
``xlstm_edge.quant`` turns it into the int8 package at OUT (the float32 one is removed).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import click

DEMO = "demo"  # CKPT shorthand for the embedded demo model


def resolve_checkpoint(ckpt: str) -> Path:
    """``demo`` -> the embedded demo checkpoint; anything else is a path."""
    if ckpt == DEMO:
        from xlstm_edge import DEMO_CHECKPOINT

        return Path(DEMO_CHECKPOINT)
    return Path(ckpt)


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """The dynamo ONNX exporter logs a warning per torchvision op it cannot register; hide those."""
    names = ["torch.onnx._internal.exporter._registration", "torch.onnx._internal.exporter._core"]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


class StageLog:
    """Prints ``[k/n] stage ...`` as each export stage starts (with the previous stage's time and peak
    resident memory, since exporters print lines of their own in between) and ``close()`` the last
    stage's. ``stats`` keeps {stage: (seconds, peak bytes or None)}."""

    def __init__(self, stages: list[str]):
        from xlstm_edge.memory import PeakSampler

        self.stages = stages
        self.current: tuple[str, float] | None = None
        self.stats: dict[str, tuple[float, int | None]] = {}
        self.sampler = PeakSampler()

    def _elapsed(self) -> str:
        from xlstm_edge.memory import release_freed

        release_freed()  # the stage before's garbage is not the next stage's peak
        peak = self.sampler.restart()
        if self.current is None:
            return ""
        from xlstm_edge.memory import gib

        name, t0 = self.current
        self.stats[name] = (time.perf_counter() - t0, peak)
        return f" ({name}: {self.stats[name][0]:.1f} s, peak RSS {gib(peak)})"

    def __call__(self, name: str) -> None:
        if self.sampler.stopped:
            from xlstm_edge.memory import PeakSampler

            self.sampler = PeakSampler()
        k = self.stages.index(name) + 1 if name in self.stages else "?"
        click.echo(f"[{k}/{len(self.stages)}] {name} ...{self._elapsed()}", err=True)
        self.current = (name, time.perf_counter())

    def close(self) -> None:
        if self.current is not None:
            click.echo(f"      done{self._elapsed()}", err=True)
            self.current = None
        self.sampler.stop()

    def __enter__(self) -> StageLog:
        return self

    def __exit__(self, *exc: object) -> None:
        """Stops the sampler thread whatever happened (an interrupted export included); prints the last
        stage's figures only when the block ended normally."""
        if exc[0] is None:
            self.close()
        else:
            self.sampler.stop()


@click.command("export")
@click.argument("ckpt")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "executorch"]), default="onnx", show_default=True,
              help="onnx: step.onnx + prefill.onnx for ONNX Runtime; executorch: model.pte (XNNPACK).")
@click.option("--prefill-tokens", type=click.IntRange(1), default=None,
              help="Tokens per prefill call (default: the model's chunk size; a multiple of it or at most it).")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="Fixed batch of an ExecuTorch package (ONNX graphs take any batch).")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(path_type=Path), default=None,
              help="tokenizer.json to package (default: the checkpoint's, else byte-level).")
@click.option("--parity-steps", type=click.IntRange(1), default=64, show_default=True,
              help="Fed-back steps of the parity check run at export.")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Largest max |dlogits| the parity check accepts, absolute [default: 16x the eager "
                   "float32 model's own error against float64, relative to the largest logit].")
@click.option("--quantize", "scheme", default=None,
              help="Quantize as the weights are read (int8-weight, int8-dynamic, int4-dynamic).")
@click.option("--embedding", default="fp32", show_default=True, help="With --quantize: the embedding table, fp32|int8.")
@click.option("--allow-quality-loss", is_flag=True, help="With --quantize: write even if the quality gate is missed.")
@click.option("--eval-tokens", type=click.IntRange(64), default=2048, show_default=True,
              help="With --quantize: held-out tokens of the quality report (perplexity, KL; two models run over "
                   "them on the CPU: a 7B model takes minutes per hundred).")
@click.option("--greedy-tokens", type=click.IntRange(1), default=256, show_default=True,
              help="With --quantize: tokens float32 generates greedily for the agreement check.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--ignore-memory-estimate", is_flag=True,
              help="Start even if the export's estimated peak memory exceeds what the machine has available.")
def export_cmd(ckpt: str, out: Path, fmt: str, prefill_tokens: int | None, batch: int, tokenizer_path: Path | None,
               parity_steps: int, tolerance: float | None, scheme: str | None, embedding: str, allow_quality_loss: bool,
               eval_tokens: int, greedy_tokens: int, force: bool, ignore_memory_estimate: bool) -> None:
    """Export the checkpoint CKPT (a directory, or `demo` for the embedded model) to the package OUT.

    OUT gets the step and prefill graphs, tokenizer.json and the manifest xlstm_edge.json, which
    records the state spec and the parity figures: every export runs its graphs against a float64
    reference (a prompt prefilled chunk by chunk, then fed-back steps) and fails, writing nothing,
    if their error exceeds 16x the eager float32 model's own (or --tolerance). OUT appears only when
    everything has passed.

    \b
    Examples:
      xlstm-edge export demo pkg/demo-onnx
      xlstm-edge export models/small pkg/small-pte --format executorch
      xlstm-edge export demo pkg/demo-int8 --quantize int8-dynamic --embedding int8
    """
    from xlstm_edge.checkpoint import load_checkpoint, weights_sha256
    from xlstm_edge.tokenizer import load_tokenizer

    from .package import STAGES, ExportError, check_out_dir, export_package
    from .verify import ParityError

    path = resolve_checkpoint(ckpt)
    try:
        check_out_dir(out, force)
    except ExportError as e:
        raise click.ClickException(str(e)) from None
    if scheme is not None:
        from xlstm_edge.quant.handler import QuantizationError, check_scheme

        try:
            check_scheme(scheme, embedding)
        except QuantizationError as e:
            raise click.ClickException(str(e)) from None
    if not ignore_memory_estimate:
        _check_memory(path, fmt, scheme, embedding, prefill_tokens)
    _check_disk(path, out, fmt, scheme, embedding)
    if scheme is not None:  # quantized as read, straight into OUT: no float package, no float model
        opts_kw = dict(embedding=embedding, allow_quality_loss=allow_quality_loss, eval_tokens=eval_tokens,
                       greedy_tokens=greedy_tokens)
        _export_quantized(path, out, fmt, scheme, opts_kw, tokenizer_path, prefill_tokens, batch, force)
        return
    model = load_checkpoint(path)
    tokenizer = load_tokenizer(tokenizer_path if tokenizer_path is not None else path, model.config)
    source = {"checkpoint": str(path.resolve()), "weights_sha256": weights_sha256(path)}
    click.echo(f"exporting {path} ({sum(p.numel() for p in model.parameters()):,} parameters) to {fmt}", err=True)
    with StageLog(STAGES[fmt]) as log:
        try:
            with quiet_exporters():
                result = export_package(model, out, fmt, tokenizer=tokenizer, prefill_tokens=prefill_tokens,
                                        batch=batch, parity_steps=parity_steps, tolerance=tolerance, force=force,
                                        source=source, on_stage=log)
        except (ExportError, ParityError) as e:
            log.close()
            raise click.ClickException(str(e)) from None
    click.echo(f"parity: {_parity_line(result.manifest.parity)}", err=True)
    genai = result.manifest.genai
    if genai is not None:
        click.echo(f"onnxruntime-genai: {_parity_line(genai['parity'])}" if "parity" in genai else
                   f"onnxruntime-genai: no genai.onnx: {genai['refused']}", err=True)
    click.echo(f"wrote {out} in {result.timings['total']:.1f} s")


def _export_quantized(path: Path, out: Path, fmt: str, scheme: str, opts_kw: dict, tokenizer_path: Path | None,
                      prefill_tokens: int | None, batch: int, force: bool) -> None:
    """``export --quantize``: the checkpoint quantized as it is read, graphs, checks, quality report, OUT.
    ``opts_kw``: the ``QuantizeOptions`` fields the command sets (embedding, quality gate and report)."""
    from xlstm_edge.quant.cli import format_report
    from xlstm_edge.quant.handler import QuantizationError
    from xlstm_edge.quant.package import QuantizeOptions, quantize_checkpoint
    from xlstm_edge.quant.quality import EvalTextError

    from xlstm_edge.checkpoint import checkpoint_info
    from xlstm_edge.publish import move_into_place, staging_dir
    from xlstm_edge.tokenizer import load_tokenizer

    from .package import ExportError

    info = checkpoint_info(path)
    tokenizer = load_tokenizer(tokenizer_path if tokenizer_path is not None else path,
                               _config_of(path))
    click.echo(f"exporting {path} ({info['num_params']:,} parameters) to {fmt}, {scheme} "
               f"(embedding {opts_kw['embedding']}), quantized as it is read", err=True)
    opts = QuantizeOptions(scheme=scheme, **opts_kw)
    staging = staging_dir(out)
    try:
        with quiet_exporters():
            result = quantize_checkpoint(path, staging / "pkg", fmt, opts, tokenizer=tokenizer,
                                         prefill_tokens=prefill_tokens, batch=batch,
                                         log=lambda msg: click.echo(msg, err=True))
        click.echo(format_report(result.report, scheme))
        if result.out is None:
            raise click.ClickException("quality gate missed: nothing written (--allow-quality-loss writes it)")
        move_into_place(result.out, out, force, ExportError)
        click.echo(f"wrote {out}")
    except (QuantizationError, EvalTextError, ExportError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_memory(path: Path, fmt: str, scheme: str | None, embedding: str, prefill_tokens: int | None) -> None:
    """Refuse at once, in one line, an export whose estimated peak memory the machine lacks."""
    from xlstm_edge.memory import available_bytes

    from .estimate import estimate_export

    estimate = estimate_export(_config_of(path), scheme, embedding, fmt)
    refusal = estimate.refusal(available_bytes(), fmt, scheme, prefill_tokens)
    if refusal is not None:
        raise click.ClickException(refusal + " (--ignore-memory-estimate starts it anyway)")


def _check_disk(path: Path, out: Path, fmt: str, scheme: str | None, embedding: str) -> None:
    """Refuse at once, in one line, an export whose package and graph files would not fit on the disk of
    ``out`` (a 7B int8 export once filled it after 24 minutes)."""
    import shutil

    from .estimate import disk_refusal, estimate_disk

    parent = next(p for p in [out.resolve(), *out.resolve().parents] if p.exists())
    refusal = disk_refusal(estimate_disk(_config_of(path), scheme, embedding, fmt), shutil.disk_usage(parent).free,
                           str(parent))
    if refusal is not None:
        raise click.ClickException(refusal)


def _config_of(path: Path):
    from xlstm_edge.weights import CheckpointWeights

    return CheckpointWeights(path).config


def _parity_line(parity: dict) -> str:
    return f"{parity_bound_text(parity)}, argmax agreement {100 * parity['argmax_agreement']:.1f}%"


def parity_bound_text(parity: dict) -> str:
    """One line: the graphs' error against float64 and the bound it was held to."""
    bound = (f"tolerance {parity['tolerance']:.0e}" if parity.get("tolerance") is not None else
             f"bound {parity['bound_rel']:.1e}, eager float32's own {parity['eager_float32_rel_err']:.1e}")
    return (f"max |dlogits| {parity['max_abs_dlogits']:.2e} = {parity['max_rel_dlogits']:.1e} of max |logit| "
            f"over prefill + {parity['steps']} steps (batch {parity['batch']}; {bound})")
