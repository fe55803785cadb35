"""seqedit's locate-then-edit editors beside their authors' code: the same model, requests, C and
prefixes, one after the other on one machine; the same update (max difference of the edited
weights after each edit) and the seconds an edit.

    python -m benchmark.published_code --repo PATH/AlphaEdit --python PATH/python --editor memit \\
        --edits 3 --out runs/published

`--repo` is a checkout of jianghoucheng/AlphaEdit (its `memit/`, `AlphaEdit/`, `rome/`, `util/`);
nothing of it is copied into seqedit. `--python` is an interpreter with torch and a transformers
4.x (the published hooks read a decoder layer's output as a tuple, which transformers 5 no longer
returns), for example `python -m venv pub && pub/bin/pip install torch transformers==4.51.3
'numpy<2'`. The published modules are run as they are, with two substitutions made in memory: the
device string "cuda" (hard-coded throughout, e.g. AlphaEdit_main.py:78, compute_z.py:39) becomes
"cpu" where no GPU is present, and `datasets`, imported by rome/layer_stats.py but never reached
here, is an empty module. What the published code would compute at random or from the network is
handed to it from seqedit's run, so that the two compute the same thing: the prefixes (its
module-level CONTEXT_TEMPLATES_CACHE) and C = E[k k^T] per layer (its COV_CACHE; ROME's C^-1 in
compute_u's cache). The settings are the repository's hparams/{MEMIT,AlphaEdit,ROME}/Llama3-8B.json
(RECT: MEMIT's, which experiments/evaluate.py:42 gives MEMIT_rect; memit_rect_main.py keeps 40%)
with `v_loss_layer` moved to the model's last block (seqedit's presets read the loss on the model's
own logits) and every setting the two share taken from seqedit's config, so that both compute the
same update; where that preset differs from seqedit's (ROME's `mom2_adjustment`: seqedit follows
the paper), the summary line says so.

Each side times its edits alone (`--threads`, the same for both). One JSON line per edit and a
summary line are printed; benchmark/figures/published_code_cpu.jsonl keeps a run's lines.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("memit", "AlphaEdit", "rome", "util")
PRESETS = {"memit": "hparams/MEMIT/Llama3-8B.json", "rect": "hparams/MEMIT/Llama3-8B.json",
           "alphaedit": "hparams/AlphaEdit/Llama3-8B.json",
           "rome": "hparams/ROME/Llama3-8B.json"}
# seqedit's config field for each preset key the two share (the rest are the published code's own)
SHARED = {"layers": "layers", "v_num_grad_steps": "v_steps", "v_lr": "v_lr", "v_weight_decay": "v_weight_decay",
          "clamp_norm_factor": "clamp_norm_factor", "kl_factor": "kl_factor",
          "mom2_update_weight": "mom2_update_weight", "nullspace_threshold": "nullspace_threshold", "L2": "l2",
          "mom2_adjustment": "mom2_adjustment"}


# -- seqedit's side (this environment) -----------------------------------------------------------------
def seqedit_side(editor_name: str, edits: int, out: Path, threads: int, shared: dict | None = None) -> dict:
    """Edit `edits` zsRE requests in turn with seqedit's editor; write what the published side needs
    (requests, prefixes, C, the model's files) and seqedit's weight changes after each edit."""
    import torch
    from safetensors.torch import save_file

    from benchmark.build import build_data, build_editor
    from benchmark.config import compose, instantiate
    from benchmark.models import build_model

    torch.set_num_threads(threads)
    cfg = instantiate(compose(["experiment=zsre_seq", f"editor={editor_name}", "loop.progress=false"]))
    adapter = build_model(cfg.model)
    splits = build_data(cfg).splits
    editor = build_editor(cfg, adapter)
    editor.prepare(splits.for_editor())
    chosen = [e for e in splits.folds[0] if e.subject and e.subject in e.prompt][:edits]
    weights = {f"model.layers.{layer}.mlp.down_proj.weight": site.out_proj.weight
               for layer, site in zip(editor.layers, editor.sites)}
    initial = {name: w.detach().clone() for name, w in weights.items()}
    deltas, seconds = {}, []
    for j, example in enumerate(chosen):
        began = time.perf_counter()
        editor.edit(example)
        seconds.append(time.perf_counter() - began)
        deltas.update({f"{j}/{name}": (w.detach() - initial[name]).contiguous() for name, w in weights.items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file(deltas, str(out / "seqedit_deltas.safetensors"))
    save_file({f"model.layers.{layer}.mlp.down_proj": C.float().contiguous()
               for layer, C in zip(editor.layers, editor.second_moments)}, str(out / "second_moments.safetensors"))
    requests = [{"case_id": j, "prompt": e.prompt.replace(e.subject, "{}", 1), "subject": e.subject,
                 "target_new": {"str": e.target}} for j, e in enumerate(chosen)]
    settings = {published: getattr(editor.config, ours) for published, ours in {**SHARED, **(shared or {})}.items()
                if hasattr(editor.config, ours)}
    (out / "inputs.json").write_text(json.dumps({
        "requests": requests, "templates": editor.templates[1:], "settings": settings,
        "last_block": len(adapter.layer_modules()) - 1}, indent=1))
    _model_folder(adapter, out / "model")
    return {"seconds": seconds, "peak_rss_mb": _rss_mb(), "edits": len(chosen)}


def _model_folder(adapter, folder: Path) -> None:
    """The model's weights and tokenizer as transformers 4 reads them (links to seqedit's files; the
    config's rope settings in the older spelling)."""
    source = Path(adapter.model.config._name_or_path)
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    rope = config.pop("rope_parameters", None) or {}
    config.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    config["torch_dtype"] = config.pop("dtype", "float32")
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("model.safetensors", "tokenizer.json"):
        link = folder / name
        if not link.exists():
            link.symlink_to(source / name)
    tok = adapter.tokenizer
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.bos_token, "eos_token": tok.eos_token,
        "unk_token": tok.unk_token, "pad_token": tok.pad_token, "padding_side": "right"}))


