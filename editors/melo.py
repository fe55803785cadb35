"""MELO (Yu et al., AAAI 2024, "MELO: Enhancing Model Editing with Neuron-Indexed Dynamic LoRA"),
a row of the WISE table: every edit trains a LoRA block of its own (a slice of rank
`rank_per_block` of adapters on chosen FFN projections); a database of edit keys, clustered as
GRACE clusters them, decides which block, if any, a sequence runs with.

Read in the published code: EasyEdit at 14cea82 (`mm` easyeditor/models/melo/melo.py, `pt` its
peft fork's tuners/melo.py, `ut` melo/util.py; hparams/MELO/gpt2-xl.yaml, the only preset):
* the router (`GraceLinear`, pt:740-798): the output of one block's FFN input projection (c_fc of
  block 35 of 48) at position key_id -1 is the key; the database (`VecDB`, pt:584-683) holds
  clusters (centre, radius, label, points = (key, block)). At inference the nearest centre
  within its radius gives its nearest point's block, else no block (pt:657-683);
* an edit (mm:135-158, pt:776-795, at the first of its steps): no cluster yet, or the nearest
  centre farther than its radius + init_radius: a new cluster (radius init_radius); the same label
  as the nearest cluster's: the key joins it (centre the points' mean, radius their farthest
  distance, at least init_radius; pt:608-616); another label: a new cluster and both radii split
  the distance, the old cluster's points beyond its new radius forgotten (pt:624-644). Either
  way the edit's key maps to a new block, trained alone: Adam(edit_lr 1e-3) over the adapters,
  StepLR(20, 0.5), num_iter 50 steps of the LM loss on the answer's tokens (mm:136-156), no stop;
* the adapters (`Linear` with `dynamic`, pt:800-1038): A [d_in, r], B [r, d_out] with r = blocks
  x rank_per_block, A Kaiming-uniform on its [d_in, r] shape (bound 1/sqrt(r)), B zero,
  lora_alpha = r; a block's slices are each multiplied by sqrt(r / rank_per_block) (pt:847), so its
  update is x A_b B_b x blocks; on c_fc of blocks 36 and 37, after the router.

seqedit: the key is read at the example's read position (the last prompt token of a decoder, as
seqedit's GRACE reads it), where key_id -1 reads the last token of prompt + " " + answer, the
sequence being scored (`ut` tokenize_gpt), so a locality prompt is routed by its own answer; a
label matches when the answers are equal (pt:619-622 compares the sums of the label token ids);
blocks are made as edits need them instead of all 350 up front (the same values: each block's A
is drawn from its own seed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from benchmark.models.base import linear_shape
from benchmark.types import Example
from editors.base import EditResult, HookedEditor, optimise, read_position_block
from editors.configs.melo import MeloConfig  # noqa: F401  (its config, torch-free)

NO_BLOCK = -1


def default_router(blocks: int) -> int:
    """The preset's router depth (block 35 of GPT-2 XL's 48) on a model with `blocks` blocks, with
    a block after it for the adapters."""
    return max(0, min(blocks * 35 // 48, blocks - 2))


class _Stop(Exception):
    """Ends a forward once the router's key is read."""


