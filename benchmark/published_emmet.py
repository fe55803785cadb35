"""seqedit's EMMET beside EasyEdit's: the same model, requests, C and prefixes, one after the
other on one machine; the same update (max difference of the edited weight after each edit) and
the seconds an edit.

    python -m benchmark.published_emmet --repo PATH/EasyEdit --python PATH/python --edits 3 \\
        --out runs/published

`--repo` is a checkout of zjunlp/EasyEdit; `easyeditor/models/emmet/`, `easyeditor/models/rome/`
(the EMMET modules import its `repr_tools` and `layer_stats`) and `easyeditor/util/` are copied into
a scratch folder as they are, under empty `easyeditor/__init__.py` and `easyeditor/models/__init__.py`
(the real ones import every editor), and `datasets` (imported by `layer_stats`, never reached: C
is handed in) is an empty module. `--python` is an interpreter with torch and transformers 4.x,
as for `benchmark.published_code`, whose seqedit side this reuses.

The published side runs `apply_emmet_to_model` (em:25-66) one request at a time, so that each edit
stands against C alone, with hparams/EMMET/llama-7b.yaml (read as EasyEdit reads it: "5e-1" made a
float by `HyperParams.construct_float_from_scientific_notation`): `device` "cpu" where no GPU is present,
`v_loss_layer` the model's last block, `lm_head_module` the embeddings where the model ties its head
to them (SmolLM2 does; compute_z.py:28-30 looks the head's weight up by a parameter name a tied
head does not have), and every setting the two share from seqedit's config.
seqedit's prefixes and C go into its `CONTEXT_TEMPLATES_CACHE` and `COV_CACHE`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import types
from pathlib import Path

from benchmark.published_code import _rss_mb, checkout_parser, compare, run_published_side, seqedit_side, summary

PRESET = "hparams/EMMET/llama-7b.yaml"
PACKAGES = ("easyeditor/models/emmet", "easyeditor/models/rome", "easyeditor/util")
# seqedit's config field for each preset key the two share (published_code.SHARED's, and EMMET's own)
SHARED = {"emmet_lambda": "emmet_lambda", "update_norm_lambda": "update_norm_lambda"}


def _published_package(repo: Path, work: Path) -> None:
    for package in PACKAGES:
        if (work / package).exists():
            shutil.rmtree(work / package)
        shutil.copytree(repo / package, work / package, ignore=shutil.ignore_patterns("__pycache__"))
    for package in ("easyeditor", "easyeditor/models"):
        (work / package / "__init__.py").write_text("")


def model_ties_head(folder: Path) -> bool:
    return bool(json.loads((folder / "config.json").read_text()).get("tie_word_embeddings", False))


def published_side(repo: Path, out: Path, threads: int) -> dict:
    import torch
    import yaml
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = out / "published_src"
    _published_package(repo, work)
    sys.path.insert(0, str(work))
    sys.modules.setdefault("datasets", types.ModuleType("datasets"))  # layer_stats' import; C is handed in
    sys.modules["datasets"].load_dataset = None
    import easyeditor.models.emmet.emmet_main as main
    from easyeditor.models.emmet.emmet_hparams import EMMETHyperParams
    from easyeditor.util.hparams import HyperParams

    inputs = json.loads((out / "inputs.json").read_text())
    # as EMMETHyperParams.from_hparams reads it: YAML's "5e-1" is a string until this makes it a float
    preset = HyperParams.construct_float_from_scientific_notation(yaml.safe_load((repo / PRESET).read_text()))
    preset.update(v_loss_layer=inputs["last_block"], device=device)
    if model_ties_head(out / "model"):  # compute_z.py:28-30 reads the head by parameter name, which a tied
        preset["lm_head_module"] = "model.embed_tokens"  # head does not have: the same tensor by its own name
    differ = {k: (preset[k], v) for k, v in inputs["settings"].items() if k in preset and preset[k] != v}
    preset.update({k: v for k, v in inputs["settings"].items() if k in preset})
    hparams = EMMETHyperParams(**preset)
    model = AutoModelForCausalLM.from_pretrained(out / "model", torch_dtype=torch.float32).to(device).eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    tok.pad_token_id = tok.eos_token_id  # EasyEdit's editor.py:150-152 for LLaMA
    tok.padding_side = "right"  # editor.py:184-186: EMMET among the right-padded editors
    main.CONTEXT_TEMPLATES_CACHE = [["{}"], inputs["templates"]]
    name = model.config._name_or_path.replace("/", "_")
    for layer_name, C in load_file(str(out / "second_moments.safetensors")).items():
        main.COV_CACHE[(name, layer_name)] = C
    weights = {f"{hparams.rewrite_module_tmp.format(layer)}.weight": model.get_parameter(
        f"{hparams.rewrite_module_tmp.format(layer)}.weight") for layer in hparams.layers}
    initial = {k: w.detach().clone() for k, w in weights.items()}
    deltas, seconds = {}, []
    for j, request in enumerate(inputs["requests"]):
        request = {**request, "target_new": request["target_new"]["str"]}  # EasyEdit's requests carry the string
        began = time.perf_counter()
        main.apply_emmet_to_model(model, tok, [request], hparams)
        seconds.append(time.perf_counter() - began)
        deltas.update({f"{j}/{k}": (w.detach().cpu() - initial[k].cpu()).contiguous() for k, w in weights.items()})
    save_file(deltas, str(out / "published_deltas.safetensors"))
    return {"seconds": seconds, "peak_rss_mb": _rss_mb(), "preset_differs": differ, "device": device}


def main(argv=None) -> None:
    parser = checkout_parser("benchmark.published_emmet", "a checkout of zjunlp/EasyEdit")
    args = parser.parse_args(argv)
    if args.repo is None or not (args.repo / PRESET).is_file() or not all((args.repo / p).is_dir() for p in PACKAGES):
        parser.error(f"--repo {args.repo}: not a checkout of zjunlp/EasyEdit (no {PRESET} or {', '.join(PACKAGES)})")
    out = args.out.resolve() / "emmet"
    if args.side == "published":
        (out / "published.json").write_text(json.dumps(published_side(args.repo.resolve(), out, args.threads)))
        return
    if not args.python:
        parser.error("--python: the interpreter that runs the published code (torch and transformers 4.x)")
    ours = seqedit_side("emmet", args.edits, out, args.threads, SHARED)
    run_published_side("benchmark.published_emmet", args)
    theirs = json.loads((out / "published.json").read_text())
    for line in compare(out):
        print(json.dumps({"editor": "emmet", **line}))
    print(summary("emmet", args, ours, theirs))


if __name__ == "__main__":
    main()
