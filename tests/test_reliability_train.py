"""Reliability of `brats train` (issue 10): bad data, unusable folders, kills and damaged checkpoints.

- The bad-input table: every bad case of a training folder reported, one line each, before any
  training (no checkpoint, no recipe or folds recorded, no temporary left; the good cases' cache
  entries stay complete for the next attempt). Discovery problems (a missing or doubled modality, a
  missing seg) stop a run before the images are read, so they share one run and the image and label
  problems another.
- Faults: SIGKILL of a real training process at chosen points (inside an epoch, while a checkpoint
  is half-written, before and after a rename, between last.pt and log.csv) and at seeded random
  points; `--resume` always continues from the last complete checkpoint to the weights of an
  uninterrupted run. A torn or foreign `last.pt` planted by hand stops `--resume` on one line.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_case
from test_reliability import Planted, _break, _save, leftovers, snapshot
from test_train import CROPS_32, _assert_same_training_state, labelled_case, smoke_recipe_file
from typer.testing import CliRunner

from brats_cli.cli.app import app
from brats_cli.files import is_temporary
from brats_cli.training.loop import load_checkpoint, save_atomically

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
GOOD = ("BraTS2021_00001", "BraTS2021_00002")


def _train(recipe: Path, data: Path, out: Path, *extra: str):
    return runner.invoke(app, ["train", "--recipe", str(recipe), "--data", str(data), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def labelled():
    """One labelled synthetic case (canonical LPS, stored as is): every case of the table is a
    copy of it, broken one way."""
    return labelled_case(0)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """The smoke recipe cut to 2 folds of one stage fold, 2 epochs of 32^3 crops."""
    return smoke_recipe_file(
        tmp_path_factory.mktemp("recipe"),
        folds="folds = 2",
        train_folds="train_folds = [0]",
        epochs="epochs = 2",
        **CROPS_32,
    )


def _labelled_case(folder: Path, case_id: str, labelled, how: str | None = None) -> None:
    """A case in `.nii` files with its seg; `how` breaks it like the segment table's row of that name
    (or one of the training-only rows)."""
    image, labels = labelled
    if how in _SEGMENT_ROWS:
        _break(folder, case_id, image, how)
    else:
        write_case(folder, case_id, image, extension=".nii", dtype=np.uint16)
    seg = folder / case_id / f"{case_id}_seg.nii"
    _save(seg, labels)
    if how == "case without seg":
        seg.unlink()
    elif how == "labels outside the convention":
        _save(seg, np.where(labels == 4, 3, labels).astype(np.uint8))
    elif how == "seg not NIfTI":
        seg.write_bytes(b"label,count\n" * 100)
    elif how == "seg 4D":
        _save(seg, np.stack([labels, labels], axis=-1))


_SEGMENT_ROWS = {
    "missing modality",
    "two files for one modality",
    "shape other than 240x240x155",
    "shapes differ between modalities",
    "affines differ between modalities",
    "NaN voxels",
    "Inf voxels",
    "all-zero modality",
    "corrupt gzip",
    "truncated .nii",
    "truncated .nii.gz",
    "not NIfTI at all",
    "4D image",
    "header claims an absurd size",
}

# (row, case ID, message fragment printed as "error: <ID>: ..."): found when the folder is listed.
DISCOVERY_ROWS = [
    ("missing modality", "BraTS2021_00003", "missing modality t2"),
    ("two files for one modality", "BraTS2021_00004", "two files for t1: BraTS2021_00004_t1.nii"),
    ("case without seg", "BraTS2021_00005", "no segmentation (BraTS2021_00005_seg.nii.gz); training needs labels"),
]
# Found when each case is read and preprocessed into the cache.
CONTENT_ROWS = [
    ("shape other than 240x240x155", "BraTS2021_00010", "shape (200, 200, 150) is not BraTS space 240x240x155"),
    ("shapes differ between modalities", "BraTS2021_00011", "shape mismatch: BraTS2021_00011_flair.nii is"),
    ("affines differ between modalities", "BraTS2021_00012", "affine mismatch between BraTS2021_00012_flair.nii"),
    ("NaN voxels", "BraTS2021_00013", "NaN or Inf voxels in BraTS2021_00013_t1ce.nii"),
    ("Inf voxels", "BraTS2021_00014", "NaN or Inf voxels in BraTS2021_00014_t1ce.nii"),
    ("all-zero modality", "BraTS2021_00015", "BraTS2021_00015_flair.nii is all zero"),
    ("corrupt gzip", "BraTS2021_00016", "BraTS2021_00016_flair.nii.gz: corrupt or truncated image data"),
    ("truncated .nii", "BraTS2021_00017", "BraTS2021_00017_t1.nii: truncated or corrupt (the header describes"),
    ("truncated .nii.gz", "BraTS2021_00018", "BraTS2021_00018_t1.nii.gz: corrupt or truncated image data"),
    ("not NIfTI at all", "BraTS2021_00019", "BraTS2021_00019_t1ce.nii: not a readable NIfTI file"),
    ("4D image", "BraTS2021_00020", "BraTS2021_00020_t2.nii: 4D image (240, 240, 155, 2), expected a 3D volume"),
    ("header claims an absurd size", "BraTS2021_00021", "header claims (30000, 30000, 30000) voxels, refusing"),
    (
        "labels outside the convention",
        "BraTS2021_00022",
        "BraTS2021_00022_seg.nii has labels [3] outside the BraTS 2021 convention (0, 1, 2, 4)",
    ),
    ("seg not NIfTI", "BraTS2021_00023", "BraTS2021_00023_seg.nii: not a readable NIfTI file"),
    ("seg 4D", "BraTS2021_00024", "BraTS2021_00024_seg.nii: 4D image (240, 240, 155, 2), expected a 3D volume"),
]


def _table_run(root: Path, rows, labelled, recipe: Path) -> dict:
    data, run = root / "data", root / "run"
    for case_id in GOOD:
        _labelled_case(data, case_id, labelled)
    for row, case_id, _ in rows:
        _labelled_case(data, case_id, labelled, row)
    before = snapshot(data)
    result = _train(recipe, data, run)
    return {"result": result, "data": data, "run": run, "rows": rows, "unchanged": snapshot(data) == before}


@pytest.fixture(scope="module")
def discovery_run(tmp_path_factory, labelled, recipe):
    return _table_run(tmp_path_factory.mktemp("train-discovery"), DISCOVERY_ROWS, labelled, recipe)


@pytest.fixture(scope="module")
def content_run(tmp_path_factory, labelled, recipe):
    return _table_run(tmp_path_factory.mktemp("train-content"), CONTENT_ROWS, labelled, recipe)


def _assert_refused_before_training(table: dict, row: str, case_id: str, message: str) -> list[str]:
    result, run = table["result"], table["run"]
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(f"error: {case_id}: ")]
    assert len(lines) == 1 and message in lines[0], result.output
    rows = table["rows"]
    assert f"{len(rows)} case(s) unusable for training; nothing was trained" in result.output.splitlines()[-1]
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    # Not started, nothing recorded: no checkpoint, no recipe or folds to tie the next attempt.
    assert not run.exists() or sorted(p.name for p in run.iterdir()) in ([], ["cache"])
    assert not list(run.rglob("*.pt")) and leftovers(run, table["data"]) == []
    assert table["unchanged"]  # the data folder is only read
    return sorted(p.name for p in (run / "cache").iterdir()) if (run / "cache").exists() else []


@pytest.mark.parametrize("row, case_id, message", DISCOVERY_ROWS, ids=[r for r, _, _ in DISCOVERY_ROWS])
def test_train_bad_case_found_when_listing_stops_before_reading(discovery_run, row, case_id, message):
    cache = _assert_refused_before_training(discovery_run, row, case_id, message)
    assert cache == []  # nothing was read or preprocessed


@pytest.mark.parametrize("row, case_id, message", CONTENT_ROWS, ids=[r for r, _, _ in CONTENT_ROWS])
def test_train_bad_case_found_when_reading_stops_before_training(content_run, row, case_id, message):
    cache = _assert_refused_before_training(content_run, row, case_id, message)
    # Only the good cases have entries, each complete (meta.json is written last).
    assert [name.rsplit("-", 1)[0] for name in cache] == list(GOOD)
    for name in cache:
        assert sorted(p.name for p in (content_run["run"] / "cache" / name).iterdir()) == [
            "image.npy",
            "labels.npy",
            "meta.json",
        ]


def test_train_good_cases_entries_are_reused_once_the_bad_ones_are_gone(content_run, recipe, tmp_path):
    """The refused run's work is not lost: the good cases alone (linked, so the same files) are
    prepared from the cache it left, and now the recipe and folds are recorded."""
    data = tmp_path / "data"
    data.mkdir()
    for case_id in GOOD:
        (data / case_id).symlink_to(content_run["data"] / case_id, target_is_directory=True)
    run = tmp_path / "run"
    cache = tmp_path / "cache"
    shutil.copytree(content_run["run"] / "cache", cache)
    result = _train(recipe, data, run, "--cache", str(cache), "--prepare-only")
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("cache:")] == [
        f"cache: {case_id} reused" for case_id in GOOD
    ]
    assert sorted(p.name for p in run.iterdir()) == ["folds.json", "recipe.json"]


@pytest.fixture(scope="module")
def good_pair(tmp_path_factory, labelled) -> Path:
    data = tmp_path_factory.mktemp("good")
    for case_id in GOOD:
        _labelled_case(data, case_id, labelled)
    return data


@pytest.mark.parametrize(
    "how, message",
    [
        ("empty input folder", "no BraTS cases found (expected <ID>_flair.nii.gz or <ID>-t2f.nii.gz files)"),
        ("input folder does not exist", "input folder does not exist"),
        ("fewer cases than folds", "1 labelled case(s) for 2 folds; every fold needs one validation case"),
        ("run folder under a regular file", "cannot create run folder ("),
        ("immutable run folder", "run folder is not writable"),
        ("immutable cache folder", "cache folder is not writable"),
    ],
)
def test_train_unusable_folders_exit_2_before_anything_is_written(tmp_path, recipe, good_pair, how, message):
    data, run, cache = good_pair, tmp_path / "run", tmp_path / "cache"
    frozen = None
    if how == "empty input folder":
        data = tmp_path / "empty"
        data.mkdir()
    elif how == "input folder does not exist":
        data = tmp_path / "nowhere"
    elif how == "fewer cases than folds":
        data = tmp_path / "one"
        data.mkdir()
        (data / GOOD[0]).symlink_to(good_pair / GOOD[0], target_is_directory=True)
    elif how == "run folder under a regular file":
        (tmp_path / "file").write_text("")
        run = tmp_path / "file" / "run"
    elif how in ("immutable run folder", "immutable cache folder"):
        frozen = run if how == "immutable run folder" else cache
        frozen.mkdir()
        if subprocess.run(["chattr", "+i", str(frozen)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available on this filesystem")
    try:
        result = _train(recipe, data, run, "--cache", str(cache))
    finally:
        if frozen is not None:
            subprocess.run(["chattr", "-i", str(frozen)], check=True)
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for folder in (run, cache):
        assert not folder.exists() or list(folder.iterdir()) == [], how  # nothing written, not even a record


# ---------------------------------------------------------------------------------------------
# A damaged last.pt planted by hand: --resume stops with one line saying what to do.
#
# Why not fall back: each epoch's last.pt replaces the previous one (there is no older complete
# checkpoint), and best.pt lacks the optimiser, scheduler and RNG states an exact continuation
# needs; continuing from it silently would train a different model than the recipe describes.
# A last.pt the tool wrote is never torn (temporary, fsync, rename), so a damaged one is news the
# user must hear.


def _checkpoint_bytes(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory, labelled, recipe) -> dict:
    """Two good cases and their cache entries, shared by the runs below."""
    root = tmp_path_factory.mktemp("prepared")
    data = root / "data"
    for case_id in GOOD:
        _labelled_case(data, case_id, labelled)
    prepared = _train(recipe, data, root / "prepare", "--cache", str(root / "cache"), "--prepare-only")
    assert prepared.exit_code == 0, prepared.output
    return {"data": data, "cache": root / "cache"}


_RECIPE_LINES = {
    "folds": "folds = 2",
    "train_folds": "train_folds = [0]",
    "epochs": "epochs = 2",
    **CROPS_32,
}

PLANTED_ROWS = [
    ("torn: first half of a real last.pt", "unreadable checkpoint (PytorchStreamReader failed reading zip archive"),
    ("empty file", "unreadable checkpoint ("),
    ("not a checkpoint at all", "unreadable checkpoint ("),
    ("a pickle that would run code", "unreadable checkpoint (Weights only load failed"),
    (
        "best.pt in last.pt's place",
        "not a complete training checkpoint (no optimizer, scheduler, scaler, best_dice, best_epoch, history, rng)",
    ),
    ("a plain tensor", "not a brats training checkpoint"),
]


@pytest.mark.parametrize("how, message", PLANTED_ROWS, ids=[how for how, _ in PLANTED_ROWS])
def test_resume_refuses_a_damaged_last_checkpoint(prepared_run, reference_run, tmp_path, how, message):
    run = tmp_path / "run"
    fold = run / "wt" / "fold0"
    fold.mkdir(parents=True)
    last = (reference_run["fold"] / "last.pt").read_bytes()
    marker = tmp_path / "code-ran"
    content = {
        "torn: first half of a real last.pt": last[: len(last) // 2],
        "empty file": b"",
        "not a checkpoint at all": b"%PDF-1.4 not a checkpoint\n" * 40,
        "a pickle that would run code": pickle.dumps({"epoch": 1, "model": Planted(marker)}, protocol=2),
        "best.pt in last.pt's place": (reference_run["fold"] / "best.pt").read_bytes(),
        "a plain tensor": _checkpoint_bytes(torch.zeros(3)),
    }[how]
    (fold / "last.pt").write_bytes(content)
    recipe = smoke_recipe_file(tmp_path, **_RECIPE_LINES)
    result = _train(
        recipe,
        prepared_run["data"],
        run,
        "--stage",
        "wt",
        "--fold",
        "0",
        "--resume",
        "--cache",
        str(prepared_run["cache"]),
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert errors[0].startswith(f"error: {fold / 'last.pt'}: ") and message in errors[0]
    assert errors[0].endswith(f"restore it, or delete {fold} to train this fold from the start")
    assert (fold / "last.pt").read_bytes() == content  # left as found, for the user to inspect
    assert sorted(p.name for p in fold.iterdir()) == ["last.pt"]  # nothing trained
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# SIGKILL at chosen and random points of a real training process.

# Runs `brats train` with instrumentation: events are counted per epoch ("<epoch>:<event>:<n>",
# epoch 1-based, 0 before the first) and written to BRATS_EVENT_LOG; at the event BRATS_KILL_AT
# the process kills itself with SIGKILL (no handler, no cleanup runs). Events: `loss` (each loss
# computed: training steps, then validation cases), `write:<file>` (a checkpoint's torch.save: the
# kill comes after half its bytes reached the temporary), `rename:<file>` (temporary complete and
# fsynced, not yet renamed), `renamed:<file>` (just renamed), for last.pt, best.pt and log.csv.
DRIVER = r"""
import io, os, signal, sys
from pathlib import Path
import torch
from brats_cli.training import data as data_module, loop

