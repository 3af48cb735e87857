import numpy as np
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


def _large_group():
    """A (1, 8, 96, 96, 96) input with a constant background, where PyTorch's channels-last CPU
    GroupNorm kernel loses digits, the network's GroupNorm(4, 8) with set weights, and the float64
    GroupNorm of the input."""
    from brats_cli.model import GroupNorm

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 96, 96, 96, generator=generator) * 3 + 5
    x[:, :, :24] = 40.0  # background
    norm = GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=generator)
        norm.bias.uniform_(-0.5, 0.5, generator=generator)
    weight, bias = norm.weight.detach().double(), norm.bias.detach().double()
    return x, norm, torch.nn.functional.group_norm(x.double(), 4, weight, bias, norm.eps)


def test_cpu_float32_group_norm_in_channels_last_keeps_its_digits():
    """`--precision fp32` on the CPU runs channels-last, where PyTorch's GroupNorm kernel loses
    digits over a large group (about 5e-4 relative on this input): the network's GroupNorm must
    match float64 there and keep the layout; bf16 autocast (whose inference runs contiguous, where
    the kernel is accurate) and training (gradients on) keep the native kernel."""
    x, norm, reference = _large_group()
    channels_last = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        out = norm(channels_last)
        native = torch.nn.functional.group_norm(channels_last, 4, norm.weight, norm.bias, norm.eps)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = norm(channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last_3d) and out.dtype == torch.float32
    assert float((out.double() - reference).norm() / reference.norm()) < 1e-6
    assert float((native.double() - reference).norm() / reference.norm()) > 1e-5  # the kernel's loss
    assert torch.equal(autocast, native)
    trained = norm(channels_last)  # gradients on: the native kernel and its fused backward
    assert trained.requires_grad and torch.equal(trained.detach(), native)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_inference_keeps_group_norm_digits_in_either_precision(precision):
    """`brats segment` on the CPU, fp32 or bf16 (the default where the CPU has it): a group of
    millions of voxels is normalised as float64 would to 1e-6. Under bf16 autocast GroupNorm runs
    PyTorch's float32 kernel, which loses digits in the channels-last layout (1e-4 in probability
    here), so the bf16 predictor must run contiguous."""
    from brats_cli.choices import Precision
    from brats_cli.predictors.torch_backend import TorchStagePredictor

    x, norm, reference = _large_group()
    predictor = TorchStagePredictor([torch.nn.Sequential(norm)], "cpu", Precision(precision))
    probability = predictor(x[0].numpy())[0]
    assert probability.shape == (96, 96, 96)
    assert float(np.abs(probability - torch.sigmoid(reference)[0, 0].numpy()).max()) < 1e-6


def test_the_network_group_norm_keeps_torch_state_dict_keys():
    """Bundles written before GroupNorm had its own class load unchanged."""
    from brats_cli.model import GroupNorm

    model = ResUNet3D(width=4)
    assert isinstance(model.stem.norm1, GroupNorm) and isinstance(model.stem.norm1, torch.nn.GroupNorm)
    assert {"stem.norm1.weight", "stem.norm1.bias"} <= set(model.state_dict())
