"""WISE: the fast path exact against the full forward at the first and the last block, the
router deciding per example (a padded batch answers as each example alone), TIES by hand, and
shards kept and merged as the published schedule says."""

import random

import pytest
import torch

from benchmark.registry import EDITORS
from benchmark.types import EditSplits, Example
from editors.wise import ties_merge
from tests.conftest import DONORS, tiny, trained_tiny, wrong_target

PROMPTS = ["The capital of France is", "Kyoto is a city in", "The currency of Peru is the"]


def _editor(adapter=None, **overrides):
    import editors  # noqa: F401

    adapter = adapter or trained_tiny("decoder")
    entry = EDITORS.get("wise")
    editor = entry.target(entry.config_class(name="wise", **overrides), adapter)
    pool = [Example(f"m{i}", d, wrong_target(adapter, d)) for i, d in enumerate(DONORS)]
    editor.prepare(EditSplits(task=adapter.task, train=pool, val=[], folds=[], train_subsample=[], test=[],
                              pool=pool).for_editor())
    return adapter, editor


@pytest.mark.parametrize("layer", [0, -1])
def test_fast_path_is_the_full_forward_with_the_side_memory(layer):
    """What an edit trains on, `finish` of the side memory's output at every position, equals the
    full forward with the block's output projection set to the side memory."""
    adapter, editor = _editor(tiny("tiny-llama", layers=3), layer=layer)
    batch = adapter.encode(PROMPTS, [" Paris", " Japan", " sol"])  # padded
    x, main, finish = editor._capture(batch)
    side = editor.original + 0.05 * torch.randn_like(editor.original)
    with torch.no_grad():
        fast = finish(torch.nn.functional.linear(x, side))
        weight = editor.site.out_proj.weight
        kept = weight.detach().clone()
        weight.copy_(side)
        try:
            with editor.disabled():
                full = adapter.scored_logits(batch)
        finally:
            weight.copy_(kept)
        with editor.disabled():
            torch.testing.assert_close(main, editor.site.out_proj(x))
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


def test_the_router_decides_per_example_and_the_edit_is_routed_to_the_side_memory():
    random.seed(0)  # the unrelated prompt and the shard's mask, as the loop seeds each edit
    torch.manual_seed(0)
    adapter, editor = _editor(layer=-1)
    example = Example("e", PROMPTS[0], wrong_target(adapter, PROMPTS[0]))
    result = editor.edit(example)
    assert result.info["gap"] == editor.side_min_gap < float("inf") and editor.params_added() == editor.side.numel()
    together = adapter.encode(PROMPTS, [example.target, " Japan", " sol"])
    with torch.no_grad():
        batched = adapter.example_scores(together, adapter.scored_logits(together))
        alone = [adapter.example_scores(b, adapter.scored_logits(b))[0]
                 for b in (adapter.encode([p], [t]) for p, t in zip(PROMPTS, [example.target, " Japan", " sol"]))]
    assert batched.tolist() == [float(a) for a in alone]
    base = adapter.encode([example.prompt], [example.target])
    with torch.no_grad(), editor.disabled():
        main = adapter.scored_logits(base)
    with torch.no_grad():
        edited = adapter.scored_logits(base)
    assert not torch.allclose(main, edited)  # the edit prompt is answered by the side memory


def test_ties_merge_by_hand():
    base = torch.zeros(4)
    a, b = torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([2.0, 1.0, -1.0, 0.25])
    # density 1: every change kept; signs by the weighted sum; agreeing entries averaged by weight
    merged = ties_merge(base, [a, b], [0.5, 0.5], 1.0)
    torch.testing.assert_close(merged, torch.tensor([1.5, -2.0, 3.0, 0.375]))
    # density 0.5: each keeps its 2 largest changes (a: -2, 3; b: 2, 1)
    merged = ties_merge(base, [a, b], [0.5, 0.5], 0.5)
    torch.testing.assert_close(merged, torch.tensor([2.0, -2.0, 3.0, 0.0]))


def test_shards_are_kept_and_merged_on_schedule_and_the_state_round_trips():
    adapter, editor = _editor(layer=-1, save_freq=1, merge_freq=2, max_steps=5)
    for i, prompt in enumerate(PROMPTS[:2]):
        editor.edit(Example(f"e{i}", prompt, wrong_target(adapter, prompt)))
        if i == 0:
            assert len(editor.shards) == 1 and editor.side_min_gap == float("inf")
    assert len(editor.shards) == 1 and editor.merges == 1  # two shards merged into one
    state = editor.edit_state()
    batch = adapter.encode(PROMPTS, [" Paris", " Japan", " sol"])
    with torch.no_grad():
        before = adapter.scored_logits(batch)
    editor.reset()
    assert not editor.shards and editor.params_added() == 0
    editor.load_edit_state(state)
    with torch.no_grad():
        torch.testing.assert_close(adapter.scored_logits(batch), before)


def test_the_unrelated_prompt_is_a_pool_records_locality_pair_paired_by_edit_index():
    """unrelated=locality (the published loc_prompts, run_wise_editing.py:46-48): the i-th edit
    takes the i-th locality pair of the pool records that have one; without any, a pool fact;
    unrelated=pool always a pool fact. The edited example's own locality is never read (the
    loop hands it over without)."""
    import editors  # noqa: F401

    adapter = trained_tiny("decoder")
    pairs = [("Kyoto is a city in", " Japan"), ("The currency of Peru is the", " sol")]
    pool = [Example(f"m{i}", d, wrong_target(adapter, d), locality=[pairs[i]] if i < 2 else [])
            for i, d in enumerate(DONORS)]
    entry = EDITORS.get("wise")
    for choice, expected in (("locality", [pairs[0], pairs[1], pairs[0]]), ("pool", None)):
        editor = entry.target(entry.config_class(name="wise", layer=-1, unrelated=choice), adapter)
        editor.prepare(EditSplits(task=adapter.task, train=pool, val=[], folds=[], train_subsample=[], test=[],
                                  pool=pool).for_editor())
        drawn = []
        for i in range(3):
            editor.edits = i
            drawn.append(editor._unrelated())
        if expected:
            assert drawn == expected
        else:
            assert all((p, t) in {(e.prompt, e.target) for e in pool} for p, t in drawn)
    with pytest.raises(ValueError, match="editor.unrelated"):
        entry.config_class(name="wise", unrelated="own")
