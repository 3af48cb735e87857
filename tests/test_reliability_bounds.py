"""Bounded resources: a compressed image is checked to its end without holding more than the
voxels its header describes."""

from __future__ import annotations

import gzip
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
from conftest import LPS_AFFINE

from brats_cli.errors import ImageReadError
from brats_cli.io import MAX_TRAILING_BYTES, read_image


def _gzip_with_tail(tmp_path, tail: int):
    image = nib.Nifti1Image(np.arange(20 * 20 * 20, dtype=np.int16).reshape(20, 20, 20), LPS_AFFINE)
    path = tmp_path / "padded_flair.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(image.to_bytes())
        for _ in range(tail // (1 << 20)):
            handle.write(bytes(1 << 20))
    return path


def test_a_small_file_of_gigabytes_of_zeros_is_refused_without_reading_them(tmp_path):
    path = _gzip_with_tail(tmp_path, 256 << 20)  # 256 MiB of zeros after the image, ~250 KB on disk
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    with pytest.raises(ImageReadError, match=f"more than {MAX_TRAILING_BYTES} bytes of data beyond the image"):
        read_image(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 << 20  # the voxels and a chunk or two, not the tail


def test_a_little_padding_after_the_image_is_read_as_usual(tmp_path):
    data, _ = read_image(_gzip_with_tail(tmp_path, 1 << 20))
    assert data.shape == (20, 20, 20) and data[19, 19, 19] == 20 * 20 * 20 - 1
