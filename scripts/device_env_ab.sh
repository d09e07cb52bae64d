#!/usr/bin/env bash
# A/B of runtime settings on the GPU machine: the same `quiktool bench layer` points run twice in one
# call, with settings A and with settings B in the environment, printed side by side (time, the integer
# GEMM path taken, the quantize stage).
#   OUT=/some/dir bash scripts/device_env_ab.sh 'NAME=VALUE ...' ['NAME=VALUE ...' | -] [bench-layer options]
# B defaults to "-": no settings, the defaults. Later bench options override the defaults below.
# e.g. QUIKTOOL_LIB_GEMM_MIN_M=0 (every GEMM on quiktool's own kernels) against the defaults.
# scripts/device_ab.sh and scripts/device_crossover.sh are presets of this script.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
A=$1; shift
B=-
if [ $# -gt 0 ] && [[ $1 != --* ]]; then B=$1; shift; fi
OUT=${OUT:-out/env-ab}; mkdir -p "$OUT"
ARGS=(--device cuda --backend cuda --schemes w4a4,w4a8 --outliers 0 --shapes 4096x4096,8192x28672,28672x8192
      --m 512,2048,8192 --no-peers --reps 100 --max-point-s 0.25 "$@")
run() {  # run SETTINGS NAME
  local settings=()
  [ "$1" != - ] && read -r -a settings <<< "$1"
  env "${settings[@]}" timeout 250 python3 -m quiktool bench layer "${ARGS[@]}" --json "$OUT/ab_$2.json" > /dev/null 2>&1
}
run "$A" a
run "$B" b
python3 - "$OUT" "$A" "$B" <<'PY'
import json, sys
out, sa, sb = sys.argv[1:]
a, b = (json.load(open(f"{out}/ab_{k}.json"))["rows"] for k in ("a", "b"))
print(f"A: {sa}   B: {'defaults' if sb == '-' else sb}")
print(f"{'shape':11s} {'M':>5s} {'scheme':6s} {'path A':6s} {'path B':6s} {'A ms':>8s} {'B ms':>8s} {'B/A':>6s} "
      f"{'quant A':>8s} {'quant B':>8s}  x FP16 A -> B  faster")
from quiktool.bench import UNSTEADY, _unsteady
unsteady = lambda r: "~" if _unsteady(r) else " "  # noqa: E731
n = 0
for x, y in zip(a, b):
    qa, qb = x["stages_ms"].get("quantize") or 0, y["stages_ms"].get("quantize") or 0
    n += (unsteady(x) + unsteady(y)).count("~")
    print(f"{x['shape']:11s} {x['M']:5d} {x['scheme']:6s} {x.get('gemm_path') or '-':6s} {y.get('gemm_path') or '-':6s} "
          f"{x['quik_ms']:8.4f}{unsteady(x)}{y['quik_ms']:8.4f}{unsteady(y)}{y['quik_ms'] / x['quik_ms']:6.3f} "
          f"{qa:8.4f} {qb:8.4f}  {x['speedup']:.2f} -> {y['speedup']:.2f}  {'A' if x['quik_ms'] < y['quik_ms'] else 'B'}")
if n:
    print(f"~: {n} time(s) whose median is above {UNSTEADY:g}x their fastest run (host stall in the timed span): "
          "rerun those points")
PY
