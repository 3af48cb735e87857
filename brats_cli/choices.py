"""The tool's vocabulary: the choices a user makes and the words the BraTS data uses, as str Enums
(also the CLI's option types).

Kept free of heavy imports so that `brats --help` stays instant."""

from __future__ import annotations

from enum import Enum


class Backend(str, Enum):
    TORCH = "torch"
    ONNX = "onnx"


class Device(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    AUTO = "auto"


class Storage(str, Enum):
    """The precision a torch bundle stores its weights in; they are upcast to float32 when loaded,
    so the forward pass runs in `Precision` either way."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"  # half the bytes; rounding to float16 moves a weight by at most 2**-11 of itself


class Checkpoint(str, Enum):
    """Which checkpoint of each fold `brats bundle` takes."""

    BEST = "best"  # the epoch of the best validation Dice (best.pt)
    LAST = "last"  # the last complete epoch (last.pt): where validation was not clean enough to choose on


class Ensemble(str, Enum):
    MEAN = "mean"  # the paper's regression voting ensemble (RVE): mean probability, then threshold
    VOTE = "vote"  # classification voting ensemble: binarise each fold, then strict majority


class Naming(str, Enum):
    """File naming of a release: `<ID>_flair.nii.gz` (2017-2021) or `<ID>-t2f.nii.gz` (2023+)."""

    BRATS2021 = "2021"
    BRATS2023 = "2023"


NECROSIS = 1
EDEMA = 2


class LabelConvention(str, Enum):
    """The labels of a segmentation: BraTS 2017-2021 marks enhancing tumour with 4, BraTS 2023+
    with 3; necrosis (1) and edema (2) are shared."""

    BRATS2021 = "2021"
    BRATS2023 = "2023"

    @property
    def enhancing(self) -> int:
        return 4 if self is LabelConvention.BRATS2021 else 3

    @property
    def labels(self) -> tuple[int, int, int]:
        return (NECROSIS, EDEMA, self.enhancing)

    @classmethod
    def of_naming(cls, naming: Naming | None) -> LabelConvention:
        """The convention of a release's file naming: each release's files and labels go together,
        so 2023-named cases carry ET = 3 and every other case ET = 4."""
        return cls.BRATS2023 if naming is Naming.BRATS2023 else cls.BRATS2021


class Stage(str, Enum):
    """The paper's four models: the base (whole tumour on the 192x192x160 grid) and the three regions."""

    BASE = "base"
    WT = "wt"
    TC = "tc"
    ET = "et"


REGION_STAGES: tuple[Stage, ...] = (Stage.WT, Stage.TC, Stage.ET)

# The words a command line accepts where a choice can also be left to the tool or cover every stage.
AUTO = "auto"
ALL = "all"


class ExportPrecision(str, Enum):
    """Arithmetic of an exported ONNX graph (fixed at export; its input and output stay float32)."""

    FP32 = "fp32"
    FP16 = "fp16"


class Task(str, Enum):
    """A BraTS task whose scoring rules `brats evaluate` applies (`brats_cli.tasks`): its label
    set and its lesion-wise settings."""

    GLI2023 = "gli2023"
    SSA2023 = "ssa2023"
    PED2023 = "ped2023"
    MEN2023 = "men2023"
    MET2023 = "met2023"
    GLI2024 = "gli2024"
