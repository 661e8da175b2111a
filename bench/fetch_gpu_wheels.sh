#!/usr/bin/env bash
# Fill bench/wheels/ (git-ignored) with the wheels bench/gpu_check.sh installs on a GPU machine
# without network: what such a machine lacks (the H200 image here has torch 2.11, transformers
# 5.17, accelerate, tensorboard, numpy, psutil, ... but no DeepSpeed, pydantic, soundfile, soxr).
#
#   bash bench/fetch_gpu_wheels.sh [DIR]        # default bench/wheels; about 8 MB
#
# GPU_PYTHON_VERSION (default 3.12: the GPU image's python) picks the binary wheels;
# PYTHON (default python3) is a python with torch and pip, used to build DeepSpeed's wheel.
# DeepSpeed is an sdist on PyPI: it is built here with DS_BUILD_OPS=0 (no CUDA ops compiled;
# omni_ds uses torch's AdamW, so none is needed) into a pure-python wheel.
# datasets (in setup.py's install_requires) is not fetched: omni_ds imports none of it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/bench/wheels}"
PY="${PYTHON:-python3}"
PYVER="${GPU_PYTHON_VERSION:-3.12}"
mkdir -p "$DIR"

# Versions tested together in this project's venv (tests/run.sh's stack).
DEEPSPEED="deepspeed==0.19.8"
PURE=(hjson==3.1.0 pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5
      typing-extensions==4.16.0 pycparser==3.12)
BINARY=(pydantic-core==2.50.5 soundfile==0.14.0 cffi==2.1.1 soxr==1.1.0)

platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 \
         manylinux_2_35_x86_64 any; do
    platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d "$DIR" "${PURE[@]}" "${BINARY[@]}"

if ! ls "$DIR"/deepspeed-*.whl >/dev/null 2>&1; then
    DS_BUILD_OPS=0 DS_ACCELERATOR=cpu "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir \
        -w "$DIR" "$DEEPSPEED"
fi
# gpu_check.sh installs every wheel here: two versions of one package would clash.
dupes="$(ls "$DIR"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
if [[ -n "$dupes" ]]; then
    echo "fetch_gpu_wheels: more than one wheel of: $dupes (remove the old ones from $DIR)" >&2
    exit 1
fi
du -sh "$DIR"
ls "$DIR"
