"""Start a wider network from a trained narrower one without changing what it computes
(Net2WiderNet, Chen, Goodfellow and Shlens, "Net2Net: accelerating learning via knowledge
transfer", ICLR 2016): `brats train --init-from` a width-8 bundle with a width-16 recipe.

Every hidden channel c of the narrow network becomes `factor` channels c*factor .. c*factor+factor-1
of the wide one, each a copy of c: the same incoming weights, bias and GroupNorm scale and shift.
A convolution reading widened channels splits each weight over the copies of its input channel, at
random but summing to the original, so every output is the narrow network's. The random split is
what lets the copies learn apart: identical copies with identical outgoing weights would receive
identical gradients forever.

GroupNorm keeps its number of groups, so a group of the wide network holds exactly the copies of
one group of the narrow one: the same mean and variance. The input modalities and the output logit
keep their channel counts."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from brats_cli.model import GroupNorm, group_count


class WideningError(ValueError):
    """The narrow weights cannot be widened into the network (different layers, or a width that is
    not an integer multiple)."""


def widening_factor(narrow: Mapping[str, torch.Tensor], wide: Mapping[str, torch.Tensor]) -> int:
    """The integer f by which every widened dimension of `wide` is `narrow`'s times f (1: the same
    shapes). Raises WideningError where the keys differ or a dimension is not a multiple."""
    if set(narrow) != set(wide):
        missing = sorted(set(wide) - set(narrow))[:3]
        extra = sorted(set(narrow) - set(wide))[:3]
        raise WideningError(f"the layers differ (missing {missing}, unexpected {extra})")
    factors = set()
    for key, tensor in wide.items():
        source = narrow[key]
        if source.dim() != tensor.dim():
            raise WideningError(f"{key}: {tuple(source.shape)} against {tuple(tensor.shape)}")
        for small, large in zip(source.shape, tensor.shape, strict=True):
            if large % small:
                raise WideningError(f"{key}: {tuple(source.shape)} does not divide {tuple(tensor.shape)}")
            if large != small:
                factors.add(large // small)
    if len(factors) > 1:
        raise WideningError(f"the layers widen by different factors {sorted(factors)}")
    return factors.pop() if factors else 1


def _input_dim(module: nn.Module) -> int | None:
    if isinstance(module, nn.ConvTranspose3d):
        return 0
    if isinstance(module, nn.Conv3d):
        return 1
    return None


def widen_state(
    model: nn.Module, narrow: Mapping[str, torch.Tensor], *, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """`narrow` (a state dict of the same architecture at 1/f of `model`'s width) widened to
    `model`'s shapes, computing the same function up to rounding (module docstring). Raises
    WideningError where it cannot."""
    wide = model.state_dict()
    factor = widening_factor(narrow, wide)
    if factor == 1:
        return {key: tensor.clone() for key, tensor in narrow.items()}
    for name, module in model.named_modules():
        if isinstance(module, GroupNorm):
            channels = narrow[f"{name}.weight"].shape[0]
            # The narrow layer's groups by the model's own rule, with the wide layer's group count.
            groups = group_count(channels, module.num_groups)
            if channels != module.num_channels and module.num_groups != groups:
                raise WideningError(
                    f"{name}: {channels} channels in {groups} group(s) cannot become "
                    f"{module.num_channels} in {module.num_groups} groups with the same statistics"
                )
    input_dims = {f"{name}.weight": _input_dim(module) for name, module in model.named_modules()}
    result = {}
    for key, target in wide.items():
        tensor = narrow[key].detach().to("cpu", torch.float32)
        for dim, (small, large) in enumerate(zip(tensor.shape, target.shape, strict=True)):
            if large != small:
                tensor = tensor.repeat_interleave(factor, dim=dim)
                if dim == input_dims.get(key):
                    tensor = tensor * _random_split(tensor.shape, dim, factor, generator)
        result[key] = tensor.to(target.dtype)
    return result


def _random_split(shape: torch.Size, dim: int, factor: int, generator: torch.Generator) -> torch.Tensor:
    """Positive weights over each run of `factor` copies along `dim` that sum to one: uniform
    between 1/2 and 3/2 of 1/factor before normalising, far enough from equal to break the copies'
    symmetry, close enough to keep every copy's share of the same order."""
    shares = 0.5 + torch.rand(shape, generator=generator)
    grouped = shares.unflatten(dim, (shape[dim] // factor, factor))
    return (grouped / grouped.sum(dim=dim + 1, keepdim=True)).flatten(dim, dim + 1)
