"""Datasets by name or path, the perplexity stream and windows, calibration windows (offline)."""
from __future__ import annotations

import json

import pytest
import torch

from quiktool.data import (
    calibration_windows,
    eval_windows,
    load_rows,
    read_text_file,
    resolve_data_dir,
    tokenize_stream,
)
from quiktool.errors import DataError


class CharTokenizer:
    """A transparent tokenizer: one id per character (ord), optional BOS id 0; records what it was given."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        self.calls.append(text)
        ids = ([0] if add_special_tokens else []) + [ord(c) for c in text]

        class Out:
            input_ids = torch.tensor([ids]) if return_tensors == "pt" else ids

        return Out()


def decode(ids) -> str:
    return "".join(chr(i) for i in ids)


@pytest.fixture(scope="module")
def stories_tok(shared_dir):
    p = shared_dir / "models" / "stories260K"
    if not (p / "tokenizer.model").is_file():
        pytest.skip(f"no tokenizer at {p}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p))


# ------------------------------------------------------------------------------------- wikitext2
def test_wikitext2_rows_from_data_dir(data_dir, monkeypatch):
    rows = load_rows("wikitext2", "test", data_dir)
    assert len(rows) == 4358
    # the rows of the `datasets` wikitext-2-raw-v1 test split: blank lines are "", others keep their "\n"
    assert rows[0] == "" and rows[1] == " = Robert Boulter = \n" and rows[2] == ""
    assert all(r == "" or r.endswith("\n") for r in rows)
    assert sum(1 for r in rows if r == "") > 1000
    # the env var works like --data-dir
    monkeypatch.setenv("QUIKTOOL_DATA_DIR", str(data_dir))
    assert load_rows("wikitext2", "test") == rows


def test_wikitext2_stream_joins_rows_with_blank_lines(data_dir):
    rows = load_rows("wikitext2", "test", data_dir)
    tok = CharTokenizer()
    ids = tokenize_stream(tok, rows)
    assert len(tok.calls) == 1  # tokenized once
    text = tok.calls[0]
    assert text == "\n\n".join(rows)
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is an English film")
    assert ids.dtype == torch.int64 and ids.shape == (len(text) + 1,)
    assert ids[0].item() == 0 and decode(ids[1:101].tolist()) == text[:100]  # special tokens are added


def test_stream_with_real_tokenizer(data_dir, stories_tok):
    rows = load_rows("wikitext2", "test", data_dir)[:300]
    ids = tokenize_stream(stories_tok, rows)
    assert ids.dtype == torch.int64 and ids.dim() == 1
    assert ids[0].item() == stories_tok.bos_token_id
    assert ids.tolist() == stories_tok("\n\n".join(rows)).input_ids
    w = eval_windows(ids, 128)
    assert w.shape == (ids.numel() // 128, 128)


def test_c4_local_parquet(data_dir):
    if not (data_dir / "c4" / "c4_validation_2k.parquet").is_file():
        pytest.skip("no local C4")
    rows = load_rows("c4", "calib", data_dir)
    assert len(rows) == 2000 and all(isinstance(r, str) and r.strip() for r in rows)


# ------------------------------------------------------------------------------------- windows
@pytest.mark.parametrize("n,seqlen", [(1000, 64), (128, 64), (129, 64), (172, 1), (5, 5)])
def test_eval_windows_drop_the_tail(n, seqlen):
    g = torch.Generator().manual_seed(n)
    ids = torch.randint(0, 32000, (n,), generator=g)
    w = eval_windows(ids, seqlen)
    k = n // seqlen
    assert w.shape == (k, seqlen)
    for i in range(k):
        assert torch.equal(w[i], ids[i * seqlen:(i + 1) * seqlen])
    w2 = eval_windows(ids, seqlen, max_windows=1)
    assert torch.equal(w2, w[:1])
    assert eval_windows(ids, seqlen, max_windows=10 ** 6).shape == (k, seqlen)


def test_eval_windows_reject_short_stream():
    ids = torch.arange(1, 100)
    with pytest.raises(DataError, match="seqlen=100"):
        eval_windows(ids, 100)


def _docs(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = []
    for i in range(n):
        length = int(torch.randint(3, 40, (1,), generator=g))
        docs.append(f"<{i}>" + "".join(chr(97 + int(c)) for c in torch.randint(0, 26, (length,), generator=g)))
    return docs


def test_calibration_windows_shape_seed_and_content():
    docs = _docs()
    rows = docs[:10] + ["", "   \n"] + docs[10:]  # blank rows are skipped
    tok = CharTokenizer()
    a = calibration_windows(tok, rows, nsamples=6, seqlen=50, seed=0)
    assert a.shape == (6, 50) and a.dtype == torch.int64
    assert torch.equal(a, calibration_windows(CharTokenizer(), rows, 6, 50, seed=0))
    b = calibration_windows(CharTokenizer(), rows, 6, 50, seed=1)
    assert b.shape == (6, 50) and not torch.equal(a, b)
    # the windows are consecutive pieces of one stream of whole documents, each followed by "\n\n",
    # no document twice, no special tokens
    text = decode(a.flatten().tolist())
    pieces = text.split("\n\n")
    assert len(pieces) >= 2
    assert all(p in docs for p in pieces[:-1])
    assert len(set(pieces[:-1])) == len(pieces) - 1
    assert any(d.startswith(pieces[-1]) for d in docs) or pieces[-1] == ""
    assert 0 not in a.tolist()


def test_calibration_windows_real_tokenizer(data_dir, stories_tok):
    rows = load_rows("wikitext2", "calib", data_dir)
    a = calibration_windows(stories_tok, rows, 4, 32, seed=3)
    assert a.shape == (4, 32)
    assert torch.equal(a, calibration_windows(stories_tok, rows, 4, 32, seed=3))
    assert not torch.equal(a, calibration_windows(stories_tok, rows, 4, 32, seed=4))
    assert int(a.min()) >= 0 and int(a.max()) < stories_tok.vocab_size


def test_calibration_windows_errors():
    docs = _docs(5)
    need = 10 ** 4
    with pytest.raises(DataError, match="fewer than"):
        calibration_windows(CharTokenizer(), docs, nsamples=need, seqlen=64, seed=0)
    with pytest.raises(DataError):
        calibration_windows(CharTokenizer(), docs, nsamples=0, seqlen=64, seed=0)
    with pytest.raises(DataError):
        calibration_windows(CharTokenizer(), docs, nsamples=2, seqlen=1, seed=0)
    with pytest.raises(DataError):
        calibration_windows(CharTokenizer(), ["", "  "], nsamples=1, seqlen=2, seed=0)


# ------------------------------------------------------------------------------------- files
def test_txt_by_path(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"first line\n\nthird \xc3\xa9\r\n   \nlast")
    rows = load_rows(str(p))
    assert rows == ["first line\n", "", "third \u00e9\r\n", "", "last"]


def test_jsonl_by_path(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"text": "alpha", "id": 1}) + "\n\n" + json.dumps({"text": "beta\nb"}) + "\n")
    assert load_rows(str(p)) == ["alpha", "beta\nb"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match="line 1 has no 'text'"):
        load_rows(str(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match="broken.jsonl"):
        load_rows(str(broken))


def test_parquet_by_path(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["one", None, "three"], "url": ["a", "b", "c"]}), p)
    assert load_rows(str(p)) == ["one", "three"]
    q = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"body": ["x"]}), q)
    with pytest.raises(DataError, match="no 'text' column"):
        load_rows(str(q))
    r = tmp_path / "garbage.parquet"
    r.write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError, match="garbage.parquet"):
        load_rows(str(r))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_rows(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="does not exist"):
        read_text_file(tmp_path / "nope.jsonl")
    for name, content in (("e.txt", ""), ("blank.txt", "\n  \n\n"), ("e.jsonl", "\n\n")):
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match="holds no text"):
            load_rows(str(tmp_path / name))
    bin_ = tmp_path / "bin.txt"
    bin_.write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(DataError, match="bin.txt"):
        load_rows(str(bin_))


def test_unknown_dataset_and_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.delenv("QUIKTOOL_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="wikitext3.*not known"):
        load_rows("wikitext3")
    with pytest.raises(DataError, match="split"):
        load_rows("wikitext2", "train", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_rows("wikitext2", "test", tmp_path / "no-such-dir")
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "no-such-dir")
    assert resolve_data_dir(tmp_path) == tmp_path
