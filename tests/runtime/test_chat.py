"""``xlstm-edge chat`` (stdin/stdout through click's runner) and chat templates."""

from __future__ import annotations

import json
import re
import signal

import pytest
from click.testing import CliRunner

pytest.importorskip("jinja2")

from xlstm_edge.runtime.chat import chat_cmd  # noqa: E402
from xlstm_edge.runtime.chat_template import ChatTemplate, ChatTemplateError  # noqa: E402

from xlstm_edge import DEMO_CHECKPOINT  # noqa: E402

ARGS = [str(DEMO_CHECKPOINT), "--threads", "1", "--max-tokens", "24", "--temperature", "0"]


def _chat(lines: list[str], *extra) -> object:
    return CliRunner().invoke(chat_cmd, [*ARGS, *[str(a) for a in extra]], input="\n".join(lines) + "\n",
                              catch_exceptions=False)


def _stats(stderr: str) -> list[tuple[int, int, int]]:
    return [tuple(map(int, m)) for m in re.findall(r"\[(\d+) prompt tok, (\d+) resumed from the state, (\d+) new", stderr)]


def test_default_template_renders_and_stops_turns():
    t = ChatTemplate.default()
    text = t.render([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"}])
    assert text == "S\nUser: hi\nAssistant: yo\nUser: q\nAssistant: "
    assert t.stop_strings == ("\nUser:",)
    with pytest.raises(ChatTemplateError, match="role"):
        t.render([{"role": "robot", "content": "x"}])


def test_tokenizer_config_template_is_used(tmp_path):
    src = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
           "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": src}))
    t = ChatTemplate.for_model(tmp_path, {"bos_token": "<bos>", "eos_token": "<eos>"})
    assert t.render([{"role": "user", "content": "hi"}]) == "<bos><|user|>hi<eos><|assistant|>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% raise_exception('no') %}"}))
    with pytest.raises(ChatTemplateError):
        ChatTemplate.for_model(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "{{ raise_exception('system messages are not supported') }}"}))
    with pytest.raises(ChatTemplateError, match="not supported"):
        ChatTemplate.for_model(tmp_path).render([{"role": "user", "content": "x"}])


def test_chat_turns_resume_and_a_saved_chat_continues(tmp_path):
    saved = tmp_path / "talk.safetensors"
    res = _chat(["def parse(text):", "return the value", "/exit"], "--save", saved)
    assert res.exit_code == 0, res.output
    turns = _stats(res.stderr)
    assert len(turns) == 2
    assert turns[1][1] >= turns[0][0]  # turn 2 resumed at least turn 1's prompt from the state
    again = _chat(["and then?"], "--resume", saved)  # ends at end of input
    assert again.exit_code == 0, again.output
    assert "resumed 4 messages" in again.stderr
    (prompt, cached, new), = _stats(again.stderr)
    assert cached > turns[1][0] and new >= 1


def test_ctrl_c_stops_the_reply_not_the_program(monkeypatch):
    from xlstm_edge.runtime import engine as eng

    real, calls = eng._Slot._emit, []

    def emit(self, text):
        calls.append(text)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return real(self, text)

    monkeypatch.setattr(eng._Slot, "_emit", emit)
    res = CliRunner().invoke(chat_cmd, [*ARGS[:-4], "--max-tokens", "400", "--temperature", "0"],
                             input="import os\nimport sys\n", catch_exceptions=False)
    assert res.exit_code == 0, res.output
    turns = _stats(res.stderr)
    assert len(turns) == 2 and "(stopped)" in res.stderr
    assert turns[0][2] < 400


def test_resume_of_a_state_file_without_a_chat_is_one_line(tmp_path):
    from xlstm_edge.runtime import load

    s = load(DEMO_CHECKPOINT, num_threads=1)
    s.prefill([1, 2, 3])
    s.save_state(tmp_path / "plain.safetensors")
    res = CliRunner().invoke(chat_cmd, [*ARGS, "--resume", str(tmp_path / "plain.safetensors")], input="")
    assert res.exit_code == 1 and "not a saved chat" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
