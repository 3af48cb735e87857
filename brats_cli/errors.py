"""Domain errors. The CLI maps each family to an exit code and prints its message on one line."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path


class BratsError(Exception):
    """Base of every error this tool raises on purpose; its message is shown to the user as is."""


class InputError(BratsError):
    """The input folder or file cannot be used at all (missing, empty, not a folder)."""


class CaseError(BratsError):
    """One case cannot be processed; the batch goes on with the other cases."""

    def __init__(self, case_id: str, reason: str) -> None:
        super().__init__(f"{case_id}: {reason}")
        self.case_id = case_id
        self.reason = reason


class UnusableCases(InputError):
    """Cases that cannot be trained on. The message summarises them on one line (the first five);
    `problems` holds one line per case, `<case ID>: <what is wrong>`, for the CLI to print them all."""

    def __init__(self, where: Path | None, problems: Sequence[str]) -> None:
        prefix = f"{where}: " if where is not None else ""
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        super().__init__(f"{prefix}{len(problems)} case(s) unusable for training: {shown}")
        self.problems = list(problems)
        self.where = where


class ImageReadError(BratsError):
    """A single NIfTI file is unreadable or not usable (corrupt, truncated, wrong dimensionality)."""


class WeightsError(BratsError):
    """A weights bundle is missing, malformed, or fails its checksums."""


class OutputError(BratsError):
    """The output location cannot be written."""


class SettingsError(BratsError, ValueError):
    """A segmentation setting out of its range or of the wrong kind."""


class DependencyError(BratsError):
    """An optional extra a feature needs is not installed (the message names the extra)."""


class ExportError(BratsError):
    """An export that cannot be done or whose verification failed."""


def in_words(error: OSError) -> str:
    """What went wrong with a file, in words and without the errno code or the file name Python
    puts in `str(error)` (`[Errno 28] No space left on device: '/out/.x.partial-7'`): "No space
    left on device". The message quoting it names the file itself, as the user knows it (not a
    temporary's name)."""
    if error.strerror:
        return error.strerror
    if error.errno:
        return os.strerror(error.errno)
    text = str(error)
    # An OSError built from a message alone (`OSError("[Errno 5] ...")` from some libraries).
    return re.sub(r"^\[Errno -?[0-9]+\]\s*", "", text).strip() or type(error).__name__


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name when it has none:
    what a one-line error message quotes of a library's exception. An OSError is said in words
    (`in_words`), never as `[Errno N] ...`."""
    if isinstance(error, OSError):
        return _first_line_of(in_words(error), error)
    return _first_line_of(str(error), error)


def _first_line_of(text: str, error: BaseException) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
