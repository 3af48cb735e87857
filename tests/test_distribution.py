"""The distribution's name: `brats-resunet` (PyPI's `brats` is BrainLesion's orchestrator), with the
import package `brats_cli` and the `brats` command; the version comes from its installed metadata."""

from __future__ import annotations

import sys
from importlib.metadata import distribution
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from typer.testing import CliRunner

import brats_cli
from brats_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_distribution_is_brats_resunet() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == brats_cli.DISTRIBUTION == "brats-resunet"
    installed = distribution("brats-resunet")
    assert installed.version == brats_cli.__version__ == brats_cli.installed_version()
    scripts = {e.name: e.value for e in installed.entry_points if e.group == "console_scripts"}
    assert scripts == {"brats": "brats_cli.cli.app:main", "brats-container": "brats_cli.cli.container:main"}


def test_version_reports_the_installed_metadata() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"brats {brats_cli.installed_version()}"
