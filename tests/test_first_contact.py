"""What a batch user relies on from the first run (issue 22): a folder of images without BraTS
names is a failed case that says how to rename it; exit 2 leaves nothing written; help says what
was measured; no errno codes in messages."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from conftest import synthetic_image, write_case
from typer.testing import CliRunner

from brats_cli.cli.app import app
from brats_cli.errors import WeightsError, first_line, in_words

runner = CliRunner()
TOOLKIT = ("fla", "t1", "t1c", "t2")  # BraTS-Toolkit's modality words: <ID>_fla_bet.nii.gz


def one_line(output: str) -> str:
    return " ".join(output.split())


def toolkit_case(root: Path, case_id: str) -> Path:
    """A case folder named as BraTS-Toolkit writes it: `<ID>_fla_bet.nii.gz` etc. The files are
    empty: a case without BraTS names fails on its names, before anything is read."""
    folder = root / case_id
    folder.mkdir(parents=True)
    for toolkit in TOOLKIT:
        (folder / f"{case_id}_{toolkit}_bet.nii.gz").write_bytes(b"")
    return folder


RENAMING = (
    "TK-1: no BraTS file names: rename TK-1_fla_bet.nii.gz -> TK-1_flair.nii.gz, TK-1_t1_bet.nii.gz -> "
    "TK-1_t1.nii.gz, TK-1_t1c_bet.nii.gz -> TK-1_t1ce.nii.gz, TK-1_t2_bet.nii.gz -> TK-1_t2.nii.gz (or to the "
    "BraTS 2023 names TK-1-t2f.nii.gz, TK-1-t1n.nii.gz, TK-1-t1c.nii.gz, TK-1-t2w.nii.gz)"
)


def test_a_toolkit_case_among_others_fails_with_its_renaming(tmp_path, background_bundle):
    inp = tmp_path / "in"
    write_case(inp, "BraTS2021_00001", synthetic_image())
    toolkit_case(inp, "TK-1")
    (inp / "segmentations").mkdir()  # names without a modality: not a case, one note
    (inp / "segmentations" / "mav.nii.gz").write_bytes(b"")
    result = runner.invoke(app, ["segment", str(inp), str(tmp_path / "out"), "--weights", str(background_bundle.root)])
    assert result.exit_code == 1, result.output
    text = one_line(result.output)
    assert f"error: {RENAMING}" in text
    assert "segmentations: no BraTS image files (1 NIfTI file(s) not named by modality), ignored" in text
    assert (tmp_path / "out" / "BraTS2021_00001.nii.gz").is_file()  # the good case ran
    assert "│ TK-1 " in result.output  # a row of the summary, not a note


def test_a_toolkit_case_given_alone_fails_the_same_way(tmp_path, background_bundle):
    folder = toolkit_case(tmp_path, "TK-1")
    result = runner.invoke(
        app, ["segment", str(folder), str(tmp_path / "out"), "--weights", str(background_bundle.root)]
    )
    assert result.exit_code == 1, result.output
    assert f"error: {RENAMING}" in one_line(result.output)
    assert "note:" not in result.output


def test_an_incomplete_unnamed_case_says_what_a_case_needs(tmp_path, background_bundle):
    folder = toolkit_case(tmp_path / "in", "TK-1")
    (folder / "TK-1_t2_bet.nii.gz").unlink()
    result = runner.invoke(
        app, ["segment", str(tmp_path / "in"), str(tmp_path / "out"), "--weights", str(background_bundle.root)]
    )
    assert result.exit_code == 1, result.output
    assert (
        "TK-1: no BraTS file names (found TK-1_fla_bet.nii.gz, TK-1_t1_bet.nii.gz, TK-1_t1c_bet.nii.gz): a case "
        "needs four files named <ID>_flair, _t1, _t1ce, _t2.nii.gz (BraTS 2021) or <ID>-t2f, -t1n, -t1c, -t2w.nii.gz"
    ) in one_line(result.output)


def test_the_shared_toolkit_case_is_a_failed_case(tmp_path, background_bundle):
    real = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "TCGA-DU-7294"
    if not real.is_dir():
        pytest.skip(f"{real} absent (the shared real cases)")
    result = runner.invoke(app, ["segment", str(real), str(tmp_path / "out"), "--weights", str(background_bundle.root)])
    assert result.exit_code == 1, result.output
    assert "TCGA-DU-7294_fla_bet.nii.gz -> TCGA-DU-7294_flair.nii.gz" in one_line(result.output)


# ---------------------------------------------------------------------------------------------
# Exit 2: nothing written


def test_device_cuda_without_cuda_refuses_before_the_output_folder(tmp_path, background_bundle, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    result = runner.invoke(
        app,
        [
            "segment",
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            "--weights",
            str(background_bundle.root),
            "--device",
            "cuda",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "--device cuda: no CUDA GPU is visible to PyTorch" in one_line(result.output)
    assert not (tmp_path / "out").exists()


def test_networks_that_fail_to_load_leave_no_output_folder(tmp_path, background_bundle, monkeypatch):
    from brats_cli import segmenter

    def broken(bundle, settings):
        raise WeightsError(f"{bundle.root}/wt_fold0.safetensors: cannot load weights (a stand-in failure)")

    monkeypatch.setattr(segmenter, "stage_predictors", broken)
    write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    result = runner.invoke(
        app,
        ["segment", str(tmp_path / "in"), str(tmp_path / "out" / "deeper"), "--weights", str(background_bundle.root)],
    )
    assert result.exit_code == 2, result.output
    assert "cannot load weights (a stand-in failure)" in one_line(result.output)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["file", "file above"])
def test_an_output_that_cannot_be_a_folder_is_refused_in_words(tmp_path, background_bundle, kind):
    write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" if kind == "file" else tmp_path / "taken" / "out"
    result = runner.invoke(app, ["segment", str(tmp_path / "in"), str(out), "--weights", str(background_bundle.root)])
    assert result.exit_code == 2, result.output
    text = one_line(result.output)
    assert "Errno" not in text
    expected = (
        f"{out}: exists and is not a folder (needed as the output folder)"
        if kind == "file"
        else f"{out}: cannot create output folder ({tmp_path / 'taken'} is not a folder)"
    )
    assert expected in text
    assert (tmp_path / "taken").read_text() == "a file"


# ---------------------------------------------------------------------------------------------
# Messages


def test_os_errors_are_said_in_words():
    assert in_words(FileExistsError(errno.EEXIST, "File exists", "/out")) == "File exists"
    assert in_words(OSError(errno.ENOSPC, None)) == "No space left on device"
    assert first_line(OSError("[Errno 5] Input/output error: '/x'")) == "Input/output error: '/x'"
    assert first_line(ValueError("two\nlines")) == "two"


def test_help_says_what_was_measured():
    """--compile and --fuse-folds: the help says what the README's Performance table measured (the
    numbers live there and in bench/RESULTS.md, not in the package)."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    results = (root / "bench" / "RESULTS.md").read_text()
    import typer.main

    command = typer.main.get_command(app).commands["segment"]  # type: ignore[attr-defined]
    helps = {param.name: " ".join((param.help or "").split()) for param in command.params}
    for name in ("compile", "fuse_folds"):
        assert "(README, Performance)" in helps[name]
    assert "several hundred cases" in helps["compile"] and "several hundred cases" in readme
    assert "on a CPU it made cases slower" in helps["compile"]
    for number in ("about 100 s", "1.21", "1.37", "1.33x slower"):
        assert number in readme
    assert "first case took 101 s" in results and "(**0.41x**); fast with `--compile` 136.9 s" in results
    for number in ("1.19x", "2.05x"):
        assert number in readme and number in results
    assert "slower on both machines measured" in helps["fuse_folds"].lower()
    assert "slower on both machines measured" in readme


