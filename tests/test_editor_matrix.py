"""One matrix: every editor is a row; every behaviour check runs over rows x model families.

Rows carry the overrides a *random* tiny model needs (the paper's lr 1e-5 barely moves one in
100 steps); the checks themselves are the same for every editor.
"""

import pytest
import torch

from benchmark.registry import EDITORS
from benchmark.types import EditSplits, Example
from tests.conftest import FAMILIES, tiny, trained_editor_state, trained_tiny, wrong_target

# MEMIT-family rows: C from the default corpus (the Wikipedia sample), its first 20,000 tokens
C_SAMPLE = {"stats_tokens": 20_000}

ROWS = {
    "ft_all": {"lr": 1e-3, "max_steps": 300},
    "ft_last": {"lr": 1e-3, "max_steps": 300},
    "ft_kl_all": {"lr": 1e-3, "max_steps": 300, "kl_batch": 4},
    "ft_kl_last": {"lr": 1e-3, "max_steps": 300, "kl_batch": 4},
    "ft_kl_last-official": {"lr": 1e-3, "max_steps": 300, "kl_batch": 4, "recipe": "official"},
    "tpatcher": {"max_steps": 150},
    "tpatcher-official": {"max_steps": 175, "recipe": "official"},
    "ft_ewc": {"lr": 1e-3, "max_steps": 300, "layer": 0},
    "lora": {"lr": 1e-2, "max_steps": 300, "stop_when_correct": True},
    "lora-plain-ffn": {"lr": 1e-2, "max_steps": 300, "stop_when_correct": True, "form": "lora",
                       "targets": ["ffn_in", "ffn_out"], "layers": [-1]},
    "constrained_ft": {"lr": 1e-3, "max_steps": 300, "delta": 0.05},
    "constrained_ft-fta-l2": {"lr": 1e-3, "max_steps": 300, "delta": 10.0, "norm": "l2", "mix": "fta", "block": "0"},
    "knn_lm": {"epsilon": 0.01, "backend": "torch"},
    "grace": {"max_steps": 50, "layer": 0},
    # C from the default corpus (the Wikipedia sample), its first 20,000 tokens
    "memit": {"layers": [0], **C_SAMPLE, "mom2_update_weight": 10.0},
    "memit_seq": {"layers": [0], **C_SAMPLE, "mom2_update_weight": 10.0},
    "alphaedit": {"layers": [0], **C_SAMPLE, "l2": 0.01},
    "rome": {"layers": [0], **C_SAMPLE, "context_templates": 2},
    "r_rome": {"layers": [0], **C_SAMPLE, "context_templates": 2},
    "emmet": {"layers": [0], **C_SAMPLE, "mom2_update_weight": 10.0},
    "rect": {"layers": [0], **C_SAMPLE, "mom2_update_weight": 10.0},
    "prune": {"layers": [0], **C_SAMPLE, "mom2_update_weight": 10.0},
    # every position: a first edit with a one-token answer has one row, which the normaliser maps to 0
    "ultraedit": {"in_layers": [0], "up_layers": [], "out_layers": [0], "lr": 1e-3, "token": "mask"},
    "rledit": {"in_layers": [0], "up_layers": [], "out_layers": [0], "lr": 1e-3, "token": "mask", "rank": 8,
               "hidden_blocks": 1, "trajectory": 4, "back_depth": 2, "train_examples": 40},
    "wise": {"layer": 0, "max_steps": 40},
    "melo": {"router_layer": 0, "lora_layers": [1], "max_steps": 50, "lr": 1e-2, "stop_when_correct": True},
    "defer": {"layer": 0, "max_steps": 100, "lr": 0.01, "stop_when_correct": True},
    "grace-last-warm": {"max_steps": 50, "layer": -1, "value_init": "warm", "stop_when_correct": True},
    "sera": {"encoder": "tiny-bert", "train_epochs": 3, "train_examples": 400, "backend": "torch"},
    "ke_style": {"edit_lr": 0.1, "train_examples": 40, "train_epochs": 1, "train_lr": 1e-3},
    "mend_style": {"edit_lr": 0.1, "train_examples": 40, "train_epochs": 1, "train_lr": 1e-3},
}


# families an editor refuses in one line (exit 2) instead of running wrongly; the rows run on the
# others and `test_refused_families_are_refused` holds the refusal
REFUSED = {"grace": {"seq2seq"},  # scored by generation, where its read-position hook does not act
           "defer": {"seq2seq"},
           "melo": {"seq2seq"},
           "memit": {"seq2seq", "classifier", "masked"},  # decoder LMs, the method's models
           "memit_seq": {"seq2seq", "classifier", "masked"},
           "alphaedit": {"seq2seq", "classifier", "masked"},
           "rome": {"seq2seq", "classifier", "masked"},
           "r_rome": {"seq2seq", "classifier", "masked"},
           "emmet": {"seq2seq", "classifier", "masked"},
           "rect": {"seq2seq", "classifier", "masked"},
           "prune": {"seq2seq", "classifier", "masked"},
           "wise": {"seq2seq", "classifier", "masked"}}


