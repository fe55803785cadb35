"""Metrics, registered once with their direction, and their computation from a fold's records.

T-Patcher (Huang et al. 2023, Sec. 3): SR, GR, ER, TrainR, TestR, E, N. Zhu et al. (2020):
A_M (modified facts), A_FS (unmodified facts, A_F\\S) and their mean A_mean, on held-out probes.
Loc (EasyEdit, `compute_locality_quality`): on each example's locality prompts, teacher-forced on
the file's locality answer, the share of the initial model's predicted tokens that the edited
model still predicts (per pair; averaged over an edit's pairs, then over edits). Loc_rw: the
share of locality pairs the model gets right or wrong as the initial model did (exact match of
the locality answer), a coarser reading.
GR is averaged per edit first (each edit's equivalents), then over edits with equivalents;
GR_pooled pools every equivalent of every edit, as T-Patcher's code counts them.
Std over folds is the sample standard deviation (ddof=1); one fold has std 0.

Intervals (`INTERVAL_METHOD`): a 95% percentile bootstrap. Within each fold, the items a metric
averages are resampled with replacement (edits for SR, GR, Loc and the median edit time; the
scored examples or locality pairs for ER, TrainR, TestR, Loc_final, old_kept, A_M and A_F\\S; a
ratio's numerator and denominator on the same resampled examples), the metric is computed on the
resample, and the fold values are averaged over folds as the reported mean is (folds are strata,
each resampled apart). The items are treated as exchangeable given the run: the interval says how
much the number would move with other examples of the same kind, not with another stream order.
"""

from __future__ import annotations

import math
import statistics
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmark.record_types import EditRecord


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
_metric("GR", True, "generalisation rate: right on the edit's equivalent inputs right after it (mean per edit, "
        "then over edits)")
_metric("GR_pooled", True, "generalisation rate over all equivalents of all edits pooled (T-Patcher's code)")
_metric("ER", True, "edit retain rate: the final model still gets every past edit right")
_metric("GR_final", True, "the final model right on the past edits' equivalents (mean per edit, then over edits)")
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
_metric("Loc", True, "locality (EasyEdit): share of the initial model's teacher-forced tokens on the edit's "
        "locality prompts still predicted, right after it")
_metric("Loc_final", True, "Loc of the final model over the fold's locality prompts")
_metric("Loc_rw", True, "share of the edit's locality prompts the model gets right or wrong as the initial model "
        "did (exact match of the file's locality answer), right after it")
_metric("Loc_rw_final", True, "Loc_rw of the final model over the fold's locality prompts")
_metric("old_kept", False, "modified facts whose edit prompt the final model still answers with the old (true) object")
_metric("ES", True, "efficacy score (ROME, CounterFact): final model, edited records whose edit prompt gives the new "
        "object a higher mean token log-probability than the true one")
_metric("PS", True, "paraphrase score (ROME): the same on each record's paraphrases (share per record, then mean)")
_metric("NS", True, "neighbourhood score (ROME): on each record's neighbourhood prompts, the true object still "
        "likelier than the new one")
_metric("S", True, "ROME's score: harmonic mean of ES, PS and NS")
_metric("EM", True, "efficacy magnitude (ROME): mean of P(new) - P(true) on the edit prompt, P the geometric mean "
        "token probability")
_metric("PM", True, "paraphrase magnitude (ROME): mean of P(new) - P(true) on the paraphrases")
_metric("NM", True, "neighbourhood magnitude (ROME): mean of P(true) - P(new) on the neighbourhood prompts")
_metric("A_M", True, "accuracy on modified facts (Zhu et al.)")
_metric("A_FS", True, "accuracy on unmodified facts, A_F\\S (Zhu et al.)")
_metric("A_mean", True, "mean of A_M and A_FS")


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def hmean(values: list[float]) -> float:
    """The harmonic mean (scipy.stats.hmean, as ROME's summarize.py takes it): 0 where a value is 0."""
    return 0.0 if min(values) <= 0 else len(values) / sum(1 / v for v in values)


def ratio(final: float | None, initial: float | None) -> float:
    """final / initial; NaN where either is missing (null in JSON) or initial is not positive."""
    if final is None or initial is None or not initial > 0:
        return math.nan
    return final / initial


