"""MEMIT and AlphaEdit: the key position, the closed-form updates' defining properties."""

import pytest
import torch

from benchmark.models.kept_positions import kept_positions
from benchmark.registry import EDITORS
from benchmark.types import EditSplits, Example
from tests.conftest import tiny, trained_tiny, wrong_target

WORDS = ["Zanzibar", "Quito", "Oslo", "Lima", "Hanoi", "Doha"]
PROMPT = "The capital of France is"


def _editor(name: str, adapter=None, **overrides):
    import editors  # noqa: F401

    adapter = adapter or trained_tiny("decoder")
    entry = EDITORS.get(name)
    # C from the default corpus (the Wikipedia sample), its first 20,000 tokens: seconds on the tiny model
    settings = {"layers": [0], "stats_tokens": 20_000, **overrides}
    editor = entry.target(entry.config_class(name=name, **settings), adapter)
    memory = _pool()
    editor.prepare(EditSplits(task=adapter.task, train=memory, val=[], folds=[], train_subsample=[], test=[],
                              pool=memory).for_editor())
    return adapter, editor


def test_keys_are_read_at_the_subjects_last_token():
    adapter, editor = _editor("memit", context_templates=0)
    texts, positions, subject = editor._requests(Example("e", PROMPT, " Paris", subject="France"))
    ids = adapter.encode(texts, [" Paris"]).inputs["input_ids"][0]
    assert subject == "France" and adapter.tokenizer.decode(ids[positions[0]]).strip() == "France"
    texts, positions, subject = editor._requests(Example("e", PROMPT, " Paris", subject="Spain"))
    assert subject is None and positions == [len(adapter.tokenizer(PROMPT)["input_ids"]) - 1]
    assert editor.fold_report()["edits_without_subject"] == 1


def test_memit_writes_v_star_at_one_layer():
    """With one edited block and a weak prior (small lambda), the least-squares update makes the
    block's output at the subject's token what v* asked for (bare prompt only: with prefixes the
    key is their mean, MEMIT's choice, and the bare prompt's own key differs)."""
    adapter, editor = _editor("memit", mom2_update_weight=1e-3, context_templates=0)
    example = Example("e", PROMPT, wrong_target(adapter, PROMPT), subject="France")
    texts, positions, subject = editor._requests(example)
    block = adapter.layer_modules()[0]
    z, _ = editor._target_vector(example, texts, positions, subject, block)
    before = editor._read(texts[:1], positions[:1], [(block, True)])[0][0]
    editor.edit(example)
    after = editor._read(texts[:1], positions[:1], [(block, True)])[0][0]
    # v* is recomputed inside the edit from the same start: the same optimisation, the same z
    assert float((after - z).norm()) < 0.05 * float((before - z).norm())


def test_alphaedit_leaves_the_preserved_keys_alone():
    """The update lies in the null space of C: W's change times any key in C's principal
    subspace is ~0 (AlphaEdit's guarantee), while it does change W."""
    adapter, editor = _editor("alphaedit", l2=0.01)
    weight = editor.sites[0].out_proj.weight
    before = weight.detach().clone()
    editor.edit(Example("e", PROMPT, wrong_target(adapter, PROMPT), subject="France"))
    change = (weight.detach() - before).double()
    P = editor.projections[0].double()
    principal = torch.eye(len(P), dtype=torch.float64) - P
    assert change.norm() > 0
    assert float((change @ principal).norm()) < 1e-4 * float(change.norm())
    assert editor.past[0].abs().sum() > 0  # this edit's keys join the preserved ones
    state = editor.edit_state()
    editor.reset()
    assert torch.equal(weight, before) and editor.past[0].abs().sum() == 0
    editor.load_edit_state(state)
    torch.testing.assert_close(weight.detach() - before, change.float())


