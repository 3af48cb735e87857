"""`brats-container`: the submission image's entrypoint, answering the three ways the BraTS
challenges have run images.

- BraTS 2021 (one case's files in /input) and 2025 (case folders in /input), no arguments:
  `brats segment /input /output`; arguments are `brats segment` options (`--folds 0,1`).
- BraTS 2023-2024, MLCube's docker runner:
  `infer --data_path=DIR --output_path=DIR [--parameters_file=FILE]`: `brats segment DIR DIR` with
  the options the YAML parameters file sets (mlcube/workspace/parameters.yaml).

Either way the same `brats segment` runs, so the outputs are the same files.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from brats_cli.cli import console
from brats_cli.errors import first_line

INFER = "infer"
INFER_ARGUMENTS = ("data_path", "output_path", "parameters_file")
# The `brats segment` options a parameters file may set (README, `brats segment` options). Not
# --overwrite, --profile, --log, --shard or --save-probabilities: a submission run writes exactly
# one label map per case into a fresh folder.
PARAMETERS = (
    "weights",
    "backend",
    "device",
    "precision",
    "folds",
    "fuse_folds",
    "compile",
    "tta",
    "tta_axes",
    "ensemble",
    "et_threshold",
    "labels",
)


class UsageError(Exception):
    """The `infer` command line or its parameters file cannot be used; the message says why."""


def parse_infer(arguments: Sequence[str]) -> dict[str, str]:
    """`--name=value` or `--name value` for MLCube's three `infer` arguments; data and output
    paths required."""
    found: dict[str, str] = {}
    queue = list(arguments)
    while queue:
        argument = queue.pop(0)
        name, separator, value = argument.removeprefix("--").partition("=")
        if not argument.startswith("--") or name not in INFER_ARGUMENTS:
            raise UsageError(f"infer: unexpected argument {argument!r} (expected --{', --'.join(INFER_ARGUMENTS)})")
        if not separator:
            if not queue:
                raise UsageError(f"infer: --{name} needs a value")
            value = queue.pop(0)
        found[name] = value
    missing = [name for name in ("data_path", "output_path") if name not in found]
    if missing:
        raise UsageError(f"infer: missing --{' and --'.join(missing)}")
    return found


def parameter_options(path: Path) -> list[str]:
    """The `brats segment` options a YAML parameters file sets: `key: value` per option (dashes or
    underscores), true/false for switches, null for the default; lists become `0,1`."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UsageError(f"{path}: cannot read the parameters file ({first_line(error)})") from error
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: not a YAML file ({first_line(error)})") from error
    if document is None:
        return []
    if not isinstance(document, dict):
        raise UsageError(f"{path}: expected `option: value` lines, got a {type(document).__name__}")
    options: list[str] = []
    for key, value in document.items():
        name = str(key).replace("-", "_")
        if name not in PARAMETERS:
            raise UsageError(f"{path}: unknown option {key!r} (known: {', '.join(PARAMETERS)})")
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            options.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            options += [flag, ",".join(str(item) for item in value)]
        elif isinstance(value, (str, int, float)):
            options += [flag, str(value)]
        else:
            raise UsageError(f"{path}: {key}: expected a value, a list or null, got {value!r}")
    return options


def segment_arguments(arguments: Sequence[str]) -> list[str]:
    """The `brats` command line the image runs for the arguments it was given."""
    if arguments and arguments[0] == INFER:
        infer = parse_infer(arguments[1:])
        parameters = infer.get("parameters_file")
        options = parameter_options(Path(parameters)) if parameters else []
        return ["segment", infer["data_path"], infer["output_path"], *options]
    return ["segment", "/input", "/output", *arguments]


def main(arguments: Sequence[str] | None = None) -> None:
    from brats_cli.cli.app import app

    try:
        command = segment_arguments(sys.argv[1:] if arguments is None else arguments)
    except UsageError as error:
        console.error(str(error))
        sys.exit(console.EXIT_UNUSABLE)
    app(command, prog_name="brats")
