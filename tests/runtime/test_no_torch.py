"""Streaming an ONNX package needs onnxruntime, numpy and tokenizers only: generate, the CLI, state files
and the serving engine run in a subprocess where ``import torch`` (and ``onnx``, ``executorch``) fails.

The block is a ``sitecustomize`` on PYTHONPATH that puts a meta-path finder before every other one, so
the modules cannot be imported even though they are installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKED = ("torch", "onnx", "onnxscript", "executorch", "torchao", "transformers", "triton")

SITECUSTOMIZE = f"""
import sys

class _Block:
    BLOCKED = {BLOCKED!r}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the no-torch test)", name=name)
        return None

sys.meta_path.insert(0, _Block())
"""

SCRIPT = """
import json, sys
import numpy as np
import xlstm_edge.runtime as rt
from xlstm_edge.runtime.engine import DoneEvent, Engine, GenerationRequest, TextEvent
from xlstm_edge.runtime.state_cache import StateCache

pkg, out_dir = sys.argv[1], sys.argv[2]
sess = rt.load(pkg, num_threads=1)
greedy = sess.generate("Hello", max_new_tokens=12, continue_conversation=False)
logits = sess.logits if sess.logits is not None else sess.next_logits()
sampled = sess.generate("Once", max_new_tokens=10, temperature=0.8, top_p=0.9, seed=7,
                        continue_conversation=False)
sess.save_state(out_dir + "/s.safetensors")
more = sess.generate("", max_new_tokens=6, temperature=0.8, top_p=0.9, seed=7)
sess.load_state(out_dir + "/s.safetensors")
again = sess.generate("", max_new_tokens=6, temperature=0.8, top_p=0.9, seed=7)

events = []
engine = Engine(sess, StateCache(None, sess.layout, 2**26), max_batch=4).start()
done = []
import threading
finished = threading.Event()
def emit(ev):
    events.append(ev)
    if isinstance(ev, DoneEvent):
        done.append(ev)
        if len(done) == 2:
            finished.set()
for prompt in ("ab", "cde"):
    engine.submit(GenerationRequest(sess.encode(prompt), 5, rt.SamplingConfig(), emit))
finished.wait(60)
engine.close(10)
print(json.dumps({
    "greedy": greedy, "sampled": sampled, "resumed_equal": more == again,
    "logits_type": type(logits).__module__, "served": len(done),
    "torch_loaded": "torch" in sys.modules, "onnx_loaded": "onnx" in sys.modules,
}))
"""


def _blocked_env(tmp_path: Path) -> dict[str, str]:
    block = tmp_path / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(block), str(Path(__file__).resolve().parents[2])])
    return env


def test_blocker_blocks(tmp_path):
    res = subprocess.run([sys.executable, "-c", "import torch"], env=_blocked_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "blocked by the no-torch test" in res.stderr, res.stderr[-2000:]


def test_generate_and_serve_without_torch(packages, tmp_path):
    pkg = packages["onnxruntime"]
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(pkg), str(tmp_path)], env=_blocked_env(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert not got["torch_loaded"] and not got["onnx_loaded"]
    assert got["logits_type"] == "numpy"
    assert got["resumed_equal"] and got["served"] == 2
    # the same package in this process (torch importable) gives the same text
    from xlstm_edge.runtime import load

    sess = load(pkg, num_threads=1)
    assert got["greedy"] == sess.generate("Hello", max_new_tokens=12)
    assert got["sampled"] == sess.generate("Once", max_new_tokens=10, temperature=0.8, top_p=0.9, seed=7,
                                           continue_conversation=False)


def test_cli_generate_without_torch(packages, tmp_path):
    pkg = packages["onnxruntime"]
    env = _blocked_env(tmp_path)
    cmd = [sys.executable, "-m", "xlstm_edge.cli", "generate", str(pkg), "--prompt", "Hi", "-n", "8",
           "--threads", "1", "--temperature", "0.7", "--seed", "3", "--state-out", str(tmp_path / "c.safetensors")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / "c.safetensors").is_file()
    res2 = subprocess.run([*cmd[:5], "--prompt", "", "--state-in", str(tmp_path / "c.safetensors"), "-n", "4",
                           "--threads", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert res2.returncode == 0, res2.stderr[-4000:]


def test_cli_help_without_torch_names_the_extra(tmp_path):
    env = _blocked_env(tmp_path)
    res = subprocess.run([sys.executable, "-m", "xlstm_edge.cli", "--help"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "generate" in res.stdout and "serve" in res.stdout and "xlstm-edge[torch]" in res.stdout
    res = subprocess.run([sys.executable, "-m", "xlstm_edge.cli", "train", "--help"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "pip install 'xlstm-edge[torch]'" in res.stderr, res.stderr[-2000:]
