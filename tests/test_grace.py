"""GRACE: the codebook rules of the published code, and its fast path exact against the full
forward at the first and the last block, for every family it serves, alone and in padded batches."""

import pytest
import torch

from benchmark.registry import EDITORS
from benchmark.types import EditSplits, Example
from tests.conftest import trained_tiny, wrong_target

PROMPTS = ["The capital of France is", "Kyoto is a city in", "The currency of Peru is the"]


def _editor(family: str, **overrides):
    import editors  # noqa: F401

    adapter = trained_tiny(family)
    entry = EDITORS.get("grace")
    editor = entry.target(entry.config_class(name="grace", **overrides), adapter)
    editor.prepare(EditSplits(task=adapter.task, train=[], val=[], folds=[], train_subsample=[], test=[],
                              pool=[]).for_editor())
    return adapter, editor


@pytest.mark.parametrize("layer", [0, -1])
@pytest.mark.parametrize("family", ["decoder", "classifier", "masked"])
def test_fast_path_is_the_full_forward(family, layer):
    """The logits an edit trains on (cached prefix, `finish` from the FFN output with the value at
    the read position) are the full forward's with the codebook hook, and a padded batch scores
    the edited example as it scores it alone."""
    adapter, editor = _editor(family, layer=layer, max_steps=8)
    example = Example("e", PROMPTS[0], wrong_target(adapter, PROMPTS[0]))
    editor.edit(example)
    batch = adapter.encode([example.prompt], [example.target])
    with torch.no_grad():
        full = adapter.scored_logits(batch)
        with editor.disabled():
            cache = adapter.capture(batch, layer)
            base = adapter.scored_logits(batch)
        out = cache.ffn_out.clone()
        out[0 if editor.site.is_last else int(adapter.read_positions(batch)[0])] = editor.values[0]
        fast = cache.finish(out)
    assert not torch.allclose(full, base)  # the codebook acts on this input
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    others = [Example(f"o{i}", p, wrong_target(adapter, p)) for i, p in enumerate(PROMPTS[1:])]
    mixed = [others[0], example, others[1]]  # different lengths: padding around the edited example
    together = editor.scores([e.prompt for e in mixed], [e.target for e in mixed])
    alone = [editor.scores([e.prompt], [e.target])[0] for e in mixed]
    assert together == alone
    batch = adapter.encode([e.prompt for e in mixed], [e.target for e in mixed])
    with torch.no_grad():
        logits = adapter.scored_logits(batch)
    torch.testing.assert_close(logits[batch.owner == 1], full, atol=1e-5, rtol=1e-5)


def test_codebook_rules_of_the_published_code():
    """Far: a new key of radius eps_init. Near with the same label: the radius grows to the
    distance (coverage). Near with another label: a new key and both radii half the distance."""
    adapter, editor = _editor("decoder", layer=0, max_steps=1, eps_init=1e-6)
    a = Example("a", PROMPTS[0], " Paris")
    editor.edit(a)
    editor.edit(Example("b", PROMPTS[1], " Paris"))
    assert editor.fold_report()["added"] == 2 and editor.radii.tolist() == pytest.approx([1e-6, 1e-6])
    far = float(torch.dist(editor.keys[0], editor.keys[1]))

    adapter, editor = _editor("decoder", layer=0, max_steps=1, eps_init=10 * far)
    editor.edit(a)
    editor.edit(Example("b", PROMPTS[1], " Paris"))  # same label, within eps_init + radius
    assert (editor.fold_report()["expanded"], len(editor.labels)) == (1, 1)
    assert float(editor.radii[0]) == pytest.approx(10 * far)  # already covered: the radius stays
    editor.edit(Example("c", PROMPTS[1], " Lima"))  # another label at the same distance: split
    assert editor.fold_report()["split"] == 1 and len(editor.labels) == 2
    assert editor.radii.tolist() == pytest.approx([far / 2 - 1e-5, far / 2], rel=1e-4)
    # each prompt is now answered from its own entry: the nearest key within its radius
    assert editor.scores([PROMPTS[0], PROMPTS[1]], [" Paris", " Lima"]) == editor.scores(
        [PROMPTS[0]], [" Paris"]) + editor.scores([PROMPTS[1]], [" Lima"])


def test_coverage_grows_the_radius():
    adapter, editor = _editor("decoder", layer=0, max_steps=1, eps_init=1e-6)
    editor.edit(Example("a", PROMPTS[0], " Paris"))
    editor.edit(Example("b", PROMPTS[1], " Paris"))
    far = float(torch.dist(editor.keys[0], editor.keys[1]))
    editor.reset()
    editor.config.eps_init = 0.75 * far  # reach: eps_init + radius = 1.5 far; radius 0.75 far < far
    editor.edit(Example("a", PROMPTS[0], " Paris"))
    editor.edit(Example("b", PROMPTS[1], " Paris"))
    assert len(editor.labels) == 1 and float(editor.radii[0]) == pytest.approx(far, rel=1e-4)


def test_seq2seq_scored_by_generation_is_refused_and_token_accuracy_is_served():
    import editors  # noqa: F401

    entry = EDITORS.get("grace")
    adapter = trained_tiny("seq2seq")
    with pytest.raises(ValueError, match="generation"):
        entry.target(entry.config_class(name="grace"), adapter)
    adapter.config.metric = "token_accuracy"
    try:
        entry.target(entry.config_class(name="grace"), adapter)
    finally:
        adapter.config.metric = "exact_match"
