"""Diagnostic builds of the cluster split-K (quik_gemm_skc_*, kernels/quik_gemm.cu with
docs/device/2026-11-28/session25/split_cluster.diff applied) for device A/Bs (issue 5).

Writes, from the tree's kernels, OUTDIR/<name>/ for each build (sums marked WRONG are wrong by design; they time
a part):
  nox      no exchange: each block runs the epilogue of its share on its own slice's sums (WRONG)
  noload   the exchange without the remote loads: shared stores and the cluster barriers only (WRONG)
  nofence  the first cluster barrier without release / acquire (no MEMBAR; the sums may be right by luck)
Run from the repository root:  python3 scripts/make_skc_variants.py /tmp/skcv
"""
import shutil
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/skcv")
src = Path("kernels/quik_gemm.cu").read_text()


def write(name: str, text: str) -> None:
    assert text != src, name
    d = out / name
    shutil.copytree("kernels", d, dirs_exist_ok=True)
    (d / "quik_gemm.cu").write_text(text)
    print(d)


a = src.index("        // Exchange layout, in the pipeline's stages")
b = src.index("#else\n        __trap();")
shift = ("#pragma unroll\n        for (int i = 0; i < MT; ++i)\n"
         "#pragma unroll\n            for (int j = 0; j < NT; ++j)\n"
         "#pragma unroll\n                for (int e = 0; e < 4; ++e) acc[i][j][e] >>= SHIFT;\n")
write("nox", src[:a] + shift + src[b:])
load = "v[i][j] = ld_cluster_v4(peer + (unsigned)(((i * NT + j) * THREADS + tid) * 16));"
assert src.count(load) == 1
write("noload", src.replace(load, "v[i][j] = make_int4(0, 0, 0, 0);"))
sync = "        cluster_sync();  // every block's sums are in its shared memory"
assert src.count(sync) == 1
write("nofence", src.replace(sync, "        cluster_sync_relaxed();"))
