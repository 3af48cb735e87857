"""Training on real scans (issue 30): the fixed validation split, the crops placed anywhere in the
grid, nnU-Net's augmentations, and the split recorded in the shipped bundle."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from brats_cli.bundle import Stage
from brats_cli.choices import Storage
from brats_cli.errors import InputError
from brats_cli.labels import LabelConvention
from brats_cli.preprocess import MODEL_GRID
from brats_cli.training.cache import CachedCase
from brats_cli.training.data import CropDataset, centred_start, library_augmentation, sample_generator
from brats_cli.training.recipe import Augmentation, load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "train" / "real" / "split.tsv"
POOL_LIST = ROOT.parent / "shared" / "data" / "real-train" / "cases.tsv"
DEFAULT = ROOT / "train" / "default.toml"


def split_rows() -> list[dict[str, str]]:
    with SPLIT.open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


# ---------------------------------------------------------------------------------------------
# The split


def test_the_split_holds_out_at_least_18_cases_of_every_dataset_including_one_without_et():
    rows = split_rows()
    validation = [r for r in rows if r["role"] == "validation"]
    assert {r["role"] for r in rows} == {"train", "validation"}
    assert len(validation) >= 18
    assert len({r["case"] for r in rows}) == len(rows) == 88
    # Stratified by size; the datasets come out in the pool's proportions (BraTS-Africa 35 of 88).
    africa = sum(r["dataset"].startswith("BraTS2023-SSA") for r in validation) / len(validation)
    assert abs(africa - 35 / 88) < 0.1
    assert sum(r["dataset"] in ("BraTS2018", "BraTS2020") for r in validation) >= 9
    assert any(r["has_et"] == "0" for r in validation)
    assert any(r["has_et"] == "0" for r in rows if r["role"] == "train")
    # Spread over sizes: the validation cases' tumours span small to very large.
    volumes = sorted(float(r["wt_ml"]) for r in validation)
    assert volumes[0] < 30 and volumes[-1] > 250


@pytest.mark.skipif(not POOL_LIST.is_file(), reason="../shared/data/real-train/cases.tsv not present")
def test_the_split_covers_exactly_the_pool_list():
    with POOL_LIST.open() as handle:
        listed = {(r["case"], r["dataset"]) for r in csv.DictReader(handle, delimiter="\t")}
    assert {(r["case"], r["dataset"]) for r in split_rows()} == listed


def test_the_shipped_bundle_records_the_split_it_was_trained_and_scored_with():
    manifest = json.loads((ROOT / "weights" / "manifest.json").read_text())
    recorded = manifest["metadata"]["split"]
    rows = split_rows()
    assert recorded["sha256"] == hashlib.sha256(SPLIT.read_bytes()).hexdigest()
    assert recorded["validation"] == sorted(r["case"] for r in rows if r["role"] == "validation")
    assert recorded["train"] == sorted(r["case"] for r in rows if r["role"] == "train")
    # The folds its models chose their epochs on hold training cases only.
    in_folds = {case for fold in manifest["metadata"]["folds"]["folds"] for case in fold}
    assert in_folds == set(recorded["train"])


def test_link_split_lays_out_the_pool_and_names_what_is_missing(tmp_path):
    rows = split_rows()
    pool = tmp_path / "pool"
    for row in rows[:-1]:  # one case not extracted
        (pool / row["case"]).mkdir(parents=True)
    result = subprocess.run(
        ["bash", str(ROOT / "train" / "real" / "link_split.sh"), str(pool), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert f"{rows[-1]['case']}: not extracted" in result.stderr
    (pool / rows[-1]["case"]).mkdir()
    result = subprocess.run(
        ["bash", str(ROOT / "train" / "real" / "link_split.sh"), str(pool), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    validation = sorted(p.name for p in (tmp_path / "out" / "validation").iterdir())
    assert validation == sorted(r["case"] for r in rows if r["role"] == "validation")
    assert len(list((tmp_path / "out" / "train").iterdir())) == len(rows) - len(validation)


# ---------------------------------------------------------------------------------------------
# The recipe


def test_the_schedule_names_recipes_stages_and_storage_that_exist():
    """train/default.sh reads each row of train/rounds.tsv as round, recipe, init, keep, storage and
    lanes: a row that does not parse would stop a retraining hours in, at that round's bundle."""
    lines = [line for line in (ROOT / "train" / "rounds.tsv").read_text().splitlines() if not line.startswith("#")]
    header, *rows = (line.split("\t") for line in lines)
    assert header == ["round", "recipe", "init", "keep", "storage", "lanes"]
    stages = {stage.value for stage in Stage}
    for number, (round_, recipe, init, keep, storage, lanes) in enumerate(rows, start=1):
        assert round_ == str(number)
        schedule = load_recipe(ROOT / recipe)
        assert init == ("phantoms" if number == 1 else f"round{number - 1}")
        assert keep == "-" or set(keep.split(",")) <= stages
        Storage(storage)  # ValueError on a precision `brats bundle --storage` does not take
        for job in lanes.replace("|", " ").split():
            stage, fold = job.split(":")
            assert stage in stages and stage not in keep.split(",")
            assert int(fold.split("@")[0]) < schedule.folds and Stage(stage) in schedule.stages


