import pytest
import torch

from tests.conftest import FAMILIES, tiny


def _examples(adapter):
    prompts = ["The capital of France is", "Lyon is a city in", "The currency of Japan is the"]
    targets = [1, 0, 1] if adapter.task == "classification" else [" Paris", " France", " Yen"]
    return prompts, targets


def test_tail_reproduces_logits_exactly(family):
    adapter = tiny(FAMILIES[family])
    prompts, targets = _examples(adapter)
    batch = adapter.encode(prompts, targets)
    full = adapter.scored_logits(batch)
    cache = adapter.capture(batch)
    assert cache.query.shape[0] == full.shape[0] == batch.targets.shape[0]
    assert torch.allclose(adapter.tail(cache.ffn_out, cache.residual), full, atol=1e-5)


@pytest.mark.parametrize("layer", [-1, -2, 0])
def test_finish_after_any_ffn_equals_the_full_forward(family, layer):
    """`capture(batch, layer).finish` reruns only what follows block `layer`'s FFN; with any change
    of that FFN's output (a delta of its query, at every position as a hook adds it) it gives the
    full forward's logits. Three blocks, so -1, -2 and 0 are three different blocks, and a batch
    of prompts of different lengths (padding)."""
    adapter = tiny(FAMILIES[family], layers=3)
    prompts, targets = _examples(adapter)
    batch = adapter.encode(prompts, targets)
    cache = adapter.capture(batch, layer)
    assert torch.allclose(cache.finish(cache.ffn_out), cache.logits, atol=1e-5)
    assert int(cache.scored.sum()) == batch.targets.shape[0]

    def delta(q):
        return 3 * q.flip(-1)

    with adapter.added_to_ffn(delta, layer):
        full = adapter.scored_logits(batch)
    assert (full - cache.logits).abs().max() > 1e-4  # the change reaches the answer
    assert torch.allclose(cache.finish(cache.ffn_out + delta(cache.query)), full, atol=1e-5)
    memory = adapter.memory_queries(batch, layer)
    expected = batch.score_mask if layer % 3 == 2 else batch.valid_mask
    assert memory.shape[0] == int(expected.sum())


def test_layer_out_of_range_is_one_line(family):
    adapter = tiny(FAMILIES[family])
    with pytest.raises(ValueError, match="layer 5 out of range: the model has 2 blocks"):
        adapter.ffn_site(5)


def test_added_delta_changes_output_and_removal_restores_exactly(family):
    adapter = tiny(FAMILIES[family])
    prompts, targets = _examples(adapter)
    batch = adapter.encode(prompts, targets)
    base = adapter.scored_logits(batch)
    with adapter.added_to_ffn(lambda q: 3 * q.flip(-1)):  # not constant: LayerNorm removes a constant
        shifted = adapter.scored_logits(batch)
    assert not torch.allclose(shifted, base)
    assert torch.equal(adapter.scored_logits(batch), base)


def test_greedy_exact_match_agrees_with_generation(family):
    """The model's own greedy answer scores 1, another answer 0 (generation families)."""
    adapter = tiny(FAMILIES[family])
    prompts, targets = _examples(adapter)
    if adapter.task == "classification":
        logits = adapter.scored_logits(adapter.encode(prompts, targets))
        own = [int(x > 0) for x in logits]
        assert adapter.scores(prompts, own) == [1.0] * 3
        assert adapter.scores(prompts, [1 - y for y in own]) == [0.0] * 3
        return
    if family == "masked":  # the argmax at one mask; a word-internal piece cannot stand as an answer
        own = adapter.generate(prompts)
        assert any(o.startswith(" ") for o in own)
        assert adapter.scores(prompts, own) == [float(o.startswith(" ")) for o in own]
        assert adapter.scores(prompts, [" zebra crossing"] * 3) == [0.0] * 3
        return
    if family == "decoder":  # the greedy continuation, cut to 3 tokens, is what exact match scores
        own = adapter.generate(prompts, max_new_tokens=3)
        assert all(text.strip() for text in own)
    else:  # the whole greedy output (a random model may give an empty string: still its answer)
        own = adapter.generate(prompts)
    assert adapter.scores(prompts, own) == [1.0] * 3
    assert adapter.scores(prompts, [" zebra crossing"] * 3) == [0.0] * 3


def test_last_layer_parameters_are_the_last_block_only(family):
    adapter = tiny(FAMILIES[family])
    last = adapter.last_layer_parameters()
    block = adapter.layer_modules()[-1]
    assert {id(p) for _, p in last} == {id(p) for p in block.parameters()}
    site = adapter.ffn_site()
    assert site.is_last and site.width == adapter.model.config.hidden_size


