"""Shared fixtures: synthetic BraTS-space cases with known geometry, tiny weight bundles, and the
real public cases in ../shared/data/real. The builders live in tests/builders.py (benchmarks use
them too, as `tests.builders`) and are re-exported here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from builders import (  # noqa: F401  (re-exported for the tests)
    FLAIR_THRESHOLDS,
    LPS_AFFINE,
    flair_bundle,
    flair_network,
    random_bundle,
    ras_affine,
    synthetic_image,
    write_case,
)

from brats_cli.bundle import Bundle, Stage

# ../shared/data/real beside the checkout; a git worktree one level deeper (wt/<name>) finds it
# one more level up.
REAL_DATA = next(
    (
        folder / "shared" / "data" / "real"
        for folder in Path(__file__).resolve().parents[1].parents
        if (folder / "shared" / "data" / "real").is_dir()
    ),
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real",
)


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real cases not found at {REAL_DATA} (the project's shared data folder)")
    return REAL_DATA


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Bundle:
    return random_bundle(tmp_path_factory.mktemp("bundle"), window=(64, 64, 64))


@pytest.fixture(scope="session")
def flair_test_bundle(tmp_path_factory) -> Bundle:
    return flair_bundle(tmp_path_factory.mktemp("flair-bundle"))


@pytest.fixture(scope="session")
def background_bundle(tmp_path_factory) -> Bundle:
    """Tiny hand-set networks whose base model finds nothing: the fastest real network path, for
    tests of files, names and which cases run. Shared by every test: none may change it."""
    return flair_bundle(tmp_path_factory.mktemp("background"), window=(64, 64, 64), thresholds={Stage.BASE: 1e6})


@pytest.fixture
def make_case(tmp_path) -> Callable[..., Path]:
    def make(case_id: str = "BraTS2021_00001", root: Path | None = None, **kwargs) -> Path:
        image = kwargs.pop("image", None)
        if image is None:
            image = synthetic_image()
        return write_case(root or tmp_path / "input", case_id, image, **kwargs)

    return make
