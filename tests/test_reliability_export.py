"""`brats export` leaves a complete verified bundle or nothing: on SIGTERM and SIGINT, out of disk,
and after a killed export's staging folder was left behind."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import random_bundle
from typer.testing import CliRunner

from brats_cli import export as export_module
from brats_cli.cli.app import app
from brats_cli.files import TEMP_MARKER

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TEMP_MARKER in p.name]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return random_bundle(tmp_path_factory.mktemp("source"), window=(64, 64, 64))


def test_out_of_disk_is_one_line_and_leaves_nothing(tmp_path, source, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.onnx"))

    monkeypatch.setattr(export_module, "export_model", full)
    result = runner.invoke(app, ["export", "--weights", str(source.root), "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 2, result.output
    assert "cannot write (No space left on device); nothing was written to" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "onnx").exists() and leftovers(tmp_path) == []


def test_a_dead_exports_staging_folder_is_swept(tmp_path, source):
    stale = tmp_path / f".onnx{TEMP_MARKER}999999999"  # no such process
    stale.mkdir()
    (stale / "base_fold0.onnx").write_bytes(b"half")
    result = runner.invoke(app, ["export", "--weights", str(source.root), "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    assert leftovers(tmp_path) == [] and (tmp_path / "onnx" / "manifest.json").is_file()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_export_leaves_no_staging_and_no_bundle(tmp_path, source, number):
    command = [sys.executable, "-m", "brats_cli", "export", "--weights", str(source.root), "--out", str(tmp_path / "o")]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not leftovers(tmp_path) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert leftovers(tmp_path), "the export never started staging"
    process.send_signal(number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + number, stderr
    assert "interrupted; nothing was written to" in " ".join(stderr.split()) and "Traceback" not in stderr
    assert leftovers(tmp_path) == [] and not (tmp_path / "o").exists()
