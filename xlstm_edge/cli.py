"""The ``xlstm-edge`` command line: a thin click group; each command's work lives in its own module.

Built-in commands: ``init`` (a random model from a preset) and ``info`` (sizes of a checkpoint or preset).
The others are plugged in from ``COMMANDS`` ("module:attr" strings), imported only when used, so this file
does not change when a part of the project adds its command. A listed module that does not exist yet is
left out; one that exists but fails to import raises (no silent fallback).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import BYTE_SPECIALS, PRESETS

# commands owned by other parts of the project; the command name is the attr without "_cmd"
COMMANDS: list[str] = [
    "xlstm_edge.export.cli:export_cmd",
    "xlstm_edge.quant.cli:quantize_cmd",
    "xlstm_edge.runtime.cli:generate_cmd",
    "xlstm_edge.runtime.cli:bench_cmd",
    "xlstm_edge.runtime.serve:serve_cmd",
    "xlstm_edge.runtime.chat:chat_cmd",
    "xlstm_edge.train:train_cmd",
    "xlstm_edge.demo:demo_cmd",
]
# optional dependencies a command may lack in a smaller install -> the extra that brings each
OPTIONAL_DEPENDENCIES: dict[str, str] = {"torch": "torch", "onnx": "onnx", "onnxscript": "onnx",
                                         "executorch": "executorch", "fastapi": "serve", "uvicorn": "serve",
                                         "onnxruntime": "runtime"}
# errors that mean "bad input" (a one-line message, exit status 1, no traceback) rather than a bug;
# looked up among the modules already imported, since an error of a module never imported cannot occur
USER_ERRORS: list[str] = [
    "xlstm_edge.checkpoint:CheckpointError",
    "xlstm_edge.tokenizer:TokenizerError",
    "xlstm_edge.runtime.errors:RuntimeInputError",
    "xlstm_edge.export.metadata:ManifestError",
    "xlstm_edge.export.package:ExportError",
    "xlstm_edge.quant.handler:QuantizationError",
]
# third-party loggers that warn about things a user cannot act on (torchao's optional CUDA extensions on a
# CPU machine, torch's pytree deprecation notes, the ONNX exporter's missing torchvision ops)
QUIET_LOGGERS: list[str] = ["torchao", "torch.utils._pytree", "torch.onnx._internal.exporter._registration"]


# ---- plug-in commands ----------------------------------------------------------------------------
def command_name(spec: str) -> str:
    """``"pkg.mod:export_cmd"`` -> ``"export"`` (click's own naming of a ``*_cmd`` function)."""
    attr = spec.partition(":")[2]
    return attr.removesuffix("_cmd").replace("_", "-")


def load_command(spec: str) -> click.Command | None:
    """Import the command named by ``spec`` ("module:attr"); None if that module does not exist (yet).

    Any other import failure (including a missing dependency of an existing module) propagates.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"bad command spec {spec!r}: expected 'module:attr'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # only the module itself (or its not-yet-written parent package) being absent means "not there yet"
        if e.name is not None and (e.name == module_name or module_name.startswith(e.name + ".")):
            return None
        raise
    if not hasattr(module, attr):
        raise AttributeError(f"{module_name} has no attribute {attr!r} (listed in xlstm_edge.cli.COMMANDS)")
    command = getattr(module, attr)
    if not isinstance(command, click.Command):
        raise TypeError(f"{spec} is a {type(command).__name__}, not a click command")
    if command.name != command_name(spec):
        raise ValueError(f"{spec} is named {command.name!r}; COMMANDS expects {command_name(spec)!r}")
    return command


def _module_exists(name: str) -> bool:
    """Whether module ``name`` exists, without running it (its optional dependencies may be missing)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package that does not exist (yet)
        return False


def _user_error_types() -> tuple[type[BaseException], ...]:
    types = []
    for spec in USER_ERRORS:
        module_name, _, attr = spec.partition(":")
        module = sys.modules.get(module_name)
        if module is not None and isinstance(getattr(module, attr, None), type):
            types.append(getattr(module, attr))
    return tuple(types)


class LazyGroup(click.Group):
    """A group whose commands beyond the built-in ones come from ``COMMANDS``, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(command_name(spec) for spec in COMMANDS if _module_exists(spec.partition(":")[0]))
        return sorted(names)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """``--help``: commands whose optional dependency is missing (torch in a runtime-only install)
        are listed with the extra that brings it, not raised."""
        rows = []
        for name in self.list_commands(ctx):
            try:
                cmd = self.get_command(ctx, name)
            except click.UsageError as e:
                rows.append((name, e.message))
                continue
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        for spec in COMMANDS:
            if command_name(spec) == cmd_name:
                try:
                    command = load_command(spec)
                except ModuleNotFoundError as e:
                    extra = OPTIONAL_DEPENDENCIES.get((e.name or "").split(".")[0])
                    if extra is None:
                        raise
                    raise click.UsageError(f"command {cmd_name!r} needs {e.name}, which is not installed: "
                                           f"pip install 'xlstm-edge[{extra}]'") from None
                if command is None:
                    module = spec.partition(":")[0]
                    raise click.UsageError(f"command {cmd_name!r} is not available yet: {module} does not exist")
                return command
        return None

    def invoke(self, ctx: click.Context) -> Any:
        from .publish import handle_sigterm

        handle_sigterm()  # SIGTERM removes staging directories and exits (143)
        try:
            return super().invoke(ctx)
        except MemoryError:
            import psutil

            avail = psutil.virtual_memory().available / 2**30
            raise click.ClickException(
                f"out of memory ({avail:.1f} GiB available now): nothing was written; try a smaller scheme "
                "(int4-dynamic), fewer --prefill-tokens, or a machine with more memory"
            ) from None
        except ValueError as e:  # every user error class is a ValueError
            if isinstance(e, _user_error_types()):
                raise click.ClickException(str(e)) from e
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xlstm-edge")
def main() -> None:
    """xLSTM language models from checkpoint to on-device streaming.

    \b
    Examples:
      xlstm-edge init --preset tiny models/tiny
      xlstm-edge info models/tiny
      xlstm-edge info --preset 7b --json
    """
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


# ---- shared helpers ------------------------------------------------------------------------------
def _config_for_preset(name: str):
    """The preset's config; presets with a BPE-sized vocab get the byte tokenizer's special ids."""
    from .config import xLSTMConfig
    from .tokenizer import byte_tokenizer

    config = xLSTMConfig.from_preset(name)
    byte_vocab = byte_tokenizer().vocab_size
    if config.vocab_size < byte_vocab:
        raise click.ClickException(f"preset {name} has vocab {config.vocab_size} < {byte_vocab} byte-level ids")
    if config.vocab_size != BYTE_SPECIALS["vocab_size"]:
        # e.g. small/7b: 50304 ids sized for GPT-NeoX BPE; with the byte tokenizer only ids 0..258 occur
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(config, key, BYTE_SPECIALS[key])
    return config


def _num_params(config) -> int:
    """Parameters of the model for ``config``, counted on the meta device (no memory, no init)."""
    import torch

    from .model import xLSTMForCausalLM

    with torch.device("meta"):
        return xLSTMForCausalLM(config).num_params()


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ---- init ----------------------------------------------------------------------------------------
@main.command("init")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True,
              help="Model shape (see `xlstm-edge info --preset NAME`).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="Dtype of the stored weights (bfloat16: as xLSTM 7B is published).")
@click.option("--shard-size", type=click.IntRange(1), default=1024, show_default=True,
              help="MiB per safetensors shard (more than one shard: model.safetensors.index.json).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def init_cmd(out: Path, preset: str, seed: int, dtype: str, shard_size: int, force: bool) -> None:
    """Write a random model from a preset to OUT.

    OUT (a new checkpoint directory) gets config.json, model.safetensors (Hugging Face xLSTM layout) and the byte-level
    tokenizer.json. The presets small and 7b have a 50304-id vocab made for a BPE tokenizer;
    they get the byte-level one too (ids 0..258 only) until a real tokenizer.json replaces it.
    The model is written block by block, never whole in memory: the 7b preset in bfloat16 (13.7 GB
    on disk) takes about 2 GB of memory.

    \b
    Examples:
      xlstm-edge init --preset tiny-ms --seed 1 models/tiny-ms
      xlstm-edge init --preset 7b --dtype bfloat16 models/7b-random
    """
    import psutil
    import torch

    from .checkpoint import write_random_checkpoint
    from .tokenizer import byte_tokenizer

    config = _config_for_preset(preset)
    params = _num_params(config)
    block = max(params - 2 * config.vocab_size * config.hidden_size, 0) // config.num_hidden_layers
    need = 4 * (block + config.vocab_size * config.hidden_size) + 2 * shard_size * 2**20
    available = psutil.virtual_memory().available
    if need > available:
        raise click.ClickException(
            f"preset {preset} needs about {_human_bytes(need)} of memory to write block by block, "
            f"this machine has {_human_bytes(available)} available; "
            f"`xlstm-edge info --preset {preset}` shows its sizes without building it"
        )
    if out.exists() and not force:
        raise click.ClickException(f"{out} already exists; pass --force to replace it")
    if config.vocab_size != BYTE_SPECIALS["vocab_size"]:
        click.echo(f"note: preset {preset} has a {config.vocab_size}-id vocab; the byte-level tokenizer uses "
                   "ids 0..258 of it (bos 256, eos 257, pad 258)", err=True)
    write_random_checkpoint(config, out, dtype=getattr(torch, dtype), seed=seed, tokenizer=byte_tokenizer(),
                            max_shard_bytes=shard_size * 2**20, overwrite=force, progress=True)
    width = 2 if dtype == "bfloat16" else 4
    click.echo(f"wrote {out}: preset {preset}, seed {seed}, {params:,} parameters "
               f"({_human_bytes(width * params)} {dtype}), byte-level tokenizer")


# ---- info ----------------------------------------------------------------------------------------
def describe(ckpt: Path | None, preset: str | None) -> dict[str, Any]:
    """Everything ``info`` shows, as a JSON-ready dict (sizes in bytes)."""
    from .checkpoint import checkpoint_info
    from .config import xLSTMConfig
    from .state import state_bytes
    from .tokenizer import load_tokenizer

    out: dict[str, Any] = {}
    if ckpt is not None:
        stored = checkpoint_info(ckpt)
        config = xLSTMConfig.from_dict(stored["config"])
        params = stored["num_params"]
        tok = load_tokenizer(ckpt if Path(ckpt).is_dir() else Path(ckpt).parent, config)
        out["source"] = str(ckpt)
        out["checkpoint"] = {k: stored[k] for k in ("layout", "weight_mode", "files", "bytes_by_dtype",
                                                    "total_bytes")}
        out["tokenizer"] = {
            "kind": type(tok.backend.model).__name__ + (" (ByteLevel)" if tok.byte_level else ""),
            "vocab_size": tok.vocab_size,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
        }
    else:
        assert preset is not None
        config = _config_for_preset(preset)
        params = _num_params(config)
        out["source"] = f"preset {preset}"
    kinds = config.block_types()
    out["num_params"] = params
    # weights at each dtype (int8: weights only; per-channel scales and float32 gates come on top)
    out["weight_bytes"] = {"float32": 4 * params, "bfloat16": 2 * params, "int8": params}
    out["state_bytes_per_sequence"] = state_bytes(config, 1)
    out["blocks"] = {"map": "".join(kinds), "mlstm": kinds.count("m"), "slstm": kinds.count("s")}
    out["config"] = config.to_dict()
    return out


def format_info(d: dict[str, Any]) -> str:
    """``describe``'s dict as a two-column table, then the config."""
    b = d["blocks"]
    rows: list[tuple[str, str]] = [
        ("source", d["source"]),
        ("blocks", f"{b['mlstm'] + b['slstm']} ({b['mlstm']} mLSTM, {b['slstm']} sLSTM: {b['map']})"),
        ("parameters", f"{d['num_params']:,}"),
    ]
    rows += [(f"weights {dtype}", _human_bytes(n)) for dtype, n in d["weight_bytes"].items()]
    rows.append(("state / sequence", f"{_human_bytes(d['state_bytes_per_sequence'])} float32 "
                                     f"({d['state_bytes_per_sequence']:,} B), same at any context length"))
    if "checkpoint" in d:
        c = d["checkpoint"]
        stored = ", ".join(f"{k} {_human_bytes(v)}" for k, v in c["bytes_by_dtype"].items())
        rows.append(("stored", f"{stored} in {', '.join(c['files'])} ({c['layout']} layout, {c['weight_mode']})"))
        t = d["tokenizer"]
        rows.append(("tokenizer", f"{t['kind']}, {t['vocab_size']} ids (bos {t['bos_token_id']}, "
                                  f"eos {t['eos_token_id']}, pad {t['pad_token_id']})"))
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"{k:<{width}}{v}" for k, v in rows]
    lines += ["", "config"]
    cwidth = max(len(k) for k in d["config"]) + 2
    lines += [f"  {k:<{cwidth}}{v}" for k, v in d["config"].items()]
    return "\n".join(lines)


@main.command("info")
@click.argument("ckpt", required=False, type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(list(PRESETS)), help="Describe a preset instead of a checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info_cmd(ckpt: Path | None, preset: str | None, as_json: bool) -> None:
    """Sizes and config of a checkpoint or a preset.

    Shows parameters, weight bytes per dtype, the recurrent state's bytes per sequence and the
    config of the checkpoint CKPT (a directory or .safetensors file) or of --preset NAME. Reads only the checkpoint's headers, so it is quick even for a 7B model.

    \b
    Examples:
      xlstm-edge info models/tiny
      xlstm-edge info --preset 7b --json
    """
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if (ckpt is None) == (preset is None):
        raise click.UsageError("give either a checkpoint path or --preset NAME")
    d = describe(ckpt, preset)
    click.echo(json.dumps(d, indent=2) if as_json else format_info(d))


if __name__ == "__main__":
    main()
