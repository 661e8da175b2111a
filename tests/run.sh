#!/usr/bin/env bash
# The test command of the README: installs what the tests need (venv, torch, omni_ds[dev,units],
# the fairseq oracle venv for the unit-parity tests), then runs pytest. Extra args go to pytest.
# OMNI_DS_COMPAT_TF4=1 (set by .ci/run) then also runs tests/run_compat.sh: a subset of the
# tests on transformers 4.57 in a second venv. The exit code is the first failure's.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(bash tools/setup_env.sh)"
if [[ "${OMNI_DS_SKIP_FAIRSEQ:-0}" != "1" ]]; then
    # fairseq is a test oracle only, in its own venv (see tools/install_fairseq_oracle.sh).
    bash tools/install_fairseq_oracle.sh >&2 || echo "[tests] fairseq oracle unavailable: parity tests will be skipped" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
"$PY" -m pytest tests -q -ra "$@"
rc=$?
if [[ "${OMNI_DS_COMPAT_TF4:-0}" == "1" ]]; then
    bash tests/run_compat.sh
    compat=$?
    (( rc == 0 )) && rc=$compat
fi
exit $rc
