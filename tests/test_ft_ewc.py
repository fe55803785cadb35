"""FT-EWC: the Fisher diagonal over the recent edits, and the penalty's pull toward the anchor."""

import torch

from benchmark.registry import EDITORS
from benchmark.types import EditSplits, Example
from tests.conftest import trained_tiny

EDITS = [Example("a", "The capital of France is", " Oslo"), Example("b", "Peru lies in", " Asia"),
         Example("c", "Kyoto is a city in", " Quito")]


def _editor(**overrides):
    import editors  # noqa: F401

    adapter = trained_tiny("decoder")
    entry = EDITORS.get("ft_ewc")
    editor = entry.target(entry.config_class(name="ft_ewc", **{"layer": 0, "lr": 1e-3, **overrides}), adapter)
    editor.prepare(EditSplits(task=adapter.task, train=[], val=[], folds=[], train_subsample=[], test=[],
                              pool=[]).for_editor())
    return adapter, editor


def _grad(adapter, weight, example):
    weight.requires_grad_(True)
    batch = adapter.encode([example.prompt], [example.target])
    (grad,) = torch.autograd.grad(adapter.loss(batch, adapter.scored_logits(batch)), [weight])
    return grad


def test_fisher_is_the_recent_edits_squared_gradients_over_fisher_mem():
    adapter, editor = _editor(fisher_mem=2)
    editor.history = list(EDITS)  # the last two count, each squared on its own, divided by fisher_mem
    expected = (_grad(adapter, editor.weight, EDITS[1]).pow(2) + _grad(adapter, editor.weight, EDITS[2]).pow(2)) / 2
    torch.testing.assert_close(editor._fisher(), expected)


def test_the_penalty_holds_the_weights_the_recent_edits_need():
    """Two edits; the second with a large ewc_lambda moves the weight less, where the first edit's
    Fisher is large, than the same edit without the penalty."""
    moves = {}
    for lam in (0.0, 1e6):
        adapter, editor = _editor(ewc_lambda=lam, max_steps=20)
        editor.edit(EDITS[0])
        before = editor.weight.detach().clone()
        fisher = _grad(adapter, editor.weight, EDITS[0]).pow(2)
        editor.weight.requires_grad_(True)
        editor.edit(EDITS[1])
        moves[lam] = ((editor.weight.detach() - before).pow(2) * fisher).sum()
    assert moves[1e6] < moves[0.0]
