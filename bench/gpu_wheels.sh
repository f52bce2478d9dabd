#!/usr/bin/env bash
# Fetch (here, where PyPI is reachable) the wheels the GPU device machine lacks for
# bench/gpu_check.sh, into .whl/ (ignored by git); the device run then carries .whl.
# The device's python3 is CPython 3.12 on x86-64 with torch, lightning, timm, typer, numpy,
# scipy, scikit-image, pillow, pyarrow and safetensors already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    rasterio==1.4.4 affine==3.0.1 cligj==0.7.2 click-plugins==1.1.1.2 \
    openslide-python==1.4.7 openslide-bin==4.0.1.2 kornia==0.9.0 kornia-rs==0.2.0 \
    lightly==1.6.0
du -sh .whl
