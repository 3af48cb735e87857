"""Everything that touches NIfTI files: case discovery, reading, geometry, atomic writing.

The rest of the package sees arrays only. Images are turned into one canonical orientation (LPS,
the orientation of the released BraTS data the models were trained in) on reading, and the
`Geometry` returned with them writes results back in the input's own orientation, affine and header.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from nibabel.spatialimages import HeaderDataError, ImageDataError

from brats_cli.choices import Naming
from brats_cli.errors import CaseError, ImageReadError, InputError, OutputError, first_line
from brats_cli.files import TEMP_MARKER, atomic_path, remove_stale_temporaries, temporary_sibling  # noqa: F401

BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
CANONICAL_AXCODES: tuple[str, str, str] = ("L", "P", "S")
# Two affines agree when every entry differs by less than this (mm); BraTS files written by
# different tools differ in the last float digits of the same geometry.
AFFINE_TOLERANCE = 1e-3
# Refuse before allocating: a corrupt header can claim terabytes. 16x a BraTS volume is generous.
MAX_VOXELS = 16 * 240 * 240 * 155
# Deflate cannot expand data more than 1032-fold, so a .nii.gz of n bytes holds at most 1032 n bytes:
# a header claiming more is refused before nibabel allocates a buffer for the claim.
DEFLATE_MAX_RATIO = 1032
MAX_ID_LENGTH = 200  # with ".nii.gz" and a temporary's marker, within a file name's 255 bytes
SAFE_ID = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_ID_LENGTH - 1}}}$")


class Modality(str, Enum):
    FLAIR = "flair"
    T1 = "t1"
    T1CE = "t1ce"
    T2 = "t2"


# The paper's channel order.
CHANNEL_ORDER: tuple[Modality, ...] = (Modality.FLAIR, Modality.T1, Modality.T1CE, Modality.T2)


SUFFIX: dict[Naming, dict[Modality, str]] = {
    Naming.BRATS2021: {Modality.FLAIR: "flair", Modality.T1: "t1", Modality.T1CE: "t1ce", Modality.T2: "t2"},
    Naming.BRATS2023: {Modality.FLAIR: "t2f", Modality.T1: "t1n", Modality.T1CE: "t1c", Modality.T2: "t2w"},
}
SEPARATOR: dict[Naming, str] = {Naming.BRATS2021: "_", Naming.BRATS2023: "-"}
SEGMENTATION_SUFFIX = "seg"
NIFTI_EXTENSIONS = (".nii.gz", ".nii")

_NAME_PATTERNS: dict[Naming, re.Pattern[str]] = {
    Naming.BRATS2021: re.compile(r"^(?P<id>.+)_(?P<suffix>flair|t1ce|t1|t2|seg)\.nii(?:\.gz)?$"),
    Naming.BRATS2023: re.compile(r"^(?P<id>.+)-(?P<suffix>t2f|t1n|t1c|t2w|seg)\.nii(?:\.gz)?$"),
}
# Some tools (BrainLesion's preprocessing) write the 2023 names without a case prefix; the case
# folder then names the case.
_BARE_2023 = re.compile(r"^(?P<suffix>t2f|t1n|t1c|t2w)\.nii(?:\.gz)?$")


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_EXTENSIONS)


def nifti_stem(path: Path) -> str:
    for extension in NIFTI_EXTENSIONS:
        if path.name.endswith(extension):
            return path.name[: -len(extension)]
    return path.name


@dataclass(frozen=True)
class ParsedName:
    case_id: str
    naming: Naming
    suffix: str  # a modality suffix of `naming`, or "seg"

    @property
    def modality(self) -> Modality | None:
        for modality, suffix in SUFFIX[self.naming].items():
            if suffix == self.suffix:
                return modality
        return None


def folder_name(folder: Path) -> str:
    """The name of `folder` as its user sees it, also for `.` or `cases/..` (made absolute, so the
    working folder's own name; a symlinked folder keeps its link's name). Empty for `/` alone."""
    return Path(os.path.abspath(folder)).name


def parse_name(path: Path) -> ParsedName | None:
    """Case ID, naming and modality from a BraTS file name, or None if the name is not one.
    Bare 2023 names (`t1c.nii.gz`) take their case ID from their folder's name."""
    for naming, pattern in _NAME_PATTERNS.items():
        match = pattern.match(path.name)
        if match:
            return ParsedName(match["id"], naming, match["suffix"])
    match = _BARE_2023.match(path.name)
    if match:
        return ParsedName(folder_name(path.parent), Naming.BRATS2023, match["suffix"])
    return None