SMOKE = Path(__file__).resolve().parents[1] / "train" / "smoke.toml"


@pytest.mark.parametrize(
    "how, message",
    [
        ("data is a file", "input is not a folder"),
        ("run folder is a file", "exists and is not a folder (needed as the run folder)"),
        ("init-from is a file", "neither a weights bundle (manifest.json) nor a training run folder"),
        ("init-from is missing", "--init-from does not exist"),
        ("fold beyond the recipe's", "--fold 7: the recipe has folds 0..4"),
    ],
)
def test_train_refused_on_its_arguments_writes_nothing(tmp_path, how, message):
    data, run = tmp_path / "data", tmp_path / "run"
    write_case(data, "BraTS2021_00001", synthetic_image())
    (tmp_path / "afile").write_text("x")
    options = ["--recipe", str(SMOKE), "--data", str(data), "--out", str(run)]
    if how == "data is a file":
        options[3] = str(tmp_path / "afile")
    elif how == "run folder is a file":
        options[5] = str(tmp_path / "afile")
    elif how == "fold beyond the recipe's":
        options += ["--fold", "7"]
    elif how == "init-from is a file":
        options += ["--init-from", str(tmp_path / "afile")]
    else:
        options += ["--init-from", str(tmp_path / "nowhere")]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["train", *options])
    assert result.exit_code == 2, result.output
    assert message in one_line(result.output) and "Errno" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder, no cache


