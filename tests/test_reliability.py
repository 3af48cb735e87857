"""Reliability (issue 10): every bad input and fault gets a clear answer and nothing is lost.

- A table of bad inputs for `segment` and `evaluate`: one parametrised test per row asserting the
  message, the exit code, the other cases' valid outputs and that no temporary file is left.
  The case rows share one batch run (one input folder holding every bad case beside good ones, as a
  challenge harness would feed it), so the networks run once for the whole table.
- Fuzzing of the NIfTI readers with hypothesis (bounded here; BRATS_FUZZ_EXAMPLES for longer runs).
- Faults: SIGKILL/SIGTERM/SIGINT on a real `python -m brats_cli segment` process, disk full,
  read-only input, output on another filesystem, concurrent runs' temporaries.
- Security: nothing is written outside the output folder and the temp dir; weights never unpickle.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import LPS_AFFINE, flair_bundle, synthetic_image, write_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from brats_cli import io
from brats_cli.bundle import MANIFEST, Stage, sha256_file
from brats_cli.cli.app import app
from brats_cli.errors import CaseError, ImageReadError
from brats_cli.io import BRATS_SHAPE, TEMP_MARKER

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
GOOD = "BraTS2021_00001"  # a plain good case
LINKED = "BraTS2021_00020"  # a good case whose folder and files are symlinks to outside the input


def leftovers(*folders: Path) -> list[str]:
    return [p.name for folder in folders if folder.exists() for p in folder.rglob("*") if TEMP_MARKER in p.name]


def assert_valid_output(path: Path, affine: np.ndarray = LPS_AFFINE) -> None:
    written = nib.load(path)
    assert written.shape == BRATS_SHAPE
    assert written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, affine)
    assert path.is_file() and not path.is_symlink()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and mtime: to prove a run wrote nothing there."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _save(path: Path, data: np.ndarray, affine: np.ndarray = LPS_AFFINE) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


def _case(root: Path, case_id: str, image: np.ndarray) -> Path:
    """A case in `.nii` files (no compression time), the synthetic image stored as uint16."""
    return write_case(root, case_id, image, extension=".nii", dtype=np.uint16)


def _absurd_header(path: Path) -> None:
    """A valid NIfTI header claiming 30000^3 int16 voxels, followed by a few bytes."""
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), LPS_AFFINE)
    raw = bytearray(image.to_bytes())
    raw[:348] = header.binaryblock
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))


# ---------------------------------------------------------------------------------------------
# The segment table: every bad case in one input folder beside good ones.


def _break(folder: Path, case_id: str, image: np.ndarray, how: str) -> None:
    def file(suffix: str, extension: str = ".nii") -> Path:
        return folder / case_id / f"{case_id}_{suffix}{extension}"

    _case(folder, case_id, image)
    if how == "missing modality":
        file("t2").unlink()
    elif how == "two files for one modality":
        shutil.copy(file("t1"), file("t1", ".nii.gz"))
    elif how == "shape other than 240x240x155":
        for suffix in ("flair", "t1", "t1ce", "t2"):
            _save(file(suffix), np.ones((200, 200, 150), np.int16))
    elif how == "shapes differ between modalities":
        _save(file("t2"), np.ones((240, 240, 154), np.int16))
    elif how == "affines differ between modalities":
        shifted = LPS_AFFINE.copy()
        shifted[0, 3] = 5.0
        _save(file("t1"), np.ones(BRATS_SHAPE, np.int16), shifted)
    elif how in ("NaN voxels", "Inf voxels"):
        data = image[2].astype(np.float32)
        data[100, 100, 70] = np.nan if how == "NaN voxels" else np.inf
        _save(file("t1ce"), data)
    elif how == "all-zero modality":
        _save(file("flair"), np.zeros(BRATS_SHAPE, np.int16))
    elif how == "corrupt gzip":
        raw = bytearray(gzip.compress(file("flair").read_bytes(), compresslevel=1))
        raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64
        file("flair").unlink()
        file("flair", ".nii.gz").write_bytes(bytes(raw))
    elif how == "truncated .nii":
        raw = file("t1").read_bytes()
        file("t1").write_bytes(raw[: len(raw) // 2])
    elif how == "truncated .nii.gz":
        raw = gzip.compress(file("t1").read_bytes(), compresslevel=1)
        file("t1").unlink()
        file("t1", ".nii.gz").write_bytes(raw[: len(raw) // 2])
    elif how == "not NIfTI at all":
        file("t1ce").write_bytes(b"%PDF-1.4 this is a report, not an image\n" * 100)
    elif how == "4D image":
        _save(file("t2"), np.ones((*BRATS_SHAPE, 2), np.int16))
    elif how == "header claims an absurd size":
        _absurd_header(file("t2"))
    elif how == "case ID with path characters":
        for path in (folder / case_id).iterdir():
            # Not "..\\..\\etc": a leading dot makes a hidden file, which discovery ignores.
            path.rename(path.with_name(path.name.replace(case_id, "up\\..\\..\\etc")))
    else:
        raise AssertionError(how)


# (row, case ID, message fragment printed as "error: <ID>: ...")
CASE_ROWS = [
    ("missing modality", "BraTS2021_00002", "missing modality t2"),
    ("two files for one modality", "BraTS2021_00003", "two files for t1: BraTS2021_00003_t1.nii"),
    ("shape other than 240x240x155", "BraTS2021_00004", "shape (200, 200, 150) is not BraTS space 240x240x155"),
    ("shapes differ between modalities", "BraTS2021_00005", "shape mismatch: BraTS2021_00005_flair.nii is"),
    ("affines differ between modalities", "BraTS2021_00006", "affine mismatch between BraTS2021_00006_flair.nii"),
    ("NaN voxels", "BraTS2021_00007", "NaN or Inf voxels in BraTS2021_00007_t1ce.nii"),
    ("Inf voxels", "BraTS2021_00008", "NaN or Inf voxels in BraTS2021_00008_t1ce.nii"),
    ("all-zero modality", "BraTS2021_00009", "BraTS2021_00009_flair.nii is all zero"),
    ("corrupt gzip", "BraTS2021_00010", "BraTS2021_00010_flair.nii.gz: corrupt or truncated image data"),
    ("truncated .nii", "BraTS2021_00011", "BraTS2021_00011_t1.nii: truncated or corrupt (the header describes"),
    ("truncated .nii.gz", "BraTS2021_00012", "BraTS2021_00012_t1.nii.gz: corrupt or truncated image data"),
    ("not NIfTI at all", "BraTS2021_00013", "BraTS2021_00013_t1ce.nii: not a readable NIfTI file"),
    ("4D image", "BraTS2021_00014", "BraTS2021_00014_t2.nii: 4D image (240, 240, 155, 2), expected a 3D volume"),
    ("header claims an absurd size", "BraTS2021_00015", "header claims (30000, 30000, 30000) voxels, refusing"),
    ("case ID with path characters", "BraTS2021_00016", "'up\\\\..\\\\..\\\\etc' is not a safe file name"),
]


@pytest.fixture(scope="module")
def batch(tmp_path_factory, background_bundle):
    """One `brats segment` run over every bad case beside two good ones (one reached through
    symlinks to outside the input); the output folder holds a dangling symlink at the linked
    case's output name, pointing outside."""
    root = tmp_path_factory.mktemp("batch")
    inp, out, outside = root / "in", root / "out", root / "outside"
    image = synthetic_image()
    _case(inp, GOOD, image)
    (inp / GOOD / "BraTS2021_00001_flair_brainmask.nii.gz").write_bytes(b"")  # a foreign NIfTI name
    (inp / GOOD / "README.txt").write_text("not an image")
    for row, case_id, _ in CASE_ROWS:
        _break(inp, case_id, image, row)
    # A symlinked case folder whose files are symlinks again, both pointing outside the input.
    _case(outside / "elsewhere", LINKED, image)
    (outside / "linked-folder").mkdir()
    for path in (outside / "elsewhere" / LINKED).iterdir():
        (outside / "linked-folder" / path.name).symlink_to(path)
    (inp / LINKED).symlink_to(outside / "linked-folder", target_is_directory=True)
    out.mkdir()
    (out / f"{LINKED}.nii.gz").symlink_to(outside / "planted.nii.gz")  # dangling, outside
    before = {"in": snapshot(inp), "outside": snapshot(outside)}
    result = runner.invoke(app, ["segment", str(inp), str(out), "--weights", str(background_bundle.root)])
    return {
        "result": result,
        "in": inp,
        "out": out,
        "outside": outside,
        "before": before,
        "after": {"in": snapshot(inp), "outside": snapshot(outside)},
    }


