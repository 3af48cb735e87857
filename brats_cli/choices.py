"""The user-facing choices, as str Enums used directly as CLI option types.

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


class Ensemble(str, Enum):
    MEAN = "mean"  # the paper's regression voting ensemble (RVE): mean probability, then threshold
    VOTE = "vote"  # classification voting ensemble: binarise each fold, then strict majority


class LabelChoice(str, Enum):
    AUTO = "auto"  # 2023 labels (ET = 3) for 2023-named inputs, 2021 labels (ET = 4) otherwise
    BRATS2021 = "2021"
    BRATS2023 = "2023"


class CaseNaming(str, Enum):
    """File naming of written cases (the values of io.Naming, kept here so the CLI need not import io)."""

    BRATS2021 = "2021"  # <ID>_flair.nii.gz ..., ET = 4
    BRATS2023 = "2023"  # <ID>-t2f.nii.gz ..., ET = 3


class StageChoice(str, Enum):
    """Which stage(s) `brats train` trains: one of the paper's four models, or all in order."""

    ALL = "all"
    BASE = "base"
    WT = "wt"
    TC = "tc"
    ET = "et"


class ExportPrecision(str, Enum):
    """Arithmetic of an exported ONNX graph (fixed at export; its input and output stay float32)."""

    FP32 = "fp32"
    FP16 = "fp16"
