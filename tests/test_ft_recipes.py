"""FT's `recipe=official`: the published code's choices (ZeroYuHuang/Transformer-Patcher,
scripts/ft.py and src/utils.py), checked piece by piece against that code's arithmetic."""

import pytest
import torch

from benchmark.models.task import TASKS
from benchmark.types import EditorData, Example
from editors.ft import (
    OFFICIAL_FROZEN,
    FTConfig,
    FTEditor,
    kl_batches_used,
    published_kl,
    published_kl_weights,
)
from tests.conftest import trained_tiny, wrong_target


def test_the_memory_kl_is_accumulated_as_the_published_loop_does():
    kls = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    expected = 0.0  # utils.py:208-217 by hand: divide inside the loop, not after the last batch
    for seen, value in zip(range(64, 64 * 7, 64), kls[:6]):
        expected = (expected + value * 64) / seen
    expected += kls[6] * 64
    assert kl_batches_used(8, 64, 512, 0) == 7
    assert published_kl(kls[:7], 64, 512, 0) == pytest.approx(expected)
    assert kl_batches_used(8, 64, 512, 100) == 6 and kl_batches_used(8, 64, 512, 500) == 1
    assert kl_batches_used(2, 64, 512, 0) == 2  # a small memory: every batch


def test_label_smoothed_nll_is_the_published_formula():
    logits = torch.randn(3, 7)
    targets = torch.tensor([1, 4, 6])
    lprobs = logits.log_softmax(-1)
    nll, smooth, eps = -lprobs[torch.arange(3), targets].sum(), -lprobs.sum(), 0.1
    expected = (1 - eps - eps / 6) * nll + eps / 6 * smooth
    assert TASKS["generation"].smoothed_loss(logits, targets, eps).item() == pytest.approx(expected.item(), rel=1e-6)


def _editor(recipe, **overrides):
    adapter = trained_tiny("decoder")
    editor = FTEditor(FTConfig(name="ft_kl_last", layers="last", kl_weight=1.0, kl_batch=8, lr=1e-3,
                               recipe=recipe, **overrides), adapter)
    memory = [Example(f"m{i}", p, wrong_target(adapter, p)) for i, p in
              enumerate(["The capital of Italy is", "Kyoto is a city in", "Canada is a country in"])]
    editor.prepare(EditorData(adapter.task, [], [], pool=memory))
    return adapter, editor


def test_official_recipe_tunes_no_bias_norm_or_embedding_and_caps_steps_at_max_plus_one():
    adapter, editor = _editor("official", max_steps=2)
    assert FTConfig(name="ft_all", recipe="official").max_steps == 2000 and FTConfig(name="ft_all").max_steps == 100
    names = set(editor.trainable_parameters())
    everything = {n for n, _ in adapter.block_parameters(-1)}
    assert names and names < everything
    assert all(not any(word in n.lower() for word in OFFICIAL_FROZEN) for n in names)
    modes = []
    original = type(adapter).scored_logits
    adapter.scored_logits = lambda batch: modes.append(adapter.model.training) or original(adapter, batch)
    prompt = "The capital of France is"
    result = editor.edit(Example("e", prompt, wrong_target(adapter, prompt)))
    assert result.steps <= 3
    assert True in modes and False in modes  # edit loss in train mode, checks and KL in eval mode
    assert not adapter.model.training


def test_official_kl_is_to_the_original_model_and_seqedit_kl_to_the_pre_edit_one():
    for recipe in ("official", "seqedit"):
        adapter, editor = _editor(recipe, max_steps=40)
        for prompt in ["The capital of France is", "Lyon is a city in"]:
            editor.edit(Example(prompt, prompt, wrong_target(adapter, prompt)))
        if recipe == "official":
            assert len(editor.past) == 2
            assert float(editor.official_kl()) > 0  # the edited model differs from the original
            state = editor.edit_state()
            editor.reset()
            assert editor.past == [] and float(editor.official_kl()) == pytest.approx(0, abs=1e-6)
            editor.load_edit_state(state)
            assert [e.prompt for e in editor.past] == ["The capital of France is", "Lyon is a city in"]
        else:
            assert editor.past == []  # the seqedit recipe keeps no past edits: its reference is f_pre


