"""`brats train` and `brats bundle`: recipes, cache, folds, bad data, the resumable loop, DDP, and
the trained bundle running in `brats segment`."""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from builders import random_bundle
from typer.testing import CliRunner

import brats_cli.host
from brats_cli.bundle import Stage, load_bundle
from brats_cli.choices import Precision, Storage
from brats_cli.cli.app import app
from brats_cli.errors import InputError
from brats_cli.io import BRATS_SHAPE, discover_cases, load_case
from brats_cli.labels import LabelConvention, unexpected_labels
from brats_cli.model import ResUNet3D
from brats_cli.preprocess import MODEL_GRID, crop_to_model_grid, preprocess
from brats_cli.synth import make_phantom
from brats_cli.training.cache import prepare_cache, training_cases
from brats_cli.training.data import centred_start
from brats_cli.training.distributed import Context
from brats_cli.training.folds import load_or_create_folds, make_folds, read_folds
from brats_cli.training.loop import BlockMax3d, autocast_dtype, forward_name, load_checkpoint, training_memory_format
from brats_cli.training.losses import compute_loss, hard_dice
from brats_cli.training.recipe import Loss, load_recipe, recipe_from_dict
from brats_cli.training.run import run_training
from tests.conftest import LPS_AFFINE, ras_affine, write_case

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "train" / "smoke.toml"
PAPER = ROOT / "train" / "paper.toml"
runner = CliRunner()
CASES = 5  # the smoke recipe's 5 folds need one validation case each


# ---------------------------------------------------------------------------------------------
# Labelled data: the ONE place training data is made (to be replaced by `brats synth` phantoms).


PHANTOM_SEED = 5  # the phantom series the training tests use


@functools.cache
def labelled_case(index: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (4, 240, 240, 155) int16, labels (240, 240, 155) uint8, 2021 convention) of phantom
    `index` from `brats synth`'s generator, in canonical LPS."""
    phantom = make_phantom(PHANTOM_SEED, index)
    return phantom.image, phantom.labels


@pytest.fixture(scope="session")
def training_data(tmp_path_factory) -> Path:
    """CASES labelled phantoms (`brats synth`) as BraTS 2021 cases; the last one stored RAS (to
    check label reorientation). Uncompressed .nii: gzip would cost most of this fixture's time."""
    root = tmp_path_factory.mktemp("training-data")
    for index in range(CASES):
        image, labels = labelled_case(index)
        affine = LPS_AFFINE
        if index == CASES - 1:
            image, labels, affine = image[:, ::-1, ::-1], labels[::-1, ::-1], ras_affine()
        write_case(root, f"BraTS2021_{index:05d}", image, labels=labels, affine=affine, extension=".nii")
    return root


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def copy_data(source: Path, target: Path, case_ids: list[str] | None = None) -> Path:
    """A copy of the training data (only `case_ids`, if given) that a test may damage."""
    for case in sorted(source.iterdir()):
        if case_ids is None or case.name in case_ids:
            shutil.copytree(case, target / case.name)
    return target


# The smoke recipe's windows, patches and validation crops at 32^3: the default suite's training
# tests stay small on a loaded 2-core machine.
CROPS_32 = {
    "region_window": "region_window = [32, 32, 32]",
    "patch": "patch = [32, 32, 32]",
    "validation_size": "validation_size = [32, 32, 32]",
}


def smoke_recipe_file(folder: Path, **replace: str) -> Path:
    """The smoke recipe with every line starting `key =` replaced, e.g. epochs='epochs = 1'."""
    text = SMOKE.read_text()
    for key, line in replace.items():
        text = "\n".join(line if row.startswith(f"{key} =") else row for row in text.splitlines()) + "\n"
    path = folder / "recipe.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Recipes


@pytest.mark.parametrize("path", sorted((ROOT / "train").glob("*.toml")), ids=lambda path: path.name)
def test_every_shipped_recipe_loads(path):
    """The recipes train/default.sh and the docs name are valid as shipped."""
    recipe = load_recipe(path)
    assert set(recipe.stages) == set(Stage)


def test_paper_recipe_holds_the_papers_hyperparameters():
    recipe = load_recipe(PAPER)
    stages = recipe.stages
    assert recipe.folds == 5 and recipe.batch_size == 4 and recipe.region_window == (128, 128, 128)
    assert (stages[Stage.BASE].width, stages[Stage.WT].width, stages[Stage.TC].width, stages[Stage.ET].width) == (
        24,
        64,
        64,
        64,
    )
    assert [stages[s].learning_rate for s in Stage] == [1e-4, 1e-4, 3e-5, 3e-3]
    assert [stages[s].loss for s in Stage] == [Loss.BCE_DICE, Loss.BCE_DICE, Loss.BCE_DICE, Loss.BCE]
    assert (recipe.plateau.factor, recipe.plateau.patience, recipe.plateau.cooldown) == (0.4, 2, 2)
    assert all(40 <= stages[s].epochs <= 60 for s in Stage)
    assert recipe.crop_size(Stage.BASE, training=True) == MODEL_GRID
    # The paper's 16 models: one base, five folds of each region model.
    assert sum(len(stages[s].train_folds) for s in Stage) == 16
    assert recipe_from_dict(recipe.to_dict()) == recipe  # what a run folder stores reads back


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["stages"]["tc"].update(learning_rate=-1), "stages.tc.learning_rate must be a number > 0"),
        (lambda d: d["stages"]["wt"].update(lerning_rate=1e-3), "stages.wt.lerning_rate is not a recipe field"),
        (lambda d: d["stages"]["et"].update(loss="focal"), "stages.et.loss must be one of bce_dice, bce"),
        (lambda d: d["stages"]["base"].update(patch=[50, 48, 48]), "stages.base.patch must be multiples of 8"),
        (lambda d: d.update(region_window=[256, 128, 128]), "region_window must fit in the model grid"),
        (lambda d: d["stages"].pop("tc"), "stages.tc is missing"),
        (lambda d: d["stages"]["wt"].update(train_folds=[0, 5]), "stages.wt.train_folds must list distinct"),
        (lambda d: d.pop("seed"), "seed is missing"),
    ],
)
def test_recipe_errors_name_the_field(edit, message):
    import tomllib

    data = tomllib.loads(SMOKE.read_text())
    edit(data)
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        recipe_from_dict(data, "smoke.toml")


