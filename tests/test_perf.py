"""The benchmark script's pieces that compute rather than time: the step floor from the shapes,
the scale curves' rows and plot (on a few edits), the suffix timing's edits, its arguments."""

import pytest

from benchmark.perf import examples, main, mistakes, plot_scale, step_floor_ms, stream_curve
from tests.conftest import tiny


def test_step_floor_is_the_larger_of_reading_and_arithmetic_per_part():
    adapter = tiny("tiny-llama")  # hidden 64, the tiny vocabulary
    edit = examples("decoder", 1)[0]
    speed = {"read_gb_s": 1.0, "matmul_gflops": 1.0}
    floor = step_floor_ms(adapter, "decoder", 1000, edit, speed)
    width, vocabulary = 64, adapter.model.get_output_embeddings().weight.shape[0]
    positions = len(adapter.encode([edit.prompt], [edit.target]).targets)
    assert floor["memory_scan_ms"] == pytest.approx(1000 * 1000 * width / 1e9, abs=1e-3)
    tail = max(2 * 4 * vocabulary * width, 2 * 2 * positions * vocabulary * width) / 1e9
    assert floor["tail_ms"] == pytest.approx(1000 * tail, abs=1e-3)
    assert floor["floor_ms"] == pytest.approx(floor["memory_scan_ms"] + floor["tail_ms"], abs=2e-3)
    double = step_floor_ms(adapter, "decoder", 2000, edit, speed)  # the scan grows with the memory, the tail not
    assert double["memory_scan_ms"] == pytest.approx(2 * floor["memory_scan_ms"], abs=1e-3)
    assert double["tail_ms"] == floor["tail_ms"]


def test_scale_curve_rows_and_plot(tmp_path, monkeypatch):
    import benchmark.perf as perf

    monkeypatch.setattr(perf, "STREAM_POINTS", (1, 4))
    rows = stream_curve("knn_lm", 4, steps=2)
    assert [r["edits"] for r in rows] == [1, 4] and all(r["seconds_per_edit"] > 0 for r in rows)
    memory = [{"family": "decoder", "memory_rows": n, "seconds_per_edit": s, "steps_per_edit": 2}
              for n, s in ((10_000, 0.1), (20_000, 0.2))]
    plot_scale(rows, memory, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 5000


def test_suffix_timing_edits_only_mistakes():
    """An example the classifier already answers would make no steps; its label is flipped."""
    adapter = tiny("tiny-bert")
    chosen = examples("classifier", 12)
    flipped = mistakes(adapter, chosen)
    assert adapter.scores([ex.prompt for ex in flipped], [ex.target for ex in flipped]) == [0.0] * 12
    assert [ex.prompt for ex in flipped] == [ex.prompt for ex in chosen]
    answers = tiny("tiny-llama")
    assert mistakes(answers, examples("decoder", 3)) == examples("decoder", 3)  # answers stay


@pytest.mark.parametrize("argv", [["scale", "--device", "cuda"], ["tpatcher", "--device", "cuda:7"],
                                  ["suffix", "--device", "gpu"]])
def test_device_refused_before_anything_runs(argv, capsys):
    import torch

    if "scale" not in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and "--device" in capsys.readouterr().err


def test_every_editor_has_a_timing_line_on_the_fixed_workload():
    """`python -m benchmark.perf editors`: one JSON line per editor; here one editor, its fields
    consistent with the run (edits timed, evaluations timed, the share outside the edits in [0, 1])."""
    from benchmark.perf import time_editor

    line = time_editor("grace", 8)
    assert line["editor"] == "grace" and line["edits"] >= 1 and line["edit_seconds_median"] > 0
    assert line["eval_seconds_median"] > 0 and line["final_eval_seconds"] > 0
    assert 0 <= line["outside_editor_share"] <= 1 and line["run_seconds"] > 0


@pytest.mark.parametrize("argv, message", [(["kl", "--chunk", "0"], "--chunk must be at least 1"),
                                           (["kl", "--model", "tiny-llama", "--model", "smollm2-135m"],
                                            "kl takes one model")])
def test_kl_timing_arguments_refused_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_kl_pass_is_timed_in_chunks_over_the_pool_sample():
    """`python -m benchmark.perf kl`: the chunks cover the pool sample (kl_batch or the whole pool)."""
    from benchmark.perf_kl import time_kl

    line = time_kl("ft_kl_last", 3, "tiny-llama")
    assert line["kl_chunk"] == 3 and line["outputs"] >= line["chunks"] > 1
    assert line["references_s"] > 0 and line["forward_backward_s"] > 0 and line["peak_rss_mb"] > 0
    with pytest.raises(SystemExit, match="has no KL term"):
        time_kl("ft_all", 3, "tiny-llama")


def test_the_scoring_orders_are_timed_with_the_same_scores():
    """`python -m benchmark.perf eval`: both orders score the same examples to the same scores, the
    order by real positions padding no more than the order by characters."""
    from benchmark.perf_eval import time_orders

    lines = {line["order"]: line for line in time_orders("tiny-llama", 1)}
    assert set(lines) == {"positions", "characters"} and all(x["same_scores"] for x in lines.values())
    assert lines["positions"]["padded_positions"] <= lines["characters"]["padded_positions"]
    assert lines["positions"]["examples"] > lines["positions"]["eval_batch_size"] // 2
