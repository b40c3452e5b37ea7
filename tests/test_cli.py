"""The xlstm-edge CLI: init + info on the tiny presets, help texts, errors as one line, plug-in commands."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from xlstm_edge import cli
from xlstm_edge.checkpoint import load_checkpoint
from xlstm_edge.config import xLSTMConfig
from xlstm_edge.state import state_bytes
from xlstm_edge.tokenizer import load_tokenizer

SCRIPT = Path(sys.executable).with_name("xlstm-edge")  # the installed console script of this venv


def run(*args: str):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert result.stdout == "" and result.stderr == result.output  # on stderr only
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("preset", ["tiny", "tiny-ms"])
def test_init_then_info(tmp_path: Path, preset: str) -> None:
    out = tmp_path / preset
    result = run("init", "--preset", preset, "--seed", "3", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    model = load_checkpoint(out)
    config = xLSTMConfig.from_preset(preset)
    assert model.config.block_types() == config.block_types()
    tok = load_tokenizer(out, model.config)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (256, 257, 258)

    table = run("info", out)
    assert table.exit_code == 0, table.output
    assert f"{model.num_params():,}" in table.output and "state / sequence" in table.output
    assert "vocab_size" in table.output and "bos 256, eos 257, pad 258" in table.output
    info = json.loads(run("info", "--json", out).output)
    assert info["num_params"] == model.num_params()
    assert info["weight_bytes"]["float32"] == 4 * model.num_params()
    assert info["checkpoint"]["bytes_by_dtype"] == {"float32": 4 * model.num_params()}
    assert info["state_bytes_per_sequence"] == state_bytes(config) > 0
    assert info["tokenizer"]["vocab_size"] == 259
    assert info["config"]["slstm_at"] == config.slstm_at
    assert info["blocks"]["map"] == "".join(config.block_types())


def test_init_is_seeded_and_refuses_to_overwrite(tmp_path: Path) -> None:
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        assert run("init", "--seed", seed, tmp_path / name).exit_code == 0
    a, b, c = (load_checkpoint(tmp_path / n).state_dict() for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
    assert_one_line_error(run("init", tmp_path / "a"), "already exists", "--force")
    assert run("init", "--seed", 6, "--force", tmp_path / "a").exit_code == 0
    assert torch.equal(load_checkpoint(tmp_path / "a").state_dict()["lm_head.weight"], c["lm_head.weight"])


def test_info_preset_without_building() -> None:
    result = run("info", "--preset", "7b", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert 6.5e9 < info["num_params"] < 7.5e9
    assert info["weight_bytes"]["bfloat16"] == 2 * info["num_params"]
    assert info["state_bytes_per_sequence"] == state_bytes(xLSTMConfig.from_preset("7b"))
    assert "checkpoint" not in info
    assert run("info", "--preset", "tiny").exit_code == 0


def test_init_refuses_a_model_too_big_for_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=2 * 1024**3))
    assert_one_line_error(run("init", "--preset", "7b", tmp_path / "big"), "preset 7b needs", "info --preset 7b")
    assert not (tmp_path / "big").exists()


def test_help_texts_have_examples() -> None:
    top = run("--help")
    assert top.exit_code == 0 and "init" in top.output and "info" in top.output
    for args in ([], ["init"], ["info"]):
        result = run(*args, "--help")
        assert result.exit_code == 0 and "Example" in result.output, result.output


def test_bad_usage(tmp_path: Path) -> None:
    bad = run("init", "--preset", "huge", tmp_path / "x")
    assert bad.exit_code == 2 and "'huge' is not one of" in bad.output
    assert run("info").exit_code == 2  # neither a checkpoint nor --preset
    assert run("info", tmp_path, "--preset", "tiny").exit_code == 2  # both


def test_checkpoint_and_tokenizer_errors_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run("info", tmp_path / "missing"), "not found", "missing")
    out = tmp_path / "m"
    assert run("init", out).exit_code == 0
    (out / "tokenizer.json").write_text("{not json")
    assert_one_line_error(run("info", out), "tokenizer.json")
    (out / "model.safetensors").write_bytes(b"\x00" * 16)
    assert_one_line_error(run("info", out), "model.safetensors")


# ---- plug-in commands ------------------------------------------------------------------------------
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, attr: str = "hello_cmd") -> str:
    """Write a module under a fresh name, make it importable and list it in COMMANDS; returns its spec."""
    name = f"xe_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = f"{name}:{attr}"
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, spec])
    return spec


def test_plugin_command_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin(tmp_path, monkeypatch, (
        "import click\n\n"
        "@click.command()\n"
        "@click.argument('who')\n"
        "def hello_cmd(who):\n"
        "    '''Say hello.'''\n"
        "    click.echo(f'hello {who}')\n"
    ))
    assert "Say hello." in run("--help").output
    result = run("hello", "edge")
    assert result.exit_code == 0 and result.output == "hello edge\n"


def test_missing_plugin_module_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, "xe_plugin_not_written_yet.cli:later_cmd"])
    assert cli.load_command("xe_plugin_not_written_yet.cli:later_cmd") is None
    top = run("--help")
    assert top.exit_code == 0 and "later" not in top.output
    result = run("later")
    assert result.exit_code == 2 and "not available yet" in result.output


@pytest.mark.parametrize("source, error", [
    ("import xe_dependency_that_does_not_exist\n", ModuleNotFoundError),  # exists, a dependency is missing
    ("raise RuntimeError('broken plug-in')\n", RuntimeError),
    ("hello_cmd = 'not a command'\n", TypeError),
    ("import click\n\n@click.command('other')\ndef hello_cmd():\n    pass\n", ValueError),
])
def test_broken_plugin_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, error) -> None:
    spec = plugin(tmp_path, monkeypatch, source)
    with pytest.raises(error):
        cli.load_command(spec)
    result = run("--help")
    assert isinstance(result.exception, error)  # not swallowed


# ---- the installed console script -------------------------------------------------------------------
def test_installed_script(tmp_path: Path) -> None:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: pip install -e . declares the xlstm-edge script"
    out = tmp_path / "tiny"
    done = subprocess.run([str(SCRIPT), "init", "--preset", "tiny", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{load_checkpoint(out).num_params():,} parameters" in done.stdout
    assert (out / "model.safetensors").is_file()
