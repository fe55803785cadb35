"""Sweeps in W&B's format, run online (`wandb sweep` + `wandb agent`) or offline.

A sweep file is an ordinary W&B sweep configuration whose parameter names are seqedit config keys
(`editor.delta`, `data.pool_size`; `editor` itself for the editor's name) and whose metric is a
run's final metric, `final/NAME` (the mean over folds that every run logs at its end). Online, the
agent calls `python -m benchmark.cli run --key=value ...`; the CLI reads `--key=value` as
`key=value`. Offline, `seqedit sweep FILE --count N` asks W&B's own search engine (the `sweeps`
package: grid, random, bayes) for each next trial given the finished ones, and runs it here: a
normal run with its records, logged to CSV and to W&B offline. Trials are appended to
`trials.jsonl` in the sweep folder, so a second call continues the same search.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmark.config import ConfigError, compose, instantiate
from benchmark.metrics import METRICS


def _sweeps():
    """W&B's search engine, imported quietly: its pydantic models warn at import time, and an
    error message of ours must stay one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def _format(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def overrides_of(config: dict[str, dict[str, Any]]) -> list[str]:
    """W&B's {key: {"value": v}} as seqedit `key=value` overrides."""
    return [f"{key}={_format(spec['value'])}" for key, spec in config.items()]


def load_sweep(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    validate_sweep(spec, path)
    return spec


def _candidate_values(spec: dict[str, Any]) -> list[Any]:
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    return [spec[k] for k in ("min", "max") if k in spec]


def validate_sweep(spec: Any, path: str | Path) -> None:
    """W&B's own schema, then every parameter value against seqedit's config schema."""
    sweeps = _sweeps()

    if not isinstance(spec, dict) or not isinstance(spec.get("parameters"), dict):
        raise ConfigError(f"{path}: a sweep file needs a `parameters` mapping")
    metric = (spec.get("metric") or {}).get("name", "")
    if not metric.startswith("final/") or metric.split("/", 1)[1] not in METRICS:
        raise ConfigError(f"{path}: metric.name must be final/<metric> with a metric of: {', '.join(METRICS)}; "
                          f"got {metric!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sweeps.next_run(spec, [], validate=True)
        except Exception as err:  # jsonschema / pydantic errors: reduce to their first line
            raise ConfigError(f"{path}: not a valid W&B sweep: {str(err).splitlines()[0]}") from None
    params = spec["parameters"]
    fixed = [f"{k}={_format(v['value'])}" for k, v in params.items() if "value" in v]
    for key, value_spec in params.items():
        for value in _candidate_values(value_spec):
            try:
                instantiate(compose([*fixed, f"{key}={_format(value)}"]))
            except (ConfigError, ValueError, KeyError) as err:
                raise ConfigError(f"{path}: parameter {key}={value!r}: {' '.join(str(err).split())}") from None


def _read_trials(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextmanager
def _wandb_files_in(folder: Path):
    """W&B's offline files (its cache, config, data and artifacts, otherwise under the home
    directory) kept in the sweep's folder, for the trials' runs only."""
    names = ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")  # the logs: in the run
    before = {n: os.environ.get(n) for n in names}
    os.environ.update({n: str((folder / ".wandb").resolve()) for n in names})
    try:
        yield
    finally:
        for n, value in before.items():
            if value is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = value


def run_sweep(path: str | Path, count: int, extra: list[str], out_root: str | Path = "runs/sweeps") -> Path:
    """Propose and run `count` more trials of the sweep; returns the sweep folder."""
    sweeps = _sweeps()
    from benchmark.run import run

    if count < 1:
        raise ValueError(f"--count must be at least 1, got {count}")
    spec = load_sweep(path)
    if extra:
        instantiate(compose(extra + overrides_of({k: v for k, v in spec["parameters"].items() if "value" in v})))
    metric = spec["metric"]["name"]
    folder = Path(out_root) / Path(path).stem
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    trials_path = folder / "trials.jsonl"
    trials = _read_trials(trials_path)
    for _ in range(count):
        history = [sweeps.SweepRun(name=t["run_id"], state=sweeps.RunState.finished, config=t["config"],
                                   summary_metrics={metric: t["metric"]} if t["metric"] is not None else {})
                   for t in trials]
        np.random.seed(len(trials))  # random and bayes proposals repeat for the same history
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proposal = sweeps.next_run(spec, history)
        if proposal is None:
            print(f"[sweep] {folder.name}: the search space is exhausted after {len(trials)} trials", flush=True)
            break
        run_id = f"trial-{len(trials):03d}"
        overrides = [*overrides_of(proposal.config), *extra, f"output_dir={folder}", f"run_id={run_id}",
                     "logger.wandb=true", "logger.wandb_mode=offline"]
        print(f"[sweep] {folder.name} {run_id}: {' '.join(overrides_of(proposal.config))}", flush=True)
        with _wandb_files_in(folder):
            results = run(compose(overrides))
        value = results["metrics"].get(metric.split("/", 1)[1], {}).get("mean")
        trial = {"run_id": run_id, "config": proposal.config, "overrides": overrides, "metric": value,
                 "run_dir": results["run_dir"]}
        with trials_path.open("a") as handle:
            handle.write(json.dumps(trial) + "\n")
        trials.append(trial)
    return folder


def _best_trials(folder: Path) -> tuple[dict[str, dict[str, Any]], str, str]:
    spec = yaml.safe_load((folder / "sweep.yaml").read_text())
    metric, goal = spec["metric"]["name"], spec["metric"].get("goal", "maximize")
    best: dict[str, dict[str, Any]] = {}
    for trial in _read_trials(folder / "trials.jsonl"):
        if trial["metric"] is None:
            continue
        config = yaml.safe_load((Path(trial["run_dir"]) / "config.yaml").read_text())
        editor = config["editor"]["name"]
        sign = 1 if goal == "maximize" else -1
        if editor not in best or sign * trial["metric"] > sign * best[editor]["metric"]:
            best[editor] = trial
    return best, metric, goal


def test_best(folder: str | Path) -> list[Path]:
    """Run each editor's best trial again on the reported protocol (`loop.split=edit`: D_edit
    streamed, TestR on D_test), into `test-<trial>` beside the trials; returns their folders."""
    from benchmark.run import run

    folder = Path(folder)
    best, _, _ = _best_trials(folder)
    out = []
    for _editor, trial in sorted(best.items()):
        overrides = [o for o in trial["overrides"] if not o.startswith(("loop.split=", "run_id="))]
        results = run(compose([*overrides, "loop.split=edit", f"run_id=test-{trial['run_id']}"]))
        out.append(Path(results["run_dir"]))
    return out


REPORTED = ["SR", "GR", "ER", "TrainR", "TestR", "A_M", "A_FS", "A_mean"]


def sweep_leaderboard(folder: str | Path) -> str:
    """The best trial per editor for the sweep's metric, with its settings (markdown); where the
    best trial was also run on the reported protocol (`seqedit sweep FILE --test`), its metrics."""
    folder = Path(folder)
    best, metric, goal = _best_trials(folder)
    tuned_on = {json.loads((Path(t["run_dir"]) / "results.json").read_text()).get("split", "edit")
                for t in best.values()}
    where = "D_val (loop.split=val)" if tuned_on == {"val"} else "the edit stream itself (loop.split=edit)"
    lines = [f"# Sweep {folder.name}: best trial per editor by {metric} ({goal}), chosen on {where}", "",
             "Test columns: the chosen trial run again on D_edit with TestR on D_test (`seqedit sweep FILE --test`); "
             "`-` where it was not run.", "",
             f"| editor | trial | {metric} (tuning) | " + " | ".join(f"test {m}" for m in REPORTED)
             + " | settings | resolved config |",
             "|---|---|---|" + "---|" * len(REPORTED) + "---|---|"]
    for editor, trial in sorted(best.items()):
        settings = " ".join(f"`{o}`" for o in overrides_of(trial["config"]))
        config = Path(trial["run_dir"]) / "config.yaml"
        test_path = folder / f"test-{trial['run_id']}" / "results.json"
        tested = json.loads(test_path.read_text())["metrics"] if test_path.exists() else {}
        cells = [f"{tested[m]['mean']:.4f}" if tested.get(m, {}).get("mean") is not None else "-" for m in REPORTED]
        lines.append(f"| {editor} | {trial['run_id']} | {trial['metric']:.4f} | " + " | ".join(cells)
                     + f" | {settings} | {config} |")
    text = "\n".join(lines) + "\n"
    (folder / "best.md").write_text(text)
    return text
