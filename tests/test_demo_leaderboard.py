import json
from pathlib import Path

import pytest

from benchmark.config import CONFIG_DIR, compose, instantiate
from benchmark.demo import INITIAL, QUICK, REFERENCE_SECONDS, demo, estimate
from benchmark.init import initial_weights
from benchmark.run import run
from tests.conftest import FAMILIES, REAL_DATA, TRAINING, data_for

TINY_FOR = {"smollm2-135m": "tiny-llama", "minilm-l6": "tiny-bert"}


@pytest.fixture(autouse=True)
def _same_speed_as_the_reference(monkeypatch):
    """The estimates' arithmetic is checked at this CPU's speed equal to the reference's (scale 1);
    the scaling by speed has its own test."""
    monkeypatch.setattr("benchmark.demo.REFERENCE_GFLOPS", None)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_runs_a_step_on_a_tiny_model(experiment, tmp_path):
    cfg = compose([f"experiment={experiment}"])
    tiny = TINY_FOR.get(str(cfg.model.name), str(cfg.model.name))
    assert tiny in FAMILIES.values()
    files = []
    if cfg.data.name == "trex":  # an experiment on published files: the real samples in tests/fixtures/real
        files = [f"data.path={REAL_DATA / 'trex'}"]
    if cfg.data.name == "counterfact" and not cfg.data.path:  # fetched from ROME's address: a real fixture here
        files = [f"data.path={Path(__file__).parent / 'fixtures' / 'counterfact_rome.json'}", "data.num_folds=1"]
    result = run(compose([f"experiment={experiment}", f"model={tiny}", "init.epochs=0", "loop.folds=[0]",
                          "loop.max_fold_examples=2", "loop.progress=false", "editor.max_steps=2",
                          f"output_dir={tmp_path}", *files]))
    assert result["metrics"]["N"]["folds"] == 1


def test_quick_demo_writes_leaderboard_and_plots(tmp_path):
    md = demo(["quick=true", "parts=qa,fc", f"output_dir={tmp_path}", "loop.progress=false"])
    text = md.read_text()
    for editor in ("tpatcher", "ft_all", "ft_kl_last"):
        assert f"| {editor} |" in text
    assert "facts/qa" in text and "facts/claims" in text
    pngs = sorted(Path(tmp_path).glob("*.png"))
    names = " ".join(p.name for p in pngs)
    assert "sr_vs_edits" in names and "retain_vs_edits" in names and "patch_activations-qa_tpatcher" in names
    assert (Path(tmp_path) / "leaderboard.html").stat().st_size > sum(p.stat().st_size for p in pngs)  # embedded
    assert all(p.stat().st_size > 5000 for p in pngs)
    # each part's time, per editor, in the time file and the leaderboard; each run's own time
    times = json.loads((Path(tmp_path) / "demo_times.json").read_text())["parts"]
    assert set(times) == {"qa", "fc"} and {"tpatcher", "ft_all"} <= set(times["qa"]["editors"])
    assert times["qa"]["seconds"] == pytest.approx(sum(times["qa"]["editors"].values()), abs=0.2)
    assert "\n\n## Time per part" in text and "| run_seconds |" in text.replace("edit_seconds_median | ", "| ")
    # a later estimate reads this machine's timings of the same runs (the initial model is cached now)
    cfg = instantiate(compose(["experiment=demo_qa", *QUICK["qa"]]))
    runs = {name: s for name, s in times["qa"]["editors"].items() if name != INITIAL}
    seconds, here, reference, unknown = estimate("qa", cfg, list(runs))
    assert not unknown and not reference and set(here) == set(runs)
    assert seconds == pytest.approx(sum(runs.values()), abs=1.0)


def test_the_zsre_part_edits_real_records_and_prints_the_papers_columns(tmp_path, capsys):
    """The part on the shipped zsRE sample: the pretrained model edited directly (no initial fit),
    Rel./Gen./Loc. on the final model in each run's table, its own section of the leaderboard."""
    md = demo(["quick=true", "parts=zsre", "editors=grace", f"output_dir={tmp_path}", "loop.progress=false"])
    out = capsys.readouterr().out
    assert "zsre: model tiny-llama, data zsre, folds [0]" in out and "the pretrained model edited directly" in out
    assert "fitting the initial model" not in out
    text = md.read_text()
    assert "zsre" in text and "| grace |" in text
    times = json.loads((Path(tmp_path) / "demo_times.json").read_text())["parts"]
    assert set(times) == {"zsre"} and set(times["zsre"]["editors"]) == {"grace"}
    results = json.loads((Path(tmp_path) / "zsre" / "grace" / "results.json").read_text())
    assert {"ER", "GR_final", "Loc_final"} <= set(results["metrics"])


