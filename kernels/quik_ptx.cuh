// quik_ptx.cuh -- small device helpers shared by the kernels (quik_gemm.cu, quik_wgmma.cu, quik_act_quant.cu):
// shared-memory addresses, 16-byte cp.async with zero fill, its commit / wait, the streaming 16-byte loads,
// the grouped raster of the tiled GEMMs, the small-M kernels' mma.sync and unpack, and cluster helpers.
// Included textually, like quik_quant.cuh (quiktool/runtime/cuda.py, _source).
#ifndef QUIK_PTX_CUH
#define QUIK_PTX_CUH

#ifndef QDEV
#define QDEV __device__ __forceinline__
#endif

namespace {

QDEV unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

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

// Grouped raster of a 1-D grid over BM x BN output tiles: consecutive blocks walk GROUP_M M-tiles of the same
// weight rows first, so that a weight tile is still in L2 when the next block needs it. -> the tile's first
// row m0 and first column n0.
template <int BM, int BN, int GROUP_M>
QDEV void grouped_tile(int M, int N, int& m0, int& n0) {
    const int m_tiles = (M + BM - 1) / BM, n_tiles = (N + BN - 1) / BN;
    const int pid = blockIdx.x;
    const int group = pid / (GROUP_M * n_tiles);
    const int first_m = group * GROUP_M;
    const int gsize = min(m_tiles - first_m, GROUP_M);
    const int inner = pid - group * GROUP_M * n_tiles;
    m0 = (first_m + inner % gsize) * BM;
    n0 = (inner / gsize) * BN;
}

// D = A * B + D, 16x8x32, int8 inputs, int32 accumulators (the small-M kernels: quik_gemm.cu's quik_gemv_*,
// quik_gemv_split.cu).
QDEV void mma_s8(int* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The 4-bit weight unpack of the mma.sync kernels (quik_gemm.cu's header: "Why int4 is multiplied as int8")
// and the matching split of 8 activation bytes into their even and odd columns.
QDEV unsigned nib_even(unsigned x) { return (x << 4) & 0xF0F0F0F0u; }  // 16 * w[k + 2i]
QDEV unsigned nib_odd(unsigned x) { return x & 0xF0F0F0F0u; }          // 16 * w[k + 2i + 1]
QDEV unsigned bytes_even(unsigned lo, unsigned hi) { return __byte_perm(lo, hi, 0x6420); }
QDEV unsigned bytes_odd(unsigned lo, unsigned hi) { return __byte_perm(lo, hi, 0x7531); }

// Thread-block clusters (sm_90; only instantiated in code compiled for it): this CTA's rank, the cluster
// barrier (arrive with release, wait with acquire: every thread of every CTA of the cluster), and loads from
// another CTA's shared memory (the same variable, at rank `rank`).
QDEV unsigned cta_rank() { unsigned r; asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r)); return r; }
QDEV unsigned cluster_x() { unsigned r; asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(r)); return r; }
QDEV void cl_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
QDEV void cl_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
QDEV unsigned cluster_addr(const void* p, unsigned rank) {
    unsigned r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(smem_addr(p)), "r"(rank));
    return r;
}
QDEV float ld_cluster_f32(const void* p, unsigned rank) {
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(cluster_addr(p, rank)) : "memory");
    return v;
}
QDEV int ld_cluster_s32(const void* p, unsigned rank) {
    int v;
    asm volatile("ld.shared::cluster.s32 %0, [%1];" : "=r"(v) : "r"(cluster_addr(p, rank)) : "memory");
    return v;
}

}  // namespace

#endif  // QUIK_PTX_CUH
