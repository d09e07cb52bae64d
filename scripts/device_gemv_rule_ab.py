"""In-process layer A/B of the small-M kernel's rows-per-block rule (issue 5, decode).

For each shape and M: one QUIK layer (as `quiktool bench layer` builds it), timed with the earlier rule
(QUIKTOOL_GEMV_RULE=m: 16 rows at M > 8, else 32) and the current one (cuda._gemv_rows) in alternating
rounds in the same process (ABBA...), each round a bench.Timer point (L2 flushed, GPU head start,
median of its runs); reported: the median over rounds of each, their ratio, the rows each rule picked,
x FP16 (F.linear), and whether the two outputs are the same bits. Separate processes gave same-kernel
ratios of 1.01-1.04 on the H100 (order effects), too much for a few-% decision.

    PYTHONPATH=$PWD python3 scripts/device_gemv_rule_ab.py [--m 1,16] [--rounds 6] [--reps 100]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F

from quiktool.bench import DEFAULT_SHAPES, Timer, _inputs, build_layers
from quiktool.runtime import cuda

p = argparse.ArgumentParser()
p.add_argument("--m", default="1,16")
p.add_argument("--rounds", type=int, default=6)
p.add_argument("--reps", type=int, default=100)
p.add_argument("--scheme", default="w4a4")
p.add_argument("--outliers", type=int, default=0)
args = p.parse_args()
dev = torch.device("cuda")
timer = Timer(dev, args.reps, 10, 0.5)
gen_dev, gen_cpu = torch.Generator(device=dev).manual_seed(0), torch.Generator().manual_seed(0)
print(torch.cuda.get_device_name(0), torch.__version__)
print(f"{'K x N':11s} {'M':>3s} {'rows m':>6s} {'rows n':>6s} {'m ms':>8s} {'n ms':>8s} {'n/m':>6s} "
      f"{'FP16 ms':>8s} {'xFP16 m':>7s} {'xFP16 n':>7s} same")
for K, N in DEFAULT_SHAPES:
    W = torch.randn(N, K, generator=gen_dev, device=dev, dtype=torch.float32)
    layer = build_layers(W, [args.scheme], [args.outliers], torch.float16, dev, "cuda", gen_cpu)[0].layer
    w16 = W.to(torch.float16)
    del W
    for M in map(int, args.m.split(",")):
        xs = _inputs(M, K, torch.float16, dev, gen_dev)
        rows, outs, t = {}, {}, {"m": [], "n": []}
        for rule in ("m", "n"):
            cuda.GEMV_RULE = rule
            rows[rule] = cuda._gemv_rows(M, N, torch.cuda.get_device_properties(dev).multi_processor_count)
            outs[rule] = layer(xs[0])
        for r in range(args.rounds):
            for rule in ("m", "n") if r % 2 == 0 else ("n", "m"):
                cuda.GEMV_RULE = rule
                t[rule].append(timer(layer, [(x,) for x in xs]).ms)
        cuda.GEMV_RULE = "n"
        fp = timer(lambda x: F.linear(x, w16), [(x,) for x in xs]).ms
        a, b = statistics.median(t["m"]), statistics.median(t["n"])
        print(f"{K}x{N:<6d} {M:3d} {rows['m']:6d} {rows['n']:6d} {a:8.4f} {b:8.4f} {b / a:6.3f} {fp:8.4f} "
              f"{fp / a:7.2f} {fp / b:7.2f} {torch.equal(outs['m'], outs['n'])}", flush=True)