def fold_metrics(edits: list[EditRecord], final: dict, initial: dict) -> dict[str, float]:
    """edits: the fold's records of edited examples; final: accuracies of the final model
    (`past_edits`, `train_subsample`, `test`, optional `modified`, `unmodified`); initial: of f0."""
    gr_per_edit = [mean(e.gr) for e in edits if e.gr]
    gr_all = [g for e in edits for g in e.gr]
    out = {
        "SR": mean([float(e.success) for e in edits]),
        "GR": mean(gr_per_edit),
        "GR_pooled": mean(gr_all),
        "ER": final["past_edits"],
        "GR_final": final.get("past_equivalents", math.nan),
        "TrainR": ratio(final["train_subsample"], initial["train_subsample"]),
        "TestR": ratio(final["test"], initial["test"]),
        "E": float(len(edits)),
        "N": float(final["initial_mistakes"]),
        "edit_seconds_median": statistics.median([e.seconds for e in edits]) if edits else math.nan,
        "params_added": float(final["params_added"]),
        "params_added_pct": 100.0 * final["params_added"] / final["base_params"],
        "failed_edits": float(sum(not e.success for e in edits)),
    }
    loc_per_edit = [mean(e.loc_tokens) for e in edits if e.loc_tokens]
    rw_per_edit = [mean(e.loc) for e in edits if e.loc]
    if loc_per_edit or "locality" in final:
        out["Loc"], out["Loc_final"] = mean(loc_per_edit), final.get("locality", math.nan)
        out["Loc_rw"], out["Loc_rw_final"] = mean(rw_per_edit), final.get("locality_rw", math.nan)
    if "old_kept" in final:
        out["old_kept"] = final["old_kept"]
    for name in ("ES", "PS", "NS", "EM", "PM", "NM"):  # ROME's CounterFact comparison, where measured
        if name in final:
            out[name] = final[name]
    if all(_finite(out.get(k)) for k in ("ES", "PS", "NS")):
        out["S"] = hmean([out["ES"], out["PS"], out["NS"]])
    if "modified" in final:
        out["A_M"], out["A_FS"] = final["modified"], final["unmodified"]
        out["A_mean"] = (out["A_M"] + out["A_FS"]) / 2
    return out


