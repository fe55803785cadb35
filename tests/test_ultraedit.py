"""UltraEdit: the keys and gradients it reads, its lifelong normaliser, its ridge update."""

import pytest
import torch

from benchmark.registry import EDITORS
from benchmark.types import EditSplits, Example
from tests.conftest import trained_tiny

EDITS = [Example("a", "The capital of France is", " Oslo Lima"), Example("b", "Peru lies in", " Asia Doha"),
         Example("c", "Kyoto is a city in", " Quito")]


def _editor(family="decoder", **overrides):
    import editors  # noqa: F401

    adapter = trained_tiny(family)
    entry = EDITORS.get("ultraedit")
    last = len(adapter.layer_modules()) - 1
    settings = {"in_layers": [0], "up_layers": [], "out_layers": [last], "lr": 1e-3, **overrides}
    editor = entry.target(entry.config_class(name="ultraedit", **settings), adapter)
    editor.prepare(EditSplits(task=adapter.task, train=[], val=[], folds=[], train_subsample=[], test=[],
                              pool=[]).for_editor())
    return adapter, editor


@pytest.mark.parametrize("token", ["mask", "ans"])
def test_keys_and_gradients_are_the_layers_inputs_and_output_gradients(token):
    """K^T G is the loss's gradient for the layer's weight: over every position (token=mask) for any
    layer; over the answer's positions (token=ans) for the last block, whose output at one position
    reaches only that position's logits."""
    adapter, editor = _editor(token=token)
    pairs = editor._keys_and_gradients(EDITS[:2])
    layers = editor.layers if token == "mask" else editor.layers[-1:]
    pairs = pairs if token == "mask" else pairs[-1:]
    for module, (keys, grads) in zip(layers, pairs):
        module.weight.requires_grad_(True)
        batch = adapter.encode([e.prompt for e in EDITS[:2]], [e.target for e in EDITS[:2]])
        (expected,) = torch.autograd.grad(adapter.loss(batch, adapter.scored_logits(batch)), [module.weight])
        module.weight.requires_grad_(False)
        torch.testing.assert_close(grads.T @ keys, expected, rtol=1e-4, atol=1e-6)


def test_normaliser_runs_over_every_row_as_published():
    """nets.py RunningMeanStd over chunks: the mean of all rows; var accumulates each chunk's m times
    its unbiased variance plus Chan's between-chunk term, i.e. M2 + the sum of the chunks' variances;
    one row alone adds no spread (the published update's NaN) and standardises to 0."""
    from editors.ultraedit import LifelongNormaliser

    torch.manual_seed(0)
    chunks = [torch.randn(1, 4), torch.randn(5, 4) * 3 + 1, torch.randn(7, 4) - 2]
    norm = LifelongNormaliser(4, "cpu")
    norm.update(chunks[0])
    assert torch.equal(norm(chunks[0]), torch.zeros(1, 4))
    for x in chunks[1:]:
        norm.update(x)
    rows = torch.cat(chunks)
    torch.testing.assert_close(norm.mean, rows.mean(0))
    m2 = ((rows - rows.mean(0)) ** 2).sum(0)
    extra = sum(x.var(0) for x in chunks[1:])
    torch.testing.assert_close(norm.std, ((m2 + extra) / (len(rows) - 1)).sqrt(), rtol=1e-5, atol=1e-6)


def test_update_solves_the_ridge_from_the_raw_keys_to_the_normalised_values():
    """dW^T = argmin |K dW^T - V|^2 + |dW^T|^2 (ULTRAEDIT.py:91-94): the normal equations hold, with
    V = -lr |K^|^2 G^ from the normaliser as it stands after the turn (chunks of 2 here)."""
    adapter, editor = _editor(chunk_size=2, token="mask")
    before = [m.weight.detach().clone() for m in editor.layers]
    pairs = editor._keys_and_gradients(EDITS[:2]), editor._keys_and_gradients(EDITS[2:])
    editor.reset()
    editor.edit_batch(EDITS)
    for i, module in enumerate(editor.layers):
        keys = torch.cat([p[i][0] for p in pairs])
        grads = torch.cat([p[i][1] for p in pairs])
        d_in = keys.shape[1]
        z = editor.normalisers[(d_in, grads.shape[1])](torch.cat([keys, grads], -1))
        values = -1e-3 * (z[:, :d_in] ** 2).sum(-1, keepdim=True) * z[:, d_in:]
        shift = (module.weight.detach() - before[i]).T.double()
        residual = keys.double().T @ (keys.double() @ shift - values.double()) + shift
        assert float(residual.abs().max()) < 1e-4 * float((keys.double().T @ values.double()).abs().max())
        assert shift.abs().max() > 0


def test_up_projections_need_a_gated_ffn():
    import editors  # noqa: F401

    entry = EDITORS.get("ultraedit")
    with pytest.raises(ValueError, match="not gated"):
        entry.target(entry.config_class(name="ultraedit", in_layers=[], up_layers=[0]), trained_tiny("classifier"))
    adapter = trained_tiny("decoder")  # a LLaMA: its up projection is the site's
    editor = entry.target(entry.config_class(name="ultraedit", in_layers=[], up_layers=[0]), adapter)
    assert editor.layers == [adapter.layer_modules()[0].mlp.up_proj]


def test_unset_layers_are_the_presets_blocks_at_the_same_relative_depth():
    """LLaMA-3-8B's gates 11-15 and ups 18-24 of 32 on a gated FFN, GPT-J's fc_out 18-26 of 28 on
    another; given layers are kept as given."""
    from editors.configs.ultraedit import UltraEditConfig
    from editors.ultraedit import preset_layers

    unset = UltraEditConfig(name="ultraedit")
    assert preset_layers(unset, 32, True) == {"in_layers": [11, 12, 13, 14, 15],
                                              "up_layers": [18, 19, 20, 21, 22, 23, 24], "out_layers": []}
    assert preset_layers(unset, 30, True) == {"in_layers": [10, 11, 12, 13, 14],
                                              "up_layers": [16, 17, 18, 19, 20, 21, 22], "out_layers": []}
    assert preset_layers(unset, 28, False)["out_layers"] == list(range(18, 27))
    assert preset_layers(unset, 6, False) == {"in_layers": [], "up_layers": [], "out_layers": [3, 4, 5]}
    given = UltraEditConfig(name="ultraedit", in_layers=[1], up_layers=[], out_layers=[])
    assert preset_layers(given, 30, True) == {"in_layers": [1], "up_layers": [], "out_layers": []}
