"""EMMET (Gupta, Sajnani and Anumanchipalli 2024, "A Unified Framework for Model Editing"): MEMIT's
locate-then-edit with the edited keys held by equality constraints instead of least squares.

Read in the published code: EasyEdit (zjunlp/EasyEdit at 14cea82) `em` easyeditor/models/emmet/
emmet_main.py, `ek` compute_ks.py; preset hparams/EMMET/llama-7b.yaml. v*, the keys (the bare
prompt's and the prefixes' mean key, ek:39-50) and the residual spread over the blocks left are
MEMIT's (editors/memit.py). The update of block l (em:209-237), in float64:
    C' = lambda C + mu I,  D = K^T C'^-1 K + emmet_lambda I,  W += R D^-1 K^T C'^-1
so that W K = V exactly when emmet_lambda = 0 (MEMIT's (lambda C + K K^T)^-1 only nears it). Each
edit stands alone against C, as EasyEdit runs EMMET sequentially (no earlier keys kept).
"""

from __future__ import annotations

import torch
from torch import Tensor

from editors.configs.memit import EmmetConfig  # noqa: F401  (its config, torch-free)
from editors.memit import MemitEditor


class EmmetEditor(MemitEditor):
    config_class = EmmetConfig

    @property
    def keeps_past_keys(self) -> bool:
        return False

    @torch.no_grad()
    def _update(self, i: int, site, key: Tensor, residual: Tensor) -> None:
        cfg = self.config
        C = cfg.mom2_update_weight * self.second_moments[i].double()
        if cfg.update_norm_lambda:
            C = C + cfg.update_norm_lambda * torch.eye(len(C), dtype=C.dtype, device=C.device)
        # one request: K is one column, D a scalar (em's inverse of D is 1 / D)
        c_inv_k = torch.linalg.solve(C, key)
        adj = c_inv_k / (torch.dot(key, c_inv_k) + cfg.emmet_lambda)
        site.out_proj.weight += torch.outer(residual, adj).to(site.out_proj.weight.dtype)
