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
from conftest import LPS_AFFINE
from typer.testing import CliRunner

from brats_cli import synth
from brats_cli.cli.app import app
from brats_cli.files import TEMP_MARKER
from brats_cli.io import Naming, discover_cases
from brats_cli.synth import series, shapes

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


# ---------------------------------------------------------------------------------------------
# `--shapes`: label maps that cannot give a tumour outline are refused before anything is written


def _label_map(path: Path, labels: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), LPS_AFFINE), path)
    return path


def _unplaceable(kind: str) -> np.ndarray:
    """A BraTS-space label map whose tumour cannot be placed in a phantom's brain."""
    labels = np.zeros((240, 240, 155), np.uint8)
    if kind == "one voxel":
        labels[120, 120, 77] = 4
    elif kind == "far apart":  # three voxels at the grid's corners and an edge: each vanishes
        labels[10, 10, 10], labels[230, 230, 150], labels[120, 20, 70] = 4, 1, 4
    elif kind == "fills the volume":  # edema everywhere, a core in the middle
        labels[:] = 2
        labels[100:140, 100:140, 60:100] = 4
    else:  # a thin tube of edema across the grid around a small core: a few ml, 240 mm long
        labels[:, 115:125, 72:82] = 2
        labels[110:130, 112:128, 69:85] = 4
    return labels


def _refused(tmp_path: Path, shape: Path) -> str:
    """`brats synth --generator 4 --shapes SHAPE`: exit 2, nothing written, the message."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["synth", str(out), "--generator", "4", "--shapes", str(shape)])
    assert result.exit_code == 2, result.output
    assert not out.exists()
    (line,) = result.output.strip().splitlines()
    return line


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("one voxel", "its tumour core is too small or scattered to place (at most 2 mm thick;"),
        ("far apart", "its tumour core is too small or scattered to place (at most 2 mm thick;"),
        ("fills the volume", "its whole tumour (8928 ml, 240 mm across) does not fit in the brain"),
        ("a tube across the grid", "its whole tumour (27 ml, 240 mm across) does not fit in the brain"),
    ],
)
def test_a_shape_that_cannot_be_placed_in_the_brain_is_refused(tmp_path, kind, message):
    """One voxel or scattered voxels would give tumour-free cases; a tumour larger than a brain
    would fill it. Either is one line naming the file, before any case."""
    shape = _label_map(tmp_path / "shape_seg.nii.gz", _unplaceable(kind))
    assert f"error: {shape}: {message}" in _refused(tmp_path, shape)


def test_a_shape_in_another_grid_is_refused_from_its_header(tmp_path, monkeypatch):
    """A 480x480x310 map (3.8 GB once read as the label map's integers) is refused on its header:
    its voxels are never read."""
    shape = tmp_path / "big_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((480, 480, 310), np.uint8), np.diag([-0.5, -0.5, 0.5, 1.0])), shape)

    def never(path):
        raise AssertionError(f"{path}: voxels read")

    monkeypatch.setattr(shapes, "read_label_map", never)
    line = _refused(tmp_path, shape)
    assert f"error: {shape}: shape 480x480x310 is not BraTS space 240x240x155;" in line


def test_a_fifo_given_as_a_shape_is_said_to_be_one(tmp_path):
    """Never opened (reading a FIFO blocks), and not "no such file": given alone or in a folder."""
    fifo = tmp_path / "shape_seg.nii.gz"
    os.mkfifo(fifo)
    line = _refused(tmp_path, fifo)
    assert f"error: {fifo} is not a regular file (a FIFO, socket or device?), not a label map" in line
    folder = tmp_path / "maps"
    folder.mkdir()
    _label_map(folder / "a_seg.nii.gz", _unplaceable("fills the volume"))
    os.mkfifo(folder / "b_seg.nii.gz")
    assert f"{folder / 'b_seg.nii.gz'} is not a regular file" in _refused(tmp_path, folder)


def test_every_accepted_core_survives_the_smallest_scale(monkeypatch):
    """The thinnest core `outline_problem` accepts (MIN_CORE_DEPTH_MM deep) keeps voxels in every
    placement at the smallest scale; a one-voxel core, which it refuses, mostly vanishes."""
    grid = np.linalg.norm(np.indices((15, 15, 15)) - 7.0, axis=0)
    thinnest, single = grid <= 2.9, grid <= 0.5
    assert shapes.outline_problem(thinnest, thinnest) is None
    assert "too small or scattered" in (shapes.outline_problem(single, single) or "")
    assert "too small or scattered" in (shapes.outline_problem(grid <= 2.5, grid <= 2.5) or "")
    smallest = shapes.SHAPE_SCALE[0] * (1 - shapes.SHAPE_STRETCH)
    monkeypatch.setattr(shapes, "SHAPE_SCALE", (smallest, smallest))
    monkeypatch.setattr(shapes, "SHAPE_STRETCH", 0.0)
    centre = np.array([120.0, 120.0, 77.0])

    def kept(core: np.ndarray, draw: int) -> bool:
        shape = shapes.TumourShape("ball", core, core, core)
        return bool(shapes.place_shape(np.random.default_rng([3, draw]), shape, centre).core.any())

    assert all(kept(thinnest, draw) for draw in range(100))
    assert sum(kept(single, draw) for draw in range(100)) < 50
