"""What ptxas made of one kernel in kernels/quik_gemm.cu, without a GPU (issue 5 diagnostics).

Compiles a copy of quik_gemm.cu with nvcc for sm_90 (--resource-usage) and disassembles it with nvdisasm (both found
as the runtime and the kernel tests find them: cuda.find_nvcc / cuda.find_nvdisasm; `make install` brings nvdisasm
with the test extra), then prints one kernel's registers and spills and, for each kind of global load, how many
there are and into how many distinct registers they load: loads that reuse a few registers cannot all be in flight
at once (each reuse waits for the last load into that register to land).
    python3 scripts/sass_loads.py --src kernels --kernel quik_gemm_sk_w4_mid
Numbers come from nvcc (same front end as NVRTC, not the same driver): compare builds with each other, not with the
device's NVRTC build, and treat a register count as the compiler's choice, not a measurement of speed.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from quiktool.runtime import cuda


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="kernels", help="folder holding quik_gemm.cu and its headers")
    ap.add_argument("--kernel", required=True, help="extern \"C\" kernel name, e.g. quik_gemm_sk_w4_mid")
    ap.add_argument("--arch", default="sm_90")
    args = ap.parse_args()
    src = Path(args.src) / "quik_gemm.cu"
    if not src.is_file():
        sys.exit(f"--src {args.src!r} has no quik_gemm.cu")
    nvcc, nvdisasm = cuda.find_nvcc(), cuda.find_nvdisasm()
    if nvcc is None or nvdisasm is None:
        sys.exit("needs nvcc and nvdisasm (set QUIKTOOL_NVCC / QUIKTOOL_NVDISASM, or `make install` for the wheel)")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        r = subprocess.run([nvcc, f"-arch={args.arch}", "-cubin", "-O3", "-std=c++17", "--resource-usage",
                            "-o", str(cubin), str(src)], capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"nvcc failed:\n{r.stderr[-3000:]}")
        usage = r.stdout + r.stderr
        m = re.search(rf"Function properties for {re.escape(args.kernel)}\n(.*)\n(.*Used \d+ registers.*)", usage)
        if not m:
            sys.exit(f"no kernel {args.kernel!r} in {src}")
        print(f"{args.kernel}: {m.group(1).strip()}; {m.group(2).split(':', 1)[1].strip()}")
        sass = subprocess.run([nvdisasm, str(cubin)], capture_output=True, text=True, check=True).stdout
    # the kernel's code: from its label to the next section
    sass = sass[sass.index(f"\n.text.{args.kernel}:"):]
    end = sass.find("\n\t.section")
    sass = sass if end < 0 else sass[:end]
    dests: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for op, dst in re.findall(r"\b(LDG\.[A-Z0-9.]*)\s+(R\d+)", sass):
        dests[op][dst] += 1
    for op, regs in sorted(dests.items()):
        print(f"  {op:32s} {sum(regs.values()):4d} loads into {len(regs):3d} distinct registers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
