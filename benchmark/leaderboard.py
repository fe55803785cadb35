"""Gather runs into a leaderboard: `leaderboard.md`, `leaderboard.html` (one self-contained page:
sortable tables, the figures embedded) and the plots as PNG files.

    seqedit leaderboard RUNS_DIR [out=DIR] [columns=ER,GR_final,Loc_final,...]

One table per (model, dataset, data settings): runs are compared only where they streamed the
same data (the `data` group and the loop keys that decide what is measured). Rows are runs, named
by their folder below RUNS_DIR (the run id), with the settings that differ between them or from
the editor's defaults; columns are the registered metrics (or those `columns=` names, in its
order) as the mean over folds with its 95% interval (`[low, high]`, see
`benchmark.metrics`; mean ± std over folds where a metric has no interval, as counts and costs
do, or an older run lacks it), and the fold count. Within a table, every run whose interval
overlaps the best run's is bold: a difference inside the noise is not a ranking. Plots per table:
SR against the number of edits (T-Patcher Fig. 4), TrainR / TestR against edits (Fig. 7); per run, T-Patcher's
patch-by-mistake activation matrix (Fig. 5), named after the run so that none overwrites another.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import html
import json
import math
import os
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from benchmark.metrics import FOLDS_DIFFER_P, INTERVAL_METHOD, METRICS
from benchmark.record_types import EvalRecord, FoldEndRecord, Record, edits_in, parse_all

FOLDS_DIFFER_MARK = "†"
FOLDS_DIFFER = (f"{FOLDS_DIFFER_MARK}: the folds differ more than their examples' sampling explains (Cochran's Q, "
                f"p < {FOLDS_DIFFER_P}); the interval covers other examples of the same folds, not other folds: read "
                "the per-fold values in results.json")
COLUMNS = ["SR", "GR", "GR_pooled", "ER", "GR_final", "TrainR", "TestR", "Loc", "Loc_final", "Loc_rw", "Loc_rw_final",
           "old_kept", "ES", "PS", "NS", "S", "EM", "PM", "NM", "A_M", "A_FS", "A_mean", "E", "N",
           "edit_seconds_median", "run_seconds", "params_added", "params_added_pct"]
# loop keys that change what a run measures (which examples, which split): part of the data settings
MEASURING_LOOP_KEYS = ("split", "mode", "folds", "max_fold_examples", "test_limit")
# keys that change no number beyond float rounding: not shown as a difference between runs
# (editor.mode picks a path to the same computation: full forward, replayed blocks, kept positions)
NOT_SETTINGS = ("run_id", "output_dir", "resume", "loop.progress", "loop.save_state", "loop.state_every",
                "loop.state_overhead", "loop.eval_every", "logger.", "trainer.", "editor.mode")


def load_runs(root: Path) -> list[dict]:
    root = Path(root)
    return [_load_run(results.parent, root) for results in sorted(root.rglob("results.json"))]


def _load_run(folder: Path, root: Path) -> dict:
    """One run folder; a file that is not what a run writes is a one-line error naming it."""
    name = "config.yaml"
    try:
        cfg = OmegaConf.load(folder / name)
        config = OmegaConf.to_container(cfg, resolve=False)
        config["data"] = _shipped_path(config["data"])  # a shipped sample named alike from any checkout
        run = {"dir": folder, "id": folder.relative_to(root).as_posix() if folder != root else folder.name,
               "editor": str(cfg.editor.name), "model": str(cfg.model.name),
               "data": str(cfg.data.name) + (f"/{cfg.data.task}" if "task" in cfg.data else ""),
               "settings": _flat(config)}
        measured = {"data": config["data"],
                    "loop": {k: config.get("loop", {}).get(k) for k in MEASURING_LOOP_KEYS}}
        run["data_settings"] = _flat(measured)
        run["data_id"] = hashlib.sha1(json.dumps(measured, sort_keys=True, default=str).encode()).hexdigest()[:6]
        name = "edits.jsonl"  # absent from a folder that keeps the results only (benchmark/figures): no curves
        lines = (folder / name).read_text().splitlines() if (folder / name).exists() else []
        run["records"] = parse_all([json.loads(x) for x in lines if x.strip()])
        name = "results.json"
        results = json.loads((folder / name).read_text())
        metrics = results["metrics"]
        if not isinstance(metrics, dict):
            raise TypeError("metrics is not a mapping")
        if isinstance(results.get("wall_seconds"), (int, float)):  # the run's, not a fold's
            metrics = {**metrics, "run_seconds": {"mean": float(results["wall_seconds"]), "std": 0.0, "folds": 1}}
        run["metrics"] = metrics
    except Exception as err:  # YAML, JSON, a missing key or file: all mean "not a run folder"
        raise ValueError(f"{folder / name}: not a readable run file ({' '.join(str(err).split())[:100]})") from None
    return run


def _shipped_path(data: dict) -> dict:
    """The data settings with a path into a checkout's shipped samples (data/samples/...) named from
    there: runs made from two checkouts read the same sample and belong in one table."""
    path, marker = data.get("path"), os.sep + os.path.join("data", "samples", "")
    path = os.path.normpath(path) if isinstance(path, str) else ""
    return {**data, "path": path[path.rindex(marker) + 1:]} if marker in path else data


def _flat(node, prefix: str = "") -> dict[str, object]:
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def groups(runs: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """(model, dataset, data settings id) -> its runs, sorted by editor then run id."""
    out = defaultdict(list)
    for run in runs:
        out[(run["model"], run["data"], run["data_id"])].append(run)
    return {k: sorted(v, key=lambda r: (r["editor"], r["id"])) for k, v in sorted(out.items())}


def differing_settings(members: list[dict]) -> dict[str, dict[str, object]]:
    """run id -> the settings that set it apart: a key outside the editor group in which runs of
    the table differ, an editor key in which runs of its own editor differ (different editors
    differ in all of theirs, which says nothing), and an editor key the run set otherwise than the
    editor's defaults (a tuned value, or a default changed since the run)."""
    def values(key: str, runs: list[dict]) -> set[str]:  # a key a run lacks (another version's) is no difference
        return {_same(r["settings"][key]) for r in runs if key in r["settings"]}

    by_editor = defaultdict(list)
    for r in members:
        by_editor[r["editor"]].append(r)
    keys = {k for r in members for k in r["settings"] if not k.startswith(NOT_SETTINGS) and k != "editor.name"}
    shared = {k for k in keys if not k.startswith("editor.") and len(values(k, members)) > 1}
    own = {editor: {k for k in keys if k.startswith("editor.") and len(values(k, rs)) > 1}
           for editor, rs in by_editor.items()}
    out = {}
    for r in members:
        defaults = _editor_defaults(r["editor"], str(r["settings"].get("model.name")))
        changed = {k for k, v in r["settings"].items()
                   if k in defaults and _same(defaults[k]) != _same(v) and not k.startswith(NOT_SETTINGS)}
        out[r["id"]] = {k: r["settings"][k] for k in sorted(shared | own[r["editor"]] | changed)
                        if k in r["settings"]}
    return out


