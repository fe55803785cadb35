"""General text for the statistics of locate-then-edit editors: the keys' second moment
C = E[k k^T] that ROME, MEMIT, AlphaEdit and their kin preserve. The published code estimates it
on Wikipedia (rome/layer_stats.py: `load_dataset("wikipedia", "20200501.en")`, 100,000 texts, every
token of each text up to the model's context). Sources, by `editor.stats_source`:

* `wikipedia_sample` (the default, offline): the English Wikipedia dump excerpt that the `gensim`
  package ships as test data (106 articles after redirects are dropped, about 0.66 M SmolLM2 tokens),
  checked by SHA-256 and turned into text as the Hugging Face `wikipedia` builder that made
  20200501.en does (huggingface/datasets, datasets/wikipedia/wikipedia.py, `_extract_content` and
  `_parse_and_clean_wikicode`: main namespace, no redirects, mwparserfromhell with file links,
  reference lists, `<ref>` and `<table>` removed, sections' `strip_code()` joined by blank lines).
* `hf:NAME[:CONFIG]`: any corpus with a `text` column through `datasets`, streamed, with no dataset
  script run (`wikipedia` is short for `hf:wikimedia/wikipedia:20231101.en`, the same builder's
  current parquet; the published 20200501.en is made by a script, which seqedit does not run).
* a MediaWiki dump (`*.xml`, `*.xml.bz2`), read as the sample; or a text file, one text a line.
* `memory`: the run's own memory pool and D'train (a deviation: the benchmark's facts, not text).

On the bottom floor and free of torch: the editors pass their tokenizer and count the keys."""

from __future__ import annotations

import bz2
import hashlib
import importlib.metadata
import importlib.util
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from benchmark.cache import cache_dir, file_sha256, pin, pin_mismatch

SAMPLE_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SAMPLE_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
WIKIPEDIA_HUB = "hf:wikimedia/wikipedia:20231101.en"
PUBLISHED = "100,000 Wikipedia texts, each up to the model's context (rome/layer_stats.py)"
NAMED = ("wikipedia_sample", "wikipedia", "memory")

# the builder's filters (wikipedia.py `_parse_and_clean_wikicode`)
_MEDIA_LINK = re.compile("^(?:File|Image|Media):", flags=re.IGNORECASE | re.UNICODE)
_NOTE_LISTS = {"reflist", "notelist", "notelist-ua", "notelist-lr", "notelist-ur", "notelist-lg"}


class CorpusError(ValueError):
    """A corpus that cannot be read, in one line naming it and what to do."""


@dataclass(frozen=True)
class TextCorpus:
    """Where C's texts come from. `identity` decides the texts (a checksum, a dataset name), so a
    cache keyed by it is found again without reading them; `texts()` yields them in reading order."""

    name: str
    identity: str
    texts: Callable[[], Iterator[str]]
    deviation: str | None = None


def check_source(source: str) -> None:
    """Refuse a source that cannot serve, before anything slow runs (a config's check: cheap)."""
    if source == "wikipedia_sample":
        for module in ("gensim", "mwparserfromhell"):
            if importlib.util.find_spec(module) is None:
                raise CorpusError(f"editor.stats_source=wikipedia_sample needs the {module} package (the sample is "
                                  "gensim's): pip install -e '.[corpus]', or editor.stats_source=memory or a text file")
    elif source.startswith("hf:") or source == "wikipedia":
        if importlib.util.find_spec("datasets") is None:
            raise CorpusError(f"editor.stats_source={source} reads through datasets: pip install -e '.[hf]'")
    elif source != "memory" and not Path(source).is_file():
        raise CorpusError(f"editor.stats_source={source}: no such file (or {', '.join(NAMED)}, hf:NAME[:CONFIG])")


def resolve(source: str, memory_texts: Iterable[str] = ()) -> TextCorpus:
    check_source(source)
    if source == "wikipedia_sample":
        path = sample_path()
        return TextCorpus("wikipedia_sample", f"mediawiki:{SAMPLE_SHA256}", lambda: shuffled(dump_texts(path)))
    if source == "wikipedia" or source.startswith("hf:"):
        name = WIKIPEDIA_HUB if source == "wikipedia" else source
        return TextCorpus(name, name, lambda: hub_texts(name))
    if source == "memory":
        texts = list(dict.fromkeys(t for t in memory_texts if t))
        digest = hashlib.sha1("\n".join(texts).encode()).hexdigest()
        return TextCorpus("memory", f"memory:{digest}", lambda: iter(texts),
                          deviation="the run's memory pool and D'train, not general text")
    path = Path(source)
    if path.name.endswith((".xml", ".xml.bz2")):
        return TextCorpus(str(path), f"mediawiki:{file_sha256(path)}", lambda: shuffled(dump_texts(path)))
    return TextCorpus(str(path), f"lines:{file_sha256(path)}", lambda: _lines(path))


def sample_path() -> Path:
    """The sample inside the installed gensim package (found without importing gensim), checked."""
    try:
        files = importlib.metadata.files("gensim") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [f for f in files if f.name == SAMPLE_FILE]
    if not found:
        raise CorpusError(f"the installed gensim package holds no {SAMPLE_FILE}: pip install 'gensim>=4.3,<5' "
                          "(or editor.stats_source=memory or a text file)")
    path = Path(found[0].locate())
    if file_sha256(path) != SAMPLE_SHA256:
        raise CorpusError(f"{path}: not the Wikipedia sample seqedit reads (SHA-256 differs); reinstall gensim")
    return path


