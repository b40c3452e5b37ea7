"""``xlstm-edge generate`` / ``bench`` on the torch backend (a checkpoint directory): output, state files,
one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from xlstm_edge.runtime import load
from xlstm_edge.runtime.cli import bench_cmd, generate_cmd

from tests.runtime.conftest import make_model
from xlstm_edge.checkpoint import save_checkpoint
from xlstm_edge.tokenizer import byte_tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(make_model("tiny", seed=11), tmp_path_factory.mktemp("cli") / "ckpt",
                           tokenizer=byte_tokenizer())


def _run(cmd, args):
    return CliRunner().invoke(cmd, [str(a) for a in args], catch_exceptions=False)


def test_generate_streams_the_session_text(ckpt, tmp_path):
    res = _run(generate_cmd, [ckpt, "--prompt", "Hello", "-n", "12", "--threads", "1",
                              "--state-out", tmp_path / "s.safetensors"])
    assert res.exit_code == 0, res.output
    sess = load(ckpt, num_threads=1)
    want = sess.generate("Hello", max_new_tokens=12)
    assert res.stdout == want + "\n"
    assert "tok/s" in res.stderr and "[torch]" in res.stderr
    # resume from the saved state: same as continuing the session
    res2 = _run(generate_cmd, [ckpt, "-n", "8", "--threads", "1", "--state-in", tmp_path / "s.safetensors",
                               "--temperature", "0.7", "--top-k", "20", "--seed", "5"])
    assert res2.exit_code == 0, res2.output
    from xlstm_edge.runtime import SamplingConfig

    assert res2.stdout == sess.generate("", 8, SamplingConfig(temperature=0.7, top_k=20, seed=5)) + "\n"


@pytest.mark.parametrize("args,words", [
    (["--prompt", "x", "--backend", "tvm"], ["unknown backend 'tvm'"]),
    (["--prompt", "x", "-n", "0"], ["max_new_tokens"]),
    (["--prompt", ""], ["prompt is empty"]),
    (["--prompt", "x", "--top-p", "2"], ["top_p"]),
    (["--prompt", "x", "--backend", "onnxruntime"], ["is a checkpoint"]),
])
def test_generate_bad_input_is_one_line(ckpt, args, words):
    res = _run(generate_cmd, [ckpt, "--threads", "1", *args])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for w in words:
        assert w in lines[0]


def test_generate_state_from_another_model(ckpt, tmp_path):
    other = load(make_model("tiny-ms", seed=1), num_threads=1)
    other.prefill([1, 2])
    other.save_state(tmp_path / "o.safetensors")
    res = _run(generate_cmd, [ckpt, "-p", "x", "--threads", "1", "--state-in", tmp_path / "o.safetensors"])
    assert res.exit_code == 1 and "another model" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_bench_writes_figures_and_plot(ckpt, tmp_path):
    res = _run(bench_cmd, [ckpt, "--threads", "1", "--prompt-tokens", "32", "--decode-tokens", "8",
                           "--contexts", "16,64,128", "--steps-per-point", "4", "--repeats", "1",
                           "--png", tmp_path / "b.png", "--json", tmp_path / "b.json"])
    assert res.exit_code == 0, res.output
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["prefill_tok_s"] > 0 and figures["decode_tok_s"] > 0 and figures["first_token_ms"] > 0
    assert figures["peak_rss_mb"] > 0 and figures["state_bytes"] == load(ckpt).layout.bytes_per_row
    assert [p["context"] for p in figures["points"]] == [16, 64, 128]
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "time to first token" in res.stdout
    bad = _run(bench_cmd, [ckpt, "--contexts", "64,16", "--png", tmp_path / "c.png"])
    assert bad.exit_code == 1 and "contexts" in bad.stderr