def test_the_default_recipe_reads_back_from_its_record():
    recipe = load_recipe(DEFAULT)
    assert recipe.random_crops > 0 and recipe.augmentation.uses_library
    assert recipe_from_dict(recipe.to_dict()) == recipe


def test_recipes_without_the_later_fields_keep_their_record_and_fingerprint():
    """A run recorded before random crops and the library augmentations existed still matches."""
    recipe = load_recipe(ROOT / "train" / "paper.toml")
    record = recipe.to_dict()
    assert "random_crops" not in record and "gamma_probability" not in record["augmentation"]
    assert set(record["augmentation"]) == {"flip_axes", "flip_probability", "intensity_scale", "intensity_shift"}
    assert recipe_from_dict(record).fingerprint() == recipe.fingerprint()


@pytest.mark.parametrize(
    ("table", "field", "value", "message"),
    [
        ("augmentation", "gamma_probability", 1.5, "augmentation.gamma_probability must be a number in [0, 1]"),
        ("augmentation", "rotation_degrees", -3, "augmentation.rotation_degrees must be a number > 0"),
        ("", "random_crops", "half", "random_crops must be a number in [0, 1]"),
    ],
)
def test_bad_sampling_and_augmentation_fields_are_refused_by_name(table, field, value, message):
    data = load_recipe(DEFAULT).to_dict()
    (data[table] if table else data)[field] = value
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        recipe_from_dict(data, "default.toml")


# ---------------------------------------------------------------------------------------------
# Crops


def fake_case(box: tuple[tuple[int, int], ...]) -> CachedCase:
    return CachedCase("case", Path("/nonexistent"), LabelConvention.BRATS2021, box)


def test_region_crops_go_anywhere_in_the_grid_at_the_recipes_share():
    recipe = replace(load_recipe(DEFAULT), random_crops=0.25)
    box = ((90, 110), (80, 100), (70, 90))
    dataset = CropDataset([fake_case(box)], Stage.TC, recipe, training=True, stream=3)
    centred = np.array(centred_start(box, MODEL_GRID, recipe.region_window))
    far = 0
    for epoch in range(400):
        start = np.array(dataset.start(dataset.cases[0], sample_generator(recipe.seed, 3, epoch, 0)))
        assert all(0 <= s <= g - w for s, g, w in zip(start, MODEL_GRID, recipe.region_window, strict=True))
        far += bool(np.abs(start - centred).max() > recipe.jitter)
    # A random start lands further than the jitter from the centred one most of the time.
    assert 0.12 < far / 400 < 0.25


