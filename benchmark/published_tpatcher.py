"""T-Patcher's step beside the published code's (ZeroYuHuang/Transformer-Patcher): its FEVER
editor on a BERT-base-sized model (`--family classifier`) or its zsRE editor on a BART-base-sized
one (`--family seq2seq`), random init, the same memory rows (real queries of `benchmark.perf`'s
examples) and the same example, one after the other in one process.

    python -m benchmark.published_tpatcher --repo PATH/Transformer-Patcher [--family seq2seq] \\
        [--memory 10000] [--steps 30] [--threads 1]

`--repo` is a checkout of ZeroYuHuang/Transformer-Patcher (its `src/`); nothing of it is copied
into seqedit. Its modules run as they are, in this interpreter, with three substitutions in the
namespace of `src.models.class_modules` ("cls" below): `BertModel.from_pretrained` returns the
sized model's encoder (no hub), `BertTokenizer.from_pretrained` nothing (the claim comes
tokenised), and torchmetrics' `Accuracy` is given `task="binary"`, which torchmetrics 1.x
requires; in `src.models.seq2seq_modules` ("s2s"), `BartForConditionalGeneration.from_pretrained`
returns a copy of the sized model and `BartTokenizer.from_pretrained` seqedit's tokenizer.
`jsonlines`, imported by the data modules and never reached here, is an empty module where it
is missing.

Three steps are timed (milliseconds a step: the published step's median over `--steps` after two
untimed ones; an official edit of `--steps` steps, divided by them; the median fast edit of 100
steps, divided by 100):

* published: `BertBinaryEditor.joint_training` (cls:355-366) on the claim repeated 8 times
  (utils:30) in train mode, the patch made as scripts/T-patch.py makes it (the key from the
  [CLS] query its detector records, cls:99-103 and 131-141), `--memory` rows in both the train
  and the D_val memory (patch.py:181-182 concatenates the list every step), then backward, the
  gradient norm clipped at 5 (T-patch.py:87) and Adam (lr 1e-2, weight decay 0.01, cls:424-435):
  what one epoch of an edit's Lightning fit computes. The Trainer's own work per epoch (one
  batch an epoch) is not counted, so the published step is timed at its least;
* official: seqedit's `editor.recipe=official` (naive mode: the same 8 copies, train mode);
* seqedit: the default fast path (`benchmark.perf`'s timing: 100 steps forced per edit, one
  copy, eval mode).

A second pass with every dropout off (so train mode computes what eval mode does) runs the
published step and `recipe=official` from the same seed for `--steps` steps (at most 24: both
check the edit and step the plateau schedule after the 25th) and reports the largest
difference of the patch's key, bias and value: the same update, checked against the published
code itself (the value direction, the only draw, is given the same values on both sides). On
one thread the 8 copies' activations may round differently on the two sides and so pick other
memory entries at the top-1,000 boundary, equal in exact arithmetic: the QA editor's check was
made on two threads. One JSON line.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import statistics
import sys
import time
import types
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmark.perf import SIZED, build, examples, memory_rows, mistakes, time_edits
from benchmark.types import EditorData, Example
from editors.tpatcher import TPatcherConfig, TPatcherEditor

# the patched FFN's first projection, whose input the published detector records: cls:66, s2s:67-72
LAYER = {"classifier": "model.model.encoder.layer.11.intermediate", "seq2seq": "model.model.decoder.layers.5.fc1"}
MODULES = {"classifier": "class_modules", "seq2seq": "seq2seq_modules"}
EDITORS = {"classifier": "BertBinaryEditor", "seq2seq": "BartSeq2SeqEditor"}
OFFICIAL_STEPS = 24  # the 25th epoch runs the published validation and plateau step (utils:68)
SETTINGS = {"activate_loss": "top5_exp", "memory_loss": "top1000_exp+top1000_exp", "alc": 1.0, "mlc": 5.0,
            "margin_val1": 3.0, "margin_val2": -3.0, "act_margin_val": 0.0, "lr": 1e-2, "weight_decay": 0.01}
MAX_PATCHES = 5  # max_add_neuron_num (utils:86)
CLIP_NORM = 5.0  # scripts/T-patch.py:87


def published_modules(repo: Path, family: str) -> tuple[types.ModuleType, types.ModuleType]:
    """The checkout's editor module of `family` (`src.models.class_modules` or `seq2seq_modules`)
    and `src.utils`, with the substitutions the module docstring names."""
    try:
        import jsonlines  # noqa: F401
    except ImportError:
        sys.modules["jsonlines"] = types.ModuleType("jsonlines")
    sys.path.insert(0, str(repo))
    try:
        module = importlib.import_module(f"src.models.{MODULES[family]}")
        utils = importlib.import_module("src.utils")
    finally:
        sys.path.remove(str(repo))
    from torchmetrics import Accuracy

    module.Accuracy = partial(Accuracy, task="binary")
    return module, utils


def _published_model(module: types.ModuleType, adapter, family: str) -> nn.Module:
    """Their model class around a copy of `adapter`'s model: BertBinary (a BertModel and a
    one-logit head) or BartSeq2Seq, built with nothing downloaded."""
    if family == "classifier":
        module.BertTokenizer = types.SimpleNamespace(from_pretrained=lambda name: None)
        module.BertModel = types.SimpleNamespace(from_pretrained=lambda name: copy.deepcopy(adapter.model.bert))
        binary = module.BertBinary(model_name="seqedit-perf", eps=0.1)
        binary.model.classifier.load_state_dict(adapter.model.classifier.state_dict())
        return binary
    module.BartTokenizer = types.SimpleNamespace(from_pretrained=lambda name: adapter.tokenizer)
    module.BartForConditionalGeneration = types.SimpleNamespace(
        from_pretrained=lambda name: copy.deepcopy(adapter.model))
    return module.BartSeq2Seq(model_name="seqedit-perf", eps=0.1)


def published_editor(module: types.ModuleType, utils: types.ModuleType, adapter, family: str, rows: Tensor,
                     batch: dict, seed: int):
    """Their `Editor` over a copy of `adapter`'s model, both memories holding `rows`, the patches
    set as scripts/T-patch.py sets them before an edit (T-patch.py:43-66, 96)."""
    shared = {name: SETTINGS[name] for name in ("activate_loss", "memory_loss", "act_margin_val", "margin_val1",
                                                "margin_val2")}
    editor = module.Editor(model=_published_model(module, adapter, family), memory_size=len(rows), amplify_v=True,
                           freeze_k=False, freeze_a=False, device=rows.device, **shared,
                           **({"max_add_neuron_num": MAX_PATCHES} if family == "seq2seq" else {}))
    editor.train_memories[LAYER[family]] = list(rows.split(1))
    editor.val_memories[LAYER[family]] = list(rows.split(1))
    editor.insert_hidden_detector()  # the queries the key starts from, in eval mode
    editor.eval()
    editor.unlock_hidden_detectors()
    if family == "classifier":  # edit_or_not_binary (utils:330-344): the [CLS] query
        with torch.no_grad():
            editor(batch["src_input_ids"][[0]], batch["src_attention_mask"][[0]], batch["labels"][[0]])
        editor.lock_hidden_detectors()
        init_weights, patches = editor.get_hidden(), {}
    else:  # count_error_nums (utils:387-406): a patch for each wrong answer token, five at most
        count, select = utils.count_error_nums(editor.model, batch, rows.device)
        editor.lock_hidden_detectors()
        select = select[:MAX_PATCHES]
        init_weights = editor.get_hidden(select)
        patches = {"error_count": len(select), "select_index": select}
    editor.clear_detectors()
    editor.set_editors(init_weights=init_weights, **patches)
    # the value direction (patch.py:247), the only draw: the values seqedit's recipe=official draws
    # right after the same seed, so that the two edits can be compared
    into = next(e["editor"] for e in editor.editors if type(e["editor"]).__name__ == "ModifyLinearInput")
    torch.manual_seed(seed)
    with torch.no_grad():
        into.extra_input.copy_(torch.randn(into.extra_input.shape[::-1]).T)
    return editor


def published_steps(module: types.ModuleType, family: str, editor, batch: dict, steps: int) -> list[float]:
    """`steps` epochs of the published edit's fit, each timed: training step, backward, clip, Adam."""
    holder = types.SimpleNamespace(editor=editor, hparams=types.SimpleNamespace(**SETTINGS), log=lambda *a, **k: None)
    params = [p for p in editor.parameters() if p.requires_grad]  # cls:440
    optimizer = torch.optim.Adam(params, lr=SETTINGS["lr"], weight_decay=SETTINGS["weight_decay"])
    editor.train()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = getattr(module, EDITORS[family]).joint_training(holder, batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], CLIP_NORM)
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    editor.eval()
    return seconds


