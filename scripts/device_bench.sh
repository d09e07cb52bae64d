#!/usr/bin/env bash
# The speed tables on the lent H100: `quiktool bench layer` (QUIK W4A4/W4A8 vs cuBLAS FP16, FP8 W8A8
# rowwise and W4A16 tinygemm, with 0 and 256 outliers) and `quiktool bench model` (LLaMA-2-7B-shaped,
# random weights: prefill 1 x 2048, decode 64 tokens, memory; FP16 / QUIK-4B / W4A8).
#
# usage, from the repository root:   OUT=/some/dir bash scripts/device_bench.sh
#   env: PYTHON (python3), OUT (out/device-bench), MODE (full | decode: full's layers at M = 1 / 16 only |
#        prefill: full's layers at M = 2048 / 8192 only | medium: full's layers at M = 128 / 512 only |
#        quick: one shape, few M, short model run;
#        smoke: tiny CPU run that checks this script), REPS (100), MAXPT (0.25 s per measurement),
#        ROUNDS (4: bench layer's alternating rounds of FP16 and QUIK; 1 = FP16 once, first, as before),
#        STEPS (which steps, default "layers models"; full mode's two halves each fit one 600 s device call)
# Budget (full): layer sweep ~2-4 min, W8A8 sweep < 1 min, model ~1-2 min; each step has a timeout so a
# hang cannot eat the whole call. Partial layer JSON is written after every shape, so a step that
# times out still leaves its rows. Writes 7 files under $OUT; prints compact tables last.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=${OUT:-out/device-bench}
MODE=${MODE:-full}
REPS=${REPS:-100}
MAXPT=${MAXPT:-0.25}
mkdir -p "$OUT"
LOG="$OUT/bench.log"
: > "$LOG"

DEV=(--device cuda --backend cuda)
T=(--reps "$REPS" --warmup 10 --max-point-s "$MAXPT" --rounds "${ROUNDS:-4}")  # the layer steps' options
case "$MODE" in
  full)
    W4=(--schemes w4a4,w4a8 --outliers 0,256)                                   # 9 shapes x 6 M
    W8=(--schemes w8a8 --outliers 0,256 --shapes llama2-7b,llama2-70b --m 1,16,2048)
    MODEL=(--arch llama2-7b --batch 1 --seqlen 2048 --decode-tokens 64 --reps 5 --warmup 2)
    MORE_MODELS=1   # + QUIK-4B without fusion (the A/B of runtime.fuse) and LLaMA-2-13B
    LIMITS=(300 90 200) ;;
  decode)  # the full mode's layer rows at M = 1 and 16 only (the model step as in full)
    W4=(--schemes w4a4,w4a8 --outliers 0,256 --m 1,16)
    W8=(--schemes w8a8 --outliers 0,256 --shapes llama2-7b,llama2-70b --m 1,16)
    MODEL=(--arch llama2-7b --batch 1 --seqlen 2048 --decode-tokens 64 --reps 5 --warmup 2)
    LIMITS=(200 90 200) ;;
  prefill)  # the full mode's layer rows at M = 2048 and 8192 only, W8A8 at 2048, and the model step as in full
    W4=(--schemes w4a4,w4a8 --outliers 0,256 --m 2048,8192)
    W8=(--schemes w8a8 --outliers 0,256 --shapes llama2-7b,llama2-70b --m 2048)
    MODEL=(--arch llama2-7b --batch 1 --seqlen 2048 --decode-tokens 64 --reps 5 --warmup 2)
    LIMITS=(250 90 200) ;;
  medium)  # the full mode's layer rows at M = 128 and 512 only, W8A8 there too, and the model step as in full
    W4=(--schemes w4a4,w4a8 --outliers 0,256 --m 128,512)
    W8=(--schemes w8a8 --outliers 0,256 --shapes llama2-7b,llama2-70b --m 128,512)
    MODEL=(--arch llama2-7b --batch 1 --seqlen 2048 --decode-tokens 64 --reps 5 --warmup 2)
    LIMITS=(200 90 200) ;;
  quick)
    W4=(--schemes w4a4,w4a8 --outliers 0,256 --shapes 4096x4096,8192x28672 --m 1,16,2048)
    W8=(--schemes w8a8 --outliers 256 --shapes 8192x28672 --m 1,2048)
    MODEL=(--arch llama2-7b --batch 1 --seqlen 512 --decode-tokens 16 --reps 3 --warmup 1)
    LIMITS=(150 60 150) ;;
  smoke)
    DEV=(--device cpu --backend torch); T=(--reps 3 --warmup 1 --rounds "${ROUNDS:-2}")
    W4=(--schemes w4a4,w4a8 --outliers 0,8 --shapes 64x172 --m 1,3)
    W8=(--schemes w8a8 --outliers 8 --shapes 64x172 --m 1)
    MODEL=(--arch tiny --seqlen 16 --decode-tokens 3 --reps 1 --warmup 1)
    LIMITS=(120 120 120) ;;
  *) echo "MODE=$MODE: use full, decode, prefill, medium, quick or smoke" >&2; exit 2 ;;
