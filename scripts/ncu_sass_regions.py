"""Stall samples of a warp-specialized wgmma kernel split by role and phase, from the source page that
scripts/device_wgmma_ncu.sh writes (sass_<kernel>_<scheme>_<shape>_m<M>.csv: one line per SASS instruction).

    python3 scripts/ncu_sass_regions.py docs/device/.../sass_quik_wgmma_ws_f16_w8_w8a8_4096x4096_m2048.csv

Regions, by markers in the SASS (the consumers' code comes first, then the producer's):
  prologue            up to the consumers' register increase (USETMAXREG.TRY_ALLOC)
  consumer setup      up to the first mbarrier wait before the first wgmma (SYNCS.PHASECHK ... TRYWAIT)
  consumer K loop     up to the first WARPGROUP.DEPBAR.LE gsb0, 0x0 after the last wgmma (wgmma.wait_group 0)
  consumer epilogue   up to the producer's register decrease (USETMAXREG.DEALLOC): the epilogue and the tile loop
  producer            the rest
Per region: stall samples (all), their share, warp-level instructions executed, and the largest stall reasons.
"""
from __future__ import annotations

import collections
import csv
import sys


def regions(path: str) -> None:
    rows = list(csv.reader(open(path)))
    hdr, data = rows[1], rows[2:]
    src = [r[hdr.index("Source")].strip() for r in data]
    samples = [int(r[hdr.index("Warp Stall Sampling (All Samples)")] or 0) for r in data]
    executed = [int(r[hdr.index("Instructions Executed")] or 0) for r in data]
    stalls = [(j, h[len("stall_"):]) for j, h in enumerate(hdr) if h.startswith("stall_") and "Not Issued" not in h]
    first = lambda pred, start=0: next(k for k in range(start, len(src)) if pred(src[k]))  # noqa: E731
    gmma = [k for k, s in enumerate(src) if "GMMA" in s and "DEPBAR" not in s]
    cons = first(lambda s: "USETMAXREG.TRY_ALLOC" in s)
    loop = max(k for k in range(cons, gmma[0]) if "TRYWAIT" in src[k])
    done = first(lambda s: s.startswith("WARPGROUP.DEPBAR.LE gsb0, 0x0"), gmma[-1])
    prod = first(lambda s: "USETMAXREG.DEALLOC" in s)
    bounds = {"prologue": (0, cons), "consumer setup": (cons, loop), "consumer K loop": (loop, done),
              "consumer epilogue": (done, prod), "producer": (prod, len(src))}
    total = sum(samples)
    print(f"{path}: {total} stall samples")
    for name, (a, b) in bounds.items():
        s = sum(samples[a:b])
        reasons = collections.Counter()
        for k in range(a, b):
            for j, h in stalls:
                reasons[h] += int(data[k][j] or 0)
        top = ", ".join(f"{h} {v}" for h, v in reasons.most_common(4))
        print(f"  {name:18s} [{a:5d}, {b:5d}) samples {s:7d} ({100 * s / max(total, 1):4.1f}%)  "
              f"warp instructions {sum(executed[a:b]):10d}  top: {top}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        regions(p)
