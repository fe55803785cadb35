"""Speed of the fast paths against the naive ones, side by side in one process.

    python -m benchmark.perf tpatcher [--family classifier|decoder|seq2seq] [--edits 5] [--steps 100] [--device cuda]
    python -m benchmark.perf suffix [--family classifier|decoder|seq2seq] [--model smollm2-135m] [--edits 3]
                                    [--steps 10] [--device cuda]
    python -m benchmark.perf scale [--edits 1000] [--steps 100] [--out runs/perf/scale.png]
    python -m benchmark.perf editors [--only a,b] [--edits 20]
    python -m benchmark.perf vstar [--only rome,memit,emmet] [--edits 5] [--model smollm2-135m]
    python -m benchmark.perf kl [--chunk 16] [--only ft_kl_all] [--model smollm2-135m] [--threads 1]

`editors` runs every registered editor (or `--only`) on one fixed workload: the tests' tiny LLaMA
(its cached initial model) on a fold of the embedded facts, the settings the quick demo gives
tiny models, and prints one JSON line each: seconds per edit (median), per evaluation of ER,
TrainR and TestR (median) and of a fold's final evaluation, the run's wall time, and the share of
it spent outside the editor's edits, so a change that slows any editor shows up side by side.

`vstar` times the locate-then-edit editors' v* with `editor.mode=fast` against `kv` on SmolLM2
and zsRE's requests (benchmark/perf_vstar.py).

`kl` times one pass of FT+KL's KL term in chunks of `--chunk` pool examples, with the process's
peak memory (benchmark/perf_kl.py).

`suffix` times ft_last, ft_kl_last and constrained_ft (last block) with only the trained block
run each step against the full forward (see `time_suffix`), and KE's and MEND's training edit
(`time_hypernet_training`), on the sized random models below or on real ones (`--model`, repeatable).
For `tpatcher`:

classifier: a BERT-base-sized encoder (12 layers, hidden 768, random init) editing fact-checking
claims against a memory of 40,000 queries of distinct real claims (computed once, then cached).
decoder: a SmolLM2-135M-sized LLaMA (30 layers, hidden 576, vocabulary 49,152, random init)
editing 5-token answers (memory: 40,000 answer-position queries of 8,000 questions).
seq2seq: a BART-base-sized encoder-decoder (6 + 6 layers, width 768, vocabulary 50,265, random
init; the paper's QA model), editing the same answers; only with `--family seq2seq`.
`--device cuda` runs the models and the memory on the GPU (the memory scan is fp32 there), each
timing taken after the device's queued work is done.
The naive path runs the full model and scans the memory in fp32 every step. The fast path (the
default) runs only what follows the patched FFN and scans the memory through its int8 copy (same
top-k entries as fp32, editors/patch_memory.py) where that is measured faster over the first scans
of its edits (`memory_scan=auto`), else in fp32 through the memory's transposed copy, and on CPU
reads no row at a step whose scores it can bound from the previous step's (`memory_reuse`, the
same top-k); a second run times the fast path with the patch's gradient in closed form
(`step=closed`: autograd on the model's tail only, editors/tpatcher_step.py); further runs time
the fast path scanning every step (`memory_reuse=false`), bounding every direction of the keys'
move (`memory_basis=0`), with the fp32 scan, with the approximate screened memory (`--refresh`),
and with the frozen head through BLAS products instead of oneDNN's linear (`blas_tail_*`). At
the last block the fast path's milliseconds per step are printed beside a floor computed from
the shapes and this machine's measured matmul and read throughput (`step_floor_ms`).
All paths make the same edits from the same seeds with the same step budget (`--steps`; every step is run,
the stop rule is off), so the step counts are equal and the ratio is per step. Prints one JSON
line per family.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from benchmark.cache import cache_dir
from benchmark.fact_source import TEMPLATES, raw_facts
from benchmark.models import base
from benchmark.models.base import ModelConfig
from benchmark.models.zoo import ADAPTERS, tiny_tokenizer
from benchmark.record_types import EvalRecord, edits_in, fold_ends, parse_all
from benchmark.speed import synced, throughput
from benchmark.types import EditorData, Example
from editors.tpatcher import TPatcherConfig, TPatcherEditor

SIZED = {"classifier": "bert-base-sized encoder", "decoder": "smollm2-135m-sized llama",
         "seq2seq": "bart-base-sized encoder-decoder"}


def build(family: str, model: str | None = None, device: str = "cpu"):
    """The sized, randomly initialised model of `family`; or, where `model` names one (a registered
    name such as smollm2-135m or minilm-l6, or a local folder), that model with its real weights."""
    torch.manual_seed(0)
    if model:
        from benchmark.models.zoo import build_model

        return build_model(ModelConfig(name=model, eval_batch_size=128, device=device))
    if family == "classifier":
        tok = tiny_tokenizer(with_eos=True)
        model = BertForSequenceClassification(BertConfig(vocab_size=len(tok), num_labels=1))  # BERT-base sizes
    elif family == "seq2seq":  # BART-base sizes (the paper's QA model): 6 + 6 layers, width 768, 50,265 words
        tok = tiny_tokenizer(with_eos=True)  # (BartConfig's defaults are BART-large's: set every size)
        model = BartForConditionalGeneration(BartConfig(
            vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=3072,
            decoder_ffn_dim=3072, encoder_attention_heads=12, decoder_attention_heads=12,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
            forced_eos_token_id=tok.eos_token_id))
    else:
        tok = tiny_tokenizer(with_eos=False)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                             num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                             tie_word_embeddings=True, pad_token_id=tok.pad_token_id))
    return ADAPTERS[family](model.to(device), tok, ModelConfig(name=f"perf-{family}", eval_batch_size=128,
                                                                device=device))


def examples(family: str, n: int) -> list[Example]:
    """n distinct real claims / questions from the facts set (true and same-relation false
    objects); the decoder's answers are 5 tokens and differ by object."""
    facts = raw_facts()
    objects = {}
    for relation, _, obj in facts:
        objects.setdefault(relation, set()).add(obj)
    objects = {relation: sorted(found) for relation, found in objects.items()}
    out = []
    for shift in range(max(len(v) for v in objects.values())):
        for relation, subject, obj in facts:
            pool = objects[relation]
            other = pool[(pool.index(obj) + shift) % len(pool)]
            if shift and other == obj:
                continue
            questions, claims = TEMPLATES[relation]
            for i, template in enumerate(claims if family == "classifier" else questions):
                if family == "classifier":
                    out.append(Example(f"{subject}{i}{shift}", template.format(s=subject, o=other), int(shift == 0)))
                elif shift < 5:
                    out.append(Example(f"{subject}{i}{shift}", template.format(s=subject), f" {other} is the answer"))
                if len(out) == n:
                    return out
    return out