def aggregate(per_fold: dict[int, dict[str, float]], intervals: dict[str, list[float]] | None = None,
              differ: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """{metric: {mean, std, folds, ci95}} over folds, ignoring NaN/None (e.g. GR where no edit had
    equivalents); `ci95` where `intervals` has the metric (see `fold_intervals`)."""
    names = sorted({k for m in per_fold.values() for k in m}, key=list(METRICS).index)
    out = {}
    for name in names:
        values = [m[name] for m in per_fold.values() if m.get(name) is not None and not math.isnan(m[name])]
        out[name] = {
            "mean": mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "folds": len(values),
        }
        if intervals and name in intervals:
            out[name]["ci95"] = intervals[name]
        if differ and name in differ:  # the interval does not cover the folds' differences
            out[name]["folds_differ_p"] = differ[name]
    return out


# -- intervals ---------------------------------------------------------------------------------
RESAMPLES = 2000
INTERVAL_METHOD = (f"95% percentile bootstrap, {RESAMPLES} resamples: the items a metric averages (edits; scored "
                   "examples or locality pairs) resampled with replacement within each fold, the fold values "
                   "averaged over folds as the mean is")
Replicates = Callable[[np.random.Generator], np.ndarray]  # one fold's metric on RESAMPLES resamples


def _draws(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, n, size=(RESAMPLES, n))


def _boot_mean(values: list[float]) -> Replicates | None:
    v = np.asarray(values, dtype=float)
    return (lambda rng: v[_draws(rng, v.size)].mean(axis=1)) if v.size else None


def _boot_median(values: list[float]) -> Replicates | None:
    v = np.asarray(values, dtype=float)
    return (lambda rng: np.median(v[_draws(rng, v.size)], axis=1)) if v.size else None


def _boot_quotient(numerators: list[float], denominators: list[float]) -> Replicates | None:
    """sum(numerators) / sum(denominators) over the same resampled items: a ratio of two accuracies
    on the same examples (the pairing keeps their correlation), or GR_pooled's right equivalents
    over all equivalents with each edit resampled whole. NaN where the denominator sums to 0."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if not num.size or num.size != den.size or not den.sum():
        return None

    def replicates(rng):
        idx = _draws(rng, num.size)
        total = den[idx].sum(axis=1)
        return np.where(total > 0, num[idx].sum(axis=1) / np.where(total > 0, total, 1.0), np.nan)

    return replicates


def _boot_average(a: Replicates | None, b: Replicates | None) -> Replicates | None:
    return (lambda rng: (a(rng) + b(rng)) / 2) if a and b else None


def _boot_hmean(parts: list[Replicates | None]) -> Replicates | None:
    """The harmonic mean of resampled means, each part resampled on its own items (ROME's S)."""
    if not all(parts):
        return None

    def replicates(rng):
        values = np.stack([part(rng) for part in parts])
        with np.errstate(divide="ignore"):
            return np.where((values > 0).all(axis=0), len(parts) / (1 / values).sum(axis=0), 0.0)

    return replicates


def fold_replicates(edits: list[EditRecord], final: dict) -> dict[str, Replicates]:
    """The resampling of each metric of one fold that has items to resample; `final["items"]` holds
    the per-example scores of the final model (and f0's for the ratios), absent in older runs."""
    items = final.get("items", {})
    out = {
        "SR": _boot_mean([float(e.success) for e in edits]),
        "GR": _boot_mean([mean(e.gr) for e in edits if e.gr]),
        "GR_pooled": _boot_quotient([sum(e.gr) for e in edits], [len(e.gr) for e in edits]),
        "Loc": _boot_mean([mean(e.loc_tokens) for e in edits if e.loc_tokens]),
        "Loc_rw": _boot_mean([mean(e.loc) for e in edits if e.loc]),
        "edit_seconds_median": _boot_median([e.seconds for e in edits]),
        "ER": _boot_mean(items.get("past_edits", [])),
        "GR_final": _boot_mean([mean(g) for g in items.get("past_equivalents", [])]),
        "TrainR": _boot_quotient(items.get("train_subsample", []), items.get("train_subsample_initial", [])),
        "TestR": _boot_quotient(items.get("test", []), items.get("test_initial", [])),
        "Loc_final": _boot_mean(items.get("locality", [])),
        "Loc_rw_final": _boot_mean(items.get("locality_rw", [])),
        "old_kept": _boot_mean(items.get("old_kept", [])),
        "A_M": _boot_mean(items.get("modified", [])),
        "A_FS": _boot_mean(items.get("unmodified", [])),
    }
    for name in ("ES", "PS", "NS", "EM", "PM", "NM"):
        out[name] = _boot_mean(items.get(name, []))
    out["S"] = _boot_hmean([out["ES"], out["PS"], out["NS"]])
    out["A_mean"] = _boot_average(out["A_M"], out["A_FS"])
    return {k: v for k, v in out.items() if v is not None}


def fold_intervals(folds: dict[int, tuple[list[EditRecord], dict, dict]]) -> dict[str, list[float]]:
    """{metric: [low, high]}, the 95% interval of the mean over folds (`INTERVAL_METHOD`), from each
    fold's (edit records, final accuracies, metrics). Deterministic: each metric's resamples are
    seeded by its name, so a rebuilt results file has the same intervals. A metric gets an interval
    only where every fold that reports it has its items to resample (not so in older runs)."""
    per_fold = {f: fold_replicates(edits, final) for f, (edits, final, _) in folds.items()}
    out = {}
    for name in METRICS:
        reporting = [f for f, (_, _, metrics) in folds.items() if _finite(metrics.get(name))]
        if not reporting or any(name not in per_fold[f] for f in reporting):
            continue
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        with warnings.catch_warnings():  # a resample can leave a fold without a value (all-NaN column)
            warnings.simplefilter("ignore", RuntimeWarning)
            combined = np.nanmean(np.stack([per_fold[f][name](rng) for f in reporting]), axis=0)
            low, high = np.nanpercentile(combined, [2.5, 97.5])
        if np.isfinite(low) and np.isfinite(high):
            out[name] = [float(low), float(high)]
    return out


FOLDS_DIFFER_P = 0.01


def chi2_sf(x: float, df: int) -> float:
    """P(chi-square with `df` degrees of freedom > x), exact for integer df (no scipy)."""
    if x <= 0:
        return 1.0
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= x / 2 / i
            total += term
        return min(1.0, math.exp(-x / 2) * total)
    root, total, term = math.sqrt(x), 0.0, math.sqrt(x) * math.sqrt(2 / math.pi)
    for r in range(1, (df - 1) // 2 + 1):
        total += term
        term *= x / (2 * r + 1)
    return min(1.0, math.erfc(root / math.sqrt(2)) + math.exp(-x / 2) * total)


def folds_differ(folds: dict[int, tuple[list[EditRecord], dict, dict]]) -> dict[str, float]:
    """{metric: p} for the metrics whose fold values differ more than their items' sampling noise
    explains: Cochran's Q over the reporting folds, each fold weighted by the inverse variance of its
    own resamples (those of `fold_intervals`), against chi-square with folds - 1 degrees of freedom;
    only p < FOLDS_DIFFER_P is returned. The interval resamples items within folds, so it cannot
    cover such a difference (one fold where every edit failed, two where every edit held)."""
    per_fold = {f: fold_replicates(edits, final) for f, (edits, final, _) in folds.items()}
    out = {}
    for name in METRICS:
        reporting = [f for f, (_, _, metrics) in folds.items()
                     if _finite(metrics.get(name)) and name in per_fold[f]]
        if len(reporting) < 2:
            continue
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            variances = np.array([np.nanvar(per_fold[f][name](rng)) for f in reporting])
        values = np.array([folds[f][2][name] for f in reporting], dtype=float)
        if np.ptp(values) == 0 or not np.isfinite(variances).all():
            continue
        weights = 1 / np.maximum(variances, 1e-12)
        centre = float((weights * values).sum() / weights.sum())
        q = float((weights * (values - centre) ** 2).sum())
        p = chi2_sf(q, len(reporting) - 1)
        if p < FOLDS_DIFFER_P:
            out[name] = p
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# -- the table a run prints --------------------------------------------------------------------
# The lifelong-editing papers' columns after T sequential edits (WISE, AlphaEdit, GRACE's zsRE rows):
# EasyEdit edits every request, then scores all of them on the final model (editor.py, `if
# sequential_edit:`), with teacher-forced token accuracy (`test_prediction_acc`): so Rel. is ER,
# Gen. is GR_final and Loc. is Loc_final, under `model.metric=token_accuracy` to match their scoring.
PAPER_NAMES = (("Rel.", "ER"), ("Gen.", "GR_final"), ("Loc.", "Loc_final"))
# ROME's CounterFact columns (and MEMIT's, AlphaEdit's: Eff., Gen., Spe.), on the final model
COUNTERFACT_NAMES = (("Eff.", "ES"), ("Gen.", "PS"), ("Spe.", "NS"), ("Score", "S"))


def _value(stat: dict) -> str:
    if not _finite(stat.get("mean")):
        return "-"
    interval = f" [{stat['ci95'][0]:.3f}, {stat['ci95'][1]:.3f}]" if stat.get("ci95") else ""
    differ = " (folds differ)" if "folds_differ_p" in stat else ""
    return f"{stat['mean']:.3f}{interval}{differ}"


def report(metrics: dict[str, dict]) -> list[str]:
    """The run's metrics as lines: each with its mean, 95% interval and folds, then the papers'
    Rel./Gen./Loc. where the run measured them."""
    # the value column as wide as its widest cell: "(folds differ)" runs past 28 characters
    width = max([28, *(len(_value(stat)) + 2 for stat in metrics.values())])
    lines = [f"{'metric':<22}{'mean [95% interval]':<{width}}folds"]
    lines += [f"{name:<22}{_value(stat):<{width}}{stat.get('folds', 0)}" for name, stat in metrics.items()]
    for intro, names in (("after all edits, as the sequential-editing papers print it: ", PAPER_NAMES),
                         ("CounterFact's probability comparison, as ROME, MEMIT and AlphaEdit print it: ",
                          COUNTERFACT_NAMES)):
        paper = [(label, name) for label, name in names if _finite(metrics.get(name, {}).get("mean"))]
        if paper:
            lines.append(intro + "; ".join(f"{label} {_value(metrics[name])} (= {name})" for label, name in paper))
    return lines
