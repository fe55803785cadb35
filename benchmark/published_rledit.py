"""seqedit's RLEdit beside the published network and functions, on the same keys and gradients.

`python -m benchmark.published_rledit --repo PATH` imports `RLEditNet` from the checkout's nets.py
(XiaojieGu/UltraEdit, or the authors' RLEdit: the same file), gives it seqedit's network weights
and normaliser statistics, and runs the published update (editor/rledit.py `predict_param_shifts`,
rl:199-215: rows in padded batches of 128, the ridge solve) and the gradient it carries to the
network by hand (`update_hypernet`, rl:236-257) on the keys and gradients seqedit reads from a tiny
LLaMA, two turns of edits. Prints one JSON line: the largest relative differences of dW^T and of
the network's gradient. Nothing of the published code is kept here; it is read from the checkout.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from benchmark.models.base import linear_shape
from benchmark.published_code import tiny_check_main

PAD = 128  # the published editor.batch_size: rows go through the network in padded batches of it


def published_network(repo: Path):
    """The checkout's `RLEditNet` class (nets.py imports torch only)."""
    path = repo / "nets.py"
    if not path.is_file():
        raise FileNotFoundError(f"--repo {repo}: no nets.py (a checkout of XiaojieGu/UltraEdit or the RLEdit code)")
    spec = importlib.util.spec_from_file_location("published_nets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RLEditNet


def _padded(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows, rows.new_zeros(PAD - len(rows), rows.shape[1])]) if len(rows) < PAD else rows[:PAD]


def _copy_into(published, ours, normaliser) -> None:
    with torch.no_grad():
        for theirs, mine in zip(published.blocks, ours.blocks):
            theirs.A.copy_(mine.A)
            theirs.B.copy_(mine.B)
            theirs.bias.copy_(mine.bias)
            theirs.scale.weight.copy_(mine.scale)
            theirs.shift.weight.copy_(mine.shift)
        published.lr.weight.copy_(ours.lr[:, None])
        published.lamda.weight.copy_(ours.log_lambda[:, None])
        for name in ("n", "mean", "var", "std"):
            getattr(published.normalizer, name).copy_(getattr(normaliser, name))


def _published_values(net, keys, grads, slot):
    """rl:199-212: the values of every row, through the network in padded batches."""
    values = []
    for start in range(0, len(keys), PAD):
        k, g = _padded(keys[start : start + PAD]), _padded(grads[start : start + PAD])
        pseudo_keys, pseudo_grads = net(k, g, slot)
        coeffs = -net.lr(slot) * (k * pseudo_keys).sum(-1).unsqueeze(-1)
        values.append((coeffs * pseudo_grads)[: len(keys) - start])
    return torch.cat(values)


def _compare_layer(net, editor, index: int, keys, grads) -> tuple[float, float]:
    """(relative difference of dW^T, of the network's gradient) for one rewritten layer."""
    module, slot = editor.layers[index], torch.LongTensor([editor.slot[index]])
    d_in, _ = linear_shape(module)
    with torch.no_grad():
        gram = keys.T @ keys + net.lamda(slot).exp() * torch.eye(d_in)
        theirs = torch.linalg.solve(gram, keys.T @ _published_values(net, keys, grads, slot))
    ours = editor._shift(index, module, keys, grads)
    weight_grad = torch.randn(theirs.shape, generator=torch.Generator().manual_seed(index))  # a dL/d(dW^T)
    with torch.no_grad():  # rl:240-243
        mat = torch.linalg.solve(gram, weight_grad)
        lambda_grad = -net.lamda(slot).exp() * (mat * theirs).sum()
    (lambda_grad * net.lamda(slot)).sum().backward()
    ((keys @ mat) * _published_values(net, keys, grads, slot)).sum().backward()  # rl:244-257
    mine = editor.hypernet[f"{d_in}x{theirs.shape[1]}"]
    mine.zero_grad()
    (ours * weight_grad).sum().backward()
    pairs = [(t.A.grad, m.A.grad) for t, m in zip(net.blocks, mine.blocks)]
    pairs += [(t.B.grad, m.B.grad) for t, m in zip(net.blocks, mine.blocks)]
    pairs += [(net.lr.weight.grad[:, 0], mine.lr.grad), (net.lamda.weight.grad[:, 0], mine.log_lambda.grad)]
    shift = float((ours.detach() - theirs).abs().max() / theirs.abs().max())
    grad = max(float((t - m).abs().max() / t.abs().max().clamp_min(1e-30)) for t, m in pairs)
    return shift, grad


def compare(repo: Path, rank: int = 16, blocks: int = 3) -> dict:
    import editors  # noqa: F401  (registers the editors)
    from benchmark.models import ModelConfig, build_model
    from benchmark.registry import EDITORS
    from benchmark.types import Example

    network = published_network(repo)
    torch.manual_seed(0)
    adapter = build_model(ModelConfig(name="tiny-llama"))
    last = len(adapter.layer_modules()) - 1
    entry = EDITORS.get("rledit")
    editor = entry.target(entry.config_class(name="rledit", in_layers=[0], up_layers=[0], out_layers=[last],
                                             rank=rank, hidden_blocks=blocks, lr=1e-3), adapter)
    with torch.no_grad():  # away from the identity the network starts as, so every path carries gradient
        for p in editor.hypernet.parameters():
            p.add_(0.05 * torch.randn_like(p) * (1e-3 if p.numel() < 4 else 1))
    edits = [Example("a", "The capital of France is", " Oslo Lima"), Example("b", "Peru lies in", " Asia Doha")]
    worst = {"shift": 0.0, "gradient": 0.0}
    for turn in (edits, edits[::-1]):
        pairs = editor._keys_and_gradients(turn)
        for module, (keys, grads) in zip(editor.layers, pairs):
            editor.normalisers[linear_shape(module)].update(torch.cat([keys, grads], -1))
        for index, (keys, grads) in enumerate(pairs):
            ours = editor.hypernet[f"{keys.shape[1]}x{grads.shape[1]}"]
            net = network(keys.shape[1], grads.shape[1], rank, blocks, len(ours.lr), 1e-3)
            _copy_into(net, ours, editor.normalisers[(keys.shape[1], grads.shape[1])])
            shift, grad = _compare_layer(net, editor, index, keys, grads)
            worst = {"shift": max(worst["shift"], shift), "gradient": max(worst["gradient"], grad)}
    return {"model": "tiny-llama", "layers": len(editor.layers), "turns": 2,
            "max_relative_diff_update": worst["shift"], "max_relative_diff_network_gradient": worst["gradient"]}


def main(argv=None) -> None:
    tiny_check_main(argv, "benchmark.published_rledit", __doc__.split("\n")[0],
                    "a checkout holding the published nets.py", compare)


if __name__ == "__main__":
    main()
