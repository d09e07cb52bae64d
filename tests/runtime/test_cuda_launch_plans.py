"""PreparedLinear's launch plans (runtime/cuda.py, _LaunchPlan): the host-side logic, on the CPU.

A plan is recorded from one real call (its launches, the buffers the launchers allocated, the outlier product) and
replayed on later calls with x and fresh buffers in place of the recorded pointers. These tests feed _LaunchPlan a
recorded call made of CPU tensors and fake kernel handles, replay it with the driver call replaced by a recorder,
and check every argument of every replayed launch. The GPU tests (tests/runtime/test_cuda.py) check the bits.
"""
from __future__ import annotations

import ctypes
import threading

import pytest
import torch

from quiktool.runtime import cuda, reference


def _ptr(t: torch.Tensor, byte_offset: int = 0) -> int:
    return t.data_ptr() + byte_offset


def test_symbolic_args_keep_constants_and_name_per_call_pointers() -> None:
    ranges = [(1000, 64, 0), (5000, 16, 2), (9000, 256, -1)]
    template, fixups = cuda._symbolic_args("ppppif", (1000 + 8, 9000 + 4, 0, 5000, 1000, 2.5), ranges)
    assert template == (0, 9004, 0, 0, 1000, 2.5)  # the int argument 1000 is a number, not a pointer
    assert fixups == ((0, 0, 8), (3, 2, 0))
    assert cuda._symbolic_args("p", (1000 + 64,), ranges) is None   # one past the end of buffer 0: unknown
    assert cuda._symbolic_args("pi", (7, 3), ranges) is None        # a pointer into nothing recorded


def _unpack(params: int, sig: str) -> list:
    """The values in the parameter array at ``params`` (what cuLaunchKernel would read), by signature letter."""
    addresses = (ctypes.c_void_p * len(sig)).from_address(params)
    return [cuda._Params._CTYPE[c].from_address(a).value for c, a in zip(sig, addresses)]


def _recorded_call():
    """A call as _record sees it: x [3, 8] fp16, the quantizer's four buffers, a split-K temporary, the output,
    the outlier product's output, and three launches (quantize, slice, add + epilogue)."""
    x = torch.randn(3, 8, dtype=torch.float16)
    codes, scale, zero = torch.empty(3, 64, dtype=torch.int8), torch.empty(3), torch.empty(3)
    x_out = torch.empty(3, 2, dtype=torch.float16)
    part, out = torch.empty(2, 3, 16, dtype=torch.int32), torch.empty(3, 16, dtype=torch.float16)
    y_base = torch.empty(3, 16, dtype=torch.float16)
    w, outl = torch.empty(16, 32, dtype=torch.uint8), torch.tensor([1, 5], dtype=torch.int32)
    steps = [
        ("k", 11, "quant", 3, 128, 0, None, "ppppppii", (_ptr(x), _ptr(outl), _ptr(codes), _ptr(scale), _ptr(zero),
                                                         _ptr(x_out), 8, 64), False),
        ("ob", x_out, y_base, False),
        ("k", 12, "slice", 4, 128, 4096, "pdl", "pppiii", (_ptr(codes), _ptr(w), _ptr(part), 3, 16, 2), False),
        ("k", 13, "add", 1, 256, 0, None, "pppfp", (_ptr(part), _ptr(out), _ptr(scale, 4), 8.0, _ptr(y_base)), False),
    ]
    bufs = [codes, scale, zero, x_out, part, out]
    return x, steps, bufs, out, [w, outl]