def _rss_mb() -> float:
    """This process image's peak resident memory. VmHWM, where Linux has it: `ru_maxrss` of the
    published side, a child forked from seqedit's side and exec'ed, starts from the parent's peak."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- the published side (run by the other interpreter) --------------------------------------------------
def _published_source(repo: Path, work: Path, device: str) -> None:
    """The published packages, copied into `work` with the device string replaced."""
    for package in PACKAGES:
        for path in (repo / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if device != "cuda":
                text = re.sub(r"""(["'])cuda\1""", f'"{device}"', text).replace(".cuda()", f".to('{device}')")
            target = work / path.relative_to(repo)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    (work / "globals.yml").write_text((repo / "globals.yml").read_text())


def published_side(repo: Path, editor_name: str, out: Path, threads: int) -> dict:
    import types

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = out / "published_src"
    _published_source(repo, work, device)
    os.chdir(work)  # util/globals.py reads globals.yml from the working directory
    sys.path.insert(0, str(work))
    stub = types.ModuleType("datasets")  # rome/layer_stats.py imports it; C is handed in, so it is never called

    def load_dataset(*_args, **_kwargs):
        raise RuntimeError("the published layer_stats was reached: C should have come from seqedit's run")

    stub.load_dataset = load_dataset
    sys.modules.setdefault("datasets", stub)
    inputs = json.loads((out / "inputs.json").read_text())
    preset = json.loads((repo / PRESETS[editor_name]).read_text())
    preset["v_loss_layer"] = inputs["last_block"]
    # the published code runs with seqedit's settings, so that the two compute the same update; where the
    # repository's preset differs (ROME's mom2_adjustment, the paper's, against its Llama3 preset's), it is said
    differ = {k: (preset[k], v) for k, v in inputs["settings"].items() if k in preset and preset[k] != v}
    preset.update({k: v for k, v in inputs["settings"].items() if k in preset})
    model = AutoModelForCausalLM.from_pretrained(out / "model", torch_dtype=torch.float32).to(device).eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    tok.pad_token = tok.eos_token  # experiments/evaluate.py:118
    main, hparams = _published_editor(editor_name, preset, inputs["templates"], model,
                                      load_file(str(out / "second_moments.safetensors")))
    weights = {f"{hparams.rewrite_module_tmp.format(layer)}.weight": model.get_parameter(
        f"{hparams.rewrite_module_tmp.format(layer)}.weight") for layer in hparams.layers}
    initial = {k: w.detach().clone() for k, w in weights.items()}
    extra = _alphaedit_state(repo, main, model, tok, hparams) if editor_name == "alphaedit" else {}
    deltas, seconds = {}, []
    for j, request in enumerate(inputs["requests"]):
        began = time.perf_counter()
        if editor_name == "memit":
            main.apply_memit_to_model(model, tok, [request], hparams)
        elif editor_name == "rect":  # MEMIT's update, 40% of its entries kept (mr:46-61)
            main.apply_memit_rect_to_model(model, tok, [request], hparams)
        elif editor_name == "rome":
            main.apply_rome_to_model(model, tok, [request], hparams)
        else:
            _, extra["cache_c"] = main.apply_AlphaEdit_to_model(model, tok, [request], hparams, **extra)
        seconds.append(time.perf_counter() - began)
        deltas.update({f"{j}/{k}": (w.detach().cpu() - initial[k].cpu()).contiguous() for k, w in weights.items()})
    save_file(deltas, str(out / "published_deltas.safetensors"))
    return {"seconds": seconds, "peak_rss_mb": _rss_mb(), "preset_differs": differ, "device": device}


def _published_editor(editor_name: str, preset: dict, templates: list[str], model, moments: dict):
    """The published module and hyperparameters, with seqedit's prefixes and C in its caches (ROME
    keeps C^-1, inverted in float32 as compute_u.py:44-55 does)."""
    import torch

    name = model.config._name_or_path.replace("/", "_")
    if editor_name == "rome":
        import rome.compute_u as compute_u
        import rome.rome_main as main
        from rome import ROMEHyperParams as Params

        main.CONTEXT_TEMPLATES_CACHE = ["{}", *templates]
        for layer_name, C in moments.items():
            compute_u.inv_mom2_cache[(name, layer_name)] = torch.inverse(C).float()
        return main, Params(**preset)
    if editor_name in ("memit", "rect"):
        import memit.memit_main as memit_main
        import memit.memit_rect_main as rect_main
        from memit import MEMITHyperParams as Params

        main = memit_main if editor_name == "memit" else rect_main
    else:
        import AlphaEdit.AlphaEdit_main as main
        from AlphaEdit import AlphaEditHyperParams as Params
    main.CONTEXT_TEMPLATES_CACHE = [["{}"], templates]
    for layer_name, C in moments.items():
        main.COV_CACHE[(name, layer_name)] = C
    return main, Params(**preset)


def _alphaedit_state(repo: Path, main, model, tok, hparams) -> dict:
    """P per layer by the published `get_project` (experiments/evaluate.py, run from its source
    text: the module itself imports the whole evaluation suite) and an empty cache_c, as
    evaluate.py:395-421 makes them."""
    import torch

    scope = define_from_source(repo / "experiments" / "evaluate.py", ["get_project"],
                               {"torch": torch, "get_cov": main.get_cov})
    width = model.get_parameter(f"{hparams.rewrite_module_tmp.format(hparams.layers[-1])}.weight").shape[1]
    P = torch.stack([scope["get_project"](model, tok, layer, hparams) for layer in hparams.layers])
    return {"P": P, "cache_c": torch.zeros(len(hparams.layers), width, width)}


def define_from_source(path: Path, names: list[str], scope: dict) -> dict:
    """The named top-level functions and classes, and `Class.method`s, of a published file defined
    from its source text in `scope` (which stands in for the file's imports: a published module
    often imports a whole training stack this comparison never reaches); a name missing is a
    FileNotFoundError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"no {path}")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for name in names:
        owner, _, member = name.rpartition(".")
        nodes = next((n.body for n in tree.body if getattr(n, "name", "") == owner), []) if owner else tree.body
        node = next((n for n in nodes if getattr(n, "name", "") == member), None)
        if node is None:
            raise FileNotFoundError(f"{path} has no {name}")
        exec(compile(ast.Module([node], []), str(path), "exec"), scope)
        if owner:
            scope[name] = scope.pop(member)
    return scope


# -- both, and the comparison --------------------------------------------------------------------------
def compare(out: Path, published: str = "published") -> list[dict]:
    """seqedit's weight changes against those in `{published}_deltas.safetensors`, per edit."""
    return compare_sides(out / "seqedit_deltas.safetensors", out / f"{published}_deltas.safetensors")


def compare_sides(ours_file: Path, theirs_file: Path) -> list[dict]:
    from safetensors.torch import load_file

    ours, theirs = load_file(str(ours_file)), load_file(str(theirs_file))
    lines = []
    for key in sorted(ours, key=lambda k: (int(k.split("/")[0]), k)):
        edit, name = key.split("/", 1)
        difference = (ours[key] - theirs[key]).abs().max().item()
        size = theirs[key].abs().max().item()
        norm = theirs[key].norm().item()
        lines.append({"edit": int(edit), "weight": name, "max_abs_difference": difference,
                      "published_update_max": size, "relative": difference / size if size else None,
                      "relative_frobenius": (ours[key] - theirs[key]).norm().item() / norm if norm else None,
                      # entries one side changed and the other left (RECT's masks near their threshold)
                      "changed_on_one_side_only": int(((ours[key] != 0) != (theirs[key] != 0)).sum())})
    return lines


def checkout_parser(prog: str, repo_help: str) -> argparse.ArgumentParser:
    """The options of a comparison whose published side runs in another interpreter."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}")
    parser.add_argument("--repo", type=Path, help=repo_help)
    parser.add_argument("--python", help="an interpreter with torch and transformers 4.x for the published code")
    parser.add_argument("--edits", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/published"))
    parser.add_argument("--side", choices=["both", "published"], default="both", help=argparse.SUPPRESS)
    return parser


def run_published_side(module: str, args, *extra: str) -> None:
    """`module --side published` in the published code's interpreter, with this checkout importable."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([args.python, "-m", module, "--side", "published", "--repo", str(args.repo.resolve()),
                           "--threads", str(args.threads), "--out", str(args.out.resolve()), *extra],
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the published side failed:\n{done.stderr[-3000:]}")


