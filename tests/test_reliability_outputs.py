"""What a run may take for its own files (issue 31): the run log never alters data, "done" means a
complete label map, another run's temporaries are told by an owner unique across machines and
containers, and a full disk under the log or the report ends in one line and the right exit code."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import LPS_AFFINE, synthetic_image, write_case
from typer.testing import CliRunner

from brats_cli import files
from brats_cli.cli.app import app
from brats_cli.files import TEMP_MARKER
from brats_cli.io import BRATS_SHAPE, Geometry, write_label_map
from brats_cli.report.records import QA_FOLDER
from brats_cli.segmenter import Segmenter

runner = CliRunner()
IDS = ("BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003", "BraTS2021_00004")
FIRST = ("--shard", "0/4")  # the first case alone: one case computed per run keeps the file fast


def one_line(output: str) -> str:
    return " ".join(output.split())


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Four cases in `.nii` files (no compression time), the first's files hard-linked as the others'."""
    root = tmp_path_factory.mktemp("cohort")
    first = write_case(root, IDS[0], synthetic_image(), extension=".nii", dtype=np.uint16)
    for case_id in IDS[1:]:
        (root / case_id).mkdir()
        for path in first.iterdir():
            os.link(path, root / case_id / path.name.replace(IDS[0], case_id))
    return root


def segment(cohort: Path, out: Path, bundle, *options: str, env: dict[str, str] | None = None):
    arguments = ["segment", str(cohort), str(out), "--weights", str(bundle.root), *options]
    return runner.invoke(app, arguments, env=env)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def label_map(path: Path) -> None:
    labels = np.zeros(BRATS_SHAPE, np.uint8)
    labels[100:110, 100:110, 70:80] = 2
    write_label_map(labels, Geometry(LPS_AFFINE, nib.Nifti1Image(labels, LPS_AFFINE).header, BRATS_SHAPE), path)


# ---------------------------------------------------------------------------------------------
# --log names a file the run reads or writes


def _log_places(tmp_path: Path, cohort: Path, out: Path) -> dict[str, Path]:
    flair = cohort / IDS[0] / f"{IDS[0]}_flair.nii"
    linked, hard = tmp_path / "run.log", tmp_path / "hard.log"
    linked.symlink_to(flair)  # a link with a log's name to an input image
    os.link(flair, hard)  # the same file under another name
    return {
        "an input image": flair,
        "a link to an input image": linked,
        "a hard link to an input image": hard,
        "a file inside INPUT": cohort / "notes.log",
        "an output name": out / f"{IDS[0]}.nii.gz",
        "a NIfTI name elsewhere": tmp_path / "log.NII.GZ",
        "a temporary's name": tmp_path / f".run.log{TEMP_MARKER}1",
        "the QA records": out / QA_FOLDER / "run.log",
        "the output folder itself": out,
    }


@pytest.mark.parametrize(
    "place",
    [
        "an input image",
        "a link to an input image",
        "a hard link to an input image",
        "a file inside INPUT",
        "an output name",
        "a NIfTI name elsewhere",
        "a temporary's name",
        "the QA records",
        "the output folder itself",
    ],
)
def test_a_log_that_would_alter_data_is_refused_before_anything_is_written(tmp_path, cohort, background_bundle, place):
    out = tmp_path / "out"
    log = _log_places(tmp_path, cohort, out)[place]
    if place != "the output folder itself":  # an earlier --report run's output folder
        (out / QA_FOLDER).mkdir(parents=True)
    before, outside = snapshot(cohort), sorted(p.name for p in tmp_path.iterdir())
    result = segment(cohort, out, background_bundle, "--log", str(log))
    assert result.exit_code == 2, result.output
    assert f"error: {log}: " in one_line(result.output) and "Traceback" not in result.output
    assert "cannot write the log" not in result.output  # refused for what it is, not by chance
    assert snapshot(cohort) == before  # the scans are untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == outside
    assert not out.exists() or sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [QA_FOLDER]