def case_id_problem(case_id: object) -> str | None:
    """Why `case_id` cannot name a case, or None if it can. A case's output is written at
    `<ID>.nii.gz` in the output folder, so an ID must be one plain file name: every ID passes
    this check, whether read from file names, taken from a folder's name or given from Python."""
    if not isinstance(case_id, str):
        return f"case ID must be a string, got {case_id!r}"
    if not case_id:
        return (
            "no case ID: name the files <ID>_flair.nii.gz ... (BraTS 2021) or <ID>-t2f.nii.gz ... (BraTS 2023), "
            "or put bare names (t2f.nii.gz, t1n.nii.gz, t1c.nii.gz, t2w.nii.gz) in a folder named for the case"
        )
    if len(case_id) > MAX_ID_LENGTH:
        return f"case ID is {len(case_id)} characters long; at most {MAX_ID_LENGTH} make a usable file name"
    if not SAFE_ID.match(case_id):
        return f"case ID {case_id!r} is not a safe file name (letters, digits, '.', '_', '-' only)"
    return None


@dataclass(frozen=True)
class Case:
    """One case's files as found on disk; `problem` says why it cannot run, if it cannot."""

    case_id: str
    naming: Naming
    files: dict[Modality, Path]
    segmentation: Path | None = None
    problem: str | None = None

    def __post_init__(self) -> None:
        # However a Case is made, one whose ID is no plain file name cannot run (load_case
        # refuses it), so nothing is ever written outside the output folder.
        if self.problem is None:
            object.__setattr__(self, "problem", case_id_problem(self.case_id))

    @property
    def output_name(self) -> str:
        return f"{self.case_id}.nii.gz"

    @property
    def probabilities_name(self) -> str:
        return probabilities_name(self.case_id)


# `--save-probabilities` writes `<ID>_probabilities.nii.gz` beside `<ID>.nii.gz`: the BraTS
# validators match `(\d{5}-\d{3})\.nii\.gz` (2023+) or files ending in `<ID>.nii.gz`, which this
# name never does, so they see one prediction per case.
PROBABILITIES_SUFFIX = "_probabilities"


def probabilities_name(case_id: str) -> str:
    return f"{case_id}{PROBABILITIES_SUFFIX}.nii.gz"


def is_probabilities_file(path: Path) -> bool:
    return path.name.endswith(f"{PROBABILITIES_SUFFIX}.nii.gz")


@dataclass
class Discovery:
    cases: list[Case]
    notes: list[str] = field(default_factory=list)


# Modality words in other tools' file names, for saying how to rename a case that has no BraTS
# names: BraTS-Toolkit's `<ID>_fla_bet.nii.gz`, `t1`, `t1c`, `t2`; bare 2021 names (`flair.nii.gz`);
# the 2023 suffixes with another separator; `t1gd`/`t2flair` as some archives write them.
_MODALITY_WORDS: dict[str, Modality] = {
    "fla": Modality.FLAIR,
    "flair": Modality.FLAIR,
    "t2f": Modality.FLAIR,
    "t2flair": Modality.FLAIR,
    "t1": Modality.T1,
    "t1n": Modality.T1,
    "t1c": Modality.T1CE,
    "t1ce": Modality.T1CE,
    "t1gd": Modality.T1CE,
    "t2": Modality.T2,
    "t2w": Modality.T2,
}


def _modality_in_name(path: Path) -> Modality | None:
    """The one modality a non-BraTS file name mentions (`TCGA-DU-7294_fla_bet.nii.gz`: FLAIR), or None."""
    words = re.split(r"[^a-z0-9]+", nifti_stem(path).lower())
    found = {_MODALITY_WORDS[word] for word in words if word in _MODALITY_WORDS}
    return found.pop() if len(found) == 1 else None


