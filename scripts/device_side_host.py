"""Host cost of the pieces of a side-stream outlier product (issue 5, cuda.OUTLIER_SIDE): what one eager layer call
pays on the host for moving its F.linear to the side stream.

Each item is timed as the median of --reps perf_counter spans, enqueued behind a long GPU spin so that no call waits
for the GPU: torch's stream context, the private set-stream pair, cuda._fork_join, torch's Stream.wait_stream, the
outlier F.linear on the caller's stream and inside the side stream's context, and a whole split-K layer call
(4096 x 4096, W4A4, 256 outliers, M = 128 by default) with OUTLIER_SIDE 0 (off) and 2 (every call).

With --profile, also torch.profiler's CPU-side table (self CPU time per op) of --reps outlier F.linear calls on the
caller's stream and on the side stream, to see where the second stream's extra host time goes.

    PYTHONPATH=$PWD python3 scripts/device_side_host.py [--reps 200] [--m 128] [--shape 4096x4096] [--profile]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from quiktool.bench import _inputs, build_layers
from quiktool.runtime import cuda

p = argparse.ArgumentParser()
p.add_argument("--reps", type=int, default=200)
p.add_argument("--m", type=int, default=128)
p.add_argument("--shape", default="4096x4096")
p.add_argument("--profile", action="store_true", help="torch.profiler's CPU table of F.linear on each stream")
args = p.parse_args()

dev = torch.device("cuda")
idx = torch.cuda.current_device()
main, side, other = torch.cuda.current_stream(), cuda._side_stream(idx), torch.cuda.Stream()
K, N = (int(v) for v in args.shape.split("x"))


def host_us(fn, reps: int = args.reps) -> float:
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # ~1 s of GPU work in front: the host never waits for the GPU
    spans = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        spans.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return 1e6 * statistics.median(spans)


xo = torch.randn(args.m, 256, device=dev, dtype=torch.float16)
wo = torch.randn(N, 256, device=dev, dtype=torch.float16)
get, put = getattr(torch._C, "_cuda_getCurrentStream", None), getattr(torch._C, "_cuda_setStream", None)


def set_pair() -> None:
    prev = get(idx)
    put(stream_id=side.stream_id, device_index=side.device_index, device_type=side.device_type)
    put(stream_id=prev[0], device_index=prev[1], device_type=prev[2])


def stream_ctx() -> None:
    with torch.cuda.stream(side):
        pass


def linear_side() -> None:
    with torch.cuda.stream(side):
        F.linear(xo, wo)


items = {
    "torch.cuda.stream(side) enter + exit": stream_ctx,
    "private set-stream pair": set_pair if get and put else None,
    "cuda._fork_join fork + join": lambda: (cuda._fork_join(idx, side, True), cuda._fork_join(idx, side, False)),
    "Stream.wait_stream both ways": lambda: (side.wait_stream(main), main.wait_stream(side)),
    "F.linear [M, 256] x [N, 256]^T, caller's stream": lambda: F.linear(xo, wo),
    "the same inside torch.cuda.stream(side)": linear_side,
    "the same through cuda._on_stream(side)": lambda: cuda._on_stream(idx, side, F.linear, xo, wo),
    "the same through cuda._on_stream(another new stream)": lambda: cuda._on_stream(idx, other, F.linear, xo, wo),
    "cuda._on_stream(side) of a no-op": lambda: cuda._on_stream(idx, side, lambda: None),
}
print(f"{torch.cuda.get_device_name()} torch {torch.__version__}; M = {args.m}, N = {N}; median host us of {args.reps}")
for name, fn in items.items():
    if fn is None:
        print(f"{name:52s}  (not in this torch)")
        continue
    print(f"{name:52s} {host_us(fn):8.1f}")

if args.profile:
    from torch.profiler import ProfilerActivity, profile

    for name, fn in (("caller's stream", lambda: F.linear(xo, wo)), ("side stream", lambda: F.linear(xo, wo))):
        on_side = name == "side stream"
        torch.cuda.synchronize()
        torch.cuda._sleep(2_000_000_000)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.reps):
                if on_side:
                    cuda._on_stream(idx, side, fn)
                else:
                    fn()
        torch.cuda.synchronize()
        print(f"--- F.linear on the {name}, {args.reps} calls")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

W = torch.randn(N, K, generator=torch.Generator(device=dev).manual_seed(0), device=dev)
quik = build_layers(W, ["w4a4"], [256], torch.float16, dev, "cuda", torch.Generator().manual_seed(0))[0].layer
x = _inputs(args.m, K, torch.float16, dev, torch.Generator(device=dev).manual_seed(1))[0]
for mode in (0, 2, 0, 2):  # 0: no side stream; 2: the side stream in every call (1, the default: eager calls as 0)
    cuda.OUTLIER_SIDE = mode
    quik(x)  # records the launch plan
    print(f"layer call, OUTLIER_SIDE={mode} (replay){'':24s} {host_us(lambda: quik(x), min(args.reps, 100)):8.1f}")
