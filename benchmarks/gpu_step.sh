#!/usr/bin/env bash
# One-GPU benchmark of the full Wan2.2-TI2V-5B config (random weights), <= 8 minutes:
# measured bf16 matmul rate, restore of one 1280x704 image (5 frames, 50 steps, CFG),
# one training step at 5 frames 704x1280 with LoRA and with a full fine-tune (the remat
# that fits). Prints a table of step times, tokens/s, MFU and peak memory.
#
#   bash benchmarks/gpu_step.sh [--out=OUT.jsonl] [--tiny]
#
# --out: where the rows go (default /tmp/gpu_step.jsonl); --tiny: the tiny config at
# 64x128 on any backend (a smoke test of this script). Flags in any order.
#
# Each phase is its own process (own peak memory; an out-of-memory phase is recorded and
# the next one still runs) under a time limit that keeps the whole run under 8 minutes.
set -u
cd "$(dirname "$0")/.."
OUT=/tmp/gpu_step.jsonl
EXTRA=""
for arg in "$@"; do
  case "$arg" in
    --out=*) OUT="${arg#--out=}" ;;
    --tiny) EXTRA="--tiny" ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument '$arg' (use --out=FILE and --tiny)" >&2; exit 2 ;;
  esac
done
if [ -z "$OUT" ]; then echo "error: --out needs a file name" >&2; exit 2; fi
: > "$OUT"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
export TF_CPP_MIN_LOG_LEVEL=2
PY="${PYTHON:-python}"
START=$(date +%s)
phase() {  # phase NAME LIMIT_S ARGS...
  local name=$1 limit=$2; shift 2
  echo "--- $name (limit ${limit}s)"
  timeout "$limit" "$PY" benchmarks/gpu_step.py --out="$OUT" $EXTRA "$@" \
    || echo "{\"phase\": \"$name\", \"error\": \"exit $? (timeout ${limit}s or crash)\"}" >> "$OUT"
}
phase matmul 40 --phase=matmul
phase restore 150 --phase=restore
phase train-lora 120 --phase=train --finetune=lora
phase train-full 150 --phase=train --finetune=full
"$PY" benchmarks/gpu_step.py --phase=table --out="$OUT" $EXTRA
echo "total $(( $(date +%s) - START ))s; rows in $OUT"