esac

# stdout (the table) to $OUT/NAME.txt; stderr (progress, warnings) to the console and the log
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$LOG"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2> >(tee -a "$LOG" >&2)
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$LOG"
}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used \
    --format=csv 2>&1 || true
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__)" 2>&1
  "$PY" -c "import cupy; print('cupy', cupy.__version__)" 2>&1 || true
  "$PY" -c "from quiktool.runtime.backends import cuda_available; print('quiktool cuda backend available:', \
cuda_available())" 2>&1 || true
} | tee -a "$LOG"

Q=("$PY" -m quiktool --log-level info bench)
STEPS=${STEPS:-layers models}
if [[ " $STEPS " == *" layers "* ]]; then
  step layer_w4   "${LIMITS[0]}" "${Q[@]}" layer "${DEV[@]}" "${T[@]}" "${W4[@]}" --json "$OUT/layer_w4.json"
  step layer_w8a8 "${LIMITS[1]}" "${Q[@]}" layer "${DEV[@]}" "${T[@]}" "${W8[@]}" --json "$OUT/layer_w8a8.json"
fi
if [[ " $STEPS " == *" models "* ]]; then
  step model_7b   "${LIMITS[2]}" "${Q[@]}" model "${DEV[@]}" "${MODEL[@]}" --json "$OUT/model_7b.json"
  if [ "${MORE_MODELS:-0}" = 1 ]; then
    step model_7b_nofuse "${LIMITS[2]}" "${Q[@]}" model "${DEV[@]}" "${MODEL[@]}" --configs quik-4b --no-fuse \
      --json "$OUT/model_7b_nofuse.json"
    step model_13b "${LIMITS[2]}" "${Q[@]}" model "${DEV[@]}" "${MODEL[@]}" --arch llama2-13b \
      --json "$OUT/model_13b.json"
  fi
fi

# Tables last (the console keeps only the tail): compact rows, the full ones are in $OUT/*.txt and *.json.
# With MODE=full the compact W4 table shows the 256-outlier rows (QUIK's setting); the 0-outlier rows
# are in layer_w4.txt.
echo
"$PY" - "$OUT" "$MODE" <<'EOF'
import json
import sys
from pathlib import Path

from quiktool.bench import format_layer_table, format_model_table

out, mode = Path(sys.argv[1]), sys.argv[2]
for name in ("layer_w4", "layer_w8a8"):
    p = out / f"{name}.json"
    if not p.exists():
        print(f"{name}: no JSON (the step failed before its first shape; see bench.log)\n")
        continue
    r = json.loads(p.read_text())
    if mode == "full" and name == "layer_w4":
        r["rows"] = [x for x in r["rows"] if x["outliers"] == 256]
    if "errors" not in r:
        print(f"{name}: PARTIAL (the step stopped early; {len(r['rows'])} rows)")
    print(format_layer_table(r, compact=True) + "\n")
for name in ("model_7b", "model_7b_nofuse", "model_13b"):
    p = out / f"{name}.json"
    if p.exists():
        print(f"{name}:\n" + format_model_table(json.loads(p.read_text())) + "\n")
EOF