def test_memit_seq_adds_the_earlier_edits_keys_to_lambda_c():
    """memit_seq (memit_seq_main.py): its first edit of a fold is MEMIT's, bit for bit (no earlier
    keys); its second solves against lambda C + K_p K_p^T, where K_p is the first edit's key read
    on the edited model; reset forgets them and a saved state brings them back."""
    first = Example("e", PROMPT, " Oslo", subject="France")
    second = Example("f", "The capital of Peru is", " Hanoi", subject="Peru")
    changes = {}
    for name in ("memit", "memit_seq"):
        adapter, editor = _editor(name, mom2_update_weight=10.0, context_templates=0)
        weight = editor.sites[0].out_proj.weight
        before = weight.detach().clone()
        editor.edit(first)
        after_first = weight.detach().clone()
        texts, positions, _ = editor._requests(first)
        key = editor._read(texts, positions, [(editor.sites[0].out_proj, False)])[0].mean(0).float()
        editor.edit(second)
        changes[name] = (after_first - before, weight.detach() - after_first, key, editor)
    assert torch.equal(changes["memit"][0], changes["memit_seq"][0])
    assert not torch.allclose(changes["memit"][1], changes["memit_seq"][1])
    seq = changes["memit_seq"][3]
    assert changes["memit"][3].past == [] and not changes["memit"][3].keeps_past_keys
    # after two edits: the sum of both keys' outer products; the first is the one read above
    assert float((seq.past[0] - torch.outer(changes["memit_seq"][2], changes["memit_seq"][2])).abs().sum()) > 0
    state = seq.edit_state()
    seq.reset()
    assert seq.past[0].abs().sum() == 0
    seq.load_edit_state(state)
    assert torch.equal(seq.past[0], state["past"][0])


def test_alphaedit_refuses_to_drop_the_earlier_keys():
    from editors.configs.memit import AlphaEditConfig

    with pytest.raises(ValueError, match="past_keys"):
        AlphaEditConfig(name="alphaedit", past_keys=False)


def test_second_moment_is_cached_per_model_block_and_texts(tmp_path, monkeypatch, capsys):
    """The second run reads the file the first wrote (a changed file with its checksum shows
    through); a file whose bytes no longer match its checksum, or cut short, or of another shape, is
    named in one line and computed again; the one-pass count stopped after the deepest block equals
    a full forward's."""
    from safetensors.torch import save_file

    from benchmark.cache import pin

    monkeypatch.setattr("editors.memit.cache_dir", lambda: tmp_path)  # C's cache alone: the tiny model stays cached
    _, first = _editor("memit", context_templates=0)
    (path,) = list((tmp_path / "second_moments").glob("*.safetensors"))
    save_file({"mom2": 2 * first.second_moments[0]}, str(path))
    pin(path)
    _, again = _editor("memit", context_templates=0)
    assert torch.equal(again.second_moments[0], 2 * first.second_moments[0])
    for damage in ("unpinned change", "cut", "shape"):
        if damage == "unpinned change":
            save_file({"mom2": 3 * first.second_moments[0]}, str(path))
        elif damage == "cut":
            path.write_bytes(path.read_bytes()[:100])
        else:
            save_file({"mom2": torch.eye(3)}, str(path))
            pin(path)
        capsys.readouterr()
        _, again = _editor("memit", context_templates=0)
        assert "is damaged; computing it again" in capsys.readouterr().err, damage
        torch.testing.assert_close(again.second_moments[0], first.second_moments[0])
    texts = [f"{w} is known for {w}" * (i + 1) for i, w in enumerate(WORDS)]  # lengths differ: padded batches
    seen = []
    handle = first.sites[0].out_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        for text in texts:
            first.model(**first.adapter.tokenizer([text], return_tensors="pt"))
    handle.remove()
    keys = torch.cat([k[0] for k in seen]).double()
    pieces = [first.adapter.tokenizer(text)["input_ids"] for text in texts]
    moments, tokens = first._count_second_moments(pieces, "these texts", len(texts))
    torch.testing.assert_close(moments[0], (keys.T @ keys / len(keys)).float())
    assert tokens == len(keys)


