"""Modified objects for knowledge-modification experiments (Zhu et al. 2020, App. A): replace a
fact's object with another object *of the same relation*, drawn with probability proportional
to its frequency in the training set, and never the original object."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace

from benchmark.types import Example

NO_OBJECT = "no modified object (no other object of its relation)"


def modified(examples: Iterable[Example], new_object: Callable[[Example], str | None],
             dropped: Counter) -> list[Example]:
    """Each example teaching its new object (`new_object(example)`, with the answer's leading
    space) in place of the old one, kept as `original_target`; an example without another object
    is dropped and counted in `dropped`. The examples themselves are not changed."""
    kept = []
    for example in examples:
        new = new_object(example)
        if not new or new == example.target.strip():
            dropped[NO_OBJECT] += 1
            continue
        kept.append(replace(example, original_target=example.target, target=" " + new))
    return kept


class ObjectSampler:
    def __init__(self, facts: Iterable[tuple[str, str]]):
        """facts: (relation, object) pairs of the training set."""
        self.counts: dict[str, Counter] = {}
        for relation, obj in facts:
            self.counts.setdefault(relation, Counter())[obj] += 1

    def sample(self, rng: random.Random, relation: str, original: str) -> str | None:
        """A frequency-weighted object of `relation` other than `original`; None if there is none."""
        counts = self.counts.get(relation, Counter())
        choices = [(o, c) for o, c in sorted(counts.items()) if o != original]
        if not choices:
            return None
        objects, weights = zip(*choices)
        return rng.choices(objects, weights=weights, k=1)[0]
