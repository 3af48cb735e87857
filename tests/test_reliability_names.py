"""Names and values that alias, and one bad case that must fail alone: label values beyond int32,
case IDs that look like temporaries, unreadable case folders, things at an output's name that are
not a label map, entries named like images that are not files, and messages that name the real
problem."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import LPS_AFFINE, flair_bundle, synthetic_image, write_case
from test_reliability import _unprivileged
from typer.testing import CliRunner

from brats_cli.bundle import Stage
from brats_cli.cli.app import app
from brats_cli.errors import ImageReadError
from brats_cli.files import TEMP_MARKER, is_temporary, temporary_sibling
from brats_cli.io import Naming, discover_cases, read_label_map
from brats_cli.segmenter import case_from_files

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def one_line(output: str) -> str:
    return " ".join(output.split())


def segment(*args):
    return runner.invoke(app, ["segment", *map(str, args)])


def test_integer_labels_beyond_int32_are_refused_before_the_cast(tmp_path):
    labels = np.zeros((8, 8, 8), np.int64)
    labels[2, 2, 2] = 2**32 + 4  # would wrap to 4, an enhancing-tumour label
    path = tmp_path / "BraTS2021_00001_seg.nii.gz"
    nib.save(nib.Nifti1Image(labels, LPS_AFFINE, dtype=np.int64), path)
    with pytest.raises(ImageReadError, match="label values out of the integer range"):
        read_label_map(path)
    prediction = tmp_path / "pred"
    prediction.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), LPS_AFFINE), prediction / "BraTS2021_00001.nii.gz")
    result = runner.invoke(app, ["evaluate", str(prediction), str(tmp_path)])
    assert result.exit_code == 1
    assert "BraTS2021_00001_seg.nii.gz: label values out of the integer range" in one_line(result.output)


def test_a_case_id_containing_the_temporary_marker_is_an_output_like_any_other(tmp_path):
    case_id = f"A{TEMP_MARKER}1"  # "A.partial-1": a valid, visible case ID
    assert not is_temporary(Path(f"{case_id}.nii.gz"))
    assert is_temporary(temporary_sibling(tmp_path / f"{case_id}.nii.gz"))
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[3:6, 3:6, 3:6] = 2
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(labels, LPS_AFFINE), tmp_path / "gt" / f"{case_id}_seg.nii.gz")
    nib.save(nib.Nifti1Image(labels, LPS_AFFINE), tmp_path / "pred" / f"{case_id}.nii.gz")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json", "x.json"])
    assert result.exit_code == 0, result.output
    assert "missing predictions" not in result.output
    os.remove("x.json")


def test_things_at_an_output_name_that_are_not_label_maps_fail_their_case_alone(tmp_path, background_bundle):
    inp, out = tmp_path / "in", tmp_path / "out"
    for number in (1, 2, 3):
        write_case(inp, f"BraTS2021_0000{number}", synthetic_image())
    (out / "BraTS2021_00001.nii.gz").mkdir(parents=True)  # a folder at the output name
    (out / "BraTS2021_00002.nii.gz").write_bytes(b"")  # an empty file
    result = segment(inp, out, "--weights", background_bundle.root)
    assert result.exit_code == 1, result.output
    text = one_line(result.output)
    assert f"error: BraTS2021_00001: {out / 'BraTS2021_00001.nii.gz'} is a folder, not a label map" in text
    assert f"error: BraTS2021_00002: {out / 'BraTS2021_00002.nii.gz'} is an empty file, not a label map" in text
    assert nib.load(out / "BraTS2021_00003.nii.gz").shape == (240, 240, 155)
    again = segment(inp, out, "--weights", background_bundle.root, "--overwrite")  # the empty file is redone
    assert again.exit_code == 1 and "error: BraTS2021_00002" not in one_line(again.output)
    assert "error: BraTS2021_00001" in one_line(again.output)  # a folder is never overwritten
    assert nib.load(out / "BraTS2021_00002.nii.gz").shape == (240, 240, 155)


def test_entries_named_like_images_that_are_not_files_are_said_as_such(tmp_path, background_bundle):
    inp = tmp_path / "in"
    folder_case = write_case(inp, "BraTS2021_00001", synthetic_image())
    (folder_case / "BraTS2021_00001_t2.nii.gz").unlink()
    (folder_case / "BraTS2021_00001_t2.nii.gz").mkdir()
    fifo_case = write_case(inp, "BraTS2021_00002", synthetic_image())
    (fifo_case / "BraTS2021_00002_t1.nii.gz").unlink()
    os.mkfifo(fifo_case / "BraTS2021_00002_t1.nii.gz")
    long_id = "B" * 230
    write_case(inp, "BraTS2021_00003", synthetic_image())
    (inp / "BraTS2021_00003").rename(inp / "long")
    for path in (inp / "long").iterdir():
        path.rename(path.with_name(path.name.replace("BraTS2021_00003", long_id)))
    result = segment(inp, tmp_path / "out", "--weights", background_bundle.root)
    assert result.exit_code == 1, result.output
    text = one_line(result.output)
    assert f"{folder_case / 'BraTS2021_00001_t2.nii.gz'} is a folder, not an image file" in text
    assert "BraTS2021_00002_t1.nii.gz is not a regular file (a FIFO, socket or device?)" in text
    assert "case ID is 230 characters long; at most 200 make a usable file name" in text


def test_folds_no_stage_has_are_refused_not_dropped(tmp_path, background_bundle):
    write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    result = segment(tmp_path / "in", tmp_path / "out", "--weights", background_bundle.root, "--folds", "0,7")
    assert result.exit_code == 2
    assert "--folds 7: no stage has such a fold (base has fold 0; wt has fold 0; tc has fold 0; et has fold 0)" in (
        one_line(result.output)
    )
    assert not (tmp_path / "out").exists()


def test_folds_a_one_fold_stage_lacks_say_which_it_has(tmp_path):
    """The default bundle's shape: one base fold, several region folds. `--folds 1` is refused
    naming the fold numbers the base stage has, before any output folder exists."""
    bundle = flair_bundle(
        tmp_path / "bundle", window=(64, 64, 64), folds={Stage.BASE: 1, Stage.WT: 2, Stage.TC: 2, Stage.ET: 2}
    )
    write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    result = segment(tmp_path / "in", tmp_path / "out", "--weights", bundle.root, "--folds", "1")
    assert result.exit_code == 2, result.output
    assert "--folds 1: stage base has no such fold (it has fold 0)" in one_line(result.output)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_case_folder_fails_alone_and_the_others_run(background_bundle):
    """As `nobody` (root reads everything): one case folder mode 0700 owned by root."""
    import shutil

    with tempfile.TemporaryDirectory(prefix="brats-unreadable-") as name:
        root = Path(name)
        prefix = _unprivileged(root)
        if prefix is None:
            pytest.skip("running as root without setpriv: cannot drop privileges to test permissions")
        shutil.copytree(background_bundle.root, root / "weights")
        write_case(root / "in", "BraTS2021_00001", synthetic_image())
        write_case(root / "in", "BraTS2021_00002", synthetic_image())
        (root / "out").mkdir()
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        (root / "out").chmod(0o777)
        (root / "in" / "BraTS2021_00002").chmod(0o700)
        command = [sys.executable, "-m", "brats_cli", "segment", str(root / "in"), str(root / "out")]
        run = subprocess.run(
            [*prefix, *command, "--weights", str(root / "weights")],
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "HOME": name},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 1, run.stderr
        assert f"error: BraTS2021_00002: {root / 'in' / 'BraTS2021_00002'}: cannot read folder (permission denied)" in (
            one_line(run.stderr)
        )
        assert "Traceback" not in run.stderr
        assert sorted(p.name for p in (root / "out").iterdir()) == ["BraTS2021_00001.nii.gz"]


def test_bare_2023_names_in_the_working_folder_take_its_name(tmp_path, background_bundle, monkeypatch):
    """`brats segment . OUT` inside a case folder of bare 2023 names (as BrainLesion's
    preprocessing writes them): the case is named for the folder, given as `.` or as `sub/..`."""
    case = write_case(tmp_path, "BraTS-GLI-00001-000", synthetic_image(), naming=Naming.BRATS2023)
    for path in case.iterdir():
        path.rename(path.with_name(path.name.removeprefix("BraTS-GLI-00001-000-")))
    (case / "sub").mkdir()
    monkeypatch.chdir(case)
    for given in (".", "sub/.."):
        (found,) = discover_cases(Path(given)).cases
        assert (found.case_id, found.problem) == ("BraTS-GLI-00001-000", None)
    files = [Path(f"{name}.nii.gz") for name in ("t2f", "t1n", "t1c", "t2w")]
    assert case_from_files(files).case_id == "BraTS-GLI-00001-000"
    result = segment(".", tmp_path / "out", "--weights", background_bundle.root)
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["BraTS-GLI-00001-000.nii.gz"]


def test_hidden_files_beside_cases_are_no_cases(tmp_path, background_bundle):
    """macOS leaves an AppleDouble `._<name>` beside every file it copies to a foreign disk; a
    hidden file is no one's scan, even named like one."""
    inp = tmp_path / "in"
    case = write_case(inp, "BraTS2021_00001", synthetic_image())
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X" + bytes(4080)
    for name in ("._BraTS2021_00001_flair.nii.gz", "._BraTS2021_00001_t1.nii.gz", ".BraTS2021_00001_t2.nii.gz"):
        (case / name).write_bytes(apple_double)
    (inp / "._BraTS2021_00001").write_bytes(apple_double)
    (inp / "._BraTS2021_00002_flair.nii.gz").write_bytes(apple_double)
    for given in (inp, case):
        (found,) = discover_cases(given).cases
        assert (found.case_id, found.problem) == ("BraTS2021_00001", None)
    result = segment(inp, tmp_path / "out", "--weights", background_bundle.root)
    assert result.exit_code == 0, result.output
    assert "error" not in result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["BraTS2021_00001.nii.gz"]
