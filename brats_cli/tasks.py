"""The scoring rules of the BraTS 2023-2024 tasks that `brats evaluate --task` applies: the label
set (which labels exist, and which regions they make) and the lesion-wise settings per region.

Sources (the challenge's own scripts; README, Evaluate, quotes the lines):
- 2023: BraTS-2023-Metrics `metrics.py`, `get_LesionWiseResults`: GLI, SSA and PED dilate 3 times
  and ignore lesions of 50 mm3 or less, MEN 1 and 50, MET 1 and 2.
- 2024 glioma (post-treatment): BraTS-2024-Metrics `metrics_GLI.py`: labels NETC 1, SNFH 2, ET 3,
  RC 4 (resection cavity) with WT = 1-3 and TC = 1 + 3, so RC is in no region; 3 dilations;
  lesions of 20 mm3 or less ignored, 10 for ET.
BraTS voxels are 1 mm3, so these volumes are voxel counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

from brats_cli.choices import LabelConvention, Task
from brats_cli.errors import SettingsError
from brats_cli.labels import REGIONS, Region
from brats_cli.metrics import LesionWiseRules

# BraTS 2024 post-treatment glioma: the resection cavity, a label of its own in no tumour region.
RESECTION_CAVITY = 4


@dataclass(frozen=True)
class TaskRules:
    """How one task is scored."""

    task: Task
    # The label convention the task fixes; None: by the files (2021 or 2023, as without --task).
    convention: LabelConvention | None
    # Labels the task defines beyond the convention's that belong to no region (not warned about).
    other_labels: dict[int, str] = field(default_factory=dict)
    lesion_rules: dict[Region, LesionWiseRules] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: the lesion-wise settings per region."""
        rules = self.lesion_rules
        if len({(r.dilations, r.ignore_at_most_voxels) for r in rules.values()}) == 1:
            first = rules[REGIONS[0]]
            return f"{first.dilations} dilations, lesions of {first.ignore_at_most_voxels} voxels or fewer ignored"
        return "; ".join(
            f"{region.value} {rule.dilations} dilations, <= {rule.ignore_at_most_voxels} voxels ignored"
            for region, rule in rules.items()
        )


def _every_region(dilations: int, ignore_at_most: int) -> dict[Region, LesionWiseRules]:
    rules = LesionWiseRules(dilations=dilations, ignore_at_most_voxels=ignore_at_most)
    return dict.fromkeys(REGIONS, rules)


TASKS: dict[Task, TaskRules] = {
    Task.GLI2023: TaskRules(Task.GLI2023, None, lesion_rules=_every_region(3, 50)),
    Task.SSA2023: TaskRules(Task.SSA2023, None, lesion_rules=_every_region(3, 50)),
    Task.PED2023: TaskRules(Task.PED2023, None, lesion_rules=_every_region(3, 50)),
    Task.MEN2023: TaskRules(Task.MEN2023, None, lesion_rules=_every_region(1, 50)),
    Task.MET2023: TaskRules(Task.MET2023, None, lesion_rules=_every_region(1, 2)),
    Task.GLI2024: TaskRules(
        Task.GLI2024,
        LabelConvention.BRATS2023,
        {RESECTION_CAVITY: "RC"},
        {
            Region.WT: LesionWiseRules(dilations=3, ignore_at_most_voxels=20),
            Region.TC: LesionWiseRules(dilations=3, ignore_at_most_voxels=20),
            Region.ET: LesionWiseRules(dilations=3, ignore_at_most_voxels=10),
        },
    ),
}

DEFAULT_TASK = Task.GLI2023


def task_rules(task: Task | str | None) -> TaskRules:
    """The rules of `task` (a Task or its name; None: the default); another value is a
    SettingsError naming the argument and the tasks there are."""
    if task is None:
        return TASKS[DEFAULT_TASK]
    return TASKS[choose(Task, task, "task")]


E = TypeVar("E", bound=Enum)


def choose(kind: type[E], value: object, argument: str) -> E:
    """`value` as a member of the str Enum `kind` (a member or its value), else a SettingsError:
    `task must be one of gli2023, ..., got 'bogus'`."""
    try:
        return kind(value.value if isinstance(value, Enum) else value)
    except (ValueError, TypeError):
        choices = ", ".join(str(member.value) for member in kind)
        raise SettingsError(f"{argument} must be one of {choices}, got {value!r}") from None
