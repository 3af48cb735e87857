"""The training loop of one stage and fold: epochs of training crops, validation on the fold's
held-out cases, ReduceLROnPlateau on the validation loss, and a checkpoint after every epoch.

Checkpoints (`last.pt`, and `best.pt` for the best validation Dice so far) are written to a
temporary file and renamed, so a `kill -9` leaves the previous complete epoch's checkpoint intact.
They hold only tensors and plain Python values, so they load with `torch.load(weights_only=True)`
(no pickled code runs). `last.pt` holds everything needed to continue exactly: model, optimiser,
scheduler and gradient-scaler states, the epoch, the best score, the history and the RNG states.
The crops of an epoch are seeded by (seed, stage, fold, epoch, case), see `data.py`, so a resumed
run trains on exactly the samples an uninterrupted one would.
"""

from __future__ import annotations

import csv
import io
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from brats_cli.bundle import Stage
from brats_cli.choices import Precision
from brats_cli.errors import InputError, first_line
from brats_cli.files import atomic_path, remove_stale_temporaries, write_text_atomically
from brats_cli.interrupts import in_worker
from brats_cli.model import ResUNet3D
from brats_cli.predictors.torch_backend import resolve_precision
from brats_cli.training.cache import CachedCase
from brats_cli.training.data import CropDataset, EpochSampler
from brats_cli.training.distributed import Context, barrier, sum_across_ranks
from brats_cli.training.losses import compute_loss, hard_dice
from brats_cli.training.recipe import Recipe, StageRecipe
from brats_cli.training.widen import WideningError, widen_state, widening_factor

CHECKPOINT_FORMAT = 1
LAST = "last.pt"
BEST = "best.pt"
LOG = "log.csv"
STAGE_ORDER = (Stage.BASE, Stage.WT, Stage.TC, Stage.ET)


@dataclass(frozen=True)
class FoldJob:
    stage: Stage
    fold: int
    train: list[CachedCase]
    validation: list[CachedCase]
    folder: Path
    training_only: int = 0  # how many of `train` are training-only cases (brats train --extra)

    @property
    def stream(self) -> int:
        """Distinct random stream of this stage and fold (model initialisation, crops, order)."""
        return 1000 * STAGE_ORDER.index(self.stage) + self.fold


@dataclass
class EpochRecord:
    epoch: int  # epochs completed, 1-based
    train_loss: float
    val_loss: float
    val_dice: float
    learning_rate: float
    seconds: float
    data_seconds: float  # time the loop waited for the data loader
    steps: int
    best: bool
    # What the forward pass computed in ("bfloat16", "float16", "float32"; `--precision`), so that a
    # run resumed on other hardware shows where it changed; "" in runs from before it was recorded.
    forward: str = ""


@dataclass
class FoldResult:
    stage: Stage
    fold: int
    epochs_done: int
    epochs_planned: int
    best_dice: float
    best_epoch: int
    history: list[EpochRecord] = field(default_factory=list)


class Reporter(Protocol):
    def fold_started(self, job: FoldJob, first_epoch: int, epochs: int, steps_per_epoch: int) -> None: ...
    def step(self, epoch: int, loss: float, learning_rate: float) -> None: ...
    def epoch_finished(self, job: FoldJob, record: EpochRecord, epochs: int) -> None: ...


# ---------------------------------------------------------------------------------------------
# Process-wide settings


def configure(deterministic: bool) -> None:
    """`deterministic`: exact reproducibility (deterministic kernels only, no cuDNN autotuning);
    otherwise let cuDNN benchmark its convolution algorithms for speed."""
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; must be set before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(device: torch.device, precision: Precision = Precision.AUTO) -> torch.dtype | None:
    """The dtype training autocasts to, None for fp32. `auto`: bf16 on GPUs that have it, fp16 (with
    loss scaling) on older GPUs; on a CPU bf16 where it computes bf16 natively (AVX-512 BF16 or AMX:
    a training step takes less than half the fp32 time there, bench/RESULTS.md), fp32 elsewhere.
    Either way the weights, the optimiser and the loss stay fp32."""
    if precision is Precision.FP32:
        return None
    if precision is Precision.BF16:
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # The CPU rule is inference's `--precision auto`, so both commands choose alike on one machine.
    return torch.bfloat16 if resolve_precision(precision, "cpu") is Precision.BF16 else None


