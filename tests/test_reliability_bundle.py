"""`brats bundle` (and every torch bundle written) is whole or untouched: a signal or a full disk
leaves no half bundle and no staging folder, an older bundle stays as it was until the new one
replaces it, and a folder holding anything but a bundle is never replaced."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import random_bundle
from typer.testing import CliRunner

from brats_cli.bundle import Stage, load_bundle
from brats_cli.cli.app import app
from brats_cli.errors import OutputError, WeightsError
from brats_cli.files import TEMP_MARKER
from brats_cli.interrupts import Interrupted
from brats_cli.preprocess import MODEL_GRID

runner = CliRunner()


def one_line(output: str) -> str:
    return " ".join(output.split())


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def failing_save(monkeypatch, error: BaseException, after: int = 2) -> None:
    """safetensors' save_file fails at its (after+1)-th call: a disk that fills, or a signal."""
    real, calls = safetensors.torch.save_file, []

    def save_file(tensors, path, *args, **kwargs):
        if len(calls) == after:
            raise error
        calls.append(path)
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


@pytest.mark.parametrize(
    "error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), Interrupted(15)], ids=["disk full", "SIGTERM"]
)
def test_a_failed_write_leaves_the_older_bundle_and_no_staging(tmp_path, monkeypatch, error):
    older = random_bundle(tmp_path / "bundle", seed=1)
    before = {name: (older.root / name).read_bytes() for name in listing(older.root)}
    failing_save(monkeypatch, error)
    with pytest.raises(OutputError if isinstance(error, OSError) else Interrupted) as raised:
        random_bundle(tmp_path / "bundle", seed=2)
    if isinstance(error, OSError):
        assert str(raised.value) == (
            f"{tmp_path / 'bundle'}: cannot write the bundle (No space left on device); nothing was written"
        )
    assert listing(tmp_path) == ["bundle"]  # no staging, no older copy set aside
    assert {name: (older.root / name).read_bytes() for name in listing(older.root)} == before
    load_bundle(tmp_path / "bundle")


def test_a_new_bundle_replaces_an_older_one_whole(tmp_path):
    random_bundle(tmp_path / "bundle", seed=1, folds=2)
    newer = random_bundle(tmp_path / "bundle", seed=2, folds=1)
    assert "wt_fold1.safetensors" not in listing(newer.root)  # nothing of the older one is left
    assert listing(tmp_path) == ["bundle"]


def test_a_dead_runs_staging_is_swept(tmp_path):
    stale = tmp_path / f".bundle{TEMP_MARKER}999999999"
    stale.mkdir()
    (stale / "wt_fold0.safetensors").write_bytes(b"half")
    random_bundle(tmp_path / "bundle")
    assert listing(tmp_path) == ["bundle"]


