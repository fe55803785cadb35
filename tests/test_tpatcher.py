import json
import math

import pytest
import torch
from torch import Tensor

from benchmark.build import build_data
from benchmark.config import compose, instantiate
from benchmark.run import run
from benchmark.types import EditorData, EditSplits, Example
from editors.tpatcher import TPatcherConfig, TPatcherEditor, smooth_top
from tests.conftest import FAMILIES, data_for, tiny, trained_tiny, trained_weights, wrong_target


def _editor(adapter, **overrides) -> TPatcherEditor:
    return TPatcherEditor(TPatcherConfig(name="tpatcher", **overrides), adapter)


def test_smooth_top_is_mean_of_top_exps():
    v = torch.tensor([0.0, -1.0, 2.0, 1.0])
    assert smooth_top(v, 2).item() == pytest.approx((math.e**2 + math.e) / 2)
    assert smooth_top(v, 100).item() == pytest.approx(sum(math.exp(x) for x in v.tolist()) / 4)


@pytest.mark.parametrize("sign, shift", [("margin", +1.5), ("paper", -1.5)])
def test_loss_terms_match_hand_computed_values(sign, shift):
    adapter = tiny("tiny-llama", hidden=8)
    editor = _editor(adapter, topk=2, topk_activation=1, beta=-1.0, gamma=1.5, l_m2_sign=sign)
    editor.memory.append(torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0, 0, 0],
                                        [0, 0, 1.0, 0, 0, 0, 0, 0]]))
    keys = torch.zeros(8, 1)
    keys[:3, 0] = torch.tensor([0.5, -0.25, 0.1])
    bias = torch.tensor([0.2])
    own = torch.zeros(1, 8)
    own[0, 0], own[0, 3] = 2.0, 1.0  # A = 2 * 0.5 + 0.2 = 1.2
    batch = adapter.encode(["a b"], [" c"])
    terms = editor.losses(adapter.scored_logits(batch), batch, own, keys, bias)
    A = 1.2
    mem = [0.7, -0.05, 0.3]  # M k + b
    top2 = sorted(mem, reverse=True)[:2]
    assert terms["activation"].item() == pytest.approx(math.exp(-A), rel=1e-6)
    assert terms["memory1"].item() == pytest.approx(sum(math.exp(m + 1.0) for m in top2) / 2, rel=1e-6)
    assert terms["memory2"].item() == pytest.approx(sum(math.exp(m - A + shift) for m in top2) / 2, rel=1e-6)
    assert terms["edit"].item() == pytest.approx(adapter.loss(batch, adapter.scored_logits(batch)).item())


def test_several_patches_use_topk_activation_loss():
    adapter = tiny("tiny-llama", hidden=8)
    editor = _editor(adapter, topk_activation=2)
    own = torch.eye(8)[:3]
    keys = torch.eye(8)[:, :3] * torch.tensor([1.0, 2.0, 3.0])
    bias = torch.zeros(3)
    batch = adapter.encode(["a b"], [" c"])
    terms = editor.losses(adapter.scored_logits(batch), batch, own, keys, bias)
    assert terms["activation"].item() == pytest.approx((math.exp(-1) + math.exp(-2)) / 2, rel=1e-6)
    assert "memory1" not in terms  # empty memory: no memory loss


def _splits(adapter, n=6):
    cls = adapter.task == "classification"
    words = ["Zanzibar", "Quito", "Oslo", "Lima", "Hanoi", "Doha", "Accra", "Riga"][:n]
    memory = [Example(f"m{i}", f"{w} is known for", i % 2 if cls else f" {w}") for i, w in enumerate(words)]
    return EditSplits(task=adapter.task, train=memory, val=[], folds=[], train_subsample=[], test=[], pool=memory)


def test_fast_and_naive_paths_give_the_same_patches(family):
    results = []
    for mode in ("fast", "naive"):
        adapter = trained_tiny(family)
        editor = _editor(adapter, mode=mode, max_steps=40)
        editor.prepare(_splits(adapter).for_editor())
        prompts = ["The capital of France is", "Lyon is a city in"]
        for i, prompt in enumerate(prompts):
            torch.manual_seed(i)
            target = wrong_target(adapter, prompt)
            results.append((mode, editor.edit(Example(f"e{i}", prompt, target)).steps))
        results.append((mode, editor.bank.keys.clone(), editor.bank.values.clone()))
    fast, naive = results[:3], results[3:]
    assert [s for _, s in fast[:2]] == [s for _, s in naive[:2]]
    assert torch.allclose(fast[2][1], naive[2][1], atol=1e-4)
    assert torch.allclose(fast[2][2], naive[2][2], atol=1e-4)


