#!/usr/bin/env bash
# Where the library GEMM paths (cuBLASLt FP8 / INT8) start to beat quiktool's mma.sync kernels: the same
# layers timed with the library paths forced on (every M) and off, side by side in one process each.
#   OUT=/some/dir bash scripts/device_crossover.sh      (on the GPU machine, from the repository root)
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-out/crossover}; mkdir -p "$OUT"
ARGS=(--device cuda --backend cuda --schemes w4a4,w4a8 --outliers 0 --shapes 4096x4096,8192x28672,28672x8192
      --m 64,128,256,512,2048 --no-peers --reps 50 --max-point-s 0.25 --compact)
QUIKTOOL_LIB_GEMM_MIN_M=1 QUIKTOOL_LIB_GEMM_MIN_MACS=0 timeout 200 python3 -m quiktool bench layer "${ARGS[@]}" \
  --json "$OUT/crossover_lib.json" > "$OUT/crossover_lib.txt" 2>/dev/null
QUIKTOOL_LIB_GEMM_MIN_M=0 timeout 200 python3 -m quiktool bench layer "${ARGS[@]}" \
  --json "$OUT/crossover_mma.json" > "$OUT/crossover_mma.txt" 2>/dev/null
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
lib, mma = (json.load(open(f"{out}/crossover_{k}.json"))["rows"] for k in ("lib", "mma"))
print(f"{'shape':11s} {'M':>5s} {'scheme':6s} {'library ms':>10s} {'path':5s} {'mma ms':>8s}  faster")
for a, b in zip(lib, mma):
    print(f"{a['shape']:11s} {a['M']:5d} {a['scheme']:6s} {a['quik_ms']:10.4f} {a.get('gemm_path') or '-':5s} "
          f"{b['quik_ms']:8.4f}  {'library' if a['quik_ms'] < b['quik_ms'] else 'mma'}")
PY
