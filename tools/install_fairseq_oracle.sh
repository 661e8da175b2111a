#!/usr/bin/env bash
# Build the fairseq "oracle" venv used by tests/test_units_parity.py and bench/bench_units.py.
#
# fairseq lives in its own venv because it pins hydra-core/omegaconf and brings C/Cython
# extensions that the main venv must not inherit. fairseq 0.12.2 does not import on
# Python >= 3.11, so the community fork fairseq-fixed 0.12.3.1 is used (sdist only: it compiles).
#
# Usage: bash tools/install_fairseq_oracle.sh [VENV_DIR]      (default: .venv-fairseq)
# Env:   PYTHON (interpreter for the venv, default python3.11 or python3),
#        TORCH_SPEC (default torch==2.13.0, the same build as the main venv).
# Idempotent: an existing venv whose check passes is left as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-fairseq}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
SKLEARN_SPEC="${SKLEARN_SPEC:-scikit-learn==1.9.1}"   # same as the main venv: one pickle format

check() {
    "$VENV/bin/python" - <<'EOF'
import torch, fairseq, sklearn, joblib, soundfile
from fairseq.models.hubert import HubertModel, HubertConfig
from fairseq.tasks.hubert_pretraining import HubertPretrainingTask
from fairseq import checkpoint_utils
print(f"fairseq oracle OK: fairseq {fairseq.__version__}, torch {torch.__version__}, "
      f"scikit-learn {sklearn.__version__}")
EOF
}

if [[ -x "$VENV/bin/python" ]] && check 2>/dev/null; then
    exit 0
fi

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)

# A constraints file keeps every later step (and any package's dependencies) on this torch;
# without it pip may resolve a different torch, e.g. a multi-GB CUDA build.
CONSTRAINTS="$VENV/oracle-constraints.txt"
echo "$TORCH_SPEC" >"$CONSTRAINTS"

# torch first: fairseq's setup.py imports torch.utils.cpp_extension to build its extensions.
"${PIP[@]}" -c "$CONSTRAINTS" "$TORCH_SPEC"
"${PIP[@]}" -c "$CONSTRAINTS" "setuptools<81" wheel cython "numpy<2.5"

# --no-build-isolation: reuse the torch above instead of letting the build environment fetch
# another one. --no-deps: fairseq-fixed requires torchaudio, which has no release for this torch
# and is imported by fairseq only lazily (TTS/feature scripts the oracle never runs).
MAX_JOBS="${MAX_JOBS:-2}" "${PIP[@]}" -c "$CONSTRAINTS" --no-build-isolation --no-deps \
    fairseq-fixed==0.12.3.1

# fairseq-fixed's remaining runtime requirements (its setup.py list, minus torchaudio), plus the
# reference k-means pipeline (scikit-learn, joblib) and audio reading (soundfile).
"${PIP[@]}" -c "$CONSTRAINTS" cffi "hydra-core==1.3.2" "omegaconf==2.3.0" regex \
    "sacrebleu>=1.4.12" tqdm bitarray packaging "$SKLEARN_SPEC" joblib soundfile

check