@pytest.mark.parametrize("layer", [-1, -2, 0])
def test_fast_equals_naive_at_any_layer(family, layer):
    """The fast path at the last block, the one before it and the first (a 3-block model, so three
    different blocks) gives the patches of the full forward. Steps are forced (min = max) so the
    comparison is of the same 25 Adam steps, two edits in a row (the second over the first's patch),
    memory read at the layer's positions."""
    (fk, fv, fm), (nk, nv, nm) = (forced_edits(family, mode, layer) for mode in ("fast", "naive"))
    assert fm == nm and fk.shape[1] >= 2
    assert torch.allclose(fk, nk, atol=1e-4) and torch.allclose(fv, nv, atol=1e-4)


@pytest.mark.parametrize("layer", [-1, -2])
@pytest.mark.parametrize("family", ["decoder", "seq2seq"])  # the families whose tail has a vocabulary head
def test_fast_path_with_blas_heads_equals_naive(family, layer, monkeypatch):
    """The frozen head's other route (BLAS products: a GPU, or a torch without oneDNN) gives the
    full forward's patches too (the default route is the test above's)."""
    import benchmark.models.base as base

    nk, nv, nm = forced_edits(family, "naive", layer)
    monkeypatch.setattr(base, "ONEDNN_TAILS", False)
    fk, fv, fm = forced_edits(family, "fast", layer)
    assert fm == nm and torch.allclose(fk, nk, atol=1e-4) and torch.allclose(fv, nv, atol=1e-4)


def forced_edits(family: str, mode: str, layer: int, device: str = "cpu", **overrides) -> tuple[Tensor, Tensor, int]:
    """Two edits of 25 forced steps on a 3-block tiny model; the patch keys, values and memory size."""
    adapter = tiny(FAMILIES[family], layers=3, seed=1, device=device)
    editor = _editor(adapter, mode=mode, layer=layer, min_steps=25, max_steps=25, **overrides)
    editor.prepare(_splits(adapter).for_editor())
    for i, prompt in enumerate(["The capital of France is", "Lyon is a city in"]):
        torch.manual_seed(i)
        target = (1 if adapter.scores([prompt], [1]) == [0.0] else 0) if adapter.task == "classification" \
            else " Oslo"
        assert editor.edit(Example(f"e{i}", prompt, target)).steps == 25
    return editor.bank.keys.detach().cpu().clone(), editor.bank.values.detach().cpu().clone(), len(editor.memory)


CLOSED_STEP_SETTINGS = {
    "l_m1": {"memory_loss": "l_m1"}, "no-memory-loss": {"memory_loss": "none"},
    "paper-sign": {"l_m2_sign": "paper"}, "gelu": {"activation": "gelu"}, "silu": {"activation": "silu"},
    "one-patch": {"max_patches": 1}, "fp32-scan-every-step": {"memory_reuse": False, "memory_scan": "fp32"},
    "screened": {"memory_refresh": 5, "memory_candidates": 1, "topk": 2},
}


def _closed_and_autograd_agree(family: str, layer: int, overrides: dict) -> None:
    (ck, cv, cm), (ak, av, am) = (forced_edits(family, "fast", layer, step=step, **overrides)
                                  for step in ("closed", "autograd"))
    assert cm == am and ck.shape == ak.shape
    assert torch.allclose(ck, ak, atol=1e-5) and torch.allclose(cv, av, atol=1e-5)


@pytest.mark.parametrize("layer", [-1, -2])
def test_closed_form_step_gives_the_autograd_steps_patches(family, layer):
    """step=closed (the patch's gradient written out, autograd on the model's tail only) against
    step=autograd: the same two edits of 25 forced Adam steps, every family, the last block and
    the one before it (several patches an edit on the decoders' answers, one on the classifier's)."""
    _closed_and_autograd_agree(family, layer, {})


@pytest.mark.parametrize("layer", [-1, -2])
@pytest.mark.parametrize("setting", CLOSED_STEP_SETTINGS)
def test_closed_form_step_agrees_in_every_setting_it_serves(setting, layer):
    """Each loss variant, activation and memory scan the closed step serves, on the decoder."""
    _closed_and_autograd_agree("decoder", layer, CLOSED_STEP_SETTINGS[setting])


def test_closed_form_step_is_refused_where_it_cannot_serve():
    with pytest.raises(ValueError, match="editor.step=closed serves mode=fast"):
        TPatcherConfig(name="tpatcher", step="closed", mode="naive")
    with pytest.raises(ValueError, match="editor.step=closed serves mode=fast"):
        TPatcherConfig(name="tpatcher", step="closed", memory_loss="kl")
    with pytest.raises(ValueError, match="editor.step must be one of"):
        TPatcherConfig(name="tpatcher", step="fused")


def _memory_guarantee(editor, result, memory_examples, before):
    """What the stop rule guarantees, on any machine: an edit reported solved holds and leaves the
    patch silent on every memory row (pre-activation at most the activation's zero point); with
    ReLU that means exactly zero output, so the memory examples' answers cannot change. An edit
    not solved ran to max_steps and says why."""
    info = result.info
    if not info["solved"]:
        assert result.steps == editor.config.max_steps and info["failure"].startswith("max_steps")
        return
    assert info["holds"]
    assert max(info["memory_max"]) <= editor.silent_below + 1e-5
    silent = editor.act(torch.tensor(editor.silent_below)).abs().item()
    acts = editor.act(editor.memory.matrix @ editor.bank.keys + editor.bank.bias)
    assert acts.abs().max().item() <= silent + 1e-6  # recomputed over every row
    if silent == 0.0:
        assert editor.scores([m.prompt for m in memory_examples], [m.target for m in memory_examples]) == before


