"""``xlstm-edge demo`` (what ``make demo`` runs): the whole path on the embedded model.

export the embedded demo checkpoint to ONNX Runtime and to ExecuTorch (each parity-checked at export),
quantize each package to int8 (int8-dynamic, int8 embedding; quality report printed, gate enforced),
then stream a generation from every package and from the eager model, printing tok/s for each.
Packages are kept under ``--out`` and reused on the next run when they were made from the same
weights (``--fresh`` rebuilds them).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import click

FORMATS = {"onnx": "onnxruntime", "executorch": "executorch"}
DEFAULT_PROMPT = "def read_config(path):\n"
INT8_SCHEME, INT8_EMBEDDING = "int8-dynamic", "int8"


def reusable(package: Path, sha: str, scheme: str | None = None, embedding: str | None = None) -> bool:
    """Whether ``package`` is a complete package made from weights with this hash: float32 when
    ``scheme`` is None, else quantized with ``scheme`` and ``embedding``."""
    from xlstm_edge.export.metadata import ManifestError, read_manifest

    try:
        manifest = read_manifest(package)
    except ManifestError:
        return False
    if (manifest.source or {}).get("weights_sha256") != sha:
        return False
    q = manifest.quantization
    if scheme is None:
        return q is None
    return q is not None and q.get("scheme") == scheme and q.get("embedding") == embedding


def build_package(checkpoint: Path, package: Path, fmt: str, sha: str) -> None:
    from xlstm_edge.checkpoint import load_checkpoint
    from xlstm_edge.export.cli import StageLog, parity_bound_text, quiet_exporters
    from xlstm_edge.export.package import STAGES, export_package
    from xlstm_edge.tokenizer import load_tokenizer

    model = load_checkpoint(checkpoint)
    with StageLog(STAGES[fmt]) as log, quiet_exporters():
        result = export_package(model, package, fmt, tokenizer=load_tokenizer(checkpoint, model.config), force=True,
                                source={"checkpoint": str(checkpoint.resolve()), "weights_sha256": sha}, on_stage=log)
    p = result.manifest.parity
    click.echo(f"  parity vs float64: {parity_bound_text(p)}; {result.timings['total']:.0f} s", err=True)


def build_int8(package: Path, out: Path, threads: int) -> None:
    """Quantize the float32 ``package`` into ``out`` (replaced), printing the quality report; raises
    ``click.ClickException`` on a missed quality gate (nothing is written then)."""
    from xlstm_edge.quant.cli import quantize_with_report
    from xlstm_edge.quant.package import QuantizeOptions

    if out.exists():
        shutil.rmtree(out)
    opts = QuantizeOptions(scheme=INT8_SCHEME, embedding=INT8_EMBEDDING, num_threads=threads)
    quantize_with_report(package, out, opts, echo=lambda report: click.echo(report, err=True))


def stream_one(source: Path, backend: str, prompt: str, max_new_tokens: int, seed: int, threads: int) -> str:
    """Stream a sampled continuation of ``prompt`` to stdout; return the stats line."""
    from xlstm_edge.runtime import SamplingConfig, load

    session = load(source, backend=backend, num_threads=threads)
    sampling = SamplingConfig(temperature=0.8, top_p=0.95, repetition_penalty=1.05, seed=seed)
    sys.stdout.write(prompt)
    for piece in session.stream(prompt, max_new_tokens=max_new_tokens, sampling=sampling):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return session.last_stats.summary()


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="Where the packages go (demo-onnx/, demo-executorch/, and their -int8/ copies).")
@click.option("--prompt", default=DEFAULT_PROMPT, show_default=True, help="Prompt to continue.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed (same text on every backend).")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True, help="CPU threads.")
@click.option("--fresh", is_flag=True, help="Re-export even if packages from the same weights exist.")
@click.option("--int8/--no-int8", default=True, show_default=True,
              help=f"Also quantize each package ({INT8_SCHEME}, {INT8_EMBEDDING} embedding) and stream from it.")
def demo_cmd(out: Path, prompt: str, max_new_tokens: int, seed: int, threads: int, fresh: bool, int8: bool) -> None:
    """Export the embedded demo model to ONNX and ExecuTorch, quantize each to int8, then stream from
    every package (and from eager torch).

    \b
    Example:
      xlstm-edge demo --prompt "class Parser:" --max-new-tokens 300
    """
    from xlstm_edge import DEMO_CHECKPOINT
    from xlstm_edge.checkpoint import weights_sha256

    checkpoint = Path(DEMO_CHECKPOINT)
    out.mkdir(parents=True, exist_ok=True)
    sha = weights_sha256(checkpoint)
    t0 = time.perf_counter()
    packages = {}
    for fmt in FORMATS:
        package = out / f"demo-{fmt}"
        packages[fmt] = package
        if not fresh and reusable(package, sha):
            click.echo(f"== {package}: made from these weights already, reusing it (--fresh rebuilds)", err=True)
            continue
        click.echo(f"== export {checkpoint.name} -> {package} ({fmt})", err=True)
        build_package(checkpoint, package, fmt, sha)
    runs = [("torch (eager)", checkpoint, "torch")] + [(FORMATS[f], packages[f], FORMATS[f]) for f in FORMATS]

    for fmt in FORMATS if int8 else ():
        package = out / f"demo-{fmt}-int8"
        runs.append((f"{FORMATS[fmt]} int8", package, FORMATS[fmt]))
        if not fresh and reusable(package, sha, INT8_SCHEME, INT8_EMBEDDING):
            click.echo(f"== {package}: made from these weights already, reusing it (--fresh rebuilds)", err=True)
            continue
        click.echo(f"== quantize {packages[fmt]} -> {package} ({INT8_SCHEME}, {INT8_EMBEDDING} embedding)", err=True)
        build_int8(packages[fmt], package, threads)

    stats = {}
    for label, source, backend in runs:
        click.echo(f"\n== stream from {label}: {source}", err=True)
        stats[label] = stream_one(source, backend, prompt, max_new_tokens, seed, threads)
    click.echo(f"\n== summary (batch 1, {threads} threads)", err=True)
    for label, line in stats.items():
        click.echo(f"  {label:<16} {line}", err=True)
    click.echo(f"done in {time.perf_counter() - t0:.0f} s; try: xlstm-edge generate {packages['onnx']} "
               "--prompt 'import ' --max-new-tokens 100", err=True)
