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
    assert lines[0]["relative_frobenius"] == pytest.approx(0.5 / 5 ** 0.5) and lines[1]["relative_frobenius"] == 0


def test_a_missing_checkout_is_one_line(tmp_path, capsys):
    from benchmark.published_code import main

    with pytest.raises(SystemExit) as stop:
        main(["--repo", str(tmp_path), "--python", "python"])
    assert stop.value.code == 2 and "not a checkout of jianghoucheng/AlphaEdit" in capsys.readouterr().err


# A stand-in for EasyEdit's easyeditor/models/wise/WISE.py with the two lines the comparison changes
# (W:30-45 `euc`, `_cal_ft_loss`'s label mask), to check the change without the checkout.
FAKE_WISE = """
import torch
from torch.nn import CrossEntropyLoss


def euc(query, key, config, act_mask=None, infer=False):
    l2_norm = torch.norm(key - query, dim=-1)
    if act_mask is not None:
        return torch.sum(l2_norm * act_mask, dim=1) / torch.sum(act_mask, dim=1)
    return torch.mean(l2_norm, dim=-1)


class WISE:
    def _cal_ft_loss(self, tokens, last_prompt_token_loc):
        loss = tokens["loss"]
        label_mask = torch.zeros_like(loss, dtype=torch.bool)
        for i, col_index in enumerate(last_prompt_token_loc):
            label_mask[i, col_index - 1:] = True
        return ((loss * label_mask).sum(1) / label_mask.sum(1)).mean()
"""


def test_the_wise_comparison_changes_only_the_two_reductions(tmp_path, monkeypatch):
    import importlib.util

    from benchmark.published_wise import _published_package, _seqedit_reductions

    repo = tmp_path / "EasyEdit"
    (repo / "easyeditor" / "models" / "wise" / "merge").mkdir(parents=True)
    (repo / "easyeditor" / "models" / "wise" / "WISE.py").write_text(FAKE_WISE)
    (repo / "easyeditor" / "models" / "wise" / "__init__.py").write_text("from .wise_main import *\n")
    _published_package(repo, tmp_path / "work")
    assert (tmp_path / "work" / "easyeditor" / "models" / "wise" / "__init__.py").read_text() == ""
    assert "build_target_labels" in (tmp_path / "work" / "easyeditor" / "util" / "vl_utils.py").read_text()
    spec = importlib.util.spec_from_file_location("fake_wise", tmp_path / "work" / "easyeditor" / "models" /
                                                  "wise" / "WISE.py")
    published = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(published)
    # 3 rows (2 edit rows and the unrelated one), the first left-padded by 2
    query, key = torch.zeros(3, 4, 1), torch.tensor([[9.0, 9.0, 1.0, 3.0], [2.0, 2.0, 2.0, 2.0], [1.0] * 4])[..., None]
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    assert published.euc(query[:2], key[:2], None).tolist() == [5.5, 2.0]  # the padding counted
    loss = torch.tensor([[0.0, 0.0, 0.0, 6.0]])
    assert published.WISE()._cal_ft_loss({"loss": loss}, torch.tensor([3])).item() == 3.0  # one prompt position too
    valid = {"mask": mask}
    _seqedit_reductions(published, valid)
    assert published.euc(query[:2], key[:2], None).tolist() == [2.0, 2.0]  # real positions only
    assert published.euc(query[2:], key[2:], None).tolist() == [1.0]
    assert published.euc(query[:2], key[:2], None, infer=True).tolist() == [5.5, 2.0]  # routing untouched
    assert published.WISE()._cal_ft_loss({"loss": loss}, torch.tensor([3])).item() == 6.0  # the answer only


def test_the_wise_comparison_needs_an_easyedit_checkout(tmp_path, capsys):
    from benchmark.published_wise import main

    with pytest.raises(SystemExit) as stop:
        main(["--repo", str(tmp_path), "--python", "python"])
    assert stop.value.code == 2 and "not a checkout of zjunlp/EasyEdit" in capsys.readouterr().err


def test_the_ultraedit_comparison_reads_the_named_functions_from_the_source(tmp_path, capsys):
    from benchmark.published_ultraedit import FUNCTIONS, main, published_functions

    repo = tmp_path / "UltraEdit"
    (repo / "editor").mkdir(parents=True)
    with pytest.raises(SystemExit) as stop:  # no checkout: one line, exit 2
        main(["--repo", str(repo)])
    assert stop.value.code == 2 and "no editor/ultraedit.py" in capsys.readouterr().err
    # the files import what this environment lacks (wandb, nltk): only the named definitions run
    (repo / "editor" / "ultraedit.py").write_text(
        "import wandb\n\ndef pad_tensor(t, n):\n    return t[:n]\n\nclass ULTRAEDIT:\n"
        "    def cache(self, tuples):\n        return len(tuples)\n\n"
        "    def predict_param_shifts(self):\n        return math.pi\n")
    (repo / "util.py").write_text("import nltk\n" + "".join(
        f"def {name}(*a):\n    return '{name}'\n\n" for name in FUNCTIONS["util.py"]))
    (repo / "nets.py").write_text("class RunningMeanStd:\n    pass\n")
    scope = published_functions(repo)
    assert scope["ULTRAEDIT.cache"](None, [1, 2]) == 2 and scope["ULTRAEDIT.predict_param_shifts"](None) > 3.14
    assert scope["pad_tensor"]([1, 2, 3], 2) == [1, 2] and scope["TracerDict"]() == "TracerDict"
    assert scope["RunningMeanStd"].__name__ == "RunningMeanStd" and "wandb" not in scope


