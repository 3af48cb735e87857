"""The BraTS segmentation metrics on boolean masks: Dice, sensitivity, specificity, HD95 (BraTS 2021,
as the challenge platform computed them with medpy) and the BraTS 2023 lesion-wise Dice and HD95.

Every function takes a prediction and a reference mask of the same shape, in voxel units (BraTS
voxels are 1 mm). What an empty mask scores is not an accident of a division by zero but an
explicit argument whose default is the BraTS 2021 rule (`EmptyMaskRules`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# medpy's surface: a voxel of the mask with at least one of its 6 face neighbours outside the mask.
SURFACE_STRUCTURE = ndimage.generate_binary_structure(3, 1)
# The platform printed 373.13 for an HD95 with exactly one empty mask: the diagonal of the
# 240 x 240 x 155 volume, sqrt(240^2 + 240^2 + 155^2) = 373.1287, rounded as it was published.
ONE_EMPTY_HD95 = 373.13
# A ground-truth case with no prediction file at all (and, in the 2023 lesion-wise metrics, every
# unmatched lesion) scores HD95 374, just above anything a real pair of masks can reach.
MISSING_HD95 = 374.0


@dataclass(frozen=True)
class EmptyMaskRules:
    """Scores where a metric's formula divides by zero; defaults are the BraTS 2021 rules."""

    both_empty_dice: float = 1.0
    both_empty_hd95: float = 0.0
    one_empty_hd95: float = ONE_EMPTY_HD95
    both_empty_sensitivity: float = 1.0
    # Sensitivity TP / (TP + FN) is undefined when the reference is empty; a prediction there is
    # all false positive, so it scores 0.
    empty_reference_sensitivity: float = 0.0
    both_empty_specificity: float = 1.0
    # Specificity TN / (TN + FP) is undefined when the reference fills the whole volume (never in
    # BraTS data); medpy returns 0 there, and so do we.
    full_reference_specificity: float = 0.0


BRATS2021_RULES = EmptyMaskRules()


@dataclass(frozen=True)
class RegionScores:
    dice: float
    hd95: float
    sensitivity: float
    specificity: float


# A region of a case whose prediction file is missing. The BraTS rules fix Dice 0 and HD95 374; for
# the other two the absent prediction is read as an empty one that finds nothing: sensitivity 0
# (worst) and specificity 1 (an absent prediction has no false positives).
MISSING_PREDICTION_SCORES = RegionScores(dice=0.0, hd95=MISSING_HD95, sensitivity=0.0, specificity=1.0)


def _check(prediction: np.ndarray, reference: np.ndarray) -> None:
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    if prediction.dtype != np.bool_ or reference.dtype != np.bool_:
        raise TypeError("metrics take boolean masks")