def test_a_recipe_extends_another_by_changing_only_what_it_sets(tmp_path):
    """A training round's recipe states its changes; tables merge key by key, lists are replaced."""
    shutil.copy(SMOKE, tmp_path / "base.toml")
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\nseed = 7\n[stages.tc]\nepochs = 3\ntrain_folds = [1]\n')
    base, extended = load_recipe(tmp_path / "base.toml"), load_recipe(child)
    assert extended.seed == 7 and extended.stages[Stage.TC].epochs == 3
    assert extended.stages[Stage.TC].train_folds == (1,)
    assert extended.stages[Stage.TC].learning_rate == base.stages[Stage.TC].learning_rate
    assert extended.stages[Stage.ET] == base.stages[Stage.ET] and extended.plateau == base.plateau


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.toml": 'extends = "b.toml"', "b.toml": 'extends = "a.toml"'}, "makes a loop of recipes"),
        ({"a.toml": 'extends = "a.toml"'}, "makes a loop of recipes"),
        ({"a.toml": 'extends = "missing.toml"'}, "missing.toml: recipe file not found"),
        ({"a.toml": "extends = 3"}, "extends must name a recipe file, got 3"),
    ],
)
def test_a_broken_extends_chain_is_named(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n")
    with pytest.raises(InputError, match=message):
        load_recipe(tmp_path / "a.toml")


def test_bad_recipe_file_exits_2(tmp_path, training_data):
    bad = tmp_path / "bad.toml"
    bad.write_text(SMOKE.read_text().replace("batch_size = 2", "batch_size = 0"))
    result = runner.invoke(app, ["train", "--recipe", str(bad), "--data", str(training_data), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "bad.toml: batch_size must be an integer >= 1" in result.output


# ---------------------------------------------------------------------------------------------
# Folds, crops


def test_folds_are_a_seeded_partition_written_and_reused(tmp_path):
    ids = [f"case{i:03d}" for i in range(23)]
    folds = make_folds(ids, 5, seed=3)
    assert sorted(c for fold in folds.folds for c in fold) == sorted(ids)
    assert sorted(len(f) for f in folds.folds) == [4, 4, 5, 5, 5]
    assert make_folds(list(reversed(ids)), 5, seed=3) == folds  # input order does not matter
    assert make_folds(ids, 5, seed=4) != folds
    train, validation = folds.split(2)
    assert set(train).isdisjoint(validation) and len(train) + len(validation) == 23

    written = load_or_create_folds(tmp_path, ids, 5, seed=3)
    assert json.loads((tmp_path / "folds.json").read_text())["folds"] == [list(f) for f in folds.folds]
    assert load_or_create_folds(tmp_path, ids, 5, seed=99) == written  # reused, not re-drawn
    with pytest.raises(InputError, match="missing from the data: case022"):
        load_or_create_folds(tmp_path, ids[:-1], 5, seed=3)


def test_training_only_cases_train_in_every_fold_and_leave_the_split_alone(tmp_path):
    ids = [f"case{i:03d}" for i in range(23)]
    extra = ["extra1", "extra0"]
    folds = make_folds(ids, 5, seed=3, training_only=extra)
    assert folds.folds == make_folds(ids, 5, seed=3).folds and folds.case_ids == ids
    for k in range(5):
        train, validation = folds.split(k)
        assert set(extra) <= set(train) and set(extra).isdisjoint(validation)
        assert len(train) + len(validation) == 25
    written = load_or_create_folds(tmp_path, ids, 5, seed=3, training_only=extra)
    assert json.loads((tmp_path / "folds.json").read_text())["training_only"] == ["extra0", "extra1"]
    assert read_folds(tmp_path / "folds.json") == written == folds
    with pytest.raises(InputError, match=r"training-only cases \(--extra\) differ .* \(2 in the run, 0 given\)"):
        load_or_create_folds(tmp_path, ids, 5, seed=3)
    with pytest.raises(InputError, match="between the training data and the training-only cases: case004"):
        make_folds(ids, 5, seed=3, training_only=["case004"])


def test_region_crop_centres_on_the_tumour_and_stays_inside_the_grid():
    box = ((90, 110), (60, 80), (140, 150))
    assert centred_start(box, MODEL_GRID, (64, 64, 64)) == (68, 38, 96)  # z clamped: 160 - 64
    assert centred_start(box, MODEL_GRID, (64, 64, 64), (16, -16, 0)) == (84, 22, 96)
    assert centred_start(None, MODEL_GRID, (128, 128, 128)) == (32, 32, 16)
    assert centred_start(((0, 4), (0, 4), (0, 4)), MODEL_GRID, (128, 128, 128), (-16, -16, -16)) == (0, 0, 0)


def test_losses_against_hand_computed_values():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    p = torch.sigmoid(logits)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    assert torch.isclose(compute_loss(Loss.BCE, logits, target), bce)
    assert torch.isclose(compute_loss(Loss.BCE_DICE, logits, target), bce + dice)
    # Hard Dice of logits > 0 (p > 0.5): prediction {0, 2}, truth {0, 3} -> 2*1 / (2+2).
    assert hard_dice(logits, target) == 0.5
    assert hard_dice(-torch.ones(1, 4), torch.zeros(1, 4)) == 1.0  # both empty: the BraTS convention
    assert hard_dice(torch.ones(1, 4), torch.zeros(1, 4)) == 0.0


def test_block_max_pool_equals_max_pool():
    x = torch.randn(2, 3, 8, 16, 8)
    assert torch.equal(BlockMax3d()(x), torch.nn.MaxPool3d(2)(x))


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_matches_inference_preprocessing_and_is_reused(training_data, tmp_path):
    cases = training_cases(training_data)[-2:]  # the last one is stored RAS
    seen: list[tuple[str, bool]] = []
    cached = prepare_cache(cases, tmp_path / "cache", lambda case, reused: seen.append((case.case_id, reused)))
    assert [reused for _, reused in seen] == [False, False]
    ras = cases[-1]
    image, _ = load_case(ras)
    stored = cached[-1]
    np.testing.assert_array_equal(stored.image(), preprocess(image).astype(np.float16))
    assert stored.image().dtype == np.float16 and stored.image().shape == (4, *MODEL_GRID)
    # Labels reoriented to canonical like the image: the RAS-stored case's labels match its own
    # generator's canonical labels.
    _, expected_labels = labelled_case(CASES - 1)
    np.testing.assert_array_equal(stored.labels(), crop_to_model_grid(expected_labels))
    assert isinstance(stored.labels(), np.memmap)

    seen.clear()
    again = prepare_cache(cases, tmp_path / "cache", lambda case, reused: seen.append((case.case_id, reused)))
    assert [reused for _, reused in seen] == [True, True]
    assert [c.folder for c in again] == [c.folder for c in cached]


def test_cache_redoes_a_changed_case_only(training_data, tmp_path):
    data = copy_data(training_data, tmp_path / "data", ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"])
    cases = training_cases(data)
    first = prepare_cache(cases, tmp_path / "cache")
    changed = cases[1]
    flair = changed.files[next(iter(changed.files))]
    volume = nib.load(flair)
    nib.save(nib.Nifti1Image(np.asarray(volume.dataobj) * 2, volume.affine, volume.header), flair)
    seen: list[tuple[str, bool]] = []
    second = prepare_cache(training_cases(data), tmp_path / "cache", lambda c, r: seen.append((c.case_id, r)))
    assert seen == [(c.case_id, c.case_id != changed.case_id) for c in cases]
    assert second[1].folder != first[1].folder and not first[1].folder.exists()  # stale entry removed
    assert [e.folder for i, e in enumerate(second) if i != 1] == [e.folder for i, e in enumerate(first) if i != 1]


# ---------------------------------------------------------------------------------------------
# Bad data: a clear error before any training


def _train(recipe: Path, data: Path, out: Path, *extra: str):
    return runner.invoke(app, ["train", "--recipe", str(recipe), "--data", str(data), "--out", str(out), *extra])


def _rewrite_seg(case_folder: Path, change) -> None:
    seg = next(case_folder.glob("*_seg.nii"))
    image = nib.load(seg)
    data = change(np.asarray(image.dataobj).copy())
    nib.save(nib.Nifti1Image(data.astype(np.uint8), image.affine), seg)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda case: next(case.glob("*_seg.nii")).unlink(), "no segmentation (BraTS2021_00002_seg.nii.gz)"),
        (
            lambda case: _rewrite_seg(case, lambda seg: np.where(seg == 4, 3, seg)),
            "BraTS2021_00002_seg.nii has labels [3] outside the BraTS 2021 convention (0, 1, 2, 4)",
        ),
        (
            lambda case: _rewrite_seg(case, lambda seg: seg[:, :, :150]),
            "shape mismatch: BraTS2021_00002_seg.nii is (240, 240, 150), the images are (240, 240, 155)",
        ),
    ],
    ids=["missing-seg", "labels-outside-convention", "shape-mismatch"],
)
def test_bad_data_fails_before_training(training_data, tmp_path, damage, message):
    # Two cases and a 2-fold recipe: every case is checked before the error, so fewer is faster.
    data = copy_data(training_data, tmp_path / "data", ["BraTS2021_00001", "BraTS2021_00002"])
    damage(data / "BraTS2021_00002")
    recipe = smoke_recipe_file(tmp_path, folds="folds = 2", train_folds="train_folds = [0]")
    result = _train(recipe, data, tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not list((tmp_path / "run").glob("*/fold*"))  # nothing trained


def test_fewer_cases_than_folds_fails_before_training(training_data, tmp_path):
    data = copy_data(training_data, tmp_path / "data", ["BraTS2021_00000", "BraTS2021_00001"])
    result = _train(SMOKE, data, tmp_path / "run")
    assert result.exit_code == 2
    assert "2 labelled case(s) for 5 folds; every fold needs one validation case" in " ".join(result.output.split())
    assert not (tmp_path / "run" / "cache").exists()  # refused before any preprocessing


# ---------------------------------------------------------------------------------------------
# Training: one deterministic smoke run of all four stages (fold 0) shared by the tests below


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory) -> Path:
    """The smoke recipe cut to 2 epochs of 32^3 crops, to keep the default suite's share small on
    a loaded 2-core machine (train/smoke.toml itself is run by the slow test)."""
    return smoke_recipe_file(
        tmp_path_factory.mktemp("recipe"),
        epochs="epochs = 2",
        **CROPS_32,
    )


@pytest.fixture(scope="module")
def smoke_run(training_data, shared_cache, tiny_recipe, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("smoke-run")
    result = _train(tiny_recipe, training_data, run, "--fold", "0", "--deterministic", "--cache", str(shared_cache))
    assert result.exit_code == 0, result.output
    return run


def _log(run: Path, stage: str, fold: int = 0) -> list[dict[str, str]]:
    with open(run / stage / f"fold{fold}" / "log.csv") as handle:
        return list(csv.DictReader(handle))


def test_smoke_run_writes_folds_checkpoints_and_logs(smoke_run, tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    folds = json.loads((smoke_run / "folds.json").read_text())
    assert sorted(len(f) for f in folds["folds"]) == [1] * 5
    for stage in Stage:
        folder = smoke_run / stage.value / "fold0"
        assert {p.name for p in folder.iterdir()} == {"last.pt", "best.pt", "log.csv"}
        rows = _log(smoke_run, stage.value)
        assert [int(r["epoch"]) for r in rows] == list(range(1, recipe.stages[stage].epochs + 1))
        last = load_checkpoint(folder / "last.pt")  # weights_only=True
        assert last["epoch"] == recipe.stages[stage].epochs
        assert set(last) >= {"model", "optimizer", "scheduler", "scaler", "rng", "best_dice", "history"}
        best = load_checkpoint(folder / "best.pt")
        assert best["val_dice"] == max(float(r["val_dice"]) for r in rows)
    assert not (smoke_run / "wt" / "fold1").exists()


def test_loss_falls(smoke_run):
    for stage in ("wt", "tc", "et"):
        rows = _log(smoke_run, stage)
        assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]), (stage, rows)
        assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"]), (stage, rows)


class SimulatedCrash(Exception):
    pass


def test_crash_and_resume_gives_the_uninterrupted_weights(
    smoke_run, tiny_recipe, training_data, shared_cache, tmp_path
):
    recipe = load_recipe(tiny_recipe)
    run = tmp_path / "run"

    def crash_after_first_epoch(record) -> None:
        if record.epoch == 1:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        run_training(
            recipe,
            training_data,
            run,
            Context(0, 0, 1, torch.device("cpu")),
            stages=[Stage.WT],
            fold=0,
            deterministic=True,
            cache=shared_cache,
            on_epoch_end=crash_after_first_epoch,
        )
    assert load_checkpoint(run / "wt" / "fold0" / "last.pt")["epoch"] == 1

    refused = _train(tiny_recipe, training_data, run, "--stage", "wt", "--fold", "0", "--cache", str(shared_cache))
    assert refused.exit_code == 2 and "pass --resume" in refused.output

    options = ["--stage", "wt", "--fold", "0", "--cache", str(shared_cache)]
    resumed = _train(tiny_recipe, training_data, run, *options, "--resume", "--deterministic")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming after epoch 1" in resumed.output
    _assert_same_training_state(run / "wt" / "fold0" / "last.pt", smoke_run / "wt" / "fold0" / "last.pt")
    assert _log(run, "wt") == [
        {**row, "seconds": mine["seconds"], "data_seconds": mine["data_seconds"]}
        for row, mine in zip(_log(smoke_run, "wt"), _log(run, "wt"), strict=True)
    ]


def _assert_same_training_state(path_a: Path, path_b: Path) -> None:
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    assert a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)
    assert a["scheduler"] == b["scheduler"]