def forward_name(amp_dtype: torch.dtype | None) -> str:
    """What the forward pass computes in, as the log and `brats train`'s first line name it."""
    return str(amp_dtype or torch.float32).removeprefix("torch.")


def training_memory_format(device: torch.device, amp_dtype: torch.dtype | None) -> torch.memory_format:
    """Channels-last 3D, except for bf16 on a CPU, where oneDNN's backward runs faster on the plain
    layout (bench/RESULTS.md, "Training precision on the CPU")."""
    if device.type == "cpu" and amp_dtype is torch.bfloat16:
        return torch.contiguous_format
    return torch.channels_last_3d


class BlockMax3d(nn.Module):
    """MaxPool3d(2) as a reshape and amax. Same forward; its backward is deterministic on CUDA,
    where max_pool3d's backward has no deterministic implementation. It differs from MaxPool3d's
    gradient only on ties, which here are ReLU zeros whose gradient the ReLU zeroes anyway."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, d, h, w = x.shape
        blocks = x.reshape(n, c, d // 2, 2, h // 2, 2, w // 2, 2)
        return blocks.amax(dim=(3, 5, 7))


def use_block_max(model: nn.Module) -> None:
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool3d):
                setattr(module, name, BlockMax3d())


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy_key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(numpy_state["state"]["pos"]),
        "numpy_has_gauss": int(numpy_state["has_gauss"]),
        "numpy_gauss": float(numpy_state["gauss"]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": state["numpy_key"].numpy().astype(np.uint32), "pos": state["numpy_pos"]},
            "has_gauss": state["numpy_has_gauss"],
            "gauss": state["numpy_gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomically(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a hidden sibling, fsync, rename: `path` is always a complete checkpoint."""
    try:
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            torch.save(payload, handle)
    except OSError as error:
        # A failed write() names no file, and any name it has is the removed temporary's.
        raise OSError(error.errno, error.strerror, str(path)) from error


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's contents (tensors and plain values only: weights_only, no code runs), or an
    InputError on one line naming the file. Checkpoints are written atomically, so an unreadable
    one was damaged after it was written (a copy cut short, a disk fault, another program)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError as error:
        raise InputError(f"{path}: checkpoint not found") from error
    except Exception as error:  # torch.load raises RuntimeError, UnpicklingError, EOFError, IndexError, ...
        first = first_line(error).split(". ")[0]
        raise InputError(f"{path}: unreadable checkpoint ({first.rstrip('.')})") from error
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a brats training checkpoint")
    return state


def resume_state(path: Path) -> dict[str, Any]:
    """`last.pt` for --resume, in host memory. There is no older complete checkpoint to fall back
    to (each epoch's replaces the previous one), and `best.pt` lacks the optimiser, scheduler and
    RNG states an exact continuation needs, so a damaged `last.pt` stops the run with what to do
    instead."""
    advice = f"restore it, or delete {path.parent} to train this fold from the start"
    try:
        # On the CPU whatever the training device: the RNG states must be CPU tensors (numpy's
        # key is converted through .numpy()), and load_state_dict copies weights and moves the
        # optimiser's moments to the parameters' device itself. Mapped to CUDA, resuming a GPU
        # run failed (test_cuda_deterministic_crash_and_resume_is_exact, -m gpu).
        state = load_checkpoint(path)
    except InputError as error:
        raise InputError(f"{error}; {advice}") from error
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise InputError(f"{path}: not a complete training checkpoint (no {', '.join(missing)}); {advice}")
    return state


