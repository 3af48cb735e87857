"""Configuration a user hands the tool: weights manifests and training recipes that are valid JSON
or TOML with wrong types or values are refused when read, with one line naming the field and
exit 2, before anything is created; and no other exception escapes their validation (fuzzed)."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import tomllib
from conftest import synthetic_image, write_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from brats_cli.bundle import MANIFEST, load_bundle, manifest_from_dict
from brats_cli.cli.app import app
from brats_cli.errors import InputError, WeightsError
from brats_cli.training.recipe import recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "train" / "smoke.toml"
runner = CliRunner()


def one_line(output: str) -> str:
    return " ".join(output.split())


@pytest.fixture
def manifest_bundle(tmp_path, tiny_bundle) -> Path:
    """A copy of a valid tiny bundle whose manifest a test may edit."""
    return Path(shutil.copytree(tiny_bundle.root, tmp_path / "bundle"))


def edit_manifest(bundle: Path, edit) -> None:
    data = json.loads((bundle / MANIFEST).read_text())
    edit(data)
    (bundle / MANIFEST).write_text(json.dumps(data))


def _stage(name):
    return lambda edit: lambda d: edit(d["stages"][name])


BAD_MANIFESTS = [
    (_stage("wt")(lambda s: s.update(levels="4")), "stages.wt: 'levels' has the wrong type (str)"),
    (_stage("wt")(lambda s: s.update(levels=None)), "stages.wt: 'levels' has the wrong type (NoneType)"),
    (_stage("base")(lambda s: s.update(width=0)), "stages.base: 'width' must be an integer from 1 to 512 (got 0)"),
    (_stage("tc")(lambda s: s.update(width=100000)), "'width' must be an integer from 1 to 512 (got 100000)"),
    (_stage("et")(lambda s: s.update(norm_groups=0)), "stages.et: 'norm_groups' must be an integer from 1"),
    (_stage("wt")(lambda s: s.update(levels=9)), "'levels' must be an integer from 2 to 6 (got 9)"),
    (_stage("wt")(lambda s: s.update(width=8.0)), "'width' has the wrong type (float)"),
    (_stage("wt")(lambda s: s.update(threshold=math.nan)), "'threshold' must lie strictly between 0 and 1"),
    (_stage("wt")(lambda s: s.update(input_size=[64, True, 64])), "'input_size' must be three positive integers"),
    (_stage("wt")(lambda s: s["folds"][0].update(sha256="abc")), "'sha256' must be 64 hexadecimal digits"),
    (lambda d: d.update(et_threshold="600"), "'et_threshold' has the wrong type (str)"),
    (lambda d: d.update(min_component=-1), "'min_component' must be a non-negative integer (got -1)"),
    (lambda d: d.update(min_component=1.5), "'min_component' has the wrong type (float)"),
    (lambda d: d.update(fill_core_holes="yes"), "'fill_core_holes' has the wrong type (str)"),
    (lambda d: d.update(metadata=[1, 2]), "'metadata' has the wrong type (list)"),
    (lambda d: d.update(name=3), "'name' has the wrong type (int)"),
    (lambda d: d["stages"].update(extra={}), "unknown stage 'extra'"),
]


@pytest.mark.parametrize(("edit", "message"), BAD_MANIFESTS)
def test_a_bad_manifest_field_is_one_line_and_exit_2_before_any_output(manifest_bundle, tmp_path, edit, message):
    edit_manifest(manifest_bundle, edit)
    write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    result = runner.invoke(
        app, ["segment", str(tmp_path / "in"), str(tmp_path / "out"), "--weights", str(manifest_bundle)]
    )
    assert result.exit_code == 2, result.output
    assert message in one_line(result.output) and "Traceback" not in result.output
    assert f"{manifest_bundle / MANIFEST}: " in one_line(result.output)
    assert not (tmp_path / "out").exists()
    exported = runner.invoke(app, ["export", "--out", str(tmp_path / "onnx"), "--weights", str(manifest_bundle)])
    assert exported.exit_code == 2, exported.output
    assert message in one_line(exported.output) and not (tmp_path / "onnx").exists()


def test_upper_case_checksums_are_the_same_digest(manifest_bundle):
    edit_manifest(manifest_bundle, _stage("wt")(lambda s: s["folds"][0].update(sha256=s["folds"][0]["sha256"].upper())))
    assert load_bundle(manifest_bundle).manifest.stages  # verified against the lower-case digest


def test_weights_pointing_at_a_file_says_so(tmp_path, manifest_bundle):
    write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    target = manifest_bundle / MANIFEST
    result = runner.invoke(app, ["segment", str(tmp_path / "in"), str(tmp_path / "out"), "--weights", str(target)])
    assert result.exit_code == 2
    assert "is a file, not a weights bundle folder (give the folder holding manifest.json)" in one_line(result.output)


# Any JSON value where a manifest or recipe field is: validation answers with its own error or a
# valid object, never with another exception (which would reach the user as a traceback).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


def _paths(data, prefix=()):
    """Every (path of keys, value) in nested dicts and lists."""
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _paths(value, (*prefix, index))


def _replaced(data, path, value):
    data = copy.deepcopy(data)
    if not path:
        return value
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


VALID_MANIFEST = json.loads((ROOT / "weights" / MANIFEST).read_text())
VALID_RECIPE = tomllib.loads(SMOKE.read_text())
# BRATS_FUZZ_EXAMPLES=20000 for a longer run (as the reader fuzzing in test_reliability.py).
FUZZ = settings(
    max_examples=int(os.environ.get("BRATS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _fuzzed(data, valid):
    """`valid` with one of its fields (or itself) replaced by an arbitrary JSON value."""
    path = data.draw(st.sampled_from(list(_paths(valid))))
    return _replaced(valid, path, data.draw(json_values))


@given(data=st.data())
@FUZZ
def test_manifest_validation_raises_only_its_own_error(data):
    try:
        manifest_from_dict(_fuzzed(data, VALID_MANIFEST))
    except WeightsError as error:
        assert "\n" not in str(error)


@given(data=st.data())
@FUZZ
def test_recipe_validation_raises_only_its_own_error(data):
    try:
        recipe = recipe_from_dict(_fuzzed(data, VALID_RECIPE), "fuzzed.toml")
    except InputError as error:
        assert str(error).startswith("fuzzed.toml: ") and "\n" not in str(error)
    else:  # accepted: every number it holds is finite and in range for training
        assert all(math.isfinite(stage.learning_rate) and 1 <= stage.width <= 512 for stage in recipe.stages.values())
        assert 0 <= recipe.seed < 2**32


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("learning_rate = 3e-3", "learning_rate = nan", "learning_rate must be a number > 0.0, and finite (got nan)"),
        ("width = 4", "width = 100000", "width must be an integer from 1 to 512 (got 100000)"),
        ("seed = 7", "seed = 4294967296", "seed must be an integer from 0 to 4294967295"),
    ],
)
def test_a_recipe_out_of_range_is_refused_and_nothing_is_recorded(tmp_path, old, new, message):
    text = SMOKE.read_text()
    assert old in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(old, new, 1))
    data = tmp_path / "data"
    write_case(data, "BraTS2021_00001", synthetic_image())
    result = runner.invoke(app, ["train", "--recipe", str(bad), "--data", str(data), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert message in one_line(result.output) and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
