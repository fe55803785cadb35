"""MELO: the key database routes a sequence to one edit's LoRA block or to none; with none, or
before any edit, the model is the base model exactly; the clustering is GRACE's (add, join, split)."""

import pytest
import torch

from benchmark.registry import EDITORS
from benchmark.types import EditSplits, Example
from editors.melo import NO_BLOCK
from tests.conftest import trained_tiny, wrong_target

PROMPTS = ["Zanzibar is known for", "Quito is known for", "Oslo is known for", "Lima is known for"]


def _editor(**overrides):
    import editors  # noqa: F401

    adapter = trained_tiny("decoder")
    entry = EDITORS.get("melo")
    settings = {"router_layer": 0, "lora_layers": [1], "max_steps": 40, "lr": 1e-2, **overrides}
    editor = entry.target(entry.config_class(name="melo", **settings), adapter)
    editor.prepare(EditSplits(task=adapter.task, train=[], val=[], folds=[], train_subsample=[], test=[],
                              pool=[]).for_editor())
    return adapter, editor


def _logits(adapter, prompts, targets):
    with torch.no_grad():
        return adapter.scored_logits(adapter.encode(prompts, targets))


def test_a_routed_sequence_runs_its_block_and_the_others_the_base_model():
    adapter, editor = _editor(init_radius=1e-3)
    prompt = "The capital of France is"
    example = Example("e", prompt, wrong_target(adapter, prompt))
    base = _logits(adapter, PROMPTS, [" x"] * len(PROMPTS))
    result = editor.edit(example)
    assert result.info == {"action": "added", "clusters": 1, "blocks": 1}
    assert editor.scores([prompt], [example.target]) == [1.0]
    # every other prompt's key is farther than the radius: no block, the base model bit for bit
    assert torch.equal(_logits(adapter, PROMPTS, [" x"] * len(PROMPTS)), base)
    # a batch mixing the edit with the others: only its rows change, as in a batch of its own
    mixed = _logits(adapter, [prompt, *PROMPTS], [example.target, *[" x"] * len(PROMPTS)])
    alone = _logits(adapter, [prompt], [example.target])
    rows = len(alone)
    torch.testing.assert_close(mixed[:rows], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[rows:], base)
    with editor.disabled():
        assert editor.scores([prompt], [example.target]) == [0.0]


def test_a_block_adds_x_a_b_times_the_block_count():
    """pt:847: each slice is scaled by sqrt(r / rank_per_block), so a block's update is x A_b B_b x blocks."""
    adapter, editor = _editor(blocks=7)
    prompt = "The capital of France is"
    editor.edit(Example("e", prompt, wrong_target(adapter, prompt)))
    a, b = editor.A[0][0], editor.B[0][0]
    assert b.abs().sum() > 0
    seen = {}
    target = editor.targets[0]
    hook = target.register_forward_hook(lambda _m, args, out: seen.update(x=args[0], out=out))
    with editor.disabled(), torch.no_grad():
        adapter.scored_logits(adapter.encode([prompt], [" x"]))
    hook.remove()
    with torch.no_grad():
        editor._route = torch.tensor([0])
        added = editor._lora(0)(target, (seen["x"],), seen["out"]) - seen["out"]
    torch.testing.assert_close(added, seen["x"] @ a @ b * 7)
    fresh = editor._new_block(1)[0][0]
    assert fresh.abs().max() <= (7 * 2) ** -0.5 and fresh.shape == a.shape  # Kaiming bound on [d_in, r], r = 14


def test_the_database_adds_joins_and_splits_as_published():
    _, editor = _editor(init_radius=1.0)
    key = torch.zeros(4)
    assert editor._place(key, "Paris", 0) == "added"
    far = torch.tensor([5.0, 0, 0, 0])  # beyond radius + init_radius (2.0)
    assert editor._place(far, "Rome", 1) == "added"
    near = torch.tensor([0, 1.5, 0, 0])  # within 2.0 of the first, same label: joins it
    assert editor._place(near, "Paris", 2) == "joined"
    torch.testing.assert_close(editor.centres[0], torch.tensor([0, 0.75, 0, 0]))
    assert editor.radii[0] == pytest.approx(1.0)  # farthest point 0.75 away: init_radius stays
    clash = torch.tensor([0, 0.75, 1.2, 0])  # 1.2 from that centre, another label: split
    assert editor._place(clash, "Berlin", 3) == "split"
    assert editor.radii[0] == pytest.approx(0.6 - 1e-5) and editor.radii[-1] == pytest.approx(0.6 + 1e-5)
    assert editor._counts["forgotten"] == 2  # both points 0.75 from the centre, beyond 0.6
    # the emptied cluster keeps its centre, mapped to no block; the new one maps to block 3
    queries = torch.stack([torch.tensor([0, 0.75, 0.1, 0]), clash, far, torch.tensor([0, 9.0, 0, 0])])
    assert editor.lookup(queries).tolist() == [NO_BLOCK, 3, 1, NO_BLOCK]


def test_blocks_run_out_with_a_clear_error_and_a_fold_starts_empty():
    adapter, editor = _editor(blocks=1, max_steps=2)
    prompt = "The capital of France is"
    example = Example("e", prompt, wrong_target(adapter, prompt))
    editor.edit(example)
    assert editor.params_added() > 0
    with pytest.raises(RuntimeError, match="editor.blocks=1"):
        editor.edit(example)
    state = editor.edit_state()
    editor.reset()
    assert editor.params_added() == 0 and editor.lookup(torch.zeros(1, 4)).tolist() == [NO_BLOCK]
    editor.load_edit_state(state)
    assert editor.fold_report()["blocks"] == 1


def test_lora_blocks_must_follow_the_router():
    with pytest.raises(ValueError, match="after its router"):
        _editor(router_layer=1, lora_layers=[0])
