"""``xlstm-edge quantize PACKAGE --scheme SCHEME OUT``: an int8 package from a float32 one, with a quality report.

Plugged into ``xlstm_edge.cli`` lazily (``COMMANDS``); the work is in ``package.quantize_package``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .handler import EMBEDDINGS, SCHEMES

if TYPE_CHECKING:
    from .package import QuantizeOptions, QuantizeResult


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_report(report: dict[str, Any], scheme: str) -> str:
    """The quality report as a table (float32 | the scheme | change), then the gate's verdict."""
    ev, gr, size, gate = report["eval"], report["greedy"], report["size"], report["gate"]
    rows = [
        ("metric", "float32", scheme, "change"),
        (f"perplexity ({ev['tokens']} held-out tokens)", f"{ev['ppl_fp32']:.4f}", f"{ev['ppl_quantized']:.4f}",
         f"{100 * ev['ppl_increase']:+.2f}%"),
        (f"KL(float32 || {scheme}), nats/token (mean / max)", "", f"{ev['kl_mean']:.2e} / {ev['kl_max']:.2e}", ""),
        ("top-1 agreement on held-out text", "", f"{100 * ev['top1_agreement']:.1f}%", ""),
        (f"greedy agreement ({gr['generated_tokens']} tokens, graph)", "", f"{100 * gr['agreement']:.1f}%", ""),
        ("package size", _mib(size["fp32_bytes"]), _mib(size["quantized_bytes"]), f"{size['ratio']:.2f}x"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    verdict = "passed" if gate["passed"] else ("MISSED (allowed by --allow-quality-loss)" if gate["allowed_loss"]
                                              else "MISSED")
    lines.append(f"quality gate (perplexity <= {100 * gate['max_ppl_increase']:+.1f}%, greedy agreement >= "
                 f"{100 * gate['min_greedy_agreement']:.0f}%): {verdict}")
    lines.append(f"eval text: {ev['source']}")
    return "\n".join(lines)


def quantize_with_report(package: Path, out: Path, opts: QuantizeOptions,
                         echo: Callable[[str], None]) -> QuantizeResult:
    """``quantize_package`` for a command line: progress on stderr, the report through ``echo``, bad input
    and a missed quality gate as one-line ``click.ClickException``s. Returns the ``QuantizeResult``."""
    from xlstm_edge.export.metadata import ManifestError

    from .handler import QuantizationError
    from .package import quantize_package
    from .quality import EvalTextError

    try:
        result = quantize_package(package, out, opts, log=lambda msg: click.echo(msg, err=True))
    except (QuantizationError, EvalTextError, ManifestError) as e:
        raise click.ClickException(str(e)) from None
    echo(format_report(result.report, opts.scheme))
    if result.out is None:
        raise click.ClickException(f"quality gate missed: nothing written to {out} (xlstm-edge quantize --allow-quality-loss writes it)")
    return result


@click.command("quantize")
@click.argument("package", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--scheme", required=True, help=f"Quantization scheme: {', '.join(SCHEMES)}.")
@click.option("--embedding", default="fp32", show_default=True, help=f"Input embedding table: {', '.join(EMBEDDINGS)}.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Read the float weights from this checkpoint (PACKAGE's own weights must be its) [default: "
                   "PACKAGE's own weights where its manifest locates them (ONNX packages), else the checkpoint "
                   "its manifest records].")
@click.option("--eval-text", type=click.Path(path_type=Path),
              help="Text for perplexity / KL (default: the embedded corpus's held-out split).")
@click.option("--calibration-text", type=click.Path(path_type=Path),
              help="Text whose first tokens prompt the greedy run and parity check (default: the eval text). "
                   "Neither scheme needs calibrated ranges: weights use their own, activations are set at run time.")
@click.option("--eval-tokens", type=click.IntRange(64), default=2048, show_default=True,
              help="Held-out tokens for perplexity and KL.")
@click.option("--greedy-tokens", type=click.IntRange(1), default=256, show_default=True,
              help="Tokens float32 generates greedily for the agreement check.")
@click.option("--max-ppl-increase", type=float, default=None,
              help="Quality gate: largest relative perplexity increase [default: 0.01 for int8 schemes, "
                   "0.05 for int4-dynamic].")
@click.option("--min-greedy-agreement", type=click.FloatRange(0, 1), default=None,
              help="Quality gate: smallest greedy agreement [default: 0.95 for int8 schemes, 0.90 for "
                   "int4-dynamic].")
@click.option("--allow-quality-loss", is_flag=True, help="Write the package even if the quality gate is missed.")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True, help="CPU threads.")
def quantize_cmd(package: Path, out: Path, scheme: str, embedding: str, checkpoint: Path | None,
                 eval_text: Path | None, calibration_text: Path | None, eval_tokens: int, greedy_tokens: int,
                 max_ppl_increase: float | None, min_greedy_agreement: float | None, allow_quality_loss: bool,
                 threads: int) -> None:
    """Quantize the float32 package PACKAGE to int8 / int4 into OUT.

    Every quantized graph is checked against the same quantization in eager PyTorch before OUT is written.
    The quality report (perplexity, KL divergence, greedy agreement, size) is printed and stored in
    OUT's manifest. Exits non-zero, writing nothing, if the quality gate is missed (unless
    --allow-quality-loss).

    \b
    Schemes:
      int8-weight   int8 weights per output channel, float32 activations (onnxruntime only)
      int8-dynamic  int8 weights per output channel, 8-bit activations chosen at run time
      int4-dynamic  4-bit weights, one scale per 32 inputs, 8-bit activations at run time
    Activations: per token, asymmetric, on executorch; per block of inputs (32 for int4, 128
    for int8), symmetric, on onnxruntime (MatMulNBits). Quality gate defaults: int8
    perplexity +1%, greedy agreement >= 95%; int4 perplexity +5%, greedy >= 90%.
    Gates, the stabilizer, norms and the recurrent state stay float32 in every scheme.

    \b
    Example:
      xlstm-edge quantize pkg/ --scheme int8-dynamic pkg-int8/
      xlstm-edge quantize pkg/ --scheme int8-dynamic --embedding int8 pkg-int8-emb/
    """
    from .package import QuantizeOptions

    opts = QuantizeOptions(
        scheme=scheme, embedding=embedding, checkpoint=checkpoint, eval_text=eval_text,
        calibration_text=calibration_text, allow_quality_loss=allow_quality_loss, eval_tokens=eval_tokens,
        greedy_tokens=greedy_tokens, max_ppl_increase=max_ppl_increase,
        min_greedy_agreement=min_greedy_agreement, num_threads=threads,
    )
    result = quantize_with_report(package, out, opts, echo=click.echo)
    click.echo(f"wrote {result.out}")