def test_bundle_takes_the_named_stages_from_an_earlier_bundle(smoke_run, tmp_path):
    """`--stages-from BUNDLE --stages tc,et`: those stages are the earlier bundle's models, byte
    for byte, with its validation record and where they came from; the others are the run's."""
    from safetensors.torch import load_file

    earlier = random_bundle(tmp_path / "earlier", folds=2, window=(32, 32, 32), seed=3)
    out = tmp_path / "bundle"
    command = ["bundle", str(smoke_run), "--out", str(out), "--stages-from", str(earlier.root), "--stages", "tc,et"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)  # every checksum verified
    for stage in (Stage.TC, Stage.ET):
        assert len(bundle.manifest.stages[stage].folds) == 2
        for mine, theirs in zip(bundle.fold_paths(stage), earlier.fold_paths(stage), strict=True):
            a, b = load_file(str(mine)), load_file(str(theirs))
            assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
        assert bundle.manifest.metadata["validation"][stage.value]["from_bundle"] == str(earlier.root)
    best = load_checkpoint(smoke_run / "wt" / "fold0" / "best.pt")
    (wt,) = bundle.fold_paths(Stage.WT)
    assert all(torch.equal(value, best["model"][key]) for key, value in load_file(str(wt)).items())
    assert bundle.manifest.metadata["validation"]["wt"]["fold0"]["val_dice"] == pytest.approx(best["val_dice"])


