#!/usr/bin/env bash
# The whole pipeline on tiny models, on CPU, in a few minutes:
#   demo data -> stage 1 (2 CPU ranks, ZeRO-2) -> unit extraction (tiny mHuBERT + k-means)
#   -> stage 2 (2 CPU ranks, ZeRO-2) -> inference on a held-out clip
#   -> tools/evaluate.py on the stage-1 and stage-2 folders -> a short report.
# Usage: bash launch/quickstart.sh [DEMO_DIR]        (default: demo/ in the repository)
# Env:   QUICKSTART_STAGE1_STEPS / QUICKSTART_STAGE2_STEPS cap the steps (CI runs a short variant),
#        TORCH_SPEC as for tools/setup_env.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEMO="$(python3 -c 'import os,sys; print(os.path.abspath(sys.argv[1]))' "${1:-$ROOT/demo}")"
PY="$(bash tools/setup_env.sh)"
BIN="$(dirname "$PY")"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
TIMES="$DEMO/quickstart_times.jsonl"

# A free port per launch: a stale process may hold DeepSpeed's default 29500.
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
phase() {   # phase NAME CMD...: run, time, and stop with the phase's name on failure
    local name="$1"; shift
    echo >&2; echo "=== $name ===" >&2
    local t0=$SECONDS
    if ! "$@"; then echo "quickstart: phase '$name' failed (see the output above)" >&2; exit 1; fi
    echo "{\"phase\": \"$name\", \"seconds\": $(( SECONDS - t0 ))}" >>"$TIMES"
}
steps() { [[ -n "${1:-}" ]] && echo "--set optim.max_steps=$1" || true; }

rm -rf "$DEMO/runs"
mkdir -p "$DEMO" && : >"$TIMES"
phase "demo data" "$PY" tools/make_demo_data.py --out "$DEMO"
phase "stage 1" "$BIN/deepspeed" --num_gpus 2 --master_port "$(port)" launch/stage1.py \
    --config "$DEMO/stage1.json" --ds ds_configs/zero2.json $(steps "${QUICKSTART_STAGE1_STEPS:-}")
for split in train val; do
    phase "units ($split)" "$PY" tools/extract_units.py --manifest "$DEMO/$split.jsonl" \
        --hubert "$DEMO/models/hubert.pt" --kmeans "$DEMO/models/kmeans.bin" --out "$DEMO/${split}_units.jsonl"
done
phase "stage 2" "$BIN/deepspeed" --num_gpus 2 --master_port "$(port)" launch/stage2.py \
    --config "$DEMO/stage2.json" --ds ds_configs/zero2.json $(steps "${QUICKSTART_STAGE2_STEPS:-}")
first_clip() { "$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["speech_instruction_path"])' "$1"; }
phase "inference (held-out clip)" "$PY" tools/infer.py --model "$DEMO/runs/stage2/final" \
    --wav "$DEMO/$(first_clip "$DEMO/val.jsonl")" --max-new-tokens 40 --json --units-out "$DEMO/answer_units.txt" \
    >"$DEMO/answer.json"
EVAL=(--max-new-tokens 40 --threads 1 --quiet)   # tiny models: one thread beats several
phase "evaluate (stage 1)" "$PY" tools/evaluate.py --model "$DEMO/runs/stage1/final" \
    --manifest "$DEMO/train.jsonl" --out "$DEMO/eval/stage1" "${EVAL[@]}"
phase "evaluate (stage 2)" "$PY" tools/evaluate.py --model "$DEMO/runs/stage2/final" \
    --manifest "$DEMO/train_units.jsonl" --out "$DEMO/eval/stage2" --vocoder "$DEMO/models/vocoder" "${EVAL[@]}"

"$PY" launch/quickstart_report.py "$DEMO"