def test_tiny_models_are_deterministic_by_seed():
    a, b = tiny("tiny-llama", seed=3), tiny("tiny-llama", seed=3)
    c = tiny("tiny-llama", seed=4)
    pa, pb, pc = (next(x.model.parameters()) for x in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize("rows", [1, 3, 7, 40])
@pytest.mark.parametrize("threads", [1, 2])  # 2: the BLAS route's backward reads the weight's transposed copy
@pytest.mark.parametrize("onednn", [True, False])
def test_frozen_projection_matches_the_linear_layer_and_its_gradient(rows, threads, onednn, monkeypatch):
    import benchmark.models.base as base

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(base, "ONEDNN_TAILS", onednn)
    layer = torch.nn.Linear(16, 50).requires_grad_(False)
    x = torch.randn(rows, 16, requires_grad=True)
    route = base._route(x, layer.weight)
    assert route == ("onednn" if onednn and torch.backends.mkldnn.is_available() else "blas")

    def gradient(out):
        return torch.autograd.grad((out * torch.arange(50.0)).sum(), x)[0]

    out = base.project(x, layer)
    fast = gradient(out)
    exact = x.detach().double() @ layer.weight.double().T + layer.bias.double()
    exact_grad = (torch.arange(50.0, dtype=torch.float64) @ layer.weight.double()).expand(rows, -1)
    # float32 rounding of gradient entries up to ~100: a few units of 1e-5 (2 ulps measured)
    assert torch.allclose(out.double(), exact, atol=1e-6) and torch.allclose(fast.double(), exact_grad, atol=1e-4)
    with torch.no_grad():  # the weight rewritten in place (as MEMIT does): its transposed copy is made anew
        layer.weight.mul_(2)
    assert torch.allclose(gradient(base.project(x, layer)).double(), 2 * exact_grad, atol=1e-4)
    assert (layer in base._TRANSPOSED) == (threads > 1 or route == "onednn")
    layer.weight.requires_grad_(True)  # a trained head goes through the layer itself
    assert base.project(x, layer).grad_fn.name() != out.grad_fn.name()


def test_frozen_projection_leaves_onednn_where_it_cannot_serve():
    """float64, and oneDNN's bf16/tf32 modes (which would round the head's products): the BLAS
    route serves then."""
    import benchmark.models.base as base

    x, weight = torch.randn(3, 16), torch.randn(50, 16)
    wide = torch.nn.Linear(16, 50).double().requires_grad_(False)
    assert base._route(x.double(), wide.weight) == "blas"
    assert torch.allclose(base.project(x.double(), wide), wide(x.double()))
    matmul = torch.backends.mkldnn.matmul
    kept = matmul.fp32_precision
    try:
        matmul.fp32_precision = "bf16"
        assert base._route(x, weight) == "blas"
    finally:
        matmul.fp32_precision = kept
    assert base._route(x, weight) == ("onednn" if torch.backends.mkldnn.is_available() else "blas")


@pytest.mark.parametrize("layer", [-1, 0])
def test_finish_on_a_pre_ln_seq2seq_model(layer):
    """mBART normalises before its FFN (BART after): its residual is the norm's input and the
    block output a plain sum; `finish` must reproduce its forward too."""
    from transformers import MBartConfig, MBartForConditionalGeneration

    from benchmark.models.base import ModelConfig
    from benchmark.models.seq2seq import Seq2SeqAdapter
    from benchmark.models.zoo import tiny_tokenizer

    tok = tiny_tokenizer(with_eos=True)
    torch.manual_seed(0)
    config = MBartConfig(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         decoder_start_token_id=tok.eos_token_id)
    adapter = Seq2SeqAdapter(MBartForConditionalGeneration(config), tok, ModelConfig(name="tiny-mbart"))
    prompts, targets = ["The capital of France is", "Lyon is a city in"], [" Paris", " France"]
    batch = adapter.encode(prompts, targets)
    cache = adapter.capture(batch, layer)
    assert torch.allclose(cache.finish(cache.ffn_out), cache.logits, atol=1e-5)

    def delta(q):
        return 3 * q.flip(-1)

    with adapter.added_to_ffn(delta, layer):
        full = adapter.scored_logits(batch)
    assert (full - cache.logits).abs().max() > 1e-4
    assert torch.allclose(cache.finish(cache.ffn_out + delta(cache.query)), full, atol=1e-5)


def test_the_task_object_answers_what_editors_used_to_branch_on():
    from benchmark.models.task import TASKS
    from benchmark.types import Example

    cls, gen = TASKS["classification"], TASKS["generation"]
    assert cls == "classification" and gen == "generation" and f"{gen}" == "generation"
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    assert gen.margin(logits, torch.tensor([1, 0])).tolist() == [3.0, -3.0]
    assert gen.correct(logits, torch.tensor([1, 0])).tolist() == [True, False]
    assert cls.margin(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])).tolist() == [2.0, -1.0]
    assert gen.same_answer(" Paris ", "paris") and not gen.same_answer("Paris", "Lyon")
    assert cls.same_answer(1, 1.0) and cls.new_answer(Example("a", "x", 1), {}) == 0
    pool = {"capital": [" Paris", " Lyon", " Rome"]}
    fact = Example("u1", "The capital of France is", " Paris", relation="capital")
    answers = {gen.new_answer(fact, pool) for _ in range(3)}
    assert len(answers) == 1 and answers < {" Lyon", " Rome"}  # fixed per example, never the old one
    assert gen.new_answer(Example("u2", "q", " Paris", alternative=" Oslo"), pool) == " Oslo"
    ref = torch.randn(4, 7)
    same = ref.clone()
    assert gen.kl(ref, same).abs().item() < 1e-6 and gen.kl(ref, torch.randn(4, 7)).item() > 0


