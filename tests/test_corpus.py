"""The general text C = E[k k^T] is counted over: the Wikipedia sample read as the Hugging Face
builder reads a dump, a user's dump or text file, a datasets corpus, and the pieces cut from them."""

import bz2
import json

import pytest

from benchmark import corpus
from benchmark.corpus import CorpusError, clean_wikicode, resolve, token_pieces

PAGE = """<page><title>{title}</title><ns>{ns}</ns><id>{id}</id><revision><text>{text}</text></revision></page>"""
ARTICLE = """'''Quito''' is the [[capital city|capital]] of [[Ecuador]].<ref>A source, 2001.</ref>
[[File:Quito.jpg|thumb|The old town]]

== History ==
It was founded in 1534.{{Citation needed}}
{| class="wikitable"
| a table cell
|}

== References ==
{{Reflist}}
[[Category:Capitals in South America]]"""


def _dump(path, pages):
    body = "".join(PAGE.format(title=t, ns=ns, id=i, text=text.replace("&", "&amp;").replace("<", "&lt;"))
                   for i, (t, ns, text) in enumerate(pages))
    xml = f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">{body}</mediawiki>'
    path.write_bytes(bz2.compress(xml.encode()))
    return path


def test_wikitext_is_cleaned_as_the_wikipedia_builder_cleans_it():
    """Link text kept, references, tables, file links and the reference list gone, headings kept,
    sections joined by a blank line (wikipedia.py `_parse_and_clean_wikicode`)."""
    text = clean_wikicode(ARTICLE)
    assert text.startswith("Quito is the capital of Ecuador.")
    for gone in ("A source", "old town", "table cell", "Reflist", "[[", "{{", "'''"):
        assert gone not in text
    assert "\n\nHistory \nIt was founded in 1534." in text and "\n\nReferences" in text  # as strip_code leaves it


def test_a_dump_gives_main_namespace_articles_without_redirects(tmp_path):
    path = _dump(tmp_path / "wiki.xml.bz2", [("Quito", "0", ARTICLE), ("Talk:Quito", "1", "a talk page"),
                                              ("Quitó", "0", "#REDIRECT [[Quito]]"), ("Lima", "0", "'''Lima''' is.")])
    texts = list(resolve(str(path)).texts())
    assert sorted(t.split(" ")[0] for t in texts) == ["Lima", "Quito"]  # shuffled, both there


def test_the_shipped_sample_is_checked_and_read_whole():
    """gensim's excerpt of the English Wikipedia: 106 articles after redirects, each real text."""
    pytest.importorskip("mwparserfromhell")
    source = resolve("wikipedia_sample")
    texts = list(source.texts())
    assert len(texts) == 106 and source.identity == f"mediawiki:{corpus.SAMPLE_SHA256}"
    assert any(t.startswith("Autism is a neurodevelopmental disorder") for t in texts)
    assert list(source.texts()) == texts  # one seeded order
    assert sum(map(len, texts)) > 2_500_000


def test_a_changed_sample_is_refused(tmp_path, monkeypatch):
    fake = _dump(tmp_path / corpus.SAMPLE_FILE, [("Lima", "0", "'''Lima''' is.")])

    class File:
        name = corpus.SAMPLE_FILE

        def locate(self):
            return fake

    monkeypatch.setattr(corpus.importlib.metadata, "files", lambda _name: [File()])
    with pytest.raises(CorpusError, match="SHA-256 differs"):
        corpus.sample_path()


def test_pieces_keep_their_budget_and_open_as_a_text_opens():
    encode = lambda text: [1] + [int(w) for w in text.split()]  # noqa: E731 (a tokenizer adding token 1 first)
    texts = [" ".join(str(i) for i in range(10, 30)), "5 6 7"]
    pieces, read = token_pieces(iter(texts), encode, max_len=8, max_texts=10, max_tokens=0, start=[1])
    assert read == 2 and all(len(p) <= 8 and p[0] == 1 for p in pieces)
    assert [t for p in pieces[:3] for t in p[1:]] == list(range(10, 30)) and pieces[-1] == [1, 5, 6, 7]
    pieces, _ = token_pieces(iter(texts), encode, max_len=8, max_texts=10, max_tokens=12, start=[1])
    assert sum(map(len, pieces)) == 12
    _, read = token_pieces(iter(texts), encode, max_len=8, max_texts=1, max_tokens=0, start=[1])
    assert read == 1


def test_a_text_file_and_the_pool_are_sources_too(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("one text\n\nanother text\n")
    assert list(resolve(str(path)).texts()) == ["one text", "another text"]
    pool = resolve("memory", ["a fact", "a fact", "b fact"])
    assert list(pool.texts()) == ["a fact", "b fact"] and "memory pool" in pool.deviation
    with pytest.raises(CorpusError, match="no such file"):
        resolve(str(tmp_path / "absent.txt"))


def test_a_datasets_corpus_is_streamed_and_offline_is_named(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(5)))
    assert sorted(resolve(f"hf:{folder}").texts()) == [f"text {i}" for i in range(5)]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusError, match="wikipedia_sample reads the shipped Wikipedia sample") as err:
        list(resolve("hf:no-such-owner/no-such-corpus").texts())
    assert "\n" not in str(err.value)


def test_the_comparison_script_measures_two_sources_side_by_side(tmp_path, monkeypatch):
    """`python -m benchmark.second_moments`: one line per source and block, the first source's C
    at distance 0 from itself, the pool's away from it, AlphaEdit's null space counted."""
    from benchmark.second_moments import measure

    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path))
    rows = measure(["model=tiny-llama", "data=facts", "data.task=qa", "editor=alphaedit", "editor.layers=[0]",
                    "editor.stats_tokens=5000", "init.epochs=0"], ["wikipedia_sample", "memory"])
    assert [(r["source"], r["block"]) for r in rows] == [("wikipedia_sample", 0), ("memory", 0)]
    assert rows[0]["relative_frobenius_to_first"] == 0 and rows[1]["relative_frobenius_to_first"] > 0
    assert rows[0]["tokens"] == 5000 and 0 <= rows[1]["null_space_dim"] <= rows[1]["dim"]
    assert rows[0]["smallest_eigenvalue"] <= rows[0]["largest_eigenvalue"]