def test_patch_report_and_unrelated_inputs(family):
    adapter = trained_tiny(family)
    editor = _editor(adapter, max_steps=1000)
    splits = _splits(adapter)
    editor.prepare(splits.for_editor())
    memory = splits.pool
    before = editor.scores([m.prompt for m in memory], [m.target for m in memory])
    prompt = "The capital of France is"
    target = wrong_target(adapter, prompt)
    result = editor.edit(Example("e", prompt, target))
    _memory_guarantee(editor, result, memory, before)
    report = editor.fold_report()
    n = result.info["patches"]
    assert len(report["activation_matrix"]) == n == len(report["labels"])
    diagonal = [report["activation_matrix"][i][i] for i in range(n)]
    assert diagonal == pytest.approx([editor.act(torch.tensor(a)).item() for a in result.info["activation"]],
                                     rel=1e-4, abs=1e-5)


def test_an_edit_stopped_by_max_steps_is_not_reported_solved(family):
    """Two steps cannot silence the patch on a memory row that is the edit's own query: the edit
    ends at max_steps, reported unsolved with its reason (the stop rule was not met)."""
    adapter = trained_tiny(family)
    editor = _editor(adapter, max_steps=2)
    prompt = "The capital of France is"
    target = wrong_target(adapter, prompt)
    editor.prepare(_splits(adapter).for_editor())
    editor.memory.append(editor._queries([Example("same", prompt, target)]))
    result = editor.edit(Example("e", prompt, target))
    assert result.steps == 2 and not result.info["solved"]
    assert result.info["failure"].startswith("max_steps (2): ")
    assert result.info["failure"].endswith("nearest memory query at cosine 1.0000")  # its own query is there


def test_stop_rule_is_met_where_the_memory_allows_it(family):
    """A memory whose rows point away from the edit's queries (-4q, -8q) lets the patch be silent on it
    from the first step; the edit is then made and stopped by the rule, with its guarantee."""
    adapter = trained_tiny(family)
    editor = _editor(adapter, max_steps=1000)
    prompt = "The capital of France is"
    example = Example("e", prompt, wrong_target(adapter, prompt))
    editor.prepare(_splits(adapter, n=0).for_editor())
    own = editor._queries([example])
    editor.memory.append(-4 * own)
    editor.memory.append(-8 * own)
    result = editor.edit(example)
    assert result.info["solved"] and result.steps < 1000
    _memory_guarantee(editor, result, [], [])


def test_short_stream_keeps_every_solved_edit(family, tmp_path, scripted):
    """Over a short stream on a tiny trained model of each family, what the stop rule guarantees
    holds on any machine: every edit reported solved succeeds, and where every edit was solved
    with a ReLU patch (exactly silent on the memory, which holds the earlier edits' queries) the
    final model keeps them all (ER = 1). Targets are other prompts' greedy answers: a tiny model
    cannot make every token an argmax. A hidden-64 model's queries are nearly collinear, so
    silencing the patch on the memory takes far more steps than the default 300."""
    from dataclasses import replace

    from tests.conftest import DONORS, FAMILIES

    adapter = trained_tiny(family)
    prompts = ["The capital of France is", "Lyon is a city in", "The currency of Chile is the",
               "Norway is a country in", "The official language of Mexico is", "Osaka is a city in"]
    stream = [Example(f"s{i}", p, wrong_target(adapter, p), equivalents=[p.replace("The ", "the ")])
              for i, p in enumerate(prompts)]
    memory = [Example(f"m{i}", d, wrong_target(adapter, d)) for i, d in enumerate(DONORS)]
    held_out = [replace(m) for m in memory]  # D_tr / D_test: the same facts, never the editor's
    scripted.StaticData.splits_to_serve = EditSplits(task=adapter.task, train=memory, val=[], folds=[stream],
                                                     train_subsample=held_out, test=held_out, pool=memory)
    result = run(compose(["editor=tpatcher", "data=static", f"model={FAMILIES[family]}", "loop.progress=false",
                          "editor.max_steps=1500", f"model.checkpoint={trained_weights(family)}",
                          f"output_dir={tmp_path}", "run_id=r"]))
    fold = result["folds"]["0"]
    edits = [json.loads(line) for line in (tmp_path / "r" / "edits.jsonl").read_text().splitlines()]
    edits = [r for r in edits if r["type"] == "edit" and r["edited"]]
    assert fold["E"] == len(edits) >= 3  # an edit may fix a later example before it comes (paper, Sec. 5)
    solved = [r["info"]["solved"] for r in edits]
    assert any(solved), "no edit met the stop rule in 1500 steps"
    assert all(r["success"] for r in edits if r["info"]["solved"])
    site = adapter.ffn_site()
    relu = site.gated or site.activation == "relu"  # the default patch activation is ReLU there
    if all(solved) and relu:
        assert fold["SR"] == 1.0 and fold["ER"] == 1.0


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32-scan", "int8-scan"])
def test_memory_top_entries_match_the_full_expression(quantized):
    from editors.patch_memory import QueryMemory

    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(4000, 48, generator=generator)
    memory = QueryMemory(48, quantized=quantized)
    memory.append(rows[:3000])
    memory.append(rows[3000:])  # grows in place
    keys = (torch.randn(48, 3, generator=generator) * 0.2).requires_grad_()
    bias = torch.randn(3, generator=generator).requires_grad_()
    shift = torch.tensor([0.5, -1.0, 2.0])
    (top,) = memory.top_entries(keys.detach(), bias.detach(), [shift], 100)
    fast = torch.exp(memory.entries(keys, bias, top) + shift[top % 3]).mean()
    full = smooth_top(rows @ keys + bias + shift, 100)
    fast_grad = torch.autograd.grad(fast, [keys, bias])
    full_grad = torch.autograd.grad(full, [keys, bias])
    assert fast.item() == pytest.approx(full.item(), rel=1e-6)
    for a, b in zip(fast_grad, full_grad):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert memory.scans["bounded" if quantized else "full"] == 1


