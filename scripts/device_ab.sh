#!/usr/bin/env bash
# A/B of a kernel change on the GPU machine: the same `quiktool bench layer` points with the kernels in
# OLD_DIR (QUIKTOOL_KERNELS_DIR, e.g. `git show REV:kernels/X.cu` copies, carried to the device) and
# with the working tree's kernels, in one call, printing the two timings and the stage times side by side.
#   OUT=/some/dir bash scripts/device_ab.sh OLD_DIR [extra bench-layer options]
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OLD=$1; shift
OUT=${OUT:-out/ab}; mkdir -p "$OUT"
ARGS=(--device cuda --backend cuda --schemes w4a4 --outliers 0 --shapes 4096x4096,8192x28672,28672x8192
      --m 1,16,2048 --no-peers --reps 100 --max-point-s 0.25 "$@")
QUIKTOOL_KERNELS_DIR=$OLD timeout 250 python3 -m quiktool bench layer "${ARGS[@]}" --json "$OUT/ab_old.json" > /dev/null 2>&1
timeout 250 python3 -m quiktool bench layer "${ARGS[@]}" --json "$OUT/ab_new.json" > /dev/null 2>&1
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
old, new = (json.load(open(f"{out}/ab_{k}.json"))["rows"] for k in ("old", "new"))
print(f"{'shape':11s} {'M':>5s} {'scheme':6s} {'out':>4s} {'old ms':>8s} {'new ms':>8s} {'new/old':>7s}  "
      f"{'quant old':>9s} {'quant new':>9s}  x FP16 old -> new")
for a, b in zip(old, new):
    qa, qb = a["stages_ms"].get("quantize"), b["stages_ms"].get("quantize")
    print(f"{a['shape']:11s} {a['M']:5d} {a['scheme']:6s} {a['outliers']:4d} {a['quik_ms']:8.4f} {b['quik_ms']:8.4f} "
          f"{b['quik_ms'] / a['quik_ms']:7.3f}  {qa or 0:9.4f} {qb or 0:9.4f}  {a['speedup']:.2f} -> {b['speedup']:.2f}")
PY
