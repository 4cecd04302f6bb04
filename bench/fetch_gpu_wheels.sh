#!/usr/bin/env bash
# Downloads the wheels that bench/gpu_run.sh installs on a GPU machine without network access.
# Run on a machine that reaches the package index:  bench/fetch_gpu_wheels.sh [PYTHON_VERSION, default 3.11]
set -euo pipefail
cd "$(dirname "$0")"
pyver="${1:-3.11}"
mkdir -p wheels
# Binary wheels for the GPU machine's platform and Python; the backend's pure-Python deps come along.
pip download -q -d wheels --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --python-version "$pyver" --no-deps \
  pyzmq msgpack xatlas trimesh diffusers diffrp-nvdiffrast scikit-image imageio lazy-loader tifffile networkx \
  setuptools wheel
ls -1 wheels
