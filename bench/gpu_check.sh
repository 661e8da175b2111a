#!/usr/bin/env bash
# The GPU figures in one command, for a bare CUDA machine without network:
#
#   bash bench/gpu_check.sh OUT            # needs a CUDA GPU; at most 8 minutes
#   bash bench/gpu_check.sh OUT --tiny     # the same steps on the CPU at tiny widths (the test)
#
# 1. installs the wheels in bench/wheels (DeepSpeed and what the machine lacks; fill it with
#    bench/fetch_gpu_wheels.sh where PyPI is reachable) and omni_ds from this checkout into a
#    private folder (pip --no-index --target: the machine's own packages stay as they are);
# 2. checks that the GPU is seen and everything imports;
# 3. runs bench/bench_gpu.py in what is left of the time (OMNI_DS_GPU_CHECK_S, default 480 s),
#    each of its parts time-boxed; a part that fails is recorded and the rest go on.
# Writes OUT/gpu_figures.json (setup steps + every part's figures) and OUT/gpu_check.log.
# PYTHON (default python3): the python that has torch.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: bash bench/gpu_check.sh OUT_DIR [--tiny]" >&2
    exit 2
fi
OUT="$1"; shift
TINY=""
[[ "${1:-}" == "--tiny" ]] && TINY="--tiny"
PY="${PYTHON:-python3}"
WHEELS="${OMNI_DS_WHEELS:-$HERE/wheels}"
TOTAL="${OMNI_DS_GPU_CHECK_S:-480}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/omni_ds_gpu_check.XXXXXX")"
SITE="$WORK/site"
SETUP="$WORK/setup.json"
trap 'rm -rf "$WORK"' EXIT
exec > >(tee -a "$LOG") 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
start=$SECONDS
steps=()

step() {    # step NAME TIMEOUT_S CMD...: run, time-boxed; its outcome goes into the figures
    local name="$1" box="$2" t0=$SECONDS rc
    shift 2
    echo "[gpu_check] $name: $*"
    timeout "$box" "$@"
    rc=$?
    steps+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}")
    echo "[gpu_check] $name: exit $rc after $((SECONDS - t0)) s"
    return $rc
}

echo "[gpu_check] $(date -u '+%F %T UTC') on $(hostname); out $OUT; ${TINY:-GPU} mode; budget $TOTAL s"
mkdir -p "$SITE"
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if (( ${#wheels[@]} )); then
    step install_wheels 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$SITE" "${wheels[@]}"
else
    echo "[gpu_check] no wheels in $WHEELS: the installed packages must do (bench/fetch_gpu_wheels.sh fills it)"
    steps+=("{\"step\": \"install_wheels\", \"rc\": null, \"note\": \"no wheels in $WHEELS\"}")
fi
# omni_ds from this checkout (over any omni_ds wheel: the checkout is what is measured), built in
# a copy so the checkout stays clean; setuptools is all it needs
mkdir -p "$WORK/src" && cp -r "$ROOT/setup.py" "$ROOT/omni_ds" "$WORK/src/"
step install_omni_ds 180 "$PY" -m pip install -q --upgrade --no-index --no-deps --no-build-isolation --no-compile \
    --no-cache-dir --target "$SITE" "$WORK/src"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
need_gpu='import torch; assert torch.cuda.is_available(), "torch sees no CUDA device"; print(torch.cuda.get_device_name(0))'
fail() {    # the figures JSON with the setup steps and why nothing was measured
    printf '{"setup": [%s], "error": "%s"}\n' "$(IFS=,; echo "${steps[*]}")" "$1" > "$OUT/gpu_figures.json"
    echo "[gpu_check] $1"
    exit 1
}
if [[ -z "$TINY" ]] && ! step cuda 60 "$PY" -c "$need_gpu"; then
    fail "no CUDA device: nothing measured (--tiny is the CPU smoke run)"
fi
cd "$WORK"      # not the checkout: the installed omni_ds must import
step imports 180 "$PY" -c 'import deepspeed, soundfile, soxr, omni_ds
from omni_ds.train.trainer import Trainer
print("deepspeed", deepspeed.__version__, deepspeed.__file__, "omni_ds", omni_ds.__file__)' || fail "the imports failed (see gpu_check.log)"
printf '[%s]\n' "$(IFS=,; echo "${steps[*]}")" > "$SETUP"

left=$((TOTAL - (SECONDS - start) - 10))
cd "$ROOT"
step bench_gpu $((left + 5)) "$PY" bench/bench_gpu.py $TINY --out "$OUT" --log "$LOG" --work "$WORK/bench" \
    --budget-s "$left" --setup-json "$SETUP"
rc=$?
if [[ ! -s "$OUT/gpu_figures.json" ]]; then       # the benchmark did not get to its own JSON
    fail "bench/bench_gpu.py exited $rc before writing its figures (see gpu_check.log)"
fi
echo "[gpu_check] done in $((SECONDS - start)) s: $OUT/gpu_figures.json, $LOG"
exit $rc
