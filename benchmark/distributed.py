"""Folds across processes (Lightning DDP): folds are independent, so each process takes every
world_size-th fold, keeps its records in `RUN/ranks/RANK/`, and rank 0 gathers all of them into
the run folder's one `edits.jsonl`, `initial.json` and `results.json`.

The rank is known before the Trainer exists (the fold share decides what a process loads and
records): from torchrun's RANK/WORLD_SIZE, SLURM's SLURM_PROCID/SLURM_NTASKS, or Lightning's own
launcher (NODE_RANK * devices + LOCAL_RANK), which re-runs this command once per extra device.
"""

from __future__ import annotations

import os
from typing import Any

from benchmark.record_types import parse


def process_rank(trainer_cfg) -> tuple[int, int]:
    """(rank, world size) of this process for the configured strategy."""
    world = trainer_cfg.devices * trainer_cfg.num_nodes
    if not str(trainer_cfg.strategy).startswith("ddp") or world == 1:
        return 0, 1
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    return int(env.get("NODE_RANK", 0)) * trainer_cfg.devices + int(env.get("LOCAL_RANK", 0)), world


def gather(value: Any, world: int) -> list[Any]:
    """Every rank's `value`, in rank order (one all_gather_object over the DDP process group)."""
    if world == 1:
        return [value]
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("folds across processes need the DDP process group; it is not initialised")
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


def merge_initial(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One initial.json from the ranks': the shared accuracies, every rank's fold mistakes."""
    merged = dict(parts[0])
    merged["mistakes"] = {k: v for part in parts for k, v in part["mistakes"].items()}
    for name in ("locality", "locality_tokens"):  # per fold, like the mistakes
        if any(name in part for part in parts):
            merged[name] = {k: v for part in parts for k, v in part.get(name, {}).items()}
    return merged


def merge_lines(parts: list[list[dict]]) -> list[dict]:
    """All ranks' record lines, fold by fold, each fold's lines in their stream order (a line
    without a fold, a run's end, first)."""
    lines = [line for part in parts for line in part]
    return sorted(lines, key=lambda x: getattr(parse(x), "fold", -1))  # stable: keeps each fold's order
