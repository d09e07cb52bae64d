#!/usr/bin/env bash
# A/B of a runtime setting on the GPU machine: the same `quiktool bench layer` points with NAME=VALUE in
# the environment (A) and without it (B, the defaults), in one call, printed side by side.
#   OUT=/some/dir bash scripts/device_env_ab.sh NAME=VALUE [bench-layer options]
# e.g. QUIKTOOL_LIB_GEMM_MIN_M=0 (every GEMM on quiktool's own kernels) against the defaults.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SETTING=$1; shift
OUT=${OUT:-out/env-ab}; mkdir -p "$OUT"
ARGS=(--device cuda --backend cuda --schemes w4a4,w4a8 --outliers 0 --shapes 4096x4096,8192x28672,28672x8192
      --m 512,2048,8192 --no-peers --reps 100 --max-point-s 0.25 "$@")
env "$SETTING" timeout 250 python3 -m quiktool bench layer "${ARGS[@]}" --json "$OUT/ab_a.json" > /dev/null 2>&1
timeout 250 python3 -m quiktool bench layer "${ARGS[@]}" --json "$OUT/ab_b.json" > /dev/null 2>&1
python3 - "$OUT" "$SETTING" <<'PY'
import json, sys
out, setting = sys.argv[1], sys.argv[2]
a, b = (json.load(open(f"{out}/ab_{k}.json"))["rows"] for k in ("a", "b"))
print(f"A: {setting}   B: defaults")
print(f"{'shape':11s} {'M':>5s} {'scheme':6s} {'path':5s} {'A ms':>8s} {'B ms':>8s} {'B/A':>6s}  x FP16 A -> B")
for x, y in zip(a, b):
    print(f"{x['shape']:11s} {x['M']:5d} {x['scheme']:6s} {y.get('gemm_path') or '-':5s} {x['quik_ms']:8.4f} "
          f"{y['quik_ms']:8.4f} {y['quik_ms'] / x['quik_ms']:6.3f}  {x['speedup']:.2f} -> {y['speedup']:.2f}")
PY
