"""`make demo` / `seqedit demo`: initial models, every registered editor on the embedded facts
set (QA with SmolLM2-135M, fact-checking with MiniLM-L6) and on real zsRE records (SmolLM2-135M
edited directly, as the lifelong-editing papers do), then the leaderboard and plots.

`quick=true` runs the same pipeline on tiny models with a few examples (seconds; used by tests).
`parts=qa` (or `fc`, `zsre`, `qa,fc`) runs only those parts, `editors=a,b` only those editors,
`editors=all` every registered editor (the default leaves out the named variants, `VARIANTS`, and
on a CPU the runs estimated over `CPU_RUN_BUDGET`, naming them with their estimate).
Extra `key=value` overrides apply to every run. Before it starts it prints a time estimate per part
(`estimate`); each part's initial model is fitted and timed first, and every run's time is kept
(`demo_times.json` beside the runs, which the leaderboard shows, and this machine's timings in the
cache for later estimates). Demo-only change from the paper's settings, for 2 CPU cores: the KL
baselines sample 32 memory examples per step instead of 512, the training phases of SERA, KE and
MEND run one epoch on 300 D'train edits, and RLEdit's one trajectory of 20 edits (not 200; its
network takes one Adam step either way).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import NamedTuple

import torch

from benchmark.cache import cache_dir
from benchmark.config import compose, instantiate
from benchmark.init import initial_weights
from benchmark.leaderboard import DEMO_TIMES
from benchmark.records import RunRecords
from benchmark.registry import EDITORS
from benchmark.speed import matmul_gflops

PARTS = {"qa": "demo_qa", "fc": "demo_fc", "zsre": "demo_zsre"}
# of the part's model (SmolLM2 / MiniLM / SmolLM2; tiny-llama / tiny-bert / tiny-llama)
FAMILY = {"qa": "decoder", "fc": "classifier", "zsre": "decoder"}
# the tiny initial models' training is the tests' own (tests/conftest.py TRAINING), so one cached
# model serves both: a cold test session trains each once
_TINY_INIT = ["init.epochs=20", "init.lr=1e-3", "init.batch_size=32", "init.keep=last", "init.threads=1"]
QUICK = {"qa": ["model=tiny-llama", *_TINY_INIT, "loop.max_fold_examples=5", "loop.folds=[0]"],
         "fc": ["model=tiny-bert", *_TINY_INIT, "loop.max_fold_examples=5", "loop.folds=[0]"],
         # the zsRE part edits the pretrained model as the papers do: the tiny one untrained
         "zsre": ["model=tiny-llama", "init.epochs=0", "loop.max_fold_examples=3", "loop.folds=[0]"]}
# FT+KL: 32 pool examples a step, in one chunk, as the demo's timings were made
PER_EDITOR = {"ft_kl_all": ["editor.kl_batch=32", "editor.kl_chunk=32"],
              "ft_kl_last": ["editor.kl_batch=32", "editor.kl_chunk=32"],
              "sera": ["editor.train_epochs=1", "editor.train_examples=300"],
              "ke_style": ["editor.train_epochs=1", "editor.train_examples=300"],
              "mend_style": ["editor.train_epochs=1", "editor.train_examples=300"],
              "rledit": ["editor.trajectory=20"]}
_LOCATE = ["editor.stats_tokens=20000"]  # C from the Wikipedia sample's first 20,000 tokens, on the tiny model
QUICK_EDITOR = {"sera": ["editor.encoder=tiny-bert", "editor.train_examples=200"],
                "memit": [*_LOCATE, "editor.layers=[0]", "editor.mom2_update_weight=10"],
                "memit_seq": [*_LOCATE, "editor.layers=[0]", "editor.mom2_update_weight=10"],
                "alphaedit": [*_LOCATE, "editor.layers=[0]", "editor.l2=0.01"],
                "rome": [*_LOCATE, "editor.layers=[0]", "editor.context_templates=2"],
                "r_rome": [*_LOCATE, "editor.layers=[0]", "editor.context_templates=2"],
                "emmet": [*_LOCATE, "editor.layers=[0]", "editor.mom2_update_weight=10"],
                "rect": [*_LOCATE, "editor.layers=[0]", "editor.mom2_update_weight=10"],
                "prune": [*_LOCATE, "editor.layers=[0]", "editor.mom2_update_weight=10"],
                "wise": ["editor.layer=0"],
                "melo": ["editor.router_layer=0", "editor.lora_layers=[1]"],
                "ke_style": ["editor.edit_lr=0.1", "editor.train_examples=50"],
                "mend_style": ["editor.edit_lr=0.1", "editor.train_examples=50"],
                "rledit": ["editor.lr=1e-3", "editor.rank=8", "editor.hidden_blocks=1", "editor.trajectory=4",
                           "editor.back_depth=2"]}


INITIAL = "initial model"  # the time file's name for a part's initial-model fit


# The reference time file: a fresh clone's `make demo`, alone on 2 CPU cores (its leaderboard and
# log beside it, benchmark/figures/demo_cpu_2core/), and the timings of the runs that one leaves out
# on a CPU, from the runs its `made_by` names. Seconds of each demo run at the part's stream (and
# of each part's initial-model fit, `INITIAL`), training phases included and also given apart. An
# estimate prefers this machine's own timings (`TIMINGS`).
REFERENCE_TIMES = Path(__file__).resolve().parent / "figures" / "demo_cpu_2core" / DEMO_TIMES


def _reference() -> tuple[dict[str, dict[str, float]], dict[str, int], dict[str, dict[str, float]], float | None]:
    """From the reference time file: {part: {editor or INITIAL: seconds}}, {part: examples each
    editor streamed}, {part: {editor: seconds of its training phase}} (what a longer stream does
    not lengthen) and the reference machine's fp32 matmul GFLOP/s as its demo measured it
    (`cpu_gflops`; None in a file without it); empty where the file is not there (an installed copy
    without the figures: every run is then named as untimed) or says nothing of them."""
    try:
        times = json.loads(REFERENCE_TIMES.read_text())
        parts = times["parts"]
        return ({part: {name: float(s) for name, s in entry["editors"].items()} for part, entry in parts.items()},
                {part: int(entry["streamed"]) for part, entry in parts.items() if "streamed" in entry},
                {part: {e: float(t) for e, t in entry.get("training", {}).items()} for part, entry in parts.items()},
                float(times["speed"]["matmul_gflops"]) if "speed" in times else None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}, {}, {}, None


REFERENCE_SECONDS, REFERENCE_STREAMED, REFERENCE_TRAINING, REFERENCE_GFLOPS = _reference()
# a default demo on a CPU leaves a run estimated longer than this to `editors=all` (the slow
# locate-then-edit editors on SmolLM2, and on a slow CPU a few more), so that the demo ends within
# about half an hour of a fresh clone on 2 cores
CPU_RUN_BUDGET = 80.0
REFERENCE_MODELS = {"qa": "smollm2-135m", "fc": "minilm-l6", "zsre": "smollm2-135m"}
TIMINGS = "demo_timings.json"


# named presets of another editor (its published variant): left to `editors=all`, they would add
# about ten minutes of locate-then-edit runs on 2 CPU cores to what their base editor already shows
VARIANTS = {"memit_seq": "memit", "r_rome": "rome"}


def demo_editors(choice: str | None = None) -> list[str]:
    """`editors=a,b`, `editors=all` (every registered editor), or by default all but the variants."""
    if choice == "all":
        return EDITORS.names()
    if choice:
        return choice.split(",")
    return [name for name in EDITORS.names() if name not in VARIANTS]


def _streamed(cfg) -> int | None:
    """Examples a part streams per editor (folds x stream cap), what its time grows with; None
    where the stream is each fold's whole length (not known before the data is read)."""
    cap = cfg.loop.max_fold_examples
    folds = len(cfg.loop.folds) if cfg.loop.folds is not None else cfg.data.num_folds  # None: every fold
    return None if cap is None else folds * int(cap)


