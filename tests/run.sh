#!/usr/bin/env bash
# The test command of the README: installs what the tests need (venv, torch, omni_ds[dev,units],
# the fairseq oracle venv for the unit-parity tests), then runs pytest. Extra args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(bash tools/setup_env.sh)"
if [[ "${OMNI_DS_SKIP_FAIRSEQ:-0}" != "1" ]]; then
    # fairseq is a test oracle only, in its own venv (see tools/install_fairseq_oracle.sh).
    bash tools/install_fairseq_oracle.sh >&2 || echo "[tests] fairseq oracle unavailable: parity tests will be skipped" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PY" -m pytest tests -q -ra "$@"
