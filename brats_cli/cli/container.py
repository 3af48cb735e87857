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

import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    "min_component",
    "fill_core_holes",
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


# A parameters file sets a dozen short options; anything far larger is not one. Read no more than
# this, so a huge file (or /dev/zero) is refused before it is parsed.
MAX_PARAMETERS_BYTES = 64 * 1024
# `option: value` or `option: [a, b]`: a mapping, a list, a scalar. Deeper nesting is refused while
# the document is composed, before PyYAML's recursive composer can run out of stack.
MAX_PARAMETERS_DEPTH = 3


def read_parameters(path: Path) -> object:
    """The parsed YAML document of a parameters file, read from at most MAX_PARAMETERS_BYTES of
    UTF-8 text. Aliases (`*name`) are refused where they appear, before any is expanded: a few
    hundred bytes of nested aliases expand to gigabytes ("billion laughs")."""
    import yaml

    if path.exists() and not path.is_file():  # a folder, or a FIFO that would block the read
        raise UsageError(f"{path}: cannot read the parameters file (not a regular file)")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PARAMETERS_BYTES + 1)
    except OSError as error:
        raise UsageError(f"{path}: cannot read the parameters file ({first_line(error)})") from error
    if len(data) > MAX_PARAMETERS_BYTES:
        raise UsageError(f"{path}: larger than {MAX_PARAMETERS_BYTES // 1024} KiB; not a parameters file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: not UTF-8 text (byte {error.start}); not a parameters file") from error
    loader = _parameters_loader()(text)
    try:
        return loader.get_single_data()
    except _Refused as refused:
        raise UsageError(f"{path}: line {refused.line}: {refused.reason}; not a parameters file") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: not a YAML file ({first_line(error)})") from error
    finally:
        loader.dispose()


class _Refused(Exception):
    """A parameters file construct refused while it is composed (the file is named by the caller)."""

    def __init__(self, reason: str, line: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


@functools.cache
def _parameters_loader() -> Any:
    """The loader class, made when yaml is first needed (it is imported only by `infer`)."""
    import yaml

    class ParametersLoader(yaml.SafeLoader):
        """PyYAML's safe loader that refuses aliases and nesting deeper than a parameters file's."""

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.depth = 0

        def compose_node(self, parent: object, index: object) -> object:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise _Refused("YAML aliases (*name) are not allowed", event.start_mark.line + 1)
            if self.depth >= MAX_PARAMETERS_DEPTH:
                raise _Refused("values nested deeper than `option: [a, b]`", event.start_mark.line + 1)
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return ParametersLoader


def parameter_options(path: Path) -> list[str]:
    """The `brats segment` options a YAML parameters file sets: `key: value` per option (dashes or
    underscores), true/false for switches, null for the default; lists (of plain values) become `0,1`."""
    document = read_parameters(path)
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
        elif isinstance(value, list) and value and all(_plain(item) for item in value):
            options += [flag, ",".join(str(item) for item in value)]
        elif _plain(value):
            options += [flag, str(value)]
        else:
            raise UsageError(f"{path}: {key}: expected a value, a list of values or null, got {value!r}"[:300])
    return options


def _plain(value: object) -> bool:
    """A scalar an option can take: text or a number (not a switch, a date or binary data)."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


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
