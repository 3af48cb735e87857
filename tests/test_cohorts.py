"""Cohorts split between processes: `brats segment --shard K/N`, the shard of a SLURM array task,
and `--log FILE`; two shard processes into one output folder write every case exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import pytest
from conftest import synthetic_image, write_case
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from brats_cli import Segmenter
from brats_cli.cli import console
from brats_cli.cli.app import app
from brats_cli.errors import SettingsError
from brats_cli.files import TEMP_MARKER
from brats_cli.shards import Shard

runner = CliRunner()
IDS = [f"BraTS2021_{i:05d}" for i in (7, 2, 11, 5)]  # sorted: 00002, 00005, 00007, 00011


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    image = synthetic_image()
    for case_id in IDS:
        write_case(root, case_id, image)
    return root


def test_parse_shard() -> None:
    assert Shard.parse("0/4") == Shard(0, 4)
    assert Shard.parse(" 3 / 4 ") == Shard(3, 4)
    for text in ("4/4", "1/0", "-1/2", "1", "a/b", "1/2/3"):
        with pytest.raises(SettingsError, match="shard"):
            Shard.parse(text)


@given(
    ids=st.lists(st.text("ab0123456789-_", min_size=1, max_size=6), min_size=0, max_size=30),
    count=st.integers(1, 7),
)
def test_shards_are_disjoint_and_cover_every_case(ids: list[str], count: int) -> None:
    shards = [Shard(k, count).select(ids) for k in range(count)]
    assert set().union(*shards) == set(ids)
    assert sum(len(s) for s in shards) == len(set(ids))
    ordered = sorted(set(ids))
    for k, chosen in enumerate(shards):  # every count-th by sorted ID, from the k-th
        assert chosen == set(ordered[k::count])


def test_a_slurm_array_task_is_the_shard_at_its_position() -> None:
    environ = {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2",
               "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1"}  # fmt: skip
    shard = Shard.from_slurm(environ)
    assert shard is not None and (shard.index, shard.count) == (1, 2)
    assert shard.source == "SLURM array job 77, task 1 of 0-1"
    # --array=1-8: task 8 is the last of 8; --array=0-14:2: task 6 is the 4th of 8.
    shifted = {**environ, "SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1",
               "SLURM_ARRAY_TASK_MAX": "8"}  # fmt: skip
    assert Shard.from_slurm(shifted) == Shard(7, 8, "SLURM array job 77, task 8 of 1-8")
    stepped = {**environ, "SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MAX": "14",
               "SLURM_ARRAY_TASK_STEP": "2"}  # fmt: skip
    assert (Shard.from_slurm(stepped).index, Shard.from_slurm(stepped).count) == (3, 8)  # type: ignore[union-attr]
    # --array=1,4,9: three tasks that are no range; no array at all: no shard.
    listed = {**environ, "SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1",
              "SLURM_ARRAY_TASK_MAX": "9"}  # fmt: skip
    with pytest.raises(SettingsError, match="pass --shard K/N"):
        Shard.from_slurm(listed)
    assert Shard.from_slurm({"SLURM_JOB_ID": "5"}) is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SLURM_ARRAY_TASK_MIN", "x"),
        ("SLURM_ARRAY_TASK_MAX", "1.5"),
        ("SLURM_ARRAY_TASK_COUNT", "two"),
        ("SLURM_ARRAY_TASK_STEP", "0"),
        ("SLURM_ARRAY_TASK_STEP", "-2"),
        ("SLURM_ARRAY_TASK_ID", "-1"),
    ],
)
def test_a_bad_slurm_variable_is_refused_by_its_own_name(variable: str, value: str) -> None:
    """Each variable is named in the error with its value; a step of 0 or below is no range SLURM
    makes and is refused, never read as 1."""
    environ = {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2",
               "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1", variable: value}  # fmt: skip
    with pytest.raises(SettingsError, match=f"^{variable}={value!r}: expected an integer of at least"):
        Shard.from_slurm(environ)


def test_a_bad_slurm_step_stops_segment_before_anything_is_written(cohort: Path, tmp_path: Path) -> None:
    environ = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "3",
               "SLURM_ARRAY_TASK_STEP": "0"}  # fmt: skip
    result = runner.invoke(app, ["segment", str(cohort), str(tmp_path / "out")], env=environ)
    assert result.exit_code == 2, result.output
    assert "error: SLURM_ARRAY_TASK_STEP='0': expected an integer of at least 1" in result.output
    assert not (tmp_path / "out").exists()


def test_shard_option_segments_only_its_cases(cohort: Path, background_bundle, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(cohort), str(out), "--weights", str(background_bundle.root),
                                 "--shard", "1/2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "shard 1/2 (--shard): 2 of 4 case(s)" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["BraTS2021_00005.nii.gz", "BraTS2021_00011.nii.gz"]
    bad = runner.invoke(app, ["segment", str(cohort), str(out), "--shard", "2/2"])
    assert bad.exit_code == 2 and "K must be 0 to 1" in bad.output


def test_inside_a_slurm_array_the_task_is_the_shard_and_the_log_says_so(
    cohort: Path, background_bundle, tmp_path: Path
) -> None:
    environ = {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2",
               "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1"}  # fmt: skip
    out, log = tmp_path / "out", tmp_path / "task0.log"
    weights = str(background_bundle.root)
    arguments = ["segment", str(cohort), str(out), "--weights", weights]
    result = runner.invoke(app, [*arguments, "--log", str(log)], env=environ)
    assert result.exit_code == 0, result.output
    said = "shard 0/2 (SLURM array job 77, task 0 of 0-1): 2 of 4 case(s)"
    assert said in result.output and said in log.read_text()
    assert sorted(p.name for p in out.iterdir()) == ["BraTS2021_00002.nii.gz", "BraTS2021_00007.nii.gz"]
    # --shard wins over the array's task (task 1 here; shard 0's cases are done: skipped).
    result = runner.invoke(app, [*arguments, "--shard", "0/2"], env={**environ, "SLURM_ARRAY_TASK_ID": "1"})
    assert "shard 0/2 (--shard)" in result.output and result.output.count("skipped") == 2


def test_a_shard_sweeps_only_its_own_temporaries(cohort: Path, background_bundle, tmp_path: Path) -> None:
    """A shard on another machine has a PID this one cannot see: its temporary must survive the
    start of this shard; a dead run's temporary of one of this shard's cases is swept."""
    out = tmp_path / "out"
    out.mkdir()
    others = out / f".BraTS2021_00005.nii.gz{TEMP_MARKER}999999.nii.gz"  # shard 1's case
    mine = out / f".BraTS2021_00002.nii.gz{TEMP_MARKER}999999.nii.gz"  # shard 0's case
    others.write_bytes(b"being written on another node")
    mine.write_bytes(b"left by a killed run")
    # The sweep comes with the output folder, when segmenting starts (nothing is consumed here).
    Segmenter(background_bundle).segment_folder(cohort, out, shard="0/2").segment()
    assert others.exists() and not mine.exists()


def _segment_process(cohort: Path, out: Path, bundle: Path, shard: str, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "brats_cli", "segment", str(cohort), str(out), "--weights", str(bundle),
               "--shard", shard, "--log", str(log)]  # fmt: skip
    # One thread each: the two processes share the test machine's cores.
    environ = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ)


def test_two_shard_processes_write_every_case_of_one_folder_once(
    cohort: Path, background_bundle, tmp_path: Path
) -> None:
    """Two processes started together on one input and one output folder (as two array tasks or
    two GPUs of one machine would be): each writes its own cases, together all of them, none twice."""
    out = tmp_path / "out"
    logs = [tmp_path / "shard0.log", tmp_path / "shard1.log"]
    processes = [_segment_process(cohort, out, background_bundle.root, f"{k}/2", logs[k]) for k in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output

    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{case_id}.nii.gz" for case_id in IDS)  # every case, no temporary left
    done = [{line.split()[2] for line in log.read_text().splitlines() if " done: " in line} for log in logs]
    assert done[0] == {"BraTS2021_00002", "BraTS2021_00007"}
    assert done[1] == {"BraTS2021_00005", "BraTS2021_00011"}
    for name in written:
        assert nib.load(out / name).shape == (240, 240, 155)


def test_the_log_keeps_every_error_and_warning_of_the_run(tmp_path: Path, background_bundle) -> None:
    inp, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "run.log"
    write_case(inp, "BraTS2021_00001", synthetic_image())
    broken = write_case(inp, "BraTS2021_00002", synthetic_image())
    (broken / "BraTS2021_00002_t2.nii.gz").unlink()
    log.write_text("an earlier attempt\n")
    result = runner.invoke(app, ["segment", str(inp), str(out), "--weights", str(background_bundle.root),
                                 "--log", str(log)])  # fmt: skip
    assert result.exit_code == 1
    lines = log.read_text().splitlines()
    assert lines[0] == "an earlier attempt"  # appended: a resubmitted job keeps its history
    assert any(line.endswith("error: BraTS2021_00002: missing modality t2") for line in lines)
    assert any("warning: BraTS2021_00001: the base model found no tumour" in line for line in lines)
    assert any(" info: brats: 2 case(s), weights " in line for line in lines)
    assert any(" done: BraTS2021_00001 " in line for line in lines)

    unwritable = runner.invoke(app, ["segment", str(inp), str(out), "--log", str(tmp_path / "no" / "run.log")])
    assert unwritable.exit_code == 2
    assert "run.log: cannot write the log" in unwritable.output


def test_the_log_keeps_python_warnings_of_libraries(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with console.log_to(log), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library's deprecation", DeprecationWarning, stacklevel=1)
    assert "warning: DeprecationWarning: a library's deprecation" in log.read_text()
    with warnings.catch_warnings():  # closed: nothing more is written
        warnings.simplefilter("always")
        warnings.warn("after the run", UserWarning, stacklevel=1)
    assert "after the run" not in log.read_text()
