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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from brats_cli.errors import OutputError, first_line
from brats_cli.files import is_temporary, sha256_file, write_text_atomically
from brats_cli.quality import EnsembleQuality

QA_FOLDER = ".brats-qa"
RECORD_VERSION = 1
# A record is a few hundred bytes; anything far larger is not one (and is not read whole).
MAX_RECORD_BYTES = 1 << 20


class RunResult(Protocol):
    """What a record is made of: the fields of `segmenter.CaseResult` it reads. Declared here so
    that the segmenter depends on the records and not the other way round."""

    @property
    def case_id(self) -> str: ...
    @property
    def status(self) -> Enum: ...  # its value "done", "skipped" or "failed"
    @property
    def message(self) -> str: ...
    @property
    def seconds(self) -> float: ...
    @property
    def stage_seconds(self) -> Mapping[str, float]: ...
    @property
    def warnings(self) -> Sequence[str]: ...
    @property
    def convention(self) -> Enum | None: ...
    @property
    def output(self) -> Path | None: ...
    @property
    def quality(self) -> EnsembleQuality | None: ...


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
    def of_result(cls, result: RunResult) -> CaseRecord:
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
    def from_json(cls, data: object) -> CaseRecord:
        """A ValueError, TypeError or KeyError on anything not of a record's shape: what a record
        holds is checked field by field, since the file may be anyone's JSON."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"record version {data.get('version')!r}, expected {RECORD_VERSION}")
        status = data["status"]
        if status not in ("done", "failed"):
            raise ValueError(f"status {status!r}")
        stages = data.get("stage_seconds", {})
        warnings = data.get("warnings", [])
        if not isinstance(stages, Mapping) or not isinstance(warnings, list):
            raise TypeError("stage_seconds must be an object and warnings a list")
        quality = data.get("quality")
        if quality is not None and not isinstance(quality, Mapping):
            raise TypeError(f"quality {quality!r}")
        seconds = _optional(data, "seconds", (int, float))
        return cls(
            case_id=_required_text(data, "case_id"),
            status=str(status),
            message=_optional(data, "message", str) or "",
            seconds=None if seconds is None else _finite_number(seconds, "seconds"),
            stage_seconds={str(k): _finite_number(v, f"stage_seconds {k!r}") for k, v in stages.items()},
            warnings=[_text(w, "warnings") for w in warnings],
            convention=_optional(data, "convention", str),
            output_sha256=_optional(data, "output_sha256", str),
            quality=None if quality is None else EnsembleQuality.from_json(quality),
        )


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be text, got {type(value).__name__}")
    return value


def _required_text(data: Mapping[str, object], name: str) -> str:
    return _text(data[name], name)


def _optional(data: Mapping[str, object], name: str, kind: type | tuple[type, ...]) -> Any:
    """`data[name]` if it is of `kind` (a bool is not a number), None if absent or null."""
    value = data.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        raise TypeError(f"{name} {value!r}")
    return value


def _finite_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        raise ValueError(f"{name} out of range") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} {number!r}")
    return number


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


def _qa_folder(output: Path) -> Path:
    """OUTPUT/.brats-qa as a real folder. A link there is not the tool's (it never makes one) and
    writing through it could overwrite files anywhere: it is replaced by a folder, as a label map
    replaces a link at its name, and what it points to is left alone."""
    folder = Path(output) / QA_FOLDER
    if folder.is_symlink():
        folder.unlink(missing_ok=True)
    folder.mkdir(exist_ok=True)
    return folder


def write_record(output: Path, record: CaseRecord) -> Path:
    """Write `record` to OUTPUT/.brats-qa/<ID>.json atomically (never through a link)."""
    path = record_path(output, record.case_id)
    try:
        _qa_folder(output)
        write_text_atomically(path, json.dumps(_finite(record.to_json()), indent=1) + "\n")
    except OSError as error:
        raise OutputError(f"{path}: cannot write the QA record ({first_line(error)})") from error
    return path


def _read_record(path: Path) -> CaseRecord:
    """The record in `path`; ValueError, TypeError or KeyError (OSError, UnicodeDecodeError) on
    anything that is not a record of the case the file is named after."""
    if path.is_symlink() or not path.is_file():
        raise ValueError("not a regular file")
    with open(path, "rb") as handle:
        raw = handle.read(MAX_RECORD_BYTES + 1)
    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
    try:
        data = json.loads(raw.decode())
    except RecursionError:  # nested deeper than the parser's stack
        raise ValueError("nested too deeply") from None
    try:
        record = CaseRecord.from_json(data)
    except KeyError as error:
        raise ValueError(f"no {error.args[0]!r} field") from None
    if record.case_id != path.name.removesuffix(".json"):
        raise ValueError(f"it describes case {record.case_id!r}")
    return record


def read_records(output: Path) -> tuple[dict[str, CaseRecord], list[str]]:
    """Every readable record under OUTPUT/.brats-qa by case ID, and a note for each unreadable one
    (which is then left out: the report shows that case from its label map alone)."""
    folder = Path(output) / QA_FOLDER
    records: dict[str, CaseRecord] = {}
    notes: list[str] = []
    if folder.is_symlink():
        notes.append(f"{folder}: a link, not a QA folder this tool wrote; its records are ignored")
        return records, notes
    if not folder.is_dir():
        return records, notes
    for path in sorted(folder.glob("*.json")):
        if is_temporary(path) or path.name.startswith("."):
            continue
        try:
            record = _read_record(path)
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, OverflowError) as error:
            notes.append(
                f"{path}: unreadable QA record ({first_line(error)}); the case is shown from its label map alone"
            )
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
