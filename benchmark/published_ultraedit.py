"""seqedit's UltraEdit beside the published code, turn by turn on one model.

`python -m benchmark.published_ultraedit --repo PATH` runs the published functions of a checkout
of XiaojieGu/UltraEdit as they are written, read from their source: `ULTRAEDIT.cache` (the keys and
output gradients of every edited module, `Tracer`/`TracerDict` and `cross_entropy` of util.py,
saved per chunk, and the lifelong normaliser's update, `RunningMeanStd` of nets.py) and
`ULTRAEDIT.predict_param_shifts` (the normalised values and the ridge solve, rows through in padded
batches). They are given a tiny LLaMA, seqedit's edited modules and each turn's chunks as the
published data gives them (labels aligned with the positions that predict them, -100 elsewhere).
For three turns of four edits, in chunks of two, each module's keys and gradients, the normaliser
and the update dW^T are compared with seqedit's; seqedit's `edit_batch` makes each turn, as in a
run, so the next turn starts from the same model on both sides. Prints one JSON line: the largest
differences relative to each quantity's largest entry. Only those functions run (ultraedit.py and
util.py import wandb, nltk and the training stack); nothing of the published code is kept here.
"""

from __future__ import annotations

import importlib.util
import math
import tempfile
import types
from pathlib import Path

import torch

from benchmark.published_code import define_from_source, tiny_check_main

FUNCTIONS = {"editor/ultraedit.py": ("pad_tensor", "ULTRAEDIT.cache", "ULTRAEDIT.predict_param_shifts"),
             "util.py": ("get_module", "get_shape", "cross_entropy", "Tracer", "TracerDict")}


def published_functions(repo: Path) -> dict:
    """The named top-level functions, classes and methods of the checkout's files, defined from their
    source in one scope (its imports replaced by what they name), with nets.py's RunningMeanStd."""
    from torch import nn
    from torch.nn import functional as F
    from transformers.pytorch_utils import Conv1D

    scope: dict = {"torch": torch, "nn": nn, "F": F, "math": math, "os": __import__("os"), "Conv1D": Conv1D,
                   "Dict": dict, "List": list, "Tuple": tuple, "Union": types.UnionType, "DictConfig": dict}
    for file, names in FUNCTIONS.items():
        if not (repo / file).is_file():
            raise FileNotFoundError(f"--repo {repo}: no {file} (a checkout of XiaojieGu/UltraEdit)")
        define_from_source(repo / file, list(names), scope)
    spec = importlib.util.spec_from_file_location("published_nets", repo / "nets.py")
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    scope["RunningMeanStd"] = nets.RunningMeanStd
    return scope


def _tuples(adapter, examples) -> dict:
    """One chunk as the published data gives it: labels at the positions that predict them."""
    batch = adapter.encode([e.prompt for e in examples], [e.target for e in examples])
    labels = torch.full_like(batch.inputs["input_ids"], -100)
    labels[batch.score_mask] = batch.targets
    return {**batch.inputs, "labels": labels}


def _relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))


def compare(repo: Path, token: str = "ans", turns: int = 3, per_turn: int = 4, chunk: int = 2, pad: int = 8) -> dict:
    import editors  # noqa: F401  (registers the editors)
    from benchmark.models import ModelConfig, build_model
    from benchmark.registry import EDITORS
    from benchmark.types import Example

    published = published_functions(repo)
    torch.manual_seed(0)
    adapter = build_model(ModelConfig(name="tiny-llama"))
    last = len(adapter.layer_modules()) - 1
    entry = EDITORS.get("ultraedit")
    editor = entry.target(entry.config_class(name="ultraedit", in_layers=[0, last], up_layers=[last],
                                             lr=1e-2, chunk_size=chunk, token=token), adapter)
    editor.prepare(types.SimpleNamespace(train=[], pool=[], val=[]))
    names = {id(m): n for n, m in adapter.model.named_modules()}
    modules = [names[id(m)] for m in editor.layers]
    cache_dir = tempfile.mkdtemp(prefix="published_ultraedit_")
    config = types.SimpleNamespace(
        model=types.SimpleNamespace(edit_modules=modules, name="tiny"), editor_device="cpu", num_seq=0,
        dataset=types.SimpleNamespace(name="facts", n_edits=per_turn, batch_size=chunk),
        editor=types.SimpleNamespace(name="ultraedit", cache_dir=cache_dir, lr=editor.config.lr, batch_size=pad,
                                     token=token))
    shapes = dict.fromkeys(published["get_shape"](published["get_module"](adapter.model, m)) for m in modules)
    them = types.SimpleNamespace(model=adapter.model, config=config, lifelong_normalizer={
        str(s): published["RunningMeanStd"](s[0] + s[1]) for s in shapes})
    words = ["Oslo", "Lima", "Hanoi", "Doha", "Quito", "Accra", "Riga", "Sofia", "Dakar", "Lusaka", "Minsk", "Tunis"]
    worst = {"keys": 0.0, "gradients": 0.0, "normaliser": 0.0, "update": 0.0}
    for t in range(turns):
        examples = [Example(f"{t}{i}", f"{words[(t * per_turn + i) % len(words)]} lies in", f" {w} {w}")
                    for i, w in enumerate(words[t * per_turn:(t + 1) * per_turn])]
        chunks = [examples[s:s + chunk] for s in range(0, per_turn, chunk)]
        ours = [editor._keys_and_gradients(c) for c in chunks]
        for p in adapter.model.parameters():  # the published cache backpropagates through a trainable model
            p.requires_grad_(True)
        published["ULTRAEDIT.cache"](them, [_tuples(adapter, c) for c in chunks])
        adapter.model.zero_grad(set_to_none=True)
        for i in range(len(editor.layers)):
            for idx, pairs in enumerate(ours):
                keys, grads = pairs[i]
                folder = Path(cache_dir) / f"tiny_facts_ultraedit_{per_turn}_0"
                worst["keys"] = max(worst["keys"], _relative(keys, torch.load(folder / f"{i}_{idx}_keys.pth")))
                worst["gradients"] = max(worst["gradients"], _relative(
                    grads, torch.load(folder / f"{i}_{idx}_values_grad.pth")))
        before = [m.weight.detach().clone() for m in editor.layers]
        editor.edit_batch(examples)  # seqedit's turn as a run makes it: normalisers updated, shifts added
        for shape, normaliser in editor.normalisers.items():
            theirs = them.lifelong_normalizer[str(shape)]
            worst["normaliser"] = max(worst["normaliser"], _relative(normaliser.mean, theirs.mean),
                                      _relative(normaliser.std, theirs.std))
        shifts = published["ULTRAEDIT.predict_param_shifts"](them)
        for i, module in enumerate(editor.layers):
            mine = (module.weight.detach() - before[i]).T  # dW^T of an nn.Linear
            worst["update"] = max(worst["update"], _relative(mine, shifts[modules[i]]))
    return {"model": "tiny-llama", "token": token, "modules": modules, "turns": turns, "edits_per_turn": per_turn,
            "chunk": chunk,
            **{f"max_relative_diff_{k}": v for k, v in worst.items()}}


def main(argv=None) -> None:
    token = ("--token", {"choices": ["ans", "mask"], "default": "ans",
                         "help": "the rows read: the answer's positions (the authors' config) or every real one"})
    tiny_check_main(argv, "benchmark.published_ultraedit", __doc__.split("\n")[0],
                    "a checkout of XiaojieGu/UltraEdit", compare, options=[token])


if __name__ == "__main__":
    main()
