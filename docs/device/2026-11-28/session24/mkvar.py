"""s24g: three diagnostic builds of kernels/quik_gemm.cu's one-kernel split-K (not for use: v1 and v3 give wrong sums).
v1: the last block adds no other slice (no fix-up loads); v2: no __threadfence; v3: no partial stores, no counter, the
last slice alone runs the epilogue. Run from the repository root; writes /tmp/v1 .. /tmp/v3."""
import shutil, sys, re
src = open("kernels/quik_gemm.cu").read()
def write(d, s):
    shutil.copytree("kernels", d, dirs_exist_ok=True); open(d + "/quik_gemm.cu", "w").write(s)
a = src.replace("        for (int s2 = 0; s2 < splits; ++s2) {\n            if (s2 == sp) continue;", "        for (int s2 = 0; s2 < 0; ++s2) {\n            if (s2 == sp) continue;")
assert a != src; write("/tmp/v1", a)
b = src.replace("        __threadfence();  // every thread's stores", "        //").replace("        __threadfence();  // the last block", "        //")
assert b.count("__threadfence") == src.count("__threadfence") - 2; write("/tmp/v2", b)
i = src.index("    if constexpr (FIXUP) {\n        // This slice's sums"); j = src.index("    constexpr int ESHIFT")
c = src[:i] + """    if constexpr (FIXUP) {
        if (sp != splits - 1) return;
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][j][e] >>= SHIFT;
    }
""" + src[j:]
write("/tmp/v3", c)
print("ok")