def _same(value) -> str:
    """A setting as JSON: a dataclass's tuple and YAML's list of the same values compare equal."""
    return json.dumps(value, default=str)


@functools.cache
def _editor_defaults(name: str, model: str) -> dict[str, object]:
    """The editor's keys as `editor=NAME model=MODEL` resolves them today (its presets' values
    filled in, flat and `editor.` prefixed, as a run's config.yaml holds them); empty for a name
    this checkout does not register (a run of another version, a user's plugin)."""
    from benchmark.config import ConfigError, compose, instantiate
    from benchmark.registry import UnknownNameError

    try:
        editor = dataclasses.asdict(instantiate(compose([f"editor={name}", f"model={model}"])).editor)
    except (UnknownNameError, ConfigError):  # not registered here, or not for this model: nothing to compare
        return {}
    return {k: v for k, v in _flat({"editor": editor}).items() if k != "editor.name"}


def _group_heading(key: tuple[str, str, str], all_groups: dict) -> tuple[str, str]:
    """The table's title and a line with the data settings that set it apart from the other
    tables of the same model and dataset (empty where there is none)."""
    model, data, data_id = key
    siblings = [g for k, g in all_groups.items() if k[:2] == key[:2]]
    title = f"{data} — {model}" + (f" — data {data_id}" if len(siblings) > 1 else "")
    if len(siblings) < 2:
        return title, ""
    mine = all_groups[key][0]["data_settings"]
    others = [g[0]["data_settings"] for g in siblings if g[0]["data_id"] != data_id]
    differ = sorted(k for k in mine if any(o.get(k) != mine[k] for o in others))
    return title, ", ".join(f"{k}={mine[k]}" for k in differ)


