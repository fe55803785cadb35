"""Metrics, registered once with their direction, and their computation from a fold's records.

T-Patcher (Huang et al. 2023, Sec. 3): SR, GR, ER, TrainR, TestR, E, N. Zhu et al. (2020):
A_M (modified facts), A_FS (unmodified facts, A_F\\S) and their mean A_mean, on held-out probes.
Loc (MEND, SERAC, EasyEdit): on each example's locality prompts, the share answered as the initial
model answered them; seqedit compares right/wrong on the file's locality answer (which every
editor, those answering from a memory included, can be asked), where EasyEdit compares the
predicted tokens themselves.
GR is averaged per edit first (each edit's equivalents), then over edits with equivalents.
Std over folds is the sample standard deviation (ddof=1); one fold has std 0.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool | None  # None: a count or cost to report, not to rank by
    description: str


METRICS: dict[str, Metric] = {}


def _metric(name: str, higher: bool | None, description: str) -> None:
    if name in METRICS:
        raise ValueError(f"metric {name!r} is already registered")
    METRICS[name] = Metric(name, higher, description)


_metric("SR", True, "success rate: the edit holds right after it")
_metric("GR", True, "generalisation rate: right on the edit's equivalent inputs right after it")
_metric("ER", True, "edit retain rate: the final model still gets every past edit right")
_metric("TrainR", True, "accuracy on D_tr, final / initial")
_metric("TestR", True, "accuracy on D_test, final / initial")
_metric("E", None, "edits made (mistakes met in the stream)")
_metric("N", None, "mistakes the initial model makes on the fold")
_metric("edit_seconds_median", False, "median seconds per edit")
_metric("run_seconds", None, "wall seconds of the run: set-up, initial evaluation, stream and final evaluation "
        "(a training phase and a resumed run's earlier part not included)")
_metric("params_added", None, "parameters the editor added to the model")
_metric("params_added_pct", None, "model growth, percent of the initial parameter count")
_metric("failed_edits", False, "edits that did not hold right after them")
_metric("Loc", True, "locality: share of the edit's locality prompts answered as the initial model did, right after it")
_metric("Loc_final", True, "locality of the final model over the fold's locality prompts")
_metric("old_kept", False, "modified facts whose edit prompt the final model still answers with the old (true) object")
_metric("A_M", True, "accuracy on modified facts (Zhu et al.)")
_metric("A_FS", True, "accuracy on unmodified facts, A_F\\S (Zhu et al.)")
_metric("A_mean", True, "mean of A_M and A_FS")


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def ratio(final: float | None, initial: float | None) -> float:
    """final / initial; NaN where either is missing (null in JSON) or initial is not positive."""
    if final is None or initial is None or not initial > 0:
        return math.nan
    return final / initial


def fold_metrics(edits: list[dict], final: dict, initial: dict) -> dict[str, float]:
    """edits: the fold's records of edited examples; final: accuracies of the final model
    (`past_edits`, `train_subsample`, `test`, optional `modified`, `unmodified`); initial: of f0."""
    gr_per_edit = [mean(e["gr"]) for e in edits if e["gr"]]
    out = {
        "SR": mean([float(e["success"]) for e in edits]),
        "GR": mean(gr_per_edit),
        "ER": final["past_edits"],
        "TrainR": ratio(final["train_subsample"], initial["train_subsample"]),
        "TestR": ratio(final["test"], initial["test"]),
        "E": float(len(edits)),
        "N": float(final["initial_mistakes"]),
        "edit_seconds_median": statistics.median([e["seconds"] for e in edits]) if edits else math.nan,
        "params_added": float(final["params_added"]),
        "params_added_pct": 100.0 * final["params_added"] / final["base_params"],
        "failed_edits": float(sum(not e["success"] for e in edits)),
    }
    loc_per_edit = [mean(e["loc"]) for e in edits if e.get("loc")]
    if loc_per_edit or "locality" in final:
        out["Loc"], out["Loc_final"] = mean(loc_per_edit), final.get("locality", math.nan)
    if "old_kept" in final:
        out["old_kept"] = final["old_kept"]
    if "modified" in final:
        out["A_M"], out["A_FS"] = final["modified"], final["unmodified"]
        out["A_mean"] = (out["A_M"] + out["A_FS"]) / 2
    return out


def aggregate(per_fold: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """{metric: {mean, std}} over folds, ignoring NaN/None (e.g. GR where no edit had equivalents)."""
    names = sorted({k for m in per_fold.values() for k in m}, key=list(METRICS).index)
    out = {}
    for name in names:
        values = [m[name] for m in per_fold.values() if m.get(name) is not None and not math.isnan(m[name])]
        out[name] = {
            "mean": mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "folds": len(values),
        }
    return out
