"""Constrained fine-tuning (Zhu et al.) and kNN-LM: the bound, the mix, the override radius."""

import math

import pytest
import torch

from benchmark.types import EditSplits, Example, with_training_forms
from editors.constrained_ft import ConstrainedFTConfig, ConstrainedFTEditor, project
from editors.datastore import Datastore, faiss_available
from editors.knn_lm import KNNLMConfig, KNNLMEditor
from tests.conftest import trained_tiny, wrong_target

WORDS = ["Zanzibar", "Quito", "Oslo", "Lima", "Hanoi", "Doha", "Accra", "Riga"]


def _splits(task: str, unmodified=()) -> EditSplits:
    cls = task == "classification"
    memory = [Example(f"m{i}", f"{w} is known for", i % 2 if cls else f" {w}") for i, w in enumerate(WORDS)]
    return EditSplits(task=task, train=memory, val=[], folds=[], train_subsample=[], test=[], pool=memory,
                      unmodified=list(unmodified))


def test_projection_linf_and_l2_are_the_nearest_points():
    p0 = [torch.zeros(3), torch.zeros(2)]
    p = [torch.tensor([0.5, -2.0, 0.1]), torch.tensor([3.0, 0.0])]
    project(p, p0, 1.0, "linf")
    assert torch.equal(p[0], torch.tensor([0.5, -1.0, 0.1])) and torch.equal(p[1], torch.tensor([1.0, 0.0]))
    q = [torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 4.0])]  # joint length 5
    project(q, p0, 1.0, "l2")
    assert torch.allclose(q[0], torch.tensor([0.6, 0.0, 0.0])) and torch.allclose(q[1], torch.tensor([0.0, 0.8]))
    inside = [torch.tensor([0.1, 0.0, 0.0]), torch.tensor([0.0, 0.1])]
    project(inside, p0, 1.0, "l2")
    assert torch.equal(inside[0], torch.tensor([0.1, 0.0, 0.0]))


@pytest.mark.parametrize("norm,delta", [("linf", 2e-3), ("l2", 0.05)])
def test_edits_stay_within_delta_and_frozen_blocks_stay_put(norm, delta):
    adapter = trained_tiny("decoder")
    editor = ConstrainedFTEditor(ConstrainedFTConfig(name="constrained_ft", block="0", delta=delta, norm=norm,
                                                     lr=1e-2, max_steps=20), adapter)
    editor.prepare(_splits(adapter.task).for_editor())
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    tuned = set(editor.trainable_parameters())
    assert tuned == {n for n, _ in adapter.block_parameters(0)}
    for prompt in ["The capital of France is", "Kyoto is a city in", "The capital of Kenya is"]:
        editor.edit(Example("e", prompt, wrong_target(adapter, prompt)))  # lr 1e-2: pushes into the bound
    # float32 rounding of theta0 + projected(theta - theta0) leaves up to an ulp of theta per entry: past
    # delta by that much (L-inf) or by sqrt(entries) times it (L2, the entries' errors adding up)
    ulp = 4 * torch.finfo(torch.float32).eps * max(p.abs().max().item() for p in before.values())
    entries = sum(p.numel() for n, p in adapter.model.named_parameters() if n in tuned)
    slack = ulp if norm == "linf" else ulp * entries**0.5
    assert editor.distance() <= delta + slack
    assert editor.distance() >= delta * 0.5, "the edits never reached the bound; the test would not test it"
    for name, p in adapter.model.named_parameters():
        if name not in tuned:
            assert torch.equal(p, before[name]), name
    diffs = torch.cat([(p - before[n]).flatten() for n, p in adapter.model.named_parameters() if n in tuned])
    size = diffs.abs().max() if norm == "linf" else diffs.norm()
    assert size <= delta + slack


def test_fta_batches_mix_as_many_unmodified_facts_as_modified():
    """FTA's unmodified facts come from the memory pool, never from D_tr (the A_F\\S facts)."""
    adapter = trained_tiny("decoder")
    held_out = [Example(f"u{i}", f"{w} lies in", " Asia") for i, w in enumerate(WORDS)]  # D_tr = A_F\S set
    splits = _splits(adapter.task, held_out)
    splits.train, splits.train_subsample = splits.train + held_out, held_out
    editor = ConstrainedFTEditor(ConstrainedFTConfig(name="constrained_ft", mix="fta"), adapter)
    editor.prepare(splits.for_editor())
    edit = Example("e", "The capital of France is", " Oslo", forms=["France's capital is", "France has its capital in"])
    forms = with_training_forms([edit])
    assert [f.prompt for f in forms] == edit.training_prompts()
    seen = set()
    for _ in range(40):
        batch = editor.step_examples(forms)
        assert batch[:3] == forms and len(batch) == 6 and all(b in splits.pool for b in batch[3:])
        assert not {b.uid for b in batch[3:]} & {e.uid for e in held_out}
        seen.update(b.uid for b in batch[3:])
    assert len(seen) > 3, "the unmodified examples are not resampled per step"
    ftm = ConstrainedFTEditor(ConstrainedFTConfig(name="constrained_ft", mix="ftm"), adapter)
    assert ftm.step_examples(forms) == forms