@pytest.mark.parametrize("slower", ["int8", "fp32"])
def test_memory_keeps_the_scan_that_is_faster_in_the_edits(slower, monkeypatch):
    """memory_scan=auto: the first scans alternate int8 / fp32, timed, then only the faster is
    kept; every scan, in the trial and after, finds the same entries. Which is slower is forced
    here (a sleep in its own code path)."""
    import time

    from editors.patch_memory import QUANTIZED_SCAN, QueryMemory, QueryStore

    if not QUANTIZED_SCAN:
        pytest.skip("this torch has no int8 kernel")
    generator = torch.Generator().manual_seed(0)
    memory = QueryMemory(48, quantized=True)
    memory.append(torch.randn(4000, 48, generator=generator))
    keys = torch.randn(48, 1, generator=generator) * 0.2
    (before,) = memory.top_entries(keys, torch.zeros(1), [0.0], 50)
    if slower == "int8":
        bounded = QueryMemory._bounded_top
        monkeypatch.setattr(QueryMemory, "_bounded_top", lambda *a: (time.sleep(0.01), bounded(*a))[1])
    else:
        products = QueryStore.products  # the fp32 scan's read of every row
        monkeypatch.setattr(QueryStore, "products", lambda *a: (time.sleep(0.01), products(*a))[1])
    memory.start_trial(scans=3)
    memory.scans = {key: 0 for key in memory.scans}
    found = []
    for step in range(6):
        (entries,) = memory.top_entries(keys * (1 + 0.01 * step), torch.zeros(1), [0.0], 50)
        found.append(entries)
        assert memory.trial is not None or step == 5  # decided after 3 of each, not before
        memory.append(torch.zeros(0, 48))  # the memory may be written between scans mid-trial
    assert memory.scans["full"] == 3 and memory.scans["bounded"] == 3  # alternated
    assert memory.scan_ms[slower] > 10 and memory.quantized == (slower == "fp32")
    assert not memory.quantized or memory.codes.shape[0] >= 4000
    monkeypatch.undo()
    for step, entries in enumerate(found):  # either scan: the fp32 top-k of its keys
        exact = (memory.matrix @ (keys * (1 + 0.01 * step))).flatten().topk(50).indices
        assert torch.equal(entries.sort().values, exact.sort().values)
    (after,) = memory.top_entries(keys, torch.zeros(1), [0.0], 50)
    assert torch.equal(after.sort().values, before.sort().values)


def test_scan_trial_waits_for_a_memory_the_int8_scan_would_read():
    """Below 4 x k rows the int8 scan is never tried, so no timing is taken there: the trial
    starts counting once the memory has grown."""
    from editors.patch_memory import QUANTIZED_SCAN, QueryMemory

    if not QUANTIZED_SCAN:
        pytest.skip("this torch has no int8 kernel")
    memory = QueryMemory(16, quantized=True)
    memory.append(torch.randn(100, 16))
    memory.start_trial(scans=2)
    memory.top_entries(torch.randn(16, 1), torch.zeros(1), [0.0], 50)
    assert memory.trial == {"int8": [], "fp32": []}
    memory.append(torch.randn(400, 16))
    for _ in range(4):
        memory.top_entries(torch.randn(16, 1), torch.zeros(1), [0.0], 50)
    assert memory.trial is None and set(memory.scan_ms) == {"int8", "fp32"}


