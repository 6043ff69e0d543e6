#!/usr/bin/env bash
# Fetch the wheels benchmarks/gpu_check.py needs on a GPU machine whose Python has torch,
# transformers, huggingface_hub, safetensors, numpy, Pillow and PyYAML but not farm's other packages
# (the lent H200 image, for one). They land in .whl/ (git-ignored), about 39 MB; carry that
# folder with the run. imageio-ffmpeg 0.6.0: the same API as the version farm pins, in a wheel
# half the size (0.8.x is 68 MB, over a 64 MiB carry limit).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl \
  diffusers==0.42.1 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 imageio-ffmpeg==0.6.0 \
  importlib_metadata==8.7.0
du -sh .whl
