"""seqedit's PRUNE restraint beside the published code, on a real summed update.

`python -m benchmark.published_prune --repo PATH` reads `func_log` and `func_logn` from a checkout
of mjy1111/PRUNE (easyeditor/editors/bi_editor_loadw.py, `bl`:56-68; the module itself imports
EasyEdit's whole evaluation stack, so only these run, from their source) and restrains with them as
`read_weights` does (bl:114-160: numpy's SVD of the summed update dW = W_n - W_0 and of W_0, the
rank numpy's `matrix_rank` counts, W_0's largest singular value as the threshold, dW rebuilt from
the rank's leading singular triplets). The update is a real one: seqedit's PRUNE makes three edits
on a tiny LLaMA, and its unrestrained sum is scaled so that its leading singular values pass W_0's
largest (on so small a model they stay below it, and nothing would be restrained). seqedit's
`restrained` runs on the same dW, for the published bases (e: `func_log`; 2, 1.5, 1.2: `func_logn`).
Prints one JSON line: per base, how many singular values were restrained and the largest
difference of the restrained dW relative to its largest entry.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from benchmark.published_code import define_from_source, tiny_check_main

SOURCE = "easyeditor/editors/bi_editor_loadw.py"
BASES = {"e": None, "2": 2.0, "1.5": 1.5, "1.2": 1.2}  # bl:141-149: Reduce "log", "log2", "log1_5", "log1_2"


def published_functions(repo: Path) -> dict:
    path = repo / SOURCE
    if not path.is_file():
        raise FileNotFoundError(f"--repo {repo}: no {SOURCE} (a checkout of mjy1111/PRUNE)")
    return define_from_source(path, ["func_log", "func_logn"], {"np": np, "math": math})


def published_restrained(functions: dict, w0: np.ndarray, delta: np.ndarray, base: float | None) -> tuple:
    """dW restrained as bl:114-160 do it, and how many singular values func_log(n) changed."""
    u, s, v = np.linalg.svd(delta, full_matrices=1, compute_uv=1)
    s0 = np.linalg.svd(w0, full_matrices=1, compute_uv=1)[1]
    rank = np.linalg.matrix_rank(delta)
    before = s.copy()
    s2 = functions["func_log"](s0, s) if base is None else functions["func_logn"](s0, s, base)
    changed = int((s2[:rank] != before[:rank]).sum())
    return np.dot(np.dot(u[:, :rank], np.diag(s2[:rank])), v[:rank]), changed


def compare(repo: Path, edits: int = 3) -> dict:
    import editors  # noqa: F401  (registers the editors)
    from benchmark.models import ModelConfig, build_model
    from benchmark.registry import EDITORS
    from benchmark.types import EditorData, Example
    from editors.prune import restrained

    functions = published_functions(repo)
    torch.manual_seed(0)
    adapter = build_model(ModelConfig(name="tiny-llama"))
    entry = EDITORS.get("prune")
    # one block of the two, C from the first 20,000 tokens of the Wikipedia sample (seconds)
    editor = entry.target(entry.config_class(name="prune", layers=[0], stats_tokens=20_000, context_templates=0,
                                             mom2_update_weight=10.0), adapter)
    pool = [Example(f"m{i}", f"{w} is known for", f" {w}") for i, w in enumerate(["Oslo", "Lima", "Hanoi", "Doha"])]
    editor.prepare(EditorData(task=adapter.task, train=pool, pool=pool, val=[]))
    requests = [Example("a", "The capital of France is", " Oslo", subject="France"),
                Example("b", "Peru lies in", " Asia", subject="Peru"),
                Example("c", "The Danube flows into the", " Baltic", subject="Danube")]
    for example in requests[:edits]:
        editor.edit(example)
    name = next(iter(editor.raw))
    w0 = editor._initial[name]  # float32, as the model keeps it and bl reads it
    summed = editor.raw[name] - w0
    s_max = editor.s_max[name]
    delta = summed * (3 * s_max / float(torch.linalg.matrix_norm(summed.double(), ord=2)))  # past W_0's largest
    lines = {}
    for label, base in BASES.items():
        theirs, changed = published_restrained(functions, w0.numpy(), delta.numpy().copy(), base)
        ours, shrunk = restrained(delta, s_max, math.e if base is None else base)
        theirs = torch.from_numpy(theirs).to(ours.dtype)
        lines[label] = {"published_restrained": changed, "seqedit_restrained": shrunk,
                        "max_relative_diff": float((ours - theirs).abs().max() / theirs.abs().max())}
    return {"model": "tiny-llama", "weight": name, "edits": edits, "rank": int(torch.linalg.matrix_rank(delta)),
            "bases": lines}


def main(argv=None) -> None:
    tiny_check_main(argv, "benchmark.published_prune", __doc__.split("\n")[0], "a checkout of mjy1111/PRUNE", compare)


if __name__ == "__main__":
    main()
