import json
import random
from collections import Counter

import pytest
import torch

from benchmark.build import build_data
from benchmark.cli import main
from benchmark.config import compose, instantiate
from benchmark.types import DataError
from data.base import cut_folds, split_by_ratio
from data.modify import ObjectSampler
from tests.conftest import REAL_DATA, ZSRE_MEND


def datamodule(*overrides):
    return build_data(instantiate(compose(list(overrides))))


def test_split_and_fold_sizes_are_exact():
    parts = split_by_ratio(list(range(1000)), [0.8, 0.1, 0.1], seed=3)
    assert [len(p) for p in parts] == [800, 100, 100]
    assert parts == split_by_ratio(list(range(1000)), [0.8, 0.1, 0.1], seed=3)
    assert sorted(sum(parts, [])) == list(range(1000))
    assert [len(f) for f in cut_folds(list(range(103)), 20)] == [6, 6, 6] + [5] * 17


def test_facts_splits_are_deterministic_and_exact():
    a, b = datamodule("data=facts"), datamodule("data=facts")
    sa = a.splits.sizes()
    n = a.records_read
    test = round(0.1 * n)
    assert sa["test"] == test and sa["edit"] == round(0.2 * (n - test)) and sa["folds"] == 5
    assert sa["train"] + sa["val"] + sa["edit"] + sa["test"] == n
    assert [e.uid for f in a.splits.folds for e in f] == [e.uid for f in b.splits.folds for e in f]
    c = datamodule("data=facts", "data.seed=1")
    assert [e.uid for e in c.splits.folds[0]] != [e.uid for e in a.splits.folds[0]]
    assert all(e.equivalents for f in a.splits.folds for e in f)
    assert all(e.subject and e.subject in e.prompt for f in a.splits.folds for e in f)


def test_facts_claims_and_modified_targets():
    claims = datamodule("data=facts", "data.task=claims")
    labels = Counter(e.target for e in claims.splits.train)
    assert set(labels) == {0, 1} and min(labels.values()) > 0.4 * sum(labels.values())
    modified = datamodule("data=facts", "data.target=modified")
    for ex in (e for f in modified.splits.folds for e in f):
        assert ex.original_target is not None and ex.target != ex.original_target
    assert modified.splits.unmodified


def test_object_sampler_follows_frequency_and_never_returns_the_original():
    sampler = ObjectSampler([("r", "a")] * 6 + [("r", "b")] * 3 + [("r", "c")] * 1 + [("q", "z")])
    rng = random.Random(0)
    draws = Counter(sampler.sample(rng, "r", "a") for _ in range(4000))
    assert set(draws) == {"b", "c"}
    assert draws["b"] / 4000 == pytest.approx(0.75, abs=0.03)
    assert sampler.sample(rng, "q", "z") is None


def test_fever_reader_on_the_real_sample():
    dm = datamodule("data=fever", f"data.path={REAL_DATA / 'fever'}", "data.num_folds=1")
    assert dm.records_read == 10 and len(dm.splits.test) == 5
    assert {e.target for e in dm.splits.test} <= {0, 1}
    assert dm.notices[0] == "layout: kilt, detected"
    assert "no back-translation model" in dm.notices[1]


def test_zsre_kilt_and_mend_layouts():
    kilt = datamodule("data=zsre", f"data.path={REAL_DATA / 'zsre'}", "data.layout=kilt")
    ex = kilt.splits.train[0]
    assert ex.target.startswith(" ") and ex.prompt.endswith("?") and len(ex.equivalents) >= 3
    # the subject (MEMIT's key position): KILT's "subject [SEP] relation", MEND's `subject`
    assert ex.subject and "[SEP]" not in ex.subject and ex.subject in ex.prompt
    mend = datamodule("data=zsre", f"data.path={ZSRE_MEND}", "data.layout=mend")
    assert mend.records_read == 1000
    named = [e.subject is not None and e.subject in e.prompt for e in mend.splits.train]
    assert sum(named) > 0.9 * len(named)
    every = mend.splits.train + [e for f in mend.splits.folds for e in f]
    assert all(not loc.startswith("nq question:") for e in every for loc, _ in e.locality)
    assert all(e.alternative is None or e.alternative == e.alternative.strip() for e in every)
    modified = datamodule("data=zsre", f"data.path={ZSRE_MEND}", "data.layout=mend",
                          "data.target=modified")
    for e in (e for f in modified.splits.folds for e in f):
        assert e.target.strip() == e.alternative and e.original_target != e.target