def test_the_fold_report_says_where_c_came_from(tmp_path, monkeypatch):
    """Its source, texts and tokens, counted when C is computed and kept in the cached file, so a
    run that reads the cache reports the same count; the pool as a source is named a deviation."""
    monkeypatch.setattr("editors.memit.cache_dir", lambda: tmp_path)  # C's cache alone: the tiny model stays cached
    adapter, first = _editor("memit", context_templates=0)
    report = first.fold_report()["second_moment"]
    assert report["source"] == "wikipedia_sample" and report["tokens"] == 20_000 and report["texts"] >= 1
    assert "100,000 Wikipedia texts" in report["published"] and "deviation" not in report
    _, again = _editor("memit", context_templates=0)  # from the cache
    assert again.fold_report()["second_moment"] == report
    _, pool = _editor("memit", context_templates=0, stats_source="memory")
    tok = adapter.tokenizer
    tokens = sum(len(tok(e.prompt + str(e.target))["input_ids"]) for e in _pool())
    report = pool.fold_report()["second_moment"]
    assert (report["source"], report["texts"], report["tokens"]) == ("memory", len(WORDS), tokens)
    assert "memory pool" in report["deviation"]
    assert not torch.allclose(pool.second_moments[0], first.second_moments[0])
    assert "second_moment" not in _editor("rome", mom2_adjustment=False, context_templates=0)[1].fold_report()


def test_rome_memit_and_alphaedit_share_one_c_per_block(tmp_path, monkeypatch, capsys):
    """C is keyed by the weights up to the block, the block, the tokenizer and the corpus's
    settings, not by the editor: MEMIT's block-0 C serves ROME and AlphaEdit without a recount,
    and another token budget is another C."""
    monkeypatch.setattr("editors.memit.cache_dir", lambda: tmp_path)  # C's cache alone: the tiny model stays cached
    _, memit = _editor("memit", context_templates=0)
    assert "C = E[k k^T] at blocks [0]" in capsys.readouterr().err
    for name in ("rome", "alphaedit"):
        _, other = _editor(name, context_templates=0)
        assert "C = E[k k^T]" not in capsys.readouterr().err
        assert torch.equal(other.second_moments[0], memit.second_moments[0])
    _, longer = _editor("memit", context_templates=0, stats_tokens=30_000)
    assert "C = E[k k^T]" in capsys.readouterr().err
    assert longer.fold_report()["second_moment"]["tokens"] == 30_000


def test_a_corpus_that_cannot_serve_is_named_before_the_model_is_used(monkeypatch):
    import importlib.util

    from benchmark.corpus import CorpusError
    from editors.configs.memit import MemitConfig

    with pytest.raises(ValueError, match="no such file"):
        MemitConfig(name="memit", stats_source="no/such/file.txt")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real(name, *a))
    with pytest.raises(CorpusError, match=r"needs the gensim package.*pip install -e '\.\[corpus\]'"):
        _editor("memit", context_templates=0)


def _pool():
    return [Example(f"m{i}", f"{w} is known for", f" {w}") for i, w in enumerate(WORDS)]


@pytest.mark.parametrize("adjust,consistent", [(True, False), (False, False), (True, True), (False, True)])
def test_rome_writes_v_star_exactly_at_its_block(adjust, consistent):
    """ROME's rank-one update makes the FFN output at the subject's token (bare prompt) v*
    exactly: W' k = W k + v (u . k) with v = (v* - W k) / (k . u), whatever u is (C^-1 k* or k*).
    C-ROME (consistent_keys) does so at the prefix-averaged key k* instead: W' k* = v*."""
    adapter, editor = _editor("rome", context_templates=2, mom2_adjustment=adjust, consistent_keys=consistent)
    assert len(editor.templates) == 3 and (len(editor.second_moments) == 1) == adjust
    example = Example("e", PROMPT, wrong_target(adapter, PROMPT), subject="France")
    texts, positions, subject = editor._requests(example)
    out_proj = editor.sites[0].out_proj
    z, _ = editor._target_vector(example, texts, positions, subject, out_proj)
    weight = out_proj.weight.detach().clone()
    keys = editor._read(texts, positions, [(out_proj, False)])[0]
    info = editor.edit(example).info
    assert info["update_norm"] == pytest.approx(torch.linalg.matrix_norm(out_proj.weight.detach() - weight).item(),
                                                rel=1e-3)  # |v u^T| = |v|, u a unit vector
    if consistent and not adjust:  # u = k* / |k*|: C-ROME's denominator is |k*|
        assert info["k_dot_u"] == pytest.approx(keys.mean(0).norm().item(), rel=1e-6)
    if consistent:
        with torch.no_grad():
            after = out_proj(keys.mean(0).float()).double()
        bare = editor._read(texts[:1], positions[:1], [(out_proj, True)])[0][0]
        assert (bare - z).norm() > 1e-2 * z.norm()  # the bare prompt's key is not where v* was written
    else:
        after = editor._read(texts[:1], positions[:1], [(out_proj, True)])[0][0]
    torch.testing.assert_close(after, z, rtol=1e-4, atol=1e-4)
    change = out_proj.weight.detach() - weight
    singular = torch.linalg.svdvals(change.double())
    assert singular[1] < 1e-4 * singular[0]  # rank one (up to the float32 rounding of W + v u^T)