@pytest.mark.parametrize("family", ["decoder", "classifier", "seq2seq", "masked"])
@pytest.mark.parametrize("layers", ["all", "last"])  # all: the full forward; last: the recorded prefix
def test_the_kl_term_in_chunks_gives_the_one_batch_gradient(family, layers, monkeypatch):
    """kl_chunk bounds the KL term's memory: chunks of 3 (the last one short) and one batch of 10
    give the KL term the same gradient on every tuned tensor. The tuned tensors are moved (the
    same draw in both runs) before the chunks run: at the reference itself the KL's gradient is
    zero, which is why the first step leaves the KL out (the next test)."""
    import random

    from editors import ft

    adapter = trained_tiny(family)
    prompts = ["The capital of Italy is", "Kyoto is a city in", "Canada is a country in",
               "The currency of Peru is the", "The official language of Brazil is", "The capital of Kenya is",
               "Lyon is a city in", "The capital of Spain is", "Osaka is a city in", "Chile is a country in"]
    pool = [Example(f"m{i}", p, wrong_target(adapter, p)) for i, p in enumerate(prompts)]
    example = Example("e", "The capital of France is", wrong_target(adapter, "The capital of France is"))
    grads, parts_seen = {}, {}

    def recorded(optimizer, loss, after_step=None):  # no optimiser step: a move, then the KL's gradient
        params = [p for group in optimizer.param_groups for p in group["params"]]
        parts = iter(loss)
        next(parts)  # the edit loss
        if chunk not in parts_seen:  # the first step, whose KL is left out: move the weights instead
            parts_seen[chunk] = len(list(parts))
            draw = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in params:
                    p.add_(1e-2 * torch.randn(p.shape, generator=draw))
            return
        optimizer.zero_grad(set_to_none=True)
        for part in parts:  # each chunk's forward runs now, on the moved weights
            part.backward()
            parts_seen[chunk] += 1
        grads[chunk] = [p.grad.clone() for p in params if p.grad is not None]

    monkeypatch.setattr(ft, "descend", recorded)
    initial = {name: value.clone() for name, value in adapter.model.state_dict().items()}
    for chunk in (3, 10):
        adapter.model.load_state_dict(initial)
        editor = FTEditor(FTConfig(name="ft_kl", layers=layers, kl_weight=1.0, kl_batch=10, kl_chunk=chunk,
                                   max_steps=2), adapter)
        editor.prepare(EditorData(adapter.task, [], [], pool=pool))
        random.seed(0)
        editor.edit(example)
    adapter.model.load_state_dict(initial)
    assert parts_seen == {3: 4, 10: 1}  # none at the first step; then every chunk
    assert len(grads[3]) == len(grads[10]) > 0
    largest = max(float(g.abs().max()) for g in grads[10])
    assert largest > 0
    for chunked, whole in zip(grads[3], grads[10]):
        assert float((chunked - whole).abs().max()) <= 1e-4 * largest  # float order only


@pytest.mark.parametrize("family", ["decoder", "classifier", "seq2seq", "masked"])
@pytest.mark.parametrize("layers", ["all", "last"])
def test_the_kl_left_out_of_an_edits_first_step_is_zero_with_zero_gradient(family, layers):
    """The seqedit recipe's KL reference is the pre-edit model, so at an edit's first step the KL
    term is zero with a zero gradient, and leaving it out changes nothing beyond float rounding:
    its gradient there is below 1e-6 of the edit loss's on every tuned tensor."""
    import random

    adapter = trained_tiny(family)
    prompts = ["The capital of Italy is", "Kyoto is a city in", "Canada is a country in", "Lyon is a city in"]
    pool = [Example(f"m{i}", p, wrong_target(adapter, p)) for i, p in enumerate(prompts)]
    editor = FTEditor(FTConfig(name="ft_kl", layers=layers, kl_weight=1.0, kl_batch=4, kl_chunk=3), adapter)
    editor.prepare(EditorData(adapter.task, [], [], pool=pool))
    params = list(editor.trainable_parameters().values())
    random.seed(0)
    chunks = editor._kl_chunks(params)
    batch = adapter.encode(["The capital of France is"], [wrong_target(adapter, "The capital of France is")])
    with torch.enable_grad():
        kl = sum(adapter.task.kl(reference, forward()) for reference, forward in chunks)
        kl_grads = torch.autograd.grad(kl, params, allow_unused=True)
        edit_grads = torch.autograd.grad(adapter.loss(batch, adapter.scored_logits(batch)), params, allow_unused=True)
    assert abs(float(kl)) < 1e-6
    edit_largest = max(float(g.abs().max()) for g in edit_grads if g is not None)
    assert edit_largest > 0
    assert max(float(g.abs().max()) for g in kl_grads if g is not None) < 1e-6 * edit_largest