@pytest.mark.parametrize("patches", [1, 4])
def test_transposed_memory_scan_gives_the_row_major_products(patches):
    """T-Patcher's memory keeps its rows also transposed for the fp32 scan: through appends that
    grow it (geometric, in place), truncation and regrowth, M K read either way is the same to
    rounding and ranks the same top-k."""
    from editors.patch_memory import QueryMemory

    generator = torch.Generator().manual_seed(2)
    memory, plain = QueryMemory(40, transposed=True), QueryMemory(40)
    for size in (7, 300, 1, 2000):
        rows = torch.randn(size, 40, generator=generator)
        memory.append(rows)
        plain.append(rows)
    memory.truncate(1500)
    plain.truncate(1500)
    rows = torch.randn(900, 40, generator=generator)
    memory.append(rows)
    plain.append(rows)
    keys = torch.randn(40, patches, generator=generator)
    assert memory.store.columns.shape[1] >= len(memory) == 2400
    torch.testing.assert_close(memory.products(keys), plain.matrix @ keys, rtol=1e-5, atol=1e-5)
    for shift in (0.0, torch.randn(patches, generator=generator)):
        top = memory.top_entries(keys, torch.zeros(patches), [shift], 100)[0]
        assert torch.equal(top.sort().values, ((plain.matrix @ keys) + shift).flatten().topk(100).indices.sort().values)


@pytest.mark.parametrize("patches", [1, 3])
def test_int8_memory_scan_finds_exactly_the_fp32_top_entries(patches):
    """The int8 scan's error bound must hold row by row: any miss changes the top-k set. Rows share
    a common part (as FFN queries do), width 40 is padded to the kernel's 64, keys drift as Adam
    moves them, and one patch's two shifts share one ranking."""
    from editors.patch_memory import QueryMemory

    generator = torch.Generator().manual_seed(1)
    common = 3 * torch.randn(40, generator=generator)
    rows = common + torch.randn(6000, 40, generator=generator) * torch.rand(6000, 1, generator=generator)
    quantized, plain = QueryMemory(40, quantized=True), QueryMemory(40)
    for memory in (quantized, plain):
        memory.append(rows[:2000])
        memory.append(rows[2000:])  # later rows are coded against the first rows' centre
    own = rows[:patches] + 0.1 * torch.randn(patches, 40, generator=generator)
    keys = (own / own.pow(2).sum(-1, keepdim=True)).T
    for trial in range(12):
        bias = 0.1 * torch.randn(patches, generator=generator)
        shifts = [torch.zeros(patches), 3.0 - (own * keys.T).sum(-1) - bias]
        found = quantized.top_entries(keys, bias, shifts, 200)
        expected = plain.top_entries(keys, bias, shifts, 200)
        for a, b in zip(found, expected):
            assert set(a.tolist()) == set(b.tolist()), trial
        keys = keys + 0.01 * torch.randn(keys.shape, generator=generator)
    assert quantized.scans["bounded"] == 12 and quantized.scans["full"] == 0
    assert quantized.scans["rescored_rows"] < 12 * len(rows) / 2  # the bound did rule rows out


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("patches", [1, 3])
def test_reused_memory_scan_finds_exactly_the_full_scans_top_entries(patches, quantized):
    """memory reuse: a step bounds its scores from the last full scan's and rescores only the rows
    that can reach the top-k; every step must find the full scan's top-k, as keys drift a little
    (most steps reuse), jump (a full scan), and the memory is appended to or cut between steps (the
    reference is dropped). Rows share a common part, as FFN queries do."""
    from editors.patch_memory import QueryMemory

    generator = torch.Generator().manual_seed(3)
    common = 3 * torch.randn(40, generator=generator)
    rows = common + torch.randn(7000, 40, generator=generator) * torch.rand(7000, 1, generator=generator)
    reused, plain = QueryMemory(40, quantized=quantized, transposed=True, reuse=True), QueryMemory(40)
    for memory in (reused, plain):
        memory.append(rows[:6000])
    own = rows[:patches] + 0.1 * torch.randn(patches, 40, generator=generator)
    keys = (own / own.pow(2).sum(-1, keepdim=True)).T
    served = 0  # entries served from the rescored rows
    for step in range(40):
        bias = 0.1 * torch.randn(patches, generator=generator)
        shifts = [torch.zeros(patches), 3.0 - (own * keys.T).sum(-1) - bias]
        k = 400 if step == 35 else 200  # a larger k than the step before: its top-k bounds no tau
        found = reused.top_entries(keys, bias, shifts, k)
        expected = plain.top_entries(keys, bias, shifts, k)
        for a, b in zip(found, expected):
            assert set(a.tolist()) == set(b.tolist()), step
            # the entries (with gradient) read the rows this step rescored where it did: the same values
            from_block, block_used = reused.entries(keys, bias, a), reused._gathered is not None
            reused._gathered = None
            assert torch.equal(from_block, reused.entries(keys, bias, a)), step
            served += block_used
        keys = keys + (0.05 if step == 20 else 1e-4) * torch.randn(keys.shape, generator=generator)  # ~1% a step
        if step == 10:
            for memory in (reused, plain):
                memory.append(rows[6000 + step : 6100 + step])
        if step == 30:
            for memory in (reused, plain):
                memory.truncate(5000)
    assert reused.scans["reused"] >= 15  # the bound spared scans (measured: 22 of 40 with 3 patches, 35 with 1)
    assert reused.scans["full"] + reused.scans["bounded"] >= 4  # the first, after the append, the jump, the cut
    assert reused.scans["reused_rows"] < reused.scans["reused"] * len(reused) / 4
    assert served >= reused.scans["reused"]


