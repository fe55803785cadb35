"""`python -m benchmark.perf kl`: one pass of FT+KL's KL term (editors/ft.py) over its pool sample
in chunks of `editor.kl_chunk`, on the zsRE experiment's pool.

    python -m benchmark.perf kl --chunk 16 [--only ft_kl_all] [--model smollm2-135m] [--threads 1]

The pass an edit's step makes: the pre-edit model's outputs on the sampled pool examples (the
references, once an edit), then each chunk's forward and backward on its share of the KL. The
chunks give the same gradient (tests/test_ft_recipes.py); what they change is the memory one
chunk's graph holds and the time. One JSON line: the seconds of each part and the process's peak
resident memory, which is why each chunk size runs in a process of its own.
"""

from __future__ import annotations

import random
import resource
import time

import torch


def time_kl(name: str, chunk: int, model: str | None) -> dict:
    from benchmark.build import build_data, build_editor
    from benchmark.config import compose, instantiate
    from benchmark.models import build_model

    overrides = ["experiment=zsre_seq", f"editor={name}", f"editor.kl_chunk={chunk}", "loop.progress=false"]
    cfg = instantiate(compose(overrides + ([f"model={model}"] if model else [])))
    if cfg.editor.kl_weight <= 0:
        raise SystemExit(f"benchmark.perf kl: editor {name} has no KL term (editor.kl_weight 0)")
    adapter = build_model(cfg.model)
    editor = build_editor(cfg, adapter)
    editor.prepare(build_data(cfg).splits.for_editor())
    params = list(editor.trainable_parameters().values())
    random.seed(0)
    start = time.perf_counter()
    chunks = editor._kl_chunks(params)
    references = time.perf_counter() - start
    start = time.perf_counter()
    with torch.enable_grad():
        for term in editor._kl_terms(chunks):  # the terms an edit's step backwards
            term.backward()
    passed = time.perf_counter() - start
    return {"editor": name, "model": cfg.model.name, "kl_chunk": chunk, "kl_batch": cfg.editor.kl_batch,
            "chunks": len(chunks), "outputs": sum(len(reference) for reference, _ in chunks),
            "references_s": round(references, 2),
            "forward_backward_s": round(passed, 2), "threads": torch.get_num_threads(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