def _unnamed_case(folder: Path, images: list[Path]) -> Case | None:
    """A folder whose NIfTI files name modalities, but not as BraTS does, is a case its user meant
    to run: a failed case that says which names it found and how to rename them. None when the
    names mention no modality (a folder of segmentations, say): not a case."""
    modalities = {path: _modality_in_name(path) for path in images}
    if not any(modalities.values()):
        return None
    case_id = folder_name(folder)
    by_modality: dict[Modality, list[Path]] = defaultdict(list)
    for path, modality in modalities.items():
        if modality is not None:
            by_modality[modality].append(path)
    if all(len(by_modality[modality]) == 1 for modality in CHANNEL_ORDER):
        extension = {m: ".nii.gz" if by_modality[m][0].name.endswith(".nii.gz") else ".nii" for m in CHANNEL_ORDER}
        renames = ", ".join(
            f"{by_modality[m][0].name} -> {case_id}_{SUFFIX[Naming.BRATS2021][m]}{extension[m]}" for m in CHANNEL_ORDER
        )
        names_2023 = ", ".join(f"{case_id}-{SUFFIX[Naming.BRATS2023][m]}{extension[m]}" for m in CHANNEL_ORDER)
        problem = f"no BraTS file names: rename {renames} (or to the BraTS 2023 names {names_2023})"
    else:
        found = ", ".join(path.name for path in images)
        problem = (
            f"no BraTS file names (found {found}): a case needs four files named <ID>_flair, _t1, _t1ce, "
            "_t2.nii.gz (BraTS 2021) or <ID>-t2f, -t1n, -t1c, -t2w.nii.gz (BraTS 2023)"
        )
    return Case(case_id, Naming.BRATS2021, {}, None, problem)


def _group_folder(folder: Path) -> tuple[list[Case], list[Path]]:
    """Cases whose files lie directly in `folder`, grouped by the case ID in their names, and the
    NIfTI files there without a BraTS name."""
    groups: dict[str, list[tuple[Path, ParsedName]]] = defaultdict(list)
    # Every visible entry named like an image, files or not: a folder or a FIFO under a modality's
    # name is that case's problem, said as such, rather than a "missing modality". Hidden entries
    # are no one's images: macOS's `._<name>` resource forks, temporaries, editors' files.
    images = sorted(p for p in folder.iterdir() if is_nifti(p) and not p.name.startswith("."))
    foreign = []
    for path in images:
        parsed = parse_name(path)
        if parsed is None:
            if path.is_file():
                foreign.append(path)
            continue
        groups[parsed.case_id].append((path, parsed))
    return [_assemble_case(case_id, members) for case_id, members in sorted(groups.items())], foreign


def _ignored(foreign: list[Path]) -> list[str]:
    return [f"{path}: not a BraTS modality name, ignored" for path in foreign]


def not_a_file(path: Path, what: str) -> str | None:
    """What is wrong when an entry named like a NIfTI file is not a regular file (never opened:
    reading a FIFO would block), or None for a file."""
    if path.is_file():
        return None
    kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device?)"
    return f"{path} is {kind}, not {what}"


def _assemble_case(case_id: str, members: list[tuple[Path, ParsedName]]) -> Case:
    namings = {parsed.naming for _, parsed in members}
    naming = Naming.BRATS2023 if Naming.BRATS2023 in namings else Naming.BRATS2021
    files: dict[Modality, list[Path]] = defaultdict(list)
    segmentations: list[Path] = []
    for path, parsed in members:
        if parsed.suffix == SEGMENTATION_SUFFIX:
            segmentations.append(path)
        elif parsed.modality is not None:
            files[parsed.modality].append(path)
    odd = [not_a_file(path, "an image file") for path, _ in members if not path.is_file()]
    problem = odd[0] if odd else case_id_problem(case_id) or _files_problem(naming, namings, files)
    single = {m: paths[0] for m, paths in files.items() if paths}
    return Case(case_id, naming, single, segmentations[0] if segmentations else None, problem)


