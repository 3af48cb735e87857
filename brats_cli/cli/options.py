"""Option types shared by several commands."""

from __future__ import annotations

from typing import Literal, get_args

from brats_cli.choices import ALL, AUTO, LabelConvention, Stage

# --labels: a convention, or auto (segment: by the input's file names; evaluate: by the ground
# truth's names or labels). "auto" is the command line's word for None. Spelt out for the type
# checker; checked against the enum when the CLI loads, so the two cannot drift apart.
LabelWord = Literal["auto", "2021", "2023"]
if set(get_args(LabelWord)) != {AUTO, *(c.value for c in LabelConvention)}:
    raise ImportError("brats_cli.cli.options.LabelWord differs from LabelConvention's values")


# --stage: one of the paper's four models, or all of them in order ("all" is the CLI's word for None).
StageWord = Literal["all", "base", "wt", "tc", "et"]
if set(get_args(StageWord)) != {ALL, *(s.value for s in Stage)}:
    raise ImportError("brats_cli.cli.options.StageWord differs from Stage's values")


def stage_of(value: str) -> Stage | None:
    return None if value == ALL else Stage(value)


def label_convention(value: str) -> LabelConvention | None:
    return None if value == AUTO else LabelConvention(value)
