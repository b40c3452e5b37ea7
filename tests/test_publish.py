"""Atomic publishing (``xlstm_edge.publish``): modes, replacement, stale staging directories, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xlstm_edge.publish import PublishError, publishing, remove_stale


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_published_directory_has_plain_modes(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with publishing(tmp_path / "pkg") as tmp:
            (tmp / "a.bin").write_bytes(b"x")
            (tmp / "a.bin").chmod(0o600)  # as safetensors writes its files
            (tmp / "sub").mkdir(mode=0o700)
    finally:
        os.umask(old)
    pkg = tmp_path / "pkg"
    assert pkg.stat().st_mode & 0o777 == 0o755
    assert (pkg / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (pkg / "sub").stat().st_mode & 0o777 == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]


def test_failure_leaves_nothing_and_replace_keeps_the_old_until_done(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    with pytest.raises(RuntimeError), publishing(out) as tmp:
        (tmp / "f").write_text("new")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "f").write_text("old")
    with pytest.raises(PublishError, match="already exists"), publishing(out):
        pass
    with pytest.raises(KeyboardInterrupt), publishing(out, replace=True) as tmp:
        (tmp / "f").write_text("new")
        raise KeyboardInterrupt
    assert (out / "f").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["pkg"]
    with publishing(out, replace=True) as tmp:
        (tmp / "f").write_text("new")
    assert (out / "f").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["pkg"]


def test_stale_staging_of_dead_processes_is_removed(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getpid()
    stale = tmp_path / f".pkg.partial-{dead}-abcd1234"
    old = tmp_path / f".pkg.old-{dead}-00ff00ff"
    mine = tmp_path / f".pkg.partial-{live}-abcd1234"
    other = tmp_path / f".other.partial-{dead}-abcd1234"
    for p in (stale, old, mine, other):
        p.mkdir()
    assert sorted(remove_stale(tmp_path / "pkg")) == sorted([stale, old])
    assert mine.exists() and other.exists()


def test_sigterm_during_export_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGTERM while the export writes its graphs: no package, no staging directory."""
    out = tmp_path / "pkg"
    exe = Path(sys.executable).with_name("xlstm-edge")
    proc = subprocess.Popen([str(exe), "export", "demo", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".pkg.partial-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the export never started staging"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert list(tmp_path.iterdir()) == []
