#!/usr/bin/env bash
# The layer tables under both L2 flushes of `quiktool bench layer` (--l2-flush write | read), one device call:
#   OUT=/some/dir bash scripts/device_flush_ab.sh [tests] [decode] [prefill]   (default: decode prefill)
#     tests    every gpu-marked test first (pytest_gpu_all.txt)
#     decode   MODE=decode layer sweeps (M = 1 / 16), write then read
#     prefill  MODE=prefill layer sweeps (M = 2048 / 8192), read then write
# Each sweep is scripts/device_bench.sh with STEPS=layers; the side-by-side tables (scripts/layer_json_diff.py)
# are printed and written to $OUT/diff_*.txt. Everything is packed into $OUT/flush_ab.tar.gz (a device call
# returns at most 8 files), the diffs and the test log also lie beside it.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=${OUT:-out/device-flush-ab}
STAGES=${*:-decode prefill}
has() { [[ " $STAGES " == *" $1 "* ]]; }
mkdir -p "$OUT/runs"
if has tests; then
  "$PY" -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/pytest_gpu_all.txt" 2>&1
  echo "gpu tests: $(tail -1 "$OUT/pytest_gpu_all.txt")"
fi
sweep() {  # sweep MODE FLUSH
  OUT="$OUT/runs/$1_$2" MODE=$1 STEPS=layers FLUSH=$2 bash scripts/device_bench.sh > "$OUT/runs/$1_$2.console" 2>&1
  echo "$1 $2: exit $? ($(grep -c 'exit 0' "$OUT/runs/$1_$2/bench.log") of 2 steps ok)"
}
diff_tables() {  # diff_tables MODE
  for part in layer_w4 layer_w8a8; do
    "$PY" scripts/layer_json_diff.py "$OUT/runs/$1_write/$part.json" "$OUT/runs/$1_read/$part.json" \
      --label-a write --label-b read
    echo
  done > "$OUT/diff_$1.txt" 2>&1
  cat "$OUT/diff_$1.txt"
}
if has decode; then sweep decode write; sweep decode read; diff_tables decode; fi
if has prefill; then sweep prefill read; sweep prefill write; diff_tables prefill; fi
tar -C "$OUT" -czf "$OUT/flush_ab.tar.gz" runs && rm -rf "$OUT/runs"
