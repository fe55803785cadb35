"""`python -m benchmark.perf eval`: the loop's scoring of zsRE's D_test and fold 0 (the zsRE
experiment's data, full forwards) with its batches cut in order of real positions (the adapter's
`by_length`) and in order of characters (the rule before it), in turns.

    python -m benchmark.perf eval [--model smollm2-135m] [--edits 3] [--threads 1]

One JSON line per order: the seconds of each pass (`--edits` passes each), the padded positions
its batches run, and whether the scores are the ones the other order gives (they must be: an
example's outputs do not depend on its batch).
"""

from __future__ import annotations

import time

import torch


def by_characters(prompts: list[str], targets: list) -> list[int]:
    """The order before: prompt and target length in characters."""
    return sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(str(targets[i])))


def time_orders(model: str | None, passes: int) -> list[dict]:
    from benchmark.build import build_data
    from benchmark.config import compose, instantiate
    from benchmark.models import build_model

    cfg = instantiate(compose(["experiment=zsre_seq", "loop.progress=false"] + ([f"model={model}"] if model else [])))
    adapter = build_model(cfg.model)
    splits = build_data(cfg).splits
    examples = [*splits.test, *splits.folds[0]]
    prompts, targets = [e.prompt for e in examples], [e.target for e in examples]
    lengths = adapter.encode(prompts, targets).lengths().tolist()
    step = adapter.config.eval_batch_size
    orders = {"positions": adapter.by_length, "characters": by_characters}
    seconds: dict[str, list[float]] = {name: [] for name in orders}
    scores: dict[str, list[float]] = {}
    for _ in range(passes):
        for name, order in orders.items():
            adapter.by_length = order  # this instance only
            start = time.perf_counter()
            scores[name] = adapter.scores(prompts, targets)
            seconds[name].append(round(time.perf_counter() - start, 2))
    out = []
    for name, order in orders.items():
        rows = order(prompts, targets)
        padded = sum(max(lengths[i] for i in rows[j : j + step]) * len(rows[j : j + step])
                     for j in range(0, len(rows), step))
        out.append({"order": name, "model": cfg.model.name, "examples": len(prompts), "eval_batch_size": step,
                    "real_positions": sum(lengths), "padded_positions": padded, "seconds": seconds[name],
                    "same_scores": scores[name] == scores["positions"], "threads": torch.get_num_threads()})
    return out
