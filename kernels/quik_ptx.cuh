// quik_ptx.cuh -- small device helpers shared by the kernels (quik_gemm.cu, quik_wgmma.cu, quik_act_quant.cu):
// shared-memory addresses, 16-byte cp.async with zero fill, its commit / wait, the streaming 16-byte loads,
// and the grouped raster of the tiled GEMMs.
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

}  // namespace

#endif  // QUIK_PTX_CUH