def published_patch(editor) -> dict[str, Tensor]:
    """The trained patch in seqedit's layout: key [d, 1], bias [1], value [1, d]."""
    found = {type(e["editor"]).__name__: e["editor"] for e in editor.editors}
    out, into = found["ModifyLinearOutput"], found["ModifyLinearInput"]
    return {"key": out.extra_output.weight.detach().T, "bias": out.extra_output.bias.detach(),
            "value": (into.extra_input * into.a).detach().T}


def official_edit(adapter, rows: Tensor, example: Example, steps: int, seed: int) -> tuple[float, dict[str, Tensor]]:
    """seqedit's `recipe=official` edit of `example` for exactly `steps` steps: its seconds and patch."""
    cfg = TPatcherConfig(name="tpatcher", recipe="official", max_steps=steps, memory_update=False)
    editor = TPatcherEditor(cfg, adapter)
    editor.prepare(EditorData(adapter.task, [], [example], pool=[]))  # a D_val to prepare from; replaced:
    editor.memory.append(rows)
    editor.val_memory = rows  # the published side's D_val memory
    torch.manual_seed(seed)
    start = time.perf_counter()
    result = editor.edit(example)
    seconds = time.perf_counter() - start
    if result.steps != steps:
        raise RuntimeError(f"recipe=official made {result.steps} steps, not {steps}")
    patch = {"key": editor.bank.keys.clone(), "bias": editor.bank.bias.clone(), "value": editor.bank.values.clone()}
    editor.reset()  # its hook stays on the model: with the bank empty it adds nothing to the next forward
    return seconds, patch