def test_stages_from_a_bundle_that_does_not_fit_the_run_are_refused(smoke_run, tmp_path):
    """Another region window than the run's recipe: exit 2 naming it, and no bundle written."""
    earlier = random_bundle(tmp_path / "earlier", window=(64, 64, 64))
    out = tmp_path / "bundle"
    command = ["bundle", str(smoke_run), "--out", str(out), "--stages-from", str(earlier.root), "--stages", "tc"]
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    assert "(64, 64, 64) windows" in " ".join(result.output.split()) and not out.exists()
    half = runner.invoke(app, ["bundle", str(smoke_run), "--out", str(out), "--stages", "tc"])
    assert half.exit_code == 2 and "go together" in half.output and not out.exists()


def test_bundle_from_the_run_segments_a_case(smoke_run, training_data, tmp_path):
    result = runner.invoke(app, ["bundle", str(smoke_run), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "bundle")
    manifest = bundle.manifest
    assert manifest.region_window == (32, 32, 32) and manifest.labels is LabelConvention.BRATS2021
    assert {s: len(spec.folds) for s, spec in manifest.stages.items()} == {s: 1 for s in Stage}
    assert manifest.metadata["recipe"]["name"] == "smoke"
    assert manifest.metadata["folds"] == json.loads((smoke_run / "folds.json").read_text())
    best = load_checkpoint(smoke_run / "tc" / "fold0" / "best.pt")
    assert manifest.metadata["validation"]["tc"]["fold0"]["val_dice"] == pytest.approx(best["val_dice"])
    # What the forward computed in on this machine (`--precision auto`), as each epoch recorded it.
    forward = forward_name(autocast_dtype(torch.device("cpu"), Precision.AUTO))
    assert manifest.metadata["validation"]["tc"]["fold0"]["forward"] == forward

    case = training_data / "BraTS2021_00000"
    segmented = runner.invoke(app, ["segment", str(case), str(tmp_path / "out"), "--weights", str(tmp_path / "bundle")])
    assert segmented.exit_code == 0, segmented.output
    output = nib.load(tmp_path / "out" / "BraTS2021_00000.nii.gz")
    assert output.shape == BRATS_SHAPE and output.get_data_dtype() == np.uint8
    np.testing.assert_allclose(output.affine, LPS_AFFINE)
    assert unexpected_labels(np.asarray(output.dataobj), LabelConvention.BRATS2021) == []


def test_bundle_stored_in_float16(smoke_run, training_data, tmp_path):
    """`--storage float16`: the run's weights and the borrowed stages' are written rounded to float16,
    the manifest says so, and the bundle segments a case."""
    from safetensors.torch import load_file

    earlier = random_bundle(tmp_path / "earlier", window=(32, 32, 32), seed=4)
    out = tmp_path / "bundle"
    command = ["bundle", str(smoke_run), "--out", str(out), "--stages-from", str(earlier.root), "--stages", "et"]
    result = runner.invoke(app, [*command, "--storage", "float16"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    assert bundle.manifest.storage is Storage.FLOAT16
    best = load_checkpoint(smoke_run / "wt" / "fold0" / "best.pt")
    (wt,) = bundle.fold_paths(Stage.WT)
    assert all(torch.equal(value, best["model"][key].half()) for key, value in load_file(str(wt)).items())
    (et,), (theirs,) = bundle.fold_paths(Stage.ET), earlier.fold_paths(Stage.ET)
    borrowed = load_file(str(theirs))
    assert all(torch.equal(value, borrowed[key].half()) for key, value in load_file(str(et)).items())

    # What the weights predict, against float32, is test_bundle's; here: the bundle segments a case.
    segmented = runner.invoke(
        app, ["segment", str(training_data / "BraTS2021_00000"), str(tmp_path / "out"), "--weights", str(out)]
    )
    assert segmented.exit_code == 0, segmented.output
    labels = np.asarray(nib.load(tmp_path / "out" / "BraTS2021_00000.nii.gz").dataobj)
    assert labels.shape == BRATS_SHAPE and unexpected_labels(labels, LabelConvention.BRATS2021) == []


def test_bundle_needs_every_stage(smoke_run, tmp_path):
    partial = tmp_path / "run"
    shutil.copytree(smoke_run, partial, ignore=shutil.ignore_patterns("et"))
    result = runner.invoke(app, ["bundle", str(partial), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 2
    assert "stage et has no trained fold" in result.output


def test_bundle_of_the_last_epochs(smoke_run, tmp_path):
    """--checkpoint last takes each fold's last complete epoch (last.pt), not its best, and says so
    in the bundle's validation record; a fold without last.pt is refused on one line."""
    from safetensors.torch import load_file

    result = runner.invoke(app, ["bundle", str(smoke_run), "--out", str(tmp_path / "bundle"), "--checkpoint", "last"])
    assert result.exit_code == 0, result.output
    last = load_checkpoint(smoke_run / "tc" / "fold0" / "last.pt")
    written = load_file(str(tmp_path / "bundle" / "tc_fold0.safetensors"))
    assert all(torch.equal(written[key], value) for key, value in last["model"].items())
    record = load_bundle(tmp_path / "bundle").manifest.metadata["validation"]["tc"]["fold0"]
    assert record["checkpoint"] == "last" and record["epoch"] == last["epoch"] and "best_epoch" not in record
    assert record["val_dice"] == pytest.approx(last["history"][-1]["val_dice"])

    damaged = tmp_path / "run"
    shutil.copytree(smoke_run, damaged)
    (damaged / "et" / "fold0" / "last.pt").unlink()
    refused = runner.invoke(app, ["bundle", str(damaged), "--out", str(tmp_path / "b2"), "--checkpoint", "last"])
    assert refused.exit_code == 2
    assert f"{damaged / 'et' / 'fold0'}: no last.pt to take (--checkpoint last)" in " ".join(refused.output.split())
    assert not (tmp_path / "b2").exists()


# ---------------------------------------------------------------------------------------------
# Distributed data parallel and a real kill -9


def _torchrun(nproc: int, recipe: Path, data: Path, run: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--standalone",
        "-m",
        "brats_cli",
        "train",
        "--recipe",
        str(recipe),
        "--data",
        str(data),
        "--out",
        str(run),
        "--cache",
        str(cache),
        "--device",
        "cpu",
        *extra,
    ]


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_two_process_gloo_run_writes_one_set_of_checkpoints(training_data, shared_cache, tiny_recipe, tmp_path):
    run = tmp_path / "run"
    completed = subprocess.run(
        _torchrun(2, tiny_recipe, training_data, run, shared_cache, "--stage", "wt", "--fold", "1"),
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "2 rank(s), global batch 2" in completed.stderr
    # Only rank 0 logs and writes: one line per epoch, one checkpoint set, no stray temporaries.
    assert completed.stderr.count("wt fold 1 epoch 2/2:") == 1
    assert sorted(p.relative_to(run).as_posix() for p in run.glob("*/fold*/*")) == [
        "wt/fold1/best.pt",
        "wt/fold1/last.pt",
        "wt/fold1/log.csv",
    ]
    assert not list(run.rglob(".*partial*"))
    assert [int(r["epoch"]) for r in _log(run, "wt", 1)] == [1, 2]
    assert load_checkpoint(run / "wt" / "fold1" / "last.pt")["epoch"] == 2


@pytest.mark.slow
def test_kill_9_loses_at_most_the_epoch_in_progress(training_data, shared_cache, tmp_path):
    """A real SIGKILL of a training process once a checkpoint exists (train/smoke.toml, 4 epochs);
    --resume then ends with the same weights as an uninterrupted run."""
    recipe = smoke_recipe_file(tmp_path, epochs="epochs = 4")
    command = [sys.executable, "-m", "brats_cli", "train", "--recipe", str(recipe), "--data", str(training_data)]
    common = ["--stage", "tc", "--fold", "0", "--deterministic", "--device", "cpu", "--cache", str(shared_cache)]
    killed_run, reference_run = tmp_path / "killed", tmp_path / "reference"
    process = subprocess.Popen(
        [*command, "--out", str(killed_run), *common], env=_environment(), stderr=subprocess.DEVNULL
    )
    checkpoint = killed_run / "tc" / "fold0" / "last.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    epochs_done = load_checkpoint(checkpoint)["epoch"]
    assert 1 <= epochs_done < 4
    resumed = subprocess.run([*command, "--out", str(killed_run), *common, "--resume"], env=_environment())
    assert resumed.returncode == 0
    reference = subprocess.run([*command, "--out", str(reference_run), *common], env=_environment())
    assert reference.returncode == 0
    _assert_same_training_state(checkpoint, reference_run / "tc" / "fold0" / "last.pt")


def test_discovery_sees_the_segmentations(training_data):
    assert all(case.segmentation is not None for case in discover_cases(training_data).cases)


@pytest.mark.slow
def test_smoke_recipe_trains_every_stage_and_fold_it_lists(training_data, shared_cache, tmp_path):
    """train/smoke.toml as a user runs it: all stages, all listed folds, then a bundle."""
    run = tmp_path / "run"
    result = _train(SMOKE, training_data, run, "--cache", str(shared_cache))
    assert result.exit_code == 0, result.output
    recipe = load_recipe(SMOKE)
    for stage in Stage:
        for fold in recipe.stages[stage].train_folds:
            assert (run / stage.value / f"fold{fold}" / "best.pt").is_file()
    bundled = runner.invoke(app, ["bundle", str(run), "--out", str(tmp_path / "bundle")])
    assert bundled.exit_code == 0, bundled.output
    assert len(load_bundle(tmp_path / "bundle").manifest.stages[Stage.WT].folds) == len(
        recipe.stages[Stage.WT].train_folds
    )


@pytest.mark.gpu
def test_cuda_deterministic_crash_and_resume_is_exact(training_data, shared_cache, tiny_recipe, tmp_path):
    """On a GPU: --deterministic (with the deterministic max-pool backward) makes a crashed and
    resumed run end with exactly the weights of an uninterrupted one, through bf16 autocast."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    options = ["--stage", "tc", "--fold", "0", "--device", "cuda", "--cache", str(shared_cache), "--deterministic"]
    reference = _train(tiny_recipe, training_data, tmp_path / "reference", *options)
    assert reference.exit_code == 0, reference.output
    assert "device cuda" in reference.output

    def crash_after_first_epoch(record) -> None:
        if record.epoch == 1:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        run_training(
            load_recipe(tiny_recipe),
            training_data,
            tmp_path / "crashed",
            Context(0, 0, 1, torch.device("cuda")),
            stages=[Stage.TC],
            fold=0,
            deterministic=True,
            cache=shared_cache,
            on_epoch_end=crash_after_first_epoch,
        )
    resumed = _train(tiny_recipe, training_data, tmp_path / "crashed", *options, "--resume")
    assert resumed.exit_code == 0, resumed.output
    _assert_same_training_state(
        tmp_path / "crashed" / "tc" / "fold0" / "last.pt", tmp_path / "reference" / "tc" / "fold0" / "last.pt"
    )


def test_prepare_only_caches_and_writes_folds_without_training(training_data, shared_cache, tmp_path):
    result = _train(SMOKE, training_data, tmp_path / "run", "--cache", str(shared_cache), "--prepare-only")
    assert result.exit_code == 0, result.output
    assert "prepared 5 case(s); 5 folds of 1, 1, 1, 1, 1" in result.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["folds.json", "recipe.json"]


def test_extra_cases_train_every_fold_and_are_recorded(training_data, shared_cache, tmp_path):
    """`--extra`: a second folder of labelled cases on the training side of every fold; the
    checkpoints say how many a fold trained on."""
    data = copy_data(training_data, tmp_path / "data", ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"])
    extra = copy_data(training_data, tmp_path / "extra", ["BraTS2021_00003", "BraTS2021_00004"])
    recipe = smoke_recipe_file(
        tmp_path,
        folds="folds = 2",
        train_folds="train_folds = [0]",
        epochs="epochs = 1",
        **CROPS_32,
    )
    options = ["--cache", str(shared_cache), "--extra", str(extra)]
    result = _train(recipe, data, tmp_path / "run", *options, "--prepare-only")
    assert result.exit_code == 0, result.output
    assert "prepared 5 case(s); 2 folds of 2, 1, 2 training-only" in " ".join(result.output.split())
    folds = read_folds(tmp_path / "run" / "folds.json")
    assert folds.training_only == ("BraTS2021_00003", "BraTS2021_00004") and len(folds.case_ids) == 3

    result = _train(recipe, data, tmp_path / "run", *options, "--stage", "wt", "--fold", "0")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "run" / "wt" / "fold0" / "last.pt")["training_only"] == 2

    result = _train(recipe, data, tmp_path / "run", "--cache", str(shared_cache), "--stage", "wt", "--resume")
    assert result.exit_code == 2  # the same run without its --extra cases
    assert "training-only cases (--extra) differ" in " ".join(result.output.split())


def test_an_unusable_extra_case_is_named_before_training(training_data, tmp_path):
    data = copy_data(training_data, tmp_path / "data", ["BraTS2021_00000", "BraTS2021_00001"])
    extra = copy_data(training_data, tmp_path / "extra", ["BraTS2021_00002"])
    next((extra / "BraTS2021_00002").glob("*_seg.nii")).unlink()
    recipe = smoke_recipe_file(tmp_path, folds="folds = 2", train_folds="train_folds = [0]")
    result = _train(recipe, data, tmp_path / "run", "--extra", str(extra))
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert f"{extra}: 1 case(s) unusable for training" in output and "BraTS2021_00002: no segmentation" in output
    assert not (tmp_path / "run" / "cache").exists() and not (tmp_path / "run" / "folds.json").exists()


# ---------------------------------------------------------------------------------------------
# --init-from: fine-tuning and training on from other weights


@pytest.mark.parametrize("fold, init_fold", [(0, None), (2, 0)], ids=["same fold", "--init-fold"])
def test_init_from_a_run_starts_the_fold_from_its_weights(
    smoke_run, training_data, shared_cache, tmp_path, fold, init_fold
):
    """A learning rate of 1e-12 cannot move the weights in an epoch, so the trained fold shows the
    weights it started from: the source run's best model of the same stage and fold, or of the fold
    --init-fold names (the smoke run trained only fold 0)."""
    recipe = smoke_recipe_file(
        tmp_path,
        epochs="epochs = 1",
        learning_rate="learning_rate = 1e-12",
        **CROPS_32,
    )
    options = ["--stage", "wt", "--fold", str(fold), "--cache", str(shared_cache), "--init-from", str(smoke_run)]
    if init_fold is not None:
        options += ["--init-fold", str(init_fold)]
    result = _train(recipe, training_data, tmp_path / "run", *options)
    assert result.exit_code == 0, result.output
    assert "starting from" in result.output
    source = smoke_run / "wt" / f"fold{0 if init_fold is None else init_fold}" / "best.pt"
    started = load_checkpoint(source)["model"]
    trained = load_checkpoint(tmp_path / "run" / "wt" / f"fold{fold}" / "last.pt")
    assert trained["init_from"] == f"{source} (epoch {load_checkpoint(source)['epoch']})"
    for key, value in started.items():
        torch.testing.assert_close(trained["model"][key], value, rtol=0, atol=1e-8)


def test_init_from_a_bundle_takes_the_same_split_fold(tmp_path):
    from safetensors.torch import load_file

    from brats_cli.training.run import initial_weights

    weights = ROOT / "weights"  # the default bundle: folds 0 and 1 of each region, fold 0 of base
    initial = initial_weights(weights, Stage.TC, 1)
    digest = hashlib.sha256((weights / "tc_fold1.safetensors").read_bytes()).hexdigest()
    assert initial.source == f"{weights / 'tc_fold1.safetensors'} (sha256 {digest})"
    expected = load_file(str(weights / "tc_fold1.safetensors"))
    assert initial.state.keys() == expected.keys()
    assert all(torch.equal(initial.state[key], expected[key]) for key in expected)
    with pytest.raises(InputError, match=r"weights: no base model of fold 1 to start from \(folds \[0\]\)"):
        initial_weights(weights, Stage.BASE, 1)
    with pytest.raises(InputError, match="neither a weights bundle"):
        initial_weights(tmp_path, Stage.WT, 0)


@pytest.mark.parametrize("extra", [["--fold", "3"], ["--fold", "0", "--init-fold", "3"]], ids=["--fold", "--init-fold"])
def test_a_source_fold_that_is_not_there_is_refused_before_any_case_is_read(
    smoke_run, training_data, tiny_recipe, tmp_path, extra
):
    """The smoke run trained fold 0 only: starting from its fold 3 fails at once, with nothing cached
    and no run folder made, not after the data has been read."""
    cache, run = tmp_path / "cache", tmp_path / "run"
    options = ["--stage", "wt", "--cache", str(cache), "--init-from", str(smoke_run), *extra]
    result = _train(tiny_recipe, training_data, run, *options)
    assert result.exit_code == 2, result.output
    assert f"no wt fold 3 to start from ({smoke_run / 'wt' / 'fold3' / 'best.pt'} not found)" in "".join(
        result.output.split("\n")
    )
    assert "cache:" not in result.output
    assert not cache.exists() and not run.exists()


def test_init_fold_without_init_from_is_refused(training_data, tiny_recipe, tmp_path):
    result = _train(tiny_recipe, training_data, tmp_path / "run", "--init-fold", "0")
    assert result.exit_code == 2
    assert "--init-fold" in result.output and "needs --init-from" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_init_from_weights_of_another_width_is_one_error_line(training_data, shared_cache, tiny_recipe, tmp_path):
    weights = ROOT / "weights"  # width 8; the smoke recipe is width 4
    options = ["--stage", "wt", "--fold", "0", "--cache", str(shared_cache), "--init-from", str(weights)]
    result = _train(tiny_recipe, training_data, tmp_path / "run", *options)
    assert result.exit_code == 2, result.output
    assert f"error: {weights / 'wt_fold0.safetensors'}: does not fit the recipe's wt network (width 4" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "run" / "wt" / "fold0" / "last.pt").exists()
    # A run that never trained records nothing that would refuse the corrected command.
    assert not (tmp_path / "run" / "recipe.json").exists() and not (tmp_path / "run" / "folds.json").exists()


def test_init_from_narrower_weights_widens_them(training_data, shared_cache, tmp_path):
    """The default bundle's width-8 WT fold 0 into a width-16 recipe: the fold starts from the
    widened weights (learning rate 1e-12 keeps them), which compute what the bundle's model does,
    and its record says it was widened."""
    from safetensors.torch import load_file

    weights = ROOT / "weights"
    recipe = smoke_recipe_file(
        tmp_path, epochs="epochs = 1", learning_rate="learning_rate = 1e-12", width="width = 16", **CROPS_32
    )
    options = ["--stage", "wt", "--fold", "0", "--cache", str(shared_cache), "--init-from", str(weights)]
    result = _train(recipe, training_data, tmp_path / "run", *options)
    assert result.exit_code == 0, result.output
    trained = load_checkpoint(tmp_path / "run" / "wt" / "fold0" / "last.pt")
    assert trained["init_from"].endswith(", widened 2x (Net2WiderNet)")
    narrow = ResUNet3D(width=8, levels=4).eval()
    narrow.load_state_dict(load_file(str(weights / "wt_fold0.safetensors")))
    wide = ResUNet3D(width=16, levels=4).eval()
    wide.load_state_dict(trained["model"])
    assert wide.stem.conv1.weight.shape[0] == 16
    x = torch.randn(1, 4, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(wide(x), narrow(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    ("precision", "native_bf16", "dtype", "layout"),
    [
        (Precision.AUTO, True, torch.bfloat16, torch.contiguous_format),
        (Precision.AUTO, False, None, torch.channels_last_3d),
        (Precision.FP32, True, None, torch.channels_last_3d),
        (Precision.BF16, False, torch.bfloat16, torch.contiguous_format),
    ],
)
def test_cpu_training_precision_follows_the_cpu_unless_set(monkeypatch, precision, native_bf16, dtype, layout):
    monkeypatch.setattr(brats_cli.host, "cpu_has_native_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, precision) is dtype
    assert training_memory_format(cpu, autocast_dtype(cpu, precision)) is layout


def test_precision_option_reaches_the_forward_pass(smoke_run, training_data, shared_cache, tiny_recipe, tmp_path):
    """`--precision fp32` trains (the loss falls), says so and records it in log.csv; the smoke run
    (`auto`) records what this CPU computes natively, and where that is bf16 its weights differ
    from fp32's: the option is what the forward pass computes in."""
    options = ["--stage", "wt", "--fold", "0", "--cache", str(shared_cache), "--deterministic"]
    result = _train(tiny_recipe, training_data, tmp_path / "fp32", *options, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert "float32 forward" in " ".join(result.output.split())
    rows = _log(tmp_path / "fp32", "wt")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]), rows
    assert [row["forward"] for row in rows] == ["float32"] * len(rows)  # log.csv records it per epoch
    native = brats_cli.host.cpu_has_native_bf16()
    auto = "bfloat16" if native else "float32"
    assert {row["forward"] for row in _log(smoke_run, "wt")} == {auto}
    fp32 = load_checkpoint(tmp_path / "fp32" / "wt" / "fold0" / "last.pt")["model"]
    smoke = load_checkpoint(smoke_run / "wt" / "fold0" / "last.pt")["model"]
    assert any(not torch.equal(fp32[key], smoke[key]) for key in fp32) is native
    refused = _train(tiny_recipe, training_data, tmp_path / "fp16", *options, "--precision", "fp16")
    assert refused.exit_code == 2 and "--precision" in refused.output
