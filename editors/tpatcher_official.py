"""T-Patcher's edit as the published code runs it (`editor.recipe=official`).

ZeroYuHuang/Transformer-Patcher at commit fec629a; `s2s` is src/models/seq2seq_modules.py, `cls`
src/models/class_modules.py, `patch` src/models/patch.py, `utils` src/utils.py, `tp`
scripts/T-patch.py. Each edit is a Lightning fit of one batch per epoch, which here is one step:

* the batch is the example 8 times (utils:30) in train mode, so each copy has its own dropout
  mask (a model without dropout, such as LLaMA, gives 8 equal copies);
* loss = edit loss + alc * l_a + mlc * (l_m1 + l_m2) (s2s:404-417), alc 1 (utils:80), mlc 5
  (utils:72); the edit loss is the label-smoothed NLL, eps 0.1, over the target tokens
  (s2s:306-311) or, for classification, BCE - 0.1 * Bernoulli entropy (cls:551-556);
* l_a = mean of the top 5 of exp(-act) over copies and patches (patch:49-60); the memory losses
  over every (memory row, copy, patch): l2 = S(mem - act + m1; 1000) and l1 = S(mem - m2; 1000),
  m1, m2 = 3, -3 for the classifier and 0, 0 for QA (`MARGINS`)
  (patch:64-88, 194-204), so a row counts once per copy and the top 1,000 hold ~125 rows;
* Adam lr 0.01, weight decay 0.01 (s2s:484; utils:55-56), gradient norm clipped at 5 (tp:87),
  ReduceLROnPlateau(min, factor 0.5, patience 1, threshold 0.05) on the edit loss in eval mode
  every 25 epochs (s2s:495-506; utils:57-58, 68);
* stop rule (s2s:432-449, cls:377-390): every 25 epochs from epoch 100 (so first after 125
  steps), in eval mode; if the edit is right (greedy generation, NUM_BEAMS 1), the memory loss on
  the *validation* memory (D_val's queries, tp:208-213) is appended to a list, and the edit stops
  as soon as the newest value is not 0.001 below the best (patience 1); else at 2,000 epochs
  (utils:33);
* key initialised at q / |q|^2 (patch:147-150, use_init_weight utils:61), bias 0; value = v * a
  with v ~ N(0, 1) (patch:247) and a trainable, initialised at 10 (amplify_con, patch:250, 266);
* after the edit its queries join both memories (tp:102-103; the code appends rows [1:-1] of the
  detector's hidden states, s2s:201-202; here the edit's own queries, once); the memory grows with
  edited examples only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.models.task import Task
from benchmark.types import CLASSIFICATION, GENERATION, Example
from editors.base import EditResult
from editors.patch_memory import smooth_top

COPIES = 8  # utils:30
WEIGHT_DECAY, CLIP_NORM = 0.01, 5.0  # utils:56; tp:87
CHECK_EVERY, FIRST_CHECK_EPOCH = 25, 100  # utils:68, 46
PLATEAU = {"mode": "min", "factor": 0.5, "patience": 1, "threshold": 0.05}  # s2s:495-500
STOP_THRESHOLD = 0.001  # s2s:444-446
SMOOTHING = 0.1  # BartSeq2Seq eps (s2s:536); BertBinary eps (cls:486)
MEMORY_TOPK, ACTIVATION_TOPK = 1000, 5  # utils:71, 78
# the memory loss's margins (margin_val1, margin_val2) per task: the classifier's editor hands the
# arguments' 3 and -3 (utils:74-75) to its patch (cls:217-218); the QA editor's get_editors leaves
# them out (s2s:234-242), so its patch keeps ModifyLinearOutput's defaults, 0 and 0 (patch.py:99)
MARGINS = {CLASSIFICATION: (3.0, -3.0), GENERATION: (0.0, 0.0)}


def official_edit_loss(task: Task, batch, logits: Tensor) -> Tensor:
    """The editor's own task loss in the published code: smoothed, averaged over the target
    tokens (s2s:536-540) or the BCE minus the smoothed entropy (cls:486)."""
    return task.smoothed_loss(logits, batch.targets, SMOOTHING, token_mean=True)


def memory_loss(memory: Tensor, keys: Tensor, bias: Tensor, acts: Tensor, margins: tuple[float, float]) -> Tensor:
    """l1 + l2 over every (memory row, copy, patch), as calculate_memory_loss forms them
    (patch.py:64-88): memory [M, d], acts [copies, n], margins (margin_val1, margin_val2)."""
    his = (memory @ keys + bias)[:, None, :]  # [M, 1, n]
    l_margin = smooth_top(his - acts[None] + margins[0], MEMORY_TOPK)
    l_ceiling = smooth_top((his - margins[1]).expand(-1, acts.shape[0], -1), MEMORY_TOPK)
    return l_margin + l_ceiling


def stop_now(losses: list[float]) -> bool:
    """early_stop_editing(mode=min, thd=0.001, patience=1) (s2s:374-388)."""
    best = 0
    for step, value in enumerate(losses):
        if value < losses[best] - STOP_THRESHOLD:
            best = step
    return best < len(losses) - 1


def edit_official(editor, example: Example) -> tuple[EditResult, Tensor]:
    """One edit by the published recipe (see the module docstring); `editor` is a TPatcherEditor
    whose `memory` holds the training memory and `val_memory` the validation memory's queries.
    Returns the result and the patches' own queries."""
    cfg, adapter = editor.config, editor.adapter
    one = adapter.encode([example.prompt], [example.target])
    with torch.no_grad():
        cache = adapter.capture(one, cfg.layer)
    wrong = (~adapter.token_correct(one, cache.logits)).nonzero().squeeze(1)
    rows = wrong[: cfg.max_patches]
    if len(rows) == 0:
        rows = torch.arange(1)
    own = cache.query[cache.scored][rows].float()
    n, width = len(rows), editor.site.width
    keys = nn.Parameter((own / own.pow(2).sum(-1, keepdim=True)).T.clone())
    bias = nn.Parameter(torch.zeros(n, device=own.device))
    # drawn on the CPU, then moved: the same seed gives the same draws on any device
    value_dir = nn.Parameter(torch.randn(n, width).to(own.device))
    value_scale = nn.Parameter(torch.full((n, width), cfg.value_scale, device=own.device))
    params = [keys, bias, value_dir, value_scale]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **PLATEAU)
    copies = adapter.encode([example.prompt] * COPIES, [example.target] * COPIES)
    margins = MARGINS[adapter.task.kind]
    seen: dict[str, Tensor] = {}

    def delta(q: Tensor) -> Tensor:
        seen["q"] = q
        return editor.act(q.to(keys.dtype) @ keys + bias) @ (value_dir * value_scale)

    def forward(batch) -> tuple[Tensor, Tensor]:
        """Logits and each copy's patch activations at its own positions [copies, n]."""
        with adapter.added_to_ffn(delta, cfg.layer):
            logits = adapter.scored_logits(batch)
        q = seen.pop("q")[batch.score_mask].reshape(batch.size, -1, width)[:, rows]  # [copies, n, d]
        return logits, (q.to(keys.dtype) * keys.T).sum(-1) + bias

    val_losses: list[float] = []
    stopped, steps, holds = False, 0, False
    model = adapter.model
    try:
        for epoch in range(cfg.max_steps):
            model.train()
            with torch.enable_grad():
                logits, acts = forward(copies)
                loss = official_edit_loss(adapter.task, copies, logits)
                loss = loss + cfg.activation_weight * smooth_top(-acts, ACTIVATION_TOPK)
                if cfg.memory_loss != "none" and len(editor.memory):
                    loss = loss + cfg.memory_weight * memory_loss(editor.memory.matrix, keys, bias, acts, margins)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
                optimizer.step()
            steps = epoch + 1
            if steps % CHECK_EVERY:
                continue
            model.eval()
            with torch.no_grad():  # Lightning's validation: eval mode, the same batch
                logits, acts = forward(copies)
                holds = bool(adapter.token_correct(copies, logits).all())
                if epoch >= FIRST_CHECK_EPOCH and holds:
                    val_losses.append(float(memory_loss(editor.val_memory, keys, bias, acts, margins))
                                      if cfg.memory_loss != "none" and len(editor.val_memory) else 0.0)
                    stopped = stop_now(val_losses)
                plateau.step(float(official_edit_loss(adapter.task, copies, logits)))
            if stopped:
                break
    finally:
        model.eval()
    with torch.no_grad():
        logits, acts = forward(one)
        holds = bool(adapter.token_correct(one, logits).all())
    editor.bank.append(keys.detach(), bias.detach(), (value_dir * value_scale).detach())
    info = {"patches": n, "solved": stopped, "holds": holds, "activation": acts[0].tolist(),
            "val_memory_losses": val_losses, "lr_final": optimizer.param_groups[0]["lr"]}
    if not stopped:
        info["failure"] = (f"max_steps ({cfg.max_steps}): the published stop rule never fired "
                           f"({len(val_losses)} checks with the edit right)")
    return EditResult(steps=steps, info=info), own
