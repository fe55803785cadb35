"""`make demo` / `seqedit demo`: initial models, every registered editor on the embedded facts
set (QA with SmolLM2-135M, fact-checking with MiniLM-L6), then the leaderboard and plots.

`quick=true` runs the same pipeline on tiny models with a few examples (seconds; used by tests).
`parts=qa` (or `parts=fc`, `parts=qa,fc`) runs only those parts, `editors=a,b` only those editors.
Extra `key=value` overrides apply to every run. Demo-only change from the paper's settings, for
2 CPU cores: the KL baselines sample 32 memory examples per step instead of 512, and the
training phases (SERA, KE, MEND) run one epoch (KE and MEND on 300 D'train edits).
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmark.config import compose, instantiate
from benchmark.registry import EDITORS

PARTS = {"qa": "demo_qa", "fc": "demo_fc"}
FAMILY = {"qa": "decoder", "fc": "classifier"}  # of the part's model (SmolLM2 / MiniLM; tiny-llama / tiny-bert)
QUICK = {"qa": ["model=tiny-llama", "init.epochs=20", "loop.max_fold_examples=5", "loop.folds=[0]"],
         "fc": ["model=tiny-bert", "init.epochs=10", "loop.max_fold_examples=5", "loop.folds=[0]"]}
PER_EDITOR = {"ft_kl_all": ["editor.kl_batch=32"], "ft_kl_last": ["editor.kl_batch=32"],
              "sera": ["editor.train_epochs=1"],
              "ke_style": ["editor.train_epochs=1", "editor.train_examples=300"],
              "mend_style": ["editor.train_epochs=1", "editor.train_examples=300"]}
QUICK_EDITOR = {"sera": ["editor.encoder=tiny-bert", "editor.train_examples=200"],
                "memit": ["editor.layers=[0]", "editor.mom2_update_weight=10"],
                "alphaedit": ["editor.layers=[0]", "editor.l2=0.01"],
                "rome": ["editor.layers=[0]", "editor.context_templates=2"],
                "wise": ["editor.layer=0"],
                "ke_style": ["editor.edit_lr=0.1", "editor.train_examples=50"],
                "mend_style": ["editor.edit_lr=0.1", "editor.train_examples=50"]}


def demo_editors() -> list[str]:
    return EDITORS.names()


def demo(args: list[str]) -> Path:
    quick = "quick=true" in args
    own = ("output_dir=", "parts=", "editors=")
    extra = [a for a in args if a != "quick=true" and not a.startswith(own)]
    root = Path(next((a.split("=", 1)[1] for a in args if a.startswith("output_dir=")), "runs/demo"))
    parts = next((a.split("=", 1)[1].split(",") for a in args if a.startswith("parts=")), list(PARTS))
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"demo parts={','.join(parts)}: unknown part(s) {unknown}; the parts are {list(PARTS)}")
    from benchmark.editor_training import train_editor
    from benchmark.run import run

    compose([])  # registers everything
    editors = next((a.split("=", 1)[1].split(",") for a in args if a.startswith("editors=")), demo_editors())
    for name in editors:
        EDITORS.get(name)  # an unknown name: one line listing the editors, before anything runs
    plan = []
    for part, experiment in ((p, PARTS[p]) for p in parts):
        cfg = instantiate(compose([f"experiment={experiment}", *(QUICK[part] if quick else []), *extra]))
        plan.append((part, experiment, cfg))
        print(f"[demo] {part}: model {cfg.model.name}, data {cfg.data.name}/{cfg.data.task}, folds {cfg.loop.folds} "
              f"of {cfg.data.num_folds}, stream <= {cfg.loop.max_fold_examples} examples a fold, memory <= "
              f"{cfg.data.pool_size}, D_tr {cfg.data.train_subsample}, D_test <= {cfg.loop.test_limit}, "
              f"initial model: {cfg.init.epochs} epoch(s) on D'train", flush=True)
    print(f"[demo] editors: {', '.join(editors)}; results under {root}", flush=True)
    start = time.perf_counter()
    for part, experiment, _ in plan:
        for editor in editors:
            if FAMILY[part] not in EDITORS.get(editor).target.families:
                print(f"[demo] {part} / {editor}: skipped, it edits {' or '.join(EDITORS.get(editor).target.families)} "
                      "models", flush=True)
                continue
            overrides = [f"experiment={experiment}", f"editor={editor}", *(QUICK[part] if quick else []),
                         *PER_EDITOR.get(editor, []), *(QUICK_EDITOR.get(editor, []) if quick else []), *extra,
                         f"output_dir={root / part}", f"run_id={editor}"]
            print(f"[demo] {part} / {editor} ({time.perf_counter() - start:.0f} s so far)", flush=True)
            cfg = compose(overrides)
            if EDITORS.get(editor).target.needs_training:  # its training phase first (cached)
                print(f"[demo] {part} / {editor}: training phase {train_editor(instantiate(cfg), False)}", flush=True)
            run(cfg)
    from benchmark.leaderboard import build

    md, pngs = build(root)
    print(md.read_text())
    print(f"[demo] done in {time.perf_counter() - start:.0f} s; leaderboard {md}; plots: "
          + ", ".join(str(p) for p in pngs), flush=True)
    return md