def test_a_log_on_a_full_disk_is_one_warning_and_the_cases_are_done(tmp_path, cohort, background_bundle):
    """/dev/full fails every write with ENOSPC, as a log on a full disk does at its first flush."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    out = tmp_path / "out"
    result = segment(cohort, out, background_bundle, *FIRST, "--log", "/dev/full")
    assert result.exit_code == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    text = one_line(result.output)
    assert "warning: /dev/full: cannot write the log (No space left on device); the run goes on without it" in text
    assert text.count("cannot write the log") == 1 and "Errno" not in text
    assert sorted(p.name for p in out.iterdir()) == [f"{IDS[0]}.nii.gz"]


# ---------------------------------------------------------------------------------------------
# "Done" is a complete label map


def _truncated(path: Path, complete: Path) -> None:
    data = complete.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted copy


def _foreign(path: Path, complete: Path) -> None:
    flair = nib.load(complete).get_fdata()  # a valid NIfTI of BraTS shape, but not labels
    nib.save(nib.Nifti1Image((flair * 0 + 300).astype(np.int16), LPS_AFFINE), path)


def _text(path: Path, complete: Path) -> None:
    path.write_text("not an image\n")


def _link_outside(path: Path, complete: Path) -> None:
    path.symlink_to(complete)  # a complete label map, but somewhere else


def test_only_a_complete_label_map_counts_as_done(tmp_path, cohort, background_bundle):
    """An interrupted copy, another tool's image, a text file and a link out of the folder at the
    cases' output names: each case fails saying so (never "skipped"); --overwrite redoes one,
    replacing the link without writing through it. Then that complete map, and a link to it
    inside the folder, are skipped."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    complete = elsewhere / "complete.nii.gz"
    label_map(complete)
    kept = complete.read_bytes()
    said = {
        _link_outside: f"is a link to {complete.resolve()}, outside the output folder, not a label map of this output",
        _truncated: "is not a complete label map (",
        _foreign: "is not a complete label map (it holds 300, not a BraTS label)",
        _text: "is not a complete label map (not a readable NIfTI file",
    }
    for case_id, make in zip(IDS, said, strict=True):
        make(out / f"{case_id}.nii.gz", complete)
    result = segment(cohort, out, background_bundle)
    assert result.exit_code == 1, result.output
    text = one_line(result.output)
    for case_id, message in zip(IDS, said.values(), strict=True):
        assert f"error: {case_id}: {out / f'{case_id}.nii.gz'} {message}" in text
    assert text.count("rerun with --overwrite") == 4 and "skipped" not in text
    again = segment(cohort, out, background_bundle, *FIRST, "--overwrite")  # the link's case
    assert again.exit_code == 0, again.output
    target = out / f"{IDS[0]}.nii.gz"
    assert not target.is_symlink() and np.asarray(nib.load(target).dataobj).max() == 0  # this bundle finds nothing
    assert complete.read_bytes() == kept  # never written through
    (out / f"{IDS[1]}.nii.gz").unlink()
    (out / f"{IDS[1]}.nii.gz").symlink_to(target.name)
    resumed = one_line(segment(cohort, out, background_bundle).output)
    assert resumed.count("skipped") == 2 and resumed.count("rerun with --overwrite") == 2


# ---------------------------------------------------------------------------------------------
# Temporaries: an owner unique across machines and containers, and an age


def _of_another_machine(path: Path, *, pid: int) -> Path:
    """The temporary name `path` would have if process `pid` of another node or container (PID
    namespace) wrote it. A staging folder's name is the temporary's without an extension."""
    ours = files.temporary_sibling(path)
    return ours.with_name(ours.name.replace(f"{os.getpid()}-{files.machine()}-", f"{pid}-0123456789ab-"))


def test_a_temporary_names_this_machine_and_namespace_and_run(tmp_path):
    name = files.temporary_sibling(tmp_path / "BraTS2021_00001.nii.gz").name
    assert name.startswith(f".BraTS2021_00001.nii.gz{TEMP_MARKER}{os.getpid()}-{files.machine()}-")
    assert name.endswith(".nii.gz") and files.is_temporary(tmp_path / name)
    child = "from brats_cli import files; print(files.machine())"
    other = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == files.machine()  # the same host and PID namespace