@pytest.mark.parametrize("name", ["memit", "alphaedit", "rome"])
def test_out_of_range_layers_are_refused(name):
    import editors  # noqa: F401

    entry = EDITORS.get(name)
    with pytest.raises(ValueError, match="out of range"):
        layers = [7] if name == "rome" else [0, 7]  # ROME rewrites one block
        entry.target(entry.config_class(name=name, layers=layers), trained_tiny("decoder"))


@pytest.mark.parametrize("name,layers", [("memit", [0, 1]), ("alphaedit", [0]), ("rome", [0]), ("rome", [1])])
def test_v_star_from_the_recorded_prefix_is_the_full_forwards(name, layers):
    """editor.mode=fast runs v*'s steps from the input of delta's block recorded once per edit: the
    same steps and, bit for bit, the same weights after the edit as the full forward every step
    (delta at block 1's output for MEMIT, block 0's for AlphaEdit, either FFN's for ROME)."""
    own = {"memit": {"mom2_update_weight": 10.0}, "alphaedit": {"l2": 0.01}, "rome": {"context_templates": 2}}[name]
    example = Example("e", PROMPT, None, subject="France")
    edited = {}
    for mode in ("naive", "fast"):
        adapter, editor = _editor(name, mode=mode, **{**own, "layers": layers})
        example = Example("e", PROMPT, example.target or wrong_target(adapter, PROMPT), subject="France")
        torch.manual_seed(0)
        result = editor.edit(example)
        edited[mode] = result.steps, [p.detach().clone() for p in editor.trainable_parameters().values()]
    assert edited["fast"][0] == edited["naive"][0] > 1
    assert all(torch.equal(a, b) for a, b in zip(edited["fast"][1], edited["naive"][1]))


@pytest.mark.parametrize("name,layers,templates", [("memit", [0, 1], 2), ("alphaedit", [2], 2), ("rome", [0], 4),
                                                   ("rome", [1], 2), ("emmet", [2], 0)])
def test_v_star_from_kept_positions_is_the_full_forwards_to_rounding(name, layers, templates):
    """editor.mode=kv reruns v*'s blocks from each text's subject on, over the kept keys and values
    of the earlier positions: the same steps, and updates within float rounding of the full
    forward's every step, for several blocks, editors and template counts (rows of other lengths).
    On a 4-block model, so that blocks after delta's carry its gradient to the later positions."""
    own = {"memit": {"mom2_update_weight": 10.0}, "alphaedit": {"l2": 0.01}, "rome": {}, "emmet": {}}[name]
    edited = {}
    for mode in ("naive", "kv"):
        adapter = tiny("tiny-llama", layers=4)
        _, editor = _editor(name, adapter, mode=mode, context_templates=templates, **{**own, "layers": layers})
        example = Example("e", PROMPT, " Oslo", subject="France")
        before = [p.detach().clone() for p in editor.trainable_parameters().values()]
        torch.manual_seed(0)
        result = editor.edit(example)
        texts, positions, _ = editor._requests(example)  # after the edit: its prefixes are drawn there
        if mode == "kv":  # the rerun is served here, and skips positions
            assert kept_positions(adapter, adapter.encode(texts, [example.target] * len(texts)), layers[-1],
                                  torch.tensor(positions)) is not None and min(positions) > 0
        edited[mode] = result.steps, [p.detach() - b for p, b in zip(editor.trainable_parameters().values(), before)]
    assert edited["kv"][0] == edited["naive"][0] > 1
    for kv, naive in zip(edited["kv"][1], edited["naive"][1]):  # each update within 1e-4 of its largest entry
        assert naive.abs().max() > 0
        torch.testing.assert_close(kv, naive, rtol=0, atol=1e-4 * naive.abs().max().item())


