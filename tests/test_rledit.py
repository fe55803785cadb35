"""RLEdit: its network, its update, the gradient it trains on, and its training trajectory."""

import lightning as L
import pytest
import torch

from benchmark.build import build_data
from benchmark.config import compose, instantiate
from benchmark.registry import EDITORS
from benchmark.types import EditSplits, Example
from tests.conftest import TRAINING, data_for, trained_tiny

EDITS = [Example("a", "The capital of France is", " Oslo Lima"), Example("b", "Peru lies in", " Asia Doha")]
SMALL = {"rank": 8, "hidden_blocks": 2, "trajectory": 4, "back_depth": 2, "train_examples": 40}


def _editor(family="decoder", **overrides):
    import editors  # noqa: F401

    adapter = trained_tiny(family)
    last = len(adapter.layer_modules()) - 1
    settings = {"in_layers": [0], "up_layers": [], "out_layers": [last], "lr": 1e-3, **SMALL, **overrides}
    entry = EDITORS.get("rledit")
    return adapter, entry.target(entry.config_class(name="rledit", **settings), adapter)


def _randomise(editor, seed=0):
    """Network weights away from the identity it starts as, so every path carries gradient."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in editor.hypernet.parameters():
            p.add_(0.05 * torch.randn_like(p) * (1e-3 if p.numel() < 4 else 1))


def test_an_untrained_network_gives_the_ridge_update_of_the_normalised_gradients():
    """B = 0: each block is the identity, so K~ and G~ are the normalised keys and gradients;
    dW^T = (K^T K + e^0 I)^-1 K^T V with V = -lr (K . K^) G^ (rl:210-215)."""
    adapter, editor = _editor()
    shifts = editor.shifts(EDITS)
    pairs = editor._keys_and_gradients(EDITS)
    for (keys, grads), shift in zip(pairs, shifts):
        d_in = keys.shape[1]
        z = editor.normalisers[(d_in, grads.shape[1])](torch.cat([keys, grads], -1))
        values = -1e-3 * (keys * z[:, :d_in]).sum(-1, keepdim=True) * z[:, d_in:]
        residual = keys.double().T @ (keys.double() @ shift.double() - values.double()) + shift.double()
        assert float(residual.abs().max()) < 1e-4 * float((keys.double().T @ values.double()).abs().max())
        assert shift.abs().max() > 0


def test_autograd_gives_the_gradient_the_published_code_carries_by_hand():
    """rl:221-257: with W's gradient G_W, lambda gets -e^lambda <(K^T K + e^lambda I)^-1 G_W, dW^T>
    and the values K (K^T K + e^lambda I)^-1 G_W; autograd through the solve gives the same."""
    adapter, editor = _editor()
    _randomise(editor)
    editor.shifts(EDITS)  # the normalisers see the rows first, as in a trajectory step
    pairs = editor._keys_and_gradients(EDITS)
    index, module = 1, editor.layers[1]
    keys, grads = pairs[index]
    net, slot = editor.hypernet[f"{keys.shape[1]}x{grads.shape[1]}"], editor.slot[index]
    torch.manual_seed(1)
    weight_grad = torch.randn(keys.shape[1], grads.shape[1])  # dL/d(dW^T)
    params = list(net.parameters())

    shift = editor._shift(index, module, keys, grads)
    auto = torch.autograd.grad((shift * weight_grad).sum(), params, allow_unused=True)

    with torch.no_grad():
        lam = net.log_lambda[slot].exp()
        mat = torch.linalg.solve(keys.T @ keys + lam * torch.eye(keys.shape[1]), weight_grad)
        lambda_grad = -lam * (mat * shift).sum()
        values_grad = keys @ mat
    d_in = keys.shape[1]
    z = editor.normalisers[(d_in, grads.shape[1])](torch.cat([keys, grads], -1))
    pseudo_keys, pseudo_grads = net(z, slot)
    values = -net.lr[slot] * (keys * pseudo_keys).sum(-1, keepdim=True) * pseudo_grads
    by_hand = torch.autograd.grad((values_grad * values).sum() + lambda_grad * net.log_lambda[slot], params,
                                  allow_unused=True)
    for a, b in zip(auto, by_hand):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6 * float(b.abs().max()) + 1e-12)
    assert any(a is not None and a.abs().max() > 0 for a in auto)


def test_a_trajectory_trains_the_network_once_and_leaves_the_model_as_it_was():
    """One epoch = one trajectory: the model is edited along it and restored after; the network takes
    exactly one Adam step (rl:176-177), with a gradient from every step."""
    adapter, editor = _editor(train_lr=1e-2)
    splits = build_data(instantiate(compose(data_for("decoder", **TRAINING["decoder"])))).splits
    weights = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    before = {n: p.detach().clone() for n, p in editor.hypernet.named_parameters()}
    module = editor.training_module(splits.for_editor())
    steps = []
    original = module._trajectory_step
    module._trajectory_step = lambda recent: (steps.append(len(recent)), original(recent))[1]
    L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1).fit(module)
    assert steps == [1, 2, 2, 2] * 2  # back_depth 2: each step looks back over itself and the one before
    for name, p in adapter.model.named_parameters():
        assert torch.equal(p, weights[name]), name
    optimizer = module.optimizers().optimizer
    counts = {int(s["step"]) for s in optimizer.state.values()}
    assert counts == {2}  # two trajectories, one Adam step each
    moved = [n for n, p in editor.hypernet.named_parameters() if not torch.equal(p, before[n])]
    assert "log_lambda" in {n.split(".")[-1] for n in moved} and any(".B" in n for n in moved)
    assert editor.normalisers and all(float(norm.n) > 0 for norm in editor.normalisers.values())


def test_a_saved_trained_state_gives_the_same_updates_and_each_fold_starts_from_its_statistics():
    adapter, editor = _editor()
    _randomise(editor)
    editor.shifts(EDITS)  # statistics as a training phase would leave them
    state = editor.trained_state()
    _, fresh = _editor()
    fresh.load_trained(state)
    fresh.prepare(EditSplits(task=adapter.task, train=[], val=[], folds=[], train_subsample=[], test=[],
                             pool=[]).for_editor())
    fresh.edit(EDITS[0])  # the stream moves the statistics on
    fresh.reset()
    for shape, norm in fresh.normalisers.items():
        assert torch.equal(norm.n, editor.normalisers[shape].n)
    expected = editor.shifts(EDITS[1:], update=False)
    for a, b in zip(expected, fresh.shifts(EDITS[1:], update=False)):
        torch.testing.assert_close(a, b)


def test_unset_layers_are_the_presets_blocks_at_the_same_relative_depth():
    """LLaMA-3-8B's gates and ups of 22-30 of 32 (config/model/llama-3-instruct.yaml); GPT-J's fc_out of
    22-27 of 28 (gpt-j.yaml)."""
    from editors.configs.rledit import RLEditConfig
    from editors.rledit import RLEditEditor
    from editors.ultraedit import preset_layers

    unset = RLEditConfig(name="rledit")
    assert preset_layers(unset, 32, True, RLEditEditor.presets) == {
        "in_layers": list(range(22, 31)), "up_layers": list(range(22, 31)), "out_layers": []}
    assert preset_layers(unset, 30, True, RLEditEditor.presets)["in_layers"] == list(range(20, 29))
    assert preset_layers(unset, 28, False, RLEditEditor.presets)["out_layers"] == list(range(22, 28))


@pytest.mark.parametrize("bad", [{"rank": 0}, {"back_depth": 0}, {"time_decay": 1.5}, {"max_grad_norm": 0.0}])
def test_bad_settings_are_refused(bad):
    from editors.configs.rledit import RLEditConfig

    with pytest.raises(ValueError, match="editor\\."):
        RLEditConfig(name="rledit", **bad)


@pytest.mark.parametrize("family, layers", [("decoder", "first+last"), ("decoder", "last"), ("classifier", "last")])
def test_a_steps_batched_losses_are_each_steps_own_as_the_published_loop_runs_them(family, layers):
    """The recent steps' inputs run as one batch, the edited forward only from the first rewritten
    block; the loss must equal the published sum of gamma^j (L_gen_j + c_loc KL_j), each from its
    own full forward, + reg |dW|^2 (rl:118-161), whichever blocks are rewritten."""
    chosen = {"in_layers": [0]} if layers == "first+last" else {"in_layers": []}
    adapter, editor = _editor(family, time_decay=0.5, locality_weight=0.7, reg_weight=0.1, back_depth=3, **chosen)
    _randomise(editor)
    splits = build_data(instantiate(compose(data_for(family, **TRAINING[family])))).splits
    module = editor.training_module(splits.for_editor())
    module.manual_backward = lambda loss: loss.backward()
    recent = [[module._step(e)] for e in module.train_examples[:3]]
    recent[1] = [module._step(e) for e in module.train_examples[3:5]]  # a step of two edits
    initial = [m.weight.detach().clone() for m in editor.layers]
    loss = module._trajectory_step(recent)
    with torch.no_grad():
        for module_, weight in zip(editor.layers, initial):
            module_.weight.copy_(weight)
        shifts = editor.shifts([s["edit"] for s in recent[0]], update=False)  # the normalisers as the step left them
        expected = 0.1 * sum(float(s.pow(2).sum()) for s in shifts)
        for j, steps in enumerate(recent):
            prompts = [(p, s["edit"].target) for s in steps for p in s["equivalents"]]
            gen_batch = adapter.encode([p for p, _ in prompts], [t for _, t in prompts])
            loc_batch = adapter.encode([s["unrelated"][0] for s in steps], [s["unrelated"][1] for s in steps])
            reference = adapter.scored_logits(loc_batch)
            with editor.applied(shifts):
                gen = adapter.loss(gen_batch, adapter.scored_logits(gen_batch))
                kl = adapter.task.kl(reference, adapter.scored_logits(loc_batch))
            expected += 0.5**j * float(gen + 0.7 * kl)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_the_published_code_comparison_needs_a_checkout_and_says_so_in_one_line(tmp_path, capsys):
    from benchmark.published_rledit import main

    with pytest.raises(SystemExit) as stop:
        main(["--repo", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nets.py" in err and str(tmp_path) in err
