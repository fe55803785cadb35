import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# real samples of the published files (their sources and licences: tests/fixtures/real/README.md)
REAL_DATA = ROOT / "tests" / "fixtures" / "real"
ZSRE_MEND = ROOT / "data" / "samples" / "zsre_mend"  # the real MEND-layout zsRE sample, shipped as data
COUNTERFACT_EDIT = ROOT / "data" / "samples" / "counterfact_edit"  # 1,000 records of EasyEdit's CounterFact split
# Rebuildable caches (tokenizer, facts table, initial models) persist between test sessions.
os.environ.setdefault("SEQEDIT_CACHE", str(ROOT / ".cache" / "seqedit"))

FAMILIES = {"decoder": "tiny-llama", "seq2seq": "tiny-bart", "classifier": "tiny-bert", "masked": "tiny-bert-mlm"}


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
def family(request) -> str:
    return request.param


def tiny(name: str, **overrides):
    from benchmark.models import ModelConfig, build_model

    return build_model(ModelConfig(name=name, **overrides))


def data_for(family: str, **overrides) -> list[str]:
    """Dotlist choosing the facts task that fits the model family."""
    task = "claims" if family == "classifier" else "qa"
    return [f"model={FAMILIES[family]}", "data=facts", f"data.task={task}",
            *[f"{k}={v}" for k, v in overrides.items()]]


# A tiny BART learns the facts far more slowly than the others (20 epochs leave it answering
# one country to everything). Measured with these settings (greedy exact match, 300 examples):
# D'train 1.0 for the decoder, 0.993 for the classifier, only 0.28 for the BART (D_val 0.27: it
# answers by relation and region more than by fact; in 20-30 epochs, dropout 0 reached 0.34 and
# learning rates of 2e-3 to 5e-3 0.14-0.22), whose tests need answers that differ by input, not a
# model that knows D'train. The last epoch is kept: D_val (unseen facts) peaks early.
# init.threads=1: the same model whatever the machine's core count (one summation order).
TRAINING = {"decoder": {"init.epochs": 20, "init.keep": "last", "init.threads": 1},
            "classifier": {"init.epochs": 20, "init.keep": "last", "init.threads": 1},
            "masked": {"init.epochs": 20, "init.keep": "last", "init.threads": 1},
            "seq2seq": {"init.epochs": 60, "init.batch_size": 16, "init.keep": "last", "init.threads": 1}}


def trained_weights(family: str) -> str:
    """Weights of a tiny model of `family` trained on the facts task (cached on disk, so once
    per machine): an editor's starting point is a trained model, whose queries tell inputs apart."""
    from benchmark.build import build_data
    from benchmark.config import compose, instantiate
    from benchmark.init import prepare_initial_model
    from benchmark.models import build_model

    run = instantiate(compose(data_for(family, **TRAINING[family])))
    adapter = build_model(run.model)
    return str(prepare_initial_model(adapter, build_data(run), run.model, run.init, progress=False))


def trained_tiny(family: str):
    return tiny(FAMILIES[family], checkpoint=trained_weights(family))


DONORS = ["The capital of Italy is", "Kyoto is a city in", "The currency of Peru is the", "Canada is a country in",
          "The official language of Brazil is", "The capital of Kenya is"]


def wrong_target(adapter, prompt: str):
    """A target the model gets wrong on `prompt` but can produce: the flipped label, or the
    greedy answer of another prompt (a tiny model cannot make every token an argmax)."""
    if adapter.task == "classification":
        return int(adapter.scored_logits(adapter.encode([prompt], [1]))[0] < 0)
    kwargs = {"max_new_tokens": 1} if adapter.family == "decoder" else {}
    own = adapter.generate([prompt], **kwargs)[0]
    for answer in adapter.generate(DONORS, **kwargs):
        if answer.strip() and answer != own and adapter.scores([prompt], [answer]) == [0.0]:
            return answer
    raise AssertionError("no donor answer differs from the model's own")


def trained_editor_state(editor: str, family: str, **overrides) -> dict:
    """The training phase of `editor` on the facts task of `family` (cached on disk like the
    initial models), as `seqedit train-editor` makes it."""
    import torch

    from benchmark.config import compose, instantiate
    from benchmark.editor_training import train_editor

    extra = {f"editor.{k}": v for k, v in overrides.items()}
    run = instantiate(compose([f"editor={editor}", *data_for(family, **TRAINING[family], **extra)]))
    return torch.load(train_editor(run, progress=False)["state"], weights_only=True)


@pytest.fixture
def scripted():
    """The scripted editor and the hand-made datasets, registered for this test only."""
    from tests import scripted as pieces

    with pieces.registered():
        yield pieces