@pytest.mark.parametrize("planted", ["README.md", "notes"])
def test_brats_bundle_never_replaces_a_folder_of_other_files(tmp_path, planted):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    (out / planted).write_text("a user's file")
    result = runner.invoke(app, ["bundle", str(tmp_path / "run"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"{out}: holds files that are not a bundle's ({planted}); a bundle replaces the whole folder" in one_line(
        result.output
    )
    assert listing(out) == sorted(["manifest.json", planted])


# ---------------------------------------------------------------------------------------------
# What a bundle is made of: borrowed stages, free-form metadata, deep manifests, ONNX external data

ROOT = Path(__file__).resolve().parents[1]


def fabricated_run(root: Path) -> Path:
    """A training run folder as `brats train` leaves it (recipe, folds, one best checkpoint per
    stage), with untrained weights: `brats bundle` reads nothing else, so no training is needed."""
    from brats_cli.model import ResUNet3D
    from brats_cli.training.folds import Folds
    from brats_cli.training.recipe import load_recipe

    recipe = load_recipe(ROOT / "train" / "smoke.toml")
    root.mkdir()
    (root / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    folds = Folds(seed=0, folds=tuple((f"case{k}",) for k in range(recipe.folds)))
    (root / "folds.json").write_text(json.dumps(folds.to_dict()))
    for stage, spec in recipe.stages.items():
        (root / stage.value / "fold0").mkdir(parents=True)
        state = ResUNet3D(width=spec.width, levels=spec.levels, norm_groups=spec.norm_groups).state_dict()
        checkpoint = {"model": state, "recipe": recipe.fingerprint(), "val_dice": 0.5, "val_loss": 0.5, "epoch": 1}
        torch.save(checkpoint, root / stage.value / "fold0" / "best.pt")
    return root


def rewrite_manifest(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "metadata",
    [
        {"fold_numbers": [0, 1], "validation": "good"},
        {"fold_numbers": {"tc": 5, "et": "01"}, "validation": {"tc": [1], "et": None}},
        {"fold_numbers": {"tc": [0, 0], "et": [0, 1, 2, 3]}},
        {"fold_numbers": {"tc": [True, False], "et": [-1, 2]}},
    ],
    ids=["records of other types", "numbers of other types", "wrong counts", "bools and negatives"],
)
def test_stages_from_a_bundle_with_metadata_of_other_shapes(tmp_path, metadata):
    """Free-form metadata is provenance: records of another shape are left out (fold numbers 0, 1),
    the stages are still taken, exit 0."""
    run = fabricated_run(tmp_path / "run")
    earlier = random_bundle(tmp_path / "earlier", folds=2, window=(48, 48, 48))
    rewrite_manifest(earlier.root, lambda manifest: manifest.__setitem__("metadata", metadata))
    out = tmp_path / "bundle"
    command = ["bundle", str(run), "--out", str(out), "--stages-from", str(earlier.root), "--stages", "tc,et"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    written = load_bundle(out).manifest
    assert written.metadata["fold_numbers"]["tc"] == [0, 1] and written.metadata["fold_numbers"]["et"] == [0, 1]
    assert written.metadata["validation"]["tc"] == {"from_bundle": str(earlier.root)}


def test_borrowed_tensors_that_do_not_fit_their_manifest_are_refused_before_the_bundle(tmp_path):
    """A borrowed stage whose files hold another width than its manifest says: exit 2 naming the
    file, no bundle (it would only have failed at `segment`)."""
    run = fabricated_run(tmp_path / "run")
    earlier = random_bundle(tmp_path / "earlier", window=(48, 48, 48))
    wider = random_bundle(tmp_path / "wider", window=(48, 48, 48), width=8)
    planted = earlier.root / "tc_fold0.safetensors"
    planted.write_bytes((wider.root / "tc_fold0.safetensors").read_bytes())
    digest = hashlib.sha256(planted.read_bytes()).hexdigest()
    rewrite_manifest(earlier.root, lambda manifest: manifest["stages"]["tc"]["folds"][0].update(sha256=digest))
    out = tmp_path / "bundle"
    command = ["bundle", str(run), "--out", str(out), "--stages-from", str(earlier.root), "--stages", "tc"]
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    message = one_line(result.output)
    assert (
        f"{planted}: the weights do not fit the manifest's architecture (width 4, levels 4, norm_groups 8)" in message
    )
    assert "size mismatch" in message and "Traceback" not in result.output
    assert not out.exists() and listing(tmp_path) == ["earlier", "run", "wider"]


def test_a_bundle_is_never_written_with_weights_that_do_not_load(tmp_path):
    """The library's writer checks every state against its architecture before writing anything."""
    from brats_cli.bundle import Architecture, Stage, write_torch_bundle
    from brats_cli.errors import WeightsError
    from brats_cli.model import ResUNet3D

    weights = {stage: [ResUNet3D(width=4).state_dict()] for stage in Stage}
    weights[Stage.ET][0].pop("head.bias")
    architectures = {
        stage: Architecture(4, (128, 128, 128) if stage is not Stage.BASE else MODEL_GRID) for stage in Stage
    }
    with pytest.raises(WeightsError, match=r"stage et fold 0: the weights do not fit .*Missing key\(s\).*head\.bias"):
        write_torch_bundle(tmp_path / "bundle", weights, architectures)
    assert listing(tmp_path) == []


def test_a_manifest_nested_thousands_deep_is_one_line_exit_2(tmp_path):
    bundle = random_bundle(tmp_path / "bundle")
    manifest = bundle.root / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"metadata": {}', '"metadata": ' + "[" * 5000 + "]" * 5000))
    result = runner.invoke(app, ["export", "--weights", str(bundle.root), "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 2, result.output
    assert f"{manifest}: unreadable manifest (nested too deeply to be one)" in one_line(result.output)
    assert "Traceback" not in result.output and not (tmp_path / "onnx").exists()


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("onnx")
    source = random_bundle(root / "torch", window=(32, 32, 32))
    result = runner.invoke(app, ["export", "--weights", str(source.root), "--out", str(root / "onnx")])
    assert result.exit_code == 0, result.output
    return root / "onnx"


def external_copy(onnx_bundle: Path, target: Path, location: str = "et_fold0.data") -> Path:
    """A copy of the ONNX bundle whose et model keeps its tensors in an external data file."""
    import onnx

    shutil.copytree(onnx_bundle, target)
    model = onnx.load(str(target / "et_fold0.onnx"))
    onnx.save_model(
        model, str(target / "et_fold0.onnx"), save_as_external_data=True, location=location, size_threshold=0
    )
    digest = hashlib.sha256((target / "et_fold0.onnx").read_bytes()).hexdigest()
    rewrite_manifest(target, lambda manifest: manifest["stages"]["et"]["folds"][0].update(sha256=digest))
    return target


def test_onnx_external_data_outside_the_checksums_is_refused(tmp_path, onnx_bundle):
    """A graph that reads tensors from a file the manifest does not checksum: exit 2 naming both,
    before any case (a replaced data file would otherwise run unverified)."""
    bundle = external_copy(onnx_bundle, tmp_path / "onnx")
    with pytest.raises(WeightsError, match=r"et_fold0.onnx: reads tensors from 'et_fold0.data', which the manifest"):
        load_bundle(bundle)
    result = runner.invoke(app, ["segment", str(tmp_path / "absent"), str(tmp_path / "out"), "--weights", str(bundle)])
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
    assert "reads tensors from 'et_fold0.data', which the manifest does not checksum" in one_line(result.output)


def test_onnx_external_data_listed_in_the_manifest_is_verified(tmp_path, onnx_bundle):
    bundle = external_copy(onnx_bundle, tmp_path / "onnx")
    data = bundle / "et_fold0.data"
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    entry = {"file": "et_fold0.data", "sha256": digest}
    rewrite_manifest(bundle, lambda manifest: manifest["stages"]["et"]["folds"][0].update(external_data=[entry]))
    loaded = load_bundle(bundle)
    assert loaded.manifest.stages[Stage.ET].folds[0].external_data[0].file == "et_fold0.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\1")  # one weight changed
    with pytest.raises(WeightsError, match=r"et_fold0.data: checksum mismatch \(corrupt or replaced external data"):
        load_bundle(bundle)
    data.unlink()
    with pytest.raises(WeightsError, match=r"et_fold0.data: external data of et_fold0.onnx listed in the manifest is"):
        load_bundle(bundle)


def test_onnx_external_data_may_not_leave_the_bundle(tmp_path, onnx_bundle):
    """A location outside the folder is never one the manifest may list (names are plain)."""
    bundle = external_copy(onnx_bundle, tmp_path / "onnx")
    os.replace(bundle / "et_fold0.data", tmp_path / "outside.data")
    import onnx

    model = onnx.load(str(bundle / "et_fold0.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for item in tensor.external_data:
            if item.key == "location":
                item.value = "../outside.data"
    onnx.save_model(model, str(bundle / "et_fold0.onnx"))
    digest = hashlib.sha256((bundle / "et_fold0.onnx").read_bytes()).hexdigest()
    rewrite_manifest(bundle, lambda manifest: manifest["stages"]["et"]["folds"][0].update(sha256=digest))
    with pytest.raises(WeightsError, match=r"reads tensors from '../outside.data'"):
        load_bundle(bundle)
    entry = {"file": "../outside.data", "sha256": "0" * 64}
    rewrite_manifest(bundle, lambda manifest: manifest["stages"]["et"]["folds"][0].update(external_data=[entry]))
    with pytest.raises(WeightsError, match=r"must be a plain file name inside the bundle"):
        load_bundle(bundle)
