"""The published-code comparison's own plumbing (the comparison itself needs the authors' checkout
and a transformers 4 interpreter: `python -m benchmark.published_code`, docs/editors/memit.md)."""

from __future__ import annotations

import pytest
import torch


def test_the_published_source_is_copied_with_only_the_device_string_replaced(tmp_path):
    from benchmark.published_code import _published_source

    repo = tmp_path / "repo"
    for package in ("memit", "AlphaEdit", "rome", "util"):
        (repo / package).mkdir(parents=True)
        (repo / package / "__init__.py").write_text("")
    text = ('x = torch.zeros(3, device="cuda")\ny = t.to(\'cuda\')\nz = t.cuda()\n'
            'name = "cuda_graphs"  # not a device string\n')
    (repo / "memit" / "memit_main.py").write_text(text)
    (repo / "globals.yml").write_text("STATS_DIR: data/stats\n")
    _published_source(repo, tmp_path / "cpu", "cpu")
    assert (tmp_path / "cpu" / "memit" / "memit_main.py").read_text() == (
        'x = torch.zeros(3, device="cpu")\ny = t.to("cpu")\nz = t.to(\'cpu\')\n'
        'name = "cuda_graphs"  # not a device string\n')
    _published_source(repo, tmp_path / "gpu", "cuda")
    assert (tmp_path / "gpu" / "memit" / "memit_main.py").read_text() == text
    assert (tmp_path / "cpu" / "globals.yml").exists()


def test_the_comparison_reports_each_edits_largest_difference(tmp_path):
    from safetensors.torch import save_file

    from benchmark.published_code import compare

    theirs = {"0/w": torch.tensor([[1.0, -2.0]]), "1/w": torch.tensor([[0.5, 4.0]])}
    ours = {"0/w": torch.tensor([[1.0, -2.5]]), "1/w": torch.tensor([[0.5, 4.0]])}
    save_file(theirs, str(tmp_path / "published_deltas.safetensors"))
    save_file(ours, str(tmp_path / "seqedit_deltas.safetensors"))
    lines = compare(tmp_path)
    assert [(x["edit"], x["max_abs_difference"], x["published_update_max"]) for x in lines] == [(0, 0.5, 2.0),
                                                                                               (1, 0.0, 4.0)]


def test_a_missing_checkout_is_one_line(tmp_path, capsys):
    from benchmark.published_code import main

    with pytest.raises(SystemExit) as stop:
        main(["--repo", str(tmp_path), "--python", "python"])
    assert stop.value.code == 2 and "not a checkout of jianghoucheng/AlphaEdit" in capsys.readouterr().err
