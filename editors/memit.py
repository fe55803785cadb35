"""MEMIT (Meng et al., ICLR 2023), AlphaEdit (Fang et al., ICLR 2025) and ROME (Meng et al.,
NeurIPS 2022): locate-then-edit of the FFN output projections of a range of blocks (ROME: one
block) by a closed-form update, one edit at a time on the current model (the sequential setting
of the AlphaEdit and WISE papers).

Read in the published code: kmeng01/memit at commit 80426fd (`mm` memit/memit_main.py, `cz`
memit/compute_z.py, `ck` memit/compute_ks.py) and jianghoucheng/AlphaEdit at f5248d3 (`am`
AlphaEdit/AlphaEdit_main.py, `ev` experiments/evaluate.py); defaults from the LLaMA presets of
the AlphaEdit repository (hparams/MEMIT/Llama3-8B.json, hparams/AlphaEdit/Llama3-8B.json).

One edit:
1. v*: a vector added to block `layers[-1]`'s output at the subject's last token of the prompt,
   under `context_templates` random prefixes and bare, optimised with Adam for the target's
   likelihood + kl_factor KL("{subject} is a") + weight decay |delta| / |h|^2, its norm clamped to
   clamp_norm_factor |h|, stopped below loss 0.05 (cz:81-176).
2. For each block l of `layers` in order, keys k = the output projection's input at that token
   (mean over the prefixes, ck:11-50), residual r = (v* - the current output) / (blocks left), and
   MEMIT: W += r (lambda C + k k^T)^-1 k^T in float64 (mm:155-212);
   AlphaEdit: W += [(P (k k^T + K_p K_p^T) + L2 I)^-1 P k r^T]^T (am:111-139), P the projection on
   C's null space (eigenvalues below `nullspace_threshold`, ev:405-421), K_p the keys of earlier
   edits of the fold (am:146-148);
   memit_seq, the AlphaEdit authors' sequential MEMIT (`ms` memit/memit_seq_main.py at f5248d3):
   MEMIT with K_p K_p^T added, W += r (lambda C + K_p K_p^T + k k^T)^-1 k^T (ms:198-200, K_p read
   on the edited model, ms:226-228). There `apply_memit_seq_to_model` drops its `cache_c` argument
   on the way to `execute_memit` (ms:45), whose default None then fails at ms:199; seqedit follows
   ms:199 and ms:228 as the evaluation script means them (ev:193-201, 245, 260-261).
C = E[k k^T] is the keys' second moment on a text corpus, Wikipedia in the papers and by default
here (`stats_source`, benchmark/corpus.py: the English Wikipedia sample shipped with gensim offline,
the current Wikipedia or any corpus through `datasets`, a dump or text file, or the run's memory pool
as a named deviation), cached per weights up to the block, block, tokenizer and corpus settings.

ROME (kmeng01/memit's `rome/` at the same commit: `rm` rome_main.py, `cu` compute_u.py, `cv`
compute_v.py; presets hparams/ROME/*.json and EasyEdit's hparams/ROME/llama-7b.yaml): v* is added
to the block's FFN output (not the block's output) at the subject's last token (cv:72-89), under
prefixes generated from the start token, half 5 and half 10 tokens long (rm:213-236,
context_template_length_params [[5, 10], [10, 10]]); u = C^-1 k* / |C^-1 k*| with k* the mean key
over the prefixes (cu:58-124); v = (v* - W k) / (k . u) at the bare prompt (cv:166-189); W += v u^T.
`consistent_keys` is C-ROME (Yang et al., EMNLP 2024 Findings, "The Fall of ROME"; code
WanliYoung/Collapse-in-Model-Editing, easyeditor/models/rome/compute_v.py:182-191 and 242-273,
`if_c_rome`): k and W k in v are the means over the prefixed prompts, as in u.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from benchmark.cache import cache_dir, pin, pin_mismatch, pin_path
from benchmark.corpus import PUBLISHED, check_source, corpus_key, token_pieces
from benchmark.corpus import resolve as resolve_corpus
from benchmark.models.base import installed, linear_shape
from benchmark.models.kept_positions import kept_positions
from benchmark.records import write_atomically
from benchmark.types import EditorData, Example
from editors.base import Editor, EditResult
from editors.configs.memit import AlphaEditConfig, LocateConfig, MemitConfig, RomeConfig  # noqa: F401  (its config, torch-free)

PREFIX_STARTS = ["The", "Therefore", "Because", "I", "You"]  # mm get_context_templates


def sample_continuation(model, ids: Tensor, max_length: int, top_k: int, generator: torch.Generator) -> Tensor:
    """What `model.generate(ids, do_sample=True, top_k=top_k, max_length=max_length)` samples from
    `ids` [1, n]: the top-k logits' softmax, one token drawn at a time until max_length tokens or an
    end token; the same tokens on a CPU (checked against generate for tiny-llama and SmolLM2, 25
    seeds x 4 settings each). Every draw is made on the CPU from `generator`: generate draws with
    the model's device's generator (a GPU drew other prefixes than a CPU from one seed), and
    transformers 5.24's, on a GPU, defers its stop check: it samples past an end token and drops
    those tokens (read in its source). A whole forward each step: a prefix is a few tokens, and no
    cache argument whose name changes between versions."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    tokens = ids
    with torch.no_grad():
        while tokens.shape[1] < max_length:
            logits = model(input_ids=tokens, use_cache=False).logits[0, -1].float().cpu()
            kth = logits.topk(min(top_k, logits.numel())).values[-1]
            probs = torch.softmax(logits.masked_fill(logits < kth, -torch.inf), -1)
            token = torch.multinomial(probs, 1, generator=generator)
            tokens = torch.cat([tokens, token.view(1, 1).to(tokens.device)], 1)
            if int(token) in eos:
                break
    return tokens


