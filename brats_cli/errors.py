"""Domain errors. The CLI maps each family to an exit code and prints its message on one line."""

from __future__ import annotations


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


class ImageReadError(BratsError):
    """A single NIfTI file is unreadable or not usable (corrupt, truncated, wrong dimensionality)."""


class WeightsError(BratsError):
    """A weights bundle is missing, malformed, or fails its checksums."""


class OutputError(BratsError):
    """The output location cannot be written."""


class DependencyError(BratsError):
    """An optional extra a feature needs is not installed (the message names the extra)."""
