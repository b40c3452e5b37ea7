"""Export at scale: peak RSS and wall per stage for model shapes up to xLSTM 7B, against the pipeline's bound.

For each shape a random bfloat16 checkpoint in the Hugging Face layout (sharded, written block by
block: ``xlstm-edge init`` / ``write_random_checkpoint``), then each requested export as its own
process under ``/usr/bin/time -v`` (its peak RSS is the kernel's, not sampled), the stage lines it
prints (seconds and sampled peak RSS per stage), the package's bytes, and the bound of the "xLSTM 7B
end to end" issue: peak RSS <= 1.5 x package bytes + 2 GiB. With ``--bench``, each package is streamed
too (``xlstm-edge bench``: prefill tok/s, time to first token, decode tok/s, peak RSS).

    python bench/scale.py --shapes small,1.4b --exports onnx:int8-dynamic,executorch:int4-dynamic
    python bench/scale.py --shapes 7b --exports onnx:int4-dynamic --work /data/scale --bench

Prints a markdown table (and writes it with --out). Benchmarks are not tests: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xlstm_edge.checkpoint import write_random_checkpoint  # noqa: E402
from xlstm_edge.cli import _num_params  # noqa: E402
from xlstm_edge.config import BYTE_SPECIALS, xLSTMConfig  # noqa: E402
from xlstm_edge.tokenizer import byte_tokenizer  # noqa: E402

GIB = 2**30
# the 1.4 B shape (it ran out of memory before this pipeline), and the presets
SHAPES = {
    "small": dict(preset="small"),
    "1.4b": dict(preset="7b", hidden_size=2048, num_hidden_layers=24, num_heads=4),
    "7b": dict(preset="7b"),
}
# quantized pipeline: "[  149 s] stage ... (previous stage: peak RSS 1.23 GiB; now 0.98 GiB)"
STAGE = re.compile(r"^\[\s*(\d+) s\] (.+?)(?: \.\.\.)?"
                   r"(?: \(previous stage: peak RSS ([\d.]+) GiB(?:; now ([\d.]+) GiB)?\))?$")
FLOAT_STAGE = re.compile(r"\(([^()]+): ([\d.]+) s, peak RSS ([\d.]+) GiB\)")  # float export: "(stage: 1.2 s, peak RSS 0.9 GiB)"


def config_for(shape: str) -> xLSTMConfig:
    spec = dict(SHAPES[shape])
    config = xLSTMConfig.from_preset(spec.pop("preset"), **spec)
    if config.vocab_size != BYTE_SPECIALS["vocab_size"]:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(config, key, BYTE_SPECIALS[key])
    return config


def checkpoint(work: Path, shape: str) -> Path:
    path = work / f"{shape}-bf16"
    if not (path / "config.json").is_file():
        t0 = time.perf_counter()
        # norm weights jittered as in a trained model: with all-ones norms the int8 embedding's rows meet
        # exact rounding ties and the tight parity check refuses the (correct) graphs (quant.probe)
        write_random_checkpoint(config_for(shape), path, dtype=torch.bfloat16, tokenizer=byte_tokenizer(),
                                overwrite=True, progress=True, norm_jitter=0.05)
        print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_export(ckpt: Path, out: Path, fmt: str, scheme: str | None, eval_tokens: int) -> dict:
    exe = Path(sys.executable).with_name("xlstm-edge")
    cmd = ["/usr/bin/time", "-v", str(exe), "export", str(ckpt), str(out), "--format", fmt, "--force"]
    if scheme:
        # random weights: speed only (the quality report is computed, its gate not applied)
        cmd += ["--quantize", scheme, "--embedding", "int8", "--allow-quality-loss", "--eval-tokens", str(eval_tokens)]
    t0 = time.perf_counter()
    log = out.with_suffix(".log")  # the export's whole stderr (its stage lines, a traceback), kept beside it
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=fh, text=True)
    wall = time.perf_counter() - t0
    err = log.read_text()
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    stages: list[str] = []
    last = None
    for line in err.splitlines():
        m = STAGE.match(line)
        if m:
            if last is not None:  # the stage's time / its peak (the resident set it started from)
                start = f" (from {last[2]})" if last[2] else ""
                stages.append(f"{last[1]} {int(m[1]) - last[0]} s / {m[3] or '?'} GiB{start}")
            last = (int(m[1]), m[2], m[4])
        for name, secs, gib in FLOAT_STAGE.findall(line):
            stages.append(f"{name} {float(secs):.0f} s / {float(gib):.1f} GiB")
    if last is not None and last[1] != "done":
        stages.append(f"{last[1]} {wall - last[0]:.0f} s")
    # the export's own last line (before /usr/bin/time's report): "Error: ..." or a traceback's exception
    own = [ln for ln in err.split("\tCommand being timed")[0].splitlines() if ln.strip()]
    error = f"{own[-1] if own else 'no output'} (whole log: {log})" if proc.returncode else ""
    return {"ok": proc.returncode == 0, "wall_s": wall, "peak_rss": int(peak[1]) * 1024 if peak else None,
            "package_bytes": dir_bytes(out) if out.is_dir() else None, "stages": stages, "error": error}


def run_bench(package: Path) -> dict | None:
    exe = Path(sys.executable).with_name("xlstm-edge")
    figures = package.with_suffix(".bench.json")
    proc = subprocess.run([str(exe), "bench", str(package), "--prompt-tokens", "512", "--contexts", "16,2048",
                           "--json", str(figures), "--png", str(package.with_suffix(".png"))],
                          capture_output=True, text=True)
    return json.loads(figures.read_text()) if proc.returncode == 0 else {"error": proc.stderr.strip()[-300:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="small,1.4b", help=f"comma-separated: {', '.join(SHAPES)}")
    ap.add_argument("--exports", default="onnx:int8-dynamic,onnx:int4-dynamic,executorch:int4-dynamic",
                    help="comma-separated FORMAT:SCHEME (SCHEME 'float32' for no quantization)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/xlstm-scale"))
    ap.add_argument("--bench", action="store_true", help="also stream each package (xlstm-edge bench)")
    ap.add_argument("--keep", action="store_true", help="keep the packages")
    ap.add_argument("--eval-tokens", type=int, default=2048,
                    help="quality report's held-out tokens (export --eval-tokens; 2048 takes hours at 7B on 2 cores)")
    ap.add_argument("--out", type=Path, help="write the markdown table here too")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = ["| shape | params | export | wall | peak RSS | package | bound (1.5 x pkg + 2 GiB) | within | stages |",
            "|---|---|---|---|---|---|---|---|---|"]
    for shape in args.shapes.split(","):
        ckpt = checkpoint(args.work, shape)
        params = _num_params(config_for(shape))
        for spec in args.exports.split(","):
            fmt, scheme = spec.split(":")
            out = args.work / f"{shape}-{fmt}-{scheme}"
            r = run_export(ckpt, out, fmt, None if scheme == "float32" else scheme, args.eval_tokens)
            pkg = r["package_bytes"]
            bound = 1.5 * pkg + 2 * GIB if pkg else None
            within = "error: " + r["error"] if not r["ok"] else ("yes" if r["peak_rss"] <= bound else "NO")
            rows.append(f"| {shape} | {params / 1e9:.2f} B | {fmt} {scheme} | {r['wall_s'] / 60:.1f} min | "
                        f"{r['peak_rss'] / GIB:.2f} GiB | {(pkg or 0) / GIB:.2f} GiB | "
                        f"{(bound or 0) / GIB:.2f} GiB | {within} | {'; '.join(r['stages'])} |")
            print(rows[-1], flush=True)
            if args.bench and r["ok"]:
                b = run_bench(out)
                print(f"  bench {out.name}: {json.dumps(b)[:600]}", flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    table = "\n".join(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