def _editor_name(row: str) -> str:
    return row.split("-")[0]  # rows "NAME-variant" run a registered editor with other settings


def test_every_registered_editor_has_a_row():
    import editors  # noqa: F401

    assert set(EDITORS.names()) == {_editor_name(r) for r in ROWS}


def _setup(row: str, family: str):
    import editors  # noqa: F401

    name = _editor_name(row)
    adapter = trained_tiny(family)
    entry = EDITORS.get(name)
    editor = entry.target(entry.config_class(name=name, **ROWS[row]), adapter)
    if editor.traits.training:
        editor.load_trained(trained_editor_state(name, family, **ROWS[row]))
    cls = adapter.task == "classification"
    words = ["Zanzibar", "Quito", "Oslo", "Lima", "Hanoi", "Doha"]
    memory = [Example(f"m{i}", f"{w} is known for", i % 2 if cls else f" {w}") for i, w in enumerate(words)]
    splits = EditSplits(task=adapter.task, train=memory, val=memory[:2], folds=[], train_subsample=[], test=[],
                        pool=memory)
    editor.prepare(splits.for_editor())
    prompt = "The capital of France is"
    return adapter, editor, Example("e", prompt, wrong_target(adapter, prompt), subject="France"), memory


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_families_are_refused(name):
    import editors  # noqa: F401

    entry = EDITORS.get(name)
    for family in REFUSED[name]:
        with pytest.raises(ValueError, match=name):
            entry.target(entry.config_class(name=name), trained_tiny(family))


def _outputs(adapter, examples):
    batch = adapter.encode([e.prompt for e in examples], [e.target for e in examples])
    with torch.no_grad():
        return adapter.scored_logits(batch)


# Each cell of a trained editor trains its phase on first use. KE's and MEND's cells check the
# mechanics of an edit, not what training taught (test_hypernet.py does, on the settings it
# names), so their rows train briefly: 40 D'train edits, one epoch, 1.6-5.1 s a cell where the phase
# is not cached, against 11-24 s with 200 edits and three epochs (beside an editing run). SERA's
# cells need a scope that leaves the memory's other inputs alone (trained on 100 edits for one
# epoch, its classifier cell answered four of six differently), so it trains fully, and its
# masked-LM and seq2seq cells run with `slow` to keep the default suite within its time budget.
SLOW_CELLS = {("sera", "masked"), ("sera", "seq2seq")}


def _accepted(name: str, family: str) -> bool:
    return family not in REFUSED.get(_editor_name(name), ())


# A refused cell is not a test at all (its refusal is test_refused_families_are_refused), so a
# fresh clone's skips are only what the machine lacks.
CELLS = [pytest.param(name, family, marks=pytest.mark.slow) if (name, family) in SLOW_CELLS else (name, family)
         for family in FAMILIES for name in ROWS if _accepted(name, family)]
TWO_FAMILY_CELLS = [(name, family) for name in ROWS for family in ("classifier", "decoder") if _accepted(name, family)]


@pytest.mark.parametrize("name, family", CELLS)
def test_edit_flips_target_and_touches_only_its_parameters(name, family):
    adapter, editor, example, memory = _setup(name, family)
    assert editor.scores([example.prompt], [example.target]) == [0.0]
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    base = _outputs(adapter, [example, *memory])
    base_answers = _answers(editor, memory)
    result = editor.edit(example)
    if not editor.traits.one_shot:  # one predicted update need not flip it; their success rate is tested apart
        # what the code guarantees on any machine: an editor that optimises until the edit holds
        # stops early only when it holds; at max_steps (v*'s v_steps) it may not (a tiny model's
        # trajectory); one that computes its update takes no optimizer step
        flipped = editor.scores([example.prompt], [example.target]) == [1.0]
        budget = getattr(editor.config, "max_steps", getattr(editor.config, "v_steps", 0))
        assert (flipped and result.steps <= budget) or result.steps == budget
    changed = {n for n, p in adapter.model.named_parameters() if not torch.equal(p, before[n])}
    allowed = set(editor.trainable_parameters())
    assert changed <= allowed
    if editor.traits.answers_from_memory:
        # the model is untouched; the memory answers the edit and leaves unrelated inputs alone
        assert not changed and torch.equal(_outputs(adapter, [example, *memory]), base)
        with editor.disabled():
            assert editor.scores([example.prompt], [example.target]) == [0.0]
        assert _answers(editor, memory) == base_answers
        state = editor.edit_state()
        editor.reset()
        assert editor.scores([example.prompt], [example.target]) == [0.0]
        editor.load_edit_state(state)
        assert editor.scores([example.prompt], [example.target]) == [1.0]
        return
    if editor.traits.adds_parameters:
        assert not changed and editor.params_added() > 0
        with editor.disabled():
            assert torch.equal(_outputs(adapter, [example, *memory]), base)
    else:
        assert changed, "the edit changed nothing"
    edited = _outputs(adapter, [example, *memory])
    assert not torch.equal(edited, base)

    state = editor.edit_state()
    editor.reset()
    assert torch.equal(_outputs(adapter, [example, *memory]), base)
    assert editor.params_added() == 0
    editor.load_edit_state(state)
    assert torch.equal(_outputs(adapter, [example, *memory]), edited)