def _files_problem(naming: Naming, namings: set[Naming], files: dict[Modality, list[Path]]) -> str | None:
    """What is wrong with a case's set of image files (mixed namings, a modality twice or missing)."""
    if len(namings) > 1:
        return "mixes BraTS 2021 and 2023 file names"
    duplicated = [m for m in CHANNEL_ORDER if len(files[m]) > 1]
    if duplicated:
        names = ", ".join(p.name for p in files[duplicated[0]])
        return f"two files for {SUFFIX[naming][duplicated[0]]}: {names}"
    missing = [m for m in CHANNEL_ORDER if not files[m]]
    if missing:
        return f"missing modality {', '.join(SUFFIX[naming][m] for m in missing)}"
    return None


def discover_cases(root: Path) -> Discovery:
    """Find the cases under `root`: a folder of case folders, one case folder, or one case's
    files directly in `root` (the BraTS 2021 container harness)."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: input folder does not exist")
    if not root.is_dir():
        raise InputError(f"{root}: input is not a folder")
    notes: list[str] = []
    try:
        cases, foreign = _group_folder(root)
        subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except PermissionError as error:
        raise InputError(f"{error.filename}: cannot read folder (permission denied)") from error
    for sub in subfolders:
        try:
            found, stray = _group_folder(sub)
            empty = not found and not stray and not any(sub.iterdir())
        except PermissionError:
            # One unreadable case folder is that case's failure, not the batch's: named by the folder.
            cases.append(Case(sub.name, Naming.BRATS2021, {}, None, f"{sub}: cannot read folder (permission denied)"))
            continue
        unnamed = _unnamed_case(sub, stray) if stray and not found else None
        if unnamed is not None:
            cases.append(unnamed)
            continue
        if found:
            notes.extend(_ignored(stray))
        elif stray:
            notes.append(f"{sub}: no BraTS image files ({len(stray)} NIfTI file(s) not named by modality), ignored")
        elif not empty:
            notes.append(f"{sub}: no BraTS image files, ignored")
        cases.extend(found)
    # INPUT itself is a would-be case only when nothing else is one: a BraTS-Toolkit case folder
    # given alone fails as it does among others; beside real cases, its stray files are notes.
    unnamed = _unnamed_case(root, foreign) if foreign and not cases else None
    if unnamed is not None:
        cases.append(unnamed)
    else:
        notes[:0] = _ignored(foreign)
    seen: dict[str, Case] = {}
    unique: list[Case] = []
    for case in cases:
        if case.case_id in seen:
            unique.append(Case(case.case_id, case.naming, case.files, None, "case ID appears in two folders"))
            continue
        seen[case.case_id] = case
        unique.append(case)
    if not unique:
        raise InputError(f"{root}: no BraTS cases found (expected <ID>_flair.nii.gz or <ID>-t2f.nii.gz files)")
    return Discovery(unique, notes)


# ---------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class Geometry:
    """Where an image lies in the world, and how its voxel axes map to the canonical (LPS) ones."""

    affine: np.ndarray
    header: nib.Nifti1Header
    shape: tuple[int, ...]

    @property
    def _orientation(self) -> np.ndarray:
        return io_orientation(self.affine)

    @property
    def canonical_shape(self) -> tuple[int, ...]:
        transform = ornt_transform(self._orientation, axcodes2ornt(CANONICAL_AXCODES))
        return tuple(self.shape[int(axis)] for axis in np.argsort(transform[:, 0]))

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Reorient the last three axes of `array` from the file's axes to LPS."""
        transform = ornt_transform(self._orientation, axcodes2ornt(CANONICAL_AXCODES))
        return _apply_spatial(array, transform)

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Exact inverse of `to_canonical`."""
        transform = ornt_transform(axcodes2ornt(CANONICAL_AXCODES), self._orientation)
        return _apply_spatial(array, transform)

    def matches(self, other: Geometry) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=AFFINE_TOLERANCE)


def affine_problem(affine: np.ndarray) -> str | None:
    """Why `affine` cannot map voxels to the world, or None: not 4x4, NaN or Inf, or singular
    (a zero voxel size, two axes alike), which has no orientation to reorient by."""
    if affine.shape != (4, 4):
        return f"of shape {affine.shape}, not 4x4"
    if not np.all(np.isfinite(affine)):
        return "holds NaN or Inf"
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        return "is singular (a zero voxel size, or two voxel axes alike)"
    return None


def _apply_spatial(array: np.ndarray, transform: np.ndarray) -> np.ndarray:
    if array.ndim == 3:
        return np.ascontiguousarray(apply_orientation(array, transform))
    return np.stack([_apply_spatial(channel, transform) for channel in array])


# ---------------------------------------------------------------------------------------------
# Reading

# Everything nibabel, numpy, gzip and zlib raise on bad bytes (found by tests/test_reliability.py's
# fuzzing: corrupt headers give HeaderDataError for unknown data types, OverflowError for huge offsets).
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    OverflowError,
    struct.error,
    zlib.error,
    ImageFileError,
    HeaderDataError,
    ImageDataError,
    gzip.BadGzipFile,
    MemoryError,
)


def _load_header(path: Path) -> nib.Nifti1Image:
    try:
        image = nib.load(path)
    except FileNotFoundError as error:
        raise ImageReadError(f"{path}: file not found") from error
    except _READ_ERRORS as error:
        raise ImageReadError(f"{path}: not a readable NIfTI file ({first_line(error)})") from error
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageReadError(f"{path}: not a NIfTI image")
    if len(image.shape) != 3:
        raise ImageReadError(f"{path}: {len(image.shape)}D image {image.shape}, expected a 3D volume")
    stored = image.header.get_data_dtype()
    if stored.kind not in "biuf":  # RGB, complex or a corrupt datatype code
        raise ImageReadError(f"{path}: voxel type {stored} is not a scalar integer or float type")
    voxels = int(np.prod(image.shape, dtype=np.float64))
    if voxels <= 0 or voxels > MAX_VOXELS:
        raise ImageReadError(f"{path}: header claims {image.shape} voxels, refusing to read")
    _check_data_size(image, path, voxels)
    if affine_problem(image.affine):
        raise ImageReadError(f"{path}: header holds no usable voxel-to-world affine (singular or not finite)")
    return image


def _data_end(image: nib.Nifti1Image) -> int:
    """Where the voxels the header describes end: the data offset plus their bytes."""
    # The loaded header's vox_offset reads 0; the array proxy holds the file's offset.
    offset = int(getattr(image.dataobj, "offset", image.header.get_data_offset()))
    voxels = int(np.prod(image.shape, dtype=np.int64))
    return offset + voxels * image.header.get_data_dtype().itemsize


def _check_data_size(image: nib.Nifti1Image, path: Path, voxels: int) -> None:
    """Refuse a file too short for the data its header describes before anything is allocated."""
    try:
        needed = _data_end(image)
        size = path.stat().st_size
    except _READ_ERRORS as error:
        raise ImageReadError(f"{path}: not a readable NIfTI file ({first_line(error)})") from error
    compressed = path.name.endswith(".gz")
    holds = size * DEFLATE_MAX_RATIO if compressed else size
    if needed > holds:
        at_most = "at most " if compressed else ""
        raise ImageReadError(
            f"{path}: truncated or corrupt (the header describes {needed} bytes, the file holds {at_most}{holds})"
        )


def _read_data(image: nib.Nifti1Image, path: Path, dtype: type) -> np.ndarray:
    try:
        if path.name.endswith(".gz"):
            image = _verified_gzip_image(image, path)
        return np.asarray(image.get_fdata(dtype=np.float32) if dtype is np.float32 else image.dataobj)
    except _READ_ERRORS as error:
        raise ImageReadError(f"{path}: corrupt or truncated image data ({first_line(error)})") from error


def _geometry(image: nib.Nifti1Image) -> Geometry:
    return Geometry(image.affine.copy(), image.header.copy(), tuple(image.shape))


# Decompressed bytes a .nii.gz may hold beyond the image its header describes (some writers pad);
# more is refused rather than decompressed, and never kept in memory.
MAX_TRAILING_BYTES = 1 << 20
_CHUNK = 1 << 20


def _verified_gzip_image(image: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    """The image re-read from its decompressed stream, checked to the end. nibabel stops reading
    a .nii.gz once it has the voxels, so the CRC at the end of the stream is never checked and a
    corrupted file decodes to garbage voxels; decompressing to the end checks it (BadGzipFile on a
    mismatch). Only the bytes the header describes are kept; the rest is streamed in chunks and
    refused beyond MAX_TRAILING_BYTES, so a small file of gigabytes of zeros costs no memory."""
    end = _data_end(image)
    with gzip.open(path, "rb") as handle:
        raw = handle.read(end)
        if len(raw) < end:
            raise EOFError(f"the stream ends after {len(raw)} of the {end} bytes the header describes")
        trailing = 0
        while chunk := handle.read(_CHUNK):
            trailing += len(chunk)
            if trailing > MAX_TRAILING_BYTES:
                raise ValueError(f"more than {MAX_TRAILING_BYTES} bytes of data beyond the image the header describes")
    return type(image).from_bytes(raw)


def read_image(path: Path) -> tuple[np.ndarray, Geometry]:
    """A 3D image as float32 in its stored orientation, with its geometry."""
    path = Path(path)
    image = _load_header(path)
    return _read_data(image, path, np.float32), _geometry(image)


# How far from a whole number a float-typed label may be (float32 written by some tools holds its
# labels exactly; this only absorbs a scaling's rounding).
LABEL_ROUNDING = 1e-3


def read_geometry(path: Path) -> Geometry:
    """A NIfTI file's grid and orientation from its header alone, no voxel read (InputError or
    ImageReadError naming the file, as for a case's images)."""
    return _geometry(_load_header(path))