def _assert_others_fine(batch) -> None:
    out = batch["out"]
    assert sorted(p.name for p in out.iterdir()) == [f"{GOOD}.nii.gz", f"{LINKED}.nii.gz"]
    assert_valid_output(out / f"{GOOD}.nii.gz")
    assert_valid_output(out / f"{LINKED}.nii.gz")
    assert leftovers(out, batch["in"]) == []


@pytest.mark.parametrize("row, case_id, message", CASE_ROWS, ids=[row for row, _, _ in CASE_ROWS])
def test_segment_bad_case_fails_alone(batch, row, case_id, message):
    result = batch["result"]
    assert result.exit_code == 1, result.output
    shown_id = "up\\..\\..\\etc" if row == "case ID with path characters" else case_id
    lines = [line for line in result.output.splitlines() if line.startswith(f"error: {shown_id}: ")]
    assert len(lines) == 1, result.output
    assert message in lines[0]
    assert not (batch["out"] / f"{case_id}.nii.gz").exists()
    _assert_others_fine(batch)


def test_segment_unknown_extra_files_are_ignored_with_a_note(batch):
    output = batch["result"].output
    assert "note:" in output and "BraTS2021_00001_flair_brainmask.nii.gz: not a BraTS modality name, ignored" in output
    assert "README.txt" not in output  # non-NIfTI files are not even mentioned
    assert not any(line.startswith(f"error: {GOOD}") for line in output.splitlines())
    _assert_others_fine(batch)


def test_segment_symlinked_case_and_output_links_never_write_outside(batch):
    """A symlinked case folder and symlinked files are read like any other; the dangling output
    symlink pointing outside is replaced by the output file, never written through."""
    _assert_others_fine(batch)
    assert not (batch["outside"] / "planted.nii.gz").exists()
    assert batch["after"] == batch["before"]  # input and outside untouched


# Runs that cannot start at all: exit 2, nothing written.
def _weights_variant(bundle_root: Path, target: Path, how: str) -> Path:
    shutil.copytree(bundle_root, target)
    manifest = json.loads((target / MANIFEST).read_text())
    if how == "wrong checksum":
        path = target / "wt_fold0.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "missing file":
        (target / "et_fold0.safetensors").unlink()
    elif how == "newer manifest format":
        manifest["format_version"] += 1
    elif how == "onnx manifest with the torch backend":
        manifest["backend"] = "onnx"
        for stage in manifest["stages"].values():
            for fold in stage["folds"]:
                onnx = Path(fold["file"]).with_suffix(".onnx").name
                (target / fold["file"]).rename(target / onnx)
                fold["file"], fold["sha256"] = onnx, sha256_file(target / onnx)
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


