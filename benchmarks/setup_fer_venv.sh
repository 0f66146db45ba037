#!/usr/bin/env bash
# Builds the `fer` peer stack in its own virtual environment (never the project's).
# Recipe from DESIGN.md "The peer": about 5 GB and 3 minutes; idempotent (stamp file).
set -euo pipefail
VENV=${1:-.venv-fer}
PYTHON=${PYTHON:-python3}
if [[ -f "$VENV/.built" ]]; then exit 0; fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip install -q"
$PIP --upgrade pip
$PIP tensorflow-cpu==2.21.0 torch==2.14.1 torchvision==0.29.1 opencv-contrib-python \
    pandas requests matplotlib tqdm pillow 'setuptools<81' av
$PIP --no-deps fer==25.10.3 facenet-pytorch==2.6.0
# triton loaded after TensorFlow segfaults the process; fer does not need it.
"$VENV/bin/python" -m pip uninstall -q -y triton || true
"$VENV/bin/python" -c "import torch, tensorflow; from fer.fer import FER; print('fer stack ok')"
touch "$VENV/.built"
