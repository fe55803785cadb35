"""T-Patcher's published recipe (`editor.recipe=official`): its stop rule, its memory loss over
dropout copies, its losses, and what an edit by it guarantees."""

import pytest
import torch

from benchmark.config import compose, instantiate
from benchmark.models.task import TASKS
from benchmark.types import CLASSIFICATION, GENERATION, EditSplits, Example
from editors.tpatcher import TPatcherConfig, TPatcherEditor
from editors.tpatcher_official import COPIES, MARGINS, memory_loss, official_edit_loss, stop_now
from tests.conftest import trained_tiny, wrong_target


def test_stop_rule_is_the_published_early_stop():
    """Stop once the newest D_val memory loss is not 0.001 below the best so far (patience 1)."""
    assert not stop_now([1.0])
    assert not stop_now([1.0, 0.9]) and not stop_now([1.0, 0.9, 0.8])
    assert stop_now([1.0, 0.9995]) and stop_now([1.0, 1.2]) and stop_now([1.0, 0.9, 0.95])


@pytest.mark.parametrize("kind, m1, m2", [(CLASSIFICATION, 3.0, -3.0), (GENERATION, 0.0, 0.0)])
def test_memory_loss_counts_each_row_once_per_copy(kind, m1, m2):
    """With 8 equal copies the top 1,000 of (row, copy) entries are the top 125 rows, 8 times each;
    the margins are the classifier editor's 3 and -3, the QA editor's 0 and 0 (its patch never
    receives the arguments: seq2seq_modules.py:234-242)."""
    torch.manual_seed(0)
    memory, keys, bias = torch.randn(300, 4), torch.randn(4, 1), torch.tensor([0.1])
    act = 0.7
    his = (memory @ keys + bias).squeeze(1)
    top = his.topk(1000 // COPIES).values
    expected = (top - act + m1).exp().mean() + (top - m2).exp().mean()
    assert MARGINS[kind] == (m1, m2)
    got = memory_loss(memory, keys, bias, torch.full((COPIES, 1), act), MARGINS[kind])
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_official_edit_losses():
    logits, targets = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.0, 0.0]]), torch.tensor([0, 1])
    batch = type("B", (), {"targets": targets})()
    lp = logits.log_softmax(-1)
    eps_i = 0.1 / 2
    expected = ((1 - 0.1 - eps_i) * -lp[[0, 1], targets].sum() + eps_i * -lp.sum()) / 2
    assert official_edit_loss(TASKS["generation"], batch, logits).item() == pytest.approx(expected.item(), rel=1e-6)
    z, y = torch.tensor([0.3, -1.2]), torch.tensor([1.0, 0.0])
    p = torch.sigmoid(z)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
    cls = official_edit_loss(TASKS["classification"], type("B", (), {"targets": y})(), z)
    assert cls.item() == pytest.approx((bce - 0.1 * entropy).item(), rel=1e-6)


def test_official_defaults_resolve_after_overrides():
    """Unset fields take the recipe's defaults once every override is in (a recipe given on the
    command line still gets its 2,000 steps), for T-Patcher and the FT baselines alike."""
    base = ["data=facts", "model=tiny-llama"]
    editor = instantiate(compose([*base, "editor=tpatcher", "editor.recipe=official"])).editor
    assert (editor.max_steps, editor.memory_weight, editor.value_scale, editor.mode) == (2000, 5.0, 10.0, "naive")
    editor = instantiate(compose([*base, "editor=tpatcher"])).editor
    assert (editor.max_steps, editor.memory_weight, editor.value_scale, editor.mode) == (300, 10.0, 5.0, "fast")
    assert instantiate(compose([*base, "editor=ft_kl_all", "editor.recipe=official"])).editor.max_steps == 2000
    assert instantiate(compose([*base, "editor=tpatcher", "editor.recipe=official",
                                "editor.max_steps=50"])).editor.max_steps == 50
    with pytest.raises(ValueError, match="recipe=official trains in train mode"):
        TPatcherConfig(name="tpatcher", recipe="official", mode="fast")


def _splits(adapter, val=True):
    cls = adapter.task == "classification"
    words = ["Zanzibar", "Quito", "Oslo", "Lima", "Hanoi", "Doha"]
    memory = [Example(f"m{i}", f"{w} is known for", i % 2 if cls else f" {w}") for i, w in enumerate(words)]
    return EditSplits(task=adapter.task, train=memory, val=memory[:2] if val else [], folds=[], train_subsample=[],
                      test=[], pool=memory)


@pytest.mark.parametrize("family", ["classifier", "decoder"])
def test_an_official_edit_follows_the_published_schedule(family):
    """Checks every 25 steps from epoch 100: an edit stops at a check (>= 150 steps, two D_val
    readings with the edit right, the newest not better) or at max_steps; the memories grow by
    the edited example only; the model is back in eval mode."""
    adapter = trained_tiny(family)
    editor = TPatcherEditor(TPatcherConfig(name="tpatcher", recipe="official", max_steps=200), adapter)
    splits = _splits(adapter)
    editor.prepare(splits.for_editor())
    memory, val = len(editor.memory), len(editor.val_memory)
    assert val == len(editor._queries(splits.val))
    bystander = splits.pool[0]
    editor.after_example(bystander, editor.check(bystander))  # not edited: the published memory does not take it
    assert len(editor.memory) == memory
    prompt = "The capital of France is"
    example = Example("e", prompt, wrong_target(adapter, prompt))
    torch.manual_seed(0)
    result = editor.edit(example)
    losses = result.info["val_memory_losses"]
    if result.info["solved"]:
        assert result.steps % 25 == 0 and result.steps >= 150 and len(losses) >= 2 and stop_now(losses)
        assert not any(stop_now(losses[:i]) for i in range(1, len(losses)))
    else:
        assert result.steps == 200 and result.info["failure"].startswith("max_steps (200)")
    grown = len(editor._queries([example]))
    assert len(editor.memory) == memory + grown and len(editor.val_memory) == val + grown
    assert not adapter.model.training
    editor.reset()
    assert (len(editor.memory), len(editor.val_memory), len(editor.bank)) == (memory, val, 0)


def test_official_recipe_needs_a_d_val():
    adapter = trained_tiny("decoder")
    editor = TPatcherEditor(TPatcherConfig(name="tpatcher", recipe="official"), adapter)
    with pytest.raises(ValueError, match="D_val memory"):
        editor.prepare(_splits(adapter, val=False).for_editor())