def test_validation_crops_and_recipes_without_random_crops_stay_on_the_tumour():
    recipe = load_recipe(DEFAULT)
    box = ((90, 110), (80, 100), (70, 90))
    centred = np.array(centred_start(box, MODEL_GRID, recipe.region_window))
    validation = CropDataset([fake_case(box)], Stage.WT, recipe, training=False, stream=1)
    training = CropDataset([fake_case(box)], Stage.WT, replace(recipe, random_crops=0.0), training=True, stream=1)
    for epoch in range(50):
        rng = sample_generator(recipe.seed, 1, epoch, 0)
        assert np.array_equal(validation.start(validation.cases[0], rng), centred)
        start = np.array(training.start(training.cases[0], sample_generator(recipe.seed, 1, epoch, 0)))
        assert np.abs(start - centred).max() <= recipe.jitter


# ---------------------------------------------------------------------------------------------
# Augmentation


def crop_with_tumour() -> tuple[np.ndarray, np.ndarray]:
    """A 4-channel 48^3 crop: a brain ball (values around 0) with a bright cube, its target."""
    grid = np.indices((48, 48, 48)) - 24
    brain = (grid**2).sum(0) < 21**2
    target = (np.abs(grid) < 7).all(0)
    rng = np.random.default_rng(0)
    image = np.where(brain, rng.normal(0, 0.2, (4, 48, 48, 48)) + 3.0 * target, 0).astype(np.float32)
    return image, target[None].astype(np.float32)


ALL_ON = Augmentation(
    affine_probability=1,
    noise_probability=1,
    blur_probability=1,
    brightness_probability=1,
    contrast_probability=1,
    low_resolution_probability=1,
    gamma_probability=1,
)


def test_augmentation_is_seeded_per_sample():
    image, target = crop_with_tumour()
    transform = library_augmentation(ALL_ON)
    first = transform(image, target, np.random.default_rng(7))
    again = transform(image, target, np.random.default_rng(7))
    other = transform(image, target, np.random.default_rng(8))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_augmentation_moves_image_and_target_together_and_keeps_the_background_zero():
    image, target = crop_with_tumour()
    spatial_only = library_augmentation(Augmentation(affine_probability=1))
    everything = library_augmentation(ALL_ON)
    for seed in range(4):
        moved_image, moved_target = spatial_only(image, target, np.random.default_rng(seed))
        assert moved_image.shape == image.shape and moved_target.shape == target.shape
        assert set(np.unique(moved_target)) <= {0.0, 1.0} and moved_target.sum() > 0
        bright = moved_image.mean(0) > 1.5
        overlap = (bright & (moved_target[0] > 0)).sum() / bright.sum()
        assert overlap > 0.9, seed
        # The same seed draws the same affine in both (the spatial steps draw first): the noise,
        # blur and the rest change the moved brain only; outside it every voxel stays exactly 0,
        # as preprocessing leaves the background.
        changed, _ = everything(image, target, np.random.default_rng(seed))
        brain = (moved_image != 0).any(0)
        assert np.all(changed[:, ~brain] == 0) and (~brain).sum() > 0
        assert not np.allclose(changed[:, brain], moved_image[:, brain], atol=1e-3)
        assert np.isfinite(changed).all() and changed.dtype == np.float32


def test_a_recipe_with_no_library_step_builds_no_library_transform():
    recipe = load_recipe(ROOT / "train" / "paper.toml")
    dataset = CropDataset([], Stage.WT, recipe, training=True, stream=0)
    assert dataset.library is None


# ---------------------------------------------------------------------------------------------
# Post-processing chosen out of fold (train/real/choose_thresholds.py, record_split.py)


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "train" / "real" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _thresholds_case(chooser, et_inside: float, et_outside: float):
    """A 1x8x8 case whose WT and TC probabilities sit far from every threshold; ET is 0.9 on the
    reference's 8 voxels' first half, `et_inside` on its second half and `et_outside` on 8 voxels
    beyond it."""
    from brats_cli.labels import Region

    shape = (1, 8, 8)
    wt, tc, et = np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape, bool)
    wt[0, :6], tc[0, :4], et[0, :1] = True, True, True
    probabilities = np.zeros((*shape, 3), np.float32)
    probabilities[..., 0][wt], probabilities[..., 1][tc] = 0.95, 0.95
    probabilities[0, 0, :4, 2], probabilities[0, 0, 4:, 2] = 0.9, et_inside
    probabilities[0, 1, :, 2] = et_outside
    reference = {Region.WT: wt, Region.TC: tc, Region.ET: et}
    return chooser.Case("c", LabelConvention.BRATS2021, probabilities, reference)


