"""seqedit's WISE beside the authors' code in EasyEdit: the same model, requests, templates,
unrelated prompts and shard mask, one after the other on one machine; the side memory after each
edit (max difference), the steps, the recorded gaps and the seconds an edit.

    python -m benchmark.published_wise --repo PATH/EasyEdit --python PATH/python --edits 3 \\
        --out runs/published

`--repo` is a checkout of zjunlp/EasyEdit; of it only `easyeditor/models/wise/` (`WISE.py`,
`utils.py`, `merge/`) runs, copied into a scratch folder as the package `easyeditor.models.wise`
with empty package `__init__` files (the real ones import every editor EasyEdit has) and an empty
`easyeditor.util.vl_utils` (the multimodal helpers `utils.py` imports and this text path never
calls). Nothing of it is copied into seqedit. `--python` is an interpreter with torch and
transformers 4.x, as for `benchmark.published_code`.

The published side runs what `apply_wise_to_model` runs (wise_main.py:18-35: context templates,
`tokenize`, `WISE(...)`, `edit`) with the hyperparameters of hparams/WISE/llama-7b.yaml, the block
and the settings the two share taken from seqedit's config, the tokenizer as EasyEdit's editor
sets it for WISE (pad = eos, editor.py:148-152; padding on the left, editor.py:180-183) and
`sequential_edit` on, so that its side memory carries over from edit to edit as in a sequential
run. Three inputs are handed to it so that nothing random differs: the context templates (its
`CONTEXT_TEMPLATES_CACHE`; it also makes its own, and the summary says whether they agree), the
unrelated prompt of each edit (seqedit's, as `loc_prompt`) and the shard's gradient mask (its
`generate_activation_mask` draws with numpy; here it returns seqedit's draw).

The two losses differ on purpose in two reductions, so the side memories differ: the published
gaps average over every position of the left-padded batch, padding included (`euc` with no mask,
WISE.py:30-45), and its answer NLL divides each row's sum by the answer's tokens plus one prompt
position (`_cal_ft_loss`: the label mask starts at `last_prompt_token_loc - 1`, a position whose
label is ignored); seqedit averages over real positions and answer tokens only. `--reductions
seqedit` runs the published code a second time with exactly these two changed (in memory: `euc`
given the batch's attention mask as its `act_mask`, and the label mask starting at
`last_prompt_token_loc`), so that the rest of the two implementations is compared.

Seventy SGD steps at learning rate 1.0 amplify rounding: seqedit's own side memory moves when only
its thread count changes. The script measures that spread too (seqedit again with one thread, or
two where `--threads 1`), the yardstick for the published side's difference; the first step's
loss, before any rounding has been amplified, is compared as well.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmark.published_code import (
    _model_folder,
    _rss_mb,
    checkout_parser,
    compare,
    compare_sides,
    run_published_side,
    summary,
)

PRESET = "hparams/WISE/llama-7b.yaml"
SOURCE = "easyeditor/models/wise"
REDUCTIONS = ("published", "seqedit")  # the published code as it is, and with seqedit's two reductions
# seqedit's config field for each published hyperparameter the two share
SHARED = {"n_iter": "max_steps", "edit_lr": "lr", "mask_ratio": "mask_ratio", "norm_constraint": "norm_constraint",
          "act_ratio": "act_ratio", "save_freq": "save_freq", "merge_freq": "merge_freq",
          "densities": "densities", "weights": "weights"}


# -- seqedit's side (this environment) -----------------------------------------------------------------
def seqedit_side(edits: int, out: Path, threads: int) -> dict:
    import torch
    from safetensors.torch import save_file

    from benchmark.build import build_data, build_editor
    from benchmark.config import compose, instantiate
    from benchmark.models import build_model

    torch.set_num_threads(threads)
    cfg = instantiate(compose(["experiment=zsre_seq", "editor=wise", "loop.progress=false"]))
    adapter = build_model(cfg.model)
    splits = build_data(cfg).splits
    editor = build_editor(cfg, adapter)
    editor.prepare(splits.for_editor())
    chosen = splits.folds[0][:edits]
    name = f"model.layers.{editor.layer}.mlp.down_proj.weight"
    if not editor.locality:
        raise SystemExit("the comparison hands seqedit's unrelated prompts over: it needs data with locality pairs")
    requests, sides, seconds, steps, gaps, losses = [], {}, [], [], [], []
    for j, example in enumerate(chosen):
        unrelated_prompt, unrelated_answer = editor._unrelated()  # what this edit will take (no draw: locality)
        began = time.perf_counter()
        result = editor.edit(example)
        seconds.append(time.perf_counter() - began)
        steps.append(result.steps)
        gaps.append(editor.side_min_gap)
        losses.append([result.info["loss_first"], result.info["loss_last"]])
        sides[f"{j}/{name}"] = (editor.side - editor.original).contiguous()
        requests.append({"prompt": example.prompt, "target_new": example.target.strip(),
                         "loc_prompt": unrelated_prompt + _spaced(unrelated_answer)})
    out.mkdir(parents=True, exist_ok=True)
    save_file(sides, str(out / "seqedit_deltas.safetensors"))
    save_file({"mask": editor.mask.contiguous()}, str(out / "mask.safetensors"))
    settings = {published: getattr(editor.config, ours) for published, ours in SHARED.items()}
    (out / "inputs.json").write_text(json.dumps({
        "requests": requests, "templates": editor.templates, "settings": settings,
        "act_margin": list(editor.config.act_margin), "layer": editor.layer}, indent=1))
    _model_folder(adapter, out / "model")
    return {"seconds": seconds, "steps": steps, "min_gaps": gaps, "losses": losses, "peak_rss_mb": _rss_mb(),
            "edits": len(chosen)}


def _spaced(answer: str) -> str:
    """The published script joins `loc + ' ' + loc_ans` (run_wise_editing.py:46-48)."""
    return answer if answer.startswith(" ") else " " + answer


# -- the published side (run by the other interpreter) --------------------------------------------------
def _published_package(repo: Path, work: Path) -> None:
    """`easyeditor.models.wise` as published, under empty parent packages."""
    import shutil

    target = work / "easyeditor" / "models" / "wise"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(repo / SOURCE, target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "__init__.py").write_text("")  # the published one imports wise_main -> the whole util package
    for package in ("easyeditor", "easyeditor/models", "easyeditor/util"):
        (work / package).mkdir(parents=True, exist_ok=True)
        (work / package / "__init__.py").write_text("")
    (work / "easyeditor" / "util" / "vl_utils.py").write_text(
        "build_target_labels = count_media_items = get_batch_file_type = normalize_multimodal_batch = "
        "prepend_qwen_vl_image_tokens_if_missing = None  # multimodal helpers, never reached for text\n")


def _hparams(repo: Path, inputs: dict, device: str):
    """The preset's hyperparameters as WISEHyperParams.from_hparams reads them (wise_hparams.py:46-58),
    seqedit's shared settings and block over them."""
    import types

    import yaml

    preset = yaml.safe_load((repo / PRESET).read_text())
    differ = {k: (preset[k], v) for k, v in inputs["settings"].items() if preset.get(k) != v}
    preset.update(inputs["settings"])
    preset["alpha"], preset["beta"], preset["gamma"] = inputs["act_margin"]
    del preset["act_margin"]
    preset.update(inner_params=[f"model.layers[{inputs['layer']}].mlp.down_proj.weight"], device=device,
                  model_name="smollm2-135m", sequential_edit=True, batch_size=1, use_chat_template=False)
    return types.SimpleNamespace(**preset), differ


