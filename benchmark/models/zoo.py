"""Registered models and the loader for any Hugging Face name or local path.

The tiny models are randomly initialised from a config with a seed (2 layers, hidden 64 by
default) and share one small byte-level BPE tokenizer trained, deterministically, on the
embedded facts corpus; they build in well under a second and need nothing from a hub.
"""

from __future__ import annotations

import hashlib

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from benchmark.cache import cache_dir
from benchmark.models.base import ModelAdapter, ModelConfig
from benchmark.models.decoder import DecoderLMAdapter
from benchmark.models.encoder import EncoderClassifierAdapter
from benchmark.models.masked import MaskedLMAdapter
from benchmark.models.seq2seq import Seq2SeqAdapter
from benchmark.registry import MODELS, UnknownNameError

ADAPTERS = {"classifier": EncoderClassifierAdapter, "seq2seq": Seq2SeqAdapter, "decoder": DecoderLMAdapter,
            "masked": MaskedLMAdapter}
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
TINY_VOCAB = 4096


def tiny_tokenizer(with_eos: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE over the facts corpus: any text encodes; common answers are 1-3 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from benchmark.fact_source import corpus

    texts = corpus()
    key = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:12]
    path = cache_dir() / f"tiny-bpe-{TINY_VOCAB}-{key}.json"
    if path.exists():
        tok = Tokenizer.from_file(str(path))
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        tmp = path.with_suffix(".tmp")
        tok.save(str(tmp))
        tmp.replace(path)
    single = "<s> $A </s>" if with_eos else "<s> $A"
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")


def _finish(model, tokenizer, cfg: ModelConfig, family: str) -> ModelAdapter:
    if cfg.checkpoint:
        from safetensors.torch import load_file

        try:
            state = load_file(cfg.checkpoint)
        except Exception as err:  # safetensors' own error types: a damaged or foreign file
            raise ValueError(f"model.checkpoint={cfg.checkpoint}: not a readable safetensors file "
                             f"({' '.join(str(err).split())[:100]})") from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        current = model.state_dict()
        loaded = {current[n].data_ptr() for n in state if n in current}
        missing = [m for m in missing if current[m].data_ptr() not in loaded]  # tied weights are fine
        if unexpected or missing:
            raise ValueError(f"{cfg.checkpoint}: weights do not fit {cfg.name} (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    model = model.to(device=cfg.device, dtype=getattr(torch, cfg.dtype))
    return ADAPTERS[family](model, tokenizer, cfg)


def build_tiny_llama(cfg: ModelConfig) -> ModelAdapter:
    tok = tiny_tokenizer(with_eos=False)
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                         num_hidden_layers=cfg.layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    return _finish(LlamaForCausalLM(config), tok, cfg, "decoder")


def build_tiny_bert(cfg: ModelConfig) -> ModelAdapter:
    tok = tiny_tokenizer(with_eos=True)
    torch.manual_seed(cfg.seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                        num_hidden_layers=cfg.layers, num_attention_heads=4, max_position_embeddings=256,
                        num_labels=1, pad_token_id=tok.pad_token_id)
    return _finish(BertForSequenceClassification(config), tok, cfg, "classifier")


def build_tiny_bert_mlm(cfg: ModelConfig) -> ModelAdapter:
    tok = tiny_tokenizer(with_eos=True)
    torch.manual_seed(cfg.seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                        num_hidden_layers=cfg.layers, num_attention_heads=4, max_position_embeddings=256,
                        pad_token_id=tok.pad_token_id)
    return _finish(BertForMaskedLM(config), tok, cfg, "masked")


def build_tiny_bart(cfg: ModelConfig) -> ModelAdapter:
    tok = tiny_tokenizer(with_eos=True)
    torch.manual_seed(cfg.seed)
    config = BartConfig(vocab_size=len(tok), d_model=cfg.hidden, encoder_layers=cfg.layers,
                        decoder_layers=cfg.layers, encoder_attention_heads=4, decoder_attention_heads=4,
                        encoder_ffn_dim=2 * cfg.hidden, decoder_ffn_dim=2 * cfg.hidden, max_position_embeddings=256,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id)
    return _finish(BartForConditionalGeneration(config), tok, cfg, "seq2seq")


def infer_family(hf_config) -> str:
    archs = " ".join(getattr(hf_config, "architectures", None) or [])
    if "MaskedLM" in archs:
        return "masked"
    if "SequenceClassification" in archs or hf_config.model_type in ("bert", "roberta"):
        return "classifier"
    return "seq2seq" if getattr(hf_config, "is_encoder_decoder", False) else "decoder"


def load_pretrained(cfg: ModelConfig, path: str | None = None, **load_kwargs) -> ModelAdapter:
    """Any Hugging Face name or local folder; downloads only where a hub is reachable."""
    source = path or cfg.name
    hf_config = AutoConfig.from_pretrained(source, **load_kwargs)
    family = cfg.family or infer_family(hf_config)
    tok = AutoTokenizer.from_pretrained(source, **load_kwargs)
    torch.manual_seed(cfg.seed)  # a new classification head is initialised from this seed
    if family == "classifier":
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, **load_kwargs)
    elif family == "seq2seq":
        model = AutoModelForSeq2SeqLM.from_pretrained(source, **load_kwargs)
    elif family == "masked":
        model = AutoModelForMaskedLM.from_pretrained(source, **load_kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
    return _finish(model, tok, cfg, family)


def _hub_reachable(timeout: float = 2.0) -> bool:
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _locally_available(name: str) -> bool:
    """A local folder, or a hub name already in the Hugging Face cache."""
    from pathlib import Path

    if Path(name).exists():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # not a valid repo id
        return False


def build_model(cfg: ModelConfig) -> ModelAdapter:
    if cfg.name in MODELS:
        return MODELS.get(cfg.name).target(cfg)
    # offline, an unknown name would spend half a minute in the hub client's retries
    kwargs = {} if _locally_available(cfg.name) or _hub_reachable() else {"local_files_only": True}
    try:
        return load_pretrained(cfg, **kwargs)
    except OSError as err:  # neither a local folder nor reachable on a hub
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnknownNameError(
            f"unknown model {cfg.name!r}: not registered (choose one of: {', '.join(MODELS.names())}) "
            f"and not loadable as a Hugging Face name or local path ({first})"
        ) from None
