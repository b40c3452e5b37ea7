"""The export's memory estimate (``export.estimate``) and the one-line refusal when it does not fit."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from xlstm_edge.export.estimate import estimate_export

from xlstm_edge.config import xLSTMConfig


def test_estimate_orders_schemes_and_grows_with_the_model() -> None:
    seven = xLSTMConfig.from_preset("7b")
    fp32, int8, int4 = (estimate_export(seven, s, "int8").peak_bytes for s in (None, "int8-dynamic", "int4-dynamic"))
    assert fp32 > int8 >= int4 > 0
    assert fp32 > 4 * 6.8e9  # at least the float32 weights themselves
    assert estimate_export(xLSTMConfig.from_preset("small")).peak_bytes < fp32


def test_export_refuses_at_once_when_memory_is_short(tmp_path: Path, monkeypatch) -> None:
    from xlstm_edge.cli import main

    monkeypatch.setattr("xlstm_edge.memory.available_bytes", lambda: 2**20)
    res = CliRunner().invoke(main, ["export", "demo", str(tmp_path / "pkg")])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: this export needs about"), res.output
    assert "int4-dynamic" in lines[0] and "--ignore-memory-estimate" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_at_once_when_the_disk_is_short(tmp_path: Path, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    from xlstm_edge.cli import main

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**10, 2**10))
    res = CliRunner().invoke(main, ["export", "demo", str(tmp_path / "pkg"), "--quantize", "int8-dynamic"])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: this export needs about"), res.output
    assert "of disk beside" in lines[0] and "nothing was started" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_disk_estimate_counts_the_graph_being_written() -> None:
    from xlstm_edge.export.estimate import estimate_disk

    seven = xLSTMConfig.from_preset("7b")
    int8, int4 = (estimate_disk(seven, s, "int8") for s in ("int8-dynamic", "int4-dynamic"))
    assert 3 * 6.6e9 < int8 < 3 * 7.5e9  # the shared file, the exporter's copy and the packed copy
    assert int4 < 0.7 * int8 and estimate_disk(seven, "int4-dynamic", "int8", "executorch") < int4 / 2