def _length_batches(pieces: list[list[int]], batch_tokens: int) -> list[list[list[int]]]:
    """Pieces longest first, in batches of at most `batch_tokens` tokens padded (one piece at least;
    the published length_collation, tok_dataset.py:49-70)."""
    batches: list[list[list[int]]] = []
    for piece in sorted(pieces, key=len, reverse=True):
        if batches and len(batches[-1][0]) * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(piece)
        else:
            batches.append([piece])
    return batches


class _Enough(Exception):
    """Raised by a hook to end a forward once everything wanted from it is read."""


def mean_key(keys: Tensor) -> Tensor:
    """The bare prompt's key (row 0) and the prefixes' mean key, averaged (ck:39-50)."""
    return keys[0] if len(keys) == 1 else (keys[0] + keys[1:].mean(0)) / 2


class MemitEditor(Editor):
    config_class = MemitConfig
    traits = Editor.traits.but(families=("decoder",))  # the method's models: subject lookup, prefixes, a KL

    def __init__(self, config: MemitConfig, adapter):
        super().__init__(config, adapter)
        self.layers = sorted(adapter.ffn_site(layer).layer_index for layer in config.layers)
        self.sites = [adapter.ffn_site(layer) for layer in self.layers]
        self.templates: list[str] = ["{}"]
        self.second_moments: list[Tensor] = []
        self.stats: dict[str, Any] = {}
        self._fallbacks = 0
        if self.uses_second_moments:  # a missing package or corpus is named before the model is used
            check_source(config.stats_source)

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(site.out_proj.weight)]: site.out_proj.weight for site in self.sites}

    def prepare(self, data: EditorData) -> None:
        super().prepare(data)
        for p in self.trainable_parameters().values():  # written in closed form, never by autograd
            p.requires_grad_(False)
        self.templates = ["{}", *self._prefixes()]
        self.second_moments = self._second_moments(data) if self.uses_second_moments else []
        self.past = self._no_past() if self.keeps_past_keys else []

    @property
    def uses_second_moments(self) -> bool:
        return True

    # -- the corpus statistics -----------------------------------------------------------------------
    def _second_moments(self, data: EditorData) -> list[Tensor]:
        """E[k k^T] over every token of the corpus's pieces at each edited block (rome/layer_stats.py's
        mom2), cached on disk under the weights up to the block, the block, the tokenizer and what
        decides the corpus's tokens, so ROME, MEMIT and AlphaEdit share it and a later run reads it."""
        cfg = self.config
        corpus = resolve_corpus(cfg.stats_source, (e.prompt + str(e.target) for e in [*data.pool, *data.train]))
        settings = {"max_len": cfg.stats_max_len, "texts": cfg.stats_examples, "tokens": cfg.stats_tokens,
                    "tokenizer": self._tokenizer_digest()}
        paths, digest, blocks = [], hashlib.sha1(corpus_key(corpus, **settings).encode()), self.adapter.layer_modules()
        digest.update(self.model.get_input_embeddings().weight.detach().float().cpu().numpy().tobytes())
        for index in range(self.layers[-1] + 1):  # one running digest: each block's weights hashed once
            for p in blocks[index].parameters():
                digest.update(p.detach().float().cpu().numpy().tobytes())
            if index in self.layers:
                paths.append(cache_dir() / "second_moments" / f"{digest.hexdigest()}-{index}.safetensors")
        self.stats = {"source": corpus.name, "texts": None, "tokens": None, "published": PUBLISHED}
        if corpus.deviation:
            self.stats["deviation"] = corpus.deviation
        cached = self._cached_moments(paths)
        if cached is not None:
            return cached
        tok = self.adapter.tokenizer
        pieces, read = token_pieces(corpus.texts(), lambda text: tok(text)["input_ids"], max_len=cfg.stats_max_len,
                                    max_texts=cfg.stats_examples, max_tokens=cfg.stats_tokens,
                                    start=tok("")["input_ids"])
        if not pieces:
            raise ValueError(f"editor.stats_source={cfg.stats_source}: no text to estimate C = E[k k^T] from")
        moments, tokens = self._count_second_moments(pieces, corpus.name, read)
        self.stats.update(texts=read, tokens=tokens)
        from safetensors.torch import save_file

        try:
            paths[0].parent.mkdir(parents=True, exist_ok=True)
            for path, mom2 in zip(paths, moments):
                tensors, about = {"mom2": mom2.cpu().contiguous()}, {"tokens": str(tokens), "texts": str(read)}
                write_atomically(path, lambda tmp, t=tensors, m=about: save_file(t, str(tmp), metadata=m))
                pin(path)
        except OSError as err:  # a full or read-only cache: this run keeps what it computed
            print(f"seqedit: could not cache the second moments at {err.filename} ({err.strerror}); this run goes "
                  "on with them, the next one computes them again", file=sys.stderr)
        return moments

    def _tokenizer_digest(self) -> str:
        """What decides the token ids: the vocabulary and the tokens a text is opened with."""
        tok = self.adapter.tokenizer
        vocab = json.dumps(sorted(tok.get_vocab().items()), ensure_ascii=False)
        return hashlib.sha1((vocab + repr(tok("A b.")["input_ids"])).encode()).hexdigest()

    def _cached_moments(self, paths: list[Path]) -> list[Tensor] | None:
        """The cached E[k k^T] of every block, where each file is whole, matches its checksum and
        holds one square matrix over the block's keys; else None (and a damaged file is named)."""
        if not all(path.exists() for path in paths):
            return None
        from safetensors import safe_open

        out = []
        for path, site in zip(paths, self.sites):
            try:
                if pin_mismatch(path):
                    mom2 = None
                else:
                    with safe_open(str(path), "pt") as f:
                        mom2, about = f.get_tensor("mom2"), f.metadata() or {}
                    for count in ("tokens", "texts"):  # files cached before the counts were kept have none
                        if count in about:
                            self.stats[count] = int(about[count])
            except Exception:  # cut or foreign: safetensors' own error, or no "mom2"
                mom2 = None
            keys = linear_shape(site.out_proj)[0]
            if mom2 is None or tuple(mom2.shape) != (keys, keys):
                print(f"seqedit: the cached second moment {path} is damaged; computing it again", file=sys.stderr)
                return None
            if not pin_path(path).exists():
                pin(path)
            out.append(mom2.to(self.adapter.device))
        return out

    def _count_second_moments(self, pieces: list[list[int]], name: str, texts: int) -> tuple[list[Tensor], int]:
        """One pass over the pieces for every edited block, stopped after the deepest one (the
        published nethook's Trace(stop=True)): nothing after it runs. Batches of pieces of like
        length, padded on the right, at most 3 pieces' worth of tokens (layer_stats.py:150); each
        batch's k^T k in float32 (the published precision), summed over batches in float64."""
        totals: list[Tensor | None] = [None] * len(self.sites)
        mask = torch.zeros(0, dtype=torch.bool)
        tokens = sum(map(len, pieces))

        def keep(i):
            def hook(_m, args):
                keys = args[0][mask].float()
                moment = (keys.T @ keys).double()
                totals[i] = moment if totals[i] is None else totals[i] + moment
                if i == len(self.sites) - 1:
                    raise _Enough
            return hook

        print(f"seqedit: C = E[k k^T] at blocks {self.layers} from {name}: {tokens:,} tokens of {texts:,} texts "
              f"(published: {PUBLISHED}); cached for later runs", file=sys.stderr)
        began, done = time.perf_counter(), 0
        bar = tqdm(total=tokens, desc="C", unit="tok", unit_scale=True, disable=None)  # on a terminal only
        pad = self.adapter.tokenizer.pad_token_id or 0
        with installed([site.out_proj.register_forward_pre_hook(keep(i)) for i, site in enumerate(self.sites)]):
            with torch.no_grad(), bar:
                for batch in _length_batches(pieces, 3 * self.config.stats_max_len):
                    width = len(batch[0])
                    ids = torch.tensor([p + [pad] * (width - len(p)) for p in batch], device=self.adapter.device)
                    mask = torch.tensor([[True] * len(p) + [False] * (width - len(p)) for p in batch],
                                        device=self.adapter.device)
                    try:
                        self.model(input_ids=ids, attention_mask=mask.long(), use_cache=False)
                    except _Enough:
                        pass
                    if done == 0 and tokens > 100_000:  # the first batch times the rest
                        seconds = (time.perf_counter() - began) * tokens / int(mask.sum())
                        print(f"seqedit: about {seconds / 60:.1f} min for C on this machine", file=sys.stderr)
                    done += int(mask.sum())
                    bar.update(int(mask.sum()))
        return [(total / tokens).float() for total in totals], tokens

    def _prefixes(self) -> list[str]:
        """`context_templates` prefixes sampled from the model (top-k 5, 10 tokens, one per start
        word in turn; mm get_context_templates), each then '. {}'."""
        n = self.config.context_templates
        if n == 0:
            return []
        tok = self.adapter.tokenizer
        starts = [PREFIX_STARTS[i % len(PREFIX_STARTS)] for i in range(n)]
        generator = torch.Generator().manual_seed(self.config.seed)
        return [self._template(tok([start], return_tensors="pt")["input_ids"], 10, generator) for start in starts]

    def _template(self, ids: Tensor, length: int, generator: torch.Generator) -> str:
        """A prefix sampled from `ids` (top-k 5, `length` tokens), braces blanked, then '. {}'."""
        tok = self.adapter.tokenizer
        gen = sample_continuation(self.model, ids.to(self.adapter.device), length, 5, generator)
        return tok.decode(gen[0], skip_special_tokens=True).replace("{", " ").replace("}", " ") + ". {}"

    # -- where the fact is looked up ----------------------------------------------------------------------
    def _lookup(self, texts: list[str], subject: str | None) -> list[int] | None:
        """Index of the subject's last token in each text (fact_token=subject_last), or None
        where a text does not contain the subject."""
        tok, out = self.adapter.tokenizer, []
        for text in texts:
            at = text.find(subject) if subject else -1
            if at < 0:
                return None
            out.append(len(tok(text[: at + len(subject)], add_special_tokens=True)["input_ids"]) - 1)
        return out

    def _requests(self, example: Example) -> tuple[list[str], list[int], str | None]:
        """The prompt under every template and the lookup positions; where the prompt does not
        contain the example's subject, its last token (counted in the fold report)."""
        texts = [t.replace("{}", example.prompt) for t in self.templates]
        positions = self._lookup(texts, example.subject)
        if positions is None:
            self._fallbacks += 1
            positions = [len(self.adapter.tokenizer(t, add_special_tokens=True)["input_ids"]) - 1 for t in texts]
            return texts, positions, None
        return texts, positions, example.subject

    def _read(self, texts: list[str], positions: list[int], modules: list[tuple[Any, bool]]) -> list[Tensor]:
        """From one forward, [n, d] at one position of each text for each (module, output): the
        module's output (True) or input (False). The forward stops once all are read."""
        seen: dict[int, Tensor] = {}

        def keep(i: int, value) -> None:
            seen.setdefault(i, value[0] if isinstance(value, tuple) else value)
            if len(seen) == len(modules):
                raise _Enough  # nothing after the last of them is read

        def keeper(i, output):
            if output:
                return lambda _m, _a, out: keep(i, out)
            return lambda _m, args: keep(i, args[0])

        with installed([module.register_forward_hook(keeper(i, True)) if output
                        else module.register_forward_pre_hook(keeper(i, False))
                        for i, (module, output) in enumerate(modules)]), torch.no_grad():
            try:
                self.adapter.scored_logits(self.adapter.encode(texts, [" x"] * len(texts)))
            except _Enough:
                pass
        rows, at = torch.arange(len(texts)), torch.tensor(positions)
        return [seen[i][rows, at].double() for i in range(len(modules))]

    # -- editing --------------------------------------------------------------------------------------
    def edit(self, example: Example) -> EditResult:
        texts, positions, subject = self._requests(example)
        z_block = self.adapter.layer_modules()[self.layers[-1]]
        z, steps = self._target_vector(example, texts, positions, subject, z_block)
        for i, site in enumerate(self.sites):  # each on the model the earlier blocks' updates left
            keys, outputs = self._read(texts, positions, [(site.out_proj, False), (z_block, True)])
            residual = (z - outputs[0]) / (len(self.sites) - i)  # at the bare prompt
            self._update(i, site, mean_key(keys), residual)
        self._after_edit(texts, positions)
        return EditResult(steps=steps, info={"subject_found": subject is not None})

    @property
    def keeps_past_keys(self) -> bool:
        """Whether the keys of the fold's earlier edits join the update's preserved keys (memit_seq,
        AlphaEdit), kept as sum k k^T per block in float32, as the published cache_c."""
        return self.config.past_keys

    @torch.no_grad()
    def _delta(self, i: int, key: Tensor, residual: Tensor) -> Tensor:
        """Block i's update [out, in], in float64 as the published code solves it."""
        C = self.config.mom2_update_weight * self.second_moments[i].double()
        if self.keeps_past_keys:  # memit_seq_main.py:198-200: lambda C + cache_c + k k^T
            C = C + self.past[i].double()
        adj = torch.linalg.solve(C + torch.outer(key, key), key)
        return torch.outer(residual, adj)

    @torch.no_grad()
    def _update(self, i: int, site, key: Tensor, residual: Tensor) -> None:
        site.out_proj.weight += self._delta(i, key, residual).to(site.out_proj.weight.dtype)

    def _after_edit(self, texts: list[str], positions: list[int]) -> None:
        """The keys of this edit, read on the edited model, join the preserved ones where the editor
        keeps them (am:146-148, memit_seq_main.py:226-228); plain MEMIT keeps nothing."""
        if not self.keeps_past_keys:
            return
        keys = self._read(texts, positions, [(site.out_proj, False) for site in self.sites])
        for i, k in enumerate(keys):
            k = mean_key(k).float()
            self.past[i] += torch.outer(k, k)

    def _no_past(self) -> list[Tensor]:
        return [torch.zeros(C.shape, dtype=torch.float32, device=self.adapter.device) for C in self.second_moments]

    def _target_vector(self, example: Example, texts, positions, subject, block) -> tuple[Tensor, int]:
        cfg, adapter = self.config, self.adapter
        rows = texts + ([subject] if subject else [])
        batch = adapter.encode(rows, [example.target] * len(texts) + ([" is a"] if subject else []))
        at = torch.tensor(positions + ([len(adapter.tokenizer(subject)["input_ids"]) - 1] if subject else []))
        rewrite = torch.isin(batch.owner, torch.arange(len(texts), device=batch.owner.device))
        kl_row = (batch.owner == len(texts)).nonzero()[:1, 0] if subject else None
        delta = torch.zeros(self.sites[-1].width, device=adapter.device, requires_grad=True)
        seen: dict[str, Tensor] = {}
        where = {"at": at}  # delta's position in each row of the forward that runs

        def add_delta(_m, _args, out):
            hidden = out[0] if isinstance(out, tuple) else out
            seen.setdefault("init", hidden[0, where["at"][0]].detach().clone())
            hidden = hidden.clone()
            hidden[torch.arange(len(at)), where["at"]] += delta.to(hidden.dtype)
            return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

        optimizer = torch.optim.Adam([delta], lr=cfg.v_lr)
        kl_init, steps = None, 0
        with installed([block.register_forward_hook(add_delta)]):
            forward = partial(adapter.scored_logits, batch)
            first = adapter.trained_suffix(block.parameters())
            # only delta changes, at `at` or later: earlier blocks, and earlier positions, stay as they are
            rerun = kept_positions(adapter, batch, first, at) if cfg.mode == "kv" else None
            if rerun is not None:  # each row reruns from delta's position on: delta at its first position
                forward, where["at"] = rerun[1], torch.zeros_like(at)
            elif cfg.mode != "naive" and adapter.replays_blocks:
                # bit for bit the full forward: Adam's steps turn any rounding difference into a different v*
                _, forward = adapter.suffix(batch, first, as_forward=True)
            with torch.enable_grad():
                for steps in range(1, cfg.v_steps + 1):
                    logits = forward()
                    nll = F.cross_entropy(logits[rewrite].float(), batch.targets[rewrite])
                    loss = nll + cfg.v_weight_decay * delta.norm() / seen["init"].norm() ** 2
                    if kl_row is not None:
                        log_probs = F.log_softmax(logits[kl_row].float(), -1)
                        kl_init = log_probs.detach() if kl_init is None else kl_init
                        loss = loss + cfg.kl_factor * F.kl_div(kl_init, log_probs, log_target=True,
                                                               reduction="batchmean")
                    if loss.item() < 5e-2 or steps == cfg.v_steps:
                        break
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        limit = cfg.clamp_norm_factor * seen["init"].norm()
                        if delta.norm() > limit:
                            delta.mul_(limit / delta.norm())
        return (seen["init"] + delta.detach()).double(), steps

    def fold_report(self) -> dict[str, Any]:
        """Edits whose prompt lacked the subject, and where C came from: its source, texts and
        tokens (the published code: 100,000 Wikipedia texts)."""
        report = {"edits_without_subject": self._fallbacks}
        if self.uses_second_moments:
            report["second_moment"] = dict(self.stats)
        return report

    def reset(self) -> None:
        super().reset()
        self._fallbacks = 0
        self.past = self._no_past() if self.keeps_past_keys else []

    def edit_state(self) -> dict[str, Any]:
        if not self.keeps_past_keys:
            return super().edit_state()
        return {"weights": super().edit_state(), "past": [p.clone() for p in self.past]}

    def load_edit_state(self, state: dict[str, Any]) -> None:
        if not self.keeps_past_keys:
            return super().load_edit_state(state)
        super().load_edit_state(state["weights"])
        self.past = [p.clone() for p in state["past"]]


