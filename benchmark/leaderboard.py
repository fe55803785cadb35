"""Gather runs into a leaderboard (`leaderboard.md`) and plots (PNG).

    seqedit leaderboard RUNS_DIR [out=DIR]

Rows are runs (editor, model, dataset); columns the registered metrics as mean +- std over
folds; the best value of each ranked metric is bold within each (model, dataset) group. Plots:
SR against the number of edits (T-Patcher Fig. 4), TrainR / TestR against edits (Fig. 7), and
T-Patcher's patch-by-mistake activation matrix (Fig. 5).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from benchmark.metrics import METRICS

COLUMNS = ["SR", "GR", "ER", "TrainR", "TestR", "Loc", "Loc_final", "old_kept", "A_M", "A_FS", "A_mean", "E", "N",
           "edit_seconds_median", "params_added", "params_added_pct"]


def load_runs(root: Path) -> list[dict]:
    return [_load_run(results.parent) for results in sorted(Path(root).rglob("results.json"))]


def _load_run(folder: Path) -> dict:
    """One run folder; a file that is not what a run writes is a one-line error naming it."""
    name = "config.yaml"
    try:
        cfg = OmegaConf.load(folder / name)
        run = {"dir": folder, "editor": str(cfg.editor.name), "model": str(cfg.model.name),
               "data": str(cfg.data.name) + (f"/{cfg.data.task}" if "task" in cfg.data else "")}
        name = "edits.jsonl"
        run["lines"] = [json.loads(x) for x in (folder / name).read_text().splitlines() if x.strip()]
        name = "results.json"
        metrics = json.loads((folder / name).read_text())["metrics"]
        if not isinstance(metrics, dict):
            raise TypeError("metrics is not a mapping")
        run["metrics"] = metrics
    except Exception as err:  # YAML, JSON, a missing key or file: all mean "not a run folder"
        raise ValueError(f"{folder / name}: not a readable run file ({' '.join(str(err).split())[:100]})") from None
    return run


def _cell(stat: dict | None, name: str) -> str:
    if not stat or stat["mean"] is None or (isinstance(stat["mean"], float) and math.isnan(stat["mean"])):
        return "-"
    digits = 0 if name in ("E", "N", "params_added") else 2 if name in ("edit_seconds_median",
                                                                          "params_added_pct") else 3
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if stat.get("folds", 1) > 1 else "")


def table(runs: list[dict]) -> str:
    groups = defaultdict(list)
    for run in runs:
        groups[(run["model"], run["data"])].append(run)
    out = ["# seqedit leaderboard", "", "Mean ± std over folds; best of each ranked metric in bold per model and "
           "dataset. Metrics: " + "; ".join(f"**{m}** {METRICS[m].description}" for m in COLUMNS), ""]
    for (model, data), members in sorted(groups.items()):
        columns = [c for c in COLUMNS if any(c in r["metrics"] for r in members)]
        best = {}
        for c in columns:
            direction = METRICS[c].higher_is_better
            values = [r["metrics"][c]["mean"] for r in members if c in r["metrics"]
                      and r["metrics"][c]["mean"] is not None]
            if direction is not None and len(values) > 1:
                best[c] = max(values) if direction else min(values)
        out += [f"## {data} — {model}", "", "| editor | " + " | ".join(columns) + " |",
                "|---" * (len(columns) + 1) + "|"]
        for run in sorted(members, key=lambda r: r["editor"]):
            cells = []
            for c in columns:
                text = _cell(run["metrics"].get(c), c)
                if c in best and c in run["metrics"] and run["metrics"][c]["mean"] == best[c]:
                    text = f"**{text}**"
                cells.append(text)
            out.append(f"| {run['editor']} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _sr_curve(lines: list[dict]) -> list[float]:
    """Mean over folds of SR over the first t edits, t = 1..(shortest fold)."""
    per_fold = defaultdict(list)
    for x in lines:
        if x["type"] == "edit" and x["edited"]:
            per_fold[x["fold"]].append(float(x["success"]))
    curves = [[sum(s[: t + 1]) / (t + 1) for t in range(len(s))] for s in per_fold.values() if s]
    if not curves:
        return []
    n = min(map(len, curves))
    return [sum(c[t] for c in curves) / len(curves) for t in range(n)]


def _retain_curve(lines: list[dict]) -> tuple[list[int], list[tuple[float, float]]]:
    """(TrainR, TestR) against edits: 1 at 0 edits, then the `eval` points, averaged over the
    folds that reached each point (a fold's last point is its fold_end)."""
    points = defaultdict(list)
    for x in lines:
        if x["type"] == "eval" and x["TrainR"] is not None and x["TestR"] is not None:
            points[x["edits"]].append((x["TrainR"], x["TestR"]))
    points[0] = [(1.0, 1.0)]
    xs = sorted(points)
    return xs, [tuple(sum(p[i] for p in points[e]) / len(points[e]) for i in range(2)) for e in xs]


def _style(k: int) -> dict:
    """Distinct marker and dash per line: editors that tie stay visible."""
    return {"marker": "os^vDx*"[k % 7], "linestyle": ["-", "--", ":", "-."][k % 4], "alpha": 0.85,
            "markersize": 4}


def plots(runs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    groups = defaultdict(list)
    for run in runs:
        groups[(run["model"], run["data"])].append(run)
    for (model, data), members in sorted(groups.items()):
        slug = f"{data}-{Path(model).name}".replace("/", "_")
        fig, ax = plt.subplots(figsize=(6, 4))
        for run in sorted(members, key=lambda r: r["editor"]):
            curve = _sr_curve(run["lines"])
            if curve:
                ax.plot(range(1, len(curve) + 1), curve, label=run["editor"], **_style(len(ax.lines)))
        ax.set(title=f"Success rate vs number of edits\n{data}, {model}", xlabel="number of edits",
               ylabel="SR over the edits so far", ylim=(-0.05, 1.05))
        ax.legend(fontsize=8)
        fig.tight_layout()
        made.append(out / f"sr_vs_edits-{slug}.png")
        fig.savefig(made[-1], dpi=120)
        plt.close(fig)

        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for k, run in enumerate(sorted(members, key=lambda r: r["editor"])):
            xs, ys = _retain_curve(run["lines"])
            for i in range(2):  # TrainR, TestR
                axes[i].plot(xs, [y[i] for y in ys], label=run["editor"], **_style(k))
        for i, name in enumerate(("TrainR", "TestR")):
            axes[i].set(title=f"{name} vs number of edits", xlabel="number of edits", ylabel=name)
            axes[i].axhline(1.0, color="grey", lw=0.5)
        axes[1].legend(fontsize=8)
        fig.suptitle(f"{data}, {model}")
        fig.tight_layout()
        made.append(out / f"retain_vs_edits-{slug}.png")
        fig.savefig(made[-1], dpi=120)
        plt.close(fig)

        for run in members:
            reports = [x["editor"] for x in run["lines"] if x["type"] == "fold_end" and x.get("editor", {}).get(
                "activation_matrix")]
            if not reports:
                continue
            matrix, labels = reports[0]["activation_matrix"], reports[0]["labels"]
            fig, ax = plt.subplots(figsize=(6, 5))
            image = ax.imshow(matrix, cmap="viridis", aspect="auto")
            ticks = range(0, len(labels), max(1, len(labels) // 12))
            ax.set_xticks(list(ticks), [labels[i] for i in ticks], rotation=60, fontsize=7)
            ax.set_yticks(list(ticks), [labels[i] for i in ticks], fontsize=7)
            ax.set(title=f"{run['editor']}: patch activation on each mistake (fold 0)\n{data}, {model}",
                   xlabel="mistake (edit.token)", ylabel="patch")
            fig.colorbar(image, ax=ax, label="activation")
            fig.tight_layout()
            made.append(out / f"patch_activations-{run['editor']}-{slug}.png")
            fig.savefig(made[-1], dpi=120)
            plt.close(fig)
    return made


def build(root: str | Path, out: str | Path | None = None) -> tuple[Path, list[Path]]:
    root = Path(root)
    out = Path(out) if out else root
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(root)
    if not runs:
        raise FileNotFoundError(f"{root}: no run with a results.json below it")
    md = out / "leaderboard.md"
    md.write_text(table(runs))
    return md, plots(runs, out)
