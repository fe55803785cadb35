"""The metrics' 95% intervals (benchmark.metrics.fold_intervals): they cover the truth at about the
stated rate where the variance is known, they pair a ratio's two accuracies, and a run's
results.json carries them for every metric that averages items."""

from __future__ import annotations

import random

import numpy as np
import pytest

from benchmark.metrics import aggregate, fold_intervals, fold_metrics
from benchmark.record_types import EditRecord


def _fold(successes: list[bool], final_items: dict | None = None) -> tuple[list[EditRecord], dict, dict]:
    edits = [EditRecord(edited=True, success=s, gr=[float(s), 1.0], seconds=0.1 * (i + 1))
             for i, s in enumerate(successes)]
    items = final_items or {}
    final = {"items": items, "past_edits": float(np.mean(items.get("past_edits", [1.0]))),
             "train_subsample": 1.0, "test": 1.0, "initial_mistakes": len(edits), "params_added": 0,
             "base_params": 1}
    initial = {"train_subsample": 1.0, "test": 1.0}
    return edits, final, fold_metrics(edits, final, initial)


def test_sr_interval_covers_the_true_rate_at_about_95_percent():
    """Three folds of 40 edits, each a success with probability 0.7: the interval of the mean over
    folds holds 0.7 in 0.90-0.98 of 300 simulated runs (the binomial sd of that share is 0.013)."""
    rng = np.random.default_rng(7)
    covered = 0
    trials = 300
    for _ in range(trials):
        folds = {f: _fold(list(rng.random(40) < 0.7)) for f in range(3)}
        low, high = fold_intervals(folds)["SR"]
        covered += low <= 0.7 <= high
    assert 0.90 <= covered / trials <= 0.98, covered / trials


def test_interval_narrows_with_more_items_and_is_deterministic():
    rng = np.random.default_rng(0)
    small = {0: _fold(list(rng.random(20) < 0.5))}
    large = {0: _fold(list(rng.random(2000) < 0.5))}
    width = {k: np.subtract(*fold_intervals(v)["SR"][::-1]) for k, v in (("small", small), ("large", large))}
    assert width["large"] < width["small"] / 5  # 1/sqrt(n): 10x narrower for 100x the items
    assert fold_intervals(small) == fold_intervals(small)  # seeded: a rebuilt results file agrees


def test_a_ratio_resamples_its_two_accuracies_together():
    """TrainR = final / initial on the same examples. An editor that changes nothing has the ratio
    1 on every resample: its interval is the point [1, 1], which resampling the two apart would
    not give."""
    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    items = {"train_subsample": scores, "train_subsample_initial": scores, "test": scores, "test_initial": scores,
             "past_edits": [1.0, 0.0]}
    intervals = fold_intervals({0: _fold([True, False], items)})
    assert intervals["TrainR"] == intervals["TestR"] == [1.0, 1.0]
    assert intervals["ER"][0] < 0.5 < intervals["ER"][1]


def test_no_interval_without_items_in_every_reporting_fold():
    """An older run's fold_end has no items: its ER gets no interval rather than one from a subset."""
    folds = {0: _fold([True], {"past_edits": [1.0, 0.0]}), 1: _fold([True])}
    intervals = fold_intervals(folds)
    assert "ER" not in intervals and "SR" in intervals
    metrics = aggregate({f: m for f, (_, _, m) in folds.items()}, intervals)
    assert "ci95" in metrics["SR"] and "ci95" not in metrics["ER"] and "ci95" not in metrics["E"]


def test_pooled_and_per_edit_gr_differ_as_defined():
    """Per edit: mean of each edit's share, then over edits; pooled: all equivalents counted together."""
    edits = [EditRecord(success=True, gr=[1.0], seconds=1.0), EditRecord(success=True, gr=[0.0, 0.0, 0.0], seconds=1.0)]
    final = {"past_edits": 1.0, "train_subsample": 1.0, "test": 1.0, "initial_mistakes": 2, "params_added": 0,
             "base_params": 1}
    metrics = fold_metrics(edits, final, {"train_subsample": 1.0, "test": 1.0})
    assert metrics["GR"] == 0.5 and metrics["GR_pooled"] == 0.25


@pytest.mark.usefixtures("scripted")
def test_a_run_reports_intervals_that_hold_its_means(tmp_path):
    from benchmark.config import compose
    from benchmark.run import run

    cfg = compose(["editor=scripted", "data=handmade", "model=tiny-llama", f"output_dir={tmp_path}", "run_id=r",
                   "loop.progress=false", "editor.forget=true"])
    metrics = run(cfg)["metrics"]
    for name in ("SR", "GR", "GR_pooled", "ER", "TrainR", "TestR", "edit_seconds_median"):
        low, high = metrics[name]["ci95"]
        assert low <= metrics[name]["mean"] <= high, name
    assert "ci95" not in metrics["E"]  # a count: std over folds only


def test_chi2_survival_matches_the_tables():
    from benchmark.metrics import chi2_sf

    # chi-square upper critical values at p = 0.05 and 0.01 for 1-4 degrees of freedom
    for df, x05, x01 in ((1, 3.841, 6.635), (2, 5.991, 9.210), (3, 7.815, 11.345), (4, 9.488, 13.277)):
        assert abs(chi2_sf(x05, df) - 0.05) < 2e-4 and abs(chi2_sf(x01, df) - 0.01) < 2e-4
    assert chi2_sf(0.0, 3) == 1.0


def test_folds_that_differ_beyond_their_sampling_are_flagged_and_similar_ones_are_not():
    """Three folds: every edit failed in one, held in two (SR 0, 1, 1: the within-fold interval is
    [0.667, 0.667]); flagged. Three folds drawn at one rate: not flagged in 95 of 100 runs or more."""
    from benchmark.metrics import aggregate, fold_intervals, folds_differ

    def folds_of(successes):
        edits = {f: [EditRecord(success=s, seconds=1.0) for s in fold] for f, fold in enumerate(successes)}
        return {f: (e, {"items": {}}, {"SR": sum(x.success for x in e) / len(e)}) for f, e in edits.items()}

    split = folds_of([[0] * 10, [1] * 10, [1] * 10])
    differ = folds_differ(split)
    assert differ["SR"] < 0.01
    metrics = aggregate({f: m for f, (_, _, m) in split.items()}, fold_intervals(split), differ)
    assert metrics["SR"]["ci95"] == [2 / 3, 2 / 3] and "folds_differ_p" in metrics["SR"]
    rng = random.Random(1)
    flagged = sum("SR" in folds_differ(folds_of([[rng.random() < 0.7 for _ in range(40)] for _ in range(3)]))
                  for _ in range(100))
    assert flagged <= 5
