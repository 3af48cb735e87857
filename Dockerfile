# brats as a BraTS challenge submission image:
#   docker build -t brats-resunet .
#   docker run --rm --gpus all --network none -v IN:/input:ro -v OUT:/output brats-resunet [segment options]
# segments every case in /input (case folders, or one case's four files directly as in the 2021
# harness) into /output/<ID>.nii.gz; `... brats-resunet infer --data_path=... --output_path=...` is
# the MLCube form (mlcube/). Other subcommands: docker run --entrypoint brats brats-resunet evaluate ...
#
# Why this base: PyPI's torch 2.13.0 (TORCH_SPEC below) is built for CUDA 13.0 and cuDNN 9 (its
# wheel requires cuda-toolkit 13.0 and nvidia-cudnn-cu13 9.x), and so is onnxruntime-gpu 1.31 (the
# `gpu` extra: CUDA 13, cuDNN 9). torch loads the CUDA libraries of its own pip packages, but
# onnxruntime-gpu looks for libcudnn/libcublas on the system library path, which this image
# provides; it also sets the NVIDIA container variables that `--gpus all` and `apptainer --nv`
# use. CUDA 13 needs an NVIDIA driver >= 580 on the host; with an older driver brats runs on the
# CPU and says so in its log. Change torch's version and this tag together.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---- build: a virtual environment in /opt/brats, copied whole into the final stage so that pip,
# the build front end and the wheelhouse never reach the final image.
FROM ${BASE_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
# Python from the base's own distribution: the final stage installs the same package, so the
# venv's interpreter link (/usr/bin/python3) is valid there. Versions are the distribution's.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/brats
ENV PATH=/opt/brats/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Local wheels first (empty in the repository: CI puts its CPU torch wheel here, see
# .ci/wheelhouse/README.md). torch gets its own layer: source changes do not reinstall it.
ARG TORCH_SPEC=torch==2.13.0
COPY .ci/wheelhouse/ /wheelhouse/
# The version is pinned, in TORCH_SPEC (hadolint cannot see through the variable).
# hadolint ignore=DL3013
RUN pip install --find-links /wheelhouse "${TORCH_SPEC}"
# The package with the default weights: hatchling packs weights/ into the wheel as
# brats_cli/_weights, where `brats segment` finds them without --weights.
ARG BRATS_EXTRA=gpu
COPY pyproject.toml README.md /src/
COPY weights /src/weights
COPY brats_cli /src/brats_cli
# The project's own source; its dependencies' version ranges are in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --find-links /wheelhouse "/src[${BRATS_EXTRA}]"
# The default weights exported to ONNX, next to the PyTorch bundle (brats_cli/_weights_onnx), so
# that `--backend onnx` works without --weights; the export checks every graph against PyTorch.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN brats export --out "$(python -c 'import brats_cli, pathlib; print(pathlib.Path(brats_cli.__file__).parent)')/_weights_onnx"

# ---- final image
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/brats /opt/brats
# Challenges run the image as an arbitrary uid without a home (`--user $(id -u):$(id -g)`), some
# with a read-only root file system: every cache and temporary file goes to /tmp, and the only
# other place written is /output. Bytecode was compiled at install time; never write it later.
ENV PATH=/opt/brats/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton \
    CUDA_CACHE_PATH=/tmp/nv-cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Mount points, present so that Apptainer can bind them in a read-only image.
RUN mkdir -p /input /output
LABEL org.opencontainers.image.title="brats-resunet" \
      org.opencontainers.image.description="Glioma segmentation with the residual 3D U-Net with localisation (BraTS 2021)" \
      org.opencontainers.image.licenses="Apache-2.0"
# brats-container answers the three submission formats (brats_cli/cli/container.py):
#   no arguments (BraTS 2021, 2025):  brats segment /input /output
#   segment options:                  docker run ... brats-resunet --device cpu --folds 0
#   MLCube (BraTS 2023-2024):         docker run ... brats-resunet infer --data_path=D --output_path=O
#                                     [--parameters_file=F]  (mlcube/mlcube.yaml)
# The empty CMD stops a base image's CMD (e.g. /bin/bash) from being passed as an argument.
ENTRYPOINT ["brats-container"]
CMD []
