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


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("first,starts", [(0, [3, 1, 5]), (1, [2, 0, 4]), (2, [3, 3, 7])])
def test_kept_positions_rerun_gives_the_full_forwards_logits(attention, first, starts):
    """A decoder's blocks rerun from each row's start on, over the kept keys and values of the
    earlier positions, score as the full forward does (to float rounding) with a change added at
    the start of each row, whatever the block, the starts (0 included) and the attention's mask."""
    from benchmark.models.base import installed
    from benchmark.models.kept_positions import kept_positions

    adapter = tiny("tiny-llama", layers=3, seed=1)
    adapter.model.config._attn_implementation = attention
    prompts = ["The capital of France is", "Oslo is a city in", "Where is the Eiffel Tower located? It is in"]
    batch = adapter.encode(prompts, [" Paris", " Norway and", " France"])
    at, where = torch.tensor(starts), {}
    change = torch.randn(adapter.model.config.hidden_size, generator=torch.Generator().manual_seed(0))

    def add(_m, _args, out):
        out = out.clone()
        out[torch.arange(3), where["at"]] += change
        return out

    with installed([adapter.layer_modules()[first].register_forward_hook(add)]):
        where["at"] = at
        full = adapter.scored_logits(batch)
        logits, rerun = kept_positions(adapter, batch, first, at)
        where["at"] = torch.zeros_like(at)
        with torch.no_grad():
            again = rerun()
    assert rerun.start.shape[1] < batch.valid_mask.shape[1]  # fewer positions than the batch's
    torch.testing.assert_close(again, full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="before its row's start"):
        kept_positions(adapter, batch, first, torch.tensor([6, 1, 1]))  # row 0's answer is read from 5


def test_kept_positions_refuses_blocks_it_does_not_serve():
    """GPT-2's blocks take their arguments by position: no rerun (the caller replays whole rows)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from benchmark.models.base import ModelConfig
    from benchmark.models.decoder import DecoderLMAdapter
    from benchmark.models.kept_positions import kept_positions
    from benchmark.models.zoo import tiny_tokenizer

    tok = tiny_tokenizer(with_eos=False)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(tok), n_positions=64,
                                       bos_token_id=None, eos_token_id=None))
    adapter = DecoderLMAdapter(model, tok, ModelConfig(name="tiny-gpt2"))
    batch = adapter.encode(["The capital of France is"], [" Paris"])
    assert kept_positions(adapter, batch, 0, torch.tensor([3])) is None
    assert kept_positions(tiny("tiny-bert-mlm"), batch, 0, torch.tensor([3])) is None


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_last_block_from_the_scored_positions_gives_the_full_forwards_logits_and_gradients(attention):
    """Where only the last block trains, a step reruns it from each row's first scored position
    on, its keys and values of the earlier positions made anew each call: after every weight of
    the block has moved, the logits and the gradient of every weight are the full forward's (to
    float rounding), on rows whose answers start at different positions."""
    from benchmark.models.kept_positions import last_block_from_scored

    adapter = tiny("tiny-llama", layers=3, seed=1)
    adapter.model.config._attn_implementation = attention
    prompts = ["The capital of France is", "Oslo is a city in", "Where is the Eiffel Tower located? It is in"]
    batch = adapter.encode(prompts, [" Paris", " Norway and", " France"])
    logits, rerun = last_block_from_scored(adapter, batch)
    assert rerun.start.shape[1] < batch.valid_mask.shape[1] // 2  # the answers' positions, not the prompts'
    params = list(adapter.layer_modules()[-1].parameters())
    draw = torch.Generator().manual_seed(0)
    with torch.no_grad():
        torch.testing.assert_close(rerun(), logits, rtol=0, atol=1e-5)
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=draw))
    with torch.enable_grad():
        got = rerun()
        got_grads = torch.autograd.grad(got.logsumexp(-1).sum(), params)
        full = adapter.scored_logits(batch)
        want_grads = torch.autograd.grad(full.logsumexp(-1).sum(), params)
    torch.testing.assert_close(got, full, rtol=0, atol=1e-5)
    assert float((got - logits).abs().max()) > 1e-2  # the weights moved the logits
    for name, g, w in zip([n for n, _ in adapter.layer_modules()[-1].named_parameters()], got_grads, want_grads):
        assert float((g - w).abs().max()) <= 1e-5 * max(1.0, float(w.abs().max())), name