@pytest.mark.parametrize("bad", [{"delta": 0}, {"delta": -1.0}, {"norm": "l1"}, {"block": "middle"}, {"mix": "x"}])
def test_constrained_ft_rejects_impossible_settings(bad):
    with pytest.raises(ValueError, match="editor\\."):
        ConstrainedFTConfig(**bad)


def test_delta_inf_is_plain_fine_tuning():
    p = [torch.tensor([5.0])]
    project(p, [torch.zeros(1)], math.inf, "linf")
    assert p[0].item() == 5.0


def test_knn_overrides_only_within_epsilon(family):
    adapter = trained_tiny(family)
    editor = KNNLMEditor(KNNLMConfig(name="knn_lm", epsilon=0.0, backend="torch"), adapter)
    editor.prepare(_splits(adapter.task).for_editor())
    prompt = "The capital of France is"
    example = Example("e", prompt, wrong_target(adapter, prompt))
    editor.edit(example)
    assert editor.scores([prompt], [example.target]) == [1.0]  # distance 0 to its own key
    key = editor.keys([prompt])
    others = ["Kyoto is a city in", "The currency of Peru is the", "Canada is a country in"]
    distance = editor.store.search(editor.keys(others))[0]
    assert (distance > 0).all()
    targets = [example.target] * len(others)
    with editor.disabled():
        base = editor.scores(others, targets)
        base_answers = editor.predictions(others, targets)
    assert editor.scores(others, targets) == base  # outside epsilon: the model answers
    assert editor.predictions(others, targets) == base_answers
    editor.config.epsilon = float(distance.max()) + 1e-3  # now all fall inside: the edit's answer
    assert editor.scores(others, targets) == [1.0] * len(others)
    # the stored answer whole, as locality (EasyEdit's Loc) reads it
    assert editor.predictions(others, targets) == [adapter.target_ids(p, example.target) for p in others]
    assert torch.equal(editor.keys([prompt]), key)


def test_knn_datastore_from_training_data_survives_reset():
    adapter = trained_tiny("decoder")
    editor = KNNLMEditor(KNNLMConfig(name="knn_lm", source="edits+train", backend="torch"), adapter)
    splits = _splits(adapter.task)
    editor.prepare(splits.for_editor())
    assert len(editor.store) == len(splits.train)
    editor.edit(Example("e", "The capital of France is", " Oslo"))
    assert len(editor.store) == len(splits.train) + 1
    editor.reset()
    assert len(editor.store) == len(splits.train)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_and_torch_search_agree():
    g = torch.Generator().manual_seed(0)
    keys, queries = torch.randn(5000, 32, generator=g), torch.randn(64, 32, generator=g)
    stores = {b: Datastore(32, b, chunk=1024) for b in ("torch", "faiss")}
    for store in stores.values():
        store.add(keys[:3000], list(range(3000)))
        store.search(queries)  # faiss indexes the first part here
        store.add(keys[3000:], list(range(3000, 5000)))
    (dt, it), (df, i_f) = (stores[b].search(queries) for b in ("torch", "faiss"))
    assert torch.equal(it, i_f) and torch.allclose(dt, df, atol=1e-3)
    exact = torch.cdist(queries, keys).min(1)
    assert torch.equal(it, exact.indices)
    for store in stores.values():
        store.truncate(2000)
    assert torch.equal(stores["torch"].search(queries)[1], stores["faiss"].search(queries)[1])
    assert (stores["faiss"].search(queries)[1] < 2000).all()


SERA_ROW = {"encoder": "tiny-bert", "train_epochs": 3, "train_examples": 400, "backend": "torch"}