def test_a_replay_puts_new_pointers_where_the_recorded_call_had_per_call_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    x, steps, bufs, out, consts = _recorded_call()
    plan = cuda._LaunchPlan.make(7, x, steps, bufs, out, False, consts)
    assert plan.steps is not None and plan.generation == 7
    launches, products = [], []
    sigs = {"quant": "ppppppii", "slice": "pppiii", "add": "pppfp"}

    def fake_launch(index, fn, name, grid, block, smem, stream, params, ex):
        launches.append((fn, name, grid, block, smem, ex, sigs[name], _unpack(params, sigs[name]), stream))

    def fake_outlier_base(x_outlier, outlier_weight, bias, M):
        products.append(x_outlier)
        return torch.full((M, 16), 1.0, dtype=torch.float16)

    monkeypatch.setattr(cuda, "_launch_fn", fake_launch)
    monkeypatch.setattr(cuda, "_raw_stream", lambda index: 0)
    monkeypatch.setattr(reference, "outlier_base", fake_outlier_base)

    class Layer:
        dev, outlier_weight, bias = 0, None, None

    new_x = torch.randn(3, 8, dtype=torch.float16)
    y, segmented = plan.replay(Layer(), new_x)
    assert not segmented and y.shape == (3, 16) and y.dtype == torch.float16
    assert [(fn, name, grid, block, smem, ex, stream) for fn, name, grid, block, smem, ex, _, _, stream in launches] \
        == [(11, "quant", 3, 128, 0, None, 0), (12, "slice", 4, 128, 4096, "pdl", 0), (13, "add", 1, 256, 0, None, 0)]
    (q_args, s_args, a_args) = (entry[7] for entry in launches)
    x_out = products[0]
    assert x_out.shape == (3, 2) and x_out.dtype == torch.float16  # a tensor, since F.linear reads it
    assert q_args[0] == new_x.data_ptr() and q_args[1] == _ptr(consts[1]) and q_args[5] == x_out.data_ptr()
    assert q_args[6:] == [8, 64]
    codes, scale, zero = q_args[2], q_args[3], q_args[4]
    assert s_args[0] == codes and s_args[1] == _ptr(consts[0]) and s_args[3:] == [3, 16, 2]
    part = s_args[2]
    assert a_args[0] == part and a_args[1] == y.data_ptr() and a_args[2] == scale + 4 and a_args[3] == 8.0
    # the pointer-only buffers share one workspace, 512-byte aligned, without overlap
    spans = sorted([(codes, 3 * 64), (scale, 12), (zero, 12), (part, 2 * 3 * 16 * 4)])
    assert all(b[0] >= a[0] + a[1] for a, b in zip(spans, spans[1:]))
    assert all((p - spans[0][0]) % 512 == 0 for p, _ in spans)
    # a second replay: fresh buffers, x's new pointer
    launches.clear()
    third_x = torch.randn(3, 8, dtype=torch.float16)
    y2, _ = plan.replay(Layer(), third_x)
    assert launches[0][7][0] == third_x.data_ptr() and launches[2][7][1] == y2.data_ptr()
    # another thread: its own parameter slots, filled from its own call
    launches.clear()
    other_x, result = torch.randn(3, 8, dtype=torch.float16), []
    worker = threading.Thread(target=lambda: result.append(plan.replay(Layer(), other_x)[0]))
    worker.start()
    worker.join()
    assert launches[0][7][0] == other_x.data_ptr() and launches[2][7][1] == result[0].data_ptr()
    assert launches[0][7][6:] == [8, 64] and launches[2][7][3] == 8.0


class _Stream:
    """A stand-in for torch.cuda.Stream: its raw handle, and the waits it is asked for, logged into ``events``."""

    def __init__(self, name: str, raw: int, events: list):
        self.name, self.cuda_stream, self.events = name, raw, events

    def wait_stream(self, other) -> None:
        self.events.append(f"{self.name} waits {other.name}")


def _fake_streams(monkeypatch: pytest.MonkeyPatch, events: list, sigs: dict) -> None:
    """Replays against fakes: launches logged into ``events`` as (kernel name, raw stream, arguments by ``sigs``),
    the caller's stream raw 0, the side stream raw 77, fork / join logged as waits, the side stream's context logged
    as "enter side" / "exit side" around what runs in it."""
    main, side = _Stream("main", 0, events), _Stream("side", 77, events)

    def on_stream(dev, stream, fn, *args):
        events.append(f"enter {stream.name}")
        try:
            return fn(*args)
        finally:
            events.append(f"exit {stream.name}")

    monkeypatch.setattr(cuda, "_launch_fn", lambda index, fn, name, grid, block, smem, stream, params, ex:
                        events.append((name, stream, _unpack(params, sigs[name]))))
    monkeypatch.setattr(cuda, "_raw_stream", lambda index: 0)
    monkeypatch.setattr(cuda, "_side_stream", lambda dev: side)
    monkeypatch.setattr(cuda, "_fork_join", lambda dev, side_, fork: side_.wait_stream(main) if fork
                        else main.wait_stream(side_))
    monkeypatch.setattr(cuda, "_on_stream", on_stream)


def test_a_replay_runs_the_widening_on_the_side_stream_between_fork_and_join(monkeypatch: pytest.MonkeyPatch) -> None:
    """A widened layer's call: the side stream waits for the caller's (fork) before the widening launch, which runs
    on the side stream, and the caller's stream waits for it (join) before the GEMM; the widened weights are a
    pointer-only buffer (in the workspace)."""
    x = torch.randn(3, 8, dtype=torch.float16)
    codes, wide, out = torch.empty(3, 64, dtype=torch.int8), torch.empty(16, 64), torch.empty(3, 16)
    w, lut = torch.empty(16, 32, dtype=torch.uint8), torch.empty(16, dtype=torch.uint8)
    steps = [("fork",),
             ("k", 1, "quant", 3, 128, 0, None, "pp", (_ptr(x), _ptr(codes)), False),
             ("k", 2, "widen", 8, 256, 0, None, "ppp", (_ptr(w), _ptr(wide), _ptr(lut)), True),
             ("ob", None, None, False),
             ("join",),
             ("k", 3, "gemm", 2, 384, 0, None, "ppp", (_ptr(codes), _ptr(wide), _ptr(out)), False)]
    plan = cuda._LaunchPlan.make(1, x, steps, [codes, wide, out], out, False, [w, lut])
    assert plan.steps is not None and [i for i, _ in plan.workspace[1]] == [1, 2]
    events = []
    _fake_streams(monkeypatch, events, {"quant": "pp", "widen": "ppp", "gemm": "ppp"})
    monkeypatch.setattr(reference, "outlier_base", lambda *a: events.append("ob"))

    class Layer:
        dev, outlier_weight, bias = 0, None, None

    new_x = torch.randn(3, 8, dtype=torch.float16)
    y, _ = plan.replay(Layer(), new_x)
    names = [e if isinstance(e, str) else e[:2] for e in events]
    assert names == ["side waits main", ("quant", 0), ("widen", 77), "ob", "main waits side", ("gemm", 0)]
    quant, widen, gemm = (e[2] for e in events if not isinstance(e, str))
    assert quant[0] == new_x.data_ptr() and widen[0] == _ptr(w) and widen[2] == _ptr(lut)
    assert gemm[0] == quant[1] and gemm[1] == widen[1] and gemm[2] == y.data_ptr()