@pytest.mark.parametrize("part", sorted(p for p in QUICK if p != "zsre"))  # the zsRE part fits no initial model
def test_the_quick_demo_and_the_tests_share_one_tiny_initial_model(part):
    """A cold test session trains each tiny model once (the quick demo's settings are the tests')."""
    from benchmark.demo import FAMILY, PARTS

    demo_cfg = instantiate(compose([f"experiment={PARTS[part]}", *QUICK[part]]))
    tests_cfg = instantiate(compose(data_for(FAMILY[part], **TRAINING[FAMILY[part]])))
    assert initial_weights(demo_cfg.model, demo_cfg.data, demo_cfg.init) == initial_weights(
        tests_cfg.model, tests_cfg.data, tests_cfg.init)
    assert demo_cfg.init.threads == 1  # trained the same whichever of the two trains it first


def test_demo_estimate_scales_the_reference_timings_with_the_stream(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path))  # no timings of this machine, no initial model cached
    monkeypatch.delitem(REFERENCE_SECONDS["qa"], "grace")  # an editor without a reference timing
    reference, fit = REFERENCE_SECONDS["qa"]["tpatcher"], REFERENCE_SECONDS["qa"][INITIAL]
    cfg = instantiate(compose(["experiment=demo_qa"]))
    folds = len(cfg.loop.folds)
    # the reference as if timed at this stream, whatever the shipped file's stream
    monkeypatch.setattr("benchmark.demo.REFERENCE_STREAMED", {"qa": folds * cfg.loop.max_fold_examples})
    assert estimate("qa", cfg, ["tpatcher", "grace"]) == (reference + fit, [], [INITIAL, "tpatcher"], ["grace"])
    longer = instantiate(compose(["experiment=demo_qa", f"loop.max_fold_examples={2 * cfg.loop.max_fold_examples}"]))
    assert estimate("qa", longer, ["tpatcher"]).seconds == pytest.approx(2 * reference + fit)
    tiny = instantiate(compose(["experiment=demo_qa", "model=tiny-llama"]))  # the reference is SmolLM2's only
    assert estimate("qa", tiny, ["tpatcher"]) == (0.0, [], [], [INITIAL, "tpatcher"])
    # no fold list streams every fold; a whole-fold stream has no length before the data is read
    every = instantiate(compose(["experiment=demo_qa", "loop.folds=null"]))
    assert estimate("qa", every, ["tpatcher"]).seconds == pytest.approx(every.data.num_folds / folds * reference + fit)
    whole = instantiate(compose(["experiment=demo_qa", "loop.max_fold_examples=null"]))
    assert estimate("qa", whole, ["tpatcher"]) == (fit, [], [INITIAL], ["tpatcher"])
    # another initial model (other epochs) has no reference fit; a cached one costs nothing
    other = instantiate(compose(["experiment=demo_qa", "init.epochs=2"]))
    assert estimate("qa", other, ["tpatcher"]) == (reference, [], ["tpatcher"], [INITIAL])
    weights = initial_weights(cfg.model, cfg.data, cfg.init)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert estimate("qa", cfg, ["tpatcher"]) == (reference, [], ["tpatcher"], [])
    line = estimate("qa", other, ["tpatcher", "grace"]).said(["tpatcher", "grace"])
    assert line == ("estimated %.1f min for 1 of 2 editors (0 timings from this machine, 1 from the 2-core reference); "
                    "no timing yet for initial model, grace" % (reference / 60))


def test_demo_estimate_keeps_timings_apart_by_device(tmp_path, monkeypatch):
    """The reference timings are a CPU's: a GPU run is estimated from GPU timings of this machine
    only, which a CPU run's estimate does not read."""
    import torch

    from benchmark.demo import TIMINGS

    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # as on a machine with one GPU
    cpu = instantiate(compose(["experiment=demo_qa"]))
    gpu = instantiate(compose(["experiment=demo_qa", "model.device=cuda", "trainer.accelerator=gpu"]))
    assert estimate("qa", gpu, ["tpatcher"]) == (0.0, [], [], [INITIAL, "tpatcher"])
    streamed = len(cpu.loop.folds) * cpu.loop.max_fold_examples  # timings at the demo's own stream
    monkeypatch.setattr("benchmark.demo.REFERENCE_STREAMED", {"qa": streamed})
    (tmp_path / TIMINGS).write_text(json.dumps({"qa/tpatcher/smollm2-135m@cuda": {"seconds": 9.0, "examples": streamed},
                                                f"qa/{INITIAL}/smollm2-135m@cuda": {"seconds": 4.0,
                                                                                   "examples": streamed}}))
    assert estimate("qa", gpu, ["tpatcher"]) == (13.0, [INITIAL, "tpatcher"], [], [])
    assert estimate("qa", cpu, ["tpatcher"]) == (sum(REFERENCE_SECONDS["qa"][k] for k in (INITIAL, "tpatcher")),
                                                 [], [INITIAL, "tpatcher"], [])