def _answers(editor, examples):
    return editor.scores([e.prompt for e in examples], [e.target for e in examples])


def _reachable_examples(root, texts: set | None = None) -> list[Example]:
    """Every `Example` reachable from `root` through attributes, containers and closures (and
    every string, into `texts` when given)."""
    seen, stack, found = set(), [root], []
    while stack:
        obj = stack.pop()
        if texts is not None and isinstance(obj, str):
            texts.add(obj)
        if id(obj) in seen or isinstance(obj, (torch.Tensor, str, bytes, int, float, type)) or obj is None:
            continue
        seen.add(id(obj))
        if isinstance(obj, Example):
            found.append(obj)
        elif isinstance(obj, dict):
            stack += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack += list(obj)
        elif hasattr(obj, "__dict__"):
            stack += list(vars(obj).values())
        elif hasattr(obj, "__closure__") and obj.__closure__:
            stack += [c.cell_contents for c in obj.__closure__]
    return found


@pytest.mark.parametrize("name", list(ROWS))
def test_editor_never_holds_an_evaluation_example(name):
    """An editor is handed `EditorData` (D'train without D_tr, D_val, memory): after preparing
    and building its training phase, nothing it holds is a D_tr, D_test or A_F\\S example, nor
    any fact's held-out probes (Zhu et al.'s A_M / A_F\\S statements)."""
    import editors  # noqa: F401

    adapter = trained_tiny("decoder")
    entry = EDITORS.get(_editor_name(name))
    editor = entry.target(entry.config_class(name=_editor_name(name), **ROWS[name]), adapter)
    words = ["Zanzibar", "Quito", "Oslo", "Lima", "Hanoi", "Doha", "Accra", "Riga"]
    pool = [Example(f"m{i}", f"{w} is known for", f" {w}", equivalents=[f"{w} is famous for"],
                    forms=[f"{w} is noted for"], probes=[f"What is {w} known for?"]) for i, w in enumerate(words)]
    held_out = [Example(f"t{i}", f"{w} lies in", " Asia", equivalents=[f"{w} is in"]) for i, w in enumerate(words)]
    splits = EditSplits(task=adapter.task, train=pool + held_out[:4], val=pool[:2], folds=[], test=held_out[4:6],
                        train_subsample=held_out[:4], pool=pool, unmodified=held_out[:4] + held_out[6:])
    data = splits.for_editor()
    handed = (*data.train, *data.val, *data.pool)
    assert not {e.uid for e in held_out} & {e.uid for e in handed} and not any(e.probes for e in handed)
    editor.prepare(data)
    phase = editor.training_module(data) if editor.traits.training else None
    texts = set()
    reached = _reachable_examples([editor, phase], texts)
    assert not {e.uid for e in reached} & {e.uid for e in held_out}
    assert not any(e.probes for e in reached) and not texts & {p for e in pool for p in e.probes}
    editor.leak = {"kept": [(0, held_out[0])]}  # the traversal does see an example an editor would keep
    assert id(held_out[0]) in {id(e) for e in _reachable_examples([editor, phase])}
    assert {e.uid for e in reached} <= {e.uid for e in pool}


@pytest.mark.parametrize("name, family", TWO_FAMILY_CELLS)
def test_editor_state_is_made_where_the_model_runs(name, family):
    """An editor built for a model on another device (here `meta`, which needs no GPU) makes its
    own parameters and buffers there. Lightning moves them in a run, but an editor used directly
    (benchmark.perf, the API) with a GPU model otherwise meets CPU patches or hypernetworks: seen
    on an H100 for T-Patcher's patch bank and KE's LSTM."""
    import editors  # noqa: F401

    editor_name = _editor_name(name)
    adapter = tiny(FAMILIES[family])
    adapter.model.to("meta")
    entry = EDITORS.get(editor_name)
    editor = entry.target(entry.config_class(name=editor_name, **ROWS[name]), adapter)
    elsewhere = [n for n, t in [*editor.named_parameters(), *editor.named_buffers()] if t.device.type != "meta"]
    assert not elsewhere


