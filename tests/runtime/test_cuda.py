"""CUDA kernels vs the exact torch reference, on the same GPU inputs.

(a) quantize_activations: codes, scale, zero and x_outlier bit-identical to reference.
(b) int_gemm: int32 accumulators bit-identical to reference.int_gemm.
(c) quik_gemm: output bit-identical to reference.quik_gemm in the same output dtype (the epilogue runs
    the reference's fp32 operations in the reference's order), on the GPU and, for small shapes, on
    the CPU too; and within 1e-3 relative (Frobenius) error of the reference computed in fp32.
(d) bad launcher arguments raise KernelError with a message naming the argument.

Inputs are random (never zeros) from a torch.Generator seeded per case; outputs are preallocated and
poisoned (NaN / sentinel values) before each launch so that an element a kernel fails to write cannot
pass. Every test needs a CUDA GPU and CuPy.
"""
from __future__ import annotations

import ctypes
import math
import zlib

import pytest
import torch

from quiktool.errors import KernelError
from quiktool.runtime import reference


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    try:
        import cupy  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the machine
        return f"CuPy is not importable: {e}"
    return None


_REASON = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

if _REASON is None:
    from quiktool.runtime import cuda
else:  # keep the module importable for collection on CPU machines
    cuda = None  # type: ignore[assignment]

DEV = "cuda"
MS = [1, 3, 16, 118, 2048]
# (Kq, N): Kq = quantized (non-outlier) columns, padded to Kp = 64 * ceil(Kq / 64) by the layout.
GEMM_SHAPES = [(172, 64), (64, 172), (576, 1536), (1536, 576), (4096, 4096), (1000, 300)]
# In-features K of the activation tests (the outliers are taken out of these columns).
ACT_KS = [172, 64, 576, 1536, 4096, 1000]

POISON_I32 = 0x7FFFFFFF  # never a real accumulator of these tests (|acc| <= 128 * 128 * 4096)
POISON_I8 = 0x55         # never a 4-bit code; an 8-bit one only by chance, and exactness still fails then


def _gen(*case: object) -> torch.Generator:
    """A CUDA generator seeded from the test case, so each case has its own fresh, reproducible data."""
    return torch.Generator(device=DEV).manual_seed(zlib.crc32(repr(case).encode()))


def _codes(g: torch.Generator, rows: int, cols: int, bits: int) -> torch.Tensor:
    """Random signed codes [rows, cols], full range (extremes included), never all zero."""
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    return torch.randint(lo, hi, (rows, cols), generator=g, device=DEV, dtype=torch.int8)


def _act_codes(g: torch.Generator, M: int, kq: int, bits: int) -> torch.Tensor:
    """Activation codes as the layout has them: int8 [M, Kp], pad columns 0."""
    return reference.pad_columns(_codes(g, M, kq, bits), reference.padded_k(kq))


def _first_mismatch(got: torch.Tensor, ref: torch.Tensor) -> str:
    bad = (got != ref) & ~(torch.isnan(got.float()) & torch.isnan(ref.float()))
    if not bad.any():
        return "equal"
    idx = tuple(int(i) for i in bad.nonzero()[0])
    return f"{int(bad.sum())} of {bad.numel()} differ; first at {idx}: got {got[idx].item()} want {ref[idx].item()}"