def _timing_key(part: str, editor: str, cfg) -> str:
    """A timing's name in this machine's time file: a run on another device is timed apart."""
    device = cfg.model.device
    return f"{part}/{editor}/{cfg.model.name}" + ("" if device == "cpu" else f"@{device}")


def _scaled(seconds: float, measured_at: int | None, streamed: int | None, fixed: float = 0.0) -> float | None:
    """A timing scaled from the examples it streamed to those of this run, but for its `fixed`
    part (a training phase, which the stream does not lengthen); None where either stream's length
    is unknown and they may differ."""
    if measured_at == streamed:
        return seconds
    return fixed + (seconds - fixed) * streamed / measured_at if streamed and measured_at else None


@functools.cache
def cpu_gflops() -> float:
    """This CPU's fp32 matmul GFLOP/s on this process's threads (measured once, a fraction of a
    second): two 2-core machines of one kind ran the demo's runs a median 1.51x apart."""
    return matmul_gflops(torch.device("cpu"), repeats=21, pick=min)


def reference_scale() -> float:
    """How many times longer a run takes here than on the reference machine, by their measured
    matmul throughput (the demo's SmolLM2 runs are bound by it); 1 where the file gives none."""
    return REFERENCE_GFLOPS / cpu_gflops() if REFERENCE_GFLOPS else 1.0