@pytest.mark.parametrize("rows,vocab,spread", [(1, 7, 1.0), (5, 1000, 8.0), (3, 49152, 4.0)])
def test_generation_kl_gives_kl_divs_value_and_gradient(rows, vocab, spread):
    """Generation's KL (closed form, a reference prepared once or given as logits) against
    `F.kl_div` on log-softmaxes, in value and in gradient, with an output whose reference puts
    no mass on some tokens (logits of -inf)."""
    import torch.nn.functional as F

    from benchmark.models.task import Generation

    gen, draw = Generation(), torch.Generator().manual_seed(rows)
    reference = spread * torch.randn(rows, vocab, generator=draw)
    reference[0, : vocab // 3] = float("-inf")
    logits = (reference.clamp(min=-30) + torch.randn(rows, vocab, generator=draw)).requires_grad_()
    expected = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(reference, -1).clamp(min=-1e30),
                        log_target=True, reduction="batchmean")
    want = torch.autograd.grad(expected, logits)[0]
    for given in (reference, gen.kl_reference(reference)):
        value = gen.kl(given, logits)
        got = torch.autograd.grad(value, logits)[0]
        assert float(value) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
        assert float((got - want).abs().max()) <= 1e-6 * max(1.0, float(want.abs().max()))
    assert len(gen.kl_reference(reference)) == rows


def test_an_examples_score_does_not_depend_on_its_batch(family):
    """`scores` batches examples by their real positions (tokens over all the model's inputs, each
    batch's longest no longer than the next one's shortest): every score is the one the example
    gets alone, in the caller's order, for batch sizes that split the examples unevenly."""
    from tests.conftest import DONORS, trained_tiny

    adapter = trained_tiny(family)
    prompts = [*DONORS, "Lyon is a city in", "The capital of France is", "Peru is a country in",
               "The river through Paris is the", "Mount Fuji is in the country of"]
    if adapter.task == "classification":
        own = [int(x > 0) for x in adapter.scored_logits(adapter.encode(prompts, [1] * len(prompts)))]
    else:
        own = adapter.generate(prompts, **({"max_new_tokens": 2} if family == "decoder" else {}))
    wrong = own[1:] + own[:1] if adapter.task != "classification" else [1 - y for y in own]
    targets = [o if i % 2 else w for i, (o, w) in enumerate(zip(own, wrong))]
    alone = [adapter.scores([p], [t])[0] for p, t in zip(prompts, targets)]
    assert 0.0 in alone and 1.0 in alone  # both kinds, so a misplaced score would show
    for size in (3, 4, 64):
        adapter.config.eval_batch_size = size
        lengths = [batch.lengths() for _, batch, _ in adapter._scored(prompts, targets)]
        assert all(int(a.max()) <= int(b.min()) for a, b in zip(lengths, lengths[1:]))
        assert adapter.scores(prompts, targets) == alone
        backwards = adapter.scores(prompts[::-1], targets[::-1])
        assert backwards == alone[::-1]


@pytest.mark.parametrize("eval_batch_size", [1, 2])
def test_predictions_are_the_teacher_forced_answers_in_the_order_given(family, eval_batch_size):
    """`predictions` (EasyEdit's locality reading): per example, the argmax (or label) at each
    scored position of its own forward, whatever batch and length order it was run in; a target
    the model gets right token for token under teacher forcing is its own `target_ids`."""
    adapter = tiny(FAMILIES[family], eval_batch_size=eval_batch_size)
    prompts, targets = _examples(adapter)
    got = adapter.predictions(prompts, targets)
    for prompt, target, answers in zip(prompts, targets, got):
        batch = adapter.encode([prompt], [target])
        alone = adapter.task.predicted(adapter.scored_logits(batch)).tolist()
        assert answers == alone and len(answers) == len(adapter.target_ids(prompt, target))
    taught = [adapter.target_ids(p, t) for p, t in zip(prompts, targets)]
    right = [a == t for a, t in zip(got, taught)]
    if adapter.task == "classification" or not adapter.scores_by_generation:
        assert right == [s == 1 for s in adapter.scores(prompts, targets)]