def _assert_equal(name: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape, \
        f"{name}: {got.dtype}{list(got.shape)} vs {ref.dtype}{list(ref.shape)}"
    # bit-level comparison (NaN == NaN at the same place): view floats as integers of the same width
    as_int = {2: torch.int16, 4: torch.int32}
    if got.is_floating_point():
        gi, ri = got.view(as_int[got.element_size()]), ref.view(as_int[ref.element_size()])
    else:
        gi, ri = got, ref
    assert torch.equal(gi, ri), f"{name}: {_first_mismatch(got, ref)}"


def _poisoned_act_out(M: int, kp: int, n_out: int, dtype: torch.dtype) -> reference.ActCodes:
    return reference.ActCodes(
        torch.full((M, kp), POISON_I8, dtype=torch.int8, device=DEV),
        torch.full((M,), float("nan"), device=DEV),
        torch.full((M,), float("nan"), device=DEV),
        torch.full((M, n_out), float("nan"), dtype=dtype, device=DEV),
    )


def _tie_row(K: int) -> torch.Tensor:
    """fp32 [K]: values k + 0.5 (k < 16) with min 0 and max 15, so that 4-bit quantization (scale 15 / 15 = 1)
    meets exact round-half-to-even ties."""
    ties = torch.arange(K, device=DEV, dtype=torch.float32) % 16 + 0.5
    ties[0], ties[1] = 0.0, 15.0
    return ties


def _split_columns(g: torch.Generator, K: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """keep_idx ascending, outlier_idx in random order (the kernel must not care), both int32."""
    perm = torch.randperm(K, generator=g, device=DEV)
    keep = perm[n_out:].sort().values.to(torch.int32)
    outl = perm[:n_out].to(torch.int32)
    return keep, outl


def _activations(g: torch.Generator, M: int, K: int, dtype: torch.dtype, outl: torch.Tensor) -> torch.Tensor:
    x = torch.randn(M, K, generator=g, device=DEV) * (0.5 + 2 * torch.rand(M, 1, generator=g, device=DEV))
    x[:, outl.long()] *= 40.0  # outlier channels: large, as in real activations
    return x.to(dtype)


# ---------------------------------------------------------------------------------------------------
# (a) activation quantization: bit-exact
# ---------------------------------------------------------------------------------------------------
def _check_act(x: torch.Tensor, keep: torch.Tensor, outl: torch.Tensor, bits: int) -> None:
    M = x.shape[0]
    kp = reference.padded_k(keep.numel())
    ref = reference.quantize_activations(x, keep.long(), outl.long(), bits)
    got = cuda.quantize_activations(x, keep, outl, bits, out=_poisoned_act_out(M, kp, outl.numel(), x.dtype))
    for field in reference.ActCodes._fields:
        _assert_equal(field, getattr(got, field), getattr(ref, field))


@pytest.mark.parametrize("n_out", [0, 16])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("K", ACT_KS)
@pytest.mark.parametrize("M", MS)
def test_act_quant_exact(M: int, K: int, dtype: torch.dtype, bits: int, n_out: int) -> None:
    K_in = K + n_out if K == 1000 else K  # 1000 quantized columns: a Kq that is not a multiple of 64
    g = _gen("act", M, K_in, dtype, bits, n_out)
    keep, outl = _split_columns(g, K_in, n_out)
    _check_act(_activations(g, M, K_in, dtype, outl), keep, outl, bits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_act_quant_edge_rows(dtype: torch.dtype) -> None:
    """Round-half-even ties, a constant row (scale 1), a row with a subnormal range (no flush to zero)."""
    K = 128
    rows = []
    rows.append(_tie_row(K))
    rows.append(torch.full((K,), 3.25, device=DEV))                     # constant row
    g = _gen("edge", dtype)
    if dtype == torch.bfloat16:  # bf16 has fp32's exponent range: values of ~1e-39 are fp32 subnormals
        rows.append(torch.rand(K, generator=g, device=DEV) * 1e-39 + 1e-40)
    else:  # fp16 subnormals: ~6e-8 .. 6e-5
        rows.append(torch.rand(K, generator=g, device=DEV) * 6e-5)
    rows.append(torch.randn(K, generator=g, device=DEV))
    x = torch.stack(rows).to(dtype)
    keep = torch.arange(K, dtype=torch.int32, device=DEV)
    none = keep[:0]
    for bits in (4, 8):
        _check_act(x, keep, none, bits)


@pytest.mark.parametrize("K", [5120, 11008, 28672, 100_008])
def test_act_quant_many_rows(K: int) -> None:
    """From ACT_MANY_ROWS rows on the quantizers run fewer threads per row (staged and global-memory
    kernels): same bits as the reference, with 256 outliers, both widths and dtypes."""
    M = cuda.ACT_MANY_ROWS + 3
    assert M >= 512 and cuda._act_threads(K, K, M) < cuda._act_threads(K, K, 1)  # the rule is what is tested
    g = _gen("many", K)
    keep, outl = _split_columns(g, K, 256)
    for dtype in (torch.float16, torch.bfloat16):
        x = _activations(g, M, K, dtype, outl)
        for bits in (4, 8):
            _check_act(x, keep, outl, bits)


@pytest.mark.parametrize("K", [98_000, 100_008, 99_999])
def test_act_quant_very_wide_rows(K: int) -> None:
    """98000 columns: staged in 196000 bytes of shared memory, just under the 192 KiB limit; wider rows
    take the kernel that gathers from global memory."""
    g = _gen("wide", K)
    keep, outl = _split_columns(g, K, 64)
    x = _activations(g, 3, K, torch.bfloat16, outl)
    for bits in (4, 8):
        _check_act(x, keep, outl, bits)


def test_act_quant_misaligned_input_rows() -> None:
    """x at a 2-byte offset: rows are copied element by element instead of with 16-byte async copies."""
    g = _gen("misaligned")
    M, K = 5, 4096
    keep, outl = _split_columns(g, K, 32)
    x = torch.empty(M * K + 1, dtype=torch.float16, device=DEV)[1:].view(M, K)
    x.copy_(_activations(g, M, K, torch.float16, outl))
    assert x.data_ptr() % 16
    _check_act(x, keep, outl, 4)


def test_act_quant_int64_index_is_accepted() -> None:
    g = _gen("i64")
    keep, outl = _split_columns(g, 300, 20)
    x = _activations(g, 5, 300, torch.float16, outl)
    ref = reference.quantize_activations(x, keep.long(), outl.long(), 4)
    got = cuda.quantize_activations(x, keep.long(), outl.long(), 4)
    for field in reference.ActCodes._fields:
        _assert_equal(field, getattr(got, field), getattr(ref, field))


@pytest.fixture(params=["cluster", "cta", "rows"])
def split_kernel(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """The three split quantizers: one row per cluster of 8 CTAs (sm_90 and later), one row per CTA, and
    persistent blocks with rows in registers (rows mode; inputs it does not take fall back to one per CTA)."""
    monkeypatch.setattr(cuda, "QUANT_CLUSTER", request.param == "cluster")
    monkeypatch.setattr(cuda, "QUANT_CLUSTER_MIN_K", 0)  # every width through the kernel under test
    monkeypatch.setattr(cuda, "ACT_ROWS", request.param == "rows")
    monkeypatch.setattr(cuda, "ACT_ROWS_MIN_M", 1)
    if request.param == "cluster" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("thread-block clusters need sm_90")
    return request.param


def _check_split(x: torch.Tensor, outl: torch.Tensor, bits: int) -> None:
    M, K = x.shape
    kp = reference.padded_k(K - outl.numel())
    ref = reference.quantize_split(x, outl.long(), bits)
    got = cuda.quantize_split(x, outl, bits, out=_poisoned_act_out(M, kp, outl.numel(), x.dtype))
    for field in reference.ActCodes._fields:
        _assert_equal(field, getattr(got, field), getattr(ref, field))


# (M, K, n_out): every M with the activation widths, and the LLaMA down-projection widths at a few M
SPLIT_CASES = ([(M, K, n) for M in MS for K in ACT_KS for n in (0, 16, 256) if n < K]
               + [(M, K, 256) for M in (1, 16, 2048) for K in (11008, 28672)])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("M,K,n_out", SPLIT_CASES)
def test_act_quant_split_exact(M: int, K: int, n_out: int, dtype: torch.dtype, bits: int,
                               split_kernel: str) -> None:
    """The layers' quantizer (kept columns = the complement of the outliers, from a bitmap) = the
    reference on the complement, bit for bit; outliers in random order."""
    g = _gen("split", M, K, dtype, bits, n_out)
    _, outl = _split_columns(g, K, n_out)
    _check_split(_activations(g, M, K, dtype, outl), outl, bits)


def test_act_quant_split_edge_rows_misaligned_and_wide(split_kernel: str) -> None:
    g = _gen("split-edge")
    K = 128
    x = torch.stack([_tie_row(K), torch.full((K,), 3.25, device=DEV), torch.rand(K, generator=g, device=DEV) * 6e-5,
                     torch.randn(K, generator=g, device=DEV)]).half()
    for bits in (4, 8):
        _check_split(x, torch.tensor([5, 77, 3], dtype=torch.int32, device=DEV), bits)
    # x at a 2-byte offset (no 16-byte async copies), K not a multiple of 8 or 32
    M, K = 5, 4100
    _, outl = _split_columns(g, K, 40)
    xm = torch.empty(M * K + 1, dtype=torch.float16, device=DEV)[1:].view(M, K)
    xm.copy_(_activations(g, M, K, torch.float16, outl))
    _check_split(xm, outl, 4)
    # about the widest row whose staging fits the kernel's shared memory, and a wider one: the gather
    # kernel on the complement, same bits
    for K in (60_000, 70_000):
        _, outl = _split_columns(g, K, 64)
        _check_split(_activations(g, 2, K, torch.bfloat16, outl), outl, 4)


@pytest.mark.parametrize("threads", [32, 64, 256, 512])
@pytest.mark.parametrize("M,K,n_out", [(17, 4096, 256), (118, 11008, 256), (700, 8, 0), (700, 8, 3), (3, 64, 63),
                                       (1000, 4104, 37), (2048, 28672, 256), (5, 32768, 1)])
def test_act_quant_rows_every_chunk_count(M: int, K: int, n_out: int, threads: int,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows mode with 1, 2, 4 and 8 chunks per thread and grids of fewer blocks than rows (each block loops
    over rows): same bits as the reference; K = 8 and 64 leave most threads without a column."""
    monkeypatch.setattr(cuda, "ACT_ROWS_MIN_M", 1)
    monkeypatch.setattr(cuda, "ACT_ROWS_THREADS", threads)
    plan = cuda._rows_plan(M, K, reference.padded_k(K - n_out), n_out)
    if plan is None:
        pytest.skip(f"rows mode does not take K={K} with about {threads} threads")
    g = _gen("rows", M, K, n_out, threads)
    _, outl = _split_columns(g, K, n_out)
    for dtype in (torch.float16, torch.bfloat16):
        x = _activations(g, M, K, dtype, outl)
        for bits in (4, 8):
            _check_split(x, outl, bits)


@pytest.mark.parametrize("threads", [16, 32, 64, 128])
def test_act_quant_rows_code_store_phases(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows mode's code row at every offset a chunk's codes can start at (offset % 8 = 0 .. 7 after 0 .. 7
    outliers): one outlier every 100 columns, so that runs of whole chunks follow each count, plus a chunk of 8
    outliers and one with 7; 8, 4, 2 and 1 chunks per thread. Same bits as the reference. (Written for a version
    that stored whole chunks with word stores, s31b-s31d, not kept; it holds any compaction to the same bits.)"""
    monkeypatch.setattr(cuda, "ACT_ROWS_MIN_M", 1)
    monkeypatch.setattr(cuda, "ACT_ROWS_THREADS", threads)
    K = 1024
    outl = torch.tensor([100 * i + 3 for i in range(1, 9)] + list(range(888, 896)) + list(range(945, 952)),
                        dtype=torch.int32, device=DEV)
    plan = cuda._rows_plan(7, K, reference.padded_k(K - outl.numel()), outl.numel())
    assert plan is not None and plan[0] == K // 8 // threads  # chunks of 8 columns per thread
    g = _gen("rows-phases", threads)
    for dtype in (torch.float16, torch.bfloat16):
        x = _activations(g, 7, K, dtype, outl)
        for bits in (4, 8):
            _check_split(x, outl, bits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_act_quant_rows_edge_rows(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows mode's reciprocal shortcut against the division it replaces: exact ties (k + 0.5 with scale 1),
    quotients within 2^-11 of a half-integer (some inside the 2^-12 band that takes the division), a row whose scale is subnormal (bf16: no shortcut), a row of
    +-1.5e38 (bf16: the largest scales), a constant row; with and without an outlier column. (Rows with NaN or
    inf give NaN quotients, whose int8 codes torch leaves undefined: no kernel is held to them.)"""
    monkeypatch.setattr(cuda, "ACT_ROWS_MIN_M", 1)
    K = 256
    g = _gen("rows-edge", dtype)
    ar = torch.arange(K, device=DEV, dtype=torch.float32)
    near = (ar % 15) + 0.5 + (torch.rand(K, generator=g, device=DEV) - 0.5) * 2 ** -10  # scale ~1: t near k + 0.5
    near[0], near[1] = 0.0, 15.0  # the row's range, as in _tie_row
    rows = [_tie_row(K), near, torch.full((K,), 3.25, device=DEV), torch.randn(K, generator=g, device=DEV)]
    if dtype == torch.bfloat16:  # fp32's range: a subnormal scale, and the largest finite ones
        rows.append(torch.rand(K, generator=g, device=DEV) * 1e-39 + 1e-40)
        rows.append(torch.rand(K, generator=g, device=DEV) * 3e38 - 1.5e38)
    else:
        rows.append(torch.rand(K, generator=g, device=DEV) * 6e-5)
    x = torch.stack(rows).to(dtype)
    for outl in (torch.tensor([200], dtype=torch.int32, device=DEV), torch.tensor([], dtype=torch.int32, device=DEV)):
        for bits in (4, 8):
            assert cuda._rows_plan(x.shape[0], K, reference.padded_k(K - outl.numel()), outl.numel(),
                                   x.data_ptr()) is not None
            _check_split(x, outl, bits)


def test_act_quant_rows_is_what_layers_run_above_decode_sizes() -> None:
    """quantize_layer takes rows mode from ACT_ROWS_MIN_M tokens (same bits as the gather kernel it replaced)."""
    g = _gen("rows-layer")
    K = 4096
    keep, outl = _split_columns(g, K, 256)
    M = cuda.ACT_ROWS_MIN_M + 3
    x = _activations(g, M, K, torch.float16, outl)
    assert cuda._rows_plan(M, K, reference.padded_k(K - 256), 256, x.data_ptr()) is not None
    assert cuda._rows_plan(M - 4, K, reference.padded_k(K - 256), 256, x.data_ptr()) is None
    got = cuda.quantize_layer(x, keep, outl, 4)
    ref = cuda.quantize_activations(x, keep, outl, 4)
    for field in reference.ActCodes._fields:
        _assert_equal(field, getattr(got, field), getattr(ref, field))


def test_act_quant_split_bad_outlier_index_poisons_every_row(split_kernel: str) -> None:
    g = _gen("split-oob")
    for bad in ([3, 3, 9], [3, 80, 9], [-1, 4]):
        x = _activations(g, 4, 80, torch.float16, torch.tensor([0], device=DEV))
        q = cuda.quantize_split(x, torch.tensor(bad, dtype=torch.int32, device=DEV), 4)
        assert torch.isnan(q.scale).all() and torch.isnan(q.zero).all(), bad
        assert (q.codes == 0).all(), bad


def test_act_quant_split_rejects_bad_arguments() -> None:
    x = torch.randn(4, 80, device=DEV).half()
    outl = torch.arange(8, dtype=torch.int32, device=DEV)
    cases = [
        (lambda: cuda.quantize_split(x.float(), outl, 4), r"x: dtype must be float16 or bfloat16"),
        (lambda: cuda.quantize_split(x, outl.cpu(), 4), r"outlier_idx: must be a CUDA tensor"),
        (lambda: cuda.quantize_split(x, outl, 2), r"bits must be 4 or 8, got 2"),
        (lambda: cuda.quantize_split(x, torch.arange(80, device=DEV), 4), r"80 outliers leave no column of K=80"),
        (lambda: cuda.quantize_layer(x, outl[:5], outl, 4), r"keep_idx \(5\) and outlier_idx \(8\) must split"),
    ]
    wrong = reference.ActCodes(torch.empty(4, 64, dtype=torch.int8, device=DEV), torch.empty(4, device=DEV),
                               torch.empty(4, device=DEV), torch.empty(4, 8, dtype=torch.float16, device=DEV))
    cases.append((lambda: cuda.quantize_split(x, outl, 4, out=wrong), r"out.codes: shape must be \[4, 128\]"))
    misaligned = reference.ActCodes(torch.empty(4 * 128 + 4, dtype=torch.int8, device=DEV)[4:].view(4, 128),
                                    torch.empty(4, device=DEV), torch.empty(4, device=DEV),
                                    torch.empty(4, 8, dtype=torch.float16, device=DEV))
    cases.append((lambda: cuda.quantize_split(x, outl, 4, out=misaligned), r"out.codes: data pointer must be 16-byte"))
    for fn, msg in cases:
        with pytest.raises(KernelError, match=msg):
            fn()


@pytest.mark.parametrize("has_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("n_out", [0, 100])
@pytest.mark.parametrize("M", [1, 5, 8, 9, 16, 118, 600])
def test_quik_linear_backends_identical(M: int, n_out: int, has_bias: bool) -> None:
    """The whole layer (split quantizer, outlier product, GEMM, epilogue) on both backends."""
    K, N, dtype = 1100, 304, torch.float16
    g = _gen("quik_linear", M, n_out, has_bias)
    keep, outl = _split_columns(g, K, n_out)
    x = _activations(g, M, K, dtype, outl)
    w = cuda.prepare_weight(_codes(g, N, K - n_out, 4), 4)
    _, _, w_scale, wsum = _epilogue_inputs(g, M, N)
    w_out = (torch.randn(N, n_out, generator=g, device=DEV) * 0.02).to(dtype)
    bias = (torch.randn(N, generator=g, device=DEV) * 0.1).to(dtype) if has_bias else None
    got = cuda.quik_linear(x, keep, outl, 4, w, 4, w_scale, wsum, w_out, bias)
    ref = reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out, bias)
    assert not torch.isnan(got).any()
    assert _bits_equal(got, ref), f"{int((got != ref).sum())} outputs differ between the backends"


def _layer_operands(g: torch.Generator, K: int, N: int, n_out: int, dtype: torch.dtype,
                    has_bias: bool = True, w_bits: int = 4) -> tuple[torch.Tensor | None, ...]:
    """One QUIK layer's fixed operands with w_bits weights, as PreparedLinear takes them: keep_idx, outlier_idx,
    w, w_scale, wsum, outlier_weight [N, n_out] and bias [N] (or None) in dtype."""
    keep, outl = _split_columns(g, K, n_out)
    w = cuda.prepare_weight(_codes(g, N, K - n_out, w_bits), w_bits)
    _, _, w_scale, wsum = _epilogue_inputs(g, 1, N)
    w_out = (torch.randn(N, n_out, generator=g, device=DEV) * 0.02).to(dtype)
    bias = (torch.randn(N, generator=g, device=DEV) * 0.1).to(dtype) if has_bias else None
    return keep, outl, w, w_scale, wsum, w_out, bias


def test_prepared_linear_checks_x_and_keeps_the_bits() -> None:
    """PreparedLinear (what QuikLinear calls) checks the layer operands once and x on every call; its output is
    the reference's at every size, including rows mode (M = 2048), on the same object again and again."""
    K, N, n_out, dtype = 1104, 304, 100, torch.float16   # K % 8 == 0: rows mode applies at M = 2048
    g = _gen("prepared", K, N, n_out)
    keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(g, K, N, n_out, dtype)
    layer = cuda.PreparedLinear(keep, outl, 4, w, 4, w_scale, wsum, w_out, bias, dtype)
    for M in (1, 3, 16, 118, 2048, 3):
        x = _activations(g, M, K, dtype, outl)
        ref = reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out, bias)
        assert _bits_equal(layer(x), ref), f"M={M}: the prepared layer differs from the reference"
    x = _activations(g, 4, K, dtype, outl)
    for bad, msg in ((x.float(), r"x: dtype must be float16, got float32"),
                     (x[:, :-1].contiguous(), r"x: shape must be \[\*, 1104\], got \[4, 1103\]"),
                     (torch.empty(K, 4, dtype=dtype, device=DEV).t(), r"x: must be contiguous"),
                     (x.cpu(), r"x: must be a CUDA tensor")):
        with pytest.raises(KernelError, match=msg):
            layer(bad)
    with pytest.raises(KernelError, match=r"seg=3: must be 0 or an even divisor of N=304"):
        layer.run(x, 3)
    with pytest.raises(KernelError, match=r"outlier_weight: dtype must be bfloat16"):
        cuda.PreparedLinear(keep, outl, 4, w, 4, w_scale, wsum, w_out, None, torch.bfloat16)
    with pytest.raises(KernelError, match=r"w: shape must be \[\*, 512\]"):  # Kp = 1024 for 1004 kept columns
        cuda.PreparedLinear(keep, outl, 4, w[:, :-64].contiguous(), 4, w_scale, wsum, w_out, bias, dtype)


def _late(fn):
    """fn whose result tensor holds a poison value (NaN, or bytes 0x88: int8 -120, outside every code) until ~10 ms
    of GPU work on the current stream have passed: a reader on another stream that does not wait reads poison."""
    def late(*args, **kwargs):
        out = fn(*args, **kwargs)
        if out is None:
            return None
        res = torch.empty_like(out).fill_(float("nan") if out.is_floating_point() else 0x88)
        torch.cuda._sleep(10_000_000)
        return res.copy_(out)
    return late


def _late_x(g: torch.Generator, M: int, K: int, dtype: torch.dtype, outl: torch.Tensor) -> torch.Tensor:
    """Fresh activations [M, K] written only after ~10 ms of GPU work on the caller's stream: a reader on another
    stream that does not wait for that stream reads stale (uninitialised) values."""
    x = torch.empty(M, K, dtype=dtype, device=DEV)
    x_new = _activations(g, M, K, dtype, outl)
    torch.cuda.synchronize()
    torch.cuda._sleep(10_000_000)
    return x.copy_(x_new)


@pytest.mark.parametrize("has_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("n_out", [0, 100])
@pytest.mark.parametrize("kernel", [None, "wide"], ids=["default", "w4-wide"])
def test_widening_on_the_side_stream_keeps_the_bits_and_waits(monkeypatch: pytest.MonkeyPatch, kernel: str | None,
                                                              n_out: int, has_bias: bool) -> None:
    """Widened layers widen on a side stream while the quantizer and the outlier product run (WIDEN_SIDE). The
    layer's bits are the reference's and those of the same layer without the side stream. The GEMM must wait for
    the side stream: the widened weights are poisoned here until slow work on the side stream ends, so a missing
    join fails; x is written after slow work on the caller's stream, and the outlier product (poisoned the same way
    on the caller's stream) must be in place too."""
    dev = _wgmma_or_skip(monkeypatch, kernel)
    K, N, dtype = 1104, 512, torch.float16
    g = _gen("overlap", kernel, n_out, has_bias)
    keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(g, K, N, n_out, dtype, has_bias)
    layer = cuda.PreparedLinear(keep, outl, 4, w, 4, w_scale, wsum, w_out, bias, dtype)
    monkeypatch.setattr(cuda, "_unpack_w4", _late(cuda._unpack_w4))
    monkeypatch.setattr(cuda._ref, "outlier_base", _late(cuda._ref.outlier_base))
    for M in (128, 600):  # M >= 128: the wgmma path; kernel "wide" widens from 1 token
        assert kernel is None or _planned_family(M, N, cuda.padded_k(K - n_out), 4) == "wide"
        path = cuda.gemm_path(M, N, cuda.padded_k(K - n_out), 4, 8, dev)
        assert cuda._widen_planned(M, 4, path) == (kernel == "wide")
        x = _late_x(g, M, K, dtype, outl)
        got = layer(x)
        ref = reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out, bias)
        assert _bits_equal(got, ref), f"M={M}: {int((got != ref).sum())} outputs differ from the reference"
        monkeypatch.setattr(cuda, "WIDEN_SIDE", False)
        assert _bits_equal(layer(x), got), f"M={M}: the layer without the side stream gives other bits"
        monkeypatch.setattr(cuda, "WIDEN_SIDE", True)


def test_widening_on_the_side_stream_under_cuda_graph_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    """The side stream's fork and join are captured with the rest (quantizer, widening, outlier product, GEMM):
    every replay gives the reference's bits on fresh inputs."""
    _wgmma_or_skip(monkeypatch, "wide")
    K, N, n_out, M, dtype = 1104, 512, 100, 256, torch.float16
    g = _gen("overlap-graph")
    keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(g, K, N, n_out, dtype)
    layer = cuda.PreparedLinear(keep, outl, 4, w, 4, w_scale, wsum, w_out, bias, dtype)
    x = _activations(g, M, K, dtype, outl)
    layer(x)                                         # kernels loaded outside the capture
    torch.cuda.synchronize()
    _assert_replays_match(lambda: layer(x), x, lambda: _activations(g, M, K, dtype, outl),
                          lambda: reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out,
                                                        bias), 3)


# OUTLIER_SIDE's layers: split-K plans on mma.sync (M = 64 on 8448 x 4096: 64 x 128 tiles in slices) and on wgmma
# (forced by the knobs), fp16 / bf16, with and without bias. (gemm, M, K, N, dtype, knobs)
_SIDE_SPLITS = {
    "mma-split": ("mma", 64, 8448, 4096, torch.float16, {"WGMMA_MIN_M": 1 << 20, "LIB_MIN_M": 1 << 20}),
    "mma-split-m118-bf16": ("mma", 118, 8448, 4096, torch.bfloat16, {"WGMMA_MIN_M": 1 << 20, "LIB_MIN_M": 1 << 20}),
    "wgmma-split": ("wgmma", 200, 2200, 512, torch.float16,
                    {"WGMMA_MIN_TILES": 1 << 20, "WGMMA_SPLIT_MIN_TILES": 1, "LIB_MIN_M": 1 << 20}),
}


def _side_split_layer(monkeypatch: pytest.MonkeyPatch, case: str, has_bias: bool = True):
    gemm, M, K, N, dtype, knobs = _SIDE_SPLITS[case]
    if gemm == "wgmma":
        _wgmma_or_skip(monkeypatch, "ws")
    for name, value in knobs.items():
        monkeypatch.setattr(cuda, name, value)
    n_out = 100
    g = _gen("outlier-side", case, has_bias)
    keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(g, K, N, n_out, dtype, has_bias)
    layer = cuda.PreparedLinear(keep, outl, 4, w, 4, w_scale, wsum, w_out, bias, dtype)
    kp = cuda.padded_k(K - n_out)
    path = cuda.gemm_path(M, N, kp, 4, 8, torch.cuda.current_device())
    assert path == gemm and layer._outlier_side(M, path), "OUTLIER_SIDE applies to split-K plans"
    splits = (cuda.mma_splits if gemm == "mma" else cuda.wgmma_splits)(M, N, kp, 4, torch.cuda.current_device())
    assert splits > 1, f"{case}: not a split-K plan"

    def ref(x: torch.Tensor) -> torch.Tensor:
        return reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out, bias)

    return layer, g, M, K, dtype, outl, path, ref


@pytest.mark.parametrize("has_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("case", list(_SIDE_SPLITS))
def test_outlier_product_on_the_side_stream_keeps_the_bits_and_is_waited_for(monkeypatch: pytest.MonkeyPatch,
                                                                              case: str, has_bias: bool) -> None:
    """OUTLIER_SIDE: a split-K layer's outlier product on the side stream gives the reference's bits and those of the
    layer without it, in the recorded call and in replays of its launch plan. The add kernel must wait for it: the
    outlier product's result is poisoned (NaN) on the side stream until ~10 ms of GPU work there have passed, so a
    missing join fails; x is written after slow work on the caller's stream, so that the quantizer's outlier columns
    are late too and a fork that does not wait for the quantizer reads stale values. OUTLIER_SIDE = 2: every call."""
    layer, g, M, K, dtype, outl, path, ref = _side_split_layer(monkeypatch, case, has_bias)
    monkeypatch.setattr(cuda, "OUTLIER_SIDE", 2)
    monkeypatch.setattr(cuda._ref, "outlier_base", _late(cuda._ref.outlier_base))
    main = torch.cuda.current_stream()
    streams = []
    real_linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda *a: streams.append(torch.cuda.current_stream().cuda_stream) or real_linear(*a))
    for trial in range(3):  # the recorded call, then two replays
        x = _late_x(g, M, K, dtype, outl)
        got = layer(x)
        want = ref(x)
        assert _bits_equal(got, want), f"call {trial}: {int((got != want).sum())} outputs differ from the reference"
    assert [p.steps is not None and ("join",) in p.steps for p in layer.plans.values()] == [True]
    assert len(streams) == 3 + 3 and all(s != main.cuda_stream for s in streams[::2]), \
        "the layer's outlier products did not run on the side stream"  # (every other one: the reference's)
    monkeypatch.setattr(cuda, "OUTLIER_SIDE", 0)
    assert not layer._outlier_side(M, path)
    assert _bits_equal(layer(x), got), "the layer without the side stream gives other bits"


@pytest.mark.parametrize("mode", [1, 2], ids=["default-capture-only", "every-call"])
@pytest.mark.parametrize("case", ["mma-split", "wgmma-split"])
def test_outlier_product_on_the_side_stream_under_cuda_graph_capture(monkeypatch: pytest.MonkeyPatch,
                                                                     case: str, mode: int) -> None:
    """The side stream's fork, outlier product and join are captured with the rest: every replay of the graph gives
    the reference's bits on fresh inputs. By default (OUTLIER_SIDE = 1) eager calls keep the outlier product on the
    caller's stream, their launch plan is not replayed into the graph, and the capture takes the side stream."""
    layer, g, M, K, dtype, outl, _, ref = _side_split_layer(monkeypatch, case)
    assert cuda.OUTLIER_SIDE == 1, "the default"
    monkeypatch.setattr(cuda, "OUTLIER_SIDE", mode)
    streams = []
    real_linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda *a: streams.append(torch.cuda.current_stream().cuda_stream) or real_linear(*a))
    x = _activations(g, M, K, dtype, outl)
    main = torch.cuda.current_stream().cuda_stream
    for _ in range(2):                               # the recorded call and a replay of its plan
        assert _bits_equal(layer(x), ref(x))
    layer_streams = streams[::2]                     # every other F.linear is the reference's
    assert all((s != main) == (mode == 2) for s in layer_streams), (mode, layer_streams, main)
    assert [p.eager_only for p in layer.plans.values()] == [mode == 1]
    torch.cuda.synchronize()
    streams.clear()
    _assert_replays_match(lambda: layer(x), x, lambda: _activations(g, M, K, dtype, outl), lambda: ref(x), 3)
    side = cuda._side_stream(torch.cuda.current_device()).cuda_stream
    assert streams[0] == side, "the capture did not take the side stream"  # the layer's F.linear, then ref's


@pytest.mark.parametrize("gemm", ["mma", "wgmma", "wgmma-split"])
def test_layers_quantize_in_rows_mode_below_act_rows_min_m_unless_wgmma(monkeypatch: pytest.MonkeyPatch,
                                                                          gemm: str) -> None:
    """PreparedLinear takes the rows quantizer from ACT_ROWS_MIN_M_NOWG tokens where its GEMM is not the unsplit
    wgmma kernel (mma.sync, the split-K wgmma kernel), and from ACT_ROWS_MIN_M where it is; the reference's bits.
    PreparedLinear.quantize (bench layer's quantize stage) makes the same choice and gives the reference's codes."""
    wgmma = gemm == "wgmma"
    if gemm != "mma":
        dev = _wgmma_or_skip(monkeypatch)
    if gemm == "wgmma-split":
        monkeypatch.setattr(cuda, "WGMMA_MIN_TILES", 1 << 20)
        monkeypatch.setattr(cuda, "WGMMA_SPLIT_MIN_TILES", 1)
    K, N, dtype, M = 2200, 512, torch.float16, 130
    assert M < cuda.ACT_ROWS_MIN_M
    keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(_gen("rows-min", gemm), K, N, 100, dtype)
    layer = cuda.PreparedLinear(keep, outl, 4, w, 4, w_scale, wsum, w_out, bias, dtype)
    kp = cuda.padded_k(K - 100)
    assert (cuda.gemm_path(M, N, kp, 4, 8, torch.cuda.current_device()) == "wgmma") == (gemm != "mma")
    assert gemm != "wgmma-split" or cuda.wgmma_splits(M, N, kp, 4, dev) > 1
    rows_plans = []
    real = cuda._rows_plan
    monkeypatch.setattr(cuda, "_rows_plan", lambda *args: rows_plans.append(real(*args)) or rows_plans[-1])
    x = _activations(_gen("rows-min-x", K), M, K, dtype, outl)
    got = layer(x)
    assert rows_plans and all((p is None) == wgmma for p in rows_plans), rows_plans
    ref = reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out, bias)
    assert _bits_equal(got, ref), f"{int((got != ref).sum())} outputs differ from the reference"
    rows_plans.clear()
    a = layer.quantize(x)
    assert rows_plans and all((p is None) == wgmma for p in rows_plans), rows_plans
    want = reference.quantize_layer(x, keep.long(), outl.long(), 4)
    for field in reference.ActCodes._fields:
        _assert_equal(field, getattr(a, field), getattr(want, field))
    if wgmma:  # from ACT_ROWS_MIN_M tokens the unsplit wgmma layers take the rows quantizer too
        M = cuda.ACT_ROWS_MIN_M + 44
        assert cuda.gemm_path(M, N, kp, 4, 8, dev) == "wgmma" and cuda.wgmma_splits(M, N, kp, 4, dev) == 1
        rows_plans.clear()
        x = _activations(_gen("rows-min-x2", K), M, K, dtype, outl)
        got = layer(x)
        assert rows_plans and all(p is not None for p in rows_plans), rows_plans
        ref = reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out, bias)
        assert _bits_equal(got, ref), f"{int((got != ref).sum())} outputs differ from the reference"


@pytest.mark.parametrize("M,K,N,split", [(130, 1104, 512, False), (64, 8448, 4096, True), (300, 1104, 37000, False),
                                         (200, 2200, 512, True), (300, 2200, 1000, False), (1030, 1104, 512, False)],
                         ids=["mid", "split-k", "big", "wgmma-split-k", "wgmma-unsplit", "wgmma-widened"])
def test_tiled_gemm_as_a_programmatic_dependent_launch(monkeypatch: pytest.MonkeyPatch, M: int, K: int, N: int,
                                                       split: bool, request: pytest.FixtureRequest) -> None:
    """The split-K kernels (mma.sync, wgmma) and the unsplit warp-specialized wgmma kernels start as programmatic
    dependent launches of what precedes them (PDL_TILED, PDL_WGMMA_SPLIT, PDL_WGMMA_UNSPLIT) and wait before reading
    the quantizer's output; the unsplit tiled mma.sync kernels (mid, big) launch plainly, and so does the wgmma
    kernel after a widening pass (4-bit weights from WGMMA_W4_WIDE_MIN_M tokens). A layer call right after the
    quantizer, with and without the outlier product in between, has the reference's bits."""
    case = request.node.callspec.id
    wgmma = "wgmma" in case
    if wgmma:
        _wgmma_or_skip(monkeypatch)
        if split:
            monkeypatch.setattr(cuda, "WGMMA_MIN_TILES", 1 << 20)       # every shape below the unsplit rule
            monkeypatch.setattr(cuda, "WGMMA_SPLIT_MIN_TILES", 1)
        monkeypatch.setattr(cuda, "WGMMA_W4_WIDE_MIN_M", 1024)
    else:
        monkeypatch.setattr(cuda, "WGMMA_MIN_M", 0)
    monkeypatch.setattr(cuda, "LIB_MIN_M", 0)
    monkeypatch.setattr(cuda, "PDL_TILED", True)
    monkeypatch.setattr(cuda, "PDL_WGMMA_SPLIT", True)
    monkeypatch.setattr(cuda, "PDL_WGMMA_UNSPLIT", True)
    expect_pdl = split or case == "wgmma-unsplit"
    launches = []
    real = cuda._launch_fn  # the driver call: a launch plan's replays (trials 1, 2) go through it too
    monkeypatch.setattr(cuda, "_launch_fn", lambda index, fn, name, grid, block, smem, stream, params, ex:
                        launches.append((name, ex is not None)) or real(index, fn, name, grid, block, smem, stream,
                                                                        params, ex))
    pdl_on = torch.cuda.get_device_capability() >= (9, 0)  # programmatic dependent launch needs sm_90
    dtype = torch.float16
    for n_out in (0, 100):
        keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(_gen("pdl-tiled", M, N, n_out), K, N, n_out, dtype)
        layer = cuda.PreparedLinear(keep, outl, 4, w, 4, w_scale, wsum, w_out, None, dtype)
        dev = torch.cuda.current_device()
        splits = cuda.wgmma_splits if wgmma else cuda.mma_splits
        assert (splits(M, N, layer.kp, 4, dev) > 1) == split
        assert (cuda.gemm_path(M, N, layer.kp, 4, 8, dev) == "wgmma") == wgmma
        for trial in range(3):
            launches.clear()
            x = _activations(_gen("pdl-tiled-x", M, N, n_out, trial), M, K, dtype, outl)
            got = layer(x)
            ref = reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out, None)
            assert _bits_equal(got, ref), f"n_out={n_out} trial {trial}: {int((got != ref).sum())} outputs differ"
            gemm = [pdl for name, pdl in launches if name.startswith(("quik_gemm_", "quik_wgmma_"))]
            assert gemm == [expect_pdl and pdl_on], launches
            assert (case != "wgmma-widened") or any(name.startswith("quik_unpack") for name, _ in launches), launches
            assert all(not pdl for name, pdl in launches if name.startswith("quik_splitk_")), launches


