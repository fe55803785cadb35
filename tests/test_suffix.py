"""Only the part that trains runs: where an editor tunes a run of last blocks, their input is
recorded once per edit and each step runs only them and the head. Same steps and weights as the
full forward, for every family, at the last block and the first, with and without KL samples."""

import random

import pytest
import torch

from benchmark.types import EditSplits, Example
from editors.constrained_ft import ConstrainedFTConfig, ConstrainedFTEditor
from editors.ft import FTConfig, FTEditor
from tests.conftest import FAMILIES, tiny

WORDS = ["Zanzibar", "Quito", "Oslo", "Lima", "Hanoi", "Doha"]
EDITORS = {
    "ft_last": (FTEditor, FTConfig, {"layers": "last"}),
    "ft_kl_last": (FTEditor, FTConfig, {"layers": "last", "kl_weight": 1.0, "kl_batch": 3}),
    "constrained_ft-0": (ConstrainedFTEditor, ConstrainedFTConfig, {"block": "0", "delta": 0.02}),
    "constrained_ft-last": (ConstrainedFTEditor, ConstrainedFTConfig, {"block": "last", "delta": 0.02}),
    # no other training forms: the step's own forward is also the stop check
    "constrained_ft-plain": (ConstrainedFTEditor, ConstrainedFTConfig, {"block": "last", "delta": 0.02}),
}


def _run(family: str, row: str, mode: str, device: str = "cpu"):
    editor_class, config_class, overrides = EDITORS[row]
    adapter = tiny(FAMILIES[family], layers=3, seed=1, device=device)
    editor = editor_class(config_class(name=row.split("-")[0], lr=1e-3, max_steps=6, mode=mode, **overrides), adapter)
    cls = adapter.task == "classification"
    memory = [Example(f"m{i}", f"{w} is known for", i % 2 if cls else f" {w}") for i, w in enumerate(WORDS)]
    editor.prepare(EditSplits(task=adapter.task, train=memory, val=[], folds=[], train_subsample=[], test=[],
                              pool=memory).for_editor())
    steps, prompts = [], ["The capital of France is", "Lyon is a city in"]
    for i, prompt in enumerate(prompts):
        random.seed(i)
        torch.manual_seed(i)
        target = (1 if adapter.scores([prompt], [1]) == [0.0] else 0) if cls else " Oslo"
        forms = [] if row.endswith("plain") else [f"{prompt} indeed"]
        steps.append(editor.edit(Example(f"e{i}", prompt, target, forms=forms)).steps)
    probe = [*prompts, *(m.prompt for m in memory)]
    batch = adapter.encode(probe, [0] * len(probe) if cls else [" Oslo"] * len(probe))
    with torch.no_grad():
        logits = adapter.scored_logits(batch)
    return steps, {n: p.detach().cpu().clone() for n, p in editor.trainable_parameters().items()}, logits.cpu()


# Softmax is invariant to a key projection's bias, so its gradient is rounding noise, which Adam
# scales to steps of +-lr: it differs between any two summation orders and changes no output.
KEY_BIAS = ("k_proj.bias", "key.bias")


@pytest.mark.parametrize("row", list(EDITORS))
def test_suffix_path_equals_full_forward(family, row):
    fast_steps, fast, fast_logits = _run(family, row, "fast")
    naive_steps, naive, naive_logits = _run(family, row, "naive")
    assert fast_steps == naive_steps and fast_steps[0] > 0
    assert fast.keys() == naive.keys()
    for name in fast:
        if not name.endswith(KEY_BIAS):
            # a tenth of one Adam step (lr 1e-3): float summation order, amplified by Adam where a
            # gradient is tiny, moves weights by ~1e-5 and the outputs by ~1e-6
            assert torch.allclose(fast[name], naive[name], atol=1e-4), name
    assert torch.allclose(fast_logits, naive_logits, atol=1e-4)


def test_no_suffix_where_a_trained_parameter_is_outside_the_blocks():
    adapter = tiny("tiny-llama", layers=3, seed=1)
    assert adapter.trained_suffix(adapter.select_parameters("last").values()) == 2
    assert adapter.trained_suffix(adapter.select_parameters("0").values()) == 0
    assert adapter.trained_suffix(adapter.select_parameters("all").values()) is None
    assert adapter.trained_suffix(adapter.select_parameters("embeddings").values()) is None