def _mean(stat: dict | None) -> float | None:
    if not stat or stat.get("mean") is None or (isinstance(stat["mean"], float) and math.isnan(stat["mean"])):
        return None
    return stat["mean"]


def _digits(name: str) -> int:
    return 0 if name in ("E", "N", "params_added", "run_seconds") else 2 if name in ("edit_seconds_median",
                                                                           "params_added_pct") else 3


def _cell_parts(stat: dict | None, name: str) -> tuple[str, str]:
    """(the mean, its interval or ± std) as text, one line: ("-", "") where there is no value."""
    if _mean(stat) is None:
        return "-", ""
    digits = _digits(name)
    if stat.get("ci95"):
        low, high = stat["ci95"]
        mark = " " + FOLDS_DIFFER_MARK if "folds_differ_p" in stat else ""
        return f"{stat['mean']:.{digits}f}", f"[{low:.{digits}f}, {high:.{digits}f}]{mark}"
    return f"{stat['mean']:.{digits}f}", (f"± {stat['std']:.{digits}f}" if stat.get("folds", 1) > 1 else "")


def _cell(stat: dict | None, name: str) -> str:
    return " ".join(t for t in _cell_parts(stat, name) if t)


def _chosen_columns(names: list[str] | None) -> list[str]:
    """The metrics a table shows, in this order (all of COLUMNS by default); an unknown name is a
    one-line error before anything is read or written."""
    if names is None:
        return list(COLUMNS)
    unknown = [n for n in names if n not in COLUMNS]
    if unknown or not names:
        raise ValueError(f"columns: {', '.join(unknown) or 'none given'} is not a leaderboard metric; "
                         f"choose from {', '.join(COLUMNS)}")
    return list(names)


def _columns(members: list[dict], chosen: list[str]) -> list[str]:
    return [c for c in chosen if any(c in r["metrics"] for r in members)]


def _best(members: list[dict], columns: list[str]) -> dict[str, set[str]]:
    """{metric: ids of the runs marked best}: the run with the best mean, and every run whose 95%
    interval overlaps that run's (where both have one); ranked metrics only, two runs or more."""
    best = {}
    for c in columns:
        direction = METRICS[c].higher_is_better
        scored = [r for r in members if _mean(r["metrics"].get(c)) is not None]
        if direction is None or len(scored) < 2:
            continue
        top = (max if direction else min)(scored, key=lambda r: r["metrics"][c]["mean"])
        top_stat = top["metrics"][c]
        best[c] = {r["id"] for r in scored
                   if r["metrics"][c]["mean"] == top_stat["mean"] or _overlap(r["metrics"][c], top_stat)}
    return best


def _overlap(a: dict, b: dict) -> bool:
    if not a.get("ci95") or not b.get("ci95"):
        return False
    return a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1]


def _is_best(run: dict, c: str, best: dict) -> bool:
    return run["id"] in best.get(c, ())


def _folds(run: dict) -> int:
    return max((s.get("folds", 0) for s in run["metrics"].values() if isinstance(s, dict)), default=0)


