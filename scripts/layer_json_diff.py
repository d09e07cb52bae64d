"""Two `quiktool bench layer --json` results side by side, row by row (same shape, M, scheme, outliers).

    python3 scripts/layer_json_diff.py A.json B.json [--label-a write --label-b read]

Prints, per row present in both: QUIK ms and FP16 ms of each run, their ratios B/A, and x FP16 of each run.
Used for A/Bs of the measuring method itself (e.g. --l2-flush write against read); the two runs must come
from the same machine (one device call) to be compared.
"""
import argparse
import json
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("a")
p.add_argument("b")
p.add_argument("--label-a", default="A")
p.add_argument("--label-b", default="B")
args = p.parse_args()


def rows(path):
    r = json.loads(Path(path).read_text())
    return r, {(x["shape"], x["M"], x["scheme"], x["outliers"]): x for x in r["rows"] if not x.get("error")}


ra, a = rows(args.a)
rb, b = rows(args.b)
la, lb = args.label_a, args.label_b
print(f"A = {la}: {ra['timing']['method']} ({ra['date']})")
print(f"B = {lb}: {rb['timing']['method']} ({rb['date']})")
print(f"{'shape':<11} {'M':>5}  {'scheme':<11} {'out':>3}  {'QUIK ' + la:>10} {'QUIK ' + lb:>10} {'B/A':>5}  "
      f"{'FP16 ' + la:>10} {'FP16 ' + lb:>10} {'B/A':>5}  {'x ' + la:>7} {'x ' + lb:>7}")
for key in [k for k in a if k in b]:
    x, y = a[key], b[key]
    shape, M, scheme, out = key
    print(f"{shape:<11} {M:>5}  {scheme:<11} {out:>3}  {x['quik_ms']:>10.4f} {y['quik_ms']:>10.4f} "
          f"{y['quik_ms'] / x['quik_ms']:>5.2f}  {x['fp_ms']:>10.4f} {y['fp_ms']:>10.4f} {y['fp_ms'] / x['fp_ms']:>5.2f}  "
          f"{x['speedup']:>7.2f} {y['speedup']:>7.2f}")
missing = len(set(a) ^ set(b))
if missing:
    print(f"({missing} rows in only one of the two runs: left out)")