# Launch plans (cuda._LaunchPlan): the paths a layer takes by token count, each recorded on the first call and
# replayed after: (M, K, N, bits (W and A), n_out, dtype, wgmma kernel for _wgmma_or_skip or None, knobs, a kernel
# the call must launch). mma.sync decode (gemv, gemvo), the rows quantizer and tiled kernels, split-K (mma.sync,
# wgmma), the unsplit wgmma kernel, bf16, 8-bit weights.
_NO_WG = {"WGMMA_MIN_M": 1 << 20, "LIB_MIN_M": 1 << 20}
PLAN_CASES = {
    "gemvo-m1": (1, 1104, 304, 4, 100, torch.float16, None, {}, "quik_gemvo_f16_w4"),
    "gemv-m3-w8-bf16": (3, 1104, 304, 8, 0, torch.bfloat16, None, {}, "quik_gemv_bf16_w8"),
    "gemvo-m16-bf16": (16, 1104, 304, 4, 100, torch.bfloat16, None, {}, "quik_gemvo_bf16_w4_m16"),
    "rows-tiled-m17-n172": (17, 1104, 172, 4, 100, torch.float16, None, _NO_WG, "quik_act_quant_rows_f16"),
    "tiled-m118-w8": (118, 1104, 304, 8, 100, torch.float16, None, _NO_WG, "quik_gemm_f16_w8_mid"),
    "split-k": (64, 8448, 4096, 4, 100, torch.float16, None, _NO_WG, "quik_gemm_sk_w4_mid"),
    "wgmma-split-k": (200, 2200, 512, 4, 100, torch.float16, "ws",
                      {"WGMMA_MIN_TILES": 1 << 20, "WGMMA_SPLIT_MIN_TILES": 1, "LIB_MIN_M": 1 << 20},
                      "quik_wgmma_ws_cl_f16_w4"),
    "wgmma-split-k-planes": (200, 2200, 512, 4, 100, torch.float16, "ws",
                             {"WGMMA_MIN_TILES": 1 << 20, "WGMMA_SPLIT_MIN_TILES": 1, "LIB_MIN_M": 1 << 20,
                              "WGMMA_CLUSTER_SPLIT": False}, "quik_wgmma_ws_sk_w4"),
    "wgmma-w4": (300, 1104, 512, 4, 0, torch.float16, "ws", {"LIB_MIN_M": 1 << 20}, "quik_wgmma_ws_f16_w4"),
    "wgmma-w8-bf16": (300, 1104, 512, 8, 100, torch.bfloat16, "ws", {"LIB_MIN_M": 1 << 20}, "quik_wgmma_ws_bf16_w8"),
    "wgmma-widened-side": (300, 1104, 512, 4, 100, torch.float16, "wide", {"LIB_MIN_M": 1 << 20},
                           "quik_unpack_w4_lut"),
    "wgmma-widened-main": (300, 1104, 512, 4, 100, torch.float16, "wide", {"LIB_MIN_M": 1 << 20, "WIDEN_SIDE": False},
                           "quik_unpack_w4_lut"),
    "split-k-outlier-side": (64, 8448, 4096, 4, 100, torch.float16, None, {**_NO_WG, "OUTLIER_SIDE": 2},
                             "quik_gemm_sk_w4_mid"),
}


