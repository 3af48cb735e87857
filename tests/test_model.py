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
