"""`python -m benchmark.perf vstar`: the locate-then-edit editors' v* paths side by side.

    python -m benchmark.perf vstar [--only rome,memit] [--edits 3] [--model smollm2-135m] [--threads 1]

Each editor edits the same zsRE requests in turn (the first of the zsRE experiment's fold 0 whose
prompt holds the subject, as `benchmark.published_code` picks them) once per `editor.mode`, on a
fresh copy of the model each time: `fast` (v*'s blocks replayed from their recorded input, bit for
bit the full forward) and `kv` (the same blocks rerun only from each text's subject on, over the
earlier positions' kept keys and values). One JSON line per editor: seconds per edit of each mode,
their ratio (medians), v*'s steps, the largest difference of the updates after each edit relative
to the update's largest entry, and the share of the batch's positions `kv` reruns.
"""

from __future__ import annotations

import json
import statistics
import time

import torch


def _edits(name: str, mode: str, count: int, model: str | None) -> dict:
    from benchmark.build import build_data, build_editor
    from benchmark.config import compose, instantiate
    from benchmark.models import build_model

    overrides = ["experiment=zsre_seq", f"editor={name}", f"editor.mode={mode}", "loop.progress=false"]
    cfg = instantiate(compose(overrides + ([f"model={model}"] if model else [])))
    adapter = build_model(cfg.model)
    splits = build_data(cfg).splits
    editor = build_editor(cfg, adapter)
    editor.prepare(splits.for_editor())
    chosen = [e for e in splits.folds[0] if e.subject and e.subject in e.prompt][:count]
    weights = list(editor.trainable_parameters().values())
    initial = [w.detach().clone() for w in weights]
    seconds, steps, updates, rerun = [], [], [], []
    for example in chosen:
        texts, positions, _ = editor._requests(example)
        batch = adapter.encode(texts, [example.target] * len(texts))
        rerun.append(1 - sum(positions) / int(batch.valid_mask.sum()))
        began = time.perf_counter()
        steps.append(editor.edit(example).steps)
        seconds.append(time.perf_counter() - began)
        updates.append([w.detach() - w0 for w, w0 in zip(weights, initial)])
    return {"seconds": seconds, "steps": steps, "updates": updates, "rerun_share": rerun}


def time_vstar(names: list[str], edits: int, model: str | None) -> None:
    for name in names:
        fast, kv = (_edits(name, mode, edits, model) for mode in ("fast", "kv"))
        difference = [max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(x, y))
                      for x, y in zip(kv["updates"], fast["updates"])]
        median = {m: statistics.median(r["seconds"]) for m, r in (("fast", fast), ("kv", kv))}
        print(json.dumps({
            "benchmark": "vstar", "editor": name, "model": model or "smollm2-135m", "edits": len(difference),
            "threads": torch.get_num_threads(), "fast_seconds": [round(s, 2) for s in fast["seconds"]],
            "kv_seconds": [round(s, 2) for s in kv["seconds"]],
            "fast_over_kv": round(median["fast"] / median["kv"], 2), "fast_steps": fast["steps"],
            "kv_steps": kv["steps"], "update_difference_relative": [float(f"{d:.2g}") for d in difference],
            "kv_rerun_position_share": round(statistics.mean(kv["rerun_share"]), 3)}), flush=True)