@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_prepared_linear_replays_its_launch_plan_with_the_bits(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """The first call of a token count records its launches, later calls replay them: every call has the
    reference's bits on fresh inputs, outputs of earlier calls stay as they were (no replay writes into a stale
    buffer), and the replayed launches are the recorded ones (kernel, geometry, PDL), as a call without plans
    (LAUNCH_PLANS off) makes them."""
    M, K, N, bits, n_out, dtype, wg, knobs, kernel = PLAN_CASES[case]
    if wg is not None:
        _wgmma_or_skip(monkeypatch, wg)
    for name, value in knobs.items():
        monkeypatch.setattr(cuda, name, value)
    g = _gen("plans", case)
    keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(g, K, N, n_out, dtype, w_bits=bits)
    layer = cuda.PreparedLinear(keep, outl, bits, w, bits, w_scale, wsum, w_out, bias, dtype)
    launches = []
    real = cuda._launch_fn

    def logged(index, fn, name, grid, block, smem, stream, params, ex):
        launches.append((fn, name, grid, block, smem, ex is not None))
        return real(index, fn, name, grid, block, smem, stream, params, ex)

    monkeypatch.setattr(cuda, "_launch_fn", logged)
    kept = []
    for trial in range(4):
        launches.clear()
        x = _activations(g, M, K, dtype, outl)
        got = layer(x)
        ref = reference.quik_linear(x, keep.long(), outl.long(), bits, w, bits, w_scale, wsum, w_out, bias)
        assert _bits_equal(got, ref), f"trial {trial}: {int((got != ref).sum())} outputs differ from the reference"
        if trial == 0:
            recorded = list(launches)
            assert any(name.startswith(kernel) for _, name, *_ in recorded), recorded
            assert [p.steps is not None for p in layer.plans.values()] == [True], "this path should be replayable"
        else:
            assert launches == recorded, f"trial {trial} (a replay) launched {launches}, the recorded call {recorded}"
        kept.append((got, got.clone()))
    for i, (got, copy) in enumerate(kept):
        assert _bits_equal(got, copy), f"the output of call {i} changed after later calls"
    monkeypatch.setattr(cuda, "LAUNCH_PLANS", False)
    launches.clear()
    layer(_activations(g, M, K, dtype, outl))
    assert launches == recorded, "the plan's launches differ from a call through the launchers"


def test_a_replayed_widening_waits_for_the_side_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a replay the GEMM waits for the widening on the side stream (the plan's join): each replay's widened
    weights are poisoned on the side stream after ~10 ms of GPU work there, then written, so a GEMM that did not
    wait reads poison (int8 -120) and misses the reference's bits."""
    import cupy

    _wgmma_or_skip(monkeypatch, "wide")
    monkeypatch.setattr(cuda, "LIB_MIN_M", 1 << 20)
    K, N, n_out, M, dtype = 1104, 512, 100, 300, torch.float16
    g = _gen("plans-widen-join")
    keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(g, K, N, n_out, dtype)
    layer = cuda.PreparedLinear(keep, outl, 4, w, 4, w_scale, wsum, w_out, bias, dtype)
    layer(_activations(g, M, K, dtype, outl))  # records the plan
    assert [p.steps is not None and ("fork",) in p.steps for p in layer.plans.values()] == [True]
    real, widened = cuda._launch_fn, []

    def late_widening(index, fn, name, grid, block, smem, stream, params, ex):
        if name == "quik_unpack_w4_lut":  # args W, Wb, lut, N, Kp / 2 (_SIG_UNPACK)
            dst = ctypes.c_uint64.from_address(ctypes.c_void_p.from_address(params + 8).value).value
            rows = ctypes.c_int32.from_address(ctypes.c_void_p.from_address(params + 24).value).value
            half = ctypes.c_int32.from_address(ctypes.c_void_p.from_address(params + 32).value).value
            with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
                torch.cuda._sleep(20_000_000)
            cupy.cuda.runtime.memsetAsync(dst, 0x88, rows * 2 * half, stream)
            widened.append(stream)
        return real(index, fn, name, grid, block, smem, stream, params, ex)

    monkeypatch.setattr(cuda, "_launch_fn", late_widening)
    main = torch.cuda.current_stream().cuda_stream
    for trial in range(3):
        x = _activations(g, M, K, dtype, outl)
        got = layer(x)
        ref = reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out, bias)
        assert _bits_equal(got, ref), f"replay {trial}: {int((got != ref).sum())} outputs differ"
    assert len(widened) == 3 and all(s != main for s in widened), "the widening did not run on the side stream"


def test_launch_plans_are_recorded_again_when_a_knob_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replayed plan follows the settings it was recorded under: after GEMM_SPLIT_K changes, the next call runs the
    launchers again (split-K -> unsplit here) and still has the reference's bits."""
    monkeypatch.setattr(cuda, "WGMMA_MIN_M", 1 << 20)
    monkeypatch.setattr(cuda, "LIB_MIN_M", 1 << 20)
    M, K, N, dtype = 64, 8448, 4096, torch.float16
    g = _gen("plans-knob")
    keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(g, K, N, 100, dtype)
    layer = cuda.PreparedLinear(keep, outl, 4, w, 4, w_scale, wsum, w_out, bias, dtype)
    names = []
    real = cuda._launch_fn
    monkeypatch.setattr(cuda, "_launch_fn", lambda index, fn, name, *rest: names.append(name) or real(index, fn, name,
                                                                                                      *rest))
    for split_k, trials in ((None, 2), (1, 2)):
        monkeypatch.setattr(cuda, "GEMM_SPLIT_K", split_k)
        for _ in range(trials):
            names.clear()
            x = _activations(g, M, K, dtype, outl)
            ref = reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out, bias)
            assert _bits_equal(layer(x), ref)
            assert any(n.startswith("quik_splitk_") for n in names) == (split_k is None), names


def test_calls_with_torch_work_between_launches_are_not_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls whose GEMM is a library one (cuBLASLt INT8 here) record no replayable plan: each call runs the launchers
    again, with the reference's bits."""
    monkeypatch.setattr(cuda, "WGMMA_MIN_M", 1 << 20)
    monkeypatch.setattr(cuda, "LIB_MIN_M", 1)  # library paths from 17 tokens (0 would mean never)
    monkeypatch.setattr(cuda, "LIB_MIN_MACS", 0)
    M, K, N, dtype = 96, 1104, 512, torch.float16
    g = _gen("plans-library")
    keep, outl, w, w_scale, wsum, w_out, _ = _layer_operands(g, K, N, 100, dtype, has_bias=False, w_bits=8)
    layer = cuda.PreparedLinear(keep, outl, 8, w, 8, w_scale, wsum, w_out, None, dtype)
    assert cuda.gemm_path(M, N, layer.kp, 8, layer.a_shift, torch.cuda.current_device()) == "int8"
    for _ in range(3):
        x = _activations(g, M, K, dtype, outl)
        ref = reference.quik_linear(x, keep.long(), outl.long(), 8, w, 8, w_scale, wsum, w_out, None)
        assert _bits_equal(layer(x), ref)
    assert [p.steps for p in layer.plans.values()] == [None]


def test_a_replayed_plan_under_cuda_graph_capture() -> None:
    """A layer whose plan exists is captured into a CUDA graph (the replay runs inside the capture); the graph's
    replays on new values of the captured input have the reference's bits."""
    K, N, n_out, M, dtype = 1104, 304, 100, 37, torch.float16
    g = _gen("plans-graph")
    keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(g, K, N, n_out, dtype)
    layer = cuda.PreparedLinear(keep, outl, 4, w, 4, w_scale, wsum, w_out, bias, dtype)
    x = _activations(g, M, K, dtype, outl)
    layer(x)  # records the plan
    torch.cuda.synchronize()
    assert [p.steps is not None for p in layer.plans.values()] == [True]
    fresh = lambda: _activations(g, M, K, dtype, outl)  # noqa: E731
    ref = lambda: reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out, bias)  # noqa: E731
    _assert_replays_match(lambda: layer(x), x, fresh, ref, trials=3)


def test_prepared_linear_with_the_outlier_product_outside_the_decode_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """QUIKTOOL_FUSED_OUTLIER_MAX_M below 16 (A/B runs): decode-sized calls with outliers take F.linear for the outlier
    product and the small-M kernel after the quantizer; the reference's bits under the same setting."""
    monkeypatch.setattr(reference, "FUSED_OUTLIER_MAX_M", 0)
    K, N, dtype = 1104, 512, torch.float16
    keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(_gen("unfused-decode"), K, N, 100, dtype)
    layer = cuda.PreparedLinear(keep, outl, 4, w, 4, w_scale, wsum, w_out, bias, dtype)
    for M in (1, 5, 16):
        x = _activations(_gen("unfused-decode-x", M), M, K, dtype, outl)
        ref = reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out, bias)
        assert _bits_equal(layer(x), ref), f"M={M}"


def test_quik_linear_module_rebuilds_its_prepared_layer() -> None:
    """QuikLinear keeps one PreparedLinear and builds a new one when a buffer was replaced, so the kernels
    never read a tensor the module no longer holds."""
    from quiktool.algo.gptq import gptq_quantize
    from quiktool.format.layout import PackedLinear
    from quiktool.runtime.quik_linear import QuikLinear

    g = torch.Generator().manual_seed(7)
    K, N = 640, 192
    W = torch.randn(N, K, generator=g)
    idx = torch.randperm(K, generator=g)[:32].sort().values
    packed = PackedLinear.from_quantized(gptq_quantize(W, None, 4, idx, -1), torch.randn(N, generator=g), 4)
    lin = QuikLinear(packed, dtype=torch.float16, device=DEV, backend="cuda")
    x = torch.randn(3, 5, K, generator=g).to(DEV, torch.float16)
    y = lin(x)
    first = lin._prepared
    assert first is not None and lin(x) is not None and lin._prepared is first
    lin.w_rt = lin.w_rt.clone()                      # a replaced buffer: the old pointer must not be used
    assert _bits_equal(lin(x), y) and lin._prepared is not first and lin._prepared.w is lin.w_rt
    lin.backend = "torch"
    assert _bits_equal(lin(x), y)                    # the reference on the same buffers: the same bits


@pytest.mark.parametrize("bits,kernel", [(4, "wg"), (4, "ws"), (4, "rs"), (4, "wide"), (8, "ws"), (8, "wg"),
                                         (8, "c3")],
                         ids=["w4", "w4-ws", "w4-rs", "w4-wide", "w8-ws", "w8", "w8-c3"])
def test_fused_members_get_contiguous_blocks_on_the_wgmma_path(monkeypatch: pytest.MonkeyPatch, bits: int,
                                                               kernel: str) -> None:
    """runtime.fuse with members of one width: the wgmma kernel writes one [M, width] block per member
    (quik_wgmma.cu, seg), so each member's output is contiguous, with the same bits as the column slices of
    the [M, N] output and as the torch backend's fused layer (4- and 8-bit weights: W4A4, W8A8)."""
    from quiktool.algo.gptq import gptq_quantize
    from quiktool.format.layout import PackedLinear
    from quiktool.runtime import fuse
    from quiktool.runtime.quik_linear import QuikLinear

    _wgmma_or_skip(monkeypatch, kernel)
    g = torch.Generator().manual_seed(11)
    K, N = 640, 512                                  # the kernel's blocks: multiples of its 256-column tile
    idx = torch.randperm(K, generator=g)[:32].sort().values
    members = [QuikLinear(PackedLinear.from_quantized(gptq_quantize(torch.randn(N, K, generator=g), None, bits, idx, -1),
                                                      torch.randn(N, generator=g), bits),
                          dtype=torch.float16, device=DEV, backend="cuda") for _ in range(3)]
    fused = fuse.FusedQuikLinear(members)
    assert fused.block == N
    x = torch.randn(2, 150, K, generator=g).to(DEV, torch.float16)            # M = 300: the wgmma path
    with torch.no_grad():
        blocks = fused._compute(x)
        monkeypatch.setattr(fuse, "BLOCKS", False)
        cols = fused._compute(x)
        fused.core.backend = "torch"
        ref = fused._compute(x)
    for i, (b, c, r) in enumerate(zip(blocks, cols, ref)):
        assert b.is_contiguous() and not c.is_contiguous() and b.shape == c.shape == (2, 150, N)
        assert _bits_equal(b, c) and _bits_equal(b, r), f"member {i}: the blocked output differs"
    fused.core.backend = "cuda"
    with torch.no_grad():                            # 384: an even divisor of N but no tile multiple
        y, blocked = fused.core.forward_blocks(x, 384)
    assert not blocked and _bits_equal(y, torch.cat(ref, -1))


# ---------------------------------------------------------------------------------------------------
# (b) integer GEMM: bit-exact
# ---------------------------------------------------------------------------------------------------
def _check_int(a: torch.Tensor, w: torch.Tensor, w_bits: int) -> None:
    M, N = a.shape[0], w.shape[0]
    out = torch.full((M, N), POISON_I32, dtype=torch.int32, device=DEV)
    got = cuda.int_gemm(a, w, w_bits, out=out)
    _assert_equal("acc", got, reference.int_gemm(a, w, w_bits))


@pytest.mark.parametrize("a_bits", [4, 8])
@pytest.mark.parametrize("w_bits", [4, 8])
@pytest.mark.parametrize("kq,N", GEMM_SHAPES)
@pytest.mark.parametrize("M", MS)
def test_int_gemm_exact(M: int, kq: int, N: int, w_bits: int, a_bits: int) -> None:
    g = _gen("int", M, kq, N, w_bits, a_bits)
    a = _act_codes(g, M, kq, a_bits)
    w = cuda.prepare_weight(_codes(g, N, kq, w_bits), w_bits)
    _check_int(a, w, w_bits)


def _force_gemv(monkeypatch: pytest.MonkeyPatch, cfg: str, default_rows: int | None = None) -> None:
    """Route the launcher's small-M plan to variant ``cfg``: gemv / gemvln (the fragment / whole-line 16-token
    kernels; ``default_rows``: None = the launcher's rule), gemv16 / gemv32 / gemv64 and gemvln16 / ... (rows
    per block). The whole-line variant exists for M > 8 only; below, gemvln* run the fragment kernels."""
    lines = cfg.startswith("gemvln")
    rows = int(cfg[6 if lines else 4:] or 0) or default_rows
    monkeypatch.setattr(cuda, "_plan", lambda M, N, wb, ep, dev: cuda._gemv_plan(M, N, wb, ep, rows, lines=lines))


GEMV_CFGS = ["gemv", "gemv16", "gemv64", "gemvln", "gemvln16", "gemvln64"]
# the tiled kernels: big / mid tiles unsplit, skN the mid tiles split into N slices of K (at most one per K tile)
TILED_CFGS = ["big", "mid", "sk2", "sk3", "sk8"]


def _force_tiled(monkeypatch: pytest.MonkeyPatch, cfg: str) -> None:
    """Route the launcher's plan to the tiled kernel variant ``cfg`` (TILED_CFGS) at every M."""
    tiles = "mid" if cfg.startswith("sk") else cfg
    monkeypatch.setattr(cuda, "GEMM_SPLIT_K", int(cfg[2:]) if cfg.startswith("sk") else 1)
    monkeypatch.setattr(cuda, "_plan", lambda M, N, wb, ep, dev: cuda._tiled_plan(tiles, M, N, wb, ep))


@pytest.mark.parametrize("cfg", [*TILED_CFGS, *GEMV_CFGS])
@pytest.mark.parametrize("w_bits", [4, 8])
def test_int_gemm_every_kernel_on_ragged_shapes(monkeypatch: pytest.MonkeyPatch, cfg: str, w_bits: int) -> None:
    """Force each kernel variant (the launcher's choice depends on M, N and the SM count) onto tails;
    "gemv" is the small-M kernel with the launcher's rows per block, gemv16 / gemv64 force those, gemvln*
    the same with whole-line weight loads at M > 8 (kq = 64: one step for 8-bit weights, half a step for
    4-bit ones; test_gemv_long_rows_exact has odd step counts); skN splits K (kq = 200: 4 K tiles, so sk3 gives
    slices of 1, 1 and 2 tiles and sk8 four of 1; kq = 1000: 16 tiles)."""
    for M in ([1, 5, 8, 9, 16] if cfg.startswith("gemv") else [1, 17, 130, 300]):
        if cfg.startswith("gemv"):
            _force_gemv(monkeypatch, cfg)
        else:
            _force_tiled(monkeypatch, cfg)
        for N in (1, 11, 172, 520):
            for kq in (64, 200, 1000):
                g = _gen("ragged", cfg, w_bits, M, N, kq)
                _check_int(_act_codes(g, M, kq, 8), cuda.prepare_weight(_codes(g, N, kq, w_bits), w_bits), w_bits)


@pytest.mark.parametrize("cfg", ["gemv32", "gemv16", "gemv64", "gemvln32", "gemvln16", "gemvln64"])
@pytest.mark.parametrize("w_bits", [4, 8])
def test_gemv_long_rows_exact(monkeypatch: pytest.MonkeyPatch, w_bits: int, cfg: str) -> None:
    """Weight rows of 6144 bytes or more take the small-M kernel's loads with the L2 prefetch hint; random
    codes, a half last step (Kp % 128 == 64), N = 172, every row count per block, fragment and whole-line
    loads (the latter at M = 9 and 16)."""
    _force_gemv(monkeypatch, cfg)
    kq = 13100 if w_bits == 4 else 6150                     # Kp 13120 (6560 bytes) / 6208
    for M in (1, 3, 9, 16):
        g = _gen("long-rows", w_bits, cfg, M)
        _check_int(_act_codes(g, M, kq, 8), cuda.prepare_weight(_codes(g, 172, kq, w_bits), w_bits), w_bits)


@pytest.mark.parametrize("lines", [0, 2])
@pytest.mark.parametrize("w_bits", [4, 8])
def test_int_gemm_extreme_codes(monkeypatch: pytest.MonkeyPatch, w_bits: int, lines: int) -> None:
    """All codes at their most negative value: the largest accumulators (16 * acc in the w4 path); M = 12 with
    and without the whole-line 16-token kernel."""
    monkeypatch.setattr(cuda, "GEMV_LINES", lines)
    for M in (3, 12, 200):
        kp = 8192
        a = torch.full((M, kp), -128, dtype=torch.int8, device=DEV)
        w = cuda.prepare_weight(torch.full((300, kp), -(1 << (w_bits - 1)), dtype=torch.int8, device=DEV), w_bits)
        out = torch.full((M, 300), POISON_I32, dtype=torch.int32, device=DEV)
        got = cuda.int_gemm(a, w, w_bits, out=out)
        assert int(got.min()) == int(got.max()) == 128 * (1 << (w_bits - 1)) * kp


