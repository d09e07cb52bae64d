"""Datasets by name or path, calibration windows, and the perplexity token stream.

Named datasets are read from a local data directory first (``--data-dir``, else the
``QUIKTOOL_DATA_DIR`` environment variable), laid out like ``../shared/data``:

    DIR/wikitext2/wiki.test.raw          WikiText-2 raw test split (perplexity)
    DIR/wikitext2/wiki.valid.tokens      WikiText-2 validation (calibration text)
    DIR/c4/c4_validation_2k.parquet      C4 validation documents (column ``text``)
    DIR/ptb/ptb.test.txt                 Penn Treebank test (one sentence a line)

and from the Hugging Face hub (through ``datasets``) only when no local copy exists. Any
``.txt``, ``.jsonl`` (field ``text``) or ``.parquet`` (column ``text``) file also works by path.

Perplexity follows the GPTQ/QUIK protocol: rows joined with "\\n\\n", tokenized once, cut into
``floor(n / seqlen)`` non-overlapping windows, the tail dropped.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from quiktool.errors import DataError

log = logging.getLogger(__name__)

DATASETS = ("wikitext2", "c4", "ptb")
# name -> split -> (relative local path, hub (path, config, split, column))
_LOCAL = {
    "wikitext2": {"test": "wikitext2/wiki.test.raw", "calib": "wikitext2/wiki.valid.tokens"},
    "c4": {"test": "c4/c4_validation_2k.parquet", "calib": "c4/c4_validation_2k.parquet"},
    "ptb": {"test": "ptb/ptb.test.txt", "calib": "ptb/ptb.train.txt"},
}
_HUB = {
    "wikitext2": {"test": ("wikitext", "wikitext-2-raw-v1", "test"), "calib": ("wikitext", "wikitext-2-raw-v1", "train")},
    "c4": {"test": ("allenai/c4", "en", "validation"), "calib": ("allenai/c4", "en", "validation")},
    "ptb": {"test": ("ptb_text_only", "penn_treebank", "test"), "calib": ("ptb_text_only", "penn_treebank", "train")},
}
_HUB_COLUMN = {"wikitext2": "text", "c4": "text", "ptb": "sentence"}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    d = data_dir or os.environ.get("QUIKTOOL_DATA_DIR")
    if not d:
        return None
    p = Path(d)
    if not p.is_dir():
        raise DataError(f"data directory {str(p)!r} does not exist; pass --data-dir DIR with e.g. DIR/wikitext2/wiki.test.raw")
    return p


def read_text_file(path: Path) -> list[str]:
    """Rows of a local file: .txt/.raw/.tokens (lines), .jsonl (``text``), .parquet (``text``)."""
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    suf = path.suffix.lower()
    try:
        if suf == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if "text" not in table.column_names:
                raise DataError(f"{str(path)!r} has no 'text' column; columns: {', '.join(table.column_names)}")
            rows = table.column("text").to_pylist()
        elif suf == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        obj = json.loads(line)
                        if not isinstance(obj, dict) or "text" not in obj:
                            raise DataError(f"{str(path)!r} line {i} has no 'text' field")
                        rows.append(obj["text"])
        else:
            # newline="" keeps each row's own line ending, as the `datasets` wikitext rows do
            with open(path, encoding="utf-8", newline="") as f:
                rows = [line if line.strip() else "" for line in f]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read data file {str(path)!r}: {e}") from None
    if not any(r.strip() for r in rows if isinstance(r, str)):
        raise DataError(f"data file {str(path)!r} holds no text")
    return [r for r in rows if isinstance(r, str)]


def load_rows(dataset: str, split: str = "test", data_dir: str | os.PathLike | None = None) -> list[str]:
    """Rows of text for a dataset name (``wikitext2``, ``c4``, ``ptb``) or a file path.

    ``split`` is ``test`` (evaluation) or ``calib`` (calibration text)."""
    if split not in ("test", "calib"):
        raise DataError(f"split {split!r} is not accepted; use 'test' or 'calib'")
    p = Path(dataset)
    if dataset not in DATASETS:
        if p.exists() or p.suffix:
            return read_text_file(p)
        raise DataError(f"dataset {dataset!r} is not known; use one of {', '.join(DATASETS)} or a .txt/.jsonl/.parquet path")
    d = resolve_data_dir(data_dir)
    if d is not None:
        local = d / _LOCAL[dataset][split]
        if local.is_file():
            log.info("dataset %s/%s from %s", dataset, split, local)
            return read_text_file(local)
    return _load_from_hub(dataset, split, d)


def _load_from_hub(dataset: str, split: str, d: Path | None) -> list[str]:
    where = f"{d}/{_LOCAL[dataset][split]}" if d else "no --data-dir / QUIKTOOL_DATA_DIR given"
    try:
        import datasets  # noqa: F401
        from datasets import load_dataset

        path, cfg, hsplit = _HUB[dataset][split]
        log.info("dataset %s/%s from the hub (%s)", dataset, split, path)
        kw = {"data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"}} if dataset == "c4" else {}
        ds = load_dataset(path, cfg if dataset != "c4" else None, split=hsplit, **kw)
        rows = list(ds[_HUB_COLUMN[dataset]])
    except Exception as e:  # offline, missing package, hub error: one actionable line
        raise DataError(
            f"dataset {dataset!r} ({split}) has no local copy ({where}) and the hub failed "
            f"({type(e).__name__}); pass --data-dir DIR holding {_LOCAL[dataset][split]}"
        ) from None
    if not rows:
        raise DataError(f"dataset {dataset!r} ({split}) is empty")
    return rows


def tokenize_stream(tokenizer, rows: list[str]) -> Tensor:
    """The GPTQ/QUIK perplexity stream: rows joined with "\\n\\n", tokenized once -> int64 [n]."""
    text = "\n\n".join(rows)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=True).input_ids[0]
    if ids.numel() == 0:
        raise DataError("the dataset tokenizes to zero tokens")
    return ids.long()


def eval_windows(ids: Tensor, seqlen: int, max_windows: int | None = None) -> Tensor:
    """Non-overlapping windows [n_windows, seqlen] of the stream, tail dropped."""
    n = ids.numel() // seqlen
    if n == 0:
        raise DataError(f"the dataset has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}; use a smaller --seqlen")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].reshape(n, seqlen)


def calibration_windows(tokenizer, rows: list[str], nsamples: int, seqlen: int, seed: int) -> Tensor:
    """``nsamples`` windows [nsamples, seqlen] for calibration, reproducible for a seed.

    Documents are shuffled with the seed, tokenized in that order into one stream (joined by
    "\\n\\n") until it holds ``nsamples * seqlen`` tokens, and cut into consecutive windows: distinct
    windows that cross document boundaries, so short documents (most of C4) are usable too."""
    if nsamples < 1 or seqlen < 2:
        raise DataError(f"nsamples={nsamples}, seqlen={seqlen}: use nsamples >= 1 and seqlen >= 2")
    docs = [r for r in rows if r.strip()]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(docs), generator=g).tolist()
    need = nsamples * seqlen
    chunks, have = [], 0
    sep = tokenizer("\n\n", add_special_tokens=False).input_ids
    for i in order:
        t = tokenizer(docs[i], add_special_tokens=False).input_ids
        chunks.append(torch.tensor(t + sep, dtype=torch.long))
        have += len(t) + len(sep)
        if have >= need:
            break
    if have < need:
        raise DataError(
            f"the calibration text has {have} tokens, fewer than nsamples*seqlen={need}; lower --nsamples or --seqlen"
        )
    return torch.cat(chunks)[:need].reshape(nsamples, seqlen)