def _confusion(prediction: np.ndarray, reference: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) voxel counts."""
    true_positive = int(np.count_nonzero(prediction & reference))
    predicted = int(np.count_nonzero(prediction))
    positive = int(np.count_nonzero(reference))
    false_positive = predicted - true_positive
    false_negative = positive - true_positive
    true_negative = prediction.size - true_positive - false_positive - false_negative
    return true_positive, false_positive, false_negative, true_negative


def dice(prediction: np.ndarray, reference: np.ndarray, *, rules: EmptyMaskRules = BRATS2021_RULES) -> float:
    """2 TP / (2 TP + FP + FN); `rules.both_empty_dice` when both masks are empty."""
    _check(prediction, reference)
    tp, fp, fn, _ = _confusion(prediction, reference)
    return _dice_from_counts(tp, fp, fn, rules)


def _dice_from_counts(tp: int, fp: int, fn: int, rules: EmptyMaskRules) -> float:
    if tp + fp + fn == 0:
        return rules.both_empty_dice
    return 2.0 * tp / float(2 * tp + fp + fn)


def sensitivity(prediction: np.ndarray, reference: np.ndarray, *, rules: EmptyMaskRules = BRATS2021_RULES) -> float:
    """TP / (TP + FN) over the whole volume."""
    _check(prediction, reference)
    tp, fp, fn, _ = _confusion(prediction, reference)
    return _sensitivity_from_counts(tp, fp, fn, rules)


def _sensitivity_from_counts(tp: int, fp: int, fn: int, rules: EmptyMaskRules) -> float:
    if tp + fn == 0:
        return rules.both_empty_sensitivity if fp == 0 else rules.empty_reference_sensitivity
    return tp / float(tp + fn)


def specificity(prediction: np.ndarray, reference: np.ndarray, *, rules: EmptyMaskRules = BRATS2021_RULES) -> float:
    """TN / (TN + FP) over the whole volume."""
    _check(prediction, reference)
    tp, fp, fn, tn = _confusion(prediction, reference)
    return _specificity_from_counts(tp, fp, fn, tn, rules)


def _specificity_from_counts(tp: int, fp: int, fn: int, tn: int, rules: EmptyMaskRules) -> float:
    if tp + fp + fn == 0:
        return rules.both_empty_specificity
    if tn + fp == 0:
        return rules.full_reference_specificity
    return tn / float(tn + fp)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel, grown by `margin` and clipped to the array;
    None for an empty mask."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=others))
        if present.size == 0:
            return None
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def surface(mask: np.ndarray) -> np.ndarray:
    """medpy's surface: the mask minus its erosion by the 6-connected element, with everything
    outside the array counted as background (so a mask touching the border has a surface there)."""
    return mask & ~ndimage.binary_erosion(mask, structure=SURFACE_STRUCTURE, border_value=0)


def surface_distances(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances (voxels) from each prediction surface voxel to the nearest reference
    surface voxel, and from each reference surface voxel to the nearest prediction one.

    Both masks must be non-empty. The distance transforms run only inside the bounding box of the
    two masks, padded by one background voxel: every surface voxel lies in that box, so the
    nearest one is found there too, and the padding reproduces erosion at the volume border. The
    distances are exactly medpy's, at a fraction of the cost of whole-volume transforms."""
    box = bounding_box(prediction | reference)
    if box is None or not prediction.any() or not reference.any():
        raise ValueError("surface distances need two non-empty masks")
    prediction_surface = surface(np.pad(prediction[box], 1))
    reference_surface = surface(np.pad(reference[box], 1))
    to_reference = ndimage.distance_transform_edt(~reference_surface)[prediction_surface]
    to_prediction = ndimage.distance_transform_edt(~prediction_surface)[reference_surface]
    return to_reference, to_prediction


def hd95(prediction: np.ndarray, reference: np.ndarray, *, rules: EmptyMaskRules = BRATS2021_RULES) -> float:
    """95th percentile of the surface distances of both directions pooled together (medpy's
    `hd95`, linear interpolation between order statistics); voxel units."""
    _check(prediction, reference)
    predicted, present = bool(prediction.any()), bool(reference.any())
    if not predicted and not present:
        return rules.both_empty_hd95
    if predicted != present:
        return rules.one_empty_hd95
    to_reference, to_prediction = surface_distances(prediction, reference)
    return float(np.percentile(np.concatenate((to_reference, to_prediction)), 95))


def region_scores(
    prediction: np.ndarray, reference: np.ndarray, *, rules: EmptyMaskRules = BRATS2021_RULES
) -> RegionScores:
    """All four BraTS 2021 metrics of one region, counting the confusion matrix once."""
    _check(prediction, reference)
    tp, fp, fn, tn = _confusion(prediction, reference)
    return RegionScores(
        dice=_dice_from_counts(tp, fp, fn, rules),
        hd95=hd95(prediction, reference, rules=rules),
        sensitivity=_sensitivity_from_counts(tp, fp, fn, rules),
        specificity=_specificity_from_counts(tp, fp, fn, tn, rules),
    )


# ---------------------------------------------------------------------------------------------
# BraTS 2023 lesion-wise metrics


@dataclass(frozen=True)
class LesionWiseRules:
    """The BraTS 2023 lesion-wise definition; the defaults are the glioma task's (the official
    `metrics.py` of BraTS-2023-Metrics: `dilation_factor = 3`, `lesion_volume_thresh = 50`).
    Other tasks change `dilations` and `ignore_at_most_voxels` (`brats_cli.tasks`)."""

    # Ground-truth lesions are the 26-connected components of the reference dilated this many
    # times, each restricted to the reference voxels: lesions closer than a few voxels count as one.
    dilations: int = 3
    # The dilation's structuring element, scipy's generate_binary_structure(3, connectivity): the
    # official scripts dilate with connectivity 2 (the 18 face and edge neighbours, no corners).
    dilation_connectivity: int = 2
    # Ground-truth lesions of this many voxels or fewer are left out of the score (neither a
    # lesion to find nor, when a prediction touches them, a false positive).
    ignore_at_most_voxels: int = 50
    # Score of a ground-truth lesion no prediction touches, and of a false-positive component.
    unmatched_dice: float = 0.0
    unmatched_hd95: float = MISSING_HD95
    # No lesion to score at all (both masks empty, or only ignored lesions and no false positive).
    nothing_to_score_dice: float = 1.0
    nothing_to_score_hd95: float = 0.0