def read_label_map(path: Path) -> tuple[np.ndarray, Geometry]:
    """A segmentation as an integer array in its stored orientation, with its geometry.

    Float-typed label files (some tools write them) must hold whole numbers, within
    LABEL_ROUNDING; any other value is an ImageReadError naming the file."""
    path = Path(path)
    image = _load_header(path)
    data = _read_data(image, path, np.generic)
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise ImageReadError(f"{path}: NaN or Inf voxels in a label map")
        rounded = np.rint(data)
        # Labels stored as floats are whole numbers; anything else (a probability map, a resampled
        # or scaled label map) would round to confident labels that no one drew.
        fractional = np.abs(data - rounded) > LABEL_ROUNDING
        if fractional.any():
            raise ImageReadError(
                f"{path}: {int(fractional.sum())} voxel(s) hold non-integer values (such as {data[fractional][0]:g}); "
                "a label map holds whole labels (is this a probability map, or an interpolated one?)"
            )
        data = rounded
        if data.size and (data.min() < np.iinfo(np.int32).min or data.max() > np.iinfo(np.int32).max):
            raise ImageReadError(f"{path}: label values out of the integer range")
    elif np.issubdtype(data.dtype, np.integer):
        # Checked before the cast: int64's 2**32 + 4 would wrap to 4, an ET label.
        info = np.iinfo(np.int32)
        if data.size and (data.min() < info.min or data.max() > info.max):
            raise ImageReadError(f"{path}: label values out of the integer range")
    elif data.dtype != np.bool_:
        raise ImageReadError(f"{path}: label map of data type {data.dtype}, expected integers")
    return data.astype(np.int32, copy=False), _geometry(image)