def test_the_prune_comparison_restrains_with_the_published_functions(tmp_path, capsys):
    import numpy as np

    from benchmark.published_prune import main, published_functions, published_restrained

    repo = tmp_path / "PRUNE"
    with pytest.raises(SystemExit) as stop:  # no checkout: one line, exit 2
        main(["--repo", str(repo)])
    assert stop.value.code == 2 and "a checkout of mjy1111/PRUNE" in capsys.readouterr().err
    # bl:56-68 as published (a loop over the singular values), under an import this environment lacks
    (repo / "easyeditor" / "editors").mkdir(parents=True)
    (repo / "easyeditor" / "editors" / "bi_editor_loadw.py").write_text(
        "import tqdm_that_is_not_here\n\ndef func_log(original_s, delta_s):\n    max_ori=original_s[0]\n"
        "    for i in range(len(delta_s)):\n        if delta_s[i]>=max_ori:\n"
        "            delta_s[i]=np.log(delta_s[i])+max_ori-np.log(max_ori)\n    return delta_s\n\n"
        "def func_logn(original_s, delta_s, n):\n    max_ori=original_s[0]\n"
        "    for i in range(len(delta_s)):\n        if delta_s[i]>=max_ori:\n"
        "            delta_s[i]=math.log(delta_s[i],n)+max_ori-math.log(max_ori,n)\n    return delta_s\n")
    functions = published_functions(repo)
    w0 = np.diag([2.0, 1.0, 0.5])
    delta = np.diag([8.0, 1.0, 0.0])  # rank 2; one singular value past W0's largest
    rebuilt, changed = published_restrained(functions, w0, delta.copy(), None)
    assert changed == 1 and np.allclose(rebuilt, np.diag([np.log(8.0) + 2.0 - np.log(2.0), 1.0, 0.0]))
    from editors.prune import restrained

    ours, shrunk = restrained(torch.from_numpy(delta), 2.0, np.e)
    assert shrunk == 1 and np.allclose(ours.numpy(), rebuilt)


def test_the_emmet_comparison_copies_easyedits_packages_under_empty_parents(tmp_path, capsys):
    import json

    from benchmark.published_emmet import PACKAGES, _published_package, main, model_ties_head

    repo = tmp_path / "EasyEdit"
    with pytest.raises(SystemExit) as stop:  # no checkout: one line, exit 2
        main(["--repo", str(repo), "--python", "python"])
    assert stop.value.code == 2 and "not a checkout of zjunlp/EasyEdit" in capsys.readouterr().err
    for package in PACKAGES:
        (repo / package).mkdir(parents=True)
        (repo / package / "__init__.py").write_text(f"# {package}\n")
    (repo / "easyeditor" / "__init__.py").write_text("from .editors import *  # every editor\n")
    _published_package(repo, tmp_path / "work")
    for package in PACKAGES:  # as published
        assert (tmp_path / "work" / package / "__init__.py").read_text() == f"# {package}\n"
    for parent in ("easyeditor", "easyeditor/models"):  # emptied: the published ones import every editor
        assert (tmp_path / "work" / parent / "__init__.py").read_text() == ""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    assert model_ties_head(tmp_path / "model")


def test_the_tpatcher_comparison_refuses_a_missing_checkout_in_one_line(tmp_path, capsys):
    from benchmark.published_tpatcher import main

    with pytest.raises(SystemExit) as stop:
        main(["--repo", str(tmp_path)])
    assert stop.value.code == 2 and "not a checkout of ZeroYuHuang/Transformer-Patcher" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["--repo", str(tmp_path), "--memory", "0"])
    assert stop.value.code == 2 and "--memory must be at least 1" in capsys.readouterr().err


def test_the_published_tpatcher_modules_are_imported_with_their_substitutions(tmp_path, monkeypatch):
    """A stand-in for the checkout's src/models/class_modules.py, which imports jsonlines through
    its data module and names torchmetrics 0.x's Accuracy, and for src/utils.py."""
    import sys

    from benchmark.published_tpatcher import published_modules

    models = tmp_path / "src" / "models"
    models.mkdir(parents=True)
    (tmp_path / "src" / "__init__.py").write_text("")
    (tmp_path / "src" / "utils.py").write_text("def count_error_nums(model, data_point, device):\n    return 0, []\n")
    (models / "__init__.py").write_text("")
    (models / "class_modules.py").write_text(
        "import jsonlines\nfrom torchmetrics import Accuracy\nfrom transformers import BertModel, BertTokenizer\n")
    names = ("src", "src.models", "src.models.class_modules", "src.utils", "jsonlines")
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    module, utils = published_modules(tmp_path, "classifier")
    assert str(tmp_path) not in sys.path  # the checkout's `src` is not left importable
    assert utils.count_error_nums(None, None, None) == (0, [])
    metric = module.Accuracy(threshold=0.0)  # torchmetrics 1.x refuses it without a task
    assert float(metric(torch.tensor([2.0, -1.0]), torch.tensor([1, 0]))) == 0.5  # threshold 0 on probabilities
    for name in names:
        sys.modules.pop(name, None)  # the stand-ins, jsonlines's empty module included
