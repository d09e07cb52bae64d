"""Render runs/TAG/*.json (from scripts/accuracy_table.sh) as a markdown table for docs/RESULTS.md."""
import json
import re
import sys
from pathlib import Path

d = Path(sys.argv[1])


def peak(log: Path) -> str:
    m = re.search(r"([\d.]+) s wall, (\d+) KB peak RSS", log.read_text()) if log.exists() else None
    return f"{float(m.group(1)):.0f} s / {int(m.group(2)) / 1e6:.2f} GB" if m else "n/a"


fp = json.loads((d / "fp.json").read_text())
print(f"model {fp['model']}, {fp['dataset']} test, seqlen {fp['seqlen']}, {fp['windows']} of {fp['total_windows']} windows, "
      f"{fp['tokens']} tokens; {fp['machine']}; {fp['date']}; torch {fp['versions']['torch']}, "
      f"transformers {fp['versions']['transformers']}\n")
print(f"calibrate: {peak(d / 'calibrate.log')} (wall / peak RSS)\n")
print("| config | ppl | quantized layers FP16 -> packed (MB) | ratio | quantize wall / peak RSS | eval s |")
print("| --- | --- | --- | --- | --- | --- |")
print(f"| FP ({fp['dtype']}) | {fp['ppl']:.2f} | | | | {fp['seconds']:.0f} |")
for q in sorted(d.glob("*.quant.json"), key=lambda p: p.stat().st_mtime):
    name = q.name[: -len(".quant.json")]
    e = d / f"{name}.eval.json"
    if not e.exists():
        continue
    qj, ej = json.loads(q.read_text()), json.loads(e.read_text())
    print(f"| {name} | {ej['ppl']:.2f} | {qj['quantized_layers_fp16_mb']:.2f} -> {qj['quantized_layers_packed_mb']:.2f} | "
          f"{qj['ratio']:.2f}x | {peak(d / f'{name}.quant.log')} | {ej['seconds']:.0f} |")