# What a usable BraTS modality is: a skull-stripped brain (an adult's is 1000-1500 ml, about a
# million 1 mm voxels; the shared real cases hold 1.0-1.6 million) on a zero background (11-18% of
# the grid is brain there), with intensities that vary across it.
MIN_BRAIN_VOXELS = 100_000
MAX_BRAIN_SHARE = 0.5


def unusable_modality(volume: np.ndarray) -> str | None:
    """Why one modality cannot be a skull-stripped BraTS image, or None if it can."""
    brain = int(np.count_nonzero(volume))
    if brain < MIN_BRAIN_VOXELS:
        return (
            f"only {brain} nonzero voxels ({brain / 1000:.1f} ml); a skull-stripped brain has about a million "
            "(is this a mask, a crop or the wrong file?)"
        )
    if brain > MAX_BRAIN_SHARE * volume.size:
        return (
            f"{100 * brain / volume.size:.0f}% of the voxels are nonzero; BraTS images are skull-stripped with "
            "a background of exactly 0 (an intercept or an unstripped head?)"
        )
    values = volume[volume != 0]
    low, high = np.percentile(values, (0.1, 99.9))
    if high <= low:
        return f"the brain's intensities do not vary (99.8% of them are {low:g}); not an MR image"
    return None


def modality_problem(volume: np.ndarray, name: str) -> str | None:
    """Why one modality's voxels cannot be segmented, naming it `name`, or None: NaN or Inf, all
    zero, or not a skull-stripped brain (`unusable_modality`). The one check of every input, read
    from files (`load_case`) or given as an array (`Segmenter.predict`)."""
    if not np.all(np.isfinite(volume)):
        return f"NaN or Inf voxels in {name}"
    if not np.any(volume):
        return f"{name} is all zero"
    problem = unusable_modality(volume)
    return f"{name}: {problem}" if problem else None