def test_sera_answers_from_the_cache_in_scope_and_from_the_model_out_of_scope():
    from editors.sera import SERAConfig, SERAEditor
    from tests.conftest import trained_editor_state

    adapter = trained_tiny("decoder")
    editor = SERAEditor(SERAConfig(name="sera", **SERA_ROW), adapter)
    editor.load_trained(trained_editor_state("sera", "decoder", **SERA_ROW))
    editor.prepare(_splits(adapter.task).for_editor())
    edits = [Example(f"e{i}", p, wrong_target(adapter, p)) for i, p in
             enumerate(["The capital of France is", "Kyoto is a city in"])]
    for e in edits:
        editor.edit(e)
    queries = ["What is the capital of France?", "The capital city of France is", "Kyoto lies in the country",
               "The currency of Peru is the", "Canada is a country in", "Zanzibar is known for",
               *[e.prompt for e in edits]]
    keys = editor.keys(queries)
    distance, index = editor.store.search(keys)
    cosine = keys @ editor.keys([e.prompt for e in edits]).T
    assert torch.allclose(1 - distance**2 / 2, cosine.max(1).values, atol=1e-4)  # nearest = most similar
    in_scope = editor.in_scope(distance).tolist()
    assert in_scope[-2:] == [True, True] and not all(in_scope), in_scope
    # the answer each query should get: the nearest edit's label in scope, the model's otherwise
    targets = [edits[int(i)].target for i in index]
    with editor.disabled():
        base = editor.scores(queries, targets)
    got = editor.scores(queries, targets)
    assert got == [1.0 if s else b for s, b in zip(in_scope, base)]


def test_sera_training_is_cached_and_a_run_without_it_says_how_to_make_it(tmp_path, monkeypatch):
    from benchmark.config import compose, instantiate
    from benchmark.editor_training import train_editor
    from benchmark.run import run
    from tests.conftest import TRAINING, data_for, trained_editor_state

    trained_editor_state("sera", "decoder", **SERA_ROW)
    extra = {f"editor.{k}": v for k, v in SERA_ROW.items()}
    cfg = compose(["editor=sera", *data_for("decoder", **TRAINING["decoder"], **extra)])
    assert train_editor(instantiate(cfg), progress=False)["cached"] is True
    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="seqedit train-editor editor=sera model=tiny-llama data=facts"):
        run(compose(["editor=sera", f"output_dir={tmp_path}", *extra_list(extra)]))
    assert not any((tmp_path).glob("sera-*")), "a failed run left a folder behind"


def extra_list(extra: dict) -> list[str]:
    return [f"{k}={v}" for k, v in extra.items()]


@pytest.mark.parametrize("family", ["decoder", "classifier"])
def test_reference_outputs_are_the_original_models_and_each_is_computed_once(family):
    """The KL references of T-Patcher's KL ablation and the official FT recipe: the original
    model's scored logits per example, run once however often and in whatever order they are asked."""
    from contextlib import contextmanager

    from editors.base import ReferenceOutputs

    adapter = trained_tiny(family)
    targets = [1, 0, 1] if family == "classifier" else [" Paris", " Lima and Quito", " sol"]
    examples = [Example(f"r{i}", p, t) for i, (p, t) in enumerate(zip(
        ["The capital of France is", "Peru is a country in", "The currency of Peru is the"], targets))]
    entered = []

    @contextmanager
    def original():
        entered.append(1)
        yield

    references = ReferenceOutputs(adapter)
    asked = [examples[2], examples[0], examples[2], examples[1]]
    got = references(asked, original)
    with torch.no_grad():
        alone = [adapter.scored_logits(adapter.encode([e.prompt], [e.target])) for e in asked]
    torch.testing.assert_close(got, torch.cat(alone), rtol=1e-5, atol=1e-5)
    assert len(entered) == 1
    again = references(examples, original)
    assert len(entered) == 1  # nothing new: no forward
    torch.testing.assert_close(again, torch.cat([alone[1], alone[3], alone[0]]))
    full = ReferenceOutputs(adapter, max_bytes=alone[0].numel() * alone[0].element_size())  # room for one
    torch.testing.assert_close(full(asked, original), got)
    assert len(full.rows) == 1 and len(entered) == 2
    full(asked, original)
    assert len(entered) == 3  # the two that found no room are run again


def test_frozen_outputs_compute_each_input_once_and_drop_them_on_any_change():
    """kNN-LM's and SERA's keys and base scores: one computation per input while the modules are
    as they were; a weight written in place, a hook, a mode switch or a full store drops them."""
    from editors.retrieval import FrozenOutputs

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    computed = []

    def compute(todo):
        computed.append(list(todo))
        return [f"{x}:{float(net[0].weight.sum()):.4f}" for x in todo]

    memo = FrozenOutputs(lambda: [net], max_items=5)
    first = memo(["a", "b", "a"], compute)
    assert computed == [["a", "b"]] and first[0] == first[2]
    assert memo(["b", "c"], compute)[0] == first[1] and computed[-1] == ["c"]
    changes = [lambda: net(torch.ones(1, 3)),  # a forward changes nothing
               lambda: net[0].weight.detach().add_(1.0),  # in place through a view: the version counter moves
               lambda: net[1].register_forward_hook(lambda *a: None),
               lambda: net.train(False)]
    expect_drop = [False, True, True, True]
    for change, drops in zip(changes, expect_drop):
        before = len(computed)
        change()
        memo(["a"], compute)
        assert (len(computed) > before) == drops
    memo(["a", "b", "c", "d", "e"], compute)  # over max_items with what it holds: starts again
    assert computed[-1] == ["a", "b", "c", "d", "e"]