def memory_rows(editor: TPatcherEditor, family: str, skip: int, size: int) -> float:
    """Fill the memory with `size` real, distinct queries of the patched layer (computed once,
    then cached on disk); returns the seconds it took per 1,000 examples when computed."""
    layer = editor.config.layer
    model = hashlib.sha1(editor.adapter.model.config.to_json_string().encode()).hexdigest()[:10]  # its sizes
    path = cache_dir() / "perf" / f"{family}-{model}-{skip}-{size}{'' if layer == -1 else f'-layer{layer}'}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rows, count, start = [], 0, time.perf_counter()
        # rows per example: the classifier's [CLS], the decoder's 5 answer positions; at an earlier
        # layer every position, so fewer examples fill the memory
        per_example = (1 if family == "classifier" else 5) if layer == -1 else 10
        pool = examples(family, skip + -(-size // per_example))[skip:]
        for i in range(0, len(pool), 512):
            rows.append(editor._queries(pool[i : i + 512]))
            count += len(pool[i : i + 512])
            if sum(len(r) for r in rows) >= size:
                break
        seconds = (time.perf_counter() - start) * 1000 / count
        torch.save({"rows": torch.cat(rows)[:size].cpu(), "seconds": seconds}, path)
    saved = torch.load(path, weights_only=True, map_location=editor.adapter.device)
    editor.memory.append(saved["rows"])
    return saved["seconds"]


def time_edits(adapter, family: str, mode: str, edits: list[Example], memory: int, steps: int, layer: int = -1,
               **overrides):
    cfg = TPatcherConfig(name="tpatcher", mode=mode, max_steps=steps, min_steps=steps, layer=layer, **overrides)
    editor = TPatcherEditor(cfg, adapter)
    editor.prepare(EditorData(adapter.task, [], [], pool=[]))
    build_seconds = memory_rows(editor, family, len(edits), memory)
    editor.choose_scan()  # memory_scan=auto: the first scans of these edits time both
    times, step_counts, missed = [], [], 0
    for i, ex in enumerate(edits):
        torch.manual_seed(i)
        start = synced(adapter.device)
        result = editor.edit(ex)
        times.append(synced(adapter.device) - start)
        step_counts.append(result.steps)
        missed += result.info.get("screen_missed_rows", 0)
    keys = editor.bank.keys.detach().cpu().clone()
    scan = {"memory_scan": "int8" if editor.memory.quantized else "fp32", "scan_ms": editor.memory.scan_ms}
    editor.reset()
    return times, step_counts, keys, build_seconds, missed, scan


def step_floor_ms(adapter, family: str, memory: int, edit: Example, speed: dict[str, float]) -> dict[str, float]:
    """The least a fast-path step at the last block must do, from the shapes and `throughput`:
    score the memory (read once, as int8: memory x width bytes; 4 bytes a value on a GPU, where
    the scan is fp32) and run the tail on the scored positions forward and backward (a decoder's
    vocabulary head read twice, 2 x 2 x positions x vocabulary x width flops; the classifier's
    pooler, width^2). Each part costs the larger of its reading and its arithmetic time; the patch
    itself (a few width-long vectors) is left out, and so is a GPU's launch latency."""
    width = adapter.ffn_site().width
    value_bytes = 1 if adapter.device.type == "cpu" else 4
    seconds = {"memory_scan": value_bytes * memory * width / (speed["read_gb_s"] * 1e9)}
    if family != "classifier":  # the decoder's or seq2seq decoder's vocabulary head
        positions = len(adapter.encode([edit.prompt], [edit.target]).targets)
        vocabulary = adapter.model.get_output_embeddings().weight.shape[0]
        read, flops = 2 * 4 * vocabulary * width, 2 * 2 * positions * vocabulary * width
    else:
        read, flops = 2 * 4 * width * width, 2 * 2 * width * width  # the pooler; the 1-logit head is nothing
    seconds["tail"] = max(read / (speed["read_gb_s"] * 1e9), flops / (speed["matmul_gflops"] * 1e9))
    return {f"{name}_ms": round(1000 * s, 3) for name, s in seconds.items()} | {
        "floor_ms": round(1000 * sum(seconds.values()), 3)}


def mistakes(adapter, chosen: list[Example]) -> list[Example]:
    """`chosen` with each label the classifier gets right flipped, so that every example needs an
    edit (an example already answered makes no steps); generated answers stay as they are."""
    if adapter.task != "classification":
        return chosen
    right = adapter.scores([ex.prompt for ex in chosen], [ex.target for ex in chosen])
    return [replace(ex, target=1 - ex.target) if ok else ex for ex, ok in zip(chosen, right)]


SUFFIX_EDITORS = {"ft_last": {"layers": "last"}, "ft_kl_last": {"layers": "last", "kl_weight": 1.0, "kl_batch": 32},
                  "constrained_ft": {"block": "last", "delta": 1.0}}


def time_suffix(adapter, edits: int, steps: int) -> None:
    """`suffix`: the fine-tuning editors that train the last block, each step running only that
    block and the head from its recorded input (fast) against the full forward (naive),
    alternating edit by edit; every edit runs all `steps` steps (lr too small to succeed). Timing
    only: that both give the same edits is tests/test_suffix.py's check."""
    from editors.constrained_ft import ConstrainedFTConfig, ConstrainedFTEditor
    from editors.ft import FTConfig, FTEditor

    family = adapter.family
    chosen = examples(family, edits + 64)
    memory, chosen = chosen[edits:], mistakes(adapter, chosen[:edits])
    for name, overrides in SUFFIX_EDITORS.items():
        editor_class, config_class = (ConstrainedFTEditor, ConstrainedFTConfig) if name == "constrained_ft" \
            else (FTEditor, FTConfig)
        seconds = {"fast": [], "naive": []}
        for i, ex in enumerate(chosen):
            for mode in ("naive", "fast"):
                editor = editor_class(config_class(name=name, lr=1e-9, max_steps=steps, mode=mode, **overrides),
                                      adapter)
                editor.prepare(EditorData(adapter.task, [], [], pool=memory))
                torch.manual_seed(i)
                __import__("random").seed(i)
                start = synced(adapter.device)
                result = editor.edit(ex)
                seconds[mode].append(synced(adapter.device) - start)
                assert result.steps == steps, (name, mode, result.steps)
                editor.reset()
        fast, naive = statistics.median(seconds["fast"]), statistics.median(seconds["naive"])
        print(json.dumps({"benchmark": "suffix", "family": family, "model": adapter.config.name, "editor": name,
                          "steps_per_edit": steps,
                          "edits": edits, "naive_median_s": round(naive, 4), "fast_median_s": round(fast, 4),
                          "speedup": round(naive / fast, 2), "device": str(adapter.device),
                          "threads": torch.get_num_threads()}), flush=True)


def time_hypernet_training(adapter, edits: int) -> None:
    """`suffix`, KE and MEND: one training edit (the training step on one example, its backward
    included) with the locality KL's edited forward running only the edited blocks (fast) against
    the full forward (naive), alternating. Their sequential edit is one forward and one backward
    that already stops at the first edited block, so it has no prefix to save. Timing only: the
    equality is tests/test_hypernet.py's check."""
    import random

    from benchmark.registry import EDITORS

    family = adapter.family
    train = examples(family, edits + 64)
    data = EditorData(adapter.task, train, [], pool=[])
    for name in ("ke_style", "mend_style"):
        entry = EDITORS.get(name)
        editor = entry.target(entry.config_class(name=name), adapter)
        modules = {mode: editor.training_module(data) for mode in ("naive", "fast")}
        seconds: dict[str, list[float]] = {}
        for mode, module in modules.items():
            module.mode = mode
            module.log = module.log_dict = lambda *args, **kwargs: None  # no Trainer to log to
            module.train()  # as Trainer.fit does (the step itself runs the edited model in eval mode)
            module.on_fit_start()
        for i in range(edits):
            for mode, module in modules.items():
                random.seed(i)
                torch.manual_seed(i)
                start = synced(adapter.device)
                module.training_step(train[i : i + 1], 0).backward()
                seconds.setdefault(mode, []).append(synced(adapter.device) - start)
                editor.zero_grad(set_to_none=True)
        fast, naive = statistics.median(seconds["fast"]), statistics.median(seconds["naive"])
        print(json.dumps({"benchmark": "hypernet_training", "family": family, "model": adapter.config.name,
                          "editor": name, "edits": edits,
                          "blocks": editor.config.blocks, "naive_median_s": round(naive, 4),
                          "fast_median_s": round(fast, 4), "speedup": round(naive / fast, 2),
                          "device": str(adapter.device), "threads": torch.get_num_threads()}), flush=True)


# `scale`: the editors whose per-edit cost can grow with the stream, and what grows
SCALE_EDITORS = {"tpatcher": ({}, "patches"), "ft_last": ({"layers": "last"}, "nothing (weights change in place)"),
                 "knn_lm": ({}, "datastore rows"), "sera": ({"encoder": "tiny-bert"}, "cached edits"),
                 "grace": ({}, "codebook entries")}
STREAM_POINTS = (1, 10, 100, 1000)
MEMORY_POINTS = (10_000, 20_000, 40_000, 80_000, 160_000)


def _rss_mb() -> float:
    """This process's resident memory now (Linux), MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


STEPPED = ("tpatcher", "ft_last")  # editors that optimise per edit: capped at --steps steps


def stream_curve(name: str, edits: int, steps: int) -> list[dict]:
    """Seconds per edited example (the loop's check, the edit, the memory update, the check after
    it) and resident memory as one editor's stream grows, on the tiny decoder (random weights:
    every example is a mistake, and costs do not depend on what the weights know; the editors
    that optimise run at most `steps` steps, which on random weights they mostly reach). Each
    point is the median over the second half of the edits up to it."""
    from benchmark.models import build_model
    from benchmark.registry import EDITORS

    adapter = build_model(ModelConfig(name="tiny-llama", eval_batch_size=128))
    chosen = examples("decoder", edits + 256)
    pool, stream = chosen[edits:], chosen[:edits]
    entry = EDITORS.get(name)
    overrides, grows = SCALE_EDITORS[name]
    budget = {"max_steps": steps} if name in STEPPED else {}
    editor = entry.target(entry.config_class(name=name, **overrides, **budget), adapter)
    editor.prepare(EditorData(adapter.task, pool, [], pool=pool))
    seconds, rows, points = [], [], [p for p in STREAM_POINTS if p <= edits]
    for i, example in enumerate(stream, 1):
        torch.manual_seed(i)
        start = time.perf_counter()
        check = editor.check(example)
        editor.edit(example)
        editor.after_example(example, check)
        editor.check(example)
        seconds.append(time.perf_counter() - start)
        if i in points:
            rows.append({"benchmark": "scale_stream", "editor": name, "edits": i, "grows": grows, **budget,
                         "seconds_per_edit": round(statistics.median(seconds[i // 2 :]), 4),
                         "rss_mb": round(_rss_mb(), 1), "params_added": editor.params_added(),
                         "threads": torch.get_num_threads()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def memory_curve(family: str, edits: int, steps: int) -> list[dict]:
    """T-Patcher's seconds per `steps`-step edit (fast path, memory_scan=auto) as its memory grows.
    The first 10,000 rows are real queries (`memory_rows`); rows beyond them are drawn from a
    Gaussian with the real rows' mean and covariance (computing 160,000 real queries would take
    hours here; the scan's cost depends on the rows' count and spread, not on their source)."""
    adapter = build(family)
    chosen = examples(family, edits)
    cfg = TPatcherConfig(name="tpatcher", max_steps=steps, min_steps=steps)

    def fresh() -> TPatcherEditor:
        editor = TPatcherEditor(cfg, adapter)
        editor.prepare(EditorData(adapter.task, [], [], pool=[]))
        return editor

    loader = fresh()  # the real rows and their spread, read and factored once
    memory_rows(loader, family, edits, 10_000)
    real = loader.memory.matrix.clone()
    spread = torch.linalg.cholesky(torch.cov(real.T.double()) + 1e-6 * torch.eye(real.shape[1]))
    del loader
    rows = []
    for size in MEMORY_POINTS:
        editor = fresh()
        editor.memory.append(real[:size])
        if size > len(real):
            generator = torch.Generator().manual_seed(size)
            noise = torch.randn(size - len(real), real.shape[1], generator=generator, dtype=torch.float64)
            editor.memory.append((real.mean(0).double() + noise @ spread.T).float())
        editor.choose_scan()
        seconds = []
        for i, example in enumerate(chosen):
            torch.manual_seed(i)
            start = time.perf_counter()
            editor.edit(example)
            seconds.append(time.perf_counter() - start)
        rows.append({"benchmark": "scale_memory", "family": family, "memory_rows": size, "steps_per_edit": steps,
                     "seconds_per_edit": round(statistics.median(seconds), 4),
                     "memory_scan": "int8" if editor.memory.quantized else "fp32", "rss_mb": round(_rss_mb(), 1),
                     "threads": torch.get_num_threads()})
        print(json.dumps(rows[-1]), flush=True)
        editor.reset()
        del editor
    return rows


def plot_scale(stream: list[dict], memory: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["editor"] for r in stream):
        points = [r for r in stream if r["editor"] == name]
        left.plot([r["edits"] for r in points], [r["seconds_per_edit"] for r in points], marker="o", label=name)
    left.set(xscale="log", yscale="log", xlabel="edits so far", ylabel="seconds per edited example",
             title="cost as the stream grows (tiny decoder)")
    left.legend()
    for family in dict.fromkeys(r["family"] for r in memory):
        points = [r for r in memory if r["family"] == family]
        right.plot([r["memory_rows"] for r in points], [r["seconds_per_edit"] for r in points], marker="o",
                   label=family)
    steps = memory[0]["steps_per_edit"] if memory else ""
    right.set(xscale="log", xlabel="T-Patcher memory rows", ylabel=f"seconds per {steps}-step edit",
              title="T-Patcher as its memory grows")
    right.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def _all_editors() -> list[str]:
    from benchmark.config import compose

    compose([])  # registers every editor
    from benchmark.registry import EDITORS

    return EDITORS.names()


def time_editor(name: str, examples_streamed: int) -> dict:
    """One editor on the fixed workload (module docstring), in a folder of its own that is removed."""
    import shutil
    import tempfile

    from benchmark.config import compose, instantiate
    from benchmark.demo import QUICK, QUICK_EDITOR
    from benchmark.editor_training import train_editor
    from benchmark.registry import EDITORS
    from benchmark.run import run

    out = Path(tempfile.mkdtemp(prefix="seqedit-perf-"))
    overrides = ["experiment=demo_qa", f"editor={name}", *QUICK["qa"], *QUICK_EDITOR.get(name, []),
                 f"loop.max_fold_examples={examples_streamed}", "loop.eval_every=5", "loop.save_state=false",
                 "loop.progress=false", f"output_dir={out}", "run_id=perf"]
    try:
        trained = None
        if EDITORS.get(name).target.traits.training:
            began = time.perf_counter()
            trained = train_editor(instantiate(compose(overrides)), progress=False)
            trained = round(time.perf_counter() - began, 3) if not trained["cached"] else "cached"
        results = run(compose(overrides))
        records = parse_all([json.loads(x) for x in (out / "perf" / "edits.jsonl").read_text().splitlines()])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    edits = [r.seconds for r in edits_in(records)]
    evals = [r.seconds for r in records if isinstance(r, EvalRecord)]
    finals = [r.seconds for r in fold_ends(records).values()]
    wall = results["wall_seconds"]
    return {"editor": name, "workload": f"tiny-llama, facts QA fold 0, {examples_streamed} examples streamed",
            "edits": len(edits), "edit_seconds_median": round(statistics.median(edits), 4) if edits else None,
            "eval_seconds_median": round(statistics.median(evals), 4) if evals else None,
            "final_eval_seconds": round(sum(finals), 4), "run_seconds": wall,
            "outside_editor_share": round(1 - sum(edits) / wall, 3) if wall else None,
            "training_phase_seconds": trained, "threads": torch.get_num_threads()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf")
    parser.add_argument("editor", choices=["tpatcher", "suffix", "scale", "editors", "vstar", "kl", "eval"])
    parser.add_argument("--only", default=None, help="editors, vstar: a comma-separated list (default: every "
                                                     "editor; vstar: rome,memit,emmet); kl: one editor "
                                                     "(default ft_kl_all)")
    parser.add_argument("--chunk", type=int, default=16, help="kl: editor.kl_chunk")
    parser.add_argument("--out", default="runs/perf/scale.png", help="scale: where the plot (and .json) go")
    parser.add_argument("--family", choices=["classifier", "decoder", "seq2seq", "both"], default="both",
                        help="both: classifier and decoder")
    parser.add_argument("--edits", type=int, default=None,
                        help="edits timed (default 5; scale: 1,000); eval: passes of each order (default 3)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--memory", type=int, default=40_000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="tpatcher, suffix: the torch device the models run on (cuda)")
    parser.add_argument("--refresh", type=int, default=10, help="memory_refresh of the screened run")
    parser.add_argument("--layer", type=int, default=-1, help="patched block (editor.layer; -1: the last)")
    parser.add_argument("--model", action="append", default=None,
                        help="suffix: a real model instead of the sized random one (smollm2-135m, minilm-l6; "
                             "repeat for several)")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every argument that cannot work is one line (argparse's exit 2) before anything is timed."""
    if args.model and args.editor not in ("suffix", "vstar", "kl", "eval"):
        parser.error("--model applies to `suffix`, `vstar`, `kl` and `eval` "
                     "(tpatcher's memory rows are cached per sized model)")
    if args.editor in ("vstar", "kl", "eval") and args.model and len(args.model) > 1:
        parser.error(f"--model: {args.editor} takes one model")
    if args.chunk < 1:
        parser.error("--chunk must be at least 1")
    if args.device != "cpu" and args.editor == "scale":
        parser.error("--device applies to `tpatcher` and `suffix`; `scale` measures the CPU")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device}: not a torch device (cpu, cuda, cuda:1)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        parser.error(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA devices")


def main(argv=None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.edits is None:
        args.edits = {"scale": 1000, "eval": 3}.get(args.editor, 5)
    _check_args(parser, args)
    families = ["classifier", "decoder"] if args.family == "both" else [args.family]
    if args.editor == "scale":
        _scale(args, families)
    elif args.editor == "editors":
        for name in (args.only.split(",") if args.only else None) or _all_editors():
            print(json.dumps(time_editor(name, args.edits if args.edits != 5 else 20)), flush=True)
    elif args.editor == "kl":
        from benchmark.perf_kl import time_kl

        print(json.dumps(time_kl(args.only or "ft_kl_all", args.chunk, (args.model or [None])[0])), flush=True)
    elif args.editor == "eval":
        from benchmark.perf_eval import time_orders

        for line in time_orders((args.model or [None])[0], args.edits):
            print(json.dumps(line), flush=True)
    elif args.editor == "vstar":
        from benchmark.perf_vstar import time_vstar

        time_vstar((args.only or "rome,memit,emmet").split(","), args.edits, (args.model or [None])[0])
    elif args.editor == "suffix":
        adapters = (build("", name, args.device) for name in args.model) if args.model else \
            (build(family, device=args.device) for family in families)
        for adapter in adapters:
            time_suffix(adapter, args.edits, args.steps)
            time_hypernet_training(adapter, args.edits)
    else:
        for family in families:
            print(json.dumps(_tpatcher_line(args, family)), flush=True)


def _scale(args: argparse.Namespace, families: list[str]) -> None:
    stream = [r for name in SCALE_EDITORS for r in stream_curve(name, max(args.edits, 1), args.steps)]
    memory = [r for family in families for r in memory_curve(family, min(args.edits, 5), args.steps)]
    out = Path(args.out)
    plot_scale(stream, memory, out)
    out.with_suffix(".json").write_text(json.dumps({"stream": stream, "memory": memory}, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')}")


@contextmanager
def blas_tails() -> Iterator[None]:
    """Frozen heads through the BLAS route (`benchmark.models.base._route`) within the block."""
    kept, base.ONEDNN_TAILS = base.ONEDNN_TAILS, False
    try:
        yield
    finally:
        base.ONEDNN_TAILS = kept


def _tpatcher_line(args: argparse.Namespace, family: str) -> dict:
    """T-Patcher's edits of one family in every mode, side by side in this one run."""
    adapter = build(family, device=args.device)
    edits = examples(family, args.edits)
    # naive: the straightforward editor, a full forward and a full fp32 memory scan each step
    run = partial(time_edits, adapter, family, edits=edits, memory=args.memory, steps=args.steps, layer=args.layer)
    naive, naive_steps, naive_keys, *_ = run(mode="naive", memory_scan="fp32", memory_reuse=False)
    fast, fast_steps, fast_keys, build_s, _, scan = run(mode="fast")
    closed, closed_steps, closed_keys, *_ = run(mode="fast", step="closed")
    every, _, every_keys, *_ = run(mode="fast", memory_reuse=False)
    unbased, _, unbased_keys, *_ = run(mode="fast", memory_basis=0)
    fp32, _, fp32_keys, *_ = run(mode="fast", memory_scan="fp32")
    screened, _, screened_keys, _, missed, _ = run(mode="fast", memory_refresh=args.refresh)
    with blas_tails():
        blas, blas_steps, blas_keys, *_ = run(mode="fast")
    floor = {} if args.layer != -1 else \
        step_floor_ms(adapter, family, args.memory, edits[0], throughput(adapter.device))
    per_step = {"fast_ms_per_step": round(1000 * statistics.median(fast) / args.steps, 3), **floor}
    if floor:
        per_step["fast_over_floor"] = round(per_step["fast_ms_per_step"] / floor["floor_ms"], 2)
    median = statistics.median
    return {
        "family": family, "model": SIZED[family], "layer": args.layer, "device": str(adapter.device),
        "memory_size": args.memory, "steps_per_edit": args.steps, "edits": args.edits,
        "naive_median_s": round(median(naive), 4),
        "cached_median_s": round(median(fast), 4),
        "speedup": round(median(naive) / median(fast), 2),
        "same_steps": naive_steps == fast_steps,
        # the default (memory_scan=auto: the scan measured faster in the first scans of the edits) per step,
        # beside the floor computed from the shapes and this machine's measured throughput
        **scan, **per_step,
        "max_key_diff": float((naive_keys - fast_keys).abs().max()),
        # the same fast path with the patch's gradient in closed form instead of autograd (step=closed)
        "closed_step_median_s": round(median(closed), 4),
        "closed_step_ms_per_step": round(1000 * median(closed) / args.steps, 3),
        "closed_step_speedup": round(median(fast) / median(closed), 2),
        "closed_step_same_steps": closed_steps == fast_steps,
        "closed_step_max_key_diff": float((closed_keys - fast_keys).abs().max()),
        # the fast path scanning the whole memory every step (memory_reuse=false)
        "scan_every_step_median_s": round(median(every), 4),
        "reuse_speedup": round(median(every) / median(fast), 2),
        "scan_every_step_max_key_diff": float((naive_keys - every_keys).abs().max()),
        # reuse bounding every direction of the keys' move (memory_basis=0) against the default basis
        "unbased_reuse_median_s": round(median(unbased), 4),
        "basis_speedup": round(median(unbased) / median(fast), 2),
        "unbased_reuse_max_key_diff": float((fast_keys - unbased_keys).abs().max()),
        # the fast path with the plain fp32 memory scan instead of the bounded int8 one
        "cached_fp32_scan_median_s": round(median(fp32), 4),
        "fp32_scan_speedup": round(median(naive) / median(fp32), 2),
        "fp32_scan_max_key_diff": float((naive_keys - fp32_keys).abs().max()),
        # fast path plus the screened memory: a full scan every `refresh` steps
        "screened_refresh": args.refresh,
        "screened_median_s": round(median(screened), 4),
        "screened_speedup": round(median(naive) / median(screened), 2),
        "screened_max_key_diff": float((screened_keys - fast_keys).abs().max()),
        "screened_missed_topk_rows": missed,
        # the fast path with the tail's frozen head through BLAS products instead of oneDNN's linear
        # (benchmark/models/base.py `_route`; the same where oneDNN is missing)
        "blas_tail_median_s": round(median(blas), 4),
        "onednn_tail_speedup": round(median(blas) / median(fast), 2),
        "blas_tail_same_steps": blas_steps == fast_steps,
        "blas_tail_max_key_diff": float((blas_keys - fast_keys).abs().max()),
        "memory_build_s_per_1000": round(build_s, 2),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


if __name__ == "__main__":
    main()