def load_case(case: Case) -> tuple[np.ndarray, Geometry]:
    """The case's four modalities as one (4, 240, 240, 155) float32 array in canonical orientation,
    channel order FLAIR, T1, T1ce, T2, and the geometry to write results back with.

    Every header is checked (readable, same shape and affine, BraTS space) before any voxel is
    read, so a wrong-sized case is refused without reading its data.
    Raises CaseError with a one-line reason naming the files."""
    if case.problem:
        raise CaseError(case.case_id, case.problem)
    images: list[nib.Nifti1Image] = []
    geometries: list[Geometry] = []
    first = case.files[CHANNEL_ORDER[0]].name
    for modality in CHANNEL_ORDER:
        path = case.files[modality]
        try:
            image = _load_header(path)
        except ImageReadError as error:
            raise CaseError(case.case_id, str(error)) from error
        geometry = _geometry(image)
        if geometries and geometry.shape != geometries[0].shape:
            raise CaseError(
                case.case_id, f"shape mismatch: {first} is {geometries[0].shape}, {path.name} is {geometry.shape}"
            )
        if geometries and not geometry.matches(geometries[0]):
            raise CaseError(case.case_id, f"affine mismatch between {first} and {path.name}")
        images.append(image)
        geometries.append(geometry)
    geometry = geometries[0]
    if geometry.canonical_shape != BRATS_SHAPE:
        raise CaseError(
            case.case_id,
            f"shape {geometry.shape} is not BraTS space {'x'.join(map(str, BRATS_SHAPE))} "
            f"({first}); register and resample to SRI24 first",
        )
    volumes: list[np.ndarray] = []
    for modality, image in zip(CHANNEL_ORDER, images, strict=True):
        path = case.files[modality]
        try:
            volume = _read_data(image, path, np.float32)
        except ImageReadError as error:
            raise CaseError(case.case_id, str(error)) from error
        problem = modality_problem(volume, path.name)
        if problem:
            raise CaseError(case.case_id, problem)
        volumes.append(volume)
    return geometry.to_canonical(np.stack(volumes)), geometry


# ---------------------------------------------------------------------------------------------
# Writing


def save_nifti(image: nib.Nifti1Image, path: Path) -> None:
    """Write `image` to `path` atomically, naming the file in any error."""
    try:
        with atomic_path(Path(path)) as temporary:
            nib.save(image, temporary)
    except OSError as error:
        # strerror alone: the error's own file name is the temporary, already removed.
        raise OutputError(f"{path}: cannot write ({first_line(error)})") from error


def label_image(labels: np.ndarray, geometry: Geometry) -> nib.Nifti1Image:
    """A uint8 label image in the file's own orientation, with the input's affine, qform and sform."""
    data = geometry.from_canonical(labels).astype(np.uint8)
    header = geometry.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    image = nib.Nifti1Image(data, geometry.affine, header=header)
    image.set_qform(geometry.header.get_qform(), code=int(geometry.header["qform_code"]))
    image.set_sform(geometry.header.get_sform(), code=int(geometry.header["sform_code"]))
    image.header["cal_min"] = 0
    image.header["cal_max"] = int(labels.max()) if labels.size else 0
    image.header["descrip"] = b"brats segmentation"
    return image