RETRIEVAL_RUNS = {  # editor, family, its settings: the datastore from edits or also D'train, both families
    "knn_lm-decoder": ("knn_lm", "decoder", ["editor.backend=torch", "editor.epsilon=0.5"]),
    "knn_lm-train-classifier": ("knn_lm", "classifier", ["editor.backend=torch", "editor.source=edits+train"]),
    "sera-decoder": ("sera", "decoder", [f"editor.{k}={v}" for k, v in SERA_ROW.items()]),
}


@pytest.mark.parametrize("row", list(RETRIEVAL_RUNS))
def test_a_retrieval_run_records_the_same_reusing_frozen_outputs(tmp_path, monkeypatch, row):
    """Every record of a run (mistake checks, SR, GR, ER, TrainR, TestR, the fold's end) is the
    same whether keys and base scores are reused or computed at every evaluation."""
    from benchmark.config import compose
    from benchmark.registry import EDITORS
    from benchmark.run import run
    from editors.retrieval import RetrievalEditor
    from tests.conftest import TRAINING, data_for, trained_editor_state
    from tests.test_prefix_cache import _records

    editor, family, own = RETRIEVAL_RUNS[row]
    if editor == "sera":
        trained_editor_state("sera", family, **SERA_ROW)
    common = [f"editor={editor}", *own, *data_for(family, **TRAINING[family]), "loop.max_fold_examples=12",
              "loop.eval_every=2", "data.num_folds=5", "loop.folds=[0,1]", "loop.progress=false",
              f"output_dir={tmp_path}"]
    calls = {True: 0, False: 0}
    cls = EDITORS.get(editor).target
    keys = cls.keys

    def counted(self, prompts):
        calls[self.reuse_outputs] += len(prompts)
        return keys(self, prompts)

    monkeypatch.setattr(cls, "keys", counted)
    for reuse in (True, False):
        monkeypatch.setattr(RetrievalEditor, "reuse_outputs", reuse)
        results = run(compose([*common, f"run_id={reuse}"]))
        assert results["metrics"]["E"]["mean"] > 0
    # the same up to a key's rounding in another batch (~1e-7: a batch's keys are not batch-invariant)
    on, off = _records(tmp_path / "True"), _records(tmp_path / "False")
    assert len(on) == len(off) and all(_close(a, b) for a, b in zip(on, off)), next(
        (a, b) for a, b in zip(on, off) if not _close(a, b))
    assert 0 < calls[True] < calls[False] / 2  # each prompt's key once, not at every evaluation


def _close(a, b) -> bool:
    """Equal records, floats within 1e-5 (relative) anywhere in them; everything else exactly."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_a_damaged_trained_state_is_refused_with_the_command_that_makes_it(tmp_path, monkeypatch):
    """A cached training phase whose bytes changed, or that is cut short, is not loaded: one line
    names it and the command that makes it again; one cached before checksums were written is read
    (tensors only) and pinned."""
    import torch

    from benchmark.cache import pin, pin_path
    from benchmark.config import compose, instantiate
    from benchmark.editor_training import load_trained_state, trained_path

    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path))
    cfg = instantiate(compose(["editor=sera", "model=tiny-llama", "data=facts"]))
    path = trained_path(cfg)
    path.parent.mkdir(parents=True)
    torch.save({"w": torch.arange(100.0)}, path)
    assert torch.equal(load_trained_state(cfg)["w"], torch.arange(100.0)) and pin_path(path).exists()
    raw = path.read_bytes()
    flipped, cut = raw[:-9] + bytes([raw[-9] ^ 1]) + raw[-8:], raw[: len(raw) // 2]
    for damaged, checksum in ((flipped, True), (cut, False)):  # without its checksum the read itself must tell
        path.write_bytes(damaged)
        if not checksum:
            pin_path(path).unlink()
        with pytest.raises(FileNotFoundError, match=r"is damaged \(.*\); make it again with: seqedit train-editor"):
            load_trained_state(cfg)
    path.write_bytes(raw)
    pin(path)
    assert torch.equal(load_trained_state(cfg)["w"], torch.arange(100.0))
