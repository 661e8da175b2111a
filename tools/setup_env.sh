#!/usr/bin/env bash
# Install omni_ds and what it needs into a virtual environment; print the venv's python.
#
#   source-free use:  PY=$(bash tools/setup_env.sh)      (then "$PY" -m pytest ...)
# Env: VENV (default .venv in the repo; an already active venv is used as it is),
#      TORCH_SPEC (default torch==2.13.0: the CPU wheel on this kind of machine; GPU users set
#      e.g. TORCH_SPEC="torch==2.5.1" or "" to keep the torch they have),
#      TRANSFORMERS_SPEC (default "transformers>=5,<6": the newest 5.x, which an older venv is
#      upgraded to; "transformers==4.57.6" gives the 4.x compat stack of README "Tested stacks";
#      "" leaves the choice to pip within setup.py's range, keeping an installed transformers),
#      EXTRAS (default dev,units).
# Idempotent and quick on a second run: a stamp of setup.py's hash skips the pip step.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_SPEC="${TORCH_SPEC-torch==2.13.0}"
TRANSFORMERS_SPEC="${TRANSFORMERS_SPEC-transformers>=5,<6}"
EXTRAS="${EXTRAS:-dev,units}"

if [[ -n "${VIRTUAL_ENV:-}" && -z "${VENV:-}" ]]; then
    VENV="$VIRTUAL_ENV"
else
    VENV="${VENV:-$ROOT/.venv}"
    if [[ ! -x "$VENV/bin/python" ]]; then
        "${PYTHON:-python3}" -m venv "$VENV" >&2
    fi
fi
PY="$VENV/bin/python"
STAMP="$VENV/.omni_ds-installed"
WANT="$(cat "$ROOT/setup.py" | sha256sum | cut -c1-16) $TORCH_SPEC $TRANSFORMERS_SPEC $EXTRAS"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    echo "[setup_env] installing into $VENV (torch: ${TORCH_SPEC:-keep}," \
         "transformers: ${TRANSFORMERS_SPEC:-as pip resolves}, extras: $EXTRAS)" >&2
    "$PY" -m pip install --quiet --upgrade pip >&2 2>/dev/null || true
    # torch first and on its own: a bare "torch" requirement with no torch installed would pull
    # a multi-GB CUDA build; installing the chosen spec first makes later requirements no-ops.
    if [[ -n "$TORCH_SPEC" ]]; then
        "$PY" -m pip install --quiet "$TORCH_SPEC" >&2
    fi
    # transformers in the same resolve as omni_ds, so tokenizers/huggingface_hub match the line.
    "$PY" -m pip install --quiet -e "$ROOT[$EXTRAS]" ${TRANSFORMERS_SPEC:+"$TRANSFORMERS_SPEC"} >&2
    if [[ ",$EXTRAS," == *",dev,"* ]]; then
        # openai-whisper is the test oracle for the official front end and encoder. --no-deps:
        # its triton requirement is a large GPU-only package the oracle never uses.
        "$PY" -m pip install --quiet --no-deps "openai-whisper==20250625" >&2
        "$PY" -m pip install --quiet numba tiktoken more-itertools >&2
    fi
    echo "$WANT" >"$STAMP"
fi
echo "$PY"