def _timings() -> dict:
    path = cache_dir() / TIMINGS
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:  # a damaged timing file only costs the estimate
        return {}


class Estimate(NamedTuple):
    """A part's estimated seconds and which runs (editors, `INITIAL`) it took from this machine's
    timings, from the reference machine's, or could not time."""

    seconds: float
    here: list[str]
    reference: list[str]
    unknown: list[str]

    def said(self, editors: list[str]) -> str:
        """In one line: what it covers, where its timings come from, what it lacks."""
        known = [e for e in editors if e not in self.unknown]
        if not known and INITIAL not in self.here + self.reference:
            return "no estimate" + (f"; no timing yet for {', '.join(self.unknown)}" if self.unknown else "")
        fit = " and the initial model's fit" if INITIAL in self.here + self.reference else ""
        line = (f"estimated {self.seconds / 60:.1f} min for {len(known)} of {len(editors)} editors{fit} "
                f"({len(self.here)} timings from this machine, {len(self.reference)} from the 2-core reference)")
        return line + (f"; no timing yet for {', '.join(self.unknown)}" if self.unknown else "")


def _editor_seconds(part: str, cfg, editor: str, mine: dict) -> tuple[float | None, str]:
    """A run's estimated seconds and where the timing comes from ("here", "reference"), scaled by
    the examples streamed; (None, "") where neither machine timed it at a comparable stream."""
    streamed = _streamed(cfg)
    own = mine.get(_timing_key(part, editor, cfg))
    seconds = _scaled(own["seconds"], own["examples"], streamed, own.get("training", 0.0)) if own else None
    if seconds is not None:
        return seconds, "here"
    if cfg.model.name == REFERENCE_MODELS[part] and cfg.model.device == "cpu" and \
            editor in REFERENCE_SECONDS.get(part, {}):
        measured_at = REFERENCE_STREAMED.get(part) or _streamed(instantiate(compose([f"experiment={PARTS[part]}"])))
        seconds = _scaled(REFERENCE_SECONDS[part][editor], measured_at, streamed,
                          REFERENCE_TRAINING.get(part, {}).get(editor, 0.0))
        if seconds is not None:
            return seconds * reference_scale(), "reference"
    return None, ""


def estimate(part: str, cfg, editors: list[str]) -> Estimate:
    """Estimated seconds of a part's runs, from this machine's last timing of each (part, editor,
    model, device), else the CPU reference machine's, scaled by the examples streamed and by this
    CPU's speed against the reference's (`reference_scale`), plus the initial model's fit where it
    is not cached yet."""
    mine, total, here, cited, unknown = _timings(), 0.0, [], [], []
    reference = instantiate(compose([f"experiment={PARTS[part]}"]))
    on_reference = cfg.model.name == REFERENCE_MODELS[part] and cfg.model.device == "cpu"
    weights = initial_weights(cfg.model, cfg.data, cfg.init)
    if weights is not None and not weights.exists():  # the initial model is fitted first
        fit = mine.get(_timing_key(part, INITIAL, cfg))
        if fit:
            total += fit["seconds"]
            here.append(INITIAL)
        elif on_reference and INITIAL in REFERENCE_SECONDS.get(part, {}) and \
                weights == initial_weights(reference.model, reference.data, reference.init):
            total += REFERENCE_SECONDS[part][INITIAL] * reference_scale()  # the very model the reference fitted
            cited.append(INITIAL)
        else:
            unknown.append(INITIAL)
    for editor in editors:
        seconds, source = _editor_seconds(part, cfg, editor, mine)
        if seconds is None:
            unknown.append(editor)
            continue
        total += seconds
        (here if source == "here" else cited).append(editor)
    return Estimate(total, here, cited, unknown)