@pytest.mark.parametrize("name, family", TWO_FAMILY_CELLS)  # what an editor declares is family-blind
def test_scoring_after_an_edit_from_the_cached_prefix_and_in_any_batch(name, family, monkeypatch):
    """The loop scores through a `PrefixCache` for the blocks the editor declares it changes
    (`edited_from`): after an edit its answers are the full forward's, and nothing before those
    blocks changed (no entry was dropped), so the declaration holds for every editor (on a
    decoder and an encoder; the replay itself is checked on every replaying family in
    tests/test_prefix_cache.py). Scoring batches examples by length (`ModelAdapter.scores`), so
    an edited model's answer must not depend on what shares its batch either: hooks and routers
    decide per example (one test, so that each row is set up and edited once)."""
    from benchmark.models.prefix_cache import PrefixCache
    from editors.retrieval import RetrievalEditor

    # kNN-LM and SERA keep the frozen model's scores themselves (test_memory_editors.py), which would
    # leave nothing here for the cache to replay
    monkeypatch.setattr(RetrievalEditor, "reuse_outputs", False)
    adapter, editor, example, memory = _setup(name, family)
    cache = PrefixCache(adapter, editor.edited_from(), 2**30)
    lists = [memory, [example, *memory]]
    with cache.lent():
        for examples in lists:  # captured
            _answers(editor, examples)
    editor.edit(example)
    with cache.lent():
        cached = [_answers(editor, examples) for examples in lists]
    assert cached == [_answers(editor, examples) for examples in lists]  # not lent: the full forward
    assert cache.stats["dropped"] == 0
    if cache.first is not None and adapter.replays_blocks:
        assert cache.stats["replayed"] > 0
    else:
        assert not cache.entries
    examples = lists[1]
    alone = [_answers(editor, [e])[0] for e in examples]
    for size in (2, 64):
        adapter.config.eval_batch_size = size
        assert _answers(editor, examples) == alone
        assert _answers(editor, examples[::-1]) == alone[::-1]


class _Crash(RuntimeError):
    pass


# editors whose state between edits is more than their trainable weights: the normaliser beside
# them (UltraEdit), the unrestrained weights (PRUNE), the gate's trained flag (DEFER), adapters
# (LoRA), the recent edits for the Fisher (FT-EWC)
STATEFUL = ["ultraedit", "rledit", "prune", "defer", "lora", "ft_ewc"]


@pytest.mark.parametrize("name", STATEFUL)
def test_a_run_crashed_mid_fold_resumes_to_the_uninterrupted_runs_metrics(name, tmp_path, monkeypatch):
    import editors  # noqa: F401
    from benchmark.config import compose
    from benchmark.run import run
    from tests.conftest import TRAINING

    row = {k: v for k, v in ROWS[name].items()}
    args = [f"editor={name}", *[f"editor.{k}={v}".replace(" ", "") for k, v in row.items()], "model=tiny-llama",
            "data=facts", *[f"{k}={v}" for k, v in TRAINING["decoder"].items()], "loop.folds=[0,1]",
            "loop.max_fold_examples=5", "loop.progress=false", "loop.state_overhead=0", f"output_dir={tmp_path}"]
    clean = run(compose([*args, "run_id=clean"]))
    cls, calls = EDITORS.get(name).target, {"n": 0}
    edit = cls.edit

    def crashing(self, example):
        calls["n"] += 1
        if calls["n"] == 3:  # the third edit of the run: its fold's state so far is on disk
            raise _Crash
        return edit(self, example)

    monkeypatch.setattr(cls, "edit", crashing)
    with pytest.raises(_Crash):
        run(compose([*args, "run_id=crashed"]))
    redone = {"n": 0}

    def counted(self, example):
        redone["n"] += 1
        return edit(self, example)

    monkeypatch.setattr(cls, "edit", counted)
    resumed = run(compose([*args, "run_id=crashed", "resume=true"]))
    total = sum(int(m["E"]) for m in clean["folds"].values())
    assert redone["n"] == total - 2  # the two edits before the crash came back from the saved state
    drop = ("edit_seconds_median",)
    assert {f: {k: v for k, v in m.items() if k not in drop} for f, m in resumed["folds"].items()} == \
        {f: {k: v for k, v in m.items() if k not in drop} for f, m in clean["folds"].items()}
