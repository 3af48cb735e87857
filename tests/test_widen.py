"""Net2WiderNet initialisation (`brats train --init-from` narrower weights): the wide network
computes what the narrow one did, its copies learn apart, and what cannot be widened is refused."""

from __future__ import annotations

import pytest
import torch

from brats_cli.model import ResUNet3D
from brats_cli.training.widen import WideningError, widen_state, widening_factor


def _perturbed(model: ResUNet3D, seed: int = 0) -> ResUNet3D:
    """`model` with every parameter moved off its initial value, GroupNorm's scale and shift
    included (they start at 1 and 0, where a wrong copy would go unnoticed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize(("width", "factor", "levels"), [(8, 2, 3), (8, 3, 2), (16, 2, 2)])
def test_the_wide_network_computes_what_the_narrow_one_did(width, factor, levels):
    narrow = _perturbed(ResUNet3D(width=width, levels=levels)).eval()
    wide = ResUNet3D(width=width * factor, levels=levels).eval()
    state = widen_state(wide, narrow.state_dict(), generator=torch.Generator().manual_seed(1))
    wide.load_state_dict(state)
    x = torch.randn(2, 4, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, actual = narrow(x), wide(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert widening_factor(narrow.state_dict(), wide.state_dict()) == factor


def test_copies_of_a_channel_learn_apart():
    """Identical copies with identical outgoing weights would get identical gradients forever; the
    random split of the outgoing weights gives each copy its own gradient from the first step."""
    narrow = _perturbed(ResUNet3D(width=8, levels=2))
    wide = ResUNet3D(width=16, levels=2)
    wide.load_state_dict(widen_state(wide, narrow.state_dict(), generator=torch.Generator().manual_seed(1)))
    weight = wide.stem.conv1.weight  # reads the 4 modalities: its 16 outputs are 8 pairs of copies
    assert torch.equal(weight[0::2], weight[1::2])
    wide(torch.randn(1, 4, 16, 16, 16)).square().mean().backward()
    assert not torch.allclose(weight.grad[0::2], weight.grad[1::2])


def test_the_split_of_a_widened_input_sums_to_the_narrow_weight():
    narrow = _perturbed(ResUNet3D(width=8, levels=2))
    wide = ResUNet3D(width=16, levels=2)
    state = widen_state(wide, narrow.state_dict(), generator=torch.Generator().manual_seed(1))
    conv = narrow.state_dict()["stem.conv2.weight"]  # (8, 8, 3, 3, 3)
    widened = state["stem.conv2.weight"]  # (16, 16, 3, 3, 3)
    torch.testing.assert_close(widened[0::2, 0::2] + widened[0::2, 1::2], conv)
    assert (widened[0::2, 0::2] != widened[0::2, 1::2]).float().mean() > 0.99
    head = state["head.weight"]  # one logit: not widened, its inputs are
    assert head.shape == (1, 16, 1, 1, 1)


@pytest.mark.parametrize(
    ("narrow", "wide", "message"),
    [
        (dict(width=8), dict(width=12), r"does not divide"),
        (dict(width=8, levels=3), dict(width=16, levels=4), r"the layers differ"),
        (dict(width=4), dict(width=8), r"stem.norm2: 4 channels in 1 group\(s\) cannot become 8 in 8 groups"),
        (dict(width=16), dict(width=8), r"does not divide"),
    ],
    ids=["not a multiple", "other depth", "GroupNorm groups change", "narrower"],
)
def test_what_cannot_be_widened_is_refused(narrow, wide, message):
    source = ResUNet3D(**{"levels": 2, **narrow})
    target = ResUNet3D(**{"levels": 2, **wide})
    with pytest.raises(WideningError, match=message):
        widen_state(target, source.state_dict(), generator=torch.Generator())
