"""Weights bundles: a folder holding `manifest.json` and one weight file per model.

The manifest is validated on load, every file's sha256 is checked before any case runs, and
weights load without executing code (safetensors, never pickle).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from brats_cli.choices import REGION_STAGES, Backend, Stage, Storage
from brats_cli.errors import OutputError, WeightsError, first_line
from brats_cli.files import atomic_folder, atomic_path, is_temporary, sha256_file, write_text_atomically
from brats_cli.labels import LabelConvention
from brats_cli.preprocess import MODEL_GRID

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


WEIGHT_SUFFIX = {Backend.TORCH: ".safetensors", Backend.ONNX: ".onnx"}


@dataclass(frozen=True)
class FoldFile:
    """One model file of a stage and its SHA-256, with the files its graph reads tensors from (an
    ONNX model's external data): each is checksummed too, so every byte a model runs is verified."""

    file: str
    sha256: str
    external_data: tuple[FoldFile, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"file": self.file, "sha256": self.sha256}
        if self.external_data:
            entry["external_data"] = [{"file": f.file, "sha256": f.sha256} for f in self.external_data]
        return entry


class ModelKwargs(TypedDict):
    width: int
    levels: int
    norm_groups: int


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline: a ResUNet3D architecture and its K fold models."""

    width: int
    input_size: tuple[int, int, int]
    folds: tuple[FoldFile, ...]
    levels: int = 4
    norm_groups: int = 8
    threshold: float = 0.5

    def model_kwargs(self) -> ModelKwargs:
        return {"width": self.width, "levels": self.levels, "norm_groups": self.norm_groups}


@dataclass(frozen=True)
class Manifest:
    backend: Backend
    labels: LabelConvention
    stages: dict[Stage, StageSpec]
    et_threshold: int = 600
    # Tumour components smaller than this many voxels are removed, all but the largest; 0: none.
    min_component: int = 0
    # The tumour core's holes in 2D slices become necrosis (labels.fill_core_holes).
    fill_core_holes: bool = False
    name: str = ""
    description: str = ""
    format_version: int = FORMAT_VERSION
    # The precision a torch bundle's weight files hold (an ONNX model carries its own).
    storage: Storage = Storage.FLOAT32
    # Free-form provenance: the recipe, the data, validation scores reached.
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def region_window(self) -> tuple[int, int, int]:
        return self.stages[Stage.WT].input_size

    def fold_numbers(self, stage: Stage) -> list[int]:
        """The k-fold split fold of each of the stage's files, as `brats bundle` records them in the
        free-form metadata; 0, 1, ... where that record is absent or of another shape (not one
        distinct non-negative integer per file)."""
        count = len(self.stages[stage].folds)
        record = self.metadata.get("fold_numbers")
        numbers = record.get(stage.value) if isinstance(record, dict) else None
        if (
            isinstance(numbers, list)
            and len(numbers) == count
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers)
            and len(set(numbers)) == count
        ):
            return list(numbers)
        return list(range(count))

    def to_dict(self) -> dict[str, Any]:
        storage = {"storage": self.storage.value} if self.backend is Backend.TORCH else {}
        return {
            "format_version": self.format_version,
            "name": self.name,
            "description": self.description,
            "backend": self.backend.value,
            "labels": self.labels.value,
            **storage,
            "et_threshold": self.et_threshold,
            "min_component": self.min_component,
            "fill_core_holes": self.fill_core_holes,
            "stages": {
                stage.value: {
                    "model": "resunet3d",
                    "width": spec.width,
                    "levels": spec.levels,
                    "norm_groups": spec.norm_groups,
                    "input_size": list(spec.input_size),
                    "threshold": spec.threshold,
                    "folds": [fold.to_dict() for fold in spec.folds],
                }
                for stage, spec in self.stages.items()
            },
            "metadata": self.metadata,
        }


# Ranges a manifest's numbers must lie in. The network's sizes are bounded so that a typo (width
# 100000) is refused when the bundle loads, not as an allocation failure deep inside a case.
MAX_WIDTH = 512
LEVELS = (2, 6)
SHA256_DIGITS = 64


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise WeightsError(f"{where}: missing '{key}'")
    return _typed(data[key], key, kind, where)


def _typed(value: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise WeightsError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def _integer(data: dict[str, Any], key: str, where: str, low: int, high: int, default: int | None = None) -> int:
    """An integer field in [low, high] (a bool, a float or a string is not one)."""
    value = _require(data, key, int, where) if default is None else _typed(data.get(key, default), key, int, where)
    if not low <= value <= high:
        raise WeightsError(f"{where}: '{key}' must be an integer from {low} to {high} (got {value})")
    return value


def _sha256(value: Any, where: str) -> str:
    """A SHA-256 as 64 hexadecimal digits; upper-case digits are the same digest."""
    digest = _typed(value, "sha256", str, where)
    if len(digest) != SHA256_DIGITS or any(c not in "0123456789abcdefABCDEF" for c in digest):
        raise WeightsError(f"{where}: 'sha256' must be {SHA256_DIGITS} hexadecimal digits (got {digest!r})")
    return digest.lower()


def _stage_from_dict(data: Any, where: str, backend: Backend) -> StageSpec:
    if not isinstance(data, dict):
        raise WeightsError(f"{where}: expected a table")
    model = data.get("model", "resunet3d")
    if model != "resunet3d":
        raise WeightsError(f"{where}: unknown model kind {model!r}")
    width = _integer(data, "width", where, 1, MAX_WIDTH)
    size = _require(data, "input_size", list, where)
    if len(size) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise WeightsError(f"{where}: 'input_size' must be three positive integers")
    levels = _integer(data, "levels", where, *LEVELS, default=4)
    groups = _integer(data, "norm_groups", where, 1, MAX_WIDTH, default=8)
    threshold = _typed(data.get("threshold", 0.5), "threshold", (int, float), where)
    if not 0 < threshold < 1:  # NaN fails this too
        raise WeightsError(f"{where}: 'threshold' must lie strictly between 0 and 1 (got {threshold})")
    divisor = 2 ** (levels - 1)
    if any(s % divisor for s in size):
        raise WeightsError(f"{where}: input_size {size} must be multiples of {divisor} for {levels} levels")
    folds_data = _require(data, "folds", list, where)
    if not folds_data:
        raise WeightsError(f"{where}: no folds")
    folds = [_fold_from_dict(fold, f"{where}.folds[{i}]", backend) for i, fold in enumerate(folds_data)]
    return StageSpec(width, tuple(size), tuple(folds), levels, groups, float(threshold))


def _bundle_file_name(name: str, where: str) -> str:
    if Path(name).name != name or name.startswith(".") or name in ("", "..", MANIFEST):
        raise WeightsError(f"{where}: file {name!r} must be a plain file name inside the bundle")
    return name


def _fold_from_dict(fold: Any, where: str, backend: Backend) -> FoldFile:
    if not isinstance(fold, dict):
        raise WeightsError(f"{where}: expected a table")
    name = _bundle_file_name(_require(fold, "file", str, where), where)
    if not name.endswith(WEIGHT_SUFFIX[backend]):
        raise WeightsError(f"{where}: {name} is not a {backend.value} weight file ({WEIGHT_SUFFIX[backend]})")
    external = _typed(fold.get("external_data", []), "external_data", list, where)
    if external and backend is not Backend.ONNX:
        raise WeightsError(f"{where}: 'external_data' is for ONNX models; {backend.value} weights hold every tensor")
    data = []
    for j, entry in enumerate(external):
        entry_where = f"{where}.external_data[{j}]"
        if not isinstance(entry, dict):
            raise WeightsError(f"{entry_where}: expected a table")
        data_name = _bundle_file_name(_require(entry, "file", str, entry_where), entry_where)
        if data_name.endswith(tuple(WEIGHT_SUFFIX.values())):
            raise WeightsError(f"{entry_where}: {data_name} is named like a model file; name tensor data otherwise")
        data.append(FoldFile(data_name, _sha256(_require(entry, "sha256", str, entry_where), entry_where)))
    return FoldFile(name, _sha256(_require(fold, "sha256", str, where), where), tuple(data))


def manifest_from_dict(data: Any, source: str = MANIFEST) -> Manifest:
    """Validate a parsed manifest; every problem is a WeightsError naming the field."""
    if not isinstance(data, dict):
        raise WeightsError(f"{source}: expected a JSON object")
    version = _require(data, "format_version", int, source)
    if version > FORMAT_VERSION:
        raise WeightsError(
            f"{source}: format version {version} is newer than this brats supports ({FORMAT_VERSION}); upgrade brats"
        )
    if version < 1:
        raise WeightsError(f"{source}: invalid format version {version}")
    try:
        backend = Backend(_require(data, "backend", str, source))
        labels = LabelConvention(str(_require(data, "labels", str, source)))
    except ValueError as error:
        raise WeightsError(f"{source}: {first_line(error)}") from error
    try:
        storage = Storage(_typed(data.get("storage", Storage.FLOAT32.value), "storage", str, source))
    except ValueError:
        choices = ", ".join(s.value for s in Storage)
        raise WeightsError(f"{source}: 'storage' must be one of {choices} (got {data['storage']!r})") from None
    if backend is Backend.ONNX and storage is not Storage.FLOAT32:
        raise WeightsError(f"{source}: 'storage' is for torch bundles; an ONNX model holds its own precision")
    stages_data = _require(data, "stages", dict, source)
    unknown = sorted(set(stages_data) - {s.value for s in Stage})
    if unknown:
        raise WeightsError(f"{source}: unknown stage {unknown[0]!r} (the stages are base, wt, tc, et)")
    missing = [s.value for s in Stage if s.value not in stages_data]
    if missing:
        raise WeightsError(f"{source}: missing stages {', '.join(missing)}")
    stages = {s: _stage_from_dict(stages_data[s.value], f"{source}: stages.{s.value}", backend) for s in Stage}
    if stages[Stage.BASE].input_size != MODEL_GRID:
        raise WeightsError(f"{source}: the base stage input_size must be {list(MODEL_GRID)}")
    windows = {stages[s].input_size for s in REGION_STAGES}
    if len(windows) != 1:
        raise WeightsError(f"{source}: wt, tc and et must share one input_size")
    if any(w > g for w, g in zip(next(iter(windows)), MODEL_GRID, strict=True)):
        raise WeightsError(f"{source}: region input_size larger than the model grid {list(MODEL_GRID)}")
    et_threshold = _typed(data.get("et_threshold", 600), "et_threshold", int, source)
    if et_threshold < 0:
        raise WeightsError(f"{source}: 'et_threshold' must be a non-negative integer (got {et_threshold})")
    min_component = _typed(data.get("min_component", 0), "min_component", int, source)
    if min_component < 0:
        raise WeightsError(f"{source}: 'min_component' must be a non-negative integer (got {min_component})")
    fill = _typed(data.get("fill_core_holes", False), "fill_core_holes", bool, source)
    return Manifest(
        backend=backend,
        labels=labels,
        stages=stages,
        et_threshold=et_threshold,
        min_component=min_component,
        fill_core_holes=fill,
        name=_typed(data.get("name", ""), "name", str, source),
        description=_typed(data.get("description", ""), "description", str, source),
        format_version=version,
        storage=storage,
        metadata=_typed(data.get("metadata", {}), "metadata", dict, source),
    )


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    def fold_paths(self, stage: Stage) -> list[Path]:
        return [self.root / fold.file for fold in self.manifest.stages[stage].folds]


def load_bundle(root: Path, *, verify: bool = True) -> Bundle:
    """Read and validate a bundle's manifest and (by default) every weight file's checksum."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if root.exists() and not root.is_dir():
        raise WeightsError(f"{root}: is a file, not a weights bundle folder (give the folder holding {MANIFEST})")
    if not root.is_dir():
        raise WeightsError(f"{root}: weights bundle folder does not exist")
    if not manifest_path.is_file():
        raise WeightsError(f"{root}: not a weights bundle (no {MANIFEST})")
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{manifest_path}: unreadable manifest ({first_line(error)})") from error
    except RecursionError:  # thousands of nested brackets: Python's JSON parser recurses per level
        raise WeightsError(f"{manifest_path}: unreadable manifest (nested too deeply to be one)") from None
    manifest = manifest_from_dict(data, str(manifest_path))
    bundle = Bundle(root, manifest)
    if verify:
        for stage in Stage:
            for fold in manifest.stages[stage].folds:
                _verify_file(root / fold.file, fold.sha256, "weight file")
                for data_file in fold.external_data:
                    _verify_file(root / data_file.file, data_file.sha256, f"external data of {fold.file}")
                if manifest.backend is Backend.ONNX:
                    _check_external_data(root, fold)
    return bundle


def _verify_file(path: Path, sha256: str, what: str) -> None:
    if not path.is_file():
        raise WeightsError(f"{path}: {what} listed in the manifest is missing")
    if sha256_file(path) != sha256:
        raise WeightsError(f"{path}: checksum mismatch (corrupt or replaced {what})")


def external_data_files(model: Path) -> list[str]:
    """The files an ONNX model reads tensors from (its external data locations, as written), or
    none when `onnx` cannot parse it (ONNX Runtime then refuses the model itself)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    try:
        graph = onnx.load(str(model), load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends: not a model, so it reads no data
        return []
    locations = (ExternalDataInfo(t).location for t in _get_all_tensors(graph) if uses_external_data(t))
    return sorted(set(locations))


def _check_external_data(root: Path, fold: FoldFile) -> None:
    """Every file the ONNX graph reads must be one the manifest checksums for it: ONNX Runtime
    would read any location, inside the bundle or not, unverified."""
    listed = {data.file for data in fold.external_data}
    for location in external_data_files(root / fold.file):
        if os.path.normpath(location) not in listed:
            raise WeightsError(
                f"{root / fold.file}: reads tensors from {location!r}, which the manifest does not checksum "
                "(list it under the fold's external_data)"
            )


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Write `manifest.json` atomically."""
    path = Path(root) / MANIFEST
    write_text_atomically(path, json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


PACKAGED_DEFAULT = {Backend.TORCH: "_weights", Backend.ONNX: "_weights_onnx"}


def default_bundle_path(backend: Backend = Backend.TORCH) -> Path:
    """The bundled default weights: inside the installed package (`brats_cli/_weights` in the
    wheel), else `weights/` of a source checkout. The ONNX default (`brats_cli/_weights_onnx`) is
    exported when the container image is built; a pip install has none."""
    packaged = Path(__file__).parent / PACKAGED_DEFAULT[backend]
    checkout = Path(__file__).resolve().parents[1] / "weights"
    if backend is Backend.ONNX or (packaged / MANIFEST).is_file() or not checkout.is_dir():
        return packaged
    return checkout


def load_weights(path: Path | None, *, backend: Backend = Backend.TORCH, verify: bool = True) -> Bundle:
    """The bundle at `path`, or the default one of `backend`; a missing default is its own clear error."""
    if path is not None:
        return load_bundle(path, verify=verify)
    default = default_bundle_path(backend)
    if (default / MANIFEST).is_file():
        return load_bundle(default, verify=verify)
    if backend is Backend.ONNX:
        raise WeightsError(
            f"{default}: no default ONNX bundle in this installation (the container image has one); "
            "make one with `brats export --out DIR` and pass --weights DIR"
        )
    raise WeightsError(
        f"{default}: the default weights bundle is missing (no {MANIFEST}); reinstall brats or pass --weights DIR"
    )


@dataclass(frozen=True)
class Architecture:
    """What `write_torch_bundle` needs to know of a stage besides its weights."""

    width: int
    input_size: tuple[int, int, int]
    levels: int = 4
    norm_groups: int = 8
    threshold: float = 0.5


def write_torch_bundle(
    root: Path,
    weights: dict[Stage, list[dict[str, Any]]],
    architectures: dict[Stage, Architecture],
    *,
    labels: LabelConvention = LabelConvention.BRATS2021,
    et_threshold: int = 600,
    name: str = "",
    description: str = "",
    metadata: dict[str, Any] | None = None,
    storage: Storage = Storage.FLOAT32,
) -> Bundle:
    """Write a torch bundle: one `<stage>_fold<k>.safetensors` per state dict, its floating-point
    tensors in `storage`'s precision, and the manifest.

    The bundle is built in a hidden sibling folder and renamed to `root` once its manifest loads
    back, so `root` is a whole bundle or untouched, whatever stops the write (a signal, a full
    disk: OutputError). `root` may be absent, an empty folder or a bundle (only a manifest and
    weight files), which is replaced whole; a folder holding anything else is refused."""
    from safetensors.torch import save_file

    root = Path(root)
    check_bundle_target(root)
    stored: dict[Stage, list[dict[str, Any]]] = {stage: [] for stage in Stage}
    for stage in Stage:  # before anything is written: a bundle that `segment` cannot load is no bundle
        for index, state in enumerate(weights[stage]):
            stored[stage].append(stored_tensors(state, storage))
            problem = state_problem(state, architectures[stage]) or stored_range_problem(
                state, stored[stage][-1], storage
            )
            if problem:
                raise WeightsError(f"{root}: stage {stage.value} fold {index}: {problem}; nothing was written")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        with atomic_folder(root) as staging:
            stages = {}
            for stage in Stage:
                folds = []
                for index, tensors in enumerate(stored[stage]):
                    file = f"{stage.value}_fold{index}{WEIGHT_SUFFIX[Backend.TORCH]}"
                    with atomic_path(staging / file) as temporary:
                        save_file(tensors, str(temporary))
                    folds.append(FoldFile(file, sha256_file(staging / file)))
                arch = architectures[stage]
                stages[stage] = StageSpec(
                    arch.width, arch.input_size, tuple(folds), arch.levels, arch.norm_groups, arch.threshold
                )
            manifest = Manifest(
                backend=Backend.TORCH,
                labels=labels,
                stages=stages,
                et_threshold=et_threshold,
                name=name,
                description=description,
                storage=storage,
                metadata=metadata or {},
            )
            manifest_from_dict(manifest.to_dict())
            write_manifest(staging, manifest)
            load_bundle(staging)
    except OSError as error:
        raise OutputError(f"{root}: cannot write the bundle ({first_line(error)}); nothing was written") from error
    return load_bundle(root)


def stored_tensors(state: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """A state dict's tensors as a bundle stores them: contiguous, on the CPU, the floating-point
    ones in `storage`'s precision (`load_state_dict` casts them back to the model's float32)."""
    import torch

    dtype = getattr(torch, storage.value)
    tensors = {}
    for key, value in state.items():
        tensor = value.detach().contiguous().cpu()
        tensors[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return tensors


def stored_range_problem(state: dict[str, Any], stored: dict[str, Any], storage: Storage) -> str | None:
    """Why `stored` (from `stored_tensors`) does not hold `state`'s weights: a finite weight beyond
    the storage precision's range became infinite. None when every finite weight stayed finite."""
    import torch

    for key, tensor in stored.items():
        original = state[key].detach().cpu()
        if tensor.is_floating_point() and not torch.equal(torch.isfinite(tensor), torch.isfinite(original)):
            largest = float(original[torch.isfinite(original)].abs().max())
            return f"{key} holds weights up to {largest:.4g}, beyond {storage.value}'s range; store them in float32"
    return None


def stored_dtype_problem(state: dict[str, Any], storage: Storage) -> str | None:
    """Why a weight file's tensors are not what its manifest says it stores, or None."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and str(tensor.dtype) != f"torch.{storage.value}":
            stored = str(tensor.dtype).removeprefix("torch.")
            return f"{key} is stored in {stored}, but the manifest says the weights are {storage.value}"
    return None


def state_problem(state: dict[str, Any], architecture: Architecture) -> str | None:
    """Why a state dict does not load into the ResUNet3D its manifest entry describes (as
    `segment` loads it: strictly), or None when it loads."""
    from brats_cli.model import ResUNet3D

    kwargs: ModelKwargs = {
        "width": architecture.width,
        "levels": architecture.levels,
        "norm_groups": architecture.norm_groups,
    }
    try:
        ResUNet3D(**kwargs).load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as error:
        # torch's message: a heading line, then one line per mismatch; the first mismatch says most.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else first_line(error)
        shape = ", ".join(f"{key} {value}" for key, value in kwargs.items())
        return f"the weights do not fit the manifest's architecture ({shape}): {detail[:300]}"
    return None


def check_bundle_target(root: Path) -> None:
    """Refuse, before any work, a target that `write_torch_bundle` may not replace: a file, a
    link, or a folder holding anything but a bundle's files (a user's files would go with it)."""
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise OutputError(f"{root}: exists and is not a folder; choose a new --out")
    if not root.is_dir():
        return
    try:
        names = sorted(path.name for path in root.iterdir())
    except OSError as error:
        raise OutputError(f"{root}: cannot read ({first_line(error)})") from error
    bundle_files = (MANIFEST, *WEIGHT_SUFFIX.values())
    foreign = [name for name in names if not name.endswith(bundle_files) and not is_temporary(root / name)]
    if foreign:
        raise OutputError(
            f"{root}: holds files that are not a bundle's ({', '.join(foreign[:5])}); a bundle replaces the "
            "whole folder: choose a new or empty --out"
        )