def test_a_probability_threshold_moves_only_when_it_gains_the_rules_margin():
    chooser = _script("choose_thresholds")
    from brats_cli.labels import Region

    # ET false positives at 0.55 beside the reference: p > 0.6 removes them, a large gain.
    gaining = _thresholds_case(chooser, et_inside=0.95, et_outside=0.55)
    thresholds, et_threshold = chooser.choose([gaining])
    assert thresholds[Region.ET] == 0.6 and thresholds[Region.WT] == thresholds[Region.TC] == 0.5
    # Its 8 true ET voxels are fewer than every ET threshold but 0: the paper's 600 would erase them.
    assert et_threshold == 0
    # Nothing between 0.3 and 0.7 to gain: every threshold stays 0.5.
    level = _thresholds_case(chooser, et_inside=0.95, et_outside=0.0)
    assert chooser.choose([level])[0] == dict.fromkeys(chooser.REGIONS, 0.5)


def test_record_split_reads_the_choosers_last_line_and_refuses_another():
    recorder = _script("record_split")
    line = "chosen: wt=0.5 tc=0.4 et=0.6 et_threshold=300"
    assert recorder.parse_choice(line) == {"wt": 0.5, "tc": 0.4, "et": 0.6, "et_threshold": 300.0}
    line += " min_component=3000"
    assert recorder.parse_choice(line)["min_component"] == 3000
    assert recorder.parse_choice(line + " fill_core_holes=1")["fill_core_holes"] == 1
    with pytest.raises(SystemExit, match="not a choice line"):
        recorder.parse_choice(line + " fill_core_holes=2")
    with pytest.raises(SystemExit, match="not a choice line"):
        recorder.parse_choice(line + " extra=1")
    with pytest.raises(SystemExit, match="not a choice line"):
        recorder.parse_choice("chosen: 600")


def test_record_split_writes_the_split_and_the_choice_into_the_manifest(tmp_path):
    from conftest import random_bundle

    from brats_cli.bundle import MANIFEST, load_bundle
    from brats_cli.errors import WeightsError

    recorder = _script("record_split")
    root = random_bundle(tmp_path / "bundle", window=(32, 32, 32)).root
    recorder.main(root, "chosen: wt=0.5 tc=0.4 et=0.6 et_threshold=300 min_component=3000 fill_core_holes=1", [0, 1])
    manifest = load_bundle(root).manifest
    assert manifest.fill_core_holes and "folds 0, 1" in manifest.metadata["fill_core_holes_chosen_on"]
    assert [manifest.stages[s].threshold for s in Stage] == [0.5, 0.5, 0.4, 0.6]
    assert (manifest.et_threshold, manifest.min_component) == (300, 3000)
    split = manifest.metadata["split"]
    roles = [row["role"] for row in split_rows()]
    assert (len(split["train"]), len(split["validation"])) == (roles.count("train"), roles.count("validation"))
    assert "folds 0, 1" in manifest.metadata["thresholds_chosen_on"]
    before = (root / MANIFEST).read_bytes()
    with pytest.raises(WeightsError, match="'threshold' must lie strictly between 0 and 1"):
        recorder.main(root, "chosen: wt=1.5 tc=0.4 et=0.6 et_threshold=300", [0, 1])
    assert (root / MANIFEST).read_bytes() == before