# ---------------------------------------------------------------------------------------------------
# (c) fused epilogue: bit-identical to the reference in the output dtype
# ---------------------------------------------------------------------------------------------------
def _epilogue_inputs(g: torch.Generator, M: int, N: int) -> tuple[torch.Tensor, ...]:
    a_scale = torch.rand(M, generator=g, device=DEV) * 0.05 + 0.005
    a_zero = torch.randn(M, generator=g, device=DEV)
    w_scale = torch.rand(N, generator=g, device=DEV) * 0.02 + 0.002
    wsum = torch.randn(N, generator=g, device=DEV) * 4
    return a_scale, a_zero, w_scale, wsum


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def _bits_equal(got: torch.Tensor, ref: torch.Tensor) -> bool:
    return got.dtype == ref.dtype and torch.equal(got.view(torch.int16), ref.view(torch.int16))


def _assert_replays_match(run, inp: torch.Tensor, fresh, ref, trials: int) -> None:
    """Capture run() into a CUDA graph, then per trial: fresh() values into inp, replay, and the captured output
    must have ref()'s bits (the replay reads inp's memory, so it sees the new values)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    for trial in range(trials):
        inp.copy_(fresh())
        graph.replay()
        torch.cuda.synchronize()
        want = ref()
        assert _bits_equal(out, want), f"replay {trial}: {int((out != want).sum())} outputs differ"


def _check_fused(a, w, w_bits, a_scale, a_zero, a_shift, w_scale, wsum, y_base, dtype) -> None:
    M, N = a.shape[0], w.shape[0]
    out = torch.full((M, N), float("nan"), dtype=dtype, device=DEV)
    got = cuda.quik_gemm(a, w, w_bits, a_scale, a_zero, a_shift, w_scale, wsum, y_base, dtype, out=out)
    assert not torch.isnan(got).any(), "unwritten (NaN-poisoned) output elements"
    args = (a, w, w_bits, a_scale, a_zero, a_shift, w_scale, wsum, y_base)
    ref = reference.quik_gemm(*args, dtype)
    n_diff = int((got.view(torch.int16) != ref.view(torch.int16)).sum())
    assert n_diff == 0, f"{n_diff} of {M * N} outputs differ from the reference ({dtype}, M={M}, N={N}, w_bits={w_bits})"
    if M * N * a.shape[1] <= 1 << 26:  # the same function on the CPU: IEEE fp32, so the same bits
        cpu = reference.quik_gemm(*(t.cpu() if isinstance(t, torch.Tensor) else t for t in args), dtype)
        assert _bits_equal(got.cpu(), cpu), f"GPU output differs from the CPU reference ({dtype}, M={M}, N={N})"
    # and the issue's bound against the unrounded fp32 result: only the output dtype's rounding remains
    # (fp16: <= 2^-11 per element; bf16: <= 2^-8 per element, so compare bf16 to the rounded reference)
    ref32 = reference.quik_gemm(*args, torch.float32)
    err = _rel_err(got, ref32 if dtype == torch.float16 else ref32.to(dtype))
    assert err <= 1e-3, f"relative error {err:.3e} > 1e-3 ({dtype}, M={M}, N={N}, w_bits={w_bits})"


@pytest.mark.parametrize("with_y", [False, True], ids=["no_y", "y"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("w_bits,a_bits", [(4, 4), (4, 8), (8, 8)])
@pytest.mark.parametrize("kq,N", GEMM_SHAPES)
@pytest.mark.parametrize("M", MS)
def test_quik_gemm_exact(M: int, kq: int, N: int, w_bits: int, a_bits: int, dtype: torch.dtype, with_y: bool) -> None:
    g = _gen("fused", M, kq, N, w_bits, a_bits, dtype, with_y)
    a = _act_codes(g, M, kq, a_bits)
    w = cuda.prepare_weight(_codes(g, N, kq, w_bits), w_bits)
    a_scale, a_zero, w_scale, wsum = _epilogue_inputs(g, M, N)
    y = (torch.randn(M, N, generator=g, device=DEV) * 3).to(dtype) if with_y else None
    _check_fused(a, w, w_bits, a_scale, a_zero, 1 << (a_bits - 1), w_scale, wsum, y, dtype)


@pytest.mark.parametrize("cfg", [*TILED_CFGS, *GEMV_CFGS])
def test_quik_gemm_every_kernel_on_ragged_shapes(monkeypatch: pytest.MonkeyPatch, cfg: str) -> None:
    for M in ([1, 7, 13] if cfg.startswith("gemv") else [1, 19, 257]):
        if cfg.startswith("gemv"):
            _force_gemv(monkeypatch, cfg, default_rows=32)
        else:
            _force_tiled(monkeypatch, cfg)
        for N in (1, 11, 300):
            for w_bits in (4, 8):
                for dtype in (torch.float16, torch.bfloat16):
                    g = _gen("fused-ragged", cfg, M, N, w_bits, dtype)
                    a = _act_codes(g, M, 200, 8)
                    w = cuda.prepare_weight(_codes(g, N, 200, w_bits), w_bits)
                    a_scale, a_zero, w_scale, wsum = _epilogue_inputs(g, M, N)
                    y = torch.randn(M, N, generator=g, device=DEV).to(dtype)
                    _check_fused(a, w, w_bits, a_scale, a_zero, 128, w_scale, wsum, y, dtype)


@pytest.mark.parametrize("w_bits,a_bits", [(4, 4), (4, 8), (8, 8)])
@pytest.mark.parametrize("M,kq,N", [(128, 4096, 4096), (118, 11008, 4096), (128, 13824, 5120), (40, 4096, 172)])
def test_split_k_where_the_rule_splits(M: int, kq: int, N: int, w_bits: int, a_bits: int) -> None:
    """The launcher's own split-K choice on the grids it is for (M = 128 on N = 4096 / 5120: fewer mid tiles than
    SMs), int32 sums and the fused epilogue with y_base against the reference, bit for bit."""
    sms = cuda._device_info(torch.cuda.current_device())[1]
    splits = cuda.mma_splits(M, N, reference.padded_k(kq), w_bits, torch.cuda.current_device())
    grid = -(-M // 64) * -(-N // 128)
    assert splits > 1 or grid >= sms, f"no split-K for {grid} mid tiles on {sms} SMs"
    g = _gen("split-k", M, kq, N, w_bits, a_bits)
    a = _act_codes(g, M, kq, a_bits)
    w = cuda.prepare_weight(_codes(g, N, kq, w_bits), w_bits)
    _check_int(a, w, w_bits)
    a_scale, a_zero, w_scale, wsum = _epilogue_inputs(g, M, N)
    y = (torch.randn(M, N, generator=g, device=DEV) * 3).half()
    _check_fused(a, w, w_bits, a_scale, a_zero, 1 << (a_bits - 1), w_scale, wsum, y, torch.float16)


@pytest.mark.parametrize("group", [True, False], ids=["grouped", "one-by-one"])
@pytest.mark.parametrize("splits", [2, 8, 11])
def test_split_k_add_kernel_both_loops(monkeypatch: pytest.MonkeyPatch, splits: int, group: bool) -> None:
    """The split-K add kernel loading its slices in groups of 8 (quik_splitk_*) and one at a time
    (quik_splitk_g1_*), each forced through SPLITK_GROUP_MIN: the reference's bits, with y_base, on even and odd N,
    for 2 slices (a partial group), 8 (one whole group) and 11 (a group and a remainder); kq = 1000 has 16 K tiles
    of 64."""
    monkeypatch.setattr(cuda, "SPLITK_GROUP_MIN", 1 if group else 0)
    _force_tiled(monkeypatch, f"sk{splits}")
    names = []
    real = cuda._launch_fn
    monkeypatch.setattr(cuda, "_launch_fn", lambda index, fn, name, *rest:
                        names.append(name) or real(index, fn, name, *rest))
    for M, N in ((130, 300), (17, 11)):
        for dtype in (torch.float16, torch.bfloat16):
            names.clear()
            g = _gen("split-k-add", splits, group, M, N, dtype)
            a = _act_codes(g, M, 1000, 8)
            w = cuda.prepare_weight(_codes(g, N, 1000, 8), 8)
            a_scale, a_zero, w_scale, wsum = _epilogue_inputs(g, M, N)
            y = (torch.randn(M, N, generator=g, device=DEV) * 3).to(dtype)
            _check_fused(a, w, 8, a_scale, a_zero, 128, w_scale, wsum, y, dtype)
            ep = "f16" if dtype == torch.float16 else "bf16"
            assert names == ["quik_gemm_sk_w8_mid", f"quik_splitk{'' if group else '_g1'}_{ep}"], names


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("M", [1, 16, 118])
def test_quik_linear_chain(M: int, dtype: torch.dtype) -> None:
    """x -> quantize_activations -> quik_gemm (+ fp16 outlier product) on both backends."""
    K, N, n_out, a_bits, w_bits = 1100, 300, 100, 4, 4
    g = _gen("chain", M, dtype)
    keep, outl = _split_columns(g, K, n_out)
    x = _activations(g, M, K, dtype, outl)
    w_codes = _codes(g, N, K - n_out, w_bits)
    w_scale = torch.rand(N, generator=g, device=DEV) * 0.02 + 0.002
    wsum = (w_codes.float() * w_scale[:, None]).sum(1)
    w_out = (torch.randn(N, n_out, generator=g, device=DEV) * 0.02).to(dtype)
    results = []
    for backend in (reference, cuda):
        w = backend.prepare_weight(w_codes, w_bits)
        idx = (keep.long(), outl.long()) if backend is reference else (keep, outl)
        q = backend.quantize_activations(x, *idx, a_bits)
        y = q.x_outlier @ w_out.T                       # [M, N] outlier product in the model dtype
        results.append(backend.quik_gemm(q.codes, w, w_bits, q.scale, q.zero, 1 << (a_bits - 1), w_scale, wsum, y,
                                         dtype))
    ref, got = results
    assert _bits_equal(got, ref), f"{int((got != ref).sum())} outputs differ between the backends"
    assert not torch.isnan(got).any()


# ---------------------------------------------------------------------------------------------------
# (d) launcher argument checks
# ---------------------------------------------------------------------------------------------------
def _good(M: int = 4, kq: int = 100, N: int = 24):
    g = _gen("args", M, kq, N)
    a = _act_codes(g, M, kq, 4)
    w = cuda.prepare_weight(_codes(g, N, kq, 4), 4)
    a_scale, a_zero, w_scale, wsum = _epilogue_inputs(g, M, N)
    return a, w, a_scale, a_zero, w_scale, wsum


def test_int_gemm_rejects_bad_arguments() -> None:
    a, w, *_ = _good()
    cases = [
        (lambda: cuda.int_gemm(a.int(), w, 4), r"a_codes: dtype must be int8, got int32"),
        (lambda: cuda.int_gemm(a, w.view(torch.int8), 4), r"w: dtype must be uint8"),
        (lambda: cuda.int_gemm(a, w, 8), r"w: dtype must be int8"),
        (lambda: cuda.int_gemm(a.cpu(), w, 4), r"a_codes: must be a CUDA tensor"),
        (lambda: cuda.int_gemm(a, w.cpu(), 4), r"w: must be a CUDA tensor"),
        (lambda: cuda.int_gemm(a[:, :64].contiguous(), w, 4), r"w: shape must be \[\*, 32\], got \[24, 64\]"),
        (lambda: cuda.int_gemm(torch.cat([a, a], 1)[:, ::2], w, 4), r"a_codes: must be contiguous"),
        (lambda: cuda.int_gemm(a[:, :96].contiguous(), w[:, :48].contiguous(), 4), r"multiple of 64.*got 96"),
        (lambda: cuda.int_gemm(a, w, 5), r"w_bits must be 4 or 8, got 5"),
        (lambda: cuda.int_gemm(a[0], w, 4), r"a_codes: shape must be \[\*, \*\]"),
        (lambda: cuda.int_gemm(a, w.t(), 4), r"w: shape must be|w: must be contiguous"),
    ]
    misaligned = torch.empty(a.numel() + 8, dtype=torch.int8, device=DEV)[8:].view(a.shape)
    cases.append((lambda: cuda.int_gemm(misaligned, w, 4), r"a_codes: data pointer must be 16-byte aligned"))
    for fn, msg in cases:
        with pytest.raises(KernelError, match=msg):
            fn()


def test_quik_gemm_rejects_bad_arguments() -> None:
    a, w, a_scale, a_zero, w_scale, wsum = _good()
    M, N = a.shape[0], w.shape[0]
    y16 = torch.zeros(M, N, dtype=torch.float16, device=DEV) + 1
    base = dict(a_codes=a, w=w, w_bits=4, a_scale=a_scale, a_zero=a_zero, a_shift=8, w_scale=w_scale, wsum=wsum,
                y_base=None, out_dtype=torch.float16)
    cases = [
        (dict(out_dtype=torch.float32), r"out_dtype must be float16 or bfloat16"),
        (dict(a_scale=a_scale.half()), r"a_scale: dtype must be float32, got float16"),
        (dict(a_zero=a_zero[:-1]), r"a_zero: shape must be \[4\], got \[3\]"),
        (dict(w_scale=w_scale.cpu()), r"w_scale: must be a CUDA tensor"),
        (dict(wsum=torch.stack([wsum, wsum], 1)[:, 0]), r"wsum: must be contiguous"),
        (dict(y_base=y16.to(torch.bfloat16)), r"y_base: dtype must be float16, got bfloat16"),
        (dict(y_base=y16[:, :-1].contiguous()), r"y_base: shape must be \[4, 24\]"),
        (dict(a_shift="8"), r"a_shift must be a number"),
    ]
    for change, msg in cases:
        with pytest.raises(KernelError, match=msg):
            cuda.quik_gemm(**{**base, **change})
    cuda.quik_gemm(**base)  # and the unchanged arguments are fine


def test_quantize_activations_rejects_bad_arguments() -> None:
    g = _gen("act-args")
    keep, outl = _split_columns(g, 80, 8)
    x = _activations(g, 4, 80, torch.float16, outl)
    cases = [
        (lambda: cuda.quantize_activations(x.float(), keep, outl, 4), r"x: dtype must be float16 or bfloat16"),
        (lambda: cuda.quantize_activations(x.cpu(), keep, outl, 4), r"x: must be a CUDA tensor"),
        (lambda: cuda.quantize_activations(x.t(), keep, outl, 4), r"x: must be contiguous"),
        (lambda: cuda.quantize_activations(x, keep.float(), outl, 4), r"keep_idx: dtype must be int32 or int64"),
        (lambda: cuda.quantize_activations(x, keep[None], outl, 4), r"keep_idx: shape must be \[\*\]"),
        (lambda: cuda.quantize_activations(x, keep, outl.cpu(), 4), r"outlier_idx: must be a CUDA tensor"),
        (lambda: cuda.quantize_activations(x, keep, outl, 3), r"bits must be 4 or 8, got 3"),
        (lambda: cuda.quantize_activations(x, keep[:0], outl, 4), r"keep_idx: needs 1 to K=80 columns, got 0"),
    ]
    for fn, msg in cases:
        with pytest.raises(KernelError, match=msg):
            fn()


def test_out_of_range_index_poisons_the_row_instead_of_reading_out_of_bounds() -> None:
    g = _gen("oob")
    keep, outl = _split_columns(g, 80, 8)
    x = _activations(g, 4, 80, torch.float16, outl)
    keep = keep.clone()
    keep[-1] = 1 << 20
    q = cuda.quantize_activations(x, keep, outl, 4)
    assert torch.isnan(q.scale).all() and torch.isnan(q.zero).all()
    assert (q.codes == 0).all()


# ---------------------------------------------------------------------------------------------------
# (e) a whole quantized model: the two backends give the same logits, bit for bit
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("batch,seq", [(3, 118), (1, 7)], ids=["M354", "M7"])
@pytest.mark.parametrize("preset", ["quik-4b", "w4a8", "quik-8b"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_quantized_model_logits_identical_across_backends(preset: str, dtype: torch.dtype, batch: int,
                                                          seq: int, fuse: bool) -> None:
    """Every QuikLinear output is bit-identical, so the discontinuous 4-bit activation rounding of the
    next layer sees the same inputs: whole-model logits must then be identical too (close is not
    enough: a 1-ulp-sized input perturbation moves a SmolLM2 QUIK-4B perplexity by about 1%)."""
    from conftest import tiny_model
    from quiktool import api
    from quiktool.config import load_config
    from quiktool.runtime.quik_linear import set_backend

    m = tiny_model("llama").to(DEV, dtype)
    g = torch.Generator().manual_seed(zlib.crc32(f"model-{preset}".encode()))
    calib = torch.randint(0, m.config.vocab_size, (4, 64), generator=g).to(DEV)
    ids = torch.randint(0, m.config.vocab_size, (batch, seq), generator=g).to(DEV)
    api.quantize_model(m, load_config(preset).replace(algorithm="rtn"), api.collect_channel_stats(m, calib), None,
                       device=DEV, progress=False)
    if fuse:  # q/k/v and gate/up as one layer each (runtime.fuse): 2 fused + o + down per block
        from quiktool.runtime.fuse import fuse_shared_inputs
        assert fuse_shared_inputs(m) == 4
    logits = {}
    for b in ("torch", "cuda"):
        assert set_backend(m, b) == (8 if fuse else 14)
        with torch.no_grad():
            logits[b] = m(ids).logits
    assert torch.isfinite(logits["torch"]).all()
    assert _bits_equal(logits["cuda"], logits["torch"]), \
        f"{int((logits['cuda'] != logits['torch']).sum())} of {logits['torch'].numel()} logits differ"


# ---------------------------------------------------------------------------------------------------
# (f) the library paths of quik_gemm (large M): exact sums, same bits as the mma.sync kernels
# ---------------------------------------------------------------------------------------------------
def test_fp8_path_proves_itself_on_this_gpu() -> None:
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need sm_89 or newer")
    assert cuda.fp8_exact_on(torch.cuda.current_device())


@pytest.mark.parametrize("pattern", ["all_-8", "64_then_1", "random"])
@pytest.mark.parametrize("kq", [28672, 4096, 1000])
def test_fp8_int_sums_exact_on_adversarial_codes(kq: int, pattern: str) -> None:
    if not cuda.fp8_exact_on(torch.cuda.current_device()):
        pytest.skip("the FP8 path is off on this GPU (see the warning it logged)")
    g = _gen("fp8-adv", kq, pattern)
    kp = reference.padded_k(kq)
    M, N = 300, 272
    a = _act_codes(g, M, kq, 4)
    c = _codes(g, N, kq, 4)
    if pattern == "all_-8":
        a[:, :kq], c[:] = -8, -8                              # every product 64: |acc| = 64 * Kq, the largest
    elif pattern == "64_then_1":
        a[:, :kq], c[:] = 1, 1
        a[:, : kq // 2], c[:, : kq // 2] = -8, -8             # a large running sum, then +1 steps
    w = cuda.prepare_weight(c, 4)
    got = cuda._library_int_gemm("fp8", a, w, 4, N, kp, torch.cuda.current_device())
    ref = reference.int_gemm(a, w, 4)
    assert torch.equal(got, ref.to(torch.float32)), f"{int((got != ref.float()).sum())} sums differ"


def test_int8_library_sums_exact_at_the_extremes() -> None:
    """W8A8 through torch._int_mm: every product -128 * -128, the largest |acc| a layer can reach here."""
    dev = torch.cuda.current_device()
    M, N, kq = 64, 64, 28672
    a = torch.full((M, kq), -128, dtype=torch.int8, device=DEV)
    c = torch.full((N, kq), -128, dtype=torch.int8, device=DEV)
    c[1::2] = 127
    got = cuda._library_int_gemm("int8", a, c, 8, N, kq, dev)
    assert torch.equal(got, reference.int_gemm(a, c, 8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("kq,N", [(4096, 4096), (1536, 576), (1000, 304), (172, 64)])
@pytest.mark.parametrize("M", [17, 300, 2048])
@pytest.mark.parametrize("w_bits,a_bits,path", [(4, 4, "fp8"), (4, 8, "int8"), (8, 8, "int8")])
def test_library_paths_match_mma_path_bit_for_bit(monkeypatch: pytest.MonkeyPatch, w_bits: int, a_bits: int,
                                                  path: str, M: int, kq: int, N: int, dtype: torch.dtype) -> None:
    dev = torch.cuda.current_device()
    if path == "fp8" and not cuda.fp8_exact_on(dev):
        pytest.skip("the FP8 path is off on this GPU (see the warning it logged)")
    g = _gen("lib-vs-mma", w_bits, a_bits, M, kq, N, dtype)
    a = _act_codes(g, M, kq, a_bits)
    w = cuda.prepare_weight(_codes(g, N, kq, w_bits), w_bits)
    a_scale, a_zero, w_scale, wsum = _epilogue_inputs(g, M, N)
    y = (torch.randn(M, N, generator=g, device=DEV) * 3).to(dtype)
    shift = 1 << (a_bits - 1)
    args = (a, w, w_bits, a_scale, a_zero, shift, w_scale, wsum, y, dtype)
    kp = a.shape[1]
    monkeypatch.setattr(cuda, "WGMMA_MIN_M", 0)                  # this test is about the cuBLASLt paths
    monkeypatch.setattr(cuda, "LIB_MIN_M", 1)
    monkeypatch.setattr(cuda, "LIB_MIN_MACS", 0)
    assert cuda.gemm_path(M, N, kp, w_bits, shift, dev) == path   # the path under test is really taken
    lib = cuda.quik_gemm(*args, out=torch.full((M, N), float("nan"), dtype=dtype, device=DEV))
    monkeypatch.setattr(cuda, "LIB_MIN_M", 0)
    assert cuda.gemm_path(M, N, kp, w_bits, shift, dev) == "mma"
    mma = cuda.quik_gemm(*args)
    assert not torch.isnan(lib).any()
    assert _bits_equal(lib, mma), f"{int((lib != mma).sum())} outputs differ between the {path} and mma.sync paths"
    assert _bits_equal(lib, reference.quik_gemm(*args))


def test_library_paths_not_taken_where_they_do_not_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = torch.cuda.current_device()
    monkeypatch.setattr(cuda, "WGMMA_MIN_M", 0)                       # this test is about the cuBLASLt paths
    monkeypatch.setattr(cuda, "LIB_MIN_M", None)                      # the per-path defaults
    monkeypatch.setattr(cuda, "LIB_MIN_MACS", 1 << 34)
    assert cuda.gemm_path(511, 28672, 8192, 4, 8, dev) == "mma"      # too few tokens for FP8
    assert cuda.gemm_path(511, 28672, 8192, 4, 128, dev) == "mma"    # too few tokens for INT8
    assert cuda.gemm_path(512, 4096, 4096, 4, 8, dev) == "mma"       # too little work (8.6e9 MACs)
    assert cuda.gemm_path(2048, 4096, 4096, 8, 128, dev) == "int8"   # W8A8
    assert cuda.gemm_path(2048, 4096, 4096, 4, 128, dev) == "int8"   # A8 codes are not exact in e4m3
    assert cuda.gemm_path(2048, 4100, 4096, 4, 8, dev) == "mma"      # N % 16 != 0 (cuBLASLt FP8 needs it)
    assert cuda.gemm_path(2048, 4100, 4096, 4, 128, dev) == "mma"    # N % 8 != 0 (torch._int_mm needs it)
    assert cuda.gemm_path(2048, 4096, 32832, 4, 8, dev) == "mma"     # beyond the K the FP8 exactness proof covers
    if cuda.fp8_exact_on(dev):
        assert cuda.gemm_path(2048, 4096, 4096, 4, 8, dev) == "fp8"


@pytest.mark.parametrize("a_bits,path", [(4, "fp8"), (8, "int8")])
def test_library_paths_under_cuda_graph_capture(monkeypatch: pytest.MonkeyPatch, a_bits: int, path: str) -> None:
    """First use inside a capture falls back to mma.sync (the one-time setup cannot be captured); once
    set up, the library path itself is captured and replays to the reference's bits."""
    dev = torch.cuda.current_device()
    M, kq, N = 512, 4096, 4096
    g = _gen("graph", a_bits)
    a = _act_codes(g, M, kq, a_bits)
    w = cuda.prepare_weight(_codes(g, N, kq, 4), 4)
    a_scale, a_zero, w_scale, wsum = _epilogue_inputs(g, M, N)
    args = (a, w, 4, a_scale, a_zero, 1 << (a_bits - 1), w_scale, wsum, None, torch.float16)
    ref = reference.quik_gemm(*args)
    monkeypatch.setattr(cuda, "WGMMA_MIN_M", 0)            # this test is about the cuBLASLt paths
    monkeypatch.setattr(cuda, "LIB_MIN_M", 0)
    cuda.quik_gemm(*args)                                   # kernels loaded outside the capture
    torch.cuda.synchronize()
    monkeypatch.setattr(cuda, "_LUTS", {})
    monkeypatch.setattr(cuda, "_FP8_PROOF", {})
    monkeypatch.setattr(cuda, "LIB_MIN_M", 1)
    monkeypatch.setattr(cuda, "LIB_MIN_MACS", 0)
    for attempt in ("first use", "after setup"):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = cuda.quik_gemm(*args)
            taken = cuda.gemm_path(M, N, a.shape[1], 4, 1 << (a_bits - 1), dev)
        graph.replay()
        torch.cuda.synchronize()
        assert _bits_equal(out, ref), attempt
        if attempt == "first use":
            assert taken == "mma" and dev not in cuda._LUTS
            if path == "fp8" and not cuda.fp8_exact_on(dev):   # the setup, outside any capture
                pytest.skip("the FP8 path is off on this GPU")
            cuda._luts(dev)
        else:
            assert taken == path