def test_reads_stop_the_forward_after_the_last_module_read():
    from benchmark.models.base import installed

    adapter, editor = _editor("memit", context_templates=0)
    texts, positions = ["The capital of France is", "Oslo is in"], [4, 1]
    site, last = editor.sites[0], adapter.layer_modules()[-1]
    ran, full = [], {}
    with installed([last.register_forward_pre_hook(lambda _m, _a: ran.append(1))]):
        keys, outputs = editor._read(texts, positions, [(site.out_proj, False), (site.out_proj, True)])
    assert not ran  # block 0 was the last read: block 1 and the head never ran
    with installed([site.out_proj.register_forward_pre_hook(lambda _m, a: full.setdefault("in", a[0])),
                    site.out_proj.register_forward_hook(lambda _m, _a, out: full.setdefault("out", out))]):
        with torch.no_grad():
            adapter.scored_logits(adapter.encode(texts, [" x"] * 2))
    rows, at = torch.arange(2), torch.tensor(positions)
    assert torch.equal(keys, full["in"][rows, at].double()) and torch.equal(outputs, full["out"][rows, at].double())


def _generated(adapter, starts: list[str], lengths: list[int], seed: int, special: bool) -> list[str]:
    """The prefixes as `generate` samples them from one seeded CPU generator (the sampling before
    `sample_continuation`)."""
    tok, out = adapter.tokenizer, []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for start, length in zip(starts, lengths):
            enc = tok([start], return_tensors="pt", add_special_tokens=special)
            gen = adapter.model.generate(**enc, do_sample=True, top_k=5, max_length=length,
                                         pad_token_id=tok.pad_token_id)
            out.append(tok.decode(gen[0], skip_special_tokens=True).replace("{", " ").replace("}", " ") + ". {}")
    return out


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("name", ["memit", "rome"])
def test_prefixes_are_generates_samples_drawn_on_the_cpu(name, seed):
    """The prefixes are drawn from a CPU generator of their own, whatever the model's device (a GPU's
    generator drew others), and on a CPU they are the ones `generate` samples: results from before
    this sampler stand. The global generator is left as it was."""
    from editors.memit import PREFIX_STARTS

    adapter, editor = _editor(name, context_templates=6, seed=seed)
    state = torch.random.get_rng_state()
    prefixes = editor._prefixes()
    assert torch.equal(torch.random.get_rng_state(), state)
    tok = adapter.tokenizer
    if name == "rome":
        expected = _generated(adapter, [tok.bos_token or tok.eos_token] * 6, [5, 5, 5, 10, 10, 10], seed, False)
    else:
        expected = _generated(adapter, [PREFIX_STARTS[i % 5] for i in range(6)], [10] * 6, seed, True)
    assert prefixes == expected and len(set(prefixes)) > 1


def test_r_rome_is_rome_with_consistent_keys():
    """editor=r_rome (EasyEdit's r_rome, enable_random_prefix_keys) makes the same update as
    `rome editor.consistent_keys=true`, bit for bit, and refuses to drop its fix."""
    from editors.configs.memit import RRomeConfig

    example = Example("e", PROMPT, " Oslo", subject="France")
    changes = []
    for name, extra in (("r_rome", {}), ("rome", {"consistent_keys": True})):
        _, editor = _editor(name, context_templates=2, **extra)
        weight = editor.sites[0].out_proj.weight
        before = weight.detach().clone()
        editor.edit(example)
        changes.append(weight.detach() - before)
    assert torch.equal(*changes) and changes[0].abs().sum() > 0
    with pytest.raises(ValueError, match="consistent_keys"):
        RRomeConfig(name="r_rome", consistent_keys=False)


