"""The command line: parse options, call quiktool.api, print a short table. No logic lives here."""
from __future__ import annotations

import logging
import sys

import click

from quiktool import __version__
from quiktool.errors import QuikError

log = logging.getLogger("quiktool")

DEVICE = click.option("--device", default="cpu", show_default=True,
                      help="Where the model runs: cpu, cuda or cuda:N.")
DATA_DIR = click.option("--data-dir", type=click.Path(file_okay=False), default=None, envvar="QUIKTOOL_DATA_DIR",
                        help="Local data folder (DIR/wikitext2/wiki.test.raw, DIR/c4/c4_validation_2k.parquet, ...); "
                             "env QUIKTOOL_DATA_DIR. Without it, named datasets come from the hub.")
MODEL = click.option("--model", "-m", required=True,
                     help="A Hugging Face folder, a .gguf file, a hub id, the alias smollm2-135m, "
                          "or (eval-ppl) a packed quiktool folder.")
OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
JSON_OUT = click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
                        help="Also write the result as JSON to this file.")


def _table(rows: dict) -> str:
    w = max(len(k) for k in rows)
    return "\n".join(f"{k:<{w}}  {v:.4f}" if isinstance(v, float) else f"{k:<{w}}  {v}" for k, v in rows.items())


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except QuikError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quiktool")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True,
              help="Logging verbosity.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.pass_context
