"""Paper section 2.5: k-fold cross-validation over case IDs.

The split is a seeded shuffle of the sorted case IDs dealt round-robin into k folds, written to
`folds.json` in the run folder and read back by every later command on that run (resume, other
stages, other ranks, `brats bundle`), so all models of a run agree on which cases they never saw.

Training-only cases (`brats train --extra`: external or synthetic data) join the training side of
every fold and are never validated on; they do not enter the shuffle, so adding them leaves the
split of the other cases as it was.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brats_cli.errors import InputError, first_line
from brats_cli.files import write_text_atomically

FOLDS_FILE = "folds.json"


@dataclass(frozen=True)
class Folds:
    seed: int
    folds: tuple[tuple[str, ...], ...]  # validation case IDs of each fold
    training_only: tuple[str, ...] = ()  # in every fold's training set, never validated on

    @property
    def case_ids(self) -> list[str]:
        """The cases dealt into folds (training-only cases excluded)."""
        return sorted(case_id for fold in self.folds for case_id in fold)

    def split(self, fold: int) -> tuple[list[str], list[str]]:
        """(training IDs, validation IDs) of one fold."""
        validation = list(self.folds[fold])
        held_out = set(validation)
        return [c for c in self.case_ids if c not in held_out] + list(self.training_only), validation

    def to_dict(self) -> dict:
        data: dict = {"seed": self.seed, "folds": [list(fold) for fold in self.folds]}
        if self.training_only:
            data["training_only"] = list(self.training_only)
        return data


def make_folds(case_ids: Sequence[str], k: int, seed: int, training_only: Sequence[str] = ()) -> Folds:
    """Shuffle the sorted IDs with `seed` and deal them into k folds (sizes differ by at most one);
    `training_only` IDs are added to every fold's training side."""
    if len(set(case_ids)) != len(case_ids):
        raise InputError("duplicate case IDs in the training data")
    both = sorted(set(case_ids) & set(training_only))
    if both or len(set(training_only)) != len(training_only):
        shown = ", ".join(both[:5]) or "repeated among themselves"
        raise InputError(f"duplicate case IDs between the training data and the training-only cases: {shown}")
    if len(case_ids) < k:
        raise InputError(f"{len(case_ids)} labelled case(s) for {k} folds: every fold needs one validation case")
    order = np.random.default_rng(seed).permutation(len(case_ids))
    ordered = [sorted(case_ids)[i] for i in order]
    return Folds(seed, tuple(tuple(sorted(ordered[i::k])) for i in range(k)), tuple(sorted(training_only)))


def load_or_create_folds(
    run: Path, case_ids: Sequence[str], k: int, seed: int, training_only: Sequence[str] = ()
) -> Folds:
    """The run's `folds.json`, created on first use; an existing one must cover the same cases
    (the same training-only ones included)."""
    path = Path(run) / FOLDS_FILE
    if not path.exists():
        folds = make_folds(case_ids, k, seed, training_only)
        write_text_atomically(path, json.dumps(folds.to_dict(), indent=1) + "\n")
        return folds
    folds = read_folds(path)
    if len(folds.folds) != k:
        raise InputError(f"{path}: {len(folds.folds)} folds, but the recipe asks for {k}; use a new --out folder")
    if set(folds.training_only) != set(training_only):
        raise InputError(
            f"{path}: the run's training-only cases (--extra) differ from this command's "
            f"({len(folds.training_only)} in the run, {len(set(training_only))} given); "
            "pass the run's --extra or use a new --out folder"
        )
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
        return Folds(int(data["seed"]), folds, tuple(str(c) for c in data.get("training_only", [])))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: unreadable folds file ({first_line(error)})") from error