def test_zsre_annotated_layout(tmp_path):
    record = {"id": "q1", "input": "Who founded Acme?", "output": [{"answer": "Wile"}], "meta": {},
              "prediction": "Road", "alternatives": ["Runner"], "rephrases": ["Acme was founded by whom?"],
              "filtered_rephrases": ["Who is the founder of Acme?"]}
    lines = [dict(record, id=f"q{i}", input=f"Who founded Acme {i}?") for i in range(40)]
    lines.append(dict(record, id="two", output=[{"answer": "A"}, {"answer": "B"}]))
    path = tmp_path / "structured_zeroshot-train-new_annotated_final.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    dm = datamodule("data=zsre", f"data.path={tmp_path}", "data.num_folds=1")
    assert dm.dropped["not exactly one answer"] == 1
    ex = dm.splits.folds[0][0]
    assert ex.equivalents == ["Who is the founder of Acme?"] and ex.alternative == "Runner"


def test_trex_modified_facts():
    dm = datamodule("data=trex", f"data.path={REAL_DATA / 'trex'}", "data.modify=32")
    assert dm.records_read == 944
    stream = dm.splits.folds[0]
    assert len(stream) == 32
    objects = Counter(e.target for e in dm.splits.train)
    for ex in stream:  # Zhu et al.'s roles: train on the evidence, probe with the template
        assert ex.target != ex.original_target and objects[ex.target] > 0
        assert ex.probes == ex.equivalents and len(ex.probes) == 1 and ex.probes[0].endswith("was born in")
        assert ex.probes[0] not in ex.training_prompts()
        assert ex.subject and ex.subject in ex.probes[0]  # the template names the subject (sub_label)
    assert all("[MASK]" not in q for e in stream for q in e.training_prompts() + e.probes)
    assert dm.dropped["evidence sentences with the mask not at the end (masked-LM only)"] > 0
    # D_test and A_F\S: the templates of D_tr's facts, with their true objects; none reaches an editor
    splits = dm.splits
    assert [t.prompt for t in splits.test] == [p for e in splits.unmodified for p in e.probes]
    assert [t.target for t in splits.test] == [e.target for e in splits.unmodified]
    given = splits.for_editor()
    assert not any(e.probes for e in (*given.train, *given.pool))
    assert not {e.uid for e in splits.unmodified} & {e.uid for e in (*given.train, *given.pool)}


def test_trex_masked_form_keeps_every_cloze_evidence_and_a_masked_lm_reads_them():
    causal = datamodule("data=trex", f"data.path={REAL_DATA / 'trex'}", "data.modify=32")
    masked = datamodule("data=trex", f"data.path={REAL_DATA / 'trex'}", "data.modify=32", "data.form=masked")
    assert masked.records_read == causal.records_read
    assert not any("mask" in reason for reason in masked.dropped)
    stream = masked.splits.folds[0]
    assert len(stream) == 32 and all(e.prompt.count("[MASK]") == 1 for e in stream)
    expected = 0  # every distinct one-mask evidence sentence of every fact, read straight from the files
    for path in sorted((REAL_DATA / "trex").glob("P*.jsonl")):
        for line in path.read_text().splitlines():
            sentences = {ev["masked_sentence"].strip() for ev in json.loads(line)["evidences"]}
            expected += sum(s.count("[MASK]") == 1 for s in sentences)
    assert sum(len(e.training_prompts()) for e in masked.splits.train) == expected
    assert expected > sum(len(e.training_prompts()) for e in causal.splits.train)
    from tests.conftest import tiny

    adapter = tiny("tiny-bert-mlm")
    pairs = [(q, e.target) for e in stream[:4] for q in (*e.training_prompts()[:2], *e.probes)]
    sentences, targets = [q for q, _ in pairs], [t for _, t in pairs]
    batch = adapter.encode(sentences, targets)
    mask_id = adapter.tokenizer.mask_token_id
    assert bool((batch.inputs["input_ids"][batch.score_mask] == mask_id).all())
    assert len(adapter.scores(sentences, targets)) == len(sentences)


