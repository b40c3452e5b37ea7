"""State files that resume exactly (the sampler's draws included), keyword sampling, explicit continuation,
and the one-line errors of `generate` that a new user met (issue 15, items 6, 8, 9)."""

from __future__ import annotations

import signal

import pytest
from click.testing import CliRunner
from xlstm_edge.runtime import GenerationArgumentError, InvalidTextError, load
from xlstm_edge.runtime.cli import generate_cmd

from tests.runtime.conftest import random_ids
from xlstm_edge import DEMO_CHECKPOINT


@pytest.fixture(scope="module")
def sess(model_ms):
    return load(model_ms, num_threads=1)


def _run(args):
    return CliRunner().invoke(generate_cmd, [str(a) for a in args], catch_exceptions=False)


def test_sampled_run_resumed_from_a_file_continues_the_uninterrupted_run(sess, model_ms, seed, tmp_path):
    prompt = random_ids(12)
    kw = dict(temperature=1.0, top_k=50, seed=seed)
    whole = sess.generate_ids(prompt, 24, continue_conversation=False, **kw)[0]
    first = sess.generate_ids(prompt, 10, continue_conversation=False, **kw)[0]
    sess.save_state(tmp_path / "s.safetensors")
    other = load(model_ms, num_threads=1)
    other.load_state(tmp_path / "s.safetensors")
    rest = other.generate_ids([], 14, **kw)[0]
    assert first + rest == whole, seed
    # in the same session too; another seed draws afresh
    sess.generate_ids(prompt, 10, continue_conversation=False, **kw)
    assert sess.generate_ids([], 14, **kw)[0] == rest
    other.load_state(tmp_path / "s.safetensors")
    assert other.generate_ids([], 14, temperature=1.0, top_k=50, seed=seed + 1)[0] != rest


def test_keyword_sampling_and_explicit_continuation(sess):
    prompt = bytes(random_ids(8)).decode("latin-1")
    a = sess.generate(prompt, max_new_tokens=12, temperature=0.7, seed=3, continue_conversation=False)
    b = sess.generate(prompt, max_new_tokens=12, temperature=0.7, seed=3, continue_conversation=False)
    assert a == b and sess.last_stats.new_tokens <= 12
    n = int(sess.num_tokens[0])
    sess.generate("x", max_new_tokens=4)  # continues (the default)
    assert int(sess.num_tokens[0]) > n
    sess.generate("x", max_new_tokens=4, continue_conversation=False)
    assert int(sess.num_tokens[0]) <= 1 + 4
    with pytest.raises(GenerationArgumentError, match="not both"):
        from xlstm_edge.runtime import SamplingConfig

        sess.generate("x", 4, SamplingConfig(), temperature=0.5)
    with pytest.raises(GenerationArgumentError, match="unknown argument"):
        sess.generate("x", 4, temprature=0.5)
    with pytest.raises(InvalidTextError, match="not valid UTF-8"):
        sess.generate("ab\udcff", 4)


def test_cli_resume_with_the_same_seed_equals_one_run(tmp_path):
    base = [DEMO_CHECKPOINT, "--threads", "1", "--temperature", "0.8", "--seed", "11"]
    whole = _run([*base, "-p", "import os\n", "-n", "40"])
    assert whole.exit_code == 0, whole.output
    a = _run([*base, "-p", "import os\n", "-n", "15", "--state-out", tmp_path / "s.safetensors"])
    b = _run([*base, "-n", "25", "--state-in", tmp_path / "s.safetensors"])
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    assert a.stdout[:-1] + b.stdout == whole.stdout


def test_cli_stop_string_then_resume(tmp_path):
    out = tmp_path / "s.safetensors"
    a = _run([DEMO_CHECKPOINT, "--threads", "1", "-p", "def f(x):\n", "-n", "60", "--stop", "\n",
              "--state-out", out])
    assert a.exit_code == 0 and "\n" not in a.stdout[:-1]
    if "stop_string" in a.stderr:
        assert "the state holds it" in a.stderr
    b = _run([DEMO_CHECKPOINT, "--threads", "1", "-n", "8", "--state-in", out])
    assert b.exit_code == 0, b.output


def test_cli_ctrl_c_stops_the_reply_and_still_saves_the_state(tmp_path, monkeypatch):
    from xlstm_edge.runtime import generate as gen

    real_push, calls = gen.StopStringFilter.push, []

    def push(self, piece):  # the user presses Ctrl-C after the 5th token
        calls.append(piece)
        if len(calls) == 5:
            signal.raise_signal(signal.SIGINT)
        return real_push(self, piece)

    monkeypatch.setattr(gen.StopStringFilter, "push", push)
    out = tmp_path / "s.safetensors"
    res = _run([DEMO_CHECKPOINT, "--threads", "1", "-p", "import", "-n", "50", "--state-out", out])
    assert res.exit_code == 130 and "interrupted; state saved" in res.stderr
    s = load(DEMO_CHECKPOINT, num_threads=1)
    s.load_state(out)
    assert int(s.num_tokens[0]) + 1 == len("import") + 5  # the 5th token is pending


@pytest.mark.parametrize("args,words", [
    (["-p", "x", "--seed", "18446744073709551616"], ["seed must be an int in 0..2**64-1"]),
    (["-p", "x", "--state-out", "{tmp}"], ["is a directory"]),
    (["-p", "x", "--state-in", "{tmp}"], ["is a directory"]),
    (["-p", "ab\udcffcd"], ["not valid UTF-8", "0xff"]),
])
def test_cli_crashes_a_new_user_met_are_one_line(tmp_path, args, words):
    args = [str(tmp_path) if a == "{tmp}" else a for a in args]
    res = _run([DEMO_CHECKPOINT, "--threads", "1", "-n", "4", *args])
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert res.stdout == ""