def summary(editor: str, args, ours: dict, theirs: dict, **more) -> str:
    """The JSON line after a comparison's per-edit lines: seconds, memory, what the preset changed."""
    return json.dumps({
        "editor": editor, "model": "smollm2-135m", **more, "edits": ours["edits"], "threads": args.threads,
        "seqedit_seconds": [round(s, 2) for s in ours["seconds"]],
        "published_seconds": [round(s, 2) for s in theirs["seconds"]],
        "seqedit_peak_rss_mb": ours["peak_rss_mb"], "published_peak_rss_mb": theirs["peak_rss_mb"],
        "published_device": theirs["device"], "preset_differs_from_seqedit": theirs["preset_differs"]})


def tiny_check_main(argv, prog: str, description: str, repo_help: str, compare_with, options=()) -> None:
    """A comparison run in this interpreter on a tiny model: `--repo` (and `options`, (flag, kwargs)
    pairs whose values go to `compare_with` by name), one JSON line, a missing file one line (exit 2)."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("--repo", type=Path, required=True, help=repo_help)
    for flag, kwargs in options:
        parser.add_argument(flag, **kwargs)
    args = vars(parser.parse_args(argv))
    try:
        result = compare_with(args.pop("repo"), **args)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result))


def main(argv=None) -> None:
    parser = checkout_parser("benchmark.published_code", "a checkout of jianghoucheng/AlphaEdit")
    parser.add_argument("--editor", choices=sorted(PRESETS), default="memit")
    args = parser.parse_args(argv)
    if args.repo is None or not (args.repo / PRESETS[args.editor]).is_file():
        parser.error(f"--repo {args.repo}: not a checkout of jianghoucheng/AlphaEdit (no {PRESETS[args.editor]})")
    out = args.out.resolve() / args.editor
    if args.side == "published":
        result = published_side(args.repo.resolve(), args.editor, out, args.threads)
        (out / "published.json").write_text(json.dumps(result))
        return
    if not args.python:
        parser.error("--python: the interpreter that runs the published code (torch and transformers 4.x)")
    ours = seqedit_side(args.editor, args.edits, out, args.threads)
    run_published_side("benchmark.published_code", args, "--editor", args.editor)
    theirs = json.loads((out / "published.json").read_text())
    for line in compare(out):
        print(json.dumps({"editor": args.editor, **line}))
    print(summary(args.editor, args, ours, theirs))


if __name__ == "__main__":
    main()
