#!/usr/bin/env bash
# The transformers 4.x compat job: the tests that touch transformers' APIs most (model I/O and
# shapes, official-code parity, tokenizer, generation, the training engine, HuBERT units, the
# GGUF/CTranslate2 conversions) in a second venv on the 4.x stack of README "Tested stacks".
# tests/run.sh runs it after the main suite when OMNI_DS_COMPAT_TF4=1 (.ci/run sets that); it
# also runs on its own. Extra args go to pytest.
# Env: COMPAT_VENV (default .venv-tf4), COMPAT_TRANSFORMERS_SPEC (default transformers==4.57.6),
#      TORCH_SPEC as for tools/setup_env.sh (the same wheel as the main venv: pip's cache has it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMPAT_TESTS=(tests/test_model_io.py tests/test_model_shapes.py tests/test_official_parity.py
              tests/test_tokenizer.py tests/test_infer.py tests/test_train_engine.py
              tests/test_units_parity.py tests/test_real_small.py)
PY="$(VENV="${COMPAT_VENV:-$ROOT/.venv-tf4}" \
      TRANSFORMERS_SPEC="${COMPAT_TRANSFORMERS_SPEC:-transformers==4.57.6}" bash tools/setup_env.sh)"
"$PY" -c "import transformers; print('[compat] transformers', transformers.__version__)" >&2
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PY" -m pytest -q -ra "${COMPAT_TESTS[@]}" "$@"