def _low_rank_rows(generator, n=6000, width=40, rank=6):
    """Queries that spread mostly along a few directions, with a little noise in every other."""
    common = 3 * torch.randn(width, generator=generator)
    spread = torch.randn(n, rank, generator=generator) @ torch.randn(rank, width, generator=generator)
    return common + spread + 0.5 * torch.randn(n, width, generator=generator)


def _reuse_trace(rows, rank, generator, steps=30, spoil=False):
    """Each step's top-k sets from a memory reusing with a basis of `rank` directions, and its scans;
    `spoil`: the remainders |R_i| set to 0 (a bound that leaves out what the basis misses)."""
    from editors.patch_memory import QueryMemory

    memory = QueryMemory(rows.shape[1], reuse=True, reuse_rank=rank)
    memory.append(rows)
    if spoil:
        memory.reused.spread.zero_()
    keys = rows[:2].T / rows[:2].pow(2).sum(-1) + 0.01 * torch.randn(rows.shape[1], 2, generator=generator)
    trace = []
    for _ in range(steps):
        trace.append([set(t.tolist()) for t in memory.top_entries(keys, torch.zeros(2), [torch.zeros(2)] * 2, 100)])
        keys = keys + 3e-4 * torch.randn(keys.shape, generator=generator)
    return trace, memory.scans


def test_a_basis_of_the_memorys_spread_rescores_fewer_rows_and_finds_the_same_entries():
    """ReusedScan with U: M_i.D = c.D + S_i (U^T D) + R_i.D, only R_i.D bounded. On queries that
    spread along a few directions it rescores fewer rows than bounding |M_i - c| |D|, with every
    step's top-k the full scan's; with the remainders left out of the bound it finds other entries
    (the term is needed)."""
    from editors.patch_memory import QueryMemory

    rows = _low_rank_rows(torch.Generator().manual_seed(11))
    plain = QueryMemory(40)
    plain.append(rows)
    traces = {}
    for rank, spoil in ((0, False), (8, False), (8, True)):
        traces[rank, spoil] = _reuse_trace(rows, rank, torch.Generator().manual_seed(12), spoil=spoil)
    generator = torch.Generator().manual_seed(12)  # the keys' path of `_reuse_trace`
    keys = rows[:2].T / rows[:2].pow(2).sum(-1) + 0.01 * torch.randn(40, 2, generator=generator)
    expected = []
    for _ in range(30):
        expected.append([set(t.tolist()) for t in plain.top_entries(keys, torch.zeros(2), [torch.zeros(2)] * 2, 100)])
        keys = keys + 3e-4 * torch.randn(keys.shape, generator=generator)
    assert traces[0, False][0] == expected and traces[8, False][0] == expected
    assert traces[8, True][0] != expected
    rescored = {rank: s["reused_rows"] + len(rows) * s["full"] for (rank, spoil), (_, s) in traces.items() if not spoil}
    assert traces[8, False][1]["reused"] >= 20 and rescored[8] < rescored[0] / 2


def test_reuse_pauses_where_the_keys_move_too_fast_and_resumes_where_they_slow():
    """A reuse attempt that fails one step after a full scan means the keys move too fast for it:
    the next attempts pause (1, 2, 4, 8 steps), each pause scanning in full, as exact as ever;
    once the keys move little, reuse comes back. (A tiny model's stream that never reused paid
    ~35% an edit for the attempts: 0.130 against 0.096 s at 1,000 edits.)"""
    from editors.patch_memory import QueryMemory

    generator = torch.Generator().manual_seed(5)
    rows = 3 * torch.randn(40, generator=generator) + torch.randn(6000, 40, generator=generator)
    # bounding every direction (no basis), so that the jumps below are too fast for any reuse
    reused, plain = QueryMemory(40, reuse=True, reuse_rank=0), QueryMemory(40)
    for memory in (reused, plain):
        memory.append(rows)
    keys, bias = torch.randn(40, 1, generator=generator) / 30, torch.zeros(1)
    attempts = []
    for step in range(60):
        before = dict(reused.scans)
        found = reused.top_entries(keys, bias, [torch.zeros(1)], 100)
        assert set(found[0].tolist()) == set(plain.top_entries(keys, bias, [torch.zeros(1)], 100)[0].tolist())
        attempts.append("paused" if reused.scans["paused"] > before["paused"] else
                        "reused" if reused.scans["reused"] > before["reused"] else "full")
        move = 0.5 if step < 30 else 1e-4  # jumps, then small moves
        keys = keys + move * torch.randn(keys.shape, generator=generator) / 30
    assert attempts[:30].count("reused") == 0 and attempts[:30].count("paused") >= 15
    assert attempts[45:].count("reused") >= 10  # back once the keys settle