def _md(text: str) -> str:
    """Text from run folders (ids, config values) as Markdown shows it literally: code hosts render
    raw HTML in Markdown, and a `|` would cut the table's row."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def table(runs: list[dict], chosen: list[str] = COLUMNS) -> str:
    all_groups = groups(runs)
    legend = "; ".join(f"**{m}** {METRICS[m].description}" for m in chosen)
    out = ["# seqedit leaderboard", "", f"Mean over folds [95% interval: {INTERVAL_METHOD}] (± std over folds where a "
           "metric has no interval); one table per model, dataset and data settings; in bold per table, the best "
           f"run of each ranked metric and every run whose interval overlaps it. {FOLDS_DIFFER}. Metrics: {legend}",
           ""]
    for key, members in all_groups.items():
        columns = _columns(members, chosen)
        best = _best(members, columns)
        differ = differing_settings(members)
        title, data_line = _group_heading(key, all_groups)
        out += [f"## {_md(title)}", ""] + ([f"Data settings: {_md(data_line)}", ""] if data_line else [])
        show_settings = any(differ.values())
        out += ["| editor | run | folds | " + " | ".join(columns) + (" | settings |" if show_settings else " |"),
                "|---" * (len(columns) + 3 + show_settings) + "|"]
        for run in members:
            cells = [_cell(run["metrics"].get(c), c) for c in columns]
            cells = [f"**{text}**" if _is_best(run, c, best) else text for c, text in zip(columns, cells)]
            extra = [_md(_settings_text(differ[run["id"]]) or "-")] if show_settings else []
            row = [_md(run["editor"]), _md(run["id"]), str(_folds(run)), *cells, *extra]
            out.append("| " + " | ".join(row) + " |")
        run_time = _run_time(members)
        out += ["", run_time, ""] if run_time else [""]
    return "\n".join(out)


def _sr_curve(records: list[Record]) -> list[float]:
    """Mean over folds of SR over the first t edits, t = 1..(shortest fold)."""
    per_fold = defaultdict(list)
    for x in edits_in(records):
        per_fold[x.fold].append(float(x.success))
    curves = [[sum(s[: t + 1]) / (t + 1) for t in range(len(s))] for s in per_fold.values() if s]
    if not curves:
        return []
    n = min(map(len, curves))
    return [sum(c[t] for c in curves) / len(curves) for t in range(n)]


def _retain_curve(records: list[Record]) -> tuple[list[int], list[tuple[float, float]]]:
    """(TrainR, TestR) against edits: 1 at 0 edits, then the `eval` points, averaged over the
    folds that reached each point (a fold's last point is its fold_end)."""
    points = defaultdict(list)
    for x in records:
        if isinstance(x, EvalRecord) and x.TrainR is not None and x.TestR is not None:
            points[x.edits].append((x.TrainR, x.TestR))
    points[0] = [(1.0, 1.0)]
    xs = sorted(points)
    return xs, [tuple(sum(p[i] for p in points[e]) / len(points[e]) for i in range(2)) for e in xs]


def _style(k: int) -> dict:
    """Distinct marker and dash per line: editors that tie stay visible."""
    return {"marker": "os^vDx*"[k % 7], "linestyle": ["-", "--", ":", "-."][k % 4], "alpha": 0.85,
            "markersize": 4}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


def plots(runs: list[dict], out: Path) -> dict[tuple, list[Path]]:
    """The figures of each table, and each run's activation matrix: {table key: [PNG files]}."""
    import matplotlib

    matplotlib.use("Agg")
    made: dict[tuple, list[Path]] = {}
    for key, members in groups(runs).items():
        if not any(run["records"] for run in members):  # results-only folders: nothing to draw
            made[key] = []
            continue
        model, data, data_id = key
        slug = _slug(f"{data}-{Path(model).name}-{data_id}")
        title = f"{data}, {model}"
        made[key] = [_plot_sr(members, title, out / f"sr_vs_edits-{slug}.png"),
                     _plot_retain(members, title, out / f"retain_vs_edits-{slug}.png")]
        for run in members:
            reports = [x.editor for x in run["records"] if isinstance(x, FoldEndRecord)
                       and x.editor.get("activation_matrix")]
            if reports:
                made[key].append(_plot_activations(run, reports[0], title,
                                                   out / f"patch_activations-{_slug(run['id'])}-{slug}.png"))
    return made


def _plot_sr(members: list[dict], title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in members:
        curve = _sr_curve(run["records"])
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, label=_label(run, members), **_style(len(ax.lines)))
    ax.set(title=f"Success rate vs number of edits\n{title}", xlabel="number of edits",
           ylabel="SR over the edits so far", ylim=(-0.05, 1.05))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_retain(members: list[dict], title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for k, run in enumerate(members):
        xs, ys = _retain_curve(run["records"])
        for i in range(2):  # TrainR, TestR
            axes[i].plot(xs, [y[i] for y in ys], label=_label(run, members), **_style(k))
    for i, name in enumerate(("TrainR", "TestR")):
        axes[i].set(title=f"{name} vs number of edits", xlabel="number of edits", ylabel=name)
        axes[i].axhline(1.0, color="grey", lw=0.5)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_activations(run: dict, report: dict, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    matrix, labels = report["activation_matrix"], report["labels"]
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ticks = range(0, len(labels), max(1, len(labels) // 12))
    ax.set_xticks(list(ticks), [labels[i] for i in ticks], rotation=60, fontsize=7)
    ax.set_yticks(list(ticks), [labels[i] for i in ticks], fontsize=7)
    ax.set(title=f"{run['id']}: patch activation on each mistake (fold 0)\n{title}",
           xlabel="mistake (edit.token)", ylabel="patch")
    fig.colorbar(image, ax=ax, label="activation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _label(run: dict, members: list[dict]) -> str:
    """The editor's name, or the run id where the table holds the editor more than once."""
    return run["id"] if sum(r["editor"] == run["editor"] for r in members) > 1 else run["editor"]


PAGE_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:right;white-space:nowrap}
td.text,th.text{text-align:left}
th{background:#f2f2f2;cursor:pointer;user-select:none}th[aria-sort=descending]::after{content:" \\25BC"}
th[aria-sort=ascending]::after{content:" \\25B2"}td.best{font-weight:bold}.std{color:#777}
img{max-width:48%;margin:4px;border:1px solid #ddd}
dl{font-size:13px}dt{font-weight:bold;float:left;margin-right:.5em}"""
# Sorting by a click on a header; a cell's data-sort holds its mean (or text), missing ones sort last.
PAGE_SCRIPT = """document.querySelectorAll('table.board th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var dir = th.getAttribute('aria-sort') === 'descending' ? 'ascending' : 'descending';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir);
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
      if (x === '') return 1; if (y === '') return -1;
      var nx = parseFloat(x), ny = parseFloat(y), c;
      c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return dir === 'ascending' ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});"""


def page(runs: list[dict], figures: dict[tuple, list[Path]], times: list[tuple[str, float, str]] = (),
         chosen: list[str] = COLUMNS) -> str:
    """leaderboard.html: one file, no network (styles, script and figures inside it)."""
    esc = html.escape
    all_groups = groups(runs)
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>seqedit leaderboard</title>",
             f"<style>{PAGE_STYLE}</style></head><body><h1>seqedit leaderboard</h1>",
             f"<p>Mean over folds [95% interval: {esc(INTERVAL_METHOD)}] (± std over folds where a metric has no "
             "interval); one table per model, dataset and data settings; click a column to sort by it; in bold, the "
             f"best run of each ranked metric and every run whose interval overlaps it. {esc(FOLDS_DIFFER)}.</p><dl>"]
    parts += [f"<dt>{esc(m)}</dt><dd>{esc(METRICS[m].description)}</dd>" for m in chosen]
    parts.append("</dl>")
    for key, members in all_groups.items():
        columns = _columns(members, chosen)
        best = _best(members, columns)
        differ = differing_settings(members)
        title, data_line = _group_heading(key, all_groups)
        parts.append(f"<h2>{esc(title)}</h2>" + (f"<p>Data settings: {esc(data_line)}</p>" if data_line else ""))
        head = ["editor", "run", "folds", *columns, "settings"]
        parts.append("<table class='board'><thead><tr>" + "".join(
            f"<th class='{'text' if h in ('editor', 'run', 'settings') else 'num'}' title='"
            f"{esc(METRICS[h].description) if h in METRICS else h}'>{esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>")
        for run in members:
            folds = _folds(run)
            cells = [_text_cell(run["editor"]), _text_cell(run["id"]), f"<td data-sort='{folds}'>{folds}</td>"]
            for c in columns:
                stat = run["metrics"].get(c)
                mean = _mean(stat)
                value, spread = _cell_parts(stat, c)
                text = esc(value) + (f"<span class='std'> {esc(spread)}</span>" if spread else "")
                tip = f" title='std over folds {stat['std']}, n={stat.get('folds')}'" if mean is not None else ""
                cls = " class='best'" if _is_best(run, c, best) else ""
                cells.append(f"<td{cls}{tip} data-sort='{'' if mean is None else repr(float(mean))}'>{text}</td>")
            cells.append(_text_cell(_settings_text(differ[run["id"]]) or "-"))
            parts.append("<tr>" + "".join(cells) + "</tr>")
        run_time = _run_time(members)
        parts.append("</tbody></table>" + (f"<p>{esc(run_time)}</p>" if run_time else ""))
        for png in figures.get(key, []):
            data = base64.b64encode(png.read_bytes()).decode()
            parts.append(f"<img alt='{esc(png.stem)}' title='{esc(png.name)}' src='data:image/png;base64,{data}'>")
    parts.append(_times_html(list(times)))
    parts.append(f"<script>{PAGE_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _run_time(members: list[dict]) -> str:
    seconds = [r["metrics"]["run_seconds"]["mean"] for r in members if "run_seconds" in r["metrics"]]
    if not seconds:
        return ""
    return (f"Run time: {sum(seconds) / 60:.1f} min over {len(seconds)} run(s) (their run_seconds; training "
            "phases not included).")


DEMO_TIMES = "demo_times.json"  # written by `seqedit demo` beside its runs


def demo_times(root: Path) -> list[tuple[str, float, str]]:
    """(part, seconds, per-editor seconds as text) from a demo's time file under `root`, if any."""
    path = root / DEMO_TIMES
    if not path.exists():
        return []
    try:
        parts = json.loads(path.read_text())["parts"]
        return [(str(part), float(entry["seconds"]),
                 ", ".join(f"{name} {float(s):.0f} s" for name, s in entry["editors"].items()))
                for part, entry in parts.items()]
    except Exception as err:  # JSON or a missing key: not what the demo writes
        raise ValueError(f"{path}: not a readable demo time file ({' '.join(str(err).split())[:100]})") from None


def _times_markdown(times: list[tuple[str, float, str]]) -> str:
    if not times:
        return ""
    rows = [f"| {part} | {seconds / 60:.1f} | {editors} |" for part, seconds, editors in times]
    return "\n".join(["", "## Time per part", "", "Wall time of each demo part, training phases included.", "",
                      "| part | minutes | editors (training + run) |", "|---|---|---|", *rows, ""])


def _times_html(times: list[tuple[str, float, str]]) -> str:
    if not times:
        return ""
    esc = html.escape
    rows = "".join(f"<tr><td class='text'>{esc(part)}</td><td>{seconds / 60:.1f}</td><td class='text'>{esc(editors)}"
                   "</td></tr>" for part, seconds, editors in times)
    return ("<h2>Time per part</h2><p>Wall time of each demo part, training phases included.</p><table><thead>"
            f"<tr><th>part</th><th>minutes</th><th>editors (training + run)</th></tr></thead><tbody>{rows}"
            "</tbody></table>")


def _text_cell(text: str) -> str:
    return f"<td class='text' data-sort='{html.escape(text)}'>{html.escape(text)}</td>"


def build(root: str | Path, out: str | Path | None = None,
          columns: list[str] | None = None) -> tuple[Path, list[Path]]:
    """Writes leaderboard.md, leaderboard.html and the PNGs; returns the Markdown file and the PNGs.
    `columns`: the metrics the tables show, in this order (default: every one a run has)."""
    chosen = _chosen_columns(columns)
    root = Path(root)
    out = Path(out) if out else root
    runs = load_runs(root)
    if not runs:
        raise FileNotFoundError(f"{root}: no run with a results.json below it")
    out.mkdir(parents=True, exist_ok=True)
    times = demo_times(root)
    md = out / "leaderboard.md"
    md.write_text(table(runs, chosen) + _times_markdown(times))
    figures = plots(runs, out)
    (out / "leaderboard.html").write_text(page(runs, figures, times, chosen), encoding="utf-8")
    return md, [p for files in figures.values() for p in files]