def write_label_map(labels: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write canonical-orientation labels back in the input's orientation, atomically."""
    save_nifti(label_image(labels, geometry), path)


# NIfTI-1 and -2 have no float16 type: probabilities are stored as int16 scaled by 2**-14, two
# bytes a voxel as float16 would take. Every stored value k * 2**-14 is exact in float32, 0 and 1
# included (k = 0..16384), so readers that apply the NIfTI scale (nibabel's get_fdata, ITK, FSL,
# ITK-SNAP) see floats in [0, 1] in steps of 6.1e-5.
PROBABILITY_STEP = 2.0**-14
PROBABILITY_LEVELS = 2**14
PROBABILITY_REGIONS = ("WT", "TC", "ET")


def quantise_probabilities(probabilities: np.ndarray, thresholds: tuple[float, ...]) -> np.ndarray:
    """(C, ...) probabilities in [0, 1] as int16 multiples of PROBABILITY_STEP, the nearest level,
    except where rounding would move a voxel across its channel's threshold: there the next level
    on the voxel's own side is taken, so that `stored * PROBABILITY_STEP > threshold` is exactly
    `probability > threshold` (the masks the labels were made from)."""
    if probabilities.shape[0] != len(thresholds):
        raise ValueError(f"{probabilities.shape[0]} probability maps but {len(thresholds)} thresholds")
    values = np.clip(probabilities.astype(np.float64, copy=False), 0.0, 1.0)
    levels = np.rint(values * PROBABILITY_LEVELS).astype(np.int32)
    for channel, threshold in enumerate(thresholds):
        # Compared in the probabilities' own type, as the pipeline compared them (a float32 map
        # against a Python float is a float32 comparison).
        above = probabilities[channel] > threshold
        stored_above = levels[channel] * PROBABILITY_STEP > threshold
        # One level suffices: the nearest level lies on the wrong side only when the threshold
        # sits between it and the value, so the neighbouring level on the value's side is past it.
        levels[channel][above & ~stored_above] += 1
        levels[channel][~above & stored_above] -= 1
    return levels.astype(np.int16)


def probability_image(probabilities: np.ndarray, geometry: Geometry, thresholds: tuple[float, ...]) -> nib.Nifti1Image:
    """A 4D image (X, Y, Z, 3) of the WT, TC, ET probabilities, canonical (3, ...) in, in the
    file's own orientation with the input's affine, qform and sform, scaled int16 (see above)."""
    stored = quantise_probabilities(geometry.from_canonical(probabilities), thresholds)
    header = geometry.header.copy()
    header.set_data_dtype(np.int16)
    image = nib.Nifti1Image(np.moveaxis(stored, 0, -1), geometry.affine, header=header)
    image.header.set_slope_inter(PROBABILITY_STEP, 0.0)
    image.set_qform(geometry.header.get_qform(), code=int(geometry.header["qform_code"]))
    image.set_sform(geometry.header.get_sform(), code=int(geometry.header["sform_code"]))
    image.header["cal_min"] = 0
    image.header["cal_max"] = 1
    image.header["descrip"] = f"brats probabilities {','.join(PROBABILITY_REGIONS)}".encode()
    return image


def write_probabilities(
    probabilities: np.ndarray, geometry: Geometry, thresholds: tuple[float, ...], path: Path
) -> None:
    """Write canonical (3, ...) WT, TC, ET probabilities in the input's geometry, atomically."""
    save_nifti(probability_image(probabilities, geometry, thresholds), path)


def check_output_folder(folder: Path, what: str = "output folder") -> Path:
    """Refuse a folder that could not be made or written (OutputError naming it as `what`),
    without making it: a command that then fails before its first write (weights, device) leaves
    nothing behind, and a file in the way is said as such rather than as "File exists"."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if existing == folder:
        if not folder.is_dir():
            raise OutputError(f"{folder}: exists and is not a folder (needed as the {what})")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{folder}: {what} is not writable")
    elif not existing.is_dir():
        raise OutputError(f"{folder}: cannot create {what} ({existing} is not a folder)")
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: cannot create {what} ({existing} is not writable)")
    return folder


def ensure_output_folder(folder: Path) -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{folder}: cannot create output folder ({first_line(error)})") from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: output folder is not writable")
    return folder
