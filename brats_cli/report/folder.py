"""The folder both reports are written to: its file names, what marks it as a report (so that a
rebuild replaces only a report, never a user's folder of the same name), the check made before any
work, and the building of it under a hidden staging name renamed into place (`files.staged_folder`),
so a half-written report never stands in place of a complete one."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from brats_cli.errors import OutputError, first_line
from brats_cli.files import staged_folder, write_text_atomically
from brats_cli.spreadsheets import csv_text

REPORT_FOLDER = "report"
INDEX = "index.html"
CSV_NAME = "report.csv"
JSON_NAME = "report.json"
CASES_FOLDER = "cases"
# What marks a folder as one of these reports, so that rebuilding replaces only a report.
KIND = {"segmentation": "brats segmentation QA report", "evaluation": "brats evaluation report"}

OnCase = Callable[[str], None]  # told each case ID as its picture is drawn


def is_report(kind: str) -> Callable[[Path], bool]:
    """Whether a folder is an earlier report of `kind` ("segmentation" or "evaluation")."""

    def check(folder: Path) -> bool:
        try:
            return json.loads((folder / JSON_NAME).read_text()).get("kind") == KIND[kind]
        except (OSError, ValueError, AttributeError):
            return False

    return check


def check_report_folder(folder: str | Path, kind: str = "segmentation") -> Path:
    """Refuse, before any work, a report folder that cannot be written: a file or a user's folder
    at its name (only an earlier report is replaced), or matplotlib missing. `kind` is
    "segmentation" or "evaluation". OutputError or DependencyError."""
    from brats_cli.io import check_output_folder
    from brats_cli.report.figures import require_matplotlib

    require_matplotlib()
    folder = Path(folder)
    if (folder.exists() or folder.is_symlink()) and not (folder.is_dir() and is_report(kind)(folder)):
        raise OutputError(f"{folder}: exists and is not a brats {kind} report; move it away or choose another folder")
    # Its parent may be made later (a segmentation's output folder is made at its first case).
    check_output_folder(folder.parent, "folder for the report")
    return folder


@contextlib.contextmanager
def staged_report(target: Path, kind: str, advice: str) -> Iterator[Path]:
    """A staging folder to build the report of `kind` in, renamed to `target` on success.
    OutputError when `target` is not an earlier report (ending with `advice`) or cannot be written."""
    try:
        with staged_folder(target, is_report(kind)) as staging:
            (staging / CASES_FOLDER).mkdir()
            yield staging
    except FileExistsError:
        raise OutputError(f"{target}: exists and is not a brats {kind} report; {advice}") from None
    except OSError as error:
        raise OutputError(f"{target}: cannot write the report ({first_line(error)})") from error


def json_safe(value: object) -> object:
    """JSON without NaN: a NaN or infinite float is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_data_files(
    folder: Path, document: Mapping[str, object], columns: Sequence[str], rows: Sequence[Mapping[str, object]]
) -> None:
    """report.json (`document`, which names the report's kind) and report.csv (`rows`)."""
    write_text_atomically(folder / JSON_NAME, json.dumps(json_safe(dict(document)), indent=1) + "\n")
    write_text_atomically(folder / CSV_NAME, csv_text(columns, rows))