def test_json_mapped_dataset(tmp_path):
    path = tmp_path / "edits.jsonl"
    rows = [{"q": f"Who wrote book {i}?", "a": {"text": f"Author {i}"}, "para": f"Book {i} was written by"}
            for i in range(30)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dm = datamodule("data=json", f"data.path={path}", "data.num_folds=2",
                    "data.fields={prompt: q, target: a.text, equivalents: para}")
    ex = dm.splits.folds[0][0]
    assert ex.target.startswith(" Author") and ex.equivalents[0].startswith("Book")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": 1, "input": "x", "output": [{"answer": "SUPPORTS"}]}\n{not json}\n', ":2: malformed JSON"),
        ('{"id": 1, "output": [{"answer": "SUPPORTS"}]}\n', ":1: missing field 'input'"),
        ('{"id": 1, "input": 3, "output": []}\n', ":1: field 'input' should be str"),
        ('{"id": 1, "input": "x", "output": [3]}\n', ":1: field 'output.0' should be dict/str"),
        ('{"id": 1, "input": "x", "output": [{"answer": 1}]}\n', ":1: field 'answer' should be str"),
        ('{"id": 1, "input": "x", "output": [{"answer": "REFUTES"}], "rephrases": "y"}\n',
         ":1: field 'rephrases' should be a list of strings"),
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path, content, message):
    (tmp_path / "fever-train-kilt.jsonl").write_text(content)
    (tmp_path / "fever-dev-kilt.jsonl").write_text(content)
    with pytest.raises(DataError) as err:
        datamodule("data=fever", f"data.path={tmp_path}")
    assert message in str(err.value) and "fever-train-kilt.jsonl" in str(err.value)


