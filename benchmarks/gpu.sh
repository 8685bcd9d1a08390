#!/usr/bin/env bash
# The GPU table of BENCHMARKS.md, in one call: RKD-A and the Distiller step on JAX, on a machine whose
# Python has JAX built for its GPU but neither Keras nor TensorFlow (the project's lent GPU machine).
#
# Carry the working tree (rkd_keras/, benchmarks/) and wheels/: Keras and those of its dependencies the
# machine lacks, for the machine's Python (`python -V` there; 3.12 below). Fill wheels/ here with:
#   pip download keras==3.15.1 absl-py rich namex h5py optree packaging typing-extensions --only-binary=:all: \
#       --python-version 3.12 --platform manylinux2014_x86_64 --no-deps -d wheels
#   pip download markdown-it-py mdurl pygments --only-binary=:all: --no-deps -d wheels
# (about 10 MB; the carry limit is 64 MiB). Then, from the repository root on the GPU machine:
#   bash benchmarks/gpu.sh
# It needs `import rkd_keras` not to import TensorFlow on JAX (the lazy package import).
# N ∈ {128, 512, 1024, 4096} × D ∈ {512, 2048}, ours against the direct form, forward + backward,
# median of 5 runs after a warm-up, peak memory as XLA's buffer assignment of the compiled step.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TMPDIR:-/tmp}/rkd-keras-gpu
python -m venv --system-site-packages "$venv"  # sees the machine's JAX
"$venv/bin/python" -m pip install --quiet --no-index --find-links wheels keras
export KERAS_BACKEND=jax PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$venv/bin/python" -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
"$venv/bin/python" benchmarks/angle_loss.py --backends jax --sizes 128,512,1024,4096 --dims 512,2048 \
  --direct-limit-gb 40 --repeats 5
"$venv/bin/python" benchmarks/distiller_step.py --backends jax --pairs small,resnet --steps 20 --rounds 4 --no-cache
