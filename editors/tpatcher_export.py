"""Save a patched model as an ordinary Hugging Face checkpoint, loadable without seqedit.

Patches become extra FFN neurons: the patched layer's input projection gains one row per patch
(key and bias), its output projection one column (value). Configs hold one FFN width for all
layers, so every other layer of the same stack is widened by zero neurons: act(0 . q + 0) = 0
for GELU and ReLU, so their outputs are unchanged exactly.

A LLaMA MLP, down(silu(gate q) * up q), expresses a patch exactly when the patch's activation is
SiLU (`editor.activation=silu`): gate row k_p with bias b_p, up row 0 with bias 1, down column
v_p, which needs the config's `mlp_bias` (zero biases everywhere else). The default ReLU patch has
no such form, so it is refused with the reason.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# model_type -> (config field of the FFN width, function returning the layers that share it)
WIDTH_FIELDS = {
    "bert": ("intermediate_size", lambda adapter: adapter.layer_modules()),
    "roberta": ("intermediate_size", lambda adapter: adapter.layer_modules()),
    "bart": ("decoder_ffn_dim", lambda adapter: adapter.layer_modules()),
}


def _widen(linear: nn.Linear, rows: torch.Tensor | None = None, bias: torch.Tensor | None = None,
           columns: torch.Tensor | None = None) -> None:
    """Append output rows (with bias) or input columns to a Linear, in place."""
    with torch.no_grad():
        if rows is not None:
            linear.weight = nn.Parameter(torch.cat([linear.weight, rows.to(linear.weight.dtype)], 0))
            linear.bias = nn.Parameter(torch.cat([linear.bias, bias.to(linear.bias.dtype)]))
            linear.out_features = linear.weight.shape[0]
        if columns is not None:
            linear.weight = nn.Parameter(torch.cat([linear.weight, columns.to(linear.weight.dtype)], 1))
            linear.in_features = linear.weight.shape[1]


def save_patched(editor, path: str | Path) -> Path:
    """Write the editor's model with its patches folded in (into a copy: the editor's model and
    its patches stay as they are)."""
    import copy

    adapter, site = editor.adapter, editor.site
    model_type = adapter.model.config.model_type
    silu = editor.bank.act is torch.nn.functional.silu
    if site.gated:
        if model_type != "llama" or not silu:
            raise ValueError(f"cannot fold patches into a {model_type} checkpoint: a gated MLP expresses a patch "
                             "only as a SiLU neuron of a llama MLP (run with editor.activation=silu)")
    elif model_type not in WIDTH_FIELDS:
        raise ValueError(f"no FFN width field known for {model_type}")
    elif editor.bank.act is not {"gelu": torch.nn.functional.gelu, "relu": torch.nn.functional.relu}[site.activation]:
        raise ValueError("the patch activation differs from the FFN's own; the checkpoint could not reproduce it")
    with editor.disabled():  # a copy without the patch hooks
        model = copy.deepcopy(adapter.model)
    twin = type(adapter)(model, adapter.tokenizer, adapter.config)  # finds the same modules in the copy
    if site.gated:
        _fold_into_llama(editor, twin)
    else:
        _fold_into_ffn(editor, twin, model_type)
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    adapter.tokenizer.save_pretrained(path)
    return path


def _fold_into_ffn(editor, twin, model_type: str) -> None:
    width_field, layers_of = WIDTH_FIELDS[model_type]
    n, site = len(editor.bank), editor.site
    for index in range(len(layers_of(twin))):
        ffn = twin.ffn_site(index)
        if index == site.layer_index:
            keys, bias, values = editor.bank.keys.T, editor.bank.bias, editor.bank.values.T
        else:
            keys, bias, values = torch.zeros(n, ffn.width), torch.zeros(n), torch.zeros(ffn.width, n)
        _widen(ffn.in_proj, rows=keys, bias=bias)
        _widen(ffn.out_proj, columns=values)
    setattr(twin.model.config, width_field, getattr(twin.model.config, width_field) + n)


def _zero_bias(linear: nn.Linear) -> None:
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype))


def _fold_into_llama(editor, twin) -> None:
    n, site = len(editor.bank), editor.site
    for index, block in enumerate(twin.layer_modules()):
        mlp = block.mlp
        for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            _zero_bias(linear)
        width = mlp.gate_proj.in_features
        if index == site.layer_index:
            keys, bias, values = editor.bank.keys.T, editor.bank.bias, editor.bank.values.T
            up_bias = torch.ones(n)
        else:
            keys, bias, values, up_bias = torch.zeros(n, width), torch.zeros(n), torch.zeros(width, n), torch.zeros(n)
        _widen(mlp.gate_proj, rows=keys, bias=bias)
        _widen(mlp.up_proj, rows=torch.zeros(n, width), bias=up_bias)
        _widen(mlp.down_proj, columns=values)
    config = twin.model.config
    config.intermediate_size += n
    config.mlp_bias = True