@pytest.mark.parametrize("M", [1, 16])
def test_quik_linear_under_cuda_graph_at_decode_sizes(M: int) -> None:
    """The decode path (split quantizer, outlier product, small-M kernel) captured into a CUDA graph, as
    `bench model` does for its graph decode: every replay gives the reference's bits, on fresh inputs."""
    K, N, n_out, dtype = 1100, 304, 100, torch.float16
    g = _gen("decode-graph", M)
    keep, outl = _split_columns(g, K, n_out)
    w = cuda.prepare_weight(_codes(g, N, K - n_out, 4), 4)
    _, _, w_scale, wsum = _epilogue_inputs(g, M, N)
    w_out = (torch.randn(N, n_out, generator=g, device=DEV) * 0.02).to(dtype)
    args = (keep, outl, 4, w, 4, w_scale, wsum, w_out, None)
    x = _activations(g, M, K, dtype, outl)
    cuda.quik_linear(x, *args)                      # kernels loaded outside the capture
    torch.cuda.synchronize()
    _assert_replays_match(lambda: cuda.quik_linear(x, *args), x, lambda: _activations(g, M, K, dtype, outl),
                          lambda: reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out,
                                                        None), 3)


# ---------------------------------------------------------------------------------------------------
# (e) the sm_90a wgmma kernel (kernels/quik_wgmma.cu): 4- or 8-bit weights, 4- or 8-bit activations, large M
# ---------------------------------------------------------------------------------------------------
def _wgmma_or_skip(monkeypatch: pytest.MonkeyPatch, kernel: str | None = None) -> int:
    """The wgmma path on for every shape; kernel: "ws" (the warp-specialized quik_wgmma_ws_* on 128 x 256 tiles), "wg"
    (the earlier quik_wgmma_*), "rs" (the register-operand quik_wgmma_rs_*, 4-bit weights; 8-bit ones then take ws),
    "wide" (4-bit weights widened to int8 onto quik_wgmma_ws_*_w8), "n<BN>" (the warp-specialized kernel on 128 x BN
    tiles, quik_wgmma_ws_n<BN>_*, 4-bit weights not widened), "c3" / "c3-n<BN>" (8-bit weights on the deep-copy
    entry points quik_wgmma_ws_c3_[n<BN>_]* at every M; the other kinds keep 8-bit weights off them), None (the
    launcher's defaults: narrow tiles by its rule, deep copies below WGMMA_W8_DEEP_MAX_M tokens)."""
    dev = torch.cuda.current_device()
    if torch.cuda.get_device_capability(dev) != (9, 0):
        pytest.skip("the wgmma kernel is sm_90 only")
    if cuda.find_nvcc() is None:
        pytest.skip("no nvcc on this machine to build the sm_90a kernel")
    assert cuda._wgmma_kernels(dev) is not None, "the wgmma kernel did not build or load (see the logged warning)"
    monkeypatch.setattr(cuda, "WGMMA_MIN_M", 1)
    monkeypatch.setattr(cuda, "WGMMA_MIN_TILES", 0)
    if kernel is not None:
        monkeypatch.setattr(cuda, "WGMMA_WS", kernel != "wg")
        monkeypatch.setattr(cuda, "WGMMA_WS_W4", kernel != "wg")
        monkeypatch.setattr(cuda, "WGMMA_RS_MIN_M", 1 if kernel == "rs" else 0)
        monkeypatch.setattr(cuda, "WGMMA_RS_MIN_KP", 0)
        monkeypatch.setattr(cuda, "WGMMA_W4_WIDE_MIN_M", 1 if kernel == "wide" else 0)
        width = kernel.removeprefix("c3").removeprefix("-")
        monkeypatch.setattr(cuda, "WGMMA_BN", int(width[1:]) if width.startswith("n") else 256)
        monkeypatch.setattr(cuda, "WGMMA_W8_DEEP_MAX_M", 1 << 30 if kernel.startswith("c3") else 0)
    return dev


def _planned_family(M: int, N: int, kp: int, w_bits: int) -> str:
    """The kernel family _wgmma_plan picks now: "rs", "ws", "wg", "n<BN>", "c3" / "c3-n<BN>" (the deep-copy 8-bit
    entry points), or "wide" for 4-bit weights widened onto the 8-bit warp-specialized kernel (the tests check that
    the one asked for runs)."""
    bn = cuda._wgmma_shape(M, N, kp, w_bits, torch.cuda.current_device())[0]
    name = cuda._wgmma_plan(M, N, "i32", w_bits, kp=kp, bn=bn)[0]
    if "_ws_c3_" in name:
        assert w_bits == 8, name
        return "c3" + (f"-n{bn}" if "_ws_c3_n" in name else "")
    if "_ws_n" in name:
        return ("wide-" if w_bits == 4 and "_w8" in name else "") + name.split("_")[3]   # quik_wgmma_ws_n<BN>_...
    if w_bits == 4 and "_w8" in name:
        return "wide" if "_ws_" in name else "wide-wg"
    return "rs" if "_rs_" in name else "ws" if "_ws_" in name else "wg"


# (Kq, N): Kp = 64 (half of one 128-byte K tile), odd N (unpaired stores), N not a multiple of the 256-row
# tile, a K whose last tile is half, the 7B shape.
WG_SHAPES = [(64, 301), (172, 64), (1000, 304), (1536, 576), (4160, 1000), (4096, 4096)]


