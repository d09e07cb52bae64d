import pytest
import torch

from conftest import FAMILIES, tiny_model
from quiktool.models.adapters import adapter_for
from quiktool.models.runner import LayerRunner


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_by_layer_inputs_equal_full_forward_hidden_states(family):
    m = tiny_model(family)
    g = torch.Generator().manual_seed(1)
    windows = torch.randint(0, m.config.vocab_size, (3, 17), generator=g)
    with torch.no_grad():
        hs = [m(w[None], output_hidden_states=True).hidden_states for w in windows]
    runner = LayerRunner(m, adapter_for(m), windows)
    seen = 0
    for i, _block in runner:
        want = torch.cat([h[i] for h in hs])
        torch.testing.assert_close(runner.inps, want, rtol=1e-5, atol=1e-5)
        seen += 1
    assert seen == m.config.num_hidden_layers


def test_runner_on_real_model(stories_path):
    from quiktool.models.loading import load_model

    m, tok, _ = load_model(str(stories_path))
    windows = tok("Once upon a time there was a little girl named Lily. She liked to play outside.",
                  return_tensors="pt").input_ids[:, :16].repeat(2, 1)
    with torch.no_grad():
        hs = m(windows, output_hidden_states=True).hidden_states
    runner = LayerRunner(m, adapter_for(m), windows)
    for i, _ in runner:
        torch.testing.assert_close(runner.inps, hs[i], rtol=1e-5, atol=1e-5)