WEIGHT_ROWS = [
    ("wrong checksum", "wt_fold0.safetensors: checksum mismatch (corrupt or replaced weight file)"),
    ("missing file", "et_fold0.safetensors: weight file listed in the manifest is missing"),
    ("newer manifest format", "format version 2 is newer than this brats supports (1); upgrade brats"),
    ("onnx manifest with the torch backend", "this is an onnx bundle, not a torch one; use --backend onnx"),
]


@pytest.fixture(scope="module")
def one_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    _case(root / "in", GOOD, synthetic_image())
    return root / "in"


@pytest.mark.parametrize("how, message", WEIGHT_ROWS, ids=[how for how, _ in WEIGHT_ROWS])
def test_segment_unusable_weights_exit_2(tmp_path, background_bundle, one_case, how, message):
    weights = _weights_variant(background_bundle.root, tmp_path / "weights", how)
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(one_case), str(out), "--weights", str(weights)])
    assert result.exit_code == 2, result.output
    assert f"error: {weights}" in result.output and message in result.output
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(
    "how, message",
    [
        ("empty input folder", "no BraTS cases found (expected <ID>_flair.nii.gz or <ID>-t2f.nii.gz files)"),
        ("input folder does not exist", "input folder does not exist"),
        ("output path under a regular file", "cannot create output folder"),
        ("immutable output folder", "output folder is not writable"),
    ],
)
def test_segment_unusable_input_or_output_exit_2(tmp_path, background_bundle, one_case, how, message):
    inp, out = one_case, tmp_path / "out"
    if how == "empty input folder":
        inp = tmp_path / "empty"
        inp.mkdir()
    elif how == "input folder does not exist":
        inp = tmp_path / "nowhere"
    elif how == "output path under a regular file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "out"
    elif how == "immutable output folder":
        out.mkdir()
        if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available on this filesystem")
    try:
        result = runner.invoke(app, ["segment", str(inp), str(out), "--weights", str(background_bundle.root)])
    finally:
        if how == "immutable output folder":
            subprocess.run(["chattr", "-i", str(out)], check=True)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists() or list(out.iterdir()) == []


