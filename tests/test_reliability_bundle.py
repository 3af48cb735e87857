"""`brats bundle` (and every torch bundle written) is whole or untouched: a signal or a full disk
leaves no half bundle and no staging folder, an older bundle stays as it was until the new one
replaces it, and a folder holding anything but a bundle is never replaced."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import safetensors.torch
from conftest import random_bundle
from typer.testing import CliRunner

from brats_cli.bundle import load_bundle
from brats_cli.cli.app import app
from brats_cli.errors import OutputError
from brats_cli.files import TEMP_MARKER
from brats_cli.interrupts import Interrupted

runner = CliRunner()


def one_line(output: str) -> str:
    return " ".join(output.split())


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def failing_save(monkeypatch, error: BaseException, after: int = 2) -> None:
    """safetensors' save_file fails at its (after+1)-th call: a disk that fills, or a signal."""
    real, calls = safetensors.torch.save_file, []

    def save_file(tensors, path, *args, **kwargs):
        if len(calls) == after:
            raise error
        calls.append(path)
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


@pytest.mark.parametrize(
    "error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), Interrupted(15)], ids=["disk full", "SIGTERM"]
)
def test_a_failed_write_leaves_the_older_bundle_and_no_staging(tmp_path, monkeypatch, error):
    older = random_bundle(tmp_path / "bundle", seed=1)
    before = {name: (older.root / name).read_bytes() for name in listing(older.root)}
    failing_save(monkeypatch, error)
    with pytest.raises(OutputError if isinstance(error, OSError) else Interrupted) as raised:
        random_bundle(tmp_path / "bundle", seed=2)
    if isinstance(error, OSError):
        assert str(raised.value) == (
            f"{tmp_path / 'bundle'}: cannot write the bundle (No space left on device); nothing was written"
        )
    assert listing(tmp_path) == ["bundle"]  # no staging, no older copy set aside
    assert {name: (older.root / name).read_bytes() for name in listing(older.root)} == before
    load_bundle(tmp_path / "bundle")


def test_a_new_bundle_replaces_an_older_one_whole(tmp_path):
    random_bundle(tmp_path / "bundle", seed=1, folds=2)
    newer = random_bundle(tmp_path / "bundle", seed=2, folds=1)
    assert "wt_fold1.safetensors" not in listing(newer.root)  # nothing of the older one is left
    assert listing(tmp_path) == ["bundle"]


def test_a_dead_runs_staging_is_swept(tmp_path):
    stale = tmp_path / f".bundle{TEMP_MARKER}999999999"
    stale.mkdir()
    (stale / "wt_fold0.safetensors").write_bytes(b"half")
    random_bundle(tmp_path / "bundle")
    assert listing(tmp_path) == ["bundle"]


@pytest.mark.parametrize("planted", ["README.md", "notes"])
def test_brats_bundle_never_replaces_a_folder_of_other_files(tmp_path, planted):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    (out / planted).write_text("a user's file")
    result = runner.invoke(app, ["bundle", str(tmp_path / "run"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"{out}: holds files that are not a bundle's ({planted}); a bundle replaces the whole folder" in one_line(
        result.output
    )
    assert listing(out) == sorted(["manifest.json", planted])