kill_at = os.environ.get("BRATS_KILL_AT", "")
log = open(os.environ["BRATS_EVENT_LOG"], "a") if os.environ.get("BRATS_EVENT_LOG") else None
epoch, counts = [0], {}

def event(name):
    key = f"{epoch[0]}:{name}"
    counts[key] = counts.get(key, 0) + 1
    label = f"{key}:{counts[key]}"
    if log:
        log.write(label + "\n")
        log.flush()
    return label == kill_at

def die():
    os.kill(os.getpid(), getattr(signal, os.environ.get("BRATS_KILL_SIGNAL", "SIGKILL")))

set_epoch = data_module.EpochSampler.set_epoch
def on_epoch(self, number):
    epoch[0] = number + 1
    return set_epoch(self, number)
data_module.EpochSampler.set_epoch = on_epoch

compute_loss = loop.compute_loss
def on_loss(*args, **kwargs):
    if event("loss"):
        die()
    return compute_loss(*args, **kwargs)
loop.compute_loss = on_loss

save = torch.save
def on_save(payload, handle, *args, **kwargs):
    name = Path(getattr(handle, "name", "")).name
    final = name[1:].split(".partial-")[0] if ".partial-" in name else name
    if event(f"write:{final}"):
        buffer = io.BytesIO()
        save(payload, buffer)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        die()
    return save(payload, handle, *args, **kwargs)