def test_synth_into_a_file_says_so(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = runner.invoke(app, ["synth", str(tmp_path / "afile"), "--n", "1"])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'afile'}: exists and is not a folder (needed as the output folder)" in one_line(result.output)


# ---------------------------------------------------------------------------------------------
# evaluate's reports: checked before scoring, never aliasing each other or an input


@pytest.mark.parametrize("how", ["same file", "a folder", "an input"])
def test_evaluate_reports_that_would_clash_are_refused_before_scoring(tmp_path, how):
    import nibabel as nib
    import numpy as np

    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:4, 2:4, 2:4] = 2
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "BraTS2021_00001_seg.nii.gz")
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "BraTS2021_00001.nii.gz")
    prediction, reference = tmp_path / "BraTS2021_00001.nii.gz", tmp_path / "BraTS2021_00001_seg.nii.gz"
    csv, json = tmp_path / "scores.csv", tmp_path / "scores.json"
    expected = {
        "same file": (csv, csv, f"{csv}: --csv and --json name the same file"),
        "a folder": (tmp_path, json, f"{tmp_path}: is a folder; --csv needs a file name"),
        "an input": (csv, reference, f"{reference}: --json would overwrite an input of this evaluation"),
    }
    csv, json, message = expected[how]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = runner.invoke(app, ["evaluate", str(prediction), str(reference), "--csv", str(csv), "--json", str(json)])
    assert result.exit_code == 2, result.output
    assert message in one_line(result.output)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_synth_without_its_extra_says_how_to_install_it_on_one_line(tmp_path, monkeypatch):
    """`pip install -e ".[cpu]"` alone has no nilearn: synth says which extra, brackets and all
    (rich once took `[synth]` for a style tag and printed `pip install 'brats'`)."""
    from brats_cli.synth import anatomy

    monkeypatch.setattr(anatomy, "TEMPLATE_PACKAGE", "nilearn_not_installed_here")
    result = runner.invoke(app, ["synth", str(tmp_path / "out"), "--n", "1"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "pip install 'brats-resunet[synth]' (in a clone: pip install -e '.[cpu,synth]')" in line
    assert not (tmp_path / "out").exists()


def test_brackets_in_messages_survive(capsys):
    from brats_cli.cli import console

    console.error("folds [1] of /data/[x]/case")
    console.stderr.print("wrote /data/[x]/out")
    assert capsys.readouterr().err.splitlines() == ["error: folds [1] of /data/[x]/case", "wrote /data/[x]/out"]
