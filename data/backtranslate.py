"""Equivalent inputs by back-translation: source -> pivot -> source with MarianMT (or any
seq2seq translation model), batched, cached on disk by (text, models).

Outputs identical to their source (after normalising case and spaces) are dropped: they are no
rephrasing. Where no translation model is available the datasets say so in one line and use the
equivalents their files provide; nothing is invented silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from benchmark.cache import cache_dir
from data.configs.base import BackTranslationConfig  # noqa: F401  (its config, torch-free)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


class BackTranslator:
    def __init__(self, forward, forward_tokenizer, backward, backward_tokenizer, name: str,
                 batch_size: int = 32, num_beams: int = 4, max_new_tokens: int = 64, cache_path: Path | None = None):
        self.models = [(forward.eval(), forward_tokenizer), (backward.eval(), backward_tokenizer)]
        self.name = name
        self.batch_size, self.num_beams, self.max_new_tokens = batch_size, num_beams, max_new_tokens
        self.cache_path = cache_path or cache_dir() / "backtranslation.jsonl"
        self.cache: dict[str, list[str]] = {}
        if self.cache_path.exists():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                self.cache[entry["key"]] = entry["out"]
        self.misses = 0

    @classmethod
    def from_config(cls, cfg: BackTranslationConfig) -> BackTranslator:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        loaded = [(AutoModelForSeq2SeqLM.from_pretrained(n), AutoTokenizer.from_pretrained(n))
                  for n in (cfg.forward, cfg.backward)]
        return cls(loaded[0][0], loaded[0][1], loaded[1][0], loaded[1][1], name=f"{cfg.forward}|{cfg.backward}",
                   batch_size=cfg.batch_size, num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens)

    def _key(self, text: str) -> str:
        return hashlib.sha1(f"{self.name}\n{self.num_beams}\n{text}".encode()).hexdigest()

    @torch.no_grad()
    def _translate(self, texts: list[str], model, tokenizer) -> list[str]:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = tokenizer(texts[i : i + self.batch_size], return_tensors="pt", padding=True, truncation=True)
            gen = model.generate(**enc, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens, do_sample=False)
            out += tokenizer.batch_decode(gen, skip_special_tokens=True)
        return out

    def __call__(self, texts: list[str]) -> list[list[str]]:
        """For each text, its back-translations that differ from it (zero or one)."""
        todo = sorted({t for t in texts if self._key(t) not in self.cache})
        if todo:
            self.misses += len(todo)
            pivot = self._translate(todo, *self.models[0])
            back = self._translate(pivot, *self.models[1])
            with open(self.cache_path, "a", encoding="utf-8") as handle:
                for text, result in zip(todo, back):
                    kept = [result.strip()] if result.strip() and _normalise(result) != _normalise(text) else []
                    self.cache[self._key(text)] = kept
                    handle.write(json.dumps({"key": self._key(text), "out": kept}) + "\n")
        return [list(self.cache[self._key(t)]) for t in texts]


def add_equivalents(examples: list, cfg: BackTranslationConfig, dataset: str) -> str:
    """Back-translate the prompts of examples that have no equivalents from their file.
    Returns the one line that says where the equivalents came from."""
    missing = [e for e in examples if not e.equivalents]
    if not missing:
        return f"{dataset}: equivalents from the file for all {len(examples)} records"
    if not cfg.enabled:
        return (f"{dataset}: no back-translation model set (data.back_translation.forward/backward); "
                f"{len(examples) - len(missing)} of {len(examples)} records have equivalents from the file")
    translator = BackTranslator.from_config(cfg)
    for example, found in zip(missing, translator([e.prompt for e in missing])):
        example.equivalents = found
    return f"{dataset}: back-translated {len(missing)} prompts with {translator.name} ({translator.misses} new)"