torch.save = on_save

replace = os.replace
def on_replace(source, target):
    name = Path(target).name
    if name in ("last.pt", "best.pt", "log.csv") and event(f"rename:{name}"):
        die()
    replace(source, target)
    if name in ("last.pt", "best.pt", "log.csv") and event(f"renamed:{name}"):
        die()
os.replace = on_replace

from brats_cli.cli.app import app
sys.argv = ["brats", *sys.argv[1:]]
app()
"""


def _environment() -> dict[str, str]:
    # The thread count of this process: float sums, hence deterministic weights, depend on it.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads()), "COLUMNS": "200"}


def _train_options(recipe: Path, data: Path, run: Path, cache: Path) -> list[str]:
    return [
        "train",
        "--recipe",
        str(recipe),
        "--data",
        str(data),
        "--out",
        str(run),
        "--stage",
        "wt",
        "--fold",
        "0",
        "--deterministic",
        "--device",
        "cpu",
        "--cache",
        str(cache),
    ]


def _instrumented(
    options: list[str], kill_at: str = "", event_log: Path | None = None, signal_name: str = "SIGKILL"
) -> subprocess.CompletedProcess:
    env = {**_environment(), "BRATS_KILL_AT": kill_at, "BRATS_KILL_SIGNAL": signal_name}
    if event_log is not None:
        env["BRATS_EVENT_LOG"] = str(event_log)
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *options], env=env, capture_output=True, text=True, timeout=600
    )


def _check_after_kill(fold: Path, previous_epoch: int) -> int:
    """What a kill may leave: last.pt and best.pt complete or absent, log.csv whole, anything else
    only a dead process's temporary. Returns last.pt's epoch (0 if absent)."""
    names = sorted(p.name for p in fold.iterdir()) if fold.exists() else []
    for name in names:
        assert name in ("last.pt", "best.pt", "log.csv") or ".partial-" in name, name
    epoch = load_checkpoint(fold / "last.pt")["epoch"] if "last.pt" in names else 0
    assert epoch >= previous_epoch  # a kill never takes a completed epoch back
    if "best.pt" in names:
        assert load_checkpoint(fold / "best.pt")["epoch"] <= max(epoch + 1, 1)
    if "log.csv" in names:
        with open(fold / "log.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1)) and len(rows) in (epoch, epoch - 1)
    return epoch


def _log_without_times(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return [
            {k: v for k, v in row.items() if k not in ("seconds", "data_seconds")} for row in csv.DictReader(handle)
        ]


@pytest.fixture(scope="module")
def reference_run(prepared_run, tmp_path_factory) -> dict:
    """An uninterrupted deterministic run (in process) of the 2-epoch recipe: what every killed
    and resumed run must end with."""
    root = tmp_path_factory.mktemp("reference")
    recipe = smoke_recipe_file(root, **_RECIPE_LINES)
    run = root / "run"
    result = runner.invoke(app, _train_options(recipe, prepared_run["data"], run, prepared_run["cache"]))
    assert result.exit_code == 0, result.output
    return {"recipe": recipe, "fold": run / "wt" / "fold0"}


def test_sigkill_while_last_checkpoint_is_half_written_resumes_from_the_previous(prepared_run, reference_run, tmp_path):
    """Killed with half of epoch 2's last.pt in its temporary: last.pt still holds epoch 1, the
    torn temporary is never read, --resume removes it, redoes epoch 2 and ends with the
    uninterrupted run's weights and log."""
    run = tmp_path / "run"
    options = _train_options(reference_run["recipe"], prepared_run["data"], run, prepared_run["cache"])
    killed = _instrumented(options, kill_at="2:write:last.pt:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    fold = run / "wt" / "fold0"
    assert _check_after_kill(fold, 0) == 1
    (torn,) = [p for p in fold.iterdir() if ".partial-" in p.name]
    assert torn.name.startswith(".last.pt.partial-") and is_temporary(torn)
    with pytest.raises(Exception, match="unreadable checkpoint"):
        load_checkpoint(torn)

    resumed = runner.invoke(app, [*options, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming after epoch 1" in resumed.output
    assert sorted(p.name for p in fold.iterdir()) == ["best.pt", "last.pt", "log.csv"]
    _assert_same_training_state(fold / "last.pt", reference_run["fold"] / "last.pt")
    assert _log_without_times(fold / "log.csv") == _log_without_times(reference_run["fold"] / "log.csv")


@pytest.mark.parametrize(
    "signal_name, point",
    [
        ("SIGTERM", "2:loss:1"),  # inside epoch 2
        pytest.param("SIGTERM", "2:write:last.pt:1", marks=pytest.mark.slow),  # epoch 2's last.pt half-written
        pytest.param("SIGINT", "2:loss:1", marks=pytest.mark.slow),
    ],
)
def test_sigterm_or_sigint_keeps_complete_epochs_and_resume_continues(
    prepared_run, reference_run, tmp_path, signal_name, point
):
    """SIGTERM (a batch scheduler's stop) is handled as Ctrl-C is: the epoch in progress and any
    half-written checkpoint are dropped, one line says so, exit 128 + the signal; --resume then
    ends with the uninterrupted run's weights and log."""
    run = tmp_path / "run"
    options = _train_options(reference_run["recipe"], prepared_run["data"], run, prepared_run["cache"])
    stopped = _instrumented(options, kill_at=point, signal_name=signal_name)
    number = getattr(signal, signal_name)
    assert stopped.returncode == 128 + number, stopped.stderr[-2000:]
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: interrupted; the last complete epoch is checkpointed: rerun with --resume to continue"]
    assert "Traceback" not in stopped.stderr
    fold = run / "wt" / "fold0"
    assert sorted(p.name for p in fold.iterdir()) == ["best.pt", "last.pt", "log.csv"]  # no temporary
    assert _check_after_kill(fold, 0) == 1 and leftovers(run) == []
    resumed = runner.invoke(app, [*options, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming after epoch 1" in resumed.output
    _assert_same_training_state(fold / "last.pt", reference_run["fold"] / "last.pt")
    assert _log_without_times(fold / "log.csv") == _log_without_times(reference_run["fold"] / "log.csv")


# The fixed kill points of the slow chain, in run order (4 epochs): inside epoch 1 before any
# checkpoint; after best.pt but before last.pt; with last.pt complete but not renamed; with
# last.pt half-written; between last.pt and log.csv; and, last, right after the final epoch's
# last.pt (the log one epoch behind, which the resume that has nothing left to train must mend).
FIXED_POINTS = [
    "1:loss:2",
    "1:renamed:best.pt:1",
    "1:rename:last.pt:1",
    "2:write:last.pt:1",
    "3:rename:log.csv:1",
]
FINAL_POINT = "4:renamed:last.pt:1"
RANDOM_POINTS = 4
SEED = 20260


def _last_complete_epoch(point: str) -> int:
    """The epoch last.pt holds after a kill at `point`: the killed epoch's once its last.pt is
    renamed (log.csv comes after it), else the one before."""
    epoch, kind, file, _ = point.split(":") if point.count(":") == 3 else (*point.split(":")[:2], "", "")
    done = (kind == "renamed" and file == "last.pt") or file == "log.csv"
    return int(epoch) if done else int(epoch) - 1


@pytest.mark.slow
def test_sigkill_at_fixed_and_seeded_random_points_then_resume_is_exact(prepared_run, tmp_path):
    """One run folder killed again and again: at FIXED_POINTS, at RANDOM_POINTS events drawn with
    a seeded RNG from an uninterrupted run's event sequence, and at the final epoch's log write.
    After every kill the folder holds only complete files or temporaries; each --resume continues
    from the last complete epoch; the end equals the uninterrupted run exactly."""
    recipe = smoke_recipe_file(tmp_path, **{**_RECIPE_LINES, "epochs": "epochs = 4"})
    data, cache = prepared_run["data"], prepared_run["cache"]
    reference_log = tmp_path / "reference-events.txt"
    reference = _instrumented(_train_options(recipe, data, tmp_path / "reference", cache), event_log=reference_log)
    assert reference.returncode == 0, reference.stderr[-2000:]
    events = reference_log.read_text().split()
    assert all(point in events for point in [*FIXED_POINTS, FINAL_POINT])
    after_fixed = events.index(FIXED_POINTS[-1]) + 1
    rng = np.random.default_rng(SEED)
    drawn = sorted(rng.choice(np.arange(after_fixed, events.index(FINAL_POINT)), RANDOM_POINTS, replace=False))
    points = [*FIXED_POINTS, *(events[i] for i in drawn), FINAL_POINT]

    run = tmp_path / "run"
    fold = run / "wt" / "fold0"
    options = _train_options(recipe, data, run, cache)
    epoch = 0
    for number, point in enumerate(points):
        killed = _instrumented([*options, *(["--resume"] if number else [])], kill_at=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        epoch = _check_after_kill(fold, epoch)
        assert epoch == _last_complete_epoch(point), (point, epoch)
    final = _instrumented([*options, "--resume"])
    assert final.returncode == 0, final.stderr[-2000:]
    assert sorted(p.name for p in fold.iterdir()) == ["best.pt", "last.pt", "log.csv"]
    reference_fold = tmp_path / "reference" / "wt" / "fold0"
    _assert_same_training_state(fold / "last.pt", reference_fold / "last.pt")
    assert load_checkpoint(fold / "best.pt")["epoch"] == load_checkpoint(reference_fold / "best.pt")["epoch"]
    assert _log_without_times(fold / "log.csv") == _log_without_times(reference_fold / "log.csv")


@pytest.mark.slow
def test_sigkill_from_outside_at_seeded_random_moments(prepared_run, tmp_path):
    """No instrumentation: a plain `python -m brats_cli train` killed from outside at random
    moments (seeded) until a run completes; invariants after every kill, exact end state."""
    recipe = smoke_recipe_file(tmp_path, **{**_RECIPE_LINES, "epochs": "epochs = 4"})
    data, cache = prepared_run["data"], prepared_run["cache"]
    command = [sys.executable, "-m", "brats_cli"]
    started = time.monotonic()
    reference = subprocess.run(
        [*command, *_train_options(recipe, data, tmp_path / "reference", cache)],
        env=_environment(),
        capture_output=True,
    )
    duration = time.monotonic() - started
    assert reference.returncode == 0, reference.stderr[-2000:]
    rng = np.random.default_rng(SEED)
    run = tmp_path / "run"
    fold = run / "wt" / "fold0"
    options = _train_options(recipe, data, run, cache)
    epoch, kills = 0, 0
    for attempt in range(12):
        process = subprocess.Popen(
            [*command, *options, *(["--resume"] if attempt else [])],
            env=_environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Past the import (a third of a run's time) most of the time, so most kills land in training.
        delay = float(rng.uniform(0.3, 1.0)) * duration if attempt < 8 else 10 * duration
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
        stderr = process.stderr.read().decode() if process.stderr else ""
        process.stderr.close()
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, stderr[-2000:]
        epoch = _check_after_kill(fold, epoch)
    assert process.returncode == 0 and kills >= 1
    assert sorted(p.name for p in fold.iterdir()) == ["best.pt", "last.pt", "log.csv"]
    _assert_same_training_state(fold / "last.pt", tmp_path / "reference" / "wt" / "fold0" / "last.pt")
    assert _log_without_times(fold / "log.csv") == _log_without_times(
        tmp_path / "reference" / "wt" / "fold0" / "log.csv"
    )
    print(f"external SIGKILLs: {kills}, last complete epoch seen after them: {epoch}")


def test_save_atomically_never_leaves_a_torn_final_file(tmp_path, monkeypatch):
    """A failure inside torch.save (disk full) leaves the previous checkpoint and no temporary."""
    path = tmp_path / "last.pt"
    save_atomically({"epoch": 1, "model": {"w": torch.ones(2)}}, path)

    def full(payload, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError):
        save_atomically({"epoch": 2, "model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_disk_full_while_training_keeps_the_last_complete_epoch(prepared_run, reference_run, tmp_path, monkeypatch):
    """ENOSPC while epoch 2's last.pt is written: exit 2 naming the file, epoch 1 checkpointed,
    no temporary; --resume (space freed) ends like the uninterrupted run."""
    import errno

    run = tmp_path / "run"
    options = _train_options(reference_run["recipe"], prepared_run["data"], run, prepared_run["cache"])
    real_save, calls = torch.save, []

    def save(payload, handle, *args, **kwargs):
        if Path(handle.name).name.startswith(".last.pt") and payload["epoch"] == 2:
            handle.write(b"PK\x03\x04 half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        calls.append(payload["epoch"])
        return real_save(payload, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    result = runner.invoke(app, options)
    monkeypatch.undo()
    fold = run / "wt" / "fold0"
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: {fold / 'last.pt'}: cannot write (No space left on device)"
    )
    assert "rerun with --resume" in errors[0]
    assert load_checkpoint(fold / "last.pt")["epoch"] == 1 and leftovers(run) == []
    resumed = runner.invoke(app, [*options, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    _assert_same_training_state(fold / "last.pt", reference_run["fold"] / "last.pt")
