"""brats: the residual 3D U-Net with localisation (BraTS 2021) for glioma segmentation.

The library's entry points, imported on first use so that `import brats_cli` (and `brats --help`)
stays instant: `Segmenter` and `Settings` (segmentation, `brats_cli.segmenter`), `evaluate` and
`Evaluation` (scoring, `brats_cli.scoring`), `write_report` and `write_evaluation_report` (the visual
QA report, `brats_cli.report`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
# The distribution's name on PyPI (`pip install brats-resunet`). The import package is `brats_cli` and
# the command `brats`; PyPI's `brats` is another project (BrainLesion's BraTS orchestrator).
DISTRIBUTION = "brats-resunet"

_LAZY = {
    "Segmenter": "brats_cli.segmenter",
    "CaseResult": "brats_cli.segmenter",
    "Status": "brats_cli.segmenter",
    "Settings": "brats_cli.settings",
    "evaluate": "brats_cli.scoring",
    "Evaluation": "brats_cli.scoring",
    "write_report": "brats_cli.report",
    "write_evaluation_report": "brats_cli.report",
}
__all__ = [
    "DISTRIBUTION",
    "CaseResult",
    "Evaluation",
    "Segmenter",
    "Settings",
    "Status",
    "__version__",
    "evaluate",
    "installed_version",
    "write_evaluation_report",
    "write_report",
]

if TYPE_CHECKING:
    from brats_cli.report import write_evaluation_report, write_report
    from brats_cli.scoring import Evaluation, evaluate
    from brats_cli.segmenter import CaseResult, Segmenter, Status
    from brats_cli.settings import Settings


def installed_version() -> str:
    """The version of the installed distribution (its metadata, as pip sees it); the source's
    `__version__` when the package runs from a checkout that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return __version__


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'brats_cli' has no attribute {name!r}")
