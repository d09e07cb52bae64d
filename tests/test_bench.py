"""`quiktool bench` end to end on the CPU at tiny sizes (the GPU numbers come from scripts/device_bench.sh)."""
import json
import statistics
import struct
import time

import pytest
import torch
from click.testing import CliRunner

from quiktool import bench
from quiktool.cli import cli
from quiktool.errors import ConfigError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: on a small, busy CI machine intra-op threads cost far more than they save
    # (seen here: 40x slower per op with 2 threads under load). Restored after this module.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(*args):
    r = CliRunner().invoke(cli, ["-q", "--log-level", "warning", *map(str, args)])
    return r.exit_code, r.output


def err_line(out: str) -> str:
    lines = [l for l in out.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, out
    return lines[0]


LAYER = ["bench", "layer", "--shapes", "64x172", "--m", "1,3", "--reps", "3", "--warmup", "1", "--device", "cpu",
         "--backend", "torch"]


def test_bench_layer_table_and_json(tmp_path):
    js = tmp_path / "layer.json"
    code, out = run(*LAYER, "--outliers", "0,8", "--json", js)
    assert code == 0, out
    r = json.loads(js.read_text())
    rows = r["rows"]
    assert len(rows) == 2 * 3 * 2  # M x schemes x outlier counts
    assert {(x["M"], x["scheme"], x["outliers"]) for x in rows} == {
        (m, s, o) for m in (1, 3) for s in ("w4a4", "w4a8", "w8a8") for o in (0, 8)}
    for x in rows:
        assert x["error"] is None and x["finite"]
        assert x["quik_ms"] > 0 and x["fp_ms"] > 0 and x["speedup"] > 0 and x["tops"] > 0
        assert x["speedup"] == pytest.approx(x["fp_ms"] / x["quik_ms"])
        assert (x["K"], x["N"], x["weight_bits"], x["act_bits"]) == (64, 172, *bench.SCHEMES[x["scheme"]])
        st = x["stages_ms"]  # torch backend: the epilogue is its own stage
        assert st["quantize"] > 0 and st["int_gemm"] > 0 and st["epilogue"] >= 0
        assert st["outlier_gemm"] is None  # none, or inside the GEMM call at M <= 16 (the decode order)
        assert x["peers"]["fp8"]["error"] == "CUDA only" and x["peers"]["w4a16"]["ms"] is None
    assert r["backend"] == "torch" and r["device_type"] == "cpu" and r["versions"]["torch"] and r["date"]
    assert r["timing"]["rounds"] == 4 and r["timing"]["statistic"] == "median over 4 alternating rounds of medians"
    assert r["errors"] == 0
    for x in rows:  # every round's time is kept; the reported ones are their medians
        assert len(x["fp_ms_rounds"]) == len(x["quik_ms_rounds"]) == 4
        assert x["fp_ms"] == statistics.median(x["fp_ms_rounds"])
        assert x["quik_ms"] == statistics.median(x["quik_ms_rounds"])
    # the table: a header, a rule, one line per row
    lines = out.splitlines()
    hdr = next(i for i, l in enumerate(lines) if l.startswith("shape"))
    assert "QUIK ms" in lines[hdr] and "FP16 ms" in lines[hdr] and "int gemm" in lines[hdr]
    assert sum(1 for l in lines[hdr + 2:] if l.startswith("64x172")) == 12


def test_bench_layer_rounds_alternate_fp16_and_the_layers(monkeypatch):
    """FP16 and the QUIK layers of a shape and M are timed in alternating rounds: FP16 first in even rounds, last
    in odd ones, each layer once per round; the stage split after all rounds. rounds=1: FP16 once, first."""
    from quiktool.runtime.quik_linear import QuikLinear

    calls = []
    real = bench.Timer.__call__

    def spy(self, fn, args):
        kind = ("fp" if getattr(fn, "__qualname__", "").startswith("bench_layer.") else
                f"L{id(fn)}" if isinstance(fn, QuikLinear)
                else "stage")
        calls.append(kind)
        return real(self, fn, args)

    monkeypatch.setattr(bench.Timer, "__call__", spy)
    r = bench.bench_layer("64x172", "3", "w4a4,w8a8", "0", reps=2, warmup=1, rounds=3)
    layers = [c for c in dict.fromkeys(calls) if c.startswith("L")]
    a, b = layers
    timed = [c for c in calls if c != "stage"]
    assert timed == ["fp", a, b, b, a, "fp", "fp", a, b]
    assert calls[len(timed):] and set(calls[len(timed):]) == {"stage"}  # the stages after the rounds
    assert [len(x["quik_ms_rounds"]) for x in r["rows"]] == [3, 3]
    calls.clear()
    r = bench.bench_layer("64x172", "3", "w4a4", "0", reps=2, warmup=1, rounds=1)
    assert [c for c in calls if c != "stage"][0] == "fp" and calls.count("fp") == 1
    assert r["timing"]["statistic"] == "median" and len(r["rows"][0]["fp_ms_rounds"]) == 1
    with pytest.raises(ConfigError, match="rounds=0 is not accepted; use a positive integer"):
        bench.bench_layer("64x172", "3", "w4a4", "0", rounds=0)


def test_time_peers_records_times_and_refusals():
    """_time_peers times each peer on the inputs (its speedup is left for bench_layer to fill in after FP16's
    rounds); a peer that could not be built (a string) or that raises is n/a with the reason."""
    class Peer:
        def prepare(self, x):
            return (x,)

        def run(self, x):
            return x * 2

    class Refuses(Peer):
        def run(self, x):
            raise RuntimeError("no such M")

    timer = bench.Timer(torch.device("cpu"), reps=2, warmup=1, max_point_s=1.0)
    res = bench._time_peers({"ok": Peer(), "bad": Refuses(), "none": "not built"}, [torch.ones(3)], timer)
    assert res["ok"]["ms"] > 0 and res["ok"]["speedup"] is None and res["ok"]["error"] is None
    assert res["bad"]["ms"] is None and "no such M" in res["bad"]["error"]
    assert res["none"] == {"ms": None, "speedup": None, "error": "not built"}


def test_layer_table_marks_unsteady_rows(tmp_path):
    """A row whose median is far above its fastest run (a host stall inside the timed span) is marked '~' and
    counted below the table; steady rows are not."""
    js = tmp_path / "layer.json"
    code, out = run(*LAYER, "--schemes", "w4a4", "--outliers", "0", "--json", js)
    assert code == 0, out
    r = json.loads(js.read_text())
    for x in r["rows"]:
        x["quik_min_ms"] = x["quik_ms"] * 0.9
    steady = bench.format_layer_table(r)
    assert "~" not in steady
    r["rows"][0]["quik_min_ms"] = r["rows"][0]["quik_ms"] / 3
    text = bench.format_layer_table(r)
    marked = [l for l in text.splitlines() if l.startswith("64x172") and "~" in l]
    assert len(marked) == 1 and f"{r['rows'][0]['quik_ms']:.4f}~" in marked[0]
    assert "~: 1 row(s) whose median QUIK time is above 2x their fastest run" in text


def test_layer_table_names_the_gemm_paths(tmp_path):
    """A CUDA result's legend explains the +wgmma and +fp8 / +int8 suffixes with the rules that chose them
    (taken from the result, here a CPU run's JSON with a CUDA run's rule filled in)."""
    js = tmp_path / "layer.json"
    code, out = run(*LAYER, "--schemes", "w4a4", "--outliers", "0", "--json", js)
    assert code == 0, out
    r = json.loads(js.read_text())
    assert "+wgmma" not in bench.format_layer_table(r)  # the torch backend: no GPU path to name
    r["library_gemm"] = {"enabled": True, "min_m": {"fp8": 256, "int8": 512}, "min_macs": 2 ** 34,
                         "wgmma_min_m": 128, "wgmma_min_tile_share": 0.6}
    text = bench.format_layer_table(r)
    assert "scheme+wgmma: the integer GEMM ran in quiktool's sm_90a wgmma kernel (4-bit weights, from M = 128 " \
           "tokens and 128 x 256 output tiles for 0.6 of the SMs)" in text
    assert "from M = 256 / 512 tokens and 1.7e+10 multiply-adds" in text
    assert "widened" not in text  # a result from before the widening (no wgmma_w4_wide_min_m) names none
    r["library_gemm"]["wgmma_w4_wide_min_m"] = 2048
    assert ("from M = 2048 tokens 4-bit weights are widened to int8 in one pass per call and multiplied by its "
            "8-bit kernel, the pass included in the GEMM's time") in bench.format_layer_table(r)
    r["library_gemm"]["wgmma_min_m"] = 0  # QUIKTOOL_WGMMA=0: no wgmma line
    assert "scheme+wgmma" not in bench.format_layer_table(r)
    assert "+nBN" not in text and "+n160" not in text  # the CPU run's rows have no wgmma tile width
    r["rows"][0].update({"gemm_path": "wgmma", "tile_n": 160})  # as a CUDA run records a narrow-tile row
    text = bench.format_layer_table(r)
    assert "+wgmma+n160" in text and "+nBN: the wgmma kernel on tiles of 128 tokens x BN weight rows" in text


def test_layer_table_shows_the_host_time_of_eager_calls_where_measured(tmp_path):
    """On CUDA each row records the host's time of one eager call (QUIK and FP16) and the full table shows it in
    two columns; a CPU run has none (its time is the host's) and its table has no such columns."""
    js = tmp_path / "layer.json"
    code, out = run(*LAYER, "--schemes", "w4a4", "--outliers", "0", "--json", js)
    assert code == 0, out
    r = json.loads(js.read_text())
    assert all(x["quik_host_us"] is None and x["fp_host_us"] is None for x in r["rows"])
    assert "host us" not in bench.format_layer_table(r)
    r["rows"][0].update({"quik_host_us": 47.2, "fp_host_us": 18.6})  # as a CUDA run records them
    text = bench.format_layer_table(r)
    hdr = next(l for l in text.splitlines() if l.startswith("shape"))
    assert hdr.split()[-4:] == ["host", "us", "FP16", "host"]
    row = next(l for l in text.splitlines() if l.startswith("64x172"))
    assert row.split()[-2:] == ["47", "19"]
    assert "host us: the host's time to enqueue one eager call of the QUIK layer / of FP16 F.linear" in text
    assert "host us" not in bench.format_layer_table(r, compact=True)


def test_bench_layer_default_outliers_skip_counts_not_below_k(tmp_path):
    js = tmp_path / "l.json"
    code, out = run(*LAYER[:4], "--m", "2", "--schemes", "w4a8", "--reps", "2", "--warmup", "1", "--device", "cpu",
                    "--backend", "torch", "--json", js, "--compact")
    assert code == 0, out
    rows = json.loads(js.read_text())["rows"]
    assert [(x["M"], x["outliers"]) for x in rows] == [(2, 0)]  # 256 >= K = 64: dropped from the default
    assert "int gemm" not in out and "w4a8" in out  # --compact: speed columns only


def test_bench_model_tiny(tmp_path):
    js = tmp_path / "model.json"
    code, out = run("bench", "model", "--arch", "tiny", "--configs", "quik-4b", "--seqlen", 16, "--decode-tokens", 3,
                    "--reps", 1, "--warmup", 1, "--device", "cpu", "--backend", "torch", "--json", js)
    assert code == 0, out
    r = json.loads(js.read_text())
    fp, q = r["variants"]
    assert (fp["variant"], q["variant"]) == ("fp16", "quik-4b") and r["errors"] == 0
    assert q["checkpoint_bytes"] < fp["checkpoint_bytes"] and q["weights_bytes"] < fp["weights_bytes"]
    for v in (fp, q):
        assert v["prefill_ms"] > 0 and v["decode_tok_s"] > 0 and v["decode_steps"] == 3
        assert v["peak_prefill_bytes"] is None  # CPU: no CUDA peak
        assert "graph_prefill_ms" not in v and v["graph_prefill_speedup"] is None  # CUDA graphs: CUDA only
    assert q["quantize"]["layers"] == 2 * 7 and q["prefill_speedup"] == pytest.approx(fp["prefill_ms"] / q["prefill_ms"])
    assert "quik-4b" in out and "ckpt GB" in out and "graph prefill ms" in out


@pytest.mark.gpu
@pytest.mark.parametrize("config", [None, "quik-4b"])
def test_graph_prefill_replays_the_eager_forward(config):
    """The prefill captured as one CUDA graph (bench model's graph prefill) gives the eager forward's logits
    bit for bit on new token ids copied into its input, FP16 and a QUIK model on the cuda backend."""
    from quiktool.config import load_config

    dev = torch.device("cuda")
    model = bench.build_llama("tiny", torch.float16, dev, seed=0)
    if config:
        bench.quantize_random(model, load_config(config), torch.float16, dev, "cuda", torch.Generator().manual_seed(0))
    gen = torch.Generator(device=dev).manual_seed(1)
    ids = torch.randint(0, 1024, (2, 40), generator=gen, device=dev)
    with torch.no_grad():
        graph, static, out = bench._capture_prefill(model, ids)
        for _ in range(2):
            new = torch.randint(0, 1024, ids.shape, generator=gen, device=dev)
            static.copy_(new)
            graph.replay()
            want = bench._prefill_fn(model)(new).logits
            assert torch.equal(out.logits, want)
        assert bench._graph_prefill(model, ids, reps=3) > 0


def test_quik_model_decodes_with_kv_cache_one_token_per_step(tmp_path):
    """generate() with the KV cache feeds every QuikLinear M = 1 per step and gives the same greedy
    tokens as recomputing the whole sequence without a cache; checkpoint_bytes is what save_packed writes."""
    from quiktool.config import load_config
    from quiktool.format.checkpoint import save_packed
    from quiktool.runtime.quik_linear import QuikLinear

    dev = torch.device("cpu")
    model = bench.build_llama("tiny", torch.float32, dev, seed=0)
    bench.quantize_random(model, load_config("quik-4b"), torch.float32, dev, "torch", torch.Generator().manual_seed(0))
    ql = [m for m in model.modules() if isinstance(m, QuikLinear)]
    assert len(ql) == 14 and ql[0].w_rt.data_ptr() != ql[7].w_rt.data_ptr()  # block copies own their buffers
    seen = []
    h = ql[0].register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].reshape(-1, inp[0].shape[-1]).shape[0]))
    prompt = torch.randint(0, 1024, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clock = bench._StepClock(dev)
        out = bench._generate(model, prompt, 4, clock)
        h.remove()
        assert seen == [10, 1, 1, 1] and len(clock.stamps) == 4
        ids = prompt
        for _ in range(4):  # greedy without a cache
            nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    assert torch.equal(out, ids)
    save_packed(tmp_path / "ckpt", model, None, load_config("quik-4b").to_dict())
    raw = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    header = struct.unpack("<Q", raw[:8])[0]
    assert len(raw) - 8 - header == bench.checkpoint_bytes(model)


@pytest.mark.parametrize("args,want", [
    (["bench", "layer", "--shapes", "12"], "shape '12' is not accepted"),
    (["bench", "layer", "--shapes", "64x0"], "must be positive"),
    (["bench", "layer", "--m", "0"], "m=0 is not accepted"),
    (["bench", "layer", "--m", "1,x"], "not an integer"),
    (["bench", "layer", "--schemes", "w4a4,w2a2"], "scheme 'w2a2' is not accepted"),
    (["bench", "layer", "--shapes", "64x172", "--outliers", "0,100"], "outliers=100 is not below in_features K=64"),
    (["bench", "layer", "--backend", "cuda", "--device", "cpu"], "runs on a GPU"),
    (["bench", "layer", "--device", "tpu"], "device 'tpu' is not accepted"),
    (["bench", "model", "--configs", "nope-preset"], "neither a file nor a preset"),
    (["bench", "model", "--arch", "tiny", "--seqlen", "2048", "--decode-tokens", "64"], "exceeds the tiny context"),
])
def test_bad_values_are_one_line_errors(args, want):
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("this machine has a GPU")
    code, out = run(*args)
    assert code == 2, out
    assert want in err_line(out), out


def test_cuda_device_without_gpu_is_one_line_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, out = run("bench", "layer", "--device", "cuda")
    assert code == 2 and "has none" in err_line(out)


def test_parse_shapes_names_and_duplicates():
    assert bench.parse_shapes("llama2-7b,4096x4096, 8192X28672") == [(4096, 4096), (4096, 11008), (11008, 4096),
                                                                    (8192, 28672)]
    assert bench.parse_shapes(None) == list(bench.DEFAULT_SHAPES) and len(bench.DEFAULT_SHAPES) == 9
    assert bench.parse_shapes([(64, 172)]) == [(64, 172)]


def test_timer_median_and_time_budget():
    calls = []

    def slow(x):
        calls.append(x)
        time.sleep(0.01)

    t = bench.Timer(torch.device("cpu"), reps=50, warmup=3, max_point_s=0.05)(slow, [(1,), (2,)])
    assert t.reps == bench.MIN_REPS  # 50 runs of 10 ms would exceed the 0.05 s budget
    assert 9 <= t.min_ms <= t.ms < 100 and set(calls) == {1, 2}
    t = bench.Timer(torch.device("cpu"), reps=4, warmup=1, max_point_s=10)(lambda: None, [()])
    assert t.reps == 4 and t.ms >= 0


@pytest.mark.gpu
def test_timer_head_start_covers_the_host_time():
    """A call whose host part (1 ms of sleep before a tiny kernel) outlasts the fixed spin and the flush: with
    cover_host the spin grows past the host's time and the span is device time (well below 1 ms); without it the
    GPU waits for the host and the span holds the host's millisecond. Both report it as the call's host time."""
    dev = torch.device("cuda")
    x = torch.randn(64, device=dev)

    def host_heavy(v):
        time.sleep(0.001)
        return v + 1

    covered = bench.Timer(dev, reps=8, warmup=4, max_point_s=10.0)
    t_cov = covered(host_heavy, [(x,)])
    assert covered.head_cycles >= bench.HEAD_START_HOST_MARGIN * 0.001 * bench.SPIN_CYCLES_PER_S
    plain = bench.Timer(dev, reps=8, warmup=4, max_point_s=10.0, cover_host=False)
    t_plain = plain(host_heavy, [(x,)])
    assert plain.head_cycles == bench.HEAD_START_CYCLES
    assert t_cov.ms < 0.5 <= t_plain.ms, (t_cov, t_plain)
    assert 1000 <= t_cov.host_us < 20000 and 1000 <= t_plain.host_us < 20000  # the host's ms is in host_us


def test_stage_split_and_reference_oracle_match_the_layer():
    """The stage timings call the backend as QuikLinear.forward does; reference_forward (the CUDA
    check) computes the layer's output from its codes alone."""
    from quiktool.runtime import reference

    dev = torch.device("cpu")
    W = torch.randn(96, 192)
    built = bench.build_layers(W, ["w4a4", "w8a8"], [0, 16], torch.float16, dev, "torch",
                               torch.Generator().manual_seed(0))
    assert [(b.scheme, b.n_out) for b in built] == [("w4a4", 0), ("w8a8", 0), ("w4a4", 16), ("w8a8", 16)]
    timer = bench.Timer(dev, reps=2, warmup=1, max_point_s=1.0)
    for M in (5, 20):  # decode size (the outlier product inside the GEMM call) and above
        x = torch.randn(M, 192).half()
        for b in built:
            assert torch.equal(b.layer(x), bench.reference_forward(b.layer, b.codes, x))
            fused = bench.time_stages(b.layer, reference, [x], timer, fused=True)
            assert set(fused) == {"quantize", "gemm_epilogue", "outlier_gemm"}
            assert (fused["outlier_gemm"] is None) == (b.n_out == 0 or M <= reference.FUSED_OUTLIER_MAX_M)


@pytest.mark.parametrize("cmd", [["bench"], ["bench", "layer"], ["bench", "model"]])
def test_bench_help(cmd):
    code, out = run(*cmd, "--help")
    assert code == 0 and "Usage:" in out
