"""``xlstm-edge export CKPT OUT --format onnx|executorch``: a checkpoint -> a parity-checked package.

Plugged into ``xlstm_edge.cli`` lazily (``COMMANDS``); the work is in ``package.export_package``.
With ``--quantize SCHEME`` the float32 package is built in a hidden directory beside OUT, then
``xlstm_edge.quant`` turns it into the int8 package at OUT (the float32 one is removed).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
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
    """Prints ``[k/n] stage ...`` as each export stage starts (with the previous stage's time, since
    exporters print lines of their own in between) and ``close()`` the last stage's time."""

    def __init__(self, stages: list[str]):
        self.stages = stages
        self.current: tuple[str, float] | None = None

    def _elapsed(self) -> str:
        return "" if self.current is None else f" ({self.current[0]}: {time.perf_counter() - self.current[1]:.1f} s)"

    def __call__(self, name: str) -> None:
        k = self.stages.index(name) + 1 if name in self.stages else "?"
        click.echo(f"[{k}/{len(self.stages)}] {name} ...{self._elapsed()}", err=True)
        self.current = (name, time.perf_counter())

    def close(self) -> None:
        if self.current is not None:
            click.echo(f"      done{self._elapsed()}", err=True)
            self.current = None


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
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest max |dlogits| (float32) the parity check accepts.")
@click.option("--quantize", "scheme", default=None, help="Quantize in the same go (int8-weight, int8-dynamic).")
@click.option("--embedding", default="fp32", show_default=True, help="With --quantize: the embedding table, fp32|int8.")
@click.option("--allow-quality-loss", is_flag=True, help="With --quantize: write even if the quality gate is missed.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def export_cmd(ckpt: str, out: Path, fmt: str, prefill_tokens: int | None, batch: int, tokenizer_path: Path | None,
               parity_steps: int, tolerance: float, scheme: str | None, embedding: str, allow_quality_loss: bool,
               force: bool) -> None:
    """Export the checkpoint CKPT (a directory, or `demo` for the embedded model) to the package OUT.

    OUT gets the step and prefill graphs, tokenizer.json and the manifest xlstm_edge.json, which
    records the state spec and the parity figures: every export runs its graphs against the eager
    model (a prompt prefilled chunk by chunk, then fed-back steps) and fails, writing nothing, if
    max |dlogits| exceeds the tolerance. OUT appears only when everything has passed.

    \b
    Examples:
      xlstm-edge export demo pkg/demo-onnx
      xlstm-edge export models/small pkg/small-pte --format executorch
      xlstm-edge export demo pkg/demo-int8 --quantize int8-dynamic --embedding int8
    """
    from xlstm_edge.checkpoint import load_checkpoint, weights_sha256
    from xlstm_edge.tokenizer import load_tokenizer

    from .package import STAGES, ExportError, check_out_dir, export_package, finalize
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
    model = load_checkpoint(path)
    tokenizer = load_tokenizer(tokenizer_path if tokenizer_path is not None else path, model.config)
    source = {"checkpoint": str(path.resolve()), "weights_sha256": weights_sha256(path)}
    click.echo(f"exporting {path} ({sum(p.numel() for p in model.parameters()):,} parameters) to {fmt}", err=True)

    target = out
    staging: Path | None = None
    if scheme is not None:  # float32 package first, in a hidden directory beside OUT
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.fp32-", dir=out.parent if out.parent.is_dir() else None))
        target = staging / "fp32"
    log = StageLog(STAGES[fmt])
    try:
        with quiet_exporters():
            result = export_package(model, target, fmt, tokenizer=tokenizer, prefill_tokens=prefill_tokens,
                                    batch=batch, parity_steps=parity_steps, tolerance=tolerance, force=force,
                                    source=source, on_stage=log)
        log.close()
        click.echo(f"parity: {_parity_line(result.manifest.parity)}", err=True)
        if scheme is None:
            click.echo(f"wrote {out} in {result.timings['total']:.1f} s")
            return
        _quantize(target, staging / "int8", path, scheme, embedding, allow_quality_loss)
        finalize(staging / "int8", out, force)
        click.echo(f"wrote {out}")
    except (ExportError, ParityError) as e:
        log.close()
        raise click.ClickException(str(e)) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _parity_line(parity: dict) -> str:
    return (f"max |dlogits| {parity['max_abs_dlogits']:.2e} over prefill + {parity['steps']} steps "
            f"(batch {parity['batch']}, tolerance {parity['tolerance']:.0e}), "
            f"argmax agreement {100 * parity['argmax_agreement']:.1f}%")


def _quantize(fp32_pkg: Path, out: Path, ckpt: Path, scheme: str, embedding: str, allow_quality_loss: bool) -> None:
    """Quantize ``fp32_pkg`` into ``out`` (inside the staging directory) and print the quality report."""
    from xlstm_edge.quant.cli import format_report
    from xlstm_edge.quant.handler import QuantizationError
    from xlstm_edge.quant.package import QuantizeOptions, quantize_package

    opts = QuantizeOptions(scheme=scheme, embedding=embedding, checkpoint=ckpt, allow_quality_loss=allow_quality_loss)
    try:
        result = quantize_package(fp32_pkg, out, opts, log=lambda msg: click.echo(msg, err=True))
    except (QuantizationError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(format_report(result.report, scheme))
    if result.out is None:
        raise click.ClickException("quality gate missed: nothing written (--allow-quality-loss writes it)")