@pytest.mark.parametrize("family", ["decoder", "classifier"])
def test_int8_reused_and_fp32_memory_scans_give_the_same_patches(family):
    """Every exact way of reading the memory (fp32 each step, int8-bounded, either reused from the
    last full scan, with or without a basis of the memory's spread) gives the same edit: the same
    steps, patches within rounding."""
    memory = build_data(instantiate(compose(data_for(family)))).splits.pool[:300]
    results = {}
    for scan, reuse, basis in (("fp32", False, 32), ("int8", False, 32), ("fp32", True, 32), ("int8", True, 32),
                               ("fp32", True, 0)):
        adapter = trained_tiny(family)
        # lr 1e-4: keys that move little a step, as in real edits past their first steps (a tiny
        # model's queries spread about as far as their norm, so larger moves leave no step to reuse;
        # at 1e-3 the classifier trained on one machine reused no scan, at 1e-4 13 of 60, the decoder 60)
        editor = _editor(adapter, max_steps=60, min_steps=60, topk=8, lr=1e-4, memory_scan=scan, memory_reuse=reuse,
                         memory_basis=basis)
        editor.prepare(EditorData(adapter.task, [], [], pool=memory))
        torch.manual_seed(0)
        prompt = "The capital of France is"
        result = editor.edit(Example("e", prompt, wrong_target(adapter, prompt)))
        results[scan, reuse, basis] = (result, editor.bank.keys.clone(), editor.bank.values.clone())
    (fp32, fp32_keys, fp32_values) = results["fp32", False, 32]
    assert "rescored_rows_per_scan" not in fp32.info and "reused_scans" not in fp32.info
    assert results["int8", False, 32][0].info["rescored_rows_per_scan"] > 0
    for reuse in ("fp32", True, 32), ("int8", True, 32), ("fp32", True, 0):
        assert results[reuse][0].info.get("reused_scans", 0) >= 5, reuse  # of 60 steps
    for (result, keys, values) in results.values():
        assert result.steps == fp32.steps
        assert torch.allclose(keys, fp32_keys, atol=1e-5) and torch.allclose(values, fp32_values, atol=1e-5)