def write_history(records: list[EpochRecord], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(EpochRecord.__dataclass_fields__))
    writer.writeheader()
    for record in records:
        writer.writerow(asdict(record))
    write_text_atomically(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass(frozen=True)
class InitialWeights:
    """Weights a fold starts from instead of a random initialisation (`brats train --init-from`):
    the file they came from (for messages) and its description with epoch or checksum (for the
    checkpoints and the bundle's metadata)."""

    state: dict[str, torch.Tensor]
    path: str
    source: str


def build_model(recipe: Recipe, stage: Stage) -> ResUNet3D:
    spec = recipe.stages[stage]
    return ResUNet3D(width=spec.width, levels=spec.levels, norm_groups=spec.norm_groups)


@dataclass(frozen=True)
class _Optimisation:
    """A fold's network and what trains it. `model` is the bare network, never the DDP wrapper:
    validation runs on it and checkpoints hold its keys, the same under one rank or several."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format


@dataclass
class _Progress:
    """How far a fold has come: what `last.pt` records beside the optimisation states."""

    epochs_done: int = 0
    best_dice: float = -1.0
    best_epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    init_from: str | None = None  # the source of the weights the fold started from; None: random


@dataclass(frozen=True)
class _Data:
    sampler: EpochSampler
    loader: DataLoader
    validation: CropDataset


def train_fold(
    job: FoldJob,
    recipe: Recipe,
    context: Context,
    *,
    deterministic: bool = False,
    precision: Precision = Precision.AUTO,
    resume: bool = False,
    reporter: Reporter | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    initial: InitialWeights | None = None,
) -> FoldResult:
    """Train one stage and fold to the recipe's epoch count, continuing from `last.pt` if `resume`;
    a fresh start begins from `initial`'s weights where given (a resumed one from its checkpoint).
    `precision` is what the forward pass autocasts to (`autocast_dtype`)."""
    spec = recipe.stages[job.stage]
    _check_and_open(job, recipe, context, resume)
    optimisation = _build_optimisation(job, recipe, context.device, deterministic, precision)
    progress = _restore(job, recipe, optimisation, context, resume, initial)
    if progress.epochs_done >= spec.epochs:
        return _result(job, spec, progress)
    network = _parallel(optimisation.model, context)
    data = _build_data(job, recipe, context)
    if reporter and context.is_main:
        reporter.fold_started(job, progress.epochs_done, spec.epochs, len(data.loader))
    for epoch in range(progress.epochs_done, spec.epochs):
        record = _run_epoch(epoch, spec, context, optimisation, network, data, progress, reporter)
        if context.is_main:
            _save_checkpoints(job, recipe, optimisation, progress, record)
            if reporter:
                reporter.epoch_finished(job, record, spec.epochs)
        barrier(context)
        if on_epoch_end:
            on_epoch_end(record)
    return _result(job, spec, progress)


def _result(job: FoldJob, spec: StageRecipe, progress: _Progress) -> FoldResult:
    return FoldResult(
        job.stage,
        job.fold,
        progress.epochs_done,
        spec.epochs,
        progress.best_dice,
        progress.best_epoch,
        progress.history,
    )


def _fold_seed(recipe: Recipe, job: FoldJob) -> int:
    """One seed per run, stage and fold: for the initial weights and for the order of the crops."""
    return recipe.seed * 10_000 + job.stream


# ---------------------------------------------------------------------------------------------
# Building


def _check_and_open(job: FoldJob, recipe: Recipe, context: Context, resume: bool) -> None:
    """Refuse, before anything is built, a batch the ranks cannot share and a fresh start that
    would overwrite a checkpoint; then make the fold's folder."""
    if recipe.batch_size % context.world:
        raise InputError(
            f"global batch size {recipe.batch_size} is not divisible by the {context.world} ranks; "
            "change batch_size in the recipe or the number of processes"
        )
    last_path = job.folder / LAST
    if last_path.exists() and not resume:
        raise InputError(f"{last_path}: a checkpoint exists; pass --resume to continue, or choose another --out")
    if context.is_main:
        job.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(job.folder)  # a checkpoint half-written when a run was killed


def _build_optimisation(
    job: FoldJob, recipe: Recipe, device: torch.device, deterministic: bool, precision: Precision
) -> _Optimisation:
    """The randomly initialised network on `device`, its optimiser, scheduler and gradient scaler."""
    spec = recipe.stages[job.stage]
    seed_everything(_fold_seed(recipe, job))
    model = build_model(recipe, job.stage)
    if deterministic and device.type == "cuda":
        use_block_max(model)
    amp_dtype = autocast_dtype(device, precision)
    memory_format = training_memory_format(device, amp_dtype)
    # nn.Module.to takes memory_format; its type stubs do not say so.
    model = model.to(device=device, memory_format=memory_format)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=recipe.plateau.factor,
        patience=recipe.plateau.patience,
        cooldown=recipe.plateau.cooldown,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    return _Optimisation(model, optimizer, scheduler, scaler, amp_dtype, memory_format)


def _parallel(model: nn.Module, context: Context) -> nn.Module:
    """What the training steps run: the model itself on one rank, its DDP wrapper on several."""
    if not context.distributed:
        return model
    # The head's 1x1x1 kernels have size-1 dims whose channels-last strides differ from DDP's
    # bucket layout only nominally; DDP's warning about it is noise.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device = context.device
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _build_data(job: FoldJob, recipe: Recipe, context: Context) -> _Data:
    """This rank's share of the training crops, batched, and the fold's validation cases."""
    training = CropDataset(job.train, job.stage, recipe, training=True, stream=job.stream)
    validation = CropDataset(job.validation, job.stage, recipe, training=False, stream=job.stream)
    sampler = EpochSampler(len(training), seed=_fold_seed(recipe, job), rank=context.rank, world=context.world)
    loader = DataLoader(
        training,
        batch_size=recipe.batch_size // context.world,
        sampler=sampler,
        num_workers=recipe.workers,
        pin_memory=context.device.type == "cuda",
        persistent_workers=recipe.workers > 0,
        worker_init_fn=in_worker,
    )
    return _Data(sampler, loader, validation)


# ---------------------------------------------------------------------------------------------
# Restoring


def _restore(
    job: FoldJob,
    recipe: Recipe,
    optimisation: _Optimisation,
    context: Context,
    resume: bool,
    initial: InitialWeights | None,
) -> _Progress:
    """Where the fold starts: after `last.pt`'s epoch when resuming one, else at epoch 0 from
    `initial`'s weights, or from the random initialisation without them."""
    progress = _Progress()
    if initial is not None:
        widened = _load_initial(
            optimisation.model, initial, job.stage, recipe.stages[job.stage], seed=_fold_seed(recipe, job)
        )
        progress.init_from = initial.source + (f", widened {widened}x (Net2WiderNet)" if widened > 1 else "")
    if resume and (job.folder / LAST).exists():
        progress = _resume(job, recipe, optimisation, context)
    return progress


def _load_initial(model: nn.Module, initial: InitialWeights, stage: Stage, spec: StageRecipe, *, seed: int) -> int:
    """`initial`'s weights into `model`; weights of the same network at an integer fraction of the
    recipe's width are widened to it first, computing the same function (`widen.py`). Returns the
    widening factor (1: loaded as they are)."""
    try:
        factor = widening_factor(initial.state, model.state_dict())
        state = widen_state(model, initial.state, generator=torch.Generator().manual_seed(seed)) if factor > 1 else None
        model.load_state_dict(initial.state if state is None else state)
    except (RuntimeError, WideningError) as error:
        first = first_line(error)
        raise InputError(
            f"{initial.path}: does not fit the recipe's {stage.value} network "
            f"(width {spec.width}, {spec.levels} levels): {first}"
        ) from error
    return factor


def _resume(job: FoldJob, recipe: Recipe, optimisation: _Optimisation, context: Context) -> _Progress:
    """Every state `last.pt` holds back in place, the RNGs' included, so the run continues as if
    it had never stopped."""
    last_path = job.folder / LAST
    state = resume_state(last_path)
    if state.get("recipe") != recipe.fingerprint():
        raise InputError(
            f"{last_path}: written with a different recipe; resume with the run's recipe "
            f"(saved as {job.folder.parents[2] / 'recipe.json'}) or choose another --out"
        )
    optimisation.model.load_state_dict(state["model"])
    optimisation.optimizer.load_state_dict(state["optimizer"])
    optimisation.scheduler.load_state_dict(state["scheduler"])
    optimisation.scaler.load_state_dict(state["scaler"])
    progress = _Progress(
        epochs_done=int(state["epoch"]),
        best_dice=float(state["best_dice"]),
        best_epoch=int(state["best_epoch"]),
        history=[EpochRecord(**row) for row in state["history"]],
        init_from=state.get("init_from"),  # what the run started from, not what this command names
    )
    _set_rng_state(state["rng"])
    if context.is_main:
        # A run killed between writing last.pt and log.csv left the log an epoch behind.
        write_history(progress.history, job.folder / LOG)
    return progress


# ---------------------------------------------------------------------------------------------
# One epoch


def _run_epoch(
    epoch: int,
    spec: StageRecipe,
    context: Context,
    optimisation: _Optimisation,
    network: nn.Module,
    data: _Data,
    progress: _Progress,
    reporter: Reporter | None,
) -> EpochRecord:
    """Train on the epoch's crops, validate, let the scheduler see the validation loss, and add the
    epoch to `progress`."""
    started = time.perf_counter()
    data.sampler.set_epoch(epoch)
    train_loss, data_seconds, steps = _train_steps(epoch, spec, context, optimisation, network, data.loader, reporter)
    val_loss, val_dice = validate(
        optimisation.model, data.validation, spec.loss, context, optimisation.amp_dtype, optimisation.memory_format
    )
    optimisation.scheduler.step(val_loss)
    improved = val_dice > progress.best_dice
    if improved:
        progress.best_dice, progress.best_epoch = val_dice, epoch + 1
    record = EpochRecord(
        epoch=epoch + 1,
        train_loss=train_loss,
        val_loss=val_loss,
        val_dice=val_dice,
        learning_rate=optimisation.optimizer.param_groups[0]["lr"],
        seconds=time.perf_counter() - started,
        data_seconds=data_seconds,
        steps=steps,
        best=improved,
        forward=forward_name(optimisation.amp_dtype),
    )
    progress.history.append(record)
    progress.epochs_done = epoch + 1
    return record


def _train_steps(
    epoch: int,
    spec: StageRecipe,
    context: Context,
    optimisation: _Optimisation,
    network: nn.Module,
    loader: DataLoader,
    reporter: Reporter | None,
) -> tuple[float, float, int]:
    """One pass over this rank's batches: the mean loss over every rank's samples, the seconds
    spent waiting for the loader, and the number of steps."""
    device, amp_dtype = context.device, optimisation.amp_dtype
    optimizer, scaler = optimisation.optimizer, optimisation.scaler
    network.train()
    loss_sum, sample_count, data_seconds, steps = 0.0, 0, 0.0, 0
    waited = time.perf_counter()
    for image, target in loader:
        data_seconds += time.perf_counter() - waited
        image = image.to(device, non_blocking=True).contiguous(memory_format=optimisation.memory_format)
        target = target.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = network(image)
        loss = compute_loss(spec.loss, logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        value = float(loss.item())
        loss_sum += value * image.shape[0]
        sample_count += image.shape[0]
        steps += 1
        if reporter and context.is_main:
            reporter.step(epoch, value, optimizer.param_groups[0]["lr"])
        waited = time.perf_counter()
    train_sum, train_count = sum_across_ranks(context, [loss_sum, float(sample_count)])
    return train_sum / max(train_count, 1.0), data_seconds, steps


# ---------------------------------------------------------------------------------------------
# Checkpointing an epoch

# The keys of each checkpoint, in the order they have always been written: torch.save pickles a
# dict in its order, so the order is part of a checkpoint's bytes.
_PAYLOAD_KEYS = {
    BEST: ("format", "recipe", "stage", "fold", "epoch", "val_dice", "val_loss", "init_from", "training_only", "model"),
    LAST: (
        "format",
        "recipe",
        "stage",
        "fold",
        "epoch",
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "best_dice",
        "best_epoch",
        "init_from",
        "training_only",
        "history",
        "rng",
    ),
}


# What `last.pt` must hold to continue a run: everything it is written with but the fields that
# only describe it (older checkpoints lack init_from and training_only).
RESUME_KEYS = tuple(key for key in _PAYLOAD_KEYS[LAST] if key not in ("stage", "fold", "init_from", "training_only"))


def _checkpoint_payload(
    name: str, job: FoldJob, recipe: Recipe, optimisation: _Optimisation, progress: _Progress, record: EpochRecord
) -> dict[str, Any]:
    """What `name` (BEST or LAST) holds after `record`'s epoch. Both name the recipe, stage, fold
    and epoch, and hold the weights, where they started from and how many training-only cases
    trained them; `best.pt` adds the validation scores that made it the best, `last.pt` what an
    exact continuation needs and `best.pt` does not: the optimisation states, the best score so
    far, the history and the RNG states."""
    values: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "recipe": recipe.fingerprint(),
        "stage": job.stage.value,
        "fold": job.fold,
        "epoch": record.epoch,
        "model": optimisation.model.state_dict(),
        "init_from": progress.init_from,
        "training_only": job.training_only,
    }
    if name == BEST:
        values.update(val_dice=record.val_dice, val_loss=record.val_loss)
    else:
        values.update(
            optimizer=optimisation.optimizer.state_dict(),
            scheduler=optimisation.scheduler.state_dict(),
            scaler=optimisation.scaler.state_dict(),
            best_dice=progress.best_dice,
            best_epoch=progress.best_epoch,
            history=[asdict(r) for r in progress.history],
            rng=_rng_state(),
        )
    return {key: values[key] for key in _PAYLOAD_KEYS[name]}


def _save_checkpoints(
    job: FoldJob, recipe: Recipe, optimisation: _Optimisation, progress: _Progress, record: EpochRecord
) -> None:
    """`best.pt` if the epoch improved on the best Dice, then `last.pt`, then the log. `last.pt`
    names the best epoch, so it comes after that epoch's `best.pt`: a kill between the two only
    repeats the epoch on --resume, where the other order would leave an older `best.pt` for good."""
    if record.best:
        save_atomically(_checkpoint_payload(BEST, job, recipe, optimisation, progress, record), job.folder / BEST)
    save_atomically(_checkpoint_payload(LAST, job, recipe, optimisation, progress, record), job.folder / LAST)
    write_history(progress.history, job.folder / LOG)


# ---------------------------------------------------------------------------------------------
# Validation


def validate(
    model: nn.Module,
    dataset: CropDataset,
    loss_kind: Any,
    context: Context,
    amp_dtype: torch.dtype | None,
    memory_format: torch.memory_format = torch.channels_last_3d,
) -> tuple[float, float]:
    """Mean loss and mean hard Dice over the held-out cases, each rank taking every world-th case."""
    model.eval()
    loss_sum = dice_sum = count = 0.0
    device = context.device
    with torch.no_grad():
        for index in range(context.rank, len(dataset), context.world):
            image, target = dataset[(0, index)]
            image = image[None].to(device).contiguous(memory_format=memory_format)
            target = target[None].to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(image)
            logits = logits.float()
            loss_sum += float(compute_loss(loss_kind, logits, target).item())
            dice_sum += hard_dice(logits, target)
            count += 1
    loss_sum, dice_sum, count = sum_across_ranks(context, [loss_sum, dice_sum, count])
    return loss_sum / max(count, 1.0), dice_sum / max(count, 1.0)
