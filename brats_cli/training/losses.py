"""Paper section 2.4: BCE + Dice (equal weights) for base, WT and TC; BCE alone for ET.

Choices where the paper is silent:
- Soft Dice is computed over the whole batch at once (all voxels of all crops), with a smoothing
  term of 1 in numerator and denominator: a crop with no tumour (common for ET) then neither
  divides by zero nor dominates the loss.
- The validation Dice is the hard Dice of the 0.5-thresholded prediction, per case, averaged over
  cases; a case where both prediction and ground truth are empty scores 1 (the BraTS convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from brats_cli.training.recipe import Loss

SMOOTH = 1.0


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * target).sum()
    total = probabilities.sum() + target.sum()
    return 1 - (2 * intersection + SMOOTH) / (total + SMOOTH)


def compute_loss(kind: Loss, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The recipe's loss of float32 logits against a {0, 1} target of the same shape."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    if kind is Loss.BCE:
        return bce
    return bce + soft_dice_loss(logits, target)


def hard_dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Dice of `logits > 0` (probability > 0.5) against the target; 1.0 when both are empty."""
    predicted = logits > 0
    truth = target > 0.5
    total = int(predicted.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2 * int((predicted & truth).sum()) / total