def published_batch(adapter, family: str, example: Example) -> dict:
    """The example as the published edit data gives it, 8 copies (utils:30): a claim with float
    labels, or a question whose `trg_input_ids` the model reads as [:, :-1] and scores as [:, 1:]
    (s2s:296-306), here seqedit's decoder input and its targets (no padding: one example)."""
    encoded = adapter.encode([example.prompt] * 8, [example.target] * 8)
    batch = {"src_input_ids": encoded.inputs["input_ids"], "src_attention_mask": encoded.inputs["attention_mask"]}
    if family == "classifier":
        return batch | {"labels": encoded.targets.float()}
    decoder = encoded.inputs["decoder_input_ids"]
    trg = torch.cat([decoder, encoded.targets.view(len(decoder), -1)[:, -1:]], 1)
    return batch | {"trg_input_ids": trg, "trg_attention_mask": torch.ones_like(trg)}


def without_dropout(model: nn.Module) -> None:
    """Every dropout off: the nn.Dropout modules and the probabilities some models keep as floats
    (BART's `dropout`, `attention_dropout`, `activation_dropout`, `layerdrop`)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("dropout", "attention_dropout", "activation_dropout", "layerdrop"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def compare(args: argparse.Namespace) -> dict:
    family = args.family
    module, utils = published_modules(Path(args.repo), family)
    adapter = build(family)
    edits = mistakes(adapter, examples(family, args.edits))
    fast, fast_steps, *_ = time_edits(adapter, family, "fast", edits, memory=args.memory, steps=100)
    probe = TPatcherEditor(TPatcherConfig(name="tpatcher"), adapter)
    memory_rows(probe, family, len(edits), args.memory)  # the rows time_edits used (cached)
    rows = probe.memory.matrix[: args.memory].clone()
    example, seed = edits[0], 0
    batch = published_batch(adapter, family, example)
    theirs = published_editor(module, utils, adapter, family, rows, batch, seed)
    published = published_steps(module, family, theirs, batch, args.steps + 2)[2:]
    official_s, _ = official_edit(adapter, rows, example, args.steps, seed)

    # the same update: no dropout anywhere, so train mode is eval mode on both sides
    without_dropout(adapter.model)
    same_steps = min(args.steps, OFFICIAL_STEPS)
    theirs = published_editor(module, utils, adapter, family, rows, batch, seed)
    published_steps(module, family, theirs, batch, same_steps)
    _, ours = official_edit(adapter, rows, example, same_steps, seed)
    theirs = published_patch(theirs)
    diffs = {f"max_{name}_diff": float((ours[name] - theirs[name]).abs().max()) for name in ours}
    key_gaps = (ours["key"] - theirs["key"]).abs().flatten().sort(descending=True).values
    scale = {f"max_abs_{name}": float(theirs[name].abs().max()) for name in theirs}

    ms = {"published_ms_per_step": 1000 * statistics.median(published),
          "official_ms_per_step": 1000 * official_s / args.steps,
          "seqedit_ms_per_step": 1000 * statistics.median(fast) / 100}
    return {"family": family, "model": f"{SIZED[family]} (random init)", "memory_size": args.memory,
            "threads": torch.get_num_threads(), "patches": ours["key"].shape[1],
            "published_steps_timed": len(published), "seqedit_edits": len(fast), "seqedit_steps": fast_steps,
            **{name: round(value, 3) for name, value in ms.items()},
            "published_over_seqedit": round(ms["published_ms_per_step"] / ms["seqedit_ms_per_step"], 1),
            "published_over_official": round(ms["published_ms_per_step"] / ms["official_ms_per_step"], 2),
            "same_update_steps": same_steps, **diffs,
            "second_largest_key_diff": float(key_gaps[1]) if len(key_gaps) > 1 else 0.0, **scale}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark.published_tpatcher", description=__doc__.split("\n")[0])
    parser.add_argument("--repo", required=True, help="a checkout of ZeroYuHuang/Transformer-Patcher")
    parser.add_argument("--family", choices=["classifier", "seq2seq"], default="classifier",
                        help="classifier: the FEVER editor on BERT (class_modules); seq2seq: the zsRE editor on BART "
                             "(seq2seq_modules)")
    parser.add_argument("--memory", type=int, default=10_000, help="memory rows (train and D_val memory alike)")
    parser.add_argument("--steps", type=int, default=30, help="published and official steps timed")
    parser.add_argument("--edits", type=int, default=3, help="seqedit fast-path edits of 100 steps timed")
    parser.add_argument("--threads", type=int, default=1)
    return parser


def main(argv=None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("memory", "steps", "edits", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not (Path(args.repo) / "src" / "models" / "class_modules.py").is_file():
        parser.error(f"--repo {args.repo}: not a checkout of ZeroYuHuang/Transformer-Patcher "
                     "(no src/models/class_modules.py)")
    torch.set_num_threads(args.threads)
    print(json.dumps(compare(args)), flush=True)


if __name__ == "__main__":
    main()
