// quik_epilogue.cuh -- the dequantization epilogue shared by every GEMM kernel (quik_gemm.cu: the mma.sync
// kernels and the library paths' epilogue kernel; quik_wgmma.cu: the sm_90a kernel), so that all of them
// compute out[m, n] with the same operations in the same order, bit-identical to reference.quik_gemm:
//     out = acc * (a_scale[m] * w_scale[n]) + (a_zero[m] + a_shift * a_scale[m]) * wsum[n] + y_base[m, n]
// in fp32, each operation rounded to nearest (inline-PTX mul.rn / add.rn: never contracted, no .ftz),
// then rounded to the output dtype.
//
// Included textually (quiktool/runtime/cuda.py, _source, replaces `#include "name.cuh"` lines with the
// file), so NVRTC and nvcc need no include path. Uses quik_quant.cuh's add_rn / mul_rn.
#ifndef QUIK_EPILOGUE_CUH
#define QUIK_EPILOGUE_CUH

#include "quik_quant.cuh"

namespace {

using quikq::add_rn;
using quikq::mul_rn;

// ---------------------------------------------------------------------------------------------
// Epilogue: one output element / one adjacent pair. EP: 0 = int32, 1 = fp16, 2 = bf16.
// ---------------------------------------------------------------------------------------------
template <int EP> QDEV float load_f32(unsigned short h);
template <> QDEV float load_f32<1>(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
template <> QDEV float load_f32<2>(unsigned short h) { return __uint_as_float(((unsigned)h) << 16); }

template <int EP> QDEV unsigned short store_bits(float f);
template <> QDEV unsigned short store_bits<1>(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
template <> QDEV unsigned short store_bits<2>(float f) {
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

struct EpiArgs {
    const float* a_scale;  // [M]
    const float* a_zero;   // [M]
    const float* w_scale;  // [N]
    const float* wsum;     // [N]
    const void* y_base;    // [M, N] out dtype, or null
    float a_shift;
};

// The epilogue arithmetic, in the reference's order with explicit round-to-nearest intrinsics: nvcc/NVRTC
// contract a * b + c into an FMA by default (one rounding instead of two), which made outputs differ from
// the torch reference by an ulp now and then. Inline-PTX mul.rn / add.rn are never contracted.
// Plain PTX without .ftz: CuPy compiles with -ftz=true, which would flush fp32 subnormals (e.g. a bf16
// y_base of 1e-39) to zero where torch keeps them.
// (mul_rn / add_rn: quik_quant.cuh.)
QDEV float row_zero(const EpiArgs& ep, int m) {  // a_zero[m] + a_shift * a_scale[m]
    return add_rn(ep.a_zero[m], mul_rn(ep.a_shift, ep.a_scale[m]));
}
QDEV float epilogue_f32(int acc, float sa, float za, float ws, float su) {  // acc*(sa*ws) + za*su
    return add_rn(mul_rn(__int2float_rn(acc), mul_rn(sa, ws)), mul_rn(za, su));
}

// y_base at (m, n) and (m, n + 1) as raw bits (low half: n), 0 where absent (no y_base, n or n + 1 >= N).
// Loads only: a caller issues a batch of these before the batch's stores, because the compiler never
// moves a load of y_base above a store to out (they might alias), and one load-use-store per pair exposes
// a full memory latency per pair (measured in the wgmma kernel's SASS: 32 serial round trips per thread).
template <int EP>
QDEV unsigned load_y_pair(const EpiArgs& ep, int N, int m, int n) {
    const unsigned short* y = reinterpret_cast<const unsigned short*>(ep.y_base);
    if (EP == 0 || !y || n >= N) return 0u;
    const size_t base = (size_t)m * N + n;
    if ((N & 1) == 0) return *reinterpret_cast<const unsigned*>(y + base);
    return (unsigned)y[base] | (n + 1 < N ? ((unsigned)y[base + 1] << 16) : 0u);
}

// Stores acc for (m, n) and (m, n + 1), with yy = load_y_pair(ep, N, m, n) (added only when ep.y_base is
// set: adding a +0 would turn a -0 result into +0). n is even; pair stores need N even (then n < N =>
// n + 1 < N and the address is 4/8-byte aligned); otherwise each element is stored on its own. Caller
// checks m < M.
template <int EP>
QDEV void store_pair_y(void* out, const EpiArgs& ep, int N, int m, int n, int v0, int v1, float sa, float za,
                       float ws0, float ws1, float su0, float su1, unsigned yy) {
    const size_t base = (size_t)m * N + n;
    if constexpr (EP == 0) {
        int* o = reinterpret_cast<int*>(out) + base;
        if ((N & 1) == 0) {
            if (n < N) *reinterpret_cast<int2*>(o) = make_int2(v0, v1);
        } else {
            if (n < N) o[0] = v0;
            if (n + 1 < N) o[1] = v1;
        }
    } else {
        float f0 = epilogue_f32(v0, sa, za, ws0, su0);
        float f1 = epilogue_f32(v1, sa, za, ws1, su1);
        if (ep.y_base) {
            f0 = add_rn(f0, load_f32<EP>((unsigned short)(yy & 0xFFFFu)));
            f1 = add_rn(f1, load_f32<EP>((unsigned short)(yy >> 16)));
        }
        unsigned short* o = reinterpret_cast<unsigned short*>(out) + base;
        if ((N & 1) == 0) {
            if (n < N) *reinterpret_cast<unsigned*>(o) = (unsigned)store_bits<EP>(f0) | ((unsigned)store_bits<EP>(f1) << 16);
        } else {
            if (n < N) o[0] = store_bits<EP>(f0);
            if (n + 1 < N) o[1] = store_bits<EP>(f1);
        }
    }
}

// store_pair_y with its own y_base load (for callers with one pair per thread).
template <int EP>
QDEV void store_pair(void* out, const EpiArgs& ep, int N, int m, int n, int v0, int v1, float sa, float za,
                     float ws0, float ws1, float su0, float su1) {
    store_pair_y<EP>(out, ep, N, m, n, v0, v1, sa, za, ws0, ws1, su0, su1, load_y_pair<EP>(ep, N, m, n));
}

}  // namespace

#endif  // QUIK_EPILOGUE_CUH