def test_another_containers_live_temporary_is_kept_even_with_our_pid(tmp_path):
    """Every container's run may be PID 1: a temporary of another PID namespace with this
    process's PID is another run's work, kept while it is fresh; removed once a day old."""
    fresh = _of_another_machine(tmp_path / "BraTS2021_00001.nii.gz", pid=os.getpid())
    old = _of_another_machine(tmp_path / "BraTS2021_00002.nii.gz", pid=1)
    staging = _of_another_machine(tmp_path / "report", pid=os.getpid())  # a node's report staging
    for path in (fresh, old):
        path.write_bytes(b"being written elsewhere")
    staging.mkdir()
    (staging / "index.html").write_text("half a report")
    a_day_ago = time.time() - files.FOREIGN_STALE_AFTER_S - 60
    os.utime(old, (a_day_ago, a_day_ago))
    assert files.remove_stale_temporaries(tmp_path) == [old]
    assert fresh.exists() and (staging / "index.html").exists()
    with files.atomic_folder(tmp_path / "report") as mine:  # our own report, beside the node's
        (mine / "index.html").write_text("ours")
    assert (staging / "index.html").read_text() == "half a report"
    for path in (staging, staging / "index.html"):
        os.utime(path, (a_day_ago, a_day_ago))
    assert files.remove_stale_staging(tmp_path / "report") == [staging]


def test_a_dead_run_that_had_our_pid_is_swept_and_our_own_temporary_kept(tmp_path, monkeypatch):
    mine = files.temporary_sibling(tmp_path / "BraTS2021_00001.nii.gz")
    monkeypatch.setattr(files, "_RUN", "00000000")  # same machine and PID, another run: dead
    dead = files.temporary_sibling(tmp_path / "BraTS2021_00002.nii.gz")
    monkeypatch.undo()
    for path in (mine, dead):
        path.write_bytes(b"partial")
    assert files.remove_stale_temporaries(tmp_path) == [dead]
    assert mine.exists()


def test_a_segment_run_keeps_another_containers_temporary_of_its_own_case(tmp_path, cohort, background_bundle):
    out = tmp_path / "out"
    out.mkdir()
    theirs = _of_another_machine(out / f"{IDS[0]}.nii.gz", pid=os.getpid())
    theirs.write_bytes(b"another container, mid-write")
    result = segment(cohort, out, background_bundle, *FIRST)
    assert result.exit_code == 0, result.output
    assert theirs.read_bytes() == b"another container, mid-write"


def test_a_shard_sweeps_only_its_own_cases_qa_records(tmp_path, cohort, background_bundle):
    """Shard 0/2 holds IDS[0] and IDS[2]: a dead run's record temporary of IDS[1] is shard 1's to sweep."""
    out = tmp_path / "out"
    (out / QA_FOLDER).mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    mine = out / QA_FOLDER / f".{IDS[0]}.json{TEMP_MARKER}{pid}.json"
    others = out / QA_FOLDER / f".{IDS[1]}.json{TEMP_MARKER}{pid}.json"
    for path in (mine, others):
        path.write_text("{")
    Segmenter(background_bundle).segment_folder(cohort, out, shard="0/2", quality=True)
    assert others.exists() and not mine.exists()


def test_a_linked_qa_folder_is_never_swept_through(tmp_path, cohort, background_bundle):
    """OUTPUT/.brats-qa linking elsewhere: the report replaces the link; nothing there is deleted."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / QA_FOLDER).symlink_to(elsewhere, target_is_directory=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    theirs = elsewhere / f".{IDS[0]}.json{TEMP_MARKER}{int(dead.stdout)}.json"
    theirs.write_text("someone else's file")
    Segmenter(background_bundle).segment_folder(cohort, out, quality=True)
    assert theirs.read_text() == "someone else's file"


# ---------------------------------------------------------------------------------------------
# The report alone hits a full disk


def test_a_report_that_cannot_be_written_exits_1_and_keeps_the_cases(tmp_path, cohort, background_bundle, monkeypatch):
    import contextlib

    @contextlib.contextmanager
    def full_disk(target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        yield  # pragma: no cover

    monkeypatch.setattr(files, "atomic_folder", full_disk)  # the report's folder, made at the end
    out = tmp_path / "out"
    out.mkdir()
    log = out / "run.log"  # beside the outputs, under a name no output takes: a fine log
    result = segment(cohort, out, background_bundle, *FIRST, "--report", "--log", str(log))
    assert result.exit_code == 1, result.output
    text = one_line(result.output)
    said = f"error: {out / 'report'}: cannot write the report (No space left on device)"
    assert said in text and said in one_line(log.read_text())
    assert "the segmented cases are kept, only the report is missing" in text and "Errno" not in text
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [f"{IDS[0]}.nii.gz", "run.log"]
