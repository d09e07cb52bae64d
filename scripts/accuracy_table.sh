#!/usr/bin/env bash
# The accuracy table of docs/RESULTS.md: every preset through the same harness, one model.
# usage: scripts/accuracy_table.sh MODEL TAG EVAL_SEQLEN [MAX_WINDOWS] [NSAMPLES] [CALIB_SEQLEN] [PRESETS...]
#   e.g. scripts/accuracy_table.sh ../shared/models/stories260K stories260K 512 "" 128 512
# Writes runs/TAG/*.json (quantize and eval-ppl reports) and runs/TAG/*.log; CPU, one job at a time.
set -euo pipefail
MODEL=$1; TAG=$2; SEQ=$3; MAXW=${4:-}; NS=${5:-128}; CSEQ=${6:-2048}; shift $(( $# < 6 ? $# : 6 ))
PRESETS=${*:-"rtn-w4a16 gptq-w4a16 gptq-w4a16-g128 rtn-w4a4 quik-4b w4a8 quik-8b"}
DATA=${QUIKTOOL_DATA_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
Q=${QUIKTOOL:-.venv/bin/quiktool}
OUT=runs/$TAG; mkdir -p "$OUT"
W=(); [ -n "$MAXW" ] && W=(--max-windows "$MAXW")
t() { /usr/bin/time -f "%e s wall, %M KB peak RSS" "$@"; }
[ -f "$OUT/fp.json" ] || t $Q -q eval-ppl -m "$MODEL" --seqlen "$SEQ" "${W[@]}" --data-dir "$DATA" --json "$OUT/fp.json" 2>&1 | tee "$OUT/fp.log"
[ -f "$OUT/calib.safetensors" ] || t $Q -q calibrate -m "$MODEL" --dataset c4 --nsamples "$NS" --seqlen "$CSEQ" --data-dir "$DATA" -o "$OUT/calib.safetensors" 2>&1 | tee "$OUT/calibrate.log"
for p in $PRESETS; do
  [ -f "$OUT/$p.eval.json" ] && continue
  t $Q -q quantize -m "$MODEL" --calib "$OUT/calib.safetensors" --config "$p" --data-dir "$DATA" -o "$OUT/$p" --overwrite --json "$OUT/$p.quant.json" 2>&1 | tee "$OUT/$p.quant.log"
  t $Q -q eval-ppl -m "$OUT/$p" --backend torch --seqlen "$SEQ" "${W[@]}" --data-dir "$DATA" --json "$OUT/$p.eval.json" 2>&1 | tee "$OUT/$p.eval.log"
done
.venv/bin/python scripts/results_table.py "$OUT"
