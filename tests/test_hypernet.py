"""KE and MEND: where they edit, what their updates look like, that training teaches them to edit,
and that a saved trained editor gives the same updates."""

import pytest
import torch

from benchmark.build import build_data
from benchmark.config import compose, instantiate
from benchmark.registry import EDITORS
from editors.hypernet import HypernetTraining
from tests.conftest import TRAINING, data_for, trained_editor_state, trained_tiny

ROW = {"edit_lr": 0.1, "train_examples": 200, "train_epochs": 3, "train_lr": 1e-3}


def _editor(name, family, state=None, **overrides):
    import editors  # noqa: F401

    adapter = trained_tiny(family)
    entry = EDITORS.get(name)
    editor = entry.target(entry.config_class(name=name, **{**ROW, **overrides}), adapter)
    if state is not None:
        editor.load_trained(state)
    return adapter, editor


def _splits(family):
    return build_data(instantiate(compose(data_for(family, **TRAINING[family])))).splits


@pytest.mark.parametrize("name", ["ke_style", "mend_style"])
def test_updates_have_the_shapes_of_the_last_blocks_ffn_weights(name):
    adapter, editor = _editor(name, "decoder", blocks=1)
    site = adapter.ffn_site(-1)
    assert [m for _, m in editor.sites] == [site.in_proj, site.out_proj]
    example = _splits("decoder").val[0]
    updates = editor.updates(example, example.target, editor.gradients([example.prompt], [example.target]))
    assert [u.shape for u in updates] == [m.weight.shape for _, m in editor.sites]
    assert all(u.abs().sum() > 0 for u in updates)
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    editor.edit(example)
    changed = {n for n, p in adapter.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(editor.trainable_parameters())


def test_the_gradient_factors_rebuild_the_true_gradient():
    adapter, editor = _editor("mend_style", "decoder")
    example = _splits("decoder").val[0]
    factors = editor.gradients([example.prompt], [example.target])
    weights = [m.weight for _, m in editor.sites]
    for w in weights:
        w.requires_grad_(True)
    batch = adapter.encode([example.prompt], [example.target])
    true = torch.autograd.grad(adapter.loss(batch, adapter.scored_logits(batch)), weights)
    for (u, delta), g in zip(factors, true):
        assert torch.allclose(delta.T @ u, g, atol=1e-6)


def _success(editor, adapter, splits, n=40):
    module = HypernetTraining(editor, splits.for_editor())
    hits = []
    for example in splits.val[:n]:
        target = module._target(example)
        with torch.no_grad():
            updates = editor.updates(example, target, editor.gradients([example.prompt], [target]))
            batch = adapter.encode([example.prompt], [target])
            with editor.applied(updates):
                hits.append(float(adapter.token_correct(batch, adapter.scored_logits(batch)).all()))
    return sum(hits) / len(hits)


@pytest.mark.parametrize("name", ["ke_style", "mend_style"])
def test_a_training_step_lowers_the_meta_loss(name):
    """What the training phase guarantees on any machine: its loss is a differentiable function of
    the hypernetwork, whose gradient step (small enough) lowers it on the same batch."""
    import random

    adapter, editor = _editor(name, "classifier")
    module = HypernetTraining(editor, _splits("classifier").for_editor())
    module.log = module.log_dict = lambda *args, **kwargs: None  # no Trainer here to log to
    batch = module.train_examples[:4]

    def loss():
        random.seed(0)  # the same locality sample each time
        return module.training_step(batch, 0)

    params = editor.hypernet_parameters()
    before = loss()
    grads = torch.autograd.grad(before, params, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
    norm2 = sum(float(g.pow(2).sum()) for _, g in pairs)
    assert norm2 > 0
    step = 1e-3 * float(before) / norm2  # a first-order decrease of 0.1% of the loss
    with torch.no_grad():
        for p, g in pairs:
            p -= step * g
    assert float(loss()) < float(before)


def fit_modes(name: str, device: str = "cpu") -> tuple[list, bool]:
    """One fit step and one validation step of the training phase on `device`: the network's
    mode in each, and whether it is in train mode after the fit."""
    import lightning as L

    from tests.conftest import FAMILIES, tiny, trained_weights

    entry = EDITORS.get(name)
    adapter = tiny(FAMILIES["classifier"], checkpoint=trained_weights("classifier"), device=device)
    editor = entry.target(entry.config_class(name=name, **ROW), adapter)
    module = HypernetTraining(editor, _splits("classifier").for_editor())
    seen = []
    train_step, val_step = module.training_step, module.validation_step
    module.training_step = lambda *a: (seen.append(("train", editor.hypernet.training)), train_step(*a))[1]
    module.validation_step = lambda *a: (seen.append(("val", editor.hypernet.training)), val_step(*a))[1]
    L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              accelerator="cpu" if device == "cpu" else "gpu", devices=1).fit(module)
    return seen, editor.hypernet.training


@pytest.mark.parametrize("name", ["ke_style", "mend_style"])
def test_the_fit_trains_the_network_in_train_mode_and_validates_in_eval_mode(name):
    """Lightning leaves a submodule in the mode it finds it in: the network must be put in train
    mode for the fit's steps (cuDNN's LSTM backward fails in eval mode: KE's training phase failed
    so on a GPU) and be back in eval mode for validation and for the edits after the fit. (On the
    CPU, KE's and MEND's trained states were bit-identical before and after this mode change.)"""
    assert fit_modes(name) == ([("train", True), ("val", False)], False)


MEND_RECIPE = pytest.mark.xfail(strict=True, reason=(
    "measured: MEND's training outcome on the tiny classifier is fragile: trained on the first 200 examples of "
    "D'train it reached D_val edit success 0.75, on the first 200 of D'train without D_tr (what an editor is "
    "handed now) 0.14, and 0.05 on these 40 edits, against 0.875 untrained; its recipe differs from the "
    "published code (issue 13)"))


@pytest.mark.slow  # a statement about a training run's outcome, not a guarantee of the code
@pytest.mark.parametrize("name", ["ke_style", pytest.param("mend_style", marks=MEND_RECIPE)])
def test_a_trained_editor_flips_labels_more_often_than_chance(name):
    state = trained_editor_state(name, "classifier", **ROW)
    adapter, editor = _editor(name, "classifier", state)
    # 40 binary edits: under chance (p = 0.5) a rate >= 0.65 has probability < 0.05
    assert _success(editor, adapter, _splits("classifier")) >= 0.65


@pytest.mark.slow  # a statement about a training run's outcome, not a guarantee of the code
def test_training_teaches_ke_to_answer_new_objects():
    splits = _splits("decoder")
    untrained = _success(*reversed(_editor("ke_style", "decoder")), splits)
    state = trained_editor_state("ke_style", "decoder", **ROW)
    trained = _success(*reversed(_editor("ke_style", "decoder", state)), splits)
    assert trained > untrained + 0.1, (untrained, trained)


@pytest.mark.parametrize("name", ["ke_style", "mend_style"])
def test_a_saved_trained_editor_gives_identical_updates(name, tmp_path):
    state = trained_editor_state(name, "decoder", **ROW)
    torch.save(state, tmp_path / "editor.pt")
    example = _splits("decoder").val[3]
    results = []
    for loaded in (state, torch.load(tmp_path / "editor.pt", weights_only=True)):
        _, editor = _editor(name, "decoder", loaded)
        with torch.no_grad():
            grads = editor.gradients([example.prompt], [example.target])
            results.append(editor.updates(example, example.target, grads))
    assert all(torch.equal(a, b) for a, b in zip(*results))


# each editor on each family, one and two edited blocks between them (the suite's time is kept short)
@pytest.mark.parametrize("name, family, blocks", [("ke_style", "classifier", 2), ("ke_style", "decoder", 1),
                                                  ("mend_style", "classifier", 1), ("mend_style", "decoder", 2)])
def test_the_training_step_is_the_same_with_only_the_edited_blocks_run(name, family, blocks):
    """The locality KL's edited forward runs only the edited blocks from their recorded input: the
    meta-loss and its gradient equal the full forward's."""
    import random

    adapter, editor = _editor(name, family, blocks=blocks)
    data = _splits(family).for_editor()
    params = editor.hypernet_parameters()

    def loss_and_grads(mode):
        module = HypernetTraining(editor, data, mode=mode)
        module.log = module.log_dict = lambda *args, **kwargs: None
        random.seed(0)
        torch.manual_seed(0)
        loss = module.training_step(module.train_examples[:3], 0)
        return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

    assert adapter.trained_suffix([m.weight for _, m in editor.sites]) == len(adapter.layer_modules()) - blocks
    fast_loss, fast_grads = loss_and_grads("fast")
    full_loss, full_grads = loss_and_grads("naive")
    assert torch.allclose(fast_loss, full_loss, rtol=1e-5, atol=1e-7)
    for fast, full in zip(fast_grads, full_grads):
        assert (fast is None) == (full is None)
        if fast is not None:
            assert torch.allclose(fast, full, rtol=1e-4, atol=1e-7)
