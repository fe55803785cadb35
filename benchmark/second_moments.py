"""How far apart the keys' second moment C = E[k k^T] is under different corpora, at a run's
edited blocks: one JSON line per (source, block) with the tokens read, the seconds the editor's
preparation took (C's count included where the cache did not hold it), the relative Frobenius
distance to the first source's C, its spectrum's ends (how near singular it is: MEMIT and EMMET
weigh a key direction by lambda C^-1) and AlphaEdit's null-space dimension under its threshold.

    python -m benchmark.second_moments experiment=zsre_seq editor=alphaedit \\
        --sources wikipedia_sample,memory [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmark.build import build_data, build_editor
from benchmark.config import compose, instantiate
from benchmark.init import prepare_initial_model
from benchmark.models import build_model


def measure(overrides: list[str], sources: list[str]) -> list[dict]:
    rows, first = [], None
    for source in sources:
        run_cfg = instantiate(compose([*overrides, f"editor.stats_source={source}"]))
        datamodule = build_data(run_cfg)
        adapter = build_model(run_cfg.model)
        editor = build_editor(run_cfg, adapter)
        prepare_initial_model(adapter, datamodule, run_cfg.model, run_cfg.init, False)
        began = time.perf_counter()
        editor.prepare(datamodule.splits.for_editor())
        seconds = time.perf_counter() - began
        moments = [C.double().cpu() for C in editor.second_moments]
        first = first or moments
        threshold = getattr(run_cfg.editor, "nullspace_threshold", None)
        for block, C, reference in zip(editor.layers, moments, first):
            values = torch.linalg.eigvalsh(C)
            rows.append({
                "source": editor.stats["source"], "block": block, "tokens": editor.stats["tokens"],
                "texts": editor.stats["texts"], "prepare_seconds": round(seconds, 1),
                "relative_frobenius_to_first": float(torch.linalg.matrix_norm(C - reference)
                                                     / torch.linalg.matrix_norm(reference)),
                "trace": float(values.sum()), "largest_eigenvalue": float(values[-1]),
                "smallest_eigenvalue": float(values[0]), "eigenvalues_below_1e-6": int((values < 1e-6).sum()),
                "null_space_dim": None if threshold is None else int((values < threshold).sum()),
                "nullspace_threshold": threshold, "dim": len(C)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the run (experiment=, editor=, model=)")
    parser.add_argument("--sources", default="wikipedia_sample,memory",
                        help="editor.stats_source values, comma-separated")
    parser.add_argument("--out", type=Path, help="also write the lines to this file")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    rows = measure(args.overrides, args.sources.split(","))
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
