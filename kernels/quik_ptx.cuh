// quik_ptx.cuh -- small device helpers shared by the kernels (quik_gemm.cu, quik_wgmma.cu, quik_act_quant.cu):
// shared-memory addresses, 16-byte cp.async with zero fill, its commit / wait, the streaming 16-byte loads,
// the grouped raster of the tiled GEMMs, and the address of a 4-bit weight byte (w4_off).
// Included textually, like quik_quant.cuh (quiktool/runtime/cuda.py, _source).
#ifndef QUIK_PTX_CUH
#define QUIK_PTX_CUH

#ifndef QDEV
#define QDEV __device__ __forceinline__
#endif

namespace {

QDEV unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// Thread-block clusters (sm_90; quik_act_quant.cu's cluster split mode, quik_wgmma.cu's cluster split-K): this
// CTA's rank in its cluster and the cluster's CTA count; the cluster barrier (every thread of every CTA arrives;
// release / acquire order the shared-memory writes before it with the reads after it; .aligned: the whole warp
// executes it together); the address of shared byte a of CTA `rank` in the cluster's shared window (mapa).
QDEV unsigned cta_rank() { unsigned r; asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r)); return r; }
QDEV unsigned cluster_ncta() { unsigned r; asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r)); return r; }
QDEV void cl_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
QDEV void cl_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
QDEV unsigned cluster_addr(unsigned a, unsigned rank) {
    unsigned r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
    return r;
}

// 16-byte async copy global -> shared; when !pred, the 16 bytes are zero-filled and nothing is read
// (src-size 0), src is still a valid address.
QDEV void cp_async16(unsigned dst, const void* src, bool pred) {
    const int n = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
// The same without the predicate (the activation quantizers: every copy is in bounds).
QDEV void cp_async16(unsigned dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
QDEV void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> QDEV void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Streamed, read-once data (weights): read-only path, do not pollute L1.
QDEV uint4 ldg_stream(const void* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// The same with a 256-byte L2 prefetch hint: the small-M kernel's warps read a row's 64-byte steps
// side by side (warp w: step w, w + 8, ...), so one 256-byte DRAM request serves four warps' loads.
QDEV uint4 ldg_stream_l2(const void* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// Grouped raster of a 1-D grid over BM x BN output tiles: consecutive tiles (pid, usually blockIdx.x) walk
// GROUP_M M-tiles of the same weight rows first, so that a weight tile is still in L2 when the next block needs
// it. -> the tile's first row m0 and first column n0.
template <int BM, int BN, int GROUP_M>
QDEV void grouped_tile(int M, int N, int pid, int& m0, int& n0) {  // pid: the tile's index in the raster
    const int m_tiles = (M + BM - 1) / BM, n_tiles = (N + BN - 1) / BN;
    const int group = pid / (GROUP_M * n_tiles);
    const int first_m = group * GROUP_M;
    const int gsize = min(m_tiles - first_m, GROUP_M);
    const int inner = pid - group * GROUP_M * n_tiles;
    m0 = (first_m + inner % gsize) * BM;
    n0 = (inner / gsize) * BN;
}

// Split-K (quik_gemm_sk_*, quik_wgmma_ws_sk_*): block pid of a grid of `splits` copies of the raster of BM x BN
// tiles -> pid becomes the tile's index in the raster, kt0 / KT (in: 0 / the whole K's tiles) the slice's first K
// tile and K tile count (slice s holds K tiles [KT s / splits, KT (s + 1) / splits)); returns s, whose int32
// partial sums go to plane s of [splits, M, N].
template <int BM, int BN>
QDEV int split_slice(int M, int N, int splits, int& pid, int& kt0, int& KT) {
    const int tiles = ((M + BM - 1) / BM) * ((N + BN - 1) / BN), sp = pid / tiles;
    pid -= sp * tiles;
    kt0 = (int)((long long)KT * sp / splits);
    KT = (int)((long long)KT * (sp + 1) / splits) - kt0;
    return sp;
}

// The runtime layout of 4-bit weights (quiktool.runtime.reference.tile_w4): uint8 [N, RB], RB = Kp / 2 packed
// bytes per output feature, stored by groups of 8 rows (the last group has N % 8 rows when that is not 0), each
// group step-major: for 64-byte step s of the row (the last step has 32 bytes when RB % 64 == 32), the group's
// rows one after the other. Byte b of row n (group g0 = n & ~7 of gs rows, r = n & 7) sits at
//   g0 * RB + (b / 64) * gs * 64 + r * (width of step b / 64) + b % 64.
// (w4_off below: step s = b / 64, o = b % 64; 32-bit arithmetic inside the group: the small-M kernels are
// register-bound, and a version in 64-bit and one with a second, shorter path for whole groups cost them registers.)
// Why: the small-M kernels read one 64-byte step of 8 rows per load instruction (lane (g, t): row g, bytes
// 16 t); row-major, those are 8 half lines 4 KiB or more apart, here one contiguous 512-byte block. A diagnostic
// build with these addresses took x0.88 of the layer time on 8192 x 28672 at M = 1, x0.83 at M = 16 (s12b).
QDEV size_t w4_off(int n, int s, int o, int N, int RB) {  // byte o (< 64) of step s of row n; RB < 2^16
    const int g0 = n & ~7, gs = min(8, N - g0);
    const int sh = (s << 6) + 64 <= RB ? 6 : 5;  // a whole 64-byte step, or the 32-byte last one
    return (size_t)g0 * RB + (unsigned)(s * (gs << 6) + ((n & 7) << sh) + o);  // 32-bit inside the group
}

}  // namespace

#endif  // QUIK_PTX_CUH