def test_a_cpu_demo_leaves_runs_over_its_budget_to_editors_all(tmp_path, monkeypatch):
    """On a CPU the default demo runs the editors estimated within CPU_RUN_BUDGET, and the untimed
    ones (which then get timed); on a GPU every editor."""
    import torch

    from benchmark.demo import CPU_RUN_BUDGET, cpu_choice

    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setitem(REFERENCE_SECONDS["qa"], "tpatcher", CPU_RUN_BUDGET / 2)
    monkeypatch.setitem(REFERENCE_SECONDS["qa"], "rome", CPU_RUN_BUDGET * 2)
    monkeypatch.delitem(REFERENCE_SECONDS["qa"], "grace")
    monkeypatch.setattr("benchmark.demo.REFERENCE_STREAMED", {"qa": 40})
    cfg = instantiate(compose(["experiment=demo_qa", "loop.folds=[0,1]", "loop.max_fold_examples=20"]))
    chosen, over = cpu_choice("qa", cfg, ["tpatcher", "rome", "grace"])
    assert chosen == ["tpatcher", "grace"] and over == {"rome": pytest.approx(CPU_RUN_BUDGET * 2)}
    gpu = instantiate(compose(["experiment=demo_qa", "model.device=cuda", "trainer.accelerator=gpu"]))
    assert cpu_choice("qa", gpu, ["tpatcher", "rome"]) == (["tpatcher", "rome"], {})


def test_a_training_phase_is_not_scaled_with_the_stream(tmp_path, monkeypatch):
    """A run's training phase takes as long for any stream: only the rest of it scales."""
    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path))
    monkeypatch.setitem(REFERENCE_SECONDS["qa"], "mend_style", 100.0)
    monkeypatch.setattr("benchmark.demo.REFERENCE_TRAINING", {"qa": {"mend_style": 60.0}})
    monkeypatch.setattr("benchmark.demo.REFERENCE_STREAMED", {"qa": 40})
    cfg = instantiate(compose(["experiment=demo_qa", "loop.folds=[0,1]", "loop.max_fold_examples=40"]))  # 80
    weights = initial_weights(cfg.model, cfg.data, cfg.init)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")  # cached: no fit in the estimate
    assert estimate("qa", cfg, ["mend_style"]).seconds == pytest.approx(60.0 + 2 * 40.0)


def test_reference_timings_are_scaled_by_this_cpus_speed(tmp_path, monkeypatch):
    """On a CPU measured at half the reference machine's matmul throughput every reference timing
    (runs and the initial fit) counts twice; this machine's own timings are not scaled."""
    from benchmark.demo import TIMINGS, cpu_gflops, reference_scale

    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path))
    cfg = instantiate(compose(["experiment=demo_qa"]))
    streamed = len(cfg.loop.folds) * cfg.loop.max_fold_examples
    monkeypatch.setattr("benchmark.demo.REFERENCE_STREAMED", {"qa": streamed})
    same = estimate("qa", cfg, ["tpatcher"]).seconds
    monkeypatch.setattr("benchmark.demo.REFERENCE_GFLOPS", 2 * cpu_gflops())
    assert reference_scale() == 2.0 and cpu_gflops() > 0
    assert estimate("qa", cfg, ["tpatcher"]).seconds == pytest.approx(2 * same)
    (tmp_path / TIMINGS).write_text(json.dumps({"qa/tpatcher/smollm2-135m": {"seconds": 9.0, "examples": streamed}}))
    fit = REFERENCE_SECONDS["qa"][INITIAL]
    assert estimate("qa", cfg, ["tpatcher"]) == (pytest.approx(9.0 + 2 * fit), ["tpatcher"], [INITIAL], [])


def test_init_command_trains_and_reports(capsys):
    import json

    from benchmark.cli import main

    assert main(["init", "model=tiny-llama", "init.epochs=1", "loop.progress=false"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["weights"].endswith("model.safetensors")
    assert set(out["accuracy"]) == {"test", "train_subsample", "edit"}


def test_the_demo_leaves_named_variants_to_editors_all():
    """The default demo runs every editor but the named presets of another (VARIANTS), which
    `editors=all` adds; `editors=a,b` runs those alone."""
    from benchmark.demo import VARIANTS, demo_editors
    from benchmark.registry import EDITORS

    compose([])
    default = demo_editors()
    assert set(default) | set(VARIANTS) == set(EDITORS.names()) and not set(default) & set(VARIANTS)
    assert set(VARIANTS.values()) <= set(default)  # each variant's base editor is in the demo
    assert demo_editors("all") == EDITORS.names() and demo_editors("rome,r_rome") == ["rome", "r_rome"]


def test_the_estimates_reference_is_the_measured_runs_own_time_file():
    """One source: the reference seconds are read from the reference run's time file in
    benchmark/figures, not copied into the code."""
    from benchmark.demo import REFERENCE_TIMES

    parts = json.loads(REFERENCE_TIMES.read_text())["parts"]
    assert REFERENCE_SECONDS == {p: e["editors"] for p, e in parts.items()}
    assert {"qa", "fc"} <= set(REFERENCE_SECONDS) and REFERENCE_SECONDS["qa"][INITIAL] > 0
