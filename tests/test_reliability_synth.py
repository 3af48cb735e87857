"""`brats synth` writes each case folder whole or not at all: interrupted (SIGTERM, SIGINT), out
of disk, or over an older folder; a killed run's staging folder is swept by the next run."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from brats_cli import synth
from brats_cli.cli.app import app
from brats_cli.files import TEMP_MARKER
from brats_cli.io import Naming, discover_cases
from brats_cli.synth import series

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
FILES = ("flair", "t1", "t1ce", "t2", "seg")


def one_line(output: str) -> str:
    return " ".join(output.split())


def small_phantom(seed: int, index: int, naming: Naming = Naming.BRATS2021, *args, **kwargs) -> synth.Phantom:
    """A stand-in for make_phantom with the real layout and tiny volumes: file handling only."""
    image = np.full((4, 8, 8, 8), index + 1, np.int16)
    labels = np.zeros((8, 8, 8), np.uint8)
    return synth.Phantom(synth.case_id(seed, index, naming), naming, image, labels, labels)


def assert_whole_cases_only(out: Path) -> list[str]:
    """Every visible case folder holds its five files; nothing hidden is left. The case IDs."""
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], list(out.iterdir())
    cases = sorted(p.name for p in out.iterdir())
    for case in cases:
        assert sorted(p.name for p in (out / case).iterdir()) == sorted(f"{case}_{f}.nii.gz" for f in FILES)
    return cases


# `brats synth` in a process of its own with phantoms that take 0.3 s to make and are small to
# write: the signal lands while a case is made or written, as with real ones, in seconds.
SLOW_SYNTH = """
import sys, time
import numpy as np
from brats_cli import synth
from brats_cli.cli.app import app
from brats_cli.io import Naming
from brats_cli.synth import series

def slow(seed, index, naming=Naming.BRATS2021, *args, **kwargs):
    time.sleep(0.3)
    image = np.full((4, 64, 64, 64), index + 1, np.int16)
    labels = np.zeros((64, 64, 64), np.uint8)
    return synth.Phantom(synth.case_id(seed, index, naming), naming, image, labels, labels)

series.make_phantom = slow
sys.argv = ["brats", "synth", sys.argv[1], "--n", "40", "--seed", "3"]
app()
"""


@pytest.mark.parametrize("number, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_leaves_whole_cases_and_says_which(tmp_path, number, code):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_SYNTH, str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "Synth2021_s3_00001").is_dir():
            break
        time.sleep(0.01)
    time.sleep(0.1)
    process.send_signal(number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    cases = assert_whole_cases_only(out)
    assert 2 <= len(cases) < 40
    message = one_line(stderr)
    assert f"interrupted; {len(cases)} of 40 case(s) finished and written to {out} ({', '.join(cases)})" in message
    assert "Traceback" not in stderr


def test_a_full_disk_leaves_no_part_of_a_case_and_says_so_on_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(series, "make_phantom", small_phantom)
    saved = []
    real_save = nib.save

    def filling(image, path):
        if len(saved) == 7:  # the third file of the second case
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        saved.append(path)
        real_save(image, path)

    monkeypatch.setattr(nib, "save", filling)
    out = tmp_path / "out"
    result = runner.invoke(app, ["synth", str(out), "--n", "3", "--seed", "3"])
    assert result.exit_code == 1, result.output  # one case was written: not "nothing written"
    assert assert_whole_cases_only(out) == ["Synth2021_s3_00000"]
    text = one_line(result.output)
    assert (
        f"error: {out / 'Synth2021_s3_00001'}: cannot write (No space left on device); this case was not written"
        in text
    )
    assert f"1 of 3 case(s) finished and written to {out} (Synth2021_s3_00000)" in text
    assert "Errno" not in text and "Traceback" not in text


def test_a_full_disk_at_the_first_case_is_exit_2(tmp_path, monkeypatch):
    monkeypatch.setattr(series, "make_phantom", small_phantom)

    def full(image, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(nib, "save", full)
    result = runner.invoke(app, ["synth", str(tmp_path / "out"), "--n", "2"])
    assert result.exit_code == 2, result.output
    assert assert_whole_cases_only(tmp_path / "out") == []


def test_an_older_case_folder_is_replaced_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(series, "make_phantom", small_phantom)
    old = tmp_path / "Synth2021_s3_00000"
    old.mkdir()
    (old / "Synth2021_s3_00000_flair.nii.gz").write_bytes(b"half of an old run")
    (old / "notes.txt").write_text("left by hand")
    synth.write_phantom_cases(tmp_path, 1, 3)
    assert assert_whole_cases_only(tmp_path) == ["Synth2021_s3_00000"]
    case = discover_cases(tmp_path).cases[0]
    assert case.problem is None and np.asarray(nib.load(case.files[next(iter(case.files))]).dataobj).max() == 1


def test_a_dead_runs_staging_is_swept_and_a_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(series, "make_phantom", small_phantom)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".Synth2021_s3_00000{TEMP_MARKER}{int(dead.stdout)}"
    stale.mkdir()
    (stale / "Synth2021_s3_00000_flair.nii.gz").write_bytes(b"part")
    replaced = tmp_path / f".Synth2021_s3_00007.replaced{TEMP_MARKER}{int(dead.stdout)}"
    replaced.mkdir()
    live = tmp_path / f".Synth2021_s3_00009{TEMP_MARKER}1"  # PID 1 is always alive
    live.mkdir()
    synth.write_phantom_cases(tmp_path, 1, 3)
    assert not stale.exists() and not replaced.exists() and live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["Synth2021_s3_00000"]