# weight bits and kernel: each width on the warp-specialized quik_wgmma_ws_*_wB (ws, the default) and on the
# earlier quik_wgmma_*_wB (QUIKTOOL_WGMMA_WS=0 / QUIKTOOL_WGMMA_WS_W4=0); 4-bit weights also on the
# register-operand quik_wgmma_rs_*_w4 (QUIKTOOL_WGMMA_RS_MIN_M) and widened to int8 onto quik_wgmma_ws_*_w8
# (QUIKTOOL_WGMMA_W4_WIDE_MIN_M); both widths on the narrower tiles quik_wgmma_ws_n<BN>_wB (QUIKTOOL_WGMMA_BN); 8-bit
# weights on the deep-copy entry points quik_wgmma_ws_c3_[n<BN>_]*_w8 (QUIKTOOL_WGMMA_W8_DEEP_MAX_M)
WG_KERNELS = pytest.mark.parametrize("w_bits,kernel", [(4, "wg"), (4, "ws"), (4, "rs"), (4, "wide"), (8, "ws"),
                                                       (8, "wg"), (4, "n160"), (4, "n176"), (4, "n224"), (8, "n160"),
                                                       (8, "n176"), (8, "n224"), (8, "c3"), (8, "c3-n160"),
                                                       (8, "c3-n176"), (8, "c3-n224")],
                                     ids=["w4", "w4-ws", "w4-rs", "w4-wide", "w8-ws", "w8", "w4-n160", "w4-n176",
                                          "w4-n224", "w8-n160", "w8-n176", "w8-n224", "w8-c3", "w8-c3-n160",
                                          "w8-c3-n176", "w8-c3-n224"])


@WG_KERNELS
@pytest.mark.parametrize("a_bits", [4, 8])
@pytest.mark.parametrize("kq,N", WG_SHAPES)
@pytest.mark.parametrize("M", [17, 118, 300, 2048])
def test_wgmma_int_gemm_exact(monkeypatch: pytest.MonkeyPatch, M: int, kq: int, N: int, a_bits: int,
                              w_bits: int, kernel: str) -> None:
    dev = _wgmma_or_skip(monkeypatch, kernel)
    g = _gen("wgmma-int", M, kq, N, a_bits, w_bits)
    a = _act_codes(g, M, kq, a_bits)
    w = cuda.prepare_weight(_codes(g, N, kq, w_bits), w_bits)
    assert cuda.gemm_path(M, N, a.shape[1], w_bits, 1 << (a_bits - 1), dev) == "wgmma"
    assert _planned_family(M, N, a.shape[1], w_bits) == kernel
    got = cuda.int_gemm(a, w, w_bits, out=torch.full((M, N), POISON_I32, dtype=torch.int32, device=DEV))
    ref = reference.int_gemm(a, w, w_bits)
    assert torch.equal(got, ref), _first_mismatch(got, ref)