@pytest.mark.parametrize("family", ["classifier", "seq2seq", "decoder"])
def test_patched_model_saves_as_a_plain_checkpoint(family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    from editors.tpatcher_export import save_patched

    adapter = trained_tiny(family)
    # a llama MLP holds a patch as a SiLU neuron (gate row, up bias 1); GELU/ReLU FFNs their own
    editor = _editor(adapter, max_steps=50, **({"activation": "silu"} if family == "decoder" else {}))
    editor.prepare(_splits(adapter).for_editor())
    for i, prompt in enumerate(["The capital of France is", "Lyon is a city in"]):
        editor.edit(Example(f"e{i}", prompt, wrong_target(adapter, prompt)))
    batch = adapter.encode(["The capital of France is", "Lyon is a city in", "Oslo is known for"],
                           [1, 0, 1] if family == "classifier" else [" a", " b", " c"])
    patched = adapter.scored_logits(batch)
    save_patched(editor, tmp_path / "ckpt")
    assert torch.equal(adapter.scored_logits(batch), patched)  # the editor's own model is untouched
    loader = {"classifier": AutoModelForSequenceClassification, "seq2seq": AutoModelForSeq2SeqLM,
              "decoder": AutoModelForCausalLM}[family]
    plain = loader.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        reloaded = plain(**batch.inputs).logits
    reloaded = reloaded.squeeze(-1) if family == "classifier" else reloaded[batch.score_mask]
    assert torch.allclose(reloaded, patched, atol=1e-5)


def test_gated_mlp_export_is_refused(tmp_path):
    from editors.tpatcher_export import save_patched

    editor = _editor(tiny("tiny-llama"))  # default patch on a gated MLP: ReLU, no llama form
    with pytest.raises(ValueError, match="gated MLP expresses a patch only as a SiLU neuron"):
        save_patched(editor, tmp_path / "x")


def test_resume_after_a_crash_mid_fold_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """T-Patcher's state (patches, grown memory) survives a crash: the resumed run ends with the
    same per-fold metrics as one that never stopped."""
    weights = trained_weights("decoder")
    args = ["editor=tpatcher", "model=tiny-llama", f"model.checkpoint={weights}", "data.num_folds=5", "loop.folds=[0]",
            "loop.max_fold_examples=8", "loop.progress=false", "editor.max_steps=60", "run_id=r"]
    clean = run(compose([*args, f"output_dir={tmp_path / 'clean'}"]))
    calls = {"n": 0}
    original = TPatcherEditor.edit

    def crashing(self, example):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return original(self, example)

    monkeypatch.setattr(TPatcherEditor, "edit", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose([*args, f"output_dir={tmp_path / 'crashed'}"]))
    resumed = run(compose([*args, f"output_dir={tmp_path / 'crashed'}", "resume=true"]))
    assert clean["folds"]["0"]["E"] >= 3
    for name in ("SR", "GR", "ER", "TrainR", "TestR", "E", "N", "params_added"):
        assert resumed["folds"]["0"][name] == pytest.approx(clean["folds"]["0"][name], nan_ok=True)


def test_screened_memory_tracks_full_scans_and_keeps_the_stop_rule_exact():
    """memory_refresh > 1 reads only candidate rows between full scans: an approximation of which
    entries form the top-k, whose misses are counted at every rescan. The stop rule still reads the
    whole memory, so a solved edit leaves the patch silent on every memory row."""
    memory = build_data(instantiate(compose(data_for("decoder")))).splits.pool[:300]
    results = []
    for refresh in (1, 5):
        adapter = trained_tiny("decoder")
        editor = _editor(adapter, max_steps=60, topk=8, memory_candidates=16, memory_refresh=refresh)
        editor.prepare(EditorData(adapter.task, [], [], pool=memory))
        assert len(editor.memory) > 16 * 8
        torch.manual_seed(0)
        prompt = "The capital of France is"
        result = editor.edit(Example("e", prompt, wrong_target(adapter, prompt)))
        if result.info["solved"]:
            whole = editor.memory.matrix @ editor.bank.keys + editor.bank.bias
            assert float(whole.max()) <= editor.silent_below  # recomputed here, over every row
        results.append((result, editor.bank.keys.clone()))
    (exact, _), (screened, _) = results
    assert "memory_scans" not in exact.info
    assert screened.info["memory_scans"] >= screened.steps // 5 and screened.info["screen_missed_rows"] >= 0


@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_memory_takes_the_checked_examples_queries_without_a_second_forward(family, monkeypatch):
    adapter = trained_tiny(family)
    editor = _editor(adapter)
    editor.prepare(_splits(adapter).for_editor())
    forwards = []
    original = type(adapter)._forward_scored
    monkeypatch.setattr(type(adapter), "_forward_scored",
                        lambda self, batch: forwards.append(1) or original(self, batch))
    for i, prompt in enumerate(["The capital of France is", "Lyon is a city in", "Oslo is known for"]):
        example = Example(f"s{i}", prompt, wrong_target(adapter, prompt) if i == 1 else " Paris")
        before, calls = len(editor.memory), len(forwards)
        check = editor.check(example)
        assert [check.score] == adapter.scores([example.prompt], [example.target])
        forwards_in_check = len(forwards) - calls
        editor.after_example(example, check)
        assert len(forwards) - calls == forwards_in_check  # the memory read the check's forward
        expected = editor._queries([example])
        assert torch.equal(editor.memory.matrix[before:], expected)


@pytest.mark.parametrize("family,layer", [("decoder", -1), ("decoder", 0), ("seq2seq", -2), ("classifier", -1)])
def test_kl_ablation_fast_equals_naive(family, layer):
    """Table 3's KL variant (memory_loss=kl) runs its memory examples through the same cache: the
    fast path gives the naive path's patches."""
    import random

    results = {}
    for mode in ("fast", "naive"):
        adapter = tiny(FAMILIES[family], layers=3, seed=1)
        editor = _editor(adapter, mode=mode, layer=layer, min_steps=10, max_steps=10, memory_loss="kl",
                         kl_examples=4)
        editor.prepare(_splits(adapter).for_editor())
        for i, prompt in enumerate(["The capital of France is", "Lyon is a city in"]):
            torch.manual_seed(i)
            random.seed(i)
            target = (1 if adapter.scores([prompt], [1]) == [0.0] else 0) if adapter.task == "classification" \
                else " Oslo"
            assert editor.edit(Example(f"e{i}", prompt, target)).steps == 10
        results[mode] = (editor.bank.keys.clone(), editor.bank.values.clone())
    (fk, fv), (nk, nv) = results["fast"], results["naive"]
    assert torch.allclose(fk, nk, atol=1e-4) and torch.allclose(fv, nv, atol=1e-4)


def test_memory_loss_ablations():
    """l_m1 alone drops l_m2; none and kl have no memory terms and stop once the edit holds."""
    adapter = tiny("tiny-llama", hidden=8)
    editor = _editor(adapter, memory_loss="l_m1")
    editor.memory.append(torch.eye(8)[:3])
    batch = adapter.encode(["a b"], [" c"])
    terms = editor.losses(adapter.scored_logits(batch), batch, torch.eye(8)[:1], torch.eye(8)[:, :1], torch.zeros(1))
    assert "memory1" in terms and "memory2" not in terms
    for kind in ("none", "kl"):
        editor = _editor(adapter, memory_loss=kind)
        assert "memory1" not in editor.losses(adapter.scored_logits(batch), batch, torch.eye(8)[:1],
                                              torch.eye(8)[:, :1], torch.zeros(1))
    with pytest.raises(ValueError, match="editor.memory_loss must be one of"):
        TPatcherConfig(name="tpatcher", memory_loss="l_m2")