def cli(ctx, log_level, quiet):
    """quiktool: QUIK-style hybrid quantization of causal LMs (4-bit weights and activations,
    FP16 outlier channels).

    Typical run: calibrate -> quantize -> eval-ppl. Every command works offline on local files."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "datasets", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import transformers

    if log_level != "debug":
        transformers.utils.logging.set_verbosity_error()  # e.g. "sequence longer than max length" on whole-corpus tokenizing
    if quiet:
        transformers.utils.logging.disable_progress_bar()
    ctx.obj = {"progress": not quiet}


@cli.command()
@MODEL
@click.option("--dataset", default="c4", show_default=True, help="wikitext2, c4, ptb, or a .txt/.jsonl/.parquet file.")
@click.option("--nsamples", type=click.IntRange(min=1), default=128, show_default=True, help="Calibration windows.")
@click.option("--seqlen", type=click.IntRange(min=2), default=2048, show_default=True, help="Tokens per window.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the window sampling.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Statistics file to write (.safetensors).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Precision the model runs in while calibrating.")
@DATA_DIR
@DEVICE
@OVERWRITE
@click.pass_context
def calibrate(ctx, model, dataset, nsamples, seqlen, seed, out, dtype, data_dir, device, overwrite):
    """Record per-input-channel activation statistics (max |x|, mean x^2) of every quantizable linear."""
    from quiktool import api

    r = api.calibrate(model, out, dataset, nsamples, seqlen, seed, data_dir, device, dtype, overwrite,
                      progress=ctx.obj["progress"])
    click.echo(_table({k: r[k] for k in ("model", "dataset", "nsamples", "seqlen", "tokens", "layers", "seconds", "peak_rss_gb", "out")}))


@cli.command()
@MODEL
@click.option("--calib", required=True, type=click.Path(dir_okay=False), help="Statistics file from `quiktool calibrate`.")
@click.option("--config", "config", default="quik-4b", show_default=True,
              help="Preset name (see configs/: quik-4b, quik-8b, w4a8, rtn-w4a4, gptq-w4a16, ...) or a YAML path.")
@click.option("--algorithm", type=click.Choice(["gptq", "rtn"]), default=None, help="Override: weight quantizer.")
@click.option("--wbits", type=int, default=None, help="Override: weight bits (4 or 8) for all layer types without their own rule.")
@click.option("--abits", type=int, default=None, help="Override: activation bits (4, 8, or 16 = not quantized).")
@click.option("--outliers", type=float, default=None,
              help="Override: outlier channels per layer: a count >= 1 or a fraction of in_features in [0, 1).")
@click.option("--group-size", type=int, default=None, help="Override: weight group size (-1 = per output channel).")
@click.option("--sparsity", type=click.Choice(["2:4"]), default=None, help="Override: 2:4 sparsity on every layer.")
@click.option("--clip-search/--no-clip-search", default=None, help="Override: MSE search of the weight clipping range.")
@click.option("--damp", type=float, default=None, help="Override: GPTQ damping, fraction of the mean Hessian diagonal.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Packed checkpoint folder to write.")
@DATA_DIR
@DEVICE
@OVERWRITE
@JSON_OUT
@click.pass_context
def quantize(ctx, model, calib, config, algorithm, wbits, abits, outliers, group_size, sparsity, clip_search, damp,
             out, data_dir, device, overwrite, json_out):
    """GPTQ (or RTN) quantization with FP16 outlier columns, written as a packed checkpoint."""
    from quiktool import api
    from quiktool.config import load_config

    qcfg = load_config(config)
    qcfg = qcfg.replace(algorithm=algorithm, weight_bits=wbits, act_bits=abits, outliers=outliers,
                        group_size=group_size, sparsity=sparsity, clip_search=clip_search, damp=damp)
    r = api.quantize(model, calib, out, qcfg, data_dir, device, overwrite, progress=ctx.obj["progress"])
    if json_out:
        api.write_json(json_out, {**r, "versions": api.versions(), "machine": api.machine()})
    click.echo(_table(r))


@cli.command("eval-ppl")
@MODEL
@click.option("--dataset", default="wikitext2", show_default=True, help="wikitext2, c4, ptb, or a .txt/.jsonl/.parquet file.")
@click.option("--seqlen", type=click.IntRange(min=2), default=2048, show_default=True, help="Tokens per window.")
@click.option("--max-windows", type=click.IntRange(min=1), default=None, help="Evaluate only the first N windows.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Model precision [default: fp32 on cpu, fp16 on cuda].")
@click.option("--backend", type=click.Choice(["auto", "cuda", "torch"]), default="auto", show_default=True,
              help="Runtime of the quantized layers: CUDA kernels, the exact torch reference, or auto (CUDA if a GPU is present).")
@click.option("--max-ppl", type=float, default=None, help="Exit with code 1 if the perplexity exceeds this bound (CI gate).")
@click.option("--fuse/--no-fuse", default=False, show_default=True,
              help="Run the quantized layers that read one input (q/k/v, gate/up) as one layer: faster on a GPU, "
                   "but the last bits of the outlier product may change, and with them the perplexity slightly.")
@DATA_DIR
@DEVICE
@JSON_OUT
@click.pass_context
def eval_ppl(ctx, model, dataset, seqlen, max_windows, dtype, backend, max_ppl, fuse, data_dir, device, json_out):
    """Perplexity on non-overlapping windows (GPTQ/QUIK protocol) of a model or a packed checkpoint."""
    from quiktool import api

    r = api.eval_ppl(model, dataset, seqlen, max_windows, data_dir, device, dtype, backend, progress=ctx.obj["progress"],
                     fuse=fuse)
    if json_out:
        api.write_json(json_out, r)
    click.echo(_table({k: r[k] for k in ("model", "dataset", "seqlen", "windows", "tokens", "ppl", "seconds", "backend")}))
    if max_ppl is not None and not r["ppl"] <= max_ppl:
        click.echo(f"error: perplexity {r['ppl']:.4f} exceeds --max-ppl {max_ppl}", err=True)
        sys.exit(1)


# ------------------------------------------------------------------------------------------- bench
BACKEND = click.option("--backend", type=click.Choice(["auto", "cuda", "torch"]), default="auto", show_default=True,
                       help="Runtime of the QUIK layers: CUDA kernels, the exact torch reference, or auto "
                            "(CUDA when --device is a GPU and the kernels load).")


@cli.group()
def bench():
    """Speed: one QUIK layer against cuBLAS FP16 and the Hopper peers (layer), or a whole LLaMA (model)."""


@bench.command("layer")
@click.option("--shapes", default=None,
              help="Comma list of KxN (in x out features) or model names llama2-7b, llama2-13b, llama2-70b "
                   "[default: the 9 LLaMA-2 7B/13B/70B linear shapes].")
@click.option("--m", "m_values", default=None, help="Comma list of token counts M [default: 1,16,128,512,2048,8192].")
@click.option("--schemes", default="w4a4,w4a8,w8a8", show_default=True, help="Comma list of w4a4, w4a8, w8a8.")
@click.option("--outliers", default=None,
              help="Comma list of FP16 outlier-channel counts [default: 0,256; counts >= K are skipped for small K].")
@click.option("--reps", type=click.IntRange(min=1), default=100, show_default=True,
              help="Most timed runs per point (the median is reported); fewer if they exceed --max-point-s.")
@click.option("--warmup", type=click.IntRange(min=1), default=10, show_default=True, help="Most untimed runs first.")
@click.option("--max-point-s", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Time budget of one measurement; caps the runs of slow points (at least 5 stay).")
@click.option("--rounds", type=click.IntRange(min=1), default=4, show_default=True,
              help="FP16 and the QUIK layers of a shape and M are timed in this many alternating rounds; each time "
                   "reported is the median over its rounds (1: FP16 once, first).")
@click.option("--dtype", type=click.Choice(["fp16", "bf16"]), default="fp16", show_default=True,
              help="Activation/output dtype of QUIK and of the cuBLAS baseline.")
@click.option("--no-peers", is_flag=True, help="Skip the FP8 and W4A16 peers (CUDA only anyway).")
@click.option("--compact", is_flag=True, help="Print only the speed columns.")
@BACKEND
@DEVICE
@JSON_OUT
def bench_layer(shapes, m_values, schemes, outliers, reps, warmup, max_point_s, rounds, dtype, no_peers, compact,
                backend, device, json_out):
    """QUIK linear layer (quantize + int GEMM + outlier GEMM + epilogue) vs FP16 F.linear and peers.

    Example on a GPU: quiktool bench layer --device cuda --shapes 8192x28672 --m 1,16,2048"""
    from quiktool import api
    from quiktool.bench import format_layer_table

    progress = (lambda r: api.write_json(json_out, r)) if json_out else None
    r = api.bench_layer(shapes, m_values, schemes, outliers, reps, warmup, device, backend, dtype, max_point_s,
                        peers=not no_peers, on_progress=progress, rounds=rounds)
    if json_out:
        api.write_json(json_out, r)
    click.echo(format_layer_table(r, compact=compact))
    if r["errors"]:
        click.echo(f"error: {r['errors']} of {len(r['rows'])} configurations failed (see the table)", err=True)
        sys.exit(1)


@bench.command("model")
@click.option("--arch", type=click.Choice(["llama2-7b", "llama2-13b", "tiny"]), default="llama2-7b", show_default=True,
              help="Model geometry (random weights, no download); tiny = hidden 256, 2 layers, for CPU tests.")
@click.option("--configs", default="quik-4b,w4a8", show_default=True,
              help="Comma list of quantization presets (or YAML paths) to compare with the FP baseline.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Prefill batch size.")
@click.option("--seqlen", type=click.IntRange(min=2), default=2048, show_default=True,
              help="Prefill tokens per sequence (also the decode prompt length).")
@click.option("--decode-tokens", type=click.IntRange(min=0), default=64, show_default=True,
              help="Greedy tokens generated with the KV cache for decode tokens/s (0 = skip decode).")
@click.option("--reps", type=click.IntRange(min=1), default=5, show_default=True, help="Timed prefill runs (median).")
@click.option("--warmup", type=click.IntRange(min=1), default=2, show_default=True, help="Untimed prefill runs first.")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default="fp16", show_default=True,
              help="Model dtype (the FP baseline, and the QUIK layers' activations).")
@click.option("--distinct-weights", is_flag=True,
              help="Quantize every block's linears (slow on the host); default: quantize block 0 and copy it to "
                   "the other blocks on the device (same memory and speed).")
@click.option("--fuse/--no-fuse", default=True, show_default=True,
              help="Run the QUIK layers that read one input (q/k/v, gate/up) as one layer (eval-ppl --fuse).")
@BACKEND
@DEVICE
@JSON_OUT
def bench_model(arch, configs, batch, seqlen, decode_tokens, reps, warmup, dtype, distinct_weights, fuse, backend,
                device, json_out):
    """End to end: prefill and decode speed, weight/peak memory and checkpoint size, FP16 vs QUIK presets.

    Example on a GPU: quiktool bench model --device cuda --arch llama2-7b --decode-tokens 64"""
    from quiktool import api
    from quiktool.bench import format_model_table

    r = api.bench_model(arch, configs, batch, seqlen, decode_tokens, reps, warmup, device, backend, dtype,
                        distinct_weights, fuse=fuse)
    if json_out:
        api.write_json(json_out, r)
    click.echo(format_model_table(r))
    if r["errors"]:
        click.echo(f"error: {r['errors']} of {len(r['variants'])} variants failed (see the table)", err=True)
        sys.exit(1)


def main() -> None:
    cli(prog_name="quiktool")


if __name__ == "__main__":
    main()