def _seqedit_reductions(published, valid: dict) -> None:
    """The two reductions as seqedit computes them, in the published module: the gaps over real
    positions (the rows `euc` is given are the batch's first B-1 or its last; W:286-300, 466) and
    the NLL over answer tokens."""
    euc = published.euc

    def masked(query, key, config, act_mask=None, infer=False):
        if act_mask is None and not infer and valid.get("mask") is not None:
            rows, mask = query.shape[0], valid["mask"]
            act_mask = mask[:rows] if rows == mask.shape[0] - 1 else mask[-rows:]
        return euc(query, key, config, act_mask=act_mask, infer=infer)

    published.euc = masked
    import inspect
    import textwrap

    source = textwrap.dedent(inspect.getsource(published.WISE._cal_ft_loss))
    old = "label_mask[i, col_index - 1:] = True"
    if source.count(old) != 1:
        raise RuntimeError(f"WISE._cal_ft_loss no longer reads {old!r}: the published code changed")
    scope = dict(vars(published))
    exec(compile(source.replace(old, "label_mask[i, col_index:] = True"), published.__file__, "exec"), scope)
    published.WISE._cal_ft_loss = scope["_cal_ft_loss"]


def published_side(repo: Path, out: Path, threads: int, reductions: str = "published") -> dict:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = out / "published_src"
    _published_package(repo, work)
    sys.path.insert(0, str(work))
    from easyeditor.models.wise import WISE as published
    from easyeditor.models.wise import utils

    inputs = json.loads((out / "inputs.json").read_text())
    hparams, differ = _hparams(repo, inputs, device)
    model = AutoModelForCausalLM.from_pretrained(out / "model", torch_dtype=torch.float32).to(device).eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    tok.pad_token_id = tok.eos_token_id  # editor.py:150-152
    tok.padding_side = "left"  # editor.py:180-183 (WISE is not among the right-padded editors)
    own_templates = utils.get_context_templates(model, tok, length_params=[[5, 5], [10, 5]], device=device)
    utils.CONTEXT_TEMPLATES_CACHE = list(inputs["templates"])
    mask = load_file(str(out / "mask.safetensors"))["mask"].reshape(-1).to(device)

    def handed_mask(adapter, _ratio):  # replaces the numpy draw of generate_activation_mask (WISE.py:470-476)
        adapter.weight_mask = mask

    counted = {"steps": 0}
    masking = published.WISEAdapter.mask_new_weight_gradient

    def counting(adapter):  # once per optimizer step (WISE.py:226)
        counted["steps"] += 1
        return masking(adapter)

    recorded: list[float] = []
    update = utils.EarlyStopMeter.update

    def recording(meter, value):  # every step's loss (WISE.py:239)
        recorded.append(value)
        return update(meter, value)

    utils.EarlyStopMeter.update = recording
    published.WISEAdapter.generate_activation_mask = handed_mask
    published.WISEAdapter.mask_new_weight_gradient = counting
    valid: dict = {}
    if reductions == "seqedit":
        _seqedit_reductions(published, valid)
    name = f"model.layers.{inputs['layer']}.mlp.down_proj.weight"
    original = model.get_parameter(name).detach().clone()
    sides, seconds, steps, gaps, losses = {}, [], [], [], []
    for j, request in enumerate(inputs["requests"]):
        counted["steps"] = 0
        recorded.clear()
        began = time.perf_counter()
        # wise_main.py:18-35, one request at a time
        templates = utils.get_context_templates(model, tok, length_params=[[5, 5], [10, 5]], device=device)
        editor = published.WISE(model=model, config=hparams, device=device)
        tokens, act_mask, deact_mask = utils.tokenize([request], tokenizer=tok, device=device,
                                                      context_templates=templates, hparams=hparams)
        valid["mask"] = tokens["attention_mask"]
        editor.edit(config=hparams, tokens=tokens, act_mask=act_mask, deact_mask=deact_mask)
        seconds.append(time.perf_counter() - began)
        adapter = editor.get_adapter_layer()
        steps.append(counted["steps"])
        gaps.append(adapter.editing_mean_act.min_act())
        losses.append([recorded[0], recorded[-1]])
        sides[f"{j}/{name}"] = (adapter.new_weight.detach().cpu() - original.cpu()).contiguous()
    save_file(sides, str(out / f"published_{reductions}_deltas.safetensors"))
    return {"reductions": reductions, "seconds": seconds, "steps": steps, "min_gaps": gaps, "losses": losses,
            "peak_rss_mb": _rss_mb(), "device": device,
            "preset_differs": differ, "templates_agree": own_templates == inputs["templates"],
            "own_templates": own_templates}