def cpu_choice(part: str, cfg, editors: list[str]) -> tuple[list[str], dict[str, float]]:
    """On a CPU, the default demo's editors of a part: those whose run is estimated within
    `CPU_RUN_BUDGET` seconds (or not timed yet: they run, and are timed); the others, with their
    estimate, are left to `editors=all` (on a GPU every editor runs)."""
    if cfg.model.device != "cpu":
        return editors, {}
    mine = _timings()
    over = {e: s for e in editors if (s := _editor_seconds(part, cfg, e, mine)[0]) is not None and s > CPU_RUN_BUDGET}
    return [e for e in editors if e not in over], over


def _record(part: str, editor: str, cfg, seconds: float, root: Path, times: dict, training: float = 0.0) -> None:
    """This machine's timing of a run (for later estimates) and the demo's time file; `training`:
    the part of it its training phase took (0 when cached), which a longer stream does not scale."""
    mine = _timings()
    mine[_timing_key(part, editor, cfg)] = {"seconds": round(seconds, 1), "examples": _streamed(cfg),
                                            "training": round(training, 1)}
    RunRecords.write_json_to(cache_dir(), TIMINGS, mine)
    entry = times["parts"].setdefault(part, {"seconds": 0.0, "streamed": _streamed(cfg), "editors": {}})
    entry["editors"][editor] = round(seconds, 1)
    if training:
        entry.setdefault("training", {})[editor] = round(training, 1)
    entry["seconds"] = round(sum(entry["editors"].values()), 1)
    root.mkdir(parents=True, exist_ok=True)
    RunRecords.write_json_to(root, DEMO_TIMES, times)


def demo(args: list[str]) -> Path:
    quick = "quick=true" in args
    own = ("output_dir=", "parts=", "editors=")
    extra = [a for a in args if a != "quick=true" and not a.startswith(own)]
    root = Path(next((a.split("=", 1)[1] for a in args if a.startswith("output_dir=")), "runs/demo"))
    parts = next((a.split("=", 1)[1].split(",") for a in args if a.startswith("parts=")), list(PARTS))
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"demo parts={','.join(parts)}: unknown part(s) {unknown}; the parts are {list(PARTS)}")
    compose([])  # registers everything
    choice = next((a.split("=", 1)[1] for a in args if a.startswith("editors=")), None)
    editors = demo_editors(choice)
    for name in editors:
        EDITORS.get(name)  # an unknown name: one line listing the editors, before anything runs
    plan = [(part, PARTS[part], instantiate(compose([f"experiment={PARTS[part]}", *(QUICK[part] if quick else []),
                                                     *extra]))) for part in parts]
    runs = _announce(plan, editors, choice, root)
    start, times = time.perf_counter(), {"parts": {}}
    if any(cfg.model.device == "cpu" for _, _, cfg in plan):  # what a later reference file is scaled by
        times["speed"] = {"matmul_gflops": round(cpu_gflops(), 1), "threads": torch.get_num_threads()}
    for part, experiment, cfg in plan:
        _fit_initial(part, cfg, root, times)
        for editor in editors:
            families = EDITORS.get(editor).target.traits.families
            if FAMILY[part] not in families:
                print(f"[demo] {part} / {editor}: skipped, it edits {' or '.join(families)} models", flush=True)
            elif editor in runs[part]:  # else left to editors=all (said above)
                overrides = [f"experiment={experiment}", f"editor={editor}", *(QUICK[part] if quick else []),
                             *PER_EDITOR.get(editor, []), *(QUICK_EDITOR.get(editor, []) if quick else []), *extra,
                             f"output_dir={root / part}", f"run_id={editor}"]
                print(f"[demo] {part} / {editor} ({time.perf_counter() - start:.0f} s so far)", flush=True)
                _run_one(part, editor, overrides, root, times)
        if part in times["parts"]:
            print(f"[demo] {part} took {times['parts'][part]['seconds'] / 60:.1f} min", flush=True)
    from benchmark.leaderboard import build

    md, pngs = build(root)
    print(md.read_text())
    print(f"[demo] done in {time.perf_counter() - start:.0f} s; leaderboard {md}; plots: "
          + ", ".join(str(p) for p in pngs), flush=True)
    return md