def _unprivileged(folder: Path) -> list[str] | None:
    """The command prefix to run as `nobody`, with `folder` reachable; None when impossible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    for parent in [folder, *folder.parents]:
        if parent == Path(parent.anchor):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


def _brats(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "brats_cli", *map(str, args)], env=env, **kwargs)


def test_segment_output_folder_unwritable_for_a_normal_user(background_bundle):
    """Tests run as root, which ignores permissions: the run is made as `nobody`, for whom a
    root-owned 0755 folder is read-only (what a container user meets with a read-only mount)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="brats-unwritable-") as name:
        root = Path(name)
        prefix = _unprivileged(root)
        if prefix is None:
            pytest.skip("running as root without setpriv: cannot drop privileges to test permissions")
        shutil.copytree(background_bundle.root, root / "weights")
        _case(root / "in", GOOD, synthetic_image())
        (root / "out").mkdir()
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        for out, message in (
            (root / "out", "output folder is not writable"),
            (root / "out" / "new", f"cannot create output folder ({root / 'out'} is not writable)"),
        ):
            command = [sys.executable, "-m", "brats_cli", "segment", str(root / "in"), str(out)]
            run = subprocess.run(
                [*prefix, *command, "--weights", str(root / "weights")],
                env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "HOME": name},
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert run.returncode == 2, run.stderr
            assert f"error: {out}" in run.stderr and message in run.stderr
            assert "Traceback" not in run.stderr
        assert list((root / "out").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The evaluate table.

SMALL = (40, 36, 30)


def _labels(shift: int = 0) -> np.ndarray:
    labels = np.zeros(SMALL, dtype=np.uint8)
    grid = np.indices(SMALL)
    radius = np.sqrt((grid[0] - 20 - shift) ** 2 + (grid[1] - 18) ** 2 + (grid[2] - 15) ** 2)
    labels[radius <= 10], labels[radius <= 6], labels[radius <= 4] = 2, 4, 1
    return labels


def _bad_prediction(path: Path, how: str) -> None:
    if how == "corrupt gzip":
        raw = bytearray(gzip.compress(nib.Nifti1Image(_labels(), LPS_AFFINE).to_bytes()))
        raw[len(raw) // 2 : len(raw) // 2 + 16] = b"\xff" * 16
        path.write_bytes(bytes(raw))
    elif how == "truncated file":
        raw = gzip.compress(nib.Nifti1Image(_labels(), LPS_AFFINE).to_bytes())
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "not NIfTI at all":
        path.write_bytes(b"case,region,dice\n" * 50)
    elif how == "4D image":
        _save(path, np.zeros((*SMALL, 2), np.uint8))
    elif how == "header claims an absurd size":
        _absurd_header(path)
    elif how == "NaN voxels":
        data = _labels().astype(np.float32)
        data[3, 3, 3] = np.nan
        _save(path, data)
    elif how == "shape differs from the ground truth":
        _save(path, np.zeros((40, 36, 31), np.uint8))
    elif how == "affine differs from the ground truth":
        shifted = LPS_AFFINE.copy()
        shifted[2, 3] = 3.0
        _save(path, _labels(), shifted)
    else:
        raise AssertionError(how)


EVALUATE_ROWS = [
    ("corrupt gzip", "corrupt or truncated image data"),
    ("truncated file", "corrupt or truncated image data"),
    ("not NIfTI at all", "not a readable NIfTI file"),
    ("4D image", "4D image (40, 36, 30, 2), expected a 3D volume"),
    ("header claims an absurd size", "header claims (30000, 30000, 30000) voxels, refusing to read"),
    ("NaN voxels", "NaN or Inf voxels in a label map"),
    ("shape differs from the ground truth", "shape (40, 36, 31) of BraTS2021_00107.nii.gz differs"),
    ("affine differs from the ground truth", "affine of BraTS2021_00108.nii.gz differs from the ground truth's"),
]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    truth, predictions = root / "gt", root / "pred"
    predictions.mkdir()
    cases = ["BraTS2021_00100", *(f"BraTS2021_{101 + i:05d}" for i in range(len(EVALUATE_ROWS)))]
    for case_id in cases:
        (truth / case_id).mkdir(parents=True)
        _save(truth / case_id / f"{case_id}_seg.nii.gz", _labels())
    _save(predictions / f"{cases[0]}.nii.gz", _labels(shift=1))
    for case_id, (how, _) in zip(cases[1:], EVALUATE_ROWS, strict=True):
        _bad_prediction(predictions / f"{case_id}.nii.gz", how)
    _save(predictions / "BraTS2021_09999.nii.gz", _labels())  # an extra prediction without ground truth
    csv = root / "scores.csv"
    result = runner.invoke(app, ["evaluate", str(predictions), str(truth), "--csv", str(csv)])
    return {"result": result, "csv": csv, "root": root, "cases": cases}


@pytest.mark.parametrize("row, message", EVALUATE_ROWS, ids=[row for row, _ in EVALUATE_ROWS])
def test_evaluate_bad_prediction_fails_alone(evaluated, row, message):
    result = evaluated["result"]
    assert result.exit_code == 1, result.output
    case_id = evaluated["cases"][1 + [r for r, _ in EVALUATE_ROWS].index(row)]
    lines = [line for line in result.output.splitlines() if line.startswith(f"error: {case_id}: ")]
    assert len(lines) == 1 and message in lines[0], result.output
    scored = evaluated["csv"].read_text().splitlines()
    assert [line.split(",")[:2] for line in scored[1:]] == [[evaluated["cases"][0], r] for r in ("WT", "TC", "ET")]
    assert all(0.5 < float(line.split(",")[2]) < 1.0 for line in scored[1:])
    assert leftovers(evaluated["root"]) == []


def test_evaluate_unknown_extra_prediction_is_ignored_with_a_note(evaluated):
    assert "BraTS2021_09999.nii.gz: no ground truth for case BraTS2021_09999, ignored" in evaluated["result"].output


@pytest.mark.parametrize(
    "how, message",
    [
        ("empty prediction folder", "no predictions found (expected <ID>.nii.gz files)"),
        ("prediction folder does not exist", "prediction path does not exist"),
        ("two predictions for one case", "two predictions for case BraTS2021_00100"),
        ("immutable --csv folder", "scores.csv: folder for --csv is not writable"),
    ],
)
def test_evaluate_unusable_input_or_output_exit_2(tmp_path, how, message):
    truth, predictions, csv = tmp_path / "gt", tmp_path / "pred", tmp_path / "csv" / "scores.csv"
    predictions.mkdir()
    csv.parent.mkdir()
    truth.mkdir()
    _save(truth / "BraTS2021_00100_seg.nii.gz", _labels())
    if how != "empty prediction folder":
        _save(predictions / "BraTS2021_00100.nii.gz", _labels())
    if how == "prediction folder does not exist":
        predictions = tmp_path / "nowhere"
    elif how == "two predictions for one case":
        _save(predictions / "BraTS2021_00100.nii", _labels())
    elif how == "immutable --csv folder" and subprocess.run(["chattr", "+i", str(csv.parent)]).returncode != 0:
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        result = runner.invoke(app, ["evaluate", str(predictions), str(truth), "--csv", str(csv)])
    finally:
        subprocess.run(["chattr", "-i", str(csv.parent)], capture_output=True)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert list(csv.parent.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Absurd sizes are refused before anything is allocated.


@pytest.mark.parametrize("extension", [".nii", ".nii.gz"])
def test_a_header_claiming_more_data_than_the_file_holds_is_refused_cheaply(tmp_path, extension):
    """Within the voxel limit, but the file cannot hold the data: refused from the file size,
    before nibabel allocates a buffer for the claimed data (1.1 GB of float64 here)."""
    header = nib.Nifti1Header()
    header.set_data_shape((480, 480, 620))  # 16x BraTS, the limit, as float64
    header.set_data_dtype(np.float64)
    header["vox_offset"] = 352
    raw = bytearray(nib.Nifti1Image(np.ones((4, 4, 4), np.float64), LPS_AFFINE).to_bytes())
    raw[:348] = header.binaryblock
    path = tmp_path / f"claim{extension}"
    path.write_bytes(gzip.compress(bytes(raw)) if extension == ".nii.gz" else bytes(raw))
    for reader in (io.read_image, io.read_label_map):
        tracemalloc.start()
        try:
            with pytest.raises(ImageReadError, match=r"truncated or corrupt \(the header describes 1142784352 bytes"):
                reader(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 * 2**20, peak


def test_an_absurd_header_is_refused_under_a_small_address_space_limit(tmp_path):
    """A subprocess limited to 1 GiB of address space reads the 30000^3 claim: the refusal is a
    clean ImageReadError, not a MemoryError or a kill."""
    path = tmp_path / "absurd.nii"
    _absurd_header(path)
    code = (
        "import resource, sys\n"
        "from brats_cli.io import read_image\n"
        "from brats_cli.errors import ImageReadError\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "try:\n    read_image(sys.argv[1])\n"
        "except ImageReadError as error:\n    print('refused:', error)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "refused:" in run.stdout and "header claims (30000, 30000, 30000) voxels" in run.stdout


# ---------------------------------------------------------------------------------------------
# Fuzzing: corrupt headers and bytes at random; reading works or raises our own error.

FUZZ_EXAMPLES = int(os.environ.get("BRATS_FUZZ_EXAMPLES", "200"))
FUZZ_SHAPE = (8, 8, 6)
FUZZ_COUNT = {"inputs": 0, "readable": 0}


def _fuzz_sources() -> dict[str, bytes]:
    """Small valid files of several data types (the bytes of a `.nii`), corrupted per example."""
    rng = np.random.default_rng(0)
    sources = {}
    for dtype in (np.int16, np.uint8, np.float32, np.float64):
        data = (rng.random(FUZZ_SHAPE) * 100 + 1).astype(dtype)
        image = nib.Nifti1Image(data, LPS_AFFINE)
        image.set_qform(LPS_AFFINE, code=1)
        sources[np.dtype(dtype).name] = image.to_bytes()
    sources["nifti2"] = nib.Nifti2Image(np.ones(FUZZ_SHAPE, np.int16), LPS_AFFINE).to_bytes()
    return sources


SOURCES = _fuzz_sources()
HEADER_BYTES = 352  # the NIfTI-1 header and its extension flag; NIfTI-2's is 544, also in range below


@st.composite
def corrupted_files(draw):
    """(bytes, extension): a valid file with bytes overwritten (mostly in the header), optionally
    truncated or extended, stored as .nii, as .nii.gz (corrupted before compression), or as a
    .nii.gz whose compressed bytes are corrupted."""
    source = bytearray(SOURCES[draw(st.sampled_from(sorted(SOURCES)))])
    edits = draw(
        st.lists(
            st.tuples(
                st.one_of(st.integers(0, 544), st.integers(0, len(source) - 1)),
                st.one_of(st.integers(0, 255), st.sampled_from([0x00, 0xFF, 0x7F, 0x80])),
                st.integers(1, 8),  # run length: multi-byte fields (dims, offsets) change as a whole
            ),
            min_size=1,
            max_size=12,
        )
    )
    for position, value, length in edits:
        source[position : position + length] = bytes([value]) * len(source[position : position + length])
    cut = draw(st.one_of(st.none(), st.integers(0, len(source))))
    if cut is not None:
        source = source[:cut]
    source += draw(st.binary(max_size=64))
    storage = draw(st.sampled_from(["nii", "nii.gz", "corrupt gzip"]))
    if storage == "nii":
        return bytes(source), ".nii"
    compressed = bytearray(gzip.compress(bytes(source), compresslevel=1))
    if storage == "corrupt gzip":
        for position, value in draw(st.lists(st.tuples(st.integers(0, len(compressed) - 1), st.integers(0, 255)))):
            compressed[position] = value
    return bytes(compressed), ".nii.gz"


def _fuzz_settings(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def _check_readers(folder: Path, content: bytes, extension: str) -> None:
    FUZZ_COUNT["inputs"] += 1
    path = folder / f"fuzz{extension}"
    for stale in folder.glob("fuzz.*"):
        stale.unlink()
    path.write_bytes(content)
    for reader in (io.read_image, io.read_label_map):
        try:
            data, geometry = reader(path)
        except ImageReadError as error:
            assert str(error).startswith(str(path)) and "\n" not in str(error)
        else:
            FUZZ_COUNT["readable"] += 1
            assert data.shape == geometry.shape and len(geometry.shape) == 3


def _check_load_case(folder: Path, content: bytes, extension: str, monkeypatch) -> None:
    """load_case on four small modalities, one of them corrupt (BraTS space shrunk to the fuzz
    shape, so every check and the data path run on small volumes)."""
    monkeypatch.setattr(io, "BRATS_SHAPE", FUZZ_SHAPE)
    case_folder = folder / "BraTS2021_00001"
    shutil.rmtree(case_folder, ignore_errors=True)
    case_folder.mkdir(parents=True)
    for suffix in ("flair", "t1", "t1ce"):
        (case_folder / f"BraTS2021_00001_{suffix}.nii").write_bytes(SOURCES["int16"])
    (case_folder / f"BraTS2021_00001_t2{extension}").write_bytes(content)
    (case,) = io.discover_cases(case_folder).cases
    try:
        image, _ = io.load_case(case)
    except CaseError as error:
        assert error.case_id == "BraTS2021_00001" and "\n" not in str(error)
    else:
        assert image.shape == (4, *FUZZ_SHAPE) and image.dtype == np.float32 and np.isfinite(image).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy casts of corrupt values: warned, then refused
@given(corrupted=corrupted_files())
@_fuzz_settings(FUZZ_EXAMPLES)
def test_fuzz_readers_work_or_raise_image_read_error(tmp_path, corrupted):
    _check_readers(tmp_path, *corrupted)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy casts of corrupt values: warned, then refused
@given(corrupted=corrupted_files())
@_fuzz_settings(max(FUZZ_EXAMPLES // 2, 1))
def test_fuzz_load_case_works_or_raises_case_error(tmp_path, monkeypatch, corrupted):
    _check_load_case(tmp_path, *corrupted, monkeypatch)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy casts of corrupt values: warned, then refused
@given(corrupted=corrupted_files())
@_fuzz_settings(max(FUZZ_EXAMPLES, 5000))
def test_fuzz_readers_long_run(tmp_path, corrupted):
    _check_readers(tmp_path, *corrupted)


# ---------------------------------------------------------------------------------------------
# Faults on a real process.


def _poll_until(predicate, timeout: float, process: subprocess.Popen | None = None, interval: float = 0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            return predicate()
        time.sleep(interval)
    return None


def _spawn_segment(inp: Path, out: Path, weights: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    command = [sys.executable, "-m", "brats_cli", "segment", str(inp), str(out), "--weights", str(weights)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(
    "signal_number, exit_code",
    [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
    ids=["SIGTERM", "SIGINT"],
)
def test_segment_stops_cleanly_on_a_signal(tmp_path, background_bundle, signal_number, exit_code):
    inp, out = tmp_path / "in", tmp_path / "out"
    image = synthetic_image()
    for case_id in ("BraTS2021_00001", "BraTS2021_00002"):
        _case(inp, case_id, image)
    process = _spawn_segment(inp, out, background_bundle.root)
    try:
        first = _poll_until(lambda: (out / "BraTS2021_00001.nii.gz").exists(), 240, process)
        assert first and process.poll() is None, "the first case did not finish while the run was going"
        process.send_signal(signal_number)  # the second case is in progress
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == exit_code, stderr
    assert "interrupted; 1 case(s) finished and written (BraTS2021_00001); rerun the same command" in stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir()) == ["BraTS2021_00001.nii.gz"]
    assert_valid_output(out / "BraTS2021_00001.nii.gz")


@pytest.mark.slow
def test_segment_killed_mid_batch_resumes_to_identical_outputs(tmp_path):
    """SIGKILL (no handler runs) while a case is being written, then the same command again:
    finished cases skipped, the killed one redone, the dead run's temporary removed, outputs equal
    to an uninterrupted run's; and only complete files ever appear under a final name."""
    bundle = flair_bundle(tmp_path / "weights", window=(64, 64, 64))
    inp = tmp_path / "in"
    ids = ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"]
    for seed, case_id in enumerate(ids):
        _case(inp, case_id, synthetic_image(seed=seed))
    reference = tmp_path / "reference"
    run = _brats("segment", inp, reference, "--weights", bundle.root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr

    out = tmp_path / "out"
    seen_final: set[str] = set()

    def watch() -> list[str]:
        """Check every final-name file the moment it appears (it must already be complete);
        return the temporaries of the second case, if one is being written."""
        names = [p.name for p in out.iterdir()] if out.exists() else []
        for name in names:
            if TEMP_MARKER not in name and name not in seen_final:
                assert name in {f"{i}.nii.gz" for i in ids}, name
                assert gzip.decompress((out / name).read_bytes())  # complete: a whole gzip stream
                seen_final.add(name)
        return [n for n in names if TEMP_MARKER in n and n.startswith(f".{ids[1]}")]

    process = _spawn_segment(inp, out, bundle.root)
    try:
        temporaries = _poll_until(watch, 600, process, interval=0.001)
        assert process.poll() is None, "the run ended before the second case was written"
        process.kill()  # SIGKILL while the second case's temporary is being written
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    watch()
    assert temporaries, "never saw the second case's temporary file"
    assert f"{ids[1]}.nii.gz" not in seen_final
    assert (out / f"{ids[0]}.nii.gz").exists() and not (out / f"{ids[1]}.nii.gz").exists()

    rerun = _brats("segment", inp, out, "--weights", bundle.root, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"│ {ids[0]} │ skipped: output exists" in rerun.stderr
    assert f"│ {ids[1]} │ done" in rerun.stderr and f"│ {ids[2]} │ done" in rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.nii.gz" for i in ids]  # temporary gone
    for case_id in ids:
        ours, theirs = nib.load(out / f"{case_id}.nii.gz"), nib.load(reference / f"{case_id}.nii.gz")
        assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
        assert np.array_equal(ours.affine, theirs.affine)
        assert np.asarray(ours.dataobj).any()  # the tumour was found: a real comparison


# In-process faults: the networks are replaced by a numpy predictor (the backend seam), so the
# tests exercise the CLI and the file handling without network time.


class _Predictor:
    device = "cpu"

    def __init__(self) -> None:
        from brats_cli.choices import Precision

        self.precision = Precision.FP32

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.zeros((1, *image.shape[1:]), np.float32)  # no tumour: the region stages are skipped


@pytest.fixture
def numpy_predictors(monkeypatch):
    import brats_cli.predictors.torch_backend

    fake = dict.fromkeys(Stage, _Predictor())
    monkeypatch.setattr(brats_cli.predictors.torch_backend, "torch_predictors", lambda bundle, settings: fake)


@pytest.mark.usefixtures("numpy_predictors")
def test_disk_full_while_writing_fails_the_case_and_keeps_earlier_outputs(tmp_path, background_bundle, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    image = synthetic_image()
    for case_id in ("BraTS2021_00001", "BraTS2021_00002"):
        _case(inp, case_id, image)
    real_save = nib.save

    def save(image, filename):
        if "BraTS2021_00002" in str(filename):
            Path(filename).write_bytes(b"\x1f\x8b half a file")  # a half-written temporary
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real_save(image, filename)

    monkeypatch.setattr(nib, "save", save)
    result = runner.invoke(app, ["segment", str(inp), str(out), "--weights", str(background_bundle.root)])
    assert result.exit_code == 1, result.output
    assert f"error: BraTS2021_00002: {out / 'BraTS2021_00002.nii.gz'}: cannot write (No space left on device)" in (
        result.output
    )
    assert sorted(p.name for p in out.iterdir()) == ["BraTS2021_00001.nii.gz"]
    assert_valid_output(out / "BraTS2021_00001.nii.gz")


@pytest.mark.slow
def test_disk_full_on_a_real_small_tmpfs(tmp_path, background_bundle):
    """A 1 MiB tmpfs mounted as the output folder (private mount namespace): the first case is
    written, the disk is filled, the second fails with ENOSPC; the first output stays intact."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a private tmpfs")
    inp, report = tmp_path / "in", tmp_path / "report"
    image = synthetic_image()
    _case(inp / "a", "BraTS2021_00001", image)
    _case(inp / "b", "BraTS2021_00002", image)
    report.mkdir()
    mount = tmp_path / "mnt"
    mount.mkdir()
    python = f"env PYTHONPATH={ROOT} COLUMNS=200 {sys.executable} -m brats_cli segment"
    weights = f"--weights {background_bundle.root}"
    script = f"""
        mount -t tmpfs -o size=1m tmpfs {mount} || exit 77
        {python} {inp / "a"} {mount} {weights} 2> {report}/a.err; echo $? > {report}/a.rc
        dd if=/dev/zero of={mount}/.filler bs=4k 2>/dev/null; rm -f {mount}/.filler.keep
        {python} {inp / "b"} {mount} {weights} 2> {report}/b.err; echo $? > {report}/b.rc
        rm -f {mount}/.filler
        cp -a {mount}/. {report}/out/ 2>/dev/null || mkdir -p {report}/out
        ls -A {mount} > {report}/listing
    """
    run = subprocess.run(["unshare", "-m", "sh", "-c", f"mkdir -p {report}/out; {script}"], capture_output=True)
    if run.returncode == 77:
        pytest.skip("cannot mount a tmpfs here")
    assert (report / "a.rc").read_text().strip() == "0", (report / "a.err").read_text()
    assert (report / "b.rc").read_text().strip() == "1", (report / "b.err").read_text()
    assert "BraTS2021_00002" in (report / "b.err").read_text()
    assert "cannot write (No space left on device)" in (report / "b.err").read_text()
    assert (report / "listing").read_text().split() == ["BraTS2021_00001.nii.gz"]
    assert_valid_output(report / "out" / "BraTS2021_00001.nii.gz")


def test_read_only_input_folder(tmp_path, background_bundle, numpy_predictors):
    """An immutable input tree (even root cannot write there): the run reads it and writes only
    to the output folder."""
    inp, out = tmp_path / "in", tmp_path / "out"
    _case(inp, GOOD, synthetic_image())
    frozen = [inp, inp / GOOD, *sorted((inp / GOOD).iterdir())]
    if subprocess.run(["chattr", "+i", *map(str, frozen)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        before = snapshot(inp)
        result = runner.invoke(app, ["segment", str(inp), str(out), "--weights", str(background_bundle.root)])
        assert snapshot(inp) == before
    finally:
        subprocess.run(["chattr", "-i", *map(str, frozen)], check=True)
    assert result.exit_code == 0, result.output
    assert_valid_output(out / f"{GOOD}.nii.gz")


def test_output_on_another_filesystem_than_the_temp_dir(tmp_path, background_bundle, numpy_predictors, monkeypatch):
    """TMPDIR on one filesystem, the output on another (/dev/shm): temporaries are written beside
    the output, so every rename stays in one folder and one filesystem."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to put the output on")
    inp = tmp_path / "in"
    _case(inp, GOOD, synthetic_image())
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    renames = []
    real_replace = os.replace

    def replace(source, target):
        renames.append((Path(source), Path(target), os.stat(source).st_dev))
        return real_replace(source, target)

    monkeypatch.setattr(io.os, "replace", replace)
    with _scratch(shm) as out:
        result = runner.invoke(app, ["segment", str(inp), str(out), "--weights", str(background_bundle.root)])
        assert result.exit_code == 0, result.output
        assert_valid_output(out / f"{GOOD}.nii.gz")
        assert [(s.parent, t) for s, t, _ in renames] == [(out, out / f"{GOOD}.nii.gz")]
        assert renames[0][2] == os.stat(out).st_dev != os.stat(tmp_path).st_dev
        assert leftovers(out) == []


@contextlib.contextmanager
def _scratch(parent: Path):
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="brats-test-", dir=parent))
    try:
        yield folder / "out"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Concurrent runs into one folder: stale temporaries are only those of dead processes.


def test_only_dead_processes_temporaries_are_removed(tmp_path):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        names = {
            "live": f".BraTS2021_00001{TEMP_MARKER}{alive.pid}.nii.gz",
            "dead": f".BraTS2021_00002{TEMP_MARKER}{dead.pid}.nii.gz",
            "own": f".BraTS2021_00003{TEMP_MARKER}{os.getpid()}.nii.gz",  # a dead run's, PID reused
            "csv": f".scores{TEMP_MARKER}{dead.pid}.csv",
            "foreign": f".notes{TEMP_MARKER}draft.txt",  # not one of ours: no PID
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        removed = io.remove_stale_temporaries(tmp_path)
        assert sorted(p.name for p in removed) == sorted([names["dead"], names["own"], names["csv"]])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["live"], names["foreign"]])
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.usefixtures("numpy_predictors")
def test_a_second_run_into_the_same_folder_keeps_the_first_runs_temporary(tmp_path, background_bundle):
    inp, out = tmp_path / "in", tmp_path / "out"
    _case(inp, GOOD, synthetic_image())
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        working = out / f".BraTS2021_00002{TEMP_MARKER}{other.pid}.nii.gz"  # the other run, mid-write
        working.write_bytes(b"being written by another run")
        result = runner.invoke(app, ["segment", str(inp), str(out), "--weights", str(background_bundle.root)])
        assert result.exit_code == 0, result.output
        assert working.read_bytes() == b"being written by another run"
        assert_valid_output(out / f"{GOOD}.nii.gz")
    finally:
        other.kill()
        other.wait()


# ---------------------------------------------------------------------------------------------
# Security: writing never follows links out of the output folder; weights never unpickle.


def test_writing_replaces_an_output_symlink_and_never_follows_it(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    victim = outside / "victim.nii.gz"
    victim.write_bytes(b"someone else's file")
    (out / "BraTS2021_00001.nii.gz").symlink_to(victim)
    # A link planted at the temporary name itself (this process's PID) pointing outside too.
    target = out / "BraTS2021_00002.nii.gz"
    io.temporary_sibling(target).symlink_to(outside / "planted.nii.gz")
    labels = np.zeros(BRATS_SHAPE, np.uint8)
    labels[100:110, 100:110, 70:80] = 2
    geometry = io.Geometry(LPS_AFFINE, nib.Nifti1Image(labels, LPS_AFFINE).header, BRATS_SHAPE)
    io.write_label_map(labels, geometry, out / "BraTS2021_00001.nii.gz")
    io.write_label_map(labels, geometry, target)
    assert victim.read_bytes() == b"someone else's file"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.nii.gz"]
    for name in ("BraTS2021_00001.nii.gz", "BraTS2021_00002.nii.gz"):
        assert_valid_output(out / name)
        assert np.array_equal(np.asarray(nib.load(out / name).dataobj), labels)
    assert leftovers(out) == []


def test_weights_load_without_unpickling(background_bundle, monkeypatch):
    """Loading a bundle's networks never reaches pickle or torch.load (safetensors only)."""
    import pickle

    import torch

    from brats_cli.bundle import load_bundle
    from brats_cli.predictors.torch_backend import load_torch_models

    def refuse(*_args, **_kwargs):
        raise AssertionError("weights went through pickle")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    models = load_torch_models(load_bundle(background_bundle.root), Stage.BASE)
    assert len(models) == 1 and sum(p.abs().sum().item() for p in models[0].parameters()) > 0


class Planted:
    """Unpickling this runs `Path(marker).touch()`: the marker appearing proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ---------------------------------------------------------------------------------------------
# ONNX bundles (`brats export`) and the torch backend: the wrong bundle for a backend, damaged
# ONNX files, and weight files that are really pickles. Each refused before any case: exit 2,
# one error line, nothing written.


@pytest.fixture(scope="module")
def onnx_bundles(tmp_path_factory):
    """A tiny random torch bundle and its ONNX export made by `brats export`."""
    from conftest import random_bundle

    root = tmp_path_factory.mktemp("onnx-rows")
    source = random_bundle(root / "torch", window=(64, 64, 64))
    result = runner.invoke(app, ["export", "--weights", str(source.root), "--out", str(root / "onnx")])
    assert result.exit_code == 0, result.output
    return {"torch": source.root, "onnx": root / "onnx"}


def _replace_weight_file(bundle: Path, name: str, content: bytes) -> None:
    """Put `content` in a weight file and record its checksum, so only what the file is can stop it."""
    (bundle / name).write_bytes(content)
    manifest = json.loads((bundle / MANIFEST).read_text())
    for stage in manifest["stages"].values():
        for fold in stage["folds"]:
            if fold["file"] == name:
                fold["sha256"] = sha256_file(bundle / name)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def _pickled_weights(marker: Path) -> bytes:
    """What `torch.save` of a state dict holding a code-running object writes (a zip of pickles)."""
    import io as bytes_io

    import torch

    buffer = bytes_io.BytesIO()
    torch.save({"head.bias": torch.zeros(1), "payload": Planted(marker)}, buffer)
    return buffer.getvalue()


ONNX_ROWS = [
    (
        "torch bundle with --backend onnx",
        "torch",
        "onnx",
        "this is a torch bundle, not an onnx one; use --backend torch",
    ),
    (
        "onnx bundle with --backend torch",
        "onnx",
        "torch",
        "this is an onnx bundle, not a torch one; use --backend onnx",
    ),
    ("onnx checksum mismatch", "onnx", "onnx", "wt_fold0.onnx: checksum mismatch (corrupt or replaced weight file)"),
    ("onnx file missing", "onnx", "onnx", "tc_fold0.onnx: weight file listed in the manifest is missing"),
    ("onnx file that is a pickle", "onnx", "onnx", "et_fold0.onnx: ONNX Runtime cannot load this model ("),
    ("onnx file that is a torch checkpoint", "onnx", "onnx", "base_fold0.onnx: ONNX Runtime cannot load this model ("),
    ("safetensors file that is a pickle", "torch", "torch", "et_fold0.safetensors: cannot load weights ("),
    ("safetensors file that is a torch checkpoint", "torch", "torch", "wt_fold0.safetensors: cannot load weights ("),
]


@pytest.mark.parametrize("how, kind, backend, message", ONNX_ROWS, ids=[row[0] for row in ONNX_ROWS])
def test_segment_wrong_or_damaged_bundle_for_the_backend_exit_2(
    tmp_path, onnx_bundles, one_case, monkeypatch, how, kind, backend, message
):
    import pickle

    import torch

    weights = tmp_path / "weights"
    shutil.copytree(onnx_bundles[kind], weights)
    marker = tmp_path / "code-ran"
    if how == "onnx checksum mismatch":
        with open(weights / "wt_fold0.onnx", "r+b") as handle:
            handle.seek(200)
            byte = handle.read(1)
            handle.seek(200)
            handle.write(bytes([byte[0] ^ 0xFF]))
    elif how == "onnx file missing":
        (weights / "tc_fold0.onnx").unlink()
    elif how in ("onnx file that is a pickle", "safetensors file that is a pickle"):
        name = "et_fold0.onnx" if kind == "onnx" else "et_fold0.safetensors"
        _replace_weight_file(weights, name, pickle.dumps({"head.bias": Planted(marker)}))
    elif how in ("onnx file that is a torch checkpoint", "safetensors file that is a torch checkpoint"):
        name = "base_fold0.onnx" if kind == "onnx" else "wt_fold0.safetensors"
        _replace_weight_file(weights, name, _pickled_weights(marker))

    def refuse(*_args, **_kwargs):
        raise AssertionError("weights went through pickle")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["segment", str(one_case), str(out), "--weights", str(weights), "--backend", backend, "--device", "cpu"]
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert not marker.exists()  # nothing was unpickled
    assert not out.exists() or list(out.iterdir()) == []