def main(argv=None) -> None:
    parser = checkout_parser("benchmark.published_wise", "a checkout of zjunlp/EasyEdit")
    parser.add_argument("--reductions", choices=REDUCTIONS, default="published", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repo is None or not (args.repo / SOURCE / "WISE.py").is_file() or not (args.repo / PRESET).is_file():
        parser.error(f"--repo {args.repo}: not a checkout of zjunlp/EasyEdit (no {SOURCE}/WISE.py or {PRESET})")
    out = args.out.resolve() / "wise"
    if args.side == "published":
        result = published_side(args.repo.resolve(), out, args.threads, args.reductions)
        (out / f"published_{args.reductions}.json").write_text(json.dumps(result))
        return
    if not args.python:
        parser.error("--python: the interpreter that runs the published code (torch and transformers 4.x)")
    ours = seqedit_side(args.edits, out, args.threads)
    other = 1 if args.threads != 1 else 2
    seqedit_side(args.edits, out / "threads", other)
    for line in compare_sides(out / "seqedit_deltas.safetensors", out / "threads" / "seqedit_deltas.safetensors"):
        print(json.dumps({"editor": "wise", "control": f"seqedit at {args.threads} against {other} threads", **line}))
    for reductions in REDUCTIONS:
        run_published_side("benchmark.published_wise", args, "--reductions", reductions)
        theirs = json.loads((out / f"published_{reductions}.json").read_text())
        for line in compare(out, f"published_{reductions}"):
            print(json.dumps({"editor": "wise", "published_reductions": reductions, **line}))
        print(summary("wise", args, ours, theirs, published_reductions=reductions, **{
            "seqedit_steps": ours["steps"], "published_steps": theirs["steps"],
            "seqedit_min_gap": [round(g, 4) for g in ours["min_gaps"]],
            "published_min_gap": [round(g, 4) for g in theirs["min_gaps"]],
            "seqedit_loss_first_last": ours["losses"], "published_loss_first_last": theirs["losses"],
            "templates_agree": theirs["templates_agree"],
            "published_templates": None if theirs["templates_agree"] else theirs["own_templates"]}))


if __name__ == "__main__":
    main()