def test_a_replay_runs_the_outlier_product_on_the_side_stream_until_the_join(monkeypatch: pytest.MonkeyPatch) -> None:
    """OUTLIER_SIDE's split-K call: the outlier product runs inside the side stream's context after the fork (which
    follows the quantizer), on the quantizer's outlier columns (a fresh tensor each replay), and the caller's stream
    waits for it (join) after the slicing kernel and before the add kernel that reads y_base."""
    x, steps, bufs, out, consts = _recorded_call()
    quant, ob, slice_, add = steps
    steps = [quant, ("fork",), ("ob", ob[1], ob[2], True), slice_, ("join",), add]
    plan = cuda._LaunchPlan.make(3, x, steps, bufs, out, False, consts)
    assert plan.steps is not None
    events, inputs, products = [], [], []

    def fake_outlier_base(x_outlier, outlier_weight, bias, M):
        events.append("ob")
        inputs.append(x_outlier)
        products.append(torch.full((M, 16), 2.0, dtype=torch.float16))
        return products[-1]

    _fake_streams(monkeypatch, events, {"quant": "ppppppii", "slice": "pppiii", "add": "pppfp"})
    monkeypatch.setattr(reference, "outlier_base", fake_outlier_base)

    class Layer:
        dev, outlier_weight, bias = 0, None, None

    for _ in range(2):
        events.clear(), inputs.clear(), products.clear()
        new_x = torch.randn(3, 8, dtype=torch.float16)
        y, _ = plan.replay(Layer(), new_x)
        names = [e if isinstance(e, str) else e[:2] for e in events]
        assert names == [("quant", 0), "side waits main", "enter side", "ob", "exit side", ("slice", 0),
                         "main waits side", ("add", 0)]
        q_args = next(e[2] for e in events if not isinstance(e, str) and e[0] == "quant")
        assert inputs[0].shape == (3, 2) and q_args[5] == inputs[0].data_ptr()  # the quantizer writes it
        a_args = next(e[2] for e in events if not isinstance(e, str) and e[0] == "add")
        assert a_args[1] == y.data_ptr() and a_args[4] == products[0].data_ptr()  # this replay's y_base


def test_calls_a_plan_cannot_hold_are_not_replayed() -> None:
    x, steps, bufs, out, consts = _recorded_call()
    assert cuda._LaunchPlan.make(1, x, None, bufs, out, False, consts).steps is None       # _unplannable
    assert cuda._LaunchPlan.make(1, x, steps, bufs, out, False, consts[:1]).steps is None  # outl: unknown pointer
    stray = torch.empty(3, 16, dtype=torch.float16)                                          # not from _empty
    assert cuda._LaunchPlan.make(1, x, steps, bufs, stray, False, consts).steps is None
    unwritten = steps[:3]                                          # no launch writes the output
    assert cuda._LaunchPlan.make(1, x, unwritten, bufs, out, False, consts).steps is None
    aliased = [*bufs, out.view(-1)[4:]]                            # two tensors over one range: ambiguous
    assert cuda._LaunchPlan.make(1, x, steps, aliased, out, False, consts).steps is None


def test_setting_a_knob_advances_the_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans recorded under one setting are not replayed under another: any attribute assignment on the cuda or
    the reference module (a knob, a monkeypatched function) advances the generation run compares."""
    start, split_k, fused_max = cuda._GENERATION[0], cuda.GEMM_SPLIT_K, reference.FUSED_OUTLIER_MAX_M
    monkeypatch.setattr(cuda, "GEMM_SPLIT_K", 2)
    assert cuda._GENERATION[0] > start
    mid = cuda._GENERATION[0]
    monkeypatch.setattr(reference, "FUSED_OUTLIER_MAX_M", 4)
    assert cuda._GENERATION[0] > mid
    mid = cuda._GENERATION[0]
    monkeypatch.undo()
    assert cuda._GENERATION[0] > mid
    assert cuda.GEMM_SPLIT_K == split_k and reference.FUSED_OUTLIER_MAX_M == fused_max
