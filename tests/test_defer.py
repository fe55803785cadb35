"""DEFER: the hard gate decides, at the read position only; below it the model is the base model."""

import torch

from benchmark.registry import EDITORS
from benchmark.types import EditSplits, Example
from tests.conftest import trained_tiny, wrong_target

PROMPTS = ["Zanzibar is known for", "Quito is known for", "Oslo is known for", "Lima is known for"]


def test_gate_below_threshold_leaves_the_base_model_and_above_answers_from_the_adaptor():
    import editors  # noqa: F401

    adapter = trained_tiny("decoder")
    entry = EDITORS.get("defer")
    editor = entry.target(entry.config_class(name="defer", layer=0, max_steps=30, lr=0.01), adapter)
    editor.prepare(EditSplits(task=adapter.task, train=[], val=[], folds=[], train_subsample=[], test=[],
                              pool=[]).for_editor())
    prompt = "The capital of France is"
    example = Example("e", prompt, wrong_target(adapter, prompt))
    targets = [" x"] * len(PROMPTS)
    batch = adapter.encode(PROMPTS, targets)
    with torch.no_grad():
        base = adapter.scored_logits(batch)
    editor.edit(example)
    seen = {}
    hook = editor.site.out_proj.register_forward_pre_hook(lambda _m, args: seen.setdefault("inner", args[0]))
    with torch.no_grad():
        adapter.scored_logits(batch)
        at = adapter.read_positions(batch)
        logits = editor.gate(seen["inner"][torch.arange(len(PROMPTS)), at].float())[:, 0]
        middle = logits.sort().values[1:3].mean()
        editor.gate.bias -= middle  # two prompts above the gate, two below: both sides are tried
        gates = torch.sigmoid(logits - middle)
        edited = adapter.scored_logits(batch)
    hook.remove()
    assert int((gates >= 0.5).sum()) == 2
    for i in range(len(PROMPTS)):
        rows = batch.owner == i
        same = torch.equal(edited[rows], base[rows])
        assert same == bool(gates[i] < 0.5), (i, float(gates[i]))
    with editor.disabled(), torch.no_grad():
        assert torch.equal(adapter.scored_logits(batch), base)
