import pytest
import torch

from brats_cli.model import ResUNet3D


@pytest.mark.parametrize("width, millions", [(24, 5.264073), (64, 37.400073)])
def test_parameter_counts_match_the_paper_widths(width, millions):
    model = ResUNet3D(width=width)
    assert sum(p.numel() for p in model.parameters()) == round(millions * 1e6)


def test_output_has_the_input_spatial_size_and_one_channel():
    model = ResUNet3D(width=4).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 4, 32, 24, 16))
    assert out.shape == (2, 1, 32, 24, 16)


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"levels": 1}, {"width": 2.5}, {"in_channels": True}])
def test_invalid_hyperparameters_are_refused(kwargs):
    with pytest.raises(ValueError, match="ResUNet3D"):
        ResUNet3D(**kwargs)


@pytest.mark.parametrize("channels, groups", [(64, 8), (4, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_by_reductions_is_group_norm(channels, groups, channels_last):
    """What the GPU runs instead of PyTorch's GroupNorm kernel (and the ONNX export writes) is the
    same function: against a float64 reference, on activations with a large constant background
    (where a single float32 accumulator loses digits), in both memory layouts."""
    from brats_cli.model import group_norm_by_reductions

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 24, 20, 16, generator=generator) * 3 + 5
    x[:, :, :6] = 40.0  # background
    weight = torch.rand(channels, generator=generator) + 0.5
    bias = torch.rand(channels, generator=generator) - 0.5
    reference = torch.nn.functional.group_norm(x.double(), groups, weight.double(), bias.double(), 1e-5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    out = group_norm_by_reductions(x, groups, weight, bias, 1e-5)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert float((out.double() - reference).norm() / reference.norm()) < 1e-6
    half = group_norm_by_reductions(x.to(torch.bfloat16), groups, weight, bias, 1e-5)
    assert half.dtype == torch.bfloat16
    assert float((half.double() - reference).norm() / reference.norm()) < 2e-2


def test_the_network_group_norm_keeps_torch_state_dict_keys():
    """Bundles written before GroupNorm had its own class load unchanged."""
    from brats_cli.model import GroupNorm

    model = ResUNet3D(width=4)
    assert isinstance(model.stem.norm1, GroupNorm) and isinstance(model.stem.norm1, torch.nn.GroupNorm)
    assert {"stem.norm1.weight", "stem.norm1.bias"} <= set(model.state_dict())