@WG_KERNELS
@pytest.mark.parametrize("pattern", ["extremes", "alternating", "random"])
def test_wgmma_int_gemm_exact_at_the_largest_sums(monkeypatch: pytest.MonkeyPatch, pattern: str,
                                                  w_bits: int, kernel: str) -> None:
    """|acc| up to 128 * 8 * Kq (w4: 16 * acc in the kernel's int32 accumulators) or 128 * 128 * Kq (w8) at
    Kq = 32768: near 2^29 either way."""
    _wgmma_or_skip(monkeypatch, kernel)
    g = _gen("wgmma-big", pattern, w_bits)
    M, N, kq = 130, 260, 32768
    lo, hi = (-8, 7) if w_bits == 4 else (-128, 127)
    a = _act_codes(g, M, kq, 8)
    c = _codes(g, N, kq, w_bits)
    if pattern == "extremes":
        a[: M // 2, :kq], c[: N // 2] = -128, lo          # +128 * 8 (w8: 128 * 128) per product
        c[N // 2:] = hi                                     # -128 * 7 (w8: -128 * 127)
    elif pattern == "alternating":
        a[:, :kq:2], a[:, 1:kq:2] = -128, 127
        c[:, ::2], c[:, 1::2] = lo, hi
    w = cuda.prepare_weight(c, w_bits)
    assert cuda.gemm_path(M, N, w.shape[1] * (8 // w_bits), w_bits, 128, torch.cuda.current_device()) == "wgmma"
    assert _planned_family(M, N, a.shape[1], w_bits) == kernel
    got = cuda.int_gemm(a, w, w_bits)
    ref = reference.int_gemm(a, w, w_bits)
    assert torch.equal(got, ref), _first_mismatch(got, ref)


@pytest.mark.parametrize("with_y", [True, False], ids=["y_base", "no_y"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("w_bits,a_bits,kernel", [(4, 4, "wg"), (4, 4, "ws"), (4, 4, "rs"), (4, 4, "wide"), (4, 8, "wg"),
                                                  (4, 8, "ws"), (4, 8, "rs"), (4, 8, "wide"), (8, 8, "ws"), (8, 8, "wg"),
                                                  (4, 4, "n160"), (4, 8, "n176"), (4, 4, "n224"), (8, 8, "n160"),
                                                  (8, 8, "n176"), (8, 8, "c3"), (8, 8, "c3-n160"), (8, 8, "c3-n224")],
                         ids=["w4a4", "w4a4-ws", "w4a4-rs", "w4a4-wide", "w4a8", "w4a8-ws", "w4a8-rs", "w4a8-wide",
                              "w8a8-ws", "w8a8", "w4a4-n160", "w4a8-n176", "w4a4-n224", "w8a8-n160", "w8a8-n176",
                              "w8a8-c3", "w8a8-c3-n160", "w8a8-c3-n224"])
@pytest.mark.parametrize("kq,N", WG_SHAPES)
@pytest.mark.parametrize("M", [17, 300, 2048])
def test_wgmma_quik_gemm_bit_identical(monkeypatch: pytest.MonkeyPatch, M: int, kq: int, N: int, w_bits: int,
                                       a_bits: int, dtype: torch.dtype, with_y: bool, kernel: str) -> None:
    """Same bits as the reference and as the mma.sync kernels (which the other tests pin to the reference)."""
    dev = _wgmma_or_skip(monkeypatch, kernel)
    g = _gen("wgmma-fused", M, kq, N, a_bits, dtype, with_y, w_bits)
    a = _act_codes(g, M, kq, a_bits)
    w = cuda.prepare_weight(_codes(g, N, kq, w_bits), w_bits)
    a_scale, a_zero, w_scale, wsum = _epilogue_inputs(g, M, N)
    y = (torch.randn(M, N, generator=g, device=DEV) * 3).to(dtype) if with_y else None
    shift = 1 << (a_bits - 1)
    assert cuda.gemm_path(M, N, a.shape[1], w_bits, shift, dev) == "wgmma"
    assert _planned_family(M, N, a.shape[1], w_bits) == kernel
    _check_fused(a, w, w_bits, a_scale, a_zero, shift, w_scale, wsum, y, dtype)
    got = cuda.quik_gemm(a, w, w_bits, a_scale, a_zero, shift, w_scale, wsum, y, dtype)
    monkeypatch.setattr(cuda, "WGMMA_MIN_M", 0)
    monkeypatch.setattr(cuda, "LIB_MIN_M", 0)
    assert cuda.gemm_path(M, N, a.shape[1], w_bits, shift, dev) == "mma"
    mma = cuda.quik_gemm(a, w, w_bits, a_scale, a_zero, shift, w_scale, wsum, y, dtype)
    assert _bits_equal(got, mma), f"{int((got != mma).sum())} outputs differ between the wgmma and mma.sync paths"


def test_wgmma_path_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    dev = _wgmma_or_skip(monkeypatch)
    monkeypatch.setattr(cuda, "WGMMA_MIN_M", 128)
    monkeypatch.setattr(cuda, "WGMMA_MIN_TILES", None)                   # 0.6 of the multiprocessor count
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    need = math.ceil(cuda.WGMMA_MIN_TILE_SHARE * sms)
    assert cuda.gemm_path(2048, 4096, 4096, 4, 8, dev) == "wgmma"
    assert cuda.gemm_path(2048, 28672, 8192, 4, 128, dev) == "wgmma"     # W4A8 too
    # W4A4 on the largest layers: wgmma by default (fifteenth session) ...
    monkeypatch.setattr(cuda, "WGMMA_FP8_FIRST", None)
    for n, kp in ((28672, 8192), (8192, 28416), (13824, 4864)):
        assert cuda.gemm_path(2048, n, kp, 4, 8, dev) == "wgmma"
    # ... and under the earlier rule (QUIKTOOL_WGMMA_FP8_FIRST=1: at M >= 2048, N >= 12288 with Kp >= 4608, or
    # Kp >= 16384) the FP8 path first where it applies
    monkeypatch.setattr(cuda, "WGMMA_FP8_FIRST", cuda.FP8_FIRST_RULE)
    fp8 = "fp8" if cuda.fp8_exact_on(dev) else "wgmma"
    assert cuda.gemm_path(2048, 28672, 8192, 4, 8, dev) == fp8
    assert cuda.gemm_path(2048, 8192, 28416, 4, 8, dev) == fp8                # 28672 x 8192, 256 outliers
    assert cuda.gemm_path(2048, 13824, 4864, 4, 8, dev) == fp8                # 5120 x 13824, 256 outliers
    assert cuda.gemm_path(2048, 12288, 3840, 4, 8, dev) == "wgmma"           # fused 7B q/k/v, 256 outliers
    assert cuda.gemm_path(2048, 22016, 4096, 4, 8, dev) == "wgmma"           # fused 7B gate/up
    assert cuda.gemm_path(2048, 11008, 4096, 4, 8, dev) == "wgmma"           # measured faster there
    assert cuda.gemm_path(2048, 8192, 8192, 4, 8, dev) == "wgmma"
    assert cuda.gemm_path(2048, 5120, 13824, 4, 8, dev) == "wgmma"
    assert cuda.gemm_path(1024, 28672, 8192, 4, 8, dev) == "wgmma"
    assert cuda.gemm_path(128, 256 * need, 4096, 4, 128, dev) == "wgmma"  # enough tiles
    monkeypatch.setattr(cuda, "WGMMA_SPLIT_MIN_TILES", 0)                # no split-K
    assert cuda.gemm_path(128, 256 * (need - 1), 4096, 4, 128, dev) != "wgmma"  # too many SMs would idle
    monkeypatch.setattr(cuda, "WGMMA_SPLIT_MIN_TILES", 32)               # split-K from 32 tiles ...
    assert cuda.gemm_path(128, 256 * (need - 1), 4096, 4, 128, dev) != "wgmma"  # ... in one wave: 2 x 79 > 132
    assert cuda.gemm_path(128, 256 * (sms // 2), 4096, 4, 128, dev) == "wgmma"
    assert cuda.wgmma_splits(128, 256 * (sms // 2), 4096, 4, dev) == 2
    assert cuda.gemm_path(128, 256 * 31, 4096, 4, 128, dev) == "wgmma"   # 31 tiles: the few-tile split (4-bit) ...
    assert cuda.gemm_path(128, 256 * 15, 4096, 4, 128, dev) != "wgmma"   # ... from 16 tiles
    assert cuda.gemm_path(128, 256 * 31, 4096, 8, 128, dev) != "wgmma"   # 8-bit weights: not below 32 tiles
    monkeypatch.setattr(cuda, "WGMMA_FEW_SPLIT_MIN_TILES", 0)
    assert cuda.gemm_path(128, 256 * 31, 4096, 4, 128, dev) != "wgmma"   # off: the mma.sync split-K kernel
    assert cuda.gemm_path(512, 256 * -(-need // 4), 4096, 4, 128, dev) == "wgmma"  # tiles count along M too
    assert cuda.gemm_path(127, 256 * sms, 4096, 4, 128, dev) != "wgmma"  # too few tokens
    assert cuda.gemm_path(2048, 4096, 4096, 8, 128, dev) == "wgmma"      # 8-bit weights too (quik_wgmma_*_w8)
    monkeypatch.setattr(cuda, "WGMMA_W8", False)
    assert cuda.gemm_path(2048, 4096, 4096, 8, 128, dev) != "wgmma"      # ... unless switched off
    monkeypatch.setattr(cuda, "WGMMA_MIN_M", 0)
    assert cuda.gemm_path(2048, 4096, 4096, 4, 8, dev) != "wgmma"        # switched off


@pytest.mark.parametrize("cluster", [True, False], ids=["cluster", "planes"])
@pytest.mark.parametrize("deep", [False, True], ids=["copies2", "copies3"])
@pytest.mark.parametrize("w_bits", [4, 8])
def test_wgmma_split_k_exact(monkeypatch: pytest.MonkeyPatch, w_bits: int, deep: bool, cluster: bool) -> None:
    """Split-K on the wgmma kernel, forced on small grids: int32 sums and the fused epilogue with y_base bit-exact;
    slices of unequal length, a half last K tile in the last slice (kq 4160), 4-bit weights widened to the 8-bit
    kernel (M = 1030); a fused group's blocked layout falls back to [M, N]. copies3: 8-bit weights (widened ones
    too) on the deep-copy entry points at every M. cluster: the slices of a tile added in a thread-block cluster
    (quik_wgmma_ws_[c3_]cl_*, the launcher's default); planes: int32 slices added by quik_splitk_*
    (quik_wgmma_ws_[c3_]sk_w*, WGMMA_CLUSTER_SPLIT off)."""
    dev = _wgmma_or_skip(monkeypatch)
    monkeypatch.setattr(cuda, "WGMMA_CLUSTER_SPLIT", cluster)
    names: list[str] = []
    real = cuda._launch_fn
    monkeypatch.setattr(cuda, "_launch_fn", lambda index, fn, name, *rest:
                        names.append(name) or real(index, fn, name, *rest))
    monkeypatch.setattr(cuda, "WGMMA_MIN_TILES", 1 << 20)               # every shape below the unsplit rule
    monkeypatch.setattr(cuda, "WGMMA_SPLIT_MIN_TILES", 1)
    monkeypatch.setattr(cuda, "WGMMA_SPLIT_W8_MIN_M", 1)
    monkeypatch.setattr(cuda, "WGMMA_W8_DEEP_MAX_M", 1 << 30 if deep else 0)
    for M, kq, N in ((17, 2048, 1000), (130, 4160, 300), (300, 8192, 520), (1030, 2100, 256)):
        kp = reference.padded_k(kq)
        assert cuda.wgmma_splits(M, N, kp, w_bits, dev) > 1 and cuda.gemm_path(M, N, kp, w_bits, 128, dev) == "wgmma"
        planned = cuda._wgmma_plan(M, N, "i32", w_bits, kp=kp)[0]
        assert ("_c3_" in planned) == (deep and "_w8" in planned), planned
        g = _gen("wgmma-sk", w_bits, M, kq, N)
        a = _act_codes(g, M, kq, 8)
        w = cuda.prepare_weight(_codes(g, N, kq, w_bits), w_bits)
        _check_int(a, w, w_bits)
        a_scale, a_zero, w_scale, wsum = _epilogue_inputs(g, M, N)
        y = (torch.randn(M, N, generator=g, device=DEV) * 3).to(torch.bfloat16)
        _check_fused(a, w, w_bits, a_scale, a_zero, 128, w_scale, wsum, y, torch.bfloat16)
    gemms = [n for n in names if n.startswith("quik_wgmma_")]
    assert gemms and all(("_cl_" if cluster else "_sk_") in n for n in gemms), gemms
    assert cluster != any(n.startswith("quik_splitk") for n in names), names
    if w_bits == 4:
        K, N, M = 2200, 512, 200
        keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(_gen("wgmma-sk-seg"), K, N, 100, torch.float16)
        layer = cuda.PreparedLinear(keep, outl, 4, w, 4, w_scale, wsum, w_out, bias, torch.float16)
        x = _activations(_gen("wgmma-sk-seg-x"), M, K, torch.float16, outl)
        y, blocked = layer.run(x, 256)
        ref = reference.quik_linear(x, keep.long(), outl.long(), 4, w, 4, w_scale, wsum, w_out, bias)
        assert not blocked and _bits_equal(y, ref)


def _check_sums_and_epilogues(g: torch.Generator, a: torch.Tensor, w: torch.Tensor, w_bits: int, kq: int) -> None:
    """One kernel configuration on codes a [M, Kp] (8-bit) and prepared weights w of kq columns: the int32 sums, the
    f16 / bf16 epilogue with and without y_base (bit for bit), then the largest sums (every product +128 * 8, w8
    +128 * 128)."""
    M, N = a.shape[0], w.shape[0]
    _check_int(a, w, w_bits)
    a_scale, a_zero, w_scale, wsum = _epilogue_inputs(g, M, N)
    for dtype in (torch.float16, torch.bfloat16):
        y = (torch.randn(M, N, generator=g, device=DEV) * 3).to(dtype)
        _check_fused(a, w, w_bits, a_scale, a_zero, 128, w_scale, wsum, y, dtype)
        _check_fused(a, w, w_bits, a_scale, a_zero, 128, w_scale, wsum, None, dtype)
    big = a.clone()
    big[:, :kq] = -128
    lo = -8 if w_bits == 4 else -128
    _check_int(big, cuda.prepare_weight(torch.full((N, kq), lo, dtype=torch.int8, device=DEV), w_bits), w_bits)


@pytest.mark.parametrize("w_bits,deep", [(4, False), (8, False), (8, True)], ids=["w4", "w8", "w8-c3"])
@pytest.mark.parametrize("splits", [2, 3, 5, 8])
def test_wgmma_cluster_split_k_every_slice_count(monkeypatch: pytest.MonkeyPatch, splits: int, w_bits: int,
                                                 deep: bool) -> None:
    """The cluster split-K kernel (quik_wgmma_ws_[c3_]cl_*) at a forced slice count, i.e. cluster size: int32 sums
    (random codes, then the largest sums: every product +128 * 8, w8 +128 * 128) and the f16 / bf16 epilogue with
    and without y_base, bit for bit; awkward shapes: M = 17 / 118 / 130 (a second, 2-row tile), N = 172 / 300 (a
    tile cut inside), kq 1100 (9 K tiles: slices of 1 or 2 tiles for 8 clusters, unequal for 5)."""
    dev = _wgmma_or_skip(monkeypatch, "c3" if deep else "ws")
    monkeypatch.setattr(cuda, "WGMMA_MIN_TILES", 1 << 20)
    monkeypatch.setattr(cuda, "_split_rule", lambda M, N, kp, w_bits, dev: splits)
    names: list[str] = []
    real = cuda._launch_fn
    monkeypatch.setattr(cuda, "_launch_fn", lambda index, fn, name, *rest:
                        names.append(name) or real(index, fn, name, *rest))
    for M, N in ((17, 172), (118, 300), (130, 172)):
        g = _gen("wgmma-cluster", splits, w_bits, deep, M, N)
        a = _act_codes(g, M, 1100, 8)
        _check_sums_and_epilogues(g, a, cuda.prepare_weight(_codes(g, N, 1100, w_bits), w_bits), w_bits, 1100)
    gemms = {n for n in names if n.startswith("quik_wgmma_")}
    c3 = "c3_" if deep else ""
    assert gemms == {f"quik_wgmma_ws_{c3}cl_{ep}_w{w_bits}" for ep in ("i32", "f16", "bf16")}, gemms
    assert not any(n.startswith("quik_splitk") for n in names), names
    assert cuda._max_clusters(dev, splits) >= 2


@pytest.mark.parametrize("grid", [1, 3, 7])
@pytest.mark.parametrize("kernel", ["ws", "wide", "n160", "n176", "n224", "c3", "c3-n224"])
def test_wgmma_persistent_grid_exact(monkeypatch: pytest.MonkeyPatch, kernel: str, grid: int) -> None:
    """The unsplit 8-bit warp-specialized kernels (4-bit weights widened too) on a grid of 1, 3 or 7 blocks, each
    block looping over several output tiles with one stage ring (wgmma_gemm_ws's PERSIST, QUIKTOOL_WGMMA_PERSIST):
    int32 sums (random codes, then the largest: every product 128 * 128) and the f16 / bf16 epilogue with and
    without y_base bit for bit; tiles cut by M (17, 118, 300) and N (172, 301, 1000), a half last K tile (kq 4160),
    K of one tile (64); a fused group's blocked output (seg), whose tiles lie in different blocks of the output."""
    dev = _wgmma_or_skip(monkeypatch, kernel)
    monkeypatch.setattr(cuda, "WGMMA_PERSIST", True)
    monkeypatch.setattr(cuda, "WGMMA_PERSIST_GRID", grid)
    w_bits = 4 if kernel == "wide" else 8
    grids: list[tuple[str, int]] = []
    real = cuda._launch_fn
    monkeypatch.setattr(cuda, "_launch_fn", lambda index, fn, name, g, *rest:
                        grids.append((name, g)) or real(index, fn, name, g, *rest))
    for M, kq, N in ((300, 4160, 1000), (118, 64, 301), (17, 1100, 172), (260, 1536, 576)):
        g = _gen("wgmma-persist", kernel, grid, M, kq, N)
        a = _act_codes(g, M, kq, 8)
        w = cuda.prepare_weight(_codes(g, N, kq, w_bits), w_bits)
        assert cuda.wgmma_splits(M, N, a.shape[1], w_bits, dev) == 1
        assert _planned_family(M, N, a.shape[1], w_bits) == kernel
        _check_sums_and_epilogues(g, a, w, w_bits, kq)
    gemms = [(n, g) for n, g in grids if n.startswith("quik_wgmma_ws_")]
    assert gemms and all(n.endswith(("_w8", "_w8_blk")) and g <= grid for n, g in gemms), gemms
    assert any(g == grid for _, g in gemms), gemms  # every shape has more tiles than blocks at grid 1 / 3
    if kernel in ("ws", "wide", "c3"):                                    # the blocked layout: 128 x 256 tiles only
        K, N, M = 700, 512, 300
        keep, outl, w, w_scale, wsum, w_out, bias = _layer_operands(_gen("wgmma-persist-seg"), K, N, 60,
                                                                    torch.float16, w_bits=w_bits)
        layer = cuda.PreparedLinear(keep, outl, w_bits, w, w_bits, w_scale, wsum, w_out, bias, torch.float16)
        x = _activations(_gen("wgmma-persist-seg-x"), M, K, torch.float16, outl)
        y, blocked = layer.run(x, 256)
        ref = reference.quik_linear(x, keep.long(), outl.long(), w_bits, w, w_bits, w_scale, wsum, w_out, bias)
        blocks = ref.view(M, 2, 256).transpose(0, 1).reshape(-1)  # [2 blocks, M, 256] in memory order
        assert blocked and _bits_equal(y.view(-1), blocks), "the blocked output differs from the reference's columns"
        assert grids[-1][0].endswith("_w8_blk") and grids[-1][1] <= grid, grids[-1]


@pytest.mark.parametrize("kernel", [None, "wide", "cluster"], ids=["default", "w4-wide", "cluster-split"])
def test_wgmma_under_cuda_graph_capture(monkeypatch: pytest.MonkeyPatch, kernel: str | None) -> None:
    """Loaded outside the capture, the kernel is captured and replays to the reference's bits on new inputs
    (widened 4-bit weights: the widening pass and its temporary are captured too; cluster-split: the 16 tiles split
    along K by the launcher's rule, a cluster launch with the PDL attribute, quik_wgmma_ws_cl_f16_w4)."""
    dev = _wgmma_or_skip(monkeypatch, None if kernel == "cluster" else kernel)
    if kernel == "cluster":
        monkeypatch.setattr(cuda, "WGMMA_MIN_TILES", 1 << 20)  # the launcher's split rule: 16 tiles, 8 slices
        names: list[str] = []
        real = cuda._launch_fn
        monkeypatch.setattr(cuda, "_launch_fn", lambda index, fn, name, *rest:
                            names.append(name) or real(index, fn, name, *rest))
    M, kq, N = 512, 4096, 1024
    g = _gen("wgmma-graph")
    a = _act_codes(g, M, kq, 4)
    w = cuda.prepare_weight(_codes(g, N, kq, 4), 4)
    a_scale, a_zero, w_scale, wsum = _epilogue_inputs(g, M, N)
    args = (a, w, 4, a_scale, a_zero, 8, w_scale, wsum, None, torch.float16)
    assert cuda.gemm_path(M, N, a.shape[1], 4, 8, dev) == "wgmma"
    assert kernel in (None, "cluster") or _planned_family(M, N, a.shape[1], 4) == kernel
    _assert_replays_match(lambda: cuda.quik_gemm(*args), a, lambda: _act_codes(g, M, kq, 4),
                          lambda: reference.quik_gemm(*args), 2)
    if kernel == "cluster":
        assert cuda.wgmma_splits(M, N, a.shape[1], 4, dev) > 1 and "quik_wgmma_ws_cl_f16_w4" in names, names


# ---------------------------------------------------------------------------------------------------
# (f) the decode outlier product fused into the small-M kernel (quik_gemm_outliers, quik_gemvo_*)
# ---------------------------------------------------------------------------------------------------
# (M, K, N, n_out): odd N, one outlier column, n_out not a multiple of 8 (scalar weight loads), the 7B
# decode shape, M = 9..16 (the 16-token kernels), M > 16 (two launches), 1030 (scalar path), 1792 at
# M = 16 (the weight tile staged in chunks), no outlier column (the bias alone), and long rows where the
# interleaving kernels (quik_gemm.cu gemvo_inter) spread the chains over 4-6 main-loop iterations, the last slice
# shorter.
OUTL_CASES = [(1, 172, 304, 100), (3, 1100, 11, 7), (8, 576, 1536, 256), (5, 4096, 4096, 256),
              (13, 300, 172, 1), (16, 4096, 1000, 256), (21, 1100, 304, 64), (2, 2100, 300, 1030),
              (16, 2100, 300, 1792), (3, 300, 172, 0), (1, 11008, 304, 256), (16, 8448, 200, 256)]


def _outlier_case(g: torch.Generator, M: int, K: int, N: int, n_out: int, w_bits: int, a_bits: int,
                  dtype: torch.dtype, has_bias: bool) -> tuple:
    """quik_gemm_outliers' arguments with x_outlier as the quantizer gives it (large outlier channels)."""
    _, outl = _split_columns(g, K, n_out)
    x_out = _activations(g, M, K, dtype, outl)[:, outl.long()].contiguous()
    a = _act_codes(g, M, K - n_out, a_bits)
    w = cuda.prepare_weight(_codes(g, N, K - n_out, w_bits), w_bits)
    a_scale, a_zero, w_scale, wsum = _epilogue_inputs(g, M, N)
    w_out = (torch.randn(N, n_out, generator=g, device=DEV) * 0.02).to(dtype)
    bias = (torch.randn(N, generator=g, device=DEV) * 0.1).to(dtype) if has_bias else None
    return (a, w, w_bits, a_scale, a_zero, 1 << (a_bits - 1), w_scale, wsum, x_out, w_out, bias, dtype)


def _check_outliers(args: tuple) -> torch.Tensor:
    a, w, dtype = args[0], args[1], args[-1]
    out = torch.full((a.shape[0], w.shape[0]), float("nan"), dtype=dtype, device=DEV)
    got = cuda.quik_gemm_outliers(*args, out=out)
    ref = reference.quik_gemm_outliers(*args)
    _assert_equal("out", got, ref)
    return got


@pytest.mark.parametrize("lines", [1, 2], ids=["lines_rule", "lines_always"])
@pytest.mark.parametrize("rows", [32, 16, 64])
@pytest.mark.parametrize("has_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("w_bits,a_bits", [(4, 4), (8, 8)])
@pytest.mark.parametrize("M,K,N,n_out", OUTL_CASES)
def test_quik_gemm_outliers_bit_identical(monkeypatch: pytest.MonkeyPatch, M: int, K: int, N: int, n_out: int,
                                          w_bits: int, a_bits: int, dtype: torch.dtype, has_bias: bool,
                                          rows: int, lines: int) -> None:
    """lines_always: at M > 8 the fused kernels with whole-line weight loads (quik_gemvo_*_m16*_ln)."""
    monkeypatch.setattr(cuda, "GEMV_ROWS", rows)
    monkeypatch.setattr(cuda, "GEMV_LINES", lines)
    g = _gen("outliers", M, K, N, n_out, w_bits, a_bits, dtype, has_bias, rows)
    got = _check_outliers(_outlier_case(g, M, K, N, n_out, w_bits, a_bits, dtype, has_bias))
    assert not torch.isnan(got).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_quik_gemm_outliers_extreme_values(dtype: torch.dtype) -> None:
    """Products that overflow fp32 (bf16 only) or are tiny: no flush to zero, one rounding each."""
    M, K, N, n_out = 3, 300, 64, 40
    args = list(_outlier_case(_gen("outliers-extreme", dtype), M, K, N, n_out, 4, 4, dtype, True))
    x_out, w_out = args[8], args[9]
    big = 1e30 if dtype == torch.bfloat16 else 3e4
    x_out[0] = big                                  # row 0: huge products (inf in fp32 for bf16)
    x_out[1] = 1e-20 if dtype == torch.bfloat16 else 6e-8   # row 1: tiny products
    if dtype == torch.bfloat16:
        w_out[:, ::2] = 1e10
        w_out[:, 1::2] = 1e-20
    args[3], args[4] = args[3].clone(), args[4].clone()
    args[3][1] = args[4][1] = 1e-30                 # row 1: the integer part tiny too, so the sums show
    got = _check_outliers(tuple(args))
    if dtype == torch.bfloat16:
        assert torch.isinf(got[0]).all()


def test_quik_gemm_outliers_after_the_quantizer() -> None:
    """As quik_linear runs it: the split quantizer, then the fused kernel as its programmatic dependent launch
    (the weight tile is read before the kernel waits for the quantizer, x_outlier after)."""
    g = _gen("outliers-pdl")
    K, N, n_out, dtype = 1100, 304, 96, torch.float16
    _, outl = _split_columns(g, K, n_out)
    x = _activations(g, 4, K, dtype, outl)
    q = cuda.quantize_split(x, outl, 4)
    w = cuda.prepare_weight(_codes(g, N, K - n_out, 4), 4)
    _, _, w_scale, wsum = _epilogue_inputs(g, 4, N)
    w_out = (torch.randn(N, n_out, generator=g, device=DEV) * 0.02).to(dtype)
    _check_outliers((q.codes, w, 4, q.scale, q.zero, 8, w_scale, wsum, q.x_outlier, w_out, None, dtype))


def test_quik_gemm_outliers_beyond_shared_memory_uses_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda, "_GEMVO_SMEM_MAX", 1024)   # as if the outlier columns were ~12000
    _check_outliers(_outlier_case(_gen("outliers-fallback"), 3, 1100, 300, 100, 4, 4, torch.float16, True))


def test_quik_gemm_outliers_rejects_bad_arguments() -> None:
    args = _outlier_case(_gen("outliers-args"), 2, 300, 40, 10, 4, 4, torch.float16, True)
    x_out, w_out, bias = args[8:11]

    def call(**changes):
        a = dict(zip(["x_out", "w_out", "bias"], (x_out, w_out, bias)), **changes)
        return cuda.quik_gemm_outliers(*args[:8], a["x_out"], a["w_out"], a["bias"], torch.float16)

    cases = [(dict(x_out=x_out.to(torch.bfloat16)), r"x_outlier: dtype must be float16"),
             (dict(x_out=x_out[:1]), r"x_outlier: shape must be \[2, \*\]"),
             (dict(x_out=x_out.T), r"x_outlier: (shape|must be contiguous)"),
             (dict(w_out=w_out[:, :9].contiguous()), r"outlier_weight: shape must be \[40, 10\]"),
             (dict(bias=bias.float()), r"bias: dtype must be float16")]
    for change, msg in cases:
        with pytest.raises(KernelError, match=msg):
            call(**change)