class MeloEditor(HookedEditor):
    config_class = MeloConfig

    def __init__(self, config: MeloConfig, adapter):
        super().__init__(config, adapter)
        router = read_position_block(adapter, "melo", config.router_layer, default_router)
        self.site = adapter.ffn_site(router)  # refuses a block out of range
        self.router = self.site.layer_index
        count = len(adapter.layer_modules())
        layers = config.lora_layers or [b for b in (self.router + 1, self.router + 2) if b < count]
        indices = sorted(adapter.ffn_site(b).layer_index for b in layers)
        if not indices or indices[0] <= self.router:
            raise ValueError(f"editor.lora_layers: MELO's LoRA blocks run after its router (block {self.router}), "
                             f"got {layers or 'none after it'}")
        self.first = indices[0]
        self.targets = [adapter.block_linears(b)["ffn_in"] for b in indices]
        self.shapes = [linear_shape(m) for m in self.targets]
        self.scale = float(config.blocks)  # lora_alpha / r = 1, times sqrt(r / rank_per_block) on A and on B
        self._handles: list = []
        self._route: Tensor | None = None  # [B] block of each row of the forward in flight
        self._training: list[tuple[Tensor, Tensor]] | None = None  # the block an edit trains, on every row
        self._clear()
        self._enable()

    def _clear(self) -> None:
        self.centres, self.radii, self.labels = torch.zeros(0, 0), torch.zeros(0), []
        self.point_keys, self.point_cluster, self.point_block = torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), \
            torch.zeros(0, dtype=torch.long)
        self.A: list[list[Tensor]] = [[] for _ in self.targets]  # per target, per block: [d_in, rank]
        self.B: list[list[Tensor]] = [[] for _ in self.targets]  # [rank, d_out]
        self._stacks: list[tuple[Tensor, Tensor]] | None = None
        self._counts = {"added": 0, "joined": 0, "split": 0, "forgotten": 0}

    # -- the blocks in the forward ---------------------------------------------------------------
    def _install(self) -> list:
        return [self.site.in_proj.register_forward_hook(self._route_rows),
                *(m.register_forward_hook(self._lora(i)) for i, m in enumerate(self.targets))]

    def _route_rows(self, _m, _args, output) -> None:
        batch = self.adapter.in_flight
        if batch is None or self._training is not None or not len(self.labels):
            self._route = None
            return
        rows = torch.arange(batch.size, device=output.device)
        self._route = self.lookup(output[rows, self.adapter.read_positions(batch).to(output.device)].float())

    def _lora(self, i: int):
        def add(_m, args, output):
            x = args[0]
            if self._training is not None:
                a, b = self._training[i]
                return output + (x.float() @ a @ b * self.scale).to(output.dtype)
            route = self._route
            if i == len(self.targets) - 1:  # this forward's route is spent: a later one that skips the router
                self._route = None  # (a forward stopped early, a replay of later blocks) runs no block
            if route is None or x.shape[0] != len(route) or not bool((route >= 0).any()):
                return None
            a, b = self._stacked()[i]
            at = route.clamp(min=0)
            delta = torch.einsum("bld,bdr->blr", x.float(), a[at])
            delta = torch.einsum("blr,bro->blo", delta, b[at]) * self.scale
            return output + (delta * (route >= 0)[:, None, None]).to(output.dtype)
        return add

    def _stacked(self) -> list[tuple[Tensor, Tensor]]:
        if self._stacks is None:
            self._stacks = [(torch.stack(a), torch.stack(b)) for a, b in zip(self.A, self.B)]
        return self._stacks

    @torch.no_grad()
    def lookup(self, queries: Tensor) -> Tensor:
        """[B] the block of each query: the nearest point's of the nearest cluster when the query
        is within that cluster's radius, else NO_BLOCK (pt:657-683)."""
        if not self.labels:
            return torch.full((len(queries),), NO_BLOCK, dtype=torch.long, device=queries.device)
        distance, cluster = self._distances(queries, self.centres).min(1)
        to_points = self._distances(queries, self.point_keys)
        to_points = to_points.masked_fill(self.point_cluster[None] != cluster[:, None], torch.inf)
        block = self.point_block[to_points.argmin(1)]
        return torch.where(distance <= self.radii[cluster], block, torch.full_like(block, NO_BLOCK))

    @staticmethod
    def _distances(a: Tensor, b: Tensor) -> Tensor:
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")  # the published distance, exact

    def edited_from(self) -> int | None:
        return self.router  # the router's hook reads the key there

    def params_added(self) -> int:
        per_block = sum((d_in + d_out) * self.config.rank_per_block for d_in, d_out in self.shapes)
        return len(self.A[0]) * per_block + int(self.centres.numel() + self.radii.numel() + self.point_keys.numel())

    # -- editing -----------------------------------------------------------------------------------
    def edit(self, example: Example) -> EditResult:
        cfg, adapter = self.config, self.adapter
        batch = adapter.encode([example.prompt], [example.target])
        block = len(self.A[0])
        if block >= cfg.blocks:
            raise RuntimeError(f"editor.blocks={cfg.blocks}: every LoRA block is taken (one per edit); pass a larger "
                               "editor.blocks")
        action = self._place(self._key(batch), example.target, block)
        params = [nn.Parameter(t) for pair in self._new_block(block) for t in pair]
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=0.5)
        self._training = [(params[2 * i], params[2 * i + 1]) for i in range(len(self.targets))]
        try:
            _, forward = adapter.suffix(batch, self.first)  # the blocks before the first adapter never change
            steps = optimise(adapter, batch, forward, optimizer, cfg.max_steps, cfg.stop_when_correct,
                             scheduler=schedule)
        finally:
            self._training = None
        for i in range(len(self.targets)):
            self.A[i].append(params[2 * i].detach())
            self.B[i].append(params[2 * i + 1].detach())
        self._stacks = None
        return EditResult(steps=steps, info={"action": action, "clusters": len(self.labels), "blocks": block + 1})

    def _key(self, batch) -> Tensor:
        """The router's output at the read position, from a forward stopped right after it."""
        seen: dict[str, Tensor] = {}

        def keep(_m, _args, output):
            seen["key"] = output[0, int(self.adapter.read_positions(batch)[0])].detach().float()
            raise _Stop

        handle = self.site.in_proj.register_forward_hook(keep)
        try:
            with torch.no_grad():
                self.adapter.scored_logits(batch)
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen["key"]

    def _new_block(self, block: int) -> list[tuple[Tensor, Tensor]]:
        """Each adapter's block: A drawn as the published full-rank A's slice is (Kaiming-uniform on
        [d_in, r], bound 1 / sqrt(r)), from the block's own seed; B zero (pt:943-947)."""
        rank, bound = self.config.rank_per_block, (self.config.blocks * self.config.rank_per_block) ** -0.5
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + block)
        out = []
        for d_in, d_out in self.shapes:
            a = (torch.rand(d_in, rank, generator=generator) * 2 - 1) * bound
            out.append((a.to(self.adapter.device), torch.zeros(rank, d_out, device=self.adapter.device)))
        return out

    @torch.no_grad()
    def _place(self, key: Tensor, label: Any, block: int) -> str:
        """The database update of one edit (pt:776-795); the key maps to `block` in every case."""
        cfg = self.config
        if not self.labels:
            self._add(key, label, block)
            return "added"
        distance, nearest = (v.item() for v in self._distances(key[None], self.centres)[0].min(0))
        nearest = int(nearest)
        if distance > float(self.radii[nearest]) + cfg.init_radius:
            self._add(key, label, block)
            return "added"
        if self.labels[nearest] == label:
            self._join(nearest, key, block)
            return "joined"
        self._add(key, label, block)
        self._split(nearest, distance)
        return "split"

    def _add(self, key: Tensor, label: Any, block: int) -> None:
        device = key.device
        if not self.labels:
            self.centres, self.point_keys = key[None].clone(), key[None].clone()
            self.radii = torch.tensor([self.config.init_radius], device=device)
        else:
            self.centres = torch.cat([self.centres, key[None]])
            self.point_keys = torch.cat([self.point_keys, key[None]])
            self.radii = torch.cat([self.radii, self.radii.new_tensor([self.config.init_radius])])
        self.point_cluster = torch.cat([self.point_cluster.to(device), torch.tensor([len(self.labels)], device=device)])
        self.point_block = torch.cat([self.point_block.to(device), torch.tensor([block], device=device)])
        self.labels.append(label)
        self._counts["added"] += 1

    def _join(self, cluster: int, key: Tensor, block: int) -> None:
        """pt:608-616: the key joins; the centre moves to the points' mean, the radius reaches the
        farthest point (never below init_radius)."""
        self.point_keys = torch.cat([self.point_keys, key[None]])
        self.point_cluster = torch.cat([self.point_cluster, self.point_cluster.new_tensor([cluster])])
        self.point_block = torch.cat([self.point_block, self.point_block.new_tensor([block])])
        members = self.point_keys[self.point_cluster == cluster]
        self.centres[cluster] = members.mean(0)
        farthest = float(self._distances(members, self.centres[cluster][None]).max())
        self.radii[cluster] = max(farthest, self.config.init_radius)
        self._counts["joined"] += 1

    def _split(self, cluster: int, distance: float) -> None:
        """pt:624-644: the nearest cluster's radius and the new one's split the distance; the old
        cluster's points now outside it are forgotten (a cluster left empty keeps its centre,
        mapped to no block)."""
        self.radii[cluster] = distance / 2 - 1e-5
        self.radii[-1] = distance / 2 + 1e-5
        mine = (self.point_cluster == cluster).nonzero().squeeze(1)
        far = self._distances(self.point_keys[mine], self.centres[cluster][None])[:, 0] > self.radii[cluster]
        keep = torch.ones(len(self.point_keys), dtype=torch.bool, device=self.point_keys.device)
        keep[mine[far]] = False
        self._counts["forgotten"] += int(far.sum())
        self.point_keys, self.point_cluster, self.point_block = \
            self.point_keys[keep], self.point_cluster[keep], self.point_block[keep]
        if bool(far.all()):
            self.point_keys = torch.cat([self.point_keys, self.centres[cluster][None]])
            self.point_cluster = torch.cat([self.point_cluster, self.point_cluster.new_tensor([cluster])])
            self.point_block = torch.cat([self.point_block, self.point_block.new_tensor([NO_BLOCK])])
        self._counts["split"] += 1

    # -- folds and resume ------------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self._clear()

    def edit_state(self) -> dict[str, Any]:
        return {"centres": self.centres.clone(), "radii": self.radii.clone(), "labels": list(self.labels),
                "point_keys": self.point_keys.clone(), "point_cluster": self.point_cluster.clone(),
                "point_block": self.point_block.clone(), "A": [[t.clone() for t in a] for a in self.A],
                "B": [[t.clone() for t in b] for b in self.B], "counts": dict(self._counts)}

    def load_edit_state(self, state: dict[str, Any]) -> None:
        self.centres, self.radii, self.labels = state["centres"].clone(), state["radii"].clone(), list(state["labels"])
        self.point_keys, self.point_cluster = state["point_keys"].clone(), state["point_cluster"].clone()
        self.point_block = state["point_block"].clone()
        self.A = [[t.clone() for t in a] for a in state["A"]]
        self.B = [[t.clone() for t in b] for b in state["B"]]
        self._counts, self._stacks = dict(state["counts"]), None

    def fold_report(self) -> dict[str, Any]:
        return {"clusters": len(self.labels), "blocks": len(self.A[0]), **self._counts}
