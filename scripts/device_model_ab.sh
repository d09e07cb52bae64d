#!/usr/bin/env bash
# End-to-end A/B of a kernel change on the lent GPU: `quiktool bench model` (LLaMA-2-7B shapes, random weights)
# with the older kernel sources in OLD_DIR (QUIKTOOL_KERNELS_DIR; the launcher is the working tree's) and with the
# working tree's, in separate processes, alternating PAIRS times (old, new, old, new, ...): one process per run,
# so read the pairs' spread before a few-% difference (same-kernel processes differed by 1-4% before).
# OLD_ENV: the "old" runs also take these settings (space-separated VAR=VALUE); alone, with the tree's kernels.
#   OUT=dir OLD_DIR=dir|OLD_ENV="VAR=VALUE ..." [PAIRS=2] [CONFIGS=quik-4b,w4a8] [SEQLEN=2048] [DECODE=64]
#     [ARCH=llama2-7b] bash scripts/device_model_ab.sh
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/device-model-ab}; mkdir -p "$OUT"
: "${OLD_DIR:=}" "${OLD_ENV:=}"
[[ -n "$OLD_DIR$OLD_ENV" ]] || { echo "set OLD_DIR (older kernel sources) or OLD_ENV (settings, e.g. QUIKTOOL_ACT_ROWS=0)"; exit 2; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
run() {  # run NAME [VAR=VALUE]
  local name=$1; shift
  env "$@" timeout 250 python3 -m quiktool -q bench model --device cuda --backend cuda --arch "${ARCH:-llama2-7b}" --batch 1 \
    --seqlen "${SEQLEN:-2048}" --decode-tokens "${DECODE:-64}" --reps 3 --warmup 1 \
    --configs "${CONFIGS:-quik-4b,w4a8}" --json "$OUT/$name.json" > "$OUT/$name.txt" 2>&1
  echo "== $name (exit $?)"; grep -v "^WARNING\|kernel source" "$OUT/$name.txt" | tail -6
}
for i in $(seq 1 "${PAIRS:-2}"); do
  run "old$i" ${OLD_DIR:+"QUIKTOOL_KERNELS_DIR=$PWD/$OLD_DIR"} $OLD_ENV
  run "new$i" "QUIKTOOL_KERNELS_DIR="
done
