"""Evaluation from a cached prefix (`PrefixCache`): the logits of a replayed batch are the full
forward's, bit for bit, for every family that replays, at the first, a middle and the last
block, for several batch sizes, after the replayed blocks changed; anything else changing (a
weight before them, a hook there, a replaced block, a global hook, the head tied to the
embeddings) drops the entries; train mode, no declared block or no room run the full forward."""

import pytest
import torch

from benchmark.models.prefix_cache import PrefixCache
from tests.conftest import DONORS, tiny

REPLAYING = {"decoder": "tiny-llama", "classifier": "tiny-bert", "masked": "tiny-bert-mlm"}
PROMPTS = [*DONORS, "Oslo is the capital of", "The river through Paris is the", "Mount Fuji is in"]


def _model(family: str, layers: int = 3):
    return tiny(REPLAYING[family], layers=layers, eval_batch_size=3)


def _targets(adapter, n: int):
    return [i % 2 for i in range(n)] if adapter.task == "classification" else [" Rome"] * n


def _full(adapter, prompts, targets):
    with torch.no_grad():
        return [adapter.scored_logits(adapter.encode(prompts[i : i + 3], targets[i : i + 3]))
                for i in range(0, len(prompts), 3)]


def _cached(cache, prompts, targets):
    with cache.lent(), torch.no_grad():
        assert cache.check()
        return [cache.logits(prompts[i : i + 3], targets[i : i + 3])[1] for i in range(0, len(prompts), 3)]


@torch.no_grad()
def _perturb(block, seed: int):
    generator = torch.Generator().manual_seed(seed)
    for p in block.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("family", list(REPLAYING))
@pytest.mark.parametrize("first", [0, 1, 2])
@pytest.mark.parametrize("size", [1, 4, 8])
def test_replay_is_the_full_forward_bit_for_bit(family, first, size):
    adapter = _model(family)
    prompts, targets = PROMPTS[:size], _targets(adapter, size)
    cache = PrefixCache(adapter, first, 2**30)
    assert all(torch.equal(a, b) for a, b in zip(_cached(cache, prompts, targets), _full(adapter, prompts, targets)))
    for step, block in enumerate(list(adapter.layer_modules())[first:]):  # edits where they are declared
        _perturb(block, step)
    replayed = _cached(cache, prompts, targets)
    assert cache.stats["replayed"] == len(replayed) and cache.stats["dropped"] == 0
    assert all(torch.equal(a, b) for a, b in zip(replayed, _full(adapter, prompts, targets)))
    scores = adapter.scores(prompts, targets)
    with cache.lent():
        assert adapter.scores(prompts, targets) == scores


def _prefix_hook(adapter):
    return adapter.model.get_input_embeddings().register_forward_hook(lambda _m, _a, out: out * 1.5)


@pytest.mark.parametrize("change", ["prefix weight", "hook before the blocks", "replaced block", "global hook",
                                    "head weight"])
def test_a_change_outside_the_replayed_blocks_drops_the_entries(change):
    adapter = _model("decoder")
    prompts, targets = PROMPTS[:4], _targets(adapter, 4)
    cache = PrefixCache(adapter, 2, 2**30)
    _cached(cache, prompts, targets)
    if change == "prefix weight":
        _perturb(adapter.layer_modules()[1], 0)
    elif change == "hook before the blocks":
        _prefix_hook(adapter)
    elif change == "replaced block":
        import copy

        adapter.layer_modules()[2] = copy.deepcopy(adapter.layer_modules()[2])
        _perturb(adapter.layer_modules()[2], 0)
    elif change == "global hook":
        handle = torch.nn.modules.module.register_module_forward_hook(lambda _m, _a, out: None)
    else:
        with torch.no_grad():
            adapter.model.get_output_embeddings().weight.mul_(1.1)  # tied to the embeddings here
    try:
        again = _cached(cache, prompts, targets)
    finally:
        if change == "global hook":
            handle.remove()
    assert cache.stats["dropped"] == 2 and cache.stats["replayed"] == 0
    assert all(torch.equal(a, b) for a, b in zip(again, _full(adapter, prompts, targets)))


def test_train_mode_no_first_block_and_no_room_run_the_full_forward():
    adapter = _model("decoder")
    prompts, targets = PROMPTS[:4], _targets(adapter, 4)
    for cache in (PrefixCache(adapter, None, 2**30), PrefixCache(adapter, 1, 0)):
        with cache.lent():
            assert not cache.check()
            adapter.scores(prompts, targets)
        assert not cache.entries
    cache = PrefixCache(adapter, 1, 2**30)
    adapter.model.train()
    with cache.lent():
        assert not cache.check()
    adapter.model.eval()
    small = PrefixCache(adapter, 1, 1)  # room for nothing: every batch is scored, none kept
    with small.lent():
        adapter.scores(prompts, targets)
    assert small.stats == {"replayed": 0, "captured": 0, "uncached": 2, "dropped": 0}
    with pytest.raises(ValueError, match="blocks 0..2"):
        PrefixCache(adapter, 3, 2**30)


def test_seq2seq_is_not_replayed():
    adapter = tiny("tiny-bart")
    cache = PrefixCache(adapter, 0, 2**30)
    with cache.lent():
        assert not cache.check()


def test_the_cache_is_the_adapters_only_while_lent():
    adapter = _model("decoder")
    cache = PrefixCache(adapter, 1, 2**30)
    with cache.lent():
        assert adapter.prefix is cache
        adapter.scores(PROMPTS[:2], _targets(adapter, 2))
    assert adapter.prefix is None and cache.entries


def _records(folder):
    import json

    lines = [json.loads(x) for x in (folder / "edits.jsonl").read_text().splitlines()]
    lines = [x for x in lines if x["type"] != "run_end"]  # the results, with the run's wall time
    for line in lines:
        line.pop("seconds", None)
        line.pop("chain", None)  # a hash over the lines, timings included
        line.get("info", {}).pop("seconds", None)
        line.get("metrics", {}).pop("edit_seconds_median", None)  # timings differ; every score must not
    return lines


@pytest.mark.parametrize("editor", ["ft_last", "grace"])  # a trained block; a hook in the last block
def test_a_run_records_the_same_with_and_without_the_cache(tmp_path, editor):
    """The loop's every score (mistake checks, SR, GR, ER, TrainR, TestR, the fold's end) is the
    same whether evaluation replays the edited blocks or runs the full forward."""
    from benchmark.config import compose
    from benchmark.run import run

    own = {"ft_last": ["editor.max_steps=50", "editor.lr=1e-3"], "grace": ["editor.max_steps=50"]}[editor]
    common = ["experiment=tiny", f"editor={editor}", *own, "loop.max_fold_examples=8", "loop.eval_every=2",
              "data.num_folds=5", "loop.folds=[0,1]", "loop.progress=false"]
    results = {}
    for mib in (1024, 0):
        results[mib] = run(compose([*common, f"model.eval_cache_mb={mib}", f"output_dir={tmp_path}", f"run_id={mib}"]))
    assert _records(tmp_path / "1024") == _records(tmp_path / "0")
    on, off = results[1024]["eval_cache"], results[0]["eval_cache"]
    assert on["replayed"] > 0 and on["dropped"] == 0 and off["captured"] == off["replayed"] == 0
    assert on["edited_from"] == 1  # tiny-llama's last block: ft_last's, and GRACE's