def test_published_kl_weights_give_its_sum_term_by_term():
    kls = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    for batches, total, past in [(7, 512, 0), (6, 512, 100), (1, 512, 500), (2, 512, 0), (8, 64, 0)]:
        weights = published_kl_weights(batches, 64, total, past)
        assert len(weights) == kl_batches_used(batches, 64, total, past)
        assert sum(w * k for w, k in zip(weights, kls)) == pytest.approx(published_kl(kls[:batches], 64, total, past))


def test_the_official_step_sums_the_kl_terms_in_its_gradients():
    """The official recipe backwards the KL batch by batch: the terms add up to `official_kl`
    (the published arithmetic, past edits included) in value and in gradient."""
    adapter, editor = _editor("official", max_steps=3)
    for prompt in ["The capital of France is", "Lyon is a city in"]:
        editor.edit(Example(prompt, prompt, wrong_target(adapter, prompt)))
    params = list(editor.trainable_parameters().values())
    inputs = editor._kl_references()
    with torch.enable_grad():
        whole = editor.official_kl(inputs)
        expected = torch.autograd.grad(whole, params)
        terms = list(editor.official_kl_terms(inputs))
        summed = [sum(g) for g in zip(*(torch.autograd.grad(t, params) for t in terms))]
    assert len(terms) == len(inputs[0]) > 2 and float(whole) > 0
    assert float(sum(terms)) == pytest.approx(float(whole), rel=1e-5)
    largest = max(float(g.abs().max()) for g in expected)
    for got, want in zip(summed, expected):
        assert float((got - want).abs().max()) <= 1e-5 * largest


@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_kl_chunks_group_the_drawn_sample_by_length(family, monkeypatch):
    """The chunks hold the drawn sample (the same examples), shortest first, so each pads little:
    every chunk's longest example is no longer than the next chunk's shortest (lengths over all
    the model's inputs: a seq2seq model's encoder and decoder)."""
    import random

    adapter = trained_tiny(family)
    prompts = ["The capital of Italy is", "Kyoto is a city in", "Canada is a country in", "Paris",
               "The official language of the Federative Republic of Brazil is", "Lyon is in",
               "The currency of the Republic of Peru is the", "Osaka is a city in", "Chile is a"]
    pool = [Example(f"m{i}", p, wrong_target(adapter, p)) for i, p in enumerate(prompts)]
    editor = FTEditor(FTConfig(name="ft_kl", layers="last", kl_weight=1.0, kl_batch=8, kl_chunk=3), adapter)
    editor.prepare(EditorData(adapter.task, [], [], pool=pool))
    encoded, encode = [], adapter.encode
    monkeypatch.setattr(adapter, "encode", lambda p, t: encoded.append(encode(p, t)) or encoded[-1])
    random.seed(3)
    drawn = random.sample(pool, 8)
    random.seed(3)
    chunks = editor._kl_chunks(list(editor.trainable_parameters().values()))
    parts, whole = encoded[-len(chunks) :], encode([e.prompt for e in drawn], [e.target for e in drawn])
    assert [b.size for b in parts] == [3, 3, 2] and whole.size == 8
    assert sorted(whole.lengths().tolist()) == sorted(n for b in parts for n in b.lengths().tolist())
    for shorter, longer in zip(parts, parts[1:]):
        assert int(shorter.lengths().max()) <= int(longer.lengths().min())
    assert sum(int(b.lengths().max()) * b.size for b in parts) < sum(
        int(whole.lengths()[i : i + 3].max()) * len(drawn[i : i + 3]) for i in range(0, 8, 3))  # less padding
    if family == "seq2seq":  # both the encoder's and the decoder's positions count
        assert whole.lengths().tolist() == (whole.inputs["attention_mask"].sum(1)
                                            + whole.inputs["decoder_attention_mask"].sum(1)).tolist()


def test_unset_kl_chunk_is_16_on_a_cpu():
    adapter = trained_tiny("decoder")
    prompts = ["The capital of Italy is", "Kyoto is a city in", "Canada is a country in", "Lyon is a city in"]
    pool = [Example(f"m{i}", p, " Europe") for i, p in enumerate(prompts * 10)]
    editor = FTEditor(FTConfig(name="ft_kl", layers="last", kl_weight=1.0, kl_batch=40), adapter)
    editor.prepare(EditorData(adapter.task, [], [], pool=pool))
    assert FTConfig(name="ft_kl").kl_chunk is None and adapter.device.type == "cpu"
    chunks = editor._kl_chunks(list(editor.trainable_parameters().values()))
    assert len(chunks) == 3  # 16 + 16 + 8 examples
    with pytest.raises(ValueError, match="kl_chunk >= 1"):
        FTConfig(name="ft_kl", kl_chunk=0)