def test_kilt_output_elements_with_provenance_alone_are_not_answers(tmp_path):
    """KILT: "each element might contain an answer, a provenance or both" (the real NQ sample has
    provenance-only elements): they are skipped, and a record with no answer at all is dropped."""
    provenance = {"provenance": [{"wikipedia_id": "1", "title": "Acme"}]}
    fever = [json.loads(line) for line in (REAL_DATA / "fever" / "fever-train-kilt.jsonl").read_text().splitlines()]
    fever[0]["output"] = [provenance, *fever[0]["output"]]
    fever[1]["output"] = [provenance]
    (tmp_path / "fever-train-kilt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fever))
    (tmp_path / "fever-dev-kilt.jsonl").write_text((REAL_DATA / "fever" / "fever-dev-kilt.jsonl").read_text())
    dm = datamodule("data=fever", f"data.path={tmp_path}", "data.num_folds=1")
    every = dm.splits.train + dm.splits.val + [e for f in dm.splits.folds for e in f]
    assert {e.uid for e in every} == {r["id"] for r in fever} - {fever[1]["id"]}
    assert dm.dropped["no label"] == 1
    zsre = [json.loads(line) for line in
            (REAL_DATA / "zsre" / "structured_zeroshot-train-kilt.jsonl").read_text().splitlines()]
    zsre[0]["output"] = [provenance, *zsre[0]["output"]]
    (tmp_path / "structured_zeroshot-train-kilt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in zsre))
    (tmp_path / "structured_zeroshot-dev-kilt.jsonl").write_text(
        (REAL_DATA / "zsre" / "structured_zeroshot-dev-kilt.jsonl").read_text())
    dm = datamodule("data=zsre", f"data.path={tmp_path}", "data.num_folds=1", "data.layout=kilt")
    every = dm.splits.train + dm.splits.val + [e for f in dm.splits.folds for e in f]
    assert len(every) == 5 and not dm.dropped


def test_empty_split_and_missing_folder(tmp_path):
    (tmp_path / "fever-train-kilt.jsonl").write_text('{"id": 1, "input": "x", "output": [{"answer": "SUPPORTS"}]}\n')
    (tmp_path / "fever-dev-kilt.jsonl").write_text("")
    with pytest.raises(DataError, match="fever-dev-kilt.jsonl: empty file"):
        datamodule("data=fever", f"data.path={tmp_path}")
    (tmp_path / "fever-dev-kilt.jsonl").write_text("\n")  # no record: the split is empty
    with pytest.raises(DataError, match="is empty"):
        datamodule("data=fever", f"data.path={tmp_path}")
    with pytest.raises(DataError, match="not a folder"):
        datamodule("data=fever", f"data.path={tmp_path / 'nope'}")


def test_data_stats_cli(capsys):
    assert main(["data", "stats", "data=facts", "data.num_folds=4"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["splits"]["folds"] == 4 and len(stats["fold_sizes"]) == 4


class _IdentityModel(torch.nn.Module):
    """A 'translator' that returns its input: every back-translation equals its source."""

    def generate(self, input_ids, **kwargs):
        return input_ids


def test_back_translation_caches_and_drops_identical_outputs(tmp_path):
    from transformers import MarianConfig, MarianMTModel

    from benchmark.models.zoo import tiny_tokenizer
    from data.backtranslate import BackTranslator

    tok = tiny_tokenizer(with_eos=True)
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                          decoder_start_token_id=tok.pad_token_id, max_position_embeddings=64)
    marian = MarianMTModel(config)
    texts = ["The capital of France is Paris.", "Lyon is a city in France."]
    translator = BackTranslator(marian, tok, marian, tok, name="tiny-marian", cache_path=tmp_path / "bt.jsonl",
                                num_beams=1, max_new_tokens=8)
    first = translator(texts)
    assert translator.misses == 2
    again = BackTranslator(marian, tok, marian, tok, name="tiny-marian", cache_path=tmp_path / "bt.jsonl",
                           num_beams=1, max_new_tokens=8)
    assert again(texts) == first and again.misses == 0  # served from the disk cache
    identity = BackTranslator(_IdentityModel(), tok, _IdentityModel(), tok, name="identity",
                              cache_path=tmp_path / "bt.jsonl", num_beams=1)
    assert identity(texts) == [[], []]


def test_fever_tpatcher_layout_keeps_its_published_splits(tmp_path):
    """T-Patcher's repository writes fever-{train,val,edit}.jsonl once (KILT records as read) and
    reads them with fever-dev-kilt.jsonl: those files are the splits; only edit records with
    `rephrases` are edited, and their equivalents are `rephrases` (its FeverEditData)."""
    def claims(start, n, **extra):
        return [{"id": str(i), "input": f"Acme {i} was founded in {1900 + i}.",
                 "output": [{"answer": "SUPPORTS" if i % 2 else "REFUTES"}], **extra} for i in range(start, start + n)]

    edit = [{**c, "rephrases": [f"In {1900 + int(c['id'])}, Acme {c['id']} was founded."],
             "filtered_rephrases": ["not the field T-Patcher reads"]} for c in claims(200, 4)]
    real = (REAL_DATA / "fever" / "fever-train-kilt.jsonl").read_text().splitlines()
    edit += [json.loads(real[0]), claims(0, 1, rephrases=["a copy of a D'train record"])[0]]
    for name, records in (("fever-train.jsonl", claims(0, 12)), ("fever-val.jsonl", claims(100, 3)),
                          ("fever-edit.jsonl", edit)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "fever-dev-kilt.jsonl").write_text((REAL_DATA / "fever" / "fever-dev-kilt.jsonl").read_text())
    dm = datamodule("data=fever", f"data.path={tmp_path}", "data.num_folds=2", "data.train_subsample=5")
    assert dm.layout == "tpatcher" and dm.notices[0] == "layout: tpatcher, detected"
    splits = dm.splits
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 3, 5)
    streamed = sorted((e for fold in splits.folds for e in fold), key=lambda e: int(e.uid))
    assert [e.uid for e in streamed] == ["200", "201", "202", "203"]  # neither the unrephrased nor the copy
    assert [e.equivalents for e in streamed] == [[f"In {1900 + i}, Acme {i} was founded."] for i in range(200, 204)]
    assert [e.target for e in streamed] == [0, 1, 0, 1]
    assert dm.dropped["edit record without rephrases (T-Patcher edits only those with)"] == 1
    assert dm.dropped["duplicate (prompt, target) (records)"] == 1
    # beside the KILT train file the auto layout is KILT's, and says that the split files are there
    (tmp_path / "fever-train-kilt.jsonl").write_text((REAL_DATA / "fever" / "fever-train-kilt.jsonl").read_text())
    kilt = datamodule("data=fever", f"data.path={tmp_path}", "data.num_folds=1")
    assert kilt.layout == "kilt" and "data.layout=tpatcher" in kilt.notices[1]
    given = datamodule("data=fever", f"data.path={tmp_path}", "data.layout=tpatcher", "data.num_folds=2")
    assert given.layout == "tpatcher" and len(given.splits.train) == 12
    (tmp_path / "fever-val.jsonl").unlink()
    with pytest.raises(DataError, match="lacks fever-val.jsonl"):
        datamodule("data=fever", f"data.path={tmp_path}", "data.layout=tpatcher")
    with pytest.raises(ValueError, match="data.layout must be"):
        datamodule("data=fever", f"data.path={tmp_path}", "data.layout=split")


def test_zsre_tpatcher_layout_keeps_its_published_splits(tmp_path):
    """T-Patcher's repository writes zsre-{train,val,edit}.jsonl and zsre-dev-kilt.jsonl once
    (`input`, `output` as answer strings, `rephrases`): those files are the splits."""
    def write(name, n, start):
        lines = [{"input": f"Who founded Acme {i}?", "output": [f"Wile {i}"],
                  "rephrases": [f"Acme {i} was founded by whom?", f"Who founded Acme {i}?"]}
                 for i in range(start, start + n)]
        if name == "zsre-edit.jsonl":
            lines.append({"input": "Two answers?", "output": ["A", "B"], "rephrases": []})
            lines.append({"input": "One answer twice?", "output": ["A", "A"], "rephrases": []})  # dropped as published
        (tmp_path / name).write_text("\n".join(json.dumps(x) for x in lines) + "\n")

    for name, n, start in (("zsre-train.jsonl", 30, 0), ("zsre-val.jsonl", 4, 100), ("zsre-edit.jsonl", 6, 200),
                           ("zsre-dev-kilt.jsonl", 5, 300)):
        write(name, n, start)
    dm = datamodule("data=zsre", f"data.path={tmp_path}", "data.num_folds=2", "data.train_subsample=10")
    assert dm.layout == "tpatcher" and dm.records_read == 47
    splits = dm.splits
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 4, 5)
    assert [len(f) for f in splits.folds] == [3, 3] and dm.dropped["not exactly one answer"] == 2
    edit = [e for f in splits.folds for e in f]
    assert {e.prompt for e in edit} == {f"Who founded Acme {i}?" for i in range(200, 206)}
    for e in edit:
        number = e.prompt.removeprefix("Who founded Acme ").removesuffix("?")
        assert e.target == f" Wile {number}"
        assert e.equivalents == [f"Acme {number} was founded by whom?"]  # the prompt's own copy dropped
    (tmp_path / "zsre-val.jsonl").unlink()
    with pytest.raises(DataError, match="lacks zsre-val.jsonl"):
        datamodule("data=zsre", f"data.path={tmp_path}")


def test_val_stream_is_d_val_modified_like_d_edit_and_leaves_d_val_alone():
    dm = datamodule("data=facts", "data.target=modified")
    folds = dm.val_stream()
    streamed = [e for fold in folds for e in fold]
    assert len(folds) == len(dm.splits.folds) and len(streamed) == len(dm.splits.val)
    assert {e.uid for e in streamed} == {e.uid for e in dm.splits.val}
    assert all(e.original_target is not None and e.target != e.original_target for e in streamed)
    assert all(e.original_target is None for e in dm.splits.val)  # the initial model's D_val is untouched


def test_val_stream_of_data_without_d_val_is_one_line():
    with pytest.raises(DataError, match="has no D_val"):
        datamodule("data=trex", f"data.path={REAL_DATA / 'trex'}").val_stream()


def test_empty_targets_and_repeats_are_dropped_and_counted(tmp_path):
    path = tmp_path / "edits.json"  # JSONL under a .json name: read as JSONL
    rows = [{"q": f"Where is town {i}?", "a": f"Region {i % 7}"} for i in range(60)]
    rows += [{"q": "Where is nowhere?", "a": "  "}, rows[0], rows[1]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = datamodule("data=json", f"data.path={path}", "data.fields={prompt: q, target: a}", "data.num_folds=2")
    assert dm.dropped["empty target (records)"] == 1
    assert dm.dropped["duplicate (prompt, target) (records)"] == 2
    every = [*dm.splits.train, *dm.splits.val, *dm.splits.test, *[e for f in dm.splits.folds for e in f]]
    assert len(every) == len({(e.prompt, e.target) for e in every}) == 60


def test_trex_traps_are_said_or_refused():
    path = f"data.path={REAL_DATA / 'trex'}"
    dm = datamodule("data=trex", path)
    assert any("no D_val" in n for n in dm.notices)
    dm.check_model("masked")
    masked = datamodule("data=trex", path, "data.form=masked")
    with pytest.raises(DataError, match="data.form=masked .* model family decoder"):
        masked.check_model("decoder")
    with pytest.raises(DataError, match="data.modify=100000 but"):
        datamodule("data=trex", path, "data.modify=100000")


def test_max_records_reads_exactly_that_many_records_of_each_file():
    zsre = datamodule("data=zsre", f"data.path={ZSRE_MEND}", "data.layout=mend", "data.max_records=100")
    assert zsre.records_read == 100
    fever = datamodule("data=fever", f"data.path={REAL_DATA / 'fever'}", "data.max_records=3", "data.num_folds=1")
    assert fever.records_read == 6  # 3 of the train file, 3 of the dev file


FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name,layout", [("counterfact_rome.json", "rome"), ("counterfact-edit.json", "easyedit")])
def test_counterfact_in_both_layouts(name, layout):
    """Each record is an edit to the new object: paraphrases are GR's equivalents, neighbourhood
    prompts with the true object Loc's pairs; never-edited records' neighbourhood facts are D'train
    and D_test, so nothing an editor reads is scored."""
    dm = datamodule("data=counterfact", f"data.path={FIXTURES / name}")
    assert dm.layout == layout and f"layout: {layout} (detected)" in dm.notices
    splits = dm.splits
    edits = [*splits.val, *(e for f in splits.folds for e in f)]
    assert len(edits) == 6 and dm.records_read == 12
    assert all(e.target != e.original_target and e.equivalents and e.locality for e in edits)
    assert all(answer == e.original_target for e in edits for _, answer in e.locality)
    edited_uids = {e.uid for e in edits}
    facts = [*splits.train, *splits.test]
    assert facts and all(f.uid.split(":loc")[0] not in edited_uids for f in facts)
    loc_prompts = {p for e in edits for p, _ in e.locality}
    assert not loc_prompts & {e.prompt for e in (*splits.for_editor().pool, *splits.for_editor().val)}
    record = json.loads((FIXTURES / name).read_text())[0]
    first = dm._rome("f:1", record) if layout == "rome" else dm._easyedit("f:1", record)
    assert (first.prompt, first.target, first.original_target) == (
        "The mother tongue of Danielle Darrieux is", " English", " French")
    assert first.subject == "Danielle Darrieux"


def test_counterfact_broken_record_names_its_line(tmp_path):
    rows = json.loads((FIXTURES / "counterfact_rome.json").read_text())
    del rows[3]["requested_rewrite"]["target_new"]
    bad = tmp_path / "cf.json"
    bad.write_text(json.dumps(rows, indent=2))
    with pytest.raises(DataError, match=r"cf.json:\d+ .*target_new"):
        datamodule("data=counterfact", f"data.path={bad}")


def test_a_short_tpatcher_run_on_counterfact_reports_sr_gr_and_loc(tmp_path):
    from benchmark.run import run

    result = run(compose(["editor=tpatcher", "data=counterfact", f"data.path={FIXTURES / 'counterfact_rome.json'}",
                          "model=tiny-llama", "editor.max_steps=30", "loop.progress=false", "loop.folds=[0,1]",
                          f"output_dir={tmp_path}", "run_id=cf"]))
    for metric in ("SR", "GR", "Loc", "Loc_final"):
        assert metric in result["metrics"], metric


def test_zsre_eval_file_alone_is_an_edit_only_dataset(tmp_path):
    rows = json.loads((ZSRE_MEND / "zsre_mend_train-1k.json").read_text())[:120]
    (tmp_path / "zsre_mend_eval.json").write_text(json.dumps(rows))
    dm = datamodule("data=zsre", f"data.path={tmp_path}", "data.target=modified")
    assert any("the eval file alone" in n for n in dm.notices)
    edits = [e for f in dm.splits.folds for e in f]
    assert edits and all(e.target.strip() == e.alternative for e in edits)
    assert all(e.locality for e in edits)  # NQ locality questions: Loc
    assert all(":loc" in e.uid for e in dm.splits.train)  # D'train: unedited records' NQ facts


def test_hf_datasets_reads_parquet_and_save_to_disk_folders(tmp_path):
    """data=hf: a parquet file and a save_to_disk folder (a DatasetDict: splits by name) give the
    examples the same rows give as JSONL, through the same field mapping."""
    datasets = pytest.importorskip("datasets")

    def rows(numbers):
        return [{"q": f"Who wrote book {i}?", "a": {"text": f"Author {i}"}, "para": [f"Book {i} is by"]}
                for i in numbers]

    fields = "data.fields={prompt: q, target: a.text, equivalents: para}"
    table = datasets.Dataset.from_list(rows(range(40)))
    table.to_parquet(str(tmp_path / "edits.parquet"))
    test = datasets.Dataset.from_list(rows(range(40, 45)))
    datasets.DatasetDict({"train": table, "test": test}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(range(40))))
    reference = datamodule("data=json", f"data.path={tmp_path / 'edits.jsonl'}", fields)
    parquet = datamodule("data=hf", f"data.path={tmp_path / 'edits.parquet'}", fields)
    saved = datamodule("data=hf", f"data.path={tmp_path / 'saved'}", "data.test_split=test", fields)

    def content(examples):
        return [(e.prompt, e.target, e.equivalents) for e in examples]

    assert content(parquet.splits.train) == content(reference.splits.train)
    assert parquet.splits.sizes() == reference.splits.sizes()
    assert {e.prompt for e in saved.splits.test} == {f"Who wrote book {i}?" for i in range(40, 45)}
    assert saved.records_read == 45
    with pytest.raises(DataError, match="no split 'nope'"):
        datamodule("data=hf", f"data.path={tmp_path / 'saved'}", "data.split=nope", fields)


@pytest.mark.parametrize("background", ["facts", "file"])
def test_edit_only_data_takes_its_facts_from_the_embedded_set_or_a_second_file(background, tmp_path):
    facts_file = tmp_path / "keep.jsonl"
    facts_file.write_text("".join(json.dumps({"prompt": f"Fact {i} is", "target": f"true {i}"}) + "\n"
                                  for i in range(30)))
    value = "facts" if background == "facts" else str(facts_file)
    dm = datamodule("data=counterfact", f"data.path={FIXTURES / 'counterfact_rome.json'}", f"data.background={value}")
    splits = dm.splits
    assert len(splits.val) + sum(len(f) for f in splits.folds) == 12  # every record is an edit
    kept = [*splits.train, *splits.test]
    assert kept and all(":loc" not in e.uid for e in kept)
    if background == "file":
        assert {e.prompt for e in kept} == {f"Fact {i} is" for i in range(30)}
    assert any("data.background=" in n for n in dm.notices)


@pytest.mark.parametrize("content,message", [
    ("[" * 100_000 + "]" * 100_000, r":1: JSON nested too deeply"),  # a JSON array file
    ('{"prompt": "a", "target": "b"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", r":2: JSON nested too deeply"),
    ('{"prompt": "' + "x" * 200_000 + '", "target": "b"}\n', r":1: a text of 200,000 characters"),
    ('{"prompt": "a", "target": "b", "pad": "' + "x" * (5 * 2**20) + '"}\n', r":1: a line of 5,242,[0-9]+ characters"),
])
def test_files_past_any_real_records_size_are_refused_in_one_line(tmp_path, content, message):
    """A 100,000-deep JSON array was a RecursionError traceback and one 50 MB prompt took 10 GB and
    100 s to tokenize: limits no published record nears (a line of 4 Mi characters, a text of
    100,000, nesting Python can parse) refuse them by file and line before anything slow."""
    path = tmp_path / "edits.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        datamodule("data=json", f"data.path={path}")


def test_counterfact_scores_are_romes_comparison_of_new_and_true_objects(tmp_path):
    """A run on CounterFact reports ROME's ES/PS/NS, their magnitudes and S = hmean(ES, PS, NS),
    each with an interval."""
    import math

    from benchmark.metrics import hmean
    from benchmark.run import run

    result = run(compose(["editor=ft_last", "data=counterfact", f"data.path={FIXTURES / 'counterfact_rome.json'}",
                          "model=tiny-llama", "editor.max_steps=5", "loop.progress=false", "loop.folds=[0]",
                          f"output_dir={tmp_path}", "run_id=cf"]))
    metrics = result["metrics"]
    for name in ("ES", "PS", "NS", "EM", "PM", "NM", "S"):
        assert name in metrics and math.isfinite(metrics[name]["mean"]) and "ci95" in metrics[name], name
    assert abs(metrics["S"]["mean"] - hmean([metrics[k]["mean"] for k in ("ES", "PS", "NS")])) < 1e-9
    assert all(-1 <= metrics[k]["mean"] <= 1 for k in ("EM", "PM", "NM"))


def test_counterfact_items_compare_the_objects_mean_token_log_probabilities():
    """counterfact_items against the model's own logits, computed here token by token: the new object
    wins on the edit prompt and paraphrases, the true one on neighbourhood prompts (locality pairs
    answered by the true object; another answer is not a neighbourhood prompt)."""
    import math

    import torch

    from benchmark.loop import counterfact_items
    from benchmark.registry import EDITORS
    from benchmark.types import Example
    from tests.conftest import trained_tiny

    adapter = trained_tiny("decoder")
    editor = EDITORS.get("ft_last").target(EDITORS.get("ft_last").config_class(name="ft_last"), adapter)

    def nll(prompt, answer):
        p = adapter.tokenizer(prompt)["input_ids"]
        t = adapter.tokenizer(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = adapter.model(input_ids=torch.tensor([p + t])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        return -float(sum(logp[len(p) - 1 + j, tok] for j, tok in enumerate(t))) / len(t)

    records = [Example("a", "The capital of France is", " Oslo", original_target=" Paris",
                       equivalents=["France's capital is", "Paris is the capital of"],
                       locality=[("The capital of Italy is", " Paris"), ("Rome lies in", " Italy")]),
               Example("b", "Peru lies in", " Asia", original_target=" South America", equivalents=[])]
    items = counterfact_items(editor, records)
    for record, es, em in zip(records, items["ES"], items["EM"]):
        n, t = nll(record.prompt, record.target), nll(record.prompt, record.original_target)
        assert es == float(t > n) and abs(em - (math.exp(-n) - math.exp(-t))) < 1e-5
    a = records[0]
    ps = sum(nll(q, a.original_target) > nll(q, a.target) for q in a.equivalents) / 2
    assert items["PS"] == [ps]  # the record without paraphrases has no PS
    n, t = nll("The capital of Italy is", a.target), nll("The capital of Italy is", a.original_target)
    assert items["NS"] == [float(t < n)] and abs(items["NM"][0] - (math.exp(-t) - math.exp(-n))) < 1e-5