def test_emmet_maps_the_edited_key_exactly_onto_its_target():
    """EMMET's equality constraint (emmet_main.py:225-237): with emmet_lambda = 0 the update moves
    W k by exactly the residual, where MEMIT's least squares moves it by r k'C'^-1 k / (1 + k'C'^-1 k)."""
    moved = {}
    for name, extra in (("emmet", {"emmet_lambda": 0.0}), ("memit", {})):
        adapter, editor = _editor(name, mom2_update_weight=10.0, context_templates=0, **extra)
        site = editor.sites[0]
        torch.manual_seed(0)
        key = torch.randn(site.out_proj.weight.shape[1], dtype=torch.float64)
        residual = torch.randn(site.out_proj.weight.shape[0], dtype=torch.float64)
        before = site.out_proj.weight.detach().double().clone()
        editor._update(0, site, key, residual)
        moved[name] = (site.out_proj.weight.detach().double() - before) @ key
        C = 10.0 * editor.second_moments[0].double()
        gain = float(key @ torch.linalg.solve(C, key))
        if name == "emmet":
            torch.testing.assert_close(moved[name], residual, rtol=1e-4, atol=1e-4)
        else:
            torch.testing.assert_close(moved[name], residual * gain / (1 + gain), rtol=1e-4, atol=1e-4)


def test_rect_keeps_memits_update_where_the_relative_change_is_largest():
    """RECT (memit_rect_main.py:50-61): the same v* and MEMIT update, of which only the entries with
    the top `keep` of |dW / (W + 1e-8)| are written; the others keep their weight."""
    example = Example("e", PROMPT, " Oslo", subject="France")
    updates, exact = {}, {}
    for name in ("memit", "rect"):
        adapter, editor = _editor(name, mom2_update_weight=10.0, context_templates=0)
        solve = editor._delta
        editor._delta = lambda i, key, residual, solve=solve, name=name: exact.setdefault(name, solve(i, key, residual))
        weight = editor.sites[0].out_proj.weight
        before = weight.detach().clone()
        editor.edit(example)
        updates[name] = (weight.detach().clone(), before)
    torch.testing.assert_close(exact["rect"], exact["memit"], rtol=0, atol=0)  # the same v* and solve
    full, before = exact["memit"], updates["memit"][1]  # the float64 update, as mr masks it
    from editors.rect import relative_change_mask

    mask = relative_change_mask(full, before, 0.4)
    assert 0.39 < mask.float().mean() < 0.41
    rel = (full / (before + 1e-8)).abs()
    assert rel[mask].min() >= rel[~mask].max()
    edited = updates["rect"][0]
    assert torch.equal(edited, before + (full * mask).float())  # W[mask] += dW (mr:58-60)
    assert torch.equal(edited[~mask], before[~mask])


def test_prune_restrains_the_summed_update_and_edits_on_from_the_unrestrained():
    """PRUNE (bi_editor_loadw.py:109-170): the model that answers is W0 + F(W_raw - W0) with the
    singular values s >= s_max shrunk to ln s - ln s_max + s_max; the next edit is computed on W_raw,
    so W_raw after two edits is MEMIT's after the same two, bit for bit."""
    from editors.prune import restrained

    first = Example("e", PROMPT, " Oslo", subject="France")
    second = Example("f", "Peru lies in", " Asia", subject="Peru")
    raw = {}
    for name in ("memit", "prune"):
        adapter, editor = _editor(name, mom2_update_weight=10.0, context_templates=0)
        weight = editor.sites[0].out_proj.weight
        w0 = weight.detach().clone()
        if name == "prune":
            editor.s_max = {n: 1e-3 for n in editor.s_max}  # below the update's: the restraint acts
        editor.edit(first)
        result = editor.edit(second)
        raw[name] = editor.raw[next(iter(editor.raw))] if name == "prune" else weight.detach().clone()
    assert torch.equal(raw["memit"], raw["prune"])
    assert result.info["restrained_singular_values"] >= 1
    expected, _ = restrained(raw["prune"] - w0, 1e-3, torch.e)
    torch.testing.assert_close(weight.detach(), w0 + expected)
    S = torch.linalg.svdvals((weight.detach() - w0).double())
    S_raw = torch.linalg.svdvals((raw["prune"] - w0).double())
    big = S_raw >= 1e-3
    torch.testing.assert_close(S[: int(big.sum())], torch.log(S_raw[big]) - torch.log(torch.tensor(1e-3)) + 1e-3)