def shuffled(texts: Iterable[str], seed: int = 1) -> Iterator[str]:
    """The texts in a seeded random order (the published tally's random_sample=1), so a token
    budget smaller than the corpus reads many articles, not the alphabet's first."""
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    return iter(texts)


@lru_cache(maxsize=2)
def _dump(path: Path, digest: str) -> tuple[str, ...]:
    """The cleaned articles, kept in the cache as JSON beside their checksum (cleaning the sample
    takes seconds; reading it back, milliseconds)."""
    cached = cache_dir() / "corpus" / f"mediawiki-{digest}.json"
    if cached.exists() and not pin_mismatch(cached):
        try:
            texts = json.loads(cached.read_text(encoding="utf-8"))
            if isinstance(texts, list) and all(isinstance(t, str) for t in texts):
                return tuple(texts)
        except (OSError, ValueError):  # damaged: cleaned again below
            pass
    from benchmark.records import write_atomically  # imports torch; a config reads this module torch-free

    texts = tuple(text for text in (clean_wikicode(raw) for raw in _dump_pages(path)) if text)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(cached, lambda tmp: tmp.write_text(json.dumps(texts), encoding="utf-8"))
        pin(cached)
    except OSError:  # a full or read-only cache: cleaned again next time
        pass
    return texts


def dump_texts(path: Path) -> Iterator[str]:
    """The cleaned text of every article of a MediaWiki XML dump, empty ones dropped."""
    return iter(_dump(path, file_sha256(path)))


def _dump_pages(path: Path) -> Iterator[str]:
    """Main-namespace, non-redirect pages' wikitext (wikipedia.py `_extract_content`)."""
    import xml.etree.ElementTree as ET

    opener = bz2.open if path.name.endswith(".bz2") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for _, elem in ET.iterparse(f, events=("end",)):
            if not elem.tag.endswith("page"):
                continue
            ns = elem.tag[:-4]
            space, raw = elem.findtext(f"./{ns}ns"), elem.findtext(f"./{ns}revision/{ns}text")
            elem.clear()
            if space == "0" and raw is not None and not raw.lower().startswith("#redirect"):
                yield raw


def clean_wikicode(raw: str) -> str:
    """Plain text of one article (wikipedia.py `_parse_and_clean_wikicode`): per section, lead and
    headings included, file links, note-list templates, references and tables removed, the rest's
    markup stripped; sections joined by a blank line."""
    import mwparserfromhell

    sections = []
    for section in mwparserfromhell.parse(raw).get_sections(flat=True, include_lead=True, include_headings=True):
        doomed = [*section.ifilter_wikilinks(matches=lambda o: bool(_MEDIA_LINK.match(str(o.title))), recursive=True),
                  *section.ifilter_templates(matches=lambda o: o.name.lower() in _NOTE_LISTS, recursive=True),
                  *section.ifilter_tags(matches=lambda o: str(o.tag) in {"ref", "table"}, recursive=True)]
        for node in doomed:
            try:
                section.remove(node)
            except ValueError:  # already gone with an enclosing node (the builder ignores these too)
                pass
        sections.append(section.strip_code().strip())
    return "\n\n".join(sections)


def hub_texts(name: str) -> Iterator[str]:
    """`text` of a corpus read through `datasets`, streamed (no 20 GB download for 100,000 texts)."""
    from datasets import load_dataset

    _, _, rest = name.partition(":")
    path, _, config = rest.partition(":")
    try:
        # no dataset script runs: a corpus is data (parquet, JSON lines, text), never code
        stream = load_dataset(path, config or None, split="train", streaming=True, trust_remote_code=False)
        stream = stream.shuffle(seed=1, buffer_size=10_000)
        for row in stream:
            yield row["text"]
    except Exception as err:  # offline, no such corpus, no text column: one line with the way out
        raise CorpusError(f"editor.stats_source={name}: could not read it through datasets ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); offline, editor.stats_source="
                          "wikipedia_sample reads the shipped Wikipedia sample") from None


def _lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line.strip()


def token_pieces(texts: Iterator[str], encode: Callable[[str], list[int]], *, max_len: int, max_texts: int,
                 max_tokens: int, start: list[int]) -> tuple[list[list[int]], int]:
    """The token ids C is counted over, and how many texts they came from: each text encoded as
    the published TokenizedDataset does, then cut into pieces of at most `max_len` tokens (each
    later piece opened by `start`, the tokenizer's own opening tokens, as a text's first is), until
    `max_texts` texts or `max_tokens` tokens (0: no limit) are read."""
    pieces, tokens, read = [], 0, 0
    for text in texts:
        if read >= max_texts or (max_tokens and tokens >= max_tokens):
            break
        ids, read = encode(text), read + 1
        body = ids[len(start):] if start and ids[: len(start)] == start else ids
        step = max_len - len(start)
        for at in range(0, len(body), step):
            piece = start + body[at: at + step]
            if max_tokens and tokens + len(piece) > max_tokens:
                piece = piece[: max_tokens - tokens]
            if len(piece) > len(start):
                pieces.append(piece)
                tokens += len(piece)
            if max_tokens and tokens >= max_tokens:
                break
    return pieces, read


def corpus_key(corpus: TextCorpus, **settings) -> str:
    """What decides C's texts and tokens, as one string for a cache key."""
    return json.dumps({"corpus": corpus.identity, **settings}, sort_keys=True)
