"""The CUDA kernels compile (NVRTC, no GPU needed) with the runtime's own sources and options.

Runs on the CPU-only CI. Skipped only when NVRTC itself cannot be loaded (CuPy or the
nvidia-cuda-nvrtc wheel missing); a compile error is a failure.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quiktool.errors import KernelError
from quiktool.runtime import cuda, reference


def _nvrtc_or_skip() -> None:
    if cuda.nvrtc_version() is None:
        pytest.skip("NVRTC cannot be loaded (install the 'cuda' extra: cupy-cuda13x + nvidia-cuda-nvrtc)")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_compile_all(arch: str) -> None:
    _nvrtc_or_skip()
    cubins = cuda.compile_all(arch)
    assert set(cubins) == set(cuda.KERNELS)
    for filename, cubin in cubins.items():
        found = cuda._cubin_kernels(cubin)
        assert set(cuda.KERNELS[filename]) <= found, f"{filename}: missing {set(cuda.KERNELS[filename]) - found}"


def test_compile_all_rejects_bad_arch() -> None:
    with pytest.raises(KernelError, match="arch"):
        cuda.compile_all("90")


def test_import_without_gpu_and_api_matches_reference() -> None:
    # Importing the module needs neither CuPy nor a GPU; is_available answers a plain bool.
    assert isinstance(cuda.is_available(), bool)
    assert cuda.NAME == "cuda"
    assert cuda.K_ALIGN == reference.K_ALIGN
    assert cuda.ActCodes is reference.ActCodes
    assert cuda.padded_k(1000) == reference.padded_k(1000) == 1024


def test_cpu_tensors_are_rejected_before_any_launch() -> None:
    a = torch.zeros(4, 64, dtype=torch.int8)
    w = torch.zeros(8, 32, dtype=torch.uint8)
    with pytest.raises(KernelError, match="a_codes: must be a CUDA tensor"):
        cuda.int_gemm(a, w, 4)
    x = torch.zeros(4, 80, dtype=torch.float16)
    idx = torch.arange(64, dtype=torch.int32)
    with pytest.raises(KernelError, match="x: must be a CUDA tensor"):
        cuda.quantize_activations(x, idx, idx[:0], 4)
    with pytest.raises(KernelError, match="w_bits must be 4 or 8"):
        cuda.int_gemm(a, w, 3)


def test_compile_wgmma_builds_and_caches(monkeypatch, tmp_path) -> None:
    """kernels/quik_wgmma.cu builds with nvcc for sm_90a (no GPU needed), has every entry point, and a second
    build is the cached file."""
    if cuda.find_nvcc() is None:
        pytest.skip("no nvcc on this machine (it builds the sm_90a wgmma kernel)")
    monkeypatch.setenv("QUIKTOOL_CACHE_DIR", str(tmp_path))
    path = cuda.compile_wgmma()
    assert path.parent == tmp_path / "kernels" and path.suffix == ".cubin"
    assert set(cuda.WGMMA_KERNELS) <= cuda._cubin_kernels(path.read_bytes())
    stamp = path.stat().st_mtime_ns
    assert cuda.compile_wgmma() == path and path.stat().st_mtime_ns == stamp
    assert not list(tmp_path.rglob("*.tmp"))


def test_compile_wgmma_reports_a_missing_nvcc(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("QUIKTOOL_NVCC", str(tmp_path / "no-such-nvcc"))
    assert cuda.find_nvcc() is None
    with pytest.raises(KernelError, match="nvcc not found"):
        cuda.compile_wgmma()


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "kernels").glob("*.cu*")),
                         ids=lambda p: p.name)
def test_kernel_sources_define_each_macro_once(path) -> None:
    """A tuning knob written twice keeps its first default and silently ignores the second (quik_wgmma.cu
    had `#ifndef WG_L2_AHEAD / #define WG_L2_AHEAD 0` above the documented default of 4, so the L2 prefetch
    was off in every build): each kernel file defines each macro once."""
    import collections
    import re

    names = re.findall(r"^\s*#\s*define\s+(\w+)", path.read_text(), flags=re.M)
    twice = sorted(n for n, c in collections.Counter(names).items() if c > 1)
    assert not twice, f"{path.name} defines {twice} more than once"



def test_wgmma_launch_constants_match_the_kernel_defaults() -> None:
    """The launcher sizes shared memory from WG_DEPTH: its copy of the default must be the kernel's (a
    smaller one lets the rings overrun the allocation)."""
    import re

    src = (Path(__file__).resolve().parents[2] / "kernels" / cuda.WGMMA_FILE).read_text()
    m = re.search(r"#ifndef WG_DEPTH\s*\n\s*#define WG_DEPTH (\d+)", src)
    assert m, f"WG_DEPTH has no #ifndef default in {cuda.WGMMA_FILE}"
    assert int(m.group(1)) == cuda._WG_DEPTH, f"WG_DEPTH: kernel default {m.group(1)}, launcher {cuda._WG_DEPTH}"
    assert cuda.wgmma_smem_bytes(1) == 4 * 16384 + 3 * 32768 + 2048 + 1024  # A stages, B slots, factors, slack
    assert cuda.wgmma_smem_bytes(2) == 5 * 16384 + 4 * 32768 + 2048 + 1024
    assert cuda._WG_SMEM == cuda.wgmma_smem_bytes(cuda._WG_DEPTH)
    assert cuda.wgmma_smem_bytes(1, w_bits=8) == 4 * 16384 + 4 * 32768 + 2048 + 1024  # w8: B slots = A stages
    assert cuda._WG_SMEM_W8 == cuda.wgmma_smem_bytes(cuda._WG_DEPTH, w_bits=8) <= 227 * 1024
    # the warp-specialized kernels: WS_STAGES slots of 48 KiB, 384 threads
    for name, value in (("WS_STAGES", cuda._WS_STAGES), ("WS_THREADS", cuda._WS_THREADS)):
        m = re.search(rf"#ifndef {name}\s*\n\s*#define {name} (\d+)", src) or re.search(rf"constexpr int {name} = (\d+);", src)
        assert m and int(m.group(1)) == value, f"{name}: kernel {m and m.group(1)}, launcher {value}"
    assert cuda.wgmma_ws_smem_bytes(4) == 4 * (16384 + 32768) + 2048 + 4 * 16 + 1024
    assert cuda._WS_SMEM == cuda.wgmma_ws_smem_bytes(cuda._WS_STAGES) <= 227 * 1024
    # the register-operand kernels: RS_STAGES activation stages of 32 KiB, 384 threads, 256 x 128 tiles
    for name, value in (("RS_STAGES", cuda._RS_STAGES), ("RS_THREADS", cuda._RS_THREADS), ("RS_BT", cuda._RS_BT),
                        ("RS_BW", cuda._RS_BW)):
        m = re.search(rf"#ifndef {name}\s*\n\s*#define {name} (\d+)", src) or re.search(rf"\b{name} = (\d+)", src)
        assert m and int(m.group(1)) == value, f"{name}: kernel {m and m.group(1)}, launcher {value}"
    assert cuda.wgmma_rs_smem_bytes(5) == 5 * 32768 + 3072 + 5 * 16 + 1024
    assert cuda._RS_SMEM == cuda.wgmma_rs_smem_bytes(cuda._RS_STAGES) <= 227 * 1024


@pytest.mark.parametrize("ws", [True, False])
def test_wgmma_plan_per_kernel_family(monkeypatch, ws: bool) -> None:
    """_wgmma_plan: the warp-specialized kernels (WGMMA_WS: 8-bit weights, WGMMA_WS_W4: 4-bit) with their block
    and shared memory, else the earlier ones; the grid is one block per 128 x 256 output tile either way. (The
    deep-copy 8-bit entry points off here: test_wgmma_plan_deep_copies.)"""
    monkeypatch.setattr(cuda, "WGMMA_WS", ws)
    monkeypatch.setattr(cuda, "WGMMA_WS_W4", ws)
    monkeypatch.setattr(cuda, "WGMMA_W8_DEEP_MAX_M", 0)
    for bits, smem in ((4, cuda._WG_SMEM), (8, cuda._WG_SMEM_W8)):
        assert cuda._wgmma_plan(300, 1000, "f16", bits) == (
            (f"quik_wgmma_ws_f16_w{bits}", 3 * 4, cuda._WS_THREADS, cuda._WS_SMEM) if ws
            else (f"quik_wgmma_f16_w{bits}", 3 * 4, cuda._WG_THREADS, smem))
    assert cuda._wgmma_plan(300, 1024, "bf16", 8, blk=True)[0] == f"quik_wgmma_{'ws_' if ws else ''}bf16_w8_blk"
    assert set(cuda.WGMMA_KERNELS) >= {cuda._wgmma_plan(130, 260, ep, b, blk)[0] for ep in ("f16", "bf16")
                                       for b in (4, 8) for blk in (False, True)}


def test_wgmma_plan_register_operand_kernels(monkeypatch) -> None:
    """From WGMMA_RS_MIN_M tokens (0: never) and WGMMA_RS_MIN_KP codes per row, 4-bit weights take
    quik_wgmma_rs_*: one block per 256 x 128 output tile, RS_THREADS, RS shared memory; 8-bit weights, fewer tokens
    and shorter rows keep their kernels. The defaults: from 2048 tokens on rows of 7680 codes or more (K = 8192
    with up to 512 outliers)."""
    assert (cuda.WGMMA_RS_MIN_M, cuda.WGMMA_RS_MIN_KP) == (2048, 7680)
    monkeypatch.setattr(cuda, "WGMMA_WS", True)
    monkeypatch.setattr(cuda, "WGMMA_WS_W4", True)
    monkeypatch.setattr(cuda, "WGMMA_W4_WIDE_MIN_M", 0)  # (the widening comes first: see the next test)
    assert cuda._wgmma_plan(2048, 8192, "f16", 4, kp=28416)[0] == "quik_wgmma_rs_f16_w4"
    assert cuda._wgmma_plan(2048, 8192, "f16", 4, kp=7936)[0] == "quik_wgmma_rs_f16_w4"   # 8192 - 256 outliers
    assert cuda._wgmma_plan(2048, 13824, "f16", 4, kp=4864)[0] == "quik_wgmma_ws_f16_w4"  # 5120 - 256
    assert cuda._wgmma_plan(2047, 8192, "f16", 4, kp=28416)[0] == "quik_wgmma_ws_f16_w4"
    monkeypatch.setattr(cuda, "WGMMA_RS_MIN_M", 0)
    assert cuda._wgmma_plan(4096, 1000, "f16", 4, kp=28416)[0] == "quik_wgmma_ws_f16_w4"
    monkeypatch.setattr(cuda, "WGMMA_RS_MIN_M", 1024)
    monkeypatch.setattr(cuda, "WGMMA_RS_MIN_KP", 0)
    assert cuda._wgmma_plan(1024, 1000, "f16", 4) == ("quik_wgmma_rs_f16_w4", 4 * 8, cuda._RS_THREADS, cuda._RS_SMEM)
    assert cuda._wgmma_plan(1023, 1000, "f16", 4)[0] == "quik_wgmma_ws_f16_w4"
    assert cuda._wgmma_plan(2048, 1024, "bf16", 4, blk=True)[0] == "quik_wgmma_rs_bf16_w4_blk"
    assert cuda._wgmma_plan(2048, 1024, "i32", 4)[0] == "quik_wgmma_rs_i32_w4"
    assert cuda._wgmma_plan(2048, 1000, "f16", 8)[0] == "quik_wgmma_ws_f16_w8"
    assert set(cuda.WGMMA_KERNELS) >= {cuda._wgmma_plan(2048, 260, ep, 4, blk)[0] for ep in ("f16", "bf16")
                                       for blk in (False, True)}


def test_wgmma_plan_widens_4bit_weights_from_the_rule(monkeypatch) -> None:
    """From WGMMA_W4_WIDE_MIN_M tokens (0: never) 4-bit weights are planned on the 8-bit kernels (their codes
    widened to int8 first, _wgmma_weights), before the register-operand rule; fewer tokens keep the 4-bit
    kernels. The default: from 1024 tokens."""
    assert cuda.WGMMA_W4_WIDE_MIN_M == 1024
    monkeypatch.setattr(cuda, "WGMMA_WS", True)
    monkeypatch.setattr(cuda, "WGMMA_WS_W4", True)
    assert cuda._wgmma_plan(1024, 4096, "f16", 4, kp=4096)[0] == "quik_wgmma_ws_f16_w8"
    assert cuda._wgmma_plan(1023, 4096, "f16", 4, kp=4096)[0] == "quik_wgmma_ws_f16_w4"
    monkeypatch.setattr(cuda, "WGMMA_W4_WIDE_MIN_M", 2048)
    assert cuda._wgmma_plan(2048, 8192, "f16", 4, kp=28416) == ("quik_wgmma_ws_f16_w8", 16 * 32, cuda._WS_THREADS,
                                                               cuda._WS_SMEM)
    assert cuda._wgmma_plan(2048, 1024, "bf16", 4, blk=True)[0] == "quik_wgmma_ws_bf16_w8_blk"
    assert cuda._wgmma_plan(2048, 1000, "i32", 4, kp=64)[0] == "quik_wgmma_ws_i32_w8"
    assert cuda._wgmma_plan(2047, 8192, "f16", 4, kp=28416)[0] == "quik_wgmma_ws_f16_w4"
    monkeypatch.setattr(cuda, "WGMMA_W4_WIDE_MIN_M", 0)
    assert cuda._wgmma_plan(8192, 8192, "f16", 4, kp=4096)[0] == "quik_wgmma_ws_f16_w4"
    assert cuda._wgmma_plan(8192, 8192, "f16", 4, kp=28416)[0] == "quik_wgmma_rs_f16_w4"
    monkeypatch.setattr(cuda, "WGMMA_W4_WIDE_MIN_M", 17)   # widened below 1024 tokens: the deep-copy 8-bit kernel
    assert cuda._wgmma_plan(17, 301, "f16", 4, kp=64)[0] == "quik_wgmma_ws_c3_f16_w8"


_SASS_LINE = re.compile(r"/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*);")


def _sass_functions(text: str) -> dict[str, list[tuple[str, str, str]]]:
    """nvdisasm output -> {function: [(predicate, opcode, operands)]}, with labels as ("", "LABEL", name)."""
    funcs: dict[str, list[tuple[str, str, str]]] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"^\.text\.(\w+):", line.strip())
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        if cur is None:
            continue
        lab = re.match(r"^(\.L\w+):", line.strip())
        if lab:
            cur.append(("", "LABEL", lab.group(1)))
            continue
        m = _SASS_LINE.search(line)
        if m:
            cur.append(((m.group(2) or "").strip(), m.group(3), m.group(4).strip()))
    return funcs


def _written_registers(opcode: str, operands: str) -> set[int]:
    """The general registers an instruction writes (its first operand when that is a register; 2 or 4 of them for
    64- / 128-bit results); none for stores, branches, barriers and wgmma itself (its accumulators are checked by
    ptxas, C7514 / C7515)."""
    if opcode.startswith(("ST", "RED", "ATOM", "BRA", "EXIT", "BAR", "SYNCS", "WARPGROUP", "IGMMA", "HGMMA", "LABEL",
                          "DEPBAR", "MEMBAR", "FENCE", "NOP", "RET", "CALL", "BSSY", "BSYNC", "WARPSYNC", "LDGSTS",
                          "LDGDEPBAR", "ERRBAR", "CCTL", "YIELD")):
        return set()
    m = re.match(r"R(\d+)\b", operands)
    if not m:
        return set()
    width = 4 if ".128" in opcode else 2 if (".64" in opcode or "WIDE" in opcode or opcode.startswith("CS2R")) else 1
    return set(range(int(m.group(1)), int(m.group(1)) + width))


def _register_operand_hazards(instrs: list[tuple[str, str, str]]) -> tuple[int, list[str]]:
    """For every commit group of register-operand wgmmas (IGMMA whose A operand is a register quad, the group closed
    by the one marked gsb0): the instructions that write one of the group's A registers on some path before the
    group is retired (a WARPGROUP.DEPBAR.LE gsb0, N reached after N later groups). Writing them earlier is undefined
    (PTX: wgmma.mma_async reads its register A operand asynchronously), and ptxas does not prevent it: the
    sixteenth session's two-groups-in-flight build gave wrong sums on the H100 because ptxas put the third fragment
    buffer in the second one's registers and rebuilt them while that group ran (docs/PERF_LOG.md, v17b).
    -> (groups checked, hazards)."""
    labels = {ops: i for i, (_, op, ops) in enumerate(instrs) if op == "LABEL"}
    groups, cur = [], set()
    for i, (_, op, ops) in enumerate(instrs):
        if op.startswith("IGMMA"):
            m = re.match(r"R\d+,\s*R(\d+),", ops)
            if m:
                cur |= set(range(int(m.group(1)), int(m.group(1)) + 4))
            if "gsb0" in ops:
                if cur:
                    groups.append((i, cur))
                cur = set()
    hazards = []
    for end, regs in groups:
        stack, seen = [(end + 1, 0)], set()
        while stack:
            i, later = stack.pop()
            if (i, later) in seen or i >= len(instrs):
                continue
            seen.add((i, later))
            pred, op, ops = instrs[i]
            if op.startswith("WARPGROUP.DEPBAR"):
                m = re.search(r"gsb0,\s*0x([0-9a-f]+)", ops)
                if m and later >= int(m.group(1), 16):
                    continue  # retired on this path
            if op.startswith("IGMMA") and "gsb0" in ops:
                later = min(later + 1, 8)
            if _written_registers(op, ops) & regs:
                hazards.append(f"{op} {ops} (group ending at instruction {end})")
            if op.startswith("BRA"):
                m = re.search(r"\((\.L\w+)\)", ops)
                if m and m.group(1) in labels:
                    stack.append((labels[m.group(1)], later))
                if not pred:
                    continue
            if op == "EXIT" and not pred:
                continue
            stack.append((i + 1, later))
    return len(groups), hazards


def test_register_operand_hazard_check_finds_the_known_bug() -> None:
    """The checker below on the pattern of the sixteenth session's wrong build: a group reading R168-R183 still in
    flight (DEPBAR.LE 2 after one later group) when an instruction rebuilds R168; and the same code with the write
    after the retiring DEPBAR, which is fine."""
    def parse(body: str) -> list[tuple[str, str, str]]:
        return _sass_functions(".text.k:\n" + body)["k"]

    head = """
        /*0000*/ IGMMA.64x256x32.S8.S8 R24, R168, gdesc[UR4], R24 ;
        /*0010*/ IGMMA.64x256x32.S8.S8 R24, R180, gdesc[UR4], R24, gsb0 ;
        /*0020*/ WARPGROUP.DEPBAR.LE gsb0, 0x2 ;
    """
    bad = head + "        /*0030*/ LOP3.LUT R168, R3, 0x1, RZ, 0xc, !PT ;\n        /*0040*/ EXIT ;\n"
    good = head + """
        /*0030*/ IGMMA.64x256x32.S8.S8 R24, R152, gdesc[UR4], R24, gsb0 ;
        /*0040*/ IGMMA.64x256x32.S8.S8 R24, R156, gdesc[UR4], R24, gsb0 ;
        /*0050*/ WARPGROUP.DEPBAR.LE gsb0, 0x2 ;
        /*0060*/ LOP3.LUT R168, R3, 0x1, RZ, 0xc, !PT ;
        /*0070*/ EXIT ;
    """
    n, hazards = _register_operand_hazards(parse(bad))
    assert n == 1 and len(hazards) == 1 and "R168" in hazards[0]
    n, hazards = _register_operand_hazards(parse(good))
    assert n == 3 and hazards == [], hazards
    # a loop: the write sits at the loop head, reached again by the back branch before the group is retired
    loop = """
        .L_x_1:
        /*0000*/ LOP3.LUT R170, R3, 0x1, RZ, 0xc, !PT ;
        /*0010*/ IGMMA.64x256x32.S8.S8 R24, R168, gdesc[UR4], R24, gsb0 ;
        /*0020*/ WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*0030*/ @P0 BRA `(.L_x_1) ;
        /*0040*/ EXIT ;
    """
    assert len(_register_operand_hazards(parse(loop))[1]) == 1


def test_register_operand_wgmma_kernels_keep_their_fragments_until_retired(tmp_path, monkeypatch) -> None:
    """Every register-operand wgmma entry point of the built cubin (quik_wgmma_rs_*): no instruction writes a
    group's A-operand registers before that group is retired (see _register_operand_hazards). The GPU tests catch
    such a race only when its timing corrupts a sum; this reads the SASS that ptxas produced."""
    if cuda.find_nvcc() is None:
        pytest.skip("no nvcc on this machine (it builds the sm_90a wgmma kernel)")
    nvdisasm = cuda.find_nvdisasm()
    if nvdisasm is None:
        pytest.skip("no nvdisasm (the nvidia-cuda-nvdisasm wheel of the test extra, or QUIKTOOL_NVDISASM)")
    monkeypatch.setenv("QUIKTOOL_CACHE_DIR", str(tmp_path))
    sass = subprocess.run([nvdisasm, str(cuda.compile_wgmma())], capture_output=True, text=True, check=True).stdout
    funcs = _sass_functions(sass)
    rs = [name for name in cuda.WGMMA_KERNELS if "_rs_" in name]
    assert rs and set(rs) <= set(funcs)
    for name in rs:
        n, hazards = _register_operand_hazards(funcs[name])
        assert n >= 2, f"{name}: no register-operand wgmma groups found in its SASS ({n})"
        assert not hazards, f"{name}: A-operand registers written while their wgmma group may run: {hazards[:3]}"


def test_cluster_quantizer_choice(monkeypatch) -> None:
    """quantize_split's kernel: the cluster one on sm_90+ for rows of QUANT_CLUSTER_MIN_K columns or more,
    the one-CTA one otherwise, and never when QUANT_CLUSTER is off."""
    monkeypatch.setattr(cuda, "QUANT_CLUSTER", True)
    monkeypatch.setattr(cuda, "QUANT_CLUSTER_MIN_K", 16384)
    assert cuda._cluster_quant(28672, 90) and cuda._cluster_quant(16384, 90)
    assert not cuda._cluster_quant(13824, 90) and not cuda._cluster_quant(28672, 80)
    monkeypatch.setattr(cuda, "QUANT_CLUSTER", False)
    assert not cuda._cluster_quant(28672, 90)
    assert cuda._cluster_plan(28672) == (256, 72 * 112) and cuda._cluster_plan(80) == (64, 72)


def test_rows_quantizer_plan(monkeypatch) -> None:
    """Rows mode: from ACT_ROWS_MIN_M rows, K % 8 == 0 and x 16-byte aligned; the fewest chunks per thread
    (1, 2, 4, 8) that keep a row within ~ACT_ROWS_THREADS threads, whole warps, at most 512 threads;
    shared memory = bitmap and prefix words + the code row + the outlier indices."""
    monkeypatch.setattr(cuda, "ACT_ROWS", True)
    monkeypatch.setattr(cuda, "ACT_ROWS_MIN_M", 17)
    monkeypatch.setattr(cuda, "ACT_ROWS_THREADS", 256)
    kp = cuda.padded_k
    assert cuda._rows_plan(2048, 4096, kp(3840), 256) == (2, 256, 8 * 128 + 3840 + 4 * 256)
    assert cuda._rows_plan(2048, 28672, kp(28416), 256) == (8, 448, 8 * 896 + 28416 + 4 * 256)
    assert cuda._rows_plan(17, 11008, kp(10752), 256)[:2] == (8, 192)   # 1376 chunks: 172 per 8 -> 192 threads
    assert cuda._rows_plan(17, 5120, kp(5120), 0)[:2] == (4, 160)
    assert cuda._rows_plan(17, 64, 64, 0) == (1, 32, 8 * 2 + 64)
    assert cuda._rows_plan(17, 32768, kp(32768), 0)[:2] == (8, 512)
    for args in ((16, 4096, 4096, 0, 0), (17, 4100, 4096, 0, 0), (17, 4096, 4096, 0, 8), (17, 32776, 32768, 0, 0)):
        assert cuda._rows_plan(*args) is None, args
    monkeypatch.setattr(cuda, "ACT_ROWS_THREADS", 512)
    assert cuda._rows_plan(2048, 8192, kp(8192), 0)[:2] == (2, 512)
    monkeypatch.setattr(cuda, "ACT_ROWS_MIN_M", 2048)
    assert cuda._rows_plan(2047, 4096, 4096, 0) is None
    assert cuda._rows_plan(128, 4096, 4096, 0, 0, 17) is not None and cuda._rows_plan(16, 4096, 4096, 0, 0, 17) is None
    monkeypatch.setattr(cuda, "ACT_ROWS", False)
    assert cuda._rows_plan(2048, 4096, 4096, 0) is None


def test_act_threads_rule(monkeypatch) -> None:
    """Quantizer threads per row: ~16 columns per thread in [128, 1024]; from ACT_MANY_ROWS rows half of
    that, at least 256 (ACT_MANY_ROWS = 0: never)."""
    monkeypatch.setattr(cuda, "ACT_MANY_ROWS", 512)
    assert [cuda._act_threads(k, k, 1) for k in (64, 4096, 5120, 11008, 28672)] == [128, 256, 512, 1024, 1024]
    assert [cuda._act_threads(k, k, 511) for k in (4096, 11008)] == [256, 1024]
    assert [cuda._act_threads(k, k, 512) for k in (64, 4096, 5120, 11008, 28672)] == [128, 256, 256, 512, 512]
    monkeypatch.setattr(cuda, "ACT_MANY_ROWS", 0)
    assert cuda._act_threads(11008, 11008, 4096) == 1024


def test_gemv_rows_rule(monkeypatch) -> None:
    """The small-M kernel's block size: 64 rows at M <= 8 once N >= 64 x SMs, else 32; 32 rows at M > 8 once
    N >= 48 x SMs, else 16; QUIKTOOL_GEMV_RULE=m keeps 32 / 16 everywhere; GEMV_ROWS or an explicit rows
    argument overrides both."""
    monkeypatch.setattr(cuda, "GEMV_RULE", "n")
    monkeypatch.setattr(cuda, "GEMV_ROWS", None)
    assert [cuda._gemv_rows(m, 28672, 132) for m in (1, 8, 9, 16)] == [64, 64, 32, 32]
    assert [cuda._gemv_rows(m, 8192, 132) for m in (1, 16)] == [32, 16]   # 128 blocks of 64 < 132 SMs at M = 1
    assert cuda._gemv_rows(16, 8192, 132, lines=True) == 32 and cuda._gemv_rows(16, 5120, 132, lines=True) == 16
    assert cuda._gemv_rows(1, 8448, 132) == 64 and cuda._gemv_rows(1, 8447, 132) == 32
    assert cuda._gemv_rows(16, 6336, 132, lines=True) == 32 and cuda._gemv_rows(16, 6335, 132, lines=True) == 16
    assert cuda._gemv_rows(1, 6336, 132, lines=True) == 32  # no whole-line kernel at M <= 8: the M <= 8 rule
    assert cuda._gemv_plan(1, 28672, 4, "f16", sms=132) == ("quik_gemv_f16_w4_m8_r64", 448, 256, 0)
    assert cuda._gemv_plan(16, 28672, 8, "bf16", sms=132) == ("quik_gemv_bf16_w8_m16", 896, 256, 0)
    assert cuda._gemv_plan(16, 28672, 4, "i32", rows=16, sms=132)[:2] == ("quik_gemv_i32_w4_m16_r16", 1792)
    monkeypatch.setattr(cuda, "GEMV_RULE", "m")
    assert [cuda._gemv_rows(m, 28672, 132) for m in (1, 16)] == [32, 16]


def test_split_k_rule(monkeypatch) -> None:
    """Split-K of the mid tiles (132 SMs): floor(2 x 132 / grid) slices, at most 8 and one per 8 K tiles, two only
    from K = 8192; only the mid tiles; GEMM_SPLIT_K overrides (1: never), capped at one slice per K tile."""
    monkeypatch.setattr(cuda, "_device_info", lambda index: ("sm_90", 132, 90))
    monkeypatch.setattr(cuda, "GEMM_SPLIT_K", None)
    mid = "quik_gemm_f16_w4_mid"
    assert cuda._split_k(mid, 64, 4096, 0) == 4       # 256 blocks
    assert cuda._split_k(mid, 80, 5120, 0) == 3       # 240
    assert cuda._split_k(mid, 128, 8192, 0) == 2      # 256
    assert cuda._split_k(mid, 128, 4096, 0) == 1      # two slices only from K = 8192
    assert cuda._split_k(mid, 64, 1024, 0) == 1       # 16 K tiles allow two slices, and two need K >= 8192
    assert cuda._split_k(mid, 133, 8192, 0) == 1      # more blocks than SMs already
    assert cuda._split_k(mid, 2, 4096, 0) == 8        # at most 8
    assert cuda._split_k(mid, 64, 1536, 0) == 3       # 24 K tiles: slices of 8
    assert cuda._split_k(mid, 64, 512, 0) == 1        # 8 K tiles: one slice
    assert cuda._split_k("quik_gemm_f16_w4_big", 8, 4096, 0) == 1
    assert cuda._split_k("quik_gemv_f16_w4_m16", 8, 4096, 0) == 1
    assert cuda._plan(128, 4096, 4, "f16", 0)[:2] == (mid, 64) and cuda.mma_splits(128, 4096, 4096, 4, 0) == 4
    assert cuda.mma_splits(128, 5120, 13824, 8, 0) == 3
    assert cuda.mma_splits(128, 11008, 4096, 4, 0) == 1   # 172 blocks
    assert cuda.mma_splits(2048, 4096, 4096, 4, 0) == 1   # big tiles
    monkeypatch.setattr(cuda, "GEMM_SPLIT_K", 1)
    assert cuda._split_k(mid, 64, 4096, 0) == 1
    monkeypatch.setattr(cuda, "GEMM_SPLIT_K", 5)
    assert cuda._split_k(mid, 1000, 4096, 0) == 5 and cuda._split_k(mid, 64, 192, 0) == 3


def test_split_k_add_kernel_rule(monkeypatch) -> None:
    """The split-K add kernel: slices loaded in groups of 8 from SPLITK_GROUP_MIN slices (5), one at a time below;
    0 = never grouped; every name the rule gives is one of quik_gemm.cu's entry points."""
    assert cuda.SPLITK_GROUP_MIN == 5
    assert [cuda._splitk_kernel("f16", s) for s in (2, 4, 5, 8)] == [
        "quik_splitk_g1_f16", "quik_splitk_g1_f16", "quik_splitk_f16", "quik_splitk_f16"]
    assert cuda._splitk_kernel("i32", 11) == "quik_splitk_i32"
    assert cuda._splitk_kernel("bf16", 3) == "quik_splitk_g1_bf16"
    monkeypatch.setattr(cuda, "SPLITK_GROUP_MIN", 0)
    assert cuda._splitk_kernel("f16", 8) == "quik_splitk_g1_f16"
    monkeypatch.setattr(cuda, "SPLITK_GROUP_MIN", 1)
    assert cuda._splitk_kernel("bf16", 2) == "quik_splitk_bf16"
    names = {cuda._splitk_kernel(ep, s) for ep in ("i32", "f16", "bf16") for s in (1, 8)}
    monkeypatch.setattr(cuda, "SPLITK_GROUP_MIN", 0)
    names |= {cuda._splitk_kernel(ep, 8) for ep in ("i32", "f16", "bf16")}
    assert len(names) == 6 and names <= set(cuda.KERNELS["quik_gemm.cu"])


def test_wgmma_split_rule(monkeypatch) -> None:
    """Split-K on the wgmma kernel (132 SMs, the rule's 80 tiles): from WGMMA_SPLIT_MIN_TILES to 79 tiles,
    floor(132 / tiles) slices, at most 4 and one per 8 K tiles of 128 bytes (8-bit weights from 256 tokens); from
    WGMMA_FEW_SPLIT_MIN_TILES to WGMMA_SPLIT_MIN_TILES - 1 tiles, 4-bit weights only, at most 8 slices and one per 4
    K tiles; else none."""
    monkeypatch.setattr(cuda, "_device_info", lambda index: ("sm_90", 132, 90))
    monkeypatch.setattr(cuda, "WGMMA_MIN_TILES", None)
    monkeypatch.setattr(cuda, "WGMMA_SPLIT_MIN_TILES", 32)
    assert cuda.WGMMA_FEW_SPLIT_MIN_TILES == 16, "the default"
    assert cuda._wgmma_tiles(512, 4096, 0) == (64, 80)
    assert cuda._split_rule(512, 4096, 4096, 4, 0) == 2       # 64 tiles: 128 blocks
    assert cuda._split_rule(256, 5120, 5120, 4, 0) == 3       # 40 tiles: 120
    assert cuda._split_rule(128, 8192, 8192, 4, 0) == 4       # 32 tiles, at most 4
    assert cuda._split_rule(128, 7936, 8192, 4, 0) == 4       # 31 tiles: the few-tile rule, 132 // 31
    assert cuda._split_rule(128, 4096, 4096, 4, 0) == 8       # 16 tiles: 128 blocks
    assert cuda._split_rule(128, 4096, 3840, 4, 0) == 7       # 30 K tiles: slices of >= 4
    assert cuda._split_rule(128, 5120, 5120, 4, 0) == 6       # 20 tiles: 120 blocks
    assert cuda._split_rule(128, 4096, 1024, 4, 0) == 2       # 8 K tiles
    assert cuda._split_rule(128, 3840, 4096, 4, 0) == 1       # 15 tiles: below WGMMA_FEW_SPLIT_MIN_TILES
    assert cuda._split_rule(128, 4096, 4096, 8, 0) == 1       # 8-bit weights: not below WGMMA_SPLIT_MIN_TILES
    monkeypatch.setattr(cuda, "WGMMA_FEW_SPLIT_MIN_TILES", 0)
    assert cuda._split_rule(128, 4096, 4096, 4, 0) == 1 and cuda._split_rule(128, 7936, 8192, 4, 0) == 1
    assert cuda._split_rule(128, 8192, 8192, 4, 0) == 4
    assert cuda._split_rule(512, 5120, 5120, 4, 0) == 1       # 80 tiles: the unsplit rule
    assert cuda._split_rule(512, 4096, 1024, 4, 0) == 1       # 8 K tiles: one slice
    assert cuda._split_rule(512, 4096, 2048, 4, 0) == 2
    assert cuda._split_rule(128, 8192, 8192, 8, 0) == 1    # 8-bit weights from 256 tokens
    assert cuda._split_rule(256, 5120, 5120, 8, 0) == 3
    monkeypatch.setattr(cuda, "WGMMA_SPLIT_MIN_TILES", 0)
    assert cuda._split_rule(512, 4096, 4096, 4, 0) == 1
    assert {"quik_wgmma_ws_sk_w4", "quik_wgmma_ws_sk_w8"} <= set(cuda.WGMMA_KERNELS)


def test_wgmma_split_rule_fits_clusters(monkeypatch) -> None:
    """With cluster split-K (the default) and the device's cluster counts known (H200's, s29b), the rule takes the
    most slices, up to its own count, whose clusters of one tile each all run at once; where none do it keeps its
    count (then the plane kernels run); unknown counts (no GPU) change nothing."""
    monkeypatch.setattr(cuda, "_device_info", lambda index: ("sm_90", 132, 90))
    monkeypatch.setattr(cuda, "WGMMA_MIN_TILES", None)
    monkeypatch.setattr(cuda, "WGMMA_SPLIT_MIN_TILES", 32)
    assert cuda.WGMMA_CLUSTER_SPLIT, "the default"
    shapes = ((128, 4096, 4096), (128, 5120, 5120), (128, 4096, 11008), (128, 11008, 4096), (512, 4096, 4096),
              (128, 8192, 28672))
    before = {shape: cuda._split_rule(*shape, 4, 0) for shape in shapes}
    assert list(before.values()) == [8, 6, 8, 3, 2, 4]
    assert cuda.WGMMA_CLUSTER_EXTRA_KT == 4, "the default"
    monkeypatch.setitem(cuda._CLUSTERS, 0, {2: 66, 3: 39, 4: 30, 5: 22, 6: 17, 7: 15, 8: 15})
    assert cuda._split_rule(128, 4096, 4096, 4, 0) == 6       # 16 tiles: 8 / 7 slices fit 15 clusters, 6 fit 17
    assert cuda._split_rule(128, 5120, 5120, 4, 0) == 5       # 20 tiles: 22 clusters of 5
    assert cuda._split_rule(128, 4096, 11008, 4, 0) == 6      # 86 K tiles: 14.3 per slice instead of 10.75
    assert cuda._split_rule(128, 11008, 4096, 4, 0) == 3      # 43 tiles: 2 slices fit, but 16 K tiles, not 10.7
    assert cuda._split_rule(512, 4096, 4096, 4, 0) == 2       # 64 tiles: 66 clusters of 2
    assert cuda._split_rule(128, 8192, 28672, 4, 0) == 4      # 32 tiles: 3 slices fit, but 74.7 K tiles, not 56
    monkeypatch.setattr(cuda, "WGMMA_CLUSTER_EXTRA_KT", 1 << 20)
    assert cuda._split_rule(128, 11008, 4096, 4, 0) == 2 and cuda._split_rule(128, 8192, 28672, 4, 0) == 3
    monkeypatch.setattr(cuda, "WGMMA_CLUSTER_EXTRA_KT", 4)
    assert cuda._cluster_fits(0, 2, 66) and not cuda._cluster_fits(0, 2, 67) and not cuda._cluster_fits(0, 9, 1)
    monkeypatch.setitem(cuda._CLUSTERS, 0, {s: 0 for s in range(2, 9)})
    assert {shape: cuda._split_rule(*shape, 4, 0) for shape in before} == before
    monkeypatch.setitem(cuda._CLUSTERS, 0, {2: 66, 3: 39, 4: 30, 5: 22, 6: 17, 7: 15, 8: 15})
    monkeypatch.setattr(cuda, "WGMMA_CLUSTER_SPLIT", False)
    assert {shape: cuda._split_rule(*shape, 4, 0) for shape in before} == before


def test_wgmma_narrow_tile_rule(monkeypatch) -> None:
    """Tile widths of the warp-specialized wgmma kernel (132 SMs, the rule's 80 tiles): a narrower one where its
    waves x (width + 200) is at most 0.95 of the 256-wide tiles' (ties: the wider), never instead of a split-K plan or
    with blocked outputs."""
    monkeypatch.setattr(cuda, "_device_info", lambda index: ("sm_90", 132, 90))
    monkeypatch.setattr(cuda, "WGMMA_MIN_TILES", None)
    monkeypatch.setattr(cuda, "WGMMA_SPLIT_MIN_TILES", 32)
    monkeypatch.setattr(cuda, "WGMMA_BN", None)
    shape = cuda._wgmma_shape
    assert shape(512, 5120, 5120, 4, 0) == (160, 1)      # 80 tiles of 256 in one wave -> 128 of 160
    assert shape(1024, 5120, 5120, 8, 0) == (160, 1)     # 160 tiles -> 256: two waves either way, 360 / 456 each
    assert shape(512, 11008, 4096, 4, 0) == (176, 1)     # 172 tiles, two waves of 256 -> two of 176 (252 tiles)
    assert shape(512, 13824, 5120, 4, 0) == (224, 1)     # 216 -> 248 tiles (176: 316, three waves)
    assert shape(512, 28672, 8192, 4, 0) == (224, 1)     # 448 -> 512 tiles: 3.9 waves of 224 (176: 4.9)
    assert shape(128, 28672, 8192, 4, 0) == (224, 1)     # 112 -> 128 tiles
    assert shape(512, 4096, 4096, 4, 0) == (256, 2)      # split-K stays
    assert shape(256, 5120, 5120, 4, 0) == (256, 3)
    assert shape(2048, 8192, 8192, 8, 0) == (256, 1)     # whole waves already
    assert shape(512, 8192, 8192, 4, 0) == (256, 1)
    assert shape(2048, 11008, 4096, 8, 0) == (256, 1)    # 688 tiles: 5.2 waves; 224: 6.1, 176: 7.6
    assert shape(512, 5120, 5120, 4, 0, 2560) == (256, 1)    # blocked outputs
    assert cuda.wgmma_splits(512, 5120, 5120, 4, 0) == 1 and cuda.wgmma_splits(512, 4096, 4096, 4, 0) == 2
    monkeypatch.setattr(cuda, "WGMMA_BN", 256)               # off
    assert shape(512, 5120, 5120, 4, 0) == (256, 1) and shape(512, 4096, 4096, 4, 0) == (256, 2)
    monkeypatch.setattr(cuda, "WGMMA_BN", 176)               # forced wherever it has enough tiles
    assert shape(512, 4096, 4096, 4, 0) == (176, 1) and shape(2048, 8192, 8192, 8, 0) == (176, 1)
    assert shape(256, 4096, 4096, 4, 0) == (256, 4)          # 48 tiles of 176: below the rule's 80
    assert shape(512, 5120, 5120, 4, 0, 2560) == (256, 1)
    monkeypatch.setattr(cuda, "WGMMA_MIN_TILES", 0)
    assert shape(256, 4096, 4096, 4, 0) == (176, 1)
    monkeypatch.setattr(cuda, "WGMMA_BN", 128)               # no such entry point: refused, not ignored
    with pytest.raises(KernelError, match="QUIKTOOL_WGMMA_BN=128 is not accepted; use 256 .never narrow., one of "
                                          "160, 176, 224"):
        shape(512, 5120, 5120, 4, 0)


@pytest.mark.parametrize("bn", [160, 176, 224])
def test_wgmma_plan_narrow_tiles(monkeypatch, bn: int) -> None:
    """_wgmma_plan with a narrow width: quik_wgmma_ws_n<bn>_*, one block per 128 x bn tile, the ws block and smem;
    every such entry point is in WGMMA_KERNELS. (The deep-copy 8-bit entry points off here.)"""
    monkeypatch.setattr(cuda, "WGMMA_WS", True)
    monkeypatch.setattr(cuda, "WGMMA_WS_W4", True)
    monkeypatch.setattr(cuda, "WGMMA_W4_WIDE_MIN_M", 1024)
    monkeypatch.setattr(cuda, "WGMMA_W8_DEEP_MAX_M", 0)
    for bits in (4, 8):
        assert cuda._wgmma_plan(300, 1000, "f16", bits, bn=bn) == (
            f"quik_wgmma_ws_n{bn}_f16_w{bits}", 3 * -(-1000 // bn), cuda._WS_THREADS, cuda._WS_SMEM)
    assert cuda._wgmma_plan(1024, 1000, "bf16", 4, bn=bn)[0] == f"quik_wgmma_ws_n{bn}_bf16_w8"   # widened
    names = {cuda._wgmma_plan(130, 260, ep, b, bn=bn)[0] for ep in ("i32", "f16", "bf16") for b in (4, 8)}
    assert len(names) == 6 and names <= set(cuda.WGMMA_KERNELS)


def test_wgmma_plan_deep_copies(monkeypatch) -> None:
    """8-bit weights below WGMMA_W8_DEEP_MAX_M tokens (default 768; 0: never) take the deep-copy entry points
    quik_wgmma_ws_c3_* with their twins' grid, block and smem, for every width, the blocked output and split-K;
    4-bit weights never, widened ones (from 1024 tokens) neither; all of them are in WGMMA_KERNELS."""
    assert cuda.WGMMA_W8_DEEP_MAX_M == 768
    monkeypatch.setattr(cuda, "WGMMA_WS", True)
    monkeypatch.setattr(cuda, "WGMMA_WS_W4", True)
    monkeypatch.setattr(cuda, "WGMMA_W4_WIDE_MIN_M", 1024)
    plan = cuda._wgmma_plan
    assert plan(300, 1000, "f16", 8) == ("quik_wgmma_ws_c3_f16_w8", 3 * 4, cuda._WS_THREADS, cuda._WS_SMEM)
    assert plan(767, 1000, "f16", 8)[0] == "quik_wgmma_ws_c3_f16_w8"
    assert plan(768, 1000, "f16", 8)[0] == "quik_wgmma_ws_f16_w8"
    assert plan(300, 1024, "bf16", 8, blk=True)[0] == "quik_wgmma_ws_c3_bf16_w8_blk"
    for bn in cuda.WGMMA_NARROW_BNS:
        assert plan(300, 1000, "i32", 8, bn=bn) == (f"quik_wgmma_ws_c3_n{bn}_i32_w8", 3 * -(-1000 // bn),
                                                    cuda._WS_THREADS, cuda._WS_SMEM)
    assert plan(300, 1000, "f16", 4)[0] == "quik_wgmma_ws_f16_w4"          # 4-bit weights keep two tiles
    assert plan(1024, 1000, "f16", 4)[0] == "quik_wgmma_ws_f16_w8"         # widened: from 1024 tokens, two
    monkeypatch.setattr(cuda, "WGMMA_W8_DEEP_MAX_M", 1024)
    assert plan(1023, 1000, "f16", 8)[0] == "quik_wgmma_ws_c3_f16_w8"
    assert cuda._wgmma_split_kernel(plan(300, 1000, "i32", 8)[0]) == "quik_wgmma_ws_c3_sk_w8"
    assert cuda._wgmma_split_kernel(plan(1030, 1000, "i32", 8)[0]) == "quik_wgmma_ws_sk_w8"
    assert cuda._wgmma_split_kernel(plan(300, 1000, "i32", 4)[0]) == "quik_wgmma_ws_sk_w4"
    assert cuda._wgmma_cluster_kernel(plan(300, 1000, "bf16", 8)[0], "bf16") == "quik_wgmma_ws_c3_cl_bf16_w8"
    assert cuda._wgmma_cluster_kernel(plan(1030, 1000, "f16", 8)[0], "f16") == "quik_wgmma_ws_cl_f16_w8"
    assert cuda._wgmma_cluster_kernel(plan(300, 1000, "i32", 4)[0], "i32") == "quik_wgmma_ws_cl_i32_w4"
    deep = {plan(m, 260, ep, 8, blk, bn=bn)[0] for m in (17, 300) for ep in ("i32", "f16", "bf16")
            for blk in (False, True) for bn in (256, *cuda.WGMMA_NARROW_BNS) if not (blk and (ep == "i32" or bn != 256))}
    deep |= {"quik_wgmma_ws_c3_sk_w8"} | {cuda._wgmma_cluster_kernel(plan(300, 260, ep, 8)[0], ep)
                                          for ep in ("i32", "f16", "bf16")}
    assert deep == {n for n in cuda.WGMMA_KERNELS if "_c3_" in n} and len(deep) == 18
    clusters = {cuda._wgmma_cluster_kernel(plan(m, 260, ep, b)[0], ep) for m in (17, 300, 1030)
                for ep in ("i32", "f16", "bf16") for b in (4, 8)}
    assert clusters == {n for n in cuda.WGMMA_KERNELS if "_cl_" in n} and len(clusters) == 9
    monkeypatch.setattr(cuda, "WGMMA_W8_DEEP_MAX_M", 0)
    assert plan(300, 1000, "f16", 8)[0] == "quik_wgmma_ws_f16_w8"


def test_gemv_lines_rule(monkeypatch) -> None:
    """The whole-line 16-token kernels (_ln): taken unless the grid fits one wave of the fragment kernel and
    not of the whole-line one; never for M <= 8; QUIKTOOL_GEMV_LINES 0 / 2 force it, other values are refused."""
    assert cuda._gemv_plan(16, 28672, 4, "f16", sms=132, lines=True)[0] == "quik_gemv_f16_w4_m16_ln"
    assert cuda._gemv_plan(9, 5120, 8, "i32", sms=132, lines=True)[0] == "quik_gemv_i32_w8_m16_r16_ln"
    assert cuda._gemv_plan(8, 8192, 4, "f16", sms=132, lines=True)[0] == "quik_gemv_f16_w4_m8"
    monkeypatch.setattr(cuda, "_device_info", lambda index: ("sm_90", 132, 90))
    monkeypatch.setattr(cuda, "_resident_blocks", lambda index, name, block, smem: 2 if name.endswith("_ln") else 3)
    monkeypatch.setattr(cuda, "GEMV_LINES", 1)
    rows = lambda N: cuda._plan(16, N, 4, "f16", 0)  # noqa: E731
    assert rows(4096)[:2] == ("quik_gemv_f16_w4_m16_r16_ln", 256)   # one wave either way
    assert rows(5120)[:2] == ("quik_gemv_f16_w4_m16_r16", 320)      # 320 blocks: 1 wave of 3 / SM, 2 of 2 / SM
    assert rows(8192)[:2] == ("quik_gemv_f16_w4_m16_ln", 256)       # 32 rows for _ln (N >= 48 x SMs): 1 wave
    assert rows(11008)[:2] == ("quik_gemv_f16_w4_m16", 344)         # 32 rows (N >= 64 x SMs), the same
    assert rows(13824)[:2] == ("quik_gemv_f16_w4_m16_ln", 432)      # two waves either way
    assert cuda._plan(8, 13824, 4, "f16", 0)[0] == "quik_gemv_f16_w4_m8_r64"
    monkeypatch.setattr(cuda, "GEMV_LINES", 2)
    assert rows(5120)[0].endswith("_ln")
    monkeypatch.setattr(cuda, "GEMV_LINES", 0)
    assert not rows(13824)[0].endswith("_ln")
    monkeypatch.setattr(cuda, "GEMV_LINES", 3)
    with pytest.raises(KernelError, match="QUIKTOOL_GEMV_LINES=3 is not accepted; use 1 .the rule., 0"):
        rows(4096)
    monkeypatch.setenv("QUIKTOOL_GEMV_LINES", "yes")
    with pytest.raises(KernelError, match="QUIKTOOL_GEMV_LINES must be an integer, got 'yes'"):
        cuda._env_int("QUIKTOOL_GEMV_LINES", 1)  # what the module runs at import


def test_outlier_lanes_match_the_reference() -> None:
    """The fused decode outlier product sums in reference.outlier_sum's lanes: the kernel's copy of the lane
    count must be the reference's (both combine four lanes as (s0 + s1) + (s2 + s3))."""
    src = (Path(__file__).resolve().parents[2] / "kernels" / "quik_gemm.cu").read_text()
    m = re.search(r"constexpr int OUTL_LANES = (\d+);", src)
    assert m, "OUTL_LANES not found in quik_gemm.cu"
    assert int(m.group(1)) == reference.OUTLIER_LANES == 4


def test_kernel_source_follows_the_override_folder(monkeypatch, tmp_path) -> None:
    """QUIKTOOL_KERNELS_DIR is read per call: a process that switches folders gets each folder's text
    (headers inlined from the same folder), and unsetting it gives the shipped sources again."""
    shipped = cuda._source("quik_gemm.cu")
    (tmp_path / "quik_ptx.cuh").write_text("// ptx copy\n")
    (tmp_path / "quik_gemm.cu").write_text('// copy\n#include "quik_ptx.cuh"\n')
    monkeypatch.setenv("QUIKTOOL_KERNELS_DIR", str(tmp_path))
    assert cuda._source("quik_gemm.cu") == "// copy\n// ptx copy\n\n"
    monkeypatch.delenv("QUIKTOOL_KERNELS_DIR")
    assert cuda._source("quik_gemm.cu") == shipped


@pytest.mark.parametrize("value,expected", [(None, None), ("0", None), ("1", cuda.FP8_FIRST_RULE)],
                         ids=["unset", "0", "1"])
def test_fp8_first_rule_is_off_unless_asked_for(monkeypatch, value, expected) -> None:
    """The W4A4 FP8-first rule is off by default since the fifteenth session (wgmma was faster on every layer it
    sent to FP8); QUIKTOOL_WGMMA_FP8_FIRST=1 turns it back on. The module reads the variable at import, so each
    setting imports it in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "QUIKTOOL_WGMMA_FP8_FIRST"}
    if value is not None:
        env["QUIKTOOL_WGMMA_FP8_FIRST"] = value
    code = "import json; from quiktool.runtime import cuda; print(json.dumps(cuda.WGMMA_FP8_FIRST))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got == (list(expected) if expected is not None else None)


def test_wgmma_persistent_grid_rule(monkeypatch) -> None:
    """QUIKTOOL_WGMMA_PERSIST: the unsplit 8-bit warp-specialized entry points (the kernels whose blocks loop over
    output tiles, 4-bit weights widened included) get one block per SM at most; every other entry point, and every
    plan with the knob off, one block per tile."""
    monkeypatch.setattr(cuda, "_device_info", lambda index: ("sm_90", 132, 90))
    monkeypatch.setattr(cuda, "WGMMA_PERSIST", True)
    for name in ("quik_wgmma_ws_f16_w8", "quik_wgmma_ws_c3_bf16_w8_blk", "quik_wgmma_ws_n224_i32_w8"):
        assert cuda._persist_grid(0, name, 256) == 132 and cuda._persist_grid(0, name, 100) == 100
    monkeypatch.setattr(cuda, "WGMMA_PERSIST_GRID", 3)
    assert cuda._persist_grid(0, "quik_wgmma_ws_f16_w8", 256) == 3
    for name in ("quik_wgmma_ws_f16_w4", "quik_wgmma_rs_f16_w4", "quik_wgmma_f16_w8", "quik_wgmma_ws_f16_w4_blk"):
        assert cuda._persist_grid(0, name, 256) == 256, name
    # widened 4-bit weights plan an 8-bit entry point (from WGMMA_W4_WIDE_MIN_M tokens), which then loops
    assert cuda._wgmma_plan(2048, 4096, "f16", 4, kp=4096)[0].endswith("_w8")
    monkeypatch.setattr(cuda, "WGMMA_PERSIST", False)
    assert cuda._persist_grid(0, "quik_wgmma_ws_f16_w8", 256) == 256


def test_unsplit_wgmma_pdl_rule(monkeypatch) -> None:
    """Unsplit wgmma launches: programmatic dependent launches for the warp-specialized 4-bit entry points whose
    weights were not widened just before; 8-bit ones only with PDL_WGMMA_UNSPLIT_W8; the earlier kernels never."""
    monkeypatch.setattr(cuda, "PDL_WGMMA_UNSPLIT", True)
    monkeypatch.setattr(cuda, "PDL_WGMMA_UNSPLIT_W8", False)
    assert cuda._pdl_unsplit("quik_wgmma_ws_n160_f16_w4", True) and cuda._pdl_unsplit("quik_wgmma_ws_f16_w4_blk", True)
    assert not cuda._pdl_unsplit("quik_wgmma_ws_f16_w8", True)       # 8-bit weights
    assert not cuda._pdl_unsplit("quik_wgmma_ws_f16_w8", False)      # widened 4-bit weights
    assert not cuda._pdl_unsplit("quik_wgmma_f16_w4", True) and not cuda._pdl_unsplit("quik_wgmma_rs_f16_w4", True)
    monkeypatch.setattr(cuda, "PDL_WGMMA_UNSPLIT_W8", True)
    assert cuda._pdl_unsplit("quik_wgmma_ws_c3_f16_w8", True) and not cuda._pdl_unsplit("quik_wgmma_ws_f16_w8", False)
    monkeypatch.setattr(cuda, "PDL_WGMMA_UNSPLIT", False)
    assert not cuda._pdl_unsplit("quik_wgmma_ws_f16_w4", True)