BRATS2023_LESION_RULES = LesionWiseRules()
# Lesions and predicted components are 26-connected (cc3d's connectivity=26 in the official scripts).
LESION_STRUCTURE = ndimage.generate_binary_structure(3, 3)


@dataclass(frozen=True)
class LesionWiseScores:
    dice: float
    hd95: float
    true_positive_lesions: int  # scored ground-truth lesions touched by a prediction
    false_negative_lesions: int  # scored ground-truth lesions no prediction touches
    false_positive_components: int  # predicted components touching no ground-truth lesion


def lesion_wise(
    prediction: np.ndarray,
    reference: np.ndarray,
    *,
    rules: LesionWiseRules = BRATS2023_LESION_RULES,
    empty_rules: EmptyMaskRules = BRATS2021_RULES,
) -> LesionWiseScores:
    """BraTS 2023 lesion-wise Dice and HD95 of one region.

    Each scored ground-truth lesion is compared with the union of the predicted 26-connected
    components touching the lesion dilated `rules.dilations` times (Dice, and HD95 with medpy's
    semantics); a lesion no component touches scores the unmatched values. The lesion-wise score is
    the sum over scored lesions, plus the unmatched values once per false-positive component,
    divided by (TP + FN + FP).

    The volume is labelled once; each lesion is then scored inside its own box (grown to the boxes
    of the components it touches), so many tiny lesions cost their own size, not the volume's each."""
    _check(prediction, reference)
    # Dilation and labelling only reach `dilations` voxels beyond the masks: work in their box.
    box = bounding_box(prediction | reference, margin=rules.dilations + 1)
    if box is None:
        return LesionWiseScores(rules.nothing_to_score_dice, rules.nothing_to_score_hd95, 0, 0, 0)
    prediction, reference = prediction[box], reference[box]

    element = ndimage.generate_binary_structure(3, rules.dilation_connectivity)
    dilated = ndimage.binary_dilation(reference, structure=element, iterations=rules.dilations)
    dilated_lesions, _ = ndimage.label(dilated, structure=LESION_STRUCTURE)
    components, component_count = ndimage.label(prediction, structure=LESION_STRUCTURE)
    component_boxes = ndimage.find_objects(components)

    matched_components: set[int] = set()
    dice_sum = hd95_sum = 0.0
    scored = found = 0
    for lesion_label, lesion_box in enumerate(ndimage.find_objects(dilated_lesions), start=1):
        region = dilated_lesions[lesion_box] == lesion_label
        touching = np.unique(components[lesion_box][region])
        touching = touching[touching != 0]
        matched_components.update(int(c) for c in touching)
        if int(np.count_nonzero(region & reference[lesion_box])) <= rules.ignore_at_most_voxels:
            continue
        scored += 1
        if touching.size == 0:
            dice_sum += rules.unmatched_dice
            hd95_sum += rules.unmatched_hd95
            continue
        found += 1
        # The lesion and its matched components lie whole inside the union of their boxes, so
        # both metrics are the same there as over the volume (HD95 pads with background itself).
        pair_box = _union_box([lesion_box, *(component_boxes[c - 1] for c in touching)])
        matched = np.isin(components[pair_box], touching)
        lesion = (dilated_lesions[pair_box] == lesion_label) & reference[pair_box]
        dice_sum += dice(matched, lesion, rules=empty_rules)
        hd95_sum += hd95(matched, lesion, rules=empty_rules)

    false_positives = component_count - len(matched_components)
    total = scored + false_positives
    if total == 0:
        return LesionWiseScores(rules.nothing_to_score_dice, rules.nothing_to_score_hd95, 0, 0, 0)
    dice_sum += false_positives * rules.unmatched_dice
    hd95_sum += false_positives * rules.unmatched_hd95
    return LesionWiseScores(
        dice=dice_sum / total,
        hd95=hd95_sum / total,
        true_positive_lesions=found,
        false_negative_lesions=scored - found,
        false_positive_components=false_positives,
    )


def _union_box(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    """The smallest box holding every one of `boxes` (slices with a start and a stop, step 1)."""
    return tuple(
        slice(min(box[axis].start for box in boxes), max(box[axis].stop for box in boxes))
        for axis in range(len(boxes[0]))
    )