class AlphaEditEditor(MemitEditor):
    config_class = AlphaEditConfig

    def prepare(self, data: EditorData) -> None:
        super().prepare(data)
        self.projections, self.null_dims = [], []
        for C in self.second_moments:  # ev:405-421: U over C's singular values below the threshold
            U, S, _ = torch.linalg.svd(C.float().cpu(), full_matrices=False)
            small = U[:, S < self.config.nullspace_threshold]
            self.projections.append((small @ small.T).to(self.adapter.device))
            self.null_dims.append(small.shape[1])

    @torch.no_grad()
    def _update(self, i: int, site, key: Tensor, residual: Tensor) -> None:
        P, eye = self.projections[i], torch.eye(len(key), device=key.device)
        k = key.float()[:, None]
        upd = torch.linalg.solve(P @ (k @ k.T + self.past[i]) + self.config.l2 * eye, P @ k @ residual.float()[None])
        site.out_proj.weight += upd.T.to(site.out_proj.weight.dtype)

    def fold_report(self) -> dict[str, Any]:
        return {**super().fold_report(), "null_space_dims": list(self.null_dims)}


class RomeEditor(MemitEditor):
    config_class = RomeConfig

    @property
    def uses_second_moments(self) -> bool:
        return self.config.mom2_adjustment

    @property
    def keeps_past_keys(self) -> bool:
        return False  # ROME's update (rm) keeps nothing between edits

    def _prefixes(self) -> list[str]:
        """ROME's prefixes: sampled from the start token alone (top-k 5), the first half 5 tokens
        long, the rest 10 (rm:213-236), each then '. {}'."""
        n, tok = self.config.context_templates, self.adapter.tokenizer
        start = tok.bos_token or tok.eos_token
        generator = torch.Generator().manual_seed(self.config.seed)
        ids = tok([start], return_tensors="pt", add_special_tokens=False)["input_ids"]
        return [self._template(ids, 5 if i < n // 2 else 10, generator) for i in range(n)]

    def edit(self, example: Example) -> EditResult:
        texts, positions, subject = self._requests(example)
        site = self.sites[0]
        z, steps = self._target_vector(example, texts, positions, subject, site.out_proj)  # v* at the FFN output
        keys, outputs = self._read(texts, positions, [(site.out_proj, False), (site.out_proj, True)])
        u = keys.mean(0)  # cu:84-96, the mean over every template, the bare prompt's included
        if self.config.mom2_adjustment:
            u = torch.linalg.solve(self.second_moments[0].double(), u)
        u = u / u.norm()
        # at the bare prompt (cv:170-181); C-ROME: at the prefix-averaged key and output, u's own
        # key, so the denominator is k* . C^-1 k* / |C^-1 k*| (> 0 for a positive definite C) or
        # |k*|, where the bare key's k . u can come near 0 and blow the update up (the collapse
        # the Fall-of-ROME paper traces); both are recorded
        at = slice(None) if self.config.consistent_keys else slice(0, 1)
        denominator = torch.dot(keys[at].mean(0), u)
        v = (z - outputs[at].mean(0)) / denominator
        with torch.no_grad():
            site.out_proj.weight += torch.outer(v, u).to(site.out_proj.weight.dtype)
        return EditResult(steps=steps, info={"subject_found": subject is not None, "k_dot_u": float(denominator),
                                             "update_norm": float(v.norm())})
