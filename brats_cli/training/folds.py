"""Paper section 2.5: k-fold cross-validation over case IDs.

The split is a seeded shuffle of the sorted case IDs dealt round-robin into k folds, written to
`folds.json` in the run folder and read back by every later command on that run (resume, other
stages, other ranks, `brats bundle`), so all models of a run agree on which cases they never saw.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brats_cli.errors import InputError
from brats_cli.files import write_text_atomically

FOLDS_FILE = "folds.json"


@dataclass(frozen=True)
class Folds:
    seed: int
    folds: tuple[tuple[str, ...], ...]  # validation case IDs of each fold

    @property
    def case_ids(self) -> list[str]:
        return sorted(case_id for fold in self.folds for case_id in fold)

    def split(self, fold: int) -> tuple[list[str], list[str]]:
        """(training IDs, validation IDs) of one fold."""
        validation = list(self.folds[fold])
        held_out = set(validation)
        return [c for c in self.case_ids if c not in held_out], validation

    def to_dict(self) -> dict:
        return {"seed": self.seed, "folds": [list(fold) for fold in self.folds]}


def make_folds(case_ids: Sequence[str], k: int, seed: int) -> Folds:
    """Shuffle the sorted IDs with `seed` and deal them into k folds (sizes differ by at most one)."""
    if len(set(case_ids)) != len(case_ids):
        raise InputError("duplicate case IDs in the training data")
    if len(case_ids) < k:
        raise InputError(f"{len(case_ids)} labelled case(s) for {k} folds: every fold needs one validation case")
    order = np.random.default_rng(seed).permutation(len(case_ids))
    ordered = [sorted(case_ids)[i] for i in order]
    return Folds(seed, tuple(tuple(sorted(ordered[i::k])) for i in range(k)))


def load_or_create_folds(run: Path, case_ids: Sequence[str], k: int, seed: int) -> Folds:
    """The run's `folds.json`, created on first use; an existing one must cover the same cases."""
    path = Path(run) / FOLDS_FILE
    if not path.exists():
        folds = make_folds(case_ids, k, seed)
        write_text_atomically(path, json.dumps(folds.to_dict(), indent=1) + "\n")
        return folds
    folds = read_folds(path)
    if len(folds.folds) != k:
        raise InputError(f"{path}: {len(folds.folds)} folds, but the recipe asks for {k}; use a new --out folder")
    stored, found = set(folds.case_ids), set(case_ids)
    if stored != found:
        missing = sorted(stored - found)
        extra = sorted(found - stored)
        detail = "; ".join(
            part
            for part in (
                f"missing from the data: {', '.join(missing[:5])}" if missing else "",
                f"not in the folds: {', '.join(extra[:5])}" if extra else "",
            )
            if part
        )
        raise InputError(f"{path}: the data's cases differ from this run's folds ({detail}); use a new --out folder")
    return folds


def read_folds(path: Path) -> Folds:
    try:
        data = json.loads(Path(path).read_text())
        folds = tuple(tuple(str(c) for c in fold) for fold in data["folds"])
        return Folds(int(data["seed"]), folds)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: unreadable folds file ({error})") from error
