"""`brats info`: versions, accelerators, ONNX Runtime providers and the default bundle's check."""

from __future__ import annotations

import platform

from brats_cli import DISTRIBUTION, installed_version
from brats_cli.cli import console


def info() -> None:
    """Show versions, CUDA and ONNX Runtime providers, and verify the default weights bundle."""
    import nibabel
    import numpy
    import torch
    from rich.table import Table

    from brats_cli.bundle import default_bundle_path, load_weights
    from brats_cli.choices import Backend
    from brats_cli.errors import WeightsError

    table = Table(show_header=False, box=None)
    table.add_row(DISTRIBUTION, installed_version())
    table.add_row("python", platform.python_version())
    table.add_row("torch", torch.__version__)
    table.add_row("numpy", numpy.__version__)
    table.add_row("nibabel", nibabel.__version__)
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        table.add_row("CUDA", f"{torch.version.cuda} ({names})")
    else:
        table.add_row("CUDA", "not available (CPU only)")
    try:
        import onnxruntime

        providers = ", ".join(onnxruntime.get_available_providers())
        table.add_row("onnxruntime", f"{onnxruntime.__version__} ({providers})")
    except ImportError:
        table.add_row("onnxruntime", "not installed")
    path = default_bundle_path()
    try:
        bundle = load_weights(None)
        stages = ", ".join(
            f"{stage.value} w{spec.width} x{len(spec.folds)}" for stage, spec in bundle.manifest.stages.items()
        )
        stored = bundle.manifest.storage.value
        table.add_row("default weights", f"{path} (checksums ok; {stages}; stored in {stored})")
    except WeightsError as error:
        table.add_row("default weights", f"not usable: {error}")
    onnx_path = default_bundle_path(Backend.ONNX)
    if onnx_path.exists():
        try:
            load_weights(None, backend=Backend.ONNX)
            table.add_row("default ONNX weights", f"{onnx_path} (checksums ok)")
        except WeightsError as error:
            table.add_row("default ONNX weights", f"not usable: {error}")
    console.stdout.print(table)
