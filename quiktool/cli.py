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
    if quiet:
        import transformers

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
@DATA_DIR
@DEVICE
@JSON_OUT
@click.pass_context
def eval_ppl(ctx, model, dataset, seqlen, max_windows, dtype, backend, max_ppl, data_dir, device, json_out):
    """Perplexity on non-overlapping windows (GPTQ/QUIK protocol) of a model or a packed checkpoint."""
    from quiktool import api

    r = api.eval_ppl(model, dataset, seqlen, max_windows, data_dir, device, dtype, backend, progress=ctx.obj["progress"])
    if json_out:
        api.write_json(json_out, r)
    click.echo(_table({k: r[k] for k in ("model", "dataset", "seqlen", "windows", "tokens", "ppl", "seconds", "backend")}))
    if max_ppl is not None and not r["ppl"] <= max_ppl:
        click.echo(f"error: perplexity {r['ppl']:.4f} exceeds --max-ppl {max_ppl}", err=True)
        sys.exit(1)


def main() -> None:
    cli(prog_name="quiktool")


if __name__ == "__main__":
    main()