def _announce(plan: list, editors: list[str], choice: str | None, root: Path) -> dict[str, list[str]]:
    """Print each part's settings, the editors, what the CPU leaves out and the estimate, before
    anything runs; return the editors each part runs."""
    for part, _, cfg in plan:
        data = cfg.data.name + (f"/{cfg.data.task}" if hasattr(cfg.data, "task") else "")
        print(f"[demo] {part}: model {cfg.model.name}, data {data}, folds {cfg.loop.folds} "
              f"of {cfg.data.num_folds}, stream <= {cfg.loop.max_fold_examples} examples a fold, memory <= "
              f"{cfg.data.pool_size}, D_tr {cfg.data.train_subsample}, D_test <= {cfg.loop.test_limit or 'all'}, "
              + (f"initial model: {cfg.init.epochs} epoch(s) on D'train" if cfg.init.epochs else
                 "the pretrained model edited directly"), flush=True)
    left = [f"{v} (of {b})" for v, b in VARIANTS.items() if v not in editors] if choice is None else []
    print(f"[demo] editors: {', '.join(editors)}; results under {root}"
          + (f"; not run, editors=all adds them: {', '.join(left)}" if left else ""), flush=True)
    if REFERENCE_GFLOPS and any(cfg.model.device == "cpu" and cfg.model.name == REFERENCE_MODELS[part]
                                for part, _, cfg in plan):
        print(f"[demo] this CPU: {cpu_gflops():.0f} GFLOP/s (fp32 matmul), the reference machine's "
              f"{REFERENCE_GFLOPS:.0f}: its timings are scaled by {reference_scale():.2f}", flush=True)
    runs = {}
    for part, _, cfg in plan:
        runs[part] = [e for e in editors if FAMILY[part] in EDITORS.get(e).target.traits.families]
        if choice is None:
            runs[part], over = cpu_choice(part, cfg, runs[part])
            if over:
                slow = ", ".join(f"{e} {s / 60:.1f} min" for e, s in over.items())
                print(f"[demo] {part}: on this CPU, left to editors=all (estimated over {CPU_RUN_BUDGET / 60:.1f} min "
                      f"a run): {slow}", flush=True)
        print(f"[demo] {part}: {estimate(part, cfg, runs[part]).said(runs[part])}", flush=True)
    return runs


def _fit_initial(part: str, cfg, root: Path, times: dict) -> None:
    """The part's initial model, fitted before its first editor so that its time is its own."""
    from benchmark.build import build_data
    from benchmark.init import prepare_initial_model
    from benchmark.models import build_model

    weights = initial_weights(cfg.model, cfg.data, cfg.init)
    if weights is not None and not weights.exists():
        print(f"[demo] {part}: fitting the initial model", flush=True)
        began = time.perf_counter()
        prepare_initial_model(build_model(cfg.model), build_data(cfg), cfg.model, cfg.init, False)
        _record(part, INITIAL, cfg, time.perf_counter() - began, root, times)


def _run_one(part: str, editor: str, overrides: list[str], root: Path, times: dict) -> None:
    """One editor's run of a part (its training phase first, cached), timed into the time file."""
    from benchmark.editor_training import train_editor
    from benchmark.run import run

    composed, began = compose(overrides), time.perf_counter()
    run_cfg, training = instantiate(composed), 0.0
    if EDITORS.get(editor).target.traits.training:
        print(f"[demo] {part} / {editor}: training phase {train_editor(run_cfg, False)}", flush=True)
        training = time.perf_counter() - began
    run(composed)
    _record(part, editor, run_cfg, time.perf_counter() - began, root, times, training)
