"""What a segmentation run keeps for the QA report: one small JSON record per case in the hidden
folder OUTPUT/.brats-qa/, written only when a report is asked for (`brats segment --report`,
`Segmenter.segment_folder(..., quality=True)`).

Why there: a BraTS challenge output folder must hold only the `<ID>.nii.gz` predictions (the
validators reject stray files), so nothing is ever put beside the predictions by default, and what
is kept goes in a hidden folder that the tool's own readers (`brats evaluate`, case discovery) and
the challenges' `<ID>.nii.gz` globs skip. Kept on disk rather than only in memory so that
`brats report OUTPUT` can show a resumed batch's earlier cases too.

A record names the SHA-256 of the label map it describes: a later run that rewrote the map without
`--report` leaves the record stale, and the report then ignores it rather than show old numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from brats_cli.errors import OutputError, first_line
from brats_cli.files import is_temporary, sha256_file, write_text_atomically
from brats_cli.quality import EnsembleQuality

if TYPE_CHECKING:
    from brats_cli.segmenter import CaseResult

QA_FOLDER = ".brats-qa"
RECORD_VERSION = 1


@dataclass(frozen=True)
class CaseRecord:
    """A case's run as the report needs it: status, reason of a failure, seconds, warnings, the
    label convention written, and the ensemble's quality (None where it was not measured)."""

    case_id: str
    status: str  # "done" or "failed"
    message: str = ""
    seconds: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    convention: str | None = None
    output_sha256: str | None = None
    quality: EnsembleQuality | None = None

    @classmethod
    def of_result(cls, result: CaseResult) -> CaseRecord:
        digest = None
        if result.status.value == "done" and result.output is not None and result.output.is_file():
            digest = sha256_file(result.output)
        return cls(
            case_id=result.case_id,
            status=result.status.value,
            message=result.message,
            seconds=result.seconds,
            stage_seconds=dict(result.stage_seconds),
            warnings=list(result.warnings),
            convention=None if result.convention is None else result.convention.value,
            output_sha256=digest,
            quality=result.quality,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "version": RECORD_VERSION,
            "case_id": self.case_id,
            "status": self.status,
            "message": self.message,
            "seconds": self.seconds,
            "stage_seconds": self.stage_seconds,
            "warnings": self.warnings,
            "convention": self.convention,
            "output_sha256": self.output_sha256,
            "quality": None if self.quality is None else self.quality.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> CaseRecord:
        """A ValueError, TypeError or KeyError on anything malformed."""
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"record version {data.get('version')!r}, expected {RECORD_VERSION}")
        status = data["status"]
        if status not in ("done", "failed"):
            raise ValueError(f"status {status!r}")
        seconds = data.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
            raise TypeError(f"seconds {seconds!r}")
        stages = data.get("stage_seconds", {})
        warnings = data.get("warnings", [])
        if not isinstance(stages, dict) or not isinstance(warnings, list):
            raise TypeError("stage_seconds must be an object and warnings a list")
        quality = data.get("quality")
        if quality is not None and not isinstance(quality, dict):
            raise TypeError(f"quality {quality!r}")
        convention = data.get("convention")
        digest = data.get("output_sha256")
        return cls(
            case_id=str(data["case_id"]),
            status=str(status),
            message=str(data.get("message", "")),
            seconds=None if seconds is None else float(seconds),
            stage_seconds={str(k): float(v) for k, v in stages.items()},
            warnings=[str(w) for w in warnings],
            convention=None if convention is None else str(convention),
            output_sha256=None if digest is None else str(digest),
            quality=None if quality is None else EnsembleQuality.from_json(quality),
        )


def _finite(value: object) -> object:
    """JSON without NaN: a NaN or infinite float is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def record_path(output: Path, case_id: str) -> Path:
    return Path(output) / QA_FOLDER / f"{case_id}.json"


def write_record(output: Path, record: CaseRecord) -> Path:
    """Write `record` to OUTPUT/.brats-qa/<ID>.json atomically."""
    path = record_path(output, record.case_id)
    try:
        path.parent.mkdir(exist_ok=True)
        write_text_atomically(path, json.dumps(_finite(record.to_json()), indent=1) + "\n")
    except OSError as error:
        raise OutputError(f"{path}: cannot write the QA record ({first_line(error)})") from error
    return path


def read_records(output: Path) -> tuple[dict[str, CaseRecord], list[str]]:
    """Every readable record under OUTPUT/.brats-qa by case ID, and a note for each unreadable one
    (which is then left out: the report shows that case from its label map alone)."""
    folder = Path(output) / QA_FOLDER
    records: dict[str, CaseRecord] = {}
    notes: list[str] = []
    if not folder.is_dir():
        return records, notes
    for path in sorted(folder.glob("*.json")):
        if is_temporary(path) or path.name.startswith("."):
            continue
        try:
            record = CaseRecord.from_json(json.loads(path.read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError, KeyError) as error:
            notes.append(f"{path}: unreadable QA record ({error}); the case is shown from its label map alone")
            continue
        records[record.case_id] = record
    return records, notes


def current(record: CaseRecord | None, label_map: Path | None) -> CaseRecord | None:
    """`record` if it still describes `label_map` (same SHA-256), or describes a failure while no
    label map exists; None when a later run replaced what it describes."""
    if record is None:
        return None
    exists = label_map is not None and label_map.is_file()
    if record.status == "failed":
        return None if exists else record
    if not exists or record.output_sha256 is None:
        return None
    assert label_map is not None
    try:
        return record if sha256_file(label_map) == record.output_sha256 else None
    except OSError:
        return None