def test_a_component_rule_is_named_only_when_it_gains_the_margin(capsys):
    """A 1x20x20 case of 144 tumour voxels with a separate 20-voxel false positive: removing
    components below 100 voxels takes the false positive away, a gain on WT far above the margin;
    larger N do no more, since the largest component always stays."""
    chooser = _script("choose_thresholds")
    from brats_cli.labels import Region

    shape = (1, 20, 20)
    wt = np.zeros(shape, bool)
    wt[0, :12, :12] = True
    probabilities = np.zeros((*shape, 3), np.float32)
    probabilities[..., 0][wt] = 0.9
    probabilities[0, 18:, 10:, 0] = 0.9  # the false positive
    reference = {Region.WT: wt, Region.TC: np.zeros(shape, bool), Region.ET: np.zeros(shape, bool)}
    case = chooser.Case("c", LabelConvention.BRATS2021, probabilities, reference)
    assert chooser.measure_components([case], dict.fromkeys(chooser.REGIONS, 0.5), 0) == 100
    table = capsys.readouterr().out
    assert "| 0 | 0.9351 | 1.0000 | 1.0000 | 0.9784 | 20 |" in table  # 2 * 144 / (164 + 144)
    assert "| 100 | 1.0000 | 1.0000 | 1.0000 | 1.0000 | 0 |" in table
    assert "| 3000 | 1.0000 | 1.0000 | 1.0000 | 1.0000 | 0 |" in table
    probabilities[0, 18:, 10:, 0] = 0  # without the false positive nothing is gained
    clean = chooser.Case("c", LabelConvention.BRATS2021, probabilities, reference)
    assert chooser.measure_components([clean], dict.fromkeys(chooser.REGIONS, 0.5), 0) == 0


def test_hole_filling_is_chosen_only_when_the_core_gains_the_margin(capsys):
    """A core predicted as a rim around a 9-voxel cavity (edema): filled when the reference's core
    includes the cavity, kept when the reference's cavity is edema."""
    chooser = _script("choose_thresholds")
    from brats_cli.labels import Region

    shape = (5, 9, 9)
    probabilities = np.zeros((*shape, 3), np.float32)
    probabilities[1:4, 1:8, 1:8, 0] = 0.9
    probabilities[1:4, 2:7, 2:7, 1] = 0.9
    probabilities[2, 3:6, 3:6, 1] = 0.1  # the cavity
    wt = probabilities[..., 0] > 0.5
    block = np.zeros(shape, bool)
    block[1:4, 2:7, 2:7] = True
    rim = probabilities[..., 1] > 0.5
    at = dict.fromkeys(chooser.REGIONS, 0.5)
    for core, chosen in ((block, True), (rim, False)):
        reference = {Region.WT: wt, Region.TC: core, Region.ET: np.zeros(shape, bool)}
        case = chooser.Case("c", LabelConvention.BRATS2021, probabilities, reference)
        assert chooser.measure_filling([case], at, 0, 0) is chosen
    table = capsys.readouterr().out
    assert "| kept | 1.0000 | 0.9362 | 1.0000 |" in table  # 2 * 66 / (66 + 75)
    assert "| filled | 1.0000 | 1.0000 | 1.0000 |" in table


def test_fold_bundle_keeps_one_fold_of_each_stage_and_the_single_base(tmp_path):
    from brats_cli.bundle import load_bundle

    view = _script("fold_bundle")
    view.main(ROOT / "weights", 1, tmp_path / "fold1")
    bundle = load_bundle(tmp_path / "fold1")
    for stage in (Stage.WT, Stage.TC, Stage.ET):
        assert [f.file for f in bundle.manifest.stages[stage].folds] == [f"{stage.value}_fold1.safetensors"]
        assert bundle.manifest.fold_numbers(stage) == [1]
    assert [f.file for f in bundle.manifest.stages[Stage.BASE].folds] == ["base_fold0.safetensors"]
    with pytest.raises(SystemExit, match="stage wt has no model of fold 7"):
        view.main(ROOT / "weights", 7, tmp_path / "fold7")
